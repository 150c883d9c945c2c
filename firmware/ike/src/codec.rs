//! The IKEv2 message codec (RFC 7296 §3).
//!
//! ```text
//!                      1                   2                   3
//!  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |                       IKE SA Initiator's SPI                  |
//! |                                                               |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |                       IKE SA Responder's SPI                  |
//! |                                                               |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |  Next Payload | MjVer | MnVer | Exchange Type |     Flags     |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |                          Message ID                           |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |                            Length                             |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! ```
//!
//! Then a chain of payloads, each behind a generic header (§3.2: next payload, critical bit,
//! length). [`Reader`] walks it: every length field yields a sub-slice, trailing bytes are
//! refused, nothing indexes out of bounds, so no input can panic the parser. Payloads this
//! crate does not know are kept as [`Payload::Unknown`] with their critical bit; the state
//! machines answer a critical one with UNSUPPORTED_CRITICAL_PAYLOAD (§2.5). The Encrypted and
//! Authenticated payload (SK, §3.14) is returned as bytes for [`crate::crypto`] to open.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use isthmus_tables::PortRange;

use crate::config::TrafficSelector;
use crate::error::Error;
use crate::proposal::{DhGroup, Encr, EspProposal, IkeProposal, Integ, Prf, transform_type};

/// A notify message type (RFC 7296 §3.10.1; RFC 7383; RFC 3948). Types below 16384 are errors.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NotifyType(pub u16);

#[allow(missing_docs)]
impl NotifyType {
    pub const UNSUPPORTED_CRITICAL_PAYLOAD: NotifyType = NotifyType(1);
    pub const INVALID_IKE_SPI: NotifyType = NotifyType(4);
    pub const INVALID_MAJOR_VERSION: NotifyType = NotifyType(5);
    pub const INVALID_SYNTAX: NotifyType = NotifyType(7);
    pub const INVALID_MESSAGE_ID: NotifyType = NotifyType(9);
    pub const INVALID_SPI: NotifyType = NotifyType(11);
    pub const NO_PROPOSAL_CHOSEN: NotifyType = NotifyType(14);
    pub const INVALID_KE_PAYLOAD: NotifyType = NotifyType(17);
    pub const AUTHENTICATION_FAILED: NotifyType = NotifyType(24);
    pub const SINGLE_PAIR_REQUIRED: NotifyType = NotifyType(34);
    pub const NO_ADDITIONAL_SAS: NotifyType = NotifyType(35);
    pub const INTERNAL_ADDRESS_FAILURE: NotifyType = NotifyType(36);
    pub const FAILED_CP_REQUIRED: NotifyType = NotifyType(37);
    pub const TS_UNACCEPTABLE: NotifyType = NotifyType(38);
    pub const INVALID_SELECTORS: NotifyType = NotifyType(39);
    pub const TEMPORARY_FAILURE: NotifyType = NotifyType(43);
    pub const CHILD_SA_NOT_FOUND: NotifyType = NotifyType(44);
    pub const INITIAL_CONTACT: NotifyType = NotifyType(16384);
    pub const SET_WINDOW_SIZE: NotifyType = NotifyType(16385);
    pub const ADDITIONAL_TS_POSSIBLE: NotifyType = NotifyType(16386);
    pub const IPCOMP_SUPPORTED: NotifyType = NotifyType(16387);
    pub const NAT_DETECTION_SOURCE_IP: NotifyType = NotifyType(16388);
    pub const NAT_DETECTION_DESTINATION_IP: NotifyType = NotifyType(16389);
    pub const COOKIE: NotifyType = NotifyType(16390);
    pub const USE_TRANSPORT_MODE: NotifyType = NotifyType(16391);
    pub const REKEY_SA: NotifyType = NotifyType(16393);
    pub const ESP_TFC_PADDING_NOT_SUPPORTED: NotifyType = NotifyType(16394);
    pub const NON_FIRST_FRAGMENTS_ALSO: NotifyType = NotifyType(16395);
    pub const MOBIKE_SUPPORTED: NotifyType = NotifyType(16396);
    pub const MULTIPLE_AUTH_SUPPORTED: NotifyType = NotifyType(16404);
    pub const IKEV2_FRAGMENTATION_SUPPORTED: NotifyType = NotifyType(16430);
    pub const SIGNATURE_HASH_ALGORITHMS: NotifyType = NotifyType(16431);

    /// True for error types (below 16384).
    pub fn is_error(self) -> bool {
        self.0 < 16384
    }

    /// The RFC name, or the number for types this crate does not name.
    pub fn name(self) -> Option<&'static str> {
        Some(match self {
            Self::UNSUPPORTED_CRITICAL_PAYLOAD => "UNSUPPORTED_CRITICAL_PAYLOAD",
            Self::INVALID_IKE_SPI => "INVALID_IKE_SPI",
            Self::INVALID_MAJOR_VERSION => "INVALID_MAJOR_VERSION",
            Self::INVALID_SYNTAX => "INVALID_SYNTAX",
            Self::INVALID_MESSAGE_ID => "INVALID_MESSAGE_ID",
            Self::INVALID_SPI => "INVALID_SPI",
            Self::NO_PROPOSAL_CHOSEN => "NO_PROPOSAL_CHOSEN",
            Self::INVALID_KE_PAYLOAD => "INVALID_KE_PAYLOAD",
            Self::AUTHENTICATION_FAILED => "AUTHENTICATION_FAILED",
            Self::SINGLE_PAIR_REQUIRED => "SINGLE_PAIR_REQUIRED",
            Self::NO_ADDITIONAL_SAS => "NO_ADDITIONAL_SAS",
            Self::INTERNAL_ADDRESS_FAILURE => "INTERNAL_ADDRESS_FAILURE",
            Self::FAILED_CP_REQUIRED => "FAILED_CP_REQUIRED",
            Self::TS_UNACCEPTABLE => "TS_UNACCEPTABLE",
            Self::INVALID_SELECTORS => "INVALID_SELECTORS",
            Self::TEMPORARY_FAILURE => "TEMPORARY_FAILURE",
            Self::CHILD_SA_NOT_FOUND => "CHILD_SA_NOT_FOUND",
            Self::INITIAL_CONTACT => "INITIAL_CONTACT",
            Self::SET_WINDOW_SIZE => "SET_WINDOW_SIZE",
            Self::ADDITIONAL_TS_POSSIBLE => "ADDITIONAL_TS_POSSIBLE",
            Self::IPCOMP_SUPPORTED => "IPCOMP_SUPPORTED",
            Self::NAT_DETECTION_SOURCE_IP => "NAT_DETECTION_SOURCE_IP",
            Self::NAT_DETECTION_DESTINATION_IP => "NAT_DETECTION_DESTINATION_IP",
            Self::COOKIE => "COOKIE",
            Self::USE_TRANSPORT_MODE => "USE_TRANSPORT_MODE",
            Self::REKEY_SA => "REKEY_SA",
            Self::ESP_TFC_PADDING_NOT_SUPPORTED => "ESP_TFC_PADDING_NOT_SUPPORTED",
            Self::NON_FIRST_FRAGMENTS_ALSO => "NON_FIRST_FRAGMENTS_ALSO",
            Self::MOBIKE_SUPPORTED => "MOBIKE_SUPPORTED",
            Self::MULTIPLE_AUTH_SUPPORTED => "MULTIPLE_AUTH_SUPPORTED",
            Self::IKEV2_FRAGMENTATION_SUPPORTED => "IKEV2_FRAGMENTATION_SUPPORTED",
            Self::SIGNATURE_HASH_ALGORITHMS => "SIGNATURE_HASH_ALGORITHMS",
            // IKEv1's (RFC 2408 §3.14.1) where IKEv2 leaves the number unassigned, so that one
            // type names both versions' notifications.
            NotifyType(18) => "INVALID-ID-INFORMATION",
            NotifyType(23) => "INVALID-HASH-INFORMATION",
            _ => return None,
        })
    }
}

impl fmt::Display for NotifyType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(n) => f.write_str(n),
            None => write!(f, "NOTIFY_{}", self.0),
        }
    }
}

impl fmt::Debug for NotifyType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// An exchange type (RFC 7296 §3.1).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct ExchangeType(pub u8);

#[allow(missing_docs)]
impl ExchangeType {
    pub const IKE_SA_INIT: ExchangeType = ExchangeType(34);
    pub const IKE_AUTH: ExchangeType = ExchangeType(35);
    pub const CREATE_CHILD_SA: ExchangeType = ExchangeType(36);
    pub const INFORMATIONAL: ExchangeType = ExchangeType(37);
}

impl fmt::Display for ExchangeType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::IKE_SA_INIT => f.write_str("IKE_SA_INIT"),
            Self::IKE_AUTH => f.write_str("IKE_AUTH"),
            Self::CREATE_CHILD_SA => f.write_str("CREATE_CHILD_SA"),
            Self::INFORMATIONAL => f.write_str("INFORMATIONAL"),
            // IKEv1's exchanges (RFC 2408 §3.1, RFC 2409 §5.5): numbers IKEv2 does not use.
            ExchangeType(2) => f.write_str("Main Mode"),
            ExchangeType(4) => f.write_str("Aggressive Mode"),
            ExchangeType(5) => f.write_str("Informational (IKEv1)"),
            ExchangeType(32) => f.write_str("Quick Mode"),
            ExchangeType(n) => write!(f, "EXCHANGE_{n}"),
        }
    }
}

impl fmt::Debug for ExchangeType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// IKE header flags (§3.1).
pub mod flags {
    /// Set in messages sent by the original initiator of the IKE SA.
    pub const INITIATOR: u8 = 0x08;
    /// Version bit; never set by IKEv2 implementations.
    pub const VERSION: u8 = 0x10;
    /// Set in responses.
    pub const RESPONSE: u8 = 0x20;
}

/// Payload type numbers (§3.2).
pub mod payload_type {
    #![allow(missing_docs)]
    pub const NONE: u8 = 0;
    pub const SA: u8 = 33;
    pub const KE: u8 = 34;
    pub const IDI: u8 = 35;
    pub const IDR: u8 = 36;
    pub const CERT: u8 = 37;
    pub const CERTREQ: u8 = 38;
    pub const AUTH: u8 = 39;
    pub const NONCE: u8 = 40;
    pub const NOTIFY: u8 = 41;
    pub const DELETE: u8 = 42;
    pub const VENDOR: u8 = 43;
    pub const TSI: u8 = 44;
    pub const TSR: u8 = 45;
    pub const SK: u8 = 46;
    pub const CP: u8 = 47;
    pub const EAP: u8 = 48;
    pub const SKF: u8 = 53;
}

/// Protocol IDs (§3.3.1).
pub mod protocol {
    /// IKE.
    pub const IKE: u8 = 1;
    /// AH.
    pub const AH: u8 = 2;
    /// ESP.
    pub const ESP: u8 = 3;
}

/// Length of the fixed IKE header.
pub const HEADER_LEN: usize = 28;

/// A bounds-checked cursor over untrusted bytes.
#[derive(Clone, Debug)]
pub struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    /// A reader over `buf`.
    pub fn new(buf: &'a [u8]) -> Reader<'a> {
        Reader { buf }
    }

    /// Takes the next `n` bytes.
    pub fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], Error> {
        if self.buf.len() < n {
            return Err(Error::Truncated { what, need: n, have: self.buf.len() });
        }
        let (a, b) = self.buf.split_at(n);
        self.buf = b;
        Ok(a)
    }

    /// Takes a sub-reader over the next `n` bytes.
    pub fn sub(&mut self, n: usize, what: &'static str) -> Result<Reader<'a>, Error> {
        self.take(n, what).map(Reader::new)
    }

    /// One byte.
    pub fn u8(&mut self, what: &'static str) -> Result<u8, Error> {
        Ok(self.take(1, what)?[0])
    }

    /// A big-endian u16.
    pub fn u16(&mut self, what: &'static str) -> Result<u16, Error> {
        let b = self.take(2, what)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    /// A big-endian u32.
    pub fn u32(&mut self, what: &'static str) -> Result<u32, Error> {
        let b = self.take(4, what)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// A big-endian u64.
    pub fn u64(&mut self, what: &'static str) -> Result<u64, Error> {
        let b = self.take(8, what)?;
        let mut a = [0; 8];
        a.copy_from_slice(b);
        Ok(u64::from_be_bytes(a))
    }

    /// Everything left.
    pub fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.buf)
    }

    /// Bytes left.
    pub fn remaining(&self) -> usize {
        self.buf.len()
    }

    /// Refuses trailing bytes.
    pub fn finish(&self, what: &'static str) -> Result<(), Error> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(Error::malformed(what, format!("{} trailing bytes", self.buf.len())))
        }
    }
}

/// The fixed IKE header (§3.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// Initiator's SPI.
    pub spi_i: u64,
    /// Responder's SPI (zero in the first IKE_SA_INIT request).
    pub spi_r: u64,
    /// Type of the first payload.
    pub next_payload: u8,
    /// Major version in the high nibble, minor in the low one (0x20).
    pub version: u8,
    /// The exchange.
    pub exchange: ExchangeType,
    /// [`flags`].
    pub flags: u8,
    /// Message ID.
    pub message_id: u32,
    /// Total message length.
    pub length: u32,
}

impl Header {
    /// Parses the header; checks the major version and that `length` matches the datagram.
    pub fn parse(data: &[u8]) -> Result<Header, Error> {
        let h = Header::parse_loose(data)?;
        if h.version >> 4 != 2 {
            return Err(Error::InvalidMajorVersion(h.version >> 4));
        }
        if h.length as usize != data.len() {
            return Err(Error::malformed(
                "IKE header",
                format!("length field {} but datagram has {} bytes", h.length, data.len()),
            ));
        }
        Ok(h)
    }

    /// Reads the 28 header bytes and checks nothing else: enough to answer a message whose
    /// version or payloads are wrong (RFC 7296 §1.5 INVALID_MAJOR_VERSION, INVALID_SYNTAX).
    pub fn parse_loose(data: &[u8]) -> Result<Header, Error> {
        let mut r = Reader::new(data);
        Ok(Header {
            spi_i: r.u64("IKE header")?,
            spi_r: r.u64("IKE header")?,
            next_payload: r.u8("IKE header")?,
            version: r.u8("IKE header")?,
            exchange: ExchangeType(r.u8("IKE header")?),
            flags: r.u8("IKE header")?,
            message_id: r.u32("IKE header")?,
            length: r.u32("IKE header")?,
        })
    }

    /// True for responses.
    pub fn is_response(&self) -> bool {
        self.flags & flags::RESPONSE != 0
    }

    /// True when sent by the original initiator.
    pub fn from_initiator(&self) -> bool {
        self.flags & flags::INITIATOR != 0
    }

    /// Appends the 28 header bytes.
    pub fn emit(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.spi_i.to_be_bytes());
        out.extend_from_slice(&self.spi_r.to_be_bytes());
        out.push(self.next_payload);
        out.push(self.version);
        out.push(self.exchange.0);
        out.push(self.flags);
        out.extend_from_slice(&self.message_id.to_be_bytes());
        out.extend_from_slice(&self.length.to_be_bytes());
    }
}

/// A transform (§3.3.2) with its Key Length attribute.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transform {
    /// Transform type ([`transform_type`]).
    pub ty: u8,
    /// Transform ID.
    pub id: u16,
    /// Key Length attribute (type 14), in bits.
    pub key_len: Option<u16>,
    /// True when an attribute other than Key Length was present; such a transform cannot be
    /// chosen (§3.3.6).
    pub unknown_attr: bool,
}

/// A proposal substructure (§3.3.1).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Proposal {
    /// Proposal number (first is 1).
    pub num: u8,
    /// Protocol ID ([`protocol`]).
    pub protocol: u8,
    /// SPI: 8 bytes for IKE SA rekeys, 4 for ESP, empty in IKE_SA_INIT.
    pub spi: Vec<u8>,
    /// Transforms.
    pub transforms: Vec<Transform>,
}

/// ENCR transforms, then INTEG ones (none with AEAD ciphers, RFC 7296 §3.3).
fn push_encr_integ(t: &mut Vec<Transform>, encr: &[Encr], integ: &[Integ]) {
    for e in encr {
        t.push(Transform {
            ty: transform_type::ENCR,
            id: e.transform_id(),
            key_len: e.key_bits(),
            unknown_attr: false,
        });
    }
    for i in integ {
        t.push(Transform {
            ty: transform_type::INTEG,
            id: i.transform_id(),
            key_len: None,
            unknown_attr: false,
        });
    }
}

impl Proposal {
    /// The wire form of an IKE proposal.
    pub fn from_ike(num: u8, spi: &[u8], p: &IkeProposal) -> Proposal {
        let mut t = Vec::new();
        push_encr_integ(&mut t, &p.encr, &p.integ);
        for f in &p.prf {
            t.push(Transform {
                ty: transform_type::PRF,
                id: f.transform_id(),
                key_len: None,
                unknown_attr: false,
            });
        }
        for g in &p.dh {
            t.push(Transform {
                ty: transform_type::DH,
                id: g.id(),
                key_len: None,
                unknown_attr: false,
            });
        }
        Proposal { num, protocol: protocol::IKE, spi: spi.to_vec(), transforms: t }
    }

    /// The wire form of an ESP proposal; `pfs` says whether its DH groups are included.
    pub fn from_esp(num: u8, spi: u32, p: &EspProposal, pfs: bool) -> Proposal {
        let mut t = Vec::new();
        push_encr_integ(&mut t, &p.encr, &p.integ);
        if pfs {
            for g in &p.dh {
                t.push(Transform {
                    ty: transform_type::DH,
                    id: g.id(),
                    key_len: None,
                    unknown_attr: false,
                });
            }
        }
        for &e in &p.esn {
            t.push(Transform {
                ty: transform_type::ESN,
                id: u16::from(e),
                key_len: None,
                unknown_attr: false,
            });
        }
        Proposal { num, protocol: protocol::ESP, spi: spi.to_be_bytes().to_vec(), transforms: t }
    }

    /// The supported part of an IKE proposal.
    pub fn to_ike(&self) -> IkeProposal {
        let mut p =
            IkeProposal { encr: Vec::new(), integ: Vec::new(), prf: Vec::new(), dh: Vec::new() };
        for t in self.transforms.iter().filter(|t| !t.unknown_attr) {
            match t.ty {
                transform_type::ENCR => p.encr.extend(Encr::from_wire(t.id, t.key_len)),
                transform_type::INTEG => p.integ.extend(Integ::from_wire(t.id)),
                transform_type::PRF => p.prf.extend(Prf::from_wire(t.id)),
                transform_type::DH => p.dh.extend(DhGroup::from_id(t.id)),
                _ => {}
            }
        }
        p
    }

    /// The supported part of an ESP proposal. Selection takes an integrity algorithm only for a
    /// non-AEAD cipher (RFC 7296 §3.3), so a proposal mixing both still yields a suite.
    pub fn to_esp(&self) -> EspProposal {
        let mut p =
            EspProposal { encr: Vec::new(), integ: Vec::new(), dh: Vec::new(), esn: Vec::new() };
        for t in self.transforms.iter().filter(|t| !t.unknown_attr) {
            match t.ty {
                transform_type::ENCR => p.encr.extend(Encr::from_wire(t.id, t.key_len)),
                transform_type::INTEG => p.integ.extend(Integ::from_wire(t.id)),
                transform_type::DH => p.dh.extend(DhGroup::from_id(t.id)),
                transform_type::ESN if t.id <= 1 => p.esn.push(t.id == 1),
                _ => {}
            }
        }
        if !self.transforms.iter().any(|t| t.ty == transform_type::ESN) {
            p.esn.push(false);
        }
        p
    }

    /// True when the proposal includes DH "NONE" or no DH transform at all (no PFS accepted).
    pub fn allows_no_dh(&self) -> bool {
        let mut dh = self.transforms.iter().filter(|t| t.ty == transform_type::DH).peekable();
        dh.peek().is_none()
            || self.transforms.iter().any(|t| t.ty == transform_type::DH && t.id == 0)
    }

    /// The proposal in strongSwan syntax, naming unsupported algorithms too (`aes256-sha256-modp2048`).
    pub fn describe(&self) -> String {
        let mut names = Vec::new();
        for ty in [
            transform_type::ENCR,
            transform_type::INTEG,
            transform_type::PRF,
            transform_type::DH,
            transform_type::ESN,
        ] {
            for t in self.transforms.iter().filter(|t| t.ty == ty) {
                let n = crate::proposal::transform_name(t.ty, t.id, t.key_len);
                // strongSwan leaves the default `noesn` out.
                if !(ty == transform_type::ESN
                    && t.id == 0
                    && self.transforms.iter().filter(|t| t.ty == ty).count() == 1)
                {
                    names.push(n);
                }
            }
        }
        names.join("-")
    }

    fn parse(r: &mut Reader<'_>, num_expected: u8) -> Result<Proposal, Error> {
        const W: &str = "proposal";
        let num = r.u8(W)?;
        let protocol = r.u8(W)?;
        let spi_size = r.u8(W)?;
        let count = r.u8(W)?;
        let spi = r.take(usize::from(spi_size), W)?.to_vec();
        let _ = num_expected;
        let mut transforms = Vec::with_capacity(usize::from(count));
        for i in 0..count {
            let last = r.u8("transform")?;
            let _reserved = r.u8("transform")?;
            let len = usize::from(r.u16("transform")?);
            if len < 8 {
                return Err(Error::malformed("transform", format!("length {len} below 8")));
            }
            let mut t = r.sub(len - 4, "transform")?;
            let ty = t.u8("transform")?;
            let _ = t.u8("transform")?;
            let id = t.u16("transform")?;
            let mut key_len = None;
            let mut unknown_attr = false;
            while t.remaining() > 0 {
                let at = t.u16("transform attribute")?;
                if at & 0x8000 != 0 {
                    let v = t.u16("transform attribute")?;
                    if at & 0x7fff == 14 {
                        key_len = Some(v);
                    } else {
                        unknown_attr = true;
                    }
                } else {
                    let l = usize::from(t.u16("transform attribute")?);
                    t.take(l, "transform attribute")?;
                    unknown_attr = true;
                }
            }
            let want_last = if i + 1 == count { 0 } else { 3 };
            if last != want_last {
                return Err(Error::malformed(
                    "transform",
                    format!("last-substructure byte {last}"),
                ));
            }
            transforms.push(Transform { ty, id, key_len, unknown_attr });
        }
        r.finish(W)?;
        Ok(Proposal { num, protocol, spi, transforms })
    }

    fn emit(&self, last: bool, out: &mut Vec<u8>) {
        let start = out.len();
        out.extend_from_slice(&[if last { 0 } else { 2 }, 0, 0, 0]);
        out.push(self.num);
        out.push(self.protocol);
        out.push(self.spi.len() as u8);
        out.push(self.transforms.len() as u8);
        out.extend_from_slice(&self.spi);
        for (i, t) in self.transforms.iter().enumerate() {
            let tl: u16 = if t.key_len.is_some() { 12 } else { 8 };
            out.push(if i + 1 == self.transforms.len() { 0 } else { 3 });
            out.push(0);
            out.extend_from_slice(&tl.to_be_bytes());
            out.push(t.ty);
            out.push(0);
            out.extend_from_slice(&t.id.to_be_bytes());
            if let Some(k) = t.key_len {
                out.extend_from_slice(&(0x8000u16 | 14).to_be_bytes());
                out.extend_from_slice(&k.to_be_bytes());
            }
        }
        let len = (out.len() - start) as u16;
        out[start + 2..start + 4].copy_from_slice(&len.to_be_bytes());
    }
}

/// A Notify payload (§3.10).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Notify {
    /// Protocol ID (0 when not about an SA).
    pub protocol: u8,
    /// SPI of the SA it is about (may be empty).
    pub spi: Vec<u8>,
    /// The type.
    pub ty: NotifyType,
    /// Notification data.
    pub data: Vec<u8>,
}

impl Notify {
    /// A notify not bound to an SA.
    pub fn new(ty: NotifyType, data: impl Into<Vec<u8>>) -> Notify {
        Notify { protocol: 0, spi: Vec::new(), ty, data: data.into() }
    }
}

/// A Delete payload (§3.11).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delete {
    /// [`protocol::IKE`] (no SPIs: the IKE SA of the message) or [`protocol::ESP`].
    pub protocol: u8,
    /// ESP SPIs (4 bytes each).
    pub spis: Vec<u32>,
}

/// An identification payload's contents (§3.5).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Id {
    /// ID type.
    pub ty: u8,
    /// Identification data.
    pub data: Vec<u8>,
}

impl Id {
    /// The bytes the AUTH computation MACs (§2.15 "RestOfInitIDPayload"): type, three
    /// reserved bytes and the data.
    pub fn body(&self) -> Vec<u8> {
        let mut v = vec![self.ty, 0, 0, 0];
        v.extend_from_slice(&self.data);
        v
    }
}

/// One payload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Payload {
    /// Security Association (§3.3).
    Sa(Vec<Proposal>),
    /// Key Exchange (§3.4).
    Ke {
        /// DH group number.
        group: u16,
        /// Public value.
        data: Vec<u8>,
    },
    /// Identification of the initiator (§3.5).
    IdI(Id),
    /// Identification of the responder (§3.5).
    IdR(Id),
    /// Authentication (§3.8).
    Auth {
        /// Auth method (2 = shared key MIC).
        method: u8,
        /// Authentication data.
        data: Vec<u8>,
    },
    /// Nonce (§3.9).
    Nonce(Vec<u8>),
    /// Notify (§3.10).
    Notify(Notify),
    /// Delete (§3.11).
    Delete(Delete),
    /// Vendor ID (§3.12).
    Vendor(Vec<u8>),
    /// Traffic selectors of the initiator (§3.13).
    TsI(Vec<TrafficSelector>),
    /// Traffic selectors of the responder (§3.13).
    TsR(Vec<TrafficSelector>),
    /// Encrypted and Authenticated (§3.14): the type of the first inner payload and the body
    /// (IV, ciphertext, ICV). Only found by [`parse_message`], never emitted from here.
    Sk {
        /// Type of the first inner payload.
        first: u8,
        /// IV || ciphertext || ICV.
        body: Vec<u8>,
    },
    /// A payload this crate does not interpret (kept as is).
    Unknown {
        /// Payload type.
        ty: u8,
        /// The critical bit (§2.5).
        critical: bool,
        /// The payload body.
        data: Vec<u8>,
    },
}

impl Payload {
    /// The payload type number.
    pub fn ty(&self) -> u8 {
        use payload_type::*;
        match self {
            Payload::Sa(_) => SA,
            Payload::Ke { .. } => KE,
            Payload::IdI(_) => IDI,
            Payload::IdR(_) => IDR,
            Payload::Auth { .. } => AUTH,
            Payload::Nonce(_) => NONCE,
            Payload::Notify(_) => NOTIFY,
            Payload::Delete(_) => DELETE,
            Payload::Vendor(_) => VENDOR,
            Payload::TsI(_) => TSI,
            Payload::TsR(_) => TSR,
            Payload::Sk { .. } => SK,
            Payload::Unknown { ty, .. } => *ty,
        }
    }

    fn parse_body(ty: u8, critical: bool, body: &[u8]) -> Result<Payload, Error> {
        use payload_type::*;
        let mut r = Reader::new(body);
        let p = match ty {
            SA => {
                let mut props = Vec::new();
                loop {
                    let last = r.u8("SA payload")?;
                    let _ = r.u8("SA payload")?;
                    let len = usize::from(r.u16("SA payload")?);
                    if len < 8 {
                        return Err(Error::malformed("proposal", format!("length {len} below 8")));
                    }
                    let mut pr = r.sub(len - 4, "proposal")?;
                    props.push(Proposal::parse(&mut pr, props.len() as u8 + 1)?);
                    match last {
                        0 => break,
                        2 => continue,
                        n => {
                            return Err(Error::malformed(
                                "proposal",
                                format!("last-substructure byte {n}"),
                            ));
                        }
                    }
                }
                r.finish("SA payload")?;
                Payload::Sa(props)
            }
            KE => {
                let group = r.u16("KE payload")?;
                r.u16("KE payload")?;
                Payload::Ke { group, data: r.rest().to_vec() }
            }
            IDI | IDR => {
                let idt = r.u8("ID payload")?;
                r.take(3, "ID payload")?;
                let id = Id { ty: idt, data: r.rest().to_vec() };
                if ty == IDI { Payload::IdI(id) } else { Payload::IdR(id) }
            }
            AUTH => {
                let method = r.u8("AUTH payload")?;
                r.take(3, "AUTH payload")?;
                Payload::Auth { method, data: r.rest().to_vec() }
            }
            NONCE => {
                let n = r.rest();
                if !(16..=256).contains(&n.len()) {
                    return Err(Error::malformed(
                        "Nonce payload",
                        format!("nonce of {} bytes (16..=256)", n.len()),
                    ));
                }
                Payload::Nonce(n.to_vec())
            }
            NOTIFY => {
                let protocol = r.u8("Notify payload")?;
                let spi_size = r.u8("Notify payload")?;
                let nt = NotifyType(r.u16("Notify payload")?);
                let spi = r.take(usize::from(spi_size), "Notify payload")?.to_vec();
                Payload::Notify(Notify { protocol, spi, ty: nt, data: r.rest().to_vec() })
            }
            DELETE => {
                let protocol = r.u8("Delete payload")?;
                let spi_size = r.u8("Delete payload")?;
                let n = r.u16("Delete payload")?;
                let mut spis = Vec::new();
                match (protocol, spi_size) {
                    (protocol::IKE, 0) if n == 0 => {}
                    (protocol::ESP | protocol::AH, 4) => {
                        for _ in 0..n {
                            spis.push(r.u32("Delete payload")?);
                        }
                    }
                    _ => {
                        return Err(Error::malformed(
                            "Delete payload",
                            format!("protocol {protocol} with SPI size {spi_size}"),
                        ));
                    }
                }
                r.finish("Delete payload")?;
                Payload::Delete(Delete { protocol, spis })
            }
            VENDOR => Payload::Vendor(r.rest().to_vec()),
            TSI | TSR => {
                let n = r.u8("TS payload")?;
                r.take(3, "TS payload")?;
                let mut v = Vec::new();
                for _ in 0..n {
                    let tst = r.u8("traffic selector")?;
                    let proto = r.u8("traffic selector")?;
                    let len = usize::from(r.u16("traffic selector")?);
                    let mut t = r.sub(len.saturating_sub(4), "traffic selector")?;
                    let first = t.u16("traffic selector")?;
                    let last = t.u16("traffic selector")?;
                    let (start, end) = match tst {
                        7 => {
                            let a: [u8; 4] =
                                t.take(4, "traffic selector")?.try_into().unwrap_or_default();
                            let b: [u8; 4] =
                                t.take(4, "traffic selector")?.try_into().unwrap_or_default();
                            (IpAddr::V4(Ipv4Addr::from(a)), IpAddr::V4(Ipv4Addr::from(b)))
                        }
                        8 => {
                            let a: [u8; 16] =
                                t.take(16, "traffic selector")?.try_into().unwrap_or_default();
                            let b: [u8; 16] =
                                t.take(16, "traffic selector")?.try_into().unwrap_or_default();
                            (IpAddr::V6(Ipv6Addr::from(a)), IpAddr::V6(Ipv6Addr::from(b)))
                        }
                        // Other selector types (e.g. Fibre Channel) cannot match ours: skip.
                        _ => continue,
                    };
                    t.finish("traffic selector")?;
                    v.push(TrafficSelector { proto, ports: PortRange { first, last }, start, end });
                }
                r.finish("TS payload")?;
                if ty == TSI { Payload::TsI(v) } else { Payload::TsR(v) }
            }
            _ => Payload::Unknown { ty, critical, data: body.to_vec() },
        };
        Ok(p)
    }

    fn emit_body(&self, out: &mut Vec<u8>) {
        match self {
            Payload::Sa(props) => {
                for (i, p) in props.iter().enumerate() {
                    p.emit(i + 1 == props.len(), out);
                }
            }
            Payload::Ke { group, data } => {
                out.extend_from_slice(&group.to_be_bytes());
                out.extend_from_slice(&[0, 0]);
                out.extend_from_slice(data);
            }
            Payload::IdI(id) | Payload::IdR(id) => out.extend_from_slice(&id.body()),
            Payload::Auth { method, data } => {
                out.extend_from_slice(&[*method, 0, 0, 0]);
                out.extend_from_slice(data);
            }
            Payload::Nonce(n) => out.extend_from_slice(n),
            Payload::Notify(n) => {
                out.push(n.protocol);
                out.push(n.spi.len() as u8);
                out.extend_from_slice(&n.ty.0.to_be_bytes());
                out.extend_from_slice(&n.spi);
                out.extend_from_slice(&n.data);
            }
            Payload::Delete(d) => {
                out.push(d.protocol);
                out.push(if d.protocol == protocol::IKE { 0 } else { 4 });
                out.extend_from_slice(&(d.spis.len() as u16).to_be_bytes());
                for s in &d.spis {
                    out.extend_from_slice(&s.to_be_bytes());
                }
            }
            Payload::Vendor(v) => out.extend_from_slice(v),
            Payload::TsI(ts) | Payload::TsR(ts) => {
                out.extend_from_slice(&[ts.len() as u8, 0, 0, 0]);
                for t in ts {
                    let (ty, len) = if t.is_ipv4() { (7u8, 16u16) } else { (8, 40) };
                    out.push(ty);
                    out.push(t.proto);
                    out.extend_from_slice(&len.to_be_bytes());
                    out.extend_from_slice(&t.ports.first.to_be_bytes());
                    out.extend_from_slice(&t.ports.last.to_be_bytes());
                    for a in [t.start, t.end] {
                        match a {
                            IpAddr::V4(a) => out.extend_from_slice(&a.octets()),
                            IpAddr::V6(a) => out.extend_from_slice(&a.octets()),
                        }
                    }
                }
            }
            Payload::Sk { body, .. } => out.extend_from_slice(body),
            Payload::Unknown { data, .. } => out.extend_from_slice(data),
        }
    }
}

/// Parses a payload chain starting with type `first`. An SK payload must be the last one.
pub fn parse_payloads(first: u8, data: &[u8]) -> Result<Vec<Payload>, Error> {
    let mut r = Reader::new(data);
    let mut next = first;
    let mut out = Vec::new();
    while next != payload_type::NONE {
        let ty = next;
        next = r.u8("payload header")?;
        let crit = r.u8("payload header")? & 0x80 != 0;
        let len = usize::from(r.u16("payload header")?);
        if len < 4 {
            return Err(Error::malformed("payload header", format!("length {len} below 4")));
        }
        let body = r.take(len - 4, "payload")?;
        if ty == payload_type::SK {
            if r.remaining() != 0 {
                return Err(Error::malformed("SK payload", "not the last payload"));
            }
            out.push(Payload::Sk { first: next, body: body.to_vec() });
            return Ok(out);
        }
        out.push(Payload::parse_body(ty, crit, body)?);
        if out.len() > 64 {
            return Err(Error::malformed("message", "more than 64 payloads"));
        }
    }
    r.finish("message")?;
    Ok(out)
}

/// Appends a payload chain; returns the type of the first payload (for the header or the SK
/// payload's Next Payload field).
pub fn emit_payloads(payloads: &[Payload], out: &mut Vec<u8>) -> u8 {
    for (i, p) in payloads.iter().enumerate() {
        let next = match payloads.get(i + 1) {
            Some(Payload::Sk { .. }) | None if matches!(p, Payload::Sk { .. }) => 0,
            Some(n) => n.ty(),
            None => 0,
        };
        let next = if let Payload::Sk { first, .. } = p { *first } else { next };
        let start = out.len();
        let crit = matches!(p, Payload::Unknown { critical: true, .. });
        out.extend_from_slice(&[next, if crit { 0x80 } else { 0 }, 0, 0]);
        p.emit_body(out);
        let len = (out.len() - start) as u16;
        out[start + 2..start + 4].copy_from_slice(&len.to_be_bytes());
    }
    payloads.first().map(|p| p.ty()).unwrap_or(payload_type::NONE)
}

/// A parsed datagram: the header and the outer payload chain (which ends with SK in encrypted
/// messages).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    /// The header.
    pub header: Header,
    /// Outer payloads.
    pub payloads: Vec<Payload>,
}

/// Parses a whole datagram (header and outer payloads).
pub fn parse_message(data: &[u8]) -> Result<Message, Error> {
    let header = Header::parse(data)?;
    let payloads = parse_payloads(header.next_payload, &data[HEADER_LEN..])?;
    Ok(Message { header, payloads })
}

/// Encodes an unencrypted message; fills in `next_payload` and `length`.
pub fn encode_plain(mut header: Header, payloads: &[Payload]) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    header.emit(&mut out);
    let first = emit_payloads(payloads, &mut out);
    header.next_payload = first;
    header.length = out.len() as u32;
    out[16] = first;
    out[24..28].copy_from_slice(&header.length.to_be_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header() -> Header {
        Header {
            spi_i: 0x0102030405060708,
            spi_r: 0,
            next_payload: 0,
            version: 0x20,
            exchange: ExchangeType::IKE_SA_INIT,
            flags: flags::INITIATOR,
            message_id: 0,
            length: 0,
        }
    }

    #[test]
    fn round_trips_every_payload() {
        let ike = IkeProposal::parse("aes256gcm16-aes128gcm16-prfsha256-x25519-ecp256").unwrap();
        let esp = EspProposal::parse("aes256gcm16-esn-noesn").unwrap();
        let payloads = vec![
            Payload::Sa(vec![
                Proposal::from_ike(1, &[], &ike),
                Proposal::from_esp(2, 7, &esp, false),
            ]),
            Payload::Ke { group: 31, data: vec![9; 32] },
            Payload::Nonce(vec![1; 32]),
            Payload::IdI(Id { ty: 2, data: b"gw.example".to_vec() }),
            Payload::IdR(Id { ty: 1, data: vec![192, 0, 2, 1] }),
            Payload::Auth { method: 2, data: vec![3; 32] },
            Payload::Notify(Notify::new(NotifyType::NAT_DETECTION_SOURCE_IP, vec![4; 20])),
            Payload::Delete(Delete { protocol: protocol::ESP, spis: vec![1, 2] }),
            Payload::Delete(Delete { protocol: protocol::IKE, spis: vec![] }),
            Payload::Vendor(b"isthmus".to_vec()),
            Payload::TsI(vec![
                "10.1.0.0/16".parse().unwrap(),
                "2001:db8::/32[tcp/443]".parse().unwrap(),
            ]),
            Payload::TsR(vec!["10.2.0.0/16".parse().unwrap()]),
            Payload::Unknown { ty: 200, critical: false, data: vec![1, 2, 3] },
        ];
        let bytes = encode_plain(header(), &payloads);
        let m = parse_message(&bytes).unwrap();
        assert_eq!(m.payloads, payloads);
        assert_eq!(m.header.next_payload, payload_type::SA);
        assert_eq!(m.header.length as usize, bytes.len());
        let Payload::Sa(props) = &m.payloads[0] else { panic!("no SA") };
        assert_eq!(props[0].to_ike(), ike);
        assert_eq!(props[1].to_esp(), esp);
        assert_eq!(props[0].describe(), "aes256gcm16-aes128gcm16-prfsha256-x25519-ecp256");
        assert_eq!(props[1].describe(), "aes256gcm16-esn-noesn");
    }

    #[test]
    fn keeps_critical_unknown_payloads() {
        let bytes =
            encode_plain(header(), &[Payload::Unknown { ty: 99, critical: true, data: vec![] }]);
        let m = parse_message(&bytes).unwrap();
        assert_eq!(m.payloads, [Payload::Unknown { ty: 99, critical: true, data: vec![] }]);
    }

    #[test]
    fn refuses_bad_lengths_and_trailing_bytes() {
        let mut bytes = encode_plain(header(), &[Payload::Nonce(vec![1; 16])]);
        // Header length disagrees with the datagram.
        bytes.push(0);
        assert!(matches!(parse_message(&bytes), Err(Error::Malformed { .. })));
        bytes.pop();
        // A payload length beyond the end.
        bytes[HEADER_LEN + 3] = 200;
        assert!(matches!(parse_message(&bytes), Err(Error::Truncated { .. })));
        // Every truncation of a valid message is refused without a panic.
        let good = encode_plain(
            header(),
            &[Payload::Sa(vec![Proposal::from_ike(
                1,
                &[],
                &IkeProposal::parse("aes256gcm16-prfsha256-x25519").unwrap(),
            )])],
        );
        for n in 0..good.len() {
            assert!(parse_message(&good[..n]).is_err());
        }
        let mut v1 = good.clone();
        v1[17] = 0x10;
        assert_eq!(parse_message(&v1), Err(Error::InvalidMajorVersion(1)));
    }

    #[test]
    fn names_foreign_proposals() {
        let p = Proposal {
            num: 1,
            protocol: protocol::IKE,
            spi: vec![],
            transforms: vec![
                Transform { ty: 1, id: 12, key_len: Some(256), unknown_attr: false },
                Transform { ty: 3, id: 12, key_len: None, unknown_attr: false },
                Transform { ty: 2, id: 5, key_len: None, unknown_attr: false },
                Transform { ty: 4, id: 14, key_len: None, unknown_attr: false },
            ],
        };
        assert_eq!(p.describe(), "aes256-sha256-prfsha256-modp2048");
        assert_eq!(p.to_ike().chosen().unwrap().to_string(), "aes256-sha256-prfsha256-modp2048");
        let ctr = Proposal {
            transforms: vec![Transform { ty: 1, id: 13, key_len: Some(256), unknown_attr: false }],
            ..p
        };
        assert_eq!(ctr.describe(), "aes256ctr");
        assert!(ctr.to_ike().encr.is_empty());
    }
}

//! The ISAKMP message codec of IKEv1 (RFC 2408 §3, with the IPsec DOI of RFC 2407 §4 and the
//! NAT-T payloads of RFC 3947 §3).
//!
//! The fixed header has IKEv2's layout (cookies in place of SPIs), so [`Header`] and [`Reader`]
//! are shared with the IKEv2 codec; only the version, the flags and the payloads differ. An
//! encrypted message (flag E) carries its payload chain as ciphertext: [`parse_message`] returns
//! it as [`Body::Encrypted`] for the phase's keys to open, and [`parse_payloads`] then reads the
//! plaintext. Nothing here panics on input: every length is checked against what is left.

use crate::codec::{ExchangeType, HEADER_LEN, Header, Reader};
use crate::error::Error;

/// The version byte of IKEv1 messages: major 1, minor 0 (RFC 2408 §3.1).
pub const VERSION: u8 = 0x10;

/// Payload types (RFC 2408 §3.1; NAT-D and NAT-OA from RFC 3947 §3).
pub mod payload_type {
    /// No next payload.
    pub const NONE: u8 = 0;
    /// Security Association.
    pub const SA: u8 = 1;
    /// Proposal (inside an SA payload).
    pub const PROPOSAL: u8 = 2;
    /// Transform (inside a proposal).
    pub const TRANSFORM: u8 = 3;
    /// Key Exchange.
    pub const KE: u8 = 4;
    /// Identification.
    pub const ID: u8 = 5;
    /// Certificate.
    pub const CERT: u8 = 6;
    /// Certificate Request.
    pub const CERT_REQ: u8 = 7;
    /// Hash.
    pub const HASH: u8 = 8;
    /// Signature.
    pub const SIG: u8 = 9;
    /// Nonce.
    pub const NONCE: u8 = 10;
    /// Notification.
    pub const NOTIFY: u8 = 11;
    /// Delete.
    pub const DELETE: u8 = 12;
    /// Vendor ID.
    pub const VENDOR: u8 = 13;
    /// NAT Discovery.
    pub const NAT_D: u8 = 20;
    /// NAT Original Address.
    pub const NAT_OA: u8 = 21;
}

/// Exchange types (RFC 2408 §3.1, RFC 2409 §5).
pub mod exchange {
    use crate::codec::ExchangeType;
    /// Identity Protection: Main Mode (RFC 2409 §5).
    pub const MAIN: ExchangeType = ExchangeType(2);
    /// Aggressive Mode.
    pub const AGGRESSIVE: ExchangeType = ExchangeType(4);
    /// Informational.
    pub const INFORMATIONAL: ExchangeType = ExchangeType(5);
    /// Quick Mode (RFC 2409 §5.5).
    pub const QUICK: ExchangeType = ExchangeType(32);
}

/// Header flags (RFC 2408 §3.1).
pub mod flags {
    /// The payloads after the header are encrypted.
    pub const ENCRYPTION: u8 = 0x01;
    /// Commit: the sender wants a CONNECTED notification before using the SA.
    pub const COMMIT: u8 = 0x02;
    /// Authentication only (not used with the IPsec DOI).
    pub const AUTH_ONLY: u8 = 0x04;
}

/// The IPsec Domain of Interpretation (RFC 2407 §4.2).
pub const DOI_IPSEC: u32 = 1;
/// Situation SIT_IDENTITY_ONLY (RFC 2407 §4.2.1).
pub const SIT_IDENTITY_ONLY: u32 = 1;

/// More payloads than any IKEv1 exchange carries: a message beyond it is refused.
const MAX_PAYLOADS: usize = 64;
/// Proposals or transforms in one SA payload beyond which it is refused.
const MAX_ITEMS: usize = 64;

/// A data attribute (RFC 2408 §3.3): basic (AF set, a 16-bit value) or variable length.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attribute {
    /// Attribute type (without the AF bit).
    pub ty: u16,
    /// Its value.
    pub value: AttrValue,
}

/// The value of an [`Attribute`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AttrValue {
    /// TV format: the value in the header.
    Basic(u16),
    /// TLV format: up to 65,535 bytes.
    Variable(Vec<u8>),
}

impl Attribute {
    /// A basic attribute.
    pub fn basic(ty: u16, v: u16) -> Attribute {
        Attribute { ty, value: AttrValue::Basic(v) }
    }

    /// An attribute holding `v`: basic when it fits 16 bits, else variable with the fewest
    /// bytes (life durations, RFC 2409 Appendix A).
    pub fn number(ty: u16, v: u64) -> Attribute {
        match u16::try_from(v) {
            Ok(b) => Attribute::basic(ty, b),
            Err(_) => {
                let bytes = v.to_be_bytes();
                let skip = bytes.iter().take_while(|b| **b == 0).count();
                Attribute { ty, value: AttrValue::Variable(bytes[skip..].to_vec()) }
            }
        }
    }

    /// The value as a number: a basic value, or variable bytes of at most 8.
    pub fn as_u64(&self) -> Option<u64> {
        match &self.value {
            AttrValue::Basic(v) => Some(u64::from(*v)),
            AttrValue::Variable(b) if b.len() <= 8 => {
                Some(b.iter().fold(0u64, |a, x| (a << 8) | u64::from(*x)))
            }
            AttrValue::Variable(_) => None,
        }
    }

    fn parse(r: &mut Reader<'_>) -> Result<Attribute, Error> {
        let t = r.u16("attribute")?;
        let ty = t & 0x7fff;
        let value = if t & 0x8000 != 0 {
            AttrValue::Basic(r.u16("attribute")?)
        } else {
            let n = usize::from(r.u16("attribute")?);
            AttrValue::Variable(r.take(n, "attribute value")?.to_vec())
        };
        Ok(Attribute { ty, value })
    }

    fn emit(&self, out: &mut Vec<u8>) {
        match &self.value {
            AttrValue::Basic(v) => {
                out.extend_from_slice(&(self.ty | 0x8000).to_be_bytes());
                out.extend_from_slice(&v.to_be_bytes());
            }
            AttrValue::Variable(b) => {
                out.extend_from_slice(&(self.ty & 0x7fff).to_be_bytes());
                // Values are built by this crate; a longer one is cut rather than mis-framed.
                let n = b.len().min(usize::from(u16::MAX));
                out.extend_from_slice(&(n as u16).to_be_bytes());
                out.extend_from_slice(&b[..n]);
            }
        }
    }
}

/// Data attributes laid end to end (a transform's, or RESPONDER-LIFETIME's notification data).
pub fn parse_attributes(data: &[u8]) -> Result<Vec<Attribute>, Error> {
    let mut r = Reader::new(data);
    let mut out = Vec::new();
    while r.remaining() > 0 {
        out.push(Attribute::parse(&mut r)?);
        if out.len() > MAX_ITEMS {
            return Err(Error::malformed("attributes", "too many"));
        }
    }
    Ok(out)
}

/// Appends one attribute.
pub fn emit_attribute(a: &Attribute, out: &mut Vec<u8>) {
    a.emit(out);
}

/// A Transform payload (RFC 2408 §3.6).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transform {
    /// Transform number.
    pub num: u8,
    /// Transform ID (KEY_IKE = 1 in phase 1; ESP_AES = 12 etc. in phase 2, RFC 2407 §4.4.4).
    pub id: u8,
    /// SA attributes.
    pub attrs: Vec<Attribute>,
}

impl Transform {
    /// The first attribute of type `ty`.
    pub fn attr(&self, ty: u16) -> Option<&Attribute> {
        self.attrs.iter().find(|a| a.ty == ty)
    }
}

/// A Proposal payload (RFC 2408 §3.5).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Proposal {
    /// Proposal number (proposals with the same number are ANDed, §4.2).
    pub num: u8,
    /// Protocol ID (PROTO_ISAKMP = 1, PROTO_IPSEC_ESP = 3).
    pub protocol: u8,
    /// SPI (empty or the cookies in phase 1; 4 bytes for ESP).
    pub spi: Vec<u8>,
    /// The transforms, alternatives in order of preference.
    pub transforms: Vec<Transform>,
}

/// An SA payload (RFC 2408 §3.4, IPsec DOI situation RFC 2407 §4.6.1).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sa {
    /// Domain of interpretation ([`DOI_IPSEC`]).
    pub doi: u32,
    /// Situation ([`SIT_IDENTITY_ONLY`]).
    pub situation: u32,
    /// The proposals.
    pub proposals: Vec<Proposal>,
}

/// An Identification payload (RFC 2407 §4.6.2): phase 1 identities and Quick Mode proxy IDs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Id {
    /// ID type (ID_IPV4_ADDR = 1, ID_FQDN = 2, ID_USER_FQDN = 3, ID_IPV4_ADDR_SUBNET = 4, ...).
    pub ty: u8,
    /// IP protocol (0: any).
    pub protocol: u8,
    /// Port (0: any).
    pub port: u16,
    /// Identification data.
    pub data: Vec<u8>,
}

impl Id {
    /// The bytes HASH_I and HASH_R cover (RFC 2409 §5: IDii_b / IDir_b, the body without
    /// the generic header).
    pub fn body(&self) -> Vec<u8> {
        let mut v = vec![self.ty, self.protocol];
        v.extend_from_slice(&self.port.to_be_bytes());
        v.extend_from_slice(&self.data);
        v
    }
}

/// A Notification payload (RFC 2408 §3.14).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Notify {
    /// Domain of interpretation.
    pub doi: u32,
    /// Protocol ID.
    pub protocol: u8,
    /// Notify message type (errors below 16384; DPD's R-U-THERE is 36136, RFC 3706).
    pub ty: u16,
    /// SPI (the cookies, an ESP SPI, or empty).
    pub spi: Vec<u8>,
    /// Notification data.
    pub data: Vec<u8>,
}

/// A Delete payload (RFC 2408 §3.15).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delete {
    /// Domain of interpretation.
    pub doi: u32,
    /// Protocol ID (1: the ISAKMP SA, 3: ESP).
    pub protocol: u8,
    /// SPI size (16 for the ISAKMP SA's cookies, 4 for ESP).
    pub spi_size: u8,
    /// The SPIs, each `spi_size` bytes.
    pub spis: Vec<Vec<u8>>,
}

/// One payload of an IKEv1 message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Payload {
    /// Security Association.
    Sa(Sa),
    /// Key Exchange: the public value.
    Ke(Vec<u8>),
    /// Identification.
    Id(Id),
    /// Hash.
    Hash(Vec<u8>),
    /// Nonce.
    Nonce(Vec<u8>),
    /// Notification.
    Notify(Notify),
    /// Delete.
    Delete(Delete),
    /// Vendor ID.
    Vendor(Vec<u8>),
    /// NAT Discovery hash.
    NatD(Vec<u8>),
    /// NAT Original Address (RFC 3947 §5.2): ID type and address.
    NatOa {
        /// ID type (1: IPv4, 5: IPv6).
        ty: u8,
        /// The address.
        data: Vec<u8>,
    },
    /// A payload this crate does not interpret (certificates, signatures): kept as is.
    Unknown {
        /// Payload type.
        ty: u8,
        /// The body.
        data: Vec<u8>,
    },
}

impl Payload {
    /// The payload's type number.
    pub fn ty(&self) -> u8 {
        use payload_type as t;
        match self {
            Payload::Sa(_) => t::SA,
            Payload::Ke(_) => t::KE,
            Payload::Id(_) => t::ID,
            Payload::Hash(_) => t::HASH,
            Payload::Nonce(_) => t::NONCE,
            Payload::Notify(_) => t::NOTIFY,
            Payload::Delete(_) => t::DELETE,
            Payload::Vendor(_) => t::VENDOR,
            Payload::NatD(_) => t::NAT_D,
            Payload::NatOa { .. } => t::NAT_OA,
            Payload::Unknown { ty, .. } => *ty,
        }
    }

    fn parse_body(ty: u8, body: &[u8]) -> Result<Payload, Error> {
        use payload_type as t;
        let mut r = Reader::new(body);
        Ok(match ty {
            t::SA => Payload::Sa(parse_sa(&mut r)?),
            t::KE => Payload::Ke(body.to_vec()),
            t::ID => Payload::Id(Id {
                ty: r.u8("ID payload")?,
                protocol: r.u8("ID payload")?,
                port: r.u16("ID payload")?,
                data: r.rest().to_vec(),
            }),
            t::HASH => Payload::Hash(body.to_vec()),
            t::NONCE => Payload::Nonce(body.to_vec()),
            t::NOTIFY => {
                let doi = r.u32("notification")?;
                let protocol = r.u8("notification")?;
                let spi_size = usize::from(r.u8("notification")?);
                let ty = r.u16("notification")?;
                let spi = r.take(spi_size, "notification SPI")?.to_vec();
                Payload::Notify(Notify { doi, protocol, ty, spi, data: r.rest().to_vec() })
            }
            t::DELETE => {
                let doi = r.u32("delete")?;
                let protocol = r.u8("delete")?;
                let spi_size = r.u8("delete")?;
                let n = usize::from(r.u16("delete")?);
                let size = usize::from(spi_size);
                if size == 0 || n.saturating_mul(size) != r.remaining() {
                    return Err(Error::malformed(
                        "delete",
                        format!("{n} SPIs of {size} bytes in {} bytes", r.remaining()),
                    ));
                }
                let spis = (0..n)
                    .map(|_| r.take(size, "delete SPI").map(<[u8]>::to_vec))
                    .collect::<Result<_, _>>()?;
                Payload::Delete(Delete { doi, protocol, spi_size, spis })
            }
            t::VENDOR => Payload::Vendor(body.to_vec()),
            t::NAT_D => Payload::NatD(body.to_vec()),
            t::NAT_OA => {
                let ty = r.u8("NAT-OA")?;
                r.take(3, "NAT-OA")?;
                Payload::NatOa { ty, data: r.rest().to_vec() }
            }
            _ => Payload::Unknown { ty, data: body.to_vec() },
        })
    }

    fn emit_body(&self, out: &mut Vec<u8>) {
        match self {
            Payload::Sa(sa) => emit_sa(sa, out),
            Payload::Ke(d)
            | Payload::Hash(d)
            | Payload::Nonce(d)
            | Payload::Vendor(d)
            | Payload::NatD(d)
            | Payload::Unknown { data: d, .. } => out.extend_from_slice(d),
            Payload::Id(id) => out.extend_from_slice(&id.body()),
            Payload::Notify(n) => {
                out.extend_from_slice(&n.doi.to_be_bytes());
                out.push(n.protocol);
                out.push(n.spi.len() as u8);
                out.extend_from_slice(&n.ty.to_be_bytes());
                out.extend_from_slice(&n.spi);
                out.extend_from_slice(&n.data);
            }
            Payload::Delete(d) => {
                out.extend_from_slice(&d.doi.to_be_bytes());
                out.push(d.protocol);
                out.push(d.spi_size);
                out.extend_from_slice(&(d.spis.len() as u16).to_be_bytes());
                d.spis.iter().for_each(|s| out.extend_from_slice(s));
            }
            Payload::NatOa { ty, data } => {
                out.extend_from_slice(&[*ty, 0, 0, 0]);
                out.extend_from_slice(data);
            }
        }
    }
}

/// Reads a generic payload header (RFC 2408 §3.2): next payload type and the body.
fn generic<'a>(r: &mut Reader<'a>, what: &'static str) -> Result<(u8, &'a [u8]), Error> {
    let next = r.u8(what)?;
    if r.u8(what)? != 0 {
        return Err(Error::malformed(what, "reserved byte is not zero"));
    }
    let len = usize::from(r.u16(what)?);
    if len < 4 {
        return Err(Error::malformed(what, format!("length {len} below 4")));
    }
    Ok((next, r.take(len - 4, what)?))
}

/// Appends a generic header for a body emitted by `body`, with `next` as its Next Payload.
fn framed(out: &mut Vec<u8>, next: u8, body: impl FnOnce(&mut Vec<u8>)) {
    let start = out.len();
    out.extend_from_slice(&[next, 0, 0, 0]);
    body(out);
    let len = (out.len() - start) as u16;
    out[start + 2..start + 4].copy_from_slice(&len.to_be_bytes());
}

fn parse_sa(r: &mut Reader<'_>) -> Result<Sa, Error> {
    let doi = r.u32("SA payload")?;
    let situation = r.u32("SA payload")?;
    let mut proposals = Vec::new();
    // RFC 2408 §3.4: the proposals follow the situation; a chain of P payloads ending in 0.
    let mut next = if r.remaining() > 0 { payload_type::PROPOSAL } else { payload_type::NONE };
    while next != payload_type::NONE {
        if next != payload_type::PROPOSAL {
            return Err(Error::malformed("SA payload", format!("payload {next} among proposals")));
        }
        let (n, body) = generic(r, "proposal")?;
        next = n;
        let mut p = Reader::new(body);
        let num = p.u8("proposal")?;
        let protocol = p.u8("proposal")?;
        let spi_size = usize::from(p.u8("proposal")?);
        let count = usize::from(p.u8("proposal")?);
        let spi = p.take(spi_size, "proposal SPI")?.to_vec();
        let mut transforms = Vec::with_capacity(count.min(MAX_ITEMS));
        let mut tnext = if count > 0 { payload_type::TRANSFORM } else { payload_type::NONE };
        while tnext != payload_type::NONE {
            if tnext != payload_type::TRANSFORM {
                return Err(Error::malformed(
                    "proposal",
                    format!("payload {tnext} among transforms"),
                ));
            }
            let (n, body) = generic(&mut p, "transform")?;
            tnext = n;
            let mut t = Reader::new(body);
            let num = t.u8("transform")?;
            let id = t.u8("transform")?;
            t.take(2, "transform")?;
            let attrs = parse_attributes(t.rest())?;
            transforms.push(Transform { num, id, attrs });
            if transforms.len() > MAX_ITEMS {
                return Err(Error::malformed("proposal", "too many transforms"));
            }
        }
        if transforms.len() != count {
            return Err(Error::malformed(
                "proposal",
                format!("says {count} transforms, carries {}", transforms.len()),
            ));
        }
        p.finish("proposal")?;
        proposals.push(Proposal { num, protocol, spi, transforms });
        if proposals.len() > MAX_ITEMS {
            return Err(Error::malformed("SA payload", "too many proposals"));
        }
    }
    r.finish("SA payload")?;
    Ok(Sa { doi, situation, proposals })
}

fn emit_sa(sa: &Sa, out: &mut Vec<u8>) {
    out.extend_from_slice(&sa.doi.to_be_bytes());
    out.extend_from_slice(&sa.situation.to_be_bytes());
    for (i, p) in sa.proposals.iter().enumerate() {
        let next =
            if i + 1 < sa.proposals.len() { payload_type::PROPOSAL } else { payload_type::NONE };
        framed(out, next, |out| {
            out.extend_from_slice(&[p.num, p.protocol, p.spi.len() as u8]);
            out.push(p.transforms.len() as u8);
            out.extend_from_slice(&p.spi);
            for (j, t) in p.transforms.iter().enumerate() {
                let next = if j + 1 < p.transforms.len() {
                    payload_type::TRANSFORM
                } else {
                    payload_type::NONE
                };
                framed(out, next, |out| {
                    out.extend_from_slice(&[t.num, t.id, 0, 0]);
                    t.attrs.iter().for_each(|a| a.emit(out));
                });
            }
        });
    }
}

/// The raw bodies of a payload chain that starts with type `first`, with their types: what
/// the hashes of RFC 2409 cover (SAi_b, IDii_b are bodies as sent, not as re-encoded).
pub fn chain(first: u8, data: &[u8]) -> Result<Vec<(u8, &[u8])>, Error> {
    let mut r = Reader::new(data);
    let mut next = first;
    let mut out = Vec::new();
    while next != payload_type::NONE {
        let ty = next;
        let (n, body) = generic(&mut r, "payload header")?;
        next = n;
        out.push((ty, body));
        if out.len() > MAX_PAYLOADS {
            return Err(Error::malformed("message", format!("more than {MAX_PAYLOADS} payloads")));
        }
    }
    // RFC 2409 Appendix B pads the plaintext to the cipher's block size: after decryption the
    // chain may be followed by padding, which the chain's own lengths leave out.
    Ok(out)
}

/// Parses a plaintext payload chain that starts with type `first`.
pub fn parse_payloads(first: u8, data: &[u8]) -> Result<Vec<Payload>, Error> {
    chain(first, data)?.into_iter().map(|(ty, body)| Payload::parse_body(ty, body)).collect()
}

/// Appends a payload chain; returns the type of its first payload.
pub fn emit_payloads(payloads: &[Payload], out: &mut Vec<u8>) -> u8 {
    for (i, p) in payloads.iter().enumerate() {
        let next = payloads.get(i + 1).map_or(payload_type::NONE, Payload::ty);
        framed(out, next, |out| p.emit_body(out));
    }
    payloads.first().map_or(payload_type::NONE, Payload::ty)
}

/// What follows the header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Body {
    /// A plaintext payload chain.
    Plain(Vec<Payload>),
    /// Flag E: the ciphertext, to be decrypted with the phase's key and IV.
    Encrypted(Vec<u8>),
}

/// A parsed IKEv1 datagram.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    /// The header (cookies in `spi_i`/`spi_r`).
    pub header: Header,
    /// The payloads, or the ciphertext that holds them.
    pub body: Body,
}

/// Parses a whole datagram: an ISAKMP header of version 1.0 whose length matches, then the
/// plaintext payloads or the encrypted body.
pub fn parse_message(data: &[u8]) -> Result<Message, Error> {
    let header = Header::parse_loose(data)?;
    if header.version >> 4 != 1 {
        return Err(Error::InvalidMajorVersion(header.version >> 4));
    }
    if header.length as usize != data.len() {
        return Err(Error::malformed(
            "ISAKMP header",
            format!("length field {} but datagram has {} bytes", header.length, data.len()),
        ));
    }
    let rest = &data[HEADER_LEN..];
    let body = if header.flags & flags::ENCRYPTION != 0 {
        Body::Encrypted(rest.to_vec())
    } else {
        let payloads = parse_payloads(header.next_payload, rest)?;
        Body::Plain(payloads)
    };
    Ok(Message { header, body })
}

/// Encodes a header and a plaintext chain; fills in the next payload and length fields.
pub fn encode_plain(header: Header, payloads: &[Payload]) -> Vec<u8> {
    let mut body = Vec::with_capacity(256);
    let first = emit_payloads(payloads, &mut body);
    encode(header, first, &body)
}

/// Encodes a header and a body that is already laid out (a ciphertext for flag E); fills in
/// `first` as the next payload and the length.
pub fn encode(mut header: Header, first: u8, body: &[u8]) -> Vec<u8> {
    header.next_payload = first;
    header.version = VERSION;
    header.length = (HEADER_LEN + body.len()) as u32;
    let mut out = Vec::with_capacity(HEADER_LEN + body.len());
    header.emit(&mut out);
    out.extend_from_slice(body);
    out
}

/// A header for an IKEv1 message (length and next payload are filled in by [`encode`]).
pub fn header(cookie_i: u64, cookie_r: u64, exchange: ExchangeType, flags: u8, id: u32) -> Header {
    Header {
        spi_i: cookie_i,
        spi_r: cookie_r,
        next_payload: 0,
        version: VERSION,
        exchange,
        flags,
        message_id: id,
        length: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn main_mode_sa() -> Sa {
        // RFC 2409 Appendix A attributes: AES-CBC (7) 256, SHA2-256 (4), PSK (1), MODP 2048
        // (group 14), life 28800 s (seconds = 1), as strongSwan proposes in Main Mode.
        let t = |num, group| Transform {
            num,
            id: 1,
            attrs: vec![
                Attribute::basic(1, 7),
                Attribute::basic(14, 256),
                Attribute::basic(2, 4),
                Attribute::basic(3, 1),
                Attribute::basic(4, group),
                Attribute::basic(11, 1),
                Attribute::number(12, 28_800),
            ],
        };
        Sa {
            doi: DOI_IPSEC,
            situation: SIT_IDENTITY_ONLY,
            proposals: vec![Proposal {
                num: 1,
                protocol: 1,
                spi: vec![],
                transforms: vec![t(1, 14), t(2, 5)],
            }],
        }
    }

    #[test]
    fn a_main_mode_first_message_has_rfc_2408_framing() {
        let h = header(0x0102030405060708, 0, exchange::MAIN, 0, 0);
        let msg = encode_plain(h, &[Payload::Sa(main_mode_sa()), Payload::Vendor(vec![0xaf; 16])]);
        // Header: cookies, next payload SA (1), version 0x10, Main Mode (2), no flags, ID 0.
        assert_eq!(&msg[16..20], &[1, 0x10, 2, 0]);
        assert_eq!(u32::from_be_bytes(msg[24..28].try_into().unwrap()) as usize, msg.len());
        // SA: next payload Vendor ID (13), DOI 1, situation 1, then a proposal (P, next 0)
        // with protocol ISAKMP, no SPI and two transforms.
        assert_eq!(msg[28], payload_type::VENDOR);
        assert_eq!(&msg[32..40], &[0, 0, 0, 1, 0, 0, 0, 1]);
        assert_eq!(msg[40], 0, "the only proposal is the last one");
        assert_eq!(&msg[44..48], &[1, 1, 0, 2]);
        // The first transform: next T (3), number 1, KEY_IKE, then `0x800e 0x0100` (key length
        // 256 as a basic attribute) after the encryption attribute `0x8001 0x0007`.
        assert_eq!(msg[48], payload_type::TRANSFORM);
        assert_eq!(&msg[52..54], &[1, 1]);
        assert_eq!(&msg[56..64], &[0x80, 0x01, 0x00, 0x07, 0x80, 0x0e, 0x01, 0x00]);
        let back = parse_message(&msg).unwrap();
        assert_eq!(back.header.exchange, exchange::MAIN);
        let Body::Plain(p) = back.body else { panic!("plain") };
        assert_eq!(p, [Payload::Sa(main_mode_sa()), Payload::Vendor(vec![0xaf; 16])]);
    }

    #[test]
    fn long_lifetimes_are_variable_attributes() {
        let a = Attribute::number(12, 86_400 * 7);
        assert_eq!(a.value, AttrValue::Variable(vec![0x09, 0x3a, 0x80]));
        assert_eq!(a.as_u64(), Some(604_800));
        assert_eq!(Attribute::number(12, 3600).value, AttrValue::Basic(3600));
    }

    #[test]
    fn every_payload_round_trips() {
        let all = vec![
            Payload::Sa(main_mode_sa()),
            Payload::Ke(vec![7; 256]),
            Payload::Nonce(vec![1; 32]),
            Payload::Id(Id {
                ty: 4,
                protocol: 17,
                port: 500,
                data: vec![10, 1, 0, 0, 255, 255, 0, 0],
            }),
            Payload::Hash(vec![2; 32]),
            Payload::Notify(Notify {
                doi: 1,
                protocol: 1,
                ty: 36136,
                spi: vec![3; 16],
                data: vec![0, 0, 0, 9],
            }),
            Payload::Delete(Delete {
                doi: 1,
                protocol: 3,
                spi_size: 4,
                spis: vec![vec![1, 2, 3, 4], vec![5, 6, 7, 8]],
            }),
            Payload::Vendor(
                b"\x4a\x13\x1c\x81\x07\x03\x58\x45\x5c\x57\x28\xf2\x0e\x95\x45\x2f".to_vec(),
            ),
            Payload::NatD(vec![4; 20]),
            Payload::NatOa { ty: 1, data: vec![192, 0, 2, 1] },
            Payload::Unknown { ty: 6, data: vec![5; 9] },
        ];
        let h = header(1, 2, exchange::QUICK, flags::COMMIT, 0x1234_5678);
        let msg = encode_plain(h, &all);
        let back = parse_message(&msg).unwrap();
        assert_eq!(back.header.message_id, 0x1234_5678);
        assert_eq!(back.body, Body::Plain(all));
    }

    #[test]
    fn an_encrypted_message_is_handed_over_as_ciphertext() {
        let h = header(1, 2, exchange::MAIN, flags::ENCRYPTION, 0);
        let msg = encode(h, payload_type::ID, &[9; 48]);
        assert_eq!(parse_message(&msg).unwrap().body, Body::Encrypted(vec![9; 48]));
    }

    #[test]
    fn malformed_messages_are_refused_by_name() {
        let good = encode_plain(header(1, 0, exchange::MAIN, 0, 0), &[Payload::Sa(main_mode_sa())]);
        // IKEv2's version byte.
        let mut v2 = good.clone();
        v2[17] = 0x20;
        assert!(matches!(parse_message(&v2), Err(Error::InvalidMajorVersion(2))));
        // The header's length is not the datagram's.
        let mut long = good.clone();
        long.push(0);
        assert!(parse_message(&long).unwrap_err().to_string().contains("length field"));
        // A proposal that says it has three transforms but carries two.
        let mut count = good.clone();
        count[47] = 3;
        assert!(parse_message(&count).unwrap_err().to_string().contains("says 3 transforms"));
        // A transform length running past its proposal.
        let mut over = good.clone();
        over[51] = 0xff;
        assert!(parse_message(&over).is_err());
        // A Delete whose SPI count does not fit its length.
        let d =
            Payload::Delete(Delete { doi: 1, protocol: 3, spi_size: 4, spis: vec![vec![1; 4]] });
        let mut del = encode_plain(header(1, 2, exchange::INFORMATIONAL, 0, 7), &[d]);
        let n = del.len();
        del[n - 5] = 2;
        assert!(parse_message(&del).unwrap_err().to_string().contains("2 SPIs of 4 bytes"));
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..400), first in 0u8..25) {
            let _ = parse_payloads(first, &data);
            let _ = parse_message(&data);
        }

        #[test]
        fn truncating_a_valid_message_is_an_error(cut in 29usize..200) {
            let msg = encode_plain(header(1, 0, exchange::MAIN, 0, 0), &[Payload::Sa(main_mode_sa())]);
            let cut = cut.min(msg.len() - 1);
            let mut m = msg[..cut].to_vec();
            m[24..28].copy_from_slice(&(cut as u32).to_be_bytes());
            prop_assert!(parse_message(&m).is_err());
        }
    }
}

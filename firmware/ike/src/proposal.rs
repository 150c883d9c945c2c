//! Proposals in strongSwan's syntax, and their negotiation (RFC 7296 §2.7, §3.3).
//!
//! Operators write proposals the way strongSwan's `swanctl.conf` does, so configurations carry
//! over: an IKE proposal names encryption, PRF and key-exchange groups joined by `-`
//! (`aes256gcm16-prfsha256-x25519`, `aes128gcm16-prfsha384-ecp256-ecp384`); an ESP proposal names
//! encryption, optionally a PFS group and the extended-sequence-number choice (`aes256gcm16`,
//! `aes128gcm16-esn`, `aes256gcm16-x25519`, `aes256gcm16-noesn`). A list is comma separated and
//! ordered by preference.
//!
//! Supported here: ENCR_AES_GCM_16 with 128- and 256-bit keys (RFC 5282 for IKE, RFC 4106 for
//! ESP), PRF_HMAC_SHA2_256/384/512 (RFC 4868), Diffie-Hellman groups 19 (ECP-256), 20 (ECP-384)
//! (RFC 5903) and 31 (Curve25519, RFC 8031), ESN on or off (RFC 4303).
//!
//! A responder selects, in its own order of preference, the first configured proposal that shares
//! one algorithm of every type with a proposal the initiator sent ([`IkeProposal::select`],
//! [`EspProposal::select`]); strongSwan does the same by default.

use std::fmt;

use crate::error::Error;

/// IKEv2 transform types (RFC 7296 §3.3.2).
pub mod transform_type {
    /// Encryption algorithm.
    pub const ENCR: u8 = 1;
    /// Pseudorandom function.
    pub const PRF: u8 = 2;
    /// Integrity algorithm.
    pub const INTEG: u8 = 3;
    /// Diffie-Hellman group (key exchange method).
    pub const DH: u8 = 4;
    /// Extended sequence numbers.
    pub const ESN: u8 = 5;
}

const ENCR_AES_GCM_16: u16 = 20;

/// An encryption algorithm: AES-GCM with a 16-octet ICV (ENCR_AES_GCM_16, transform ID 20).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Encr {
    /// AES-128-GCM, 16-octet ICV (`aes128gcm16`).
    Aes128Gcm16,
    /// AES-256-GCM, 16-octet ICV (`aes256gcm16`).
    Aes256Gcm16,
}

impl Encr {
    /// Every supported value, in the order they are listed in messages.
    pub const ALL: [Encr; 2] = [Encr::Aes128Gcm16, Encr::Aes256Gcm16];

    /// The IANA transform ID.
    pub fn transform_id(self) -> u16 {
        ENCR_AES_GCM_16
    }

    /// The Key Length attribute in bits.
    pub fn key_bits(self) -> u16 {
        match self {
            Encr::Aes128Gcm16 => 128,
            Encr::Aes256Gcm16 => 256,
        }
    }

    /// AES key length in bytes (without the 4-byte salt).
    pub fn key_len(self) -> usize {
        usize::from(self.key_bits() / 8)
    }

    /// The strongSwan keyword.
    pub fn name(self) -> &'static str {
        match self {
            Encr::Aes128Gcm16 => "aes128gcm16",
            Encr::Aes256Gcm16 => "aes256gcm16",
        }
    }

    /// The value for a wire transform, if supported.
    pub fn from_wire(id: u16, key_bits: Option<u16>) -> Option<Encr> {
        match (id, key_bits) {
            (ENCR_AES_GCM_16, Some(128)) => Some(Encr::Aes128Gcm16),
            (ENCR_AES_GCM_16, Some(256)) => Some(Encr::Aes256Gcm16),
            _ => None,
        }
    }
}

/// A pseudorandom function (RFC 4868).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Prf {
    /// PRF_HMAC_SHA2_256 (`prfsha256`).
    HmacSha256,
    /// PRF_HMAC_SHA2_384 (`prfsha384`).
    HmacSha384,
    /// PRF_HMAC_SHA2_512 (`prfsha512`).
    HmacSha512,
}

impl Prf {
    /// Every supported value.
    pub const ALL: [Prf; 3] = [Prf::HmacSha256, Prf::HmacSha384, Prf::HmacSha512];

    /// The IANA transform ID.
    pub fn transform_id(self) -> u16 {
        match self {
            Prf::HmacSha256 => 5,
            Prf::HmacSha384 => 6,
            Prf::HmacSha512 => 7,
        }
    }

    /// The strongSwan keyword.
    pub fn name(self) -> &'static str {
        match self {
            Prf::HmacSha256 => "prfsha256",
            Prf::HmacSha384 => "prfsha384",
            Prf::HmacSha512 => "prfsha512",
        }
    }

    /// Output (and preferred key) length in bytes.
    pub fn output_len(self) -> usize {
        match self {
            Prf::HmacSha256 => 32,
            Prf::HmacSha384 => 48,
            Prf::HmacSha512 => 64,
        }
    }

    /// The value for a wire transform ID, if supported.
    pub fn from_wire(id: u16) -> Option<Prf> {
        Prf::ALL.into_iter().find(|p| p.transform_id() == id)
    }
}

/// A Diffie-Hellman group (key exchange method).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DhGroup {
    /// Group 19, 256-bit random ECP group (`ecp256`, RFC 5903).
    Ecp256,
    /// Group 20, 384-bit random ECP group (`ecp384`, RFC 5903).
    Ecp384,
    /// Group 31, Curve25519 (`x25519`, RFC 8031).
    Curve25519,
}

impl DhGroup {
    /// Every supported value.
    pub const ALL: [DhGroup; 3] = [DhGroup::Curve25519, DhGroup::Ecp256, DhGroup::Ecp384];

    /// The IANA group number.
    pub fn id(self) -> u16 {
        match self {
            DhGroup::Ecp256 => 19,
            DhGroup::Ecp384 => 20,
            DhGroup::Curve25519 => 31,
        }
    }

    /// The strongSwan keyword.
    pub fn name(self) -> &'static str {
        match self {
            DhGroup::Ecp256 => "ecp256",
            DhGroup::Ecp384 => "ecp384",
            DhGroup::Curve25519 => "x25519",
        }
    }

    /// Length of the public value in a KE payload (RFC 5903 §7: x || y; RFC 8031 §2: 32 bytes).
    pub fn public_len(self) -> usize {
        match self {
            DhGroup::Ecp256 => 64,
            DhGroup::Ecp384 => 96,
            DhGroup::Curve25519 => 32,
        }
    }

    /// The group for an IANA number, if supported.
    pub fn from_id(id: u16) -> Option<DhGroup> {
        DhGroup::ALL.into_iter().find(|g| g.id() == id)
    }
}

/// One IKE proposal: every listed algorithm of each type is acceptable.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct IkeProposal {
    /// Encryption algorithms, in order of preference.
    pub encr: Vec<Encr>,
    /// PRFs, in order of preference.
    pub prf: Vec<Prf>,
    /// Key exchange groups, in order of preference; the first is used for the initial KE payload.
    pub dh: Vec<DhGroup>,
}

/// One ESP proposal.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct EspProposal {
    /// Encryption algorithms, in order of preference.
    pub encr: Vec<Encr>,
    /// PFS groups for CREATE_CHILD_SA; empty means no PFS.
    pub dh: Vec<DhGroup>,
    /// Extended sequence numbers acceptable, in order of preference (`true` = ESN).
    pub esn: Vec<bool>,
}

/// The algorithms of a negotiated IKE SA.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct IkeSuite {
    /// Encryption (AEAD) algorithm.
    pub encr: Encr,
    /// PRF.
    pub prf: Prf,
    /// Key exchange group.
    pub dh: DhGroup,
}

/// The algorithms of a negotiated CHILD SA.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct EspSuite {
    /// Encryption (AEAD) algorithm.
    pub encr: Encr,
    /// PFS group used when the SA was created, if any.
    pub dh: Option<DhGroup>,
    /// Whether extended sequence numbers are on.
    pub esn: bool,
}

const IKE_SUPPORTED: &str = "aes128gcm16, aes256gcm16, prfsha256, prfsha384, prfsha512, x25519, \
                             ecp256, ecp384";
const ESP_SUPPORTED: &str = "aes128gcm16, aes256gcm16, x25519, ecp256, ecp384, esn, noesn";

enum Token {
    Encr(Encr),
    Prf(Prf),
    Dh(DhGroup),
    Esn(bool),
}

fn token(t: &str) -> Option<Token> {
    Some(match t {
        "aes128gcm16" | "aes128gcm128" | "aes128gcm" => Token::Encr(Encr::Aes128Gcm16),
        "aes256gcm16" | "aes256gcm128" | "aes256gcm" => Token::Encr(Encr::Aes256Gcm16),
        // strongSwan reads an integrity keyword in an AEAD IKE proposal as the PRF.
        "prfsha256" | "sha256" => Token::Prf(Prf::HmacSha256),
        "prfsha384" | "sha384" => Token::Prf(Prf::HmacSha384),
        "prfsha512" | "sha512" => Token::Prf(Prf::HmacSha512),
        "x25519" | "curve25519" => Token::Dh(DhGroup::Curve25519),
        "ecp256" => Token::Dh(DhGroup::Ecp256),
        "ecp384" => Token::Dh(DhGroup::Ecp384),
        "esn" => Token::Esn(true),
        "noesn" => Token::Esn(false),
        _ => return None,
    })
}

fn push<T: PartialEq>(v: &mut Vec<T>, x: T) {
    if !v.contains(&x) {
        v.push(x);
    }
}

impl IkeProposal {
    /// Parses one IKE proposal (`aes256gcm16-prfsha256-x25519`).
    pub fn parse(s: &str) -> Result<IkeProposal, Error> {
        let s = s.trim();
        let lower = s.to_ascii_lowercase();
        let mut p = IkeProposal { encr: Vec::new(), prf: Vec::new(), dh: Vec::new() };
        for t in lower.split('-') {
            let unknown = || Error::UnknownAlgorithm {
                token: t.to_owned(),
                proposal: s.to_owned(),
                kind: "IKE",
                supported: IKE_SUPPORTED,
            };
            match token(t).ok_or_else(unknown)? {
                Token::Encr(e) => push(&mut p.encr, e),
                Token::Prf(f) => push(&mut p.prf, f),
                Token::Dh(g) => push(&mut p.dh, g),
                Token::Esn(_) => return Err(unknown()),
            }
        }
        let missing = |missing, supported| Error::IncompleteProposal {
            proposal: s.to_owned(),
            kind: "IKE",
            missing,
            supported,
        };
        if p.encr.is_empty() {
            return Err(missing("encryption algorithm", "aes128gcm16, aes256gcm16"));
        }
        if p.prf.is_empty() {
            return Err(missing("PRF", "prfsha256, prfsha384, prfsha512"));
        }
        if p.dh.is_empty() {
            return Err(missing("key exchange group", "x25519, ecp256, ecp384"));
        }
        Ok(p)
    }

    /// Picks the algorithms this (our) proposal shares with `offered`, preferring our order.
    pub fn select(&self, offered: &IkeProposal) -> Option<IkeSuite> {
        Some(IkeSuite {
            encr: first_common(&self.encr, &offered.encr)?,
            prf: first_common(&self.prf, &offered.prf)?,
            dh: first_common(&self.dh, &offered.dh)?,
        })
    }

    /// True when this proposal allows `suite`.
    pub fn allows(&self, suite: &IkeSuite) -> bool {
        self.encr.contains(&suite.encr)
            && self.prf.contains(&suite.prf)
            && self.dh.contains(&suite.dh)
    }
}

impl EspProposal {
    /// Parses one ESP proposal (`aes256gcm16`, `aes128gcm16-esn`, `aes256gcm16-x25519`).
    pub fn parse(s: &str) -> Result<EspProposal, Error> {
        let s = s.trim();
        let lower = s.to_ascii_lowercase();
        let mut p = EspProposal { encr: Vec::new(), dh: Vec::new(), esn: Vec::new() };
        for t in lower.split('-') {
            let unknown = || Error::UnknownAlgorithm {
                token: t.to_owned(),
                proposal: s.to_owned(),
                kind: "ESP",
                supported: ESP_SUPPORTED,
            };
            match token(t).ok_or_else(unknown)? {
                Token::Encr(e) => push(&mut p.encr, e),
                Token::Dh(g) => push(&mut p.dh, g),
                Token::Esn(e) => push(&mut p.esn, e),
                // No PRF in ESP; AEAD needs no integrity algorithm.
                Token::Prf(_) => return Err(unknown()),
            }
        }
        if p.encr.is_empty() {
            return Err(Error::IncompleteProposal {
                proposal: s.to_owned(),
                kind: "ESP",
                missing: "encryption algorithm",
                supported: "aes128gcm16, aes256gcm16",
            });
        }
        if p.esn.is_empty() {
            p.esn.push(false);
        }
        Ok(p)
    }

    /// Picks the algorithms this (our) proposal shares with `offered`. `with_pfs` says whether
    /// a key exchange group is negotiated (CREATE_CHILD_SA); the CHILD SA created by IKE_AUTH
    /// never has one (§1.2).
    pub fn select(&self, offered: &EspProposal, with_pfs: bool) -> Option<EspSuite> {
        let dh = if with_pfs && !self.dh.is_empty() {
            Some(first_common(&self.dh, &offered.dh)?)
        } else if with_pfs && !offered.dh.is_empty() {
            // We want no PFS but the peer insists on it.
            return None;
        } else {
            None
        };
        Some(EspSuite {
            encr: first_common(&self.encr, &offered.encr)?,
            dh,
            esn: first_common(&self.esn, &offered.esn)?,
        })
    }

    /// The same proposal without PFS groups (what IKE_AUTH offers, §1.2).
    pub fn without_pfs(&self) -> EspProposal {
        EspProposal { dh: Vec::new(), ..self.clone() }
    }
}

fn first_common<T: Copy + PartialEq>(ours: &[T], theirs: &[T]) -> Option<T> {
    ours.iter().copied().find(|x| theirs.contains(x))
}

fn parse_list<T>(
    s: &str,
    kind: &'static str,
    example: &'static str,
    one: fn(&str) -> Result<T, Error>,
) -> Result<Vec<T>, Error> {
    let v =
        s.split(',').filter(|p| !p.trim().is_empty()).map(one).collect::<Result<Vec<_>, _>>()?;
    if v.is_empty() {
        return Err(Error::EmptyProposalList { kind, example });
    }
    Ok(v)
}

/// Parses a comma-separated list of IKE proposals, in order of preference.
pub fn parse_ike_list(s: &str) -> Result<Vec<IkeProposal>, Error> {
    parse_list(s, "IKE", "aes256gcm16-prfsha256-x25519", IkeProposal::parse)
}

/// Parses a comma-separated list of ESP proposals, in order of preference.
pub fn parse_esp_list(s: &str) -> Result<Vec<EspProposal>, Error> {
    parse_list(s, "ESP", "aes256gcm16", EspProposal::parse)
}

/// Prints a proposal list back in strongSwan syntax.
pub fn list_to_string<T: fmt::Display>(list: &[T]) -> String {
    list.iter().map(|p| p.to_string()).collect::<Vec<_>>().join(",")
}

fn join(f: &mut fmt::Formatter<'_>, names: impl Iterator<Item = &'static str>) -> fmt::Result {
    let mut first = true;
    for n in names {
        if !first {
            f.write_str("-")?;
        }
        first = false;
        f.write_str(n)?;
    }
    Ok(())
}

impl fmt::Display for IkeProposal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names = self.encr.iter().map(|e| e.name());
        let names = names.chain(self.prf.iter().map(|p| p.name()));
        join(f, names.chain(self.dh.iter().map(|g| g.name())))
    }
}

impl fmt::Display for EspProposal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names = self.encr.iter().map(|e| e.name()).chain(self.dh.iter().map(|g| g.name()));
        // `noesn` alone is the default and is left out, as strongSwan's users write it.
        let esn: &[bool] = if self.esn == [false] { &[] } else { &self.esn };
        join(f, names.chain(esn.iter().map(|&e| if e { "esn" } else { "noesn" })))
    }
}

impl fmt::Display for IkeSuite {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}-{}", self.encr.name(), self.prf.name(), self.dh.name())
    }
}

impl fmt::Display for EspSuite {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.encr.name())?;
        if let Some(g) = self.dh {
            write!(f, "-{}", g.name())?;
        }
        f.write_str(if self.esn { "-esn" } else { "-noesn" })
    }
}

impl From<IkeSuite> for IkeProposal {
    fn from(s: IkeSuite) -> IkeProposal {
        IkeProposal { encr: vec![s.encr], prf: vec![s.prf], dh: vec![s.dh] }
    }
}

impl From<EspSuite> for EspProposal {
    fn from(s: EspSuite) -> EspProposal {
        EspProposal { encr: vec![s.encr], dh: s.dh.into_iter().collect(), esn: vec![s.esn] }
    }
}

/// The strongSwan-style name of any wire transform, supported or not, so that explanations can
/// say what a peer offered (`aes256`, `sha256`, `modp2048`); unknown ones print as `TYPE_ID`.
pub fn transform_name(ty: u8, id: u16, key_bits: Option<u16>) -> String {
    use transform_type::*;
    let kb = key_bits.map(|k| k.to_string()).unwrap_or_default();
    let known: Option<String> = match (ty, id) {
        (ENCR, 3) => Some("3des".into()),
        (ENCR, 12) => Some(format!("aes{kb}")),
        (ENCR, 13) => Some(format!("aes{kb}ctr")),
        (ENCR, 14) => Some(format!("aes{kb}ccm8")),
        (ENCR, 16) => Some(format!("aes{kb}ccm16")),
        (ENCR, 18) => Some(format!("aes{kb}gcm8")),
        (ENCR, 19) => Some(format!("aes{kb}gcm12")),
        (ENCR, 20) => Some(format!("aes{kb}gcm16")),
        (ENCR, 28) => Some("chacha20poly1305".into()),
        (PRF, 2) => Some("prfsha1".into()),
        (PRF, 4) => Some("prfaesxcbc".into()),
        (PRF, 5..=7) => Prf::from_wire(id).map(|p| p.name().into()),
        (INTEG, 2) => Some("sha1".into()),
        (INTEG, 12) => Some("sha256".into()),
        (INTEG, 13) => Some("sha384".into()),
        (INTEG, 14) => Some("sha512".into()),
        (DH, 0) => Some("none".into()),
        (DH, 2) => Some("modp1024".into()),
        (DH, 5) => Some("modp1536".into()),
        (DH, 14) => Some("modp2048".into()),
        (DH, 15) => Some("modp3072".into()),
        (DH, 16) => Some("modp4096".into()),
        (DH, 21) => Some("ecp521".into()),
        (DH, 32) => Some("x448".into()),
        (DH, _) => DhGroup::from_id(id).map(|g| g.name().into()),
        (ESN, 0) => Some("noesn".into()),
        (ESN, 1) => Some("esn".into()),
        _ => None,
    };
    known.unwrap_or_else(|| {
        let t = match ty {
            ENCR => "ENCR",
            PRF => "PRF",
            INTEG => "INTEG",
            DH => "DH",
            ESN => "ESN",
            _ => "TRANSFORM",
        };
        format!("{t}_{id}")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_ike_proposals() {
        let p = IkeProposal::parse("aes256gcm16-prfsha256-x25519").unwrap();
        assert_eq!(p.encr, [Encr::Aes256Gcm16]);
        assert_eq!(p.prf, [Prf::HmacSha256]);
        assert_eq!(p.dh, [DhGroup::Curve25519]);
        assert_eq!(p.to_string(), "aes256gcm16-prfsha256-x25519");
        let p = IkeProposal::parse("aes128gcm16-prfsha384-ecp256-ecp384").unwrap();
        assert_eq!(p.dh, [DhGroup::Ecp256, DhGroup::Ecp384]);
        assert_eq!(p.to_string(), "aes128gcm16-prfsha384-ecp256-ecp384");
        // strongSwan aliases normalise.
        let p = IkeProposal::parse("AES256GCM128-sha512-curve25519").unwrap();
        assert_eq!(p.to_string(), "aes256gcm16-prfsha512-x25519");
    }

    #[test]
    fn parses_and_prints_esp_proposals() {
        for (s, printed) in [
            ("aes256gcm16", "aes256gcm16"),
            ("aes128gcm16-esn", "aes128gcm16-esn"),
            ("aes256gcm16-x25519", "aes256gcm16-x25519"),
            ("aes256gcm16-noesn", "aes256gcm16"),
            ("aes128gcm16-esn-noesn", "aes128gcm16-esn-noesn"),
        ] {
            assert_eq!(EspProposal::parse(s).unwrap().to_string(), printed, "{s}");
        }
        let p = EspProposal::parse("aes256gcm16-x25519").unwrap();
        assert_eq!(p.dh, [DhGroup::Curve25519]);
        assert_eq!(p.esn, [false]);
    }

    #[test]
    fn lists_are_comma_separated() {
        let l =
            parse_ike_list("aes256gcm16-prfsha256-x25519, aes128gcm16-prfsha384-ecp256").unwrap();
        assert_eq!(l.len(), 2);
        assert_eq!(list_to_string(&l), "aes256gcm16-prfsha256-x25519,aes128gcm16-prfsha384-ecp256");
        assert_eq!(parse_esp_list("aes256gcm16,aes128gcm16-esn").unwrap().len(), 2);
        assert!(matches!(parse_esp_list(" , "), Err(Error::EmptyProposalList { kind: "ESP", .. })));
    }

    #[test]
    fn errors_name_the_token_and_list_what_is_supported() {
        let e = IkeProposal::parse("aes256-sha256-modp2048").unwrap_err();
        assert_eq!(
            e.to_string(),
            "unknown algorithm `aes256` in IKE proposal `aes256-sha256-modp2048`; supported: \
             aes128gcm16, aes256gcm16, prfsha256, prfsha384, prfsha512, x25519, ecp256, ecp384"
        );
        let e = EspProposal::parse("aes256gcm16-prfsha256").unwrap_err();
        assert!(e.to_string().contains("`prfsha256` in ESP proposal"), "{e}");
        let e = IkeProposal::parse("aes256gcm16-x25519").unwrap_err();
        assert_eq!(
            e.to_string(),
            "IKE proposal `aes256gcm16-x25519` has no PRF; add one of: prfsha256, prfsha384, \
             prfsha512"
        );
        let e =
            parse_ike_list("aes256gcm16-prfsha256-x25519,aes256gcm16-prfsha256-esn").unwrap_err();
        assert!(e.to_string().contains("unknown algorithm `esn`"), "{e}");
    }

    #[test]
    fn selection_prefers_our_order() {
        let ours = IkeProposal::parse("aes256gcm16-aes128gcm16-prfsha256-x25519-ecp256").unwrap();
        let theirs = IkeProposal::parse("aes128gcm16-aes256gcm16-prfsha256-ecp256").unwrap();
        let s = ours.select(&theirs).unwrap();
        assert_eq!(s.to_string(), "aes256gcm16-prfsha256-ecp256");
        let other = IkeProposal::parse("aes256gcm16-prfsha384-ecp256").unwrap();
        assert!(ours.select(&other).is_none());

        let esp = EspProposal::parse("aes256gcm16-x25519").unwrap();
        let peer = EspProposal::parse("aes256gcm16").unwrap();
        assert_eq!(esp.select(&peer, false).unwrap().to_string(), "aes256gcm16-noesn");
        assert!(esp.select(&peer, true).is_none(), "we require PFS, the peer offers none");
        let peer_pfs = EspProposal::parse("aes256gcm16-x25519").unwrap();
        assert_eq!(esp.select(&peer_pfs, true).unwrap().dh, Some(DhGroup::Curve25519));
    }

    #[test]
    fn names_foreign_transforms() {
        assert_eq!(transform_name(transform_type::ENCR, 12, Some(256)), "aes256");
        assert_eq!(transform_name(transform_type::DH, 14, None), "modp2048");
        assert_eq!(transform_name(transform_type::DH, 31, None), "x25519");
        assert_eq!(transform_name(transform_type::PRF, 99, None), "PRF_99");
    }
}

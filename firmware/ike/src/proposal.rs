//! Proposals in strongSwan's syntax, and their negotiation (RFC 7296 §2.7, §3.3).
//!
//! Operators write proposals the way strongSwan's `swanctl.conf` does, so configurations carry
//! over: an IKE proposal names encryption, integrity (for a cipher that is not AEAD), PRF and
//! key-exchange groups joined by `-` (`aes256gcm16-prfsha256-x25519`, `aes128-sha256-modp2048`);
//! an ESP proposal names encryption, integrity (again only without AEAD), optionally a PFS group
//! and the extended-sequence-number choice (`aes256gcm16`, `aes128-sha256-modp2048`,
//! `chacha20poly1305-esn`). A list is comma separated and ordered by preference.
//!
//! As in strongSwan, `sha256` is the integrity algorithm HMAC-SHA2-256-128 next to a non-AEAD
//! cipher and the PRF HMAC-SHA2-256 next to an AEAD one; an IKE proposal with integrity but no
//! `prf…` keyword proposes the PRFs of its integrity algorithms. A proposal does not mix AEAD and
//! non-AEAD ciphers (RFC 7296 §3.3): write two.
//!
//! Supported here: ENCR_AES_GCM_16 (RFC 4106, RFC 5282), ENCR_AES_CBC with 128-, 192- and
//! 256-bit keys (RFC 3602), ENCR_CHACHA20_POLY1305 (RFC 7634), ENCR_3DES (RFC 2451, weak);
//! AUTH_HMAC_SHA2_256_128, _384_192, _512_256 (RFC 4868) and AUTH_HMAC_SHA1_96 (RFC 2404, weak);
//! PRF_HMAC_SHA2_256/384/512 and PRF_HMAC_SHA1 (weak); groups 2 and 5 (weak), 14, 15, 16, 18
//! (RFC 3526), 24 (RFC 5114), 19, 20, 21 (RFC 5903) and 31 (RFC 8031); ESN on or off.
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

const ENCR_3DES: u16 = 3;
const ENCR_AES_CBC: u16 = 12;
const ENCR_AES_GCM_16: u16 = 20;
const ENCR_CHACHA20_POLY1305: u16 = 28;

/// An encryption algorithm (IANA "Transform Type 1").
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Encr {
    /// AES-128-GCM, 16-octet ICV (`aes128gcm16`).
    Aes128Gcm16,
    /// AES-256-GCM, 16-octet ICV (`aes256gcm16`).
    Aes256Gcm16,
    /// ChaCha20-Poly1305 (`chacha20poly1305`, RFC 7634).
    ChaCha20Poly1305,
    /// AES-128-CBC (`aes128`, RFC 3602).
    Aes128Cbc,
    /// AES-192-CBC (`aes192`).
    Aes192Cbc,
    /// AES-256-CBC (`aes256`).
    Aes256Cbc,
    /// Triple DES in CBC mode (`3des`, RFC 2451): 64-bit blocks, weak (RFC 8221 §5).
    TripleDesCbc,
}

impl Encr {
    /// Every supported value, in the order they are listed in messages.
    pub const ALL: [Encr; 7] = [
        Encr::Aes128Gcm16,
        Encr::Aes256Gcm16,
        Encr::ChaCha20Poly1305,
        Encr::Aes128Cbc,
        Encr::Aes192Cbc,
        Encr::Aes256Cbc,
        Encr::TripleDesCbc,
    ];

    /// The IANA transform ID.
    pub fn transform_id(self) -> u16 {
        match self {
            Encr::Aes128Gcm16 | Encr::Aes256Gcm16 => ENCR_AES_GCM_16,
            Encr::ChaCha20Poly1305 => ENCR_CHACHA20_POLY1305,
            Encr::Aes128Cbc | Encr::Aes192Cbc | Encr::Aes256Cbc => ENCR_AES_CBC,
            Encr::TripleDesCbc => ENCR_3DES,
        }
    }

    /// The Key Length attribute in bits; `None` for ciphers with one key size, which send none
    /// (RFC 7634 §2 for ChaCha20-Poly1305, RFC 7296 §3.3.5 for 3DES).
    pub fn key_bits(self) -> Option<u16> {
        match self {
            Encr::Aes128Gcm16 | Encr::Aes128Cbc => Some(128),
            Encr::Aes192Cbc => Some(192),
            Encr::Aes256Gcm16 | Encr::Aes256Cbc => Some(256),
            Encr::ChaCha20Poly1305 | Encr::TripleDesCbc => None,
        }
    }

    /// Key length in bytes (without a salt).
    pub fn key_len(self) -> usize {
        match self {
            Encr::ChaCha20Poly1305 => 32,
            Encr::TripleDesCbc => 24,
            e => usize::from(e.key_bits().unwrap_or(0) / 8),
        }
    }

    /// Bytes of salt that follow the key in the key material: 4 for the AEAD ciphers (RFC 4106
    /// §8.1, RFC 5282 §7.1, RFC 7634 §2 and §4), none for CBC.
    pub fn salt_len(self) -> usize {
        if self.is_aead() { 4 } else { 0 }
    }

    /// True for a combined-mode cipher, which takes no integrity algorithm.
    pub fn is_aead(self) -> bool {
        matches!(self, Encr::Aes128Gcm16 | Encr::Aes256Gcm16 | Encr::ChaCha20Poly1305)
    }

    /// The cipher's block size, to which CBC plaintext is padded; 1 (no padding) for AEAD.
    pub fn block_len(self) -> usize {
        match self {
            Encr::Aes128Cbc | Encr::Aes192Cbc | Encr::Aes256Cbc => 16,
            Encr::TripleDesCbc => 8,
            _ => 1,
        }
    }

    /// Length of the IV in front of the ciphertext: 8 for the AEAD ciphers, a block for CBC.
    pub fn iv_len(self) -> usize {
        if self.is_aead() { 8 } else { self.block_len() }
    }

    /// The strongSwan keyword.
    pub fn name(self) -> &'static str {
        match self {
            Encr::Aes128Gcm16 => "aes128gcm16",
            Encr::Aes256Gcm16 => "aes256gcm16",
            Encr::ChaCha20Poly1305 => "chacha20poly1305",
            Encr::Aes128Cbc => "aes128",
            Encr::Aes192Cbc => "aes192",
            Encr::Aes256Cbc => "aes256",
            Encr::TripleDesCbc => "3des",
        }
    }

    /// True for an algorithm refused unless the tunnel allows weak ones.
    pub fn is_weak(self) -> bool {
        self == Encr::TripleDesCbc
    }

    /// The value for a wire transform, if supported.
    pub fn from_wire(id: u16, key_bits: Option<u16>) -> Option<Encr> {
        Encr::ALL.into_iter().find(|e| e.transform_id() == id && e.key_bits() == key_bits)
    }
}

/// An integrity algorithm for a cipher that is not AEAD (IANA "Transform Type 3").
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Integ {
    /// AUTH_HMAC_SHA1_96 (`sha1`, RFC 2404): weak.
    HmacSha1_96,
    /// AUTH_HMAC_SHA2_256_128 (`sha256`, RFC 4868).
    HmacSha256_128,
    /// AUTH_HMAC_SHA2_384_192 (`sha384`).
    HmacSha384_192,
    /// AUTH_HMAC_SHA2_512_256 (`sha512`).
    HmacSha512_256,
}

impl Integ {
    /// Every supported value.
    pub const ALL: [Integ; 4] =
        [Integ::HmacSha256_128, Integ::HmacSha384_192, Integ::HmacSha512_256, Integ::HmacSha1_96];

    /// The IANA transform ID.
    pub fn transform_id(self) -> u16 {
        match self {
            Integ::HmacSha1_96 => 2,
            Integ::HmacSha256_128 => 12,
            Integ::HmacSha384_192 => 13,
            Integ::HmacSha512_256 => 14,
        }
    }

    /// The strongSwan keyword.
    pub fn name(self) -> &'static str {
        match self {
            Integ::HmacSha1_96 => "sha1",
            Integ::HmacSha256_128 => "sha256",
            Integ::HmacSha384_192 => "sha384",
            Integ::HmacSha512_256 => "sha512",
        }
    }

    /// Key length in bytes: the hash's output (RFC 2404 §3, RFC 4868 §2.1.1).
    pub fn key_len(self) -> usize {
        match self {
            Integ::HmacSha1_96 => 20,
            Integ::HmacSha256_128 => 32,
            Integ::HmacSha384_192 => 48,
            Integ::HmacSha512_256 => 64,
        }
    }

    /// Length of the truncated ICV in bytes.
    pub fn icv_len(self) -> usize {
        match self {
            Integ::HmacSha1_96 => 12,
            Integ::HmacSha256_128 => 16,
            Integ::HmacSha384_192 => 24,
            Integ::HmacSha512_256 => 32,
        }
    }

    /// The PRF over the same hash: what strongSwan proposes when no PRF is named.
    pub fn prf(self) -> Prf {
        match self {
            Integ::HmacSha1_96 => Prf::HmacSha1,
            Integ::HmacSha256_128 => Prf::HmacSha256,
            Integ::HmacSha384_192 => Prf::HmacSha384,
            Integ::HmacSha512_256 => Prf::HmacSha512,
        }
    }

    /// True for an algorithm refused unless the tunnel allows weak ones.
    pub fn is_weak(self) -> bool {
        self == Integ::HmacSha1_96
    }

    /// The value for a wire transform ID, if supported.
    pub fn from_wire(id: u16) -> Option<Integ> {
        Integ::ALL.into_iter().find(|i| i.transform_id() == id)
    }
}

/// A pseudorandom function (RFC 4868, RFC 2104).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Prf {
    /// PRF_HMAC_SHA2_256 (`prfsha256`).
    HmacSha256,
    /// PRF_HMAC_SHA2_384 (`prfsha384`).
    HmacSha384,
    /// PRF_HMAC_SHA2_512 (`prfsha512`).
    HmacSha512,
    /// PRF_HMAC_SHA1 (`prfsha1`): weak.
    HmacSha1,
}

impl Prf {
    /// Every supported value.
    pub const ALL: [Prf; 4] = [Prf::HmacSha256, Prf::HmacSha384, Prf::HmacSha512, Prf::HmacSha1];

    /// The IANA transform ID.
    pub fn transform_id(self) -> u16 {
        match self {
            Prf::HmacSha1 => 2,
            Prf::HmacSha256 => 5,
            Prf::HmacSha384 => 6,
            Prf::HmacSha512 => 7,
        }
    }

    /// The strongSwan keyword.
    pub fn name(self) -> &'static str {
        match self {
            Prf::HmacSha1 => "prfsha1",
            Prf::HmacSha256 => "prfsha256",
            Prf::HmacSha384 => "prfsha384",
            Prf::HmacSha512 => "prfsha512",
        }
    }

    /// Output (and preferred key) length in bytes.
    pub fn output_len(self) -> usize {
        match self {
            Prf::HmacSha1 => 20,
            Prf::HmacSha256 => 32,
            Prf::HmacSha384 => 48,
            Prf::HmacSha512 => 64,
        }
    }

    /// True for an algorithm refused unless the tunnel allows weak ones.
    pub fn is_weak(self) -> bool {
        self == Prf::HmacSha1
    }

    /// The value for a wire transform ID, if supported.
    pub fn from_wire(id: u16) -> Option<Prf> {
        Prf::ALL.into_iter().find(|p| p.transform_id() == id)
    }
}

/// A Diffie-Hellman group (key exchange method).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DhGroup {
    /// Group 2, 1024-bit MODP (`modp1024`, RFC 2409 §6.2): weak.
    Modp1024,
    /// Group 5, 1536-bit MODP (`modp1536`, RFC 3526 §2): weak.
    Modp1536,
    /// Group 14, 2048-bit MODP (`modp2048`, RFC 3526 §3).
    Modp2048,
    /// Group 15, 3072-bit MODP (`modp3072`).
    Modp3072,
    /// Group 16, 4096-bit MODP (`modp4096`).
    Modp4096,
    /// Group 18, 8192-bit MODP (`modp8192`).
    Modp8192,
    /// Group 24, 2048-bit MODP with a 256-bit prime-order subgroup (`modp2048s256`, RFC 5114).
    Modp2048s256,
    /// Group 19, 256-bit random ECP group (`ecp256`, RFC 5903).
    Ecp256,
    /// Group 20, 384-bit random ECP group (`ecp384`, RFC 5903).
    Ecp384,
    /// Group 21, 521-bit random ECP group (`ecp521`, RFC 5903).
    Ecp521,
    /// Group 31, Curve25519 (`x25519`, RFC 8031).
    Curve25519,
}

impl DhGroup {
    /// Every supported value.
    pub const ALL: [DhGroup; 11] = [
        DhGroup::Curve25519,
        DhGroup::Ecp256,
        DhGroup::Ecp384,
        DhGroup::Ecp521,
        DhGroup::Modp2048,
        DhGroup::Modp3072,
        DhGroup::Modp4096,
        DhGroup::Modp8192,
        DhGroup::Modp2048s256,
        DhGroup::Modp1536,
        DhGroup::Modp1024,
    ];

    /// The IANA group number.
    pub fn id(self) -> u16 {
        match self {
            DhGroup::Modp1024 => 2,
            DhGroup::Modp1536 => 5,
            DhGroup::Modp2048 => 14,
            DhGroup::Modp3072 => 15,
            DhGroup::Modp4096 => 16,
            DhGroup::Modp8192 => 18,
            DhGroup::Ecp256 => 19,
            DhGroup::Ecp384 => 20,
            DhGroup::Ecp521 => 21,
            DhGroup::Modp2048s256 => 24,
            DhGroup::Curve25519 => 31,
        }
    }

    /// The strongSwan keyword.
    pub fn name(self) -> &'static str {
        match self {
            DhGroup::Modp1024 => "modp1024",
            DhGroup::Modp1536 => "modp1536",
            DhGroup::Modp2048 => "modp2048",
            DhGroup::Modp3072 => "modp3072",
            DhGroup::Modp4096 => "modp4096",
            DhGroup::Modp8192 => "modp8192",
            DhGroup::Modp2048s256 => "modp2048s256",
            DhGroup::Ecp256 => "ecp256",
            DhGroup::Ecp384 => "ecp384",
            DhGroup::Ecp521 => "ecp521",
            DhGroup::Curve25519 => "x25519",
        }
    }

    /// Length of the public value in a KE payload: the prime's length for MODP (RFC 7296
    /// §3.4), x || y for ECP (RFC 5903 §7), 32 bytes for Curve25519 (RFC 8031 §2).
    pub fn public_len(self) -> usize {
        match self {
            DhGroup::Modp1024 => 128,
            DhGroup::Modp1536 => 192,
            DhGroup::Modp2048 | DhGroup::Modp2048s256 => 256,
            DhGroup::Modp3072 => 384,
            DhGroup::Modp4096 => 512,
            DhGroup::Modp8192 => 1024,
            DhGroup::Ecp256 => 64,
            DhGroup::Ecp384 => 96,
            DhGroup::Ecp521 => 132,
            DhGroup::Curve25519 => 32,
        }
    }

    /// True for a finite-field (MODP) group.
    pub fn is_modp(self) -> bool {
        !matches!(self, DhGroup::Ecp256 | DhGroup::Ecp384 | DhGroup::Ecp521 | DhGroup::Curve25519)
    }

    /// True for a group refused unless the tunnel allows weak ones (RFC 8247 §2.4).
    pub fn is_weak(self) -> bool {
        matches!(self, DhGroup::Modp1024 | DhGroup::Modp1536)
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
    /// Integrity algorithms, in order of preference; empty with AEAD ciphers.
    pub integ: Vec<Integ>,
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
    /// Integrity algorithms, in order of preference; empty with AEAD ciphers.
    pub integ: Vec<Integ>,
    /// PFS groups for CREATE_CHILD_SA; empty means no PFS.
    pub dh: Vec<DhGroup>,
    /// Extended sequence numbers acceptable, in order of preference (`true` = ESN).
    pub esn: Vec<bool>,
}

/// The algorithms of a negotiated IKE SA.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct IkeSuite {
    /// Encryption algorithm.
    pub encr: Encr,
    /// Integrity algorithm; `None` with an AEAD cipher.
    pub integ: Option<Integ>,
    /// PRF.
    pub prf: Prf,
    /// Key exchange group.
    pub dh: DhGroup,
}

/// The algorithms of a negotiated CHILD SA.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct EspSuite {
    /// Encryption algorithm.
    pub encr: Encr,
    /// Integrity algorithm; `None` with an AEAD cipher.
    pub integ: Option<Integ>,
    /// PFS group used when the SA was created, if any.
    pub dh: Option<DhGroup>,
    /// Whether extended sequence numbers are on.
    pub esn: bool,
}

const ENCR_SUPPORTED: &str =
    "aes128gcm16, aes256gcm16, chacha20poly1305, aes128, aes192, aes256, 3des";
const INTEG_SUPPORTED: &str = "sha256, sha384, sha512, sha1";
const PRF_SUPPORTED: &str = "prfsha256, prfsha384, prfsha512, prfsha1";
const DH_SUPPORTED: &str = "x25519, ecp256, ecp384, ecp521, modp2048, modp3072, modp4096, \
                            modp8192, modp2048s256, modp1536, modp1024";
const IKE_SUPPORTED: &str = "aes128gcm16, aes256gcm16, chacha20poly1305, aes128, aes192, aes256, \
                             3des, sha256, sha384, sha512, sha1, prfsha256, prfsha384, prfsha512, \
                             prfsha1, x25519, ecp256, ecp384, ecp521, modp2048, modp3072, \
                             modp4096, modp8192, modp2048s256, modp1536, modp1024";
const ESP_SUPPORTED: &str = "aes128gcm16, aes256gcm16, chacha20poly1305, aes128, aes192, aes256, \
                             3des, sha256, sha384, sha512, sha1, x25519, ecp256, ecp384, ecp521, \
                             modp2048, modp3072, modp4096, modp8192, modp2048s256, modp1536, \
                             modp1024, esn, noesn";

enum Token {
    Encr(Encr),
    /// A hash keyword: integrity next to a CBC cipher, PRF next to an AEAD one.
    Hash(Integ),
    Prf(Prf),
    Dh(DhGroup),
    Esn(bool),
}

/// One keyword, with the aliases strongSwan accepts for it (its `proposal_keywords.txt`).
fn token(t: &str) -> Option<Token> {
    Some(match t {
        "aes128gcm16" | "aes128gcm128" | "aes128gcm" => Token::Encr(Encr::Aes128Gcm16),
        "aes256gcm16" | "aes256gcm128" | "aes256gcm" => Token::Encr(Encr::Aes256Gcm16),
        "chacha20poly1305" => Token::Encr(Encr::ChaCha20Poly1305),
        "aes128" | "aes" => Token::Encr(Encr::Aes128Cbc),
        "aes192" => Token::Encr(Encr::Aes192Cbc),
        "aes256" => Token::Encr(Encr::Aes256Cbc),
        "3des" => Token::Encr(Encr::TripleDesCbc),
        "sha1" | "sha" => Token::Hash(Integ::HmacSha1_96),
        "sha256" | "sha2_256" => Token::Hash(Integ::HmacSha256_128),
        "sha384" | "sha2_384" => Token::Hash(Integ::HmacSha384_192),
        "sha512" | "sha2_512" => Token::Hash(Integ::HmacSha512_256),
        "prfsha1" => Token::Prf(Prf::HmacSha1),
        "prfsha256" => Token::Prf(Prf::HmacSha256),
        "prfsha384" => Token::Prf(Prf::HmacSha384),
        "prfsha512" => Token::Prf(Prf::HmacSha512),
        "modp1024" => Token::Dh(DhGroup::Modp1024),
        "modp1536" => Token::Dh(DhGroup::Modp1536),
        "modp2048" => Token::Dh(DhGroup::Modp2048),
        "modp3072" => Token::Dh(DhGroup::Modp3072),
        "modp4096" => Token::Dh(DhGroup::Modp4096),
        "modp8192" => Token::Dh(DhGroup::Modp8192),
        "modp2048s256" => Token::Dh(DhGroup::Modp2048s256),
        "ecp256" => Token::Dh(DhGroup::Ecp256),
        "ecp384" => Token::Dh(DhGroup::Ecp384),
        "ecp521" => Token::Dh(DhGroup::Ecp521),
        "x25519" | "curve25519" => Token::Dh(DhGroup::Curve25519),
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

/// The weak algorithms among `names`, by keyword.
fn weak_names<'a>(
    encr: &'a [Encr],
    integ: &'a [Integ],
    prf: &'a [Prf],
    dh: &'a [DhGroup],
) -> Vec<&'static str> {
    let e = encr.iter().filter(|a| a.is_weak()).map(|a| a.name());
    let i = integ.iter().filter(|a| a.is_weak()).map(|a| a.name());
    let p = prf.iter().filter(|a| a.is_weak()).map(|a| a.name());
    e.chain(i).chain(p).chain(dh.iter().filter(|a| a.is_weak()).map(|a| a.name())).collect()
}

/// Checks that a parsed proposal's ciphers are all AEAD or all not, and that integrity goes
/// with the non-AEAD ones only.
fn check_aead(s: &str, kind: &'static str, encr: &[Encr], integ: &[Integ]) -> Result<bool, Error> {
    let conflict = |why| Error::ConflictingProposal { proposal: s.to_owned(), kind, why };
    let aead = encr.iter().any(|e| e.is_aead());
    if aead && encr.iter().any(|e| !e.is_aead()) {
        return Err(conflict(
            "mixes AEAD and non-AEAD ciphers; write them as two proposals separated by a comma \
             (RFC 7296 §3.3)",
        ));
    }
    if !aead && integ.is_empty() {
        return Err(Error::IncompleteProposal {
            proposal: s.to_owned(),
            kind,
            missing: "integrity algorithm",
            supported: INTEG_SUPPORTED,
        });
    }
    Ok(aead)
}

impl IkeProposal {
    /// Parses one IKE proposal (`aes256gcm16-prfsha256-x25519`, `aes128-sha256-modp2048`).
    pub fn parse(s: &str) -> Result<IkeProposal, Error> {
        let s = s.trim();
        let lower = s.to_ascii_lowercase();
        let mut p =
            IkeProposal { encr: Vec::new(), integ: Vec::new(), prf: Vec::new(), dh: Vec::new() };
        let mut hashes = Vec::new();
        for t in lower.split('-') {
            let unknown = || Error::UnknownAlgorithm {
                token: t.to_owned(),
                proposal: s.to_owned(),
                kind: "IKE",
                supported: IKE_SUPPORTED,
            };
            match token(t).ok_or_else(unknown)? {
                Token::Encr(e) => push(&mut p.encr, e),
                Token::Hash(h) => push(&mut hashes, h),
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
            return Err(missing("encryption algorithm", ENCR_SUPPORTED));
        }
        let aead = p.encr.iter().any(|e| e.is_aead());
        if aead {
            // strongSwan reads a hash keyword in an AEAD IKE proposal as the PRF.
            for h in hashes {
                push(&mut p.prf, h.prf());
            }
        } else {
            p.integ = hashes;
            if p.prf.is_empty() {
                p.prf = p.integ.iter().map(|i| i.prf()).collect();
            }
        }
        check_aead(s, "IKE", &p.encr, &p.integ)?;
        if p.prf.is_empty() {
            return Err(missing("PRF", PRF_SUPPORTED));
        }
        if p.dh.is_empty() {
            return Err(missing("key exchange group", DH_SUPPORTED));
        }
        Ok(p)
    }

    /// Picks the algorithms this (our) proposal shares with `offered`, preferring our order.
    pub fn select(&self, offered: &IkeProposal) -> Option<IkeSuite> {
        let encr = first_common(&self.encr, &offered.encr)?;
        Some(IkeSuite {
            encr,
            integ: select_integ(encr, &self.integ, &offered.integ)?,
            prf: first_common(&self.prf, &offered.prf)?,
            dh: first_common(&self.dh, &offered.dh)?,
        })
    }

    /// True when this proposal allows `suite`.
    pub fn allows(&self, suite: &IkeSuite) -> bool {
        self.encr.contains(&suite.encr)
            && suite.integ.is_none_or(|i| self.integ.contains(&i))
            && self.prf.contains(&suite.prf)
            && self.dh.contains(&suite.dh)
    }

    /// The suite of a proposal that names one algorithm of each type, as a responder's choice
    /// must (§3.3.6); `None` for anything else.
    pub fn chosen(&self) -> Option<IkeSuite> {
        let encr = single(&self.encr)?;
        Some(IkeSuite {
            encr,
            integ: chosen_integ(encr, &self.integ)?,
            prf: single(&self.prf)?,
            dh: single(&self.dh)?,
        })
    }

    /// The weak algorithms this proposal names (`3des`, `sha1`, `prfsha1`, `modp1024`,
    /// `modp1536`), refused unless the tunnel allows them.
    pub fn weak(&self) -> Vec<&'static str> {
        weak_names(&self.encr, &self.integ, &self.prf, &self.dh)
    }
}

fn single<T: Copy>(v: &[T]) -> Option<T> {
    match v {
        [x] => Some(*x),
        _ => None,
    }
}

/// The integrity algorithm of a chosen proposal: none with AEAD, exactly one otherwise.
fn chosen_integ(encr: Encr, integ: &[Integ]) -> Option<Option<Integ>> {
    if encr.is_aead() { integ.is_empty().then_some(None) } else { single(integ).map(Some) }
}

/// The integrity algorithm for `encr`: none with AEAD, else the first we share; `None` (no
/// suite) when a non-AEAD cipher finds no common integrity algorithm.
fn select_integ(encr: Encr, ours: &[Integ], theirs: &[Integ]) -> Option<Option<Integ>> {
    if encr.is_aead() { Some(None) } else { first_common(ours, theirs).map(Some) }
}

impl EspProposal {
    /// Parses one ESP proposal (`aes256gcm16`, `aes128-sha256-modp2048`, `aes256gcm16-x25519`).
    pub fn parse(s: &str) -> Result<EspProposal, Error> {
        let s = s.trim();
        let lower = s.to_ascii_lowercase();
        let mut p =
            EspProposal { encr: Vec::new(), integ: Vec::new(), dh: Vec::new(), esn: Vec::new() };
        for t in lower.split('-') {
            let unknown = || Error::UnknownAlgorithm {
                token: t.to_owned(),
                proposal: s.to_owned(),
                kind: "ESP",
                supported: ESP_SUPPORTED,
            };
            match token(t).ok_or_else(unknown)? {
                Token::Encr(e) => push(&mut p.encr, e),
                Token::Hash(h) => push(&mut p.integ, h),
                Token::Dh(g) => push(&mut p.dh, g),
                Token::Esn(e) => push(&mut p.esn, e),
                // No PRF in ESP.
                Token::Prf(_) => return Err(unknown()),
            }
        }
        if p.encr.is_empty() {
            return Err(Error::IncompleteProposal {
                proposal: s.to_owned(),
                kind: "ESP",
                missing: "encryption algorithm",
                supported: ENCR_SUPPORTED,
            });
        }
        if check_aead(s, "ESP", &p.encr, &p.integ)? && !p.integ.is_empty() {
            return Err(Error::ConflictingProposal {
                proposal: s.to_owned(),
                kind: "ESP",
                why: "names an integrity algorithm with an AEAD cipher, which authenticates by \
                      itself (RFC 4303 §3.2.3); drop the integrity keyword",
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
        let encr = first_common(&self.encr, &offered.encr)?;
        Some(EspSuite {
            encr,
            integ: select_integ(encr, &self.integ, &offered.integ)?,
            dh,
            esn: first_common(&self.esn, &offered.esn)?,
        })
    }

    /// The same proposal without PFS groups (what IKE_AUTH offers, §1.2).
    pub fn without_pfs(&self) -> EspProposal {
        EspProposal { dh: Vec::new(), ..self.clone() }
    }

    /// The weak algorithms this proposal names, refused unless the tunnel allows them.
    pub fn weak(&self) -> Vec<&'static str> {
        weak_names(&self.encr, &self.integ, &[], &self.dh)
    }

    /// The suite of a responder's choice: one algorithm of each type, at most one PFS group
    /// (§3.3.6); `None` for anything else.
    pub fn chosen(&self) -> Option<EspSuite> {
        let encr = single(&self.encr)?;
        let dh = match self.dh[..] {
            [] => None,
            [g] => Some(g),
            _ => return None,
        };
        Some(EspSuite {
            encr,
            integ: chosen_integ(encr, &self.integ)?,
            dh,
            esn: single(&self.esn)?,
        })
    }

    /// True when this proposal allows `suite` (its PFS group, if any, among ours).
    pub fn allows(&self, suite: &EspSuite) -> bool {
        self.encr.contains(&suite.encr)
            && suite.integ.is_none_or(|i| self.integ.contains(&i))
            && self.esn.contains(&suite.esn)
            && suite.dh.is_none_or(|g| self.dh.contains(&g))
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
        let names = names.chain(self.integ.iter().map(|i| i.name()));
        let names = names.chain(self.prf.iter().map(|p| p.name()));
        join(f, names.chain(self.dh.iter().map(|g| g.name())))
    }
}

impl fmt::Display for EspProposal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names = self.encr.iter().map(|e| e.name()).chain(self.integ.iter().map(|i| i.name()));
        let names = names.chain(self.dh.iter().map(|g| g.name()));
        // `noesn` alone is the default and is left out, as strongSwan's users write it.
        let esn: &[bool] = if self.esn == [false] { &[] } else { &self.esn };
        join(f, names.chain(esn.iter().map(|&e| if e { "esn" } else { "noesn" })))
    }
}

impl fmt::Display for IkeSuite {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.encr.name())?;
        if let Some(i) = self.integ {
            write!(f, "-{}", i.name())?;
        }
        write!(f, "-{}-{}", self.prf.name(), self.dh.name())
    }
}

impl fmt::Display for EspSuite {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.encr.name())?;
        if let Some(i) = self.integ {
            write!(f, "-{}", i.name())?;
        }
        if let Some(g) = self.dh {
            write!(f, "-{}", g.name())?;
        }
        f.write_str(if self.esn { "-esn" } else { "-noesn" })
    }
}

impl From<IkeSuite> for IkeProposal {
    fn from(s: IkeSuite) -> IkeProposal {
        IkeProposal {
            encr: vec![s.encr],
            integ: s.integ.into_iter().collect(),
            prf: vec![s.prf],
            dh: vec![s.dh],
        }
    }
}

impl From<EspSuite> for EspProposal {
    fn from(s: EspSuite) -> EspProposal {
        EspProposal {
            encr: vec![s.encr],
            integ: s.integ.into_iter().collect(),
            dh: s.dh.into_iter().collect(),
            esn: vec![s.esn],
        }
    }
}

/// The strongSwan-style name of any wire transform, supported or not, so that explanations can
/// say what a peer offered (`aes256`, `sha256`, `modp2048`); unknown ones print as `TYPE_ID`.
pub fn transform_name(ty: u8, id: u16, key_bits: Option<u16>) -> String {
    use transform_type::*;
    let kb = key_bits.map(|k| k.to_string()).unwrap_or_default();
    let known: Option<String> = match (ty, id) {
        (ENCR, _) if Encr::from_wire(id, key_bits).is_some() => {
            Encr::from_wire(id, key_bits).map(|e| e.name().into())
        }
        (ENCR, 12) => Some(format!("aes{kb}")),
        (ENCR, 13) => Some(format!("aes{kb}ctr")),
        (ENCR, 14) => Some(format!("aes{kb}ccm8")),
        (ENCR, 16) => Some(format!("aes{kb}ccm16")),
        (ENCR, 18) => Some(format!("aes{kb}gcm8")),
        (ENCR, 19) => Some(format!("aes{kb}gcm12")),
        (ENCR, 20) => Some(format!("aes{kb}gcm16")),
        (PRF, 4) => Some("prfaesxcbc".into()),
        (PRF, _) => Prf::from_wire(id).map(|p| p.name().into()),
        (INTEG, 0) => Some("none".into()),
        (INTEG, 5) => Some("aesxcbc".into()),
        (INTEG, _) => Integ::from_wire(id).map(|i| i.name().into()),
        (DH, 0) => Some("none".into()),
        (DH, 1) => Some("modp768".into()),
        (DH, 22) => Some("modp1024s160".into()),
        (DH, 23) => Some("modp2048s224".into()),
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

    /// Random keyword strings (a fixed-seed generator, 20,000 of them): whatever parses prints
    /// as a proposal that parses back to itself, meets itself, and allows what it selects. The
    /// fuzz target `proposal_parse` checks the same on arbitrary text.
    #[test]
    fn any_keyword_string_that_parses_round_trips_and_meets_itself() {
        const WORDS: [&str; 33] = [
            "aes128gcm16",
            "aes256gcm",
            "chacha20poly1305",
            "aes128",
            "aes",
            "aes192",
            "aes256",
            "3des",
            "sha1",
            "sha",
            "sha256",
            "sha2_384",
            "sha512",
            "prfsha1",
            "prfsha256",
            "prfsha384",
            "prfsha512",
            "modp1024",
            "modp1536",
            "modp2048",
            "modp3072",
            "modp4096",
            "modp8192",
            "modp2048s256",
            "ecp256",
            "ecp384",
            "ecp521",
            "x25519",
            "curve25519",
            "esn",
            "noesn",
            "md5",
            "",
        ];
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = |n: usize| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % n as u64) as usize
        };
        let (mut ike_ok, mut esp_ok) = (0, 0);
        for _ in 0..20_000 {
            let len = 1 + next(6);
            let text: Vec<&str> = (0..len).map(|_| WORDS[next(WORDS.len())]).collect();
            let text = text.join("-");
            if let Ok(p) = IkeProposal::parse(&text) {
                ike_ok += 1;
                assert_eq!(IkeProposal::parse(&p.to_string()).as_ref(), Ok(&p), "{text}");
                let suite = p.select(&p).unwrap_or_else(|| panic!("{text} does not meet itself"));
                assert!(p.allows(&suite), "{text}");
            }
            if let Ok(p) = EspProposal::parse(&text) {
                esp_ok += 1;
                assert_eq!(EspProposal::parse(&p.to_string()).as_ref(), Ok(&p), "{text}");
                for pfs in [false, true] {
                    let suite = p.select(&p, pfs).unwrap_or_else(|| panic!("{text}: no suite"));
                    assert!(p.allows(&suite), "{text}");
                }
            }
        }
        // The generator reaches valid proposals of both kinds, not only errors.
        assert!(ike_ok > 100 && esp_ok > 1000, "ike {ike_ok}, esp {esp_ok}");
    }

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
        let e = IkeProposal::parse("aes256ctr-sha256-modp2048").unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "unknown algorithm `aes256ctr` in IKE proposal `aes256ctr-sha256-modp2048`; \
                 supported: {IKE_SUPPORTED}"
            )
        );
        assert!(IKE_SUPPORTED.contains("aes256, 3des, sha256"));
        let e = EspProposal::parse("aes256gcm16-prfsha256").unwrap_err();
        assert!(e.to_string().contains("`prfsha256` in ESP proposal"), "{e}");
        let e = IkeProposal::parse("aes256gcm16-x25519").unwrap_err();
        assert_eq!(
            e.to_string(),
            "IKE proposal `aes256gcm16-x25519` has no PRF; add one of: prfsha256, prfsha384, \
             prfsha512, prfsha1"
        );
        let e = IkeProposal::parse("aes256-modp2048").unwrap_err();
        assert_eq!(
            e.to_string(),
            "IKE proposal `aes256-modp2048` has no integrity algorithm; add one of: sha256, \
             sha384, sha512, sha1"
        );
        let e = IkeProposal::parse("aes256gcm16-aes256-sha256-modp2048").unwrap_err();
        assert!(
            e.to_string().contains("mixes AEAD and non-AEAD ciphers; write them as two"),
            "{e}"
        );
        let e = EspProposal::parse("aes256gcm16-sha256").unwrap_err();
        assert!(e.to_string().contains("integrity algorithm with an AEAD cipher"), "{e}");
        let e = EspProposal::parse("aes128-modp2048").unwrap_err();
        assert!(e.to_string().contains("has no integrity algorithm"), "{e}");
        let e =
            parse_ike_list("aes256gcm16-prfsha256-x25519,aes256gcm16-prfsha256-esn").unwrap_err();
        assert!(e.to_string().contains("unknown algorithm `esn`"), "{e}");
    }

    #[test]
    fn cloud_and_idc_defaults_parse_in_strongswan_syntax() {
        // strongSwan derives the PRF from the integrity algorithm when none is named.
        for (s, printed) in [
            ("aes128-sha256-modp2048", "aes128-sha256-prfsha256-modp2048"),
            ("aes256-sha256-modp2048", "aes256-sha256-prfsha256-modp2048"),
            ("aes128-sha1-modp1024", "aes128-sha1-prfsha1-modp1024"),
            ("3des-sha1-modp1024", "3des-sha1-prfsha1-modp1024"),
            ("aes256-sha384-prfsha384-ecp384", "aes256-sha384-prfsha384-ecp384"),
            ("aes192-sha512-modp4096-modp3072", "aes192-sha512-prfsha512-modp4096-modp3072"),
            ("AES-SHA2_256-MODP2048S256", "aes128-sha256-prfsha256-modp2048s256"),
            ("chacha20poly1305-prfsha256-x25519", "chacha20poly1305-prfsha256-x25519"),
            (
                "aes256-aes128-sha256-sha1-modp2048-ecp521",
                "aes256-aes128-sha256-sha1-prfsha256-prfsha1-modp2048-ecp521",
            ),
        ] {
            let p = IkeProposal::parse(s).unwrap();
            assert_eq!(p.to_string(), printed, "{s}");
            assert_eq!(IkeProposal::parse(printed).unwrap(), p, "{printed} round trips");
        }
        for (s, printed) in [
            ("aes128-sha256-modp2048", "aes128-sha256-modp2048"),
            ("aes256-sha1", "aes256-sha1"),
            ("3des-sha1-modp1024", "3des-sha1-modp1024"),
            ("chacha20poly1305-esn", "chacha20poly1305-esn"),
        ] {
            assert_eq!(EspProposal::parse(s).unwrap().to_string(), printed, "{s}");
        }
    }

    #[test]
    fn weak_algorithms_are_named() {
        let p = IkeProposal::parse("3des-aes128-sha1-sha256-modp1024-modp2048").unwrap();
        assert_eq!(p.weak(), ["3des", "sha1", "prfsha1", "modp1024"]);
        assert!(IkeProposal::parse("aes128-sha256-modp2048").unwrap().weak().is_empty());
        let e = EspProposal::parse("aes128-sha1-modp1536").unwrap();
        assert_eq!(e.weak(), ["sha1", "modp1536"]);
    }

    #[test]
    fn selection_takes_integrity_only_without_aead() {
        let ours = IkeProposal::parse("aes256-aes128-sha256-sha1-modp2048").unwrap();
        let theirs = IkeProposal::parse("aes128-sha1-modp2048").unwrap();
        let s = ours.select(&theirs).unwrap();
        assert_eq!(s.to_string(), "aes128-sha1-prfsha1-modp2048");
        assert_eq!(IkeProposal::from(s).chosen(), Some(s));
        assert!(ours.allows(&s));
        let no_integ = IkeProposal { integ: vec![], ..theirs.clone() };
        assert!(ours.select(&no_integ).is_none(), "CBC without a common integrity algorithm");
        // A wire proposal mixing AEAD and CBC still yields the AEAD suite without integrity.
        let gcm = IkeProposal::parse("aes256gcm16-prfsha256-modp2048").unwrap();
        let mixed = IkeProposal { encr: vec![Encr::Aes256Gcm16, Encr::Aes128Cbc], ..theirs };
        let mixed = IkeProposal { prf: vec![Prf::HmacSha256], ..mixed };
        assert_eq!(gcm.select(&mixed).unwrap().to_string(), "aes256gcm16-prfsha256-modp2048");

        let esp = EspProposal::parse("aes128-sha256-modp2048").unwrap();
        let peer = EspProposal::parse("aes128-sha256-modp2048").unwrap();
        let s = esp.select(&peer, true).unwrap();
        assert_eq!(s.to_string(), "aes128-sha256-modp2048-noesn");
        assert_eq!(EspProposal::from(s).chosen(), Some(s));
        assert!(esp.allows(&s));
        assert_eq!(esp.select(&peer, false).unwrap().dh, None);
    }

    #[test]
    fn every_algorithm_round_trips_through_its_wire_id() {
        for e in Encr::ALL {
            assert_eq!(Encr::from_wire(e.transform_id(), e.key_bits()), Some(e));
            assert_eq!(
                transform_name(transform_type::ENCR, e.transform_id(), e.key_bits()),
                e.name()
            );
        }
        for i in Integ::ALL {
            assert_eq!(Integ::from_wire(i.transform_id()), Some(i));
        }
        for p in Prf::ALL {
            assert_eq!(Prf::from_wire(p.transform_id()), Some(p));
        }
        for g in DhGroup::ALL {
            assert_eq!(DhGroup::from_id(g.id()), Some(g));
            assert_eq!(transform_name(transform_type::DH, g.id(), None), g.name());
        }
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

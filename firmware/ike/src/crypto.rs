//! The key schedule and the cryptographic primitives of IKEv2.
//!
//! - `prf` and `prf+` (RFC 7296 §2.13) over HMAC-SHA2 (RFC 4868);
//! - SKEYSEED and the IKE SA keys (§2.14), the rekeyed SKEYSEED (§2.18), CHILD SA key material
//!   (§2.17) laid out for RFC 4106 (key then 4-byte salt per direction);
//! - the pre-shared-key AUTH value (§2.15);
//! - the Encrypted payload with AES-GCM (RFC 5282 §3–§5): 8-byte explicit IV, 4-byte salt from
//!   the key material, 16-byte ICV, and the IKE header up to the SK payload header as AAD;
//! - Diffie-Hellman: X25519 (RFC 8031, all-zero results refused), ECP-256 and ECP-384
//!   (RFC 5903 §7: the public value is x || y, the shared secret is x).
//!
//! Secrets are zeroised on drop and never printed.

use std::fmt;

use aes_gcm::aead::{AeadInPlace, KeyInit};
use aes_gcm::{Aes128Gcm, Aes256Gcm, Nonce, Tag};
use hmac::{Hmac, Mac};
use rand_core::CryptoRngCore;
use sha2::{Sha256, Sha384, Sha512};
use zeroize::{Zeroize, Zeroizing};

use crate::error::Error;
use crate::proposal::{DhGroup, Encr, Prf};

/// Length of the explicit IV in the SK payload (RFC 5282 §3.1).
pub const IV_LEN: usize = 8;
/// Length of the ICV (AES-GCM with 16-octet ICV).
pub const ICV_LEN: usize = 16;

fn hmac<M: Mac + KeyInit>(key: &[u8], data: &[&[u8]]) -> Vec<u8> {
    // HMAC accepts keys of any length, so this cannot fail.
    let mut m = <M as Mac>::new_from_slice(key)
        .unwrap_or_else(|_| <M as KeyInit>::new(&Default::default()));
    for d in data {
        m.update(d);
    }
    m.finalize().into_bytes().to_vec()
}

/// `prf(key, data...)` (§2.13), the parts of `data` concatenated.
pub fn prf(f: Prf, key: &[u8], data: &[&[u8]]) -> Vec<u8> {
    match f {
        Prf::HmacSha256 => hmac::<Hmac<Sha256>>(key, data),
        Prf::HmacSha384 => hmac::<Hmac<Sha384>>(key, data),
        Prf::HmacSha512 => hmac::<Hmac<Sha512>>(key, data),
    }
}

/// `prf+(key, seed)` truncated to `len` bytes (§2.13): T1 = prf(K, S | 0x01),
/// Tn = prf(K, Tn-1 | S | n).
pub fn prf_plus(f: Prf, key: &[u8], seed: &[u8], len: usize) -> Zeroizing<Vec<u8>> {
    let mut out = Zeroizing::new(Vec::with_capacity(len + f.output_len()));
    let mut t: Vec<u8> = Vec::new();
    let mut n: u8 = 1;
    while out.len() < len {
        let next = prf(f, key, &[&t, seed, &[n]]);
        t.zeroize();
        t = next;
        out.extend_from_slice(&t);
        // prf+ is defined for at most 255 iterations; no suite here needs more than 5.
        n = n.wrapping_add(1);
    }
    t.zeroize();
    out.truncate(len);
    out
}

/// SKEYSEED = prf(Ni | Nr, g^ir) (§2.14).
pub fn skeyseed(f: Prf, ni: &[u8], nr: &[u8], shared: &[u8]) -> Zeroizing<Vec<u8>> {
    let mut key = Vec::with_capacity(ni.len() + nr.len());
    key.extend_from_slice(ni);
    key.extend_from_slice(nr);
    Zeroizing::new(prf(f, &key, &[shared]))
}

/// SKEYSEED of a rekeyed IKE SA: prf(SK_d (old), g^ir (new) | Ni | Nr) (§2.18).
pub fn skeyseed_rekey(
    f_old: Prf,
    sk_d_old: &[u8],
    shared: &[u8],
    ni: &[u8],
    nr: &[u8],
) -> Zeroizing<Vec<u8>> {
    Zeroizing::new(prf(f_old, sk_d_old, &[shared, ni, nr]))
}

/// The keys of an IKE SA (§2.14; no SK_a with an AEAD cipher, RFC 5282 §7).
#[derive(Clone)]
pub struct IkeKeys {
    /// PRF used with these keys.
    pub prf: Prf,
    /// Cipher used with these keys.
    pub encr: Encr,
    /// SK_d: derives CHILD SA keys and rekeyed IKE SAs.
    pub sk_d: Vec<u8>,
    /// SK_ei (key || salt): protects messages from the initiator.
    pub sk_ei: Vec<u8>,
    /// SK_er (key || salt): protects messages from the responder.
    pub sk_er: Vec<u8>,
    /// SK_pi: MACs the initiator's ID into its AUTH.
    pub sk_pi: Vec<u8>,
    /// SK_pr: MACs the responder's ID into its AUTH.
    pub sk_pr: Vec<u8>,
}

impl Drop for IkeKeys {
    fn drop(&mut self) {
        self.sk_d.zeroize();
        self.sk_ei.zeroize();
        self.sk_er.zeroize();
        self.sk_pi.zeroize();
        self.sk_pr.zeroize();
    }
}

impl fmt::Debug for IkeKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "IkeKeys({}-{}, <redacted>)", self.encr.name(), self.prf.name())
    }
}

impl IkeKeys {
    /// {SK_d | SK_ai | SK_ar | SK_ei | SK_er | SK_pi | SK_pr} = prf+(SKEYSEED, Ni | Nr | SPIi | SPIr).
    pub fn derive(
        encr: Encr,
        f: Prf,
        skeyseed: &[u8],
        ni: &[u8],
        nr: &[u8],
        spi_i: u64,
        spi_r: u64,
    ) -> IkeKeys {
        let mut seed = Vec::with_capacity(ni.len() + nr.len() + 16);
        seed.extend_from_slice(ni);
        seed.extend_from_slice(nr);
        seed.extend_from_slice(&spi_i.to_be_bytes());
        seed.extend_from_slice(&spi_r.to_be_bytes());
        let p = f.output_len();
        let e = encr.key_len() + 4;
        let km = prf_plus(f, skeyseed, &seed, 3 * p + 2 * e);
        let mut at = 0;
        let mut next = |n: usize| {
            let v = km[at..at + n].to_vec();
            at += n;
            v
        };
        let sk_d = next(p);
        let sk_ei = next(e);
        let sk_er = next(e);
        let sk_pi = next(p);
        let sk_pr = next(p);
        IkeKeys { prf: f, encr, sk_d, sk_ei, sk_er, sk_pi, sk_pr }
    }
}

/// CHILD SA key material (§2.17): KEYMAT = prf+(SK_d, [g^ir (new) |] Ni | Nr), the
/// initiator-to-responder key (and salt) first. Returns (i→r, r→i).
pub fn child_keymat(
    f: Prf,
    sk_d: &[u8],
    shared: Option<&[u8]>,
    ni: &[u8],
    nr: &[u8],
    encr: Encr,
) -> (Vec<u8>, Vec<u8>) {
    let mut seed = Zeroizing::new(Vec::new());
    if let Some(s) = shared {
        seed.extend_from_slice(s);
    }
    seed.extend_from_slice(ni);
    seed.extend_from_slice(nr);
    let e = encr.key_len() + 4;
    let km = prf_plus(f, sk_d, &seed, 2 * e);
    (km[..e].to_vec(), km[e..].to_vec())
}

/// The pre-shared-key AUTH value (§2.15):
/// prf(prf(PSK, "Key Pad for IKEv2"), RealMessage | Nonce | prf(SK_p, RestOfIDPayload)).
///
/// For the initiator `message` is its IKE_SA_INIT request and `peer_nonce` is Nr; for the
/// responder `message` is its IKE_SA_INIT response and `peer_nonce` is Ni.
pub fn psk_auth(
    f: Prf,
    psk: &[u8],
    message: &[u8],
    peer_nonce: &[u8],
    sk_p: &[u8],
    id_body: &[u8],
) -> Vec<u8> {
    let maced_id = prf(f, sk_p, &[id_body]);
    let key = Zeroizing::new(prf(f, psk, &[b"Key Pad for IKEv2"]));
    prf(f, &key, &[message, peer_nonce, &maced_id])
}

/// Encrypts `plain` in place and returns IV || ciphertext || ICV for an SK payload.
/// `key_salt` is SK_e (key followed by the 4-byte salt); `aad` is the IKE header and the SK
/// generic payload header (with the final lengths already in place).
pub fn seal(
    encr: Encr,
    key_salt: &[u8],
    iv: [u8; IV_LEN],
    aad: &[u8],
    mut plain: Vec<u8>,
) -> Result<Vec<u8>, Error> {
    let (key, salt) = split_key(encr, key_salt)?;
    let nonce = nonce(salt, &iv);
    let tag = match encr {
        Encr::Aes128Gcm16 => Aes128Gcm::new_from_slice(key)
            .map_err(|_| Error::IntegrityCheckFailed)?
            .encrypt_in_place_detached(Nonce::from_slice(&nonce), aad, &mut plain),
        Encr::Aes256Gcm16 => Aes256Gcm::new_from_slice(key)
            .map_err(|_| Error::IntegrityCheckFailed)?
            .encrypt_in_place_detached(Nonce::from_slice(&nonce), aad, &mut plain),
    }
    .map_err(|_| Error::IntegrityCheckFailed)?;
    let mut out = Vec::with_capacity(IV_LEN + plain.len() + ICV_LEN);
    out.extend_from_slice(&iv);
    out.extend_from_slice(&plain);
    out.extend_from_slice(&tag);
    Ok(out)
}

/// Checks and decrypts an SK payload body (IV || ciphertext || ICV); returns the plaintext
/// (inner payloads, padding and pad length still attached).
pub fn open(encr: Encr, key_salt: &[u8], aad: &[u8], body: &[u8]) -> Result<Vec<u8>, Error> {
    if body.len() < IV_LEN + ICV_LEN {
        return Err(Error::Truncated {
            what: "SK payload",
            need: IV_LEN + ICV_LEN,
            have: body.len(),
        });
    }
    let (key, salt) = split_key(encr, key_salt)?;
    let (iv, rest) = body.split_at(IV_LEN);
    let (ct, icv) = rest.split_at(rest.len() - ICV_LEN);
    let nonce = nonce(salt, iv);
    let mut buf = ct.to_vec();
    let tag = Tag::from_slice(icv);
    match encr {
        Encr::Aes128Gcm16 => Aes128Gcm::new_from_slice(key)
            .map_err(|_| Error::IntegrityCheckFailed)?
            .decrypt_in_place_detached(Nonce::from_slice(&nonce), aad, &mut buf, tag),
        Encr::Aes256Gcm16 => Aes256Gcm::new_from_slice(key)
            .map_err(|_| Error::IntegrityCheckFailed)?
            .decrypt_in_place_detached(Nonce::from_slice(&nonce), aad, &mut buf, tag),
    }
    .map_err(|_| Error::IntegrityCheckFailed)?;
    Ok(buf)
}

fn split_key(encr: Encr, key_salt: &[u8]) -> Result<(&[u8], &[u8]), Error> {
    if key_salt.len() != encr.key_len() + 4 {
        return Err(Error::IntegrityCheckFailed);
    }
    Ok(key_salt.split_at(encr.key_len()))
}

fn nonce(salt: &[u8], iv: &[u8]) -> [u8; 12] {
    let mut n = [0u8; 12];
    n[..4].copy_from_slice(salt);
    n[4..].copy_from_slice(iv);
    n
}

/// An ephemeral Diffie-Hellman private value.
pub enum DhSecret {
    /// Group 31.
    X25519(x25519_dalek::StaticSecret),
    /// Group 19.
    Ecp256(p256::NonZeroScalar),
    /// Group 20.
    Ecp384(p384::NonZeroScalar),
}

impl fmt::Debug for DhSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DhSecret({}, <redacted>)", self.group().name())
    }
}

impl DhSecret {
    /// A fresh private value from `rng`.
    pub fn generate(group: DhGroup, rng: &mut impl CryptoRngCore) -> DhSecret {
        match group {
            DhGroup::Curve25519 => {
                DhSecret::X25519(x25519_dalek::StaticSecret::random_from_rng(rng))
            }
            DhGroup::Ecp256 => DhSecret::Ecp256(p256::NonZeroScalar::random(rng)),
            DhGroup::Ecp384 => DhSecret::Ecp384(p384::NonZeroScalar::random(rng)),
        }
    }

    /// The group.
    pub fn group(&self) -> DhGroup {
        match self {
            DhSecret::X25519(_) => DhGroup::Curve25519,
            DhSecret::Ecp256(_) => DhGroup::Ecp256,
            DhSecret::Ecp384(_) => DhGroup::Ecp384,
        }
    }

    /// The public value as carried in a KE payload.
    pub fn public(&self) -> Vec<u8> {
        match self {
            DhSecret::X25519(s) => x25519_dalek::PublicKey::from(s).as_bytes().to_vec(),
            DhSecret::Ecp256(s) => {
                let p = p256::PublicKey::from_secret_scalar(s);
                p256::elliptic_curve::sec1::ToEncodedPoint::to_encoded_point(&p, false).as_bytes()
                    [1..]
                    .to_vec()
            }
            DhSecret::Ecp384(s) => {
                let p = p384::PublicKey::from_secret_scalar(s);
                p384::elliptic_curve::sec1::ToEncodedPoint::to_encoded_point(&p, false).as_bytes()
                    [1..]
                    .to_vec()
            }
        }
    }

    /// The shared secret g^ir with the peer's public value; refuses invalid points.
    pub fn shared(&self, peer: &[u8]) -> Result<Zeroizing<Vec<u8>>, Error> {
        let g = self.group();
        if peer.len() != g.public_len() {
            return Err(Error::InvalidKeyExchange(g.name()));
        }
        match self {
            DhSecret::X25519(s) => {
                let mut b = [0u8; 32];
                b.copy_from_slice(peer);
                let out = s.diffie_hellman(&x25519_dalek::PublicKey::from(b));
                if !out.was_contributory() {
                    return Err(Error::InvalidKeyExchange(g.name()));
                }
                Ok(Zeroizing::new(out.as_bytes().to_vec()))
            }
            DhSecret::Ecp256(s) => {
                let mut sec1 = Vec::with_capacity(65);
                sec1.push(4);
                sec1.extend_from_slice(peer);
                let pk = p256::PublicKey::from_sec1_bytes(&sec1)
                    .map_err(|_| Error::InvalidKeyExchange(g.name()))?;
                let out = p256::ecdh::diffie_hellman(s, pk.as_affine());
                Ok(Zeroizing::new(out.raw_secret_bytes().to_vec()))
            }
            DhSecret::Ecp384(s) => {
                let mut sec1 = Vec::with_capacity(97);
                sec1.push(4);
                sec1.extend_from_slice(peer);
                let pk = p384::PublicKey::from_sec1_bytes(&sec1)
                    .map_err(|_| Error::InvalidKeyExchange(g.name()))?;
                let out = p384::ecdh::diffie_hellman(s, pk.as_affine());
                Ok(Zeroizing::new(out.raw_secret_bytes().to_vec()))
            }
        }
    }
}

/// Constant-time comparison for AUTH values and cookies.
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    a.len() == b.len() && bool::from(a.ct_eq(b))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_chacha::ChaCha20Rng;
    use rand_core::SeedableRng;

    fn hex(s: &str) -> Vec<u8> {
        let s: String = s.split_whitespace().collect();
        (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
    }

    #[test]
    fn dh_agrees_in_every_group_and_refuses_bad_points() {
        let mut rng = ChaCha20Rng::from_seed([7; 32]);
        for g in DhGroup::ALL {
            let a = DhSecret::generate(g, &mut rng);
            let b = DhSecret::generate(g, &mut rng);
            assert_eq!(a.public().len(), g.public_len());
            assert_eq!(*a.shared(&b.public()).unwrap(), *b.shared(&a.public()).unwrap(), "{g:?}");
            assert!(a.shared(&[0u8; 3]).is_err());
            assert!(matches!(
                a.shared(&vec![0u8; g.public_len()]),
                Err(Error::InvalidKeyExchange(_))
            ));
        }
    }

    #[test]
    fn seal_and_open_round_trip_and_detect_tampering() {
        for encr in Encr::ALL {
            let key = vec![0x42; encr.key_len() + 4];
            let ct = seal(encr, &key, [1; 8], b"header", b"payloads".to_vec()).unwrap();
            assert_eq!(open(encr, &key, b"header", &ct).unwrap(), b"payloads");
            assert_eq!(open(encr, &key, b"HEADER", &ct), Err(Error::IntegrityCheckFailed));
            let mut bad = ct.clone();
            bad[9] ^= 1;
            assert_eq!(open(encr, &key, b"header", &bad), Err(Error::IntegrityCheckFailed));
            assert!(open(encr, &key, b"header", &ct[..10]).is_err());
        }
    }

    #[test]
    fn rfc8031_section_2_x25519_vector() {
        // RFC 7748 §6.1 key pair, which RFC 8031 refers to.
        let a = hex("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a");
        let b_pub = hex("de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f");
        let mut ab = [0u8; 32];
        ab.copy_from_slice(&a);
        let s = DhSecret::X25519(x25519_dalek::StaticSecret::from(ab));
        assert_eq!(
            *s.shared(&b_pub).unwrap(),
            hex("4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742")
        );
    }

    // The expected values below were computed independently with Python 3's `hmac` and
    // `hashlib` modules (and `cryptography`'s AESGCM for the SK payload), implementing
    // RFC 7296 §2.13–§2.17 and §2.15 directly from the text, with
    // Ni = 00..1f, Nr = 20..3f, g^ir = 40..5f, SPIi = 0102030405060708, SPIr = 1112131415161718.
    fn ni() -> Vec<u8> {
        (0x00..0x20).collect()
    }
    fn nr() -> Vec<u8> {
        (0x20..0x40).collect()
    }
    fn gir() -> Vec<u8> {
        (0x40..0x60).collect()
    }

    #[test]
    fn rfc4231_test_case_2_hmac_sha256_prf() {
        assert_eq!(
            prf(Prf::HmacSha256, b"Jefe", &[b"what do ya ", b"want for nothing?"]),
            hex("5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843")
        );
    }

    #[test]
    fn rfc7296_section_2_14_skeyseed() {
        // python: hmac.new(Ni + Nr, g_ir, hashlib.sha256).digest()
        assert_eq!(
            *skeyseed(Prf::HmacSha256, &ni(), &nr(), &gir()),
            hex("fb7b0d6107cf71fb87cb4f19020bd81cc0f757a8f6a81a8a62c5b6f3a2660ac5")
        );
    }

    #[test]
    fn rfc7296_section_2_14_ike_sa_keys() {
        // python: prf+(SKEYSEED, Ni | Nr | SPIi | SPIr) for 3 * 32 + 2 * 36 bytes, split as
        // SK_d | SK_ei | SK_er | SK_pi | SK_pr (no SK_a with AES-GCM, RFC 5282 §7).
        let seed = skeyseed(Prf::HmacSha256, &ni(), &nr(), &gir());
        let k = IkeKeys::derive(
            Encr::Aes256Gcm16,
            Prf::HmacSha256,
            &seed,
            &ni(),
            &nr(),
            0x0102030405060708,
            0x1112131415161718,
        );
        let km = hex(
            "0c26341d77313c227236f4aebf29182f0629dbe10e8ac56347f067a8defc22d58748594d3353b3e04121026ebf49d4a4907e2ae4eb2a9831832397da89af6f7968b67ce3c70fad273ae0bbb34ee581341bbfd3303ab1d48166dde54604d0286bd75427665fbbb117f4d9f877d73606ca959fbdb34f746d24f8939191f8d3af60fc816d7edfca54ae0e23cdb44dc9e8476619d587774b27a4824b6c47d2e341e57237e03458c7e3e9",
        );
        assert_eq!(k.sk_d, km[..32]);
        assert_eq!(k.sk_ei, km[32..68]);
        assert_eq!(k.sk_er, km[68..104]);
        assert_eq!(k.sk_pi, km[104..136]);
        assert_eq!(k.sk_pr, km[136..168]);
        assert_eq!(format!("{k:?}"), "IkeKeys(aes256gcm16-prfsha256, <redacted>)");
    }

    #[test]
    fn rfc7296_section_2_13_prf_plus_sha384_and_sha512() {
        // python: prf+(b"key", b"seed") truncated to 130 bytes (several iterations).
        assert_eq!(
            *prf_plus(Prf::HmacSha384, b"key", b"seed", 130),
            hex(
                "245b57f46db11477bf9cd2e6adbc6244448af40400d70a9203399a48756b7dbf53087f405e438cf9bbb7d38b34915f6b7dab328fb2580112db91d3da5c383d3c2a4de7974aa900251aced8106d3c00211e0cfff95994a7bb4bd1649b19443e957964c1e17a4f309a51f0a8a98a3406f02f0a0322e5ccbcff44fac2b3dfeccff8f261"
            )
        );
        assert_eq!(
            *prf_plus(Prf::HmacSha512, b"key", b"seed", 130),
            hex(
                "173a6224816997fa5b2129f1c4d26d629028846663e6e27dd28d35d0de3757056e7da6c4214436a07fa827ba4329baf9097b2eddf4c1ea2b89caf65189987801bbb7a7125bce5d65d77bfd4a0705ef9bcb45f76a33f0ed70f5f7ff0f53eaa8c0089d68f852c6a4ef3ab3684a7ee7ec7b3ec15d8f335ce4360f9a3e8bc95a1112ed5c"
            )
        );
    }

    #[test]
    fn rfc7296_section_2_15_psk_auth() {
        // python: prf(prf(psk, b"Key Pad for IKEv2"), msg | Nr | prf(SK_pi, IDi body)) with
        // msg = 60 x 0x01, SK_pi = 60..7f, IDi = ID_IPV4_ADDR 192.0.2.1.
        let skp: Vec<u8> = (0x60..0x80).collect();
        let auth = psk_auth(
            Prf::HmacSha256,
            b"correct horse battery staple",
            &[1u8; 60],
            &nr(),
            &skp,
            &[1, 0, 0, 0, 192, 0, 2, 1],
        );
        assert_eq!(auth, hex("13afc3cd8455b230a4ee22f47d103b15a9fee9a4cc84cd1f56162e4061f47837"));
    }

    #[test]
    fn rfc7296_section_2_18_rekeyed_skeyseed() {
        // python: hmac.new(SK_d_old, g_ir | Ni | Nr, sha256) with SK_d_old = 80..9f.
        let skd: Vec<u8> = (0x80..0xa0).collect();
        assert_eq!(
            *skeyseed_rekey(Prf::HmacSha256, &skd, &gir(), &ni(), &nr()),
            hex("81384d5d1e8cc657a76617b90a57f61c35a5d3260b39da4fe54d94311bc61286")
        );
    }

    #[test]
    fn rfc7296_section_2_17_child_keymat() {
        // python: prf+(SK_d, [g^ir |] Ni | Nr) for two AES-128 keys with salts (40 bytes).
        let skd: Vec<u8> = (0x80..0xa0).collect();
        let (i2r, r2i) = child_keymat(Prf::HmacSha256, &skd, None, &ni(), &nr(), Encr::Aes128Gcm16);
        let km =
            hex("a10892fbd81388ac5b92f5a351366d6ed7f60ce4740e8b878878f2d05a663da43461d09c3321aa04");
        assert_eq!((&i2r[..], &r2i[..]), (&km[..20], &km[20..]));
        let (i2r, r2i) =
            child_keymat(Prf::HmacSha256, &skd, Some(&gir()), &ni(), &nr(), Encr::Aes128Gcm16);
        let km =
            hex("4d16b7d31d1f527b2a5bc5ca63eaea906b73c805e2dc49ed76945e032e9af939c02c782000dc96fb");
        assert_eq!((&i2r[..], &r2i[..]), (&km[..20], &km[20..]));
    }

    #[test]
    fn rfc5282_section_3_sk_payload_aes_gcm() {
        // python cryptography: AESGCM(00..0f).encrypt(a0a1a2a3 | 0001020304050607,
        // b"inner payloads", b"header") -> ciphertext || tag.
        let mut key: Vec<u8> = (0..16).collect();
        key.extend_from_slice(&[0xa0, 0xa1, 0xa2, 0xa3]);
        let body = seal(
            Encr::Aes128Gcm16,
            &key,
            [0, 1, 2, 3, 4, 5, 6, 7],
            b"header",
            b"inner payloads".to_vec(),
        )
        .unwrap();
        assert_eq!(body[..8], [0, 1, 2, 3, 4, 5, 6, 7]);
        assert_eq!(body[8..], hex("1f495e56f8f0b893a727aac62ad1453844e0ee4422240aa8f1925039801e"));
    }
}

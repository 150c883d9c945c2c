//! The AEADs of ESP behind a small trait: AES-GCM with two backends (`ring` and RustCrypto's
//! `aes-gcm`), and ChaCha20-Poly1305 from `ring`.
//!
//! ESP keeps the ICV right after the ciphertext (RFC 4303 §2), so both operations work on one
//! buffer: the plaintext or ciphertext followed by the 16-byte tag. The nonce is the 4-byte salt
//! followed by the 8-byte explicit IV (RFC 4106 §4, RFC 7634 §2); the AAD is SPI and sequence
//! number (RFC 4106 §5, RFC 7634 §2.1).

use std::fmt;

use aes_gcm::aead::{AeadInOut, KeyInit};

use crate::{EspError, ICV_LEN};

/// Bytes of the GCM nonce: salt and explicit IV (RFC 4106 §4).
pub const NONCE_LEN: usize = 12;
/// Bytes of the salt at the end of the ESP key material (RFC 4106 §8.1).
pub const SALT_LEN: usize = 4;

/// The ESP AEAD transforms this engine implements (IKEv2 transform IDs 20 and 28, RFC 4106
/// §8.4, RFC 7634 §3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Aead {
    /// AES-128-GCM with a 16-byte ICV (`aes128gcm16`).
    Aes128Gcm16,
    /// AES-256-GCM with a 16-byte ICV (`aes256gcm16`).
    Aes256Gcm16,
    /// ChaCha20-Poly1305 (`chacha20poly1305`, RFC 7634). Always runs on `ring`, whichever
    /// [`Backend`] is asked for: the backend picks the AES-GCM implementation only.
    ChaCha20Poly1305,
}

impl Aead {
    /// Bytes of the key alone (without salt).
    pub fn key_len(self) -> usize {
        match self {
            Aead::Aes128Gcm16 => 16,
            Aead::Aes256Gcm16 | Aead::ChaCha20Poly1305 => 32,
        }
    }

    /// Bytes of key material the SA takes: key and salt (RFC 4106 §8.1, RFC 7634 §2).
    pub fn key_material_len(self) -> usize {
        self.key_len() + SALT_LEN
    }

    /// The strongSwan proposal name of the transform.
    pub fn name(self) -> &'static str {
        match self {
            Aead::Aes128Gcm16 => "aes128gcm16",
            Aead::Aes256Gcm16 => "aes256gcm16",
            Aead::ChaCha20Poly1305 => "chacha20poly1305",
        }
    }
}

impl fmt::Display for Aead {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Which implementation of AES-GCM an SA uses. Both pass the same RFC and NIST vectors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Backend {
    /// `ring` (BoringSSL's assembly): the fastest here for packets of a few hundred bytes and
    /// more, so the default.
    #[default]
    Ring,
    /// RustCrypto's `aes-gcm` (AES-NI/VAES and CLMUL intrinsics).
    RustCrypto,
}

impl Backend {
    /// Both backends, for tests and benchmarks.
    pub const ALL: [Backend; 2] = [Backend::Ring, Backend::RustCrypto];

    /// A short name (`ring`, `aes-gcm`).
    pub fn name(self) -> &'static str {
        match self {
            Backend::Ring => "ring",
            Backend::RustCrypto => "aes-gcm",
        }
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The tag did not verify, or the buffer is shorter than the tag.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("AEAD authentication failed")]
pub struct AeadError;

/// An AEAD that seals and opens in place, with the tag in the last [`ICV_LEN`] bytes of `buf`.
pub trait AeadBackend: Send + Sync {
    /// Encrypts `buf[..len - 16]` in place and writes the tag into `buf[len - 16..]`.
    fn seal_in_place(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        buf: &mut [u8],
    ) -> Result<(), AeadError>;

    /// Verifies the tag in `buf[len - 16..]` over `aad` and the ciphertext before it, then
    /// decrypts the ciphertext in place. On failure the buffer's plaintext part is unspecified.
    fn open_in_place(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        buf: &mut [u8],
    ) -> Result<(), AeadError>;
}

/// AES-GCM or ChaCha20-Poly1305 from `ring`.
pub struct RingAead {
    key: ring::aead::LessSafeKey,
}

impl RingAead {
    /// A key for `aead` from the key alone (without salt).
    pub fn new(aead: Aead, key: &[u8]) -> Result<RingAead, EspError> {
        let alg = match aead {
            Aead::Aes128Gcm16 => &ring::aead::AES_128_GCM,
            Aead::Aes256Gcm16 => &ring::aead::AES_256_GCM,
            Aead::ChaCha20Poly1305 => &ring::aead::CHACHA20_POLY1305,
        };
        let key = ring::aead::UnboundKey::new(alg, key)
            .map_err(|_| EspError::BackendRefusedKey(Backend::Ring))?;
        Ok(RingAead { key: ring::aead::LessSafeKey::new(key) })
    }
}

impl AeadBackend for RingAead {
    #[inline]
    fn seal_in_place(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        buf: &mut [u8],
    ) -> Result<(), AeadError> {
        let split = buf.len().checked_sub(ICV_LEN).ok_or(AeadError)?;
        let (data, tag_out) = buf.split_at_mut(split);
        let tag = self
            .key
            .seal_in_place_separate_tag(
                ring::aead::Nonce::assume_unique_for_key(*nonce),
                ring::aead::Aad::from(aad),
                data,
            )
            .map_err(|_| AeadError)?;
        tag_out.copy_from_slice(tag.as_ref());
        Ok(())
    }

    #[inline]
    fn open_in_place(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        buf: &mut [u8],
    ) -> Result<(), AeadError> {
        let split = buf.len().checked_sub(ICV_LEN).ok_or(AeadError)?;
        let (data, tag) = buf.split_at_mut(split);
        let tag = ring::aead::Tag::try_from(&*tag).map_err(|_| AeadError)?;
        self.key
            .open_in_place_separate_tag(
                ring::aead::Nonce::assume_unique_for_key(*nonce),
                ring::aead::Aad::from(aad),
                tag,
                data,
                0..,
            )
            .map_err(|_| AeadError)?;
        Ok(())
    }
}

/// AES-GCM from RustCrypto's `aes-gcm`.
#[allow(clippy::large_enum_variant)] // inline keys: no pointer chase per packet
pub enum RustCryptoGcm {
    /// 128-bit key.
    Aes128(aes_gcm::Aes128Gcm),
    /// 256-bit key.
    Aes256(aes_gcm::Aes256Gcm),
}

impl RustCryptoGcm {
    /// A key for `aead` from the AES key alone (without salt). `None` for ChaCha20-Poly1305.
    pub fn new(aead: Aead, aes_key: &[u8]) -> Result<Option<RustCryptoGcm>, EspError> {
        let refused = |_| EspError::BackendRefusedKey(Backend::RustCrypto);
        Ok(Some(match aead {
            Aead::Aes128Gcm16 => {
                RustCryptoGcm::Aes128(aes_gcm::Aes128Gcm::new_from_slice(aes_key).map_err(refused)?)
            }
            Aead::Aes256Gcm16 => {
                RustCryptoGcm::Aes256(aes_gcm::Aes256Gcm::new_from_slice(aes_key).map_err(refused)?)
            }
            Aead::ChaCha20Poly1305 => return Ok(None),
        }))
    }
}

fn rc_seal<C: AeadInOut<NonceSize = aes_gcm::aead::consts::U12>>(
    c: &C,
    nonce: &[u8; NONCE_LEN],
    aad: &[u8],
    buf: &mut [u8],
) -> Result<(), AeadError> {
    let split = buf.len().checked_sub(ICV_LEN).ok_or(AeadError)?;
    let (data, tag_out) = buf.split_at_mut(split);
    let tag = c.encrypt_inout_detached(nonce.into(), aad, data.into()).map_err(|_| AeadError)?;
    tag_out.copy_from_slice(tag.as_slice());
    Ok(())
}

fn rc_open<C: AeadInOut<NonceSize = aes_gcm::aead::consts::U12>>(
    c: &C,
    nonce: &[u8; NONCE_LEN],
    aad: &[u8],
    buf: &mut [u8],
) -> Result<(), AeadError> {
    let split = buf.len().checked_sub(ICV_LEN).ok_or(AeadError)?;
    let (data, tag) = buf.split_at_mut(split);
    let tag = aes_gcm::aead::Tag::<C>::try_from(&*tag).map_err(|_| AeadError)?;
    c.decrypt_inout_detached(nonce.into(), aad, data.into(), &tag).map_err(|_| AeadError)
}

impl AeadBackend for RustCryptoGcm {
    #[inline]
    fn seal_in_place(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        buf: &mut [u8],
    ) -> Result<(), AeadError> {
        match self {
            RustCryptoGcm::Aes128(c) => rc_seal(c, nonce, aad, buf),
            RustCryptoGcm::Aes256(c) => rc_seal(c, nonce, aad, buf),
        }
    }

    #[inline]
    fn open_in_place(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        buf: &mut [u8],
    ) -> Result<(), AeadError> {
        match self {
            RustCryptoGcm::Aes128(c) => rc_open(c, nonce, aad, buf),
            RustCryptoGcm::Aes256(c) => rc_open(c, nonce, aad, buf),
        }
    }
}

/// One AEAD key on either backend, dispatched by a `match` (no virtual call per packet).
/// Its `Debug` shows the algorithm and backend, never the key.
pub struct Cipher {
    aead: Aead,
    inner: CipherInner,
}

// Keys stay inline: a box would add a pointer chase per packet.
#[allow(clippy::large_enum_variant)]
enum CipherInner {
    Ring(RingAead),
    RustCrypto(RustCryptoGcm),
}

impl Cipher {
    /// A key for `aead` on `backend` from the key alone (without salt).
    pub fn new(aead: Aead, backend: Backend, key: &[u8]) -> Result<Cipher, EspError> {
        if key.len() != aead.key_len() {
            return Err(EspError::KeyLength {
                transform: aead.into(),
                expected: aead.key_len(),
                got: key.len(),
            });
        }
        let rust_crypto = match backend {
            Backend::Ring => None,
            Backend::RustCrypto => RustCryptoGcm::new(aead, key)?,
        };
        let inner = match rust_crypto {
            Some(c) => CipherInner::RustCrypto(c),
            None => CipherInner::Ring(RingAead::new(aead, key)?),
        };
        Ok(Cipher { aead, inner })
    }

    /// The algorithm.
    pub fn aead(&self) -> Aead {
        self.aead
    }

    /// The backend.
    pub fn backend(&self) -> Backend {
        match self.inner {
            CipherInner::Ring(_) => Backend::Ring,
            CipherInner::RustCrypto(_) => Backend::RustCrypto,
        }
    }
}

impl fmt::Debug for Cipher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cipher")
            .field("aead", &self.aead)
            .field("backend", &self.backend())
            .field("key", &"<redacted>")
            .finish()
    }
}

impl AeadBackend for Cipher {
    #[inline]
    fn seal_in_place(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        buf: &mut [u8],
    ) -> Result<(), AeadError> {
        match &self.inner {
            CipherInner::Ring(c) => c.seal_in_place(nonce, aad, buf),
            CipherInner::RustCrypto(c) => c.seal_in_place(nonce, aad, buf),
        }
    }

    #[inline]
    fn open_in_place(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        buf: &mut [u8],
    ) -> Result<(), AeadError> {
        match &self.inner {
            CipherInner::Ring(c) => c.open_in_place(nonce, aad, buf),
            CipherInner::RustCrypto(c) => c.open_in_place(nonce, aad, buf),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Vector {
        name: &'static str,
        key: &'static str,
        nonce: &'static str,
        aad: &'static str,
        pt: &'static str,
        ct: &'static str,
        tag: &'static str,
    }

    fn aead_for(key: &[u8]) -> Aead {
        if key.len() == 16 { Aead::Aes128Gcm16 } else { Aead::Aes256Gcm16 }
    }

    fn run(v: &Vector) {
        let key = hex::decode(v.key).unwrap();
        let nonce: [u8; NONCE_LEN] = hex::decode(v.nonce).unwrap().try_into().unwrap();
        let aad = hex::decode(v.aad).unwrap();
        let pt = hex::decode(v.pt).unwrap();
        let mut expected = hex::decode(v.ct).unwrap();
        expected.extend(hex::decode(v.tag).unwrap());
        for backend in Backend::ALL {
            let c = Cipher::new(aead_for(&key), backend, &key).unwrap();
            let mut buf = pt.clone();
            buf.extend([0; ICV_LEN]);
            c.seal_in_place(&nonce, &aad, &mut buf).unwrap();
            assert_eq!(hex::encode(&buf), hex::encode(&expected), "{} seal on {backend}", v.name);
            c.open_in_place(&nonce, &aad, &mut buf).unwrap();
            assert_eq!(&buf[..pt.len()], &pt[..], "{} open on {backend}", v.name);
            // Any flipped bit in ciphertext, tag or AAD fails.
            let mut bad = expected.clone();
            let last = bad.len() - 1;
            bad[last] ^= 1;
            assert_eq!(c.open_in_place(&nonce, &aad, &mut bad), Err(AeadError), "{}", v.name);
            if !pt.is_empty() {
                let mut bad = expected.clone();
                bad[0] ^= 0x80;
                assert_eq!(c.open_in_place(&nonce, &aad, &mut bad), Err(AeadError));
            }
            let mut bad_aad = aad.clone();
            bad_aad.push(0);
            let mut copy = expected.clone();
            assert_eq!(c.open_in_place(&nonce, &bad_aad, &mut copy), Err(AeadError));
        }
    }

    /// RFC 8439 §2.8.2, the AEAD construction RFC 7634 uses for ESP: its nonce is the 4-byte
    /// salt `07000000` and the 8-byte IV `4041424344454647` (RFC 7634 §2).
    #[test]
    fn chacha20poly1305_rfc8439_2_8_2() {
        let key: Vec<u8> = (0x80..0xa0).collect();
        let nonce: [u8; NONCE_LEN] =
            hex::decode("070000004041424344454647").unwrap().try_into().unwrap();
        let aad = hex::decode("50515253c0c1c2c3c4c5c6c7").unwrap();
        let pt = b"Ladies and Gentlemen of the class of '99: If I could offer you only one tip for the future, sunscreen would be it.";
        let ct = "d31a8d34648e60db7b86afbc53ef7ec2a4aded51296e08fea9e2b5a736ee62d63dbea45e8ca9671282fafb69da92728b1a71de0a9e060b2905d6a5b67ecd3b3692ddbd7f2d778b8c9803aee328091b58fab324e4fad675945585808b4831d7bc3ff4def08e4b7a9de576d26586cec64b6116";
        let tag = "1ae10b594f09e26a7e902ecbd0600691";
        // The RustCrypto backend has no ChaCha20: both run ring's.
        for backend in Backend::ALL {
            let c = Cipher::new(Aead::ChaCha20Poly1305, backend, &key).unwrap();
            assert_eq!(c.backend(), Backend::Ring);
            let mut buf = pt.to_vec();
            buf.extend([0; ICV_LEN]);
            c.seal_in_place(&nonce, &aad, &mut buf).unwrap();
            assert_eq!(hex::encode(&buf), format!("{ct}{tag}"));
            c.open_in_place(&nonce, &aad, &mut buf).unwrap();
            assert_eq!(&buf[..pt.len()], pt);
            let last = buf.len() - 1;
            let mut bad = hex::decode(format!("{ct}{tag}")).unwrap();
            bad[last] ^= 1;
            assert_eq!(c.open_in_place(&nonce, &aad, &mut bad), Err(AeadError));
        }
    }

    /// McGrew and Viega, "The Galois/Counter Mode of Operation", Appendix B test cases, the
    /// AES-128 and AES-256 ones with 96-bit IVs (as in NIST's `gcmEncryptExtIV*.rsp`).
    #[test]
    fn nist_gcm_spec_appendix_b_test_cases() {
        let p64 = "d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a721c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b391aafd255";
        let p60 = &p64[..120];
        let k128 = "feffe9928665731c6d6a8f9467308308";
        let k256 = "feffe9928665731c6d6a8f9467308308feffe9928665731c6d6a8f9467308308";
        let iv = "cafebabefacedbaddecaf888";
        let aad = "feedfacedeadbeeffeedfacedeadbeefabaddad2";
        let c128 = "42831ec2217774244b7221b784d0d49ce3aa212f2c02a4e035c17e2329aca12e21d514b25466931c7d8f6a5aac84aa051ba30b396a0aac973d58e091473f5985";
        let c256 = "522dc1f099567d07f47f37a32a84427d643a8cdcbfe5c0c97598a2bd2555d1aa8cb08e48590dbb3da7b08b1056828838c5f61e6393ba7a0abcc9f662898015ad";
        let zero16 = "00000000000000000000000000000000";
        let zero32 = "0000000000000000000000000000000000000000000000000000000000000000";
        let zero_iv = "000000000000000000000000";
        let vectors = [
            Vector {
                name: "test case 1",
                key: zero16,
                nonce: zero_iv,
                aad: "",
                pt: "",
                ct: "",
                tag: "58e2fccefa7e3061367f1d57a4e7455a",
            },
            Vector {
                name: "test case 2",
                key: zero16,
                nonce: zero_iv,
                aad: "",
                pt: zero16,
                ct: "0388dace60b6a392f328c2b971b2fe78",
                tag: "ab6e47d42cec13bdf53a67b21257bddf",
            },
            Vector {
                name: "test case 3",
                key: k128,
                nonce: iv,
                aad: "",
                pt: p64,
                ct: c128,
                tag: "4d5c2af327cd64a62cf35abd2ba6fab4",
            },
            Vector {
                name: "test case 4",
                key: k128,
                nonce: iv,
                aad,
                pt: p60,
                ct: &c128[..120],
                tag: "5bc94fbc3221a5db94fae95ae7121a47",
            },
            Vector {
                name: "test case 13",
                key: zero32,
                nonce: zero_iv,
                aad: "",
                pt: "",
                ct: "",
                tag: "530f8afbc74536b9a963b4f1c4cb738b",
            },
            Vector {
                name: "test case 14",
                key: zero32,
                nonce: zero_iv,
                aad: "",
                pt: zero16,
                ct: "cea7403d4d606b6e074ec5d3baf39d18",
                tag: "d0d1c8a799996bf0265b98b5d48ab919",
            },
            Vector {
                name: "test case 15",
                key: k256,
                nonce: iv,
                aad: "",
                pt: p64,
                ct: c256,
                tag: "b094dac5d93471bdec1a502270e3cc6c",
            },
            Vector {
                name: "test case 16",
                key: k256,
                nonce: iv,
                aad,
                pt: p60,
                ct: &c256[..120],
                tag: "76fc6ece0f4e1768cddf8853bb2d551b",
            },
        ];
        for v in &vectors {
            run(v);
        }
    }

    /// The ESP test cases of RFC 4106's companion, draft-mcgrew-gcm-test-01 §2 ("Test Cases
    /// for GCM in IPsec ESP"): nonce = salt || explicit IV, AAD = SPI || sequence number
    /// (8 bytes) or SPI || ESN high || low (12 bytes), as in RFC 4106 §4 and §5. The AES-192
    /// case is left out (not an ESP transform here).
    #[test]
    fn rfc4106_esp_test_cases_draft_mcgrew_gcm_test_01() {
        let vectors = [
            Vector {
                name: "case 1 (ESN)",
                key: "4c80cdefbb5d10da906ac73c3613a634",
                nonce: "2e443b684956ed7e3b244cfe",
                aad: "000043218765432100000000",
                pt: "45000048699a000080114db7c0a80102c0a801010a9bf15638d301000001000000000000045f736970045f756470037369700963796265726369747902646b000021000101020201",
                ct: "fecf537e729d5b07dc30df528dd22b768d1b98736696a6fd348509fa13ceac34cfa2436f14a3f3cf65925bf1f4a13c5d15b21e1884f5ff6247aeabb786b93bce61bc17d768fd9732",
                tag: "459018148f6cbe722fd04796562dfdb4",
            },
            Vector {
                name: "case 2",
                key: "feffe9928665731c6d6a8f9467308308",
                nonce: "cafebabefacedbaddecaf888",
                aad: "0000a5f80000000a",
                pt: "4500003e698f000080114dccc0a80102c0a801010a980035002a2343b2d001000001000000000000037369700963796265726369747902646b00000100010001",
                ct: "deb22cd9b07c72c16e3a65beeb8df304a5a5897d33ae530f1ba76d5d114d2a5c3de81827c10e9a4f51330d0eec416642cfbb85a5b47e48a4ec3b9ba95d918bd1",
                tag: "83b70d3aa8bc6ee4c309e9d85a41ad4a",
            },
            Vector {
                name: "case 3 (AES-256)",
                key: "abbccddef00112233445566778899aababbccddef00112233445566778899aab",
                nonce: "112233440102030405060708",
                aad: "4a2cbfe300000002",
                pt: "4500003069a6400080062690c0a801029389155e0a9e008b2dc57ee0000000007002400020bf0000020405b40101040201020201",
                ct: "ff425c9b724599df7a3bcd510194e00d6a78107f1b0b1cbf06efae9d65a5d763748a637985771d347f0545659f14e99def842d8e",
                tag: "b335f4eecfdbf831824b4c4915956c96",
            },
            Vector {
                name: "case 4",
                key: "00000000000000000000000000000000",
                nonce: "000000000000000000000000",
                aad: "0000000000000001",
                pt: "4500003c99c500008001cb7a40679318010101010800075c020044006162636465666768696a6b6c6d6e6f707172737475767761626364656667686901020201",
                ct: "4688daf2f973a392732909c331d56d60f694abaa414b5e7ff5fdcdfff5e9a284456476492719ffb64de7d9dca1e1d894bc3bd57873ed4d181d19d4d5c8c18af3",
                tag: "f821d496eeb096e98ad2b69e4799c71d",
            },
            Vector {
                name: "case 5 (ESN)",
                key: "3de09874b388e6491988d0c3607eae1f",
                nonce: "57690e434e280000a2fca1a3",
                aad: "42f67e3f1010101010101010",
                pt: "4500003c99c300008001cb7c40679318010101010800085c020043006162636465666768696a6b6c6d6e6f707172737475767761626364656667686901020201",
                ct: "fba2caa4853cf9f0f22cb10d86dd83b0fec75691cf1a04b00d1138ec9c35791765acbd8701ad79845bf9fe3fba487bc91755e6662b4c8d0d1f5e22739530320a",
                tag: "e0d731cc978ecafaeae88f00e80d6e48",
            },
            Vector {
                name: "case 6 (ESN)",
                key: "3de09874b388e6491988d0c3607eae1f",
                nonce: "57690e434e280000a2fca1a3",
                aad: "42f67e3f1010101010101010",
                pt: "4500001c42a200008001441f406793b6e00000020a00f5ff01020201",
                ct: "fba2ca845e5df9f0f22c3e6e86dd831e1fc65792cd1af9130e1379ed",
                tag: "369f071f35e034be95f112e4e7d05d35",
            },
            Vector {
                name: "case 8 (ESN)",
                key: "abbccddef00112233445566778899aab",
                nonce: "decaf888cafedebaceface74",
                aad: "000001000000000000000001",
                pt: "4500004933ba00007f119106c3fb1d10c2b1d326c02831ce0035dd7b800302d500004e20001e8c18d75b81dc91baa0476b91b924b280389d92c963bac046ec959b6266c04722b14923010101",
                ct: "18a6fd42f72cbf4ab2a2ea901f73d814e3e7f243d95412e1c349c1d2fbec168f9190feebaf2cb01984e65863965d7472b79da345e0e780191f0d2f0e0f496c226f2127b27db35724e7845d68",
                tag: "651f57e65f354f75ff17015769623436",
            },
            Vector {
                name: "case 9 (AES-256, ESN)",
                key: "abbccddef00112233445566778899aababbccddef00112233445566778899aab",
                nonce: "73616c74616e640169766563",
                aad: "17405e67156f3126dd0db99b",
                pt: "45080028732c00004006e9f90a0106120a01038f06b88023dd6bafbecb71260250101f646d540001",
                ct: "f2d69ecdbd5a0d5b8d5ef38bad4da58d1f278fde98ef67549d524a3018d9a57ff4d3a31ce673119e",
                tag: "451626c2415771e3b7eebca614c89b35",
            },
            Vector {
                name: "case 10 (ESN)",
                key: "3de09874b388e6491988d0c3607eae1f",
                nonce: "57690e434e280000a2fca1a3",
                aad: "42f67e3f1010101010101010",
                pt: "45000049333e00007f119182c3fb1d10c2b1d326c02831ce0035cb458003025b000001e0001e8c18d65759d52284a0352c71475c8880391c764d6e5ee0496b325ae270c03899493915010101",
                ct: "fba2cad12fc1f9f00d3cebf305410db83d7784b607323d220f24b0a97d54182800cadb0f68d99ef0e0c0c89ae9bea8884e52d65bc1afd0740f742444747b5b39ab533163aad4550ee5160975",
                tag: "cdb608c5769189609763b8e18caa81e2",
            },
            Vector {
                name: "case 11 (AES-256, ESN)",
                key: "abbccddef00112233445566778899aababbccddef00112233445566778899aab",
                nonce: "73616c74616e640169766563",
                aad: "17405e67156f3126dd0db99b",
                pt: "636973636f0172756c657301746865016e6574776501646566696e6501746865746563686e6f6c6f67696573017468617477696c6c01646566696e65746f6d6f72726f7701020201",
                ct: "d4b7ed86a1777f2ea13d6973d324c69e7b43f826fb56831226508bebd2dceb18d0a6df10e5487df074113e14c641024e3e6773d91a62ee429b043a10e3efe6b012a49363412364f8",
                tag: "c0cac587f249e56b11e24f30e44ccc76",
            },
            Vector {
                name: "case 12 (trailer only)",
                key: "7d773d00c144c525ac619d18c84a3f47",
                nonce: "d966426743457e9182443bc6",
                aad: "335467aeffffffff",
                pt: "01020201",
                ct: "437f866b",
                tag: "cb3f699fe9b0822bac961c4504bef270",
            },
            Vector {
                name: "case 13 (ESN)",
                key: "abbccddef00112233445566778899aab",
                nonce: "decaf888cafedebaceface74",
                aad: "000001000000000000000001",
                pt: "746f016265016f72016e6f7401746f0162650001",
                ct: "29c9fc69a197d038ccdd14e2ddfcaa0543332164",
                tag: "412503524303ed3c6c5f283843af8c3e",
            },
            Vector {
                name: "case 14 (AES-256, ESN)",
                key: "6c6567616c697a656d6172696a75616e61616e64646f69746265666f72656961",
                nonce: "7475726e333021696765746d",
                aad: "796b6963ffffffffffffffff",
                pt: "45000030da3a00008001df3bc0a80005c0a800010800c6cd020007006162636465666768696a6b6c6d6e6f707172737401020201",
                ct: "f97ab2aa356d8edce17644ac8c78e25dd24dedbb29ebf1b64a274b39b49c3a864cd3d78ca4ae68a32b42458fb57dbe821dcc63b9",
                tag: "d0937ba2945f669368661a329fb4c053",
            },
        ];
        for v in &vectors {
            run(v);
        }
    }

    #[test]
    fn wrong_key_lengths_are_refused_and_debug_hides_the_key() {
        let e = Cipher::new(Aead::Aes256Gcm16, Backend::Ring, &[0; 16]).unwrap_err();
        assert_eq!(
            e,
            EspError::KeyLength { transform: Aead::Aes256Gcm16.into(), expected: 32, got: 16 }
        );
        let c = Cipher::new(Aead::Aes128Gcm16, Backend::RustCrypto, &[7; 16]).unwrap();
        assert_eq!(
            format!("{c:?}"),
            r#"Cipher { aead: Aes128Gcm16, backend: RustCrypto, key: "<redacted>" }"#
        );
        let mut short = [0u8; 15];
        assert_eq!(c.open_in_place(&[0; 12], &[], &mut short), Err(AeadError));
    }
}

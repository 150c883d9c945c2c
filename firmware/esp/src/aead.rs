//! AES-GCM for ESP behind a small trait, with two backends: `ring` and RustCrypto's `aes-gcm`.
//!
//! ESP keeps the ICV right after the ciphertext (RFC 4303 §2), so both operations work on one
//! buffer: the plaintext or ciphertext followed by the 16-byte tag. The nonce is the 4-byte salt
//! followed by the 8-byte explicit IV (RFC 4106 §4); the AAD is SPI and sequence number
//! (RFC 4106 §5).

use std::fmt;

use aes_gcm::aead::{AeadInOut, KeyInit};

use crate::{EspError, ICV_LEN};

/// Bytes of the GCM nonce: salt and explicit IV (RFC 4106 §4).
pub const NONCE_LEN: usize = 12;
/// Bytes of the salt at the end of the ESP key material (RFC 4106 §8.1).
pub const SALT_LEN: usize = 4;

/// The ESP AEAD transforms this engine implements (IKEv2 transform IDs 20, RFC 4106 §8.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Aead {
    /// AES-128-GCM with a 16-byte ICV (`aes128gcm16`).
    Aes128Gcm16,
    /// AES-256-GCM with a 16-byte ICV (`aes256gcm16`).
    Aes256Gcm16,
}

impl Aead {
    /// Bytes of the AES key alone.
    pub fn aes_key_len(self) -> usize {
        match self {
            Aead::Aes128Gcm16 => 16,
            Aead::Aes256Gcm16 => 32,
        }
    }

    /// Bytes of key material the SA takes: AES key and salt (RFC 4106 §8.1).
    pub fn key_material_len(self) -> usize {
        self.aes_key_len() + SALT_LEN
    }

    /// The strongSwan proposal name of the transform.
    pub fn name(self) -> &'static str {
        match self {
            Aead::Aes128Gcm16 => "aes128gcm16",
            Aead::Aes256Gcm16 => "aes256gcm16",
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

/// AES-GCM from `ring`.
pub struct RingGcm {
    key: ring::aead::LessSafeKey,
}

impl RingGcm {
    /// A key for `aead` from the AES key alone (without salt).
    pub fn new(aead: Aead, aes_key: &[u8]) -> Result<RingGcm, EspError> {
        let alg = match aead {
            Aead::Aes128Gcm16 => &ring::aead::AES_128_GCM,
            Aead::Aes256Gcm16 => &ring::aead::AES_256_GCM,
        };
        let key = ring::aead::UnboundKey::new(alg, aes_key)
            .map_err(|_| EspError::BackendRefusedKey(Backend::Ring))?;
        Ok(RingGcm { key: ring::aead::LessSafeKey::new(key) })
    }
}

impl AeadBackend for RingGcm {
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
    /// A key for `aead` from the AES key alone (without salt).
    pub fn new(aead: Aead, aes_key: &[u8]) -> Result<RustCryptoGcm, EspError> {
        let refused = |_| EspError::BackendRefusedKey(Backend::RustCrypto);
        Ok(match aead {
            Aead::Aes128Gcm16 => {
                RustCryptoGcm::Aes128(aes_gcm::Aes128Gcm::new_from_slice(aes_key).map_err(refused)?)
            }
            Aead::Aes256Gcm16 => {
                RustCryptoGcm::Aes256(aes_gcm::Aes256Gcm::new_from_slice(aes_key).map_err(refused)?)
            }
        })
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

/// One AES-GCM key on either backend, dispatched by a `match` (no virtual call per packet).
/// Its `Debug` shows the algorithm and backend, never the key.
pub struct Cipher {
    aead: Aead,
    inner: CipherInner,
}

// Keys stay inline: a box would add a pointer chase per packet.
#[allow(clippy::large_enum_variant)]
enum CipherInner {
    Ring(RingGcm),
    RustCrypto(RustCryptoGcm),
}

impl Cipher {
    /// A key for `aead` on `backend` from the AES key alone (without salt).
    pub fn new(aead: Aead, backend: Backend, aes_key: &[u8]) -> Result<Cipher, EspError> {
        if aes_key.len() != aead.aes_key_len() {
            return Err(EspError::KeyLength {
                aead,
                expected: aead.aes_key_len(),
                got: aes_key.len(),
            });
        }
        let inner = match backend {
            Backend::Ring => CipherInner::Ring(RingGcm::new(aead, aes_key)?),
            Backend::RustCrypto => CipherInner::RustCrypto(RustCryptoGcm::new(aead, aes_key)?),
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

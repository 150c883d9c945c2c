//! CBC ciphers for ESP (AES, RFC 3602; 3DES, RFC 2451) from RustCrypto's `cbc`, `aes` and `des`:
//! ring has HMAC and the AEADs but no CBC mode. And the IVs of an outbound CBC SA.

use std::fmt;

use cbc::cipher::block_padding::NoPadding;
use cbc::cipher::{BlockDecryptMut, BlockEncrypt, BlockEncryptMut, InnerIvInit, KeyInit};

use crate::{CbcCipher, DropReason, EspError};

/// One CBC key, expanded once. Its `Debug` names the cipher, never the key.
pub(crate) enum CbcKey {
    Aes128(aes::Aes128),
    Aes192(aes::Aes192),
    Aes256(aes::Aes256),
    TripleDes(des::TdesEde3),
}

impl fmt::Debug for CbcKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self {
            CbcKey::Aes128(_) => "aes128-cbc",
            CbcKey::Aes192(_) => "aes192-cbc",
            CbcKey::Aes256(_) => "aes256-cbc",
            CbcKey::TripleDes(_) => "3des-cbc",
        };
        write!(f, "CbcKey {{ cipher: {name}, key: <redacted> }}")
    }
}

/// `cbc` takes the IV as a block of the cipher's size; a wrong size is a caller bug the packet
/// path has already excluded, reported as a malformed packet rather than a panic.
macro_rules! with_mode {
    ($key:expr, $iv:expr, $mode:ident, |$m:ident| $body:expr) => {
        match $key {
            CbcKey::Aes128(k) => {
                let $m = cbc::$mode::<aes::Aes128>::inner_iv_slice_init(k.clone(), $iv)
                    .map_err(|_| DropReason::Malformed)?;
                $body
            }
            CbcKey::Aes192(k) => {
                let $m = cbc::$mode::<aes::Aes192>::inner_iv_slice_init(k.clone(), $iv)
                    .map_err(|_| DropReason::Malformed)?;
                $body
            }
            CbcKey::Aes256(k) => {
                let $m = cbc::$mode::<aes::Aes256>::inner_iv_slice_init(k.clone(), $iv)
                    .map_err(|_| DropReason::Malformed)?;
                $body
            }
            CbcKey::TripleDes(k) => {
                let $m = cbc::$mode::<des::TdesEde3>::inner_iv_slice_init(k.clone(), $iv)
                    .map_err(|_| DropReason::Malformed)?;
                $body
            }
        }
    };
}

impl CbcKey {
    pub(crate) fn new(cipher: CbcCipher, key: &[u8]) -> Result<CbcKey, EspError> {
        let refused = |_| EspError::BackendRefusedKey(crate::Backend::RustCrypto);
        Ok(match cipher {
            CbcCipher::Aes128 => CbcKey::Aes128(aes::Aes128::new_from_slice(key).map_err(refused)?),
            CbcCipher::Aes192 => CbcKey::Aes192(aes::Aes192::new_from_slice(key).map_err(refused)?),
            CbcCipher::Aes256 => CbcKey::Aes256(aes::Aes256::new_from_slice(key).map_err(refused)?),
            CbcCipher::TripleDes => {
                CbcKey::TripleDes(des::TdesEde3::new_from_slice(key).map_err(refused)?)
            }
        })
    }

    /// Encrypts whole blocks in place (the caller padded them, RFC 4303 §2.4).
    #[inline]
    pub(crate) fn encrypt(&self, iv: &[u8], buf: &mut [u8]) -> Result<(), DropReason> {
        let n = buf.len();
        with_mode!(self, iv, Encryptor, |m| m
            .encrypt_padded_mut::<NoPadding>(buf, n)
            .map(|_| ())
            .map_err(|_| DropReason::Malformed))
    }

    /// Decrypts whole blocks in place.
    #[inline]
    pub(crate) fn decrypt(&self, iv: &[u8], buf: &mut [u8]) -> Result<(), DropReason> {
        with_mode!(self, iv, Decryptor, |m| m
            .decrypt_padded_mut::<NoPadding>(buf)
            .map(|_| ())
            .map_err(|_| DropReason::Malformed))
    }
}

/// The IVs of an outbound CBC SA. CBC needs IVs an attacker cannot predict (RFC 3602 §3, the
/// chosen-plaintext attack on predictable IVs): each is AES-128, under a random key drawn from
/// the OS for this SA alone, of the packet's sequence number, which never repeats within the
/// SA. That is a counter-mode generator (NIST SP 800-90A's CTR_DRBG without reseeding, bounded
/// by the SA's lifetime), so every packet gets a fresh IV with no system call or lock per
/// packet.
pub(crate) struct IvSource(Option<aes::Aes128>);

impl IvSource {
    /// For an AEAD, whose IV is the sequence number itself.
    pub(crate) fn none() -> IvSource {
        IvSource(None)
    }

    /// A generator with a fresh key from the OS.
    pub(crate) fn random() -> Result<IvSource, EspError> {
        let mut key = [0u8; 16];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut key)
            .map_err(|_| EspError::NoRandom)?;
        let cipher = aes::Aes128::new(&key.into());
        key.fill(0);
        std::hint::black_box(&key);
        Ok(IvSource(Some(cipher)))
    }

    /// Writes the IV of packet `seq` into `out` (8 or 16 bytes).
    #[inline]
    pub(crate) fn fill(&self, seq: u64, out: &mut [u8]) {
        let mut block = [0u8; 16];
        block[8..].copy_from_slice(&seq.to_be_bytes());
        let mut block = block.into();
        if let Some(k) = &self.0 {
            k.encrypt_block(&mut block);
        }
        let n = out.len().min(16);
        out[..n].copy_from_slice(&block[..n]);
    }
}

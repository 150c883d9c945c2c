//! The ESP transforms this engine implements and their packet layout: an AEAD (AES-GCM,
//! RFC 4106; ChaCha20-Poly1305, RFC 7634), or a CBC cipher (AES-CBC, RFC 3602; 3DES-CBC,
//! RFC 2451) with an HMAC integrity algorithm (RFC 2404, RFC 4868), encrypt-then-MAC
//! (RFC 4303 §3.3.2).

use std::fmt;

use crate::Aead;
use crate::aead::SALT_LEN;

/// A CBC block cipher for ESP. Always paired with an [`Integ`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CbcCipher {
    /// AES-128-CBC (`aes128`, RFC 3602).
    Aes128,
    /// AES-192-CBC (`aes192`).
    Aes192,
    /// AES-256-CBC (`aes256`).
    Aes256,
    /// 3DES-EDE-CBC (`3des`, RFC 2451): weak, a 64-bit block.
    TripleDes,
}

impl CbcCipher {
    /// Bytes of key.
    pub fn key_len(self) -> usize {
        match self {
            CbcCipher::Aes128 => 16,
            CbcCipher::Aes192 | CbcCipher::TripleDes => 24,
            CbcCipher::Aes256 => 32,
        }
    }

    /// Bytes of a block, which is also the explicit IV (RFC 3602 §3, RFC 2451 §2.3).
    pub fn block_len(self) -> usize {
        match self {
            CbcCipher::TripleDes => 8,
            _ => 16,
        }
    }

    /// strongSwan's keyword.
    pub fn name(self) -> &'static str {
        match self {
            CbcCipher::Aes128 => "aes128",
            CbcCipher::Aes192 => "aes192",
            CbcCipher::Aes256 => "aes256",
            CbcCipher::TripleDes => "3des",
        }
    }
}

/// An HMAC integrity algorithm with its truncated ICV (RFC 2404, RFC 4868 §2.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Integ {
    /// HMAC-SHA1-96 (`sha1`): weak.
    HmacSha1_96,
    /// HMAC-SHA-256-128 (`sha256`).
    HmacSha256_128,
    /// HMAC-SHA-384-192 (`sha384`).
    HmacSha384_192,
    /// HMAC-SHA-512-256 (`sha512`).
    HmacSha512_256,
}

impl Integ {
    /// Bytes of key: the hash's output length (RFC 2404 §3, RFC 4868 §2.1.1).
    pub fn key_len(self) -> usize {
        match self {
            Integ::HmacSha1_96 => 20,
            Integ::HmacSha256_128 => 32,
            Integ::HmacSha384_192 => 48,
            Integ::HmacSha512_256 => 64,
        }
    }

    /// Bytes of the truncated ICV: half the hash (96 bits for SHA-1).
    pub fn icv_len(self) -> usize {
        match self {
            Integ::HmacSha1_96 => 12,
            Integ::HmacSha256_128 => 16,
            Integ::HmacSha384_192 => 24,
            Integ::HmacSha512_256 => 32,
        }
    }

    /// ring's HMAC algorithm.
    pub(crate) fn ring(self) -> ring::hmac::Algorithm {
        match self {
            Integ::HmacSha1_96 => ring::hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY,
            Integ::HmacSha256_128 => ring::hmac::HMAC_SHA256,
            Integ::HmacSha384_192 => ring::hmac::HMAC_SHA384,
            Integ::HmacSha512_256 => ring::hmac::HMAC_SHA512,
        }
    }

    /// strongSwan's keyword.
    pub fn name(self) -> &'static str {
        match self {
            Integ::HmacSha1_96 => "sha1",
            Integ::HmacSha256_128 => "sha256",
            Integ::HmacSha384_192 => "sha384",
            Integ::HmacSha512_256 => "sha512",
        }
    }
}

/// What protects an SA's packets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transform {
    /// An AEAD: encryption and integrity in one, with an 8-byte explicit IV and a 16-byte ICV.
    Aead(Aead),
    /// A CBC cipher, then an HMAC over header, IV and ciphertext (encrypt-then-MAC).
    Cbc(CbcCipher, Integ),
}

impl Transform {
    /// Bytes of key material the SA takes, laid out as KEYMAT gives them (RFC 7296 §2.17): the
    /// encryption key, the 4-byte salt of an AEAD (RFC 4106 §8.1, RFC 7634 §2), then the
    /// integrity key of a CBC cipher.
    pub fn key_material_len(self) -> usize {
        match self {
            Transform::Aead(a) => a.key_len() + SALT_LEN,
            Transform::Cbc(c, i) => c.key_len() + i.key_len(),
        }
    }

    /// Bytes of the explicit IV in each packet.
    pub fn iv_len(self) -> usize {
        match self {
            Transform::Aead(_) => 8,
            Transform::Cbc(c, _) => c.block_len(),
        }
    }

    /// Bytes before the ciphertext: SPI, sequence number and IV.
    pub fn header_len(self) -> usize {
        crate::ESP_HEADER_LEN + self.iv_len()
    }

    /// The multiple that payload, padding and trailer must fill: the cipher's block, or 4 bytes
    /// (RFC 4303 §2.4; GCM and ChaCha20 need no block alignment).
    pub fn align(self) -> usize {
        match self {
            Transform::Aead(_) => 4,
            Transform::Cbc(c, _) => c.block_len(),
        }
    }

    /// Bytes of the ICV.
    pub fn icv_len(self) -> usize {
        match self {
            Transform::Aead(_) => crate::ICV_LEN,
            Transform::Cbc(_, i) => i.icv_len(),
        }
    }

    /// The most bytes ESP adds to an inner packet with this transform: header, IV, the longest
    /// padding, trailer and ICV.
    pub fn max_overhead(self) -> usize {
        self.header_len() + self.align() - 1 + crate::TRAILER_LEN + self.icv_len()
    }
}

impl fmt::Display for Transform {
    /// strongSwan's ESP proposal names: `aes256gcm16`, `chacha20poly1305`, `aes128-sha256`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Transform::Aead(a) => f.write_str(a.name()),
            Transform::Cbc(c, i) => write!(f, "{}-{}", c.name(), i.name()),
        }
    }
}

impl From<Aead> for Transform {
    fn from(a: Aead) -> Transform {
        Transform::Aead(a)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_follow_the_rfcs() {
        let gcm = Transform::Aead(Aead::Aes256Gcm16);
        assert_eq!(
            (gcm.header_len(), gcm.align(), gcm.icv_len(), gcm.key_material_len()),
            (16, 4, 16, 36)
        );
        let cc = Transform::Aead(Aead::ChaCha20Poly1305);
        assert_eq!((cc.header_len(), cc.icv_len(), cc.key_material_len()), (16, 16, 36));
        let cbc = Transform::Cbc(CbcCipher::Aes256, Integ::HmacSha256_128);
        assert_eq!(
            (cbc.header_len(), cbc.align(), cbc.icv_len(), cbc.key_material_len()),
            (24, 16, 16, 64)
        );
        let des = Transform::Cbc(CbcCipher::TripleDes, Integ::HmacSha1_96);
        assert_eq!(
            (des.header_len(), des.align(), des.icv_len(), des.key_material_len()),
            (16, 8, 12, 44)
        );
        assert_eq!(cbc.to_string(), "aes256-sha256");
        assert_eq!(
            Transform::Cbc(CbcCipher::Aes128, Integ::HmacSha512_256).max_overhead(),
            24 + 15 + 2 + 32
        );
        assert_eq!(crate::max_overhead(), 24 + 15 + 2 + 32);
    }
}

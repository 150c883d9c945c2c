//! Encryption of IKEv1 messages (RFC 2409 Appendix B, RFC 2408 §3.1 flag E).
//!
//! Everything after the ISAKMP header is encrypted with the phase-1 cipher in CBC mode, with no
//! MAC: the HASH payload inside authenticates the exchange. The IV chains: the next message's
//! IV (in either direction, within one exchange) is the last ciphertext block of the previous
//! one. [`seal`] and [`open`] return that next IV and leave the caller's state alone, so a
//! message that turns out bad (wrong HASH, a retransmission) does not move the chain.
//!
//! The plaintext is padded with zero bytes to the block size (RFC 2409 Appendix B leaves the
//! padding's contents open; zeros are what deployed peers send), and the payload chain's own
//! lengths tell where it ends, so the padding needs no length byte.

use zeroize::Zeroizing;

use crate::codec::Header;
use crate::crypto::{cbc_decrypt, cbc_encrypt};
use crate::error::Error;
use crate::proposal::Encr;

use super::codec::{self, Payload, flags};

/// The cipher's block length, once it is a CBC cipher and `iv` fits it.
fn cbc_block(encr: Encr, iv: &[u8]) -> Result<usize, Error> {
    let b = encr.block_len();
    if b < 2 || iv.len() != b {
        return Err(Error::malformed(
            "IKEv1 encryption",
            format!("{} is not a CBC cipher", encr.name()),
        ));
    }
    Ok(b)
}

/// Encrypts a payload chain (as laid out by [`codec::emit_payloads`]) under `key` and `iv`;
/// returns the ciphertext and the IV of the next message.
pub fn seal(encr: Encr, key: &[u8], iv: &[u8], chain: &[u8]) -> Result<(Vec<u8>, Vec<u8>), Error> {
    let b = cbc_block(encr, iv)?;
    let mut buf = chain.to_vec();
    buf.resize(chain.len().div_ceil(b).max(1) * b, 0);
    cbc_encrypt(encr, key, iv, &mut buf)?;
    let next = buf[buf.len() - b..].to_vec();
    Ok((buf, next))
}

/// Decrypts a message body; returns the plaintext chain (padding still attached) and the IV of
/// the next message.
pub fn open(
    encr: Encr,
    key: &[u8],
    iv: &[u8],
    ciphertext: &[u8],
) -> Result<(Zeroizing<Vec<u8>>, Vec<u8>), Error> {
    let b = cbc_block(encr, iv)?;
    if ciphertext.is_empty() || !ciphertext.len().is_multiple_of(b) {
        return Err(Error::malformed(
            "encrypted ISAKMP message",
            format!("{} bytes are not whole {b}-byte blocks", ciphertext.len()),
        ));
    }
    let mut buf = Zeroizing::new(ciphertext.to_vec());
    cbc_decrypt(encr, key, iv, &mut buf)?;
    Ok((buf, ciphertext[ciphertext.len() - b..].to_vec()))
}

/// A whole encrypted datagram: `header` with flag E, then `payloads` sealed; returns it with
/// the IV of the next message.
pub fn encrypt_message(
    mut header: Header,
    payloads: &[Payload],
    encr: Encr,
    key: &[u8],
    iv: &[u8],
) -> Result<(Vec<u8>, Vec<u8>), Error> {
    let mut chain = Zeroizing::new(Vec::with_capacity(256));
    let first = codec::emit_payloads(payloads, &mut chain);
    let (ct, next) = seal(encr, key, iv, &chain)?;
    header.flags |= flags::ENCRYPTION;
    Ok((codec::encode(header, first, &ct), next))
}

/// The payloads of an encrypted datagram's body that starts with type `first`; with the IV of
/// the next message.
pub fn decrypt_payloads(
    first: u8,
    ciphertext: &[u8],
    encr: Encr,
    key: &[u8],
    iv: &[u8],
) -> Result<(Vec<Payload>, Vec<u8>), Error> {
    let (plain, next) = open(encr, key, iv, ciphertext)?;
    Ok((codec::parse_payloads(first, &plain)?, next))
}

#[cfg(test)]
mod tests {
    use super::super::codec::{Body, exchange, header, parse_message};
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
    }

    #[test]
    fn aes_cbc_matches_openssl_and_chains_the_iv() {
        // `openssl enc -aes-128-cbc -K 0001..0e0f -iv 0f0e..0100 -nopad` over 32 bytes of 0x5a.
        let key = hex("000102030405060708090a0b0c0d0e0f");
        let iv = hex("0f0e0d0c0b0a09080706050403020100");
        let (ct, next) = seal(Encr::Aes128Cbc, &key, &iv, &[0x5a; 32]).unwrap();
        assert_eq!(ct, hex("354cc15fe8d04457d099ef307649ed3f9ff260dbf77af5c5dbe00aee43bd7f32"));
        assert_eq!(next, ct[16..]);
        let (plain, next2) = open(Encr::Aes128Cbc, &key, &iv, &ct).unwrap();
        assert_eq!(&plain[..], &[0x5a; 32]);
        assert_eq!(next2, next);
    }

    #[test]
    fn an_encrypted_main_mode_message_round_trips_with_padding() {
        let key = [7u8; 24];
        let iv = [1u8; 8];
        let payloads = [Payload::Hash(vec![9; 20]), Payload::Nonce(vec![3; 5])];
        let h = header(1, 2, exchange::MAIN, 0, 0);
        let (dgram, next) = encrypt_message(h, &payloads, Encr::TripleDesCbc, &key, &iv).unwrap();
        let m = parse_message(&dgram).unwrap();
        assert_eq!(m.header.flags & flags::ENCRYPTION, flags::ENCRYPTION);
        let Body::Encrypted(ct) = m.body else { panic!("encrypted") };
        assert_eq!(ct.len() % 8, 0);
        let (back, next2) =
            decrypt_payloads(m.header.next_payload, &ct, Encr::TripleDesCbc, &key, &iv).unwrap();
        assert_eq!(back, payloads);
        assert_eq!(next, next2);
        // A wrong key yields garbage that does not parse, or other payloads: never the same.
        let wrong = decrypt_payloads(m.header.next_payload, &ct, Encr::TripleDesCbc, &[8; 24], &iv);
        assert!(wrong.map_or(true, |(p, _)| p != payloads));
        // Truncated ciphertext is refused by name.
        let e = open(Encr::TripleDesCbc, &key, &iv, &ct[..ct.len() - 3]).unwrap_err();
        assert!(e.to_string().contains("whole 8-byte blocks"), "{e}");
        // GCM has no IKEv1 phase 1.
        assert!(seal(Encr::Aes128Gcm16, &[0; 20], &[0; 8], b"x").is_err());
    }
}

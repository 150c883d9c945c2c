//! Informational exchanges over an ISAKMP SA (RFC 2409 §5.7): notifications and deletes, each
//! protected by HASH(1) = prf(SKEYID_a, M-ID | N/D) and encrypted with an IV derived from the
//! last phase-1 block and the message ID. Dead Peer Detection (RFC 3706) rides on them:
//! R-U-THERE and R-U-THERE-ACK carry the cookies as SPI and a sequence number.

use crate::crypto::ct_eq;

use super::codec::{self, Body, DOI_IPSEC, Delete, Notify, Payload, exchange, header};
use super::crypt;
use super::keys;
use super::main_mode::{Established, Failure, notify};
use super::proposal::{PROTO_ESP, PROTO_ISAKMP};

/// The cookies as the 16-byte SPI of ISAKMP-SA notifications and deletes.
pub fn cookies(p1: &Established) -> Vec<u8> {
    [p1.cky_i.to_be_bytes(), p1.cky_r.to_be_bytes()].concat()
}

/// An encrypted informational message with ID `message_id` (random, not 0) carrying `body`.
pub fn encode(p1: &Established, message_id: u32, body: &[Payload]) -> Result<Vec<u8>, Failure> {
    let f = p1.suite.prf;
    let mut tail = Vec::new();
    codec::emit_payloads(body, &mut tail);
    let mut all = vec![Payload::Hash(keys::qm_hash1(f, &p1.keys, message_id, &tail))];
    all.extend_from_slice(body);
    let iv = keys::phase2_iv(f, &p1.iv, message_id, p1.suite.encr.block_len());
    let h = header(p1.cky_i, p1.cky_r, exchange::INFORMATIONAL, 0, message_id);
    Ok(crypt::encrypt_message(h, &all, p1.suite.encr, &p1.keys.enc_key, &iv)?.0)
}

/// The payloads of an informational message after its HASH, once the HASH verifies.
pub fn decode(p1: &Established, datagram: &[u8]) -> Result<Vec<Payload>, Failure> {
    let f = p1.suite.prf;
    let m = codec::parse_message(datagram)?;
    if m.header.exchange != exchange::INFORMATIONAL
        || (m.header.spi_i, m.header.spi_r) != (p1.cky_i, p1.cky_r)
    {
        return Err(Failure::Malformed("not an informational message of this ISAKMP SA".into()));
    }
    let Body::Encrypted(ct) = &m.body else {
        // RFC 2409 §5.7: after phase 1 every informational message is protected.
        return Err(Failure::Malformed("an unprotected informational message".into()));
    };
    let iv = keys::phase2_iv(f, &p1.iv, m.header.message_id, p1.suite.encr.block_len());
    let (plain, _) = crypt::open(p1.suite.encr, &p1.keys.enc_key, &iv, ct)?;
    let raw = codec::chain(m.header.next_payload, &plain).map_err(|_| Failure::HashMismatch)?;
    let Some(&(codec::payload_type::HASH, hash)) = raw.first() else {
        return Err(Failure::HashMismatch);
    };
    let end = raw.iter().map(|(_, b)| 4 + b.len()).sum::<usize>();
    let tail = plain.get(4 + hash.len()..end).ok_or(Failure::HashMismatch)?;
    if !ct_eq(&keys::qm_hash1(f, &p1.keys, m.header.message_id, tail), hash) {
        return Err(Failure::HashMismatch);
    }
    let mut payloads = codec::parse_payloads(m.header.next_payload, &plain)?;
    payloads.remove(0);
    Ok(payloads)
}

/// A DPD notification (R-U-THERE or its ACK) with sequence number `seq`.
pub fn dpd(p1: &Established, ty: u16, seq: u32) -> Payload {
    Payload::Notify(Notify {
        doi: DOI_IPSEC,
        protocol: PROTO_ISAKMP,
        ty,
        spi: cookies(p1),
        data: seq.to_be_bytes().to_vec(),
    })
}

/// The sequence number of an R-U-THERE (`ack` false) or R-U-THERE-ACK among `payloads`.
pub fn dpd_seq(payloads: &[Payload], ack: bool) -> Option<u32> {
    let want = if ack { notify::R_U_THERE_ACK } else { notify::R_U_THERE };
    payloads.iter().find_map(|p| match p {
        Payload::Notify(n) if n.ty == want => {
            Some(u32::from_be_bytes(n.data.get(..4)?.try_into().ok()?))
        }
        _ => None,
    })
}

/// A Delete of ESP SAs by their SPIs (the ones the sender receives with).
pub fn delete_esp(spis: &[u32]) -> Payload {
    Payload::Delete(Delete {
        doi: DOI_IPSEC,
        protocol: PROTO_ESP,
        spi_size: 4,
        spis: spis.iter().map(|s| s.to_be_bytes().to_vec()).collect(),
    })
}

/// A Delete of the ISAKMP SA itself.
pub fn delete_isakmp(p1: &Established) -> Payload {
    Payload::Delete(Delete {
        doi: DOI_IPSEC,
        protocol: PROTO_ISAKMP,
        spi_size: 16,
        spis: vec![cookies(p1)],
    })
}

#[cfg(test)]
mod tests {
    use super::super::main_mode::{MainMode, Phase1Config, Step};
    use super::*;
    use crate::config::Psk;
    use crate::proposal::parse_ike_list;
    use rand_chacha::ChaCha20Rng;
    use rand_core::SeedableRng;
    use std::time::Duration;

    fn pair(seed: u8) -> (Box<Established>, Box<Established>) {
        let mut rng = ChaCha20Rng::from_seed([seed; 32]);
        let c = |i: bool| Phase1Config {
            proposals: parse_ike_list("aes128-sha1-modp2048").unwrap(),
            life: Duration::from_secs(3600),
            psk: Psk::new(b"k".to_vec()),
            local_id: (if i { "192.0.2.1" } else { "192.0.2.2" }).parse().unwrap(),
            remote_id: (if i { "192.0.2.2" } else { "192.0.2.1" }).parse().unwrap(),
            local: (if i { "192.0.2.1:500" } else { "192.0.2.2:500" }).parse().unwrap(),
            remote: (if i { "192.0.2.2:500" } else { "192.0.2.1:500" }).parse().unwrap(),
        };
        let (mut i, m1) = MainMode::initiate(c(true), &mut rng).unwrap();
        let (mut r, m2) = MainMode::respond(c(false), &m1, &mut rng).unwrap();
        let Step::Send(m3) = i.handle(&m2, &mut rng).unwrap() else { panic!() };
        let Step::Send(m4) = r.handle(&m3, &mut rng).unwrap() else { panic!() };
        let Step::Send(m5) = i.handle(&m4, &mut rng).unwrap() else { panic!() };
        let Step::Done { send: Some(m6), sa: rsa } = r.handle(&m5, &mut rng).unwrap() else {
            panic!()
        };
        let Step::Done { sa: isa, .. } = i.handle(&m6, &mut rng).unwrap() else { panic!() };
        (isa, rsa)
    }

    #[test]
    fn dpd_and_deletes_are_hash_protected_both_ways() {
        let (i, r) = pair(6);
        let ping = encode(&i, 0x0102_0304, &[dpd(&i, notify::R_U_THERE, 7)]).unwrap();
        let got = decode(&r, &ping).unwrap();
        assert_eq!(dpd_seq(&got, false), Some(7));
        let pong = encode(&r, 0x0a0b_0c0d, &[dpd(&r, notify::R_U_THERE_ACK, 7)]).unwrap();
        assert_eq!(dpd_seq(&decode(&i, &pong).unwrap(), true), Some(7));
        let del = encode(&i, 9, &[delete_esp(&[0xc0de_0001, 0xc0de_0002])]).unwrap();
        let Payload::Delete(d) = &decode(&r, &del).unwrap()[0] else { panic!() };
        assert_eq!((d.protocol, d.spis.len()), (PROTO_ESP, 2));
        // A flipped ciphertext bit breaks the HASH; another SA's cookies are refused.
        let mut bad = del.clone();
        let n = bad.len();
        bad[n - 20] ^= 1;
        assert!(decode(&r, &bad).is_err());
        let (other, _) = pair(7);
        assert!(decode(&other, &del).is_err());
    }
}

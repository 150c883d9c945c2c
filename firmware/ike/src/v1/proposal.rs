//! IKEv1 proposals on the wire, from and to the shared proposal model ([`IkeProposal`],
//! [`EspProposal`]) that the configuration writes in strongSwan's syntax.
//!
//! An IKEv1 transform is a whole suite (RFC 2408 §4.2): phase 1 names one cipher, one hash,
//! the authentication method and one group in its attributes (RFC 2409 Appendix A), so a
//! proposal list becomes one transform per combination. The hash serves as the PRF (its HMAC)
//! and for the IVs; there is no separate integrity algorithm in phase 1, so `sha256` in
//! `aes128-sha256-modp2048` chooses the hash, as in strongSwan. Phase 2 for ESP names the cipher
//! in the transform ID and the rest in attributes (RFC 2407 §4.4.4, §4.5).

use std::time::Duration;

use crate::proposal::{DhGroup, Encr, EspProposal, EspSuite, IkeProposal, IkeSuite, Integ, Prf};

use super::codec::{Attribute, Proposal, Transform};

/// Phase-1 attribute types (RFC 2409 Appendix A).
pub mod p1 {
    /// Encryption algorithm.
    pub const ENCR: u16 = 1;
    /// Hash algorithm.
    pub const HASH: u16 = 2;
    /// Authentication method.
    pub const AUTH: u16 = 3;
    /// Group description.
    pub const GROUP: u16 = 4;
    /// Life type.
    pub const LIFE_TYPE: u16 = 11;
    /// Life duration.
    pub const LIFE_DURATION: u16 = 12;
    /// Key length in bits.
    pub const KEY_LENGTH: u16 = 14;
    /// Authentication method: pre-shared key.
    pub const AUTH_PSK: u16 = 1;
    /// Transform ID KEY_IKE.
    pub const KEY_IKE: u8 = 1;
}

/// Phase-2 attribute types (RFC 2407 §4.5).
pub mod p2 {
    /// SA life type.
    pub const LIFE_TYPE: u16 = 1;
    /// SA life duration.
    pub const LIFE_DURATION: u16 = 2;
    /// Group description (PFS).
    pub const GROUP: u16 = 3;
    /// Encapsulation mode.
    pub const ENCAPSULATION: u16 = 4;
    /// Authentication algorithm.
    pub const AUTH: u16 = 5;
    /// Key length in bits.
    pub const KEY_LENGTH: u16 = 6;
    /// Encapsulation: tunnel.
    pub const TUNNEL: u16 = 1;
    /// Encapsulation: UDP-encapsulated tunnel (RFC 3947 §5.1).
    pub const UDP_TUNNEL: u16 = 3;
    /// The value drafts of RFC 3947 used, still sent by old peers.
    pub const UDP_TUNNEL_DRAFT: u16 = 61443;
}

/// Life type seconds (both phases).
pub const LIFE_SECONDS: u16 = 1;
/// Protocol ID PROTO_ISAKMP.
pub const PROTO_ISAKMP: u8 = 1;
/// Protocol ID PROTO_IPSEC_ESP.
pub const PROTO_ESP: u8 = 3;

/// The phase-1 encryption algorithm number (IANA "IPSEC Encryption Algorithm" for IKEv1 —
/// only CBC ciphers: RFC 2409 defines no combined mode for phase 1).
fn p1_encr(e: Encr) -> Option<u16> {
    match e {
        Encr::TripleDesCbc => Some(5),
        Encr::Aes128Cbc | Encr::Aes192Cbc | Encr::Aes256Cbc => Some(7),
        _ => None,
    }
}

/// The phase-1 hash algorithm that an integrity keyword names.
fn p1_hash(i: Integ) -> u16 {
    match i {
        Integ::HmacSha1_96 => 2,
        Integ::HmacSha256_128 => 4,
        Integ::HmacSha384_192 => 5,
        Integ::HmacSha512_256 => 6,
    }
}

/// The PRF (HMAC of the hash) of a phase-1 hash.
fn hash_prf(i: Integ) -> Prf {
    match i {
        Integ::HmacSha1_96 => Prf::HmacSha1,
        Integ::HmacSha256_128 => Prf::HmacSha256,
        Integ::HmacSha384_192 => Prf::HmacSha384,
        Integ::HmacSha512_256 => Prf::HmacSha512,
    }
}

/// The phase-2 transform ID of an ESP cipher (RFC 2407 §4.4.4, RFC 4106 §8.1).
fn esp_id(e: Encr) -> Option<u8> {
    match e {
        Encr::TripleDesCbc => Some(3),
        Encr::Aes128Cbc | Encr::Aes192Cbc | Encr::Aes256Cbc => Some(12),
        Encr::Aes128Gcm16 | Encr::Aes256Gcm16 => Some(20),
        Encr::ChaCha20Poly1305 => None,
    }
}

/// The phase-2 authentication algorithm of an integrity algorithm (RFC 2407 §4.5, RFC 4868
/// §2.4 for SHA-2).
fn esp_auth(i: Integ) -> u16 {
    match i {
        Integ::HmacSha1_96 => 2,
        Integ::HmacSha256_128 => 5,
        Integ::HmacSha384_192 => 6,
        Integ::HmacSha512_256 => 7,
    }
}

fn cipher(id: u16, bits: Option<u64>, ids: impl Fn(Encr) -> Option<u16>) -> Option<Encr> {
    Encr::ALL.into_iter().find(|e| {
        ids(*e) == Some(id) && (e.key_bits().map(u64::from) == bits || e.key_bits().is_none())
    })
}

/// The phase-1 transforms of `proposals`: one per cipher, hash and group combination, each
/// with the PSK method and `life`. AEAD ciphers have no IKEv1 phase 1 and are left out;
/// `None` when nothing is left.
pub fn phase1_transforms(proposals: &[IkeProposal], life: Duration) -> Option<Vec<Transform>> {
    let mut out: Vec<Transform> = Vec::new();
    for p in proposals {
        for &e in &p.encr {
            let Some(encr) = p1_encr(e) else { continue };
            for &i in &p.integ {
                for &g in &p.dh {
                    let mut attrs = vec![Attribute::basic(p1::ENCR, encr)];
                    if let Some(bits) = e.key_bits() {
                        attrs.push(Attribute::basic(p1::KEY_LENGTH, bits));
                    }
                    attrs.extend([
                        Attribute::basic(p1::HASH, p1_hash(i)),
                        Attribute::basic(p1::AUTH, p1::AUTH_PSK),
                        Attribute::basic(p1::GROUP, g.id()),
                        Attribute::basic(p1::LIFE_TYPE, LIFE_SECONDS),
                        Attribute::number(p1::LIFE_DURATION, life.as_secs()),
                    ]);
                    let t = Transform { num: 0, id: p1::KEY_IKE, attrs };
                    if !out.iter().any(|o| o.attrs == t.attrs) {
                        out.push(t);
                    }
                }
            }
        }
    }
    out.iter_mut().enumerate().for_each(|(k, t)| t.num = (k + 1).min(255) as u8);
    (!out.is_empty()).then_some(out)
}

/// What a phase-1 transform proposes: the suite (its PRF is the hash's HMAC) and the lifetime
/// in seconds if it gives one; `Err` names what this implementation does not do.
pub fn phase1_suite(t: &Transform) -> Result<(IkeSuite, Option<u64>), String> {
    let num = |ty| t.attr(ty).and_then(Attribute::as_u64);
    if t.id != p1::KEY_IKE {
        return Err(format!("transform ID {} (not KEY_IKE)", t.id));
    }
    if num(p1::AUTH) != Some(u64::from(p1::AUTH_PSK)) {
        return Err(format!("authentication method {:?} (only pre-shared keys)", num(p1::AUTH)));
    }
    let id = num(p1::ENCR).and_then(|v| u16::try_from(v).ok()).unwrap_or(0);
    let encr = cipher(id, num(p1::KEY_LENGTH), p1_encr).ok_or_else(|| {
        format!("encryption algorithm {id} with key length {:?}", num(p1::KEY_LENGTH))
    })?;
    let h = num(p1::HASH).unwrap_or(0);
    let integ = Integ::ALL
        .into_iter()
        .find(|i| u64::from(p1_hash(*i)) == h)
        .ok_or_else(|| format!("hash algorithm {h}"))?;
    let g = num(p1::GROUP).unwrap_or(0);
    let dh =
        u16::try_from(g).ok().and_then(DhGroup::from_id).ok_or_else(|| format!("group {g}"))?;
    let life = match num(p1::LIFE_TYPE) {
        Some(1) => num(p1::LIFE_DURATION),
        _ => None,
    };
    Ok((IkeSuite { encr, integ: Some(integ), prf: hash_prf(integ), dh }, life))
}

/// The first transform of `offered` that one of `ours` allows (the responder's choice, in the
/// initiator's order as RFC 2408 §4.2 has it), with its number and lifetime.
pub fn select_phase1(
    ours: &[IkeProposal],
    offered: &Proposal,
) -> Option<(Transform, IkeSuite, Option<u64>)> {
    offered.transforms.iter().find_map(|t| {
        let (s, life) = phase1_suite(t).ok()?;
        ours.iter().any(|p| p.allows(&s)).then(|| (t.clone(), s, life))
    })
}

/// The ESP proposal of a Quick Mode SA payload: one transform per cipher and integrity
/// combination of `p`, with the SPI, `pfs` as the group, tunnel (or UDP tunnel) mode and
/// `life`. ChaCha20-Poly1305 has no IKEv1 transform ID and is left out; `None` when nothing
/// is left.
pub fn esp_proposal(
    p: &EspProposal,
    spi: u32,
    pfs: Option<DhGroup>,
    udp: bool,
    life: Duration,
) -> Option<Proposal> {
    let mut transforms = Vec::new();
    for &e in &p.encr {
        let Some(id) = esp_id(e) else { continue };
        let integs: Vec<Option<Integ>> =
            if e.is_aead() { vec![None] } else { p.integ.iter().copied().map(Some).collect() };
        for i in integs {
            let mut attrs = vec![
                Attribute::basic(p2::LIFE_TYPE, LIFE_SECONDS),
                Attribute::number(p2::LIFE_DURATION, life.as_secs()),
                Attribute::basic(p2::ENCAPSULATION, if udp { p2::UDP_TUNNEL } else { p2::TUNNEL }),
            ];
            if let Some(g) = pfs {
                attrs.push(Attribute::basic(p2::GROUP, g.id()));
            }
            if let Some(i) = i {
                attrs.push(Attribute::basic(p2::AUTH, esp_auth(i)));
            }
            if let Some(bits) = e.key_bits() {
                attrs.push(Attribute::basic(p2::KEY_LENGTH, bits));
            }
            let num = (transforms.len() + 1).min(255) as u8;
            transforms.push(Transform { num, id, attrs });
        }
    }
    (!transforms.is_empty()).then(|| Proposal {
        num: 1,
        protocol: PROTO_ESP,
        spi: spi.to_be_bytes().to_vec(),
        transforms,
    })
}

/// What an ESP transform proposes: the suite, whether it is UDP-encapsulated, and the lifetime
/// in seconds if it gives one; `Err` names what this implementation does not do. IKEv1 has no
/// extended sequence numbers, so the suite's ESN is off.
pub fn esp_suite(t: &Transform) -> Result<(EspSuite, bool, Option<u64>), String> {
    let num = |ty| t.attr(ty).and_then(Attribute::as_u64);
    let encr = cipher(u16::from(t.id), num(p2::KEY_LENGTH), |e| esp_id(e).map(u16::from))
        .ok_or_else(|| {
            format!("ESP transform {} with key length {:?}", t.id, num(p2::KEY_LENGTH))
        })?;
    let integ = match num(p2::AUTH) {
        None if encr.is_aead() => None,
        Some(a) if !encr.is_aead() => Some(
            Integ::ALL
                .into_iter()
                .find(|i| u64::from(esp_auth(*i)) == a)
                .ok_or_else(|| format!("authentication algorithm {a}"))?,
        ),
        a => return Err(format!("authentication algorithm {a:?} with {}", encr.name())),
    };
    let dh = match num(p2::GROUP) {
        None => None,
        Some(g) => Some(
            u16::try_from(g).ok().and_then(DhGroup::from_id).ok_or_else(|| format!("group {g}"))?,
        ),
    };
    let udp = match num(p2::ENCAPSULATION).map(|v| v as u16) {
        Some(p2::TUNNEL) => false,
        Some(p2::UDP_TUNNEL | p2::UDP_TUNNEL_DRAFT) => true,
        m => return Err(format!("encapsulation mode {m:?} (only tunnel mode)")),
    };
    let life = match num(p2::LIFE_TYPE) {
        Some(1) => num(p2::LIFE_DURATION),
        _ => None,
    };
    Ok((EspSuite { encr, integ, dh, esn: false }, udp, life))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proposal::{parse_esp_list, parse_ike_list};

    #[test]
    fn a_proposal_list_becomes_one_phase1_transform_per_suite_and_back() {
        let ours = parse_ike_list(
            "aes128-sha256-modp2048,aes256-sha1-modp1024-modp2048,aes128gcm16-prfsha256-x25519",
        )
        .unwrap();
        let ts = phase1_transforms(&ours, Duration::from_secs(28_800)).unwrap();
        // 1 + 2 CBC suites; GCM has no IKEv1 phase 1.
        let shown: Vec<String> =
            ts.iter().map(|t| phase1_suite(t).unwrap().0.to_string()).collect();
        assert_eq!(
            shown,
            [
                "aes128-sha256-prfsha256-modp2048",
                "aes256-sha1-prfsha1-modp1024",
                "aes256-sha1-prfsha1-modp2048"
            ]
        );
        assert_eq!(ts.iter().map(|t| t.num).collect::<Vec<_>>(), [1, 2, 3]);
        assert_eq!(phase1_suite(&ts[0]).unwrap().1, Some(28_800));
        // A responder allowing only the second suite picks it.
        let theirs = Proposal { num: 1, protocol: PROTO_ISAKMP, spi: vec![], transforms: ts };
        let only = parse_ike_list("aes256-sha1-modp1024").unwrap();
        let (t, s, _) = select_phase1(&only, &theirs).unwrap();
        assert_eq!((t.num, s.to_string()), (2, "aes256-sha1-prfsha1-modp1024".to_string()));
        assert!(
            select_phase1(&parse_ike_list("aes128-sha512-modp4096").unwrap(), &theirs).is_none()
        );
        assert!(
            phase1_transforms(
                &parse_ike_list("aes256gcm16-prfsha256-ecp256").unwrap(),
                Duration::ZERO
            )
            .is_none()
        );
    }

    #[test]
    fn unsupported_phase1_attributes_are_named() {
        let mut t = phase1_transforms(
            &parse_ike_list("aes128-sha256-modp2048").unwrap(),
            Duration::from_secs(3600),
        )
        .unwrap()
        .remove(0);
        t.attrs.retain(|a| a.ty != p1::AUTH);
        t.attrs.push(Attribute::basic(p1::AUTH, 3)); // RSA signatures
        assert!(phase1_suite(&t).unwrap_err().contains("only pre-shared keys"));
        t.attrs.retain(|a| a.ty != p1::AUTH && a.ty != p1::HASH);
        t.attrs.extend([Attribute::basic(p1::AUTH, 1), Attribute::basic(p1::HASH, 1)]); // MD5
        assert_eq!(phase1_suite(&t).unwrap_err(), "hash algorithm 1");
    }

    #[test]
    fn esp_proposals_carry_pfs_mode_and_lifetime() {
        let p = &parse_esp_list("aes256-sha256-sha1-modp2048,aes128gcm16").unwrap();
        let prop = esp_proposal(
            &p[0],
            0xc0ffee01,
            Some(DhGroup::Modp2048),
            false,
            Duration::from_secs(3600),
        )
        .unwrap();
        assert_eq!(prop.spi, [0xc0, 0xff, 0xee, 0x01]);
        let suites: Vec<String> =
            prop.transforms.iter().map(|t| esp_suite(t).unwrap().0.to_string()).collect();
        assert_eq!(suites, ["aes256-sha256-modp2048-noesn", "aes256-sha1-modp2048-noesn"]);
        let (_, udp, life) = esp_suite(&prop.transforms[0]).unwrap();
        assert!(!udp);
        assert_eq!(life, Some(3600));
        let gcm = esp_proposal(&p[1], 1, None, true, Duration::from_secs(60)).unwrap();
        let (s, udp, _) = esp_suite(&gcm.transforms[0]).unwrap();
        assert_eq!((s.to_string(), udp), ("aes128gcm16-noesn".to_string(), true));
        assert!(
            esp_proposal(
                &parse_esp_list("chacha20poly1305").unwrap()[0],
                1,
                None,
                false,
                Duration::ZERO
            )
            .is_none()
        );
        // Transport mode is refused by name.
        let mut t = prop.transforms[0].clone();
        t.attrs.retain(|a| a.ty != p2::ENCAPSULATION);
        t.attrs.push(Attribute::basic(p2::ENCAPSULATION, 2));
        assert!(esp_suite(&t).unwrap_err().contains("only tunnel mode"));
    }
}

//! Explanations: what failed, what each side offered, and the smallest change that would match.

use super::*;

impl Endpoint {
    pub(super) fn fail(&mut self, e: Explanation) {
        self.events.push_back(Event::NegotiationFailed(e));
    }
}

pub(super) fn ike_list_string(l: &[IkeProposal]) -> String {
    crate::proposal::list_to_string(l)
}

pub(super) fn esp_list_string(l: &[EspProposal]) -> String {
    crate::proposal::list_to_string(l)
}

/// The smallest change to our IKE proposals that accepts one of the peer's.
pub(super) fn suggest_ike(ours: &[IkeProposal], theirs: &[Proposal]) -> Option<String> {
    use crate::proposal::transform_type as tt;
    let mut best: Option<(usize, String)> = None;
    for p in theirs.iter().filter(|p| p.protocol == protocol::IKE) {
        let sup = p.to_ike();
        let our_encr: Vec<_> = ours.iter().flat_map(|o| o.encr.iter()).collect();
        let our_integ: Vec<_> = ours.iter().flat_map(|o| o.integ.iter()).collect();
        let our_prf: Vec<_> = ours.iter().flat_map(|o| o.prf.iter()).collect();
        let our_dh: Vec<_> = ours.iter().flat_map(|o| o.dh.iter()).collect();
        let mut missing = Vec::new();
        let mut unsupported = Vec::new();
        let names = |ty: u8| -> Vec<String> {
            p.transforms
                .iter()
                .filter(|t| t.ty == ty)
                .map(|t| crate::proposal::transform_name(t.ty, t.id, t.key_len))
                .collect()
        };
        // Integrity matters only next to a cipher that is not AEAD (RFC 7296 §3.3).
        let needs_integ = !names(tt::INTEG).is_empty() && !sup.encr.iter().all(|e| e.is_aead());
        for (ty, what, ok, any_sup) in [
            (
                tt::ENCR,
                "encryption",
                sup.encr.iter().any(|e| our_encr.contains(&e)),
                !sup.encr.is_empty(),
            ),
            (
                tt::INTEG,
                "integrity",
                !needs_integ || sup.integ.iter().any(|e| our_integ.contains(&e)),
                !sup.integ.is_empty(),
            ),
            (tt::PRF, "PRF", sup.prf.iter().any(|e| our_prf.contains(&e)), !sup.prf.is_empty()),
            (
                tt::DH,
                "key exchange",
                sup.dh.iter().any(|e| our_dh.contains(&e)),
                !sup.dh.is_empty(),
            ),
        ] {
            if !ok {
                let n = names(ty);
                let only = if n.len() == 1 { "only " } else { "" };
                if any_sup {
                    let first = match ty {
                        tt::ENCR => sup.encr[0].name(),
                        tt::INTEG => sup.integ[0].name(),
                        tt::PRF => sup.prf[0].name(),
                        _ => sup.dh[0].name(),
                    };
                    missing.push(format!(
                        "the peer offers {only}{} for {what}; add {first} to ike proposals",
                        n.join(", ")
                    ));
                } else {
                    unsupported.push(format!("the peer offers {only}{} for {what}, which Isthmus does not support; configure the peer with a supported algorithm", n.join(", ")));
                }
            }
        }
        let cost = missing.len() + 10 * unsupported.len();
        if cost == 0 {
            continue;
        }
        // A cipher of the other kind (AEAD or not) cannot join our proposals: AEAD and
        // integrity do not mix in one proposal, so the change is a new proposal.
        let other_kind = sup.encr.first().is_some_and(|e| {
            !ours.iter().flat_map(|o| o.encr.iter()).any(|o| o.is_aead() == e.is_aead())
        });
        let whole = IkeProposal {
            encr: sup.encr.iter().copied().take(1).collect(),
            integ: if needs_integ { sup.integ.iter().copied().take(1).collect() } else { vec![] },
            prf: sup.prf.iter().copied().take(1).collect(),
            dh: sup.dh.iter().copied().take(1).collect(),
        };
        let text = if unsupported.is_empty()
            && (missing.len() > 1 || other_kind)
            && whole.chosen().is_some()
        {
            format!("the peer offers {}; add the proposal {whole} to ike proposals", p.describe())
        } else {
            missing.into_iter().chain(unsupported).collect::<Vec<_>>().join("; ")
        };
        if best.as_ref().is_none_or(|(c, _)| cost < *c) {
            best = Some((cost, text));
        }
    }
    best.map(|(_, t)| t)
}

/// The same for ESP proposals.
pub(super) fn suggest_esp(ours: &[EspProposal], theirs: &[&Proposal], pfs: bool) -> String {
    use crate::proposal::transform_type as tt;
    let mut best: Option<(usize, String)> = None;
    for p in theirs {
        let sup = p.to_esp();
        let mut parts = Vec::new();
        let names = |ty: u8| -> Vec<String> {
            p.transforms
                .iter()
                .filter(|t| t.ty == ty)
                .map(|t| crate::proposal::transform_name(t.ty, t.id, t.key_len))
                .collect()
        };
        let needs_integ = !sup.encr.iter().all(|e| e.is_aead());
        let encr_ok = sup.encr.iter().any(|e| ours.iter().any(|o| o.encr.contains(e)));
        let integ_ok =
            !needs_integ || sup.integ.iter().any(|i| ours.iter().any(|o| o.integ.contains(i)));
        if !encr_ok || !integ_ok {
            let mut n = names(tt::ENCR);
            n.extend(names(tt::INTEG));
            let first = sup.encr.first().map(|&e| {
                let i = sup.integ.first().filter(|_| !e.is_aead());
                i.map_or(e.name().to_owned(), |i| format!("{}-{}", e.name(), i.name()))
            });
            parts.push(match first {
                Some(_) if needs_integ && sup.integ.is_empty() => format!("the peer offers {} for ESP, with an integrity algorithm Isthmus does not support; configure the peer with sha256", n.join(", ")),
                Some(f) => format!("the peer offers {} for ESP encryption; add {f} to esp proposals", n.join(", ")),
                None => format!("the peer offers {}, which Isthmus does not support for ESP; configure the peer with aes256gcm16 or aes256-sha256", n.join(", ")),
            });
        }
        if !sup.esn.iter().any(|e| ours.iter().any(|o| o.esn.contains(e))) {
            let e = if sup.esn.contains(&true) { "esn" } else { "noesn" };
            parts.push(format!("the peer requires {e}; add {e} to esp proposals"));
        }
        if pfs {
            let ours_dh: Vec<DhGroup> = ours.iter().flat_map(|o| o.dh.iter().copied()).collect();
            if !sup.dh.is_empty() && !sup.dh.iter().any(|g| ours_dh.contains(g)) {
                parts.push(format!(
                    "the peer uses PFS group {}; add it to esp proposals",
                    sup.dh[0].name()
                ));
            }
            if sup.dh.is_empty() && !ours_dh.is_empty() {
                parts.push("the peer offers no PFS group; remove the group from esp proposals or enable PFS on the peer".into());
            }
        }
        if parts.is_empty() {
            continue;
        }
        if best.as_ref().is_none_or(|(c, _)| parts.len() < *c) {
            best = Some((parts.len(), parts.join("; ")));
        }
    }
    best.map(|(_, t)| t).unwrap_or_else(|| "compare the esp proposals of both sides".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggestions_name_the_smallest_change() {
        let ours = crate::proposal::parse_ike_list("aes256gcm16-prfsha256-x25519").unwrap();
        let theirs = [Proposal::from_ike(
            1,
            &[],
            &IkeProposal::parse("aes256gcm16-prfsha256-ecp384").unwrap(),
        )];
        assert_eq!(
            suggest_ike(&ours, &theirs).unwrap(),
            "the peer offers only ecp384 for key exchange; add ecp384 to ike proposals"
        );
        // A cloud default: AES-CBC with HMAC and a MODP group needs a proposal of its own.
        let cloud =
            Proposal::from_ike(1, &[], &IkeProposal::parse("aes128-sha256-modp2048").unwrap());
        assert_eq!(
            suggest_ike(&ours, &[cloud]).unwrap(),
            "the peer offers aes128-sha256-prfsha256-modp2048; add the proposal \
             aes128-sha256-prfsha256-modp2048 to ike proposals"
        );
        let foreign = Proposal {
            num: 1,
            protocol: protocol::IKE,
            spi: vec![],
            transforms: vec![
                // AES-CTR (13) is not supported.
                codec::Transform { ty: 1, id: 13, key_len: Some(128), unknown_attr: false },
                codec::Transform { ty: 3, id: 12, key_len: None, unknown_attr: false },
                codec::Transform { ty: 2, id: 5, key_len: None, unknown_attr: false },
                codec::Transform { ty: 4, id: 14, key_len: None, unknown_attr: false },
            ],
        };
        let s = suggest_ike(&ours, &[foreign]).unwrap();
        assert!(
            s.contains(
                "the peer offers only aes128ctr for encryption, which Isthmus does not support"
            ),
            "{s}"
        );
        assert!(s.contains("modp2048"), "{s}");
        let esp = crate::proposal::parse_esp_list("aes256gcm16").unwrap();
        let peer = Proposal::from_esp(1, 9, &EspProposal::parse("aes256gcm16-esn").unwrap(), false);
        assert_eq!(
            suggest_esp(&esp, &[&peer], false),
            "the peer requires esn; add esn to esp proposals"
        );
    }
}

//! IKEv1 (RFC 2409) between two in-memory endpoints on a virtual clock: Main and Quick Mode in
//! both roles, several selector pairs, rekeys of both phases, loss, dead peers, NAT traversal,
//! and the explanations of each mismatch.

mod util;

use std::time::Duration;

use isthmus_ike::codec::NotifyType;
use isthmus_ike::{Cause, DownReason, Event, IkeVersion, Lifetime, TunnelConfig};
use util::*;

fn v1(t: TunnelConfig) -> TunnelConfig {
    let mut t = with_esp(with_ike(t, "aes128-sha256-modp2048"), "aes128-sha256-modp2048");
    t.version = IkeVersion::V1;
    t
}

fn pair() -> Pair {
    let (a, b) = configs();
    Pair::new(v1(a), v1(b))
}

fn ike_ups(ev: &[Event]) -> Vec<bool> {
    ev.iter()
        .filter_map(|e| match e {
            Event::IkeSaUp { rekeyed, .. } => Some(*rekeyed),
            _ => None,
        })
        .collect()
}

/// No SA pair ever went away without a successor: what a ping stream would see as loss.
fn assert_never_uncovered(ev: &[Event]) {
    let mut up = 0i32;
    let mut was_up = false;
    for e in ev {
        match e {
            Event::ChildSaUp { .. } => up += 1,
            Event::ChildSaDown { reason, .. } => {
                up -= 1;
                assert!(
                    up > 0 || !was_up,
                    "the last SA pair went down ({reason}) without a successor: {ev:?}"
                );
            }
            _ => {}
        }
        was_up |= up > 0;
    }
}

#[test]
fn main_mode_and_quick_mode_bring_up_one_sa_pair_with_matching_keys() {
    let mut p = pair();
    p.handshake();
    p.run_until(Duration::from_secs(5), |p| !child_ups(&p.b_events).is_empty());
    assert_eq!(child_ups(&p.a_events).len(), 1);
    assert_eq!(child_ups(&p.b_events).len(), 1);
    assert_paired(&p);
    match child_ups(&p.a_events)[0] {
        Event::ChildSaUp { esp, local_ts, remote_ts, encap, child, rekey_of, .. } => {
            assert_eq!(esp.to_string(), "aes128-sha256-modp2048-noesn");
            assert_eq!(local_ts, &ts("10.1.0.0/16"));
            assert_eq!(remote_ts, &ts("10.2.0.0/16"));
            assert!(!encap);
            assert_eq!(child, "net");
            assert_eq!(*rekey_of, None);
        }
        _ => unreachable!(),
    }
    // Six Main Mode messages and three Quick Mode ones, all on port 500.
    assert_eq!(p.wire.len(), 9);
    assert!(p.wire.iter().all(|s| s.t.local.port() == 500 && s.t.data[17] == 0x10));
    let st = p.a.status("t1").unwrap();
    let ike = st.ike.unwrap();
    assert!(ike.established && ike.initiator);
    assert_eq!(ike.suite.unwrap().to_string(), "aes128-sha256-prfsha256-modp2048");
    assert_eq!(st.children.len(), 1);
    assert!(!p.b.status("t1").unwrap().ike.unwrap().initiator);
    assert_status_lifetimes(&p, Lifetime::IKE_DEFAULT, Lifetime::CHILD_DEFAULT);
}

#[test]
fn two_selector_pairs_become_two_sa_pairs() {
    let (a, b) = configs();
    let (mut a, mut b) = (v1(a), v1(b));
    a.children[0].local_ts = ts("10.1.0.0/16,10.3.0.0/16");
    b.children[0].remote_ts = ts("10.1.0.0/16,10.3.0.0/16");
    let mut p = Pair::new(a, b);
    p.handshake();
    p.run_until(Duration::from_secs(5), |p| child_ups(&p.b_events).len() == 2);
    assert_eq!(installed(&p.a_events).len(), 2);
    assert_paired(&p);
    let sel: Vec<_> = p.b.status("t1").unwrap().children.iter().map(|c| c.remote_ts[0]).collect();
    assert!(sel.contains(&ts("10.3.0.0/16")[0]) && sel.contains(&ts("10.1.0.0/16")[0]));
}

#[test]
fn quick_mode_sa_pairs_rekey_before_expiry_without_a_gap() {
    let (a, b) = configs();
    let (mut a, mut b) = (v1(a), v1(b));
    let life = Lifetime {
        rekey_time: Duration::from_secs(60),
        life_time: Duration::from_secs(90),
        rand_time: Duration::from_secs(10),
    };
    a.children[0].lifetime = life;
    b.children[0].lifetime = life;
    let mut p = Pair::new(a, b);
    p.handshake();
    p.run_for(Duration::from_secs(400));
    let rekeys = |ev: &[Event]| {
        ev.iter().filter(|e| matches!(e, Event::ChildSaUp { rekey_of: Some(_), .. })).count()
    };
    assert!(rekeys(&p.a_events) + rekeys(&p.b_events) >= 8, "{:?}", p.a_events);
    assert_never_uncovered(&p.a_events);
    assert_never_uncovered(&p.b_events);
    assert!(!child_downs(&p.a_events).iter().any(|(_, r)| *r == DownReason::Expired));
    // Replaced pairs are deleted: a handful stay at most.
    assert!(installed(&p.a_events).len() <= 3, "{:x?}", installed(&p.a_events));
    p.run_for(Duration::from_secs(30));
    // Every SA pair left has its other half, with the same keys.
    let a_in = installed(&p.a_events);
    let b_in = installed(&p.b_events);
    assert!(!a_in.is_empty() && a_in.len() == b_in.len());
    assert_paired(&p);
}

#[test]
fn phase_1_rekeys_beside_the_old_one_and_the_sa_pairs_stay() {
    let (a, b) = configs();
    let (mut a, b) = (v1(a), v1(b));
    a.ike_lifetime = Lifetime {
        rekey_time: Duration::from_secs(100),
        life_time: Duration::from_secs(150),
        rand_time: Duration::ZERO,
    };
    let mut p = Pair::new(a, b);
    p.handshake();
    p.run_for(Duration::from_secs(5));
    let spi = installed(&p.a_events);
    p.run_for(Duration::from_secs(320));
    assert!(ike_ups(&p.a_events).iter().filter(|r| **r).count() >= 3, "{:?}", p.a_events);
    assert!(ike_ups(&p.b_events).iter().filter(|r| **r).count() >= 3);
    assert_eq!(installed(&p.a_events), spi, "the SA pair outlives the phase-1 rekeys");
    assert!(!p.a_events.iter().any(|e| matches!(e, Event::IkeSaDown { .. })));
    // Quick Mode still works over the newest ISAKMP SA.
    p.a.rekey_child("t1", spi[0], p.now).unwrap();
    p.run_for(Duration::from_secs(10));
    assert!(
        matches!(child_ups(&p.a_events).last(), Some(Event::ChildSaUp { rekey_of: Some(s), .. }) if *s == spi[0])
    );
    assert_paired(&p);
}

#[test]
fn lost_messages_are_sent_again() {
    let mut p = pair();
    p.drop_from_a = 1;
    p.drop_from_b = 2;
    p.a.initiate("t1", p.now).unwrap();
    p.run_until(Duration::from_secs(60), |p| {
        !child_ups(&p.a_events).is_empty() && !child_ups(&p.b_events).is_empty()
    });
    assert_paired(&p);
    assert!(failures(&p.a_events).is_empty() && failures(&p.b_events).is_empty());
}

#[test]
fn duplicated_datagrams_change_nothing() {
    let mut p = pair();
    p.duplicate = true;
    p.handshake();
    p.run_for(Duration::from_secs(5));
    assert_eq!(installed(&p.a_events).len(), 1);
    assert_paired(&p);
    assert!(failures(&p.a_events).is_empty(), "{:?}", failures(&p.a_events));
    assert!(failures(&p.b_events).is_empty(), "{:?}", failures(&p.b_events));
}

#[test]
fn rfc3706_dead_peer_detection_restarts_and_the_tunnel_comes_back() {
    let (a, b) = configs();
    let (mut a, b) = (v1(a), v1(b));
    a.dpd.delay = Duration::from_secs(10);
    a.dpd.timeout = Duration::from_secs(30);
    let mut p = Pair::new(a, b);
    p.handshake();
    p.run_for(Duration::from_secs(60));
    // An answering peer is never declared dead.
    assert!(!p.a_events.iter().any(|e| matches!(e, Event::IkeSaDown { .. })));
    assert!(p.wire.iter().any(|s| s.from_a && s.t.data[18] == 5), "R-U-THERE sent");
    p.b_dead = true;
    let t0 = p.now;
    p.run_until(Duration::from_secs(600), |p| {
        p.a_events
            .iter()
            .any(|e| matches!(e, Event::IkeSaDown { reason: DownReason::DeadPeer, .. }))
    });
    assert!(p.now - t0 >= Duration::from_secs(30));
    assert!(failures(&p.a_events).iter().any(|x| matches!(x.cause, Cause::Timeout { .. })));
    let ups = child_ups(&p.a_events).len();
    p.b_dead = false;
    p.run_until(Duration::from_secs(900), |p| child_ups(&p.a_events).len() > ups);
    assert_eq!(installed(&p.a_events).len(), 1);
}

#[test]
fn a_proposal_mismatch_is_explained_on_both_sides() {
    let (a, b) = configs();
    let (a, b) = (v1(a), with_ike(v1(b), "aes256-sha1-modp1024"));
    let mut p = Pair::new(a, b);
    p.a.initiate("t1", p.now).unwrap();
    p.drive();
    let fb = failures(&p.b_events);
    assert_eq!(fb[0].cause, Cause::WeRefused(NotifyType::NO_PROPOSAL_CHOSEN));
    assert_eq!(fb[0].exchange.to_string(), "Main Mode");
    assert!(
        fb[0].theirs.as_deref().unwrap().contains("aes128-sha256-prfsha256-modp2048"),
        "{}",
        fb[0]
    );
    let fa = failures(&p.a_events);
    assert_eq!(fa[0].cause, Cause::PeerRefused(NotifyType::NO_PROPOSAL_CHOSEN), "{}", fa[0]);
    assert!(fa[0].suggestion.as_deref().unwrap().contains("ike_proposals"));
}

#[test]
fn a_proxy_id_mismatch_is_explained_on_both_sides() {
    let (a, b) = configs();
    let (a, mut b) = (v1(a), v1(b));
    b.children[0].remote_ts = ts("10.9.0.0/16");
    let mut p = Pair::new(a, b);
    p.handshake();
    p.run_for(Duration::from_secs(5));
    assert!(installed(&p.a_events).is_empty());
    let fb = failures(&p.b_events);
    assert_eq!(fb[0].cause, Cause::WeRefused(NotifyType(18)));
    assert!(fb[0].to_string().contains("10.9.0.0/16"), "{}", fb[0]);
    assert!(fb[0].suggestion.as_deref().unwrap().contains("proxy IDs"));
    let fa = failures(&p.a_events);
    assert_eq!(fa[0].cause, Cause::PeerRefused(NotifyType(18)), "{}", fa[0]);
    assert_eq!(fa[0].exchange.to_string(), "Quick Mode");
    assert!(fa[0].to_string().contains("INVALID-ID-INFORMATION"), "{}", fa[0]);
    assert!(fa[0].suggestion.as_deref().unwrap().contains("spd"));
}

#[test]
fn a_wrong_psk_is_explained_on_both_sides() {
    let (a, b) = configs();
    let (a, mut b) = (v1(a), v1(b));
    b.psk = isthmus_ike::Psk::new(b"not the same".to_vec());
    let mut p = Pair::new(a, b);
    p.a.initiate("t1", p.now).unwrap();
    p.run_for(Duration::from_secs(5));
    let fb = failures(&p.b_events);
    assert_eq!(fb[0].cause, Cause::WeRefused(NotifyType(23)), "{}", fb[0]);
    assert!(fb[0].suggestion.as_deref().unwrap().contains("pre-shared keys differ"));
    let fa = failures(&p.a_events);
    assert!(fa[0].to_string().contains("pre-shared key"), "{}", fa[0]);
    assert!(!up(&p.a_events) && !up(&p.b_events));
}

#[test]
fn versions_are_kept_apart_unless_the_responder_accepts_any() {
    let (a, b) = configs();
    let mut p = Pair::new(
        v1(a.clone()),
        with_esp(with_ike(b.clone(), "aes128-sha256-modp2048"), "aes128-sha256"),
    );
    p.a.initiate("t1", p.now).unwrap();
    p.drive();
    let fb = failures(&p.b_events);
    assert!(fb[0].to_string().contains("no IKEv1 tunnel"), "{}", fb[0]);
    let mut b = v1(b);
    b.version = IkeVersion::Any;
    let mut p = Pair::new(v1(a), b);
    p.handshake();
    p.run_for(Duration::from_secs(5));
    assert_paired(&p);
    assert_eq!(installed(&p.b_events).len(), 1);
}

#[test]
fn rfc3947_nat_moves_to_port_4500_and_sends_keepalives() {
    let (a, b) = configs();
    let (a, mut b) = (v1(a), v1(b));
    // B knows A only by the NAT's public address.
    b.remote = std::net::SocketAddr::new(NAT.parse().unwrap(), 500);
    b.remote_id = A.parse().unwrap();
    let mut p = Pair::new(a, b);
    p.nat = true;
    p.handshake();
    p.run_for(Duration::from_secs(5));
    assert_paired(&p);
    match child_ups(&p.a_events)[0] {
        Event::ChildSaUp { encap, local, .. } => {
            assert!(*encap);
            assert_eq!(local.port(), 4500);
        }
        _ => unreachable!(),
    }
    assert!(
        matches!(child_ups(&p.b_events)[0], Event::ChildSaUp { encap: true, peer, .. } if peer.port() == 14500)
    );
    p.run_for(Duration::from_secs(60));
    assert!(p.wire.iter().any(|s| s.from_a && s.t.data == [0xff]), "NAT-T keepalive from A");
    assert!(p.wire.iter().filter(|s| s.t.data.len() > 1).skip(4).all(|s| s.t.nat_t));
}

#[test]
fn terminate_deletes_everything_on_both_sides() {
    let mut p = pair();
    p.handshake();
    p.run_for(Duration::from_secs(5));
    p.a.terminate("t1", p.now).unwrap();
    p.drive();
    assert!(installed(&p.a_events).is_empty());
    assert!(installed(&p.b_events).is_empty());
    assert!(
        p.b_events
            .iter()
            .any(|e| matches!(e, Event::IkeSaDown { reason: DownReason::DeletedByPeer, .. }))
    );
    assert!(p.a.status("t1").unwrap().ike.is_none());
}

#[test]
fn rfc2408_commit_bit_is_refused_politely() {
    // A sets the commit bit on its Quick Mode messages (RFC 2408 §3.1), as some routers do.
    let mut p = pair();
    p.tamper_from_a = Some(|d: &mut Vec<u8>| {
        if d.len() > 19 && d[18] == 32 {
            d[19] |= 0x02;
        }
    });
    p.handshake();
    p.run_for(Duration::from_secs(5));
    // B answers without the bit, so nobody waits for a CONNECTED notification, and the SA pair
    // comes up on both sides.
    let answers: Vec<_> = p.wire.iter().filter(|s| !s.from_a && s.t.data[18] == 32).collect();
    assert!(!answers.is_empty() && answers.iter().all(|s| s.t.data[19] & 0x02 == 0));
    assert_paired(&p);
    assert_eq!(installed(&p.b_events).len(), 1);
    assert!(failures(&p.a_events).is_empty() && failures(&p.b_events).is_empty());
}

#[test]
fn aggressive_mode_only_where_the_tunnel_allows_it() {
    let (a, b) = configs();
    let (mut a, mut b) = (v1(a), v1(b));
    a.aggressive = true;
    let mut p = Pair::new(a.clone(), b.clone());
    p.a.initiate("t1", p.now).unwrap();
    p.drive();
    let f = failures(&p.b_events);
    assert_eq!(f[0].exchange.to_string(), "Aggressive Mode");
    assert!(f[0].suggestion.as_deref().unwrap().contains("aggressive_mode = true"), "{}", f[0]);
    assert!(!up(&p.b_events));
    b.aggressive = true;
    let mut p = Pair::new(a, b);
    p.handshake();
    p.run_for(Duration::from_secs(5));
    assert_paired(&p);
    // Three phase-1 messages, then Quick Mode.
    assert_eq!(p.wire.iter().filter(|s| s.t.data[18] == 4).count(), 3);
}

#[test]
fn rfc3706_dead_peer_detection_clears() {
    let (a, b) = configs();
    let (mut a, b) = (v1(a), v1(b));
    a.dpd.delay = Duration::from_secs(10);
    a.dpd.timeout = Duration::from_secs(30);
    a.dpd.action = isthmus_ike::DpdAction::Clear;
    // B's own liveness check would restart the tunnel from its side.
    let mut b = b;
    b.dpd.delay = Duration::ZERO;
    let mut p = Pair::new(a, b);
    p.handshake();
    p.b_dead = true;
    p.run_until(Duration::from_secs(600), |p| {
        p.a_events
            .iter()
            .any(|e| matches!(e, Event::IkeSaDown { reason: DownReason::DeadPeer, .. }))
    });
    let sent = p.wire.len();
    p.b_dead = false;
    p.run_for(Duration::from_secs(300));
    // Nothing more from A: the tunnel stays down until someone asks for it.
    let from_a: Vec<_> = p.wire[sent..]
        .iter()
        .filter(|s| s.from_a)
        .map(|s| (s.t.data.len(), s.t.data.get(18).copied()))
        .collect();
    assert!(from_a.is_empty(), "A restarted: {from_a:?}");
    assert!(p.a.status("t1").unwrap().ike.is_none());
    assert!(installed(&p.a_events).is_empty());
}

#[test]
fn ecp_groups_and_aes_gcm_in_quick_mode() {
    let (a, b) = configs();
    let f = |t: TunnelConfig| {
        let mut t = with_esp(with_ike(t, "aes256-sha384-ecp384"), "aes256gcm16-ecp256");
        t.version = IkeVersion::V1;
        t
    };
    let mut p = Pair::new(f(a), f(b));
    p.handshake();
    p.run_for(Duration::from_secs(5));
    assert_paired(&p);
    let ike = p.a.status("t1").unwrap().ike.unwrap();
    assert_eq!(ike.suite.unwrap().to_string(), "aes256-sha384-prfsha384-ecp384");
    assert!(
        matches!(child_ups(&p.a_events)[0], Event::ChildSaUp { esp, .. } if esp.to_string() == "aes256gcm16-ecp256-noesn")
    );
}

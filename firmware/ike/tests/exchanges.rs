//! IKEv2 exchanges between two in-memory endpoints: handshake, rekeys, collisions, loss,
//! dead peers, cookies, NAT, mismatches and their explanations.

mod util;

use isthmus_ike::Event;
use std::time::Duration;

use isthmus_ike::codec::{ExchangeType, NotifyType};
use isthmus_ike::{Cause, DownReason, Lifetime};
use util::*;

#[test]
fn handshake_brings_up_ike_and_child_with_matching_keys() {
    let (a, b) = configs();
    let mut p = Pair::new(a, b);
    p.handshake();
    assert_eq!(child_ups(&p.a_events).len(), 1);
    assert_eq!(child_ups(&p.b_events).len(), 1);
    assert_paired(&p);
    match child_ups(&p.a_events)[0] {
        Event::ChildSaUp { local_ts, remote_ts, esp, encap, child, .. } => {
            assert_eq!(local_ts, &ts("10.1.0.0/16"));
            assert_eq!(remote_ts, &ts("10.2.0.0/16"));
            assert_eq!(esp.to_string(), "aes256gcm16-noesn");
            assert!(!encap);
            assert_eq!(child, "net");
        }
        _ => unreachable!(),
    }
    // Four messages: IKE_SA_INIT and IKE_AUTH, request and response.
    assert_eq!(p.wire.len(), 4);
    assert!(p.wire.iter().all(|s| !s.t.nat_t && s.t.local.port() == 500));
    let st = p.a.status("t1").unwrap();
    assert!(st.ike.unwrap().established);
    assert_eq!(st.children.len(), 1);
    assert_status_lifetimes(&p, Lifetime::IKE_DEFAULT, Lifetime::CHILD_DEFAULT);
}

fn first_child_spi(p: &Pair) -> u32 {
    keys(child_ups(&p.a_events)[0]).0
}

#[test]
fn child_rekey_replaces_the_sa_make_before_break() {
    let (a, b) = configs();
    let mut p = Pair::new(a, b);
    p.handshake();
    let old = first_child_spi(&p);
    p.a.rekey_child("t1", old, p.now).unwrap();
    p.drive();
    let ups = child_ups(&p.a_events);
    assert_eq!(ups.len(), 2);
    assert!(matches!(ups[1], Event::ChildSaUp { rekey_of: Some(s), .. } if *s == old));
    assert!(matches!(child_ups(&p.b_events)[1], Event::ChildSaUp { rekey_of: Some(_), .. }));
    // The new SA comes up before the old one goes down, on both sides.
    let pos_up = p.a_events.iter().rposition(|e| matches!(e, Event::ChildSaUp { .. })).unwrap();
    let pos_down = p.a_events.iter().position(|e| matches!(e, Event::ChildSaDown { .. })).unwrap();
    assert!(pos_up < pos_down);
    assert_eq!(child_downs(&p.a_events), [(old, DownReason::Rekeyed)]);
    assert_eq!(child_downs(&p.b_events).len(), 1);
    assert_eq!(child_downs(&p.b_events)[0].1, DownReason::Rekeyed);
    assert_paired(&p);
    assert_eq!(installed(&p.a_events).len(), 1);
}

#[test]
fn child_rekey_with_pfs_uses_a_fresh_key_exchange() {
    let (a, b) = configs();
    let mut p =
        Pair::new(with_esp(a, "aes256gcm16-x25519"), with_esp(b, "aes256gcm16-ecp256-x25519"));
    p.handshake();
    // IKE_AUTH never carries a KE: the first CHILD SA has no PFS group.
    assert!(matches!(child_ups(&p.a_events)[0], Event::ChildSaUp { esp, .. } if esp.dh.is_none()));
    let old = first_child_spi(&p);
    p.a.rekey_child("t1", old, p.now).unwrap();
    p.drive();
    let ups = child_ups(&p.a_events);
    assert!(
        matches!(ups[1], Event::ChildSaUp { esp, .. } if esp.to_string() == "aes256gcm16-x25519-noesn"),
        "{ups:?}"
    );
    assert_paired(&p);
}

#[test]
fn ike_rekey_moves_children_to_the_new_sa() {
    let (a, b) = configs();
    let mut p = Pair::new(a, b);
    p.handshake();
    let before = p.a.status("t1").unwrap().ike.unwrap();
    p.a.rekey_ike("t1", p.now).unwrap();
    p.drive();
    assert!(p.a_events.iter().any(|e| matches!(e, Event::IkeSaUp { rekeyed: true, .. })));
    assert!(p.b_events.iter().any(|e| matches!(e, Event::IkeSaUp { rekeyed: true, .. })));
    assert!(
        !p.a_events
            .iter()
            .chain(&p.b_events)
            .any(|e| matches!(e, Event::IkeSaDown { .. } | Event::ChildSaDown { .. }))
    );
    let after = p.a.status("t1").unwrap();
    let ike = after.ike.unwrap();
    assert_ne!((ike.spi_i, ike.spi_r), (before.spi_i, before.spi_r));
    assert_eq!(after.children.len(), 1);
    // The old SA lingers briefly to answer retransmissions, then is gone.
    p.run_for(Duration::from_secs(60));
    assert_eq!(p.a.ike_sa_count(), 1);
    assert_eq!(p.b.ike_sa_count(), 1);
    // The new SA works: rekey the CHILD SA over it.
    let old = first_child_spi(&p);
    p.b.rekey_child("t1", keys(child_ups(&p.b_events)[0]).0, p.now).unwrap();
    p.drive();
    assert_eq!(installed(&p.a_events).len(), 1);
    assert!(!installed(&p.a_events).contains(&old));
    assert_paired(&p);
}

#[test]
fn ike_rekey_retries_with_the_group_the_peer_asks_for() {
    let (a, b) = configs();
    let mut p = Pair::new(
        with_ike(a, "aes256gcm16-prfsha256-x25519-ecp256"),
        with_ike(b, "aes256gcm16-prfsha256-ecp256-x25519"),
    );
    // B initiates: A, the responder, prefers x25519 for the IKE SA.
    p.b.initiate("t1", p.now).unwrap();
    p.drive();
    let suite = |p: &Pair| p.a.status("t1").unwrap().ike.unwrap().suite.unwrap().to_string();
    assert_eq!(suite(&p), "aes256gcm16-prfsha256-x25519");
    // A rekeys with x25519; B prefers ecp256 and answers INVALID_KE_PAYLOAD (§1.3.2); A
    // retries with ecp256.
    p.a.rekey_ike("t1", p.now).unwrap();
    p.drive();
    assert!(p.a_events.iter().any(|e| matches!(e, Event::IkeSaUp { rekeyed: true, .. })));
    assert_eq!(suite(&p), "aes256gcm16-prfsha256-ecp256");
    assert!(failures(&p.a_events).is_empty() && failures(&p.b_events).is_empty());
    assert_paired(&p);
}

#[test]
fn simultaneous_child_rekey_leaves_one_sa_pair() {
    let (a, b) = configs();
    let mut p = Pair::new(a, b);
    p.handshake();
    let a_old = first_child_spi(&p);
    let b_old = keys(child_ups(&p.b_events)[0]).0;
    p.a.rekey_child("t1", a_old, p.now).unwrap();
    p.b.rekey_child("t1", b_old, p.now).unwrap();
    p.drive();
    p.run_for(Duration::from_secs(5));
    assert_eq!(installed(&p.a_events).len(), 1, "A: {:#?}", p.a_events);
    assert_eq!(installed(&p.b_events).len(), 1, "B: {:#?}", p.b_events);
    assert_paired(&p);
    assert!(
        child_downs(&p.a_events).iter().any(|(_, r)| *r == DownReason::RekeyCollision)
            || child_downs(&p.b_events).iter().any(|(_, r)| *r == DownReason::RekeyCollision)
    );
    assert_eq!(p.a.status("t1").unwrap().children.len(), 1);
    assert_eq!(p.b.status("t1").unwrap().children.len(), 1);
}

#[test]
fn simultaneous_ike_rekey_leaves_one_ike_sa() {
    let (a, b) = configs();
    let mut p = Pair::new(a, b);
    p.handshake();
    p.a.rekey_ike("t1", p.now).unwrap();
    p.b.rekey_ike("t1", p.now).unwrap();
    p.drive();
    p.run_for(Duration::from_secs(60));
    assert_eq!(p.a.ike_sa_count(), 1);
    assert_eq!(p.b.ike_sa_count(), 1);
    let ia = p.a.status("t1").unwrap().ike.unwrap();
    let ib = p.b.status("t1").unwrap().ike.unwrap();
    assert_eq!((ia.spi_i, ia.spi_r), (ib.spi_i, ib.spi_r));
    assert!(!p.a_events.iter().chain(&p.b_events).any(|e| matches!(e, Event::IkeSaDown { .. })));
    assert_eq!(p.a.status("t1").unwrap().children.len(), 1);
    // And the surviving SA carries exchanges.
    let spi = first_child_spi(&p);
    p.a.rekey_child("t1", spi, p.now).unwrap();
    p.drive();
    assert_paired(&p);
}

#[test]
fn lost_packets_are_retransmitted_with_backoff() {
    let (a, b) = configs();
    let mut p = Pair::new(a, b);
    p.drop_from_a = 1; // the first IKE_SA_INIT request
    p.a.initiate("t1", p.now).unwrap();
    p.drive();
    p.drop_from_b = 1; // the first IKE_SA_INIT response... after the retransmission
    p.run_until(Duration::from_secs(60), |p| up(&p.a_events) && up(&p.b_events));
    // 4 s, then 7.2 s: the initiator's schedule (RFC 7296 §2.1).
    assert!(p.elapsed() >= Duration::from_secs(11), "{:?}", p.elapsed());
    let inits =
        p.wire.iter().filter(|s| s.from_a && s.exchange == Some(ExchangeType::IKE_SA_INIT)).count();
    assert_eq!(inits, 3);
    // The responder answered the retransmitted request from its cache: one SA only.
    assert_eq!(p.b.ike_sa_count(), 1);
    assert_paired(&p);
}

#[test]
fn duplicated_requests_are_answered_from_the_cache() {
    let (a, b) = configs();
    let mut p = Pair::new(a, b);
    p.duplicate = true;
    p.handshake();
    p.run_for(Duration::from_secs(60));
    assert_eq!(child_ups(&p.a_events).len(), 1);
    assert_eq!(child_ups(&p.b_events).len(), 1);
    assert_eq!(p.b.ike_sa_count(), 1);
    assert_paired(&p);
}

fn kill_b_and_wait(p: &mut Pair) {
    p.b_dead = true;
    p.run_until(Duration::from_secs(600), |p| {
        p.a_events
            .iter()
            .any(|e| matches!(e, Event::IkeSaDown { reason: DownReason::DeadPeer, .. }))
    });
}

#[test]
fn dead_peer_detection_restarts() {
    let (mut a, b) = configs();
    a.dpd.delay = Duration::from_secs(10);
    a.dpd.timeout = Duration::from_secs(30);
    let mut p = Pair::new(a, b);
    p.handshake();
    let t0 = p.now;
    kill_b_and_wait(&mut p);
    // Declared dead after the delay plus the timeout, not before.
    assert!(p.now - t0 >= Duration::from_secs(40), "{:?}", p.now - t0);
    assert!(child_downs(&p.a_events).iter().any(|(_, r)| *r == DownReason::DeadPeer));
    let f = failures(&p.a_events);
    assert!(
        f.iter().any(|x| x.exchange == ExchangeType::INFORMATIONAL
            && matches!(x.cause, Cause::Timeout { .. }))
    );
    // Restart: A keeps trying; the peer comes back and the tunnel is up again.
    let ups_before = child_ups(&p.a_events).len();
    p.run_for(Duration::from_secs(20));
    p.b_dead = false;
    p.run_until(Duration::from_secs(600), |p| child_ups(&p.a_events).len() > ups_before);
    assert_eq!(installed(&p.a_events).len(), 1);
    // B dropped the stale SA on INITIAL_CONTACT.
    assert!(
        p.b_events
            .iter()
            .any(|e| matches!(e, Event::IkeSaDown { reason: DownReason::Replaced, .. }))
    );
    assert_eq!(installed(&p.b_events).len(), 1);
    assert_paired(&p);
}

#[test]
fn dead_peer_detection_clears() {
    let (mut a, b) = configs();
    a.dpd.delay = Duration::from_secs(10);
    a.dpd.timeout = Duration::from_secs(30);
    a.dpd.action = isthmus_ike::DpdAction::Clear;
    let mut b = b;
    b.dpd.delay = Duration::ZERO;
    let mut p = Pair::new(a, b);
    p.handshake();
    kill_b_and_wait(&mut p);
    let sent = p.wire.len();
    p.b_dead = false;
    p.run_for(Duration::from_secs(300));
    // Nothing from A after clearing (B's own DPD may still probe A).
    assert!(
        !p.wire[sent..]
            .iter()
            .any(|s| s.from_a && !s.response && s.exchange == Some(ExchangeType::IKE_SA_INIT))
    );
    assert!(p.a.status("t1").unwrap().ike.is_none());
}

#[test]
fn cookies_protect_against_a_flood_of_half_open_sas() {
    let (a, b) = configs();
    let mut eb = endpoint_config();
    eb.cookie_threshold = 3;
    let mut p = Pair::with_endpoints(endpoint_config(), eb, a, b);
    // A flood of IKE_SA_INIT requests that never continue (from many fake initiators at the
    // same address, so they match the tunnel).
    for i in 0..20u8 {
        let (fa, _) = configs();
        let mut f = isthmus_ike::Endpoint::new(endpoint_config(), [100 + i; 32]);
        f.add_tunnel(fa).unwrap();
        f.initiate("t1", p.now).unwrap();
        let t = f.poll_transmit().unwrap();
        p.b.handle_datagram(p.now, t.remote, t.local, &t.data);
        // Answers: real SAs until the threshold, then COOKIE notifies only.
        let answer = p.b.poll_transmit().unwrap();
        let m = isthmus_ike::codec::parse_message(&answer.data).unwrap();
        let cookie = m.payloads.iter().any(
            |x| matches!(x, isthmus_ike::codec::Payload::Notify(n) if n.ty == NotifyType::COOKIE),
        );
        assert_eq!(cookie, i >= 3, "request {i}");
    }
    assert_eq!(p.b.half_open_count(), 3);
    // A legitimate initiator returns the cookie and gets through.
    p.handshake();
    let cookies =
        p.wire.iter().filter(|s| s.from_a && s.exchange == Some(ExchangeType::IKE_SA_INIT)).count();
    assert_eq!(cookies, 2, "the first request, then the one with the cookie");
    assert_paired(&p);
    // Half-open SAs time out.
    p.run_for(Duration::from_secs(31));
    assert_eq!(p.b.half_open_count(), 0);
}

#[test]
fn ike_proposal_mismatch_explains_itself_on_both_sides() {
    let (a, b) = configs();
    let mut p = Pair::new(
        with_ike(a, "aes256gcm16-prfsha256-x25519"),
        with_ike(b, "aes256gcm16-prfsha256-ecp256"),
    );
    p.a.initiate("t1", p.now).unwrap();
    p.drive();
    let fa = failures(&p.a_events);
    assert_eq!(fa.len(), 1);
    assert_eq!(fa[0].cause, Cause::PeerRefused(NotifyType::NO_PROPOSAL_CHOSEN));
    assert_eq!(fa[0].exchange, ExchangeType::IKE_SA_INIT);
    let fb = failures(&p.b_events);
    assert_eq!(fb.len(), 1);
    assert_eq!(fb[0].cause, Cause::WeRefused(NotifyType::NO_PROPOSAL_CHOSEN));
    assert_eq!(fb[0].theirs.as_deref(), Some("aes256gcm16-prfsha256-x25519"));
    assert_eq!(
        fb[0].to_string(),
        "tunnel `t1`: IKE_SA_INIT failed: we answered the peer's request with NO_PROPOSAL_CHOSEN; \
         we offered IKE aes256gcm16-prfsha256-ecp256; the peer offered aes256gcm16-prfsha256-x25519; \
         the peer offers only x25519 for key exchange; add x25519 to ike proposals"
    );
    assert!(p.a.status("t1").unwrap().ike.is_none());
}

#[test]
fn invalid_ke_payload_retries_with_the_requested_group() {
    let (a, b) = configs();
    let mut p = Pair::new(
        with_ike(a, "aes256gcm16-prfsha256-x25519-ecp256"),
        with_ike(b, "aes256gcm16-prfsha256-ecp256"),
    );
    p.handshake();
    match p.a_events.iter().find(|e| matches!(e, Event::IkeSaUp { .. })).unwrap() {
        Event::IkeSaUp { suite, .. } => {
            assert_eq!(suite.to_string(), "aes256gcm16-prfsha256-ecp256")
        }
        _ => unreachable!(),
    }
    assert!(failures(&p.a_events).is_empty());
    assert_paired(&p);
}

#[test]
fn every_suite_negotiates() {
    for ike in [
        "aes128gcm16-prfsha256-x25519",
        "aes256gcm16-prfsha384-ecp256",
        "aes256gcm16-prfsha512-ecp384",
        "aes128gcm16-prfsha384-ecp384",
    ] {
        for esp in ["aes128gcm16", "aes256gcm16-esn", "aes128gcm16-ecp384"] {
            let (a, b) = configs();
            let mut p = Pair::new(with_esp(with_ike(a, ike), esp), with_esp(with_ike(b, ike), esp));
            p.handshake();
            let spi = first_child_spi(&p);
            p.a.rekey_child("t1", spi, p.now).unwrap();
            p.a.rekey_ike("t1", p.now).unwrap();
            p.drive();
            assert_paired(&p);
            assert_eq!(installed(&p.a_events).len(), 1, "{ike} / {esp}");
        }
    }
}

/// The IKE and ESP suites of the last SAs that came up on A.
fn suites(p: &Pair) -> (String, String) {
    let ike = p.a.status("t1").unwrap().ike.unwrap().suite.unwrap().to_string();
    let esp = match child_ups(&p.a_events).last().unwrap() {
        Event::ChildSaUp { esp, .. } => esp.to_string(),
        _ => unreachable!(),
    };
    (ike, esp)
}

#[test]
fn cloud_and_idc_suites_negotiate_and_rekey_with_pfs() {
    // The defaults of cloud VPN gateways and IDC routers (docs/interop.md), and the rest of
    // the new ciphers, groups and integrity algorithms.
    for (ike, esp, want_ike, want_esp) in [
        (
            "aes128-sha256-modp2048",
            "aes128-sha256-modp2048",
            "aes128-sha256-prfsha256-modp2048",
            "aes128-sha256-modp2048-noesn",
        ),
        (
            "aes256-sha1-modp1024",
            "aes256-sha1-modp1024",
            "aes256-sha1-prfsha1-modp1024",
            "aes256-sha1-modp1024-noesn",
        ),
        (
            "3des-sha1-modp1536",
            "3des-sha1-modp1536",
            "3des-sha1-prfsha1-modp1536",
            "3des-sha1-modp1536-noesn",
        ),
        (
            "aes192-sha384-prfsha384-ecp521",
            "aes192-sha512-ecp521-esn",
            "aes192-sha384-prfsha384-ecp521",
            "aes192-sha512-ecp521-esn",
        ),
        (
            "aes256-sha512-modp2048s256",
            "aes256-sha256-modp2048s256",
            "aes256-sha512-prfsha512-modp2048s256",
            "aes256-sha256-modp2048s256-noesn",
        ),
        (
            "chacha20poly1305-prfsha256-x25519",
            "chacha20poly1305-x25519",
            "chacha20poly1305-prfsha256-x25519",
            "chacha20poly1305-x25519-noesn",
        ),
        (
            "aes256gcm16-prfsha384-modp3072",
            "aes128-sha256-modp3072",
            "aes256gcm16-prfsha384-modp3072",
            "aes128-sha256-modp3072-noesn",
        ),
    ] {
        let (a, b) = configs();
        let mut p = Pair::new(with_esp(with_ike(a, ike), esp), with_esp(with_ike(b, ike), esp));
        p.handshake();
        assert_paired(&p);
        let spi = first_child_spi(&p);
        p.a.rekey_child("t1", spi, p.now).unwrap();
        p.drive();
        assert_eq!(suites(&p), (want_ike.to_owned(), want_esp.to_owned()), "{ike} / {esp}");
        p.b.rekey_ike("t1", p.now).unwrap();
        p.drive();
        let spi = keys(child_ups(&p.b_events).last().unwrap()).0;
        p.b.rekey_child("t1", spi, p.now).unwrap();
        p.drive();
        assert!(p.a_events.iter().any(|e| matches!(e, Event::IkeSaUp { rekeyed: true, .. })));
        assert_eq!(suites(&p), (want_ike.to_owned(), want_esp.to_owned()), "{ike} / {esp}");
        assert!(failures(&p.a_events).is_empty() && failures(&p.b_events).is_empty());
        assert_paired(&p);
        assert_eq!(installed(&p.a_events).len(), 1, "{ike} / {esp}");
    }
}

#[test]
fn invalid_ke_payload_retries_between_modp_and_ecp_groups() {
    for (a_ike, b_ike, want) in [
        ("aes128-sha256-modp2048-ecp256", "aes128-sha256-ecp256", "aes128-sha256-prfsha256-ecp256"),
        (
            "aes128-sha256-x25519-modp2048",
            "aes128-sha256-modp2048",
            "aes128-sha256-prfsha256-modp2048",
        ),
    ] {
        let (a, b) = configs();
        let mut p = Pair::new(with_ike(a, a_ike), with_ike(b, b_ike));
        p.handshake();
        assert_eq!(suites(&p).0, want);
        assert!(failures(&p.a_events).is_empty(), "{:?}", failures(&p.a_events));
        assert_paired(&p);
    }
    // The same for an IKE rekey and for a CHILD SA's PFS group.
    let (a, b) = configs();
    let mut p = Pair::new(
        with_esp(with_ike(a, "aes128-sha256-x25519-modp2048"), "aes128-sha256-modp2048-ecp256"),
        with_esp(with_ike(b, "aes128-sha256-modp2048-x25519"), "aes128-sha256-ecp256-modp2048"),
    );
    p.b.initiate("t1", p.now).unwrap();
    p.drive();
    assert_eq!(suites(&p).0, "aes128-sha256-prfsha256-x25519");
    p.a.rekey_ike("t1", p.now).unwrap();
    p.drive();
    assert_eq!(suites(&p).0, "aes128-sha256-prfsha256-modp2048");
    let spi = first_child_spi(&p);
    p.a.rekey_child("t1", spi, p.now).unwrap();
    p.drive();
    // B accepts A's KE group (modp2048) although it prefers ecp256, as strongSwan does.
    assert_eq!(suites(&p).1, "aes128-sha256-modp2048-noesn");
    // B rekeys with ecp256, which A does not accept for PFS: A asks for modp2048.
    let (a, b) = configs();
    let mut p = Pair::new(
        with_esp(a, "aes128-sha256-modp2048"),
        with_esp(b, "aes128-sha256-ecp256-modp2048"),
    );
    p.handshake();
    let spi = keys(child_ups(&p.b_events)[0]).0;
    p.b.rekey_child("t1", spi, p.now).unwrap();
    p.drive();
    assert_eq!(suites(&p).1, "aes128-sha256-modp2048-noesn");
    assert!(failures(&p.a_events).is_empty() && failures(&p.b_events).is_empty());
    assert_paired(&p);
}

#[test]
fn esp_proposal_mismatch_keeps_the_ike_sa_and_explains() {
    let (a, b) = configs();
    let mut p = Pair::new(with_esp(a, "aes128gcm16"), with_esp(b, "aes256gcm16"));
    p.a.initiate("t1", p.now).unwrap();
    p.drive();
    assert!(
        up(&p.a_events) && up(&p.b_events),
        "the IKE SA survives a failed first CHILD SA (§1.2)"
    );
    assert!(child_ups(&p.a_events).is_empty());
    let fa = failures(&p.a_events);
    assert_eq!(fa[0].cause, Cause::PeerRefused(NotifyType::NO_PROPOSAL_CHOSEN));
    assert_eq!(fa[0].exchange, ExchangeType::IKE_AUTH);
    let fb = failures(&p.b_events);
    assert_eq!(
        fb[0].suggestion.as_deref(),
        Some("the peer offers aes128gcm16 for ESP encryption; add aes128gcm16 to esp proposals")
    );
}

#[test]
fn selector_mismatch_is_ts_unacceptable() {
    let a = tunnel(A, B, "10.1.0.0/16", "10.2.0.0/16");
    let b = tunnel(B, A, "10.2.0.0/16", "10.9.0.0/16");
    let mut p = Pair::new(a, b);
    p.a.initiate("t1", p.now).unwrap();
    p.drive();
    let fa = failures(&p.a_events);
    assert_eq!(fa[0].cause, Cause::PeerRefused(NotifyType::TS_UNACCEPTABLE));
    assert_eq!(fa[0].ours, "TS 10.1.0.0/16 === 10.2.0.0/16");
    let fb = failures(&p.b_events);
    assert_eq!(fb[0].cause, Cause::WeRefused(NotifyType::TS_UNACCEPTABLE));
    assert!(fb[0].to_string().contains("do not overlap our remote_ts 10.9.0.0/16"), "{}", fb[0]);
}

#[test]
fn selectors_are_narrowed() {
    // §2.9: the responder narrows to its configured subset.
    let a = tunnel(A, B, "10.1.0.0/16", "10.2.0.0/16");
    let b = tunnel(B, A, "10.2.0.0/16[tcp]", "10.1.5.0/24");
    let mut p = Pair::new(a, b);
    p.handshake();
    match child_ups(&p.a_events)[0] {
        Event::ChildSaUp { local_ts, remote_ts, .. } => {
            assert_eq!(local_ts, &ts("10.1.5.0/24"));
            assert_eq!(remote_ts, &ts("10.2.0.0/16[tcp]"));
        }
        _ => unreachable!(),
    }
    assert_paired(&p);
}

#[test]
fn several_selector_pairs_and_several_children() {
    let mut a = tunnel(A, B, "10.1.0.0/16,10.3.0.0/16", "10.2.0.0/16,2001:db8:2::/48");
    let mut b = tunnel(B, A, "10.2.0.0/16,2001:db8:2::/48", "10.1.0.0/16,10.3.0.0/16");
    a.children.push(child("voice", "10.11.0.0/16", "10.12.0.0/16"));
    b.children.push(child("voice", "10.12.0.0/16", "10.11.0.0/16"));
    let mut p = Pair::new(a, b);
    p.handshake();
    let ups = child_ups(&p.a_events);
    assert_eq!(ups.len(), 2);
    match ups[0] {
        Event::ChildSaUp { local_ts, remote_ts, .. } => {
            assert_eq!(local_ts.len(), 2);
            assert_eq!(remote_ts.len(), 2, "{remote_ts:?}");
        }
        _ => unreachable!(),
    }
    assert!(matches!(ups[1], Event::ChildSaUp { child, .. } if child == "voice"));
    assert_paired(&p);
}

#[test]
fn psk_mismatch_is_authentication_failed() {
    let (a, mut b) = configs();
    b.psk = isthmus_ike::Psk::new(b"something else".to_vec());
    let mut p = Pair::new(a, b);
    p.a.initiate("t1", p.now).unwrap();
    p.drive();
    let fa = failures(&p.a_events);
    assert_eq!(fa[0].cause, Cause::PeerRefused(NotifyType::AUTHENTICATION_FAILED));
    let fb = failures(&p.b_events);
    assert_eq!(fb[0].cause, Cause::WeRefused(NotifyType::AUTHENTICATION_FAILED));
    assert!(fb[0].to_string().contains("the pre-shared keys differ"));
    assert!(!fb[0].to_string().contains("correct horse"));
    assert!(!up(&p.a_events) && !up(&p.b_events));
}

#[test]
fn nat_is_detected_and_ike_moves_to_port_4500() {
    let (a, mut b) = configs();
    // B knows A only by the NAT's public address.
    b.remote = std::net::SocketAddr::new(NAT.parse().unwrap(), 500);
    b.remote_id = A.parse().unwrap();
    let mut p = Pair::new(a, b);
    p.nat = true;
    p.handshake();
    assert!(matches!(child_ups(&p.a_events)[0], Event::ChildSaUp { encap: true, .. }));
    assert!(
        matches!(child_ups(&p.b_events)[0], Event::ChildSaUp { encap: true, peer, .. } if peer.port() == 14500)
    );
    let auth = p.wire.iter().find(|s| s.exchange == Some(ExchangeType::IKE_AUTH)).unwrap();
    assert!(auth.t.nat_t && auth.t.local.port() == 4500 && auth.t.remote.port() == 4500);
    // A, behind the NAT, sends keepalives (RFC 3948 §2.3).
    p.run_for(Duration::from_secs(25));
    assert!(
        p.wire
            .iter()
            .any(|s| s.from_a && s.t.data == [0xff] && !s.t.nat_t && s.t.local.port() == 4500)
    );
    assert_paired(&p);
}

#[test]
fn forced_encapsulation_without_nat() {
    let (mut a, b) = configs();
    a.force_nat_t = true;
    let mut p = Pair::new(a, b);
    p.handshake();
    assert!(matches!(child_ups(&p.a_events)[0], Event::ChildSaUp { encap: true, .. }));
    assert!(matches!(child_ups(&p.b_events)[0], Event::ChildSaUp { encap: true, .. }));
}

#[test]
fn simultaneous_initiation_ends_with_one_ike_sa() {
    let (a, b) = configs();
    let mut p = Pair::new(a, b);
    p.a.initiate("t1", p.now).unwrap();
    p.b.initiate("t1", p.now).unwrap();
    p.drive();
    p.run_for(Duration::from_secs(60));
    assert_eq!(p.a.ike_sa_count(), 1, "A: {:#?}", p.a_events);
    assert_eq!(p.b.ike_sa_count(), 1);
    let ia = p.a.status("t1").unwrap().ike.unwrap();
    let ib = p.b.status("t1").unwrap().ike.unwrap();
    assert_eq!((ia.spi_i, ia.spi_r), (ib.spi_i, ib.spi_r));
    assert_eq!(installed(&p.a_events).len(), 1, "A: {:#?}", p.a_events);
    assert_paired(&p);
    assert!(!p.a_events.iter().chain(&p.b_events).any(|e| matches!(e, Event::IkeSaDown { .. })));
}

/// Issue 14 item 13: B restarts right after a simultaneous initiation, before either duplicate
/// IKE SA was deleted (the Deletes are lost with B). B's next IKE SA carries INITIAL_CONTACT, and
/// A must drop both old IKE SAs, the collision's loser too: a loser kept waiting for its Delete
/// kept its CHILD SA, on which A went on sending although B had a new one.
#[test]
fn rfc7296_section_2_4_initial_contact_also_drops_a_collision_loser() {
    let (a, b) = configs();
    let mut p = Pair::new(a, b.clone());
    p.drop_if = Some(|s| s.exchange == Some(ExchangeType::INFORMATIONAL));
    p.a.initiate("t1", p.now).unwrap();
    p.b.initiate("t1", p.now).unwrap();
    p.drive();
    assert_eq!(p.a.ike_sa_count(), 2, "both duplicates exist: {:#?}", p.a_events);
    // B restarts: a new endpoint with no state.
    p.b = isthmus_ike::Endpoint::new(endpoint_config(), [3; 32]);
    p.b.add_tunnel(b).unwrap();
    p.b_events.clear();
    p.drop_if = None;
    p.run_for(Duration::from_secs(1));
    p.b.initiate("t1", p.now).unwrap();
    p.run_for(Duration::from_secs(2));
    let ups = child_ups(&p.b_events);
    assert_eq!(ups.len(), 1, "B: {:#?}", p.b_events);
    assert_eq!(installed(&p.a_events).len(), 1, "A keeps only B's new CHILD SA: {:#?}", p.a_events);
    assert_paired(&p);
    assert_eq!(p.a.ike_sa_count(), 1);
}

/// Issue 14 item 13: when the peer dies right after a simultaneous initiation, the collision's
/// loser (waiting for a Delete that never comes or is never answered) goes with the winner: its
/// CHILD SA must not outlive the dead peer's declaration.
#[test]
fn a_dead_peer_takes_the_collision_loser_with_it() {
    let (mut a, b) = configs();
    a.dpd.delay = Duration::from_secs(10);
    a.dpd.timeout = Duration::from_secs(30);
    let mut p = Pair::new(a, b);
    p.drop_if = Some(|s| s.exchange == Some(ExchangeType::INFORMATIONAL));
    p.a.initiate("t1", p.now).unwrap();
    p.b.initiate("t1", p.now).unwrap();
    p.drive();
    assert_eq!(installed(&p.a_events).len(), 2, "both duplicates' CHILD SAs: {:#?}", p.a_events);
    kill_b_and_wait(&mut p);
    assert_eq!(installed(&p.a_events), Vec::<u32>::new(), "A: {:#?}", p.a_events);
}

#[test]
fn lifetimes_rekey_by_themselves() {
    let (mut a, mut b) = configs();
    for t in [&mut a, &mut b] {
        t.children[0].lifetime = isthmus_ike::Lifetime {
            rekey_time: Duration::from_secs(30),
            rand_time: Duration::from_secs(5),
            life_time: Duration::from_secs(40),
        };
        t.ike_lifetime = isthmus_ike::Lifetime {
            rekey_time: Duration::from_secs(60),
            rand_time: Duration::from_secs(10),
            life_time: Duration::from_secs(70),
        };
    }
    let mut p = Pair::new(a, b);
    p.handshake();
    p.run_for(Duration::from_secs(300));
    assert!(child_ups(&p.a_events).len() >= 6, "{}", child_ups(&p.a_events).len());
    assert!(
        p.a_events.iter().filter(|e| matches!(e, Event::IkeSaUp { rekeyed: true, .. })).count()
            >= 3
    );
    assert!(!p.a_events.iter().chain(&p.b_events).any(|e| matches!(e, Event::IkeSaDown { .. })));
    assert!(!child_downs(&p.a_events).iter().any(|(_, r)| *r == DownReason::Expired));
    assert_eq!(installed(&p.a_events).len(), 1);
    assert_paired(&p);
}

#[test]
fn terminate_deletes_everything_on_both_sides() {
    let (a, b) = configs();
    let mut p = Pair::new(a, b);
    p.handshake();
    p.a.terminate("t1", p.now).unwrap();
    p.drive();
    assert!(
        p.a_events
            .iter()
            .any(|e| matches!(e, Event::IkeSaDown { reason: DownReason::Terminated, .. }))
    );
    assert!(
        p.b_events
            .iter()
            .any(|e| matches!(e, Event::IkeSaDown { reason: DownReason::DeletedByPeer, .. }))
    );
    assert!(installed(&p.a_events).is_empty() && installed(&p.b_events).is_empty());
    p.run_for(Duration::from_secs(60));
    assert_eq!(p.a.ike_sa_count() + p.b.ike_sa_count(), 0);
}

#[test]
fn acquire_brings_the_tunnel_up_once() {
    let (a, b) = configs();
    let mut p = Pair::new(a, b);
    p.a.acquire("t1", "net", p.now).unwrap();
    p.a.acquire("t1", "net", p.now).unwrap();
    p.drive();
    p.a.acquire("t1", "net", p.now).unwrap();
    p.drive();
    assert_eq!(child_ups(&p.a_events).len(), 1);
    assert!(p.a.acquire("t1", "nope", p.now).is_err());
}

#[test]
fn unknown_payloads_are_ignored_unless_critical() {
    use isthmus_ike::codec::{self, Payload};
    for critical in [false, true] {
        let (a, b) = configs();
        let mut p = Pair::new(a, b);
        p.a.initiate("t1", p.now).unwrap();
        let t = p.a.poll_transmit().unwrap();
        let mut m = codec::parse_message(&t.data).unwrap();
        m.payloads.push(Payload::Unknown { ty: 200, critical, data: vec![1, 2, 3] });
        let data = codec::encode_plain(m.header, &m.payloads);
        p.b.handle_datagram(p.now, t.remote, t.local, &data);
        let answer = codec::parse_message(&p.b.poll_transmit().unwrap().data).unwrap();
        let refused = answer.payloads.iter().any(|x| {
            matches!(x, Payload::Notify(n) if n.ty == NotifyType::UNSUPPORTED_CRITICAL_PAYLOAD && n.data == [200])
        });
        let accepted = answer.payloads.iter().any(|x| matches!(x, Payload::Sa(_)));
        assert_eq!((refused, accepted), (critical, !critical), "critical = {critical}");
    }
}

#[test]
fn other_major_versions_are_refused() {
    use isthmus_ike::codec::{self, Payload};
    let (a, b) = configs();
    let mut p = Pair::new(a, b);
    p.a.initiate("t1", p.now).unwrap();
    let t = p.a.poll_transmit().unwrap();
    let mut data = t.data.clone();
    data[17] = 0x30; // IKE version 3.0
    p.b.handle_datagram(p.now, t.remote, t.local, &data);
    let answer = codec::parse_message(&p.b.poll_transmit().unwrap().data).unwrap();
    assert!(
        answer
            .payloads
            .iter()
            .any(|x| matches!(x, Payload::Notify(n) if n.ty == NotifyType::INVALID_MAJOR_VERSION))
    );
    assert_eq!(p.b.ike_sa_count(), 0);
}

#[test]
fn same_seed_same_inputs_same_bytes() {
    let run = || {
        let (a, b) = configs();
        let mut p = Pair::new(a, b);
        p.handshake();
        p.a.rekey_ike("t1", p.now).unwrap();
        p.drive();
        p.run_for(Duration::from_secs(120));
        p.wire.iter().map(|s| s.t.data.clone()).collect::<Vec<_>>()
    };
    assert_eq!(run(), run());
}

#[test]
fn responder_picks_the_tunnel_by_identity_for_any_peer() {
    let (mut a, mut b) = configs();
    a.local_id = "@branch-7.example".parse().unwrap();
    a.remote_id = "hq@example.net".parse().unwrap();
    // B accepts peers from anywhere and tells them apart by identity.
    b.name = "other".into();
    b.remote = "0.0.0.0:500".parse().unwrap();
    b.remote_id = "@branch-1.example".parse().unwrap();
    b.local_id = "hq@example.net".parse().unwrap();
    let mut b7 = b.clone();
    b7.name = "t1".into();
    b7.remote_id = "@branch-7.example".parse().unwrap();
    let mut p = Pair::new(a, b);
    p.b.add_tunnel(b7).unwrap();
    p.handshake();
    let tunnels: Vec<&str> = p
        .b_events
        .iter()
        .filter_map(|e| match e {
            Event::ChildSaUp { tunnel, .. } => Some(tunnel.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(tunnels, ["t1"]);
    assert_paired(&p);
    assert!(p.b.status("other").unwrap().ike.is_none());
}

#[test]
fn traffic_defers_liveness_checks() {
    let (mut a, b) = configs();
    a.dpd.delay = Duration::from_secs(10);
    let mut p = Pair::new(a, b);
    p.handshake();
    let spi = first_child_spi(&p);
    let sent = p.wire.len();
    for _ in 0..12 {
        p.run_for(Duration::from_secs(5));
        p.a.traffic_seen(spi, p.now);
    }
    let probes = |p: &Pair, from: usize| {
        p.wire[from..]
            .iter()
            .filter(|s| s.from_a && !s.response && s.exchange == Some(ExchangeType::INFORMATIONAL))
            .count()
    };
    assert_eq!(probes(&p, sent), 0, "no DPD while ESP traffic arrives");
    let sent = p.wire.len();
    p.run_for(Duration::from_secs(11));
    assert_eq!(probes(&p, sent), 1, "a probe once the traffic stops");
}

/// Issue 14 item 14: with `delay = 10s`, `timeout = 30s` the peer was declared dead 47.5 s after
/// the first liveness check (at the retransmission due then, 4 + 7.2 + 13 + 23.3 s). It is dead at
/// the configured timeout, also when the timeout outlasts the retransmission count (300 s).
#[test]
fn rfc7296_section_2_4_dead_peer_declared_at_the_configured_timeout() {
    for timeout in [30, 300] {
        let (mut a, mut b) = configs();
        a.dpd.delay = Duration::from_secs(10);
        a.dpd.timeout = Duration::from_secs(timeout);
        b.dpd.delay = Duration::ZERO;
        let mut p = Pair::new(a, b);
        p.handshake();
        p.b_dead = true;
        let sent = p.wire.len();
        let probe = |p: &Pair| {
            p.wire[sent..]
                .iter()
                .any(|s| s.from_a && !s.response && s.exchange == Some(ExchangeType::INFORMATIONAL))
        };
        p.run_until(Duration::from_secs(60), probe);
        let first_probe = p.now;
        let dead = |p: &Pair| {
            p.a_events
                .iter()
                .any(|e| matches!(e, Event::IkeSaDown { reason: DownReason::DeadPeer, .. }))
        };
        p.run_until(Duration::from_secs(timeout + 60), dead);
        assert_eq!(
            p.now - first_probe,
            Duration::from_secs(timeout),
            "declared dead this long after the first liveness check"
        );
        let probes = p.wire[sent..]
            .iter()
            .filter(|s| s.from_a && !s.response && s.exchange == Some(ExchangeType::INFORMATIONAL))
            .count();
        assert!(probes >= 4, "retransmitted until the timeout: {probes} probes");
    }
}

//! IKEv2 exchanges between two in-memory endpoints: handshake, rekeys, collisions, loss,
//! dead peers, cookies, NAT, mismatches and their explanations.

mod util;

use isthmus_ike::Event;
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
}

//! The driver on its own, root-only, in network namespaces: sockets bound where the daemon runs
//! it, commands answered with errors that name what is wrong, two Isthmus gateways negotiating
//! with each other.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use isthmus_ike::{Psk, StartAction, TunnelConfig};
use isthmus_testkit::{Netns, require_root, veth};
use isthmus_tunnels::{
    CloseAction, ControlOnly, DriverConfig, Error, Tunnel, TunnelEvent, TunnelState, Tunnels,
};

fn tunnel(name: &str, local: &str, remote: &str, lts: &str, rts: &str) -> TunnelConfig {
    let local: SocketAddr = format!("{local}:500").parse().unwrap();
    let remote: SocketAddr = format!("{remote}:500").parse().unwrap();
    let mut t = TunnelConfig::new(
        name,
        local,
        remote,
        Psk::new(b"driver-test-psk".to_vec()),
        vec![lts.parse().unwrap()],
        vec![rts.parse().unwrap()],
    );
    t.start_action = StartAction::None;
    t
}

#[test]
fn driver_binds_ike_ports_in_its_namespace_and_answers_commands() {
    if !require_root() {
        return;
    }
    let a = Netns::new("itd");
    let b = Netns::new("itd");
    veth(&a, "wa", "10.40.30.1/24", &b, "wb", "10.40.30.2/24");
    let t = a.run(|| Tunnels::start(DriverConfig::default(), Box::new(ControlOnly)).unwrap());
    let cfg = tunnel("t1", "10.40.30.1", "10.40.30.2", "10.41.30.0/24", "10.42.30.0/24");
    t.add_tunnel(Tunnel::new(cfg.clone())).unwrap();

    let ss = a.sh("ss -Huln");
    assert!(ss.contains("10.40.30.1:500 "), "port 500 not bound in the namespace: {ss}");
    assert!(ss.contains("10.40.30.1:4500 "), "port 4500 not bound in the namespace: {ss}");
    assert!(!b.sh("ss -Huln").contains(":500 "), "bound in the wrong namespace");

    let st = t.tunnel("t1").unwrap();
    assert_eq!(st.state, TunnelState::Down);
    assert!(st.children.is_empty());

    assert!(matches!(t.add_tunnel(Tunnel::new(cfg)), Err(Error::DuplicateTunnel(n)) if n == "t1"));
    let e = t.initiate("nope").unwrap_err();
    assert_eq!(e.to_string(), "no tunnel named `nope`");
    let e = t.rekey_child("t1", "t1").unwrap_err();
    assert_eq!(e.to_string(), "tunnel `t1` has no installed CHILD SA named `t1`");

    t.remove_tunnel("t1").unwrap();
    assert!(t.tunnel("t1").is_none());
    t.shutdown();
    // The sockets go with the driver.
    assert!(!a.sh("ss -Huln").contains(":500 "), "port 500 still bound after shutdown");
}

/// Two Isthmus gateways (no ESP dataplane) bring a tunnel up with each other: one starts it,
/// the other waits.
#[test]
fn two_isthmus_gateways_negotiate() {
    if !require_root() {
        return;
    }
    let a = Netns::new("itd");
    let b = Netns::new("itd");
    veth(&a, "wa", "10.40.31.1/24", &b, "wb", "10.40.31.2/24");
    let ta = a.run(|| Tunnels::start(DriverConfig::default(), Box::new(ControlOnly)).unwrap());
    let tb = b.run(|| Tunnels::start(DriverConfig::default(), Box::new(ControlOnly)).unwrap());
    let ev_a = ta.subscribe();
    let ev_b = tb.subscribe();
    let cb = tunnel("ab", "10.40.31.2", "10.40.31.1", "10.42.31.0/24", "10.41.31.0/24");
    tb.add_tunnel(Tunnel::new(cb)).unwrap();
    let mut ca = tunnel("ab", "10.40.31.1", "10.40.31.2", "10.41.31.0/24", "10.42.31.0/24");
    ca.start_action = StartAction::Start;
    ta.add_tunnel(Tunnel { ike: ca, close_action: CloseAction::Restart }).unwrap();

    for (name, ev) in [("a", &ev_a), ("b", &ev_b)] {
        let deadline = Instant::now() + Duration::from_secs(15);
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match ev.recv_timeout(left) {
                Ok(TunnelEvent::ChildUp { .. }) => break,
                Ok(e) => seen.push(e.to_string()),
                Err(_) => panic!("gateway {name}: no CHILD SA; events {seen:#?}"),
            }
        }
    }
    let sa = ta.tunnel("ab").unwrap();
    let sb = tb.tunnel("ab").unwrap();
    assert_eq!(sa.state, TunnelState::Up);
    assert_eq!(sb.state, TunnelState::Up);
    assert_eq!(sa.children[0].spi_in, sb.children[0].spi_out);
    assert_eq!(sa.children[0].spi_out, sb.children[0].spi_in);
    assert_eq!(sa.children[0].local_ts, ["10.41.31.0/24"]);
    assert_eq!(sb.children[0].local_ts, ["10.42.31.0/24"]);
}

//! Tunnel setup time through the IKE driver, on real sockets in network namespaces: from
//! `initiate` to the first CHILD SA reported up (IKE_SA_INIT + IKE_AUTH, RFC 7296 §1.2), against
//! another Isthmus gateway and against strongSwan 5.9 (charon with kernel-libipsec). Needs root
//! (and strongSwan for the second figure); prints a skip note otherwise.

use std::net::SocketAddr;
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use isthmus_ike::{Psk, StartAction, TunnelConfig};
use isthmus_testkit::strongswan::{Strongswan, SwanConn};
use isthmus_testkit::{Netns, veth};
use isthmus_tunnels::{ControlOnly, DriverConfig, Tunnel, TunnelEvent, Tunnels};

const PSK: &str = "bench-psk-0123456789";

fn tunnel(
    local: &str,
    remote: &str,
    lts: &str,
    rts: &str,
    local_id: &str,
    remote_id: &str,
) -> TunnelConfig {
    let local: SocketAddr = format!("{local}:500").parse().unwrap();
    let remote: SocketAddr = format!("{remote}:500").parse().unwrap();
    let mut t = TunnelConfig::new(
        "bench",
        local,
        remote,
        Psk::new(PSK.as_bytes().to_vec()),
        vec![lts.parse().unwrap()],
        vec![rts.parse().unwrap()],
    );
    t.local_id = local_id.parse().unwrap();
    t.remote_id = remote_id.parse().unwrap();
    t.start_action = StartAction::None;
    t.children[0].name = "net".into();
    t
}

fn wait(ev: &Receiver<TunnelEvent>, f: impl Fn(&TunnelEvent) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match ev.recv_timeout(left) {
            Ok(e) if f(&e) => return,
            Ok(_) => {}
            Err(_) => panic!("benchmark: no expected event within 20 s"),
        }
    }
}

fn child_up(e: &TunnelEvent) -> bool {
    matches!(e, TunnelEvent::ChildUp { rekey_of: None, .. })
}

fn ike_down(e: &TunnelEvent) -> bool {
    matches!(e, TunnelEvent::IkeDown { .. })
}

fn median_ms(mut v: Vec<Duration>) -> (f64, f64, f64) {
    v.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    (ms(v[v.len() / 2]), ms(v[0]), ms(v[v.len() - 1]))
}

fn isthmus_pair(rounds: usize) -> Vec<Duration> {
    let a = Netns::new("itb");
    let b = Netns::new("itb");
    veth(&a, "wa", "10.40.40.1/24", &b, "wb", "10.40.40.2/24");
    let ta = a.run(|| Tunnels::start(DriverConfig::default(), Box::new(ControlOnly)).unwrap());
    let tb = b.run(|| Tunnels::start(DriverConfig::default(), Box::new(ControlOnly)).unwrap());
    let (ev_a, ev_b) = (ta.subscribe(), tb.subscribe());
    let ca = tunnel(
        "10.40.40.1",
        "10.40.40.2",
        "10.41.40.0/24",
        "10.42.40.0/24",
        "a.example",
        "b.example",
    );
    let cb = tunnel(
        "10.40.40.2",
        "10.40.40.1",
        "10.42.40.0/24",
        "10.41.40.0/24",
        "b.example",
        "a.example",
    );
    tb.add_tunnel(Tunnel::new(cb)).unwrap();
    ta.add_tunnel(Tunnel::new(ca)).unwrap();
    let mut times = Vec::new();
    for _ in 0..rounds {
        let t0 = Instant::now();
        ta.initiate("bench").unwrap();
        wait(&ev_a, child_up);
        times.push(t0.elapsed());
        wait(&ev_b, child_up);
        ta.terminate("bench").unwrap();
        wait(&ev_a, ike_down);
        wait(&ev_b, ike_down);
    }
    times
}

fn with_strongswan(rounds: usize) -> Vec<Duration> {
    let a = Netns::new("itb");
    let s = Netns::new("itb");
    veth(&a, "wa", "10.40.41.1/24", &s, "ws", "10.40.41.2/24");
    let mut conn = SwanConn::new("bench", "10.40.41.2", "10.40.41.1", PSK);
    conn.child = "net".into();
    conn.local_id = "s.example".into();
    conn.remote_id = "a.example".into();
    conn.local_ts = "10.42.41.0/24".into();
    conn.remote_ts = "10.41.41.0/24".into();
    s.sh("ip addr add 10.42.41.1/24 dev lo");
    let swan = Strongswan::start(&s, &[conn]);
    swan.load_all().unwrap();
    let ta = a.run(|| Tunnels::start(DriverConfig::default(), Box::new(ControlOnly)).unwrap());
    let ev = ta.subscribe();
    let c = tunnel(
        "10.40.41.1",
        "10.40.41.2",
        "10.41.41.0/24",
        "10.42.41.0/24",
        "a.example",
        "s.example",
    );
    ta.add_tunnel(Tunnel::new(c)).unwrap();
    let mut times = Vec::new();
    for _ in 0..rounds {
        let t0 = Instant::now();
        ta.initiate("bench").unwrap();
        wait(&ev, child_up);
        times.push(t0.elapsed());
        ta.terminate("bench").unwrap();
        wait(&ev, ike_down);
        assert!(
            swan.wait_until(Duration::from_secs(5), |s| !s.ike_established("bench")),
            "strongSwan kept the IKE SA"
        );
    }
    drop(ta);
    drop(swan);
    times
}

fn main() {
    if !is_root() {
        println!("  skipped tunnel setup benchmarks: they need root (network namespaces)");
        return;
    }
    let (med, min, max) = median_ms(isthmus_pair(30));
    println!("BENCH tunnel_setup_isthmus_ms {med:.2} ms");
    println!(
        "  initiate to CHILD SA up between two Isthmus drivers, x25519 + PSK, 30 rounds: min {min:.2} max {max:.2}"
    );
    if !isthmus_testkit::strongswan::available() {
        return;
    }
    let (med, min, max) = median_ms(with_strongswan(10));
    println!("BENCH tunnel_setup_strongswan_ms {med:.2} ms");
    println!(
        "  initiate to CHILD SA up, Isthmus initiating to strongSwan 5.9.8, 10 rounds: min {min:.2} max {max:.2}"
    );
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|u| u == "0"))
        })
        .unwrap_or(false)
}

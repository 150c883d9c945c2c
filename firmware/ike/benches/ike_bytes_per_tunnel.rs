//! Heap memory per established tunnel (IKE SA + one CHILD SA, with its configuration) when one
//! process holds 10,000 tunnels, counted by a global allocator that tracks live bytes.

use std::alloc::{GlobalAlloc, Layout, System};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::Instant;

use isthmus_ike::{Endpoint, EndpointConfig, Event, Psk, TunnelConfig};

struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

// SAFETY: every method forwards to the system allocator with the caller's arguments
// unchanged; the counter is only bookkeeping.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        LIVE.fetch_add(l.size() as isize, Ordering::Relaxed);
        // SAFETY: same contract as ours, passed through.
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE.fetch_sub(l.size() as isize, Ordering::Relaxed);
        // SAFETY: `p` was allocated by `System` with layout `l`.
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        LIVE.fetch_add(n as isize - l.size() as isize, Ordering::Relaxed);
        // SAFETY: `p` was allocated by `System` with layout `l`.
        unsafe { System.realloc(p, l, n) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const TUNNELS: u32 = 10_000;

fn addr(side: u8, i: u32) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, side, (i >> 8) as u8, i as u8)), 500)
}

fn tunnel(i: u32, local: SocketAddr, remote: SocketAddr, lts: &str, rts: &str) -> TunnelConfig {
    TunnelConfig::new(
        &format!("customer-gateway-{i}"),
        local,
        remote,
        Psk::new(b"a pre-shared key of realistic length".to_vec()),
        vec![lts.parse().unwrap()],
        vec![rts.parse().unwrap()],
    )
}

fn live() -> isize {
    LIVE.load(Ordering::Relaxed)
}

fn main() {
    let base = live();
    let cfg = EndpointConfig {
        cookie_threshold: usize::MAX,
        max_half_open: usize::MAX,
        ..EndpointConfig::default()
    };
    // The gateway (responder) holds 10,000 tunnels to 10,000 peers, simulated by one
    // initiating endpoint.
    let mut gw = Endpoint::new(cfg.clone(), [3; 32]);
    let after_gw = live();
    let mut peers = Endpoint::new(cfg, [4; 32]);
    for i in 0..TUNNELS {
        gw.add_tunnel(tunnel(i, addr(2, 0), addr(1, i), "10.102.0.0/16", "10.101.0.0/16")).unwrap();
    }
    let gw_config_only = live() - after_gw;
    let before_peers = live();
    for i in 0..TUNNELS {
        peers
            .add_tunnel(tunnel(i, addr(1, i), addr(2, 0), "10.101.0.0/16", "10.102.0.0/16"))
            .unwrap();
    }
    let peers_config = live() - before_peers;
    let now = Instant::now();
    for i in 0..TUNNELS {
        peers.initiate(&format!("customer-gateway-{i}"), now).unwrap();
    }
    let (mut up_gw, mut up_peers) = (0, 0);
    loop {
        let mut progress = false;
        while let Some(t) = peers.poll_transmit() {
            progress = true;
            gw.handle_datagram(now, t.remote, t.local, &t.data);
        }
        while let Some(t) = gw.poll_transmit() {
            progress = true;
            peers.handle_datagram(now, t.remote, t.local, &t.data);
        }
        while let Some(e) = gw.poll_event() {
            up_gw += usize::from(matches!(e, Event::ChildSaUp { .. }));
        }
        while let Some(e) = peers.poll_event() {
            up_peers += usize::from(matches!(e, Event::ChildSaUp { .. }));
        }
        if !progress {
            break;
        }
    }
    assert_eq!((up_gw, up_peers), (TUNNELS as usize, TUNNELS as usize));
    let total = live() - base;
    drop(peers);
    let gw_bytes = live() - base;
    let peers_bytes = total - gw_bytes;
    let per_gw = gw_bytes as f64 / f64::from(TUNNELS);
    let per_peer = peers_bytes as f64 / f64::from(TUNNELS);
    let worst = per_gw.max(per_peer);
    println!("BENCH ike_bytes_per_tunnel {worst:.0} bytes");
    println!(
        "  responder (gateway) side: {per_gw:.0} bytes per tunnel, of which configuration {:.0}",
        gw_config_only as f64 / f64::from(TUNNELS)
    );
    println!(
        "  initiator side: {per_peer:.0} bytes per tunnel, of which configuration {:.0}",
        peers_config as f64 / f64::from(TUNNELS)
    );
    println!(
        "  {TUNNELS} established tunnels (IKE SA + one CHILD SA) per endpoint; live heap counted by the allocator"
    );
    println!("  target <= 16384 bytes: {}", if worst <= 16384.0 { "met" } else { "NOT met" });
    drop(gw);
}

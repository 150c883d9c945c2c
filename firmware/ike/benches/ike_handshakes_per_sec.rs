//! Complete IKE_SA_INIT + IKE_AUTH handshakes (with the first CHILD SA) per second between two
//! in-memory endpoints on one core, Curve25519 and PSK; beside it the rate of the X25519
//! operations alone, measured in the same run (each handshake needs four: a key pair and a
//! shared secret on each side).
//!
//! Time is the thread's CPU time (CLOCK_THREAD_CPUTIME_ID), so that other processes on a
//! shared machine do not distort the per-core figure; the wall-clock rate is printed too.

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use isthmus_ike::crypto::DhSecret;
use isthmus_ike::{DhGroup, Endpoint, EndpointConfig, Event, Psk, TunnelConfig};
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;

const BATCH: u32 = 500;

/// CPU time consumed by this thread.
fn cpu_now() -> Duration {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid, writable timespec; the clock id is a constant the kernel knows.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID) failed");
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

fn addr(side: u8, i: u32) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, side, (i >> 8) as u8, i as u8)), 500)
}

fn tunnel(i: u32, local: SocketAddr, remote: SocketAddr, lts: &str, rts: &str) -> TunnelConfig {
    TunnelConfig::new(
        &format!("t{i}"),
        local,
        remote,
        Psk::new(b"benchmark pre-shared key".to_vec()),
        vec![lts.parse().unwrap()],
        vec![rts.parse().unwrap()],
    )
}

fn pair(seed: u8) -> (Endpoint, Endpoint) {
    let cfg = EndpointConfig {
        cookie_threshold: usize::MAX,
        max_half_open: usize::MAX,
        ..EndpointConfig::default()
    };
    let mut a = Endpoint::new(cfg.clone(), [seed; 32]);
    let mut b = Endpoint::new(cfg, [seed.wrapping_add(1); 32]);
    for i in 0..BATCH {
        a.add_tunnel(tunnel(i, addr(1, i), addr(2, 0), "10.101.0.0/16", "10.102.0.0/16")).unwrap();
        b.add_tunnel(tunnel(i, addr(2, 0), addr(1, i), "10.102.0.0/16", "10.101.0.0/16")).unwrap();
    }
    (a, b)
}

/// Runs one batch of handshakes; returns (handshakes completed, CPU time and wall time spent
/// in the endpoints).
fn batch(seed: u8) -> (u32, Duration, Duration) {
    let (mut a, mut b) = pair(seed);
    let now = Instant::now();
    let start = Instant::now();
    let cpu = cpu_now();
    for i in 0..BATCH {
        a.initiate(&format!("t{i}"), now).unwrap();
    }
    let mut up = 0;
    loop {
        let mut progress = false;
        while let Some(t) = a.poll_transmit() {
            progress = true;
            b.handle_datagram(now, t.remote, t.local, &t.data);
        }
        while let Some(t) = b.poll_transmit() {
            progress = true;
            a.handle_datagram(now, t.remote, t.local, &t.data);
        }
        while let Some(e) = a.poll_event() {
            if matches!(e, Event::ChildSaUp { .. }) {
                up += 1;
            }
        }
        while b.poll_event().is_some() {}
        if !progress {
            break;
        }
    }
    (up, cpu_now() - cpu, start.elapsed())
}

fn x25519_rate() -> f64 {
    let mut rng = ChaCha20Rng::from_seed([9; 32]);
    let peer = DhSecret::generate(DhGroup::Curve25519, &mut rng).public();
    let n = 4000;
    let start = cpu_now();
    for _ in 0..n {
        let s = DhSecret::generate(DhGroup::Curve25519, &mut rng);
        black_box(s.public());
        black_box(s.shared(&peer).unwrap());
    }
    // Two operations per iteration: the public key and the shared secret.
    f64::from(2 * n) / (cpu_now() - start).as_secs_f64()
}

fn main() {
    // Warm up (page in code, fill caches).
    batch(1);
    let x_ops = x25519_rate();
    let mut total = 0;
    let mut spent = Duration::ZERO;
    let mut wall = Duration::ZERO;
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut seed = 10;
    while Instant::now() < deadline {
        let (n, d, w) = batch(seed);
        assert_eq!(n, BATCH, "every handshake must complete");
        total += n;
        spent += d;
        wall += w;
        seed = seed.wrapping_add(2);
    }
    let rate = f64::from(total) / spent.as_secs_f64();
    let x_ops2 = x25519_rate();
    let x = (x_ops + x_ops2) / 2.0;
    println!("BENCH ike_handshakes_per_sec {rate:.0} 1/s");
    println!(
        "  x25519 operations alone: {x:.0}/s in the same run (4 per handshake: bound {:.0} handshakes/s)",
        x / 4.0
    );
    println!(
        "  {total} handshakes (IKE_SA_INIT + IKE_AUTH with the first CHILD SA, x25519, PSK) in {:.2} s of CPU time, both peers on one thread; {:.0}/s by the wall clock",
        spent.as_secs_f64(),
        f64::from(total) / wall.as_secs_f64()
    );
    println!("  {:.0}% of the X25519 bound", 100.0 * rate / (x / 4.0));
    println!("  target >= 5000 1/s: {}", if rate >= 5000.0 { "met" } else { "NOT met" });
}

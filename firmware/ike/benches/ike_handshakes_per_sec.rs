//! Complete IKE_SA_INIT + IKE_AUTH handshakes (with the first CHILD SA) per second between two
//! in-memory endpoints on one core with PSK: Curve25519 (`aes256gcm16-prfsha256-x25519`), and
//! the cloud default `aes128-sha256-modp2048` and its `modp3072` sibling. Beside each, the rate
//! of the group's operations alone, measured in the same run: each handshake needs four (a key
//! pair and a shared secret on each side), which bounds the handshake rate.
//!
//! Time is the thread's CPU time (CLOCK_THREAD_CPUTIME_ID), so that other processes on a
//! shared machine do not distort the per-core figure; the wall-clock rate is printed too.

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use isthmus_ike::crypto::DhSecret;
use isthmus_ike::{DhGroup, Endpoint, EndpointConfig, Event, Psk, TunnelConfig, parse_ike_list};
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;

/// One measured configuration.
struct Case {
    /// The suffix of the BENCH name.
    name: &'static str,
    group: DhGroup,
    proposal: &'static str,
    /// Handshakes per batch.
    batch: u32,
    /// How long to measure.
    secs: u64,
}

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

fn tunnel(
    c: &Case,
    i: u32,
    local: SocketAddr,
    remote: SocketAddr,
    lts: &str,
    rts: &str,
) -> TunnelConfig {
    let mut t = TunnelConfig::new(
        &format!("t{i}"),
        local,
        remote,
        Psk::new(b"benchmark pre-shared key".to_vec()),
        vec![lts.parse().unwrap()],
        vec![rts.parse().unwrap()],
    );
    t.ike_proposals = parse_ike_list(c.proposal).unwrap();
    t
}

fn pair(c: &Case, seed: u8) -> (Endpoint, Endpoint) {
    let cfg = EndpointConfig {
        cookie_threshold: usize::MAX,
        max_half_open: usize::MAX,
        ..EndpointConfig::default()
    };
    let mut a = Endpoint::new(cfg.clone(), [seed; 32]);
    let mut b = Endpoint::new(cfg, [seed.wrapping_add(1); 32]);
    for i in 0..c.batch {
        a.add_tunnel(tunnel(c, i, addr(1, i), addr(2, 0), "10.101.0.0/16", "10.102.0.0/16"))
            .unwrap();
        b.add_tunnel(tunnel(c, i, addr(2, 0), addr(1, i), "10.102.0.0/16", "10.101.0.0/16"))
            .unwrap();
    }
    (a, b)
}

/// Runs one batch of handshakes; returns (handshakes completed, CPU time and wall time spent
/// in the endpoints).
fn batch(c: &Case, seed: u8) -> (u32, Duration, Duration) {
    let (mut a, mut b) = pair(c, seed);
    let now = Instant::now();
    let start = Instant::now();
    let cpu = cpu_now();
    for i in 0..c.batch {
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

/// The group's operations (a key pair and a shared secret) per second of CPU time, over at
/// least `n` iterations and two seconds.
fn group_rate(group: DhGroup, n: u32) -> f64 {
    let mut rng = ChaCha20Rng::from_seed([9; 32]);
    let peer = DhSecret::generate(group, &mut rng).public();
    let start = cpu_now();
    let mut done = 0;
    while done < n || cpu_now() - start < Duration::from_secs(2) {
        let s = DhSecret::generate(group, &mut rng);
        black_box(s.public());
        black_box(s.shared(&peer).unwrap());
        done += 1;
    }
    // Two operations per iteration: the public key and the shared secret.
    f64::from(2 * done) / (cpu_now() - start).as_secs_f64()
}

fn run(c: &Case) {
    // Warm up (page in code, fill caches).
    batch(c, 1);
    let ops_n = c.batch * 4;
    let ops1 = group_rate(c.group, ops_n);
    let mut total = 0;
    let mut spent = Duration::ZERO;
    let mut wall = Duration::ZERO;
    let deadline = Instant::now() + Duration::from_secs(c.secs);
    let mut seed = 10;
    while Instant::now() < deadline {
        let (n, d, w) = batch(c, seed);
        assert_eq!(n, c.batch, "every handshake must complete");
        total += n;
        spent += d;
        wall += w;
        seed = seed.wrapping_add(2);
    }
    let rate = f64::from(total) / spent.as_secs_f64();
    let ops = (ops1 + group_rate(c.group, ops_n)) / 2.0;
    let g = c.group.name();
    let bound = ops / 4.0;
    println!("BENCH ike_handshakes_per_sec{} {rate:.0} 1/s", c.name);
    println!(
        "  {g} operations alone: {ops:.0}/s in the same run (4 per handshake: bound {bound:.0} handshakes/s)"
    );
    println!(
        "  {total} handshakes (IKE_SA_INIT + IKE_AUTH with the first CHILD SA, {}, PSK) in {:.2} s of CPU time, both peers on one thread; {:.0}/s by the wall clock",
        c.proposal,
        spent.as_secs_f64(),
        f64::from(total) / wall.as_secs_f64()
    );
    let share = rate / bound;
    println!("  {:.0}% of the {g} bound", 100.0 * share);
    if c.group == DhGroup::Curve25519 {
        println!("  target >= 5000 1/s: {}", if rate >= 5000.0 { "met" } else { "NOT met" });
    } else {
        println!("  target >= 70% of the bound: {}", if share >= 0.7 { "met" } else { "NOT met" });
    }
}

fn main() {
    for c in [
        Case {
            name: "",
            group: DhGroup::Curve25519,
            proposal: "aes256gcm16-prfsha256-x25519",
            batch: 500,
            secs: 10,
        },
        Case {
            name: "_modp2048",
            group: DhGroup::Modp2048,
            proposal: "aes128-sha256-modp2048",
            batch: 50,
            secs: 5,
        },
        Case {
            name: "_modp3072",
            group: DhGroup::Modp3072,
            proposal: "aes128-sha256-modp3072",
            batch: 20,
            secs: 5,
        },
    ] {
        run(&c);
    }
}

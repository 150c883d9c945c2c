//! IKEv1 Main Mode (PSK) + Quick Mode handshakes per second between two in-memory peers on one
//! core, with `aes128-sha256-modp2048` for phase 1 and `aes128-sha256` for phase 2 (no PFS).
//! Beside it, the rate of MODP-2048 operations alone in the same run: a handshake needs four (a
//! key pair and a shared secret on each side), which bounds the handshake rate.
//!
//! Time is the thread's CPU time, so that other processes on a shared machine do not distort
//! the per-core figure.

use std::hint::black_box;
use std::time::Duration;

use isthmus_ike::crypto::DhSecret;
use isthmus_ike::v1::main_mode::{MainMode, Phase1Config, Step};
use isthmus_ike::v1::quick_mode::{QmStep, QuickConfig, QuickMode};
use isthmus_ike::{DhGroup, Psk, parse_esp_list, parse_ike_list};
use rand_chacha::ChaCha20Rng;
use rand_core::{RngCore, SeedableRng};

/// CPU time consumed by this thread.
fn cpu_now() -> Duration {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid, writable timespec; the clock id is a constant the kernel knows.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID) failed");
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

fn phase1(initiator: bool) -> Phase1Config {
    let (a, b) = ("192.0.2.1", "198.51.100.2");
    let (l, r) = if initiator { (a, b) } else { (b, a) };
    Phase1Config {
        proposals: parse_ike_list("aes128-sha256-modp2048").unwrap(),
        life: Duration::from_secs(28_800),
        psk: Psk::new(b"benchmark pre-shared key".to_vec()),
        local_id: l.parse().unwrap(),
        remote_id: r.parse().unwrap(),
        local: format!("{l}:500").parse().unwrap(),
        remote: format!("{r}:500").parse().unwrap(),
    }
}

fn quick(initiator: bool) -> QuickConfig {
    let (a, b) = ("10.1.0.0/16", "10.2.0.0/16");
    let (l, r) = if initiator { (a, b) } else { (b, a) };
    QuickConfig {
        proposals: parse_esp_list("aes128-sha256").unwrap(),
        life: Duration::from_secs(3600),
        local_ts: l.parse().unwrap(),
        remote_ts: r.parse().unwrap(),
        udp: false,
    }
}

/// One Main Mode + Quick Mode exchange, both sides on this thread.
fn handshake(rng: &mut ChaCha20Rng) {
    let (mut i, m1) = MainMode::initiate(phase1(true), rng).unwrap();
    let (mut r, m2) = MainMode::respond(phase1(false), &m1, rng).unwrap();
    let Step::Send(m3) = i.handle(&m2, rng).unwrap() else { panic!("message 3") };
    let Step::Send(m4) = r.handle(&m3, rng).unwrap() else { panic!("message 4") };
    let Step::Send(m5) = i.handle(&m4, rng).unwrap() else { panic!("message 5") };
    let Step::Done { send: Some(m6), sa: rsa } = r.handle(&m5, rng).unwrap() else { panic!("6") };
    let Step::Done { sa: isa, .. } = i.handle(&m6, rng).unwrap() else { panic!("done") };
    let mid = rng.next_u32() | 1;
    let (mut qi, q1) = QuickMode::initiate(&isa, quick(true), mid, rng.next_u32(), rng).unwrap();
    let (mut qr, q2) = QuickMode::respond(&rsa, &[quick(false)], &q1, rng.next_u32(), rng).unwrap();
    let QmStep::Done { send: Some(q3), child } = qi.handle(&isa, &q2).unwrap() else { panic!() };
    let QmStep::Done { child: c2, .. } = qr.handle(&rsa, &q3).unwrap() else { panic!() };
    assert_eq!(child.keymat_out[..], c2.keymat_in[..]);
    black_box((child, c2));
}

/// MODP-2048 operations (a key pair and a shared secret) per second of CPU time.
fn group_rate() -> f64 {
    let mut rng = ChaCha20Rng::from_seed([9; 32]);
    let peer = DhSecret::generate(DhGroup::Modp2048, &mut rng).public();
    let start = cpu_now();
    let mut done = 0u32;
    while cpu_now() - start < Duration::from_secs(3) {
        let s = DhSecret::generate(DhGroup::Modp2048, &mut rng);
        black_box(s.public());
        black_box(s.shared(&peer).unwrap());
        done += 1;
    }
    f64::from(2 * done) / (cpu_now() - start).as_secs_f64()
}

fn main() {
    let mut rng = ChaCha20Rng::from_seed([1; 32]);
    handshake(&mut rng);
    let ops1 = group_rate();
    let start = cpu_now();
    let mut n = 0u32;
    while cpu_now() - start < Duration::from_secs(8) {
        handshake(&mut rng);
        n += 1;
    }
    let spent = cpu_now() - start;
    let ops = (ops1 + group_rate()) / 2.0;
    let rate = f64::from(n) / spent.as_secs_f64();
    let bound = ops / 4.0;
    println!("BENCH ikev1_handshakes_per_sec {rate:.0} 1/s");
    println!(
        "  modp2048 operations alone: {ops:.0}/s in the same run (4 per handshake: bound {bound:.0} handshakes/s)"
    );
    println!(
        "  {n} handshakes (Main Mode with a PSK, aes128-sha256-modp2048, + Quick Mode, aes128-sha256) in {:.2} s of CPU time, both peers on one thread",
        spent.as_secs_f64()
    );
    let share = rate / bound;
    println!("  {:.0}% of the modp2048 bound", 100.0 * share);
    println!("  target >= 70% of the bound: {}", if share >= 0.7 { "met" } else { "NOT met" });
}

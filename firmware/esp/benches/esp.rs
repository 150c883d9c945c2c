//! ESP engine throughput on one core, against the raw AEAD it is built on.
//!
//! `BENCH esp_seal_open_ratio_1400`: encapsulate + decapsulate of 1400-byte inner packets, in
//! place as the dataplane does, divided by raw AES-GCM seal + open of 1400-byte payloads with the
//! same backend and key, measured in the same run. Rounds alternate and are timed in thread CPU
//! time (other processes on the machine preempt us; CPU time leaves that out); the best round of
//! each kept. `_copying` is the same with the copying API. `esp_encap_decap_gbps_N` are the
//! absolute rates of inner packets at 64, 512, 1400 and 8900 bytes; detail lines cover both
//! backends.
//!
//! Run: `cargo bench -p isthmus-esp --bench esp`.

use std::hint::black_box;
use std::time::{Duration, Instant};

use isthmus_esp::{
    Aead, AeadBackend, Backend, Cipher, HEADER_LEN, InboundSa, Lifetime, OutboundSa, SaConfig,
    max_overhead,
};

const ROUNDS: usize = 15;
const ROUND_TIME: Duration = Duration::from_millis(30);

fn config(backend: Backend) -> SaConfig {
    SaConfig {
        spi: 0x0bad_cafe,
        aead: Aead::Aes256Gcm16,
        backend,
        key: (0..36).collect(),
        esn: true,
        replay_window: 4096,
        lifetime: Lifetime::default(),
    }
}

fn inner_packet(len: usize) -> Vec<u8> {
    let mut p: Vec<u8> = (0..len).map(|i| i as u8).collect();
    p[0] = 0x45;
    p[2..4].copy_from_slice(&(len as u16).to_be_bytes());
    p
}

/// CPU time consumed by this thread, in nanoseconds. Other processes on the machine (builds,
/// tests) preempt the benchmark; thread CPU time leaves the time spent descheduled out, where
/// wall time would not.
fn thread_cpu_ns() -> u128 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_THREAD_CPUTIME_ID is always supported
    // on Linux, and the call writes nothing else.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID) failed");
    ts.tv_sec as u128 * 1_000_000_000 + ts.tv_nsec as u128
}

/// Runs `op` in batches for about `ROUND_TIME` of thread CPU time and returns nanoseconds of
/// CPU time per call.
fn time_round(mut op: impl FnMut()) -> f64 {
    let mut calls = 0u64;
    let start = thread_cpu_ns();
    let budget = ROUND_TIME.as_nanos();
    loop {
        for _ in 0..64 {
            op();
        }
        calls += 64;
        let el = thread_cpu_ns() - start;
        if el >= budget {
            return el as f64 / calls as f64;
        }
    }
}

struct Measure {
    raw_ns: f64,
    /// Raw seal+open of the ESP payload's length (packet, padding, trailer): what the AEAD
    /// inside the engine actually processes.
    raw_esp_len_ns: f64,
    esp_ns: f64,
    esp_in_place_ns: f64,
}

fn measure(backend: Backend, len: usize) -> Measure {
    let now = Instant::now();
    let cfg = config(backend);
    let aes_key = &cfg.key[..32];
    let raw = Cipher::new(Aead::Aes256Gcm16, backend, aes_key).unwrap();
    let tx = OutboundSa::new(cfg.clone(), now).unwrap();
    let rx = InboundSa::new(cfg.clone(), now).unwrap();
    let tx2 = OutboundSa::new(cfg.clone(), now).unwrap();
    let rx2 = InboundSa::new(cfg, now).unwrap();
    let inner = inner_packet(len);
    let mut wire = vec![0u8; len + max_overhead()];
    let mut back = vec![0u8; len + max_overhead()];
    let mut raw_buf = vec![0u8; len + 16];
    raw_buf[..len].copy_from_slice(&inner);
    let esp_payload = len + tx.overhead(len) - HEADER_LEN - 16;
    let mut raw_esp_buf = vec![0u8; esp_payload + 16];
    let mut in_place = vec![0u8; len + max_overhead()];
    in_place[HEADER_LEN..HEADER_LEN + len].copy_from_slice(&inner);
    let aad = [0u8; 12];
    let mut nonce = [0u8; 12];
    let mut counter = 0u64;

    let mut best = Measure {
        raw_ns: f64::MAX,
        raw_esp_len_ns: f64::MAX,
        esp_ns: f64::MAX,
        esp_in_place_ns: f64::MAX,
    };
    for _ in 0..ROUNDS {
        let r = time_round(|| {
            counter += 1;
            nonce[4..].copy_from_slice(&counter.to_be_bytes());
            raw.seal_in_place(&nonce, &aad, &mut raw_buf).unwrap();
            raw.open_in_place(&nonce, &aad, &mut raw_buf).unwrap();
            black_box(&raw_buf);
        });
        let e = time_round(|| {
            let n = tx.encapsulate(black_box(&inner), &mut wire, now).unwrap();
            let d = rx.decapsulate(&wire[..n], &mut back, now).unwrap();
            black_box(d);
        });
        // Decapsulating in place leaves the inner packet where encapsulating in place takes it
        // from, so the buffer is ready for the next round without a copy, as in the dataplane
        // (which reads packets straight into its buffers).
        let p = time_round(|| {
            let n = tx2.encapsulate_in_place(&mut in_place, len, now).unwrap();
            let d = rx2.decapsulate_in_place(&mut in_place[..n], now).unwrap();
            black_box(d);
        });
        let q = time_round(|| {
            counter += 1;
            nonce[4..].copy_from_slice(&counter.to_be_bytes());
            raw.seal_in_place(&nonce, &aad, &mut raw_esp_buf).unwrap();
            raw.open_in_place(&nonce, &aad, &mut raw_esp_buf).unwrap();
            black_box(&raw_esp_buf);
        });
        best.raw_ns = best.raw_ns.min(r);
        best.raw_esp_len_ns = best.raw_esp_len_ns.min(q);
        best.esp_ns = best.esp_ns.min(e);
        best.esp_in_place_ns = best.esp_in_place_ns.min(p);
    }
    // Sanity: what went through came back, both ways.
    let n = tx.encapsulate(&inner, &mut wire, now).unwrap();
    let d = rx.decapsulate(&wire[..n], &mut back, now).unwrap();
    assert_eq!(&back[..d.len], &inner[..]);
    assert_eq!(&in_place[HEADER_LEN..HEADER_LEN + len], &inner[..]);
    best
}

fn gbps(len: usize, ns: f64) -> f64 {
    len as f64 * 8.0 / ns
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` runs this too, quickly.
    if std::env::args().any(|a| a == "--test") {
        let m = measure(Backend::Ring, 64);
        assert!(m.esp_ns > 0.0);
        return;
    }
    let default = Backend::default();
    let mut ratio = 0.0;
    let mut copying_ratio = 0.0;
    // ESP_BENCH_ONLY=ring:64 narrows the run (for profiling).
    let only = std::env::var("ESP_BENCH_ONLY").unwrap_or_default();
    for backend in Backend::ALL {
        for len in [64usize, 512, 1400, 8900] {
            if !only.is_empty() && only != format!("{backend}:{len}") {
                continue;
            }
            let m = measure(backend, len);
            println!(
                "  {backend:>7} {len:>5} B: raw seal+open {:6.2} Gbit/s ({:7.1} ns) | esp in place {:6.2} Gbit/s ({:7.1} ns, ratio {:.3}) | esp copying {:6.2} Gbit/s ({:7.1} ns, ratio {:.3}) | raw at the ESP payload length {:7.1} ns",
                gbps(len, m.raw_ns),
                m.raw_ns,
                gbps(len, m.esp_in_place_ns),
                m.esp_in_place_ns,
                m.raw_ns / m.esp_in_place_ns,
                gbps(len, m.esp_ns),
                m.esp_ns,
                m.raw_ns / m.esp_ns,
                m.raw_esp_len_ns,
            );
            if backend == default {
                println!(
                    "BENCH esp_encap_decap_gbps_{len} {:.2} Gbit/s",
                    gbps(len, m.esp_in_place_ns)
                );
                if len == 1400 {
                    ratio = m.raw_ns / m.esp_in_place_ns;
                    copying_ratio = m.raw_ns / m.esp_ns;
                }
            }
        }
    }
    println!("BENCH esp_seal_open_ratio_1400 {ratio:.3} ratio");
    println!("BENCH esp_seal_open_ratio_1400_copying {copying_ratio:.3} ratio");
    println!(
        "  aes256gcm16 with ESN, one core, thread CPU time, backend {default}; the ratio and Gbit/s use the in-place API (encapsulate_in_place/decapsulate_in_place, the dataplane's path); _copying uses encapsulate/decapsulate into separate buffers"
    );
}

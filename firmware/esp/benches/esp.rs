//! ESP engine throughput on one core, against the raw primitives it is built on.
//!
//! `BENCH esp_seal_open_ratio_1400`: encapsulate + decapsulate of 1400-byte inner packets, in
//! place as the dataplane does, divided by raw AES-GCM seal + open of 1400-byte payloads with the
//! same backend and key, measured in the same run. Rounds alternate and are timed in thread CPU
//! time (other processes on the machine preempt us; CPU time leaves that out); the best round of
//! each kept. `_copying` is the same with the copying API. `esp_encap_decap_gbps_N` are the
//! absolute rates of inner packets at 64, 512, 1400 and 8900 bytes; detail lines cover both
//! backends.
//!
//! `esp_cbc_sha256_encap_decap_gbps_1400` is AES-256-CBC with HMAC-SHA2-256-128, and
//! `esp_cbc_sha256_vs_raw_ratio_1400` its ratio to raw AES-256-CBC encrypt + decrypt of the
//! packet rounded up to whole blocks plus two HMAC-SHA-256 over the same bytes (the sender's and
//! the receiver's). `esp_chacha20poly1305_encap_decap_gbps_1400` and its `_vs_raw_ratio_1400`
//! do the same against ring's raw ChaCha20-Poly1305 seal + open.
//!
//! Run: `cargo bench -p isthmus-esp --bench esp`.

use std::hint::black_box;
use std::time::{Duration, Instant};

use cbc::cipher::block_padding::NoPadding;
use cbc::cipher::{BlockDecryptMut, BlockEncryptMut, InnerIvInit};
use isthmus_esp::{
    Aead, AeadBackend, Backend, CbcCipher, Cipher, InboundSa, Integ, Lifetime, OutboundSa,
    SaConfig, Transform, max_overhead,
};

const ROUNDS: usize = 15;
const ROUND_TIME: Duration = Duration::from_millis(30);

const GCM: Transform = Transform::Aead(Aead::Aes256Gcm16);
const CHACHA: Transform = Transform::Aead(Aead::ChaCha20Poly1305);
const CBC_SHA256: Transform = Transform::Cbc(CbcCipher::Aes256, Integ::HmacSha256_128);

fn config(transform: Transform, backend: Backend) -> SaConfig {
    SaConfig {
        spi: 0x0bad_cafe,
        transform,
        backend,
        key: (0..transform.key_material_len() as u8).collect(),
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

/// The primitives an SA runs, called directly: seal then open in place (the buffer ends with
/// room for the tag), or CBC encrypt, HMAC, HMAC, decrypt. Keys inline, as in the engine.
#[allow(clippy::large_enum_variant)]
enum Raw {
    Aead(Cipher),
    Cbc(aes::Aes256, ring::hmac::Key),
}

impl Raw {
    fn new(cfg: &SaConfig) -> Raw {
        match cfg.transform {
            Transform::Aead(a) => {
                Raw::Aead(Cipher::new(a, cfg.backend, &cfg.key[..a.key_len()]).unwrap())
            }
            Transform::Cbc(CbcCipher::Aes256, i) => {
                use cbc::cipher::KeyInit;
                Raw::Cbc(
                    aes::Aes256::new_from_slice(&cfg.key[..32]).unwrap(),
                    ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &cfg.key[32..32 + i.key_len()]),
                )
            }
            t => panic!("no raw baseline for {t}"),
        }
    }

    /// The bytes `round` works on for `len` bytes of payload.
    fn buf_len(&self, len: usize) -> usize {
        match self {
            Raw::Aead(_) => len + 16,
            Raw::Cbc(..) => len.div_ceil(16) * 16,
        }
    }

    fn round(&self, counter: u64, buf: &mut [u8]) {
        match self {
            Raw::Aead(c) => {
                let mut nonce = [0u8; 12];
                nonce[4..].copy_from_slice(&counter.to_be_bytes());
                c.seal_in_place(&nonce, &[0u8; 12], buf).unwrap();
                c.open_in_place(&nonce, &[0u8; 12], buf).unwrap();
            }
            Raw::Cbc(k, mac) => {
                let mut iv = [0u8; 16];
                iv[8..].copy_from_slice(&counter.to_be_bytes());
                let n = buf.len();
                cbc::Encryptor::<aes::Aes256>::inner_iv_init(k.clone(), &iv.into())
                    .encrypt_padded_mut::<NoPadding>(buf, n)
                    .unwrap();
                black_box(ring::hmac::sign(mac, buf));
                black_box(ring::hmac::sign(mac, buf));
                cbc::Decryptor::<aes::Aes256>::inner_iv_init(k.clone(), &iv.into())
                    .decrypt_padded_mut::<NoPadding>(buf)
                    .unwrap();
            }
        }
    }
}

fn measure(transform: Transform, backend: Backend, len: usize) -> Measure {
    let now = Instant::now();
    let cfg = config(transform, backend);
    let raw = Raw::new(&cfg);
    let tx = OutboundSa::new(cfg.clone(), now).unwrap();
    let rx = InboundSa::new(cfg.clone(), now).unwrap();
    let tx2 = OutboundSa::new(cfg.clone(), now).unwrap();
    let rx2 = InboundSa::new(cfg, now).unwrap();
    let inner = inner_packet(len);
    let mut wire = vec![0u8; len + max_overhead()];
    let mut back = vec![0u8; len + max_overhead()];
    let mut raw_buf = vec![0u8; raw.buf_len(len)];
    raw_buf[..len].copy_from_slice(&inner);
    let esp_payload = len + tx.overhead(len) - transform.header_len() - transform.icv_len();
    let mut raw_esp_buf = vec![0u8; raw.buf_len(esp_payload)];
    let mut in_place = vec![0u8; len + max_overhead()];
    let hl = tx2.header_len();
    in_place[hl..hl + len].copy_from_slice(&inner);
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
            raw.round(counter, &mut raw_buf);
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
            raw.round(counter, &mut raw_esp_buf);
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
    assert_eq!(&in_place[hl..hl + len], &inner[..]);
    best
}

fn gbps(len: usize, ns: f64) -> f64 {
    len as f64 * 8.0 / ns
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` runs this too, quickly.
    if std::env::args().any(|a| a == "--test") {
        for t in [GCM, CHACHA, CBC_SHA256] {
            let m = measure(t, Backend::Ring, 64);
            assert!(m.esp_ns > 0.0);
        }
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
            let m = measure(GCM, backend, len);
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
    for (t, name) in [(CBC_SHA256, "cbc_sha256"), (CHACHA, "chacha20poly1305")] {
        if !only.is_empty() && only != name {
            continue;
        }
        let m = measure(t, Backend::Ring, 1400);
        println!(
            "  {t} 1400 B: raw {:6.2} Gbit/s ({:7.1} ns) | esp in place {:6.2} Gbit/s ({:7.1} ns) | raw at the ESP payload length {:7.1} ns",
            gbps(1400, m.raw_ns),
            m.raw_ns,
            gbps(1400, m.esp_in_place_ns),
            m.esp_in_place_ns,
            m.raw_esp_len_ns,
        );
        println!(
            "BENCH esp_{name}_encap_decap_gbps_1400 {:.2} Gbit/s",
            gbps(1400, m.esp_in_place_ns)
        );
        println!("BENCH esp_{name}_vs_raw_ratio_1400 {:.3} ratio", m.raw_ns / m.esp_in_place_ns);
    }
}

//! `config diff` of a 10,000-route configuration against a one-route change, as
//! `POST /config/diff` does it: parse both texts, render their canonical forms and diff them.
//!
//! - `config_diff_10k_routes_ms`: the time of one diff (median of 5): render both canonical
//!   forms and diff them;
//! - `config_diff_10k_routes_parse_ms`: parsing the two texts first, as the API also does;
//! - `config_diff_10k_routes_peak_mb`: the most heap it held at once above what the two texts
//!   took before, counted by a global allocator (the old LCS table needed ~10 GB here).

use std::alloc::{GlobalAlloc, Layout, System};
use std::fmt::Write;
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::Instant;

use isthmus_config::Config;

struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);
static PEAK: AtomicIsize = AtomicIsize::new(0);

fn grew(by: isize) {
    let now = LIVE.fetch_add(by, Ordering::Relaxed) + by;
    PEAK.fetch_max(now, Ordering::Relaxed);
}

// SAFETY: every method forwards to the system allocator with the caller's arguments
// unchanged; the counters are only bookkeeping.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        grew(l.size() as isize);
        // SAFETY: same contract as ours, passed through.
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE.fetch_sub(l.size() as isize, Ordering::Relaxed);
        // SAFETY: `p` was allocated by `System` with layout `l`.
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        grew(n as isize - l.size() as isize);
        // SAFETY: `p` was allocated by `System` with layout `l`.
        unsafe { System.realloc(p, l, n) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const ROUTES: usize = 10_000;

/// A gateway with one tunnel and `ROUTES` routes through it; route `changed` has metric 200.
fn config(changed: usize) -> String {
    let mut s = String::from(
        "[gateway]\nname = \"bench\"\n[gateway.wan]\ninterface = \"wan0\"\n\
         address = \"198.18.255.1/16\"\nnext_hop = \"198.18.255.254\"\n\
         [[gateway.lan]]\nname = \"app\"\ninterface = \"lan0\"\naddresses = [\"10.0.0.1/16\"]\n\
         [[customer_gateway]]\nname = \"dc\"\naddress = \"198.18.0.1\"\n\
         [[tunnel]]\nname = \"to-dc\"\ncustomer_gateway = \"dc\"\npsk = \"bench-psk-0123456789abcdef\"\n\
         [[tunnel.spd]]\nlocal = \"10.0.0.0/16\"\nremote = \"100.64.0.0/10\"\n\
         [[route_table]]\nname = \"vpn\"\nid = 100\nlans = [\"app\"]\n",
    );
    for i in 0..ROUTES {
        let metric = if i == changed { 200 } else { 100 };
        let _ = write!(
            s,
            "[[route_table.route]]\nprefix = \"100.{}.{}.0/24\"\ntunnel = \"to-dc\"\nmetric = {metric}\n",
            64 + i / 256,
            i % 256
        );
    }
    s
}

fn main() {
    let (old, new) = (config(usize::MAX), config(ROUTES / 2));
    let mut times = Vec::new();
    let mut parses = Vec::new();
    let mut peak = 0;
    let mut out = String::new();
    for _ in 0..5 {
        let base = LIVE.load(Ordering::Relaxed);
        PEAK.store(base, Ordering::Relaxed);
        let t0 = Instant::now();
        let a = Config::from_toml(&old).expect("valid");
        let b = Config::from_toml(&new).expect("valid");
        parses.push(t0.elapsed().as_secs_f64() * 1e3);
        let t0 = Instant::now();
        out = isthmus_config::diff::configs(&a, &b);
        times.push(t0.elapsed().as_secs_f64() * 1e3);
        drop((a, b));
        peak = peak.max(PEAK.load(Ordering::Relaxed) - base);
    }
    assert!(out.contains("route_table[vpn].route[to 100.83.136.0/24]"), "{out}");
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    println!("BENCH config_diff_10k_routes_ms {:.1} ms", median(&mut times));
    println!("BENCH config_diff_10k_routes_parse_ms {:.1} ms", median(&mut parses));
    println!("BENCH config_diff_10k_routes_peak_mb {:.1} MB", peak as f64 / (1 << 20) as f64);
}

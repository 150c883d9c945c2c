//! `BENCH tunnel_tcp_vs_plain_ratio`: TCP throughput (iperf3) from host-a to host-b through two
//! Isthmus dataplanes, divided by plain routed throughput between the same hosts on the same
//! namespaces and links, measured in the same run. Needs root (network namespaces); without it
//! the benchmark says so and exits.
//!
//! Plain routing: gw-a and gw-b route the LANs to each other over the WAN veth in clear
//! (kernel forwarding, no TUN). Tunnel: the same routes point into the TUN devices and the
//! dataplanes carry the traffic as ESP in UDP 4500.

#[path = "../tests/lab/mod.rs"]
mod lab;

use std::time::Duration;

use lab::{ChildGuard, LAN_A, LAN_B, Options};

/// Seconds per iperf3 run.
const SECONDS: u32 = 5;
/// Plain and tunnel runs alternate this many times; medians are compared, so a burst of other
/// load on the machine during one run does not decide the ratio.
const ROUNDS: usize = 3;

fn iperf(lab: &lab::Lab) -> f64 {
    let server = ChildGuard(lab.host_b.spawn("iperf3 -s -1 -B 10.32.2.2 >/dev/null 2>&1"));
    let mut last = String::new();
    for _ in 0..50 {
        std::thread::sleep(Duration::from_millis(100));
        let out = lab.host_a.sh_output(&format!("iperf3 -c 10.32.2.2 -t {SECONDS} -O 1 -J"));
        last = String::from_utf8_lossy(&out.stdout).into_owned();
        if out.status.success() {
            drop(server);
            return gbits(&last);
        }
        if !last.contains("Connection refused") && !last.contains("unable to connect") {
            break;
        }
    }
    drop(server);
    panic!("iperf3 failed: {last}");
}

/// The receiver's bits per second in iperf3's JSON, in Gbit/s.
fn gbits(json: &str) -> f64 {
    let v: serde_json::Value = serde_json::from_str(json).expect("iperf3 JSON");
    if let Some(r) = v["end"]["sum_sent"]["retransmits"].as_u64() {
        RETRANSMITS.fetch_add(r, std::sync::atomic::Ordering::Relaxed);
    }
    v["end"]["sum_received"]["bits_per_second"].as_f64().expect("sum_received") / 1e9
}

static RETRANSMITS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

fn main() {
    if !nix_is_root() {
        println!("  tunnel_tcp_vs_plain_ratio skipped: needs root (network namespaces)");
        return;
    }
    if std::process::Command::new("iperf3").arg("-v").output().is_err() {
        println!("  tunnel_tcp_vs_plain_ratio skipped: iperf3 is not installed");
        return;
    }
    let lab = lab::build(Options::default());

    let (mut plain, mut tunnel) = (Vec::new(), Vec::new());
    let (mut plain_rtx, mut tunnel_rtx) = (0, 0);
    let rtx = || RETRANSMITS.swap(0, std::sync::atomic::Ordering::Relaxed);
    for _ in 0..ROUNDS {
        // Plain routing: the LAN routes go over the WAN veth directly.
        lab.gw_a.sh(&format!("ip route replace {LAN_B} via 10.32.0.2 dev wa"));
        lab.gw_b.sh(&format!("ip route replace {LAN_A} via 10.32.0.1 dev wb"));
        plain.push(iperf(&lab));
        plain_rtx += rtx();
        // Through the dataplanes.
        lab.gw_a.sh(&format!("ip route replace {LAN_B} dev ist0"));
        lab.gw_b.sh(&format!("ip route replace {LAN_A} dev ist0"));
        tunnel.push(iperf(&lab));
        tunnel_rtx += rtx();
    }
    let c = lab.a.counters();
    let (p, t) = (median(&plain), median(&tunnel));

    println!("BENCH tunnel_tcp_vs_plain_ratio {:.3} ratio", t / p);
    println!(
        "  tunnel (ESP in UDP, AES-128-GCM, ring): {t:.2} Gbit/s (median; runs {})",
        list(&tunnel)
    );
    println!(
        "  plain routed, same namespaces:          {p:.2} Gbit/s (median; runs {})",
        list(&plain)
    );
    println!(
        "  gw-a: {} reads from TUN, {} ESP packets to the WAN, drops {:?}; {ROUNDS} x {SECONDS} s per path",
        c.io.tun_rx, c.io.wan_tx, c.drops
    );
    println!("  TCP retransmits: tunnel {tunnel_rtx}, plain {plain_rtx}");
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn list(v: &[f64]) -> String {
    v.iter().map(|x| format!("{x:.2}")).collect::<Vec<_>>().join(" ")
}

fn nix_is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

//! `BENCH tunnel_tcp_vs_plain_ratio`: TCP throughput (iperf3) from host-a to host-b through two
//! Isthmus dataplanes, divided by plain routed throughput between the same hosts on the same
//! namespaces and links, measured in the same run. Needs root (network namespaces); without it
//! the benchmark says so and exits.
//!
//! Plain routing: gw-a and gw-b route the LANs to each other over the WAN veth in clear
//! (kernel forwarding, no TUN). Tunnel: the same routes point into the TUN devices and the
//! dataplanes carry the traffic as ESP in UDP 4500, with no security-group table (the
//! default). `BENCH tunnel_sg_tcp_vs_plain_ratio`: the same tunnel with a stateful security
//! group and network ACLs of 1,000 rules each bound to the tunnel on both gateways, so every
//! packet also passes the flow table (and the ACLs) in both directions.
//! `BENCH tunnel_tcp_vs_plain_ratio_cbc`: the tunnel with AES-256-CBC and HMAC-SHA2-256-128 SAs
//! instead of AES-128-GCM, against plain runs measured beside it.

#[path = "../tests/lab/mod.rs"]
mod lab;

use std::time::Duration;

use isthmus_dataplane::{Drop, Io, SgTable};
use isthmus_esp::{CbcCipher, Integ, Transform};
use isthmus_tables::PortRange;
use isthmus_tables::sg::{Action, ChainKind, ChainSpec, Direction, Rule};
use lab::{ChildGuard, LAN_A, LAN_B, Options};

/// Rules per chain of the security-group table.
const RULES: usize = 1_000;

/// A stateful group and network ACLs on tunnel `t1`: `RULES` deny rules for other networks,
/// then the rule that admits the benchmark's traffic.
fn sg_table(generation: u64) -> SgTable {
    let rules = |tag: &str, allow: Rule| {
        let mut v: Vec<Rule> = (0..RULES - 1)
            .map(|i| Rule {
                src: format!("10.{}.{}.0/24", 100 + i / 256, i % 256).parse().unwrap(),
                dst: "0.0.0.0/0".parse().unwrap(),
                proto: Some(6),
                src_ports: PortRange::ANY,
                dst_ports: PortRange { first: 1 + i as u16, last: 1 + i as u16 },
                action: Action::Deny,
                id: format!("{tag}/deny-{i}"),
            })
            .collect();
        v.push(allow);
        v
    };
    let allow = |id: &str| Rule {
        src: "10.32.0.0/16".parse().unwrap(),
        dst: "10.32.0.0/16".parse().unwrap(),
        proto: Some(6),
        src_ports: PortRange::ANY,
        dst_ports: PortRange::ANY,
        action: Action::Allow,
        id: id.into(),
    };
    let chain = |kind, direction, tag: &str| ChainSpec {
        attachment: "t1".into(),
        kind,
        direction,
        rules: rules(tag, allow(&format!("{tag}/allow-lan"))),
        default_action: Action::Deny,
        default_rule: format!("{tag}/default"),
    };
    SgTable::build(
        generation,
        &[
            chain(ChainKind::SecurityGroup, Direction::Inbound, "sg:in"),
            chain(ChainKind::SecurityGroup, Direction::Outbound, "sg:out"),
            chain(ChainKind::NetworkAcl, Direction::Inbound, "acl:in"),
            chain(ChainKind::NetworkAcl, Direction::Outbound, "acl:out"),
        ],
    )
    .expect("benchmark SG table")
}

/// Seconds per iperf3 run.
const SECONDS: u32 = 5;
/// Plain and tunnel runs alternate this many times; medians are compared, so a burst of other
/// load on the machine during one run does not decide the ratio.
const ROUNDS: usize = 3;

/// One iperf3 run: throughput and the CPU it cost.
#[derive(Clone, Copy)]
struct Run {
    gbits: f64,
    /// Cores busy on the whole machine, on average over the run (all processes, kernel too).
    busy_cores: f64,
    /// Cores used by the dataplanes' packet threads (both gateways), on average.
    dataplane_cores: f64,
}

impl Run {
    /// Core-seconds the machine spent per gigabyte carried.
    fn cpu_per_gb(&self) -> f64 {
        self.busy_cores / (self.gbits / 8.0)
    }
}

/// Busy time of all CPUs from `/proc/stat`, in clock ticks.
fn machine_busy_ticks() -> u64 {
    let stat = std::fs::read_to_string("/proc/stat").expect("/proc/stat");
    let v: Vec<u64> = stat
        .lines()
        .next()
        .unwrap()
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal: idle and iowait are not busy.
    v.iter().take(8).sum::<u64>() - v[3] - v[4]
}

/// CPU time of this process's packet threads (`isthmus-tun`, `isthmus-udp`, `isthmus-esp`), in
/// clock ticks.
fn worker_ticks() -> u64 {
    let mut ticks = 0;
    for t in std::fs::read_dir("/proc/self/task").expect("/proc/self/task").flatten() {
        let Ok(stat) = std::fs::read_to_string(t.path().join("stat")) else { continue };
        // pid (comm) state ...: utime and stime are fields 14 and 15.
        let Some((head, rest)) = stat.rsplit_once(") ") else { continue };
        if !["isthmus-tun", "isthmus-udp", "isthmus-esp"].iter().any(|c| head.ends_with(c)) {
            continue;
        }
        let f: Vec<u64> = rest.split_whitespace().filter_map(|x| x.parse().ok()).collect();
        // `rest` starts at field 3 (state, not a number), so utime/stime are f[10], f[11].
        ticks += f.get(10).copied().unwrap_or(0) + f.get(11).copied().unwrap_or(0);
    }
    ticks
}

fn iperf(lab: &lab::Lab) -> Run {
    let busy0 = machine_busy_ticks();
    let w0 = worker_ticks();
    let start = std::time::Instant::now();
    let gbits = iperf_gbits(lab);
    let wall = start.elapsed().as_secs_f64();
    let (busy1, w1) = (machine_busy_ticks(), worker_ticks());
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let cores = |ticks: u64| ticks as f64 / hz / wall;
    Run { gbits, busy_cores: cores(busy1 - busy0), dataplane_cores: cores(w1 - w0) }
}

fn iperf_gbits(lab: &lab::Lab) -> f64 {
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

    let (mut plain, mut tunnel, mut tunnel_sg) = (Vec::new(), Vec::new(), Vec::new());
    let (mut plain_rtx, mut tunnel_rtx, mut sg_rtx) = (0, 0, 0);
    let mut generation = 0;
    let mut publish = |sg: bool| {
        generation += 1;
        for dp in [&lab.a, &lab.b] {
            let t = if sg { sg_table(generation) } else { SgTable::empty(generation) };
            dp.publish_sg(t).expect("publish SG table");
        }
    };
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
        publish(false);
        tunnel.push(iperf(&lab));
        tunnel_rtx += rtx();
        // And with security groups and network ACLs on the tunnel.
        publish(true);
        tunnel_sg.push(iperf(&lab));
        sg_rtx += rtx();
    }
    let c = lab.a.counters();
    let (pr, tr, tsr) = (median(&plain), median(&tunnel), median(&tunnel_sg));
    let (p, t, ts) = (pr.gbits, tr.gbits, tsr.gbits);

    println!("BENCH tunnel_tcp_vs_plain_ratio {:.3} ratio", t / p);
    println!("BENCH tunnel_sg_tcp_vs_plain_ratio {:.3} ratio", ts / p);
    println!(
        "  tunnel with SG + NACL ({RULES} rules per chain, 4 chains): {ts:.2} Gbit/s (median; runs {})",
        list(&tunnel_sg)
    );
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
        c.io[Io::TunRx],
        c.io[Io::WanTx],
        c.drops
    );
    let cb = lab.b.counters();
    println!(
        "  gw-b (the receiver's side): {} ESP packets from the WAN, {} writes to TUN; {} reads from TUN (the ACKs), {} ESP packets back",
        cb.io[Io::WanRx],
        cb.io[Io::TunTx],
        cb.io[Io::TunRx],
        cb.io[Io::WanTx]
    );
    println!(
        "  gw-a flow table: {} hits, {} misses, {} flows created, {} re-evaluated after swaps; SG/NACL drops {}",
        c.flows.hits,
        c.flows.misses,
        c.flows.created,
        c.flows.revalidated,
        c.drops[Drop::NaclIn] + c.drops[Drop::NaclOut] + c.drops[Drop::SgIn] + c.drops[Drop::SgOut]
    );
    println!("  TCP retransmits: tunnel {tunnel_rtx}, tunnel+SG {sg_rtx}, plain {plain_rtx}");
    // Where the CPU goes: with every core busy, throughput is the cores divided by the CPU
    // each gigabyte costs, so the ratio of the costs bounds the throughput ratio.
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!(
        "  CPU (machine, {cores} cores): plain {:.2} cores busy, {:.3} core-s/GB; tunnel {:.2} cores busy, {:.3} core-s/GB, of which the dataplanes' packet threads {:.2} cores, {:.3} core-s/GB",
        pr.busy_cores,
        pr.cpu_per_gb(),
        tr.busy_cores,
        tr.cpu_per_gb(),
        tr.dataplane_cores,
        tr.dataplane_cores / (tr.gbits / 8.0)
    );
    println!(
        "  CPU cost per byte, plain / tunnel: {:.3} (the throughput ratio when both paths are CPU-bound)",
        pr.cpu_per_gb() / tr.cpu_per_gb()
    );
    drop(lab);
    cbc();
}

/// `BENCH tunnel_tcp_vs_plain_ratio_cbc`: the same comparison with AES-256-CBC and
/// HMAC-SHA2-256-128 SAs (the defaults of cloud VPN gateways, docs/interop.md), on a lab of its
/// own with plain runs of its own.
fn cbc() {
    let t = Transform::Cbc(CbcCipher::Aes256, Integ::HmacSha256_128);
    let lab = lab::build(Options { transform: t, ..Options::default() });
    let (mut plain, mut tunnel) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        lab.gw_a.sh(&format!("ip route replace {LAN_B} via 10.32.0.2 dev wa"));
        lab.gw_b.sh(&format!("ip route replace {LAN_A} via 10.32.0.1 dev wb"));
        plain.push(iperf(&lab));
        lab.gw_a.sh(&format!("ip route replace {LAN_B} dev ist0"));
        lab.gw_b.sh(&format!("ip route replace {LAN_A} dev ist0"));
        tunnel.push(iperf(&lab));
    }
    let (p, tr) = (median(&plain).gbits, median(&tunnel));
    println!("BENCH tunnel_tcp_vs_plain_ratio_cbc {:.3} ratio", tr.gbits / p);
    println!(
        "  tunnel (ESP in UDP, {t}): {:.2} Gbit/s (median; runs {}), packet threads {:.2} cores; plain {p:.2} Gbit/s (runs {}); TCP retransmits {}",
        tr.gbits,
        list(&tunnel),
        tr.dataplane_cores,
        list(&plain),
        RETRANSMITS.swap(0, std::sync::atomic::Ordering::Relaxed)
    );
}

/// The run with the median throughput.
fn median(v: &[Run]) -> Run {
    let mut v = v.to_vec();
    v.sort_by(|a, b| a.gbits.total_cmp(&b.gbits));
    v[v.len() / 2]
}

fn list(v: &[Run]) -> String {
    v.iter().map(|x| format!("{:.2}", x.gbits)).collect::<Vec<_>>().join(" ")
}

fn nix_is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

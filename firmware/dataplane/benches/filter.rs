//! The per-packet cost of security groups and network ACLs on the packet path, as the workers
//! pay it (`PacketFilter` is the workers' filter: sharded flow table behind per-shard locks,
//! echo pairing, tunnel attachment):
//!
//! - `BENCH dataplane_filter_empty_ns`: a packet when no table is bound (the default);
//! - `BENCH dataplane_filter_hit_ns`: a packet of an established flow, 10,000 live flows, a
//!   stateful group and network ACLs of 1,000 rules each in both directions;
//! - `BENCH dataplane_filter_new_flow_ns`: the first packet of a new flow under the same table
//!   (ACL and group classification, flow creation).

use std::hint::black_box;
use std::time::Instant;

use isthmus_dataplane::{FlowConfig, PacketFilter, SgTable};
use isthmus_tables::sg::{Action, AttachmentId, ChainKind, ChainSpec, Direction, Rule};
use isthmus_tables::{FlowKey, PortRange};

const RULES: usize = 1_000;
const FLOWS: u32 = 10_000;

fn table(generation: u64) -> SgTable {
    let chain = |kind, direction, tag: &str| {
        let mut rules: Vec<Rule> = (0..RULES - 1)
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
        rules.push(Rule {
            src: "10.61.0.0/16".parse().unwrap(),
            dst: "10.61.0.0/16".parse().unwrap(),
            proto: Some(6),
            src_ports: PortRange::ANY,
            dst_ports: PortRange::ANY,
            action: Action::Allow,
            id: format!("{tag}/allow"),
        });
        ChainSpec {
            attachment: "t1".into(),
            kind,
            direction,
            rules,
            default_action: Action::Deny,
            default_rule: format!("{tag}/default"),
        }
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
    .expect("benchmark table")
}

fn flow(i: u32) -> FlowKey {
    FlowKey {
        src: std::net::Ipv4Addr::new(10, 61, 1, (i % 250) as u8 + 1).into(),
        dst: std::net::Ipv4Addr::new(10, 61, 2, (i / 250 % 250) as u8 + 1).into(),
        proto: 6,
        src_port: 20_000 + (i / 62_500) as u16 + (i % 40_000) as u16,
        dst_port: 443,
    }
}

/// Nanoseconds per call of `f` over `n` calls, best of three rounds.
fn per_call(n: u32, mut f: impl FnMut(u32) -> bool) -> f64 {
    (0..3)
        .map(|_| {
            let t = Instant::now();
            let mut pass = 0u32;
            for i in 0..n {
                pass += u32::from(black_box(f(i)));
            }
            black_box(pass);
            t.elapsed().as_nanos() as f64 / f64::from(n)
        })
        .fold(f64::INFINITY, f64::min)
}

fn main() {
    let t1 = AttachmentId::of("t1");
    let now = Instant::now();
    let cfg = FlowConfig::default();

    let mut empty = PacketFilter::new(SgTable::empty(0), &[], &cfg, 64);
    let ns = per_call(1_000_000, |i| empty.check(t1, Direction::Outbound, &flow(i % FLOWS), now));
    println!("BENCH dataplane_filter_empty_ns {ns:.1} ns");

    let mut f = PacketFilter::new(table(1), &[], &cfg, 64);
    for i in 0..FLOWS {
        assert!(f.check(t1, Direction::Outbound, &flow(i), now), "flow {i} allowed");
        assert!(f.check(t1, Direction::Inbound, &flow(i).reversed(), now), "reply {i}");
    }
    // Alternate directions over the live flows (a pseudo-random walk, not sequential).
    let mut x = 1u32;
    let ns = per_call(2_000_000, |i| {
        x = x.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
        let k = flow(x % FLOWS);
        if i & 1 == 0 {
            f.check(t1, Direction::Outbound, &k, now)
        } else {
            f.check(t1, Direction::Inbound, &k.reversed(), now)
        }
    });
    println!("BENCH dataplane_filter_hit_ns {ns:.1} ns");
    let (c, live) = f.flows();
    println!(
        "  {live} live flows, 4 chains of {RULES} rules, 64 shards; {} hits, {} misses",
        c.hits, c.misses
    );

    let mut round = 0u64;
    let ns = (0..3)
        .map(|_| {
            round += 1;
            let mut g = PacketFilter::new(table(round), &[], &cfg, 64);
            let t = Instant::now();
            for i in 0..FLOWS {
                black_box(g.check(t1, Direction::Outbound, &flow(i), now));
            }
            t.elapsed().as_nanos() as f64 / f64::from(FLOWS)
        })
        .fold(f64::INFINITY, f64::min);
    println!("BENCH dataplane_filter_new_flow_ns {ns:.1} ns");
    println!("  first packet of {FLOWS} distinct flows into a fresh flow table, best of 3");
}

//! Native evaluator benchmarks: classifying a new flow against 10,000 compiled rules, and a
//! packet of a known flow through the flow table.

mod support;

use std::hint::black_box;
use std::time::Instant;

use isthmus_tables::flow::{FlowConfig, FlowTable, Outcome};
use isthmus_tables::sg::{Action, AttachmentId, Chain, ChainKind, ChainSpec, Direction, SgTable};
use support::{Rng, chain_rules, flows};

fn ns_per(iters: usize, f: impl FnMut()) -> f64 {
    let mut f = f;
    let t = Instant::now();
    for _ in 0..iters {
        f();
    }
    t.elapsed().as_nanos() as f64 / iters as f64
}

fn main() {
    let mut rng = Rng(0x00be_7c40_0000_0001);
    let rules = chain_rules(&mut rng, 10_000);
    let spec = ChainSpec {
        attachment: "lan0".into(),
        kind: ChainKind::SecurityGroup,
        direction: Direction::Inbound,
        rules: rules.clone(),
        default_action: Action::Deny,
        default_rule: "sg:default-deny-inbound".into(),
    };
    let t = Instant::now();
    let chain = Chain::build(&spec).unwrap();
    let build_ms = t.elapsed().as_secs_f64() * 1e3;
    let keys = flows(&mut rng, &rules, 1 << 16);

    // Check the classifier against a linear scan on a sample, so the number is for right answers.
    let mut matched = 0;
    for k in keys.iter().take(2000) {
        let want = rules.iter().position(|r| r.matches(k));
        let got = match chain.evaluate(k).rule {
            isthmus_tables::sg::RuleRef::Rule(i) => Some(i as usize),
            _ => None,
        };
        assert_eq!(got, want);
        matched += usize::from(want.is_some());
    }

    let mask = keys.len() - 1;
    let mut i = 0usize;
    // Warm up, then measure.
    ns_per(1_000_000, || {
        black_box(chain.evaluate(black_box(&keys[i & mask])));
        i += 1;
    });
    let classify = (0..5)
        .map(|_| {
            ns_per(2_000_000, || {
                black_box(chain.evaluate(black_box(&keys[i & mask])));
                i += 1;
            })
        })
        .fold(f64::INFINITY, f64::min);
    println!("BENCH sg_new_flow_ns_10k {classify:.1} ns");
    println!(
        "  10000 rules, chain built in {build_ms:.1} ms; {matched}/2000 sampled flows match a rule"
    );

    // A new flow through the whole flow-table path (NACL + SG classification + insert).
    let table = SgTable::build(1, &[spec]).unwrap();
    let lan0 = AttachmentId::of("lan0");
    let mut ft = FlowTable::new(FlowConfig { capacity: 1 << 20, ..FlowConfig::default() });
    let mut n = 0u64;
    let newflow = ns_per(500_000, || {
        let mut k = keys[(n as usize) & mask];
        k.src_port = (n >> 16) as u16;
        k.dst_port ^= 1;
        black_box(ft.process(&table, lan0, Direction::Inbound, &k, 0));
        n += 1;
    });
    println!("  new flow incl. flow-table insert: {newflow:.1} ns");

    // Known flows: 10,000 established flows, packets in random order.
    let out_table = SgTable::build(1, &[]).unwrap();
    let mut ft = FlowTable::new(FlowConfig::default());
    let established: Vec<_> = keys.iter().take(10_000).copied().collect();
    for k in &established {
        assert_eq!(ft.process(&out_table, lan0, Direction::Outbound, k, 0).outcome, Outcome::Allow);
    }
    let order: Vec<usize> =
        (0..1 << 16).map(|_| rng.below(established.len() as u64) as usize).collect();
    let mut j = 0usize;
    let hit = (0..5)
        .map(|_| {
            ns_per(2_000_000, || {
                let k = &established[order[j & 0xffff]];
                black_box(ft.process(&out_table, lan0, Direction::Outbound, black_box(k), 1));
                j += 1;
            })
        })
        .fold(f64::INFINITY, f64::min);
    assert!(ft.counters().hits > 0);
    println!("BENCH flow_cache_hit_ns {hit:.1} ns");
    println!("  10000 established flows, random order");
}

//! Shared rule and flow generators of the benchmarks.
#![allow(dead_code)]

use std::net::IpAddr;

use isthmus_policy::{SgGroup, SgRule};
use isthmus_tables::sg::{Action, Direction, Rule};
use isthmus_tables::{FlowKey, PortRange, Prefix};

/// xorshift64*.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// A realistic peer prefix: mostly customer subnets (/16–/32 in 10.0.0.0/8), some wide ones.
pub fn peer(rng: &mut Rng) -> Prefix {
    let len = [8u8, 16, 20, 24, 24, 24, 28, 32, 32, 0][rng.below(10) as usize];
    let a = 0x0a00_0000 | (rng.below(1 << 24) as u32);
    Prefix::new(IpAddr::V4(a.into()), len).unwrap_or(Prefix::host(IpAddr::V4(a.into())))
}

pub fn ports(rng: &mut Rng) -> PortRange {
    match rng.below(6) {
        0 => PortRange::ANY,
        1 => PortRange { first: 1024, last: 65535 },
        2 => {
            let a = rng.below(60000) as u16;
            PortRange { first: a, last: a + rng.below(100) as u16 }
        }
        _ => PortRange::single(
            [22u16, 53, 80, 443, 3306, 5432, 8080, 8443][rng.below(8) as usize]
                + (rng.below(8) as u16) * 1000,
        ),
    }
}

/// `n` compiled rules (as a security-group plugin emits them) for one chain.
pub fn chain_rules(rng: &mut Rng, n: usize) -> Vec<Rule> {
    let any: Prefix = "0.0.0.0/0".parse().unwrap();
    (0..n)
        .map(|i| {
            let proto = [Some(6u8), Some(6), Some(17), None][rng.below(4) as usize];
            Rule {
                src: peer(rng),
                dst: if rng.below(4) == 0 { peer(rng) } else { any },
                proto,
                src_ports: PortRange::ANY,
                dst_ports: if proto.is_some() { ports(rng) } else { PortRange::ANY },
                action: if rng.below(5) == 0 { Action::Deny } else { Action::Allow },
                id: format!("rule-{i}"),
            }
        })
        .collect()
}

/// Operator groups totalling `n` rules, attached to `lan0`.
pub fn groups(rng: &mut Rng, n: usize) -> Vec<SgGroup> {
    let per = 1000;
    (0..n.div_ceil(per))
        .map(|g| SgGroup {
            name: format!("group-{g}"),
            attach: vec!["lan0".into()],
            rules: (0..per.min(n - g * per))
                .map(|i| {
                    let protocol = [Some(6u8), Some(6), Some(17), None][rng.below(4) as usize];
                    SgRule {
                        id: format!("r{i}"),
                        priority: rng.below(1000) as u32,
                        direction: if rng.below(2) == 0 {
                            Direction::Inbound
                        } else {
                            Direction::Outbound
                        },
                        action: if rng.below(5) == 0 { Action::Deny } else { Action::Allow },
                        protocol,
                        peer: peer(rng),
                        ports: if protocol.is_some() { ports(rng) } else { PortRange::ANY },
                    }
                })
                .collect(),
        })
        .collect()
}

/// Packets: half aimed inside a random rule's prefixes, half anywhere in 10.0.0.0/8.
pub fn flows(rng: &mut Rng, rules: &[Rule], n: usize) -> Vec<FlowKey> {
    (0..n)
        .map(|_| {
            let addr = |rng: &mut Rng, p: Option<&Prefix>| -> IpAddr {
                match p.map(|p| (p.addr(), p.len())) {
                    Some((IpAddr::V4(a), len)) => {
                        let host = if len == 32 { 0 } else { u32::MAX >> len };
                        IpAddr::V4((u32::from(a) | (rng.next() as u32 & host)).into())
                    }
                    _ => IpAddr::V4((0x0a00_0000 | rng.below(1 << 24) as u32).into()),
                }
            };
            let r = if rng.below(2) == 0 && !rules.is_empty() {
                Some(&rules[rng.below(rules.len() as u64) as usize])
            } else {
                None
            };
            FlowKey {
                src: addr(rng, r.map(|r| &r.src)),
                dst: addr(rng, r.map(|r| &r.dst)),
                proto: r.and_then(|r| r.proto).unwrap_or(6),
                src_port: 1024 + rng.below(60000) as u16,
                dst_port: r.map_or(443, |r| r.dst_ports.first),
            }
        })
        .collect()
}

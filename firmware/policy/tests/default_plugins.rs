//! Each default plugin against the native reference implementation of its documented semantics,
//! on randomized inputs: identical tables, identical verdicts, identical alarm actions.

mod common;

use std::sync::Arc;
use std::time::Instant;

use common::*;
use isthmus_policy::reference::{AlarmNotify, sg_compile, spd_order};
use isthmus_policy::{
    AlarmAction, AlarmEvent, Capability, Clock, EventKind, Hook, Limits, PolicyTables, Severity,
    SgGroup, SgRule, SpdPolicy, Supervisor,
};
use isthmus_tables::flow::{FlowConfig, FlowTable, Outcome, Reason};
use isthmus_tables::sg::{Action, AttachmentId, ChainKind, Direction, SgTable};
use isthmus_tables::spd::{Selector, SpdAction};
use isthmus_tables::{FlowKey, PortRange};

fn supervisor() -> Supervisor {
    Supervisor::new(Arc::new(PolicyTables::new()), Limits::default())
}

fn tunnels() -> Vec<(String, Vec<String>)> {
    vec![("dc1".into(), vec!["web".into(), "db".into()]), ("dc2".into(), vec!["all".into()])]
}

fn random_policies(rng: &mut Rng, n: usize) -> Vec<SpdPolicy> {
    (0..n)
        .map(|i| {
            let v6 = rng.below(6) == 0;
            let action = match rng.below(6) {
                0 => SpdAction::Bypass,
                1 => SpdAction::Discard,
                2 | 3 => SpdAction::Protect {
                    tunnel: "dc1".into(),
                    child: rng.pick(&["web", "db"]).into(),
                },
                _ => SpdAction::Protect { tunnel: "dc2".into(), child: "all".into() },
            };
            SpdPolicy {
                id: format!("policy-{i}"),
                selector: Selector {
                    local: prefix(rng, v6),
                    remote: prefix(rng, v6),
                    proto: rng.pick(&[None, Some(6), Some(17)]),
                    local_ports: if rng.below(3) == 0 { ports(rng) } else { PortRange::ANY },
                    remote_ports: ports(rng),
                },
                action,
                // Ties on purpose: few distinct priorities.
                priority: if rng.below(3) == 0 { Some(rng.below(4) as u32 * 10) } else { None },
            }
        })
        .collect()
}

#[test]
fn spd_selectors_matches_the_reference_on_random_policies() {
    let k = keys();
    let host = host();
    let sup = supervisor();
    sup.install(load(&host, "spd_selectors", Hook::Spd, &k));
    let mut rng = Rng(0x5bd1_e995_0000_0001);
    for round in 0..20 {
        let n = [0, 1, 5, 50, 300][round % 5];
        let policies = random_policies(&mut rng, n);
        let generation = sup.compile_spd(&policies, &tunnels(), Instant::now()).unwrap();
        let table = sup.tables().spd();
        assert_eq!(table.generation, generation);
        let want = spd_order(&policies);
        assert_eq!(table.entries, want, "round {round}: plugin and reference order differ");
        // And so every lookup agrees.
        let reference = isthmus_tables::spd::SpdTable::new(generation, want);
        for _ in 0..500 {
            let near = policies
                .get(rng.below(n as u64) as usize)
                .map(|p| (&p.selector.local, &p.selector.remote));
            let v6 = rng.below(6) == 0;
            let f = flow(&mut rng, v6, near);
            assert_eq!(
                table.lookup(&f).map(|(i, e)| (i, e.id.clone())),
                reference.lookup(&f).map(|(i, e)| (i, e.id.clone()))
            );
        }
    }
}

fn random_groups(rng: &mut Rng, kind: &str, n: usize, atts: &[&str], punt: bool) -> Vec<SgGroup> {
    (0..n)
        .map(|g| {
            let rules = (0..rng.below(30) as usize)
                .map(|i| {
                    let protocol = rng.pick(&[None, Some(6), Some(17), Some(1)]);
                    SgRule {
                        id: format!("r{i}"),
                        priority: rng.below(5) as u32 * 100,
                        direction: rng.pick(&[Direction::Inbound, Direction::Outbound]),
                        action: if punt && rng.below(5) == 0 {
                            Action::Punt
                        } else {
                            rng.pick(&[Action::Allow, Action::Allow, Action::Deny])
                        },
                        protocol,
                        peer: {
                            let v6 = rng.below(6) == 0;
                            prefix(rng, v6)
                        },
                        ports: if protocol.is_some() { ports(rng) } else { PortRange::ANY },
                    }
                })
                .collect();
            let mut attach = vec![rng.pick(atts).to_owned()];
            if kind == "sg" && rng.below(2) == 0 {
                attach.push(rng.pick(atts).to_owned());
            }
            SgGroup { name: format!("{kind}{g}"), attach, rules }
        })
        .collect()
}

fn compare_tables(rng: &mut Rng, got: &SgTable, want: &SgTable, atts: &[&str]) {
    for _ in 0..3000 {
        let att = AttachmentId::of(rng.pick(atts));
        let kind = rng.pick(&[ChainKind::SecurityGroup, ChainKind::NetworkAcl]);
        let dir = rng.pick(&[Direction::Inbound, Direction::Outbound]);
        let v6 = rng.below(6) == 0;
        let f = flow(rng, v6, None);
        let a = got.evaluate(att, kind, dir, &f);
        let b = want.evaluate(att, kind, dir, &f);
        assert_eq!(a.action, b.action, "{kind:?} {dir:?} {f:?}");
        assert_eq!(got.rule_name(att, kind, dir, a.rule), want.rule_name(att, kind, dir, b.rule));
    }
}

#[test]
fn security_group_matches_the_reference_on_random_rule_sets() {
    let k = keys();
    let host = host();
    let sup = supervisor();
    sup.install(load(&host, "security_group", Hook::SecurityGroup, &k));
    let atts = ["lan0", "lan1", "dc1", "dc2"];
    let attachments: Vec<String> = atts.iter().map(|s| s.to_string()).collect();
    let mut rng = Rng(0xdead_beef_0000_0002);
    for _ in 0..15 {
        let n = 1 + rng.below(5) as usize;
        let groups = random_groups(&mut rng, "sg", n, &atts, false);
        // One ACL per attachment at most.
        let acls: Vec<SgGroup> = random_groups(&mut rng, "acl", 4, &atts, false)
            .into_iter()
            .enumerate()
            .map(|(i, mut a)| {
                a.attach = vec![atts[i].to_owned()];
                a
            })
            .take(rng.below(5) as usize)
            .collect();
        let generation = sup.compile_sg(&groups, &acls, &attachments, Instant::now()).unwrap();
        let want = SgTable::build(generation, &sg_compile(&groups, &acls, false).unwrap()).unwrap();
        compare_tables(&mut rng, &sup.tables().sg(), &want, &atts);
    }
    // Same refusals, same messages.
    let mut bad = random_groups(&mut rng, "sg", 1, &atts, false);
    bad[0].rules.push(SgRule {
        id: "p".into(),
        priority: 1,
        direction: Direction::Inbound,
        action: Action::Allow,
        protocol: None,
        peer: "10.0.0.0/8".parse().unwrap(),
        ports: PortRange::single(22),
    });
    let e = sup.compile_sg(&bad, &[], &attachments, Instant::now()).unwrap_err();
    let r = sg_compile(&bad, &[], false).unwrap_err();
    assert!(e.to_string().ends_with(&r), "{e} vs {r}");
    assert!(r.contains("ports need a protocol"), "{r}");
}

#[test]
fn builtin_security_group_is_the_reference() {
    // Without a plugin the supervisor compiles with the reference, so the dataplane filters even
    // before an operator installs anything.
    let sup = supervisor();
    let mut rng = Rng(7);
    let atts = ["lan0"];
    let groups = random_groups(&mut rng, "sg", 3, &atts, false);
    let generation = sup.compile_sg(&groups, &[], &["lan0".into()], Instant::now()).unwrap();
    let want = SgTable::build(generation, &sg_compile(&groups, &[], false).unwrap()).unwrap();
    compare_tables(&mut rng, &sup.tables().sg(), &want, &atts);
}

#[test]
fn alarm_notify_matches_the_reference_on_random_event_streams() {
    let k = keys();
    let host = host();
    let config = "channel = \"ops\"\ncritical_channel = \"pager\"\ndedup_ms = 5_000\n\
                  flap_window_ms = 60000\nflap_threshold = 3\nflap_hold_ms = 30000\n\
                  [severity]\nrekey-failed = \"critical\"\n";
    let sup = supervisor();
    sup.install(load_with(&host, "alarm_notify", Hook::Alarm, vec![], config, None, &k));
    let mut reference = AlarmNotify::new(config);
    let mut rng = Rng(0x0a1a_2b3c_0000_0003);
    let mut at = 0u64;
    let mut notified = 0;
    for i in 0..2000 {
        at += rng.below(4000);
        let e = AlarmEvent {
            kind: rng.pick(&EventKind::ALL),
            subject: rng.pick(&["dc1", "dc2", "probe-a"]).to_owned(),
            raised: rng.below(3) != 0,
            severity: rng.pick(&[Severity::Info, Severity::Warning, Severity::Major]),
            message: format!("event {i}"),
            at_ms: at,
        };
        let got = sup.on_event(&e, Instant::now());
        let want = reference.on_event(&e);
        assert_eq!(got, want, "event {i}: {e:?}");
        notified += got.iter().filter(|a| matches!(a, AlarmAction::Notify(_))).count();
    }
    assert!(notified > 100, "the stream should produce notifications ({notified})");
    assert!(sup.take_alarms().is_empty(), "no plugin fault");
}

struct FixedClock(u64);

impl Clock for FixedClock {
    fn now_unix(&self) -> u64 {
        self.0
    }
    fn utc_offset_minutes(&self) -> i32 {
        60
    }
}

#[test]
fn time_of_day_decides_punted_flows_through_the_punt_path() {
    let k = keys();
    let host = host();
    let groups = vec![SgGroup {
        name: "ssh".into(),
        attach: vec!["lan0".into()],
        rules: vec![SgRule {
            id: "office-hours".into(),
            priority: 10,
            direction: Direction::Inbound,
            action: Action::Punt,
            protocol: Some(6),
            peer: "0.0.0.0/0".parse().unwrap(),
            ports: PortRange::single(22),
        }],
    }];
    let lan0 = AttachmentId::of("lan0");
    // 2024-01-01 was a Monday. 09:30 UTC is 10:30 local (UTC+1): open. 19:30 UTC: closed.
    let monday = 1_704_067_200u64;
    for (clock, open) in [
        (monday + 9 * 3600 + 1800, true),
        (monday + 19 * 3600 + 1800, false),
        (monday + 5 * 86_400 + 36_000, false),
    ] {
        let sup = supervisor();
        let c: Arc<dyn Clock> = Arc::new(FixedClock(clock));
        let p = load_with(
            &host,
            "time_of_day",
            Hook::SecurityGroup,
            vec![Capability::Clock],
            "open = \"08:00\"\nclose = \"18:00\"\ndays = \"mon-fri\"\n",
            Some(c),
            &k,
        );
        assert!(p.has_punt());
        sup.install(p);
        sup.compile_sg(&groups, &[], &["lan0".into()], Instant::now()).unwrap();
        let table = sup.tables().sg();
        let mut flows = FlowTable::new(FlowConfig::default());
        let key = FlowKey {
            src: "203.0.113.7".parse().unwrap(),
            dst: "192.168.1.10".parse().unwrap(),
            proto: 6,
            src_port: 50000,
            dst_port: 22,
        };
        assert_eq!(
            flows.process(&table, lan0, Direction::Inbound, &key, 0).outcome,
            Outcome::Pending
        );
        let batch = flows.take_punts(64);
        assert_eq!(batch.len(), 1);
        let decisions = sup.decide(&batch, Instant::now());
        let d = decisions[0].clone().expect("a decision");
        assert_eq!(d.allow, open);
        assert!(flows.resolve(&batch[0], d.allow, &d.rule, 1));
        let v = flows.process(&table, lan0, Direction::Inbound, &key, 2);
        assert_eq!(v.outcome, if open { Outcome::Allow } else { Outcome::Deny });
        let want = if open { "time-of-day:open" } else { "time-of-day:closed" };
        assert_eq!(v.reason, Reason::Punt(want.into()));
        // Other inbound traffic still gets the cloud default.
        let web = FlowKey { dst_port: 80, ..key };
        assert_eq!(flows.process(&table, lan0, Direction::Inbound, &web, 3).outcome, Outcome::Deny);
    }
}

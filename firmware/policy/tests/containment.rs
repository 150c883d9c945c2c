//! Hostile plugins are contained: a loop, a memory bomb, a trap or a huge table never replaces
//! the last good table, which keeps answering lookups; a plugin for the wrong world or asking for
//! ungranted capabilities is refused at load; crash loops back off; hot swaps under continuous
//! lookups never show a torn table; tampered packages are refused.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::*;
use isthmus_policy::{
    Capability, EventKind, Fault, Hook, HostConfig, Limits, PluginHost, PolicyError, PolicyTables,
    SgGroup, SgRule, SpdPolicy, Supervisor, verify,
};
use isthmus_tables::sg::{Action, AttachmentId, ChainKind, Direction, RuleRef};
use isthmus_tables::spd::{Selector, SpdAction};
use isthmus_tables::{FlowKey, PortRange};

fn policy() -> SpdPolicy {
    SpdPolicy {
        id: "office".into(),
        selector: Selector::between(
            "192.168.1.0/24".parse().unwrap(),
            "10.20.0.0/16".parse().unwrap(),
        ),
        action: SpdAction::Protect { tunnel: "dc1".into(), child: "web".into() },
        priority: None,
    }
}

fn tunnels() -> Vec<(String, Vec<String>)> {
    vec![("dc1".into(), vec!["web".into()])]
}

fn probe() -> FlowKey {
    FlowKey {
        src: "192.168.1.7".parse().unwrap(),
        dst: "10.20.3.4".parse().unwrap(),
        proto: 6,
        src_port: 40000,
        dst_port: 443,
    }
}

/// A supervisor whose SPD table was published by the real `spd-selectors` plugin.
fn with_good_table(host: &PluginHost, k: &Keys) -> (Supervisor, u64) {
    let sup = Supervisor::new(Arc::new(PolicyTables::new()), Limits::default());
    sup.install(load(host, "spd_selectors", Hook::Spd, k));
    let g = sup.compile_spd(&[policy()], &tunnels(), Instant::now()).unwrap();
    (sup, g)
}

fn still_forwarding(sup: &Supervisor, generation: u64) {
    let t = sup.tables().spd();
    assert_eq!(t.generation, generation, "the last good table must stay published");
    let (_, e) = t.lookup(&probe()).expect("the last good table still answers");
    assert_eq!(e.id, "office");
}

/// Short limits so the hostile plugins fail fast; the deadline still leaves a good plugin's
/// first call (instantiation included) room on a busy machine.
fn fast_host() -> PluginHost {
    PluginHost::new(HostConfig {
        call_deadline: Duration::from_millis(1000),
        memory_bytes: 32 << 20,
        ..HostConfig::default()
    })
    .unwrap()
}

#[test]
fn an_infinite_loop_hits_the_deadline_and_is_quarantined() {
    let k = keys();
    let host = fast_host();
    let (sup, g) = with_good_table(&host, &k);
    sup.install(load(&host, "test_spin", Hook::Spd, &k));
    let started = Instant::now();
    let e = sup.compile_spd(&[policy()], &tunnels(), Instant::now()).unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(5), "the deadline stopped it");
    match &e {
        PolicyError::Fault { fault: Fault::Deadline, quarantine_ms: 1000, .. } => {}
        other => panic!("{other}"),
    }
    assert!(e.to_string().contains("ran past its deadline"), "{e}");
    still_forwarding(&sup, g);
    let alarms = sup.take_alarms();
    assert_eq!(alarms.len(), 1);
    assert_eq!(alarms[0].kind, EventKind::PluginFault);
    assert_eq!(alarms[0].subject, "test-spin");
}

#[test]
fn a_memory_bomb_hits_the_cap() {
    let k = keys();
    let host = fast_host();
    let (sup, g) = with_good_table(&host, &k);
    sup.install(load(&host, "test_membomb", Hook::Spd, &k));
    let e = sup.compile_spd(&[policy()], &tunnels(), Instant::now()).unwrap_err();
    assert!(
        matches!(e, PolicyError::Fault { fault: Fault::OutOfMemory, .. }),
        "expected out of memory, got: {e}"
    );
    still_forwarding(&sup, g);
}

#[test]
fn a_trap_is_contained_and_crash_loops_back_off() {
    let k = keys();
    let host = fast_host();
    let (sup, g) = with_good_table(&host, &k);
    sup.install(load(&host, "test_trap", Hook::Spd, &k));
    let t0 = Instant::now();
    let e = sup.compile_spd(&[policy()], &tunnels(), t0).unwrap_err();
    assert!(
        matches!(e, PolicyError::Fault { fault: Fault::Trap(_), quarantine_ms: 1000, .. }),
        "{e}"
    );
    still_forwarding(&sup, g);
    // While quarantined the plugin is not even called.
    let e = sup.compile_spd(&[policy()], &tunnels(), t0 + Duration::from_millis(500)).unwrap_err();
    assert!(matches!(e, PolicyError::Quarantined { .. }), "{e}");
    assert!(e.to_string().contains("quarantined for another 500 ms"), "{e}");
    // Each fault within the window doubles the quarantine.
    let mut now = t0;
    for want in [2000u64, 4000, 8000] {
        now += Duration::from_millis(want);
        match sup.compile_spd(&[policy()], &tunnels(), now).unwrap_err() {
            PolicyError::Fault { quarantine_ms, .. } => assert_eq!(quarantine_ms, want),
            other => panic!("{other}"),
        }
    }
    let st = sup.status(Hook::Spd, now);
    assert_eq!(st.recent_faults, 4);
    assert_eq!(st.quarantined_for, Some(Duration::from_millis(8000)));
    still_forwarding(&sup, g);
    assert_eq!(sup.take_alarms().len(), 4);
    // A good plugin installed in its place works at once.
    sup.install(load(&host, "spd_selectors", Hook::Spd, &k));
    let g2 = sup.compile_spd(&[policy()], &tunnels(), now).unwrap();
    still_forwarding(&sup, g2);
}

#[test]
fn a_huge_table_is_refused_by_validation() {
    let k = keys();
    let host = host();
    let (sup, g) = with_good_table(&host, &k);
    sup.install(load(&host, "test_huge_table", Hook::Spd, &k));
    let e = sup.compile_spd(&[policy()], &tunnels(), Instant::now()).unwrap_err();
    assert_eq!(
        e.to_string(),
        "plugin `test-huge-table` produced an invalid table (the previous one stays): 200000 \
         entries; at most 50000 are allowed"
    );
    still_forwarding(&sup, g);
}

#[test]
fn references_must_exist() {
    let k = keys();
    let host = host();
    let (sup, g) = with_good_table(&host, &k);
    let mut p = policy();
    p.action = SpdAction::Protect { tunnel: "dc9".into(), child: "web".into() };
    let e = sup.compile_spd(&[p], &tunnels(), Instant::now()).unwrap_err();
    assert!(e.to_string().contains("tunnel `dc9`, which is not configured"), "{e}");
    still_forwarding(&sup, g);
}

#[test]
fn the_wrong_world_and_ungranted_capabilities_are_refused_at_load() {
    let k = keys();
    let host = host();
    let v = verified("sneaky", "test_wrong_world", Hook::Spd, vec![], &k);
    let e = host.load(&v, "", None).unwrap_err();
    let msg = e.to_string();
    assert!(msg.starts_with("plugin `sneaky` refused: its manifest says hook `spd` but the component does not export `isthmus:policy/spd`"), "{msg}");
    assert!(msg.contains("built for another world"), "{msg}");

    let v = verified("clocky", "time_of_day", Hook::SecurityGroup, vec![], &k);
    let e = host.load(&v, "", None).unwrap_err();
    assert!(e.to_string().contains("does not ask for the `clock` capability"), "{e}");
}

#[test]
fn tampered_and_untrusted_real_plugins_are_refused() {
    let k = keys();
    let other = keys();
    let mut bytes = package("security-group", "security_group", Hook::SecurityGroup, vec![], &k);
    assert!(verify(&bytes, std::slice::from_ref(&k.public)).is_ok());
    let e = verify(&bytes, std::slice::from_ref(&other.public)).unwrap_err();
    assert!(e.to_string().contains("which is not a trusted key"), "{e}");
    let n = bytes.len();
    bytes[n - 100] ^= 0x40;
    let e = verify(&bytes, &[k.public]).unwrap_err();
    assert_eq!(
        e.to_string(),
        "plugin `security-group` has a bad signature: the package was modified after it was signed"
    );
    // Asking for the clock does not grant anything else: the capability is in the signed manifest.
    let _ = Capability::Clock;
}

fn generation_groups(n: u32) -> Vec<SgGroup> {
    // Version n of the rules: `n % 7 + 1` allow rules for the probe, all named after n, so a
    // reader can check that what it sees is one version, whole.
    vec![SgGroup {
        name: format!("v{n}"),
        attach: vec!["lan0".into()],
        rules: (0..(n % 7 + 1))
            .map(|i| SgRule {
                id: format!("r{i}"),
                priority: i,
                direction: Direction::Inbound,
                action: Action::Allow,
                protocol: Some(6),
                peer: "203.0.113.0/24".parse().unwrap(),
                ports: PortRange::single(443),
            })
            .collect(),
    }]
}

#[test]
fn hot_swap_under_continuous_lookups_never_tears_or_fails() {
    let k = keys();
    let host = host();
    let tables = Arc::new(PolicyTables::new());
    let sup = Supervisor::new(tables.clone(), Limits::default());
    sup.install(load(&host, "security_group", Hook::SecurityGroup, &k));
    let atts = vec!["lan0".to_string()];
    sup.compile_sg(&generation_groups(0), &[], &atts, Instant::now()).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let lookups = Arc::new(AtomicU64::new(0));
    let reader = {
        let (tables, stop, lookups) = (tables.clone(), stop.clone(), lookups.clone());
        std::thread::spawn(move || {
            let lan0 = AttachmentId::of("lan0");
            let key = FlowKey {
                src: "203.0.113.9".parse().unwrap(),
                dst: "192.168.1.5".parse().unwrap(),
                proto: 6,
                src_port: 50000,
                dst_port: 443,
            };
            let mut last_gen = 0;
            while !stop.load(Ordering::Relaxed) {
                let t = tables.sg();
                assert!(t.generation() >= last_gen, "generations only grow");
                last_gen = t.generation();
                let v = t.evaluate(lan0, ChainKind::SecurityGroup, Direction::Inbound, &key);
                assert_eq!(v.action, Action::Allow, "a lookup failed at generation {last_gen}");
                assert_eq!(v.rule, RuleRef::Rule(0));
                let name = t.rule_name(lan0, ChainKind::SecurityGroup, Direction::Inbound, v.rule);
                let n: u32 = name
                    .strip_prefix("sg:v")
                    .and_then(|s| s.strip_suffix("/r0"))
                    .unwrap()
                    .parse()
                    .unwrap();
                let chain = t.chain(lan0, ChainKind::SecurityGroup, Direction::Inbound).unwrap();
                assert_eq!(chain.len() as u32, n % 7 + 1, "torn table at generation {last_gen}");
                lookups.fetch_add(1, Ordering::Relaxed);
            }
        })
    };
    // Swap rules and plugins (two packagings of the same semantics) while the reader runs.
    for n in 1..60u32 {
        if n % 10 == 0 {
            let file = if n % 20 == 0 { "security_group" } else { "time_of_day" };
            let caps = if file == "time_of_day" { vec![Capability::Clock] } else { vec![] };
            let clock: Option<Arc<dyn isthmus_policy::Clock>> =
                Some(Arc::new(isthmus_policy::SystemClock::default()));
            sup.install(load_with(&host, file, Hook::SecurityGroup, caps, "", clock, &k));
        }
        sup.compile_sg(&generation_groups(n), &[], &atts, Instant::now()).unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    reader.join().expect("the reader saw no failed or torn lookup");
    assert!(lookups.load(Ordering::Relaxed) > 1000);
}

#[test]
fn a_faulting_alarm_plugin_falls_back_to_the_builtin_so_alarms_still_go_out() {
    use isthmus_policy::{AlarmAction, AlarmEvent, Severity};
    let k = keys();
    let host = host();
    let sup = Supervisor::new(Arc::new(PolicyTables::new()), Limits::default());
    sup.install(load(&host, "test_alarm_trap", Hook::Alarm, &k));
    let ev = |subject: &str, at_ms| AlarmEvent {
        kind: EventKind::TunnelDown,
        subject: subject.into(),
        raised: true,
        severity: Severity::Major,
        message: "peer unreachable".into(),
        at_ms,
    };
    let t0 = Instant::now();
    // The plugin answers normally.
    let a = sup.on_event(&ev("dc1", 0), t0);
    assert!(matches!(&a[..], [AlarmAction::Notify(n)] if n.channel == "plugin"), "{a:?}");
    // It traps: the built-in alarm-notify answers instead, and the fault is itself an alarm.
    let a = sup.on_event(&ev("boom", 10), t0);
    assert!(
        matches!(&a[..], [AlarmAction::Notify(n)] if n.channel == "default" && n.message.contains("boom")),
        "{a:?}"
    );
    let faults = sup.take_alarms();
    assert_eq!(faults.len(), 1);
    assert_eq!(faults[0].kind, EventKind::PluginFault);
    assert_eq!(faults[0].subject, "test-alarm-trap");
    // While quarantined, the built-in keeps answering.
    let a = sup.on_event(&ev("dc2", 20), t0 + Duration::from_millis(100));
    assert!(matches!(&a[..], [AlarmAction::Notify(n)] if n.channel == "default"), "{a:?}");
    // After the quarantine the plugin is back, with a fresh instance.
    let a = sup.on_event(&ev("dc3", 30), t0 + Duration::from_secs(2));
    assert!(matches!(&a[..], [AlarmAction::Notify(n)] if n.channel == "plugin"), "{a:?}");
}

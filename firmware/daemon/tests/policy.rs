//! The daemon runs the policy plugins (no root: API and store only, in process): the bundled
//! default plugins compile the configuration's security groups into the published table with the
//! configuration's rules and defaults; an uploaded security-group plugin, once activated,
//! changes the verdicts and rolling it back restores them; a trapping SPD plugin is quarantined,
//! the last good SPD stays, and a `plugin-fault` event names the plugin, the hook and the
//! reason; `GET /plugins/hooks` (here `Policy::hooks`) says all of it.
//!
//! Needs the plugins built (`make plugins`).

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use isthmus_api::Action;
use isthmus_policy::{Hook, generate_key};
use isthmus_tables::FlowKey;
use isthmus_tables::sg::{Action as Verdict, AttachmentId, ChainKind, Direction};
use isthmus_testkit::plugins::{component, package};
use isthmusd::core::{Core, Options};

struct Dir(PathBuf);
impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn config(public_key: &str) -> String {
    format!(
        r#"
[gateway]
name = "gw-policy"
[gateway.wan]
interface = "wan0"
address = "10.62.0.1/24"
next_hop = "10.62.0.254"
[[gateway.lan]]
name = "lan"
interface = "lan0"
addresses = ["10.62.1.1/24"]

[[trusted_key]]
name = "test"
public_key = "{public_key}"

[[security_group]]
name = "web"
lans = ["lan"]

[[security_group.rule]]
priority = 10
action = "allow"
direction = "in"
protocol = "tcp"
source = "10.62.2.0/24"
ports = 443

[[security_group.rule]]
priority = 20
action = "deny"
direction = "in"
protocol = "icmp"

[[security_group.rule]]
priority = 30
action = "allow"
direction = "out"
"#
    )
}

fn flow(src: &str, dst: &str, proto: u8, dst_port: u16) -> FlowKey {
    FlowKey {
        src: src.parse::<IpAddr>().unwrap(),
        dst: dst.parse::<IpAddr>().unwrap(),
        proto,
        src_port: if proto == 1 { 8 } else { 40000 },
        dst_port: if proto == 1 { 0 } else { dst_port },
    }
}

/// The inbound verdict of the LAN's security group for `f`, with the deciding rule's name.
fn inbound(core: &Core, f: &FlowKey) -> (Verdict, String) {
    let t = core.policy.supervisor().tables().sg();
    let att = AttachmentId::of("lan");
    let v = t.evaluate(att, ChainKind::SecurityGroup, Direction::Inbound, f);
    (v.action, t.rule_name(att, ChainKind::SecurityGroup, Direction::Inbound, v.rule).to_owned())
}

fn hook(core: &Core, name: &str) -> isthmus_api::PluginHook {
    core.policy.hooks().into_iter().find(|h| h.hook == name).unwrap()
}

fn act(core: &Arc<Core>, a: Action) {
    if let Err(e) = core.act_blocking(a, "test") {
        panic!("action refused: {}", e.0.message);
    }
}

#[test]
fn plugins_compile_the_configuration_swap_roll_back_and_are_contained() {
    let dir = Dir(std::env::temp_dir().join(format!("isthmusd-policy-{}", std::process::id())));
    let _ = std::fs::remove_dir_all(&dir.0);
    std::fs::create_dir_all(&dir.0).unwrap();
    let (sk, pk) = generate_key().unwrap();
    let file = dir.0.join("gw.toml");
    std::fs::write(&file, config(&pk.to_string())).unwrap();
    let core = Core::start(Options {
        data_dir: dir.0.join("data"),
        config_file: Some(file),
        manage_net: false,
        run_tunnels: false,
    })
    .unwrap();

    // The bundled defaults compile in the background (builtin tables meanwhile).
    let t0 = std::time::Instant::now();
    while core.policy.loading() {
        assert!(t0.elapsed() < std::time::Duration::from_secs(120), "bundled plugins never loaded");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    // The bundled default runs and compiles the configuration: the rules in priority order,
    // the group's default (deny) in both directions.
    let sg = hook(&core, "security-group");
    assert_eq!(sg.source, "bundled", "{sg:?}");
    assert!(sg.plugin.starts_with("security-group@"), "{sg:?}");
    assert_eq!(sg.quarantined, None);
    // in: 10, 20 (any IPv4, any IPv6); out: 30 (both families), the default deny (both).
    assert_eq!((sg.entries, sg.chains), (Some(7), Some(2)), "{sg:?}");
    let g1 = sg.generation.unwrap();
    let https = flow("10.62.2.7", "10.62.1.10", 6, 443);
    let ping = flow("10.62.2.7", "10.62.1.10", 1, 0);
    let dns = flow("10.62.2.7", "10.62.1.10", 17, 53);
    assert_eq!(inbound(&core, &https), (Verdict::Allow, "sg:web/10".into()));
    assert_eq!(inbound(&core, &ping), (Verdict::Deny, "sg:web/20#0".into()));
    assert_eq!(inbound(&core, &dns).0, Verdict::Deny, "no rule: the default denies");
    let t = core.policy.supervisor().tables().sg();
    let out = t.evaluate(
        AttachmentId::of("lan"),
        ChainKind::SecurityGroup,
        Direction::Outbound,
        &flow("10.62.1.10", "192.0.2.1", 17, 53),
    );
    assert_eq!(out.action, Verdict::Allow, "rule 30 allows everything out");
    drop(t);
    assert_eq!(hook(&core, "spd").source, "bundled");
    assert_eq!(hook(&core, "alarm").source, "bundled");

    // Upload and activate a security-group plugin that binds nothing: ICMP passes now.
    let upload = |name: &str, version: &str, hook: Hook, file: &str| -> String {
        let bytes = package(name, version, hook, &component(file), &sk);
        let p = core.plugin_upload(&bytes, "test").now_or_never().unwrap();
        match p {
            Ok(p) => p.digest,
            Err(e) => panic!("upload refused: {}", e.0.message),
        }
    };
    let default = upload("tenant-sg", "1.0.0", Hook::SecurityGroup, "security_group.wasm");
    act(&core, Action::PluginActivate { digest: default.clone() });
    let sg = hook(&core, "security-group");
    assert_eq!((sg.source.as_str(), sg.plugin.as_str()), ("uploaded", "tenant-sg@1.0.0"));
    assert_eq!(inbound(&core, &ping).0, Verdict::Deny);
    let open = upload("tenant-sg", "1.1.0-open", Hook::SecurityGroup, "test_sg_open.wasm");
    act(&core, Action::PluginActivate { digest: open });
    let sg = hook(&core, "security-group");
    assert_eq!(sg.plugin, "tenant-sg@1.1.0-open");
    assert_eq!((sg.entries, sg.chains), (Some(0), Some(0)), "{sg:?}");
    assert!(sg.generation.unwrap() > g1);
    assert_eq!(inbound(&core, &ping), (Verdict::Allow, "unbound".into()));
    // Rolling back restores the verdicts.
    act(&core, Action::PluginRollback { name: "tenant-sg".into() });
    assert_eq!(hook(&core, "security-group").plugin, "tenant-sg@1.0.0");
    assert_eq!(inbound(&core, &ping), (Verdict::Deny, "sg:web/20#0".into()));

    // A trapping SPD plugin is quarantined; the last good SPD stays; the fault is reported.
    let spd_before = hook(&core, "spd");
    let spd_gen = core.policy.supervisor().tables().spd().generation;
    let trap = upload("spd-trap", "0.0.1", Hook::Spd, "test_trap.wasm");
    act(&core, Action::PluginActivate { digest: trap.clone() });
    let spd = hook(&core, "spd");
    assert_eq!(spd.plugin, "spd-trap@0.0.1");
    let q = spd.quarantined.clone().unwrap_or_else(|| panic!("not quarantined: {spd:?}"));
    assert!(q.contains("trapped"), "{q}");
    assert!(spd.last_error.as_deref().unwrap_or("").contains("last good SPD"), "{spd:?}");
    assert_eq!(spd.generation, spd_before.generation, "the last good table stays");
    assert_eq!(core.policy.supervisor().tables().spd().generation, spd_gen);
    let events = core.events().recent("spd-trap", 10);
    assert!(
        events.iter().any(|e| e.kind == "plugin-fault"
            && e.message.contains("hook spd")
            && e.message.contains("trapped")),
        "{events:?}"
    );
    // `GET /plugins` marks the quarantined version.
    let listed = core.plugins().now_or_never().unwrap().unwrap();
    let p = listed.iter().find(|p| p.digest == trap).unwrap();
    assert!(p.active && p.quarantined.as_deref().is_some_and(|q| q.contains("trapped")), "{p:?}");
    // A crash loop is rate-limited: after the first quarantine (1 s) one retry faults again and
    // doubles it; the retries stop while quarantined.
    let t0 = Instant::now();
    while hook(&core, "spd").recent_faults < 2 {
        assert!(t0.elapsed() < Duration::from_secs(10), "no retry after the quarantine");
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(800));
    assert_eq!(hook(&core, "spd").recent_faults, 2, "retried while quarantined");

    // The alarm hook answers through the bundled alarm-notify.
    let e = isthmus_policy::AlarmEvent {
        kind: isthmus_policy::EventKind::TunnelDown,
        subject: "to-dc".into(),
        raised: true,
        severity: isthmus_policy::Severity::Critical,
        message: "tunnel to-dc is down".into(),
        at_ms: 1,
    };
    let mut reference = isthmus_policy::reference::AlarmNotify::new("");
    assert_eq!(core.policy.on_event(&e), reference.on_event(&e));
    core.shutdown();
}

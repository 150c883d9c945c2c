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
    isthmus_testkit::config::Gateway::new("gw-policy")
        .wan("wan0", "10.62.0.1/24", "10.62.0.254")
        .lan("lan", "lan0", "10.62.1.1/24")
        .trusted_key("test", public_key)
        .push(
            r#"[[security_group]]
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
"#,
        )
        .toml()
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
    if let Err(e) = core.handle(a, "test") {
        panic!("action refused: {}", e);
    }
}

/// A daemon (no root: API and store only) on `config` in a fresh directory tagged `tag`.
fn start(tag: &str, config: &str) -> (Dir, Arc<Core>) {
    let dir = Dir(std::env::temp_dir().join(format!("isthmusd-{tag}-{}", std::process::id())));
    let _ = std::fs::remove_dir_all(&dir.0);
    std::fs::create_dir_all(&dir.0).unwrap();
    let file = dir.0.join("gw.toml");
    std::fs::write(&file, config).unwrap();
    let core = Core::start(Options {
        data_dir: dir.0.join("data"),
        config_file: Some(file),
        manage_net: false,
        run_tunnels: false,
    })
    .unwrap();
    (dir, core)
}

/// Waits until the bundled defaults have compiled (builtin tables meanwhile).
fn settle(core: &Core) {
    let t0 = Instant::now();
    while core.policy.loading() {
        assert!(t0.elapsed() < Duration::from_secs(120), "bundled plugins never loaded");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Uploads the built component `file` as plugin `name` `version` signed with `key`; its digest.
fn upload(
    core: &Core,
    key: &isthmus_policy::SecretKey,
    (name, version, hook): (&str, &str, Hook),
    file: &str,
) -> String {
    let bytes = package(name, version, hook, &component(file), key);
    match core.plugin_upload(&bytes, "test") {
        Ok(p) => p.digest,
        Err(e) => panic!("upload refused: {}", e),
    }
}

#[test]
fn plugins_compile_the_configuration_swap_roll_back_and_are_contained() {
    let (sk, pk) = generate_key().unwrap();
    let (_dir, core) = start("policy", &config(&pk.to_string()));
    // The bundled defaults compile in the background (builtin tables meanwhile).
    settle(&core);
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
        upload(&core, &sk, (name, version, hook), file)
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
        events.iter().any(|e| e.kind == isthmus_api::EventKind::PluginFault
            && e.message.contains("hook spd")
            && e.message.contains("trapped")),
        "{events:?}"
    );
    // `GET /plugins` marks the quarantined version.
    let listed = core.plugins().unwrap();
    let p = listed.iter().find(|p| p.digest == trap).unwrap();
    assert!(p.active && p.quarantined.as_deref().is_some_and(|q| q.contains("trapped")), "{p:?}");
    // A crash loop is rate-limited: after the first quarantine (1 s) one retry faults again and
    // doubles it; the retries stop while quarantined.
    let t0 = Instant::now();
    while hook(&core, "spd").recent_faults < 2 {
        assert!(t0.elapsed() < Duration::from_secs(10), "no retry after the quarantine");
        std::thread::sleep(Duration::from_millis(100));
    }
    // Well inside the 2 s quarantine, even if this thread saw the second fault late.
    std::thread::sleep(Duration::from_millis(300));
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

/// A `[[plugin]]` binding's `digest` and `signed_by` decide what runs (docs/plugins.md, "Pins"):
/// the pinned build runs although another version is active, and `plugin activate` does not
/// override it; a pin that is not in the store, or a build signed by a key the binding does not
/// take, runs nothing uploaded (the bundled default answers) and the hook's note and a
/// `plugin-pin` event say why.
#[test]
fn pins_choose_the_build_and_its_signer() {
    let (sk, pk) = generate_key().unwrap();
    let (other_sk, other_pk) = generate_key().unwrap();
    let base = format!(
        "{}\n[[trusted_key]]\nname = \"other\"\npublic_key = \"{other_pk}\"\n",
        config(&pk.to_string())
    );
    let (_dir, core) = start("pins", &base);
    settle(&core);
    let commit = |binding: &str| {
        act(
            &core,
            Action::ConfigCommit {
                text: format!("{base}\n{binding}"),
                comment: "pin".into(),
                confirm_secs: None,
                dry_run: false,
            },
        )
    };
    let bind = |digest: &str, signed_by: &str| {
        format!(
            "[[plugin]]\nname = \"tenant\"\nhook = \"security-group\"\nplugin = \"tenant-sg\"\n\
             digest = \"sha256:{digest}\"\n{signed_by}\n"
        )
    };
    let ping = flow("10.62.2.7", "10.62.1.10", 1, 0);
    let strict =
        upload(&core, &sk, ("tenant-sg", "1.0.0", Hook::SecurityGroup), "security_group.wasm");
    let open =
        upload(&core, &sk, ("tenant-sg", "1.1.0-open", Hook::SecurityGroup), "test_sg_open.wasm");
    act(&core, Action::PluginActivate { digest: open.clone() });
    assert_eq!(inbound(&core, &ping), (Verdict::Allow, "unbound".into()));

    // Pinned to the strict build while the open one is active: the strict one runs.
    commit(&bind(&strict, ""));
    let sg = hook(&core, "security-group");
    assert_eq!((sg.source.as_str(), sg.plugin.as_str()), ("uploaded", "tenant-sg@1.0.0"));
    assert_eq!(sg.digest.as_deref(), Some(strict.as_str()));
    let note = sg.note.clone().unwrap_or_default();
    assert!(note.contains(&format!("sha256:{}", &strict[..12])), "{note}");
    assert!(note.contains(&format!("active version is sha256:{}", &open[..12])), "{note}");
    assert_eq!(inbound(&core, &ping), (Verdict::Deny, "sg:web/20#0".into()));
    // Activating the open build again does not override the configuration's pin.
    act(&core, Action::PluginActivate { digest: open.clone() });
    assert_eq!(hook(&core, "security-group").plugin, "tenant-sg@1.0.0");
    assert_eq!(inbound(&core, &ping), (Verdict::Deny, "sg:web/20#0".into()));

    // A pin the store does not hold: nothing uploaded runs (the open build is active), the
    // bundled default answers, and the note and an event name the missing digest.
    let missing = "ab".repeat(32);
    commit(&bind(&missing, ""));
    settle(&core);
    let sg = hook(&core, "security-group");
    assert_eq!(sg.source, "bundled", "{sg:?}");
    assert!(sg.plugin.starts_with("security-group@"), "{sg:?}");
    let note = sg.note.clone().unwrap_or_default();
    assert!(note.contains("sha256:abababababab, which is not in the plugin store"), "{note}");
    assert!(note.contains("active `tenant-sg` does not run unpinned"), "{note}");
    assert_eq!(inbound(&core, &ping), (Verdict::Deny, "sg:web/20#0".into()));
    let events = core.events().recent("security-group", 10);
    assert!(
        events.iter().any(|e| e.kind == isthmus_api::EventKind::PluginPin
            && e.message.contains("sha256:abababababab")),
        "{events:?}"
    );

    // A build signed by the other trusted key, pinned by a binding that takes only `test`:
    // not run, and the note says which key signed it. Taking `other` runs it.
    let foreign = upload(
        &core,
        &other_sk,
        ("tenant-sg", "1.2.0-open", Hook::SecurityGroup),
        "test_sg_open.wasm",
    );
    commit(&bind(&foreign, "signed_by = [\"test\"]"));
    settle(&core);
    let sg = hook(&core, "security-group");
    assert_eq!(sg.source, "bundled", "{sg:?}");
    let note = sg.note.clone().unwrap_or_default();
    assert!(note.contains("signed by key `other`"), "{note}");
    assert!(note.contains("only builds signed by `test`"), "{note}");
    assert_eq!(inbound(&core, &ping), (Verdict::Deny, "sg:web/20#0".into()));
    commit(&bind(&foreign, "signed_by = [\"other\"]"));
    let sg = hook(&core, "security-group");
    assert_eq!((sg.source.as_str(), sg.plugin.as_str()), ("uploaded", "tenant-sg@1.2.0-open"));
    assert_eq!(inbound(&core, &ping), (Verdict::Allow, "unbound".into()));

    // Pinned before it is uploaded: the default runs until the upload, which brings it in at
    // once (no second commit).
    let bytes =
        package("tenant-sg", "1.3.0", Hook::SecurityGroup, &component("security_group.wasm"), &sk);
    let later = isthmus_policy::verify(&bytes, &[pk]).unwrap().digest().to_owned();
    commit(&bind(&later, ""));
    settle(&core);
    assert_eq!(hook(&core, "security-group").source, "bundled");
    match core.plugin_upload(&bytes, "test") {
        Ok(p) => assert_eq!(p.digest, later),
        Err(e) => panic!("upload refused: {}", e),
    }
    let sg = hook(&core, "security-group");
    assert_eq!((sg.source.as_str(), sg.plugin.as_str()), ("uploaded", "tenant-sg@1.3.0"));
    assert_eq!(inbound(&core, &ping), (Verdict::Deny, "sg:web/20#0".into()));

    // The pinned build is never pruned by later uploads, and removing it is refused while the
    // applied configuration pins it (409, naming the binding).
    for n in 0..isthmus_policy::store::MAX_VERSIONS {
        let v = format!("2.0.{n}");
        upload(&core, &sk, ("tenant-sg", &v, Hook::SecurityGroup), "test_sg_open.wasm");
    }
    let stored = core.plugins().unwrap_or_else(|e| panic!("{}", e));
    let tenant: Vec<_> = stored.iter().filter(|p| p.name == "tenant-sg").collect();
    assert_eq!(tenant.len(), isthmus_policy::store::MAX_VERSIONS, "pruned to the limit");
    assert!(tenant.iter().any(|v| v.digest == later), "pinned build pruned");
    assert_eq!(hook(&core, "security-group").plugin, "tenant-sg@1.3.0");
    let e = core
        .handle(Action::PluginRemove { digest: later.clone() }, "test")
        .expect_err("removing a pinned build");
    assert!(matches!(e, isthmusd::core::CoreError::Conflict(_)), "{e}");
    assert!(e.to_string().contains("is pinned by plugin binding `tenant` of the applied"), "{e}");
    core.shutdown();
}

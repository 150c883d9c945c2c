//! The apply pipeline against a real kernel (root): a real `isthmusd` in a gateway namespace,
//! driven through its management API, observed with `ip` and `nft` as an operator would.
//! Commit → routes, addresses, rules and the firewall in the kernel; a one-route change touches
//! that route only; dry runs change nothing; rollback and an unconfirmed commit (also across a
//! daemon killed inside the window) restore the kernel; drift is repaired and reported while
//! foreign routes stay; a failed apply rolls back and names what failed; the WAN admits none of
//! what it should not, from a peer namespace; a configuration that cannot be applied at start
//! leaves the API up to fix it; every complete example in docs/ applies. Address block
//! 10.64.0.0/16.
//!
//! The reconciler's own rules (ownership, every firewall rule with listeners) are tested in
//! `firmware/net/tests/netns.rs`; the API's store semantics without a kernel in `tests/api.rs`.

use std::net::{TcpListener, TcpStream, UdpSocket};
use std::path::PathBuf;
use std::time::Duration;

use isthmus_testkit::site::{Binaries, Site, SiteSpec, token_hash, wait_for};
use isthmus_testkit::{Netns, require_root, veth_bare};
use serde_json::{Value, json};

const TOKEN: &str = "ist_apply-netns-admin-token";

/// A gateway site (`gw` with `lan0` to a host) plus a WAN peer namespace on `wan0`.
struct Lab {
    site: Site,
    peer: Netns,
}

fn lab(tag: &str, port: u16) -> Lab {
    let bins = Binaries {
        isthmusd: PathBuf::from(env!("CARGO_BIN_EXE_isthmusd")),
        isthmus: PathBuf::from("/nonexistent/isthmus"),
    };
    let site = Site::new(
        SiteSpec {
            tag: tag.into(),
            lan_gw: "10.64.10.1/24".into(),
            lan_host: "10.64.10.2/24".into(),
            api_port: port,
            token: TOKEN.into(),
        },
        &bins,
    );
    let peer = Netns::new(&format!("{tag}p"));
    veth_bare(&site.gw, "wan0", &peer, "wan0");
    peer.sh("ip addr add 10.64.1.2/24 dev wan0");
    Lab { site, peer }
}

/// The gateway: WAN 10.64.1.1, LAN 10.64.10.1, one tunnel to 10.64.1.2, a route table bound
/// to the LAN with a tunnel route and a route via a LAN router (metric `metric`), plus `extra`.
fn config(metric: u32, extra: &str) -> String {
    isthmus_testkit::config::Gateway::new("netns-gw")
        .wan("wan0", "10.64.1.1/24", "10.64.1.254")
        .lan("app", "lan0", "10.64.10.1/24")
        .customer_gateway("peer", "10.64.1.2")
        .push(&format!(
            r#"[[tunnel]]
name = "t1"
customer_gateway = "peer"
psk = "apply-netns-psk-0123456789abcdef"
start_action = "none"
[[tunnel.spd]]
local = "10.64.10.0/24"
remote = "10.64.100.0/24"

[[route_table]]
name = "vpn"
id = 164
lans = ["app"]
[[route_table.route]]
prefix = "10.64.100.0/24"
tunnel = "t1"
[[route_table.route]]
prefix = "10.64.200.0/24"
via = "10.64.10.9"
metric = {metric}
{extra}"#
        ))
        .token("ops", "admin", &format!("sha256:{}", token_hash(TOKEN)))
        .toml()
}

/// Calls the API from inside the gateway's namespace (it listens on the namespace's loopback).
fn api(site: &Site, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    let url = format!("{}/api/v1{path}", site.endpoint());
    let method = method.to_owned();
    site.gw.run(move || {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let c = reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .expect("a client");
        let mut r = if method == "GET" { c.get(url) } else { c.post(url) };
        r = r.bearer_auth(TOKEN);
        if let Some(b) = body {
            r = r.json(&b);
        }
        let resp = r.send().expect("the API answers");
        let status = resp.status().as_u16();
        let text = resp.text().unwrap_or_default();
        (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
    })
}

fn commit(site: &Site, text: String, confirm: Option<u64>, dry_run: bool) -> (u16, Value) {
    api(
        site,
        "POST",
        "/config/commit",
        Some(json!({"text": text, "comment": "test", "confirm_secs": confirm, "dry_run": dry_run})),
    )
}

fn plan_lines(b: &Value) -> Vec<String> {
    b["plan"]
        .as_array()
        .map(|a| a.iter().filter_map(|l| l.as_str().map(String::from)).collect())
        .unwrap_or_default()
}

/// Isthmus's routes in table 164, as `ip` prints them.
fn routes(site: &Site) -> String {
    site.gw.sh("ip route show table 164 proto 181")
}

fn revision(site: &Site) -> u64 {
    api(site, "GET", "/status", None).1["revision"].as_u64().unwrap_or(0)
}

#[test]
fn apply_change_one_route_dry_run_and_roll_back() {
    if !require_root() {
        return;
    }
    let mut l = lab("apa", 18641);
    l.site.start(&config(100, ""));
    let gw = &l.site.gw;
    // Applied: addresses, both routes, the LAN's rule, the blackhole behind the tunnel prefix,
    // the firewall table.
    assert!(gw.sh("ip -4 addr show dev wan0").contains("10.64.1.1/24"));
    assert!(gw.sh("ip -4 addr show dev lan0").contains("10.64.10.1/24"));
    let r = routes(&l.site);
    assert!(r.contains("10.64.100.0/24 dev ist0"), "{r}");
    assert!(r.contains("10.64.200.0/24 via 10.64.10.9 dev lan0 metric 100"), "{r}");
    assert!(gw.sh("ip rule show").contains("from 10.64.10.0/24 lookup 164"));
    assert!(gw.sh("ip route show proto 181").contains("blackhole 10.64.100.0/24"));
    assert!(gw.sh("nft list table inet isthmus").contains("wan0"));

    // A dry run prints the plan and changes nothing.
    let (s, b) = commit(&l.site, config(150, ""), None, true);
    assert_eq!(s, 200, "{b}");
    let plan = plan_lines(&b);
    assert!(
        plan.iter().any(|p| p.contains("+ route 10.64.200.0/24") && p.contains("metric 150")),
        "{plan:?}"
    );
    assert_eq!(b["revision"], Value::Null);
    assert_eq!(routes(&l.site), r, "a dry run changed the kernel");
    assert_eq!(revision(&l.site), 1);

    // The change: that route only (deleted at metric 100, added at 150), no tunnel touched.
    let (s, b) = commit(&l.site, config(150, ""), None, false);
    assert_eq!(s, 200, "{b}");
    let plan = plan_lines(&b);
    let kernel: Vec<&String> = plan.iter().filter(|p| p.starts_with("kernel:")).collect();
    assert_eq!(kernel.len(), 2, "only the changed route: {plan:?}");
    assert!(kernel.iter().all(|p| p.contains("10.64.200.0/24")), "{plan:?}");
    assert!(!plan.iter().any(|p| p.starts_with("tunnel")), "no tunnel touched: {plan:?}");
    let after = routes(&l.site);
    assert!(after.contains("10.64.200.0/24 via 10.64.10.9 dev lan0 metric 150"), "{after}");
    assert!(!after.contains("10.64.200.0/24 via 10.64.10.9 dev lan0 metric 100"), "{after}");
    assert!(after.contains("10.64.100.0/24 dev ist0"), "{after}");

    // Rollback to revision 1 restores the kernel.
    let (s, b) = api(&l.site, "POST", "/config/rollback", Some(json!({"revision": 1})));
    assert_eq!(s, 200, "{b}");
    assert_eq!(routes(&l.site), r);
    assert_eq!(revision(&l.site), 3);
}

#[test]
fn a_failed_apply_rolls_back_and_says_what_failed() {
    if !require_root() {
        return;
    }
    let mut l = lab("apb", 18642);
    l.site.start(&config(100, ""));
    let before = routes(&l.site);
    // Valid as a document, but the LAN's interface does not exist in the kernel.
    let bad = config(
        100,
        "[[gateway.lan]]\nname = \"ghost\"\ninterface = \"nosuch0\"\naddresses = [\"10.64.20.1/24\"]\n",
    );
    let (s, b) = commit(&l.site, bad, None, false);
    assert_eq!(s, 422, "{b}");
    let msg = b["message"].as_str().unwrap_or_default();
    assert!(msg.contains("applying revision 2 failed"), "{b}");
    assert!(msg.contains("nosuch0"), "the failure names the interface: {msg}");
    assert!(msg.contains("rolled back to revision 1"), "{msg}");
    assert_eq!(routes(&l.site), before, "the kernel is back at revision 1");
    assert_eq!(revision(&l.site), 3, "the rollback is a new revision");
}

#[test]
fn an_unconfirmed_commit_reverts_the_kernel_also_after_a_restart() {
    if !require_root() {
        return;
    }
    let mut l = lab("apc", 18643);
    l.site.start(&config(100, ""));
    let before = routes(&l.site);
    let extra = "[[route_table.route]]\nprefix = \"10.64.202.0/24\"\nvia = \"10.64.10.9\"\n";

    // Not confirmed: the daemon reverts the kernel by itself.
    // Windows of 5 s: the checks before each deadline must also fit on a busy machine.
    let (s, b) = commit(&l.site, config(100, extra), Some(5), false);
    assert_eq!(s, 200, "{b}");
    assert!(routes(&l.site).contains("10.64.202.0/24"));
    wait_for(
        "the revert",
        Duration::from_secs(30),
        || !routes(&l.site).contains("10.64.202.0/24"),
        || l.site.log(),
    );
    assert_eq!(routes(&l.site), before);

    // Killed inside the window: the route stays in the kernel while nobody runs...
    let (s, b) = commit(&l.site, config(100, extra), Some(5), false);
    assert_eq!(s, 200, "{b}");
    l.site.signal("-KILL");
    l.site.stop();
    assert!(routes(&l.site).contains("10.64.202.0/24"));
    std::thread::sleep(Duration::from_secs(6));
    // ... and the restarted daemon finds the deadline passed and reverts it.
    l.site.start(&config(100, ""));
    assert_eq!(routes(&l.site), before, "{}", l.site.log());
    assert!(l.site.log().contains("expired while the daemon was down"), "{}", l.site.log());
}

#[test]
fn drift_is_repaired_and_reported_and_foreign_routes_stay() {
    if !require_root() {
        return;
    }
    let mut l = lab("apd", 18644);
    l.site.start(&config(100, ""));
    let before = routes(&l.site);
    let gw = &l.site.gw;
    gw.sh("ip route del 10.64.200.0/24 table 164 metric 100");
    gw.sh("ip route add 10.64.77.0/24 via 10.64.10.9 table 164");
    assert!(!routes(&l.site).contains("10.64.200.0/24"));
    wait_for(
        "the owned route to come back",
        Duration::from_secs(20),
        || routes(&l.site) == before,
        || l.site.log(),
    );
    let log = l.site.log();
    assert!(
        log.contains("drift") && log.contains("route 10.64.200.0/24 table 164 metric 100"),
        "drift is reported: {log}"
    );
    // The operator's own route in the same table is left alone.
    assert!(gw.sh("ip route show table 164").contains("10.64.77.0/24 via 10.64.10.9"));
}

/// Whether a TCP connection from `ns` to `to` completes within a second.
fn tcp_from(ns: &Netns, to: &'static str) -> bool {
    ns.run(move || {
        TcpStream::connect_timeout(&to.parse().expect("an address"), Duration::from_secs(1)).is_ok()
    })
}

#[test]
fn the_wan_admits_only_what_it_should_from_a_peer_namespace() {
    if !require_root() {
        return;
    }
    let mut l = lab("ape", 18645);
    l.site.start(&config(100, ""));
    // Services a careless gateway would expose: the API port and ssh, on every address.
    // (Connections complete in the kernel's backlog; nothing needs to accept them.)
    let _listeners: Vec<TcpListener> = l.site.gw.run(|| {
        ["0.0.0.0:8443", "0.0.0.0:22"].iter().map(|a| TcpListener::bind(a).expect("bind")).collect()
    });
    let udp: UdpSocket = l.site.gw.run(|| UdpSocket::bind("0.0.0.0:5353").expect("bind"));
    // They listen (from the gateway itself, over loopback).
    assert!(tcp_from(&l.site.gw, "10.64.1.1:8443"));
    // From the WAN: no management API, no ssh, no other UDP; echo is answered (configured).
    assert!(!tcp_from(&l.peer, "10.64.1.1:8443"), "the management API is reachable from the WAN");
    assert!(!tcp_from(&l.peer, "10.64.1.1:22"));
    l.peer.run(|| {
        let s = UdpSocket::bind("0.0.0.0:0").expect("bind");
        for _ in 0..3 {
            let _ = s.send_to(b"probe", "10.64.1.1:5353");
        }
    });
    udp.set_read_timeout(Some(Duration::from_millis(500))).ok();
    let mut buf = [0u8; 64];
    assert!(udp.recv_from(&mut buf).is_err(), "UDP 5353 is open on the WAN");
    assert!(l.peer.sh_output("ping -c1 -W1 10.64.1.1").status.success());
    // No clear forwarding between the LAN and the WAN.
    assert!(!l.site.host.sh_output("ping -c1 -W1 10.64.1.2").status.success());
}

/// `isthmusd --no-tunnels` manages the kernel without a tunnel plane: no TUN device is expected
/// or created, nothing is routed into one (the tunnel prefix is blackholed), the route table's
/// other routes are installed, and commits apply (they failed on the missing `ist0`).
#[test]
fn without_tunnels_the_kernel_is_managed_and_no_tun_device_is_expected() {
    if !require_root() {
        return;
    }
    let mut l = lab("apn", 18646);
    l.site.start_with_args(&config(100, ""), &["--no-tunnels"]);
    let gw = &l.site.gw;
    assert!(gw.sh("ip -4 addr show dev lan0").contains("10.64.10.1/24"));
    assert!(gw.sh("nft list table inet isthmus").contains("wan0"));
    assert!(!gw.sh("ip link show").contains("ist0"), "no tunnel device without tunnels");
    let r = routes(&l.site);
    assert!(r.contains("10.64.200.0/24 via 10.64.10.9 dev lan0 metric 100"), "{r}");
    assert!(!r.contains("ist0"), "{r}");
    // The tunnel's prefix still never leaves in clear.
    assert!(gw.sh("ip route show proto 181").contains("blackhole 10.64.100.0/24"));
    // A commit applies (200) and changes the route it names.
    let (s, b) = commit(&l.site, config(150, ""), None, false);
    assert_eq!(s, 200, "{b}\n{}", l.site.log());
    let after = routes(&l.site);
    assert!(after.contains("10.64.200.0/24 via 10.64.10.9 dev lan0 metric 150"), "{after}");
    assert_eq!(revision(&l.site), 2);
}

/// A LAN whose interface does not exist: the document validates, the kernel refuses it.
const GHOST_LAN: &str =
    "[[gateway.lan]]\nname = \"ghost\"\ninterface = \"nosuch0\"\naddresses = [\"10.64.20.1/24\"]\n";

/// The `apply-failed` alarm, when raised (not cleared).
fn apply_alarm(site: &Site) -> Option<Value> {
    let (s, b) = api(site, "GET", "/alarms", None);
    assert_eq!(s, 200, "{b}");
    b.as_array()?.iter().find(|a| a["name"] == "apply-failed" && a["cleared"].is_null()).cloned()
}

/// Issue 14: a first configuration that cannot be applied left a daemon that exited before its
/// API came up, at every start, and ignored the corrected `--config` file. Now the daemon comes
/// up with the management API and the configured tokens, raises `apply-failed` naming what
/// failed, takes a fix through the API, and restarts cleanly on it; the stale file is then a
/// pending change, not applied. A corrected file at the next start is applied by itself.
#[test]
fn a_configuration_that_cannot_be_applied_leaves_the_api_up_to_fix_it() {
    if !require_root() {
        return;
    }
    let mut l = lab("apr", 18647);
    // Before the fix: "isthmusd exited (exit status: 1): ... applying revision 1: ... nosuch0".
    l.site.start(&config(100, GHOST_LAN));
    let log = l.site.log();
    assert!(log.contains("applying revision 1 failed") && log.contains("nosuch0"), "{log}");
    assert!(log.contains("no configuration is in force"), "{log}");
    let alarm = apply_alarm(&l.site).unwrap_or_else(|| panic!("no apply-failed alarm\n{log}"));
    assert_eq!(alarm["severity"], "critical", "{alarm}");
    let msg = alarm["message"].as_str().unwrap_or_default();
    assert!(msg.contains("revision 1") && msg.contains("nosuch0"), "the alarm names it: {msg}");

    // The operator fixes it through the API.
    let (s, b) = commit(&l.site, config(100, ""), None, false);
    assert_eq!(s, 200, "{b}\n{}", l.site.log());
    assert_eq!(revision(&l.site), 2);
    assert!(routes(&l.site).contains("10.64.200.0/24 via 10.64.10.9"), "{}", routes(&l.site));
    assert!(apply_alarm(&l.site).is_none(), "the alarm clears once a revision applies");

    // A restart comes up on revision 2; the old file (still broken) is only reported.
    l.site.stop();
    let mark = l.site.log().len();
    l.site.start(&config(100, GHOST_LAN));
    let log = l.site.log()[mark..].to_owned();
    assert_eq!(revision(&l.site), 2, "{log}");
    assert!(!log.contains("failed"), "{log}");
    assert!(log.contains("differs from revision 2") && log.contains("pending change"), "{log}");
    assert!(apply_alarm(&l.site).is_none());

    // Revision 3 cannot be applied at the next start (the store has it; the kernel lost the
    // interface while the daemon was down): the daemon falls back to revision 2.
    l.site.gw.sh("ip link add lan9 type veth peer name lan9p");
    let lan9 = "[[gateway.lan]]\nname = \"extra\"\ninterface = \"lan9\"\naddresses = [\"10.64.30.1/24\"]\n";
    let (s, b) = commit(&l.site, config(100, lan9), None, false);
    assert_eq!(s, 200, "{b}");
    l.site.stop();
    l.site.gw.sh("ip link del lan9");
    let mark = l.site.log().len();
    l.site.start(&config(100, lan9));
    let log = l.site.log()[mark..].to_owned();
    assert!(log.contains("applying revision 3 failed") && log.contains("lan9"), "{log}");
    assert!(log.contains("rolled back to revision 2 (now revision 4)"), "{log}");
    assert_eq!(revision(&l.site), 4);
    assert!(apply_alarm(&l.site).is_some(), "running an older revision is alarmed");
    assert!(routes(&l.site).contains("10.64.200.0/24 via 10.64.10.9"));

    // A corrected file at start is applied when the active revision cannot be.
    l.site.gw.sh("ip link add lan9 type veth peer name lan9p");
    let (s, b) = commit(&l.site, config(120, lan9), None, false);
    assert_eq!(s, 200, "{b}");
    l.site.stop();
    l.site.gw.sh("ip link del lan9");
    let mark = l.site.log().len();
    l.site.start(&config(130, ""));
    let log = l.site.log()[mark..].to_owned();
    assert!(
        log.contains("applying revision 5 failed") && log.contains("applying the file"),
        "{log}"
    );
    assert_eq!(revision(&l.site), 6, "{log}");
    assert!(routes(&l.site).contains("metric 130"), "{}\n{log}", routes(&l.site));
}

/// Every complete configuration in docs/ (a ```toml block after `<!-- example: NAME -->`) is
/// applied by a real isthmusd in a namespace that has the interfaces it names, not only
/// validated. The site-A example of docs/config.md failed: `rule priority 2000 is used twice`.
#[test]
fn every_docs_example_applies_in_a_namespace() {
    if !require_root() {
        return;
    }
    let examples = isthmus_testkit::docs::examples();
    assert!(examples.len() >= 2, "{examples:?}");
    for (k, e) in examples.iter().enumerate() {
        let cfg = isthmus_config::Config::from_toml(&e.text)
            .unwrap_or_else(|err| panic!("{} ({}): {err}", e.name, e.page));
        let gw = Netns::new(&format!("doc{k}"));
        // The interfaces the example names, as veth pairs whose peers stay in the namespace.
        let mut ifs = vec![cfg.gateway.wan.interface.clone()];
        ifs.extend(cfg.gateway.lans.iter().map(|l| l.interface.clone()));
        ifs.extend(cfg.gateway.management.iter().map(|m| m.interface.clone()));
        for (i, name) in ifs.iter().enumerate() {
            gw.sh(&format!(
                "ip link add {name} type veth peer name peer{i} && ip link set peer{i} up"
            ));
        }
        let dir = std::env::temp_dir().join(format!("isthmus-{}", gw.name()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("gw.toml"), &e.text).unwrap();
        // The secrets the example reads from the environment.
        let line = format!(
            "env ISTHMUS_PSK_IDC=docs-example-psk-0123456789 ISTHMUS_PSK_VPC=docs-example-psk-0123456789 \
             ISTHMUS_MONITORING_TOKEN=docs-example-token ISTHMUS_WEBHOOK_SECRET=docs-example-webhook-key {} --config {} --data-dir {} \
             --api 127.0.0.1:18650 >{} 2>&1",
            env!("CARGO_BIN_EXE_isthmusd"),
            dir.join("gw.toml").display(),
            dir.join("data").display(),
            dir.join("log").display()
        );
        // `exec`ed all the way down: the child is the daemon.
        let mut child = gw.spawn(&line);
        let log = || std::fs::read_to_string(dir.join("log")).unwrap_or_default();
        wait_for(
            &format!("example `{}` ({}) to be applied", e.name, e.page),
            Duration::from_secs(30),
            || log().contains("management API listening"),
            log,
        );
        let l = log();
        assert!(!l.contains("failed"), "example `{}` ({}): {l}", e.name, e.page);
        // What the example asks the kernel for is there: every LAN network looks up its table.
        let rules = gw.sh("ip rule show");
        for t in &cfg.route_tables {
            for lan in cfg.gateway.lans.iter().filter(|l| t.lans.contains(&l.name)) {
                for n in &lan.networks {
                    assert!(
                        rules.contains(&format!("from {n} lookup {}", t.id)),
                        "{}: {rules}",
                        e.name
                    );
                }
            }
        }
        let routes = gw.sh("ip route show table all proto 181");
        for t in &cfg.route_tables {
            for r in &t.routes {
                assert!(routes.contains(&r.prefix.to_string()), "{}: {routes}", e.name);
            }
        }
        let _ =
            std::process::Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
        let _ = child.wait();
        let _ = std::fs::remove_dir_all(&dir);
    }
}

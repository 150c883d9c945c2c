//! The CLI end to end against real daemons in network namespaces: two gateways joined by a WAN
//! link, a host behind each; the CLI applies configurations, lists tunnels (tables and JSON),
//! and a tunnel carries LAN-to-LAN traffic. Stopping one daemon raises a tunnel-down alarm on the
//! other that a webhook receiver on its loopback gets, and it clears when the peer returns.

use std::io::{BufRead, BufReader, Read, Write};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use isthmus_testkit::site::{Binaries, Site, SiteSpec, link_wans, logs, token_hash, wait_for};
use isthmus_testkit::{Netns, require_root};

const ADMIN: &str = "ist_e2e-admin-token";
const PSK: &str = "e2e-pre-shared-key-0123456789abcdef";
const API_PORT: u16 = 18080;
const HOOK_PORT: u16 = 18099;

fn bins() -> Binaries {
    Binaries::next_to_cli(env!("CARGO_BIN_EXE_isthmus"))
}

fn site(n: u8) -> Site {
    Site::new(
        SiteSpec {
            tag: "e2".into(),
            lan_gw: format!("10.71.{n}.1/24"),
            lan_host: format!("10.71.{n}.10/24"),
            api_port: API_PORT,
            token: ADMIN.into(),
        },
        &bins(),
    )
}

/// A gateway's configuration: WAN 10.70.0.N, LAN 10.71.N.0/24, peer the other one. Gateway 1
/// initiates; gateway 2 waits for it, as a customer-facing VPC gateway usually does.
fn config(me: u8, peer: u8, extra: &str) -> String {
    let start =
        if me == 1 || std::env::var_os("E2E_BOTH_START").is_some() { "start" } else { "none" };
    isthmus_testkit::config::Gateway::new(&format!("gw{me}"))
        .wan("wan0", &format!("10.70.0.{me}/24"), "10.70.0.254")
        .lan("lan", "lan0", &format!("10.71.{me}.1/24"))
        .customer_gateway(&format!("gw{peer}"), &format!("10.70.0.{peer}"))
        .push(&format!(
            r#"[[tunnel]]
name = "to-gw{peer}"
customer_gateway = "gw{peer}"
psk = "{PSK}"
start_action = "{start}"
[tunnel.dpd]
delay = "2s"
timeout = "6s"
[[tunnel.spd]]
local = ["10.71.{me}.0/24"]
remote = ["10.71.{peer}.0/24"]
"#
        ))
        .token("ops", "admin", &format!("sha256:{}", token_hash(ADMIN)))
        .push(extra)
        .toml()
}

/// A minimal HTTP server on the gateway's loopback that records POST bodies.
fn webhook_receiver(ns: &Netns) -> Arc<Mutex<Vec<String>>> {
    let got = Arc::new(Mutex::new(Vec::new()));
    let g = got.clone();
    let listener = ns.run(|| std::net::TcpListener::bind(("127.0.0.1", HOOK_PORT)).unwrap());
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut s) = conn else { continue };
            let mut r = BufReader::new(s.try_clone().unwrap());
            let mut len = 0usize;
            loop {
                let mut l = String::new();
                if r.read_line(&mut l).unwrap_or(0) == 0 || l == "\r\n" {
                    break;
                }
                if let Some(v) = l.to_ascii_lowercase().strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap_or(0);
                }
            }
            let mut body = vec![0; len];
            let _ = r.read_exact(&mut body);
            g.lock().unwrap().push(String::from_utf8_lossy(&body).into_owned());
            let _ = s.write_all(
                b"HTTP/1.1 204 No Content\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
            );
        }
    });
    got
}

#[test]
fn two_gateways_tunnel_cli_and_tunnel_down_alarm() {
    if !require_root() {
        return;
    }
    let mut a = site(1);
    let mut b = site(2);
    link_wans(&a, &b);
    let hooks = webhook_receiver(&a.gw);
    let alarm = format!(
        r#"
[[notify]]
name = "hook"
webhook = "http://127.0.0.1:{HOOK_PORT}/alarm"
retries = 5

[[alarm]]
name = "tunnel-down"
kind = "tunnel-down"
hold = "1s"
severity = "critical"
notify = ["hook"]
"#
    );
    a.start(&config(1, 2, &alarm));
    b.start(&config(2, 1, ""));
    let ctx = |a: &Site, b: &Site| format!("--- gw1 log\n{}\n--- gw2 log\n{}", a.log(), b.log());

    // The tunnel comes up by itself (start action start) and carries LAN-to-LAN traffic.
    wait_for(
        "the tunnel to come up",
        Duration::from_secs(30),
        || String::from_utf8_lossy(&a.cli(&["tunnel", "list"]).stdout).contains(" up "),
        || ctx(&a, &b),
    );
    wait_for(
        "a LAN-to-LAN ping through the tunnel",
        Duration::from_secs(15),
        || a.host.sh_output("ping -c 1 -W 1 10.71.2.10").status.success(),
        || {
            format!(
                "{}\n--- gw1 tunnel show\n{}\n--- gw1 metrics\n{}\n{}",
                a.gw.sh("ip route; nft list chain inet isthmus forward; cat /proc/sys/net/ipv4/ip_forward"),
                String::from_utf8_lossy(&a.cli(&["tunnel", "show", "to-gw2"]).stdout),
                String::from_utf8_lossy(&a.gw.sh_output(&format!("wget -qO- --header 'Authorization: Bearer {ADMIN}' http://127.0.0.1:{API_PORT}/metrics")).stdout),
                ctx(&a, &b)
            )
        },
    );
    let ping = a.host.sh_output("ping -c 3 -i 0.2 -W 2 10.71.2.10");
    assert!(
        ping.status.success(),
        "LAN ping through the tunnel failed: {}\n{}",
        String::from_utf8_lossy(&ping.stdout),
        ctx(&a, &b)
    );

    // `--json` output parses and counts the traffic; the table shows the tunnel.
    // Counters are sampled once a second.
    let list = || -> serde_json::Value {
        let out = a.cli(&["--json", "tunnel", "list"]);
        assert!(out.status.success());
        serde_json::from_slice(&out.stdout).expect("tunnel list --json is JSON")
    };
    wait_for(
        "the counters to show the pings",
        Duration::from_secs(5),
        || list()[0]["counters"]["packets_in"].as_u64().unwrap_or(0) >= 3,
        || list().to_string(),
    );
    let v = list();
    assert_eq!(v[0]["name"], "to-gw2");
    assert_eq!(v[0]["state"], "up");
    assert!(v[0]["counters"]["packets_out"].as_u64().unwrap() >= 3, "{v}");
    let show = String::from_utf8_lossy(&a.cli(&["tunnel", "show", "to-gw2"]).stdout).into_owned();
    assert!(show.contains("child to-gw2: spi in"), "{show}");

    // The CLI applies a change (a comment-only revision is refused as unchanged; a real change
    // is applied) and validation errors name their paths with exit code 5.
    let f = a.dir.join("new.toml");
    std::fs::write(&f, config(1, 2, &alarm).replace("name = \"gw1\"", "name = \"gw1-renamed\""))
        .unwrap();
    let out = a.cli(&["config", "apply", f.to_str().unwrap(), "-m", "rename"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("revision 2 applied"));
    // A valid document: validation says which peers' default proposals each tunnel meets.
    let out = a.cli(&["config", "validate", f.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(text.contains("tunnel to-gw2: meets the default proposals of "), "{text}");
    assert!(text.contains("(docs/interop.md)"), "{text}");
    std::fs::write(&f, "[gateway]\nname = 5\n").unwrap();
    let out = a.cli(&["config", "validate", f.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(5));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("gateway.name"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let out = a.cli(&["--json", "config", "revisions"]);
    let revs: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(revs.as_array().unwrap().len(), 2);
    let shown = a.cli(&["config", "show"]);
    assert!(!String::from_utf8_lossy(&shown.stdout).contains(PSK), "the PSK is shown");
    let bad = a.cli_command(&["status"]).env("ISTHMUS_TOKEN", "ist_wrong").output().unwrap();
    assert_eq!(bad.status.code(), Some(3), "a wrong token exits 3");

    // Freeze the peer: DPD declares it dead, the alarm fires and the webhook hears it.
    b.signal("-STOP");
    wait_for(
        "the tunnel-down alarm at the webhook",
        Duration::from_secs(40),
        || {
            hooks
                .lock()
                .unwrap()
                .iter()
                .any(|h| h.contains("\"raised\"") && h.contains("tunnel-down"))
        },
        || format!("hooks: {:?}\n{}", hooks.lock().unwrap(), ctx(&a, &b)),
    );
    let alarms = String::from_utf8_lossy(&a.cli(&["alarm", "list"]).stdout).into_owned();
    assert!(alarms.contains("tunnel-down"), "{alarms}");
    // The rule says critical, and the bundled alarm plugin (no `[severity]` of its own) keeps
    // the rule's word: in the webhook and in the list.
    let raised = hooks.lock().unwrap().iter().find(|h| h.contains("\"raised\"")).cloned();
    assert!(
        raised.as_deref().is_some_and(|h| h.contains("\"severity\":\"critical\"")),
        "{raised:?}"
    );
    let listed_critical = || {
        let list = String::from_utf8_lossy(&a.cli(&["alarm", "list"]).stdout).into_owned();
        list.lines().any(|l| l.contains("tunnel-down") && l.contains(" critical "))
    };
    wait_for("the list to say critical", Duration::from_secs(10), listed_critical, || {
        String::from_utf8_lossy(&a.cli(&["alarm", "list"]).stdout).into_owned()
    });
    // The peer returns: the tunnel comes back and the alarm clears.
    b.signal("-CONT");
    wait_for(
        "the alarm to clear",
        Duration::from_secs(60),
        || hooks.lock().unwrap().iter().any(|h| h.contains("\"cleared\"")),
        || format!("hooks: {:?}\n{}", hooks.lock().unwrap(), ctx(&a, &b)),
    );
    // The clear says why.
    let hooks_now = hooks.lock().unwrap().clone();
    assert!(
        hooks_now
            .iter()
            .any(|h| h.contains("\"cleared\"") && h.contains("\"reason\":\"tunnel to-gw2 is up\"")),
        "{hooks_now:?}"
    );
    let ping = a.host.sh_output("ping -c 2 -i 0.2 -W 2 10.71.2.10");
    assert!(ping.status.success(), "no traffic after the peer returned\n{}", ctx(&a, &b));
    for l in a.log().lines().chain(b.log().lines()) {
        assert!(!l.contains(PSK), "the PSK appears in a log: {l}");
    }
}

/// Health checks through a tunnel between two gateways (10.63.0.0/16): probes report no loss and
/// a round trip while the tunnel carries traffic; when the host behind the peer stops answering
/// (its route back is blackholed, the tunnel itself stays up) the health-loss alarm reaches the
/// webhook receiver, and it clears once answers come back.
#[test]
fn health_check_reports_and_its_loss_alarm_raises_and_clears() {
    if !require_root() {
        return;
    }
    let hc_site = |n: u8| {
        Site::new(
            SiteSpec {
                tag: "hc".into(),
                lan_gw: format!("10.63.{}.1/24", 10 + n),
                lan_host: format!("10.63.{}.10/24", 10 + n),
                api_port: API_PORT,
                token: ADMIN.into(),
            },
            &bins(),
        )
    };
    let hc_config = |me: u8, peer: u8, extra: &str| {
        let (l, r) = (10 + me, 10 + peer);
        let start = if me == 1 { "start" } else { "none" };
        isthmus_testkit::config::Gateway::new(&format!("hc{me}"))
            .wan("wan0", &format!("10.63.0.{me}/24"), "10.63.0.254")
            .lan("lan", "lan0", &format!("10.63.{l}.1/24"))
            .customer_gateway(&format!("hc{peer}"), &format!("10.63.0.{peer}"))
            .push(&format!(
                r#"[[tunnel]]
name = "to-hc{peer}"
customer_gateway = "hc{peer}"
psk = "{PSK}"
start_action = "{start}"
[tunnel.dpd]
delay = "2s"
timeout = "6s"
[[tunnel.spd]]
local = ["10.63.{l}.0/24"]
remote = ["10.63.{r}.0/24"]
{extra}"#
            ))
            .token("ops", "admin", &format!("sha256:{}", token_hash(ADMIN)))
            .toml()
    };
    let mut a = hc_site(1);
    let mut b = hc_site(2);
    link_wans(&a, &b);
    let hooks = webhook_receiver(&a.gw);
    let check = format!(
        r#"[tunnel.health_check]
source = "10.63.11.1"
destination = "10.63.12.10"
interval = "1s"
timeout = "1s"
failure_threshold = 3
recovery_threshold = 2

[[notify]]
name = "hook"
webhook = "http://127.0.0.1:{HOOK_PORT}/alarm"
retries = 5

[[alarm]]
name = "probe-loss"
kind = "health-loss"
threshold = 30
hold = "1s"
notify = ["hook"]

[[alarm]]
name = "peer-dead"
kind = "dpd-timeout"
notify = ["hook"]"#
    );
    a.start(&hc_config(1, 2, &check));
    b.start(&hc_config(2, 1, ""));
    let ctx = || logs(&[&a, &b]);
    let health = || a.json(&["tunnel", "show", "to-hc2"])["health"].clone();

    // Up: answers come back through the tunnel, no loss, a real round trip.
    wait_for(
        "answered health probes",
        Duration::from_secs(60),
        || {
            let h = health();
            h["received"].as_u64().unwrap_or(0) >= 3 && h["loss_ratio"].as_f64() == Some(0.0)
        },
        || format!("health: {}\n{}", health(), ctx()),
    );
    let h = health();
    assert_eq!(h["source"], "10.63.11.1");
    assert_eq!(h["destination"], "10.63.12.10");
    assert_eq!(h["loss_ratio"].as_f64(), Some(0.0), "{h}");
    assert!(h["latency_avg_ms"].as_f64().unwrap() > 0.0, "{h}");
    assert!(h["latency_max_ms"].as_f64() >= h["latency_min_ms"].as_f64(), "{h}");
    assert!(h["jitter_ms"].as_f64().is_some(), "{h}");
    assert_eq!(h["state"], "healthy", "{h}");
    let show = a.show(&["tunnel", "show", "to-hc2"]);
    assert!(show.contains("health     healthy (10.63.11.1 -> 10.63.12.10): loss 0 %"), "{show}");
    let metrics = String::from_utf8_lossy(
        &a.gw
            .sh_output(&format!(
                "wget -qO- --header 'Authorization: Bearer {ADMIN}' http://127.0.0.1:{API_PORT}/metrics"
            ))
            .stdout,
    )
    .into_owned();
    assert!(metrics.contains("isthmus_tunnel_health_loss_ratio{tunnel=\"to-hc2\"} 0"), "{metrics}");
    assert!(
        metrics.contains("isthmus_tunnel_health_latency_seconds{tunnel=\"to-hc2\"} 0."),
        "{metrics}"
    );
    assert!(metrics.contains("isthmus_drops_total{stage=\"esp\",reason=\"replay\"}"), "{metrics}");
    assert!(
        metrics.contains("isthmus_tunnel_state{tunnel=\"to-hc2\",state=\"up\"} 1\n"),
        "{metrics}"
    );
    assert!(
        metrics.contains("isthmus_ike_failures_total{tunnel=\"to-hc2\",reason=\"timeout\"} "),
        "{metrics}"
    );
    assert!(!metrics.contains("isthmus_dataplane_drops_total"), "one drop family: {metrics}");

    // The host behind the peer stops answering (the tunnel stays up): loss climbs over 30 %.
    // Probes run only while the tunnel is up, so the alarm was never raised before.
    assert!(hooks.lock().unwrap().is_empty(), "{:?}", hooks.lock().unwrap());
    b.host.sh("ip route add blackhole 10.63.11.0/24");
    wait_for(
        "the health-loss alarm at the webhook",
        Duration::from_secs(40),
        || {
            hooks.lock().unwrap().iter().any(|h| {
                h.contains("\"raised\"") && h.contains("probe-loss") && h.contains("tunnel/to-hc2")
            })
        },
        || format!("hooks: {:?}\nhealth: {}\n{}", hooks.lock().unwrap(), health(), ctx()),
    );
    let h = health();
    assert!(h["loss_ratio"].as_f64().unwrap() > 0.3, "{h}");
    assert_eq!(h["state"], "unhealthy", "{h}");
    assert!(h["last_error"].as_str().unwrap().contains("no answer within 1000 ms"), "{h}");
    let alarms = a.show(&["alarm", "list"]);
    assert!(alarms.contains("probe-loss"), "{alarms}");
    // The operator acknowledges it: still raised, marked with the token's name, nothing sent.
    let sent = hooks.lock().unwrap().len();
    let ack = a.show(&["alarm", "ack", "probe-loss", "tunnel/to-hc2"]);
    assert!(ack.contains("alarm `probe-loss` about `tunnel/to-hc2` acknowledged by ops"), "{ack}");
    let listed = a.json(&["alarm", "list"]);
    let raised = listed.as_array().unwrap().iter().find(|x| x["name"] == "probe-loss").unwrap();
    assert!(raised["cleared"].is_null(), "{raised}");
    assert_eq!(raised["acknowledged"]["by"], "ops", "{raised}");
    let (ok, out) = a.cli_text(&["alarm", "ack", "probe-loss", "tunnel/nope"]);
    assert!(!ok && out.contains("no alarm `probe-loss` about `tunnel/nope` is raised"), "{out}");
    // Webhooks are delivered asynchronously: give a wrong one time to arrive.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(hooks.lock().unwrap().len(), sent, "an acknowledgement notifies nobody");
    let list = a.json(&["tunnel", "list"]);
    assert_eq!(list[0]["state"], "up", "the tunnel itself stays up: {list}");

    // Answers return: loss falls back under the threshold and the alarm clears.
    b.host.sh("ip route del blackhole 10.63.11.0/24");
    wait_for(
        "the health-loss alarm to clear",
        Duration::from_secs(40),
        || {
            hooks
                .lock()
                .unwrap()
                .iter()
                .any(|h| h.contains("\"cleared\"") && h.contains("probe-loss"))
        },
        || format!("hooks: {:?}\nhealth: {}\n{}", hooks.lock().unwrap(), health(), ctx()),
    );
    assert_eq!(health()["state"], "healthy");

    // The peer freezes: dead peer detection (the driver's typed DeadPeer reason, not message
    // text) raises the dpd-timeout alarm; the health check pauses with the tunnel rather than
    // raising its own alarm again.
    let raised_loss = |hooks: &[String]| {
        hooks.iter().filter(|h| h.contains("\"raised\"") && h.contains("probe-loss")).count()
    };
    let before = raised_loss(&hooks.lock().unwrap());
    b.signal("-STOP");
    wait_for(
        "the dpd-timeout alarm at the webhook",
        Duration::from_secs(40),
        || {
            hooks
                .lock()
                .unwrap()
                .iter()
                .any(|h| h.contains("\"raised\"") && h.contains("peer-dead"))
        },
        || format!("hooks: {:?}\n{}", hooks.lock().unwrap(), ctx()),
    );
    assert_eq!(health()["sent"], 0, "probes pause while the tunnel is down: {}", health());
    b.signal("-CONT");
    wait_for(
        "the dpd-timeout alarm to clear when the tunnel is back",
        Duration::from_secs(60),
        || {
            hooks
                .lock()
                .unwrap()
                .iter()
                .any(|h| h.contains("\"cleared\"") && h.contains("peer-dead"))
        },
        || format!("hooks: {:?}\n{}", hooks.lock().unwrap(), ctx()),
    );
    assert_eq!(raised_loss(&hooks.lock().unwrap()), before, "{:?}", hooks.lock().unwrap());
}

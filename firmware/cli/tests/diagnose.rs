//! `isthmus diagnose` against two real daemons in network namespaces: a healthy path, an SPD
//! mismatch between the two ends (the negotiation fails with TS_UNACCEPTABLE and traffic outside
//! the selectors is named), a missing route, and a destination on the Internet (only diagnosed,
//! never sent). Each case asserts on what the CLI prints. The outputs are printed too (run with
//! `--nocapture`): `docs/troubleshooting.md` quotes them.

use std::time::Duration;

use isthmus_testkit::require_root;
use isthmus_testkit::site::{Binaries, Site, SiteSpec, link_wans, token_hash, wait_for};

const ADMIN: &str = "ist_diag-admin-token";
const PSK: &str = "diag-pre-shared-key-0123456789abcdef";
const API_PORT: u16 = 18081;

fn bins() -> Binaries {
    Binaries::next_to_cli(env!("CARGO_BIN_EXE_isthmus"))
}

/// Site `n`: LAN 10.65.n.0/24, the gateway at .1, the host at .10.
fn site(tag: &str, n: u8) -> Site {
    Site::new(
        SiteSpec {
            tag: tag.into(),
            lan_gw: format!("10.65.{n}.1/24"),
            lan_host: format!("10.65.{n}.10/24"),
            api_port: API_PORT,
            token: ADMIN.into(),
        },
        &bins(),
    )
}

/// Gateway `me`: WAN 10.65.100.me, LAN 10.65.me.0/24, one tunnel to the peer protecting
/// `local` <-> `remote`. Gateway 1 initiates.
fn config(me: u8, peer: u8, local: &str, remote: &str, extra: &str) -> String {
    let start = if me == 1 { "start" } else { "none" };
    format!(
        r#"
[gateway]
name = "gw{me}"
[gateway.wan]
interface = "wan0"
address = "10.65.100.{me}/24"
next_hop = "10.65.100.254"
[[gateway.lan]]
name = "lan"
interface = "lan0"
addresses = ["10.65.{me}.1/24"]

[[customer_gateway]]
name = "gw{peer}"
address = "10.65.100.{peer}"

[[tunnel]]
name = "to-gw{peer}"
customer_gateway = "gw{peer}"
psk = "{PSK}"
start_action = "{start}"
[[tunnel.spd]]
local = ["{local}"]
remote = ["{remote}"]

[[api_token]]
name = "ops"
role = "admin"
token_hash = "sha256:{}"
{extra}
"#,
        token_hash(ADMIN)
    )
}

fn pair(tag: &str, cfg1: &str, cfg2: &str) -> (Site, Site) {
    let mut a = site(tag, 1);
    let mut b = site(tag, 2);
    link_wans(&a, &b);
    b.start(cfg2);
    a.start(cfg1);
    (a, b)
}

#[test]
fn healthy_path_missing_route_and_the_internet() {
    if !require_root() {
        return;
    }
    let (a, b) = pair(
        "dr",
        &config(1, 2, "10.65.1.0/24", "10.65.2.0/24", ""),
        &config(2, 1, "10.65.2.0/24", "10.65.1.0/24", ""),
    );
    let ctx = || format!("--- gw1 log\n{}\n--- gw2 log\n{}", a.log(), b.log());
    wait_for(
        "a LAN-to-LAN ping through the tunnel",
        Duration::from_secs(40),
        || a.host.sh_output("ping -c 1 -W 1 10.65.2.10").status.success(),
        ctx,
    );

    // A healthy path: every stage passes, both ways, no advice.
    let out = a.show(&[
        "diagnose",
        "path",
        "--src",
        "10.65.1.10",
        "--dst",
        "10.65.2.10",
        "--proto",
        "tcp",
        "--dport",
        "22",
    ]);
    assert!(out.contains("verdict  pass"), "{out}");
    assert!(
        out.contains("spd             pass  to-gw2/to-gw2#0 10.65.1.0/24 <-> 10.65.2.0/24"),
        "{out}"
    );
    assert!(out.contains("child-sa        pass  to-gw2/to-gw2 SPI in 0x"), "{out}");
    assert!(!out.contains("advice"), "{out}");

    // A destination no route leads to (private: the tunnel's SPD would have to cover it).
    let out = a.show(&["diagnose", "path", "--src", "10.65.1.10", "--dst", "10.65.9.9"]);
    assert!(out.contains("route           DROP  no route for 10.65.9.9"), "{out}");
    assert!(
        out.contains("advice   no route for 10.65.9.9: it is outside every tunnel's remote networks (10.65.2.0/24)"),
        "{out}"
    );

    // The Internet: diagnosed only, never pinged.
    let out = a.show(&["diagnose", "path", "--src", "10.65.1.10", "--dst", "8.8.8.8"]);
    assert!(
        out.contains("advice   the gateway gives no Internet access: 8.8.8.8 is outside every tunnel's remote networks"),
        "{out}"
    );
    assert!(out.contains("verdict  DROP"), "{out}");

    // --json carries the same report.
    let (ok, j) =
        a.cli_text(&["--json", "diagnose", "path", "--src", "10.65.1.10", "--dst", "8.8.8.8"]);
    assert!(ok, "{j}");
    let v: serde_json::Value = serde_json::from_str(&j).expect("diagnose path --json is JSON");
    assert_eq!(v["verdict"], "drop");
    assert_eq!(v["forward"][2]["stage"], "route");
    assert_eq!(v["forward"][2]["verdict"], "drop");

    // A source off every LAN, and a bad address, are named.
    let out = a.show(&["diagnose", "path", "--src", "192.168.7.7", "--dst", "10.65.2.10"]);
    assert!(out.contains("src 192.168.7.7 is not on any LAN"), "{out}");
    let (ok, out) = a.cli_text(&["diagnose", "path", "--src", "10.65.1.10", "--dst", "nowhere"]);
    assert!(!ok && out.contains("dst `nowhere` is not an IP address"), "{out}");

    // The healthy tunnel has nothing to explain.
    let out = a.show(&["diagnose", "tunnel", "to-gw2"]);
    assert!(out.contains("tunnel   to-gw2  (up)"), "{out}");
    assert!(out.contains("last failure: none recorded"), "{out}");
}

#[test]
fn spd_mismatch_between_the_two_ends() {
    if !require_root() {
        return;
    }
    // gw1 protects 10.65.1.0/24 <-> 10.65.2.0/24 and routes 10.65.0.0/20 into the tunnel; gw2
    // only accepts 10.65.2.0/24 <-> 10.65.3.0/24: its selectors do not mirror gw1's.
    let route = r#"
[[route_table]]
name = "lan-out"
id = 100
lans = ["lan"]
[[route_table.route]]
prefix = "10.65.0.0/20"
tunnel = "to-gw2"
"#;
    let (a, b) = pair(
        "ds",
        &config(1, 2, "10.65.1.0/24", "10.65.2.0/24", route),
        &config(2, 1, "10.65.2.0/24", "10.65.3.0/24", ""),
    );
    let ctx = || format!("--- gw1 log\n{}\n--- gw2 log\n{}", a.log(), b.log());
    wait_for(
        "the negotiation to fail with TS_UNACCEPTABLE",
        Duration::from_secs(40),
        || a.cli_text(&["diagnose", "tunnel", "to-gw2"]).1.contains("TS_UNACCEPTABLE"),
        ctx,
    );
    let out = a.show(&["diagnose", "tunnel", "to-gw2"]);
    assert!(out.contains("TS_UNACCEPTABLE"), "{out}");
    assert!(out.contains("ours     ") && out.contains("10.65.1.0/24"), "{out}");
    assert!(out.contains("advice   "), "{out}");

    // Traffic inside our selectors: no CHILD SA carries it.
    let out = a.show(&["diagnose", "path", "--src", "10.65.1.10", "--dst", "10.65.2.10"]);
    assert!(out.contains("child-sa        DROP"), "{out}");
    assert!(out.contains("see `isthmus diagnose tunnel to-gw2`"), "{out}");

    // Traffic the route sends into the tunnel but outside the SPD.
    let out = a.show(&["diagnose", "path", "--src", "10.65.1.10", "--dst", "10.65.3.5"]);
    assert!(out.contains("spd             DROP  no entry matches"), "{out}");
    assert!(
        out.contains("advice   SPD of tunnel to-gw2 covers 10.65.2.0/24, not 10.65.3.5"),
        "{out}"
    );
    // And it really is not delivered.
    assert!(!a.host.sh_output("ping -c 1 -W 1 10.65.2.10").status.success());
}

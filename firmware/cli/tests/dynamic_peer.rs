//! Customer gateways without a fixed address: `address = "any"` (a branch behind a dynamic or
//! NATed line, recognised by its IKE identity) and a DNS name that is re-resolved. The peers are
//! real charons behind a router, on addresses the configuration never names; the gateway still
//! gives LAN traffic no path to the Internet. Root only (network namespaces).

use std::time::Duration;

use isthmus_testkit::site::{Binaries, Site, SiteSpec, token_hash, wait_for};
use isthmus_testkit::strongswan::{Action, Retransmit, Strongswan, SwanConn};
use isthmus_testkit::{Netns, require_root, veth, veth_bare};

const ADMIN: &str = "ist_dynamic-peer-admin-token";
const PSK: &str = "dynamic-peer-psk-0123456789abcdef";

/// A gateway namespace with its LAN 10.67.`lan`.0/24 and a host on it.
fn site(tag: &str, lan: u8, api_port: u16) -> Site {
    Site::new(
        SiteSpec {
            tag: tag.into(),
            lan_gw: format!("10.67.{lan}.1/24"),
            lan_host: format!("10.67.{lan}.10/24"),
            api_port,
            token: ADMIN.into(),
        },
        &Binaries::next_to_cli(env!("CARGO_BIN_EXE_isthmus")),
    )
}

/// The router between the gateway's WAN (10.67.100.0/24) and the "Internet" the peers sit on.
fn router(site: &Site) -> Netns {
    let r = Netns::new("dpr");
    veth_bare(&site.gw, "wan0", &r, "gw");
    r.sh("ip addr add 10.67.100.2/24 dev gw && sysctl -qw net.ipv4.ip_forward=1");
    r
}

/// A peer namespace on `net` (10.67.N.0/24, .9), reached through the router.
fn peer(r: &Netns, tag: &str, n: u8) -> Netns {
    let p = Netns::new(tag);
    veth(r, &format!("p{n}"), &format!("10.67.{n}.1/24"), &p, "wan", &format!("10.67.{n}.9/24"));
    p.sh(&format!("ip route add default via 10.67.{n}.1"));
    p
}

#[test]
fn a_peer_with_address_any_connects_from_an_unnamed_address_and_a_wrong_identity_is_refused() {
    if !require_root() || !isthmus_testkit::strongswan::available() {
        return;
    }
    let mut site = site("dp", 1, 18091);
    let r = router(&site);
    let branch = peer(&r, "dpb", 200);
    let branch_host = Netns::new("dpbh");
    veth(&branch, "lan", "10.67.2.1/24", &branch_host, "eth0", "10.67.2.10/24");
    branch.sh("sysctl -qw net.ipv4.ip_forward=1");
    branch_host.sh("ip route add default via 10.67.2.1");
    let intruder = peer(&r, "dpi", 201);

    let cfg = isthmus_testkit::config::Gateway::new("dp")
        .wan("wan0", "10.67.100.1/24", "10.67.100.2")
        .lan("lan", "lan0", "10.67.1.1/24")
        .push(&format!(
            r#"
[[customer_gateway]]
name = "branch"
address = "any"
ike_id = "@branch.example.net"

[[tunnel]]
name = "to-branch"
customer_gateway = "branch"
psk = "{PSK}"
ike_proposals = ["aes128-sha256-modp2048"]
esp_proposals = ["aes128-sha256"]
start_action = "none"
[[tunnel.spd]]
local = ["10.67.1.0/24"]
remote = ["10.67.2.0/24"]
"#
        ))
        .token("ops", "admin", &format!("sha256:{}", token_hash(ADMIN)))
        .toml();
    site.start(&cfg);
    // Only IKE and ESP from the WAN address may use the WAN's default route.
    let rules = site.gw.sh("ip rule show");
    assert!(rules.contains("from 10.67.100.1 ipproto udp sport 500 lookup 252"), "{rules}");
    assert!(rules.contains("from 10.67.100.1 ipproto esp lookup 252"), "{rules}");

    // The branch's file comes from `peer-config`: it names no address for the branch itself.
    let (ok, conf) = site.cli_text(&["tunnel", "peer-config", "to-branch", "--show-secret"]);
    assert!(ok, "{conf}");
    assert!(!conf.contains("local_addrs") && conf.contains("id = branch.example.net"), "{conf}");
    let swan = Strongswan::start_conf(&branch, &conf, Retransmit::default());
    swan.load_all().unwrap_or_else(|e| panic!("charon refused the file: {e}\n{conf}"));
    let ctx =
        || format!("--- charon\n{}\n{}\n--- isthmusd\n{}", swan.status(), swan.log(), site.log());
    wait_for(
        "a LAN-to-LAN ping to the branch that connected from 10.67.200.9",
        Duration::from_secs(40),
        || site.host.sh_output("ping -c 1 -W 1 10.67.2.10").status.success(),
        ctx,
    );
    let list = site.json(&["tunnel", "list"]);
    assert_eq!(list[0]["state"], "up", "{list}");
    let shown = site.show(&["tunnel", "show", "to-branch"]);
    assert!(shown.contains("10.67.200.9"), "the peer's address is shown: {shown}");
    // The LAN still has no way out of the WAN but the tunnel.
    let out = site.host.sh_output("ping -c 1 -W 1 10.67.201.9");
    assert!(!out.status.success(), "a LAN host reached the Internet: {out:?}");

    // Another peer holds the PSK but presents another identity: refused, and explained.
    let mut wrong = SwanConn::new("intruder", "10.67.201.9", "10.67.100.1", PSK);
    wrong.local_id = "intruder.example.net".into();
    wrong.ike_proposals = "aes128-sha256-modp2048".into();
    wrong.esp_proposals = "aes128-sha256".into();
    wrong.local_ts = "10.67.3.0/24".into();
    wrong.remote_ts = "10.67.1.0/24".into();
    wrong.start_action = Action::None;
    let bad = Strongswan::start(&intruder, &[wrong]);
    bad.load_all().unwrap();
    let e = bad.initiate("intruder-child").expect_err("the wrong identity came up");
    assert!(e.0.contains("AUTHENTICATION_FAILED"), "{e:?}");
    let diag = site.show(&["diagnose", "tunnel", "to-branch"]);
    for want in [
        "identity intruder.example.net",
        "remote id branch.example.net",
        "set its customer gateway's ike_id to intruder.example.net",
    ] {
        assert!(diag.contains(want), "`{want}` missing from the explanation:\n{diag}");
    }
    // The branch's tunnel stayed up through it.
    assert!(site.host.sh_output("ping -c 1 -W 1 10.67.2.10").status.success(), "{}", ctx());
}

#[test]
fn a_peer_known_by_dns_name_is_followed_when_its_address_changes() {
    if !require_root() || !isthmus_testkit::strongswan::available() {
        return;
    }
    let mut site = site("dpn", 11, 18092);
    let r = router(&site);
    let idc = peer(&r, "dni", 202);
    let idc_host = Netns::new("dnih");
    veth(&idc, "lan", "10.67.12.1/24", &idc_host, "eth0", "10.67.12.10/24");
    idc.sh("sysctl -qw net.ipv4.ip_forward=1");
    idc_host.sh("ip route add default via 10.67.12.1");
    // The gateway's resolver: a hosts file of its own namespace (see `Netns::etc_file`),
    // without the IDC's name at first.
    site.gw.etc_file("hosts", "127.0.0.1 localhost\n");

    let cfg = isthmus_testkit::config::Gateway::new("dn")
        .wan("wan0", "10.67.100.1/24", "10.67.100.2")
        .lan("lan", "lan0", "10.67.11.1/24")
        .push(&format!(
            r#"
[[customer_gateway]]
name = "idc"
address = "idc.dyn.example"
ike_id = "idc.dyn.example"
dns_refresh = "1s"

[[tunnel]]
name = "to-idc"
customer_gateway = "idc"
psk = "{PSK}"
[tunnel.dpd]
delay = "2s"
timeout = "6s"
action = "restart"
[[tunnel.spd]]
local = ["10.67.11.0/24"]
remote = ["10.67.12.0/24"]
"#
        ))
        .token("ops", "admin", &format!("sha256:{}", token_hash(ADMIN)))
        .toml();
    // The IDC answers on whatever address it has.
    let mut conn = SwanConn::new("gw", "%any", "10.67.100.1", PSK);
    conn.local_id = "idc.dyn.example".into();
    conn.local_ts = "10.67.12.0/24".into();
    conn.remote_ts = "10.67.11.0/24".into();
    let swan = Strongswan::start(&idc, &[conn]);
    swan.load_all().unwrap();
    site.start(&cfg);
    let ctx =
        || format!("--- charon\n{}\n{}\n--- isthmusd\n{}", swan.status(), swan.log(), site.log());
    let ping = |site: &Site| site.host.sh_output("ping -c 1 -W 1 10.67.12.10").status.success();
    // A name that does not resolve: the tunnel waits, and diagnose says why.
    wait_for(
        "diagnose to say the tunnel waits for DNS",
        Duration::from_secs(20),
        || {
            let out = site.cli_text(&["diagnose", "tunnel", "to-idc"]).1;
            out.contains("customer gateway idc:") && out.contains("waits for an answer")
        },
        || format!("{}\n{}", site.cli_text(&["diagnose", "tunnel", "to-idc"]).1, ctx()),
    );
    site.gw.etc_file("hosts", "127.0.0.1 localhost\n10.67.202.9 idc.dyn.example\n");
    wait_for("a ping to the IDC at 10.67.202.9", Duration::from_secs(40), || ping(&site), ctx);
    let shown = site.show(&["tunnel", "show", "to-idc"]);
    assert!(shown.contains("10.67.202.9"), "{shown}");

    // The IDC's line gets a new address, and its name follows.
    idc.sh("ip addr flush dev wan && ip addr add 10.67.202.77/24 dev wan");
    idc.sh("ip route replace default via 10.67.202.1");
    site.gw.etc_file("hosts", "127.0.0.1 localhost\n10.67.202.77 idc.dyn.example\n");
    wait_for("a ping to the IDC at its new address", Duration::from_secs(60), || ping(&site), ctx);
    let shown = site.show(&["tunnel", "show", "to-idc"]);
    assert!(shown.contains("10.67.202.77"), "{shown}");
    let log = site.log();
    assert!(
        log.contains(
            "customer gateway `idc`: idc.dyn.example resolves to 10.67.202.77 (was 10.67.202.9)"
        ),
        "{log}"
    );
}

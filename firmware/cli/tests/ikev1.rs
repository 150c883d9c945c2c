//! IKEv1 end to end (issue 17): an `isthmusd` with an `ike_version = 1` tunnel that only
//! answers, and a real charon (strongSwan with kernel-libipsec, `version = 1`) loaded with the
//! file `isthmus tunnel peer-config` prints. The tunnel comes up and LAN traffic passes;
//! `tunnel show` says IKEv1; then the peer's proxy IDs and its key are changed in turn, and
//! `isthmus diagnose tunnel` explains each failure. And IKEv1 NAT traversal with charon behind
//! an nftables masquerade. Root only (network namespaces).

use std::time::Duration;

use isthmus_testkit::site::{Binaries, Peer, Site, SiteSpec, token_hash, wait_for};
use isthmus_testkit::strongswan::{Action, Retransmit, Strongswan, SwanConn};
use isthmus_testkit::{Netns, require_root, veth, veth_bare};

const ADMIN: &str = "ist_ikev1-admin-token";
const PSK: &str = "ikev1-psk-0123456789abcdef";

/// A site: LAN `{net}.1.0/24` with the gateway at .1 and the host at .10.
fn site(tag: &str, net: u8, api_port: u16) -> Site {
    Site::new(
        SiteSpec {
            tag: tag.into(),
            lan_gw: format!("10.{net}.1.1/24"),
            lan_host: format!("10.{net}.1.10/24"),
            api_port,
            token: ADMIN.into(),
        },
        &Binaries::next_to_cli(env!("CARGO_BIN_EXE_isthmus")),
    )
}

/// An IKEv1 tunnel that only answers, AES-CBC/SHA-256/MODP-2048 with PFS, protecting
/// `{net}.1.0/24` <-> `{net}.2.0/24`.
fn tunnel(name: &str, peer: &str, net: &str) -> String {
    format!(
        r#"
[[tunnel]]
name = "{name}"
customer_gateway = "{peer}"
ike_version = 1
psk = "{PSK}"
ike_proposals = ["aes256-sha256-modp2048"]
esp_proposals = ["aes256-sha256-modp2048"]
start_action = "none"
[[tunnel.spd]]
local = ["{net}.1.0/24"]
remote = ["{net}.2.0/24"]
"#
    )
}

#[test]
fn ikev1_tunnel_from_peer_config_passes_traffic_and_diagnose_explains_mismatches() {
    if !require_root() || !isthmus_testkit::strongswan::available() {
        return;
    }
    let mut site = site("v1", 68, 18093);
    let peer = Peer::beside(&site, "v1", "10.68.100.2/24", "10.68.2.1/24", "10.68.2.10/24");

    let cfg = isthmus_testkit::config::Gateway::new("v1")
        .wan("wan0", "10.68.100.1/24", "10.68.100.2")
        .lan("lan", "lan0", "10.68.1.1/24")
        .customer_gateway("idc", "10.68.100.2")
        .push(&tunnel("to-idc", "idc", "10.68"))
        .token("ops", "admin", &format!("sha256:{}", token_hash(ADMIN)))
        .toml();
    site.start(&cfg);

    let (ok, conf) = site.cli_text(&["tunnel", "peer-config", "to-idc", "--show-secret"]);
    assert!(ok, "{conf}");
    assert!(conf.contains("version = 1"), "{conf}");
    let swan = Strongswan::start_conf(&peer.gw, &conf, Retransmit::default());
    swan.load_all().unwrap_or_else(|e| panic!("charon refused the file: {e}\n{conf}"));
    let ctx =
        || format!("--- charon\n{}\n{}\n--- isthmusd\n{}", swan.status(), swan.log(), site.log());
    wait_for(
        "a LAN-to-LAN ping through the IKEv1 tunnel charon started",
        Duration::from_secs(40),
        || site.host.sh_output("ping -c 1 -W 1 10.68.2.10").status.success(),
        ctx,
    );
    let st = swan.status();
    assert!(st.contains("IKEv1"), "{st}");
    assert!(st.contains("AES_CBC-256/HMAC_SHA2_256_128/PRF_HMAC_SHA2_256/MODP_2048"), "{st}");
    let show = site.show(&["tunnel", "show", "to-idc"]);
    assert!(show.contains("ike        IKEv1 aes256-sha256-prfsha256-modp2048"), "{show}");
    assert!(show.contains("10.68.1.0/24 <=> 10.68.2.0/24"), "{show}");
    let list = site.json(&["tunnel", "list"]);
    assert_eq!(list[0]["state"], "up", "{list}");
    // `sa list` (issue 18) names the ISAKMP SA by the cookies charon lists (charon initiated:
    // its `_i*`), and the SA pair by the SPIs charon has the other way round.
    let sa = site.sa_list_checked("to-idc");
    assert_eq!((&sa["ike_version"], &sa["initiator"]), (&1.into(), &false.into()), "{sa:#}");
    let st = swan.status();
    let cookies =
        format!("{}_i* {}_r", sa["spi_i"].as_str().unwrap(), sa["spi_r"].as_str().unwrap());
    assert!(st.contains(&cookies), "charon does not list {cookies}:\n{st}");
    let child = &sa["children"][0];
    assert!(st.contains(&format!("in  {}", child["spi_out"].as_str().unwrap())), "{child:#}\n{st}");
    assert!(st.contains(&format!("out {}", child["spi_in"].as_str().unwrap())), "{child:#}\n{st}");

    // The peer changes what it protects, then its key: each failure is explained.
    let mismatches = [
        (
            conf.replace("local_ts = 10.68.2.0/24", "local_ts = 10.68.3.0/24"),
            ["INVALID-ID-INFORMATION", "10.68.3.0/24", "proxy IDs differ"],
        ),
        (
            conf.replace("secret = 0x", "secret = 0x00"),
            ["Main Mode", "INVALID-HASH-INFORMATION", "pre-shared keys differ"],
        ),
    ];
    for (changed, want) in mismatches {
        assert_ne!(changed, conf);
        let _ = swan.terminate_ike("to-idc");
        std::fs::write(swan.dir().join("swanctl/swanctl.conf"), &changed).unwrap();
        // The file says `start_action = start`: loading it starts the tunnel.
        swan.swanctl(&["--load-all", "--clear"]).unwrap_or_else(|e| panic!("{e}"));
        wait_for(
            &format!("`isthmus diagnose tunnel` to explain {}", want[0]),
            Duration::from_secs(40),
            || {
                let out = site.cli_text(&["diagnose", "tunnel", "to-idc"]).1;
                want.iter().all(|w| out.contains(w))
            },
            || format!("{}\n{}", site.cli_text(&["diagnose", "tunnel", "to-idc"]).1, ctx()),
        );
        let out = site.show(&["diagnose", "tunnel", "to-idc"]);
        assert!(out.contains("advice   "), "{out}");
        assert!(!out.contains(PSK), "diagnose shows the PSK: {out}");
        println!("{out}");
    }
}

/// IKEv1 NAT traversal with strongSwan behind an nftables masquerade (a branch on a NATed
/// line): NAT-D shows the NAT (RFC 3947), both sides move to UDP 4500, ESP goes in UDP
/// (RFC 3948) through the NAT, and `diagnose tunnel` says so.
#[test]
fn ikev1_with_strongswan_behind_an_nftables_masquerade() {
    if !require_root() || !isthmus_testkit::strongswan::available() {
        return;
    }
    let mut site = site("v1n", 69, 18094);
    let nat = Netns::new("v1nn");
    let swan_ns = Netns::new("v1ns");
    let swan_host = Netns::new("v1nh");
    veth_bare(&site.gw, "wan0", &nat, "n1");
    veth(&nat, "n2", "10.69.101.254/24", &swan_ns, "wan", "10.69.101.2/24");
    nat.sh("ip addr add 10.69.100.254/24 dev n1 && sysctl -qw net.ipv4.ip_forward=1 \
         && nft add table ip nat \
         && nft add chain ip nat post '{ type nat hook postrouting priority 100; }' \
         && nft add rule ip nat post oifname n1 masquerade");
    swan_ns.sh("ip route add default via 10.69.101.254 && sysctl -qw net.ipv4.ip_forward=1");
    veth(&swan_ns, "lan", "10.69.2.1/24", &swan_host, "eth0", "10.69.2.10/24");
    swan_host.sh("ip route add default via 10.69.2.1");

    // We know the branch by the NAT's outside address and its identity.
    let cfg = isthmus_testkit::config::Gateway::new("v1n")
        .wan("wan0", "10.69.100.1/24", "10.69.100.254")
        .lan("lan", "lan0", "10.69.1.1/24")
        .push("[[customer_gateway]]\nname = \"branch\"\naddress = \"10.69.100.254\"\nike_id = \"branch.example\"")
        .push(&tunnel("to-branch", "branch", "10.69"))
        .token("ops", "admin", &format!("sha256:{}", token_hash(ADMIN)))
        .toml();
    site.start(&cfg);
    let mut conn = SwanConn::new("gw", "10.69.101.2", "10.69.100.1", PSK);
    conn.version = 1;
    conn.child = "net".into();
    conn.local_id = "branch.example".into();
    conn.ike_proposals = "aes256-sha256-modp2048".into();
    conn.esp_proposals = "aes256-sha256-modp2048".into();
    conn.local_ts = "10.69.2.0/24".into();
    conn.remote_ts = "10.69.1.0/24".into();
    conn.start_action = Action::Start;
    let swan = Strongswan::start(&swan_ns, &[conn]);
    swan.load_all().unwrap_or_else(|e| panic!("{e}"));
    let ctx =
        || format!("--- charon\n{}\n{}\n--- isthmusd\n{}", swan.status(), swan.log(), site.log());
    wait_for(
        "a LAN-to-LAN ping through IKEv1 across the NAT",
        Duration::from_secs(40),
        || site.host.sh_output("ping -c 1 -W 1 10.69.2.10").status.success(),
        ctx,
    );
    let out = site.show(&["diagnose", "tunnel", "to-branch"]);
    assert!(out.contains("ESP in UDP 4500") && out.contains("NAT detected"), "{out}");
    assert!(out.contains("RFC 3947"), "{out}");
    // The NAT really rewrote the branch: we see it at the NAT's address, on a mapped port.
    let show = site.show(&["tunnel", "show", "to-branch"]);
    assert!(show.contains("IKEv1") && show.contains("10.69.100.254"), "{show}");
    let st = swan.status();
    assert!(st.contains("IKEv1") && st.contains("10.69.101.2[4500]"), "{st}");
}

//! IKEv1 end to end (issue 17): an `isthmusd` with an `ike_version = 1` tunnel that only
//! answers, and a real charon (strongSwan with kernel-libipsec, `version = 1`) loaded with the
//! file `isthmus tunnel peer-config` prints. The tunnel comes up and LAN traffic passes;
//! `tunnel show` says IKEv1; then the peer's proxy IDs and its key are changed in turn, and
//! `isthmus diagnose tunnel` explains each failure. Root only (network namespaces).

use std::time::Duration;

use isthmus_testkit::require_root;
use isthmus_testkit::site::{Binaries, Peer, Site, SiteSpec, token_hash, wait_for};
use isthmus_testkit::strongswan::{Retransmit, Strongswan};

const ADMIN: &str = "ist_ikev1-admin-token";
const PSK: &str = "ikev1-psk-0123456789abcdef";

#[test]
fn ikev1_tunnel_from_peer_config_passes_traffic_and_diagnose_explains_mismatches() {
    if !require_root() || !isthmus_testkit::strongswan::available() {
        return;
    }
    let mut site = Site::new(
        SiteSpec {
            tag: "v1".into(),
            lan_gw: "10.68.1.1/24".into(),
            lan_host: "10.68.1.10/24".into(),
            api_port: 18093,
            token: ADMIN.into(),
        },
        &Binaries::next_to_cli(env!("CARGO_BIN_EXE_isthmus")),
    );
    let peer = Peer::beside(&site, "v1", "10.68.100.2/24", "10.68.2.1/24", "10.68.2.10/24");

    let cfg = isthmus_testkit::config::Gateway::new("v1")
        .wan("wan0", "10.68.100.1/24", "10.68.100.2")
        .lan("lan", "lan0", "10.68.1.1/24")
        .customer_gateway("idc", "10.68.100.2")
        .push(&format!(
            r#"
[[tunnel]]
name = "to-idc"
customer_gateway = "idc"
ike_version = 1
psk = "{PSK}"
ike_proposals = ["aes256-sha256-modp2048"]
esp_proposals = ["aes256-sha256-modp2048"]
start_action = "none"
[[tunnel.spd]]
local = ["10.68.1.0/24"]
remote = ["10.68.2.0/24"]
"#
        ))
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

//! `isthmus tunnel peer-config`: the swanctl.conf it prints is loaded, untouched, into a real
//! charon (strongSwan with kernel-libipsec) as the customer gateway, which then brings the
//! tunnel up to an `isthmusd` that only answers, and LAN traffic passes. Root only (network
//! namespaces).

use std::time::Duration;

use isthmus_testkit::require_root;
use isthmus_testkit::site::{Binaries, Peer, Site, SiteSpec, token_hash, wait_for};
use isthmus_testkit::strongswan::{Retransmit, Strongswan};

const ADMIN: &str = "ist_peer-config-admin-token";
const PSK: &str = "peer-config-psk-0123456789abcdef";

#[test]
fn the_generated_swanctl_conf_brings_the_tunnel_up_in_a_real_charon() {
    if !require_root() || !isthmus_testkit::strongswan::available() {
        return;
    }
    let mut site = Site::new(
        SiteSpec {
            tag: "pc".into(),
            lan_gw: "10.66.1.1/24".into(),
            lan_host: "10.66.1.10/24".into(),
            api_port: 18090,
            token: ADMIN.into(),
        },
        &Binaries::next_to_cli(env!("CARGO_BIN_EXE_isthmus")),
    );
    // The customer gateway's namespace (charon) and the host behind it.
    let peer = Peer::beside(&site, "pc", "10.66.100.2/24", "10.66.2.1/24", "10.66.2.10/24");

    // Isthmus only answers (start_action none): the peer's file must start the tunnel. The
    // proposals are a cloud default with PFS, and the identity of our side is an FQDN.
    let cfg = isthmus_testkit::config::Gateway::new("pc")
        .wan("wan0", "10.66.100.1/24", "10.66.100.2")
        .lan("lan", "lan0", "10.66.1.1/24")
        .customer_gateway("idc", "10.66.100.2")
        .push(&format!(
            r#"
[[tunnel]]
name = "to-idc"
customer_gateway = "idc"
local_id = "vpc-gw.example.com"
psk = "{PSK}"
ike_proposals = ["aes128-sha256-modp2048"]
esp_proposals = ["aes128-sha256-modp2048"]
start_action = "none"
[[tunnel.spd]]
local = ["10.66.1.0/24"]
remote = ["10.66.2.0/24"]
"#
        ))
        .token("ops", "admin", &format!("sha256:{}", token_hash(ADMIN)))
        .toml();
    site.start(&cfg);

    // Without --show-secret the key is not in the file.
    let (ok, hidden) = site.cli_text(&["tunnel", "peer-config", "to-idc"]);
    assert!(ok, "{hidden}");
    assert!(!hidden.contains(PSK) && hidden.contains("# secret = (hidden"), "{hidden}");
    let hex: String = PSK.bytes().map(|b| format!("{b:02x}")).collect();
    assert!(!hidden.contains(&hex), "{hidden}");
    let (ok, conf) = site.cli_text(&["tunnel", "peer-config", "to-idc", "--show-secret"]);
    assert!(ok, "{conf}");
    assert!(conf.contains("id = vpc-gw.example.com"), "{conf}");
    let (ok, unknown) = site.cli_text(&["tunnel", "peer-config", "to-idc", "--format", "junos"]);
    assert!(!ok && unknown.contains("unknown peer configuration format `junos`"), "{unknown}");

    let swan = Strongswan::start_conf(&peer.gw, &conf, Retransmit::default());
    swan.load_all().unwrap_or_else(|e| panic!("charon refused the file: {e}\n{conf}"));
    let ctx = || {
        format!("--- file\n{conf}\n--- charon\n{}\n{}\n{}", swan.status(), swan.log(), site.log())
    };
    wait_for(
        "a LAN-to-LAN ping through the tunnel charon started",
        Duration::from_secs(40),
        || site.host.sh_output("ping -c 1 -W 1 10.66.2.10").status.success(),
        ctx,
    );
    let st = swan.status();
    assert!(st.contains("AES_CBC-128/HMAC_SHA2_256_128/PRF_HMAC_SHA2_256/MODP_2048"), "{st}");
    assert!(st.contains("ESP:AES_CBC-128/HMAC_SHA2_256_128"), "{st}");
    let list = site.json(&["tunnel", "list"]);
    assert_eq!(list[0]["state"], "up", "{list}");
}

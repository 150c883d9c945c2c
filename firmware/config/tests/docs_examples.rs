//! The examples of docs/config.md: the two sites validate cleanly and their tunnels mirror each
//! other, so an operator copying them gets a working pair; the IKEv1 gateway validates cleanly.

mod common;

use isthmus_config::{Config, IkeVersion, Mode, Secret};

#[test]
fn both_sites_validate_without_errors_or_warnings() {
    for site in ["site-a", "site-b"] {
        let text = common::doc_example(site);
        let checked = Config::check(&text).unwrap_or_else(|e| panic!("{site}:\n{e}"));
        assert!(checked.warnings.is_empty(), "{site} warnings: {:#?}", checked.warnings);
    }
}

#[test]
fn the_two_tunnels_mirror_each_other() {
    let a = Config::from_toml(&common::doc_example("site-a")).unwrap();
    let b = Config::from_toml(&common::doc_example("site-b")).unwrap();
    let (ta, tb) = (&a.tunnels[0], &b.tunnels[0]);
    let (ca, cb) = (
        a.customer_gateway(&ta.customer_gateway).unwrap(),
        b.customer_gateway(&tb.customer_gateway).unwrap(),
    );
    // Each side's peer address is the other's WAN address.
    assert_eq!(ca.address.ip(), Some(b.gateway.wan.address.addr));
    assert_eq!(cb.address.ip(), Some(a.gateway.wan.address.addr));
    // Identities: what one presents is what the other expects.
    assert_eq!(ta.local_id.as_deref(), cb.ike_identity(None).as_deref());
    assert_eq!(tb.local_id.as_deref(), ca.ike_identity(None).as_deref());
    // Selectors are mirrored.
    assert_eq!((ta.mode, tb.mode), (Mode::Policy, Mode::Policy));
    assert_eq!(ta.spd[0].local, tb.spd[0].remote);
    assert_eq!(ta.spd[0].remote, tb.spd[0].local);
    // Proposals and timers agree; keys come from the environment on both sides.
    assert_eq!(ta.ike_proposals, tb.ike_proposals);
    assert_eq!(ta.esp_proposals, tb.esp_proposals);
    assert_eq!(ta.dpd, tb.dpd);
    assert!(matches!(ta.psk, Secret::Env(_)) && matches!(tb.psk, Secret::Env(_)));
    // Health checks probe the other side's LAN address.
    let (ha, hb) = (ta.health_check.as_ref().unwrap(), tb.health_check.as_ref().unwrap());
    assert_eq!((ha.source, ha.destination), (hb.destination, hb.source));
}

#[test]
fn canonical_form_reads_back_to_the_same_configuration() {
    // Neither example has an inline secret, so the shown form is a complete configuration.
    for site in ["site-a", "site-b"] {
        let c = Config::from_toml(&common::doc_example(site)).unwrap();
        let shown = c.to_toml_redacted();
        let again = Config::from_toml(&shown).unwrap_or_else(|e| panic!("{site}:\n{e}\n{shown}"));
        assert_eq!(again, c, "{site}");
        // Defaults are filled in: an operator sees the values in effect.
        assert!(shown.contains("rekey_fuzz_percent = 100"), "{shown}");
        assert!(shown.contains("port = 8443"), "{shown}");
    }
}

#[test]
fn the_ikev1_example_validates_cleanly_and_speaks_ikev1() {
    let text = common::doc_example("ikev1");
    let checked = Config::check(&text).unwrap_or_else(|e| panic!("ikev1:\n{e}"));
    assert!(checked.warnings.is_empty(), "ikev1 warnings: {:#?}", checked.warnings);
    let t = &checked.config.tunnels[0];
    assert_eq!((t.ike_version, t.aggressive_mode), (IkeVersion::V1, false));
    assert!(Config::from_toml(&checked.config.to_toml_redacted()).unwrap() == checked.config);
}

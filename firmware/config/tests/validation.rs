//! Bad configurations are refused with every error, each at the right path; likely mistakes are
//! warned about; secrets never appear in what is reported.

mod common;

use isthmus_config::{Config, Errors, Issue};

fn find<'a>(issues: &'a [Issue], path: &str) -> &'a Issue {
    issues
        .iter()
        .find(|i| i.path == path)
        .unwrap_or_else(|| panic!("no issue at `{path}`; issues:\n{}", Errors(issues.to_vec())))
}

fn errors(text: &str) -> Vec<Issue> {
    match Config::check(text) {
        Ok(c) => panic!("accepted; warnings: {:#?}", c.warnings),
        Err(e) => e.0,
    }
}

fn warnings(text: &str) -> Vec<Issue> {
    Config::check(text).unwrap_or_else(|e| panic!("refused:\n{e}")).warnings
}

#[test]
fn every_structural_error_is_reported_with_its_path_and_line() {
    let text = r#"
[gateway]
name = "gw"
[gateway.wan]
interface = "eth0"
address = "203.0.113.10"
next_hop = "203.0.113.1"
[[gateway.lan]]
name = "app"
interface = "eth1"
addresses = ["10.10.0.1/24"]
networks = ["10.10.0.0/16", "10.11.2.0/16", "10.12.0.0/16", "nonsense"]

[[tunnel]]
name = "a"
customer_gateway = "idc"
psk = { env = "P" }
[[tunnel.spd]]
local = "10.10.0.0/16"
remotes = "10.20.0.0/16"

[[tunnel]]
name = "b"
customer_gateway = "idc"
psk = { env = "P" }
mtu = "big"
[[tunnel.spd]]
local = "10.10.0.0/16"
remote = ["10.20.0.0/16", "10.30.0.1/16"]

[[route_tables]]
name = "x"
"#;
    let e = errors(text);
    let addr = find(&e, "gateway.wan.address");
    assert!(addr.message.contains("`203.0.113.10/24`"), "{addr}");
    assert_eq!((addr.line, addr.column), (Some(6), Some(11)), "{addr:?}");
    let host_bits = find(&e, "gateway.lan[0].networks[1]");
    assert!(host_bits.message.contains("did you mean `10.11.0.0/16`?"), "{host_bits}");
    // After the bad element is cut out, later elements keep the index the operator wrote.
    find(&e, "gateway.lan[0].networks[3]");
    let unknown = find(&e, "tunnel[0].spd[0].remotes");
    assert!(unknown.message.contains("did you mean `remote`?"), "{unknown}");
    assert_eq!((unknown.line, unknown.column), (Some(20), Some(1)), "{unknown:?}");
    find(&e, "tunnel[0].spd[0].remote"); // the required field is then missing
    find(&e, "tunnel[1].mtu");
    let remote = find(&e, "tunnel[1].spd[0].remote[1]");
    assert!(remote.message.contains("10.30.0.0/16"), "{remote}");
    let section = find(&e, "route_tables");
    assert!(section.message.contains("did you mean `route_table`?"), "{section}");
    assert!(e.len() >= 8, "{}", Errors(e.clone()));
}

#[test]
fn syntax_errors_give_a_line_and_never_quote_the_source() {
    let text = "[gateway]\nname = \"gw\"\n[[tunnel]]\npsk = \"TOPSECRETKEY\n";
    let e = errors(text);
    assert_eq!(e.len(), 1);
    assert!(e[0].message.starts_with("TOML syntax"), "{}", e[0]);
    assert_eq!((e[0].line, e[0].column), (Some(4), Some(20)), "{:?}", e[0]);
    assert!(!e[0].to_string().contains("TOPSECRETKEY"));
}

#[test]
fn malformed_secrets_are_reported_without_their_value() {
    let text = common::gateway("x", 0).replace("psk = \"x\"", "psk = 987654321987");
    let e = errors(&text);
    let psk = find(&e, "tunnel[0].psk");
    assert!(psk.message.contains("a secret is a string"), "{psk}");
    assert!(!Errors(e.clone()).to_string().contains("987654321987"));
}

#[test]
fn semantic_errors_name_their_fields() {
    let base = common::gateway("a-long-enough-pre-shared-key", 0);
    let text = base
        .replace("customer_gateway = \"idc\"", "customer_gateway = \"idcc\"")
        .replace("local = \"10.10.0.0/16\"", "local = [\"10.10.0.0/16\", \"10.99.0.0/16\"]")
        .replace("id = 100", "id = 254")
        + r#"
[[route_table.route]]
prefix = "198.51.100.0/24"
tunnel = "to-idc"
[[route_table.route]]
prefix = "10.20.0.0/16"
tunnel = "to-idc"
[[route_table.route]]
prefix = "10.21.0.0/16"
tunnel = "nowhere"
[[route_table.route]]
prefix = "10.22.0.0/16"

[[customer_gateway]]
name = "idc"
address = "198.51.100.21"

[[tunnel]]
name = "bad-crypto"
customer_gateway = "idc"
psk = { env = "P" }
mode = "route"
ike_proposals = ["aes256gcm16-prfsha256", "aes257gcm16-prfsha256-x25519"]
esp_proposals = []
child_lifetime = "10m"
child_rekey_margin = "9m"
[tunnel.dpd]
delay = "30s"
timeout = "10s"
"#;
    let e = errors(&text);
    let cgw = find(&e, "tunnel[0].customer_gateway");
    assert!(cgw.message.contains("did you mean `idc`?"), "{cgw}");
    let local = find(&e, "tunnel[0].spd[0].local[1]");
    assert!(local.message.contains("not inside the gateway's LAN networks"), "{local}");
    assert!(find(&e, "route_table[0].id").message.contains("reserved"));
    // The tunnel's peer was not resolved, so the loop check could not run for tunnel[0] ... but the
    // duplicate route, the dangling tunnel and the missing next hop are still found.
    assert!(find(&e, "route_table[0].route[2]").message.contains("same prefix 10.20.0.0/16"));
    assert!(find(&e, "route_table[0].route[3].tunnel").message.contains("`nowhere`"));
    assert!(find(&e, "route_table[0].route[4]").message.contains("exactly one next hop"));
    assert!(find(&e, "customer_gateway[1].name").message.contains("already used"));
    let ike = find(&e, "tunnel[1].ike_proposals[0]");
    assert!(ike.message.contains("key exchange group"), "{ike}");
    assert!(find(&e, "tunnel[1].ike_proposals[1]").message.contains("aes257gcm16"));
    find(&e, "tunnel[1].esp_proposals");
    let margin = find(&e, "tunnel[1].child_rekey_margin");
    assert!(margin.message.contains("leaves no time"), "{margin}");
    find(&e, "tunnel[1].dpd.timeout");
    // Lines and columns are found for validation errors too: a key's column for a field, the
    // element's for a list element.
    assert!(e.iter().all(|i| i.line.is_some() && i.column.is_some()), "{}", Errors(e.clone()));
    assert_eq!(cgw.column, Some(1), "{cgw:?}");
    let second = find(&e, "tunnel[1].ike_proposals[1]");
    let line = text.lines().nth(second.line.unwrap() - 1).unwrap();
    assert_eq!(line.find("\"aes257").map(|c| c + 1), second.column, "{second:?}");
}

#[test]
fn a_route_never_sends_a_peers_own_address_into_its_tunnel() {
    let text = common::gateway("a-long-enough-pre-shared-key", 0)
        + "[[route_table.route]]\nprefix = \"0.0.0.0/0\"\ntunnel = \"to-idc\"\nmetric = 200\n";
    let e = errors(&text);
    let r = find(&e, "route_table[0].route[1].prefix");
    assert!(r.message.contains("198.51.100.20") && r.message.contains("loop"), "{r}");
    assert!(r.message.contains("the address of customer gateway `idc`"), "{r}");
}

#[test]
fn references_and_bindings_are_checked_across_sections() {
    let text = common::gateway("a-long-enough-pre-shared-key", 0)
        + r#"
[[security_group]]
name = "sg"
tunnels = ["to-idc", "to-nowhere"]
lans = ["ap"]
[[security_group.rule]]
priority = 10
action = "allow"
direction = "in"
protocol = "icmp"
ports = 80
[[security_group.rule]]
priority = 10
action = "deny"
direction = "in"

[[plugin]]
name = "p"
hook = "security-group"
plugin = "allowlist"
digest = "sha256:1234"
targets = ["sg", "nope"]

[[alarm]]
name = "lossy"
kind = "health-loss"
tunnels = ["to-idc"]
notify = ["pager"]

[[notify]]
name = "n"
webhook = "ftp://example.net"
"#;
    let e = errors(&text);
    find(&e, "security_group[0].tunnels[1]");
    assert!(find(&e, "security_group[0].lans[0]").message.contains("did you mean `app`?"));
    assert!(find(&e, "security_group[0].rule[0].ports").message.contains("icmp"));
    assert!(find(&e, "security_group[0].rule[1].priority").message.contains("already used"));
    assert!(find(&e, "plugin[0].digest").message.contains("64 hex"));
    assert!(find(&e, "plugin[0].signed_by").message.contains("trusted_key"));
    assert!(find(&e, "plugin[0].targets[1]").message.contains("security group `nope`"));
    find(&e, "alarm[0].threshold");
    assert!(find(&e, "alarm[0].tunnels[0]").message.contains("no health_check"));
    find(&e, "alarm[0].notify[0]");
    find(&e, "notify[0].webhook");
}

#[test]
fn likely_mistakes_are_warnings() {
    let text = common::gateway("Xq9!zz", 0)
        .replace("remote = \"10.20.0.0/16\"", "remote = [\"0.0.0.0/0\", \"10.10.5.0/24\"]")
        .replace("[[api_token]]", "[tunnel.dpd]\ndelay = 0\n\n[[api_token]]")
        .replace(
            "[gateway.management]\ninterface = \"eth2\"\naddress = \"192.168.100.10/24\"\n",
            "",
        );
    // The route into the tunnel now also covers the peer: drop it to keep this about warnings.
    let text =
        text.replace("[[route_table.route]]\nprefix = \"10.20.0.0/16\"\ntunnel = \"to-idc\"\n", "");
    let w = warnings(&text);
    let psk = find(&w, "tunnel[0].psk");
    assert!(psk.message.contains("only 6 characters"), "{psk}");
    assert!(!psk.message.contains("Xq9!zz"));
    assert!(find(&w, "tunnel[0].dpd").message.contains("dead peer detection is off"));
    assert!(find(&w, "tunnel[0].spd[0].remote[0]").message.contains("all LAN traffic"));
    assert!(find(&w, "tunnel[0].spd[0].remote[1]").message.contains("overlaps the local network"));
    find(&w, "gateway.management");
}

#[test]
fn two_tunnels_sharing_selectors_is_ambiguous() {
    let text = common::gateway("a-long-enough-pre-shared-key", 0)
        + r#"
[[customer_gateway]]
name = "idc2"
address = "198.51.100.30"
[[tunnel]]
name = "to-idc2"
customer_gateway = "idc2"
psk = "another-long-pre-shared-key"
[[tunnel.spd]]
local = "10.10.1.0/24"
remote = "10.20.128.0/17"
"#;
    let w = warnings(&text);
    let o = find(&w, "tunnel[1].spd[0].remote[0]");
    assert!(o.message.contains("ambiguous") && o.message.contains("`to-idc`"), "{o}");
}

#[test]
fn show_redacts_inline_secrets_but_shows_their_fingerprint() {
    let c = Config::from_toml(&common::gateway("correct-horse-battery-staple", 0)).unwrap();
    let shown = c.to_toml_redacted();
    assert!(!shown.contains("correct-horse"), "{shown}");
    let fp = isthmus_config::secret::fingerprint("correct-horse-battery-staple");
    assert!(shown.contains(&format!("psk = \"<redacted sha256:{fp}>\"")), "{shown}");
    assert!(!format!("{c:?}").contains("correct-horse"));
}

#[test]
fn show_output_committed_back_is_refused_for_its_redacted_keys() {
    let c = Config::from_toml(&common::gateway("correct-horse-battery-staple", 0)).unwrap();
    let e = errors(&c.to_toml_redacted());
    assert!(find(&e, "tunnel[0].psk").message.contains("redacted form"), "{}", Errors(e.clone()));
}

#[test]
fn unreadable_secret_references_are_reported_by_path() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("psk");
    std::fs::write(&file, "a-key-from-a-file-0123456789\n").unwrap();
    let text = common::gateway("x", 0)
        .replace("psk = \"x\"", &format!("psk = {{ file = \"{}\" }}", file.display()))
        + "[[notify]]\nname = \"n\"\nwebhook = \"https://example.net/h\"\nsecret = { env = \"ISTHMUS_TEST_NO_SUCH_VAR\" }\n";
    let c = Config::from_toml(&text).unwrap();
    let missing = c.check_secrets();
    assert_eq!(missing.len(), 1, "{missing:?}");
    assert_eq!(missing[0].path, "notify[0].secret");
    assert!(missing[0].message.contains("ISTHMUS_TEST_NO_SUCH_VAR"));
    assert_eq!(c.tunnels[0].psk.resolve().unwrap().expose(), "a-key-from-a-file-0123456789");
}

#[test]
fn a_tunnel_mtu_below_1280_is_refused_when_ipv6_goes_into_a_tunnel() {
    let low = |extra: &str| {
        common::gateway("a-long-enough-pre-shared-key", 0)
            + r#"
[[customer_gateway]]
name = "branch"
address = "198.51.100.40"
[[tunnel]]
name = "to-branch"
customer_gateway = "branch"
psk = "another-long-pre-shared-key"
mtu = 1200
[[tunnel.spd]]
local = "10.10.2.0/24"
remote = "10.40.0.0/16"
"# + extra
    };
    // IPv4 only: a small MTU is fine.
    warnings(&low(""));
    // An IPv6 route into any tunnel: the shared device would have no IPv6.
    let e = errors(&low("[[route_table.route]]\nprefix = \"fd00:20::/48\"\ntunnel = \"to-idc\"\n"));
    let i = find(&e, "tunnel[1].mtu");
    assert!(i.message.contains("MTU 1200 is below 1280"), "{i}");
    assert!(i.message.contains("route_table[0].route[1] (fd00:20::/48)"), "{i}");
}

#[test]
fn a_file_that_is_not_utf8_is_refused_with_its_line_and_byte_offset() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("gw.toml");
    // Latin-1 "é" (0xe9) on line 3, the 9th byte of that line.
    std::fs::write(&file, b"[gateway]\nname = \"a\"\n# caf\xe9 \xe9\n").unwrap();
    let e = isthmus_config::read_file(&file).unwrap_err().to_string();
    assert!(e.contains("gw.toml is not UTF-8"), "{e}");
    assert!(e.contains("byte 0xe9 at line 3, byte 6 of that line (offset 26 in the file)"), "{e}");
    std::fs::write(&file, "[gateway]\nname = \"café\"\n").unwrap();
    assert_eq!(isthmus_config::read_file(&file).unwrap(), "[gateway]\nname = \"café\"\n");
    let gone = isthmus_config::read_file(&dir.path().join("nope.toml")).unwrap_err().to_string();
    assert!(gone.contains("nope.toml") && gone.contains("No such file"), "{gone}");
}

#[test]
fn tunnels_share_one_tun_device_and_say_so() {
    // Issue 14 item 8: `tunnel.interface` was documented per tunnel, and the duplicate-name
    // check still derived `ist-<name>`, though every tunnel uses `ist0`.
    let base = common::gateway("a-long-enough-pre-shared-key", 0);
    let second = "\n[[tunnel]]\nname = \"to-idc-2\"\ncustomer_gateway = \"idc\"\npsk = \"another-long-enough-key-0\"\n[[tunnel.spd]]\nlocal = \"10.10.0.0/16\"\nremote = \"10.21.0.0/16\"\n";
    let with_if = base.replace("name = \"to-idc\"\n", "name = \"to-idc\"\ninterface = \"vpn7\"\n");
    let w = warnings(&(with_if + second));
    let i = find(&w, "tunnel[0].interface");
    assert!(i.message.contains("no effect") && i.message.contains("`ist0`"), "{i}");
    assert!(!w.iter().any(|x| x.message.contains("ist-")), "{w:?}");
    let e = errors(&base.replace("interface = \"eth1\"", "interface = \"ist0\""));
    let lan = find(&e, "gateway.lan[0].interface");
    assert!(lan.message.contains("`ist0` is already used by the shared TUN device"), "{lan}");
}

#[test]
fn weak_algorithms_need_allow_weak_and_are_named_in_warnings() {
    let psk = "correct-horse-battery-staple-42";
    let with = |extra: &str| {
        common::gateway(psk, 0).replace("psk = \"correct", &format!("{extra}psk = \"correct"))
    };
    let weak = with(
        "ike_proposals = [\"aes256-sha256-modp2048\", \"aes128-sha1-modp1024\"]\n\
         esp_proposals = [\"aes256gcm16-modp1536\"]\n",
    );
    let e = errors(&weak);
    let ike = find(&e, "tunnel[0].ike_proposals[1]");
    assert_eq!(
        ike.message,
        "uses weak algorithms (sha1, prfsha1, modp1024); remove them, or set allow_weak = true \
         on the tunnel if the peer offers nothing stronger"
    );
    assert!(find(&e, "tunnel[0].esp_proposals[0]").message.contains("(modp1536)"));
    assert!(e.iter().all(|i| i.path != "tunnel[0].ike_proposals[0]"), "a cloud default is fine");

    let allowed = weak.replace("ike_proposals", "allow_weak = true\nike_proposals");
    let w = warnings(&allowed);
    let ike = find(&w, "tunnel[0].ike_proposals[1]");
    assert!(ike.message.starts_with("uses weak algorithms (sha1, prfsha1, modp1024), accepted"));
    find(&w, "tunnel[0].esp_proposals[0]");
    // What `isthmus tunnel show` lists.
    let c = Config::check(&allowed).unwrap().config;
    let t = c.tunnel("to-idc").unwrap();
    assert_eq!(t.weak_algorithms(), ["sha1", "prfsha1", "modp1024", "modp1536"]);

    // Every ESP suite the IKE crate negotiates, the fast path installs: cloud defaults pass.
    let ok = with(
        "esp_proposals = [\"aes128-sha256-modp2048\", \"aes256-sha512\", \"chacha20poly1305\"]\n",
    );
    assert_eq!(warnings(&ok), []);
}

#[test]
fn peers_without_a_fixed_address_are_recognised_by_identity_and_only_answered() {
    let psk = "correct-horse-battery-staple-42";
    let any = common::gateway(psk, 0).replace("address = \"198.51.100.20\"", "address = \"any\"");
    let e = errors(&any);
    assert!(
        find(&e, "customer_gateway[0].ike_id")
            .message
            .contains("recognised only by its IKE identity")
    );
    assert!(find(&e, "tunnel[0].start_action").message.contains("set start_action = \"none\""));

    let ok = any
        .replace("address = \"any\"", "address = \"any\"\nike_id = \"@branch1.example.com\"")
        .replace("psk = \"correct", "start_action = \"none\"\npsk = \"correct");
    Config::check(&ok).unwrap_or_else(|e| panic!("refused:\n{e}"));
    // Two such peers with one identity could not be told apart.
    let twice = ok.replace(
        "[[tunnel]]",
        "[[customer_gateway]]\nname = \"idc2\"\naddress = \"any\"\nike_id = \"@Branch1.example.com\"\n\n[[tunnel]]",
    );
    assert!(find(&errors(&twice), "customer_gateway[1].ike_id").message.contains("told apart"));

    // A DNS name, re-resolved as often as `dns_refresh` says; a typo is named.
    let named = common::gateway(psk, 0)
        .replace("\"198.51.100.20\"", "\"vpn.idc.example.com\"\ndns_refresh = \"30s\"");
    let c = Config::check(&named).unwrap_or_else(|e| panic!("refused:\n{e}")).config;
    assert_eq!(c.customer_gateways[0].address.to_string(), "vpn.idc.example.com");
    let typo = common::gateway(psk, 0).replace("\"198.51.100.20\"", "\"198.51.100.300\"");
    let e = errors(&typo);
    assert!(
        find(&e, "customer_gateway[0].address")
            .message
            .contains("neither an IP address, \"any\", nor a DNS name"),
        "{e:?}"
    );
    let refresh_on_ip = common::gateway(psk, 0)
        .replace("\"198.51.100.20\"", "\"198.51.100.20\"\ndns_refresh = \"5s\"");
    assert!(
        find(&errors(&refresh_on_ip), "customer_gateway[0].dns_refresh")
            .message
            .contains("only a DNS name")
    );
    // Isthmus's own table for such peers is not a route table's.
    let t252 = common::gateway(psk, 0).replace("id = 100", "id = 252");
    assert!(find(&errors(&t252), "route_table[0].id").message.contains("Isthmus's own"));
}

#[test]
fn ikev1_refuses_what_it_cannot_negotiate_and_warns_about_aggressive_mode() {
    let psk = "correct-horse-battery-staple-42";
    let with = |extra: &str| {
        common::gateway(psk, 0).replace("psk = \"correct", &format!("{extra}psk = \"correct"))
    };
    // A value other than 2, 1 or "any" is reported at its field, with the accepted values.
    for bad in ["3", "\"v1\""] {
        let e = errors(&with(&format!("ike_version = {bad}\n")));
        let v = find(&e, "tunnel[0].ike_version");
        assert!(v.message.contains("ike_version must be 2 (IKEv2), 1 (IKEv1) or \"any\""), "{v}");
    }
    // Aggressive Mode is IKEv1's.
    let e = errors(&with("aggressive_mode = true\n"));
    assert_eq!(
        find(&e, "tunnel[0].aggressive_mode").message,
        "aggressive_mode is IKEv1 Main Mode's alternative; set ike_version = 1 or \"any\""
    );

    // The defaults (AES-GCM with x25519) have no IKEv1 phase 1; ESP AES-GCM is fine.
    let e = errors(&with("ike_version = 1\n"));
    let gcm: Vec<&Issue> = e.iter().filter(|i| i.path == "tunnel[0].ike_proposals[0]").collect();
    assert_eq!(gcm.len(), 2, "{}", Errors(e.clone()));
    assert!(
        gcm[0].message.starts_with("`aes256gcm16-prfsha256-x25519` uses an AEAD cipher")
            && gcm[0].message.contains("RFC 2409")
            && gcm[0].message.contains("aes256-sha256-modp2048"),
        "{}",
        gcm[0]
    );
    assert!(gcm[1].message.contains("x25519, an IKEv2 group"), "{}", gcm[1]);
    assert!(find(&e, "tunnel[0].ike_proposals[1]").message.contains("AEAD"));
    assert!(e.iter().all(|i| !i.path.contains("esp_proposals")), "{}", Errors(e.clone()));

    // MODP and ECP groups, GCM in Quick Mode: no findings.
    let v1 =
        "ike_version = 1\nike_proposals = [\"aes256-sha256-modp2048\", \"aes128-sha256-ecp256\"]\n";
    let ok = with(&format!(
        "{v1}esp_proposals = [\"aes256gcm16-ecp256\", \"aes256-sha256-modp2048\"]\n"
    ));
    assert_eq!(warnings(&ok), []);

    // x25519 as the PFS group, ChaCha20-Poly1305 and ESN are IKEv2 only.
    let e = errors(&with(&format!(
        "{v1}esp_proposals = [\"aes256gcm16-x25519\", \"chacha20poly1305\", \"aes128gcm16-esn\"]\n"
    )));
    assert!(find(&e, "tunnel[0].esp_proposals[0]").message.contains("x25519"));
    assert!(find(&e, "tunnel[0].esp_proposals[1]").message.contains("no IKEv1 ESP transform"));
    assert!(find(&e, "tunnel[0].esp_proposals[2]").message.contains("extended sequence numbers"));

    // Aggressive Mode with IKEv1 (or either version) is allowed, with a warning on the PSK.
    for version in ["1", "\"any\""] {
        let text =
            with(&format!("{v1}aggressive_mode = true\n").replace("= 1", &format!("= {version}")));
        let w = warnings(&text);
        let a = find(&w, "tunnel[0].aggressive_mode");
        assert!(
            a.message.contains("RFC 2409 §5.4") && a.message.contains("guess the key offline"),
            "{a}"
        );
        assert_eq!(w.len(), 1, "{}", Errors(w.clone()));
    }

    // Either version with only IKEv2 proposals: IKEv1 peers are refused, which is likely a mistake.
    let w = warnings(&with("ike_version = \"any\"\n"));
    assert!(find(&w, "tunnel[0].ike_proposals").message.contains("IKEv1 peer will be refused"));

    // A port range has no IKEv1 proxy ID; several prefixes per entry need one version.
    let ports = with(v1).replace(
        "remote = \"10.20.0.0/16\"",
        "remote = \"10.20.0.0/16\"\nprotocol = \"tcp\"\nremote_ports = \"8000-8080\"",
    );
    let e = errors(&ports);
    assert!(find(&e, "tunnel[0].spd[0].remote_ports").message.contains("one port or all"));
    let two = with(&v1.replace("= 1", "= \"any\""))
        .replace("remote = \"10.20.0.0/16\"", "remote = [\"10.20.0.0/16\", \"10.30.0.0/16\"]");
    assert!(find(&errors(&two), "tunnel[0].spd[0]").message.contains("one entry per pair"));
    let two_v1 = two.replace("ike_version = \"any\"", "ike_version = 1");
    assert_eq!(warnings(&two_v1), [], "IKEv1 alone names the pairs apart");
}

//! Shared configurations for the integration tests.
#![allow(dead_code)]

/// A small valid gateway with one policy-mode tunnel and `extra` additional routes.
pub fn gateway(psk: &str, extra: usize) -> String {
    let mut s = format!(
        r#"
[gateway]
name = "gw"
[gateway.wan]
interface = "eth0"
address = "203.0.113.10/24"
next_hop = "203.0.113.1"
[[gateway.lan]]
name = "app"
interface = "eth1"
addresses = ["10.10.0.1/24"]
networks = ["10.10.0.0/16"]
next_hop = "10.10.0.254"
[gateway.management]
interface = "eth2"
address = "192.168.100.10/24"

[[customer_gateway]]
name = "idc"
address = "198.51.100.20"

[[tunnel]]
name = "to-idc"
customer_gateway = "idc"
psk = "{psk}"
[[tunnel.spd]]
local = "10.10.0.0/16"
remote = "10.20.0.0/16"

[[api_token]]
name = "ops"
role = "admin"
token_hash = "sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"

[[route_table]]
name = "vpn"
id = 100
[[route_table.route]]
prefix = "10.20.0.0/16"
tunnel = "to-idc"
"#
    );
    for k in 0..extra {
        s.push_str(&format!(
            "[[route_table.route]]\nprefix = \"10.{}.{}.0/24\"\ntunnel = \"to-idc\"\n",
            30 + k / 256,
            k % 256
        ));
    }
    s
}

/// The example configuration named `name` in docs/config.md.
pub fn doc_example(name: &str) -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/config.md");
    let doc = std::fs::read_to_string(path).expect("docs/config.md");
    let marker = format!("<!-- example: {name} -->");
    let at = doc.find(&marker).unwrap_or_else(|| panic!("no example {name} in docs/config.md"));
    let rest = &doc[at + marker.len()..];
    let start = rest.find("```toml\n").expect("a toml block after the marker") + 8;
    let end = rest[start..].find("\n```").expect("end of the toml block");
    rest[start..start + end + 1].to_owned()
}

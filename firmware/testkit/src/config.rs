//! The one builder of the gateway configurations tests apply: `[gateway]` with its WAN and LANs,
//! API tokens, trusted plugin keys and customer gateways, and anything else verbatim (tunnels,
//! security groups, alarms: what a test is about). Validation rules live in `isthmus-config`;
//! this only writes the TOML every test used to copy.
//!
//! ```
//! let toml = isthmus_testkit::config::Gateway::new("gw1")
//!     .wan("wan0", "10.64.1.1/24", "10.64.1.254")
//!     .lan("app", "lan0", "10.64.10.1/24")
//!     .customer_gateway("peer", "10.64.1.2")
//!     .push("[[tunnel]]\nname = \"t1\"\ncustomer_gateway = \"peer\"\npsk = \"x\"\n")
//!     .toml();
//! assert!(toml.contains("[[gateway.lan]]\nname = \"app\""));
//! ```

use std::fmt::Write;

/// A `[[gateway.lan]]`.
#[derive(Clone, Debug)]
struct Lan {
    name: String,
    interface: String,
    addresses: Vec<String>,
    networks: Vec<String>,
    next_hop: Option<String>,
}

/// A gateway configuration under construction.
#[derive(Clone, Debug)]
pub struct Gateway {
    name: String,
    wan: (String, String, String),
    lans: Vec<Lan>,
    /// Tables after `[gateway]`'s, in the order they were added.
    rest: String,
}

impl Gateway {
    /// Gateway `name` with its WAN on the loopback (`lo`, 127.0.0.1/8, next hop 127.0.0.2), for
    /// tests of the API and the store that need no network of their own.
    pub fn new(name: &str) -> Gateway {
        Gateway {
            name: name.to_owned(),
            wan: ("lo".into(), "127.0.0.1/8".into(), "127.0.0.2".into()),
            lans: Vec::new(),
            rest: String::new(),
        }
    }

    /// The WAN interface, its address with prefix length, and the next hop.
    pub fn wan(mut self, interface: &str, address: &str, next_hop: &str) -> Gateway {
        self.wan = (interface.into(), address.into(), next_hop.into());
        self
    }

    /// A LAN with one address (with prefix length) on `interface`.
    pub fn lan(self, name: &str, interface: &str, address: &str) -> Gateway {
        self.routed_lan(name, interface, &[address], &[], None)
    }

    /// A LAN with several addresses, `networks` behind it beyond its subnets, reached through
    /// `next_hop` when given.
    pub fn routed_lan(
        mut self,
        name: &str,
        interface: &str,
        addresses: &[&str],
        networks: &[&str],
        next_hop: Option<&str>,
    ) -> Gateway {
        let owned = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect();
        self.lans.push(Lan {
            name: name.into(),
            interface: interface.into(),
            addresses: owned(addresses),
            networks: owned(networks),
            next_hop: next_hop.map(str::to_owned),
        });
        self
    }

    /// An API token with `role` (`admin`, `read-only`) and the token's hash
    /// (`isthmus_config::hash_token`).
    pub fn token(self, name: &str, role: &str, hash: &str) -> Gateway {
        self.push(&format!(
            "[[api_token]]\nname = \"{name}\"\nrole = \"{role}\"\ntoken_hash = \"{hash}\"\n"
        ))
    }

    /// A trusted plugin signing key (`ed25519:...`).
    pub fn trusted_key(self, name: &str, public_key: &str) -> Gateway {
        self.push(&format!("[[trusted_key]]\nname = \"{name}\"\npublic_key = \"{public_key}\"\n"))
    }

    /// A customer gateway at `address`.
    pub fn customer_gateway(self, name: &str, address: &str) -> Gateway {
        self.push(&format!("[[customer_gateway]]\nname = \"{name}\"\naddress = \"{address}\"\n"))
    }

    /// TOML appended as it is (a blank line is put before it).
    pub fn push(mut self, toml: &str) -> Gateway {
        self.rest.push('\n');
        self.rest.push_str(toml);
        if !toml.ends_with('\n') {
            self.rest.push('\n');
        }
        self
    }

    /// The configuration's text.
    pub fn toml(&self) -> String {
        let (interface, address, next_hop) = &self.wan;
        let mut s = format!(
            "[gateway]\nname = \"{}\"\n[gateway.wan]\ninterface = \"{interface}\"\naddress = \"{address}\"\nnext_hop = \"{next_hop}\"\n",
            self.name
        );
        let list =
            |v: &[String]| v.iter().map(|a| format!("\"{a}\"")).collect::<Vec<_>>().join(", ");
        for l in &self.lans {
            let _ = write!(
                s,
                "[[gateway.lan]]\nname = \"{}\"\ninterface = \"{}\"\naddresses = [{}]\n",
                l.name,
                l.interface,
                list(&l.addresses)
            );
            if !l.networks.is_empty() {
                let _ = writeln!(s, "networks = [{}]", list(&l.networks));
            }
            if let Some(h) = &l.next_hop {
                let _ = writeln!(s, "next_hop = \"{h}\"");
            }
        }
        s.push_str(&self.rest);
        s
    }
}

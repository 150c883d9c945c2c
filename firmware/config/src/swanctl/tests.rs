use super::*;

fn fixture(name: &str) -> Source {
    let path = format!("{}/tests/fixtures/strongswan/{name}.conf", env!("CARGO_MANIFEST_DIR"));
    Source { name: format!("{name}.conf"), text: std::fs::read_to_string(&path).expect(&path) }
}

fn no_includes(_: &str, p: &str) -> Result<Vec<Source>, String> {
    Err(format!("{p}: not found"))
}

fn run(src: &Source) -> Imported {
    import(src, None, &mut no_includes, &Options::default())
        .unwrap_or_else(|e| panic!("{}: {e}", src.name))
}

/// The notes as `LINE: SETTING` (the message checked where it matters).
fn noted(i: &Imported) -> Vec<String> {
    i.notes.iter().map(|n| format!("{}: {}", n.loc.line, n.setting)).collect()
}

/// What one strongSwan example must produce.
struct Expect {
    fixture: &'static str,
    /// (tunnel, peer address, IKE proposals, ESP proposals, local, remote) when it carries over.
    tunnel: Option<(
        &'static str,
        &'static str,
        &'static str,
        &'static str,
        &'static str,
        &'static str,
    )>,
    /// Lines (and settings) that must be named as not carried over.
    notes: &'static [&'static str],
}

const EXPECT: &[Expect] = &[
    Expect {
        fixture: "ikev2_net2net-psk-moon",
        tunnel: Some((
            "gw-gw",
            "192.168.0.2",
            "aes128-sha256-x25519",
            "aes128gcm128-x25519",
            "10.1.0.0/16",
            "10.2.0.0/16",
        )),
        // strongSwan picks ike-3 (both identities match), a binary key.
        notes: &[
            "3: connections.gw-gw",
            "20: connections.gw-gw.children.net-net.updown = /usr/local/libexec/ipsec/_updown iptables",
            "22: connections.gw-gw.children.net-net.rekey_bytes = 500000000",
            "29: connections.gw-gw.reauth_time = 10800",
            "46: secrets.ike-3.secret",
        ],
    },
    Expect {
        fixture: "ikev2_net2net-psk-sun",
        tunnel: Some((
            "gw-gw",
            "192.168.0.1",
            "aes128-sha256-x25519",
            "aes128gcm128-x25519",
            "10.2.0.0/16",
            "10.1.0.0/16",
        )),
        notes: &["3: connections.gw-gw", "38: secrets.ike-1.secret"],
    },
    Expect {
        fixture: "ikev2_net2net-cert-moon",
        tunnel: Some((
            "gw-gw",
            "192.168.0.2",
            "aes128-sha256-x25519",
            "aes128gcm128-x25519",
            "10.1.0.0/16",
            "10.2.0.0/16",
        )),
        notes: &[
            "8: connections.gw-gw.local.auth = pubkey",
            "13: connections.gw-gw.remote.auth = pubkey",
        ],
    },
    Expect {
        fixture: "ikev1_net2net-psk-moon",
        // IKEv1 has no Curve25519: the proposal falls back, and says so.
        tunnel: Some((
            "gw-gw",
            "192.168.0.2",
            "aes256-sha256-modp2048",
            "aes128gcm128",
            "10.1.0.0/16",
            "10.2.0.0/16",
        )),
        notes: &[
            "29: connections.gw-gw.proposals = aes128-sha256-x25519",
            "28: connections.gw-gw.reauth_time = 10800",
        ],
    },
    Expect {
        fixture: "ikev2_net2net-esn-sun",
        tunnel: Some((
            "gw-gw",
            "192.168.0.1",
            "aes128-sha256-x25519",
            "aes128gcm128-esn-x25519",
            "10.2.0.0/16",
            "10.1.0.0/16",
        )),
        notes: &["8: connections.gw-gw.local.auth = pubkey"],
    },
    Expect {
        fixture: "libipsec_net2net-3des-moon",
        tunnel: Some((
            "gw-gw",
            "192.168.0.2",
            "3des-sha1-modp2048",
            "3des-sha1-modp2048",
            "10.1.0.0/16",
            "10.2.0.0/16",
        )),
        notes: &["21: connections.gw-gw.children.net-net.updown = /etc/updown"],
    },
    Expect {
        fixture: "ikev2_net2net-start-moon",
        tunnel: Some((
            "gw-gw",
            "192.168.0.2",
            "aes128-sha256-x25519",
            "aes128gcm128-x25519",
            "10.1.0.0/16",
            "10.2.0.0/16",
        )),
        notes: &["8: connections.gw-gw.local.auth = pubkey"],
    },
    Expect {
        fixture: "ikev2_rw-psk-fqdn-moon",
        tunnel: None,
        notes: &["3: connections.rw", "30: secrets.ike-carol.secret"],
    },
    Expect { fixture: "ikev1_rw-psk-aggressive-moon", tunnel: None, notes: &["3: connections.rw"] },
    Expect {
        fixture: "ikev2-algs_alg-chacha20poly1305-moon",
        tunnel: None,
        notes: &["3: connections.rw", "7: connections.rw.local.auth = pubkey"],
    },
    Expect {
        fixture: "ikev2_protoport-dual-moon",
        tunnel: None,
        notes: &["3: connections.rw", "7: connections.rw.local.auth = pubkey"],
    },
    Expect {
        fixture: "ikev2_dpd-restart-carol",
        tunnel: None,
        notes: &["3: connections.home", "17: connections.home.children.home"],
    },
    Expect {
        fixture: "ikev2-algs_alg-camellia-carol",
        tunnel: None,
        notes: &[
            "21: connections.home.children.home.esp_proposals = camellia192-sha384",
            "25: connections.home.proposals = camellia256-sha512-modp3072",
        ],
    },
    Expect {
        fixture: "ikev2_net2net-rekey-moon",
        // A 10 s CHILD SA lifetime is below Isthmus's minimum: validation leaves it out.
        tunnel: None,
        notes: &[
            "3: connections.gw-gw",
            "4: connections.gw-gw.local_addrs = PH_IP_MOON",
            "5: connections.gw-gw.remote_addrs = PH_IP_SUN",
        ],
    },
];

#[test]
fn strongswans_own_examples_import_or_name_what_they_cannot() {
    let (mut valid, mut named) = (0, 0);
    for e in EXPECT {
        let i = run(&fixture(e.fixture));
        let ctx = format!(
            "{}:\n{}\n{}",
            e.fixture,
            i.notes.iter().map(|n| n.to_string()).collect::<Vec<_>>().join("\n"),
            i.text
        );
        // Whatever it produced validates.
        Config::check(&i.text).unwrap_or_else(|err| panic!("{ctx}\n{err}"));
        valid += 1;
        named += i.notes.len();
        match e.tunnel {
            Some((name, addr, ike, esp, local, remote)) => {
                let c = &i.checked.config;
                assert_eq!(i.tunnels, [name], "{ctx}");
                let t = &c.tunnels[0];
                assert_eq!(c.customer_gateways[0].address.to_string(), addr, "{ctx}");
                assert_eq!(t.ike_proposals, [ike], "{ctx}");
                assert_eq!(t.esp_proposals, [esp], "{ctx}");
                assert_eq!(t.spd[0].local[0].to_string(), local, "{ctx}");
                assert_eq!(t.spd[0].remote[0].to_string(), remote, "{ctx}");
            }
            None => assert!(i.tunnels.is_empty() && i.checked.config.tunnels.is_empty(), "{ctx}"),
        }
        let got = noted(&i);
        for n in e.notes {
            assert!(
                got.iter().any(|g| g == n),
                "{}: `{n}` not named in\n{}",
                e.fixture,
                got.join("\n")
            );
        }
        // Every note has a line in the file it names.
        for n in &i.notes {
            assert!(n.loc.line >= 1 && n.loc.line <= e_lines(e.fixture), "{n}");
        }
    }
    assert_eq!(valid, EXPECT.len());
    eprintln!("{valid} strongSwan examples imported; {named} settings named as not carried over");
}

fn e_lines(f: &str) -> usize {
    fixture(f).text.lines().count()
}

#[test]
fn secrets_never_appear_in_notes_and_text_keys_are_inlined() {
    let text = r#"
connections {
  a {
    remote_addrs = 198.51.100.2
    local_addrs = 203.0.113.1
    proposals = aes256-sha256-modp2048, default
    local { auth = psk
            id = a.example }
    remote { auth = psk
             id = b.example }
    children { c { local_ts = 10.1.0.0/24
                   remote_ts = 10.2.0.0/24[tcp/443]
                   esp_proposals = aes256gcm16-modp2048
                   start_action = trap
                   dpd_action = restart } }
    dpd_delay = 10s
    rekey_time = 2h
    encap = yes
  }
}
secrets {
  ike-x { id-1 = b.example
          secret = "t0p-secret-text-key-0123" }
  ike-y { secret = 0x01ff }
  eap-z { secret = hunter2 }
}
"#;
    let i = run(&Source { name: "s.conf".into(), text: text.into() });
    let t = &i.checked.config.tunnels[0];
    assert!(i.text.contains("psk = \"t0p-secret-text-key-0123\""), "{}", i.text);
    assert_eq!(t.ike_proposals[0], "aes256-sha256-modp2048");
    assert_eq!(t.ike_proposals[1..], DEFAULT_IKE);
    assert_eq!(t.dpd.delay, Dur::secs(10));
    assert_eq!(t.dpd.action, crate::DpdAction::Restart);
    assert_eq!(t.start_action, crate::StartAction::Trap);
    assert_eq!(t.nat_t, crate::NatT::Force);
    assert_eq!(t.ike_lifetime, Dur::secs(7920));
    assert_eq!(t.spd[0].protocol, Protocol::Number(6));
    assert_eq!(t.spd[0].remote_ports, PortRange::single(443));
    let notes: String = i.notes.iter().map(|n| n.to_string() + "\n").collect();
    for s in ["t0p-secret", "hunter2", "01ff"] {
        assert!(!notes.contains(s), "{notes}");
    }
    assert!(notes.contains("s.conf:25: secrets.eap-z: only IKE pre-shared keys"), "{notes}");
}

#[test]
fn connections_to_one_peer_share_a_customer_gateway_and_a_base_is_kept() {
    let text = "connections {\n a { remote_addrs = 198.51.100.2\n local { auth = psk }\n remote { auth = psk }\n children { x { local_ts = 10.10.0.0/24\n remote_ts = 10.2.0.0/24 } } }\n b { remote_addrs = 198.51.100.2\n local { auth = psk }\n remote { auth = psk }\n children { x { local_ts = 10.10.0.0/24\n remote_ts = 10.3.0.0/24 } } }\n}\nsecrets { ike { secret = a-long-enough-shared-key-0123 } }\n";
    let base = "[gateway]\nname = \"gw\"\n[gateway.wan]\ninterface = \"wan0\"\naddress = \"203.0.113.1/24\"\nnext_hop = \"203.0.113.254\"\n[[gateway.lan]]\nname = \"lan\"\ninterface = \"lan0\"\naddresses = [\"10.10.0.1/24\"]\n[[api_token]]\nname = \"ops\"\nrole = \"admin\"\ntoken = { env = \"T\" }\n";
    let opts = Options { base: Some(base.into()) };
    let i =
        import(&Source { name: "m.conf".into(), text: text.into() }, None, &mut no_includes, &opts)
            .unwrap();
    assert!(i.text.starts_with(base), "{}", i.text);
    let c = &i.checked.config;
    assert_eq!(c.customer_gateways.len(), 1, "{}", i.text);
    assert_eq!(c.tunnels.len(), 2);
    assert!(c.tunnels.iter().all(|t| t.customer_gateway == "a"));
    assert!(!i.notes.iter().any(|n| n.setting == "gateway"), "{:?}", i.notes);
}

#[test]
fn includes_and_a_separate_secrets_file_are_read() {
    let main = Source {
        name: "/etc/swanctl/swanctl.conf".into(),
        text: "connections {\n include conf.d/*.conf\n}\n".into(),
    };
    let mut inc = |from: &str, p: &str| {
        assert_eq!((from, p), ("/etc/swanctl/swanctl.conf", "conf.d/*.conf"));
        Ok(vec![Source {
            name: "/etc/swanctl/conf.d/a.conf".into(),
            text: "a {\n remote_addrs = vpn.example.net\n local { auth = psk\n id = me.example }\n remote { auth = psk\n id = vpn.example.net }\n children { c { local_ts = 10.1.0.0/24\n remote_ts = 10.2.0.0/24 } }\n bogus = 1\n}\n".into(),
        }])
    };
    let secrets = Source {
        name: "secrets.conf".into(),
        text: "secrets { ike-a { id = vpn.example.net\n secret = from-the-separate-file-000 } }\n"
            .into(),
    };
    let i = import(&main, Some(&secrets), &mut inc, &Options::default()).unwrap();
    assert!(i.text.contains("psk = \"from-the-separate-file-000\""), "{}", i.text);
    assert_eq!(i.checked.config.customer_gateways[0].address.to_string(), "vpn.example.net");
    let n = i.notes.iter().find(|n| n.setting.contains("bogus")).unwrap();
    assert_eq!(
        n.to_string(),
        "/etc/swanctl/conf.d/a.conf:9: connections.a.bogus = 1: has no Isthmus equivalent; not carried over"
    );
}

#[test]
fn garbage_is_refused_with_its_line() {
    for (text, want) in [
        ("connections {\n a {\n", "x.conf:2: section `a` opened here is never closed"),
        ("connections { }\n}\n", "x.conf:2: unbalanced `}`"),
        ("\u{1}\u{2}binary", "x.conf:1: control character U+0001"),
    ] {
        let e = import(
            &Source { name: "x.conf".into(), text: text.into() },
            None,
            &mut no_includes,
            &Options::default(),
        )
        .unwrap_err();
        assert!(e.to_string().starts_with(want), "{text:?}: {e}");
    }
    let i = run(&Source { name: "x.conf".into(), text: "nonsense { a = b }\n".into() });
    assert!(i.notes.iter().any(|n| n.to_string() == "x.conf:1: nonsense: unknown section `nonsense`; swanctl.conf has connections, secrets, authorities and pools"));
}

//! `isthmus config import` (docs/migrating.md): swanctl.conf files as the project's strongSwan
//! interop tests write them (`isthmus_testkit::strongswan::swanctl_conf`), the peers of
//! docs/interop.md, garbage, and the page's own example are imported by the CLI binary; and,
//! as root, an imported strongSwan gateway is replaced by `isthmusd`, which brings the tunnel
//! up against the strongSwan peer on the other side while LAN traffic passes.

use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use isthmus_config::{Config, DpdAction, IkeVersion, StartAction};
use isthmus_testkit::require_root;
use isthmus_testkit::site::{Binaries, Peer, Site, SiteSpec, token_hash, wait_for};
use isthmus_testkit::strongswan::{
    Action, Retransmit, Strongswan, SwanChild, SwanConn, swanctl_conf,
};

const PSK: &str = "import-psk-0123456789abcdef";
const CLI: &str = env!("CARGO_BIN_EXE_isthmus");

/// A folder for one test's files, removed on drop.
struct Dir(PathBuf);

impl Dir {
    fn new(tag: &str) -> Dir {
        let d = std::env::temp_dir().join(format!("isthmus-import-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        Dir(d)
    }
    fn write(&self, name: &str, text: impl AsRef<[u8]>) -> PathBuf {
        let p = self.0.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn cli(args: &[&str]) -> Output {
    Command::new(CLI).args(args).env("ISTHMUS_CONFIG_DIR", std::env::temp_dir()).output().unwrap()
}

fn text(o: &[u8]) -> String {
    String::from_utf8_lossy(o).into_owned()
}

/// Imports `swanctl` with `base`; returns the written configuration (checked to validate, also
/// by `config validate --offline`) and standard error.
fn import(dir: &Dir, swanctl: &str, base: Option<&str>) -> (Config, String, String) {
    let file = dir.write("swanctl.conf", swanctl);
    let out = dir.0.join("gw.toml");
    let mut args = vec!["config", "import", file.to_str().unwrap(), "-o", out.to_str().unwrap()];
    let b;
    if let Some(t) = base {
        b = dir.write("base.toml", t);
        args.extend(["--base", b.to_str().unwrap()]);
    }
    let o = cli(&args);
    let err = text(&o.stderr);
    assert!(o.status.success(), "import failed: {err}\n--- swanctl.conf\n{swanctl}");
    assert!(!err.contains(PSK), "the PSK is on stderr: {err}");
    let written = std::fs::read_to_string(&out).unwrap();
    use std::os::unix::fs::PermissionsExt as _;
    assert_eq!(std::fs::metadata(&out).unwrap().permissions().mode() & 0o777, 0o600);
    let v = cli(&["config", "validate", out.to_str().unwrap(), "--offline"]);
    assert!(v.status.success(), "{}\n{written}", text(&v.stderr));
    let config = Config::check(&written).unwrap_or_else(|e| panic!("{e}\n{written}")).config;
    (config, err, written)
}

/// The gateway the strongSwan side of interop lab `n` stood for: LAN 10.42.n.0/24 (and
/// 10.43.n.0/24 for a second child).
fn base(n: u8) -> String {
    isthmus_testkit::config::Gateway::new("swan")
        .wan("wan0", &format!("10.40.{n}.2/24"), &format!("10.40.{n}.254"))
        .routed_lan(
            "lan",
            "lan0",
            &[&format!("10.42.{n}.1/24")],
            &[&format!("10.43.{n}.0/24")],
            Some(&format!("10.42.{n}.254")),
        )
        .toml()
}

/// strongSwan's side of interop lab `n`, as `firmware/tunnels/tests/strongswan_interop.rs` makes it.
fn swan_conn(n: u8) -> SwanConn {
    SwanConn::interop_lab(n, PSK)
}

#[test]
fn the_interop_tests_swanctl_files_import_with_their_settings() {
    let dir = Dir::new("interop");
    // The plain connection: AES-GCM and X25519, charon waits (start_action none).
    let (c, err, written) = import(&dir, &swanctl_conf(&[swan_conn(1)]), Some(&base(1)));
    let t = &c.tunnels[0];
    assert_eq!(t.name, "to-isthmus");
    assert_eq!(t.ike_proposals, ["aes256gcm16-prfsha256-x25519"]);
    assert_eq!(t.esp_proposals, ["aes256gcm16"]);
    assert_eq!(t.local_id.as_deref(), Some("swan.example"));
    assert_eq!(c.customer_gateways[0].address.to_string(), "10.40.1.1");
    assert_eq!(c.customer_gateways[0].ike_id.as_deref(), Some("isthmus.example"));
    assert_eq!(t.start_action, StartAction::None);
    assert_eq!(t.spd[0].local[0].to_string(), "10.42.1.0/24");
    assert_eq!(t.spd[0].remote[0].to_string(), "10.41.1.0/24");
    assert_eq!(t.psk.resolve().unwrap().expose(), PSK, "{written}");
    assert!(err.contains("imported 1 tunnel(s) (to-isthmus)"), "{err}");

    // IKEv1 Aggressive Mode with PFS; DPD restart, trap, lifetimes, a second child.
    let mut v1 = swan_conn(2);
    v1.version = 1;
    v1.aggressive = true;
    v1.ike_proposals = "aes256-sha256-modp2048".into();
    v1.esp_proposals = "aes256-sha256-modp2048".into();
    v1.dpd_delay = Some(Duration::from_secs(10));
    v1.dpd_action = Action::Start;
    v1.start_action = Action::Trap;
    v1.ike_rekey = Some(Duration::from_secs(3600));
    v1.child_rekey = Some(Duration::from_secs(1200));
    v1.extra_children.push(SwanChild {
        name: "net2".into(),
        local_ts: "10.43.2.0/24".into(),
        remote_ts: "10.41.2.0/24".into(),
    });
    let (c, _, _) = import(&dir, &swanctl_conf(&[v1]), Some(&base(2)));
    let t = &c.tunnels[0];
    assert_eq!(t.ike_version, IkeVersion::V1);
    assert!(t.aggressive_mode);
    assert_eq!(t.ike_proposals, ["aes256-sha256-modp2048"]);
    assert_eq!(t.esp_proposals, ["aes256-sha256-modp2048"]);
    assert_eq!(t.dpd.delay.as_secs(), 10);
    assert_eq!(t.dpd.action, DpdAction::Restart);
    assert_eq!(t.start_action, StartAction::Trap);
    // strongSwan: the SA lives 10 % beyond its rekey time.
    assert_eq!((t.ike_lifetime.as_secs(), t.ike_rekey_margin.as_secs()), (3960, 360));
    assert_eq!((t.child_lifetime.as_secs(), t.child_rekey_margin.as_secs()), (1320, 120));
    assert_eq!(t.spd.len(), 2);
    assert_eq!(t.spd[1].local[0].to_string(), "10.43.2.0/24");

    // Two connections to one peer: one customer gateway, two tunnels.
    let mut a = swan_conn(3);
    a.name = "a".into();
    let mut b = swan_conn(3);
    b.name = "b".into();
    b.local_ts = "10.43.3.0/24".into();
    let (c, err, _) = import(&dir, &swanctl_conf(&[a, b]), Some(&base(3)));
    assert_eq!(c.customer_gateways.len(), 1, "{err}");
    assert_eq!(c.tunnels.len(), 2);
    assert!(c.tunnels.iter().all(|t| t.customer_gateway == "a"));
}

#[test]
fn the_peers_of_docs_interop_md_import_with_their_proposals() {
    let dir = Dir::new("vendors");
    let rows: Vec<_> = isthmus_config::interop::peers().into_iter().filter(|r| r.tested).collect();
    assert!(rows.len() >= 10);
    for (i, row) in rows.iter().enumerate() {
        let n = 60 + i as u8;
        let [ike, esp] = row.defaults.clone().unwrap();
        let mut conn = swan_conn(n);
        conn.ike_proposals = ike.clone();
        conn.esp_proposals = esp.clone();
        let (c, err, _) = import(&dir, &swanctl_conf(&[conn]), Some(&base(n)));
        let t = &c.tunnels[0];
        let split = |s: &str| s.split(',').map(str::to_owned).collect::<Vec<_>>();
        assert_eq!(t.ike_proposals, split(&ike), "{}: {err}", row.peer);
        assert_eq!(t.esp_proposals, split(&esp), "{}: {err}", row.peer);
        assert_eq!(t.allow_weak, !t.weak_algorithms().is_empty(), "{}", row.peer);
        // What the vendor gateway proposed still meets the Isthmus side of the row.
        let [oi, oe] = row.isthmus.clone().unwrap();
        assert!(
            isthmus_config::interop::lists_meet([&t.ike_proposals, &t.esp_proposals], [&oi, &oe]),
            "{}: the imported proposals no longer meet {oi} / {oe}",
            row.peer
        );
    }
}

#[test]
fn garbage_gets_a_clear_error_with_its_line() {
    let dir = Dir::new("garbage");
    let run = |name: &str, body: &[u8]| {
        let f = dir.write(name, body);
        let o = cli(&["config", "import", f.to_str().unwrap()]);
        let err = text(&o.stderr);
        assert!(!err.contains("panicked"), "{name}: {err}");
        (o.status.code(), err, f.display().to_string())
    };
    let (code, err, f) = run("braces.conf", b"connections {\n  a {\n    version = 2\n}\n");
    assert_eq!(code, Some(5), "{err}");
    assert!(
        err.contains(&format!("{f}:1: section `connections` opened here is never closed")),
        "{err}"
    );
    let (code, err, f) = run("extra.conf", b"connections {\n}\n}\n");
    assert_eq!(code, Some(5));
    assert!(err.contains(&format!("{f}:3: unbalanced `}}`")), "{err}");
    let mut bin = b"connections {\n".to_vec();
    bin.extend((0..=255u8).cycle().take(4096));
    let (code, err, f) = run("binary.conf", &bin);
    assert_eq!(code, Some(5));
    assert!(err.contains(&format!("{f}:3: byte 0x80 is not text")), "{err}");
    let big = "# filler\n".repeat(10 * 1024 * 1024 / 9);
    let t0 = Instant::now();
    let (code, err, f) = run("big.conf", big.as_bytes());
    assert_eq!(code, Some(5));
    assert!(err.contains(&format!("{f}:1: the file is")) && err.contains("right file"), "{err}");
    assert!(t0.elapsed() < Duration::from_secs(5));
    let (code, err, f) = run("unknown.conf", b"conections {\n  a { }\n}\n");
    assert_eq!(code, Some(0), "{err}");
    assert!(err.contains(&format!("{f}:1: conections: unknown section `conections`")), "{err}");
    // Includes are read relative to the file; a missing one is named.
    let (code, err, f) = run("inc.conf", b"connections {\n  include nowhere/x.conf\n}\n");
    assert_eq!(code, Some(5));
    assert!(err.contains(&format!("{f}:2: include: reading")), "{err}");
}

/// The fenced block after `<!-- MARKER -->` in docs/migrating.md.
fn block(page: &str, marker: &str) -> String {
    let start = page.find(&format!("<!-- {marker} -->")).unwrap_or_else(|| panic!("no {marker}"));
    let rest = &page[start..];
    let open = rest.find("```").unwrap();
    let body = &rest[open..];
    let first_nl = body.find('\n').unwrap();
    let end = body[first_nl..].find("\n```").unwrap();
    body[first_nl + 1..first_nl + end + 1].to_owned()
}

#[test]
fn the_example_of_docs_migrating_md_imports_to_the_configuration_it_shows() {
    let page = std::fs::read_to_string(isthmus_testkit::docs::dir().join("migrating.md")).unwrap();
    let dir = Dir::new("docs");
    let swanctl = block(&page, "import: swanctl.conf");
    let base = block(&page, "import: base.toml");
    let (_, err, written) = import(&dir, &swanctl, Some(&base));
    assert_eq!(
        written,
        block(&page, "example: migrated"),
        "docs/migrating.md shows another result"
    );
    for line in block(&page, "import: stderr").lines() {
        let line = line.replace(
            "/etc/swanctl/swanctl.conf",
            &dir.0.join("swanctl.conf").display().to_string(),
        );
        assert!(err.contains(&line), "stderr lacks `{line}`:\n{err}");
    }
}

#[test]
fn an_imported_strongswan_gateway_is_replaced_by_isthmusd_and_lan_traffic_passes() {
    if !require_root() || !isthmus_testkit::strongswan::available() {
        return;
    }
    let t0 = Instant::now();
    let admin = "ist_import-admin-token";
    let mut site = Site::new(
        SiteSpec {
            tag: "im".into(),
            lan_gw: "10.74.1.1/24".into(),
            lan_host: "10.74.1.10/24".into(),
            api_port: 18194,
            token: admin.into(),
        },
        &Binaries::next_to_cli(CLI),
    );
    let peer = Peer::beside(&site, "im", "10.74.100.2/24", "10.74.2.1/24", "10.74.2.10/24");
    // The branch gateway that Isthmus replaces, as strongSwan ran it: it starts the tunnel.
    let mut branch = SwanConn::new("to-dc", "10.74.100.1", "10.74.100.2", PSK);
    branch.child = "lan".into();
    branch.local_id = "branch.example".into();
    branch.remote_id = "dc.example".into();
    branch.local_ts = "10.74.1.0/24".into();
    branch.remote_ts = "10.74.2.0/24".into();
    branch.ike_proposals = "aes256-sha256-modp2048".into();
    branch.esp_proposals = "aes256gcm16-modp2048".into();
    branch.dpd_delay = Some(Duration::from_secs(10));
    branch.start_action = Action::Start;
    // The data centre on the other side, unchanged.
    let mut dc = SwanConn::new("to-branch", "10.74.100.2", "10.74.100.1", PSK);
    dc.child = "lan".into();
    dc.local_id = "dc.example".into();
    dc.remote_id = "branch.example".into();
    dc.local_ts = "10.74.2.0/24".into();
    dc.remote_ts = "10.74.1.0/24".into();
    dc.ike_proposals = branch.ike_proposals.clone();
    dc.esp_proposals = branch.esp_proposals.clone();

    let gateway = isthmus_testkit::config::Gateway::new("branch")
        .wan("wan0", "10.74.100.1/24", "10.74.100.2")
        .lan("lan", "lan0", "10.74.1.1/24")
        .token("ops", "admin", &format!("sha256:{}", token_hash(admin)))
        .toml();
    let dir = Dir::new("netns");
    let (c, err, imported) = import(&dir, &swanctl_conf(&[branch]), Some(&gateway));
    assert_eq!(c.tunnels[0].start_action, StartAction::Start, "{err}");

    let swan = Strongswan::start_conf(&peer.gw, &swanctl_conf(&[dc]), Retransmit::default());
    swan.load_all().unwrap();
    site.start(&imported);
    let ctx = || {
        format!(
            "--- imported\n{err}\n--- charon\n{}\n{}\n--- isthmusd\n{}",
            swan.status(),
            swan.log(),
            site.log()
        )
    };
    wait_for(
        "a LAN-to-LAN ping through the tunnel isthmusd started from the imported configuration",
        Duration::from_secs(40),
        || site.host.sh_output("ping -c 1 -W 1 10.74.2.10").status.success(),
        ctx,
    );
    let st = swan.status();
    assert!(st.contains("AES_CBC-256/HMAC_SHA2_256_128/PRF_HMAC_SHA2_256/MODP_2048"), "{st}");
    assert!(st.contains("ESP:AES_GCM_16-256"), "{st}");
    let list = site.json(&["tunnel", "list"]);
    assert_eq!(list[0]["name"], "to-dc", "{list}");
    assert_eq!(list[0]["state"], "up", "{list}");
    println!("imported gateway replaced in {:?}", t0.elapsed());
}

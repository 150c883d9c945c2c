//! The plugin workflow as an operator runs it, against a real `isthmusd` (API and store only, on
//! loopback, no root): `isthmus plugin keygen`, `sign` the built `spd_selectors` component, trust
//! the key in the configuration, `upload`, `list`, `activate`, `rollback`, `remove`; tampered,
//! foreign-signed and wrong-world packages are refused with exit code 5 and the reason.

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use isthmus_testkit::plugins::component_path as component;
use serde_json::Value;

const ADMIN: &str = "ist_plugin-test-admin-token";

fn bin(name: &str) -> PathBuf {
    static BUILT: std::sync::Once = std::sync::Once::new();
    BUILT.call_once(|| {
        let st =
            Command::new(env!("CARGO")).args(["build", "-q", "-p", "isthmusd"]).status().unwrap();
        assert!(st.success(), "building isthmusd");
    });
    PathBuf::from(env!("CARGO_BIN_EXE_isthmus")).with_file_name(name)
}

/// The test's directory and daemon; both cleaned up on drop (also on panic).
struct Fixture {
    dir: PathBuf,
    daemon: Option<Child>,
    endpoint: String,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        if let Some(mut c) = self.daemon.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Fixture {
    fn new() -> Fixture {
        let dir = std::env::temp_dir().join(format!("isthmus-plugins-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Fixture { dir, daemon: None, endpoint: String::new() }
    }

    fn start(&mut self, trusted_pub: &str) {
        let cfg = isthmus_testkit::config::Gateway::new("gw1")
            .token("ops", "admin", &isthmus_config::hash_token(ADMIN))
            .trusted_key("ops-signing", trusted_pub)
            .toml();
        let file = self.dir.join("gw.toml");
        std::fs::write(&file, cfg).unwrap();
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut child = Command::new(bin("isthmusd"))
            .args(["--config", file.to_str().unwrap()])
            .args(["--data-dir", self.dir.join("data").to_str().unwrap()])
            .args(["--no-net", "--no-tunnels", "--api", &format!("127.0.0.1:{port}")])
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let err = child.stderr.take().unwrap();
        self.daemon = Some(child);
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for l in BufReader::new(err).lines().map_while(Result::ok) {
                if l.contains("management API listening") {
                    let _ = tx.send(());
                }
                eprintln!("isthmusd: {l}");
            }
        });
        rx.recv_timeout(Duration::from_secs(30)).expect("isthmusd did not start listening");
        self.endpoint = format!("http://127.0.0.1:{port}");
    }

    /// Runs `isthmus ARGS`; returns (exit code, stdout + stderr).
    fn cli(&self, args: &[&str]) -> (i32, String) {
        let out = Command::new(bin("isthmus"))
            .args(args)
            .env("ISTHMUS_ENDPOINT", &self.endpoint)
            .env("ISTHMUS_TOKEN", ADMIN)
            .env("ISTHMUS_CONFIG_DIR", self.dir.join("cli"))
            .current_dir(&self.dir)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        println!("$ isthmus {}\n{text}", args.join(" "));
        (out.status.code().unwrap_or(-1), text)
    }

    fn ok(&self, args: &[&str]) -> String {
        let (code, out) = self.cli(args);
        assert_eq!(code, 0, "isthmus {args:?} failed: {out}");
        out
    }

    fn path(&self, name: &str) -> String {
        self.dir.join(name).to_str().unwrap().to_owned()
    }

    fn sign(&self, wasm: &Path, version: &str, key: &str, out: &str) -> Value {
        let manifest = self.path(&format!("manifest-{version}.toml"));
        std::fs::write(
            &manifest,
            format!(
                "name = \"spd-selectors\"\nversion = \"{version}\"\nhook = \"spd\"\n\
                 description = \"SPD from tunnel selectors\"\n"
            ),
        )
        .unwrap();
        let text = self.ok(&[
            "--json",
            "plugin",
            "sign",
            wasm.to_str().unwrap(),
            "--manifest",
            &manifest,
            "--key",
            &self.path(key),
            "-o",
            &self.path(out),
        ]);
        serde_json::from_str(&text).unwrap()
    }

    fn list(&self) -> Vec<Value> {
        serde_json::from_str(&self.ok(&["--json", "plugin", "list"])).unwrap()
    }
}

#[test]
fn keygen_sign_upload_activate_rollback_and_refusals() {
    let spd = component("spd_selectors.wasm");
    let mut f = Fixture::new();

    // keygen: NAME.key (0600, secret) and NAME.pub (the text for the configuration).
    let dir = f.dir.to_str().unwrap().to_owned();
    let out = f.ok(&["plugin", "keygen", "--dir", &dir, "--name", "ops"]);
    assert!(out.contains("[[trusted_key]]"), "{out}");
    f.ok(&["plugin", "keygen", "--dir", &dir, "--name", "stranger"]);
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(f.dir.join("ops.key")).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "the secret key must be private");
    let public = std::fs::read_to_string(f.dir.join("ops.pub")).unwrap().trim().to_owned();
    assert!(public.starts_with("ed25519:") && public.len() == 8 + 64, "{public}");
    assert!(!out.contains("ed25519-secret:"), "keygen must not print the secret key");
    let (code, out) = f.cli(&["plugin", "keygen", "--dir", &dir, "--name", "ops"]);
    assert_ne!(code, 0, "keygen must not overwrite a key: {out}");

    // sign: v1 and v2 with the trusted key, one with a stranger's key.
    let v1 = f.sign(&spd, "1.0.0", "ops.key", "v1.pkg");
    let v2 = f.sign(&spd, "1.1.0", "ops.key", "v2.pkg");
    f.sign(&spd, "1.0.0", "stranger.key", "foreign.pkg");
    assert_eq!(v1["signer"], public.as_str());
    let (d1, d2) = (v1["digest"].as_str().unwrap(), v2["digest"].as_str().unwrap());
    assert_ne!(d1, d2);
    let mut tampered = std::fs::read(f.dir.join("v1.pkg")).unwrap();
    let n = tampered.len();
    tampered[n - 100] ^= 0x01;
    std::fs::write(f.dir.join("tampered.pkg"), tampered).unwrap();

    f.start(&public);
    assert!(f.list().is_empty());

    // upload
    let out = f.ok(&["plugin", "upload", &f.path("v1.pkg")]);
    assert!(out.contains("uploaded spd-selectors 1.0.0 (spd hook)") && out.contains(d1), "{out}");
    let l = f.list();
    assert_eq!(l.len(), 1, "{l:?}");
    assert_eq!(l[0]["name"], "spd-selectors");
    assert_eq!(l[0]["version"], "1.0.0");
    assert_eq!(l[0]["hook"], "spd");
    assert_eq!(l[0]["digest"], d1);
    assert_eq!(l[0]["signer"], public.as_str());
    assert_eq!(l[0]["active"], false);

    // refusals: exit code 5 and the library's reason; nothing is stored.
    let (code, out) = f.cli(&["plugin", "upload", &f.path("tampered.pkg")]);
    assert_eq!(code, 5, "{out}");
    assert!(out.contains("bad signature: the package was modified after it was signed"), "{out}");
    let (code, out) = f.cli(&["plugin", "upload", &f.path("foreign.pkg")]);
    assert_eq!(code, 5, "{out}");
    assert!(out.contains("which is not a trusted key"), "{out}");
    let wrong = f.sign(&component("test_wrong_world.wasm"), "9.9.9", "ops.key", "wrong.pkg");
    assert_eq!(wrong["hook"], "spd");
    let (code, out) = f.cli(&["plugin", "upload", &f.path("wrong.pkg")]);
    assert_eq!(code, 5, "{out}");
    assert!(out.contains("plugin `spd-selectors` refused"), "{out}");
    std::fs::write(f.dir.join("junk.pkg"), b"not a package at all").unwrap();
    let (code, out) = f.cli(&["plugin", "upload", &f.path("junk.pkg")]);
    assert_eq!(code, 5, "{out}");
    assert!(out.contains("not an Isthmus plugin package"), "{out}");
    assert_eq!(f.list().len(), 1);

    // activate v1, then v2; rollback returns to v1; v2 can then be removed.
    f.ok(&["plugin", "activate", d1]);
    f.ok(&["plugin", "upload", &f.path("v2.pkg")]);
    f.ok(&["plugin", "activate", d2]);
    let active = |l: &[Value]| {
        l.iter().filter(|p| p["active"] == true).map(|p| p["version"].clone()).collect::<Vec<_>>()
    };
    assert_eq!(active(&f.list()), ["1.1.0"]);
    let out = f.ok(&["plugin", "rollback", "spd-selectors"]);
    assert!(out.contains(d1), "{out}");
    assert_eq!(active(&f.list()), ["1.0.0"]);
    let (code, out) = f.cli(&["plugin", "rollback", "spd-selectors"]);
    assert_eq!(code, 5, "{out}");
    assert!(out.contains("no previous version"), "{out}");
    let (code, out) = f.cli(&["plugin", "remove", d1]);
    assert_eq!(code, 5, "removing the active version must be refused: {out}");
    f.ok(&["plugin", "remove", d2]);
    let l = f.list();
    assert_eq!(l.len(), 1, "{l:?}");
    assert_eq!(l[0]["digest"], d1);
    let (code, out) = f.cli(&["plugin", "activate", &"0".repeat(64)]);
    assert_eq!(code, 4, "{out}");
    let (code, out) = f.cli(&["plugin", "rollback", "no-such-plugin"]);
    assert_eq!(code, 4, "{out}");
}

mod through_the_tunnel {
    //! Plugins decide what crosses a real tunnel (root, two daemons in namespaces, 10.62.0.0/16):
    //! the bundled `security-group` plugin compiles gateway 2's security group, which denies
    //! ICMP from the tunnel while TCP passes; an uploaded plugin that binds nothing lets ping
    //! through once activated, and rolling it back stops it again; a trapping SPD plugin is
    //! quarantined, traffic keeps flowing on the last good SPD, and the plugin-fault alarm is
    //! listed.

    use std::io::{Read, Write};
    use std::net::{SocketAddr, TcpListener, TcpStream};
    use std::time::Duration;

    use isthmus_testkit::require_root;
    use isthmus_testkit::site::{Binaries, Site, SiteSpec, link_wans, logs, token_hash, wait_for};

    const TOKEN: &str = "ist_policy-e2e-admin-token";
    const PSK: &str = "policy-e2e-pre-shared-key-0123456789";
    const PORT: u16 = 5201;

    fn site(n: u8) -> Site {
        Site::new(
            SiteSpec {
                tag: format!("pl{n}"),
                lan_gw: format!("10.62.{n}.1/24"),
                lan_host: format!("10.62.{n}.10/24"),
                api_port: 18180,
                token: TOKEN.into(),
            },
            &Binaries::next_to_cli(env!("CARGO_BIN_EXE_isthmus")),
        )
    }

    fn config(me: u8, peer: u8, public: &str, extra: &str) -> String {
        let start = if me == 1 { "start" } else { "none" };
        isthmus_testkit::config::Gateway::new(&format!("pl{me}"))
            .wan("wan0", &format!("10.62.0.{me}/24"), "10.62.0.254")
            .lan("lan", "lan0", &format!("10.62.{me}.1/24"))
            .customer_gateway(&format!("pl{peer}"), &format!("10.62.0.{peer}"))
            .push(&format!(
                r#"[[tunnel]]
name = "to-pl{peer}"
customer_gateway = "pl{peer}"
psk = "{PSK}"
start_action = "{start}"
[[tunnel.spd]]
local = ["10.62.{me}.0/24"]
remote = ["10.62.{peer}.0/24"]
"#
            ))
            .trusted_key("ops", public)
            .token("ops", "admin", &format!("sha256:{}", token_hash(TOKEN)))
            .push(extra)
            .toml()
    }

    /// Gateway 2's security group on the tunnel: TCP to port 5201 in, no ICMP in, all out.
    const SG: &str = r#"
[[security_group]]
name = "from-pl1"
tunnels = ["to-pl1"]

[[security_group.rule]]
priority = 10
action = "allow"
direction = "in"
protocol = "tcp"
ports = 5201

[[security_group.rule]]
priority = 20
action = "deny"
direction = "in"
protocol = "icmp"

[[security_group.rule]]
priority = 30
action = "allow"
direction = "out"

[[alarm]]
name = "plugin-fault"
kind = "plugin-fault"
hold = "1s"
severity = "critical"
"#;

    fn ping(a: &Site) -> bool {
        a.host.sh_output("ping -c 2 -i 0.3 -W 1 10.62.2.10").status.success()
    }

    fn tcp(a: &Site) -> bool {
        a.host.run(|| {
            let to: SocketAddr = ([10, 62, 2, 10], PORT).into();
            let Ok(mut s) = TcpStream::connect_timeout(&to, Duration::from_secs(2)) else {
                return false;
            };
            let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
            let mut b = [0u8; 5];
            s.write_all(b"hello").is_ok() && s.read_exact(&mut b).is_ok() && &b == b"hello"
        })
    }

    /// Signs `wasm` as `name` `version` for `hook` with the site's `ops.key`; uploads it;
    /// returns its digest.
    fn upload(b: &Site, wasm: &str, name: &str, version: &str, hook: &str) -> String {
        let manifest = b.path(&format!("{name}-{version}.toml"));
        std::fs::write(
            &manifest,
            format!("name = \"{name}\"\nversion = \"{version}\"\nhook = \"{hook}\"\n"),
        )
        .unwrap();
        let out = b.path(&format!("{name}-{version}.pkg"));
        let wasm = super::component(wasm);
        let key = b.path("ops.key");
        b.show(&[
            "plugin",
            "sign",
            wasm.to_str().unwrap(),
            "--manifest",
            manifest.to_str().unwrap(),
            "--key",
            key.to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
        ]);
        let v = b.json(&["plugin", "upload", out.to_str().unwrap()]);
        v["digest"].as_str().unwrap().to_owned()
    }

    fn hook(b: &Site, name: &str) -> serde_json::Value {
        let v = b.json(&["plugin", "hooks"]);
        v.as_array().unwrap().iter().find(|h| h["hook"] == name).cloned().unwrap()
    }

    #[test]
    fn plugins_decide_tunnel_traffic_and_faults_are_contained() {
        if !require_root() {
            return;
        }
        let mut a = site(1);
        let mut b = site(2);
        link_wans(&a, &b);
        let dir = b.dir.to_str().unwrap().to_owned();
        b.show(&["plugin", "keygen", "--dir", &dir, "--name", "ops"]);
        let public = std::fs::read_to_string(b.path("ops.pub")).unwrap().trim().to_owned();
        a.start(&config(1, 2, &public, ""));
        b.start(&config(2, 1, &public, SG));
        // An echo server on gateway 2's LAN host.
        let listener =
            b.host.run(|| TcpListener::bind(("0.0.0.0", PORT)).expect("bind the echo port"));
        std::thread::spawn(move || {
            for c in listener.incoming() {
                let Ok(mut c) = c else { continue };
                std::thread::spawn(move || {
                    let mut buf = [0u8; 64];
                    while let Ok(n) = c.read(&mut buf) {
                        if n == 0 || c.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                });
            }
        });
        let ctx = || logs(&[&a, &b]);

        // The bundled default compiled the group: TCP passes, ping does not.
        wait_for("TCP through the tunnel", Duration::from_secs(40), || tcp(&a), ctx);
        // The bundled plugins compile in the background after start (builtin tables meanwhile).
        let bundled =
            || ["security-group", "spd"].iter().all(|h| hook(&b, h)["source"] == "bundled");
        wait_for("the bundled plugins", Duration::from_secs(60), bundled, ctx);
        let sg = hook(&b, "security-group");
        assert_eq!(sg["source"], "bundled", "{sg}");
        // Each rule and the default deny out, for IPv4 and IPv6.
        assert_eq!(sg["entries"], 8, "{sg}");
        assert!(!ping(&a), "the security group must stop ICMP from the tunnel\n{}", ctx());
        let listed = b.show(&["plugin", "list"]);
        assert!(listed.contains("security-group") && listed.contains("bundled"), "{listed}");

        // An uploaded default, then a variant that binds nothing: ping passes.
        let v1 = upload(&b, "security_group.wasm", "tenant-sg", "1.0.0", "security-group");
        b.show(&["plugin", "activate", &v1]);
        assert_eq!(hook(&b, "security-group")["plugin"], "tenant-sg@1.0.0");
        assert!(!ping(&a), "the uploaded default denies ICMP too");
        let open = upload(&b, "test_sg_open.wasm", "tenant-sg", "1.1.0", "security-group");
        b.show(&["plugin", "activate", &open]);
        assert_eq!(hook(&b, "security-group")["entries"], 0);
        wait_for("ping once the open plugin is active", Duration::from_secs(5), || ping(&a), ctx);

        // A trapping SPD plugin: quarantined, traffic flows on the last good SPD, alarm listed.
        let trap = upload(&b, "test_trap.wasm", "spd-trap", "0.0.1", "spd");
        let (_, out) = b.cli_text(&["plugin", "activate", &trap]);
        assert!(out.contains("trapped"), "the activation reports the fault: {out}");
        let spd = hook(&b, "spd");
        assert!(spd["quarantined"].as_str().is_some_and(|q| q.contains("trapped")), "{spd}");
        assert!(ping(&a) && tcp(&a), "traffic must keep flowing\n{}", ctx());
        wait_for(
            "the plugin-fault alarm",
            Duration::from_secs(10),
            || b.show(&["alarm", "list"]).contains("spd-trap"),
            ctx,
        );

        // Rolling the security-group plugin back restores the verdicts.
        b.show(&["plugin", "rollback", "tenant-sg"]);
        assert_eq!(hook(&b, "security-group")["plugin"], "tenant-sg@1.0.0");
        wait_for("ping to stop again", Duration::from_secs(5), || !ping(&a), ctx);
        assert!(tcp(&a), "TCP still passes\n{}", ctx());
    }
}

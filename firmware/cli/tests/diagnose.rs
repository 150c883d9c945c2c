//! `isthmus diagnose` against two real daemons in network namespaces: a healthy path, an SPD
//! mismatch between the two ends (the negotiation fails with TS_UNACCEPTABLE and traffic outside
//! the selectors is named), a missing route, and a destination on the Internet (only diagnosed,
//! never sent). Each case asserts on what the CLI prints. The outputs are printed too (run with
//! `--nocapture`): `docs/troubleshooting.md` quotes them.

use std::path::PathBuf;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use isthmus_testkit::{Netns, require_root, veth};

const ADMIN: &str = "ist_diag-admin-token";
const PSK: &str = "diag-pre-shared-key-0123456789abcdef";
const API_PORT: u16 = 18081;

fn bin(name: &str) -> PathBuf {
    static BUILT: std::sync::Once = std::sync::Once::new();
    BUILT.call_once(|| {
        let st =
            Command::new(env!("CARGO")).args(["build", "-q", "-p", "isthmusd"]).status().unwrap();
        assert!(st.success(), "building isthmusd");
    });
    PathBuf::from(env!("CARGO_BIN_EXE_isthmus")).with_file_name(name)
}

fn sha(s: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(s.as_bytes()))
}

/// Gateway `me`: WAN 10.80.0.me, LAN 10.81.me.0/24, one tunnel to the peer protecting
/// `local` <-> `remote`. Gateway 1 initiates.
fn config(me: u8, peer: u8, local: &str, remote: &str, extra: &str) -> String {
    let start = if me == 1 { "start" } else { "none" };
    format!(
        r#"
[gateway]
name = "gw{me}"
[gateway.wan]
interface = "wan0"
address = "10.80.0.{me}/24"
next_hop = "10.80.0.254"
[[gateway.lan]]
name = "lan"
interface = "lan0"
addresses = ["10.81.{me}.1/24"]

[[customer_gateway]]
name = "gw{peer}"
address = "10.80.0.{peer}"

[[tunnel]]
name = "to-gw{peer}"
customer_gateway = "gw{peer}"
psk = "{PSK}"
start_action = "{start}"
[[tunnel.spd]]
local = ["{local}"]
remote = ["{remote}"]

[[api_token]]
name = "ops"
role = "admin"
token_hash = "sha256:{}"
{extra}
"#,
        sha(ADMIN)
    )
}

struct Site {
    gw: Netns,
    host: Netns,
    dir: PathBuf,
    daemon: Option<Child>,
}

impl Site {
    fn new(test: &str, n: u8) -> Site {
        let gw = Netns::new("dgg");
        let host = Netns::new("dgh");
        veth(&host, "eth0", &format!("10.81.{n}.10/24"), &gw, "lan0", &format!("10.81.{n}.1/24"));
        host.sh(&format!("ip route add default via 10.81.{n}.1"));
        gw.sh(&format!("ip addr del 10.81.{n}.1/24 dev lan0"));
        let dir =
            std::env::temp_dir().join(format!("isthmus-diag-{}-{test}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Site { gw, host, dir, daemon: None }
    }

    fn start(&mut self, cfg: &str) {
        let file = self.dir.join("gw.toml");
        std::fs::write(&file, cfg).unwrap();
        let log = self.dir.join("isthmusd.log");
        let line = format!(
            "{} --config {} --data-dir {} --api 127.0.0.1:{API_PORT} 2>>{}",
            bin("isthmusd").display(),
            file.display(),
            self.dir.join("data").display(),
            log.display()
        );
        self.daemon = Some(self.gw.spawn(&format!("sh -c '{line}'")));
        let t0 = Instant::now();
        while !std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("management API listening")
        {
            assert!(
                t0.elapsed() < Duration::from_secs(20),
                "isthmusd did not start: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("isthmusd.log")).unwrap_or_default()
    }

    /// Runs the CLI in the gateway's namespace; returns (exit success, stdout).
    fn cli(&self, args: &[&str]) -> (bool, String) {
        let mut c = self.gw.command(bin("isthmus").to_str().unwrap());
        c.args(args)
            .env("ISTHMUS_ENDPOINT", format!("http://127.0.0.1:{API_PORT}"))
            .env("ISTHMUS_TOKEN", ADMIN)
            .env("ISTHMUS_CONFIG_DIR", self.dir.join("cli"));
        let out = c.output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        (out.status.success(), text)
    }

    /// Runs `isthmus ARGS`, prints it as the operator would see it, returns stdout.
    fn show(&self, args: &[&str]) -> String {
        let (ok, out) = self.cli(args);
        println!("$ isthmus {}\n{out}", args.join(" "));
        assert!(ok, "isthmus {args:?} failed: {out}\n{}", self.log());
        out
    }
}

impl Drop for Site {
    fn drop(&mut self) {
        if let Some(mut c) = self.daemon.take() {
            let root = c.id();
            let kids = std::fs::read_to_string(format!("/proc/{root}/task/{root}/children"))
                .unwrap_or_default();
            let pid: u32 =
                kids.split_whitespace().next().and_then(|p| p.parse().ok()).unwrap_or(root);
            let _ = Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .stderr(std::process::Stdio::null())
                .status();
            let t0 = Instant::now();
            while t0.elapsed() < Duration::from_secs(5) {
                if let Ok(Some(_)) = c.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .stderr(std::process::Stdio::null())
                .status();
            let _ = c.kill();
            let _ = c.wait();
        }
        if std::env::var_os("ISTHMUS_KEEP_LOGS").is_none() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool, ctx: impl Fn() -> String) {
    let t0 = Instant::now();
    while !f() {
        assert!(t0.elapsed() < timeout, "timed out waiting for {what}\n{}", ctx());
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn pair(test: &str, cfg1: &str, cfg2: &str) -> (Site, Site) {
    let mut a = Site::new(test, 1);
    let mut b = Site::new(test, 2);
    veth(&a.gw, "wan0", "10.80.0.1/24", &b.gw, "wan0", "10.80.0.2/24");
    a.gw.sh("ip addr flush dev wan0");
    b.gw.sh("ip addr flush dev wan0");
    b.start(cfg2);
    a.start(cfg1);
    (a, b)
}

#[test]
fn healthy_path_missing_route_and_the_internet() {
    if !require_root() {
        return;
    }
    let (a, b) = pair(
        "routes",
        &config(1, 2, "10.81.1.0/24", "10.81.2.0/24", ""),
        &config(2, 1, "10.81.2.0/24", "10.81.1.0/24", ""),
    );
    let ctx = || format!("--- gw1 log\n{}\n--- gw2 log\n{}", a.log(), b.log());
    wait_for(
        "a LAN-to-LAN ping through the tunnel",
        Duration::from_secs(40),
        || a.host.sh_output("ping -c 1 -W 1 10.81.2.10").status.success(),
        ctx,
    );

    // A healthy path: every stage passes, both ways, no advice.
    let out = a.show(&[
        "diagnose",
        "path",
        "--src",
        "10.81.1.10",
        "--dst",
        "10.81.2.10",
        "--proto",
        "tcp",
        "--dport",
        "22",
    ]);
    assert!(out.contains("verdict  pass"), "{out}");
    assert!(
        out.contains("spd             pass  to-gw2/to-gw2#0 10.81.1.0/24 <-> 10.81.2.0/24"),
        "{out}"
    );
    assert!(out.contains("child-sa        pass  to-gw2/to-gw2 SPI in 0x"), "{out}");
    assert!(!out.contains("advice"), "{out}");

    // A destination no route leads to (private: the tunnel's SPD would have to cover it).
    let out = a.show(&["diagnose", "path", "--src", "10.81.1.10", "--dst", "10.81.9.9"]);
    assert!(out.contains("route           DROP  no route for 10.81.9.9"), "{out}");
    assert!(
        out.contains("advice   no route for 10.81.9.9: it is outside every tunnel's remote networks (10.81.2.0/24)"),
        "{out}"
    );

    // The Internet: diagnosed only, never pinged.
    let out = a.show(&["diagnose", "path", "--src", "10.81.1.10", "--dst", "8.8.8.8"]);
    assert!(
        out.contains("advice   the gateway gives no Internet access: 8.8.8.8 is outside every tunnel's remote networks"),
        "{out}"
    );
    assert!(out.contains("verdict  DROP"), "{out}");

    // --json carries the same report.
    let (ok, j) = a.cli(&["--json", "diagnose", "path", "--src", "10.81.1.10", "--dst", "8.8.8.8"]);
    assert!(ok, "{j}");
    let v: serde_json::Value = serde_json::from_str(&j).expect("diagnose path --json is JSON");
    assert_eq!(v["verdict"], "drop");
    assert_eq!(v["forward"][2]["stage"], "route");
    assert_eq!(v["forward"][2]["verdict"], "drop");

    // A source off every LAN, and a bad address, are named.
    let out = a.show(&["diagnose", "path", "--src", "192.168.7.7", "--dst", "10.81.2.10"]);
    assert!(out.contains("src 192.168.7.7 is not on any LAN"), "{out}");
    let (ok, out) = a.cli(&["diagnose", "path", "--src", "10.81.1.10", "--dst", "nowhere"]);
    assert!(!ok && out.contains("dst `nowhere` is not an IP address"), "{out}");

    // The healthy tunnel has nothing to explain.
    let out = a.show(&["diagnose", "tunnel", "to-gw2"]);
    assert!(out.contains("tunnel   to-gw2  (up)"), "{out}");
    assert!(out.contains("last failure: none recorded"), "{out}");
}

#[test]
fn spd_mismatch_between_the_two_ends() {
    if !require_root() {
        return;
    }
    // gw1 protects 10.81.1.0/24 <-> 10.81.2.0/24 and routes 10.81.0.0/16 into the tunnel; gw2
    // only accepts 10.81.2.0/24 <-> 10.81.3.0/24: its selectors do not mirror gw1's.
    let route = r#"
[[route_table]]
name = "lan-out"
id = 100
lans = ["lan"]
[[route_table.route]]
prefix = "10.81.0.0/16"
tunnel = "to-gw2"
"#;
    let (a, b) = pair(
        "spd",
        &config(1, 2, "10.81.1.0/24", "10.81.2.0/24", route),
        &config(2, 1, "10.81.2.0/24", "10.81.3.0/24", ""),
    );
    let ctx = || format!("--- gw1 log\n{}\n--- gw2 log\n{}", a.log(), b.log());
    wait_for(
        "the negotiation to fail with TS_UNACCEPTABLE",
        Duration::from_secs(40),
        || a.cli(&["diagnose", "tunnel", "to-gw2"]).1.contains("TS_UNACCEPTABLE"),
        ctx,
    );
    let out = a.show(&["diagnose", "tunnel", "to-gw2"]);
    assert!(out.contains("TS_UNACCEPTABLE"), "{out}");
    assert!(out.contains("ours     ") && out.contains("10.81.1.0/24"), "{out}");
    assert!(out.contains("advice   "), "{out}");

    // Traffic inside our selectors: no CHILD SA carries it.
    let out = a.show(&["diagnose", "path", "--src", "10.81.1.10", "--dst", "10.81.2.10"]);
    assert!(out.contains("child-sa        DROP"), "{out}");
    assert!(out.contains("see `isthmus diagnose tunnel to-gw2`"), "{out}");

    // Traffic the route sends into the tunnel but outside the SPD.
    let out = a.show(&["diagnose", "path", "--src", "10.81.1.10", "--dst", "10.81.3.5"]);
    assert!(out.contains("spd             DROP  no entry matches"), "{out}");
    assert!(
        out.contains("advice   SPD of tunnel to-gw2 covers 10.81.2.0/24, not 10.81.3.5"),
        "{out}"
    );
    // And it really is not delivered.
    assert!(!a.host.sh_output("ping -c 1 -W 1 10.81.2.10").status.success());
}

//! The CLI as a new operator first meets it (issue 14): the default endpoint reaches a daemon on
//! the same host, an unreachable one is named, `--confirm` takes the configuration's durations,
//! and a file that is not UTF-8 is refused with its line and offset. Through the real `isthmus`
//! binary against a real `isthmusd`.

use std::path::Path;
use std::process::{Child, Command, Output};
use std::time::{Duration, Instant};

use isthmus_testkit::site::Binaries;
use isthmus_testkit::{Netns, require_root};

const ADMIN: &str = "ist_front-door-admin-token";

fn bins() -> Binaries {
    Binaries::next_to_cli(env!("CARGO_BIN_EXE_isthmus"))
}

/// A daemon that is killed on drop.
struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn config(name: &str, extra: &str) -> String {
    isthmus_testkit::config::Gateway::new(name)
        .push(extra)
        .token("ops", "admin", &isthmus_config::hash_token(ADMIN))
        .toml()
}

/// `isthmus ARGS` with the token, a private settings folder and no endpoint of its own unless
/// `args` give one.
fn cli(ns: Option<&Netns>, dir: &Path, args: &[&str]) -> Output {
    let bin = bins().isthmus;
    let mut c = match ns {
        Some(ns) => ns.command(bin.to_str().unwrap()),
        None => Command::new(bin),
    };
    c.args(args)
        .env_remove("ISTHMUS_ENDPOINT")
        .env("ISTHMUS_TOKEN", ADMIN)
        .env("ISTHMUS_CONFIG_DIR", dir.join("cli"))
        .output()
        .unwrap()
}

fn text(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr)
}

/// Runs `isthmus status` until it succeeds (20 s at most); returns the last output.
fn wait_status(ns: Option<&Netns>, dir: &Path, args: &[&str]) -> Output {
    let t0 = Instant::now();
    loop {
        let o = cli(ns, dir, &[args, &["status"]].concat());
        if o.status.success() || t0.elapsed() > Duration::from_secs(20) {
            return o;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// `isthmusd` with only its store and API, on `cfg`, with `args`.
fn daemon(ns: Option<&Netns>, dir: &Path, cfg: &str, args: &[&str]) -> Daemon {
    let file = dir.join("gw.toml");
    std::fs::write(&file, cfg).unwrap();
    let bin = bins().isthmusd;
    let mut c = match ns {
        Some(ns) => ns.command(bin.to_str().unwrap()),
        None => Command::new(bin),
    };
    c.arg("--config").arg(&file).arg("--data-dir").arg(dir.join("data"));
    c.args(["--no-net", "--no-tunnels"]).args(args);
    Daemon(c.spawn().unwrap())
}

#[test]
fn the_default_endpoint_reaches_a_daemon_with_a_management_interface() {
    // Before: the daemon served only https://MGMT:8443 and the CLI's default
    // http://127.0.0.1:8080 found nothing: the first `isthmus status` exited 6.
    if !require_root() {
        return;
    }
    let dir = tempdir("mgmt");
    let ns = Netns::new("fd");
    ns.sh("ip link add mgmt0 type veth peer name mgmt1 && ip link set mgmt0 up && ip link set mgmt1 up");
    ns.sh("ip addr add 10.79.0.1/24 dev mgmt0");
    let mgmt = "[gateway.management]\ninterface = \"mgmt0\"\naddress = \"10.79.0.1/24\"\n";
    let d = daemon(Some(&ns), dir.path(), &config("fd", mgmt), &[]);
    let o = wait_status(Some(&ns), dir.path(), &[]);
    assert!(o.status.success(), "default endpoint: {}", text(&o));
    assert!(text(&o).contains("fd"), "{}", text(&o));
    // The management address serves TLS, pinned on first use.
    let o = wait_status(Some(&ns), dir.path(), &["--endpoint", "https://10.79.0.1:8443"]);
    assert!(o.status.success(), "management endpoint: {}", text(&o));
    assert!(text(&o).contains("pinned 10.79.0.1:8443"), "{}", text(&o));
    drop(d);
    // Nothing listens any more: the error names the endpoint and where it came from, exit 6.
    let o = cli(Some(&ns), dir.path(), &["status"]);
    let t = text(&o);
    assert_eq!(o.status.code(), Some(6), "{t}");
    assert!(t.contains("cannot reach the daemon at http://127.0.0.1:8080 (the default)"), "{t}");
}

#[test]
fn an_unreachable_endpoint_is_named_not_the_request_path() {
    // Before: `error sending request for url (https://127.0.0.1:1/openapi.json)`.
    let dir = tempdir("unreach");
    let port = free_port();
    for endpoint in [format!("https://127.0.0.1:{port}"), format!("http://127.0.0.1:{port}")] {
        let o = cli(None, dir.path(), &["--endpoint", &endpoint, "status"]);
        let t = text(&o);
        assert_eq!(o.status.code(), Some(6), "{t}");
        assert!(
            t.contains(&format!(
                "cannot reach the daemon at {endpoint} (--endpoint or ISTHMUS_ENDPOINT)"
            )),
            "{t}"
        );
        assert!(!t.contains("openapi.json") && !t.contains("/api/v1"), "{t}");
    }
}

#[test]
fn confirm_takes_the_configuration_duration_grammar() {
    // Before: `--confirm 1h30m` was refused (`unknown unit`), though config durations accept it.
    let dir = tempdir("confirm");
    let port = free_port();
    let endpoint = format!("http://127.0.0.1:{port}");
    let _d =
        daemon(None, dir.path(), &config("before", ""), &["--api", &format!("127.0.0.1:{port}")]);
    let ep = ["--endpoint", endpoint.as_str()];
    let o = wait_status(None, dir.path(), &ep);
    assert!(o.status.success(), "{}", text(&o));
    let next = dir.path().join("next.toml");
    std::fs::write(&next, config("after", "")).unwrap();
    let o = cli(
        None,
        dir.path(),
        &[&ep[..], &["config", "apply", next.to_str().unwrap(), "--confirm", "1h30m"]].concat(),
    );
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    assert!(t.contains("reverts in 1h30m") || t.contains("reverts in 1h29m"), "{t}");
    let o = cli(None, dir.path(), &[&ep[..], &["--json", "status"]].concat());
    let s: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let left = s["confirm_pending_secs"].as_u64().unwrap();
    assert!((5300..=5400).contains(&left), "{s}");
    // One grammar: what it refuses, it refuses with the configuration's own message.
    for bad in ["90x", "0s", "1500ms"] {
        let o = cli(
            None,
            dir.path(),
            &[&ep[..], &["config", "apply", "x.toml", "--confirm", bad]].concat(),
        );
        assert_eq!(o.status.code(), Some(2), "{bad}: {}", text(&o));
        assert!(text(&o).contains(&format!("`{bad}`")), "{}", text(&o));
    }
}

#[test]
fn a_file_that_is_not_utf8_exits_invalid_with_its_line_and_offset() {
    // Before: `stream did not contain valid UTF-8`, exit 1, no location.
    let dir = tempdir("utf8");
    let file = dir.path().join("latin1.toml");
    std::fs::write(&file, b"[gateway]\nname = \"caf\xe9\"\n").unwrap();
    let endpoint = format!("http://127.0.0.1:{}", free_port());
    for cmd in [&["config", "validate"][..], &["config", "apply"], &["config", "diff"]] {
        let o = cli(
            None,
            dir.path(),
            &[&["--endpoint", &endpoint][..], cmd, &[file.to_str().unwrap()]].concat(),
        );
        let t = text(&o);
        assert_eq!(o.status.code(), Some(5), "{cmd:?}: {t}");
        assert!(
            t.contains("latin1.toml is not UTF-8 text: byte 0xe9 at line 2, byte 12 of that line (offset 21 in the file)"),
            "{cmd:?}: {t}"
        );
    }
}

/// A scratch folder, removed when dropped.
fn tempdir(tag: &str) -> tempfile::TempDir {
    tempfile::Builder::new().prefix(&format!("isthmus-fd-{tag}-")).tempdir().unwrap()
}

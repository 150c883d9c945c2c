//! The CLI as a new operator first meets it (issue 14): the default endpoint reaches a daemon on
//! the same host, an unreachable one is named, `--confirm` takes the configuration's durations,
//! and a file that is not UTF-8 is refused with its line and offset. Human views speak human
//! time, `events` filters, and shell completion asks the daemon (issue 18). Through the real
//! `isthmus` binary (and a real bash for completion) against a real `isthmusd`.

use std::io::BufRead;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
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
    // Revisions say when in words, the pending one when it reverts; JSON says it in RFC 3339.
    let revs = text(&cli(None, dir.path(), &[&ep[..], &["config", "revisions"]].concat()));
    assert_eq!(epochs(&revs), Vec::<&str>::new(), "{revs}");
    let lines: Vec<&str> = revs.lines().collect();
    assert!(lines[1].contains(" ago ") || lines[1].contains(" just now "), "{revs}");
    assert!(
        lines[2].contains("active, unconfirmed: reverts in 1h29m")
            || lines[2].contains("active, unconfirmed: reverts in 1h30m"),
        "{revs}"
    );
    let o = cli(None, dir.path(), &[&ep[..], &["--json", "config", "revisions"]].concat());
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(is_rfc3339(&v[0]["time"]) && is_rfc3339(&v[1]["time"]), "{v}");
    assert!(is_rfc3339(&v[1]["confirm_deadline"]) && v[0]["confirm_deadline"].is_null(), "{v}");
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

/// A gateway with one tunnel that stays down (the daemon runs none) and an alarm about it.
fn down_tunnel_config() -> String {
    isthmus_testkit::config::Gateway::new("tv")
        .lan("lan", "lan0", "10.88.1.1/24")
        .customer_gateway("idc", "192.0.2.9")
        .push(
            r#"[[tunnel]]
name = "to-idc"
customer_gateway = "idc"
psk = "time-views-pre-shared-key-0123456789"
[[tunnel.spd]]
local = ["10.88.1.0/24"]
remote = ["10.88.2.0/24"]

[[alarm]]
name = "tunnel-down"
kind = "tunnel-down"
hold = "1s"
severity = "major"
"#,
        )
        .token("ops", "admin", &isthmus_config::hash_token(ADMIN))
        .toml()
}

#[test]
fn human_views_speak_human_time_events_filter_and_completion_asks_the_daemon() {
    // Before: `alarm list` printed `1796684472`, `events` took no filters and could not look
    // back, and completion knew subcommands only.
    let dir = tempdir("time");
    let port = free_port();
    let endpoint = format!("http://127.0.0.1:{port}");
    let _d =
        daemon(None, dir.path(), &down_tunnel_config(), &["--api", &format!("127.0.0.1:{port}")]);
    let ep = ["--endpoint", endpoint.as_str()];
    let run = |args: &[&str]| cli(None, dir.path(), &[&ep[..], args].concat());
    let o = wait_status(None, dir.path(), &ep);
    assert!(o.status.success(), "{}", text(&o));
    let t0 = Instant::now();
    let alarms = loop {
        let v: serde_json::Value =
            serde_json::from_slice(&run(&["--json", "alarm", "list"]).stdout).unwrap();
        if v.as_array().is_some_and(|a| !a.is_empty()) || t0.elapsed() > Duration::from_secs(20) {
            break v;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(alarms[0]["name"], "tunnel-down", "{alarms}");
    assert!(is_rfc3339(&alarms[0]["raised"]) && alarms[0]["cleared"].is_null(), "{alarms}");
    // Old enough to be "ago" rather than "just now".
    std::thread::sleep(Duration::from_millis(1100));

    let list = text(&run(&["alarm", "list"]));
    assert_eq!(epochs(&list), Vec::<&str>::new(), "{list}");
    let row = list.lines().find(|l| l.starts_with("tunnel-down ")).expect(&list);
    assert!(row.contains("tunnel/to-idc  major     ") && row.contains(" ago  -"), "{list}");
    let show = text(&run(&["tunnel", "show", "to-idc"]));
    assert_eq!(epochs(&show), Vec::<&str>::new(), "{show}");
    let raised = show.lines().find(|l| l.contains("alarm-raised")).expect(&show);
    assert!(raised.trim_start().split("  ").next().unwrap().ends_with(" ago"), "{show}");

    // `events`: local time on every line; JSON in RFC 3339; each filter narrows.
    let events = |args: &[&str]| {
        let o = run(&[&["events", "--no-follow"], args].concat());
        assert!(o.status.success(), "{args:?}: {}", text(&o));
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    let all = events(&[]);
    assert_eq!(epochs(&all), Vec::<&str>::new(), "{all}");
    let kinds = |out: &str| -> Vec<String> {
        out.lines().map(|l| l.split_whitespace().nth(3).unwrap_or_default().to_owned()).collect()
    };
    assert!(kinds(&all).contains(&"config-applied".into()), "{all}");
    assert!(kinds(&all).contains(&"alarm-raised".into()), "{all}");
    for l in all.lines() {
        let b = l.as_bytes();
        assert!(b.len() > 20 && b[4] == b'-' && b[10] == b' ' && b[13] == b':', "{l}");
    }
    let json =
        String::from_utf8_lossy(&run(&["--json", "events", "--no-follow"]).stdout).into_owned();
    let json: Vec<serde_json::Value> =
        json.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(json.len(), all.lines().count(), "{json:?}");
    assert!(json.iter().all(|e| is_rfc3339(&e["time"])), "{json:?}");

    let about = events(&["--tunnel", "to-idc"]);
    assert!(!about.is_empty() && about.lines().all(|l| l.contains(" tunnel/to-idc ")), "{all}");
    assert!(about.lines().count() < all.lines().count(), "{about}");
    let applied = events(&["--kind", "config-applied"]);
    assert_eq!(kinds(&applied), ["config-applied"], "{all}");
    let both = events(&["--kind", "alarm-raised,config-applied"]);
    assert_eq!(kinds(&both), ["config-applied", "alarm-raised"], "{all}");
    let raised_at = json.iter().find(|e| e["kind"] == "alarm-raised").unwrap()["time"].clone();
    let since = events(&["--since", raised_at.as_str().unwrap()]);
    assert!(!kinds(&since).contains(&"config-applied".into()), "{since}");
    assert!(kinds(&since).contains(&"alarm-raised".into()), "{since}");
    assert_eq!(events(&["--since", "10m"]), all);
    assert_eq!(events(&["--since", "2999-01-01T00:00:00Z"]), "");
    let bad = run(&["events", "--kind", "tunnel-upp"]);
    let t = text(&bad);
    assert_eq!(bad.status.code(), Some(2), "{t}");
    assert!(t.contains("invalid value 'tunnel-upp' for '--kind <KIND>'"), "{t}");
    assert!(t.contains("possible values: ") && t.contains("negotiation-failed"), "{t}");
    let bad = run(&["events", "--tunnel", "to-nowhere", "--no-follow"]);
    let t = text(&bad);
    assert_eq!(bad.status.code(), Some(4), "{t}");
    assert!(t.contains("no tunnel named `to-nowhere`"), "{t}");
    let bad = run(&["events", "--since", "yesterday"]);
    assert_eq!(bad.status.code(), Some(2), "{}", text(&bad));

    // Following: an acknowledgement arrives (or is replayed, if it came before the stream
    // began: once either way), filtered by the daemon.
    let mut follow = Command::new(bins().isthmus)
        .args(ep)
        .args(["events", "--tunnel", "to-idc", "--kind", "alarm-acknowledged", "--since", "1m"])
        .env("ISTHMUS_TOKEN", ADMIN)
        .env("ISTHMUS_CONFIG_DIR", dir.path().join("cli"))
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let out = follow.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for l in std::io::BufReader::new(out).lines() {
            let _ = tx.send(l.unwrap_or_default());
        }
    });
    let ack = text(&run(&["alarm", "ack", "tunnel-down", "tunnel/to-idc"]));
    assert!(ack.contains("acknowledged by ops at 20"), "{ack}");
    let line = rx.recv_timeout(Duration::from_secs(10));
    let _ = follow.kill();
    let _ = follow.wait();
    let line = line.expect("the acknowledgement in the followed stream");
    assert!(line.contains(" alarm-acknowledged ") && line.contains(" tunnel/to-idc "), "{line}");
    assert!(rx.recv_timeout(Duration::from_millis(300)).is_err(), "only one event matches");

    // Completion as bash does it: the installed script calls `isthmus`, which asks the daemon.
    let complete = |endpoint: &str, line: &[&str]| -> (Vec<String>, String) {
        let words: Vec<String> = line.iter().map(|w| format!("'{w}'")).collect();
        let script = format!(
            "source <(isthmus completions bash)\n\
             COMP_WORDS=({}); COMP_CWORD={}; COMP_TYPE=9\n\
             _clap_complete_isthmus isthmus '{}' '{}'\n\
             printf '%s\\n' \"${{COMPREPLY[@]}}\"",
            words.join(" "),
            line.len() - 1,
            line[line.len() - 1],
            line[line.len() - 2],
        );
        let bin_dir = bins().isthmus.parent().unwrap().to_owned();
        let path = format!("{}:{}", bin_dir.display(), std::env::var("PATH").unwrap_or_default());
        let o = Command::new("bash")
            .args(["-c", &script])
            .env("PATH", path)
            .env("ISTHMUS_ENDPOINT", endpoint)
            .env("ISTHMUS_TOKEN", ADMIN)
            .env("ISTHMUS_CONFIG_DIR", dir.path().join("cli"))
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", text(&o));
        let words = String::from_utf8_lossy(&o.stdout).lines().map(String::from).collect();
        (words, String::from_utf8_lossy(&o.stderr).into_owned())
    };
    // Values only: with an empty word clap also offers the flags that may come next.
    let words = |line: &[&str]| -> Vec<String> {
        complete(&endpoint, line).0.into_iter().filter(|w| !w.starts_with("--")).collect()
    };
    assert_eq!(words(&["isthmus", "tunnel", "sh"]), ["show"]);
    assert_eq!(words(&["isthmus", "tunnel", "show", ""]), ["to-idc"]);
    assert_eq!(words(&["isthmus", "tunnel", "show", "to"]), ["to-idc"]);
    assert_eq!(words(&["isthmus", "events", "--tunnel", ""]), ["to-idc"]);
    assert_eq!(words(&["isthmus", "config", "rollback", ""]), ["1"]);
    assert_eq!(words(&["isthmus", "alarm", "ack", ""]), ["tunnel-down"]);
    assert_eq!(words(&["isthmus", "alarm", "ack", "tunnel-down", ""]), ["tunnel/to-idc"]);
    assert!(words(&["isthmus", "events", "--kind", "tunnel-"]).contains(&"tunnel-up".into()));
    // No daemon there: nothing offered, nothing said, no wait.
    let t0 = Instant::now();
    let (w, err) =
        complete(&format!("http://127.0.0.1:{}", free_port()), &["isthmus", "tunnel", "show", ""]);
    assert!(w.iter().all(|w| w.is_empty() || w.starts_with("--")) && err.is_empty(), "{w:?} {err}");
    assert!(t0.elapsed() < Duration::from_secs(3), "{:?}", t0.elapsed());
}

/// Words that look like a Unix time in seconds (nine digits or more).
fn epochs(s: &str) -> Vec<&str> {
    s.split(|c: char| !c.is_ascii_digit()).filter(|w| w.len() >= 9).collect()
}

/// `"2026-12-07T23:01:12Z"`.
fn is_rfc3339(v: &serde_json::Value) -> bool {
    let Some(s) = v.as_str() else { return false };
    let b = s.as_bytes();
    b.len() == 20
        && b[4] == b'-'
        && b[7] == b'-'
        && b[10] == b'T'
        && b[13] == b':'
        && b[16] == b':'
        && b[19] == b'Z'
        && s.chars().filter(char::is_ascii_digit).count() == 14
}

/// A scratch folder, removed when dropped.
fn tempdir(tag: &str) -> tempfile::TempDir {
    tempfile::Builder::new().prefix(&format!("isthmus-fd-{tag}-")).tempdir().unwrap()
}

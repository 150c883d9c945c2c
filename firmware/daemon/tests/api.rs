//! The management API as a client sees it: authentication, roles, malformed and oversized
//! requests, commits, commit-confirm timeouts and rollbacks, against a real `isthmusd` process
//! (API and store only, on loopback).

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

struct Daemon {
    child: Child,
    base: String,
    _dir: tempdir::Dir,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

mod tempdir {
    /// A directory removed on drop.
    pub struct Dir(pub std::path::PathBuf);
    impl Dir {
        pub fn new(tag: &str) -> Dir {
            let p = std::env::temp_dir().join(format!(
                "isthmusd-{tag}-{}-{:?}",
                std::process::id(),
                std::thread::current().id()
            ));
            let _ = std::fs::remove_dir_all(&p);
            std::fs::create_dir_all(&p).unwrap();
            Dir(p)
        }
    }
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

fn config(name: &str, extra: &str) -> String {
    gateway(isthmus_testkit::config::Gateway::new(name)).push(extra).toml()
}

/// `g` with this file's two API tokens.
fn gateway(g: isthmus_testkit::config::Gateway) -> isthmus_testkit::config::Gateway {
    g.token("ops", "admin", &isthmus_config::hash_token(ADMIN)).token(
        "grafana",
        "read-only",
        &isthmus_config::hash_token(RO),
    )
}

const ADMIN: &str = "ist_admin-token-for-tests";
const RO: &str = "ist_read-only-token-for-tests";
const PSK: &str = "a-secret-psk-that-must-never-leak-0123456789";

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Starts `isthmusd` in `dir` on `cfg` (bytes, to allow any content) with its API on `port`;
/// its stderr lines are echoed and sent on the returned channel.
fn spawn(dir: &std::path::Path, cfg: &[u8], port: u16) -> (Child, mpsc::Receiver<String>) {
    let file = dir.join("gw.toml");
    std::fs::write(&file, cfg).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_isthmusd"))
        .args(["--config", file.to_str().unwrap(), "--data-dir"])
        .arg(dir.join("data"))
        .args(["--no-net", "--no-tunnels", "--api", &format!("127.0.0.1:{port}")])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let err = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for l in BufReader::new(err).lines().map_while(Result::ok) {
            eprintln!("isthmusd: {l}");
            let _ = tx.send(l);
        }
    });
    (child, rx)
}

fn start() -> Daemon {
    let dir = tempdir::Dir::new("api");
    let port = free_port();
    let (child, rx) = spawn(&dir.0, config("gw1", "").as_bytes(), port);
    let t0 = Instant::now();
    while !rx
        .recv_timeout(Duration::from_millis(200))
        .is_ok_and(|l| l.contains("management API listening"))
    {
        assert!(t0.elapsed() < Duration::from_secs(20), "isthmusd did not start listening");
    }
    Daemon { child, base: format!("http://127.0.0.1:{port}"), _dir: dir }
}

fn client() -> reqwest::blocking::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::blocking::Client::new()
}

fn call(
    method: &str,
    d: &Daemon,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> (u16, Value) {
    let c = client();
    let url = format!("{}{path}", d.base);
    let mut r = match method {
        "GET" => c.get(url),
        _ => c.post(url),
    };
    if let Some(t) = token {
        r = r.bearer_auth(t);
    }
    if let Some(b) = body {
        r = r.json(&b);
    }
    let resp = r.send().unwrap();
    let status = resp.status().as_u16();
    let text = resp.text().unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

#[test]
fn authentication_and_roles_are_enforced_with_clear_messages() {
    let d = start();
    let (s, b) = call("GET", &d, "/api/v1/status", None, None);
    assert_eq!(s, 401);
    assert!(b["message"].as_str().unwrap().contains("missing bearer token"), "{b}");
    let (s, b) = call("GET", &d, "/api/v1/status", Some("ist_wrong"), None);
    assert_eq!(s, 401);
    assert!(!b.to_string().contains("ist_wrong"), "the token is echoed: {b}");
    let (s, b) = call("GET", &d, "/api/v1/status", Some(RO), None);
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["gateway"], "gw1");
    let (s, b) =
        call("POST", &d, "/api/v1/config/commit", Some(RO), Some(json!({"text": config("x", "")})));
    assert_eq!(s, 403);
    assert_eq!(b["code"], "forbidden");
    assert!(b["message"].as_str().unwrap().contains("read-only"), "{b}");
    let (s, _) = call("GET", &d, "/metrics", None, None);
    assert_eq!(s, 401, "metrics need a token too");
    let (s, b) = call("GET", &d, "/openapi.json", None, None);
    assert_eq!(s, 200);
    assert_eq!(b["openapi"], "3.1.0");
}

#[test]
fn malformed_and_oversized_requests_get_4xx_with_a_reason() {
    let d = start();
    let c = client();
    let r = c
        .post(format!("{}/api/v1/config/validate", d.base))
        .bearer_auth(ADMIN)
        .body("{not json")
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    assert!(r.text().unwrap().contains("malformed JSON body"));
    let (s, b) = call(
        "POST",
        &d,
        "/api/v1/config/commit",
        Some(ADMIN),
        Some(json!({"text": "x", "surprise": 1})),
    );
    assert_eq!(s, 400);
    assert!(b["message"].as_str().unwrap().contains("unknown field `surprise`"), "{b}");
    // Over the 4 MiB limit: through an extractor (validate) and through a handler that reads
    // the body itself (commit), which names the limit.
    let big = "#".repeat(5 << 20);
    for path in ["validate", "commit"] {
        let r = c
            .post(format!("{}/api/v1/config/{path}", d.base))
            .bearer_auth(ADMIN)
            .json(&json!({"text": big}))
            .send()
            .unwrap();
        assert_eq!(r.status().as_u16(), 413, "{path}");
        let text = r.text().unwrap();
        assert!(path == "validate" || text.contains("request body larger than 4 MiB"), "{text}");
    }
    let (s, b) = call("GET", &d, "/api/v1/nowhere", Some(ADMIN), None);
    assert_eq!(s, 404);
    assert!(b["message"].as_str().unwrap().contains("no such endpoint"), "{b}");
    let (s, b) = call("GET", &d, "/api/v1/tunnels/nope", Some(ADMIN), None);
    assert_eq!(s, 404);
    assert!(b["message"].as_str().unwrap().contains("no tunnel named `nope`"), "{b}");
}

#[test]
fn invalid_config_is_refused_with_paths_and_secrets_never_leak() {
    let d = start();
    let bad = config(
        "gw1",
        &format!(
            r#"
[[customer_gateway]]
name = "peer"
address = "192.0.2.9"

[[tunnel]]
name = "t1"
customer_gateway = "nobody"
psk = "{PSK}"
ike_proposals = ["aes256gcm16-prfsha256-x99999"]
"#
        ),
    );
    let (s, b) =
        call("POST", &d, "/api/v1/config/validate", Some(ADMIN), Some(json!({"text": bad})));
    assert_eq!(s, 200);
    assert_eq!(b["ok"], false);
    let paths: Vec<&str> =
        b["errors"].as_array().unwrap().iter().map(|e| e["path"].as_str().unwrap()).collect();
    assert!(paths.iter().any(|p| p.starts_with("tunnel[0].customer_gateway")), "{b}");
    assert!(paths.iter().any(|p| p.starts_with("tunnel[0].ike_proposals")), "{b}");
    let (s, b) = call("POST", &d, "/api/v1/config/commit", Some(ADMIN), Some(json!({"text": bad})));
    assert_eq!(s, 422);
    assert_eq!(b["code"], "invalid-config");
    assert!(!b.to_string().contains(PSK), "PSK leaked in an error: {b}");
    // Nothing was committed.
    let (_, revs) = call("GET", &d, "/api/v1/config/revisions", Some(ADMIN), None);
    assert_eq!(revs.as_array().unwrap().len(), 1);
}

#[test]
fn commit_confirm_reverts_by_itself_and_rollback_restores() {
    let d = start();
    let (s, b) = call(
        "POST",
        &d,
        "/api/v1/config/commit",
        Some(ADMIN),
        Some(json!({"text": config("gw2", ""), "comment": "rename", "confirm_secs": 5})),
    );
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["revision"], 2);
    let (_, st) = call("GET", &d, "/api/v1/status", Some(ADMIN), None);
    assert_eq!(st["gateway"], "gw2");
    assert!(st["confirm_pending_secs"].is_number(), "{st}");
    // Not confirmed: the daemon reverts within a few seconds of the deadline.
    let t0 = Instant::now();
    loop {
        let (_, st) = call("GET", &d, "/api/v1/status", Some(ADMIN), None);
        if st["gateway"] == "gw1" {
            assert_eq!(st["revision"], 3, "the revert is a new revision: {st}");
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(30), "no revert: {st}");
        std::thread::sleep(Duration::from_millis(200));
    }
    // Confirmed commits stay.
    let (s, _) = call(
        "POST",
        &d,
        "/api/v1/config/commit",
        Some(ADMIN),
        Some(json!({"text": config("gw3", ""), "confirm_secs": 5})),
    );
    assert_eq!(s, 200);
    let (s, b) = call("POST", &d, "/api/v1/config/confirm", Some(ADMIN), Some(json!({})));
    assert_eq!(s, 200, "{b}");
    std::thread::sleep(Duration::from_secs(6));
    let (_, st) = call("GET", &d, "/api/v1/status", Some(ADMIN), None);
    assert_eq!(st["gateway"], "gw3");
    // Roll back to revision 1.
    let (s, b) =
        call("POST", &d, "/api/v1/config/rollback", Some(ADMIN), Some(json!({"revision": 1})));
    assert_eq!(s, 200, "{b}");
    let (_, st) = call("GET", &d, "/api/v1/status", Some(ADMIN), None);
    assert_eq!(st["gateway"], "gw1");
    let (_, revs) = call("GET", &d, "/api/v1/config/revisions", Some(RO), None);
    let revs = revs.as_array().unwrap();
    assert_eq!(revs.last().unwrap()["active"], true);
    assert_eq!(revs[1]["author"], "ops");
    let (s, b) =
        call("POST", &d, "/api/v1/config/rollback", Some(ADMIN), Some(json!({"revision": 99})));
    assert_eq!(s, 404, "{b}");
}

/// Starts `isthmusd` on `cfg` (bytes, to allow any content) and returns its stderr once it
/// has exited or logged a line containing `until` (20 s at most).
fn start_output(cfg: &[u8], until: &str) -> String {
    let dir = tempdir::Dir::new("bad");
    let (mut child, rx) = spawn(&dir.0, cfg, free_port());
    let mut out = String::new();
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(20) {
        match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(l) => {
                out.push_str(&l);
                out.push('\n');
                if l.contains(until) {
                    break;
                }
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(_) => {}
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    out
}

#[test]
fn a_missing_token_file_is_named_by_field_and_path_at_start() {
    // Issue 14 item 4: the daemon used to start, drop the token and answer it 401.
    let missing = "/nonexistent/isthmus-test/ops-token";
    let cfg = config("gw1", "")
        + &format!(
            "\n[[api_token]]\nname = \"file\"\nrole = \"admin\"\ntoken = {{ file = \"{missing}\" }}\n"
        );
    let out = start_output(cfg.as_bytes(), "api_token[2].token");
    assert!(
        out.contains("api_token[2].token") && out.contains(missing),
        "no error naming the field and the file:\n{out}"
    );
    assert!(!out.contains("management API listening"), "started anyway:\n{out}");
}

#[test]
fn a_config_file_that_is_not_utf8_is_named_by_line_and_offset_at_start() {
    // Issue 14 item 10: `stream did not contain valid UTF-8`, nothing else.
    let mut cfg = config("gw1", "").into_bytes();
    let offset = cfg.len();
    cfg.extend_from_slice(b"# \xff\n");
    let line = cfg.iter().filter(|&&b| b == b'\n').count();
    let out = start_output(&cfg, "not UTF-8");
    assert!(
        out.contains(&format!(
            "byte 0xff at line {line}, byte 3 of that line (offset {} in the file)",
            offset + 2
        )),
        "{out}"
    );
}

#[test]
fn every_request_type_refuses_unknown_fields() {
    // Issue 14 item 8: `POST /actions` with an unknown field answered 200.
    let d = start();
    for (path, body) in [
        ("/api/v1/actions", json!({"action": "config-confirm", "surprise": 1})),
        ("/api/v1/actions", json!({"action": "tunnel-initiate", "name": "t", "surprise": 1})),
        ("/api/v1/config/validate", json!({"text": "", "surprise": 1})),
        ("/api/v1/config/diff", json!({"text": "", "surprise": 1})),
        ("/api/v1/config/rollback", json!({"revision": 1, "surprise": 1})),
        ("/api/v1/alarms/acknowledge", json!({"name": "a", "subject": "b", "surprise": 1})),
    ] {
        let (s, b) = call("POST", &d, path, Some(ADMIN), Some(body.clone()));
        assert_eq!(s, 400, "{path} {body}: {b}");
        assert!(b["message"].as_str().unwrap().contains("unknown field `surprise`"), "{path}: {b}");
    }
}

#[test]
fn every_operation_in_the_openapi_document_is_served() {
    // Issue 14 item 8: the hand-written document had drifted from the router. The generated one
    // must still list only what is served, with every status it answers.
    let d = start();
    let (s, doc) = call("GET", &d, "/openapi.json", None, None);
    assert_eq!(s, 200);
    let paths = doc["paths"].as_object().unwrap();
    assert!(paths.len() >= 25, "{}", paths.len());
    let c = reqwest::blocking::Client::builder().timeout(Duration::from_secs(10)).build().unwrap();
    let mut undocumented = Vec::new();
    for (path, ops) in paths {
        // Fill path parameters with a value no object has: the route must still be found.
        let concrete = path.replace("{n}", "999").replace("{op}", "nope").replace(['{', '}'], "");
        for method in ops.as_object().unwrap().keys() {
            let url = format!("{}{concrete}", d.base);
            let r = match method.as_str() {
                "get" => c.get(url),
                "post" => c.post(url).json(&json!({})),
                m => panic!("{path}: method {m} is not served by this API"),
            };
            let r = r.bearer_auth(ADMIN).send().unwrap();
            let status = r.status().as_u16();
            // `/events` streams: the status line is enough.
            let body = if path.ends_with("/events") { String::new() } else { r.text().unwrap() };
            assert_ne!(status, 405, "{method} {path} is documented but not routed");
            assert!(
                !body.contains("no such endpoint"),
                "{method} {path} is documented but not routed: {body}"
            );
            // Every documented status is one the document lists for the operation.
            let listed = ops[method]["responses"].as_object().unwrap();
            if !listed.contains_key(&status.to_string()) {
                undocumented.push(format!("{method} {path} answered {status}: {body}"));
            }
        }
    }
    assert!(
        undocumented.is_empty(),
        "statuses the document does not list:\n{}",
        undocumented.join("\n")
    );
}

/// A plain-HTTP webhook receiver on loopback: every request's headers (lower-cased names) and
/// body go to the channel; it answers 200.
/// A request the receiver got: its headers and its JSON body.
type Hook = (Vec<(String, String)>, Value);

fn webhook_receiver() -> (String, mpsc::Receiver<Hook>) {
    use std::io::{Read, Write};
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/hook", l.local_addr().unwrap());
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for mut s in l.incoming().map_while(Result::ok) {
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            let (head, body) = loop {
                let n = s.read(&mut chunk).unwrap_or(0);
                if n == 0 {
                    break (String::new(), String::new());
                }
                buf.extend_from_slice(&chunk[..n]);
                let text = String::from_utf8_lossy(&buf).into_owned();
                if let Some((h, b)) = text.split_once("\r\n\r\n") {
                    let len = h
                        .lines()
                        .find_map(|l| {
                            l.to_lowercase()
                                .strip_prefix("content-length:")
                                .map(|v| v.trim().parse().unwrap_or(0))
                        })
                        .unwrap_or(0usize);
                    if b.len() >= len {
                        break (h.to_owned(), b.to_owned());
                    }
                }
            };
            let _ =
                s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
            let headers = head
                .lines()
                .skip(1)
                .filter_map(|l| l.split_once(':'))
                .map(|(k, v)| (k.trim().to_lowercase(), v.trim().to_owned()))
                .collect();
            let _ = tx.send((headers, serde_json::from_str(&body).unwrap_or(Value::Null)));
        }
    });
    (url, rx)
}

/// Starts `isthmusd` in `dir` (kept by the caller, so that a second start finds the first's
/// state) and waits for its API.
fn start_in(dir: &std::path::Path, cfg: &str) -> Daemon {
    let port = free_port();
    let (child, rx) = spawn(dir, cfg.as_bytes(), port);
    let t0 = Instant::now();
    while !rx
        .recv_timeout(Duration::from_millis(200))
        .is_ok_and(|l| l.contains("management API listening"))
    {
        assert!(t0.elapsed() < Duration::from_secs(20), "isthmusd did not start listening");
    }
    Daemon { child, base: format!("http://127.0.0.1:{port}"), _dir: tempdir::Dir::new("unused") }
}

/// Polls `GET /alarms` until `f` accepts the list.
fn alarms_until(d: &Daemon, what: &str, f: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let t0 = Instant::now();
    loop {
        let (s, b) = call("GET", d, "/api/v1/alarms", Some(ADMIN), None);
        assert_eq!(s, 200, "{b}");
        let v = b.as_array().cloned().unwrap_or_default();
        if f(&v) {
            return v;
        }
        assert!(t0.elapsed() < Duration::from_secs(15), "{what}: {b}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Issue 18, items 7 and 8, as an operator sees them. Three tunnels — one that should be up
/// (no driver runs, so it is down), one on demand (`trap`) with no traffic, one disabled — and
/// a `tunnel-down` alarm with a webhook:
/// - `/metrics` parses with a Prometheus parser; every family has HELP and TYPE, counters and
///   only counters end in `_total`; build, process, drop, failure, rekey and webhook series are
///   there at zero before any tunnel event; the state gauge tells down, idle and disabled apart;
/// - only the down tunnel pages (severity `major` in the API, the webhook and the metrics); the
///   webhook request carries a User-Agent and a delivery ID;
/// - after a crash (SIGKILL) and a restart on the same state, the alarm is still raised with its
///   first raise time, and nothing is sent again; a clear says why, and stays cleared with its
///   reason across the next restart.
#[test]
fn alarms_persist_across_restarts_and_metrics_follow_prometheus_conventions() {
    let dir = tempdir::Dir::new("alarms");
    let (hook, received) = webhook_receiver();
    let cfg = |a_enabled: bool| {
        gateway(isthmus_testkit::config::Gateway::new("gw1"))
            .routed_lan("office", "lan0", &["10.80.1.1/24"], &["10.80.1.0/24"], None)
            .customer_gateway("peer", "192.0.2.10")
            .push(&format!(
                r#"[[tunnel]]
name = "to-a"
customer_gateway = "peer"
psk = "{PSK}"
enabled = {a_enabled}
[[tunnel.spd]]
local = ["10.80.1.0/24"]
remote = ["10.80.2.0/24"]
[[tunnel]]
name = "to-b"
customer_gateway = "peer"
psk = "{PSK}"
start_action = "trap"
[[tunnel.spd]]
local = ["10.80.1.0/24"]
remote = ["10.80.3.0/24"]
[[tunnel]]
name = "to-c"
customer_gateway = "peer"
psk = "{PSK}"
enabled = false
[[tunnel.spd]]
local = ["10.80.1.0/24"]
remote = ["10.80.4.0/24"]
[[notify]]
name = "ops"
webhook = "{hook}"
retries = 0
[[alarm]]
name = "down"
kind = "tunnel-down"
severity = "major"
notify = ["ops"]
"#
            ))
            .toml()
    };
    let d = start_in(&dir.0, &cfg(true));

    // Only the tunnel that should be up pages.
    let list = alarms_until(&d, "no tunnel-down alarm", |v| !v.is_empty());
    assert_eq!(list.len(), 1, "the idle and the disabled tunnel raised nothing: {list:?}");
    let raised = list[0].clone();
    assert_eq!(
        (raised["subject"].as_str(), raised["severity"].as_str()),
        (Some("tunnel/to-a"), Some("major"))
    );
    let (headers, body) = received.recv_timeout(Duration::from_secs(10)).expect("no webhook");
    let header = |h: &[(String, String)], k: &str| {
        h.iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| panic!("no {k}: {h:?}"))
    };
    assert!(header(&headers, "user-agent").starts_with("isthmusd/"), "{headers:?}");
    let first_id = header(&headers, "x-isthmus-delivery");
    assert_eq!(first_id.len(), 36, "a UUID: {first_id}");
    assert_eq!(body["id"].as_str(), Some(first_id.as_str()), "{body}");
    assert_eq!(
        (body["state"].as_str(), body["severity"].as_str()),
        (Some("raised"), Some("major"))
    );

    // The exposition.
    let (s, text) = call("GET", &d, "/metrics", Some(ADMIN), None);
    assert_eq!(s, 200);
    let text = text.as_str().unwrap().to_owned();
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).unwrap();
    let sample_lines = text.lines().filter(|l| !l.is_empty() && !l.starts_with('#')).count();
    assert_eq!(scrape.samples.len(), sample_lines, "lines the parser did not take:\n{text}");
    for smp in &scrape.samples {
        let m = &smp.metric;
        assert!(scrape.docs.contains_key(m), "{m} has no HELP");
        match smp.value {
            prometheus_parse::Value::Counter(_) => assert!(m.ends_with("_total"), "counter {m}"),
            prometheus_parse::Value::Gauge(_) => assert!(!m.ends_with("_total"), "gauge {m}"),
            ref v => panic!("{m} has no TYPE or an unexpected one: {v:?}"),
        }
    }
    let value = |m: &str, labels: &[(&str, &str)]| -> f64 {
        let hits: Vec<f64> = scrape
            .samples
            .iter()
            .filter(|s| s.metric == m && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
            .map(|s| match s.value {
                prometheus_parse::Value::Counter(v) | prometheus_parse::Value::Gauge(v) => v,
                _ => f64::NAN,
            })
            .collect();
        assert_eq!(hits.len(), 1, "{m} {labels:?}: {hits:?}\n{text}");
        hits[0]
    };
    assert_eq!(value("isthmus_build_info", &[("version", env!("CARGO_PKG_VERSION"))]), 1.0);
    assert!(value("process_start_time_seconds", &[]) > 1.7e9);
    assert!(value("process_resident_memory_bytes", &[]) > 1e6);
    assert!(value("process_open_fds", &[]) > 3.0);
    value("process_cpu_seconds_total", &[]);
    for (tunnel, state) in [("to-a", "down"), ("to-b", "idle"), ("to-c", "disabled")] {
        for st in ["up", "degraded", "connecting", "idle", "down", "disabled"] {
            let want = f64::from(u8::from(st == state));
            assert_eq!(
                value("isthmus_tunnel_state", &[("tunnel", tunnel), ("state", st)]),
                want,
                "{tunnel} {st}"
            );
        }
        assert!(
            value("isthmus_tunnel_last_change_timestamp_seconds", &[("tunnel", tunnel)]) > 1.7e9
        );
        assert_eq!(
            value("isthmus_ike_failures_total", &[("tunnel", tunnel), ("reason", "timeout")]),
            0.0
        );
        assert_eq!(value("isthmus_tunnel_rekeys_total", &[("tunnel", tunnel)]), 0.0);
        assert_eq!(
            value("isthmus_tunnel_drops_total", &[("tunnel", tunnel), ("reason", "replay")]),
            0.0
        );
    }
    // One drop family, one spelling per reason, every reason at zero without traffic.
    assert!(!text.contains("isthmus_dataplane_drops_total"), "{text}");
    for (stage, reason) in
        [("esp", "icv"), ("esp", "replay"), ("spd", "spd-no-policy"), ("sa", "no-sa")]
    {
        assert_eq!(value("isthmus_drops_total", &[("stage", stage), ("reason", reason)]), 0.0);
    }
    assert_eq!(value("isthmus_apply_failures_total", &[]), 0.0);
    assert_eq!(value("isthmus_alarms_active", &[("severity", "major")]), 1.0);
    assert_eq!(value("isthmus_alarms_active", &[("severity", "critical")]), 0.0);
    assert_eq!(
        value("isthmus_webhook_deliveries_total", &[("target", "ops"), ("result", "failed")]),
        0.0
    );

    // A crash and a restart on the same state: still raised, raised at the same time, not sent
    // again (a few evaluation rounds pass).
    drop(d);
    let d = start_in(&dir.0, &cfg(true));
    std::thread::sleep(Duration::from_secs(3));
    let list = alarms_until(&d, "the alarm did not survive the restart", |v| v.len() == 1);
    assert_eq!(list[0]["raised"], raised["raised"], "{list:?}");
    assert!(list[0]["cleared"].is_null(), "{list:?}");
    assert!(received.try_recv().is_err(), "the restart sent the alarm again");

    // The tunnel is disabled: the alarm clears and says why.
    let (s, b) =
        call("POST", &d, "/api/v1/config/commit", Some(ADMIN), Some(json!({"text": cfg(false)})));
    assert_eq!(s, 200, "{b}");
    let list = alarms_until(&d, "no clear", |v| v.first().is_some_and(|a| !a["cleared"].is_null()));
    assert_eq!(list[0]["clear_reason"], "tunnel to-a is disabled", "{list:?}");
    let (headers, body) = received.recv_timeout(Duration::from_secs(10)).expect("no clear sent");
    assert_eq!(
        (body["state"].as_str(), body["reason"].as_str()),
        (Some("cleared"), Some("tunnel to-a is disabled"))
    );
    assert_ne!(header(&headers, "x-isthmus-delivery"), first_id, "each delivery has its own ID");

    // And it stays cleared, with its reason, across the next restart.
    drop(d);
    let d = start_in(&dir.0, &cfg(false));
    std::thread::sleep(Duration::from_secs(2));
    let list = alarms_until(&d, "the clear was lost", |v| v.len() == 1);
    assert_eq!(list[0]["clear_reason"], "tunnel to-a is disabled", "{list:?}");
    assert!(received.try_recv().is_err(), "the restart sent something");
}

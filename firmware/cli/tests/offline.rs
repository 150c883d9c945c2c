//! Offline checks (issue 18): `isthmus config validate FILE --offline` and `isthmusd --check
//! FILE` read a file without a daemon or root and report as compilers do,
//! `FILE:LINE:COLUMN: error: ...` on standard error, or JSON with line and column fields; a
//! file with errors fails; the pre-shared key in the file is never printed.

use std::path::Path;
use std::process::{Command, Output};

use isthmus_testkit::site::Binaries;

const PSK: &str = "Hunter2-offline-psk-8c1f2b7d9e";

/// The two checkers.
#[derive(Clone, Copy, Debug)]
enum Tool {
    Cli,
    Daemon,
}

impl Tool {
    /// The exit status of a file with errors: the CLI's "invalid configuration", the daemon's 1.
    fn invalid(self) -> i32 {
        match self {
            Tool::Cli => 5,
            Tool::Daemon => 1,
        }
    }

    fn run(self, file: &Path, json: bool) -> Output {
        let bins = Binaries::next_to_cli(env!("CARGO_BIN_EXE_isthmus"));
        let file = file.to_str().unwrap();
        let mut c = match self {
            Tool::Cli => {
                let mut c = Command::new(bins.isthmus);
                c.args(["config", "validate", file, "--offline"]);
                c
            }
            Tool::Daemon => {
                let mut c = Command::new(bins.isthmusd);
                c.args(["--check", file]);
                c
            }
        };
        if json {
            c.arg("--json");
        }
        // Nothing listens on port 9: a checker that tried to reach a daemon would fail.
        c.env("ISTHMUS_ENDPOINT", "http://127.0.0.1:9").env_remove("ISTHMUS_TOKEN");
        c.output().unwrap()
    }
}

const TOOLS: [Tool; 2] = [Tool::Cli, Tool::Daemon];

fn valid() -> String {
    isthmus_testkit::config::Gateway::new("gw")
        .lan("app", "eth1", "10.1.0.1/16")
        .customer_gateway("idc", "198.51.100.2")
        .push(&format!(
            "[[tunnel]]\nname = \"to-idc\"\ncustomer_gateway = \"idc\"\npsk = \"{PSK}\"\n\
             [[tunnel.spd]]\nlocal = [\"10.1.0.0/16\"]\nremote = [\"10.2.0.0/16\"]\n"
        ))
        .toml()
}

/// The 1-based line and column where `needle` starts in `text`.
fn place(text: &str, needle: &str) -> (usize, usize) {
    let at = text.find(needle).unwrap_or_else(|| panic!("`{needle}` not in\n{text}"));
    let line = text[..at].matches('\n').count() + 1;
    let column = at - text[..at].rfind('\n').map_or(0, |i| i + 1) + 1;
    (line, column)
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn write(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

/// Files with errors, each with the `LINE:COLUMN: error: PATH: MESSAGE` starts expected on
/// standard error, in order.
fn bad_files(dir: &Path) -> Vec<(std::path::PathBuf, Vec<String>)> {
    let good = valid();
    // An unterminated string on the PSK's line: the error points past the key, at the line's end.
    let syntax = good.replace(&format!("psk = \"{PSK}\""), &format!("psk = \"{PSK}"));
    let (line, _) = place(&syntax, "psk = ");
    let end = format!("psk = \"{PSK}").chars().count() + 1;
    let syntax_expected = vec![format!("{line}:{end}: error: TOML syntax: ")];
    // Two validation errors: an unknown customer gateway, a local prefix on no LAN.
    let invalid = good
        .replace("customer_gateway = \"idc\"", "customer_gateway = \"idd\"")
        .replace("local = [\"10.1.0.0/16\"]", "local = [\"10.9.0.0/16\"]");
    let (l1, c1) = place(&invalid, "customer_gateway = \"idd\"");
    let (l2, c2) = place(&invalid, "\"10.9.0.0/16\"");
    let invalid_expected = vec![
        format!(
            "{l1}:{c1}: error: tunnel[0].customer_gateway: customer gateway `idd` is not defined"
        ),
        format!("{l2}:{c2}: error: tunnel[0].spd[0].local[0]: 10.9.0.0/16 is not inside"),
    ];
    vec![
        (write(dir, "syntax.toml", &syntax), syntax_expected),
        (write(dir, "invalid.toml", &invalid), invalid_expected),
    ]
}

#[test]
fn errors_are_reported_as_file_line_column_and_fail_without_printing_the_psk() {
    let dir = tempfile::tempdir().unwrap();
    for (file, expected) in bad_files(dir.path()) {
        for tool in TOOLS {
            let o = tool.run(&file, false);
            let (out, err) = (stdout(&o), stderr(&o));
            assert_eq!(o.status.code(), Some(tool.invalid()), "{tool:?} {file:?}:\n{out}{err}");
            let lines: Vec<&str> = err.lines().filter(|l| l.contains(": error: ")).collect();
            assert_eq!(lines.len(), expected.len(), "{tool:?}:\n{err}");
            for (l, e) in lines.iter().zip(&expected) {
                let want = format!("{}:{e}", file.display());
                assert!(l.starts_with(&want), "{tool:?}: expected `{want}...`, got\n{err}");
            }
            assert!(!out.contains("valid"), "{tool:?}: {out}");
            assert!(
                !out.contains(PSK) && !err.contains(PSK),
                "{tool:?} printed the PSK:\n{out}{err}"
            );
        }
    }
}

#[test]
fn json_gives_file_line_column_severity_path_and_message() {
    let dir = tempfile::tempdir().unwrap();
    for (file, expected) in bad_files(dir.path()) {
        for tool in TOOLS {
            let o = tool.run(&file, true);
            let out = stdout(&o);
            assert_eq!(o.status.code(), Some(tool.invalid()), "{tool:?}:\n{out}{}", stderr(&o));
            assert!(!out.contains(PSK) && !stderr(&o).contains(PSK), "{tool:?} printed the PSK");
            let v: Vec<serde_json::Value> = serde_json::from_str(&out)
                .unwrap_or_else(|e| panic!("{tool:?}: not a JSON array ({e}):\n{out}"));
            assert_eq!(v.len(), expected.len(), "{tool:?}:\n{out}");
            for (d, e) in v.iter().zip(&expected) {
                let mut keys: Vec<&str> =
                    d.as_object().unwrap().keys().map(String::as_str).collect();
                keys.sort_unstable();
                assert_eq!(keys, ["column", "file", "line", "message", "path", "severity"]);
                assert_eq!(d["file"], file.to_str().unwrap());
                assert_eq!(d["severity"], "error");
                // The same place, path and message as the text form.
                let path = d["path"].as_str().unwrap();
                let path = if path.is_empty() { String::new() } else { format!("{path}: ") };
                let text = format!(
                    "{}:{}: error: {path}{}",
                    d["line"],
                    d["column"],
                    d["message"].as_str().unwrap()
                );
                assert!(text.starts_with(e.as_str()), "{tool:?}: `{text}` is not `{e}...`");
            }
        }
    }
}

#[test]
fn a_valid_file_passes_with_its_warnings() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(dir.path(), "ok.toml", &valid());
    for tool in TOOLS {
        let o = tool.run(&file, false);
        let (out, err) = (stdout(&o), stderr(&o));
        assert!(o.status.success(), "{tool:?}:\n{out}{err}");
        assert!(out.contains(&format!("{}: valid", file.display())), "{tool:?}: {out}");
        // No [gateway.management] and no admin token: warnings, each in the compilers' form.
        let prefix = format!("{}:", file.display());
        assert!(err.lines().count() >= 2, "{tool:?}:\n{err}");
        for l in err.lines() {
            assert!(l.starts_with(&prefix) && l.contains(" warning: "), "{tool:?}: {l}");
        }
        assert!(!out.contains(PSK) && !err.contains(PSK), "{tool:?} printed the PSK");

        let o = tool.run(&file, true);
        assert!(o.status.success(), "{tool:?}: {}", stderr(&o));
        let v: Vec<serde_json::Value> = serde_json::from_str(&stdout(&o)).unwrap();
        assert!(!v.is_empty() && v.iter().all(|d| d["severity"] == "warning"), "{v:?}");
    }
}

#[test]
fn an_unreadable_file_is_an_error_of_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.toml");
    for tool in TOOLS {
        let o = tool.run(&missing, false);
        assert_eq!(o.status.code(), Some(1), "{tool:?}: {}", stderr(&o));
        assert!(stderr(&o).contains("missing.toml"), "{tool:?}: {}", stderr(&o));
    }
}

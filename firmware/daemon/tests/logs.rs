//! The daemon's log (issue 18): no colour when standard error is not a terminal, one JSON object
//! per line with `--log-format json`, journald's priority prefixes when standard error is the
//! journal stream systemd names in `JOURNAL_STREAM`, and a fatal error said once. Seen through a
//! daemon that cannot start because its configuration is invalid: no root, no network.

use std::os::unix::fs::MetadataExt;
use std::process::{Command, Output};

/// Part of the one error the daemon stops on.
const CAUSE: &str = "customer gateway `nowhere` is not defined";

/// `isthmusd` on an empty store and an invalid `--config`, with `args` and `env`; its standard
/// error is a pipe unless `stderr` is given.
fn fail_to_start(args: &[&str], env: &[(&str, &str)], stderr: Option<std::fs::File>) -> Output {
    let dir = tempfile::tempdir().unwrap();
    let cfg = isthmus_testkit::config::Gateway::new("gw")
        .push("[[tunnel]]\nname = \"t\"\ncustomer_gateway = \"nowhere\"\npsk = \"a-long-psk-0123456789\"\n")
        .toml();
    let file = dir.path().join("gw.toml");
    std::fs::write(&file, cfg).unwrap();
    let mut c = Command::new(env!("CARGO_BIN_EXE_isthmusd"));
    c.arg("--config")
        .arg(&file)
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .args(["--no-net", "--no-tunnels", "--api", "127.0.0.1:0"])
        .args(args)
        .env_remove("ISTHMUS_LOG")
        .env_remove("ISTHMUS_LOG_FORMAT")
        .env_remove("JOURNAL_STREAM")
        .envs(env.iter().copied());
    if let Some(f) = stderr {
        c.stderr(f);
    }
    let o = c.output().unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", String::from_utf8_lossy(&o.stderr));
    o
}

fn text(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn a_fatal_error_is_logged_once_without_colour_when_stderr_is_a_pipe() {
    // `auto` and `text` alike; a JOURNAL_STREAM that is not this stderr changes nothing.
    for (args, env) in [
        (&[][..], &[][..]),
        (&["--log-format", "text"][..], &[][..]),
        (&[][..], &[("JOURNAL_STREAM", "1:1")][..]),
    ] {
        let err = text(&fail_to_start(args, env, None));
        assert!(!err.contains("\x1b["), "{args:?} {env:?}: colour on a pipe:\n{err}");
        assert_eq!(err.matches(CAUSE).count(), 1, "{args:?} {env:?}:\n{err}");
        assert!(err.lines().any(|l| l.contains("ERROR")), "{args:?} {env:?}:\n{err}");
        assert!(!err.contains("<3>"), "{args:?} {env:?}: journal prefixes:\n{err}");
    }
}

#[test]
fn json_lines_parse_and_carry_the_fatal_error_once() {
    let err = text(&fail_to_start(&["--log-format", "json"], &[], None));
    assert_eq!(err.matches(CAUSE).count(), 1, "{err}");
    let mut errors = 0;
    for l in err.lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value =
            serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"));
        for k in ["timestamp", "level", "target", "message"] {
            assert!(v.get(k).is_some(), "no `{k}`: {l}");
        }
        if v["level"] == "ERROR" {
            errors += 1;
            assert!(v["message"].as_str().unwrap().contains(CAUSE), "{l}");
        }
    }
    assert_eq!(errors, 1, "{err}");
    // The environment variable chooses the same.
    let env = text(&fail_to_start(&[], &[("ISTHMUS_LOG_FORMAT", "json")], None));
    assert!(env.lines().all(|l| l.starts_with('{')), "{env}");
}

#[test]
fn on_the_journal_stream_lines_carry_priorities_and_no_timestamps() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("journal");
    let f = std::fs::File::create(&path).unwrap();
    let m = f.metadata().unwrap();
    let stream = format!("{}:{}", m.dev(), m.ino());
    fail_to_start(&[], &[("JOURNAL_STREAM", &stream)], Some(f));
    let err = std::fs::read_to_string(&path).unwrap();
    assert_eq!(err.matches(CAUSE).count(), 1, "{err}");
    assert!(!err.contains("\x1b["), "{err}");
    // Every line of the multi-line error keeps its priority: journald splits at newlines.
    let error_lines: Vec<&str> = err.lines().filter(|l| l.starts_with("<3>")).collect();
    assert!(error_lines.len() >= 2, "{err}");
    assert!(error_lines.iter().any(|l| l.contains(CAUSE)), "{err}");
    for l in err.lines() {
        let rest = ["<3>", "<4>", "<6>", "<7>"]
            .iter()
            .find_map(|p| l.strip_prefix(p))
            .unwrap_or_else(|| panic!("no priority prefix: {l}"));
        // No timestamp (the journal has its own), no level word (the prefix is the level).
        assert!(!rest.starts_with(|c: char| c.is_ascii_digit()), "{l}");
        assert!(!rest.trim_start().starts_with("ERROR"), "{l}");
    }
}

#[test]
fn a_log_filter_that_does_not_parse_is_a_usage_error() {
    let o = Command::new(env!("CARGO_BIN_EXE_isthmusd"))
        .args(["--check", "/nonexistent"])
        .env("ISTHMUS_LOG", "isthmusd=loud")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("--log-level"), "{}", text(&o));
}

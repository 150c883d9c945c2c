//! Crash safety of the revision store: a child process (this test binary, re-executed) commits,
//! commit-confirms, confirms and rolls back in a loop and is killed with SIGKILL at random moments,
//! hundreds of times. After every kill the store must open and be consistent: the active revision
//! is the newest one, every revision reads back with its hash, nothing the child saw succeed is
//! lost, and an unconfirmed commit left behind by the kill is reverted by `poll`.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use isthmus_config::{Error, Store};

const CHILD_ENV: &str = "ISTHMUS_CONFIG_CRASH_CHILD";
const ROUNDS: usize = 200;
const PSK: &str = "crash-test-pre-shared-key-0123";

/// Not a test on its own: the body of the child process, which runs only when re-executed by
/// `killing_a_committing_process_never_breaks_the_store` (with the environment variable set).
#[test]
fn crash_child() {
    let Ok(dir) = std::env::var(CHILD_ENV) else { return };
    let s = Store::open(&dir).expect("child opens the store");
    // A kill between commit-confirm and confirm leaves a pending confirm; the parent reverts
    // those, but a child started on a store where the parent did not (it always does) confirms.
    if s.pending().unwrap().is_some() {
        let _ = s.confirm(SystemTime::now());
    }
    println!("READY");
    let mut i: usize = s.active().unwrap().unwrap_or(0) as usize;
    loop {
        i += 1;
        let text = common::gateway(PSK, i % 40) + &format!("# commit {i}\n");
        let now = SystemTime::now();
        let rev = match i % 6 {
            3 => {
                let c = s.commit_confirmed(&text, "child", "trial", Duration::from_secs(3600), now);
                let rev = c.expect("commit-confirmed").rev;
                s.confirm(SystemTime::now()).expect("confirm");
                rev
            }
            5 if i > 10 => {
                match s.rollback(fastrand::u64(1..=(i as u64 / 2)), "child", "back", now) {
                    Ok(c) => c.rev,
                    Err(Error::Unchanged(_)) | Err(Error::NoSuchRevision(_)) => continue,
                    Err(e) => panic!("rollback: {e}"),
                }
            }
            _ => s.commit(&text, "child", &format!("commit {i}"), now).expect("commit").rev,
        };
        println!("DONE {rev}");
    }
}

/// Kills and reaps the child even when the parent's assertions fail.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn killing_a_committing_process_never_breaks_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let started = Instant::now();
    let (mut acknowledged_total, mut beyond_ack, mut reverted) = (0u64, 0usize, 0usize);
    for round in 0..ROUNDS {
        let child = Command::new(&exe)
            .args(["--exact", "crash_child", "--nocapture", "--test-threads=1"])
            .env(CHILD_ENV, dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn the child");
        let mut guard = Guard(child);
        let mut out = BufReader::new(guard.0.stdout.take().unwrap());
        let mut line = String::new();
        for n in 0.. {
            assert!(n < 100, "round {round}: no READY from the child");
            line.clear();
            assert!(
                out.read_line(&mut line).unwrap() > 0,
                "round {round}: the child exited before READY"
            );
            // libtest prints "test crash_child ... " before the test's own output.
            if line.trim_end().ends_with("READY") {
                break;
            }
        }
        // Let the child get a few commits in first (0 keeps kills before the first commit), so
        // that progress does not depend on how fast this disk syncs; then kill at a random time.
        let parse = |l: &str| l.trim_end().strip_prefix("DONE ").and_then(|n| n.parse().ok());
        let mut acknowledged = 0u64;
        for _ in 0..fastrand::usize(0..=3) {
            line.clear();
            if out.read_line(&mut line).unwrap() == 0 {
                break;
            }
            acknowledged = parse(&line).unwrap_or(acknowledged);
        }
        std::thread::sleep(Duration::from_micros(fastrand::u64(0..15_000)));
        guard.0.kill().unwrap(); // SIGKILL
        guard.0.wait().unwrap();
        // Everything the child printed before it died: the last revision it saw committed.
        for l in out.lines() {
            // The last line may be cut short by the kill: only whole numbers count.
            let l = l.unwrap();
            if let Some(n) = parse(&l) {
                acknowledged = n;
            }
        }
        drop(guard);

        let s = Store::open(dir.path()).unwrap_or_else(|e| panic!("round {round}: reopen: {e}"));
        let deep = round % 50 == 49 || round == ROUNDS - 1;
        s.verify(deep).unwrap_or_else(|e| panic!("round {round}: {e}"));
        let revs = s.revisions().unwrap();
        let newest = revs.last().map_or(0, |r| r.number);
        let active = s.active().unwrap().unwrap_or(0);
        assert_eq!(active, newest, "round {round}: the active revision is not the newest");
        assert!(
            active >= acknowledged,
            "round {round}: revision {acknowledged} was acknowledged but is lost"
        );
        if active > acknowledged {
            beyond_ack += 1; // killed after the commit became durable, before it was reported
        }
        // A kill before the first commit became durable leaves an empty store: valid, since
        // nothing was acknowledged (checked above).
        if active > 0 {
            s.get(active)
                .unwrap()
                .config()
                .unwrap_or_else(|e| panic!("round {round}: active does not parse: {e}"));
        }
        // A kill between commit-confirm and confirm: the revert must work from here.
        if let Some(p) = s.pending().unwrap() {
            let r = s.poll(p.deadline + Duration::from_secs(1)).unwrap().expect("revert");
            assert_eq!(r.unconfirmed, p.rev);
            assert_eq!(s.get(r.rev).unwrap().text(), s.get(p.previous).unwrap().text());
            reverted += 1;
        }
        acknowledged_total = acknowledged_total.max(acknowledged);
    }
    let s = Store::open(dir.path()).unwrap();
    s.verify(true).unwrap();
    eprintln!(
        "{ROUNDS} kills in {:.1} s: {} revisions, {acknowledged_total} acknowledged; {beyond_ack} kills after a durable \
         commit but before its acknowledgement; {reverted} pending confirms reverted after the kill",
        started.elapsed().as_secs_f64(),
        s.revisions().unwrap().len(),
    );
    assert!(acknowledged_total > ROUNDS as u64, "the child committed too little to test anything");
}

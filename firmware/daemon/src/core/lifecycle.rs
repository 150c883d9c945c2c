//! The daemon's life under a service manager on a host: a reload re-reads the `--config` file
//! and commits it (SIGHUP, `systemctl reload`), and a stop tells the peers and takes out of the
//! kernel what the daemon put there (SIGTERM, `systemctl stop`).

use std::sync::atomic::Ordering;
use std::sync::{Mutex, MutexGuard, TryLockError};
use std::time::{Duration, Instant, SystemTime};

use isthmus_config::Config;
use isthmus_config::offline::Diagnostic;

use super::{Core, CoreError, Reply, lock};

/// How long a stop waits for the IKE driver to send its DELETEs: a stop must end well inside a
/// service manager's (or the testkit's) grace period before SIGKILL.
pub const PEER_BUDGET: Duration = Duration::from_secs(2);

/// How long a stop waits for an apply in progress before it leaves the kernel as it is.
const APPLY_WAIT: Duration = Duration::from_secs(1);

/// What a reload did; its `Display` is the log line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reload {
    /// The file was committed and applied as this revision.
    Committed { file: String, revision: u64 },
    /// The file is the active revision's text.
    Unchanged { file: String, revision: u64 },
    /// Nothing changed: the file could not be read, is invalid, or did not apply (then the
    /// previous revision is back in force).
    Refused { file: String, why: String },
}

impl std::fmt::Display for Reload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Reload::Committed { file, revision } => {
                write!(f, "reload: committed {file} as revision {revision}")
            }
            Reload::Unchanged { file, revision } => {
                write!(f, "reload: {file} is unchanged (revision {revision})")
            }
            Reload::Refused { file, why } => write!(f, "reload: refused {file}: {why}"),
        }
    }
}

/// How a stop leaves the world.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopMode {
    /// Delete the IKE SAs with the peers and remove everything the daemon installed in the
    /// kernel.
    Clean,
    /// Leave the peers untold and the kernel as it is (`--keep-state`: a restart that should
    /// not disturb traffic, or the image, where the kernel goes with the reboot).
    KeepState,
}

/// Waits at most `wait` for `m`.
fn lock_within<T>(m: &Mutex<T>, wait: Duration) -> Option<MutexGuard<'_, T>> {
    let deadline = Instant::now() + wait;
    loop {
        match m.try_lock() {
            Ok(g) => return Some(g),
            Err(TryLockError::Poisoned(p)) => return Some(p.into_inner()),
            Err(TryLockError::WouldBlock) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(TryLockError::WouldBlock) => return None,
        }
    }
}

impl Core {
    /// Re-reads the `--config` file and commits it as a new revision, through the path an API
    /// commit takes (validation, secrets, planning, apply, roll back on failure).
    pub fn reload(&self) -> Reload {
        let Some(path) = &self.opts.config_file else {
            let why = "no --config file was given".to_owned();
            return Reload::Refused { file: "(none)".into(), why };
        };
        let file = path.display().to_string();
        let refused = |why: String| Reload::Refused { file: file.clone(), why };
        let text = match isthmus_config::read_file(path) {
            Ok(t) => t,
            Err(e) => return refused(e.to_string()),
        };
        if let Ok(rev) = self.store.active_revision()
            && rev.text() == text
        {
            return Reload::Unchanged { file, revision: rev.info.number };
        }
        // Checked here first for the `FILE:LINE:COLUMN` form an operator's editor jumps to;
        // the commit checks again (incrementally, so it costs little).
        if let Err(e) = Config::check(&text) {
            let errors: Vec<String> =
                e.0.iter()
                    .filter(|i| i.severity == isthmus_config::Severity::Error)
                    .map(|i| Diagnostic::new(&file, i).to_string())
                    .collect();
            return refused(errors.join("; "));
        }
        let comment = format!("reload of {file}");
        match self.commit(&text, "reload", &comment, None, false, SystemTime::now()) {
            Ok(Reply::Commit(c)) => match c.revision {
                Some(revision) => Reload::Committed { file, revision },
                None => refused("nothing was committed".into()),
            },
            Ok(other) => refused(format!("unexpected reply {other:?}")),
            Err(CoreError::InvalidConfig { message, issues }) => {
                let list: Vec<String> =
                    issues.iter().map(|i| format!("{}: {}", i.path, i.message)).collect();
                refused(format!("{message}: {}", list.join("; ")))
            }
            Err(e) => refused(e.to_string()),
        }
    }

    /// Stops the health checks, the IKE driver and the dataplane. With [`StopMode::Clean`], first
    /// deletes every established IKE SA with its peer ([`PEER_BUDGET`] at most), and then
    /// removes from the kernel everything the daemon owns (its nftables table, routes, rules,
    /// addresses and the TUN device; never what others put there: see `isthmus_net`). Logs one
    /// line per step. Applies that come later (a peer's new address, a commit-confirm
    /// deadline) are refused, so nothing is put back.
    pub fn stop(&self, mode: StopMode) {
        let t0 = Instant::now();
        self.health.stop_all();
        let applying = lock_within(&self.applying, APPLY_WAIT);
        self.stopping.store(true, Ordering::SeqCst);
        let driver = {
            let mut p = lock(&self.planes);
            p.running.clear();
            p.driver.take()
        };
        if let Some(d) = driver {
            if mode == StopMode::Clean {
                let c = d.tunnels.close_all(PEER_BUDGET);
                tracing::info!(
                    "stop: told {} peers (DELETE for {} IKE SAs; {} tunnels removed{})",
                    c.peers,
                    c.ike_sas,
                    c.tunnels,
                    match c.unfinished {
                        0 => String::new(),
                        n => format!(", {n} not in time"),
                    }
                );
            }
            // Readers may still hold the dataplane: its workers stop now all the same.
            d.dataplane.halt();
            match std::sync::Arc::try_unwrap(d) {
                Ok(d) => d.tunnels.shutdown(),
                // A reader still holds it: the driver stops when the last one is done.
                Err(d) => drop(d),
            }
            tracing::info!("stop: dataplane and IKE driver stopped");
        }
        if mode == StopMode::Clean && self.opts.manage_net {
            match applying {
                Some(_) => match lock(&self.net).apply(isthmus_net::DesiredState::default()) {
                    Ok(lines) => tracing::info!("stop: removed {} kernel objects", lines.len()),
                    Err(e) => tracing::warn!("stop: removing the kernel state: {e}"),
                },
                None => tracing::warn!(
                    "stop: an apply was still running after {} ms: the kernel is left as it is",
                    APPLY_WAIT.as_millis()
                ),
            }
        }
        tracing::info!("stop: done in {} ms", t0.elapsed().as_millis());
    }
}

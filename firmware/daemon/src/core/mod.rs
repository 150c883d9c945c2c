//! The daemon's core: the configuration store and the apply pipeline (commit → plan → apply to
//! the kernel, the dataplane and the IKE driver → report, with rollback to the last good
//! revision when an apply fails), plus the read side the API serves.
//!
//! Planes are driven from blocking code (netlink, the driver's command channel), so API handlers
//! call into the core through `spawn_blocking`; the core's locks are plain mutexes held briefly.

mod apply;
pub mod error;
mod lifecycle;
pub mod plan;
mod plugins;
mod query;
pub mod resolve;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use isthmus_api::{self as api, Action, EventKind, Severity};
use isthmus_config::{Config, Store};

pub use apply::{ApplyError, ApplyStage, start_planes};
pub use error::CoreError;
use error::store_failure;
pub use lifecycle::{PEER_BUDGET, Reload, StopMode};

use crate::obs::alarms::Alarms;
use crate::obs::events::EventBus;
use crate::obs::monitor::Monitor;

/// How the daemon was started.
#[derive(Clone, Debug)]
pub struct Options {
    /// Where the store, the API certificate and plugins live.
    pub data_dir: PathBuf,
    /// Configuration committed as the first revision when the store is empty.
    pub config_file: Option<PathBuf>,
    /// Bring the kernel (links, addresses, routes, firewall) to the configuration. Off only for
    /// tests of the API alone.
    pub manage_net: bool,
    /// Start the dataplane and the IKE driver.
    pub run_tunnels: bool,
}

pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// What runs, and with which configuration. Locked only briefly (never across netlink or driver
/// calls), so status reads do not wait for an apply.
#[derive(Default)]
struct Planes {
    driver: Option<Arc<Driver>>,
    /// Fingerprints of the tunnels the driver runs.
    running: BTreeMap<String, String>,
}

/// The IKE driver and the dataplane it installs SAs into.
pub struct Driver {
    /// The driver's handle.
    pub tunnels: isthmus_tunnels::Tunnels,
    /// The dataplane (counters, SAs).
    pub dataplane: Arc<isthmus_dataplane::Dataplane>,
    wan: IpAddr,
}

/// The daemon's state.
pub struct Core {
    opts: Options,
    started: Instant,
    store: Store,
    events: Arc<EventBus>,
    tokens: RwLock<Vec<TokenEntry>>,
    applied: RwLock<Option<(u64, Arc<Config>)>>,
    planes: Mutex<Planes>,
    /// The kernel side; held for the whole of an apply, which makes applies run one at a time.
    net: Mutex<plan::NetPlane>,
    /// Held across a whole apply (planes and the applied revision), so that a re-apply for a
    /// peer's new address never interleaves with a commit.
    applying: Mutex<()>,
    /// Set by [`Core::stop`]: no apply runs after it (none may put back what a stop removed).
    stopping: AtomicBool,
    /// The last configuration text checked, so that an edit of it is parsed incrementally.
    checked: Mutex<Option<Arc<isthmus_config::Checked>>>,
    /// Where the time of the last commit went.
    stages: Mutex<plan::Stages>,
    /// Per-tunnel counters that survive rekeys, and liveness readings.
    pub monitor: Monitor,
    /// Alarm evaluation and delivery.
    pub alarms: Arc<Alarms>,
    /// Per-tunnel health checks (ICMP probes through the tunnels).
    pub health: crate::obs::health::Health,
    /// Signed policy plugin packages, on their own sled database under `<data_dir>/plugins`.
    plugins: isthmus_policy::PluginStore,
    /// The same tree, read for a stored package's signer.
    plugin_tree: sled::Tree,
    /// Runs the policy plugins and publishes their tables (see [`crate::policy`]).
    pub policy: Arc<crate::policy::Policy>,
}

pub(super) fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

pub(super) fn message(text: impl Into<String>) -> Reply {
    Reply::Message(api::Message { message: text.into() })
}

/// An API token as the daemon keeps it: a name for audit, a role, and the hash (never the
/// token).
#[derive(Clone)]
pub struct TokenEntry {
    /// Who holds it, e.g. `ops` or `prometheus`. Recorded as the author of commits.
    pub name: String,
    /// What it may do.
    pub role: api::Role,
    /// The token's hash as [`isthmus_config::hash_token`] writes it.
    pub hash: String,
}

impl std::fmt::Debug for TokenEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenEntry").field("name", &self.name).field("role", &self.role).finish()
    }
}

/// What an action returns; the HTTP layer sends it as JSON.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// The result of validating a document.
    Validate(api::ValidateResponse),
    /// A document's differences from the active revision.
    Diff(api::DiffResponse),
    /// The result of a commit or a rollback.
    Commit(api::CommitResponse),
    /// What was done, for an action with nothing more to return.
    Message(api::Message),
    /// An acknowledged alarm.
    Alarm(api::Alarm),
}

impl Core {
    /// Opens the store (committing `config_file` as revision 1 if it is empty), reverts an
    /// expired commit-confirm, and applies the active revision.
    pub fn start(opts: Options) -> anyhow::Result<Arc<Core>> {
        std::fs::create_dir_all(&opts.data_dir)?;
        let store = Store::open(opts.data_dir.join("config"))?;
        let now = SystemTime::now();
        if let Some(r) = store.poll(now)? {
            tracing::warn!(
                unconfirmed = r.unconfirmed,
                restored = r.restored,
                "an unconfirmed commit expired while the daemon was down; reverted"
            );
        }
        // The `--config` file: revision 1 of an empty store; later, the operator's fix when the
        // active revision cannot be applied ([`Core::apply_at_start`]).
        let mut file = None;
        if store.active()?.is_none() {
            let path = opts.config_file.as_ref().ok_or_else(|| {
                anyhow::anyhow!("the store is empty and no --config file was given")
            })?;
            let text = isthmus_config::read_file(path)?;
            let invalid = |issues| {
                let e = isthmus_config::Error::Invalid(issues);
                anyhow::anyhow!("{}: {e}", path.display())
            };
            let checked = Config::check(&text).map_err(invalid)?;
            // The same refusal as a commit through the API: a `{ file = ... }` or `{ env = ... }`
            // secret that cannot be read is named by its field and source, never applied as if
            // it were absent (a token that silently vanished answered every request 401).
            let secrets = checked.config.check_secrets();
            if !secrets.is_empty() {
                return Err(invalid(isthmus_config::Errors(secrets)));
            }
            let c = store.commit_checked(
                &checked,
                "bootstrap",
                &format!("initial configuration from {}", path.display()),
                now,
            )?;
            for w in &c.warnings {
                tracing::warn!("{w}");
            }
        } else if let Some(path) = &opts.config_file
            && let Ok(text) = std::fs::read_to_string(path)
        {
            file = Some((path.clone(), text));
        }
        let plugin_tree = sled::open(opts.data_dir.join("plugins"))
            .and_then(|db| db.open_tree("plugins"))
            .map_err(|e| anyhow::anyhow!("opening the plugin store: {e}"))?;
        let events = Arc::new(EventBus::default());
        // Beside the configuration store, on its own sled database: an alarm record that does
        // not read never stands in the way of the configuration.
        let alarms = Arc::new(Alarms::persistent(&opts.data_dir.join("alarms")));
        let policy = crate::policy::Policy::start(
            isthmus_policy::PluginStore::new(plugin_tree.clone()),
            events.clone(),
            alarms.clone(),
        )?;
        let core = Arc::new(Core {
            opts,
            started: Instant::now(),
            store,
            events,
            tokens: RwLock::new(Vec::new()),
            applied: RwLock::new(None),
            planes: Mutex::new(Planes::default()),
            net: Mutex::new(plan::NetPlane::default()),
            applying: Mutex::new(()),
            stopping: AtomicBool::new(false),
            checked: Mutex::new(None),
            stages: Mutex::new(plan::Stages::default()),
            monitor: Monitor::default(),
            alarms,
            health: crate::obs::health::Health::default(),
            plugins: isthmus_policy::PluginStore::new(plugin_tree.clone()),
            plugin_tree,
            policy,
        });
        core.apply_at_start(file)?;
        Ok(core)
    }

    /// Where the management API listens: the applied configuration's `[gateway.management]`,
    /// or the active revision's when none could be applied (the operator's way in to fix it).
    pub fn management(&self) -> Option<isthmus_config::Management> {
        match self.applied() {
            Some((_, c)) => c.gateway.management.clone(),
            None => self.store.active_revision().ok()?.config().ok()?.gateway.management,
        }
    }

    /// Where the store, the API certificate, plugins and the upgrade record live.
    pub fn data_dir(&self) -> &std::path::Path {
        &self.opts.data_dir
    }

    /// The event bus.
    pub fn events(&self) -> &Arc<EventBus> {
        &self.events
    }

    /// The tokens the API accepts now.
    pub fn tokens(&self) -> Vec<TokenEntry> {
        self.tokens.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The applied configuration and its revision.
    pub fn applied(&self) -> Option<(u64, Arc<Config>)> {
        self.applied.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// What the observers read now: the applied configuration, the tunnels' statuses and the
    /// dataplane's counters.
    pub fn readings(&self) -> crate::obs::Readings {
        let applied = self.applied();
        let (tunnels, dataplane) = self
            .with_driver(|d| {
                let tunnels = d.tunnels.status().into_iter().map(|s| (s.name.clone(), s)).collect();
                (tunnels, Some((d.dataplane.clone(), d.dataplane.counters())))
            })
            .unwrap_or_default();
        crate::obs::Readings { applied, tunnels, dataplane }
    }

    /// Runs `f` with the driver, if tunnels run (without waiting for an apply in progress).
    pub fn with_driver<R>(&self, f: impl FnOnce(&Driver) -> R) -> Option<R> {
        let driver = lock(&self.planes).driver.clone();
        driver.as_deref().map(f)
    }

    /// Where the time of the last commit went (parse, store, kernel, tunnels, ...).
    pub fn last_commit_stages(&self) -> plan::Stages {
        lock(&self.stages).clone()
    }

    /// The one way in for every change: carries out `a` for the caller `who` on the calling
    /// thread (it blocks on netlink and the IKE driver).
    pub fn handle(&self, a: Action, who: &str) -> Result<Reply, CoreError> {
        let now = SystemTime::now();
        match a {
            Action::ConfigValidate { text } => Ok(Reply::Validate(self.validate(&text))),
            Action::ConfigDiff { text } => {
                let diff = self.diff_against_active(&text)?;
                Ok(Reply::Diff(api::DiffResponse { diff }))
            }
            Action::ConfigCommit { text, comment, confirm_secs, dry_run } => {
                self.commit(&text, who, &comment, confirm_secs, dry_run, now)
            }
            Action::ConfigConfirm {} => {
                let rev = self.store.confirm(now).map_err(store_failure)?;
                self.events.emit(
                    EventKind::ConfigConfirmed,
                    "config",
                    Severity::Info,
                    format!("revision {rev} confirmed by {who}"),
                );
                Ok(message(format!("revision {rev} confirmed")))
            }
            Action::ConfigRollback { revision } => {
                let previous = self.store.last_applied().map_err(store_failure)?;
                let c = self
                    .store
                    .rollback(revision, who, &format!("rollback to revision {revision}"), now)
                    .map_err(store_failure)?;
                let plan = self.apply_or_roll_back(c.rev, previous, who, None)?;
                Ok(Reply::Commit(api::CommitResponse {
                    revision: Some(c.rev),
                    plan,
                    warnings: vec![],
                }))
            }
            Action::TunnelInitiate { name } => {
                self.tunnel_cmd(&name, |t| t.initiate(&name), "initiating")
            }
            Action::TunnelTerminate { name } => {
                self.tunnel_cmd(&name, |t| t.terminate(&name), "terminating")
            }
            Action::TunnelRekey { name, ike } => {
                if ike {
                    self.tunnel_cmd(&name, |t| t.rekey_ike(&name), "rekeying the IKE SA of")
                } else {
                    let children: Vec<String> = self
                        .with_driver(|d| {
                            d.tunnels
                                .tunnel(&name)
                                .map(|s| s.children.iter().map(|c| c.name.clone()).collect())
                        })
                        .flatten()
                        .unwrap_or_default();
                    if children.is_empty() {
                        return Err(CoreError::conflict(format!(
                            "tunnel `{name}` has no CHILD SA to rekey (is it up?)"
                        )));
                    }
                    for c in &children {
                        self.tunnel_cmd(&name, |t| t.rekey_child(&name, c), "rekeying")?;
                    }
                    Ok(message(format!(
                        "rekeying {} CHILD SA(s) of tunnel `{name}`",
                        children.len()
                    )))
                }
            }
            Action::PluginActivate { digest } => self.plugin_activate(&digest, who),
            Action::PluginRollback { name } => self.plugin_rollback(&name, who),
            Action::PluginRemove { digest } => self.plugin_remove(&digest, who),
            Action::AlarmAcknowledge { name, subject } => {
                let (a, first) =
                    self.alarms.acknowledge(&name, &subject, who).map_err(CoreError::not_found)?;
                if first {
                    self.events.emit(
                        EventKind::AlarmAcknowledged,
                        &subject,
                        Severity::Info,
                        format!("alarm `{name}` about `{subject}` acknowledged by {who}"),
                    );
                }
                Ok(Reply::Alarm(a))
            }
        }
    }

    fn tunnel_cmd(
        &self,
        name: &str,
        f: impl FnOnce(&isthmus_tunnels::Tunnels) -> Result<(), isthmus_tunnels::Error>,
        what: &str,
    ) -> Result<Reply, CoreError> {
        if self.applied().is_some_and(|(_, c)| c.tunnel(name).is_none()) {
            return Err(CoreError::not_found(format!("no tunnel named `{name}` is configured")));
        }
        match self.with_driver(|d| f(&d.tunnels)) {
            None => Err(CoreError::conflict("tunnels are not running on this daemon")),
            Some(Err(isthmus_tunnels::Error::UnknownTunnel(n))) => {
                Err(CoreError::not_found(format!("tunnel `{n}` is configured but disabled")))
            }
            Some(Err(e)) => Err(CoreError::conflict(e.to_string())),
            Some(Ok(())) => Ok(message(format!("{what} tunnel `{name}`"))),
        }
    }

    /// Stops the driver and the dataplane, leaving the peers untold and the kernel as it is
    /// ([`Core::stop`] with [`StopMode::KeepState`]).
    pub fn shutdown(&self) {
        self.stop(StopMode::KeepState);
    }
}

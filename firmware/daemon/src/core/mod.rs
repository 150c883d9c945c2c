//! The daemon's core: the configuration store and the apply pipeline (commit → plan → apply to
//! the kernel, the dataplane and the IKE driver → report, with rollback to the last good
//! revision when an apply fails), plus the read side the API serves.
//!
//! Planes are driven from blocking code (netlink, the driver's command channel), so API handlers
//! call into the core through `spawn_blocking`; the core's locks are plain mutexes held briefly.

pub mod error;
pub mod plan;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use isthmus_api::{self as api, Action, EventKind, Severity};
use isthmus_config::{Config, Store};

pub use error::CoreError;

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

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
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

fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

fn store_failure(e: isthmus_config::Error) -> CoreError {
    use isthmus_config::Error as E;
    match e {
        E::Invalid(errs) => CoreError::InvalidConfig {
            message: format!("the configuration has {} error(s)", errs.issues().len()),
            issues: issues(errs.issues()),
        },
        E::NoSuchRevision(n) => CoreError::not_found(format!("revision {n} does not exist")),
        E::Empty => CoreError::not_found("no configuration has been committed yet"),
        e @ (E::Unchanged(_)
        | E::ConfirmPending { .. }
        | E::NothingToConfirm
        | E::ConfirmExpired { .. }
        | E::NothingToRevertTo) => CoreError::conflict(e.to_string()),
        e => CoreError::internal(e.to_string()),
    }
}

/// Policy library errors by kind: a refused package (with the library's message)
/// (unsigned, tampered, untrusted, wrong world), an unknown plugin, a store conflict.
fn plugin_failure(e: isthmus_policy::PolicyError) -> CoreError {
    use isthmus_policy::PolicyError as E;
    match e {
        e @ E::NoSuchPlugin(_) => CoreError::not_found(e.to_string()),
        e @ (E::NoSuchVersion { .. }
        | E::NoPreviousVersion(_)
        | E::InUse { .. }
        | E::HookMismatch { .. }) => CoreError::conflict(e.to_string()),
        e @ E::Backend(_) => CoreError::internal(e.to_string()),
        e @ (E::Engine(_) | E::Fault { .. } | E::Quarantined { .. }) => {
            CoreError::internal(e.to_string())
        }
        e => CoreError::PluginRefused(e.to_string()),
    }
}

fn issues(v: &[isthmus_config::Issue]) -> Vec<api::Issue> {
    v.iter()
        .map(|i| api::Issue {
            path: i.path.clone(),
            message: match i.line {
                Some(l) => format!("{} (line {l})", i.message),
                None => i.message.clone(),
            },
        })
        .collect()
}

/// What planning says of a configuration that validated ([`plan::check`]), as a validation
/// error: validation and apply agree on what can be planned because both run the planner.
fn plan_issue(cfg: &Config) -> Option<api::Issue> {
    plan::check(cfg).err().map(|message| api::Issue { path: String::new(), message })
}

/// A `[[plugin]]` binding's pinned build.
struct Pin {
    binding: String,
    /// In the store's form ([`crate::policy::pinned_digest`]).
    digest: String,
    enabled: bool,
    /// In the applied configuration (else in the one a pending commit-confirm would restore).
    applied: bool,
}

fn message(text: impl Into<String>) -> Reply {
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
        let alarms = Arc::new(Alarms::default());
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

    /// Applies the active revision at start. A revision that cannot be applied never stops the
    /// daemon (inside the image it is PID 1, and the API is the operator's way in): the
    /// `apply-failed` alarm names the failure, and the daemon runs, in this order of choice,
    /// the `--config` file when it differs from that revision (the operator's fix, committed
    /// as a new revision), the last revision that applied in full (rolled back to), or no
    /// configuration at all, with the management API up and the failed revision's API tokens.
    /// While the active revision applies, a `--config` file that differs from it is not
    /// applied (the store is the truth after the first boot); a log line says how to commit it.
    fn apply_at_start(&self, file: Option<(PathBuf, String)>) -> anyhow::Result<()> {
        let rev = self.store.active_revision()?;
        let n = rev.info.number;
        let file = file.filter(|(_, text)| text != rev.text());
        let parsed = rev.config();
        let failure = match parsed.as_ref().map_err(ToString::to_string).cloned() {
            Ok(cfg) => match self.apply(n, cfg) {
                Ok(_) => {
                    if let Some((path, _)) = &file {
                        tracing::warn!(
                            "{} differs from revision {n}, which is in force: the file is a pending change, not applied; to apply it: isthmus config apply {}",
                            path.display(),
                            path.display()
                        );
                    }
                    return Ok(());
                }
                Err(e) => e,
            },
            Err(e) => e,
        };
        let mut msg = format!("applying revision {n} failed: {failure}");
        tracing::error!("{msg}");
        self.events.emit(EventKind::ApplyFailed, "config", Severity::Critical, msg.clone());
        self.alarms.apply_failed(&msg);
        // 1. The operator's corrected file.
        if let Some((path, text)) = file {
            let shown = path.display();
            tracing::warn!("{shown} differs from revision {n}, which failed: applying the file");
            let comment = format!("{shown} at start (revision {n} failed to apply)");
            match self.store.commit(&text, "isthmusd", &comment, SystemTime::now()) {
                Ok(c) => match self.apply_stored(c.rev) {
                    Ok(()) => {
                        msg.push_str(&format!("; applied {shown} as revision {}", c.rev));
                        self.alarms.apply_failed(&msg);
                        tracing::warn!("{msg}");
                        return Ok(());
                    }
                    Err(e) => msg.push_str(&format!(
                        "; {shown}, committed as revision {}, failed too: {e}",
                        c.rev
                    )),
                },
                Err(e) => msg.push_str(&format!("; {shown} was not applied: {e}")),
            }
        }
        // 2. The newest other revision that applied (the failed one may have applied before
        // the kernel changed under it).
        let active = self.store.active()?;
        let applied = self.store.applied_revisions()?;
        if let Some(good) = applied.iter().rev().copied().find(|g| *g != n && Some(*g) != active) {
            let why = format!("automatic: revision {n} failed to apply at start");
            match self.store.rollback(good, "isthmusd", &why, SystemTime::now()) {
                Ok(c) => match self.apply_stored(c.rev) {
                    Ok(()) => {
                        msg.push_str(&format!(
                            "; rolled back to revision {good} (now revision {})",
                            c.rev
                        ));
                        self.alarms.apply_failed(&msg);
                        tracing::warn!("{msg}");
                        return Ok(());
                    }
                    Err(e) => msg.push_str(&format!("; revision {good} failed too: {e}")),
                },
                Err(e) => msg.push_str(&format!("; rolling back to revision {good} failed: {e}")),
            }
        }
        // 3. Nothing applies: the API stays reachable with the tokens the operator configured.
        if let Ok(cfg) = &parsed {
            self.install_access(cfg);
        }
        msg.push_str(
            "; no configuration is in force: commit a corrected one through the API (isthmus config apply FILE)",
        );
        self.alarms.apply_failed(&msg);
        tracing::error!("{msg}");
        Ok(())
    }

    /// Applies stored revision `rev`.
    fn apply_stored(&self, rev: u64) -> Result<(), String> {
        let cfg = self.store.get(rev).and_then(|r| r.config()).map_err(|e| e.to_string())?;
        self.apply(rev, cfg).map(|_| ())
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

    /// Compares the kernel with the applied configuration and repairs what differs (an owned
    /// route deleted by hand, a link set down); each difference is reported as a `drift` event.
    /// Returns the differences found.
    pub fn repair_drift(&self) -> Vec<String> {
        let found = lock(&self.net).repair_drift();
        match found {
            Ok(lines) => {
                if !lines.is_empty() {
                    self.events.emit(
                        EventKind::Drift,
                        "kernel",
                        Severity::Warning,
                        format!("the kernel had drifted, repaired: {}", lines.join("; ")),
                    );
                }
                lines
            }
            Err(e) => {
                self.events.emit(EventKind::Drift, "kernel", Severity::Critical, e.clone());
                vec![e]
            }
        }
    }

    /// Brings every plane to `cfg`. Returns the plan lines (what changed).
    ///
    /// Applies run one at a time (the net lock); the planes lock is taken only to read or
    /// record what runs, never across netlink or driver calls. Only what changed is touched:
    /// the kernel plan is the difference from the last applied state, and tunnels whose
    /// settings did not change keep running.
    fn apply(&self, rev: u64, cfg: Config) -> Result<Vec<String>, String> {
        let mut st = plan::Stages::start();
        let r = self.apply_planes(&cfg, &mut st);
        *lock(&self.stages) = st;
        let lines = r?;
        self.apply_rest(rev, cfg);
        if let Err(e) = self.store.mark_applied(rev) {
            tracing::warn!("recording revision {rev} as applied: {e}");
        }
        Ok(lines)
    }

    fn apply_planes(&self, cfg: &Config, st: &mut plan::Stages) -> Result<Vec<String>, String> {
        let mut lines = Vec::new();
        let mut net = lock(&self.net);
        let old = self.applied().map(|(_, c)| c);
        let have_driver = lock(&self.planes).driver.is_some();
        // 1. Kernel: links and addresses first, so the WAN address exists for the sockets.
        if self.opts.manage_net {
            // A gateway forwards between its LANs and its tunnels (the firewall decides what).
            for f in ["/proc/sys/net/ipv4/ip_forward", "/proc/sys/net/ipv6/conf/all/forwarding"] {
                if std::fs::read_to_string(f).is_ok_and(|v| v.trim() != "1") {
                    std::fs::write(f, "1")
                        .map_err(|e| format!("enabling forwarding ({f}): {e}"))?;
                    lines.push(format!("kernel: {f} = 1"));
                }
            }
            let tun = plan::TunnelDevice::of(self.opts.run_tunnels, have_driver);
            let desired = plan::desired_state(cfg, tun);
            st.mark("desired state");
            lines.extend(net.apply(desired)?);
            st.mark("kernel");
        }
        // 2. Policy plugins compile the security groups and ACLs (the SPD follows the tunnels).
        lines.extend(self.policy.refresh(cfg, &crate::policy::trusted_keys(cfg)));
        st.mark("policy");
        // 3. The dataplane and the IKE driver (restarted only when the WAN address changes).
        if self.opts.run_tunnels {
            let wan = cfg.gateway.wan.address.addr;
            let moved = {
                let mut p = lock(&self.planes);
                if p.driver.as_ref().is_some_and(|d| d.wan != wan) {
                    p.running.clear();
                    p.driver.take()
                } else {
                    None
                }
            };
            if let Some(d) = moved {
                match Arc::try_unwrap(d) {
                    Ok(d) => d.tunnels.shutdown(),
                    // A reader still holds it: the driver stops when the reader is done.
                    Err(d) => drop(d),
                }
                lines.push(format!("dataplane: restart on the new WAN address {wan}"));
            }
            if lock(&self.planes).driver.is_none() {
                let (tunnels, dataplane) = self
                    .policy
                    .start_tunnels(
                        isthmus_tunnels::DriverConfig::default(),
                        plan::dataplane_config(cfg),
                        isthmus_tunnels::EspOptions::default(),
                    )
                    .map_err(|e| format!("starting the dataplane: {e}"))?;
                lines.push(format!("dataplane: started on {wan}, TUN {}", plan::TUN_NAME));
                crate::obs::monitor::forward_tunnel_events(
                    &tunnels,
                    self.events.clone(),
                    self.alarms.clone(),
                );
                lock(&self.planes).driver = Some(Arc::new(Driver { tunnels, dataplane, wan }));
                st.mark("dataplane");
                // Now that the TUN device exists, route protected traffic into it.
                if net.rec.is_some() {
                    let desired = plan::desired_state(cfg, plan::TunnelDevice::Routed);
                    let more = net
                        .apply(desired)
                        .map_err(|e| format!("routing into the tunnel device: {e}"))?;
                    lines.extend(more);
                    st.mark("kernel");
                }
            }
            // 4. Tunnels: remove the ones gone or changed, add the new and changed ones. A
            // tunnel whose settings are the same as in the applied configuration is not even
            // fingerprinted.
            let (driver, running) = {
                let p = lock(&self.planes);
                (p.driver.clone().expect("started above"), p.running.clone())
            };
            let same = old.as_ref().map(|o| plan::unchanged_tunnels(o, cfg)).unwrap_or_default();
            let mut fps: BTreeMap<String, String> = BTreeMap::new();
            for t in cfg.tunnels.iter().filter(|t| t.enabled) {
                let fp = match running.get(&t.name) {
                    Some(fp) if same.contains(t.name.as_str()) => fp.clone(),
                    _ => plan::tunnel_fingerprint(cfg, &t.name),
                };
                fps.insert(t.name.clone(), fp);
            }
            // One SPD compilation for all the tunnel changes below, when `batch` drops.
            let batch = self.policy.batch();
            let stale: Vec<String> = running
                .iter()
                .filter(|(n, fp)| fps.get(*n) != Some(*fp))
                .map(|(n, _)| n.clone())
                .collect();
            for name in stale {
                let _ = driver.tunnels.terminate(&name);
                let r = driver.tunnels.remove_tunnel(&name);
                lock(&self.planes).running.remove(&name);
                r.map_err(|e| e.to_string())?;
                lines.push(format!("tunnel {name}: removed"));
            }
            let running = lock(&self.planes).running.clone();
            for t in cfg.tunnels.iter().filter(|t| t.enabled && !running.contains_key(&t.name)) {
                let ike = plan::ike_tunnel(cfg, t).map_err(|e| e.to_string())?;
                driver.tunnels.add_tunnel(ike).map_err(|e| e.to_string())?;
                lines.push(format!("tunnel {}: added", t.name));
                lock(&self.planes).running.insert(t.name.clone(), fps[&t.name].clone());
            }
            drop(batch);
            st.mark("tunnels");
        }
        Ok(lines)
    }

    /// The planes are in place: tokens, alarms, and the applied revision.
    fn apply_rest(&self, rev: u64, cfg: Config) {
        self.install_access(&cfg);
        if self.opts.run_tunnels {
            self.health.configure(&cfg, self.events.clone());
        }
        *self.applied.write().unwrap_or_else(|p| p.into_inner()) = Some((rev, Arc::new(cfg)));
        self.events.emit(
            EventKind::ConfigApplied,
            "config",
            Severity::Info,
            format!("revision {rev} applied"),
        );
    }

    /// Who may use the API and who is told of alarms, from `cfg` (also when nothing else of it
    /// could be applied: the operator must be able to reach the API to fix it).
    fn install_access(&self, cfg: &Config) {
        // 5. Who may use the API.
        let tokens = cfg
            .api_tokens
            .iter()
            .filter_map(|t| {
                let hash = t.hash()?;
                let role = match t.role {
                    isthmus_config::Role::Admin => api::Role::Admin,
                    isthmus_config::Role::ReadOnly => api::Role::ReadOnly,
                };
                Some(TokenEntry { name: t.name.clone(), role, hash })
            })
            .collect();
        *self.tokens.write().unwrap_or_else(|p| p.into_inner()) = tokens;
        self.alarms.configure(cfg);
    }

    /// Applies revision `rev`; if that fails, rolls the store back to `previous` and applies
    /// it again, and says both what failed and what is in force.
    fn apply_or_roll_back(
        &self,
        rev: u64,
        previous: Option<u64>,
        who: &str,
        parsed: Option<Config>,
    ) -> Result<Vec<String>, CoreError> {
        let cfg = match parsed {
            Some(c) => c,
            None => self.store.get(rev).and_then(|r| r.config()).map_err(store_failure)?,
        };
        match self.apply(rev, cfg) {
            Ok(lines) => {
                self.alarms.applied();
                Ok(lines)
            }
            Err(e) => {
                let mut msg = format!("applying revision {rev} failed: {e}");
                if let Some(prev) = previous {
                    match self.store.rollback(
                        prev,
                        who,
                        &format!("automatic: revision {rev} failed to apply"),
                        SystemTime::now(),
                    ) {
                        Ok(c) => {
                            let restored = self.store.get(c.rev).and_then(|r| r.config());
                            match restored
                                .map_err(|e| e.to_string())
                                .and_then(|cfg| self.apply(c.rev, cfg))
                            {
                                Ok(_) => msg.push_str(&format!(
                                    "; rolled back to revision {prev} (now revision {})",
                                    c.rev
                                )),
                                Err(e2) => msg.push_str(&format!(
                                    "; rolling back to revision {prev} failed too: {e2}"
                                )),
                            }
                        }
                        Err(e2) => {
                            msg.push_str(&format!("; rolling back to revision {prev} failed: {e2}"))
                        }
                    }
                }
                self.events.emit(EventKind::ApplyFailed, "config", Severity::Critical, msg.clone());
                Err(CoreError::ApplyFailed(msg))
            }
        }
    }

    /// Reverts an unconfirmed commit whose time is up (called every second); every
    /// [`plan::DRIFT_EVERY`], also repairs drift ([`Core::repair_drift`]) unless an apply runs.
    pub fn poll_confirm(&self) {
        match self.store.poll(SystemTime::now()) {
            Ok(Some(r)) => {
                let msg = format!(
                    "revision {} was not confirmed in time: reverted to the content of revision {} (now revision {})",
                    r.unconfirmed, r.restored, r.rev
                );
                self.events.emit(
                    EventKind::ConfirmTimeout,
                    "config",
                    Severity::Warning,
                    msg.clone(),
                );
                self.alarms.confirm_reverted(&msg);
                if let Err(e) = self.apply_or_roll_back(r.rev, None, "isthmusd", None) {
                    tracing::error!("{e}");
                }
            }
            Ok(None) => {}
            Err(e) => tracing::error!("polling the commit-confirm deadline: {e}"),
        }
        let due = self.net.try_lock().is_ok_and(|n| n.drift_check_due());
        if due {
            self.repair_drift();
        }
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
                let mut st = plan::Stages::start();
                let previous_text = lock(&self.checked).clone();
                let checked = match &previous_text {
                    Some(p) => Config::check_incremental(&text, p),
                    None => Config::check(&text),
                }
                .map_err(|e| store_failure(isthmus_config::Error::Invalid(e)))?;
                let checked = Arc::new(checked);
                *lock(&self.checked) = Some(checked.clone());
                st.mark("parse+validate");
                let secrets = checked.config.check_secrets();
                if !secrets.is_empty() {
                    return Err(CoreError::InvalidConfig {
                        message: "secrets cannot be read".into(),
                        issues: issues(&secrets),
                    });
                }
                if let Some(i) = plan_issue(&checked.config) {
                    return Err(CoreError::InvalidConfig {
                        message: "the configuration cannot be planned".into(),
                        issues: vec![i],
                    });
                }
                if dry_run {
                    let plan = self.dry_run(&checked.config)?;
                    return Ok(Reply::Commit(api::CommitResponse {
                        revision: None,
                        plan,
                        warnings: issues(&checked.warnings),
                    }));
                }
                // A failed apply goes back to the last revision that applied (after a failed
                // start that is not the active one), or nowhere when none ever did.
                let previous = self.store.last_applied().map_err(store_failure)?;
                let c = match confirm_secs {
                    Some(s) => self.store.commit_confirmed_checked(
                        &checked,
                        who,
                        &comment,
                        Duration::from_secs(s),
                        now,
                    ),
                    None => self.store.commit_checked(&checked, who, &comment, now),
                }
                .map_err(store_failure)?;
                st.mark("store");
                let plan =
                    self.apply_or_roll_back(c.rev, previous, who, Some(checked.config.clone()));
                let mut applied = lock(&self.stages).clone();
                applied.mark("rest");
                st.extend(&applied);
                *lock(&self.stages) = st;
                let plan = plan?;
                Ok(Reply::Commit(api::CommitResponse {
                    revision: Some(c.rev),
                    plan,
                    warnings: issues(&c.warnings),
                }))
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
            Action::PluginActivate { digest } => {
                let (name, version) = self.plugin_by_digest(&digest)?;
                self.plugins.activate(&name, &digest).map_err(plugin_failure)?;
                let mut m = format!("activated plugin `{name}` {version} ({digest})");
                self.policy_refresh(&mut m);
                self.events.emit(
                    EventKind::PluginActivated,
                    &name,
                    Severity::Info,
                    format!("{m} by {who}"),
                );
                Ok(message(m))
            }
            Action::PluginRollback { name } => {
                let digest = self.plugins.rollback(&name).map_err(plugin_failure)?;
                let mut m = format!("plugin `{name}` rolled back to {digest}");
                self.policy_refresh(&mut m);
                self.events.emit(
                    EventKind::PluginRolledBack,
                    &name,
                    Severity::Info,
                    format!("{m} by {who}"),
                );
                Ok(message(m))
            }
            Action::PluginRemove { digest } => {
                let (name, version) = self.plugin_by_digest(&digest)?;
                if let Some(pin) = self.pins().into_iter().find(|p| p.digest == digest) {
                    let (binding, state) =
                        (pin.binding, if pin.enabled { "" } else { " (disabled)" });
                    return Err(CoreError::conflict(format!(
                        "version {version} ({digest}) of plugin `{name}` is pinned by plugin \
                             binding `{binding}`{state} of the applied configuration or the one a \
                             pending commit-confirm would restore; commit a configuration without \
                             that pin first"
                    )));
                }
                self.plugins.remove(&name, Some(&digest)).map_err(plugin_failure)?;
                let mut m = format!("removed version {version} ({digest}) of plugin `{name}`");
                self.policy_refresh(&mut m);
                self.events.emit(
                    EventKind::PluginRemoved,
                    &name,
                    Severity::Info,
                    format!("{m} by {who}"),
                );
                Ok(message(m))
            }
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

    /// The builds configurations pin: the applied one's and, while a commit-confirm is pending,
    /// those of the revision a revert would restore. Disabled bindings count: enabling one again
    /// must find its build.
    fn pins(&self) -> Vec<Pin> {
        let pending = self.store.pending().ok().flatten();
        let restore = pending.and_then(|p| self.store.get(p.previous).ok()?.config().ok());
        let pins = |cfg: &Config, applied: bool| -> Vec<Pin> {
            let pin = |b: &isthmus_config::Plugin| Pin {
                binding: b.name.clone(),
                digest: crate::policy::pinned_digest(b),
                enabled: b.enabled,
                applied,
            };
            cfg.plugins.iter().map(pin).collect()
        };
        let mut all = self.applied().map_or_else(Vec::new, |(_, c)| pins(&c, true));
        all.extend(restore.map_or_else(Vec::new, |c| pins(&c, false)));
        all
    }

    /// After a plugin change: the plugin of each hook is selected again and the tables
    /// recompiled; what changed is appended to `m`.
    fn policy_refresh(&self, m: &mut String) {
        if let Some((_, cfg)) = self.applied() {
            for l in self.policy.refresh(&cfg, &crate::policy::trusted_keys(&cfg)) {
                m.push('\n');
                m.push_str(&l);
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

    fn dry_run(&self, cfg: &Config) -> Result<Vec<String>, CoreError> {
        let mut lines = Vec::new();
        lines.extend(
            lock(&self.net)
                .dry_run(&plan::desired_state(
                    cfg,
                    plan::TunnelDevice::of(
                        self.opts.run_tunnels,
                        self.with_driver(|_| ()).is_some(),
                    ),
                ))
                .map_err(CoreError::internal)?,
        );
        let planes = lock(&self.planes);
        let wanted = plan::ike_tunnels(cfg).map_err(|e| CoreError::bad_request(e.to_string()))?;
        for t in &wanted {
            let fp = plan::tunnel_fingerprint(cfg, &t.ike.name);
            match planes.running.get(&t.ike.name) {
                None => lines.push(format!("tunnel {}: would be added", t.ike.name)),
                Some(old) if *old != fp => {
                    lines.push(format!("tunnel {}: would be re-established (changed)", t.ike.name))
                }
                Some(_) => {}
            }
        }
        for n in planes.running.keys() {
            if !wanted.iter().any(|t| &t.ike.name == n) {
                lines.push(format!("tunnel {n}: would be removed"));
            }
        }
        Ok(lines)
    }

    /// `POST /config/validate`.
    pub fn validate(&self, text: &str) -> api::ValidateResponse {
        match Config::check(text) {
            Ok(c) => {
                let mut errors = issues(&c.config.check_secrets());
                errors.extend(plan_issue(&c.config));
                api::ValidateResponse {
                    ok: errors.is_empty(),
                    errors,
                    warnings: issues(&c.warnings),
                }
            }
            Err(e) => {
                api::ValidateResponse { ok: false, errors: issues(e.issues()), warnings: vec![] }
            }
        }
    }

    /// `POST /config/diff`: the document's differences from the active revision.
    pub fn diff_against_active(&self, text: &str) -> Result<String, CoreError> {
        let new = Config::from_toml(text)
            .map_err(|e| store_failure(isthmus_config::Error::Invalid(e)))?;
        let old = self.store.active_revision().and_then(|r| r.config()).map_err(store_failure)?;
        let d = isthmus_config::diff::configs(&old, &new);
        Ok(if d.is_empty() { "no changes\n".to_owned() } else { d })
    }

    /// `GET /config`.
    pub fn config_text_redacted(&self) -> Result<String, CoreError> {
        self.store.active_revision().and_then(|r| r.show()).map_err(store_failure)
    }

    /// `GET /config/revisions/N`.
    pub fn revision_text_redacted(&self, n: u64) -> Result<String, CoreError> {
        self.store.get(n).and_then(|r| r.show()).map_err(store_failure)
    }

    /// `GET /config/revisions`.
    pub fn revisions(&self) -> Result<Vec<api::Revision>, CoreError> {
        let active = self.store.active().map_err(store_failure)?;
        let pending = self.store.pending().map_err(store_failure)?;
        Ok(self
            .store
            .revisions()
            .map_err(store_failure)?
            .into_iter()
            .map(|r| api::Revision {
                number: r.number,
                time: unix(r.time),
                author: r.author,
                comment: r.comment,
                active: Some(r.number) == active,
                confirm_deadline: pending
                    .as_ref()
                    .filter(|p| p.rev == r.number)
                    .map(|p| unix(p.deadline)),
            })
            .collect())
    }

    /// `GET /status`.
    pub fn status(&self) -> api::Status {
        let pending = self.store.pending().ok().flatten();
        // One snapshot for the whole answer.
        let r = self.readings();
        api::Status {
            gateway: r.applied.as_ref().map(|(_, c)| c.gateway.name.clone()).unwrap_or_default(),
            version: env!("CARGO_PKG_VERSION").into(),
            uptime_secs: self.started.elapsed().as_secs(),
            revision: self.store.active().ok().flatten(),
            confirm_pending_secs: pending.map(|p| {
                p.deadline.duration_since(SystemTime::now()).map(|d| d.as_secs()).unwrap_or(0)
            }),
            tunnels: self.monitor.summaries(&r),
            active_alarms: self.alarms.active_count(),
            drops: crate::obs::monitor::gateway_drops(&r),
        }
    }

    /// `GET /tunnels`: every configured tunnel, down ones included.
    pub fn tunnels(&self) -> Vec<api::TunnelSummary> {
        self.monitor.summaries(&self.readings())
    }

    /// `GET /tunnels/NAME`.
    pub fn tunnel(&self, name: &str) -> Result<api::TunnelDetail, CoreError> {
        let (_, cfg) =
            self.applied().ok_or_else(|| CoreError::not_found("no configuration applied"))?;
        if cfg.tunnel(name).is_none() {
            return Err(CoreError::not_found(format!("no tunnel named `{name}` is configured")));
        }
        Ok(self.monitor.detail(&self.readings(), &cfg, name, &self.events, &self.health))
    }

    /// `GET /plugins`: every stored version of every plugin.
    pub fn plugins(&self) -> Result<Vec<api::Plugin>, CoreError> {
        let list = self.plugins.list().map_err(plugin_failure)?;
        Ok(list
            .into_iter()
            .flat_map(|p| {
                let active = p.active.clone();
                p.versions.into_iter().map(move |v| api::Plugin {
                    name: p.name.clone(),
                    version: v.version,
                    hook: v.hook.name().to_owned(),
                    active: active.as_deref() == Some(v.digest.as_str()),
                    signer: self.plugin_signer(&v.digest),
                    quarantined: self.policy.quarantined(&v.digest),
                    digest: v.digest,
                })
            })
            .collect())
    }

    /// `POST /plugins`: verifies the package against the applied configuration's trusted keys,
    /// compiles it with the policy host (imports, exports: the hook's world), and stores it. It
    /// is not activated.
    pub fn plugin_upload(&self, bytes: &[u8], who: &str) -> Result<api::Plugin, CoreError> {
        if bytes.len() > isthmus_policy::package::MAX_PACKAGE {
            return Err(CoreError::TooLarge(format!(
                "plugin package larger than {} MiB",
                isthmus_policy::package::MAX_PACKAGE >> 20
            )));
        }
        let trusted = self.trusted_keys();
        let refuse = |e: isthmus_policy::PolicyError| {
            self.events.emit(EventKind::PluginRefused, "plugins", Severity::Warning, e.to_string());
            plugin_failure(e)
        };
        let verified = isthmus_policy::verify(bytes, &trusted).map_err(refuse)?;
        let host = self.policy.host();
        let clock: Arc<dyn isthmus_policy::Clock> =
            Arc::new(isthmus_policy::SystemClock::default());
        let t0 = Instant::now();
        host.load(&verified, "", Some(clock)).map_err(refuse)?;
        let compile_ms = t0.elapsed().as_millis();
        // Pinned builds are never pruned to make room.
        let pins = self.pins();
        let keep: Vec<String> = pins.iter().map(|p| p.digest.clone()).collect();
        let digest = self.plugins.put_keeping(&verified, &keep).map_err(plugin_failure)?;
        let m = verified.manifest();
        let active = self
            .plugins
            .list()
            .map_err(plugin_failure)?
            .iter()
            .any(|p| p.name == m.name && p.active.as_deref() == Some(digest.as_str()));
        let signer = verified.package().signer().map(|k| k.to_string()).unwrap_or_default();
        // A build the applied configuration pins runs as soon as it is in the store.
        if pins.iter().any(|p| p.applied && p.enabled && p.digest == digest) {
            let mut lines = String::new();
            self.policy_refresh(&mut lines);
            tracing::info!(plugin = %m.name, "pinned build uploaded; hooks selected again{lines}");
        }
        self.events.emit(
            EventKind::PluginUploaded,
            &m.name,
            Severity::Info,
            format!(
                "plugin `{}` {} ({} hook, signed by {signer}) uploaded by {who}; digest {digest}, \
                 compiled in {compile_ms} ms",
                m.name,
                m.version,
                m.hook.name()
            ),
        );
        Ok(api::Plugin {
            name: m.name.clone(),
            version: m.version.clone(),
            hook: m.hook.name().to_owned(),
            digest,
            signer,
            active,
            quarantined: None,
        })
    }

    /// `GET /plugins/hooks`: what runs for each policy hook.
    pub fn plugin_hooks(&self) -> Vec<api::PluginHook> {
        self.policy.hooks()
    }

    /// The trusted plugin signing keys of the applied configuration (malformed ones skipped:
    /// validation reports them).
    fn trusted_keys(&self) -> Vec<isthmus_policy::PublicKey> {
        let Some((_, cfg)) = self.applied() else { return vec![] };
        cfg.trusted_keys
            .iter()
            .filter_map(|k| k.key_bytes())
            .filter_map(|b| {
                isthmus_policy::PublicKey::parse(&format!("ed25519:{}", hex::encode(b))).ok()
            })
            .collect()
    }

    /// The key that signed stored package `digest` (empty if unreadable).
    fn plugin_signer(&self, digest: &str) -> String {
        self.plugin_tree
            .get(format!("pkg/{digest}"))
            .ok()
            .flatten()
            .and_then(|b| isthmus_policy::Package::parse(&b).ok())
            .and_then(|p| p.signer().map(|k| k.to_string()))
            .unwrap_or_default()
    }

    /// The plugin name and version a stored digest belongs to.
    fn plugin_by_digest(&self, digest: &str) -> Result<(String, String), CoreError> {
        for p in self.plugins.list().map_err(plugin_failure)? {
            if let Some(v) = p.versions.iter().find(|v| v.digest == digest) {
                return Ok((p.name, v.version.clone()));
            }
        }
        Err(CoreError::not_found(format!(
            "no stored plugin version has digest `{digest}` (see `isthmus plugin list`)"
        )))
    }

    /// `GET /alarms`.
    pub fn alarms(&self) -> Vec<api::Alarm> {
        self.alarms.list()
    }

    /// `GET /metrics`.
    pub fn metrics_text(&self) -> String {
        crate::obs::monitor::metrics(
            &self.readings(),
            &self.monitor,
            &self.health,
            self.alarms.active_count(),
        )
    }

    /// Stops the driver and the dataplane.
    pub fn shutdown(&self) {
        self.health.stop_all();
        let driver = lock(&self.planes).driver.take();
        if let Some(d) = driver {
            match Arc::try_unwrap(d) {
                Ok(d) => d.tunnels.shutdown(),
                // A reader still holds it: the driver stops when the last one is done.
                Err(d) => drop(d),
            }
        }
    }
}

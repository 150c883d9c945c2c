//! The apply pipeline: a stored revision to the kernel, the policy tables, the dataplane and
//! the IKE driver, stage by stage ([`ApplyStage`]), with the fall-backs when a revision does not
//! apply (at start, after a commit, when a commit-confirm expires).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use isthmus_api::{self as api, EventKind, Severity};
use isthmus_config::Config;

use super::error::{issues, plan_issue, store_failure};
use super::{Core, CoreError, Driver, Reply, TokenEntry, lock, plan};
use crate::policy::Policy;

/// The stage of an apply that failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApplyStage {
    /// Reading the revision from the store.
    Load,
    /// Enabling IP forwarding through this sysctl file.
    Forwarding(&'static str),
    /// Bringing links, addresses, routes and the firewall to the configuration.
    Kernel,
    /// Planning the IKE driver's tunnels (proposals, identities, secrets).
    Plan,
    /// Starting the dataplane and the IKE driver.
    Dataplane,
    /// Routing protected traffic into the new tunnel device.
    Routing,
    /// Adding or removing tunnels in the IKE driver.
    Tunnels,
}

impl ApplyStage {
    /// Wraps an error of this stage (for `map_err`).
    fn err<E>(self) -> impl FnOnce(E) -> ApplyError
    where
        E: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        move |e| ApplyError { stage: self, source: e.into() }
    }
}

/// Why an apply failed: the stage, and the error of the plane that refused.
#[derive(Debug, thiserror::Error)]
pub struct ApplyError {
    /// Where it failed (the planes before it are applied; none after it are).
    pub stage: ApplyStage,
    /// The plane's own error.
    #[source]
    pub source: Box<dyn std::error::Error + Send + Sync>,
}

impl std::fmt::Display for ApplyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let e = &self.source;
        match self.stage {
            // These errors say what they are about (the driver's: "the dataplane did not
            // start: ...", "IKE driver I/O: ...").
            ApplyStage::Load
            | ApplyStage::Kernel
            | ApplyStage::Plan
            | ApplyStage::Dataplane
            | ApplyStage::Tunnels => write!(f, "{e}"),
            ApplyStage::Forwarding(file) => write!(f, "enabling forwarding ({file}): {e}"),
            ApplyStage::Routing => write!(f, "routing into the tunnel device: {e}"),
        }
    }
}

/// A gateway forwards between its LANs and its tunnels (the firewall decides what).
fn enable_forwarding() -> Result<Vec<String>, ApplyError> {
    let mut lines = Vec::new();
    for f in ["/proc/sys/net/ipv4/ip_forward", "/proc/sys/net/ipv6/conf/all/forwarding"] {
        if std::fs::read_to_string(f).is_ok_and(|v| v.trim() != "1") {
            std::fs::write(f, "1").map_err(ApplyStage::Forwarding(f).err())?;
            lines.push(format!("kernel: {f} = 1"));
        }
    }
    Ok(lines)
}

/// Starts the userspace ESP dataplane, has `policy` publish its tables into it, and starts the
/// IKE driver on it for the CHILD SAs (the SPD is the policy runner's, planned from the
/// configuration: the driver only installs SAs). Runs in the calling thread's network
/// namespace.
pub fn start_planes(
    policy: &Arc<Policy>,
    driver: isthmus_tunnels::DriverConfig,
    dataplane: isthmus_dataplane::Config,
    options: isthmus_tunnels::EspOptions,
) -> Result<(isthmus_tunnels::Tunnels, Arc<isthmus_dataplane::Dataplane>), isthmus_tunnels::Error> {
    use isthmus_tunnels::Error;
    let (dp, events) = isthmus_dataplane::Dataplane::start(dataplane)
        .map_err(|e| Error::DataplaneStart(e.into()))?;
    let dp = Arc::new(dp);
    let local = dp.udp_addr();
    policy.attach(dp.clone());
    let sas = isthmus_tunnels::EspDataplane::sas_only(dp.clone(), options);
    let tunnels = isthmus_tunnels::Tunnels::start(driver, Box::new(sas))?;
    isthmus_tunnels::forward_events(events, tunnels.dataplane_events(), local)
        .map_err(Error::Io)?;
    crate::policy::punt::spawn(Arc::downgrade(&dp), Arc::downgrade(policy)).map_err(Error::Io)?;
    Ok((tunnels, dp))
}

impl Core {
    /// Applies the active revision at start. A revision that cannot be applied never stops the
    /// daemon (inside the image it is PID 1, and the API is the operator's way in): the
    /// `apply-failed` alarm names the failure, and the daemon runs, in this order of choice,
    /// the `--config` file when it differs from that revision (the operator's fix, committed
    /// as a new revision), the last revision that applied in full (rolled back to), or no
    /// configuration at all, with the management API up and the failed revision's API tokens.
    /// While the active revision applies, a `--config` file that differs from it is not
    /// applied (the store is the truth after the first boot); a log line says how to commit it.
    pub(super) fn apply_at_start(&self, file: Option<(PathBuf, String)>) -> anyhow::Result<()> {
        let rev = self.store.active_revision()?;
        let n = rev.info.number;
        let file = file.filter(|(_, text)| text != rev.text());
        let parsed = rev.config();
        let failure = match parsed.as_ref().map_err(ToString::to_string).cloned() {
            Ok(cfg) => match self.apply(n, cfg).map_err(|e| e.to_string()) {
                Ok(_) => {
                    // A failure persisted from an earlier run is over.
                    self.alarms.applied(n);
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
        self.monitor.stats.apply_failed();
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
    fn apply_stored(&self, rev: u64) -> Result<(), ApplyError> {
        let cfg = self.store.get(rev).and_then(|r| r.config()).map_err(ApplyStage::Load.err())?;
        self.apply(rev, cfg).map(|_| ())
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
    pub(super) fn apply(&self, rev: u64, cfg: Config) -> Result<Vec<String>, ApplyError> {
        let _applying = lock(&self.applying);
        self.apply_held(rev, cfg)
    }

    /// [`Core::apply`], with the apply lock already held.
    pub(super) fn apply_held(&self, rev: u64, cfg: Config) -> Result<Vec<String>, ApplyError> {
        if self.stopping.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(ApplyStage::Load.err()("the daemon is stopping"));
        }
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

    fn apply_planes(&self, cfg: &Config, st: &mut plan::Stages) -> Result<Vec<String>, ApplyError> {
        let mut lines = Vec::new();
        let mut net = lock(&self.net);
        let have_driver = lock(&self.planes).driver.is_some();
        // 1. Kernel: links and addresses first, so the WAN address exists for the sockets.
        if self.opts.manage_net {
            lines.extend(enable_forwarding()?);
            let tun = plan::TunnelDevice::of(self.opts.run_tunnels, have_driver);
            let desired = plan::desired_state(cfg, tun);
            st.mark("desired state");
            lines.extend(net.apply(desired).map_err(ApplyStage::Kernel.err())?);
            st.mark("kernel");
        }
        // 2. The tunnels the driver is to run (secrets resolved here), and from them and the
        // security groups the SPD and the security-group table, through the policy plugins:
        // the SPD protects a tunnel's traffic before the driver adds the tunnel.
        let tunnels = match self.opts.run_tunnels {
            true => plan::ike_tunnels(cfg).map_err(ApplyStage::Plan.err())?,
            false => Vec::new(),
        };
        lines.extend(self.policy.refresh(cfg, &crate::policy::trusted_keys(cfg), &tunnels));
        st.mark("policy");
        if self.opts.run_tunnels {
            // 3. The dataplane and the IKE driver (restarted only when the WAN address changes).
            let driver = self.start_dataplane(cfg, &mut net, &mut lines, st)?;
            // 4. Tunnels.
            self.apply_tunnels(cfg, &driver, tunnels, &mut lines)?;
            st.mark("tunnels");
        }
        Ok(lines)
    }

    /// Starts the dataplane and the IKE driver unless they run on `cfg`'s WAN address already
    /// (a new address restarts them), and routes protected traffic into the new TUN device.
    fn start_dataplane(
        &self,
        cfg: &Config,
        net: &mut plan::NetPlane,
        lines: &mut Vec<String>,
        st: &mut plan::Stages,
    ) -> Result<Arc<Driver>, ApplyError> {
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
        if let Some(d) = lock(&self.planes).driver.clone() {
            return Ok(d);
        }
        let (tunnels, dataplane) = start_planes(
            &self.policy,
            isthmus_tunnels::DriverConfig::default(),
            plan::dataplane_config(cfg),
            isthmus_tunnels::EspOptions::default(),
        )
        .map_err(ApplyStage::Dataplane.err())?;
        lines.push(format!("dataplane: started on {wan}, TUN {}", plan::TUN_NAME));
        crate::obs::monitor::forward_tunnel_events(
            &tunnels,
            self.events.clone(),
            self.alarms.clone(),
            self.monitor.stats.clone(),
        );
        let driver = Arc::new(Driver { tunnels, dataplane, wan });
        lock(&self.planes).driver = Some(driver.clone());
        st.mark("dataplane");
        // Now that the TUN device exists, route protected traffic into it.
        if net.rec.is_some() {
            let desired = plan::desired_state(cfg, plan::TunnelDevice::Routed);
            lines.extend(net.apply(desired).map_err(ApplyStage::Routing.err())?);
            st.mark("kernel");
        }
        Ok(driver)
    }

    /// Removes the tunnels gone or changed, and adds the new and changed ones of `planned`. A
    /// tunnel whose settings are the same as in the applied configuration is not even
    /// fingerprinted.
    fn apply_tunnels(
        &self,
        cfg: &Config,
        driver: &Driver,
        planned: Vec<isthmus_tunnels::Tunnel>,
        lines: &mut Vec<String>,
    ) -> Result<(), ApplyError> {
        let old = self.applied().map(|(_, c)| c);
        let running = lock(&self.planes).running.clone();
        let same = old.as_ref().map(|o| plan::unchanged_tunnels(o, cfg)).unwrap_or_default();
        let mut fps: BTreeMap<String, String> = BTreeMap::new();
        for t in cfg.tunnels.iter().filter(|t| t.enabled) {
            let fp = match running.get(&t.name) {
                Some(fp) if same.contains(t.name.as_str()) => fp.clone(),
                _ => plan::tunnel_fingerprint(cfg, &t.name),
            };
            fps.insert(t.name.clone(), fp);
        }
        let stale: Vec<String> = running
            .iter()
            .filter(|(n, fp)| fps.get(*n) != Some(*fp))
            .map(|(n, _)| n.clone())
            .collect();
        for name in stale {
            let _ = driver.tunnels.terminate(&name);
            let r = driver.tunnels.remove_tunnel(&name);
            lock(&self.planes).running.remove(&name);
            r.map_err(ApplyStage::Tunnels.err())?;
            lines.push(format!("tunnel {name}: removed"));
        }
        let running = lock(&self.planes).running.clone();
        for t in planned.into_iter().filter(|t| !running.contains_key(&t.ike.name)) {
            let name = t.ike.name.clone();
            driver.tunnels.add_tunnel(t).map_err(ApplyStage::Tunnels.err())?;
            lines.push(format!("tunnel {name}: added"));
            let fp = fps[&name].clone();
            lock(&self.planes).running.insert(name, fp);
        }
        Ok(())
    }

    /// The planes are in place: tokens, alarms, and the applied revision.
    pub(super) fn apply_rest(&self, rev: u64, cfg: Config) {
        self.install_access(&cfg);
        if self.opts.run_tunnels {
            self.health.configure(&cfg, self.events.clone());
        }
        let before = self
            .applied
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .replace((rev, Arc::new(cfg)))
            .map(|(r, _)| r);
        // The same revision again (a peer's DNS name moved): its cause has its own event.
        let text = if before == Some(rev) {
            format!("revision {rev} re-applied")
        } else {
            format!("revision {rev} applied")
        };
        self.events.emit(EventKind::ConfigApplied, "config", Severity::Info, text);
    }

    /// Who may use the API and who is told of alarms, from `cfg` (also when nothing else of it
    /// could be applied: the operator must be able to reach the API to fix it).
    pub(super) fn install_access(&self, cfg: &Config) {
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
    pub(super) fn apply_or_roll_back(
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
                self.alarms.applied(rev);
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
                                .map_err(ApplyStage::Load.err())
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
                self.monitor.stats.apply_failed();
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

    pub(super) fn dry_run(&self, cfg: &Config) -> Result<Vec<String>, CoreError> {
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

    /// `POST /actions` config-commit: parse and check `text` (incrementally against the last
    /// text checked), plan it, store it as a revision (with a confirm deadline when asked) and
    /// apply it, rolling back when the apply fails. `dry_run` only plans.
    pub(super) fn commit(
        &self,
        text: &str,
        who: &str,
        comment: &str,
        confirm_secs: Option<u64>,
        dry_run: bool,
        now: SystemTime,
    ) -> Result<Reply, CoreError> {
        let mut st = plan::Stages::start();
        let previous_text = lock(&self.checked).clone();
        let checked = match &previous_text {
            Some(p) => Config::check_incremental(text, p),
            None => Config::check(text),
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
                comment,
                Duration::from_secs(s),
                now,
            ),
            None => self.store.commit_checked(&checked, who, comment, now),
        }
        .map_err(store_failure)?;
        st.mark("store");
        let plan = self.apply_or_roll_back(c.rev, previous, who, Some(checked.config.clone()));
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
}

//! Alarms: conditions from the configuration evaluated every second against live state, raised
//! after they hold for `hold`, cleared when they end, passed through the alarm hook (the `alarm`
//! plugin, when one is active), and delivered to webhooks (JSON POST with retries from a bounded
//! queue, optionally HMAC-signed, RFC 2104) and to the log and event stream.
//!
//! Conditions come from three places: live state (tunnel down, one-way traffic), health-check
//! results (loss and latency over a threshold, see [`crate::obs::health`]), and typed driver signals
//! that latch until the opposite signal ([`Signal`]: a dead peer until the tunnel is up again, a
//! failed rekey until a rekey succeeds; plugin faults until the plugin recovers).
//! Two alarms are built in and need no rule, going to every target: `confirm-timeout` (a
//! commit-confirm reverted) and `upgrade-failed` about `system` (a firmware upgrade failed its
//! health gate or fell back to the old slot, see [`crate::system::upgrade`]; raised at every start
//! while the record says so, cleared when a later upgrade is blessed).
//!
//! The hook sees every raise and clear as an [`AlarmEvent`] and answers with [`AlarmAction`]s:
//! `Notify` sends to the named notification target (or, when no target has that name, to the
//! alarm's own targets), `SetSeverity` re-grades the alarm (raise or lower), `Suppress` silences
//! that kind of event about that subject for a while. An empty answer delivers nothing. Without
//! a hook every event goes to the alarm's own targets at its configured severity.
//!
//! Every clear says why ([`api::Alarm::clear_reason`]: the tunnel is up, the rule was removed,
//! a rekey succeeded, ...). A condition that cannot be judged yet (a health window without
//! enough answers, traffic not yet sampled after a start) neither raises nor clears.
//!
//! Raised and recently cleared alarms, and the latched conditions, are kept in a sled tree
//! under `<data-dir>/alarms` ([`Alarms::persistent`]), written on every change: after a
//! restart a raised alarm is still raised (and not sent again), a clear stays cleared with its
//! reason. A record that cannot be read is logged and the engine starts clean; it never stops
//! the daemon.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use isthmus_api::{self as api, Severity};
use isthmus_config::{AlarmKind, Config};
use isthmus_policy::{AlarmAction, AlarmEvent, EventKind};
use tokio::sync::mpsc;

use crate::obs::Readings;
pub use crate::obs::delivery::Notification;
use crate::obs::delivery::{DeliveryStats, Target, notification};
use crate::obs::events::{EventBus, unix_now};
use crate::obs::health::Health;
use crate::obs::monitor::Monitor;

/// How many notifications may wait for delivery; beyond that new ones are dropped (counted).
const QUEUE: usize = 256;

/// How many cleared alarms `alarm list` keeps.
const KEEP_CLEARED: usize = 100;

/// After a start, how long conditions read from sampled traffic are not judged: the monitor
/// has no history yet, and a restored alarm must not clear for want of data.
const START_GRACE: Duration = Duration::from_secs(30);

/// The key of the persisted state in the alarm tree, and the version of its layout.
const RECORD_KEY: &[u8] = b"state/v1";
const RECORD_VERSION: u32 = 1;

/// Health-latency alarms judge the median round trip of at least this many answers: one slow
/// probe (the first through a new SA, or one that waited for ARP) cannot trip them.
pub const LATENCY_MIN_ANSWERS: u32 = 3;

/// The built-in alarm of a failed upgrade, and what it is about.
pub const UPGRADE_ALARM: &str = "upgrade-failed";
/// See [`UPGRADE_ALARM`].
pub const UPGRADE_SUBJECT: &str = "system";

fn upgrade_key() -> (String, String) {
    (UPGRADE_ALARM.to_owned(), UPGRADE_SUBJECT.to_owned())
}

/// The built-in alarm raised while a configuration revision could not be applied
/// ([`Alarms::apply_failed`]), about [`APPLY_SUBJECT`].
pub const APPLY_ALARM: &str = "apply-failed";
/// See [`APPLY_ALARM`].
pub const APPLY_SUBJECT: &str = "config";

fn apply_key() -> (String, String) {
    (APPLY_ALARM.to_owned(), APPLY_SUBJECT.to_owned())
}

/// The alarm hook: sees each raise and clear, says what to deliver (the alarm plugin's
/// `on-event`; the policy supervisor provides it).
pub type AlarmHook = Arc<dyn Fn(&AlarmEvent) -> Vec<AlarmAction> + Send + Sync>;

/// A typed condition the IKE driver reports about a tunnel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signal {
    /// A new IKE SA is up (not a rekey): a dead-peer condition ends.
    Up,
    /// Dead peer detection (or another exchange) found the peer not answering.
    DeadPeer,
    /// A rekey failed: CREATE_CHILD_SA was refused or timed out, or a lifetime ran out first.
    RekeyFailed,
    /// A rekey succeeded: a rekey-failure condition ends.
    Rekeyed,
}

/// What latches: a condition set by one signal and ended by another.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
enum Latch {
    DpdTimeout,
    RekeyFailure,
    PluginFault,
}

impl Latch {
    /// Why the condition ended (the opposite signal came).
    fn ended(self) -> &'static str {
        match self {
            Latch::DpdTimeout => "a new IKE SA is up",
            Latch::RekeyFailure => "a rekey succeeded",
            Latch::PluginFault => "the plugin runs again",
        }
    }
}

/// A condition as one evaluation found it.
#[derive(Clone, Debug, PartialEq)]
enum Cond {
    /// It holds: what is wrong.
    Holds(String),
    /// It does not: why not (the reason of a clear).
    Ended(String),
    /// It cannot be judged yet: a raised alarm stays raised, a hold timer keeps running.
    Unknown,
}

/// What survives a restart (serialised as JSON in the alarm tree).
#[derive(serde::Serialize, serde::Deserialize)]
struct Record {
    version: u32,
    active: Vec<api::Alarm>,
    cleared: Vec<api::Alarm>,
    latched: Vec<(Latch, String, String)>,
}

/// A raise or a clear on its way through the hook.
#[derive(Debug)]
struct Transition {
    raised: bool,
    kind: EventKind,
    key: (String, String),
    alarm: api::Alarm,
    notify: Vec<String>,
}

struct State {
    gateway: String,
    rules: Vec<isthmus_config::Alarm>,
    targets: BTreeMap<String, Target>,
    /// When a condition started holding, per (alarm, subject).
    since: HashMap<(String, String), Instant>,
    /// Raised alarms by (alarm, subject), and recently cleared ones.
    active: BTreeMap<(String, String), api::Alarm>,
    cleared: Vec<api::Alarm>,
    /// Conditions set by signals, per (latch, subject), with their message.
    latched: HashMap<(Latch, String), String>,
    /// Events the hook asked to silence, per (kind, subject), until when.
    suppressed: HashMap<(EventKind, String), Instant>,
    hook: Option<AlarmHook>,
    queue: Option<mpsc::Sender<(Target, Notification)>>,
    /// Notifications raised before delivery started; sent when it starts.
    early: Vec<(Target, Notification)>,
    dropped: u64,
    /// The origin of the hook's millisecond clock.
    epoch: Instant,
    /// Where the state is kept across restarts (None: not kept).
    store: Option<sled::Tree>,
    /// Webhook deliveries per target.
    stats: Arc<DeliveryStats>,
}

impl Default for State {
    fn default() -> State {
        State {
            gateway: String::new(),
            rules: Vec::new(),
            targets: BTreeMap::new(),
            since: HashMap::new(),
            active: BTreeMap::new(),
            cleared: Vec::new(),
            latched: HashMap::new(),
            suppressed: HashMap::new(),
            hook: None,
            queue: None,
            early: Vec::new(),
            dropped: 0,
            epoch: Instant::now(),
            store: None,
            stats: Arc::default(),
        }
    }
}

/// The alarm engine.
#[derive(Default)]
pub struct Alarms {
    st: Mutex<State>,
}

/// The plugin interface's grades (`wit/policy.wit`) are the API's, one for one: a plugin's
/// `major` is `major` in `alarm list`, the webhook and the metrics alike.
fn to_policy(s: Severity) -> isthmus_policy::Severity {
    match s {
        Severity::Info => isthmus_policy::Severity::Info,
        Severity::Warning => isthmus_policy::Severity::Warning,
        Severity::Major => isthmus_policy::Severity::Major,
        Severity::Critical => isthmus_policy::Severity::Critical,
    }
}

/// See [`to_policy`].
fn from_policy(s: isthmus_policy::Severity) -> Severity {
    match s {
        isthmus_policy::Severity::Info => Severity::Info,
        isthmus_policy::Severity::Warning => Severity::Warning,
        isthmus_policy::Severity::Major => Severity::Major,
        isthmus_policy::Severity::Critical => Severity::Critical,
    }
}

/// Clears `a` now, for `reason`, into the cleared list.
fn clear(st: &mut State, mut a: api::Alarm, reason: &str) -> api::Alarm {
    a.cleared = Some(unix_now());
    a.clear_reason = Some(reason.to_owned());
    push_cleared(st, a.clone());
    a
}

fn event_kind(k: AlarmKind) -> EventKind {
    match k {
        AlarmKind::TunnelDown => EventKind::TunnelDown,
        AlarmKind::DpdTimeout => EventKind::DpdTimeout,
        AlarmKind::RekeyFailure => EventKind::RekeyFailed,
        AlarmKind::HealthLoss => EventKind::HealthCheckLoss,
        AlarmKind::HealthLatency => EventKind::HealthCheckLatency,
        AlarmKind::OneWayTraffic => EventKind::OneWayTraffic,
        AlarmKind::PluginFault => EventKind::PluginFault,
    }
}

impl Alarms {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.st.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// An engine whose state is kept in the sled database at `dir` and restored from it. A
    /// database that does not open is moved aside (`alarms.corrupt`) and started anew; a record
    /// that does not read is logged and replaced: alarms then start clean, the daemon starts.
    pub fn persistent(dir: &Path) -> Alarms {
        let a = Alarms::default();
        let open = |d: &Path| sled::open(d).and_then(|db| db.open_tree("alarms"));
        let tree = match open(dir) {
            Ok(t) => Some(t),
            Err(e) => {
                let aside = dir.with_extension("corrupt");
                tracing::error!(
                    "the alarm store {} does not open ({e}): moved to {}, alarms start clean",
                    dir.display(),
                    aside.display()
                );
                let _ = std::fs::remove_dir_all(&aside);
                let _ = std::fs::rename(dir, &aside);
                open(dir)
                    .inspect_err(|e| {
                        tracing::error!("alarms are not kept across restarts: {e}");
                    })
                    .ok()
            }
        };
        let Some(tree) = tree else { return a };
        {
            let mut st = a.lock();
            match tree.get(RECORD_KEY) {
                Ok(None) => {}
                Ok(Some(v)) => match serde_json::from_slice::<Record>(&v) {
                    Ok(r) if r.version == RECORD_VERSION => {
                        st.active = r
                            .active
                            .into_iter()
                            .map(|a| ((a.name.clone(), a.subject.clone()), a))
                            .collect();
                        st.cleared = r.cleared;
                        st.latched = r.latched.into_iter().map(|(l, s, m)| ((l, s), m)).collect();
                        tracing::info!(active = st.active.len(), "alarm state restored");
                    }
                    Ok(r) => tracing::error!(
                        "the alarm record has version {}, this daemon reads {RECORD_VERSION}: alarms start clean",
                        r.version
                    ),
                    Err(e) => {
                        tracing::error!("the alarm record does not read ({e}): alarms start clean")
                    }
                },
                Err(e) => {
                    tracing::error!("the alarm record does not read ({e}): alarms start clean")
                }
            }
            st.store = Some(tree);
        }
        a
    }

    /// Webhook deliveries per target.
    pub fn delivery_stats(&self) -> Arc<DeliveryStats> {
        self.lock().stats.clone()
    }

    /// The notification targets configured now, by name.
    pub fn targets(&self) -> Vec<String> {
        self.lock().targets.keys().cloned().collect()
    }

    /// Sets (or, with `None`, removes) the hook every raise and clear passes through before
    /// delivery.
    pub fn set_hook(&self, hook: Option<AlarmHook>) {
        self.lock().hook = hook;
    }

    /// Takes the alarm rules and notification targets of a new configuration.
    pub fn configure(&self, cfg: &Config) {
        let mut st = self.lock();
        st.gateway = cfg.gateway.name.clone();
        st.rules = cfg.alarms.clone();
        st.targets = cfg
            .notify
            .iter()
            .map(|n| {
                let t = Target {
                    name: n.name.clone(),
                    url: n.webhook.clone(),
                    retries: n.retries,
                    timeout: n.timeout.as_duration(),
                    secret: n
                        .secret
                        .as_ref()
                        .and_then(|s| s.resolve().ok())
                        .map(|v| v.expose().to_owned()),
                    // Validation read it; a file gone since is reported and the built-in roots
                    // still apply.
                    ca: n.ca_certificates().unwrap_or_else(|e| {
                        tracing::error!(target = %n.name, "webhook CA bundle: {e}");
                        Vec::new()
                    }),
                };
                (n.name.clone(), t)
            })
            .collect();
        // Alarms whose rule is gone clear (without notification: nobody is configured to hear).
        let names: Vec<String> = st.rules.iter().map(|r| r.name.clone()).collect();
        let gone: Vec<(String, String)> = st
            .active
            .keys()
            .filter(|k| !names.contains(&k.0) && **k != upgrade_key())
            .cloned()
            .collect();
        for k in gone {
            if let Some(a) = st.active.remove(&k) {
                clear(&mut st, a, "its rule was removed from the configuration");
            }
        }
        save(&st);
    }

    /// Starts delivering notifications (needs a tokio runtime).
    pub fn start_delivery(&self) {
        let (tx, rx) = mpsc::channel::<(Target, Notification)>(QUEUE);
        {
            let mut st = self.lock();
            for n in std::mem::take(&mut st.early) {
                if tx.try_send(n).is_err() {
                    st.dropped += 1;
                }
            }
            st.queue = Some(tx);
        }
        tokio::spawn(super::delivery::run(rx, self.delivery_stats()));
    }

    /// Notes a typed signal from the IKE driver about `tunnel`.
    pub fn signal(&self, tunnel: &str, s: Signal, message: &str) {
        let mut st = self.lock();
        let subject = format!("tunnel/{tunnel}");
        match s {
            Signal::DeadPeer => {
                st.latched.insert((Latch::DpdTimeout, subject), message.to_owned());
            }
            Signal::RekeyFailed => {
                st.latched.insert((Latch::RekeyFailure, subject), message.to_owned());
            }
            Signal::Up => {
                st.latched.remove(&(Latch::DpdTimeout, subject));
            }
            Signal::Rekeyed => {
                st.latched.remove(&(Latch::RekeyFailure, subject));
            }
        }
        save(&st);
    }

    /// A plugin trapped, ran out of time or memory, or was quarantined: `plugin-fault` alarms
    /// about `plugin/NAME` hold until [`Alarms::plugin_recovered`].
    pub fn plugin_fault(&self, plugin: &str, message: &str) {
        let mut st = self.lock();
        st.latched.insert((Latch::PluginFault, format!("plugin/{plugin}")), message.into());
        save(&st);
    }

    /// The plugin runs again (replaced, rolled back, or out of quarantine).
    pub fn plugin_recovered(&self, plugin: &str) {
        let mut st = self.lock();
        if st.latched.remove(&(Latch::PluginFault, format!("plugin/{plugin}"))).is_some() {
            save(&st);
        }
    }

    /// An upgrade failed: its health gate failed, blessing failed, or the firmware fell back to
    /// the old slot ([`crate::system::upgrade`]). Raises the built-in `upgrade-failed` alarm about
    /// `system` (critical, to every target; no rule needed: a box that does not run the
    /// firmware its operator installed is always worth telling). It holds until
    /// [`Alarms::upgrade_passed`]; a second failure with the same message is not sent again.
    pub fn upgrade_failed(&self, message: &str) {
        self.raise_builtin(upgrade_key(), message);
    }

    /// An upgrade passed its health gate and the slot was blessed: a raised `upgrade-failed`
    /// alarm clears.
    pub fn upgrade_passed(&self) {
        self.clear_builtin(upgrade_key(), "a later upgrade passed its health gate");
    }

    /// A configuration revision could not be applied (at start or on commit): raises the
    /// built-in `apply-failed` alarm about `config` (critical, to every target), naming the
    /// revision and what the kernel or a plane refused. It holds until [`Alarms::applied`].
    pub fn apply_failed(&self, message: &str) {
        self.raise_builtin(apply_key(), message);
    }

    /// Revision `rev` was applied in full: a raised `apply-failed` alarm clears.
    pub fn applied(&self, rev: u64) {
        self.clear_builtin(apply_key(), &format!("revision {rev} applied"));
    }

    /// Raises a built-in alarm (no rule needed; critical, to every target); a second raise with
    /// the same message is not sent again.
    fn raise_builtin(&self, key: (String, String), message: &str) {
        let mut st = self.lock();
        if st.active.get(&key).is_some_and(|a| a.message == message) {
            return;
        }
        let notify = st.targets.keys().cloned().collect();
        let a = api::Alarm {
            name: key.0.clone(),
            subject: key.1.clone(),
            severity: Severity::Critical,
            message: message.to_owned(),
            raised: unix_now(),
            cleared: None,
            clear_reason: None,
            acknowledged: None,
        };
        if let Some(old) = st.active.remove(&key) {
            clear(&mut st, old, "superseded by a new raise");
        }
        st.active.insert(key.clone(), a.clone());
        save(&st);
        drop(st);
        self.dispatch(
            vec![Transition { raised: true, kind: EventKind::Other, key, alarm: a, notify }],
            None,
        );
    }

    fn clear_builtin(&self, key: (String, String), reason: &str) {
        let mut st = self.lock();
        let Some(a) = st.active.remove(&key) else { return };
        let a = clear(&mut st, a, reason);
        save(&st);
        let notify = st.targets.keys().cloned().collect();
        drop(st);
        self.dispatch(
            vec![Transition { raised: false, kind: EventKind::Other, key, alarm: a, notify }],
            None,
        );
    }

    /// A commit-confirm timed out and the configuration was reverted: always worth telling, to
    /// every target (the core reports it on the event stream itself).
    pub fn confirm_reverted(&self, message: &str) {
        let now = unix_now();
        let a = api::Alarm {
            name: "confirm-timeout".into(),
            subject: "config".into(),
            severity: Severity::Warning,
            message: message.to_owned(),
            raised: now,
            cleared: Some(now),
            clear_reason: Some("the configuration was reverted".into()),
            acknowledged: None,
        };
        let notify: Vec<String> = self.lock().targets.keys().cloned().collect();
        let key = (a.name.clone(), a.subject.clone());
        {
            let mut st = self.lock();
            push_cleared(&mut st, a.clone());
            save(&st);
        }
        self.dispatch(
            vec![Transition { raised: true, kind: EventKind::Other, key, alarm: a, notify }],
            None,
        );
    }

    /// Evaluates every rule against live state; raises and clears.
    pub fn evaluate(&self, r: &Readings, monitor: &Monitor, health: &Health, events: &EventBus) {
        let Some((_, cfg)) = &r.applied else { return };
        let tunnels = monitor.summaries(r);
        let (rules, started) = {
            let st = self.lock();
            (st.rules.clone(), st.epoch)
        };
        let settled = started.elapsed() >= START_GRACE;
        let mut conds: Vec<(usize, String, Cond)> = Vec::new();
        for (i, r) in rules.iter().enumerate() {
            if r.kind == AlarmKind::PluginFault {
                // About plugins, not tunnels: every plugin with a latched fault.
                let st = self.lock();
                for ((l, subject), msg) in &st.latched {
                    if *l == Latch::PluginFault {
                        conds.push((i, subject.clone(), Cond::Holds(msg.clone())));
                    }
                }
                continue;
            }
            let watched =
                cfg.tunnels.iter().filter(|t| r.tunnels.is_empty() || r.tunnels.contains(&t.name));
            for t in watched {
                let subject = format!("tunnel/{}", t.name);
                let summary = tunnels.iter().find(|s| s.name == t.name);
                let cond = if !t.enabled {
                    Cond::Ended(format!("tunnel {} is disabled", t.name))
                } else {
                    match r.kind {
                        AlarmKind::TunnelDown => match summary.map(|s| s.state) {
                            // An on-demand tunnel waiting for traffic is idle, not down.
                            Some(s @ (api::TunnelState::Up | api::TunnelState::Idle)) => {
                                Cond::Ended(format!("tunnel {} is {s}", t.name))
                            }
                            Some(s) => Cond::Holds(format!("tunnel {} is {s}", t.name)),
                            None => Cond::Unknown,
                        },
                        AlarmKind::OneWayTraffic => {
                            let hold = r.hold.as_secs().max(1);
                            match monitor.idle(&t.name) {
                                (Some(o), i) if o < 5 && i.is_none_or(|i| i >= hold) => {
                                    Cond::Holds(format!(
                                        "ESP leaves through tunnel {} but nothing has come back for {} s: the peer is not sending back — check its routes and SPD",
                                        t.name,
                                        i.map(|i| i.to_string()).unwrap_or("ever".into())
                                    ))
                                }
                                (_, Some(i)) if i < hold => Cond::Ended(format!(
                                    "traffic comes back through tunnel {}",
                                    t.name
                                )),
                                _ if !settled => Cond::Unknown,
                                _ => Cond::Ended(format!(
                                    "nothing leaves through tunnel {} any more",
                                    t.name
                                )),
                            }
                        }
                        AlarmKind::DpdTimeout => self.latched(Latch::DpdTimeout, &subject),
                        AlarmKind::RekeyFailure => self.latched(Latch::RekeyFailure, &subject),
                        AlarmKind::PluginFault => Cond::Unknown,
                        AlarmKind::HealthLoss => {
                            let min = t.health_check.as_ref().map_or(1, |h| h.failure_threshold);
                            health.report(&t.name).map_or(Cond::Unknown, |h| {
                                health_loss(&t.name, &h, r.threshold.unwrap_or(100), min)
                            })
                        }
                        AlarmKind::HealthLatency => {
                            let min = t.health_check.as_ref().map_or(1, |h| h.failure_threshold);
                            health.report(&t.name).map_or(Cond::Unknown, |h| {
                                health_latency(&t.name, &h, r.threshold.unwrap_or(u32::MAX), min)
                            })
                        }
                    }
                };
                conds.push((i, subject, cond));
            }
        }
        let transitions = self.update(&rules, conds, Instant::now());
        self.dispatch(transitions, Some(events));
    }

    fn latched(&self, l: Latch, subject: &str) -> Cond {
        match self.lock().latched.get(&(l, subject.to_owned())) {
            Some(m) => Cond::Holds(m.clone()),
            None => Cond::Ended(l.ended().to_owned()),
        }
    }

    /// Applies conditions (rule index, subject, condition) at `now`: starts hold timers, raises
    /// the alarms whose condition held long enough, clears the ones whose condition ended (or
    /// whose subject is no longer evaluated), leaves alone the ones that cannot be judged.
    /// Returns what changed.
    fn update(
        &self,
        rules: &[isthmus_config::Alarm],
        conds: Vec<(usize, String, Cond)>,
        now: Instant,
    ) -> Vec<Transition> {
        let mut st = self.lock();
        let mut out = Vec::new();
        let mut seen: BTreeSet<(String, String)> = BTreeSet::new();
        let mut ended: Vec<(usize, (String, String), String)> = Vec::new();
        for (i, subject, cond) in conds {
            let Some(r) = rules.get(i) else { continue };
            let key = (r.name.clone(), subject.clone());
            seen.insert(key.clone());
            match cond {
                Cond::Holds(msg) => {
                    let since = *st.since.entry(key.clone()).or_insert(now);
                    if now.duration_since(since) >= r.hold.as_duration()
                        && !st.active.contains_key(&key)
                    {
                        let a = api::Alarm {
                            name: r.name.clone(),
                            subject,
                            severity: r.severity(),
                            message: msg,
                            raised: unix_now(),
                            cleared: None,
                            clear_reason: None,
                            acknowledged: None,
                        };
                        st.active.insert(key.clone(), a.clone());
                        out.push(Transition {
                            raised: true,
                            kind: event_kind(r.kind),
                            key,
                            alarm: a,
                            notify: r.notify.clone(),
                        });
                    }
                }
                Cond::Ended(why) => ended.push((i, key, why)),
                Cond::Unknown => {}
            }
        }
        // Raised alarms of a rule whose subject was not evaluated (a removed tunnel, a plugin
        // that recovered) ended too.
        for (k, _) in st.active.iter() {
            if !seen.contains(k)
                && *k != upgrade_key()
                && *k != apply_key()
                && let Some(i) = rules.iter().position(|r| r.name == k.0)
            {
                let why = match rules[i].kind {
                    AlarmKind::PluginFault => Latch::PluginFault.ended().to_owned(),
                    _ => format!("{} is no longer watched by this rule", k.1),
                };
                ended.push((i, k.clone(), why));
            }
        }
        for (i, key, why) in ended {
            st.since.remove(&key);
            if let Some(a) = st.active.remove(&key) {
                let a = clear(&mut st, a, &why);
                let r = &rules[i];
                out.push(Transition {
                    raised: false,
                    kind: event_kind(r.kind),
                    key,
                    alarm: a,
                    notify: r.notify.clone(),
                });
            }
        }
        if !out.is_empty() {
            save(&st);
        }
        out
    }

    /// Passes each transition through the hook (outside the lock: a plugin call may take a
    /// while), honours its answer, and queues the notifications.
    fn dispatch(&self, transitions: Vec<Transition>, events: Option<&EventBus>) {
        for mut t in transitions {
            let (hook, epoch) = {
                let st = self.lock();
                (st.hook.clone(), st.epoch)
            };
            let now = Instant::now();
            let subject = t.alarm.subject.clone();
            let suppressed = {
                let mut st = self.lock();
                st.suppressed.retain(|_, until| *until > now);
                st.suppressed.contains_key(&(t.kind, subject.clone()))
            };
            // (target, severity, message) to send.
            let mut sends: Vec<(Vec<String>, Severity, String)> = Vec::new();
            if !suppressed {
                match hook {
                    None => {
                        sends.push((t.notify.clone(), t.alarm.severity, t.alarm.message.clone()))
                    }
                    Some(h) => {
                        let ev = AlarmEvent {
                            kind: t.kind,
                            subject: subject.clone(),
                            raised: t.raised,
                            severity: to_policy(t.alarm.severity),
                            message: t.alarm.message.clone(),
                            at_ms: u64::try_from(now.duration_since(epoch).as_millis())
                                .unwrap_or(u64::MAX),
                        };
                        for a in h(&ev) {
                            match a {
                                AlarmAction::SetSeverity(s) => t.alarm.severity = from_policy(s),
                                AlarmAction::Notify(n) => {
                                    let st = self.lock();
                                    let to = if st.targets.contains_key(&n.channel) {
                                        vec![n.channel.clone()]
                                    } else {
                                        t.notify.clone()
                                    };
                                    sends.push((to, from_policy(n.severity), n.message));
                                }
                                AlarmAction::Suppress(s) => {
                                    let until = now + Duration::from_millis(s.for_ms);
                                    self.lock().suppressed.insert((s.kind, s.subject), until);
                                }
                            }
                        }
                    }
                }
            }
            let mut st = self.lock();
            // A re-graded alarm shows its new severity in `alarm list` too.
            if let Some(a) = st.active.get_mut(&t.key) {
                a.severity = t.alarm.severity;
            } else if let Some(a) = st
                .cleared
                .iter_mut()
                .rev()
                .find(|a| a.name == t.alarm.name && a.subject == t.alarm.subject)
            {
                a.severity = t.alarm.severity;
            }
            save(&st);
            let gw = st.gateway.clone();
            let state = if t.raised { "raised" } else { "cleared" };
            for (to, severity, message) in sends {
                for name in to {
                    if let Some(target) = st.targets.get(&name).cloned() {
                        let mut n = notification(state, &t.alarm, &gw);
                        n.severity = severity;
                        n.message = message.clone();
                        enqueue(&mut st, target, n);
                    }
                }
            }
            drop(st);
            if suppressed {
                tracing::info!(alarm = %t.alarm.name, %subject, state, "suppressed by the alarm plugin");
            }
            if let Some(ev) = events
                && t.kind != EventKind::Other
            {
                if t.raised {
                    ev.emit(
                        api::EventKind::AlarmRaised,
                        &subject,
                        t.alarm.severity,
                        format!("alarm {}: {}", t.alarm.name, t.alarm.message),
                    );
                } else {
                    ev.emit(
                        api::EventKind::AlarmCleared,
                        &subject,
                        Severity::Info,
                        format!(
                            "alarm {} cleared: {}",
                            t.alarm.name,
                            t.alarm.clear_reason.as_deref().unwrap_or("its condition ended")
                        ),
                    );
                }
            }
        }
    }

    /// A queue the tests read notifications from instead of webhooks.
    #[cfg(test)]
    fn test_queue(&self) -> mpsc::Receiver<(Target, Notification)> {
        let (tx, rx) = mpsc::channel(QUEUE);
        self.lock().queue = Some(tx);
        rx
    }

    /// Active alarms, then recently cleared ones.
    pub fn list(&self) -> Vec<api::Alarm> {
        let st = self.lock();
        st.active.values().cloned().chain(st.cleared.iter().rev().cloned()).collect()
    }

    /// Marks the raised alarm `name` about `subject` as acknowledged by `who` (once: a second
    /// acknowledgement keeps the first). Acknowledging changes no delivery: alarms notify once
    /// per raise and clear. `Err` says why there is nothing to acknowledge.
    /// The `bool` is true when this call acknowledged it.
    pub fn acknowledge(
        &self,
        name: &str,
        subject: &str,
        who: &str,
    ) -> Result<(api::Alarm, bool), String> {
        let mut st = self.lock();
        let Some(a) = st.active.get_mut(&(name.to_owned(), subject.to_owned())) else {
            let cleared = st.cleared.iter().any(|a| a.name == name && a.subject == subject);
            return Err(if cleared {
                format!(
                    "alarm `{name}` about `{subject}` has cleared; only raised alarms are acknowledged"
                )
            } else {
                format!("no alarm `{name}` about `{subject}` is raised (see `isthmus alarm list`)")
            });
        };
        let first = a.acknowledged.is_none();
        if first {
            a.acknowledged = Some(api::Acknowledgement { by: who.to_owned(), at: unix_now() });
        }
        let a = a.clone();
        if first {
            save(&st);
        }
        Ok((a, first))
    }

    /// How many alarms are raised.
    pub fn active_count(&self) -> usize {
        self.lock().active.len()
    }

    /// How many alarms are raised, per severity (every severity, zero included).
    pub fn active_by_severity(&self) -> BTreeMap<Severity, usize> {
        let st = self.lock();
        let mut m: BTreeMap<Severity, usize> = Severity::ALL.iter().map(|s| (*s, 0)).collect();
        for a in st.active.values() {
            *m.entry(a.severity).or_default() += 1;
        }
        m
    }

    /// Notifications dropped because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.lock().dropped
    }
}

/// Writes what survives a restart (see [`Alarms::persistent`]); a failure is logged, the
/// engine goes on from memory.
fn save(st: &State) {
    let Some(tree) = &st.store else { return };
    let r = Record {
        version: RECORD_VERSION,
        active: st.active.values().cloned().collect(),
        cleared: st.cleared.clone(),
        latched: st.latched.iter().map(|((l, s), m)| (*l, s.clone(), m.clone())).collect(),
    };
    let written = serde_json::to_vec(&r)
        .map_err(|e| e.to_string())
        .and_then(|v| tree.insert(RECORD_KEY, v).map_err(|e| e.to_string()))
        // sled makes a write durable only when flushed: a crash must not lose a clear.
        .and_then(|_| tree.flush().map_err(|e| e.to_string()));
    if let Err(e) = written {
        tracing::error!("the alarm state was not saved: {e}");
    }
}

fn push_cleared(st: &mut State, a: api::Alarm) {
    st.cleared.push(a);
    if st.cleared.len() > KEEP_CLEARED {
        st.cleared.remove(0);
    }
}

/// The health-loss condition: more than `percent` of the window's probes lost, once the window
/// holds at least `min_probes` (the check's failure threshold: one lost probe of one is no
/// verdict yet).
fn health_loss(tunnel: &str, h: &api::Health, percent: u32, min_probes: u32) -> Cond {
    if h.sent < min_probes.max(1) {
        return Cond::Unknown;
    }
    let lost = h.loss_ratio * 100.0;
    if lost > f64::from(percent) {
        Cond::Holds(format!(
            "health check of tunnel {tunnel} ({} -> {}) lost {} of the last {} probes ({lost:.0} %, threshold {percent} %)",
            h.source,
            h.destination,
            h.sent - h.received,
            h.sent,
        ))
    } else {
        Cond::Ended(format!(
            "health check of tunnel {tunnel} lost {lost:.0} % of the last {} probes (threshold {percent} %)",
            h.sent
        ))
    }
}

/// The health-latency condition: the window's median round trip over `ms`, once the window
/// holds at least [`LATENCY_MIN_ANSWERS`] answers (or the check's failure threshold, if more).
/// A median of three or more answers is not moved by one slow probe; a mean was, and one
/// 2-second answer at bring-up raised the alarm.
fn health_latency(tunnel: &str, h: &api::Health, ms: u32, min_answers: u32) -> Cond {
    let Some(median) =
        h.latency_median_ms.filter(|_| h.received >= min_answers.max(LATENCY_MIN_ANSWERS))
    else {
        return Cond::Unknown;
    };
    if median > f64::from(ms) {
        Cond::Holds(format!(
            "health check of tunnel {tunnel} ({} -> {}): median round trip {median:.1} ms over the last {} answers (threshold {ms} ms)",
            h.source, h.destination, h.received
        ))
    } else {
        Cond::Ended(format!(
            "health check of tunnel {tunnel}: median round trip {median:.1} ms (threshold {ms} ms)"
        ))
    }
}

fn enqueue(st: &mut State, t: Target, n: Notification) {
    tracing::warn!(alarm = %n.alarm, subject = %n.subject, state = n.state, target = %t.name, "{}", n.message);
    match &st.queue {
        Some(q) => {
            if q.try_send((t, n)).is_err() {
                st.dropped += 1;
            }
        }
        // Raised before delivery started (an upgrade that fell back is found at start).
        None if st.early.len() < QUEUE => st.early.push((t, n)),
        None => st.dropped += 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::obs::delivery::{deliver, webhook_client};
    use crate::obs::monitor::signal_of;
    use isthmus_config::Dur;
    use isthmus_ike::codec::ExchangeType;
    use isthmus_ike::{Cause, DownReason, Explanation};
    use isthmus_policy::{Notification as PluginNote, Suppression};
    use isthmus_tunnels::TunnelEvent;

    fn rule(name: &str, kind: AlarmKind, notify: &[&str]) -> isthmus_config::Alarm {
        isthmus_config::Alarm {
            name: name.into(),
            kind,
            tunnels: vec![],
            hold: Dur::secs(0),
            threshold: None,
            severity: Some(Severity::Warning),
            notify: notify.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn engine(rules: Vec<isthmus_config::Alarm>, targets: &[&str]) -> Alarms {
        setup(Alarms::default(), rules, targets)
    }

    fn setup(a: Alarms, rules: Vec<isthmus_config::Alarm>, targets: &[&str]) -> Alarms {
        {
            let mut st = a.lock();
            st.gateway = "gw".into();
            st.rules = rules;
            for t in targets {
                st.targets.insert(
                    t.to_string(),
                    Target {
                        name: t.to_string(),
                        url: format!("http://127.0.0.1:9/{t}"),
                        retries: 0,
                        timeout: Duration::from_secs(1),
                        secret: None,
                        ca: Vec::new(),
                    },
                );
            }
        }
        a
    }

    /// One evaluation round of the latched kinds for tunnel `t`, as `evaluate` does it.
    fn round(a: &Alarms, t: &str) {
        let rules = a.lock().rules.clone();
        let subject = format!("tunnel/{t}");
        let conds = rules
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let l = match r.kind {
                    AlarmKind::DpdTimeout => Latch::DpdTimeout,
                    _ => Latch::RekeyFailure,
                };
                (i, subject.clone(), a.latched(l, &subject))
            })
            .collect();
        let tr = a.update(&rules, conds, Instant::now());
        a.dispatch(tr, None);
    }

    fn forward(a: &Alarms, ev: &TunnelEvent) {
        if let Some(s) = signal_of(ev) {
            a.signal("to-idc", s, &ev.to_string());
        }
    }

    fn drain(rx: &mut mpsc::Receiver<(Target, Notification)>) -> Vec<(String, Notification)> {
        std::iter::from_fn(|| rx.try_recv().ok()).map(|(t, n)| (t.name, n)).collect()
    }

    /// A failed upgrade raises the built-in alarm to every target without a rule; it survives a
    /// new configuration and the rule rounds, is not sent twice for the same failure, and clears
    /// when a later upgrade passes.
    #[test]
    fn a_failed_upgrade_raises_an_alarm_until_a_later_upgrade_passes() {
        let a = engine(vec![rule("dpd", AlarmKind::DpdTimeout, &["ops"])], &["ops", "noc"]);
        let mut rx = a.test_queue();
        a.upgrade_passed();
        assert!(drain(&mut rx).is_empty(), "nothing raised, nothing to clear");
        let why = "firmware 1.2.0 (slot b) did not pass its health gate; the firmware fell back \
                   to 1.1.0 (slot a)";
        a.upgrade_failed(why);
        let sent = drain(&mut rx);
        let to: Vec<&str> = sent.iter().map(|(t, _)| t.as_str()).collect();
        assert_eq!(to, ["noc", "ops"]);
        assert!(sent.iter().all(|(_, n)| n.state == "raised" && n.alarm == UPGRADE_ALARM));
        assert_eq!(sent[0].1.severity, Severity::Critical);
        assert_eq!(sent[0].1.message, why);
        let l = a.list();
        assert_eq!((l[0].name.as_str(), l[0].subject.as_str()), ("upgrade-failed", "system"));
        assert_eq!((l[0].message.as_str(), l[0].cleared), (why, None));
        // The same failure found again (the next start) is not sent twice.
        a.upgrade_failed(why);
        assert!(drain(&mut rx).is_empty());
        // Rule rounds and a new configuration without such a rule leave it raised.
        round(&a, "to-idc");
        a.configure(
            &Config::from_toml(
                &isthmus_testkit::config::Gateway::new("gw")
                    .wan("wan0", "10.72.0.1/24", "10.72.0.254")
                    .toml(),
            )
            .unwrap(),
        );
        round(&a, "to-idc");
        assert_eq!(a.active_count(), 1);
        // A later upgrade passes its gate: cleared (to nobody now: the configuration has no
        // target), and listed as cleared.
        a.upgrade_passed();
        assert_eq!(a.active_count(), 0);
        assert!(drain(&mut rx).is_empty());
        let l = a.list();
        assert_eq!(l[0].name, "upgrade-failed");
        assert!(l[0].cleared.is_some());
    }

    /// An operator acknowledges a raised alarm: it stays raised and listed with who and when,
    /// sends nothing, keeps the first acknowledgement, and a new raise starts unacknowledged.
    /// Unknown and cleared alarms are refused with a reason.
    #[test]
    fn acknowledging_marks_a_raised_alarm_until_it_clears() {
        let a = engine(vec![], &["ops"]);
        let mut rx = a.test_queue();
        let e = a.acknowledge(UPGRADE_ALARM, UPGRADE_SUBJECT, "alice").unwrap_err();
        assert!(e.contains("no alarm `upgrade-failed` about `system` is raised"), "{e}");
        a.upgrade_failed("fell back");
        drain(&mut rx);
        let (acked, first) = a.acknowledge(UPGRADE_ALARM, UPGRADE_SUBJECT, "alice").unwrap();
        assert!(first);
        assert_eq!(acked.acknowledged.as_ref().map(|k| k.by.as_str()), Some("alice"));
        assert!(acked.cleared.is_none());
        let (again, first) = a.acknowledge(UPGRADE_ALARM, UPGRADE_SUBJECT, "bob").unwrap();
        assert!(!first);
        assert_eq!(again.acknowledged, acked.acknowledged, "the first acknowledgement stays");
        assert!(drain(&mut rx).is_empty(), "acknowledging notifies nobody");
        assert_eq!((a.active_count(), a.list()[0].acknowledged.is_some()), (1, true));
        // A different failure is a new raise: unacknowledged; the old one is listed as cleared
        // with its acknowledgement.
        a.upgrade_failed("fell back again");
        let l = a.list();
        assert_eq!((l[0].message.as_str(), l[0].acknowledged.as_ref()), ("fell back again", None));
        assert_eq!(l[1].acknowledged.as_ref().map(|k| k.by.as_str()), Some("alice"));
        a.upgrade_passed();
        let e = a.acknowledge(UPGRADE_ALARM, UPGRADE_SUBJECT, "alice").unwrap_err();
        assert!(e.contains("has cleared"), "{e}");
    }

    /// Notifications raised before delivery starts wait for it instead of being lost.
    #[tokio::test]
    async fn alarms_raised_before_delivery_starts_are_delivered() {
        let a = engine(vec![], &["ops"]);
        a.upgrade_failed("fell back");
        assert_eq!(a.lock().early.len(), 1);
        a.start_delivery();
        assert!(a.lock().early.is_empty());
        assert_eq!(a.dropped(), 0);
    }

    /// Issue 18: a restart neither raises again what was raised nor loses a clear. Raised and
    /// cleared alarms and latched conditions come back from the store; a clear says why; a
    /// record that does not read, or a store that does not open, starts the engine clean
    /// instead of stopping the daemon.
    #[test]
    fn alarm_state_survives_a_restart_and_a_bad_record_starts_clean() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("alarms");
        let rules = || {
            vec![
                rule("dpd", AlarmKind::DpdTimeout, &["ops"]),
                rule("rekey", AlarmKind::RekeyFailure, &["ops"]),
            ]
        };
        let raised_at = {
            let a = setup(Alarms::persistent(&path), rules(), &["ops"]);
            let mut rx = a.test_queue();
            a.signal("to-idc", Signal::DeadPeer, "IKE SA down: the peer stopped answering");
            a.signal("to-idc", Signal::RekeyFailed, "CREATE_CHILD_SA timed out");
            round(&a, "to-idc");
            a.signal("to-idc", Signal::Rekeyed, "rekeyed");
            round(&a, "to-idc");
            let sent = drain(&mut rx);
            let states: Vec<&str> = sent.iter().map(|(_, n)| n.state).collect();
            assert_eq!(states, ["raised", "raised", "cleared"], "{sent:?}");
            assert_eq!(sent[2].1.reason.as_deref(), Some("a rekey succeeded"));
            a.list()[0].raised
        };
        // The daemon restarts on the same store.
        let a = setup(Alarms::persistent(&path), rules(), &["ops"]);
        let mut rx = a.test_queue();
        round(&a, "to-idc");
        assert!(drain(&mut rx).is_empty(), "the restart sent something again");
        let l = a.list();
        assert_eq!(l.len(), 2, "{l:?}");
        assert_eq!((l[0].name.as_str(), l[0].raised, l[0].cleared), ("dpd", raised_at, None));
        assert_eq!(
            (l[1].name.as_str(), l[1].clear_reason.as_deref()),
            ("rekey", Some("a rekey succeeded"))
        );
        // The latched dead peer came back too: it clears when a new IKE SA is up, saying so.
        a.signal("to-idc", Signal::Up, "up");
        round(&a, "to-idc");
        let sent = drain(&mut rx);
        assert_eq!(sent.len(), 1, "{sent:?}");
        assert_eq!(
            (sent[0].1.state, sent[0].1.reason.as_deref()),
            ("cleared", Some("a new IKE SA is up"))
        );
        drop(a);

        // A record from a future layout, or garbage: logged, the engine starts clean.
        for bad in
            [&br#"{"version":99,"active":[],"cleared":[],"latched":[]}"#[..], &b"\xff not json"[..]]
        {
            {
                let db = sled::open(&path).unwrap();
                db.open_tree("alarms").unwrap().insert(RECORD_KEY, bad).unwrap();
                db.flush().unwrap();
            }
            let a = Alarms::persistent(&path);
            assert!(a.list().is_empty());
            // ... and writes a good record again.
            a.upgrade_failed("slot b failed its health gate");
            drop(a);
            assert_eq!(Alarms::persistent(&path).active_count(), 1);
        }
        // A store that does not open (here: a file where its directory should be).
        let broken = dir.path().join("broken");
        std::fs::write(&broken, b"not a sled database").unwrap();
        let a = Alarms::persistent(&broken);
        a.upgrade_failed("slot b failed its health gate");
        drop(a);
        assert_eq!(Alarms::persistent(&broken).active_count(), 1, "the new store keeps state");
        assert!(broken.with_extension("corrupt").exists(), "the old one was moved aside");
    }

    #[test]
    fn typed_dead_peer_event_latches_dpd_timeout_until_the_tunnel_is_up() {
        let a = engine(vec![rule("dpd", AlarmKind::DpdTimeout, &["ops"])], &["ops"]);
        let mut rx = a.test_queue();
        // Down for another reason: no DPD alarm, whatever the words say.
        forward(
            &a,
            &TunnelEvent::IkeDown {
                tunnel: "to-idc".into(),
                reason: "DPD dead liveness".into(),
                cause: DownReason::DeletedByPeer,
            },
        );
        round(&a, "to-idc");
        assert!(drain(&mut rx).is_empty());
        assert_eq!(a.active_count(), 0);
        // Down because the peer stopped answering (the driver's DownReason::DeadPeer).
        forward(
            &a,
            &TunnelEvent::IkeDown {
                tunnel: "to-idc".into(),
                reason: DownReason::DeadPeer.to_string(),
                cause: DownReason::DeadPeer,
            },
        );
        round(&a, "to-idc");
        let sent = drain(&mut rx);
        assert_eq!(sent.len(), 1, "{sent:?}");
        assert_eq!(sent[0].0, "ops");
        assert_eq!(sent[0].1.state, "raised");
        assert_eq!(sent[0].1.subject, "tunnel/to-idc");
        assert!(sent[0].1.message.contains("the peer stopped answering"), "{}", sent[0].1.message);
        assert_eq!(a.list()[0].name, "dpd");
        // Latched: still raised a round later, and not sent twice.
        round(&a, "to-idc");
        assert!(drain(&mut rx).is_empty());
        assert_eq!(a.active_count(), 1);
        // A new IKE SA clears it.
        forward(
            &a,
            &TunnelEvent::IkeUp {
                tunnel: "to-idc".into(),
                peer: "192.0.2.1:500".parse().unwrap(),
                suite: "aes256gcm16-prfsha256-x25519".into(),
                encap: false,
                rekeyed: false,
                version: 2,
            },
        );
        round(&a, "to-idc");
        let sent = drain(&mut rx);
        assert_eq!(sent.len(), 1);
        assert_eq!(sent[0].1.state, "cleared");
        assert_eq!(a.active_count(), 0);
        assert!(a.list()[0].cleared.is_some());
    }

    #[test]
    fn failed_create_child_sa_latches_rekey_failure_until_a_rekey_succeeds() {
        let a = engine(vec![rule("rekey", AlarmKind::RekeyFailure, &["ops"])], &["ops"]);
        let mut rx = a.test_queue();
        let failed = |exchange| {
            TunnelEvent::Failed(Explanation {
                tunnel: "to-idc".into(),
                peer: "192.0.2.1:500".parse().unwrap(),
                exchange,
                cause: Cause::Timeout { tries: 5 },
                ours: "ESP aes256gcm16".into(),
                theirs: None,
                suggestion: None,
            })
        };
        forward(&a, &failed(ExchangeType::IKE_AUTH));
        round(&a, "to-idc");
        assert_eq!(a.active_count(), 0, "an IKE_AUTH failure is not a rekey failure");
        forward(&a, &failed(ExchangeType::CREATE_CHILD_SA));
        round(&a, "to-idc");
        assert_eq!(drain(&mut rx).len(), 1);
        assert_eq!(a.active_count(), 1);
        forward(
            &a,
            &TunnelEvent::ChildUp {
                tunnel: "to-idc".into(),
                child: "net".into(),
                spi_in: 1,
                spi_out: 2,
                esp: "aes256gcm16".into(),
                rekey_of: Some(3),
            },
        );
        round(&a, "to-idc");
        assert_eq!(a.active_count(), 0);
        assert_eq!(drain(&mut rx)[0].1.state, "cleared");
    }

    #[test]
    fn the_hook_regrades_redirects_suppresses_and_silences() {
        let a = engine(vec![rule("dpd", AlarmKind::DpdTimeout, &["ops"])], &["ops", "pager"]);
        let mut rx = a.test_queue();
        let seen: Arc<Mutex<Vec<AlarmEvent>>> = Arc::default();
        let log = seen.clone();
        a.set_hook(Some(Arc::new(move |e: &AlarmEvent| {
            log.lock().unwrap().push(e.clone());
            if e.raised {
                vec![
                    AlarmAction::SetSeverity(isthmus_policy::Severity::Critical),
                    AlarmAction::Notify(PluginNote {
                        channel: "pager".into(),
                        severity: isthmus_policy::Severity::Critical,
                        message: format!("[CRITICAL] {}", e.message),
                    }),
                    AlarmAction::Suppress(Suppression {
                        kind: e.kind,
                        subject: e.subject.clone(),
                        for_ms: 60_000,
                    }),
                ]
            } else {
                // The plugin decides a clear is not worth telling.
                vec![]
            }
        })));
        a.signal("to-idc", Signal::DeadPeer, "IKE SA down: the peer stopped answering");
        round(&a, "to-idc");
        let sent = drain(&mut rx);
        assert_eq!(sent.len(), 1, "{sent:?}");
        assert_eq!(sent[0].0, "pager", "the plugin's channel, not the rule's target");
        assert_eq!(sent[0].1.severity, Severity::Critical);
        assert!(sent[0].1.message.starts_with("[CRITICAL] IKE SA down"));
        assert_eq!(a.list()[0].severity, Severity::Critical, "re-graded in the list too");
        {
            let seen = seen.lock().unwrap();
            assert_eq!(seen.len(), 1);
            assert_eq!(seen[0].kind, EventKind::DpdTimeout);
            assert_eq!(seen[0].subject, "tunnel/to-idc");
            assert_eq!(seen[0].severity, isthmus_policy::Severity::Warning);
        }
        // The plugin suppressed this kind about this subject: the clear and a new raise reach
        // neither the hook nor a target, but the list still shows them.
        a.signal("to-idc", Signal::Up, "up");
        round(&a, "to-idc");
        assert_eq!(a.active_count(), 0);
        a.signal("to-idc", Signal::DeadPeer, "down again");
        round(&a, "to-idc");
        assert_eq!(a.active_count(), 1, "suppressed alarms are still listed");
        assert!(drain(&mut rx).is_empty());
        assert_eq!(seen.lock().unwrap().len(), 1);
        // Once the suppression is over: the hook sees the clear and answers nothing, so nothing
        // is delivered.
        a.lock().suppressed.clear();
        a.signal("to-idc", Signal::Up, "up");
        round(&a, "to-idc");
        assert_eq!(seen.lock().unwrap().len(), 2);
        assert!(!seen.lock().unwrap()[1].raised);
        assert!(drain(&mut rx).is_empty());
        // Without a hook: the rule's own target at the rule's severity.
        a.set_hook(None);
        a.signal("to-idc", Signal::DeadPeer, "down");
        round(&a, "to-idc");
        let sent = drain(&mut rx);
        assert_eq!(sent.len(), 1);
        assert_eq!((sent[0].0.as_str(), sent[0].1.severity), ("ops", Severity::Warning));
    }

    #[test]
    fn health_conditions_read_the_window() {
        let h = api::Health {
            source: "10.63.1.1".into(),
            destination: "10.63.2.1".into(),
            state: api::HealthState::Unhealthy,
            sent: 10,
            received: 6,
            loss_ratio: 0.4,
            latency_avg_ms: Some(35.0),
            latency_median_ms: Some(33.0),
            latency_min_ms: Some(20.0),
            latency_max_ms: Some(50.0),
            jitter_ms: Some(4.0),
            probes_total: 10,
            last_error: None,
        };
        let holds = |c: Cond| match c {
            Cond::Holds(m) => m,
            other => panic!("{other:?}"),
        };
        let m = holds(health_loss("to-idc", &h, 30, 3));
        assert!(m.contains("lost 4 of the last 10 probes (40 %, threshold 30 %)"), "{m}");
        assert!(matches!(health_loss("to-idc", &h, 40, 3), Cond::Ended(m) if m.contains("40 %")));
        assert_eq!(health_loss("to-idc", &h, 30, 11), Cond::Unknown, "fewer probes than needed");
        assert!(holds(health_latency("to-idc", &h, 30, 1)).contains("median round trip 33.0 ms"));
        assert!(matches!(health_latency("to-idc", &h, 35, 1), Cond::Ended(_)));
        let none = api::Health { sent: 0, received: 0, latency_median_ms: None, ..h };
        assert_eq!(health_loss("to-idc", &none, 0, 0), Cond::Unknown);
        assert_eq!(health_latency("to-idc", &none, 0, 0), Cond::Unknown);
    }

    /// Issue 18: one slow probe at bring-up (the first through a new SA) must not page. The
    /// mean of the window did: one 2-second answer among fast ones tripped a 100 ms threshold.
    /// Now the median of at least three answers decides, so it takes most answers being slow.
    #[test]
    fn one_slow_probe_at_bring_up_does_not_trip_the_latency_alarm() {
        use crate::obs::health::Window;
        let spec = isthmus_config::HealthCheck {
            source: "10.63.1.1".parse().unwrap(),
            destination: "10.63.2.1".parse().unwrap(),
            interval: Dur::secs(1),
            timeout: Dur::secs(3),
            failure_threshold: 3,
            recovery_threshold: 2,
            latency_threshold: None,
        };
        let mut w = Window::new(spec);
        let ms = |n| Ok(Duration::from_millis(n));
        // The first probe waits for the SA and ARP: 2 s. Alone, it is no verdict.
        w.record(ms(2000));
        assert_eq!(health_latency("t", &w.report(), 100, 3), Cond::Unknown);
        for _ in 0..4 {
            w.record(ms(20));
            let c = health_latency("t", &w.report(), 100, 3);
            assert!(!matches!(c, Cond::Holds(_)), "{c:?}");
        }
        assert!(w.report().latency_avg_ms.unwrap() > 100.0, "the mean would have paged");
        // A tunnel that is slow for real still trips it.
        for _ in 0..5 {
            w.record(ms(300));
        }
        assert!(matches!(health_latency("t", &w.report(), 100, 3), Cond::Holds(_)));
    }

    #[test]
    fn debug_output_redacts_the_webhook_secret() {
        let t = Target {
            name: "ops".into(),
            url: "https://example.net/hook".into(),
            retries: 1,
            timeout: Duration::from_secs(1),
            secret: Some("s3cr3t-hmac-key".into()),
            ca: Vec::new(),
        };
        let d = format!("{t:?}");
        assert!(!d.contains("s3cr3t"), "{d}");
        assert!(d.contains("<redacted>"));
    }

    #[test]
    fn hmac_matches_rfc4231_test_case_2() {
        // RFC 4231 §4.3: key "Jefe", data "what do ya want for nothing?".
        assert_eq!(
            crate::obs::delivery::hmac_sha256(b"Jefe", b"what do ya want for nothing?"),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    /// An HTTPS receiver on 127.0.0.1 whose certificate a fresh private CA signed: the CA's PEM
    /// and the receiver's URL (with a token in it, as real webhook URLs have); every POST body
    /// it receives goes to the channel.
    async fn https_receiver() -> (String, String, mpsc::UnboundedReceiver<String>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca.distinguished_name.push(rcgen::DnType::CommonName, "test webhook CA");
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let leaf = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()])
            .unwrap()
            .signed_by(&key, &ca_cert, &ca_key)
            .unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let cfg = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![leaf.der().clone()],
                rustls::pki_types::PrivatePkcs8KeyDer::from(key.serialize_der()).into(),
            )
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("https://{}/hook?token=s3cret-token", listener.local_addr().unwrap());
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (acceptor, tx) = (acceptor.clone(), tx.clone());
                tokio::spawn(async move {
                    // A failed handshake (the client refused the certificate) ends here.
                    let Ok(mut tls) = acceptor.accept(tcp).await else { return };
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    loop {
                        let Ok(n) = tls.read(&mut chunk).await else { return };
                        if n == 0 {
                            return;
                        }
                        buf.extend_from_slice(&chunk[..n]);
                        let text = String::from_utf8_lossy(&buf).into_owned();
                        let Some((head, body)) = text.split_once("\r\n\r\n") else { continue };
                        let len = head
                            .lines()
                            .find_map(|l| {
                                l.to_lowercase()
                                    .strip_prefix("content-length:")
                                    .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                            })
                            .unwrap_or(0);
                        if body.len() >= len {
                            let _ = tx.send(body.to_owned());
                            let _ = tls
                                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                                .await;
                            let _ = tls.shutdown().await;
                            return;
                        }
                    }
                });
            }
        });
        (ca_cert.pem(), url, rx)
    }

    /// Issue 14, item 6: an HTTPS webhook whose receiver a private CA vouches for is reached
    /// when `notify.ca` names that CA, and without it the delivery fails with the TLS cause in
    /// the log (and the error), never the URL's token. Before, the client had no roots at all
    /// and logged only `webhook unreachable: error sending request`.
    #[tokio::test]
    async fn https_webhooks_trust_the_configured_ca_and_log_the_tls_cause() {
        let (ca_pem, url, mut received) = https_receiver().await;
        let dir = std::env::temp_dir().join(format!("isthmus-webhook-ca-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let ca_file = dir.join("ca.pem");
        std::fs::write(&ca_file, &ca_pem).unwrap();
        let doc = |ca: &str| {
            isthmus_testkit::config::Gateway::new("gw")
                .wan("wan0", "10.62.0.1/24", "10.62.0.254")
                .lan("lan", "lan0", "10.62.1.1/24")
                .push(&format!(
                    "[[notify]]\nname = \"ops\"\nwebhook = \"{url}\"\nretries = 0\n{ca}"
                ))
                .toml()
        };

        // With the CA configured: the receiver gets the notification.
        let cfg = Config::check(&doc(&format!("ca = \"{}\"\n", ca_file.display())))
            .unwrap_or_else(|e| panic!("{e}"))
            .config;
        let a = Alarms::default();
        a.configure(&cfg);
        let t = a.lock().targets["ops"].clone();
        assert_eq!(t.ca.len(), 1);
        a.start_delivery();
        a.upgrade_failed("slot b failed its health gate");
        let body = tokio::time::timeout(Duration::from_secs(20), received.recv())
            .await
            .expect("the HTTPS webhook was never reached")
            .unwrap();
        assert!(body.contains("upgrade-failed") && body.contains("health gate"), "{body}");

        // Without it: refused, and the cause is named.
        let cfg = Config::check(&doc("")).unwrap_or_else(|e| panic!("{e}")).config;
        let a = Alarms::default();
        a.configure(&cfg);
        let t = a.lock().targets["ops"].clone();
        let n = Notification {
            id: "test".into(),
            state: "raised",
            alarm: "test".into(),
            subject: "system".into(),
            severity: Severity::Warning,
            message: "test".into(),
            reason: None,
            time: 0,
            gateway: "gw".into(),
        };
        let err = deliver(&webhook_client(&t.ca).unwrap(), &t, &n).await.unwrap_err();
        assert!(err.contains("invalid peer certificate") && err.contains("UnknownIssuer"), "{err}");
        assert!(!err.contains("s3cret"), "{err}");
        assert!(received.try_recv().is_err(), "delivered without trusting the receiver");

        // A bundle that is missing or not PEM is a validation error naming its path.
        let bad = dir.join("not-a-ca.pem");
        std::fs::write(&bad, "hello\n").unwrap();
        for (f, why) in [(dir.join("missing.pem"), "cannot read"), (bad, "no PEM certificate")] {
            let e = Config::check(&doc(&format!("ca = \"{}\"\n", f.display())))
                .err()
                .unwrap_or_else(|| panic!("{} accepted", f.display()));
            let e = e.to_string();
            assert!(
                e.contains("notify[0].ca") && e.contains(&*f.to_string_lossy()) && e.contains(why),
                "{e}"
            );
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}

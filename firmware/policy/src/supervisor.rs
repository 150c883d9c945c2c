//! Containment and publication.
//!
//! The [`Supervisor`] holds the plugin installed for each hook and calls it on behalf of the
//! control plane. A call that traps, runs past its deadline or exhausts its memory quarantines
//! the plugin: for 1 s after the first fault, doubling with each further fault within ten
//! minutes, up to five minutes, so a crash loop costs little. Each fault queues a
//! `plugin-fault` alarm event ([`Supervisor::take_alarms`]). Nothing is published from a failed
//! call: the last good table keeps answering lookups.
//!
//! A table a plugin returns is validated before it is published: bounded sizes, identifiers
//! present, every `protect` naming a configured tunnel and CHILD SA, every chain bound to a known
//! attachment, `punt` rules only from a plugin that can decide them. It is then published whole
//! through [`PolicyTables`] (an `ArcSwap`) with a new generation number; readers never see a torn
//! table, and flow entries that carry an older generation are re-evaluated (see
//! [`isthmus_tables::flow`]).

use std::collections::{BTreeSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use arc_swap::{ArcSwap, Guard};
use isthmus_tables::flow::PuntRequest;
use isthmus_tables::sg::{Action, ChainKind, ChainSpec, SgTable};
use isthmus_tables::spd::{SpdAction, SpdEntry, SpdTable};

use crate::host::{CallError, LoadedPlugin};
use crate::model::{
    AlarmAction, AlarmEvent, EventKind, PuntDecision, Severity, SgGroup, SpdPolicy,
};
use crate::package::Hook;
use crate::reference;
use crate::{PolicyError, Result};

/// Bounds on what a plugin may publish, and the quarantine schedule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Most SPD entries.
    pub max_spd_entries: usize,
    /// Most rules over all chains of a security-group table.
    pub max_sg_rules: usize,
    /// First quarantine.
    pub quarantine_base: Duration,
    /// Longest quarantine.
    pub quarantine_max: Duration,
    /// Faults older than this no longer lengthen the quarantine.
    pub fault_window: Duration,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_spd_entries: 50_000,
            max_sg_rules: 200_000,
            quarantine_base: Duration::from_secs(1),
            quarantine_max: Duration::from_secs(300),
            fault_window: Duration::from_secs(600),
        }
    }
}

/// The published tables the dataplane reads. Cheap to read from any thread.
#[derive(Debug)]
pub struct PolicyTables {
    spd: ArcSwap<SpdTable>,
    sg: ArcSwap<SgTable>,
    generation: AtomicU64,
}

impl Default for PolicyTables {
    fn default() -> PolicyTables {
        PolicyTables::new()
    }
}

impl PolicyTables {
    /// Empty tables at generation 0 (no SPD entry: nothing is protected or bypassed; no chain:
    /// no filtering).
    pub fn new() -> PolicyTables {
        PolicyTables {
            spd: ArcSwap::from_pointee(SpdTable::new(0, Vec::new())),
            sg: ArcSwap::from_pointee(SgTable::empty(0)),
            generation: AtomicU64::new(0),
        }
    }

    /// The current SPD table.
    #[inline]
    pub fn spd(&self) -> Guard<Arc<SpdTable>> {
        self.spd.load()
    }

    /// The current security-group table.
    #[inline]
    pub fn sg(&self) -> Guard<Arc<SgTable>> {
        self.sg.load()
    }

    /// A fresh generation number (shared by both tables, strictly increasing).
    pub fn next_generation(&self) -> u64 {
        self.generation.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Publishes an SPD table.
    pub fn publish_spd(&self, t: SpdTable) {
        self.spd.store(Arc::new(t));
    }

    /// Publishes a security-group table.
    pub fn publish_sg(&self, t: SgTable) {
        self.sg.store(Arc::new(t));
    }
}

#[derive(Default)]
struct Health {
    faults: VecDeque<Instant>,
    until: Option<Instant>,
    last: String,
}

#[derive(Default)]
struct Slot {
    plugin: Option<Arc<LoadedPlugin>>,
    health: Health,
}

/// A hook's state, for status displays.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HookStatus {
    /// Installed plugin (`name@version`), if any.
    pub plugin: Option<String>,
    /// Faults within the fault window.
    pub recent_faults: usize,
    /// Quarantine time left.
    pub quarantined_for: Option<Duration>,
    /// The last fault.
    pub last_fault: Option<String>,
}

/// Calls plugins contained and publishes what they compile. See the module documentation.
pub struct Supervisor {
    tables: Arc<PolicyTables>,
    limits: Limits,
    slots: Mutex<[Slot; 3]>,
    alarms: Mutex<Vec<AlarmEvent>>,
    builtin_alarm: Mutex<reference::AlarmNotify>,
    started: Instant,
}

impl std::fmt::Debug for Supervisor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Supervisor").field("limits", &self.limits).finish_non_exhaustive()
    }
}

fn slot_of(h: Hook) -> usize {
    match h {
        Hook::Spd => 0,
        Hook::SecurityGroup => 1,
        Hook::Alarm => 2,
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Supervisor {
    /// A supervisor publishing into `tables`.
    pub fn new(tables: Arc<PolicyTables>, limits: Limits) -> Supervisor {
        Supervisor {
            tables,
            limits,
            slots: Mutex::new(Default::default()),
            alarms: Mutex::new(Vec::new()),
            builtin_alarm: Mutex::new(reference::AlarmNotify::new("")),
            started: Instant::now(),
        }
    }

    /// The tables it publishes into.
    pub fn tables(&self) -> &Arc<PolicyTables> {
        &self.tables
    }

    /// Installs `plugin` for its hook (a hot swap when one is installed: calls in flight finish
    /// on the old one). Returns the previous plugin.
    pub fn install(&self, plugin: LoadedPlugin) -> Option<Arc<LoadedPlugin>> {
        let mut slots = lock(&self.slots);
        let slot = &mut slots[slot_of(plugin.manifest().hook)];
        slot.health = Health::default();
        slot.plugin.replace(Arc::new(plugin))
    }

    /// Removes the plugin of `hook`; the built-in behaviour applies again.
    pub fn uninstall(&self, hook: Hook) -> Option<Arc<LoadedPlugin>> {
        let mut slots = lock(&self.slots);
        let slot = &mut slots[slot_of(hook)];
        slot.health = Health::default();
        slot.plugin.take()
    }

    /// The status of `hook` at `now`.
    pub fn status(&self, hook: Hook, now: Instant) -> HookStatus {
        let slots = lock(&self.slots);
        let s = &slots[slot_of(hook)];
        HookStatus {
            plugin: s
                .plugin
                .as_ref()
                .map(|p| format!("{}@{}", p.manifest().name, p.manifest().version)),
            recent_faults: s.health.faults.len(),
            quarantined_for: s.health.until.and_then(|u| u.checked_duration_since(now)),
            last_fault: (!s.health.last.is_empty()).then(|| s.health.last.clone()),
        }
    }

    /// Alarm events raised by plugin faults since the last call.
    pub fn take_alarms(&self) -> Vec<AlarmEvent> {
        std::mem::take(&mut *lock(&self.alarms))
    }

    fn raise(&self, name: &str, severity: Severity, message: String, now: Instant) {
        lock(&self.alarms).push(AlarmEvent {
            kind: EventKind::PluginFault,
            subject: name.to_owned(),
            raised: true,
            severity,
            message,
            at_ms: now.saturating_duration_since(self.started).as_millis() as u64,
        });
    }

    /// The installed plugin of `hook`, unless quarantined at `now`.
    fn ready(&self, hook: Hook, now: Instant) -> Result<Option<Arc<LoadedPlugin>>> {
        let slots = lock(&self.slots);
        let s = &slots[slot_of(hook)];
        let Some(p) = &s.plugin else { return Ok(None) };
        if let Some(until) = s.health.until
            && now < until
        {
            return Err(PolicyError::Quarantined {
                name: p.manifest().name.clone(),
                remaining_ms: (until - now).as_millis() as u64,
                last_fault: s.health.last.clone(),
            });
        }
        Ok(Some(p.clone()))
    }

    fn call<R>(
        &self,
        plugin: &LoadedPlugin,
        now: Instant,
        f: impl FnOnce(&LoadedPlugin) -> Result<R, CallError>,
    ) -> Result<R> {
        let name = plugin.manifest().name.clone();
        match f(plugin) {
            Ok(r) => Ok(r),
            Err(CallError::Plugin(message)) => Err(PolicyError::PluginError { name, message }),
            Err(CallError::Fault(fault)) => {
                let quarantine = {
                    let mut slots = lock(&self.slots);
                    let s = &mut slots[slot_of(plugin.manifest().hook)];
                    let same = s.plugin.as_ref().is_some_and(|p| p.digest() == plugin.digest());
                    let h = &mut s.health;
                    h.faults.push_back(now);
                    while h.faults.front().is_some_and(|t| {
                        now.saturating_duration_since(*t) > self.limits.fault_window
                    }) {
                        h.faults.pop_front();
                    }
                    let n = h.faults.len().clamp(1, 20) as u32;
                    let q = self
                        .limits
                        .quarantine_base
                        .saturating_mul(1 << (n - 1))
                        .min(self.limits.quarantine_max);
                    if same {
                        h.until = Some(now + q);
                        h.last = fault.to_string();
                    }
                    q
                };
                tracing::warn!(plugin = name, %fault, "plugin quarantined");
                self.raise(
                    &name,
                    Severity::Critical,
                    format!(
                        "{fault}; quarantined for {} ms, the last good table stays",
                        quarantine.as_millis()
                    ),
                    now,
                );
                Err(PolicyError::Fault {
                    name,
                    fault,
                    quarantine_ms: quarantine.as_millis() as u64,
                })
            }
        }
    }

    fn invalid(&self, name: &str, why: String, now: Instant) -> PolicyError {
        self.raise(name, Severity::Warning, format!("invalid table refused: {why}"), now);
        PolicyError::InvalidTable { name: name.to_owned(), why }
    }

    /// Compiles and publishes the SPD table. `tunnels` lists each configured tunnel with its
    /// CHILD SAs (what a `protect` may name). Returns the new generation.
    pub fn compile_spd(
        &self,
        policies: &[SpdPolicy],
        tunnels: &[(String, Vec<String>)],
        now: Instant,
    ) -> Result<u64> {
        let (name, entries) = match self.ready(Hook::Spd, now)? {
            Some(p) => {
                let e = self.call(&p, now, |p| p.call_spd(policies))?;
                (p.manifest().name.clone(), e)
            }
            None => return self.compile_spd_builtin(policies, tunnels, now),
        };
        self.publish_spd_entries(&name, entries, tunnels, now)
    }

    /// Compiles and publishes the SPD table with the builtin reference
    /// ([`reference::spd_order`], the bundled default's semantics) whatever plugin is installed:
    /// the fallback when a faulting plugin has no good table of its own to leave in force.
    pub fn compile_spd_builtin(
        &self,
        policies: &[SpdPolicy],
        tunnels: &[(String, Vec<String>)],
        now: Instant,
    ) -> Result<u64> {
        self.publish_spd_entries("builtin", reference::spd_order(policies), tunnels, now)
    }

    fn publish_spd_entries(
        &self,
        name: &str,
        entries: Vec<SpdEntry>,
        tunnels: &[(String, Vec<String>)],
        now: Instant,
    ) -> Result<u64> {
        self.validate_spd(&entries, tunnels).map_err(|why| self.invalid(name, why, now))?;
        let generation = self.tables.next_generation();
        self.tables.publish_spd(SpdTable::new(generation, entries));
        Ok(generation)
    }

    fn validate_spd(
        &self,
        entries: &[SpdEntry],
        tunnels: &[(String, Vec<String>)],
    ) -> Result<(), String> {
        if entries.len() > self.limits.max_spd_entries {
            return Err(format!(
                "{} entries; at most {} are allowed",
                entries.len(),
                self.limits.max_spd_entries
            ));
        }
        for e in entries {
            if e.id.is_empty() || e.id.len() > 256 {
                return Err("an entry's rule identifier must be 1 to 256 bytes".into());
            }
            if e.selector.local.addr().is_ipv4() != e.selector.remote.addr().is_ipv4() {
                return Err(format!("entry `{}` mixes IPv4 and IPv6", e.id));
            }
            if let SpdAction::Protect { tunnel, child } = &e.action {
                let Some((_, children)) = tunnels.iter().find(|(t, _)| t == tunnel) else {
                    return Err(format!(
                        "entry `{}` protects through tunnel `{tunnel}`, which is not configured",
                        e.id
                    ));
                };
                if !children.iter().any(|c| c == child) {
                    return Err(format!(
                        "entry `{}` names CHILD SA `{child}`, which tunnel `{tunnel}` does not have",
                        e.id
                    ));
                }
            }
        }
        Ok(())
    }

    /// Compiles and publishes the security-group table. `attachments` lists the tunnels and
    /// LANs chains may be bound to. Returns the new generation.
    pub fn compile_sg(
        &self,
        groups: &[SgGroup],
        acls: &[SgGroup],
        attachments: &[String],
        now: Instant,
    ) -> Result<u64> {
        self.compile_sg_chains(groups, acls, attachments, now).map(|(g, _)| g)
    }

    /// [`Supervisor::compile_sg`], also returning the validated chains it published, for a
    /// caller that builds its own copy of the table (a dataplane that takes tables by value).
    pub fn compile_sg_chains(
        &self,
        groups: &[SgGroup],
        acls: &[SgGroup],
        attachments: &[String],
        now: Instant,
    ) -> Result<(u64, Vec<ChainSpec>)> {
        let (name, punt, chains) = match self.ready(Hook::SecurityGroup, now)? {
            Some(p) => {
                let c = self.call(&p, now, |p| p.call_sg(groups, acls))?;
                (p.manifest().name.clone(), p.has_punt(), c)
            }
            None => return self.compile_sg_builtin(groups, acls, attachments, now),
        };
        self.publish_sg_chains(&name, punt, chains, attachments, now)
    }

    /// [`Supervisor::compile_sg_chains`] with the builtin reference ([`reference::sg_compile`])
    /// whatever plugin is installed: the fallback when a faulting plugin has no good table of
    /// its own to leave in force.
    pub fn compile_sg_builtin(
        &self,
        groups: &[SgGroup],
        acls: &[SgGroup],
        attachments: &[String],
        now: Instant,
    ) -> Result<(u64, Vec<ChainSpec>)> {
        let chains = reference::sg_compile(groups, acls, false)
            .map_err(|message| PolicyError::PluginError { name: "builtin".into(), message })?;
        self.publish_sg_chains("builtin", false, chains, attachments, now)
    }

    fn publish_sg_chains(
        &self,
        name: &str,
        punt: bool,
        chains: Vec<ChainSpec>,
        attachments: &[String],
        now: Instant,
    ) -> Result<(u64, Vec<ChainSpec>)> {
        self.validate_sg(&chains, attachments, punt).map_err(|why| self.invalid(name, why, now))?;
        let generation = self.tables.next_generation();
        let table = SgTable::build(generation, &chains)
            .map_err(|e| self.invalid(name, e.to_string(), now))?;
        self.tables.publish_sg(table);
        Ok((generation, chains))
    }

    fn validate_sg(
        &self,
        chains: &[ChainSpec],
        attachments: &[String],
        punt: bool,
    ) -> Result<(), String> {
        let total: usize = chains.iter().map(|c| c.rules.len()).sum();
        if total > self.limits.max_sg_rules {
            return Err(format!("{total} rules; at most {} are allowed", self.limits.max_sg_rules));
        }
        let known: BTreeSet<&str> = attachments.iter().map(String::as_str).collect();
        for c in chains {
            if !known.contains(c.attachment.as_str()) {
                return Err(format!(
                    "a chain is bound to `{}`, which is not a configured tunnel or LAN",
                    c.attachment
                ));
            }
            let punts = c.rules.iter().any(|r| r.action == Action::Punt)
                || c.default_action == Action::Punt;
            if punts && (!punt || c.kind == ChainKind::NetworkAcl) {
                return Err(format!(
                    "chain {}/{:?}/{:?} punts, but {}",
                    c.attachment,
                    c.kind,
                    c.direction,
                    if c.kind == ChainKind::NetworkAcl {
                        "ACLs are stateless"
                    } else {
                        "the plugin has no punt path"
                    }
                ));
            }
        }
        Ok(())
    }

    /// Asks the security-group plugin about punted flows, in one batch. `None` for a flow means
    /// no decision (no punt-capable plugin, quarantine, fault): the flow table's default applies
    /// when its punt timeout passes.
    pub fn decide(&self, reqs: &[PuntRequest], now: Instant) -> Vec<Option<PuntDecision>> {
        let none = || reqs.iter().map(|_| None).collect();
        let Ok(Some(p)) = self.ready(Hook::SecurityGroup, now) else { return none() };
        if !p.has_punt() || reqs.is_empty() {
            return none();
        }
        // An owned snapshot: the plugin call may take a while, and a guard is meant to be short.
        let table = Guard::into_inner(self.tables.sg());
        let att = |r: &PuntRequest| table.attachment_name(r.attachment).unwrap_or("?").to_owned();
        let rule = |r: &PuntRequest| {
            table.rule_name(r.attachment, ChainKind::SecurityGroup, r.direction, r.rule).to_owned()
        };
        match self.call(&p, now, |p| p.call_decide(&att, reqs, &rule)) {
            Ok(d) => d,
            Err(_) => none(),
        }
    }

    /// Runs the alarm hook on `event`. Without a plugin, or when it faults or is quarantined,
    /// the built-in `alarm-notify` semantics answer, so alarms still go out.
    pub fn on_event(&self, event: &AlarmEvent, now: Instant) -> Vec<AlarmAction> {
        if let Ok(Some(p)) = self.ready(Hook::Alarm, now)
            && let Ok(actions) = self.call(&p, now, |p| p.call_alarm(event))
        {
            return actions;
        }
        lock(&self.builtin_alarm).on_event(event)
    }
}

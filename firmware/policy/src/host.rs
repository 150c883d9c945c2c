//! wasmtime's component model behind a small API.
//!
//! One [`PluginHost`] owns the engine (Cranelift, component model, epoch interruption; no async,
//! no component-model concurrency, no GC) and a ticker thread that advances the engine's epoch.
//! [`PluginHost::load`] compiles a verified component once, checks that it exports what its
//! manifest's hook needs and imports nothing it was not granted, and pre-links it
//! (`InstancePre`). Each call then runs in a store with a memory cap (`StoreLimits`) and an epoch
//! deadline. A plugin's instance lives across calls (the alarm plugin keeps state) and is thrown
//! away after any fault. Fuel is not used: epoch checks cost less per loop iteration and bound
//! wall time, which is what matters here.
//!
//! Host imports: `isthmus:policy/host` (log, config) always; `isthmus:policy/clock` only with
//! the `clock` capability. WASI imports that Rust's `wasm32-wasip2` target links in (stdio,
//! environment, exit) are defined as traps: a plugin that calls them faults.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use wasmtime::component::{Component, Instance, InstancePre, Linker, ResourceTable};
use wasmtime::{Config, Engine, Store, StoreLimits, StoreLimitsBuilder};

use crate::model::{
    AlarmAction, AlarmEvent, EventKind, Notification, PuntDecision, Severity, SgGroup, SpdPolicy,
    Suppression,
};
use crate::package::{Capability, Hook, Manifest, VerifiedPlugin};
use crate::{Fault, PolicyError, Result};
use isthmus_tables::flow::PuntRequest;
use isthmus_tables::sg::{Action, ChainKind, ChainSpec, Direction, Rule};
use isthmus_tables::spd::{Selector, SpdAction, SpdEntry};
use isthmus_tables::{FlowKey, PortRange, Prefix};

mod bindings {
    wasmtime::component::bindgen!({
        world: "host-view",
        path: "../../wit",
    });
}

use bindings::exports::isthmus::policy::{
    alarm as walarm, punt as wpunt, security_group as wsg, spd as wspd,
};
use bindings::isthmus::policy::{clock as wclock, host as whost, types as wt};

/// Limits of every plugin call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostConfig {
    /// Most linear memory one plugin instance may have.
    pub memory_bytes: usize,
    /// Longest one call may run.
    pub call_deadline: Duration,
    /// Epoch tick: deadlines are rounded up to it.
    pub epoch_tick: Duration,
    /// Most log lines one call may write.
    pub log_lines_per_call: u32,
}

impl Default for HostConfig {
    fn default() -> HostConfig {
        HostConfig {
            memory_bytes: 64 << 20,
            call_deadline: Duration::from_secs(2),
            epoch_tick: Duration::from_millis(5),
            log_lines_per_call: 100,
        }
    }
}

/// Wall-clock time for plugins with the `clock` capability.
pub trait Clock: Send + Sync {
    /// Seconds since the Unix epoch.
    fn now_unix(&self) -> u64;
    /// Local time offset from UTC, minutes.
    fn utc_offset_minutes(&self) -> i32;
}

/// The system clock with a configured UTC offset.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock {
    /// Offset of local time from UTC, minutes.
    pub utc_offset_minutes: i32,
}

impl Clock for SystemClock {
    fn now_unix(&self) -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
    }
    fn utc_offset_minutes(&self) -> i32 {
        self.utc_offset_minutes
    }
}

/// The engine and its epoch ticker.
pub struct PluginHost {
    engine: Engine,
    cfg: HostConfig,
    stop: Arc<AtomicBool>,
}

impl std::fmt::Debug for PluginHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginHost").field("cfg", &self.cfg).finish_non_exhaustive()
    }
}

impl Drop for PluginHost {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

impl PluginHost {
    /// An engine with `cfg`'s limits and its epoch ticker thread (stops when the host is dropped).
    pub fn new(cfg: HostConfig) -> Result<PluginHost> {
        let mut wc = Config::new();
        wc.wasm_component_model(true);
        wc.epoch_interruption(true);
        wc.max_wasm_stack(1 << 20);
        let engine = Engine::new(&wc).map_err(|e| PolicyError::Engine(e.to_string()))?;
        let stop = Arc::new(AtomicBool::new(false));
        let (e, s, tick) = (engine.clone(), stop.clone(), cfg.epoch_tick);
        std::thread::Builder::new()
            .name("plugin-epoch".into())
            .spawn(move || {
                while !s.load(Ordering::Relaxed) {
                    std::thread::sleep(tick);
                    e.increment_epoch();
                }
            })
            .map_err(|e| PolicyError::Engine(format!("epoch thread: {e}")))?;
        Ok(PluginHost { engine, cfg, stop })
    }

    /// The limits in force.
    pub fn config(&self) -> &HostConfig {
        &self.cfg
    }

    /// Compiles and pre-links a verified plugin. `config` is the text its `host.config()`
    /// returns; `clock` serves the `clock` capability (required when the manifest grants it).
    pub fn load(
        &self,
        plugin: &VerifiedPlugin,
        config: &str,
        clock: Option<Arc<dyn Clock>>,
    ) -> Result<LoadedPlugin> {
        let started = Instant::now();
        let m = plugin.manifest().clone();
        let refused = |why: String| PolicyError::Refused { name: m.name.clone(), why };
        let component = Component::new(&self.engine, plugin.component())
            .map_err(|e| PolicyError::Compile { name: m.name.clone(), why: format!("{e:#}") })?;
        let compile_time = started.elapsed();

        // Imports: only what the host provides and the manifest grants.
        let ty = component.component_type();
        let mut wants_clock = false;
        for (name, _) in ty.imports(&self.engine) {
            let base = name.split('@').next().unwrap_or(name);
            match base {
                "isthmus:policy/host" | "isthmus:policy/types" => {}
                "isthmus:policy/clock" => wants_clock = true,
                n if n.starts_with("wasi:") => {}
                _ => {
                    return Err(refused(format!(
                        "it imports `{name}`, which the gateway does not provide"
                    )));
                }
            }
        }
        if wants_clock && !m.has(Capability::Clock) {
            return Err(refused(
                "it imports isthmus:policy/clock but its manifest does not ask for the `clock` \
                 capability"
                    .into(),
            ));
        }
        if wants_clock && clock.is_none() {
            return Err(refused("it needs a clock and none was configured".into()));
        }

        // Exports: what the hook needs.
        let exports: Vec<String> = ty.exports(&self.engine).map(|(n, _)| n.to_owned()).collect();
        let exports_iface = |i: &str| exports.iter().any(|e| e.split('@').next() == Some(i));
        let need = match m.hook {
            Hook::Spd => "isthmus:policy/spd",
            Hook::SecurityGroup => "isthmus:policy/security-group",
            Hook::Alarm => "isthmus:policy/alarm",
        };
        if !exports_iface(need) {
            return Err(refused(format!(
                "its manifest says hook `{}` but the component does not export `{need}` (it \
                 exports {}): it was built for another world",
                m.hook.name(),
                if exports.is_empty() { "nothing".to_owned() } else { exports.join(", ") }
            )));
        }
        let has_punt = m.hook == Hook::SecurityGroup && exports_iface("isthmus:policy/punt");

        let mut linker: Linker<Ctx> = Linker::new(&self.engine);
        whost::add_to_linker::<Ctx, wasmtime::component::HasSelf<Ctx>>(&mut linker, |c| c)
            .map_err(|e| PolicyError::Engine(e.to_string()))?;
        if m.has(Capability::Clock) {
            wclock::add_to_linker::<Ctx, wasmtime::component::HasSelf<Ctx>>(&mut linker, |c| c)
                .map_err(|e| PolicyError::Engine(e.to_string()))?;
        }
        linker
            .define_unknown_imports_as_traps(&component)
            .map_err(|e| PolicyError::Engine(e.to_string()))?;
        let pre = linker.instantiate_pre(&component).map_err(|e| refused(format!("{e:#}")))?;
        let idx = match m.hook {
            Hook::Spd => {
                Indices::Spd(wspd::GuestIndices::new(&pre).map_err(|e| refused(format!("{e:#}")))?)
            }
            Hook::SecurityGroup => Indices::Sg(
                wsg::GuestIndices::new(&pre).map_err(|e| refused(format!("{e:#}")))?,
                if has_punt {
                    Some(wpunt::GuestIndices::new(&pre).map_err(|e| refused(format!("{e:#}")))?)
                } else {
                    None
                },
            ),
            Hook::Alarm => Indices::Alarm(
                walarm::GuestIndices::new(&pre).map_err(|e| refused(format!("{e:#}")))?,
            ),
        };
        Ok(LoadedPlugin {
            manifest: m,
            digest: plugin.digest().to_owned(),
            engine: self.engine.clone(),
            cfg: self.cfg.clone(),
            pre,
            idx,
            config: config.into(),
            clock,
            live: Mutex::new(None),
            compile_time,
        })
    }
}

enum Indices {
    Spd(wspd::GuestIndices),
    Sg(wsg::GuestIndices, Option<wpunt::GuestIndices>),
    Alarm(walarm::GuestIndices),
}

/// Per-store state: the limits and what the host imports need.
pub(crate) struct Ctx {
    limits: StoreLimits,
    name: Arc<str>,
    config: Arc<str>,
    clock: Option<Arc<dyn Clock>>,
    log_left: u32,
    _table: ResourceTable,
}

impl whost::Host for Ctx {
    fn log(&mut self, level: whost::Level, message: String) {
        if self.log_left == 0 {
            return;
        }
        self.log_left -= 1;
        let msg: String = message.chars().take(1024).collect();
        let name = &*self.name;
        match level {
            whost::Level::Debug => tracing::debug!(plugin = name, "{msg}"),
            whost::Level::Info => tracing::info!(plugin = name, "{msg}"),
            whost::Level::Warn => tracing::warn!(plugin = name, "{msg}"),
            whost::Level::Error => tracing::error!(plugin = name, "{msg}"),
        }
    }

    fn config(&mut self) -> String {
        self.config.to_string()
    }
}

impl wclock::Host for Ctx {
    fn now_unix(&mut self) -> u64 {
        self.clock.as_ref().map_or(0, |c| c.now_unix())
    }
    fn utc_offset_minutes(&mut self) -> i32 {
        self.clock.as_ref().map_or(0, |c| c.utc_offset_minutes())
    }
}

impl wt::Host for Ctx {}

struct Live {
    store: Store<Ctx>,
    instance: Instance,
}

/// A compiled, pre-linked plugin. Calls are serialised (one instance per plugin).
pub struct LoadedPlugin {
    manifest: Manifest,
    digest: String,
    engine: Engine,
    cfg: HostConfig,
    pre: InstancePre<Ctx>,
    idx: Indices,
    config: Arc<str>,
    clock: Option<Arc<dyn Clock>>,
    live: Mutex<Option<Live>>,
    compile_time: Duration,
}

impl std::fmt::Debug for LoadedPlugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedPlugin")
            .field("manifest", &self.manifest)
            .field("digest", &self.digest)
            .finish_non_exhaustive()
    }
}

/// A call's failure: a fault (the instance is gone) or the plugin's own error value.
pub(crate) enum CallError {
    Fault(Fault),
    Plugin(String),
}

impl LoadedPlugin {
    /// The manifest.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// The package digest.
    pub fn digest(&self) -> &str {
        &self.digest
    }

    /// How long wasmtime took to compile the component.
    pub fn compile_time(&self) -> Duration {
        self.compile_time
    }

    /// True when a security-group plugin also decides punted flows.
    pub fn has_punt(&self) -> bool {
        matches!(self.idx, Indices::Sg(_, Some(_)))
    }

    fn with_instance<R>(
        &self,
        f: impl FnOnce(&mut Store<Ctx>, &Instance) -> wasmtime::Result<R>,
    ) -> Result<R, Fault> {
        let mut guard = self.live.lock().unwrap_or_else(|p| p.into_inner());
        if guard.is_none() {
            let mut store = Store::new(
                &self.engine,
                Ctx {
                    limits: StoreLimitsBuilder::new()
                        .memory_size(self.cfg.memory_bytes)
                        .instances(16)
                        .tables(64)
                        .memories(4)
                        .trap_on_grow_failure(true)
                        .build(),
                    name: self.manifest.name.as_str().into(),
                    config: self.config.clone(),
                    clock: self.clock.clone(),
                    log_left: self.cfg.log_lines_per_call,
                    _table: ResourceTable::new(),
                },
            );
            store.limiter(|c| &mut c.limits);
            store.set_epoch_deadline(self.deadline_ticks());
            let instance = self.pre.instantiate(&mut store).map_err(classify)?;
            *guard = Some(Live { store, instance });
        }
        let Some(live) = guard.as_mut() else {
            return Err(Fault::Trap("no instance".into()));
        };
        live.store.data_mut().log_left = self.cfg.log_lines_per_call;
        live.store.set_epoch_deadline(self.deadline_ticks());
        match f(&mut live.store, &live.instance) {
            Ok(r) => Ok(r),
            Err(e) => {
                // After a trap the instance's state is undefined: start afresh next time.
                *guard = None;
                Err(classify(e))
            }
        }
    }

    fn deadline_ticks(&self) -> u64 {
        let tick = self.cfg.epoch_tick.as_micros().max(1);
        (self.cfg.call_deadline.as_micros().div_ceil(tick) as u64).max(1) + 1
    }

    /// Calls the `spd` hook's `compile`.
    pub(crate) fn call_spd(&self, policies: &[SpdPolicy]) -> Result<Vec<SpdEntry>, CallError> {
        let Indices::Spd(idx) = &self.idx else {
            return Err(CallError::Plugin("not an spd plugin".into()));
        };
        let input: Vec<wspd::Policy> = policies.iter().map(spd_policy_out).collect();
        let out = self
            .with_instance(|store, inst| {
                idx.load(&mut *store, inst)?.call_compile(&mut *store, &input)
            })
            .map_err(CallError::Fault)?
            .map_err(CallError::Plugin)?;
        out.into_iter().map(spd_entry_in).collect::<Result<_, String>>().map_err(CallError::Plugin)
    }

    /// Calls the `security-group` hook's `compile`.
    pub(crate) fn call_sg(
        &self,
        groups: &[SgGroup],
        acls: &[SgGroup],
    ) -> Result<Vec<ChainSpec>, CallError> {
        let Indices::Sg(idx, _) = &self.idx else {
            return Err(CallError::Plugin("not a security-group plugin".into()));
        };
        let g: Vec<wsg::Group> = groups
            .iter()
            .map(|x| wsg::Group {
                name: x.name.clone(),
                attach: x.attach.clone(),
                rules: sg_rules_out(x),
            })
            .collect();
        let a: Vec<wsg::Acl> = acls
            .iter()
            .map(|x| wsg::Acl {
                name: x.name.clone(),
                attach: x.attach.clone(),
                rules: sg_rules_out(x),
            })
            .collect();
        let out = self
            .with_instance(|store, inst| {
                idx.load(&mut *store, inst)?.call_compile(&mut *store, &g, &a)
            })
            .map_err(CallError::Fault)?
            .map_err(CallError::Plugin)?;
        out.into_iter().map(chain_in).collect::<Result<_, String>>().map_err(CallError::Plugin)
    }

    /// Calls the punt path's `decide`. Decisions beyond the plugin's answer are `None`.
    pub(crate) fn call_decide(
        &self,
        attachment_names: &dyn Fn(&PuntRequest) -> String,
        reqs: &[PuntRequest],
        rule_names: &dyn Fn(&PuntRequest) -> String,
    ) -> Result<Vec<Option<PuntDecision>>, CallError> {
        let Indices::Sg(_, Some(idx)) = &self.idx else {
            return Err(CallError::Plugin("this plugin has no punt path".into()));
        };
        let input: Vec<wpunt::PuntedFlow> = reqs
            .iter()
            .map(|r| wpunt::PuntedFlow {
                attachment: attachment_names(r),
                direction: dir_out(r.direction),
                flow: flow_out(&r.key),
                rule: rule_names(r),
            })
            .collect();
        let out = self
            .with_instance(|store, inst| {
                idx.load(&mut *store, inst)?.call_decide(&mut *store, &input)
            })
            .map_err(CallError::Fault)?;
        let mut it = out.into_iter();
        Ok(reqs
            .iter()
            .map(|_| it.next().map(|d| PuntDecision { allow: d.allow, rule: d.rule }))
            .collect())
    }

    /// Calls the `alarm` hook's `on-event`.
    pub(crate) fn call_alarm(&self, ev: &AlarmEvent) -> Result<Vec<AlarmAction>, CallError> {
        let Indices::Alarm(idx) = &self.idx else {
            return Err(CallError::Plugin("not an alarm plugin".into()));
        };
        let input = walarm::Event {
            kind: kind_out(ev.kind),
            subject: ev.subject.clone(),
            raised: ev.raised,
            severity: sev_out(ev.severity),
            message: ev.message.clone(),
            at_ms: ev.at_ms,
        };
        let out = self
            .with_instance(|store, inst| {
                idx.load(&mut *store, inst)?.call_on_event(&mut *store, &input)
            })
            .map_err(CallError::Fault)?;
        Ok(out.into_iter().map(action_in).collect())
    }
}

fn classify(e: wasmtime::Error) -> Fault {
    if let Some(t) = e.downcast_ref::<wasmtime::Trap>() {
        return match t {
            wasmtime::Trap::Interrupt => Fault::Deadline,
            other => Fault::Trap(other.to_string()),
        };
    }
    let text = format!("{e:#}");
    if text.contains("forcing trap when growing memory")
        || text.contains("memory") && text.contains("limit")
    {
        return Fault::OutOfMemory;
    }
    Fault::Trap(text.lines().next().unwrap_or("unknown").chars().take(300).collect())
}

// ---- conversions between the bindings and the host's types ----

fn ip_out(a: std::net::IpAddr) -> wt::IpAddr {
    match a {
        std::net::IpAddr::V4(v) => wt::IpAddr::V4(u32::from(v)),
        std::net::IpAddr::V6(v) => {
            let b = u128::from(v);
            wt::IpAddr::V6(((b >> 64) as u64, b as u64))
        }
    }
}

fn ip_in(a: wt::IpAddr) -> std::net::IpAddr {
    match a {
        wt::IpAddr::V4(v) => std::net::IpAddr::V4(v.into()),
        wt::IpAddr::V6((hi, lo)) => {
            std::net::IpAddr::V6((u128::from(hi) << 64 | u128::from(lo)).into())
        }
    }
}

fn prefix_out(p: &Prefix) -> wt::Prefix {
    wt::Prefix { addr: ip_out(p.addr()), len: p.len() }
}

fn prefix_in(p: wt::Prefix) -> Result<Prefix, String> {
    let addr = ip_in(p.addr);
    let pfx = Prefix::new(addr, p.len).map_err(|e| e.to_string())?;
    if pfx.addr() != addr {
        return Err(format!("prefix {addr}/{} has host bits set", p.len));
    }
    Ok(pfx)
}

fn ports_out(p: PortRange) -> wt::PortRange {
    wt::PortRange { first: p.first, last: p.last }
}

fn ports_in(p: wt::PortRange) -> Result<PortRange, String> {
    if p.first > p.last {
        return Err(format!("port range {}-{} is reversed", p.first, p.last));
    }
    Ok(PortRange { first: p.first, last: p.last })
}

fn selector_out(s: &Selector) -> wt::Selector {
    wt::Selector {
        local: prefix_out(&s.local),
        remote: prefix_out(&s.remote),
        protocol: s.proto,
        local_ports: ports_out(s.local_ports),
        remote_ports: ports_out(s.remote_ports),
    }
}

fn selector_in(s: wt::Selector) -> Result<Selector, String> {
    Ok(Selector {
        local: prefix_in(s.local)?,
        remote: prefix_in(s.remote)?,
        proto: s.protocol,
        local_ports: ports_in(s.local_ports)?,
        remote_ports: ports_in(s.remote_ports)?,
    })
}

fn spd_action_out(a: &SpdAction) -> wspd::Action {
    match a {
        SpdAction::Protect { tunnel, child } => wspd::Action::Protect(wspd::ProtectTarget {
            tunnel: tunnel.clone(),
            child: child.clone(),
        }),
        SpdAction::Bypass => wspd::Action::Bypass,
        SpdAction::Discard => wspd::Action::Discard,
    }
}

fn spd_policy_out(p: &SpdPolicy) -> wspd::Policy {
    wspd::Policy {
        id: p.id.clone(),
        selector: selector_out(&p.selector),
        action: spd_action_out(&p.action),
        priority: p.priority,
    }
}

fn spd_entry_in(e: wspd::Entry) -> Result<SpdEntry, String> {
    Ok(SpdEntry {
        id: e.rule,
        selector: selector_in(e.selector)?,
        action: match e.action {
            wspd::Action::Protect(t) => SpdAction::Protect { tunnel: t.tunnel, child: t.child },
            wspd::Action::Bypass => SpdAction::Bypass,
            wspd::Action::Discard => SpdAction::Discard,
        },
    })
}

fn dir_out(d: Direction) -> wt::Direction {
    match d {
        Direction::Inbound => wt::Direction::Inbound,
        Direction::Outbound => wt::Direction::Outbound,
    }
}

fn dir_in(d: wt::Direction) -> Direction {
    match d {
        wt::Direction::Inbound => Direction::Inbound,
        wt::Direction::Outbound => Direction::Outbound,
    }
}

fn act_out(a: Action) -> wsg::RuleAction {
    match a {
        Action::Allow => wsg::RuleAction::Allow,
        Action::Deny => wsg::RuleAction::Deny,
        Action::Punt => wsg::RuleAction::Punt,
    }
}

fn act_in(a: wsg::RuleAction) -> Action {
    match a {
        wsg::RuleAction::Allow => Action::Allow,
        wsg::RuleAction::Deny => Action::Deny,
        wsg::RuleAction::Punt => Action::Punt,
    }
}

fn sg_rules_out(g: &SgGroup) -> Vec<wsg::Rule> {
    g.rules
        .iter()
        .map(|r| wsg::Rule {
            id: r.id.clone(),
            priority: r.priority,
            direction: dir_out(r.direction),
            action: act_out(r.action),
            protocol: r.protocol,
            peer: prefix_out(&r.peer),
            ports: ports_out(r.ports),
        })
        .collect()
}

fn chain_in(c: wsg::Chain) -> Result<ChainSpec, String> {
    Ok(ChainSpec {
        attachment: c.attachment,
        kind: match c.kind {
            wsg::ChainKind::SecurityGroup => ChainKind::SecurityGroup,
            wsg::ChainKind::NetworkAcl => ChainKind::NetworkAcl,
        },
        direction: dir_in(c.direction),
        rules: c
            .rules
            .into_iter()
            .map(|r| {
                Ok(Rule {
                    src: prefix_in(r.src)?,
                    dst: prefix_in(r.dst)?,
                    proto: r.protocol,
                    src_ports: ports_in(r.src_ports)?,
                    dst_ports: ports_in(r.dst_ports)?,
                    action: act_in(r.action),
                    id: r.rule,
                })
            })
            .collect::<Result<_, String>>()?,
        default_action: act_in(c.default_action),
        default_rule: c.default_rule,
    })
}

fn flow_out(k: &FlowKey) -> wt::Flow {
    wt::Flow {
        src: ip_out(k.src),
        dst: ip_out(k.dst),
        protocol: k.proto,
        src_port: k.src_port,
        dst_port: k.dst_port,
    }
}

fn kind_out(k: EventKind) -> walarm::EventKind {
    match k {
        EventKind::TunnelDown => walarm::EventKind::TunnelDown,
        EventKind::TunnelUp => walarm::EventKind::TunnelUp,
        EventKind::DpdTimeout => walarm::EventKind::DpdTimeout,
        EventKind::RekeyFailed => walarm::EventKind::RekeyFailed,
        EventKind::HealthCheckLoss => walarm::EventKind::HealthCheckLoss,
        EventKind::HealthCheckLatency => walarm::EventKind::HealthCheckLatency,
        EventKind::OneWayTraffic => walarm::EventKind::OneWayTraffic,
        EventKind::PluginFault => walarm::EventKind::PluginFault,
        EventKind::Other => walarm::EventKind::Other,
    }
}

fn kind_in(k: walarm::EventKind) -> EventKind {
    match k {
        walarm::EventKind::TunnelDown => EventKind::TunnelDown,
        walarm::EventKind::TunnelUp => EventKind::TunnelUp,
        walarm::EventKind::DpdTimeout => EventKind::DpdTimeout,
        walarm::EventKind::RekeyFailed => EventKind::RekeyFailed,
        walarm::EventKind::HealthCheckLoss => EventKind::HealthCheckLoss,
        walarm::EventKind::HealthCheckLatency => EventKind::HealthCheckLatency,
        walarm::EventKind::OneWayTraffic => EventKind::OneWayTraffic,
        walarm::EventKind::PluginFault => EventKind::PluginFault,
        walarm::EventKind::Other => EventKind::Other,
    }
}

fn sev_out(s: Severity) -> walarm::Severity {
    match s {
        Severity::Info => walarm::Severity::Info,
        Severity::Warning => walarm::Severity::Warning,
        Severity::Major => walarm::Severity::Major,
        Severity::Critical => walarm::Severity::Critical,
    }
}

fn sev_in(s: walarm::Severity) -> Severity {
    match s {
        walarm::Severity::Info => Severity::Info,
        walarm::Severity::Warning => Severity::Warning,
        walarm::Severity::Major => Severity::Major,
        walarm::Severity::Critical => Severity::Critical,
    }
}

fn action_in(a: walarm::Action) -> AlarmAction {
    match a {
        walarm::Action::Notify(n) => AlarmAction::Notify(Notification {
            channel: n.channel,
            severity: sev_in(n.severity),
            message: n.message,
        }),
        walarm::Action::Suppress(s) => AlarmAction::Suppress(Suppression {
            kind: kind_in(s.kind),
            subject: s.subject,
            for_ms: s.for_ms,
        }),
        walarm::Action::SetSeverity(s) => AlarmAction::SetSeverity(sev_in(s)),
    }
}

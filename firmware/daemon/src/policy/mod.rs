//! The daemon runs the policy plugins: one [`isthmus_policy::Supervisor`] compiles the
//! configuration's SPD policies, security groups and network ACLs through the plugin installed
//! for each hook and publishes the resulting tables into the dataplane; the alarm hook turns
//! alarm events into actions.
//!
//! Which plugin runs for a hook, in order of preference:
//!
//! 1. an **uploaded** plugin from the plugin store. A hook the configuration binds (an enabled
//!    `[[plugin]]` entry of that hook) runs only a build a binding pins: the first binding whose
//!    `digest` is stored and whose signer its `signed_by` allows (any trusted key when empty),
//!    whether that build is active or not; the committed configuration, not `plugin activate`,
//!    decides. With no such build the hook runs its default (2 or 3), never an unpinned upload,
//!    and its status note and a `plugin-pin` event say why. An unbound hook runs the active
//!    upload of that hook (the first by name when several are, and the status says so);
//! 2. the **bundled** default plugin (`spd-selectors`, `security-group`, `alarm-notify`): their
//!    release builds (`make plugins`) are embedded into `isthmusd` at compile time by
//!    `build.rs`, so an appliance always has them. The firmware image is what vouches for them;
//!    they are signed with a key made at start so they pass the same verification and loading
//!    path as uploads;
//! 3. the **builtin** native implementation of the defaults' documented semantics
//!    ([`isthmus_policy::reference`]), when the daemon was built without the plugin builds.
//!
//! The bundled components compile on a background thread (builtin tables meanwhile). Every
//! change of a hook's plugin, the installation and the hook's status together, is one step
//! under the hook lock, and the background loader installs only if the hook still runs the
//! builtin at that moment: a plugin uploaded and activated while the bundled one compiles is
//! never replaced by it.
//!
//! One owner for the SPD (RFC 4301 §4.4.1): the IKE driver no longer publishes its own table.
//! The daemon hands the driver a [`Dataplane`] adapter that keeps the userspace ESP engine for
//! SAs but, when a tunnel is added or removed, asks this module to recompile the SPD from every
//! tunnel's CHILD SA selectors through the `spd` hook and publishes that table.
//!
//! Containment: a table is validated before it is published; a trap, a deadline or memory
//! exhaustion quarantines the plugin (exponential back-off, see the supervisor), raises a
//! `plugin-fault` event and alarm naming the plugin, the hook and the reason, and leaves the last
//! good tables in force. A compilation that failed because of a fault is retried once the
//! quarantine ends, so a crash loop costs one call per quarantine period.

pub mod punt;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use isthmus_api::{self as api, EventKind, Severity};
use isthmus_config::Config;
use isthmus_ike::TunnelConfig;
use isthmus_policy::{
    AlarmAction, AlarmEvent, Hook, Limits, Manifest, Package, PluginHost, PluginStore, PolicyError,
    PolicyTables, PublicKey, SgGroup, SgRule, SpdPolicy, Supervisor,
};
use isthmus_tables::sg::{Action, ChainKind, Direction};
use isthmus_tables::spd::{SpdAction, SpdTable};
use isthmus_tables::{PortRange, Prefix};
use isthmus_tunnels::{ChildInstall, Dataplane, EspDataplane};

use crate::obs::alarms::Alarms;
use crate::obs::events::EventBus;

/// The release builds of the default plugins, embedded by `build.rs` (empty when they were not
/// built).
mod bundled {
    include!(concat!(env!("OUT_DIR"), "/bundled_plugins.rs"));
}

const HOOKS: [Hook; 3] = [Hook::Spd, Hook::SecurityGroup, Hook::Alarm];

fn idx(h: Hook) -> usize {
    match h {
        Hook::Spd => 0,
        Hook::SecurityGroup => 1,
        Hook::Alarm => 2,
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A table's generation, entries and chains as published, or why not.
type Published = Result<(u64, usize, usize), PolicyError>;

/// Where the plugin of a hook comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Source {
    Uploaded,
    Bundled,
    Builtin,
}

impl Source {
    fn name(self) -> &'static str {
        match self {
            Source::Uploaded => "uploaded",
            Source::Bundled => "bundled",
            Source::Builtin => "builtin",
        }
    }
}

/// What runs for one hook, and how its last compilation went.
#[derive(Clone, Debug)]
struct HookState {
    source: Source,
    /// `name@version`.
    plugin: String,
    digest: Option<String>,
    /// Generation, table entries (SPD entries or SG/ACL rules) and chains of the last table
    /// this hook published.
    published: Option<(u64, usize, usize)>,
    last_error: Option<String>,
    /// A note for the operator (for example: several plugins of this hook are active).
    note: Option<String>,
    /// A compilation failed on a fault: retry when the quarantine ends.
    retry: bool,
    /// `published` is the builtin fallback, not this plugin's table (see [`Policy::compile`]).
    fallback: bool,
    /// How long wasmtime took to compile the component when it was loaded.
    compile: Option<Duration>,
}

impl Default for HookState {
    fn default() -> HookState {
        HookState {
            source: Source::Builtin,
            plugin: "builtin".into(),
            digest: None,
            published: None,
            last_error: None,
            note: None,
            retry: false,
            fallback: false,
            compile: None,
        }
    }
}

/// What the tables are compiled from.
#[derive(Default)]
struct Inputs {
    /// Per tunnel the driver runs: its SPD policies and CHILD SA names.
    spd: BTreeMap<String, (Vec<SpdPolicy>, Vec<String>)>,
    groups: Vec<SgGroup>,
    acls: Vec<SgGroup>,
    attachments: Vec<String>,
    /// LAN prefixes by LAN name, so LAN-bound chains apply to their hosts.
    lans: Vec<isthmus_dataplane::LanBinding>,
}

/// The dataplane the tables are published into.
type Sink = Arc<isthmus_dataplane::Dataplane>;

/// The daemon's plugin runner. See the module documentation.
pub struct Policy {
    sup: Supervisor,
    host: PluginHost,
    store: PluginStore,
    events: Arc<EventBus>,
    alarms: Arc<Alarms>,
    /// Held while compiling and publishing, so tables reach the dataplane in generation order.
    inputs: Mutex<Inputs>,
    hooks: Mutex<[HookState; 3]>,
    sink: Mutex<Option<Sink>>,
    /// The key the bundled components are signed with at start.
    bundled_key: (isthmus_policy::SecretKey, PublicKey),
    /// Per hook: a background loader of the bundled component has not yet decided whether to
    /// install it (changed only under the `hooks` lock).
    pending: [AtomicBool; 3],
    /// Per hook: background loaders still running (compiling the component or its table).
    loading: [AtomicUsize; 3],
    /// Test hooks run at [`Checkpoint`]s.
    #[cfg(test)]
    checkpoints: Mutex<Option<CheckpointFn>>,
    /// Applies in progress ([`Policy::batch`]): tunnel changes only update the SPD inputs.
    batch: AtomicUsize,
    /// A tunnel changed during a batch: the SPD is compiled when the batch ends.
    spd_dirty: AtomicBool,
    me: Weak<Policy>,
}

/// Points in plugin selection where a test can hold a thread (see `Policy::checkpoint`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Checkpoint {
    /// A background loader compiled the bundled component and is about to decide.
    BundledLoaded,
    /// `select` loaded the chosen plugin and is about to install it.
    UploadedLoaded,
}

#[cfg(test)]
type CheckpointFn = Arc<dyn Fn(Hook, Checkpoint) + Send + Sync>;

/// Holds back SPD compilations while an apply adds or removes tunnels (see [`Policy::batch`]).
pub struct SpdBatch<'a>(&'a Policy);

impl Drop for SpdBatch<'_> {
    fn drop(&mut self) {
        if self.0.batch.fetch_sub(1, Ordering::AcqRel) == 1
            && self.0.spd_dirty.swap(false, Ordering::AcqRel)
        {
            self.0.compile(true, false);
        }
    }
}

impl std::fmt::Debug for Policy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Policy").finish_non_exhaustive()
    }
}

fn bundled_component(h: Hook) -> (&'static str, &'static [u8]) {
    match h {
        Hook::Spd => ("spd-selectors", bundled::SPD),
        Hook::SecurityGroup => ("security-group", bundled::SECURITY_GROUP),
        Hook::Alarm => ("alarm-notify", bundled::ALARM),
    }
}

impl Policy {
    /// A runner over the plugin `store`, reporting to `events` and `alarms`. Starts a thread
    /// that retries faulted compilations when their quarantine ends (it stops with the runner).
    pub fn start(
        store: PluginStore,
        events: Arc<EventBus>,
        alarms: Arc<Alarms>,
    ) -> anyhow::Result<Arc<Policy>> {
        let host = PluginHost::new(isthmus_policy::HostConfig::default())?;
        let bundled_key = isthmus_policy::generate_key()?;
        let p = Arc::new_cyclic(|me| Policy {
            sup: Supervisor::new(Arc::new(PolicyTables::new()), Limits::default()),
            host,
            store,
            events,
            alarms,
            inputs: Mutex::new(Inputs::default()),
            hooks: Mutex::new(Default::default()),
            sink: Mutex::new(None),
            bundled_key,
            pending: Default::default(),
            loading: Default::default(),
            #[cfg(test)]
            checkpoints: Mutex::new(None),
            batch: AtomicUsize::new(0),
            spd_dirty: AtomicBool::new(false),
            me: me.clone(),
        });
        // The alarm engine passes every raise and clear through the alarm hook.
        let hook = Arc::downgrade(&p);
        p.alarms.set_hook(Some(Arc::new(move |e: &AlarmEvent| {
            hook.upgrade().map(|p| p.on_event(e)).unwrap_or_default()
        })));
        let weak: Weak<Policy> = Arc::downgrade(&p);
        std::thread::Builder::new().name("policy-retry".into()).spawn(move || {
            loop {
                std::thread::sleep(Duration::from_millis(500));
                match weak.upgrade() {
                    Some(p) => p.tick(),
                    None => return,
                }
            }
        })?;
        Ok(p)
    }

    /// The wasmtime host plugins run in (uploads are compiled with it to check their world).
    pub fn host(&self) -> &PluginHost {
        &self.host
    }

    /// The supervisor (tables, hook status, punt decisions).
    pub fn supervisor(&self) -> &Supervisor {
        &self.sup
    }

    /// Runs the alarm hook on `event`: the alarm plugin's actions, or the built-in
    /// `alarm-notify` semantics when it is absent, faulted or quarantined. For the alarm engine.
    pub fn on_event(&self, event: &AlarmEvent) -> Vec<AlarmAction> {
        let actions = self.sup.on_event(event, Instant::now());
        self.report_faults(Hook::Alarm);
        actions
    }

    /// Starts the IKE driver on a new userspace ESP dataplane whose SPD this runner owns.
    pub fn start_tunnels(
        self: &Arc<Self>,
        driver: isthmus_tunnels::DriverConfig,
        dataplane: isthmus_dataplane::Config,
        options: isthmus_tunnels::EspOptions,
    ) -> Result<(isthmus_tunnels::Tunnels, Sink), isthmus_tunnels::Error> {
        let (dp, events) = isthmus_dataplane::Dataplane::start(dataplane)
            .map_err(|e| isthmus_tunnels::Error::Dataplane(String::new(), e.to_string()))?;
        let dp = Arc::new(dp);
        let local = dp.udp_addr();
        // The SAs of the old dataplane are gone with it; so are the tunnels' policies.
        lock(&self.inputs).spd.clear();
        *lock(&self.sink) = Some(dp.clone());
        let adapter = PolicyDataplane {
            esp: EspDataplane::new(dp.clone(), options),
            policy: Arc::downgrade(self),
        };
        let tunnels = isthmus_tunnels::Tunnels::start(driver, Box::new(adapter))?;
        isthmus_tunnels::forward_events(events, tunnels.dataplane_events(), local)
            .map_err(isthmus_tunnels::Error::Io)?;
        crate::policy::punt::spawn(Arc::downgrade(&dp), Arc::downgrade(self))
            .map_err(isthmus_tunnels::Error::Io)?;
        self.compile(true, true);
        Ok((tunnels, dp))
    }

    /// Takes a new configuration (or a changed plugin store): selects and loads the plugin of
    /// each hook, then recompiles and publishes the security-group table and the SPD. Returns
    /// what changed, for the apply report. Failures do not fail the apply: the last good tables
    /// stay and the hook's status and a `plugin-fault` event say why.
    pub fn refresh(&self, cfg: &Config, trusted: &[PublicKey]) -> Vec<String> {
        let mut lines = self.select(cfg, trusted);
        {
            let mut i = lock(&self.inputs);
            let (groups, acls) = sg_inputs(cfg);
            i.groups = groups;
            i.acls = acls;
            i.attachments = cfg
                .tunnels
                .iter()
                .map(|t| t.name.clone())
                .chain(cfg.gateway.lans.iter().map(|l| l.name.clone()))
                .collect();
            i.lans = cfg
                .gateway
                .lans
                .iter()
                .flat_map(|l| {
                    l.all_networks().map(|prefix| isthmus_dataplane::LanBinding {
                        prefix,
                        name: l.name.clone(),
                    })
                })
                .collect();
        }
        let before = self.generations();
        self.compile(true, true);
        let after = self.generations();
        for (h, (b, a)) in HOOKS.iter().zip(before.iter().zip(after.iter())) {
            if let Some((g, n, _)) = a
                && b.map(|x| x.0) != Some(*g)
            {
                lines.push(format!("policy: {} table generation {g} ({n} entries)", h.name()));
            }
        }
        let hooks = lock(&self.hooks);
        for h in [Hook::SecurityGroup, Hook::Spd] {
            if let Some(e) = &hooks[idx(h)].last_error {
                lines.push(format!("policy: {e}"));
            }
        }
        lines
    }

    fn generations(&self) -> [Option<(u64, usize, usize)>; 3] {
        let h = lock(&self.hooks);
        [h[0].published, h[1].published, h[2].published]
    }

    /// Chooses and loads the plugin of each hook; returns lines for what changed.
    fn select(&self, cfg: &Config, trusted: &[PublicKey]) -> Vec<String> {
        let mut lines = Vec::new();
        let listed = match self.store.list() {
            Ok(l) => l,
            Err(e) => {
                tracing::error!("listing the plugin store: {e}");
                Vec::new()
            }
        };
        for h in HOOKS {
            let pick = self.pick(h, cfg, &listed, trusted);
            let current = lock(&self.hooks)[idx(h)].clone();
            // A pin that cannot be honoured is said once, when the hook's note changes.
            if !pick.refused.is_empty() && current.note != pick.note {
                for why in &pick.refused {
                    tracing::warn!(hook = h.name(), "{why}");
                    self.events.emit(
                        EventKind::PluginPin,
                        h.name(),
                        Severity::Warning,
                        why.clone(),
                    );
                    lines.push(format!("policy: {why}"));
                }
            }
            let Pick { chosen, note, .. } = pick;
            // What to install (`None`: the builtin). Loading runs without the hook lock (it
            // takes seconds under TCG); installing and recording the state happen under it.
            let result = match &chosen {
                Some(c) => {
                    if current.digest.as_deref() == Some(&c.digest) {
                        lock(&self.hooks)[idx(h)].note = note;
                        continue;
                    }
                    self.load_uploaded(h, c, trusted).map(|(st, l)| (st, Some(l)))
                }
                None => {
                    let (_, wasm) = bundled_component(h);
                    if wasm.is_empty() {
                        if current.source == Source::Builtin {
                            lock(&self.hooks)[idx(h)].note = note;
                            continue;
                        }
                        Ok((HookState::default(), None))
                    } else {
                        if current.source == Source::Bundled {
                            lock(&self.hooks)[idx(h)].note = note;
                            continue;
                        }
                        // Compiling a component takes 0.2 s here and seconds under QEMU's
                        // TCG: the builtin tables (same semantics) serve until it is done.
                        let start = {
                            let mut hooks = lock(&self.hooks);
                            if hooks[idx(h)].source != Source::Builtin {
                                // An uploaded plugin was removed: builtin until the bundled
                                // loads.
                                self.sup.uninstall(h);
                                let published = hooks[idx(h)].published;
                                hooks[idx(h)] = HookState { published, ..HookState::default() };
                            }
                            hooks[idx(h)].note = note;
                            // `pending` is set and cleared under the hook lock, so a loader
                            // either decides after this state change or a new one starts.
                            let start = !self.pending[idx(h)].swap(true, Ordering::AcqRel);
                            if start {
                                self.loading[idx(h)].fetch_add(1, Ordering::AcqRel);
                            }
                            start
                        };
                        if start {
                            self.load_bundled_in_background(h, cfg.clone());
                            lines.push(format!(
                                "policy: hook {} compiles the bundled {} in the background \
                                 (builtin tables meanwhile)",
                                h.name(),
                                bundled_component(h).0
                            ));
                        }
                        continue;
                    }
                }
            };
            self.checkpoint(h, Checkpoint::UploadedLoaded);
            match result {
                Ok((mut st, loaded)) => {
                    st.note = note;
                    lines.push(format!(
                        "policy: hook {} runs {} ({})",
                        h.name(),
                        st.plugin,
                        st.source.name()
                    ));
                    let replaced = {
                        // One step under the hook lock: a background load of the bundled
                        // plugin checks the hook's source under it before installing, so it
                        // can never replace what is installed here.
                        let mut hooks = lock(&self.hooks);
                        st.published = hooks[idx(h)].published;
                        st.fallback = hooks[idx(h)].fallback;
                        hooks[idx(h)] = st;
                        match loaded {
                            Some(l) => self.sup.install(l),
                            None => self.sup.uninstall(h),
                        }
                    };
                    drop(replaced);
                    // Replaced or rolled back: a fault of the one before no longer holds.
                    self.alarms.plugin_recovered(plugin_name(&current.plugin));
                }
                Err(e) => {
                    let msg = format!(
                        "plugin for hook `{}` could not be loaded, {} stays in force: {e}",
                        h.name(),
                        current.plugin
                    );
                    self.fault_event(chosen.as_ref().map_or("bundled", |c| c.name.as_str()), &msg);
                    let mut hooks = lock(&self.hooks);
                    hooks[idx(h)].last_error = Some(msg.clone());
                    hooks[idx(h)].note = note;
                    lines.push(format!("policy: {msg}"));
                }
            }
        }
        lines
    }

    fn plugin_config(cfg: &Config, name: &str) -> String {
        cfg.plugins
            .iter()
            .find(|b| b.enabled && b.plugin == name)
            .map(|b| b.config.to_string())
            .unwrap_or_default()
    }

    /// What hook `h` runs. A hook the configuration binds (an enabled `[[plugin]]` of that
    /// hook) runs only a build a binding pins: the first binding whose `digest` is in the store
    /// and whose signer its `signed_by` allows, active or not; with none, the hook's default
    /// (bundled or builtin), never an unpinned upload. An unbound hook runs the active upload
    /// (the first by name when several are active), else its default.
    fn pick(
        &self,
        h: Hook,
        cfg: &Config,
        listed: &[isthmus_policy::PluginInfo],
        trusted: &[PublicKey],
    ) -> Pick {
        let mut active: Vec<(String, String)> = listed
            .iter()
            .filter_map(|p| {
                let d = p.active.as_ref()?;
                let v = p.versions.iter().find(|v| &v.digest == d)?;
                (v.hook == h).then(|| (p.name.clone(), d.clone()))
            })
            .collect();
        active.sort();
        let bindings: Vec<&isthmus_config::Plugin> =
            cfg.plugins.iter().filter(|b| b.enabled && config_hook(b.hook) == h).collect();
        if bindings.is_empty() {
            let note = (active.len() > 1).then(|| {
                format!(
                    "{} plugins of this hook are active ({}); `{}` runs. Bind one with a \
                     [[plugin]] entry in the configuration",
                    active.len(),
                    active.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>().join(", "),
                    active[0].0
                )
            });
            let chosen = active.into_iter().next().map(|(name, digest)| Chosen {
                config: Self::plugin_config(cfg, &name),
                name,
                digest,
                verified: None,
            });
            return Pick { chosen, note, refused: Vec::new() };
        }
        let mut refused = Vec::new();
        for b in bindings {
            let digest = pinned_digest(b);
            let pin = format!("binding `{}` pins `{}` {}", b.name, b.plugin, short(&digest));
            let info = listed.iter().find(|p| p.name == b.plugin);
            let stored = info.and_then(|p| p.versions.iter().find(|v| v.digest == digest));
            match stored {
                None => {
                    refused.push(format!("{pin}, which is not in the plugin store"));
                    continue;
                }
                Some(v) if v.hook != h => {
                    refused.push(format!("{pin}, a `{}` plugin: not run", v.hook.name()));
                    continue;
                }
                Some(_) => {}
            }
            // Only a signer restriction needs the package read and verified here; otherwise
            // `load_uploaded` reads it when the hook changes build, not at every refresh.
            let mut verified = None;
            if !b.signed_by.is_empty() {
                let v = match self.store.load_version(&b.plugin, &digest, trusted) {
                    Ok(Some(v)) => v,
                    Ok(None) => {
                        refused.push(format!("{pin}, which is not in the plugin store"));
                        continue;
                    }
                    Err(e) => {
                        refused.push(format!("{pin}, which does not load: {e}"));
                        continue;
                    }
                };
                let signer = v.package().signer();
                let name = signer.and_then(|k| key_name(cfg, k));
                if !name.as_ref().is_some_and(|n| b.signed_by.contains(n)) {
                    let by = match (name, signer) {
                        (Some(n), _) => format!("key `{n}`"),
                        (None, Some(k)) => k.to_string(),
                        (None, None) => "no key".into(),
                    };
                    refused.push(format!(
                        "{pin}, signed by {by}; the binding takes only builds signed by {}: \
                         not run",
                        b.signed_by.iter().map(|k| format!("`{k}`")).collect::<Vec<_>>().join(", ")
                    ));
                    continue;
                }
                verified = Some(v);
            }
            let mut notes = refused.clone();
            match info.and_then(|p| p.active.as_deref()) {
                Some(a) if a == digest => {}
                Some(a) => notes.push(format!(
                    "{pin}, which runs; the store's active version is {} (`plugin activate` \
                     does not override the configuration's pin)",
                    short(a)
                )),
                None => notes.push(format!("{pin}, which runs; it is not active in the store")),
            }
            let chosen =
                Chosen { name: b.plugin.clone(), digest, verified, config: b.config.to_string() };
            return Pick { chosen: Some(chosen), note: join_notes(notes), refused };
        }
        let mut notes = refused.clone();
        notes.push(match active.first() {
            Some((n, _)) => format!(
                "the hook's default runs: the configuration binds this hook, so the active \
                 `{n}` does not run unpinned"
            ),
            None => "the hook's default runs".into(),
        });
        Pick { chosen: None, note: join_notes(notes), refused }
    }

    fn load_uploaded(
        &self,
        h: Hook,
        c: &Chosen,
        trusted: &[PublicKey],
    ) -> Result<(HookState, isthmus_policy::LoadedPlugin), PolicyError> {
        let v = match &c.verified {
            Some(v) => v.clone(),
            None => self.store.load_version(&c.name, &c.digest, trusted)?.ok_or_else(|| {
                PolicyError::NoSuchVersion { name: c.name.clone(), digest: c.digest.clone() }
            })?,
        };
        let clock: Arc<dyn isthmus_policy::Clock> =
            Arc::new(isthmus_policy::SystemClock::default());
        let loaded = self.host.load(&v, &c.config, Some(clock))?;
        let st = HookState {
            source: Source::Uploaded,
            plugin: format!("{}@{}", v.manifest().name, v.manifest().version),
            digest: Some(v.digest().to_owned()),
            compile: Some(loaded.compile_time()),
            ..HookState::default()
        };
        tracing::info!(
            hook = h.name(),
            plugin = st.plugin,
            compile_ms = loaded.compile_time().as_millis() as u64,
            "plugin loaded"
        );
        Ok((st, loaded))
    }

    /// Loads the bundled plugin of `h` on a thread and installs it unless an uploaded plugin
    /// took the hook meanwhile; then recompiles that hook's table. The caller has set
    /// `pending[h]` and counted the loader in `loading[h]` under the hook lock.
    fn load_bundled_in_background(&self, h: Hook, cfg: Config) {
        let me = self.me.clone();
        let spawned = std::thread::Builder::new().name("policy-load".into()).spawn(move || {
            let Some(p) = me.upgrade() else { return };
            let r = p.load_bundled(h, &cfg);
            p.checkpoint(h, Checkpoint::BundledLoaded);
            let mut hooks = lock(&p.hooks);
            // The decision and the install are one step under the hook lock, as is every
            // other change of the hook's plugin (see `select`): whatever took the hook while
            // the component compiled stays.
            p.pending[idx(h)].store(false, Ordering::Release);
            let installed = match r {
                Ok((st, loaded)) if hooks[idx(h)].source == Source::Builtin => {
                    tracing::info!(hook = h.name(), plugin = st.plugin, "bundled plugin loaded");
                    let (published, note) = (hooks[idx(h)].published, hooks[idx(h)].note.take());
                    hooks[idx(h)] = HookState { published, note, ..st };
                    p.sup.install(loaded);
                    true
                }
                Ok(_) => false,
                Err(e) => {
                    let msg = format!(
                        "the bundled plugin for hook `{}` could not be loaded, builtin stays in \
                         force: {e}",
                        h.name()
                    );
                    hooks[idx(h)].last_error = Some(msg.clone());
                    drop(hooks);
                    p.fault_event(bundled_component(h).0, &msg);
                    p.loading[idx(h)].fetch_sub(1, Ordering::AcqRel);
                    return;
                }
            };
            drop(hooks);
            if installed {
                p.compile(h == Hook::Spd, h == Hook::SecurityGroup);
            }
            p.loading[idx(h)].fetch_sub(1, Ordering::AcqRel);
        });
        if let Err(e) = spawned {
            tracing::error!("starting the plugin loader: {e}");
            let _hooks = lock(&self.hooks);
            self.pending[idx(h)].store(false, Ordering::Release);
            self.loading[idx(h)].fetch_sub(1, Ordering::AcqRel);
        }
    }

    /// True while a bundled plugin is still being compiled, or its first table (its hook runs
    /// the builtin tables until then).
    pub fn loading(&self) -> bool {
        self.loading.iter().any(|l| l.load(Ordering::Acquire) > 0)
    }

    /// A point where a test may hold one thread to force an interleaving; nothing otherwise.
    #[cfg_attr(not(test), inline(always))]
    fn checkpoint(&self, h: Hook, at: Checkpoint) {
        #[cfg(test)]
        {
            let f = lock(&self.checkpoints).clone();
            if let Some(f) = f {
                f(h, at);
            }
        }
        #[cfg(not(test))]
        let _ = (h, at);
    }

    /// Holds back SPD compilations until the returned guard drops, so an apply that adds a
    /// thousand tunnels compiles the SPD once, not once per tunnel.
    pub fn batch(&self) -> SpdBatch<'_> {
        self.batch.fetch_add(1, Ordering::AcqRel);
        SpdBatch(self)
    }

    fn load_bundled(
        &self,
        h: Hook,
        cfg: &Config,
    ) -> Result<(HookState, isthmus_policy::LoadedPlugin), PolicyError> {
        let (name, wasm) = bundled_component(h);
        let m = Manifest {
            name: name.to_owned(),
            version: format!("{}-bundled", env!("CARGO_PKG_VERSION")),
            hook: h,
            capabilities: vec![],
            description: format!("the default {} plugin bundled with isthmusd", h.name()),
        };
        let pkg = isthmus_policy::sign(Package::unsigned(m, wasm.to_vec())?, &self.bundled_key.0)?;
        let v = isthmus_policy::verify(&pkg.to_bytes(), std::slice::from_ref(&self.bundled_key.1))?;
        let loaded = self.host.load(&v, &Self::plugin_config(cfg, name), None)?;
        let st = HookState {
            source: Source::Bundled,
            plugin: format!("{}@{}", v.manifest().name, v.manifest().version),
            digest: Some(v.digest().to_owned()),
            compile: Some(loaded.compile_time()),
            ..HookState::default()
        };
        Ok((st, loaded))
    }

    /// Compiles and publishes the SPD and/or the security-group table from the current inputs.
    /// When the hook's plugin fails and the hook has no good table of its own (none since
    /// isthmusd started, e.g. a plugin that faults right after a restart), the builtin reference
    /// compiles the table instead: an empty table would drop all traffic (`spd-no-policy`).
    fn compile(&self, spd: bool, sg: bool) {
        let inputs = lock(&self.inputs);
        let now = Instant::now();
        if sg {
            let publish = |(g, chains): (u64, Vec<isthmus_tables::sg::ChainSpec>)| -> Published {
                let (rules, n) = count_sg(&self.sup.tables().sg());
                self.publish_sg(g, &chains, &inputs.lans)
                    .map_err(|why| PolicyError::InvalidTable { name: "dataplane".into(), why })?;
                Ok((g, rules, n))
            };
            let r = self
                .sup
                .compile_sg_chains(&inputs.groups, &inputs.acls, &inputs.attachments, now)
                .and_then(publish);
            let fallback =
                (r.is_err() && self.without_good_table(Hook::SecurityGroup)).then(|| {
                    self.sup
                        .compile_sg_builtin(&inputs.groups, &inputs.acls, &inputs.attachments, now)
                        .and_then(publish)
                });
            self.record(Hook::SecurityGroup, r, fallback);
        }
        if spd {
            let policies: Vec<SpdPolicy> =
                inputs.spd.values().flat_map(|(p, _)| p.iter().cloned()).collect();
            let tunnels: Vec<(String, Vec<String>)> =
                inputs.spd.iter().map(|(t, (_, c))| (t.clone(), c.clone())).collect();
            let publish = |g: u64| -> Published {
                let t = self.sup.tables().spd();
                let n = t.entries.len();
                self.publish_spd(&t)
                    .map_err(|why| PolicyError::InvalidTable { name: "dataplane".into(), why })?;
                Ok((g, n, 0))
            };
            let r = self.sup.compile_spd(&policies, &tunnels, now).and_then(publish);
            let fallback = (r.is_err() && self.without_good_table(Hook::Spd))
                .then(|| self.sup.compile_spd_builtin(&policies, &tunnels, now).and_then(publish));
            self.record(Hook::Spd, r, fallback);
        }
    }

    /// The hook has published no table of its plugin's since the start (nothing, or only the
    /// builtin fallback): there is no last good table to leave in force.
    fn without_good_table(&self, h: Hook) -> bool {
        let hooks = lock(&self.hooks);
        hooks[idx(h)].published.is_none() || hooks[idx(h)].fallback
    }

    fn publish_spd(&self, t: &SpdTable) -> Result<(), String> {
        match lock(&self.sink).as_ref() {
            Some(dp) => dp.publish_spd(t.clone()).map_err(|e| e.to_string()),
            None => Ok(()),
        }
    }

    /// The dataplane gets the very table the supervisor validated and published (shared, not
    /// rebuilt); a build of the same chains only if a newer one was published meanwhile.
    fn publish_sg(
        &self,
        generation: u64,
        chains: &[isthmus_tables::sg::ChainSpec],
        lans: &[isthmus_dataplane::LanBinding],
    ) -> Result<(), String> {
        let Some(dp) = lock(&self.sink).clone() else { return Ok(()) };
        let current = Arc::clone(&*self.sup.tables().sg());
        let t = if current.generation() == generation {
            current
        } else {
            Arc::new(
                isthmus_tables::sg::SgTable::build(generation, chains)
                    .map_err(|e| e.to_string())?,
            )
        };
        // Each publication rebuilds the workers' filter state: the LANs only when they changed.
        if dp.lans() != lans {
            dp.publish_lans(lans.to_vec());
        }
        dp.publish_sg(t).map_err(|e| e.to_string())
    }

    /// Notes how a compilation went; `fallback` is the builtin table compiled in its place
    /// when it failed without a good table to keep (see [`Policy::compile`]).
    fn record(&self, h: Hook, r: Published, fallback: Option<Published>) {
        let plugin = lock(&self.hooks)[idx(h)].plugin.clone();
        let table = if h == Hook::Spd { "SPD" } else { "security-group" };
        let mut fell_back = None;
        match r {
            Ok(p) => {
                let recovered = {
                    let mut hooks = lock(&self.hooks);
                    let s = &mut hooks[idx(h)];
                    s.published = Some(p);
                    s.retry = false;
                    s.fallback = false;
                    s.last_error.take().is_some()
                };
                if recovered {
                    self.alarms.plugin_recovered(plugin_name(&plugin));
                }
            }
            Err(e) => {
                let retry =
                    matches!(e, PolicyError::Fault { .. } | PolicyError::Quarantined { .. });
                let mut hooks = lock(&self.hooks);
                let s = &mut hooks[idx(h)];
                let msg = match fallback {
                    Some(Ok(p)) => {
                        let first = !s.fallback;
                        s.published = Some(p);
                        s.fallback = true;
                        let msg = format!(
                            "hook `{}` ({plugin}): {e}; it has no good {table} table of its own \
                             since isthmusd started, so the builtin default {table} table (the \
                             bundled plugin's semantics) is in force until it compiles one",
                            h.name()
                        );
                        if first {
                            fell_back = Some(msg.clone());
                        }
                        msg
                    }
                    Some(Err(f)) => format!(
                        "hook `{}` ({plugin}): {e}; it has no good {table} table of its own and \
                         the builtin default failed too: {f}",
                        h.name()
                    ),
                    None => format!(
                        "hook `{}` ({plugin}): {e}; the last good {table} table stays in force",
                        h.name()
                    ),
                };
                if !matches!(e, PolicyError::Quarantined { .. }) || fell_back.is_some() {
                    tracing::warn!("{msg}");
                }
                s.last_error = Some(msg);
                s.retry = retry;
            }
        }
        self.report_faults(h);
        // After the supervisor's own fault report, so the latched alarm says what is in force.
        if let Some(msg) = fell_back {
            self.fault_event(plugin_name(&plugin), &msg);
        }
    }

    /// Turns the supervisor's queued fault alarms into events and alarms that name the hook.
    fn report_faults(&self, h: Hook) {
        for a in self.sup.take_alarms() {
            let msg = format!("plugin `{}` (hook {}): {}", a.subject, h.name(), a.message);
            self.fault_event(&a.subject, &msg);
        }
    }

    /// A `plugin-fault` event, and the fault latched for the alarm engine (a `plugin-fault`
    /// alarm rule raises it until the plugin recovers).
    fn fault_event(&self, plugin: &str, msg: &str) {
        self.events.emit(EventKind::PluginFault, plugin, Severity::Critical, msg.to_owned());
        self.alarms.plugin_fault(plugin, msg);
    }

    /// Retries compilations that failed on a fault once the quarantine is over.
    fn tick(&self) {
        let now = Instant::now();
        let retry: Vec<Hook> = {
            let hooks = lock(&self.hooks);
            [Hook::Spd, Hook::SecurityGroup].into_iter().filter(|h| hooks[idx(*h)].retry).collect()
        };
        for h in retry {
            if self.sup.status(h, now).quarantined_for.is_none() {
                self.compile(h == Hook::Spd, h == Hook::SecurityGroup);
            }
        }
        self.report_faults(Hook::Alarm);
    }

    /// The driver added a tunnel: its CHILD SAs' selectors join the SPD.
    fn tunnel_added(&self, cfg: &TunnelConfig) {
        let (policies, children) = spd_policies(cfg);
        lock(&self.inputs).spd.insert(cfg.name.clone(), (policies, children));
        self.spd_changed();
    }

    fn tunnel_removed(&self, tunnel: &str) {
        if lock(&self.inputs).spd.remove(tunnel).is_some() {
            self.spd_changed();
        }
    }

    fn spd_changed(&self) {
        if self.batch.load(Ordering::Acquire) > 0 {
            self.spd_dirty.store(true, Ordering::Release);
        } else {
            self.compile(true, false);
        }
    }

    /// How long wasmtime took to compile the component of `hook`'s plugin when it was loaded
    /// (`None` for the builtin).
    pub fn compile_time(&self, hook: Hook) -> Option<Duration> {
        lock(&self.hooks)[idx(hook)].compile
    }

    /// The status of each hook, for `GET /plugins/hooks`.
    pub fn hooks(&self) -> Vec<api::PluginHook> {
        let now = Instant::now();
        let hooks = lock(&self.hooks).clone();
        HOOKS
            .iter()
            .map(|&h| {
                let s = &hooks[idx(h)];
                let sup = self.sup.status(h, now);
                api::PluginHook {
                    hook: h.name().to_owned(),
                    plugin: s.plugin.clone(),
                    source: s.source.name().to_owned(),
                    digest: s.digest.clone(),
                    generation: s.published.map(|p| p.0),
                    entries: s.published.map(|p| p.1),
                    chains: s.published.filter(|_| h == Hook::SecurityGroup).map(|p| p.2),
                    quarantined: sup.quarantined_for.map(|d| {
                        format!(
                            "{} (for another {} s)",
                            sup.last_fault.clone().unwrap_or_default(),
                            d.as_secs().max(1)
                        )
                    }),
                    recent_faults: sup.recent_faults as u32,
                    last_error: s.last_error.clone(),
                    note: s.note.clone(),
                }
            })
            .collect()
    }

    /// The quarantine reason of the uploaded plugin version `digest`, if it runs and is
    /// quarantined.
    pub fn quarantined(&self, digest: &str) -> Option<String> {
        let hooks = self.hooks();
        let hooks_state = lock(&self.hooks).clone();
        HOOKS.iter().zip(hooks).find_map(|(h, st)| {
            (hooks_state[idx(*h)].digest.as_deref() == Some(digest)).then_some(st.quarantined)?
        })
    }
}

/// `name` of `name@version`.
fn plugin_name(p: &str) -> &str {
    p.split('@').next().unwrap_or(p)
}

/// The SG/ACL chains and their rule count of a table.
fn count_sg(t: &isthmus_tables::sg::SgTable) -> (usize, usize) {
    let mut rules = 0;
    let mut chains = 0;
    for a in t.attachments() {
        let id = isthmus_tables::sg::AttachmentId::of(a);
        for k in [ChainKind::SecurityGroup, ChainKind::NetworkAcl] {
            for d in [Direction::Inbound, Direction::Outbound] {
                if let Some(c) = t.chain(id, k, d) {
                    chains += 1;
                    rules += c.len();
                }
            }
        }
    }
    (rules, chains)
}

/// The uploaded build a hook is to run.
struct Chosen {
    name: String,
    digest: String,
    /// Already read and verified (a pinned build whose signer was checked).
    verified: Option<isthmus_policy::VerifiedPlugin>,
    /// Its configuration text (the binding's `config`).
    config: String,
}

/// [`Policy::pick`]'s answer.
struct Pick {
    /// `None`: the hook's default (bundled or builtin).
    chosen: Option<Chosen>,
    /// For the hook's status.
    note: Option<String>,
    /// Pins that could not be honoured, and why.
    refused: Vec<String>,
}

/// The store's form of the digest a binding pins: lowercase hex, without `sha256:`.
pub fn pinned_digest(b: &isthmus_config::Plugin) -> String {
    b.digest.strip_prefix("sha256:").unwrap_or(&b.digest).to_ascii_lowercase()
}

/// A digest's first 12 hex digits, as `sha256:0123456789ab`.
fn short(digest: &str) -> String {
    let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
    format!("sha256:{}", hex.get(..12).unwrap_or(hex))
}

fn join_notes(notes: Vec<String>) -> Option<String> {
    (!notes.is_empty()).then(|| notes.join("; "))
}

/// The name of the configuration's trusted key `k`.
fn key_name(cfg: &Config, k: &PublicKey) -> Option<String> {
    cfg.trusted_keys
        .iter()
        .find(|t| trusted_keys_of(std::slice::from_ref(*t)).first() == Some(k))
        .map(|t| t.name.clone())
}

fn config_hook(h: isthmus_config::Hook) -> Hook {
    match h {
        isthmus_config::Hook::Spd => Hook::Spd,
        isthmus_config::Hook::SecurityGroup => Hook::SecurityGroup,
        isthmus_config::Hook::Alarm => Hook::Alarm,
    }
}

/// The `spd` hook's input for one tunnel: a `protect` policy per local × remote selector pair of
/// each CHILD SA (RFC 4301 §4.4.1.1), named `tunnel/child#i` as the driver names them, no
/// explicit priority (the plugin orders them).
fn spd_policies(cfg: &TunnelConfig) -> (Vec<SpdPolicy>, Vec<String>) {
    let mut out = Vec::new();
    for c in &cfg.children {
        for (i, s) in
            isthmus_tunnels::esp::selectors(&c.local_ts, &c.remote_ts).into_iter().enumerate()
        {
            out.push(SpdPolicy {
                id: format!("{}/{}#{i}", cfg.name, c.name),
                selector: s,
                action: SpdAction::Protect { tunnel: cfg.name.clone(), child: c.name.clone() },
                priority: None,
            });
        }
    }
    (out, cfg.children.iter().map(|c| c.name.clone()).collect())
}

fn any_prefixes() -> [Prefix; 2] {
    [
        Prefix::new(std::net::Ipv4Addr::UNSPECIFIED.into(), 0)
            .unwrap_or(Prefix::host(std::net::Ipv4Addr::UNSPECIFIED.into())),
        Prefix::new(std::net::Ipv6Addr::UNSPECIFIED.into(), 0)
            .unwrap_or(Prefix::host(std::net::Ipv6Addr::UNSPECIFIED.into())),
    ]
}

/// One configuration rule in the hook's cloud form: one rule per peer prefix (the source of an
/// `in` rule, the destination of an `out` rule; any IPv4 and any IPv6 when none is given). The
/// prefixes on the bound side (an `in` rule's destination, an `out` rule's source) have no place
/// in that form: traffic there is the attachment's own by construction, so they are not used.
fn cloud_rules(r: &isthmus_config::Rule, out: &mut Vec<SgRule>) {
    let direction = match r.direction {
        isthmus_config::Direction::In => Direction::Inbound,
        isthmus_config::Direction::Out => Direction::Outbound,
    };
    let peers: Vec<Prefix> = match direction {
        Direction::Inbound => r.source.clone(),
        Direction::Outbound => r.destination.clone(),
    };
    let peers = if peers.is_empty() { any_prefixes().to_vec() } else { peers };
    let single = peers.len() == 1;
    for (k, peer) in peers.into_iter().enumerate() {
        out.push(SgRule {
            id: if single { r.priority.to_string() } else { format!("{}#{k}", r.priority) },
            priority: r.priority,
            direction,
            action: match r.action {
                isthmus_config::Action::Allow => Action::Allow,
                isthmus_config::Action::Deny => Action::Deny,
            },
            protocol: r.protocol.number(),
            peer,
            ports: if r.protocol.has_ports() { r.ports } else { PortRange::ANY },
        });
    }
}

/// Rules that give a group the configuration's `default_action` where the hook's cloud defaults
/// (security groups: inbound deny, outbound allow; ACLs: deny) differ: catch-alls after every
/// other rule.
fn defaults(
    default: isthmus_config::Action,
    cloud_in: Action,
    cloud_out: Action,
    out: &mut Vec<SgRule>,
) {
    let want = match default {
        isthmus_config::Action::Allow => Action::Allow,
        isthmus_config::Action::Deny => Action::Deny,
    };
    for (dir, cloud, tag) in
        [(Direction::Inbound, cloud_in, "in"), (Direction::Outbound, cloud_out, "out")]
    {
        if cloud == want {
            continue;
        }
        for (k, peer) in any_prefixes().into_iter().enumerate() {
            out.push(SgRule {
                id: format!("default-{tag}#{k}"),
                priority: u32::MAX,
                direction: dir,
                action: want,
                protocol: None,
                peer,
                ports: PortRange::ANY,
            });
        }
    }
}

/// The `security-group` hook's input from the configuration.
fn sg_inputs(cfg: &Config) -> (Vec<SgGroup>, Vec<SgGroup>) {
    let groups = cfg
        .security_groups
        .iter()
        .map(|g| {
            let mut rules = Vec::new();
            for r in &g.rules {
                cloud_rules(r, &mut rules);
            }
            defaults(g.default_action, Action::Deny, Action::Allow, &mut rules);
            SgGroup {
                name: g.name.clone(),
                attach: g.tunnels.iter().chain(g.lans.iter()).cloned().collect(),
                rules,
            }
        })
        .collect();
    let acls = cfg
        .network_acls
        .iter()
        .map(|a| {
            let mut rules = Vec::new();
            for r in &a.rules {
                cloud_rules(r, &mut rules);
            }
            defaults(a.default_action, Action::Deny, Action::Deny, &mut rules);
            SgGroup { name: a.name.clone(), attach: a.lans.clone(), rules }
        })
        .collect();
    (groups, acls)
}

/// The driver's dataplane: SAs go to the userspace ESP engine; tunnels added or removed change
/// the SPD, which [`Policy`] compiles through the `spd` hook and publishes (one owner).
struct PolicyDataplane {
    esp: EspDataplane,
    policy: Weak<Policy>,
}

impl Dataplane for PolicyDataplane {
    fn install_child(&mut self, sa: &ChildInstall<'_>) -> Result<(), String> {
        self.esp.install_child(sa)
    }

    fn remove_child(
        &mut self,
        tunnel: &str,
        child: &str,
        spi_in: u32,
        spi_out: u32,
        reason: &isthmus_ike::DownReason,
    ) {
        self.esp.remove_child(tunnel, child, spi_in, spi_out, reason)
    }

    fn tunnel_added(&mut self, cfg: &TunnelConfig) -> Result<(), String> {
        if let Some(p) = self.policy.upgrade() {
            p.tunnel_added(cfg);
        }
        Ok(())
    }

    fn tunnel_removed(&mut self, tunnel: &str) {
        if let Some(p) = self.policy.upgrade() {
            p.tunnel_removed(tunnel);
        }
    }

    fn owns_nat_t(&self) -> bool {
        self.esp.owns_nat_t()
    }

    fn send_nat_t(
        &self,
        local: std::net::SocketAddr,
        remote: std::net::SocketAddr,
        data: &[u8],
        marker: bool,
    ) -> std::io::Result<()> {
        self.esp.send_nat_t(local, remote, data, marker)
    }
}

/// The trusted plugin signing keys of `cfg` (malformed ones skipped: validation reports them).
pub fn trusted_keys(cfg: &Config) -> Vec<PublicKey> {
    trusted_keys_of(&cfg.trusted_keys)
}

fn trusted_keys_of(keys: &[isthmus_config::TrustedKey]) -> Vec<PublicKey> {
    keys.iter()
        .filter_map(|k| k.key_bytes())
        .filter_map(|b| {
            let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
            PublicKey::parse(&format!("ed25519:{hex}")).ok()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use isthmus_tables::FlowKey;
    use isthmus_tables::sg::{AttachmentId, SgTable};

    const BASE: &str = r#"
[gateway]
name = "gw"
[gateway.wan]
interface = "wan0"
address = "10.62.0.1/24"
next_hop = "10.62.0.254"
[[gateway.lan]]
name = "lan"
interface = "lan0"
addresses = ["10.62.1.1/24"]
[[customer_gateway]]
name = "dc"
address = "10.62.0.2"
[[tunnel]]
name = "to-dc"
customer_gateway = "dc"
psk = "a-long-enough-pre-shared-key-0123456789"
[[tunnel.spd]]
local = ["10.62.1.0/24"]
remote = ["10.62.2.0/24", "10.62.3.0/24"]
"#;

    fn cfg(extra: &str) -> Config {
        Config::from_toml(&format!("{BASE}{extra}")).expect("valid configuration")
    }

    fn key(src: &str, dst: &str, proto: u8, dst_port: u16) -> FlowKey {
        FlowKey {
            src: src.parse().unwrap(),
            dst: dst.parse().unwrap(),
            proto,
            src_port: 40000,
            dst_port,
        }
    }

    #[test]
    fn rules_expand_per_peer_prefix_and_defaults_become_catch_alls() {
        let c = cfg(r#"
[[security_group]]
name = "web"
tunnels = ["to-dc"]
default_action = "allow"
[[security_group.rule]]
priority = 5
action = "allow"
direction = "in"
protocol = "tcp"
source = ["10.62.2.0/24", "10.62.3.0/24"]
destination = "10.62.1.0/24"
ports = 443
[[security_group.rule]]
priority = 7
action = "deny"
direction = "out"
protocol = "icmp"
[[network_acl]]
name = "edge"
lans = ["lan"]
"#);
        let (groups, acls) = sg_inputs(&c);
        let g = &groups[0];
        assert_eq!(g.attach, ["to-dc"]);
        let ids: Vec<&str> = g.rules.iter().map(|r| r.id.as_str()).collect();
        // The default allow differs from the cloud default only inbound.
        assert_eq!(ids, ["5#0", "5#1", "7#0", "7#1", "default-in#0", "default-in#1"]);
        assert_eq!(g.rules[0].peer.to_string(), "10.62.2.0/24");
        assert_eq!(g.rules[0].ports, PortRange { first: 443, last: 443 });
        assert_eq!(g.rules[2].direction, Direction::Outbound);
        assert!(g.rules[2].peer.addr().is_ipv4() && g.rules[3].peer.addr().is_ipv6());
        assert_eq!(g.rules[4].priority, u32::MAX);
        assert_eq!(g.rules[4].action, Action::Allow);
        // An ACL's default deny is the cloud default: no rule added.
        assert_eq!(acls[0].attach, ["lan"]);
        assert!(acls[0].rules.is_empty());
    }

    /// The configuration's semantics (priority order within the group, then its default) and
    /// the default plugin's compiled table agree, for one group per attachment.
    #[test]
    fn compiled_verdicts_follow_the_configuration() {
        let c = cfg(r#"
[[security_group]]
name = "app"
lans = ["lan"]
[[security_group.rule]]
priority = 10
action = "allow"
direction = "in"
protocol = "tcp"
source = "10.62.2.0/24"
ports = "8000-8099"
[[security_group.rule]]
priority = 20
action = "deny"
direction = "in"
protocol = "tcp"
[[security_group.rule]]
priority = 30
action = "allow"
direction = "in"
[[security_group.rule]]
priority = 40
action = "allow"
direction = "out"
protocol = "udp"
destination = "10.62.3.0/24"
"#);
        let (groups, acls) = sg_inputs(&c);
        let chains = isthmus_policy::reference::sg_compile(&groups, &acls, false).unwrap();
        let t = SgTable::build(1, &chains).unwrap();
        let lan = AttachmentId::of("lan");
        let v = |d, k: FlowKey| {
            let v = t.evaluate(lan, ChainKind::SecurityGroup, d, &k);
            (v.action, t.rule_name(lan, ChainKind::SecurityGroup, d, v.rule).to_owned())
        };
        let inb = Direction::Inbound;
        assert_eq!(
            v(inb, key("10.62.2.9", "10.62.1.5", 6, 8080)),
            (Action::Allow, "sg:app/10".into())
        );
        assert_eq!(
            v(inb, key("10.62.3.9", "10.62.1.5", 6, 8080)),
            (Action::Deny, "sg:app/20#0".into())
        );
        assert_eq!(
            v(inb, key("10.62.3.9", "10.62.1.5", 17, 53)),
            (Action::Allow, "sg:app/30#0".into())
        );
        let out = Direction::Outbound;
        assert_eq!(
            v(out, key("10.62.1.5", "10.62.3.9", 17, 53)),
            (Action::Allow, "sg:app/40".into())
        );
        // Nothing else goes out: the group's default (deny) and not the cloud default (allow).
        assert_eq!(
            v(out, key("10.62.1.5", "10.62.2.9", 6, 443)),
            (Action::Deny, "sg:app/default-out#0".into())
        );
    }

    #[test]
    fn spd_policies_name_each_selector_pair_and_protect_through_its_child() {
        let c = cfg("");
        let t = crate::core::plan::ike_tunnels(&c).unwrap().remove(0);
        let (policies, children) = spd_policies(&t.ike);
        assert_eq!(children.len(), 1);
        let child = &children[0];
        assert_eq!(policies.len(), 2, "one local x two remote prefixes");
        for (i, p) in policies.iter().enumerate() {
            assert_eq!(p.id, format!("to-dc/{child}#{i}"));
            assert_eq!(
                p.action,
                SpdAction::Protect { tunnel: "to-dc".into(), child: child.clone() }
            );
            assert_eq!(p.priority, None);
        }
        assert_eq!(policies[1].selector.remote.to_string(), "10.62.3.0/24");
    }

    #[test]
    fn trusted_keys_accept_hex_and_skip_malformed() {
        let c = cfg(r#"
[[trusted_key]]
name = "ops"
public_key = "ed25519:ab3a4348d857ca512479e5169d9405c1708788db8f5f925e59c001ab6f220dea"
"#);
        let k = trusted_keys(&c);
        assert_eq!(
            k[0].to_string(),
            "ed25519:ab3a4348d857ca512479e5169d9405c1708788db8f5f925e59c001ab6f220dea"
        );
    }

    fn ping_verdict(p: &Policy) -> (Action, String) {
        let t = p.supervisor().tables().sg();
        let lan = AttachmentId::of("lan");
        let v = t.evaluate(
            lan,
            ChainKind::SecurityGroup,
            Direction::Inbound,
            &key("10.62.2.7", "10.62.1.10", 1, 0),
        );
        (
            v.action,
            t.rule_name(lan, ChainKind::SecurityGroup, Direction::Inbound, v.rule).to_owned(),
        )
    }

    /// The race between the background load of the bundled security-group plugin and an
    /// uploaded one activated meanwhile, forced with checkpoints: the bundled component finishes
    /// compiling after the upload was loaded and before it is installed (the window where the
    /// bundled one used to replace it). The uploaded plugin's verdicts are in force once
    /// loading is over, and the hook's status names it. Needs `make plugins`.
    #[test]
    fn a_plugin_activated_while_the_bundled_one_loads_stays_in_force() {
        use std::sync::mpsc;
        if bundled::SECURITY_GROUP.is_empty() {
            eprintln!("skipped: the bundled plugins were not built (make plugins)");
            return;
        }
        let open = isthmus_testkit::plugins::component("test_sg_open.wasm");
        let db = sled::Config::new().temporary(true).open().unwrap();
        let store = PluginStore::new(db.open_tree("plugins").unwrap());
        let (sk, pk) = isthmus_policy::generate_key().unwrap();
        let c = cfg(&format!(
            "[[trusted_key]]\nname = \"test\"\npublic_key = \"{pk}\"\n\
             [[security_group]]\nname = \"web\"\nlans = [\"lan\"]\n\
             [[security_group.rule]]\npriority = 20\naction = \"deny\"\ndirection = \"in\"\n\
             protocol = \"icmp\"\n"
        ));
        let trusted = trusted_keys(&c);
        let p = Policy::start(store.clone(), Arc::default(), Arc::default()).unwrap();

        // The SG loader waits at its decision until `select` has loaded the upload; `select`
        // then waits until the loader has decided and compiled.
        let (release, held) = mpsc::channel::<()>();
        let held = Mutex::new(held);
        let weak = Arc::downgrade(&p);
        *lock(&p.checkpoints) = Some(Arc::new(move |h, at| {
            if h != Hook::SecurityGroup {
                return;
            }
            match at {
                Checkpoint::BundledLoaded => {
                    let _ = lock(&held).recv_timeout(Duration::from_secs(60));
                }
                Checkpoint::UploadedLoaded => {
                    let _ = release.send(());
                    let Some(p) = weak.upgrade() else { return };
                    let t0 = Instant::now();
                    while p.loading[idx(Hook::SecurityGroup)].load(Ordering::Acquire) > 0 {
                        assert!(t0.elapsed() < Duration::from_secs(60), "loader stuck");
                        std::thread::sleep(Duration::from_millis(5));
                    }
                }
            }
        }));

        let lines = p.refresh(&c, &trusted);
        assert!(
            lines.iter().any(|l| l.contains("compiles the bundled security-group")),
            "{lines:?}"
        );
        assert!(p.loading());
        assert_eq!(ping_verdict(&p), (Action::Deny, "sg:web/20#0".into()), "builtin meanwhile");

        let pkg = isthmus_testkit::plugins::package(
            "tenant-sg",
            "1.0.0-open",
            Hook::SecurityGroup,
            &open,
            &sk,
        );
        let digest = store.put(&isthmus_policy::verify(&pkg, &trusted).unwrap()).unwrap();
        store.activate("tenant-sg", &digest).unwrap();
        let lines = p.refresh(&c, &trusted);
        assert!(lines.iter().any(|l| l.contains("runs tenant-sg@1.0.0-open")), "{lines:?}");
        let t0 = Instant::now();
        while p.loading() {
            assert!(t0.elapsed() < Duration::from_secs(120), "bundled plugins never loaded");
            std::thread::sleep(Duration::from_millis(10));
        }

        let sg = p.hooks().into_iter().find(|h| h.hook == "security-group").unwrap();
        assert_eq!((sg.source.as_str(), sg.plugin.as_str()), ("uploaded", "tenant-sg@1.0.0-open"));
        assert_eq!(sg.entries, Some(0), "{sg:?}");
        // The open plugin binds nothing: ICMP passes, not by the bundled plugin's rule 20.
        assert_eq!(ping_verdict(&p), (Action::Allow, "unbound".into()));
        p.refresh(&c, &trusted);
        assert_eq!(ping_verdict(&p), (Action::Allow, "unbound".into()));
    }

    /// Issue 14, item 11: an SPD plugin that spins is contained by its last good table while
    /// the daemon runs, but after a restart it has none. The restarted runner (a new `Policy`
    /// on the same plugin store, as isthmusd builds at start) fails to the builtin default
    /// table, so the tunnel's traffic still finds its policy, and the hook's status and the
    /// plugin-fault alarm say so. Needs `make plugins`.
    #[test]
    fn a_spinning_spd_plugin_after_a_restart_fails_to_the_builtin_table() {
        let spin = isthmus_testkit::plugins::component("test_spin.wasm");
        let db = sled::Config::new().temporary(true).open().unwrap();
        let store = PluginStore::new(db.open_tree("plugins").unwrap());
        let (sk, pk) = isthmus_policy::generate_key().unwrap();
        let c = cfg(&format!("[[trusted_key]]\nname = \"test\"\npublic_key = \"{pk}\"\n"));
        let trusted = trusted_keys(&c);
        let tunnel = crate::core::plan::ike_tunnels(&c).unwrap().remove(0).ike;
        let pkg = isthmus_testkit::plugins::package("spd-spin", "0.0.1", Hook::Spd, &spin, &sk);
        let digest = store.put(&isthmus_policy::verify(&pkg, &trusted).unwrap()).unwrap();
        store.activate("spd-spin", &digest).unwrap();

        // The restart: nothing survives but the store, whose active SPD plugin spins.
        let events = Arc::new(EventBus::default());
        let p = Policy::start(store, events.clone(), Arc::default()).unwrap();
        p.refresh(&c, &trusted);
        p.tunnel_added(&tunnel);
        let spd = p.hooks().into_iter().find(|h| h.hook == "spd").unwrap();
        assert_eq!((spd.source.as_str(), spd.plugin.as_str()), ("uploaded", "spd-spin@0.0.1"));
        // Each call spins to its deadline: the quarantine may be over by now, not the faults.
        assert!(spd.recent_faults >= 1, "{spd:?}");
        // Both remote prefixes of `to-dc` are protected by the builtin table.
        assert_eq!(spd.entries, Some(2), "a table is in force: {spd:?}");
        assert!(spd.generation.is_some(), "{spd:?}");
        let table = p.supervisor().tables().spd();
        assert_eq!(table.entries.len(), 2);
        assert!(
            table.entries.iter().all(|e| matches!(&e.action,
                SpdAction::Protect { tunnel, .. } if tunnel == "to-dc")),
            "{:?}",
            table.entries
        );
        drop(table);
        let why = spd.last_error.unwrap_or_default();
        assert!(why.contains("builtin default SPD table") && why.contains("is in force"), "{why}");
        assert!(!why.contains("last good"), "{why}");
        // The plugin-fault event (and the fault latched for a `plugin-fault` alarm) say so.
        let events = events.recent("spd-spin", 10);
        assert!(
            events.iter().any(|e| e.kind == isthmus_api::EventKind::PluginFault
                && e.message.contains("builtin default SPD table")),
            "{events:?}"
        );
    }
}

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
//! One owner for the SPD (RFC 4301 §4.4.1): [`Policy::refresh`] plans it from the tunnels of the
//! configuration, next to the security-group inputs, and compiles both; the IKE driver only
//! installs SAs ([`isthmus_tunnels::EspDataplane::sas_only`]).
//!
//! Containment: a table is validated before it is published; a trap, a deadline or memory
//! exhaustion quarantines the plugin (exponential back-off, see the supervisor), raises a
//! `plugin-fault` event and alarm naming the plugin, the hook and the reason, and leaves the last
//! good tables in force. A compilation that failed because of a fault is retried once the
//! quarantine ends, so a crash loop costs one call per quarantine period.

mod inputs;
pub mod punt;
mod select;

use inputs::Inputs;
pub use select::{pinned_digest, trusted_keys};

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use isthmus_api::{self as api, EventKind, Severity};
use isthmus_config::Config;
use isthmus_policy::{
    AlarmAction, AlarmEvent, Hook, Limits, Manifest, Package, PluginHost, PluginStore, PolicyError,
    PolicyTables, PublicKey, SpdPolicy, Supervisor,
};
use isthmus_tables::sg::{ChainKind, Direction};
use isthmus_tables::spd::SpdTable;

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

impl std::fmt::Debug for Policy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Policy").finish_non_exhaustive()
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

    /// Publishes the tables into `dp` from now on (a new dataplane: the old one's are gone with
    /// it), starting with the current ones.
    pub fn attach(&self, dp: Sink) {
        *lock(&self.sink) = Some(dp);
        self.compile(true, true);
    }

    /// Takes a new configuration (or a changed plugin store) and the tunnels planned from it
    /// (those the IKE driver is to run): selects and loads the plugin of each hook, then
    /// recompiles and publishes the security-group table and the SPD. The SPD is in force
    /// before the driver adds a tunnel, so its traffic never leaves in clear. Returns what
    /// changed, for the apply report. Failures do not fail the apply: the last good tables stay
    /// and the hook's status and a `plugin-fault` event say why.
    pub fn refresh(
        &self,
        cfg: &Config,
        trusted: &[PublicKey],
        tunnels: &[isthmus_tunnels::Tunnel],
    ) -> Vec<String> {
        *lock(&self.inputs) = Inputs::plan(cfg, tunnels);
        self.reselect(cfg, trusted)
    }

    /// The plugin store changed (an upload activated, a version rolled back): selects the
    /// plugin of each hook again and recompiles the tables from the inputs of the last
    /// [`Policy::refresh`]. Returns what changed.
    pub fn reselect(&self, cfg: &Config, trusted: &[PublicKey]) -> Vec<String> {
        let mut lines = self.select(cfg, trusted);
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

#[cfg(test)]
mod tests {
    use super::inputs::{sg_inputs, spd_policies};
    use super::*;
    use isthmus_tables::FlowKey;
    use isthmus_tables::PortRange;
    use isthmus_tables::sg::Action;
    use isthmus_tables::sg::{AttachmentId, SgTable};
    use isthmus_tables::spd::SpdAction;

    fn cfg(extra: &str) -> Config {
        let toml = isthmus_testkit::config::Gateway::new("gw")
            .wan("wan0", "10.62.0.1/24", "10.62.0.254")
            .lan("lan", "lan0", "10.62.1.1/24")
            .customer_gateway("dc", "10.62.0.2")
            .push(
                r#"[[tunnel]]
name = "to-dc"
customer_gateway = "dc"
psk = "a-long-enough-pre-shared-key-0123456789"
[[tunnel.spd]]
local = ["10.62.1.0/24"]
remote = ["10.62.2.0/24", "10.62.3.0/24"]
"#,
            )
            .push(extra)
            .toml();
        Config::from_toml(&toml).expect("valid configuration")
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

        let lines = p.refresh(&c, &trusted, &[]);
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
        let lines = p.refresh(&c, &trusted, &[]);
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
        p.refresh(&c, &trusted, &[]);
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
        let tunnels = crate::core::plan::ike_tunnels(&c).unwrap();
        let pkg = isthmus_testkit::plugins::package("spd-spin", "0.0.1", Hook::Spd, &spin, &sk);
        let digest = store.put(&isthmus_policy::verify(&pkg, &trusted).unwrap()).unwrap();
        store.activate("spd-spin", &digest).unwrap();

        // The restart: nothing survives but the store, whose active SPD plugin spins.
        let events = Arc::new(EventBus::default());
        let p = Policy::start(store, events.clone(), Arc::default()).unwrap();
        p.refresh(&c, &trusted, &tunnels);
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

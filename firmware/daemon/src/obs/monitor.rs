//! Monitoring: per-tunnel counters that stay monotonic across rekeys (the totals of every SA a
//! tunnel ever had, not only the current one — strongSwan resets them), the last packet seen in
//! each direction, tunnel state for the API, and the counters the Prometheus exposition
//! ([`crate::obs::metrics`]) reads besides them ([`Stats`]).
//!
//! The dataplane keeps the final counters of the SAs a tunnel no longer has
//! ([`isthmus_dataplane::Counters::retired`]): adding the last *sampled* reading of a removed SA
//! here lost what it carried between that sample and its removal.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Instant, SystemTime};

use isthmus_api::{self as api, EventKind, Severity};
use isthmus_config::{Config, StartAction};
use isthmus_dataplane::{Direction, Drop};
use isthmus_esp::DropReason;
use isthmus_ike::codec::ExchangeType;
use isthmus_ike::{Cause, DownReason};
use isthmus_tunnels::{TunnelEvent, TunnelState, TunnelStatus};

use crate::obs::Readings;
use crate::obs::alarms::{Alarms, Signal};
use crate::obs::events::EventBus;
use crate::obs::health::Health;

/// Counters of one tunnel (or one SA).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Totals {
    /// Packets into the tunnel.
    pub packets_out: u64,
    /// Inner bytes into the tunnel.
    pub bytes_out: u64,
    /// Packets out of the tunnel.
    pub packets_in: u64,
    /// Inner bytes out of the tunnel.
    pub bytes_in: u64,
    /// Drops by reason name ([`Drop::as_str`], as `isthmus_drops_total` spells it).
    pub drops: BTreeMap<&'static str, u64>,
}

impl Totals {
    /// What a dataplane's retired SAs carried.
    fn retired(r: &isthmus_dataplane::Retired) -> Totals {
        let mut t = sa_totals(&r.outbound, false);
        t.add(&sa_totals(&r.inbound, true));
        t
    }

    fn add(&mut self, o: &Totals) {
        self.packets_out += o.packets_out;
        self.bytes_out += o.bytes_out;
        self.packets_in += o.packets_in;
        self.bytes_in += o.bytes_in;
        for (k, v) in &o.drops {
            *self.drops.entry(k).or_default() += v;
        }
    }

    fn to_api(&self) -> api::Counters {
        api::Counters {
            packets_out: self.packets_out,
            bytes_out: self.bytes_out,
            packets_in: self.packets_in,
            bytes_in: self.bytes_in,
            drops: self.drops.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect(),
        }
    }
}

#[derive(Default)]
struct Inner {
    /// The last reading of each installed SA: (spi, inbound) -> (tunnel, child, counters).
    sas: HashMap<(u32, bool), (String, String, Totals)>,
    /// The dataplane last read, and per tunnel its totals then (retired and installed SAs).
    dataplane: Weak<isthmus_dataplane::Dataplane>,
    current: HashMap<String, Totals>,
    /// Totals of the dataplanes before it (it restarts when the WAN address changes).
    earlier: HashMap<String, Totals>,
    /// When packets last went out of / came into each tunnel, with the count then.
    last_out: HashMap<String, (Instant, u64)>,
    last_in: HashMap<String, (Instant, u64)>,
    /// Per SA, when it last moved.
    sa_last: HashMap<(u32, bool), (Instant, u64)>,
    /// Per tunnel, its state at the last sample and since when.
    states: HashMap<String, (api::TunnelState, SystemTime)>,
}

/// Samples the dataplane every second.
#[derive(Default)]
pub struct Monitor {
    inner: Mutex<Inner>,
    /// Counters of what happened (negotiation and apply failures).
    pub stats: Arc<Stats>,
}

/// Why an IKE negotiation failed, as the `reason` label of `isthmus_ike_failures_total`
/// counts it: the kind of the driver's [`Cause`], without its details (which notify, which
/// words), so that the label has a fixed, small set of values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum IkeFailure {
    /// No answer after every retransmission.
    Timeout,
    /// The peer answered with an error notify.
    PeerRefused,
    /// We refused the peer's request.
    WeRefused,
    /// The peer's answer could not be used.
    BadResponse,
}

impl IkeFailure {
    /// Every reason.
    pub const ALL: [IkeFailure; 4] = [
        IkeFailure::Timeout,
        IkeFailure::PeerRefused,
        IkeFailure::WeRefused,
        IkeFailure::BadResponse,
    ];

    /// The label value.
    pub const fn as_str(self) -> &'static str {
        match self {
            IkeFailure::Timeout => "timeout",
            IkeFailure::PeerRefused => "peer-refused",
            IkeFailure::WeRefused => "we-refused",
            IkeFailure::BadResponse => "bad-response",
        }
    }
}

impl From<&Cause> for IkeFailure {
    fn from(c: &Cause) -> IkeFailure {
        match c {
            Cause::Timeout { .. } => IkeFailure::Timeout,
            Cause::PeerRefused(_) => IkeFailure::PeerRefused,
            Cause::WeRefused(_) => IkeFailure::WeRefused,
            Cause::BadResponse(_) => IkeFailure::BadResponse,
        }
    }
}

/// Event counters for the metrics: monotonic from the daemon's start.
#[derive(Default)]
pub struct Stats {
    ike_failures: Mutex<HashMap<(String, IkeFailure), u64>>,
    apply_failures: AtomicU64,
}

impl Stats {
    /// A revision could not be applied.
    pub fn apply_failed(&self) {
        self.apply_failures.fetch_add(1, Ordering::Relaxed);
    }

    /// Revisions that could not be applied so far.
    pub fn apply_failures(&self) -> u64 {
        self.apply_failures.load(Ordering::Relaxed)
    }

    /// An IKE negotiation of `tunnel` failed.
    pub fn ike_failed(&self, tunnel: &str, why: IkeFailure) {
        let mut m = self.ike_failures.lock().unwrap_or_else(|p| p.into_inner());
        *m.entry((tunnel.to_owned(), why)).or_default() += 1;
    }

    /// IKE negotiation failures of `tunnel` for `why` so far.
    pub fn ike_failures(&self, tunnel: &str, why: IkeFailure) -> u64 {
        let m = self.ike_failures.lock().unwrap_or_else(|p| p.into_inner());
        m.get(&(tunnel.to_owned(), why)).copied().unwrap_or(0)
    }
}

fn sa_totals(c: &isthmus_esp::SaCounters, inbound: bool) -> Totals {
    let mut t = Totals::default();
    if inbound {
        t.packets_in = c.packets;
        t.bytes_in = c.bytes;
    } else {
        t.packets_out = c.packets;
        t.bytes_out = c.bytes;
    }
    for r in DropReason::ALL {
        let n = c.drops.get(r);
        if n > 0 {
            // The dataplane's spelling: one name per reason everywhere.
            t.drops.insert(Drop::from(r).as_str(), n);
        }
    }
    t
}

impl Monitor {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Reads the dataplane's counters: each tunnel's totals are its retired SAs' final counters
    /// plus its installed SAs', so that tunnel counters never go backwards nor lose a packet.
    pub fn sample(&self, r: &Readings, health: &Health) {
        // Health checks probe only through tunnels that are up.
        if let Some((_, cfg)) = &r.applied {
            let mut m = self.lock();
            let now = SystemTime::now();
            for t in &cfg.tunnels {
                let up = r
                    .tunnel(&t.name)
                    .is_some_and(|s| s.state == TunnelState::Up && !s.children.is_empty());
                health.set_up(&t.name, up);
                let s = state(r.tunnel(&t.name), Some(t));
                let e = m.states.entry(t.name.clone()).or_insert((s, now));
                if e.0 != s {
                    *e = (s, now);
                }
            }
            m.states.retain(|n, _| cfg.tunnel(n).is_some());
        }
        let Some((dataplane, c)) = r.dataplane.as_ref().map(|(d, c)| (Arc::downgrade(d), c)) else {
            return;
        };
        let now = Instant::now();
        let mut m = self.lock();
        if !m.dataplane.ptr_eq(&dataplane) {
            // A new dataplane starts from zero: keep what the old one counted.
            for (t, tot) in std::mem::take(&mut m.current) {
                m.earlier.entry(t).or_default().add(&tot);
            }
            m.dataplane = dataplane;
        }
        let mut current: HashMap<String, Totals> =
            c.retired.iter().map(|(t, r)| (t.clone(), Totals::retired(r))).collect();
        for s in &c.sas {
            let inbound = s.direction == Direction::Inbound;
            current.entry(s.tunnel.clone()).or_default().add(&sa_totals(&s.counters, inbound));
        }
        m.current = current;
        let mut seen = HashMap::new();
        for s in &c.sas {
            let inbound = s.direction == Direction::Inbound;
            seen.insert(
                (s.spi, inbound),
                (s.tunnel.clone(), s.child.clone(), sa_totals(&s.counters, inbound)),
            );
        }
        m.sa_last.retain(|k, _| seen.contains_key(k));
        for (k, v) in &seen {
            let pk = v.2.packets_in + v.2.packets_out;
            let e = m.sa_last.entry(*k).or_insert((now, 0));
            if pk > e.1 {
                *e = (now, pk);
            }
        }
        m.sas = seen;
        let tunnels: Vec<String> = m.current.keys().cloned().collect();
        for t in tunnels {
            let tot = totals_locked(&m, &t);
            let e = m.last_out.entry(t.clone()).or_insert((now, 0));
            if tot.packets_out > e.1 {
                *e = (now, tot.packets_out);
            }
            let e = m.last_in.entry(t.clone()).or_insert((now, 0));
            if tot.packets_in > e.1 {
                *e = (now, tot.packets_in);
            }
        }
    }

    /// A tunnel's totals since the daemon started, across rekeys.
    pub fn totals(&self, tunnel: &str) -> Totals {
        totals_locked(&self.lock(), tunnel)
    }

    /// Seconds since packets last left through / arrived from `tunnel` (None: never).
    pub fn idle(&self, tunnel: &str) -> (Option<u64>, Option<u64>) {
        let m = self.lock();
        let f = |h: &HashMap<String, (Instant, u64)>| {
            h.get(tunnel).filter(|(_, n)| *n > 0).map(|(t, _)| t.elapsed().as_secs())
        };
        (f(&m.last_out), f(&m.last_in))
    }

    /// Since when `tunnel` has been in its current state (as of the last sample; None before
    /// the first sample that saw it).
    pub fn state_since(&self, tunnel: &str) -> Option<SystemTime> {
        self.lock().states.get(tunnel).map(|(_, t)| *t)
    }

    /// A `tunnel list` row.
    pub fn summary(&self, r: &Readings, cfg: &Config, name: &str) -> api::TunnelSummary {
        let st = r.tunnel(name).cloned();
        let t = cfg.tunnel(name);
        let cg = t.and_then(|t| cfg.customer_gateway(&t.customer_gateway));
        api::TunnelSummary {
            name: name.to_owned(),
            peer: cg.map(|c| c.name.clone()).unwrap_or_default(),
            peer_address: cg.map(|c| c.address.to_string()).unwrap_or_default(),
            state: state(st.as_ref(), t),
            uptime_secs: st.as_ref().and_then(|s| s.up_since).map(secs_since).unwrap_or(0),
            counters: self.totals(name).to_api(),
            last_error: st.as_ref().and_then(|s| {
                s.last_failure
                    .as_ref()
                    .map(|e| e.to_string())
                    .or_else(|| s.last_down_reason.clone())
            }),
        }
    }

    /// Every applied tunnel's `tunnel list` row, down ones included.
    pub fn summaries(&self, r: &Readings) -> Vec<api::TunnelSummary> {
        let Some((_, cfg)) = &r.applied else { return vec![] };
        cfg.tunnels.iter().map(|t| self.summary(r, cfg, &t.name)).collect()
    }

    /// `tunnel show`.
    pub fn detail(
        &self,
        r: &Readings,
        cfg: &Config,
        name: &str,
        events: &EventBus,
        health: &Health,
    ) -> api::TunnelDetail {
        let summary = self.summary(r, cfg, name);
        let st = r.tunnel(name).cloned();
        let children = st.as_ref().map(|s| self.child_sas(s)).unwrap_or_default();
        let rekeys = st.as_ref().map_or(0, |s| s.rekeys);
        api::TunnelDetail {
            summary,
            ike_proposal: st.as_ref().and_then(|s| s.ike_suite.clone()),
            ike_version: st.as_ref().and_then(|s| s.ike_version),
            weak_algorithms: cfg
                .tunnel(name)
                .map(|t| t.weak_algorithms().into_iter().map(String::from).collect())
                .unwrap_or_default(),
            children,
            rekeys,
            events: events.recent(&format!("tunnel/{name}"), 20),
            health: health.report(name),
            drops: tunnel_drops(self, r, name),
        }
    }

    /// A tunnel's CHILD SAs as `tunnel show` and `sa list` print them, with each SA's
    /// counters as last sampled.
    fn child_sas(&self, s: &TunnelStatus) -> Vec<api::ChildSa> {
        let m = self.lock();
        let now = Instant::now();
        s.children
            .iter()
            .map(|c| {
                let mut t = Totals::default();
                let mut ago = |k: (u32, bool)| {
                    if let Some((_, _, tt)) = m.sas.get(&k) {
                        t.add(tt);
                    }
                    m.sa_last.get(&k).filter(|(_, n)| *n > 0).map(|(i, _)| i.elapsed().as_secs())
                };
                let last_in = ago((c.spi_in, true));
                let last_out = ago((c.spi_out, false));
                api::ChildSa {
                    name: c.name.clone(),
                    spi_in: format!("{:08x}", c.spi_in),
                    spi_out: format!("{:08x}", c.spi_out),
                    proposal: c.esp.clone(),
                    local_ts: c.local_ts.clone(),
                    remote_ts: c.remote_ts.clone(),
                    age_secs: secs_since(c.since),
                    last_in_secs: last_in,
                    last_out_secs: last_out,
                    rekey_in_secs: secs_until(c.rekey_at, now),
                    expire_in_secs: secs_until(c.expire_at, now),
                    counters: t.to_api(),
                }
            })
            .collect()
    }

    /// `sa list`: every established IKE SA with its CHILD SAs, by tunnel name.
    pub fn sas(&self, r: &Readings) -> Vec<api::IkeSa> {
        let now = Instant::now();
        let mut up: Vec<&TunnelStatus> = r
            .tunnels
            .values()
            .filter(|s| s.state == TunnelState::Up && s.ike_spis.is_some())
            .collect();
        up.sort_by(|a, b| a.name.cmp(&b.name));
        up.into_iter()
            .map(|s| {
                let (spi_i, spi_r) = s.ike_spis.unwrap_or_default();
                api::IkeSa {
                    tunnel: s.name.clone(),
                    ike_version: s.ike_version.unwrap_or(2),
                    local: s.local.to_string(),
                    peer: s.peer.to_string(),
                    spi_i: format!("{spi_i:016x}"),
                    spi_r: format!("{spi_r:016x}"),
                    initiator: s.ike_initiator,
                    proposal: s.ike_suite.clone().unwrap_or_default(),
                    encap: s.encap,
                    age_secs: s.ike_since.map(secs_since).unwrap_or(0),
                    rekey_in_secs: secs_until(s.ike_rekey_at, now),
                    expire_in_secs: secs_until(s.ike_expire_at, now),
                    children: self.child_sas(s),
                }
            })
            .collect()
    }
}

/// Whole seconds since `t` (0 if the clock went back).
fn secs_since(t: SystemTime) -> u64 {
    SystemTime::now().duration_since(t).map(|d| d.as_secs()).unwrap_or(0)
}

/// Whole seconds until a deadline, rounded up so that a rekey shows 0 only once due.
fn secs_until(at: Option<Instant>, now: Instant) -> Option<u64> {
    at.map(|at| at.saturating_duration_since(now).as_millis().div_ceil(1000) as u64)
}

/// The stage a security-group or network-ACL rule drop is counted at: `sg-in`, `nacl-out`, ...
/// The drops attributed to `tunnel`: its SAs' ESP drops (stage `esp`, across rekeys), and the
/// security-group and ACL drops of its attachment by deciding rule (stage `sg-in`, ...).
pub fn tunnel_drops(monitor: &Monitor, r: &Readings, tunnel: &str) -> Vec<api::StageDrop> {
    let mut v: Vec<api::StageDrop> = monitor
        .totals(tunnel)
        .drops
        .iter()
        .filter(|(_, n)| **n > 0)
        .map(|(r, n)| api::StageDrop {
            stage: Drop::from_name(r).map_or("esp", |d| d.stage()).into(),
            reason: (*r).to_owned(),
            packets: *n,
        })
        .collect();
    if let Some(c) = r.counters() {
        v.extend(c.rule_drops.iter().filter(|r| r.attachment == tunnel && r.packets > 0).map(
            |r| api::StageDrop {
                stage: Drop::of_chain(r.kind, r.direction).as_str().into(),
                reason: r.rule.clone(),
                packets: r.packets,
            },
        ));
    }
    v
}

/// Every drop of the gateway: each stage's non-zero counters (stage and reason as in
/// `isthmus_drops_total`), then security-group and ACL drops by rule, `rule (attachment)`.
pub fn gateway_drops(r: &Readings) -> Vec<api::StageDrop> {
    let Some(c) = r.counters() else { return vec![] };
    let mut v: Vec<api::StageDrop> = c
        .drops
        .iter()
        .filter(|(_, n)| *n > 0)
        .map(|(d, n)| api::StageDrop {
            stage: d.stage().into(),
            reason: d.as_str().into(),
            packets: n,
        })
        .collect();
    v.extend(c.rule_drops.iter().filter(|r| r.packets > 0).map(|r| api::StageDrop {
        stage: Drop::of_chain(r.kind, r.direction).as_str().into(),
        reason: format!("{} ({})", r.rule, r.attachment),
        packets: r.packets,
    }));
    v
}

fn totals_locked(m: &Inner, tunnel: &str) -> Totals {
    let mut t = m.earlier.get(tunnel).cloned().unwrap_or_default();
    if let Some(c) = m.current.get(tunnel) {
        t.add(c);
    }
    t
}

/// A tunnel's state as the operator sees it, from its configuration (`t`; None: not
/// configured) and the driver's status. An on-demand tunnel (`start_action = "trap"`) without
/// an SA is idle unless a negotiation that traffic started has failed since it last was up.
pub fn state(st: Option<&TunnelStatus>, t: Option<&isthmus_config::Tunnel>) -> api::TunnelState {
    let Some(t) = t else { return api::TunnelState::Down };
    if !t.enabled {
        return api::TunnelState::Disabled;
    }
    let trap = t.start_action == StartAction::Trap;
    match st {
        Some(s) => match s.state {
            TunnelState::Up if s.children.is_empty() => api::TunnelState::Degraded,
            TunnelState::Up => api::TunnelState::Up,
            TunnelState::Connecting => api::TunnelState::Connecting,
            TunnelState::Down if trap && s.last_failure.is_none() => api::TunnelState::Idle,
            TunnelState::Down => api::TunnelState::Down,
        },
        None if trap => api::TunnelState::Idle,
        None => api::TunnelState::Down,
    }
}

/// The typed alarm signal a driver event carries, if any: read from the driver's types (the
/// IKE SA's [`DownReason`], the failed exchange), never from message text.
pub fn signal_of(ev: &TunnelEvent) -> Option<Signal> {
    match ev {
        TunnelEvent::IkeUp { rekeyed: false, .. } => Some(Signal::Up),
        TunnelEvent::IkeUp { rekeyed: true, .. } => Some(Signal::Rekeyed),
        TunnelEvent::ChildUp { rekey_of: Some(_), .. } => Some(Signal::Rekeyed),
        TunnelEvent::IkeDown { cause: DownReason::DeadPeer, .. } => Some(Signal::DeadPeer),
        // The hard lifetime ran out: every rekey attempt before it failed.
        TunnelEvent::IkeDown { cause: DownReason::Expired, .. } => Some(Signal::RekeyFailed),
        TunnelEvent::Failed(e) if e.exchange == ExchangeType::CREATE_CHILD_SA => {
            Some(Signal::RekeyFailed)
        }
        _ => None,
    }
}

/// Turns the driver's events into the daemon's events (and alarm signals), on a thread.
pub fn forward_tunnel_events(
    tunnels: &isthmus_tunnels::Tunnels,
    bus: Arc<EventBus>,
    alarms: Arc<Alarms>,
    stats: Arc<Stats>,
) {
    let rx = tunnels.subscribe();
    let spawned = std::thread::Builder::new().name("tunnel-events".into()).spawn(move || {
        for ev in rx {
            let (kind, tunnel, sev, msg) = match &ev {
                TunnelEvent::IkeUp { tunnel, peer, suite, encap, rekeyed, version } => (
                    if *rekeyed { EventKind::IkeRekeyed } else { EventKind::TunnelUp },
                    tunnel.clone(),
                    Severity::Info,
                    format!(
                        "IKE{} SA with {peer} established ({suite}{})",
                        if *version == 1 { "v1" } else { "" },
                        if *encap { ", UDP-encapsulated" } else { "" }
                    ),
                ),
                TunnelEvent::IkeDown { tunnel, reason, .. } => (
                    EventKind::TunnelDown,
                    tunnel.clone(),
                    Severity::Warning,
                    format!("IKE SA down: {reason}"),
                ),
                TunnelEvent::ChildUp { tunnel, child, spi_in, spi_out, esp, rekey_of } => (
                    if rekey_of.is_some() { EventKind::ChildRekeyed } else { EventKind::ChildUp },
                    tunnel.clone(),
                    Severity::Info,
                    format!(
                        "CHILD SA {child} installed: SPIs in {spi_in:08x} out {spi_out:08x}, {esp}"
                    ),
                ),
                TunnelEvent::ChildDown { tunnel, child, spi_in, spi_out, reason } => (
                    EventKind::ChildDown,
                    tunnel.clone(),
                    Severity::Info,
                    format!(
                        "CHILD SA {child} (in {spi_in:08x} out {spi_out:08x}) removed: {reason}"
                    ),
                ),
                TunnelEvent::Failed(e) => {
                    stats.ike_failed(&e.tunnel, IkeFailure::from(&e.cause));
                    (
                        EventKind::NegotiationFailed,
                        e.tunnel.clone(),
                        Severity::Warning,
                        e.to_string(),
                    )
                }
                TunnelEvent::Suppressed { tunnel, .. } => {
                    (EventKind::LogSuppressed, tunnel.clone(), Severity::Warning, ev.to_string())
                }
                TunnelEvent::InstallFailed { tunnel, child, error } => (
                    EventKind::InstallFailed,
                    tunnel.clone(),
                    Severity::Critical,
                    format!("the dataplane refused CHILD SA {child}: {error}"),
                ),
                #[allow(unreachable_patterns)]
                other => {
                    (EventKind::TunnelEvent, String::new(), Severity::Info, format!("{other:?}"))
                }
            };
            if let Some(s) = signal_of(&ev) {
                alarms.signal(&tunnel, s, &msg);
            }
            bus.emit(kind, &format!("tunnel/{tunnel}"), sev, msg);
        }
    });
    if let Err(e) = spawned {
        tracing::error!("cannot start the tunnel event thread: {e}");
    }
}

//! IKE SA state and bookkeeping: the [`Phase`] an SA is in and the data each phase owns;
//! lookups, SPIs and nonces, the timer wheel, queued exchanges, removal.
//!
//! This is IKEv2's SA (RFC 7296). IKEv1 (RFC 2409) has other phases (Main/Aggressive Mode,
//! Quick Mode) and other keys (SKEYID_d/a/e): it gets its own `ikev1` module beside `endpoint`,
//! sharing the codec primitives, crypto and proposals, not this enum.

use super::*;

/// Where an IKEv2 SA is in its life, with what is valid there: the IKE_SA_INIT secrets only
/// while initiating, the AUTH transcript until IKE_AUTH is done, the keys (SK_d, SK_ei/er,
/// SK_pi/pr, §2.14; AEAD needs no SK_ai/ar) from the moment they are derived until the SA is
/// gone. Code that needs a phase's data matches on it, so a phase that lacks it cannot reach it.
pub(super) enum Phase {
    /// Initiator: IKE_SA_INIT sent (again after a COOKIE or INVALID_KE_PAYLOAD, §1.2, §2.6).
    Initiating(Box<Initiating>),
    /// Responder: IKE_SA_INIT answered, waiting for IKE_AUTH.
    HalfOpen(Box<HalfOpen>),
    /// Initiator: IKE_AUTH sent.
    Authenticating(Box<Authenticating>),
    /// IKE_AUTH done (or taken over from a rekeyed SA, §1.3.2).
    Established(Box<Established>),
    /// Replaced (by its rekeyed successor, a duplicate or a Delete): its Delete is queued,
    /// outstanding or done. Once done it lingers until `linger_until` to answer
    /// retransmissions, then is removed.
    Rekeyed { keyed: Keyed, linger_until: Option<Instant> },
    /// Being deleted; the keys when it had derived them (to send or answer the Delete).
    Deleting { keyed: Option<Keyed>, linger_until: Option<Instant> },
}

/// What protects an SA's messages once IKE_SA_INIT is done (§2.14, §3.14).
pub(super) struct Keyed {
    pub(super) keys: Box<IkeKeys>,
    /// The negotiated algorithms.
    pub(super) suite: IkeSuite,
    /// The explicit IV of the next message we seal: one counter per key, never reused.
    pub(super) iv_counter: u64,
}

/// The two IKE_SA_INIT messages and nonces that the AUTH payloads sign (§2.15).
pub(super) struct Transcript {
    pub(super) ni: Vec<u8>,
    pub(super) nr: Vec<u8>,
    /// Our IKE_SA_INIT request (initiator) or the peer's (responder).
    pub(super) msg1: Vec<u8>,
    /// The IKE_SA_INIT response.
    pub(super) msg2: Vec<u8>,
}

pub(super) struct Initiating {
    pub(super) dh: DhSecret,
    pub(super) ni: Vec<u8>,
    /// Our latest IKE_SA_INIT request.
    pub(super) msg1: Vec<u8>,
    pub(super) cookie: Option<Vec<u8>>,
    pub(super) tried_groups: Vec<DhGroup>,
    /// The CHILD SA configuration for IKE_AUTH and its reserved inbound SPI.
    pub(super) first_child: Option<(usize, u32)>,
    /// Keep re-initiating on timeouts (a DPD restart).
    pub(super) persistent: bool,
}

pub(super) struct HalfOpen {
    pub(super) keyed: Keyed,
    pub(super) transcript: Transcript,
    /// Tunnels this SA may belong to (matched by address), refined by IDi.
    pub(super) candidates: Vec<usize>,
}

pub(super) struct Authenticating {
    pub(super) keyed: Keyed,
    pub(super) transcript: Transcript,
    pub(super) first_child: Option<(usize, u32)>,
    pub(super) persistent: bool,
}

pub(super) struct Established {
    pub(super) keyed: Keyed,
    /// When to rekey (soft lifetime, jittered) and when the SA expires (hard lifetime).
    pub(super) rekey_at: Option<Instant>,
    pub(super) expire_at: Option<Instant>,
    /// Our IKE rekey was outstanding when the peer's arrived (§2.8.1).
    pub(super) collision: Option<IkeCollision>,
    /// The group the peer asked for (INVALID_KE_PAYLOAD) when we last tried to rekey; the
    /// next try uses it instead of the current SA's.
    pub(super) rekey_group: Option<DhGroup>,
}

/// The peer's IKE SA rekey that crossed ours: its nonces and the SA it created (our SPI).
pub(super) struct IkeCollision {
    pub(super) ni: Vec<u8>,
    pub(super) nr: Vec<u8>,
    pub(super) new_spi: u64,
}

/// SK_d and its PRF, copied out of an SA's keys for a derivation (CHILD SA keys, §2.17; a
/// rekeyed IKE SA's, §2.18) while the SA itself is borrowed; zeroized when dropped.
pub(super) struct SkD {
    pub(super) prf: Prf,
    pub(super) key: Zeroizing<Vec<u8>>,
}

impl Keyed {
    pub(super) fn new(keys: IkeKeys, suite: IkeSuite) -> Keyed {
        Keyed { keys: Box::new(keys), suite, iv_counter: 0 }
    }

    pub(super) fn sk_d(&self) -> SkD {
        SkD { prf: self.keys.prf, key: Zeroizing::new(self.keys.sk_d.clone()) }
    }
}

impl Phase {
    /// Leaves a keyless `Deleting` in its place: for a transition that consumes the old
    /// phase's data, which then sets the next phase.
    pub(super) fn take(&mut self) -> Phase {
        std::mem::replace(self, Phase::deleting(None))
    }

    pub(super) fn deleting(keyed: Option<Keyed>) -> Phase {
        Phase::Deleting { keyed, linger_until: None }
    }

    pub(super) fn established(keyed: Keyed) -> Phase {
        Phase::Established(Box::new(Established {
            keyed,
            rekey_at: None,
            expire_at: None,
            collision: None,
            rekey_group: None,
        }))
    }

    pub(super) fn keyed(&self) -> Option<&Keyed> {
        match self {
            Phase::Initiating(_) | Phase::Deleting { keyed: None, .. } => None,
            Phase::HalfOpen(h) => Some(&h.keyed),
            Phase::Authenticating(a) => Some(&a.keyed),
            Phase::Established(e) => Some(&e.keyed),
            Phase::Rekeyed { keyed: k, .. } | Phase::Deleting { keyed: Some(k), .. } => Some(k),
        }
    }

    pub(super) fn keyed_mut(&mut self) -> Option<&mut Keyed> {
        match self {
            Phase::Initiating(_) | Phase::Deleting { keyed: None, .. } => None,
            Phase::HalfOpen(h) => Some(&mut h.keyed),
            Phase::Authenticating(a) => Some(&mut a.keyed),
            Phase::Established(e) => Some(&mut e.keyed),
            Phase::Rekeyed { keyed: k, .. } | Phase::Deleting { keyed: Some(k), .. } => Some(k),
        }
    }

    /// The keys, leaving whatever else the phase held (for a move to `Rekeyed`/`Deleting`).
    pub(super) fn into_keyed(self) -> Option<Keyed> {
        match self {
            Phase::Initiating(_) => None,
            Phase::HalfOpen(h) => Some(h.keyed),
            Phase::Authenticating(a) => Some(a.keyed),
            Phase::Established(e) => Some(e.keyed),
            Phase::Rekeyed { keyed, .. } => Some(keyed),
            Phase::Deleting { keyed, .. } => keyed,
        }
    }

    /// The negotiated algorithms, once IKE_SA_INIT is done.
    pub(super) fn suite(&self) -> Option<IkeSuite> {
        self.keyed().map(|k| k.suite)
    }

    /// The initiator's first CHILD SA while IKE_AUTH has not carried it yet.
    pub(super) fn first_child(&self) -> Option<(usize, u32)> {
        match self {
            Phase::Initiating(i) => i.first_child,
            Phase::Authenticating(a) => a.first_child,
            _ => None,
        }
    }

    /// The SA was started to keep a tunnel up (a DPD restart): retry when it fails.
    pub(super) fn persistent(&self) -> bool {
        match self {
            Phase::Initiating(i) => i.persistent,
            Phase::Authenticating(a) => a.persistent,
            _ => false,
        }
    }

    pub(super) fn is_established(&self) -> bool {
        matches!(self, Phase::Established(_))
    }

    pub(super) fn is_rekeyed(&self) -> bool {
        matches!(self, Phase::Rekeyed { .. })
    }

    pub(super) fn is_deleting(&self) -> bool {
        matches!(self, Phase::Deleting { .. })
    }

    pub(super) fn is_half_open(&self) -> bool {
        matches!(self, Phase::HalfOpen(_))
    }
}

pub(super) struct IkeSa {
    pub(super) tunnel: Option<usize>,
    /// We are the original initiator of this IKE SA (it decides the key directions).
    pub(super) initiator: bool,
    pub(super) spi_i: u64,
    pub(super) spi_r: u64,
    pub(super) local: SocketAddr,
    pub(super) remote: SocketAddr,
    pub(super) nat_t: bool,
    pub(super) behind_nat: bool,
    pub(super) phase: Phase,
    pub(super) next_req_id: u32,
    pub(super) peer_next_req: u32,
    pub(super) cached_resp: Option<(u32, Vec<u8>)>,
    pub(super) out: Option<Request>,
    pub(super) queue: VecDeque<Task>,
    pub(super) children: Vec<Child>,
    pub(super) created: Instant,
    pub(super) last_rx: Instant,
    pub(super) keepalive_at: Option<Instant>,
    /// min(Ni, Nr) of the exchange that created this SA, for duplicate resolution.
    pub(super) nonce_key: Vec<u8>,
    pub(super) established_at: Option<Instant>,
    pub(super) timer: Option<Instant>,
}

impl IkeSa {
    /// A new IKE SA with no exchange history: the one place an `IkeSa` is built; the exchange
    /// that creates it sets what it knows.
    pub(super) fn new(
        initiator: bool,
        spi_i: u64,
        spi_r: u64,
        local: SocketAddr,
        remote: SocketAddr,
        phase: Phase,
        now: Instant,
    ) -> IkeSa {
        IkeSa {
            tunnel: None,
            initiator,
            spi_i,
            spi_r,
            local,
            remote,
            nat_t: false,
            behind_nat: false,
            phase,
            next_req_id: 0,
            peer_next_req: 0,
            cached_resp: None,
            out: None,
            queue: VecDeque::new(),
            children: Vec::new(),
            created: now,
            last_rx: now,
            keepalive_at: None,
            nonce_key: Vec::new(),
            established_at: None,
            timer: None,
        }
    }

    pub(super) fn our_spi(&self) -> u64 {
        if self.initiator { self.spi_i } else { self.spi_r }
    }

    /// To `Rekeyed`, keeping the keys for its Delete exchange (and a removal time if set).
    pub(super) fn retire(&mut self) {
        let linger_until = self.linger_until();
        self.phase = match self.phase.take().into_keyed() {
            Some(keyed) => Phase::Rekeyed { keyed, linger_until },
            None => Phase::Deleting { keyed: None, linger_until },
        };
    }

    /// Back to `Established`: a parked SA adopted after a rekey collision (§2.8.1).
    pub(super) fn reinstate(&mut self) {
        if let Some(k) = self.phase.take().into_keyed() {
            self.phase = Phase::established(k);
        }
    }

    pub(super) fn established(&self) -> Option<&Established> {
        match &self.phase {
            Phase::Established(e) => Some(e),
            _ => None,
        }
    }

    pub(super) fn established_mut(&mut self) -> Option<&mut Established> {
        match &mut self.phase {
            Phase::Established(e) => Some(e),
            _ => None,
        }
    }

    /// The peer's IKE rekey that crossed ours, if any (only an established SA records one).
    pub(super) fn take_ike_collision(&mut self) -> Option<IkeCollision> {
        self.established_mut().and_then(|e| e.collision.take())
    }

    /// Starts the lifetimes of an SA that just became established.
    pub(super) fn set_lifetime(&mut self, rekey_at: Option<Instant>, expire_at: Instant) {
        debug_assert!(self.phase.is_established(), "lifetimes start when established");
        if let Some(e) = self.established_mut() {
            e.rekey_at = rekey_at;
            e.expire_at = Some(expire_at);
        }
    }

    /// To `Deleting`, keeping the keys if it has them (and a removal time if set).
    pub(super) fn start_deleting(&mut self) {
        let linger_until = self.linger_until();
        self.phase = Phase::Deleting { keyed: self.phase.take().into_keyed(), linger_until };
    }

    /// When a finished (rekeyed or deleting) SA is removed, once set.
    pub(super) fn linger_until(&self) -> Option<Instant> {
        match self.phase {
            Phase::Rekeyed { linger_until, .. } | Phase::Deleting { linger_until, .. } => {
                linger_until
            }
            _ => None,
        }
    }

    /// Removes a finished SA at `at`; it answers retransmissions until then.
    pub(super) fn linger(&mut self, at: Instant) {
        match &mut self.phase {
            Phase::Rekeyed { linger_until, .. } | Phase::Deleting { linger_until, .. } => {
                *linger_until = Some(at)
            }
            _ => debug_assert!(false, "only a finished SA lingers"),
        }
    }
}

impl Endpoint {
    // ----- tunnels -------------------------------------------------------------------------

    pub(super) fn tunnel_index(&self, name: &str) -> Result<usize, Error> {
        self.names.get(name).copied().ok_or_else(|| Error::UnknownTunnel(name.to_owned()))
    }

    pub(super) fn tunnel_ref(&self, t: usize) -> Option<&Tunnel> {
        self.tunnels.get(t).and_then(|t| t.as_ref())
    }

    pub(super) fn tunnel_mut(&mut self, t: usize) -> Option<&mut Tunnel> {
        self.tunnels.get_mut(t).and_then(|t| t.as_mut())
    }

    pub(super) fn established(&self, t: usize, name: &str) -> Result<u64, Error> {
        self.tunnel_ref(t)
            .and_then(|tun| tun.ike)
            .filter(|s| self.sas.get(s).is_some_and(|sa| sa.phase.is_established()))
            .ok_or_else(|| Error::NotEstablished(name.to_owned()))
    }

    /// A copy of the configuration of the SA's tunnel. Every initiator's SA and every SA past
    /// IKE_AUTH has one (removing a tunnel destroys its SAs first); a responder's half-open or
    /// failed SA has none.
    pub(super) fn sa_config(&self, sa: &IkeSa) -> Option<TunnelConfig> {
        let cfg = sa.tunnel.and_then(|t| self.tunnel_ref(t)).map(|t| t.cfg.clone());
        debug_assert!(sa.tunnel.is_none() || cfg.is_some(), "an SA outlived its tunnel");
        cfg
    }

    pub(super) fn tunnel_name(&self, t: Option<usize>) -> String {
        t.and_then(|t| self.tunnel_ref(t)).map(|t| t.cfg.name.clone()).unwrap_or_default()
    }

    pub(super) fn child_name(&self, t: Option<usize>, cfg: usize) -> String {
        t.and_then(|t| self.tunnel_ref(t))
            .and_then(|t| t.cfg.children.get(cfg))
            .map(|c| c.name.clone())
            .unwrap_or_default()
    }

    // ----- randomness ----------------------------------------------------------------------

    pub(super) fn new_spi64(&mut self) -> u64 {
        loop {
            let v = self.rng.next_u64();
            if v != 0 && !self.sas.contains_key(&v) {
                return v;
            }
        }
    }

    pub(super) fn new_child_spi(&mut self, ike: u64) -> u32 {
        loop {
            let v = self.rng.next_u32();
            // SPIs 1..=255 are reserved by IANA (RFC 4303 §2.1).
            if v > 255 && !self.child_index.contains_key(&v) {
                self.child_index.insert(v, ike);
                return v;
            }
        }
    }

    pub(super) fn nonce(&mut self) -> Vec<u8> {
        let mut n = vec![0u8; NONCE_LEN];
        self.rng.fill_bytes(&mut n);
        n
    }

    pub(super) fn jittered(&mut self, now: Instant, l: &Lifetime) -> (Option<Instant>, Instant) {
        let rekey = if l.rekey_time.is_zero() {
            None
        } else {
            let r = l.rand_time.as_millis() as u64;
            let jitter = if r == 0 { 0 } else { self.rng.next_u64() % r };
            Some(now + l.rekey_time.saturating_sub(Duration::from_millis(jitter)))
        };
        (rekey, now + l.life_time.max(l.rekey_time))
    }

    // ----- SA bookkeeping ------------------------------------------------------------------

    /// Puts an SA back into the table and re-arms its timer; removes it when it is done.
    pub(super) fn put(&mut self, mut sa: IkeSa, now: Instant) {
        if matches!(sa.phase, Phase::Deleting { .. } | Phase::Rekeyed { .. })
            && sa.out.is_none()
            && sa.queue.is_empty()
            && sa.linger_until().is_none()
        {
            sa.linger(now + self.config.half_open_timeout);
        }
        if sa.linger_until().is_some_and(|l| l <= now) && sa.out.is_none() {
            self.remove_finished(sa);
            return;
        }
        if let Some(tun) = sa.tunnel.and_then(|t| self.tunnels.get_mut(t)).and_then(|t| t.as_mut())
        {
            let spi = sa.our_spi();
            if !tun.sas.contains(&spi) {
                tun.sas.push(spi);
            }
        }
        let next = self.next_deadline(&sa);
        if sa.timer != next {
            if let Some(old) = sa.timer {
                self.timers.remove(&(old, sa.our_spi()));
            }
            if let Some(n) = next {
                self.timers.insert((n, sa.our_spi()));
            }
            sa.timer = next;
        }
        self.sas.insert(sa.our_spi(), sa);
    }

    pub(super) fn next_deadline(&self, sa: &IkeSa) -> Option<Instant> {
        let mut d: Vec<Instant> = Vec::with_capacity(8);
        if let Some(o) = &sa.out {
            d.push(o.next_retx);
        }
        d.extend(self.dpd_deadline(sa));
        if let Some(l) = sa.linger_until().filter(|_| sa.out.is_none()) {
            d.push(l);
        }
        match &sa.phase {
            Phase::HalfOpen(_) => d.push(sa.created + self.config.half_open_timeout),
            Phase::Established(e) => {
                d.extend(e.rekey_at);
                d.extend(e.expire_at);
                d.extend(sa.keepalive_at);
                if sa.out.is_none()
                    && sa.queue.is_empty()
                    && let Some(t) = sa.tunnel.and_then(|t| self.tunnel_ref(t))
                    && !t.cfg.dpd.delay.is_zero()
                {
                    d.push(sa.last_rx + t.cfg.dpd.delay);
                }
                for c in &sa.children {
                    if c.state == ChildState::Installed {
                        d.extend(c.rekey_at);
                    }
                    d.push(c.expire_at);
                }
            }
            _ => {}
        }
        d.into_iter().min()
    }

    /// When an unanswered liveness check declares the peer dead: `dpd.timeout` after it was
    /// first sent (§2.4), whatever the retransmission schedule (4, 7.2, 13, 23.3 s ... apart)
    /// says, so detection lands at the configured time and not at the next retransmission.
    pub(super) fn dpd_deadline(&self, sa: &IkeSa) -> Option<Instant> {
        let out = sa.out.as_ref().filter(|o| matches!(o.kind, ReqKind::Dpd))?;
        let t = sa.tunnel.and_then(|t| self.tunnel_ref(t))?;
        Some(out.first_sent + t.cfg.dpd.timeout)
    }

    pub(super) fn unlist(&mut self, sa: &IkeSa) {
        let spi = sa.our_spi();
        if let Some(tun) = sa.tunnel.and_then(|t| self.tunnel_mut(t)) {
            tun.sas.retain(|s| *s != spi);
        }
    }

    /// Drops a finished SA: its timer, indexes and any CHILD SAs still attached.
    pub(super) fn remove_finished(&mut self, sa: IkeSa) {
        if let Some(t) = sa.timer {
            self.timers.remove(&(t, sa.our_spi()));
        }
        self.unlist(&sa);
        if sa.phase.is_half_open()
            || self.half_open.get(&(sa.remote, sa.spi_i)) == Some(&sa.our_spi())
        {
            self.half_open.retain(|_, v| *v != sa.our_spi());
        }
        for c in &sa.children {
            self.child_index.remove(&c.spi_in);
            self.child_down(&sa, c, DownReason::IkeSaGone);
        }
        self.release_pending_spis(&sa);
        if let Some(t) = sa.tunnel
            && let Some(tun) = self.tunnel_mut(t)
            && tun.ike == Some(sa.our_spi())
        {
            tun.ike = None;
        }
    }

    /// Removes an SA for good: down events for its CHILD SAs and itself (when it was up).
    pub(super) fn destroy(&mut self, sa: IkeSa, reason: DownReason, _now: Instant) {
        if let Some(t) = sa.timer {
            self.timers.remove(&(t, sa.our_spi()));
        }
        self.unlist(&sa);
        self.half_open.remove(&(sa.remote, sa.spi_i));
        if sa.phase.is_half_open() {
            // Also keyed by the original address if the peer moved.
            self.half_open.retain(|_, v| *v != sa.our_spi());
        }
        let tunnel = self.tunnel_name(sa.tunnel);
        let child_reason = if reason == DownReason::Terminated || reason == DownReason::DeadPeer {
            reason.clone()
        } else {
            DownReason::IkeSaGone
        };
        for c in &sa.children {
            self.child_index.remove(&c.spi_in);
            let child = self.child_name(sa.tunnel, c.cfg);
            self.events.push_back(Event::ChildSaDown {
                tunnel: tunnel.clone(),
                child,
                spi_in: c.spi_in,
                spi_out: c.spi_out,
                reason: child_reason.clone(),
            });
        }
        self.release_pending_spis(&sa);
        if let Some(t) = sa.tunnel
            && let Some(tun) = self.tunnel_mut(t)
            && tun.ike == Some(sa.our_spi())
        {
            tun.ike = None;
        }
        if matches!(sa.phase, Phase::Established(_) | Phase::Deleting { keyed: Some(_), .. }) {
            self.events.push_back(Event::IkeSaDown { tunnel, reason });
        }
    }

    pub(super) fn release_pending_spis(&mut self, sa: &IkeSa) {
        if let Some(Request { kind: ReqKind::CreateChild { spi_in, .. }, .. }) = &sa.out {
            self.child_index.remove(spi_in);
        }
        if let Some((_, spi)) = sa.phase.first_child() {
            self.child_index.remove(&spi);
        }
    }

    pub(super) fn enqueue(&mut self, spi: u64, task: Task, now: Instant) {
        let Some(mut sa) = self.sas.remove(&spi) else { return };
        if !sa.queue.contains(&task) {
            sa.queue.push_back(task);
        }
        self.pump(&mut sa, now);
        self.put(sa, now);
    }

    /// Starts the next queued exchange when the window is free.
    pub(super) fn pump(&mut self, sa: &mut IkeSa, now: Instant) {
        while sa.out.is_none() {
            let allowed = sa.phase.is_established()
                || (sa.phase.is_rekeyed()
                    && matches!(sa.queue.front(), Some(Task::DeleteIke | Task::InformDeleted(_))));
            if !allowed {
                return;
            }
            let Some(task) = sa.queue.pop_front() else { return };
            match task {
                Task::CreateChild(cfg) => self.start_create_child(sa, cfg, None, now),
                Task::RekeyChild(spi) => {
                    let Some(c) = sa
                        .children
                        .iter()
                        .find(|c| c.spi_in == spi && c.state == ChildState::Installed)
                    else {
                        continue;
                    };
                    let cfg = c.cfg;
                    self.start_create_child(sa, cfg, Some(spi), now);
                }
                Task::RekeyIke => self.start_rekey_ike(sa, now),
                Task::DeleteChildren(spis) => {
                    let spis: Vec<u32> = spis
                        .into_iter()
                        .filter(|s| sa.children.iter().any(|c| c.spi_in == *s))
                        .collect();
                    if spis.is_empty() {
                        continue;
                    }
                    for c in sa.children.iter_mut().filter(|c| spis.contains(&c.spi_in)) {
                        if c.state != ChildState::Rekeyed {
                            c.state = ChildState::Deleting;
                        }
                    }
                    let p =
                        [Payload::Delete(Delete { protocol: protocol::ESP, spis: spis.clone() })];
                    self.send_request(
                        sa,
                        ExchangeType::INFORMATIONAL,
                        &p,
                        ReqKind::DeleteChildren(spis),
                        now,
                    );
                }
                Task::InformDeleted(spis) => {
                    let p =
                        [Payload::Delete(Delete { protocol: protocol::ESP, spis: spis.clone() })];
                    self.send_request(
                        sa,
                        ExchangeType::INFORMATIONAL,
                        &p,
                        ReqKind::DeleteChildren(spis),
                        now,
                    );
                }
                Task::DeleteIke => {
                    if sa.phase.is_established() {
                        sa.start_deleting();
                    }
                    let p = [Payload::Delete(Delete { protocol: protocol::IKE, spis: vec![] })];
                    // Send even though the state left Established.
                    self.send_request(sa, ExchangeType::INFORMATIONAL, &p, ReqKind::DeleteIke, now);
                    return;
                }
                Task::Dpd => {
                    self.send_request(sa, ExchangeType::INFORMATIONAL, &[], ReqKind::Dpd, now)
                }
            }
        }
    }

    /// Our SPIs of the tunnel's other IKE SAs whose phase is `wanted`, in SPI order.
    pub(super) fn tunnel_sas(&self, t: usize, except: u64, wanted: fn(&Phase) -> bool) -> Vec<u64> {
        let mut v: Vec<u64> = self
            .tunnel_ref(t)
            .map(|tun| tun.sas.iter().copied().filter(|s| *s != except).collect())
            .unwrap_or_default();
        v.retain(|s| self.sas.get(s).is_some_and(|o| wanted(&o.phase)));
        v.sort_unstable();
        v
    }

    /// Emits the down events now; the SA itself lingers briefly to answer retransmissions.
    pub(super) fn finish_later(&mut self, sa: &mut IkeSa, reason: DownReason) {
        let tunnel = self.tunnel_name(sa.tunnel);
        for c in std::mem::take(&mut sa.children) {
            self.child_index.remove(&c.spi_in);
            let r = match reason {
                DownReason::DeletedByPeer
                | DownReason::DeadPeer
                | DownReason::Terminated
                | DownReason::Expired => reason.clone(),
                _ => DownReason::IkeSaGone,
            };
            self.child_down(sa, &c, r);
        }
        if let Some(t) = sa.tunnel
            && let Some(tun) = self.tunnel_mut(t)
            && tun.ike == Some(sa.our_spi())
        {
            tun.ike = None;
        }
        if reason != DownReason::Rekeyed {
            self.events.push_back(Event::IkeSaDown { tunnel, reason });
        }
        sa.retire();
    }

    pub(super) fn child_down(&mut self, sa: &IkeSa, c: &Child, reason: DownReason) {
        self.events.push_back(Event::ChildSaDown {
            tunnel: self.tunnel_name(sa.tunnel),
            child: self.child_name(sa.tunnel, c.cfg),
            spi_in: c.spi_in,
            spi_out: c.spi_out,
            reason,
        });
    }

    /// Drops the SA from its tunnel without events (it was never up).
    pub(super) fn detach(&mut self, sa: &mut IkeSa) {
        if let Some(t) = sa.tunnel
            && let Some(tun) = self.tunnel_mut(t)
            && tun.ike == Some(sa.our_spi())
        {
            tun.ike = None;
        }
        sa.linger(sa.last_rx);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proposal::Encr;

    fn keyed() -> Keyed {
        let suite = IkeSuite {
            encr: Encr::Aes256Gcm16,
            integ: None,
            prf: Prf::HmacSha256,
            dh: DhGroup::Curve25519,
        };
        let keys = IkeKeys::derive(&suite, &[1; 32], &[2; 32], &[3; 32], 1, 2);
        Keyed::new(keys, suite)
    }

    #[test]
    fn phases_hand_on_their_keys_and_removal_time() {
        let now = Instant::now();
        let a: SocketAddr = "192.0.2.1:500".parse().unwrap();
        let mut sa = IkeSa::new(true, 1, 2, a, a, Phase::established(keyed()), now);
        sa.set_lifetime(None, now);
        // Retired and deleting SAs keep the keys for their Delete exchange.
        sa.retire();
        assert!(sa.phase.is_rekeyed() && sa.phase.keyed().is_some());
        assert_eq!(sa.linger_until(), None);
        sa.linger(now);
        sa.start_deleting();
        assert!(sa.phase.is_deleting() && sa.phase.keyed().is_some());
        assert_eq!(sa.linger_until(), Some(now));
        // Adopted back (a parked rekey that won, §2.8.1): established, no removal time, and
        // the lifetimes start again.
        sa.reinstate();
        assert!(sa.phase.is_established() && sa.linger_until().is_none());
        assert!(sa.established_mut().is_some_and(|e| e.expire_at.is_none()));
        // An SA that never derived keys has nothing to send a Delete with.
        let mut unkeyed = IkeSa::new(true, 3, 0, a, a, Phase::deleting(None), now);
        unkeyed.retire();
        assert!(unkeyed.phase.is_deleting() && unkeyed.phase.keyed().is_none());
        assert!(unkeyed.phase.first_child().is_none() && !unkeyed.phase.persistent());
    }
}

//! IKE SA bookkeeping: lookups, SPIs and nonces, the timer wheel, queued exchanges, removal.

use super::*;

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
            .filter(|s| self.sas.get(s).is_some_and(|sa| sa.state == State::Established))
            .ok_or_else(|| Error::NotEstablished(name.to_owned()))
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
        if matches!(sa.state, State::Deleting | State::Rekeyed)
            && sa.out.is_none()
            && sa.queue.is_empty()
            && sa.linger_until.is_none()
        {
            sa.linger_until = Some(now + self.config.half_open_timeout);
        }
        if sa.linger_until.is_some_and(|l| l <= now) && sa.out.is_none() {
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
        if let Some(l) = sa.linger_until.filter(|_| sa.out.is_none()) {
            d.push(l);
        }
        match sa.state {
            State::HalfOpen => d.push(sa.created + self.config.half_open_timeout),
            State::Established => {
                d.extend(sa.rekey_at);
                d.extend(sa.expire_at);
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
        if sa.state == State::HalfOpen
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
        if sa.state == State::HalfOpen {
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
        if matches!(sa.state, State::Established | State::Deleting) && sa.keys.is_some() {
            self.events.push_back(Event::IkeSaDown { tunnel, reason });
        }
    }

    pub(super) fn release_pending_spis(&mut self, sa: &IkeSa) {
        if let Some(Request { kind: ReqKind::CreateChild { spi_in, .. }, .. }) = &sa.out {
            self.child_index.remove(spi_in);
        }
        if let Some((_, spi)) = sa.init.as_ref().and_then(|i| i.first_child) {
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
            let allowed = sa.state == State::Established
                || (sa.state == State::Rekeyed
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
                    if sa.state == State::Established {
                        sa.state = State::Deleting;
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

    /// Our SPIs of the tunnel's other IKE SAs that are in `state`, in SPI order.
    pub(super) fn tunnel_sas(&self, t: usize, except: u64, state: State) -> Vec<u64> {
        let mut v: Vec<u64> = self
            .tunnel_ref(t)
            .map(|tun| tun.sas.iter().copied().filter(|s| *s != except).collect())
            .unwrap_or_default();
        v.retain(|s| self.sas.get(s).is_some_and(|o| o.state == state));
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
        sa.state = State::Rekeyed;
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
        sa.linger_until = Some(sa.last_rx);
    }
}

//! Timers: retransmissions (RFC 7296 §2.1), lifetimes, liveness checks and dead peers (§2.4).

use super::*;

impl Endpoint {
    // ----- timers --------------------------------------------------------------------------

    pub(super) fn on_timer(&mut self, sa: &mut IkeSa, now: Instant) {
        // A liveness check ends at its timeout, not at a retransmission (§2.4): its own
        // deadline, and the retransmission count does not limit it.
        let dpd_deadline = self.dpd_deadline(sa);
        if let Some(out) = sa.out.take_if(|_| dpd_deadline.is_some_and(|d| d <= now)) {
            self.exchange_timed_out(sa, out, now);
            return;
        }
        // Retransmission (§2.1).
        if let Some(mut out) = sa.out.take_if(|o| o.next_retx <= now) {
            let expired = dpd_deadline.is_none() && out.tries > self.config.retransmit_tries;
            if !expired {
                let wait = Duration::try_from_secs_f64(
                    self.config.retransmit_timeout.as_secs_f64()
                        * self.config.retransmit_base.powi(out.tries as i32),
                )
                .unwrap_or(MAX_RETRANSMIT_WAIT)
                .min(MAX_RETRANSMIT_WAIT);
                out.tries += 1;
                out.next_retx = now + wait;
                let data = out.data.clone();
                sa.out = Some(out);
                self.send(sa, data);
                return;
            }
            self.exchange_timed_out(sa, out, now);
            return;
        }
        match sa.phase {
            Phase::HalfOpen(_) => {
                if now >= sa.created + self.config.half_open_timeout {
                    self.half_open.retain(|_, v| *v != sa.spi_r);
                    sa.start_deleting();
                    sa.linger(now);
                }
            }
            Phase::Established(ref mut e) => {
                let expired = e.expire_at.is_some_and(|x| x <= now);
                let rekey_due = e.rekey_at.take_if(|r| *r <= now).is_some();
                if expired {
                    sa.out = None;
                    self.release_pending_spis(sa);
                    self.finish_later(sa, DownReason::Expired);
                    sa.linger(now);
                    return;
                }
                if rekey_due {
                    // The original initiator... either side may rekey; jitter avoids collisions.
                    if !sa.queue.contains(&Task::RekeyIke) {
                        sa.queue.push_back(Task::RekeyIke);
                    }
                }
                if sa.keepalive_at.is_some_and(|k| k <= now) {
                    sa.keepalive_at = Some(now + self.config.nat_keepalive);
                    self.transmits.push_back(Transmit {
                        local: sa.local,
                        remote: sa.remote,
                        data: vec![0xff],
                        nat_t: false,
                    });
                }
                let mut rekey = Vec::new();
                for c in &mut sa.children {
                    if c.expire_at > now
                        && c.state == ChildState::Installed
                        && c.rekey_at.is_some_and(|r| r <= now)
                    {
                        c.rekey_at = None;
                        rekey.push(c.spi_in);
                    }
                }
                for spi in rekey {
                    if !sa.queue.contains(&Task::RekeyChild(spi)) {
                        sa.queue.push_back(Task::RekeyChild(spi));
                    }
                }
                let (gone, keep): (Vec<Child>, Vec<Child>) =
                    std::mem::take(&mut sa.children).into_iter().partition(|c| c.expire_at <= now);
                sa.children = keep;
                if !gone.is_empty() {
                    for c in &gone {
                        self.child_index.remove(&c.spi_in);
                        self.child_down(sa, c, DownReason::Expired);
                    }
                    sa.queue
                        .push_back(Task::InformDeleted(gone.iter().map(|c| c.spi_in).collect()));
                }
                let dpd = sa
                    .tunnel
                    .and_then(|t| self.tunnel_ref(t))
                    .map(|t| t.cfg.dpd.delay)
                    .unwrap_or_default();
                if !dpd.is_zero()
                    && sa.out.is_none()
                    && sa.queue.is_empty()
                    && now >= sa.last_rx + dpd
                {
                    sa.queue.push_back(Task::Dpd);
                }
                self.pump(sa, now);
            }
            Phase::Rekeyed { .. }
            | Phase::Deleting { .. }
            | Phase::Initiating(_)
            | Phase::Authenticating(_) => {}
        }
    }

    /// The peer at `remote` is dead: the tunnel's other SAs with it that wait for a Delete (a
    /// collision's loser, a rekeyed or deleted SA) go too, with their CHILD SAs, which would
    /// otherwise stay in use until that Delete exchange timed out.
    pub(super) fn drop_waiting_on(
        &mut self,
        t: usize,
        except: u64,
        remote: SocketAddr,
        now: Instant,
    ) {
        let phases: [fn(&Phase) -> bool; 2] = [Phase::is_rekeyed, Phase::is_deleting];
        let waiting: Vec<u64> = phases
            .into_iter()
            .flat_map(|wanted| self.tunnel_sas(t, except, wanted))
            .filter(|k| self.sas.get(k).is_some_and(|o| o.remote == remote))
            .collect();
        for k in waiting {
            if let Some(o) = self.sas.remove(&k) {
                self.destroy(o, DownReason::DeadPeer, now);
            }
        }
    }

    /// Our request `out` (taken from the SA) got no answer in time.
    pub(super) fn exchange_timed_out(&mut self, sa: &mut IkeSa, out: Request, now: Instant) {
        let t = sa.tunnel;
        let cfg = t.and_then(|t| self.tunnel_ref(t)).map(|t| t.cfg.clone());
        let name = cfg.as_ref().map(|c| c.name.clone()).unwrap_or_default();
        let ours = match &out.kind {
            ReqKind::Init | ReqKind::Auth => cfg
                .as_ref()
                .map(|c| format!("IKE {}", ike_list_string(&c.ike_proposals)))
                .unwrap_or_default(),
            ReqKind::CreateChild { offered, .. } => format!("ESP {}", esp_list_string(offered)),
            ReqKind::Dpd => "a liveness check".into(),
            _ => "an INFORMATIONAL request".into(),
        };
        let suggestion = match &out.kind {
            ReqKind::Init => Some(format!(
                "check that the peer {} is reachable on UDP 500/4500 and has a tunnel configured for us",
                sa.remote.ip()
            )),
            _ => None,
        };
        self.fail(Explanation {
            tunnel: name,
            peer: sa.remote,
            exchange: out.exchange,
            cause: Cause::Timeout { tries: out.tries },
            ours,
            theirs: None,
            suggestion,
        });
        match out.kind {
            ReqKind::Init | ReqKind::Auth => {
                let persistent = sa.phase.persistent();
                self.release_pending_spis(sa);
                sa.start_deleting();
                self.detach(sa);
                if persistent && let Some(t) = t {
                    self.initiate_idx(t, now, true);
                }
            }
            ReqKind::DeleteIke => {
                let reason = if sa.phase.is_rekeyed() {
                    DownReason::Rekeyed
                } else {
                    DownReason::Terminated
                };
                self.finish_later(sa, reason);
                sa.linger(now);
            }
            _ => {
                // The peer is dead (§2.4): drop everything; restart if configured.
                let was_current = t
                    .and_then(|t| self.tunnel_ref(t))
                    .is_some_and(|tun| tun.ike == Some(sa.our_spi()));
                if let ReqKind::CreateChild { spi_in, .. } = out.kind {
                    self.child_index.remove(&spi_in);
                }
                self.finish_later(sa, DownReason::DeadPeer);
                sa.linger(now);
                if let Some(t) = t {
                    self.drop_waiting_on(t, sa.our_spi(), sa.remote, now);
                }
                let restart = cfg.as_ref().is_some_and(|c| c.dpd.action == DpdAction::Restart);
                if was_current
                    && restart
                    && let Some(t) = t
                {
                    self.initiate_idx(t, now, true);
                }
            }
        }
    }
}

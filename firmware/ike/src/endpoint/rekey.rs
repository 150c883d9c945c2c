//! IKE SA rekeys (RFC 7296 §1.3.2, keys per §2.18) and their collisions (§2.8.1).

use super::*;

impl Endpoint {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn on_rekey_ike_request(
        &mut self,
        sa: &mut IkeSa,
        cfg: &TunnelConfig,
        now: Instant,
        id: u32,
        props: &[&Proposal],
        ni: Vec<u8>,
        ke: Option<(u16, Vec<u8>)>,
    ) {
        let refuse = |n: NotifyType, d: Vec<u8>| [Payload::Notify(Notify::new(n, d))];
        // Only an established SA is rekeyed; one being replaced or deleted asks the peer to
        // wait (§2.25). SK_d seeds the new SA (§2.18).
        let Phase::Established(est) = &sa.phase else {
            self.respond(
                sa,
                ExchangeType::CREATE_CHILD_SA,
                id,
                &refuse(NotifyType::TEMPORARY_FAILURE, vec![]),
            );
            return;
        };
        let sk_d = est.keyed.sk_d();
        let mut chosen = None;
        'o: for ours in &cfg.ike_proposals {
            for p in props.iter().filter(|p| p.spi.len() == 8) {
                if let Some(s) = ours.select(&p.to_ike()) {
                    chosen = Some((
                        p.num,
                        s,
                        u64::from_be_bytes(p.spi[..8].try_into().unwrap_or_default()),
                    ));
                    break 'o;
                }
            }
        }
        let Some((num, suite, new_spi_i)) = chosen else {
            self.respond(
                sa,
                ExchangeType::CREATE_CHILD_SA,
                id,
                &refuse(NotifyType::NO_PROPOSAL_CHOSEN, vec![]),
            );
            let theirs = props.iter().map(|p| p.describe()).collect::<Vec<_>>().join(",");
            self.fail(Explanation {
                tunnel: cfg.name.clone(),
                peer: sa.remote,
                exchange: ExchangeType::CREATE_CHILD_SA,
                cause: Cause::WeRefused(NotifyType::NO_PROPOSAL_CHOSEN),
                ours: format!("IKE {}", ike_list_string(&cfg.ike_proposals)),
                theirs: Some(theirs),
                suggestion: suggest_ike(
                    &cfg.ike_proposals,
                    &props.iter().map(|p| (*p).clone()).collect::<Vec<_>>(),
                ),
            });
            return;
        };
        let Some((group, data)) = ke.filter(|(g, _)| *g == suite.dh.id()) else {
            self.respond(
                sa,
                ExchangeType::CREATE_CHILD_SA,
                id,
                &refuse(NotifyType::INVALID_KE_PAYLOAD, suite.dh.id().to_be_bytes().to_vec()),
            );
            return;
        };
        let _ = group;
        let dh = DhSecret::generate(suite.dh, &mut self.rng);
        let Ok(shared) = dh.shared(&data) else {
            self.respond(
                sa,
                ExchangeType::CREATE_CHILD_SA,
                id,
                &refuse(NotifyType::INVALID_SYNTAX, vec![]),
            );
            return;
        };
        let nr = self.nonce();
        let new_spi_r = self.new_spi64();
        let seed = crypto::skeyseed_rekey(sk_d.prf, &sk_d.key, &shared, &ni, &nr);
        let keys = IkeKeys::derive(&suite, &seed, &ni, &nr, new_spi_i, new_spi_r);
        let mut prop = Proposal::from_ike(num, &new_spi_r.to_be_bytes(), &IkeProposal::from(suite));
        prop.num = num;
        let resp = [
            Payload::Sa(vec![prop]),
            Payload::Nonce(nr.clone()),
            Payload::Ke { group: suite.dh.id(), data: dh.public() },
        ];
        self.respond(sa, ExchangeType::CREATE_CHILD_SA, id, &resp);
        let ours_outstanding =
            matches!(sa.out, Some(Request { kind: ReqKind::RekeyIke { .. }, .. }));
        let mut collided = false;
        if let Phase::Established(e) = &mut sa.phase {
            if ours_outstanding {
                // Simultaneous IKE rekey (§2.8.1): keep both until our exchange returns.
                e.collision =
                    Some(IkeCollision { ni: ni.clone(), nr: nr.clone(), new_spi: new_spi_r });
            }
            collided = e.collision.is_some();
        }
        let mut new =
            self.rekeyed_sa(sa, false, new_spi_i, new_spi_r, suite, keys, ni.min(nr), now);
        if !collided {
            self.take_over(sa, new, cfg, now, false);
        } else {
            // Parked until our own rekey returns; adopted if it wins, deleted by the peer if not.
            new.retire();
            new.linger(now + self.config.half_open_timeout);
            self.put(new, now);
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn rekeyed_sa(
        &mut self,
        old: &IkeSa,
        initiator: bool,
        spi_i: u64,
        spi_r: u64,
        suite: IkeSuite,
        keys: IkeKeys,
        nonce_key: Vec<u8>,
        now: Instant,
    ) -> IkeSa {
        IkeSa {
            tunnel: old.tunnel,
            nat_t: old.nat_t,
            behind_nat: old.behind_nat,
            keepalive_at: old.keepalive_at,
            nonce_key,
            ..IkeSa::new(
                initiator,
                spi_i,
                spi_r,
                old.local,
                old.remote,
                Phase::established(Keyed::new(keys, suite)),
                now,
            )
        }
    }

    /// Moves CHILD SAs and queued work from `old` to `new` and makes `new` the tunnel's SA
    /// (`cfg`'s, whose index both carry).
    pub(super) fn take_over(
        &mut self,
        old: &mut IkeSa,
        mut new: IkeSa,
        cfg: &TunnelConfig,
        now: Instant,
        delete_old: bool,
    ) {
        let (rekey, expire) = self.jittered(now, &cfg.ike_lifetime);
        new.set_lifetime(rekey, expire);
        new.children = std::mem::take(&mut old.children);
        for c in &new.children {
            self.child_index.insert(c.spi_in, new.our_spi());
        }
        new.queue = old
            .queue
            .drain(..)
            .filter(|t| !matches!(t, Task::RekeyIke | Task::Dpd | Task::DeleteIke))
            .collect();
        old.retire();
        old.last_rx = now;
        if delete_old {
            old.queue.push_back(Task::DeleteIke);
        }
        if let Some(tun) = new.tunnel.and_then(|t| self.tunnel_mut(t)) {
            tun.ike = Some(new.our_spi());
        }
        self.events.push_back(Event::IkeSaUp {
            tunnel: cfg.name.clone(),
            local: new.local,
            peer: new.remote,
            suite: new.phase.suite().unwrap_or(IkeSuite {
                encr: crate::proposal::Encr::Aes256Gcm16,
                integ: None,
                prf: crate::proposal::Prf::HmacSha256,
                dh: DhGroup::Curve25519,
            }),
            encap: new.nat_t,
            rekeyed: true,
            version: 2,
        });
        self.pump(&mut new, now);
        self.put(new, now);
    }

    // ----- IKE SA rekey, initiator ---------------------------------------------------------

    pub(super) fn start_rekey_ike(&mut self, sa: &mut IkeSa, now: Instant) {
        let Some(cfg) = self.sa_config(sa) else {
            return;
        };
        let new_spi = self.new_spi64();
        let nonce = self.nonce();
        let group = match &sa.phase {
            Phase::Established(e) => e.rekey_group.unwrap_or(e.keyed.suite.dh),
            _ => cfg.ike_proposals[0].dh[0],
        };
        let dh = DhSecret::generate(group, &mut self.rng);
        let props = cfg
            .ike_proposals
            .iter()
            .enumerate()
            .map(|(i, p)| Proposal::from_ike(i as u8 + 1, &new_spi.to_be_bytes(), p))
            .collect();
        let p = [
            Payload::Sa(props),
            Payload::Nonce(nonce.clone()),
            Payload::Ke { group: group.id(), data: dh.public() },
        ];
        // Reserve the SPI so that nothing else takes it meanwhile.
        self.send_request(
            sa,
            ExchangeType::CREATE_CHILD_SA,
            &p,
            ReqKind::RekeyIke { new_spi, nonce, dh },
            now,
        );
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn on_rekey_ike_response(
        &mut self,
        sa: &mut IkeSa,
        sk_d: &SkD,
        now: Instant,
        payloads: Vec<Payload>,
        new_spi: u64,
        ni: Vec<u8>,
        dh: DhSecret,
    ) {
        let Some(cfg) = self.sa_config(sa) else {
            return;
        };
        let props =
            payloads.iter().find_map(|p| if let Payload::Sa(v) = p { Some(v) } else { None });
        let nr = payloads
            .iter()
            .find_map(|p| if let Payload::Nonce(n) = p { Some(n.clone()) } else { None });
        let ke = payloads.iter().find_map(|p| {
            if let Payload::Ke { group, data } = p { Some((*group, data.clone())) } else { None }
        });
        let err = payloads.iter().find_map(|p| match p {
            Payload::Notify(n) if n.ty.is_error() => Some(n.clone()),
            _ => None,
        });
        let (Some(props), Some(nr), Some((group, ke))) = (props, nr, ke) else {
            let n = err.as_ref().map(|n| n.ty).unwrap_or(NotifyType::INVALID_SYNTAX);
            if n == NotifyType::TEMPORARY_FAILURE {
                // The peer is busy (e.g. its own rekey): try again later.
                if let Some(e) = sa.established_mut() {
                    e.rekey_at = Some(now + Duration::from_secs(2));
                }
                sa.take_ike_collision();
                return;
            }
            if n == NotifyType::INVALID_KE_PAYLOAD
                && let Some(g) = err
                    .as_ref()
                    .filter(|e| e.data.len() == 2)
                    .and_then(|e| DhGroup::from_id(u16::from_be_bytes([e.data[0], e.data[1]])))
                && cfg.ike_proposals.iter().any(|p| p.dh.contains(&g))
                && g != dh.group()
            {
                if let Some(e) = sa.established_mut() {
                    e.rekey_group = Some(g);
                }
                sa.queue.push_front(Task::RekeyIke);
                return;
            }
            self.fail(Explanation {
                tunnel: cfg.name.clone(),
                peer: sa.remote,
                exchange: ExchangeType::CREATE_CHILD_SA,
                cause: Cause::PeerRefused(n),
                ours: format!("IKE {}", ike_list_string(&cfg.ike_proposals)),
                theirs: None,
                suggestion: None,
            });
            return;
        };
        // Our rekey fails; the SA carries on until its hard lifetime.
        let bad = |why: &str, theirs: Option<String>| Explanation {
            tunnel: cfg.name.clone(),
            peer: sa.remote,
            exchange: ExchangeType::CREATE_CHILD_SA,
            cause: Cause::BadResponse(why.into()),
            ours: format!("IKE {}", ike_list_string(&cfg.ike_proposals)),
            theirs,
            suggestion: None,
        };
        let p = props.first();
        let suite = p.and_then(|p| p.to_ike().chosen());
        let (Some(p), Some(suite)) = (
            p,
            suite.filter(|s| {
                cfg.ike_proposals.iter().any(|o| o.allows(s))
                    && s.dh == dh.group()
                    && group == s.dh.id()
            }),
        ) else {
            let theirs = props.iter().map(|p| p.describe()).collect::<Vec<_>>().join(",");
            self.fail(bad("the peer chose a proposal or group we did not offer", Some(theirs)));
            return;
        };
        let Ok(spi) = <[u8; 8]>::try_from(&p.spi[..]) else {
            self.fail(bad("the new IKE SA's SPI is not 8 bytes", None));
            return;
        };
        let new_spi_r = u64::from_be_bytes(spi);
        let shared = match dh.shared(&ke) {
            Ok(s) => s,
            Err(e) => {
                self.fail(bad(&e.to_string(), None));
                return;
            }
        };
        // SK_d seeds the new SA (§2.18).
        let seed = crypto::skeyseed_rekey(sk_d.prf, &sk_d.key, &shared, &ni, &nr);
        let keys = IkeKeys::derive(&suite, &seed, &ni, &nr, new_spi, new_spi_r);
        let mine_low = ni.clone().min(nr.clone());
        let new = self.rekeyed_sa(sa, true, new_spi, new_spi_r, suite, keys, mine_low.clone(), now);
        match sa.take_ike_collision() {
            Some(IkeCollision { ni: pni, nr: pnr, new_spi: peer_new }) => {
                // §2.8.1 for IKE SAs: the new SA with the lowest nonce is redundant and is
                // deleted by the peer that created (initiated) it.
                if mine_low < pni.min(pnr) {
                    // Ours lost: adopt the peer's new SA; delete ours; the peer deletes the old.
                    if let Some(mut winner) = self.sas.remove(&peer_new) {
                        if let Some(t) = winner.timer.take() {
                            self.timers.remove(&(t, peer_new));
                        }
                        winner.reinstate();
                        self.take_over(sa, winner, &cfg, now, false);
                    }
                    let mut redundant = new;
                    redundant.retire();
                    redundant.queue.push_back(Task::DeleteIke);
                    self.pump(&mut redundant, now);
                    self.put(redundant, now);
                } else {
                    // Ours won: we delete the old SA; the peer deletes its redundant one.
                    self.take_over(sa, new, &cfg, now, true);
                }
            }
            None => self.take_over(sa, new, &cfg, now, true),
        }
    }
}

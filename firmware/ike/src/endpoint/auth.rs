//! IKE_AUTH (RFC 7296 §1.2) in both roles: PSK authentication (§2.15), INITIAL_CONTACT (§2.4), duplicates.

use super::*;

impl Endpoint {
    /// Sends our IKE_AUTH request; the SA is `Authenticating` afterwards.
    pub(super) fn send_auth(
        &mut self,
        sa: &mut IkeSa,
        cfg: &TunnelConfig,
        auth_phase: Box<Authenticating>,
        now: Instant,
    ) {
        let (keys, tr) = (&auth_phase.keyed.keys, &auth_phase.transcript);
        let (idt, idd) = cfg.local_id.to_wire(cfg.local.ip());
        let idi = Id { ty: idt, data: idd };
        let auth = crypto::psk_auth(
            keys.prf,
            cfg.psk.expose(),
            &tr.msg1,
            &tr.nr,
            &keys.sk_pi,
            &idi.body(),
        );
        let mut p = vec![Payload::IdI(idi)];
        // INITIAL_CONTACT when no other IKE SA with this peer exists (§2.4).
        let others = sa
            .tunnel
            .is_some_and(|t| !self.tunnel_sas(t, sa.our_spi(), Phase::is_established).is_empty());
        if !others {
            p.push(Payload::Notify(Notify::new(NotifyType::INITIAL_CONTACT, vec![])));
        }
        if !matches!(cfg.remote_id, Identity::Any) {
            let (t, d) = cfg.remote_id.to_wire(cfg.remote.ip());
            p.push(Payload::IdR(Id { ty: t, data: d }));
        }
        p.push(Payload::Auth { method: AUTH_PSK, data: auth });
        if let Some((c, spi)) = auth_phase.first_child {
            let ch = &cfg.children[c];
            let props = ch
                .esp_proposals
                .iter()
                .enumerate()
                .map(|(i, e)| Proposal::from_esp(i as u8 + 1, spi, e, false))
                .collect();
            p.push(Payload::Sa(props));
            p.push(Payload::TsI(ch.local_ts.clone()));
            p.push(Payload::TsR(ch.remote_ts.clone()));
        }
        sa.phase = Phase::Authenticating(auth_phase);
        self.send_request(sa, ExchangeType::IKE_AUTH, &p, ReqKind::Auth, now);
    }

    /// The initiator's IKE_AUTH request on a half-open SA: it ends `Established` (answered
    /// with our AUTH and the first CHILD SA) or `Deleting` (answered with an error notify).
    pub(super) fn on_auth_request(
        &mut self,
        sa: &mut IkeSa,
        half_open: HalfOpen,
        now: Instant,
        id: u32,
        payloads: Vec<Payload>,
    ) {
        let HalfOpen { keyed, transcript: tr, candidates } = half_open;
        let idi = payloads
            .iter()
            .find_map(|p| if let Payload::IdI(i) = p { Some(i.clone()) } else { None });
        let idr = payloads
            .iter()
            .find_map(|p| if let Payload::IdR(i) = p { Some(i.clone()) } else { None });
        let auth = payloads.iter().find_map(|p| {
            if let Payload::Auth { method, data } = p {
                Some((*method, data.clone()))
            } else {
                None
            }
        });
        let (Some(idi), Some((method, auth))) = (idi, auth) else {
            sa.phase = Phase::deleting(Some(keyed));
            let n = [Payload::Notify(Notify::new(NotifyType::INVALID_SYNTAX, vec![]))];
            self.respond(sa, ExchangeType::IKE_AUTH, id, &n);
            return;
        };
        let peer_id = Identity::from_wire(idi.ty, &idi.data);
        let our_id = idr.as_ref().and_then(|i| Identity::from_wire(i.ty, &i.data));
        let suite = keyed.suite;
        let tunnel = candidates.iter().copied().find_map(|c| {
            let t = self.tunnel_ref(c).filter(|t| {
                peer_id.as_ref().is_some_and(|p| t.cfg.remote_id.matches(p))
                    && our_id
                        .as_ref()
                        .is_none_or(|o| t.cfg.local_id.matches(o) || matches!(o, Identity::Any))
                    && t.cfg.ike_proposals.iter().any(|p| p.allows(&suite))
            })?;
            Some((c, t.cfg.clone()))
        });
        let peer_id_s = peer_id
            .as_ref()
            .map(|p| p.to_string())
            .unwrap_or_else(|| format!("ID type {}", idi.ty));
        let fallback = candidates.first().copied();
        let Some((t, cfg)) = tunnel else {
            sa.phase = Phase::deleting(Some(keyed));
            let n = [Payload::Notify(Notify::new(NotifyType::AUTHENTICATION_FAILED, vec![]))];
            self.respond(sa, ExchangeType::IKE_AUTH, id, &n);
            let (name, ours) = fallback
                .and_then(|c| self.tunnel_ref(c))
                .map(|t| (t.cfg.name.clone(), format!("remote id {}", t.cfg.remote_id)))
                .unwrap_or_default();
            self.fail(Explanation {
                tunnel: name,
                peer: sa.remote,
                exchange: ExchangeType::IKE_AUTH,
                cause: Cause::WeRefused(NotifyType::AUTHENTICATION_FAILED),
                ours,
                theirs: Some(format!("identity {peer_id_s}")),
                suggestion: Some(format!(
                    "no tunnel accepts the identity {peer_id_s}: if this is the peer, set its customer gateway's ike_id to {peer_id_s}; otherwise the peer's identity is wrong"
                )),
            });
            return;
        };
        let keys = &keyed.keys;
        let expect = crypto::psk_auth(
            keys.prf,
            cfg.psk.expose(),
            &tr.msg1,
            &tr.nr,
            &keys.sk_pi,
            &idi.body(),
        );
        if method != AUTH_PSK || !crypto::ct_eq(&expect, &auth) {
            sa.phase = Phase::deleting(Some(keyed));
            let n = [Payload::Notify(Notify::new(NotifyType::AUTHENTICATION_FAILED, vec![]))];
            self.respond(sa, ExchangeType::IKE_AUTH, id, &n);
            self.fail(Explanation {
                tunnel: cfg.name.clone(),
                peer: sa.remote,
                exchange: ExchangeType::IKE_AUTH,
                cause: Cause::WeRefused(NotifyType::AUTHENTICATION_FAILED),
                ours: format!("pre-shared key for {}", cfg.remote_id),
                theirs: Some(if method == AUTH_PSK {
                    format!("pre-shared key AUTH from {peer_id_s}")
                } else {
                    format!("auth method {method} from {peer_id_s}")
                }),
                suggestion: Some(
                    "the pre-shared keys differ; set the same psk on both sides".into(),
                ),
            });
            return;
        }
        // Authenticated.
        sa.tunnel = Some(t);
        let (rt, rd) = cfg.local_id.to_wire(cfg.local.ip());
        let our_idr = Id { ty: rt, data: rd };
        let our_auth = crypto::psk_auth(
            keys.prf,
            cfg.psk.expose(),
            &tr.msg2,
            &tr.ni,
            &keys.sk_pr,
            &our_idr.body(),
        );
        let Transcript { ni, nr, .. } = tr;
        let sk_d = keyed.sk_d();
        sa.phase = Phase::established(keyed);
        let initial_contact = payloads
            .iter()
            .any(|p| matches!(p, Payload::Notify(n) if n.ty == NotifyType::INITIAL_CONTACT));
        let mut resp =
            vec![Payload::IdR(our_idr), Payload::Auth { method: AUTH_PSK, data: our_auth }];
        // The first CHILD SA.
        let child = self.respond_child(
            sa,
            &cfg,
            &payloads,
            ChildKeying { sk_d: &sk_d, ni: &ni, nr: &nr, shared: None },
            None,
            ExchangeType::IKE_AUTH,
            now,
        );
        resp.extend(child.0);
        self.respond(sa, ExchangeType::IKE_AUTH, id, &resp);
        self.half_open.retain(|_, v| *v != sa.spi_r);
        self.establish(sa, t, &cfg, now, initial_contact);
        if let Some(ev) = child.1 {
            self.events.push_back(ev);
        }
    }

    /// Settles an SA that just became `Established`: timers, the tunnel's current SA, events,
    /// duplicate checks.
    pub(super) fn establish(
        &mut self,
        sa: &mut IkeSa,
        t: usize,
        cfg: &TunnelConfig,
        now: Instant,
        initial_contact: bool,
    ) {
        sa.last_rx = now;
        let (rekey, expire) = self.jittered(now, &cfg.ike_lifetime);
        sa.set_lifetime(rekey, expire);
        if sa.behind_nat {
            sa.keepalive_at = Some(now + self.config.nat_keepalive);
        }
        let mine = sa.our_spi();
        sa.established_at = Some(now);
        if initial_contact {
            // §2.4: the peer lost its state; SAs established before this one began are stale,
            // also those waiting for a Delete that the old peer will never send or answer (a
            // collision's loser, a rekeyed SA): their CHILD SAs would otherwise stay in use.
            let created = sa.created;
            let phases: [fn(&Phase) -> bool; 3] =
                [Phase::is_established, Phase::is_rekeyed, Phase::is_deleting];
            let stale: Vec<u64> = phases
                .into_iter()
                .flat_map(|wanted| self.tunnel_sas(t, mine, wanted))
                .filter(|k| {
                    self.sas.get(k).is_some_and(|o| o.established_at.is_some_and(|e| e <= created))
                })
                .collect();
            for s in stale {
                if let Some(o) = self.sas.remove(&s) {
                    self.destroy(o, DownReason::Replaced, now);
                }
            }
        }
        // Simultaneous initiation (§2.8 does not forbid it) leaves two IKE SAs for one
        // tunnel. Both peers keep the one whose lower nonce is higher (the rule §2.8.1 uses
        // for rekeys); the initiator of the other one deletes it.
        let mut winner = mine;
        let mut win_key = sa.nonce_key.clone();
        let others: Vec<(u64, Vec<u8>)> = self
            .tunnel_sas(t, mine, Phase::is_established)
            .into_iter()
            .filter_map(|k| self.sas.get(&k).map(|o| (k, o.nonce_key.clone())))
            .collect();
        for (other, key) in others {
            let loser = if key > win_key {
                let l = winner;
                winner = other;
                win_key = key;
                l
            } else {
                other
            };
            if loser == mine {
                sa.retire();
                if sa.initiator {
                    sa.queue.push_back(Task::DeleteIke);
                }
            } else if let Some(mut o) = self.sas.remove(&loser) {
                o.retire();
                if o.initiator {
                    o.queue.push_back(Task::DeleteIke);
                }
                self.pump(&mut o, now);
                self.put(o, now);
            }
        }
        if let Some(tun) = self.tunnel_mut(t) {
            tun.ike = Some(winner);
        }
        if winner != mine {
            // The peer's duplicate of an SA we already have: no events for it.
            return;
        }
        self.events.push_back(Event::IkeSaUp {
            tunnel: cfg.name.clone(),
            local: sa.local,
            peer: sa.remote,
            suite: sa.phase.suite().unwrap_or(IkeSuite {
                encr: crate::proposal::Encr::Aes256Gcm16,
                integ: None,
                prf: crate::proposal::Prf::HmacSha256,
                dh: DhGroup::Curve25519,
            }),
            encap: sa.nat_t,
            rekeyed: false,
            version: 2,
        });
        // Further configured CHILD SAs and acquires (initiator side only).
        if sa.initiator {
            let first = sa.children.first().map(|c| c.cfg);
            let mut wanted: Vec<usize> = (1..cfg.children.len()).collect();
            if let Some(tun) = self.tunnel_mut(t) {
                for w in tun.wanted.drain(..) {
                    if !wanted.contains(&w) {
                        wanted.push(w);
                    }
                }
            }
            for w in wanted {
                if Some(w) != first {
                    sa.queue.push_back(Task::CreateChild(w));
                }
            }
        }
    }

    /// The answer to our IKE_AUTH request: the SA ends `Established` (and its first CHILD SA
    /// up, or explained) or given up, explained.
    pub(super) fn on_auth_response(
        &mut self,
        sa: &mut IkeSa,
        auth_phase: Box<Authenticating>,
        now: Instant,
        payloads: Vec<Payload>,
    ) {
        // An initiator's SA always has its tunnel (removing a tunnel destroys its SAs).
        let (Some(t), Some(cfg)) = (sa.tunnel, self.sa_config(sa)) else {
            sa.phase = Phase::Authenticating(auth_phase);
            self.abandon(sa);
            return;
        };
        let peer = sa.remote;
        let explain = |cause: Cause,
                       ours: String,
                       theirs: Option<String>,
                       suggestion: Option<String>| Explanation {
            tunnel: cfg.name.clone(),
            peer,
            exchange: ExchangeType::IKE_AUTH,
            cause,
            ours,
            theirs,
            suggestion,
        };
        let notifies: Vec<&Notify> = payloads
            .iter()
            .filter_map(|p| if let Payload::Notify(n) = p { Some(n) } else { None })
            .collect();
        let auth = payloads.iter().find_map(|p| {
            if let Payload::Auth { method, data } = p {
                Some((*method, data.clone()))
            } else {
                None
            }
        });
        let idr = payloads
            .iter()
            .find_map(|p| if let Payload::IdR(i) = p { Some(i.clone()) } else { None });
        let (Some((method, auth)), Some(idr)) = (auth, idr) else {
            let n = notifies
                .iter()
                .find(|n| n.ty.is_error())
                .map(|n| n.ty)
                .unwrap_or(NotifyType::AUTHENTICATION_FAILED);
            let suggestion = (n == NotifyType::AUTHENTICATION_FAILED).then(|| {
                "the peer rejected our authentication: check that both sides use the same psk and that the peer's remote id is our local id".to_owned()
            });
            self.fail(explain(
                Cause::PeerRefused(n),
                format!("identity {} with a pre-shared key", cfg.local_id),
                None,
                suggestion,
            ));
            sa.phase = Phase::Authenticating(auth_phase);
            self.abandon(sa);
            return;
        };
        let (keys, tr) = (&auth_phase.keyed.keys, &auth_phase.transcript);
        let peer_id = Identity::from_wire(idr.ty, &idr.data);
        let peer_s = peer_id
            .as_ref()
            .map(|p| p.to_string())
            .unwrap_or_else(|| format!("ID type {}", idr.ty));
        if !peer_id.as_ref().is_some_and(|p| cfg.remote_id.matches(p)) {
            self.fail(explain(
                Cause::BadResponse("unexpected peer identity".into()),
                format!("remote id {}", cfg.remote_id),
                Some(format!("identity {peer_s}")),
                Some(format!("set remote_id to {peer_s} or %any")),
            ));
            sa.phase = Phase::Authenticating(auth_phase);
            self.tell_auth_failed(sa);
            self.abandon(sa);
            return;
        }
        let expect = crypto::psk_auth(
            keys.prf,
            cfg.psk.expose(),
            &tr.msg2,
            &tr.ni,
            &keys.sk_pr,
            &idr.body(),
        );
        if method != AUTH_PSK || !crypto::ct_eq(&expect, &auth) {
            self.fail(explain(
                Cause::BadResponse("the peer's AUTH payload does not verify".into()),
                "pre-shared key".into(),
                Some(format!("auth method {method} from {peer_s}")),
                Some("the pre-shared keys differ; set the same psk on both sides".into()),
            ));
            sa.phase = Phase::Authenticating(auth_phase);
            self.tell_auth_failed(sa);
            self.abandon(sa);
            return;
        }
        let Authenticating { keyed, transcript: Transcript { ni, nr, .. }, first_child, .. } =
            *auth_phase;
        let sk_d = keyed.sk_d();
        sa.phase = Phase::established(keyed);
        self.establish(sa, t, &cfg, now, false);
        // The first CHILD SA.
        if let Some((c, spi_in)) = first_child {
            let offered = cfg.children[c].esp_proposals.iter().map(|p| p.without_pfs()).collect();
            self.finish_child(
                sa,
                &cfg,
                now,
                &payloads,
                c,
                spi_in,
                ChildKeying { sk_d: &sk_d, ni: &ni, nr: &nr, shared: None },
                None,
                offered,
                ExchangeType::IKE_AUTH,
            );
        }
    }

    /// §2.21.2: the responder's AUTH did not verify; tell it in a separate INFORMATIONAL
    /// (sent once, not retransmitted) so that it drops the SA it believes established.
    pub(super) fn tell_auth_failed(&mut self, sa: &mut IkeSa) {
        let id = sa.next_req_id;
        sa.next_req_id = sa.next_req_id.wrapping_add(1);
        let n = [Payload::Notify(Notify::new(NotifyType::AUTHENTICATION_FAILED, vec![]))];
        if let Some(data) = Self::seal(sa, ExchangeType::INFORMATIONAL, false, id, &n) {
            self.send(sa, data);
        }
    }

    /// Gives up an IKE SA that never came up.
    pub(super) fn abandon(&mut self, sa: &mut IkeSa) {
        sa.out = None;
        self.release_pending_spis(sa);
        sa.start_deleting();
        self.detach(sa);
    }
}

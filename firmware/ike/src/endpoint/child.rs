//! CREATE_CHILD_SA for CHILD SAs (RFC 7296 §1.3.1, §1.3.3): creation, rekeys with PFS, selector narrowing (§2.9).

use super::*;

/// What a CHILD SA's keys come from (§2.17): SK_d, the exchange's nonces, the PFS secret.
pub(super) struct ChildKeying<'a> {
    pub(super) sk_d: &'a SkD,
    pub(super) ni: &'a [u8],
    pub(super) nr: &'a [u8],
    pub(super) shared: Option<&'a [u8]>,
}

impl ChildKeying<'_> {
    /// (initiator-to-responder, responder-to-initiator) keys of the CHILD SA.
    fn keys(&self, s: &EspSuite, spi_i2r: u32, spi_r2i: u32) -> (ChildKeys, ChildKeys) {
        let (i2r, r2i) = crypto::child_keymat(
            self.sk_d.prf,
            &self.sk_d.key,
            self.shared,
            self.ni,
            self.nr,
            s.encr,
            s.integ,
        );
        (ChildKeys::new(spi_i2r, i2r), ChildKeys::new(spi_r2i, r2i))
    }
}

impl Endpoint {
    /// Negotiates a CHILD SA as responder (IKE_AUTH or CREATE_CHILD_SA); returns the response
    /// payloads and the ChildSaUp event (or records the failure).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn respond_child(
        &mut self,
        sa: &mut IkeSa,
        cfg: &TunnelConfig,
        payloads: &[Payload],
        keying: ChildKeying<'_>,
        rekey: Option<usize>,
        exchange: ExchangeType,
        now: Instant,
    ) -> (Vec<Payload>, Option<Event>) {
        let props: Vec<&Proposal> = payloads
            .iter()
            .filter_map(|p| if let Payload::Sa(v) = p { Some(v) } else { None })
            .flatten()
            .filter(|p| p.protocol == protocol::ESP && p.spi.len() == 4)
            .collect();
        let tsi = payloads
            .iter()
            .find_map(|p| if let Payload::TsI(t) = p { Some(t.clone()) } else { None });
        let tsr = payloads
            .iter()
            .find_map(|p| if let Payload::TsR(t) = p { Some(t.clone()) } else { None });
        let (Some(tsi), Some(tsr)) = (tsi.filter(|_| !props.is_empty()), tsr) else {
            if exchange == ExchangeType::IKE_AUTH {
                // The peer asked for no CHILD SA with its IKE SA (a childless IKE SA, RFC 6023).
                return (Vec::new(), None);
            }
            // A CREATE_CHILD_SA request needs SA, TSi and TSr (§1.3.1).
            self.fail(Explanation {
                tunnel: cfg.name.clone(),
                peer: sa.remote,
                exchange,
                cause: Cause::WeRefused(NotifyType::INVALID_SYNTAX),
                ours: "a CHILD SA request with SA (ESP, 4-byte SPI), TSi and TSr payloads".into(),
                theirs: None,
                suggestion: None,
            });
            return (vec![Payload::Notify(Notify::new(NotifyType::INVALID_SYNTAX, vec![]))], None);
        };
        let with_pfs = keying.shared.is_some();
        let peer_group = payloads
            .iter()
            .find_map(|p| if let Payload::Ke { group, .. } = p { Some(*group) } else { None });
        let mut ts_ok = None;
        let mut chosen = None;
        let order: Vec<usize> = match rekey {
            Some(c) => vec![c],
            None => (0..cfg.children.len()).collect(),
        };
        for c in order {
            let ch = &cfg.children[c];
            // The initiator's TSi is its side: our remote selectors; TSr ours.
            let n_remote = narrow(&tsi, &ch.remote_ts);
            let n_local = narrow(&tsr, &ch.local_ts);
            if n_remote.is_empty() || n_local.is_empty() {
                continue;
            }
            ts_ok.get_or_insert(c);
            for ours in &ch.esp_proposals {
                for p in &props {
                    let theirs = p.to_esp();
                    let sel = if with_pfs {
                        // The initiator's KE group wins where both sides allow it, as in
                        // strongSwan: asking for our favourite would cost a round trip
                        // (INVALID_KE_PAYLOAD is for groups we do not accept, §1.3).
                        let mut o = ours.clone();
                        if let Some(g) =
                            peer_group.and_then(DhGroup::from_id).filter(|g| o.dh.contains(g))
                        {
                            o.dh.retain(|x| *x != g);
                            o.dh.insert(0, g);
                        }
                        o.select(&theirs, true).filter(|s| s.dh.map(|g| g.id()) == peer_group)
                    } else if exchange == ExchangeType::CREATE_CHILD_SA && !ours.dh.is_empty() {
                        None
                    } else {
                        ours.without_pfs()
                            .select(&theirs, false)
                            .filter(|_| p.allows_no_dh() || exchange == ExchangeType::IKE_AUTH)
                    };
                    if let Some(s) = sel {
                        let spi_out = u32::from_be_bytes([p.spi[0], p.spi[1], p.spi[2], p.spi[3]]);
                        chosen = Some((c, p.num, s, spi_out, n_local.clone(), n_remote.clone()));
                        break;
                    }
                }
                if chosen.is_some() {
                    break;
                }
            }
            if chosen.is_some() {
                break;
            }
        }
        let Some((c, num, suite, spi_out, local_ts, remote_ts)) = chosen else {
            let ch = &cfg.children[ts_ok.or(rekey).unwrap_or(0)];
            let theirs_props = props.iter().map(|p| p.describe()).collect::<Vec<_>>().join(",");
            let (n, ours, theirs, suggestion) = if ts_ok.is_none() {
                (
                    NotifyType::TS_UNACCEPTABLE,
                    format!("TS {} === {}", ts_list(&ch.local_ts), ts_list(&ch.remote_ts)),
                    format!("TS {} === {}", ts_list(&tsr), ts_list(&tsi)),
                    format!(
                        "the peer's selectors {} (its side) and {} (our side) do not overlap our remote_ts {} and local_ts {}; make them overlap",
                        ts_list(&tsi),
                        ts_list(&tsr),
                        ts_list(&ch.remote_ts),
                        ts_list(&ch.local_ts)
                    ),
                )
            } else {
                (
                    NotifyType::NO_PROPOSAL_CHOSEN,
                    format!("ESP {}", esp_list_string(&ch.esp_proposals)),
                    format!("ESP {theirs_props}"),
                    suggest_esp(&ch.esp_proposals, &props, with_pfs),
                )
            };
            self.fail(Explanation {
                tunnel: cfg.name.clone(),
                peer: sa.remote,
                exchange,
                cause: Cause::WeRefused(n),
                ours,
                theirs: Some(theirs),
                suggestion: Some(suggestion),
            });
            return (vec![Payload::Notify(Notify::new(n, vec![]))], None);
        };
        let spi_in = self.new_child_spi(sa.our_spi());
        // We respond: the initiator-to-responder keys are our inbound ones.
        let (inbound, outbound) = keying.keys(&suite, spi_in, spi_out);
        let (rekey_at, expire_at) = self.jittered(now, &cfg.children[c].lifetime);
        let rekey_of = rekey.and_then(|_| {
            payloads.iter().find_map(|p| match p {
                Payload::Notify(n) if n.ty == NotifyType::REKEY_SA && n.spi.len() == 4 => {
                    let s = u32::from_be_bytes([n.spi[0], n.spi[1], n.spi[2], n.spi[3]]);
                    sa.children.iter().find(|c| c.spi_out == s).map(|c| c.spi_in)
                }
                _ => None,
            })
        });
        sa.children.push(Child {
            cfg: c,
            spi_in,
            spi_out,
            suite,
            local_ts: local_ts.clone(),
            remote_ts: remote_ts.clone(),
            rekey_at,
            expire_at,
            state: ChildState::Installed,
            collision: None,
        });
        let mut prop =
            Proposal::from_esp(num, spi_in, &EspProposal::from(suite), suite.dh.is_some());
        prop.num = num;
        let resp = vec![
            Payload::Sa(vec![prop]),
            Payload::TsI(remote_ts.clone()),
            Payload::TsR(local_ts.clone()),
        ];
        let ev = Event::ChildSaUp {
            tunnel: cfg.name.clone(),
            child: cfg.children[c].name.clone(),
            inbound,
            outbound,
            esp: suite,
            local_ts,
            remote_ts,
            encap: sa.nat_t,
            local: sa.local,
            peer: sa.remote,
            rekey_of,
        };
        (resp, Some(ev))
    }

    pub(super) fn on_create_child_request(
        &mut self,
        sa: &mut IkeSa,
        sk_d: &SkD,
        now: Instant,
        id: u32,
        payloads: Vec<Payload>,
    ) {
        // An SA without a tunnel never got past IKE_AUTH (a responder's failed one, now
        // deleting): it has nothing to create or rekey, like any SA that is not established.
        let Some(cfg) = self.sa_config(sa) else {
            let n = [Payload::Notify(Notify::new(NotifyType::TEMPORARY_FAILURE, vec![]))];
            self.respond(sa, ExchangeType::CREATE_CHILD_SA, id, &n);
            return;
        };
        let Some(ni) = payloads
            .iter()
            .find_map(|p| if let Payload::Nonce(n) = p { Some(n.clone()) } else { None })
        else {
            let n = [Payload::Notify(Notify::new(NotifyType::INVALID_SYNTAX, vec![]))];
            self.respond(sa, ExchangeType::CREATE_CHILD_SA, id, &n);
            return;
        };
        let ke = payloads.iter().find_map(|p| {
            if let Payload::Ke { group, data } = p { Some((*group, data.clone())) } else { None }
        });
        let ike_props: Vec<&Proposal> = payloads
            .iter()
            .filter_map(|p| if let Payload::Sa(v) = p { Some(v) } else { None })
            .flatten()
            .filter(|p| p.protocol == protocol::IKE)
            .collect();
        if !ike_props.is_empty() {
            self.on_rekey_ike_request(sa, &cfg, now, id, &ike_props, ni, ke);
            return;
        }
        if !sa.phase.is_established() {
            let n = [Payload::Notify(Notify::new(NotifyType::TEMPORARY_FAILURE, vec![]))];
            self.respond(sa, ExchangeType::CREATE_CHILD_SA, id, &n);
            return;
        }
        // A CHILD SA rekey names the old SA by the peer's inbound SPI (§1.3.3).
        let rekey = payloads.iter().find_map(|p| match p {
            Payload::Notify(n) if n.ty == NotifyType::REKEY_SA && n.spi.len() == 4 => {
                Some(u32::from_be_bytes([n.spi[0], n.spi[1], n.spi[2], n.spi[3]]))
            }
            _ => None,
        });
        let mut rekey_cfg = None;
        if let Some(old_out) = rekey {
            match sa.children.iter().find(|c| c.spi_out == old_out) {
                Some(c) if matches!(c.state, ChildState::Installed | ChildState::Rekeying) => {
                    rekey_cfg = Some(c.cfg)
                }
                Some(_) => {
                    let n = [Payload::Notify(Notify::new(NotifyType::TEMPORARY_FAILURE, vec![]))];
                    self.respond(sa, ExchangeType::CREATE_CHILD_SA, id, &n);
                    return;
                }
                None => {
                    let mut n = Notify::new(NotifyType::CHILD_SA_NOT_FOUND, vec![]);
                    n.protocol = protocol::ESP;
                    n.spi = old_out.to_be_bytes().to_vec();
                    self.respond(sa, ExchangeType::CREATE_CHILD_SA, id, &[Payload::Notify(n)]);
                    return;
                }
            }
        }
        let nr = self.nonce();
        // PFS: answer the peer's KE in its group if one of our proposals accepts it.
        let mut dh_out = None;
        let mut shared = None;
        if let Some((group, data)) = &ke {
            let c = rekey_cfg.unwrap_or(0);
            let allowed: Vec<DhGroup> = cfg
                .children
                .get(c)
                .map(|ch| ch.esp_proposals.iter().flat_map(|p| p.dh.iter().copied()).collect())
                .unwrap_or_default();
            match DhGroup::from_id(*group).filter(|g| allowed.contains(g)) {
                Some(g) => {
                    let s = DhSecret::generate(g, &mut self.rng);
                    match s.shared(data) {
                        Ok(x) => {
                            shared = Some(x);
                            dh_out = Some(s);
                        }
                        Err(_) => {
                            let n =
                                [Payload::Notify(Notify::new(NotifyType::INVALID_SYNTAX, vec![]))];
                            self.respond(sa, ExchangeType::CREATE_CHILD_SA, id, &n);
                            return;
                        }
                    }
                }
                None if !allowed.is_empty() => {
                    let n = [Payload::Notify(Notify::new(
                        NotifyType::INVALID_KE_PAYLOAD,
                        allowed[0].id().to_be_bytes().to_vec(),
                    ))];
                    self.respond(sa, ExchangeType::CREATE_CHILD_SA, id, &n);
                    return;
                }
                None => {}
            }
        }
        let (mut resp, ev) = self.respond_child(
            sa,
            &cfg,
            &payloads,
            ChildKeying { sk_d, ni: &ni, nr: &nr, shared: shared.as_deref().map(|s| &s[..]) },
            rekey_cfg,
            ExchangeType::CREATE_CHILD_SA,
            now,
        );
        if ev.is_some() {
            resp.insert(1, Payload::Nonce(nr.clone()));
            if let Some(dh) = &dh_out {
                resp.insert(2, Payload::Ke { group: dh.group().id(), data: dh.public() });
            }
            if let Some(Event::ChildSaUp { rekey_of: Some(old), inbound, .. }) = &ev {
                let new_in = inbound.spi;
                if let Some(oc) = sa.children.iter_mut().find(|c| c.spi_in == *old) {
                    if oc.state == ChildState::Rekeying {
                        // Simultaneous rekey (§2.8.1): settle it when our own rekey returns.
                        oc.collision = Some((ni.clone(), nr.clone(), new_in));
                    } else {
                        oc.state = ChildState::Rekeyed;
                    }
                }
            }
        }
        self.respond(sa, ExchangeType::CREATE_CHILD_SA, id, &resp);
        if let Some(ev) = ev {
            self.events.push_back(ev);
        }
    }

    /// The initiator's side of a CHILD SA negotiation: checks the answer and emits events.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn finish_child(
        &mut self,
        sa: &mut IkeSa,
        cfg: &TunnelConfig,
        now: Instant,
        payloads: &[Payload],
        c: usize,
        spi_in: u32,
        keying: ChildKeying<'_>,
        rekey_of: Option<u32>,
        offered: Vec<EspProposal>,
        exchange: ExchangeType,
    ) -> Option<u32> {
        let ch = &cfg.children[c];
        let sa_p =
            payloads.iter().find_map(|p| if let Payload::Sa(v) = p { Some(v) } else { None });
        let tsi = payloads
            .iter()
            .find_map(|p| if let Payload::TsI(t) = p { Some(t.clone()) } else { None });
        let tsr = payloads
            .iter()
            .find_map(|p| if let Payload::TsR(t) = p { Some(t.clone()) } else { None });
        let err = payloads.iter().find_map(|p| match p {
            Payload::Notify(n) if n.ty.is_error() => Some(n.ty),
            _ => None,
        });
        let peer = sa.remote;
        let fail = |this: &mut Self,
                    cause: Cause,
                    theirs: Option<String>,
                    suggestion: Option<String>,
                    ts: bool| {
            this.child_index.remove(&spi_in);
            this.fail(Explanation {
                tunnel: cfg.name.clone(),
                peer,
                exchange,
                cause,
                ours: if ts {
                    format!("TS {} === {}", ts_list(&ch.local_ts), ts_list(&ch.remote_ts))
                } else {
                    format!("ESP {}", esp_list_string(&offered))
                },
                theirs,
                suggestion,
            });
            None
        };
        let (Some(props), Some(tsi), Some(tsr)) = (sa_p, tsi, tsr) else {
            let n = err.unwrap_or(NotifyType::INVALID_SYNTAX);
            let ts = n == NotifyType::TS_UNACCEPTABLE;
            let suggestion = match n {
                NotifyType::TS_UNACCEPTABLE => Some(format!(
                    "the peer accepts none of our selectors {} === {}; compare with the peer's local and remote selectors",
                    ts_list(&ch.local_ts),
                    ts_list(&ch.remote_ts)
                )),
                NotifyType::NO_PROPOSAL_CHOSEN => Some("the peer accepts none of our ESP proposals; compare them with the peer's esp proposals (PFS groups included)".into()),
                _ => None,
            };
            return fail(self, Cause::PeerRefused(n), None, suggestion, ts);
        };
        let chosen = props
            .first()
            .filter(|p| props.len() == 1 && p.protocol == protocol::ESP && p.spi.len() == 4);
        let suite = chosen
            .and_then(|p| p.to_esp().chosen())
            .filter(|s| offered.iter().any(|o| o.allows(s)));
        let Some(suite) = suite else {
            let theirs = props.iter().map(|p| p.describe()).collect::<Vec<_>>().join(",");
            return fail(
                self,
                Cause::BadResponse("the peer chose an ESP proposal we did not offer".into()),
                Some(theirs),
                None,
                false,
            );
        };
        if suite.dh.is_some() != keying.shared.is_some() {
            return fail(
                self,
                Cause::BadResponse("PFS group and KE payload disagree".into()),
                Some(suite.to_string()),
                None,
                false,
            );
        }
        // Narrowed selectors must lie inside ours (§2.9).
        let inside = |got: &[TrafficSelector], ours: &[TrafficSelector]| {
            !got.is_empty() && got.iter().all(|g| ours.iter().any(|o| o.covers(g)))
        };
        if !inside(&tsi, &ch.local_ts) || !inside(&tsr, &ch.remote_ts) {
            return fail(
                self,
                Cause::BadResponse("the peer's selectors are wider than ours".into()),
                Some(format!("TS {} === {}", ts_list(&tsi), ts_list(&tsr))),
                None,
                true,
            );
        }
        let p = chosen?;
        let spi_out = u32::from_be_bytes([p.spi[0], p.spi[1], p.spi[2], p.spi[3]]);
        // We initiated: the initiator-to-responder keys are our outbound ones.
        let (outbound, inbound) = keying.keys(&suite, spi_out, spi_in);
        let (rekey_at, expire_at) = self.jittered(now, &ch.lifetime);
        sa.children.push(Child {
            cfg: c,
            spi_in,
            spi_out,
            suite,
            local_ts: tsi.clone(),
            remote_ts: tsr.clone(),
            rekey_at,
            expire_at,
            state: ChildState::Installed,
            collision: None,
        });
        self.events.push_back(Event::ChildSaUp {
            tunnel: cfg.name.clone(),
            child: ch.name.clone(),
            inbound,
            outbound,
            esp: suite,
            local_ts: tsi,
            remote_ts: tsr,
            encap: sa.nat_t,
            local: sa.local,
            peer: sa.remote,
            rekey_of,
        });
        Some(spi_in)
    }

    // ----- CREATE_CHILD_SA, initiator ------------------------------------------------------

    pub(super) fn start_create_child(
        &mut self,
        sa: &mut IkeSa,
        c: usize,
        rekey_of: Option<u32>,
        now: Instant,
    ) {
        let Some(cfg) = self.sa_config(sa) else {
            return;
        };
        let Some(ch) = cfg.children.get(c) else { return };
        let spi_in = self.new_child_spi(sa.our_spi());
        let nonce = self.nonce();
        let group = ch.esp_proposals.iter().find_map(|p| p.dh.first().copied());
        let dh = group.map(|g| DhSecret::generate(g, &mut self.rng));
        let mut p = Vec::new();
        if let Some(old) = rekey_of {
            if let Some(oc) = sa.children.iter_mut().find(|x| x.spi_in == old) {
                oc.state = ChildState::Rekeying;
            }
            let mut n = Notify::new(NotifyType::REKEY_SA, vec![]);
            n.protocol = protocol::ESP;
            n.spi = old.to_be_bytes().to_vec();
            p.push(Payload::Notify(n));
        }
        let props = ch
            .esp_proposals
            .iter()
            .enumerate()
            .map(|(i, e)| Proposal::from_esp(i as u8 + 1, spi_in, e, dh.is_some()))
            .collect();
        p.push(Payload::Sa(props));
        p.push(Payload::Nonce(nonce.clone()));
        if let Some(d) = &dh {
            p.push(Payload::Ke { group: d.group().id(), data: d.public() });
        }
        // A rekey keeps the negotiated selectors.
        let (lts, rts) = match rekey_of.and_then(|o| sa.children.iter().find(|x| x.spi_in == o)) {
            Some(oc) => (oc.local_ts.clone(), oc.remote_ts.clone()),
            None => (ch.local_ts.clone(), ch.remote_ts.clone()),
        };
        p.push(Payload::TsI(lts));
        p.push(Payload::TsR(rts));
        let offered = ch.esp_proposals.clone();
        self.send_request(
            sa,
            ExchangeType::CREATE_CHILD_SA,
            &p,
            ReqKind::CreateChild { cfg: c, spi_in, nonce, dh, rekey_of, offered },
            now,
        );
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn on_create_child_response(
        &mut self,
        sa: &mut IkeSa,
        sk_d: &SkD,
        now: Instant,
        payloads: Vec<Payload>,
        c: usize,
        spi_in: u32,
        ni: Vec<u8>,
        dh: Option<DhSecret>,
        rekey_of: Option<u32>,
        offered: Vec<EspProposal>,
    ) {
        let Some(cfg) = self.sa_config(sa) else {
            return;
        };
        let reset_old = |sa: &mut IkeSa| {
            if let Some(oc) = rekey_of.and_then(|o| sa.children.iter_mut().find(|x| x.spi_in == o))
            {
                if oc.state == ChildState::Rekeying {
                    oc.state = ChildState::Installed;
                }
                oc.collision = None;
            }
        };
        // INVALID_KE_PAYLOAD: retry with the group the peer wants if we allow it.
        if let Some(n) = payloads.iter().find_map(|p| match p {
            Payload::Notify(n) if n.ty == NotifyType::INVALID_KE_PAYLOAD => Some(n.clone()),
            _ => None,
        }) {
            self.child_index.remove(&spi_in);
            reset_old(sa);
            let want = (n.data.len() == 2)
                .then(|| u16::from_be_bytes([n.data[0], n.data[1]]))
                .and_then(DhGroup::from_id);
            let ch = &cfg.children[c];
            if let Some(g) = want.filter(|g| ch.esp_proposals.iter().any(|p| p.dh.contains(g)))
                && dh.as_ref().is_some_and(|d| d.group() != g)
            {
                // Reorder our groups for this attempt by putting g first.
                let mut tun_cfg = cfg.clone();
                for p in &mut tun_cfg.children[c].esp_proposals {
                    if let Some(i) = p.dh.iter().position(|x| *x == g) {
                        p.dh.swap(0, i);
                    }
                }
                if let Some(t) = sa.tunnel.and_then(|t| self.tunnel_mut(t)) {
                    t.cfg = tun_cfg;
                }
                self.start_create_child(sa, c, rekey_of, now);
                return;
            }
            self.fail(Explanation {
                tunnel: cfg.name.clone(),
                peer: sa.remote,
                exchange: ExchangeType::CREATE_CHILD_SA,
                cause: Cause::PeerRefused(NotifyType::INVALID_KE_PAYLOAD),
                ours: format!("ESP {}", esp_list_string(&offered)),
                theirs: want.map(|g| format!("PFS group {}", g.name())),
                suggestion: Some(
                    "the peer wants another PFS group; add it to esp proposals".into(),
                ),
            });
            return;
        }
        let nr = payloads
            .iter()
            .find_map(|p| if let Payload::Nonce(n) = p { Some(n.clone()) } else { None });
        let ke = payloads.iter().find_map(|p| {
            if let Payload::Ke { group, data } = p { Some((*group, data.clone())) } else { None }
        });
        let shared = match (&dh, &ke) {
            (Some(d), Some((g, data))) if *g == d.group().id() => d.shared(data).ok(),
            _ => None,
        };
        let Some(nr) = nr.filter(|_| payloads.iter().any(|p| matches!(p, Payload::Sa(_)))) else {
            reset_old(sa);
            self.finish_child(
                sa,
                &cfg,
                now,
                &payloads,
                c,
                spi_in,
                ChildKeying { sk_d, ni: &ni, nr: &[], shared: None },
                rekey_of,
                offered,
                ExchangeType::CREATE_CHILD_SA,
            );
            return;
        };
        let collision = rekey_of
            .and_then(|o| sa.children.iter().find(|x| x.spi_in == o))
            .and_then(|oc| oc.collision.clone());
        let Some(new_in) = self.finish_child(
            sa,
            &cfg,
            now,
            &payloads,
            c,
            spi_in,
            ChildKeying { sk_d, ni: &ni, nr: &nr, shared: shared.as_deref().map(|s| &s[..]) },
            rekey_of,
            offered,
            ExchangeType::CREATE_CHILD_SA,
        ) else {
            reset_old(sa);
            return;
        };
        let Some(old) = rekey_of else { return };
        match collision {
            Some((pni, pnr, peer_new)) => {
                // §2.8.1: the SA created with the lowest nonce is redundant; its creator
                // deletes it. Both peers compute the same answer.
                let ours_low = ni.clone().min(nr.clone());
                let theirs_low = pni.min(pnr);
                if ours_low < theirs_low {
                    // Ours lost: delete it; the peer deletes the old SA.
                    if let Some(x) = sa.children.iter_mut().find(|x| x.spi_in == new_in) {
                        x.state = ChildState::Deleting;
                        x.collision = Some((Vec::new(), Vec::new(), 0));
                    }
                    if let Some(oc) = sa.children.iter_mut().find(|x| x.spi_in == old) {
                        oc.state = ChildState::Rekeyed;
                        oc.collision = None;
                    }
                    sa.queue.push_front(Task::DeleteChildren(vec![new_in]));
                } else {
                    // Ours won: the old SA goes; the peer deletes its redundant one.
                    let _ = peer_new;
                    if let Some(oc) = sa.children.iter_mut().find(|x| x.spi_in == old) {
                        oc.state = ChildState::Rekeyed;
                        oc.collision = None;
                    }
                    sa.queue.push_front(Task::DeleteChildren(vec![old]));
                }
            }
            None => {
                if let Some(oc) = sa.children.iter_mut().find(|x| x.spi_in == old) {
                    oc.state = ChildState::Rekeyed;
                }
                sa.queue.push_front(Task::DeleteChildren(vec![old]));
            }
        }
    }
}

/// §2.9 narrowing: the parts of `offered` inside `ours`.
pub(super) fn narrow(
    offered: &[TrafficSelector],
    ours: &[TrafficSelector],
) -> Vec<TrafficSelector> {
    let mut out = Vec::new();
    for o in ours {
        for p in offered {
            if let Some(x) = o.intersect(p)
                && !out.contains(&x)
            {
                out.push(x);
            }
        }
    }
    out
}

pub(super) fn ts_list(ts: &[TrafficSelector]) -> String {
    ts.iter().map(|t| t.to_string()).collect::<Vec<_>>().join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn narrowing_keeps_the_intersections() {
        let ours: Vec<TrafficSelector> =
            vec!["10.1.0.0/16".parse().unwrap(), "10.3.0.0/16".parse().unwrap()];
        let offered: Vec<TrafficSelector> = vec!["10.0.0.0/8[tcp]".parse().unwrap()];
        let n = narrow(&offered, &ours);
        assert_eq!(ts_list(&n), "10.1.0.0/16[tcp],10.3.0.0/16[tcp]");
        assert!(narrow(&["192.168.0.0/16".parse().unwrap()], &ours).is_empty());
    }
}

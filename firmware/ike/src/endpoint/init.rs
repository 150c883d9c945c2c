//! IKE_SA_INIT (RFC 7296 §1.2) in both roles: COOKIE (§2.6), INVALID_KE retries, NAT detection (§2.23).

use super::*;

impl Endpoint {
    // ----- IKE_SA_INIT, initiator ----------------------------------------------------------

    pub(super) fn initiate_idx(&mut self, t: usize, now: Instant, persistent: bool) {
        if self.initiates_v1(t) {
            self.v1_initiate(t, now);
            return;
        }
        let Some(tun) = self.tunnel_ref(t) else { return };
        if tun.ike.is_some() {
            return;
        }
        let cfg = tun.cfg.clone();
        let group = cfg.ike_proposals[0].dh[0];
        let (local, remote) = (cfg.local, cfg.remote);
        let spi_i = self.new_spi64();
        let child_spi = self.new_child_spi(spi_i);
        let dh = DhSecret::generate(group, &mut self.rng);
        let ni = self.nonce();
        let init = Box::new(Initiating {
            dh,
            ni,
            msg1: Vec::new(),
            cookie: None,
            tried_groups: vec![group],
            first_child: Some((0, child_spi)),
            persistent,
        });
        // Initiating from the start; send_init puts the data in once the request is built.
        let mut sa = IkeSa {
            tunnel: Some(t),
            ..IkeSa::new(true, spi_i, 0, local, remote, Phase::deleting(None), now)
        };
        if let Some(tun) = self.tunnel_mut(t) {
            tun.ike = Some(spi_i);
        }
        self.send_init(&mut sa, &cfg, init, now);
        self.put(sa, now);
    }

    /// Sends (or sends again) our IKE_SA_INIT request; the SA is `Initiating` afterwards.
    pub(super) fn send_init(
        &mut self,
        sa: &mut IkeSa,
        cfg: &TunnelConfig,
        mut init: Box<Initiating>,
        now: Instant,
    ) {
        let force = cfg.force_nat_t;
        let proposals: Vec<Proposal> = cfg
            .ike_proposals
            .iter()
            .enumerate()
            .map(|(i, p)| Proposal::from_ike(i as u8 + 1, &[], p))
            .collect();
        let dh = &init.dh;
        let mut p = Vec::with_capacity(7);
        if let Some(c) = &init.cookie {
            p.push(Payload::Notify(Notify::new(NotifyType::COOKIE, c.clone())));
        }
        p.push(Payload::Sa(proposals));
        p.push(Payload::Ke { group: dh.group().id(), data: dh.public() });
        p.push(Payload::Nonce(init.ni.clone()));
        let mut src = nat_hash(sa.spi_i, 0, sa.local);
        if force {
            // strongSwan's `encap = yes`: a source hash that cannot match fakes a NAT.
            src = vec![0; 20];
            self.rng.fill_bytes(&mut src);
        }
        p.push(Payload::Notify(Notify::new(NotifyType::NAT_DETECTION_SOURCE_IP, src)));
        p.push(Payload::Notify(Notify::new(
            NotifyType::NAT_DETECTION_DESTINATION_IP,
            nat_hash(sa.spi_i, 0, sa.remote),
        )));
        let h = Header {
            spi_i: sa.spi_i,
            spi_r: 0,
            next_payload: 0,
            version: 0x20,
            exchange: ExchangeType::IKE_SA_INIT,
            flags: flags::INITIATOR,
            message_id: 0,
            length: 0,
        };
        let data = codec::encode_plain(h, &p);
        init.msg1 = data.clone();
        sa.phase = Phase::Initiating(init);
        sa.next_req_id = 1;
        self.send(sa, data.clone());
        sa.out = Some(Request {
            msg_id: 0,
            exchange: ExchangeType::IKE_SA_INIT,
            data,
            tries: 1,
            first_sent: now,
            next_retx: now + self.config.retransmit_timeout,
            kind: ReqKind::Init,
        });
    }

    /// The answer to our IKE_SA_INIT request: on success the SA is `Authenticating` (IKE_AUTH
    /// sent) or `Initiating` again (a COOKIE or another group asked for); an error hands the
    /// phase back to be given up, after the failure is explained.
    pub(super) fn on_init_response(
        &mut self,
        sa: &mut IkeSa,
        mut init: Box<Initiating>,
        now: Instant,
        msg: Message,
        data: &[u8],
    ) -> Result<(), Box<Initiating>> {
        // An initiator's SA always has its tunnel (removing a tunnel destroys its SAs).
        let Some(cfg) = self.sa_config(sa) else {
            return Err(init);
        };
        let ours = ike_list_string(&cfg.ike_proposals);
        let peer = sa.remote;
        let explain =
            |cause: Cause, theirs: Option<String>, suggestion: Option<String>| Explanation {
                tunnel: cfg.name.clone(),
                peer,
                exchange: ExchangeType::IKE_SA_INIT,
                cause,
                ours: format!("IKE {ours}"),
                theirs,
                suggestion,
            };
        let notifies: Vec<&Notify> = msg
            .payloads
            .iter()
            .filter_map(|p| if let Payload::Notify(n) = p { Some(n) } else { None })
            .collect();
        if let Some(c) = notifies.iter().find(|n| n.ty == NotifyType::COOKIE) {
            if init.cookie.is_some() && init.cookie.as_deref() == Some(&c.data[..]) {
                // The same cookie again: do not loop; our request keeps its retransmissions.
                sa.phase = Phase::Initiating(init);
                return Ok(());
            }
            init.cookie = Some(c.data.clone());
            self.send_init(sa, &cfg, init, now);
            return Ok(());
        }
        if let Some(n) = notifies.iter().find(|n| n.ty == NotifyType::INVALID_KE_PAYLOAD) {
            let asked = (n.data.len() == 2).then(|| u16::from_be_bytes([n.data[0], n.data[1]]));
            let group = asked.and_then(DhGroup::from_id);
            let allowed = group.filter(|g| cfg.ike_proposals.iter().any(|p| p.dh.contains(g)));
            match allowed {
                Some(g) if !init.tried_groups.contains(&g) => {
                    init.tried_groups.push(g);
                    init.dh = DhSecret::generate(g, &mut self.rng);
                    self.send_init(sa, &cfg, init, now);
                    return Ok(());
                }
                _ => {
                    let name = asked
                        .map(|a| crate::proposal::transform_name(4, a, None))
                        .unwrap_or_else(|| "?".into());
                    let suggestion = match group {
                        Some(_) => format!(
                            "the peer requires {name} for key exchange; add it to ike proposals"
                        ),
                        None => format!(
                            "the peer requires {name}, which Isthmus does not support; configure the peer with x25519, ecp256 or ecp384"
                        ),
                    };
                    self.fail(explain(
                        Cause::PeerRefused(NotifyType::INVALID_KE_PAYLOAD),
                        Some(format!("key exchange {name}")),
                        Some(suggestion),
                    ));
                    return Err(init);
                }
            }
        }
        if let Some(n) = notifies.iter().find(|n| n.ty.is_error()) {
            let suggestion = (n.ty == NotifyType::NO_PROPOSAL_CHOSEN).then(|| {
                "the peer accepts none of our IKE proposals; compare them with the peer's ike proposals (e.g. add the peer's key exchange group)".to_owned()
            });
            self.fail(explain(Cause::PeerRefused(n.ty), None, suggestion));
            return Err(init);
        }
        let (Some(Payload::Sa(props)), Some((group, ke)), Some(nr)) = (
            msg.payloads.iter().find(|p| matches!(p, Payload::Sa(_))),
            msg.payloads.iter().find_map(|p| {
                if let Payload::Ke { group, data } = p { Some((*group, data)) } else { None }
            }),
            msg.payloads
                .iter()
                .find_map(|p| if let Payload::Nonce(n) = p { Some(n) } else { None }),
        ) else {
            self.fail(explain(
                Cause::BadResponse("IKE_SA_INIT response lacks SA, KE or Nonce".into()),
                None,
                None,
            ));
            return Err(init);
        };
        let chosen = props.first().map(|p| p.to_ike());
        let suite = chosen.as_ref().filter(|_| props.len() == 1).and_then(IkeProposal::chosen);
        let Some(suite) = suite.filter(|s| cfg.ike_proposals.iter().any(|p| p.allows(s))) else {
            let theirs = props.iter().map(|p| p.describe()).collect::<Vec<_>>().join(",");
            self.fail(explain(
                Cause::BadResponse("the peer chose a proposal we did not offer".into()),
                Some(theirs),
                None,
            ));
            return Err(init);
        };
        let dh = &init.dh;
        if suite.dh.id() != group || dh.group() != suite.dh {
            self.fail(explain(
                Cause::BadResponse("key exchange group differs from the chosen proposal".into()),
                Some(suite.to_string()),
                None,
            ));
            return Err(init);
        }
        let shared = match dh.shared(ke) {
            Ok(s) => s,
            Err(e) => {
                self.fail(explain(Cause::BadResponse(e.to_string()), None, None));
                return Err(init);
            }
        };
        sa.spi_r = msg.header.spi_r;
        let seed = crypto::skeyseed(suite.prf, &init.ni, nr, &shared);
        let keys = IkeKeys::derive(&suite, &seed, &init.ni, nr, sa.spi_i, sa.spi_r);
        sa.nonce_key = init.ni.clone().min(nr.clone());
        // The DH secret and cookie end here; the keys and the AUTH transcript go on.
        let Initiating { ni, msg1, first_child, persistent, .. } = *init;
        let auth = Box::new(Authenticating {
            keyed: Keyed::new(keys, suite),
            transcript: Transcript { ni, nr: nr.clone(), msg1, msg2: data.to_vec() },
            first_child,
            persistent,
        });
        // NAT detection (§2.23).
        let (peer_nat, we_nat) = nat_check(&notifies, sa.spi_i, sa.spi_r, sa.remote, sa.local);
        sa.behind_nat = we_nat;
        if peer_nat || we_nat || cfg.force_nat_t {
            sa.nat_t = true;
            sa.local.set_port(NAT_T_PORT);
            sa.remote.set_port(NAT_T_PORT);
        }
        sa.out = None;
        self.send_auth(sa, &cfg, auth, now);
        Ok(())
    }

    // ----- IKE_SA_INIT, responder ----------------------------------------------------------

    /// The tunnels that may answer a peer at `remote` speaking IKEv1 (`v1`) or IKEv2.
    pub(super) fn candidates(&self, local: SocketAddr, remote: SocketAddr, v1: bool) -> Vec<usize> {
        let any = match remote.ip() {
            IpAddr::V4(_) => IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
            IpAddr::V6(_) => IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED),
        };
        let exact = self.by_remote.get(&remote.ip()).into_iter().flatten();
        let wild = self.by_remote.get(&any).into_iter().flatten();
        exact
            .chain(wild)
            .copied()
            .filter(|&i| {
                self.tunnel_ref(i).is_some_and(|t| {
                    let version =
                        if v1 { t.cfg.version.accepts_v1() } else { t.cfg.version.accepts_v2() };
                    version && (t.cfg.local.ip() == local.ip() || t.cfg.local.ip().is_unspecified())
                })
            })
            .collect()
    }

    pub(super) fn cookie_for(&self, ni: &[u8], remote: SocketAddr, spi_i: u64) -> Vec<u8> {
        // §2.6: Cookie = <VersionIDofSecret> | Hash(Ni | IPi | SPIi | <secret>).
        let mut h = Sha256::new();
        h.update(ni);
        match remote.ip() {
            IpAddr::V4(a) => h.update(a.octets()),
            IpAddr::V6(a) => h.update(a.octets()),
        }
        h.update(spi_i.to_be_bytes());
        h.update(self.cookie_secret);
        let mut c = vec![0u8];
        c.extend_from_slice(&h.finalize());
        c
    }

    pub(super) fn on_init_request(
        &mut self,
        now: Instant,
        local: SocketAddr,
        remote: SocketAddr,
        data: &[u8],
        msg: Message,
    ) {
        let h = msg.header;
        if h.message_id != 0 {
            return;
        }
        // A retransmitted request: answer from the cache.
        if let Some(spi) = self.half_open.get(&(remote, h.spi_i)) {
            if let Some(sa) = self.sas.get(spi)
                && let Some((_, resp)) = &sa.cached_resp
            {
                let tx = Transmit {
                    local: sa.local,
                    remote: sa.remote,
                    data: resp.clone(),
                    nat_t: sa.nat_t,
                };
                self.transmits.push_back(tx);
            }
            return;
        }
        if self.half_open.len() >= self.config.max_half_open {
            return;
        }
        if let Some(ty) = msg.payloads.iter().find_map(|p| match p {
            Payload::Unknown { ty, critical: true, .. } => Some(*ty),
            _ => None,
        }) {
            self.answer_plain(
                &h,
                local,
                remote,
                NotifyType::UNSUPPORTED_CRITICAL_PAYLOAD,
                vec![ty],
            );
            return;
        }
        let notifies: Vec<&Notify> = msg
            .payloads
            .iter()
            .filter_map(|p| if let Payload::Notify(n) = p { Some(n) } else { None })
            .collect();
        let (Some(Payload::Sa(props)), Some((group, ke)), Some(ni)) = (
            msg.payloads.iter().find(|p| matches!(p, Payload::Sa(_))),
            msg.payloads.iter().find_map(|p| {
                if let Payload::Ke { group, data } = p { Some((*group, data)) } else { None }
            }),
            msg.payloads
                .iter()
                .find_map(|p| if let Payload::Nonce(n) = p { Some(n) } else { None }),
        ) else {
            self.answer_plain(&h, local, remote, NotifyType::INVALID_SYNTAX, vec![]);
            return;
        };
        // COOKIE (§2.6) once too many SAs are half open.
        if self.half_open.len() >= self.config.cookie_threshold {
            let want = self.cookie_for(ni, remote, h.spi_i);
            let got = notifies.iter().find(|n| n.ty == NotifyType::COOKIE).map(|n| &n.data[..]);
            if !got.is_some_and(|g| crypto::ct_eq(g, &want)) {
                self.answer_plain(&h, local, remote, NotifyType::COOKIE, want);
                return;
            }
        }
        let cands = self.candidates(local, remote, false);
        if cands.is_empty() {
            self.answer_plain(&h, local, remote, NotifyType::NO_PROPOSAL_CHOSEN, vec![]);
            self.fail(Explanation {
                tunnel: String::new(),
                peer: remote,
                exchange: ExchangeType::IKE_SA_INIT,
                cause: Cause::WeRefused(NotifyType::NO_PROPOSAL_CHOSEN),
                ours: "no tunnel for this address".into(),
                theirs: Some(props.iter().map(|p| p.describe()).collect::<Vec<_>>().join(",")),
                suggestion: Some(format!("add a tunnel whose remote address is {}", remote.ip())),
            });
            return;
        }
        // Select with the first candidate tunnel that shares a proposal, in its order.
        let offered: Vec<(u8, IkeProposal)> = props
            .iter()
            .filter(|p| p.protocol == protocol::IKE)
            .map(|p| (p.num, p.to_ike()))
            .collect();
        let mut chosen = None;
        'outer: for &t in &cands {
            let Some(tun) = self.tunnel_ref(t) else { continue };
            for ours in &tun.cfg.ike_proposals {
                for (num, theirs) in &offered {
                    if let Some(s) = ours.select(theirs) {
                        chosen = Some((t, *num, s));
                        break 'outer;
                    }
                }
            }
        }
        let Some((t, num, suite)) = chosen else {
            self.answer_plain(&h, local, remote, NotifyType::NO_PROPOSAL_CHOSEN, vec![]);
            let tun = self.tunnel_ref(cands[0]).map(|t| t.cfg.clone());
            if let Some(cfg) = tun {
                let theirs = props.iter().map(|p| p.describe()).collect::<Vec<_>>().join(",");
                self.fail(Explanation {
                    tunnel: cfg.name.clone(),
                    peer: remote,
                    exchange: ExchangeType::IKE_SA_INIT,
                    cause: Cause::WeRefused(NotifyType::NO_PROPOSAL_CHOSEN),
                    ours: format!("IKE {}", ike_list_string(&cfg.ike_proposals)),
                    theirs: Some(theirs),
                    suggestion: suggest_ike(&cfg.ike_proposals, props),
                });
            }
            return;
        };
        if suite.dh.id() != group {
            self.answer_plain(
                &h,
                local,
                remote,
                NotifyType::INVALID_KE_PAYLOAD,
                suite.dh.id().to_be_bytes().to_vec(),
            );
            return;
        }
        let spi_r = self.new_spi64();
        let dh = DhSecret::generate(suite.dh, &mut self.rng);
        let Ok(shared) = dh.shared(ke) else {
            self.answer_plain(&h, local, remote, NotifyType::INVALID_SYNTAX, vec![]);
            return;
        };
        let nr = self.nonce();
        let seed = crypto::skeyseed(suite.prf, ni, &nr, &shared);
        let keys = IkeKeys::derive(&suite, &seed, ni, &nr, h.spi_i, spi_r);
        let force = cands.iter().any(|&c| self.tunnel_ref(c).is_some_and(|t| t.cfg.force_nat_t));
        let (peer_nat, we_nat) = nat_check(&notifies, h.spi_i, 0, remote, local);
        let nonce_key = ni.clone().min(nr.clone());
        let mut half_open = Box::new(HalfOpen {
            keyed: Keyed::new(keys, suite),
            transcript: Transcript {
                ni: ni.clone(),
                nr: nr.clone(),
                msg1: data.to_vec(),
                msg2: Vec::new(),
            },
            candidates: cands.clone(),
        });
        let _ = t;
        let mut src = nat_hash(h.spi_i, spi_r, local);
        if force {
            src = vec![0; 20];
            self.rng.fill_bytes(&mut src);
        }
        let mut chosen_prop = Proposal::from_ike(num, &[], &IkeProposal::from(suite));
        chosen_prop.num = num;
        let p = [
            Payload::Sa(vec![chosen_prop]),
            Payload::Ke { group: suite.dh.id(), data: dh.public() },
            Payload::Nonce(nr),
            Payload::Notify(Notify::new(NotifyType::NAT_DETECTION_SOURCE_IP, src)),
            Payload::Notify(Notify::new(
                NotifyType::NAT_DETECTION_DESTINATION_IP,
                nat_hash(h.spi_i, spi_r, remote),
            )),
        ];
        let hdr = Header {
            spi_i: h.spi_i,
            spi_r,
            next_payload: 0,
            version: 0x20,
            exchange: ExchangeType::IKE_SA_INIT,
            flags: flags::RESPONSE,
            message_id: 0,
            length: 0,
        };
        let resp = codec::encode_plain(hdr, &p);
        half_open.transcript.msg2 = resp.clone();
        let mut sa = IkeSa {
            nat_t: local.port() == NAT_T_PORT,
            behind_nat: we_nat,
            peer_next_req: 1,
            nonce_key,
            ..IkeSa::new(false, h.spi_i, spi_r, local, remote, Phase::HalfOpen(half_open), now)
        };
        if peer_nat || we_nat || force {
            // The initiator moves to 4500 for IKE_AUTH; so do we (on its next message).
            sa.behind_nat = we_nat;
        }
        self.send(&sa, resp.clone());
        sa.cached_resp = Some((0, resp));
        self.half_open.insert((remote, h.spi_i), spi_r);
        self.put(sa, now);
    }
}

/// NAT detection hash (§2.23): SHA-1(SPIi | SPIr | IP | port).
pub(super) fn nat_hash(spi_i: u64, spi_r: u64, a: SocketAddr) -> Vec<u8> {
    let mut h = Sha1::new();
    h.update(spi_i.to_be_bytes());
    h.update(spi_r.to_be_bytes());
    match a.ip() {
        IpAddr::V4(ip) => h.update(ip.octets()),
        IpAddr::V6(ip) => h.update(ip.octets()),
    }
    h.update(a.port().to_be_bytes());
    h.finalize().to_vec()
}

/// (peer behind a NAT, we behind a NAT) from the peer's NAT_DETECTION notifies; both false
/// when it sent none.
pub(super) fn nat_check(
    notifies: &[&Notify],
    spi_i: u64,
    spi_r: u64,
    peer: SocketAddr,
    us: SocketAddr,
) -> (bool, bool) {
    let src: Vec<&Notify> =
        notifies.iter().copied().filter(|n| n.ty == NotifyType::NAT_DETECTION_SOURCE_IP).collect();
    let dst = notifies.iter().find(|n| n.ty == NotifyType::NAT_DETECTION_DESTINATION_IP);
    let peer_nat = !src.is_empty() && !src.iter().any(|n| n.data == nat_hash(spi_i, spi_r, peer));
    let we_nat = dst.is_some_and(|n| n.data != nat_hash(spi_i, spi_r, us));
    (peer_nat, we_nat)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc7296_section_2_23_nat_detection_hash() {
        // python: hashlib.sha1(SPIi | 8 zero bytes | 192.0.2.1 | 500 as u16).hexdigest()
        let h = nat_hash(0x0102030405060708, 0, "192.0.2.1:500".parse().unwrap());
        let hex: String = h.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex, "644b4575455bd6fcc1efe2be8162a9218e448e5f");
        let n = Notify::new(NotifyType::NAT_DETECTION_SOURCE_IP, h.clone());
        let d = Notify::new(
            NotifyType::NAT_DETECTION_DESTINATION_IP,
            nat_hash(0x0102030405060708, 0, "192.0.2.2:500".parse().unwrap()),
        );
        let peer = "192.0.2.1:500".parse().unwrap();
        let us = "192.0.2.2:500".parse().unwrap();
        assert_eq!(nat_check(&[&n, &d], 0x0102030405060708, 0, peer, us), (false, false));
        let moved = "203.0.113.1:1024".parse().unwrap();
        assert_eq!(nat_check(&[&n, &d], 0x0102030405060708, 0, moved, us), (true, false));
        assert_eq!(nat_check(&[], 1, 0, moved, us), (false, false));
    }
}

//! Sending and receiving: headers, SK payload sealing and opening, requests and responses, dispatch.

use super::*;

impl Endpoint {
    // ----- sending -------------------------------------------------------------------------

    pub(super) fn send(&mut self, sa: &IkeSa, data: Vec<u8>) {
        self.transmits.push_back(Transmit {
            local: sa.local,
            remote: sa.remote,
            data,
            nat_t: sa.nat_t,
        });
    }

    pub(super) fn header(
        sa: &IkeSa,
        exchange: ExchangeType,
        response: bool,
        msg_id: u32,
    ) -> Header {
        let mut f = 0;
        if sa.initiator {
            f |= flags::INITIATOR;
        }
        if response {
            f |= flags::RESPONSE;
        }
        Header {
            spi_i: sa.spi_i,
            spi_r: sa.spi_r,
            next_payload: 0,
            version: 0x20,
            exchange,
            flags: f,
            message_id: msg_id,
            length: 0,
        }
    }

    /// Encodes an encrypted message (§3.14, RFC 5282). `None` before IKE_SA_INIT derived the
    /// keys: nothing but IKE_SA_INIT travels in clear, and the phases without keys
    /// (initiating, or deleting one that never got them) send nothing else.
    pub(super) fn seal(
        sa: &mut IkeSa,
        exchange: ExchangeType,
        response: bool,
        msg_id: u32,
        payloads: &[Payload],
    ) -> Option<Vec<u8>> {
        let h = Self::header(sa, exchange, response, msg_id);
        let initiator = sa.initiator;
        let keyed = sa.phase.keyed_mut();
        debug_assert!(keyed.is_some(), "sealing {exchange} without keys");
        let keyed = keyed?;
        keyed.iv_counter += 1;
        let n = keyed.iv_counter;
        let keys = keyed.keys.sealing(initiator);
        let mut plain = Vec::with_capacity(256);
        let first = codec::emit_payloads(payloads, &mut plain);
        crypto::pad(keys.encr, &mut plain);
        // Fails only for a key of the wrong length, which IkeKeys::derive never makes.
        let iv = keys.iv(n).ok()?;
        let sk_len = 4 + iv.len() + plain.len() + keys.icv_len();
        let mut h = h;
        h.next_payload = payload_type::SK;
        h.length = (codec::HEADER_LEN + sk_len) as u32;
        let mut out = Vec::with_capacity(codec::HEADER_LEN + sk_len);
        h.emit(&mut out);
        out.extend_from_slice(&[first, 0]);
        out.extend_from_slice(&(sk_len as u16).to_be_bytes());
        let body = crypto::seal(keys, &iv, &out, plain).ok()?;
        out.extend_from_slice(&body);
        Some(out)
    }

    /// Opens the SK payload of a message from the peer: its payloads and, as the message
    /// proved the SA keyed, SK_d for the CHILD SA or IKE SA the exchange may derive.
    pub(super) fn open(
        sa: &IkeSa,
        data: &[u8],
        msg: &Message,
    ) -> Result<(Vec<Payload>, SkD), Error> {
        // Without keys nothing can be authenticated: dropped like a forgery (§2.21).
        let keyed = sa.phase.keyed().ok_or(Error::IntegrityCheckFailed)?;
        let Some(Payload::Sk { first, body }) = msg.payloads.last() else {
            return Err(Error::malformed("message", "no Encrypted payload"));
        };
        let aad = &data[..data.len() - body.len()];
        let mut plain = crypto::open(keyed.keys.sealing(!sa.initiator), aad, body)?;
        let pad = usize::from(plain.last().copied().unwrap_or(0));
        if pad + 1 > plain.len() {
            return Err(Error::malformed("SK payload", "pad length beyond the plaintext"));
        }
        plain.truncate(plain.len() - pad - 1);
        Ok((codec::parse_payloads(*first, &plain)?, keyed.sk_d()))
    }

    pub(super) fn send_request(
        &mut self,
        sa: &mut IkeSa,
        exchange: ExchangeType,
        payloads: &[Payload],
        kind: ReqKind,
        now: Instant,
    ) {
        let msg_id = sa.next_req_id;
        sa.next_req_id = sa.next_req_id.wrapping_add(1);
        let Some(data) = Self::seal(sa, exchange, false, msg_id, payloads) else { return };
        self.send(sa, data.clone());
        sa.out = Some(Request {
            msg_id,
            exchange,
            data,
            tries: 1,
            first_sent: now,
            next_retx: now + self.config.retransmit_timeout,
            kind,
        });
    }

    pub(super) fn respond(
        &mut self,
        sa: &mut IkeSa,
        exchange: ExchangeType,
        msg_id: u32,
        payloads: &[Payload],
    ) {
        let Some(data) = Self::seal(sa, exchange, true, msg_id, payloads) else { return };
        self.send(sa, data.clone());
        sa.cached_resp = Some((msg_id, data));
    }

    /// An unencrypted error answer to a request that has no usable SA (§1.5).
    pub(super) fn answer_plain(
        &mut self,
        h: &Header,
        local: SocketAddr,
        remote: SocketAddr,
        n: NotifyType,
        data: Vec<u8>,
    ) {
        let hdr = Header {
            spi_i: h.spi_i,
            spi_r: h.spi_r,
            next_payload: 0,
            version: 0x20,
            exchange: h.exchange,
            flags: flags::RESPONSE,
            message_id: h.message_id,
            length: 0,
        };
        let bytes = codec::encode_plain(hdr, &[Payload::Notify(Notify::new(n, data))]);
        let nat_t = local.port() == NAT_T_PORT;
        self.transmits.push_back(Transmit { local, remote, data: bytes, nat_t });
    }

    // ----- requests from the peer on an existing SA ---------------------------------------

    pub(super) fn on_request(
        &mut self,
        sa: &mut IkeSa,
        now: Instant,
        local: SocketAddr,
        remote: SocketAddr,
        data: &[u8],
        msg: Message,
    ) {
        let id = msg.header.message_id;
        if id != sa.peer_next_req {
            if id.wrapping_add(1) == sa.peer_next_req
                && let Some((cid, resp)) = &sa.cached_resp
                && *cid == id
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
        let (payloads, sk_d) = match Self::open(sa, data, &msg) {
            Ok(p) => p,
            // Fails its integrity check: dropped (§2.21).
            Err(_) => return,
        };
        // Authentic: accept the peer's (possibly NAT-mapped) address (§2.23).
        sa.last_rx = now;
        if local.port() == NAT_T_PORT && !sa.nat_t {
            sa.nat_t = true;
        }
        if sa.nat_t {
            sa.local = local;
            sa.remote = remote;
        }
        sa.peer_next_req = id.wrapping_add(1);
        if let Some(ty) = payloads.iter().find_map(|p| match p {
            Payload::Unknown { ty, critical: true, .. } => Some(*ty),
            _ => None,
        }) {
            let n =
                [Payload::Notify(Notify::new(NotifyType::UNSUPPORTED_CRITICAL_PAYLOAD, vec![ty]))];
            self.respond(sa, msg.header.exchange, id, &n);
            if sa.phase.is_half_open() {
                sa.start_deleting();
            }
            return;
        }
        match (msg.header.exchange, sa.phase.take()) {
            // IKE_AUTH consumes the half-open phase: it ends established or deleting.
            (ExchangeType::IKE_AUTH, Phase::HalfOpen(h)) => {
                self.on_auth_request(sa, *h, now, id, payloads)
            }
            (exchange, phase) => {
                sa.phase = phase;
                match (exchange, &sa.phase) {
                    (
                        ExchangeType::CREATE_CHILD_SA,
                        Phase::Established(_) | Phase::Deleting { .. },
                    ) => self.on_create_child_request(sa, &sk_d, now, id, payloads),
                    (
                        ExchangeType::INFORMATIONAL,
                        Phase::Established(_) | Phase::Rekeyed { .. } | Phase::Deleting { .. },
                    ) => self.on_informational_request(sa, now, id, payloads),
                    (ExchangeType::CREATE_CHILD_SA, Phase::Rekeyed { .. }) => {
                        let n =
                            [Payload::Notify(Notify::new(NotifyType::TEMPORARY_FAILURE, vec![]))];
                        self.respond(sa, exchange, id, &n);
                    }
                    _ => {
                        let n = [Payload::Notify(Notify::new(NotifyType::INVALID_SYNTAX, vec![]))];
                        self.respond(sa, exchange, id, &n);
                    }
                }
            }
        }
        self.pump(sa, now);
    }

    // ----- responses to our requests -------------------------------------------------------

    pub(super) fn on_response(
        &mut self,
        sa: &mut IkeSa,
        now: Instant,
        local: SocketAddr,
        remote: SocketAddr,
        data: &[u8],
        msg: Message,
    ) {
        // Only the answer to our outstanding request counts (§2.3): duplicates and strays are
        // dropped, as handle_datagram documents.
        let (id, exchange) = (msg.header.message_id, msg.header.exchange);
        let Some(req) = sa.out.take_if(|o| o.msg_id == id && o.exchange == exchange) else {
            return;
        };
        if exchange == ExchangeType::IKE_SA_INIT {
            // Outstanding until the answer proves usable (on_init_response decides).
            sa.out = Some(req);
            // Only an initiating SA has IKE_SA_INIT outstanding; the answer consumes that
            // phase: IKE_AUTH follows, or IKE_SA_INIT again, or the SA is given up.
            match sa.phase.take() {
                Phase::Initiating(init) => {
                    sa.last_rx = now;
                    if let Err(init) = self.on_init_response(sa, init, now, msg, data) {
                        sa.phase = Phase::Initiating(init);
                        self.abandon(sa);
                    }
                }
                other => sa.phase = other,
            }
            return;
        }
        let (payloads, sk_d) = match Self::open(sa, data, &msg) {
            Ok(p) => p,
            // Fails its integrity check: dropped, the request stays outstanding (§2.21).
            Err(_) => {
                sa.out = Some(req);
                return;
            }
        };
        sa.last_rx = now;
        if sa.nat_t {
            sa.local = local;
            sa.remote = remote;
        }
        match req.kind {
            ReqKind::Init => {}
            // Only an authenticating SA has IKE_AUTH outstanding; the answer consumes that
            // phase: the SA ends established or given up.
            ReqKind::Auth => match sa.phase.take() {
                Phase::Authenticating(a) => self.on_auth_response(sa, a, now, payloads),
                other => sa.phase = other,
            },
            ReqKind::CreateChild { cfg, spi_in, nonce, dh, rekey_of, offered } => self
                .on_create_child_response(
                    sa, &sk_d, now, payloads, cfg, spi_in, nonce, dh, rekey_of, offered,
                ),
            ReqKind::RekeyIke { new_spi, nonce, dh } => {
                self.on_rekey_ike_response(sa, &sk_d, now, payloads, new_spi, nonce, dh)
            }
            ReqKind::Dpd => {}
            ReqKind::DeleteChildren(spis) => {
                for spi in spis {
                    if let Some(i) = sa.children.iter().position(|c| c.spi_in == spi) {
                        let c = sa.children.remove(i);
                        self.child_index.remove(&c.spi_in);
                        let reason = match c.state {
                            ChildState::Rekeyed => DownReason::Rekeyed,
                            _ if c.collision.is_some() => DownReason::RekeyCollision,
                            _ => DownReason::Terminated,
                        };
                        self.child_down(sa, &c, reason);
                    }
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
        }
        self.pump(sa, now);
    }
}

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

    /// Encodes an encrypted message (§3.14, RFC 5282).
    pub(super) fn seal(
        &mut self,
        sa: &mut IkeSa,
        exchange: ExchangeType,
        response: bool,
        msg_id: u32,
        payloads: &[Payload],
    ) -> Vec<u8> {
        let Some(keys) = sa.keys.as_ref() else { return Vec::new() };
        let mut plain = Vec::with_capacity(256);
        let first = codec::emit_payloads(payloads, &mut plain);
        plain.push(0); // pad length: AES-GCM needs no padding
        let sk_len = 4 + crypto::IV_LEN + plain.len() + crypto::ICV_LEN;
        let mut h = Self::header(sa, exchange, response, msg_id);
        h.next_payload = payload_type::SK;
        h.length = (codec::HEADER_LEN + sk_len) as u32;
        let mut out = Vec::with_capacity(codec::HEADER_LEN + sk_len);
        h.emit(&mut out);
        out.extend_from_slice(&[first, 0]);
        out.extend_from_slice(&(sk_len as u16).to_be_bytes());
        sa.iv_counter += 1;
        let key = if sa.initiator { &keys.sk_ei } else { &keys.sk_er };
        match crypto::seal(keys.encr, key, sa.iv_counter.to_be_bytes(), &out, plain) {
            Ok(body) => {
                out.extend_from_slice(&body);
                out
            }
            Err(_) => Vec::new(),
        }
    }

    /// Opens the SK payload of a message from the peer.
    pub(super) fn open(sa: &IkeSa, data: &[u8], msg: &Message) -> Result<Vec<Payload>, Error> {
        let keys = sa.keys.as_ref().ok_or(Error::IntegrityCheckFailed)?;
        let Some(Payload::Sk { first, body }) = msg.payloads.last() else {
            return Err(Error::malformed("message", "no Encrypted payload"));
        };
        let aad = &data[..data.len() - body.len()];
        let key = if sa.initiator { &keys.sk_er } else { &keys.sk_ei };
        let mut plain = crypto::open(keys.encr, key, aad, body)?;
        let pad = usize::from(plain.last().copied().unwrap_or(0));
        if pad + 1 > plain.len() {
            return Err(Error::malformed("SK payload", "pad length beyond the plaintext"));
        }
        plain.truncate(plain.len() - pad - 1);
        codec::parse_payloads(*first, &plain)
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
        let data = self.seal(sa, exchange, false, msg_id, payloads);
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
        let data = self.seal(sa, exchange, true, msg_id, payloads);
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
        let payloads = match Self::open(sa, data, &msg) {
            Ok(p) => p,
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
            if sa.state == State::HalfOpen {
                sa.state = State::Deleting;
            }
            return;
        }
        match (msg.header.exchange, sa.state) {
            (ExchangeType::IKE_AUTH, State::HalfOpen) => {
                self.on_auth_request(sa, now, id, payloads)
            }
            (ExchangeType::CREATE_CHILD_SA, State::Established | State::Deleting) => {
                self.on_create_child_request(sa, now, id, payloads)
            }
            (
                ExchangeType::INFORMATIONAL,
                State::Established | State::Rekeyed | State::Deleting,
            ) => self.on_informational_request(sa, now, id, payloads),
            (ExchangeType::CREATE_CHILD_SA, State::Rekeyed) => {
                let n = [Payload::Notify(Notify::new(NotifyType::TEMPORARY_FAILURE, vec![]))];
                self.respond(sa, msg.header.exchange, id, &n);
            }
            _ => {
                let n = [Payload::Notify(Notify::new(NotifyType::INVALID_SYNTAX, vec![]))];
                self.respond(sa, msg.header.exchange, id, &n);
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
        let Some(out) = sa.out.as_ref() else { return };
        if msg.header.message_id != out.msg_id || msg.header.exchange != out.exchange {
            return;
        }
        if msg.header.exchange == ExchangeType::IKE_SA_INIT {
            sa.last_rx = now;
            if let Some(reason) = self.on_init_response(sa, now, msg, data) {
                let persistent = sa.init.as_ref().is_some_and(|i| i.persistent);
                let _ = persistent;
                sa.state = State::Deleting;
                sa.out = None;
                self.release_pending_spis(sa);
                self.detach(sa);
                let _ = reason;
            }
            return;
        }
        let Ok(payloads) = Self::open(sa, data, &msg) else { return };
        sa.last_rx = now;
        if sa.nat_t {
            sa.local = local;
            sa.remote = remote;
        }
        let Some(req) = sa.out.take() else { return };
        match req.kind {
            ReqKind::Init => {}
            ReqKind::Auth => self.on_auth_response(sa, now, payloads),
            ReqKind::CreateChild { cfg, spi_in, nonce, dh, rekey_of, offered } => self
                .on_create_child_response(
                    sa, now, payloads, cfg, spi_in, nonce, dh, rekey_of, offered,
                ),
            ReqKind::RekeyIke { new_spi, nonce, dh } => {
                self.on_rekey_ike_response(sa, now, payloads, new_spi, nonce, dh)
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
                let reason = if sa.state == State::Rekeyed {
                    DownReason::Rekeyed
                } else {
                    DownReason::Terminated
                };
                self.finish_later(sa, reason);
                sa.linger_until = Some(now);
            }
        }
        self.pump(sa, now);
    }
}

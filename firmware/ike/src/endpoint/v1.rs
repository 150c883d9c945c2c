//! IKEv1 tunnels (RFC 2409) beside IKEv2 ones: one [`Session`] per tunnel that speaks it,
//! reached by the header's version field (RFC 2408 §3.1: major version 1), so one socket pair
//! serves both versions.

use super::*;
use crate::config::IkeVersion;
use crate::v1::codec::exchange;
use crate::v1::session::Session;

impl Endpoint {
    /// True when the datagram is ISAKMP (IKEv1): major version 1 in the header's byte 17.
    pub(super) fn is_v1(data: &[u8]) -> bool {
        data.len() >= codec::HEADER_LEN && data[17] >> 4 == 1
    }

    /// The tunnel's IKEv1 session, created on first use.
    fn session(&mut self, t: usize, now: Instant) -> Option<&mut Session> {
        let cfg = self.tunnel_ref(t)?.cfg.clone();
        Some(self.v1.entry(t).or_insert_with(|| Session::new(cfg, now)))
    }

    /// Moves what a session produced into the endpoint's queues.
    fn drain_v1(&mut self, t: usize) {
        if let Some(s) = self.v1.get_mut(&t) {
            self.transmits.extend(s.drain_transmits());
            self.events.extend(s.drain_events());
        }
    }

    /// The tunnel speaks IKEv1 when it initiates.
    pub(super) fn initiates_v1(&self, t: usize) -> bool {
        self.tunnel_ref(t).is_some_and(|tun| tun.cfg.version == IkeVersion::V1)
    }

    /// The IKEv1 session holding this tunnel's SAs, if it has any.
    pub(super) fn active_v1(&self, t: usize) -> bool {
        self.v1.get(&t).is_some_and(|s| !s.is_idle())
    }

    pub(super) fn v1_initiate(&mut self, t: usize, now: Instant) {
        let Endpoint { v1, rng, config, tunnels, .. } = self;
        let Some(cfg) = tunnels.get(t).and_then(|x| x.as_ref()).map(|x| x.cfg.clone()) else {
            return;
        };
        v1.entry(t).or_insert_with(|| Session::new(cfg, now)).initiate(config, now, rng);
        self.drain_v1(t);
    }

    pub(super) fn v1_terminate(&mut self, t: usize) {
        if let Some(s) = self.v1.get_mut(&t) {
            s.terminate(&mut self.rng);
        }
        self.drain_v1(t);
    }

    /// The tunnel whose IKEv1 session has the SA pair with inbound SPI `spi`.
    pub(super) fn v1_child_owner(&self, spi: u32) -> Option<usize> {
        self.v1.iter().find(|(_, s)| s.has_child(spi)).map(|(t, _)| *t)
    }

    pub(super) fn v1_rekey_child(&mut self, t: usize, spi: u32, now: Instant) -> bool {
        let Endpoint { v1, rng, config, .. } = self;
        let ok = v1.get_mut(&t).is_some_and(|s| s.rekey_child(spi, config, now, rng));
        self.drain_v1(t);
        ok
    }

    pub(super) fn v1_rekey_ike(&mut self, t: usize, now: Instant) {
        let Endpoint { v1, rng, config, .. } = self;
        if let Some(s) = v1.get_mut(&t) {
            s.rekey_ike(config, now, rng);
        }
        self.drain_v1(t);
    }

    pub(super) fn v1_traffic_seen(&mut self, t: usize, spi: u32, now: Instant) {
        if let Some(s) = self.v1.get_mut(&t) {
            s.traffic_seen(spi, now);
        }
    }

    /// An ISAKMP datagram: to the session that owns its cookies, or, for a first phase-1
    /// message, to the tunnel configured for the peer's address that accepts IKEv1.
    pub(super) fn v1_datagram(
        &mut self,
        now: Instant,
        local: SocketAddr,
        remote: SocketAddr,
        data: &[u8],
    ) {
        let Ok(h) = Header::parse_loose(data) else { return };
        // Sessions are few per peer and datagrams rare: a scan is cheaper than an index to
        // keep in step with every phase 1.
        let owner = self.v1.iter().find(|(_, s)| s.owns(h.spi_i, h.spi_r)).map(|(t, _)| *t);
        if let Some(t) = owner {
            let Endpoint { v1, rng, config, .. } = self;
            if let Some(s) = v1.get_mut(&t) {
                s.handle(config, now, local, remote, data, rng);
            }
            self.drain_v1(t);
            return;
        }
        let first = h.spi_r == 0
            && h.message_id == 0
            && (h.exchange == exchange::MAIN || h.exchange == exchange::AGGRESSIVE);
        if !first {
            return;
        }
        // Main Mode names the peer only in message 5, after the key is chosen: the tunnel is
        // the one for its address (RFC 2409 §5.4 ties PSKs to addresses in Main Mode).
        let Some(t) = self.candidates(local, remote, true).into_iter().next() else {
            self.fail(Explanation {
                tunnel: String::new(),
                peer: remote,
                exchange: h.exchange,
                cause: Cause::WeRefused(NotifyType::NO_PROPOSAL_CHOSEN),
                ours: "no IKEv1 tunnel for this address".into(),
                theirs: None,
                suggestion: Some(format!(
                    "add a tunnel whose remote address is {} with ike_version = 1 or \"any\"",
                    remote.ip()
                )),
            });
            return;
        };
        if self.session(t, now).is_none() {
            return;
        }
        let Endpoint { v1, rng, config, .. } = self;
        if let Some(s) = v1.get_mut(&t) {
            s.respond(config, now, local, remote, data, rng);
        }
        self.drain_v1(t);
    }

    pub(super) fn v1_timeout(&mut self, now: Instant) {
        let due: Vec<usize> = self
            .v1
            .iter()
            .filter(|(_, s)| s.poll_timeout(&self.config).is_some_and(|t| t <= now))
            .map(|(t, _)| *t)
            .collect();
        for t in due {
            let Endpoint { v1, rng, config, .. } = self;
            if let Some(s) = v1.get_mut(&t) {
                s.handle_timeout(config, now, rng);
            }
            self.drain_v1(t);
        }
    }

    pub(super) fn v1_poll_timeout(&self) -> Option<Instant> {
        self.v1.values().filter_map(|s| s.poll_timeout(&self.config)).min()
    }

    pub(super) fn v1_status(&self, t: usize) -> Option<TunnelStatus> {
        self.v1.get(&t).map(Session::status)
    }
}

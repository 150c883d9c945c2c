//! One IKEv1 tunnel as the [`crate::Endpoint`] runs it: its ISAKMP SAs (phase 1, RFC 2409 §5)
//! and one IPsec SA pair per selector pair (Quick Mode, §5.5), with retransmission, rekeying of
//! both phases before expiry (make-before-break), Dead Peer Detection (RFC 3706), deletes, the
//! NAT-T float and keepalives (RFC 3947, RFC 3948 §2.3).
//!
//! It gives the same [`Event`]s as IKEv2 (`IkeSaUp`, `ChildSaUp` with `rekey_of`,
//! `ChildSaDown`, `IkeSaDown`, `NegotiationFailed`), so the driver and the dataplane do not
//! know which version runs.
//!
//! IKEv1 differs from IKEv2 in ways that shape this file:
//! - IPsec SAs do not belong to an ISAKMP SA: a phase-1 rekey is a new Main Mode beside the old
//!   one, without INITIAL-CONTACT, and the SA pairs carry over;
//! - nothing is acknowledged after Quick Mode: a Delete is sent once, and a replaced SA pair is
//!   deleted a few seconds after its successor is up, so that packets already on their way
//!   still arrive;
//! - each selector pair is its own Quick Mode; an initiator runs them one after the other.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rand_core::CryptoRngCore;

use crate::codec::{ExchangeType, NotifyType};
use crate::config::{DpdAction, EndpointConfig, Lifetime, TunnelConfig};
use crate::endpoint::{ChildStatus, IkeStatus, TunnelStatus};
use crate::event::{Cause, ChildKeys, DownReason, Event, Explanation, Transmit};
use crate::proposal::list_to_string;

use super::codec::{self, Body, DOI_IPSEC, Notify, Payload, exchange, header};
use super::info;
use super::main_mode::{Established, Failure, MainMode, Phase1Config, Step, notify};
use super::proposal::{PROTO_ESP, PROTO_ISAKMP};
use super::quick_mode::{ChildSa, QmStep, QuickConfig, QuickMode};

const NAT_T_PORT: u16 = 4500;
/// How long a replaced SA pair keeps receiving before we delete it.
const REPLACED_GRACE: Duration = Duration::from_secs(5);
/// How long a phase 1 that lost to its successor lives on before its Delete.
const P1_GRACE: Duration = Duration::from_secs(2);
/// How long a finished Quick Mode of ours answers a retransmitted message 2.
const FINISHED_KEPT: Duration = Duration::from_secs(30);

/// The phase-1 settings of a tunnel.
pub fn phase1_config(t: &TunnelConfig) -> Phase1Config {
    Phase1Config {
        proposals: t.ike_proposals.clone(),
        life: t.ike_lifetime.life_time,
        psk: t.psk.clone(),
        local_id: t.local_id.clone(),
        remote_id: t.remote_id.clone(),
        local: t.local,
        remote: t.remote,
    }
}

/// One Quick Mode per selector pair of each CHILD SA (IKEv1 negotiates one pair at a time), with
/// the index of its CHILD SA configuration. Pairs of two address families are no pair.
pub fn quick_configs(t: &TunnelConfig, udp: bool) -> Vec<(usize, QuickConfig)> {
    let mut out = Vec::new();
    for (i, c) in t.children.iter().enumerate() {
        for l in &c.local_ts {
            for r in c.remote_ts.iter().filter(|r| r.is_ipv4() == l.is_ipv4()) {
                out.push((
                    i,
                    QuickConfig {
                        proposals: c.esp_proposals.clone(),
                        life: c.lifetime.life_time,
                        local_ts: *l,
                        remote_ts: *r,
                        udp,
                    },
                ));
            }
        }
    }
    out
}

/// The dataplane name of each of [`quick_configs`]'s pairs.
fn pair_names(t: &TunnelConfig) -> Vec<String> {
    let configs = quick_configs(t, false);
    let mut names = Vec::with_capacity(configs.len());
    for (k, (i, _)) in configs.iter().enumerate() {
        let within = configs[..k].iter().filter(|(j, _)| j == i).count();
        names.push(t.dataplane_child(*i, within));
    }
    names
}

/// An outstanding message of ours, sent again with growing waits until answered.
struct Retx {
    data: Vec<u8>,
    at: Instant,
    tries: u32,
}

/// One ISAKMP SA, being negotiated or up.
struct P1 {
    initiator: bool,
    exchange: ExchangeType,
    /// The exchange, kept after it finished to answer a retransmitted last message.
    mm: Box<MainMode>,
    up: Option<Box<Established>>,
    retx: Option<Retx>,
    rekey_at: Option<Instant>,
    expire_at: Option<Instant>,
    /// Replaced by a newer phase 1: deleted at this time.
    delete_at: Option<Instant>,
}

impl P1 {
    fn cookies(&self) -> (u64, u64) {
        match &self.up {
            Some(e) => (e.cky_i, e.cky_r),
            None => self.mm.cookies(),
        }
    }
    fn up(&self) -> Option<&Established> {
        self.up.as_deref()
    }
}

/// A Quick Mode under way.
struct Qm {
    /// We started it.
    initiator: bool,
    /// Index into the tunnel's selector pairs.
    pair: usize,
    rekey_of: Option<u32>,
    qm: QuickMode,
    retx: Option<Retx>,
}

/// An SA pair.
struct Child {
    pair: usize,
    sa: ChildSa,
    rekey_at: Option<Instant>,
    expire_at: Instant,
    /// A successor is up.
    replaced: bool,
    /// Our Delete goes out at this time.
    delete_at: Option<Instant>,
}

/// An outstanding liveness check (RFC 3706 §5.3).
struct DpdCheck {
    first_seq: u32,
    deadline: Instant,
    next: Instant,
}

/// One tunnel's IKEv1 state.
pub struct Session {
    cfg: TunnelConfig,
    /// The selector pairs with the index of their CHILD SA configuration.
    pairs: Vec<(usize, QuickConfig)>,
    /// Each pair's name in events and the dataplane ([`TunnelConfig::dataplane_child`]).
    names: Vec<String>,
    local: SocketAddr,
    remote: SocketAddr,
    floated: bool,
    behind_nat: bool,
    p1s: Vec<P1>,
    qms: Vec<Qm>,
    /// Our finished Quick Modes, kept a while to answer a retransmitted message 2 whose
    /// message 3 was lost.
    finished: Vec<(Instant, QuickMode)>,
    children: Vec<Child>,
    dpd: Option<DpdCheck>,
    dpd_seq: u32,
    last_rx: Instant,
    keepalive_at: Option<Instant>,
    /// The tunnel should be up: pairs that are missing are negotiated.
    wanted: bool,
    events: Vec<Event>,
    transmits: Vec<Transmit>,
}

impl Session {
    /// A tunnel without SAs.
    pub fn new(cfg: TunnelConfig, now: Instant) -> Session {
        Session {
            pairs: quick_configs(&cfg, false),
            names: pair_names(&cfg),
            local: cfg.local,
            remote: cfg.remote,
            cfg,
            floated: false,
            behind_nat: false,
            p1s: Vec::new(),
            qms: Vec::new(),
            finished: Vec::new(),
            children: Vec::new(),
            dpd: None,
            dpd_seq: 0,
            last_rx: now,
            keepalive_at: None,
            wanted: false,
            events: Vec::new(),
            transmits: Vec::new(),
        }
    }

    /// The tunnel's configuration.
    pub fn config(&self) -> &TunnelConfig {
        &self.cfg
    }

    /// The datagrams to send.
    pub fn drain_transmits(&mut self) -> std::vec::Drain<'_, Transmit> {
        self.transmits.drain(..)
    }

    /// What happened.
    pub fn drain_events(&mut self) -> std::vec::Drain<'_, Event> {
        self.events.drain(..)
    }

    /// True when the datagram with these cookies belongs to one of our ISAKMP SAs.
    pub fn owns(&self, cky_i: u64, cky_r: u64) -> bool {
        self.phase1_index(cky_i, cky_r).is_some()
    }

    fn phase1_index(&self, cky_i: u64, cky_r: u64) -> Option<usize> {
        self.p1s.iter().position(|p| {
            let (i, r) = p.cookies();
            // Our first message had no responder cookie yet; its answer brings it.
            i == cky_i && (r == cky_r || (p.initiator && r == 0))
        })
    }

    /// True when the CHILD SA with inbound SPI `spi` is ours.
    pub fn has_child(&self, spi: u32) -> bool {
        self.children.iter().any(|c| c.sa.spi_in == spi)
    }

    fn newest_up(&self) -> Option<&Established> {
        self.p1s.iter().rev().filter(|p| p.delete_at.is_none()).find_map(P1::up)
    }

    fn negotiating(&self) -> bool {
        self.p1s.iter().any(|p| p.up.is_none())
    }

    // ----- commands ------------------------------------------------------------------------

    /// Brings the tunnel up: phase 1 if none is up or under way, then the missing pairs.
    pub fn initiate(&mut self, ep: &EndpointConfig, now: Instant, rng: &mut impl CryptoRngCore) {
        self.wanted = true;
        if self.newest_up().is_some() {
            self.next_quick_mode(ep, now, rng);
        } else if !self.negotiating() {
            self.start_phase1(ep, now, rng, false);
        }
    }

    fn start_phase1(
        &mut self,
        ep: &EndpointConfig,
        now: Instant,
        rng: &mut impl CryptoRngCore,
        rekey: bool,
    ) {
        if self.cfg.remote.ip().is_unspecified() {
            return; // a peer known by identity only initiates itself
        }
        // A new phase 1 starts from port 500 (RFC 3947 §4) unless encapsulation is forced.
        if !rekey {
            self.local = self.cfg.local;
            self.remote = self.cfg.remote;
            self.floated = false;
        }
        let p1cfg =
            Phase1Config { local: self.local, remote: self.remote, ..phase1_config(&self.cfg) };
        let (exch, r) = if self.cfg.aggressive {
            (exchange::AGGRESSIVE, MainMode::initiate_aggressive(p1cfg, rng))
        } else {
            (exchange::MAIN, MainMode::initiate(p1cfg, rng))
        };
        match r {
            Ok((mut mm, msg)) => {
                if rekey {
                    mm.without_initial_contact();
                }
                self.push_phase1(true, exch, mm, msg, ep, now);
            }
            Err(f) => self.fail(exch, &f, false, None),
        }
    }

    /// A phase 1 under way, its first message sent.
    fn push_phase1(
        &mut self,
        initiator: bool,
        exchange: ExchangeType,
        mm: MainMode,
        msg: Vec<u8>,
        ep: &EndpointConfig,
        now: Instant,
    ) {
        let retx = Some(self.send_retx(msg, ep, now));
        self.p1s.push(P1 {
            initiator,
            exchange,
            mm: Box::new(mm),
            up: None,
            retx,
            rekey_at: None,
            expire_at: None,
            delete_at: None,
        });
    }

    /// Deletes every SA of the tunnel (one Delete for the SA pairs, one per ISAKMP SA).
    pub fn terminate(&mut self, rng: &mut impl CryptoRngCore) {
        self.wanted = false;
        self.all_down(DownReason::Terminated, true, rng);
    }

    /// Rekeys the SA pair with inbound SPI `spi`.
    pub fn rekey_child(
        &mut self,
        spi: u32,
        ep: &EndpointConfig,
        now: Instant,
        rng: &mut impl CryptoRngCore,
    ) -> bool {
        let Some(c) = self.children.iter_mut().find(|c| c.sa.spi_in == spi && !c.replaced) else {
            return false;
        };
        c.rekey_at = None;
        let pair = c.pair;
        if !self.qms.iter().any(|q| q.pair == pair && q.rekey_of.is_some()) {
            self.start_quick_mode(pair, Some(spi), ep, now, rng);
        }
        true
    }

    /// Rekeys phase 1: a new Main Mode beside the current one.
    pub fn rekey_ike(&mut self, ep: &EndpointConfig, now: Instant, rng: &mut impl CryptoRngCore) {
        if self.newest_up().is_some() && !self.negotiating() {
            self.start_phase1(ep, now, rng, true);
        }
    }

    /// Inbound traffic on an SA pair: the peer is alive.
    pub fn traffic_seen(&mut self, spi: u32, now: Instant) {
        if self.has_child(spi) && now > self.last_rx {
            self.last_rx = now;
        }
    }

    // ----- datagrams -----------------------------------------------------------------------

    /// Answers a peer's first phase-1 message (Main or Aggressive Mode).
    pub fn respond(
        &mut self,
        ep: &EndpointConfig,
        now: Instant,
        local: SocketAddr,
        remote: SocketAddr,
        datagram: &[u8],
        rng: &mut impl CryptoRngCore,
    ) {
        let Ok(m) = codec::parse_message(datagram) else { return };
        let exch = m.header.exchange;
        if exch == exchange::AGGRESSIVE && !self.cfg.aggressive {
            // Answering would hand the peer a hash of the PSK to guess at (RFC 2409 §5.4).
            self.answer_notify(&m.header, local, remote, notify::NO_PROPOSAL_CHOSEN);
            self.explain(
                exch,
                remote,
                Cause::WeRefused(NotifyType(notify::NO_PROPOSAL_CHOSEN)),
                "Main Mode only".into(),
                Some("Aggressive Mode".into()),
                Some("the peer uses Aggressive Mode: set aggressive_mode = true on this tunnel (it exposes a hash of the PSK to offline guessing), or switch the peer to Main Mode".into()),
            );
            return;
        }
        self.local = local;
        self.remote = remote;
        self.floated = local.port() == NAT_T_PORT;
        let p1cfg = Phase1Config { local, remote, ..phase1_config(&self.cfg) };
        match MainMode::respond(p1cfg, datagram, rng) {
            Ok((mm, msg)) => {
                self.push_phase1(false, exch, mm, msg, ep, now);
            }
            Err(f) => {
                if let Some(n) = f.notify() {
                    self.answer_notify(&m.header, local, remote, n);
                }
                self.fail(exch, &f, true, None);
            }
        }
    }

    /// Takes a datagram of one of our ISAKMP SAs (see [`Session::owns`]).
    pub fn handle(
        &mut self,
        ep: &EndpointConfig,
        now: Instant,
        local: SocketAddr,
        remote: SocketAddr,
        datagram: &[u8],
        rng: &mut impl CryptoRngCore,
    ) {
        let Ok(m) = codec::parse_message(datagram) else { return };
        let h = m.header;
        let Some(k) = self.phase1_index(h.spi_i, h.spi_r) else { return };
        if self.p1s[k].up.is_none() {
            self.phase1_message(k, ep, now, local, remote, datagram, &m, rng);
            return;
        }
        if h.exchange == self.p1s[k].exchange {
            // Our last phase-1 message was lost: the peer sends its own again.
            if let Ok(Step::Resend(Some(msg))) = self.p1s[k].mm.handle(datagram, rng) {
                self.send(msg);
            }
            return;
        }
        // From here on every message is protected by the ISAKMP SA: a source that changes is
        // a NAT that rebound (RFC 3947 §5.2).
        let floated = local.port() == NAT_T_PORT;
        if h.exchange == exchange::QUICK {
            self.quick_message(k, ep, now, datagram, rng);
        } else if h.exchange == exchange::INFORMATIONAL {
            self.informational(k, ep, now, datagram, rng);
        } else {
            return;
        }
        if floated || !self.floated {
            self.local = local;
            self.remote = remote;
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn phase1_message(
        &mut self,
        k: usize,
        ep: &EndpointConfig,
        now: Instant,
        local: SocketAddr,
        remote: SocketAddr,
        datagram: &[u8],
        m: &codec::Message,
        rng: &mut impl CryptoRngCore,
    ) {
        let exch = self.p1s[k].exchange;
        // An error notification in clear, before the keys exist (RFC 2408 §5).
        if m.header.exchange == exchange::INFORMATIONAL {
            if let Body::Plain(payloads) = &m.body
                && let Some(n) = payloads.iter().find_map(|p| match p {
                    Payload::Notify(n) if n.ty < 8192 => Some(n.ty),
                    _ => None,
                })
            {
                self.p1s.remove(k);
                self.fail(exch, &Failure::Notified(n), false, None);
                self.after_phase1_failure(rng);
            }
            return;
        }
        let mm = &mut self.p1s[k].mm;
        let step = mm.handle(datagram, rng);
        let nat = mm.nat();
        match step {
            Ok(step) => {
                // After message 4 (or Aggressive Mode's 2) the exchange moves to port 4500 if a
                // NAT is on the path or encapsulation is forced (RFC 3947 §4).
                // The responder follows when a message arrives on port 4500.
                if (nat.local_behind || nat.remote_behind || self.cfg.force_nat_t)
                    && nat.supported
                    && !self.floated
                    && self.p1s[k].initiator
                {
                    self.floated = true;
                    self.local.set_port(NAT_T_PORT);
                    self.remote.set_port(NAT_T_PORT);
                }
                self.behind_nat = nat.local_behind;
                if local.port() == NAT_T_PORT {
                    self.floated = true;
                    self.local = local;
                    self.remote = remote;
                }
                self.last_rx = now;
                match step {
                    Step::Send(msg) => {
                        let r = self.send_retx(msg, ep, now);
                        self.p1s[k].retx = Some(r);
                    }
                    Step::Resend(msg) => {
                        if let Some(msg) = msg {
                            self.send(msg);
                        }
                    }
                    Step::Done { send, sa } => {
                        if let Some(msg) = send {
                            self.send(msg);
                        }
                        self.phase1_up(k, sa, ep, now, rng);
                    }
                }
            }
            Err(f) => {
                let initiator = self.p1s[k].initiator;
                self.p1s.remove(k);
                if let Some(n) = f.notify() {
                    self.answer_notify(&m.header, local, remote, n);
                }
                self.fail(exch, &f, !initiator, None);
                self.after_phase1_failure(rng);
            }
        }
    }

    fn phase1_up(
        &mut self,
        k: usize,
        sa: Box<Established>,
        ep: &EndpointConfig,
        now: Instant,
        rng: &mut impl CryptoRngCore,
    ) {
        let (rekey_at, expire_at) = jittered(now, &self.cfg.ike_lifetime, sa.life, rng);
        let p = &mut self.p1s[k];
        p.retx = None;
        p.rekey_at = rekey_at;
        p.expire_at = Some(expire_at);
        let suite = sa.suite;
        p.up = Some(sa);
        // Older ISAKMP SAs are replaced (their SA pairs stay, RFC 2409 keeps the phases apart).
        let mut rekeyed = false;
        for (j, old) in self.p1s.iter_mut().enumerate() {
            if j != k && old.up().is_some() && old.delete_at.is_none() {
                old.delete_at = Some(now + P1_GRACE);
                old.rekey_at = None;
                rekeyed = true;
            }
        }
        if self.behind_nat && self.floated {
            self.keepalive_at = Some(now + ep.nat_keepalive);
        }
        self.events.push(Event::IkeSaUp {
            tunnel: self.cfg.name.clone(),
            local: self.local,
            peer: self.remote,
            suite,
            encap: self.floated,
            rekeyed,
            version: 1,
        });
        if self.p1s[k].initiator && (self.wanted || rekeyed) {
            self.wanted = true;
            self.next_quick_mode(ep, now, rng);
        }
    }

    /// A phase 1 failed: if it was a rekey, the old one carries on until it expires; if
    /// nothing is left to rekey the SA pairs with, they go.
    fn after_phase1_failure(&mut self, rng: &mut impl CryptoRngCore) {
        if self.newest_up().is_none() && !self.negotiating() && !self.children.is_empty() {
            self.all_down(DownReason::IkeSaGone, false, rng);
        }
    }

    fn quick_message(
        &mut self,
        k: usize,
        ep: &EndpointConfig,
        now: Instant,
        datagram: &[u8],
        rng: &mut impl CryptoRngCore,
    ) {
        let Ok(m) = codec::parse_message(datagram) else { return };
        let mid = m.header.message_id;
        let Some(p1) = self.p1s[k].up.as_deref() else { return };
        if let Some((_, qm)) = self.finished.iter_mut().find(|(_, q)| q.message_id() == mid) {
            if qm.last_sent().is_empty() {
                return; // a responder's finished exchange: a duplicate message 3
            }
            if let Ok(QmStep::Resend(Some(msg))) = qm.handle(p1, datagram) {
                self.send(msg);
            }
            return;
        }
        if let Some(q) = self.qms.iter().position(|q| q.qm.message_id() == mid) {
            let step = self.qms[q].qm.handle(p1, datagram);
            self.last_rx = now;
            match step {
                Ok(QmStep::Send(msg)) => {
                    let r = self.send_retx(msg, ep, now);
                    self.qms[q].retx = Some(r);
                }
                Ok(QmStep::Resend(msg)) => {
                    if let Some(msg) = msg {
                        self.send(msg);
                    }
                }
                Ok(QmStep::Done { send, child }) => {
                    let q = self.qms.remove(q);
                    if let Some(msg) = send {
                        self.send(msg);
                    }
                    self.child_up(q.pair, q.rekey_of, q.initiator, *child, now, rng);
                    // Kept to answer (initiator) or absorb (responder) a retransmission.
                    self.finished.retain(|(t, _)| *t > now);
                    self.finished.push((now + FINISHED_KEPT, q.qm));
                    self.next_quick_mode(ep, now, rng);
                }
                Err(f) => {
                    let q = self.qms.remove(q);
                    self.fail(exchange::QUICK, &f, !q.initiator, Some(q.pair));
                }
            }
            return;
        }
        // The peer's Quick Mode: the first of our pairs that covers its proxy IDs.
        let configs: Vec<QuickConfig> = self
            .pairs
            .iter()
            .map(|(_, c)| QuickConfig { udp: self.floated, ..c.clone() })
            .collect();
        let spi = rng.next_u32() | 0x100;
        match QuickMode::respond(p1, &configs, datagram, spi, rng) {
            Ok((qm, msg)) => {
                self.last_rx = now;
                let pair = configs
                    .iter()
                    .position(|c| {
                        c.local_ts == qm.config().local_ts && c.remote_ts == qm.config().remote_ts
                    })
                    .unwrap_or(0);
                // A pair that is up is being rekeyed by the peer.
                let rekey_of = self
                    .children
                    .iter()
                    .rev()
                    .find(|c| c.pair == pair && !c.replaced)
                    .map(|c| c.sa.spi_in);
                let retx = self.send_retx(msg, ep, now);
                self.qms.push(Qm { initiator: false, pair, rekey_of, qm, retx: Some(retx) });
            }
            Err(f) => {
                if let Some(n) = f.notify() {
                    self.notify_protected(k, n, rng);
                }
                self.fail(exchange::QUICK, &f, true, None);
            }
        }
    }

    fn informational(
        &mut self,
        k: usize,
        ep: &EndpointConfig,
        now: Instant,
        datagram: &[u8],
        rng: &mut impl CryptoRngCore,
    ) {
        let Some(p1) = self.p1s[k].up.as_deref() else { return };
        let Ok(payloads) = info::decode(p1, datagram) else { return };
        let mine = info::cookies(p1);
        // R-U-THERE is answered at once with its sequence number (RFC 3706 §5.3).
        let ack = info::dpd_seq(&payloads, false).and_then(|seq| {
            let ack = info::dpd(p1, notify::R_U_THERE_ACK, seq);
            info::encode(p1, rng.next_u32() | 1, &[ack]).ok()
        });
        self.last_rx = now;
        if let Some(msg) = ack {
            self.send(msg);
        }
        if let Some(seq) = info::dpd_seq(&payloads, true)
            && self.dpd.as_ref().is_some_and(|d| seq >= d.first_seq && seq <= self.dpd_seq)
        {
            self.dpd = None;
        }
        for p in &payloads {
            match p {
                Payload::Delete(d) if d.protocol == PROTO_ESP => {
                    let spis: Vec<u32> = d
                        .spis
                        .iter()
                        .filter_map(|s| Some(u32::from_be_bytes(s.as_slice().try_into().ok()?)))
                        .collect();
                    // The peer names the SPIs it receives with: our outbound ones.
                    let (gone, keep): (Vec<Child>, Vec<Child>) = std::mem::take(&mut self.children)
                        .into_iter()
                        .partition(|c| spis.contains(&c.sa.spi_out));
                    self.children = keep;
                    for c in gone {
                        let why = if c.replaced {
                            DownReason::Rekeyed
                        } else {
                            DownReason::DeletedByPeer
                        };
                        self.child_down(&c, why);
                    }
                    // A pair the peer deleted without a successor comes back if we want it.
                    self.next_quick_mode(ep, now, rng);
                }
                Payload::Delete(d) if d.protocol == PROTO_ISAKMP && d.spis.contains(&mine) => {
                    let others = self
                        .p1s
                        .iter()
                        .enumerate()
                        .any(|(j, p)| j != k && (p.up.is_none() || p.delete_at.is_none()));
                    if others {
                        self.p1s.remove(k);
                    } else {
                        // The peer ended the tunnel: its SA pairs go with the ISAKMP SA, as
                        // strongSwan's do.
                        self.wanted = false;
                        self.all_down(DownReason::DeletedByPeer, false, rng);
                    }
                    return;
                }
                Payload::Notify(n) if n.ty < 8192 => {
                    // An error about our Quick Mode under way (we run one at a time).
                    if let Some(q) = self.qms.iter().position(|q| q.initiator) {
                        let q = self.qms.remove(q);
                        self.fail(exchange::QUICK, &Failure::Notified(n.ty), false, Some(q.pair));
                    }
                }
                _ => {}
            }
        }
    }

    // ----- Quick Mode and SA pairs ---------------------------------------------------------

    /// The initiator's next missing pair, one Quick Mode at a time.
    fn next_quick_mode(&mut self, ep: &EndpointConfig, now: Instant, rng: &mut impl CryptoRngCore) {
        if !self.wanted || self.qms.iter().any(|q| q.initiator && q.rekey_of.is_none()) {
            return;
        }
        let missing = (0..self.pairs.len()).find(|&p| {
            !self.children.iter().any(|c| c.pair == p) && !self.qms.iter().any(|q| q.pair == p)
        });
        if let Some(p) = missing {
            self.start_quick_mode(p, None, ep, now, rng);
        }
    }

    fn start_quick_mode(
        &mut self,
        pair: usize,
        rekey_of: Option<u32>,
        ep: &EndpointConfig,
        now: Instant,
        rng: &mut impl CryptoRngCore,
    ) {
        let Some(p1) = self.newest_up() else {
            // No phase 1: bring one up; the pairs follow.
            if !self.negotiating() {
                self.start_phase1(ep, now, rng, false);
            }
            return;
        };
        let Some((_, qc)) = self.pairs.get(pair) else { return };
        let qc = QuickConfig { udp: self.floated, ..qc.clone() };
        let mid = rng.next_u32() | 1;
        let spi = rng.next_u32() | 0x100;
        match QuickMode::initiate(p1, qc, mid, spi, rng) {
            Ok((qm, msg)) => {
                let retx = self.send_retx(msg, ep, now);
                self.qms.push(Qm { initiator: true, pair, rekey_of, qm, retx: Some(retx) });
            }
            Err(f) => self.fail(exchange::QUICK, &f, false, Some(pair)),
        }
    }

    fn child_up(
        &mut self,
        pair: usize,
        rekey_of: Option<u32>,
        ours: bool,
        sa: ChildSa,
        now: Instant,
        rng: &mut impl CryptoRngCore,
    ) {
        let cfg = self.pairs.get(pair).map_or(0, |(i, _)| *i);
        let name = self.names.get(pair).cloned().unwrap_or_default();
        let lifetime =
            self.cfg.children.get(cfg).map(|c| c.lifetime).unwrap_or(Lifetime::CHILD_DEFAULT);
        let (rekey_at, expire_at) = jittered(now, &lifetime, sa.life, rng);
        // The old pair goes after a grace period for packets on their way, whoever rekeyed:
        // strongSwan keeps an IKEv1 SA it rekeyed until it expires (`delete_rekeyed = no`),
        // which would leave two pairs per selector pair for most of a lifetime. The initiator
        // deletes first; the responder waits twice as long, so that crossing Deletes are rare.
        if let Some(old) = rekey_of
            && let Some(c) = self.children.iter_mut().find(|c| c.sa.spi_in == old)
        {
            c.replaced = true;
            c.rekey_at = None;
            c.delete_at = Some(now + if ours { REPLACED_GRACE } else { REPLACED_GRACE * 2 });
        }
        self.events.push(Event::ChildSaUp {
            tunnel: self.cfg.name.clone(),
            child: name,
            inbound: ChildKeys::new(sa.spi_in, sa.keymat_in.to_vec()),
            outbound: ChildKeys::new(sa.spi_out, sa.keymat_out.to_vec()),
            esp: sa.suite,
            local_ts: vec![sa.local_ts],
            remote_ts: vec![sa.remote_ts],
            encap: sa.udp,
            local: self.local,
            peer: self.remote,
            rekey_of,
        });
        self.children.push(Child {
            pair,
            sa,
            rekey_at,
            expire_at,
            replaced: false,
            delete_at: None,
        });
    }

    fn child_down(&mut self, c: &Child, reason: DownReason) {
        self.events.push(Event::ChildSaDown {
            tunnel: self.cfg.name.clone(),
            child: self.names.get(c.pair).cloned().unwrap_or_default(),
            spi_in: c.sa.spi_in,
            spi_out: c.sa.spi_out,
            reason,
        });
    }

    /// Everything goes: the SA pairs, then the ISAKMP SAs; with `tell`, the peer gets Deletes.
    fn all_down(&mut self, reason: DownReason, tell: bool, rng: &mut impl CryptoRngCore) {
        let children = std::mem::take(&mut self.children);
        if tell && let Some(p1) = self.newest_up() {
            let mut body = Vec::new();
            if !children.is_empty() {
                let spis: Vec<u32> = children.iter().map(|c| c.sa.spi_in).collect();
                body.push(info::delete_esp(&spis));
            }
            let msgs: Vec<Vec<u8>> = std::iter::once(body)
                .filter(|b| !b.is_empty())
                .chain(self.p1s.iter().filter_map(P1::up).map(|p| vec![info::delete_isakmp(p)]))
                .filter_map(|b| info::encode(p1, rng.next_u32() | 1, &b).ok())
                .collect();
            msgs.into_iter().for_each(|m| self.send(m));
        }
        let child_reason = if reason == DownReason::Terminated || reason == DownReason::DeadPeer {
            reason.clone()
        } else {
            DownReason::IkeSaGone
        };
        for c in &children {
            self.child_down(c, child_reason.clone());
        }
        let was_up = self.p1s.iter().any(|p| p.up().is_some());
        self.p1s.clear();
        self.qms.clear();
        self.dpd = None;
        self.keepalive_at = None;
        if was_up || !children.is_empty() {
            self.events.push(Event::IkeSaDown { tunnel: self.cfg.name.clone(), reason });
        }
    }

    // ----- timers --------------------------------------------------------------------------

    /// When [`Session::handle_timeout`] wants to run.
    pub fn poll_timeout(&self, ep: &EndpointConfig) -> Option<Instant> {
        let p1 = self
            .p1s
            .iter()
            .flat_map(|p| [p.retx.as_ref().map(|r| r.at), p.rekey_at, p.expire_at, p.delete_at]);
        let qm = self.qms.iter().map(|q| q.retx.as_ref().map(|r| r.at));
        let ch = self.children.iter().flat_map(|c| [c.rekey_at, Some(c.expire_at), c.delete_at]);
        let dpd = match &self.dpd {
            Some(d) => Some(d.next.min(d.deadline)),
            None => self.dpd_due(ep),
        };
        p1.chain(qm).chain(ch).chain([dpd, self.keepalive_at]).flatten().min()
    }

    fn dpd_due(&self, _ep: &EndpointConfig) -> Option<Instant> {
        let delay = self.cfg.dpd.delay;
        let p1 = self.newest_up()?;
        (!delay.is_zero() && p1.peer_dpd).then_some(self.last_rx + delay)
    }

    /// Runs what is due: retransmissions, rekeys, expiries, deletes, liveness checks,
    /// keepalives.
    pub fn handle_timeout(
        &mut self,
        ep: &EndpointConfig,
        now: Instant,
        rng: &mut impl CryptoRngCore,
    ) {
        // Phase-1 retransmissions.
        let mut k = 0;
        while k < self.p1s.len() {
            let due = self.p1s[k].retx.as_ref().is_some_and(|r| r.at <= now);
            if due {
                let r = self.p1s[k].retx.take().unwrap_or(Retx { data: vec![], at: now, tries: 0 });
                if r.tries > ep.retransmit_tries {
                    let p = self.p1s.remove(k);
                    if p.initiator {
                        let hash = p.mm.awaits_peer_hash();
                        self.timed_out(p.exchange, r.tries, hash);
                        self.after_phase1_failure(rng);
                    }
                    continue;
                }
                let r = self.resend(r, ep, now);
                self.p1s[k].retx = Some(r);
            }
            k += 1;
        }
        // Quick Mode retransmissions.
        let mut q = 0;
        while q < self.qms.len() {
            if self.qms[q].retx.as_ref().is_some_and(|r| r.at <= now) {
                let r = self.qms[q].retx.take().unwrap_or(Retx { data: vec![], at: now, tries: 0 });
                if r.tries > ep.retransmit_tries {
                    let gone = self.qms.remove(q);
                    self.timed_out(exchange::QUICK, r.tries, false);
                    let _ = gone;
                    continue;
                }
                let r = self.resend(r, ep, now);
                self.qms[q].retx = Some(r);
            }
            q += 1;
        }
        // Phase-1 lifetimes.
        let rekey_p1 = self.p1s.iter_mut().any(|p| p.rekey_at.take_if(|t| *t <= now).is_some());
        if rekey_p1 {
            self.rekey_ike(ep, now, rng);
        }
        let (gone, keep): (Vec<P1>, Vec<P1>) =
            std::mem::take(&mut self.p1s).into_iter().partition(|p| {
                p.delete_at.is_some_and(|t| t <= now) || p.expire_at.is_some_and(|t| t <= now)
            });
        self.p1s = keep;
        for p in &gone {
            if let Some(e) = p.up()
                && let Ok(msg) = info::encode(e, rng.next_u32() | 1, &[info::delete_isakmp(e)])
            {
                self.send(msg);
            }
        }
        if !gone.is_empty() && self.newest_up().is_none() && !self.negotiating() {
            self.all_down(DownReason::Expired, false, rng);
            if self.wanted && self.cfg.start_action == crate::config::StartAction::Start {
                self.start_phase1(ep, now, rng, false);
            }
        }
        // SA pair lifetimes.
        let due: Vec<u32> = self
            .children
            .iter_mut()
            .filter_map(|c| c.rekey_at.take_if(|t| *t <= now).map(|_| c.sa.spi_in))
            .collect();
        for spi in due {
            self.rekey_child(spi, ep, now, rng);
        }
        let (gone, keep): (Vec<Child>, Vec<Child>) = std::mem::take(&mut self.children)
            .into_iter()
            .partition(|c| c.expire_at <= now || c.delete_at.is_some_and(|t| t <= now));
        self.children = keep;
        if !gone.is_empty() {
            let spis: Vec<u32> = gone.iter().map(|c| c.sa.spi_in).collect();
            if let Some(p1) = self.newest_up()
                && let Ok(msg) = info::encode(p1, rng.next_u32() | 1, &[info::delete_esp(&spis)])
            {
                self.send(msg);
            }
            for c in &gone {
                let why = if c.replaced { DownReason::Rekeyed } else { DownReason::Expired };
                self.child_down(c, why);
            }
            // An expired pair without a successor comes back.
            self.next_quick_mode(ep, now, rng);
        }
        self.dpd_timer(ep, now, rng);
        if self.keepalive_at.is_some_and(|t| t <= now) {
            self.keepalive_at = Some(now + ep.nat_keepalive);
            self.transmits.push(Transmit {
                local: self.local,
                remote: self.remote,
                data: vec![0xff],
                nat_t: false,
            });
        }
    }

    fn dpd_timer(&mut self, ep: &EndpointConfig, now: Instant, rng: &mut impl CryptoRngCore) {
        if let Some(d) = &self.dpd {
            if d.deadline <= now {
                let tries = self.dpd_seq.wrapping_sub(d.first_seq) + 1;
                self.dpd = None;
                self.explain(
                    exchange::INFORMATIONAL,
                    self.remote,
                    Cause::Timeout { tries },
                    "a liveness check (R-U-THERE, RFC 3706)".into(),
                    None,
                    None,
                );
                let restart = self.cfg.dpd.action == DpdAction::Restart && self.wanted_restart();
                self.all_down(DownReason::DeadPeer, false, rng);
                if restart {
                    self.wanted = true;
                    self.start_phase1(ep, now, rng, false);
                }
                return;
            }
            if d.next > now {
                return;
            }
        } else if self.dpd_due(ep).is_none_or(|t| t > now) {
            return;
        }
        let seq = self.dpd_seq.wrapping_add(1);
        let Some(p1) = self.newest_up() else { return };
        let body = [info::dpd(p1, notify::R_U_THERE, seq)];
        let msg = info::encode(p1, rng.next_u32() | 1, &body);
        self.dpd_seq = seq;
        if let Ok(msg) = msg {
            self.send(msg);
        }
        let timeout = if self.cfg.dpd.timeout.is_zero() {
            ep.retransmit_timeout * (ep.retransmit_tries + 1)
        } else {
            self.cfg.dpd.timeout
        };
        let d =
            self.dpd.get_or_insert(DpdCheck { first_seq: seq, deadline: now + timeout, next: now });
        d.next = now + ep.retransmit_timeout;
    }

    /// DPD restarts a tunnel we can address; one known by identity only waits for its peer.
    fn wanted_restart(&self) -> bool {
        !self.cfg.remote.ip().is_unspecified()
    }

    // ----- sending and explaining ----------------------------------------------------------

    fn send(&mut self, data: Vec<u8>) {
        self.transmits.push(Transmit {
            local: self.local,
            remote: self.remote,
            data,
            nat_t: self.floated,
        });
    }

    fn send_retx(&mut self, data: Vec<u8>, ep: &EndpointConfig, now: Instant) -> Retx {
        self.send(data.clone());
        Retx { data, at: now + ep.retransmit_timeout, tries: 1 }
    }

    fn resend(&mut self, mut r: Retx, ep: &EndpointConfig, now: Instant) -> Retx {
        self.send(r.data.clone());
        let wait = Duration::try_from_secs_f64(
            ep.retransmit_timeout.as_secs_f64() * ep.retransmit_base.powi(r.tries as i32),
        )
        .unwrap_or(Duration::from_secs(3600))
        .min(Duration::from_secs(3600));
        r.tries += 1;
        r.at = now + wait;
        r
    }

    /// An error notification in clear, for a phase 1 that failed before its keys (RFC 2408 §5).
    fn answer_notify(
        &mut self,
        h: &crate::codec::Header,
        local: SocketAddr,
        remote: SocketAddr,
        ty: u16,
    ) {
        let n = Notify {
            doi: DOI_IPSEC,
            protocol: PROTO_ISAKMP,
            ty,
            spi: [h.spi_i.to_be_bytes(), h.spi_r.to_be_bytes()].concat(),
            data: Vec::new(),
        };
        let data = codec::encode_plain(
            header(h.spi_i, h.spi_r, exchange::INFORMATIONAL, 0, 0),
            &[Payload::Notify(n)],
        );
        self.transmits.push(Transmit { local, remote, data, nat_t: local.port() == NAT_T_PORT });
    }

    /// An error notification protected by phase 1 `k` (RFC 2409 §5.7).
    fn notify_protected(&mut self, k: usize, ty: u16, rng: &mut impl CryptoRngCore) {
        let Some(p1) = self.p1s.get(k).and_then(P1::up) else { return };
        let n =
            Notify { doi: DOI_IPSEC, protocol: PROTO_ESP, ty, spi: Vec::new(), data: Vec::new() };
        if let Ok(msg) = info::encode(p1, rng.next_u32() | 1, &[Payload::Notify(n)]) {
            self.send(msg);
        }
    }

    fn explain(
        &mut self,
        exchange: ExchangeType,
        peer: SocketAddr,
        cause: Cause,
        ours: String,
        theirs: Option<String>,
        suggestion: Option<String>,
    ) {
        self.events.push(Event::NegotiationFailed(Explanation {
            tunnel: self.cfg.name.clone(),
            peer,
            exchange,
            cause,
            ours,
            theirs,
            suggestion,
        }));
    }

    fn timed_out(&mut self, exch: ExchangeType, tries: u32, awaited_hash: bool) {
        let (ours, suggestion) = if exch == exchange::QUICK {
            (self.esp_offer(None), Some("the peer accepted phase 1 but not this Quick Mode: check its IPsec (phase-2) settings for this tunnel".to_owned()))
        } else if awaited_hash {
            (
                format!("identity {} and its HASH", self.cfg.local_id),
                Some(format!(
                    "the peer did not answer our identity: most often the pre-shared keys differ, or the peer expects another identity than {}",
                    self.cfg.local_id
                )),
            )
        } else {
            (
                format!("IKE {}", list_to_string(&self.cfg.ike_proposals)),
                Some(format!(
                    "check that the peer {} is reachable on UDP 500/4500 and has an IKEv1 tunnel configured for us",
                    self.remote.ip()
                )),
            )
        };
        let peer = self.remote;
        self.explain(exch, peer, Cause::Timeout { tries }, ours, None, suggestion);
    }

    fn esp_offer(&self, pair: Option<usize>) -> String {
        let (cfg, qc) = match pair.and_then(|p| self.pairs.get(p)) {
            Some((i, q)) => (*i, Some(q)),
            None => (0, None),
        };
        let props = self
            .cfg
            .children
            .get(cfg)
            .map(|c| list_to_string(&c.esp_proposals))
            .unwrap_or_default();
        match qc {
            Some(q) => format!("ESP {props}, TS {} === {}", q.local_ts, q.remote_ts),
            None => format!("ESP {props}"),
        }
    }

    /// A failed exchange, explained: what each side offered and what would match. `we_refused`
    /// says the failure is ours to report to the peer.
    fn fail(&mut self, exch: ExchangeType, f: &Failure, we_refused: bool, pair: Option<usize>) {
        let refused = |n: u16| {
            if we_refused {
                Cause::WeRefused(NotifyType(n))
            } else {
                Cause::PeerRefused(NotifyType(n))
            }
        };
        let phase1 = exch != exchange::QUICK;
        let peer = self.remote;
        let (cause, ours, theirs, suggestion) = match f {
            Failure::NoProposalChosen { ours, theirs } => {
                let key = if phase1 { "ike_proposals" } else { "esp_proposals" };
                let what = if phase1 { "IKE" } else { "ESP" };
                (
                    if we_refused { refused(notify::NO_PROPOSAL_CHOSEN) } else { Cause::BadResponse(format!("the peer chose {theirs}, which we did not offer")) },
                    format!("{what} {ours}"),
                    Some(format!("{what} {theirs}")),
                    Some(format!("add one of the peer's proposals to {key}, or one of ours to the peer")),
                )
            }
            Failure::HashMismatch => (
                refused(notify::INVALID_HASH_INFORMATION),
                format!("identity {}", self.cfg.local_id),
                None,
                Some("the peer's HASH does not verify: the pre-shared keys differ; set the same psk on both sides".into()),
            ),
            Failure::IdentityMismatch { expected, got } => (
                refused(notify::INVALID_ID_INFORMATION),
                format!("remote identity {expected}"),
                Some(format!("identity {got}")),
                Some(format!("set its customer gateway's ike_id to {got}")),
            ),
            Failure::ProxyIdMismatch { ours, theirs } => (
                refused(notify::INVALID_ID_INFORMATION),
                format!("TS {ours}"),
                Some(format!("TS {theirs}")),
                Some("the proxy IDs differ: make the peer's local and remote subnets this tunnel's remote and local spd entries (or add an spd entry for the peer's)".into()),
            ),
            Failure::Notified(n) => {
                let s = match *n {
                    notify::NO_PROPOSAL_CHOSEN if phase1 => "the peer accepts none of our IKE proposals: ask for its phase-1 proposal and add it to ike_proposals",
                    notify::NO_PROPOSAL_CHOSEN => "the peer accepts none of our ESP proposals (or PFS group): ask for its phase-2 proposal and add it to esp_proposals",
                    notify::INVALID_ID_INFORMATION if phase1 => "the peer does not accept our identity: set local_id to what the peer expects",
                    notify::INVALID_ID_INFORMATION => "the peer refused our proxy IDs: its local and remote subnets differ from this tunnel's spd entries; make them mirror each other",
                    notify::INVALID_HASH_INFORMATION | notify::AUTHENTICATION_FAILED => "usually a different pre-shared key: set the same psk on both sides",
                    _ => "",
                };
                let ours = if phase1 {
                    format!("IKE {}", list_to_string(&self.cfg.ike_proposals))
                } else {
                    self.esp_offer(pair)
                };
                (Cause::PeerRefused(NotifyType(*n)), ours, None, (!s.is_empty()).then(|| s.to_owned()))
            }
            Failure::Malformed(why) => (
                Cause::BadResponse(why.clone()),
                if phase1 { format!("IKE {}", list_to_string(&self.cfg.ike_proposals)) } else { self.esp_offer(pair) },
                None,
                None,
            ),
        };
        self.explain(exch, peer, cause, ours, theirs, suggestion);
    }

    // ----- status --------------------------------------------------------------------------

    /// A snapshot for status displays.
    pub fn status(&self) -> TunnelStatus {
        let mut st = TunnelStatus::default();
        let shown = self.p1s.iter().rev().find(|p| p.up().is_some()).or(self.p1s.last());
        if let Some(p) = shown {
            let (spi_i, spi_r) = p.cookies();
            st.ike = Some(IkeStatus {
                established: p.up().is_some(),
                initiator: p.initiator,
                spi_i,
                spi_r,
                local: self.local,
                peer: self.remote,
                encap: self.floated,
                suite: p.up().map(|e| e.suite),
                rekey_at: p.rekey_at,
                expire_at: p.expire_at,
            });
        }
        for c in &self.children {
            st.children.push(ChildStatus {
                name: self.names.get(c.pair).cloned().unwrap_or_default(),
                spi_in: c.sa.spi_in,
                spi_out: c.sa.spi_out,
                esp: c.sa.suite,
                local_ts: vec![c.sa.local_ts],
                remote_ts: vec![c.sa.remote_ts],
                installed: !c.replaced,
                rekey_at: c.rekey_at,
                expire_at: c.expire_at,
            });
        }
        st
    }

    /// True when the session holds nothing.
    pub fn is_idle(&self) -> bool {
        self.p1s.is_empty() && self.children.is_empty() && self.qms.is_empty()
    }
}

/// When to rekey and when the SA ends: the configured margin before the (possibly shorter,
/// negotiated) lifetime, less a random part of `rand_time` so both sides do not rekey at once.
fn jittered(
    now: Instant,
    l: &Lifetime,
    negotiated: Duration,
    rng: &mut impl CryptoRngCore,
) -> (Option<Instant>, Instant) {
    let life = if negotiated.is_zero() {
        l.life_time
    } else {
        negotiated.min(l.life_time.max(negotiated))
    };
    let life = life.max(Duration::from_secs(1));
    let rekey = if l.rekey_time.is_zero() {
        None
    } else {
        let margin = l.life_time.saturating_sub(l.rekey_time).min(life / 2);
        let r = l.rand_time.min(margin).as_millis() as u64;
        let jitter = if r == 0 { 0 } else { rng.next_u64() % r };
        Some(now + life.saturating_sub(margin).saturating_sub(Duration::from_millis(jitter)))
    };
    (rekey, now + life)
}

//! The [`Endpoint`]: every IKE SA of this gateway, driven by datagrams, commands and time.
//!
//! The shape follows quinn-proto: the driver feeds inputs (`handle_datagram`, `handle_timeout`,
//! commands such as `initiate`) with the current time, then drains the outputs
//! (`poll_transmit`, `poll_event`) and sleeps until `poll_timeout`. Nothing in here reads a
//! clock, opens a socket or draws OS randomness: randomness comes from a ChaCha20 generator
//! seeded by the driver, so a seed and a sequence of inputs always give the same outputs.
//!
//! Exchanges (RFC 7296), in both roles:
//! - IKE_SA_INIT (§1.2) with COOKIE (§2.6) past [`EndpointConfig::cookie_threshold`] half-open
//!   SAs, INVALID_KE_PAYLOAD retries (§1.2), NAT detection (§2.23) and the move to port 4500;
//! - IKE_AUTH with pre-shared keys (§2.15), the first CHILD SA, traffic selector narrowing
//!   (§2.9), INITIAL_CONTACT (§2.4);
//! - CREATE_CHILD_SA (§1.3): new CHILD SAs, CHILD SA rekeys with optional PFS, IKE SA rekeys
//!   (§1.3.2, keys per §2.18), simultaneous rekeys resolved by nonces (§2.8.1);
//! - INFORMATIONAL (§1.4): liveness checks, Delete, notifications.
//!
//! Each IKE SA has a request window of one (§2.3): one outstanding request of ours,
//! retransmitted with exponential backoff (§2.1), later commands queued behind it; duplicate
//! requests from the peer are answered from the cached last response.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use rand_chacha::ChaCha20Rng;
use rand_core::{RngCore, SeedableRng};
use sha1::{Digest, Sha1};
use sha2::Sha256;

use crate::codec::{
    self, Delete, ExchangeType, Header, Id, Message, Notify, NotifyType, Payload, Proposal, flags,
    payload_type, protocol,
};
use crate::config::{DpdAction, EndpointConfig, Identity, Lifetime, TrafficSelector, TunnelConfig};
use crate::crypto::{self, DhSecret, IkeKeys};
use crate::error::Error;
use crate::event::{Cause, ChildKeys, DownReason, Event, Explanation, Transmit};
use crate::proposal::{DhGroup, EspProposal, EspSuite, IkeProposal, IkeSuite};

const NAT_T_PORT: u16 = 4500;
const AUTH_PSK: u8 = 2;
const NONCE_LEN: usize = 32;
/// Retransmission waits are capped (and a nonsensical backoff factor cannot panic).
const MAX_RETRANSMIT_WAIT: Duration = Duration::from_secs(3600);

/// A sans-IO IKEv2 endpoint holding many IKE SAs, keyed by their SPIs.
///
/// Deterministic: the same seed and the same inputs give the same transmits and events (hash
/// maps are only used for lookups; anything iterated is sorted first).
pub struct Endpoint {
    config: EndpointConfig,
    rng: ChaCha20Rng,
    tunnels: Vec<Option<Tunnel>>,
    names: HashMap<String, usize>,
    /// Tunnels by the peer's address (the unspecified address for "any peer").
    by_remote: HashMap<IpAddr, Vec<usize>>,
    /// IKE SAs by our own SPI (SPIi when we initiated the SA, SPIr otherwise).
    sas: HashMap<u64, IkeSa>,
    /// Half-open responder SAs by (peer, SPIi), to spot retransmitted IKE_SA_INIT requests.
    half_open: HashMap<(SocketAddr, u64), u64>,
    /// CHILD SAs by inbound SPI -> IKE SA SPI (SPIs being negotiated are reserved here too).
    child_index: HashMap<u32, u64>,
    timers: BTreeSet<(Instant, u64)>,
    cookie_secret: [u8; 32],
    transmits: VecDeque<Transmit>,
    events: VecDeque<Event>,
}

struct Tunnel {
    cfg: TunnelConfig,
    /// The current IKE SA (ours or the peer's, established or being set up).
    ike: Option<u64>,
    /// CHILD SA configurations asked for (acquire) before the IKE SA was up.
    wanted: Vec<usize>,
    /// Every IKE SA of this tunnel (our SPIs), whatever its state.
    sas: Vec<u64>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Initiator: IKE_SA_INIT sent.
    InitSent,
    /// Initiator: IKE_AUTH sent.
    AuthSent,
    /// Responder: IKE_SA_INIT answered, waiting for IKE_AUTH.
    HalfOpen,
    Established,
    /// Replaced by a rekeyed IKE SA; waiting for (or sending) its Delete.
    Rekeyed,
    /// Being deleted.
    Deleting,
}

struct InitData {
    dh: Option<DhSecret>,
    group: DhGroup,
    ni: Vec<u8>,
    nr: Vec<u8>,
    /// Our IKE_SA_INIT request (initiator) or the peer's (responder).
    msg1: Vec<u8>,
    /// The IKE_SA_INIT response.
    msg2: Vec<u8>,
    cookie: Option<Vec<u8>>,
    tried_groups: Vec<DhGroup>,
    /// Initiator: the CHILD SA configuration for IKE_AUTH and its reserved inbound SPI.
    first_child: Option<(usize, u32)>,
    /// Responder: tunnels this SA may belong to (matched by address), refined by IDi.
    candidates: Vec<usize>,
    /// Keep re-initiating on timeouts (a DPD restart).
    persistent: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ChildState {
    Installed,
    /// A rekey of ours is outstanding.
    Rekeying,
    /// Replaced; its Delete is queued or outstanding.
    Rekeyed,
    Deleting,
}

struct Child {
    cfg: usize,
    spi_in: u32,
    spi_out: u32,
    suite: EspSuite,
    local_ts: Vec<TrafficSelector>,
    remote_ts: Vec<TrafficSelector>,
    rekey_at: Option<Instant>,
    expire_at: Instant,
    state: ChildState,
    /// The peer rekeyed this SA while our own rekey was outstanding: its nonces and the SA
    /// it created (inbound SPI), for §2.8.1.
    collision: Option<(Vec<u8>, Vec<u8>, u32)>,
}

enum ReqKind {
    Init,
    Auth,
    CreateChild {
        cfg: usize,
        spi_in: u32,
        nonce: Vec<u8>,
        dh: Option<DhSecret>,
        rekey_of: Option<u32>,
        offered: Vec<EspProposal>,
    },
    RekeyIke {
        new_spi: u64,
        nonce: Vec<u8>,
        dh: DhSecret,
    },
    Dpd,
    DeleteChildren(Vec<u32>),
    DeleteIke,
}

struct Request {
    msg_id: u32,
    exchange: ExchangeType,
    data: Vec<u8>,
    tries: u32,
    first_sent: Instant,
    next_retx: Instant,
    kind: ReqKind,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Task {
    CreateChild(usize),
    RekeyChild(u32),
    RekeyIke,
    DeleteChildren(Vec<u32>),
    /// Tell the peer about CHILD SAs already removed here (expired).
    InformDeleted(Vec<u32>),
    DeleteIke,
    Dpd,
}

struct IkeSa {
    tunnel: Option<usize>,
    /// We are the original initiator of this IKE SA (it decides the key directions).
    initiator: bool,
    spi_i: u64,
    spi_r: u64,
    local: SocketAddr,
    remote: SocketAddr,
    nat_t: bool,
    behind_nat: bool,
    state: State,
    suite: Option<IkeSuite>,
    keys: Option<Box<IkeKeys>>,
    init: Option<Box<InitData>>,
    next_req_id: u32,
    peer_next_req: u32,
    cached_resp: Option<(u32, Vec<u8>)>,
    out: Option<Request>,
    queue: VecDeque<Task>,
    children: Vec<Child>,
    created: Instant,
    last_rx: Instant,
    rekey_at: Option<Instant>,
    expire_at: Option<Instant>,
    keepalive_at: Option<Instant>,
    iv_counter: u64,
    /// min(Ni, Nr) of the exchange that created this SA, for duplicate resolution.
    nonce_key: Vec<u8>,
    /// Our IKE rekey was outstanding when the peer's rekey arrived: (its nonces, new SA spi).
    ike_collision: Option<(Vec<u8>, Vec<u8>, u64)>,
    established_at: Option<Instant>,
    /// The SA is finished and is removed at this time (it lingers to answer retransmissions).
    linger_until: Option<Instant>,
    timer: Option<Instant>,
}

impl IkeSa {
    fn our_spi(&self) -> u64 {
        if self.initiator { self.spi_i } else { self.spi_r }
    }
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Counts only: SAs hold keys.
        f.debug_struct("Endpoint")
            .field("tunnels", &self.names.len())
            .field("ike_sas", &self.sas.len())
            .field("half_open", &self.half_open.len())
            .field("child_sas", &self.child_index.len())
            .finish()
    }
}

impl Endpoint {
    /// An endpoint with no tunnels. `rng_seed` seeds the CSPRNG used for SPIs, nonces and
    /// key-exchange secrets: the driver passes 32 bytes from the OS (getrandom), tests pass a
    /// constant.
    pub fn new(config: EndpointConfig, rng_seed: [u8; 32]) -> Endpoint {
        let mut rng = ChaCha20Rng::from_seed(rng_seed);
        let mut cookie_secret = [0u8; 32];
        rng.fill_bytes(&mut cookie_secret);
        Endpoint {
            config,
            rng,
            tunnels: Vec::new(),
            names: HashMap::new(),
            by_remote: HashMap::new(),
            sas: HashMap::new(),
            half_open: HashMap::new(),
            child_index: HashMap::new(),
            timers: BTreeSet::new(),
            cookie_secret,
            transmits: VecDeque::new(),
            events: VecDeque::new(),
        }
    }

    /// The endpoint-wide settings.
    pub fn config(&self) -> &EndpointConfig {
        &self.config
    }

    /// Adds a tunnel. Nothing is sent until [`Endpoint::initiate`] or [`Endpoint::acquire`],
    /// or until the peer initiates.
    pub fn add_tunnel(&mut self, cfg: TunnelConfig) -> Result<(), Error> {
        cfg.validate()?;
        if self.names.contains_key(&cfg.name) {
            return Err(Error::DuplicateTunnel(cfg.name));
        }
        self.names.insert(cfg.name.clone(), self.tunnels.len());
        self.by_remote.entry(cfg.remote.ip()).or_default().push(self.tunnels.len());
        self.tunnels.push(Some(Tunnel { cfg, ike: None, wanted: Vec::new(), sas: Vec::new() }));
        Ok(())
    }

    /// Removes a tunnel, deleting its SAs (a Delete is sent to the peer, best effort;
    /// `ChildSaDown`/`IkeSaDown` events follow at once).
    pub fn remove_tunnel(&mut self, name: &str, now: Instant) -> Result<(), Error> {
        let t = self.tunnel_index(name)?;
        let mut spis: Vec<u64> = self.tunnel_ref(t).map(|tun| tun.sas.clone()).unwrap_or_default();
        // Hash map order is random; events must not be.
        spis.sort_unstable();
        for spi in spis {
            if let Some(mut sa) = self.sas.remove(&spi) {
                if sa.keys.is_some() && matches!(sa.state, State::Established | State::Rekeyed) {
                    // Best effort, not retransmitted: the tunnel is going away now.
                    let del = [Payload::Delete(Delete { protocol: protocol::IKE, spis: vec![] })];
                    let id = sa.next_req_id;
                    let data = self.seal(&mut sa, ExchangeType::INFORMATIONAL, false, id, &del);
                    self.send(&sa, data);
                }
                self.destroy(sa, DownReason::Terminated, now);
            }
        }
        if let Some(tun) = self.tunnels[t].take()
            && let Some(v) = self.by_remote.get_mut(&tun.cfg.remote.ip())
        {
            v.retain(|x| *x != t);
        }
        self.names.remove(name);
        Ok(())
    }

    /// Starts IKE_SA_INIT for a tunnel unless it already has an IKE SA (established or being
    /// set up).
    pub fn initiate(&mut self, tunnel: &str, now: Instant) -> Result<(), Error> {
        let t = self.tunnel_index(tunnel)?;
        self.initiate_idx(t, now, false);
        Ok(())
    }

    /// Deletes the tunnel's IKE SA and its CHILD SAs (INFORMATIONAL with Delete, §1.4.1). The
    /// down events come when the peer answers (or the exchange times out).
    pub fn terminate(&mut self, tunnel: &str, now: Instant) -> Result<(), Error> {
        let t = self.tunnel_index(tunnel)?;
        let Some(spi) = self.tunnel_ref(t).and_then(|t| t.ike) else { return Ok(()) };
        let Some(mut sa) = self.sas.remove(&spi) else { return Ok(()) };
        if sa.state == State::Established {
            sa.queue.clear();
            sa.queue.push_back(Task::DeleteIke);
            self.pump(&mut sa, now);
            self.put(sa, now);
        } else {
            self.destroy(sa, DownReason::Terminated, now);
        }
        Ok(())
    }

    /// Rekeys the CHILD SA whose inbound SPI is `child_spi` (CREATE_CHILD_SA with REKEY_SA,
    /// §1.3.3), with PFS if its ESP proposals name a group.
    pub fn rekey_child(&mut self, tunnel: &str, child_spi: u32, now: Instant) -> Result<(), Error> {
        self.tunnel_index(tunnel)?;
        self.child_soft_expired(child_spi, now)
    }

    /// Rekeys the tunnel's IKE SA (CREATE_CHILD_SA, §1.3.2).
    pub fn rekey_ike(&mut self, tunnel: &str, now: Instant) -> Result<(), Error> {
        let t = self.tunnel_index(tunnel)?;
        let spi = self.established(t, tunnel)?;
        self.enqueue(spi, Task::RekeyIke, now);
        Ok(())
    }

    /// The dataplane saw traffic for the named CHILD SA of a tunnel that has no SA: bring the
    /// IKE SA up if needed and create that CHILD SA. Repeated calls while it is being set up
    /// are ignored.
    pub fn acquire(&mut self, tunnel: &str, child: &str, now: Instant) -> Result<(), Error> {
        let t = self.tunnel_index(tunnel)?;
        let cfg = self
            .tunnel_ref(t)
            .and_then(|tun| tun.cfg.children.iter().position(|c| c.name == child))
            .ok_or_else(|| Error::InvalidConfig {
                tunnel: tunnel.to_owned(),
                why: format!("no CHILD SA named `{child}`"),
            })?;
        match self.tunnel_ref(t).and_then(|tun| tun.ike) {
            None => {
                if let Some(tun) = self.tunnel_mut(t)
                    && cfg != 0
                    && !tun.wanted.contains(&cfg)
                {
                    tun.wanted.push(cfg);
                }
                self.initiate_idx(t, now, false);
            }
            Some(spi) => {
                let Some(sa) = self.sas.get(&spi) else { return Ok(()) };
                let busy = sa.children.iter().any(|c| c.cfg == cfg)
                    || sa.queue.contains(&Task::CreateChild(cfg))
                    || matches!(&sa.out, Some(Request { kind: ReqKind::CreateChild { cfg: c, .. }, .. }) if *c == cfg)
                    || sa
                        .init
                        .as_ref()
                        .is_some_and(|i| i.first_child.is_some_and(|(c, _)| c == cfg));
                if busy {
                    return Ok(());
                }
                if sa.state == State::Established {
                    self.enqueue(spi, Task::CreateChild(cfg), now);
                } else if let Some(tun) = self.tunnel_mut(t)
                    && !tun.wanted.contains(&cfg)
                {
                    tun.wanted.push(cfg);
                }
            }
        }
        Ok(())
    }

    /// The dataplane reports the soft (byte or packet) lifetime of the CHILD SA with inbound
    /// SPI `spi` expired: rekey it.
    pub fn child_soft_expired(&mut self, spi: u32, now: Instant) -> Result<(), Error> {
        let ike = *self.child_index.get(&spi).ok_or(Error::UnknownChild(spi))?;
        let ok = self.sas.get(&ike).is_some_and(|sa| {
            sa.children.iter().any(|c| c.spi_in == spi && c.state == ChildState::Installed)
        });
        if !ok {
            return Err(Error::UnknownChild(spi));
        }
        self.enqueue(ike, Task::RekeyChild(spi), now);
        Ok(())
    }

    /// The dataplane decrypted traffic on the CHILD SA with inbound SPI `spi`: the peer is
    /// alive, so the liveness check (DPD) waits, as strongSwan's does, for `dpd.delay` without
    /// any inbound traffic. Unknown SPIs are ignored. Cheap enough to call once per second per
    /// SA.
    pub fn traffic_seen(&mut self, spi: u32, now: Instant) {
        let Some(&ike) = self.child_index.get(&spi) else { return };
        let Some(mut sa) = self.sas.remove(&ike) else { return };
        if sa.state == State::Established && now > sa.last_rx {
            sa.last_rx = now;
        }
        self.put(sa, now);
    }

    /// Feeds one received IKE message (without the non-ESP marker) that arrived on `local`
    /// from `remote`. Garbage is dropped silently (after, where the RFC asks for it, an error
    /// notify); it never panics.
    pub fn handle_datagram(
        &mut self,
        now: Instant,
        local: SocketAddr,
        remote: SocketAddr,
        data: &[u8],
    ) {
        // A NAT-T keepalive (RFC 3948 §2.3) or a bare marker carries nothing for us.
        if data.len() < codec::HEADER_LEN {
            return;
        }
        let msg = match codec::parse_message(data) {
            Ok(m) => m,
            Err(Error::InvalidMajorVersion(_)) => {
                if let Ok(h) = parse_header_loose(data)
                    && !h.is_response()
                {
                    self.answer_plain(&h, local, remote, NotifyType::INVALID_MAJOR_VERSION, vec![]);
                }
                return;
            }
            Err(_) => return,
        };
        let h = msg.header;
        if h.exchange == ExchangeType::IKE_SA_INIT && !h.is_response() && h.spi_r == 0 {
            self.on_init_request(now, local, remote, data, msg);
            return;
        }
        let ours = if h.from_initiator() { h.spi_r } else { h.spi_i };
        let Some(mut sa) = self.sas.remove(&ours) else { return };
        let peer_spi = if h.from_initiator() { h.spi_i } else { h.spi_r };
        let peer_ok = if sa.initiator {
            sa.spi_r == peer_spi || sa.state == State::InitSent
        } else {
            sa.spi_i == peer_spi
        };
        // The I flag must say the message is from the peer's role.
        if !peer_ok || h.from_initiator() == sa.initiator {
            self.put(sa, now);
            return;
        }
        if h.is_response() {
            self.on_response(&mut sa, now, local, remote, data, msg);
        } else {
            self.on_request(&mut sa, now, local, remote, data, msg);
        }
        self.put(sa, now);
    }

    /// Runs every timer due at or before `now`: retransmissions, liveness checks, rekeys,
    /// expiries, keepalives.
    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some(&(at, spi)) = self.timers.first() {
            if at > now {
                break;
            }
            self.timers.remove(&(at, spi));
            let Some(mut sa) = self.sas.remove(&spi) else { continue };
            sa.timer = None;
            self.on_timer(&mut sa, now);
            self.put(sa, now);
        }
    }

    /// The next datagram to send, if any.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// When [`Endpoint::handle_timeout`] must next be called, if ever.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.first().map(|(t, _)| *t)
    }

    /// The next event, if any.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// Number of IKE SAs held (any state).
    pub fn ike_sa_count(&self) -> usize {
        self.sas.len()
    }

    /// Number of half-open responder IKE SAs (the COOKIE threshold counts these).
    pub fn half_open_count(&self) -> usize {
        self.half_open.len()
    }

    /// A snapshot of a tunnel's SAs for status displays.
    pub fn status(&self, tunnel: &str) -> Result<TunnelStatus, Error> {
        let t = self.tunnel_index(tunnel)?;
        let mut st = TunnelStatus::default();
        if let Some(sa) = self.tunnel_ref(t).and_then(|tun| tun.ike).and_then(|s| self.sas.get(&s))
        {
            st.ike = Some(IkeStatus {
                established: sa.state == State::Established,
                initiator: sa.initiator,
                spi_i: sa.spi_i,
                spi_r: sa.spi_r,
                local: sa.local,
                peer: sa.remote,
                encap: sa.nat_t,
                suite: sa.suite,
            });
            let cfg = self.tunnel_ref(t).map(|t| &t.cfg);
            for c in &sa.children {
                st.children.push(ChildStatus {
                    name: cfg
                        .and_then(|cfg| cfg.children.get(c.cfg))
                        .map(|c| c.name.clone())
                        .unwrap_or_default(),
                    spi_in: c.spi_in,
                    spi_out: c.spi_out,
                    esp: c.suite,
                    local_ts: c.local_ts.clone(),
                    remote_ts: c.remote_ts.clone(),
                    installed: matches!(c.state, ChildState::Installed | ChildState::Rekeying),
                });
            }
        }
        Ok(st)
    }

    // ----- tunnels -------------------------------------------------------------------------

    fn tunnel_index(&self, name: &str) -> Result<usize, Error> {
        self.names.get(name).copied().ok_or_else(|| Error::UnknownTunnel(name.to_owned()))
    }

    fn tunnel_ref(&self, t: usize) -> Option<&Tunnel> {
        self.tunnels.get(t).and_then(|t| t.as_ref())
    }

    fn tunnel_mut(&mut self, t: usize) -> Option<&mut Tunnel> {
        self.tunnels.get_mut(t).and_then(|t| t.as_mut())
    }

    fn established(&self, t: usize, name: &str) -> Result<u64, Error> {
        self.tunnel_ref(t)
            .and_then(|tun| tun.ike)
            .filter(|s| self.sas.get(s).is_some_and(|sa| sa.state == State::Established))
            .ok_or_else(|| Error::NotEstablished(name.to_owned()))
    }

    fn tunnel_name(&self, t: Option<usize>) -> String {
        t.and_then(|t| self.tunnel_ref(t)).map(|t| t.cfg.name.clone()).unwrap_or_default()
    }

    fn child_name(&self, t: Option<usize>, cfg: usize) -> String {
        t.and_then(|t| self.tunnel_ref(t))
            .and_then(|t| t.cfg.children.get(cfg))
            .map(|c| c.name.clone())
            .unwrap_or_default()
    }

    // ----- randomness ----------------------------------------------------------------------

    fn new_spi64(&mut self) -> u64 {
        loop {
            let v = self.rng.next_u64();
            if v != 0 && !self.sas.contains_key(&v) {
                return v;
            }
        }
    }

    fn new_child_spi(&mut self, ike: u64) -> u32 {
        loop {
            let v = self.rng.next_u32();
            // SPIs 1..=255 are reserved by IANA (RFC 4303 §2.1).
            if v > 255 && !self.child_index.contains_key(&v) {
                self.child_index.insert(v, ike);
                return v;
            }
        }
    }

    fn nonce(&mut self) -> Vec<u8> {
        let mut n = vec![0u8; NONCE_LEN];
        self.rng.fill_bytes(&mut n);
        n
    }

    fn jittered(&mut self, now: Instant, l: &Lifetime) -> (Option<Instant>, Instant) {
        let rekey = if l.rekey_time.is_zero() {
            None
        } else {
            let r = l.rand_time.as_millis() as u64;
            let jitter = if r == 0 { 0 } else { self.rng.next_u64() % r };
            Some(now + l.rekey_time.saturating_sub(Duration::from_millis(jitter)))
        };
        (rekey, now + l.life_time.max(l.rekey_time))
    }

    // ----- sending -------------------------------------------------------------------------

    fn send(&mut self, sa: &IkeSa, data: Vec<u8>) {
        self.transmits.push_back(Transmit {
            local: sa.local,
            remote: sa.remote,
            data,
            nat_t: sa.nat_t,
        });
    }

    fn header(sa: &IkeSa, exchange: ExchangeType, response: bool, msg_id: u32) -> Header {
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
    fn seal(
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
    fn open(sa: &IkeSa, data: &[u8], msg: &Message) -> Result<Vec<Payload>, Error> {
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

    fn send_request(
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

    fn respond(
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
    fn answer_plain(
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

    fn fail(&mut self, e: Explanation) {
        self.events.push_back(Event::NegotiationFailed(e));
    }

    // ----- SA bookkeeping ------------------------------------------------------------------

    /// Puts an SA back into the table and re-arms its timer; removes it when it is done.
    fn put(&mut self, mut sa: IkeSa, now: Instant) {
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

    fn next_deadline(&self, sa: &IkeSa) -> Option<Instant> {
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
    fn dpd_deadline(&self, sa: &IkeSa) -> Option<Instant> {
        let out = sa.out.as_ref().filter(|o| matches!(o.kind, ReqKind::Dpd))?;
        let t = sa.tunnel.and_then(|t| self.tunnel_ref(t))?;
        Some(out.first_sent + t.cfg.dpd.timeout)
    }

    fn unlist(&mut self, sa: &IkeSa) {
        let spi = sa.our_spi();
        if let Some(tun) = sa.tunnel.and_then(|t| self.tunnel_mut(t)) {
            tun.sas.retain(|s| *s != spi);
        }
    }

    /// Drops a finished SA: its timer, indexes and any CHILD SAs still attached.
    fn remove_finished(&mut self, sa: IkeSa) {
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
    fn destroy(&mut self, sa: IkeSa, reason: DownReason, _now: Instant) {
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

    fn release_pending_spis(&mut self, sa: &IkeSa) {
        if let Some(Request { kind: ReqKind::CreateChild { spi_in, .. }, .. }) = &sa.out {
            self.child_index.remove(spi_in);
        }
        if let Some((_, spi)) = sa.init.as_ref().and_then(|i| i.first_child) {
            self.child_index.remove(&spi);
        }
    }

    fn enqueue(&mut self, spi: u64, task: Task, now: Instant) {
        let Some(mut sa) = self.sas.remove(&spi) else { return };
        if !sa.queue.contains(&task) {
            sa.queue.push_back(task);
        }
        self.pump(&mut sa, now);
        self.put(sa, now);
    }

    /// Starts the next queued exchange when the window is free.
    fn pump(&mut self, sa: &mut IkeSa, now: Instant) {
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

    // ----- IKE_SA_INIT, initiator ----------------------------------------------------------

    fn initiate_idx(&mut self, t: usize, now: Instant, persistent: bool) {
        let Some(tun) = self.tunnel_ref(t) else { return };
        if tun.ike.is_some() {
            return;
        }
        let cfg = &tun.cfg;
        let group = cfg.ike_proposals[0].dh[0];
        let (local, remote) = (cfg.local, cfg.remote);
        let spi_i = self.new_spi64();
        let child_spi = self.new_child_spi(spi_i);
        let dh = DhSecret::generate(group, &mut self.rng);
        let ni = self.nonce();
        let mut sa = IkeSa {
            tunnel: Some(t),
            initiator: true,
            spi_i,
            spi_r: 0,
            local,
            remote,
            nat_t: false,
            behind_nat: false,
            state: State::InitSent,
            suite: None,
            keys: None,
            init: Some(Box::new(InitData {
                dh: Some(dh),
                group,
                ni,
                nr: Vec::new(),
                msg1: Vec::new(),
                msg2: Vec::new(),
                cookie: None,
                tried_groups: vec![group],
                first_child: Some((0, child_spi)),
                candidates: Vec::new(),
                persistent,
            })),
            next_req_id: 0,
            peer_next_req: 0,
            cached_resp: None,
            out: None,
            queue: VecDeque::new(),
            children: Vec::new(),
            created: now,
            last_rx: now,
            rekey_at: None,
            expire_at: None,
            keepalive_at: None,
            iv_counter: 0,
            nonce_key: Vec::new(),
            ike_collision: None,
            established_at: None,
            linger_until: None,
            timer: None,
        };
        if let Some(tun) = self.tunnel_mut(t) {
            tun.ike = Some(spi_i);
        }
        self.send_init(&mut sa, now);
        self.put(sa, now);
    }

    fn send_init(&mut self, sa: &mut IkeSa, now: Instant) {
        let Some(t) = sa.tunnel.and_then(|t| self.tunnel_ref(t)) else { return };
        let force = t.cfg.force_nat_t;
        let proposals: Vec<Proposal> = t
            .cfg
            .ike_proposals
            .iter()
            .enumerate()
            .map(|(i, p)| Proposal::from_ike(i as u8 + 1, &[], p))
            .collect();
        let Some(init) = sa.init.as_mut() else { return };
        let Some(dh) = init.dh.as_ref() else { return };
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
        let Some(init) = sa.init.as_mut() else { return };
        init.msg1 = data.clone();
        sa.next_req_id = 1;
        sa.state = State::InitSent;
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

    fn on_init_response(
        &mut self,
        sa: &mut IkeSa,
        now: Instant,
        msg: Message,
        data: &[u8],
    ) -> Option<DownReason> {
        let t = sa.tunnel?;
        let cfg = self.tunnel_ref(t)?.cfg.clone();
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
            let init = sa.init.as_mut()?;
            if init.cookie.is_some() && init.cookie.as_deref() == Some(&c.data[..]) {
                // The same cookie again: do not loop.
                return None;
            }
            init.cookie = Some(c.data.clone());
            self.send_init(sa, now);
            return None;
        }
        if let Some(n) = notifies.iter().find(|n| n.ty == NotifyType::INVALID_KE_PAYLOAD) {
            let asked = (n.data.len() == 2).then(|| u16::from_be_bytes([n.data[0], n.data[1]]));
            let group = asked.and_then(DhGroup::from_id);
            let allowed = group.filter(|g| cfg.ike_proposals.iter().any(|p| p.dh.contains(g)));
            let init = sa.init.as_mut()?;
            match allowed {
                Some(g) if !init.tried_groups.contains(&g) => {
                    init.tried_groups.push(g);
                    init.group = g;
                    init.dh = Some(DhSecret::generate(g, &mut self.rng));
                    self.send_init(sa, now);
                    return None;
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
                    return Some(DownReason::Terminated);
                }
            }
        }
        if let Some(n) = notifies.iter().find(|n| n.ty.is_error()) {
            let suggestion = (n.ty == NotifyType::NO_PROPOSAL_CHOSEN).then(|| {
                "the peer accepts none of our IKE proposals; compare them with the peer's ike proposals (e.g. add the peer's key exchange group)".to_owned()
            });
            self.fail(explain(Cause::PeerRefused(n.ty), None, suggestion));
            return Some(DownReason::Terminated);
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
            return Some(DownReason::Terminated);
        };
        let chosen = props.first().map(|p| p.to_ike());
        let suite = chosen.as_ref().and_then(|c| {
            (props.len() == 1 && c.encr.len() == 1 && c.prf.len() == 1 && c.dh.len() == 1)
                .then(|| IkeSuite { encr: c.encr[0], prf: c.prf[0], dh: c.dh[0] })
        });
        let Some(suite) = suite.filter(|s| cfg.ike_proposals.iter().any(|p| p.allows(s))) else {
            let theirs = props.iter().map(|p| p.describe()).collect::<Vec<_>>().join(",");
            self.fail(explain(
                Cause::BadResponse("the peer chose a proposal we did not offer".into()),
                Some(theirs),
                None,
            ));
            return Some(DownReason::Terminated);
        };
        let init = sa.init.as_mut()?;
        let dh = init.dh.as_ref()?;
        if suite.dh.id() != group || dh.group() != suite.dh {
            self.fail(explain(
                Cause::BadResponse("key exchange group differs from the chosen proposal".into()),
                Some(suite.to_string()),
                None,
            ));
            return Some(DownReason::Terminated);
        }
        let shared = match dh.shared(ke) {
            Ok(s) => s,
            Err(e) => {
                self.fail(explain(Cause::BadResponse(e.to_string()), None, None));
                return Some(DownReason::Terminated);
            }
        };
        sa.spi_r = msg.header.spi_r;
        init.nr = nr.clone();
        init.msg2 = data.to_vec();
        init.dh = None;
        let seed = crypto::skeyseed(suite.prf, &init.ni, nr, &shared);
        sa.keys = Some(Box::new(IkeKeys::derive(
            suite.encr, suite.prf, &seed, &init.ni, nr, sa.spi_i, sa.spi_r,
        )));
        sa.suite = Some(suite);
        sa.nonce_key = init.ni.clone().min(nr.clone());
        // NAT detection (§2.23).
        let (peer_nat, we_nat) = nat_check(&notifies, sa.spi_i, sa.spi_r, sa.remote, sa.local);
        sa.behind_nat = we_nat;
        if peer_nat || we_nat || cfg.force_nat_t {
            sa.nat_t = true;
            sa.local.set_port(NAT_T_PORT);
            sa.remote.set_port(NAT_T_PORT);
        }
        sa.out = None;
        self.send_auth(sa, &cfg, now);
        None
    }

    fn send_auth(&mut self, sa: &mut IkeSa, cfg: &TunnelConfig, now: Instant) {
        let Some(keys) = sa.keys.as_ref() else { return };
        let Some(init) = sa.init.as_ref() else { return };
        let (idt, idd) = cfg.local_id.to_wire(cfg.local.ip());
        let idi = Id { ty: idt, data: idd };
        let auth = crypto::psk_auth(
            keys.prf,
            cfg.psk.expose(),
            &init.msg1,
            &init.nr,
            &keys.sk_pi,
            &idi.body(),
        );
        let mut p = vec![Payload::IdI(idi)];
        // INITIAL_CONTACT when no other IKE SA with this peer exists (§2.4).
        let others = sa
            .tunnel
            .is_some_and(|t| !self.tunnel_sas(t, sa.our_spi(), State::Established).is_empty());
        if !others {
            p.push(Payload::Notify(Notify::new(NotifyType::INITIAL_CONTACT, vec![])));
        }
        if !matches!(cfg.remote_id, Identity::Any) {
            let (t, d) = cfg.remote_id.to_wire(cfg.remote.ip());
            p.push(Payload::IdR(Id { ty: t, data: d }));
        }
        p.push(Payload::Auth { method: AUTH_PSK, data: auth });
        if let Some((c, spi)) = init.first_child {
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
        sa.state = State::AuthSent;
        self.send_request(sa, ExchangeType::IKE_AUTH, &p, ReqKind::Auth, now);
    }

    // ----- IKE_SA_INIT, responder ----------------------------------------------------------

    fn candidates(&self, local: SocketAddr, remote: SocketAddr) -> Vec<usize> {
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
                    t.cfg.local.ip() == local.ip() || t.cfg.local.ip().is_unspecified()
                })
            })
            .collect()
    }

    /// Our SPIs of the tunnel's other IKE SAs that are in `state`, in SPI order.
    fn tunnel_sas(&self, t: usize, except: u64, state: State) -> Vec<u64> {
        let mut v: Vec<u64> = self
            .tunnel_ref(t)
            .map(|tun| tun.sas.iter().copied().filter(|s| *s != except).collect())
            .unwrap_or_default();
        v.retain(|s| self.sas.get(s).is_some_and(|o| o.state == state));
        v.sort_unstable();
        v
    }

    fn cookie_for(&self, ni: &[u8], remote: SocketAddr, spi_i: u64) -> Vec<u8> {
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

    fn on_init_request(
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
        let cands = self.candidates(local, remote);
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
        let keys = IkeKeys::derive(suite.encr, suite.prf, &seed, ni, &nr, h.spi_i, spi_r);
        let force = cands.iter().any(|&c| self.tunnel_ref(c).is_some_and(|t| t.cfg.force_nat_t));
        let (peer_nat, we_nat) = nat_check(&notifies, h.spi_i, 0, remote, local);
        let mut sa = IkeSa {
            tunnel: None,
            initiator: false,
            spi_i: h.spi_i,
            spi_r,
            local,
            remote,
            nat_t: local.port() == NAT_T_PORT,
            behind_nat: we_nat,
            state: State::HalfOpen,
            suite: Some(suite),
            keys: Some(Box::new(keys)),
            init: Some(Box::new(InitData {
                dh: None,
                group: suite.dh,
                ni: ni.clone(),
                nr: nr.clone(),
                msg1: data.to_vec(),
                msg2: Vec::new(),
                cookie: None,
                tried_groups: Vec::new(),
                first_child: None,
                candidates: cands.clone(),
                persistent: false,
            })),
            next_req_id: 0,
            peer_next_req: 1,
            cached_resp: None,
            out: None,
            queue: VecDeque::new(),
            children: Vec::new(),
            created: now,
            last_rx: now,
            rekey_at: None,
            expire_at: None,
            keepalive_at: None,
            iv_counter: 0,
            nonce_key: ni.clone().min(nr.clone()),
            ike_collision: None,
            established_at: None,
            linger_until: None,
            timer: None,
        };
        let _ = t;
        let mut src = nat_hash(h.spi_i, spi_r, local);
        if force {
            src = vec![0; 20];
            self.rng.fill_bytes(&mut src);
        }
        if peer_nat || we_nat || force {
            // The initiator moves to 4500 for IKE_AUTH; so do we (on its next message).
            sa.behind_nat = we_nat;
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
        if let Some(init) = sa.init.as_mut() {
            init.msg2 = resp.clone();
        }
        self.send(&sa, resp.clone());
        sa.cached_resp = Some((0, resp));
        self.half_open.insert((remote, h.spi_i), spi_r);
        self.put(sa, now);
    }

    // ----- requests from the peer on an existing SA ---------------------------------------

    fn on_request(
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

    fn on_auth_request(&mut self, sa: &mut IkeSa, now: Instant, id: u32, payloads: Vec<Payload>) {
        let Some(keys) = sa.keys.as_ref() else { return };
        let Some(init) = sa.init.as_ref() else { return };
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
            let n = [Payload::Notify(Notify::new(NotifyType::INVALID_SYNTAX, vec![]))];
            self.respond(sa, ExchangeType::IKE_AUTH, id, &n);
            sa.state = State::Deleting;
            return;
        };
        let peer_id = Identity::from_wire(idi.ty, &idi.data);
        let our_id = idr.as_ref().and_then(|i| Identity::from_wire(i.ty, &i.data));
        let suite = sa.suite;
        let tunnel = init.candidates.iter().copied().find(|&c| {
            self.tunnel_ref(c).is_some_and(|t| {
                peer_id.as_ref().is_some_and(|p| t.cfg.remote_id.matches(p))
                    && our_id
                        .as_ref()
                        .is_none_or(|o| t.cfg.local_id.matches(o) || matches!(o, Identity::Any))
                    && suite.is_some_and(|s| t.cfg.ike_proposals.iter().any(|p| p.allows(&s)))
            })
        });
        let peer_id_s = peer_id
            .as_ref()
            .map(|p| p.to_string())
            .unwrap_or_else(|| format!("ID type {}", idi.ty));
        let fallback = init.candidates.first().copied();
        let Some(t) = tunnel else {
            let n = [Payload::Notify(Notify::new(NotifyType::AUTHENTICATION_FAILED, vec![]))];
            self.respond(sa, ExchangeType::IKE_AUTH, id, &n);
            sa.state = State::Deleting;
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
                    "no tunnel accepts the identity {peer_id_s}; set remote_id to it"
                )),
            });
            return;
        };
        let Some(cfg) = self.tunnel_ref(t).map(|t| t.cfg.clone()) else { return };
        let expect = crypto::psk_auth(
            keys.prf,
            cfg.psk.expose(),
            &init.msg1,
            &init.nr,
            &keys.sk_pi,
            &idi.body(),
        );
        if method != AUTH_PSK || !crypto::ct_eq(&expect, &auth) {
            let n = [Payload::Notify(Notify::new(NotifyType::AUTHENTICATION_FAILED, vec![]))];
            self.respond(sa, ExchangeType::IKE_AUTH, id, &n);
            sa.state = State::Deleting;
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
            &init.msg2,
            &init.ni,
            &keys.sk_pr,
            &our_idr.body(),
        );
        let (ni, nr) = (init.ni.clone(), init.nr.clone());
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
            &ni,
            &nr,
            None,
            None,
            ExchangeType::IKE_AUTH,
            now,
        );
        resp.extend(child.0);
        self.respond(sa, ExchangeType::IKE_AUTH, id, &resp);
        self.half_open.retain(|_, v| *v != sa.spi_r);
        sa.init = None;
        self.establish(sa, t, now, initial_contact);
        if let Some(ev) = child.1 {
            self.events.push_back(ev);
        }
    }

    /// Marks an SA established: timers, the tunnel's current SA, events, duplicate checks.
    fn establish(&mut self, sa: &mut IkeSa, t: usize, now: Instant, initial_contact: bool) {
        sa.state = State::Established;
        sa.last_rx = now;
        let Some(cfg) = self.tunnel_ref(t).map(|t| t.cfg.clone()) else { return };
        let (rekey, expire) = self.jittered(now, &cfg.ike_lifetime);
        sa.rekey_at = rekey;
        sa.expire_at = Some(expire);
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
            let stale: Vec<u64> = [State::Established, State::Rekeyed, State::Deleting]
                .into_iter()
                .flat_map(|state| self.tunnel_sas(t, mine, state))
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
            .tunnel_sas(t, mine, State::Established)
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
                sa.state = State::Rekeyed;
                if sa.initiator {
                    sa.queue.push_back(Task::DeleteIke);
                }
            } else if let Some(mut o) = self.sas.remove(&loser) {
                o.state = State::Rekeyed;
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
            suite: sa.suite.unwrap_or(IkeSuite {
                encr: crate::proposal::Encr::Aes256Gcm16,
                prf: crate::proposal::Prf::HmacSha256,
                dh: DhGroup::Curve25519,
            }),
            encap: sa.nat_t,
            rekeyed: false,
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

    /// Negotiates a CHILD SA as responder (IKE_AUTH or CREATE_CHILD_SA); returns the response
    /// payloads and the ChildSaUp event (or records the failure).
    #[allow(clippy::too_many_arguments)]
    fn respond_child(
        &mut self,
        sa: &mut IkeSa,
        cfg: &TunnelConfig,
        payloads: &[Payload],
        ni: &[u8],
        nr: &[u8],
        shared: Option<&[u8]>,
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
        let (Some(tsi), Some(tsr)) = (tsi, tsr) else { return (Vec::new(), None) };
        if props.is_empty() {
            return (Vec::new(), None);
        }
        let with_pfs = shared.is_some();
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
                        ours.select(&theirs, true).filter(|s| s.dh.map(|g| g.id()) == peer_group)
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
        let Some(keys) = sa.keys.as_ref() else { return (Vec::new(), None) };
        let spi_in = self.new_child_spi(sa.our_spi());
        let (i2r, r2i) = crypto::child_keymat(keys.prf, &keys.sk_d, shared, ni, nr, suite.encr);
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
            inbound: ChildKeys::new(spi_in, i2r),
            outbound: ChildKeys::new(spi_out, r2i),
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

    fn on_create_child_request(
        &mut self,
        sa: &mut IkeSa,
        now: Instant,
        id: u32,
        payloads: Vec<Payload>,
    ) {
        let Some(t) = sa.tunnel else { return };
        let Some(cfg) = self.tunnel_ref(t).map(|t| t.cfg.clone()) else { return };
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
        if sa.state != State::Established {
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
            &ni,
            &nr,
            shared.as_deref().map(|s| &s[..]),
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

    #[allow(clippy::too_many_arguments)]
    fn on_rekey_ike_request(
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
        if sa.state != State::Established {
            self.respond(
                sa,
                ExchangeType::CREATE_CHILD_SA,
                id,
                &refuse(NotifyType::TEMPORARY_FAILURE, vec![]),
            );
            return;
        }
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
        let Some(old) = sa.keys.as_ref() else { return };
        let seed = crypto::skeyseed_rekey(old.prf, &old.sk_d, &shared, &ni, &nr);
        let keys = IkeKeys::derive(suite.encr, suite.prf, &seed, &ni, &nr, new_spi_i, new_spi_r);
        let mut prop = Proposal::from_ike(num, &new_spi_r.to_be_bytes(), &IkeProposal::from(suite));
        prop.num = num;
        let resp = [
            Payload::Sa(vec![prop]),
            Payload::Nonce(nr.clone()),
            Payload::Ke { group: suite.dh.id(), data: dh.public() },
        ];
        self.respond(sa, ExchangeType::CREATE_CHILD_SA, id, &resp);
        if matches!(sa.out, Some(Request { kind: ReqKind::RekeyIke { .. }, .. })) {
            // Simultaneous IKE rekey (§2.8.1): keep both until our exchange returns.
            sa.ike_collision = Some((ni.clone(), nr.clone(), new_spi_r));
        }
        let mut new =
            self.rekeyed_sa(sa, false, new_spi_i, new_spi_r, suite, keys, ni.min(nr), now);
        if sa.ike_collision.is_none() {
            self.take_over(sa, new, now, false);
        } else {
            // Parked until our own rekey returns; adopted if it wins, deleted by the peer if not.
            new.state = State::Rekeyed;
            new.linger_until = Some(now + self.config.half_open_timeout);
            self.put(new, now);
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn rekeyed_sa(
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
            initiator,
            spi_i,
            spi_r,
            local: old.local,
            remote: old.remote,
            nat_t: old.nat_t,
            behind_nat: old.behind_nat,
            state: State::Established,
            suite: Some(suite),
            keys: Some(Box::new(keys)),
            init: None,
            next_req_id: 0,
            peer_next_req: 0,
            cached_resp: None,
            out: None,
            queue: VecDeque::new(),
            children: Vec::new(),
            created: now,
            last_rx: now,
            rekey_at: None,
            expire_at: None,
            keepalive_at: old.keepalive_at,
            iv_counter: 0,
            nonce_key,
            ike_collision: None,
            established_at: None,
            linger_until: None,
            timer: None,
        }
    }

    /// Moves CHILD SAs and queued work from `old` to `new` and makes `new` the tunnel's SA.
    fn take_over(&mut self, old: &mut IkeSa, mut new: IkeSa, now: Instant, delete_old: bool) {
        let Some(t) = new.tunnel else { return };
        let Some(l) = self.tunnel_ref(t).map(|t| t.cfg.ike_lifetime) else { return };
        let (rekey, expire) = self.jittered(now, &l);
        new.rekey_at = rekey;
        new.expire_at = Some(expire);
        new.linger_until = None;
        new.children = std::mem::take(&mut old.children);
        for c in &new.children {
            self.child_index.insert(c.spi_in, new.our_spi());
        }
        new.queue = old
            .queue
            .drain(..)
            .filter(|t| !matches!(t, Task::RekeyIke | Task::Dpd | Task::DeleteIke))
            .collect();
        old.state = State::Rekeyed;
        old.last_rx = now;
        if delete_old {
            old.queue.push_back(Task::DeleteIke);
        }
        if let Some(tun) = self.tunnel_mut(t) {
            tun.ike = Some(new.our_spi());
        }
        self.events.push_back(Event::IkeSaUp {
            tunnel: self.tunnel_name(Some(t)),
            local: new.local,
            peer: new.remote,
            suite: new.suite.unwrap_or(IkeSuite {
                encr: crate::proposal::Encr::Aes256Gcm16,
                prf: crate::proposal::Prf::HmacSha256,
                dh: DhGroup::Curve25519,
            }),
            encap: new.nat_t,
            rekeyed: true,
        });
        self.pump(&mut new, now);
        self.put(new, now);
    }

    fn on_informational_request(
        &mut self,
        sa: &mut IkeSa,
        now: Instant,
        id: u32,
        payloads: Vec<Payload>,
    ) {
        let mut resp = Vec::new();
        let mut delete_ike = false;
        if payloads
            .iter()
            .any(|p| matches!(p, Payload::Notify(n) if n.ty == NotifyType::AUTHENTICATION_FAILED))
        {
            // §2.21.2: the initiator could not verify our AUTH; the SA is void.
            let cfg = sa.tunnel.and_then(|t| self.tunnel_ref(t)).map(|t| t.cfg.clone());
            self.fail(Explanation {
                tunnel: cfg.as_ref().map(|c| c.name.clone()).unwrap_or_default(),
                peer: sa.remote,
                exchange: ExchangeType::IKE_AUTH,
                cause: Cause::PeerRefused(NotifyType::AUTHENTICATION_FAILED),
                ours: cfg.map(|c| format!("identity {} with a pre-shared key", c.local_id)).unwrap_or_default(),
                theirs: None,
                suggestion: Some("the peer could not verify our AUTH: the pre-shared keys differ or the peer expects another identity".into()),
            });
            delete_ike = true;
        }
        let mut ours_deleted = Vec::new();
        for p in &payloads {
            let Payload::Delete(d) = p else { continue };
            if d.protocol == protocol::IKE {
                delete_ike = true;
            } else if d.protocol == protocol::ESP {
                for spi in &d.spis {
                    if let Some(i) = sa.children.iter().position(|c| c.spi_out == *spi) {
                        let c = sa.children.remove(i);
                        self.child_index.remove(&c.spi_in);
                        let reason = if c.state == ChildState::Rekeyed {
                            DownReason::Rekeyed
                        } else {
                            DownReason::DeletedByPeer
                        };
                        ours_deleted.push(c.spi_in);
                        self.child_down(sa, &c, reason);
                    }
                }
            }
        }
        if !ours_deleted.is_empty() {
            resp.push(Payload::Delete(Delete { protocol: protocol::ESP, spis: ours_deleted }));
        }
        self.respond(sa, ExchangeType::INFORMATIONAL, id, &resp);
        if delete_ike {
            self.release_pending_spis(sa);
            sa.out = None;
            sa.queue.clear();
            let reason = if sa.state == State::Rekeyed {
                DownReason::Rekeyed
            } else {
                DownReason::DeletedByPeer
            };
            self.finish_later(sa, reason);
            sa.linger_until = Some(now + self.config.half_open_timeout);
        }
    }

    /// Emits the down events now; the SA itself lingers briefly to answer retransmissions.
    fn finish_later(&mut self, sa: &mut IkeSa, reason: DownReason) {
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

    fn child_down(&mut self, sa: &IkeSa, c: &Child, reason: DownReason) {
        self.events.push_back(Event::ChildSaDown {
            tunnel: self.tunnel_name(sa.tunnel),
            child: self.child_name(sa.tunnel, c.cfg),
            spi_in: c.spi_in,
            spi_out: c.spi_out,
            reason,
        });
    }

    // ----- responses to our requests -------------------------------------------------------

    fn on_response(
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

    /// Drops the SA from its tunnel without events (it was never up).
    fn detach(&mut self, sa: &mut IkeSa) {
        if let Some(t) = sa.tunnel
            && let Some(tun) = self.tunnel_mut(t)
            && tun.ike == Some(sa.our_spi())
        {
            tun.ike = None;
        }
        sa.linger_until = Some(sa.last_rx);
    }

    fn on_auth_response(&mut self, sa: &mut IkeSa, now: Instant, payloads: Vec<Payload>) {
        let Some(t) = sa.tunnel else { return };
        let Some(cfg) = self.tunnel_ref(t).map(|t| t.cfg.clone()) else { return };
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
            self.abandon(sa);
            return;
        };
        let Some(keys) = sa.keys.as_ref() else { return };
        let Some(init) = sa.init.as_ref() else { return };
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
            self.tell_auth_failed(sa);
            self.abandon(sa);
            return;
        }
        let expect = crypto::psk_auth(
            keys.prf,
            cfg.psk.expose(),
            &init.msg2,
            &init.ni,
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
            self.tell_auth_failed(sa);
            self.abandon(sa);
            return;
        }
        let (ni, nr) = (init.ni.clone(), init.nr.clone());
        let first = init.first_child;
        sa.init = None;
        self.establish(sa, t, now, false);
        // The first CHILD SA.
        if let Some((c, spi_in)) = first {
            let offered = cfg.children[c].esp_proposals.iter().map(|p| p.without_pfs()).collect();
            self.finish_child(
                sa,
                &cfg,
                now,
                &payloads,
                c,
                spi_in,
                &ni,
                &nr,
                None,
                None,
                offered,
                ExchangeType::IKE_AUTH,
            );
        }
    }

    /// §2.21.2: the responder's AUTH did not verify; tell it in a separate INFORMATIONAL
    /// (sent once, not retransmitted) so that it drops the SA it believes established.
    fn tell_auth_failed(&mut self, sa: &mut IkeSa) {
        let id = sa.next_req_id;
        sa.next_req_id = sa.next_req_id.wrapping_add(1);
        let n = [Payload::Notify(Notify::new(NotifyType::AUTHENTICATION_FAILED, vec![]))];
        let data = self.seal(sa, ExchangeType::INFORMATIONAL, false, id, &n);
        self.send(sa, data);
    }

    /// Gives up an IKE SA that never came up.
    fn abandon(&mut self, sa: &mut IkeSa) {
        sa.state = State::Deleting;
        sa.out = None;
        self.release_pending_spis(sa);
        sa.init = None;
        self.detach(sa);
    }

    /// The initiator's side of a CHILD SA negotiation: checks the answer and emits events.
    #[allow(clippy::too_many_arguments)]
    fn finish_child(
        &mut self,
        sa: &mut IkeSa,
        cfg: &TunnelConfig,
        now: Instant,
        payloads: &[Payload],
        c: usize,
        spi_in: u32,
        ni: &[u8],
        nr: &[u8],
        shared: Option<&[u8]>,
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
        let suite = chosen.and_then(|p| {
            let e = p.to_esp();
            let s = EspSuite {
                encr: *e.encr.first()?,
                dh: e.dh.first().copied(),
                esn: *e.esn.first()?,
            };
            (e.encr.len() == 1
                && e.dh.len() <= 1
                && e.esn.len() == 1
                && offered.iter().any(|o| {
                    o.encr.contains(&s.encr)
                        && o.esn.contains(&s.esn)
                        && s.dh.is_none_or(|g| o.dh.contains(&g))
                }))
            .then_some(s)
        });
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
        if suite.dh.is_some() != shared.is_some() {
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
        let keys = sa.keys.as_ref()?;
        let (i2r, r2i) = crypto::child_keymat(keys.prf, &keys.sk_d, shared, ni, nr, suite.encr);
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
            inbound: ChildKeys::new(spi_in, r2i),
            outbound: ChildKeys::new(spi_out, i2r),
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

    fn start_create_child(
        &mut self,
        sa: &mut IkeSa,
        c: usize,
        rekey_of: Option<u32>,
        now: Instant,
    ) {
        let Some(cfg) = sa.tunnel.and_then(|t| self.tunnel_ref(t)).map(|t| t.cfg.clone()) else {
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
    fn on_create_child_response(
        &mut self,
        sa: &mut IkeSa,
        now: Instant,
        payloads: Vec<Payload>,
        c: usize,
        spi_in: u32,
        ni: Vec<u8>,
        dh: Option<DhSecret>,
        rekey_of: Option<u32>,
        offered: Vec<EspProposal>,
    ) {
        let Some(cfg) = sa.tunnel.and_then(|t| self.tunnel_ref(t)).map(|t| t.cfg.clone()) else {
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
                &ni,
                &[],
                None,
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
            &ni,
            &nr,
            shared.as_deref().map(|s| &s[..]),
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

    // ----- IKE SA rekey, initiator ---------------------------------------------------------

    fn start_rekey_ike(&mut self, sa: &mut IkeSa, now: Instant) {
        let Some(cfg) = sa.tunnel.and_then(|t| self.tunnel_ref(t)).map(|t| t.cfg.clone()) else {
            return;
        };
        let new_spi = self.new_spi64();
        let nonce = self.nonce();
        let group = sa.suite.map(|s| s.dh).unwrap_or(cfg.ike_proposals[0].dh[0]);
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

    fn on_rekey_ike_response(
        &mut self,
        sa: &mut IkeSa,
        now: Instant,
        payloads: Vec<Payload>,
        new_spi: u64,
        ni: Vec<u8>,
        dh: DhSecret,
    ) {
        let Some(cfg) = sa.tunnel.and_then(|t| self.tunnel_ref(t)).map(|t| t.cfg.clone()) else {
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
                sa.rekey_at = Some(now + Duration::from_secs(2));
                sa.ike_collision = None;
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
                if let Some(s) = sa.suite.as_mut() {
                    s.dh = g;
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
        let p = props.first();
        let suite = p.map(|p| p.to_ike()).and_then(|c| {
            (c.encr.len() == 1 && c.prf.len() == 1 && c.dh.len() == 1).then(|| IkeSuite {
                encr: c.encr[0],
                prf: c.prf[0],
                dh: c.dh[0],
            })
        });
        let (Some(p), Some(suite)) = (
            p,
            suite.filter(|s| {
                cfg.ike_proposals.iter().any(|o| o.allows(s))
                    && s.dh == dh.group()
                    && group == s.dh.id()
            }),
        ) else {
            return;
        };
        if p.spi.len() != 8 {
            return;
        }
        let new_spi_r = u64::from_be_bytes(p.spi[..8].try_into().unwrap_or_default());
        let Ok(shared) = dh.shared(&ke) else { return };
        let Some(old) = sa.keys.as_ref() else { return };
        let seed = crypto::skeyseed_rekey(old.prf, &old.sk_d, &shared, &ni, &nr);
        let keys = IkeKeys::derive(suite.encr, suite.prf, &seed, &ni, &nr, new_spi, new_spi_r);
        let mine_low = ni.clone().min(nr.clone());
        let new = self.rekeyed_sa(sa, true, new_spi, new_spi_r, suite, keys, mine_low.clone(), now);
        match sa.ike_collision.take() {
            Some((pni, pnr, peer_new)) => {
                // §2.8.1 for IKE SAs: the new SA with the lowest nonce is redundant and is
                // deleted by the peer that created (initiated) it.
                if mine_low < pni.min(pnr) {
                    // Ours lost: adopt the peer's new SA; delete ours; the peer deletes the old.
                    if let Some(mut winner) = self.sas.remove(&peer_new) {
                        if let Some(t) = winner.timer.take() {
                            self.timers.remove(&(t, peer_new));
                        }
                        winner.state = State::Established;
                        self.take_over(sa, winner, now, false);
                    }
                    let mut redundant = new;
                    redundant.state = State::Rekeyed;
                    redundant.queue.push_back(Task::DeleteIke);
                    self.pump(&mut redundant, now);
                    self.put(redundant, now);
                } else {
                    // Ours won: we delete the old SA; the peer deletes its redundant one.
                    self.take_over(sa, new, now, true);
                }
            }
            None => self.take_over(sa, new, now, true),
        }
    }

    // ----- timers --------------------------------------------------------------------------

    fn on_timer(&mut self, sa: &mut IkeSa, now: Instant) {
        // A liveness check ends at its timeout, not at a retransmission (§2.4): its own
        // deadline, and the retransmission count does not limit it.
        let dpd_deadline = self.dpd_deadline(sa);
        if dpd_deadline.is_some_and(|d| d <= now) {
            self.exchange_timed_out(sa, now);
            return;
        }
        // Retransmission (§2.1).
        if let Some(out) = sa.out.as_mut()
            && out.next_retx <= now
        {
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
                self.send(sa, data);
                return;
            }
            self.exchange_timed_out(sa, now);
            return;
        }
        match sa.state {
            State::HalfOpen => {
                if now >= sa.created + self.config.half_open_timeout {
                    self.half_open.retain(|_, v| *v != sa.spi_r);
                    sa.state = State::Deleting;
                    sa.linger_until = Some(now);
                }
            }
            State::Established => {
                if sa.expire_at.is_some_and(|e| e <= now) {
                    sa.out = None;
                    self.release_pending_spis(sa);
                    self.finish_later(sa, DownReason::Expired);
                    sa.linger_until = Some(now);
                    return;
                }
                if sa.rekey_at.is_some_and(|r| r <= now) {
                    sa.rekey_at = None;
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
            State::Rekeyed | State::Deleting | State::InitSent | State::AuthSent => {}
        }
    }

    /// The peer at `remote` is dead: the tunnel's other SAs with it that wait for a Delete (a
    /// collision's loser, a rekeyed or deleted SA) go too, with their CHILD SAs, which would
    /// otherwise stay in use until that Delete exchange timed out.
    fn drop_waiting_on(&mut self, t: usize, except: u64, remote: SocketAddr, now: Instant) {
        let waiting: Vec<u64> = [State::Rekeyed, State::Deleting]
            .into_iter()
            .flat_map(|state| self.tunnel_sas(t, except, state))
            .filter(|k| self.sas.get(k).is_some_and(|o| o.remote == remote))
            .collect();
        for k in waiting {
            if let Some(o) = self.sas.remove(&k) {
                self.destroy(o, DownReason::DeadPeer, now);
            }
        }
    }

    fn exchange_timed_out(&mut self, sa: &mut IkeSa, now: Instant) {
        let Some(out) = sa.out.take() else { return };
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
                let persistent = sa.init.as_ref().is_some_and(|i| i.persistent);
                self.release_pending_spis(sa);
                sa.init = None;
                sa.state = State::Deleting;
                self.detach(sa);
                if persistent && let Some(t) = t {
                    self.initiate_idx(t, now, true);
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
            _ => {
                // The peer is dead (§2.4): drop everything; restart if configured.
                let was_current = t
                    .and_then(|t| self.tunnel_ref(t))
                    .is_some_and(|tun| tun.ike == Some(sa.our_spi()));
                if let ReqKind::CreateChild { spi_in, .. } = out.kind {
                    self.child_index.remove(&spi_in);
                }
                self.finish_later(sa, DownReason::DeadPeer);
                sa.linger_until = Some(now);
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

/// A snapshot of one tunnel for status displays.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TunnelStatus {
    /// The current IKE SA, if any.
    pub ike: Option<IkeStatus>,
    /// Its CHILD SAs.
    pub children: Vec<ChildStatus>,
}

/// An IKE SA in a [`TunnelStatus`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IkeStatus {
    /// IKE_AUTH completed.
    pub established: bool,
    /// We initiated it.
    pub initiator: bool,
    /// Initiator's SPI.
    pub spi_i: u64,
    /// Responder's SPI.
    pub spi_r: u64,
    /// Our address in use.
    pub local: SocketAddr,
    /// The peer's address in use.
    pub peer: SocketAddr,
    /// UDP encapsulation in use.
    pub encap: bool,
    /// Negotiated algorithms (once IKE_SA_INIT completed).
    pub suite: Option<IkeSuite>,
}

/// A CHILD SA in a [`TunnelStatus`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChildStatus {
    /// Configured name.
    pub name: String,
    /// Inbound SPI.
    pub spi_in: u32,
    /// Outbound SPI.
    pub spi_out: u32,
    /// Negotiated algorithms.
    pub esp: EspSuite,
    /// Local selectors.
    pub local_ts: Vec<TrafficSelector>,
    /// Remote selectors.
    pub remote_ts: Vec<TrafficSelector>,
    /// Carrying traffic (not replaced or being deleted).
    pub installed: bool,
}

/// The header fields of a message whose payloads cannot be parsed.
fn parse_header_loose(data: &[u8]) -> Result<Header, Error> {
    let mut r = codec::Reader::new(data);
    Ok(Header {
        spi_i: r.u64("IKE header")?,
        spi_r: r.u64("IKE header")?,
        next_payload: r.u8("IKE header")?,
        version: r.u8("IKE header")?,
        exchange: ExchangeType(r.u8("IKE header")?),
        flags: r.u8("IKE header")?,
        message_id: r.u32("IKE header")?,
        length: r.u32("IKE header")?,
    })
}

/// NAT detection hash (§2.23): SHA-1(SPIi | SPIr | IP | port).
fn nat_hash(spi_i: u64, spi_r: u64, a: SocketAddr) -> Vec<u8> {
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
fn nat_check(
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

/// §2.9 narrowing: the parts of `offered` inside `ours`.
fn narrow(offered: &[TrafficSelector], ours: &[TrafficSelector]) -> Vec<TrafficSelector> {
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

fn ts_list(ts: &[TrafficSelector]) -> String {
    ts.iter().map(|t| t.to_string()).collect::<Vec<_>>().join(",")
}

fn ike_list_string(l: &[IkeProposal]) -> String {
    crate::proposal::list_to_string(l)
}

fn esp_list_string(l: &[EspProposal]) -> String {
    crate::proposal::list_to_string(l)
}

/// The smallest change to our IKE proposals that accepts one of the peer's.
fn suggest_ike(ours: &[IkeProposal], theirs: &[Proposal]) -> Option<String> {
    use crate::proposal::transform_type as tt;
    let mut best: Option<(usize, String)> = None;
    for p in theirs.iter().filter(|p| p.protocol == protocol::IKE) {
        let sup = p.to_ike();
        let our_encr: Vec<_> = ours.iter().flat_map(|o| o.encr.iter()).collect();
        let our_prf: Vec<_> = ours.iter().flat_map(|o| o.prf.iter()).collect();
        let our_dh: Vec<_> = ours.iter().flat_map(|o| o.dh.iter()).collect();
        let mut missing = Vec::new();
        let mut unsupported = Vec::new();
        let names = |ty: u8| -> Vec<String> {
            p.transforms
                .iter()
                .filter(|t| t.ty == ty)
                .map(|t| crate::proposal::transform_name(t.ty, t.id, t.key_len))
                .collect()
        };
        for (ty, what, ok, any_sup) in [
            (
                tt::ENCR,
                "encryption",
                sup.encr.iter().any(|e| our_encr.contains(&e)),
                !sup.encr.is_empty(),
            ),
            (tt::PRF, "PRF", sup.prf.iter().any(|e| our_prf.contains(&e)), !sup.prf.is_empty()),
            (
                tt::DH,
                "key exchange",
                sup.dh.iter().any(|e| our_dh.contains(&e)),
                !sup.dh.is_empty(),
            ),
        ] {
            if !ok {
                let n = names(ty);
                let only = if n.len() == 1 { "only " } else { "" };
                if any_sup {
                    let first = match ty {
                        tt::ENCR => sup.encr[0].name(),
                        tt::PRF => sup.prf[0].name(),
                        _ => sup.dh[0].name(),
                    };
                    missing.push(format!(
                        "the peer offers {only}{} for {what}; add {first} to ike proposals",
                        n.join(", ")
                    ));
                } else {
                    unsupported.push(format!("the peer offers {only}{} for {what}, which Isthmus does not support; configure the peer with a supported algorithm", n.join(", ")));
                }
            }
        }
        let cost = missing.len() + 10 * unsupported.len();
        if cost == 0 {
            continue;
        }
        let text = missing.into_iter().chain(unsupported).collect::<Vec<_>>().join("; ");
        if best.as_ref().is_none_or(|(c, _)| cost < *c) {
            best = Some((cost, text));
        }
    }
    best.map(|(_, t)| t)
}

/// The same for ESP proposals.
fn suggest_esp(ours: &[EspProposal], theirs: &[&Proposal], pfs: bool) -> String {
    use crate::proposal::transform_type as tt;
    let mut best: Option<(usize, String)> = None;
    for p in theirs {
        let sup = p.to_esp();
        let mut parts = Vec::new();
        let names = |ty: u8| -> Vec<String> {
            p.transforms
                .iter()
                .filter(|t| t.ty == ty)
                .map(|t| crate::proposal::transform_name(t.ty, t.id, t.key_len))
                .collect()
        };
        if !sup.encr.iter().any(|e| ours.iter().any(|o| o.encr.contains(e))) {
            let mut n = names(tt::ENCR);
            n.extend(names(tt::INTEG));
            parts.push(match sup.encr.first() {
                Some(e) => format!("the peer offers {} for ESP encryption; add {} to esp proposals", n.join(", "), e.name()),
                None => format!("the peer offers {}, which Isthmus does not support for ESP; configure the peer with aes128gcm16 or aes256gcm16", n.join(", ")),
            });
        }
        if !sup.esn.iter().any(|e| ours.iter().any(|o| o.esn.contains(e))) {
            let e = if sup.esn.contains(&true) { "esn" } else { "noesn" };
            parts.push(format!("the peer requires {e}; add {e} to esp proposals"));
        }
        if pfs {
            let ours_dh: Vec<DhGroup> = ours.iter().flat_map(|o| o.dh.iter().copied()).collect();
            if !sup.dh.is_empty() && !sup.dh.iter().any(|g| ours_dh.contains(g)) {
                parts.push(format!(
                    "the peer uses PFS group {}; add it to esp proposals",
                    sup.dh[0].name()
                ));
            }
            if sup.dh.is_empty() && !ours_dh.is_empty() {
                parts.push("the peer offers no PFS group; remove the group from esp proposals or enable PFS on the peer".into());
            }
        }
        if parts.is_empty() {
            continue;
        }
        if best.as_ref().is_none_or(|(c, _)| parts.len() < *c) {
            best = Some((parts.len(), parts.join("; ")));
        }
    }
    best.map(|(_, t)| t).unwrap_or_else(|| "compare the esp proposals of both sides".into())
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

    #[test]
    fn narrowing_keeps_the_intersections() {
        let ours: Vec<TrafficSelector> =
            vec!["10.1.0.0/16".parse().unwrap(), "10.3.0.0/16".parse().unwrap()];
        let offered: Vec<TrafficSelector> = vec!["10.0.0.0/8[tcp]".parse().unwrap()];
        let n = narrow(&offered, &ours);
        assert_eq!(ts_list(&n), "10.1.0.0/16[tcp],10.3.0.0/16[tcp]");
        assert!(narrow(&["192.168.0.0/16".parse().unwrap()], &ours).is_empty());
    }

    #[test]
    fn suggestions_name_the_smallest_change() {
        let ours = crate::proposal::parse_ike_list("aes256gcm16-prfsha256-x25519").unwrap();
        let theirs = [Proposal::from_ike(
            1,
            &[],
            &IkeProposal::parse("aes256gcm16-prfsha256-ecp384").unwrap(),
        )];
        assert_eq!(
            suggest_ike(&ours, &theirs).unwrap(),
            "the peer offers only ecp384 for key exchange; add ecp384 to ike proposals"
        );
        let foreign = Proposal {
            num: 1,
            protocol: protocol::IKE,
            spi: vec![],
            transforms: vec![
                codec::Transform { ty: 1, id: 12, key_len: Some(128), unknown_attr: false },
                codec::Transform { ty: 2, id: 5, key_len: None, unknown_attr: false },
                codec::Transform { ty: 4, id: 14, key_len: None, unknown_attr: false },
            ],
        };
        let s = suggest_ike(&ours, &[foreign]).unwrap();
        assert!(
            s.contains(
                "the peer offers only aes128 for encryption, which Isthmus does not support"
            ),
            "{s}"
        );
        assert!(s.contains("modp2048"), "{s}");
        let esp = crate::proposal::parse_esp_list("aes256gcm16").unwrap();
        let peer = Proposal::from_esp(1, 9, &EspProposal::parse("aes256gcm16-esn").unwrap(), false);
        assert_eq!(
            suggest_esp(&esp, &[&peer], false),
            "the peer requires esn; add esn to esp proposals"
        );
    }
}

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
//!
//! One file per exchange, as rustls splits its client by handshake phase: `init` (IKE_SA_INIT),
//! `auth` (IKE_AUTH), `child` (CHILD SAs), `rekey` (IKE SA rekeys), `info`
//! (INFORMATIONAL), with `io` (sealing, dispatch), `sa` (the SA's `Phase`, which owns
//! each phase's secrets and keys, and bookkeeping), `timers` and `explain` (what failed and
//! why) beside them. This file holds the other types and the public API. IKEv1 (RFC 2409)
//! goes into an `ikev1` module beside this one, with its own phases.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use rand_chacha::ChaCha20Rng;
use rand_core::{RngCore, SeedableRng};
use sha1::{Digest, Sha1};
use sha2::Sha256;
use zeroize::Zeroizing;

use crate::codec::{
    self, Delete, ExchangeType, Header, Id, Message, Notify, NotifyType, Payload, Proposal, flags,
    payload_type, protocol,
};
use crate::config::{DpdAction, EndpointConfig, Identity, Lifetime, TrafficSelector, TunnelConfig};
use crate::crypto::{self, DhSecret, IkeKeys};
use crate::error::Error;
use crate::event::{Cause, ChildKeys, DownReason, Event, Explanation, Transmit};
use crate::proposal::{DhGroup, EspProposal, EspSuite, IkeProposal, IkeSuite, Prf};

mod auth;
mod child;
mod explain;
mod info;
mod init;
mod io;
mod rekey;
mod sa;
mod timers;
mod v1;

use child::ChildKeying;
use explain::{esp_list_string, ike_list_string, suggest_esp, suggest_ike};
use sa::{
    Authenticating, HalfOpen, IkeCollision, IkeSa, Initiating, Keyed, Phase, SkD, Transcript,
};

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
    /// IKEv1 sessions by tunnel index (ordered, so timers run in a fixed order).
    v1: BTreeMap<usize, crate::v1::session::Session>,
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
            v1: BTreeMap::new(),
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
        self.v1_terminate(t);
        self.v1.remove(&t);
        let mut spis: Vec<u64> = self.tunnel_ref(t).map(|tun| tun.sas.clone()).unwrap_or_default();
        // Hash map order is random; events must not be.
        spis.sort_unstable();
        for spi in spis {
            if let Some(mut sa) = self.sas.remove(&spi) {
                if matches!(sa.phase, Phase::Established(_) | Phase::Rekeyed { .. }) {
                    // Best effort, not retransmitted: the tunnel is going away now.
                    let del = [Payload::Delete(Delete { protocol: protocol::IKE, spis: vec![] })];
                    let id = sa.next_req_id;
                    if let Some(data) =
                        Self::seal(&mut sa, ExchangeType::INFORMATIONAL, false, id, &del)
                    {
                        self.send(&sa, data);
                    }
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
        if self.active_v1(t) {
            self.v1_terminate(t);
        }
        let Some(spi) = self.tunnel_ref(t).and_then(|t| t.ike) else { return Ok(()) };
        let Some(mut sa) = self.sas.remove(&spi) else { return Ok(()) };
        if sa.phase.is_established() {
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
        if self.active_v1(t) {
            self.v1_rekey_ike(t, now);
            return Ok(());
        }
        let spi = self.established(t, tunnel)?;
        self.enqueue(spi, Task::RekeyIke, now);
        Ok(())
    }

    /// The dataplane saw traffic for the named CHILD SA of a tunnel that has no SA: bring the
    /// IKE SA up if needed and create that CHILD SA. Repeated calls while it is being set up
    /// are ignored.
    pub fn acquire(&mut self, tunnel: &str, child: &str, now: Instant) -> Result<(), Error> {
        let t = self.tunnel_index(tunnel)?;
        if self.initiates_v1(t) {
            // IKEv1 brings up every missing selector pair of the tunnel (whose dataplane
            // names, `child/k`, are not CHILD SA names).
            self.v1_initiate(t, now);
            return Ok(());
        }
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
                    || sa.phase.first_child().is_some_and(|(c, _)| c == cfg);
                if busy {
                    return Ok(());
                }
                if sa.phase.is_established() {
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
        if let Some(t) = self.v1_child_owner(spi) {
            return if self.v1_rekey_child(t, spi, now) {
                Ok(())
            } else {
                Err(Error::UnknownChild(spi))
            };
        }
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
        if let Some(t) = self.v1_child_owner(spi) {
            self.v1_traffic_seen(t, spi, now);
            return;
        }
        let Some(&ike) = self.child_index.get(&spi) else { return };
        let Some(mut sa) = self.sas.remove(&ike) else { return };
        if sa.phase.is_established() && now > sa.last_rx {
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
        if Self::is_v1(data) {
            self.v1_datagram(now, local, remote, data);
            return;
        }
        let msg = match codec::parse_message(data) {
            Ok(m) => m,
            Err(Error::InvalidMajorVersion(_)) => {
                if let Ok(h) = Header::parse_loose(data)
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
            sa.spi_r == peer_spi || matches!(sa.phase, Phase::Initiating(_))
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
        self.v1_timeout(now);
    }

    /// The next datagram to send, if any.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// When [`Endpoint::handle_timeout`] must next be called, if ever.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let v2 = self.timers.first().map(|(t, _)| *t);
        v2.into_iter().chain(self.v1_poll_timeout()).min()
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
        if (self.initiates_v1(t) || self.active_v1(t))
            && let Some(st) = self.v1_status(t)
        {
            return Ok(st);
        }
        let mut st = TunnelStatus::default();
        if let Some(sa) = self.tunnel_ref(t).and_then(|tun| tun.ike).and_then(|s| self.sas.get(&s))
        {
            st.ike = Some(IkeStatus {
                established: sa.phase.is_established(),
                initiator: sa.initiator,
                spi_i: sa.spi_i,
                spi_r: sa.spi_r,
                local: sa.local,
                peer: sa.remote,
                encap: sa.nat_t,
                suite: sa.phase.suite(),
                rekey_at: sa.established().and_then(|e| e.rekey_at),
                expire_at: sa.established().and_then(|e| e.expire_at),
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
                    rekey_at: c.rekey_at,
                    expire_at: c.expire_at,
                });
            }
        }
        Ok(st)
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
    /// When it rekeys, while established (None: no rekey is configured, or one is under way).
    pub rekey_at: Option<Instant>,
    /// When it ends unless rekeyed before, while established.
    pub expire_at: Option<Instant>,
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
    /// When it rekeys (None: no rekey is configured, one is under way, or it was replaced).
    pub rekey_at: Option<Instant>,
    /// When it ends (its hard lifetime).
    pub expire_at: Instant,
}

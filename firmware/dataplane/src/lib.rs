//! The packet path: TUN on the LAN side, ESP (raw IP protocol 50 or UDP 4500) on the WAN side,
//! policy and flow tables in between, on plain OS threads.
//!
//! ```text
//!  LAN ─ kernel route ─▶ TUN ─▶ [outbound worker] flow key → SPD → NACL/SG → SA → ESP ─▶ UDP 4500 / raw ESP ─▶ WAN
//!  LAN ◀─────────────── TUN ◀─ [inbound workers]  NACL/SG ← selectors ← decap ← SPI  ◀─ UDP 4500 / raw ESP ◀─ WAN
//! ```
//!
//! - Outbound (RFC 4301 §5.1): each packet read from the TUN device is classified by the
//!   published [`SpdTable`] (first match). `Protect` sends it through the CHILD SA's outbound SA,
//!   as ESP in UDP (RFC 3948) or plain ESP (RFC 4303), batched with `sendmmsg`. **Never in
//!   clear**: with no usable SA the packet is dropped, counted as `no-sa`, and an
//!   [`Event::Acquire`] (rate limited) asks the control plane for an SA. Packets matching no
//!   entry, `Discard` or `Bypass` entries are dropped too (bypass traffic is routed by the
//!   kernel, not into the tunnel device).
//! - Path MTU: an inner packet that would exceed the tunnel MTU once encapsulated is answered
//!   with ICMP "fragmentation needed" (RFC 1191) or ICMPv6 "packet too big" (RFC 4443 §3.2) when
//!   it may not be fragmented; IPv4 without DF is sent and the kernel fragments the outer packet.
//!   TCP SYNs can have their MSS clamped to fit.
//! - Inbound (RFC 4301 §5.2): datagrams on UDP 4500 are split per RFC 3948 §2.2/§2.3: a
//!   one-byte `0xff` is a NAT keepalive (ignored), a zero non-ESP marker precedes IKE (handed to
//!   the control plane as [`Event::Ike`]), anything else is ESP. ESP is matched to its inbound
//!   SA by SPI, decrypted and replay-checked by `isthmus-esp`, and the inner packet must lie
//!   inside the SA's traffic selectors (else `selector-mismatch`) before it is written to TUN.
//! - Security groups and network ACLs ([`filter`]): LAN to tunnel after the SPD chose the
//!   tunnel, tunnel to LAN after the selector check, each packet passes the network ACL and the
//!   stateful security group of the tunnel (and of its LAN, when bound) from the published
//!   [`SgTable`]; an empty table allows everything. Drops are counted by reason ([`Drop`], each
//!   of one stage of the packet path) and by the rule that decided ([`RuleDrop`]).
//! - Control: [`Dataplane`] adds, replaces and removes SAs, publishes SPD and security-group
//!   tables, reads counters, and sends IKE out of the shared 4500 socket. Workers read an immutable snapshot
//!   swapped atomically ([`arc_swap`]), so rekeys and new tables take effect between packets.
//!
//! - Offloads ([`offload`]): with `IFF_VNET_HDR` the kernel hands TCP super-segments of up to
//!   64 KiB to the outbound worker, which splits them into MSS-sized segments before ESP, and
//!   the inbound worker coalesces decrypted in-order segments back into super-segments; ESP in
//!   UDP is sent with UDP GSO and received with UDP GRO. On the wire every ESP packet is an
//!   ordinary one.
//!
//! Measured on the project's 2-core machine: see `benches/tunnel.rs` and the crate README.

mod counters;
pub mod filter;
pub mod offload;
pub mod pmtu;
mod sad;
pub mod sys;
mod worker;

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use isthmus_esp::{InboundSa, OutboundSa, SaCounters};
pub use isthmus_tables::FlowKey;
pub use isthmus_tables::flow::{FlowConfig, FlowCounters, PuntRequest};
pub use isthmus_tables::sg::SgTable;
pub use isthmus_tables::spd::{Selector, SpdAction, SpdEntry, SpdTable};
pub use sad::Retired;
pub use worker::link_scoped;

use crate::counters::Atomics;
pub use crate::counters::{Counter, Counts, Drop, DropCounts, Io, IoCounts};
pub use crate::filter::{ChainVerdict, LanBinding, PacketFilter, RuleDrop, state_key, trace};
use crate::filter::{Filter, SgState};
use crate::sad::{Inbound, Outbound, Sad, Snapshot};
use crate::sys::{Tun, WanSocket};

/// UDP port of ESP-in-UDP and IKE after NAT detection (RFC 3948 §2, RFC 7296 §2.23).
pub const NAT_T_PORT: u16 = 4500;

/// Default time between NAT-keepalives when nothing else was sent (RFC 3948 §4: 20 s).
pub const NAT_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(20);

/// Everything the dataplane needs to start.
#[derive(Clone, Debug)]
pub struct Config {
    /// Name of the TUN device (created if missing), at most 15 bytes.
    pub tun_name: String,
    /// MTU set on the TUN device; `None` leaves room for the worst-case ESP-in-UDP overhead
    /// below [`Config::tunnel_mtu`], so the kernel itself answers oversized packets.
    pub tun_mtu: Option<u32>,
    /// Largest outer (encrypted) packet on the WAN, IP header included.
    pub tunnel_mtu: u32,
    /// The WAN address the sockets bind to; outer packets use its address family.
    pub wan_addr: IpAddr,
    /// UDP port for ESP-in-UDP and IKE (4500; 0 picks a free one, for tests).
    pub udp_port: u16,
    /// Open the raw IP-protocol-50 socket for plain ESP (needs `CAP_NET_RAW`).
    pub raw_esp: bool,
    /// Clamp the MSS of TCP SYNs entering the tunnel so that segments fit the tunnel MTU.
    pub mss_clamp: bool,
    /// How long an old inbound SA keeps decrypting after a rekey at most.
    pub rekey_grace: Duration,
    /// How long an old inbound SA is kept after the new one carried its first packet.
    pub rekey_linger: Duration,
    /// Minimum time between two acquire events for the same tunnel and child.
    pub acquire_interval: Duration,
    /// Packets per `recvmmsg`/`sendmmsg` batch.
    pub batch: usize,
    /// Use TUN offloads (`IFF_VNET_HDR`, TCP segmentation and coalescing) when the kernel has
    /// them.
    pub tun_offload: bool,
    /// Use UDP segmentation offload for sending and UDP GRO for receiving ESP in UDP.
    pub udp_offload: bool,
    /// Nice value for the packet threads (lower runs first; the appliance's main job is
    /// forwarding). `None` leaves the inherited priority. Needs `CAP_SYS_NICE` to go below 0;
    /// refused silently otherwise.
    pub worker_nice: Option<i32>,
    /// Capacity of the event channel; events beyond it are counted as lost, never block.
    pub event_capacity: usize,
    /// Limits and timeouts of the flow table of stateful security groups (its capacity is the
    /// total over the shards).
    pub flow: FlowConfig,
    /// Shards of the flow table (rounded up to a power of two), each with its own lock.
    pub flow_shards: usize,
}

impl Config {
    /// Defaults for a tunnel on `wan_addr` with TUN device `tun_name`.
    pub fn new(tun_name: &str, wan_addr: IpAddr) -> Config {
        Config {
            tun_name: tun_name.to_owned(),
            tun_mtu: None,
            tunnel_mtu: 1500,
            wan_addr,
            udp_port: NAT_T_PORT,
            raw_esp: true,
            mss_clamp: true,
            rekey_grace: Duration::from_secs(30),
            rekey_linger: Duration::from_secs(1),
            acquire_interval: Duration::from_secs(1),
            batch: 64,
            event_capacity: 1024,
            tun_offload: true,
            udp_offload: true,
            worker_nice: Some(-10),
            flow: FlowConfig::default(),
            flow_shards: 64,
        }
    }

    fn outer_len(&self, udp: bool) -> usize {
        let ip = if self.wan_addr.is_ipv4() { 20 } else { 40 };
        ip + if udp { 8 } else { 0 }
    }

    /// The TUN MTU actually used.
    pub fn effective_tun_mtu(&self) -> u32 {
        self.tun_mtu.unwrap_or_else(|| {
            let worst = self.outer_len(true) + isthmus_esp::max_overhead();
            self.tunnel_mtu.saturating_sub(worst as u32).max(576)
        })
    }
}

/// How an SA's packets travel on the WAN.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Encap {
    /// ESP in UDP (RFC 3948) to the peer's address and port (4500 unless NAT changed it).
    Udp {
        /// The peer's address and port.
        peer: SocketAddr,
    },
    /// Plain ESP, IP protocol 50 (RFC 4303).
    Esp {
        /// The peer's address.
        peer: IpAddr,
    },
}

/// Which way an SA carries traffic.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Direction {
    /// From this gateway to the peer.
    Outbound,
    /// From the peer to this gateway.
    Inbound,
}

/// Where an outbound SA belongs and how its packets leave.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutboundBinding {
    /// The tunnel's name (as in the SPD's `Protect` action).
    pub tunnel: String,
    /// The CHILD SA's name (as in the SPD's `Protect` action).
    pub child: String,
    /// Transport to the peer.
    pub encap: Encap,
}

/// Where an inbound SA belongs and what it may carry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InboundBinding {
    /// The tunnel's name.
    pub tunnel: String,
    /// The CHILD SA's name.
    pub child: String,
    /// The negotiated traffic selectors (from this gateway's point of view); a decrypted packet
    /// must match one of them (RFC 4301 §5.2 step 4).
    pub selectors: Vec<Selector>,
}

/// What the dataplane tells the control plane.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// Traffic matched a protecting SPD entry whose CHILD SA has no usable outbound SA
    /// (RFC 4301 §5.1 step 3a "acquire").
    Acquire {
        /// The SPD entry's tunnel.
        tunnel: String,
        /// The SPD entry's CHILD SA.
        child: String,
        /// The packet that triggered it.
        flow: FlowKey,
    },
    /// An SA reached a soft lifetime: rekey it.
    SoftExpired {
        /// The SA's SPI.
        spi: u32,
        /// Which way it carries traffic.
        direction: Direction,
    },
    /// An SA reached a hard lifetime and was removed.
    HardExpired {
        /// The SA's SPI.
        spi: u32,
        /// Which way it carried traffic.
        direction: Direction,
    },
    /// An old inbound SA was removed after a rekey.
    InboundRetired {
        /// The old SA's SPI.
        spi: u32,
    },
    /// An IKE message arrived on the UDP 4500 socket (non-ESP marker removed, RFC 3948 §2.2).
    Ike {
        /// Who sent it.
        from: SocketAddr,
        /// The IKE message, starting at the IKE header.
        payload: Vec<u8>,
    },
}

/// Why a dataplane operation failed.
#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    /// The TUN device could not be opened or configured.
    #[error("cannot set up TUN device `{name}`: {source}")]
    Tun {
        /// The device name.
        name: String,
        /// The system's reason.
        source: io::Error,
    },
    /// A WAN socket could not be opened or bound.
    #[error("cannot open the {what} socket on {addr}: {source}")]
    Socket {
        /// "UDP" or "raw ESP".
        what: &'static str,
        /// The address it was to bind.
        addr: SocketAddr,
        /// The system's reason.
        source: io::Error,
    },
    /// A worker thread could not be started.
    #[error("cannot start worker thread: {0}")]
    Thread(io::Error),
    /// An SPD table older than (or as old as) the published one.
    #[error("SPD generation {new} is not newer than the published generation {current}")]
    StaleSpd {
        /// The refused table's generation.
        new: u64,
        /// The published table's generation.
        current: u64,
    },
    /// A security-group table older than (or as old as) the published one.
    #[error(
        "security-group table generation {new} is not newer than the published generation {current}"
    )]
    StaleSg {
        /// The refused table's generation.
        new: u64,
        /// The published table's generation.
        current: u64,
    },
    /// An inbound SA with the same SPI is installed.
    #[error("an inbound SA with SPI {0:#010x} is already installed")]
    DuplicateSpi(u32),
    /// No inbound SA has this SPI.
    #[error("no inbound SA has SPI {0:#010x}")]
    UnknownSpi(u32),
    /// No outbound SA is installed for this CHILD SA.
    #[error("tunnel `{tunnel}` child `{child}` has no outbound SA")]
    NoOutbound {
        /// The tunnel.
        tunnel: String,
        /// The CHILD SA.
        child: String,
    },
    /// The SA's encapsulation needs the raw ESP socket, which is not open.
    #[error("plain ESP (protocol 50) is disabled in this dataplane's configuration")]
    RawEspDisabled,
    /// The outer address family of the SA's peer differs from the WAN address's.
    #[error("peer {peer} is not of the WAN address family ({wan})")]
    AddressFamily {
        /// The SA's peer.
        peer: IpAddr,
        /// The WAN address.
        wan: IpAddr,
    },
    /// Sending a NAT-keepalive failed.
    #[error("cannot send a NAT-keepalive to {to}: {source}")]
    SendKeepalive {
        /// The destination.
        to: SocketAddr,
        /// The system's reason.
        source: io::Error,
    },
    /// Sending an IKE message failed.
    #[error("cannot send IKE message to {to}: {source}")]
    SendIke {
        /// The destination.
        to: SocketAddr,
        /// The system's reason.
        source: io::Error,
    },
}

/// One SA's counters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SaStats {
    /// The SPI.
    pub spi: u32,
    /// Which way it carries traffic.
    pub direction: Direction,
    /// Its tunnel.
    pub tunnel: String,
    /// Its CHILD SA.
    pub child: String,
    /// Packets, bytes and drops.
    pub counters: SaCounters,
}

/// A reading of every counter.
#[derive(Clone, Debug)]
pub struct Counters {
    /// The published SPD's generation.
    pub spd_generation: u64,
    /// The published security-group table's generation.
    pub sg_generation: u64,
    /// Security-group and network-ACL drops by deciding rule, most drops first (at most
    /// [`filter::MAX_RULE_DROPS`] rules).
    pub rule_drops: Vec<RuleDrop>,
    /// Drops of rules evicted from `rule_drops` to keep it bounded.
    pub rule_drops_evicted: u64,
    /// The flow table of stateful security groups, summed over its shards.
    pub flows: FlowCounters,
    /// Flows tracked now.
    pub flows_live: u64,
    /// Every drop by reason (SA-level drops included: an SA's own counters hold its share).
    pub drops: DropCounts,
    /// IO counts.
    pub io: IoCounts,
    /// Installed SAs.
    pub sas: Vec<SaStats>,
    /// Per tunnel, the final counters of every SA it no longer has: a tunnel's totals are
    /// these plus its installed SAs', exact across rekeys.
    pub retired: HashMap<String, Retired>,
}

/// State shared by the handle and the workers.
struct Shared {
    cfg: Config,
    state: ArcSwap<Snapshot>,
    sad: Mutex<Sad>,
    /// The security-group table and LAN bindings the workers use.
    sg: ArcSwap<SgState>,
    /// The control side of `sg` (serialises publishers).
    sg_ctl: Mutex<(Arc<SgTable>, Vec<LanBinding>)>,
    filter: Filter,
    drops: Atomics<Drop, { Drop::COUNT }>,
    io: Atomics<Io, { Io::COUNT }>,
    events: SyncSender<Event>,
    stop: AtomicBool,
    tun: Tun,
    udp: WanSocket,
    raw: Option<WanSocket>,
    last_acquire: Mutex<HashMap<(String, String), Instant>>,
    /// Largest packet a worker buffer must hold.
    buf_size: usize,
    /// Send ESP in UDP with `UDP_SEGMENT`.
    udp_gso: bool,
}

impl Shared {
    fn emit(&self, e: Event) {
        if let Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) = self.events.try_send(e)
        {
            self.io.count(Io::EventsLost);
        }
    }

    fn lock_sad(&self) -> MutexGuard<'_, Sad> {
        self.sad.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn publish(&self, sad: &Sad) {
        self.state.store(Arc::new(sad.snapshot()));
    }

    /// Raises an acquire for `tunnel`/`child` unless one was raised within the interval.
    fn acquire(&self, tunnel: &str, child: &str, flow: FlowKey, now: Instant) {
        let mut last = self.last_acquire.lock().unwrap_or_else(|p| p.into_inner());
        let key = (tunnel.to_owned(), child.to_owned());
        if last
            .get(&key)
            .is_some_and(|t| now.saturating_duration_since(*t) < self.cfg.acquire_interval)
        {
            return;
        }
        last.insert(key, now);
        drop(last);
        self.io.count(Io::Acquires);
        self.emit(Event::Acquire { tunnel: tunnel.to_owned(), child: child.to_owned(), flow });
    }
}

/// A running dataplane. Dropping it stops the workers and closes the TUN device and sockets.
pub struct Dataplane {
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
    tun_name: String,
    udp_addr: SocketAddr,
}

impl std::fmt::Debug for Dataplane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dataplane")
            .field("tun", &self.tun_name)
            .field("udp", &self.udp_addr)
            .finish_non_exhaustive()
    }
}

impl Dataplane {
    /// Opens the TUN device and the WAN sockets in the calling thread's network namespace,
    /// starts the workers, and returns the handle and the event receiver. Until an SPD table
    /// is published every packet from the TUN device is dropped (`spd-no-policy`).
    pub fn start(cfg: Config) -> Result<(Dataplane, Receiver<Event>), DataplaneError> {
        let tun = Tun::open(&cfg.tun_name, false, cfg.tun_offload)
            .map_err(|source| DataplaneError::Tun { name: cfg.tun_name.clone(), source })?;
        let tun_mtu = cfg.effective_tun_mtu();
        sys::set_mtu_and_up(tun.name(), tun_mtu)
            .map_err(|source| DataplaneError::Tun { name: cfg.tun_name.clone(), source })?;
        let udp_bind = SocketAddr::new(cfg.wan_addr, cfg.udp_port);
        let udp = WanSocket::udp(udp_bind).map_err(|source| DataplaneError::Socket {
            what: "UDP",
            addr: udp_bind,
            source,
        })?;
        let udp_addr = udp.local_addr().map_err(|source| DataplaneError::Socket {
            what: "UDP",
            addr: udp_bind,
            source,
        })?;
        let raw = if cfg.raw_esp {
            let addr = SocketAddr::new(cfg.wan_addr, 0);
            Some(WanSocket::raw_esp(cfg.wan_addr).map_err(|source| DataplaneError::Socket {
                what: "raw ESP",
                addr,
                source,
            })?)
        } else {
            None
        };
        let (tx, rx) = std::sync::mpsc::sync_channel(cfg.event_capacity.max(1));
        let udp_gso = cfg.udp_offload;
        let buf_size = (tun_mtu.max(cfg.tunnel_mtu) as usize + 256).max(2048);
        let empty = Arc::new(SgTable::empty(0));
        let filter = Filter::new(&cfg.flow, cfg.flow_shards);
        let shared = Arc::new(Shared {
            cfg,
            state: ArcSwap::from_pointee(Snapshot::default()),
            sad: Mutex::new(Sad::default()),
            sg: ArcSwap::from_pointee(SgState::new(empty.clone(), &[])),
            sg_ctl: Mutex::new((empty, Vec::new())),
            filter,
            drops: Atomics::default(),
            io: Atomics::default(),
            events: tx,
            stop: AtomicBool::new(false),
            tun,
            udp,
            raw,
            last_acquire: Mutex::new(HashMap::new()),
            buf_size,
            udp_gso,
        });
        let tun_name = shared.tun.name().to_owned();
        let mut dp = Dataplane { shared: shared.clone(), threads: Vec::new(), tun_name, udp_addr };
        let nice = shared.cfg.worker_nice;
        let spawn = |name: &str, f: Box<dyn FnOnce() + Send>| {
            std::thread::Builder::new()
                .name(name.into())
                .spawn(move || {
                    if let Some(n) = nice {
                        sys::set_thread_nice(n);
                    }
                    f()
                })
                .map_err(DataplaneError::Thread)
        };
        let s = shared.clone();
        dp.threads.push(spawn("isthmus-tun", Box::new(move || worker::outbound(&s)))?);
        let s = shared.clone();
        dp.threads.push(spawn("isthmus-udp", Box::new(move || worker::inbound(&s, true)))?);
        if shared.raw.is_some() {
            let s = shared.clone();
            dp.threads.push(spawn("isthmus-esp", Box::new(move || worker::inbound(&s, false)))?);
        }
        let s = shared;
        dp.threads.push(spawn("isthmus-hk", Box::new(move || worker::housekeeping(&s)))?);
        Ok((dp, rx))
    }

    /// The TUN device's name.
    pub fn tun_name(&self) -> &str {
        &self.tun_name
    }

    /// The address the UDP socket is bound to.
    pub fn udp_addr(&self) -> SocketAddr {
        self.udp_addr
    }

    /// Publishes a new SPD table; its generation must be newer than the current one's.
    pub fn publish_spd(&self, table: SpdTable) -> Result<(), DataplaneError> {
        let mut sad = self.shared.lock_sad();
        sad.publish_spd(table)?;
        self.shared.publish(&sad);
        Ok(())
    }

    /// Publishes a new security-group table (security groups and network ACLs of every
    /// attachment, see [`filter`]); its generation must be newer than the current one's (the
    /// initial empty table has generation 0). Workers switch to it between two packets; flows
    /// admitted under an older generation are re-evaluated on their next packet.
    pub fn publish_sg(&self, table: impl Into<Arc<SgTable>>) -> Result<(), DataplaneError> {
        // An `Arc` lets the control plane share the table it validated instead of a second build.
        let table: Arc<SgTable> = table.into();
        let mut ctl = self.shared.sg_ctl.lock().unwrap_or_else(|p| p.into_inner());
        let current = ctl.0.generation();
        if table.generation() <= current && current != 0 {
            return Err(DataplaneError::StaleSg { new: table.generation(), current });
        }
        ctl.0 = table;
        self.shared.sg.store(Arc::new(SgState::new(ctl.0.clone(), &ctl.1)));
        Ok(())
    }

    /// Binds LAN prefixes to LAN attachment names, so that the chains bound to a LAN apply to
    /// the traffic of its hosts (see [`filter`]). Replaces the previous bindings.
    pub fn publish_lans(&self, lans: Vec<LanBinding>) {
        let mut ctl = self.shared.sg_ctl.lock().unwrap_or_else(|p| p.into_inner());
        ctl.1 = lans;
        self.shared.sg.store(Arc::new(SgState::new(ctl.0.clone(), &ctl.1)));
    }

    /// The SPD table the workers use now (for the path tracer: one truth).
    pub fn spd(&self) -> Arc<SpdTable> {
        self.shared.state.load().spd.clone()
    }

    /// The security-group table the workers use now (for the path tracer: one truth).
    pub fn sg(&self) -> Arc<SgTable> {
        self.shared.sg.load().table.clone()
    }

    /// What the workers would do now with a new flow crossing `tunnel` in `direction`, and
    /// with its reply: [`filter::trace`] over the published table and LAN bindings.
    pub fn trace_filter(
        &self,
        tunnel: &str,
        direction: isthmus_tables::sg::Direction,
        key: &FlowKey,
    ) -> (Vec<ChainVerdict>, Vec<ChainVerdict>) {
        let ctl = self.shared.sg_ctl.lock().unwrap_or_else(|p| p.into_inner());
        filter::trace(&ctl.0, &ctl.1, tunnel, direction, key)
    }

    /// The LAN bindings the workers use now.
    pub fn lans(&self) -> Vec<LanBinding> {
        self.shared.sg_ctl.lock().unwrap_or_else(|p| p.into_inner()).1.clone()
    }

    /// Takes up to `max` flows waiting for the security-group plugin's decision (their
    /// packets are dropped and counted as `punt-pending` meanwhile).
    pub fn take_punts(&self, max: usize) -> Vec<PuntRequest> {
        self.shared.filter.take_punts(max)
    }

    /// Applies the plugin's decision for a punted flow; `rule` names the rule it decided by.
    /// False when the flow no longer waits (it timed out or expired).
    pub fn resolve_punt(&self, req: &PuntRequest, allow: bool, rule: &str) -> bool {
        self.shared.filter.resolve(req, allow, rule, Instant::now())
    }

    fn outbound_entry(
        &self,
        b: OutboundBinding,
        sa: OutboundSa,
    ) -> Result<Outbound, DataplaneError> {
        let wan = self.shared.cfg.wan_addr;
        let (dest, udp) = match b.encap {
            Encap::Udp { peer } => (peer, true),
            Encap::Esp { peer } => {
                if self.shared.raw.is_none() {
                    return Err(DataplaneError::RawEspDisabled);
                }
                (SocketAddr::new(peer, 0), false)
            }
        };
        if dest.is_ipv4() != wan.is_ipv4() {
            return Err(DataplaneError::AddressFamily { peer: dest.ip(), wan });
        }
        Ok(Outbound {
            sa: Arc::new(sa),
            att: isthmus_tables::sg::AttachmentId::of(&b.tunnel),
            tunnel: b.tunnel,
            child: b.child,
            encap: b.encap,
            dest,
            outer_len: self.shared.cfg.outer_len(udp),
        })
    }

    /// Installs the outbound SA of a CHILD SA, replacing the current one atomically (the
    /// make-before-break switch of a rekey). Returns the SPI it replaced.
    pub fn install_outbound(
        &self,
        binding: OutboundBinding,
        sa: OutboundSa,
    ) -> Result<Option<u32>, DataplaneError> {
        let o = self.outbound_entry(binding, sa)?;
        let mut sad = self.shared.lock_sad();
        let old = sad.install_outbound(o);
        self.shared.publish(&sad);
        Ok(old)
    }

    /// Removes the outbound SA of a CHILD SA; returns its SPI.
    pub fn remove_outbound(&self, tunnel: &str, child: &str) -> Result<u32, DataplaneError> {
        let mut sad = self.shared.lock_sad();
        let spi = sad.remove_outbound(tunnel, child)?;
        self.shared.publish(&sad);
        Ok(spi)
    }

    /// Adds an inbound SA.
    pub fn add_inbound(
        &self,
        binding: InboundBinding,
        sa: InboundSa,
    ) -> Result<(), DataplaneError> {
        let mut sad = self.shared.lock_sad();
        sad.add_inbound(Inbound {
            sa: Arc::new(sa),
            att: isthmus_tables::sg::AttachmentId::of(&binding.tunnel),
            tunnel: binding.tunnel,
            child: binding.child,
            selectors: binding.selectors,
        })?;
        self.shared.publish(&sad);
        Ok(())
    }

    /// Adds the new inbound SA of a rekey and retires `old_spi`, which keeps decrypting until
    /// the new SA has carried traffic for the linger time, or the grace time passes.
    pub fn rekey_inbound(
        &self,
        old_spi: u32,
        binding: InboundBinding,
        sa: InboundSa,
    ) -> Result<(), DataplaneError> {
        let mut sad = self.shared.lock_sad();
        let new = Inbound {
            sa: Arc::new(sa),
            att: isthmus_tables::sg::AttachmentId::of(&binding.tunnel),
            tunnel: binding.tunnel,
            child: binding.child,
            selectors: binding.selectors,
        };
        sad.rekey_inbound(old_spi, new, Instant::now(), self.shared.cfg.rekey_grace)?;
        self.shared.publish(&sad);
        Ok(())
    }

    /// Removes an inbound SA now.
    pub fn remove_inbound(&self, spi: u32) -> Result<(), DataplaneError> {
        let mut sad = self.shared.lock_sad();
        sad.remove_inbound(spi)?;
        self.shared.publish(&sad);
        Ok(())
    }

    /// Reads every counter.
    pub fn counters(&self) -> Counters {
        let mut sad = self.shared.lock_sad();
        let retired = sad.retired();
        let (outs, ins) = sad.all();
        let mut sas: Vec<SaStats> = outs
            .iter()
            .map(|o| SaStats {
                spi: o.sa.spi(),
                direction: Direction::Outbound,
                tunnel: o.tunnel.clone(),
                child: o.child.clone(),
                counters: o.sa.counters(),
            })
            .chain(ins.iter().map(|i| SaStats {
                spi: i.sa.spi(),
                direction: Direction::Inbound,
                tunnel: i.tunnel.clone(),
                child: i.child.clone(),
                counters: i.sa.counters(),
            }))
            .collect();
        sas.sort_by_key(|s| {
            (s.tunnel.clone(), s.child.clone(), s.direction == Direction::Inbound, s.spi)
        });
        let (rule_drops, rule_drops_evicted) = self.shared.filter.read();
        let (flows, flows_live) = self.shared.filter.flow_counters();
        Counters {
            spd_generation: sad.generation(),
            sg_generation: self.shared.sg.load().table.generation(),
            rule_drops,
            rule_drops_evicted,
            flows,
            flows_live,
            drops: self.shared.drops.read(),
            io: self.shared.io.read(),
            sas,
            retired,
        }
    }

    /// Sends a NAT-keepalive (one `0xff` octet, RFC 3948 §2.3) from the shared UDP 4500
    /// socket to `to`, keeping a NAT mapping in front of this gateway open. The driver calls it
    /// when NAT was detected in front of this gateway and nothing was sent to the peer for the
    /// keepalive interval ([`NAT_KEEPALIVE_INTERVAL`] by default).
    pub fn send_keepalive(&self, to: SocketAddr) -> Result<(), DataplaneError> {
        self.shared
            .udp
            .send_to(&isthmus_wire::natt::KEEPALIVE, to)
            .map(|_| ())
            .map_err(|source| DataplaneError::SendKeepalive { to, source })
    }

    /// Sends an IKE message from the shared UDP socket, behind the non-ESP marker
    /// (RFC 3948 §2.2), as IKE does once it floated to port 4500 (RFC 7296 §2.23).
    pub fn send_ike(&self, to: SocketAddr, message: &[u8]) -> Result<(), DataplaneError> {
        let mut buf = Vec::with_capacity(message.len() + 4);
        buf.extend_from_slice(&[0; 4]);
        buf.extend_from_slice(message);
        self.shared
            .udp
            .send_to(&buf, to)
            .map(|_| ())
            .map_err(|source| DataplaneError::SendIke { to, source })
    }

    /// Asks the workers to stop, without waiting: for a handle shared with readers, which
    /// cannot be [`Dataplane::stop`]ped (dropping the last handle waits for the workers).
    pub fn halt(&self) {
        self.shared.stop.store(true, Ordering::Relaxed);
    }

    /// Stops the workers and waits for them.
    pub fn stop(mut self) {
        self.stop_threads();
    }

    fn stop_threads(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl std::ops::Drop for Dataplane {
    fn drop(&mut self) {
        self.stop_threads();
    }
}

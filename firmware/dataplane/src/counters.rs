//! The dataplane's counters: every drop by [`Drop`] reason and every IO count by [`Io`] kind,
//! each kind one relaxed atomic in one array indexed by its enum. Workers count a batch into a
//! local [`Counts`] and add it to the shared array once per batch.
//!
//! The names ([`Drop::as_str`], [`Io::as_str`]) are what the API, the CLI and the metrics show;
//! they must not change.

use std::fmt;
use std::marker::PhantomData;
use std::ops::{Index, IndexMut};
use std::sync::atomic::{AtomicU64, Ordering};

use isthmus_esp::DropReason;
use isthmus_tables::sg::{ChainKind, Direction};

/// An enum whose variants index one array of counters.
pub trait Counter: Copy + 'static {
    /// Every variant, in index order.
    const ALL: &'static [Self];
    /// The variant's index (its discriminant).
    fn index(self) -> usize;
    /// The external name.
    fn as_str(self) -> &'static str;
}

/// Why the dataplane dropped a packet, by stage of the packet path ([`Drop::stage`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Drop {
    /// Network ACL, tunnel to LAN.
    NaclIn,
    /// Network ACL, LAN to tunnel.
    NaclOut,
    /// Security group, tunnel to LAN.
    SgIn,
    /// Security group, LAN to tunnel.
    SgOut,
    /// A new flow while the flow table was full.
    FlowTableFull,
    /// A packet of a flow waiting for the security-group plugin's decision.
    PuntPending,
    /// A link-scoped packet from the TUN device, never tunnel traffic.
    LinkScope,
    /// No SPD entry matched.
    SpdNoPolicy,
    /// A `discard` SPD entry matched.
    SpdDiscard,
    /// A `bypass` SPD entry matched inside the tunnel device.
    SpdBypass,
    /// Protected traffic without a usable outbound SA.
    NoSa,
    /// The outbound SA expired.
    SaExpired,
    /// A decrypted packet outside its SA's traffic selectors (RFC 4301 §5.2).
    SelectorMismatch,
    /// A packet too big for the tunnel MTU.
    TooBig,
    /// A replayed sequence number (RFC 4303 §3.4.3).
    Replay,
    /// A sequence number left of the anti-replay window (RFC 4303 §3.4.3).
    OutsideWindow,
    /// ICV verification failed.
    Icv,
    /// Bad ESP padding (RFC 4303 §2.4).
    BadPadding,
    /// No inbound SA with the packet's SPI.
    UnknownSpi,
    /// A malformed packet.
    Malformed,
}

impl Drop {
    /// Number of reasons.
    pub const COUNT: usize = 20;

    /// Every reason, in counter order (grouped by stage, along the packet path).
    pub const ALL: [Drop; Drop::COUNT] = [
        Drop::NaclIn,
        Drop::NaclOut,
        Drop::SgIn,
        Drop::SgOut,
        Drop::FlowTableFull,
        Drop::PuntPending,
        Drop::LinkScope,
        Drop::SpdNoPolicy,
        Drop::SpdDiscard,
        Drop::SpdBypass,
        Drop::NoSa,
        Drop::SaExpired,
        Drop::SelectorMismatch,
        Drop::TooBig,
        Drop::Replay,
        Drop::OutsideWindow,
        Drop::Icv,
        Drop::BadPadding,
        Drop::UnknownSpi,
        Drop::Malformed,
    ];

    /// The stage of the packet path that drops (the `stage` label of `isthmus_drops_total`).
    pub const fn stage(self) -> &'static str {
        match self {
            Drop::NaclIn | Drop::NaclOut => "nacl",
            Drop::SgIn | Drop::SgOut => "sg",
            Drop::FlowTableFull | Drop::PuntPending => "flow",
            Drop::LinkScope | Drop::SpdNoPolicy | Drop::SpdDiscard | Drop::SpdBypass => "spd",
            Drop::NoSa | Drop::SaExpired => "sa",
            Drop::SelectorMismatch => "selector",
            Drop::TooBig => "mtu",
            Drop::Replay
            | Drop::OutsideWindow
            | Drop::Icv
            | Drop::BadPadding
            | Drop::UnknownSpi => "esp",
            Drop::Malformed => "parse",
        }
    }

    /// The kebab-case name the API, the CLI and the metrics show (`spd-no-policy`, ...).
    pub const fn as_str(self) -> &'static str {
        match self {
            Drop::NaclIn => "nacl-in",
            Drop::NaclOut => "nacl-out",
            Drop::SgIn => "sg-in",
            Drop::SgOut => "sg-out",
            Drop::FlowTableFull => "flow-table-full",
            Drop::PuntPending => "punt-pending",
            Drop::LinkScope => "link-scope",
            Drop::SpdNoPolicy => "spd-no-policy",
            Drop::SpdDiscard => "spd-discard",
            Drop::SpdBypass => "spd-bypass",
            Drop::NoSa => "no-sa",
            Drop::SaExpired => "sa-expired",
            Drop::SelectorMismatch => "selector-mismatch",
            Drop::TooBig => "too-big",
            Drop::Replay => "replay",
            Drop::OutsideWindow => "outside-window",
            Drop::Icv => "icv",
            Drop::BadPadding => "bad-padding",
            Drop::UnknownSpi => "unknown-spi",
            Drop::Malformed => "malformed",
        }
    }

    /// The reason named by [`as_str`](Self::as_str).
    pub fn from_name(name: &str) -> Option<Drop> {
        Drop::ALL.into_iter().find(|d| d.as_str() == name)
    }

    /// The counter of a network-ACL or security-group chain's drops.
    pub const fn of_chain(kind: ChainKind, direction: Direction) -> Drop {
        match (kind, direction) {
            (ChainKind::NetworkAcl, Direction::Inbound) => Drop::NaclIn,
            (ChainKind::NetworkAcl, Direction::Outbound) => Drop::NaclOut,
            (ChainKind::SecurityGroup, Direction::Inbound) => Drop::SgIn,
            (ChainKind::SecurityGroup, Direction::Outbound) => Drop::SgOut,
        }
    }
}

impl From<DropReason> for Drop {
    /// The dataplane counter of an SA-level drop.
    fn from(r: DropReason) -> Drop {
        match r {
            DropReason::IcvFailure => Drop::Icv,
            DropReason::Replay => Drop::Replay,
            DropReason::OutsideWindow => Drop::OutsideWindow,
            DropReason::Malformed => Drop::Malformed,
            DropReason::UnknownSpi => Drop::UnknownSpi,
            DropReason::SelectorMismatch => Drop::SelectorMismatch,
            DropReason::TooBig => Drop::TooBig,
            DropReason::NoSa => Drop::NoSa,
            DropReason::Expired => Drop::SaExpired,
            DropReason::BadPadding => Drop::BadPadding,
        }
    }
}

impl Counter for Drop {
    const ALL: &'static [Drop] = &Drop::ALL;
    fn index(self) -> usize {
        self as usize
    }
    fn as_str(self) -> &'static str {
        Drop::as_str(self)
    }
}

/// What the dataplane moved and told (besides drops).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Io {
    /// Packets read from the TUN device.
    TunRx,
    /// Packets written to the TUN device (decrypted, and ICMP errors).
    TunTx,
    /// Datagrams received on the WAN (ESP, IKE and keepalives).
    WanRx,
    /// ESP packets sent on the WAN.
    WanTx,
    /// IKE messages handed to the control plane.
    IkeRx,
    /// NAT-T keepalives received (and ignored, RFC 3948 §2.3).
    Keepalives,
    /// ICMP "too big" errors sent to LAN senders.
    IcmpTooBig,
    /// TCP SYNs whose MSS was lowered.
    MssClamped,
    /// Dummy packets (next header 59) dropped silently (RFC 4303 §2.6).
    Dummies,
    /// Acquire events raised.
    Acquires,
    /// Events dropped because the control plane did not read them fast enough.
    EventsLost,
    /// Errors from sending on the WAN or writing to TUN.
    IoErrors,
}

impl Io {
    /// Number of kinds.
    pub const COUNT: usize = 12;

    /// Every kind, in counter order.
    pub const ALL: [Io; Io::COUNT] = [
        Io::TunRx,
        Io::TunTx,
        Io::WanRx,
        Io::WanTx,
        Io::IkeRx,
        Io::Keepalives,
        Io::IcmpTooBig,
        Io::MssClamped,
        Io::Dummies,
        Io::Acquires,
        Io::EventsLost,
        Io::IoErrors,
    ];

    /// The snake-case name (the `path` label of `isthmus_dataplane_packets_total`).
    pub const fn as_str(self) -> &'static str {
        match self {
            Io::TunRx => "tun_rx",
            Io::TunTx => "tun_tx",
            Io::WanRx => "wan_rx",
            Io::WanTx => "wan_tx",
            Io::IkeRx => "ike_rx",
            Io::Keepalives => "keepalives",
            Io::IcmpTooBig => "icmp_too_big",
            Io::MssClamped => "mss_clamped",
            Io::Dummies => "dummies",
            Io::Acquires => "acquires",
            Io::EventsLost => "events_lost",
            Io::IoErrors => "io_errors",
        }
    }
}

impl Counter for Io {
    const ALL: &'static [Io] = &Io::ALL;
    fn index(self) -> usize {
        self as usize
    }
    fn as_str(self) -> &'static str {
        Io::as_str(self)
    }
}

/// One count per `K`: a reading of the counters, or one worker's batch.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Counts<K, const N: usize> {
    n: [u64; N],
    k: PhantomData<K>,
}

/// Every drop by reason.
pub type DropCounts = Counts<Drop, { Drop::COUNT }>;
/// Every IO count by kind.
pub type IoCounts = Counts<Io, { Io::COUNT }>;

impl<K, const N: usize> Default for Counts<K, N> {
    fn default() -> Self {
        Counts { n: [0; N], k: PhantomData }
    }
}

impl<K: Counter, const N: usize> Counts<K, N> {
    /// Every kind with its count, in `K::ALL` order.
    pub fn iter(&self) -> impl Iterator<Item = (K, u64)> + '_ {
        K::ALL.iter().map(|&k| (k, self.n[k.index()]))
    }

    /// The sum over every kind.
    pub fn total(&self) -> u64 {
        self.n.iter().sum()
    }
}

impl<K: Counter, const N: usize> Index<K> for Counts<K, N> {
    type Output = u64;
    #[inline]
    fn index(&self, k: K) -> &u64 {
        &self.n[k.index()]
    }
}

impl<K: Counter, const N: usize> IndexMut<K> for Counts<K, N> {
    #[inline]
    fn index_mut(&mut self, k: K) -> &mut u64 {
        &mut self.n[k.index()]
    }
}

impl<K: Counter, const N: usize> fmt::Debug for Counts<K, N> {
    /// The non-zero counts by name.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(self.iter().filter(|(_, n)| *n != 0).map(|(k, n)| (k.as_str(), n)))
            .finish()
    }
}

/// The shared counters of `K`, one relaxed atomic each: statistics, read while workers count.
pub(crate) struct Atomics<K, const N: usize> {
    n: [AtomicU64; N],
    k: PhantomData<K>,
}

impl<K, const N: usize> Default for Atomics<K, N> {
    fn default() -> Self {
        Atomics { n: std::array::from_fn(|_| AtomicU64::new(0)), k: PhantomData }
    }
}

impl<K: Counter, const N: usize> Atomics<K, N> {
    /// Counts one (outside the batched paths).
    pub(crate) fn count(&self, k: K) {
        self.n[k.index()].fetch_add(1, Ordering::Relaxed);
    }

    /// Adds a batch and zeroes it; untouched counters cost no atomic operation.
    pub(crate) fn add(&self, local: &mut Counts<K, N>) {
        for (c, v) in self.n.iter().zip(&mut local.n) {
            if *v != 0 {
                c.fetch_add(std::mem::take(v), Ordering::Relaxed);
            }
        }
    }

    /// A copy of every count.
    pub(crate) fn read(&self) -> Counts<K, N> {
        Counts { n: std::array::from_fn(|i| self.n[i].load(Ordering::Relaxed)), k: PhantomData }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn indices_match_all_and_names_round_trip() {
        for (i, d) in Drop::ALL.into_iter().enumerate() {
            assert_eq!(Counter::index(d), i);
            assert_eq!(Drop::from_name(d.as_str()), Some(d));
        }
        for (i, k) in Io::ALL.into_iter().enumerate() {
            assert_eq!(Counter::index(k), i);
        }
        assert_eq!(Drop::from_name("no_policy"), None);
    }

    /// The external names, as the API, the CLI and `isthmus_drops_total` have always shown them.
    #[test]
    fn names_and_stages_are_the_published_ones() {
        let names: Vec<(&str, &str)> = Drop::ALL.iter().map(|d| (d.stage(), d.as_str())).collect();
        assert_eq!(
            names,
            [
                ("nacl", "nacl-in"),
                ("nacl", "nacl-out"),
                ("sg", "sg-in"),
                ("sg", "sg-out"),
                ("flow", "flow-table-full"),
                ("flow", "punt-pending"),
                ("spd", "link-scope"),
                ("spd", "spd-no-policy"),
                ("spd", "spd-discard"),
                ("spd", "spd-bypass"),
                ("sa", "no-sa"),
                ("sa", "sa-expired"),
                ("selector", "selector-mismatch"),
                ("mtu", "too-big"),
                ("esp", "replay"),
                ("esp", "outside-window"),
                ("esp", "icv"),
                ("esp", "bad-padding"),
                ("esp", "unknown-spi"),
                ("parse", "malformed"),
            ]
        );
        // Every SA-level reason has its own dataplane counter.
        let mut mapped: Vec<Drop> = DropReason::ALL.into_iter().map(Drop::from).collect();
        mapped.sort();
        mapped.dedup();
        assert_eq!(mapped.len(), DropReason::COUNT);
    }

    #[test]
    fn batches_add_and_reset() {
        let a: Atomics<Drop, { Drop::COUNT }> = Atomics::default();
        let mut local = DropCounts::default();
        local[Drop::SpdNoPolicy] += 2;
        local[Drop::from(DropReason::IcvFailure)] += 1;
        a.add(&mut local);
        a.count(Drop::SpdNoPolicy);
        assert_eq!(local.total(), 0);
        let r = a.read();
        assert_eq!((r[Drop::SpdNoPolicy], r[Drop::Icv], r.total()), (3, 1, 4));
        assert_eq!(format!("{r:?}"), r#"{"spd-no-policy": 3, "icv": 1}"#);
    }
}

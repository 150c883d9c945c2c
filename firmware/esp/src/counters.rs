//! Per-SA counters and the reasons a packet is dropped.
//!
//! Drop reasons are shared with the dataplane, which counts the ones only it can see (unknown
//! SPI, no SA, selector mismatch) in its own [`DropCounters`]. Counters are relaxed atomics:
//! they are statistics, read while worker threads keep counting.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

/// Why a packet was dropped. Also the error of the per-packet operations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, thiserror::Error)]
pub enum DropReason {
    /// The ICV did not verify: tampered, truncated inside the ciphertext, or wrong key.
    #[error("ICV verification failed")]
    IcvFailure,
    /// The sequence number was already received (RFC 4303 §3.4.3).
    #[error("replayed sequence number")]
    Replay,
    /// The sequence number lies left of the anti-replay window (RFC 4303 §3.4.3).
    #[error("sequence number outside the anti-replay window")]
    OutsideWindow,
    /// Not a well-formed ESP packet or inner packet (too short, bad length, not IP).
    #[error("malformed packet")]
    Malformed,
    /// No inbound SA has this SPI.
    #[error("unknown SPI")]
    UnknownSpi,
    /// The decrypted inner packet lies outside the SA's traffic selectors.
    #[error("inner packet outside the SA's traffic selectors")]
    SelectorMismatch,
    /// The packet does not fit the buffer or the tunnel MTU.
    #[error("packet too big")]
    TooBig,
    /// The packet matches a protected selector but no usable SA exists.
    #[error("no SA for a protected flow")]
    NoSa,
    /// The SA reached its hard lifetime or ran out of sequence numbers.
    #[error("SA expired")]
    Expired,
    /// The padding is not 1, 2, 3, ... or the pad length exceeds the payload (RFC 4303 §2.4).
    #[error("bad ESP padding")]
    BadPadding,
}

impl DropReason {
    /// Number of reasons.
    pub const COUNT: usize = 10;

    /// Every reason, in counter order.
    pub const ALL: [DropReason; DropReason::COUNT] = [
        DropReason::IcvFailure,
        DropReason::Replay,
        DropReason::OutsideWindow,
        DropReason::Malformed,
        DropReason::UnknownSpi,
        DropReason::SelectorMismatch,
        DropReason::TooBig,
        DropReason::NoSa,
        DropReason::Expired,
        DropReason::BadPadding,
    ];

    /// The snake-case name used in metrics and the API (`icv_failure`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::IcvFailure => "icv_failure",
            DropReason::Replay => "replay",
            DropReason::OutsideWindow => "outside_window",
            DropReason::Malformed => "malformed",
            DropReason::UnknownSpi => "unknown_spi",
            DropReason::SelectorMismatch => "selector_mismatch",
            DropReason::TooBig => "too_big",
            DropReason::NoSa => "no_sa",
            DropReason::Expired => "expired",
            DropReason::BadPadding => "bad_padding",
        }
    }

    /// The reason named by [`as_str`](Self::as_str).
    pub fn from_name(name: &str) -> Option<DropReason> {
        DropReason::ALL.into_iter().find(|r| r.as_str() == name)
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// One counter per [`DropReason`].
#[derive(Default)]
pub struct DropCounters {
    counts: [AtomicU64; DropReason::COUNT],
}

impl DropCounters {
    /// All zero.
    pub fn new() -> DropCounters {
        DropCounters::default()
    }

    /// Counts one drop.
    #[inline]
    pub fn count(&self, reason: DropReason) {
        self.counts[reason.index()].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts `n` drops (for batched paths).
    #[inline]
    pub fn add(&self, reason: DropReason, n: u64) {
        self.counts[reason.index()].fetch_add(n, Ordering::Relaxed);
    }

    /// The current count for one reason.
    pub fn get(&self, reason: DropReason) -> u64 {
        self.counts[reason.index()].load(Ordering::Relaxed)
    }

    /// A copy of every count.
    pub fn snapshot(&self) -> DropSnapshot {
        let mut s = DropSnapshot::default();
        for r in DropReason::ALL {
            s.counts[r.index()] = self.get(r);
        }
        s
    }
}

impl fmt::Debug for DropCounters {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.snapshot().fmt(f)
    }
}

/// A copy of [`DropCounters`] at one moment.
#[derive(Clone, Copy, PartialEq, Eq, Default)]
pub struct DropSnapshot {
    counts: [u64; DropReason::COUNT],
}

impl DropSnapshot {
    /// The count for one reason.
    pub fn get(&self, reason: DropReason) -> u64 {
        self.counts[reason.index()]
    }

    /// The sum over every reason.
    pub fn total(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// Every reason with its count, in [`DropReason::ALL`] order.
    pub fn iter(&self) -> impl Iterator<Item = (DropReason, u64)> + '_ {
        DropReason::ALL.into_iter().map(|r| (r, self.get(r)))
    }

    /// Adds another snapshot (to carry counts across a rekey, or sum SAs).
    pub fn add(&mut self, other: &DropSnapshot) {
        for (a, b) in self.counts.iter_mut().zip(other.counts) {
            *a += b;
        }
    }
}

impl fmt::Debug for DropSnapshot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(self.iter().filter(|(_, n)| *n != 0).map(|(r, n)| (r.as_str(), n)))
            .finish()
    }
}

/// What an SA has carried and dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SaCounters {
    /// Packets encapsulated (outbound) or decapsulated and accepted (inbound), dummies included.
    pub packets: u64,
    /// Bytes of inner packets carried.
    pub bytes: u64,
    /// Packets dropped by this SA, by reason.
    pub drops: DropSnapshot,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_indices_match_all() {
        for (i, r) in DropReason::ALL.into_iter().enumerate() {
            assert_eq!(r.index(), i);
            assert_eq!(DropReason::from_name(r.as_str()), Some(r));
        }
        assert_eq!(DropReason::from_name("nope"), None);
    }

    #[test]
    fn counts_and_snapshots() {
        let c = DropCounters::new();
        c.count(DropReason::Replay);
        c.count(DropReason::Replay);
        c.add(DropReason::IcvFailure, 3);
        let s = c.snapshot();
        assert_eq!(s.get(DropReason::Replay), 2);
        assert_eq!(s.get(DropReason::IcvFailure), 3);
        assert_eq!(s.total(), 5);
        assert_eq!(format!("{s:?}"), r#"{"icv_failure": 3, "replay": 2}"#);
    }
}

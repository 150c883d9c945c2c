//! What the endpoint tells its driver: datagrams to send ([`Transmit`]) and [`Event`]s, among
//! them the [`Explanation`] of every failed negotiation.

use std::fmt;
use std::net::SocketAddr;

use zeroize::Zeroize;

use crate::codec::{ExchangeType, NotifyType};
use crate::config::TrafficSelector;
use crate::proposal::{EspSuite, IkeSuite};

/// A datagram to send.
///
/// The driver sends `data` from the socket bound to `local` (port 500 or 4500) to `remote`.
/// With `nat_t` set it first prepends the four-byte non-ESP marker (RFC 3948 §2.2). A NAT-T
/// keepalive (RFC 3948 §2.3) is the single byte `0xFF` sent from port 4500 with `nat_t` unset.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transmit {
    /// Our address and port to send from.
    pub local: SocketAddr,
    /// The peer's address and port.
    pub remote: SocketAddr,
    /// The IKE message (or keepalive byte).
    pub data: Vec<u8>,
    /// Prepend the non-ESP marker (the message goes over port 4500).
    pub nat_t: bool,
}

/// The keys of one direction of a CHILD SA (RFC 7296 §2.17): the SPI and the key material, the
/// encryption key (with the 4-byte salt of an AEAD cipher, RFC 4106 §8.1 and RFC 7634 §2) then the
/// integrity key of a CBC cipher. The ESP engine splits it by its transform. Debug output never
/// shows a key.
#[derive(Clone, PartialEq, Eq)]
pub struct ChildKeys {
    /// The ESP SPI of this direction.
    pub spi: u32,
    /// Encryption key || salt || integrity key, as KEYMAT lays them out.
    material: Vec<u8>,
}

impl ChildKeys {
    pub(crate) fn new(spi: u32, material: Vec<u8>) -> ChildKeys {
        ChildKeys { spi, material }
    }

    /// This direction's key material as KEYMAT lays it out (§2.17).
    pub fn material(&self) -> &[u8] {
        &self.material
    }
}

impl Drop for ChildKeys {
    fn drop(&mut self) {
        self.material.zeroize();
    }
}

impl fmt::Debug for ChildKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ChildKeys {{ spi: {:#010x}, key: <redacted> }}", self.spi)
    }
}

/// Why an SA went down.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DownReason {
    /// We were told to ([`crate::Endpoint::terminate`], removal of the tunnel).
    Terminated,
    /// The peer deleted it (INFORMATIONAL with a Delete payload).
    DeletedByPeer,
    /// Replaced by its rekeyed successor.
    Rekeyed,
    /// The hard lifetime passed before a rekey succeeded.
    Expired,
    /// The peer stopped answering (liveness check or another exchange timed out).
    DeadPeer,
    /// The peer sent INITIAL_CONTACT from a new IKE SA, or a duplicate IKE SA was dropped
    /// after simultaneous initiation.
    Replaced,
    /// The IKE SA that carried it went down.
    IkeSaGone,
    /// A rekey collision (§2.8.1) made this redundant SA lose.
    RekeyCollision,
}

impl fmt::Display for DownReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DownReason::Terminated => "terminated locally",
            DownReason::DeletedByPeer => "deleted by the peer",
            DownReason::Rekeyed => "replaced by a rekeyed SA",
            DownReason::Expired => "hard lifetime expired",
            DownReason::DeadPeer => "the peer stopped answering",
            DownReason::Replaced => "replaced by a newer IKE SA with the same peer",
            DownReason::IkeSaGone => "its IKE SA went down",
            DownReason::RekeyCollision => "lost a simultaneous rekey (RFC 7296 §2.8.1)",
        })
    }
}

/// What went wrong in a failed exchange.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Cause {
    /// The peer answered with this error notify.
    PeerRefused(NotifyType),
    /// We refused the peer's request with this error notify.
    WeRefused(NotifyType),
    /// No answer after every retransmission.
    Timeout {
        /// Transmissions sent (first one included).
        tries: u32,
    },
    /// The peer's answer could not be used (bad syntax, failed authentication of its AUTH).
    BadResponse(String),
}

impl fmt::Display for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Cause::PeerRefused(n) => write!(f, "the peer answered {n}"),
            Cause::WeRefused(n) => write!(f, "we answered the peer's request with {n}"),
            Cause::Timeout { tries } => write!(f, "no answer after {tries} transmissions"),
            Cause::BadResponse(why) => write!(f, "unusable answer from the peer: {why}"),
        }
    }
}

/// Why a negotiation failed, in terms an operator can act on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Explanation {
    /// The tunnel (empty when a request matched no configured tunnel).
    pub tunnel: String,
    /// The peer's address.
    pub peer: SocketAddr,
    /// The exchange that failed.
    pub exchange: ExchangeType,
    /// What happened.
    pub cause: Cause,
    /// What we offered or accept, strongSwan style (`IKE aes256gcm16-prfsha256-x25519`,
    /// `TS 10.1.0.0/16 === 10.2.0.0/16`).
    pub ours: String,
    /// What the peer offered or answered, strongSwan style, when known.
    pub theirs: Option<String>,
    /// The smallest configuration change that would make the two sides agree, when one can
    /// be named.
    pub suggestion: Option<String>,
}

impl fmt::Display for Explanation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.tunnel.is_empty() {
            write!(f, "peer {}: {} failed: {}", self.peer, self.exchange, self.cause)?;
        } else {
            write!(f, "tunnel `{}`: {} failed: {}", self.tunnel, self.exchange, self.cause)?;
        }
        write!(f, "; we offered {}", self.ours)?;
        if let Some(t) = &self.theirs {
            write!(f, "; the peer offered {t}")?;
        }
        if let Some(s) = &self.suggestion {
            write!(f, "; {s}")?;
        }
        Ok(())
    }
}

/// Something the driver must act on or report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// An IKE SA is established (IKE_AUTH done, or a rekeyed IKE SA took over).
    IkeSaUp {
        /// Tunnel name.
        tunnel: String,
        /// Our address in use (port 4500 after a NAT-T move).
        local: SocketAddr,
        /// The peer's address in use.
        peer: SocketAddr,
        /// Negotiated algorithms.
        suite: IkeSuite,
        /// Whether UDP encapsulation is in use (NAT detected or forced).
        encap: bool,
        /// True when this IKE SA replaces a rekeyed one (CHILD SAs carry over).
        rekeyed: bool,
        /// The IKE version spoken: 2, or 1 for an ISAKMP SA (RFC 2409).
        version: u8,
    },
    /// An IKE SA is gone (its CHILD SAs get their own [`Event::ChildSaDown`] first).
    IkeSaDown {
        /// Tunnel name.
        tunnel: String,
        /// Why.
        reason: DownReason,
    },
    /// A CHILD SA is established: install both directions into the dataplane. With
    /// `rekey_of` set, it replaces the SA whose inbound SPI is given; keep that one until its
    /// [`Event::ChildSaDown`] (make-before-break).
    ChildSaUp {
        /// Tunnel name.
        tunnel: String,
        /// CHILD SA name from the configuration.
        child: String,
        /// Keys and SPI for packets we receive.
        inbound: ChildKeys,
        /// Keys and SPI for packets we send.
        outbound: ChildKeys,
        /// Negotiated algorithms.
        esp: EspSuite,
        /// Negotiated local selectors (possibly narrowed, §2.9).
        local_ts: Vec<TrafficSelector>,
        /// Negotiated remote selectors.
        remote_ts: Vec<TrafficSelector>,
        /// ESP in UDP (port 4500, RFC 3948) rather than raw ESP.
        encap: bool,
        /// Our address in use.
        local: SocketAddr,
        /// The peer's address in use.
        peer: SocketAddr,
        /// Inbound SPI of the SA this one rekeys.
        rekey_of: Option<u32>,
    },
    /// A CHILD SA is gone: remove both directions from the dataplane.
    ChildSaDown {
        /// Tunnel name.
        tunnel: String,
        /// CHILD SA name.
        child: String,
        /// Our inbound SPI.
        spi_in: u32,
        /// Our outbound SPI.
        spi_out: u32,
        /// Why.
        reason: DownReason,
    },
    /// A negotiation failed; the explanation says why and what to change.
    NegotiationFailed(Explanation),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn child_keys_redact() {
        let k = ChildKeys::new(0x1234, (0u8..36).collect());
        assert_eq!(format!("{k:?}"), "ChildKeys { spi: 0x00001234, key: <redacted> }");
        assert_eq!(k.material().len(), 36);
    }

    #[test]
    fn explanation_is_one_line() {
        let e = Explanation {
            tunnel: "t1".into(),
            peer: "192.0.2.2:500".parse().unwrap(),
            exchange: ExchangeType::IKE_SA_INIT,
            cause: Cause::PeerRefused(NotifyType::NO_PROPOSAL_CHOSEN),
            ours: "IKE aes256gcm16-prfsha256-x25519".into(),
            theirs: None,
            suggestion: Some("the peer accepts only ecp256; add it to ike proposals".into()),
        };
        assert_eq!(
            e.to_string(),
            "tunnel `t1`: IKE_SA_INIT failed: the peer answered NO_PROPOSAL_CHOSEN; we offered IKE \
             aes256gcm16-prfsha256-x25519; the peer accepts only ecp256; add it to ike proposals"
        );
    }
}

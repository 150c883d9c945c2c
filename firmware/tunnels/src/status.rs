//! What the driver tells the daemon: a status snapshot per tunnel and a stream of events. Neither
//! ever carries key material.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant, SystemTime};

use isthmus_ike::event::{DownReason, Explanation};

/// Where a tunnel stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TunnelState {
    /// No IKE SA.
    Down,
    /// An IKE SA is being negotiated (by us or the peer).
    Connecting,
    /// The IKE SA is established.
    Up,
}

impl std::fmt::Display for TunnelState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TunnelState::Down => "down",
            TunnelState::Connecting => "connecting",
            TunnelState::Up => "up",
        })
    }
}

/// One installed CHILD SA.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChildStatus {
    /// CHILD SA name.
    pub name: String,
    /// Our inbound SPI.
    pub spi_in: u32,
    /// Our outbound SPI.
    pub spi_out: u32,
    /// Negotiated ESP algorithms, strongSwan style.
    pub esp: String,
    /// Local selectors.
    pub local_ts: Vec<String>,
    /// Remote selectors.
    pub remote_ts: Vec<String>,
    /// ESP in UDP.
    pub encap: bool,
    /// When it was installed.
    pub since: SystemTime,
    /// When it rekeys (None: no rekey is configured, or one is under way) and when it ends, as
    /// the IKE endpoint last said (it sets them when the SA comes up).
    pub rekey_at: Option<Instant>,
    /// When it ends unless rekeyed before.
    pub expire_at: Option<Instant>,
}

/// A tunnel as the operator sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TunnelStatus {
    /// Tunnel name.
    pub name: String,
    /// Down, connecting or up.
    pub state: TunnelState,
    /// Our IKE address in use.
    pub local: SocketAddr,
    /// The peer's IKE address in use.
    pub peer: SocketAddr,
    /// Negotiated IKE algorithms while up.
    pub ike_suite: Option<String>,
    /// The IKE version of the SA up: 2, or 1 (IKEv1).
    pub ike_version: Option<u8>,
    /// UDP encapsulation in use.
    pub encap: bool,
    /// Since when the tunnel has been up (an IKE SA rekey keeps it up; a new IKE SA after
    /// it went down starts it again).
    pub up_since: Option<SystemTime>,
    /// The IKE SA in force while up: its SPIs (initiator's, responder's; IKEv1: the cookies).
    pub ike_spis: Option<(u64, u64)>,
    /// We initiated the IKE SA in force.
    pub ike_initiator: bool,
    /// When the IKE SA in force came up (each rekey makes a new one).
    pub ike_since: Option<SystemTime>,
    /// When the IKE SA in force rekeys (None: no rekey is configured, or one is under way).
    pub ike_rekey_at: Option<Instant>,
    /// When the IKE SA in force ends unless rekeyed before.
    pub ike_expire_at: Option<Instant>,
    /// Installed CHILD SAs (two of the same name for a moment during a rekey).
    pub children: Vec<ChildStatus>,
    /// IKE SAs established so far (the first one and every rekey or restart).
    pub ike_sas_established: u64,
    /// CHILD SAs installed so far (rekeys included).
    pub child_sas_installed: u64,
    /// IKE and CHILD SA rekeys so far, whichever side started them.
    pub rekeys: u64,
    /// The last negotiation failure and its explanation, until an IKE or CHILD SA comes up.
    pub last_failure: Option<Explanation>,
    /// Why the tunnel last went down, until it is up again (a rekey is not a going down).
    pub last_down_reason: Option<String>,
}

/// Something that happened to a tunnel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TunnelEvent {
    /// The IKE SA is established.
    IkeUp {
        /// Tunnel name.
        tunnel: String,
        /// The peer's address in use.
        peer: SocketAddr,
        /// Negotiated algorithms.
        suite: String,
        /// UDP encapsulation in use.
        encap: bool,
        /// A rekeyed IKE SA took over.
        rekeyed: bool,
        /// 2, or 1 for IKEv1.
        version: u8,
    },
    /// The IKE SA is gone.
    IkeDown {
        /// Tunnel name.
        tunnel: String,
        /// Why, in words.
        reason: String,
        /// Why, typed: what alarms latch on (a dead peer, a lifetime that ran out before a rekey).
        cause: DownReason,
    },
    /// A CHILD SA is installed in the dataplane.
    ChildUp {
        /// Tunnel name.
        tunnel: String,
        /// CHILD SA name.
        child: String,
        /// Inbound SPI.
        spi_in: u32,
        /// Outbound SPI.
        spi_out: u32,
        /// Negotiated algorithms.
        esp: String,
        /// Inbound SPI of the SA it replaces, for a rekey.
        rekey_of: Option<u32>,
    },
    /// A CHILD SA is removed from the dataplane.
    ChildDown {
        /// Tunnel name.
        tunnel: String,
        /// CHILD SA name.
        child: String,
        /// Inbound SPI.
        spi_in: u32,
        /// Outbound SPI.
        spi_out: u32,
        /// Why, in words.
        reason: String,
    },
    /// A negotiation failed; the explanation says why and what to change.
    Failed(Explanation),
    /// Reports of one kind suppressed by the rate limit over the last interval (RFC 7296 §2.6:
    /// anyone can send IKE_SA_INIT; what it makes us say must stay bounded).
    Suppressed {
        /// Tunnel name (empty: no tunnel matched, or several).
        tunnel: String,
        /// The source, or none for reports of sources beyond the tracked ones.
        peer: Option<IpAddr>,
        /// What was suppressed (`IKE_SA_INIT failed: ...`).
        what: String,
        /// How many reports.
        count: u64,
        /// Over how long.
        window: Duration,
    },
    /// The dataplane refused a CHILD SA.
    InstallFailed {
        /// Tunnel name.
        tunnel: String,
        /// CHILD SA name.
        child: String,
        /// The dataplane's error.
        error: String,
    },
}

impl std::fmt::Display for TunnelEvent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TunnelEvent::IkeUp { tunnel, peer, suite, encap, rekeyed, version } => write!(
                f,
                "tunnel `{tunnel}`: IKE{} SA {} with {peer} ({suite}{})",
                if *version == 1 { "v1" } else { "" },
                if *rekeyed { "rekeyed" } else { "established" },
                if *encap { ", UDP-encapsulated" } else { "" }
            ),
            TunnelEvent::IkeDown { tunnel, reason, .. } => {
                write!(f, "tunnel `{tunnel}`: IKE SA down: {reason}")
            }
            TunnelEvent::ChildUp { tunnel, child, spi_in, spi_out, esp, rekey_of } => {
                write!(
                    f,
                    "tunnel `{tunnel}`: CHILD SA `{child}` installed (in {spi_in:08x}, out \
                     {spi_out:08x}, {esp})"
                )?;
                if let Some(old) = rekey_of {
                    write!(f, ", rekeying {old:08x}")?;
                }
                Ok(())
            }
            TunnelEvent::ChildDown { tunnel, child, spi_in, spi_out, reason } => write!(
                f,
                "tunnel `{tunnel}`: CHILD SA `{child}` removed (in {spi_in:08x}, out \
                 {spi_out:08x}): {reason}"
            ),
            TunnelEvent::Failed(e) => write!(f, "{e}"),
            TunnelEvent::Suppressed { tunnel, peer, what, count, window } => {
                if !tunnel.is_empty() {
                    write!(f, "tunnel `{tunnel}`: ")?;
                }
                match peer {
                    Some(p) => write!(f, "{count} more `{what}` from {p}")?,
                    None => write!(f, "{count} more {what} from other sources")?,
                }
                write!(f, " suppressed in the last {} s (log rate limit)", window.as_secs())
            }
            TunnelEvent::InstallFailed { tunnel, child, error } => {
                write!(f, "tunnel `{tunnel}`: the dataplane refused CHILD SA `{child}`: {error}")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_read_as_one_line_with_hex_spis() {
        let up = TunnelEvent::ChildUp {
            tunnel: "t".into(),
            child: "net".into(),
            spi_in: 0xc1,
            spi_out: 0xabcdef01,
            esp: "aes256gcm16-noesn".into(),
            rekey_of: Some(0x1234),
        };
        assert_eq!(
            up.to_string(),
            "tunnel `t`: CHILD SA `net` installed (in 000000c1, out abcdef01, aes256gcm16-noesn), \
             rekeying 00001234"
        );
        let ike = TunnelEvent::IkeUp {
            tunnel: "t".into(),
            peer: "192.0.2.2:4500".parse().unwrap(),
            suite: "aes256gcm16-prfsha256-x25519".into(),
            encap: true,
            rekeyed: false,
            version: 2,
        };
        assert_eq!(
            ike.to_string(),
            "tunnel `t`: IKE SA established with 192.0.2.2:4500 (aes256gcm16-prfsha256-x25519, \
             UDP-encapsulated)"
        );
        assert_eq!(TunnelState::Connecting.to_string(), "connecting");
    }
}

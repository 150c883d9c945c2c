//! What the driver needs from the ESP dataplane: a place to install and remove CHILD SAs, and a
//! way to send IKE datagrams out of the dataplane's UDP 4500 socket when the two share the port
//! (RFC 3948 §2.2: IKE behind the four-byte non-ESP marker, ESP without it).
//!
//! The dataplane's own events (IKE datagrams it received on 4500, acquires, soft and hard
//! expiries) come back to the driver as [`DataplaneEvent`]s through
//! [`crate::Tunnels::dataplane_events`].

use std::net::SocketAddr;

use isthmus_ike::config::TrafficSelector;
use isthmus_ike::event::ChildKeys;
use isthmus_ike::proposal::EspSuite;
use isthmus_ike::{DownReason, TunnelConfig};

/// A CHILD SA to install: both directions, what they protect, and where ESP goes.
#[derive(Debug)]
pub struct ChildInstall<'a> {
    /// Tunnel name.
    pub tunnel: &'a str,
    /// CHILD SA name from the configuration.
    pub child: &'a str,
    /// SPI and keys for packets we receive.
    pub inbound: &'a ChildKeys,
    /// SPI and keys for packets we send.
    pub outbound: &'a ChildKeys,
    /// Negotiated ESP algorithms (AES-GCM key size, ESN).
    pub esp: &'a EspSuite,
    /// Our side's selectors (narrowed, RFC 7296 §2.9).
    pub local_ts: &'a [TrafficSelector],
    /// The peer's side's selectors.
    pub remote_ts: &'a [TrafficSelector],
    /// ESP in UDP 4500 (RFC 3948) rather than IP protocol 50.
    pub encap: bool,
    /// Our address in use.
    pub local: SocketAddr,
    /// The peer's address and port in use (4500 when encapsulating).
    pub peer: SocketAddr,
    /// Inbound SPI of the SA this one replaces (make-before-break: keep the old inbound SA until
    /// it is removed).
    pub rekey_of: Option<u32>,
    /// We created this SA answering the peer's CREATE_CHILD_SA request: the peer installs it
    /// only when our answer arrives. For a rekey, keep sending on the old SA until the peer
    /// deletes it (RFC 7296 §2.8; what strongSwan does as responder); an SA we requested
    /// ourselves is used at once.
    pub answered: bool,
}

/// Why the dataplane refused a CHILD SA or a tunnel's policies. The messages are the ESP
/// engine's and the dataplane's own; none carries key material.
#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    /// The negotiated keys do not make an ESP SA (e.g. the wrong length for the algorithm).
    #[error(transparent)]
    Sa(#[from] isthmus_esp::EspError),
    /// The negotiated ESP suite is one the ESP engine does not implement.
    #[error("the ESP engine does not do {0}")]
    UnsupportedSuite(String),
    /// The dataplane refused the SA or the table (a duplicate SPI, an invalid SPD, a stopped
    /// dataplane), or did not start.
    #[error(transparent)]
    Dataplane(#[from] isthmus_dataplane::DataplaneError),
}

/// The ESP dataplane as the driver drives it. Implemented for `isthmus-dataplane` by the daemon's
/// wiring; [`ControlOnly`] runs IKE with no ESP at all.
pub trait Dataplane: Send + 'static {
    /// Installs both directions of a CHILD SA. An error is reported as a
    /// [`crate::TunnelEvent::InstallFailed`] and the CHILD SA is deleted with the peer.
    fn install_child(&mut self, sa: &ChildInstall<'_>) -> Result<(), DataplaneError>;

    /// Removes both directions of a CHILD SA. After a rekey (`reason` is
    /// [`DownReason::Rekeyed`]) the inbound half may linger for a grace time, and the outbound
    /// half is only removed if no successor replaced it.
    fn remove_child(
        &mut self,
        tunnel: &str,
        child: &str,
        spi_in: u32,
        spi_out: u32,
        reason: &DownReason,
    );

    /// A tunnel was added: install what protects its traffic before any SA exists (SPD
    /// `Protect` entries, so that matching packets are dropped and raise acquires, never leave
    /// in clear). An error refuses the tunnel.
    fn tunnel_added(&mut self, cfg: &TunnelConfig) -> Result<(), DataplaneError> {
        let _ = cfg;
        Ok(())
    }

    /// A tunnel was removed (after its SAs).
    fn tunnel_removed(&mut self, tunnel: &str) {
        let _ = tunnel;
    }

    /// True when the dataplane owns UDP port 4500 (ESP in UDP) and hands IKE datagrams to the
    /// driver as [`DataplaneEvent::Ike`]; false makes the driver bind 4500 itself.
    fn owns_nat_t(&self) -> bool {
        false
    }

    /// Sends `data` from the dataplane's UDP 4500 socket bound to `local` to `remote`, after the
    /// non-ESP marker when `marker` is set (IKE), as is otherwise (NAT-T keepalive). Only called
    /// when [`Dataplane::owns_nat_t`] is true.
    fn send_nat_t(
        &self,
        local: SocketAddr,
        remote: SocketAddr,
        data: &[u8],
        marker: bool,
    ) -> std::io::Result<()> {
        let _ = (local, remote, data, marker);
        Err(std::io::Error::new(
            std::io::ErrorKind::Unsupported,
            "the dataplane does not own port 4500",
        ))
    }
}

/// No ESP dataplane: IKE negotiates, CHILD SAs are reported but carry nothing. For IKE-only
/// diagnostics and for tests of the negotiation alone; the driver owns port 4500 itself.
#[derive(Debug, Default)]
pub struct ControlOnly;

impl Dataplane for ControlOnly {
    fn install_child(&mut self, _sa: &ChildInstall<'_>) -> Result<(), DataplaneError> {
        Ok(())
    }

    fn remove_child(&mut self, _: &str, _: &str, _: u32, _: u32, _: &DownReason) {}
}

/// What the dataplane tells the driver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DataplaneEvent {
    /// An IKE message received on the shared port 4500 (the non-ESP marker already removed).
    Ike {
        /// Our address and port it arrived on.
        local: SocketAddr,
        /// The sender.
        remote: SocketAddr,
        /// The IKE message.
        data: Vec<u8>,
    },
    /// Traffic matched a protected selector of `tunnel`/`child` that has no SA (start action
    /// "on traffic").
    Acquire {
        /// Tunnel name.
        tunnel: String,
        /// CHILD SA name.
        child: String,
    },
    /// The SA with this SPI reached its soft lifetime (bytes or packets): rekey it.
    SoftExpired {
        /// Inbound or outbound SPI of the CHILD SA.
        spi: u32,
    },
    /// The SA with this SPI reached its hard lifetime and no longer carries traffic.
    HardExpired {
        /// Inbound or outbound SPI of the CHILD SA.
        spi: u32,
    },
}

//! The IKE driver: owns the UDP sockets on ports 500 and 4500 (sharing 4500 with the dataplane
//! through the non-ESP marker, RFC 3948 §2.2), the clock, and the tunnels from the configuration;
//! feeds the sans-IO `isthmus-ike` state machines and installs their CHILD SAs into the dataplane.
//!
//! ```text
//!  daemon ── Tunnels (handle) ── commands ──▶ ┌──────────── ike-driver thread ────────────┐
//!         ◀─ status(), subscribe() ────────── │ isthmus_ike::Endpoint  (sans-IO)          │
//!  UDP 500 / 4500 readers ── datagrams ─────▶ │   handle_datagram / handle_timeout / cmds │
//!  dataplane ── DataplaneEvent ─────────────▶ │   poll_transmit ─▶ sockets / dataplane 4500│
//!            (IKE on 4500, acquire, expiry)   │   poll_event    ─▶ Dataplane install/remove│
//!                                             └───────────────────────────────────────────┘
//! ```
//!
//! - [`driver`]: the loop and the [`Tunnels`] handle (start actions start / trap / none, close
//!   action, retries with backoff for tunnels that should be up, make-before-break CHILD SA
//!   installation);
//! - [`dataplane`]: the [`Dataplane`] trait the ESP dataplane implements, and the events it
//!   sends back;
//! - [`esp`]: that trait on the userspace ESP dataplane (`isthmus-dataplane`);
//! - [`io`]: the IKE sockets and RFC 3948 classification of port 4500 payloads;
//! - [`ratelimit`]: how often a negotiation failure of one source is reported (unauthenticated
//!   IKE_SA_INIT floods must not fill the log);
//! - [`status`]: tunnel status and events (with the IKE layer's explanations of failures).
//!
//! Typical use, inside the gateway's network namespace:
//!
//! ```no_run
//! # fn demo(cfg: isthmus_ike::TunnelConfig) -> Result<(), isthmus_tunnels::Error> {
//! use isthmus_tunnels::{DriverConfig, EspOptions, Tunnel, start_with_dataplane};
//! let wan = "192.0.2.1".parse().unwrap();
//! let (tunnels, dataplane) = start_with_dataplane(
//!     DriverConfig::default(),
//!     isthmus_dataplane::Config::new("ist0", wan),
//!     EspOptions::default(),
//! )?;
//! let events = tunnels.subscribe();
//! tunnels.add_tunnel(Tunnel::new(cfg))?; // start action `Start` initiates at once
//! for ev in events.iter().take(2) {
//!     println!("{ev}"); // "tunnel `t`: IKE SA established with ...", "... CHILD SA ... installed"
//! }
//! println!("{:?}", tunnels.status());
//! # drop(dataplane); Ok(()) }
//! ```

pub mod dataplane;
pub mod driver;
pub mod esp;
pub mod io;
pub mod peer_config;
pub mod ratelimit;
pub mod status;

pub use dataplane::{ChildInstall, ControlOnly, Dataplane, DataplaneError, DataplaneEvent};
pub use driver::{CloseAction, Closed, DataplaneSender, DriverConfig, Tunnel, Tunnels};
pub use esp::{
    DataLimits, EspDataplane, EspOptions, forward_events, spd_entries, start_with_dataplane,
};
pub use status::{ChildStatus, TunnelEvent, TunnelState, TunnelStatus};

/// Everything the driver can fail at. Messages name the tunnel and what is wrong; none carries
/// key material.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No tunnel of that name is configured.
    #[error("no tunnel named `{0}`")]
    UnknownTunnel(String),
    /// A tunnel of that name exists already.
    #[error("a tunnel named `{0}` exists already")]
    DuplicateTunnel(String),
    /// The tunnel has no installed CHILD SA of that name.
    #[error("tunnel `{tunnel}` has no installed CHILD SA named `{child}`")]
    NoChildSa {
        /// Tunnel name.
        tunnel: String,
        /// CHILD SA name.
        child: String,
    },
    /// The IKE layer refused the request.
    #[error("tunnel `{0}`: {1}")]
    Ike(String, #[source] isthmus_ike::Error),
    /// A socket could not be bound or the driver thread not started.
    #[error("IKE driver I/O: {0}")]
    Io(#[source] std::io::Error),
    /// The dataplane refused the tunnel's policies.
    #[error("tunnel `{0}`: the dataplane refused: {1}")]
    Dataplane(String, #[source] DataplaneError),
    /// The dataplane did not start (its TUN device, its sockets).
    #[error("the dataplane did not start: {0}")]
    DataplaneStart(#[source] DataplaneError),
    /// The OS random source could not be read.
    #[error("reading /dev/urandom for the IKE random seed: {0}")]
    Random(#[source] std::io::Error),
    /// The driver thread has stopped.
    #[error("the IKE driver has stopped")]
    Stopped,
}

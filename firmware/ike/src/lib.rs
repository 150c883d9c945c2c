//! Sans-IO IKEv2 (RFC 7296): message codec, IKE and CHILD SA state machines, key schedule.
//!
//! Bytes and time go in; bytes to send, timers and events come out. The driver (the
//! `isthmus-tunnels` crate) owns the sockets and the clock:
//!
//! ```text
//!   driver                               Endpoint
//!   ------                               --------
//!   UDP 500/4500 datagram  ──────────▶   handle_datagram(now, local, remote, bytes)
//!   timer fired            ──────────▶   handle_timeout(now)
//!   operator / dataplane   ──────────▶   initiate / terminate / rekey_* / acquire / ...
//!   socket send            ◀──────────   poll_transmit() -> Transmit
//!   dataplane SA install   ◀──────────   poll_event()    -> Event::ChildSaUp / ChildSaDown / ...
//!   sleep until            ◀──────────   poll_timeout()  -> Instant
//! ```
//!
//! - [`proposal`]: proposals in strongSwan syntax and their negotiation (§2.7, §3.3);
//! - [`config`]: tunnels, identities, selectors, lifetimes, DPD;
//! - [`endpoint`]: the state machines behind [`Endpoint`];
//! - [`event`]: what comes out: [`Transmit`], [`Event`], [`Explanation`];
//! - [`codec`]: the message codec (§3);
//! - [`crypto`]: key schedule, AUTH, SK payload protection, Diffie-Hellman;
//! - [`modp`]: the finite-field Diffie-Hellman groups;
//! - [`error`]: the crate's error type;
//! - [`v1`]: IKEv1 (RFC 2409), beginning with its ISAKMP codec (RFC 2408).
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod codec;
pub mod config;
pub mod crypto;
pub mod endpoint;
pub mod error;
pub mod event;
pub mod modp;
pub mod proposal;
pub mod v1;

pub use config::{
    ChildConfig, Dpd, DpdAction, EndpointConfig, Identity, IkeVersion, Lifetime, Psk, StartAction,
    TrafficSelector, TunnelConfig,
};
pub use endpoint::Endpoint;
pub use error::Error;
pub use event::{Cause, ChildKeys, DownReason, Event, Explanation, Transmit};
pub use proposal::{
    DhGroup, Encr, EspProposal, EspSuite, IkeProposal, IkeSuite, Integ, Prf, parse_esp_list,
    parse_ike_list,
};

//! The firmware daemon as a library, so that tests can run its parts in-process: the management
//! API (authentication, TLS), the core that ties the planes together, events, alarms and metrics.
//! `main.rs` only parses arguments and, inside the image, does PID 1's duties first.

pub mod auth;
pub mod tls;

//! The firmware daemon as a library, so that tests can run its parts in-process: the management
//! API (authentication, TLS), the core that ties the planes together, events, alarms and metrics.
//! `main.rs` only parses arguments and, inside the image, does PID 1's duties first.

pub mod alarms;
pub mod auth;
pub mod core;
pub mod diagnose;
pub mod events;
pub mod health;
pub mod monitor;
pub mod openapi;
pub mod pid1;
pub mod plan;
pub mod policy;
pub mod punt;
pub mod server;
pub mod tls;
pub mod upgrade;

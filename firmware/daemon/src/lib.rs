//! The firmware daemon as a library, so that tests can run its parts in-process: the management
//! API (authentication, TLS), the core that ties the planes together, events, alarms and metrics.
//! `main.rs` only parses arguments and, inside the image, does PID 1's duties first.
//!
//! - `core`: the configuration, its plan and apply, and the one way in for changes.
//! - `http`: the management API over HTTP (routes, authentication, TLS, OpenAPI); the only place
//!   that knows HTTP.
//! - `obs`: what the operator watches: events, the monitor, health, alarms and the log.
//! - `policy`: the WebAssembly plugins that decide the SPD and security groups, and the punt path.
//! - `diagnose`: why a packet passes or not, stage by stage.
//! - `system`: PID 1 duties, A/B slots and upgrades.

pub mod core;
pub mod diagnose;
pub mod http;
pub mod obs;
pub mod policy;
pub mod system;

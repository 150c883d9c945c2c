//! Compiled policy tables: what the policy plugins produce and what the dataplane (and the path
//! tracer, so that both give one answer) evaluates per packet, natively.
//!
//! - [`spd`]: the security policy database, selectors to protect / bypass / discard
//!   (RFC 4301 §4.4.1);
//! - [`sg`]: security groups (stateful) and network ACLs (stateless) as rule tables;
//! - [`flow`]: the flow table that makes security groups stateful.
//!
//! Tables are immutable once built and carry a generation number; the control plane publishes a new
//! one by swapping a pointer, and cached verdicts remember the generation they came from.
#![forbid(unsafe_code)]

pub mod flow;
pub mod sg;
pub mod spd;
pub mod types;

pub use types::{FlowKey, PortRange, Prefix, PrefixError};

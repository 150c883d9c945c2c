//! The router core: a netlink reconciler that brings links, addresses, routes, rules and TUN
//! devices to the configured state, and the nftables host firewall programmed over netlink.
//!
//! # Model
//!
//! The daemon derives a [`DesiredState`] from the configuration. [`Reconciler::plan`] reads the
//! kernel (rtnetlink dumps, RFC 3549 and `rtnetlink(7)`; the nftables table over `nfnetlink`)
//! and returns a [`Plan`]: the adds, deletes and modifications that would make the kernel match,
//! printable as a dry run. [`Reconciler::apply`] carries a plan out and returns a [`Report`];
//! [`Reconciler::reconcile`] is both. Reconciling twice changes nothing the second time.
//! [`Reconciler::drift`] tells what differs (someone deleted a route by hand, a link went
//! down), and reconciling repairs it.
//!
//! # What Isthmus owns
//!
//! The reconciler touches only what is marked as its own, and leaves everything else alone:
//!
//! - **routes** whose protocol (`rtm_protocol`) is [`RTPROT_ISTHMUS`] = 181 (0xb5), a number no
//!   routing daemon in `/etc/iproute2/rt_protos` uses (`ip route show proto 181`), in any table;
//!   routes of other protocols are never replaced or deleted, even in the same tables;
//! - **rules** with `FRA_PROTOCOL` 181 (`ip rule show proto 181`);
//! - **addresses** with `IFA_PROTO` 181; addresses others put on the same interfaces stay;
//! - **links** named in the desired state (configured: up/down, MTU); TUN and dummy devices it
//!   creates carry the alias [`LINK_ALIAS`] and are deleted when they leave the desired state;
//! - the **nftables table** `inet isthmus` (see [`firewall`]).
//!
//! # TUN devices
//!
//! A [`LinkKind::Tun`] link is created persistent with `IFF_TUN | IFF_NO_PI` (and
//! `IFF_MULTI_QUEUE` only when asked), so routes can point at it before the dataplane attaches;
//! see [`tun`]. The design uses **one shared TUN device** for all tunnels (the dataplane finds the
//! SA through its SPD table, not through the device), so 1,000 tunnels cost one device and
//! their routes.
//!
//! # Speed
//!
//! Requests are pipelined: thousands of route messages go out per `sendmsg`, and their ACKs are
//! matched by sequence number. The API is synchronous (a netlink socket per reconciler); the
//! daemon calls it from `tokio::task::spawn_blocking`. Sockets, and TUN devices created by
//! `apply`, belong to the network namespace of the thread that created the [`Reconciler`]: use it
//! from that namespace.

pub mod firewall;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
mod kernel;
mod lookup;
mod nl;
mod plan;
mod reconciler;
mod state;
pub mod tun;

pub use firewall::Ruleset;
pub use kernel::LINK_ALIAS;
pub use lookup::{LookupError, RouteKind, RouteLookup, route_get};
pub use plan::{Change, Drift, Plan};
pub use reconciler::{Failure, Reconciler, Report};
pub use state::{
    Address, DesiredState, FirewallSpec, Link, LinkKind, NextHop, Route, Rule, TABLE_MAIN,
};

/// The route protocol number that marks routes, rules and addresses as Isthmus's (0xb5).
pub const RTPROT_ISTHMUS: u8 = 181;

/// What went wrong in the router core.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A netlink socket operation failed.
    #[error("cannot {0}: {1}")]
    Socket(&'static str, #[source] std::io::Error),
    /// The kernel answered something this crate cannot read.
    #[error("netlink protocol error: {0}")]
    Protocol(String),
    /// A dump request was refused.
    #[error("reading {0} from the kernel failed: {1}")]
    Dump(&'static str, String),
    /// The kernel's table changed while it was being read (the plan retries).
    #[error("{0} changed while being read; try again")]
    DumpInterrupted(&'static str),
    /// The desired state is inconsistent.
    #[error("{0}")]
    Invalid(String),
    /// The desired state names an interface that does not exist and is not created by Isthmus.
    #[error("interface `{0}` does not exist")]
    LinkMissing(String),
    /// A device Isthmus should create exists as something else.
    #[error("`{name}` exists as {found}, not as the {wanted} device the configuration asks for")]
    LinkConflict {
        /// Interface name.
        name: String,
        /// The kind asked for.
        wanted: &'static str,
        /// The kind found.
        found: String,
    },
    /// Creating a TUN device failed.
    #[error("TUN device `{0}`: {1} failed: {2}")]
    Tun(String, &'static str, #[source] std::io::Error),
    /// The kernel refused the nftables batch (nothing of it was applied).
    #[error("the kernel refused the firewall ruleset: {0}")]
    Firewall(String),
    /// Some changes of a plan failed; the others were applied.
    #[error("{} of {total} changes failed: {}", failures.len(), first(failures))]
    Apply {
        /// Number of changes in the plan.
        total: usize,
        /// What failed and why.
        failures: Vec<Failure>,
    },
}

fn first(f: &[Failure]) -> String {
    let mut s: Vec<String> = f.iter().take(3).map(ToString::to_string).collect();
    if f.len() > 3 {
        s.push(format!("and {} more", f.len() - 3));
    }
    s.join("; ")
}

//! Host-side types of plugin inputs and outputs that the tables crate does not already have.
//! The SPD output is [`isthmus_tables::spd::SpdTable`], the security-group output
//! [`isthmus_tables::sg::ChainSpec`]s.

use isthmus_tables::sg::{Action, Direction};
use isthmus_tables::spd::{Selector, SpdAction};
use isthmus_tables::{PortRange, Prefix};

/// One configured SPD policy (input of the `spd` hook).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpdPolicy {
    /// Where it was configured (`tunnels.dc1.children.web.policies[0]`); becomes the entry's rule.
    pub id: String,
    /// Its selector.
    pub selector: Selector,
    /// What it does.
    pub action: SpdAction,
    /// Explicit priority, lower first; `None` leaves the order to the plugin.
    pub priority: Option<u32>,
}

/// A security-group or ACL rule as the operator wrote it (input of the `security-group` hook).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SgRule {
    /// Unique within its group.
    pub id: String,
    /// Lower first.
    pub priority: u32,
    /// Direction.
    pub direction: Direction,
    /// Allow, deny or punt.
    pub action: Action,
    /// `None` = any.
    pub protocol: Option<u8>,
    /// Source of inbound, destination of outbound traffic.
    pub peer: Prefix,
    /// Destination ports.
    pub ports: PortRange,
}

/// A security group or a network ACL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SgGroup {
    /// Its name.
    pub name: String,
    /// The tunnels and LANs it is bound to.
    pub attach: Vec<String>,
    /// Its rules.
    pub rules: Vec<SgRule>,
}

/// A plugin's decision on a punted flow.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PuntDecision {
    /// Allow or deny.
    pub allow: bool,
    /// Names why.
    pub rule: String,
}

/// Alarm severity, lowest first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Severity {
    /// Informational.
    Info,
    /// Needs a look.
    Warning,
    /// Service affected.
    Major,
    /// Service down.
    Critical,
}

/// What an alarm event is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum EventKind {
    /// A tunnel went down.
    TunnelDown,
    /// A tunnel came up.
    TunnelUp,
    /// Dead-peer detection timed out.
    DpdTimeout,
    /// A rekey failed.
    RekeyFailed,
    /// Health-check probes are lost.
    HealthCheckLoss,
    /// Health-check latency is over its threshold.
    HealthCheckLatency,
    /// Traffic leaves through a tunnel but none comes back.
    OneWayTraffic,
    /// A plugin trapped, timed out or ran out of memory.
    PluginFault,
    /// Anything else.
    Other,
}

impl EventKind {
    /// The kebab-case name used in the WIT and in configurations.
    pub fn name(self) -> &'static str {
        match self {
            EventKind::TunnelDown => "tunnel-down",
            EventKind::TunnelUp => "tunnel-up",
            EventKind::DpdTimeout => "dpd-timeout",
            EventKind::RekeyFailed => "rekey-failed",
            EventKind::HealthCheckLoss => "health-check-loss",
            EventKind::HealthCheckLatency => "health-check-latency",
            EventKind::OneWayTraffic => "one-way-traffic",
            EventKind::PluginFault => "plugin-fault",
            EventKind::Other => "other",
        }
    }

    /// Every kind.
    pub const ALL: [EventKind; 9] = [
        EventKind::TunnelDown,
        EventKind::TunnelUp,
        EventKind::DpdTimeout,
        EventKind::RekeyFailed,
        EventKind::HealthCheckLoss,
        EventKind::HealthCheckLatency,
        EventKind::OneWayTraffic,
        EventKind::PluginFault,
        EventKind::Other,
    ];
}

/// An alarm event (input of the `alarm` hook).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AlarmEvent {
    /// What.
    pub kind: EventKind,
    /// About what: a tunnel, a plugin, a health check.
    pub subject: String,
    /// Starts (`true`) or clears.
    pub raised: bool,
    /// As raised.
    pub severity: Severity,
    /// Human text.
    pub message: String,
    /// Milliseconds, monotonic within one gateway run.
    pub at_ms: u64,
}

/// A notification to a channel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Notification {
    /// Channel name from the configuration.
    pub channel: String,
    /// Severity.
    pub severity: Severity,
    /// Text.
    pub message: String,
}

/// Silence a subject's events of a kind.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Suppression {
    /// Kind.
    pub kind: EventKind,
    /// Subject.
    pub subject: String,
    /// For how long.
    pub for_ms: u64,
}

/// What an alarm plugin asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AlarmAction {
    /// Send a notification.
    Notify(Notification),
    /// Suppress further events.
    Suppress(Suppression),
    /// Re-grade the event's alarm.
    SetSeverity(Severity),
}

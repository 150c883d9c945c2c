//! Request and response types of the management API, shared by `isthmusd` and the `isthmus` CLI.
//! No transport lives here: the daemon serves these as JSON over HTTP, the CLI sends and prints them.
//! With the `openapi` feature every type is also a `utoipa::ToSchema`: the daemon's OpenAPI
//! document is generated from these definitions and their doc comments, which are its
//! descriptions.
//!
//! Every control input is one [`Action`] (the firecracker pattern): the HTTP layer only parses a
//! request into it, so the API, the CLI and tests speak one vocabulary. Secrets never appear in
//! these types: configuration text in responses is already redacted by the daemon.
#![forbid(unsafe_code)]

use serde::{Deserialize, Serialize};

pub mod instant;

/// The API's version prefix: every path starts with it.
pub const PREFIX: &str = "/api/v1";

/// The port the daemon always serves on loopback (plain HTTP), whatever its configuration.
pub const LOCAL_PORT: u16 = 8080;

/// The CLI's default endpoint: the daemon on the same host, on [`LOCAL_PORT`].
pub const LOCAL_ENDPOINT: &str = "http://127.0.0.1:8080";

/// The role a bearer token grants.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// May read and change everything.
    Admin,
    /// May only read.
    ReadOnly,
}

/// Every control input the daemon accepts. All of them change state, so all need an admin token;
/// reads are plain `GET`s.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(tag = "action", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Action {
    /// Validate a configuration document without committing it.
    ConfigValidate { text: String },
    /// Show what committing a document would change, against the active revision.
    ConfigDiff { text: String },
    /// Commit and apply; with `confirm_secs`, revert unless confirmed in time.
    ConfigCommit { text: String, comment: String, confirm_secs: Option<u64>, dry_run: bool },
    /// Confirm a pending commit-confirm.
    // A struct variant, not a unit one: serde's internally tagged unit variants ignore unknown
    // fields, and a request with one must be refused.
    ConfigConfirm {},
    /// Make the content of `revision` active again (as a new revision).
    ConfigRollback { revision: u64 },
    /// Bring a tunnel up now.
    TunnelInitiate { name: String },
    /// Tear a tunnel down (it stays configured and reported as down).
    TunnelTerminate { name: String },
    /// Rekey a tunnel's CHILD SAs (and its IKE SA with `ike`).
    TunnelRekey { name: String, ike: bool },
    /// Activate an uploaded plugin version by digest.
    PluginActivate { digest: String },
    /// Go back to the previously active version of a plugin.
    PluginRollback { name: String },
    /// Remove an inactive plugin version.
    PluginRemove { digest: String },
    /// Mark a raised alarm as seen by the caller (it stays raised until its condition ends).
    AlarmAcknowledge { name: String, subject: String },
}

/// The body of every error response.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ApiError {
    /// The HTTP status code.
    pub status: u16,
    /// A stable machine-readable code, e.g. `unauthorized`, `forbidden`, `invalid-config`.
    pub code: String,
    /// What is wrong, for a person.
    pub message: String,
    /// Details such as configuration errors with their paths.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub details: Vec<Issue>,
}

/// One configuration problem, located by its field path.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Issue {
    /// The path of the offending field, e.g. `tunnel[1].spd[0].remote`.
    pub path: String,
    /// What is wrong with it.
    pub message: String,
}

/// The result of validating a document.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ValidateResponse {
    /// True when there are no errors (warnings do not block a commit).
    pub ok: bool,
    /// Problems that block a commit.
    pub errors: Vec<Issue>,
    /// Likely mistakes.
    pub warnings: Vec<Issue>,
    /// Per tunnel of a valid document, the cloud VPN gateways and IDC routers of
    /// docs/interop.md whose default proposals its proposals can meet.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub interop: Vec<TunnelInterop>,
}

/// Which peers' default proposals one tunnel can meet.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TunnelInterop {
    /// The tunnel.
    pub tunnel: String,
    /// Peers whose defaults share an IKE and an ESP suite with the tunnel's proposals.
    pub meets: Vec<String>,
    /// The other peers of docs/interop.md.
    pub misses: Vec<String>,
}

/// A document's differences from the active revision.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DiffResponse {
    /// A unified diff (secrets as fingerprints), each hunk headed by the TOML path it changes;
    /// `no changes` when equal.
    pub diff: String,
}

/// The answer to an action that has nothing more to return.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Message {
    /// What was done.
    pub message: String,
}

/// One stored configuration revision.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Revision {
    /// The revision number, counting from 1.
    pub number: u64,
    /// When it was committed, seconds since the Unix epoch.
    #[serde(deserialize_with = "instant::de")]
    pub time: u64,
    /// Who committed it (the token's name).
    pub author: String,
    /// The commit comment.
    pub comment: String,
    /// True for the revision in force.
    pub active: bool,
    /// Set while this revision awaits confirmation: seconds since the epoch when it reverts.
    #[serde(default, deserialize_with = "instant::de_opt")]
    pub confirm_deadline: Option<u64>,
}

/// The result of a commit.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CommitResponse {
    /// The new revision (absent for a dry run).
    pub revision: Option<u64>,
    /// What the apply changed (or would change, for a dry run), one line each.
    pub plan: Vec<String>,
    /// Warnings from validation.
    pub warnings: Vec<Issue>,
}

/// A tunnel's state as an operator sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "kebab-case")]
pub enum TunnelState {
    /// Configured, no IKE SA.
    Down,
    /// IKE negotiation in progress.
    Connecting,
    /// IKE SA and at least one CHILD SA established.
    Up,
    /// IKE SA up but no CHILD SA.
    Degraded,
    /// On demand (`start_action = "trap"`): no SA, none needed until traffic asks for one.
    Idle,
    /// `enabled = false`: configured, deliberately not run.
    Disabled,
}

impl TunnelState {
    /// Every state, in the order the `isthmus_tunnel_state` gauge lists them.
    pub const ALL: [TunnelState; 6] = [
        TunnelState::Up,
        TunnelState::Degraded,
        TunnelState::Connecting,
        TunnelState::Idle,
        TunnelState::Down,
        TunnelState::Disabled,
    ];

    /// The word the API, the CLI and the metrics use (the serde name).
    pub const fn as_str(self) -> &'static str {
        match self {
            TunnelState::Down => "down",
            TunnelState::Connecting => "connecting",
            TunnelState::Up => "up",
            TunnelState::Degraded => "degraded",
            TunnelState::Idle => "idle",
            TunnelState::Disabled => "disabled",
        }
    }
}

impl std::fmt::Display for TunnelState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One row of `tunnel list`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TunnelSummary {
    /// The tunnel's name.
    pub name: String,
    /// The customer gateway's name.
    pub peer: String,
    /// The peer's address.
    pub peer_address: String,
    /// Current state.
    pub state: TunnelState,
    /// Seconds since it came up (0 when down).
    pub uptime_secs: u64,
    /// Counters, monotonic across rekeys.
    pub counters: Counters,
    /// The last negotiation error, explained.
    pub last_error: Option<String>,
}

/// Traffic counters. Per tunnel they survive rekeys (the sum of all SAs it ever had).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Counters {
    /// Packets sent into the tunnel.
    pub packets_out: u64,
    /// Bytes sent into the tunnel (inner packets).
    pub bytes_out: u64,
    /// Packets received from the tunnel.
    pub packets_in: u64,
    /// Bytes received from the tunnel (inner packets).
    pub bytes_in: u64,
    /// Drops by reason, as `[reason, count]` pairs (`icv_failure`, `replay`, `no_sa`, ...).
    pub drops: Vec<(String, u64)>,
}

/// One CHILD SA pair.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ChildSa {
    /// The CHILD SA's name from the configuration.
    pub name: String,
    /// Inbound SPI, hex.
    pub spi_in: String,
    /// Outbound SPI, hex.
    pub spi_out: String,
    /// The ESP proposal in force, strongSwan syntax.
    pub proposal: String,
    /// Local traffic selectors.
    pub local_ts: Vec<String>,
    /// Remote traffic selectors.
    pub remote_ts: Vec<String>,
    /// Seconds since it was installed.
    pub age_secs: u64,
    /// Seconds since the last packet in (None: never).
    pub last_in_secs: Option<u64>,
    /// Seconds since the last packet out (None: never).
    pub last_out_secs: Option<u64>,
    /// Seconds until it rekeys, 0 once due (None: no rekey is configured, or it was replaced).
    #[serde(default)]
    pub rekey_in_secs: Option<u64>,
    /// Seconds until it ends unless rekeyed before.
    #[serde(default)]
    pub expire_in_secs: Option<u64>,
    /// Counters of this SA only.
    pub counters: Counters,
}

/// `sa list` (`GET /sa`): an established IKE SA with its CHILD SAs, like an entry of
/// strongSwan's `swanctl --list-sas`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct IkeSa {
    /// The tunnel it belongs to.
    pub tunnel: String,
    /// 2, or 1 (IKEv1: an ISAKMP SA, RFC 2409).
    pub ike_version: u8,
    /// Our address and port in use.
    pub local: String,
    /// The peer's address and port in use.
    pub peer: String,
    /// The initiator's SPI (IKEv1: cookie), 16 hex digits.
    pub spi_i: String,
    /// The responder's SPI (IKEv1: cookie), 16 hex digits.
    pub spi_r: String,
    /// This gateway initiated it (its SPI is `spi_i`, else `spi_r`).
    pub initiator: bool,
    /// The IKE proposal in force, strongSwan syntax.
    pub proposal: String,
    /// UDP encapsulation (NAT traversal, port 4500) in use.
    pub encap: bool,
    /// Seconds since it was established (a rekey makes a new one).
    pub age_secs: u64,
    /// Seconds until it rekeys, 0 once due (None: no rekey is configured).
    pub rekey_in_secs: Option<u64>,
    /// Seconds until it ends unless rekeyed before.
    pub expire_in_secs: Option<u64>,
    /// Its CHILD SAs (IKEv1: the SA pairs of its tunnel), with their own counters.
    pub children: Vec<ChildSa>,
}

/// `tunnel show`: the summary plus SAs, rekeys and recent events.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TunnelDetail {
    /// The summary row.
    pub summary: TunnelSummary,
    /// The IKE proposal in force, strongSwan syntax.
    pub ike_proposal: Option<String>,
    /// The IKE version of the SA in force: 2, or 1 (IKEv1, RFC 2409).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ike_version: Option<u8>,
    /// The weak algorithms the tunnel's proposals allow (`allow_weak = true`), by keyword.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub weak_algorithms: Vec<String>,
    /// CHILD SAs in force.
    pub children: Vec<ChildSa>,
    /// How many rekeys succeeded since the daemon started.
    pub rekeys: u64,
    /// Recent events, newest last.
    pub events: Vec<Event>,
    /// Health-check results; absent when the tunnel has no health check.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<Health>,
    /// Dataplane drops attributed to this tunnel: its ESP drops by reason, then its
    /// security-group and network-ACL drops by deciding rule.
    #[serde(default)]
    pub drops: Vec<StageDrop>,
}

/// Whether a tunnel's health check passes, by the configured consecutive thresholds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "kebab-case")]
pub enum HealthState {
    /// Not enough probes yet to say.
    Unknown,
    /// `recovery_threshold` good probes in a row.
    Healthy,
    /// `failure_threshold` failed (lost, or slower than `latency_threshold`) probes in a row.
    Unhealthy,
}

/// Health-check results of one tunnel: ICMP echo probes sent through it from a local address to
/// a remote one, summarised over the last `window` probes. Probes run only while the tunnel is
/// up, and the window starts afresh each time it comes up.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Health {
    /// Where probes come from (a LAN address of this gateway).
    pub source: String,
    /// Where they go (an address behind the peer).
    pub destination: String,
    /// Healthy or not.
    pub state: HealthState,
    /// Probes in the window.
    pub sent: u32,
    /// Answers received in the window.
    pub received: u32,
    /// Lost probes in the window, 0 to 1.
    pub loss_ratio: f64,
    /// Mean round trip in the window, milliseconds (None: no answer).
    pub latency_avg_ms: Option<f64>,
    /// Median round trip in the window, milliseconds (None: no answer). The latency alarm
    /// reads it: one slow probe cannot move a median.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_median_ms: Option<f64>,
    /// Shortest round trip in the window, milliseconds.
    pub latency_min_ms: Option<f64>,
    /// Longest round trip in the window, milliseconds.
    pub latency_max_ms: Option<f64>,
    /// Mean difference between consecutive round trips (RFC 3550 §6.4.1), milliseconds.
    pub jitter_ms: Option<f64>,
    /// Probes sent since the check started.
    pub probes_total: u64,
    /// Why the last probe failed, when it did (e.g. `no answer within 2s`).
    pub last_error: Option<String>,
}

/// Packets the dataplane dropped at one stage for one reason. At the security-group and ACL
/// stages (`sg-in`, `sg-out`, `nacl-in`, `nacl-out`) the reason is the deciding rule, e.g.
/// `sg:web/3`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct StageDrop {
    /// Where: `esp-in`, `esp-out`, `spd`, `nacl-in`, `sg-out`, ...
    pub stage: String,
    /// Why: `replay`, `icv`, `no-sa`, `spd-no-policy`, ... (the `reason` label of
    /// `isthmus_drops_total`), or the deciding rule.
    pub reason: String,
    /// Packets dropped.
    pub packets: u64,
}

/// Severity of an alarm or event: the one set of words the configuration (`alarm.severity`),
/// the API, the CLI, the webhooks, the metrics (`severity` label) and the alarm plugins
/// (`wit/policy.wit`) use. The grades are ITU-T X.733's perceived severities without
/// `minor` and `indeterminate`.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "kebab-case")]
pub enum Severity {
    /// For the record.
    Info,
    /// Needs attention.
    #[default]
    Warning,
    /// Service affected.
    Major,
    /// Traffic is affected; service down.
    Critical,
}

impl Severity {
    /// Every grade, lowest first.
    pub const ALL: [Severity; 4] =
        [Severity::Info, Severity::Warning, Severity::Major, Severity::Critical];

    /// The word (the serde name): `info`, `warning`, `major`, `critical`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Major => "major",
            Severity::Critical => "critical",
        }
    }
}

impl std::fmt::Display for Severity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What an [`Event`] reports. On the wire it is the kebab-case name, e.g. `tunnel-up`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "kebab-case")]
pub enum EventKind {
    /// A configuration revision was applied.
    ConfigApplied,
    /// A commit-confirm was confirmed.
    ConfigConfirmed,
    /// An unconfirmed commit was reverted when its time ran out.
    ConfirmTimeout,
    /// A revision could not be applied (and what is in force instead).
    ApplyFailed,
    /// The kernel's state had drifted from the applied configuration and was repaired.
    Drift,
    /// A plugin package was verified, compiled and stored.
    PluginUploaded,
    /// A plugin package was refused.
    PluginRefused,
    /// A plugin version was activated.
    PluginActivated,
    /// A plugin went back to its previous version.
    PluginRolledBack,
    /// A plugin version was removed.
    PluginRemoved,
    /// A plugin failed at run time; its hook fell back.
    PluginFault,
    /// A configuration's plugin pin could not be honoured.
    PluginPin,
    /// An alarm was raised.
    AlarmRaised,
    /// An alarm's condition ended.
    AlarmCleared,
    /// An operator acknowledged an alarm.
    AlarmAcknowledged,
    /// A tunnel's health check passes again.
    HealthHealthy,
    /// A tunnel's health check fails.
    HealthUnhealthy,
    /// A firmware image was written to the other slot.
    UpgradeStaged,
    /// A firmware image was refused.
    UpgradeRefused,
    /// The trial firmware's health gate started.
    UpgradeGate,
    /// The trial firmware passed its health gate.
    UpgradeBlessed,
    /// The trial firmware failed its health gate.
    UpgradeGateFailed,
    /// The box fell back to the previous firmware.
    UpgradeFellBack,
    /// An IKE SA was established.
    TunnelUp,
    /// An IKE SA was rekeyed.
    IkeRekeyed,
    /// An IKE SA went down.
    TunnelDown,
    /// A CHILD SA was installed.
    ChildUp,
    /// A CHILD SA was rekeyed.
    ChildRekeyed,
    /// A CHILD SA was removed.
    ChildDown,
    /// An IKE exchange failed (with the explanation).
    NegotiationFailed,
    /// Repeated failures were rate-limited.
    LogSuppressed,
    /// The dataplane refused a CHILD SA.
    InstallFailed,
    /// Another event of the IKE driver.
    TunnelEvent,
    /// A customer gateway's DNS name resolved to a new address (or stopped resolving).
    PeerAddress,
    /// A kind this program does not know (a newer daemon's).
    #[serde(other)]
    Unknown,
}

impl EventKind {
    /// Every kind this program emits.
    pub const ALL: [EventKind; 34] = [
        EventKind::ConfigApplied,
        EventKind::ConfigConfirmed,
        EventKind::ConfirmTimeout,
        EventKind::ApplyFailed,
        EventKind::Drift,
        EventKind::PluginUploaded,
        EventKind::PluginRefused,
        EventKind::PluginActivated,
        EventKind::PluginRolledBack,
        EventKind::PluginRemoved,
        EventKind::PluginFault,
        EventKind::PluginPin,
        EventKind::AlarmRaised,
        EventKind::AlarmCleared,
        EventKind::AlarmAcknowledged,
        EventKind::HealthHealthy,
        EventKind::HealthUnhealthy,
        EventKind::UpgradeStaged,
        EventKind::UpgradeRefused,
        EventKind::UpgradeGate,
        EventKind::UpgradeBlessed,
        EventKind::UpgradeGateFailed,
        EventKind::UpgradeFellBack,
        EventKind::TunnelUp,
        EventKind::IkeRekeyed,
        EventKind::TunnelDown,
        EventKind::ChildUp,
        EventKind::ChildRekeyed,
        EventKind::ChildDown,
        EventKind::NegotiationFailed,
        EventKind::LogSuppressed,
        EventKind::InstallFailed,
        EventKind::TunnelEvent,
        EventKind::PeerAddress,
    ];

    /// The wire name, e.g. `tunnel-up`.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::ConfigApplied => "config-applied",
            EventKind::ConfigConfirmed => "config-confirmed",
            EventKind::ConfirmTimeout => "confirm-timeout",
            EventKind::ApplyFailed => "apply-failed",
            EventKind::Drift => "drift",
            EventKind::PluginUploaded => "plugin-uploaded",
            EventKind::PluginRefused => "plugin-refused",
            EventKind::PluginActivated => "plugin-activated",
            EventKind::PluginRolledBack => "plugin-rolled-back",
            EventKind::PluginRemoved => "plugin-removed",
            EventKind::PluginFault => "plugin-fault",
            EventKind::PluginPin => "plugin-pin",
            EventKind::AlarmRaised => "alarm-raised",
            EventKind::AlarmCleared => "alarm-cleared",
            EventKind::AlarmAcknowledged => "alarm-acknowledged",
            EventKind::HealthHealthy => "health-healthy",
            EventKind::HealthUnhealthy => "health-unhealthy",
            EventKind::UpgradeStaged => "upgrade-staged",
            EventKind::UpgradeRefused => "upgrade-refused",
            EventKind::UpgradeGate => "upgrade-gate",
            EventKind::UpgradeBlessed => "upgrade-blessed",
            EventKind::UpgradeGateFailed => "upgrade-gate-failed",
            EventKind::UpgradeFellBack => "upgrade-fell-back",
            EventKind::TunnelUp => "tunnel-up",
            EventKind::IkeRekeyed => "ike-rekeyed",
            EventKind::TunnelDown => "tunnel-down",
            EventKind::ChildUp => "child-up",
            EventKind::ChildRekeyed => "child-rekeyed",
            EventKind::ChildDown => "child-down",
            EventKind::NegotiationFailed => "negotiation-failed",
            EventKind::LogSuppressed => "log-suppressed",
            EventKind::InstallFailed => "install-failed",
            EventKind::TunnelEvent => "tunnel-event",
            EventKind::PeerAddress => "peer-address",
            EventKind::Unknown => "unknown",
        }
    }
}

impl std::fmt::Display for EventKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Something that happened.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Event {
    /// Seconds since the Unix epoch.
    #[serde(deserialize_with = "instant::de")]
    pub time: u64,
    /// The kind, e.g. `tunnel-up`, `negotiation-failed`, `alarm-raised`.
    pub kind: EventKind,
    /// The object concerned, e.g. `tunnel/to-idc`.
    pub subject: String,
    /// What happened, explained.
    pub message: String,
    /// How serious.
    pub severity: Severity,
}

/// An alarm, active or cleared.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Alarm {
    /// The alarm's name from the configuration.
    pub name: String,
    /// The object it concerns.
    pub subject: String,
    /// Severity after the alarm plugin's mapping.
    pub severity: Severity,
    /// What is wrong.
    pub message: String,
    /// When it was raised, seconds since the epoch.
    #[serde(deserialize_with = "instant::de")]
    pub raised: u64,
    /// When it cleared, if it did.
    #[serde(default, deserialize_with = "instant::de_opt")]
    pub cleared: Option<u64>,
    /// Why it cleared (`tunnel to-idc is up`, `rule removed from the configuration`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clear_reason: Option<String>,
    /// Who acknowledged it and when; absent until acknowledged, and a new raise starts
    /// unacknowledged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acknowledged: Option<Acknowledgement>,
}

/// An operator's acknowledgement of a raised alarm.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Acknowledgement {
    /// The API token's name.
    pub by: String,
    /// When, seconds since the epoch.
    #[serde(deserialize_with = "instant::de")]
    pub at: u64,
}

/// One stored plugin version.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Plugin {
    /// The plugin's name from its manifest.
    pub name: String,
    /// Its version from the manifest.
    pub version: String,
    /// The hook it binds to: `spd`, `security-group` or `alarm`.
    pub hook: String,
    /// SHA-256 of the package, hex.
    pub digest: String,
    /// The trusted key that signed it.
    pub signer: String,
    /// True for the version in force.
    pub active: bool,
    /// Set when the plugin is quarantined, with the reason.
    pub quarantined: Option<String>,
}

/// `GET /plugins/hooks`: what runs for one policy hook and what it last published.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PluginHook {
    /// `spd`, `security-group` or `alarm`.
    pub hook: String,
    /// The plugin in force (`name@version`), or `builtin`.
    pub plugin: String,
    /// `uploaded` (the build a `[[plugin]]` binding pins, or else the store's active version),
    /// `bundled` (the default shipped with the firmware) or `builtin` (the native
    /// implementation of the defaults).
    pub source: String,
    /// Package digest of the plugin in force.
    pub digest: Option<String>,
    /// Generation of the table it last published (none for the alarm hook).
    pub generation: Option<u64>,
    /// Entries of that table: SPD entries, or security-group and ACL rules.
    pub entries: Option<usize>,
    /// Security-group and ACL chains of that table.
    pub chains: Option<usize>,
    /// Set while the plugin is quarantined: the fault and the time left.
    pub quarantined: Option<String>,
    /// Faults within the last ten minutes.
    pub recent_faults: u32,
    /// Why the last compilation or load failed (the previous table stays in force).
    pub last_error: Option<String>,
    /// Anything else the operator should know (several active plugins for the hook).
    pub note: Option<String>,
}

/// `status`: the gateway at a glance.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Status {
    /// The gateway's name.
    pub gateway: String,
    /// Firmware version.
    pub version: String,
    /// Seconds since the daemon started.
    pub uptime_secs: u64,
    /// The active configuration revision.
    pub revision: Option<u64>,
    /// Set while a commit-confirm is pending: seconds left.
    pub confirm_pending_secs: Option<u64>,
    /// Tunnels by state.
    pub tunnels: Vec<TunnelSummary>,
    /// Alarms not cleared.
    pub active_alarms: usize,
    /// Every dataplane drop of the gateway, by stage and reason (non-zero ones), then the rule
    /// drops with their attachment.
    #[serde(default)]
    pub drops: Vec<StageDrop>,
}

/// How one stage of a traced packet's path decides.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "kebab-case")]
pub enum StageVerdict {
    /// The packet goes on.
    Pass,
    /// The packet is dropped here.
    Drop,
    /// It goes on, but something is wrong (e.g. a one-way SA, a packet that will be fragmented).
    Warn,
    /// The stage does not apply to this packet.
    Skip,
}

/// One stage of `diagnose path`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PathStage {
    /// `ingress`, `network-acl`, `route`, `spd`, `child-sa`, `security-group`, `mtu`, `egress`.
    pub stage: String,
    /// What the stage does with the packet.
    pub verdict: StageVerdict,
    /// The configuration or table entry that decided, e.g. `route main 10.2.0.0/16 -> ist0`.
    pub entry: String,
    /// More words, when useful.
    pub detail: String,
}

/// `GET /api/v1/diagnose/path`: a packet followed through the gateway and back.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PathReport {
    /// The packet traced, e.g. `tcp 10.1.0.5:40000 -> 10.2.0.5:443 (1400 bytes)`.
    pub packet: String,
    /// The way out, stage by stage, up to the first drop.
    pub forward: Vec<PathStage>,
    /// The reply's way back (empty when the packet does not get out).
    pub reply: Vec<PathStage>,
    /// `pass` when both directions pass, `drop` otherwise.
    pub verdict: StageVerdict,
    /// What to change, most likely first.
    pub advice: Vec<String>,
    /// How the stages were evaluated (which tables are the dataplane's own).
    pub notes: Vec<String>,
    /// The dataplane drop counter that counts a packet dropped where the trace ends (`sg-out`,
    /// `no-sa`, `spd-no-policy`, ...); none when it passes or the kernel drops it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drop_counter: Option<String>,
    /// The dataplane's drop counters by reason when the trace was made (`sg-out` -> packets),
    /// and `rule <id>` -> packets for the rule that decided a security-group or ACL drop.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub counters: std::collections::BTreeMap<String, u64>,
}

/// One failed negotiation of a tunnel, explained.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct NegotiationFailure {
    /// The exchange that failed (`IKE_AUTH`, `CREATE_CHILD_SA`, ...).
    pub exchange: String,
    /// What happened.
    pub cause: String,
    /// What we offered.
    pub ours: String,
    /// What the peer offered or answered, when known.
    pub theirs: Option<String>,
    /// The smallest configuration change that would make both sides agree.
    pub suggestion: Option<String>,
}

/// `GET /api/v1/diagnose/tunnel/NAME`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TunnelDiagnosis {
    /// The tunnel.
    pub tunnel: String,
    /// `up`, `connecting`, `down`, `disabled`.
    pub state: String,
    /// The last failure the driver recorded, if any.
    pub last_failure: Option<NegotiationFailure>,
    /// Why the IKE SA last went down, if it did.
    pub last_down_reason: Option<String>,
    /// Recent `negotiation-failed` (and other) events about the tunnel, oldest first.
    pub events: Vec<Event>,
    /// What to change.
    pub advice: Vec<String>,
    /// How ESP travels while the tunnel is up: plain ESP, or ESP in UDP 4500 because a NAT was
    /// detected on the path (RFC 7296 §2.23) or NAT-T is forced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transport: Option<String>,
}

/// One A/B slot of the firmware, as `isthmus system status` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Slot {
    /// `a` or `b`.
    pub slot: String,
    /// Its unified kernel image on the ESP, e.g. `EFI/Linux/fw-b+2-1.efi` (empty: the slot is empty).
    pub file: String,
    /// The firmware version it holds (`IMAGE_VERSION`).
    pub version: Option<String>,
    /// The running firmware was booted from it.
    pub booted: bool,
    /// Marked good (no boot counter in its file name).
    pub blessed: bool,
    /// Boots left before systemd-boot falls back to the other slot (on trial only).
    pub tries_left: Option<u32>,
}

/// The last firmware upgrade and what became of it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct UpgradeRecord {
    /// The slot that ran when the upgrade was written (the fallback).
    pub from_slot: String,
    /// The slot the upgrade was written to.
    pub to_slot: String,
    /// Version before.
    pub from_version: String,
    /// Version of the upgrade.
    pub to_version: String,
    /// SHA-256 of the uploaded image.
    pub sha256: String,
    /// Who asked for it.
    pub requested_by: String,
    /// Seconds since the Unix epoch.
    #[serde(deserialize_with = "instant::de")]
    pub time: u64,
    /// Tunnels that were up before the reboot: the health gate waits for them.
    pub tunnels: Vec<String>,
    /// How long the new firmware has to pass its health gate.
    pub gate_secs: u64,
    /// Boots the new slot gets.
    pub tries: u32,
    /// `trial`, `gate-failed`, `blessed` or `fell-back`.
    pub state: String,
    /// What the health gate found.
    pub detail: String,
}

/// `GET /system`: the firmware slots and the last upgrade.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SystemStatus {
    /// The running firmware's version.
    pub version: String,
    /// The slot the running firmware was booted from (`None` outside the appliance image).
    pub booted_slot: Option<String>,
    /// Both slots (empty outside the appliance image).
    pub slots: Vec<Slot>,
    /// The last upgrade, if any.
    pub upgrade: Option<UpgradeRecord>,
}

/// The answer to `POST /system/upgrade`: what was written before the reboot.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct UpgradeResponse {
    /// The slot written.
    pub slot: String,
    /// The file written on the ESP.
    pub file: String,
    /// The version written.
    pub version: String,
    /// SHA-256 of the image as received.
    pub sha256: String,
    /// Bytes received.
    pub bytes: u64,
    /// Tunnels the health gate will wait for.
    pub tunnels: Vec<String>,
    /// Health gate time limit.
    pub gate_secs: u64,
    /// Boots the new slot gets before the firmware falls back.
    pub tries: u32,
    /// The appliance reboots into the new slot now.
    pub rebooting: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_kinds_travel_as_their_names() {
        for k in EventKind::ALL {
            let json = serde_json::to_string(&k).unwrap();
            assert_eq!(json, format!("\"{}\"", k.as_str()));
            assert_eq!(serde_json::from_str::<EventKind>(&json).unwrap(), k);
        }
        assert_eq!(
            serde_json::from_str::<EventKind>("\"from-the-future\"").unwrap(),
            EventKind::Unknown
        );
    }

    #[test]
    fn actions_are_tagged_json_in_kebab_case() {
        let a = Action::ConfigCommit {
            text: "x".into(),
            comment: "c".into(),
            confirm_secs: Some(300),
            dry_run: false,
        };
        let j = serde_json::to_string(&a).unwrap();
        assert!(j.starts_with(r#"{"action":"config-commit""#), "{j}");
        assert_eq!(serde_json::from_str::<Action>(&j).unwrap(), a);
        let e = serde_json::from_str::<Action>(r#"{"action":"format-disk"}"#).unwrap_err();
        assert!(e.to_string().contains("unknown variant `format-disk`"), "{e}");
    }

    #[test]
    fn actions_refuse_unknown_fields_in_every_variant_shape() {
        let bad = |j: &str| serde_json::from_str::<Action>(j).unwrap_err().to_string();
        assert!(bad(r#"{"action":"config-confirm","surprise":1}"#).contains("unknown field"));
        assert!(bad(r#"{"action":"tunnel-initiate","name":"t","x":1}"#).contains("unknown field"));
        let ok: Action = serde_json::from_str(r#"{"action":"config-confirm"}"#).unwrap();
        assert_eq!(ok, Action::ConfigConfirm {});
    }
}

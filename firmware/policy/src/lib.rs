//! The WebAssembly policy plugin host: loads signed components bound to the `spd`,
//! `security-group` and `alarm` hooks (see `wit/policy.wit`), runs them contained (deadlines,
//! memory caps, quarantine), and publishes the tables they compile for the dataplane's native
//! evaluator ([`isthmus_tables`]).
//!
//! Plugins never run per packet: a per-packet wasm call costs hundreds of nanoseconds, a native
//! table lookup tens. So a plugin *compiles* configuration into a table; rules a table cannot
//! express are *punted* and decided once per new flow, in batches, off the packet threads.
//!
//! The layers, bottom up:
//!
//! - [`package`]: the signed plugin package (component + manifest + ed25519 signature), key
//!   generation, signing and verification against the operator's trusted keys. It is its own
//!   crate, `isthmus-package`, so that the CLI signs without linking wasmtime;
//! - [`store`]: packages kept by digest in a sled tree, with activation, rollback and removal;
//! - [`host`]: wasmtime's component model behind a small API: one [`host::PluginHost`] (engine,
//!   epoch ticker), [`host::LoadedPlugin`]s compiled once and instantiated from an `InstancePre`,
//!   each call bounded by an epoch deadline and a memory cap;
//! - [`supervisor`]: containment and publication: a faulting plugin is quarantined with
//!   exponential back-off, an alarm event is queued, the last good table stays published; tables
//!   are validated (bounded sizes, references exist) and swapped atomically with a generation;
//! - [`model`]: the host-side types of plugin inputs and outputs;
//! - [`reference`](mod@reference): native implementations of the default plugins' documented semantics, used
//!   when no plugin is installed and as the oracle the plugins are tested against.
#![forbid(unsafe_code)]

pub mod host;
pub mod model;
/// The signed plugin package ([`isthmus_package`], re-exported).
pub use isthmus_package as package;
pub mod reference;
pub mod store;
pub mod supervisor;

pub use host::{Clock, HostConfig, LoadedPlugin, PluginHost, SystemClock};
pub use model::{
    AlarmAction, AlarmEvent, EventKind, Notification, PuntDecision, Severity, SgGroup, SgRule,
    SpdPolicy, Suppression,
};
pub use package::{
    Capability, Hook, Manifest, Package, PackageError, PublicKey, SecretKey, VerifiedPlugin,
    generate_key, sign, verify,
};
pub use store::{PluginInfo, PluginStore, VersionInfo};
pub use supervisor::{HookStatus, Limits, PolicyTables, Supervisor};

/// Everything that can go wrong in the policy host. Messages name what is wrong and, where an
/// operator can act, what to do.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// The package or a key was refused (bad format, unsigned, untrusted, tampered).
    #[error(transparent)]
    Package(#[from] isthmus_package::PackageError),
    /// The component does not fit its manifest (world, imports, capabilities).
    #[error("plugin `{name}` refused: {why}")]
    Refused {
        /// The plugin's name.
        name: String,
        /// Why.
        why: String,
    },
    /// wasmtime could not compile the component.
    #[error("plugin `{name}` does not compile: {why}")]
    Compile {
        /// The plugin's name.
        name: String,
        /// wasmtime's message.
        why: String,
    },
    /// The plugin trapped, ran past its deadline or exhausted its memory; it is quarantined.
    #[error("plugin `{name}` faulted ({fault}); quarantined for {quarantine_ms} ms")]
    Fault {
        /// The plugin's name.
        name: String,
        /// What happened.
        fault: Fault,
        /// How long it stays quarantined.
        quarantine_ms: u64,
    },
    /// The plugin is quarantined after earlier faults.
    #[error("plugin `{name}` is quarantined for another {remaining_ms} ms after: {last_fault}")]
    Quarantined {
        /// The plugin's name.
        name: String,
        /// Time left.
        remaining_ms: u64,
        /// The fault that put it there.
        last_fault: String,
    },
    /// The plugin returned an error for its input.
    #[error("plugin `{name}` refused the configuration: {message}")]
    PluginError {
        /// The plugin's name.
        name: String,
        /// Its message.
        message: String,
    },
    /// The plugin's table failed validation; the previous table stays published.
    #[error("plugin `{name}` produced an invalid table (the previous one stays): {why}")]
    InvalidTable {
        /// The plugin's name (or `builtin`).
        name: String,
        /// What is wrong.
        why: String,
    },
    /// No plugin is installed for a hook that needs one.
    #[error("no plugin is installed for hook `{0}`")]
    NoPlugin(&'static str),
    /// No plugin has this name.
    #[error("plugin store: no plugin named `{0}`")]
    NoSuchPlugin(String),
    /// The plugin has no version with this digest.
    #[error("plugin store: plugin `{name}` has no version {digest}")]
    NoSuchVersion {
        /// The plugin's name.
        name: String,
        /// The digest asked for.
        digest: String,
    },
    /// A rollback was asked for, but only one version was ever active.
    #[error("plugin store: plugin `{0}` has no previous version to roll back to")]
    NoPreviousVersion(String),
    /// The version is active, so it cannot be removed.
    #[error(
        "plugin store: version {digest} of `{name}` is active; activate or roll back to another first"
    )]
    InUse {
        /// The plugin's name.
        name: String,
        /// The active version's digest.
        digest: String,
    },
    /// A package for another hook under a name that already has versions for this one.
    #[error(
        "plugin store: plugin `{name}` is a `{stored}` plugin; this package is for hook `{package}`: give it another name"
    )]
    HookMismatch {
        /// The plugin's name.
        name: String,
        /// The hook of the stored versions.
        stored: &'static str,
        /// The hook of the new package.
        package: &'static str,
    },
    /// The store's database failed, or holds something it should not (a missing package).
    #[error("plugin store: {0}")]
    Backend(String),
    /// The wasmtime engine could not be set up.
    #[error("plugin engine: {0}")]
    Engine(String),
}

/// How a plugin call failed at runtime.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    /// The call ran past its deadline (epoch interruption).
    Deadline,
    /// The plugin tried to grow its memory past the cap.
    OutOfMemory,
    /// Any other trap (unreachable, out-of-bounds access, calling an import it has no right to).
    Trap(String),
}

impl std::fmt::Display for Fault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Fault::Deadline => f.write_str("ran past its deadline"),
            Fault::OutOfMemory => f.write_str("exhausted its memory cap"),
            Fault::Trap(t) => write!(f, "trapped: {t}"),
        }
    }
}

/// Result alias of this crate.
pub type Result<T, E = PolicyError> = std::result::Result<T, E>;

/// The directory the plugins' workspace builds into, relative to the repository root.
pub const PLUGINS_DIR: &str = "plugins/target/wasm32-wasip2/release";

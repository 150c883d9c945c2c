//! The crate's one error type. Errors caused by the peer map to RFC 7296 §3.10.1 notify types
//! through [`Error::notify`], so the state machines can answer them on the wire.

use crate::codec::NotifyType;

/// Everything that can go wrong in `isthmus-ike`. Messages name what is wrong; none of them ever
/// carries key material or a pre-shared key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// A proposal string holds a token that is not a supported algorithm.
    #[error("unknown algorithm `{token}` in {kind} proposal `{proposal}`; supported: {supported}")]
    UnknownAlgorithm {
        /// The offending token.
        token: String,
        /// The whole proposal it was found in.
        proposal: String,
        /// `IKE` or `ESP`.
        kind: &'static str,
        /// The supported tokens, comma separated.
        supported: &'static str,
    },
    /// A proposal string lacks a mandatory transform type.
    #[error("{kind} proposal `{proposal}` has no {missing}; add one of: {supported}")]
    IncompleteProposal {
        /// The proposal.
        proposal: String,
        /// `IKE` or `ESP`.
        kind: &'static str,
        /// What is missing (`encryption algorithm`, `PRF`, `key exchange group`).
        missing: &'static str,
        /// What could be added.
        supported: &'static str,
    },
    /// A proposal combines algorithms that cannot go together (RFC 7296 §3.3: an AEAD cipher
    /// takes no integrity algorithm, any other cipher needs one).
    #[error("{kind} proposal `{proposal}` {why}")]
    ConflictingProposal {
        /// The proposal.
        proposal: String,
        /// `IKE` or `ESP`.
        kind: &'static str,
        /// What conflicts and how to write it instead.
        why: &'static str,
    },
    /// A proposal list is empty (or holds only separators).
    #[error("the {kind} proposal list is empty; give at least one proposal such as `{example}`")]
    EmptyProposalList {
        /// `IKE` or `ESP`.
        kind: &'static str,
        /// An example proposal.
        example: &'static str,
    },
    /// A message or payload is shorter than its header or length field says.
    #[error("truncated {what}: needs {need} bytes, {have} present")]
    Truncated {
        /// Which structure.
        what: &'static str,
        /// Bytes needed.
        need: usize,
        /// Bytes present.
        have: usize,
    },
    /// A structure is syntactically wrong (a bad length field, trailing bytes, a bad value).
    #[error("malformed {what}: {why}")]
    Malformed {
        /// Which structure.
        what: &'static str,
        /// Why it is refused.
        why: String,
    },
    /// An unknown payload was marked critical (RFC 7296 §2.5).
    #[error("unsupported critical payload type {0}")]
    UnsupportedCritical(u8),
    /// The message uses an IKE major version other than 2 (§2.5).
    #[error("IKE major version {0} is not supported (only 2)")]
    InvalidMajorVersion(u8),
    /// The SK payload failed its integrity check (wrong keys or tampering).
    #[error("encrypted payload failed its integrity check")]
    IntegrityCheckFailed,
    /// A key exchange payload carries a public value that is not valid for its group.
    #[error("invalid key exchange data for group {0}")]
    InvalidKeyExchange(&'static str),
    /// An operator-supplied configuration is unusable.
    #[error("invalid tunnel configuration for `{tunnel}`: {why}")]
    InvalidConfig {
        /// The tunnel name.
        tunnel: String,
        /// What is wrong.
        why: String,
    },
    /// A command names a tunnel that is not configured.
    #[error("no tunnel named `{0}`")]
    UnknownTunnel(String),
    /// `add_tunnel` with a name that is already in use.
    #[error("a tunnel named `{0}` already exists")]
    DuplicateTunnel(String),
    /// A command names a CHILD SA that does not exist.
    #[error("no CHILD SA with SPI {0:#010x}")]
    UnknownChild(u32),
    /// A command needs an established IKE SA and the tunnel has none.
    #[error("tunnel `{0}` has no established IKE SA")]
    NotEstablished(String),
    /// A command is refused while another exchange is in progress.
    #[error("tunnel `{0}` is busy with another exchange; retry later")]
    Busy(String),
}

impl Error {
    /// The notify type to answer a peer with for this error, when one applies.
    pub fn notify(&self) -> Option<NotifyType> {
        match self {
            Error::UnsupportedCritical(_) => Some(NotifyType::UNSUPPORTED_CRITICAL_PAYLOAD),
            Error::InvalidMajorVersion(_) => Some(NotifyType::INVALID_MAJOR_VERSION),
            Error::Truncated { .. } | Error::Malformed { .. } => Some(NotifyType::INVALID_SYNTAX),
            Error::InvalidKeyExchange(_) => Some(NotifyType::INVALID_SYNTAX),
            _ => None,
        }
    }

    pub(crate) fn malformed(what: &'static str, why: impl Into<String>) -> Error {
        Error::Malformed { what, why: why.into() }
    }
}

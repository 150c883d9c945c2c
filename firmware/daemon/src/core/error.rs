//! What the core refuses or fails at, by kind. The core knows no HTTP: `http::failure` gives
//! each kind its status code and stable code.

use isthmus_api as api;

/// Why an action or a query did not succeed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CoreError {
    /// The configuration is invalid; `issues` locates each problem.
    #[error("{message}")]
    InvalidConfig {
        /// What is wrong, in one line.
        message: String,
        /// Each problem with its field path.
        issues: Vec<api::Issue>,
    },
    /// The named thing (revision, tunnel, plugin, alarm) does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The request is malformed.
    #[error("{0}")]
    BadRequest(String),
    /// The request conflicts with the current state (nothing to confirm, a pinned build, ...).
    #[error("{0}")]
    Conflict(String),
    /// The configuration was stored but could not be applied (and what is in force now).
    #[error("{0}")]
    ApplyFailed(String),
    /// A plugin package was refused (unsigned, tampered, untrusted, wrong world).
    #[error("{0}")]
    PluginRefused(String),
    /// An upload exceeds its limit.
    #[error("{0}")]
    TooLarge(String),
    /// Something on this side failed (store, plugin engine, a thread); the message says what.
    #[error("{0}")]
    Internal(String),
}

impl CoreError {
    /// [`CoreError::NotFound`].
    pub fn not_found(message: impl Into<String>) -> CoreError {
        CoreError::NotFound(message.into())
    }

    /// [`CoreError::BadRequest`].
    pub fn bad_request(message: impl Into<String>) -> CoreError {
        CoreError::BadRequest(message.into())
    }

    /// [`CoreError::Conflict`].
    pub fn conflict(message: impl Into<String>) -> CoreError {
        CoreError::Conflict(message.into())
    }

    /// [`CoreError::Internal`].
    pub fn internal(message: impl Into<String>) -> CoreError {
        CoreError::Internal(message.into())
    }
}

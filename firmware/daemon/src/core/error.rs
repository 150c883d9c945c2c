//! What the core refuses or fails at, by kind. The core knows no HTTP: `http::failure` gives
//! each kind its status code and stable code.

use isthmus_api as api;
use isthmus_config::Config;

use super::plan;

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

pub(super) fn store_failure(e: isthmus_config::Error) -> CoreError {
    use isthmus_config::Error as E;
    match e {
        E::Invalid(errs) => CoreError::InvalidConfig {
            message: format!("the configuration has {} error(s)", errs.issues().len()),
            issues: issues(errs.issues()),
        },
        E::NoSuchRevision(n) => CoreError::not_found(format!("revision {n} does not exist")),
        E::Empty => CoreError::not_found("no configuration has been committed yet"),
        e @ (E::Unchanged(_)
        | E::ConfirmPending { .. }
        | E::NothingToConfirm
        | E::ConfirmExpired { .. }
        | E::NothingToRevertTo) => CoreError::conflict(e.to_string()),
        e => CoreError::internal(e.to_string()),
    }
}

pub(super) fn issues(v: &[isthmus_config::Issue]) -> Vec<api::Issue> {
    v.iter()
        .map(|i| api::Issue {
            path: i.path.clone(),
            message: match i.line {
                Some(l) => format!("{} (line {l})", i.message),
                None => i.message.clone(),
            },
        })
        .collect()
}

/// What planning says of a configuration that validated ([`plan::check`]), as a validation
/// error: validation and apply agree on what can be planned because both run the planner.
pub(super) fn plan_issue(cfg: &Config) -> Option<api::Issue> {
    plan::check(cfg).err().map(|message| api::Issue { path: String::new(), message })
}

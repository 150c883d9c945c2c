//! The crate's error enum and the validation report (issues with field paths).

use std::fmt;

/// Everything that can go wrong in this crate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configuration does not parse or does not validate; each issue names its field.
    #[error("the configuration is invalid:\n{0}")]
    Invalid(Errors),
    /// A secret reference could not be read.
    #[error("secret from {source_ref} is unavailable: {reason}")]
    SecretUnavailable {
        /// The file or variable (never a value).
        source_ref: String,
        /// Why.
        reason: String,
    },
    /// A configuration file could not be read.
    #[error("reading {path}: {reason}")]
    Unreadable {
        /// The file.
        path: String,
        /// Why (the operating system's message).
        reason: String,
    },
    /// A configuration file is not UTF-8, which TOML requires (toml.io, "Spec": "A TOML file must
    /// be a valid UTF-8 encoded Unicode document").
    #[error(
        "{path} is not UTF-8 text: byte 0x{byte:02x} at line {line}, byte {column} of that line \
         (offset {offset} in the file); TOML files must be UTF-8"
    )]
    NotUtf8 {
        /// The file.
        path: String,
        /// The first byte that is not part of a UTF-8 character.
        byte: u8,
        /// Its 1-based line.
        line: usize,
        /// Its 1-based byte position in that line.
        column: usize,
        /// Its 0-based byte offset in the file.
        offset: usize,
    },
    /// The revision store failed (I/O, or sled itself).
    #[error("configuration store: {0}")]
    Store(String),
    /// The store's content contradicts itself (found by [`crate::Store::verify`]).
    #[error("configuration store is inconsistent: {0}")]
    Corrupt(String),
    /// No revision has this number.
    #[error("revision {0} does not exist")]
    NoSuchRevision(u64),
    /// The store holds no revision yet.
    #[error("no configuration has been committed yet")]
    Empty,
    /// The text is identical to the active revision.
    #[error("no changes: the configuration is identical to the active revision {0}")]
    Unchanged(u64),
    /// A commit-confirmed revision waits for confirmation; other commits must wait.
    #[error(
        "revision {rev} awaits confirmation (it reverts to revision {previous} in {remaining_secs} s); \
         confirm it, or roll back, before committing again"
    )]
    ConfirmPending {
        /// The unconfirmed revision.
        rev: u64,
        /// What it reverts to.
        previous: u64,
        /// Seconds left before the automatic revert.
        remaining_secs: u64,
    },
    /// `confirm` was called with nothing to confirm.
    #[error("nothing to confirm: no commit-confirmed revision is pending")]
    NothingToConfirm,
    /// `confirm` came after the deadline: the revision was already reverted.
    #[error(
        "too late: revision {rev} was not confirmed in time and has been reverted (now revision {restored_as})"
    )]
    ConfirmExpired {
        /// The revision that was not confirmed.
        rev: u64,
        /// The new revision holding the previous configuration.
        restored_as: u64,
    },
    /// commit-confirm needs something to revert to.
    #[error(
        "commit-confirm needs an active revision to fall back to; make the first commit a plain commit"
    )]
    NothingToRevertTo,
}

impl From<sled::Error> for Error {
    fn from(e: sled::Error) -> Error {
        Error::Store(e.to_string())
    }
}

/// How serious an issue is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Severity {
    /// The configuration cannot be committed.
    Error,
    /// Probably a mistake; the configuration can still be committed.
    Warning,
}

/// One problem found in a configuration.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Issue {
    /// Error or warning.
    pub severity: Severity,
    /// The field, as `tunnel[1].spd[0].remote` (arrays of tables by index, from 0; empty for the
    /// document as a whole).
    pub path: String,
    /// What is wrong and, where it can tell, how to fix it. Never contains a secret.
    pub message: String,
    /// The 1-based line in the text, when known.
    pub line: Option<usize>,
    /// The 1-based column (in characters) in that line, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub column: Option<usize>,
}

impl Issue {
    pub(crate) fn error(path: impl Into<String>, message: impl Into<String>) -> Issue {
        Issue::new(Severity::Error, path, message)
    }

    pub(crate) fn warning(path: impl Into<String>, message: impl Into<String>) -> Issue {
        Issue::new(Severity::Warning, path, message)
    }

    /// An issue not yet placed in the text. `message` must not contain a secret.
    pub fn new(severity: Severity, path: impl Into<String>, message: impl Into<String>) -> Issue {
        Issue { severity, path: path.into(), message: message.into(), line: None, column: None }
    }
}

impl fmt::Display for Issue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        let path = if self.path.is_empty() { "(document)" } else { &self.path };
        write!(f, "{kind}: {path}: {}", self.message)?;
        if let Some(l) = self.line {
            write!(f, " (line {l})")?;
        }
        Ok(())
    }
}

/// The errors that stop a configuration, all of them (parsing does not stop at the first).
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Errors(pub Vec<Issue>);

impl Errors {
    /// The issues.
    pub fn issues(&self) -> &[Issue] {
        &self.0
    }

    /// True when the issue list names `path` (for tests and tools).
    pub fn has_path(&self, path: &str) -> bool {
        self.0.iter().any(|i| i.path == path)
    }
}

impl fmt::Display for Errors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (n, i) in self.0.iter().enumerate() {
            if n > 0 {
                f.write_str("\n")?;
            }
            write!(f, "  {i}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Errors {}

/// The result of validating a whole configuration.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Report {
    /// Problems that prevent a commit.
    pub errors: Vec<Issue>,
    /// Likely mistakes.
    pub warnings: Vec<Issue>,
}

impl Report {
    /// True when there is no error (warnings allowed).
    pub fn is_ok(&self) -> bool {
        self.errors.is_empty()
    }

    pub(crate) fn push(&mut self, issue: Issue) {
        match issue.severity {
            Severity::Error => self.errors.push(issue),
            Severity::Warning => self.warnings.push(issue),
        }
    }

    /// The errors, or nothing.
    pub fn into_result(self) -> Result<Vec<Issue>, Errors> {
        if self.errors.is_empty() { Ok(self.warnings) } else { Err(Errors(self.errors)) }
    }

    /// Fills in the lines and columns of issues from the text they were found in.
    pub fn locate(&mut self, text: &str) {
        crate::parse::locate(text, self.errors.iter_mut().chain(self.warnings.iter_mut()));
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for i in self.errors.iter().chain(&self.warnings) {
            writeln!(f, "{i}")?;
        }
        Ok(())
    }
}

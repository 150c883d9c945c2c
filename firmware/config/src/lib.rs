//! The gateway's configuration: the TOML schema of the object model, whole-document validation
//! with field paths in every error, secrets that never print, and the sled-backed store of
//! numbered revisions with commit, commit-confirm and rollback.
//!
//! The flow a daemon follows:
//!
//! ```no_run
//! # fn main() -> Result<(), isthmus_config::Error> {
//! use std::time::{Duration, SystemTime};
//! use isthmus_config::{Config, Store};
//!
//! let text = std::fs::read_to_string("/etc/isthmus/gateway.toml").unwrap();
//! // Parse and validate: every error, each with the path of its field.
//! let checked = Config::check(&text).map_err(isthmus_config::Error::Invalid)?;
//! for w in &checked.warnings { eprintln!("{w}"); }
//!
//! let store = Store::open("/var/lib/isthmus/config")?;
//! // At start-up (and on a timer): revert an unconfirmed commit whose deadline passed.
//! store.poll(SystemTime::now())?;
//! // Commit what was checked (no second parse); it reverts unless confirmed within 5 minutes.
//! let c = store.commit_confirmed_checked(&checked, "ops", "add tunnel to idc", Duration::from_secs(300), SystemTime::now())?;
//! // ... apply, check the tunnel ...
//! store.confirm(SystemTime::now())?;
//! println!("{}", store.diff(c.rev - 1, c.rev)?); // secrets redacted
//! # Ok(()) }
//! ```
//!
//! Paths name fields as the TOML writes them, arrays of tables by index from 0:
//! `tunnel[1].spd[0].remote[0]`, `gateway.lan[0].networks[1]`, `route_table[0].route[12].tunnel`.
#![forbid(unsafe_code)]

pub mod diff;
mod error;
mod incremental;
pub mod interop;
pub mod offline;
mod parse;
mod schema;
pub mod secret;
mod store;
pub mod swanctl;
pub mod types;
mod validate;

pub use error::{Error, Errors, Issue, Report, Severity};
pub use schema::*;
pub use secret::{Secret, SecretValue};
pub use store::{Committed, Pending, Reverted, Revision, RevisionInfo, RevisionKind, Store};
pub use types::{Dur, IfAddr, PeerAddress, Protocol};

/// Reads a configuration file as text. A file that is not UTF-8 is refused with the line and
/// byte offset of the first bad byte (an editor or `iconv` can fix it there), not just "invalid
/// UTF-8".
pub fn read_file(path: &std::path::Path) -> Result<String, Error> {
    let bytes = std::fs::read(path).map_err(|e| Error::Unreadable {
        path: path.display().to_string(),
        reason: e.to_string(),
    })?;
    String::from_utf8(bytes).map_err(|e| {
        let bytes = e.as_bytes();
        let offset = e.utf8_error().valid_up_to();
        let before = &bytes[..offset];
        let line_start = before.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        Error::NotUtf8 {
            path: path.display().to_string(),
            byte: bytes[offset],
            line: before.iter().filter(|&&b| b == b'\n').count() + 1,
            column: offset - line_start + 1,
            offset,
        }
    })
}

/// A configuration that parsed and validated, with the warnings validation raised and the text
/// it came from (so that [`Store::commit_checked`] commits exactly what was checked, without
/// parsing it again).
#[derive(Clone)]
pub struct Checked {
    /// The configuration.
    pub config: Config,
    /// Likely mistakes (the configuration is still acceptable).
    pub warnings: Vec<Issue>,
    text: String,
}

impl Checked {
    /// The text that was checked. It may hold inline secrets: do not log it.
    pub fn text(&self) -> &str {
        &self.text
    }
}

impl std::fmt::Debug for Checked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The text may hold secrets; the config's own Debug redacts them.
        f.debug_struct("Checked")
            .field("config", &self.config)
            .field("warnings", &self.warnings)
            .field("text", &format_args!("<{} bytes>", self.text.len()))
            .finish()
    }
}

impl Config {
    /// Reads a TOML document. On failure returns every structural error (syntax, unknown
    /// fields, wrong types, unparseable prefixes and addresses), each with its path and line.
    pub fn from_toml(text: &str) -> Result<Config, Errors> {
        parse::from_toml(text)
    }

    /// Validates the configuration as a whole: references, prefixes, proposals, lifetimes,
    /// uniqueness, routing loops; plus warnings for likely mistakes.
    pub fn validate(&self) -> Report {
        validate::validate(self)
    }

    /// [`Config::from_toml`] then [`Config::validate`], with line numbers filled in.
    pub fn check(text: &str) -> Result<Checked, Errors> {
        let config = Config::from_toml(text)?;
        let mut report = config.validate();
        if !report.errors.is_empty() || !report.warnings.is_empty() {
            report.locate(text);
        }
        let warnings = report.into_result()?;
        Ok(Checked { config, warnings, text: text.to_owned() })
    }

    /// [`Config::check`] of `text`, an edit of the `previous` document: when the edit lies
    /// inside one list element (one route, one tunnel with its sub-tables, ...), only that
    /// element is parsed again, and the whole configuration is validated. The result is the
    /// same as [`Config::check`]'s (which it falls back to for any other edit).
    pub fn check_incremental(text: &str, previous: &Checked) -> Result<Checked, Errors> {
        let Some(config) = incremental::reparse(previous.text(), &previous.config, text) else {
            return Config::check(text);
        };
        let mut report = config.validate();
        // Warnings the previous document had too keep their lines (moved by the lines the edit
        // added or removed): locating issues anew means parsing the whole document.
        let old = previous.text().as_bytes();
        let same = old.iter().zip(text.as_bytes()).take_while(|(a, b)| a == b).count();
        let edit_line = incremental::line_count(&text[..same]) + 1;
        let delta =
            incremental::line_count(text) as i64 - incremental::line_count(previous.text()) as i64;
        let mut new_issues = !report.errors.is_empty();
        for i in report.warnings.iter_mut() {
            match previous.warnings.iter().find(|p| p.path == i.path && p.message == i.message) {
                Some(p) => {
                    i.line = p.line.map(|l| {
                        if l < edit_line { l } else { (l as i64 + delta).max(1) as usize }
                    });
                    i.column = p.column;
                }
                None => new_issues = true,
            }
        }
        if new_issues {
            report.locate(text);
        }
        let warnings = report.into_result()?;
        Ok(Checked { config, warnings, text: text.to_owned() })
    }

    /// The canonical TOML form: defaults filled in, fields in schema order, inline secrets
    /// replaced by `"<redacted sha256:…>"`. This is what `show` prints and `diff` compares; it is
    /// for people, not for committing back (the redacted secrets would become the keys).
    pub fn to_toml_redacted(&self) -> String {
        toml::to_string(self).unwrap_or_else(|e| format!("# cannot render: {e}\n"))
    }

    /// Resolves every secret reference (files, environment variables) and reports the ones that
    /// cannot be read, by path. Values are not returned; call [`Secret::resolve`] where needed.
    pub fn check_secrets(&self) -> Vec<Issue> {
        let mut out = Vec::new();
        let mut check = |path: String, s: &Secret| {
            if let Err(e) = s.resolve() {
                out.push(Issue::error(path, e.to_string()));
            }
        };
        for (i, t) in self.tunnels.iter().enumerate() {
            check(format!("tunnel[{i}].psk"), &t.psk);
        }
        for (i, n) in self.notify.iter().enumerate() {
            if let Some(s) = &n.secret {
                check(format!("notify[{i}].secret"), s);
            }
        }
        for (i, t) in self.api_tokens.iter().enumerate() {
            if let Some(s) = &t.token {
                check(format!("api_token[{i}].token"), s);
            }
        }
        out
    }
}

//! Offline checks of a configuration file, for editors and CI: `isthmus config validate FILE
//! --offline` and `isthmusd --check FILE`. They run [`Config::check`], the validation a daemon
//! runs for `POST /config/validate` and before every commit, and print what it finds the way
//! compilers do (`FILE:LINE:COLUMN: error: PATH: MESSAGE`), or as JSON.
//!
//! Offline means the file alone: secrets given as `{ file = ... }` or `{ env = ... }` are not
//! read (they belong to the gateway that will load the file), and nothing of the host (its
//! interfaces, its kernel) is looked at.

use std::fmt;
use std::io::Write;
use std::path::Path;

use crate::error::{Error, Issue, Severity};
use crate::{Checked, Config};

/// One issue in a named file. Its message never holds a secret ([`Issue::message`]).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Diagnostic {
    /// The file, as it was named on the command line.
    pub file: String,
    /// 1-based line, when the issue has a place in the text.
    pub line: Option<usize>,
    /// 1-based column in characters, when the issue has a place in the text.
    pub column: Option<usize>,
    /// Error or warning.
    pub severity: Severity,
    /// The field path, as in `tunnel[1].spd[0].remote` (empty for the document as a whole).
    pub path: String,
    /// What is wrong and, where it can tell, how to fix it.
    pub message: String,
}

impl Diagnostic {
    /// `issue`, found in `file`.
    pub fn new(file: &str, issue: &Issue) -> Diagnostic {
        Diagnostic {
            file: file.to_owned(),
            line: issue.line,
            column: issue.column,
            severity: issue.severity,
            path: issue.path.clone(),
            message: issue.message.clone(),
        }
    }
}

impl fmt::Display for Diagnostic {
    /// `FILE:LINE:COLUMN: error: PATH: MESSAGE`; without a place, `FILE: error: ...`, as
    /// compilers report what concerns a file as a whole.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:", self.file)?;
        if let Some(line) = self.line {
            write!(f, "{line}:{}:", self.column.unwrap_or(1))?;
        }
        let kind = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        write!(f, " {kind}: ")?;
        if !self.path.is_empty() {
            write!(f, "{}: ", self.path)?;
        }
        f.write_str(&self.message)
    }
}

/// What the offline check of one file found.
#[derive(Debug)]
pub struct FileCheck {
    /// The file, as it was named.
    pub file: String,
    /// The configuration, when it has no error (warnings allowed).
    pub checked: Option<Checked>,
    /// Errors, or warnings when there is no error, in the order of the text.
    pub diagnostics: Vec<Diagnostic>,
}

impl FileCheck {
    /// True when any diagnostic is an error: the file would be refused.
    pub fn has_errors(&self) -> bool {
        self.diagnostics.iter().any(|d| d.severity == Severity::Error)
    }

    /// Adds an error about the document as a whole (a check the caller runs beyond
    /// [`Config::check`]); the configuration is then refused.
    pub fn refuse(&mut self, message: impl Into<String>) {
        let issue = Issue::new(Severity::Error, "", message);
        self.diagnostics.push(Diagnostic::new(&self.file, &issue));
        self.checked = None;
    }

    /// Prints the diagnostics as text on standard error, one per line, then `FILE: valid` on
    /// standard output when there is no error; with `json`, a JSON array of [`Diagnostic`]s on
    /// standard output and nothing else.
    pub fn print(&self, json: bool) -> std::io::Result<()> {
        if json {
            let mut out = std::io::stdout().lock();
            serde_json::to_writer_pretty(&mut out, &self.diagnostics)?;
            return writeln!(out);
        }
        let mut err = std::io::stderr().lock();
        for d in &self.diagnostics {
            writeln!(err, "{d}")?;
        }
        if !self.has_errors() {
            writeln!(std::io::stdout(), "{}: valid", self.file)?;
        }
        Ok(())
    }
}

/// Reads and checks the file at `path` ([`crate::read_file`], then [`Config::check`]). A file
/// that is not UTF-8 is a diagnostic at its first bad byte; only a file that cannot be read at
/// all is an `Err`.
pub fn check_file(path: &Path) -> Result<FileCheck, Error> {
    let file = path.display().to_string();
    let (checked, issues) = match crate::read_file(path) {
        Ok(text) => match Config::check(&text) {
            Ok(c) => {
                let warnings = c.warnings.clone();
                (Some(c), warnings)
            }
            Err(e) => (None, e.0),
        },
        Err(e @ Error::NotUtf8 { line, column, .. }) => {
            let mut i = Issue::new(Severity::Error, "", e.to_string());
            (i.line, i.column) = (Some(line), Some(column));
            (None, vec![i])
        }
        Err(e) => return Err(e),
    };
    let mut diagnostics: Vec<Diagnostic> =
        issues.iter().map(|i| Diagnostic::new(&file, i)).collect();
    // Unplaced issues last; otherwise in the order of the text, as an editor lists them.
    diagnostics.sort_by_key(|d| (d.line.is_none(), d.line, d.column));
    Ok(FileCheck { file, checked, diagnostics })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn issue(line: Option<usize>, column: Option<usize>, path: &str) -> Issue {
        let mut i = Issue::new(Severity::Warning, path, "m");
        (i.line, i.column) = (line, column);
        i
    }

    #[test]
    fn diagnostics_print_as_compilers_print_theirs() {
        let d = Diagnostic::new("a.toml", &issue(Some(3), Some(7), "tunnel[0].mtu"));
        assert_eq!(d.to_string(), "a.toml:3:7: warning: tunnel[0].mtu: m");
        let whole = Diagnostic::new("a.toml", &issue(None, None, ""));
        assert_eq!(whole.to_string(), "a.toml: warning: m");
    }

    #[test]
    fn json_has_the_fields_editors_read() {
        let d = Diagnostic::new("a.toml", &issue(Some(3), Some(7), "x"));
        let v = serde_json::to_value(&d).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"file": "a.toml", "line": 3, "column": 7, "severity": "warning",
                               "path": "x", "message": "m"})
        );
    }
}

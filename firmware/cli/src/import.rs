//! `isthmus config import`: the file side of [`isthmus_config::swanctl`]. It reads the
//! swanctl.conf, the files its `include` statements name (relative to the including file, with
//! glob(3) wildcards as strongSwan reads them), the separate secrets file and the base
//! configuration; prints each note on standard error; writes the configuration.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use isthmus_config::swanctl::{self, Options, Source};

use crate::client::{CliError, exit};

/// Imports `file` and writes the configuration to `output` (or standard output).
pub fn run(
    file: &Path,
    secrets: Option<&Path>,
    base: Option<&Path>,
    output: Option<&Path>,
) -> anyhow::Result<()> {
    let main = read(file)?;
    let secrets = secrets.map(read).transpose()?;
    let base = base.map(crate::read_file).transpose()?;
    let mut include = |from: &str, pattern: &str| include(from, pattern);
    let imported = swanctl::import(&main, secrets.as_ref(), &mut include, &Options { base })
        .map_err(|e| CliError { code: exit::INVALID, message: e.to_string(), details: vec![] })?;
    let mut err = std::io::stderr().lock();
    for n in &imported.notes {
        writeln!(err, "{n}")?;
    }
    for w in &imported.checked.warnings {
        writeln!(err, "warning: {w}")?;
    }
    match output {
        Some(o) => write_private(o, &imported.text)?,
        None => std::io::stdout().write_all(imported.text.as_bytes())?,
    }
    writeln!(
        err,
        "imported {} tunnel(s) ({}); {} setting(s) not carried over, named above; the configuration validates",
        imported.tunnels.len(),
        imported.tunnels.join(", "),
        imported.notes.len()
    )?;
    Ok(())
}

/// Writes `text` readable by its owner only: it holds pre-shared keys.
fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| anyhow::anyhow!("writing {}: {e}", path.display()))?;
    f.write_all(text.as_bytes())?;
    Ok(())
}

/// A swanctl file as text; one that is not UTF-8 is refused at its first bad byte.
fn read(path: &Path) -> anyhow::Result<Source> {
    let text = isthmus_config::read_file(path).map_err(|e| match e {
        isthmus_config::Error::NotUtf8 { path, line, byte, .. } => CliError {
            code: exit::INVALID,
            message: format!(
                "{path}:{line}: byte 0x{byte:02x} is not text; a swanctl.conf is UTF-8 (or ASCII) text"
            ),
            details: vec![],
        },
        e => CliError { code: exit::ERROR, message: e.to_string(), details: vec![] },
    })?;
    Ok(Source { name: path.display().to_string(), text })
}

/// The files an `include` names, sorted as glob(3) returns them.
fn include(from: &str, pattern: &str) -> Result<Vec<Source>, String> {
    let dir = Path::new(from).parent().unwrap_or(Path::new("."));
    let full =
        if Path::new(pattern).is_absolute() { PathBuf::from(pattern) } else { dir.join(pattern) };
    let name = full.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_owned();
    if !name.contains(['*', '?']) {
        return read(&full).map(|s| vec![s]).map_err(|e| e.to_string());
    }
    // Wildcards in the last component only: what swanctl.conf's `include conf.d/*.conf` needs.
    // (The `glob` crate would add a dependency for this one pattern.)
    let parent = full.parent().unwrap_or(Path::new("."));
    let entries = match std::fs::read_dir(parent) {
        Ok(e) => e,
        // strongSwan ignores a pattern that matches nothing.
        Err(_) => return Ok(Vec::new()),
    };
    let mut paths: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| !n.starts_with('.') && matches(&name, n))
        })
        .collect();
    paths.sort();
    paths.iter().map(|p| read(p).map_err(|e| e.to_string())).collect()
}

/// glob(3)'s `*` and `?` on one file name.
fn matches(pattern: &str, name: &str) -> bool {
    let (p, n): (Vec<char>, Vec<char>) = (pattern.chars().collect(), name.chars().collect());
    let (mut pi, mut ni, mut star, mut mark) = (0, 0, None, 0);
    while ni < n.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == n[ni]) {
            pi += 1;
            ni += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ni;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ni = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

#[cfg(test)]
mod tests {
    #[test]
    fn wildcards_match_as_glob_does() {
        assert!(super::matches("*.conf", "a.conf"));
        assert!(super::matches("a?.conf", "ab.conf"));
        assert!(!super::matches("*.conf", "a.conf.bak"));
        assert!(super::matches("*", "x"));
    }
}

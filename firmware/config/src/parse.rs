//! Reading the TOML document into a [`Config`], reporting every structural error at once.
//!
//! The fast path deserializes the whole document in one pass. When that fails, the slow path
//! parses the document into a spanned tree and deserializes each section and each array element
//! on its own; when an element has an error it is reported with its path and line, the offending
//! field is cut out, and the element is tried again, so that one document yields all its errors.
//! Messages never quote the source text (a syntax error on a `psk` line would print the key);
//! fields that hold secrets get a fixed message.

use std::collections::HashSet;

use serde::de::DeserializeOwned;
use serde_path_to_error::Segment;
use toml::Spanned;
use toml::de::{DeArray, DeTable, DeValue, ValueDeserializer};

use crate::error::{Errors, Issue};
use crate::schema::Config;
use crate::secret::SECRET_SHAPE;

/// Fields whose values are secrets: errors about them never quote what was written.
const SECRET_FIELDS: [&str; 4] = ["psk", "secret", "token", "inline"];

/// The document's top-level lists (arrays of tables, `[[name]]`), in schema order; the
/// incremental re-parse replaces their elements one by one.
pub(crate) const LISTS: [&str; 10] = [
    "customer_gateway",
    "tunnel",
    "route_table",
    "security_group",
    "network_acl",
    "plugin",
    "trusted_key",
    "alarm",
    "notify",
    "api_token",
];

/// Every top-level section: `schema`, `[gateway]`, then the [`LISTS`].
const SECTIONS: [&str; 12] = {
    let mut s = ["schema", "gateway", "", "", "", "", "", "", "", "", "", ""];
    let mut i = 0;
    while i < LISTS.len() {
        s[i + 2] = LISTS[i];
        i += 1;
    }
    s
};

/// One step of a field path.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Seg {
    Key(String),
    Index(usize),
}

/// Renders `tunnel[1].spd[0].remote`. Keys that are not plain words are quoted.
pub(crate) fn render(path: &[Seg]) -> String {
    let mut out = String::new();
    for s in path {
        match s {
            Seg::Index(i) => out.push_str(&format!("[{i}]")),
            Seg::Key(k) => {
                if !out.is_empty() {
                    out.push('.');
                }
                if !k.is_empty()
                    && k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
                {
                    out.push_str(k);
                } else {
                    out.push_str(&format!("{k:?}"));
                }
            }
        }
    }
    out
}

/// Parses a rendered path back (for locating lines of validation issues).
fn unrender(path: &str) -> Vec<Seg> {
    let mut out = Vec::new();
    let mut rest = path;
    while !rest.is_empty() {
        if let Some(r) = rest.strip_prefix('.') {
            rest = r;
        } else if let Some(r) = rest.strip_prefix('[') {
            let end = r.find(']').unwrap_or(r.len());
            match r[..end].parse() {
                Ok(i) => out.push(Seg::Index(i)),
                Err(_) => return out,
            }
            rest = r.get(end + 1..).unwrap_or("");
        } else if rest.starts_with('"') {
            // A quoted key: find the closing quote, honouring escapes.
            let bytes = rest.as_bytes();
            let mut i = 1;
            while i < bytes.len() && bytes[i] != b'"' {
                i += if bytes[i] == b'\\' { 2 } else { 1 };
            }
            let quoted = rest.get(..=i).unwrap_or(rest);
            out.push(Seg::Key(quoted.trim_matches('"').to_owned()));
            rest = rest.get(i + 1..).unwrap_or("");
        } else {
            let end = rest.find(['.', '[']).unwrap_or(rest.len());
            out.push(Seg::Key(rest[..end].to_owned()));
            rest = &rest[end..];
        }
    }
    out
}

/// 1-based line and column of a byte offset. The column counts characters, as rustc's and
/// most editors' `file:line:column` do, so a line with non-ASCII text still points right.
pub(crate) fn position(text: &str, offset: usize) -> (usize, usize) {
    let end = offset.min(text.len());
    let before = &text.as_bytes()[..end];
    let line_start = before.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    let line = before.iter().filter(|b| **b == b'\n').count() + 1;
    let column = match text.get(line_start..end) {
        Some(s) => s.chars().count() + 1,
        None => end - line_start + 1,
    };
    (line, column)
}

/// Sets an issue's line and column from a byte offset in `text`.
fn place(issue: &mut Issue, text: &str, offset: Option<usize>) {
    if let Some(o) = offset {
        let (line, column) = position(text, o);
        issue.line = Some(line);
        issue.column = Some(column);
    }
}

/// A close name from `choices`, for "did you mean" hints (edit distance ≤ 2).
pub(crate) fn suggest<'a>(
    word: &str,
    choices: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    choices
        .into_iter()
        .map(|c| (edit_distance(word, c), c))
        .filter(|(d, _)| *d <= 2)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != *cb);
            cur[j + 1] = sub.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

/// Adds a "did you mean" to serde's "unknown field `x`, expected one of ..." message.
fn improve_message(msg: &str) -> String {
    if let Some(rest) = msg.strip_prefix("unknown field `")
        && let Some((field, tail)) = rest.split_once('`')
    {
        let expected: Vec<&str> = tail.split('`').skip(1).step_by(2).collect();
        if let Some(s) = suggest(field, expected.iter().copied()) {
            return format!("unknown field `{field}`; did you mean `{s}`?");
        }
        let list = expected.iter().map(|e| format!("`{e}`")).collect::<Vec<_>>().join(", ");
        return format!("unknown field `{field}`; the fields here are {list}");
    }
    msg.to_owned()
}

/// Reads a configuration document; on failure returns every error found, each with its path.
pub fn from_toml(text: &str) -> Result<Config, Errors> {
    // Fast path: a valid document is read in one pass, without tracking paths.
    if let Ok(c) = toml::from_str::<Config>(text) {
        return Ok(c);
    }
    let mut issues = slow_path(text);
    if issues.is_empty() {
        // The fast path failed on something the slow path accepts: report that error.
        match toml::de::Deserializer::parse(text).map_err(|e| (Vec::new(), e)).and_then(|d| {
            serde_path_to_error::deserialize::<_, Config>(d).map_err(|e| {
                let path = convert(e.path());
                (path, e.into_inner())
            })
        }) {
            Ok(c) => return Ok(c),
            Err((path, e)) => {
                let mut i = Issue::error(render(&path), message_for(&path, e.message()));
                place(&mut i, text, e.span().map(|s| s.start));
                issues.push(i);
            }
        }
    }
    Err(Errors(issues))
}

fn convert(p: &serde_path_to_error::Path) -> Vec<Seg> {
    p.iter()
        .filter_map(|s| match s {
            Segment::Seq { index } => Some(Seg::Index(*index)),
            Segment::Map { key } => Some(Seg::Key(key.clone())),
            Segment::Enum { .. } | Segment::Unknown => None,
        })
        .collect()
}

fn message_for(path: &[Seg], msg: &str) -> String {
    let secret =
        path.iter().any(|s| matches!(s, Seg::Key(k) if SECRET_FIELDS.contains(&k.as_str())));
    if secret && !msg.starts_with("missing field") && !msg.starts_with("unknown field") {
        return SECRET_SHAPE.to_owned();
    }
    improve_message(msg)
}

fn slow_path(text: &str) -> Vec<Issue> {
    let root = match DeTable::parse(text) {
        Ok(r) => r,
        Err(e) => {
            let mut i = Issue::error("", format!("TOML syntax: {}", e.message().trim()));
            place(&mut i, text, e.span().map(|s| s.start));
            return vec![i];
        }
    };
    let mut c = Collector { text, issues: Vec::new() };
    let root_span = root.span();
    let table = root.into_inner();
    if !table.keys().any(|k| k.get_ref() == "gateway") {
        let mut i = Issue::error(
            "gateway",
            "the [gateway] section is missing; it describes this appliance's WAN, LANs and management interface",
        );
        place(&mut i, text, Some(root_span.start));
        c.issues.push(i);
    }
    for (key, value) in table {
        let name = key.get_ref().to_string();
        let path = vec![Seg::Key(name.clone())];
        match name.as_str() {
            "schema" => {
                c.one::<u32>(&path, value);
            }
            "gateway" => {
                c.one::<crate::schema::Gateway>(&path, value);
            }
            "customer_gateway" => c.many::<crate::schema::CustomerGateway>(&path, value),
            "tunnel" => c.many::<crate::schema::Tunnel>(&path, value),
            "route_table" => c.many::<crate::schema::RouteTable>(&path, value),
            "security_group" => c.many::<crate::schema::SecurityGroup>(&path, value),
            "network_acl" => c.many::<crate::schema::NetworkAcl>(&path, value),
            "plugin" => c.many::<crate::schema::Plugin>(&path, value),
            "trusted_key" => c.many::<crate::schema::TrustedKey>(&path, value),
            "alarm" => c.many::<crate::schema::Alarm>(&path, value),
            "notify" => c.many::<crate::schema::Notify>(&path, value),
            "api_token" => c.many::<crate::schema::ApiToken>(&path, value),
            other => {
                let hint = match suggest(other, SECTIONS) {
                    Some(s) => format!("did you mean `{s}`?"),
                    None => format!("the sections are {}", SECTIONS.join(", ")),
                };
                let mut i =
                    Issue::error(render(&path), format!("unknown section `{other}`; {hint}"));
                place(&mut i, text, Some(key.span().start));
                c.issues.push(i);
            }
        }
    }
    c.issues.sort_by_key(|i| (i.line.unwrap_or(0), i.column.unwrap_or(0)));
    c.issues
}

struct Collector<'t> {
    text: &'t str,
    issues: Vec<Issue>,
}

impl Collector<'_> {
    fn many<T: DeserializeOwned>(&mut self, path: &[Seg], value: Spanned<DeValue<'_>>) {
        let span = value.span();
        match value.into_inner() {
            DeValue::Array(items) => {
                for (n, item) in items.iter().enumerate() {
                    let mut p = path.to_vec();
                    p.push(Seg::Index(n));
                    self.one::<T>(&p, item.clone());
                }
            }
            _ => {
                let name = render(path);
                let mut i = Issue::error(
                    name.clone(),
                    format!("`{name}` is a list: write each entry as [[{name}]]"),
                );
                place(&mut i, self.text, Some(span.start));
                self.issues.push(i);
            }
        }
    }

    /// Deserializes one value, cutting out bad fields and retrying to find all of its errors.
    fn one<T: DeserializeOwned>(
        &mut self,
        base: &[Seg],
        mut value: Spanned<DeValue<'_>>,
    ) -> Option<T> {
        let mut reported: HashSet<Vec<Seg>> = HashSet::new();
        // Elements cut out of arrays so far, as (array path, index at the time), to map later
        // paths back to the indices the operator wrote.
        let mut cuts: Vec<(Vec<Seg>, usize)> = Vec::new();
        for _ in 0..64 {
            let err = match serde_path_to_error::deserialize::<_, T>(ValueDeserializer::from(
                value.clone(),
            )) {
                Ok(v) => return if reported.is_empty() { Some(v) } else { None },
                Err(e) => e,
            };
            let here = convert(err.path());
            let inner = err.into_inner();
            let msg = inner.message().to_owned();
            let original = uncut(&here, &cuts);
            if let Some(field) =
                msg.strip_prefix("missing field `").and_then(|r| r.split('`').next())
            {
                let mut p = original.clone();
                p.push(Seg::Key(field.to_owned()));
                if !reported.contains(&p) {
                    let at = span_of(&value, &here).map(|s| s.start);
                    self.report(base, &p, &format!("missing field `{field}`"), at);
                }
                return None;
            }
            let at = inner.span().or_else(|| span_of(&value, &here)).map(|s| s.start);
            self.report(base, &original, &msg, at);
            reported.insert(original);
            if here.is_empty() || !cut(&mut value, &here) {
                return None;
            }
            if let Some((Seg::Index(i), parent)) = here.split_last() {
                cuts.push((parent.to_vec(), *i));
            }
        }
        None
    }

    /// Records an error at `rel` below `base`, placed at the byte offset `at`.
    fn report(&mut self, base: &[Seg], rel: &[Seg], msg: &str, at: Option<usize>) {
        let mut full = base.to_vec();
        full.extend_from_slice(rel);
        let mut i = Issue::error(render(&full), message_for(&full, msg));
        place(&mut i, self.text, at);
        self.issues.push(i);
    }
}

/// Maps a path in the current (cut) tree back to the original indices.
fn uncut(path: &[Seg], cuts: &[(Vec<Seg>, usize)]) -> Vec<Seg> {
    let mut out = path.to_vec();
    for depth in 0..out.len() {
        if let Seg::Index(mut i) = out[depth] {
            let parent = &path[..depth];
            for (arr, removed) in cuts.iter().rev() {
                if arr.as_slice() == parent && *removed <= i {
                    i += 1;
                }
            }
            out[depth] = Seg::Index(i);
        }
    }
    out
}

/// Removes the value at `path` (a table key or an array element). False when not found.
fn cut(value: &mut Spanned<DeValue<'_>>, path: &[Seg]) -> bool {
    let Some((last, parent)) = path.split_last() else { return false };
    let mut cur = value.get_mut();
    for s in parent {
        cur = match (s, cur) {
            (Seg::Key(k), DeValue::Table(t)) => match t.get_mut(k.as_str()) {
                Some(v) => v.get_mut(),
                None => return false,
            },
            (Seg::Index(i), DeValue::Array(a)) => match a.get_mut(*i) {
                Some(v) => v.get_mut(),
                None => return false,
            },
            _ => return false,
        };
    }
    match (last, cur) {
        (Seg::Key(k), DeValue::Table(t)) => t.remove(k.as_str()).is_some(),
        (Seg::Index(i), DeValue::Array(a)) if *i < a.len() => {
            let mut rebuilt = DeArray::new();
            for (n, v) in a.iter().enumerate() {
                if n != *i {
                    rebuilt.push(v.clone());
                }
            }
            *a = rebuilt;
            true
        }
        _ => false,
    }
}

/// The source span of the value at `path` (the key's span for table entries). Where the path
/// goes deeper than the value, the span of the deepest value found.
fn span_of(value: &Spanned<DeValue<'_>>, path: &[Seg]) -> Option<std::ops::Range<usize>> {
    walk(value, path).or_else(|| Some(value.span()))
}

/// The span of exactly `path`, `None` when it does not exist.
fn walk(value: &Spanned<DeValue<'_>>, path: &[Seg]) -> Option<std::ops::Range<usize>> {
    let mut cur = value;
    let mut span = value.span();
    for (n, s) in path.iter().enumerate() {
        cur = match (s, cur.get_ref()) {
            (Seg::Key(k), DeValue::Table(t)) => {
                let (key, v) = t.get_key_value(k.as_str())?;
                span = key.span();
                v
            }
            (Seg::Index(i), DeValue::Array(a)) => {
                let v = a.get(*i)?;
                span = v.span();
                v
            }
            // A scalar where the path goes on: report the scalar (the error is about it).
            _ if n > 0 => return Some(span),
            _ => return None,
        };
    }
    Some(span)
}

/// Fills in the lines and columns of issues whose paths exist in `text`.
pub(crate) fn locate<'a>(text: &str, issues: impl Iterator<Item = &'a mut Issue>) {
    let Ok(root) = DeTable::parse(text) else { return };
    let root = Spanned::new(root.span(), DeValue::Table(root.into_inner()));
    for issue in issues {
        if issue.line.is_none() {
            let segs = unrender(&issue.path);
            // Walk as deep as the path exists (a missing optional field points at its table).
            let mut depth = segs.len();
            while depth > 0 {
                if let Some(span) = walk(&root, &segs[..depth]) {
                    place(issue, text, Some(span.start));
                    break;
                }
                depth -= 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_render_and_parse_back() {
        let p = vec![
            Seg::Key("tunnel".into()),
            Seg::Index(1),
            Seg::Key("spd".into()),
            Seg::Index(0),
            Seg::Key("remote".into()),
        ];
        assert_eq!(render(&p), "tunnel[1].spd[0].remote");
        assert_eq!(unrender("tunnel[1].spd[0].remote"), p);
        let q = vec![Seg::Key("plugin".into()), Seg::Key("a.b".into())];
        assert_eq!(render(&q), "plugin.\"a.b\"");
        assert_eq!(unrender("plugin.\"a.b\""), q);
    }

    #[test]
    fn cut_indices_map_back_to_what_was_written() {
        let arr = vec![Seg::Key("networks".into())];
        let cuts = vec![(arr.clone(), 1)];
        let later = vec![Seg::Key("networks".into()), Seg::Index(1)];
        assert_eq!(uncut(&later, &cuts), vec![Seg::Key("networks".into()), Seg::Index(2)]);
        let earlier = vec![Seg::Key("networks".into()), Seg::Index(0)];
        assert_eq!(uncut(&earlier, &cuts), earlier);
    }

    #[test]
    fn positions_count_lines_and_characters_from_one() {
        let text = "a = 1\nname = \"é\" x\n";
        assert_eq!(position(text, 0), (1, 1));
        assert_eq!(position(text, 6), (2, 1));
        // `x` follows a two-byte character: column 12, byte 13 of the line.
        assert_eq!(position(text, text.find('x').unwrap()), (2, 12));
        assert_eq!(position(text, 999), (3, 1));
    }

    #[test]
    fn suggestions() {
        assert_eq!(suggest("remotes", ["local", "remote"]), Some("remote"));
        assert_eq!(suggest("zzzzzz", ["local", "remote"]), None);
        assert_eq!(
            improve_message("unknown field `remotes`, expected one of `local`, `remote`"),
            "unknown field `remotes`; did you mean `remote`?"
        );
    }
}

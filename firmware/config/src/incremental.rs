//! Re-reading a document after a small edit without parsing all of it.
//!
//! An operator's change usually touches one element of one list (a route's metric, a tunnel's
//! proposal). A document with 10,000 routes takes about 30 ms to parse; the element alone, a
//! few microseconds. [`reparse`] finds the bytes that differ from a document already parsed,
//! checks that they lie inside one array-of-tables element (`[[tunnel]]` with its sub-tables,
//! or a leaf `[[route_table.route]]`, `[[security_group.rule]]`, `[[network_acl.rule]]`),
//! parses that element on its own and puts it in place of the old one.
//!
//! It gives up (the caller parses the whole document) whenever the shortcut might differ from
//! a full parse: multi-line strings anywhere (their lines could look like headers), a line that
//! starts with `[` but is not a plain header (a nested array continued on its own line), a
//! change that touches or crosses a header line or the keys before the first header, or an
//! element that does not parse on its own (the full parse then reports the error with its
//! path and line). TOML (v1.0.0, "Array of Tables") appends a `[[a.b]]` element to the last
//! `[[a]]` element, and keys of one element cannot collide with another's, which is what makes
//! an element parse the same alone as in its document.

use std::collections::BTreeMap;

use serde::de::DeserializeOwned;

use crate::parse::LISTS;
use crate::schema::Config;

/// A header line: `[name]` or `[[name]]` (whitespace removed from the name).
struct Header {
    start: usize,
    name: String,
    array: bool,
}

/// Nested lists whose elements have no sub-tables: (parent, child).
const LEAF: [(&str, &str); 3] =
    [("route_table", "route"), ("security_group", "rule"), ("network_acl", "rule")];

/// Parses a header line, `None` for a line that starts with `[` but is something else.
fn header(line: &str) -> Option<(String, bool)> {
    let t = line.trim();
    // Quoted keys could hold `#`, `]` or `.`: leave them to the full parser.
    if t.contains(['"', '\'']) {
        return None;
    }
    let t = match t.find('#') {
        Some(i) => t[..i].trim_end(),
        None => t,
    };
    let (inner, array) = if let Some(r) = t.strip_prefix("[[") {
        (r.strip_suffix("]]")?, true)
    } else {
        (t.strip_prefix('[')?.strip_suffix(']')?, false)
    };
    let name: String = inner.chars().filter(|c| !c.is_whitespace()).collect();
    let ok = !name.is_empty()
        && !name.starts_with('.')
        && !name.ends_with('.')
        && !name.contains("..")
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    ok.then_some((name, array))
}

/// Every header of `text`, or `None` when a line that starts with `[` is not a plain header.
fn headers(text: &str) -> Option<Vec<Header>> {
    let mut out = Vec::new();
    let mut start = 0;
    for line in text.split_inclusive('\n') {
        if line.trim_start().starts_with('[') {
            let (name, array) = header(line)?;
            out.push(Header { start, name, array });
        }
        start += line.len();
    }
    Some(out)
}

/// Whether any line of `text` starts (after indentation) with `[`.
fn has_header_line(text: &str) -> bool {
    text.lines().any(|l| l.trim_start().starts_with('['))
}

/// Number of newlines in `text`.
pub(crate) fn line_count(text: &str) -> usize {
    text.bytes().filter(|b| *b == b'\n').count()
}

fn line_start(text: &str, i: usize) -> usize {
    text.as_bytes()[..i].iter().rposition(|b| *b == b'\n').map_or(0, |p| p + 1)
}

/// The end of the changed lines that start at `from` (a line start) and whose changed bytes
/// end at `i`: `from` when nothing changed, `i` when it ends a line, else past the next newline.
fn line_end(text: &str, from: usize, i: usize) -> usize {
    if i == from || text.as_bytes()[i - 1] == b'\n' {
        return i;
    }
    text.as_bytes()[i..].iter().position(|b| *b == b'\n').map_or(text.len(), |p| i + p + 1)
}

fn is_child(name: &str, parent: &str) -> bool {
    name.strip_prefix(parent).is_some_and(|r| r.starts_with('.'))
}

/// The configuration `new_text` describes, built from `old` (the parse of `old_text`) by
/// re-reading only the element that changed. `None`: parse the whole document instead.
pub(crate) fn reparse(old_text: &str, old: &Config, new_text: &str) -> Option<Config> {
    if old_text == new_text {
        return Some(old.clone());
    }
    if [old_text, new_text].iter().any(|t| t.contains("\"\"\"") || t.contains("'''")) {
        return None;
    }
    let (o, n) = (old_text.as_bytes(), new_text.as_bytes());
    let prefix = o.iter().zip(n).take_while(|(a, b)| a == b).count();
    let room = o.len().min(n.len()) - prefix;
    let suffix = o.iter().rev().zip(n.iter().rev()).take(room).take_while(|(a, b)| a == b).count();
    let a = line_start(new_text, prefix);
    let new_end = line_end(new_text, a, n.len() - suffix);
    let old_end = line_end(old_text, a, o.len() - suffix);
    // A change that adds, removes or edits a header changes the document's structure.
    if has_header_line(&new_text[a..new_end]) || has_header_line(&old_text[a..old_end]) {
        return None;
    }
    let hs = headers(new_text)?;
    let at = hs.iter().rposition(|h| h.start < a)?;
    let h = &hs[at];
    let mut cfg = old.clone();

    // A leaf element of a nested list: from its header to the next header.
    if h.array
        && let Some((parent, child)) =
            LEAF.iter().find(|(p, c)| h.name.strip_prefix(p) == Some(&format!(".{c}")))
    {
        let end = hs.get(at + 1).map_or(new_text.len(), |x| x.start);
        if new_end > end {
            return None;
        }
        let p = hs[..at].iter().rposition(|x| x.array && x.name == *parent)?;
        let pi = hs[..at].iter().filter(|x| x.array && x.name == *parent).count() - 1;
        let ci = hs[p..=at].iter().filter(|x| x.array && x.name == h.name).count() - 1;
        let text = &new_text[h.start..end];
        match *parent {
            "route_table" => {
                *cfg.route_tables.get_mut(pi)?.routes.get_mut(ci)? = nested(text, parent, child)?
            }
            "security_group" => {
                *cfg.security_groups.get_mut(pi)?.rules.get_mut(ci)? = nested(text, parent, child)?
            }
            _ => *cfg.network_acls.get_mut(pi)?.rules.get_mut(ci)? = nested(text, parent, child)?,
        }
        return Some(cfg);
    }

    // Otherwise the top-level element the header belongs to, with all its sub-tables.
    let top = hs[..=at].iter().rposition(|x| {
        x.array
            && LISTS.contains(&x.name.as_str())
            && (x.name == h.name || is_child(&h.name, &x.name))
    })?;
    let name = hs[top].name.as_str();
    if hs[top..=at].iter().skip(1).any(|x| !is_child(&x.name, name)) {
        return None;
    }
    let end =
        hs[top + 1..].iter().find(|x| !is_child(&x.name, name)).map_or(new_text.len(), |x| x.start);
    if new_end > end {
        return None;
    }
    let i = hs[..=top].iter().filter(|x| x.array && x.name == name).count() - 1;
    let text = &new_text[hs[top].start..end];
    match name {
        "customer_gateway" => *cfg.customer_gateways.get_mut(i)? = single(text, name)?,
        "tunnel" => *cfg.tunnels.get_mut(i)? = single(text, name)?,
        "route_table" => *cfg.route_tables.get_mut(i)? = single(text, name)?,
        "security_group" => *cfg.security_groups.get_mut(i)? = single(text, name)?,
        "network_acl" => *cfg.network_acls.get_mut(i)? = single(text, name)?,
        "plugin" => *cfg.plugins.get_mut(i)? = single(text, name)?,
        "trusted_key" => *cfg.trusted_keys.get_mut(i)? = single(text, name)?,
        "alarm" => *cfg.alarms.get_mut(i)? = single(text, name)?,
        "notify" => *cfg.notify.get_mut(i)? = single(text, name)?,
        _ => *cfg.api_tokens.get_mut(i)? = single(text, name)?,
    }
    Some(cfg)
}

/// The one element of `[[name]]` that `text` holds.
fn single<T: DeserializeOwned>(text: &str, name: &str) -> Option<T> {
    let mut m: BTreeMap<String, Vec<T>> = toml::from_str(text).ok()?;
    let v = m.remove(name)?;
    (m.is_empty() && v.len() == 1).then(|| v.into_iter().next()).flatten()
}

/// The one element of `[[parent.child]]` that `text` holds.
fn nested<T: DeserializeOwned>(text: &str, parent: &str, child: &str) -> Option<T> {
    let mut m: BTreeMap<String, BTreeMap<String, Vec<T>>> = toml::from_str(text).ok()?;
    let mut inner = m.remove(parent)?;
    let v = inner.remove(child)?;
    (m.is_empty() && inner.is_empty() && v.len() == 1).then(|| v.into_iter().next()).flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = r#"schema = 1
[gateway]
name = "gw"
[gateway.wan]
interface = "eth0"
address = "203.0.113.10/24"
next_hop = "203.0.113.1"
[[gateway.lan]]
name = "app"
interface = "eth1"
addresses = ["10.0.0.1/24"]

[[customer_gateway]]
name = "cg0"
address = "198.51.100.1"

[[customer_gateway]]
name = "cg1"
address = "198.51.100.2"

[[tunnel]]
name = "t0"
customer_gateway = "cg0"
psk = "0123456789abcdef0123456789abcdef"
[[tunnel.spd]]
local = "10.0.0.0/24"
remote = "10.9.0.0/24"
[tunnel.dpd]
delay = "10s"

[[tunnel]]
name = "t1"
customer_gateway = "cg1"
psk = "0123456789abcdef0123456789abcdef"
[[tunnel.spd]]
local = "10.0.0.0/24"
remote = "10.8.0.0/24"

[[route_table]]
name = "vpn"
id = 100
lans = ["app"]
[[route_table.route]]
prefix = "10.9.0.0/24"
tunnel = "t0"
[[route_table.route]]
prefix = "10.8.0.0/24"
tunnel = "t1"
metric = 100

[[route_table]]
name = "other"
id = 101
[[route_table.route]]
prefix = "10.7.0.0/24"
tunnel = "t1"
"#;

    fn full(text: &str) -> Option<Config> {
        toml::from_str(text).ok()
    }

    fn same_as_full_parse(new: &str) -> bool {
        let old = full(DOC).unwrap();
        match reparse(DOC, &old, new) {
            Some(c) => {
                assert_eq!(Some(&c), full(new).as_ref(), "incremental differs for:\n{new}");
                true
            }
            None => false,
        }
    }

    #[test]
    fn one_route_is_reread_alone() {
        let new = DOC.replace("metric = 100", "metric = 150");
        assert!(same_as_full_parse(&new));
        assert_eq!(
            reparse(DOC, &full(DOC).unwrap(), &new).unwrap().route_tables[0].routes[1].metric,
            150
        );
        // In the second table: the parent index counts `[[route_table]]` headers.
        let new = DOC.replace("prefix = \"10.7.0.0/24\"", "prefix = \"10.6.0.0/24\"");
        assert!(same_as_full_parse(&new));
        // An added key in a route.
        let new = DOC.replace(
            "prefix = \"10.9.0.0/24\"\ntunnel = \"t0\"\n",
            "prefix = \"10.9.0.0/24\"\ntunnel = \"t0\"\nmetric = 7\n",
        );
        assert!(same_as_full_parse(&new));
    }

    #[test]
    fn tunnels_and_their_sub_tables_are_reread_as_one_element() {
        assert!(same_as_full_parse(&DOC.replace("delay = \"10s\"", "delay = \"20s\"")));
        assert!(same_as_full_parse(
            &DOC.replace("remote = \"10.8.0.0/24\"", "remote = \"10.5.0.0/24\"")
        ));
        assert!(same_as_full_parse(
            &DOC.replace("address = \"198.51.100.2\"", "address = \"198.51.100.9\"")
        ));
        assert!(same_as_full_parse(&DOC.replace("name = \"vpn\"", "name = \"vpn2\"")));
    }

    #[test]
    fn structure_changes_and_bad_elements_fall_back_to_a_full_parse() {
        let old = full(DOC).unwrap();
        let falls_back = |new: &str| reparse(DOC, &old, new).is_none();
        // A header added, removed or renamed.
        assert!(falls_back(&DOC.replace("[tunnel.dpd]\n", "")));
        assert!(falls_back(&DOC.replacen(
            "[[route_table.route]]\nprefix = \"10.9",
            "[[route_table.route]]\nmetric = 1\n[[route_table.route]]\nprefix = \"10.9",
            1
        )));
        // The gateway and the keys before the first header.
        assert!(falls_back(&DOC.replace("name = \"gw\"", "name = \"gw2\"")));
        assert!(falls_back(&DOC.replace("schema = 1", "schema = 2")));
        // An element that does not parse alone: the full parse reports it.
        assert!(falls_back(&DOC.replace("metric = 100", "metric = \"x\"")));
        assert!(falls_back(&DOC.replace("metric = 100", "metric = 100\nmetric = 1")));
        // Multi-line strings anywhere.
        assert!(falls_back(&DOC.replace("metric = 100", "metric = 100\n# '''")));
        // A line that starts with `[` but is no header.
        let nested = DOC.replace("lans = [\"app\"]", "lans = [\n[\"app\"]]");
        assert!(reparse(&nested, &old, &nested.replace("metric = 100", "metric = 1")).is_none());
    }

    #[test]
    fn check_incremental_gives_what_check_gives_warnings_and_lines_included() {
        let prev = crate::Config::check(DOC).expect("valid");
        assert!(!prev.warnings.is_empty(), "the document has warnings to carry over");
        for new in [
            DOC.replace("metric = 100", "metric = 150"),
            DOC.replace("metric = 100", "metric = 150\n# a note\n# another"),
            DOC.replace("delay = \"10s\"", "delay = \"0s\""),
            DOC.replace("prefix = \"10.7.0.0/24\"", "prefix = \"10.7.0.0/33\""),
        ] {
            let full = crate::Config::check(&new);
            let inc = crate::Config::check_incremental(&new, &prev);
            match (full, inc) {
                (Ok(a), Ok(b)) => {
                    assert_eq!(a.config, b.config);
                    assert_eq!(a.warnings, b.warnings);
                    assert_eq!(a.text(), b.text());
                }
                (Err(a), Err(b)) => assert_eq!(a.issues(), b.issues()),
                (a, b) => panic!("full {a:?} but incremental {b:?}"),
            }
        }
    }

    #[test]
    fn random_edits_agree_with_the_full_parse() {
        let old = full(DOC).unwrap();
        let lines: Vec<&str> = DOC.lines().collect();
        let edits = [
            "metric = 3",
            "tunnel = \"t0\"",
            "delay = \"5s\"",
            "",
            "# note",
            "x = 1",
            "[[tunnel]]",
            "prefix = \"10.1.0.0/24\"",
        ];
        let mut rng = fastrand::Rng::with_seed(7);
        let mut fast = 0;
        for _ in 0..400 {
            let mut l = lines.clone();
            let at = rng.usize(..l.len());
            let e = edits[rng.usize(..edits.len())];
            match rng.u8(..3) {
                0 => l[at] = e,
                1 => l.insert(at, e),
                _ => {
                    l.remove(at);
                }
            }
            let new = l.join("\n") + "\n";
            if let Some(c) = reparse(DOC, &old, &new) {
                fast += 1;
                assert_eq!(Some(c), full(&new), "incremental differs for:\n{new}");
            }
        }
        assert!(fast > 20, "only {fast} of 400 edits took the short path");
    }
}

//! Unified diffs of canonical configuration texts, each hunk headed by the TOML path of the
//! section it changes (`@@ -41,3 +41,3 @@ route_table[vpn].route[to 10.2.0.0/16]`), the way
//! `git diff` names the enclosing function.
//!
//! Myers' algorithm (`similar`) needs memory linear in the input, and a deadline bounds its time
//! on two texts with nothing in common: a 10,000-route document is diffed in milliseconds.

use std::time::Duration;

use similar::{Algorithm, ChangeTag, TextDiff};

use crate::Config;

/// Past this, `similar` stops refining and reports a larger (still correct) diff.
const DEADLINE: Duration = Duration::from_millis(500);
/// Unchanged lines shown around each change.
const CONTEXT: usize = 3;

/// What `config diff` shows: the unified diff of the canonical, secret-free forms of the
/// `active` and the `proposed` configuration; empty when they configure the same thing.
pub fn configs(active: &Config, proposed: &Config) -> String {
    unified(&active.to_toml_redacted(), &proposed.to_toml_redacted(), "active", "proposed")
}

/// A unified diff of `a` and `b` (canonical TOML) with `---`/`+++` headers named `name_a` and
/// `name_b`; empty when the texts are equal. A hunk never spans two sections: each change is
/// headed by its own path.
pub fn unified(a: &str, b: &str, name_a: &str, name_b: &str) -> String {
    if a == b {
        return String::new();
    }
    let diff = TextDiff::configure().algorithm(Algorithm::Myers).timeout(DEADLINE).diff_lines(a, b);
    let (old_paths, new_paths) = (Sections::of(a), Sections::of(b));
    let mut out = format!("--- {name_a}\n+++ {name_b}\n");
    for group in diff.grouped_ops(CONTEXT) {
        // One line of the group: its tag, its position in the old and the new text (for a line
        // missing on one side, where it would be there), its text and its section path.
        let mut lines = Vec::new();
        for op in &group {
            for c in diff.iter_changes(op) {
                let (o, n) = (c.old_index(), c.new_index());
                let path = match n {
                    Some(n) if o.is_none() => new_paths.path(n),
                    _ => old_paths.path(o.unwrap_or(0)),
                };
                lines.push((c.tag(), o, n, c.value(), path));
            }
        }
        // Fill the missing side's positions from the neighbours so each piece knows where it
        // starts in both texts.
        let (mut next_old, mut next_new) = (op_start(&group, true), op_start(&group, false));
        let mut placed = Vec::with_capacity(lines.len());
        for (tag, o, n, text, path) in lines {
            let (o, n) = (o.unwrap_or(next_old), n.unwrap_or(next_new));
            if tag != ChangeTag::Insert {
                next_old = o + 1;
            }
            if tag != ChangeTag::Delete {
                next_new = n + 1;
            }
            placed.push((tag, o, n, text, path));
        }
        // Split the group where a change's section differs from the previous change's,
        // cutting before the context lines that already belong to the new section. A run of
        // adjacent changed lines stays one hunk (a renamed element's `-` and `+` lines name
        // different paths), headed by the path of its first line.
        let mut start = 0;
        let mut head: Option<&str> = None;
        let mut last: Option<(usize, &str)> = None;
        for (i, l) in placed.iter().enumerate() {
            if l.0 == ChangeTag::Equal {
                continue;
            }
            let p = l.4;
            match last {
                Some((j, _)) if j + 1 == i => {}
                Some((_, q)) if q != p => {
                    let mut cut = i;
                    while cut > start + 1
                        && placed[cut - 1].0 == ChangeTag::Equal
                        && placed[cut - 1].4 == p
                    {
                        cut -= 1;
                    }
                    hunk(&mut out, &placed[start..cut], head.unwrap_or(""));
                    start = cut;
                    head = Some(p);
                }
                _ => head = head.or(Some(p)),
            }
            last = Some((i, p));
        }
        hunk(&mut out, &placed[start..], head.unwrap_or(""));
    }
    out
}

type Placed<'a> = (ChangeTag, usize, usize, &'a str, &'a str);

fn op_start(group: &[similar::DiffOp], old: bool) -> usize {
    group.first().map_or(0, |op| if old { op.old_range().start } else { op.new_range().start })
}

/// Writes one hunk: `@@ -start,len +start,len @@ path` and its lines.
fn hunk(out: &mut String, lines: &[Placed<'_>], path: &str) {
    let Some(first) = lines.first() else { return };
    let old_len = lines.iter().filter(|l| l.0 != ChangeTag::Insert).count();
    let new_len = lines.iter().filter(|l| l.0 != ChangeTag::Delete).count();
    // A side with no lines names the line before the hunk (0 at the top), as diff(1) does.
    let start = |pos: usize, len: usize| if len == 0 { pos } else { pos + 1 };
    out.push_str(&format!(
        "@@ -{},{} +{},{} @@ {path}\n",
        start(first.1, old_len),
        old_len,
        start(first.2, new_len),
        new_len
    ));
    for (tag, _, _, text, _) in lines {
        out.push(match tag {
            ChangeTag::Equal => ' ',
            ChangeTag::Delete => '-',
            ChangeTag::Insert => '+',
        });
        out.push_str(text);
        if !text.ends_with('\n') {
            out.push_str("\n\\ No newline at end of file\n");
        }
    }
}

/// The section path of every line of a canonical TOML text.
struct Sections {
    /// Per line, an index into `paths`.
    line: Vec<u32>,
    paths: Vec<String>,
}

impl Sections {
    /// One pass over the text: a `[table]` or `[[array]]` header opens a section; an element of
    /// an array of tables is named by its `name` (`tunnel[to-idc]`), a route by its prefix
    /// (`route[to 10.2.0.0/16]`), anything else by its index from 0 (`rule[2]`).
    fn of(text: &str) -> Sections {
        let lines: Vec<&str> = text.lines().collect();
        let mut paths = vec![String::new()];
        let mut line = Vec::with_capacity(lines.len());
        // The open path: (key, element label) per level; the label is `None` for a plain table.
        let mut open: Vec<(String, Option<String>)> = Vec::new();
        // Elements seen so far per array path, for index labels.
        let mut counts: std::collections::HashMap<String, usize> = Default::default();
        for (i, l) in lines.iter().enumerate() {
            let t = l.trim();
            let (array, inner) =
                if let Some(s) = t.strip_prefix("[[").and_then(|s| s.strip_suffix("]]")) {
                    (true, s)
                } else if let Some(s) = t.strip_prefix('[').and_then(|s| s.strip_suffix(']')) {
                    (false, s)
                } else {
                    line.push((paths.len() - 1) as u32);
                    continue;
                };
            let keys: Vec<&str> = inner.split('.').map(|k| k.trim().trim_matches('"')).collect();
            // Keep the open levels this header extends (same keys), replace the rest.
            let keep = open.iter().zip(&keys).take_while(|((k, _), n)| k == *n).count();
            let keep = if array { keep.min(keys.len() - 1) } else { keep };
            open.truncate(keep);
            for k in &keys[keep..] {
                open.push(((*k).to_owned(), None));
            }
            if array {
                let prefix = render(&open[..open.len() - 1]);
                let key = format!("{prefix}.{}", keys[keys.len() - 1]);
                let n = counts.entry(key).or_default();
                let label = label(&lines[i + 1..]).unwrap_or_else(|| n.to_string());
                *n += 1;
                if let Some(last) = open.last_mut() {
                    last.1 = Some(label);
                }
            }
            paths.push(render(&open));
            line.push((paths.len() - 1) as u32);
        }
        // A blank line separates sections: it belongs with the header after it, so that adding
        // or removing a whole element is one hunk under that element's path.
        for i in (0..lines.len().saturating_sub(1)).rev() {
            if lines[i].trim().is_empty() {
                line[i] = line[i + 1];
            }
        }
        Sections { line, paths }
    }

    /// The path of line `i` (0-based); the top of the document (and past its end) is `""`.
    fn path(&self, i: usize) -> &str {
        self.line.get(i).map_or("", |&p| &self.paths[p as usize])
    }
}

/// The label of an array element from its own key lines (up to the next header).
fn label(body: &[&str]) -> Option<String> {
    let mut prefix = None;
    for l in body {
        let t = l.trim();
        if t.starts_with('[') {
            break;
        }
        let Some((k, v)) = t.split_once('=') else { continue };
        let v = v.trim().trim_matches('"');
        match k.trim() {
            "name" => return Some(v.to_owned()),
            "prefix" => prefix = Some(format!("to {v}")),
            _ => {}
        }
    }
    prefix
}

fn render(open: &[(String, Option<String>)]) -> String {
    let mut s = String::new();
    for (k, label) in open {
        if !s.is_empty() {
            s.push('.');
        }
        s.push_str(k);
        if let Some(l) = label {
            s.push('[');
            s.push_str(l);
            s.push(']');
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::unified;

    const A: &str = "[gateway]\nname = \"gw\"\n\n[[tunnel]]\nname = \"to-idc\"\npsk = \"x\"\n\n\
        [[route_table]]\nname = \"vpn\"\nid = 100\n\n[[route_table.route]]\nprefix = \"10.1.0.0/16\"\n\
        tunnel = \"to-idc\"\n\n[[route_table.route]]\nprefix = \"10.2.0.0/16\"\ntunnel = \"to-idc\"\n\
        metric = 10\n\n[[route_table.route]]\nprefix = \"10.3.0.0/16\"\ntunnel = \"to-idc\"\n";

    #[test]
    fn hunks_have_headers_and_the_toml_path_of_each_change() {
        let b = A.replace("metric = 10", "metric = 20").replace("psk = \"x\"", "psk = \"y\"");
        let d = unified(A, &b, "active", "proposed");
        assert_eq!(
            d,
            "--- active\n+++ proposed\n\
             @@ -3,7 +3,7 @@ tunnel[to-idc]\n \n [[tunnel]]\n name = \"to-idc\"\n-psk = \"x\"\n+psk = \"y\"\n \n [[route_table]]\n name = \"vpn\"\n\
             @@ -16,7 +16,7 @@ route_table[vpn].route[to 10.2.0.0/16]\n [[route_table.route]]\n prefix = \"10.2.0.0/16\"\n tunnel = \"to-idc\"\n\
             -metric = 10\n+metric = 20\n \n [[route_table.route]]\n prefix = \"10.3.0.0/16\"\n"
        );
        assert_eq!(unified(A, A, "a", "b"), "");
    }

    #[test]
    fn one_hunk_is_cut_where_the_section_changes() {
        // Two changes three lines apart share their context; each still gets its own path.
        let b = A
            .replace("tunnel = \"to-idc\"\nmetric = 10", "tunnel = \"to-idc\"\nmetric = 11")
            .replace("prefix = \"10.3.0.0/16\"", "prefix = \"10.4.0.0/16\"");
        let d = unified(A, &b, "a", "b");
        let heads: Vec<&str> = d.lines().filter(|l| l.starts_with("@@")).collect();
        assert_eq!(
            heads,
            [
                "@@ -16,4 +16,4 @@ route_table[vpn].route[to 10.2.0.0/16]",
                "@@ -20,4 +20,4 @@ route_table[vpn].route[to 10.3.0.0/16]"
            ],
            "{d}"
        );
    }

    #[test]
    fn elements_without_a_name_are_numbered_and_added_tables_are_named() {
        let a = "[[security_group]]\nname = \"web\"\n\n[[security_group.rule]]\naction = \"allow\"\n\n\
                 [[security_group.rule]]\naction = \"deny\"\n";
        let b = format!("{a}\n[[tunnel]]\nname = \"new\"\n");
        let c = a.replace("\"deny\"", "\"allow\"");
        assert!(unified(a, &c, "a", "b").contains("@@ security_group[web].rule[1]\n"));
        assert!(
            unified(a, &b, "a", "b").contains("@@ tunnel[new]\n"),
            "{}",
            unified(a, &b, "a", "b")
        );
    }
}

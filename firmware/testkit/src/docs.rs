//! The complete configurations in `docs/*.md`: every TOML block that follows a
//! `<!-- example: NAME -->` marker. Tests that apply them find a new example without being
//! told about it.

use std::path::PathBuf;

/// One example: its name (from the marker), the page it is on, and its TOML text.
#[derive(Debug, Clone)]
pub struct Example {
    /// The marker's name (`site-a`).
    pub name: String,
    /// The page, relative to `docs/` (`config.md`).
    pub page: String,
    /// The TOML block.
    pub text: String,
}

/// The repository's `docs/` folder.
pub fn dir() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs"))
}

/// Every marked example of every page, by page name then order on the page.
pub fn examples() -> Vec<Example> {
    let mut pages: Vec<PathBuf> = std::fs::read_dir(dir())
        .expect("docs/ is readable")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "md"))
        .collect();
    pages.sort();
    let mut out = Vec::new();
    for p in pages {
        let doc = std::fs::read_to_string(&p).expect("a docs page is readable");
        let page = p.file_name().unwrap_or_default().to_string_lossy().into_owned();
        out.extend(parse(&page, &doc));
    }
    out
}

/// The marked examples of one page's text (a marker counts on a line of its own).
pub fn parse(page: &str, doc: &str) -> Vec<Example> {
    let mut out = Vec::new();
    let mut lines = doc.lines();
    while let Some(line) = lines.next() {
        let Some(name) =
            line.trim().strip_prefix("<!-- example: ").and_then(|r| r.strip_suffix(" -->"))
        else {
            continue;
        };
        let name = name.trim().to_owned();
        let mut fence = lines.by_ref().skip_while(|l| l.trim().is_empty());
        assert_eq!(
            fence.next(),
            Some("```toml"),
            "{page}: no ```toml block right after example `{name}`"
        );
        let mut text = String::new();
        loop {
            match lines.next() {
                Some("```") => break,
                Some(l) => {
                    text.push_str(l);
                    text.push('\n');
                }
                None => panic!("{page}: example `{name}` is not closed"),
            }
        }
        out.push(Example { name, page: page.to_owned(), text });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_each_marked_block_and_only_those() {
        let doc = "intro\n```toml\nx = 0\n```\n<!-- example: one -->\n```toml\na = 1\n```\ntext\n\
                   <!-- example: two -->\n\n```toml\nb = 2\nc = 3\n```\n";
        let ex = parse("p.md", doc);
        let got: Vec<(&str, &str)> =
            ex.iter().map(|e| (e.name.as_str(), e.text.as_str())).collect();
        assert_eq!(got, [("one", "a = 1\n"), ("two", "b = 2\nc = 3\n")]);
    }

    #[test]
    fn the_docs_have_the_two_site_example() {
        let names: Vec<String> = examples().into_iter().map(|e| e.name).collect();
        assert!(
            names.iter().any(|n| n == "site-a") && names.iter().any(|n| n == "site-b"),
            "{names:?}"
        );
    }
}

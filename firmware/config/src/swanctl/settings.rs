//! strongSwan's settings syntax, the format of swanctl.conf (`man 5 swanctl.conf`, "SETTINGS
//! SYNTAX"; strongSwan's `src/libstrongswan/settings/settings_lexer.l` and `settings_parser.y`):
//! sections `name { ... }`, `key = value` to the end of the line, `#` comments, double-quoted
//! strings with `\` escapes, `include PATTERN` relative to the including file, and sections of
//! the same name merged. Written by hand: no crate reads this format, and it is a page of code.
//!
//! Every key and section keeps the file and line it came from, so that the import can name
//! them. Error messages never quote a value (a value may be a secret).

use std::fmt;

/// One file's text, named as messages should name it.
#[derive(Clone, Debug)]
pub struct Source {
    /// The file's name as messages show it (`swanctl.conf`, `conf.d/a.conf`).
    pub name: String,
    /// Its text.
    pub text: String,
}

/// Where something was written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Loc {
    /// The file, as its [`Source`] names it.
    pub file: String,
    /// 1-based line.
    pub line: usize,
}

impl fmt::Display for Loc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.file, self.line)
    }
}

/// A `key = value` setting.
#[derive(Clone, Debug)]
pub struct Setting {
    /// The key.
    pub key: String,
    /// The value: its parts joined by one space, strings unquoted (as strongSwan does).
    pub value: String,
    /// Where the key is.
    pub loc: Loc,
}

/// A section with its settings and subsections, in the order first written.
#[derive(Clone, Debug)]
pub struct Section {
    /// Its name (empty for the document).
    pub name: String,
    /// Where it was first opened.
    pub loc: Loc,
    /// Its settings; a key written again replaces the earlier value.
    pub settings: Vec<Setting>,
    /// Its subsections; a name written again adds to the earlier section.
    pub sections: Vec<Section>,
}

impl Section {
    fn new(name: &str, loc: Loc) -> Section {
        Section { name: name.to_owned(), loc, settings: Vec::new(), sections: Vec::new() }
    }

    /// The setting `key`, if written.
    pub fn get(&self, key: &str) -> Option<&Setting> {
        self.settings.iter().find(|s| s.key == key)
    }

    /// The subsection `name`, if written.
    pub fn section(&self, name: &str) -> Option<&Section> {
        self.sections.iter().find(|s| s.name == name)
    }

    fn set(&mut self, s: Setting) {
        match self.settings.iter_mut().find(|o| o.key == s.key) {
            Some(o) => *o = s,
            None => self.settings.push(s),
        }
    }

    fn child(&mut self, name: &str, loc: Loc) -> &mut Section {
        let i = match self.sections.iter().position(|s| s.name == name) {
            Some(i) => i,
            None => {
                self.sections.push(Section::new(name, loc));
                self.sections.len() - 1
            }
        };
        &mut self.sections[i]
    }

    /// Adds `other`'s content (a second file read into the same place).
    pub fn merge(&mut self, other: Section) {
        for s in other.settings {
            self.set(s);
        }
        for sec in other.sections {
            let loc = sec.loc.clone();
            self.child(&sec.name, loc).merge(sec);
        }
    }
}

/// A file that is not in strongSwan's settings syntax, or an include that failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SyntaxError {
    /// Where.
    pub loc: Loc,
    /// What is wrong (never a value from the file).
    pub message: String,
}

impl fmt::Display for SyntaxError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.loc, self.message)
    }
}

/// Largest file read: a swanctl.conf is a few kilobytes; a much larger one is the wrong file.
pub const MAX_BYTES: usize = 1 << 20;
/// Deepest nesting of sections and of includes (strongSwan stops includes at 10 too).
const MAX_DEPTH: usize = 10;

/// Reads files named by `include`: `from` is the including file's name, `pattern` the path
/// (or glob pattern) as written. Returns the files in the order strongSwan reads them (sorted,
/// as glob(3) does); an empty list for a pattern that matches nothing.
pub type Includer<'a> = dyn FnMut(&str, &str) -> Result<Vec<Source>, String> + 'a;

/// Parses `src` and, through `include`, the files it includes.
pub fn parse(src: &Source, include: &mut Includer<'_>) -> Result<Section, SyntaxError> {
    let mut root = Section::new("", Loc { file: src.name.clone(), line: 1 });
    parse_into(src, &mut root, &[], include, 0)?;
    Ok(root)
}

fn is_name_char(c: char) -> bool {
    !c.is_whitespace() && !c.is_control() && !matches!(c, '{' | '}' | '=' | '#' | ':' | ',' | '"')
}

/// Parses `src` into the section at `path` below `root` (an include lands where it is written).
fn parse_into(
    src: &Source,
    root: &mut Section,
    base: &[String],
    include: &mut Includer<'_>,
    depth: usize,
) -> Result<(), SyntaxError> {
    let loc = |line| Loc { file: src.name.clone(), line };
    let err = |line, message: String| SyntaxError { loc: loc(line), message };
    if src.text.len() > MAX_BYTES {
        return Err(err(
            1,
            format!(
                "the file is {} bytes, more than the {} a swanctl.conf can reasonably be; is it \
                 the right file?",
                src.text.len(),
                MAX_BYTES
            ),
        ));
    }
    let chars: Vec<char> = src.text.chars().collect();
    let (mut i, mut line) = (0usize, 1usize);
    // Sections opened in this file: (name, line).
    let mut open: Vec<(String, usize)> = Vec::new();
    while i < chars.len() {
        let c = chars[i];
        if c == '\n' {
            line += 1;
            i += 1;
            continue;
        }
        if c.is_whitespace() {
            i += 1;
            continue;
        }
        if c.is_control() {
            return Err(err(
                line,
                format!(
                    "control character U+{:04X}: this is not a text file in swanctl.conf syntax",
                    c as u32
                ),
            ));
        }
        if c == '#' {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
            continue;
        }
        if c == '}' {
            if open.pop().is_none() {
                return Err(err(line, "unbalanced `}`: no section is open here".into()));
            }
            i += 1;
            continue;
        }
        if !is_name_char(c) {
            return Err(err(line, format!("unexpected `{c}`; expected a section or a key name")));
        }
        let start = i;
        while i < chars.len() && is_name_char(chars[i]) {
            i += 1;
        }
        let name: String = chars[start..i].iter().collect();
        let name_line = line;
        // `include PATTERN`: the lexer's rule is "include", blanks, then anything but `=`.
        if name == "include" {
            let mut j = i;
            while j < chars.len() && (chars[j] == ' ' || chars[j] == '\t') {
                j += 1;
            }
            if j > i && j < chars.len() && chars[j] != '=' && chars[j] != '\n' {
                let (pattern, next) =
                    read_value(&chars, j, &mut line).map_err(|m| err(name_line, m.to_owned()))?;
                i = next;
                if depth + 1 > MAX_DEPTH {
                    return Err(err(name_line, format!("includes nest deeper than {MAX_DEPTH}")));
                }
                let files = include(&src.name, &pattern)
                    .map_err(|m| err(name_line, format!("include: {m}")))?;
                let mut full: Vec<String> = base.to_vec();
                full.extend(open.iter().map(|(n, _)| n.clone()));
                for f in files {
                    parse_into(&f, root, &full, include, depth + 1)?;
                }
                continue;
            }
        }
        // Blanks and newlines may separate a name from what follows.
        while i < chars.len() && chars[i].is_whitespace() {
            if chars[i] == '\n' {
                line += 1;
            }
            i += 1;
        }
        match chars.get(i) {
            Some('{') => {
                i += 1;
                if base.len() + open.len() >= MAX_DEPTH {
                    return Err(err(name_line, format!("sections nest deeper than {MAX_DEPTH}")));
                }
                let parent = walk(root, base, &open);
                parent.child(&name, loc(name_line));
                open.push((name, name_line));
            }
            Some(':') => {
                return Err(err(
                    name_line,
                    format!(
                        "section `{name}` inherits from another (`{name} : other {{`); write its \
                         settings out in full"
                    ),
                ));
            }
            Some('=') => {
                let (value, next) = read_value(&chars, i + 1, &mut line)
                    .map_err(|m| err(name_line, format!("`{name}`: {m}")))?;
                i = next;
                let parent = walk(root, base, &open);
                // `a.b = c` is `a { b = c }`.
                let mut parts: Vec<&str> = name.split('.').collect();
                let key = parts.pop().unwrap_or_default().to_owned();
                let mut s = parent;
                for p in parts {
                    s = s.child(p, loc(name_line));
                }
                s.set(Setting { key, value, loc: loc(name_line) });
            }
            Some(&c) if c.is_control() => {
                return Err(err(
                    line,
                    format!(
                        "control character U+{:04X}: this is not a text file in swanctl.conf syntax",
                        c as u32
                    ),
                ));
            }
            _ => {
                return Err(err(
                    name_line,
                    format!(
                        "`{name}` is followed by neither `{{` nor `=`; a line is `key = value` or `name {{`"
                    ),
                ));
            }
        }
    }
    if let Some((name, l)) = open.pop() {
        return Err(err(
            l,
            format!("section `{name}` opened here is never closed (a `}}` is missing)"),
        ));
    }
    Ok(())
}

fn walk<'a>(root: &'a mut Section, base: &[String], open: &[(String, usize)]) -> &'a mut Section {
    let mut s = root;
    for n in base.iter().chain(open.iter().map(|(n, _)| n)) {
        let i = s.sections.iter().position(|c| &c.name == n).unwrap_or(0);
        s = &mut s.sections[i];
    }
    s
}

/// Reads a value from `i` to the end of the line, a `#` or a `}`: words and strings joined by
/// one space. Returns it and where reading stopped.
fn read_value(
    chars: &[char],
    mut i: usize,
    line: &mut usize,
) -> Result<(String, usize), &'static str> {
    let mut parts: Vec<String> = Vec::new();
    while i < chars.len() {
        match chars[i] {
            '\n' | '#' | '}' => break,
            c if c == '\r' || c == ' ' || c == '\t' => i += 1,
            '"' => {
                i += 1;
                let mut s = String::new();
                loop {
                    match chars.get(i) {
                        None => return Err("a string (`\"`) is never closed"),
                        Some('"') => {
                            i += 1;
                            break;
                        }
                        Some('\\') => {
                            match chars.get(i + 1) {
                                Some('n') => s.push('\n'),
                                Some('r') => s.push('\r'),
                                Some('t') => s.push('\t'),
                                Some('\n') => *line += 1,
                                Some(&c) => s.push(c),
                                None => return Err("a string (`\"`) is never closed"),
                            }
                            i += 2;
                        }
                        Some('\r') => i += 1,
                        Some(&c) => {
                            if c == '\n' {
                                *line += 1;
                            }
                            s.push(c);
                            i += 1;
                        }
                    }
                }
                parts.push(s);
            }
            c if c.is_control() => return Err("a control character in a value"),
            _ => {
                let start = i;
                while i < chars.len()
                    && !matches!(chars[i], '#' | '}' | '"' | '\r' | '\n' | '\t' | ' ')
                {
                    i += 1;
                }
                parts.push(chars[start..i].iter().collect());
            }
        }
    }
    Ok((parts.join(" "), i))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn src(text: &str) -> Source {
        Source { name: "swanctl.conf".into(), text: text.into() }
    }

    fn none(_: &str, p: &str) -> Result<Vec<Source>, String> {
        Err(format!("{p}: no such file"))
    }

    #[test]
    fn sections_keys_strings_comments_and_merging() {
        let text = "connections {  # c\n a\n {\n  x = 1 2   3 # no\n  y = \"q \\\"u\\\" #\"\n }\n}\nconnections { a { x = 4 }\n b.c = d }\n";
        let root = parse(&src(text), &mut none).unwrap();
        let c = root.section("connections").unwrap();
        let a = c.section("a").unwrap();
        assert_eq!(a.get("x").unwrap().value, "4");
        assert_eq!(a.get("x").unwrap().loc.line, 8);
        assert_eq!(a.get("y").unwrap().value, "q \"u\" #");
        assert_eq!(a.loc.line, 2);
        assert_eq!(c.section("b").unwrap().get("c").unwrap().value, "d");
    }

    #[test]
    fn garbage_is_named_with_its_line() {
        let cases = [
            ("a {\n b = 1\n", 1, "never closed"),
            ("a = 1\n}\n", 2, "unbalanced `}`"),
            ("\n\nfoo bar\n", 3, "neither `{` nor `=`"),
            ("a = \"open\n\n", 1, "never closed"),
            ("a\0b = 1", 1, "control character U+0000"),
            ("x : y { }", 1, "inherits"),
        ];
        for (text, line, msg) in cases {
            let e = parse(&src(text), &mut none).unwrap_err();
            assert_eq!(e.loc.line, line, "{text:?}: {e}");
            assert!(e.message.contains(msg), "{text:?}: {e}");
        }
        let e = parse(&src("include missing.conf\n"), &mut none).unwrap_err();
        assert_eq!(e.to_string(), "swanctl.conf:1: include: missing.conf: no such file");
        let big = "#".repeat(MAX_BYTES + 1);
        assert!(parse(&src(&big), &mut none).unwrap_err().message.contains("right file"));
    }

    #[test]
    fn includes_land_where_they_are_written() {
        let mut inc = |from: &str, p: &str| {
            assert_eq!((from, p), ("swanctl.conf", "conf.d/*.conf"));
            Ok(vec![Source { name: "conf.d/a.conf".into(), text: "b { k = v }\n".into() }])
        };
        let root = parse(&src("connections {\n include conf.d/*.conf\n}\n"), &mut inc).unwrap();
        let b = root.section("connections").unwrap().section("b").unwrap();
        assert_eq!(b.get("k").unwrap().loc, Loc { file: "conf.d/a.conf".into(), line: 1 });
    }
}

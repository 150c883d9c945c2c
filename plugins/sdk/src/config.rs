//! The TOML subset of plugin configurations: `[section]` headers, `key = value` lines with
//! strings (`"..."`), integers and booleans, and `#` comments. Keys before any header are in the
//! section `""`.

use std::collections::BTreeMap;

/// A configuration value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Value {
    /// A quoted string.
    Str(String),
    /// An integer.
    Int(i64),
    /// `true` or `false`.
    Bool(bool),
}

/// A parsed configuration.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Config {
    sections: BTreeMap<String, BTreeMap<String, Value>>,
}

impl Config {
    /// Parses `text`; errors name the line.
    pub fn parse(text: &str) -> Result<Config, String> {
        let mut cfg = Config::default();
        let mut section = String::new();
        for (n, raw) in text.lines().enumerate() {
            let line = strip_comment(raw).trim();
            if line.is_empty() {
                continue;
            }
            if let Some(rest) = line.strip_prefix('[') {
                let name = rest
                    .strip_suffix(']')
                    .ok_or_else(|| format!("line {}: `[` without `]`", n + 1))?;
                section = name.trim().to_owned();
                continue;
            }
            let (k, v) = line
                .split_once('=')
                .ok_or_else(|| format!("line {}: expected `key = value`", n + 1))?;
            let v = v.trim();
            let value = if let Some(s) = v.strip_prefix('"') {
                Value::Str(
                    s.strip_suffix('"')
                        .ok_or_else(|| format!("line {}: unterminated string", n + 1))?
                        .to_owned(),
                )
            } else if v == "true" || v == "false" {
                Value::Bool(v == "true")
            } else {
                Value::Int(v.replace('_', "").parse().map_err(|_| {
                    format!("line {}: `{v}` is not a string, integer or boolean", n + 1)
                })?)
            };
            cfg.sections.entry(section.clone()).or_default().insert(k.trim().to_owned(), value);
        }
        Ok(cfg)
    }

    /// The value of `key` in `section`.
    pub fn get(&self, section: &str, key: &str) -> Option<&Value> {
        self.sections.get(section)?.get(key)
    }

    /// A string value.
    pub fn str(&self, section: &str, key: &str) -> Option<&str> {
        match self.get(section, key)? {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    /// An integer value.
    pub fn int(&self, section: &str, key: &str) -> Option<i64> {
        match self.get(section, key)? {
            Value::Int(i) => Some(*i),
            _ => None,
        }
    }

    /// A boolean value.
    pub fn bool(&self, section: &str, key: &str) -> Option<bool> {
        match self.get(section, key)? {
            Value::Bool(b) => Some(*b),
            _ => None,
        }
    }

    /// The keys and values of a section, in key order.
    pub fn section(&self, section: &str) -> impl Iterator<Item = (&str, &Value)> {
        self.sections.get(section).into_iter().flatten().map(|(k, v)| (k.as_str(), v))
    }
}

fn strip_comment(line: &str) -> &str {
    let mut in_str = false;
    for (i, c) in line.char_indices() {
        match c {
            '"' => in_str = !in_str,
            '#' if !in_str => return &line[..i],
            _ => {}
        }
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_subset() {
        let c = Config::parse("a = 1\n# c\n[s]\nname = \"x # y\" # tail\non = true\nbig = 1_000\n")
            .unwrap();
        assert_eq!(c.int("", "a"), Some(1));
        assert_eq!(c.str("s", "name"), Some("x # y"));
        assert_eq!(c.bool("s", "on"), Some(true));
        assert_eq!(c.int("s", "big"), Some(1000));
        assert!(Config::parse("x = nope").unwrap_err().contains("line 1"));
    }
}

//! Secrets in the configuration (pre-shared keys, webhook signing keys, API tokens).
//!
//! A secret is written inline (`psk = "..."` or `psk = { inline = "..." }`), as a file to read
//! (`{ file = "/etc/isthmus/psk-idc" }`) or as an environment variable (`{ env = "PSK_IDC" }`).
//! Reading a file or variable is never implicit: [`Secret::resolve`] is the one explicit call that
//! produces the value. `Debug`, `Display` and `Serialize` never print an inline value; the
//! canonical form used by `show` and `diff` prints a fingerprint (the first 8 hex digits of the
//! value's SHA-256) so that an operator sees that a key changed without seeing the key.

use std::fmt;
use std::path::PathBuf;

use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Serialize, Serializer};
use sha2::{Digest, Sha256};

use crate::Error;

/// Where a secret comes from.
#[derive(Clone, PartialEq, Eq)]
pub enum Secret {
    /// The value itself, in the configuration text.
    Inline(String),
    /// A file holding the value (a trailing newline is ignored).
    File(PathBuf),
    /// An environment variable of the daemon holding the value.
    Env(String),
}

/// A resolved secret value. Its `Debug` is redacted; the value is overwritten when dropped.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretValue(String);

impl SecretValue {
    /// The value. Do not log it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The redaction fingerprint of this value (see [`fingerprint`]).
    pub fn fingerprint(&self) -> String {
        fingerprint(&self.0)
    }
}

impl fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl Drop for SecretValue {
    fn drop(&mut self) {
        let mut bytes = std::mem::take(&mut self.0).into_bytes();
        bytes.iter_mut().for_each(|b| *b = 0);
        std::hint::black_box(&bytes);
    }
}

/// The first 8 hex digits of the SHA-256 of `value`: enough to see that a secret changed, far
/// too little to recover it. (A weak secret can still be guessed from it; weak PSKs are warned
/// about by validation.)
pub fn fingerprint(value: &str) -> String {
    let d = Sha256::digest(value.as_bytes());
    d[..4].iter().map(|b| format!("{b:02x}")).collect()
}

impl Secret {
    /// Reads the secret's value. Errors name the file or variable, never a value.
    pub fn resolve(&self) -> Result<SecretValue, Error> {
        let v = match self {
            Secret::Inline(v) => v.clone(),
            Secret::File(p) => {
                let mut s = std::fs::read_to_string(p).map_err(|e| Error::SecretUnavailable {
                    source_ref: format!("file {}", p.display()),
                    reason: e.to_string(),
                })?;
                while s.ends_with('\n') || s.ends_with('\r') {
                    s.pop();
                }
                s
            }
            Secret::Env(name) => std::env::var(name).map_err(|e| Error::SecretUnavailable {
                source_ref: format!("environment variable {name}"),
                reason: e.to_string(),
            })?,
        };
        if v.is_empty() {
            return Err(Error::SecretUnavailable {
                source_ref: self.to_string(),
                reason: "the secret is empty".into(),
            });
        }
        Ok(SecretValue(v))
    }

    /// The inline value's fingerprint; `None` for file and environment references.
    pub fn fingerprint(&self) -> Option<String> {
        match self {
            Secret::Inline(v) => Some(fingerprint(v)),
            _ => None,
        }
    }

    /// True for an inline value that is the redacted form `show` prints: committing the output
    /// of `show` back would make `<redacted sha256:…>` the key.
    pub fn is_redacted_placeholder(&self) -> bool {
        matches!(self, Secret::Inline(v) if v.starts_with("<redacted"))
    }

    /// The inline value's length in characters (for the weak-PSK warning); `None` for references.
    pub fn inline_len(&self) -> Option<usize> {
        match self {
            Secret::Inline(v) => Some(v.chars().count()),
            _ => None,
        }
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Secret::Inline(_) => f.write_str("<redacted>"),
            Secret::File(p) => write!(f, "file:{}", p.display()),
            Secret::Env(n) => write!(f, "env:{n}"),
        }
    }
}

/// The canonical (show/diff) form: `"<redacted sha256:1a2b3c4d>"` for an inline value, the
/// reference table for a file or variable (a path or a name is not a secret).
impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Secret::Inline(v) => s.serialize_str(&format!("<redacted sha256:{}>", fingerprint(v))),
            Secret::File(p) => {
                let mut m = s.serialize_map(Some(1))?;
                m.serialize_entry("file", &p.display().to_string())?;
                m.end()
            }
            Secret::Env(n) => {
                let mut m = s.serialize_map(Some(1))?;
                m.serialize_entry("env", n)?;
                m.end()
            }
        }
    }
}

/// The message for a malformed secret. It never echoes what was written: that may be the secret.
pub(crate) const SECRET_SHAPE: &str =
    "a secret is a string, or a table with exactly one of `inline`, `file` or `env`";

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Secret, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Secret;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(SECRET_SHAPE)
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Secret, E> {
                Ok(Secret::Inline(v.to_owned()))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Secret, A::Error> {
                let mut out = None;
                while let Some(key) = map.next_key::<String>()? {
                    let value: String =
                        map.next_value().map_err(|_| de::Error::custom(SECRET_SHAPE))?;
                    let s = match key.as_str() {
                        "inline" => Secret::Inline(value),
                        "file" => Secret::File(PathBuf::from(value)),
                        "env" => Secret::Env(value),
                        other => {
                            return Err(de::Error::custom(format!(
                                "unknown secret source `{other}`; {SECRET_SHAPE}"
                            )));
                        }
                    };
                    if out.replace(s).is_some() {
                        return Err(de::Error::custom(SECRET_SHAPE));
                    }
                }
                out.ok_or_else(|| de::Error::custom(SECRET_SHAPE))
            }
            // Anything else (a number, a boolean): do not let serde quote the value back.
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<Secret, E> {
                Err(E::custom(SECRET_SHAPE))
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<Secret, E> {
                Err(E::custom(SECRET_SHAPE))
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<Secret, E> {
                Err(E::custom(SECRET_SHAPE))
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<Secret, E> {
                Err(E::custom(SECRET_SHAPE))
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize, Serialize)]
    struct Holder {
        psk: Secret,
    }

    #[test]
    fn every_form_parses_and_none_prints_the_value() {
        for text in [r#"psk = "hunter2hunter2""#, r#"psk = { inline = "hunter2hunter2" }"#] {
            let h: Holder = toml::from_str(text).unwrap();
            assert_eq!(h.psk, Secret::Inline("hunter2hunter2".into()));
            assert_eq!(format!("{:?} {}", h.psk, h.psk), "<redacted> <redacted>");
            let shown = toml::to_string(&h).unwrap();
            assert!(!shown.contains("hunter2"), "{shown}");
            assert!(
                shown.contains(&format!("<redacted sha256:{}>", fingerprint("hunter2hunter2")))
            );
        }
        let h: Holder = toml::from_str(r#"psk = { file = "/etc/isthmus/psk" }"#).unwrap();
        assert_eq!(h.psk, Secret::File("/etc/isthmus/psk".into()));
        assert!(toml::to_string(&h).unwrap().contains(r#"file = "/etc/isthmus/psk""#));
        let h: Holder = toml::from_str(r#"psk = { env = "PSK_IDC" }"#).unwrap();
        assert_eq!(h.psk.to_string(), "env:PSK_IDC");
    }

    #[test]
    fn malformed_secrets_are_refused_without_echo() {
        for text in [
            "psk = 123456789",
            r#"psk = { inline = "a", env = "B" }"#,
            r#"psk = { vault = "x" }"#,
            "psk = {}",
        ] {
            let e = toml::from_str::<Holder>(text).err().unwrap();
            assert!(e.message().contains("a secret is a string"), "{text}: {e}");
            assert!(!e.message().contains("123456789"));
        }
    }

    #[test]
    fn resolution_reads_files_and_variables_and_names_what_is_missing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("psk");
        std::fs::write(&path, "from-a-file-0123456789\n").unwrap();
        let v = Secret::File(path.clone()).resolve().unwrap();
        assert_eq!(v.expose(), "from-a-file-0123456789");
        assert_eq!(format!("{v:?}"), "<redacted>");
        assert_eq!(v.fingerprint(), fingerprint("from-a-file-0123456789"));
        let e = Secret::File(dir.path().join("absent")).resolve().unwrap_err().to_string();
        assert!(e.contains("absent"), "{e}");
        let e = Secret::Env("ISTHMUS_TEST_SURELY_UNSET_VAR".into()).resolve().unwrap_err();
        assert!(e.to_string().contains("ISTHMUS_TEST_SURELY_UNSET_VAR"));
        assert_eq!(Secret::Inline("x".into()).inline_len(), Some(1));
    }
}

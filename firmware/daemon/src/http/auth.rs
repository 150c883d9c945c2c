//! Bearer-token authentication for the management API.
//!
//! Tokens are random secrets handed to operators once; the daemon keeps only their SHA-256 (a token
//! has 256 bits of entropy, so a fast hash is enough: there is nothing to brute-force), in the
//! configuration's `token_hash` form ([`isthmus_config::hash_token`], the one hashing the CLI's
//! `isthmus token` uses too). Comparison is constant-time. A token never appears in a log, an
//! error or a response.

use isthmus_api::Role;
use isthmus_config::{hash_token, token_hashes_equal};

use crate::core::TokenEntry;

/// Why a request was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum Denied {
    /// No `Authorization: Bearer` header: 401.
    Missing,
    /// The token is not known: 401.
    Unknown,
    /// A read-only token tried to change something: 403.
    ReadOnly(String),
}

impl Denied {
    /// The message the client sees (it never echoes the token).
    pub fn message(&self) -> String {
        match self {
            Denied::Missing => "missing bearer token: send `Authorization: Bearer <token>` \
                                (the CLI reads --token, ISTHMUS_TOKEN or ~/.config/isthmus/config.toml)"
                .into(),
            Denied::Unknown => "the bearer token is not valid for this gateway".into(),
            Denied::ReadOnly(name) => {
                format!("token `{name}` is read-only; this request changes state and needs an admin token")
            }
        }
    }
}

/// The tokens the daemon accepts.
#[derive(Clone, Debug, Default)]
pub struct Tokens {
    entries: Vec<TokenEntry>,
}

impl Tokens {
    /// Accepts these tokens.
    pub fn new(entries: Vec<TokenEntry>) -> Tokens {
        Tokens { entries }
    }

    /// Checks an `Authorization` header value for a request that reads (`write = false`) or
    /// changes state; returns the token's entry.
    pub fn check(&self, header: Option<&str>, write: bool) -> Result<&TokenEntry, Denied> {
        let token = header
            .and_then(|h| h.strip_prefix("Bearer ").or_else(|| h.strip_prefix("bearer ")))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or(Denied::Missing)?;
        let h = hash_token(token);
        // Look at every entry so timing does not tell which position matched.
        let mut found = None;
        for e in &self.entries {
            if token_hashes_equal(&e.hash, &h) && found.is_none() {
                found = Some(e);
            }
        }
        let e = found.ok_or(Denied::Unknown)?;
        if write && e.role != Role::Admin {
            return Err(Denied::ReadOnly(e.name.clone()));
        }
        Ok(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens() -> Tokens {
        Tokens::new(vec![
            TokenEntry { name: "ops".into(), role: Role::Admin, hash: hash_token("admin-secret") },
            TokenEntry {
                name: "grafana".into(),
                role: Role::ReadOnly,
                hash: hash_token("ro-secret"),
            },
        ])
    }

    #[test]
    fn roles_are_enforced_and_messages_never_echo_the_token() {
        let t = tokens();
        assert_eq!(t.check(Some("Bearer admin-secret"), true).unwrap().name, "ops");
        assert_eq!(t.check(Some("Bearer ro-secret"), false).unwrap().name, "grafana");
        let e = t.check(Some("Bearer ro-secret"), true).unwrap_err();
        assert_eq!(e, Denied::ReadOnly("grafana".into()));
        assert!(!e.message().contains("ro-secret"));
        assert_eq!(t.check(None, false).unwrap_err(), Denied::Missing);
        assert_eq!(t.check(Some("Basic abc"), false).unwrap_err(), Denied::Missing);
        let e = t.check(Some("Bearer wrong"), false).unwrap_err();
        assert_eq!(e, Denied::Unknown);
        assert!(!e.message().contains("wrong"));
        assert!(!format!("{t:?}").contains("hash"), "hashes stay out of logs");
    }
}

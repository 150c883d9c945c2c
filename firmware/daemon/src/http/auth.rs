//! Bearer-token authentication for the management API.
//!
//! Tokens are random secrets handed to operators once; the daemon keeps only their SHA-256 (a token
//! has 256 bits of entropy, so a fast hash is enough: there is nothing to brute-force), in the
//! configuration's `token_hash` form ([`isthmus_config::hash_token`], the one hashing the CLI's
//! `isthmus token` uses too). Comparison is constant-time. A token never appears in a log, an
//! error or a response.

use isthmus_api::Role;
use isthmus_config::hash_token;

/// A token as the daemon stores it: a name for audit, a role, and the hash.
#[derive(Clone)]
pub struct TokenEntry {
    /// Who holds it, e.g. `ops` or `prometheus`. Recorded as the author of commits.
    pub name: String,
    /// What it may do.
    pub role: Role,
    /// The token's hash as [`hash_token`] writes it: `sha256:` and 64 lowercase hex digits.
    pub hash: String,
}

impl std::fmt::Debug for TokenEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenEntry").field("name", &self.name).field("role", &self.role).finish()
    }
}

/// Makes a new random token: `ist_` and 43 base64url characters (256 bits).
pub fn new_token() -> String {
    let mut b = [0u8; 32];
    getrandom::fill(&mut b).expect("the kernel's random source is available");
    format!("ist_{}", b64url(&b))
}

fn b64url(data: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::with_capacity(data.len() * 4 / 3 + 2);
    for chunk in data.chunks(3) {
        let n = chunk.iter().enumerate().fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
        for i in 0..=chunk.len() {
            out.push(char::from(A[(n >> (18 - 6 * i) & 63) as usize]));
        }
    }
    out
}

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
            if ct_eq(&e.hash, &h) && found.is_none() {
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

/// Equal, in time that depends only on the lengths (hashes all have the same length).
fn ct_eq(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |d, (x, y)| d | (x ^ y)) == 0
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
    }

    #[test]
    fn new_tokens_are_distinct_and_url_safe() {
        let a = new_token();
        let b = new_token();
        assert_ne!(a, b);
        assert_eq!(a.len(), 4 + 43);
        assert!(a[4..].bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_'));
        assert!(!format!("{:?}", tokens()).contains("hash"));
    }
}

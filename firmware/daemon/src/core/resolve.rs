//! The DNS names of customer gateways (`address = "vpn.branch.example"`).
//!
//! An apply never waits for DNS: it plans a named peer's tunnels only once the name has an
//! answer, read from this cache. [`Core::refresh_peer_names`] resolves the names off the apply
//! path (at once for a name never tried, else every [`REFRESH`]) and re-applies the configuration
//! when an answer changed, so the tunnel follows the peer to its new address.
//!
//! The answers are process-wide, as the resolver library's own state is (`/etc/hosts`,
//! `/etc/resolv.conf`): two cores of one process resolve a name the same way.

use std::collections::HashMap;
use std::net::{IpAddr, ToSocketAddrs};
use std::sync::{LazyLock, RwLock};
use std::time::{Duration, Instant};

use isthmus_config::{Config, PeerAddress};

use super::{Core, lock};
use isthmus_api::{EventKind, Severity};

/// How often a name that resolved is asked again, unless its gateway sets `dns_refresh`; a
/// name that failed is retried sooner.
pub const REFRESH: Duration = Duration::from_secs(60);
pub const RETRY: Duration = Duration::from_secs(5);

/// What a name last resolved to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer {
    /// The first address of the WAN's family.
    Addr(IpAddr),
    /// Why it did not resolve.
    Failed(String),
}

struct Entry {
    answer: Answer,
    at: Instant,
}

static ANSWERS: LazyLock<RwLock<HashMap<(String, bool), Entry>>> =
    LazyLock::new(|| RwLock::new(HashMap::new()));

/// The address `name` resolved to for a WAN of family `v4`; `None` until it resolved.
pub fn address(name: &str, v4: bool) -> Option<IpAddr> {
    match answer(name, v4) {
        Some(Answer::Addr(a)) => Some(a),
        _ => None,
    }
}

/// The last answer for `name`, if it was ever asked.
pub fn answer(name: &str, v4: bool) -> Option<Answer> {
    let m = ANSWERS.read().unwrap_or_else(|p| p.into_inner());
    m.get(&(name.to_owned(), v4)).map(|e| e.answer.clone())
}

/// Asks the system resolver (blocking), for an address of the WAN's family.
fn query(name: &str, v4: bool) -> Answer {
    match (name, 500).to_socket_addrs() {
        Ok(addrs) => {
            let mut addrs = addrs.map(|s| s.ip()).filter(|a| a.is_ipv4() == v4).peekable();
            match addrs.next() {
                Some(a) => Answer::Addr(a),
                None => Answer::Failed(format!(
                    "{name} has no {} address",
                    if v4 { "IPv4" } else { "IPv6" }
                )),
            }
        }
        Err(e) => Answer::Failed(format!("{name} does not resolve: {e}")),
    }
}

/// The names of `cfg`'s customer gateways, with how often each is asked again.
fn names(cfg: &Config) -> Vec<(String, String, Duration)> {
    cfg.customer_gateways
        .iter()
        .filter_map(|cg| match &cg.address {
            PeerAddress::Name(n) => {
                let every = cg.dns_refresh.map_or(REFRESH, |d| d.as_duration());
                Some((cg.name.clone(), n.clone(), every))
            }
            _ => None,
        })
        .collect()
}

impl Core {
    /// Resolves the due names of the applied configuration's customer gateways, and re-applies
    /// it when an answer changed (called once a second, off the async runtime). Returns the
    /// changes as "gateway: old -> new" lines.
    pub fn refresh_peer_names(&self) -> Vec<String> {
        let Some((rev, cfg)) = self.applied() else { return Vec::new() };
        let v4 = cfg.gateway.wan.address.addr.is_ipv4();
        let mut changed = Vec::new();
        for (gw, name, refresh) in names(&cfg) {
            let due = {
                let m = ANSWERS.read().unwrap_or_else(|p| p.into_inner());
                match m.get(&(name.clone(), v4)) {
                    None => true,
                    Some(e) => {
                        let every = match e.answer {
                            Answer::Addr(_) => refresh,
                            Answer::Failed(_) => refresh.min(RETRY),
                        };
                        e.at.elapsed() >= every
                    }
                }
            };
            if !due {
                continue;
            }
            let new = query(&name, v4);
            let old = {
                let mut answers = ANSWERS.write().unwrap_or_else(|p| p.into_inner());
                let old = answers.get(&(name.clone(), v4)).map(|e| e.answer.clone());
                // A name that stops resolving keeps its last address: a DNS outage must not
                // take down a tunnel that works.
                let answer = match (&new, &old) {
                    (Answer::Failed(_), Some(kept @ Answer::Addr(_))) => kept.clone(),
                    _ => new.clone(),
                };
                answers.insert((name.clone(), v4), Entry { answer, at: Instant::now() });
                old
            };
            if old.as_ref() == Some(&new) {
                continue;
            }
            let show = |a: &Option<Answer>| match a {
                Some(Answer::Addr(a)) => a.to_string(),
                Some(Answer::Failed(_)) => "unresolved".into(),
                None => "not yet asked".into(),
            };
            let (sev, text) = match &new {
                Answer::Addr(a) => (
                    Severity::Info,
                    format!("customer gateway `{gw}`: {name} resolves to {a} (was {})", show(&old)),
                ),
                Answer::Failed(why) if matches!(old, Some(Answer::Addr(_))) => {
                    tracing::warn!("customer gateway `{gw}`: {why}; keeping {}", show(&old));
                    continue;
                }
                Answer::Failed(why) => (
                    Severity::Warning,
                    format!("customer gateway `{gw}`: {why}; its tunnels wait for an answer"),
                ),
            };
            self.events.emit(EventKind::PeerAddress, &gw, sev, text.clone());
            if matches!(new, Answer::Addr(_)) {
                changed.push(text);
            }
        }
        if !changed.is_empty() {
            // Under the apply lock, and only if no commit replaced the revision meanwhile.
            let _applying = lock(&self.applying);
            if self.applied().is_some_and(|(r, _)| r == rev)
                && let Err(e) = self.apply_held(rev, (*cfg).clone())
            {
                tracing::warn!("re-applying revision {rev} for the new peer addresses: {e}");
            }
        }
        changed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_resolve_to_the_wan_family_or_say_why_not() {
        assert_eq!(query("localhost", true), Answer::Addr("127.0.0.1".parse().unwrap()));
        let Answer::Failed(why) = query("no-such-host.invalid", true) else { panic!() };
        assert!(why.starts_with("no-such-host.invalid does not resolve"), "{why}");
    }
}

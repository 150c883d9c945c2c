//! Rate limiting of what unauthenticated traffic makes the driver say.
//!
//! Anyone can send IKE_SA_INIT to the WAN address; each refused one is a negotiation failure
//! that the driver logs and the daemon turns into an event. Unlimited, 80,000 datagrams from
//! an unknown address wrote 7.2 MiB of log. Per interval, each key (source address and
//! reason) may be reported [`Limits::burst`] times; the rest are counted, and when the interval
//! ends one summary per key says how many were suppressed. Spoofed sources cannot multiply the
//! budget: at most [`Limits::keys`] keys are tracked per interval, and what the others would
//! have said is summarised in one line.

use std::collections::HashMap;
use std::hash::Hash;
use std::time::{Duration, Instant};

/// How much may be reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// The interval over which a key's reports are counted, and after which the suppressed
    /// ones are summarised.
    pub window: Duration,
    /// Reports per key and interval.
    pub burst: u32,
    /// Keys tracked per interval; reports of further keys are suppressed at once.
    pub keys: usize,
    /// Summary lines per interval (the keys that suppressed most); the rest in one more line.
    pub summaries: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits { window: Duration::from_secs(60), burst: 3, keys: 256, summaries: 8 }
    }
}

/// What was suppressed in one interval.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Suppressed<K> {
    /// The key (`None`: every key beyond the tracked ones, or beyond the summary lines).
    pub key: Option<K>,
    /// Reports suppressed.
    pub count: u64,
}

/// Per-key report counters over fixed intervals.
#[derive(Debug)]
pub struct RateLimit<K> {
    limits: Limits,
    started: Option<Instant>,
    /// Reports so far this interval, per key.
    seen: HashMap<K, u64>,
    /// Reports of keys not tracked (over `limits.keys`).
    untracked: u64,
}

impl<K: Hash + Eq + Clone + Ord> RateLimit<K> {
    /// A limiter with these limits.
    pub fn new(limits: Limits) -> Self {
        RateLimit { limits, started: None, seen: HashMap::new(), untracked: 0 }
    }

    /// True when a report of `key` may be made now. Call [`RateLimit::summary`] first when
    /// [`RateLimit::deadline`] has passed.
    pub fn admit(&mut self, key: &K, now: Instant) -> bool {
        self.started.get_or_insert(now);
        if let Some(n) = self.seen.get_mut(key) {
            *n += 1;
            return *n <= u64::from(self.limits.burst);
        }
        if self.seen.len() >= self.limits.keys {
            self.untracked += 1;
            return false;
        }
        self.seen.insert(key.clone(), 1);
        self.limits.burst > 0
    }

    /// The interval.
    pub fn window(&self) -> Duration {
        self.limits.window
    }

    /// When the current interval ends (`None`: nothing reported since the last summary).
    pub fn deadline(&self) -> Option<Instant> {
        self.started.map(|s| s + self.limits.window)
    }

    /// Ends the interval if it is over: what was suppressed in it, the keys that suppressed
    /// most first (at most [`Limits::summaries`] of them, then one line for the rest).
    pub fn summary(&mut self, now: Instant) -> Vec<Suppressed<K>> {
        if self.deadline().is_none_or(|d| now < d) {
            return Vec::new();
        }
        let burst = u64::from(self.limits.burst);
        let mut over: Vec<(K, u64)> =
            self.seen.drain().filter(|(_, n)| *n > burst).map(|(k, n)| (k, n - burst)).collect();
        over.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        let rest = over.split_off(over.len().min(self.limits.summaries));
        let mut out: Vec<Suppressed<K>> =
            over.into_iter().map(|(k, count)| Suppressed { key: Some(k), count }).collect();
        let rest_count = rest.iter().map(|r| r.1).sum::<u64>() + self.untracked;
        if rest_count > 0 {
            out.push(Suppressed { key: None, count: rest_count });
        }
        self.started = None;
        self.untracked = 0;
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits { window: Duration::from_secs(10), burst: 2, keys: 3, summaries: 2 }
    }

    #[test]
    fn a_burst_per_key_then_one_summary_per_key() {
        let t0 = Instant::now();
        let mut r = RateLimit::new(limits());
        let admitted = (0..100).filter(|_| r.admit(&"a", t0)).count();
        assert_eq!(admitted, 2);
        assert!(r.admit(&"b", t0), "another key has its own budget");
        assert!(r.summary(t0 + Duration::from_secs(9)).is_empty(), "interval not over");
        assert_eq!(r.deadline(), Some(t0 + Duration::from_secs(10)));
        let s = r.summary(t0 + Duration::from_secs(10));
        assert_eq!(s, vec![Suppressed { key: Some("a"), count: 98 }]);
        assert_eq!(r.deadline(), None, "quiet until the next report");
        let t1 = t0 + Duration::from_secs(30);
        assert!(r.admit(&"a", t1), "a new interval, a new budget");
        assert!(r.summary(t1 + Duration::from_secs(10)).is_empty(), "nothing suppressed");
    }

    #[test]
    fn spoofed_sources_cannot_multiply_the_budget() {
        let t0 = Instant::now();
        let mut r = RateLimit::new(limits());
        let admitted = (0..1000u32).filter(|k| r.admit(&(k % 500), t0)).count();
        // Three keys tracked, two reports each.
        assert_eq!(admitted, 6);
        let s = r.summary(t0 + Duration::from_secs(10));
        assert_eq!(s.len(), 1, "{s:?}");
        assert_eq!(s[0].key, None);
        assert_eq!(s[0].count, 1000 - 6);
        // Summary lines are bounded too: the biggest keys, then the rest.
        for k in 0..3u32 {
            for _ in 0..(10 + k) {
                r.admit(&k, t0 + Duration::from_secs(20));
            }
        }
        let s = r.summary(t0 + Duration::from_secs(30));
        assert_eq!(
            s,
            vec![
                Suppressed { key: Some(2), count: 10 },
                Suppressed { key: Some(1), count: 9 },
                Suppressed { key: None, count: 8 },
            ]
        );
    }
}

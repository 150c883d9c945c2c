//! The security association database (RFC 4301 §4.4.2) as the workers see it, and the control
//! logic that maintains it.
//!
//! Workers read an immutable [`Snapshot`]: the published SPD table, each SPD entry resolved to
//! its outbound SA (or to none: then the packet is dropped, never sent in clear), and the
//! inbound SAs by SPI. The control side ([`Sad`], behind a mutex) edits its maps and publishes a
//! new snapshot with one pointer swap, so a worker sees either the old or the new state, never a
//! mix, and a rekey switches the outbound SA between two packets (make-before-break).
//!
//! Inbound rekeying keeps the old SA after the new one is installed (packets already in flight
//! under the old SPI still decrypt) until the new SA has carried traffic for a short linger, or a
//! grace time passes, whichever is first.
//!
//! A removed SA's counters are not lost: its tunnel's [`Retired`] totals take them once no
//! worker can count on it any more (a worker may still hold the snapshot it was removed from
//! and encrypt one more packet), so a tunnel's totals are exact across rekeys.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use isthmus_esp::{InboundSa, LifetimeState, OutboundSa, SaCounters};
use isthmus_tables::sg::AttachmentId;
use isthmus_tables::spd::{Selector, SpdAction, SpdTable};

use crate::{DataplaneError, Direction, Encap, Event};

/// An outbound SA with where and how its packets go.
#[derive(Debug)]
pub struct Outbound {
    pub(crate) sa: Arc<OutboundSa>,
    pub(crate) tunnel: String,
    /// The tunnel's security-group attachment.
    pub(crate) att: AttachmentId,
    pub(crate) child: String,
    pub(crate) encap: Encap,
    /// The peer's socket address (port ignored for raw ESP).
    pub(crate) dest: SocketAddr,
    /// Outer IP header plus UDP header, if any.
    pub(crate) outer_len: usize,
}

/// An inbound SA with the traffic selectors its inner packets must match.
#[derive(Debug)]
pub struct Inbound {
    pub(crate) sa: Arc<InboundSa>,
    pub(crate) tunnel: String,
    /// The tunnel's security-group attachment.
    pub(crate) att: AttachmentId,
    pub(crate) child: String,
    pub(crate) selectors: Vec<Selector>,
}

impl Inbound {
    /// True when a decrypted packet's flow lies inside the SA's selectors.
    pub(crate) fn admits(&self, flow: &isthmus_tables::FlowKey) -> bool {
        self.selectors.iter().any(|s| s.matches_inbound(flow))
    }
}

/// What the workers read, published whole.
#[derive(Debug, Default)]
pub struct Snapshot {
    pub(crate) spd: Arc<SpdTable>,
    /// Per SPD entry: the outbound SA of its `Protect` action, if one is installed.
    pub(crate) resolved: Vec<Option<Arc<Outbound>>>,
    pub(crate) inbound: HashMap<u32, Arc<Inbound>>,
}

#[derive(Debug)]
struct Retiring {
    old: u32,
    new: u32,
    deadline: Instant,
    /// When housekeeping first saw the new SA carry a packet.
    new_seen: Option<Instant>,
}

/// What the SAs a tunnel no longer has carried and dropped, each SA's final counters.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Retired {
    /// Outbound SAs, summed.
    pub outbound: SaCounters,
    /// Inbound SAs, summed.
    pub inbound: SaCounters,
}

fn add_counters(to: &mut SaCounters, c: &SaCounters) {
    to.packets += c.packets;
    to.bytes += c.bytes;
    to.drops.add(&c.drops);
}

impl Retired {
    fn add(&mut self, dir: Direction, c: &SaCounters) {
        let to = if dir == Direction::Outbound { &mut self.outbound } else { &mut self.inbound };
        add_counters(to, c);
    }
}

/// A removed SA that a worker may still count on.
#[derive(Debug)]
enum Draining {
    Out(String, Arc<OutboundSa>),
    In(String, Arc<InboundSa>),
}

impl Draining {
    fn tunnel(&self) -> &str {
        match self {
            Draining::Out(t, _) | Draining::In(t, _) => t,
        }
    }

    fn direction(&self) -> Direction {
        match self {
            Draining::Out(..) => Direction::Outbound,
            Draining::In(..) => Direction::Inbound,
        }
    }

    fn counters(&self) -> SaCounters {
        match self {
            Draining::Out(_, sa) => sa.counters(),
            Draining::In(_, sa) => sa.counters(),
        }
    }

    /// Nothing but this list holds the SA: its counters are final.
    fn settled(&self) -> bool {
        match self {
            Draining::Out(_, sa) => Arc::strong_count(sa) == 1,
            Draining::In(_, sa) => Arc::strong_count(sa) == 1,
        }
    }
}

/// The control side's view; every change ends in [`Sad::snapshot`].
#[derive(Debug, Default)]
pub struct Sad {
    spd: Arc<SpdTable>,
    outbound: HashMap<(String, String), Arc<Outbound>>,
    inbound: HashMap<u32, Arc<Inbound>>,
    retiring: Vec<Retiring>,
    /// Final counters of removed SAs, per tunnel.
    retired: HashMap<String, Retired>,
    /// Removed SAs whose counters may still move.
    draining: Vec<Draining>,
}

impl Sad {
    /// The state workers should see now.
    pub fn snapshot(&self) -> Snapshot {
        let resolved = self
            .spd
            .entries
            .iter()
            .map(|e| match &e.action {
                SpdAction::Protect { tunnel, child } => {
                    self.outbound.get(&(tunnel.clone(), child.clone())).cloned()
                }
                _ => None,
            })
            .collect();
        Snapshot { spd: self.spd.clone(), resolved, inbound: self.inbound.clone() }
    }

    /// Replaces the SPD; its generation must be newer than the current one.
    pub fn publish_spd(&mut self, table: SpdTable) -> Result<(), DataplaneError> {
        if table.generation <= self.spd.generation && !self.spd.entries.is_empty() {
            return Err(DataplaneError::StaleSpd {
                new: table.generation,
                current: self.spd.generation,
            });
        }
        self.spd = Arc::new(table);
        Ok(())
    }

    /// The published SPD's generation.
    pub fn generation(&self) -> u64 {
        self.spd.generation
    }

    /// Installs (or atomically replaces) the outbound SA of `tunnel`/`child`; returns the SPI
    /// it replaced.
    pub fn install_outbound(&mut self, o: Outbound) -> Option<u32> {
        let key = (o.tunnel.clone(), o.child.clone());
        let old = self.outbound.insert(key, Arc::new(o))?;
        let spi = old.sa.spi();
        self.drain_outbound(&old);
        Some(spi)
    }

    fn drain_outbound(&mut self, o: &Outbound) {
        self.draining.push(Draining::Out(o.tunnel.clone(), o.sa.clone()));
    }

    fn drain_inbound(&mut self, i: &Inbound) {
        self.draining.push(Draining::In(i.tunnel.clone(), i.sa.clone()));
    }

    /// Moves the counters of removed SAs that no worker holds any more into their tunnel's
    /// retired totals.
    fn settle(&mut self) {
        let (done, left): (Vec<_>, Vec<_>) =
            std::mem::take(&mut self.draining).into_iter().partition(Draining::settled);
        self.draining = left;
        for d in done {
            self.retired
                .entry(d.tunnel().to_owned())
                .or_default()
                .add(d.direction(), &d.counters());
        }
    }

    /// Per tunnel, the final counters of every SA it no longer has (those still draining read
    /// now).
    pub fn retired(&mut self) -> HashMap<String, Retired> {
        self.settle();
        let mut r = self.retired.clone();
        for d in &self.draining {
            r.entry(d.tunnel().to_owned()).or_default().add(d.direction(), &d.counters());
        }
        r
    }

    /// Removes the outbound SA of `tunnel`/`child`; its traffic is then dropped (and acquires
    /// are raised) until another is installed.
    pub fn remove_outbound(&mut self, tunnel: &str, child: &str) -> Result<u32, DataplaneError> {
        let o = self.outbound.remove(&(tunnel.to_owned(), child.to_owned())).ok_or_else(|| {
            DataplaneError::NoOutbound { tunnel: tunnel.into(), child: child.into() }
        })?;
        self.drain_outbound(&o);
        Ok(o.sa.spi())
    }

    /// Adds an inbound SA under its SPI.
    pub fn add_inbound(&mut self, i: Inbound) -> Result<(), DataplaneError> {
        let spi = i.sa.spi();
        if self.inbound.contains_key(&spi) {
            return Err(DataplaneError::DuplicateSpi(spi));
        }
        self.inbound.insert(spi, Arc::new(i));
        Ok(())
    }

    /// Adds `new` and retires the inbound SA `old`: it keeps decrypting until `new` has carried
    /// traffic for `linger`, or until `grace` passes.
    pub fn rekey_inbound(
        &mut self,
        old: u32,
        new: Inbound,
        now: Instant,
        grace: Duration,
    ) -> Result<(), DataplaneError> {
        if !self.inbound.contains_key(&old) {
            return Err(DataplaneError::UnknownSpi(old));
        }
        let new_spi = new.sa.spi();
        self.add_inbound(new)?;
        self.retiring.push(Retiring { old, new: new_spi, deadline: now + grace, new_seen: None });
        Ok(())
    }

    /// Removes an inbound SA now.
    pub fn remove_inbound(&mut self, spi: u32) -> Result<(), DataplaneError> {
        self.retiring.retain(|r| r.old != spi);
        let i = self.inbound.remove(&spi).ok_or(DataplaneError::UnknownSpi(spi))?;
        self.drain_inbound(&i);
        Ok(())
    }

    /// Periodic work: lifetime events, hard-expired SAs removed, retired inbound SAs dropped.
    /// Returns the events and whether the snapshot must be republished.
    pub fn housekeeping(&mut self, now: Instant, linger: Duration) -> (Vec<Event>, bool) {
        let mut events = Vec::new();
        let mut changed = false;
        for o in self.outbound.values() {
            if o.sa.take_soft_expired(now) {
                events.push(Event::SoftExpired { spi: o.sa.spi(), direction: Direction::Outbound });
            }
        }
        for i in self.inbound.values() {
            if i.sa.take_soft_expired(now) {
                events.push(Event::SoftExpired { spi: i.sa.spi(), direction: Direction::Inbound });
            }
        }
        let hard_out: Vec<_> = self
            .outbound
            .iter()
            .filter(|(_, o)| o.sa.lifetime_state(now) == LifetimeState::Hard)
            .map(|(k, o)| (k.clone(), o.sa.spi()))
            .collect();
        for (k, spi) in hard_out {
            if let Some(o) = self.outbound.remove(&k) {
                self.drain_outbound(&o);
            }
            events.push(Event::HardExpired { spi, direction: Direction::Outbound });
            changed = true;
        }
        let hard_in: Vec<u32> = self
            .inbound
            .values()
            .filter(|i| i.sa.lifetime_state(now) == LifetimeState::Hard)
            .map(|i| i.sa.spi())
            .collect();
        for spi in hard_in {
            if let Some(i) = self.inbound.remove(&spi) {
                self.drain_inbound(&i);
            }
            events.push(Event::HardExpired { spi, direction: Direction::Inbound });
            changed = true;
        }
        let inbound = &mut self.inbound;
        let draining = &mut self.draining;
        self.retiring.retain_mut(|r| {
            if r.new_seen.is_none()
                && inbound.get(&r.new).is_some_and(|n| n.sa.last_packet().is_some())
            {
                r.new_seen = Some(now);
            }
            let new_used = r.new_seen.is_some_and(|t| now >= t + linger);
            let new_gone = !inbound.contains_key(&r.new);
            if new_used || new_gone || now >= r.deadline {
                if let Some(old) = inbound.remove(&r.old) {
                    draining.push(Draining::In(old.tunnel.clone(), old.sa.clone()));
                    events.push(Event::InboundRetired { spi: r.old });
                    changed = true;
                }
                false
            } else {
                true
            }
        });
        self.settle();
        (events, changed)
    }

    /// Every installed SA, for counters.
    pub fn all(&self) -> (Vec<Arc<Outbound>>, Vec<Arc<Inbound>>) {
        (self.outbound.values().cloned().collect(), self.inbound.values().cloned().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use isthmus_esp::{Aead, Backend, Lifetime, SaConfig};
    use isthmus_tables::spd::SpdEntry;

    fn cfg(spi: u32, lifetime: Lifetime) -> SaConfig {
        SaConfig {
            spi,
            transform: Aead::Aes128Gcm16.into(),
            backend: Backend::Ring,
            key: vec![7; 20],
            esn: false,
            replay_window: 64,
            lifetime,
        }
    }

    fn outbound(spi: u32, child: &str, now: Instant) -> Outbound {
        Outbound {
            sa: Arc::new(OutboundSa::new(cfg(spi, Lifetime::default()), now).unwrap()),
            tunnel: "t1".into(),
            att: AttachmentId::of("t1"),
            child: child.into(),
            encap: Encap::Udp { peer: "192.0.2.2:4500".parse().unwrap() },
            dest: "192.0.2.2:4500".parse().unwrap(),
            outer_len: 28,
        }
    }

    fn inbound(spi: u32, now: Instant, lifetime: Lifetime) -> Inbound {
        Inbound {
            sa: Arc::new(InboundSa::new(cfg(spi, lifetime), now).unwrap()),
            tunnel: "t1".into(),
            att: AttachmentId::of("t1"),
            child: "c".into(),
            selectors: vec![Selector::between(
                "10.1.0.0/16".parse().unwrap(),
                "10.2.0.0/16".parse().unwrap(),
            )],
        }
    }

    fn spd(generation: u64) -> SpdTable {
        let protect = |child: &str| SpdAction::Protect { tunnel: "t1".into(), child: child.into() };
        let sel = Selector::between("10.1.0.0/16".parse().unwrap(), "10.2.0.0/16".parse().unwrap());
        SpdTable::new(
            generation,
            vec![
                SpdEntry { id: "a".into(), selector: sel.clone(), action: protect("c") },
                SpdEntry { id: "b".into(), selector: sel.clone(), action: protect("other") },
                SpdEntry { id: "c".into(), selector: sel, action: SpdAction::Discard },
            ],
        )
    }

    #[test]
    fn spd_entries_resolve_to_installed_sas_and_replace_atomically() {
        let now = Instant::now();
        let mut sad = Sad::default();
        sad.publish_spd(spd(1)).unwrap();
        let s = sad.snapshot();
        assert!(s.resolved.iter().all(Option::is_none), "no SA yet: nothing resolves");
        assert_eq!(sad.install_outbound(outbound(0x1000, "c", now)), None);
        let s1 = sad.snapshot();
        assert_eq!(s1.resolved[0].as_ref().unwrap().sa.spi(), 0x1000);
        assert!(s1.resolved[1].is_none() && s1.resolved[2].is_none());
        // Rekey: the new SA replaces the old one; an older snapshot still holds the old one.
        assert_eq!(sad.install_outbound(outbound(0x2000, "c", now)), Some(0x1000));
        let s2 = sad.snapshot();
        assert_eq!(s2.resolved[0].as_ref().unwrap().sa.spi(), 0x2000);
        assert_eq!(s1.resolved[0].as_ref().unwrap().sa.spi(), 0x1000);
        assert_eq!(sad.remove_outbound("t1", "c").unwrap(), 0x2000);
        assert!(sad.snapshot().resolved[0].is_none());
        assert!(matches!(sad.remove_outbound("t1", "c"), Err(DataplaneError::NoOutbound { .. })));
    }

    /// Issue 14 item 15: a removed SA added its last *sampled* counters to its tunnel's totals,
    /// losing the packets in between (588 echo requests sent, 582 counted). Its final counters
    /// count, also for a packet a worker sends on it after the removal.
    #[test]
    fn removed_sas_keep_their_final_counters() {
        let now = Instant::now();
        let mut sad = Sad::default();
        sad.publish_spd(spd(1)).unwrap();
        sad.install_outbound(outbound(0x1000, "c", now));
        let held = sad.snapshot();
        let old = held.resolved[0].clone().unwrap();
        let send = |o: &Outbound| {
            let inner = [0x45, 0, 0, 20, 0, 0, 0, 0, 64, 1, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2];
            o.sa.encapsulate(&inner, &mut [0u8; 256], now).unwrap();
        };
        send(&old);
        // Rekey: the successor replaces it while a worker still holds the old snapshot.
        sad.install_outbound(outbound(0x2000, "c", now));
        sad.add_inbound(inbound(0x3000, now, Lifetime::default())).unwrap();
        assert_eq!(sad.retired()["t1"].outbound.packets, 1);
        send(&old);
        drop((held, old));
        sad.remove_inbound(0x3000).unwrap();
        let r = sad.retired();
        assert_eq!(r["t1"].outbound.packets, 2, "the packet sent after the removal counts");
        assert_eq!(r["t1"].outbound.bytes, 40);
        assert_eq!(r["t1"].inbound.packets, 0);
        assert!(sad.draining.is_empty(), "settled once nothing holds them: {:?}", sad.draining);
        assert_eq!(sad.retired(), r, "settling changes nothing");
    }

    #[test]
    fn stale_spd_generation_is_refused() {
        let mut sad = Sad::default();
        sad.publish_spd(spd(5)).unwrap();
        let e = sad.publish_spd(spd(5)).unwrap_err();
        assert_eq!(e.to_string(), "SPD generation 5 is not newer than the published generation 5");
        sad.publish_spd(spd(6)).unwrap();
        assert_eq!(sad.generation(), 6);
    }

    #[test]
    fn duplicate_and_unknown_spis() {
        let now = Instant::now();
        let mut sad = Sad::default();
        sad.add_inbound(inbound(0x3000, now, Lifetime::default())).unwrap();
        assert!(matches!(
            sad.add_inbound(inbound(0x3000, now, Lifetime::default())),
            Err(DataplaneError::DuplicateSpi(0x3000))
        ));
        assert!(matches!(sad.remove_inbound(0x9999), Err(DataplaneError::UnknownSpi(0x9999))));
        assert!(matches!(
            sad.rekey_inbound(
                0x9999,
                inbound(0x4000, now, Lifetime::default()),
                now,
                Duration::from_secs(1)
            ),
            Err(DataplaneError::UnknownSpi(0x9999))
        ));
        sad.remove_inbound(0x3000).unwrap();
        assert!(sad.snapshot().inbound.is_empty());
    }

    #[test]
    fn old_inbound_sa_is_kept_until_grace_passes() {
        let now = Instant::now();
        let mut sad = Sad::default();
        sad.add_inbound(inbound(0x3000, now, Lifetime::default())).unwrap();
        sad.rekey_inbound(
            0x3000,
            inbound(0x4000, now, Lifetime::default()),
            now,
            Duration::from_secs(10),
        )
        .unwrap();
        let linger = Duration::from_secs(1);
        let (ev, changed) = sad.housekeeping(now + Duration::from_secs(5), linger);
        assert!(ev.is_empty() && !changed);
        assert_eq!(sad.snapshot().inbound.len(), 2, "both SAs decrypt during the rekey");
        let (ev, changed) = sad.housekeeping(now + Duration::from_secs(11), linger);
        assert!(changed);
        assert_eq!(ev, vec![Event::InboundRetired { spi: 0x3000 }]);
        let s = sad.snapshot();
        assert!(s.inbound.contains_key(&0x4000) && !s.inbound.contains_key(&0x3000));
    }

    #[test]
    fn lifetimes_raise_soft_then_hard_and_remove_the_sa() {
        let now = Instant::now();
        let mut sad = Sad::default();
        let lt = Lifetime {
            soft_time: Some(Duration::from_secs(10)),
            hard_time: Some(Duration::from_secs(20)),
            ..Lifetime::default()
        };
        sad.add_inbound(inbound(0x3000, now, lt)).unwrap();
        let linger = Duration::from_secs(1);
        assert!(sad.housekeeping(now + Duration::from_secs(1), linger).0.is_empty());
        let (ev, _) = sad.housekeeping(now + Duration::from_secs(11), linger);
        assert_eq!(ev, vec![Event::SoftExpired { spi: 0x3000, direction: Direction::Inbound }]);
        assert!(sad.housekeeping(now + Duration::from_secs(12), linger).0.is_empty(), "soft once");
        let (ev, changed) = sad.housekeeping(now + Duration::from_secs(21), linger);
        assert!(changed);
        assert_eq!(ev, vec![Event::HardExpired { spi: 0x3000, direction: Direction::Inbound }]);
        assert!(sad.snapshot().inbound.is_empty());
    }
}

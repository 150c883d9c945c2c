//! The flow table that makes security groups stateful: return traffic of an allowed flow passes.
//!
//! [`FlowTable::process`] is the per-packet entry point of security-group and network-ACL
//! filtering. A packet of a known flow costs one hash lookup: the entry caches the security-group
//! verdict and the network-ACL verdicts of both directions, valid for the table generation it
//! carries. A packet of a new flow is classified ([`crate::sg`]): network ACL of its direction
//! first (stateless), then the security group; an allowed flow gets an entry under both its key
//! and the reply's key, so the reply passes the security group without evaluation (it still
//! passes its own direction's network ACL, as cloud ACLs do).
//!
//! When a table with a new generation is published, an entry of an older generation is
//! re-evaluated on its next packet, so a rule removed from a group takes effect on established
//! flows too. Entries expire after an idle timeout per protocol; time is an input (milliseconds
//! from any monotonic origin), the table never reads a clock. The table has a fixed capacity:
//! when it is full and nothing has expired, a new flow is dropped and counted
//! ([`FlowCounters::table_full_drops`]).
//!
//! Flows that match a `punt` rule are queued for the security-group plugin ([`PuntRequest`]);
//! their packets wait (verdict [`Outcome::Pending`]) until [`FlowTable::resolve`] brings the
//! plugin's decision, or [`FlowConfig::punt_timeout_ms`] passes and the default verdict applies.
//!
//! One `FlowTable` belongs to one packet thread (`&mut self`, no locks): shard flows by hash
//! across threads.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, Hasher};
use std::net::IpAddr;
use std::sync::Arc;

use crate::sg::{Action, AttachmentId, ChainKind, Direction, RuleRef, SgTable, Verdict};
use crate::types::FlowKey;

/// Limits and timeouts of a flow table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FlowConfig {
    /// Most flows tracked at once.
    pub capacity: usize,
    /// Idle timeout of TCP flows.
    pub tcp_timeout_ms: u64,
    /// Idle timeout of UDP flows.
    pub udp_timeout_ms: u64,
    /// Idle timeout of ICMP / ICMPv6 flows.
    pub icmp_timeout_ms: u64,
    /// Idle timeout of other protocols.
    pub other_timeout_ms: u64,
    /// How long a punted flow waits for the plugin before the default verdict applies.
    pub punt_timeout_ms: u64,
    /// The verdict of a punted flow whose decision did not come in time.
    pub punt_default: Action,
    /// Most punt requests queued at once; beyond, new punted flows get `punt_default` at once.
    pub punt_queue: usize,
    /// How long a flow denied by the plugin stays cached (so it is not asked again per packet).
    pub punt_deny_ms: u64,
}

impl Default for FlowConfig {
    fn default() -> FlowConfig {
        FlowConfig {
            capacity: 262_144,
            tcp_timeout_ms: 3_600_000,
            udp_timeout_ms: 60_000,
            icmp_timeout_ms: 30_000,
            other_timeout_ms: 60_000,
            punt_timeout_ms: 200,
            punt_default: Action::Deny,
            punt_queue: 4_096,
            punt_deny_ms: 10_000,
        }
    }
}

/// What to do with a packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// Forward it.
    Allow,
    /// Drop it.
    Deny,
    /// Hold or drop it: its flow waits for the plugin's decision.
    Pending,
}

/// Why: the rule (or state) that decided.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reason {
    /// A chain's rule, default or absence.
    Rule {
        /// Security group or network ACL.
        kind: ChainKind,
        /// The chain's direction.
        direction: Direction,
        /// Which rule.
        rule: RuleRef,
    },
    /// A packet of a flow the security group allowed earlier (`rule`, in `direction`).
    Established {
        /// The direction the flow was first seen in.
        direction: Direction,
        /// The rule that allowed it.
        rule: RuleRef,
    },
    /// The plugin decided; the string is the rule it named.
    Punt(Arc<str>),
    /// The plugin did not answer in time; [`FlowConfig::punt_default`] applied.
    PuntTimeout,
    /// The punt queue was full; [`FlowConfig::punt_default`] applied.
    PuntQueueFull,
    /// The plugin has been asked and has not answered yet.
    PuntPending,
    /// The flow table was full: the new flow could not be tracked.
    TableFull,
}

/// The verdict for one packet, with its reason.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PacketVerdict {
    /// What to do.
    pub outcome: Outcome,
    /// Why.
    pub reason: Reason,
}

/// A flow waiting for the plugin's `decide`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PuntRequest {
    /// Where the flow was seen.
    pub attachment: AttachmentId,
    /// Its direction there.
    pub direction: Direction,
    /// Its first packet's key.
    pub key: FlowKey,
    /// The punt rule it matched.
    pub rule: RuleRef,
    /// The table generation it was classified with.
    pub generation: u64,
}

/// Counters of a flow table, for metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowCounters {
    /// Packets of known flows.
    pub hits: u64,
    /// Packets that needed classification.
    pub misses: u64,
    /// Flows created.
    pub created: u64,
    /// Flows removed after their idle timeout.
    pub expired: u64,
    /// New flows dropped because the table was full.
    pub table_full_drops: u64,
    /// Flows punted to the plugin.
    pub punted: u64,
    /// Punted flows whose decision came too late.
    pub punt_timeouts: u64,
    /// Punted flows refused because the punt queue was full.
    pub punt_queue_full: u64,
    /// Established flows re-evaluated after a table swap.
    pub revalidated: u64,
}

#[derive(Clone, Copy, Debug)]
enum State {
    /// Allowed by the security group; `rule` and `direction` name why.
    Allowed { direction: Direction, rule: RuleRef },
    /// Decided by the plugin (the rule it named is in [`FlowTable`]'s `punt_rules`).
    Punted { allow: bool },
    /// Timed out or refused at the punt queue.
    PuntDefault { allow: bool, reason_full: bool },
    /// Waiting for the plugin since `since`.
    Pending { since: u64 },
}

/// The fields a cache hit reads fill exactly the first cache line (`repr(C)` keeps the order,
/// `align(64)` puts it on a line boundary).
#[derive(Clone, Debug)]
#[repr(C, align(64))]
struct Entry {
    generation: u64,
    expires: u64,
    idle: u64,
    state: State,
    /// Network-ACL verdicts, forward and reply, computed on first use in this generation.
    nacl: [Option<Verdict>; 2],
    direction: Direction,
    attachment: AttachmentId,
    key: FlowKey,
}

/// An IPv4 flow key with its attachment: 24 bytes, so the IPv4 map stays small in the cache.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct K4 {
    att: u64,
    addrs: u64,
    ports: u32,
    proto: u8,
}

impl std::hash::Hash for K4 {
    #[inline]
    fn hash<H: Hasher>(&self, h: &mut H) {
        // Each word is mixed on its own, so no field can cancel another before the seeded mix.
        h.write_u64(self.addrs);
        h.write_u64(
            (u64::from(self.ports) << 16 | u64::from(self.proto) << 8) ^ self.att.rotate_left(29),
        );
    }
}

/// An IPv6 (or mixed) flow key with its attachment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct K6 {
    att: u64,
    src: [u64; 2],
    dst: [u64; 2],
    ports: u32,
    proto: u8,
}

impl std::hash::Hash for K6 {
    #[inline]
    fn hash<H: Hasher>(&self, h: &mut H) {
        h.write_u64(self.src[0]);
        h.write_u64(self.src[1]);
        h.write_u64(self.dst[0]);
        h.write_u64(self.dst[1]);
        h.write_u64(
            (u64::from(self.ports) << 16 | u64::from(self.proto) << 8 | 1)
                ^ self.att.rotate_left(29),
        );
    }
}

/// A flow key as the maps index it. Hashed with a per-table random seed: flow keys come from the
/// network, so the hash must not be predictable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fk {
    V4(K4),
    V6(K6),
}

impl Fk {
    #[inline]
    fn new(att: AttachmentId, k: &FlowKey) -> Fk {
        let ports = u32::from(k.src_port) << 16 | u32::from(k.dst_port);
        match (k.src, k.dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => Fk::V4(K4 {
                att: att.0,
                addrs: u64::from(u32::from(s)) << 32 | u64::from(u32::from(d)),
                ports,
                proto: k.proto,
            }),
            (s, d) => {
                let (s, d) = (addr128(s), addr128(d));
                Fk::V6(K6 {
                    att: att.0,
                    src: [(s >> 64) as u64, s as u64],
                    dst: [(d >> 64) as u64, d as u64],
                    ports,
                    proto: k.proto,
                })
            }
        }
    }
}

/// The two maps: key (forward or reply) → slot index × 2 + (1 when the key is the reply's).
#[derive(Debug)]
struct Maps {
    v4: HashMap<K4, u32, Seeded>,
    v6: HashMap<K6, u32, Seeded>,
}

impl Maps {
    #[inline]
    fn get(&self, k: &Fk) -> Option<u32> {
        match k {
            Fk::V4(k) => self.v4.get(k).copied(),
            Fk::V6(k) => self.v6.get(k).copied(),
        }
    }

    fn insert(&mut self, k: Fk, v: u32) {
        match k {
            Fk::V4(k) => {
                self.v4.insert(k, v);
            }
            Fk::V6(k) => {
                self.v6.insert(k, v);
            }
        }
    }

    fn remove(&mut self, k: &Fk) {
        match k {
            Fk::V4(k) => {
                self.v4.remove(k);
            }
            Fk::V6(k) => {
                self.v6.remove(k);
            }
        }
    }
}

#[inline]
fn addr128(a: IpAddr) -> u128 {
    match a {
        IpAddr::V4(a) => u128::from(u32::from(a)),
        IpAddr::V6(a) => u128::from(a),
    }
}

/// Seeded multiply-fold hashing: fast for the few fixed-size words of a flow key.
#[derive(Clone, Copy)]
struct Seeded(u64);

impl BuildHasher for Seeded {
    type Hasher = FoldHasher;
    fn build_hasher(&self) -> FoldHasher {
        FoldHasher(self.0)
    }
}

struct FoldHasher(u64);

impl FoldHasher {
    #[inline]
    fn mix(&mut self, v: u64) {
        let m = u128::from(self.0 ^ v).wrapping_mul(0x9e37_79b9_7f4a_7c15_d1b5_4a32_d192_ed03);
        self.0 = (m as u64) ^ ((m >> 64) as u64);
    }
}

impl Hasher for FoldHasher {
    #[inline]
    fn finish(&self) -> u64 {
        self.0
    }
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        for c in bytes.chunks(8) {
            let mut b = [0u8; 8];
            b[..c.len()].copy_from_slice(c);
            self.mix(u64::from_le_bytes(b));
        }
    }
    #[inline]
    fn write_u8(&mut self, v: u8) {
        self.mix(u64::from(v));
    }
    #[inline]
    fn write_u32(&mut self, v: u32) {
        self.mix(u64::from(v));
    }
    #[inline]
    fn write_u64(&mut self, v: u64) {
        self.mix(v);
    }
    #[inline]
    fn write_u128(&mut self, v: u128) {
        self.mix(v as u64);
        self.mix((v >> 64) as u64);
    }
    #[inline]
    fn write_usize(&mut self, v: usize) {
        self.mix(v as u64);
    }
}

fn random_seed() -> u64 {
    // std's RandomState is seeded from the OS once per process and perturbed per instance.
    std::collections::hash_map::RandomState::new().hash_one(0x0069_7374_686d_7573_u64)
}

/// The stateful flow table and the punt queue; see the module documentation.
#[derive(Debug)]
pub struct FlowTable {
    cfg: FlowConfig,
    map: Maps,
    slots: Vec<Option<Entry>>,
    free: Vec<u32>,
    live: usize,
    sweep_at: usize,
    punts: VecDeque<PuntRequest>,
    /// The rule names of plugin decisions, by slot (cold: kept out of the entries).
    punt_rules: HashMap<u32, Arc<str>>,
    counters: FlowCounters,
}

impl std::fmt::Debug for Seeded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Seeded(..)")
    }
}

impl FlowTable {
    /// An empty table.
    pub fn new(cfg: FlowConfig) -> FlowTable {
        FlowTable {
            // Grown on demand: a table sized for its capacity up front would spread a few live
            // flows over megabytes and miss the cache on every lookup.
            map: {
                let seed = Seeded(random_seed());
                Maps { v4: HashMap::with_hasher(seed), v6: HashMap::with_hasher(seed) }
            },
            slots: Vec::new(),
            free: Vec::new(),
            live: 0,
            sweep_at: 0,
            punts: VecDeque::new(),
            punt_rules: HashMap::new(),
            counters: FlowCounters::default(),
            cfg,
        }
    }

    /// Counters so far.
    pub fn counters(&self) -> FlowCounters {
        self.counters
    }

    /// Number of flows tracked.
    pub fn len(&self) -> usize {
        self.live
    }

    /// True when no flow is tracked.
    pub fn is_empty(&self) -> bool {
        self.live == 0
    }

    /// The verdict for one packet seen on `att` going `direction`, at time `now` (ms).
    #[inline]
    pub fn process(
        &mut self,
        table: &SgTable,
        att: AttachmentId,
        direction: Direction,
        key: &FlowKey,
        now: u64,
    ) -> PacketVerdict {
        let fk = Fk::new(att, key);
        let found = match &fk {
            Fk::V4(k) => self.map.v4.get(k).copied(),
            Fk::V6(k) => self.map.v6.get(k).copied(),
        };
        if let Some(v) = found {
            let slot = (v >> 1) as usize;
            let reply = v & 1 == 1;
            if let Some(e) = self.slots.get_mut(slot).and_then(Option::as_mut)
                && e.generation == table.generation()
                && now < e.expires
                && let Some(nacl) = e.nacl[usize::from(reply)]
            {
                if let (Action::Allow, State::Allowed { direction, rule }) = (nacl.action, e.state)
                {
                    self.counters.hits += 1;
                    e.expires = now.saturating_add(e.idle);
                    return PacketVerdict {
                        outcome: Outcome::Allow,
                        reason: Reason::Established { direction, rule },
                    };
                }
                if nacl.action != Action::Allow {
                    self.counters.hits += 1;
                    return PacketVerdict {
                        outcome: Outcome::Deny,
                        reason: Reason::Rule {
                            kind: ChainKind::NetworkAcl,
                            direction: if reply { e.direction.reversed() } else { e.direction },
                            rule: nacl.rule,
                        },
                    };
                }
                if !matches!(e.state, State::Pending { .. }) {
                    self.counters.hits += 1;
                    e.expires = now.saturating_add(e.idle);
                    return verdict_of(e, &self.punt_rules, slot);
                }
            }
            return self.slow_known(table, slot, reply, now);
        }
        self.counters.misses += 1;
        self.new_flow(table, att, direction, key, fk, now)
    }

    /// A known flow whose cached verdict cannot be used as is: expired, older generation, first
    /// reply (its network ACL not evaluated yet) or pending.
    #[cold]
    #[inline(never)]
    fn slow_known(&mut self, table: &SgTable, slot: usize, reply: bool, now: u64) -> PacketVerdict {
        self.counters.misses += 1;
        let Some(e) = self.slots[slot].clone() else {
            // Unreachable by construction (the map only points at live slots); be safe.
            return PacketVerdict { outcome: Outcome::Deny, reason: Reason::TableFull };
        };
        if now >= e.expires && !matches!(e.state, State::Pending { .. }) {
            self.remove(slot);
            self.counters.expired += 1;
            let (att, dir, key) = if reply {
                (e.attachment, e.direction.reversed(), e.key.reversed())
            } else {
                (e.attachment, e.direction, e.key)
            };
            let fk = Fk::new(att, &key);
            return self.new_flow(table, att, dir, &key, fk, now);
        }
        if let State::Pending { since } = e.state {
            if now.saturating_sub(since) >= self.cfg.punt_timeout_ms {
                self.counters.punt_timeouts += 1;
                let allow = self.cfg.punt_default == Action::Allow;
                let idle = if allow { self.idle_of(e.key.proto) } else { self.cfg.punt_deny_ms };
                if let Some(x) = self.slots[slot].as_mut() {
                    x.state = State::PuntDefault { allow, reason_full: false };
                    x.idle = idle;
                    x.expires = now.saturating_add(idle);
                }
            } else {
                return PacketVerdict { outcome: Outcome::Pending, reason: Reason::PuntPending };
            }
        }
        if e.generation != table.generation() {
            self.counters.revalidated += 1;
            // Re-classify as if the flow's first packet came now, under the new table.
            let sg = table.evaluate(e.attachment, ChainKind::SecurityGroup, e.direction, &e.key);
            let keep = match (&e.state, sg.action) {
                (State::Allowed { .. }, Action::Allow) => true,
                // A plugin's decision stands while the rule still punts.
                (State::Punted { .. } | State::PuntDefault { .. }, Action::Punt) => true,
                _ => false,
            };
            if !keep {
                self.remove(slot);
                let (att, dir, key) = if reply {
                    (e.attachment, e.direction.reversed(), e.key.reversed())
                } else {
                    (e.attachment, e.direction, e.key)
                };
                let fk = Fk::new(att, &key);
                return self.new_flow(table, att, dir, &key, fk, now);
            }
            if let Some(x) = self.slots[slot].as_mut() {
                x.generation = table.generation();
                x.nacl = [None, None];
                if let (State::Allowed { .. }, RuleRef::Rule(_) | RuleRef::Default) =
                    (&x.state, sg.rule)
                {
                    x.state = State::Allowed { direction: x.direction, rule: sg.rule };
                }
            }
        }
        let Some(x) = self.slots[slot].as_mut() else {
            return PacketVerdict { outcome: Outcome::Deny, reason: Reason::TableFull };
        };
        let (dir, key) =
            if reply { (x.direction.reversed(), x.key.reversed()) } else { (x.direction, x.key) };
        let nacl = match x.nacl[usize::from(reply)] {
            Some(v) => v,
            None => {
                let v = table.evaluate(x.attachment, ChainKind::NetworkAcl, dir, &key);
                x.nacl[usize::from(reply)] = Some(v);
                v
            }
        };
        if nacl.action != Action::Allow {
            return PacketVerdict {
                outcome: Outcome::Deny,
                reason: Reason::Rule {
                    kind: ChainKind::NetworkAcl,
                    direction: dir,
                    rule: nacl.rule,
                },
            };
        }
        x.expires = now.saturating_add(x.idle);
        verdict_of(x, &self.punt_rules, slot)
    }

    #[inline(never)]
    fn new_flow(
        &mut self,
        table: &SgTable,
        att: AttachmentId,
        direction: Direction,
        key: &FlowKey,
        fk: Fk,
        now: u64,
    ) -> PacketVerdict {
        let nacl = table.evaluate(att, ChainKind::NetworkAcl, direction, key);
        if nacl.action != Action::Allow {
            return PacketVerdict {
                outcome: Outcome::Deny,
                reason: Reason::Rule { kind: ChainKind::NetworkAcl, direction, rule: nacl.rule },
            };
        }
        let sg = table.evaluate(att, ChainKind::SecurityGroup, direction, key);
        let state = match sg.action {
            Action::Deny => {
                return PacketVerdict {
                    outcome: Outcome::Deny,
                    reason: Reason::Rule {
                        kind: ChainKind::SecurityGroup,
                        direction,
                        rule: sg.rule,
                    },
                };
            }
            Action::Allow => State::Allowed { direction, rule: sg.rule },
            Action::Punt => {
                if self.punts.len() >= self.cfg.punt_queue {
                    self.counters.punt_queue_full += 1;
                    State::PuntDefault {
                        allow: self.cfg.punt_default == Action::Allow,
                        reason_full: true,
                    }
                } else {
                    State::Pending { since: now }
                }
            }
        };
        if self.live >= self.cfg.capacity {
            self.sweep(now, 64);
            if self.live >= self.cfg.capacity {
                self.counters.table_full_drops += 1;
                return PacketVerdict { outcome: Outcome::Deny, reason: Reason::TableFull };
            }
        }
        let idle = match &state {
            State::PuntDefault { allow: false, .. } => self.cfg.punt_deny_ms,
            _ => self.idle_of(key.proto),
        };
        if matches!(state, State::Pending { .. }) {
            self.counters.punted += 1;
            self.punts.push_back(PuntRequest {
                attachment: att,
                direction,
                key: *key,
                rule: sg.rule,
                generation: table.generation(),
            });
        }
        let entry = Entry {
            attachment: att,
            key: *key,
            direction,
            generation: table.generation(),
            expires: now.saturating_add(idle),
            idle,
            state,
            nacl: [Some(nacl), None],
        };
        let slot = match self.free.pop() {
            Some(s) => {
                self.slots[s as usize] = Some(entry);
                s
            }
            None => {
                self.slots.push(Some(entry));
                (self.slots.len() - 1) as u32
            }
        };
        self.live += 1;
        self.counters.created += 1;
        self.map.insert(fk, slot << 1);
        let rk = Fk::new(att, &key.reversed());
        if rk != fk {
            self.map.insert(rk, slot << 1 | 1);
        }
        match &self.slots[slot as usize] {
            Some(e) => verdict_of(e, &self.punt_rules, slot as usize),
            None => PacketVerdict { outcome: Outcome::Deny, reason: Reason::TableFull },
        }
    }

    fn idle_of(&self, proto: u8) -> u64 {
        match proto {
            6 => self.cfg.tcp_timeout_ms,
            17 => self.cfg.udp_timeout_ms,
            1 | 58 => self.cfg.icmp_timeout_ms,
            _ => self.cfg.other_timeout_ms,
        }
    }

    fn remove(&mut self, slot: usize) {
        self.punt_rules.remove(&(slot as u32));
        if let Some(e) = self.slots[slot].take() {
            self.map.remove(&Fk::new(e.attachment, &e.key));
            self.map.remove(&Fk::new(e.attachment, &e.key.reversed()));
            self.free.push(slot as u32);
            self.live -= 1;
        }
    }

    /// Removes up to `budget` slots' worth of expired flows (bounded work: call it periodically
    /// from the packet thread). Returns how many were removed.
    pub fn sweep(&mut self, now: u64, budget: usize) -> usize {
        let mut removed = 0;
        let n = self.slots.len();
        for _ in 0..budget.min(n) {
            self.sweep_at = (self.sweep_at + 1) % n;
            let expired = match &self.slots[self.sweep_at] {
                Some(e) => now >= e.expires && !matches!(e.state, State::Pending { .. }),
                None => false,
            };
            if expired {
                self.remove(self.sweep_at);
                self.counters.expired += 1;
                removed += 1;
            }
        }
        removed
    }

    /// Takes up to `max` queued punt requests, for the control plane to pass to the plugin's
    /// `decide` in one batch.
    pub fn take_punts(&mut self, max: usize) -> Vec<PuntRequest> {
        let n = max.min(self.punts.len());
        self.punts.drain(..n).collect()
    }

    /// Applies the plugin's decision for a punted flow. Returns false when the flow is no longer
    /// waiting (it timed out, expired, or was never punted).
    pub fn resolve(&mut self, req: &PuntRequest, allow: bool, rule: &str, now: u64) -> bool {
        let Some(v) = self.map.get(&Fk::new(req.attachment, &req.key)) else {
            return false;
        };
        let slot = (v >> 1) as usize;
        let idle = if allow { self.idle_of(req.key.proto) } else { self.cfg.punt_deny_ms };
        match self.slots[slot].as_mut() {
            Some(e) if matches!(e.state, State::Pending { .. }) && e.key == req.key => {
                e.state = State::Punted { allow };
                self.punt_rules.insert(slot as u32, rule.into());
                e.idle = idle;
                e.expires = now.saturating_add(idle);
                true
            }
            _ => false,
        }
    }
}

fn verdict_of(e: &Entry, punt_rules: &HashMap<u32, Arc<str>>, slot: usize) -> PacketVerdict {
    match &e.state {
        State::Allowed { direction, rule } => PacketVerdict {
            outcome: Outcome::Allow,
            reason: Reason::Established { direction: *direction, rule: *rule },
        },
        State::Punted { allow } => PacketVerdict {
            outcome: if *allow { Outcome::Allow } else { Outcome::Deny },
            reason: Reason::Punt(
                punt_rules.get(&(slot as u32)).cloned().unwrap_or_else(|| "punt".into()),
            ),
        },
        State::PuntDefault { allow, reason_full } => PacketVerdict {
            outcome: if *allow { Outcome::Allow } else { Outcome::Deny },
            reason: if *reason_full { Reason::PuntQueueFull } else { Reason::PuntTimeout },
        },
        State::Pending { .. } => {
            PacketVerdict { outcome: Outcome::Pending, reason: Reason::PuntPending }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sg::{ChainSpec, Rule};
    use crate::types::{PortRange, Prefix};

    fn p(s: &str) -> Prefix {
        s.parse().unwrap()
    }

    fn key(src: &str, dst: &str, proto: u8, sp: u16, dp: u16) -> FlowKey {
        FlowKey {
            src: src.parse().unwrap(),
            dst: dst.parse().unwrap(),
            proto,
            src_port: sp,
            dst_port: dp,
        }
    }

    fn chain(kind: ChainKind, dir: Direction, rules: Vec<Rule>, default: Action) -> ChainSpec {
        ChainSpec {
            attachment: "lan0".into(),
            kind,
            direction: dir,
            rules,
            default_action: default,
            default_rule: format!("{kind:?}-{dir:?}-default"),
        }
    }

    fn allow(id: &str, dst: &str, proto: u8, port: u16, action: Action) -> Rule {
        Rule {
            src: p("0.0.0.0/0"),
            dst: p(dst),
            proto: Some(proto),
            src_ports: PortRange::ANY,
            dst_ports: PortRange::single(port),
            action,
            id: id.into(),
        }
    }

    /// Cloud defaults: inbound denied unless a rule allows, outbound allowed.
    fn web_table(generation: u64, https: bool) -> SgTable {
        let mut rules = vec![allow("ssh-punt", "192.168.1.0/24", 6, 22, Action::Punt)];
        if https {
            rules.push(allow("https", "192.168.1.0/24", 6, 443, Action::Allow));
        }
        SgTable::build(
            generation,
            &[
                chain(ChainKind::SecurityGroup, Direction::Inbound, rules, Action::Deny),
                chain(ChainKind::SecurityGroup, Direction::Outbound, vec![], Action::Allow),
            ],
        )
        .unwrap()
    }

    const LAN: &str = "lan0";

    #[test]
    fn return_traffic_of_an_allowed_flow_passes_and_unsolicited_is_denied() {
        let t = web_table(1, true);
        let lan = AttachmentId::of(LAN);
        let mut ft = FlowTable::new(FlowConfig::default());
        // A LAN host opens a connection out: allowed by the outbound default.
        let out = key("192.168.1.5", "203.0.113.9", 6, 40000, 8080);
        let v = ft.process(&t, lan, Direction::Outbound, &out, 0);
        assert_eq!(v.outcome, Outcome::Allow);
        assert_eq!(
            v.reason,
            Reason::Established { direction: Direction::Outbound, rule: RuleRef::Default }
        );
        // The reply comes in: inbound rules would deny it, the flow lets it through.
        let back = ft.process(&t, lan, Direction::Inbound, &out.reversed(), 10);
        assert_eq!(back.outcome, Outcome::Allow);
        // Unsolicited inbound on the same port: denied by the inbound default, named.
        let other = key("203.0.113.9", "192.168.1.5", 6, 8080, 40001);
        let v = ft.process(&t, lan, Direction::Inbound, &other, 10);
        assert_eq!(v.outcome, Outcome::Deny);
        let Reason::Rule { kind, direction, rule } = v.reason else { panic!("{v:?}") };
        assert_eq!(t.rule_name(lan, kind, direction, rule), "SecurityGroup-Inbound-default");
        assert_eq!(ft.len(), 1);
        assert_eq!(ft.counters().created, 1);
    }

    #[test]
    fn flows_expire_by_protocol_timeout() {
        let t = web_table(1, true);
        let lan = AttachmentId::of(LAN);
        let cfg = FlowConfig { udp_timeout_ms: 1000, ..FlowConfig::default() };
        let mut ft = FlowTable::new(cfg);
        let out = key("192.168.1.5", "203.0.113.9", 17, 5000, 53);
        ft.process(&t, lan, Direction::Outbound, &out, 0);
        assert_eq!(
            ft.process(&t, lan, Direction::Inbound, &out.reversed(), 900).outcome,
            Outcome::Allow
        );
        // Traffic refreshed it at 900: still alive at 1800, gone after 2900.
        assert_eq!(
            ft.process(&t, lan, Direction::Inbound, &out.reversed(), 1800).outcome,
            Outcome::Allow
        );
        let v = ft.process(&t, lan, Direction::Inbound, &out.reversed(), 2900);
        assert_eq!(v.outcome, Outcome::Deny, "a reply after the timeout is unsolicited");
        assert_eq!(ft.counters().expired, 1);
        assert!(ft.is_empty());
        // Sweep removes idle flows without traffic.
        ft.process(&t, lan, Direction::Outbound, &out, 3000);
        assert_eq!(ft.sweep(3500, 100), 0);
        assert_eq!(ft.sweep(4000, 100), 1);
        assert!(ft.is_empty());
    }

    #[test]
    fn a_full_table_drops_new_flows_and_counts_them() {
        let t = web_table(1, true);
        let lan = AttachmentId::of(LAN);
        let mut ft = FlowTable::new(FlowConfig { capacity: 3, ..FlowConfig::default() });
        for i in 0..3 {
            let k = key("192.168.1.5", "203.0.113.9", 6, 1000 + i, 80);
            assert_eq!(ft.process(&t, lan, Direction::Outbound, &k, 0).outcome, Outcome::Allow);
        }
        let k = key("192.168.1.5", "203.0.113.9", 6, 2000, 80);
        let v = ft.process(&t, lan, Direction::Outbound, &k, 0);
        assert_eq!(v, PacketVerdict { outcome: Outcome::Deny, reason: Reason::TableFull });
        assert_eq!(ft.counters().table_full_drops, 1);
        // Established flows keep working.
        let k0 = key("192.168.1.5", "203.0.113.9", 6, 1000, 80);
        assert_eq!(
            ft.process(&t, lan, Direction::Inbound, &k0.reversed(), 1).outcome,
            Outcome::Allow
        );
        // Once flows expire, room is made.
        let later = FlowConfig::default().tcp_timeout_ms + 10;
        assert_eq!(ft.process(&t, lan, Direction::Outbound, &k, later).outcome, Outcome::Allow);
    }

    #[test]
    fn a_new_generation_revalidates_established_flows() {
        let lan = AttachmentId::of(LAN);
        let mut ft = FlowTable::new(FlowConfig::default());
        let t1 = web_table(1, true);
        let inbound = key("203.0.113.9", "192.168.1.5", 6, 50000, 443);
        assert_eq!(ft.process(&t1, lan, Direction::Inbound, &inbound, 0).outcome, Outcome::Allow);
        assert_eq!(
            ft.process(&t1, lan, Direction::Outbound, &inbound.reversed(), 1).outcome,
            Outcome::Allow
        );
        // The https rule is removed: the established flow is cut at its next packet.
        let t2 = web_table(2, false);
        let v = ft.process(&t2, lan, Direction::Outbound, &inbound.reversed(), 2);
        // The reply now looks like a new outbound flow, which the outbound default allows, but
        // the original direction is denied.
        assert_eq!(v.outcome, Outcome::Allow);
        let v = ft.process(
            &t2,
            lan,
            Direction::Inbound,
            &key("203.0.113.9", "192.168.1.5", 6, 50001, 443),
            3,
        );
        assert_eq!(v.outcome, Outcome::Deny);
        assert!(ft.counters().revalidated >= 1);
    }

    #[test]
    fn network_acls_are_stateless_in_both_directions() {
        let lan = AttachmentId::of(LAN);
        let nacl_in = chain(
            ChainKind::NetworkAcl,
            Direction::Inbound,
            vec![allow("in-https", "192.168.1.0/24", 6, 443, Action::Allow)],
            Action::Deny,
        );
        // The outbound ACL forgets the ephemeral ports of replies.
        let nacl_out = chain(ChainKind::NetworkAcl, Direction::Outbound, vec![], Action::Deny);
        let sg_in = chain(
            ChainKind::SecurityGroup,
            Direction::Inbound,
            vec![allow("https", "192.168.1.0/24", 6, 443, Action::Allow)],
            Action::Deny,
        );
        let t = SgTable::build(1, &[nacl_in, nacl_out, sg_in]).unwrap();
        let mut ft = FlowTable::new(FlowConfig::default());
        let k = key("203.0.113.9", "192.168.1.5", 6, 50000, 443);
        assert_eq!(ft.process(&t, lan, Direction::Inbound, &k, 0).outcome, Outcome::Allow);
        let v = ft.process(&t, lan, Direction::Outbound, &k.reversed(), 1);
        assert_eq!(v.outcome, Outcome::Deny, "the outbound ACL applies to replies too");
        assert_eq!(
            v.reason,
            Reason::Rule {
                kind: ChainKind::NetworkAcl,
                direction: Direction::Outbound,
                rule: RuleRef::Default
            }
        );
    }

    #[test]
    fn punted_flows_wait_for_the_plugin_or_get_the_default() {
        let t = web_table(1, true);
        let lan = AttachmentId::of(LAN);
        let mut ft = FlowTable::new(FlowConfig { punt_timeout_ms: 100, ..FlowConfig::default() });
        let a = key("203.0.113.9", "192.168.1.5", 6, 50000, 22);
        let b = key("203.0.113.9", "192.168.1.6", 6, 50000, 22);
        assert_eq!(ft.process(&t, lan, Direction::Inbound, &a, 0).outcome, Outcome::Pending);
        assert_eq!(ft.process(&t, lan, Direction::Inbound, &b, 0).outcome, Outcome::Pending);
        assert_eq!(ft.process(&t, lan, Direction::Inbound, &a, 5).outcome, Outcome::Pending);
        let batch = ft.take_punts(10);
        assert_eq!(batch.len(), 2, "one request per flow, not per packet");
        assert!(ft.resolve(&batch[0], true, "office-hours", 20));
        let v = ft.process(&t, lan, Direction::Inbound, &a, 30);
        assert_eq!(
            v,
            PacketVerdict { outcome: Outcome::Allow, reason: Reason::Punt("office-hours".into()) }
        );
        assert_eq!(
            ft.process(&t, lan, Direction::Outbound, &a.reversed(), 31).outcome,
            Outcome::Allow
        );
        // b is never answered: after the timeout the default (deny) applies and a late answer is
        // refused.
        let v = ft.process(&t, lan, Direction::Inbound, &b, 150);
        assert_eq!(v, PacketVerdict { outcome: Outcome::Deny, reason: Reason::PuntTimeout });
        assert!(!ft.resolve(&batch[1], true, "late", 160));
        assert_eq!(ft.counters().punt_timeouts, 1);
    }

    #[test]
    fn a_cache_hit_reads_one_cache_line() {
        assert_eq!(std::mem::offset_of!(Entry, direction), 64);
        assert_eq!(std::mem::align_of::<Entry>(), 64);
        assert_eq!(std::mem::size_of::<Entry>(), 128);
    }

    #[test]
    fn ipv6_flows_work_like_ipv4() {
        let lan = AttachmentId::of(LAN);
        let sg_in = chain(ChainKind::SecurityGroup, Direction::Inbound, vec![], Action::Deny);
        let t = SgTable::build(1, &[sg_in]).unwrap();
        let mut ft = FlowTable::new(FlowConfig::default());
        let out = key("2001:db8:1::5", "2001:db8:2::9", 17, 5353, 53);
        assert_eq!(ft.process(&t, lan, Direction::Outbound, &out, 0).outcome, Outcome::Allow);
        assert_eq!(
            ft.process(&t, lan, Direction::Inbound, &out.reversed(), 1).outcome,
            Outcome::Allow
        );
        let other = key("2001:db8:2::9", "2001:db8:1::5", 17, 53, 5354);
        assert_eq!(ft.process(&t, lan, Direction::Inbound, &other, 1).outcome, Outcome::Deny);
    }
}

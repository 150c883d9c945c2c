//! Security groups and network ACLs on the packet path.
//!
//! The control plane publishes a compiled [`SgTable`] (see `isthmus_tables::sg`) with
//! [`crate::Dataplane::publish_sg`]; the workers evaluate it through a flow table
//! (`isthmus_tables::flow`) that makes security groups stateful.
//!
//! # Attachments and directions
//!
//! A chain is bound to an *attachment* by name. The dataplane evaluates, for each packet that
//! crosses it:
//!
//! - the **tunnel** attachment, named exactly as the tunnel in the SPD's `Protect` action (and in
//!   the inbound SA's binding);
//! - a **LAN** attachment, when [`crate::Dataplane::publish_lans`] bound the packet's LAN-side
//!   address (source going out, destination coming in) to a LAN name: the longest prefix wins.
//!
//! Directions are relative to the attachment's protected side, as the `security-group` plugin
//! compiles them: a packet from the LAN into a tunnel is [`Direction::Outbound`] (after the SPD
//! chose the tunnel, before the SA is looked up: denied traffic never triggers an acquire); a
//! decrypted packet from a tunnel to the LAN is [`Direction::Inbound`] (after the SA's selector
//! check). For each attachment the network ACL of that direction is evaluated first
//! (stateless), then the security group (stateful: an allowed flow's replies pass it without
//! evaluation).
//!
//! # Defaults
//!
//! An empty table, or an attachment without a chain of a kind and direction, **allows**: a
//! gateway without security groups forwards what its SPD protects, and costs nothing here (the
//! flow table is skipped while no attachment the packet crosses has a chain).
//!
//! # State
//!
//! Flows are tracked in a table sharded by a hash that is symmetric in the two endpoints, so a
//! flow and its reply always land in the same shard whichever worker sees them; each shard has
//! its own lock (no global lock on the packet path). ICMP echo requests and replies (RFC 792, RFC 4443
//! §4) are keyed with their counterpart's type in the code field so that they pair
//! ([`state_key`]). Entries of an older table generation are re-evaluated on their next packet.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use isthmus_tables::flow::{
    FlowConfig, FlowCounters, FlowTable, Outcome, PacketVerdict, PuntRequest, Reason,
};
use isthmus_tables::sg::{Action, AttachmentId, ChainKind, Direction, RuleRef, SgTable};
use isthmus_tables::{FlowKey, Prefix};

use crate::counters::{Drop, DropCounts};

/// Most rules whose drops are counted by name; beyond, the rule with the fewest drops is evicted
/// (its count moves to [`Counters`](crate::Counters)'s `rule_drops_evicted`).
pub const MAX_RULE_DROPS: usize = 256;

/// A LAN: the prefix of its hosts and the attachment name its security groups and network ACLs
/// are bound to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LanBinding {
    /// Addresses of the LAN's hosts.
    pub prefix: Prefix,
    /// The LAN's attachment name.
    pub name: String,
}

/// What the workers read: the table and the LANs, swapped together.
#[derive(Debug)]
pub(crate) struct SgState {
    pub(crate) table: Arc<SgTable>,
    /// Longest prefix first.
    lans: Vec<(Prefix, AttachmentId)>,
    /// False when the table binds nothing: the filter is skipped.
    active: bool,
}

impl SgState {
    pub(crate) fn new(table: Arc<SgTable>, lans: &[LanBinding]) -> SgState {
        let mut l: Vec<(Prefix, AttachmentId)> =
            lans.iter().map(|b| (b.prefix, AttachmentId::of(&b.name))).collect();
        l.sort_by_key(|(p, _)| std::cmp::Reverse(p.len()));
        let active = table.attachments().next().is_some();
        SgState { table, lans: l, active }
    }

    /// The LAN attachment of a LAN-side address, if it is bound and has a chain.
    fn lan_of(&self, addr: IpAddr) -> Option<AttachmentId> {
        let (_, att) = self.lans.iter().find(|(p, _)| p.contains(addr))?;
        self.table.attachment_name(*att).map(|_| *att)
    }
}

/// Drops decided by one security-group or network-ACL rule (or chain default).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct RuleDrop {
    /// The attachment (tunnel or LAN name).
    pub attachment: String,
    /// Security group or network ACL.
    pub kind: ChainKind,
    /// The chain's direction.
    pub direction: Direction,
    /// The rule's identifier as compiled (`sg:web/3`, `acl:lan/default-deny`).
    pub rule: String,
    /// Packets it dropped.
    pub packets: u64,
}

/// Counted during one batch by one worker: drops by reason (the worker's own included, added
/// to the shared counters with them) and by rule (resolved and added by [`Filter::flush`]).
#[derive(Default)]
pub(crate) struct LocalDrops {
    pub(crate) counts: DropCounts,
    rules: Vec<(AttachmentId, ChainKind, Direction, RuleRef, u64)>,
}

/// The rules' drop counts by name, bounded.
#[derive(Default)]
struct RuleDrops {
    map: HashMap<(String, ChainKind, Direction, String), u64>,
    evicted: u64,
}

/// The sharded flow table and the filter's counters.
pub(crate) struct Filter {
    shards: Box<[Mutex<FlowTable>]>,
    seed: u64,
    epoch: Instant,
    rules: Mutex<RuleDrops>,
}

impl Filter {
    pub(crate) fn new(cfg: &FlowConfig, shards: usize) -> Filter {
        let n = shards.clamp(1, 1024).next_power_of_two();
        let per = FlowConfig { capacity: cfg.capacity.div_ceil(n).max(1), ..cfg.clone() };
        let seed = std::collections::hash_map::RandomState::new().hash_one(0x5367_u64);
        Filter {
            shards: (0..n).map(|_| Mutex::new(FlowTable::new(per.clone()))).collect(),
            seed,
            epoch: Instant::now(),
            rules: Mutex::new(RuleDrops::default()),
        }
    }

    /// Milliseconds since the dataplane started: the flow table's clock.
    pub(crate) fn now_ms(&self, now: Instant) -> u64 {
        u64::try_from(now.saturating_duration_since(self.epoch).as_millis()).unwrap_or(u64::MAX)
    }

    fn shard(&self, att: AttachmentId, key: &FlowKey) -> MutexGuard<'_, FlowTable> {
        // Symmetric in the endpoints (XOR), so a flow and its reply share a shard; one seeded
        // multiply-fold, as the flow table's own hash (a skewed spread only costs contention).
        let a = addr_bits(key.src) ^ addr_bits(key.dst);
        let p = u64::from(key.src_port ^ key.dst_port) << 8 | u64::from(key.proto);
        let x = (a as u64) ^ ((a >> 64) as u64).rotate_left(23) ^ p.rotate_left(47) ^ att.0;
        let m = u128::from(x ^ self.seed).wrapping_mul(0x9e37_79b9_7f4a_7c15_d1b5_4a32_d192_ed03);
        let h = (m as u64) ^ ((m >> 64) as u64);
        let i = (h as usize) & (self.shards.len() - 1);
        self.shards[i].lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Filters one packet crossing `tunnel` in `direction`. True when it may pass; a drop is
    /// counted in `local`.
    #[inline]
    pub(crate) fn check(
        &self,
        st: &SgState,
        tunnel: AttachmentId,
        direction: Direction,
        key: &FlowKey,
        now: Instant,
        local: &mut LocalDrops,
    ) -> bool {
        if !st.active {
            return true;
        }
        let lan_addr = match direction {
            Direction::Outbound => key.src,
            Direction::Inbound => key.dst,
        };
        let lan = st.lan_of(lan_addr);
        let tun = st.table.attachment_name(tunnel).map(|_| tunnel);
        if lan.is_none() && tun.is_none() {
            return true;
        }
        let key = state_key(key);
        let now = self.now_ms(now);
        for att in [tun, lan].into_iter().flatten() {
            let v = self.shard(att, &key).process(&st.table, att, direction, &key, now);
            if v.outcome != Outcome::Allow {
                local.count(att, direction, &v);
                return false;
            }
        }
        true
    }

    /// Adds a worker's batch of drops by rule (its counts by reason are the worker's to add);
    /// rule names are resolved against `st`, the table the batch was evaluated with.
    pub(crate) fn flush(&self, st: &SgState, local: &mut LocalDrops) {
        if !local.rules.is_empty() {
            let mut r = self.rules.lock().unwrap_or_else(|p| p.into_inner());
            for (att, kind, dir, rule, n) in local.rules.drain(..) {
                let name = st.table.attachment_name(att).unwrap_or("?").to_owned();
                let rule = st.table.rule_name(att, kind, dir, rule).to_owned();
                r.add((name, kind, dir, rule), n);
            }
        }
    }

    /// The rule counts (most drops first) and how many drops were evicted from the rule map.
    pub(crate) fn read(&self) -> (Vec<RuleDrop>, u64) {
        let r = self.rules.lock().unwrap_or_else(|p| p.into_inner());
        let mut v: Vec<RuleDrop> = r
            .map
            .iter()
            .map(|((att, kind, dir, rule), n)| RuleDrop {
                attachment: att.clone(),
                kind: *kind,
                direction: *dir,
                rule: rule.clone(),
                packets: *n,
            })
            .collect();
        v.sort_by(|a, b| {
            b.packets
                .cmp(&a.packets)
                .then_with(|| (&a.attachment, &a.rule).cmp(&(&b.attachment, &b.rule)))
        });
        (v, r.evicted)
    }

    /// Flow-table counters summed over the shards, and the number of live flows.
    pub(crate) fn flow_counters(&self) -> (FlowCounters, u64) {
        let mut c = FlowCounters::default();
        let mut live = 0u64;
        for s in self.shards.iter() {
            let t = s.lock().unwrap_or_else(|p| p.into_inner());
            let x = t.counters();
            live += t.len() as u64;
            c.hits += x.hits;
            c.misses += x.misses;
            c.created += x.created;
            c.expired += x.expired;
            c.table_full_drops += x.table_full_drops;
            c.punted += x.punted;
            c.punt_timeouts += x.punt_timeouts;
            c.punt_queue_full += x.punt_queue_full;
            c.revalidated += x.revalidated;
        }
        (c, live)
    }

    /// Removes expired flows, a bounded amount of work per shard (housekeeping thread).
    pub(crate) fn sweep(&self, now: Instant) {
        let now = self.now_ms(now);
        for s in self.shards.iter() {
            s.lock().unwrap_or_else(|p| p.into_inner()).sweep(now, 256);
        }
    }

    /// Takes up to `max` punt requests from every shard.
    pub(crate) fn take_punts(&self, max: usize) -> Vec<PuntRequest> {
        let mut out = Vec::new();
        for s in self.shards.iter() {
            if out.len() >= max {
                break;
            }
            let mut t = s.lock().unwrap_or_else(|p| p.into_inner());
            out.extend(t.take_punts(max - out.len()));
        }
        out
    }

    /// Applies a plugin decision to a punted flow.
    pub(crate) fn resolve(&self, req: &PuntRequest, allow: bool, rule: &str, now: Instant) -> bool {
        let now = self.now_ms(now);
        self.shard(req.attachment, &req.key).resolve(req, allow, rule, now)
    }
}

impl LocalDrops {
    #[cold]
    fn count(&mut self, att: AttachmentId, direction: Direction, v: &PacketVerdict) {
        match &v.reason {
            Reason::Rule { kind, direction: d, rule } => {
                self.counts[Drop::of_chain(*kind, direction)] += 1;
                let k = (att, *kind, *d, *rule);
                match self.rules.iter_mut().find(|r| (r.0, r.1, r.2, r.3) == k) {
                    Some(r) => r.4 += 1,
                    None => self.rules.push((att, *kind, *d, *rule, 1)),
                }
            }
            Reason::TableFull => self.counts[Drop::FlowTableFull] += 1,
            Reason::PuntPending => self.counts[Drop::PuntPending] += 1,
            // A plugin's or a default punt verdict: counted as the security group's.
            Reason::Punt(_)
            | Reason::PuntTimeout
            | Reason::PuntQueueFull
            | Reason::Established { .. } => {
                self.counts[Drop::of_chain(ChainKind::SecurityGroup, direction)] += 1
            }
        }
    }
}

impl RuleDrops {
    fn add(&mut self, k: (String, ChainKind, Direction, String), n: u64) {
        if let Some(c) = self.map.get_mut(&k) {
            *c += n;
            return;
        }
        if self.map.len() >= MAX_RULE_DROPS {
            // Keep the top rules: the one with the fewest drops makes room.
            if let Some(min) = self.map.iter().min_by_key(|(_, c)| **c).map(|(k, _)| k.clone())
                && let Some(c) = self.map.remove(&min)
            {
                self.evicted += c;
            }
        }
        self.map.insert(k, n);
    }
}

fn addr_bits(a: IpAddr) -> u128 {
    match a {
        IpAddr::V4(a) => u128::from(u32::from(a)),
        IpAddr::V6(a) => u128::from(a),
    }
}

/// The workers' filter as a standalone object (one table, the sharded flow table, drop counts):
/// what the benchmarks measure, and a way to replay flows through the packet path's exact
/// evaluation outside a running dataplane.
pub struct PacketFilter {
    filter: Filter,
    state: SgState,
    drops: LocalDrops,
}

impl PacketFilter {
    /// A filter over `table` and `lans`, with a flow table of `cfg` in `shards` shards.
    pub fn new(table: SgTable, lans: &[LanBinding], cfg: &FlowConfig, shards: usize) -> Self {
        PacketFilter {
            filter: Filter::new(cfg, shards),
            state: SgState::new(Arc::new(table), lans),
            drops: LocalDrops::default(),
        }
    }

    /// True when a packet of `key` crossing `tunnel` in `direction` at `now` passes, exactly as
    /// a worker decides it (flow state updated).
    #[inline]
    pub fn check(
        &mut self,
        tunnel: AttachmentId,
        direction: Direction,
        key: &FlowKey,
        now: Instant,
    ) -> bool {
        self.filter.check(&self.state, tunnel, direction, key, now, &mut self.drops)
    }

    /// The drops so far by reason, and by rule.
    pub fn drops(&mut self) -> (DropCounts, Vec<RuleDrop>) {
        self.filter.flush(&self.state, &mut self.drops);
        (self.drops.counts, self.filter.read().0)
    }

    /// The flow table's counters, summed over the shards, and its live flows.
    pub fn flows(&self) -> (FlowCounters, u64) {
        self.filter.flow_counters()
    }
}

impl std::fmt::Debug for PacketFilter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PacketFilter")
            .field("generation", &self.state.table.generation())
            .field("shards", &self.filter.shards.len())
            .finish_non_exhaustive()
    }
}

/// One chain's answer in a [`trace`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChainVerdict {
    /// The attachment (tunnel or LAN name).
    pub attachment: String,
    /// Security group or network ACL.
    pub kind: ChainKind,
    /// The direction the chain filters.
    pub direction: Direction,
    /// What it does with the packet; `None` for a reply that passes a security group as return
    /// traffic of the allowed flow (not evaluated, as the flow table does).
    pub action: Option<Action>,
    /// The rule that decided (`established` for return traffic).
    pub rule: String,
}

/// What the workers would do with a new flow crossing `tunnel` in `direction`, and with its
/// reply, under `table` and `lans`: every bound chain in evaluation order, stopping at the first
/// that does not allow. This is the dataplane's own evaluation (same tables, same order, same
/// [`state_key`]), for the path tracer; it changes no state. `reply` is empty when the forward
/// packet is refused.
pub fn trace(
    table: &SgTable,
    lans: &[LanBinding],
    tunnel: &str,
    direction: Direction,
    key: &FlowKey,
) -> (Vec<ChainVerdict>, Vec<ChainVerdict>) {
    let st = SgState::new(Arc::new(SgTable::empty(0)), lans);
    let lan_addr = |d: Direction, k: &FlowKey| match d {
        Direction::Outbound => k.src,
        Direction::Inbound => k.dst,
    };
    let lan_name = |addr: IpAddr| {
        st.lans
            .iter()
            .find(|(p, _)| p.contains(addr))
            .and_then(|(_, att)| table.attachment_name(*att).map(str::to_owned))
    };
    let key = state_key(key);
    let atts: Vec<String> = [
        table.attachment_name(AttachmentId::of(tunnel)).map(str::to_owned),
        lan_name(lan_addr(direction, &key)),
    ]
    .into_iter()
    .flatten()
    .collect();
    let mut fwd = Vec::new();
    let chain_verdict = |att: &str, kind: ChainKind, dir: Direction, k: &FlowKey| {
        let id = AttachmentId::of(att);
        table.chain(id, kind, dir).map(|c| {
            let v = c.evaluate(k);
            ChainVerdict {
                attachment: att.to_owned(),
                kind,
                direction: dir,
                action: Some(v.action),
                rule: c.rule_name(v.rule).to_owned(),
            }
        })
    };
    for att in &atts {
        for kind in [ChainKind::NetworkAcl, ChainKind::SecurityGroup] {
            if let Some(v) = chain_verdict(att, kind, direction, &key) {
                let pass = v.action == Some(Action::Allow);
                fwd.push(v);
                if !pass {
                    return (fwd, Vec::new());
                }
            }
        }
    }
    let mut reply = Vec::new();
    let (rdir, rkey) = (direction.reversed(), key.reversed());
    for att in &atts {
        if let Some(v) = chain_verdict(att, ChainKind::NetworkAcl, rdir, &rkey) {
            let pass = v.action == Some(Action::Allow);
            reply.push(v);
            if !pass {
                return (fwd, reply);
            }
        }
        if table.chain(AttachmentId::of(att), ChainKind::SecurityGroup, direction).is_some()
            || table.chain(AttachmentId::of(att), ChainKind::SecurityGroup, rdir).is_some()
        {
            reply.push(ChainVerdict {
                attachment: att.clone(),
                kind: ChainKind::SecurityGroup,
                direction: rdir,
                action: None,
                rule: "established".into(),
            });
        }
    }
    (fwd, reply)
}

/// The key the flow table tracks a packet under: its flow key, except that an ICMP echo request
/// or reply (ICMP types 8 and 0, RFC 792; ICMPv6 types 128 and 129, RFC 4443 §4) carries its
/// counterpart's type in the code field, so that a reply's key is the reverse of its request's
/// and passes as return traffic. The type (in the source-port field, as security-group rules
/// match it) is kept. The path tracer must use the same key to give the dataplane's answer.
pub fn state_key(key: &FlowKey) -> FlowKey {
    let mut k = *key;
    match (k.proto, k.src_port) {
        (1, 8) => k.dst_port = 0,
        (1, 0) => k.dst_port = 8,
        (58, 128) => k.dst_port = 129,
        (58, 129) => k.dst_port = 128,
        _ => {}
    }
    k
}

#[cfg(test)]
mod tests {
    use super::*;
    use isthmus_tables::PortRange;
    use isthmus_tables::sg::{ChainSpec, Rule};

    fn key(s: &str, d: &str, proto: u8, sp: u16, dp: u16) -> FlowKey {
        FlowKey {
            src: s.parse().unwrap(),
            dst: d.parse().unwrap(),
            proto,
            src_port: sp,
            dst_port: dp,
        }
    }

    #[test]
    fn echo_reply_pairs_with_its_request_rfc792() {
        let req = state_key(&key("10.61.1.2", "10.61.2.2", 1, 8, 0));
        let rep = state_key(&key("10.61.2.2", "10.61.1.2", 1, 0, 0));
        assert_eq!(rep, req.reversed());
        let req6 = state_key(&key("fd61::1", "fd61::2", 58, 128, 0));
        let rep6 = state_key(&key("fd61::2", "fd61::1", 58, 129, 0));
        assert_eq!(rep6, req6.reversed());
        // Other ICMP types are left alone.
        let unreach = key("10.61.2.2", "10.61.1.2", 1, 3, 4);
        assert_eq!(state_key(&unreach), unreach);
    }

    fn rule(id: &str, src: &str, dst: &str, proto: Option<u8>, action: Action) -> Rule {
        Rule {
            src: src.parse().unwrap(),
            dst: dst.parse().unwrap(),
            proto,
            src_ports: PortRange::ANY,
            dst_ports: PortRange::ANY,
            action,
            id: id.into(),
        }
    }

    fn chain(
        att: &str,
        kind: ChainKind,
        dir: Direction,
        rules: Vec<Rule>,
        def: Action,
    ) -> ChainSpec {
        ChainSpec {
            attachment: att.into(),
            kind,
            direction: dir,
            rules,
            default_action: def,
            default_rule: format!("{att}/default"),
        }
    }

    fn state(specs: &[ChainSpec], generation: u64, lans: &[LanBinding]) -> SgState {
        SgState::new(Arc::new(SgTable::build(generation, specs).unwrap()), lans)
    }

    #[test]
    fn stateful_group_admits_replies_and_names_the_denying_rule() {
        let f = Filter::new(&FlowConfig::default(), 4);
        let sg = state(
            &[chain("t1", ChainKind::SecurityGroup, Direction::Inbound, vec![], Action::Deny)],
            1,
            &[],
        );
        let t1 = AttachmentId::of("t1");
        let now = Instant::now();
        let mut d = LocalDrops::default();
        let out = key("10.61.1.2", "10.61.2.2", 6, 40000, 22);
        // Outbound is unbound (allowed); its reply passes the inbound default deny as state.
        assert!(f.check(&sg, t1, Direction::Outbound, &out, now, &mut d));
        assert!(f.check(&sg, t1, Direction::Inbound, &out.reversed(), now, &mut d));
        // The second reply is a cache hit.
        assert!(f.check(&sg, t1, Direction::Inbound, &out.reversed(), now, &mut d));
        // An unsolicited inbound flow is denied by the chain default, named.
        let syn = key("10.61.2.2", "10.61.1.2", 6, 40001, 22);
        assert!(!f.check(&sg, t1, Direction::Inbound, &syn, now, &mut d));
        f.flush(&sg, &mut d);
        let s = d.counts;
        let (rules, evicted) = f.read();
        assert_eq!((s[Drop::SgIn], s[Drop::SgOut], s.total(), evicted), (1, 0, 1, 0));
        assert_eq!(rules.len(), 1);
        assert_eq!(rules[0].attachment, "t1");
        assert_eq!(rules[0].rule, "t1/default");
        assert_eq!(rules[0].packets, 1);
        let (c, live) = f.flow_counters();
        assert_eq!((c.created, c.hits, live), (1, 1, 1));
    }

    #[test]
    fn empty_table_and_unbound_tunnels_allow_without_state() {
        let f = Filter::new(&FlowConfig::default(), 4);
        let mut d = LocalDrops::default();
        let k = key("10.61.2.2", "10.61.1.2", 1, 8, 0);
        let empty = SgState::new(Arc::new(SgTable::empty(0)), &[]);
        let t1 = AttachmentId::of("t1");
        assert!(f.check(&empty, t1, Direction::Inbound, &k, Instant::now(), &mut d));
        let other = state(
            &[chain("t2", ChainKind::SecurityGroup, Direction::Inbound, vec![], Action::Deny)],
            1,
            &[],
        );
        assert!(f.check(&other, t1, Direction::Inbound, &k, Instant::now(), &mut d));
        assert_eq!(f.flow_counters().1, 0);
    }

    #[test]
    fn lan_acl_applies_to_its_hosts_by_longest_prefix() {
        let f = Filter::new(&FlowConfig::default(), 2);
        let lans = [
            LanBinding { prefix: "10.61.0.0/16".parse().unwrap(), name: "campus".into() },
            LanBinding { prefix: "10.61.1.0/24".parse().unwrap(), name: "lab".into() },
        ];
        let no_icmp = rule("acl:lab/1", "0.0.0.0/0", "0.0.0.0/0", Some(1), Action::Deny);
        let sg = state(
            &[chain(
                "lab",
                ChainKind::NetworkAcl,
                Direction::Outbound,
                vec![no_icmp],
                Action::Allow,
            )],
            7,
            &lans,
        );
        let t1 = AttachmentId::of("t1");
        let mut d = LocalDrops::default();
        let now = Instant::now();
        let ping_lab = key("10.61.1.2", "10.62.0.1", 1, 8, 0);
        let ping_campus = key("10.61.5.2", "10.62.0.1", 1, 8, 0);
        assert!(!f.check(&sg, t1, Direction::Outbound, &ping_lab, now, &mut d));
        assert!(f.check(&sg, t1, Direction::Outbound, &ping_campus, now, &mut d));
        // Stateless: the same packet is denied every time, in its own direction only.
        assert!(!f.check(&sg, t1, Direction::Outbound, &ping_lab, now, &mut d));
        assert!(f.check(&sg, t1, Direction::Inbound, &ping_lab.reversed(), now, &mut d));
        f.flush(&sg, &mut d);
        let (rules, _) = f.read();
        assert_eq!(d.counts[Drop::NaclOut], 2);
        assert_eq!((rules[0].attachment.as_str(), rules[0].rule.as_str()), ("lab", "acl:lab/1"));
        assert_eq!(rules[0].packets, 2);
    }

    #[test]
    fn a_new_generation_revokes_established_flows() {
        let f = Filter::new(&FlowConfig::default(), 1);
        let t1 = AttachmentId::of("t1");
        let allow = rule("sg:t1/ssh", "0.0.0.0/0", "0.0.0.0/0", Some(6), Action::Allow);
        let g1 = state(
            &[chain("t1", ChainKind::SecurityGroup, Direction::Inbound, vec![allow], Action::Deny)],
            1,
            &[],
        );
        let g2 = state(
            &[chain("t1", ChainKind::SecurityGroup, Direction::Inbound, vec![], Action::Deny)],
            2,
            &[],
        );
        let k = key("10.61.2.2", "10.61.1.2", 6, 40000, 22);
        let mut d = LocalDrops::default();
        let now = Instant::now();
        assert!(f.check(&g1, t1, Direction::Inbound, &k, now, &mut d));
        assert!(f.check(&g1, t1, Direction::Inbound, &k, now, &mut d));
        assert!(!f.check(&g2, t1, Direction::Inbound, &k, now, &mut d));
        assert_eq!(d.counts[Drop::SgIn], 1);
    }

    #[test]
    fn trace_agrees_with_the_packet_path() {
        let lans = [LanBinding { prefix: "10.61.1.0/24".parse().unwrap(), name: "lab".into() }];
        let specs = [
            chain("t1", ChainKind::SecurityGroup, Direction::Inbound, vec![], Action::Deny),
            chain(
                "lab",
                ChainKind::NetworkAcl,
                Direction::Inbound,
                vec![rule("acl:lab/no-icmp", "0.0.0.0/0", "0.0.0.0/0", Some(1), Action::Deny)],
                Action::Allow,
            ),
        ];
        let table = SgTable::build(3, &specs).unwrap();
        let out = key("10.61.1.2", "10.61.2.2", 6, 40000, 443);
        let (fwd, reply) = trace(&table, &lans, "t1", Direction::Outbound, &out);
        // Outbound: nothing bound in that direction. Reply: the lab ACL inbound allows TCP, the
        // group passes it as established.
        assert!(fwd.is_empty());
        assert_eq!(reply.len(), 2);
        assert_eq!((reply[0].attachment.as_str(), reply[0].rule.as_str()), ("t1", "established"));
        assert_eq!((reply[1].attachment.as_str(), reply[1].rule.as_str()), ("lab", "lab/default"));
        // A new inbound ping is refused by the tunnel's group default, as the workers do.
        let ping = key("10.61.2.2", "10.61.1.2", 1, 8, 0);
        let (fwd, reply) = trace(&table, &lans, "t1", Direction::Inbound, &ping);
        assert_eq!(fwd.len(), 1);
        assert_eq!((fwd[0].action, fwd[0].rule.as_str()), (Some(Action::Deny), "t1/default"));
        assert!(reply.is_empty());
        let f = Filter::new(&FlowConfig::default(), 2);
        let st = SgState::new(Arc::new(table), &lans);
        let mut d = LocalDrops::default();
        let t1 = AttachmentId::of("t1");
        assert!(!f.check(&st, t1, Direction::Inbound, &ping, Instant::now(), &mut d));
        assert!(f.check(&st, t1, Direction::Outbound, &out, Instant::now(), &mut d));
        assert!(f.check(&st, t1, Direction::Inbound, &out.reversed(), Instant::now(), &mut d));
    }

    /// Randomized tables, LAN bindings and flows: the trace's verdicts for a new flow and its
    /// reply are what the packet path decides.
    #[test]
    fn trace_equals_check_on_random_tables() {
        let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
        let mut rnd = move |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        let lans = [
            LanBinding { prefix: "10.61.0.0/16".parse().unwrap(), name: "campus".into() },
            LanBinding { prefix: "10.61.1.0/24".parse().unwrap(), name: "lab".into() },
        ];
        let addr = |r: u64| format!("10.61.{}.{}", r % 4, 1 + r / 4 % 4);
        for round in 0..40u64 {
            let mut specs = Vec::new();
            for att in ["t1", "campus", "lab"] {
                for kind in [ChainKind::NetworkAcl, ChainKind::SecurityGroup] {
                    for dir in [Direction::Inbound, Direction::Outbound] {
                        if rnd(3) == 0 {
                            continue;
                        }
                        let rules = (0..rnd(6))
                            .map(|i| Rule {
                                src: format!("10.61.{}.0/{}", rnd(4), [16, 24][rnd(2) as usize])
                                    .parse::<Prefix>()
                                    .map(|p| Prefix::new(p.addr(), p.len()).unwrap())
                                    .unwrap_or_else(|_| "0.0.0.0/0".parse().unwrap()),
                                dst: "0.0.0.0/0".parse().unwrap(),
                                proto: [None, Some(1), Some(6)][rnd(3) as usize],
                                src_ports: PortRange::ANY,
                                dst_ports: PortRange::ANY,
                                action: [Action::Allow, Action::Deny][rnd(2) as usize],
                                id: format!("{att}/{i}"),
                            })
                            .collect();
                        let def = [Action::Allow, Action::Deny][rnd(2) as usize];
                        specs.push(chain(att, kind, dir, rules, def));
                    }
                }
            }
            let table = Arc::new(SgTable::build(round + 1, &specs).unwrap());
            let st = SgState::new(table.clone(), &lans);
            let f = Filter::new(&FlowConfig::default(), 4);
            let t1 = AttachmentId::of("t1");
            let dir = [Direction::Inbound, Direction::Outbound][rnd(2) as usize];
            let (p, sp, dp) = [(1u8, 8u16, 0u16), (6, 40000, 443)][rnd(2) as usize];
            let k = key(&addr(rnd(16)), &addr(rnd(16)), p, sp, dp);
            let (fwd, reply) = trace(&table, &lans, "t1", dir, &k);
            let mut d = LocalDrops::default();
            let now = Instant::now();
            let passed = f.check(&st, t1, dir, &k, now, &mut d);
            let traced = fwd.iter().all(|v| v.action == Some(Action::Allow));
            assert_eq!(passed, traced, "round {round}: {k:?} {dir:?} {fwd:?}");
            if passed {
                let back = f.check(&st, t1, dir.reversed(), &k.reversed(), now, &mut d);
                let traced = reply.iter().all(|v| v.action != Some(Action::Deny));
                assert_eq!(back, traced, "round {round} reply: {k:?} {dir:?} {reply:?}");
            }
        }
    }

    #[test]
    fn rule_drops_keep_the_top_rules() {
        let mut r = RuleDrops::default();
        for i in 0..MAX_RULE_DROPS as u64 + 10 {
            let k = ("t".into(), ChainKind::SecurityGroup, Direction::Inbound, format!("r{i}"));
            r.add(k, i + 1);
        }
        assert_eq!(r.map.len(), MAX_RULE_DROPS);
        // The ten smallest counts (1..=10) were evicted.
        assert_eq!(r.evicted, (1..=10).sum::<u64>());
        assert!(r.map.keys().all(|k| k.3 != "r0"));
    }
}

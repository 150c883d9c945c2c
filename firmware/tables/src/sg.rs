//! Security groups (stateful, priority-ordered allow/deny) and network ACLs (stateless, in and
//! out) compiled into rule tables.
//!
//! A `security-group` plugin compiles the operator's groups and ACLs into [`ChainSpec`]s: for one
//! attachment (a tunnel or a LAN), one kind and one direction, an ordered rule list evaluated first
//! match wins, then a default. [`SgTable::build`] compiles them into [`Chain`]s whose
//! [`Classifier`] answers in tens of nanoseconds however many rules there are:
//!
//! - each of the five fields (source, destination, protocol, source port, destination port) is
//!   cut into elementary intervals; a packet's value falls into one, found by a bucketed binary
//!   search over a few entries;
//! - each interval carries the set of rules that match it, as a bit vector in rule order; the
//!   first rule that matches a packet is the lowest bit set in all five vectors;
//! - the vectors are stored compressed with an aggregate bitmap (the Aggregated Bit Vector scheme
//!   of Baboescu and Varghese, SIGCOMM 2001): one bit per 64-rule word, set when the word is
//!   non-zero. Intersecting the aggregates first finds the few words worth reading, so a lookup
//!   touches a handful of cache lines, not the whole rule set.
//!
//! Every [`Verdict`] names the rule that decided it ([`RuleRef`]), so the dataplane and the path
//! tracer can explain a drop. Stateful tracking lives in [`crate::flow`].

use std::collections::HashMap;
use std::net::IpAddr;

use crate::types::{FlowKey, PortRange, Prefix};

/// Most rules one chain may hold; bounds memory and build time (and keeps class ids small).
pub const MAX_RULES_PER_CHAIN: usize = 30_000;
/// Most chains one table may hold (attachments × kinds × directions).
pub const MAX_CHAINS: usize = 4_096;
/// Longest rule identifier accepted.
pub const MAX_RULE_ID_LEN: usize = 256;

/// What a rule does with the packets it matches.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Action {
    /// Let it through (and, in a security group, its return traffic).
    Allow,
    /// Drop it.
    Deny,
    /// Ask the security-group plugin once for this flow; see [`crate::flow`].
    Punt,
}

/// Whether a chain is a stateful security group or a stateless network ACL.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ChainKind {
    /// Stateful: return traffic of an allowed flow passes without evaluation.
    SecurityGroup,
    /// Stateless: every packet is evaluated in its own direction.
    NetworkAcl,
}

/// Direction relative to the attachment: `Inbound` enters the protected side, `Outbound` leaves it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Direction {
    /// Towards the tunnel's or LAN's protected side.
    Inbound,
    /// Away from it.
    Outbound,
}

impl Direction {
    /// The other direction.
    pub fn reversed(self) -> Direction {
        match self {
            Direction::Inbound => Direction::Outbound,
            Direction::Outbound => Direction::Inbound,
        }
    }

    fn index(self) -> usize {
        match self {
            Direction::Inbound => 0,
            Direction::Outbound => 1,
        }
    }
}

/// One compiled rule over the packet's own fields.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Rule {
    /// Source prefix.
    pub src: Prefix,
    /// Destination prefix (same address family as `src`).
    pub dst: Prefix,
    /// IP protocol, `None` for any.
    pub proto: Option<u8>,
    /// Source ports (ICMP type).
    pub src_ports: PortRange,
    /// Destination ports (ICMP code).
    pub dst_ports: PortRange,
    /// What happens to matching packets.
    pub action: Action,
    /// Names the rule in explanations (`sg:web/in#3`).
    pub id: String,
}

impl Rule {
    /// True when `key` matches this rule (the linear reference the classifier must agree with).
    pub fn matches(&self, key: &FlowKey) -> bool {
        self.src.contains(key.src)
            && self.dst.contains(key.dst)
            && self.proto.is_none_or(|p| p == key.proto)
            && self.src_ports.contains(key.src_port)
            && self.dst_ports.contains(key.dst_port)
    }
}

/// The rules one attachment applies to one direction, as a plugin compiled them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChainSpec {
    /// The tunnel or LAN the chain is bound to.
    pub attachment: String,
    /// Stateful group or stateless ACL.
    pub kind: ChainKind,
    /// The direction it filters.
    pub direction: Direction,
    /// First match wins.
    pub rules: Vec<Rule>,
    /// Applies when no rule matches.
    pub default_action: Action,
    /// Names the default in explanations.
    pub default_rule: String,
}

/// Why a table was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SgError {
    /// A chain has more rules than [`MAX_RULES_PER_CHAIN`].
    #[error(
        "chain {attachment}/{kind:?}/{direction:?} has {count} rules; at most {max} are allowed"
    )]
    TooManyRules {
        /// The chain's attachment.
        attachment: String,
        /// The chain's kind.
        kind: ChainKind,
        /// The chain's direction.
        direction: Direction,
        /// How many it has.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// The table has more chains than [`MAX_CHAINS`].
    #[error("the table has {0} chains; at most {MAX_CHAINS} are allowed")]
    TooManyChains(usize),
    /// Two chains for the same attachment, kind and direction.
    #[error("attachment `{0}` has two {1:?} chains for direction {2:?}")]
    DuplicateChain(String, ChainKind, Direction),
    /// A rule mixes IPv4 and IPv6 prefixes, so it can never match.
    #[error("rule `{0}` mixes IPv4 and IPv6 prefixes")]
    MixedFamilies(String),
    /// A port range whose first port is after its last.
    #[error("rule `{0}` has a port range whose first port is after its last")]
    BadPortRange(String),
    /// A rule identifier that is empty or too long.
    #[error("a rule identifier must be 1 to {MAX_RULE_ID_LEN} characters (got {0} characters)")]
    BadRuleId(usize),
    /// The rule set's structure would take too much memory to classify quickly.
    #[error(
        "the rule set is too complex to compile (over {0} MiB of rule sets); split or simplify it"
    )]
    TooComplex(usize),
    /// Two attachment names hash to the same [`AttachmentId`] (practically impossible).
    #[error("attachments `{0}` and `{1}` collide; rename one")]
    AttachmentCollision(String, String),
}

/// Which rule of a chain decided a verdict.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RuleRef {
    /// The rule at this index of the chain.
    Rule(u32),
    /// No rule matched; the chain's default applied.
    Default,
    /// No chain of this kind is bound to the attachment in this direction (allowed).
    Unbound,
}

/// The answer of one chain.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Verdict {
    /// What to do.
    pub action: Action,
    /// Why: which rule decided.
    pub rule: RuleRef,
}

/// A stable identifier of an attachment (a tunnel or LAN name), equal across table generations so
/// that flow entries survive a table swap. It is a 64-bit FNV-1a hash of the name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AttachmentId(pub u64);

impl AttachmentId {
    /// The identifier of the attachment called `name`.
    pub fn of(name: &str) -> AttachmentId {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in name.bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        AttachmentId(h)
    }
}

/// One compiled chain.
#[derive(Debug)]
pub struct Chain {
    classifier: Classifier,
    actions: Vec<Action>,
    ids: Vec<Box<str>>,
    default_action: Action,
    default_rule: Box<str>,
}

impl Chain {
    /// Compiles `spec` (validated: see [`SgError`]).
    pub fn build(spec: &ChainSpec) -> Result<Chain, SgError> {
        if spec.rules.len() > MAX_RULES_PER_CHAIN {
            return Err(SgError::TooManyRules {
                attachment: spec.attachment.clone(),
                kind: spec.kind,
                direction: spec.direction,
                count: spec.rules.len(),
                max: MAX_RULES_PER_CHAIN,
            });
        }
        check_id(&spec.default_rule)?;
        for r in &spec.rules {
            check_id(&r.id)?;
            if r.src.addr().is_ipv4() != r.dst.addr().is_ipv4() {
                return Err(SgError::MixedFamilies(r.id.clone()));
            }
            if r.src_ports.first > r.src_ports.last || r.dst_ports.first > r.dst_ports.last {
                return Err(SgError::BadPortRange(r.id.clone()));
            }
        }
        Ok(Chain {
            classifier: Classifier::build(&spec.rules)?,
            actions: spec.rules.iter().map(|r| r.action).collect(),
            ids: spec.rules.iter().map(|r| r.id.as_str().into()).collect(),
            default_action: spec.default_action,
            default_rule: spec.default_rule.as_str().into(),
        })
    }

    /// The verdict for `key`: the first matching rule's action, else the default.
    #[inline]
    pub fn evaluate(&self, key: &FlowKey) -> Verdict {
        match self.classifier.first_match(key) {
            Some(i) => Verdict { action: self.actions[i as usize], rule: RuleRef::Rule(i) },
            None => Verdict { action: self.default_action, rule: RuleRef::Default },
        }
    }

    /// The name of the rule behind `rule`.
    pub fn rule_name(&self, rule: RuleRef) -> &str {
        match rule {
            RuleRef::Rule(i) => self.ids.get(i as usize).map_or("?", |s| s),
            RuleRef::Default => &self.default_rule,
            RuleRef::Unbound => "unbound",
        }
    }

    /// Bytes of its classifier's lookup structures.
    pub fn memory_bytes(&self) -> usize {
        self.classifier.memory_bytes()
    }

    /// Number of rules (without the default).
    pub fn len(&self) -> usize {
        self.actions.len()
    }

    /// True when the chain has only its default.
    pub fn is_empty(&self) -> bool {
        self.actions.is_empty()
    }
}

fn check_id(id: &str) -> Result<(), SgError> {
    let n = id.chars().count();
    if n == 0 || n > MAX_RULE_ID_LEN {
        return Err(SgError::BadRuleId(n));
    }
    Ok(())
}

/// The chains of one attachment: `[kind][direction]`.
#[derive(Debug, Default)]
struct Bound {
    chains: [[Option<Chain>; 2]; 2],
}

/// A whole compiled security-group table: every attachment's chains, with a generation.
#[derive(Debug)]
pub struct SgTable {
    generation: u64,
    names: Vec<(AttachmentId, String)>,
    bound: Vec<Bound>,
}

impl SgTable {
    /// An empty table (nothing bound: everything allowed) at `generation`.
    pub fn empty(generation: u64) -> SgTable {
        SgTable { generation, names: Vec::new(), bound: Vec::new() }
    }

    /// Compiles `specs` into a table published as `generation`.
    pub fn build(generation: u64, specs: &[ChainSpec]) -> Result<SgTable, SgError> {
        if specs.len() > MAX_CHAINS {
            return Err(SgError::TooManyChains(specs.len()));
        }
        let mut by_name: Vec<(AttachmentId, String, Bound)> = Vec::new();
        for spec in specs {
            let id = AttachmentId::of(&spec.attachment);
            let slot = match by_name.iter().position(|(i, _, _)| *i == id) {
                Some(p) => {
                    if by_name[p].1 != spec.attachment {
                        return Err(SgError::AttachmentCollision(
                            by_name[p].1.clone(),
                            spec.attachment.clone(),
                        ));
                    }
                    p
                }
                None => {
                    by_name.push((id, spec.attachment.clone(), Bound::default()));
                    by_name.len() - 1
                }
            };
            let cell = &mut by_name[slot].2.chains[kind_index(spec.kind)][spec.direction.index()];
            if cell.is_some() {
                return Err(SgError::DuplicateChain(
                    spec.attachment.clone(),
                    spec.kind,
                    spec.direction,
                ));
            }
            *cell = Some(Chain::build(spec)?);
        }
        by_name.sort_by_key(|(id, _, _)| *id);
        let mut names = Vec::with_capacity(by_name.len());
        let mut bound = Vec::with_capacity(by_name.len());
        for (id, name, b) in by_name {
            names.push((id, name));
            bound.push(b);
        }
        Ok(SgTable { generation, names, bound })
    }

    /// The generation this table was published as.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The attachments that have at least one chain, by name.
    pub fn attachments(&self) -> impl Iterator<Item = &str> {
        self.names.iter().map(|(_, n)| n.as_str())
    }

    /// The name of the attachment `att`, if it has a chain in this table.
    pub fn attachment_name(&self, att: AttachmentId) -> Option<&str> {
        let i = self.names.binary_search_by_key(&att, |(id, _)| *id).ok()?;
        Some(&self.names[i].1)
    }

    /// The chain bound to `att` for `kind` and `direction`, if any.
    pub fn chain(
        &self,
        att: AttachmentId,
        kind: ChainKind,
        direction: Direction,
    ) -> Option<&Chain> {
        let i = self.names.binary_search_by_key(&att, |(id, _)| *id).ok()?;
        self.bound[i].chains[kind_index(kind)][direction.index()].as_ref()
    }

    /// Evaluates one chain; an attachment without such a chain allows ([`RuleRef::Unbound`]).
    #[inline]
    pub fn evaluate(
        &self,
        att: AttachmentId,
        kind: ChainKind,
        direction: Direction,
        key: &FlowKey,
    ) -> Verdict {
        match self.chain(att, kind, direction) {
            Some(c) => c.evaluate(key),
            None => Verdict { action: Action::Allow, rule: RuleRef::Unbound },
        }
    }

    /// The name of the rule behind a verdict of the given chain.
    pub fn rule_name(
        &self,
        att: AttachmentId,
        kind: ChainKind,
        direction: Direction,
        rule: RuleRef,
    ) -> &str {
        match self.chain(att, kind, direction) {
            Some(c) => c.rule_name(rule),
            None => "unbound",
        }
    }
}

fn kind_index(kind: ChainKind) -> usize {
    match kind {
        ChainKind::SecurityGroup => 0,
        ChainKind::NetworkAcl => 1,
    }
}

/// Most 64-bit words the rule sets of one classifier may take (256 MiB); a rule set whose
/// structure would need more is refused rather than exhausting memory.
pub const MAX_CLASSIFIER_WORDS: usize = 32 << 20;

/// A first-match packet classifier over the five fields; see the module documentation.
#[derive(Debug)]
pub struct Classifier {
    rules: usize,
    src4: Field<u32>,
    dst4: Field<u32>,
    src6: Field<u128>,
    dst6: Field<u128>,
    proto: Field<u32>,
    sport: Field<u32>,
    dport: Field<u32>,
    /// Aggregate words per class (`ceil(ceil(rules / 64) / 64)`).
    agg_words: usize,
}

impl Classifier {
    /// Builds the classifier of `rules` (in priority order). Rules whose source and destination
    /// families differ never match. Fails only when the rule set's structure would take more than
    /// [`MAX_CLASSIFIER_WORDS`].
    pub fn build(rules: &[Rule]) -> Result<Classifier, SgError> {
        let n = rules.len();
        let words = n.div_ceil(64);
        let agg_words = words.div_ceil(64).max(1);
        let mut budget = MAX_CLASSIFIER_WORDS;
        let v4 = |p: &Prefix| -> Option<(u128, u128)> {
            match p.addr() {
                IpAddr::V4(a) => {
                    let lo = u128::from(u32::from(a));
                    Some((lo, lo | host_mask(32, p.len())))
                }
                IpAddr::V6(_) => None,
            }
        };
        let v6 = |p: &Prefix| -> Option<(u128, u128)> {
            match p.addr() {
                IpAddr::V6(a) => {
                    let lo = u128::from(a);
                    Some((lo, lo | host_mask(128, p.len())))
                }
                IpAddr::V4(_) => None,
            }
        };
        let family_ok = |r: &Rule| r.src.addr().is_ipv4() == r.dst.addr().is_ipv4();
        let zobrist = zobrist_keys(n);
        let z = &zobrist;
        let src4 = Field::build(n, agg_words, u128::from(u32::MAX), 32, z, &mut budget, |i| {
            v4(&rules[i].src).filter(|_| family_ok(&rules[i]))
        })?;
        let dst4 = Field::build(n, agg_words, u128::from(u32::MAX), 32, z, &mut budget, |i| {
            v4(&rules[i].dst).filter(|_| family_ok(&rules[i]))
        })?;
        let src6 = Field::build(n, agg_words, u128::MAX, 128, z, &mut budget, |i| {
            v6(&rules[i].src).filter(|_| family_ok(&rules[i]))
        })?;
        let dst6 = Field::build(n, agg_words, u128::MAX, 128, z, &mut budget, |i| {
            v6(&rules[i].dst).filter(|_| family_ok(&rules[i]))
        })?;
        let proto = Field::build(n, agg_words, 255, 8, z, &mut budget, |i| match rules[i].proto {
            Some(p) => Some((u128::from(p), u128::from(p))),
            None => Some((0, 255)),
        })?;
        let sport = Field::build(n, agg_words, 65535, 16, z, &mut budget, |i| {
            let r = rules[i].src_ports;
            Some((u128::from(r.first), u128::from(r.last))).filter(|(a, b)| a <= b)
        })?;
        let dport = Field::build(n, agg_words, 65535, 16, z, &mut budget, |i| {
            let r = rules[i].dst_ports;
            Some((u128::from(r.first), u128::from(r.last))).filter(|(a, b)| a <= b)
        })?;
        Ok(Classifier { rules: n, src4, dst4, src6, dst6, proto, sport, dport, agg_words })
    }

    /// Bytes of lookup structures (for metrics and the benchmarks' detail lines).
    pub fn memory_bytes(&self) -> usize {
        self.src4.bytes()
            + self.dst4.bytes()
            + self.src6.bytes()
            + self.dst6.bytes()
            + self.proto.bytes()
            + self.sport.bytes()
            + self.dport.bytes()
    }

    /// Index of the first rule that matches `key`.
    #[inline]
    pub fn first_match(&self, key: &FlowKey) -> Option<u32> {
        if self.rules == 0 {
            return None;
        }
        let p = self.proto.lookup(u32::from(key.proto));
        let sp = self.sport.lookup(u32::from(key.src_port));
        let dp = self.dport.lookup(u32::from(key.dst_port));
        match (key.src, key.dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                let s = self.src4.lookup(u32::from(s));
                let d = self.dst4.lookup(u32::from(d));
                self.intersect([
                    self.src4.records(s),
                    self.dst4.records(d),
                    self.proto.records(p),
                    self.sport.records(sp),
                    self.dport.records(dp),
                ])
            }
            (IpAddr::V6(s), IpAddr::V6(d)) => {
                let s = self.src6.lookup(u128::from(s));
                let d = self.dst6.lookup(u128::from(d));
                self.intersect([
                    self.src6.records(s),
                    self.dst6.records(d),
                    self.proto.records(p),
                    self.sport.records(sp),
                    self.dport.records(dp),
                ])
            }
            _ => None,
        }
    }

    /// The lowest rule index set in every field's `class | region` set.
    #[inline]
    fn intersect(&self, f: [(&[u64], &[u64]); 5]) -> Option<u32> {
        let a_n = self.agg_words;
        let words_at = a_n + a_n.div_ceil(2);
        #[inline]
        fn word(c: &[u64], a_n: usize, words_at: usize, a: usize, bit: u32) -> u64 {
            let agg = c[a];
            if agg >> bit & 1 == 0 {
                return 0;
            }
            let rank = (c[a_n + a / 2] >> (32 * (a % 2))) as u32 as usize;
            c[words_at + rank + (agg & ((1u64 << bit) - 1)).count_ones() as usize]
        }
        for a in 0..a_n {
            let mut m = u64::MAX;
            for (c, r) in &f {
                m &= c[a] | r[a];
            }
            while m != 0 {
                let bit = m.trailing_zeros();
                let mut x = u64::MAX;
                for (c, r) in &f {
                    x &= word(c, a_n, words_at, a, bit) | word(r, a_n, words_at, a, bit);
                    if x == 0 {
                        break;
                    }
                }
                if x != 0 {
                    let w = (a * 64 + bit as usize) as u32;
                    return Some(w * 64 + x.trailing_zeros());
                }
                m &= m - 1;
            }
        }
        None
    }
}

fn host_mask(width: u32, len: u8) -> u128 {
    let host = width - u32::from(len);
    if host == 0 { 0 } else { u128::MAX >> (128 - host) }
}

/// One random 64-bit key per rule: a set's hash is the XOR of its rules' keys, updated in O(1)
/// as the sweep adds and removes rules (Zobrist hashing), so interning a set costs no pass over
/// its bits unless the hash is already known.
fn zobrist_keys(n: usize) -> Vec<u64> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..n)
        .map(|_| {
            // splitmix64
            x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = x;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        })
        .collect()
}

/// A field's interval index and the rule sets of its classes.
///
/// A class is a contiguous record in `data` (so a lookup reads one or two cache lines):
/// `agg_words` aggregate words (bit `w` set when word `w` of the full bit vector is non-zero),
/// then the rank of each aggregate word's first non-zero word (u32, two per u64), then only the
/// non-zero words. `Intervals` maps a key to its class's offset in `data`.
#[derive(Debug)]
struct Field<K> {
    iv: Intervals<K>,
    /// Record offset of each region's set.
    regions: Vec<u32>,
    region_shift: u32,
    data: Vec<u64>,
}

trait IntervalKey: Copy + Ord + std::fmt::Debug {
    fn from_u128(v: u128) -> Self;
    fn to_u128(self) -> u128;
}

impl IntervalKey for u32 {
    fn from_u128(v: u128) -> u32 {
        v as u32
    }
    fn to_u128(self) -> u128 {
        u128::from(self)
    }
}

impl IntervalKey for u128 {
    fn from_u128(v: u128) -> u128 {
        v
    }
    fn to_u128(self) -> u128 {
        self
    }
}

impl<K: IntervalKey> Field<K> {
    /// `range(i)` is rule `i`'s inclusive interval on this field, or `None` when the rule can
    /// never match on it (another address family).
    ///
    /// The key space is cut into 256 regions (by the top 8 bits; one region for 8-bit fields).
    /// A rule that covers a whole region goes into that region's set, not into the sets of the
    /// intervals inside it: wide rules (`0.0.0.0/0`, `10.0.0.0/8`, any port, 1024–65535) would
    /// otherwise be repeated in every interval's set and blow the structure out of the cache.
    /// A packet's set on this field is its interval's set united with its region's set.
    #[allow(clippy::too_many_arguments)]
    fn build(
        n: usize,
        agg_words: usize,
        max: u128,
        width: u32,
        zobrist: &[u64],
        budget: &mut usize,
        range: impl Fn(usize) -> Option<(u128, u128)>,
    ) -> Result<Field<K>, SgError> {
        let region_bits = if width > 8 { 8 } else { 0 };
        let region_shift = width - region_bits;
        let regions = 1usize << region_bits;
        let words = n.div_ceil(64);
        // Regions each rule covers entirely, as add/remove events over region numbers.
        let mut region_events: Vec<(usize, bool, usize)> = Vec::new();
        // Sweep events over the key space: at each boundary rules start or end.
        let mut events: Vec<(u128, bool, usize)> = Vec::with_capacity(2 * n + 1);
        for i in 0..n {
            if let Some((lo, hi)) = range(i) {
                events.push((lo, true, i));
                if hi < max {
                    events.push((hi + 1, false, i));
                }
                let first =
                    (lo >> region_shift) as usize + usize::from(lo & low_mask(region_shift) != 0);
                let end = if hi == max { regions } else { ((hi + 1) >> region_shift) as usize };
                if first < end {
                    region_events.push((first, true, i));
                    region_events.push((end, false, i));
                }
            }
        }
        region_events.sort_unstable_by_key(|e| e.0);
        let mut data: Vec<u64> = Vec::new();
        let mut intern: HashMap<u64, Vec<u32>> = HashMap::new();
        let mut intern_set =
            |data: &mut Vec<u64>, hash: u64, set: &[u64]| -> Result<u32, SgError> {
                let known = intern.get(&hash).and_then(|offs| {
                    offs.iter().copied().find(|&o| same(data, o as usize, agg_words, set))
                });
                match known {
                    Some(o) => Ok(o),
                    None => {
                        let o = push_class(data, agg_words, set);
                        if data.len() > *budget {
                            return Err(SgError::TooComplex((MAX_CLASSIFIER_WORDS * 8) >> 20));
                        }
                        intern.entry(hash).or_default().push(o);
                        Ok(o)
                    }
                }
            };
        // Each region's set (dense, for the sweep below) and its record.
        let mut region_sets: Vec<Vec<u64>> = Vec::with_capacity(regions);
        let mut region_hash: Vec<u64> = Vec::with_capacity(regions);
        let mut region_off: Vec<u32> = Vec::with_capacity(regions);
        {
            let mut cur = vec![0u64; words];
            let mut hash = 0u64;
            let mut e = 0;
            for r in 0..regions {
                while e < region_events.len() && region_events[e].0 == r {
                    let (_, add, i) = region_events[e];
                    if add {
                        cur[i / 64] |= 1 << (i % 64);
                    } else {
                        cur[i / 64] &= !(1 << (i % 64));
                    }
                    hash ^= zobrist[i];
                    e += 1;
                }
                region_off.push(intern_set(&mut data, hash, &cur)?);
                region_sets.push(cur.clone());
                region_hash.push(hash);
            }
        }
        // Region starts are boundaries too, so no interval spans two regions.
        let mut points: Vec<u128> = events.iter().map(|e| e.0).collect();
        points.extend((0..regions as u128).map(|r| r << region_shift));
        points.sort_unstable();
        points.dedup();
        events.sort_unstable_by_key(|e| e.0);
        let mut cur = vec![0u64; words];
        let mut only = vec![0u64; words];
        let mut hash = 0u64;
        let mut starts: Vec<K> = Vec::new();
        let mut classes: Vec<u32> = Vec::new();
        let mut e = 0;
        for point in points {
            while e < events.len() && events[e].0 == point {
                let (_, add, i) = events[e];
                if add {
                    cur[i / 64] |= 1 << (i % 64);
                } else {
                    cur[i / 64] &= !(1 << (i % 64));
                }
                hash ^= zobrist[i];
                e += 1;
            }
            let r = (point >> region_shift) as usize;
            for (o, (c, w)) in only.iter_mut().zip(cur.iter().zip(&region_sets[r])) {
                *o = c & !w;
            }
            // The region's rules all cover `point`, so they are in `cur`: XOR removes them.
            let class = intern_set(&mut data, hash ^ region_hash[r], &only)?;
            if classes.last() != Some(&class) || point & low_mask(region_shift) == 0 {
                starts.push(K::from_u128(point));
                classes.push(class);
            }
        }
        *budget -= data.len();
        Ok(Field {
            iv: Intervals::build(starts, classes, width),
            regions: region_off,
            region_shift,
            data,
        })
    }

    #[inline]
    fn lookup(&self, key: K) -> (u32, u32) {
        (self.iv.lookup(key), self.regions[(key.to_u128() >> self.region_shift) as usize])
    }

    fn bytes(&self) -> usize {
        self.data.len() * 8
            + self.iv.entries.len() * std::mem::size_of::<(K, u32)>()
            + (self.iv.bucket.len() + self.regions.len()) * 4
    }

    #[inline]
    fn records(&self, (class, region): (u32, u32)) -> (&[u64], &[u64]) {
        (&self.data[class as usize..], &self.data[region as usize..])
    }
}

fn low_mask(bits: u32) -> u128 {
    if bits >= 128 { u128::MAX } else { (1u128 << bits) - 1 }
}

/// Appends the compressed record of `dense`; returns its offset.
fn push_class(data: &mut Vec<u64>, agg_words: usize, dense: &[u64]) -> u32 {
    let at = data.len();
    let mut aggs = vec![0u64; agg_words];
    let mut ranks = vec![0u32; agg_words];
    let mut nz = Vec::new();
    for (a, agg) in aggs.iter_mut().enumerate() {
        ranks[a] = nz.len() as u32;
        for bit in 0..64 {
            if let Some(&w) = dense.get(a * 64 + bit)
                && w != 0
            {
                *agg |= 1 << bit;
                nz.push(w);
            }
        }
    }
    data.extend_from_slice(&aggs);
    for pair in ranks.chunks(2) {
        data.push(u64::from(pair[0]) | u64::from(pair.get(1).copied().unwrap_or(0)) << 32);
    }
    data.extend_from_slice(&nz);
    at as u32
}

/// True when the record at `at` holds exactly the set `dense`.
fn same(data: &[u64], at: usize, agg_words: usize, dense: &[u64]) -> bool {
    let mut k = at + agg_words + agg_words.div_ceil(2);
    for a in 0..agg_words {
        let agg = data[at + a];
        for bit in 0..64 {
            let w = dense.get(a * 64 + bit).copied().unwrap_or(0);
            if agg >> bit & 1 == 1 {
                if data[k] != w {
                    return false;
                }
                k += 1;
            } else if w != 0 {
                return false;
            }
        }
    }
    true
}

/// Sorted interval starts (the first is 0), each with its class (in one array, so a lookup reads
/// one cache line for both), and a bucket index on the key's top bits so that a lookup searches
/// only the few starts inside one bucket.
#[derive(Debug)]
struct Intervals<K> {
    entries: Vec<(K, u32)>,
    /// `bucket[b]` = index of the interval holding the first key of bucket `b`.
    bucket: Vec<u32>,
    shift: u32,
}

impl<K: IntervalKey> Intervals<K> {
    fn build(starts: Vec<K>, classes: Vec<u32>, width: u32) -> Intervals<K> {
        let bits = (usize::BITS - starts.len().leading_zeros()).clamp(1, 16).min(width);
        let shift = width - bits;
        let mut bucket = Vec::with_capacity((1 << bits) + 1);
        let mut k = 0usize;
        for b in 0..(1u128 << bits) {
            let first = b << shift;
            while k + 1 < starts.len() && starts[k + 1].to_u128() <= first {
                k += 1;
            }
            bucket.push(k as u32);
        }
        bucket.push((starts.len() - 1) as u32);
        Intervals { entries: starts.into_iter().zip(classes).collect(), bucket, shift }
    }

    #[inline]
    fn lookup(&self, key: K) -> u32 {
        let b = (key.to_u128() >> self.shift) as usize;
        let lo = self.bucket[b] as usize;
        let hi = self.bucket[b + 1] as usize;
        let k = lo + self.entries[lo + 1..=hi].partition_point(|(s, _)| *s <= key);
        self.entries[k].1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small deterministic generator (xorshift64*), so failures reproduce.
    pub(crate) struct Rng(u64);
    impl Rng {
        pub(crate) fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
        pub(crate) fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    fn p(s: &str) -> Prefix {
        s.parse().unwrap()
    }

    fn rule(src: &str, dst: &str, proto: Option<u8>, dports: PortRange, action: Action) -> Rule {
        Rule {
            src: p(src),
            dst: p(dst),
            proto,
            src_ports: PortRange::ANY,
            dst_ports: dports,
            action,
            id: format!("{src}>{dst}"),
        }
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

    fn random_prefix(rng: &mut Rng, v6: bool) -> Prefix {
        if v6 {
            let len = [0u8, 32, 48, 64, 128][rng.below(5) as usize];
            let a = u128::from(rng.next()) << 64 | u128::from(rng.below(4));
            Prefix::new(IpAddr::V6((0x2001_0db8u128 << 96 | a >> 32).into()), len).unwrap()
        } else {
            let len = [0u8, 8, 16, 24, 28, 32][rng.below(6) as usize];
            // A narrow address space so random packets often hit rules.
            let a = 0x0a00_0000 | (rng.below(1 << 12) as u32) << 8 | rng.below(4) as u32;
            Prefix::new(IpAddr::V4(a.into()), len).unwrap()
        }
    }

    fn random_ports(rng: &mut Rng) -> PortRange {
        match rng.below(4) {
            0 => PortRange::ANY,
            1 => PortRange::single(rng.below(8) as u16 * 1000),
            2 => {
                let a = rng.below(8000) as u16;
                PortRange { first: a, last: a + rng.below(2000) as u16 }
            }
            _ => PortRange::single(443),
        }
    }

    pub(crate) fn random_rules(rng: &mut Rng, n: usize) -> Vec<Rule> {
        (0..n)
            .map(|i| {
                let v6 = rng.below(5) == 0;
                Rule {
                    src: random_prefix(rng, v6),
                    dst: random_prefix(rng, v6),
                    proto: [None, Some(6), Some(17), Some(1)][rng.below(4) as usize],
                    src_ports: if rng.below(4) == 0 { random_ports(rng) } else { PortRange::ANY },
                    dst_ports: random_ports(rng),
                    action: [Action::Allow, Action::Deny, Action::Punt][rng.below(3) as usize],
                    id: format!("r{i}"),
                }
            })
            .collect()
    }

    fn random_key(rng: &mut Rng, rules: &[Rule]) -> FlowKey {
        // Half the packets are aimed inside a random rule, so matches are common.
        let v6 = rng.below(5) == 0;
        let addr = |rng: &mut Rng, pfx: Option<&Prefix>| -> IpAddr {
            match pfx {
                Some(p) => match p.addr() {
                    IpAddr::V4(a) => {
                        let m = host_mask(32, p.len()) as u32;
                        IpAddr::V4((u32::from(a) | (rng.next() as u32 & m)).into())
                    }
                    IpAddr::V6(a) => {
                        let m = host_mask(128, p.len());
                        let r = u128::from(rng.next()) << 64 | u128::from(rng.next());
                        IpAddr::V6((u128::from(a) | (r & m)).into())
                    }
                },
                None if v6 => {
                    IpAddr::V6((0x2001_0db8u128 << 96 | u128::from(rng.next()) << 32 | 3).into())
                }
                None => IpAddr::V4((0x0a00_0000 | (rng.below(1 << 20) as u32)).into()),
            }
        };
        let aim = if !rules.is_empty() && rng.below(2) == 0 {
            Some(&rules[rng.below(rules.len() as u64) as usize])
        } else {
            None
        };
        let port = |rng: &mut Rng, r: Option<PortRange>| match r {
            Some(r) => r.first + (rng.below(u64::from(r.last - r.first) + 1) as u16),
            None => [0, 443, 1000, 2000, 7999, 65535][rng.below(6) as usize],
        };
        FlowKey {
            src: addr(rng, aim.map(|r| &r.src)),
            dst: addr(rng, aim.map(|r| &r.dst)),
            proto: aim.and_then(|r| r.proto).unwrap_or([6, 17, 1, 47][rng.below(4) as usize]),
            src_port: port(rng, aim.map(|r| r.src_ports)),
            dst_port: port(rng, aim.map(|r| r.dst_ports)),
        }
    }

    #[test]
    fn first_match_wins_and_names_the_rule() {
        let spec = ChainSpec {
            attachment: "lan0".into(),
            kind: ChainKind::SecurityGroup,
            direction: Direction::Inbound,
            rules: vec![
                rule("10.0.0.0/8", "192.168.1.0/24", Some(6), PortRange::single(22), Action::Deny),
                rule("0.0.0.0/0", "192.168.1.0/24", Some(6), PortRange::ANY, Action::Allow),
            ],
            default_action: Action::Deny,
            default_rule: "default-deny-inbound".into(),
        };
        let c = Chain::build(&spec).unwrap();
        let v = c.evaluate(&key("10.1.1.1", "192.168.1.5", 6, 4000, 22));
        assert_eq!(v, Verdict { action: Action::Deny, rule: RuleRef::Rule(0) });
        assert_eq!(c.rule_name(v.rule), "10.0.0.0/8>192.168.1.0/24");
        let v = c.evaluate(&key("172.16.0.1", "192.168.1.5", 6, 4000, 22));
        assert_eq!(v.action, Action::Allow);
        let v = c.evaluate(&key("172.16.0.1", "192.168.1.5", 17, 4000, 53));
        assert_eq!(v, Verdict { action: Action::Deny, rule: RuleRef::Default });
        assert_eq!(c.rule_name(v.rule), "default-deny-inbound");
        // IPv6 packets never match IPv4 rules.
        let v = c.evaluate(&key("2001:db8::1", "2001:db8::2", 6, 1, 22));
        assert_eq!(v.rule, RuleRef::Default);
    }

    #[test]
    fn classifier_agrees_with_linear_scan_on_random_rule_sets() {
        let mut rng = Rng(0x5eed_1234_abcd_0001);
        for n in [0usize, 1, 2, 63, 64, 65, 200, 1000, 5000] {
            let rules = random_rules(&mut rng, n);
            let c = Classifier::build(&rules).unwrap();
            for _ in 0..3000 {
                let k = random_key(&mut rng, &rules);
                let want = rules.iter().position(|r| r.matches(&k)).map(|i| i as u32);
                assert_eq!(c.first_match(&k), want, "n={n} key={k:?}");
            }
        }
    }

    #[test]
    fn edges_of_the_address_and_port_spaces() {
        let rules = vec![
            rule("255.255.255.255/32", "0.0.0.0/0", None, PortRange::single(65535), Action::Allow),
            rule("0.0.0.0/32", "0.0.0.0/0", None, PortRange::single(0), Action::Deny),
            rule(
                "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff/128",
                "::/0",
                None,
                PortRange::ANY,
                Action::Allow,
            ),
        ];
        let c = Classifier::build(&rules).unwrap();
        assert_eq!(c.first_match(&key("255.255.255.255", "1.2.3.4", 6, 0, 65535)), Some(0));
        assert_eq!(c.first_match(&key("255.255.255.255", "1.2.3.4", 6, 0, 65534)), None);
        assert_eq!(c.first_match(&key("0.0.0.0", "1.2.3.4", 6, 0, 0)), Some(1));
        let all = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff";
        assert_eq!(c.first_match(&key(all, "::1", 6, 0, 0)), Some(2));
        assert_eq!(c.first_match(&key("::1", all, 6, 0, 0)), None);
    }

    #[test]
    fn table_validates_and_finds_chains_by_attachment() {
        let mut spec = ChainSpec {
            attachment: "dc1".into(),
            kind: ChainKind::NetworkAcl,
            direction: Direction::Outbound,
            rules: vec![rule("10.0.0.0/8", "::/0", None, PortRange::ANY, Action::Allow)],
            default_action: Action::Deny,
            default_rule: "nacl-default".into(),
        };
        assert_eq!(
            SgTable::build(1, std::slice::from_ref(&spec)).unwrap_err().to_string(),
            "rule `10.0.0.0/8>::/0` mixes IPv4 and IPv6 prefixes"
        );
        spec.rules[0].dst = p("0.0.0.0/0");
        let err = SgTable::build(1, &[spec.clone(), spec.clone()]).unwrap_err();
        assert_eq!(
            err,
            SgError::DuplicateChain("dc1".into(), ChainKind::NetworkAcl, Direction::Outbound)
        );
        spec.rules[0].dst_ports = PortRange { first: 10, last: 9 };
        assert!(matches!(SgTable::build(1, &[spec.clone()]), Err(SgError::BadPortRange(_))));
        spec.rules[0].dst_ports = PortRange::ANY;
        let t = SgTable::build(7, &[spec]).unwrap();
        assert_eq!(t.generation(), 7);
        let dc1 = AttachmentId::of("dc1");
        let k = key("10.0.0.1", "8.8.8.8", 17, 1, 53);
        let v = t.evaluate(dc1, ChainKind::NetworkAcl, Direction::Outbound, &k);
        assert_eq!(v.action, Action::Allow);
        let v = t.evaluate(dc1, ChainKind::SecurityGroup, Direction::Outbound, &k);
        assert_eq!(v, Verdict { action: Action::Allow, rule: RuleRef::Unbound });
        let v = t.evaluate(
            dc1,
            ChainKind::NetworkAcl,
            Direction::Outbound,
            &key("11.0.0.1", "8.8.8.8", 17, 1, 53),
        );
        assert_eq!(
            t.rule_name(dc1, ChainKind::NetworkAcl, Direction::Outbound, v.rule),
            "nacl-default"
        );
        assert_eq!(t.attachments().collect::<Vec<_>>(), vec!["dc1"]);
    }

    #[test]
    fn refuses_oversized_chains() {
        let r = rule("10.0.0.0/8", "0.0.0.0/0", None, PortRange::ANY, Action::Allow);
        let spec = ChainSpec {
            attachment: "x".into(),
            kind: ChainKind::SecurityGroup,
            direction: Direction::Inbound,
            rules: vec![r; MAX_RULES_PER_CHAIN + 1],
            default_action: Action::Deny,
            default_rule: "d".into(),
        };
        let e = Chain::build(&spec).unwrap_err();
        assert!(e.to_string().contains("has 30001 rules; at most 30000"), "{e}");
    }
}

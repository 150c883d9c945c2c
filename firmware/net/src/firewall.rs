//! The host firewall: an nftables ruleset compiled from a [`FirewallSpec`] and written through
//! nftables' own netlink interface (`nfnetlink`, subsystem `NFNL_SUBSYS_NFTABLES`), never by
//! running `nft`.
//!
//! Isthmus owns exactly one table, `inet isthmus`, and replaces it atomically: one nfnetlink
//! batch holds "create table (if missing); delete table; create table, chains and rules", which
//! the kernel commits all or nothing, so there is no instant with a half-built or absent
//! firewall.
//!
//! The ruleset (what `nft list table inet isthmus` shows):
//!
//! ```text
//! chain input   { type filter hook input priority 0; policy drop;
//!     ct state invalid drop; ct state established,related accept; iifname "lo" accept
//!     icmpv6 neighbour discovery (types 133-136) accept
//!     iifname WAN [ip daddr WAN-ADDR] udp dport 500 / udp dport 4500 / meta l4proto esp accept
//!     iifname WAN icmp type 3 code 4 (fragmentation needed, RFC 1191) accept
//!     iifname WAN icmpv6 type packet-too-big (RFC 8201) accept; echo when configured
//!     iifname MGMT tcp dport API-PORT accept
//!     iifname MGMT|LAN|TUNNEL icmp/icmpv6 echo-request and path-MTU messages accept
//!     counter drop }
//! chain forward { type filter hook forward priority 0; policy drop;
//!     ct state invalid drop; iifname LAN oifname WAN drop; iifname WAN oifname LAN drop
//!     iifname LAN|TUNNEL jump inside
//!     counter drop }
//! chain inside  { oifname LAN|TUNNEL accept }   (regular chain: 2n rules, not n² pairs)
//! ```
//!
//! What the WAN admits follows the protocols: IKE on UDP 500 and NAT traversal on UDP 4500
//! (RFC 7296 §2.23, RFC 3948), ESP as IP protocol 50 (RFC 4303), and the ICMP messages path MTU
//! discovery depends on (RFC 1191 "fragmentation needed", RFC 8201 "packet too big"); IPv6
//! neighbour discovery (RFC 4861, types 133–136) is admitted everywhere since IPv6 fails without
//! it. Everything else arriving on the WAN is dropped and counted.
//!
//! Every rule carries a comment (`NFTA_RULE_USERDATA`, the `nft` comment format) naming what it
//! does and a hash of its expressions; drift detection compares those comments with the kernel's,
//! so a rule added, removed or changed by hand shows up as drift.
//!
//! Attribute layouts follow `include/uapi/linux/netfilter/nf_tables.h`.

use std::net::IpAddr;

use crate::Error;
use crate::nl::{Attrs, NLM_F_APPEND, NLM_F_CREATE, NlSocket, Request};
use crate::state::FirewallSpec;

/// The nftables table Isthmus owns (family `inet`).
pub const TABLE: &str = "isthmus";

const NFPROTO_INET: u8 = 1;
const NFPROTO_IPV4: u8 = 2;
const NFPROTO_IPV6: u8 = 10;
const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFNL_MSG_BATCH_BEGIN: u16 = 16;
const NFNL_MSG_BATCH_END: u16 = 17;

const NFT_MSG_NEWTABLE: u16 = 0;
const NFT_MSG_GETTABLE: u16 = 1;
const NFT_MSG_DELTABLE: u16 = 2;
const NFT_MSG_NEWCHAIN: u16 = 3;
const NFT_MSG_GETCHAIN: u16 = 4;
const NFT_MSG_NEWRULE: u16 = 6;
const NFT_MSG_GETRULE: u16 = 7;

const NFTA_TABLE_NAME: u16 = 1;
const NFTA_CHAIN_TABLE: u16 = 1;
const NFTA_CHAIN_NAME: u16 = 3;
const NFTA_CHAIN_HOOK: u16 = 4;
const NFTA_CHAIN_POLICY: u16 = 5;
const NFTA_CHAIN_TYPE: u16 = 7;
const NFTA_HOOK_HOOKNUM: u16 = 1;
const NFTA_HOOK_PRIORITY: u16 = 2;
const NFTA_RULE_TABLE: u16 = 1;
const NFTA_RULE_CHAIN: u16 = 2;
const NFTA_RULE_EXPRESSIONS: u16 = 4;
const NFTA_RULE_USERDATA: u16 = 7;
const NFTA_LIST_ELEM: u16 = 1;
const NFTA_EXPR_NAME: u16 = 1;
const NFTA_EXPR_DATA: u16 = 2;
const NFTA_DATA_VALUE: u16 = 1;
const NFTA_DATA_VERDICT: u16 = 2;
const NFTA_VERDICT_CODE: u16 = 1;
const NFTA_VERDICT_CHAIN: u16 = 2;
/// `NFTNL_UDATA_RULE_COMMENT`: the TLV `nft` shows as `comment "..."`.
const UDATA_RULE_COMMENT: u8 = 0;

const NLA_F_NESTED: u16 = 0x8000;
const NF_INET_LOCAL_IN: u32 = 1;
const NF_INET_FORWARD: u32 = 2;
const NF_DROP: i32 = 0;
const NF_ACCEPT: i32 = 1;
const NFT_JUMP: i32 = -3;
const NFT_REG_VERDICT: u32 = 0;
const NFT_REG_1: u32 = 1;

const META_IIFNAME: u32 = 6;
const META_OIFNAME: u32 = 7;
const META_NFPROTO: u32 = 15;
const META_L4PROTO: u32 = 16;
const PAYLOAD_NETWORK: u32 = 1;
const PAYLOAD_TRANSPORT: u32 = 2;
const CMP_EQ: u32 = 0;
const CMP_NEQ: u32 = 1;
/// Conntrack state bits (`NF_CT_STATE_BIT`): invalid, established, related.
const CT_INVALID: u32 = 1;
const CT_ESTABLISHED_RELATED: u32 = 2 | 4;

const IPPROTO_ICMP: u8 = 1;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
const IPPROTO_ESP: u8 = 50;
const IPPROTO_ICMPV6: u8 = 58;

/// Netlink attributes under construction.
#[derive(Default)]
struct Nla {
    buf: Vec<u8>,
}

impl Nla {
    fn put(&mut self, kind: u16, value: &[u8]) {
        let len = 4 + value.len();
        self.buf.extend_from_slice(&(len as u16).to_ne_bytes());
        self.buf.extend_from_slice(&kind.to_ne_bytes());
        self.buf.extend_from_slice(value);
        self.buf.resize(crate::nl::align(self.buf.len()), 0);
    }

    fn str(&mut self, kind: u16, s: &str) {
        let mut v = s.as_bytes().to_vec();
        v.push(0);
        self.put(kind, &v);
    }

    fn be32(&mut self, kind: u16, v: u32) {
        self.put(kind, &v.to_be_bytes());
    }

    fn nest(&mut self, kind: u16, f: impl FnOnce(&mut Nla)) {
        let start = self.buf.len();
        self.buf.extend_from_slice(&[0, 0]);
        self.buf.extend_from_slice(&(kind | NLA_F_NESTED).to_ne_bytes());
        f(self);
        let len = (self.buf.len() - start) as u16;
        self.buf[start..start + 2].copy_from_slice(&len.to_ne_bytes());
    }
}

/// One nftables expression (`nft --debug=netlink` names in the comments).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Expr {
    /// `meta load KEY => reg 1`
    Meta(u32),
    /// `payload load LEN b @ BASE header + OFFSET => reg 1`
    Payload { base: u32, offset: u32, len: u32 },
    /// `ct load state => reg 1`
    CtState,
    /// `bitwise reg 1 = (reg 1 & MASK) ^ 0`
    And(Vec<u8>),
    /// `cmp OP reg 1 DATA`
    Cmp(u32, Vec<u8>),
    /// `counter`
    Counter,
    /// `immediate reg 0 VERDICT`
    Verdict(i32),
    /// `immediate reg 0 jump CHAIN`
    Jump(&'static str),
}

impl Expr {
    fn encode(&self, n: &mut Nla) {
        n.nest(NFTA_LIST_ELEM, |n| {
            let name = match self {
                Expr::Meta(_) => "meta",
                Expr::Payload { .. } => "payload",
                Expr::CtState => "ct",
                Expr::And(_) => "bitwise",
                Expr::Cmp(..) => "cmp",
                Expr::Counter => "counter",
                Expr::Verdict(_) | Expr::Jump(_) => "immediate",
            };
            n.str(NFTA_EXPR_NAME, name);
            n.nest(NFTA_EXPR_DATA, |n| match self {
                Expr::Meta(key) => {
                    n.be32(1, NFT_REG_1); // NFTA_META_DREG
                    n.be32(2, *key); // NFTA_META_KEY
                }
                Expr::Payload { base, offset, len } => {
                    n.be32(1, NFT_REG_1); // NFTA_PAYLOAD_DREG
                    n.be32(2, *base);
                    n.be32(3, *offset);
                    n.be32(4, *len);
                }
                Expr::CtState => {
                    n.be32(1, NFT_REG_1); // NFTA_CT_DREG
                    n.be32(2, 0); // NFTA_CT_KEY = NFT_CT_STATE
                }
                Expr::And(mask) => {
                    n.be32(1, NFT_REG_1); // NFTA_BITWISE_SREG
                    n.be32(2, NFT_REG_1); // NFTA_BITWISE_DREG
                    n.be32(3, mask.len() as u32); // NFTA_BITWISE_LEN
                    n.nest(4, |n| n.put(NFTA_DATA_VALUE, mask)); // NFTA_BITWISE_MASK
                    n.nest(5, |n| n.put(NFTA_DATA_VALUE, &vec![0; mask.len()])); // _XOR
                }
                Expr::Cmp(op, data) => {
                    n.be32(1, NFT_REG_1); // NFTA_CMP_SREG
                    n.be32(2, *op); // NFTA_CMP_OP
                    n.nest(3, |n| n.put(NFTA_DATA_VALUE, data)); // NFTA_CMP_DATA
                }
                Expr::Counter => {
                    n.put(1, &0u64.to_be_bytes()); // NFTA_COUNTER_BYTES
                    n.put(2, &0u64.to_be_bytes()); // NFTA_COUNTER_PACKETS
                }
                Expr::Verdict(code) => {
                    n.be32(1, NFT_REG_VERDICT); // NFTA_IMMEDIATE_DREG
                    n.nest(2, |n| {
                        // NFTA_IMMEDIATE_DATA
                        n.nest(NFTA_DATA_VERDICT, |n| n.be32(NFTA_VERDICT_CODE, *code as u32));
                    });
                }
                Expr::Jump(chain) => {
                    n.be32(1, NFT_REG_VERDICT);
                    n.nest(2, |n| {
                        n.nest(NFTA_DATA_VERDICT, |n| {
                            n.be32(NFTA_VERDICT_CODE, NFT_JUMP as u32);
                            n.str(NFTA_VERDICT_CHAIN, chain);
                        });
                    });
                }
            });
        });
    }
}

/// A rule being assembled: matches, then a verdict.
#[derive(Debug, Clone, Default)]
struct RuleBuilder {
    desc: Vec<String>,
    exprs: Vec<Expr>,
}

fn ifname_bytes(name: &str) -> Vec<u8> {
    let mut v = name.as_bytes().to_vec();
    v.resize(16, 0); // IFNAMSIZ: an exact match compares the NUL padding too
    v
}

impl RuleBuilder {
    fn new() -> RuleBuilder {
        RuleBuilder::default()
    }

    fn d(mut self, s: impl Into<String>) -> Self {
        self.desc.push(s.into());
        self
    }

    fn iif(mut self, name: &str) -> Self {
        self.exprs.push(Expr::Meta(META_IIFNAME));
        self.exprs.push(Expr::Cmp(CMP_EQ, ifname_bytes(name)));
        self.d(format!("iifname {name}"))
    }

    fn oif(mut self, name: &str) -> Self {
        self.exprs.push(Expr::Meta(META_OIFNAME));
        self.exprs.push(Expr::Cmp(CMP_EQ, ifname_bytes(name)));
        self.d(format!("oifname {name}"))
    }

    fn l4(mut self, proto: u8) -> Self {
        self.exprs.push(Expr::Meta(META_L4PROTO));
        self.exprs.push(Expr::Cmp(CMP_EQ, vec![proto]));
        self
    }

    fn dport(mut self, proto: u8, port: u16) -> Self {
        self = self.l4(proto);
        self.exprs.push(Expr::Payload { base: PAYLOAD_TRANSPORT, offset: 2, len: 2 });
        self.exprs.push(Expr::Cmp(CMP_EQ, port.to_be_bytes().to_vec()));
        let p = if proto == IPPROTO_TCP { "tcp" } else { "udp" };
        self.d(format!("{p} dport {port}"))
    }

    fn daddr(mut self, ip: IpAddr) -> Self {
        let (nfproto, offset, bytes) = match ip {
            IpAddr::V4(a) => (NFPROTO_IPV4, 16, a.octets().to_vec()),
            IpAddr::V6(a) => (NFPROTO_IPV6, 24, a.octets().to_vec()),
        };
        self.exprs.push(Expr::Meta(META_NFPROTO));
        self.exprs.push(Expr::Cmp(CMP_EQ, vec![nfproto]));
        self.exprs.push(Expr::Payload { base: PAYLOAD_NETWORK, offset, len: bytes.len() as u32 });
        self.exprs.push(Expr::Cmp(CMP_EQ, bytes));
        self.d(format!("daddr {ip}"))
    }

    /// ICMP (`proto` 1) or ICMPv6 (58) of one type and, when given, one code.
    fn icmp(mut self, proto: u8, kind: u8, code: Option<u8>) -> Self {
        self = self.l4(proto);
        let data = match code {
            Some(c) => vec![kind, c],
            None => vec![kind],
        };
        self.exprs.push(Expr::Payload {
            base: PAYLOAD_TRANSPORT,
            offset: 0,
            len: data.len() as u32,
        });
        self.exprs.push(Expr::Cmp(CMP_EQ, data));
        let fam = if proto == IPPROTO_ICMP { "icmp" } else { "icmpv6" };
        match code {
            Some(c) => self.d(format!("{fam} type {kind} code {c}")),
            None => self.d(format!("{fam} type {kind}")),
        }
    }

    fn ct(mut self, bits: u32, name: &str) -> Self {
        self.exprs.push(Expr::CtState);
        self.exprs.push(Expr::And(bits.to_ne_bytes().to_vec()));
        self.exprs.push(Expr::Cmp(CMP_NEQ, vec![0; 4]));
        self.d(format!("ct state {name}"))
    }

    fn accept(mut self) -> FwRule {
        self.exprs.push(Expr::Verdict(NF_ACCEPT));
        self.d("accept").finish()
    }

    fn jump(mut self, chain: &'static str) -> FwRule {
        self.exprs.push(Expr::Jump(chain));
        self.d(format!("jump {chain}")).finish()
    }

    fn drop(mut self) -> FwRule {
        self.exprs.push(Expr::Counter);
        self.exprs.push(Expr::Verdict(NF_DROP));
        self.d("counter drop").finish()
    }

    fn finish(self) -> FwRule {
        let mut n = Nla::default();
        for e in &self.exprs {
            e.encode(&mut n);
        }
        let mut comment = self.desc.join(" ");
        comment.truncate(200);
        comment = format!("{comment} #{:08x}", fnv1a(&n.buf) as u32);
        FwRule { comment, exprs: n.buf }
    }
}

/// FNV-1a, 64 bits: a stable fingerprint of a rule's encoded expressions.
fn fnv1a(data: &[u8]) -> u64 {
    data.iter()
        .fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3))
}

/// One compiled rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FwRule {
    /// Its comment: what it does and its fingerprint.
    pub comment: String,
    /// Encoded `NFTA_RULE_EXPRESSIONS` content.
    exprs: Vec<u8>,
}

/// One base chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FwChain {
    pub name: &'static str,
    /// Netfilter hook of a base chain (with policy drop); `None` for a regular chain.
    hook: Option<u32>,
    pub rules: Vec<FwRule>,
}

/// The compiled table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ruleset {
    pub(crate) chains: Vec<FwChain>,
}

impl Ruleset {
    /// Number of rules across chains.
    pub fn rule_count(&self) -> usize {
        self.chains.iter().map(|c| c.rules.len()).sum()
    }

    /// Rule comments per chain, as `nft list` would show them.
    pub fn describe(&self) -> Vec<(String, Vec<String>)> {
        self.chains
            .iter()
            .map(|c| (c.name.to_owned(), c.rules.iter().map(|r| r.comment.clone()).collect()))
            .collect()
    }
}

/// Compiles the spec into the ruleset described in the module docs.
pub fn compile(spec: &FirewallSpec) -> Ruleset {
    let r = RuleBuilder::new;
    let wan = spec.wan_if.as_str();
    let mut input = vec![
        r().ct(CT_INVALID, "invalid").drop(),
        r().ct(CT_ESTABLISHED_RELATED, "established,related").accept(),
        r().iif("lo").accept(),
    ];
    // Neighbour discovery (RFC 4861): without it IPv6 does not work on any link.
    for t in 133..=136 {
        input.push(r().icmp(IPPROTO_ICMPV6, t, None).accept());
    }
    let dests: Vec<Option<IpAddr>> = if spec.wan_addrs.is_empty() {
        vec![None]
    } else {
        spec.wan_addrs.iter().copied().map(Some).collect()
    };
    for d in &dests {
        let base = || match d {
            Some(ip) => r().iif(wan).daddr(*ip),
            None => r().iif(wan),
        };
        input.push(base().dport(IPPROTO_UDP, 500).d("(IKE)").accept());
        input.push(base().dport(IPPROTO_UDP, 4500).d("(IKE/ESP NAT-T)").accept());
        input.push(base().l4(IPPROTO_ESP).d("esp").accept());
    }
    let pmtu = |b: fn() -> RuleBuilder, ifn: &str| {
        vec![
            b().iif(ifn).icmp(IPPROTO_ICMP, 3, Some(4)).d("(frag needed)").accept(),
            b().iif(ifn).icmp(IPPROTO_ICMPV6, 2, None).d("(packet too big)").accept(),
        ]
    };
    let echo = |b: fn() -> RuleBuilder, ifn: &str| {
        vec![
            b().iif(ifn).icmp(IPPROTO_ICMP, 8, None).d("(echo)").accept(),
            b().iif(ifn).icmp(IPPROTO_ICMPV6, 128, None).d("(echo)").accept(),
        ]
    };
    input.extend(pmtu(r, wan));
    if spec.wan_echo {
        input.extend(echo(r, wan));
    }
    if let Some(m) = &spec.mgmt_if {
        input.push(r().iif(m).dport(IPPROTO_TCP, spec.mgmt_port).d("(API)").accept());
    }
    for i in spec.mgmt_if.iter().chain(&spec.lan_ifs).chain(&spec.tunnel_ifs) {
        input.extend(pmtu(r, i));
        input.extend(echo(r, i));
    }
    input.push(r().drop());

    let mut forward = vec![r().ct(CT_INVALID, "invalid").drop()];
    for lan in &spec.lan_ifs {
        forward.push(r().iif(lan).oif(wan).d("(no clear LAN->WAN)").drop());
        forward.push(r().iif(wan).oif(lan).d("(no clear WAN->LAN)").drop());
    }
    // LANs and tunnels forward among themselves: a jump per ingress, an accept per egress.
    let mut inside = Vec::new();
    for i in spec.lan_ifs.iter().chain(&spec.tunnel_ifs) {
        forward.push(r().iif(i).jump("inside"));
        inside.push(r().oif(i).accept());
    }
    forward.push(r().drop());
    Ruleset {
        chains: vec![
            FwChain { name: "input", hook: Some(NF_INET_LOCAL_IN), rules: input },
            FwChain { name: "forward", hook: Some(NF_INET_FORWARD), rules: forward },
            FwChain { name: "inside", hook: None, rules: inside },
        ],
    }
}

fn nfgen(family: u8, res_id: u16) -> Vec<u8> {
    let mut v = vec![family, 0];
    v.extend_from_slice(&res_id.to_be_bytes());
    v
}

fn msg(cmd: u16, flags: u16, attrs: Nla) -> Request {
    let mut payload = nfgen(NFPROTO_INET, 0);
    payload.extend_from_slice(&attrs.buf);
    Request { kind: (NFNL_SUBSYS_NFTABLES << 8) | cmd, flags, payload }
}

fn table_msg(cmd: u16, flags: u16) -> Request {
    let mut a = Nla::default();
    a.str(NFTA_TABLE_NAME, TABLE);
    msg(cmd, flags, a)
}

/// The batch that replaces the table with `rs`, or removes it when `rs` is `None`.
pub(crate) fn batch(rs: Option<&Ruleset>) -> Vec<Request> {
    // Creating first makes the delete valid whether or not the table exists.
    let mut out = vec![table_msg(NFT_MSG_NEWTABLE, NLM_F_CREATE), table_msg(NFT_MSG_DELTABLE, 0)];
    let Some(rs) = rs else {
        return out;
    };
    out.push(table_msg(NFT_MSG_NEWTABLE, NLM_F_CREATE));
    for c in &rs.chains {
        let mut a = Nla::default();
        a.str(NFTA_CHAIN_TABLE, TABLE);
        a.str(NFTA_CHAIN_NAME, c.name);
        if let Some(hook) = c.hook {
            a.nest(NFTA_CHAIN_HOOK, |n| {
                n.be32(NFTA_HOOK_HOOKNUM, hook);
                n.be32(NFTA_HOOK_PRIORITY, 0);
            });
            a.be32(NFTA_CHAIN_POLICY, NF_DROP as u32);
            a.str(NFTA_CHAIN_TYPE, "filter");
        }
        out.push(msg(NFT_MSG_NEWCHAIN, NLM_F_CREATE, a));
    }
    for c in &rs.chains {
        for rule in &c.rules {
            let mut a = Nla::default();
            a.str(NFTA_RULE_TABLE, TABLE);
            a.str(NFTA_RULE_CHAIN, c.name);
            a.nest(NFTA_RULE_EXPRESSIONS, |n| n.buf.extend_from_slice(&rule.exprs));
            let mut ud = vec![UDATA_RULE_COMMENT, (rule.comment.len() + 1) as u8];
            ud.extend_from_slice(rule.comment.as_bytes());
            ud.push(0);
            a.put(NFTA_RULE_USERDATA, &ud);
            out.push(msg(NFT_MSG_NEWRULE, NLM_F_CREATE | NLM_F_APPEND, a));
        }
    }
    out
}

/// Writes the batch; the kernel applies all of it or none.
pub(crate) fn apply(sock: &mut NlSocket, rs: Option<&Ruleset>) -> Result<(), Error> {
    let reqs = batch(rs);
    let begin =
        Request { kind: NFNL_MSG_BATCH_BEGIN, flags: 0, payload: nfgen(0, NFNL_SUBSYS_NFTABLES) };
    let end =
        Request { kind: NFNL_MSG_BATCH_END, flags: 0, payload: nfgen(0, NFNL_SUBSYS_NFTABLES) };
    let results = sock.execute_batch(&begin, &reqs, &end)?;
    let errors: Vec<String> = results
        .iter()
        .enumerate()
        .filter_map(|(i, r)| r.as_ref().err().map(|e| format!("message {i}: {e}")))
        .collect();
    if errors.is_empty() { Ok(()) } else { Err(Error::Firewall(errors.join("; "))) }
}

/// What the kernel has under `inet isthmus`: chains with their policy and rule comments.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct ObservedTable {
    /// (chain, policy is drop, has a hook, rule comments in order)
    pub chains: Vec<(String, bool, bool, Vec<String>)>,
}

fn attr_str(v: &[u8]) -> String {
    String::from_utf8_lossy(v.split(|b| *b == 0).next().unwrap_or(&[])).into_owned()
}

/// Reads the table, `None` when it does not exist.
pub(crate) fn observe(sock: &mut NlSocket) -> Result<Option<ObservedTable>, Error> {
    let mut exists = false;
    let sub = NFNL_SUBSYS_NFTABLES << 8;
    sock.dump("nftables tables", sub | NFT_MSG_GETTABLE, &nfgen(NFPROTO_INET, 0), |_, p| {
        exists |= is_our_table(p);
        Ok(())
    })?;
    if !exists {
        return Ok(None);
    }
    let mut table = ObservedTable::default();
    sock.dump("nftables chains", sub | NFT_MSG_GETCHAIN, &nfgen(NFPROTO_INET, 0), |_, p| {
        table.chains.extend(parse_chain(p));
        Ok(())
    })?;
    let mut a = Nla::default();
    a.str(NFTA_RULE_TABLE, TABLE);
    let mut req = nfgen(NFPROTO_INET, 0);
    req.extend_from_slice(&a.buf);
    sock.dump("nftables rules", sub | NFT_MSG_GETRULE, &req, |_, p| {
        table.add_rule(p);
        Ok(())
    })?;
    Ok(Some(table))
}

/// True when an `NFT_MSG_NEWTABLE` (after its `nfgenmsg`) is `inet isthmus`'s.
pub(crate) fn is_our_table(p: &[u8]) -> bool {
    Attrs::new(p.get(4..).unwrap_or(&[])).any(|(t, v)| t == NFTA_TABLE_NAME && attr_str(v) == TABLE)
}

/// Reads an `NFT_MSG_NEWCHAIN`: the chain, when it belongs to `inet isthmus`.
pub(crate) fn parse_chain(p: &[u8]) -> Option<(String, bool, bool, Vec<String>)> {
    let (mut tname, mut name, mut drop, mut hook) = (String::new(), String::new(), false, false);
    for (t, v) in Attrs::new(p.get(4..).unwrap_or(&[])) {
        match t {
            NFTA_CHAIN_TABLE => tname = attr_str(v),
            NFTA_CHAIN_NAME => name = attr_str(v),
            NFTA_CHAIN_HOOK => hook = true,
            NFTA_CHAIN_POLICY => drop = v == NF_DROP.to_be_bytes(),
            _ => {}
        }
    }
    (tname == TABLE).then_some((name, drop, hook, Vec::new()))
}

impl ObservedTable {
    /// Adds the comment of an `NFT_MSG_NEWRULE` to its chain, when the rule is in one of the
    /// table's chains.
    pub(crate) fn add_rule(&mut self, p: &[u8]) {
        let (mut tname, mut chain, mut comment) = (String::new(), String::new(), String::new());
        for (t, v) in Attrs::new(p.get(4..).unwrap_or(&[])) {
            match t {
                NFTA_RULE_TABLE => tname = attr_str(v),
                NFTA_RULE_CHAIN => chain = attr_str(v),
                NFTA_RULE_USERDATA => comment = udata_comment(v),
                _ => {}
            }
        }
        if tname == TABLE
            && let Some(c) = self.chains.iter_mut().find(|c| c.0 == chain)
        {
            c.3.push(comment);
        }
    }
}

/// The comment TLV of rule userdata (empty when there is none).
fn udata_comment(mut v: &[u8]) -> String {
    while let [kind, len, rest @ ..] = v {
        let len = usize::from(*len);
        let Some(value) = rest.get(..len) else { break };
        if *kind == UDATA_RULE_COMMENT {
            return attr_str(value);
        }
        v = &rest[len..];
    }
    String::new()
}

/// Why the kernel's table differs from `rs`, or `None` when it matches.
pub(crate) fn difference(rs: &Ruleset, seen: Option<&ObservedTable>) -> Option<String> {
    let Some(seen) = seen else {
        return Some(format!("table inet {TABLE} is missing"));
    };
    for c in &rs.chains {
        let Some((_, drop, hook, comments)) = seen.chains.iter().find(|s| s.0 == c.name) else {
            return Some(format!("chain {} is missing", c.name));
        };
        if c.hook.is_some() && (!drop || !hook) {
            return Some(format!("chain {} lost its hook or its drop policy", c.name));
        }
        if c.hook.is_none() && *hook {
            return Some(format!("chain {} is hooked", c.name));
        }
        let want: Vec<&str> = c.rules.iter().map(|r| r.comment.as_str()).collect();
        if let Some(i) = (0..want.len().max(comments.len()))
            .find(|i| want.get(*i).copied() != comments.get(*i).map(String::as_str))
        {
            return Some(match (want.get(i), comments.get(i)) {
                (Some(w), Some(s)) => {
                    format!("chain {} rule {}: expected `{w}`, found `{s}`", c.name, i + 1)
                }
                (Some(w), None) => format!("chain {} rule {} `{w}` is missing", c.name, i + 1),
                (None, Some(s)) => format!("chain {} has an extra rule `{s}`", c.name),
                (None, None) => String::new(),
            });
        }
    }
    if let Some(extra) = seen.chains.iter().find(|s| !rs.chains.iter().any(|c| c.name == s.0)) {
        return Some(format!("chain {} is not Isthmus's", extra.0));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> FirewallSpec {
        FirewallSpec {
            wan_if: "wan0".into(),
            wan_addrs: vec!["192.0.2.1".parse().unwrap()],
            mgmt_if: Some("mgmt0".into()),
            mgmt_port: 8443,
            lan_ifs: vec!["lan0".into()],
            tunnel_ifs: vec!["ist0".into()],
            wan_echo: false,
        }
    }

    #[test]
    fn udp_500_rule_encodes_as_nft_does() {
        // `iifname "wan0" udp dport 500 accept` in nft --debug=netlink form:
        // meta load iifname => reg 1; cmp eq reg 1 "wan0\0..."; meta load l4proto => reg 1;
        // cmp eq reg 1 0x11; payload load 2b @ transport header + 2 => reg 1;
        // cmp eq reg 1 0x01f4; immediate reg 0 accept
        let rule = RuleBuilder::new().iif("wan0").dport(IPPROTO_UDP, 500).accept();
        let elems: Vec<_> = Attrs::new(&rule.exprs).collect();
        assert_eq!(elems.len(), 7);
        let names: Vec<String> = elems
            .iter()
            .map(|(_, e)| {
                let (_, n) = Attrs::new(e).find(|(t, _)| *t == NFTA_EXPR_NAME).unwrap();
                attr_str(n)
            })
            .collect();
        assert_eq!(names, ["meta", "cmp", "meta", "cmp", "payload", "cmp", "immediate"]);
        // The port compare carries 500 in network byte order inside NFTA_CMP_DATA/VALUE.
        let (_, cmp) = Attrs::new(elems[5].1).find(|(t, _)| *t == NFTA_EXPR_DATA).unwrap();
        let (_, data) = Attrs::new(cmp).find(|(t, _)| *t == 3).unwrap();
        let (_, value) = Attrs::new(data).next().unwrap();
        assert_eq!(value, [0x01, 0xf4]);
        assert!(
            rule.comment.starts_with("iifname wan0 udp dport 500 accept #"),
            "{}",
            rule.comment
        );
    }

    #[test]
    fn ruleset_covers_the_policy() {
        let rs = compile(&spec());
        let d = rs.describe();
        let input = &d[0].1;
        let has = |list: &[String], s: &str| list.iter().any(|c| c.starts_with(s));
        assert!(has(input, "iifname wan0 daddr 192.0.2.1 udp dport 500 (IKE) accept"));
        assert!(has(input, "iifname wan0 daddr 192.0.2.1 udp dport 4500"));
        assert!(has(input, "iifname wan0 daddr 192.0.2.1 esp accept"));
        assert!(has(input, "iifname wan0 icmp type 3 code 4"));
        assert!(has(input, "iifname wan0 icmpv6 type 2"));
        assert!(!has(input, "iifname wan0 icmp type 8"), "no echo on the WAN unless asked");
        assert!(has(input, "iifname mgmt0 tcp dport 8443 (API) accept"));
        assert!(!input.iter().any(|c| c.contains("8443") && !c.contains("mgmt0")));
        assert!(input.last().unwrap().starts_with("counter drop"));
        let fwd = &d[1].1;
        assert!(has(fwd, "iifname lan0 oifname wan0 (no clear LAN->WAN) counter drop"));
        assert!(has(fwd, "iifname wan0 oifname lan0 (no clear WAN->LAN) counter drop"));
        assert!(has(fwd, "iifname lan0 jump inside"));
        assert!(has(fwd, "iifname ist0 jump inside"));
        assert!(!fwd.iter().any(|c| c.contains("oifname wan0") && c.contains("accept")));
        let inside = &d[2].1;
        assert_eq!(inside.len(), 2);
        assert!(has(inside, "oifname lan0 accept") && has(inside, "oifname ist0 accept"));
        // Comments are unique fingerprints: a changed spec changes them.
        let mut s2 = spec();
        s2.mgmt_port = 8444;
        assert_ne!(compile(&s2), rs);
        assert_eq!(compile(&spec()), rs, "compilation is deterministic");
    }

    #[test]
    fn difference_names_the_first_mismatch() {
        let rs = compile(&spec());
        assert_eq!(difference(&rs, None).unwrap(), "table inet isthmus is missing");
        let mut seen = ObservedTable {
            chains: rs
                .chains
                .iter()
                .map(|c| {
                    let comments = c.rules.iter().map(|r| r.comment.clone()).collect();
                    (c.name.to_string(), c.hook.is_some(), c.hook.is_some(), comments)
                })
                .collect(),
        };
        assert_eq!(difference(&rs, Some(&seen)), None);
        seen.chains[0].3.insert(3, String::new());
        let why = difference(&rs, Some(&seen)).unwrap();
        assert!(why.starts_with("chain input rule 4: expected"), "{why}");
        seen.chains[0].3.remove(3);
        seen.chains[1].1 = false;
        assert!(difference(&rs, Some(&seen)).unwrap().contains("drop policy"));
    }

    #[test]
    fn userdata_comment_parses_and_survives_garbage() {
        assert_eq!(udata_comment(&[0, 4, b'a', b'b', b'c', 0]), "abc");
        assert_eq!(udata_comment(&[5, 1, 9, 0, 3, b'x', b'y', 0]), "xy");
        assert_eq!(udata_comment(&[0, 200, 1]), "");
        assert_eq!(udata_comment(&[]), "");
    }
}

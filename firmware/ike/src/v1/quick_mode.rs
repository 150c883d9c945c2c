//! Phase 2: Quick Mode (RFC 2409 §5.5), both roles, with PFS and proxy identities:
//!
//! ```text
//!   1  I -> R  HDR*, HASH(1), SA, Ni [, KE] [, IDci, IDcr]
//!   2  R -> I  HDR*, HASH(2), SA, Nr [, KE] [, IDci, IDcr]
//!   3  I -> R  HDR*, HASH(3)
//! ```
//!
//! One exchange negotiates one pair of ESP SAs for one selector pair (the proxy IDs), as IDC
//! routers expect: several selector pairs are several exchanges. A responder accepts proxy IDs
//! that lie inside one of its selector pairs and echoes them; others are refused with
//! INVALID-ID-INFORMATION, the classic "tunnel up, no traffic" cause, named on both sides.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use isthmus_tables::PortRange;
use rand_core::CryptoRngCore;
use zeroize::Zeroizing;

use crate::config::TrafficSelector;
use crate::crypto::{DhSecret, ct_eq};
use crate::proposal::{EspProposal, EspSuite, list_to_string};

use super::codec::{
    self, Attribute, Body, DOI_IPSEC, Id, Notify, Payload, SIT_IDENTITY_ONLY, Sa, exchange, header,
    payload_type,
};
use super::crypt;
use super::keys;
use super::main_mode::{Established, Failure, nonce, notify};
use super::proposal::{LIFE_SECONDS, PROTO_ESP, esp_proposal, esp_suite, p2};

/// ID types of proxy identities (RFC 2407 §4.6.2.1).
pub mod id_type {
    /// One IPv4 address.
    pub const IPV4_ADDR: u8 = 1;
    /// IPv4 address and mask.
    pub const IPV4_ADDR_SUBNET: u8 = 4;
    /// One IPv6 address.
    pub const IPV6_ADDR: u8 = 5;
    /// IPv6 address and mask.
    pub const IPV6_ADDR_SUBNET: u8 = 6;
    /// IPv4 first and last address.
    pub const IPV4_ADDR_RANGE: u8 = 7;
    /// IPv6 first and last address.
    pub const IPV6_ADDR_RANGE: u8 = 8;
}

/// A selector pair and what to negotiate for it.
#[derive(Clone, Debug)]
pub struct QuickConfig {
    /// ESP proposals, most preferred first (a group in the first one turns PFS on).
    pub proposals: Vec<EspProposal>,
    /// The SA lifetime we offer or accept at most.
    pub life: Duration,
    /// Our side's selector.
    pub local_ts: TrafficSelector,
    /// The peer's side's selector.
    pub remote_ts: TrafficSelector,
    /// ESP in UDP (NAT traversal found a NAT).
    pub udp: bool,
}

/// A negotiated pair of ESP SAs.
pub struct ChildSa {
    /// The algorithms.
    pub suite: EspSuite,
    /// The SPI the peer sends to us with.
    pub spi_in: u32,
    /// The SPI we send with.
    pub spi_out: u32,
    /// Key material of the inbound SA (encryption key, salt, then integrity key).
    pub keymat_in: Zeroizing<Vec<u8>>,
    /// Key material of the outbound SA.
    pub keymat_out: Zeroizing<Vec<u8>>,
    /// Our selector as agreed.
    pub local_ts: TrafficSelector,
    /// The peer's selector as agreed.
    pub remote_ts: TrafficSelector,
    /// The lifetime both sides agreed on.
    pub life: Duration,
    /// ESP in UDP.
    pub udp: bool,
}

impl std::fmt::Debug for ChildSa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChildSa")
            .field("suite", &self.suite.to_string())
            .field("spi_in", &format_args!("{:08x}", self.spi_in))
            .field("spi_out", &format_args!("{:08x}", self.spi_out))
            .field("local_ts", &self.local_ts)
            .field("remote_ts", &self.remote_ts)
            .field("life", &self.life)
            .finish_non_exhaustive()
    }
}

/// What to do after a Quick Mode datagram.
#[derive(Debug)]
pub enum QmStep {
    /// Send this and wait (the responder's message 2).
    Send(Vec<u8>),
    /// The peer sent its last message again: send our answer again, if there was one.
    Resend(Option<Vec<u8>>),
    /// The SAs are negotiated; send `send` if there is one (the initiator's message 3).
    Done {
        /// Message 3, for the initiator.
        send: Option<Vec<u8>>,
        /// The SA pair.
        child: Box<ChildSa>,
    },
}

/// A proxy ID for a selector; `Err` when IKEv1 cannot express it (a port range).
pub fn proxy_id(ts: &TrafficSelector) -> Result<Id, String> {
    let port = match (ts.ports.first, ts.ports.last) {
        (0, u16::MAX) => 0,
        (a, b) if a == b => a,
        (a, b) => return Err(format!("ports {a}-{b}: an IKEv1 proxy ID holds one port or any")),
    };
    let bytes = |a: IpAddr| match a {
        IpAddr::V4(v) => v.octets().to_vec(),
        IpAddr::V6(v) => v.octets().to_vec(),
    };
    let v4 = ts.is_ipv4();
    let (ty, data) = match ts.prefixes().as_slice() {
        [p] if ts.start == ts.end => {
            (if v4 { id_type::IPV4_ADDR } else { id_type::IPV6_ADDR }, bytes(p.addr()))
        }
        [p] => {
            let mask: IpAddr = if v4 {
                Ipv4Addr::from(u32::MAX.checked_shl(32 - u32::from(p.len())).unwrap_or(0)).into()
            } else {
                Ipv6Addr::from(u128::MAX.checked_shl(128 - u32::from(p.len())).unwrap_or(0)).into()
            };
            let ty = if v4 { id_type::IPV4_ADDR_SUBNET } else { id_type::IPV6_ADDR_SUBNET };
            (ty, [bytes(p.addr()), bytes(mask)].concat())
        }
        _ => {
            let ty = if v4 { id_type::IPV4_ADDR_RANGE } else { id_type::IPV6_ADDR_RANGE };
            (ty, [bytes(ts.start), bytes(ts.end)].concat())
        }
    };
    Ok(Id { ty, protocol: ts.proto, port, data })
}

/// The selector of a proxy ID; `None` for types that are not addresses.
pub fn selector(id: &Id) -> Option<TrafficSelector> {
    let v4 =
        |b: &[u8]| -> Option<IpAddr> { Some(Ipv4Addr::from(<[u8; 4]>::try_from(b).ok()?).into()) };
    let v6 =
        |b: &[u8]| -> Option<IpAddr> { Some(Ipv6Addr::from(<[u8; 16]>::try_from(b).ok()?).into()) };
    let d = &id.data[..];
    let (start, end) = match id.ty {
        id_type::IPV4_ADDR => (v4(d)?, v4(d)?),
        id_type::IPV6_ADDR => (v6(d)?, v6(d)?),
        id_type::IPV4_ADDR_RANGE if d.len() == 8 => (v4(&d[..4])?, v4(&d[4..])?),
        id_type::IPV6_ADDR_RANGE if d.len() == 32 => (v6(&d[..16])?, v6(&d[16..])?),
        id_type::IPV4_ADDR_SUBNET if d.len() == 8 => {
            let (a, m) = (
                u32::from_be_bytes(d[..4].try_into().ok()?),
                u32::from_be_bytes(d[4..].try_into().ok()?),
            );
            (Ipv4Addr::from(a & m).into(), Ipv4Addr::from(a | !m).into())
        }
        id_type::IPV6_ADDR_SUBNET if d.len() == 32 => {
            let a = u128::from_be_bytes(d[..16].try_into().ok()?);
            let m = u128::from_be_bytes(d[16..].try_into().ok()?);
            (Ipv6Addr::from(a & m).into(), Ipv6Addr::from(a | !m).into())
        }
        _ => return None,
    };
    if start > end {
        return None;
    }
    let ports =
        if id.port == 0 { PortRange::ANY } else { PortRange { first: id.port, last: id.port } };
    Some(TrafficSelector { proto: id.protocol, ports, start, end })
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Initiator: message 1 sent.
    Sent1,
    /// Responder: message 2 sent.
    Sent2,
    /// Finished (or failed).
    Over,
}

/// One side of a Quick Mode exchange.
pub struct QuickMode {
    initiator: bool,
    message_id: u32,
    iv: Vec<u8>,
    state: State,
    cfg: QuickConfig,
    spi_in: u32,
    ni: Vec<u8>,
    nr: Vec<u8>,
    dh: Option<DhSecret>,
    /// The responder's result, kept until message 3 proves the initiator saw message 2.
    pending: Option<Box<ChildSa>>,
    /// The last datagram taken and what it was answered with, for retransmissions.
    last_in: Vec<u8>,
    last_out: Vec<u8>,
}

impl std::fmt::Debug for QuickMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QuickMode")
            .field("initiator", &self.initiator)
            .field("message_id", &format_args!("{:08x}", self.message_id))
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

/// HASH | rest, with HASH = `hash(rest as laid out)`; the first payload type and the chain.
fn with_hash(rest: &[Payload], hash: impl FnOnce(&[u8]) -> Vec<u8>) -> Vec<Payload> {
    let mut tail = Vec::new();
    codec::emit_payloads(rest, &mut tail);
    let mut all = vec![Payload::Hash(hash(&tail))];
    all.extend_from_slice(rest);
    all
}

/// A decrypted Quick Mode message.
struct Opened {
    payloads: Vec<Payload>,
    /// The chain after the HASH payload, as sent: what HASH(1) and HASH(2) cover.
    rest: Vec<u8>,
    hash: Vec<u8>,
    /// The IV of the exchange's next message.
    next: Vec<u8>,
}

/// Decrypts a Quick Mode message that must start with HASH.
fn open(p1: &Established, iv: &[u8], m: &codec::Message) -> Result<Opened, Failure> {
    let Body::Encrypted(ct) = &m.body else {
        return Err(Failure::Malformed("a Quick Mode message in clear".into()));
    };
    let (plain, next) = crypt::open(p1.suite.encr, &p1.keys.enc_key, iv, ct)?;
    let raw = codec::chain(m.header.next_payload, &plain)?;
    let Some(&(payload_type::HASH, hash)) = raw.first() else {
        return Err(Failure::Malformed(
            "a Quick Mode message that does not start with HASH".into(),
        ));
    };
    // The rest of the chain as sent: from after the HASH payload to the end of the last one.
    let start = 4 + hash.len();
    let end = raw.iter().map(|(_, b)| 4 + b.len()).sum::<usize>();
    let rest = plain.get(start..end).ok_or_else(|| Failure::Malformed("chain lengths".into()))?;
    let payloads = codec::parse_payloads(m.header.next_payload, &plain)?;
    Ok(Opened { payloads, rest: rest.to_vec(), hash: hash.to_vec(), next })
}

impl QuickMode {
    /// Starts Quick Mode as initiator over `p1` with message ID `message_id` (random, not 0)
    /// and our inbound SPI `spi_in`: the state and message 1.
    pub fn initiate(
        p1: &Established,
        cfg: QuickConfig,
        message_id: u32,
        spi_in: u32,
        rng: &mut impl CryptoRngCore,
    ) -> Result<(QuickMode, Vec<u8>), Failure> {
        let f = p1.suite.prf;
        let pfs = cfg.proposals.first().and_then(|p| p.dh.first().copied());
        let ours = list_to_string(&cfg.proposals);
        let no = |theirs: String| Failure::NoProposalChosen { ours: ours.clone(), theirs };
        let mut props = Vec::new();
        for p in &cfg.proposals {
            if let Some(mut prop) = esp_proposal(p, spi_in, pfs, cfg.udp, cfg.life) {
                for t in &mut prop.transforms {
                    t.num =
                        (props.iter().map(|x: &codec::Proposal| x.transforms.len()).sum::<usize>()
                            + usize::from(t.num)) as u8;
                }
                props.push(prop);
            }
        }
        // One proposal with every transform: transforms are alternatives (RFC 2408 §4.2).
        let mut all = props.into_iter();
        let mut prop = all.next().ok_or_else(|| {
            no("(no ESP suite IKEv1 can carry: ChaCha20-Poly1305 has no IKEv1 transform)".into())
        })?;
        all.for_each(|p| prop.transforms.extend(p.transforms));
        let lid = proxy_id(&cfg.local_ts).map_err(Failure::Malformed)?;
        let rid = proxy_id(&cfg.remote_ts).map_err(Failure::Malformed)?;
        let ni = nonce(rng);
        let dh = pfs.map(|g| DhSecret::generate(g, rng));
        let sa = Sa { doi: DOI_IPSEC, situation: SIT_IDENTITY_ONLY, proposals: vec![prop] };
        let mut rest = vec![Payload::Sa(sa), Payload::Nonce(ni.clone())];
        if let Some(d) = &dh {
            rest.push(Payload::Ke(d.public()));
        }
        rest.extend([Payload::Id(lid), Payload::Id(rid)]);
        let payloads = with_hash(&rest, |tail| keys::qm_hash1(f, &p1.keys, message_id, tail));
        let iv = keys::phase2_iv(f, &p1.iv, message_id, p1.suite.encr.block_len());
        let h = header(p1.cky_i, p1.cky_r, exchange::QUICK, 0, message_id);
        let (msg, next) =
            crypt::encrypt_message(h, &payloads, p1.suite.encr, &p1.keys.enc_key, &iv)?;
        let qm = QuickMode {
            initiator: true,
            message_id,
            iv: next,
            state: State::Sent1,
            cfg,
            spi_in,
            ni,
            nr: Vec::new(),
            dh,
            pending: None,
            last_in: Vec::new(),
            last_out: msg.clone(),
        };
        Ok((qm, msg))
    }

    /// Answers message 1 as responder: the first of `configs` whose selectors cover the proxy
    /// IDs, our inbound SPI `spi_in`; the state and message 2.
    pub fn respond(
        p1: &Established,
        configs: &[QuickConfig],
        datagram: &[u8],
        spi_in: u32,
        rng: &mut impl CryptoRngCore,
    ) -> Result<(QuickMode, Vec<u8>), Failure> {
        let f = p1.suite.prf;
        let m = codec::parse_message(datagram)?;
        if m.header.exchange != exchange::QUICK || m.header.message_id == 0 {
            return Err(Failure::Malformed("not a Quick Mode message".into()));
        }
        let mid = m.header.message_id;
        let iv = keys::phase2_iv(f, &p1.iv, mid, p1.suite.encr.block_len());
        let Opened { payloads, rest, hash, next } = open(p1, &iv, &m)?;
        if !ct_eq(&keys::qm_hash1(f, &p1.keys, mid, &rest), &hash) {
            return Err(Failure::HashMismatch);
        }
        let ids: Vec<&Id> = payloads
            .iter()
            .filter_map(|p| if let Payload::Id(i) = p { Some(i) } else { None })
            .collect();
        // Without proxy IDs the selectors are the peers' addresses (§5.5); we always name them.
        let [idci, idcr] = ids[..] else {
            return Err(Failure::Malformed(format!("{} proxy IDs (two expected)", ids.len())));
        };
        let shown =
            |i: &Id| selector(i).map_or_else(|| format!("ID type {}", i.ty), |t| t.to_string());
        let theirs = format!("{} <=> {}", shown(idcr), shown(idci));
        let (their_ts, our_ts) = match (selector(idci), selector(idcr)) {
            (Some(a), Some(b)) => (a, b),
            _ => return Err(Failure::ProxyIdMismatch { ours: String::new(), theirs }),
        };
        let cfg = configs
            .iter()
            .find(|c| c.local_ts.covers(&our_ts) && c.remote_ts.covers(&their_ts))
            .ok_or_else(|| Failure::ProxyIdMismatch {
                ours: configs
                    .iter()
                    .map(|c| format!("{} <=> {}", c.local_ts, c.remote_ts))
                    .collect::<Vec<_>>()
                    .join(", "),
                theirs,
            })?;
        let Some(Payload::Sa(sa)) = payloads.iter().find(|p| matches!(p, Payload::Sa(_))) else {
            return Err(Failure::Malformed("no SA payload in Quick Mode".into()));
        };
        let prop = sa
            .proposals
            .iter()
            .find(|p| p.protocol == PROTO_ESP && p.spi.len() == 4)
            .ok_or_else(|| Failure::Malformed("no ESP proposal with a 4-byte SPI".into()))?;
        let ke = payloads
            .iter()
            .find_map(|p| if let Payload::Ke(k) = p { Some(k.clone()) } else { None });
        let ni = payloads
            .iter()
            .find_map(|p| if let Payload::Nonce(n) = p { Some(n.clone()) } else { None })
            .ok_or_else(|| Failure::Malformed("no nonce in Quick Mode".into()))?;
        let offered: Vec<String> = prop
            .transforms
            .iter()
            .map(|t| esp_suite(t).map(|(s, _, _)| s.to_string()).unwrap_or_else(|w| w))
            .collect();
        let chosen = prop.transforms.iter().find_map(|t| {
            let (s, udp, life) = esp_suite(t).ok()?;
            // The PFS group is in the attributes: it must come with a KE of that group.
            let pfs_ok = s.dh.is_some() == ke.is_some();
            (pfs_ok && udp == cfg.udp && cfg.proposals.iter().any(|p| p.allows(&s)))
                .then(|| (t.clone(), s, life))
        });
        let (t, suite, life) = chosen.ok_or_else(|| Failure::NoProposalChosen {
            ours: list_to_string(&cfg.proposals),
            theirs: offered.join(", "),
        })?;
        let spi_out = u32::from_be_bytes(prop.spi[..4].try_into().unwrap_or_default());
        let offered_life = life;
        let life = life.map_or(cfg.life, |l| cfg.life.min(Duration::from_secs(l)));
        let nr = nonce(rng);
        let (ke_r, shared) = match (suite.dh, &ke) {
            (Some(g), Some(k)) => {
                let d = DhSecret::generate(g, rng);
                let s = d.shared(k)?;
                (Some(d.public()), Some(s))
            }
            _ => (None, None),
        };
        let reply = Sa {
            doi: DOI_IPSEC,
            situation: SIT_IDENTITY_ONLY,
            proposals: vec![codec::Proposal {
                num: prop.num,
                protocol: PROTO_ESP,
                spi: spi_in.to_be_bytes().to_vec(),
                transforms: vec![t],
            }],
        };
        let mut rest = vec![Payload::Sa(reply), Payload::Nonce(nr.clone())];
        if let Some(k) = ke_r {
            rest.push(Payload::Ke(k));
        }
        rest.extend([Payload::Id(idci.clone()), Payload::Id(idcr.clone())]);
        // A shorter lifetime than the initiator offered is announced, so that it rekeys in
        // time (RFC 2407 §4.6.3.1 RESPONDER-LIFETIME, for our inbound SA).
        if offered_life.is_some_and(|l| Duration::from_secs(l) > life) {
            rest.push(Payload::Notify(Notify {
                doi: DOI_IPSEC,
                protocol: PROTO_ESP,
                ty: notify::RESPONDER_LIFETIME,
                spi: spi_in.to_be_bytes().to_vec(),
                data: {
                    let mut d = Vec::new();
                    for a in [
                        Attribute::basic(p2::LIFE_TYPE, LIFE_SECONDS),
                        Attribute::number(p2::LIFE_DURATION, life.as_secs()),
                    ] {
                        codec::emit_attribute(&a, &mut d);
                    }
                    d
                },
            }));
        }
        let payloads = with_hash(&rest, |tail| keys::qm_hash2(f, &p1.keys, mid, &ni, tail));
        let h = header(p1.cky_i, p1.cky_r, exchange::QUICK, 0, mid);
        let (msg, next) =
            crypt::encrypt_message(h, &payloads, p1.suite.encr, &p1.keys.enc_key, &next)?;
        let child = keymat(
            p1,
            suite,
            shared.as_ref().map(|s| s.as_slice()),
            spi_in,
            spi_out,
            &ni,
            &nr,
            our_ts,
            their_ts,
            life,
            cfg.udp,
        );
        let qm = QuickMode {
            initiator: false,
            message_id: mid,
            iv: next,
            state: State::Sent2,
            cfg: cfg.clone(),
            spi_in,
            ni,
            nr,
            dh: None,
            pending: Some(Box::new(child)),
            last_in: datagram.to_vec(),
            last_out: msg.clone(),
        };
        Ok((qm, msg))
    }

    /// The selector pair and proposals this exchange negotiates (for a responder, the one of
    /// its configurations that took the peer's proxy IDs).
    pub fn config(&self) -> &QuickConfig {
        &self.cfg
    }

    /// The exchange's message ID.
    pub fn message_id(&self) -> u32 {
        self.message_id
    }

    /// Takes the next datagram of the exchange. A failure ends the exchange.
    pub fn handle(&mut self, p1: &Established, datagram: &[u8]) -> Result<QmStep, Failure> {
        if !self.last_in.is_empty() && datagram == self.last_in.as_slice() {
            return Ok(QmStep::Resend((!self.last_out.is_empty()).then(|| self.last_out.clone())));
        }
        let r = self.step(p1, datagram);
        if let Ok(step) = &r {
            self.last_in = datagram.to_vec();
            match step {
                QmStep::Send(m) | QmStep::Done { send: Some(m), .. } => self.last_out.clone_from(m),
                _ => self.last_out.clear(),
            }
        }
        self.state = State::Over;
        r
    }

    /// The last message we sent: what a retransmission timer sends again.
    pub fn last_sent(&self) -> &[u8] {
        &self.last_out
    }

    fn step(&mut self, p1: &Established, datagram: &[u8]) -> Result<QmStep, Failure> {
        let f = p1.suite.prf;
        let m = codec::parse_message(datagram)?;
        if m.header.message_id != self.message_id || m.header.exchange != exchange::QUICK {
            return Err(Failure::Malformed("another exchange".into()));
        }
        let Opened { payloads, rest, hash, next } = open(p1, &self.iv, &m)?;
        match self.state {
            State::Sent2 => {
                if !rest.is_empty()
                    || !ct_eq(
                        &keys::qm_hash3(f, &p1.keys, self.message_id, &self.ni, &self.nr),
                        &hash,
                    )
                {
                    return Err(Failure::HashMismatch);
                }
                let child =
                    self.pending.take().ok_or_else(|| Failure::Malformed("no SA".into()))?;
                Ok(QmStep::Done { send: None, child })
            }
            State::Sent1 => {
                let nr = payloads
                    .iter()
                    .find_map(|p| if let Payload::Nonce(n) = p { Some(n.clone()) } else { None })
                    .ok_or_else(|| Failure::Malformed("no nonce in Quick Mode".into()))?;
                if !ct_eq(&keys::qm_hash2(f, &p1.keys, self.message_id, &self.ni, &rest), &hash) {
                    return Err(Failure::HashMismatch);
                }
                let Some(Payload::Sa(sa)) = payloads.iter().find(|p| matches!(p, Payload::Sa(_)))
                else {
                    return Err(Failure::Malformed("no SA payload in Quick Mode".into()));
                };
                let ours = list_to_string(&self.cfg.proposals);
                let (prop, t) = match sa.proposals.as_slice() {
                    [p] if p.transforms.len() == 1 && p.spi.len() == 4 => (p, &p.transforms[0]),
                    _ => {
                        return Err(Failure::Malformed(
                            "the responder chose no single ESP transform".into(),
                        ));
                    }
                };
                let (suite, _, life) = esp_suite(t)
                    .map_err(|why| Failure::NoProposalChosen { ours: ours.clone(), theirs: why })?;
                if !self.cfg.proposals.iter().any(|p| p.allows(&suite)) {
                    return Err(Failure::NoProposalChosen { ours, theirs: suite.to_string() });
                }
                let ke = payloads
                    .iter()
                    .find_map(|p| if let Payload::Ke(k) = p { Some(k.clone()) } else { None });
                let shared = match (self.dh.take(), ke) {
                    (Some(d), Some(k)) => Some(d.shared(&k)?),
                    (None, None) => None,
                    _ => return Err(Failure::Malformed("PFS on one side only".into())),
                };
                let spi_out = u32::from_be_bytes(prop.spi[..4].try_into().unwrap_or_default());
                // The responder's RESPONDER-LIFETIME, if it sent one, is the SA's lifetime.
                let told = payloads.iter().find_map(|p| match p {
                    Payload::Notify(n) if n.ty == notify::RESPONDER_LIFETIME => {
                        codec::parse_attributes(&n.data)
                            .ok()?
                            .iter()
                            .find(|a| a.ty == p2::LIFE_DURATION)?
                            .as_u64()
                    }
                    _ => None,
                });
                let life = told.or(life);
                let life =
                    life.map_or(self.cfg.life, |l| self.cfg.life.min(Duration::from_secs(l)));
                self.nr = nr;
                let hash3 = keys::qm_hash3(f, &p1.keys, self.message_id, &self.ni, &self.nr);
                let h = header(p1.cky_i, p1.cky_r, exchange::QUICK, 0, self.message_id);
                let (msg, _) = crypt::encrypt_message(
                    h,
                    &[Payload::Hash(hash3)],
                    p1.suite.encr,
                    &p1.keys.enc_key,
                    &next,
                )?;
                let child = keymat(
                    p1,
                    suite,
                    shared.as_ref().map(|s| s.as_slice()),
                    self.spi_in,
                    spi_out,
                    &self.ni,
                    &self.nr,
                    self.cfg.local_ts,
                    self.cfg.remote_ts,
                    life,
                    self.cfg.udp,
                );
                Ok(QmStep::Done { send: Some(msg), child: Box::new(child) })
            }
            State::Over => Err(Failure::Malformed("the exchange is over".into())),
        }
    }
}

/// The SA pair's key material: each direction's KEYMAT is derived with the SPI of its
/// receiving side (§5.5), long enough for the cipher's key (and salt) and the integrity key.
#[allow(clippy::too_many_arguments)] // the inputs of §5.5 and the agreed parameters
fn keymat(
    p1: &Established,
    suite: EspSuite,
    shared: Option<&[u8]>,
    spi_in: u32,
    spi_out: u32,
    ni: &[u8],
    nr: &[u8],
    local_ts: TrafficSelector,
    remote_ts: TrafficSelector,
    life: Duration,
    udp: bool,
) -> ChildSa {
    let len = suite.encr.key_len() + suite.encr.salt_len() + suite.integ.map_or(0, |i| i.key_len());
    let km = |spi| keys::keymat(p1.suite.prf, &p1.keys, shared, PROTO_ESP, spi, ni, nr, len);
    ChildSa {
        suite,
        spi_in,
        spi_out,
        keymat_in: km(spi_in),
        keymat_out: km(spi_out),
        local_ts,
        remote_ts,
        life,
        udp,
    }
}

#[cfg(test)]
mod tests {
    use super::super::main_mode::{MainMode, Phase1Config, Step};
    use super::*;
    use crate::config::Psk;
    use crate::proposal::{parse_esp_list, parse_ike_list};
    use rand_chacha::ChaCha20Rng;
    use rand_core::SeedableRng;

    fn phase1(rng: &mut ChaCha20Rng) -> (Box<Established>, Box<Established>) {
        let c = |i: bool| Phase1Config {
            proposals: parse_ike_list("aes256-sha256-modp2048").unwrap(),
            life: Duration::from_secs(28_800),
            psk: Psk::new(b"k".to_vec()),
            local_id: (if i { "192.0.2.1" } else { "198.51.100.2" }).parse().unwrap(),
            remote_id: (if i { "198.51.100.2" } else { "192.0.2.1" }).parse().unwrap(),
            local: (if i { "192.0.2.1:500" } else { "198.51.100.2:500" }).parse().unwrap(),
            remote: (if i { "198.51.100.2:500" } else { "192.0.2.1:500" }).parse().unwrap(),
        };
        let (mut i, m1) = MainMode::initiate(c(true), rng).unwrap();
        let (mut r, m2) = MainMode::respond(c(false), &m1, rng).unwrap();
        let Step::Send(m3) = i.handle(&m2, rng).unwrap() else { panic!() };
        let Step::Send(m4) = r.handle(&m3, rng).unwrap() else { panic!() };
        let Step::Send(m5) = i.handle(&m4, rng).unwrap() else { panic!() };
        let Step::Done { send: Some(m6), sa: rsa } = r.handle(&m5, rng).unwrap() else { panic!() };
        let Step::Done { sa: isa, .. } = i.handle(&m6, rng).unwrap() else { panic!() };
        (isa, rsa)
    }

    fn qc(local: &str, remote: &str, esp: &str) -> QuickConfig {
        QuickConfig {
            proposals: parse_esp_list(esp).unwrap(),
            life: Duration::from_secs(3600),
            local_ts: local.parse().unwrap(),
            remote_ts: remote.parse().unwrap(),
            udp: false,
        }
    }

    fn run(ic: QuickConfig, rc: &[QuickConfig]) -> Result<(Box<ChildSa>, Box<ChildSa>), Failure> {
        let mut rng = ChaCha20Rng::from_seed([4; 32]);
        let (p_i, p_r) = phase1(&mut rng);
        let (mut qi, m1) = QuickMode::initiate(&p_i, ic, 0x1234_5678, 0xc1c1_0001, &mut rng)?;
        let (mut qr, m2) = QuickMode::respond(&p_r, rc, &m1, 0xd2d2_0002, &mut rng)?;
        let QmStep::Done { send: Some(m3), child: ci } = qi.handle(&p_i, &m2)? else { panic!() };
        // Retransmissions get the same answers: message 1 repeated (our 2 was lost) and
        // message 2 repeated (our 3 was lost).
        let QmStep::Resend(Some(again)) = qi.handle(&p_i, &m2)? else { panic!() };
        assert_eq!(again, m3);
        let QmStep::Done { send: None, child: cr } = qr.handle(&p_r, &m3)? else { panic!() };
        let QmStep::Resend(None) = qr.handle(&p_r, &m3)? else { panic!() };
        assert!(qr.last_sent().is_empty(), "nothing to repeat once the exchange is complete");
        Ok((ci, cr))
    }

    #[test]
    fn quick_mode_pairs_the_spis_and_keys_with_and_without_pfs() {
        for (esp, want) in [
            ("aes128-sha256-modp2048", "aes128-sha256-modp2048-noesn"),
            ("aes256-sha1", "aes256-sha1-noesn"),
            ("aes128gcm16-ecp256", "aes128gcm16-ecp256-noesn"),
        ] {
            let (i, r) = run(
                qc("10.1.0.0/16", "10.2.0.0/24", esp),
                &[qc("10.2.0.0/16", "10.1.0.0/16", esp)],
            )
            .unwrap();
            assert_eq!(i.suite.to_string(), want);
            assert_eq!(r.suite, i.suite);
            assert_eq!((i.spi_in, i.spi_out), (0xc1c1_0001, 0xd2d2_0002));
            assert_eq!((r.spi_in, r.spi_out), (i.spi_out, i.spi_in));
            assert_eq!(i.keymat_out[..], r.keymat_in[..], "{want}");
            assert_eq!(i.keymat_in[..], r.keymat_out[..], "{want}");
            assert_ne!(i.keymat_in[..], i.keymat_out[..]);
            // The responder takes the initiator's narrower selectors.
            assert_eq!(r.local_ts.to_string(), "10.2.0.0/24");
            assert_eq!(r.remote_ts.to_string(), "10.1.0.0/16");
        }
    }

    #[test]
    fn a_responder_with_a_shorter_lifetime_says_so_and_the_initiator_follows() {
        let mut short = qc("10.2.0.0/16", "10.1.0.0/16", "aes128-sha256");
        short.life = Duration::from_secs(600);
        let (i, r) = run(qc("10.1.0.0/16", "10.2.0.0/16", "aes128-sha256"), &[short]).unwrap();
        assert_eq!((i.life, r.life), (Duration::from_secs(600), Duration::from_secs(600)));
    }

    #[test]
    fn a_proxy_id_mismatch_is_named_on_the_responder() {
        let e = run(
            qc("10.1.0.0/16", "10.9.0.0/24", "aes128-sha256"),
            &[qc("10.2.0.0/16", "10.1.0.0/16", "aes128-sha256")],
        )
        .unwrap_err();
        assert_eq!(
            e,
            Failure::ProxyIdMismatch {
                ours: "10.2.0.0/16 <=> 10.1.0.0/16".into(),
                theirs: "10.9.0.0/24 <=> 10.1.0.0/16".into()
            }
        );
        assert_eq!(e.notify(), Some(super::super::main_mode::notify::INVALID_ID_INFORMATION));
        let e = run(
            qc("10.1.0.0/16", "10.2.0.0/16", "aes128-sha256"),
            &[qc("10.2.0.0/16", "10.1.0.0/16", "aes256-sha512")],
        )
        .unwrap_err();
        assert!(matches!(e, Failure::NoProposalChosen { .. }), "{e:?}");
    }

    #[test]
    fn proxy_ids_round_trip_and_port_ranges_are_refused() {
        let mut all: Vec<TrafficSelector> = ["10.1.0.0/16", "10.1.2.3/32", "2001:db8::/48"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        let range = TrafficSelector {
            start: "10.0.0.1".parse().unwrap(),
            end: "10.0.0.6".parse().unwrap(),
            ..all[0]
        };
        all.push(range);
        let types: Vec<u8> = all.iter().map(|t| proxy_id(t).unwrap().ty).collect();
        assert_eq!(types, [4, 1, 6, 7]);
        for ts in all {
            assert_eq!(selector(&proxy_id(&ts).unwrap()), Some(ts), "{ts}");
        }
        let mut web: TrafficSelector = "10.1.0.0/16".parse().unwrap();
        web.proto = 6;
        web.ports = PortRange { first: 443, last: 443 };
        assert_eq!(selector(&proxy_id(&web).unwrap()), Some(web));
        web.ports.last = 444;
        assert!(proxy_id(&web).unwrap_err().contains("one port or any"));
        assert_eq!(selector(&Id { ty: 4, protocol: 0, port: 0, data: vec![1; 7] }), None);
    }
}

//! Phase 1 in Main Mode with a pre-shared key (RFC 2409 §5, §5.4), both roles:
//!
//! ```text
//!   1  I -> R  HDR, SA                          (our transforms)
//!   2  R -> I  HDR, SA                          (the one chosen, as offered)
//!   3  I -> R  HDR, KE, Ni [, NAT-D, NAT-D]
//!   4  R -> I  HDR, KE, Nr [, NAT-D, NAT-D]
//!   5  I -> R  HDR*, IDii, HASH_I [, N(INITIAL-CONTACT)]
//!   6  R -> I  HDR*, IDir, HASH_R
//! ```
//!
//! Each side is a [`MainMode`] that takes datagrams and gives the next one to send, until
//! [`Step::Done`] hands over the ISAKMP SA. Failures say what was offered and what was
//! received, so the endpoint can explain them the way IKEv2's are. Retransmission and timers
//! belong to the endpoint.

use std::net::SocketAddr;
use std::time::Duration;

use rand_core::CryptoRngCore;

use crate::codec::ExchangeType;
use crate::config::{Identity, Psk};
use crate::crypto::{DhSecret, ct_eq};
use crate::proposal::{IkeProposal, IkeSuite, list_to_string};

use super::codec::{
    self, Body, DOI_IPSEC, Id, Notify, Payload, Proposal, SIT_IDENTITY_ONLY, Sa, exchange, header,
    payload_type,
};
use super::crypt;
use super::keys::{self, Phase1Keys};
use super::proposal::{PROTO_ISAKMP, phase1_suite, phase1_transforms, select_phase1};

/// The Vendor ID of RFC 3947 NAT traversal (§3.1: MD5 of "RFC 3947").
pub const VID_NAT_T: [u8; 16] =
    *b"\x4a\x13\x1c\x81\x07\x03\x58\x45\x5c\x57\x28\xf2\x0e\x95\x45\x2f";
/// The Vendor ID of Dead Peer Detection (RFC 3706 §5.2), with major 1, minor 0.
pub const VID_DPD: [u8; 16] = *b"\xaf\xca\xd7\x13\x68\xa1\xf1\xc9\x6b\x86\x96\xfc\x77\x57\x01\x00";

/// IKEv1 notify message types (RFC 2408 §3.14.1, RFC 2407 §4.6.3, RFC 3706 §5.1).
pub mod notify {
    /// NO-PROPOSAL-CHOSEN.
    pub const NO_PROPOSAL_CHOSEN: u16 = 14;
    /// INVALID-ID-INFORMATION (the classic proxy-ID mismatch, and a wrong phase-1 identity).
    pub const INVALID_ID_INFORMATION: u16 = 18;
    /// INVALID-HASH-INFORMATION (usually a different pre-shared key).
    pub const INVALID_HASH_INFORMATION: u16 = 23;
    /// AUTHENTICATION-FAILED.
    pub const AUTHENTICATION_FAILED: u16 = 24;
    /// RESPONDER-LIFETIME.
    pub const RESPONDER_LIFETIME: u16 = 24576;
    /// INITIAL-CONTACT.
    pub const INITIAL_CONTACT: u16 = 24578;
    /// R-U-THERE (DPD).
    pub const R_U_THERE: u16 = 36136;
    /// R-U-THERE-ACK (DPD).
    pub const R_U_THERE_ACK: u16 = 36137;
}

/// Nonce length (RFC 2409 §5: between 8 and 256 bytes).
const NONCE_LEN: usize = 32;

/// What one side of a phase-1 exchange needs.
#[derive(Clone, Debug)]
pub struct Phase1Config {
    /// Our proposals, in order of preference (the CBC suites are used).
    pub proposals: Vec<IkeProposal>,
    /// The ISAKMP SA lifetime we offer or accept at most.
    pub life: Duration,
    /// The pre-shared key.
    pub psk: Psk,
    /// Our identity.
    pub local_id: Identity,
    /// The identity the peer must present.
    pub remote_id: Identity,
    /// Our address and port.
    pub local: SocketAddr,
    /// The peer's address and port.
    pub remote: SocketAddr,
}

/// Why phase 1 failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Failure {
    /// No suite in common: ours and theirs in strongSwan's syntax.
    NoProposalChosen {
        /// What we offered or accept.
        ours: String,
        /// What the peer offered or chose.
        theirs: String,
    },
    /// The peer's HASH does not verify: the pre-shared keys differ (or the message was
    /// corrupted on the way).
    HashMismatch,
    /// The peer presented another identity than the one configured.
    IdentityMismatch {
        /// The configured remote identity.
        expected: String,
        /// What the peer sent.
        got: String,
    },
    /// Quick Mode proxy IDs that no selector pair of ours covers: ours and theirs, each as
    /// `local <=> remote` from its own side.
    ProxyIdMismatch {
        /// Our selector pairs.
        ours: String,
        /// What the peer proposed.
        theirs: String,
    },
    /// The peer answered with an error notification.
    Notified(u16),
    /// A message we cannot use here: what is wrong with it.
    Malformed(String),
}

impl Failure {
    /// The notification to send the peer about it, if any (RFC 2408 §3.14.1).
    pub fn notify(&self) -> Option<u16> {
        match self {
            Failure::NoProposalChosen { .. } => Some(notify::NO_PROPOSAL_CHOSEN),
            Failure::HashMismatch => Some(notify::INVALID_HASH_INFORMATION),
            Failure::IdentityMismatch { .. } | Failure::ProxyIdMismatch { .. } => {
                Some(notify::INVALID_ID_INFORMATION)
            }
            Failure::Notified(_) | Failure::Malformed(_) => None,
        }
    }
}

impl From<crate::error::Error> for Failure {
    fn from(e: crate::error::Error) -> Failure {
        Failure::Malformed(e.to_string())
    }
}

/// NAT on the path, from the NAT-D payloads (RFC 3947 §3.2).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NatState {
    /// Both sides announced RFC 3947 NAT traversal.
    pub supported: bool,
    /// A NAT changes our address or port.
    pub local_behind: bool,
    /// A NAT changes the peer's address or port.
    pub remote_behind: bool,
}

/// An established ISAKMP SA.
#[derive(Debug)]
pub struct Established {
    /// Initiator's cookie.
    pub cky_i: u64,
    /// Responder's cookie.
    pub cky_r: u64,
    /// The suite.
    pub suite: IkeSuite,
    /// Its keys.
    pub keys: Phase1Keys,
    /// The last CBC block of the exchange: the seed of phase-2 IVs (RFC 2409 Appendix B).
    pub iv: Vec<u8>,
    /// The lifetime both sides agreed on.
    pub life: Duration,
    /// The identity the peer proved.
    pub peer_id: Identity,
    /// NAT traversal.
    pub nat: NatState,
    /// The peer announced DPD (RFC 3706).
    pub peer_dpd: bool,
}

/// What to do after a datagram.
#[derive(Debug)]
pub enum Step {
    /// Send this datagram and wait for the next.
    Send(Vec<u8>),
    /// The peer sent its last message again (ours was lost): send our answer again, if there
    /// was one. Nothing else changes (RFC 2408 §5 leaves retransmission to the sender).
    Resend(Option<Vec<u8>>),
    /// Phase 1 is complete; send `send` if there is one (the responder's last message).
    Done {
        /// The last message, for the responder.
        send: Option<Vec<u8>>,
        /// The ISAKMP SA.
        sa: Box<Established>,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Initiator: message 1 sent.
    SentSa,
    /// Initiator: message 3 sent.
    SentKe,
    /// Initiator: message 5 sent.
    SentId,
    /// Responder: message 2 sent.
    SentSaReply,
    /// Responder: message 4 sent.
    SentKeReply,
    /// Aggressive Mode initiator: message 1 sent.
    AggrSent1,
    /// Aggressive Mode responder: message 2 sent.
    AggrSent2,
    /// Finished (or failed).
    Over,
}

/// One side of a Main Mode exchange.
pub struct MainMode {
    cfg: Phase1Config,
    initiator: bool,
    /// Main Mode, or Aggressive Mode (§5.4: three messages, identities in clear).
    exchange: ExchangeType,
    cky_i: u64,
    cky_r: u64,
    state: State,
    /// The body of the initiator's SA payload as sent: HASH_I and HASH_R cover it.
    sai_b: Vec<u8>,
    suite: Option<IkeSuite>,
    life: Duration,
    dh: Option<DhSecret>,
    gxi: Vec<u8>,
    gxr: Vec<u8>,
    ni: Vec<u8>,
    nr: Vec<u8>,
    keys: Option<Phase1Keys>,
    /// The IV of the next encrypted message.
    iv: Vec<u8>,
    nat: NatState,
    peer_dpd: bool,
    /// Aggressive Mode: the peer's identity and ID payload body, received in clear.
    peer_id: Option<Identity>,
    peer_idii: Vec<u8>,
    /// Send INITIAL-CONTACT in message 5 (not in a re-keying phase 1, where the peer must keep
    /// the IPsec SAs).
    initial_contact: bool,
    /// The last datagram taken and what it was answered with, for retransmissions.
    last_in: Vec<u8>,
    last_out: Vec<u8>,
}

impl std::fmt::Debug for MainMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MainMode")
            .field("initiator", &self.initiator)
            .field("cky_i", &format_args!("{:016x}", self.cky_i))
            .field("cky_r", &format_args!("{:016x}", self.cky_r))
            .field("state", &self.state)
            .field("suite", &self.suite)
            .finish_non_exhaustive()
    }
}

fn cookie(rng: &mut impl CryptoRngCore) -> u64 {
    loop {
        let c = rng.next_u64();
        if c != 0 {
            return c;
        }
    }
}

/// A fresh nonce (RFC 2409 §5: 8 to 256 bytes; 32 as strongSwan sends), for phase 1 and
/// Quick Mode alike.
pub(super) fn nonce(rng: &mut impl CryptoRngCore) -> Vec<u8> {
    let mut n = vec![0; NONCE_LEN];
    rng.fill_bytes(&mut n);
    n
}

/// Payload bodies as sent, with their types.
type Raw = Vec<(u8, Vec<u8>)>;

/// The message's cookies, exchange and plaintext payload chain (raw bodies with their types).
fn plain(d: &[u8]) -> Result<(codec::Message, Raw), Failure> {
    let m = codec::parse_message(d)?;
    if m.header.exchange != exchange::MAIN && m.header.exchange != exchange::AGGRESSIVE {
        return Err(Failure::Malformed(format!("exchange {} in phase 1", m.header.exchange)));
    }
    let raw = match &m.body {
        Body::Plain(_) => codec::chain(m.header.next_payload, &d[crate::codec::HEADER_LEN..])?
            .into_iter()
            .map(|(t, b)| (t, b.to_vec()))
            .collect(),
        Body::Encrypted(_) => Vec::new(),
    };
    Ok((m, raw))
}

fn find(raw: &[(u8, Vec<u8>)], ty: u8) -> Option<&[u8]> {
    raw.iter().find(|(t, _)| *t == ty).map(|(_, b)| b.as_slice())
}

fn notified(payloads: &[Payload]) -> Option<u16> {
    payloads.iter().find_map(|p| match p {
        Payload::Notify(n) if n.ty < 16384 => Some(n.ty),
        _ => None,
    })
}

fn id_payload(i: &Identity, fallback: std::net::IpAddr) -> Id {
    let (ty, data) = i.to_wire(fallback);
    Id { ty, protocol: 0, port: 0, data }
}

fn offered(p: &Proposal) -> String {
    let shown: Vec<String> = p
        .transforms
        .iter()
        .map(|t| phase1_suite(t).map(|(s, _)| s.to_string()).unwrap_or_else(|why| why))
        .collect();
    shown.join(", ")
}

impl MainMode {
    /// Starts phase 1 as initiator: the state and message 1.
    pub fn initiate(
        cfg: Phase1Config,
        rng: &mut impl CryptoRngCore,
    ) -> Result<(MainMode, Vec<u8>), Failure> {
        let (mut mm, sa) = MainMode::offer(cfg, rng)?;
        mm.state = State::SentSa;
        let h = header(mm.cky_i, 0, exchange::MAIN, 0, 0);
        let msg = codec::encode_plain(
            h,
            &[sa, Payload::Vendor(VID_NAT_T.to_vec()), Payload::Vendor(VID_DPD.to_vec())],
        );
        mm.last_out.clone_from(&msg);
        Ok((mm, msg))
    }

    /// An initiator's state with its SA payload (kept as SAi_b for the hashes).
    fn offer(
        cfg: Phase1Config,
        rng: &mut impl CryptoRngCore,
    ) -> Result<(MainMode, Payload), Failure> {
        let transforms = phase1_transforms(&cfg.proposals, cfg.life).ok_or_else(|| {
            Failure::NoProposalChosen {
                ours: list_to_string(&cfg.proposals),
                theirs: "(IKEv1 phase 1 has no AEAD cipher: add a CBC proposal such as aes256-sha256-modp2048)".into(),
            }
        })?;
        let sa = Sa {
            doi: DOI_IPSEC,
            situation: SIT_IDENTITY_ONLY,
            proposals: vec![Proposal { num: 1, protocol: PROTO_ISAKMP, spi: vec![], transforms }],
        };
        let sa = Payload::Sa(sa);
        let mut sai_b = Vec::new();
        codec::emit_payloads(std::slice::from_ref(&sa), &mut sai_b);
        sai_b.drain(..4);
        let mut mm = MainMode::new(cfg, true, cookie(rng), 0);
        mm.sai_b = sai_b;
        Ok((mm, sa))
    }

    /// Starts phase 1 in Aggressive Mode (§5.4) as initiator: the state and message 1, which
    /// carries our key share and identity at once, so only the first group of our first CBC
    /// proposal is offered. Aggressive Mode lets an eavesdropper guess the PSK offline from
    /// HASH_R; the configuration warns where it is turned on.
    pub fn initiate_aggressive(
        mut cfg: Phase1Config,
        rng: &mut impl CryptoRngCore,
    ) -> Result<(MainMode, Vec<u8>), Failure> {
        let all = cfg.proposals.clone();
        let group = phase1_transforms(&all, cfg.life)
            .and_then(|t| phase1_suite(&t[0]).ok())
            .map(|(s, _)| s.dh)
            .ok_or_else(|| Failure::NoProposalChosen {
                ours: list_to_string(&all),
                theirs: "(IKEv1 phase 1 has no AEAD cipher: add a CBC proposal)".into(),
            })?;
        for p in &mut cfg.proposals {
            p.dh.retain(|g| *g == group);
        }
        cfg.proposals.retain(|p| !p.dh.is_empty());
        let (mut mm, sa) = MainMode::offer(cfg, rng)?;
        mm.exchange = exchange::AGGRESSIVE;
        let dh = DhSecret::generate(group, rng);
        mm.gxi = dh.public();
        mm.dh = Some(dh);
        mm.ni = nonce(rng);
        mm.state = State::AggrSent1;
        let id = id_payload(&mm.cfg.local_id, mm.cfg.local.ip());
        let out = [
            sa,
            Payload::Ke(mm.gxi.clone()),
            Payload::Nonce(mm.ni.clone()),
            Payload::Id(id),
            Payload::Vendor(VID_NAT_T.to_vec()),
            Payload::Vendor(VID_DPD.to_vec()),
        ];
        let msg = codec::encode_plain(header(mm.cky_i, 0, exchange::AGGRESSIVE, 0, 0), &out);
        mm.last_out.clone_from(&msg);
        Ok((mm, msg))
    }

    /// Answers message 1 as responder: the state and message 2.
    pub fn respond(
        cfg: Phase1Config,
        datagram: &[u8],
        rng: &mut impl CryptoRngCore,
    ) -> Result<(MainMode, Vec<u8>), Failure> {
        let (m, raw) = plain(datagram)?;
        let Body::Plain(payloads) = &m.body else {
            return Err(Failure::Malformed("an encrypted first message".into()));
        };
        if m.header.spi_r != 0 || m.header.message_id != 0 {
            return Err(Failure::Malformed("a first message with a responder cookie".into()));
        }
        let sai_b = find(&raw, payload_type::SA)
            .ok_or_else(|| Failure::Malformed("no SA payload in message 1".into()))?
            .to_vec();
        let Some(Payload::Sa(sa)) = payloads.iter().find(|p| matches!(p, Payload::Sa(_))) else {
            return Err(Failure::Malformed("no SA payload in message 1".into()));
        };
        let prop = sa
            .proposals
            .first()
            .filter(|p| p.protocol == PROTO_ISAKMP && sa.doi == DOI_IPSEC)
            .ok_or_else(|| Failure::Malformed("no ISAKMP proposal for the IPsec DOI".into()))?;
        let (chosen, suite, life) =
            select_phase1(&cfg.proposals, prop).ok_or_else(|| Failure::NoProposalChosen {
                ours: list_to_string(&cfg.proposals),
                theirs: offered(prop),
            })?;
        let mut mm = MainMode::new(cfg, false, m.header.spi_i, cookie(rng));
        mm.sai_b = sai_b;
        mm.suite = Some(suite);
        // The initiator's lifetime unless ours is shorter (RFC 2409 §4.5 lets either side
        // expire first; the shorter one avoids a surprise expiry on the peer).
        mm.life = life.map_or(mm.cfg.life, |l| mm.cfg.life.min(Duration::from_secs(l)));
        mm.vendor_ids(payloads);
        mm.exchange = m.header.exchange;
        mm.state = State::SentSaReply;
        let reply = Sa {
            doi: DOI_IPSEC,
            situation: SIT_IDENTITY_ONLY,
            proposals: vec![Proposal { transforms: vec![chosen], ..prop.clone() }],
        };
        let mut out = vec![Payload::Sa(reply)];
        if mm.nat.supported {
            out.push(Payload::Vendor(VID_NAT_T.to_vec()));
        }
        out.push(Payload::Vendor(VID_DPD.to_vec()));
        if mm.exchange == exchange::AGGRESSIVE {
            // §5.4 message 2: our key share, nonce, identity and HASH_R after checking theirs.
            mm.gxi = find(&raw, payload_type::KE)
                .ok_or_else(|| Failure::Malformed("no KE payload in message 1".into()))?
                .to_vec();
            mm.ni = find(&raw, payload_type::NONCE)
                .ok_or_else(|| Failure::Malformed("no nonce in message 1".into()))?
                .to_vec();
            let idii_b = find(&raw, payload_type::ID)
                .ok_or_else(|| Failure::Malformed("no ID payload in message 1".into()))?
                .to_vec();
            mm.peer_id = Some(mm.check_id(&idii_b)?);
            mm.check_nat(&raw)?;
            let dh = DhSecret::generate(suite.dh, rng);
            mm.gxr = dh.public();
            let shared = dh.shared(&mm.gxi)?;
            mm.nr = nonce(rng);
            mm.derive(&shared)?;
            mm.peer_idii = idii_b;
            let our = id_payload(&mm.cfg.local_id, mm.cfg.local.ip());
            let hash_r = mm.hash(false, &our.body())?;
            out.splice(
                1..1,
                [
                    Payload::Ke(mm.gxr.clone()),
                    Payload::Nonce(mm.nr.clone()),
                    Payload::Id(our),
                    Payload::Hash(hash_r),
                ],
            );
            if mm.nat.supported {
                out.push(Payload::NatD(mm.nat_hash(suite, mm.cfg.remote)));
                out.push(Payload::NatD(mm.nat_hash(suite, mm.cfg.local)));
            }
            mm.state = State::AggrSent2;
        }
        let h = header(mm.cky_i, mm.cky_r, mm.exchange, 0, 0);
        let msg = codec::encode_plain(h, &out);
        mm.last_in = datagram.to_vec();
        mm.last_out.clone_from(&msg);
        Ok((mm, msg))
    }

    fn new(cfg: Phase1Config, initiator: bool, cky_i: u64, cky_r: u64) -> MainMode {
        let life = cfg.life;
        MainMode {
            cfg,
            initiator,
            exchange: exchange::MAIN,
            cky_i,
            cky_r,
            state: State::Over,
            sai_b: Vec::new(),
            suite: None,
            life,
            dh: None,
            gxi: Vec::new(),
            gxr: Vec::new(),
            ni: Vec::new(),
            nr: Vec::new(),
            keys: None,
            iv: Vec::new(),
            nat: NatState::default(),
            peer_dpd: false,
            peer_id: None,
            peer_idii: Vec::new(),
            initial_contact: true,
            last_in: Vec::new(),
            last_out: Vec::new(),
        }
    }

    /// Leaves INITIAL-CONTACT (RFC 2407 §4.6.3.3) out of message 5: this phase 1 replaces one
    /// whose IPsec SAs the peer must keep.
    pub fn without_initial_contact(&mut self) {
        self.initial_contact = false;
    }

    /// True once our identity and HASH are sent and we wait for the peer's: no answer now most
    /// often means the peer could not verify our HASH (a different pre-shared key).
    pub fn awaits_peer_hash(&self) -> bool {
        self.state == State::SentId
    }

    /// The cookies (initiator's, responder's; 0 until known).
    pub fn cookies(&self) -> (u64, u64) {
        (self.cky_i, self.cky_r)
    }

    /// What the NAT-D payloads showed so far: after message 3 or 4 with a NAT between us, the
    /// exchange moves to port 4500 (RFC 3947 §4).
    pub fn nat(&self) -> NatState {
        self.nat
    }

    /// True while the exchange waits for a message.
    pub fn is_open(&self) -> bool {
        self.state != State::Over
    }

    /// Takes the next datagram of the exchange. A failure ends the exchange.
    pub fn handle(
        &mut self,
        datagram: &[u8],
        rng: &mut impl CryptoRngCore,
    ) -> Result<Step, Failure> {
        if !self.last_in.is_empty() && datagram == self.last_in.as_slice() {
            return Ok(Step::Resend((!self.last_out.is_empty()).then(|| self.last_out.clone())));
        }
        let r = self.step(datagram, rng);
        match &r {
            Ok(Step::Send(m) | Step::Done { send: Some(m), .. }) => {
                self.last_in = datagram.to_vec();
                self.last_out.clone_from(m);
            }
            Ok(_) => {
                self.last_in = datagram.to_vec();
                self.last_out.clear();
            }
            Err(_) => self.state = State::Over,
        }
        r
    }

    /// The last message we sent: what a retransmission timer sends again.
    pub fn last_sent(&self) -> &[u8] {
        &self.last_out
    }

    fn step(&mut self, datagram: &[u8], rng: &mut impl CryptoRngCore) -> Result<Step, Failure> {
        let (m, raw) = plain(datagram)?;
        if m.header.exchange != self.exchange {
            return Err(Failure::Malformed(format!(
                "exchange {} in {}",
                m.header.exchange, self.exchange
            )));
        }
        if m.header.spi_i != self.cky_i || (self.cky_r != 0 && m.header.spi_r != self.cky_r) {
            return Err(Failure::Malformed("cookies of another exchange".into()));
        }
        if let Body::Plain(p) = &m.body
            && let Some(ty) = notified(p)
        {
            return Err(Failure::Notified(ty));
        }
        match (self.state, &m.body) {
            (State::SentSa, Body::Plain(p)) => {
                self.take_choice(m.header.spi_r, p)?;
                let suite = self.suite.ok_or_else(|| Failure::Malformed("no suite".into()))?;
                let dh = DhSecret::generate(suite.dh, rng);
                self.gxi = dh.public();
                self.dh = Some(dh);
                self.ni = nonce(rng);
                self.state = State::SentKe;
                Ok(Step::Send(self.ke_message(self.gxi.clone(), self.ni.clone())))
            }
            (State::SentSaReply, Body::Plain(_)) => {
                let suite = self.suite.ok_or_else(|| Failure::Malformed("no suite".into()))?;
                self.gxi = find(&raw, payload_type::KE)
                    .ok_or_else(|| Failure::Malformed("no KE payload in message 3".into()))?
                    .to_vec();
                self.ni = find(&raw, payload_type::NONCE)
                    .ok_or_else(|| Failure::Malformed("no nonce in message 3".into()))?
                    .to_vec();
                self.check_nat(&raw)?;
                let dh = DhSecret::generate(suite.dh, rng);
                self.gxr = dh.public();
                let shared = dh.shared(&self.gxi)?;
                self.nr = nonce(rng);
                self.derive(&shared)?;
                self.state = State::SentKeReply;
                Ok(Step::Send(self.ke_message(self.gxr.clone(), self.nr.clone())))
            }
            (State::SentKe, Body::Plain(_)) => {
                self.gxr = find(&raw, payload_type::KE)
                    .ok_or_else(|| Failure::Malformed("no KE payload in message 4".into()))?
                    .to_vec();
                self.nr = find(&raw, payload_type::NONCE)
                    .ok_or_else(|| Failure::Malformed("no nonce in message 4".into()))?
                    .to_vec();
                self.check_nat(&raw)?;
                let dh = self.dh.take().ok_or_else(|| Failure::Malformed("no DH".into()))?;
                let shared = dh.shared(&self.gxr)?;
                self.derive(&shared)?;
                // Message 5: our identity and HASH_I, encrypted with the first IV.
                let id = id_payload(&self.cfg.local_id, self.cfg.local.ip());
                let hash = self.hash(true, &id.body())?;
                let ic = Notify {
                    doi: DOI_IPSEC,
                    protocol: PROTO_ISAKMP,
                    ty: notify::INITIAL_CONTACT,
                    spi: [self.cky_i.to_be_bytes(), self.cky_r.to_be_bytes()].concat(),
                    data: Vec::new(),
                };
                let mut out = vec![Payload::Id(id), Payload::Hash(hash), Payload::Notify(ic)];
                if !self.initial_contact {
                    out.pop();
                }
                let msg = self.encrypt(&out)?;
                self.state = State::SentId;
                Ok(Step::Send(msg))
            }
            (State::SentKeReply, Body::Encrypted(ct)) => {
                let (id, id_b, hash) = self.open_id(m.header.next_payload, ct)?;
                if !ct_eq(&self.hash(true, &id_b)?, &hash) {
                    return Err(Failure::HashMismatch);
                }
                let our = id_payload(&self.cfg.local_id, self.cfg.local.ip());
                let hash_r = self.hash(false, &our.body())?;
                let msg = self.encrypt(&[Payload::Id(our), Payload::Hash(hash_r)])?;
                self.state = State::Over;
                Ok(Step::Done { send: Some(msg), sa: Box::new(self.established(id)?) })
            }
            (State::SentId, Body::Encrypted(ct)) => {
                let (id, id_b, hash) = self.open_id(m.header.next_payload, ct)?;
                if !ct_eq(&self.hash(false, &id_b)?, &hash) {
                    return Err(Failure::HashMismatch);
                }
                self.state = State::Over;
                Ok(Step::Done { send: None, sa: Box::new(self.established(id)?) })
            }
            (State::AggrSent1, Body::Plain(p)) => {
                self.take_choice(m.header.spi_r, p)?;
                let need = |ty, what: &str| {
                    find(&raw, ty)
                        .map(<[u8]>::to_vec)
                        .ok_or_else(|| Failure::Malformed(format!("no {what} in message 2")))
                };
                self.gxr = need(payload_type::KE, "KE payload")?;
                self.nr = need(payload_type::NONCE, "nonce")?;
                let idir_b = need(payload_type::ID, "ID payload")?;
                let hash_r = need(payload_type::HASH, "HASH payload")?;
                self.check_nat(&raw)?;
                let dh = self.dh.take().ok_or_else(|| Failure::Malformed("no DH".into()))?;
                let shared = dh.shared(&self.gxr)?;
                self.derive(&shared)?;
                let peer = self.check_id(&idir_b)?;
                if !ct_eq(&self.hash(false, &idir_b)?, &hash_r) {
                    return Err(Failure::HashMismatch);
                }
                let id = id_payload(&self.cfg.local_id, self.cfg.local.ip());
                let mut out = vec![Payload::Hash(self.hash(true, &id.body())?)];
                if self.nat.supported {
                    let s = self.suite()?;
                    out.push(Payload::NatD(self.nat_hash(s, self.cfg.remote)));
                    out.push(Payload::NatD(self.nat_hash(s, self.cfg.local)));
                }
                let msg = self.encrypt(&out)?;
                self.state = State::Over;
                Ok(Step::Done { send: Some(msg), sa: Box::new(self.established(peer)?) })
            }
            (State::AggrSent2, body) => {
                let raw = match body {
                    Body::Plain(_) => raw,
                    Body::Encrypted(ct) => {
                        let s = self.suite()?;
                        let k = self
                            .keys
                            .as_ref()
                            .ok_or_else(|| Failure::Malformed("no keys".into()))?;
                        let (plain, next) = crypt::open(s.encr, &k.enc_key, &self.iv, ct)?;
                        let chain = codec::chain(m.header.next_payload, &plain)
                            .map_err(|_| Failure::HashMismatch)?;
                        self.iv = next;
                        chain.into_iter().map(|(t, b)| (t, b.to_vec())).collect()
                    }
                };
                let hash = find(&raw, payload_type::HASH).ok_or(Failure::HashMismatch)?.to_vec();
                if !ct_eq(&self.hash(true, &self.peer_idii.clone())?, &hash) {
                    return Err(Failure::HashMismatch);
                }
                self.check_nat(&raw)?;
                let peer =
                    self.peer_id.take().ok_or_else(|| Failure::Malformed("no peer".into()))?;
                self.state = State::Over;
                Ok(Step::Done { send: None, sa: Box::new(self.established(peer)?) })
            }
            (s, _) => Err(Failure::Malformed(format!("an unexpected message in state {s:?}"))),
        }
    }

    /// Message 2's common part: the responder's cookie (a reflected message 1 has none), its
    /// choice, and what its vendor IDs announce.
    fn take_choice(&mut self, spi_r: u64, p: &[Payload]) -> Result<(), Failure> {
        if spi_r == 0 {
            return Err(Failure::Malformed("a reply without a responder cookie".into()));
        }
        self.cky_r = spi_r;
        self.chosen(p)?;
        self.vendor_ids(p);
        Ok(())
    }

    /// DPD and RFC 3947 NAT traversal, if the peer's vendor IDs announce them.
    fn vendor_ids(&mut self, p: &[Payload]) {
        let has =
            |vid: &[u8; 16]| p.iter().any(|x| matches!(x, Payload::Vendor(v) if v[..] == vid[..]));
        self.peer_dpd = has(&VID_DPD);
        self.nat.supported = has(&VID_NAT_T);
    }

    /// The initiator checks the responder's choice: one transform, one we offered.
    fn chosen(&mut self, p: &[Payload]) -> Result<(), Failure> {
        let Some(Payload::Sa(sa)) = p.iter().find(|x| matches!(x, Payload::Sa(_))) else {
            return Err(Failure::Malformed("no SA payload in message 2".into()));
        };
        let t = match sa.proposals.as_slice() {
            [p] if p.transforms.len() == 1 => &p.transforms[0],
            _ => return Err(Failure::Malformed("the responder chose no single transform".into())),
        };
        let (suite, life) = phase1_suite(t).map_err(|why| Failure::NoProposalChosen {
            ours: list_to_string(&self.cfg.proposals),
            theirs: why,
        })?;
        if !self.cfg.proposals.iter().any(|p| p.allows(&suite)) {
            return Err(Failure::NoProposalChosen {
                ours: list_to_string(&self.cfg.proposals),
                theirs: suite.to_string(),
            });
        }
        self.suite = Some(suite);
        self.life = life.map_or(self.cfg.life, |l| self.cfg.life.min(Duration::from_secs(l)));
        Ok(())
    }

    fn suite(&self) -> Result<IkeSuite, Failure> {
        self.suite.ok_or_else(|| Failure::Malformed("no suite".into()))
    }

    /// Messages 3 and 4: KE, nonce, and the NAT-D hashes when both sides do RFC 3947.
    fn ke_message(&self, ke: Vec<u8>, n: Vec<u8>) -> Vec<u8> {
        let mut out = vec![Payload::Ke(ke), Payload::Nonce(n)];
        if self.nat.supported
            && let Some(s) = self.suite
        {
            // RFC 3947 §3.2: the first NAT-D is the peer's (destination) address.
            out.push(Payload::NatD(self.nat_hash(s, self.cfg.remote)));
            out.push(Payload::NatD(self.nat_hash(s, self.cfg.local)));
        }
        codec::encode_plain(header(self.cky_i, self.cky_r, self.exchange, 0, 0), &out)
    }

    /// HASH(CKY-I | CKY-R | IP | Port) (RFC 3947 §3.2).
    fn nat_hash(&self, s: IkeSuite, a: SocketAddr) -> Vec<u8> {
        let ip = match a.ip() {
            std::net::IpAddr::V4(v) => v.octets().to_vec(),
            std::net::IpAddr::V6(v) => v.octets().to_vec(),
        };
        keys::hash(
            s.prf,
            &[&self.cky_i.to_be_bytes(), &self.cky_r.to_be_bytes(), &ip, &a.port().to_be_bytes()],
        )
    }

    fn check_nat(&mut self, raw: &[(u8, Vec<u8>)]) -> Result<(), Failure> {
        let nat_d: Vec<&[u8]> =
            raw.iter().filter(|(t, _)| *t == payload_type::NAT_D).map(|(_, b)| &b[..]).collect();
        if !self.nat.supported || nat_d.is_empty() {
            return Ok(());
        }
        let s = self.suite()?;
        self.nat.local_behind = *nat_d[0] != self.nat_hash(s, self.cfg.local)[..];
        let theirs = self.nat_hash(s, self.cfg.remote);
        self.nat.remote_behind = !nat_d[1..].iter().any(|h| **h == theirs[..]);
        Ok(())
    }

    fn derive(&mut self, shared: &[u8]) -> Result<(), Failure> {
        let s = self.suite()?;
        let k = keys::phase1(
            s.prf,
            self.cfg.psk.expose(),
            &self.ni,
            &self.nr,
            shared,
            self.cky_i,
            self.cky_r,
            s.encr.key_len(),
        );
        self.iv = keys::phase1_iv(s.prf, &self.gxi, &self.gxr, s.encr.block_len());
        self.keys = Some(k);
        Ok(())
    }

    /// HASH_I (`initiator`) or HASH_R over an ID payload body.
    fn hash(&self, initiator: bool, id_b: &[u8]) -> Result<Vec<u8>, Failure> {
        let s = self.suite()?;
        let k = self.keys.as_ref().ok_or_else(|| Failure::Malformed("no keys".into()))?;
        let cky = (self.cky_i, self.cky_r);
        Ok(if initiator {
            keys::hash_i(s.prf, k, &self.gxi, &self.gxr, cky, &self.sai_b, id_b)
        } else {
            keys::hash_r(s.prf, k, &self.gxi, &self.gxr, cky, &self.sai_b, id_b)
        })
    }

    fn encrypt(&mut self, payloads: &[Payload]) -> Result<Vec<u8>, Failure> {
        let s = self.suite()?;
        let k = self.keys.as_ref().ok_or_else(|| Failure::Malformed("no keys".into()))?;
        let h = header(self.cky_i, self.cky_r, self.exchange, 0, 0);
        let (msg, next) = crypt::encrypt_message(h, payloads, s.encr, &k.enc_key, &self.iv)?;
        self.iv = next;
        Ok(msg)
    }

    /// Decrypts message 5 or 6: the peer's identity (checked against the configuration), its
    /// ID payload body as sent, and its HASH.
    fn open_id(&mut self, first: u8, ct: &[u8]) -> Result<(Identity, Vec<u8>, Vec<u8>), Failure> {
        let s = self.suite()?;
        let k = self.keys.as_ref().ok_or_else(|| Failure::Malformed("no keys".into()))?;
        let (plain, next) = crypt::open(s.encr, &k.enc_key, &self.iv, ct)?;
        // A wrong key decrypts to garbage: that is a hash failure to the operator, not syntax.
        let raw = codec::chain(first, &plain).map_err(|_| Failure::HashMismatch)?;
        let id_b = find_slice(&raw, payload_type::ID).ok_or(Failure::HashMismatch)?;
        let hash = find_slice(&raw, payload_type::HASH).ok_or(Failure::HashMismatch)?;
        if id_b.len() < 4 {
            return Err(Failure::HashMismatch);
        }
        match self.check_id(id_b) {
            Ok(i) => {
                self.iv = next;
                Ok((i, id_b.to_vec(), hash.to_vec()))
            }
            Err(mismatch) => {
                // Only a peer with our key can produce this plaintext; it names another
                // identity. Check the hash first so a wrong key is reported as such.
                if !ct_eq(&self.hash(!self.initiator, id_b)?, hash) {
                    return Err(Failure::HashMismatch);
                }
                Err(mismatch)
            }
        }
    }

    /// The identity in an ID payload body, if it is the configured remote one.
    fn check_id(&self, id_b: &[u8]) -> Result<Identity, Failure> {
        let got = id_b.get(4..).and_then(|d| Identity::from_wire(id_b[0], d));
        match got {
            Some(i) if self.cfg.remote_id.matches(&i) => Ok(i),
            other => Err(Failure::IdentityMismatch {
                expected: self.cfg.remote_id.to_string(),
                got: other.map_or_else(
                    || format!("ID type {}", id_b.first().copied().unwrap_or(0)),
                    |i| i.to_string(),
                ),
            }),
        }
    }

    fn established(&mut self, peer_id: Identity) -> Result<Established, Failure> {
        Ok(Established {
            cky_i: self.cky_i,
            cky_r: self.cky_r,
            suite: self.suite()?,
            keys: self.keys.take().ok_or_else(|| Failure::Malformed("no keys".into()))?,
            iv: std::mem::take(&mut self.iv),
            life: self.life,
            peer_id,
            nat: self.nat,
            peer_dpd: self.peer_dpd,
        })
    }
}

fn find_slice<'a>(raw: &[(u8, &'a [u8])], ty: u8) -> Option<&'a [u8]> {
    raw.iter().find(|(t, _)| *t == ty).map(|(_, b)| *b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proposal::parse_ike_list;
    use rand_chacha::ChaCha20Rng;
    use rand_core::SeedableRng;

    fn cfg(initiator: bool, proposals: &str, psk: &str) -> Phase1Config {
        let (a, b) = ("192.0.2.1:500", "198.51.100.2:500");
        let (local, remote) = if initiator { (a, b) } else { (b, a) };
        let (lid, rid) =
            if initiator { ("vpc.example", "idc.example") } else { ("idc.example", "vpc.example") };
        Phase1Config {
            proposals: parse_ike_list(proposals).unwrap(),
            life: Duration::from_secs(if initiator { 28_800 } else { 86_400 }),
            psk: Psk::new(psk.as_bytes().to_vec()),
            local_id: lid.parse().unwrap(),
            remote_id: rid.parse().unwrap(),
            local: local.parse().unwrap(),
            remote: remote.parse().unwrap(),
        }
    }

    /// Runs Main Mode between `i` and `r`; the outcome of each side.
    fn run(
        i: Phase1Config,
        r: Phase1Config,
    ) -> (Result<Box<Established>, Failure>, Result<Box<Established>, Failure>) {
        let mut rng = ChaCha20Rng::from_seed([3; 32]);
        let (mut mi, m1) = MainMode::initiate(i, &mut rng).unwrap();
        let (mut mr, m2) = match MainMode::respond(r, &m1, &mut rng) {
            Ok(x) => x,
            Err(e) => return (Err(Failure::Notified(e.notify().unwrap_or(0))), Err(e)),
        };
        let mut to_r = match mi.handle(&m2, &mut rng) {
            Ok(Step::Send(m)) => m,
            other => return (other.map(|_| unreachable!()), Err(Failure::Malformed("-".into()))),
        };
        loop {
            match mr.handle(&to_r, &mut rng) {
                Ok(Step::Send(m)) => match mi.handle(&m, &mut rng) {
                    Ok(Step::Send(n)) => to_r = n,
                    Ok(Step::Done { .. } | Step::Resend(_)) => unreachable!("one step each"),
                    Err(e) => return (Err(e), Err(Failure::Malformed("-".into()))),
                },
                Ok(Step::Done { send, sa }) => {
                    let last = mi.handle(&send.unwrap(), &mut rng);
                    let i = last.and_then(|s| match s {
                        Step::Done { sa, .. } => Ok(sa),
                        Step::Send(_) | Step::Resend(_) => Err(Failure::Malformed("more".into())),
                    });
                    return (i, Ok(sa));
                }
                Ok(Step::Resend(_)) => unreachable!("no repeats here"),
                Err(e) => return (Err(Failure::Notified(e.notify().unwrap_or(0))), Err(e)),
            }
        }
    }

    #[test]
    fn main_mode_with_a_psk_establishes_the_same_keys_on_both_sides() {
        for (ours, theirs, want) in [
            (
                "aes128-sha256-modp2048",
                "aes128-sha256-modp2048",
                "aes128-sha256-prfsha256-modp2048",
            ),
            (
                "aes256-sha1-modp1024,aes128-sha256-modp2048",
                "aes256-sha1-modp1024",
                "aes256-sha1-prfsha1-modp1024",
            ),
            ("3des-sha1-modp1536", "3des-sha1-modp1536", "3des-sha1-prfsha1-modp1536"),
            ("aes256-sha512-ecp384", "aes256-sha512-ecp384", "aes256-sha512-prfsha512-ecp384"),
        ] {
            let (i, r) = run(cfg(true, ours, "sekrit-psk"), cfg(false, theirs, "sekrit-psk"));
            let (i, r) = (i.unwrap(), r.unwrap());
            assert_eq!(i.suite.to_string(), want);
            assert_eq!(r.suite, i.suite);
            assert_eq!((i.cky_i, i.cky_r), (r.cky_i, r.cky_r));
            assert_eq!(i.keys.skeyid_d[..], r.keys.skeyid_d[..]);
            assert_eq!(i.keys.enc_key[..], r.keys.enc_key[..]);
            assert_eq!(i.iv, r.iv, "the phase-2 IV seed is the same last block");
            assert_eq!(i.peer_id.to_string(), "idc.example");
            assert_eq!(r.peer_id.to_string(), "vpc.example");
            // The shorter lifetime wins on both sides.
            assert_eq!(
                (i.life, r.life),
                (Duration::from_secs(28_800), Duration::from_secs(28_800))
            );
            assert!(i.nat.supported && !i.nat.local_behind && !i.nat.remote_behind);
            assert!(i.peer_dpd && r.peer_dpd);
        }
    }

    #[test]
    fn failures_say_what_differs() {
        // No common suite: the responder names both sides.
        let (_, r) = run(
            cfg(true, "aes128-sha256-modp2048", "k"),
            cfg(false, "aes256-sha512-modp4096", "k"),
        );
        let Err(Failure::NoProposalChosen { ours, theirs }) = r else { panic!("{r:?}") };
        assert_eq!(
            (ours.as_str(), theirs.as_str()),
            ("aes256-sha512-prfsha512-modp4096", "aes128-sha256-prfsha256-modp2048")
        );
        // Different keys: the responder cannot verify HASH_I.
        let (_, r) = run(
            cfg(true, "aes128-sha256-modp2048", "one"),
            cfg(false, "aes128-sha256-modp2048", "two"),
        );
        assert_eq!(r.unwrap_err(), Failure::HashMismatch);
        // Same key, another identity: named.
        let mut other = cfg(true, "aes128-sha256-modp2048", "k");
        other.local_id = "intruder.example".parse().unwrap();
        let (_, r) = run(other, cfg(false, "aes128-sha256-modp2048", "k"));
        assert_eq!(
            r.unwrap_err(),
            Failure::IdentityMismatch {
                expected: "vpc.example".into(),
                got: "intruder.example".into()
            }
        );
        // AEAD only: nothing to offer in IKEv1.
        let e = MainMode::initiate(
            cfg(true, "aes256gcm16-prfsha256-x25519", "k"),
            &mut ChaCha20Rng::from_seed([1; 32]),
        )
        .unwrap_err();
        assert!(matches!(e, Failure::NoProposalChosen { .. }));
    }

    #[test]
    fn aggressive_mode_establishes_in_three_messages_and_names_a_wrong_identity() {
        let mut rng = ChaCha20Rng::from_seed([13; 32]);
        // Our list has two groups; Aggressive Mode can send one key share, so it offers the first.
        let (mut i, m1) = MainMode::initiate_aggressive(
            cfg(true, "aes256-sha256-modp2048-modp3072", "k"),
            &mut rng,
        )
        .unwrap();
        let (mut r, m2) =
            MainMode::respond(cfg(false, "aes256-sha256-modp3072-modp2048", "k"), &m1, &mut rng)
                .unwrap();
        let Step::Done { send: Some(m3), sa: isa } = i.handle(&m2, &mut rng).unwrap() else {
            panic!()
        };
        let Step::Done { send: None, sa: rsa } = r.handle(&m3, &mut rng).unwrap() else { panic!() };
        assert_eq!(isa.suite.to_string(), "aes256-sha256-prfsha256-modp2048");
        assert_eq!(isa.keys.enc_key[..], rsa.keys.enc_key[..]);
        assert_eq!(isa.iv, rsa.iv);
        assert_eq!(
            (isa.peer_id.to_string(), rsa.peer_id.to_string()),
            ("idc.example".into(), "vpc.example".into())
        );
        // A wrong PSK fails HASH_R at the initiator; another identity is named by the responder.
        let (mut i, m1) =
            MainMode::initiate_aggressive(cfg(true, "aes128-sha1-modp2048", "one"), &mut rng)
                .unwrap();
        let (_, m2) =
            MainMode::respond(cfg(false, "aes128-sha1-modp2048", "two"), &m1, &mut rng).unwrap();
        assert_eq!(i.handle(&m2, &mut rng).unwrap_err(), Failure::HashMismatch);
        let mut other = cfg(true, "aes128-sha1-modp2048", "k");
        other.local_id = "intruder.example".parse().unwrap();
        let (_, m1) = MainMode::initiate_aggressive(other, &mut rng).unwrap();
        let e =
            MainMode::respond(cfg(false, "aes128-sha1-modp2048", "k"), &m1, &mut rng).unwrap_err();
        assert_eq!(
            e,
            Failure::IdentityMismatch {
                expected: "vpc.example".into(),
                got: "intruder.example".into()
            }
        );
    }

    #[test]
    fn a_retransmitted_message_gets_the_same_answer_and_changes_nothing() {
        let mut rng = ChaCha20Rng::from_seed([14; 32]);
        let (mut i, m1) =
            MainMode::initiate(cfg(true, "aes128-sha256-modp2048", "k"), &mut rng).unwrap();
        let (mut r, m2) =
            MainMode::respond(cfg(false, "aes128-sha256-modp2048", "k"), &m1, &mut rng).unwrap();
        assert_eq!(i.last_sent(), &m1[..]);
        let Step::Send(m3) = i.handle(&m2, &mut rng).unwrap() else { panic!() };
        // Our message 3 was lost and the responder repeats message 2.
        let Step::Resend(Some(again)) = i.handle(&m2, &mut rng).unwrap() else { panic!() };
        assert_eq!(again, m3);
        let Step::Send(m4) = r.handle(&m3, &mut rng).unwrap() else { panic!() };
        let Step::Resend(Some(again)) = r.handle(&m3, &mut rng).unwrap() else { panic!() };
        assert_eq!(again, m4);
        let Step::Send(m5) = i.handle(&m4, &mut rng).unwrap() else { panic!() };
        let Step::Done { send: Some(m6), .. } = r.handle(&m5, &mut rng).unwrap() else { panic!() };
        // Message 6 was lost: the finished responder answers a repeated message 5 again.
        let Step::Resend(Some(again)) = r.handle(&m5, &mut rng).unwrap() else { panic!() };
        assert_eq!(again, m6);
        let Step::Done { send: None, .. } = i.handle(&m6, &mut rng).unwrap() else { panic!() };
        let Step::Resend(None) = i.handle(&m6, &mut rng).unwrap() else { panic!() };
    }

    #[test]
    fn a_nat_between_the_peers_is_detected() {
        let i = cfg(true, "aes128-sha256-modp2048", "k");
        let mut r = cfg(false, "aes128-sha256-modp2048", "k");
        // The responder sees the initiator from the NAT's outside address.
        r.remote = "203.0.113.9:4500".parse().unwrap();
        let (i, r) = run(i, r);
        let (i, r) = (i.unwrap(), r.unwrap());
        assert!(r.nat.remote_behind && !r.nat.local_behind, "{:?}", r.nat);
        assert!(i.nat.local_behind, "{:?}", i.nat);
    }

    #[test]
    fn garbage_and_replays_end_the_exchange_without_panicking() {
        let mut rng = ChaCha20Rng::from_seed([9; 32]);
        let (mut mi, m1) =
            MainMode::initiate(cfg(true, "aes128-sha256-modp2048", "k"), &mut rng).unwrap();
        assert!(
            MainMode::respond(cfg(false, "aes128-sha256-modp2048", "k"), &m1[..40], &mut rng)
                .is_err()
        );
        // Our own first message is not an answer.
        assert!(mi.handle(&m1, &mut rng).is_err());
        assert!(!mi.is_open());
    }

    proptest::proptest! {
        #[test]
        fn mutated_messages_never_panic_either_side(
            at in proptest::collection::vec(0usize..2000, 1..4),
            xor in 1u8..=255,
            which in 0usize..5,
        ) {
            let mut rng = ChaCha20Rng::from_seed([12; 32]);
            let (mut i, m1) = MainMode::initiate(cfg(true, "aes128-sha256-modp2048", "k"), &mut rng).unwrap();
            let (mut r, m2) = MainMode::respond(cfg(false, "aes128-sha256-modp2048", "k"), &m1, &mut rng).unwrap();
            let Step::Send(m3) = i.handle(&m2, &mut rng).unwrap() else { panic!() };
            // Message `which` (1..5) is mutated and handed to its receiver, which must refuse or
            // cope, never panic.
            let mutate = |m: &[u8]| {
                let mut m = m.to_vec();
                for a in &at {
                    let k = a % m.len();
                    m[k] ^= xor;
                }
                m
            };
            match which {
                0 => { let _ = MainMode::respond(cfg(false, "aes128-sha256-modp2048", "k"), &mutate(&m1), &mut rng); }
                1 => { let _ = i.handle(&mutate(&m2), &mut rng); }
                2 => { let _ = r.handle(&mutate(&m3), &mut rng); }
                _ => {
                    let Step::Send(m4) = r.handle(&m3, &mut rng).unwrap() else { panic!() };
                    if which == 3 {
                        let _ = i.handle(&mutate(&m4), &mut rng);
                    } else {
                        let Step::Send(m5) = i.handle(&m4, &mut rng).unwrap() else { panic!() };
                        let _ = r.handle(&mutate(&m5), &mut rng);
                    }
                }
            }
        }
    }
}

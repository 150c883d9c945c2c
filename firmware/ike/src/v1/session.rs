//! One IKEv1 tunnel as the endpoint will run it (work in progress): phase 1 (Main Mode), then
//! one Quick Mode per selector pair of each CHILD SA, with retransmission and the NAT-T float,
//! giving the same [`Event`]s as IKEv2 (`IkeSaUp`, `ChildSaUp`) so that the driver and the
//! dataplane need no change. Not yet: rekeying, DPD timers, deletes, the responder's choice
//! among several tunnels.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rand_core::CryptoRngCore;

use crate::config::TunnelConfig;
use crate::event::{ChildKeys, Event, Transmit};

use super::main_mode::{Established, Failure, MainMode, Phase1Config, Step};
use super::quick_mode::{ChildSa, QmStep, QuickConfig, QuickMode};

/// The first retransmission wait; doubled after each try, up to `TRIES` tries.
const RETRANSMIT: Duration = Duration::from_secs(2);
const TRIES: u32 = 5;
const NAT_T_PORT: u16 = 4500;

/// The phase-1 settings of a tunnel.
pub fn phase1_config(t: &TunnelConfig) -> Phase1Config {
    Phase1Config {
        proposals: t.ike_proposals.clone(),
        life: t.ike_lifetime.life_time,
        psk: t.psk.clone(),
        local_id: t.local_id.clone(),
        remote_id: t.remote_id.clone(),
        local: t.local,
        remote: t.remote,
    }
}

/// One Quick Mode per selector pair of each CHILD SA (IKEv1 negotiates one pair at a time), with
/// the index of its CHILD SA configuration.
pub fn quick_configs(t: &TunnelConfig, udp: bool) -> Vec<(usize, QuickConfig)> {
    let mut out = Vec::new();
    for (i, c) in t.children.iter().enumerate() {
        for l in &c.local_ts {
            for r in &c.remote_ts {
                out.push((
                    i,
                    QuickConfig {
                        proposals: c.esp_proposals.clone(),
                        life: c.lifetime.life_time,
                        local_ts: *l,
                        remote_ts: *r,
                        udp,
                    },
                ));
            }
        }
    }
    out
}

struct Pending {
    data: Vec<u8>,
    at: Instant,
    tries: u32,
}

/// One tunnel's IKEv1 state.
pub struct Session {
    cfg: TunnelConfig,
    initiator: bool,
    mm: Option<MainMode>,
    sa: Option<Box<Established>>,
    qms: Vec<(u32, usize, QuickMode)>,
    /// The CHILD SAs up, with their configuration index.
    pub children: Vec<(usize, ChildSa)>,
    pending: Option<Pending>,
    floated: bool,
    events: Vec<Event>,
    transmits: Vec<Transmit>,
}

impl Session {
    /// Starts Main Mode towards the tunnel's peer.
    pub fn initiate(
        cfg: TunnelConfig,
        now: Instant,
        rng: &mut impl CryptoRngCore,
    ) -> Result<Session, Failure> {
        let (mm, m1) = MainMode::initiate(phase1_config(&cfg), rng)?;
        let mut s = Session::new(cfg, true);
        s.mm = Some(mm);
        s.send(m1, now);
        Ok(s)
    }

    /// Answers a first Main Mode message from the tunnel's peer.
    pub fn respond(
        cfg: TunnelConfig,
        datagram: &[u8],
        now: Instant,
        rng: &mut impl CryptoRngCore,
    ) -> Result<Session, Failure> {
        let (mm, m2) = MainMode::respond(phase1_config(&cfg), datagram, rng)?;
        let mut s = Session::new(cfg, false);
        s.mm = Some(mm);
        s.send(m2, now);
        Ok(s)
    }

    fn new(cfg: TunnelConfig, initiator: bool) -> Session {
        Session {
            cfg,
            initiator,
            mm: None,
            sa: None,
            qms: Vec::new(),
            children: Vec::new(),
            pending: None,
            floated: false,
            events: Vec::new(),
            transmits: Vec::new(),
        }
    }

    fn addrs(&self) -> (SocketAddr, SocketAddr) {
        if self.floated {
            let mut l = self.cfg.local;
            let mut r = self.cfg.remote;
            l.set_port(NAT_T_PORT);
            r.set_port(NAT_T_PORT);
            (l, r)
        } else {
            (self.cfg.local, self.cfg.remote)
        }
    }

    fn send(&mut self, data: Vec<u8>, now: Instant) {
        let (local, remote) = self.addrs();
        self.transmits.push(Transmit { local, remote, data: data.clone(), nat_t: self.floated });
        self.pending = Some(Pending { data, at: now + RETRANSMIT, tries: 1 });
    }

    fn send_final(&mut self, data: Vec<u8>) {
        let (local, remote) = self.addrs();
        self.transmits.push(Transmit { local, remote, data, nat_t: self.floated });
        self.pending = None;
    }

    /// The datagrams to send.
    pub fn poll_transmits(&mut self) -> Vec<Transmit> {
        std::mem::take(&mut self.transmits)
    }

    /// What happened.
    pub fn poll_events(&mut self) -> Vec<Event> {
        std::mem::take(&mut self.events)
    }

    /// When [`Session::handle_timeout`] wants to run.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.pending.as_ref().map(|p| p.at)
    }

    /// Retransmits the outstanding message (waits doubling from 2 s), or gives up after five
    /// tries.
    pub fn handle_timeout(&mut self, now: Instant) -> Result<(), Failure> {
        let Some(p) = &mut self.pending else { return Ok(()) };
        if now < p.at {
            return Ok(());
        }
        if p.tries >= TRIES {
            self.pending = None;
            return Err(Failure::Malformed(format!("no answer from the peer after {TRIES} tries")));
        }
        p.tries += 1;
        p.at = now + RETRANSMIT * (1 << p.tries.min(6));
        let data = p.data.clone();
        let (local, remote) = self.addrs();
        self.transmits.push(Transmit { local, remote, data, nat_t: self.floated });
        Ok(())
    }

    /// True once the ISAKMP SA is up.
    pub fn established(&self) -> bool {
        self.sa.is_some()
    }

    /// Takes a datagram of this tunnel (the non-ESP marker already removed).
    pub fn handle(
        &mut self,
        now: Instant,
        datagram: &[u8],
        rng: &mut impl CryptoRngCore,
    ) -> Result<(), Failure> {
        if let Some(mm) = &mut self.mm {
            let step = mm.handle(datagram, rng)?;
            let nat = mm.nat();
            self.floated |= nat.local_behind || nat.remote_behind || self.cfg.force_nat_t;
            match step {
                Step::Send(m) => self.send(m, now),
                Step::Resend(m) => {
                    if let Some(m) = m {
                        self.send_final(m);
                    }
                }
                Step::Done { send, sa } => {
                    self.mm = None;
                    if let Some(m) = send {
                        self.send_final(m);
                    } else {
                        self.pending = None;
                    }
                    let (local, peer) = self.addrs();
                    self.events.push(Event::IkeSaUp {
                        tunnel: self.cfg.name.clone(),
                        local,
                        peer,
                        suite: sa.suite,
                        encap: self.floated,
                        rekeyed: false,
                    });
                    self.sa = Some(sa);
                    if self.initiator {
                        self.start_quick_modes(now, rng)?;
                    }
                }
            }
            return Ok(());
        }
        let Some(sa) = self.sa.as_deref() else {
            return Err(Failure::Malformed("no ISAKMP SA".into()));
        };
        let m = super::codec::parse_message(datagram)?;
        if m.header.exchange != super::codec::exchange::QUICK {
            return Ok(()); // informational exchanges: not yet
        }
        let mid = m.header.message_id;
        if let Some(k) = self.qms.iter().position(|(id, _, _)| *id == mid) {
            let step = self.qms[k].2.handle(sa, datagram)?;
            let child_cfg = self.qms[k].1;
            match step {
                QmStep::Send(x) => self.send(x, now),
                QmStep::Resend(x) => x.into_iter().for_each(|x| self.send_final(x)),
                QmStep::Done { send, child } => {
                    self.qms.remove(k);
                    if let Some(x) = send {
                        self.send_final(x);
                    } else {
                        self.pending = None;
                    }
                    self.child_up(child_cfg, *child);
                    if self.initiator {
                        self.start_quick_modes(now, rng)?;
                    }
                }
            }
        } else if !self.initiator {
            let configs = quick_configs(&self.cfg, self.floated);
            let qcs: Vec<QuickConfig> = configs.iter().map(|(_, q)| q.clone()).collect();
            let spi = rng.next_u32() | 0x100;
            let (qm, reply) = QuickMode::respond(sa, &qcs, datagram, spi, rng)?;
            // The CHILD SA configuration whose selectors took the proxy IDs.
            let child_cfg = configs.first().map_or(0, |(i, _)| *i);
            self.qms.push((mid, child_cfg, qm));
            self.send(reply, now);
        }
        Ok(())
    }

    /// The initiator's next Quick Mode: one selector pair after the other.
    fn start_quick_modes(
        &mut self,
        now: Instant,
        rng: &mut impl CryptoRngCore,
    ) -> Result<(), Failure> {
        let Some(sa) = self.sa.as_deref() else { return Ok(()) };
        let configs = quick_configs(&self.cfg, self.floated);
        let done = self.children.len() + self.qms.len();
        let Some((i, qc)) = configs.into_iter().nth(done) else { return Ok(()) };
        let mid = rng.next_u32() | 1;
        let spi = rng.next_u32() | 0x100;
        let (qm, msg) = QuickMode::initiate(sa, qc, mid, spi, rng)?;
        self.qms.push((mid, i, qm));
        self.send(msg, now);
        Ok(())
    }

    fn child_up(&mut self, cfg: usize, c: ChildSa) {
        let (local, peer) = self.addrs();
        self.events.push(Event::ChildSaUp {
            tunnel: self.cfg.name.clone(),
            child: self.cfg.children.get(cfg).map(|c| c.name.clone()).unwrap_or_default(),
            inbound: ChildKeys::new(c.spi_in, c.keymat_in.to_vec()),
            outbound: ChildKeys::new(c.spi_out, c.keymat_out.to_vec()),
            esp: c.suite,
            local_ts: vec![c.local_ts],
            remote_ts: vec![c.remote_ts],
            encap: c.udp,
            local,
            peer,
            rekey_of: None,
        });
        self.children.push((cfg, c));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Psk;
    use crate::proposal::{parse_esp_list, parse_ike_list};
    use rand_chacha::ChaCha20Rng;
    use rand_core::SeedableRng;

    fn tunnel(initiator: bool) -> TunnelConfig {
        let (a, b) = ("192.0.2.1:500", "192.0.2.2:500");
        let (l, r) = if initiator { (a, b) } else { (b, a) };
        let (lts, rts) = if initiator {
            (
                vec!["10.1.0.0/16".parse().unwrap(), "10.3.0.0/16".parse().unwrap()],
                vec!["10.2.0.0/16".parse().unwrap()],
            )
        } else {
            (
                vec!["10.2.0.0/16".parse().unwrap()],
                vec!["10.1.0.0/16".parse().unwrap(), "10.3.0.0/16".parse().unwrap()],
            )
        };
        let mut t = TunnelConfig::new(
            "t",
            l.parse().unwrap(),
            r.parse().unwrap(),
            Psk::new(b"k".to_vec()),
            lts,
            rts,
        );
        t.ike_proposals = parse_ike_list("aes128-sha256-modp2048").unwrap();
        t.children[0].esp_proposals = parse_esp_list("aes128-sha256").unwrap();
        t
    }

    #[test]
    fn two_selector_pairs_become_two_sa_pairs_and_a_lost_message_is_retransmitted() {
        let mut rng = ChaCha20Rng::from_seed([21; 32]);
        let now = Instant::now();
        let mut i = Session::initiate(tunnel(true), now, &mut rng).unwrap();
        let m1 = i.poll_transmits().remove(0).data;
        let mut r = Session::respond(tunnel(false), &m1, now, &mut rng).unwrap();
        // Message 2 is lost: the responder sends it again when its timer fires.
        r.poll_transmits();
        r.handle_timeout(now + RETRANSMIT).unwrap();
        let mut to_i = r.poll_transmits();
        assert_eq!(to_i.len(), 1);
        let mut to_r = Vec::new();
        for _ in 0..20 {
            for t in to_i.drain(..) {
                i.handle(now, &t.data, &mut rng).unwrap();
            }
            to_r.extend(i.poll_transmits());
            for t in to_r.drain(..) {
                r.handle(now, &t.data, &mut rng).unwrap();
            }
            to_i.extend(r.poll_transmits());
            if to_i.is_empty() && to_r.is_empty() {
                break;
            }
        }
        assert!(i.established() && r.established());
        assert_eq!(i.children.len(), 2);
        assert_eq!(r.children.len(), 2);
        let ev: Vec<Event> = i.poll_events();
        assert!(matches!(ev[0], Event::IkeSaUp { .. }));
        assert_eq!(ev.iter().filter(|e| matches!(e, Event::ChildSaUp { .. })).count(), 2);
        for (_, c) in &i.children {
            let (_, peer) = r.children.iter().find(|(_, x)| x.spi_in == c.spi_out).unwrap();
            assert_eq!(c.keymat_out[..], peer.keymat_in[..]);
        }
        assert_eq!(i.poll_timeout(), None, "nothing outstanding");
    }
}

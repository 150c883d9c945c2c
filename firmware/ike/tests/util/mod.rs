//! An in-memory initiator/responder pair driven by a virtual clock that jumps to the next
//! timer (after quinn-proto's `tests/util.rs`). No sockets, no sleeping: a test that waits
//! hours of protocol time runs in milliseconds and never flakes.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use isthmus_ike::codec::{self, ExchangeType};
use isthmus_ike::{
    ChildConfig, DownReason, Endpoint, EndpointConfig, Event, Lifetime, Psk, TrafficSelector,
    Transmit, TunnelConfig, parse_esp_list, parse_ike_list,
};

pub const A: &str = "192.0.2.1";
pub const B: &str = "198.51.100.2";
/// The NAT's public address when `nat` is on (A sits behind it).
pub const NAT: &str = "203.0.113.9";

pub fn ts(s: &str) -> Vec<TrafficSelector> {
    s.split(',').map(|t| t.parse().unwrap()).collect()
}

/// A tunnel from `local` to `remote` with one CHILD SA `local_ts` <-> `remote_ts`.
pub fn tunnel(local: &str, remote: &str, local_ts: &str, remote_ts: &str) -> TunnelConfig {
    let mut t = TunnelConfig::new(
        "t1",
        SocketAddr::new(local.parse().unwrap(), 500),
        SocketAddr::new(remote.parse().unwrap(), 500),
        Psk::new(b"correct horse battery staple".to_vec()),
        ts(local_ts),
        ts(remote_ts),
    );
    t.children[0].name = "net".into();
    t
}

pub fn configs() -> (TunnelConfig, TunnelConfig) {
    (tunnel(A, B, "10.1.0.0/16", "10.2.0.0/16"), tunnel(B, A, "10.2.0.0/16", "10.1.0.0/16"))
}

pub fn with_ike(mut t: TunnelConfig, ike: &str) -> TunnelConfig {
    t.ike_proposals = parse_ike_list(ike).unwrap();
    t
}

pub fn with_esp(mut t: TunnelConfig, esp: &str) -> TunnelConfig {
    t.children[0].esp_proposals = parse_esp_list(esp).unwrap();
    t
}

pub fn child(name: &str, local_ts: &str, remote_ts: &str) -> ChildConfig {
    ChildConfig {
        name: name.into(),
        local_ts: ts(local_ts),
        remote_ts: ts(remote_ts),
        esp_proposals: parse_esp_list("aes256gcm16").unwrap(),
        lifetime: isthmus_ike::Lifetime::CHILD_DEFAULT,
    }
}

/// One datagram seen on the wire.
#[derive(Clone, Debug)]
pub struct Seen {
    pub from_a: bool,
    pub t: Transmit,
    pub exchange: Option<ExchangeType>,
    pub response: bool,
}

pub struct Pair {
    pub start: Instant,
    pub now: Instant,
    pub a: Endpoint,
    pub b: Endpoint,
    pub a_events: Vec<Event>,
    pub b_events: Vec<Event>,
    pub wire: Vec<Seen>,
    /// Drop every datagram from or to A (a dead or frozen peer).
    pub a_dead: bool,
    /// Drop every datagram from or to B.
    pub b_dead: bool,
    /// Drop the next n datagrams sent by A / by B.
    pub drop_from_a: usize,
    pub drop_from_b: usize,
    /// A sits behind a NAT that rewrites its address and ports.
    pub nat: bool,
    /// Deliver every datagram twice.
    pub duplicate: bool,
    /// Drop every datagram this matches (e.g. one exchange type).
    pub drop_if: Option<fn(&Seen) -> bool>,
    /// Rewrites every datagram A sends, on the wire.
    pub tamper_from_a: Option<fn(&mut Vec<u8>)>,
    /// Timer runs without the clock moving (a timer that never clears would spin).
    stalls: usize,
}

pub fn endpoint_config() -> EndpointConfig {
    EndpointConfig::default()
}

impl Pair {
    pub fn new(ca: TunnelConfig, cb: TunnelConfig) -> Pair {
        Pair::with_endpoints(endpoint_config(), endpoint_config(), ca, cb)
    }

    pub fn with_endpoints(
        ea: EndpointConfig,
        eb: EndpointConfig,
        ca: TunnelConfig,
        cb: TunnelConfig,
    ) -> Pair {
        let now = Instant::now();
        let mut a = Endpoint::new(ea, [1; 32]);
        let mut b = Endpoint::new(eb, [2; 32]);
        a.add_tunnel(ca).unwrap();
        b.add_tunnel(cb).unwrap();
        Pair {
            start: now,
            now,
            a,
            b,
            a_events: Vec::new(),
            b_events: Vec::new(),
            wire: Vec::new(),
            a_dead: false,
            b_dead: false,
            drop_from_a: 0,
            drop_from_b: 0,
            nat: false,
            duplicate: false,
            drop_if: None,
            tamper_from_a: None,
            stalls: 0,
        }
    }

    pub fn elapsed(&self) -> Duration {
        self.now - self.start
    }

    fn nat_port(p: u16) -> u16 {
        p + 10000
    }

    /// Delivers datagrams until both sides are quiet (no time passes).
    pub fn drive(&mut self) {
        for _ in 0..10_000 {
            let mut progress = false;
            while let Some(t) = self.a.poll_transmit() {
                progress = true;
                self.deliver(true, t);
            }
            while let Some(t) = self.b.poll_transmit() {
                progress = true;
                self.deliver(false, t);
            }
            while let Some(e) = self.a.poll_event() {
                self.a_events.push(e);
            }
            while let Some(e) = self.b.poll_event() {
                self.b_events.push(e);
            }
            if !progress {
                return;
            }
        }
        panic!("the pair never went quiet");
    }

    fn deliver(&mut self, from_a: bool, mut t: Transmit) {
        if from_a && let Some(f) = self.tamper_from_a {
            f(&mut t.data);
        }
        let h = codec::Header::parse(&t.data).ok();
        let seen = Seen {
            from_a,
            t: t.clone(),
            exchange: h.map(|h| h.exchange),
            response: h.is_some_and(|h| h.is_response()),
        };
        let dropped = self.drop_if.is_some_and(|f| f(&seen));
        self.wire.push(seen);
        if self.a_dead || self.b_dead || dropped {
            return;
        }
        if from_a && self.drop_from_a > 0 {
            self.drop_from_a -= 1;
            return;
        }
        if !from_a && self.drop_from_b > 0 {
            self.drop_from_b -= 1;
            return;
        }
        let (mut src, dst) = (t.local, t.remote);
        let mut local = dst;
        if self.nat {
            if from_a {
                src = SocketAddr::new(NAT.parse().unwrap(), Self::nat_port(src.port()));
            } else {
                // Back through the NAT to A's private address.
                local = SocketAddr::new(A.parse().unwrap(), dst.port() - 10000);
            }
        }
        let n = if self.duplicate { 2 } else { 1 };
        for _ in 0..n {
            if from_a {
                self.b.handle_datagram(self.now, local, src, &t.data);
            } else {
                self.a.handle_datagram(self.now, local, src, &t.data);
            }
        }
    }

    /// Jumps to the next timer of either side and runs it; false when neither has one.
    pub fn step(&mut self) -> bool {
        let next = match (self.a.poll_timeout(), self.b.poll_timeout()) {
            (Some(x), Some(y)) => x.min(y),
            (Some(x), None) | (None, Some(x)) => x,
            (None, None) => return false,
        };
        if next > self.now {
            self.now = next;
            self.stalls = 0;
        } else {
            self.stalls += 1;
            assert!(self.stalls < 1000, "a timer fires again and again at the same instant");
        }
        self.a.handle_timeout(self.now);
        self.b.handle_timeout(self.now);
        self.drive();
        true
    }

    /// Runs timers until `until` of virtual time has passed from now.
    pub fn run_for(&mut self, d: Duration) {
        let end = self.now + d;
        self.drive();
        loop {
            let next = match (self.a.poll_timeout(), self.b.poll_timeout()) {
                (Some(x), Some(y)) => x.min(y),
                (Some(x), None) | (None, Some(x)) => x,
                (None, None) => break,
            };
            if next > end {
                break;
            }
            self.step();
        }
        self.now = self.now.max(end);
        self.a.handle_timeout(self.now);
        self.b.handle_timeout(self.now);
        self.drive();
    }

    /// Runs timers until `f` holds (or panics after `max` of virtual time).
    pub fn run_until(&mut self, max: Duration, f: impl Fn(&Pair) -> bool) {
        let end = self.now + max;
        self.drive();
        while !f(self) {
            assert!(self.now <= end, "condition not met after {:?}", max);
            if !self.step() {
                assert!(f(self), "no timers left and the condition does not hold");
                return;
            }
        }
    }

    pub fn handshake(&mut self) {
        self.a.initiate("t1", self.now).unwrap();
        self.drive();
        assert!(
            up(&self.a_events) && up(&self.b_events),
            "A: {:?}\nB: {:?}",
            self.a_events,
            self.b_events
        );
    }
}

/// The status of both endpoints' tunnel `t1` gives each SA its rekey and expiry times: the
/// configured ones (less at most the rekey's random part) counted from when it came up, some
/// time between `p.start` and `p.now`.
pub fn assert_status_lifetimes(p: &Pair, ike: Lifetime, child: Lifetime) {
    let within = |at: Instant, after: Duration, jitter: Duration, what: &str| {
        let (lo, hi) = (p.start + after - jitter, p.now + after);
        assert!(lo <= at && at <= hi, "{what} at {:?} after the start", at - p.start);
    };
    for ep in [&p.a, &p.b] {
        let st = ep.status("t1").unwrap();
        let sa = st.ike.expect("an IKE SA");
        within(sa.rekey_at.expect("IKE rekey"), ike.rekey_time, ike.rand_time, "IKE rekey");
        within(sa.expire_at.expect("IKE expiry"), ike.life_time, Duration::ZERO, "IKE expiry");
        assert!(!st.children.is_empty());
        for c in &st.children {
            let rekey = c.rekey_at.expect("CHILD rekey");
            within(rekey, child.rekey_time, child.rand_time, "CHILD rekey");
            within(c.expire_at, child.life_time, Duration::ZERO, "CHILD expiry");
        }
    }
}

pub fn up(ev: &[Event]) -> bool {
    ev.iter().any(|e| matches!(e, Event::IkeSaUp { .. }))
}

pub fn child_ups(ev: &[Event]) -> Vec<&Event> {
    ev.iter().filter(|e| matches!(e, Event::ChildSaUp { .. })).collect()
}

pub fn child_downs(ev: &[Event]) -> Vec<(u32, DownReason)> {
    ev.iter()
        .filter_map(|e| match e {
            Event::ChildSaDown { spi_in, reason, .. } => Some((*spi_in, reason.clone())),
            _ => None,
        })
        .collect()
}

pub fn failures(ev: &[Event]) -> Vec<&isthmus_ike::Explanation> {
    ev.iter()
        .filter_map(|e| match e {
            Event::NegotiationFailed(x) => Some(x),
            _ => None,
        })
        .collect()
}

/// (inbound spi, outbound spi, inbound keys, outbound keys) of a ChildSaUp; the keys are the
/// key material (encryption key, salt, integrity key).
pub fn keys(e: &Event) -> (u32, u32, Vec<u8>, Vec<u8>) {
    match e {
        Event::ChildSaUp { inbound, outbound, .. } => {
            (inbound.spi, outbound.spi, inbound.material().to_vec(), outbound.material().to_vec())
        }
        _ => panic!("not a ChildSaUp: {e:?}"),
    }
}

/// The CHILD SAs installed on a side (inbound SPIs), following Up/Down events.
pub fn installed(ev: &[Event]) -> Vec<u32> {
    let mut v = Vec::new();
    for e in ev {
        match e {
            Event::ChildSaUp { inbound, .. } => v.push(inbound.spi),
            Event::ChildSaDown { spi_in, .. } => v.retain(|s| s != spi_in),
            _ => {}
        }
    }
    v
}

/// Checks that the two sides' installed CHILD SAs pair up with equal keys.
pub fn assert_paired(p: &Pair) {
    let ia = installed(&p.a_events);
    let ib = installed(&p.b_events);
    assert_eq!(ia.len(), ib.len(), "A has {ia:x?}, B has {ib:x?}");
    for e in p
        .a_events
        .iter()
        .filter(|e| matches!(e, Event::ChildSaUp { inbound, .. } if ia.contains(&inbound.spi)))
    {
        let (ain, aout, akin, akout) = keys(e);
        let other = p
            .b_events
            .iter()
            .find(|e| matches!(e, Event::ChildSaUp { inbound, .. } if inbound.spi == aout))
            .unwrap_or_else(|| panic!("B has no SA with inbound SPI {aout:#x}"));
        let (bin, bout, bkin, bkout) = keys(other);
        assert_eq!((bin, bout), (aout, ain));
        assert_eq!(akout, bkin, "A's outbound key is B's inbound key");
        assert_eq!(akin, bkout);
    }
}

//! Health checks: per tunnel, ICMP echo requests (RFC 792; ICMPv6, RFC 4443 §4.1) from a local
//! LAN address to an address behind the peer, at the configured interval. The kernel routes them
//! like any LAN traffic — into the TUN device, through the SPD and the CHILD SA — so an answer
//! proves the tunnel carries traffic both ways, which IKE liveness alone does not.
//!
//! Each check runs on its own thread with a raw ICMP socket bound to the source and connected to
//! the destination (the kernel then hands it only that host's messages), or an unprivileged ICMP
//! datagram socket when raw sockets are not allowed. Probes are sequential: one is answered or
//! times out before the next goes, so an interval shorter than the timeout is stretched.
//!
//! Probes run only while the tunnel is up: a down tunnel is the tunnel-down alarm's business, and
//! its lost probes would only echo it. Each time the tunnel comes up the window starts afresh, so
//! the results describe the tunnel as it is now.
//!
//! Results are kept over a sliding window of the last [`WINDOW`] probes: loss ratio, round-trip
//! average, minimum and maximum, and jitter as the mean difference between consecutive round trips
//! (the quantity the RFC 3550 §6.4.1 estimator `J += (|D| - J) / 16` tracks, without its slow
//! start). The tunnel turns unhealthy after `failure_threshold` failed probes in a row (lost, or
//! slower than `latency_threshold`) and healthy again after `recovery_threshold` good ones.

use std::collections::{HashMap, VecDeque};
use std::io::Read;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use isthmus_api::{self as api, EventKind, HealthState, Severity};
use isthmus_config::{Config, HealthCheck};
use isthmus_wire::checksum;
use isthmus_wire::icmp::{HEADER_LEN, Icmpv4Packet, Icmpv6Packet};
use isthmus_wire::ipv4::Ipv4Packet;
use socket2::{Domain, Protocol, Socket, Type};

use crate::obs::events::EventBus;

/// Probes the results are summarised over.
pub const WINDOW: usize = 20;

/// Marks our probes' payload, so that a stray echo reply with the same identifier is not taken
/// for an answer.
const TAG: &[u8; 8] = b"isthmus\x01";

/// How often a waiting prober looks at its stop flag.
const TICK: Duration = Duration::from_millis(200);

/// ICMP echo message types.
const V4_ECHO_REQUEST: u8 = 8;
const V4_ECHO_REPLY: u8 = 0;
const V6_ECHO_REQUEST: u8 = 128;
const V6_ECHO_REPLY: u8 = 129;

/// Results over the last probes, and the healthy/unhealthy decision. No IO: the prober feeds it.
#[derive(Clone, Debug)]
pub struct Window {
    spec: HealthCheck,
    /// Per probe in the window: its round trip, or None when lost.
    probes: VecDeque<Option<Duration>>,
    fails_in_row: u32,
    oks_in_row: u32,
    state: HealthState,
    total: u64,
    last_error: Option<String>,
}

impl Window {
    /// An empty window for `spec`.
    pub fn new(spec: HealthCheck) -> Window {
        Window {
            spec,
            probes: VecDeque::with_capacity(WINDOW),
            fails_in_row: 0,
            oks_in_row: 0,
            state: HealthState::Unknown,
            total: 0,
            last_error: None,
        }
    }

    /// Records one probe: its round trip, or why it failed. Returns the new state when it
    /// changed.
    pub fn record(&mut self, result: Result<Duration, String>) -> Option<HealthState> {
        if self.probes.len() == WINDOW {
            self.probes.pop_front();
        }
        self.total += 1;
        let failed = match &result {
            Ok(rtt) => match self.spec.latency_threshold {
                Some(max) if *rtt > max.as_duration() => Some(format!(
                    "round trip {:.1} ms is over the latency threshold {} ms",
                    rtt.as_secs_f64() * 1e3,
                    max.as_millis()
                )),
                _ => None,
            },
            Err(e) => Some(e.clone()),
        };
        self.probes.push_back(result.ok());
        let before = self.state;
        match failed {
            Some(e) => {
                self.last_error = Some(e);
                self.oks_in_row = 0;
                self.fails_in_row = self.fails_in_row.saturating_add(1);
                if self.fails_in_row >= self.spec.failure_threshold.max(1) {
                    self.state = HealthState::Unhealthy;
                }
            }
            None => {
                self.last_error = None;
                self.fails_in_row = 0;
                self.oks_in_row = self.oks_in_row.saturating_add(1);
                if self.oks_in_row >= self.spec.recovery_threshold.max(1) {
                    self.state = HealthState::Healthy;
                }
            }
        }
        (self.state != before).then_some(self.state)
    }

    /// The healthy/unhealthy decision.
    pub fn state(&self) -> HealthState {
        self.state
    }

    /// The summary the API shows.
    pub fn report(&self) -> api::Health {
        let rtts: Vec<f64> = self.probes.iter().flatten().map(|d| d.as_secs_f64() * 1e3).collect();
        let sent = self.probes.len() as u32;
        let received = rtts.len() as u32;
        let (avg, min, max) = if rtts.is_empty() {
            (None, None, None)
        } else {
            (
                Some(rtts.iter().sum::<f64>() / rtts.len() as f64),
                rtts.iter().copied().reduce(f64::min),
                rtts.iter().copied().reduce(f64::max),
            )
        };
        let median = (!rtts.is_empty()).then(|| {
            let mut v = rtts.clone();
            v.sort_by(f64::total_cmp);
            let m = v.len() / 2;
            if v.len() % 2 == 1 { v[m] } else { (v[m - 1] + v[m]) / 2.0 }
        });
        let diffs: Vec<f64> = rtts.windows(2).map(|w| (w[1] - w[0]).abs()).collect();
        let jitter = (!diffs.is_empty()).then(|| diffs.iter().sum::<f64>() / diffs.len() as f64);
        api::Health {
            source: self.spec.source.to_string(),
            destination: self.spec.destination.to_string(),
            state: self.state,
            sent,
            received,
            loss_ratio: if sent == 0 { 0.0 } else { f64::from(sent - received) / f64::from(sent) },
            latency_avg_ms: avg,
            latency_median_ms: median,
            latency_min_ms: min,
            latency_max_ms: max,
            jitter_ms: jitter,
            probes_total: self.total,
            last_error: self.last_error.clone(),
        }
    }
}

/// Builds an echo request (the checksum over the message for ICMPv4; for ICMPv6 the kernel fills
/// it in on raw and datagram sockets alike, RFC 3542 §3.1).
pub fn echo_request(v6: bool, ident: u16, seq: u16) -> Vec<u8> {
    let mut m = Vec::with_capacity(8 + TAG.len() + 8);
    m.push(if v6 { V6_ECHO_REQUEST } else { V4_ECHO_REQUEST });
    m.push(0);
    m.extend_from_slice(&[0, 0]);
    m.extend_from_slice(&ident.to_be_bytes());
    m.extend_from_slice(&seq.to_be_bytes());
    m.extend_from_slice(TAG);
    m.extend_from_slice(&[0; 8]);
    if !v6 {
        let c = checksum::checksum(&m);
        m[2..4].copy_from_slice(&c.to_be_bytes());
    }
    m
}

/// True when `buf` (as read from the socket) is the echo reply to (`ident`, `seq`). On raw
/// ICMPv4 sockets the IPv4 header comes first; datagram sockets rewrite the identifier, so it is
/// not compared there.
pub fn is_reply(buf: &[u8], v6: bool, raw: bool, ident: u16, seq: u16) -> bool {
    let icmp: &[u8] = if raw && !v6 {
        match Ipv4Packet::new_checked(buf) {
            Ok(ip) => &buf[ip.header_len().min(buf.len())..],
            Err(_) => return false,
        }
    } else {
        buf
    };
    let (ty, rest, data) = if v6 {
        match Icmpv6Packet::new_checked(icmp) {
            Ok(p) => (p.msg_type(), p.rest_of_header(), &icmp[HEADER_LEN..]),
            Err(_) => return false,
        }
    } else {
        match Icmpv4Packet::new_checked(icmp) {
            Ok(p) if p.verify_checksum() => (p.msg_type(), p.rest_of_header(), &icmp[HEADER_LEN..]),
            _ => return false,
        }
    };
    let want = if v6 { V6_ECHO_REPLY } else { V4_ECHO_REPLY };
    let (id, sq) = ((rest >> 16) as u16, rest as u16);
    ty == want && sq == seq && (!raw || id == ident) && data.starts_with(TAG)
}

/// An ICMP socket from `src` to `dst`: raw when allowed, else a datagram ("ping") socket.
fn open(src: IpAddr, dst: IpAddr) -> std::io::Result<(Socket, bool)> {
    let (domain, proto) = match dst {
        IpAddr::V4(_) => (Domain::IPV4, Protocol::ICMPV4),
        IpAddr::V6(_) => (Domain::IPV6, Protocol::ICMPV6),
    };
    let (sock, raw) = match Socket::new(domain, Type::RAW, Some(proto)) {
        Ok(s) => (s, true),
        Err(raw_err) => match Socket::new(domain, Type::DGRAM, Some(proto)) {
            Ok(s) => (s, false),
            Err(e) => {
                return Err(std::io::Error::new(
                    e.kind(),
                    format!(
                        "no ICMP socket: raw: {raw_err}; datagram: {e} (run as root, or widen \
                         net.ipv4.ping_group_range)"
                    ),
                ));
            }
        },
    };
    sock.bind(&SocketAddr::new(src, 0).into()).map_err(|e| {
        std::io::Error::new(e.kind(), format!("binding to the probe source {src}: {e}"))
    })?;
    sock.connect(&SocketAddr::new(dst, 0).into())?;
    Ok((sock, raw))
}

/// Sends one probe and waits for its answer until `timeout` (or until `stop` is set).
fn probe(
    sock: &Socket,
    raw: bool,
    v6: bool,
    ident: u16,
    seq: u16,
    timeout: Duration,
    stop: &AtomicBool,
) -> Result<Duration, String> {
    let t0 = Instant::now();
    sock.send(&echo_request(v6, ident, seq)).map_err(|e| format!("sending the probe: {e}"))?;
    let mut buf = [0u8; 1500];
    loop {
        let left = timeout.saturating_sub(t0.elapsed());
        if left.is_zero() || stop.load(Ordering::Relaxed) {
            return Err(format!("no answer within {} ms", timeout.as_millis()));
        }
        let _ = sock.set_read_timeout(Some(left.min(TICK)));
        match (&*sock).read(&mut buf) {
            Ok(n) if is_reply(&buf[..n], v6, raw, ident, seq) => return Ok(t0.elapsed()),
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock
                        | std::io::ErrorKind::TimedOut
                        | std::io::ErrorKind::Interrupted
                ) => {}
            // An ICMP error about our probe (e.g. host unreachable) surfaces here.
            Err(e) => {
                let rest = timeout.saturating_sub(t0.elapsed());
                sleep_unless(rest.min(TICK), stop);
                if t0.elapsed() >= timeout {
                    return Err(format!("probe failed: {e}"));
                }
            }
        }
    }
}

fn sleep_unless(d: Duration, stop: &AtomicBool) {
    let end = Instant::now() + d;
    while !stop.load(Ordering::Relaxed) {
        let left = end.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        std::thread::sleep(left.min(TICK));
    }
}

/// A distinct echo identifier per check (raw sockets see every echo reply to the host).
fn next_ident() -> u16 {
    static NEXT: AtomicU16 = AtomicU16::new(0);
    (std::process::id() as u16).wrapping_mul(31).wrapping_add(NEXT.fetch_add(1, Ordering::Relaxed))
}

struct Checker {
    spec: HealthCheck,
    window: Arc<Mutex<Window>>,
    stop: Arc<AtomicBool>,
    /// The tunnel is up: probe.
    up: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for Checker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The health checks of every tunnel that has one.
#[derive(Default)]
pub struct Health {
    checks: Mutex<HashMap<String, Checker>>,
}

impl Health {
    /// Starts checks for the enabled tunnels of `cfg` that have one, restarts the changed ones
    /// (their results start over) and stops the others.
    pub fn configure(&self, cfg: &Config, events: Arc<EventBus>) {
        let wanted: HashMap<&str, &HealthCheck> = cfg
            .tunnels
            .iter()
            .filter(|t| t.enabled)
            .filter_map(|t| t.health_check.as_ref().map(|h| (t.name.as_str(), h)))
            .collect();
        let mut stopped = Vec::new();
        {
            let mut checks = lock(&self.checks);
            let stale: Vec<String> = checks
                .iter()
                .filter(|(n, c)| wanted.get(n.as_str()) != Some(&&c.spec))
                .map(|(n, _)| n.clone())
                .collect();
            for n in stale {
                if let Some(c) = checks.remove(&n) {
                    c.stop.store(true, Ordering::Relaxed);
                    stopped.push(c);
                }
            }
            for (name, spec) in wanted {
                if checks.contains_key(name) {
                    continue;
                }
                checks.insert(name.to_owned(), start(name, spec.clone(), events.clone()));
            }
        }
        // Joined outside the lock: a prober may be in the middle of a wait.
        drop(stopped);
    }

    /// Tells `tunnel`'s check whether the tunnel is up: probes pause while it is not, and the
    /// window starts afresh when it comes up.
    pub fn set_up(&self, tunnel: &str, up: bool) {
        if let Some(c) = lock(&self.checks).get(tunnel) {
            let was = c.up.swap(up, Ordering::Relaxed);
            if was != up {
                *lock(&c.window) = Window::new(c.spec.clone());
            }
        }
    }

    /// The results of `tunnel`'s check, if it has one.
    pub fn report(&self, tunnel: &str) -> Option<api::Health> {
        lock(&self.checks).get(tunnel).map(|c| lock(&c.window).report())
    }

    /// Stops every check.
    pub fn stop_all(&self) {
        let all: Vec<Checker> = lock(&self.checks).drain().map(|(_, c)| c).collect();
        for c in &all {
            c.stop.store(true, Ordering::Relaxed);
        }
        drop(all);
    }
}

fn start(tunnel: &str, spec: HealthCheck, events: Arc<EventBus>) -> Checker {
    let window = Arc::new(Mutex::new(Window::new(spec.clone())));
    let stop = Arc::new(AtomicBool::new(false));
    let up = Arc::new(AtomicBool::new(false));
    let (w, s, u, sp, name) =
        (window.clone(), stop.clone(), up.clone(), spec.clone(), tunnel.to_owned());
    let thread = std::thread::Builder::new()
        .name(format!("health-{tunnel}"))
        .spawn(move || run(&name, &sp, &w, &s, &u, &events));
    let thread = match thread {
        Ok(t) => Some(t),
        Err(e) => {
            lock(&window).last_error = Some(format!("cannot start the prober thread: {e}"));
            None
        }
    };
    Checker { spec, window, stop, up, thread }
}

fn run(
    tunnel: &str,
    spec: &HealthCheck,
    window: &Mutex<Window>,
    stop: &AtomicBool,
    up: &AtomicBool,
    events: &EventBus,
) {
    let (src, dst) = (spec.source, spec.destination);
    let v6 = dst.is_ipv6();
    let ident = next_ident();
    let interval = spec.interval.as_duration().max(Duration::from_millis(100));
    let timeout = spec.timeout.as_duration().max(Duration::from_millis(10));
    let subject = format!("tunnel/{tunnel}");
    let mut sock: Option<(Socket, bool)> = None;
    let mut seq: u16 = 0;
    while !stop.load(Ordering::Relaxed) {
        let t0 = Instant::now();
        if !up.load(Ordering::Relaxed) {
            sleep_unless(TICK, stop);
            continue;
        }
        seq = seq.wrapping_add(1);
        if sock.is_none() {
            // The source address may appear later (the reconciler adds it): retried each round.
            match open(src, dst) {
                Ok(s) => sock = Some(s),
                Err(e) => {
                    lock(window).record(Err(e.to_string()));
                    sleep_unless(interval, stop);
                    continue;
                }
            }
        }
        let Some((s, raw)) = sock.as_ref() else { continue };
        let result = probe(s, *raw, v6, ident, seq, timeout, stop);
        if stop.load(Ordering::Relaxed) {
            break;
        }
        // The tunnel went down meanwhile: the probe measured nothing about it.
        if !up.load(Ordering::Relaxed) {
            continue;
        }
        let changed = lock(window).record(result);
        match changed {
            Some(HealthState::Unhealthy) => {
                let why = lock(window).report().last_error.unwrap_or_default();
                events.emit(
                    EventKind::HealthUnhealthy,
                    &subject,
                    Severity::Warning,
                    format!(
                        "health check {src} -> {dst} failed {} times in a row: {why}",
                        spec.failure_threshold.max(1)
                    ),
                );
            }
            Some(HealthState::Healthy) => events.emit(
                EventKind::HealthHealthy,
                &subject,
                Severity::Info,
                format!("health check {src} -> {dst} answers again"),
            ),
            _ => {}
        }
        sleep_unless(interval.saturating_sub(t0.elapsed()), stop);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use isthmus_config::Dur;

    fn spec(fail: u32, recover: u32, latency_ms: Option<u64>) -> HealthCheck {
        HealthCheck {
            source: "10.63.1.1".parse().unwrap(),
            destination: "10.63.2.1".parse().unwrap(),
            interval: Dur::secs(1),
            timeout: Dur::secs(1),
            failure_threshold: fail,
            recovery_threshold: recover,
            latency_threshold: latency_ms.map(Dur::millis),
        }
    }

    fn ms(n: u64) -> Result<Duration, String> {
        Ok(Duration::from_millis(n))
    }

    #[test]
    fn window_reports_loss_latency_and_jitter() {
        let mut w = Window::new(spec(3, 2, None));
        for r in [ms(10), ms(14), Err("no answer within 1000 ms".into()), ms(12)] {
            w.record(r);
        }
        let r = w.report();
        assert_eq!((r.sent, r.received), (4, 3));
        assert!((r.loss_ratio - 0.25).abs() < 1e-9);
        assert!((r.latency_avg_ms.unwrap() - 12.0).abs() < 1e-6);
        assert!((r.latency_min_ms.unwrap() - 10.0).abs() < 1e-6);
        assert!((r.latency_max_ms.unwrap() - 14.0).abs() < 1e-6);
        // |14 - 10| and |12 - 14| between consecutive answers: mean 3 ms.
        assert!((r.jitter_ms.unwrap() - 3.0).abs() < 1e-6);
        assert_eq!(r.probes_total, 4);
    }

    #[test]
    fn window_slides_over_the_last_probes() {
        let mut w = Window::new(spec(3, 2, None));
        for _ in 0..WINDOW {
            w.record(Err("lost".into()));
        }
        assert_eq!(w.report().loss_ratio, 1.0);
        for _ in 0..WINDOW {
            w.record(ms(5));
        }
        let r = w.report();
        assert_eq!((r.sent, r.received, r.loss_ratio), (WINDOW as u32, WINDOW as u32, 0.0));
        assert_eq!(r.probes_total, 2 * WINDOW as u64);
    }

    #[test]
    fn consecutive_thresholds_decide_health() {
        let mut w = Window::new(spec(3, 2, None));
        assert_eq!(w.state(), HealthState::Unknown);
        assert_eq!(w.record(ms(1)), None);
        assert_eq!(w.record(ms(1)), Some(HealthState::Healthy));
        // Two failures are not three; a good probe resets the count.
        w.record(Err("lost".into()));
        w.record(Err("lost".into()));
        assert_eq!(w.record(ms(1)), None);
        w.record(Err("lost".into()));
        w.record(Err("lost".into()));
        assert_eq!(w.record(Err("lost".into())), Some(HealthState::Unhealthy));
        assert_eq!(w.report().last_error.as_deref(), Some("lost"));
        assert_eq!(w.record(ms(1)), None);
        assert_eq!(w.record(ms(1)), Some(HealthState::Healthy));
        assert_eq!(w.report().last_error, None);
    }

    #[test]
    fn a_slow_answer_counts_as_a_failure() {
        let mut w = Window::new(spec(1, 1, Some(50)));
        assert_eq!(w.record(ms(80)), Some(HealthState::Unhealthy));
        let r = w.report();
        // Answered (no loss), but too slow.
        assert_eq!(r.loss_ratio, 0.0);
        assert!(r.last_error.unwrap().contains("over the latency threshold 50 ms"));
        assert_eq!(w.record(ms(20)), Some(HealthState::Healthy));
    }

    #[test]
    fn echo_request_checksums_and_reply_matching() {
        let req = echo_request(false, 0x1234, 7);
        assert!(Icmpv4Packet::new_checked(&req[..]).unwrap().verify_checksum());
        // The reply a host sends: type 0, checksum fixed up.
        let mut rep = req.clone();
        rep[0] = V4_ECHO_REPLY;
        rep[2..4].copy_from_slice(&[0, 0]);
        let c = checksum::checksum(&rep);
        rep[2..4].copy_from_slice(&c.to_be_bytes());
        assert!(is_reply(&rep, false, false, 0x1234, 7));
        assert!(!is_reply(&rep, false, false, 0x1234, 8), "another sequence number");
        assert!(!is_reply(&rep, false, true, 0x9999, 7), "raw without an IPv4 header");
        assert!(!is_reply(&req, false, false, 0x1234, 7), "our own request");
        assert!(!is_reply(&rep[..5], false, false, 0x1234, 7), "truncated");
        let mut bad = rep.clone();
        bad[9] ^= 1;
        assert!(!is_reply(&bad, false, false, 0x1234, 7), "bad checksum");
        // On a raw socket the IPv4 header comes first.
        let mut ip = vec![0x45, 0, 0, 0, 0, 0, 0, 0, 64, 1, 0, 0, 10, 63, 2, 1, 10, 63, 1, 1];
        let total = (ip.len() + rep.len()) as u16;
        ip[2..4].copy_from_slice(&total.to_be_bytes());
        ip.extend_from_slice(&rep);
        assert!(is_reply(&ip, false, true, 0x1234, 7));
        assert!(!is_reply(&ip, false, true, 0x1235, 7), "another identifier");
        // ICMPv6: no IP header on either socket kind.
        let mut r6 = echo_request(true, 1, 2);
        r6[0] = V6_ECHO_REPLY;
        assert!(is_reply(&r6, true, true, 1, 2));
        assert!(!is_reply(&r6, false, false, 1, 2));
    }
}

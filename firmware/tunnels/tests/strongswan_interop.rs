//! Interoperability with strongSwan 5.9 (charon with `kernel-libipsec`, which always encapsulates
//! ESP in UDP 4500), root-only, in network namespaces.
//!
//! Topology (each test picks its own third octet `n`):
//!
//! ```text
//!  host-i 10.41.n.2 ── 10.41.n.1 [Isthmus gw] 10.40.n.1 ── WAN ── 10.40.n.2 [strongSwan gw] 10.42.n.1 ── 10.42.n.2 host-s
//! ```
//!
//! The Isthmus side runs the IKE driver in its namespace; the strongSwan side runs charon through
//! the testkit harness. What a user would see is asserted: both sides show the tunnel up, events
//! explain failures, a frozen peer is declared dead and the tunnel comes back.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use isthmus_ike::{
    Cause, Dpd, DpdAction, Lifetime, Psk, StartAction, TrafficSelector, TunnelConfig,
    parse_esp_list, parse_ike_list,
};
use isthmus_testkit::strongswan::{Action, Retransmit, Strongswan, SwanChild, SwanConn};
use isthmus_testkit::{Netns, require_root, veth};
use isthmus_tunnels::{
    CloseAction, DataLimits, DriverConfig, EspOptions, Tunnel, TunnelEvent, TunnelState, Tunnels,
    start_with_dataplane,
};

const PSK: &str = "interop-test-psk-0123456789";

struct Lab {
    // Field order is drop order: the driver and charon stop before their namespaces go.
    tunnels: Tunnels,
    dp: Arc<isthmus_dataplane::Dataplane>,
    swan: Strongswan,
    events: Receiver<TunnelEvent>,
    n: u8,
    host_i: Netns,
    host_s: Netns,
    gw_i: Netns,
    gw_s: Netns,
}

fn ts(s: &str) -> TrafficSelector {
    s.parse().unwrap()
}

/// Isthmus's tunnel towards strongSwan in lab `n`.
fn isthmus_tunnel(n: u8) -> TunnelConfig {
    let local: SocketAddr = format!("10.40.{n}.1:500").parse().unwrap();
    let remote: SocketAddr = format!("10.40.{n}.2:500").parse().unwrap();
    let mut t = TunnelConfig::new(
        "to-swan",
        local,
        remote,
        Psk::new(PSK.as_bytes().to_vec()),
        vec![ts(&format!("10.41.{n}.0/24"))],
        vec![ts(&format!("10.42.{n}.0/24"))],
    );
    t.local_id = "isthmus.example".parse().unwrap();
    t.remote_id = "swan.example".parse().unwrap();
    t.start_action = StartAction::None;
    t.children[0].name = "net".into();
    t
}

/// strongSwan's side of the same tunnel.
fn swan_conn(n: u8) -> SwanConn {
    SwanConn::interop_lab(n, PSK)
}

fn lab(n: u8, ours: TunnelConfig, close: CloseAction, theirs: SwanConn) -> Lab {
    lab_with(n, ours, close, theirs, EspOptions::default())
}

fn lab_with(
    n: u8,
    ours: TunnelConfig,
    close: CloseAction,
    theirs: SwanConn,
    esp: EspOptions,
) -> Lab {
    let gw_i = Netns::new("iti");
    let gw_s = Netns::new("its");
    let host_i = Netns::new("ithi");
    let host_s = Netns::new("iths");
    veth(&gw_i, "wan-i", &format!("10.40.{n}.1/24"), &gw_s, "wan-s", &format!("10.40.{n}.2/24"));
    veth(&gw_i, "lan-i", &format!("10.41.{n}.1/24"), &host_i, "eth0", &format!("10.41.{n}.2/24"));
    veth(&gw_s, "lan-s", &format!("10.42.{n}.1/24"), &host_s, "eth0", &format!("10.42.{n}.2/24"));
    host_i.sh(&format!("ip route add default via 10.41.{n}.1"));
    host_s.sh(&format!("ip route add default via 10.42.{n}.1"));
    for g in [&gw_i, &gw_s] {
        g.sh("sysctl -qw net.ipv4.ip_forward=1 net.ipv6.conf.all.disable_ipv6=1");
    }
    let swan = Strongswan::start_with(&gw_s, &[theirs], Retransmit::default());
    let cfg = DriverConfig {
        endpoint: isthmus_ike::EndpointConfig {
            retransmit_timeout: Duration::from_secs(1),
            retransmit_base: 1.4,
            retransmit_tries: 3,
            ..Default::default()
        },
        retry_initial: Duration::from_secs(1),
        retry_max: Duration::from_secs(4),
        ..Default::default()
    };
    let wan = format!("10.40.{n}.1").parse().unwrap();
    let (tunnels, dp) = gw_i.run(move || {
        start_with_dataplane(cfg, isthmus_dataplane::Config::new("ist0", wan), esp).unwrap()
    });
    // The net reconciler's job in the appliance: the remote LAN routes into the TUN device.
    gw_i.sh(&format!("ip route add 10.42.{n}.0/24 dev ist0"));
    let events = tunnels.subscribe();
    swan.load_all().unwrap();
    tunnels.add_tunnel(Tunnel { ike: ours, close_action: close }).unwrap();
    Lab { tunnels, dp, swan, events, n, host_i, host_s, gw_i, gw_s }
}

impl Lab {
    /// Waits for an event matching `f`, returning it; panics with the event log and both sides'
    /// state after `timeout`.
    fn expect(
        &self,
        timeout: Duration,
        what: &str,
        f: impl Fn(&TunnelEvent) -> bool,
    ) -> TunnelEvent {
        let deadline = Instant::now() + timeout;
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.events.recv_timeout(left) {
                Ok(e) if f(&e) => return e,
                Ok(e) => seen.push(e.to_string()),
                Err(_) => panic!(
                    "lab {}: no {what} within {timeout:?}\nevents: {seen:#?}\nisthmus: {:#?}\n\
                     dataplane: {:#?}\nstrongSwan: {}\n{}",
                    self.n,
                    self.tunnels.status(),
                    self.dp.counters(),
                    self.swan.status(),
                    self.swan.log()
                ),
            }
        }
    }

    fn assert_up_both_sides(&self) {
        let st = self.tunnels.tunnel("to-swan").unwrap();
        assert_eq!(st.state, TunnelState::Up, "{st:#?}");
        assert_eq!(st.children.len(), 1, "{st:#?}");
        assert!(st.encap, "libipsec forces UDP encapsulation: {st:#?}");
        assert!(
            self.swan.wait_until(Duration::from_secs(5), |s| s.ike_established("to-isthmus")
                && s.children_installed("net") == 1),
            "strongSwan does not show the tunnel: {}",
            self.swan.status()
        );
        // Both sides agree on the SPIs.
        let s = self.swan.status();
        let c = &st.children[0];
        assert!(
            s.contains(&format!("{:08x}", c.spi_in)) && s.contains(&format!("{:08x}", c.spi_out)),
            "SPIs differ: ours in {:08x} out {:08x}; strongSwan: {s}",
            c.spi_in,
            c.spi_out
        );
    }
}

impl Lab {
    /// A stream of `count` pings, one every `interval` seconds, from the Isthmus side's LAN
    /// host, running while the test goes on.
    fn ping_stream(&self, count: u32, interval: &str) -> KillOnDrop {
        let child = self
            .host_i
            .command("ping")
            .args(["-n", "-q", "-c", &count.to_string(), "-i", interval, "-W", "2"])
            .arg(format!("10.42.{}.2", self.n))
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        KillOnDrop(Some(child))
    }

    /// Waits for a [`Lab::ping_stream`] to end and asserts that every ping was answered;
    /// returns (sent, received).
    fn finish_stream(&self, mut ping: KillOnDrop, what: &str) -> (u32, u32) {
        let out = ping.0.take().unwrap().wait_with_output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (sent, got) = parse_ping(&text).unwrap_or_else(|| panic!("no ping summary: {text}"));
        println!("{what}: {sent} pings sent, {got} answered");
        assert_eq!(
            got,
            sent,
            "pings lost {what}\ndataplane: {:#?}\nstrongSwan: {}\n{}",
            self.dp.counters(),
            self.swan.status(),
            self.swan.log()
        );
        (sent, got)
    }

    /// Traffic all along (`pings` at 20 a second) while both sides rekey both SAs: we rekey the
    /// CHILD SA whose inbound SPI is `first_in` (the successor replaces it, make-before-break,
    /// and the old one goes), strongSwan rekeys it, then each side rekeys the IKE SA. Not a ping
    /// may be lost.
    fn rekeys_by_both_sides_under_traffic(&self, first_in: u32, pings: u32) {
        let ping = self.ping_stream(pings, "0.05");
        std::thread::sleep(Duration::from_secs(1));
        self.tunnels.rekey_child("to-swan", "net").unwrap();
        self.expect(
            Duration::from_secs(10),
            "CHILD SA rekeyed by us",
            |e| matches!(e, TunnelEvent::ChildUp { rekey_of: Some(old), .. } if *old == first_in),
        );
        self.expect(
            Duration::from_secs(15),
            "old CHILD SA removed",
            |e| matches!(e, TunnelEvent::ChildDown { spi_in, .. } if *spi_in == first_in),
        );
        std::thread::sleep(Duration::from_secs(1));
        self.swan.rekey_child("net").unwrap();
        self.expect(Duration::from_secs(10), "CHILD SA rekeyed by strongSwan", |e| {
            matches!(e, TunnelEvent::ChildUp { rekey_of: Some(_), .. })
        });
        std::thread::sleep(Duration::from_secs(1));
        self.tunnels.rekey_ike("to-swan").unwrap();
        self.expect(Duration::from_secs(10), "IKE SA rekeyed by us", |e| {
            matches!(e, TunnelEvent::IkeUp { rekeyed: true, .. })
        });
        std::thread::sleep(Duration::from_secs(1));
        self.swan.rekey_ike("to-isthmus").unwrap();
        self.expect(Duration::from_secs(10), "IKE SA rekeyed by strongSwan", |e| {
            matches!(e, TunnelEvent::IkeUp { rekeyed: true, .. })
        });
        self.finish_stream(ping, "under rekeys by both sides");
    }

    /// Pings the strongSwan side's LAN host from the Isthmus side's; returns (sent, received).
    fn ping(&self, count: u32, interval: &str) -> (u32, u32) {
        let out = self
            .host_i
            .sh_output(&format!("ping -n -q -c {count} -i {interval} -W 2 10.42.{}.2", self.n));
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        parse_ping(&text).unwrap_or_else(|| panic!("no ping summary: {text}"))
    }

    fn assert_ping_passes(&self) {
        let (sent, got) = self.ping(3, "0.2");
        assert_eq!(
            got,
            sent,
            "LAN-to-LAN ping through the Isthmus dataplane and strongSwan lost packets\n\
             dataplane: {:#?}\nstrongSwan: {}",
            self.dp.counters(),
            self.swan.status()
        );
        // The packets went through the CHILD SA on both sides.
        let c = self.dp.counters();
        assert!(
            c.sas.iter().any(|s| s.counters.packets >= u64::from(sent)),
            "the Isthmus SAs did not count the pings: {c:#?}"
        );
    }
}

/// `3 packets transmitted, 3 received` -> (3, 3).
fn parse_ping(text: &str) -> Option<(u32, u32)> {
    let line = text.lines().find(|l| l.contains("packets transmitted"))?;
    let mut nums =
        line.split(',').map(|p| p.split_whitespace().next().and_then(|n| n.parse().ok()));
    Some((nums.next()??, nums.next()??))
}

fn is_child_up(e: &TunnelEvent) -> bool {
    matches!(e, TunnelEvent::ChildUp { rekey_of: None, .. })
}

#[test]
fn isthmus_initiates_to_strongswan() {
    if !require_root() || !isthmus_testkit::strongswan::available() {
        return;
    }
    let lab = lab(11, isthmus_tunnel(11), CloseAction::None, swan_conn(11));
    lab.tunnels.initiate("to-swan").unwrap();
    lab.expect(Duration::from_secs(20), "IKE SA", |e| matches!(e, TunnelEvent::IkeUp { .. }));
    lab.expect(Duration::from_secs(5), "CHILD SA", is_child_up);
    lab.assert_up_both_sides();
    lab.assert_ping_passes();

    // Terminating deletes the SAs on the peer too.
    lab.tunnels.terminate("to-swan").unwrap();
    lab.expect(Duration::from_secs(10), "IKE SA down", |e| {
        matches!(e, TunnelEvent::IkeDown { .. })
    });
    assert!(
        lab.swan.wait_until(Duration::from_secs(5), |s| !s.ike_established("to-isthmus")),
        "strongSwan kept the IKE SA: {}",
        lab.swan.status()
    );
}

#[test]
fn strongswan_initiates_to_isthmus() {
    if !require_root() || !isthmus_testkit::strongswan::available() {
        return;
    }
    let lab = lab(12, isthmus_tunnel(12), CloseAction::None, swan_conn(12));
    lab.swan.initiate("net").unwrap_or_else(|e| panic!("{e}\n{}", lab.swan.log()));
    lab.expect(Duration::from_secs(10), "IKE SA", |e| matches!(e, TunnelEvent::IkeUp { .. }));
    lab.expect(Duration::from_secs(5), "CHILD SA", is_child_up);
    lab.assert_up_both_sides();
    lab.assert_ping_passes();
}

#[test]
fn proposal_mismatch_is_explained() {
    if !require_root() || !isthmus_testkit::strongswan::available() {
        return;
    }
    let mut ours = isthmus_tunnel(13);
    ours.ike_proposals = parse_ike_list("aes256gcm16-prfsha256-x25519").unwrap();
    let mut theirs = swan_conn(13);
    theirs.ike_proposals = "aes256gcm16-prfsha256-ecp256".into();
    let lab = lab(13, ours, CloseAction::None, theirs);
    lab.tunnels.initiate("to-swan").unwrap();
    let e = lab.expect(Duration::from_secs(20), "explained failure", |e| {
        matches!(e, TunnelEvent::Failed(_))
    });
    let TunnelEvent::Failed(x) = e else { unreachable!() };
    assert!(
        matches!(x.cause, Cause::PeerRefused(n) if n.to_string().contains("NO_PROPOSAL_CHOSEN")),
        "{x}"
    );
    assert!(x.ours.contains("x25519"), "the explanation names what we offered: {x}");
    let st = lab.tunnels.tunnel("to-swan").unwrap();
    assert_ne!(st.state, TunnelState::Up);
    assert_eq!(st.last_failure.as_ref(), Some(&x), "status keeps the explanation");
    println!("explanation: {x}");
}

#[test]
fn strongswan_proposal_refused_by_isthmus_is_explained() {
    if !require_root() || !isthmus_testkit::strongswan::available() {
        return;
    }
    let mut ours = isthmus_tunnel(14);
    ours.children[0].esp_proposals = parse_esp_list("aes128gcm16").unwrap();
    let mut theirs = swan_conn(14);
    theirs.esp_proposals = "aes256gcm16".into();
    let lab = lab(14, ours, CloseAction::None, theirs);
    let _ = lab.swan.initiate("net");
    let e = lab.expect(Duration::from_secs(10), "explained failure", |e| {
        matches!(e, TunnelEvent::Failed(_))
    });
    let TunnelEvent::Failed(x) = e else { unreachable!() };
    assert!(x.to_string().contains("NO_PROPOSAL_CHOSEN"), "{x}");
    assert!(x.theirs.as_deref().is_some_and(|t| t.contains("aes256gcm16")), "{x}");
    assert!(x.suggestion.is_some(), "a change that would match is named: {x}");
    println!("explanation: {x}");
}

#[test]
fn rekeys_with_strongswan_under_traffic_lose_nothing() {
    if !require_root() || !isthmus_testkit::strongswan::available() {
        return;
    }
    let lab = lab(15, isthmus_tunnel(15), CloseAction::None, swan_conn(15));
    lab.tunnels.initiate("to-swan").unwrap();
    let first = lab.expect(Duration::from_secs(20), "CHILD SA", is_child_up);
    let TunnelEvent::ChildUp { spi_in: first_in, .. } = first else { unreachable!() };
    lab.assert_ping_passes();

    lab.rekeys_by_both_sides_under_traffic(first_in, 240);
    lab.assert_up_both_sides();
    assert!(
        lab.swan
            .wait_until(Duration::from_secs(5), |s| s.status().matches("ESTABLISHED").count() == 1),
        "strongSwan holds one IKE SA after the rekeys: {}",
        lab.swan.status()
    );
    lab.assert_ping_passes();
}

/// Issue 14 item 15: a tunnel's counters are exact across CHILD SA rekeys started by either
/// side (a removed SA's final counters count, not its last sampled ones: 588 echo requests sent,
/// 582 counted), rekeys are counted, an IKE rekey keeps the uptime, no stale error is shown.
#[test]
fn counters_stay_exact_across_rekeys_by_either_side() {
    if !require_root() || !isthmus_testkit::strongswan::available() {
        return;
    }
    let lab = lab(23, isthmus_tunnel(23), CloseAction::None, swan_conn(23));
    lab.tunnels.initiate("to-swan").unwrap();
    lab.expect(Duration::from_secs(20), "CHILD SA", is_child_up);
    let up_since = lab.tunnels.tunnel("to-swan").unwrap().up_since.unwrap();

    // A counted stream: 50 echo requests a second while each side rekeys the CHILD SA twice.
    let ping = lab.ping_stream(400, "0.02");
    let rekeyed = |who: &str| {
        lab.expect(Duration::from_secs(10), &format!("CHILD SA rekeyed by {who}"), |e| {
            matches!(e, TunnelEvent::ChildUp { rekey_of: Some(_), .. })
        });
        std::thread::sleep(Duration::from_millis(700));
    };
    std::thread::sleep(Duration::from_millis(500));
    for _ in 0..2 {
        lab.tunnels.rekey_child("to-swan", "net").unwrap();
        rekeyed("Isthmus");
        lab.swan.rekey_child("net").unwrap();
        rekeyed("strongSwan");
    }
    lab.tunnels.rekey_ike("to-swan").unwrap();
    lab.expect(Duration::from_secs(10), "rekeyed IKE SA", |e| {
        matches!(e, TunnelEvent::IkeUp { rekeyed: true, .. })
    });
    let (sent, got) = lab.finish_stream(ping, "under rekeys (echo requests)");

    // The tunnel's totals: every SA it no longer has plus the installed ones.
    let totals = |dp: &isthmus_dataplane::Dataplane| {
        let c = dp.counters();
        let r = c.retired.get("to-swan").cloned().unwrap_or_default();
        let (mut out, mut inn) = (r.outbound.packets, r.inbound.packets);
        for s in c.sas.iter().filter(|s| s.tunnel == "to-swan") {
            match s.direction {
                isthmus_dataplane::Direction::Outbound => out += s.counters.packets,
                isthmus_dataplane::Direction::Inbound => inn += s.counters.packets,
            }
        }
        (out, inn)
    };
    let want = (u64::from(sent), u64::from(got));
    let deadline = Instant::now() + Duration::from_secs(10);
    while totals(&lab.dp) != want && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        totals(&lab.dp),
        want,
        "(echo requests, replies) counted by the tunnel vs sent and answered\n{:#?}",
        lab.dp.counters()
    );
    let st = lab.tunnels.tunnel("to-swan").unwrap();
    assert_eq!(st.rekeys, 5, "4 CHILD SA rekeys and one IKE SA rekey: {st:#?}");
    assert_eq!(st.up_since, Some(up_since), "the IKE rekey kept the uptime");
    assert_eq!(st.last_failure, None);
    assert_eq!(st.last_down_reason, None, "a rekey is not a going down: {st:#?}");
}

/// Ends a spawned process (by its pid) if the test panics before it finished.
struct KillOnDrop(Option<std::process::Child>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(c) = self.0.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

#[test]
fn frozen_strongswan_is_detected_by_dpd_and_the_tunnel_returns() {
    if !require_root() || !isthmus_testkit::strongswan::available() {
        return;
    }
    let mut ours = isthmus_tunnel(16);
    // A short delay puts the first unanswered liveness check within half a second of the freeze.
    let (ours_delay, timeout) = (Duration::from_millis(500), Duration::from_secs(10));
    ours.dpd = Dpd { delay: ours_delay, timeout, action: DpdAction::Restart };
    ours.ike_lifetime = Lifetime::IKE_DEFAULT;
    let mut theirs = swan_conn(16);
    theirs.dpd_delay = Some(Duration::from_secs(2));
    theirs.dpd_action = Action::Start;
    let lab = lab(16, ours, CloseAction::Restart, theirs);
    lab.tunnels.initiate("to-swan").unwrap();
    lab.expect(Duration::from_secs(20), "CHILD SA", is_child_up);

    lab.swan.freeze();
    let t0 = Instant::now();
    let down = lab
        .expect(Duration::from_secs(30), "dead peer", |e| matches!(e, TunnelEvent::IkeDown { .. }));
    let took = t0.elapsed();
    println!("dead peer declared after {took:?}: {down}");
    // Issue 14 item 14: dead at the configured timeout after the first unanswered liveness
    // check (sent within `delay` of the freeze), not at the retransmission due after it (7.1 s
    // with this lab's 1 s, x1.4, 3 tries schedule; 47.5 s for a 30 s timeout by default). The
    // window is one second: `delay` plus as much again for scheduling.
    assert!(
        took >= timeout && took <= timeout + Duration::from_secs(1),
        "dead peer declared {took:?} after the peer stopped; the timeout is {timeout:?}"
    );
    // The peer stays away long enough for the restart to fail too; the driver keeps trying.
    let failed =
        lab.expect(Duration::from_secs(30), "failed restart while the peer is away", |e| {
            matches!(e, TunnelEvent::Failed(_))
        });
    println!("restart while the peer is away: {failed}");
    lab.swan.thaw();
    let st = lab.tunnels.tunnel("to-swan").unwrap();
    assert!(
        st.last_down_reason.as_deref().is_some_and(|r| r.contains("stopped answering")),
        "{st:#?}"
    );
    // Restart: the tunnel comes back once the peer answers again.
    lab.expect(Duration::from_secs(40), "IKE SA back", |e| matches!(e, TunnelEvent::IkeUp { .. }));
    lab.expect(Duration::from_secs(10), "CHILD SA back", is_child_up);
    lab.assert_up_both_sides();
    lab.assert_ping_passes();
}

#[test]
fn trap_start_action_brings_the_tunnel_up_on_traffic_never_in_clear() {
    if !require_root() || !isthmus_testkit::strongswan::available() {
        return;
    }
    let mut ours = isthmus_tunnel(17);
    ours.start_action = StartAction::Trap;
    let lab = lab(17, ours, CloseAction::None, swan_conn(17));
    // Nothing happens until traffic: the tunnel waits, the SPD already protects the LANs.
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(lab.tunnels.tunnel("to-swan").unwrap().state, TunnelState::Down);
    assert!(!lab.swan.ike_established("to-isthmus"));

    // The first packets are dropped (no SA yet) and raise the acquire that starts the tunnel.
    let _ = lab.ping(2, "0.5");
    lab.expect(Duration::from_secs(20), "CHILD SA on traffic", is_child_up);
    let c = lab.dp.counters();
    assert!(c.io[isthmus_dataplane::Io::Acquires] >= 1, "no acquire raised: {c:#?}");
    assert!(
        c.drops[isthmus_dataplane::Drop::NoSa] >= 1,
        "the packets before the SA were not dropped as no_sa: {c:#?}"
    );
    lab.assert_up_both_sides();
    lab.assert_ping_passes();
}

#[test]
fn peer_closing_the_tunnel_restarts_it_with_close_action_restart() {
    if !require_root() || !isthmus_testkit::strongswan::available() {
        return;
    }
    let lab = lab(18, isthmus_tunnel(18), CloseAction::Restart, swan_conn(18));
    lab.tunnels.initiate("to-swan").unwrap();
    lab.expect(Duration::from_secs(20), "CHILD SA", is_child_up);
    lab.swan.terminate_ike("to-isthmus").unwrap();
    let down = lab.expect(Duration::from_secs(10), "IKE SA deleted by the peer", |e| {
        matches!(e, TunnelEvent::IkeDown { .. })
    });
    assert!(down.to_string().contains("deleted by the peer"), "{down}");
    lab.expect(Duration::from_secs(20), "IKE SA restarted", |e| {
        matches!(e, TunnelEvent::IkeUp { .. })
    });
    lab.expect(Duration::from_secs(10), "CHILD SA restarted", is_child_up);
    lab.assert_up_both_sides();
    lab.assert_ping_passes();
}

#[test]
fn wrong_psk_is_explained() {
    if !require_root() || !isthmus_testkit::strongswan::available() {
        return;
    }
    let mut theirs = swan_conn(19);
    theirs.psk = "not-the-same-psk-at-all".into();
    let lab = lab(19, isthmus_tunnel(19), CloseAction::None, theirs);
    lab.tunnels.initiate("to-swan").unwrap();
    let e = lab.expect(Duration::from_secs(20), "explained failure", |e| {
        matches!(e, TunnelEvent::Failed(_))
    });
    println!("explanation: {e}");
    assert!(e.to_string().contains("AUTHENTICATION_FAILED"), "{e}");
    assert!(!e.to_string().contains(PSK), "the explanation shows the PSK: {e}");
    assert_ne!(lab.tunnels.tunnel("to-swan").unwrap().state, TunnelState::Up);
}

#[test]
fn silent_peer_times_out_with_explanation_and_the_tunnel_is_retried() {
    if !require_root() || !isthmus_testkit::strongswan::available() {
        return;
    }
    let lab = lab(20, isthmus_tunnel(20), CloseAction::None, swan_conn(20));
    lab.swan.freeze();
    lab.tunnels.initiate("to-swan").unwrap();
    let e = lab.expect(Duration::from_secs(30), "explained timeout", |e| {
        matches!(e, TunnelEvent::Failed(_))
    });
    println!("explanation: {e}");
    let TunnelEvent::Failed(x) = e else { unreachable!() };
    assert!(matches!(x.cause, Cause::Timeout { .. }), "{x}");
    let st = lab.tunnels.tunnel("to-swan").unwrap();
    assert_eq!(st.last_failure.as_ref(), Some(&x), "status keeps the explanation");
    assert_ne!(st.state, TunnelState::Up);
    // The operator asked for the tunnel: the driver keeps trying, and it comes up once the
    // peer answers.
    lab.swan.thaw();
    lab.expect(Duration::from_secs(20), "IKE SA after the retry", |e| {
        matches!(e, TunnelEvent::IkeUp { .. })
    });
    lab.expect(Duration::from_secs(10), "CHILD SA after the retry", is_child_up);
    lab.assert_up_both_sides();
    lab.assert_ping_passes();
}

#[test]
fn lifetime_rekeys_under_traffic_lose_nothing() {
    if !require_root() || !isthmus_testkit::strongswan::available() {
        return;
    }
    let mut ours = isthmus_tunnel(21);
    ours.children[0].lifetime = Lifetime {
        rekey_time: Duration::from_secs(4),
        rand_time: Duration::from_secs(1),
        life_time: Duration::from_secs(20),
    };
    ours.ike_lifetime = Lifetime {
        rekey_time: Duration::from_secs(7),
        rand_time: Duration::from_secs(1),
        life_time: Duration::from_secs(30),
    };
    let lab = lab(21, ours, CloseAction::None, swan_conn(21));
    lab.tunnels.initiate("to-swan").unwrap();
    lab.expect(Duration::from_secs(20), "CHILD SA", is_child_up);
    // 12 s of traffic: about three CHILD rekeys and one IKE rekey, all by timer.
    let (sent, got) = lab.ping(240, "0.05");
    println!("under timed rekeys: {sent} pings sent, {got} answered");
    let st = lab.tunnels.tunnel("to-swan").unwrap();
    assert!(st.child_sas_installed >= 3, "CHILD SA not rekeyed by its lifetime: {st:#?}");
    assert!(st.ike_sas_established >= 2, "IKE SA not rekeyed by its lifetime: {st:#?}");
    assert_eq!(got, sent, "pings lost during timed rekeys: {:#?}", lab.dp.counters());
    lab.assert_up_both_sides();
}

#[test]
fn dataplane_soft_limit_triggers_a_rekey_without_loss() {
    if !require_root() || !isthmus_testkit::strongswan::available() {
        return;
    }
    let esp = EspOptions {
        limits: DataLimits {
            soft_packets: Some(40),
            hard_packets: Some(100_000),
            ..Default::default()
        },
        ..Default::default()
    };
    let lab = lab_with(22, isthmus_tunnel(22), CloseAction::None, swan_conn(22), esp);
    lab.tunnels.initiate("to-swan").unwrap();
    let first = lab.expect(Duration::from_secs(20), "CHILD SA", is_child_up);
    let TunnelEvent::ChildUp { spi_in: first_in, .. } = first else { unreachable!() };
    // 100 pings: the 40th packet through the SA reaches the soft limit.
    let (sent, got) = lab.ping(100, "0.05");
    let e = lab.expect(Duration::from_secs(10), "rekey on the soft packet limit", |e| {
        matches!(e, TunnelEvent::ChildUp { rekey_of: Some(_), .. })
    });
    assert!(
        matches!(e, TunnelEvent::ChildUp { rekey_of: Some(old), .. } if old == first_in),
        "{e}"
    );
    assert_eq!(got, sent, "pings lost around the soft-limit rekey: {:#?}", lab.dp.counters());
    lab.assert_up_both_sides();
}

/// The suites of issue 4 against strongSwan, alternating who initiates: each comes up, carries
/// a ping, and both sides name the same algorithms.
#[test]
fn proposals_interoperate_in_both_roles() {
    if !require_root() || !isthmus_testkit::strongswan::available() {
        return;
    }
    // (ours IKE, ours ESP, theirs IKE, theirs ESP, what strongSwan must show)
    let cases = [
        (
            "aes128gcm16-prfsha256-ecp256",
            "aes128gcm16",
            "aes128gcm16-prfsha256-ecp256",
            "aes128gcm16",
            ["AES_GCM_16-128/PRF_HMAC_SHA2_256/ECP_256", "ESP:AES_GCM_16-128"],
        ),
        // strongSwan's libipsec has no ESN ("IPsec SA: ESN not supported"): ESN is tested
        // between two Isthmus gateways in tests/driver.rs.
        (
            "aes256gcm16-prfsha384-ecp384",
            "aes256gcm16-noesn",
            "aes256gcm16-prfsha384-ecp384",
            "aes256gcm16",
            ["AES_GCM_16-256/PRF_HMAC_SHA2_384/ECP_384", "ESP:AES_GCM_16-256"],
        ),
        (
            "aes256gcm16-prfsha512-x25519",
            "aes256gcm16-x25519",
            "aes256gcm16-prfsha512-x25519",
            "aes256gcm16-x25519",
            ["AES_GCM_16-256/PRF_HMAC_SHA2_512/CURVE_25519", "ESP:AES_GCM_16-256"],
        ),
        // We prefer x25519; strongSwan accepts only ecp256 and answers INVALID_KE_PAYLOAD,
        // and the retry with ecp256 succeeds (RFC 7296 §1.2).
        (
            "aes256gcm16-prfsha256-x25519-ecp256",
            "aes256gcm16",
            "aes256gcm16-prfsha256-ecp256",
            "aes256gcm16",
            ["AES_GCM_16-256/PRF_HMAC_SHA2_256/ECP_256", "ESP:AES_GCM_16-256"],
        ),
        // The defaults of cloud VPN gateways and IDC routers (docs/interop.md): AES-CBC with
        // HMAC and MODP groups for IKE and ESP, and the other new transforms.
        (
            "aes128-sha256-modp2048",
            "aes128-sha256-modp2048",
            "aes128-sha256-modp2048",
            "aes128-sha256-modp2048",
            [
                "AES_CBC-128/HMAC_SHA2_256_128/PRF_HMAC_SHA2_256/MODP_2048",
                "ESP:AES_CBC-128/HMAC_SHA2_256_128",
            ],
        ),
        (
            "aes256-sha1-modp1024",
            "aes256-sha1",
            "aes256-sha1-modp1024",
            "aes256-sha1",
            ["AES_CBC-256/HMAC_SHA1_96/PRF_HMAC_SHA1/MODP_1024", "ESP:AES_CBC-256/HMAC_SHA1_96"],
        ),
        (
            "aes256-sha384-prfsha384-modp3072",
            "aes256-sha384-modp3072",
            "aes256-sha384-prfsha384-modp3072",
            "aes256-sha384-modp3072",
            [
                "AES_CBC-256/HMAC_SHA2_384_192/PRF_HMAC_SHA2_384/MODP_3072",
                "ESP:AES_CBC-256/HMAC_SHA2_384_192",
            ],
        ),
        (
            "aes192-sha512-ecp521",
            "aes192-sha512",
            "aes192-sha512-ecp521",
            "aes192-sha512",
            [
                "AES_CBC-192/HMAC_SHA2_512_256/PRF_HMAC_SHA2_512/ECP_521",
                "ESP:AES_CBC-192/HMAC_SHA2_512_256",
            ],
        ),
        (
            "3des-sha1-modp1536",
            "3des-sha1",
            "3des-sha1-modp1536",
            "3des-sha1",
            ["3DES_CBC/HMAC_SHA1_96/PRF_HMAC_SHA1/MODP_1536", "ESP:3DES_CBC/HMAC_SHA1_96"],
        ),
        (
            "aes256-sha256-modp2048s256",
            "aes256gcm16",
            "aes256-sha256-modp2048s256",
            "aes256gcm16",
            ["AES_CBC-256/HMAC_SHA2_256_128/PRF_HMAC_SHA2_256/MODP_2048_256", "ESP:AES_GCM_16-256"],
        ),
        (
            "chacha20poly1305-prfsha256-x25519",
            "chacha20poly1305",
            "chacha20poly1305-prfsha256-x25519",
            "chacha20poly1305",
            ["CHACHA20_POLY1305/PRF_HMAC_SHA2_256/CURVE_25519", "ESP:CHACHA20_POLY1305"],
        ),
    ];
    for (i, (oi, oe, ti, te, shown)) in cases.into_iter().enumerate() {
        let n = 40 + i as u8;
        let mut ours = isthmus_tunnel(n);
        ours.ike_proposals = parse_ike_list(oi).unwrap();
        ours.children[0].esp_proposals = parse_esp_list(oe).unwrap();
        let mut theirs = swan_conn(n);
        theirs.ike_proposals = ti.into();
        theirs.esp_proposals = te.into();
        let lab = lab(n, ours, CloseAction::None, theirs);
        // The INVALID_KE case needs us to initiate; the others alternate.
        let we_initiate = i % 2 == 0 || i == 3;
        if we_initiate {
            lab.tunnels.initiate("to-swan").unwrap();
        } else {
            lab.swan.initiate("net").unwrap_or_else(|e| panic!("{oi}: {e}\n{}", lab.swan.log()));
        }
        lab.expect(Duration::from_secs(20), &format!("CHILD SA with {oi} / {oe}"), is_child_up);
        lab.assert_up_both_sides();
        let st = lab.swan.status();
        for s in shown {
            assert!(st.contains(s), "{oi} / {oe}: strongSwan does not show {s}: {st}");
        }
        let ours = lab.tunnels.tunnel("to-swan").unwrap();
        println!(
            "interop ok ({}): IKE {} ESP {}",
            if we_initiate { "Isthmus initiated" } else { "strongSwan initiated" },
            ours.ike_suite.as_deref().unwrap_or("?"),
            ours.children[0].esp
        );
        lab.assert_ping_passes();
        // A CHILD rekey with this suite (with PFS where the ESP proposal names a group).
        lab.tunnels.rekey_child("to-swan", "net").unwrap();
        lab.expect(Duration::from_secs(10), &format!("CHILD rekey with {oe}"), |e| {
            matches!(e, TunnelEvent::ChildUp { rekey_of: Some(_), .. })
        });
        if oe.ends_with("-x25519") {
            assert!(
                lab.swan.wait_until(Duration::from_secs(5), |s| s
                    .status()
                    .contains("ESP:AES_GCM_16-256/CURVE_25519")),
                "the rekey did not use PFS with x25519: {}",
                lab.swan.status()
            );
        }
        lab.assert_ping_passes();
    }
}

/// Every tested row of docs/interop.md: strongSwan with the vendor's default proposals, Isthmus
/// with the row's, taking turns as initiator. Each comes up showing the row's algorithms, passes
/// a ping, and rekeys its CHILD SA and its IKE SA under traffic without losing a packet.
#[test]
fn vendor_defaults_from_docs_interop_md() {
    if !require_root() || !isthmus_testkit::strongswan::available() {
        return;
    }
    let rows: Vec<_> = isthmus_config::interop::peers().into_iter().filter(|r| r.tested).collect();
    assert!(rows.len() >= 10, "docs/interop.md lost its tested rows: {}", rows.len());
    for (i, row) in rows.iter().enumerate() {
        let n = 60 + i as u8;
        let missing = |what: &str| format!("docs/interop.md, {}: no {what}", row.peer);
        let theirs_p = row.defaults.as_ref().unwrap_or_else(|| panic!("{}", missing("defaults")));
        let ours_p = row.isthmus.as_ref().unwrap_or_else(|| panic!("{}", missing("proposals")));
        let shown = row.shown.as_ref().unwrap_or_else(|| panic!("{}", missing("swanctl names")));
        let what = format!("{} ({} / {})", row.peer, ours_p[0], ours_p[1]);
        let mut ours = isthmus_tunnel(n);
        ours.ike_proposals = parse_ike_list(&ours_p[0]).unwrap();
        ours.children[0].esp_proposals = parse_esp_list(&ours_p[1]).unwrap();
        let mut theirs = swan_conn(n);
        theirs.ike_proposals = theirs_p[0].clone();
        theirs.esp_proposals = theirs_p[1].clone();
        let lab = lab(n, ours, CloseAction::None, theirs);
        if i % 2 == 0 {
            lab.tunnels.initiate("to-swan").unwrap();
        } else {
            lab.swan.initiate("net").unwrap_or_else(|e| panic!("{what}: {e}\n{}", lab.swan.log()));
        }
        lab.expect(Duration::from_secs(20), &format!("CHILD SA with {what}"), is_child_up);
        lab.assert_up_both_sides();
        let st = lab.swan.status();
        for s in shown {
            assert!(st.contains(s.as_str()), "{what}: strongSwan does not show {s}: {st}");
        }
        lab.assert_ping_passes();
        let ping = lab.ping_stream(60, "0.05");
        std::thread::sleep(Duration::from_millis(500));
        lab.tunnels.rekey_child("to-swan", "net").unwrap();
        lab.expect(Duration::from_secs(10), &format!("CHILD rekey with {what}"), |e| {
            matches!(e, TunnelEvent::ChildUp { rekey_of: Some(_), .. })
        });
        lab.tunnels.rekey_ike("to-swan").unwrap();
        lab.expect(Duration::from_secs(10), &format!("IKE rekey with {what}"), |e| {
            matches!(e, TunnelEvent::IkeUp { rekeyed: true, .. })
        });
        let (sent, _) = lab.finish_stream(ping, &format!("{what}: during the rekeys"));
        lab.assert_up_both_sides();
        // The rekeyed SAs still name the row's algorithms.
        let st = lab.swan.status();
        for s in shown {
            assert!(st.contains(s.as_str()), "{what}: after the rekeys strongSwan shows {st}");
        }
        println!("interop ok: {what}, {sent} pings through both rekeys");
    }
}

/// Several selector pairs in one CHILD SA and several CHILD SAs in one IKE SA, with strongSwan
/// (RFC 7296 §2.9, §1.3.1): the first CHILD SA comes with IKE_AUTH, the second with
/// CREATE_CHILD_SA; each carries only its own traffic.
#[test]
fn several_selectors_and_child_sas_in_one_ike_sa() {
    if !require_root() || !isthmus_testkit::strongswan::available() {
        return;
    }
    let n = 27u8;
    let m = 100 + n;
    let mut ours = isthmus_tunnel(n);
    ours.children[0].remote_ts =
        vec![ts(&format!("10.42.{n}.0/25")), ts(&format!("10.42.{n}.128/25"))];
    let mut second = ours.children[0].clone();
    second.name = "net2".into();
    second.remote_ts = vec![ts(&format!("10.42.{m}.0/24"))];
    ours.children.push(second);
    let mut theirs = swan_conn(n);
    theirs.local_ts = format!("10.42.{n}.0/25,10.42.{n}.128/25");
    theirs.extra_children.push(SwanChild {
        name: "net2".into(),
        local_ts: format!("10.42.{m}.0/24"),
        remote_ts: format!("10.41.{n}.0/24"),
    });
    let lab = lab(n, ours, CloseAction::None, theirs);
    // A second address in each half of the first remote LAN, and a second LAN behind strongSwan.
    lab.host_s.sh(&format!(
        "ip addr add 10.42.{n}.130/24 dev eth0 && ip addr add 10.42.{m}.2/24 dev eth0"
    ));
    // libipsec installs a CHILD SA's policies only if the gateway has an address inside each
    // local selector.
    lab.gw_s.sh(&format!(
        "ip addr add 10.42.{m}.1/24 dev lan-s && ip addr add 10.42.{n}.129/24 dev lan-s"
    ));
    lab.gw_i.sh(&format!("ip route add 10.42.{m}.0/24 dev ist0"));

    lab.tunnels.initiate("to-swan").unwrap();
    let mut up = Vec::new();
    while up.len() < 2 {
        let e = lab.expect(Duration::from_secs(20), "both CHILD SAs", is_child_up);
        if let TunnelEvent::ChildUp { child, .. } = e {
            up.push(child);
        }
    }
    up.sort();
    assert_eq!(up, ["net", "net2"]);
    assert!(
        lab.swan.wait_until(Duration::from_secs(5), |s| s.children_installed("net") == 1
            && s.children_installed("net2") == 1),
        "strongSwan does not show both CHILD SAs: {}",
        lab.swan.status()
    );
    let st = lab.tunnels.tunnel("to-swan").unwrap();
    assert_eq!(st.ike_sas_established, 1, "one IKE SA carries both: {st:#?}");
    let net = st.children.iter().find(|c| c.name == "net").unwrap();
    assert_eq!(net.remote_ts, [format!("10.42.{n}.0/25"), format!("10.42.{n}.128/25")]);

    for dst in [format!("10.42.{n}.2"), format!("10.42.{n}.130"), format!("10.42.{m}.2")] {
        let out = lab.host_i.sh_output(&format!("ping -n -q -c 3 -i 0.2 -W 2 {dst}"));
        assert!(
            out.status.success(),
            "ping {dst} failed: {}\n{:#?}\n{}",
            String::from_utf8_lossy(&out.stdout),
            lab.dp.counters(),
            lab.swan.status()
        );
    }
    // Each CHILD SA carried its own traffic: 6 pings through `net`, 3 through `net2`.
    let c = lab.dp.counters();
    let carried = |child: &str| -> u64 {
        c.sas
            .iter()
            .filter(|s| s.child == child && s.direction == isthmus_dataplane::Direction::Outbound)
            .map(|s| s.counters.packets)
            .sum()
    };
    assert_eq!((carried("net"), carried("net2")), (6, 3), "{c:#?}");
}

#[test]
fn waiting_tunnel_is_not_started_by_traffic_and_drops_it() {
    if !require_root() || !isthmus_testkit::strongswan::available() {
        return;
    }
    let lab = lab(28, isthmus_tunnel(28), CloseAction::None, swan_conn(28));
    let (sent, got) = lab.ping(3, "0.3");
    assert_eq!((sent, got), (3, 0), "traffic passed without a tunnel");
    std::thread::sleep(Duration::from_millis(500));
    let c = lab.dp.counters();
    assert!(c.drops[isthmus_dataplane::Drop::NoSa] >= 3, "not dropped as no_sa: {c:#?}");
    assert_eq!(lab.tunnels.tunnel("to-swan").unwrap().state, TunnelState::Down);
    assert!(!lab.swan.ike_established("to-isthmus"), "traffic started the tunnel");
    // The peer brings it up.
    lab.swan.initiate("net").unwrap_or_else(|e| panic!("{e}\n{}", lab.swan.log()));
    lab.expect(Duration::from_secs(10), "CHILD SA", is_child_up);
    lab.assert_ping_passes();
}

/// IKE and ESP-in-UDP over an IPv6 WAN with strongSwan, IPv4 LANs inside: the tunnel comes up
/// and the LANs reach each other.
#[test]
fn ipv6_wan_with_strongswan() {
    if !require_root() || !isthmus_testkit::strongswan::available() {
        return;
    }
    let n = 29u8;
    let gw_i = Netns::new("iti");
    let gw_s = Netns::new("its");
    let host_i = Netns::new("ithi");
    let host_s = Netns::new("iths");
    for g in [&gw_i, &gw_s] {
        g.sh("sysctl -qw net.ipv4.ip_forward=1 net.ipv6.conf.all.disable_ipv6=0 net.ipv6.conf.default.accept_dad=0");
    }
    veth(&gw_i, "wan-i", "fd40:29::1/64", &gw_s, "wan-s", "fd40:29::2/64");
    veth(&gw_i, "lan-i", &format!("10.41.{n}.1/24"), &host_i, "eth0", &format!("10.41.{n}.2/24"));
    veth(&gw_s, "lan-s", &format!("10.42.{n}.1/24"), &host_s, "eth0", &format!("10.42.{n}.2/24"));
    host_i.sh(&format!("ip route add default via 10.41.{n}.1"));
    host_s.sh(&format!("ip route add default via 10.42.{n}.1"));
    let mut theirs = swan_conn(n);
    theirs.local_addr = "fd40:29::2".into();
    theirs.remote_addr = "fd40:29::1".into();
    let swan = Strongswan::start(&gw_s, &[theirs]);
    swan.load_all().unwrap();
    let mut ours = isthmus_tunnel(n);
    ours.local = "[fd40:29::1]:500".parse().unwrap();
    ours.remote = "[fd40:29::2]:500".parse().unwrap();
    let wan = "fd40:29::1".parse().unwrap();
    let (tunnels, dp) = gw_i.run(move || {
        start_with_dataplane(
            DriverConfig::default(),
            isthmus_dataplane::Config::new("ist0", wan),
            EspOptions::default(),
        )
        .unwrap()
    });
    gw_i.sh(&format!("ip route add 10.42.{n}.0/24 dev ist0"));
    let ev = tunnels.subscribe();
    tunnels.add_tunnel(Tunnel::new(ours)).unwrap();
    tunnels.initiate("to-swan").unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match ev.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(e) if is_child_up(&e) => break,
            Ok(_) => {}
            Err(_) => panic!("no CHILD SA over IPv6: {}\n{}", swan.status(), swan.log()),
        }
    }
    let out = host_i.sh_output(&format!("ping -n -q -c 3 -i 0.2 -W 2 10.42.{n}.2"));
    assert!(
        out.status.success(),
        "ping over the IPv6 WAN failed: {}\n{:#?}\n{}",
        String::from_utf8_lossy(&out.stdout),
        dp.counters(),
        swan.status()
    );
    assert!(swan.status().contains("fd40:29::1[4500]"), "{}", swan.status());
    // The driver and charon stop before their namespaces go.
    drop(tunnels);
    drop(swan);
}

/// Every IKE identity type of RFC 7296 §3.5 that PSK peers use, on the wire both ways: each
/// side presents one type and expects the other's, strongSwan initiating and answering in turn.
#[test]
fn identity_types_interoperate() {
    if !require_root() || !isthmus_testkit::strongswan::available() {
        return;
    }
    // (Isthmus's identity, strongSwan's, how strongSwan lists them, who starts).
    let cases = [
        (22, "gw@vpc.example", "ops@idc.example", ["'gw@vpc.example'", "'ops@idc.example'"], true),
        (24, "@#0a1b2c3d", "@#99887766", ["0a:1b:2c:3d", "99:88:77:66"], false),
        (25, "10.40.25.1", "@idc.example", ["'10.40.25.1'", "'idc.example'"], true),
    ];
    for (n, ours_id, theirs_id, shown, we_start) in cases {
        let mut ours = isthmus_tunnel(n);
        ours.local_id = ours_id.parse().unwrap();
        ours.remote_id = theirs_id.parse().unwrap();
        let mut theirs = swan_conn(n);
        theirs.local_id = theirs_id.into();
        theirs.remote_id = ours_id.into();
        let lab = lab(n, ours, CloseAction::None, theirs);
        if we_start {
            lab.tunnels.initiate("to-swan").unwrap();
        } else {
            lab.swan.initiate("net").unwrap_or_else(|e| panic!("{e}\n{}", lab.swan.log()));
        }
        let what = format!("{ours_id} <-> {theirs_id}");
        lab.expect(Duration::from_secs(20), &format!("CHILD SA with {what}"), is_child_up);
        lab.assert_up_both_sides();
        let st = lab.swan.status();
        for s in shown {
            assert!(st.contains(s), "{what}: strongSwan does not list {s}: {st}");
        }
        lab.assert_ping_passes();
    }
}

// ----- IKEv1 (issue 17) --------------------------------------------------------------------

/// Our tunnel and strongSwan's in lab `n` with IKEv1 (`version = 1`), AES-CBC/HMAC-SHA-256 and
/// MODP 2048, PFS on.
fn v1_pair(n: u8) -> (TunnelConfig, SwanConn) {
    let mut ours = isthmus_tunnel(n);
    ours.version = isthmus_ike::IkeVersion::V1;
    ours.ike_proposals = parse_ike_list("aes256-sha256-modp2048").unwrap();
    ours.children[0].esp_proposals = parse_esp_list("aes256-sha256-modp2048").unwrap();
    let mut theirs = swan_conn(n);
    theirs.version = 1;
    theirs.ike_proposals = "aes256-sha256-modp2048".into();
    theirs.esp_proposals = "aes256-sha256-modp2048".into();
    (ours, theirs)
}

#[test]
fn ikev1_rekeys_of_both_phases_by_either_side_under_traffic_lose_nothing() {
    if !require_root() || !isthmus_testkit::strongswan::available() {
        return;
    }
    let (ours, theirs) = v1_pair(40);
    let lab = lab(40, ours, CloseAction::None, theirs);
    lab.tunnels.initiate("to-swan").unwrap();
    let first = lab.expect(Duration::from_secs(20), "IKEv1 SA pair", is_child_up);
    let TunnelEvent::ChildUp { spi_in: first_in, esp, .. } = first else { unreachable!() };
    assert_eq!(esp, "aes256-sha256-modp2048-noesn");
    lab.assert_up_both_sides();
    assert!(lab.swan.status().contains("IKEv1"), "{}", lab.swan.status());
    assert_eq!(lab.tunnels.tunnel("to-swan").unwrap().ike_version, Some(1));
    lab.assert_ping_passes();

    // The old pair goes after its grace period, so the stream runs longer than IKEv2's.
    lab.rekeys_by_both_sides_under_traffic(first_in, 400);
    // Replaced SAs are deleted on both sides: one ISAKMP SA and one SA pair remain.
    assert!(
        lab.swan.wait_until(Duration::from_secs(20), |s| s.status().matches("ESTABLISHED").count()
            == 1
            && s.children_installed("net") == 1),
        "strongSwan holds more than one SA after the rekeys: {}",
        lab.swan.status()
    );
    std::thread::sleep(Duration::from_secs(11));
    lab.assert_up_both_sides();
    lab.assert_ping_passes();
}

#[test]
fn ikev1_strongswan_initiates_and_a_frozen_peer_is_found_by_dpd() {
    if !require_root() || !isthmus_testkit::strongswan::available() {
        return;
    }
    let (mut ours, mut theirs) = v1_pair(41);
    ours.dpd = Dpd {
        delay: Duration::from_secs(1),
        timeout: Duration::from_secs(8),
        action: DpdAction::Restart,
    };
    theirs.dpd_delay = Some(Duration::from_secs(2));
    let lab = lab(41, ours, CloseAction::Restart, theirs);
    lab.swan.initiate("net").unwrap_or_else(|e| panic!("{e}\n{}", lab.swan.log()));
    lab.expect(Duration::from_secs(10), "IKEv1 SA pair", is_child_up);
    lab.assert_up_both_sides();
    lab.assert_ping_passes();
    // R-U-THERE both ways keeps an idle tunnel up.
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(lab.tunnels.tunnel("to-swan").unwrap().state, TunnelState::Up);

    lab.swan.freeze();
    let t0 = Instant::now();
    let down = lab
        .expect(Duration::from_secs(30), "dead peer", |e| matches!(e, TunnelEvent::IkeDown { .. }));
    println!("dead peer declared after {:?}: {down}", t0.elapsed());
    assert!(down.to_string().contains("stopped answering"), "{down}");
    assert!(t0.elapsed() >= Duration::from_secs(8), "{:?}", t0.elapsed());
    lab.swan.thaw();
    lab.expect(Duration::from_secs(40), "ISAKMP SA back", |e| {
        matches!(e, TunnelEvent::IkeUp { .. })
    });
    lab.expect(Duration::from_secs(10), "SA pair back", is_child_up);
    lab.assert_ping_passes();
}

#[test]
fn ikev1_two_selector_pairs_are_two_sa_pairs() {
    if !require_root() || !isthmus_testkit::strongswan::available() {
        return;
    }
    let n = 42u8;
    let (mut ours, mut theirs) = v1_pair(n);
    ours.children[0].remote_ts =
        vec![ts(&format!("10.42.{n}.0/25")), ts(&format!("10.42.{n}.128/25"))];
    // strongSwan's IKEv1 CHILD_SA takes one selector pair: one per half.
    theirs.local_ts = format!("10.42.{n}.0/25");
    theirs.extra_children.push(SwanChild {
        name: "net2".into(),
        local_ts: format!("10.42.{n}.128/25"),
        remote_ts: format!("10.41.{n}.0/24"),
    });
    let lab = lab(n, ours, CloseAction::None, theirs);
    lab.host_s.sh(&format!("ip addr add 10.42.{n}.130/24 dev eth0"));
    lab.gw_s.sh(&format!("ip addr add 10.42.{n}.129/24 dev lan-s"));
    lab.tunnels.initiate("to-swan").unwrap();
    lab.expect(Duration::from_secs(20), "first SA pair", is_child_up);
    lab.expect(Duration::from_secs(10), "second SA pair", is_child_up);
    assert!(
        lab.swan.wait_until(Duration::from_secs(5), |s| s.children_installed("net") == 1
            && s.children_installed("net2") == 1),
        "strongSwan does not show both SA pairs: {}",
        lab.swan.status()
    );
    let st = lab.tunnels.tunnel("to-swan").unwrap();
    assert_eq!(st.children.len(), 2, "{st:#?}");
    let mut remote: Vec<_> = st.children.iter().map(|c| c.remote_ts.join(",")).collect();
    remote.sort();
    assert_eq!(remote, [format!("10.42.{n}.0/25"), format!("10.42.{n}.128/25")]);
    for dst in [format!("10.42.{n}.2"), format!("10.42.{n}.130")] {
        let out = lab.host_i.sh_output(&format!("ping -n -q -c 3 -i 0.2 -W 2 {dst}"));
        assert!(out.status.success(), "ping {dst}: {}", String::from_utf8_lossy(&out.stdout));
    }
    // Each SA pair carried its own half's pings.
    let c = lab.dp.counters();
    let out: Vec<u64> = c
        .sas
        .iter()
        .filter(|s| s.direction == isthmus_dataplane::Direction::Outbound)
        .map(|s| s.counters.packets)
        .collect();
    assert_eq!(out.iter().filter(|p| **p >= 3).count(), 2, "{c:#?}");
}

#[test]
fn ikev1_proxy_id_mismatch_and_wrong_psk_are_explained() {
    if !require_root() || !isthmus_testkit::strongswan::available() {
        return;
    }
    // strongSwan protects another subnet than the one we ask for.
    let (ours, mut theirs) = v1_pair(43);
    theirs.local_ts = "10.42.143.0/24".into();
    let first = lab(43, ours, CloseAction::None, theirs);
    first.tunnels.initiate("to-swan").unwrap();
    let e = first.expect(Duration::from_secs(20), "explained Quick Mode failure", |e| {
        matches!(e, TunnelEvent::Failed(_))
    });
    let TunnelEvent::Failed(x) = e else { unreachable!() };
    println!("proxy-ID mismatch: {x}");
    assert_eq!(x.exchange.to_string(), "Quick Mode", "{x}");
    assert!(x.to_string().contains("INVALID-ID-INFORMATION"), "{x}");
    assert!(x.ours.contains("10.41.43.0/24") && x.ours.contains("10.42.43.0/24"), "{x}");
    assert!(x.suggestion.as_deref().is_some_and(|s| s.contains("spd")), "{x}");
    drop(first);

    // And a key that differs.
    let (ours, mut theirs) = v1_pair(44);
    theirs.psk = "not-the-same-psk-at-all".into();
    let lab = lab(44, ours, CloseAction::None, theirs);
    lab.tunnels.initiate("to-swan").unwrap();
    let e = lab.expect(Duration::from_secs(30), "explained Main Mode failure", |e| {
        matches!(e, TunnelEvent::Failed(_))
    });
    println!("wrong PSK: {e}");
    assert!(e.to_string().contains("Main Mode"), "{e}");
    assert!(e.to_string().contains("pre-shared key"), "{e}");
    assert!(!e.to_string().contains(PSK), "the explanation shows the PSK: {e}");
    assert_ne!(lab.tunnels.tunnel("to-swan").unwrap().state, TunnelState::Up);
}

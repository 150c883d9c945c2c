//! The driver on its own, root-only, in network namespaces: sockets bound where the daemon runs
//! it, commands answered with errors that name what is wrong, two Isthmus gateways negotiating
//! with each other.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use isthmus_ike::{Psk, StartAction, TunnelConfig};
use isthmus_testkit::{Netns, require_root, veth};
use isthmus_tunnels::{
    CloseAction, ControlOnly, DriverConfig, Error, Tunnel, TunnelEvent, TunnelState, Tunnels,
};

fn tunnel(name: &str, local: &str, remote: &str, lts: &str, rts: &str) -> TunnelConfig {
    let local: SocketAddr = format!("{local}:500").parse().unwrap();
    let remote: SocketAddr = format!("{remote}:500").parse().unwrap();
    let mut t = TunnelConfig::new(
        name,
        local,
        remote,
        Psk::new(b"driver-test-psk".to_vec()),
        vec![lts.parse().unwrap()],
        vec![rts.parse().unwrap()],
    );
    t.start_action = StartAction::None;
    t
}

#[test]
fn driver_binds_ike_ports_in_its_namespace_and_answers_commands() {
    if !require_root() {
        return;
    }
    let a = Netns::new("itd");
    let b = Netns::new("itd");
    veth(&a, "wa", "10.40.30.1/24", &b, "wb", "10.40.30.2/24");
    let t = a.run(|| Tunnels::start(DriverConfig::default(), Box::new(ControlOnly)).unwrap());
    let cfg = tunnel("t1", "10.40.30.1", "10.40.30.2", "10.41.30.0/24", "10.42.30.0/24");
    t.add_tunnel(Tunnel::new(cfg.clone())).unwrap();

    let ss = a.sh("ss -Huln");
    assert!(ss.contains("10.40.30.1:500 "), "port 500 not bound in the namespace: {ss}");
    assert!(ss.contains("10.40.30.1:4500 "), "port 4500 not bound in the namespace: {ss}");
    assert!(!b.sh("ss -Huln").contains(":500 "), "bound in the wrong namespace");

    let st = t.tunnel("t1").unwrap();
    assert_eq!(st.state, TunnelState::Down);
    assert!(st.children.is_empty());

    assert!(matches!(t.add_tunnel(Tunnel::new(cfg)), Err(Error::DuplicateTunnel(n)) if n == "t1"));
    let e = t.initiate("nope").unwrap_err();
    assert_eq!(e.to_string(), "no tunnel named `nope`");
    let e = t.rekey_child("t1", "t1").unwrap_err();
    assert_eq!(e.to_string(), "tunnel `t1` has no installed CHILD SA named `t1`");

    t.remove_tunnel("t1").unwrap();
    assert!(t.tunnel("t1").is_none());
    t.shutdown();
    // The sockets go with the driver.
    assert!(!a.sh("ss -Huln").contains(":500 "), "port 500 still bound after shutdown");
}

/// The log as the daemon writes it, captured: every line, from every thread.
fn captured_log() -> std::sync::Arc<std::sync::Mutex<Vec<u8>>> {
    static LOG: std::sync::OnceLock<std::sync::Arc<std::sync::Mutex<Vec<u8>>>> =
        std::sync::OnceLock::new();
    LOG.get_or_init(|| {
        let buf = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = buf.clone();
        let make = move || Captured(sink.clone());
        let sub = tracing_subscriber::fmt().with_ansi(false).with_writer(make).finish();
        tracing::subscriber::set_global_default(sub).unwrap();
        buf
    })
    .clone()
}

struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Issue 14 item 12: every IKE_SA_INIT from an unknown address wrote a log line (and the daemon
/// an event and a second line): 7.2 MiB for 80,000 datagrams. Reports are limited per source and
/// reason, and what was suppressed is summarised once the interval ends.
#[test]
fn ike_sa_init_floods_from_unknown_addresses_are_reported_within_a_limit() {
    if !require_root() {
        return;
    }
    let log = captured_log();
    let a = Netns::new("itf");
    let b = Netns::new("itf");
    veth(&a, "wa", "10.40.34.1/24", &b, "wb", "10.40.34.2/24");
    b.sh("ip addr add 10.40.34.9/24 dev wb && ip addr add 10.40.34.10/24 dev wb");
    let cfg = DriverConfig {
        failure_reports: isthmus_tunnels::ratelimit::Limits {
            window: Duration::from_secs(2),
            ..Default::default()
        },
        ..Default::default()
    };
    let burst = u64::from(cfg.failure_reports.burst);
    let t = a.run(move || Tunnels::start(cfg, Box::new(ControlOnly)).unwrap());
    let events = t.subscribe();
    t.add_tunnel(Tunnel::new(tunnel(
        "t1",
        "10.40.34.1",
        "10.40.34.2",
        "10.41.34.0/24",
        "10.42.34.0/24",
    )))
    .unwrap();

    // A real IKE_SA_INIT, sent again and again from two addresses no tunnel knows.
    const FLOOD: u64 = 1000;
    let sources = ["10.40.34.9", "10.40.34.10"];
    for src in sources {
        let init = {
            let mut ep = isthmus_ike::Endpoint::new(Default::default(), [7; 32]);
            ep.add_tunnel(tunnel("x", src, "10.40.34.1", "10.42.34.0/24", "10.41.34.0/24"))
                .unwrap();
            ep.initiate("x", Instant::now()).unwrap();
            ep.poll_transmit().unwrap().data
        };
        let src = src.to_owned();
        b.run(move || {
            let s = std::net::UdpSocket::bind(format!("{src}:500")).unwrap();
            for i in 0..FLOOD {
                s.send_to(&init, "10.40.34.1:500").unwrap();
                if i % 20 == 0 {
                    // Paced so that the driver's receive buffer never overflows.
                    std::thread::sleep(Duration::from_millis(2));
                }
            }
        });
    }

    // Until both sources' summaries arrived: what was reported plus what was suppressed is what
    // was sent, and only a few lines per source were reported.
    let mut reported = std::collections::HashMap::<String, u64>::new();
    let mut suppressed = std::collections::HashMap::<String, u64>::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while sources
        .iter()
        .any(|s| reported.get(*s).unwrap_or(&0) + suppressed.get(*s).unwrap_or(&0) < FLOOD)
    {
        let left = deadline.saturating_duration_since(Instant::now());
        match events.recv_timeout(left) {
            Ok(TunnelEvent::Failed(x)) => {
                *reported.entry(x.peer.ip().to_string()).or_default() += 1
            }
            Ok(TunnelEvent::Suppressed { peer: Some(p), count, .. }) => {
                *suppressed.entry(p.to_string()).or_default() += count;
            }
            Ok(_) => {}
            Err(_) => {
                panic!("no summary of the flood: reported {reported:?}, suppressed {suppressed:?}")
            }
        }
    }
    for s in sources {
        assert!(reported[s] <= 2 * burst, "{s}: {} reports", reported[s]);
        assert_eq!(reported[s] + suppressed[s], FLOOD, "{s}");
    }
    let text = String::from_utf8_lossy(&log.lock().unwrap()).into_owned();
    for s in sources {
        let lines: Vec<&str> = text.lines().filter(|l| l.contains(&format!("{s}:500"))).collect();
        assert!(
            lines.len() as u64 <= 2 * burst + 2,
            "{s}: {} log lines for {FLOOD} datagrams:\n{}",
            lines.len(),
            lines[..lines.len().min(10)].join("\n")
        );
        let summary = text
            .lines()
            .find(|l| l.contains(&format!("from {s} suppressed")))
            .unwrap_or_else(|| panic!("no summary line for {s}:\n{text}"));
        println!("{summary}");
        assert!(summary.contains("IKE_SA_INIT failed"), "{summary}");
    }
    t.shutdown();
}

/// Two Isthmus gateways (no ESP dataplane) bring a tunnel up with each other: one starts it,
/// the other waits.
#[test]
fn two_isthmus_gateways_negotiate() {
    if !require_root() {
        return;
    }
    let a = Netns::new("itd");
    let b = Netns::new("itd");
    veth(&a, "wa", "10.40.31.1/24", &b, "wb", "10.40.31.2/24");
    let ta = a.run(|| Tunnels::start(DriverConfig::default(), Box::new(ControlOnly)).unwrap());
    let tb = b.run(|| Tunnels::start(DriverConfig::default(), Box::new(ControlOnly)).unwrap());
    let ev_a = ta.subscribe();
    let ev_b = tb.subscribe();
    let cb = tunnel("ab", "10.40.31.2", "10.40.31.1", "10.42.31.0/24", "10.41.31.0/24");
    tb.add_tunnel(Tunnel::new(cb)).unwrap();
    let mut ca = tunnel("ab", "10.40.31.1", "10.40.31.2", "10.41.31.0/24", "10.42.31.0/24");
    ca.start_action = StartAction::Start;
    ta.add_tunnel(Tunnel { ike: ca, close_action: CloseAction::Restart }).unwrap();

    for (name, ev) in [("a", &ev_a), ("b", &ev_b)] {
        let deadline = Instant::now() + Duration::from_secs(15);
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match ev.recv_timeout(left) {
                Ok(TunnelEvent::ChildUp { .. }) => break,
                Ok(e) => seen.push(e.to_string()),
                Err(_) => panic!("gateway {name}: no CHILD SA; events {seen:#?}"),
            }
        }
    }
    let sa = ta.tunnel("ab").unwrap();
    let sb = tb.tunnel("ab").unwrap();
    assert_eq!(sa.state, TunnelState::Up);
    assert_eq!(sb.state, TunnelState::Up);
    assert_eq!(sa.children[0].spi_in, sb.children[0].spi_out);
    assert_eq!(sa.children[0].spi_out, sb.children[0].spi_in);
    assert_eq!(sa.children[0].local_ts, ["10.41.31.0/24"]);
    assert_eq!(sb.children[0].local_ts, ["10.42.31.0/24"]);
    // What `sa list` shows beside the events' facts: one IKE SA seen from both ends, and the
    // default lifetimes (IKE rekey at 4 h less up to 24 min, CHILD at 1 h less up to 6 min).
    assert!(sa.ike_spis.is_some_and(|(i, r)| i != 0 && r != 0), "{sa:?}");
    assert_eq!(sa.ike_spis, sb.ike_spis);
    assert!(sa.ike_initiator && !sb.ike_initiator);
    let now = Instant::now();
    let left = |at: Option<Instant>| at.expect("a deadline").duration_since(now).as_secs();
    for s in [&sa, &sb] {
        assert!((4 * 3600 - 1440 - 60..=4 * 3600).contains(&left(s.ike_rekey_at)), "{s:?}");
        assert!((4 * 3600 + 1440 - 60..=4 * 3600 + 1440).contains(&left(s.ike_expire_at)));
        let c = &s.children[0];
        assert!((3600 - 360 - 60..=3600).contains(&left(c.rekey_at)), "{c:?}");
        assert!((3960 - 60..=3960).contains(&left(c.expire_at)), "{c:?}");
    }
}

/// One site: a gateway running the driver on the ESP dataplane, and a LAN host behind it.
struct Site {
    tunnels: Tunnels,
    dp: std::sync::Arc<isthmus_dataplane::Dataplane>,
    host: Netns,
    gw: Netns,
}

fn site(tag: &str, lan: u8) -> (Netns, Netns) {
    let gw = Netns::new(tag);
    let host = Netns::new(tag);
    veth(&gw, "lan", &format!("10.{lan}.32.1/24"), &host, "eth0", &format!("10.{lan}.32.2/24"));
    host.sh(&format!("ip route add default via 10.{lan}.32.1"));
    gw.sh("sysctl -qw net.ipv4.ip_forward=1 net.ipv6.conf.all.disable_ipv6=1");
    (gw, host)
}

fn start_site(gw: Netns, host: Netns, wan: &str, remote_lan: u8) -> Site {
    let (tunnels, dp) = start_gateway(&gw, wan, &format!("10.{remote_lan}.32.0/24"));
    Site { tunnels, dp, host, gw }
}

/// The driver on the ESP dataplane in `gw`, with the route to the remote LAN into its TUN.
fn start_gateway(
    gw: &Netns,
    wan: &str,
    remote_lan: &str,
) -> (Tunnels, std::sync::Arc<isthmus_dataplane::Dataplane>) {
    let wan_ip = wan.parse().unwrap();
    let started = gw.run(move || {
        isthmus_tunnels::start_with_dataplane(
            DriverConfig::default(),
            isthmus_dataplane::Config::new("ist0", wan_ip),
            isthmus_tunnels::EspOptions::default(),
        )
        .unwrap()
    });
    gw.sh(&format!("ip route add {remote_lan} dev ist0"));
    started
}

fn wait_child(ev: &std::sync::mpsc::Receiver<TunnelEvent>, who: &str, rekey: bool) {
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match ev.recv_timeout(left) {
            Ok(TunnelEvent::ChildUp { rekey_of, .. }) if rekey_of.is_some() == rekey => return,
            Ok(e) => seen.push(e.to_string()),
            Err(_) => panic!("gateway {who}: no CHILD SA (rekey: {rekey}); events {seen:#?}"),
        }
    }
}

/// Two Isthmus gateways, each with its ESP dataplane: the tunnel comes up by IKE, the LANs
/// reach each other, a CHILD rekey under traffic loses nothing, and the WAN carries only ESP.
#[test]
fn two_isthmus_gateways_carry_lan_traffic_over_negotiated_esp() {
    if !require_root() {
        return;
    }
    let (gw_a, host_a) = site("itx", 41);
    let (gw_b, host_b) = site("itx", 42);
    veth(&gw_a, "wan", "10.40.32.1/24", &gw_b, "wan", "10.40.32.2/24");
    let a = start_site(gw_a, host_a, "10.40.32.1", 42);
    let b = start_site(gw_b, host_b, "10.40.32.2", 41);
    let ev_a = a.tunnels.subscribe();
    let ev_b = b.tunnels.subscribe();

    // Everything on the WAN, as seen from gateway a, for the rest of the test.
    let pcap = std::env::temp_dir().join(format!("ist-itx-{}.pcap", std::process::id()));
    let mut dump =
        a.gw.command("tcpdump")
            .args(["-n", "-U", "-i", "wan", "-w", pcap.to_str().unwrap()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
    std::thread::sleep(Duration::from_millis(500));

    // Extended sequence numbers (RFC 4303 §2.2.1), which strongSwan's libipsec cannot do, and
    // PFS on rekey.
    let esp = isthmus_ike::parse_esp_list("aes256gcm16-esn-x25519").unwrap();
    let mut cb = tunnel("ab", "10.40.32.2", "10.40.32.1", "10.42.32.0/24", "10.41.32.0/24");
    cb.children[0].esp_proposals = esp.clone();
    b.tunnels.add_tunnel(Tunnel::new(cb)).unwrap();
    let mut ca = tunnel("ab", "10.40.32.1", "10.40.32.2", "10.41.32.0/24", "10.42.32.0/24");
    ca.children[0].esp_proposals = esp;
    ca.start_action = StartAction::Start;
    a.tunnels.add_tunnel(Tunnel::new(ca)).unwrap();
    wait_child(&ev_a, "a", false);
    wait_child(&ev_b, "b", false);
    let esp = &a.tunnels.tunnel("ab").unwrap().children[0].esp;
    assert!(esp.contains("esn") && !esp.contains("noesn"), "ESN not negotiated: {esp}");

    let ping = |count: u32| {
        let out = a.host.sh_output(&format!("ping -n -q -c {count} -i 0.05 -W 2 10.42.32.2"));
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            text.contains(&format!("{count} received")),
            "pings lost: {text}\n{:#?}",
            a.dp.counters()
        );
    };
    ping(5);
    // A TCP transfer of 4 MB.
    let server = b.host.spawn("iperf3 -s -1 -p 5201 >/dev/null");
    let mut server = Guard(Some(server));
    // The client fails at once if the server is not listening yet.
    let t0 = Instant::now();
    while !String::from_utf8_lossy(&b.host.sh_output("ss -Hltn").stdout).contains(":5201 ") {
        assert!(t0.elapsed() < Duration::from_secs(10), "iperf3 -s did not start listening");
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = a.host.sh_output("iperf3 -c 10.42.32.2 -p 5201 -n 4M");
    let _ = server.0.take().map(|mut c| c.wait());
    assert!(
        out.status.success(),
        "TCP through the tunnel failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // A CHILD rekey while pinging.
    let pinger = a
        .host
        .command("ping")
        .args(["-n", "-q", "-c", "60", "-i", "0.05", "-W", "2", "10.42.32.2"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut pinger = Guard(Some(pinger));
    std::thread::sleep(Duration::from_millis(800));
    a.tunnels.rekey_child("ab", "ab").unwrap();
    wait_child(&ev_a, "a", true);
    let out = pinger.0.take().unwrap().wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("60 received"), "pings lost during the rekey: {text}");

    // Both gateways rekey the same CHILD SA at once (RFC 7296 §2.8.1), under traffic.
    let pinger = a
        .host
        .command("ping")
        .args(["-n", "-q", "-c", "60", "-i", "0.05", "-W", "2", "10.42.32.2"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut pinger = Guard(Some(pinger));
    std::thread::sleep(Duration::from_millis(800));
    std::thread::scope(|s| {
        s.spawn(|| a.tunnels.rekey_child("ab", "ab").unwrap());
        s.spawn(|| b.tunnels.rekey_child("ab", "ab").unwrap());
    });
    let out = pinger.0.take().unwrap().wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let (sa, sb) = (a.tunnels.tunnel("ab").unwrap(), b.tunnels.tunnel("ab").unwrap());
    assert!(
        text.contains("60 received"),
        "pings lost during the simultaneous rekey: {text}\n{sa:#?}\n{sb:#?}\n{:#?}",
        a.dp.counters()
    );
    assert_eq!(sa.children.len(), 1, "one CHILD SA survives the collision: {sa:#?}");
    assert_eq!(sb.children.len(), 1, "one CHILD SA survives the collision: {sb:#?}");
    assert_eq!(sa.children[0].spi_in, sb.children[0].spi_out);
    assert_eq!(sa.children[0].spi_out, sb.children[0].spi_in);
    // Initial, first rekey, and the two successors (of a collision, or one after the other).
    assert_eq!(sa.child_sas_installed, 4, "{sa:#?}");
    let after = a.host.sh_output("ping -n -q -c 3 -i 0.2 -W 2 10.42.32.2");
    assert!(after.status.success(), "ping after the simultaneous rekey failed");

    // Both gateways rekey the IKE SA at once (RFC 7296 §2.8.2), under traffic: one IKE SA
    // survives on each side, its CHILD SA carries on.
    let pinger = a
        .host
        .command("ping")
        .args(["-n", "-q", "-c", "40", "-i", "0.05", "-W", "2", "10.42.32.2"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut pinger = Guard(Some(pinger));
    std::thread::sleep(Duration::from_millis(500));
    std::thread::scope(|s| {
        s.spawn(|| a.tunnels.rekey_ike("ab").unwrap());
        s.spawn(|| b.tunnels.rekey_ike("ab").unwrap());
    });
    let out = pinger.0.take().unwrap().wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let (sa, sb) = (a.tunnels.tunnel("ab").unwrap(), b.tunnels.tunnel("ab").unwrap());
    assert!(
        text.contains("40 received"),
        "pings lost during the simultaneous IKE rekey: {text}\n{sa:#?}\n{sb:#?}"
    );
    assert_eq!((sa.state, sb.state), (TunnelState::Up, TunnelState::Up));
    assert!(sa.ike_sas_established >= 2, "the IKE SA was not rekeyed: {sa:#?}");
    assert_eq!((sa.children.len(), sb.children.len()), (1, 1), "{sa:#?}\n{sb:#?}");
    // The rekeyed IKE SA still works: a CHILD rekey over it.
    a.tunnels.rekey_child("ab", "ab").unwrap();
    wait_child(&ev_a, "a", true);

    let _ = nix_kill(&mut dump);
    let wan = std::process::Command::new("tcpdump")
        .args(["-n", "-r", pcap.to_str().unwrap()])
        .output()
        .unwrap();
    let _ = std::fs::remove_file(&pcap);
    let wan = String::from_utf8_lossy(&wan.stdout);
    assert!(wan.contains("ESP(spi="), "no ESP on the WAN: {wan}");
    for line in wan.lines() {
        assert!(
            !line.contains("10.41.32.") && !line.contains("10.42.32."),
            "a LAN packet crossed the WAN in clear: {line}"
        );
    }
    let c = a.dp.counters();
    assert!(c.sas.iter().all(|s| s.counters.drops.total() == 0), "SA drops: {c:#?}");
}

/// Issue 14 item 13: after a series of kill -9 restarts of one gateway, its peer once sent on a
/// 75-second-old outbound SA although a newer one was installed, and LAN traffic stopped for
/// over two minutes. Gateway b is stopped without a word to its peer (no Delete, as kill -9)
/// and started again, at every phase of the negotiation, under traffic; each time the LAN
/// traffic must come back within seconds, gateway a sending on the SA b has now.
#[test]
fn restarting_one_gateway_many_times_under_traffic_leaves_no_stale_sa() {
    if !require_root() {
        return;
    }
    let (gw_a, host_a) = site("itk", 41);
    let (gw_b, host_b) = site("itk", 42);
    veth(&gw_a, "wan", "10.40.32.1/24", &gw_b, "wan", "10.40.32.2/24");
    // Both sides as the daemon configures them by default: start at once, restart on close.
    let ours = |local: &str, remote: &str, lts: &str, rts: &str| {
        let mut t = tunnel("ab", local, remote, lts, rts);
        t.start_action = StartAction::Start;
        Tunnel { ike: t, close_action: CloseAction::Restart }
    };
    let a = start_site(gw_a, host_a, "10.40.32.1", 42);
    a.tunnels
        .add_tunnel(ours("10.40.32.1", "10.40.32.2", "10.41.32.0/24", "10.42.32.0/24"))
        .unwrap();
    let start_b = || {
        let (t, dp) = start_gateway(&gw_b, "10.40.32.2", "10.41.32.0/24");
        t.add_tunnel(ours("10.40.32.2", "10.40.32.1", "10.42.32.0/24", "10.41.32.0/24")).unwrap();
        (t, dp)
    };
    // Traffic all along, both ways.
    let _traffic = [
        Guard(Some(a.host.spawn("ping -n -q -i 0.1 10.42.32.2 >/dev/null"))),
        Guard(Some(host_b.spawn("ping -n -q -i 0.1 10.41.32.2 >/dev/null"))),
    ];
    let mut b = Some(start_b());
    // Stop b while it negotiates, just after, and once settled.
    let lives = [0, 5, 20, 60, 150, 400, 1000, 2500, 0, 30, 3000, 250];
    for (round, life) in lives.into_iter().enumerate() {
        std::thread::sleep(Duration::from_millis(life));
        drop(b.take());
        b = Some(start_b());
        let t0 = Instant::now();
        let (tb, _) = b.as_ref().unwrap();
        loop {
            let ok = a.host.sh_output("ping -n -q -c 1 -W 1 10.42.32.2").status.success();
            // Gateway a sends on the CHILD SA b has now, and keeps no other.
            let sa = a.tunnels.tunnel("ab").unwrap();
            let sb = tb.tunnel("ab").unwrap();
            let out_a: Vec<u32> =
                a.dp.counters()
                    .sas
                    .iter()
                    .filter(|s| s.direction == isthmus_dataplane::Direction::Outbound)
                    .map(|s| s.spi)
                    .collect();
            let in_b: Vec<u32> = sb.children.iter().map(|c| c.spi_in).collect();
            if ok && out_a.len() == 1 && in_b.contains(&out_a[0]) && sa.children.len() == 1 {
                println!("round {round} (b lived {life} ms): back after {:?}", t0.elapsed());
                break;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(20),
                "round {round} (b lived {life} ms): LAN traffic not back after 20 s; a sends on \
                 {out_a:08x?}, b receives on {in_b:08x?}\na: {sa:#?}\nb: {sb:#?}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

struct Guard(Option<std::process::Child>);

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(c) = self.0.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Stops tcpdump with SIGINT so that it flushes its capture, then reaps it.
fn nix_kill(c: &mut std::process::Child) -> std::io::Result<()> {
    std::process::Command::new("kill").args(["-INT", &c.id().to_string()]).status()?;
    c.wait().map(|_| ())
}

/// IKE over IPv6 between two Isthmus gateways, with IPv6 selectors.
#[test]
fn two_isthmus_gateways_negotiate_over_ipv6() {
    if !require_root() {
        return;
    }
    let a = Netns::new("itd");
    let b = Netns::new("itd");
    for ns in [&a, &b] {
        ns.sh("sysctl -qw net.ipv6.conf.all.disable_ipv6=0 net.ipv6.conf.default.accept_dad=0");
    }
    veth(&a, "wa", "fd40:33::1/64", &b, "wb", "fd40:33::2/64");
    let ta = a.run(|| Tunnels::start(DriverConfig::default(), Box::new(ControlOnly)).unwrap());
    let tb = b.run(|| Tunnels::start(DriverConfig::default(), Box::new(ControlOnly)).unwrap());
    let ev_a = ta.subscribe();
    let mk = |l: &str, r: &str, lts: &str, rts: &str| {
        let mut t = TunnelConfig::new(
            "v6",
            format!("[{l}]:500").parse().unwrap(),
            format!("[{r}]:500").parse().unwrap(),
            Psk::new(b"driver-test-psk-v6".to_vec()),
            vec![lts.parse().unwrap()],
            vec![rts.parse().unwrap()],
        );
        t.start_action = StartAction::None;
        t
    };
    tb.add_tunnel(Tunnel::new(mk("fd40:33::2", "fd40:33::1", "fd42:33::/64", "fd41:33::/64")))
        .unwrap();
    ta.add_tunnel(Tunnel::new(mk("fd40:33::1", "fd40:33::2", "fd41:33::/64", "fd42:33::/64")))
        .unwrap();
    ta.initiate("v6").unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut seen = Vec::new();
    loop {
        match ev_a.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(TunnelEvent::ChildUp { .. }) => break,
            Ok(e) => seen.push(e.to_string()),
            Err(_) => panic!("no CHILD SA over IPv6; events {seen:#?}"),
        }
    }
    let sa = ta.tunnel("v6").unwrap();
    assert_eq!(sa.state, TunnelState::Up);
    assert_eq!(sa.children[0].remote_ts, ["fd42:33::/64"]);
    // The responder marks its side up after sending the last response: it may lag the
    // initiator's event.
    let t0 = Instant::now();
    while tb.tunnel("v6").unwrap().state != TunnelState::Up {
        assert!(t0.elapsed() < Duration::from_secs(5), "the responder's side never came up");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Gateway a sits behind a masquerading NAT, gateway b in front of it: both detect the NAT
/// (RFC 7296 §2.23) and float to UDP 4500, but only a, the one behind it, sends NAT-T keepalives
/// (RFC 3948 §2.3, §4) out of its dataplane's 4500 socket, and b's dataplane counts them.
#[test]
fn only_the_gateway_behind_a_nat_sends_keepalives() {
    if !require_root() {
        return;
    }
    let (gw_a, host_a) = site("itk", 41);
    let (gw_b, host_b) = site("itk", 42);
    let nat = Netns::new("itk");
    isthmus_testkit::veth_bare(&gw_a, "wan", &nat, "n1");
    isthmus_testkit::veth_bare(&nat, "n2", &gw_b, "wan");
    nat.sh("ip link set n1 up && ip link set n2 up \
         && ip addr add 10.40.36.254/24 dev n1 && ip addr add 10.40.37.254/24 dev n2 \
         && sysctl -qw net.ipv4.ip_forward=1 \
         && nft add table ip nat \
         && nft add chain ip nat post '{ type nat hook postrouting priority 100; }' \
         && nft add rule ip nat post oifname n2 masquerade");
    gw_a.sh("ip link set wan up && ip addr add 10.40.36.1/24 dev wan \
           && ip route add default via 10.40.36.254");
    gw_b.sh("ip link set wan up && ip addr add 10.40.37.2/24 dev wan");
    let interval = Duration::from_millis(200);
    let start = |gw: Netns, host: Netns, wan: &str, remote_lan: u8| {
        let wan_ip = wan.parse().unwrap();
        let (tunnels, dp) = gw.run(move || {
            let mut cfg = DriverConfig::default();
            cfg.endpoint.nat_keepalive = interval;
            isthmus_tunnels::start_with_dataplane(
                cfg,
                isthmus_dataplane::Config::new("ist0", wan_ip),
                isthmus_tunnels::EspOptions::default(),
            )
            .unwrap()
        });
        gw.sh(&format!("ip route add 10.{remote_lan}.32.0/24 dev ist0"));
        Site { tunnels, dp, host, gw }
    };
    let a = start(gw_a, host_a, "10.40.36.1", 42);
    let b = start(gw_b, host_b, "10.40.37.2", 41);
    let ev_a = a.tunnels.subscribe();
    let ev_b = b.tunnels.subscribe();

    // b sees a at the NAT's outside address, with a's own address as its identity.
    let mut cb = tunnel("ab", "10.40.37.2", "10.40.37.254", "10.42.32.0/24", "10.41.32.0/24");
    cb.remote_id = isthmus_ike::Identity::Ipv4("10.40.36.1".parse().unwrap());
    b.tunnels.add_tunnel(Tunnel::new(cb)).unwrap();
    let mut ca = tunnel("ab", "10.40.36.1", "10.40.37.2", "10.41.32.0/24", "10.42.32.0/24");
    ca.start_action = StartAction::Start;
    a.tunnels.add_tunnel(Tunnel::new(ca)).unwrap();
    wait_child(&ev_a, "a", false);
    wait_child(&ev_b, "b", false);

    // Traffic crosses the NAT encapsulated.
    let out = a.host.sh_output("ping -n -q -c 3 -i 0.2 -W 2 10.42.32.2");
    assert!(out.status.success(), "no LAN traffic across the NAT: {out:?}");

    let at_b = b.dp.counters().io[isthmus_dataplane::Io::Keepalives];
    std::thread::sleep(interval * 10);
    let received_by_b = b.dp.counters().io[isthmus_dataplane::Io::Keepalives] - at_b;
    let received_by_a = a.dp.counters().io[isthmus_dataplane::Io::Keepalives];
    assert!(
        received_by_b >= 5,
        "the gateway behind the NAT sent {received_by_b} keepalives in 10 intervals"
    );
    assert_eq!(received_by_a, 0, "the gateway in front of the NAT sent keepalives");

    a.tunnels.shutdown();
    b.tunnels.shutdown();
    drop(nat);
}

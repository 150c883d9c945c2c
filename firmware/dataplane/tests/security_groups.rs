//! Root-only: security groups and network ACLs enforced by two Isthmus dataplanes in network
//! namespaces (10.61.0.0/16), as a user sees them: a denied ping fails and the drop counter names
//! the rule, TCP still passes; a stateful group that allows only outbound TCP lets the replies
//! back in and drops an unsolicited inbound SYN; a network ACL denies one port and names its
//! rule; swapping tables under a running ping loses nothing. Also: NAT-keepalives sent by
//! `send_keepalive` reach the peer.
//!
//! ```text
//!  host-a 10.61.1.2 ─ 10.61.1.1 gw-a [ist0] 10.61.0.1 ══ WAN ══ 10.61.0.2 [ist0] gw-b 10.61.2.1 ─ 10.61.2.2 host-b
//! ```

mod lab;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use isthmus_dataplane::{
    Config, Counters, Dataplane, Drop, Encap, InboundBinding, Io, OutboundBinding, SgTable,
    SpdAction, SpdEntry, SpdTable,
};
use isthmus_esp::{InboundSa, OutboundSa};
use isthmus_tables::PortRange;
use isthmus_tables::sg::{Action, ChainKind, ChainSpec, Direction, Rule};
use isthmus_testkit::{Netns, require_root, veth};
use lab::{ChildGuard, sa_config, selector};

const LAN_A: &str = "10.61.1.0/24";
const LAN_B: &str = "10.61.2.0/24";
const HOST_A: &str = "10.61.1.2";
const HOST_B: &str = "10.61.2.2";

/// Field order is drop order: dataplanes stop before their namespaces go.
struct Sg {
    a: Dataplane,
    b: Dataplane,
    host_a: Netns,
    _gw_a: Netns,
    _gw_b: Netns,
    host_b: Netns,
}

fn gateway(ns: &Netns, wan: &str) -> Dataplane {
    let cfg = Config::new("ist0", wan.parse().unwrap());
    ns.run(move || Dataplane::start(cfg)).expect("start dataplane").0
}

fn build() -> Sg {
    let host_a = Netns::new("sgha");
    let gw_a = Netns::new("sgga");
    let gw_b = Netns::new("sggb");
    let host_b = Netns::new("sghb");
    for ns in [&host_a, &gw_a, &gw_b, &host_b] {
        ns.sh("sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1");
    }
    veth(&host_a, "ha", "10.61.1.2/24", &gw_a, "la", "10.61.1.1/24");
    veth(&gw_a, "wa", "10.61.0.1/24", &gw_b, "wb", "10.61.0.2/24");
    veth(&gw_b, "lb", "10.61.2.1/24", &host_b, "hb", "10.61.2.2/24");
    host_a.sh("ip route add default via 10.61.1.1");
    host_b.sh("ip route add default via 10.61.2.1");
    for gw in [&gw_a, &gw_b] {
        gw.sh("sysctl -qw net.ipv4.ip_forward=1 net.ipv4.conf.all.rp_filter=0");
    }
    let a = gateway(&gw_a, "10.61.0.1");
    let b = gateway(&gw_b, "10.61.0.2");
    gw_a.sh(&format!("ip route add {LAN_B} dev ist0"));
    gw_b.sh(&format!("ip route add {LAN_A} dev ist0"));
    let spd = |local: &str, remote: &str| {
        SpdTable::new(
            1,
            vec![SpdEntry {
                id: "lan".into(),
                selector: selector(local, remote),
                action: SpdAction::Protect { tunnel: "t1".into(), child: "c1".into() },
            }],
        )
    };
    a.publish_spd(spd(LAN_A, LAN_B)).unwrap();
    b.publish_spd(spd(LAN_B, LAN_A)).unwrap();
    let now = std::time::Instant::now();
    let out = |peer: &str| OutboundBinding {
        tunnel: "t1".into(),
        child: "c1".into(),
        encap: Encap::Udp { peer: SocketAddr::new(peer.parse().unwrap(), 4500) },
    };
    let inb = |local: &str, remote: &str| InboundBinding {
        tunnel: "t1".into(),
        child: "c1".into(),
        selectors: vec![selector(local, remote)],
    };
    a.install_outbound(out("10.61.0.2"), OutboundSa::new(sa_config(0x6101, 0x11), now).unwrap())
        .unwrap();
    b.install_outbound(out("10.61.0.1"), OutboundSa::new(sa_config(0x6102, 0x22), now).unwrap())
        .unwrap();
    a.add_inbound(inb(LAN_A, LAN_B), InboundSa::new(sa_config(0x6102, 0x22), now).unwrap())
        .unwrap();
    b.add_inbound(inb(LAN_B, LAN_A), InboundSa::new(sa_config(0x6101, 0x11), now).unwrap())
        .unwrap();
    Sg { a, b, host_a, _gw_a: gw_a, _gw_b: gw_b, host_b }
}

fn rule(id: &str, proto: Option<u8>, dst_ports: PortRange, action: Action) -> Rule {
    Rule {
        src: "0.0.0.0/0".parse().unwrap(),
        dst: "0.0.0.0/0".parse().unwrap(),
        proto,
        src_ports: PortRange::ANY,
        dst_ports,
        action,
        id: id.into(),
    }
}

fn chain(kind: ChainKind, direction: Direction, rules: Vec<Rule>, default: Action) -> ChainSpec {
    let default_rule = match (kind, default) {
        (ChainKind::SecurityGroup, Action::Deny) => "sg:default-deny-inbound",
        (ChainKind::SecurityGroup, _) => "sg:default-allow",
        (ChainKind::NetworkAcl, _) => "acl:t1/default",
    };
    ChainSpec {
        attachment: "t1".into(),
        kind,
        direction,
        rules,
        default_action: default,
        default_rule: default_rule.into(),
    }
}

fn ping(from: &Netns, to: &str, args: &str) -> std::process::Output {
    from.sh_output(&format!("ping -n {args} {to}"))
}

/// Sends `len` bytes over TCP from `client` to `server_addr:port` (listening in `server`);
/// returns how many bytes arrived, or `None` when the connection could not be set up.
fn tcp(client: &Netns, server: &Netns, server_addr: &str, port: u16, len: usize) -> Option<usize> {
    let to: SocketAddr = format!("{server_addr}:{port}").parse().unwrap();
    // Listening before the client starts: a late bind would read as a refused (denied) flow.
    let l = server.run(move || TcpListener::bind(to)).expect("listen");
    let srv = server.spawn_thread(move || {
        l.set_nonblocking(true).unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(8);
        loop {
            match l.accept() {
                Ok((mut s, _)) => {
                    s.set_nonblocking(false).unwrap();
                    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
                    let mut got = Vec::new();
                    let _ = s.read_to_end(&mut got);
                    return got.len();
                }
                Err(_) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                Err(_) => return 0,
            }
        }
    });
    let cli = client.spawn_thread(move || {
        let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(3)).ok()?;
        s.set_write_timeout(Some(Duration::from_secs(20))).unwrap();
        s.write_all(&vec![0x5a; len]).ok()?;
        Some(())
    });
    let connected = cli.join().expect("client thread").is_some();
    let got = srv.join().expect("server thread");
    connected.then_some(got)
}

fn has_rule(c: &Counters, kind: ChainKind, direction: Direction, rule: &str) -> u64 {
    c.rule_drops
        .iter()
        .find(|r| {
            r.attachment == "t1" && r.kind == kind && r.direction == direction && r.rule == rule
        })
        .map_or(0, |r| r.packets)
}

#[test]
fn sg_deny_icmp_drops_ping_names_the_rule_and_tcp_passes() {
    if !require_root() {
        return;
    }
    let lab = build();
    // Without a table everything the SPD protects passes.
    assert!(ping(&lab.host_a, HOST_B, "-c 2 -W 2").status.success(), "ping before any table");

    let table = SgTable::build(
        1,
        &[chain(
            ChainKind::SecurityGroup,
            Direction::Inbound,
            vec![rule("sg:no-icmp/1", Some(1), PortRange::ANY, Action::Deny)],
            Action::Allow,
        )],
    )
    .unwrap();
    lab.b.publish_sg(table).unwrap();
    assert_eq!(lab.b.sg().generation(), 1);
    assert!(
        matches!(
            lab.b.publish_sg(SgTable::empty(1)),
            Err(isthmus_dataplane::DataplaneError::StaleSg { new: 1, current: 1 })
        ),
        "a table as old as the published one is refused"
    );

    let out = ping(&lab.host_a, HOST_B, "-c 3 -i 0.2 -W 1");
    assert!(!out.status.success(), "ping must fail: {}", String::from_utf8_lossy(&out.stdout));
    let c = lab.b.counters();
    assert_eq!(c.sg_generation, 1);
    assert!(c.drops[Drop::SgIn] >= 3, "sg-in drops: {:?}", c.drops);
    assert!(
        has_rule(&c, ChainKind::SecurityGroup, Direction::Inbound, "sg:no-icmp/1") >= 3,
        "the drop names its rule: {:?}",
        c.rule_drops
    );
    // Nothing decrypted was otherwise lost: the SA itself accepted the packets.
    assert_eq!(c.drops[Drop::Icv] + c.drops[Drop::SelectorMismatch], 0);

    // TCP is not ICMP: it passes.
    assert_eq!(tcp(&lab.host_a, &lab.host_b, HOST_B, 5001, 200_000), Some(200_000));

    // A network ACL on gw-a denies TCP to port 5002 outbound (stateless, before the SA).
    let table = SgTable::build(
        2,
        &[chain(
            ChainKind::NetworkAcl,
            Direction::Outbound,
            vec![rule(
                "acl:t1/no-5002",
                Some(6),
                PortRange { first: 5002, last: 5002 },
                Action::Deny,
            )],
            Action::Allow,
        )],
    )
    .unwrap();
    lab.a.publish_sg(table).unwrap();
    assert_eq!(tcp(&lab.host_a, &lab.host_b, HOST_B, 5002, 1000), None, "port 5002 is denied");
    let c = lab.a.counters();
    assert!(c.drops[Drop::NaclOut] >= 1, "nacl-out drops: {:?}", c.drops);
    assert!(has_rule(&c, ChainKind::NetworkAcl, Direction::Outbound, "acl:t1/no-5002") >= 1);
    // The denied SYNs never reached the WAN: no SA ever saw them, no acquire was needed.
    assert_eq!(c.drops[Drop::NoSa], 0);
    assert_eq!(tcp(&lab.host_a, &lab.host_b, HOST_B, 5003, 1000), Some(1000), "port 5003 passes");
}

#[test]
fn stateful_group_admits_replies_and_drops_unsolicited_syn() {
    if !require_root() {
        return;
    }
    let lab = build();
    // gw-b: only outbound TCP may start flows; inbound falls to the default deny.
    let table = SgTable::build(
        1,
        &[
            chain(
                ChainKind::SecurityGroup,
                Direction::Outbound,
                vec![rule("sg:b/out-tcp", Some(6), PortRange::ANY, Action::Allow)],
                Action::Deny,
            ),
            chain(ChainKind::SecurityGroup, Direction::Inbound, vec![], Action::Deny),
        ],
    )
    .unwrap();
    lab.b.publish_sg(table).unwrap();

    // host-b opens a connection to host-a and sends; host-a's ACKs come back in as return
    // traffic of an allowed flow.
    assert_eq!(tcp(&lab.host_b, &lab.host_a, HOST_A, 5011, 300_000), Some(300_000));
    let c = lab.b.counters();
    assert!(c.flows.created >= 1 && c.flows.hits > 10, "flow table: {:?}", c.flows);
    assert!(c.flows_live >= 1);
    assert_eq!(c.drops[Drop::SgIn], 0, "no reply was dropped: {:?}", c.rule_drops);

    // host-a's own SYN towards host-b is unsolicited: dropped by the inbound default.
    assert_eq!(tcp(&lab.host_a, &lab.host_b, HOST_B, 5012, 1000), None, "unsolicited SYN");
    let c = lab.b.counters();
    assert!(c.drops[Drop::SgIn] >= 1, "sg-in drops: {:?}", c.drops);
    assert!(
        has_rule(&c, ChainKind::SecurityGroup, Direction::Inbound, "sg:default-deny-inbound") >= 1,
        "the drop names the default: {:?}",
        c.rule_drops
    );
    // And ICMP is not outbound TCP: host-b cannot ping out.
    assert!(!ping(&lab.host_b, HOST_A, "-c 1 -W 1").status.success());
    assert!(lab.b.counters().drops[Drop::SgOut] >= 1);
}

#[test]
fn swapping_tables_under_a_running_ping_loses_nothing() {
    if !require_root() {
        return;
    }
    let lab = build();
    let table = |generation: u64, id: &str| {
        let allow = vec![rule(id, Some(1), PortRange::ANY, Action::Allow)];
        SgTable::build(
            generation,
            &[
                chain(ChainKind::SecurityGroup, Direction::Inbound, allow.clone(), Action::Deny),
                chain(ChainKind::SecurityGroup, Direction::Outbound, allow, Action::Deny),
                chain(ChainKind::NetworkAcl, Direction::Inbound, vec![], Action::Allow),
            ],
        )
        .unwrap()
    };
    lab.a.publish_sg(table(1, "sg:icmp/1")).unwrap();
    lab.b.publish_sg(table(1, "sg:icmp/1")).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let (a, b) = (Arc::new(lab.a), Arc::new(lab.b));
    let swapper = {
        let (a, b, stop) = (a.clone(), b.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut g = 2;
            while !stop.load(Ordering::Relaxed) && g < 400 {
                a.publish_sg(table(g, &format!("sg:icmp/{g}"))).unwrap();
                b.publish_sg(table(g, &format!("sg:icmp/{g}"))).unwrap();
                g += 1;
                std::thread::sleep(Duration::from_millis(10));
            }
            g
        })
    };
    let mut pinger = ChildGuard(lab.host_a.spawn(&format!(
        "ping -n -q -c 300 -i 0.01 -W 2 {HOST_B} > /tmp/isthmus-sg-swap-{}.txt 2>&1",
        std::process::id()
    )));
    let status = pinger.0.wait().expect("wait for ping");
    stop.store(true, Ordering::Relaxed);
    let generations = swapper.join().expect("swapper");
    let path = format!("/tmp/isthmus-sg-swap-{}.txt", std::process::id());
    let report = std::fs::read_to_string(&path).unwrap_or_default();
    let _ = std::fs::remove_file(&path);
    assert!(status.success(), "ping: {report}");
    assert!(report.contains("300 received"), "every echo came back across the swaps: {report}");
    assert!(generations > 20, "tables swapped: {generations}");
    let (ca, cb) = (a.counters(), b.counters());
    assert_eq!(ca.drops.total() + cb.drops.total(), 0, "{ca:?} {cb:?}");
    assert!(ca.flows.revalidated > 0 && cb.flows.revalidated > 0, "flows were re-evaluated");
    assert!(ca.sg_generation >= 20 && cb.sg_generation >= 20);
}

/// RFC 3948 §2.3: the keepalive the driver sends arrives as one `0xff` octet on the peer's
/// port 4500, where it is counted and ignored (not mistaken for ESP or IKE).
#[test]
fn nat_keepalive_reaches_the_peer_rfc3948_2_3() {
    if !require_root() {
        return;
    }
    let lab = build();
    let to = lab.b.udp_addr();
    for _ in 0..3 {
        lab.a.send_keepalive(to).unwrap();
    }
    assert!(lab::wait_for(Duration::from_secs(3), || lab.b.counters().io[Io::Keepalives] == 3));
    let c = lab.b.counters();
    assert_eq!((c.io[Io::IkeRx], c.drops.total()), (0, 0));
}

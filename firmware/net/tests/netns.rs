//! The reconciler and the host firewall against real kernels, in network namespaces (root).
//! Observation goes through `ip` and `nft`, as an operator would look; drift is caused by hand
//! the same way. Address block 10.60.0.0/16 (gateway side) and 10.61.0.0/16 (remote prefixes).

use std::io::Read;
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::time::Duration;

use isthmus_net::{
    Address, Change, DesiredState, FirewallSpec, Link, LinkKind, NextHop, Reconciler, Route, Rule,
    TABLE_MAIN,
};
use isthmus_testkit::{Netns, require_root, veth};

fn p(s: &str) -> isthmus_tables::Prefix {
    s.parse().unwrap()
}

fn route(table: u32, dst: &str, via: NextHop, metric: u32) -> Route {
    Route { table, dst: p(dst), via, metric }
}

fn dev(name: &str) -> NextHop {
    NextHop::Interface(name.into())
}

/// Runs `f` with a fresh reconciler inside `ns`.
fn with<R: Send + 'static>(ns: &Netns, f: impl FnOnce(&mut Reconciler) -> R + Send + 'static) -> R {
    ns.run(move || f(&mut Reconciler::new().expect("open netlink sockets")))
}

fn base_state() -> DesiredState {
    DesiredState {
        links: vec![
            Link { name: "lan0".into(), up: true, mtu: Some(1400), kind: LinkKind::Existing },
            Link {
                name: "ist0".into(),
                up: true,
                mtu: Some(1380),
                kind: LinkKind::Tun { multi_queue: false },
            },
            Link {
                name: "ist1".into(),
                up: true,
                mtu: None,
                kind: LinkKind::Tun { multi_queue: true },
            },
        ],
        addresses: vec![
            Address::new("ist0", "10.60.9.1/32").unwrap(),
            Address::new("ist1", "10.60.8.1/24").unwrap(),
        ],
        routes: vec![
            route(TABLE_MAIN, "10.61.1.0/24", dev("ist0"), 0),
            route(TABLE_MAIN, "10.61.2.0/24", NextHop::Gateway("10.60.1.2".parse().unwrap()), 10),
            route(100, "10.61.3.0/24", dev("ist0"), 0),
            route(100, "0.0.0.0/0", NextHop::Blackhole, 4000),
            route(100, "2001:db8:61::/48", dev("ist0"), 0),
        ],
        rules: vec![
            Rule {
                priority: 1000,
                from: Some(p("10.60.1.0/24")),
                to: None,
                ip_proto: None,
                sport: None,
                table: 100,
            },
            // The shape of the rules that send IKE from the WAN address to the peers' table.
            Rule {
                priority: 900,
                from: Some(p("10.60.1.1/32")),
                to: None,
                ip_proto: Some(17),
                sport: Some(4500),
                table: 100,
            },
        ],
        firewall: None,
    }
}

#[test]
fn reconciles_links_addresses_routes_rules_and_repairs_drift() {
    if !require_root() {
        return;
    }
    let gw = Netns::new("net");
    let peer = Netns::new("net");
    veth(&gw, "lan0", "10.60.1.1/24", &peer, "peer0", "10.60.1.2/24");
    // Foreign state that must survive every reconcile.
    gw.sh("ip route add 10.61.50.0/24 dev lan0 proto static");
    gw.sh("ip route add 10.61.51.0/24 dev lan0 table 100");
    gw.sh("ip rule add priority 2000 from 10.60.2.0/24 lookup 100");

    let desired = base_state();
    let d = desired.clone();
    // A plan is a dry run: printable, and the kernel is untouched until it is applied.
    let plan = with(&gw, move |r| r.plan(&d).unwrap());
    let plan_text = plan.to_string();
    assert!(plan_text.contains("+ link ist0 (tun)"), "{plan_text}");
    assert!(plan_text.contains("+ route 10.61.3.0/24 dev ist0 table 100 metric 0"), "{plan_text}");
    assert!(gw.sh("ip route show table all proto 181").is_empty());
    assert!(!gw.sh_output("ip link show ist0").status.success());
    let report = with(&gw, move |r| r.apply(&plan).unwrap());
    assert_eq!(report.routes, 5, "{report}");
    assert_eq!(report.rules, 2, "{report}");

    // What an operator sees.
    let link = gw.sh("ip -d link show ist0");
    assert!(link.contains("mtu 1380") && link.contains("tun"), "{link}");
    assert!(link.contains("alias isthmus"), "{link}");
    assert!(link.contains(",UP"), "TUN is administratively up: {link}");
    let mq = gw.sh("ip -d link show ist1");
    assert!(mq.contains("multi_queue") && mq.contains("alias isthmus"), "{mq}");
    assert!(gw.sh("ip link show lan0").contains("mtu 1400"));
    let addrs = gw.sh("ip addr show dev ist0");
    assert!(addrs.contains("inet 10.60.9.1/32"), "{addrs}");
    assert!(gw.sh("ip addr show dev lan0").contains("inet 10.60.1.1/24"), "foreign address kept");
    let main = gw.sh("ip route show table main proto 181");
    assert!(main.contains("10.61.1.0/24 dev ist0"), "{main}");
    assert!(main.contains("10.61.2.0/24 via 10.60.1.2 dev lan0 metric 10"), "{main}");
    let t100 = gw.sh("ip route show table 100");
    assert!(t100.contains("10.61.3.0/24 dev ist0 proto 181"), "{t100}");
    assert!(t100.contains("blackhole default proto 181 metric 4000"), "{t100}");
    assert!(gw.sh("ip -6 route show table 100").contains("2001:db8:61::/48 dev ist0 proto 181"));
    let rules = gw.sh("ip rule show");
    assert!(rules.contains("1000:\tfrom 10.60.1.0/24 lookup 100 proto 181"), "{rules}");
    assert!(
        rules.contains("900:\tfrom 10.60.1.1 ipproto udp sport 4500 lookup 100 proto 181"),
        "{rules}"
    );

    // A second reconcile changes nothing.
    let d = desired.clone();
    let (plan, report) = with(&gw, move |r| (r.plan(&d).unwrap().to_string(), r.reconcile(&d)));
    assert_eq!(plan, "no changes\n");
    assert_eq!(report.unwrap().applied, 0);

    // Changing one route is one change.
    let mut changed = desired.clone();
    changed.routes[2].via = NextHop::Gateway("10.60.1.2".parse().unwrap());
    let d = changed.clone();
    let plan = with(&gw, move |r| r.plan(&d).unwrap());
    assert_eq!(plan.len(), 1, "{plan}");
    assert!(matches!(plan.changes()[0], Change::ReplaceRoute { .. }));
    let d = changed.clone();
    assert_eq!(with(&gw, move |r| r.reconcile(&d).unwrap()).routes, 1);
    assert!(gw.sh("ip route show table 100").contains("10.61.3.0/24 via 10.60.1.2 dev lan0"));

    // Drift by hand: a deleted route and a downed TUN are found and repaired.
    gw.sh("ip route del 10.61.1.0/24 table main");
    gw.sh("ip link set ist0 down");
    let d = changed.clone();
    let drift = with(&gw, move |r| r.drift(&d).unwrap());
    let text: Vec<String> = drift.iter().map(ToString::to_string).collect();
    assert!(
        text.contains(
            &"route 10.61.1.0/24 table 254 metric 0: expected dev ist0, found missing".into()
        ),
        "{text:?}"
    );
    assert!(text.iter().any(|t| t.starts_with("link ist0: expected up")), "{text:?}");
    let d = changed.clone();
    with(&gw, move |r| r.reconcile(&d).unwrap());
    assert!(gw.sh("ip route show table main").contains("10.61.1.0/24 dev ist0 proto 181"));
    let d = changed.clone();
    assert!(with(&gw, move |r| r.drift(&d).unwrap()).is_empty(), "repaired");

    // A route of Isthmus's protocol added by hand is drift too (removed); others are not.
    gw.sh("ip route add 10.61.60.0/24 dev lan0 proto 181");
    let d = changed.clone();
    let report = with(&gw, move |r| r.reconcile(&d).unwrap());
    assert_eq!(report.routes, 1);
    assert!(!gw.sh("ip route show").contains("10.61.60.0/24"));

    // Removing things from the desired state removes only what Isthmus owns.
    let mut smaller = changed.clone();
    smaller.links.retain(|l| l.name != "ist1");
    smaller.addresses.retain(|a| a.ifname != "ist1");
    smaller.routes.truncate(1);
    smaller.rules.clear();
    let d = smaller.clone();
    let report = with(&gw, move |r| r.reconcile(&d).unwrap());
    assert_eq!((report.routes, report.rules), (4, 2), "{report}");
    assert!(!gw.sh_output("ip link show ist1").status.success(), "ist1 deleted");
    let all = gw.sh("ip route show table all");
    assert!(all.contains("10.61.50.0/24 dev lan0 proto static"), "{all}");
    assert!(all.contains("10.61.51.0/24 dev lan0 table 100"), "{all}");
    assert!(!all.contains("10.61.3.0/24"), "{all}");
    let rules = gw.sh("ip rule show");
    assert!(rules.contains("2000:\tfrom 10.60.2.0/24 lookup 100"), "{rules}");
    assert!(!rules.contains("1000:") && !rules.contains("900:"), "{rules}");
    assert!(gw.sh("ip addr show dev lan0").contains("inet 10.60.1.1/24"));
}

#[test]
fn apply_reports_what_the_kernel_refused_and_applies_the_rest() {
    if !require_root() {
        return;
    }
    let gw = Netns::new("net");
    gw.sh("ip link add eth9 type veth peer name eth9p && ip link set eth9 up");
    // A foreign route holds the key Isthmus wants: Isthmus must not take it over.
    gw.sh("ip route add 10.61.7.0/24 dev eth9 proto static");
    let desired = DesiredState {
        links: vec![Link { name: "eth9".into(), up: true, mtu: None, kind: LinkKind::Existing }],
        routes: vec![
            route(TABLE_MAIN, "10.61.7.0/24", dev("eth9"), 0),
            route(TABLE_MAIN, "10.61.8.0/24", dev("eth9"), 0),
            // Unreachable gateway: the kernel refuses with its reason.
            route(TABLE_MAIN, "10.61.9.0/24", NextHop::Gateway("10.99.99.99".parse().unwrap()), 0),
        ],
        ..Default::default()
    };
    let err = with(&gw, move |r| r.reconcile(&desired).unwrap_err().to_string());
    assert!(err.starts_with("2 of 3 changes failed"), "{err}");
    assert!(err.contains("+ route 10.61.7.0/24 dev eth9 table 254 metric 0: File exists"), "{err}");
    assert!(err.contains("10.61.9.0/24") && err.contains("unreachable"), "{err}");
    let routes = gw.sh("ip route show");
    assert!(routes.contains("10.61.7.0/24 dev eth9 proto static"), "{routes}");
    assert!(routes.contains("10.61.8.0/24 dev eth9 proto 181"), "{routes}");
}

/// A plan made against the kernel and applied after the kernel changed under it (a half-done
/// apply, a restart, a link that went away): deletions of what is already gone and additions of
/// rules and addresses already there succeed. Before, the next start failed on `No such
/// process (os error 3)` for a route the kernel had dropped with its address.
#[test]
fn apply_converges_when_the_kernel_already_did_part_of_the_plan() {
    if !require_root() {
        return;
    }
    let gw = Netns::new("net");
    gw.sh(
        "ip link add eth9 type veth peer name eth9p && ip link set eth9 up && ip link set eth9p up",
    );
    let lan = Link { name: "eth9".into(), up: true, mtu: None, kind: LinkKind::Existing };
    let with_routes = DesiredState {
        links: vec![lan.clone()],
        addresses: vec![Address::new("eth9", "10.60.70.1/24").unwrap()],
        routes: vec![route(
            100,
            "10.61.70.0/24",
            NextHop::Gateway("10.60.70.2".parse().unwrap()),
            0,
        )],
        rules: vec![Rule {
            priority: 1000,
            from: Some(p("10.60.70.0/24")),
            to: None,
            ip_proto: None,
            sport: None,
            table: 100,
        }],
        firewall: None,
    };
    let d = with_routes.clone();
    with(&gw, move |r| r.reconcile(&d).unwrap());
    assert!(gw.sh("ip route show table 100").contains("10.61.70.0/24 via 10.60.70.2"));

    // Plan the removal of all of it, then let the kernel do part of it first: deleting the
    // address drops the route through it; the rule is deleted by hand.
    let empty = DesiredState { links: vec![lan.clone()], ..Default::default() };
    let plan = with(&gw, move |r| r.plan(&empty).unwrap());
    let text = plan.to_string();
    assert!(
        text.contains("- route 10.61.70.0/24") && text.contains("- rule -4 priority 1000"),
        "{text}"
    );
    gw.sh("ip addr del 10.60.70.1/24 dev eth9 && ip rule del priority 1000");
    assert!(!gw.sh("ip route show table 100").contains("10.61.70.0/24"), "the kernel dropped it");
    let r = with(&gw, move |r| r.apply(&plan));
    assert!(r.is_ok(), "applying a plan the kernel already carried out: {r:?}");

    // And the other way: a plan to add what is by now already there.
    let d = with_routes.clone();
    let plan = with(&gw, move |r| r.plan(&d).unwrap());
    gw.sh("ip addr add 10.60.70.1/24 dev eth9 && ip rule add priority 1000 from 10.60.70.0/24 lookup 100 proto 181");
    let r = with(&gw, move |r| r.apply(&plan));
    assert!(r.is_ok(), "adding an address and a rule that exist: {r:?}");
    let d = with_routes.clone();
    assert!(with(&gw, move |r| r.plan(&d).unwrap()).is_empty(), "the kernel is at the state");
}

/// Attaches to a TUN device as the dataplane will (`IFF_TUN | IFF_NO_PI`), blocking.
fn attach_tun(name: &str) -> std::fs::File {
    let (fd, _) = isthmus_net::tun::attach(name, libc::IFF_TUN | libc::IFF_NO_PI)
        .unwrap_or_else(|e| panic!("TUNSETIFF {name}: {e}"));
    fd.into()
}

/// Has the reconciler in `gw` create the persistent TUN device `ist0` with `address` and route
/// `routed` into it.
fn tun_routed(gw: &Netns, address: &str, routed: &str) {
    let desired = DesiredState {
        links: vec![Link {
            name: "ist0".into(),
            up: true,
            mtu: Some(1400),
            kind: LinkKind::Tun { multi_queue: false },
        }],
        addresses: vec![Address::new("ist0", address).unwrap()],
        routes: vec![route(TABLE_MAIN, routed, dev("ist0"), 0)],
        ..Default::default()
    };
    with(gw, move |r| r.reconcile(&desired).unwrap());
}

#[test]
fn routes_point_into_a_persistent_tun_that_the_dataplane_attaches_to_later() {
    if !require_root() {
        return;
    }
    let gw = Netns::new("net");
    tun_routed(&gw, "10.60.30.1/32", "10.61.30.0/24");
    // No process holds the device; it persists, and a late attach sees routed packets.
    let mut tun = gw.run(|| attach_tun("ist0"));
    let s = gw.run(|| UdpSocket::bind("0.0.0.0:0").unwrap());
    let packet = first_ipv4(&mut tun, || {
        s.send_to(b"to the tunnel", "10.61.30.7:4000").unwrap();
    })
    .expect("no IPv4 packet arrived on the TUN device");
    // An IPv4 packet (no packet-information header) to 10.61.30.7 carrying the payload.
    assert_eq!(packet[0] >> 4, 4, "IFF_NO_PI: the frame starts with the IP header");
    assert_eq!(&packet[16..20], &[10, 61, 30, 7]);
    assert!(packet.ends_with(b"to the tunnel"));
}

/// Every packet `tun` delivers within `period`.
fn read_for(tun: &mut std::fs::File, period: Duration) -> Vec<Vec<u8>> {
    let end = std::time::Instant::now() + period;
    let mut out = Vec::new();
    let mut buf = [0u8; 2048];
    while let Some(left) = end.checked_duration_since(std::time::Instant::now()) {
        let mut fds = libc::pollfd { fd: tun.as_raw_fd(), events: libc::POLLIN, revents: 0 };
        let ms = left.as_millis().clamp(1, 100) as i32;
        // SAFETY: one valid pollfd for the duration of the call.
        if unsafe { libc::poll(&mut fds, 1, ms) } == 1 {
            let n = tun.read(&mut buf).unwrap();
            out.push(buf[..n].to_vec());
        }
    }
    out
}

/// A UDP datagram in IPv6 (RFC 8200 §3, RFC 768), checksum included (mandatory over IPv6,
/// RFC 8200 §8.1).
fn udp6(
    src: std::net::Ipv6Addr,
    sport: u16,
    dst: std::net::Ipv6Addr,
    dport: u16,
    data: &[u8],
) -> Vec<u8> {
    let mut ip = vec![0u8; 48 + data.len()];
    isthmus_wire::ipv6::write_header(&mut ip, src, dst, 17, 8 + data.len(), 64).unwrap();
    let over = Some((src.into(), dst.into(), data));
    isthmus_wire::udp::write_header(&mut ip[40..], sport, dport, data.len(), over).unwrap();
    ip[48..].copy_from_slice(data);
    ip
}

/// A gateway's tunnel device carries nothing but the traffic it routes: created by the
/// reconciler in a namespace that forwards IPv6 (as isthmusd sets it up), it sends no MLD
/// report, router solicitation or neighbour discovery of its own once the dataplane attaches
/// and it comes up (the dataplane would count such packets as `spd-no-policy` drops), and IPv6
/// still flows into it and out of it.
#[test]
fn a_tunnel_device_sends_nothing_of_its_own_and_still_carries_ipv6() {
    if !require_root() {
        return;
    }
    let gw = Netns::new("quiet");
    gw.sh("sysctl -qw net.ipv6.conf.all.forwarding=1 net.ipv4.ip_forward=1");
    tun_routed(&gw, "fd71:0:1::1/128", "fd71:0:2::/64");
    let mut tun = gw.run(|| attach_tun("ist0"));
    // The kernel's own packets come within about 2 s of the link turning ready (a random DAD
    // delay up to rtr_solicit_delay, 1 s, then MLD reports 1 s apart): 3 s of silence.
    let own = read_for(&mut tun, Duration::from_secs(3));
    assert!(own.is_empty(), "the tunnel device sent packets of its own: {own:02x?}");
    let no_ll = gw.sh_output("ip -6 addr show dev ist0 scope link");
    assert!(String::from_utf8_lossy(&no_ll.stdout).trim().is_empty(), "{no_ll:?}");

    // IPv6 into the tunnel...
    let s = gw.run(|| UdpSocket::bind("[fd71:0:1::1]:4001").unwrap());
    s.send_to(b"to the tunnel", "[fd71:0:2::7]:4000").unwrap();
    let from: std::net::Ipv6Addr = "fd71:0:2::7".parse().unwrap();
    let to: std::net::Ipv6Addr = "fd71:0:1::1".parse().unwrap();
    let got = read_for(&mut tun, Duration::from_secs(1));
    assert!(
        got.iter()
            .any(|p| p[0] >> 4 == 6 && p[24..40] == from.octets() && p.ends_with(b"to the tunnel")),
        "no IPv6 packet to {from} on the TUN device: {got:02x?}"
    );
    // ... and out of it, to a socket of the gateway.
    std::io::Write::write_all(&mut tun, &udp6(from, 4000, to, 4001, b"from the tunnel")).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut buf = [0u8; 64];
    let (n, peer) = s.recv_from(&mut buf).expect("the IPv6 datagram from the tunnel arrives");
    assert_eq!(&buf[..n], b"from the tunnel");
    assert_eq!(peer, "[fd71:0:2::7]:4000".parse::<SocketAddr>().unwrap());
}

/// Sends with `send` until an IPv4 packet shows up on `tun` (3 s at most). The kernel activates
/// a TUN device's queue asynchronously once a reader attaches (link watch), so the first packets
/// may be dropped; IPv6 housekeeping (router solicitations, MLD) is skipped.
fn first_ipv4(tun: &mut std::fs::File, send: impl Fn()) -> Option<Vec<u8>> {
    let mut buf = [0u8; 2048];
    for _ in 0..30 {
        send();
        let mut fds = libc::pollfd { fd: tun.as_raw_fd(), events: libc::POLLIN, revents: 0 };
        // SAFETY: one valid pollfd for the duration of the call.
        while unsafe { libc::poll(&mut fds, 1, 100) } == 1 {
            let n = tun.read(&mut buf).unwrap();
            if buf[0] >> 4 == 4 {
                return Some(buf[..n].to_vec());
            }
        }
    }
    None
}

/// Accepts connections on a listener in the background so TCP probes complete.
fn tcp_listener(ns: &Netns, port: u16) -> TcpListener {
    ns.run(move || TcpListener::bind(("0.0.0.0", port)).unwrap())
}

fn tcp_probe(ns: &Netns, to: &str) -> bool {
    let addr: SocketAddr = to.parse().unwrap();
    ns.run(move || TcpStream::connect_timeout(&addr, Duration::from_millis(800)).is_ok())
}

fn udp_probe(from: &Netns, listener: &UdpSocket, to: &str) -> bool {
    let to: SocketAddr = to.parse().unwrap();
    from.run(move || {
        let any = if to.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" };
        let s = UdpSocket::bind(any).unwrap();
        s.send_to(b"ike probe", to).unwrap();
    });
    listener.set_read_timeout(Some(Duration::from_millis(800))).unwrap();
    let mut buf = [0u8; 64];
    matches!(listener.recv_from(&mut buf), Ok((n, _)) if &buf[..n] == b"ike probe")
}

fn ping(ns: &Netns, to: &str) -> bool {
    ns.sh_output(&format!("ping -c1 -W1 {to}")).status.success()
}

#[test]
fn host_firewall_admits_ike_and_esp_on_wan_api_on_mgmt_and_no_clear_forwarding() {
    if !require_root() {
        return;
    }
    let gw = Netns::new("fw");
    let wan = Netns::new("fw");
    let lan = Netns::new("fw");
    let mgmt = Netns::new("fw");
    veth(&gw, "wan0", "10.60.40.1/24", &wan, "wpeer", "10.60.40.2/24");
    veth(&gw, "lan0", "10.60.41.1/24", &lan, "lhost", "10.60.41.2/24");
    veth(&gw, "mgmt0", "10.60.42.1/24", &mgmt, "mpeer", "10.60.42.2/24");
    gw.sh("sysctl -qw net.ipv4.ip_forward=1");
    lan.sh("ip route add default via 10.60.41.1");
    wan.sh("ip route add 10.60.41.0/24 via 10.60.40.1");
    mgmt.sh("ip route add default via 10.60.42.1");

    // Another nftables table (someone else's) must survive everything Isthmus does.
    gw.sh("nft add table inet other");
    gw.sh("nft add chain inet other c '{ type filter hook input priority 10; }'");
    gw.sh("ip -6 addr add fd60:40::1/64 dev wan0 nodad");
    wan.sh("ip -6 addr add fd60:40::2/64 dev wpeer nodad");
    let ike = gw.run(|| UdpSocket::bind("0.0.0.0:500").unwrap());
    let ike6 = gw.run(|| UdpSocket::bind("[fd60:40::1]:500").unwrap());
    let _api = tcp_listener(&gw, 8443);
    let _other = tcp_listener(&gw, 2222);
    let _other6 = gw.run(|| TcpListener::bind("[fd60:40::1]:2224").unwrap());
    assert!(tcp_probe(&wan, "[fd60:40::1]:2224"), "IPv6 works before the firewall");
    // Without the firewall everything gets through, including clear LAN->WAN forwarding.
    assert!(ping(&lan, "10.60.40.2"), "forwarding works before the firewall");
    assert!(tcp_probe(&wan, "10.60.40.1:2222"));

    let mut links: Vec<Link> = ["wan0", "lan0", "mgmt0"]
        .iter()
        .map(|n| Link { name: (*n).into(), up: true, mtu: None, kind: LinkKind::Existing })
        .collect();
    links.push(Link {
        name: "ist0".into(),
        up: true,
        mtu: None,
        kind: LinkKind::Tun { multi_queue: false },
    });
    let desired = DesiredState {
        links,
        addresses: vec![Address::new("ist0", "10.60.43.1/32").unwrap()],
        routes: vec![route(TABLE_MAIN, "10.61.40.0/24", dev("ist0"), 0)],
        firewall: Some(FirewallSpec {
            wan_if: "wan0".into(),
            wan_addrs: vec!["10.60.40.1".parse().unwrap(), "fd60:40::1".parse().unwrap()],
            mgmt_if: Some("mgmt0".into()),
            mgmt_port: 8443,
            lan_ifs: vec!["lan0".into()],
            tunnel_ifs: vec!["ist0".into()],
            wan_echo: false,
        }),
        ..Default::default()
    };
    let d = desired.clone();
    let report = with(&gw, move |r| r.reconcile(&d).unwrap());
    assert!(report.firewall, "{report}");

    // nft itself decodes what was written over netlink.
    let listing = gw.sh("nft list table inet isthmus");
    for want in [
        "type filter hook input priority filter; policy drop;",
        "type filter hook forward priority filter; policy drop;",
        "iifname \"wan0\" ip daddr 10.60.40.1 udp dport 500 accept",
        "iifname \"wan0\" ip daddr 10.60.40.1 udp dport 4500 accept",
        "iifname \"wan0\" ip6 daddr fd60:40::1 udp dport 500 accept",
        "ct state established,related accept",
        "iifname \"mgmt0\" tcp dport 8443 accept",
        "iifname \"lan0\" oifname \"wan0\" counter packets",
        "iifname \"ist0\" jump inside",
        "oifname \"lan0\" accept",
    ] {
        assert!(listing.contains(want), "missing `{want}` in:\n{listing}");
    }

    assert!(udp_probe(&wan, &ike, "10.60.40.1:500"), "IKE reaches the gateway from the WAN");
    assert!(!tcp_probe(&wan, "10.60.40.1:2222"), "a random TCP port is closed on the WAN");
    // IPv6: neighbour discovery still works, IKE gets in, other ports do not.
    assert!(udp_probe(&wan, &ike6, "[fd60:40::1]:500"), "IKE over IPv6 reaches the gateway");
    assert!(!tcp_probe(&wan, "[fd60:40::1]:2224"), "a random TCP port is closed over IPv6");
    assert!(!tcp_probe(&wan, "10.60.40.1:8443"), "the API is not reachable from the WAN");
    assert!(tcp_probe(&mgmt, "10.60.42.1:8443"), "the API is reachable on management");
    assert!(!tcp_probe(&mgmt, "10.60.42.1:2222"), "only the API port on management");
    assert!(!ping(&wan, "10.60.40.1"), "no echo on the WAN unless configured");
    assert!(ping(&lan, "10.60.41.1"), "the LAN may ping the gateway");
    assert!(!ping(&lan, "10.60.40.2"), "no clear forwarding LAN->WAN");
    // LAN traffic for a remote prefix is forwarded into the tunnel device.
    let mut tun = gw.run(|| attach_tun("ist0"));
    let s = lan.run(|| UdpSocket::bind("0.0.0.0:0").unwrap());
    let packet = first_ipv4(&mut tun, || {
        s.send_to(b"through the tunnel", "10.61.40.5:4000").unwrap();
    })
    .expect("LAN -> tunnel forwarding is allowed");
    assert_eq!(&packet[12..16], &[10, 60, 41, 2], "from the LAN host");
    let counters = gw.sh("nft list chain inet isthmus forward");
    assert!(
        counters.lines().any(|l| l.contains("oifname \"wan0\"") && !l.contains("packets 0 ")),
        "the dropped ping is counted: {counters}"
    );

    // Idempotent; a rule added by hand is drift and is removed.
    let d = desired.clone();
    assert!(with(&gw, move |r| r.plan(&d).unwrap().is_empty()));
    gw.sh("nft insert rule inet isthmus input tcp dport 2222 accept");
    assert!(tcp_probe(&wan, "10.60.40.1:2222"), "the hand-made hole works");
    let d = desired.clone();
    let drift = with(&gw, move |r| r.drift(&d).unwrap());
    assert_eq!(drift.len(), 1, "{drift:?}");
    assert_eq!(drift[0].object, "firewall table inet isthmus");
    assert!(drift[0].found.starts_with("chain input rule 1: expected"), "{}", drift[0]);
    let d = desired.clone();
    with(&gw, move |r| r.reconcile(&d).unwrap());
    assert!(!gw.sh("nft list table inet isthmus").contains("2222"));
    assert!(!tcp_probe(&wan, "10.60.40.1:2222"), "the hole is closed again");

    // Echo on the WAN when configured; no firewall removes the table.
    let mut echo = desired.clone();
    if let Some(f) = echo.firewall.as_mut() {
        f.wan_echo = true;
    }
    with(&gw, move |r| r.reconcile(&echo).unwrap());
    assert!(ping(&wan, "10.60.40.1"));
    let mut none = desired;
    none.firewall = None;
    with(&gw, move |r| r.reconcile(&none).unwrap());
    let tables = gw.sh("nft list tables");
    assert!(!tables.contains("isthmus"), "{tables}");
    assert!(tables.contains("table inet other"), "foreign table untouched: {tables}");
}

#[test]
fn dummy_devices_are_created_and_deleted_when_the_kernel_has_the_driver() {
    if !require_root() {
        return;
    }
    let gw = Netns::new("net");
    if !gw.sh_output("ip link add probe0 type dummy && ip link del probe0").status.success() {
        // The development kernel lacks the dummy driver; the appliance kernel has it.
        eprintln!("skipped: this kernel has no dummy driver");
        return;
    }
    let mut desired = DesiredState {
        links: vec![Link { name: "dum0".into(), up: true, mtu: Some(1300), kind: LinkKind::Dummy }],
        addresses: vec![Address::new("dum0", "10.60.50.1/24").unwrap()],
        ..Default::default()
    };
    let d = desired.clone();
    with(&gw, move |r| r.reconcile(&d).unwrap());
    let link = gw.sh("ip -d link show dum0");
    assert!(link.contains("dummy") && link.contains("mtu 1300") && link.contains("alias isthmus"));
    assert!(gw.sh("ip addr show dev dum0").contains("inet 10.60.50.1/24"));
    desired.links.clear();
    desired.addresses.clear();
    with(&gw, move |r| r.reconcile(&desired).unwrap());
    assert!(!gw.sh_output("ip link show dum0").status.success(), "deleted again");
}

//! Root-only: two Isthmus dataplanes in two network namespaces, a LAN host behind each, static
//! test keys. What a user would check: ping and TCP pass, the WAN carries only ESP, a replayed
//! ESP packet is dropped and counted, traffic for a protected prefix without an SA never leaves
//! in clear, oversized DF packets get ICMP "fragmentation needed", IKE and keepalives on port
//! 4500 are told apart from ESP, and a rekey in the middle of a transfer loses nothing.

mod lab;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::time::Duration;

use isthmus_dataplane::{Direction, Drop, Event, Io};
use isthmus_esp::DropReason;
use isthmus_testkit::require_root;
use lab::{ChildGuard, HOST_A, HOST_B, Lab, Options, WAN_A, WAN_B, wait_for};

/// Recognisable clear text: it must never appear on the WAN.
const MARKER: &[u8] = b"ISTHMUS-CLEARTEXT-MARKER-";

fn payload(len: usize) -> Vec<u8> {
    MARKER.iter().copied().cycle().take(len).collect()
}

/// Sends `data` from host-a to host-b over TCP (port 5001) and returns what host-b received.
fn tcp_transfer(lab: &Lab, data: Vec<u8>, during: impl FnOnce() + Send + 'static) -> Vec<u8> {
    tcp_transfer_to(lab, "10.32.2.2:5001", data, during)
}

fn tcp_transfer_to(
    lab: &Lab,
    to: &str,
    data: Vec<u8>,
    during: impl FnOnce() + Send + 'static,
) -> Vec<u8> {
    let to: SocketAddr = to.parse().unwrap();
    let server = lab.host_b.spawn_thread(move || {
        let l = TcpListener::bind(to).expect("listen on host-b");
        let (mut s, _) = l.accept().expect("accept");
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut got = Vec::new();
        s.read_to_end(&mut got).expect("read the transfer");
        got
    });
    let client = lab.host_a.spawn_thread(move || {
        let mut s = (0..50)
            .find_map(|_| {
                TcpStream::connect_timeout(&to, Duration::from_secs(2)).ok().or_else(|| {
                    std::thread::sleep(Duration::from_millis(100));
                    None
                })
            })
            .expect("connect to host-b through the tunnel");
        s.set_write_timeout(Some(Duration::from_secs(30))).unwrap();
        let (first, rest) = data.split_at(data.len() / 2);
        s.write_all(first).expect("send first half");
        during();
        s.write_all(rest).expect("send second half");
    });
    client.join().expect("client thread");
    server.join().expect("server thread")
}

/// The frames of a pcap file (classic format, Ethernet link type).
fn pcap_frames(bytes: &[u8]) -> Vec<&[u8]> {
    assert!(bytes.len() >= 24, "capture file too short");
    assert_eq!(&bytes[..4], &[0xd4, 0xc3, 0xb2, 0xa1], "little-endian pcap expected");
    let mut frames = Vec::new();
    let mut off = 24;
    while off + 16 <= bytes.len() {
        let caplen = u32::from_le_bytes(bytes[off + 8..off + 12].try_into().unwrap()) as usize;
        let start = off + 16;
        let end = (start + caplen).min(bytes.len());
        frames.push(&bytes[start..end]);
        off = start + caplen;
    }
    frames
}

/// What one WAN frame carried.
#[derive(Debug, PartialEq)]
enum Wan<'a> {
    /// ESP in UDP 4500 (the payload after the UDP header).
    UdpEsp(&'a [u8]),
    /// IKE or keepalive on UDP 4500.
    UdpOther,
    /// Plain ESP (the payload after the IP header).
    Esp(&'a [u8]),
    /// ARP.
    Arp,
    /// Anything else: a leak.
    Other(u16, u8),
}

fn classify(frame: &[u8]) -> Wan<'_> {
    let ethertype = u16::from_be_bytes([frame[12], frame[13]]);
    if ethertype == 0x0806 {
        return Wan::Arp;
    }
    if ethertype != 0x0800 {
        return Wan::Other(ethertype, 0);
    }
    let ip = &frame[14..];
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    match ip[9] {
        50 => Wan::Esp(&ip[ihl..]),
        17 => {
            let udp = &ip[ihl..];
            let (sp, dp) =
                (u16::from_be_bytes([udp[0], udp[1]]), u16::from_be_bytes([udp[2], udp[3]]));
            let data = &udp[8..];
            if sp != 4500 && dp != 4500 {
                Wan::Other(ethertype, 17)
            } else if data.len() > 8 && data[..4] != [0; 4] {
                Wan::UdpEsp(data)
            } else {
                Wan::UdpOther
            }
        }
        p => Wan::Other(ethertype, p),
    }
}

fn ping(lab: &Lab, args: &str) -> std::process::Output {
    lab.host_a.sh_output(&format!("ping {args}"))
}

#[test]
fn tunnel_carries_ping_and_tcp_only_as_esp_in_udp() {
    if !require_root() {
        return;
    }
    let lab = lab::build(Options { tun_mtu: Some(1500), ..Options::default() });
    let cap_path = std::env::temp_dir().join(format!("isthmus-dp-{}.pcap", std::process::id()));
    let _ = std::fs::remove_file(&cap_path);
    let mut tcpdump = ChildGuard(lab.gw_a.spawn(&format!(
        // A 16 MiB buffer: the whole transfer fits even while tcpdump is not scheduled.
        "tcpdump -i wa -B 16384 -U -n -s 0 -w {} 2>/dev/null",
        cap_path.display()
    )));
    assert!(wait_for(Duration::from_secs(5), || cap_path.exists()), "tcpdump did not start");
    std::thread::sleep(Duration::from_millis(300));

    // Ping through the tunnel.
    let out = ping(&lab, &format!("-c 3 -i 0.2 -W 2 {HOST_B}"));
    assert!(
        out.status.success(),
        "ping through the tunnel failed: {}",
        String::from_utf8_lossy(&out.stdout)
    );

    // A TCP transfer arrives intact.
    let data = payload(2 << 20);
    let got = tcp_transfer(&lab, data.clone(), || {});
    assert_eq!(got.len(), data.len(), "TCP transfer truncated");
    assert!(got == data, "TCP transfer corrupted");

    // A protected prefix without an SA: dropped, counted, and an acquire raised.
    let out = ping(&lab, "-c 2 -i 0.2 -W 1 10.33.9.1");
    assert!(!out.status.success(), "ping to a prefix without SA must fail");
    let c = lab.a.counters();
    assert!(c.drops[Drop::NoSa] >= 2, "no_sa not counted: {:?}", c.drops);
    let acquires: Vec<Event> = lab.events_a.try_iter().collect();
    assert!(
        acquires.iter().any(|e| matches!(e, Event::Acquire { tunnel, child, flow }
            if tunnel == "t1" && child == "c2" && flow.dst.to_string() == "10.33.9.1")),
        "no acquire event for the child without SA: {acquires:?}"
    );

    // Path MTU: a full-size DF packet cannot fit once encapsulated.
    let out = ping(&lab, &format!("-M do -s 1472 -c 1 -W 2 {HOST_B}"));
    let text =
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(!out.status.success(), "an oversized DF ping must not pass: {text}");
    assert!(text.contains("mtu"), "the sender was not told the path MTU: {text}");
    // Counters are added when the worker's batch ends, which may be after ping has exited.
    assert!(
        wait_for(Duration::from_secs(3), || lab.a.counters().io[Io::IcmpTooBig] >= 1),
        "icmp-too-big not counted"
    );
    // The host now uses the advertised MTU: a DF ping that fits passes.
    let out = ping(&lab, &format!("-M do -s 1300 -c 1 -W 2 {HOST_B}"));
    assert!(out.status.success(), "a DF ping below the tunnel MTU failed");

    // IKE and keepalives share port 4500 with ESP.
    lab.a.send_ike(SocketAddr::new(WAN_B.parse().unwrap(), 4500), b"IKE-MESSAGE").unwrap();
    let ike = lab.events_b.recv_timeout(Duration::from_secs(2)).expect("IKE event on gw-b");
    assert_eq!(
        ike,
        Event::Ike {
            from: SocketAddr::new(WAN_A.parse().unwrap(), 4500),
            payload: b"IKE-MESSAGE".to_vec()
        }
    );
    tcpdump.interrupt();

    // The WAN carried ESP and nothing in clear.
    let pcap = std::fs::read(&cap_path).expect("read capture");
    let _ = std::fs::remove_file(&cap_path);
    let frames = pcap_frames(&pcap);
    let kinds: Vec<Wan<'_>> = frames.iter().map(|f| classify(f)).collect();
    let leaks: Vec<_> = kinds.iter().filter(|k| matches!(k, Wan::Other(..))).collect();
    assert!(leaks.is_empty(), "non-ESP traffic on the WAN: {leaks:?}");
    let esp: Vec<&[u8]> =
        kinds.iter().filter_map(|k| if let Wan::UdpEsp(p) = k { Some(*p) } else { None }).collect();
    // With UDP segmentation offload a veth carries many ESP datagrams in one frame: count bytes.
    let esp_bytes: usize = esp.iter().map(|p| p.len()).sum();
    assert!(esp_bytes > 2 << 20, "expected the transfer as ESP, saw {esp_bytes} bytes of ESP");
    assert!(!pcap.windows(MARKER.len()).any(|w| w == MARKER), "clear text on the WAN");
    assert!(!pcap.windows(4).any(|w| w == [10, 33, 9, 1]), "the no-SA packet left the gateway");

    // Replay a captured ESP packet from gw-a to gw-b: dropped and counted. The latest one is
    // inside the replay window; a much older one would, with ESN, be taken for the next
    // sequence-number epoch (RFC 4303 Appendix A) and fail its ICV instead.
    let replay = esp
        .iter()
        .rev()
        .find(|p| p[..4] == lab::SPI_AB.to_be_bytes() && p.len() <= 1500 - 28)
        .expect("a single ESP datagram from gw-a")
        .to_vec();
    let before = lab.b.counters();
    lab.gw_a.run(move || {
        let s = UdpSocket::bind("10.32.0.1:0").unwrap();
        s.send_to(&replay, "10.32.0.2:4500").unwrap();
        // And one with an SPI nobody installed, and a NAT keepalive.
        let mut unknown = vec![0xde, 0xad, 0xbe, 0xef];
        unknown.extend_from_slice(&[0u8; 60]);
        s.send_to(&unknown, "10.32.0.2:4500").unwrap();
        s.send_to(&[0xff], "10.32.0.2:4500").unwrap();
    });
    assert!(
        wait_for(Duration::from_secs(2), || {
            let c = lab.b.counters();
            c.drops[Drop::Replay] > before.drops[Drop::Replay]
                && c.drops[Drop::UnknownSpi] > before.drops[Drop::UnknownSpi]
                && c.io[Io::Keepalives] > before.io[Io::Keepalives]
        }),
        "replayed/unknown-SPI packets were not dropped and counted: {:?}",
        lab.b.counters()
    );
    let c = lab.b.counters();
    let sa =
        c.sas.iter().find(|s| s.spi == lab::SPI_AB && s.direction == Direction::Inbound).unwrap();
    assert!(sa.counters.drops.get(DropReason::Replay) >= 1, "replay not counted on the SA");
    assert!(sa.counters.packets > 1000, "the inbound SA carried the transfer");
}

#[test]
fn plain_esp_rekey_mid_transfer_and_selector_check() {
    if !require_root() {
        return;
    }
    let opts = Options { raw: true, ..Options::default() };
    let lab = lab::build(opts);
    let out = ping(&lab, &format!("-c 2 -i 0.2 -W 2 {HOST_B}"));
    assert!(out.status.success(), "ping over plain ESP failed");
    let _ = HOST_A;

    // Rekey both directions of host-a -> host-b in the middle of a transfer: new inbound SA on
    // gw-b first (make), then the outbound switch on gw-a; the old inbound SA is retired later.
    let a_ctl = std::sync::Arc::new(std::sync::Mutex::new(None::<u32>));
    let data = payload(4 << 20);
    let (a, b) = (&lab.a, &lab.b);
    let got = std::thread::scope(|scope| {
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        let h = scope.spawn(move || {
            rx.recv().unwrap();
            b.rekey_inbound(
                lab::SPI_AB,
                lab::inbound_binding(lab::LAN_B, lab::LAN_A),
                lab::inbound_sa(0x1002, 0x33),
            )
            .unwrap();
            let old = lab::install_out(a, &opts, WAN_B, 0x1002, 0x33);
            done_tx.send(()).unwrap();
            old
        });
        // The second half is written only once the rekey is done, so the new SA carries it
        // however the threads are scheduled.
        let got = tcp_transfer(&lab, data.clone(), move || {
            tx.send(()).unwrap();
            done_rx.recv().unwrap();
        });
        *a_ctl.lock().unwrap() = h.join().unwrap();
        got
    });
    assert!(got == data, "transfer across the rekey was corrupted or truncated");
    assert_eq!(*a_ctl.lock().unwrap(), Some(lab::SPI_AB), "the outbound SA was replaced");
    let c = lab.b.counters();
    let new = c.sas.iter().find(|s| s.spi == 0x1002 && s.direction == Direction::Inbound).unwrap();
    assert!(new.counters.packets > 0, "the new SA carried traffic");
    assert!(
        wait_for(Duration::from_secs(5), || lab
            .events_b
            .try_iter()
            .any(|e| e == Event::InboundRetired { spi: lab::SPI_AB })),
        "the old inbound SA was not retired after the new one carried traffic"
    );

    // gw-a protects a prefix through the same child that gw-b's SA selectors do not cover:
    // gw-b decrypts it and drops it as a selector mismatch.
    lab.a
        .publish_spd(isthmus_dataplane::SpdTable::new(
            2,
            vec![
                isthmus_dataplane::SpdEntry {
                    id: "lan-b".into(),
                    selector: lab::selector(lab::LAN_A, lab::LAN_B),
                    action: isthmus_dataplane::SpdAction::Protect {
                        tunnel: "t1".into(),
                        child: "c1".into(),
                    },
                },
                isthmus_dataplane::SpdEntry {
                    id: "wide".into(),
                    selector: lab::selector(lab::LAN_A, "10.33.5.0/24"),
                    action: isthmus_dataplane::SpdAction::Protect {
                        tunnel: "t1".into(),
                        child: "c1".into(),
                    },
                },
            ],
        ))
        .unwrap();
    lab.gw_a.sh("ip route add 10.33.5.0/24 dev ist0");
    let out = ping(&lab, "-c 2 -i 0.2 -W 1 10.33.5.1");
    assert!(!out.status.success());
    assert!(
        wait_for(Duration::from_secs(2), || lab.b.counters().drops[Drop::SelectorMismatch] >= 2),
        "packets outside the SA's selectors were not dropped: {:?}",
        lab.b.counters().drops
    );
    assert!(lab.a.counters().io[Io::WanTx] > 1000);
}

#[test]
fn ipv6_lans_through_an_ipv4_tunnel() {
    if !require_root() {
        return;
    }
    let lab = lab::build(Options { ipv6: true, tun_mtu: Some(1500), ..Options::default() });
    let out = lab.host_a.sh_output("ping -6 -c 3 -i 0.2 -W 2 fd32:2::2");
    assert!(
        out.status.success(),
        "ping6 through the tunnel failed: {}\ngw-a: {:?}\ngw-b: {:?}\n{}",
        String::from_utf8_lossy(&out.stdout),
        lab.a.counters(),
        lab.b.counters(),
        lab.gw_a.sh("ip -6 route; ip -6 addr; sysctl net.ipv6.conf.ist0.disable_ipv6")
    );
    let data = payload(2 << 20);
    let got = tcp_transfer_to(&lab, "[fd32:2::2]:5002", data.clone(), || {});
    assert!(got == data, "IPv6 TCP transfer corrupted or truncated");
    // ICMPv6 "packet too big" (RFC 4443 §3.2) for a packet that cannot fit once encapsulated.
    let out = lab.host_a.sh_output("ping -6 -M do -s 1452 -c 1 -W 2 fd32:2::2");
    let text =
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(!out.status.success() && text.contains("mtu"), "no packet-too-big: {text}");
    // Counters are added when the worker's batch ends, which may be after ping has exited.
    assert!(
        wait_for(Duration::from_secs(3), || lab.a.counters().io[Io::IcmpTooBig] >= 1),
        "icmp-too-big not counted"
    );
    let out = lab.host_a.sh_output("ping -6 -M do -s 1200 -c 1 -W 2 fd32:2::2");
    assert!(out.status.success(), "a ping6 that fits failed");
}

#[test]
fn ipv4_and_ipv6_lans_over_an_ipv6_wan_in_udp_and_plain_esp() {
    if !require_root() {
        return;
    }
    for raw in [false, true] {
        let lab = lab::build(Options { ipv6: true, wan6: true, raw, ..Options::default() });
        for (ping, to) in [("ping", HOST_B), ("ping -6", "fd32:2::2")] {
            let out = lab.host_a.sh_output(&format!("{ping} -c 2 -i 0.2 -W 2 {to}"));
            assert!(out.status.success(), "{ping} {to} over the IPv6 WAN (raw={raw}) failed");
        }
        let data = payload(1 << 20);
        let got = tcp_transfer_to(&lab, "10.32.2.2:5003", data.clone(), || {});
        assert!(got == data, "TCP over the IPv6 WAN (raw={raw}) corrupted or truncated");
        let c = lab.b.counters();
        // SA-level drops (unknown SPI, replay, ICV, ...); the lab's TUN devices may drop their own
        // link-scoped packets.
        let esp_drops: u64 = DropReason::ALL.into_iter().map(|r| c.drops[Drop::from(r)]).sum();
        assert!(c.io[Io::WanRx] > 100 && esp_drops == 0, "gw-b (raw={raw}): {c:?}");
    }
}

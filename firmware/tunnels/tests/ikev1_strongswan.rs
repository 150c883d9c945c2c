//! IKEv1 on the wire against strongSwan's charon in IKEv1 mode (`version = 1`), root-only, in
//! network namespaces: Main Mode with a pre-shared key and Quick Mode with PFS, each side
//! initiating in turn, through charon's own NAT-T (kernel-libipsec fakes a NAT to get ESP in
//! UDP, so the exchange moves to port 4500 after message 4, RFC 3947 §4). What strongSwan
//! shows is asserted: the ISAKMP SA ESTABLISHED and the CHILD SA INSTALLED with our algorithms.

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use isthmus_ike::v1::main_mode::notify;
use isthmus_ike::v1::main_mode::{Established, MainMode, Phase1Config, Step};
use isthmus_ike::v1::quick_mode::{QmStep, QuickConfig, QuickMode};
use isthmus_ike::v1::{codec, info};
use isthmus_ike::{Psk, parse_esp_list, parse_ike_list};
use isthmus_testkit::strongswan::{Strongswan, SwanConn};
use isthmus_testkit::{Netns, require_root, veth};
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;

const PSK: &str = "ikev1-interop-psk-0123456789";

/// Our two IKE sockets in the Isthmus namespace, and where the peer is.
struct Wire {
    s500: UdpSocket,
    s4500: UdpSocket,
    peer: IpAddr,
    /// After NAT detection: port 4500 with the non-ESP marker (RFC 3948 §2.2).
    floated: bool,
}

impl Wire {
    fn send(&self, msg: &[u8]) {
        if self.floated {
            let framed = [&[0u8; 4][..], msg].concat();
            self.s4500.send_to(&framed, SocketAddr::new(self.peer, 4500)).unwrap();
        } else {
            self.s500.send_to(msg, SocketAddr::new(self.peer, 500)).unwrap();
        }
    }

    /// The next Main or Quick Mode datagram (informational ones and keepalives are skipped).
    fn recv(&mut self, timeout: Duration) -> Vec<u8> {
        self.recv_where(timeout, |x| x != codec::exchange::INFORMATIONAL.0)
    }

    /// The next datagram whose exchange type `want` accepts (keepalives are skipped).
    fn recv_where(&mut self, timeout: Duration, want: impl Fn(u8) -> bool) -> Vec<u8> {
        let deadline = Instant::now() + timeout;
        let mut buf = [0u8; 4096];
        while Instant::now() < deadline {
            for (sock, natt) in [(&self.s500, false), (&self.s4500, true)] {
                let Ok((n, _)) = sock.recv_from(&mut buf) else { continue };
                let d = if natt {
                    if n < 5 || buf[..4] != [0; 4] {
                        continue; // a keepalive, or ESP
                    }
                    self.floated = true;
                    &buf[4..n]
                } else {
                    &buf[..n]
                };
                if d.len() > 18 && want(d[18]) {
                    return d.to_vec();
                }
            }
        }
        panic!("no IKEv1 message from the peer within {timeout:?}");
    }
}

struct Lab {
    swan: LoggedSwan,
    wire: Wire,
    _gw_i: Netns,
    _gw_s: Netns,
    _host_s: Netns,
}

/// charon, whose log is printed when a test fails.
struct LoggedSwan(Strongswan);

impl std::ops::Deref for LoggedSwan {
    type Target = Strongswan;
    fn deref(&self) -> &Strongswan {
        &self.0
    }
}

impl Drop for LoggedSwan {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- charon\n{}\n{}", self.0.status(), self.0.log());
        }
    }
}

fn lab(n: u8, esp: &str) -> Lab {
    lab_with(n, esp, false)
}

fn lab_with(n: u8, esp: &str, aggressive: bool) -> Lab {
    let gw_i = Netns::new("v1i");
    let gw_s = Netns::new("v1s");
    veth(&gw_i, "wan-i", &format!("10.40.{n}.1/24"), &gw_s, "wan-s", &format!("10.40.{n}.2/24"));
    // charon's kernel-libipsec routes the remote selector from an address of its local one.
    let host_s = Netns::new("v1h");
    veth(&gw_s, "lan-s", &format!("10.42.{n}.1/24"), &host_s, "eth0", &format!("10.42.{n}.2/24"));
    let mut c = SwanConn::new("v1", &format!("10.40.{n}.2"), &format!("10.40.{n}.1"), PSK);
    c.version = 1;
    c.aggressive = aggressive;
    c.child = "net".into();
    c.ike_proposals = "aes128-sha256-modp2048".into();
    c.esp_proposals = esp.into();
    c.local_ts = format!("10.42.{n}.0/24");
    c.remote_ts = format!("10.41.{n}.0/24");
    let swan = Strongswan::start(&gw_s, &[c]);
    swan.load_all().unwrap();
    let a: IpAddr = format!("10.40.{n}.1").parse().unwrap();
    let (s500, s4500) = gw_i.run(move || {
        let s = |p| {
            let s = UdpSocket::bind(SocketAddr::new(a, p)).unwrap();
            s.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
            s
        };
        (s(500), s(4500))
    });
    let wire = Wire { s500, s4500, peer: format!("10.40.{n}.2").parse().unwrap(), floated: false };
    Lab { swan: LoggedSwan(swan), wire, _gw_i: gw_i, _gw_s: gw_s, _host_s: host_s }
}

fn phase1(n: u8) -> Phase1Config {
    Phase1Config {
        proposals: parse_ike_list("aes128-sha256-modp2048").unwrap(),
        life: Duration::from_secs(28_800),
        psk: Psk::new(PSK.as_bytes().to_vec()),
        local_id: format!("10.40.{n}.1").parse().unwrap(),
        remote_id: format!("10.40.{n}.2").parse().unwrap(),
        local: format!("10.40.{n}.1:500").parse().unwrap(),
        remote: format!("10.40.{n}.2:500").parse().unwrap(),
    }
}

fn quick(n: u8, esp: &str) -> QuickConfig {
    QuickConfig {
        proposals: parse_esp_list(esp).unwrap(),
        life: Duration::from_secs(3600),
        local_ts: format!("10.41.{n}.0/24").parse().unwrap(),
        remote_ts: format!("10.42.{n}.0/24").parse().unwrap(),
        udp: true,
    }
}

fn assert_up(swan: &Strongswan, want: &[&str]) {
    let ok = swan.wait_until(Duration::from_secs(5), |s| {
        s.ike_established("v1") && s.children_installed("net") == 1
    });
    let st = swan.status();
    assert!(ok, "strongSwan does not show the tunnel:\n{st}\n{}", swan.log());
    assert!(st.contains("IKEv1"), "{st}");
    for w in want {
        assert!(st.contains(w), "strongSwan does not show {w}:\n{st}");
    }
}

#[test]
fn isthmus_initiates_main_mode_and_quick_mode_to_strongswan() {
    if !require_root() || !isthmus_testkit::strongswan::available() {
        return;
    }
    let n = 30;
    let esp = "aes128-sha256-modp2048";
    let mut lab = lab(n, esp);
    let mut rng = ChaCha20Rng::from_seed([30; 32]);
    let (mut mm, m1) = MainMode::initiate(phase1(n), &mut rng).unwrap();
    lab.wire.send(&m1);
    let sa: Box<Established> = loop {
        let d = lab.wire.recv(Duration::from_secs(10));
        match mm.handle(&d, &mut rng).unwrap_or_else(|e| panic!("{e:?}\n{}", lab.swan.log())) {
            Step::Send(m) => {
                let nat = mm.nat();
                lab.wire.floated |= nat.local_behind || nat.remote_behind;
                lab.wire.send(&m);
            }
            Step::Resend(m) => m.iter().for_each(|m| lab.wire.send(m)),
            Step::Done { sa, .. } => break sa,
        }
    };
    assert!(sa.nat.supported && sa.peer_dpd, "{:?}", sa.nat);
    let (mut qm, q1) =
        QuickMode::initiate(&sa, quick(n, esp), 0x5151_0001, 0xc0de_0001, &mut rng).unwrap();
    lab.wire.send(&q1);
    let d = lab.wire.recv(Duration::from_secs(10));
    let QmStep::Done { send: Some(q3), child } = qm.handle(&sa, &d).unwrap() else { panic!() };
    lab.wire.send(&q3);
    assert_eq!(child.suite.to_string(), "aes128-sha256-modp2048-noesn");
    assert_up(
        &lab.swan,
        &[
            "AES_CBC-128/HMAC_SHA2_256_128/PRF_HMAC_SHA2_256/MODP_2048",
            "AES_CBC-128/HMAC_SHA2_256_128/MODP_2048",
            &format!("{:08x}", child.spi_in),
        ],
    );

    // DPD (RFC 3706): charon answers an R-U-THERE with its ACK and our sequence number.
    lab.wire.send(&info::encode(&sa, 0x7001, &[info::dpd(&sa, notify::R_U_THERE, 41)]).unwrap());
    let ack = loop {
        let d =
            lab.wire.recv_where(Duration::from_secs(10), |x| x == codec::exchange::INFORMATIONAL.0);
        if let Ok(p) = info::decode(&sa, &d)
            && let Some(seq) = info::dpd_seq(&p, true)
        {
            break seq;
        }
    };
    assert_eq!(ack, 41);
    // A Delete of our inbound SA removes the CHILD SA on charon, and the ISAKMP SA stays.
    lab.wire.send(&info::encode(&sa, 0x7002, &[info::delete_esp(&[child.spi_in])]).unwrap());
    assert!(
        lab.swan.wait_until(Duration::from_secs(5), |s| s.children_installed("net") == 0
            && s.ike_established("v1")),
        "{}",
        lab.swan.status()
    );
    // Deleting the ISAKMP SA ends it too.
    lab.wire.send(&info::encode(&sa, 0x7003, &[info::delete_isakmp(&sa)]).unwrap());
    assert!(
        lab.swan.wait_until(Duration::from_secs(5), |s| !s.ike_established("v1")),
        "{}",
        lab.swan.status()
    );
}

#[test]
fn strongswan_initiates_main_mode_and_quick_mode_to_isthmus() {
    if !require_root() || !isthmus_testkit::strongswan::available() {
        return;
    }
    let n = 31;
    let esp = "aes256-sha1";
    let mut lab = lab(n, esp);
    let mut rng = ChaCha20Rng::from_seed([31; 32]);
    let started = std::thread::scope(|s| {
        let swan: &Strongswan = &lab.swan;
        let h = s.spawn(move || swan.initiate("net"));
        let m1 = lab.wire.recv(Duration::from_secs(10));
        let (mut mm, m2) = MainMode::respond(phase1(n), &m1, &mut rng).unwrap();
        lab.wire.send(&m2);
        let sa = loop {
            let d = lab.wire.recv(Duration::from_secs(10));
            match mm.handle(&d, &mut rng).unwrap_or_else(|e| panic!("{e:?}")) {
                Step::Send(m) => lab.wire.send(&m),
                Step::Resend(m) => m.iter().for_each(|m| lab.wire.send(m)),
                Step::Done { send, sa } => {
                    lab.wire.send(&send.unwrap());
                    break sa;
                }
            }
        };
        let q1 = lab.wire.recv(Duration::from_secs(10));
        let (mut qm, q2) =
            QuickMode::respond(&sa, &[quick(n, esp)], &q1, 0xc0de_0002, &mut rng).unwrap();
        lab.wire.send(&q2);
        let q3 = lab.wire.recv(Duration::from_secs(10));
        let QmStep::Done { child, .. } = qm.handle(&sa, &q3).unwrap() else { panic!() };
        (h.join().unwrap(), child)
    });
    let (initiated, child) = started;
    initiated.unwrap_or_else(|e| panic!("{e}\n{}", lab.swan.log()));
    assert_eq!(child.spi_in, 0xc0de_0002);
    assert_up(&lab.swan, &["AES_CBC-256/HMAC_SHA1_96", "c0de0002"]);
}

#[test]
fn aggressive_mode_with_strongswan_in_both_roles() {
    if !require_root() || !isthmus_testkit::strongswan::available() {
        return;
    }
    for (n, we_start) in [(32, true), (33, false)] {
        let esp = "aes128-sha256";
        let mut lab = lab_with(n, esp, true);
        let mut rng = ChaCha20Rng::from_seed([n; 32]);
        let sa = std::thread::scope(|s| {
            let swan: &Strongswan = &lab.swan;
            let h = (!we_start).then(|| s.spawn(move || swan.initiate("net")));
            let sa = if we_start {
                let (mut mm, m1) = MainMode::initiate_aggressive(phase1(n), &mut rng).unwrap();
                lab.wire.send(&m1);
                let d = lab.wire.recv(Duration::from_secs(10));
                let Step::Done { send: Some(m3), sa } =
                    mm.handle(&d, &mut rng).unwrap_or_else(|e| panic!("{e:?}\n{}", lab.swan.log()))
                else {
                    panic!("two messages")
                };
                let nat = sa.nat;
                lab.wire.floated |= nat.local_behind || nat.remote_behind;
                lab.wire.send(&m3);
                // Message 3 is the last of phase 1 and nothing answers it: Quick Mode waits
                // until charon has taken it, or charon's workers may see Quick Mode first
                // and drop it ("phase 1 is incomplete"); these raw exchanges do not
                // retransmit.
                assert!(
                    lab.swan.wait_until(Duration::from_secs(5), |s| s.ike_established("v1")),
                    "{}",
                    lab.swan.log()
                );
                // charon, the responder, waits for our Quick Mode.
                let (mut qm, q1) =
                    QuickMode::initiate(&sa, quick(n, esp), 0x5252_0001, 0xc0de_0003, &mut rng)
                        .unwrap();
                lab.wire.send(&q1);
                let d = lab.wire.recv(Duration::from_secs(10));
                let QmStep::Done { send: Some(q3), .. } =
                    qm.handle(&sa, &d).unwrap_or_else(|e| panic!("{e:?}\n{}", lab.swan.log()))
                else {
                    panic!()
                };
                lab.wire.send(&q3);
                sa
            } else {
                let m1 = lab.wire.recv(Duration::from_secs(10));
                let (mut mm, m2) = MainMode::respond(phase1(n), &m1, &mut rng).unwrap();
                lab.wire.send(&m2);
                let m3 = lab.wire.recv(Duration::from_secs(10));
                let Step::Done { sa, .. } = mm
                    .handle(&m3, &mut rng)
                    .unwrap_or_else(|e| panic!("{e:?}\n{}", lab.swan.log()))
                else {
                    panic!("three messages")
                };
                let q1 = lab.wire.recv(Duration::from_secs(10));
                let (mut qm, q2) =
                    QuickMode::respond(&sa, &[quick(n, esp)], &q1, 0xc0de_0004, &mut rng).unwrap();
                lab.wire.send(&q2);
                let q3 = lab.wire.recv(Duration::from_secs(10));
                qm.handle(&sa, &q3).unwrap();
                sa
            };
            if let Some(h) = h {
                h.join().unwrap().unwrap_or_else(|e| panic!("{e}\n{}", lab.swan.log()));
            }
            sa
        });
        assert_eq!(sa.peer_id.to_string(), format!("10.40.{n}.2"));
        assert_up(&lab.swan, &["AES_CBC-128/HMAC_SHA2_256_128/PRF_HMAC_SHA2_256/MODP_2048"]);
    }
}

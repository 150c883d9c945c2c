//! The two-gateway lab shared by the root-only tests and the tunnel benchmark:
//!
//! ```text
//!  host-a 10.32.1.2 ─ 10.32.1.1 gw-a [ist0] 10.32.0.1 ══ WAN ══ 10.32.0.2 [ist0] gw-b 10.32.2.1 ─ 10.32.2.2 host-b
//! ```
//!
//! Each gateway runs an Isthmus dataplane (in this process, on threads inside its namespace)
//! with static test keys; the kernel routes the remote LAN into the TUN device.
#![allow(dead_code, unreachable_pub)]

use std::net::{IpAddr, SocketAddr};
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use isthmus_dataplane::{
    Config, Dataplane, Encap, Event, InboundBinding, OutboundBinding, Selector, SpdAction,
    SpdEntry, SpdTable,
};
use isthmus_esp::{Aead, Backend, InboundSa, Lifetime, OutboundSa, SaConfig, Transform};
use isthmus_testkit::{Netns, veth};

pub const HOST_A: &str = "10.32.1.2";
pub const HOST_B: &str = "10.32.2.2";
pub const WAN_A: &str = "10.32.0.1";
pub const WAN_B: &str = "10.32.0.2";
pub const WAN6_A: &str = "fd32:ff::1";
pub const WAN6_B: &str = "fd32:ff::2";
pub const LAN_A: &str = "10.32.1.0/24";
pub const LAN_B: &str = "10.32.2.0/24";
/// A remote prefix gw-a protects through a CHILD SA that has no SA.
pub const NO_SA_NET: &str = "10.33.9.0/24";

pub const LAN6_A: &str = "fd32:1::/64";
pub const LAN6_B: &str = "fd32:2::/64";

pub const SPI_AB: u32 = 0x0000_1001;
pub const SPI_BA: u32 = 0x0000_2001;

/// How the lab is built.
#[derive(Clone, Copy, Debug)]
pub struct Options {
    /// Plain ESP (protocol 50) instead of ESP in UDP 4500.
    pub raw: bool,
    /// MTU of the WAN veth and the tunnel MTU.
    pub wan_mtu: u32,
    /// TUN MTU (None: the dataplane's default, below the tunnel MTU).
    pub tun_mtu: Option<u32>,
    /// Run the WAN (outer headers) over IPv6 (fd32:ff::1 and fd32:ff::2); needs `ipv6`.
    pub wan6: bool,
    /// Also number the LANs with IPv6 (fd32:1::/64, fd32:2::/64) and protect them through the
    /// same CHILD SA; IPv6 then stays on in the namespaces.
    pub ipv6: bool,
    /// The algorithms of the SAs `build` installs.
    pub transform: Transform,
}

/// The transform of the lab's SAs unless [`Options::transform`] says otherwise.
pub const DEFAULT_TRANSFORM: Transform = Transform::Aead(Aead::Aes128Gcm16);

impl Default for Options {
    fn default() -> Options {
        Options {
            raw: false,
            wan_mtu: 1500,
            tun_mtu: None,
            ipv6: false,
            wan6: false,
            transform: DEFAULT_TRANSFORM,
        }
    }
}

/// The four namespaces and the two dataplanes. Field order is drop order: dataplanes stop
/// before their namespaces go.
pub struct Lab {
    pub a: Dataplane,
    pub b: Dataplane,
    pub events_a: Receiver<Event>,
    pub events_b: Receiver<Event>,
    pub host_a: Netns,
    pub gw_a: Netns,
    pub gw_b: Netns,
    pub host_b: Netns,
    pub opts: Options,
}

/// Static test key material for `t`: every byte `byte`.
pub fn key(t: Transform, byte: u8) -> Vec<u8> {
    vec![byte; t.key_material_len()]
}

/// An SA of the default transform.
pub fn sa_config(spi: u32, key_byte: u8) -> SaConfig {
    sa_config_for(DEFAULT_TRANSFORM, spi, key_byte)
}

pub fn sa_config_for(transform: Transform, spi: u32, key_byte: u8) -> SaConfig {
    SaConfig {
        spi,
        transform,
        backend: Backend::Ring,
        key: key(transform, key_byte),
        esn: true,
        replay_window: 1024,
        lifetime: Lifetime::default(),
    }
}

pub fn selector(local: &str, remote: &str) -> Selector {
    Selector::between(local.parse().unwrap(), remote.parse().unwrap())
}

fn protect(id: &str, local: &str, remote: &str, child: &str) -> SpdEntry {
    SpdEntry {
        id: id.into(),
        selector: selector(local, remote),
        action: SpdAction::Protect { tunnel: "t1".into(), child: child.into() },
    }
}

pub fn encap(opts: &Options, peer: &str) -> Encap {
    let ip: IpAddr = peer.parse().unwrap();
    if opts.raw { Encap::Esp { peer: ip } } else { Encap::Udp { peer: SocketAddr::new(ip, 4500) } }
}

/// Installs the outbound SA `spi` (key `key_byte`) of child `c1` on `dp`, towards `peer`.
pub fn install_out(
    dp: &Dataplane,
    opts: &Options,
    peer: &str,
    spi: u32,
    key_byte: u8,
) -> Option<u32> {
    let b = OutboundBinding { tunnel: "t1".into(), child: "c1".into(), encap: encap(opts, peer) };
    let sa = OutboundSa::new(sa_config_for(opts.transform, spi, key_byte), Instant::now());
    dp.install_outbound(b, sa.unwrap()).unwrap()
}

pub fn inbound_binding(local: &str, remote: &str) -> InboundBinding {
    let mut selectors = vec![selector(local, remote)];
    // The IPv6 LANs ride the same CHILD SA (harmless when they are not numbered).
    let (l6, r6) = if local == LAN_A { (LAN6_A, LAN6_B) } else { (LAN6_B, LAN6_A) };
    selectors.push(selector(l6, r6));
    InboundBinding { tunnel: "t1".into(), child: "c1".into(), selectors }
}

pub fn inbound_sa(spi: u32, key_byte: u8) -> InboundSa {
    InboundSa::new(sa_config(spi, key_byte), Instant::now()).unwrap()
}

fn gateway(ns: &Netns, wan: &str, opts: &Options) -> (Dataplane, Receiver<Event>) {
    let mut cfg = Config::new("ist0", wan.parse().unwrap());
    cfg.tunnel_mtu = opts.wan_mtu;
    cfg.tun_mtu = opts.tun_mtu;
    cfg.raw_esp = true;
    ns.run(move || Dataplane::start(cfg)).expect("start dataplane")
}

/// Builds the namespaces, links, routes and both dataplanes with SAs and SPD tables.
pub fn build(opts: Options) -> Lab {
    let host_a = Netns::new("dpha");
    let gw_a = Netns::new("dpga");
    let gw_b = Netns::new("dpgb");
    let host_b = Netns::new("dphb");
    for ns in [&host_a, &gw_a, &gw_b, &host_b] {
        if opts.ipv6 {
            ns.sh("sysctl -qw net.ipv6.conf.all.forwarding=1 net.ipv6.conf.default.accept_dad=0");
        } else {
            // Quiet links: no IPv6 autoconfiguration chatter in the captures.
            ns.sh(
                "sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1",
            );
        }
    }
    veth(&host_a, "ha", "10.32.1.2/24", &gw_a, "la", "10.32.1.1/24");
    veth(&gw_a, "wa", "10.32.0.1/24", &gw_b, "wb", "10.32.0.2/24");
    veth(&gw_b, "lb", "10.32.2.1/24", &host_b, "hb", "10.32.2.2/24");
    gw_a.sh(&format!("ip link set wa mtu {}", opts.wan_mtu));
    gw_b.sh(&format!("ip link set wb mtu {}", opts.wan_mtu));
    host_a.sh("ip route add default via 10.32.1.1");
    host_b.sh("ip route add default via 10.32.2.1");
    if opts.ipv6 {
        host_a.sh("ip addr add fd32:1::2/64 dev ha nodad && ip -6 route add default via fd32:1::1");
        gw_a.sh("ip addr add fd32:1::1/64 dev la nodad");
        gw_b.sh("ip addr add fd32:2::1/64 dev lb nodad");
        host_b.sh("ip addr add fd32:2::2/64 dev hb nodad && ip -6 route add default via fd32:2::1");
    }
    for gw in [&gw_a, &gw_b] {
        gw.sh("sysctl -qw net.ipv4.ip_forward=1 net.ipv4.conf.all.rp_filter=0");
    }
    let (wan_a, wan_b) = if opts.wan6 {
        gw_a.sh(&format!("ip addr add {WAN6_A}/64 dev wa nodad"));
        gw_b.sh(&format!("ip addr add {WAN6_B}/64 dev wb nodad"));
        (WAN6_A, WAN6_B)
    } else {
        (WAN_A, WAN_B)
    };
    let (a, events_a) = gateway(&gw_a, wan_a, &opts);
    let (b, events_b) = gateway(&gw_b, wan_b, &opts);
    gw_a.sh(&format!("ip route add {LAN_B} dev ist0 && ip route add {NO_SA_NET} dev ist0"));
    gw_b.sh(&format!("ip route add {LAN_A} dev ist0"));
    let mut spd_a =
        vec![protect("lan-b", LAN_A, LAN_B, "c1"), protect("no-sa", LAN_A, NO_SA_NET, "c2")];
    let mut spd_b = vec![protect("lan-a", LAN_B, LAN_A, "c1")];
    if opts.ipv6 {
        gw_a.sh(&format!("ip -6 route add {LAN6_B} dev ist0"));
        gw_b.sh(&format!("ip -6 route add {LAN6_A} dev ist0"));
        spd_a.push(protect("lan6-b", LAN6_A, LAN6_B, "c1"));
        spd_b.push(protect("lan6-a", LAN6_B, LAN6_A, "c1"));
    }
    a.publish_spd(SpdTable::new(1, spd_a)).unwrap();
    b.publish_spd(SpdTable::new(1, spd_b)).unwrap();
    install_out(&a, &opts, wan_b, SPI_AB, 0x11);
    install_out(&b, &opts, wan_a, SPI_BA, 0x22);
    let inbound = |spi, k| InboundSa::new(sa_config_for(opts.transform, spi, k), Instant::now());
    a.add_inbound(inbound_binding(LAN_A, LAN_B), inbound(SPI_BA, 0x22).unwrap()).unwrap();
    b.add_inbound(inbound_binding(LAN_B, LAN_A), inbound(SPI_AB, 0x11).unwrap()).unwrap();
    Lab { a, b, events_a, events_b, host_a, gw_a, gw_b, host_b, opts }
}

/// Kills a child process (by its pid) when dropped, also on panic.
pub struct ChildGuard(pub std::process::Child);

impl ChildGuard {
    /// Asks the process to finish (SIGINT, so tcpdump flushes its capture) and waits for it.
    pub fn interrupt(&mut self) {
        let pid = self.0.id().to_string();
        let _ = std::process::Command::new("kill").args(["-INT", &pid]).status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Waits until `f` is true or `timeout` passes; returns the last result.
pub fn wait_for(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

//! `route_get` against a real kernel, in a network namespace (root): the answers the path tracer
//! shows. Address block 10.60.0.0/16.

use std::net::IpAddr;

use isthmus_net::{LookupError, RouteKind, route_get};
use isthmus_testkit::{Netns, require_root, veth};

#[test]
fn route_get_names_the_entry_table_interface_gateway_and_the_refusals() {
    if !require_root() {
        return;
    }
    let gw = Netns::new("rget");
    let peer = Netns::new("rgetp");
    veth(&gw, "wan0", "10.60.40.1/24", &peer, "wan0", "10.60.40.2/24");
    let host = Netns::new("rgeth");
    veth(&gw, "lan0", "10.60.41.1/24", &host, "lan0", "10.60.41.10/24");
    gw.sh("ip route add 10.60.50.0/24 via 10.60.40.2 table 100");
    gw.sh("ip rule add from 10.60.41.0/24 lookup 100 pref 100");
    gw.sh("ip route add blackhole 10.60.60.0/24");
    gw.sh("sysctl -qw net.ipv4.ip_forward=1");
    let ip = |s: &str| s.parse::<IpAddr>().unwrap();
    let r = gw.run(move || route_get(Some(ip("10.60.41.10")), ip("10.60.50.7"), Some("lan0")));
    let r = r.expect("a route");
    assert_eq!((r.table, r.prefix_len, r.kind), (100, 24, RouteKind::Unicast), "{r:?}");
    assert_eq!(r.destination, ip("10.60.50.0"));
    assert_eq!((r.oif.as_deref(), r.gateway), (Some("wan0"), Some(ip("10.60.40.2"))));
    // The gateway's own address: the local table.
    let r = gw.run(move || route_get(None, ip("10.60.41.1"), None)).expect("a local route");
    assert_eq!((r.table, r.kind), (255, RouteKind::Local), "{r:?}");
    // Refusals, in the kernel's words.
    let e = gw.run(move || route_get(Some(ip("10.60.41.10")), ip("10.60.60.1"), Some("lan0")));
    assert!(matches!(e, Err(LookupError::Refused { errno: libc::EINVAL })), "{e:?}");
    let e = gw.run(move || route_get(None, ip("10.99.0.1"), None)).unwrap_err();
    assert_eq!(e.to_string(), std::io::Error::from_raw_os_error(libc::ENETUNREACH).to_string());
    let e = gw.run(move || route_get(None, ip("10.60.50.1"), Some("nope0"))).unwrap_err();
    assert_eq!(e.to_string(), "interface nope0 does not exist");
}

//! Kernel apply speed, in a fresh network namespace (needs root).
//!
//! 1. From scratch: one shared TUN device (the design serves all tunnels through one device),
//!    its address, and 10,000 routes into it split over table `main` and a tunnel table, plus a
//!    rule and the host firewall: plan + apply, printed as `net_apply_10k_routes_sec`.
//! 2. One route's next hop changes: plan (which dumps all 10,000 routes) + apply, printed as
//!    `net_small_change_ms`.
//!
//! Prints `BENCH <name> <value> <unit>`; details on lines starting with two spaces.

use std::time::Instant;

use isthmus_net::{
    Address, DesiredState, FirewallSpec, Link, LinkKind, NextHop, Reconciler, Route, Rule,
    TABLE_MAIN,
};
use isthmus_testkit::{Netns, veth};

const ROUTES: u32 = 10_000;

fn state() -> DesiredState {
    let routes = (0..ROUTES)
        .map(|i| Route {
            table: if i % 2 == 0 { TABLE_MAIN } else { 100 },
            // 10.61.0.0/24 .. 10.61.39.0/24 host routes, one per remote prefix.
            dst: format!("10.61.{}.{}/32", i / 256, i % 256).parse().unwrap(),
            via: NextHop::Interface("ist0".into()),
            metric: 0,
        })
        .collect();
    DesiredState {
        links: vec![
            Link { name: "wan0".into(), up: true, mtu: None, kind: LinkKind::Existing },
            Link {
                name: "ist0".into(),
                up: true,
                mtu: Some(1400),
                kind: LinkKind::Tun { multi_queue: false },
            },
        ],
        addresses: vec![Address::new("ist0", "10.60.90.1/32").unwrap()],
        routes,
        rules: vec![Rule {
            priority: 1000,
            from: Some("10.60.91.0/24".parse().unwrap()),
            to: None,
            ip_proto: None,
            sport: None,
            table: 100,
        }],
        firewall: Some(FirewallSpec {
            wan_if: "wan0".into(),
            wan_addrs: vec!["10.60.92.1".parse().unwrap()],
            mgmt_if: None,
            mgmt_port: 8443,
            lan_ifs: vec![],
            tunnel_ifs: vec!["ist0".into()],
            wan_echo: false,
        }),
    }
}

fn main() {
    // `cargo bench` passes `--bench`; nothing else to parse.
    if !isthmus_testkit::require_root() {
        println!("  net apply benchmark skipped: it needs root (network namespaces)");
        return;
    }
    let gw = Netns::new("bench");
    let peer = Netns::new("bench");
    veth(&gw, "wan0", "10.60.92.1/24", &peer, "wpeer", "10.60.92.2/24");
    let (full, plan_ms, count, small, small_plan_ms, second) = gw.run(|| {
        let mut r = Reconciler::new().expect("netlink sockets");
        let mut desired = state();

        let t = Instant::now();
        let plan = r.plan(&desired).expect("plan");
        let plan_ms = t.elapsed().as_secs_f64() * 1e3;
        let report = r.apply(&plan).expect("apply");
        let full = t.elapsed().as_secs_f64();
        assert_eq!(report.routes, ROUTES as usize, "{report}");

        let t = Instant::now();
        let again = r.plan(&desired).expect("plan");
        let second = t.elapsed().as_secs_f64() * 1e3;
        assert!(again.is_empty(), "not idempotent: {again}");

        desired.routes[1234].via = NextHop::Blackhole;
        let t = Instant::now();
        let plan = r.plan(&desired).expect("plan");
        let small_plan_ms = t.elapsed().as_secs_f64() * 1e3;
        let report = r.apply(&plan).expect("apply");
        let small = t.elapsed().as_secs_f64() * 1e3;
        assert_eq!(report.applied, 1, "{report}");
        (full, plan_ms, report.applied, small, small_plan_ms, second)
    });
    let routes = gw.sh("ip route show table all proto 181 | wc -l");
    println!("BENCH net_apply_10k_routes_sec {full:.3} s");
    println!("  plan {plan_ms:.1} ms of it; kernel now holds {} Isthmus routes", routes.trim());
    println!("  one shared TUN device serves every tunnel (no per-tunnel devices to create)");
    println!("  re-plan with nothing to do: {second:.1} ms");
    println!("BENCH net_small_change_ms {small:.2} ms");
    println!("  {count} change; plan (dumps all {ROUTES} routes) {small_plan_ms:.2} ms of it");
}

//! The whole apply pipeline at scale, in a network namespace: validate, commit and apply a
//! configuration with 1,000 tunnels and 10,000 routes (kernel routes, firewall, the dataplane's
//! policies and the IKE driver's tunnels), then a one-route change.
//!
//! - `commit_apply_10k_routes_1k_tunnels_sec`: from a gateway with no tunnels to all of them;
//! - `commit_small_change_ms`: one route's metric changed, validated, committed and applied.
//!
//! Needs root (it creates its own namespace); prints a note and no figures otherwise.

use std::fmt::Write;
use std::time::Instant;

use isthmus_api::Action;
use isthmus_testkit::{Netns, require_root, veth};
use isthmusd::core::{Core, Options};

const TUNNELS: usize = 1000;
const ROUTES_PER_TUNNEL: usize = 10;

fn block(i: usize, j: usize) -> String {
    let n = 16 * i + j;
    format!("100.{}.{}.0", 64 + n / 256, n % 256)
}

fn base() -> String {
    isthmus_testkit::config::Gateway::new("bench")
        .wan("wan0", "198.18.255.1/16", "198.18.255.254")
        .lan("app", "lan0", "10.0.0.1/16")
        .toml()
}

fn big(changed_metric: u32) -> String {
    let mut s = base();
    for i in 0..TUNNELS {
        let _ = write!(
            s,
            "[[customer_gateway]]\nname = \"cg{i:04}\"\naddress = \"198.18.{}.{}\"\n\n",
            i / 250,
            i % 250 + 1
        );
    }
    for i in 0..TUNNELS {
        let _ = write!(
            s,
            "[[tunnel]]\nname = \"t{i:04}\"\ncustomer_gateway = \"cg{i:04}\"\npsk = \"bench-psk-{i:04}-0123456789abcdef\"\n\
             start_action = \"none\"\n[[tunnel.spd]]\nlocal = \"10.0.0.0/16\"\nremote = \"{}/20\"\n\n",
            block(i, 0)
        );
    }
    s.push_str("[[route_table]]\nname = \"vpn\"\nid = 100\nlans = [\"app\"]\n");
    for i in 0..TUNNELS {
        for j in 0..ROUTES_PER_TUNNEL {
            let metric = if i == 0 && j == 0 { changed_metric } else { 100 };
            let _ = write!(
                s,
                "[[route_table.route]]\nprefix = \"{}/24\"\ntunnel = \"t{i:04}\"\nmetric = {metric}\n",
                block(i, j)
            );
        }
    }
    s
}

fn commit(core: &Core, text: String) -> f64 {
    let t = Instant::now();
    let r = core.handle(
        Action::ConfigCommit { text, comment: "bench".into(), confirm_secs: None, dry_run: false },
        "bench",
    );
    let secs = t.elapsed().as_secs_f64();
    if let Err(e) = r {
        panic!("commit failed: {e}");
    }
    secs
}

fn main() {
    if !require_root() {
        return;
    }
    let gw = Netns::new("bca");
    let peer = Netns::new("bcb");
    veth(&gw, "wan0", "198.18.255.1/16", &peer, "wan0", "198.18.255.2/16");
    veth(&gw, "lan0", "10.0.0.1/16", &peer, "lan0", "10.0.0.2/16");
    gw.sh("ip addr flush dev wan0; ip addr flush dev lan0");
    let dir = std::env::temp_dir().join(format!("isthmus-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("base.toml"), base()).unwrap();
    let d = dir.clone();
    let r = gw.run(move || {
        let core = Core::start(Options {
            data_dir: d.join("data"),
            config_file: Some(d.join("base.toml")),
            manage_net: true,
            run_tunnels: true,
        })
        .expect("the daemon starts");
        let full = commit(&core, big(100));
        let full_stages = core.last_commit_stages().to_string();
        // Counted while the daemon runs: its TUN device (and the routes into it) go with it.
        let routes = count_routes();
        let tunnels = core.with_driver(|d| d.tunnels.status().len()).unwrap_or(0);
        let mut small = Vec::new();
        for k in 0..9 {
            let ms = commit(&core, big(200 + k)) * 1000.0;
            small.push((ms, core.last_commit_stages().to_string()));
        }
        let changed = count_routes_with("metric 208");
        core.shutdown();
        small.sort_by(|a, b| a.0.total_cmp(&b.0));
        Run { full, full_stages, routes, tunnels, small: small[small.len() / 2].clone(), changed }
    });
    let _ = std::fs::remove_dir_all(&dir);
    println!("BENCH commit_apply_10k_routes_1k_tunnels_sec {:.3} s", r.full);
    println!("  stages: {}", r.full_stages);
    println!(
        "  {} routes in table 100 after the commit; {} tunnels in the IKE driver",
        r.routes, r.tunnels
    );
    println!("BENCH commit_small_change_ms {:.1} ms", r.small.0);
    println!("  stages (median run): {}", r.small.1);
    println!(
        "  median of 9 one-route changes (parse only the changed element, validate all, commit, \
         one route replaced in the kernel, no tunnel touched); the last one in the kernel: {}",
        r.changed
    );
}

struct Run {
    full: f64,
    full_stages: String,
    routes: usize,
    tunnels: usize,
    small: (f64, String),
    changed: usize,
}

fn count_routes_with(needle: &str) -> usize {
    let out = std::process::Command::new("ip")
        .args(["route", "show", "table", "100"])
        .output()
        .expect("ip runs");
    String::from_utf8_lossy(&out.stdout).lines().filter(|l| l.contains(needle)).count()
}

fn count_routes() -> usize {
    count_routes_with("")
}

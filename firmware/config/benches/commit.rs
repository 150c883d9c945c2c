//! Commit latency of a large configuration: 1,000 tunnels (each with its customer gateway and an
//! SPD entry) and 10,000 routes.
//!
//! - `config_validate_commit_10k_routes_1k_tunnels_ms`: parse, validate and commit the whole
//!   document into a fresh sled store (flushed to disk);
//! - `config_small_change_commit_ms`: change one route's metric in that document, then parse,
//!   validate and commit it on top (what an operator's one-line change costs).
//!
//! The kernel apply that follows a commit is the daemon's and is measured there.

use std::time::{Duration, Instant, SystemTime};

use isthmus_config::{Config, Store};

const TUNNELS: usize = 1000;
const ROUTES_PER_TUNNEL: usize = 10;

/// Remote block of tunnel `i`: a /20 inside 100.64.0.0/10; its routes are /24s inside it.
fn block(i: usize, j: usize) -> String {
    let n = 16 * i + j; // index of a /24 inside 100.64.0.0/10
    format!("100.{}.{}.0", 64 + n / 256, n % 256)
}

fn generate(metric_of: impl Fn(usize) -> u32) -> String {
    let mut s = String::with_capacity(2 << 20);
    s.push_str(
        r#"[gateway]
name = "bench-gw"
[gateway.wan]
interface = "eth0"
address = "203.0.113.10/24"
next_hop = "203.0.113.1"
[[gateway.lan]]
name = "app"
interface = "eth1"
addresses = ["10.0.0.1/24"]
networks = ["10.0.0.0/16"]
next_hop = "10.0.0.254"
[gateway.management]
interface = "eth2"
address = "192.168.100.10/24"
[[api_token]]
name = "ops"
role = "admin"
token_hash = "sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
"#,
    );
    for i in 0..TUNNELS {
        s.push_str(&format!(
            "[[customer_gateway]]\nname = \"cg{i:04}\"\naddress = \"198.18.{}.{}\"\n\n",
            i / 250,
            i % 250 + 1
        ));
    }
    for i in 0..TUNNELS {
        s.push_str(&format!(
            "[[tunnel]]\nname = \"t{i:04}\"\ncustomer_gateway = \"cg{i:04}\"\npsk = {{ env = \"PSK_{i}\" }}\n\
             [[tunnel.spd]]\nlocal = \"10.0.0.0/16\"\nremote = \"{}/20\"\n\n",
            block(i, 0)
        ));
    }
    s.push_str("[[route_table]]\nname = \"vpn\"\nid = 100\nlans = [\"app\"]\n");
    for i in 0..TUNNELS {
        for j in 0..ROUTES_PER_TUNNEL {
            let r = i * ROUTES_PER_TUNNEL + j;
            s.push_str(&format!(
                "[[route_table.route]]\nprefix = \"{}/24\"\ntunnel = \"t{i:04}\"\nmetric = {}\n",
                block(i, j),
                metric_of(r)
            ));
        }
    }
    s
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let base = generate(|_| 100);
    let cfg = Config::from_toml(&base).expect("the generated configuration parses");
    let report = cfg.validate();
    assert!(report.errors.is_empty() && report.warnings.is_empty(), "{report}");
    assert_eq!(cfg.route_tables[0].routes.len(), TUNNELS * ROUTES_PER_TUNNEL);

    // Whole commit into a fresh store, several times.
    let mut full = Vec::new();
    let (mut parse, mut validate) = (Vec::new(), Vec::new());
    for _ in 0..5 {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let t = Instant::now();
        store.commit(&base, "bench", "initial", SystemTime::now()).unwrap();
        full.push(ms(t.elapsed()));
        let t = Instant::now();
        let c = Config::from_toml(&base).unwrap();
        parse.push(ms(t.elapsed()));
        let t = Instant::now();
        std::hint::black_box(c.validate());
        validate.push(ms(t.elapsed()));
    }
    println!("BENCH config_validate_commit_10k_routes_1k_tunnels_ms {:.1} ms", median(full));
    println!(
        "  {} bytes of TOML; median of 5: parse {:.1} ms, validate {:.1} ms, the rest is the sled transaction and flush",
        base.len(),
        median(parse),
        median(validate)
    );

    // One changed route at a time on top of the big configuration.
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    store.commit(&base, "bench", "initial", SystemTime::now()).unwrap();
    let mut small = Vec::new();
    for k in 0..20 {
        let changed = 37 + k * 499;
        let text = generate(|r| if r == changed { 150 } else { 100 });
        let t = Instant::now();
        store.commit(&text, "bench", "one route", SystemTime::now()).unwrap();
        small.push(ms(t.elapsed()));
        // Back to the base, so the next change is again a single route.
        store.commit(&base, "bench", "revert", SystemTime::now()).unwrap();
    }
    println!("BENCH config_small_change_commit_ms {:.1} ms", median(small));
    println!("  median of 20 commits that each change one route's metric in the same document");
}

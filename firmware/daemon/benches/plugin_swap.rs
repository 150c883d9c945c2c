//! The daemon's plugin swap: a verified security-group plugin in the store is activated and the
//! configuration's 10,000 security-group rules are live in the dataplane. Measured from the
//! activation to `Policy::refresh` returning: the store's record, loading the package from sled
//! and verifying its signature again, linking, the plugin's `compile` call, validation, the
//! supervisor's classifier build and the dataplane's publication (it shares that table), and the SPD recompiled on the way. Component compilation (Cranelift)
//! is excluded and printed on its own line, as in `isthmus-policy`'s `plugin_swap`.
//!
//! As root the tables go into a real dataplane in a network namespace (10.62.9.0/24); without
//! root, into the supervisor only (said on a detail line).

use std::sync::Arc;
use std::time::{Duration, Instant};

use isthmus_policy::{Hook, PluginStore, generate_key, verify};
use isthmusd::obs::alarms::Alarms;
use isthmusd::obs::events::EventBus;
use isthmusd::policy::{Policy, trusted_keys};

/// A deterministic xorshift generator.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// A configuration with `n` security-group rules bound to the LAN.
fn config(n: usize, public: &str) -> String {
    let mut rng = Rng(0x62_0000_0001);
    let mut s = isthmus_testkit::config::Gateway::new("bench")
        .wan("wan0", "10.62.9.1/24", "10.62.9.254")
        .lan("lan", "lan0", "10.62.10.1/24")
        .trusted_key("bench", public)
        .push("[[security_group]]\nname = \"big\"\nlans = [\"lan\"]\n")
        .toml();
    for i in 0..n {
        let r = rng.next();
        let (a, b, len) = ((r >> 8) as u8, (r >> 16) as u8, 16 + (r >> 24) % 17);
        let mask = if len >= 32 { u32::MAX } else { !(u32::MAX >> len) };
        let addr = std::net::Ipv4Addr::from(u32::from_be_bytes([10, a, b, (r >> 32) as u8]) & mask);
        let port = 1 + (r >> 40) % 60000;
        s.push_str(&format!(
            "[[security_group.rule]]\npriority = {}\naction = \"{}\"\ndirection = \"{}\"\n\
             protocol = \"{}\"\n{} = \"{addr}/{len}\"\nports = \"{port}-{}\"\n",
            i + 1,
            if r & 1 == 0 { "allow" } else { "deny" },
            if r & 2 == 0 { "in" } else { "out" },
            if r & 4 == 0 { "tcp" } else { "udp" },
            if r & 2 == 0 { "source" } else { "destination" },
            port + (r >> 56) % 100,
        ));
    }
    s
}

fn main() {
    let wasm_path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../plugins/target/wasm32-wasip2/release/security_group.wasm");
    let Ok(wasm) = std::fs::read(&wasm_path) else {
        eprintln!("{} is missing: run `make plugins` first", wasm_path.display());
        std::process::exit(1);
    };
    let (sk, pk) = generate_key().unwrap();
    let cfg = isthmus_config::Config::from_toml(&config(10_000, &pk.to_string())).unwrap();
    let dir = std::env::temp_dir().join(format!("isthmusd-bench-swap-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let tree = sled::open(&dir).unwrap().open_tree("plugins").unwrap();
    let store = PluginStore::new(tree);
    let policy =
        Policy::start(store.clone(), Arc::new(EventBus::default()), Arc::new(Alarms::default()))
            .unwrap();

    // Root: a real dataplane (and IKE driver) in a namespace receives the tables.
    let root = isthmus_testkit::require_root();
    let mut ns = None;
    let mut peers = None;
    let mut running = None;
    if root {
        let n = isthmus_testkit::Netns::new("swap");
        let peer = isthmus_testkit::Netns::new("swapp");
        isthmus_testkit::veth(&n, "wan0", "10.62.9.1/24", &peer, "wan0", "10.62.9.2/24");
        peers = Some(peer);
        let p = policy.clone();
        let started = n.run(move || {
            isthmusd::core::start_planes(
                &p,
                isthmus_tunnels::DriverConfig::default(),
                isthmus_dataplane::Config::new("ist0", "10.62.9.1".parse().unwrap()),
                isthmus_tunnels::EspOptions::default(),
            )
        });
        running = Some(started.expect("starting the dataplane"));
        ns = Some(n);
    }
    let trusted = trusted_keys(&cfg);
    policy.refresh(&cfg, &trusted, &[]);
    // The bundled defaults compile in the background after the first refresh: not measured.
    while policy.loading() {
        std::thread::sleep(Duration::from_millis(10));
    }

    // Two versions, activated in turn, so each refresh loads a new plugin.
    let digests: Vec<String> = ["1.0.0", "1.0.1"]
        .iter()
        .map(|v| {
            let bytes =
                isthmus_testkit::plugins::package("tenant-sg", v, Hook::SecurityGroup, &wasm, &sk);
            store.put(&verify(&bytes, &trusted).unwrap()).unwrap()
        })
        .collect();
    let mut swaps = Vec::new();
    let mut compiles = Vec::new();
    for round in 0..7 {
        let t0 = Instant::now();
        store.activate("tenant-sg", &digests[round % 2]).unwrap();
        policy.reselect(&cfg, &trusted);
        let t1 = Instant::now();
        let h = policy.hooks().into_iter().find(|h| h.hook == "security-group").unwrap();
        assert!(h.plugin.starts_with("tenant-sg@"), "{h:?}");
        assert_eq!(h.entries, Some(10_000 + 2), "{h:?}");
        assert!(h.last_error.is_none(), "{h:?}");
        let compile = policy.compile_time(Hook::SecurityGroup).unwrap_or_default();
        if round > 0 {
            swaps.push(t1.duration_since(t0).saturating_sub(compile));
            compiles.push(compile);
        }
    }
    if let Some(r) = &running {
        assert!(r.1.counters().sg_generation > 0, "the dataplane has the table");
    }
    let median = |v: &mut Vec<Duration>| {
        v.sort();
        v[v.len() / 2].as_secs_f64() * 1e3
    };
    println!("BENCH daemon_plugin_swap_ms {:.1} ms", median(&mut swaps));
    println!("  component compilation (excluded): {:.1} ms", median(&mut compiles));
    println!(
        "  {}",
        if root {
            "published into a running dataplane"
        } else {
            "not root: published into the supervisor only (no dataplane)"
        }
    );
    if let Some((t, _)) = running.take() {
        t.shutdown();
    }
    drop(ns);
    drop(peers);
    let _ = std::fs::remove_dir_all(&dir);
}

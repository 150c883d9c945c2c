//! Hot swap: an uploaded, verified security-group plugin to a new live table for 10,000 rules.
//! Measured: signature verification, linking (`InstancePre`), installation, the plugin's
//! `compile` call, validation, building the native classifier and publishing. Compiling the
//! component (Cranelift) is excluded and printed on its own line: the gateway does it once per
//! upload, before the swap.

mod support;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use isthmus_policy::{
    Hook, HostConfig, Limits, Manifest, Package, PluginHost, PolicyTables, Supervisor,
    generate_key, sign, verify,
};
use support::{Rng, groups};

fn main() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(isthmus_policy::PLUGINS_DIR)
        .join("security_group.wasm");
    let Ok(wasm) = std::fs::read(&path) else {
        eprintln!("{} is missing: run `make plugins` first", path.display());
        std::process::exit(1);
    };
    let (sk, pk) = generate_key().unwrap();
    let manifest = Manifest {
        name: "security-group".into(),
        version: "1.0.0".into(),
        hook: Hook::SecurityGroup,
        capabilities: vec![],
        description: String::new(),
    };
    let bytes = sign(Package::unsigned(manifest, wasm).unwrap(), &sk).unwrap().to_bytes();
    let host = PluginHost::new(HostConfig::default()).unwrap();
    let sup = Supervisor::new(Arc::new(PolicyTables::new()), Limits::default());
    let mut rng = Rng(0x5a_0000_0001);
    let attachments = vec!["lan0".to_string()];

    let mut swaps = Vec::new();
    let mut compiles = Vec::new();
    let mut calls = Vec::new();
    for round in 0..7 {
        let rules = groups(&mut rng, 10_000);
        let t0 = Instant::now();
        let verified = verify(&bytes, std::slice::from_ref(&pk)).unwrap();
        let plugin = host.load(&verified, "", None).unwrap();
        let compile = plugin.compile_time();
        sup.install(plugin);
        let t1 = Instant::now();
        let generation = sup.compile_sg(&rules, &[], &attachments, t1).unwrap();
        let t2 = Instant::now();
        assert_eq!(sup.tables().sg().generation(), generation);
        if round > 0 {
            swaps.push(t2.duration_since(t0).saturating_sub(compile));
            compiles.push(compile);
            calls.push(t2.duration_since(t1));
        }
    }
    let median = |v: &mut Vec<Duration>| {
        v.sort();
        v[v.len() / 2].as_secs_f64() * 1e3
    };
    println!("BENCH plugin_swap_ms {:.1} ms", median(&mut swaps));
    println!("  component compilation (excluded): {:.1} ms", median(&mut compiles));
    println!(
        "  of the swap, compile call + validation + classifier build + publish: {:.1} ms",
        median(&mut calls)
    );
}

//! The CLI stays light (issue 18): it signs plugins through `isthmus-package` and never links the
//! plugin host's wasmtime, which would triple its build time. Checked on the resolved dependency
//! graph that `cargo metadata` reports for this workspace.

use std::collections::{BTreeSet, HashMap};
use std::process::Command;

use serde_json::Value;

#[test]
fn the_cli_links_no_wasmtime() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let manifest = concat!(env!("CARGO_MANIFEST_DIR"), "/../../Cargo.toml");
    let out = Command::new(cargo)
        .args(["metadata", "--format-version", "1", "--locked", "--manifest-path", manifest])
        .output()
        .expect("run cargo metadata");
    assert!(out.status.success(), "cargo metadata: {}", String::from_utf8_lossy(&out.stderr));
    let meta: Value = serde_json::from_slice(&out.stdout).unwrap();

    // Package id -> (name, ids of its normal and build dependencies on this host).
    let names: HashMap<&str, &str> = meta["packages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["id"].as_str().unwrap(), p["name"].as_str().unwrap()))
        .collect();
    let mut deps: HashMap<&str, Vec<&str>> = HashMap::new();
    for node in meta["resolve"]["nodes"].as_array().unwrap() {
        let linked = node["deps"].as_array().unwrap().iter().filter(|d| {
            d["dep_kinds"].as_array().unwrap().iter().any(|k| k["kind"].as_str() != Some("dev"))
        });
        deps.insert(
            node["id"].as_str().unwrap(),
            linked.map(|d| d["pkg"].as_str().unwrap()).collect(),
        );
    }

    let root = names.iter().find(|(_, n)| **n == "isthmus").map(|(id, _)| *id).unwrap();
    let mut seen = BTreeSet::new();
    let mut todo = vec![root];
    while let Some(id) = todo.pop() {
        if seen.insert(names[id]) {
            todo.extend(deps.get(id).into_iter().flatten());
        }
    }
    assert!(seen.contains("isthmus-package"), "the CLI signs through isthmus-package: {seen:?}");
    for heavy in ["wasmtime", "cranelift-codegen", "isthmus-policy"] {
        assert!(!seen.contains(heavy), "the CLI links {heavy}; it should only sign plugins");
    }
}

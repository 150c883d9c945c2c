//! The upload path end to end with real components: sign, verify, store by digest, activate,
//! load and install, then roll back to the previous version after a bad upgrade.

mod common;

use std::sync::Arc;
use std::time::Instant;

use common::*;
use isthmus_policy::{
    Capability, Hook, Limits, Manifest, Package, PluginStore, PolicyTables, Supervisor,
    SystemClock, sign, verify,
};

fn packaged(version: &str, file: &str, caps: Vec<Capability>, k: &Keys) -> Vec<u8> {
    let m = Manifest {
        name: "edge-sg".into(),
        version: version.into(),
        hook: Hook::SecurityGroup,
        capabilities: caps,
        description: "security groups for the edge".into(),
    };
    sign(Package::unsigned(m, wasm(file)).unwrap(), &k.secret).unwrap().to_bytes()
}

#[test]
fn upload_activate_and_roll_back_real_plugins() {
    let k = keys();
    let trusted = [k.public.clone()];
    let dir = tempfile::tempdir().unwrap();
    let db = sled::open(dir.path()).unwrap();
    let store = PluginStore::new(db.open_tree("plugins").unwrap());
    let host = host();
    let sup = Supervisor::new(Arc::new(PolicyTables::new()), Limits::default());
    let clock: Arc<dyn isthmus_policy::Clock> = Arc::new(SystemClock::default());

    // Upload 1.0 (the default plugin) and 2.0 (the punt-capable example), activate each.
    let mut digests = Vec::new();
    for (version, file, caps) in
        [("1.0", "security_group", vec![]), ("2.0", "time_of_day", vec![Capability::Clock])]
    {
        let v = verify(&packaged(version, file, caps, &k), &trusted).unwrap();
        let d = store.put(&v).unwrap();
        store.activate("edge-sg", &d).unwrap();
        digests.push(d);
    }
    let active = store.load("edge-sg", &trusted).unwrap().unwrap();
    assert_eq!(active.manifest().version, "2.0");
    let p = host.load(&active, "", Some(clock.clone())).unwrap();
    assert!(p.has_punt());
    sup.install(p);
    let st = sup.status(Hook::SecurityGroup, Instant::now());
    assert_eq!(st.plugin.as_deref(), Some("edge-sg@2.0"));

    // Roll back: 1.0 is active again and has no punt path.
    assert_eq!(store.rollback("edge-sg").unwrap(), digests[0]);
    let active = store.load("edge-sg", &trusted).unwrap().unwrap();
    let p = host.load(&active, "", None).unwrap();
    assert!(!p.has_punt());
    sup.install(p);
    assert_eq!(
        sup.status(Hook::SecurityGroup, Instant::now()).plugin.as_deref(),
        Some("edge-sg@1.0")
    );
    let list = store.list().unwrap();
    assert_eq!(list[0].versions.len(), 2);
    assert_eq!(list[0].active.as_deref(), Some(digests[0].as_str()));
}

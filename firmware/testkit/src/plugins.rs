//! The policy plugins built by `make plugins`, found and signed for tests: one place for what
//! the daemon's and the CLI's plugin tests used to each write again.

use std::path::PathBuf;

use isthmus_policy::{Capability, Hook, Manifest, Package, SecretKey};

/// The path of the built component `file` (e.g. `security_group.wasm`); fails the test, saying
/// how to build it, when it is missing.
pub fn component_path(file: &str) -> PathBuf {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(isthmus_policy::PLUGINS_DIR)
        .join(file);
    assert!(p.exists(), "{} is missing: run `make plugins` first", p.display());
    p
}

/// The bytes of the built component `file` (see [`component_path`]).
pub fn component(file: &str) -> Vec<u8> {
    let p = component_path(file);
    std::fs::read(&p).unwrap_or_else(|e| panic!("reading {}: {e}", p.display()))
}

/// `wasm` packaged as plugin `name` `version` for `hook` (no capabilities) and signed with
/// `key`: the bytes `isthmus plugin sign` writes and the upload takes.
pub fn package(name: &str, version: &str, hook: Hook, wasm: &[u8], key: &SecretKey) -> Vec<u8> {
    package_with(name, version, hook, &[], wasm, key)
}

/// [`package`] with the manifest granting `capabilities` (e.g. `Capability::Clock`).
pub fn package_with(
    name: &str,
    version: &str,
    hook: Hook,
    capabilities: &[Capability],
    wasm: &[u8],
    key: &SecretKey,
) -> Vec<u8> {
    let m = Manifest {
        name: name.into(),
        version: version.into(),
        hook,
        capabilities: capabilities.to_vec(),
        description: String::new(),
    };
    let unsigned = Package::unsigned(m, wasm.to_vec()).expect("a valid manifest");
    isthmus_policy::sign(unsigned, key).expect("signing").to_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_package_verifies_with_its_key_only() {
        let (sk, pk) = isthmus_policy::generate_key().unwrap();
        let (_, other) = isthmus_policy::generate_key().unwrap();
        let bytes = package("p", "1.0.0", Hook::Alarm, b"\0asm not really", &sk);
        let v = isthmus_policy::verify(&bytes, std::slice::from_ref(&pk)).unwrap();
        assert_eq!((v.manifest().name.as_str(), v.manifest().hook), ("p", Hook::Alarm));
        assert!(isthmus_policy::verify(&bytes, &[other]).is_err());
        let bytes = package_with("c", "1", Hook::SecurityGroup, &[Capability::Clock], b"x", &sk);
        let v = isthmus_policy::verify(&bytes, &[pk]).unwrap();
        assert_eq!(v.manifest().capabilities, [Capability::Clock]);
    }
}

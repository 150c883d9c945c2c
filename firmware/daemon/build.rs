//! Embeds the release builds of the default policy plugins (`make plugins`) into `isthmusd`, so
//! an appliance always has them (see `src/policy.rs`). A plugin that was not built is embedded
//! as empty, and the daemon falls back to the native implementation of its semantics.
//! `ISTHMUS_PLUGINS_WASM_DIR` overrides where the builds are looked for.
//!
//! It also sets `ISTHMUS_GIT`, the commit the daemon is built from (the `git` label of
//! `isthmus_build_info`): `ISTHMUS_GIT` from the environment when set (a build from a source
//! tarball), else `git rev-parse --short=12 HEAD`, else `unknown`.

use std::path::PathBuf;

fn main() {
    git_commit();
    println!("cargo:rerun-if-env-changed=ISTHMUS_PLUGINS_WASM_DIR");
    let dir = match std::env::var_os("ISTHMUS_PLUGINS_WASM_DIR") {
        Some(d) => PathBuf::from(d),
        None => {
            let manifest = std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets it");
            PathBuf::from(manifest).join("../../plugins/target/wasm32-wasip2/release")
        }
    };
    let mut out = String::new();
    for (konst, file) in
        [("SPD", "spd_selectors"), ("SECURITY_GROUP", "security_group"), ("ALARM", "alarm_notify")]
    {
        let p = dir.join(format!("{file}.wasm"));
        println!("cargo:rerun-if-changed={}", p.display());
        match p.canonicalize() {
            Ok(abs) => out.push_str(&format!(
                "/// The release build of `{file}`.\npub const {konst}: &[u8] = include_bytes!({:?});\n",
                abs.display().to_string()
            )),
            Err(_) => out.push_str(&format!(
                "/// `{file}` was not built.\npub const {konst}: &[u8] = &[];\n"
            )),
        }
    }
    let target = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets it"))
        .join("bundled_plugins.rs");
    std::fs::write(target, out).expect("writing bundled_plugins.rs");
}

fn git_commit() {
    println!("cargo:rerun-if-env-changed=ISTHMUS_GIT");
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
    };
    // Rebuilt when HEAD moves (a commit changes the branch's ref; a checkout changes HEAD).
    for (dir, file) in [("--git-dir", "HEAD"), ("--git-common-dir", "packed-refs")] {
        if let Some(d) = git(&["rev-parse", dir]) {
            println!("cargo:rerun-if-changed={d}/{file}");
        }
    }
    if let (Some(d), Some(r)) =
        (git(&["rev-parse", "--git-common-dir"]), git(&["symbolic-ref", "-q", "HEAD"]))
    {
        println!("cargo:rerun-if-changed={d}/{r}");
    }
    let commit = std::env::var("ISTHMUS_GIT")
        .ok()
        .filter(|s| !s.is_empty())
        .or_else(|| git(&["rev-parse", "--short=12", "HEAD"]))
        .unwrap_or_else(|| "unknown".to_owned());
    println!("cargo:rustc-env=ISTHMUS_GIT={commit}");
}

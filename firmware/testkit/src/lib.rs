//! Test support for root-only tests: network namespaces that delete themselves, veth links between
//! them, and commands or closures run inside them; [`site`] runs a real gateway (`isthmusd`
//! with a LAN host) in them, [`strongswan`] an independent IKEv2 peer; [`plugins`] finds and
//! signs the built policy plugins; [`docs`] reads the complete configurations of `docs/`;
//! [`config`] builds the gateway configurations tests apply.
//!
//! Tests that need root call [`require_root`] first and return early (saying so) when not root;
//! `make test` runs as root in CI, so they always run there. Traffic stays inside the namespaces.
#![forbid(unsafe_code)]

pub mod config;
pub mod docs;
pub mod plugins;
pub mod site;
pub mod strongswan;

use std::fs::File;
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

/// True when the test may create namespaces. Prints why a test is skipped otherwise.
pub fn require_root() -> bool {
    let root = nix::unistd::geteuid().is_root();
    if !root {
        eprintln!(
            "skipped: this test needs root (network namespaces); `make test` as root runs it"
        );
    }
    root
}

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A network namespace under `/run/netns`, deleted (with everything in it) on drop.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates `ist-<tag>-<pid>-<n>` (kept short: interface names in it are the caller's) with
    /// loopback up.
    pub fn new(tag: &str) -> Netns {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let name = format!("ist-{tag}-{}-{n}", std::process::id());
        run_ok(Command::new("ip").args(["netns", "add", &name]));
        let ns = Netns { name };
        ns.sh("ip link set lo up");
        ns
    }

    /// The namespace's name, as `ip netns` knows it.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A command that runs inside the namespace.
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, program]);
        c
    }

    /// Writes `/etc/netns/NAME/FILE`, which `ip netns exec` mounts over `/etc/FILE` for the
    /// processes this namespace starts (`hosts` gives them their own names). Rewritten in place,
    /// so a process that runs already sees the new contents. Removed with the namespace.
    pub fn etc_file(&self, file: &str, contents: &str) {
        std::fs::create_dir_all(self.etc_dir()).expect("create /etc/netns/NAME");
        let path = self.etc_dir().join(file);
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .open(&path)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        std::io::Write::write_all(&mut f, contents.as_bytes()).expect("write the file");
    }

    fn etc_dir(&self) -> std::path::PathBuf {
        std::path::Path::new("/etc/netns").join(&self.name)
    }

    /// Runs a shell line inside the namespace; panics with its output if it fails.
    pub fn sh(&self, line: &str) -> String {
        let out = run_ok(self.command("sh").args(["-c", line]));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs a shell line inside the namespace and returns its output, whatever its status.
    pub fn sh_output(&self, line: &str) -> Output {
        self.command("sh").args(["-c", line]).output().expect("spawn ip netns exec")
    }

    /// Starts a long-running shell line inside the namespace; the caller owns the child.
    pub fn spawn(&self, line: &str) -> Child {
        self.command("sh")
            .args(["-c", &format!("exec {line}")])
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn ip netns exec")
    }

    /// Runs `f` on a new thread that has entered this namespace: sockets, TUN devices and netlink
    /// handles it opens live there.
    pub fn run<R: Send + 'static>(&self, f: impl FnOnce() -> R + Send + 'static) -> R {
        let path = format!("/run/netns/{}", self.name);
        std::thread::spawn(move || {
            enter(&path);
            f()
        })
        .join()
        .expect("thread inside namespace panicked")
    }

    /// Like [`Netns::run`] but returns the running thread's handle.
    pub fn spawn_thread<R: Send + 'static>(
        &self,
        f: impl FnOnce() -> R + Send + 'static,
    ) -> std::thread::JoinHandle<R> {
        let path = format!("/run/netns/{}", self.name);
        std::thread::spawn(move || {
            enter(&path);
            f()
        })
    }
}

/// Moves the calling thread into the namespace at `path`.
pub fn enter(path: &str) {
    let f = File::open(path).unwrap_or_else(|e| panic!("open {path}: {e}"));
    nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET)
        .unwrap_or_else(|e| panic!("setns {path}: {e}"));
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Processes started with `spawn` must have been ended by their owner; the namespace and
        // its interfaces go with it.
        let _ = Command::new("ip").args(["netns", "del", &self.name]).status();
        let _ = std::fs::remove_dir_all(self.etc_dir());
    }
}

/// Joins two namespaces with a veth pair and gives each end an address (CIDR form).
pub fn veth(a: &Netns, a_if: &str, a_addr: &str, b: &Netns, b_if: &str, b_addr: &str) {
    run_ok(Command::new("ip").args([
        "link", "add", a_if, "netns", &a.name, "type", "veth", "peer", "name", b_if, "netns",
        &b.name,
    ]));
    a.sh(&format!("ip addr add {a_addr} dev {a_if} && ip link set {a_if} up"));
    b.sh(&format!("ip addr add {b_addr} dev {b_if} && ip link set {b_if} up"));
}

/// Joins two namespaces with a veth pair, both ends up and without addresses.
pub fn veth_bare(a: &Netns, a_if: &str, b: &Netns, b_if: &str) {
    run_ok(Command::new("ip").args([
        "link", "add", a_if, "netns", &a.name, "type", "veth", "peer", "name", b_if, "netns",
        &b.name,
    ]));
    a.sh(&format!("ip link set {a_if} up"));
    b.sh(&format!("ip link set {b_if} up"));
}

/// What `ns` holds of Isthmus, one line each; empty when nothing. Two readings that must agree:
/// `ip`/`nft` by the marks of `isthmus_net`'s ownership rules (the `inet isthmus` table, routes
/// and rules of protocol 181 in every table and family, links with the alias `isthmus` such as
/// the TUN device), and the reconciler's own plan to an empty desired state, which also sees
/// addresses marked with `IFA_PROTO` 181 (the `ip` of Debian 12 does not show that mark).
pub fn isthmus_leftovers(ns: &Netns) -> Vec<String> {
    let mut found = Vec::new();
    let mut lines = |what: &str, cmd: &str, keep: &dyn Fn(&str) -> bool| {
        let out = ns.sh(cmd);
        found.extend(out.lines().filter(|l| keep(l)).map(|l| format!("{what}: {}", l.trim())));
    };
    lines("nftables", "nft list tables", &|l| l.trim() == "table inet isthmus");
    for fam in ["-4", "-6"] {
        let proto = isthmus_net::RTPROT_ISTHMUS;
        lines("route", &format!("ip {fam} route show table all proto {proto}"), &|l| {
            !l.trim().is_empty()
        });
        // `ip rule show` does not filter by protocol here; `-d` prints it.
        let mark = format!("proto {proto}");
        lines("rule", &format!("ip {fam} -d rule show"), &|l| l.contains(&mark));
    }
    let alias = format!("alias {}", isthmus_net::LINK_ALIAS);
    lines("link", "ip -o -d link show", &|l| l.contains(&alias));
    let plan = ns.run(|| {
        let mut rec = isthmus_net::Reconciler::new().map_err(|e| e.to_string())?;
        rec.plan(&isthmus_net::DesiredState::default()).map_err(|e| e.to_string())
    });
    match plan {
        Ok(p) => found.extend(p.changes().iter().map(|c| format!("reconciler would: {c}"))),
        Err(e) => found.push(format!("reconciler: reading the kernel failed: {e}")),
    }
    found
}

/// Panics, listing what is left, unless `ns` holds nothing of Isthmus ([`isthmus_leftovers`]):
/// what a clean stop of `isthmusd` (or removing the package) must leave behind.
pub fn assert_kernel_clean(ns: &Netns) {
    let left = isthmus_leftovers(ns);
    assert!(
        left.is_empty(),
        "namespace {} still holds Isthmus state:\n  {}",
        ns.name(),
        left.join("\n  ")
    );
}

fn run_ok(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_namespaces_ping_over_veth_and_vanish() {
        if !require_root() {
            return;
        }
        let name;
        {
            let a = Netns::new("tk");
            let b = Netns::new("tk");
            name = a.name().to_owned();
            veth(&a, "va", "10.99.0.1/30", &b, "vb", "10.99.0.2/30");
            let out = a.sh_output("ping -c1 -W2 10.99.0.2");
            assert!(out.status.success(), "ping across veth failed");
            // A thread that entered the namespace sees its interfaces.
            let ifs = a.run(|| std::fs::read_to_string("/proc/thread-self/net/dev").unwrap());
            assert!(ifs.contains("va:"), "thread did not enter the namespace: {ifs}");
        }
        let list = Command::new("ip").args(["netns", "list"]).output().unwrap();
        assert!(!String::from_utf8_lossy(&list.stdout).contains(&name));
    }

    #[test]
    fn leftovers_name_what_carries_isthmus_marks_and_nothing_else() {
        if !require_root() {
            return;
        }
        let a = Netns::new("tk");
        let b = Netns::new("tk");
        veth(&a, "va", "10.99.1.1/30", &b, "vb", "10.99.1.2/30");
        a.sh("ip route add 10.99.7.0/24 via 10.99.1.2");
        a.sh("ip rule add from 10.99.8.0/24 lookup 77");
        assert_kernel_clean(&a);
        a.sh("ip route add 10.99.9.0/24 via 10.99.1.2 proto 181");
        a.sh("ip rule add from 10.99.9.0/24 lookup 77 protocol 181");
        a.sh("nft add table inet isthmus");
        let left = isthmus_leftovers(&a);
        for want in ["route: 10.99.9.0/24", "from 10.99.9.0/24", "table inet isthmus"] {
            assert!(left.iter().any(|l| l.contains(want)), "{want} not in {left:?}");
        }
        assert!(
            !left.iter().any(|l| l.contains("10.99.7.0") || l.contains("10.99.8.0")),
            "{left:?}"
        );
        a.sh("ip route del 10.99.9.0/24 proto 181; ip rule del from 10.99.9.0/24 lookup 77");
        a.sh("nft delete table inet isthmus");
        assert_kernel_clean(&a);
    }
}

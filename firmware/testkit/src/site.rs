//! A gateway site for end-to-end tests: a gateway namespace running a real `isthmusd`, a host
//! namespace on its LAN, and the operator CLI run inside the gateway's namespace.
//!
//! ```text
//!  host ns                 gateway ns (isthmusd, API on 127.0.0.1:PORT)
//!  eth0 <-- veth --> lan0                  wan0 <-- veth (or a NAT namespace) --> peer's wan0
//! ```
//!
//! The daemon owns the gateway's addresses (it adds the LAN and WAN addresses from its
//! configuration), so the site leaves `lan0` and the WAN links without addresses. The daemon is
//! ended on drop (TERM, then KILL after 5 s), even when the test panics; its data folder is
//! removed unless `ISTHMUS_KEEP_LOGS` is set.

use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::{Netns, veth};

/// The two binaries a site runs: the daemon and the CLI.
#[derive(Clone, Debug)]
pub struct Binaries {
    /// `isthmusd`.
    pub isthmusd: PathBuf,
    /// `isthmus`.
    pub isthmus: PathBuf,
}

impl Binaries {
    /// The binaries next to the CLI a test was given (`env!("CARGO_BIN_EXE_isthmus")`).
    /// `isthmusd` belongs to another package, so it is built once per test process to make sure
    /// it is current.
    pub fn next_to_cli(cli: &str) -> Binaries {
        static BUILT: OnceLock<()> = OnceLock::new();
        BUILT.get_or_init(|| {
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            let st = Command::new(cargo)
                .args(["build", "-q", "-p", "isthmusd"])
                .status()
                .expect("spawn cargo build");
            assert!(st.success(), "building isthmusd failed");
        });
        let isthmus = PathBuf::from(cli);
        Binaries { isthmusd: isthmus.with_file_name("isthmusd"), isthmus }
    }
}

/// What makes one site different from another.
#[derive(Clone, Debug)]
pub struct SiteSpec {
    /// Short tag for the namespaces' names (`<tag>g`, `<tag>h`) and the data folder.
    pub tag: String,
    /// The gateway's LAN address in CIDR form; the host's default route points to it.
    pub lan_gw: String,
    /// The host's address in CIDR form.
    pub lan_host: String,
    /// The management API's port on the gateway's loopback.
    pub api_port: u16,
    /// An admin token the configuration accepts (its hash is in `api_token`).
    pub token: String,
}

/// A gateway namespace running `isthmusd` with a host behind it.
#[derive(Debug)]
pub struct Site {
    /// The gateway's namespace (`lan0` towards the host).
    pub gw: Netns,
    /// The LAN host's namespace (`eth0`, default route via the gateway).
    pub host: Netns,
    /// Data folder: configuration, the daemon's log and data, the CLI's folder.
    pub dir: PathBuf,
    spec: SiteSpec,
    bins: Binaries,
    daemon: Option<Child>,
}

impl Site {
    /// Creates the two namespaces and the LAN link; the daemon is not started yet.
    pub fn new(spec: SiteSpec, bins: &Binaries) -> Site {
        let gw = Netns::new(&format!("{}g", spec.tag));
        let host = Netns::new(&format!("{}h", spec.tag));
        veth(&host, "eth0", &spec.lan_host, &gw, "lan0", &spec.lan_gw);
        let gw_ip = spec.lan_gw.split('/').next().unwrap_or_default();
        host.sh(&format!("ip route add default via {gw_ip}"));
        // The daemon adds the LAN address itself; take the test's away so it owns it.
        gw.sh(&format!("ip addr del {} dev lan0", spec.lan_gw));
        // Unique per site and process: the namespace name carries the pid and a counter.
        let dir = std::env::temp_dir().join(format!("isthmus-{}", gw.name()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create the site's folder");
        Site { gw, host, dir, spec, bins: bins.clone(), daemon: None }
    }

    /// The site's LAN host address (without prefix length).
    pub fn host_ip(&self) -> &str {
        self.spec.lan_host.split('/').next().unwrap_or_default()
    }

    /// The API endpoint the CLI uses.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.spec.api_port)
    }

    /// Writes `cfg` and starts `isthmusd` on it; waits (20 s at most) until its API listens.
    pub fn start(&mut self, cfg: &str) {
        self.start_with_args(cfg, &[]);
    }

    /// [`Site::start`] with more `isthmusd` options (`--no-tunnels`, ...).
    pub fn start_with_args(&mut self, cfg: &str, args: &[&str]) {
        self.start_with_env(cfg, args, &[]);
    }

    /// [`Site::start_with_args`] with environment variables for `isthmusd` (`NOTIFY_SOCKET`,
    /// ...); like the paths of the command line, values are not quoted for the shell.
    pub fn start_with_env(&mut self, cfg: &str, args: &[&str], env: &[(&str, &str)]) {
        assert!(self.daemon.is_none(), "the site's daemon already runs");
        let file = self.dir.join("gw.toml");
        std::fs::write(&file, cfg).expect("write the configuration");
        let log = self.log_path();
        let mark = std::fs::metadata(&log).map(|m| m.len()).unwrap_or(0) as usize;
        let env: String = env.iter().map(|(k, v)| format!("{k}={v} ")).collect();
        let line = format!(
            "{env}{} --config {} --data-dir {} --api 127.0.0.1:{} {} 2>>{}",
            self.bins.isthmusd.display(),
            file.display(),
            self.dir.join("data").display(),
            self.spec.api_port,
            args.join(" "),
            log.display()
        );
        self.daemon = Some(self.gw.spawn(&format!("sh -c '{line}'")));
        let t0 = Instant::now();
        while !self.log().get(mark..).unwrap_or_default().contains("management API listening") {
            if let Some(Ok(Some(st))) = self.daemon.as_mut().map(|c| c.try_wait()) {
                panic!("isthmusd exited ({st}): {}", self.log());
            }
            assert!(
                t0.elapsed() < Duration::from_secs(20),
                "isthmusd did not start: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn log_path(&self) -> PathBuf {
        self.dir.join("isthmusd.log")
    }

    /// The daemon's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// The CLI as a command inside the gateway's namespace, with endpoint and token set.
    pub fn cli_command(&self, args: &[&str]) -> Command {
        let mut c = self.gw.command(self.bins.isthmus.to_str().expect("UTF-8 path"));
        c.args(args)
            .env("ISTHMUS_ENDPOINT", self.endpoint())
            .env("ISTHMUS_TOKEN", &self.spec.token)
            .env("ISTHMUS_CONFIG_DIR", self.dir.join("cli"));
        c
    }

    /// Runs the CLI inside the gateway's namespace.
    pub fn cli(&self, args: &[&str]) -> Output {
        self.cli_command(args).output().expect("spawn isthmus")
    }

    /// Runs the CLI; returns whether it succeeded and its stdout followed by its stderr.
    pub fn cli_text(&self, args: &[&str]) -> (bool, String) {
        let out = self.cli(args);
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        (out.status.success(), text)
    }

    /// Runs `isthmus ARGS`, prints it as an operator would see it, and returns its output;
    /// panics (with the daemon's log) when it fails.
    pub fn show(&self, args: &[&str]) -> String {
        let (ok, out) = self.cli_text(args);
        println!("$ isthmus {}\n{out}", args.join(" "));
        assert!(ok, "isthmus {args:?} failed: {out}\n{}", self.log());
        out
    }

    /// Runs `isthmus --json ARGS` and parses its output.
    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        let out = self.cli(&all);
        assert!(
            out.status.success(),
            "isthmus {all:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!("isthmus {all:?} is not JSON ({e}): {}", String::from_utf8_lossy(&out.stdout))
        })
    }

    /// The daemon's pid (the `sh -c` the namespace runs has it as its only child).
    pub fn daemon_pid(&self) -> Option<u32> {
        self.daemon.as_ref().map(shell_child)
    }

    /// Sends a signal (`-STOP`, `-CONT`, `-TERM`, ...) to the daemon.
    pub fn signal(&self, sig: &str) {
        let pid = self.daemon_pid().expect("the daemon runs");
        let st = Command::new("kill").args([sig, &pid.to_string()]).status().expect("spawn kill");
        assert!(st.success(), "kill {sig} {pid} failed");
    }

    /// Stops the daemon (TERM, KILL after 5 s) and waits for it.
    pub fn stop(&mut self) {
        let Some(mut c) = self.daemon.take() else { return };
        let pid = shell_child(&c).to_string();
        let quiet = |sig: &str| {
            let _ = Command::new("kill").args([sig, &pid]).stderr(Stdio::null()).status();
        };
        // A stopped daemon would not act on TERM.
        quiet("-CONT");
        quiet("-TERM");
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(5) {
            if let Ok(Some(_)) = c.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        quiet("-KILL");
        let _ = c.kill();
        let _ = c.wait();
    }

    /// The data folder (configuration files a test writes can go there).
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// `isthmus sa list` for `tunnel`, once each of its CHILD SAs has counted packets both ways
    /// (the monitor samples every second), checked against `tunnel show`: the same SPIs and
    /// algorithms, and rekey countdowns within the lifetimes, in the table and in `--json`.
    /// Returns the tunnel's IKE SA as `--json` gives it.
    pub fn sa_list_checked(&self, tunnel: &str) -> serde_json::Value {
        let entry = || {
            let all = self.json(&["sa", "list"]);
            all.as_array().and_then(|v| v.iter().find(|s| s["tunnel"] == tunnel)).cloned()
        };
        let counted = |sa: &serde_json::Value| {
            let c = sa["children"].as_array().cloned().unwrap_or_default();
            let moved = |k: &str| c.iter().all(|c| c["counters"][k].as_u64() > Some(0));
            !c.is_empty() && moved("packets_in") && moved("packets_out") && moved("bytes_in")
        };
        wait_for(
            &format!("`sa list` to count packets both ways on every CHILD SA of {tunnel}"),
            Duration::from_secs(10),
            || entry().is_some_and(|s| counted(&s)),
            || format!("{:#?}\n{}", entry(), self.log()),
        );
        let sa = entry().expect("listed");
        let table = self.show(&["sa", "list"]);
        let show = self.show(&["tunnel", "show", tunnel]);
        let text = |k: &str| sa[k].as_str().unwrap_or_default().to_owned();
        let (version, proposal) = (sa["ike_version"].as_u64().unwrap_or(0), text("proposal"));
        assert!(show.contains(&format!("ike        IKEv{version} {proposal}")), "{sa:#}\n{show}");
        let (i, r) = if sa["initiator"] == true { ("*", "") } else { ("", "*") };
        let ike_row = table.lines().find(|l| l.starts_with(&format!("{tunnel} "))).unwrap_or("");
        for want in [
            format!("IKEv{version}"),
            text("peer"),
            format!("{}_i{i} {}_r{r}", text("spi_i"), text("spi_r")),
            proposal,
        ] {
            assert!(ike_row.contains(&want), "no {want} in the IKE SA's row:\n{table}");
        }
        let secs = |v: &serde_json::Value, k: &str| v[k].as_u64().unwrap_or(0);
        let soon = |v: &serde_json::Value| {
            secs(v, "rekey_in_secs") > 0 && secs(v, "rekey_in_secs") <= secs(v, "expire_in_secs")
        };
        assert!(soon(&sa), "IKE SA rekey countdown: {sa:#}");
        for c in sa["children"].as_array().into_iter().flatten() {
            let spis = format!(
                "in {} out {}",
                c["spi_in"].as_str().unwrap_or("?"),
                c["spi_out"].as_str().unwrap_or("?")
            );
            assert!(
                show.contains(&format!("spi {spis}, {}", c["proposal"].as_str().unwrap_or("?"))),
                "{c:#}\n{show}"
            );
            let row = table
                .lines()
                .find(|l| l.contains(&spis))
                .unwrap_or_else(|| panic!("no CHILD SA row with {spis}:\n{table}"));
            assert!(
                row.starts_with(&format!("  {} ", c["name"].as_str().unwrap_or("?"))),
                "{table}"
            );
            assert!(soon(c), "CHILD SA rekey countdown: {c:#}");
            // The countdown is printed as a duration (`52m10s`), and the counters as JSON has them.
            let cells: Vec<&str> =
                row.split("  ").map(str::trim).filter(|c| !c.is_empty()).collect();
            assert!(cells.len() >= 4, "{row}");
            let n = cells.len();
            assert!(
                cells[n - 5].ends_with('s') && cells[n - 5].contains('m'),
                "rekey countdown: {row}"
            );
            assert!(cells[n - 4].parse::<u64>().is_ok_and(|b| b > 0), "bytes in: {row}");
            assert!(cells[n - 2].parse::<u64>().is_ok_and(|p| p > 0), "packets in: {row}");
        }
        sa
    }
}

/// The first child of the `sh -c` that `Netns::spawn` runs (the daemon), else the shell.
fn shell_child(c: &Child) -> u32 {
    let root = c.id();
    std::fs::read_to_string(format!("/proc/{root}/task/{root}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or(root)
}

impl Drop for Site {
    fn drop(&mut self) {
        self.stop();
        if std::env::var_os("ISTHMUS_KEEP_LOGS").is_none() {
            let _ = std::fs::remove_dir_all(&self.dir);
        } else {
            eprintln!("kept {}", self.dir.display());
        }
    }
}

/// Joins two sites' gateways with a veth pair `wan0` <-> `wan0` without addresses (each daemon
/// adds its configured WAN address).
pub fn link_wans(a: &Site, b: &Site) {
    crate::veth_bare(&a.gw, "wan0", &b.gw, "wan0");
}

/// A customer gateway beside a site, for a peer such as charon: its own namespace `gw` with
/// `wan` linked to the site's `wan0` (address `wan_addr`, forwarding on), and a LAN host
/// namespace `host` behind `lan` (`lan_gw` on the gateway, `lan_host` on the host, which
/// routes through it). The prefixes are CIDR strings.
pub struct Peer {
    /// The peer gateway's namespace.
    pub gw: Netns,
    /// The host on the peer's LAN.
    pub host: Netns,
}

impl Peer {
    /// Creates the namespaces `{tag}s` and `{tag}sh` and their links.
    pub fn beside(site: &Site, tag: &str, wan_addr: &str, lan_gw: &str, lan_host: &str) -> Peer {
        let gw = Netns::new(&format!("{tag}s"));
        let host = Netns::new(&format!("{tag}sh"));
        crate::veth_bare(&site.gw, "wan0", &gw, "wan");
        gw.sh(&format!("ip addr add {wan_addr} dev wan && sysctl -qw net.ipv4.ip_forward=1"));
        veth(&gw, "lan", lan_gw, &host, "eth0", lan_host);
        let via = lan_gw.split('/').next().unwrap_or(lan_gw);
        host.sh(&format!("ip route add default via {via}"));
        Peer { gw, host }
    }
}

/// Waits (polling every 250 ms) until `f` holds; panics after `timeout` with `what` and `ctx()`.
pub fn wait_for(
    what: &str,
    timeout: Duration,
    mut f: impl FnMut() -> bool,
    ctx: impl Fn() -> String,
) {
    let t0 = Instant::now();
    while !f() {
        assert!(t0.elapsed() < timeout, "timed out waiting for {what}\n{}", ctx());
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// SHA-256 of a token in hex, the form `api_token.token_hash = "sha256:..."` takes.
pub fn token_hash(token: &str) -> String {
    use sha2::Digest;
    let d = sha2::Sha256::digest(token.as_bytes());
    d.iter().map(|b| format!("{b:02x}")).collect()
}

/// Both daemons' logs, labelled, for a failing assertion's message.
pub fn logs(sites: &[&Site]) -> String {
    sites.iter().map(|s| format!("--- {} log\n{}\n", s.spec.tag, s.log())).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_hash_is_sha256_hex() {
        // FIPS 180-2 appendix B.1: SHA-256("abc").
        assert_eq!(
            token_hash("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}

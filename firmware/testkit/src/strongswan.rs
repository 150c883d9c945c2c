//! strongSwan (charon with `kernel-libipsec`) as an independent IKEv2/ESP peer inside a network
//! namespace, for interoperability tests.
//!
//! Each [`Strongswan`] is one `/usr/lib/ipsec/charon` process running inside a [`Netns`], in a
//! private mount namespace whose `/run` is a bind mount of the instance's own folder (charon
//! always writes `/var/run/charon.pid`, so two instances cannot share `/run`). The instance gets
//! a private `strongswan.conf` (the `load` list puts `kernel-libipsec` before `kernel-netlink`:
//! the first IPsec backend loaded wins, and the host kernel has no XFRM ESP), its own vici socket,
//! a log file, and a swanctl configuration generated from [`SwanConn`] values. Everything lives in
//! a temporary folder removed on drop; the charon process is stopped (by its pid) on drop too.
//!
//! `kernel-libipsec` always encapsulates ESP in UDP 4500 (RFC 3948) and installs the remote
//! traffic selectors into routing table 220 through its `ipsec0` TUN device; the gateway needs an
//! address inside its local traffic selector.

use crate::Netns;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// The charon binary Debian's `strongswan-charon` installs.
pub const CHARON: &str = "/usr/lib/ipsec/charon";

/// Plugins loaded, in order: `kernel-libipsec` must precede `kernel-netlink`.
const PLUGINS: &str = "random nonce openssl pem pkcs1 x509 revocation constraints pubkey kdf \
    curve25519 gcm aes sha1 sha2 hmac kernel-libipsec kernel-netlink socket-default vici updown";

/// True when charon and swanctl are installed (tests skip with a message otherwise).
pub fn available() -> bool {
    let ok = Path::new(CHARON).exists() && Path::new("/usr/sbin/swanctl").exists();
    if !ok {
        eprintln!(
            "skipped: strongSwan (charon, swanctl) is not installed; run scripts/bootstrap.sh"
        );
    }
    ok
}

/// What a CHILD SA does when the IKE daemon loads it (swanctl `start_action`), and after a DPD
/// timeout (`dpd_action`) or a close by the peer (`close_action`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Do nothing (wait for the peer).
    None,
    /// Install a trap policy: negotiate when traffic matches.
    Trap,
    /// Negotiate at once (for `start_action`), or re-negotiate (`restart` for dpd/close).
    Start,
    /// Tear down and forget (`clear`).
    Clear,
}

impl Action {
    fn start_str(self) -> &'static str {
        match self {
            Action::None | Action::Clear => "none",
            Action::Trap => "trap",
            Action::Start => "start",
        }
    }

    fn after_str(self) -> &'static str {
        match self {
            Action::None => "none",
            Action::Trap => "trap",
            Action::Start => "restart",
            Action::Clear => "clear",
        }
    }
}

/// One swanctl connection with one CHILD SA, as the interop tests need it. Durations are written
/// in seconds; `None` leaves strongSwan's default.
#[derive(Clone)]
pub struct SwanConn {
    /// Connection (IKE SA) name.
    pub name: String,
    /// IKE version: 2, or 1 (Main Mode and Quick Mode).
    pub version: u8,
    /// IKEv1 Aggressive Mode instead of Main Mode.
    pub aggressive: bool,
    /// CHILD SA name (what [`Strongswan::initiate`] takes).
    pub child: String,
    /// Our WAN address (`local_addrs`).
    pub local_addr: String,
    /// The peer's WAN address (`remote_addrs`).
    pub remote_addr: String,
    /// Our IKE identity (`local.id`), e.g. `gw-a.example` or an address.
    pub local_id: String,
    /// The peer's IKE identity (`remote.id`).
    pub remote_id: String,
    /// The pre-shared key (never printed by this type's Debug).
    pub psk: String,
    /// IKE proposals, strongSwan syntax, comma separated (`aes256gcm16-prfsha256-x25519`).
    pub ike_proposals: String,
    /// ESP proposals (`aes256gcm16`, `aes128gcm16-esn-x25519`).
    pub esp_proposals: String,
    /// Local traffic selectors, comma separated prefixes.
    pub local_ts: String,
    /// Remote traffic selectors.
    pub remote_ts: String,
    /// IKE SA rekey time (connection `rekey_time`).
    pub ike_rekey: Option<Duration>,
    /// CHILD SA rekey time (child `rekey_time`).
    pub child_rekey: Option<Duration>,
    /// Liveness check interval (`dpd_delay`); `None` disables DPD.
    pub dpd_delay: Option<Duration>,
    /// `start_action` of the child.
    pub start_action: Action,
    /// `dpd_action` of the child.
    pub dpd_action: Action,
    /// `close_action` of the child.
    pub close_action: Action,
    /// More CHILD SAs of the same connection (same ESP proposals, rekey time and actions).
    pub extra_children: Vec<SwanChild>,
}

/// A further CHILD SA of a [`SwanConn`].
#[derive(Debug, Clone)]
pub struct SwanChild {
    /// CHILD SA name.
    pub name: String,
    /// Local traffic selectors, comma separated.
    pub local_ts: String,
    /// Remote traffic selectors, comma separated.
    pub remote_ts: String,
}

impl std::fmt::Debug for SwanConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SwanConn")
            .field("name", &self.name)
            .field("child", &self.child)
            .field("local_addr", &self.local_addr)
            .field("remote_addr", &self.remote_addr)
            .field("local_id", &self.local_id)
            .field("remote_id", &self.remote_id)
            .field("psk", &"<redacted>")
            .field("ike_proposals", &self.ike_proposals)
            .field("esp_proposals", &self.esp_proposals)
            .field("local_ts", &self.local_ts)
            .field("remote_ts", &self.remote_ts)
            .finish_non_exhaustive()
    }
}

impl SwanConn {
    /// strongSwan's side of interop lab `n` (the addressing of
    /// `firmware/tunnels/tests/strongswan_interop.rs`): WAN 10.40.n.2 to 10.40.n.1, identities
    /// `swan.example` and `isthmus.example`, child `net` from 10.42.n.0/24 to 10.41.n.0/24.
    pub fn interop_lab(n: u8, psk: &str) -> SwanConn {
        let mut c =
            SwanConn::new("to-isthmus", &format!("10.40.{n}.2"), &format!("10.40.{n}.1"), psk);
        c.child = "net".into();
        c.local_id = "swan.example".into();
        c.remote_id = "isthmus.example".into();
        c.local_ts = format!("10.42.{n}.0/24");
        c.remote_ts = format!("10.41.{n}.0/24");
        c
    }

    /// A connection `name` with child `name-child`, AES-256-GCM with X25519 for both, no rekey
    /// overrides, no DPD, `start_action = none`.
    pub fn new(name: &str, local_addr: &str, remote_addr: &str, psk: &str) -> SwanConn {
        SwanConn {
            name: name.to_owned(),
            version: 2,
            aggressive: false,
            child: format!("{name}-child"),
            local_addr: local_addr.to_owned(),
            remote_addr: remote_addr.to_owned(),
            local_id: local_addr.to_owned(),
            remote_id: remote_addr.to_owned(),
            psk: psk.to_owned(),
            ike_proposals: "aes256gcm16-prfsha256-x25519".to_owned(),
            esp_proposals: "aes256gcm16".to_owned(),
            local_ts: "0.0.0.0/0".to_owned(),
            remote_ts: "0.0.0.0/0".to_owned(),
            ike_rekey: None,
            child_rekey: None,
            dpd_delay: None,
            start_action: Action::None,
            dpd_action: Action::Clear,
            close_action: Action::None,
            extra_children: Vec::new(),
        }
    }

    /// The swanctl.conf `connections` entry.
    fn connection(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "  {} {{", self.name);
        let _ = writeln!(s, "    version = {}", self.version);
        if self.aggressive {
            let _ = writeln!(s, "    aggressive = yes");
        }
        let _ = writeln!(s, "    local_addrs = {}", self.local_addr);
        let _ = writeln!(s, "    remote_addrs = {}", self.remote_addr);
        let _ = writeln!(s, "    proposals = {}", self.ike_proposals);
        let _ = writeln!(s, "    mobike = no");
        let _ = writeln!(s, "    unique = replace");
        let _ = writeln!(s, "    reauth_time = 0");
        if let Some(t) = self.ike_rekey {
            let _ = writeln!(s, "    rekey_time = {}s", t.as_secs());
        }
        if let Some(t) = self.dpd_delay {
            let _ = writeln!(s, "    dpd_delay = {}s", t.as_secs());
        }
        // Quoted: `#` (a key ID, `@#0a1b`) would start a comment.
        let _ =
            writeln!(s, "    local {{\n      auth = psk\n      id = \"{}\"\n    }}", self.local_id);
        let _ = writeln!(
            s,
            "    remote {{\n      auth = psk\n      id = \"{}\"\n    }}",
            self.remote_id
        );
        let _ = writeln!(s, "    children {{");
        let first = SwanChild {
            name: self.child.clone(),
            local_ts: self.local_ts.clone(),
            remote_ts: self.remote_ts.clone(),
        };
        for c in std::iter::once(&first).chain(&self.extra_children) {
            let _ = writeln!(s, "      {} {{", c.name);
            let _ = writeln!(s, "        local_ts = {}", c.local_ts);
            let _ = writeln!(s, "        remote_ts = {}", c.remote_ts);
            let _ = writeln!(s, "        esp_proposals = {}", self.esp_proposals);
            if let Some(t) = self.child_rekey {
                let _ = writeln!(s, "        rekey_time = {}s", t.as_secs());
            }
            let _ = writeln!(s, "        start_action = {}", self.start_action.start_str());
            let _ = writeln!(s, "        dpd_action = {}", self.dpd_action.after_str());
            let _ = writeln!(s, "        close_action = {}", self.close_action.after_str());
            let _ = writeln!(s, "      }}");
        }
        let _ = writeln!(s, "    }}\n  }}");
        s
    }

    /// The swanctl.conf `secrets` entry.
    fn secret(&self) -> String {
        // Hex form avoids any quoting issue with the key's characters.
        let hex: String = self.psk.bytes().map(|b| format!("{b:02x}")).collect();
        format!(
            "  ike-{} {{\n    id-a = \"{}\"\n    id-b = \"{}\"\n    secret = 0x{hex}\n  }}\n",
            self.name, self.local_id, self.remote_id
        )
    }
}

/// The swanctl.conf [`Strongswan::start`] writes for `conns`: their connections, then their
/// secrets (the PSKs in hex).
pub fn swanctl_conf(conns: &[SwanConn]) -> String {
    let mut sw = String::from("connections {\n");
    for c in conns {
        sw.push_str(&c.connection());
    }
    sw.push_str("}\nsecrets {\n");
    for c in conns {
        sw.push_str(&c.secret());
    }
    sw.push_str("}\n");
    sw
}

/// Retransmission settings for the instance's `strongswan.conf` (charon defaults: 4 s, 1.8, 5).
#[derive(Debug, Clone, Copy)]
pub struct Retransmit {
    /// `retransmit_timeout`, seconds.
    pub timeout: f64,
    /// `retransmit_base`.
    pub base: f64,
    /// `retransmit_tries`.
    pub tries: u32,
}

impl Default for Retransmit {
    /// Fast settings for tests: a dead peer is declared dead about 14 s after the first try.
    fn default() -> Retransmit {
        Retransmit { timeout: 2.0, base: 1.4, tries: 3 }
    }
}

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A running charon inside a namespace; stopped (SIGTERM, then SIGKILL) and its folder removed on
/// drop.
#[derive(Debug)]
pub struct Strongswan {
    dir: PathBuf,
    child: Child,
    netns: String,
}

/// What went wrong talking to strongSwan.
#[derive(Debug)]
pub struct SwanError(pub String);

impl std::fmt::Display for SwanError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for SwanError {}

impl Strongswan {
    /// Starts charon in `ns` with `conns` written to its swanctl.conf (not loaded yet: call
    /// [`Strongswan::load_all`]). Waits until the vici socket answers. Panics if charon does not
    /// come up within 10 s (with its log).
    pub fn start(ns: &Netns, conns: &[SwanConn]) -> Strongswan {
        Strongswan::start_with(ns, conns, Retransmit::default())
    }

    /// Like [`Strongswan::start`] with explicit retransmission settings.
    pub fn start_with(ns: &Netns, conns: &[SwanConn], rt: Retransmit) -> Strongswan {
        Strongswan::start_conf(ns, &swanctl_conf(conns), rt)
    }

    /// Starts charon in `ns` with `swanctl_conf` as its swanctl.conf, as given (a file made
    /// elsewhere, such as `isthmus tunnel peer-config`); not loaded yet.
    pub fn start_conf(ns: &Netns, swanctl_conf: &str, rt: Retransmit) -> Strongswan {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("ist-sw-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        for sub in [
            "run",
            "swanctl/conf.d",
            "swanctl/x509",
            "swanctl/x509ca",
            "swanctl/x509aa",
            "swanctl/x509ocsp",
            "swanctl/x509crl",
            "swanctl/x509ac",
            "swanctl/pubkey",
            "swanctl/private",
            "swanctl/rsa",
            "swanctl/ecdsa",
            "swanctl/bliss",
            "swanctl/pkcs8",
            "swanctl/pkcs12",
        ] {
            std::fs::create_dir_all(dir.join(sub)).expect("create strongSwan folder");
        }
        let d = dir.display();
        // charon refuses Aggressive Mode with a PSK as responder unless told otherwise; the
        // IKEv1 interop tests need it (Isthmus turns it on per tunnel, with a warning).
        let conf = format!(
            "charon {{\n  load_modular = no\n  load = {PLUGINS}\n  install_virtual_ip = no\n  \
             i_dont_care_about_security_and_use_aggressive_mode_psk = yes\n  \
             retransmit_timeout = {}\n  retransmit_base = {}\n  retransmit_tries = {}\n  \
             plugins {{\n    vici {{\n      socket = unix://{d}/charon.vici\n    }}\n  }}\n  \
             filelog {{\n    isthmus {{\n      path = {d}/charon.log\n      time_format = %H:%M:%S\n      \
             default = 1\n      ike = 2\n      cfg = 2\n      knl = 1\n      flush_line = yes\n    }}\n  \
             }}\n  syslog {{\n    daemon {{\n      default = -1\n    }}\n  }}\n}}\n\
             swanctl {{\n  socket = unix://{d}/charon.vici\n}}\n",
            rt.timeout, rt.base, rt.tries
        );
        std::fs::write(dir.join("strongswan.conf"), conf).expect("write strongswan.conf");
        std::fs::write(dir.join("swanctl/swanctl.conf"), swanctl_conf).expect("write swanctl.conf");

        // A private mount namespace whose /run is the instance's own folder; `ip netns exec`,
        // `unshare` and `exec` keep one process, so the child's pid is charon's.
        let line = format!(
            "mount --bind {d}/run /run && exec env STRONGSWAN_CONF={d}/strongswan.conf {CHARON}"
        );
        let mut cmd = ns.command("unshare");
        cmd.args(["--mount", "--propagation", "private", "sh", "-c", &line])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        let child = cmd.spawn().expect("spawn charon");
        let sw = Strongswan { dir, child, netns: ns.name().to_owned() };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if sw.dir.join("charon.vici").exists() && sw.swanctl(&["--stats"]).is_ok() {
                break;
            }
            assert!(Instant::now() < deadline, "charon did not start: {}", sw.log());
            std::thread::sleep(Duration::from_millis(50));
        }
        sw
    }

    /// charon's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The namespace charon runs in.
    pub fn netns(&self) -> &str {
        &self.netns
    }

    /// The instance's folder (configuration, log, vici socket).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Runs swanctl against this instance; Ok(stdout) when it succeeds, Err(stdout+stderr)
    /// otherwise.
    pub fn swanctl(&self, args: &[&str]) -> Result<String, SwanError> {
        let out: Output = Command::new("swanctl")
            .args(args)
            .env("STRONGSWAN_CONF", self.dir.join("strongswan.conf"))
            .env("SWANCTL_DIR", self.dir.join("swanctl"))
            .output()
            .map_err(|e| SwanError(format!("spawn swanctl: {e}")))?;
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        if out.status.success() {
            Ok(stdout)
        } else {
            Err(SwanError(format!(
                "swanctl {} failed: {stdout}{}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            )))
        }
    }

    /// `swanctl --load-all`: loads connections and secrets (and starts `start_action = start`
    /// children, installs traps).
    pub fn load_all(&self) -> Result<String, SwanError> {
        self.swanctl(&["--load-all"])
    }

    /// Initiates CHILD SA `child` (and its IKE SA if needed); waits for the outcome (at most 30 s).
    pub fn initiate(&self, child: &str) -> Result<String, SwanError> {
        self.swanctl(&["--initiate", "--child", child, "--timeout", "30"])
    }

    /// Terminates the IKE SA of connection `ike` (sends the DELETE).
    pub fn terminate_ike(&self, ike: &str) -> Result<String, SwanError> {
        self.swanctl(&["--terminate", "--ike", ike, "--timeout", "10"])
    }

    /// Rekeys CHILD SA `child`.
    pub fn rekey_child(&self, child: &str) -> Result<String, SwanError> {
        self.swanctl(&["--rekey", "--child", child])
    }

    /// Rekeys the IKE SA of connection `ike`.
    pub fn rekey_ike(&self, ike: &str) -> Result<String, SwanError> {
        self.swanctl(&["--rekey", "--ike", ike])
    }

    /// `swanctl --list-sas`: the IKE and CHILD SAs as strongSwan shows them (empty string when
    /// charon cannot be reached, e.g. while stopped).
    pub fn status(&self) -> String {
        self.swanctl(&["--list-sas"]).unwrap_or_default()
    }

    /// True when `status()` shows an ESTABLISHED IKE SA for connection `ike`.
    pub fn ike_established(&self, ike: &str) -> bool {
        self.status()
            .lines()
            .any(|l| l.starts_with(&format!("{ike}: ")) && l.contains("ESTABLISHED"))
    }

    /// The number of INSTALLED CHILD SAs named `child`.
    pub fn children_installed(&self, child: &str) -> usize {
        self.status()
            .lines()
            .filter(|l| {
                l.trim_start().starts_with(&format!("{child}: ")) && l.contains("INSTALLED")
            })
            .count()
    }

    /// Polls `cond` every 100 ms until it holds or `timeout` passes; returns whether it held.
    pub fn wait_until(&self, timeout: Duration, mut cond: impl FnMut(&Strongswan) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if cond(self) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// charon's log so far (IKE and config at level 2).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("charon.log")).unwrap_or_default()
    }

    /// Freezes charon (SIGSTOP): a dead peer, as DPD sees it.
    pub fn freeze(&self) {
        self.signal(nix::sys::signal::Signal::SIGSTOP);
    }

    /// Resumes a frozen charon (SIGCONT).
    pub fn thaw(&self) {
        self.signal(nix::sys::signal::Signal::SIGCONT);
    }

    fn signal(&self, sig: nix::sys::signal::Signal) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, sig);
    }
}

impl Drop for Strongswan {
    fn drop(&mut self) {
        use nix::sys::signal::Signal;
        // A frozen charon would not act on SIGTERM.
        self.signal(Signal::SIGCONT);
        self.signal(Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(3);
        loop {
            match self.child.try_wait() {
                Ok(Some(_)) => break,
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                _ => {
                    self.signal(Signal::SIGKILL);
                    let _ = self.child.wait();
                    break;
                }
            }
        }
        if std::env::var_os("ISTHMUS_KEEP_SWAN").is_none() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{require_root, veth};

    /// gateway + LAN host on each side; strongSwan on both gateways.
    struct Site {
        gw: Netns,
        host: Netns,
    }

    fn site(tag: &str, lan: u8, wan_if: &str) -> Site {
        let gw = Netns::new(tag);
        let host = Netns::new(tag);
        veth(
            &gw,
            &format!("{wan_if}l"),
            &format!("10.{lan}.1.1/24"),
            &host,
            "eth0",
            &format!("10.{lan}.1.2/24"),
        );
        host.sh(&format!("ip route add default via 10.{lan}.1.1"));
        gw.sh("sysctl -qw net.ipv4.ip_forward=1 net.ipv6.conf.all.disable_ipv6=1");
        Site { gw, host }
    }

    #[test]
    fn two_strongswans_carry_lan_to_lan_ping() {
        if !require_root() || !available() {
            return;
        }
        let a = site("swa", 41, "wa");
        let b = site("swb", 42, "wb");
        veth(&a.gw, "wan-a", "10.40.1.1/24", &b.gw, "wan-b", "10.40.1.2/24");

        let mut ca = SwanConn::new("ab", "10.40.1.1", "10.40.1.2", "test-secret-ab");
        ca.local_id = "gw-a.example".into();
        ca.remote_id = "gw-b.example".into();
        ca.local_ts = "10.41.0.0/16".into();
        ca.remote_ts = "10.42.0.0/16".into();
        ca.dpd_delay = Some(Duration::from_secs(5));
        let mut cb = ca.clone();
        cb.local_addr = ca.remote_addr.clone();
        cb.remote_addr = ca.local_addr.clone();
        cb.local_id = ca.remote_id.clone();
        cb.remote_id = ca.local_id.clone();
        cb.local_ts = ca.remote_ts.clone();
        cb.remote_ts = ca.local_ts.clone();
        assert!(!format!("{ca:?}").contains("test-secret"), "Debug shows the PSK");

        let sa = Strongswan::start(&a.gw, &[ca]);
        let sb = Strongswan::start(&b.gw, &[cb]);
        sa.load_all().unwrap();
        sb.load_all().unwrap();
        sa.initiate("ab-child").unwrap_or_else(|e| panic!("{e}\n{}", sa.log()));
        assert!(sa.ike_established("ab"), "{}", sa.status());
        assert_eq!(sb.children_installed("ab-child"), 1, "{}", sb.status());

        let ping = a.host.sh_output("ping -c3 -i0.2 -W2 10.42.1.2");
        assert!(
            ping.status.success(),
            "LAN-to-LAN ping through two strongSwans failed: {}\n{}\n{}",
            String::from_utf8_lossy(&ping.stdout),
            sa.status(),
            sa.log()
        );
        // The packets went through the CHILD SA: strongSwan counted them.
        let st = sb.status();
        assert!(st.contains("TUNNEL-in-UDP"), "libipsec uses UDP encapsulation: {st}");
        assert!(st.contains("3 packets"), "the CHILD SA did not count the pings: {st}");
    }
}

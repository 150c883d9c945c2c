//! The Debian package (`make package`), checked without installing it on this machine: built by
//! cargo-deb from the debug binaries this test run already has (no release build), its metadata
//! and files read with `dpkg-deb`, judged by lintian, its unit by `systemd-analyze verify`; then
//! unpacked into a scratch root and started the way systemd starts it (the unit's `ExecStart=`,
//! `NOTIFY_SOCKET`) in a network namespace with a peer gateway: READY, the tunnel up, a reload on
//! SIGHUP, a clean stop on SIGTERM. Root only (namespaces). Address block 10.84.0.0/16.

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use isthmus_testkit::config::Gateway;
use isthmus_testkit::site::{Binaries, Site, SiteSpec, link_wans, token_hash, wait_for};
use isthmus_testkit::{assert_kernel_clean, require_root};

const TOKEN: &str = "ist_package-admin-token";
/// A read-only token the configuration gains on reload.
const VIEWER: &str = "ist_package-viewer-token";
const PSK: &str = "package-test-pre-shared-key-0123456789";
/// The peer's API port; the packaged daemon's API is its default, 127.0.0.1:8080 in its
/// namespace, as the unit gives no `--api`.
const PEER_API_PORT: u16 = 18480;
const UNIT: &str = "usr/lib/systemd/system/isthmusd.service";

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().expect("workspace root")
}

/// Runs `cmd`; panics with its output when it fails.
fn ok(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn text(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The daemon and the CLI this test run built (`cargo test --workspace` builds the CLI too;
/// building it from here would resolve other features and rebuild half the workspace).
fn debug_binaries() -> Binaries {
    let isthmusd = PathBuf::from(env!("CARGO_BIN_EXE_isthmusd"));
    let isthmus = isthmusd.with_file_name("isthmus");
    assert!(isthmus.exists(), "{} is missing: `cargo build -p isthmus` first", isthmus.display());
    Binaries { isthmusd, isthmus }
}

/// `make package` without its release build: the debug binaries go where cargo-deb looks for
/// release ones in a private target folder, the manual pages and completions are written by the
/// same script, and `cargo deb --no-build` packages them. Returns the `.deb`.
fn build_package(scratch: &Path, bins: &Binaries) -> PathBuf {
    let release = scratch.join("target/release");
    std::fs::create_dir_all(&release).expect("create the target folder");
    std::fs::copy(&bins.isthmusd, release.join("isthmusd")).expect("copy isthmusd");
    std::fs::copy(&bins.isthmus, release.join("isthmus")).expect("copy isthmus");
    ok(Command::new(workspace().join("scripts/deb-assets.sh")).arg(&release));
    let deb = scratch.join("isthmus.deb");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    ok(Command::new(cargo)
        .args(["deb", "-p", "isthmusd", "--no-build", "--strip", "--fast", "--output"])
        .arg(&deb)
        .env("CARGO_TARGET_DIR", scratch.join("target"))
        .current_dir(workspace()));
    deb
}

/// Control fields, files, conffiles, maintainer scripts, manual pages and completions, as
/// `dpkg-deb` shows them to an operator.
fn check_contents(deb: &Path, root: &Path) {
    let info = text(&ok(Command::new("dpkg-deb").arg("--info").arg(deb)));
    for field in [
        " Package: isthmus\n",
        " Section: net\n",
        " Priority: optional\n",
        " Architecture: amd64\n",
    ] {
        assert!(info.contains(field), "control lacks {field:?}:\n{info}");
    }
    let depends = info.lines().find(|l| l.starts_with(" Depends:")).unwrap_or_default();
    assert!(depends.contains("libc6"), "Depends computed from the binaries: {info}");
    let recommends = info.lines().find(|l| l.starts_with(" Recommends:")).unwrap_or_default();
    assert!(recommends.contains("nftables") && recommends.contains("iproute2"), "{info}");

    let listing = text(&ok(Command::new("dpkg-deb").arg("--contents").arg(deb)));
    let files: Vec<&str> =
        listing.lines().filter_map(|l| l.split_whitespace().nth(5)).collect::<Vec<_>>();
    let expected = [
        "./usr/sbin/isthmusd",
        "./usr/bin/isthmus",
        "./etc/isthmus/config.toml",
        "./usr/share/isthmus/plugins/spd_selectors.wasm",
        "./usr/share/isthmus/plugins/security_group.wasm",
        "./usr/share/isthmus/plugins/alarm_notify.wasm",
        "./usr/share/man/man8/isthmusd.8.gz",
        "./usr/share/man/man1/isthmus.1.gz",
        "./usr/share/man/man1/isthmus-tunnel.1.gz",
        "./usr/share/man/man1/isthmus-config-apply.1.gz",
        "./usr/share/bash-completion/completions/isthmus",
        "./usr/share/zsh/vendor-completions/_isthmus",
        "./usr/share/fish/vendor_completions.d/isthmus.fish",
        "./usr/share/doc/isthmus/copyright",
        "./usr/share/doc/isthmus/install.md",
        &format!("./{UNIT}"),
    ];
    for f in expected {
        assert!(files.contains(&f), "the package lacks {f}:\n{listing}");
    }
    // Test plugins and the hidden generator's pages stay out.
    assert!(!listing.contains("test_"), "a test plugin is packaged:\n{listing}");
    assert!(!listing.contains("man-pages"), "a hidden command has a page:\n{listing}");
    // The daemon and the CLI are executable by everyone, the configuration (PSKs) by root only.
    let mode = |f: &str| {
        listing.lines().find(|l| l.ends_with(&format!(" {f}"))).map(|l| l[..10].to_owned())
    };
    assert_eq!(mode("./usr/sbin/isthmusd").as_deref(), Some("-rwxr-xr-x"));
    assert_eq!(mode("./etc/isthmus/config.toml").as_deref(), Some("-rw-r-----"));

    let conffiles = text(&ok(Command::new("dpkg-deb").arg("--info").arg(deb).arg("conffiles")));
    assert_eq!(conffiles.trim(), "/etc/isthmus/config.toml");
    // Installed disabled and not started (the unit's comment says why); an upgrade restarts
    // only a running daemon.
    let postinst = text(&ok(Command::new("dpkg-deb").arg("--info").arg(deb).arg("postinst")));
    assert!(postinst.contains("try-restart"), "{postinst}");
    assert!(!postinst.contains("_dh_action=start"), "a fresh install starts it:\n{postinst}");
    // `enable` only behind `debian-installed`: re-enabled on upgrade if it was, never on a
    // fresh install.
    assert!(postinst.contains("if deb-systemd-helper debian-installed"), "{postinst}");

    // Pages rendered from the clap definitions: the daemon's options in isthmusd(8).
    let man = text(&ok(Command::new("zcat").arg(root.join("usr/share/man/man8/isthmusd.8.gz"))));
    assert!(man.contains(".TH isthmusd 8"), "{man}");
    assert!(man.contains(r"\-\-data\-dir") && man.contains(r"\-\-config"), "{man}");
    let bash = std::fs::read_to_string(root.join("usr/share/bash-completion/completions/isthmus"))
        .expect("bash completion");
    // The scripts register clap's dynamic completion: at each TAB the shell asks the installed
    // binary (so tunnel, revision and alarm names come from the live daemon), and the packaged
    // binary answers.
    assert!(bash.contains("-F _clap_complete_isthmus isthmus"), "{bash}");
    assert!(bash.contains("COMPLETE=\"bash\""), "{bash}");
    let fish =
        std::fs::read_to_string(root.join("usr/share/fish/vendor_completions.d/isthmus.fish"))
            .expect("fish completion");
    assert!(fish.contains("--command isthmus") && fish.contains("COMPLETE=fish isthmus"), "{fish}");
    let answer = text(&ok(Command::new(root.join("usr/bin/isthmus"))
        .env("COMPLETE", "bash")
        .env("_CLAP_COMPLETE_INDEX", "1")
        .args(["--", "isthmus", "tun"])));
    assert_eq!(answer.trim(), "tunnel", "the packaged isthmus completes `tun`");
}

/// lintian reports no error (warnings and notes are printed).
fn check_lintian(deb: &Path) {
    let out = Command::new("lintian")
        .args(["--fail-on", "error", "--allow-root", "--tag-display-limit", "0"])
        .arg(deb)
        .output()
        .expect("spawn lintian (scripts/bootstrap.sh installs it)");
    let report = format!("{}{}", text(&out), String::from_utf8_lossy(&out.stderr));
    eprintln!("lintian:\n{report}");
    assert!(out.status.success(), "lintian found errors:\n{report}");
    assert!(!report.lines().any(|l| l.starts_with("E: ")), "{report}");
}

/// `systemd-analyze verify` on the unit, and its exposure (`systemd-analyze security`) at most
/// 3.0 of 10, so a weakened sandbox fails here. `verify --root` wants a whole system inside
/// the root (sysinit.target, /bin/kill); a copy whose `ExecStart=` binary points into the
/// unpacked tree is verified against this host instead, with `MANPATH` finding the packaged
/// pages that `Documentation=` names.
fn check_unit(root: &Path, scratch: &Path) {
    let unit = std::fs::read_to_string(root.join(UNIT)).expect("read the unit");
    let copy = scratch.join("isthmusd.service");
    let daemon = root.join("usr/sbin/isthmusd");
    std::fs::write(&copy, unit.replace("/usr/sbin/isthmusd", daemon.to_str().expect("UTF-8")))
        .expect("write the unit's copy");
    for args in [&["verify"][..], &["security", "--offline=true", "--threshold=30"]] {
        let out = Command::new("systemd-analyze")
            .args(args)
            .arg(&copy)
            .env("MANPATH", root.join("usr/share/man"))
            .output()
            .expect("spawn systemd-analyze");
        let report = format!("{}{}", text(&out), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success(), "systemd-analyze {args:?} failed:\n{report}");
        if args[0] == "verify" {
            // Unknown keys and bad values are only warnings, with status 0.
            assert!(report.trim().is_empty(), "systemd-analyze verify:\n{report}");
        }
    }
}

/// The unit's `ExecStart=` command line with every absolute path moved into `root`.
fn exec_start(root: &Path) -> Vec<PathBuf> {
    let unit = std::fs::read_to_string(root.join(UNIT)).expect("read the unit");
    let line = unit.lines().find_map(|l| l.strip_prefix("ExecStart=")).expect("an ExecStart=");
    line.split_whitespace()
        .map(|w| match w.strip_prefix('/') {
            Some(rel) => root.join(rel),
            None => PathBuf::from(w),
        })
        .collect()
}

/// The packaged daemon, killed on drop should the test fail before it stops it.
struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// What the daemon tells the service manager on `NOTIFY_SOCKET`.
struct Notify {
    sock: UnixDatagram,
    seen: Vec<String>,
}

impl Notify {
    fn bind(path: &Path) -> Notify {
        let sock = UnixDatagram::bind(path).expect("bind the notify socket");
        sock.set_read_timeout(Some(Duration::from_millis(200))).expect("set a read timeout");
        Notify { sock, seen: vec![] }
    }

    /// Waits until a message carries the line `what` (e.g. `READY=1`); the daemon must not exit
    /// meanwhile.
    fn expect(&mut self, what: &str, daemon: &mut Child, log: &Path) {
        let t0 = Instant::now();
        let mut buf = [0u8; 4096];
        loop {
            if let Ok(n) = self.sock.recv(&mut buf) {
                let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
                self.seen.push(msg.clone());
                if msg.lines().any(|l| l == what) {
                    return;
                }
            }
            let log = || std::fs::read_to_string(log).unwrap_or_default();
            if let Ok(Some(st)) = daemon.try_wait() {
                panic!("isthmusd exited ({st}) before {what}; told {:?}\n{}", self.seen, log());
            }
            assert!(
                t0.elapsed() < Duration::from_secs(30),
                "no {what} on NOTIFY_SOCKET in 30 s; told {:?}\n{}",
                self.seen,
                log()
            );
        }
    }
}

/// Gateway `me` of two: WAN 10.84.0.ME, LAN 10.84.ME.0/24, a tunnel to the other (gateway 1
/// initiates), the admin token, and `more` (tokens, ...).
fn config(me: u8, peer: u8, more: impl FnOnce(Gateway) -> Gateway) -> String {
    let gw = Gateway::new(&format!("pkg{me}"))
        .wan("wan0", &format!("10.84.0.{me}/24"), "10.84.0.254")
        .lan("lan", "lan0", &format!("10.84.{me}.1/24"))
        .customer_gateway(&format!("pkg{peer}"), &format!("10.84.0.{peer}"))
        .push(&format!(
            r#"[[tunnel]]
name = "to-pkg{peer}"
customer_gateway = "pkg{peer}"
psk = "{PSK}"
start_action = "{}"
[[tunnel.spd]]
local = ["10.84.{me}.0/24"]
remote = ["10.84.{peer}.0/24"]
"#,
            if me == 1 { "start" } else { "none" }
        ))
        .token("ops", "admin", &format!("sha256:{}", token_hash(TOKEN)));
    more(gw).toml()
}

fn site(n: u8, bins: &Binaries, api_port: u16) -> Site {
    Site::new(
        SiteSpec {
            tag: "pk".into(),
            lan_gw: format!("10.84.{n}.1/24"),
            lan_host: format!("10.84.{n}.10/24"),
            api_port,
            token: TOKEN.into(),
        },
        bins,
    )
}

#[test]
fn the_debian_package_installs_runs_reloads_and_stops_cleanly() {
    if !require_root() {
        return;
    }
    let t0 = Instant::now();
    let bins = debug_binaries();
    let scratch = tempfile::tempdir().expect("scratch folder");
    let deb = build_package(scratch.path(), &bins);
    let root = scratch.path().join("root");
    ok(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root));
    eprintln!("package built and unpacked in {:?}", t0.elapsed());
    check_contents(&deb, &root);
    check_lintian(&deb);
    check_unit(&root, scratch.path());

    // The packaged gateway in its namespace, its peer beside it running the test's daemon.
    let packaged = site(1, &bins, 8080);
    let mut peer = site(2, &bins, PEER_API_PORT);
    link_wans(&packaged, &peer);
    peer.start(&config(2, 1, |g| g));

    // What an operator does before `systemctl enable --now`: write the conffile. The state
    // folder is the unit's StateDirectory, which systemd creates.
    let argv = exec_start(&root);
    let conf = root.join("etc/isthmus/config.toml");
    assert!(argv.contains(&conf), "ExecStart reads the conffile: {argv:?}");
    std::fs::write(&conf, config(1, 2, |g| g)).expect("write the configuration");
    std::fs::create_dir_all(root.join("var/lib/isthmus")).expect("the state folder");
    let notify_path = scratch.path().join("notify.sock");
    let mut notify = Notify::bind(&notify_path);
    let log = scratch.path().join("isthmusd.log");
    let mut daemon = Daemon(
        packaged
            .gw
            .command(argv[0].to_str().expect("UTF-8 path"))
            .args(&argv[1..])
            .env("NOTIFY_SOCKET", &notify_path)
            .stdin(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("create the log"))
            .spawn()
            .expect("spawn the packaged isthmusd"),
    );
    let daemon = &mut daemon.0;
    // `ip netns exec` execs the daemon: the child's pid is its pid, as $MAINPID is.
    let pid = daemon.id().to_string();
    let ctx = || {
        format!(
            "--- packaged log\n{}\n--- peer log\n{}",
            std::fs::read_to_string(&log).unwrap_or_default(),
            peer.log()
        )
    };
    notify.expect("READY=1", daemon, &log);

    // The packaged CLI reaches the daemon on its default endpoint; the tunnel comes up and
    // carries LAN-to-LAN traffic.
    let cli = root.join("usr/bin/isthmus");
    let isthmus = |token: &str, args: &[&str]| {
        packaged
            .gw
            .command(cli.to_str().expect("UTF-8 path"))
            .arg("--token")
            .arg(token)
            .args(args)
            .output()
            .expect("spawn the packaged isthmus")
    };
    let up = |s: &str| s.lines().any(|l| l.contains(" up "));
    wait_for(
        "the tunnel to come up",
        Duration::from_secs(30),
        || up(&text(&isthmus(TOKEN, &["tunnel", "list"]))),
        ctx,
    );
    let ping = || packaged.host.sh_output("ping -c 1 -W 1 10.84.2.10").status.success();
    wait_for("a LAN-to-LAN ping through the tunnel", Duration::from_secs(15), ping, ctx);

    // ExecReload: the edited conffile is committed (a new token works), RELOADING=1 then
    // READY=1 again, and the tunnel stays up.
    assert!(!isthmus(VIEWER, &["status"]).status.success(), "a token not yet configured works");
    let with_viewer =
        config(1, 2, |g| g.token("viewer", "read-only", &format!("sha256:{}", token_hash(VIEWER))));
    std::fs::write(&conf, with_viewer).expect("edit the configuration");
    ok(Command::new("kill").args(["-HUP", &pid]));
    notify.expect("RELOADING=1", daemon, &log);
    notify.expect("READY=1", daemon, &log);
    let viewer = isthmus(VIEWER, &["status"]);
    assert!(viewer.status.success(), "the reloaded token: {viewer:?}\n{}", ctx());
    assert!(up(&text(&isthmus(TOKEN, &["tunnel", "list"]))), "tunnel down after a reload");
    assert!(ping(), "traffic stops after a reload\n{}", ctx());

    // systemctl stop: STOPPING=1, a successful exit well within TimeoutStopSec.
    ok(Command::new("kill").args(["-TERM", &pid]));
    notify.expect("STOPPING=1", daemon, &log);
    let stopped = Instant::now();
    let status = loop {
        if let Some(st) = daemon.try_wait().expect("wait for isthmusd") {
            break st;
        }
        assert!(stopped.elapsed() < Duration::from_secs(30), "no exit 30 s after TERM\n{}", ctx());
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "isthmusd exited with {status} on TERM\n{}", ctx());
    // Nothing of Isthmus is left in the kernel, and the peer was told: its tunnel goes down at
    // once, where DPD (30 s idle, 150 s timeout) would take minutes to notice.
    assert_kernel_clean(&packaged.gw);
    wait_for(
        "the peer to see the tunnel deleted",
        Duration::from_secs(5),
        || !up(&text(&peer.cli(&["tunnel", "list"]))),
        ctx,
    );
    eprintln!("whole test: {:?}", t0.elapsed());
}

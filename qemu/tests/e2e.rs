//! End-to-end tests: the real image booted in QEMU (TCG here, KVM where the host can).
//!
//! Bounded in time (every wait has a deadline), run one at a time (two cores and TCG), and skipped
//! with a message when QEMU, OVMF or a kernel source is missing. The images are built once per run
//! into `build/e2e*`; every boot uses a fresh qcow2 overlay and OVMF variable store.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use isthmus_image::{Manifest, Options, workspace_root};
use isthmus_lab::lab::{BOOT_TIMEOUT, DaemonMode, Lab, LabOptions, boot_uefi, isthmus_ready};
use isthmus_lab::vm::{Accel, Boot, Vm, VmSpec, overlay, qemu_binary};
use isthmus_lab::wan::Impairment;

const CMD: Duration = Duration::from_secs(30);

/// One VM test at a time: they share two cores.
fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|p| p.into_inner())
}

struct Env {
    qemu: PathBuf,
    accel: Accel,
    dir: PathBuf,
}

fn env() -> Option<Env> {
    let root = workspace_root();
    if let Some(why) = isthmus_lab::unavailable(&root) {
        eprintln!("skipped: {why}");
        return None;
    }
    Some(Env { qemu: qemu_binary(&root)?, accel: Accel::detect(), dir: root.join("build/e2e-run") })
}

/// Builds (once per test run) an image variant into `build/<name>`.
fn image(name: &str, tweak: fn(&mut Options)) -> Manifest {
    static BUILT: Mutex<Vec<(String, Manifest)>> = Mutex::new(Vec::new());
    let mut built = BUILT.lock().unwrap_or_else(|p| p.into_inner());
    if let Some((_, m)) = built.iter().find(|(n, _)| n == name) {
        return m.clone();
    }
    let root = workspace_root();
    let mut opts = Options::new(&root);
    opts.out = root.join("build").join(name);
    // The daemon is built once; the variants reuse it.
    static DAEMON: OnceLock<PathBuf> = OnceLock::new();
    // ISTHMUS_DAEMON: a prebuilt static isthmusd to test instead of building one.
    let daemon = DAEMON.get_or_init(|| match std::env::var_os("ISTHMUS_DAEMON") {
        Some(path) => PathBuf::from(path),
        None => isthmus_image::build_daemon(&root).expect("build the static isthmusd"),
    });
    opts.daemon = Some(daemon.clone());
    tweak(&mut opts);
    let m = isthmus_image::build(&opts).unwrap_or_else(|e| panic!("image {name}: {e}"));
    built.push((name.to_string(), m.clone()));
    m
}

/// The lab image: its data partition carries the lab's boot hook and first-boot configurations.
fn default_image() -> Manifest {
    image("e2e", |o| {
        o.data_files = isthmus_lab::lab::lab_data_files(&workspace_root()).expect("lab files");
    })
}

/// Direct kernel boot of one appliance on `disk` (a qcow2 overlay that persists across boots).
fn boot_direct(env: &Env, m: &Manifest, name: &str, disk: PathBuf) -> Vm {
    Vm::start(&VmSpec {
        name: name.into(),
        qemu: env.qemu.clone(),
        accel: env.accel,
        boot: Boot::Direct {
            kernel: m.vmlinuz.clone(),
            initrd: m.initrd.clone(),
            cmdline: isthmus_lab::lab::lab_cmdline(name),
        },
        disk,
        disk_format: "qcow2".into(),
        nics: vec![],
        mem_mib: 512,
        dir: env.dir.clone(),
    })
    .expect("start QEMU")
}

#[test]
fn image_boots_under_ovmf_to_the_readiness_line() {
    let Some(env) = env() else { return };
    let _one = serial();
    let m = default_image();
    let (mut vm, line) =
        boot_uefi(&env.qemu, env.accel, &m.raw, &env.dir, "uefi", 512).expect("UEFI boot");
    assert!(line.contains("slot a"), "systemd-boot started slot A's kernel image: {line}");
    assert!(line.contains("0 failed"), "every module loaded: {line}");
    vm.wait_for_shell(Duration::from_secs(30)).unwrap();
    let cmdline = vm.sh_ok("cat /proc/cmdline", CMD).unwrap();
    assert!(cmdline.contains("isthmus.slot=a"), "the UKI's own command line: {cmdline}");
    let mounts = vm.sh_ok("cat /proc/mounts", CMD).unwrap();
    assert!(mounts.lines().any(|l| l.contains(" /data ext4 ")), "data partition mounted: {mounts}");
    let modules = vm.sh_ok("cat /proc/modules", CMD).unwrap();
    for m in ["esp4 ", "drbg ", "sha512_generic ", "tun ", "nf_tables ", "virtio_net "] {
        assert!(modules.lines().any(|l| l.starts_with(m)), "module {m}loaded: {modules}");
    }
    let comm = vm.sh_ok("cat /proc/1/comm", CMD).unwrap();
    // A daemon log line can land in the output (same console).
    assert!(comm.lines().any(|l| l.trim() == "init"), "isthmusd is PID 1 (as /init): {comm:?}");
    vm.shutdown(Duration::from_secs(20));
}

#[test]
fn two_appliances_ping_each_other_over_the_wan() {
    let Some(env) = env() else { return };
    let _one = serial();
    let m = default_image();
    let opts = LabOptions {
        qemu: env.qemu.clone(),
        accel: env.accel,
        image: m,
        dir: env.dir.join("lab"),
        impairment: Impairment { delay: Duration::from_millis(20), loss: 0.0 },
        api_ports: [None, None],
        mem_mib: 512,
        uefi: [false, false],
    };
    let mut lab = Lab::boot(&opts).expect("boot both appliances");
    for s in &lab.sites {
        println!("{}: ready after {:.1} s: {}", s.spec.name, s.ready_secs, s.ready_line.trim());
    }
    let mode = lab.wire(&workspace_root()).expect("wire the LAN hosts (and configure)");
    if mode == DaemonMode::WaitsForConfig {
        let up = lab.wait_api(Duration::from_secs(90)).expect("ask for the API");
        assert!(
            up.iter().all(|&b| b),
            "both daemons serve their API after their first configuration: {up:?}"
        );
    }
    let summary = lab.wan_ping().expect("WAN ping");
    assert!(summary.contains("3 packets received"), "{summary}");
    // The relay's delay shows in the round trip: two crossings of 20 ms.
    let avg: f64 = summary
        .split("min/avg/max = ")
        .nth(1)
        .and_then(|s| s.split('/').nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0.0);
    assert!(avg >= 40.0, "round trip includes the simulated Internet's delay: {summary}");
    assert!(lab.wan.a_to_b.forwarded.load(std::sync::atomic::Ordering::Relaxed) >= 3);
    match mode {
        DaemonMode::WaitsForConfig => {
            let t = lab.wait_tunnel(Duration::from_secs(90)).expect("LAN ping runs");
            assert!(t.is_some(), "LAN host A reaches LAN host B through the tunnel");
            let (ok, lan) = lab.lan_ping().expect("LAN ping runs");
            assert!(ok, "LAN to LAN through the tunnel: {lan}");
        }
        DaemonMode::Stub => {
            // No tunnel without the daemon, and the gateway gives no clear-text path between LANs.
            let (ok, lan) = lab.lan_ping().expect("LAN ping runs");
            assert!(!ok, "no clear-text path between the LANs: {lan}");
        }
    }
    lab.shutdown();
}

#[test]
fn data_partition_survives_reboot_and_power_off() {
    let Some(env) = env() else { return };
    let _one = serial();
    let m = default_image();
    std::fs::create_dir_all(&env.dir).unwrap();
    let disk = env.dir.join("persist.qcow2");
    overlay(&m.raw, "raw", &disk).unwrap();
    let marker = format!("marker-{}", std::process::id());

    let mut vm = boot_direct(&env, &m, "persist", disk.clone());
    vm.wait_for(isthmus_ready(), BOOT_TIMEOUT).unwrap();
    vm.wait_for_shell(Duration::from_secs(30)).unwrap();
    vm.sh_ok(&format!("echo {marker} > /data/e2e-marker"), CMD).unwrap();
    // BusyBox `reboot` signals PID 1, which stops everything, syncs, unmounts and reboots.
    vm.send("reboot").unwrap();
    vm.wait_for("isthmus: rebooting", CMD).unwrap();
    vm.wait_for(isthmus_ready(), BOOT_TIMEOUT).unwrap();
    vm.wait_for_shell(Duration::from_secs(30)).unwrap();
    // The daemon logs to the same console: a log line can land in the command's output.
    let out = vm.sh_ok("cat /data/e2e-marker", CMD).unwrap();
    assert!(out.lines().any(|l| l.trim() == marker), "marker after reboot: {out:?}");
    vm.send("poweroff").unwrap();
    vm.wait_for("isthmus: powering off", CMD).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while vm.running() {
        assert!(std::time::Instant::now() < deadline, "QEMU exits after poweroff");
        std::thread::sleep(Duration::from_millis(100));
    }
    drop(vm);

    // A new machine on the same disk: the marker is there and ext4 needed no journal recovery,
    // so the power-off unmounted cleanly.
    let mut vm = boot_direct(&env, &m, "persist2", disk);
    vm.wait_for(isthmus_ready(), BOOT_TIMEOUT).unwrap();
    vm.wait_for_shell(Duration::from_secs(30)).unwrap();
    let out = vm.sh_ok("cat /data/e2e-marker", CMD).unwrap();
    assert!(out.lines().any(|l| l.trim() == marker), "marker after power-off: {out:?}");
    let dmesg = vm.sh_ok("dmesg | grep -i 'ext4' || true", CMD).unwrap();
    assert!(!dmesg.contains("recovery"), "clean unmount, no journal recovery: {dmesg}");
    vm.shutdown(Duration::from_secs(20));
}

/// Lists `EFI/Linux` on the ESP from inside the appliance (mounted by GPT partition name).
fn esp_kernel_images(vm: &mut Vm) -> String {
    vm.sh_ok(
        "dev=/dev/$(grep -l PARTNAME=isthmus-esp /sys/class/block/*/uevent | head -1 | xargs dirname | xargs basename) \
         && mkdir -p /mnt && mount -t vfat $dev /mnt && ls /mnt/EFI/Linux | tr '\\n' ' '; umount /mnt",
        CMD,
    )
    .unwrap()
}

#[test]
fn a_slot_that_never_blesses_itself_falls_back_to_the_other() {
    let Some(env) = env() else { return };
    let _one = serial();
    // Slot B holds an "upgrade" on trial with one try; nothing blesses it.
    let m = image("e2e-trial", |o| o.slot_b_tries = Some(1));
    assert!(m.esp_files.contains(&"EFI/Linux/fw-b+1.efi".to_string()), "{:?}", m.esp_files);
    let (mut vm, line) =
        boot_uefi(&env.qemu, env.accel, &m.raw, &env.dir, "fallback", 512).expect("UEFI boot");
    assert!(line.contains("slot b"), "systemd-boot tries the newer slot first: {line}");
    vm.wait_for_shell(Duration::from_secs(30)).unwrap();
    let files = esp_kernel_images(&mut vm);
    assert!(files.contains("fw-b+0-1.efi"), "the try was counted: {files}");
    vm.send("reboot").unwrap();
    let line = vm.wait_for(isthmus_ready(), BOOT_TIMEOUT).unwrap();
    assert!(line.contains("slot a"), "tries used up: back to slot A: {line}");
    vm.shutdown(Duration::from_secs(20));
}

#[test]
fn a_slot_that_blesses_itself_stays() {
    let Some(env) = env() else { return };
    let _one = serial();
    let m = image("e2e-blessed", |o| {
        o.slot_b_tries = Some(1);
        o.slot_b_blesses = true;
    });
    let (mut vm, line) =
        boot_uefi(&env.qemu, env.accel, &m.raw, &env.dir, "blessed", 512).expect("UEFI boot");
    assert!(line.contains("slot b"), "{line}");
    vm.wait_for_shell(Duration::from_secs(30)).unwrap();
    let files = esp_kernel_images(&mut vm);
    assert!(
        files.contains("fw-b.efi") && !files.contains("fw-b+"),
        "blessed: counter removed: {files}"
    );
    vm.send("reboot").unwrap();
    let line = vm.wait_for(isthmus_ready(), BOOT_TIMEOUT).unwrap();
    assert!(line.contains("slot b"), "a blessed slot keeps booting: {line}");
    vm.shutdown(Duration::from_secs(20));
}

/// The operator CLI against a lab appliance's forwarded API; returns (success, stdout + stderr).
fn cli(bin: &Path, home: &Path, port: u16, args: &[&str]) -> (bool, String) {
    let out = Command::new(bin)
        .args(args)
        .env("HOME", home)
        .env("ISTHMUS_ENDPOINT", format!("https://127.0.0.1:{port}"))
        .env("ISTHMUS_TOKEN", "isthmus-lab-token")
        .output()
        .expect("run the CLI");
    let text =
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    println!("$ isthmus {}\n{text}", args.join(" "));
    (out.status.success(), text)
}

/// The JSON object in the CLI's output (stderr may add a line such as the certificate pin).
fn json_of(text: &str) -> &str {
    let start = text.find('{').unwrap_or(0);
    let end = text.rfind('}').map_or(text.len(), |i| i + 1);
    text.get(start..end).unwrap_or("")
}

fn system_status(bin: &Path, home: &Path, port: u16) -> isthmus_api::SystemStatus {
    let (ok, text) = cli(bin, home, port, &["--json", "system", "status"]);
    assert!(ok, "system status: {text}");
    serde_json::from_str(json_of(&text))
        .unwrap_or_else(|e| panic!("system status JSON: {e}: {text}"))
}

/// Polls `system status` until `pred` holds (the API comes back after a reboot).
fn wait_status(
    bin: &Path,
    home: &Path,
    port: u16,
    timeout: Duration,
    pred: impl Fn(&isthmus_api::SystemStatus) -> bool,
) -> isthmus_api::SystemStatus {
    let deadline = Instant::now() + timeout;
    loop {
        let (ok, text) = cli(bin, home, port, &["--json", "system", "status"]);
        if ok
            && let Ok(s) = serde_json::from_str::<isthmus_api::SystemStatus>(json_of(&text))
            && (pred(&s) || Instant::now() >= deadline)
        {
            return s;
        }
        assert!(Instant::now() < deadline, "system status within {timeout:?}: {text}");
        std::thread::sleep(Duration::from_secs(2));
    }
}

#[test]
fn an_upgrade_that_fails_its_health_gate_falls_back_and_a_good_one_stays() {
    let Some(env) = env() else { return };
    let _one = serial();
    let root = workspace_root();
    let base = default_image();
    // The good upgrade: the same firmware with a newer version. The bad one: a newer version
    // built without the `tun` module, so the daemon cannot apply its configuration.
    let good = image("e2e-up-good", |o| {
        o.version = Some(format!("{}.1", isthmus_image::VERSION));
    });
    let bad = image("e2e-up-bad", |o| {
        o.version = Some(format!("{}.2", isthmus_image::VERSION));
        o.omit_modules = vec!["tun".into()];
    });
    let bin = isthmus_lab::lab::cli_binary(&root).expect("build the CLI");
    let dir = env.dir.join("upgrade");
    let home = dir.join("home");
    let _ = std::fs::remove_dir_all(&home);
    std::fs::create_dir_all(&home).unwrap();
    let opts = LabOptions {
        qemu: env.qemu.clone(),
        accel: env.accel,
        image: base,
        dir,
        impairment: Impairment::default(),
        api_ports: [None, None],
        mem_mib: 512,
        // Site A boots through OVMF and systemd-boot: the slots are what this test is about.
        uefi: [true, false],
    };
    let mut lab = Lab::boot(&opts).expect("boot both appliances");
    assert!(lab.sites[0].ready_line.contains("slot a"), "{}", lab.sites[0].ready_line);
    let mode = lab.wire(&root).expect("wire");
    assert_eq!(mode, DaemonMode::WaitsForConfig, "the image carries the daemon");
    assert!(lab.wait_tunnel(Duration::from_secs(90)).unwrap().is_some(), "tunnel before upgrading");
    let port = lab.sites[0].api_port;
    let s = system_status(&bin, &home, port);
    assert_eq!(s.booted_slot.as_deref(), Some("a"));
    assert!(s.slots[0].blessed && s.slots[1].file.is_empty(), "{s:?}");

    // 1. The bad upgrade: one try, a 20 s gate. Slot B boots, cannot apply its configuration
    //    (the daemon stays up for the operator, and its gate fails at once), reboots, the try
    //    is used up, systemd-boot falls back to slot A.
    let bad_file = bad.upgrade.to_string_lossy().into_owned();
    let (ok, out) =
        cli(&bin, &home, port, &["system", "upgrade", &bad_file, "--tries", "1", "--gate", "20s"]);
    assert!(ok, "upgrade accepted: {out}");
    assert!(out.contains(&format!("wrote firmware {} to slot b", bad.version)), "{out}");
    assert!(out.contains("to-site-b"), "the gate waits for the tunnel that is up: {out}");
    let vm = &mut lab.sites[0].vm;
    vm.wait_for("isthmus: rebooting", Duration::from_secs(60)).unwrap();
    let line = vm.wait_for(isthmus_ready(), BOOT_TIMEOUT).unwrap();
    assert!(line.contains("slot b"), "systemd-boot tries the upgrade: {line}");
    vm.wait_for("failed its health gate: configuration not applied", Duration::from_secs(120))
        .unwrap();
    let line = vm.wait_for(isthmus_ready(), BOOT_TIMEOUT).unwrap();
    assert!(line.contains("slot a"), "tries used up: back on the old firmware: {line}");
    lab.rewire_site(0).expect("LAN host after the fallback");
    assert!(
        lab.wait_tunnel(Duration::from_secs(90)).unwrap().is_some(),
        "the old firmware brings the tunnel back"
    );
    let s = wait_status(&bin, &home, port, Duration::from_secs(60), |s| {
        s.upgrade.as_ref().is_some_and(|u| u.state == "fell-back")
    });
    assert_eq!(s.booted_slot.as_deref(), Some("a"), "{s:?}");
    let u = s.upgrade.clone().unwrap();
    assert_eq!(u.state, "fell-back", "{u:?}");
    assert!(u.detail.contains("configuration not applied"), "the record says why: {u:?}");
    let (_, events) = cli(&bin, &home, port, &["config", "revisions"]);
    assert!(events.contains("initial configuration"), "configuration preserved: {events}");
    let (_, alarms) = cli(&bin, &home, port, &["alarm", "list"]);
    assert!(alarms.contains("upgrade-failed"), "the fallback raises an alarm: {alarms}");

    // 2. The good upgrade stays: the gate sees the tunnel back and blesses slot B.
    let good_file = good.upgrade.to_string_lossy().into_owned();
    let (ok, out) =
        cli(&bin, &home, port, &["system", "upgrade", &good_file, "--gate", "90s", "--tries", "2"]);
    assert!(ok, "upgrade accepted: {out}");
    let vm = &mut lab.sites[0].vm;
    vm.wait_for("isthmus: rebooting", Duration::from_secs(60)).unwrap();
    let line = vm.wait_for(isthmus_ready(), BOOT_TIMEOUT).unwrap();
    assert!(line.contains("slot b"), "{line}");
    let s = wait_status(&bin, &home, port, Duration::from_secs(150), |s| {
        s.upgrade.as_ref().is_some_and(|u| u.state != "trial" && u.state != "gate-failed")
    });
    let u = s.upgrade.clone().unwrap();
    assert_eq!(u.state, "blessed", "{u:?}");
    assert_eq!(s.booted_slot.as_deref(), Some("b"));
    assert_eq!(s.version, good.version);
    assert!(s.slots[1].blessed && s.slots[1].file == "EFI/Linux/fw-b.efi", "{s:?}");
    lab.rewire_site(0).expect("LAN host after the upgrade");
    let (ok, ping) = lab.lan_ping().unwrap();
    assert!(ok, "LAN to LAN through the tunnel on the new firmware: {ping}");
    // Blessed: the next boot stays on slot B.
    let vm = &mut lab.sites[0].vm;
    vm.send("reboot").unwrap();
    let line = vm.wait_for(isthmus_ready(), BOOT_TIMEOUT).unwrap();
    assert!(line.contains("slot b"), "a blessed upgrade keeps booting: {line}");
    lab.shutdown();
}

#[test]
fn a_security_group_applied_with_the_cli_stops_the_lan_ping_and_rollback_restores_it() {
    let Some(env) = env() else { return };
    let _one = serial();
    let root = workspace_root();
    let bin = isthmus_lab::lab::cli_binary(&root).expect("build the CLI");
    let dir = env.dir.join("sg");
    let home = dir.join("home");
    let _ = std::fs::remove_dir_all(&home);
    std::fs::create_dir_all(&home).unwrap();
    let opts = LabOptions {
        qemu: env.qemu.clone(),
        accel: env.accel,
        image: default_image(),
        dir: dir.clone(),
        impairment: Impairment::default(),
        api_ports: [None, None],
        mem_mib: 512,
        uefi: [false, false],
    };
    let mut lab = Lab::boot(&opts).expect("boot both appliances");
    assert_eq!(lab.wire(&root).expect("wire"), DaemonMode::WaitsForConfig);
    assert!(lab.wait_tunnel(Duration::from_secs(90)).unwrap().is_some(), "tunnel up");
    let port = lab.sites[0].api_port;

    // Site A's configuration plus a security group on the tunnel that denies ICMP both ways.
    let base = std::fs::read_to_string(root.join(SITES_A_CONFIG)).unwrap();
    let deny = format!(
        "{base}\n[[security_group]]\nname = \"no-icmp\"\ntunnels = [\"to-site-b\"]\n\
         default_action = \"allow\"\n\n[[security_group.rule]]\npriority = 10\naction = \"deny\"\n\
         direction = \"out\"\nprotocol = \"icmp\"\n\n[[security_group.rule]]\npriority = 20\n\
         action = \"deny\"\ndirection = \"in\"\nprotocol = \"icmp\"\n"
    );
    let file = dir.join("site-a-no-icmp.toml");
    std::fs::write(&file, deny).unwrap();
    let (ok, out) = cli(
        &bin,
        &home,
        port,
        &["config", "apply", &file.to_string_lossy(), "-m", "deny ICMP on the tunnel"],
    );
    assert!(ok, "apply: {out}");
    let (ok, ping) = lab.lan_ping().unwrap();
    assert!(!ok, "the security group stops LAN to LAN ICMP: {ping}");
    let (ok, out) = cli(&bin, &home, port, &["config", "rollback"]);
    assert!(ok, "rollback: {out}");
    let (ok, ping) = lab.lan_ping().unwrap();
    assert!(ok, "rolling back restores the ping: {ping}");
    lab.shutdown();
}

const SITES_A_CONFIG: &str = "qemu/configs/site-a.toml";

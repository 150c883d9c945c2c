//! PID 1 duties inside the Isthmus image.
//!
//! The image has no other init: the kernel starts `isthmusd` from the initramfs as `/init`.
//! [`boot`] is the first thing `main` calls. Outside the image (PID ≠ 1) it returns at once.
//! As PID 1 it:
//!
//! 1. makes the console usable (`/dev` as devtmpfs, fds 0–2 reopened on `/dev/console`) and mounts
//!    `/proc`, `/sys`, `/dev/pts`, `/run` and `/tmp`;
//! 2. loads the kernel modules listed in [`MODULE_LIST`] with `finit_module(2)`, in the dependency
//!    order the image builder resolved with `modprobe --show-depends`;
//! 3. finds the data partition by its GPT partition name ([`DATA_PARTNAME`], the `PARTNAME=` key of
//!    `/sys/class/block/*/uevent`, so disk naming does not matter) and mounts it (ext4) on
//!    [`DATA_DIR`];
//! 4. brings up `lo`, sets the hostname (`isthmus.hostname=` on the kernel command line, else
//!    `/etc/hostname`), runs the site's boot hook [`RC_LOCAL`] if the data partition has one, and
//!    prints the readiness line `isthmus: ready` on the console;
//! 5. forks. The child returns from [`boot`] and runs the daemon (the rest of `main`). The parent
//!    stays PID 1 for good: it reaps every orphan, restarts the daemon with a backoff when it exits,
//!    keeps a shell on the serial console, and shuts down cleanly on the signals BusyBox's
//!    `reboot`/`poweroff`/`halt` send (SIGTERM or SIGINT → reboot, SIGUSR2 → power off, SIGUSR1 →
//!    halt): everything is sent SIGTERM then SIGKILL, filesystems are synced and unmounted, then
//!    `reboot(2)`.
//!
//! Keeping PID 1 in its own process means the daemon's `waitpid` on its own children never races
//! the orphan reaper, and a crashing daemon cannot take the kernel down with it (PID 1 exiting
//! panics the kernel).
//!
//! A/B slots: the unified kernel image of each slot carries `isthmus.slot=a|b` on its command line;
//! [`booted_slot`] reads it and [`bless_booted_slot`] marks the booted slot good for systemd-boot's
//! boot counting (renames `EFI/Linux/fw-X+L-D.efi` to `fw-X.efi` on the ESP). Until something blesses
//! it, a slot on trial falls back to the other slot once its tries run out. While the booted slot is
//! on trial after an upgrade (`/data/isthmus/upgrade.json`, see [`crate::system::upgrade`]), PID 1 also
//! keeps a deadline: if the daemon's health gate has not blessed the slot by then (the daemon could
//! not apply its configuration, or keeps crashing), PID 1 reboots, so the boot counter runs down and
//! the firmware falls back by itself.

use std::ffi::CString;
use std::fs;
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// The module list shipped in the initramfs: one absolute `.ko` path per line (optionally followed by
/// module parameters), already in dependency order.
pub const MODULE_LIST: &str = "/etc/isthmus/modules.list";
/// GPT partition name of the ext4 data partition.
pub const DATA_PARTNAME: &str = "isthmus-data";
/// GPT partition name of the EFI system partition.
pub const ESP_PARTNAME: &str = "isthmus-esp";
/// Where the data partition is mounted.
pub const DATA_DIR: &str = "/data";
/// The line printed on the console once PID 1 duties are done (the lab waits for it).
pub const READY_LINE: &str = "isthmus: ready";
/// The site's boot hook, run by PID 1 before the daemon starts (the lab wires its LAN hosts there).
pub const RC_LOCAL: &str = "/data/rc.local";

const SHELL: &str = "/bin/sh";
const BUSYBOX: &str = "/bin/busybox";
const PATH_ENV: &str = "/usr/sbin:/usr/bin:/sbin:/bin";
const ESP_DIR: &str = "/run/esp";

static IN_IMAGE: AtomicBool = AtomicBool::new(false);

/// True in the daemon process that PID 1 forked (the daemon runs as the appliance's firmware).
pub fn in_image() -> bool {
    IN_IMAGE.load(Ordering::Relaxed)
}

/// What can go wrong in PID 1 duties.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    /// A system call failed; names the call and its target.
    #[error("{what}: {source}")]
    Sys {
        /// The call and its argument, e.g. `mount /proc`.
        what: String,
        /// The OS error.
        source: io::Error,
    },
    /// No partition with the wanted GPT name appeared in time.
    #[error("no block device with GPT partition name {0:?} appeared")]
    NoPartition(String),
    /// The kernel command line has no `isthmus.slot=`.
    #[error("the kernel command line names no A/B slot (isthmus.slot=)")]
    NoSlot,
    /// No boot-counted file for the booted slot exists on the ESP (already blessed or not counted).
    #[error("no boot-counted image for slot {0} on the ESP (already blessed?)")]
    NotCounted(String),
}

fn sys(what: impl Into<String>) -> impl FnOnce(io::Error) -> BootError {
    let what = what.into();
    move |source| BootError::Sys { what, source }
}

fn last_os_error(what: impl Into<String>) -> BootError {
    BootError::Sys { what: what.into(), source: io::Error::last_os_error() }
}

fn say(msg: &str) {
    // The console is the only log there is this early; a failed write has nowhere to go.
    let _ = writeln!(io::stderr(), "isthmus-init: {msg}");
}

fn cstr(s: &str) -> CString {
    // Every path and name passed here is a constant or comes from sysfs/procfs: no NUL bytes.
    CString::new(s).unwrap_or_default()
}

/// Does the PID 1 duties when this process is PID 1 and returns in the daemon's process; returns at
/// once otherwise. As PID 1 it never returns in the original process (see the module docs).
pub fn boot() {
    if std::process::id() != 1 {
        return;
    }
    let started = Instant::now();
    if let Err(e) = early_mounts() {
        say(&format!("early mounts: {e}"));
    }
    // SAFETY: umask only changes this process's file-creation mask.
    unsafe { libc::umask(0o022) };
    // SAFETY: setting process environment before any other thread exists (PID 1 is single-threaded
    // here), so no concurrent getenv can observe a torn environment.
    unsafe {
        std::env::set_var("PATH", PATH_ENV);
        std::env::set_var("HOME", "/root");
        std::env::set_var("TERM", "linux");
    }
    let cmdline = fs::read_to_string("/proc/cmdline").unwrap_or_default();
    let etc_hostname = fs::read_to_string("/etc/hostname").unwrap_or_default();
    let hostname = cmdline_value(&cmdline, "isthmus.hostname").unwrap_or(etc_hostname.trim());
    if !hostname.is_empty() {
        set_hostname(hostname);
    }
    let (loaded, failed) = load_modules(Path::new(MODULE_LIST));
    let data = match mount_by_partname(DATA_PARTNAME, DATA_DIR, "ext4", Duration::from_secs(5)) {
        Ok(dev) => dev,
        Err(e) => {
            say(&format!("data partition: {e}; configuration will not persist"));
            "none".to_string()
        }
    };
    if let Err(e) = link_up("lo") {
        say(&format!("lo: {e}"));
    }
    run_rc_local(Path::new(RC_LOCAL), Duration::from_secs(20));
    let slot = booted_slot().unwrap_or_else(|_| "-".to_string());
    // `isthmus.bless=boot` marks a slot good at boot (images built with `--slot-b-blesses`);
    // otherwise the daemon's health gate does after an upgrade.
    if cmdline_value(&cmdline, "isthmus.bless") == Some("boot") {
        match bless_booted_slot() {
            Ok(()) => say(&format!("slot {slot} blessed")),
            Err(e) => say(&format!("bless slot {slot}: {e}")),
        }
    }
    // Kernel uptime: how long the whole boot took, as the console reader sees it.
    let uptime = fs::read_to_string("/proc/uptime").unwrap_or_default();
    let uptime = uptime.split_whitespace().next().unwrap_or("?");
    let _ = writeln!(
        io::stderr(),
        "{READY_LINE} (slot {slot}, {loaded} modules, {failed} failed, data {data}, init {} ms, up {uptime} s)",
        started.elapsed().as_millis()
    );
    let trial = crate::system::upgrade::trial_deadline(
        Path::new(crate::system::upgrade::IMAGE_RECORD),
        &slot,
    );
    if let Some(d) = trial {
        say(&format!(
            "slot {slot} is on trial after an upgrade: rebooting in {} s unless its health gate passes",
            d.as_secs()
        ));
    }
    supervise(trial.map(|d| (Instant::now() + d, slot)));
}

/// Runs the site's boot hook (a shell script on the data partition, so it survives upgrades)
/// before the daemon starts; stops it after `limit`.
fn run_rc_local(script: &Path, limit: Duration) {
    if !script.exists() || !Path::new(BUSYBOX).exists() {
        return;
    }
    let mut child = match Command::new(BUSYBOX)
        .arg("sh")
        .arg(script)
        .current_dir("/")
        .stdin(std::process::Stdio::null())
        .spawn()
    {
        Ok(c) => c,
        Err(e) => {
            say(&format!("{}: {e}", script.display()));
            return;
        }
    };
    let deadline = Instant::now() + limit;
    loop {
        match child.try_wait() {
            Ok(Some(status)) if status.success() => return,
            Ok(Some(status)) => {
                say(&format!("{} ended with {status}", script.display()));
                return;
            }
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                say(&format!(
                    "{} ran longer than {} s: stopped",
                    script.display(),
                    limit.as_secs()
                ));
                return;
            }
        }
    }
}

/// Parses `key=value` from a kernel command line.
fn cmdline_value<'a>(cmdline: &'a str, key: &str) -> Option<&'a str> {
    cmdline
        .split_ascii_whitespace()
        .find_map(|w| w.strip_prefix(key).and_then(|rest| rest.strip_prefix('=')))
}

/// The A/B slot the running kernel was booted from (`isthmus.slot=` on its command line).
pub fn booted_slot() -> Result<String, BootError> {
    let cmdline = fs::read_to_string("/proc/cmdline").map_err(sys("read /proc/cmdline"))?;
    cmdline_value(&cmdline, "isthmus.slot").map(str::to_string).ok_or(BootError::NoSlot)
}

fn mount(
    source: &str,
    target: &str,
    fstype: &str,
    flags: libc::c_ulong,
    data: &str,
) -> io::Result<()> {
    fs::create_dir_all(target)?;
    let (s, t, f, d) = (cstr(source), cstr(target), cstr(fstype), cstr(data));
    // SAFETY: all pointers are valid NUL-terminated strings that outlive the call.
    let rc = unsafe { libc::mount(s.as_ptr(), t.as_ptr(), f.as_ptr(), flags, d.as_ptr().cast()) };
    if rc == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
}

fn early_mounts() -> Result<(), BootError> {
    // devtmpfs first: Rust's own runtime and every later open of /dev/null need it.
    let nosuid = libc::MS_NOSUID;
    let _ = mount("devtmpfs", "/dev", "devtmpfs", nosuid, "mode=0755");
    reopen_console();
    let _ = fs::remove_file("/dev/fd");
    let _ = std::os::unix::fs::symlink("/proc/self/fd", "/dev/fd");
    let noexec = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
    mount("proc", "/proc", "proc", noexec, "").map_err(sys("mount /proc"))?;
    mount("sysfs", "/sys", "sysfs", noexec, "").map_err(sys("mount /sys"))?;
    mount(
        "devpts",
        "/dev/pts",
        "devpts",
        libc::MS_NOSUID | libc::MS_NOEXEC,
        "gid=5,mode=620,ptmxmode=666",
    )
    .map_err(sys("mount /dev/pts"))?;
    mount("tmpfs", "/run", "tmpfs", libc::MS_NOSUID | libc::MS_NODEV, "mode=0755")
        .map_err(sys("mount /run"))?;
    mount("tmpfs", "/tmp", "tmpfs", libc::MS_NOSUID | libc::MS_NODEV, "mode=1777")
        .map_err(sys("mount /tmp"))?;
    Ok(())
}

/// Points fds 0–2 at `/dev/console` (the kernel may have started us without them).
fn reopen_console() {
    let Ok(console) = fs::OpenOptions::new().read(true).write(true).open("/dev/console") else {
        return;
    };
    for fd in 0..3 {
        // SAFETY: dup2 onto the standard descriptors; `console` stays open across the calls.
        unsafe { libc::dup2(console.as_raw_fd(), fd) };
    }
}

fn set_hostname(name: &str) {
    // SAFETY: pointer and length describe `name`'s bytes, valid for the call.
    let rc = unsafe { libc::sethostname(name.as_ptr().cast(), name.len()) };
    if rc != 0 {
        say(&format!("sethostname {name}: {}", io::Error::last_os_error()));
    }
}

/// Loads every module of the list in order; returns (loaded or already present, failed).
fn load_modules(list: &Path) -> (usize, usize) {
    let Ok(text) = fs::read_to_string(list) else {
        say(&format!("no module list at {}", list.display()));
        return (0, 0);
    };
    let (mut ok, mut failed) = (0, 0);
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')) {
        let (path, params) = line.split_once(' ').unwrap_or((line, ""));
        match finit_module(Path::new(path), params) {
            Ok(()) => ok += 1,
            Err(e) => {
                // Some modules cannot load in every machine (jitterentropy_rng under TCG): go on.
                say(&format!("module {path}: {e}"));
                failed += 1;
            }
        }
    }
    (ok, failed)
}

fn finit_module(path: &Path, params: &str) -> io::Result<()> {
    let file = fs::File::open(path)?;
    let params = cstr(params);
    // SAFETY: finit_module reads the module from the open fd and the NUL-terminated params string,
    // both valid for the duration of the call.
    let rc = unsafe { libc::syscall(libc::SYS_finit_module, file.as_raw_fd(), params.as_ptr(), 0) };
    if rc == 0 {
        return Ok(());
    }
    let err = io::Error::last_os_error();
    if err.raw_os_error() == Some(libc::EEXIST) { Ok(()) } else { Err(err) }
}

/// The `/dev` node of the partition whose GPT name is `partname`, if the kernel knows it yet.
pub fn find_partition(partname: &str) -> Option<PathBuf> {
    find_partition_in(Path::new("/sys/class/block"), partname)
}

fn find_partition_in(class_block: &Path, partname: &str) -> Option<PathBuf> {
    let mut entries: Vec<_> = fs::read_dir(class_block).ok()?.flatten().map(|e| e.path()).collect();
    entries.sort();
    entries.into_iter().find_map(|dir| {
        let uevent = fs::read_to_string(dir.join("uevent")).ok()?;
        let mut devname = None;
        let mut matches = false;
        for line in uevent.lines() {
            if let Some(v) = line.strip_prefix("DEVNAME=") {
                devname = Some(v.to_string());
            } else if line.strip_prefix("PARTNAME=") == Some(partname) {
                matches = true;
            }
        }
        if matches { devname.map(|d| Path::new("/dev").join(d)) } else { None }
    })
}

/// Waits up to `wait` for the partition named `partname` and mounts it; returns its device path.
fn mount_by_partname(
    partname: &str,
    dir: &str,
    fstype: &str,
    wait: Duration,
) -> Result<String, BootError> {
    let deadline = Instant::now() + wait;
    let dev = loop {
        if let Some(dev) = find_partition(partname) {
            break dev;
        }
        if Instant::now() >= deadline {
            return Err(BootError::NoPartition(partname.to_string()));
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let dev = dev.to_string_lossy().into_owned();
    mount(&dev, dir, fstype, libc::MS_NOATIME | libc::MS_NODEV | libc::MS_NOSUID, "")
        .map_err(sys(format!("mount {dev} on {dir} ({fstype})")))?;
    Ok(dev)
}

/// Sets IFF_UP on an interface with the classic ioctl (no netlink needed for loopback).
fn link_up(name: &str) -> Result<(), BootError> {
    // SAFETY: plain socket(2) call; the fd is owned below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(last_os_error("socket"));
    }
    // SAFETY: fd is a fresh descriptor nobody else owns.
    let sock = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(name.bytes().take(libc::IFNAMSIZ - 1)) {
        *dst = src as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS fills the flags of the ifreq we own.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS as _, &mut req) } < 0 {
        return Err(last_os_error(format!("SIOCGIFFLAGS {name}")));
    }
    // SAFETY: after SIOCGIFFLAGS the union holds the flags member.
    unsafe { req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short };
    // SAFETY: SIOCSIFFLAGS reads the ifreq we own.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS as _, &req) } < 0 {
        return Err(last_os_error(format!("SIOCSIFFLAGS {name}")));
    }
    Ok(())
}

/// Marks the booted slot good for systemd-boot: renames `EFI/Linux/fw-<slot>+L[-D].efi` to
/// `fw-<slot>.efi` on the ESP so it is no longer counted (systemd's Automatic Boot Assessment).
/// The daemon calls this once its health gates pass.
pub fn bless_booted_slot() -> Result<(), BootError> {
    let slot = booted_slot()?;
    let esp = EspMount::mount()?;
    bless_in(&esp.path().join("EFI/Linux"), &slot)
}

/// The ESP, mounted (by GPT partition name) for as long as this lives; synced and unmounted on
/// drop unless it was mounted already.
#[derive(Debug)]
pub struct EspMount {
    ours: bool,
    // One user of the ESP at a time: a status read must not unmount it under an upgrade or a bless.
    _one: std::sync::MutexGuard<'static, ()>,
}

static ESP_USE: std::sync::Mutex<()> = std::sync::Mutex::new(());

impl EspMount {
    /// Mounts the ESP on `/run/esp` unless it is mounted there already.
    pub fn mount() -> Result<EspMount, BootError> {
        let one = ESP_USE.lock().unwrap_or_else(|p| p.into_inner());
        if find_partition(ESP_PARTNAME).is_none() {
            return Err(BootError::NoPartition(ESP_PARTNAME.to_string()));
        }
        let mounted = Path::new(ESP_DIR).join("EFI").exists();
        if !mounted {
            mount_by_partname(ESP_PARTNAME, ESP_DIR, "vfat", Duration::from_secs(1))?;
        }
        Ok(EspMount { ours: !mounted, _one: one })
    }

    /// Where it is mounted.
    pub fn path(&self) -> &Path {
        Path::new(ESP_DIR)
    }
}

impl Drop for EspMount {
    fn drop(&mut self) {
        // SAFETY: sync(2) has no preconditions.
        unsafe { libc::sync() };
        if self.ours {
            let dir = cstr(ESP_DIR);
            // SAFETY: valid NUL-terminated path.
            unsafe { libc::umount(dir.as_ptr()) };
        }
    }
}

fn bless_in(dir: &Path, slot: &str) -> Result<(), BootError> {
    let prefix = format!("fw-{slot}+");
    let entries = fs::read_dir(dir).map_err(sys(format!("read {}", dir.display())))?;
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with(&prefix) && name.ends_with(".efi") {
            let to = dir.join(format!("fw-{slot}.efi"));
            fs::rename(entry.path(), &to).map_err(sys(format!("rename {name}")))?;
            return Ok(());
        }
    }
    Err(BootError::NotCounted(slot.to_string()))
}

/// What PID 1 does when asked to stop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stop {
    Reboot,
    PowerOff,
    Halt,
}

fn signal_set(signals: &[libc::c_int]) -> libc::sigset_t {
    // SAFETY: sigemptyset initialises the set we own before any use.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid sigset_t.
    unsafe { libc::sigemptyset(&mut set) };
    for &s in signals {
        // SAFETY: `set` is initialised; `s` is a valid signal number.
        unsafe { libc::sigaddset(&mut set, s) };
    }
    set
}

const HANDLED: [libc::c_int; 6] =
    [libc::SIGCHLD, libc::SIGTERM, libc::SIGINT, libc::SIGUSR1, libc::SIGUSR2, libc::SIGHUP];

/// The PID 1 loop. Returns only in a freshly forked daemon process. `trial`: when to reboot if
/// the named slot is still on trial by then.
fn supervise(trial: Option<(Instant, String)>) {
    let (mut trial_due, trial_slot) = match trial {
        Some((t, s)) => (Some(t), s),
        None => (None, String::new()),
    };
    let set = signal_set(&HANDLED);
    // SAFETY: blocks the signals we take synchronously with sigtimedwait; single-threaded here.
    unsafe { libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    // Ctrl-Alt-Del sends SIGINT to PID 1 instead of rebooting at once.
    // SAFETY: reboot(2) with the CAD_OFF command only changes the Ctrl-Alt-Del behaviour.
    unsafe { libc::reboot(libc::LINUX_REBOOT_CMD_CAD_OFF) };

    let mut daemon: Option<libc::pid_t> = None;
    let mut daemon_started = Instant::now();
    let mut daemon_backoff = Duration::from_secs(1);
    let mut daemon_due = Some(Instant::now());
    let mut shell: Option<libc::pid_t> = None;
    let mut shell_due = Path::new(BUSYBOX).exists().then(Instant::now);

    loop {
        let now = Instant::now();
        if daemon_due.is_some_and(|t| t <= now) {
            daemon_due = None;
            // SAFETY: fork in a single-threaded process; the child only returns into main.
            match unsafe { libc::fork() } {
                0 => {
                    // The daemon: default signal mask, its own session, back to main.
                    // SAFETY: unblocks the signals blocked above, in this process only.
                    unsafe { libc::sigprocmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut()) };
                    // SAFETY: setsid has no preconditions.
                    unsafe { libc::setsid() };
                    IN_IMAGE.store(true, Ordering::Relaxed);
                    return;
                }
                pid if pid > 0 => {
                    daemon = Some(pid);
                    daemon_started = Instant::now();
                }
                _ => {
                    say(&format!("fork daemon: {}", io::Error::last_os_error()));
                    daemon_due = Some(now + daemon_backoff);
                }
            }
        }
        if shell_due.is_some_and(|t| t <= now) {
            shell_due = None;
            match spawn_shell(&set) {
                Ok(pid) => shell = Some(pid),
                Err(e) => say(&format!("console shell: {e}")),
            }
        }

        if trial_due.is_some_and(|t| t <= now) {
            trial_due = None;
            let record = Path::new(crate::system::upgrade::IMAGE_RECORD);
            if crate::system::upgrade::still_on_trial(record, &trial_slot) {
                say(&format!(
                    "slot {trial_slot} did not pass its health gate in time: rebooting (the firmware falls back once its tries run out)"
                ));
                shutdown(Stop::Reboot);
            }
        }
        let next = [daemon_due, shell_due, trial_due].into_iter().flatten().min();
        let wait =
            next.map_or(Duration::from_secs(60), |t| t.saturating_duration_since(Instant::now()));
        // SAFETY: timespec is plain old data; all-zero is valid. (Built field by field because
        // its field types differ between the gnu and musl targets.)
        let mut timeout: libc::timespec = unsafe { std::mem::zeroed() };
        timeout.tv_sec = wait.as_secs() as _;
        timeout.tv_nsec = wait.subsec_nanos() as _;
        // SAFETY: `set` is initialised; a null siginfo pointer is allowed.
        let sig = unsafe { libc::sigtimedwait(&set, std::ptr::null_mut(), &timeout) };
        let stop = match sig {
            libc::SIGTERM | libc::SIGINT => Some(Stop::Reboot),
            libc::SIGUSR2 => Some(Stop::PowerOff),
            libc::SIGUSR1 => Some(Stop::Halt),
            _ => None,
        };
        if let Some(stop) = stop {
            shutdown(stop);
        }
        // Reap everything: our children and every orphan reparented to PID 1.
        loop {
            let mut status = 0;
            // SAFETY: waitpid writes the status into our local.
            let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
            if pid <= 0 {
                break;
            }
            if Some(pid) == daemon {
                daemon = None;
                let ran = daemon_started.elapsed();
                if ran > Duration::from_secs(60) {
                    daemon_backoff = Duration::from_secs(1);
                }
                say(&format!(
                    "isthmusd (pid {pid}) {}; restarting in {} s",
                    describe_status(status),
                    daemon_backoff.as_secs()
                ));
                daemon_due = Some(Instant::now() + daemon_backoff);
                daemon_backoff = (daemon_backoff * 2).min(Duration::from_secs(60));
            } else if Some(pid) == shell {
                shell = None;
                shell_due = Some(Instant::now() + Duration::from_secs(1));
            }
        }
    }
}

fn describe_status(status: libc::c_int) -> String {
    if libc::WIFEXITED(status) {
        format!("exited with status {}", libc::WEXITSTATUS(status))
    } else if libc::WIFSIGNALED(status) {
        format!("killed by signal {}", libc::WTERMSIG(status))
    } else {
        format!("ended (wait status {status:#x})")
    }
}

/// A root shell on the serial console (BusyBox `setsid -c` makes the console its controlling tty,
/// so Ctrl-C works there).
fn spawn_shell(blocked: &libc::sigset_t) -> io::Result<libc::pid_t> {
    let mask = *blocked;
    let mut cmd = Command::new(BUSYBOX);
    cmd.args(["setsid", "-c", SHELL, "-l"]).current_dir("/");
    // SAFETY: the closure runs in the forked child before exec and only calls the async-signal-safe
    // sigprocmask.
    unsafe {
        cmd.pre_exec(move || {
            libc::sigprocmask(libc::SIG_UNBLOCK, &mask, std::ptr::null_mut());
            Ok(())
        });
    }
    let child = cmd.spawn()?;
    Ok(child.id() as libc::pid_t)
}

/// Stops every process, syncs and unmounts the filesystems, then reboots, powers off or halts.
fn shutdown(stop: Stop) -> ! {
    say(&format!("{stop:?}: stopping processes"));
    // SAFETY: kill(-1) signals every process but PID 1 itself.
    unsafe { libc::kill(-1, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mut status = 0;
        // SAFETY: waitpid writes into our local.
        let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
        if pid < 0 {
            break; // ECHILD: nobody left
        }
        if Instant::now() >= deadline {
            // SAFETY: as above.
            unsafe { libc::kill(-1, libc::SIGKILL) };
            break;
        }
        if pid == 0 {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    // SAFETY: sync(2) has no preconditions.
    unsafe { libc::sync() };
    for dir in [ESP_DIR, DATA_DIR] {
        let d = cstr(dir);
        // SAFETY: valid NUL-terminated path.
        if unsafe { libc::umount(d.as_ptr()) } != 0 {
            let busy = io::Error::last_os_error();
            if busy.raw_os_error() != Some(libc::EINVAL) {
                // Still busy: at least make it clean on disk.
                // SAFETY: remount read-only of an existing mount point; null data is allowed.
                unsafe {
                    libc::mount(
                        std::ptr::null(),
                        d.as_ptr(),
                        std::ptr::null(),
                        libc::MS_REMOUNT | libc::MS_RDONLY,
                        std::ptr::null(),
                    )
                };
            }
        }
    }
    // SAFETY: sync(2) has no preconditions.
    unsafe { libc::sync() };
    let cmd = match stop {
        Stop::Reboot => libc::LINUX_REBOOT_CMD_RESTART,
        Stop::PowerOff => libc::LINUX_REBOOT_CMD_POWER_OFF,
        Stop::Halt => libc::LINUX_REBOOT_CMD_HALT,
    };
    let _ = writeln!(
        io::stderr(),
        "isthmus: {}",
        match stop {
            Stop::Reboot => "rebooting",
            Stop::PowerOff => "powering off",
            Stop::Halt => "halted",
        }
    );
    // SAFETY: reboot(2) as PID 1 after syncing; it does not return on success.
    unsafe { libc::reboot(cmd) };
    // reboot failed (not PID 1 or no privilege): nothing sane is left to do but wait.
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cmdline_values_are_found_by_exact_key() {
        let line = "console=ttyS0 isthmus.slotx=z isthmus.slot=b quiet isthmus.hostname=site-a\n";
        assert_eq!(cmdline_value(line, "isthmus.slot"), Some("b"));
        assert_eq!(cmdline_value(line, "isthmus.hostname"), Some("site-a"));
        assert_eq!(cmdline_value(line, "isthmus.none"), None);
    }

    #[test]
    fn partition_is_found_by_gpt_name_not_device_name() {
        let dir = std::env::temp_dir().join(format!("isthmus-pid1-{}", std::process::id()));
        for (dev, uevent) in [
            ("vda", "MAJOR=254\nMINOR=0\nDEVNAME=vda\nDEVTYPE=disk\n"),
            (
                "vda1",
                "MAJOR=254\nMINOR=1\nDEVNAME=vda1\nDEVTYPE=partition\nPARTN=1\nPARTNAME=isthmus-esp\n",
            ),
            ("nvme0n1p3", "DEVNAME=nvme0n1p3\nDEVTYPE=partition\nPARTN=3\nPARTNAME=isthmus-data\n"),
        ] {
            fs::create_dir_all(dir.join(dev)).unwrap();
            fs::write(dir.join(dev).join("uevent"), uevent).unwrap();
        }
        assert_eq!(find_partition_in(&dir, "isthmus-data"), Some(PathBuf::from("/dev/nvme0n1p3")));
        assert_eq!(find_partition_in(&dir, "isthmus-esp"), Some(PathBuf::from("/dev/vda1")));
        assert_eq!(find_partition_in(&dir, "isthmus-dat"), None);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn blessing_renames_only_the_booted_slots_counted_image() {
        let dir = std::env::temp_dir().join(format!("isthmus-bless-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("fw-a.efi"), b"a").unwrap();
        fs::write(dir.join("fw-b+2-1.efi"), b"b").unwrap();
        assert!(matches!(bless_in(&dir, "a"), Err(BootError::NotCounted(_))));
        bless_in(&dir, "b").unwrap();
        let mut names: Vec<_> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, ["fw-a.efi", "fw-b.efi"]);
        assert_eq!(fs::read(dir.join("fw-b.efi")).unwrap(), b"b");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn boot_returns_at_once_outside_the_image() {
        // The test harness is never PID 1: boot must be a no-op that returns.
        boot();
    }
}

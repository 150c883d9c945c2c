//! One QEMU virtual machine: how it is started (TCG or KVM, direct kernel boot or OVMF), its serial
//! console (a Unix socket QEMU serves, read continuously into memory and mirrored to a log file),
//! and a shell session over that console.

use std::fs;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use crate::{Error, Result};

/// The QEMU binary: `ISTHMUS_QEMU`, else the one `scripts/bootstrap.sh` unpacks into `.tools/`, else
/// `qemu-system-x86_64` on the PATH.
pub fn qemu_binary(root: &Path) -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("ISTHMUS_QEMU") {
        return Some(PathBuf::from(p));
    }
    let bundled = root.join(".tools/qemu/usr/bin/qemu-system-x86_64");
    if bundled.exists() {
        return Some(bundled);
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths).map(|d| d.join("qemu-system-x86_64")).find(|p| p.exists())
    })
}

/// How QEMU executes the guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Accel {
    /// Hardware virtualisation.
    Kvm,
    /// Software emulation (`-cpu max`).
    Tcg,
}

impl Accel {
    /// KVM when `/dev/kvm` is usable by stock kernels. The paravirtual `kvm_pvm` flavour found on some
    /// cloud hosts hangs stock kernels, so its presence means TCG. `ISTHMUS_ACCEL=tcg|kvm` overrides.
    pub fn detect() -> Accel {
        match std::env::var("ISTHMUS_ACCEL").as_deref() {
            Ok("tcg") => return Accel::Tcg,
            Ok("kvm") => return Accel::Kvm,
            _ => {}
        }
        let kvm_rw = fs::OpenOptions::new().read(true).write(true).open("/dev/kvm").is_ok();
        if kvm_rw && !Path::new("/sys/module/kvm_pvm").exists() { Accel::Kvm } else { Accel::Tcg }
    }

    fn args(self) -> [&'static str; 4] {
        match self {
            Accel::Kvm => ["-accel", "kvm", "-cpu", "host"],
            Accel::Tcg => ["-accel", "tcg", "-cpu", "max"],
        }
    }
}

/// How the VM boots.
#[derive(Clone, Debug)]
pub enum Boot {
    /// `-kernel/-initrd/-append` (fast; the firmware path is not exercised).
    Direct {
        /// The kernel.
        kernel: PathBuf,
        /// The initramfs.
        initrd: PathBuf,
        /// The command line.
        cmdline: String,
    },
    /// UEFI: OVMF boots systemd-boot from the disk's ESP, which picks a slot's kernel image.
    Uefi {
        /// The writable copy of `OVMF_VARS_4M.fd` for this VM.
        vars: PathBuf,
    },
}

/// OVMF's code and a pristine variable store.
pub const OVMF_CODE: &str = "/usr/share/OVMF/OVMF_CODE_4M.fd";
/// The template for each VM's variable store.
pub const OVMF_VARS: &str = "/usr/share/OVMF/OVMF_VARS_4M.fd";

/// A network card of the VM.
#[derive(Clone, Debug)]
pub struct Nic {
    /// The `-netdev` definition without its id.
    pub netdev: String,
    /// MAC address.
    pub mac: String,
}

/// Everything needed to start a VM.
#[derive(Clone, Debug)]
pub struct VmSpec {
    /// Short name, used for files and messages (e.g. `site-a`).
    pub name: String,
    /// The QEMU binary.
    pub qemu: PathBuf,
    /// Accelerator.
    pub accel: Accel,
    /// Boot method.
    pub boot: Boot,
    /// The disk (qcow2 overlay or raw), attached as virtio-blk.
    pub disk: PathBuf,
    /// Disk format (`qcow2` or `raw`).
    pub disk_format: String,
    /// NICs in PCI order (the guest names them eth0, eth1, ...).
    pub nics: Vec<Nic>,
    /// Memory in MiB.
    pub mem_mib: u32,
    /// Folder for the console socket and log.
    pub dir: PathBuf,
}

/// Console output collected so far; waiters are woken on each chunk.
#[derive(Default)]
struct Console {
    text: Mutex<String>,
    grew: Condvar,
}

/// A running VM. Dropping it kills QEMU.
pub struct Vm {
    /// Its name.
    pub name: String,
    child: Child,
    console: Arc<Console>,
    input: UnixStream,
    /// The console log file (everything the guest printed).
    pub log: PathBuf,
    /// When QEMU was started.
    pub started: Instant,
    cursor: usize,
    seq: u32,
}

impl std::fmt::Debug for Vm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vm").field("name", &self.name).field("pid", &self.child.id()).finish()
    }
}

impl Vm {
    /// Starts QEMU and connects to its serial console (QEMU waits for that connection before the
    /// guest runs, so no output is lost).
    pub fn start(spec: &VmSpec) -> Result<Vm> {
        fs::create_dir_all(&spec.dir).map_err(|e| Error::io(&spec.dir, e))?;
        let sock = spec.dir.join(format!("{}.console", spec.name));
        let log = spec.dir.join(format!("{}.log", spec.name));
        let _ = fs::remove_file(&sock);
        let mut cmd = Command::new(&spec.qemu);
        cmd.args(spec.accel.args())
            .args(["-machine", "q35", "-smp", "1", "-m", &spec.mem_mib.to_string()])
            .args(["-display", "none", "-monitor", "none", "-vga", "none", "-nodefaults"])
            .arg("-chardev")
            .arg(format!(
                "socket,id=ser0,path={},server=on,wait=on,logfile={}",
                sock.display(),
                log.display()
            ))
            .args(["-serial", "chardev:ser0"])
            .args(["-device", "virtio-rng-pci"])
            .arg("-drive")
            .arg(format!(
                "file={},format={},if=virtio,cache=unsafe",
                spec.disk.display(),
                spec.disk_format
            ));
        for dir in firmware_dirs(&spec.qemu) {
            cmd.arg("-L").arg(dir);
        }
        match &spec.boot {
            Boot::Direct { kernel, initrd, cmdline } => {
                cmd.arg("-kernel")
                    .arg(kernel)
                    .arg("-initrd")
                    .arg(initrd)
                    .args(["-append", cmdline]);
            }
            Boot::Uefi { vars } => {
                cmd.arg("-drive")
                    .arg(format!("if=pflash,format=raw,unit=0,readonly=on,file={OVMF_CODE}"))
                    .arg("-drive")
                    .arg(format!("if=pflash,format=raw,unit=1,file={}", vars.display()));
            }
        }
        for (i, nic) in spec.nics.iter().enumerate() {
            cmd.arg("-netdev").arg(format!("{},id=n{i}", nic.netdev));
            cmd.arg("-device").arg(format!(
                "virtio-net-pci,netdev=n{i},mac={},addr={:#x},romfile=",
                nic.mac,
                0x10 + i
            ));
        }
        let stderr_path = spec.dir.join(format!("{}.qemu-stderr", spec.name));
        let stderr = fs::File::create(&stderr_path).map_err(|e| Error::io(&stderr_path, e))?;
        cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(stderr);
        let started = Instant::now();
        let mut child = cmd.spawn().map_err(|e| Error::io(&spec.qemu, e))?;

        let deadline = Instant::now() + Duration::from_secs(10);
        let stream = loop {
            match UnixStream::connect(&sock) {
                Ok(s) => break s,
                Err(e) => {
                    if let Ok(Some(status)) = child.try_wait() {
                        let why = fs::read_to_string(&stderr_path).unwrap_or_default();
                        return Err(Error::Qemu(format!(
                            "{} exited ({status}): {}",
                            spec.name,
                            why.trim()
                        )));
                    }
                    if Instant::now() > deadline {
                        let _ = child.kill();
                        let _ = child.wait();
                        return Err(Error::Qemu(format!(
                            "{}: console socket never appeared: {e}",
                            spec.name
                        )));
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        };
        let console = Arc::new(Console::default());
        let mut reader = stream.try_clone().map_err(|e| Error::io(&sock, e))?;
        let sink = Arc::clone(&console);
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = reader.read(&mut buf) {
                if n == 0 {
                    break;
                }
                let mut text = sink.text.lock().unwrap_or_else(|p| p.into_inner());
                text.push_str(&String::from_utf8_lossy(&buf[..n]).replace('\r', ""));
                sink.grew.notify_all();
            }
        });
        Ok(Vm {
            name: spec.name.clone(),
            child,
            console,
            input: stream,
            log,
            started,
            cursor: 0,
            seq: 0,
        })
    }

    /// QEMU's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything the console printed so far.
    pub fn output(&self) -> String {
        self.console.text.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Waits until `needle` appears after the read cursor; returns the line holding it and moves the
    /// cursor past it.
    pub fn wait_for(&mut self, needle: &str, timeout: Duration) -> Result<String> {
        let deadline = Instant::now() + timeout;
        let mut text = self.console.text.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            // The whole line: wait for its end too.
            if let Some(at) = text[self.cursor..].find(needle) {
                let at = self.cursor + at;
                if let Some(nl) = text[at..].find('\n') {
                    let start = text[..at].rfind('\n').map_or(0, |i| i + 1);
                    let end = at + nl;
                    self.cursor = end;
                    return Ok(text[start..end].to_string());
                }
            }
            let now = Instant::now();
            if now >= deadline {
                let tail: String =
                    text.chars().rev().take(1500).collect::<Vec<_>>().into_iter().rev().collect();
                return Err(Error::Timeout(format!(
                    "{}: no {needle:?} on the console within {} s; console tail:\n{tail}",
                    self.name,
                    timeout.as_secs()
                )));
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(Error::Qemu(format!(
                    "{}: QEMU exited ({status}) waiting for {needle:?}",
                    self.name
                )));
            }
            let wait = (deadline - now).min(Duration::from_millis(200));
            text = self.console.grew.wait_timeout(text, wait).unwrap_or_else(|p| p.into_inner()).0;
        }
    }

    /// Types a line on the console.
    pub fn send(&mut self, line: &str) -> Result<()> {
        let name = self.name.clone();
        self.input
            .write_all(format!("{line}\n").as_bytes())
            .map_err(|e| Error::Qemu(format!("{name}: console write: {e}")))
    }

    /// Waits for the console shell and turns its echo off, so command output is clean.
    pub fn wait_for_shell(&mut self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            self.send("stty -echo; echo SHELL\"\"UP")?;
            match self.wait_for("SHELLUP", Duration::from_secs(2)) {
                Ok(_) => return Ok(()),
                Err(e) if Instant::now() >= deadline => return Err(e),
                Err(_) => {}
            }
        }
    }

    /// Runs a shell line on the console and returns (exit status, output). The markers are split by
    /// quotes so an echoed command line never matches them.
    pub fn sh(&mut self, line: &str, timeout: Duration) -> Result<(i32, String)> {
        self.seq += 1;
        let n = self.seq;
        self.send(&format!("echo B\"\"EGIN{n}; {line}; echo E\"\"ND{n}=$?"))?;
        self.wait_for(&format!("BEGIN{n}"), timeout)?;
        let begin = self.cursor;
        let end_line = self.wait_for(&format!("END{n}="), timeout)?;
        let status = end_line.rsplit('=').next().and_then(|s| s.trim().parse().ok()).unwrap_or(-1);
        let text = self.console.text.lock().unwrap_or_else(|p| p.into_inner());
        // Output without a final newline shares its last line with the end marker.
        let marker = format!("END{n}=");
        let body = &text[begin..self.cursor];
        let out = body.rfind(&marker).map_or(body, |at| &body[..at]).trim().to_string();
        Ok((status, out))
    }

    /// Runs a shell line that must succeed; returns its output.
    pub fn sh_ok(&mut self, line: &str, timeout: Duration) -> Result<String> {
        let (status, out) = self.sh(line, timeout)?;
        if status != 0 {
            return Err(Error::Guest(format!(
                "{}: `{line}` failed with status {status}: {out}",
                self.name
            )));
        }
        Ok(out)
    }

    /// Asks the guest to power off and waits for QEMU to exit (kills it after `timeout`).
    pub fn shutdown(mut self, timeout: Duration) {
        let _ = self.send("poweroff");
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        // Drop kills it.
    }

    /// Closes the lab's console connection so an operator can attach to the socket (QEMU serves one
    /// client at a time); the log file keeps recording.
    pub fn detach_console(&mut self) {
        let _ = self.input.shutdown(std::net::Shutdown::Both);
    }

    /// The LAN host's anchor process, if the boot hook (or the lab) created one.
    pub fn lan_host_pid(&mut self) -> Result<Option<u32>> {
        let (_, out) = self.sh("cat /run/lan-host.pid 2>/dev/null", Duration::from_secs(30))?;
        Ok(out.lines().last().and_then(|l| l.trim().parse().ok()))
    }

    /// True while QEMU runs.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// QEMU looks for its option ROMs next to itself (`../share/qemu`); the unpacked copy in `.tools`
/// may lack them, so the system's folders are added with `-L` when present.
fn firmware_dirs(qemu: &Path) -> Vec<PathBuf> {
    let bundled =
        qemu.parent().and_then(Path::parent).map(|p| p.join("share/qemu/linuxboot_dma.bin"));
    if bundled.is_some_and(|p| p.exists()) {
        return vec![];
    }
    ["/usr/share/qemu", "/usr/share/seabios"]
        .iter()
        .map(PathBuf::from)
        .filter(|p| p.exists())
        .collect()
}

/// Creates a qcow2 overlay on `base` (the base image stays untouched; every boot test starts fresh).
pub fn overlay(base: &Path, format: &str, out: &Path) -> Result<()> {
    let _ = fs::remove_file(out);
    let status = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-F", format, "-b"])
        .arg(base)
        .arg(out)
        .status()
        .map_err(|e| Error::io(Path::new("qemu-img"), e))?;
    if !status.success() {
        return Err(Error::Qemu(format!("qemu-img create overlay on {} failed", base.display())));
    }
    Ok(())
}

/// A fresh copy of OVMF's variable store (OVMF writes to it; systemd-boot stores its state there).
pub fn fresh_vars(out: &Path) -> Result<()> {
    fs::copy(OVMF_VARS, out).map_err(|e| Error::io(Path::new(OVMF_VARS), e))?;
    Ok(())
}

/// A free TCP port on 127.0.0.1 (bound, read, released: QEMU takes it right after).
pub fn free_tcp_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")
        .map_err(|e| Error::io(Path::new("127.0.0.1:0"), e))?;
    Ok(l.local_addr().map_err(|e| Error::io(Path::new("127.0.0.1:0"), e))?.port())
}

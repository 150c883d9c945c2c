//! `isthmus-image` builds the bootable Isthmus disk image without loop devices, mounts or root
//! privileges beyond what `apt-get download` needs, so it runs in CI as it is.
//!
//! The pipeline ([`build`]):
//!
//! 1. **Kernel** ([`kernel`]): Debian's `linux-image-{cloud-,}amd64` meta package names the versioned
//!    kernel package; both `.deb` files are cached in `build/cache`, unpacked with `dpkg-deb -x`, and
//!    `depmod` indexes the unpacked tree. The module set the appliance needs is resolved with
//!    `modprobe -d ROOT -S VERSION --show-depends`, which gives the load order.
//! 2. **Initramfs** ([`cpio`]): a reproducible newc archive (sorted, one mtime, owner 0:0, `gzip -n`)
//!    holding the static musl `isthmusd` as `/init`, the modules and their order
//!    (`/etc/isthmus/modules.list`), BusyBox for the console shell, and the default plugins under
//!    `/usr/share/isthmus/plugins`.
//! 3. **Unified kernel images** ([`disk::make_uki`]): the `.osrel`, `.cmdline`, `.linux` and `.initrd`
//!    sections are added with `objcopy` onto systemd's EFI stub, one image per A/B slot, named for
//!    systemd-boot's boot counting (`EFI/Linux/fw-b+3.efi`: three tries; renamed without the counter
//!    once the firmware blesses itself).
//! 4. **Disk** ([`disk`]): a FAT32 ESP (`mkfs.vfat`, `mmd`/`mcopy`) with systemd-boot as
//!    `EFI/BOOT/BOOTX64.EFI`, an ext4 data partition made from a folder (`mke2fs -d`) with the GPT
//!    partition name `isthmus-data`, a GPT from `sgdisk` with fixed GUIDs, the partitions copied in at
//!    their offsets; then a compressed qcow2 (`qemu-img convert -c`).
//!
//! Everything is stamped with `SOURCE_DATE_EPOCH` (the last commit's time when unset), GUIDs and
//! volume IDs are fixed: the same inputs give the same bytes (see `docs/image.md` for the details
//! and what is checked).

pub mod cpio;
pub mod disk;
pub mod kernel;

use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// What can go wrong while building the image.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A tool could not be started (not installed?).
    #[error("cannot run {tool}: {source} (run `make bootstrap`)")]
    Spawn {
        /// The program.
        tool: String,
        /// Why it did not start.
        source: std::io::Error,
    },
    /// A tool ran and failed.
    #[error("{tool} failed ({status}): {stderr}")]
    Tool {
        /// The command line, shortened to the program and its first arguments.
        tool: String,
        /// Its exit status.
        status: String,
        /// The tail of its standard error.
        stderr: String,
    },
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// An input is missing or malformed.
    #[error("{0}")]
    Input(String),
}

/// Shorthand for this crate's results.
pub type Result<T> = std::result::Result<T, Error>;

pub(crate) fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io { path: path.to_path_buf(), source }
}

/// Runs a command, returning its stdout; a failure names the command and carries its stderr.
pub(crate) fn run(cmd: &mut Command) -> Result<Vec<u8>> {
    let tool = std::iter::once(cmd.get_program())
        .chain(cmd.get_args().take(3))
        .map(|s| s.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ");
    let out = cmd.output().map_err(|source| Error::Spawn { tool: tool.clone(), source })?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<_> = stderr.lines().rev().take(6).collect();
        return Err(Error::Tool {
            tool,
            status: out.status.to_string(),
            stderr: tail.into_iter().rev().collect::<Vec<_>>().join(" | "),
        });
    }
    Ok(out.stdout)
}

/// Which Debian kernel flavour the image carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Flavour {
    /// `linux-image-cloud-amd64`: small, virtio only; for VMs and the lab.
    Cloud,
    /// `linux-image-amd64`: carries the SATA, NVMe, USB and NIC drivers real appliances need.
    Generic,
}

impl Flavour {
    /// The Debian meta package that follows the newest kernel of this flavour.
    pub fn meta_package(self) -> &'static str {
        match self {
            Flavour::Cloud => "linux-image-cloud-amd64",
            Flavour::Generic => "linux-image-amd64",
        }
    }
}

impl FromStr for Flavour {
    type Err = Error;
    fn from_str(s: &str) -> Result<Flavour> {
        match s {
            "cloud" => Ok(Flavour::Cloud),
            "generic" => Ok(Flavour::Generic),
            other => Err(Error::Input(format!("unknown kernel flavour {other:?} (cloud|generic)"))),
        }
    }
}

impl fmt::Display for Flavour {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Flavour::Cloud => "cloud",
            Flavour::Generic => "generic",
        })
    }
}

/// How to build.
#[derive(Clone, Debug)]
pub struct Options {
    /// The workspace root (holds `plugins/`, `Cargo.toml`).
    pub root: PathBuf,
    /// Output folder (default `ROOT/build`).
    pub out: PathBuf,
    /// Download cache and unpacked kernels (default `ROOT/build/cache`), shared between outputs.
    pub cache: PathBuf,
    /// Kernel flavour.
    pub flavour: Flavour,
    /// Use this `isthmusd` instead of building the musl binary.
    pub daemon: Option<PathBuf>,
    /// Download the kernel packages again even when cached (to pick up a newer kernel).
    pub refresh: bool,
    /// Also put the firmware in slot B as an upgrade on trial (`fw-b+N.efi`, a newer image version),
    /// the state `isthmus system upgrade` leaves before rebooting. `None`: slot B is empty.
    pub slot_b_tries: Option<u32>,
    /// Slot B blesses itself at boot (`isthmus.bless=boot`), standing in for the daemon's health gates.
    pub slot_b_blesses: bool,
    /// Timestamp for every file in the image (default: `SOURCE_DATE_EPOCH`, else the last commit's
    /// time).
    pub source_date_epoch: Option<u64>,
    /// ESP size in MiB (holds both slots' kernel images).
    pub esp_mib: u64,
    /// Data partition size in MiB.
    pub data_mib: u64,
    /// The firmware version stamped into the kernel images (`IMAGE_VERSION`, which systemd-boot
    /// sorts slots by). Default: the crate version. An upgrade must carry a newer one.
    pub version: Option<String>,
    /// Kernel modules left out of the initramfs (e.g. `tun`, to build a firmware that cannot bring
    /// its tunnels up and so fails its health gate after an upgrade).
    pub omit_modules: Vec<String>,
    /// Files seeded into the data partition: (path in it, content, mode). The lab puts its
    /// first-boot configurations and an `rc.local` there.
    pub data_files: Vec<(String, Vec<u8>, u32)>,
}

impl Options {
    /// Defaults for a workspace at `root`.
    pub fn new(root: &Path) -> Options {
        Options {
            root: root.to_path_buf(),
            out: root.join("build"),
            cache: root.join("build/cache"),
            flavour: Flavour::Cloud,
            daemon: None,
            refresh: false,
            slot_b_tries: None,
            slot_b_blesses: false,
            source_date_epoch: None,
            esp_mib: 128,
            data_mib: 64,
            version: None,
            omit_modules: Vec::new(),
            data_files: Vec::new(),
        }
    }
}

/// The Isthmus workspace: the nearest folder at or above the current directory that holds both
/// `Cargo.toml` and `image/Cargo.toml` (cargo runs tests in the crate's folder, `make` at the
/// top), else the one this crate was compiled in.
pub fn workspace_root() -> PathBuf {
    let is_root = |d: &Path| d.join("Cargo.toml").is_file() && d.join("image/Cargo.toml").is_file();
    if let Ok(cwd) = std::env::current_dir()
        && let Some(found) = cwd.ancestors().find(|d| is_root(d))
    {
        return found.to_path_buf();
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().map(Path::to_path_buf).unwrap_or_default()
}

/// What was built, written to `OUT/manifest.json` (the lab and tests read it).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Manifest {
    /// The firmware version (`IMAGE_VERSION`).
    pub version: String,
    /// Kernel flavour.
    pub flavour: Flavour,
    /// Kernel release, e.g. `6.1.0-56-cloud-amd64`.
    pub kernel_release: String,
    /// The kernel, for direct boot (`qemu -kernel`).
    pub vmlinuz: PathBuf,
    /// The initramfs, for direct boot (`qemu -initrd`).
    pub initrd: PathBuf,
    /// The command line slot A's kernel image carries.
    pub cmdline: String,
    /// The raw GPT disk image.
    pub raw: PathBuf,
    /// The compressed qcow2 disk image.
    pub qcow2: PathBuf,
    /// Bytes of the raw image.
    pub raw_bytes: u64,
    /// Bytes of the compressed qcow2 image.
    pub qcow2_bytes: u64,
    /// Bytes of the initramfs.
    pub initrd_bytes: u64,
    /// Modules loaded at boot, in order (paths inside the initramfs).
    pub modules: Vec<String>,
    /// Files on the ESP.
    pub esp_files: Vec<String>,
    /// `SOURCE_DATE_EPOCH` the build used.
    pub source_date_epoch: u64,
    /// The upgrade file: the firmware as one unified kernel image (`isthmus-VERSION.efi`), what
    /// `isthmus system upgrade` uploads. Its `.sha256` sits next to it.
    #[serde(default)]
    pub upgrade: PathBuf,
}

/// The firmware version stamped into the image.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The kernel command line common to every slot (`isthmus.slot=` is appended per slot).
pub const BASE_CMDLINE: &str = "console=tty0 console=ttyS0,115200 quiet panic=10";

/// Builds the whole image; see the crate docs for the steps.
pub fn build(opts: &Options) -> Result<Manifest> {
    let out = &opts.out;
    let cache = &opts.cache;
    fs::create_dir_all(cache).map_err(io_err(cache))?;
    fs::create_dir_all(out).map_err(io_err(out))?;
    let epoch = opts.source_date_epoch.unwrap_or_else(|| source_date_epoch(&opts.root));

    let daemon = match &opts.daemon {
        Some(p) => p.clone(),
        None => build_daemon(&opts.root)?,
    };
    let kernel = kernel::fetch(cache, &cache.join("kernel"), opts.flavour, opts.refresh)?;
    let wanted: Vec<&str> = kernel::wanted_modules(opts.flavour)
        .into_iter()
        .filter(|m| !opts.omit_modules.iter().any(|o| o == m))
        .collect();
    let mut modules = kernel::resolve_modules(&kernel, &wanted)?;
    // An omitted module stays out even when another one depends on it.
    modules.retain(|m| {
        let file = m.rel.rsplit('/').next().unwrap_or("").trim_end_matches(".ko");
        !opts.omit_modules.iter().any(|o| o.replace('-', "_") == file.replace('-', "_"))
    });
    let version = opts.version.clone().unwrap_or_else(|| VERSION.to_string());
    let plugins = default_plugins(&opts.root)?;

    let initrd_path = out.join("initrd.img");
    let module_list = disk::write_initramfs(&disk::InitramfsInputs {
        daemon: &daemon,
        busybox: Path::new("/bin/busybox"),
        kernel: &kernel,
        modules: &modules,
        plugins: &plugins,
        version: &version,
        epoch,
        out: &initrd_path,
    })?;
    let vmlinuz = out.join("vmlinuz");
    fs::copy(&kernel.vmlinuz, &vmlinuz).map_err(io_err(&vmlinuz))?;

    let work = out.join("work");
    fs::create_dir_all(&work).map_err(io_err(&work))?;
    let cmdline_a = format!("{BASE_CMDLINE} isthmus.slot=a");
    let mut esp_files = vec![];
    let uki_a = work.join("fw-a.efi");
    disk::make_uki(&vmlinuz, &initrd_path, &cmdline_a, &os_release(&version, "a"), epoch, &uki_a)?;
    esp_files.push(("EFI/Linux/fw-a.efi".to_string(), uki_a.clone()));
    // The upgrade file is slot A's image: the daemon retargets its `isthmus.slot=` when it writes
    // it into the other slot.
    let upgrade = out.join(format!("isthmus-{version}.efi"));
    fs::copy(&uki_a, &upgrade).map_err(io_err(&upgrade))?;
    let digest = run(Command::new("sha256sum").arg(&upgrade))?;
    let digest = String::from_utf8_lossy(&digest);
    let digest = digest.split_whitespace().next().unwrap_or("");
    let sum = out.join(format!("isthmus-{version}.efi.sha256"));
    fs::write(&sum, format!("{digest}  isthmus-{version}.efi\n")).map_err(io_err(&sum))?;
    if let Some(tries) = opts.slot_b_tries {
        let mut cmdline_b = format!("{BASE_CMDLINE} isthmus.slot=b");
        if opts.slot_b_blesses {
            cmdline_b.push_str(" isthmus.bless=boot");
        }
        // The trial slot carries a newer version, as an upgrade would.
        let uki_b = work.join("fw-b.efi");
        disk::make_uki(
            &vmlinuz,
            &initrd_path,
            &cmdline_b,
            &os_release(&format!("{version}.1"), "b"),
            epoch,
            &uki_b,
        )?;
        esp_files.push((format!("EFI/Linux/fw-b+{tries}.efi"), uki_b));
    }

    let raw = out.join("isthmus.img");
    let qcow2 = out.join("isthmus.qcow2");
    disk::assemble(&disk::DiskInputs {
        esp_files: &esp_files,
        data_files: &opts.data_files,
        data_mib: opts.data_mib,
        esp_mib: opts.esp_mib,
        epoch,
        work: &work,
        out: &raw,
    })?;
    disk::to_qcow2(&raw, &qcow2)?;

    let size = |p: &Path| fs::metadata(p).map(|m| m.len()).map_err(io_err(p));
    let manifest = Manifest {
        version: version.clone(),
        flavour: opts.flavour,
        kernel_release: kernel.release.clone(),
        vmlinuz,
        initrd: initrd_path.clone(),
        cmdline: cmdline_a,
        raw_bytes: size(&raw)?,
        qcow2_bytes: size(&qcow2)?,
        initrd_bytes: size(&initrd_path)?,
        raw,
        qcow2,
        modules: module_list,
        esp_files: esp_files.iter().map(|(n, _)| n.clone()).collect(),
        source_date_epoch: epoch,
        upgrade,
    };
    let path = out.join("manifest.json");
    let json = serde_json::to_vec_pretty(&manifest).map_err(|e| Error::Input(e.to_string()))?;
    fs::write(&path, json).map_err(io_err(&path))?;
    Ok(manifest)
}

/// Reads the manifest a previous build wrote into `out`.
pub fn read_manifest(out: &Path) -> Result<Manifest> {
    let path = out.join("manifest.json");
    let bytes = fs::read(&path).map_err(io_err(&path))?;
    serde_json::from_slice(&bytes).map_err(|e| Error::Input(format!("{}: {e}", path.display())))
}

fn os_release(version: &str, slot: &str) -> String {
    format!(
        "NAME=Isthmus\nID=isthmus\nPRETTY_NAME=\"Isthmus {version} (slot {slot})\"\nVERSION_ID={version}\n\
         IMAGE_ID=isthmus\nIMAGE_VERSION={version}\n"
    )
}

/// `SOURCE_DATE_EPOCH` from the environment, else the last commit's time, else 0.
pub fn source_date_epoch(root: &Path) -> u64 {
    if let Some(v) = std::env::var("SOURCE_DATE_EPOCH").ok().and_then(|v| v.trim().parse().ok()) {
        return v;
    }
    Command::new("git")
        .args(["-C"])
        .arg(root)
        .args(["log", "-1", "--format=%ct"])
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

/// The musl target the appliance's userland is built for.
pub const MUSL_TARGET: &str = "x86_64-unknown-linux-musl";

/// Builds the static `isthmusd` with cargo and returns its path. Uses its own target folder
/// (`TARGET/image-musl`) so a build started from inside `cargo test` or `cargo bench` does not wait
/// on the outer cargo's lock.
pub fn build_daemon(root: &Path) -> Result<PathBuf> {
    let base = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    let target_dir = base.join("image-musl");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(root)
        .args([
            "build",
            "--release",
            "--quiet",
            "-p",
            "isthmusd",
            "--bin",
            "isthmusd",
            "--target",
            MUSL_TARGET,
        ])
        .env("CARGO_TARGET_DIR", &target_dir);
    // C code in dependencies (ring) needs a compiler for the musl target. Without musl-tools, the host
    // gcc builds it fine for x86_64 (ring's C uses no libc beyond what musl provides).
    let musl_cc = "CC_x86_64_unknown_linux_musl";
    if std::env::var_os(musl_cc).is_none()
        && !on_path("x86_64-linux-musl-gcc")
        && !on_path("musl-gcc")
    {
        cmd.env(musl_cc, "gcc");
    }
    if let Err(musl) = run(&mut cmd) {
        // The image's userland is musl. If some crate does not build there, a statically linked
        // glibc build still boots (the daemon resolves no names through NSS); say so loudly.
        eprintln!(
            "isthmus-image: WARNING: isthmusd does not build for {MUSL_TARGET}: {musl}\n\
             isthmus-image: WARNING: falling back to {GNU_TARGET} with +crt-static"
        );
        return build_daemon_gnu_static(root, &base);
    }
    let bin = target_dir.join(MUSL_TARGET).join("release/isthmusd");
    if !bin.exists() {
        return Err(Error::Input(format!("cargo built no {}", bin.display())));
    }
    Ok(bin)
}

/// The fallback target for [`build_daemon`].
pub const GNU_TARGET: &str = "x86_64-unknown-linux-gnu";

fn build_daemon_gnu_static(root: &Path, base: &Path) -> Result<PathBuf> {
    let target_dir = base.join("image-gnu-static");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    run(Command::new(cargo)
        .current_dir(root)
        .args([
            "build",
            "--release",
            "--quiet",
            "-p",
            "isthmusd",
            "--bin",
            "isthmusd",
            "--target",
            GNU_TARGET,
        ])
        .env("CARGO_TARGET_DIR", &target_dir)
        .env("RUSTFLAGS", "-C target-feature=+crt-static"))?;
    let bin = target_dir.join(GNU_TARGET).join("release/isthmusd");
    if !bin.exists() {
        return Err(Error::Input(format!("cargo built no {}", bin.display())));
    }
    Ok(bin)
}

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|d| d.join(program).exists()))
}

/// A shipped plugin: a `.wasm` component that is not one of the hostile test programs
/// (`plugins/test-programs`, built as `test_*.wasm`).
fn is_default_plugin(p: &Path) -> bool {
    let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
    name.ends_with(".wasm") && !name.starts_with("test_")
}

/// The default plugins (`plugins/target/wasm32-wasip2/release/*.wasm`), building them when absent.
fn default_plugins(root: &Path) -> Result<Vec<PathBuf>> {
    let dir = root.join("plugins/target/wasm32-wasip2/release");
    let list = |dir: &Path| -> Vec<PathBuf> {
        let mut v: Vec<_> = fs::read_dir(dir)
            .map(|rd| rd.flatten().map(|e| e.path()).filter(|p| is_default_plugin(p)).collect())
            .unwrap_or_default();
        v.sort();
        v
    };
    let mut found = list(&dir);
    if found.is_empty() && root.join("plugins/Cargo.toml").exists() {
        eprintln!("isthmus-image: building the default plugins");
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        run(Command::new(cargo)
            .current_dir(root.join("plugins"))
            .env_remove("CARGO_TARGET_DIR")
            .args(["build", "--release", "--quiet"]))?;
        found = list(&dir);
    }
    if found.is_empty() {
        eprintln!("isthmus-image: warning: no default plugins found in {}", dir.display());
    }
    Ok(found)
}

/// True when `bytes` is an ELF executable without an interpreter (statically linked).
pub fn is_static_elf(bytes: &[u8]) -> bool {
    let rd16 = |o: usize| bytes.get(o..o + 2).map(|b| u16::from_le_bytes([b[0], b[1]]) as usize);
    let rd64 = |o: usize| {
        bytes.get(o..o + 8).map(|b| u64::from_le_bytes(b.try_into().unwrap_or([0; 8])) as usize)
    };
    if !bytes.starts_with(b"\x7fELF\x02\x01") {
        return false;
    }
    let (Some(phoff), Some(phentsize), Some(phnum)) = (rd64(0x20), rd16(0x36), rd16(0x38)) else {
        return false;
    };
    (0..phnum).all(|i| {
        let at = phoff + i * phentsize;
        // PT_INTERP = 3
        bytes.get(at..at + 4).is_some_and(|t| u32::from_le_bytes([t[0], t[1], t[2], t[3]]) != 3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flavours_parse_and_name_their_meta_package() {
        assert_eq!("cloud".parse::<Flavour>().unwrap().meta_package(), "linux-image-cloud-amd64");
        assert_eq!("generic".parse::<Flavour>().unwrap().meta_package(), "linux-image-amd64");
        let err = "rt".parse::<Flavour>().unwrap_err().to_string();
        assert!(err.contains("\"rt\"") && err.contains("cloud|generic"), "{err}");
    }

    #[test]
    fn static_elf_detection() {
        assert!(!is_static_elf(b"not an elf"));
        let busybox = fs::read("/bin/busybox").unwrap_or_default();
        let sh = fs::read("/bin/ls").unwrap_or_default();
        if !busybox.is_empty() && !sh.is_empty() {
            assert!(is_static_elf(&busybox), "busybox-static is static");
            assert!(!is_static_elf(&sh), "ls is dynamically linked");
        }
    }

    #[test]
    fn test_programs_are_not_shipped() {
        assert!(is_default_plugin(Path::new("/x/security_group.wasm")));
        assert!(!is_default_plugin(Path::new("/x/test_membomb.wasm")));
        assert!(!is_default_plugin(Path::new("/x/security_group.d")));
    }

    #[test]
    fn os_release_carries_the_version_systemd_boot_sorts_by() {
        let r = os_release("0.1.0.1", "b");
        assert!(r.contains("IMAGE_VERSION=0.1.0.1\n") && r.contains("ID=isthmus\n"));
    }
}

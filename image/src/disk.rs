//! The initramfs, the unified kernel images and the GPT disk, all assembled in plain files.
//!
//! Disk layout (GPT, 512-byte sectors, partitions 1 MiB aligned):
//!
//! ```text
//! LBA 0      protective MBR
//! LBA 1..33  primary GPT
//! 1 MiB      p1  isthmus-esp   FAT32, EF00: EFI/BOOT/BOOTX64.EFI (systemd-boot),
//!                               loader/loader.conf, EFI/Linux/fw-a.efi, fw-b[+N].efi
//! +ESP       p2  isthmus-data  ext4, 8300: isthmus/ (the daemon's store: configuration, plugins)
//! end-33     backup GPT
//! ```

use std::fs;
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::cpio::{Archive, Entry};
use crate::kernel::{Kernel, Module};
use crate::{Error, Result, io_err, is_static_elf, run};

/// Fixed identifiers: the image is reproducible and every appliance starts from the same bytes.
pub const DISK_GUID: &str = "5D7E3A1C-6F0B-4C2E-9A51-1C0DE0000001";
/// The ESP's partition GUID.
pub const ESP_GUID: &str = "5D7E3A1C-6F0B-4C2E-9A51-1C0DE0000002";
/// The data partition's GUID.
pub const DATA_GUID: &str = "5D7E3A1C-6F0B-4C2E-9A51-1C0DE0000003";
/// The data filesystem's UUID (also its directory hash seed).
pub const DATA_FS_UUID: &str = "5d7e3a1c-6f0b-4c2e-9a51-1c0de0000004";
/// GPT partition name of the ESP.
pub const ESP_PARTNAME: &str = "isthmus-esp";
/// GPT partition name (and ext4 label) of the data partition.
pub const DATA_PARTNAME: &str = "isthmus-data";

const SYSTEMD_BOOT: &str = "/usr/lib/systemd/boot/efi/systemd-bootx64.efi";
const EFI_STUB: &str = "/usr/lib/systemd/boot/efi/linuxx64.efi.stub";
const MIB: u64 = 1024 * 1024;

/// What goes into the initramfs.
#[derive(Debug)]
pub struct InitramfsInputs<'a> {
    /// The static `isthmusd` (becomes `/init`).
    pub daemon: &'a Path,
    /// A static BusyBox for the console shell.
    pub busybox: &'a Path,
    /// The unpacked kernel.
    pub kernel: &'a Kernel,
    /// Modules in load order.
    pub modules: &'a [Module],
    /// Default plugins.
    pub plugins: &'a [PathBuf],
    /// Firmware version.
    pub version: &'a str,
    /// Timestamp for every member.
    pub epoch: u64,
    /// Where to write the gzip-compressed archive.
    pub out: &'a Path,
}

fn read(path: &Path) -> Result<Vec<u8>> {
    fs::read(path).map_err(io_err(path))
}

/// Writes the initramfs; returns the module list as shipped (paths inside the initramfs).
pub fn write_initramfs(inp: &InitramfsInputs<'_>) -> Result<Vec<String>> {
    let mut a = Archive::new();
    for dir in [
        "dev", "proc", "sys", "run", "tmp", "data", "root", "bin", "sbin", "usr/bin", "usr/sbin",
        "etc",
    ] {
        a.add(dir, Entry::Dir { mode: if dir == "tmp" { 0o1777 } else { 0o755 } });
    }
    // The kernel opens /dev/console for init's fds 0-2 before init can mount devtmpfs.
    a.add("dev/console", Entry::CharDev { mode: 0o600, major: 5, minor: 1 });
    a.add("dev/null", Entry::CharDev { mode: 0o666, major: 1, minor: 3 });

    let daemon = strip(inp.daemon)?;
    if !is_static_elf(&daemon) {
        return Err(Error::Input(format!("{} is not a static executable", inp.daemon.display())));
    }
    a.add("init", Entry::File { mode: 0o755, data: daemon });
    a.add("usr/sbin/isthmusd", Entry::Symlink { target: "/init".into() });

    let busybox = read(inp.busybox)?;
    if !is_static_elf(&busybox) {
        return Err(Error::Input(format!(
            "{} is not static (install busybox-static)",
            inp.busybox.display()
        )));
    }
    a.add("bin/busybox", Entry::File { mode: 0o755, data: busybox });
    let applets = run(Command::new(inp.busybox).arg("--list-full"))?;
    for applet in String::from_utf8_lossy(&applets).lines() {
        let applet = applet.trim();
        // No BusyBox init: isthmusd is PID 1.
        if applet.is_empty()
            || applet == "bin/busybox"
            || applet.ends_with("/init")
            || applet == "linuxrc"
        {
            continue;
        }
        a.add(applet, Entry::Symlink { target: "/bin/busybox".into() });
    }

    let moddir = format!("lib/modules/{}", inp.kernel.release);
    let mut list = Vec::new();
    for m in inp.modules {
        let src = inp.kernel.root.join(&moddir).join(&m.rel);
        a.add(&format!("{moddir}/{}", m.rel), Entry::File { mode: 0o644, data: read(&src)? });
        let line = format!("/{moddir}/{}", m.rel);
        list.push(if m.params.is_empty() { line } else { format!("{line} {}", m.params) });
    }
    let text = format!(
        "# load order resolved by isthmus-image (modprobe --show-depends)\n{}\n",
        list.join("\n")
    );
    a.add("etc/isthmus/modules.list", Entry::File { mode: 0o644, data: text.into_bytes() });

    for p in inp.plugins {
        let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("plugin.wasm");
        a.add(
            &format!("usr/share/isthmus/plugins/{name}"),
            Entry::File { mode: 0o644, data: read(p)? },
        );
    }

    let v = inp.version;
    let files: [(&str, String); 7] = [
        (
            "etc/os-release",
            format!("NAME=Isthmus\nID=isthmus\nVERSION_ID={v}\nPRETTY_NAME=\"Isthmus {v}\"\n"),
        ),
        ("etc/isthmus/version", format!("{v}\n")),
        ("etc/hostname", "isthmus\n".into()),
        ("etc/passwd", "root:x:0:0:root:/root:/bin/sh\n".into()),
        ("etc/group", "root:x:0:\n".into()),
        (
            "etc/profile",
            "export PS1='\\h:\\w# '\nexport PATH=/usr/sbin:/usr/bin:/sbin:/bin\n".into(),
        ),
        ("etc/fstab", "# isthmusd (PID 1) mounts everything; see docs/image.md\n".into()),
    ];
    for (path, text) in files {
        a.add(path, Entry::File { mode: 0o644, data: text.into_bytes() });
    }

    let mut cpio = Vec::new();
    a.write(&mut cpio, inp.epoch).map_err(io_err(inp.out))?;
    let gz = gzip(&cpio)?;
    write_atomic(inp.out, &gz)?;
    Ok(list)
}

/// `objcopy --strip-all` into memory (the daemon is built with line tables for backtraces).
fn strip(path: &Path) -> Result<Vec<u8>> {
    let tmp = path.with_extension("stripped");
    run(Command::new("objcopy").arg("--strip-all").arg(path).arg(&tmp))?;
    let bytes = read(&tmp)?;
    let _ = fs::remove_file(&tmp);
    Ok(bytes)
}

fn gzip(data: &[u8]) -> Result<Vec<u8>> {
    let mut child = Command::new("gzip")
        .args(["-n", "-9", "-c"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|source| Error::Spawn { tool: "gzip".into(), source })?;
    let mut stdin = child.stdin.take().ok_or_else(|| Error::Input("gzip stdin".into()))?;
    let data = data.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&data));
    let out =
        child.wait_with_output().map_err(|source| Error::Spawn { tool: "gzip".into(), source })?;
    let _ = writer.join();
    if !out.status.success() {
        return Err(Error::Tool {
            tool: "gzip".into(),
            status: out.status.to_string(),
            stderr: String::new(),
        });
    }
    Ok(out.stdout)
}

fn write_atomic(path: &Path, data: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    fs::write(&tmp, data).map_err(io_err(&tmp))?;
    fs::rename(&tmp, path).map_err(io_err(path))
}

/// Builds a unified kernel image: systemd's EFI stub with the os-release, command line, kernel and
/// initramfs as PE sections (what `ukify` does; bookworm has no ukify).
pub fn make_uki(
    vmlinuz: &Path,
    initrd: &Path,
    cmdline: &str,
    os_release: &str,
    epoch: u64,
    out: &Path,
) -> Result<()> {
    let dir = out.parent().unwrap_or(Path::new("."));
    let osrel = dir.join(".osrel");
    let cmd = dir.join(".cmdline");
    fs::write(&osrel, os_release).map_err(io_err(&osrel))?;
    fs::write(&cmd, format!("{cmdline}\0")).map_err(io_err(&cmd))?;
    let linux_len = fs::metadata(vmlinuz).map_err(io_err(vmlinuz))?.len();
    // Sections after the stub's own (which end below 0x20000); the initrd goes after the kernel.
    let linux_vma: u64 = 0x0200_0000;
    let initrd_vma = linux_vma + linux_len.div_ceil(MIB) * MIB;
    let tmp = out.with_extension("tmp");
    run(Command::new("objcopy")
        .arg("--add-section")
        .arg(format!(".osrel={}", osrel.display()))
        .args(["--change-section-vma", ".osrel=0x20000"])
        .arg("--add-section")
        .arg(format!(".cmdline={}", cmd.display()))
        .args(["--change-section-vma", ".cmdline=0x30000"])
        .arg("--add-section")
        .arg(format!(".linux={}", vmlinuz.display()))
        .arg("--change-section-vma")
        .arg(format!(".linux={linux_vma:#x}"))
        .arg("--add-section")
        .arg(format!(".initrd={}", initrd.display()))
        .arg("--change-section-vma")
        .arg(format!(".initrd={initrd_vma:#x}"))
        .arg(EFI_STUB)
        .arg(&tmp))?;
    // objcopy stamps the PE header with the current time: pin it for reproducibility.
    let mut pe = read(&tmp)?;
    set_pe_timestamp(&mut pe, epoch as u32)?;
    fs::write(&tmp, &pe).map_err(io_err(&tmp))?;
    fs::rename(&tmp, out).map_err(io_err(out))
}

/// Sets a PE image's COFF `TimeDateStamp` and recomputes the optional header's `CheckSum`
/// (the 16-bit one's-complement-style sum of the file plus its length, as `imagehlp` defines it).
pub fn set_pe_timestamp(pe: &mut [u8], stamp: u32) -> Result<()> {
    let bad = || Error::Input("the EFI stub is not a PE image".into());
    let lfanew = pe.get(0x3c..0x40).ok_or_else(bad)?;
    let lfanew = u32::from_le_bytes([lfanew[0], lfanew[1], lfanew[2], lfanew[3]]) as usize;
    if pe.get(lfanew..lfanew + 4) != Some(b"PE\0\0") {
        return Err(bad());
    }
    let (ts, ck) = (lfanew + 8, lfanew + 24 + 64);
    if pe.len() < ck + 4 {
        return Err(bad());
    }
    pe[ts..ts + 4].copy_from_slice(&stamp.to_le_bytes());
    pe[ck..ck + 4].fill(0);
    let mut sum: u64 = 0;
    for chunk in pe.chunks(2) {
        let word = u16::from_le_bytes([chunk[0], *chunk.get(1).unwrap_or(&0)]) as u64;
        sum += word;
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum = (sum & 0xffff) + (sum >> 16);
    let checksum = (sum as u32).wrapping_add(pe.len() as u32);
    pe[ck..ck + 4].copy_from_slice(&checksum.to_le_bytes());
    Ok(())
}

/// What goes on the disk.
#[derive(Debug)]
pub struct DiskInputs<'a> {
    /// (path on the ESP, source file) for the kernel images.
    pub esp_files: &'a [(String, PathBuf)],
    /// (path in the data partition, content, mode): files seeded at build time, such as the lab's
    /// first-boot configurations and its `rc.local`.
    pub data_files: &'a [(String, Vec<u8>, u32)],
    /// ESP size in MiB.
    pub esp_mib: u64,
    /// Data partition size in MiB.
    pub data_mib: u64,
    /// Timestamp for files.
    pub epoch: u64,
    /// Scratch folder.
    pub work: &'a Path,
    /// The raw disk image to write.
    pub out: &'a Path,
}

/// Builds the ESP and data filesystems and the GPT disk around them.
pub fn assemble(inp: &DiskInputs<'_>) -> Result<()> {
    let esp = inp.work.join("esp.img");
    make_esp(&esp, inp)?;
    let data = inp.work.join("data.img");
    make_data(&data, inp)?;

    let esp_start = MIB;
    let data_start = esp_start + inp.esp_mib * MIB;
    let total = data_start + inp.data_mib * MIB + MIB;
    let tmp = inp.out.with_extension("img.tmp");
    let _ = fs::remove_file(&tmp);
    {
        let f = fs::File::create(&tmp).map_err(io_err(&tmp))?;
        f.set_len(total).map_err(io_err(&tmp))?;
    }
    let sector = |b: u64| b / 512;
    run(Command::new("sgdisk")
        .args(["-o", "-U", DISK_GUID])
        .args(["-n", &format!("1:{}:{}", sector(esp_start), sector(data_start) - 1)])
        .args(["-t", "1:ef00", "-c", &format!("1:{ESP_PARTNAME}"), "-u", &format!("1:{ESP_GUID}")])
        .args([
            "-n",
            &format!("2:{}:{}", sector(data_start), sector(data_start + inp.data_mib * MIB) - 1),
        ])
        .args([
            "-t",
            "2:8300",
            "-c",
            &format!("2:{DATA_PARTNAME}"),
            "-u",
            &format!("2:{DATA_GUID}"),
        ])
        .arg(&tmp))?;
    copy_at(&esp, &tmp, esp_start)?;
    copy_at(&data, &tmp, data_start)?;
    fs::rename(&tmp, inp.out).map_err(io_err(inp.out))
}

fn copy_at(src: &Path, dst: &Path, offset: u64) -> Result<()> {
    let mut from = fs::File::open(src).map_err(io_err(src))?;
    let mut to = fs::OpenOptions::new().write(true).open(dst).map_err(io_err(dst))?;
    to.seek(SeekFrom::Start(offset)).map_err(io_err(dst))?;
    std::io::copy(&mut from, &mut to).map_err(io_err(dst))?;
    Ok(())
}

fn make_esp(esp: &Path, inp: &DiskInputs<'_>) -> Result<()> {
    let _ = fs::remove_file(esp);
    // --invariant: fixed volume ID and no clock-derived fields.
    run(Command::new("mkfs.vfat")
        .args(["-F", "32", "-n", "ISTHMUS", "-i", "15700001", "--invariant", "-C"])
        .arg(esp)
        .arg((inp.esp_mib * 1024).to_string()))?;
    let stage = inp.work.join("esp");
    let _ = fs::remove_dir_all(&stage);
    fs::create_dir_all(&stage).map_err(io_err(&stage))?;
    let loader = stage.join("loader.conf");
    // timeout 0 boots the default at once (hold a key for the menu); systemd-boot picks the newest
    // version that still has tries left or is blessed (Automatic Boot Assessment).
    fs::write(&loader, "timeout 0\neditor no\nauto-entries no\nauto-firmware no\n")
        .map_err(io_err(&loader))?;
    let mut files: Vec<(String, PathBuf)> = vec![
        ("EFI/BOOT/BOOTX64.EFI".into(), PathBuf::from(SYSTEMD_BOOT)),
        ("loader/loader.conf".into(), loader),
    ];
    files.extend(inp.esp_files.iter().cloned());
    let env = [("SOURCE_DATE_EPOCH", inp.epoch.to_string()), ("MTOOLS_SKIP_CHECK", "1".into())];
    run(Command::new("mmd").envs(env.clone()).arg("-i").arg(esp).args([
        "::EFI",
        "::EFI/BOOT",
        "::EFI/Linux",
        "::loader",
    ]))?;
    for (dest, src) in &files {
        // Stamp the copies with the build epoch; mcopy -m keeps it.
        let staged = stage.join(dest.replace('/', "_"));
        fs::copy(src, &staged).map_err(io_err(src))?;
        set_mtime(&staged, inp.epoch)?;
        run(Command::new("mcopy")
            .envs(env.clone())
            .args(["-m", "-o", "-i"])
            .arg(esp)
            .arg(&staged)
            .arg(format!("::{dest}")))?;
    }
    Ok(())
}

fn set_mtime(path: &Path, epoch: u64) -> Result<()> {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(epoch);
    let f = fs::File::open(path).map_err(io_err(path))?;
    f.set_modified(t).map_err(io_err(path))
}

fn make_data(data: &Path, inp: &DiskInputs<'_>) -> Result<()> {
    let root = inp.work.join("data-root");
    let _ = fs::remove_dir_all(&root);
    let store = root.join("isthmus");
    fs::create_dir_all(&store).map_err(io_err(&store))?;
    set_mtime(&store, inp.epoch)?;
    let readme = root.join("README");
    fs::write(
        &readme,
        "Isthmus data partition (GPT name isthmus-data), mounted on /data.\n\
         isthmus/: isthmusd's store (configuration revisions, plugins, API certificate);\n\
         isthmus/config.toml: the configuration committed on first boot.\n\
         Kept across firmware upgrades.\n",
    )
    .map_err(io_err(&readme))?;
    set_mtime(&readme, inp.epoch)?;
    let mut pinned: Vec<String> =
        ["/", "/lost+found", "/isthmus", "/README"].iter().map(|s| s.to_string()).collect();
    for (rel, content, mode) in inp.data_files {
        let rel = rel.trim_start_matches('/');
        if rel.split('/').any(|c| c.is_empty() || c == "." || c == "..") {
            return Err(Error::Input(format!(
                "data file path {rel:?} is not a plain relative path"
            )));
        }
        let path = root.join(rel);
        let mut dir = path.parent().map(Path::to_path_buf).unwrap_or_else(|| root.clone());
        fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        fs::write(&path, content).map_err(io_err(&path))?;
        fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(*mode))
            .map_err(io_err(&path))?;
        set_mtime(&path, inp.epoch)?;
        pinned.push(format!("/{rel}"));
        // Every folder created on the way gets the fixed times too.
        while dir != root {
            let r =
                dir.strip_prefix(&root).map(|p| format!("/{}", p.display())).unwrap_or_default();
            if !pinned.contains(&r) {
                pinned.push(r);
            }
            set_mtime(&dir, inp.epoch)?;
            dir = dir.parent().map(Path::to_path_buf).unwrap_or_else(|| root.clone());
        }
    }
    set_mtime(&root, inp.epoch)?;
    let _ = fs::remove_file(data);
    run(Command::new("mke2fs")
        .env("E2FSPROGS_FAKE_TIME", inp.epoch.to_string())
        .args(["-q", "-t", "ext4", "-L", DATA_PARTNAME, "-U", DATA_FS_UUID])
        .arg("-E")
        .arg(format!("root_owner=0:0,hash_seed={DATA_FS_UUID}"))
        .arg("-d")
        .arg(&root)
        .arg(data)
        .arg(format!("{}M", inp.data_mib)))?;
    // mke2fs -d copies each file's ctime, which no one can set: pin every inode's times.
    let at = format!("@{}", inp.epoch);
    let mut script = String::new();
    for path in &pinned {
        for field in ["atime", "ctime", "mtime", "crtime"] {
            script.push_str(&format!("set_inode_field {path} {field} {at}\n"));
        }
    }
    let cmds = inp.work.join("debugfs.cmds");
    fs::write(&cmds, script).map_err(io_err(&cmds))?;
    run(Command::new("debugfs")
        .env("E2FSPROGS_FAKE_TIME", inp.epoch.to_string())
        .args(["-w", "-f"])
        .arg(&cmds)
        .arg(data))?;
    Ok(())
}

/// Converts the raw image into a compressed qcow2.
pub fn to_qcow2(raw: &Path, qcow2: &Path) -> Result<()> {
    let tmp = qcow2.with_extension("qcow2.tmp");
    run(Command::new("qemu-img").args(["convert", "-c", "-O", "qcow2"]).arg(raw).arg(&tmp))?;
    fs::rename(&tmp, qcow2).map_err(io_err(qcow2))
}

/// Lists the files on a FAT image (`mdir -/ -b`), e.g. to see boot-counting renames after a boot.
pub fn esp_listing(esp_image: &Path, offset: u64) -> Result<Vec<String>> {
    let target = format!("{}@@{offset}", esp_image.display());
    let out = run(Command::new("mdir")
        .env("MTOOLS_SKIP_CHECK", "1")
        .args(["-/", "-b", "-i", &target, "::"]))?;
    let mut v: Vec<String> = String::from_utf8_lossy(&out)
        .lines()
        .map(|l| l.trim_start_matches("::").to_string())
        .collect();
    v.sort();
    Ok(v)
}

/// Byte offset of the ESP inside the raw disk image.
pub const ESP_OFFSET: u64 = MIB;

#[cfg(test)]
mod tests {
    use super::*;

    /// systemd ships its stub with timestamp 0 and a valid checksum: re-stamping it with 0 must give
    /// back the same bytes, and another stamp must change only the two fields.
    #[test]
    fn pe_timestamp_and_checksum_match_the_shipped_stub() {
        let Ok(stub) = fs::read(EFI_STUB) else {
            eprintln!("skipped: no {EFI_STUB} (install systemd-boot-efi)");
            return;
        };
        let mut same = stub.clone();
        set_pe_timestamp(&mut same, 0).unwrap();
        assert!(same == stub, "checksum recomputed exactly as shipped");
        let mut other = stub.clone();
        set_pe_timestamp(&mut other, 1_764_000_000).unwrap();
        let diff: Vec<usize> = (0..stub.len()).filter(|&i| stub[i] != other[i]).collect();
        assert!(
            !diff.is_empty()
                && diff.iter().all(|&i| (0x88..0x8c).contains(&i) || (0xd8..0xdc).contains(&i)),
            "{diff:?}"
        );
    }

    #[test]
    fn non_pe_input_is_refused_by_name() {
        let err = set_pe_timestamp(&mut [0u8; 16], 0).unwrap_err().to_string();
        assert!(err.contains("not a PE image"), "{err}");
    }
}

//! The kernel: Debian's packages downloaded (and cached) with `apt-get download`, unpacked with
//! `dpkg-deb -x`, indexed with `depmod -b`, and the appliance's modules resolved in load order with
//! `modprobe --show-depends` (which also reports what is built in).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::{Error, Flavour, Result, io_err, run};

/// An unpacked kernel.
#[derive(Clone, Debug)]
pub struct Kernel {
    /// The release string (`uname -r`), e.g. `6.1.0-56-cloud-amd64`.
    pub release: String,
    /// The unpacked package root (holds `boot/` and `lib/modules/RELEASE`).
    pub root: PathBuf,
    /// The compressed kernel (`boot/vmlinuz-RELEASE`).
    pub vmlinuz: PathBuf,
}

/// A module to load: its path below `lib/modules/RELEASE/` and its parameters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Module {
    /// Path relative to the release's module folder, e.g. `kernel/drivers/net/tun.ko`.
    pub rel: String,
    /// Parameters modprobe would pass (from the kernel package's defaults), often empty.
    pub params: String,
}

/// Modules every image loads: virtio devices, TUN, nftables, XFRM/ESP and the crypto they need
/// (`drbg` and `sha512_generic`, or kernel ESP SAs fail to initialise), VRF/veth/dummy links, the ESP's
/// FAT, and a hardware RNG for fast entropy in VMs. `jitterentropy_rng` is left out: it fails under TCG.
const COMMON: &[&str] = &[
    "virtio_pci",
    "virtio_net",
    "virtio_blk",
    "virtio_rng",
    "tun",
    "nf_tables",
    "nft_ct",
    "nft_chain_nat",
    "nft_nat",
    "nft_masq",
    "nft_reject_inet",
    "nft_limit",
    "nft_fib_inet",
    "xfrm_user",
    "xfrm_interface",
    "esp4",
    "esp6",
    "aesni_intel",
    "ghash-clmulni-intel",
    "gcm",
    "seqiv",
    "echainiv",
    "authenc",
    "chacha20poly1305",
    // drbg's self-test of its HMAC-SHA512 variant fails unless sha512 is loaded first.
    "hmac",
    "sha256_generic",
    "sha512_generic",
    "drbg",
    "vrf",
    "veth",
    "dummy",
    "8021q",
    "ext4",
    "crc32c_intel",
    "vfat",
    "nls_cp437",
    "nls_iso8859_1",
    "nls_ascii",
    "nls_utf8",
];

/// Drivers real appliances need (generic flavour only): storage, USB, common NICs.
const HARDWARE: &[&str] = &[
    "ahci",
    "nvme",
    "sd_mod",
    "virtio_scsi",
    "xhci_pci",
    "ehci_pci",
    "usb_storage",
    "uas",
    "e1000",
    "e1000e",
    "igb",
    "igc",
    "ixgbe",
    "i40e",
    "ice",
    "r8169",
    "tg3",
    "bnxt_en",
    "mlx5_core",
];

/// The module names to resolve for a flavour.
pub fn wanted_modules(flavour: Flavour) -> Vec<&'static str> {
    let mut v = COMMON.to_vec();
    if flavour == Flavour::Generic {
        v.extend_from_slice(HARDWARE);
    }
    v
}

fn cached(cache: &Path, package: &str) -> Option<PathBuf> {
    let prefix = format!("{package}_");
    let mut found: Vec<_> = fs::read_dir(cache)
        .ok()?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&prefix) && n.ends_with(".deb"))
        })
        .collect();
    found.sort();
    found.pop()
}

fn download(cache: &Path, package: &str, refresh: bool) -> Result<PathBuf> {
    if !refresh && let Some(p) = cached(cache, package) {
        return Ok(p);
    }
    eprintln!("isthmus-image: apt-get download {package}");
    run(Command::new("apt-get").current_dir(cache).args(["download", "-qq", package]))?;
    cached(cache, package)
        .ok_or_else(|| Error::Input(format!("apt-get download left no {package}_*.deb")))
}

/// The versioned kernel package a meta package depends on (`linux-image-6.1.0-56-cloud-amd64`).
pub fn versioned_package(depends: &str) -> Option<&str> {
    depends.split([',', '|']).map(|d| d.split_whitespace().next().unwrap_or("")).find(|name| {
        name.starts_with("linux-image-") && name.as_bytes().get(12).is_some_and(u8::is_ascii_digit)
    })
}

/// Downloads (unless cached) and unpacks the flavour's kernel into `dest/RELEASE`.
pub fn fetch(cache: &Path, dest: &Path, flavour: Flavour, refresh: bool) -> Result<Kernel> {
    let meta = download(cache, flavour.meta_package(), refresh)?;
    let depends = run(Command::new("dpkg-deb").arg("-f").arg(&meta).arg("Depends"))?;
    let depends = String::from_utf8_lossy(&depends);
    let package = versioned_package(&depends)
        .ok_or_else(|| {
            Error::Input(format!("{}: no versioned kernel in Depends: {depends}", meta.display()))
        })?
        .to_string();
    let release = package.trim_start_matches("linux-image-").to_string();
    let deb = download(cache, &package, refresh)?;

    let root = dest.join(&release);
    let done = root.join(".unpacked");
    if !done.exists() {
        let tmp = dest.join(format!(".{release}.tmp"));
        let _ = fs::remove_dir_all(&tmp);
        fs::create_dir_all(&tmp).map_err(io_err(&tmp))?;
        run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&tmp))?;
        run(Command::new("depmod").arg("-b").arg(&tmp).arg(&release))?;
        let _ = fs::remove_dir_all(&root);
        fs::rename(&tmp, &root).map_err(io_err(&root))?;
        fs::write(&done, &package).map_err(io_err(&done))?;
    }
    let vmlinuz = root.join(format!("boot/vmlinuz-{release}"));
    if !vmlinuz.exists() {
        return Err(Error::Input(format!("{} has no kernel", deb.display())));
    }
    Ok(Kernel { release, root, vmlinuz })
}

/// Resolves `names` (and their dependencies) into load order, without duplicates. Built-in modules
/// need nothing; a name the kernel does not have is reported and skipped.
pub fn resolve_modules(kernel: &Kernel, names: &[&str]) -> Result<Vec<Module>> {
    let moddir = kernel.root.join("lib/modules").join(&kernel.release);
    let prefix = format!("{}/", moddir.display());
    let mut order: Vec<Module> = Vec::new();
    for name in names {
        let out = Command::new("modprobe")
            .arg("-d")
            .arg(&kernel.root)
            .args(["-S", &kernel.release, "--show-depends", name])
            .output()
            .map_err(|source| Error::Spawn { tool: "modprobe".into(), source })?;
        if !out.status.success() {
            eprintln!("isthmus-image: kernel {} has no module {name}; skipped", kernel.release);
            continue;
        }
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let Some(rest) = line.strip_prefix("insmod ") else { continue };
            let (path, params) = rest.trim().split_once(' ').unwrap_or((rest.trim(), ""));
            let rel = path.strip_prefix(&prefix).unwrap_or(path).to_string();
            if !order.iter().any(|m| m.rel == rel) {
                order.push(Module { rel, params: params.trim().to_string() });
            }
        }
    }
    Ok(order)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versioned_package_is_read_from_depends() {
        assert_eq!(
            versioned_package("linux-image-6.1.0-56-cloud-amd64 (= 6.1.192-2)"),
            Some("linux-image-6.1.0-56-cloud-amd64")
        );
        assert_eq!(
            versioned_package("firmware-x | linux-image-6.1.0-56-amd64 (= 6.1.192-2), other"),
            Some("linux-image-6.1.0-56-amd64")
        );
        assert_eq!(versioned_package("linux-image-cloud-amd64"), None);
    }

    #[test]
    fn hardware_drivers_only_on_generic() {
        assert!(!wanted_modules(Flavour::Cloud).contains(&"e1000e"));
        assert!(wanted_modules(Flavour::Generic).contains(&"e1000e"));
        for f in [Flavour::Cloud, Flavour::Generic] {
            let w = wanted_modules(f);
            assert!(w.contains(&"drbg") && w.contains(&"sha512_generic") && w.contains(&"esp4"));
        }
    }
}

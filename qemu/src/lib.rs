//! `isthmus-lab` boots Isthmus appliances in QEMU: the two-site lab behind `make lab` and the
//! end-to-end tests in `qemu/tests`.
//!
//! - [`vm`]: one QEMU VM (TCG or KVM, direct kernel boot or OVMF + systemd-boot), its serial console
//!   as a Unix socket read into memory and logged to a file, and a shell session over it.
//! - [`wan`]: the simulated Internet, a UDP relay between the appliances' QEMU socket NICs on
//!   127.0.0.1 with optional delay and loss.
//! - [`lab`]: the two sites, their addressing, LAN hosts and the steps `make lab` runs.

pub mod lab;
pub mod vm;
pub mod wan;

use std::path::{Path, PathBuf};

/// What can go wrong in the lab.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file or process operation failed.
    #[error("{path}: {source}")]
    Io {
        /// The file or program.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// QEMU failed to start or exited.
    #[error("qemu: {0}")]
    Qemu(String),
    /// Something did not appear on a console in time.
    #[error("timeout: {0}")]
    Timeout(String),
    /// A command inside an appliance failed.
    #[error("guest: {0}")]
    Guest(String),
    /// Building the image failed.
    #[error("image: {0}")]
    Image(#[from] isthmus_image::Error),
}

impl Error {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Error {
        Error::Io { path: path.to_path_buf(), source }
    }
}

/// Shorthand for this crate's results.
pub type Result<T> = std::result::Result<T, Error>;

/// Why the QEMU tests cannot run here, if they cannot (no QEMU binary, no OVMF, no kernel source).
pub fn unavailable(root: &Path) -> Option<String> {
    if vm::qemu_binary(root).is_none() {
        return Some("no qemu-system-x86_64 (run `make bootstrap`)".into());
    }
    if !Path::new(vm::OVMF_CODE).exists() {
        return Some(format!("no {} (install ovmf)", vm::OVMF_CODE));
    }
    let cached = root.join("build/cache");
    let has_deb = std::fs::read_dir(&cached)
        .map(|rd| rd.flatten().any(|e| e.file_name().to_string_lossy().starts_with("linux-image-")))
        .unwrap_or(false);
    if !has_deb && std::process::Command::new("apt-get").arg("--version").output().is_err() {
        return Some("no cached kernel and no apt-get to download one".into());
    }
    None
}

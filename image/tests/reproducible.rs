//! The same inputs give the same image, byte for byte (issue 8): two builds into different folders
//! with the same `SOURCE_DATE_EPOCH` and the same `isthmusd` are compared file by file.

use std::path::Path;

use isthmus_image::{Options, build, build_daemon, workspace_root};

fn unavailable(root: &Path) -> Option<&'static str> {
    let cached = std::fs::read_dir(root.join("build/cache"))
        .map(|rd| rd.flatten().any(|e| e.file_name().to_string_lossy().starts_with("linux-image-")))
        .unwrap_or(false);
    if !cached && std::process::Command::new("apt-get").arg("--version").output().is_err() {
        return Some("no cached kernel and no apt-get");
    }
    for tool in ["sgdisk", "mkfs.vfat", "mcopy", "mke2fs", "debugfs", "qemu-img", "objcopy"] {
        if std::process::Command::new(tool).arg("--version").output().is_err() {
            return Some("an image tool is missing (run `make bootstrap`)");
        }
    }
    None
}

#[test]
fn two_builds_give_identical_bytes() {
    let root = workspace_root();
    if let Some(why) = unavailable(&root) {
        eprintln!("skipped: {why}");
        return;
    }
    let daemon = build_daemon(&root).expect("build isthmusd");
    let mut manifests = Vec::new();
    for run in ["repro-1", "repro-2"] {
        let mut opts = Options::new(&root);
        opts.out = root.join("build").join(run);
        opts.daemon = Some(daemon.clone());
        opts.slot_b_tries = Some(3);
        manifests.push(build_with_epoch(&opts, 1_764_000_000));
    }
    let (a, b) = (&manifests[0], &manifests[1]);
    for (x, y) in [(&a.raw, &b.raw), (&a.qcow2, &b.qcow2), (&a.initrd, &b.initrd)] {
        let (bx, by) = (std::fs::read(x).unwrap(), std::fs::read(y).unwrap());
        assert!(bx == by, "{} and {} differ", x.display(), y.display());
    }
    assert_eq!(a.source_date_epoch, 1_764_000_000);
}

fn build_with_epoch(opts: &Options, epoch: u64) -> isthmus_image::Manifest {
    let mut opts = opts.clone();
    opts.source_date_epoch = Some(epoch);
    build(&opts).expect("image build")
}

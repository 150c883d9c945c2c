//! A reproducible `newc` cpio writer for the initramfs (the format the kernel unpacks, see the
//! kernel's `Documentation/driver-api/early-userspace/buffer-format.rst`).
//!
//! Writing the archive here instead of running `cpio` gives byte-identical output for identical
//! inputs (entries sorted by path, one fixed mtime, owner 0:0, inode numbers in order) and lets the
//! archive carry device nodes (`/dev/console`, `/dev/null`) without `mknod` or root: the kernel opens
//! `/dev/console` for init's fds 0–2 before init runs.

use std::collections::BTreeMap;
use std::io::{self, Write};

/// One archive member.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Entry {
    /// A directory with its permission bits.
    Dir {
        /// Permission bits, e.g. `0o755`.
        mode: u32,
    },
    /// A regular file.
    File {
        /// Permission bits.
        mode: u32,
        /// The contents.
        data: Vec<u8>,
    },
    /// A symbolic link to `target`.
    Symlink {
        /// What the link points at.
        target: String,
    },
    /// A character device node.
    CharDev {
        /// Permission bits.
        mode: u32,
        /// Device major number.
        major: u32,
        /// Device minor number.
        minor: u32,
    },
}

/// An archive being assembled: path (without leading `/`) → entry. Parents are added implicitly.
#[derive(Debug, Default)]
pub struct Archive {
    entries: BTreeMap<String, Entry>,
}

impl Archive {
    /// An empty archive.
    pub fn new() -> Archive {
        Archive::default()
    }

    /// Adds (or replaces) `path`, creating missing parent directories with mode 0755.
    pub fn add(&mut self, path: &str, entry: Entry) {
        let path = path.trim_matches('/').to_string();
        let mut parent = String::new();
        for part in path.split('/').collect::<Vec<_>>().iter().rev().skip(1).rev() {
            if !parent.is_empty() {
                parent.push('/');
            }
            parent.push_str(part);
            self.entries.entry(parent.clone()).or_insert(Entry::Dir { mode: 0o755 });
        }
        self.entries.insert(path, entry);
    }

    /// Number of members.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when nothing was added.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Writes the archive, every member stamped with `mtime`, followed by the trailer.
    pub fn write(&self, out: &mut impl Write, mtime: u64) -> io::Result<()> {
        let mut offset = 0usize;
        for (ino, (path, entry)) in self.entries.iter().enumerate() {
            let (kind, mode, data, nlink, rdev): (u32, u32, &[u8], u32, (u32, u32)) = match entry {
                Entry::Dir { mode } => (0o040000, *mode, &[], 2, (0, 0)),
                Entry::File { mode, data } => (0o100000, *mode, data, 1, (0, 0)),
                Entry::Symlink { target } => (0o120000, 0o777, target.as_bytes(), 1, (0, 0)),
                Entry::CharDev { mode, major, minor } => {
                    (0o020000, *mode, &[], 1, (*major, *minor))
                }
            };
            offset += write_header(
                out,
                ino as u32 + 1,
                kind | mode,
                nlink,
                mtime,
                data.len(),
                rdev,
                path,
            )?;
            out.write_all(data)?;
            offset += data.len();
            offset += pad(out, offset)?;
        }
        offset += write_header(out, 0, 0, 1, 0, 0, (0, 0), "TRAILER!!!")?;
        pad(out, offset)?;
        Ok(())
    }
}

#[allow(clippy::too_many_arguments)]
fn write_header(
    out: &mut impl Write,
    ino: u32,
    mode: u32,
    nlink: u32,
    mtime: u64,
    size: usize,
    rdev: (u32, u32),
    name: &str,
) -> io::Result<usize> {
    let fields = [
        ino,
        mode,
        0, // uid
        0, // gid
        nlink,
        mtime as u32,
        size as u32,
        0, // devmajor
        0, // devminor
        rdev.0,
        rdev.1,
        name.len() as u32 + 1,
        0, // check
    ];
    let mut header = String::with_capacity(110);
    header.push_str("070701");
    for f in fields {
        header.push_str(&format!("{f:08X}"));
    }
    out.write_all(header.as_bytes())?;
    out.write_all(name.as_bytes())?;
    out.write_all(&[0])?;
    let written = header.len() + name.len() + 1;
    Ok(written + pad(out, written)?)
}

/// Pads to the next multiple of 4 given the bytes written so far; returns the padding length.
fn pad(out: &mut impl Write, written: usize) -> io::Result<usize> {
    let n = (4 - written % 4) % 4;
    out.write_all(&[0u8; 3][..n])?;
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::{Command, Stdio};

    fn sample() -> Archive {
        let mut a = Archive::new();
        a.add("/init", Entry::File { mode: 0o755, data: b"#!/bin/sh\n".to_vec() });
        a.add("dev/console", Entry::CharDev { mode: 0o600, major: 5, minor: 1 });
        a.add("bin/sh", Entry::Symlink { target: "busybox".into() });
        a.add("usr/share/isthmus/plugins/x.wasm", Entry::File { mode: 0o644, data: vec![0; 5] });
        a
    }

    #[test]
    fn parents_are_implied_and_members_sorted() {
        let a = sample();
        let names: Vec<_> = a.entries.keys().cloned().collect();
        assert_eq!(
            names,
            [
                "bin",
                "bin/sh",
                "dev",
                "dev/console",
                "init",
                "usr",
                "usr/share",
                "usr/share/isthmus",
                "usr/share/isthmus/plugins",
                "usr/share/isthmus/plugins/x.wasm"
            ]
        );
    }

    #[test]
    fn output_is_aligned_and_identical_for_identical_input() {
        let (mut x, mut y) = (Vec::new(), Vec::new());
        sample().write(&mut x, 1_700_000_000).unwrap();
        sample().write(&mut y, 1_700_000_000).unwrap();
        assert_eq!(x, y);
        assert_eq!(x.len() % 4, 0);
        assert!(x.starts_with(b"070701"));
    }

    /// GNU cpio (the reference reader) lists what we wrote, with types, sizes and device numbers.
    #[test]
    fn gnu_cpio_reads_the_archive() {
        if Command::new("cpio").arg("--version").output().is_err() {
            eprintln!("skipped: cpio is not installed");
            return;
        }
        let mut bytes = Vec::new();
        sample().write(&mut bytes, 1_700_000_000).unwrap();
        let mut child = Command::new("cpio")
            .args(["-t", "-v", "--quiet"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(&bytes).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success());
        let listing = String::from_utf8(out.stdout).unwrap();
        assert!(listing.lines().any(|l| l.starts_with("crw-------")
            && l.contains("5,")
            && l.ends_with("dev/console")));
        assert!(
            listing
                .lines()
                .any(|l| l.starts_with("lrwxrwxrwx") && l.ends_with("bin/sh -> busybox"))
        );
        assert!(
            listing
                .lines()
                .any(|l| l.starts_with("-rwxr-xr-x") && l.contains(" 10 ") && l.ends_with("init"))
        );
        assert_eq!(listing.lines().count(), 10);
    }
}

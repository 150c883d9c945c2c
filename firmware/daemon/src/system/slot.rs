//! The A/B slots on the EFI system partition: their file names under systemd's Automatic Boot
//! Assessment (`fw-X+LEFT-DONE.efi`), the versions they carry, and how systemd-boot orders
//! versions.

use std::fs;
use std::path::Path;

use isthmus_api as api;

use crate::system::uki::parse_uki;

/// Compares versions the way systemd-boot orders them for the common case: dot- and
/// dash-separated parts, numeric parts numerically.
pub fn version_cmp(a: &str, b: &str) -> std::cmp::Ordering {
    let parts = |s: &str| -> Vec<String> {
        s.split(['.', '-', '~', '+']).map(str::to_string).collect::<Vec<_>>()
    };
    let (pa, pb) = (parts(a), parts(b));
    for i in 0..pa.len().max(pb.len()) {
        let (x, y) = (pa.get(i), pb.get(i));
        let o = match (x, y) {
            (None, None) => std::cmp::Ordering::Equal,
            (None, Some(_)) => std::cmp::Ordering::Less,
            (Some(_), None) => std::cmp::Ordering::Greater,
            (Some(x), Some(y)) => match (x.parse::<u64>(), y.parse::<u64>()) {
                (Ok(x), Ok(y)) => x.cmp(&y),
                _ => x.cmp(y),
            },
        };
        if o != std::cmp::Ordering::Equal {
            return o;
        }
    }
    std::cmp::Ordering::Equal
}

/// The other slot.
pub fn other_slot(slot: &str) -> &'static str {
    if slot == "a" { "b" } else { "a" }
}

/// The firmware's own version (the image writes it to `/etc/isthmus/version`).
pub fn running_version() -> String {
    fs::read_to_string("/etc/isthmus/version")
        .map(|v| v.trim().to_string())
        .unwrap_or_else(|_| env!("CARGO_PKG_VERSION").to_string())
}

/// Parses a slot file name `fw-X[+L[-D]].efi` into (slot, tries left when counted).
pub fn parse_slot_file(name: &str) -> Option<(String, Option<u32>)> {
    let stem = name.strip_prefix("fw-")?.strip_suffix(".efi")?;
    let (slot, counter) = match stem.split_once('+') {
        Some((s, c)) => (s, Some(c)),
        None => (stem, None),
    };
    if slot != "a" && slot != "b" {
        return None;
    }
    let left = match counter {
        Some(c) => Some(c.split('-').next()?.parse().ok()?),
        None => None,
    };
    Some((slot.to_string(), left))
}

/// The slots as found in an ESP's `EFI/Linux` folder.
pub fn slots_in(dir: &Path, booted: Option<&str>) -> Vec<api::Slot> {
    let mut files: Vec<String> = fs::read_dir(dir)
        .map(|rd| rd.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    files.sort();
    ["a", "b"]
        .iter()
        .map(|&slot| {
            let found = files
                .iter()
                .find_map(|f| parse_slot_file(f).filter(|(s, _)| s == slot).map(|(_, l)| (f, l)));
            match found {
                Some((file, left)) => {
                    let version = fs::read(dir.join(file))
                        .ok()
                        .and_then(|b| parse_uki(&b).ok())
                        .map(|i| i.version);
                    api::Slot {
                        slot: slot.into(),
                        file: format!("EFI/Linux/{file}"),
                        version,
                        booted: booted == Some(slot),
                        blessed: left.is_none(),
                        tries_left: left,
                    }
                }
                None => api::Slot {
                    slot: slot.into(),
                    file: String::new(),
                    version: None,
                    booted: booted == Some(slot),
                    blessed: false,
                    tries_left: None,
                },
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::system::uki::tests::{OSREL, fake_uki};

    #[test]
    fn versions_order_like_systemd_boot() {
        use std::cmp::Ordering::*;
        assert_eq!(version_cmp("0.1.0.1", "0.1.0"), Greater);
        assert_eq!(version_cmp("0.1.10", "0.1.9"), Greater);
        assert_eq!(version_cmp("0.1.0", "0.1.0"), Equal);
        assert_eq!(version_cmp("0.0.9", "0.1.0"), Less);
    }

    #[test]
    fn slot_files_follow_boot_counting_names() {
        assert_eq!(parse_slot_file("fw-a.efi"), Some(("a".into(), None)));
        assert_eq!(parse_slot_file("fw-b+3.efi"), Some(("b".into(), Some(3))));
        assert_eq!(parse_slot_file("fw-b+2-1.efi"), Some(("b".into(), Some(2))));
        assert_eq!(parse_slot_file("fw-b+0-3.efi"), Some(("b".into(), Some(0))));
        assert_eq!(parse_slot_file("fw-c.efi"), None);
        assert_eq!(parse_slot_file("fw-b.new"), None);
    }

    #[test]
    fn slots_are_read_from_the_esp_folder() {
        let dir = std::env::temp_dir().join(format!("isthmus-slots-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("fw-a.efi"), fake_uki(OSREL, "isthmus.slot=a", true)).unwrap();
        fs::write(
            dir.join("fw-b+2-1.efi"),
            fake_uki("ID=isthmus\nIMAGE_VERSION=0.2\n", "isthmus.slot=b", true),
        )
        .unwrap();
        let s = slots_in(&dir, Some("b"));
        assert_eq!(s[0].version.as_deref(), Some("0.1.1"));
        assert!(s[0].blessed && !s[0].booted);
        assert_eq!(s[1].file, "EFI/Linux/fw-b+2-1.efi");
        assert_eq!((s[1].blessed, s[1].booted, s[1].tries_left), (false, true, Some(2)));
        fs::remove_dir_all(&dir).unwrap();
    }
}

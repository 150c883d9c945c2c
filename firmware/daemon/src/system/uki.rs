//! Reading a unified kernel image (UKI): the PE/COFF headers and section table (Microsoft PE/COFF
//! specification §3–4), the `.osrel`, `.cmdline`, `.linux` and `.initrd` sections of the Boot
//! Loader Specification's type #2 entries, and the in-place rewrite of `isthmus.slot=`.
//!
//! The upload is untrusted input, so this file depends on nothing but `std` and `thiserror`:
//! `fuzz/fuzz_targets/uki.rs` compiles it in with `#[path]` and fuzzes it without building the
//! daemon. Keep it free of `crate::` paths.

/// Why an image was refused. [`crate::system::upgrade::UpgradeError`] carries these as its
/// `Format` and `Invalid` variants, with the same messages.
#[derive(Debug, thiserror::Error)]
pub enum UkiError {
    /// The upload is not an Isthmus unified kernel image.
    #[error("not an Isthmus firmware image: {0}")]
    Format(String),
    /// The slot to retarget to is not `a` or `b`.
    #[error("{0}")]
    Invalid(String),
}

/// What [`parse_uki`] found in an image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UkiInfo {
    /// `IMAGE_VERSION` (else `VERSION_ID`) of `.osrel`.
    pub version: String,
    /// The kernel command line (`.cmdline`, without trailing NULs and whitespace).
    pub cmdline: String,
    /// Byte range of `.cmdline`'s data in the file.
    pub cmdline_at: std::ops::Range<usize>,
}

fn rd16(b: &[u8], at: usize) -> Option<u16> {
    b.get(at..at + 2).map(|s| u16::from_le_bytes([s[0], s[1]]))
}

fn rd32(b: &[u8], at: usize) -> Option<u32> {
    b.get(at..at + 4).map(|s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
}

/// The sections of a PE image: name → byte range of its data in the file.
fn pe_sections(b: &[u8]) -> Result<Vec<(String, std::ops::Range<usize>)>, UkiError> {
    let bad = |m: &str| UkiError::Format(m.to_string());
    if !b.starts_with(b"MZ") {
        return Err(bad("no MZ header (a unified kernel image is a PE/COFF file)"));
    }
    let pe = rd32(b, 0x3c).ok_or_else(|| bad("truncated DOS header"))? as usize;
    if b.get(pe..pe + 4) != Some(b"PE\0\0") {
        return Err(bad("no PE signature at the offset the DOS header names"));
    }
    let coff = pe + 4;
    let machine = rd16(b, coff).ok_or_else(|| bad("truncated COFF header"))?;
    if machine != 0x8664 {
        return Err(UkiError::Format(format!(
            "machine type {machine:#06x} is not x86-64 (0x8664)"
        )));
    }
    let count = rd16(b, coff + 2).ok_or_else(|| bad("truncated COFF header"))? as usize;
    let opt = rd16(b, coff + 16).ok_or_else(|| bad("truncated COFF header"))? as usize;
    let table = coff + 20 + opt;
    let mut out = Vec::with_capacity(count);
    for i in 0..count {
        let h = table + i * 40;
        let raw = b.get(h..h + 40).ok_or_else(|| bad("section table runs past the end"))?;
        let name: String = raw[..8]
            .iter()
            .take_while(|&&c| c != 0)
            .map(|&c| if c.is_ascii_graphic() { c as char } else { '?' })
            .collect();
        let vsize = rd32(raw, 8).unwrap_or(0) as usize;
        let rsize = rd32(raw, 16).unwrap_or(0) as usize;
        let ptr = rd32(raw, 20).unwrap_or(0) as usize;
        let len = if vsize == 0 { rsize } else { vsize.min(rsize) };
        let end = ptr.checked_add(len).filter(|&e| e <= b.len()).ok_or_else(|| {
            UkiError::Format(format!("section {name} runs past the end of the file"))
        })?;
        out.push((name, ptr..end));
    }
    Ok(out)
}

/// `KEY=value` from an os-release text (quotes removed).
fn osrel_value<'a>(osrel: &'a str, key: &str) -> Option<&'a str> {
    osrel.lines().find_map(|l| {
        l.strip_prefix(key)
            .and_then(|r| r.strip_prefix('='))
            .map(|v| v.trim().trim_matches('"'))
            .filter(|v| !v.is_empty())
    })
}

/// Checks that `b` is an Isthmus unified kernel image and reads its version and command line.
pub fn parse_uki(b: &[u8]) -> Result<UkiInfo, UkiError> {
    let sections = pe_sections(b)?;
    let find = |name: &str| {
        sections.iter().find(|(n, _)| n == name).map(|(_, r)| r.clone()).ok_or_else(|| {
            UkiError::Format(format!(
                "no {name} section (a unified kernel image has .osrel, .cmdline, .linux and .initrd)"
            ))
        })
    };
    let osrel = find(".osrel")?;
    let cmdline_at = find(".cmdline")?;
    let linux = find(".linux")?;
    let initrd = find(".initrd")?;
    let osrel = String::from_utf8_lossy(&b[osrel]);
    let osrel = osrel.trim_end_matches('\0');
    if osrel_value(osrel, "ID") != Some("isthmus") {
        return Err(UkiError::Format(format!(
            "its .osrel says ID={}, not isthmus",
            osrel_value(osrel, "ID").unwrap_or("(none)")
        )));
    }
    let version = osrel_value(osrel, "IMAGE_VERSION")
        .or_else(|| osrel_value(osrel, "VERSION_ID"))
        .ok_or_else(|| UkiError::Format("its .osrel has no IMAGE_VERSION".into()))?
        .to_string();
    let cmdline = String::from_utf8_lossy(&b[cmdline_at.clone()])
        .trim_end_matches(['\0', '\n', ' '])
        .to_string();
    if slot_in(&cmdline).is_none() {
        return Err(UkiError::Format(format!(
            "its command line has no isthmus.slot=a|b: {cmdline:?}"
        )));
    }
    // Linux boot protocol: the setup header's magic "HdrS" at 0x202 of a bzImage.
    if b.get(linux.start + 0x202..linux.start + 0x206) != Some(b"HdrS") {
        return Err(UkiError::Format("its .linux section is not a bzImage kernel".into()));
    }
    if initrd.is_empty() {
        return Err(UkiError::Format("its .initrd section is empty".into()));
    }
    Ok(UkiInfo { version, cmdline, cmdline_at })
}

/// The slot (`a` or `b`) that `isthmus.slot=` names on a command line.
pub fn slot_in(cmdline: &str) -> Option<&str> {
    cmdline
        .split_ascii_whitespace()
        .find_map(|w| w.strip_prefix("isthmus.slot="))
        .filter(|s| *s == "a" || *s == "b")
}

/// Rewrites `isthmus.slot=?` in the image's `.cmdline` to `slot`, in place (same length).
pub fn retarget(b: &mut [u8], info: &UkiInfo, slot: &str) -> Result<(), UkiError> {
    let key = b"isthmus.slot=";
    let at = info.cmdline_at.clone();
    // The word `slot_in` reads: the first one that starts with the key. A key inside another
    // word (`root=/x.isthmus.slot=b`) is not the slot, and rewriting it left the slot unchanged.
    let cmdline = &b[at.clone()];
    let pos = (0..cmdline.len())
        .filter(|&p| p == 0 || cmdline[p - 1].is_ascii_whitespace())
        .find(|&p| cmdline[p..].starts_with(key))
        .ok_or_else(|| UkiError::Format("no isthmus.slot= on the command line".into()))?;
    let i = at.start + pos + key.len();
    match (b.get(i), slot.as_bytes()) {
        (Some(b'a' | b'b'), [s @ (b'a' | b'b')]) => {
            b[i] = *s;
            Ok(())
        }
        _ => Err(UkiError::Invalid(format!("cannot retarget the image to slot {slot:?}"))),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A minimal PE image with the four UKI sections (PE/COFF §3: DOS stub, PE signature, COFF
    /// header, section table).
    pub(crate) fn fake_uki(osrel: &str, cmdline: &str, bzimage: bool) -> Vec<u8> {
        let mut linux = vec![0u8; 0x300];
        if bzimage {
            linux[0x202..0x206].copy_from_slice(b"HdrS");
        }
        let sections: Vec<(&str, Vec<u8>)> = vec![
            (".osrel", osrel.as_bytes().to_vec()),
            (".cmdline", cmdline.as_bytes().to_vec()),
            (".linux", linux),
            (".initrd", vec![0x1f, 0x8b, 8, 0]),
        ];
        let pe = 0x80usize;
        let table = pe + 4 + 20;
        let mut data_at = table + 40 * sections.len();
        let mut b = vec![0u8; data_at];
        b[..2].copy_from_slice(b"MZ");
        b[0x3c..0x40].copy_from_slice(&(pe as u32).to_le_bytes());
        b[pe..pe + 4].copy_from_slice(b"PE\0\0");
        b[pe + 4..pe + 6].copy_from_slice(&0x8664u16.to_le_bytes());
        b[pe + 6..pe + 8].copy_from_slice(&(sections.len() as u16).to_le_bytes());
        for (i, (name, data)) in sections.iter().enumerate() {
            let h = table + i * 40;
            b[h..h + name.len()].copy_from_slice(name.as_bytes());
            b[h + 8..h + 12].copy_from_slice(&(data.len() as u32).to_le_bytes());
            b[h + 16..h + 20].copy_from_slice(&(data.len() as u32).to_le_bytes());
            b[h + 20..h + 24].copy_from_slice(&(data_at as u32).to_le_bytes());
            data_at += data.len();
        }
        for (_, data) in &sections {
            b.extend_from_slice(data);
        }
        b
    }

    pub(crate) const OSREL: &str = "NAME=Isthmus\nID=isthmus\nIMAGE_VERSION=0.1.1\n";

    #[test]
    fn a_uki_is_parsed_and_retargeted_in_place() {
        let mut b = fake_uki(OSREL, "console=ttyS0 isthmus.slot=a quiet", true);
        let info = parse_uki(&b).unwrap();
        assert_eq!(info.version, "0.1.1");
        assert_eq!(info.cmdline, "console=ttyS0 isthmus.slot=a quiet");
        let len = b.len();
        retarget(&mut b, &info, "b").unwrap();
        assert_eq!(b.len(), len);
        assert_eq!(parse_uki(&b).unwrap().cmdline, "console=ttyS0 isthmus.slot=b quiet");
    }

    #[test]
    fn retarget_rewrites_the_slot_word_not_a_key_inside_another_word() {
        // The first `isthmus.slot=` in the bytes used to be rewritten (fuzz/corpus/uki has it).
        let cmdline = "root=/dev/x.isthmus.slot=b isthmus.slot=a";
        let mut b = fake_uki(OSREL, cmdline, true);
        let info = parse_uki(&b).unwrap();
        retarget(&mut b, &info, "b").unwrap();
        assert_eq!(parse_uki(&b).unwrap().cmdline, "root=/dev/x.isthmus.slot=b isthmus.slot=b");
        let mut b = fake_uki(OSREL, "x.isthmus.slot=c isthmus.slot=b", true);
        let info = parse_uki(&b).unwrap();
        retarget(&mut b, &info, "a").unwrap();
        assert_eq!(slot_in(&parse_uki(&b).unwrap().cmdline), Some("a"));
    }

    #[test]
    fn images_that_are_not_isthmus_ukis_are_refused_with_the_reason() {
        let msg = |b: &[u8]| parse_uki(b).unwrap_err().to_string();
        assert!(msg(b"\x1f\x8b\x08 a gzip file").contains("no MZ header"));
        let other = fake_uki("ID=debian\nIMAGE_VERSION=12\n", "isthmus.slot=a", true);
        assert!(msg(&other).contains("ID=debian, not isthmus"), "{}", msg(&other));
        let noslot = fake_uki(OSREL, "console=ttyS0", true);
        assert!(msg(&noslot).contains("no isthmus.slot="), "{}", msg(&noslot));
        let nokernel = fake_uki(OSREL, "isthmus.slot=a", false);
        assert!(msg(&nokernel).contains("not a bzImage"), "{}", msg(&nokernel));
        let mut cut = fake_uki(OSREL, "isthmus.slot=a", true);
        cut.truncate(cut.len() - 10);
        assert!(msg(&cut).contains("runs past the end"), "{}", msg(&cut));
        // Arbitrary bytes never panic.
        for n in 0..200 {
            let junk: Vec<u8> = (0..n).map(|i| (i * 37 % 251) as u8).collect();
            let _ = parse_uki(&junk);
            let mut mz = junk.clone();
            if mz.len() > 2 {
                mz[..2].copy_from_slice(b"MZ");
            }
            let _ = parse_uki(&mz);
        }
    }
}

//! Safe firmware upgrades: write the other A/B slot, reboot into it on trial, and bless it only
//! once its health gates pass.
//!
//! The upgrade file is the firmware as one unified kernel image (UKI), the
//! `build/isthmus-VERSION.efi` that `make image` writes: a PE/COFF image (Microsoft PE/COFF
//! specification §3–4) with the `.osrel`, `.cmdline`, `.linux` and `.initrd` sections of the Boot
//! Loader Specification's type #2 entries. [`parse_uki`] checks it (PE headers, the four
//! sections in bounds, `ID=isthmus` and an `IMAGE_VERSION` in `.osrel`, `isthmus.slot=` on the
//! command line, a bzImage in `.linux`) and refuses anything else with a message naming what is
//! wrong; the upload's SHA-256 is compared with the one the client computed.
//!
//! [`stage`] writes it into the slot that is not running as `EFI/Linux/fw-X+N.efi` (systemd's
//! Automatic Boot Assessment: N tries), with its command line retargeted in place to
//! `isthmus.slot=X` (same length, so no section moves), records the upgrade and the tunnels that
//! are up in `<data_dir>/upgrade.json` on the data partition, and the caller reboots. systemd-boot
//! boots the newest `IMAGE_VERSION` that still has tries, so an upgrade must carry a newer version
//! than the running one.
//!
//! After the reboot, [`run_gate`] checks the health gates: the configuration is applied (the daemon
//! got this far) and every tunnel that was up before the upgrade is up again within `gate_secs`.
//! Then it blesses the slot ([`crate::system::pid1::bless_booted_slot`]); otherwise it records why and
//! reboots, and once the tries run out systemd-boot falls back to the old slot by itself. PID 1
//! enforces the same deadline ([`trial_deadline`]) in case the daemon never gets that far (it
//! cannot apply the configuration, or it crashes). Back on the old slot, the gate records that the
//! upgrade fell back. Every step is an event.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use isthmus_api::{self as api, EventKind, Severity};
use sha2::Digest;

use crate::obs::Readings;
use crate::obs::alarms::Alarms;
use crate::obs::events::EventBus;
use crate::system::pid1;

/// Largest upgrade image accepted (a generic-flavour UKI is about 40 MiB).
pub const MAX_IMAGE: usize = 192 << 20;
/// Health gate time limit when the request names none.
pub const DEFAULT_GATE_SECS: u64 = 120;
/// Boots the new slot gets when the request names none.
pub const DEFAULT_TRIES: u32 = 3;
/// The record's file name under the data directory.
pub const RECORD_FILE: &str = "upgrade.json";
/// Where PID 1 looks for the record (the image's data directory).
pub const IMAGE_RECORD: &str = "/data/isthmus/upgrade.json";
/// Extra time PID 1 gives the daemon beyond the gate (its own start-up).
pub const PID1_MARGIN: Duration = Duration::from_secs(30);

/// What can go wrong with an upgrade.
#[derive(Debug, thiserror::Error)]
pub enum UpgradeError {
    /// The upload is not an Isthmus unified kernel image.
    #[error("not an Isthmus firmware image: {0}")]
    Format(String),
    /// The upload's SHA-256 differs from the one the client sent.
    #[error("checksum mismatch: the client sent sha256 {expected}, the daemon received {actual}")]
    Checksum {
        /// What the client computed.
        expected: String,
        /// What arrived.
        actual: String,
    },
    /// The image is not newer than the running firmware, so systemd-boot would not pick it.
    #[error(
        "version {new} is not newer than the running {running}: systemd-boot boots the newest slot, so the upgrade would never run (build it with a higher version: `make image ARGS=\"--version X\"`)"
    )]
    NotNewer {
        /// The upload's version.
        new: String,
        /// The running version.
        running: String,
    },
    /// This daemon does not run from the appliance image.
    #[error("not running as the appliance firmware: {0}")]
    NotAppliance(String),
    /// A request parameter is out of range.
    #[error("{0}")]
    Invalid(String),
    /// Reading or writing the ESP or the record failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// PID 1 duties (mounting the ESP, blessing) failed.
    #[error(transparent)]
    Boot(#[from] pid1::BootError),
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> UpgradeError {
    let what = what.into();
    move |source| UpgradeError::Io { what, source }
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
fn pe_sections(b: &[u8]) -> Result<Vec<(String, std::ops::Range<usize>)>, UpgradeError> {
    let bad = |m: &str| UpgradeError::Format(m.to_string());
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
        return Err(UpgradeError::Format(format!(
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
            UpgradeError::Format(format!("section {name} runs past the end of the file"))
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
pub fn parse_uki(b: &[u8]) -> Result<UkiInfo, UpgradeError> {
    let sections = pe_sections(b)?;
    let find = |name: &str| {
        sections.iter().find(|(n, _)| n == name).map(|(_, r)| r.clone()).ok_or_else(|| {
            UpgradeError::Format(format!(
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
        return Err(UpgradeError::Format(format!(
            "its .osrel says ID={}, not isthmus",
            osrel_value(osrel, "ID").unwrap_or("(none)")
        )));
    }
    let version = osrel_value(osrel, "IMAGE_VERSION")
        .or_else(|| osrel_value(osrel, "VERSION_ID"))
        .ok_or_else(|| UpgradeError::Format("its .osrel has no IMAGE_VERSION".into()))?
        .to_string();
    let cmdline = String::from_utf8_lossy(&b[cmdline_at.clone()])
        .trim_end_matches(['\0', '\n', ' '])
        .to_string();
    if slot_in(&cmdline).is_none() {
        return Err(UpgradeError::Format(format!(
            "its command line has no isthmus.slot=a|b: {cmdline:?}"
        )));
    }
    // Linux boot protocol: the setup header's magic "HdrS" at 0x202 of a bzImage.
    if b.get(linux.start + 0x202..linux.start + 0x206) != Some(b"HdrS") {
        return Err(UpgradeError::Format("its .linux section is not a bzImage kernel".into()));
    }
    if initrd.is_empty() {
        return Err(UpgradeError::Format("its .initrd section is empty".into()));
    }
    Ok(UkiInfo { version, cmdline, cmdline_at })
}

fn slot_in(cmdline: &str) -> Option<&str> {
    cmdline
        .split_ascii_whitespace()
        .find_map(|w| w.strip_prefix("isthmus.slot="))
        .filter(|s| *s == "a" || *s == "b")
}

/// Rewrites `isthmus.slot=?` in the image's `.cmdline` to `slot`, in place (same length).
pub fn retarget(b: &mut [u8], info: &UkiInfo, slot: &str) -> Result<(), UpgradeError> {
    let key = b"isthmus.slot=";
    let at = info.cmdline_at.clone();
    let pos = b[at.clone()]
        .windows(key.len())
        .position(|w| w == key)
        .ok_or_else(|| UpgradeError::Format("no isthmus.slot= on the command line".into()))?;
    let i = at.start + pos + key.len();
    match (b.get(i), slot.as_bytes()) {
        (Some(b'a' | b'b'), [s @ (b'a' | b'b')]) => {
            b[i] = *s;
            Ok(())
        }
        _ => Err(UpgradeError::Invalid(format!("cannot retarget the image to slot {slot:?}"))),
    }
}

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

/// Reads the upgrade record.
pub fn read_record(path: &Path) -> Option<api::UpgradeRecord> {
    serde_json::from_slice(&fs::read(path).ok()?).ok()
}

/// Writes the upgrade record durably (temporary file, fsync, rename).
pub fn write_record(path: &Path, r: &api::UpgradeRecord) -> Result<(), UpgradeError> {
    let tmp = path.with_extension("json.tmp");
    let json = serde_json::to_vec_pretty(r).unwrap_or_default();
    let mut f = fs::File::create(&tmp).map_err(io(format!("create {}", tmp.display())))?;
    f.write_all(&json).map_err(io(format!("write {}", tmp.display())))?;
    f.sync_all().map_err(io(format!("sync {}", tmp.display())))?;
    fs::rename(&tmp, path).map_err(io(format!("rename to {}", path.display())))?;
    Ok(())
}

/// When PID 1 must reboot if the booted slot is still on trial: the record's gate plus a margin
/// for the daemon's start, or `None` when the booted slot is not on trial.
pub fn trial_deadline(record: &Path, booted: &str) -> Option<Duration> {
    let r = read_record(record)?;
    let on_trial = r.to_slot == booted && (r.state == "trial" || r.state == "gate-failed");
    on_trial.then(|| Duration::from_secs(r.gate_secs) + PID1_MARGIN)
}

/// True while the record still says the booted slot is on trial (PID 1's check at its deadline).
pub fn still_on_trial(record: &Path, booted: &str) -> bool {
    read_record(record).is_some_and(|r| r.to_slot == booted && r.state != "blessed")
}

/// An upgrade request, as the API received it.
pub struct Request<'a> {
    /// The uploaded image.
    pub image: &'a [u8],
    /// SHA-256 the client computed (hex), if it sent one.
    pub sha256: Option<&'a str>,
    /// Health gate time limit.
    pub gate_secs: u64,
    /// Boots the new slot gets.
    pub tries: u32,
    /// The caller.
    pub who: &'a str,
}

/// Verifies the image and writes it into the other slot on trial; records the upgrade. The caller
/// reboots (see [`reboot_soon`]).
pub fn stage(
    r: &Readings,
    data_dir: &Path,
    events: &EventBus,
    req: Request<'_>,
) -> Result<api::UpgradeResponse, UpgradeError> {
    if !(1..=9).contains(&req.tries) {
        return Err(UpgradeError::Invalid(format!(
            "tries must be 1 to 9 (systemd-boot's counter), not {}",
            req.tries
        )));
    }
    if !(10..=3600).contains(&req.gate_secs) {
        return Err(UpgradeError::Invalid(format!(
            "the health gate time limit must be 10 to 3600 s, not {}",
            req.gate_secs
        )));
    }
    let actual = hex::encode(sha2::Sha256::digest(req.image));
    if let Some(expected) = req.sha256 {
        let expected = expected.trim().to_ascii_lowercase();
        if expected != actual {
            return Err(UpgradeError::Checksum { expected, actual });
        }
    }
    let info = parse_uki(req.image)?;
    let booted = pid1::booted_slot()
        .map_err(|e| UpgradeError::NotAppliance(format!("{e} (no A/B slots to write)")))?;
    let running = running_version();
    if version_cmp(&info.version, &running) != std::cmp::Ordering::Greater {
        return Err(UpgradeError::NotNewer { new: info.version, running });
    }
    let to = other_slot(&booted);
    let mut image = req.image.to_vec();
    retarget(&mut image, &info, to)?;
    let tunnels = r.tunnels_up();

    let esp = pid1::EspMount::mount()?;
    let dir = esp.path().join("EFI/Linux");
    // The other slot's old image goes first: the ESP holds two slots, not three.
    for e in fs::read_dir(&dir).map_err(io(format!("read {}", dir.display())))?.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if parse_slot_file(&name).is_some_and(|(s, _)| s == to) {
            fs::remove_file(e.path()).map_err(io(format!("remove {name}")))?;
        }
    }
    let name = format!("fw-{to}+{}.efi", req.tries);
    let tmp = dir.join(format!("fw-{to}.new"));
    let mut f = fs::File::create(&tmp).map_err(io(format!("create {}", tmp.display())))?;
    f.write_all(&image).map_err(io(format!("write the image to the ESP ({})", tmp.display())))?;
    f.sync_all().map_err(io("sync the ESP"))?;
    drop(f);
    fs::rename(&tmp, dir.join(&name)).map_err(io(format!("rename to {name}")))?;
    // Read back what the firmware will load.
    let back = fs::read(dir.join(&name)).map_err(io(format!("read back {name}")))?;
    if back != image {
        return Err(UpgradeError::Io {
            what: format!("verify {name}"),
            source: std::io::Error::other("the ESP returned different bytes"),
        });
    }
    drop(esp);

    let record = api::UpgradeRecord {
        from_slot: booted.clone(),
        to_slot: to.into(),
        from_version: running.clone(),
        to_version: info.version.clone(),
        sha256: actual.clone(),
        requested_by: req.who.into(),
        time: crate::obs::events::unix_now(),
        tunnels: tunnels.clone(),
        gate_secs: req.gate_secs,
        tries: req.tries,
        state: "trial".into(),
        detail: format!("written to slot {to}; rebooting into it"),
    };
    write_record(&data_dir.join(RECORD_FILE), &record)?;
    events.emit(
        EventKind::UpgradeStaged,
        "system",
        Severity::Info,
        format!(
            "{} wrote firmware {} (sha256 {actual}) to slot {to} with {} tries; rebooting from {running} (slot {booted}); health gate: configuration applied{} within {} s",
            req.who,
            info.version,
            req.tries,
            if tunnels.is_empty() {
                String::new()
            } else {
                format!(", tunnels {} up", tunnels.join(", "))
            },
            req.gate_secs
        ),
    );
    Ok(api::UpgradeResponse {
        slot: to.into(),
        file: format!("EFI/Linux/{name}"),
        version: info.version,
        sha256: actual,
        bytes: req.image.len() as u64,
        tunnels,
        gate_secs: req.gate_secs,
        tries: req.tries,
        rebooting: true,
    })
}

/// Asks PID 1 for a clean reboot after `delay` (so the API answer leaves first).
pub fn reboot_soon(delay: Duration) {
    std::thread::spawn(move || {
        std::thread::sleep(delay);
        if pid1::in_image() {
            // SAFETY: kill(2) with a valid signal; PID 1 reboots cleanly on SIGTERM.
            unsafe { libc::kill(1, libc::SIGTERM) };
        }
    });
}

/// `GET /system`.
pub fn status(data_dir: &Path) -> api::SystemStatus {
    let booted = pid1::booted_slot().ok();
    let slots = match &booted {
        Some(b) => match pid1::EspMount::mount() {
            Ok(esp) => slots_in(&esp.path().join("EFI/Linux"), Some(b)),
            Err(e) => {
                tracing::warn!("reading the ESP: {e}");
                vec![]
            }
        },
        None => vec![],
    };
    api::SystemStatus {
        version: running_version(),
        booted_slot: booted,
        slots,
        upgrade: read_record(&data_dir.join(RECORD_FILE)),
    }
}

/// What the upgrade record says when the daemon starts on slot `booted`.
#[derive(Debug, PartialEq, Eq)]
enum GateStart {
    /// Nothing to do: no upgrade pending, or it was blessed.
    Done,
    /// The upgrade fell back to the old slot (`newly`: found just now, the record was updated
    /// with the reason; else recorded at an earlier start).
    FellBack { newly: bool },
    /// The booted slot is the new one, on trial: run the gate.
    Trial,
}

/// Reads the record at start (`running`: this firmware's version); when the new slot used up
/// its tries and systemd-boot booted the old one, records that it fell back and why.
fn gate_start(r: &mut api::UpgradeRecord, booted: &str, running: &str) -> GateStart {
    match r.state.as_str() {
        "blessed" => return GateStart::Done,
        "fell-back" => return GateStart::FellBack { newly: false },
        _ => {}
    }
    if booted == r.to_slot {
        return GateStart::Trial;
    }
    r.detail = format!(
        "firmware {} (slot {}) did not pass its health gate{}; the firmware fell back to {running} (slot {booted})",
        r.to_version,
        r.to_slot,
        if r.detail.is_empty() || r.state == "trial" {
            String::new()
        } else {
            format!(" ({})", r.detail)
        },
    );
    r.state = "fell-back".into();
    GateStart::FellBack { newly: true }
}

/// What the health gate reads and where it reports.
pub struct Gate<'a> {
    /// Fresh readings each time it is called (the gate polls until the tunnels are up).
    pub readings: &'a dyn Fn() -> Readings,
    /// The daemon's data folder (the upgrade record lives there).
    pub data_dir: &'a Path,
    /// Where the gate's events go.
    pub events: &'a EventBus,
    /// Raises and clears `upgrade-failed`.
    pub alarms: &'a Alarms,
}

/// The health gate after an upgrade; runs once per daemon start (on its own thread).
///
/// Blesses the booted slot when it is on trial and every tunnel of the record is up within the
/// gate; otherwise records why and reboots. On the old slot after a fallback, records that.
pub fn run_gate(g: &Gate<'_>) {
    let path = g.data_dir.join(RECORD_FILE);
    let Some(mut r) = read_record(&path) else { return };
    let Ok(booted) = pid1::booted_slot() else { return };
    let save = |r: &api::UpgradeRecord| {
        if let Err(e) = write_record(&path, r) {
            tracing::error!("upgrade record: {e}");
        }
    };
    match gate_start(&mut r, &booted, &running_version()) {
        GateStart::Done => return,
        GateStart::FellBack { newly } => {
            // The alarm at every start, not only the first after the fallback: the box still
            // runs the old firmware until a later upgrade passes its gate.
            if newly {
                save(&r);
                failed(g, EventKind::UpgradeFellBack, &r.detail);
            } else {
                g.alarms.upgrade_failed(&r.detail);
            }
            return;
        }
        GateStart::Trial => {}
    }
    // A revision that cannot be applied no longer stops the daemon (it stays up for the
    // operator), so the gate checks it itself: on this firmware nothing applied.
    if (g.readings)().applied.is_none() {
        let why = "configuration not applied (the apply-failed alarm says why)".to_owned();
        return gate_failed(g, &mut r, &booted, why, save);
    }
    let started = Instant::now();
    let deadline = started + Duration::from_secs(r.gate_secs);
    g.events.emit(
        EventKind::UpgradeGate,
        "system",
        Severity::Info,
        format!(
            "firmware {} (slot {booted}) on trial: configuration applied; waiting up to {} s for tunnels {:?}",
            r.to_version, r.gate_secs, r.tunnels
        ),
    );
    let missing = loop {
        let up = (g.readings)().tunnels_up();
        let missing: Vec<String> = r.tunnels.iter().filter(|t| !up.contains(t)).cloned().collect();
        if missing.is_empty() || Instant::now() >= deadline {
            break missing;
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    if missing.is_empty() {
        match pid1::bless_booted_slot() {
            Ok(()) => {
                r.state = "blessed".into();
                r.detail = format!(
                    "health gate passed in {:.1} s (configuration applied{}): slot {booted} blessed",
                    started.elapsed().as_secs_f64(),
                    if r.tunnels.is_empty() {
                        String::new()
                    } else {
                        format!(", tunnels {} up", r.tunnels.join(", "))
                    }
                );
                save(&r);
                g.events.emit(
                    EventKind::UpgradeBlessed,
                    "system",
                    Severity::Info,
                    r.detail.clone(),
                );
                tracing::info!("{}", r.detail);
                g.alarms.upgrade_passed();
            }
            Err(e) => {
                r.detail = format!("health gate passed but blessing slot {booted} failed: {e}");
                save(&r);
                failed(g, EventKind::UpgradeGateFailed, &r.detail);
            }
        }
        return;
    }
    let why = format!("tunnels {} not up within {} s after boot", missing.join(", "), r.gate_secs);
    gate_failed(g, &mut r, &booted, why, save);
}

/// The trial firmware failed its gate (`why`): recorded, alarmed, and the box reboots so that
/// systemd-boot falls back once the tries run out.
fn gate_failed(
    g: &Gate<'_>,
    r: &mut api::UpgradeRecord,
    booted: &str,
    why: String,
    save: impl Fn(&api::UpgradeRecord),
) {
    r.state = "gate-failed".into();
    r.detail = why;
    save(r);
    let msg = format!(
        "firmware {} (slot {booted}) failed its health gate: {}; rebooting (the firmware falls back to slot {} once the tries run out)",
        r.to_version, r.detail, r.from_slot
    );
    failed(g, EventKind::UpgradeGateFailed, &msg);
    reboot_soon(Duration::from_secs(2));
}

/// An upgrade failed: a critical `event` about `system`, the log, and the `upgrade-failed`
/// alarm.
fn failed(g: &Gate<'_>, event: EventKind, msg: &str) {
    g.events.emit(event, "system", Severity::Critical, msg.to_owned());
    tracing::error!("{msg}");
    g.alarms.upgrade_failed(msg);
}

/// Records, before the daemon exits, that it could not apply its configuration while on trial.
pub fn note_start_failure(data_dir: &Path, error: &str) {
    let path: PathBuf = data_dir.join(RECORD_FILE);
    let Some(mut r) = read_record(&path) else { return };
    let on_trial = pid1::booted_slot().is_ok_and(|b| b == r.to_slot);
    if on_trial && (r.state == "trial" || r.state == "gate-failed") {
        r.state = "gate-failed".into();
        r.detail = format!("configuration not applied: {error}");
        let _ = write_record(&path, &r);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal PE image with the four UKI sections (PE/COFF §3: DOS stub, PE signature, COFF
    /// header, section table).
    fn fake_uki(osrel: &str, cmdline: &str, bzimage: bool) -> Vec<u8> {
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

    const OSREL: &str = "NAME=Isthmus\nID=isthmus\nIMAGE_VERSION=0.1.1\n";

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

    fn record(state: &str, detail: &str) -> api::UpgradeRecord {
        api::UpgradeRecord {
            from_slot: "a".into(),
            to_slot: "b".into(),
            from_version: "1.1.0".into(),
            to_version: "1.2.0".into(),
            sha256: String::new(),
            requested_by: "ops".into(),
            time: 0,
            tunnels: vec!["to-dc".into()],
            gate_secs: 120,
            tries: 3,
            state: state.into(),
            detail: detail.into(),
        }
    }

    /// Back on the old slot, a record on trial (or whose gate failed) becomes a fallback with
    /// the reason, found once; a fallback found at a later start stands again (the alarm is
    /// raised at every start); a blessed upgrade and the new slot on trial are not failures.
    #[test]
    fn a_fallback_is_recorded_once_and_stands_at_every_start() {
        let mut r = record("gate-failed", "tunnels to-dc not up within 120 s after boot");
        assert_eq!(gate_start(&mut r, "a", "1.1.0"), GateStart::FellBack { newly: true });
        assert_eq!(r.state, "fell-back");
        assert_eq!(
            r.detail,
            "firmware 1.2.0 (slot b) did not pass its health gate (tunnels to-dc not up within \
             120 s after boot); the firmware fell back to 1.1.0 (slot a)"
        );
        let detail = r.detail.clone();
        assert_eq!(gate_start(&mut r, "a", "1.1.0"), GateStart::FellBack { newly: false });
        assert_eq!(r.detail, detail);
        // The daemon never got to the gate on the new slot (PID 1 rebooted it).
        let mut r = record("trial", "written to slot b; rebooting into it");
        assert_eq!(gate_start(&mut r, "a", "1.1.0"), GateStart::FellBack { newly: true });
        assert!(r.detail.ends_with("health gate; the firmware fell back to 1.1.0 (slot a)"));
        assert_eq!(gate_start(&mut record("trial", ""), "b", "1.2.0"), GateStart::Trial);
        assert_eq!(gate_start(&mut record("blessed", ""), "b", "1.2.0"), GateStart::Done);
    }

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

    #[test]
    fn pid1_deadline_only_for_the_slot_on_trial() {
        let dir = std::env::temp_dir().join(format!("isthmus-rec-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join(RECORD_FILE);
        let mut r = api::UpgradeRecord {
            from_slot: "a".into(),
            to_slot: "b".into(),
            from_version: "0.1.0".into(),
            to_version: "0.1.1".into(),
            sha256: String::new(),
            requested_by: "ops".into(),
            time: 0,
            tunnels: vec!["to-b".into()],
            gate_secs: 30,
            tries: 3,
            state: "trial".into(),
            detail: String::new(),
        };
        write_record(&path, &r).unwrap();
        assert_eq!(trial_deadline(&path, "b"), Some(Duration::from_secs(30) + PID1_MARGIN));
        assert_eq!(trial_deadline(&path, "a"), None);
        assert!(still_on_trial(&path, "b"));
        r.state = "blessed".into();
        write_record(&path, &r).unwrap();
        assert_eq!(trial_deadline(&path, "b"), None);
        assert!(!still_on_trial(&path, "b"));
        assert_eq!(trial_deadline(&dir.join("none.json"), "b"), None);
        fs::remove_dir_all(&dir).unwrap();
    }
}

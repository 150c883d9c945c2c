//! Safe firmware upgrades: write the other A/B slot, reboot into it on trial, and bless it only
//! once its health gates pass.
//!
//! The upgrade file is the firmware as one unified kernel image (UKI), the
//! `build/isthmus-VERSION.efi` that `make image` writes: a PE/COFF image (Microsoft PE/COFF
//! specification §3–4) with the `.osrel`, `.cmdline`, `.linux` and `.initrd` sections of the Boot
//! Loader Specification's type #2 entries. [`parse_uki`] (in [`crate::system::uki`]) checks it
//! (PE headers, the four sections in bounds, `ID=isthmus` and an `IMAGE_VERSION` in `.osrel`,
//! `isthmus.slot=` on the command line, a bzImage in `.linux`) and refuses anything else with a
//! message naming what is wrong; the upload's SHA-256 is compared with the one the client
//! computed. The slots it goes into are [`crate::system::slot`]'s.
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
use crate::system::slot::{other_slot, parse_slot_file, running_version, slots_in, version_cmp};
use crate::system::uki::{UkiError, parse_uki, retarget};

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

impl From<UkiError> for UpgradeError {
    fn from(e: UkiError) -> UpgradeError {
        match e {
            UkiError::Format(m) => UpgradeError::Format(m),
            UkiError::Invalid(m) => UpgradeError::Invalid(m),
        }
    }
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> UpgradeError {
    let what = what.into();
    move |source| UpgradeError::Io { what, source }
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

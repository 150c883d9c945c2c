//! The UKI reader of `system upgrade` on untrusted bytes: `parse_uki` on an upload, then
//! `retarget` to each slot, as `upgrade::stage` does. Never panics, and:
//!
//! - what parses names a slot on its command line, and its `.cmdline` range is in the file;
//! - retargeting to `a` or `b` succeeds, changes at most one byte, inside `.cmdline`, and the
//!   image then parses to the same version and range with that slot on its command line;
//! - retargeting to anything else is refused and leaves the image alone.
#![no_main]

use libfuzzer_sys::fuzz_target;

// The daemon is heavy (wasmtime, axum, tokio): the UKI reader is one file that depends on `std`
// and `thiserror` only, compiled in here as it is compiled into the daemon.
#[path = "../../firmware/daemon/src/system/uki.rs"]
mod uki;

fuzz_target!(|data: &[u8]| {
    let Ok(info) = uki::parse_uki(data) else { return };
    assert!(info.cmdline_at.start <= info.cmdline_at.end && info.cmdline_at.end <= data.len());
    assert!(uki::slot_in(&info.cmdline).is_some(), "parsed without a slot: {:?}", info.cmdline);

    for slot in ["a", "b"] {
        let mut b = data.to_vec();
        uki::retarget(&mut b, &info, slot)
            .unwrap_or_else(|e| panic!("retarget to {slot} failed on {:?}: {e}", info.cmdline));
        let changed: Vec<usize> = (0..b.len()).filter(|&i| b[i] != data[i]).collect();
        assert!(changed.len() <= 1, "retarget changed {changed:?}");
        assert!(changed.iter().all(|i| info.cmdline_at.contains(i)), "changed outside .cmdline");
        let after = uki::parse_uki(&b).expect("a retargeted image parses");
        assert_eq!(after.version, info.version);
        assert_eq!(after.cmdline_at, info.cmdline_at);
        assert_eq!(uki::slot_in(&after.cmdline), Some(slot), "{:?}", after.cmdline);
    }

    let mut b = data.to_vec();
    assert!(uki::retarget(&mut b, &info, "c").is_err());
    assert!(uki::retarget(&mut b, &info, "").is_err());
    assert!(uki::retarget(&mut b, &info, "ab").is_err());
    assert_eq!(b, data);
});

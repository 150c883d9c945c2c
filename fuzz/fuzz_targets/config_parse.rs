//! The configuration parser and validation on untrusted text: what `POST /config` (and `isthmus
//! config check`) runs on an upload. Never panics, and:
//!
//! - `Config::check` is deterministic (same configuration, warnings and errors twice);
//! - the canonical form (`show`) of anything that parses parses back to the same configuration,
//!   inline secrets aside (they print as fingerprints);
//! - with a second document after a NUL byte (an edit of the first), `check_incremental` gives
//!   what a full `check` gives, as its documentation promises.
#![no_main]

use isthmus_config::{Checked, Config, Errors, Secret};
use libfuzzer_sys::fuzz_target;

/// The configuration as its canonical form reads back: inline secrets become their fingerprints.
fn redacted(mut c: Config) -> Config {
    let redact = |s: &mut Secret| {
        if let Secret::Inline(v) = s {
            *v = format!("<redacted sha256:{}>", isthmus_config::secret::fingerprint(v));
        }
    };
    c.tunnels.iter_mut().for_each(|t| redact(&mut t.psk));
    c.notify.iter_mut().filter_map(|n| n.secret.as_mut()).for_each(redact);
    c.api_tokens.iter_mut().filter_map(|t| t.token.as_mut()).for_each(redact);
    c
}

fn same(a: &Result<Checked, Errors>, b: &Result<Checked, Errors>, what: &str) {
    match (a, b) {
        (Ok(a), Ok(b)) => {
            assert_eq!(a.config, b.config, "{what}: configurations differ");
            assert_eq!(a.warnings, b.warnings, "{what}: warnings differ");
        }
        (Err(a), Err(b)) => assert_eq!(a.issues(), b.issues(), "{what}: errors differ"),
        (a, b) => panic!("{what}: {:?} vs {:?}", a.as_ref().err(), b.as_ref().err()),
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let (first, edit) = match text.split_once('\0') {
        Some((a, b)) => (a, Some(b)),
        None => (text, None),
    };
    let checked = Config::check(first);
    same(&checked, &Config::check(first), "check twice");

    if let Ok(c) = Config::from_toml(first) {
        let canon = c.to_toml_redacted();
        let back = Config::from_toml(&canon)
            .unwrap_or_else(|e| panic!("the canonical form does not parse: {e}\n{canon}"));
        assert_eq!(back, redacted(c), "the canonical form reads back differently:\n{canon}");
    }

    if let (Ok(prev), Some(edit)) = (&checked, edit) {
        same(&Config::check_incremental(edit, prev), &Config::check(edit), "incremental vs full");
    }
});

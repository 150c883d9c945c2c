//! strongSwan-syntax proposal parsing (`aes128-sha256-modp2048`, `chacha20poly1305-x25519`) on
//! untrusted text: what validation runs on every `ike_proposals` / `esp_proposals` entry of an
//! uploaded configuration. Never panics, and:
//!
//! - a proposal that parses prints (Display) as a proposal that parses back to the same one;
//! - a proposal selects a suite with itself, and that suite is one the proposal allows;
//! - naming the weak algorithms never fails.
#![no_main]

use isthmus_ike::proposal::{EspProposal, IkeProposal};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(p) = IkeProposal::parse(text) {
        let again = IkeProposal::parse(&p.to_string()).expect("printed proposal parses");
        assert_eq!(again, p, "IKE round trip of {text:?}");
        let suite = p.select(&p).expect("a proposal meets itself");
        assert!(p.allows(&suite));
        let _ = p.weak();
    }
    if let Ok(p) = EspProposal::parse(text) {
        let again = EspProposal::parse(&p.to_string()).expect("printed proposal parses");
        assert_eq!(again, p, "ESP round trip of {text:?}");
        for pfs in [false, true] {
            let suite = p.select(&p, pfs).expect("a proposal meets itself");
            assert!(p.allows(&suite));
        }
        let _ = p.weak();
    }
});

//! The plugin package reader on untrusted bytes: what `POST /plugins` runs on an upload
//! (`isthmus_package::verify`). Never panics, and:
//!
//! - a package that parses writes back to bytes that parse to the same package (and write back
//!   the same: the signature block is re-encoded, so an upload's own bytes may differ);
//! - verification against a key nobody holds refuses it (no package verifies by accident);
//! - re-signed with the fuzz key, it verifies, with the digest of exactly the manifest and the
//!   component that were signed; and with any one byte flipped it is refused, or verifies as the
//!   very same manifest and component (the signature covers both).
#![no_main]

use std::sync::LazyLock;

use isthmus_package::{self as package, Package, PublicKey, SecretKey};
use libfuzzer_sys::fuzz_target;

static KEY: LazyLock<(SecretKey, PublicKey)> =
    LazyLock::new(|| package::generate_key().expect("key generation"));

fuzz_target!(|data: &[u8]| {
    // The last two bytes choose a byte to flip in the re-signed package.
    let Some((data, flip)) = data.split_last_chunk::<2>() else { return };
    let flip = u16::from_le_bytes(*flip) as usize;
    let (sk, pk) = &*KEY;

    let Ok(pkg) = Package::parse(data) else {
        assert!(package::verify(data, std::slice::from_ref(pk)).is_err());
        return;
    };
    let bytes = pkg.to_bytes();
    let again = Package::parse(&bytes).expect("a written package parses");
    assert_eq!(again, pkg);
    assert_eq!(again.to_bytes(), bytes);
    assert!(package::verify(data, std::slice::from_ref(pk)).is_err(), "verified by a foreign key");

    let signed = package::sign(pkg.clone(), sk).expect("signing").to_bytes();
    let v = package::verify(&signed, std::slice::from_ref(pk)).expect("re-signed package verifies");
    assert_eq!(v.manifest(), &pkg.manifest);
    assert_eq!(v.component(), pkg.component.as_slice());
    assert_eq!(v.digest(), pkg.digest());
    assert_eq!(v.package().signer(), Some(pk));

    let mut tampered = signed.clone();
    let at = flip % tampered.len();
    tampered[at] ^= 1;
    if let Ok(t) = package::verify(&tampered, std::slice::from_ref(pk)) {
        // Only bytes outside the signed message may change: the JSON of the signature block
        // (hex case, whitespace), never the manifest or the component.
        assert_eq!(t.digest(), v.digest(), "a tampered package verified with another digest");
        assert_eq!(t.manifest(), v.manifest());
        assert_eq!(t.component(), v.component());
    }
});

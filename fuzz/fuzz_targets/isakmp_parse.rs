//! IKEv1 ISAKMP parsing (RFC 2408): never panic, and what parses re-encodes to a message that
//! parses to the same payloads.
#![no_main]

use isthmus_ike::v1::codec::{self, Body};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = codec::parse_message(data)
        && let Body::Plain(payloads) = &m.body
    {
        let again = codec::encode_plain(m.header, payloads);
        let m2 = codec::parse_message(&again).expect("re-encoded message parses");
        assert_eq!(m2.body, m.body);
    }
    // Decrypted chains are parsed on their own (the first payload type comes from the header).
    if let Some((&first, rest)) = data.split_first() {
        let _ = codec::parse_payloads(first, rest);
    }
});

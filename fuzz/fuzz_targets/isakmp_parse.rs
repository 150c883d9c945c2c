//! IKEv1 ISAKMP parsing (RFC 2408) and a Main Mode responder: never panic, and what parses
//! re-encodes to a message that parses to the same payloads.
#![no_main]

use std::time::Duration;

use isthmus_ike::proposal::parse_ike_list;
use isthmus_ike::v1::codec::{self, Body};
use isthmus_ike::v1::main_mode::{MainMode, Phase1Config};
use isthmus_ike::Psk;
use libfuzzer_sys::fuzz_target;
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;

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
    let cfg = Phase1Config {
        proposals: parse_ike_list("aes128-sha256-modp2048,3des-sha1-modp1024").unwrap(),
        life: Duration::from_secs(3600),
        psk: Psk::new(b"fuzz".to_vec()),
        local_id: "192.0.2.1".parse().unwrap(),
        remote_id: "%any".parse().unwrap(),
        local: "192.0.2.1:500".parse().unwrap(),
        remote: "192.0.2.2:500".parse().unwrap(),
    };
    let mut rng = ChaCha20Rng::from_seed([5; 32]);
    if let Ok((mut mm, _)) = MainMode::respond(cfg, data, &mut rng) {
        let _ = mm.handle(data, &mut rng);
    }
});

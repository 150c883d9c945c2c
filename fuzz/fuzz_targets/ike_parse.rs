//! IKEv2 message parsing and the endpoint's handling of untrusted datagrams: never panic.
//!
//! The first byte picks the target: the codec alone, a responder receiving a request, or an
//! initiator (after its IKE_SA_INIT) receiving a response, with the initiator's SPI patched in
//! so that the fuzzer reaches the response handling without guessing 64 random bits.
#![no_main]

use std::net::SocketAddr;
use std::time::Instant;

use isthmus_ike::codec::{self, Payload};
use isthmus_ike::{Endpoint, EndpointConfig, Psk, TunnelConfig};
use libfuzzer_sys::fuzz_target;

fn tunnel(local: &str, remote: &str) -> TunnelConfig {
    let l: SocketAddr = local.parse().unwrap();
    let r: SocketAddr = remote.parse().unwrap();
    TunnelConfig::new(
        "t",
        l,
        r,
        Psk::new(b"fuzz".to_vec()),
        vec!["10.1.0.0/16".parse().unwrap()],
        vec!["10.2.0.0/16".parse().unwrap()],
    )
}

fuzz_target!(|input: &[u8]| {
    let Some((&mode, data)) = input.split_first() else { return };
    let local: SocketAddr = "192.0.2.1:500".parse().unwrap();
    let remote: SocketAddr = "192.0.2.2:500".parse().unwrap();
    let now = Instant::now();
    match mode % 3 {
        0 => {
            if let Ok(m) = codec::parse_message(data) {
                // What parses re-encodes and parses to the same payloads.
                if !m.payloads.iter().any(|p| matches!(p, Payload::Sk { .. })) {
                    let again = codec::encode_plain(m.header, &m.payloads);
                    let m2 = codec::parse_message(&again).expect("re-encoded message parses");
                    assert_eq!(m.payloads, m2.payloads);
                }
            }
        }
        1 => {
            let mut ep = Endpoint::new(EndpointConfig::default(), [7; 32]);
            ep.add_tunnel(tunnel("192.0.2.1:500", "192.0.2.2:500")).unwrap();
            ep.handle_datagram(now, local, remote, data);
            while ep.poll_transmit().is_some() {}
            while ep.poll_event().is_some() {}
            ep.handle_timeout(now);
        }
        _ => {
            let mut ep = Endpoint::new(EndpointConfig::default(), [8; 32]);
            ep.add_tunnel(tunnel("192.0.2.1:500", "192.0.2.2:500")).unwrap();
            ep.initiate("t", now).unwrap();
            let Some(req) = ep.poll_transmit() else { return };
            let mut d = data.to_vec();
            if d.len() >= 8 {
                d[..8].copy_from_slice(&req.data[..8]);
            }
            ep.handle_datagram(now, local, remote, &d);
            while ep.poll_transmit().is_some() {}
            while ep.poll_event().is_some() {}
        }
    }
});

//! The packet views and helpers of `isthmus-wire` on untrusted bytes: never panic, and what
//! they report stays within the buffer.
#![no_main]

use isthmus_wire::{
    Ipv4Packet, Ipv6Packet, NattPayload, classify_natt, flow_key, icmpv4_frag_needed,
    icmpv6_packet_too_big, parse_outer, tcp,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = flow_key(data);
    if let Ok(p) = parse_outer(data) {
        if let NattPayload::Esp(e) | NattPayload::Ike(e) = p.payload {
            assert!(e.len() <= data.len());
        }
    }
    let _ = classify_natt(data);
    if let Ok(p) = Ipv4Packet::new_checked(data) {
        assert!(p.header_len() <= p.total_len() && p.total_len() <= data.len());
        let _ = (p.payload(), p.verify_checksum(), p.src(), p.dst());
    }
    if let Ok(p) = Ipv6Packet::new_checked(data) {
        if let Ok(u) = p.upper_layer() {
            assert!(u.offset <= p.total_len());
        }
    }
    let mut out = [0u8; 1500];
    if let Ok(n) = icmpv4_frag_needed(data, 1400, [10, 31, 0, 1].into(), &mut out) {
        assert!(n <= 576);
    }
    if let Ok(n) = icmpv6_packet_too_big(data, 1400, "2001:db8::1".parse().unwrap(), &mut out) {
        assert!(n <= 1280);
    }
    let mut copy = data.to_vec();
    let _ = tcp::clamp_mss(&mut copy, 1360);
});

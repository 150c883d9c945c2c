//! The netlink answers the reconciler decodes (`isthmus_net::fuzzing::answer`): ACKs of pipelined
//! requests, and link, address, route, rule and nftables dumps. Never panics; routes and rules
//! read back re-encode to what they were read from (see the function's documentation).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| isthmus_net::fuzzing::answer(data));

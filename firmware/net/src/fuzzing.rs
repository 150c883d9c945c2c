//! The decoding of netlink answers, for the fuzz target `fuzz/fuzz_targets/netlink_answers.rs`
//! (feature `fuzzing`; not part of the API). The kernel is trusted, but a reconciler that panics
//! on an answer it did not expect (a newer kernel, a dump that changed mid-read) takes the daemon
//! down, so every byte the reconciler reads goes through here.

use std::collections::HashMap;

use crate::firewall::{self, ObservedTable};
use crate::kernel::{self, KRoute};
use crate::nl::{self, KernelError};
use crate::state::NextHop;

/// The dump request's sequence number in [`answer`].
pub const SEQ: u32 = 1;

/// Decodes `data` as the kernel's answer: the first byte picks what the reconciler asked for
/// (ACKs of pipelined requests, or one of its dumps), the rest is one datagram of the answer.
/// Panics when a property of the decoding does not hold:
///
/// - ACKs fill each request's result at most once, and the count of results matches;
/// - a route or rule that is read back re-encodes (as the reconciler writes it) to a message
///   that is read back the same, so a route the reconciler installed never looks drifted.
pub fn answer(data: &[u8]) {
    let Some((&what, buf)) = data.split_first() else { return };
    let names: HashMap<u32, String> =
        [(1, "wan0".to_string()), (2, "tun0".to_string())].into_iter().collect();
    let mut table = ObservedTable::default();
    let mut each = |kind: u16, p: &[u8]| -> Result<(), crate::Error> {
        match what % 8 {
            1 => drop(kernel::parse_link(p)?),
            2 => drop(kernel::parse_address(p, &names)?),
            3 => {
                if let Some(r) = kernel::parse_route(p, &names) {
                    route_round_trips(&r, &names);
                }
            }
            4 => {
                for v4 in [true, false] {
                    if let Some(r) = kernel::parse_rule(p, v4)? {
                        let again = kernel::emit(&kernel::rule_msg(&r));
                        let back = kernel::parse_rule(&again, v4).expect("own rule parses");
                        assert_eq!(back.as_ref(), Some(&r), "a rule reads back differently");
                    }
                }
            }
            5 => drop(firewall::is_our_table(p)),
            6 => table.chains.extend(firewall::parse_chain(p)),
            _ => {
                // Rules land in chains already seen; let the message's type make one up.
                table.chains.push((format!("c{kind}"), false, false, Vec::new()));
                table.add_rule(p);
            }
        }
        Ok(())
    };
    if what % 8 == 0 {
        let n = usize::from(what >> 3);
        let mut results: Vec<Option<Result<(), KernelError>>> = vec![None; n];
        let filled = nl::take_acks(buf, SEQ, &mut results);
        assert_eq!(filled, results.iter().filter(|r| r.is_some()).count());
        let again = nl::take_acks(buf, SEQ, &mut results);
        assert_eq!(again, 0, "an ACK was taken twice");
        return;
    }
    let mut interrupted = false;
    let _ = nl::dump_datagram(buf, "fuzz", SEQ, &mut interrupted, &mut each);
}

fn route_round_trips(r: &KRoute, names: &HashMap<u32, String>) {
    let Some(via) = &r.via else { return };
    let oif = match via {
        NextHop::Interface(name) => Some(
            names
                .iter()
                .find(|(_, n)| *n == name)
                .map(|(i, _)| *i)
                .or_else(|| name.strip_prefix('#')?.parse().ok())
                .expect("an interface route names a known index"),
        ),
        _ => None,
    };
    let again = kernel::emit(&kernel::route_msg(&r.key, via, oif));
    let back = kernel::parse_route(&again, names);
    assert_eq!(back.as_ref(), Some(r), "a route reads back differently");
}

//! Untrusted bytes never panic the endpoint, and garbage does not disturb established SAs:
//! every message of a full run (handshake, rekeys, deletion) is mutated thousands of times
//! and fed to both sides of an established pair, which must still work afterwards. (The
//! cargo-fuzz target `fuzz/fuzz_targets/ike_parse.rs` explores further with coverage.)

mod util;

use isthmus_ike::codec;
use util::*;

struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn recorded_run() -> Vec<Vec<u8>> {
    let (a, b) = configs();
    let mut p = Pair::new(with_esp(a, "aes128gcm16-x25519"), with_esp(b, "aes128gcm16-x25519"));
    p.handshake();
    let spi = keys(child_ups(&p.a_events)[0]).0;
    p.a.rekey_child("t1", spi, p.now).unwrap();
    p.drive();
    p.b.rekey_ike("t1", p.now).unwrap();
    p.drive();
    p.a.terminate("t1", p.now).unwrap();
    p.drive();
    p.wire.iter().map(|s| s.t.data.clone()).collect()
}

#[test]
fn mutated_messages_never_panic_nor_disturb() {
    let msgs = recorded_run();
    assert!(msgs.len() >= 10);
    let (a, b) = configs();
    let mut p = Pair::new(with_esp(a, "aes128gcm16-x25519"), with_esp(b, "aes128gcm16-x25519"));
    p.handshake();
    let mut rng = XorShift(0x9e3779b97f4a7c15);
    for _ in 0..20_000 {
        let mut m = msgs[rng.below(msgs.len())].clone();
        match rng.below(5) {
            0 => {
                let i = rng.below(m.len());
                m[i] ^= 1 << rng.below(8);
            }
            1 => m.truncate(rng.below(m.len() + 1)),
            2 => {
                // Break a length field inside the first payloads.
                let i = 28 + rng.below(m.len().saturating_sub(28).max(1));
                if i < m.len() {
                    m[i] = rng.next() as u8;
                }
            }
            3 => {
                let extra = rng.below(64);
                m.extend((0..extra).map(|_| rng.next() as u8));
            }
            _ => {
                for _ in 0..8 {
                    let i = rng.below(m.len());
                    m[i] = rng.next() as u8;
                }
            }
        }
        let _ = codec::parse_message(&m);
        let (la, lb) = (p.wire.len(), p.now);
        let _ = lb;
        p.a.handle_datagram(
            p.now,
            "192.0.2.1:500".parse().unwrap(),
            "198.51.100.2:500".parse().unwrap(),
            &m,
        );
        p.b.handle_datagram(
            p.now,
            "198.51.100.2:500".parse().unwrap(),
            "192.0.2.1:500".parse().unwrap(),
            &m,
        );
        // Answers (error notifies to plain requests) are dropped here.
        while p.a.poll_transmit().is_some() {}
        while p.b.poll_transmit().is_some() {}
        assert_eq!(p.wire.len(), la);
    }
    while let Some(e) = p.a.poll_event() {
        p.a_events.push(e);
    }
    while let Some(e) = p.b.poll_event() {
        p.b_events.push(e);
    }
    // The established SAs still work.
    let spi = installed(&p.a_events)[0];
    p.a.rekey_child("t1", spi, p.now).unwrap();
    p.drive();
    assert_eq!(installed(&p.a_events).len(), 1);
    assert_paired(&p);
}

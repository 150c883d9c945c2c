//! The anti-replay window (RFC 4303 §3.4.3) with extended sequence numbers (RFC 4303 §2.2.1,
//! Appendix A).
//!
//! A bitmap of 64-bit words used as a ring indexed by the low bits of the sequence number (the
//! RFC 6479 layout, also used by Linux and boringtun): moving the right edge clears whole words
//! instead of shifting the bitmap, so advancing costs O(1) per packet whatever the window size.
//! The ring holds one word more than the window needs, so clearing the word the new right edge
//! lands in never forgets a sequence number that is still inside the window.
//!
//! The receiver first [`check`](ReplayWindow::check)s (cheap rejection before decryption) and
//! [`accept`](ReplayWindow::accept)s only after the ICV verified, so forged packets cannot move
//! the window.

use crate::{DropReason, EspError};

/// The largest supported window, in packets.
pub const MAX_WINDOW: u32 = 1 << 16;

/// The window used to infer the high half of an extended sequence number when anti-replay is
/// disabled (window 0): half the 32-bit space either side of the highest number seen.
const ESN_INFERENCE_WITHOUT_WINDOW: u32 = 1 << 31;

/// The full sequence number for `seq_lo` given the highest accepted `top` and the window size
/// (RFC 4303 Appendix A.2.2); see [`ReplayWindow::infer_esn`].
#[inline]
pub fn infer_esn(top: u64, size: u32, seq_lo: u32) -> u64 {
    let w = if size == 0 { ESN_INFERENCE_WITHOUT_WINDOW } else { size };
    let tl = top as u32;
    let th = (top >> 32) as u32;
    let bottom = tl.wrapping_sub(w - 1);
    let seq_hi = if tl >= w - 1 {
        // Case A: the window lies within one 2^32 subspace.
        if seq_lo >= bottom { th } else { th.wrapping_add(1) }
    } else {
        // Case B: the window spans two subspaces.
        if seq_lo >= bottom { th.checked_sub(1).unwrap_or(th) } else { th }
    };
    (u64::from(seq_hi) << 32) | u64::from(seq_lo)
}

/// Which sequence numbers an inbound SA has accepted.
#[derive(Debug, Clone)]
pub struct ReplayWindow {
    size: u32,
    /// Highest sequence number accepted (full 64 bits with ESN); 0 before the first packet.
    top: u64,
    /// Ring of `bitmap.len()` words, a power of two.
    bitmap: Vec<u64>,
}

impl ReplayWindow {
    /// A window of `size` packets; 0 disables replay checking (the highest sequence number is
    /// still tracked, for ESN inference).
    pub fn new(size: u32) -> Result<ReplayWindow, EspError> {
        if size > MAX_WINDOW {
            return Err(EspError::ReplayWindowTooLarge(size));
        }
        let words = if size == 0 { 0 } else { (size.div_ceil(64) + 1).next_power_of_two() };
        Ok(ReplayWindow { size, top: 0, bitmap: vec![0; words as usize] })
    }

    /// The window size in packets.
    pub fn size(&self) -> u32 {
        self.size
    }

    /// The highest sequence number accepted so far (0 if none).
    pub fn top(&self) -> u64 {
        self.top
    }

    /// The full 64-bit sequence number of a packet that carries only the low 32 bits, inferred
    /// from the window's position (RFC 4303 Appendix A.2.2). Never goes below the first 2^32.
    pub fn infer_esn(&self, seq_lo: u32) -> u64 {
        infer_esn(self.top, self.size, seq_lo)
    }

    /// Whether `seq` may be accepted, without changing the window.
    #[inline]
    pub fn check(&self, seq: u64) -> Result<(), DropReason> {
        if seq == 0 {
            // Sequence numbers start at 1 (RFC 4303 §3.3.3); 0 is never sent.
            return Err(DropReason::OutsideWindow);
        }
        if self.size == 0 || seq > self.top {
            return Ok(());
        }
        if self.top - seq >= u64::from(self.size) {
            return Err(DropReason::OutsideWindow);
        }
        let (word, bit) = self.position(seq);
        if self.bitmap[word] & bit != 0 { Err(DropReason::Replay) } else { Ok(()) }
    }

    /// Checks `seq` again (another thread may have accepted it meanwhile) and records it,
    /// moving the right edge when it is the new highest.
    #[inline]
    pub fn accept(&mut self, seq: u64) -> Result<(), DropReason> {
        self.check(seq)?;
        if self.size == 0 {
            self.top = self.top.max(seq);
            return Ok(());
        }
        if seq > self.top {
            let words = self.bitmap.len() as u64;
            let old_block = self.top >> 6;
            let new_block = seq >> 6;
            let advance = new_block - old_block;
            if advance >= words {
                self.bitmap.fill(0);
            } else {
                for b in old_block + 1..=new_block {
                    let i = (b & (words - 1)) as usize;
                    self.bitmap[i] = 0;
                }
            }
            self.top = seq;
        }
        let (word, bit) = self.position(seq);
        self.bitmap[word] |= bit;
        Ok(())
    }

    #[inline]
    fn position(&self, seq: u64) -> (usize, u64) {
        let words = self.bitmap.len() as u64;
        (((seq >> 6) & (words - 1)) as usize, 1u64 << (seq & 63))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc4303_3_4_3_in_order_duplicate_and_old() {
        let mut w = ReplayWindow::new(64).unwrap();
        for s in 1..=100 {
            w.accept(s).unwrap();
        }
        assert_eq!(w.accept(100), Err(DropReason::Replay));
        assert_eq!(w.accept(37), Err(DropReason::Replay));
        // 100 - 36 = 64: just left of a 64-packet window.
        assert_eq!(w.check(36), Err(DropReason::OutsideWindow));
        assert_eq!(w.check(0), Err(DropReason::OutsideWindow));
        assert_eq!(w.top(), 100);
    }

    #[test]
    fn rfc4303_3_4_3_out_of_order_inside_window() {
        let mut w = ReplayWindow::new(128).unwrap();
        w.accept(200).unwrap();
        for s in (73..200).rev() {
            w.accept(s).unwrap();
        }
        assert_eq!(w.check(72), Err(DropReason::OutsideWindow));
        for s in 73..=200 {
            assert_eq!(w.check(s), Err(DropReason::Replay), "{s}");
        }
        assert_eq!(w.check(201), Ok(()));
    }

    #[test]
    fn large_jumps_forget_exactly_what_left_the_window() {
        let mut w = ReplayWindow::new(4096).unwrap();
        w.accept(10).unwrap();
        w.accept(4105).unwrap(); // 10 is now at the left edge (4105 - 10 = 4095)
        assert_eq!(w.check(10), Err(DropReason::Replay));
        assert_eq!(w.check(11), Ok(()));
        w.accept(4106).unwrap();
        assert_eq!(w.check(10), Err(DropReason::OutsideWindow));
        w.accept(1_000_000).unwrap();
        assert_eq!(w.check(1_000_000 - 4095), Ok(()));
        assert_eq!(w.check(4106), Err(DropReason::OutsideWindow));
    }

    #[test]
    fn window_zero_accepts_replays_but_tracks_top() {
        let mut w = ReplayWindow::new(0).unwrap();
        w.accept(5).unwrap();
        w.accept(5).unwrap();
        w.accept(3).unwrap();
        assert_eq!(w.top(), 5);
        assert!(matches!(
            ReplayWindow::new(MAX_WINDOW + 1),
            Err(EspError::ReplayWindowTooLarge(_))
        ));
    }

    #[test]
    fn rfc4303_appendix_a_esn_inference_and_wrap() {
        let mut w = ReplayWindow::new(64).unwrap();
        // Case B at the very start: nothing below 2^32 * 0 to borrow from.
        assert_eq!(w.infer_esn(1), 1);
        assert_eq!(w.infer_esn(u32::MAX), u64::from(u32::MAX));
        // Walk up to the wrap and across it.
        let base = u64::from(u32::MAX) - 10;
        w.accept(base).unwrap();
        assert_eq!(w.infer_esn(u32::MAX), u64::from(u32::MAX));
        // Low half wrapped: the sender is in the next subspace (case A, seq < bottom).
        assert_eq!(w.infer_esn(3), (1 << 32) | 3);
        w.accept((1 << 32) | 3).unwrap();
        // Now case B: top is low in subspace 1; a late packet from the end of subspace 0.
        assert_eq!(w.infer_esn(u32::MAX - 2), u64::from(u32::MAX - 2));
        w.accept(u64::from(u32::MAX - 2)).unwrap();
        assert_eq!(w.accept(u64::from(u32::MAX - 2)), Err(DropReason::Replay));
        // One far left of the window is taken as far ahead (Appendix A.2.2): only the ICV,
        // computed over the inferred high half, can tell, and it will fail.
        let far = w.infer_esn(u32::MAX - 100);
        assert_eq!(far, (1 << 32) | u64::from(u32::MAX - 100));
        assert_eq!(w.check(far), Ok(()));
        assert_eq!(w.infer_esn(4), (1 << 32) | 4);
    }

    mod model {
        use super::*;
        use proptest::prelude::*;
        use std::collections::BTreeSet;

        /// RFC 4303 §3.4.3 stated directly: a set of accepted numbers and the highest one.
        struct Model {
            size: u64,
            top: u64,
            seen: BTreeSet<u64>,
        }

        impl Model {
            fn check(&self, seq: u64) -> Result<(), DropReason> {
                if seq == 0 {
                    return Err(DropReason::OutsideWindow);
                }
                if self.size == 0 || seq > self.top {
                    return Ok(());
                }
                if self.top - seq >= self.size {
                    return Err(DropReason::OutsideWindow);
                }
                if self.seen.contains(&seq) { Err(DropReason::Replay) } else { Ok(()) }
            }

            fn accept(&mut self, seq: u64) -> Result<(), DropReason> {
                self.check(seq)?;
                self.seen.insert(seq);
                self.top = self.top.max(seq);
                Ok(())
            }
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(200))]

            /// The bitmap window answers exactly like the set-based model over random walks
            /// with duplicates, stragglers, edges and long jumps, for odd window sizes too.
            #[test]
            fn bitmap_window_matches_the_rfc_model(
                size in prop_oneof![Just(0u32), 1u32..200, Just(4096u32), 4000u32..4200],
                steps in proptest::collection::vec((0u8..10, any::<u32>()), 1..400),
            ) {
                let mut w = ReplayWindow::new(size).unwrap();
                let mut m = Model { size: u64::from(size), top: 0, seen: BTreeSet::new() };
                let span = u64::from(size.max(1));
                for (kind, r) in steps {
                    let r = u64::from(r);
                    let seq = match kind {
                        // Just ahead, or a little or far ahead.
                        0..=2 => m.top + 1 + r % 3,
                        3 => m.top + r % (3 * span),
                        4 => m.top + r % (1 << 20),
                        // Inside or around the left edge, or a duplicate of the top.
                        5 | 6 => m.top.saturating_sub(r % (span + 2)),
                        7 => m.top.saturating_sub(span - 1 + r % 3),
                        8 => m.top,
                        _ => r % 8,
                    };
                    prop_assert_eq!(w.check(seq), m.check(seq), "check {} top {}", seq, m.top);
                    prop_assert_eq!(w.accept(seq), m.accept(seq), "accept {}", seq);
                    prop_assert_eq!(w.top(), m.top);
                }
            }
        }
    }
}

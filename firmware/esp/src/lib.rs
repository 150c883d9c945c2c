//! Sans-IO ESP (RFC 4303) in tunnel mode with AES-GCM (RFC 4106) and UDP encapsulation (RFC 3948).
//!
//! Takes packets and time as input and writes into caller buffers; it never opens a socket or
//! reads the clock, so the dataplane owns the IO and tests run in memory.
//!
//! - [`OutboundSa`] encapsulates a whole inner IPv4/IPv6 packet into the ESP payload that follows
//!   the outer IP header (or the UDP header for RFC 3948): SPI, sequence number, 8-byte explicit IV
//!   (the sequence number, RFC 4106 §3.1), ciphertext, padding and trailer (RFC 4303 §2.4, §2.5),
//!   and the 16-byte ICV.
//! - [`InboundSa`] reverses it: cheap replay pre-check, ICV verification, then the anti-replay
//!   window update (RFC 4303 §3.4.3, with extended sequence numbers inferred as in Appendix A),
//!   padding check and the inner packet's next header.
//! - [`aead`] holds the small AEAD trait and its two backends (`ring` and RustCrypto's `aes-gcm`).
//! - [`counters`] holds the per-SA counters and the drop reasons shared with the dataplane.
//!
//! Both SA types are `Send + Sync` with `&self` methods: worker threads share one SA behind an
//! `Arc`; the outbound sequence number is an atomic and the inbound window sits behind a short lock
//! (in-order packets pass the pre-check without it). No method allocates per packet.
//!
//! # The fast path
//!
//! [`OutboundSa::encapsulate_in_place`] and [`InboundSa::decapsulate_in_place`] work on one
//! buffer: the dataplane reads an inner packet at offset [`HEADER_LEN`] (plus room for its outer
//! headers in front, and [`max_overhead`] behind), seals it there, and on the way back opens the
//! ESP payload where it was received; the inner packet is then at [`HEADER_LEN`] again. The
//! copying [`OutboundSa::encapsulate`] / [`InboundSa::decapsulate`] cost one extra copy of the
//! packet each (about 7% at 1400 bytes).
//!
//! # Which AES-GCM backend
//!
//! [`Backend::Ring`] is the default. Measured here (`cargo bench -p isthmus-esp`, AES-256-GCM,
//! one core, thread CPU time), raw seal+open: ring 2.8 / 14.4 / 20.5 / 32.5 Gbit/s at 64 / 512 /
//! 1400 / 8900 bytes, `aes-gcm` 0.11 1.3 / 5.5 / 6.4 / 9.0 Gbit/s: ring's VAES/VPCLMULQDQ
//! assembly is about three times faster at every size on this CPU. `aes-gcm` stays as the
//! second, pure-Rust implementation (both pass the same vectors), selectable per SA. The crate's
//! README has the full table.
#![forbid(unsafe_code)]

pub mod aead;
pub mod counters;
pub mod replay;
mod sa;

pub use aead::{Aead, AeadBackend, AeadError, Backend, Cipher};
pub use counters::{DropCounters, DropReason, DropSnapshot, SaCounters};
pub use replay::ReplayWindow;
pub use sa::{
    Decapsulated, InboundSa, Lifetime, LifetimeState, OutboundSa, SaConfig, max_overhead, peek_spi,
};

/// Bytes of SPI and sequence number (RFC 4303 §2.1, §2.2).
pub const ESP_HEADER_LEN: usize = 8;
/// Bytes of the explicit IV carried in each packet (RFC 4106 §3.1).
pub const IV_LEN: usize = 8;
/// Bytes before the ciphertext: SPI, sequence number and IV. An in-place caller leaves this much
/// headroom in front of the inner packet.
pub const HEADER_LEN: usize = ESP_HEADER_LEN + IV_LEN;
/// Bytes of the integrity check value (the GCM tag, 16 bytes for `aes*gcm16`, RFC 4106 §6).
pub const ICV_LEN: usize = 16;
/// Bytes of the ESP trailer: pad length and next header (RFC 4303 §2.6, §2.7).
pub const TRAILER_LEN: usize = 2;
/// Next header of an inner IPv4 packet (tunnel mode).
pub const NH_IPV4: u8 = 4;
/// Next header of an inner IPv6 packet (tunnel mode).
pub const NH_IPV6: u8 = 41;
/// Next header "no next header": a dummy packet (RFC 4303 §2.6), dropped silently by the receiver.
pub const NH_NONE: u8 = 59;

/// Why an SA could not be built (configuration errors; per-packet outcomes are [`DropReason`]s).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EspError {
    /// The key is not AES key plus 4-byte salt for the chosen algorithm.
    #[error(
        "ESP key for {aead} must be {expected} bytes (AES key and 4-byte salt, RFC 4106 §8.1), got {got}"
    )]
    KeyLength {
        /// The configured algorithm.
        aead: Aead,
        /// Bytes expected.
        expected: usize,
        /// Bytes given.
        got: usize,
    },
    /// The replay window is larger than this engine supports.
    #[error("replay window of {0} packets is larger than the maximum {max}", max = replay::MAX_WINDOW)]
    ReplayWindowTooLarge(u32),
    /// The crypto backend refused the key.
    #[error("the {0} backend refused the key")]
    BackendRefusedKey(Backend),
    /// An SPI below 256 is reserved (RFC 4303 §2.1).
    #[error("SPI {0} is reserved (SPIs 0–255 are not for SAs, RFC 4303 §2.1)")]
    ReservedSpi(u32),
}

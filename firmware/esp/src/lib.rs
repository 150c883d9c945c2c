//! Sans-IO ESP (RFC 4303) in tunnel mode with AES-GCM (RFC 4106), ChaCha20-Poly1305 (RFC 7634),
//! AES-CBC or 3DES-CBC with HMAC (RFC 3602, RFC 2451, RFC 4868, RFC 2404), and UDP encapsulation
//! (RFC 3948).
//!
//! Takes packets and time as input and writes into caller buffers; it never opens a socket or
//! reads the clock, so the dataplane owns the IO and tests run in memory. (An outbound CBC SA
//! draws one random key from the OS when it is created, for its IVs: see `cbc::IvSource`.)
//!
//! - [`OutboundSa`] encapsulates a whole inner IPv4/IPv6 packet into the ESP payload that follows
//!   the outer IP header (or the UDP header for RFC 3948): SPI, sequence number, explicit IV
//!   (an AEAD's is the sequence number, RFC 4106 §3.1; a CBC cipher's is unpredictable, RFC 3602
//!   §3), ciphertext, padding and trailer (RFC 4303 §2.4, §2.5), and the ICV.
//! - [`Transform`] says which algorithms an SA uses and what that means for the layout.
//! - [`InboundSa`] reverses it: cheap replay pre-check, ICV verification, then the anti-replay
//!   window update (RFC 4303 §3.4.3, with extended sequence numbers inferred as in Appendix A),
//!   padding check and the inner packet's next header.
//! - [`aead`] holds the small AEAD trait and its two backends (`ring` and RustCrypto's `aes-gcm`);
//!   CBC comes from RustCrypto's `cbc`, HMAC from `ring`.
//! - [`counters`] holds the per-SA counters and the drop reasons shared with the dataplane.
//!
//! Both SA types are `Send + Sync` with `&self` methods: worker threads share one SA behind an
//! `Arc`; the outbound sequence number is an atomic and the inbound window sits behind a short lock
//! (in-order packets pass the pre-check without it). No method allocates per packet.
//!
//! # The fast path
//!
//! [`OutboundSa::encapsulate_in_place`] and [`InboundSa::decapsulate_in_place`] work on one
//! buffer: the dataplane reads an inner packet at the SA's [`OutboundSa::header_len`] (at most
//! [`HEADER_LEN`], plus room for its outer headers in front, and [`max_overhead`] behind), seals it
//! there, and on the way back opens the ESP payload where it was received; the inner packet is then
//! at the SA's header length again ([`Decapsulated::offset`]). The
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
mod cbc;
pub mod counters;
pub mod replay;
mod sa;
mod transform;

pub use aead::{Aead, AeadBackend, AeadError, Backend, Cipher};
pub use counters::{DropCounters, DropReason, DropSnapshot, SaCounters};
pub use replay::ReplayWindow;
pub use sa::{
    Decapsulated, InboundSa, Lifetime, LifetimeState, OutboundSa, SaConfig, max_overhead, peek_spi,
};
pub use transform::{CbcCipher, Integ, Transform};

/// Bytes of SPI and sequence number (RFC 4303 §2.1, §2.2).
pub const ESP_HEADER_LEN: usize = 8;
/// Bytes of the longest explicit IV: an AES-CBC block (RFC 3602 §3). An AEAD's is 8 bytes
/// (RFC 4106 §3.1), 3DES's too.
pub const MAX_IV_LEN: usize = 16;
/// The most bytes before the ciphertext: SPI, sequence number and the longest IV. An in-place
/// caller leaves this much headroom in front of the inner packet; each SA uses its own
/// [`OutboundSa::header_len`] of it.
pub const HEADER_LEN: usize = ESP_HEADER_LEN + MAX_IV_LEN;
/// Bytes of an AEAD's integrity check value (the 16-byte tag of `aes*gcm16`, RFC 4106 §6, and of
/// ChaCha20-Poly1305, RFC 7634 §2).
pub const ICV_LEN: usize = 16;
/// Bytes of the longest ICV: HMAC-SHA-512-256 (RFC 4868 §2.3).
pub const MAX_ICV_LEN: usize = 32;
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
    /// The key material is not as long as the chosen algorithms need.
    #[error(
        "ESP key material for {transform} must be {expected} bytes (encryption key, the 4-byte salt of an AEAD, the integrity key of CBC; RFC 7296 §2.17), got {got}"
    )]
    KeyLength {
        /// The configured algorithms.
        transform: Transform,
        /// Bytes expected.
        expected: usize,
        /// Bytes given.
        got: usize,
    },
    /// The replay window is larger than this engine supports.
    #[error("replay window of {0} packets is larger than the maximum {max}", max = replay::MAX_WINDOW)]
    ReplayWindowTooLarge(u32),
    /// The OS gave no random bytes for a CBC SA's IV key.
    #[error("the OS random source failed; a CBC SA needs it for unpredictable IVs")]
    NoRandom,
    /// The crypto backend refused the key.
    #[error("the {0} backend refused the key")]
    BackendRefusedKey(Backend),
    /// An SPI below 256 is reserved (RFC 4303 §2.1).
    #[error("SPI {0} is reserved (SPIs 0–255 are not for SAs, RFC 4303 §2.1)")]
    ReservedSpi(u32),
}

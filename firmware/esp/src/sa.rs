//! Security associations: tunnel-mode encapsulation (RFC 4303 §3.1.2, §3.3) and decapsulation
//! (RFC 4303 §3.4) with AES-GCM (RFC 4106), lifetimes and counters.

use std::fmt;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::aead::{AeadBackend, NONCE_LEN, SALT_LEN};
use crate::{
    Aead, Backend, Cipher, DropCounters, DropReason, ESP_HEADER_LEN, EspError, HEADER_LEN, ICV_LEN,
    IV_LEN, NH_IPV4, NH_IPV6, NH_NONE, ReplayWindow, SaCounters, TRAILER_LEN,
};

/// Lifetime limits of an SA (RFC 4301 §4.4.2.1); `None` is no limit. The control plane sets the
/// soft limits a little below the hard ones so that rekeying finishes before the SA stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Lifetime {
    /// Rekey after this many bytes of inner packets.
    pub soft_bytes: Option<u64>,
    /// Stop after this many bytes of inner packets.
    pub hard_bytes: Option<u64>,
    /// Rekey after this many packets.
    pub soft_packets: Option<u64>,
    /// Stop after this many packets.
    pub hard_packets: Option<u64>,
    /// Rekey this long after the SA was installed.
    pub soft_time: Option<Duration>,
    /// Stop this long after the SA was installed.
    pub hard_time: Option<Duration>,
}

/// Where an SA stands against its lifetime.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum LifetimeState {
    /// Within every limit.
    Live,
    /// A soft limit was reached: still usable, a rekey is due.
    Soft,
    /// A hard limit was reached: the SA carries nothing more.
    Hard,
}

/// What the key exchange negotiated for one direction of a CHILD SA.
#[derive(Clone, PartialEq, Eq)]
pub struct SaConfig {
    /// The SPI the receiver chose (RFC 4303 §2.1).
    pub spi: u32,
    /// The AEAD transform.
    pub aead: Aead,
    /// Which implementation runs it.
    pub backend: Backend,
    /// AES key followed by the 4-byte salt (RFC 4106 §8.1). Never shown by `Debug`.
    pub key: Vec<u8>,
    /// Extended (64-bit) sequence numbers (RFC 4303 §2.2.1).
    pub esn: bool,
    /// Anti-replay window in packets; 0 disables replay checking. Ignored outbound.
    pub replay_window: u32,
    /// Soft and hard limits.
    pub lifetime: Lifetime,
}

impl fmt::Debug for SaConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SaConfig")
            .field("spi", &format_args!("{:#010x}", self.spi))
            .field("aead", &self.aead)
            .field("backend", &self.backend)
            .field("key", &format_args!("<redacted {} bytes>", self.key.len()))
            .field("esn", &self.esn)
            .field("replay_window", &self.replay_window)
            .field("lifetime", &self.lifetime)
            .finish()
    }
}

/// What [`InboundSa::decapsulate`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decapsulated {
    /// Where the inner packet starts in the output buffer (0 for
    /// [`decapsulate`](InboundSa::decapsulate), [`HEADER_LEN`] for
    /// [`decapsulate_in_place`](InboundSa::decapsulate_in_place)).
    pub offset: usize,
    /// Bytes of the inner packet.
    pub len: usize,
    /// The next header from the trailer: 4 (IPv4), 41 (IPv6) or 59 (a dummy packet, RFC 4303
    /// §2.6, that the caller drops silently without counting it).
    pub next_header: u8,
    /// The full (ESN-inferred) sequence number of the packet.
    pub seq: u64,
}

impl Decapsulated {
    /// True for a dummy packet (next header 59) that carries nothing.
    pub fn is_dummy(&self) -> bool {
        self.next_header == NH_NONE
    }
}

/// Reads the SPI of an ESP packet (starting at the SPI) without trusting anything else.
#[inline]
pub fn peek_spi(esp: &[u8]) -> Option<u32> {
    let b: [u8; 4] = esp.get(..4)?.try_into().ok()?;
    Some(u32::from_be_bytes(b))
}

/// The largest ESP overhead for any inner packet: header, IV, at most 3 padding bytes, trailer
/// and ICV (37 bytes).
pub const fn max_overhead() -> usize {
    HEADER_LEN + 3 + TRAILER_LEN + ICV_LEN
}

/// Padding so that payload, padding and trailer end on a 4-byte boundary (RFC 4303 §2.4; GCM
/// itself needs none, RFC 4106 §3.2).
#[inline]
fn pad_len(inner_len: usize) -> usize {
    (4 - (inner_len + TRAILER_LEN) % 4) % 4
}

/// State shared by both directions.
struct Common {
    spi: u32,
    esn: bool,
    cipher: Cipher,
    salt: [u8; SALT_LEN],
    lifetime: Lifetime,
    created: Instant,
    packets: AtomicU64,
    bytes: AtomicU64,
    drops: DropCounters,
    soft_reported: AtomicBool,
}

impl Common {
    fn new(cfg: &SaConfig, now: Instant) -> Result<Common, EspError> {
        if cfg.spi < 256 {
            return Err(EspError::ReservedSpi(cfg.spi));
        }
        let expected = cfg.aead.key_material_len();
        if cfg.key.len() != expected {
            return Err(EspError::KeyLength { aead: cfg.aead, expected, got: cfg.key.len() });
        }
        let (aes_key, salt) = cfg.key.split_at(cfg.aead.aes_key_len());
        let mut s = [0; SALT_LEN];
        s.copy_from_slice(salt);
        Ok(Common {
            spi: cfg.spi,
            esn: cfg.esn,
            cipher: Cipher::new(cfg.aead, cfg.backend, aes_key)?,
            salt: s,
            lifetime: cfg.lifetime,
            created: now,
            packets: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            drops: DropCounters::new(),
            soft_reported: AtomicBool::new(false),
        })
    }

    /// Salt and explicit IV (RFC 4106 §4).
    #[inline]
    fn nonce(&self, iv: [u8; IV_LEN]) -> [u8; NONCE_LEN] {
        let mut n = [0; NONCE_LEN];
        n[..SALT_LEN].copy_from_slice(&self.salt);
        n[SALT_LEN..].copy_from_slice(&iv);
        n
    }

    /// AAD: SPI and the 32-bit sequence number, or SPI, high and low halves with ESN
    /// (RFC 4106 §5, RFC 4303 §2.2.1). Returns the buffer and the length used.
    #[inline]
    fn aad(&self, seq: u64) -> ([u8; 12], usize) {
        let mut a = [0; 12];
        a[..4].copy_from_slice(&self.spi.to_be_bytes());
        if self.esn {
            a[4..12].copy_from_slice(&seq.to_be_bytes());
            (a, 12)
        } else {
            a[4..8].copy_from_slice(&(seq as u32).to_be_bytes());
            (a, 8)
        }
    }

    /// `extra` is a sequence-number based state (outbound exhaustion) folded into the answer.
    fn state(&self, now: Instant, extra: LifetimeState) -> LifetimeState {
        let l = &self.lifetime;
        let packets = self.packets.load(Ordering::Relaxed);
        let bytes = self.bytes.load(Ordering::Relaxed);
        let age = now.saturating_duration_since(self.created);
        let reached = |v: u64, lim: Option<u64>| lim.is_some_and(|lim| v >= lim);
        let aged = |lim: Option<Duration>| lim.is_some_and(|lim| age >= lim);
        let computed = if reached(packets, l.hard_packets)
            || reached(bytes, l.hard_bytes)
            || aged(l.hard_time)
        {
            LifetimeState::Hard
        } else if reached(packets, l.soft_packets)
            || reached(bytes, l.soft_bytes)
            || aged(l.soft_time)
        {
            LifetimeState::Soft
        } else {
            LifetimeState::Live
        };
        computed.max(extra)
    }

    /// True once, when the SA first stands at soft (or hard) expiry.
    fn take_soft(&self, state: LifetimeState) -> bool {
        state != LifetimeState::Live && !self.soft_reported.swap(true, Ordering::Relaxed)
    }

    /// Hard limits that can be checked per packet without reading the lifetime state twice.
    #[inline]
    fn hard_expired(&self, now: Instant) -> bool {
        let l = &self.lifetime;
        if l.hard_packets.is_none() && l.hard_bytes.is_none() && l.hard_time.is_none() {
            return false;
        }
        self.state(now, LifetimeState::Live) == LifetimeState::Hard
    }

    fn counters(&self) -> SaCounters {
        SaCounters {
            packets: self.packets.load(Ordering::Relaxed),
            bytes: self.bytes.load(Ordering::Relaxed),
            drops: self.drops.snapshot(),
        }
    }

    #[inline]
    fn drop(&self, reason: DropReason) -> DropReason {
        self.drops.count(reason);
        reason
    }

    #[inline]
    fn carried(&self, inner_len: usize) {
        self.packets.fetch_add(1, Ordering::Relaxed);
        self.bytes.fetch_add(inner_len as u64, Ordering::Relaxed);
    }
}

/// With 32-bit sequence numbers, the SA asks for a rekey this many packets before it runs out
/// (RFC 4303 §3.3.3: the counter must not cycle).
const SEQ_SOFT_MARGIN: u64 = 1 << 28;

/// An outbound SA: encapsulates inner packets. `Send + Sync`; share it behind an `Arc`.
pub struct OutboundSa {
    common: Common,
    /// The next sequence number to send; starts at 1 (RFC 4303 §3.3.3).
    next_seq: AtomicU64,
}

impl fmt::Debug for OutboundSa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OutboundSa")
            .field("spi", &format_args!("{:#010x}", self.common.spi))
            .field("cipher", &self.common.cipher)
            .field("esn", &self.common.esn)
            .field("next_seq", &self.next_seq.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl OutboundSa {
    /// An SA installed at `now` (lifetimes count from it).
    pub fn new(cfg: SaConfig, now: Instant) -> Result<OutboundSa, EspError> {
        Ok(OutboundSa { common: Common::new(&cfg, now)?, next_seq: AtomicU64::new(1) })
    }

    /// The SPI (the peer chose it).
    pub fn spi(&self) -> u32 {
        self.common.spi
    }

    /// Whether extended sequence numbers are on.
    pub fn esn(&self) -> bool {
        self.common.esn
    }

    /// The sequence number the next packet will carry.
    pub fn next_seq(&self) -> u64 {
        self.next_seq.load(Ordering::Relaxed)
    }

    /// Bytes of ESP overhead for an inner packet of `inner_len` bytes (header, IV, padding,
    /// trailer and ICV).
    #[inline]
    pub fn overhead(&self, inner_len: usize) -> usize {
        HEADER_LEN + pad_len(inner_len) + TRAILER_LEN + ICV_LEN
    }

    /// Tunnel mode: `inner` is a whole IPv4/IPv6 packet; next header 4 or 41 is taken from its
    /// version nibble. Writes SPI..ICV (what follows the outer IP header, or the UDP header for
    /// RFC 3948) into `out` and returns its length. `Err(TooBig)` if `out` is too small,
    /// `Err(Expired)` after hard expiry, `Err(Malformed)` if `inner` is not IP. Drops are
    /// counted on the SA.
    #[inline]
    pub fn encapsulate(
        &self,
        inner: &[u8],
        out: &mut [u8],
        now: Instant,
    ) -> Result<usize, DropReason> {
        let nh = inner_next_header(inner).map_err(|r| self.common.drop(r))?;
        let total = inner.len() + self.overhead(inner.len());
        if out.len() < total {
            return Err(self.common.drop(DropReason::TooBig));
        }
        out[HEADER_LEN..HEADER_LEN + inner.len()].copy_from_slice(inner);
        self.seal(out, inner.len(), nh, now)
    }

    /// Like [`encapsulate`](Self::encapsulate), for a packet already in place:
    /// `buf[HEADER_LEN..HEADER_LEN + inner_len]` holds the inner packet, and `buf` has room for
    /// the trailer and ICV after it. Saves the copy of the packet.
    #[inline]
    pub fn encapsulate_in_place(
        &self,
        buf: &mut [u8],
        inner_len: usize,
        now: Instant,
    ) -> Result<usize, DropReason> {
        let inner = buf.get(HEADER_LEN..HEADER_LEN + inner_len);
        let Some(inner) = inner else { return Err(self.common.drop(DropReason::TooBig)) };
        let nh = inner_next_header(inner).map_err(|r| self.common.drop(r))?;
        self.seal(buf, inner_len, nh, now)
    }

    /// Encapsulates a dummy packet (next header 59, RFC 4303 §2.6) of `len` zero bytes, for
    /// traffic flow confidentiality; the receiver drops it silently.
    pub fn encapsulate_dummy(
        &self,
        len: usize,
        out: &mut [u8],
        now: Instant,
    ) -> Result<usize, DropReason> {
        let dst = out.get_mut(HEADER_LEN..HEADER_LEN + len);
        let Some(dst) = dst else { return Err(self.common.drop(DropReason::TooBig)) };
        dst.fill(0);
        self.seal(out, len, NH_NONE, now)
    }

    #[inline]
    fn seal(
        &self,
        buf: &mut [u8],
        inner_len: usize,
        nh: u8,
        now: Instant,
    ) -> Result<usize, DropReason> {
        let c = &self.common;
        let pad = pad_len(inner_len);
        let ct_end = HEADER_LEN + inner_len + pad + TRAILER_LEN;
        let total = ct_end + ICV_LEN;
        if buf.len() < total {
            return Err(c.drop(DropReason::TooBig));
        }
        if c.hard_expired(now) {
            return Err(c.drop(DropReason::Expired));
        }
        let seq = self.next_seq.fetch_add(1, Ordering::Relaxed);
        if !c.esn && seq > u64::from(u32::MAX) {
            return Err(c.drop(DropReason::Expired));
        }
        buf[0..4].copy_from_slice(&c.spi.to_be_bytes());
        buf[4..8].copy_from_slice(&(seq as u32).to_be_bytes());
        // Explicit IV: the full sequence number, unique per key (RFC 4106 §3.1).
        let iv = seq.to_be_bytes();
        buf[8..16].copy_from_slice(&iv);
        let trailer_at = HEADER_LEN + inner_len;
        for (i, b) in buf[trailer_at..trailer_at + pad].iter_mut().enumerate() {
            *b = i as u8 + 1;
        }
        buf[ct_end - 2] = pad as u8;
        buf[ct_end - 1] = nh;
        let (aad, aad_len) = c.aad(seq);
        c.cipher
            .seal_in_place(&c.nonce(iv), &aad[..aad_len], &mut buf[HEADER_LEN..total])
            .map_err(|_| c.drop(DropReason::TooBig))?;
        c.carried(inner_len);
        Ok(total)
    }

    /// Where the SA stands against its lifetime. Without ESN it also turns soft 2^28 packets
    /// before the sequence number runs out, and hard when it has.
    pub fn lifetime_state(&self, now: Instant) -> LifetimeState {
        let seq = self.next_seq.load(Ordering::Relaxed);
        let limit = if self.common.esn { u64::MAX } else { u64::from(u32::MAX) };
        let extra = if seq > limit {
            LifetimeState::Hard
        } else if seq > limit - SEQ_SOFT_MARGIN {
            LifetimeState::Soft
        } else {
            LifetimeState::Live
        };
        self.common.state(now, extra)
    }

    /// True exactly once, the first time soft (or hard) expiry is reached: the dataplane turns
    /// it into a rekey request to the control plane.
    pub fn take_soft_expired(&self, now: Instant) -> bool {
        self.common.take_soft(self.lifetime_state(now))
    }

    /// Packets and bytes sent, drops by reason.
    pub fn counters(&self) -> SaCounters {
        self.common.counters()
    }

    /// Counts a drop the caller decided for this SA (for example `TooBig` against the tunnel
    /// MTU), so per-SA counters tell the whole story.
    pub fn count_drop(&self, reason: DropReason) {
        self.common.drops.count(reason);
    }
}

/// The next header for a tunnel-mode inner packet, from its IP version nibble.
#[inline]
fn inner_next_header(inner: &[u8]) -> Result<u8, DropReason> {
    match inner.first().map(|b| b >> 4) {
        Some(4) if inner.len() >= 20 => Ok(NH_IPV4),
        Some(6) if inner.len() >= 40 => Ok(NH_IPV6),
        _ => Err(DropReason::Malformed),
    }
}

/// An inbound SA: verifies and decapsulates. `Send + Sync`; share it behind an `Arc`.
pub struct InboundSa {
    common: Common,
    window: Mutex<ReplayWindow>,
    /// Nanoseconds after `created` of the last verified packet, plus one; 0 for none.
    last_packet: AtomicU64,
}

impl fmt::Debug for InboundSa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InboundSa")
            .field("spi", &format_args!("{:#010x}", self.common.spi))
            .field("cipher", &self.common.cipher)
            .field("esn", &self.common.esn)
            .finish_non_exhaustive()
    }
}

impl InboundSa {
    /// An SA installed at `now` (lifetimes count from it).
    pub fn new(cfg: SaConfig, now: Instant) -> Result<InboundSa, EspError> {
        Ok(InboundSa {
            common: Common::new(&cfg, now)?,
            window: Mutex::new(ReplayWindow::new(cfg.replay_window)?),
            last_packet: AtomicU64::new(0),
        })
    }

    /// The SPI (this side chose it).
    pub fn spi(&self) -> u32 {
        self.common.spi
    }

    /// Whether extended sequence numbers are on.
    pub fn esn(&self) -> bool {
        self.common.esn
    }

    /// The highest sequence number accepted so far.
    pub fn highest_seq(&self) -> u64 {
        self.lock_window().top()
    }

    /// `esp` starts at the SPI. Decrypts into `out`, checks padding (RFC 4303 §2.4) and replay;
    /// returns the inner packet's length and next header (the packet is `out[..len]`). Counts
    /// drops on the SA.
    #[inline]
    pub fn decapsulate(
        &self,
        esp: &[u8],
        out: &mut [u8],
        now: Instant,
    ) -> Result<Decapsulated, DropReason> {
        let c = &self.common;
        let (seq, iv, ct_len) = self.precheck(esp, now)?;
        let Some(dst) = out.get_mut(..ct_len + ICV_LEN) else {
            return Err(c.drop(DropReason::TooBig));
        };
        dst.copy_from_slice(&esp[HEADER_LEN..]);
        self.open(seq, iv, dst, now, 0)
    }

    /// Like [`decapsulate`](Self::decapsulate), in place: the inner packet ends up at
    /// `esp[HEADER_LEN..HEADER_LEN + len]` (see [`Decapsulated::offset`]). Saves the copy.
    #[inline]
    pub fn decapsulate_in_place(
        &self,
        esp: &mut [u8],
        now: Instant,
    ) -> Result<Decapsulated, DropReason> {
        let (seq, iv, _) = self.precheck(esp, now)?;
        self.open(seq, iv, &mut esp[HEADER_LEN..], now, HEADER_LEN)
    }

    /// Length, SPI, expiry and replay checks before spending time on the AEAD. Returns the
    /// (inferred) sequence number, the explicit IV and the ciphertext length.
    #[inline]
    fn precheck(&self, esp: &[u8], now: Instant) -> Result<(u64, [u8; IV_LEN], usize), DropReason> {
        let c = &self.common;
        // At least header, IV, trailer and ICV; the ciphertext is 4-byte aligned (RFC 4303 §2.4).
        let ct_len = esp.len().checked_sub(HEADER_LEN + ICV_LEN);
        let ct_len = ct_len.filter(|&l| l >= TRAILER_LEN && l % 4 == 0);
        let Some(ct_len) = ct_len else { return Err(c.drop(DropReason::Malformed)) };
        if peek_spi(esp) != Some(c.spi) {
            return Err(c.drop(DropReason::UnknownSpi));
        }
        if c.hard_expired(now) {
            return Err(c.drop(DropReason::Expired));
        }
        let seq_lo = u32::from_be_bytes([esp[4], esp[5], esp[6], esp[7]]);
        let seq = {
            let w = self.lock_window();
            let seq = if c.esn { w.infer_esn(seq_lo) } else { u64::from(seq_lo) };
            w.check(seq).map_err(|r| c.drop(r))?;
            seq
        };
        let mut iv = [0; IV_LEN];
        iv.copy_from_slice(&esp[ESP_HEADER_LEN..HEADER_LEN]);
        Ok((seq, iv, ct_len))
    }

    /// Verifies and decrypts `buf` (ciphertext followed by the ICV), then updates the window,
    /// checks the trailer and the inner packet. `offset` is reported back as where the inner
    /// packet starts in the caller's buffer.
    #[inline]
    fn open(
        &self,
        seq: u64,
        iv: [u8; IV_LEN],
        buf: &mut [u8],
        now: Instant,
        offset: usize,
    ) -> Result<Decapsulated, DropReason> {
        let c = &self.common;
        let (aad, aad_len) = c.aad(seq);
        c.cipher
            .open_in_place(&c.nonce(iv), &aad[..aad_len], buf)
            .map_err(|_| c.drop(DropReason::IcvFailure))?;
        // Only an authenticated packet moves the window (RFC 4303 §3.4.3).
        self.lock_window().accept(seq).map_err(|r| c.drop(r))?;
        let ct_len = buf.len() - ICV_LEN;
        let pad = usize::from(buf[ct_len - 2]);
        let nh = buf[ct_len - 1];
        let Some(len) = ct_len.checked_sub(TRAILER_LEN + pad) else {
            return Err(c.drop(DropReason::BadPadding));
        };
        // Default padding is 1, 2, 3, ... (RFC 4303 §2.4); anything else is refused.
        let padding = &buf[len..len + pad];
        if padding.iter().enumerate().any(|(i, &b)| usize::from(b) != i + 1) {
            return Err(c.drop(DropReason::BadPadding));
        }
        match nh {
            NH_IPV4 | NH_IPV6 => {
                let version = if nh == NH_IPV4 { 4 } else { 6 };
                let min = if nh == NH_IPV4 { 20 } else { 40 };
                if len < min || buf[0] >> 4 != version {
                    return Err(c.drop(DropReason::Malformed));
                }
            }
            NH_NONE => {}
            _ => return Err(c.drop(DropReason::Malformed)),
        }
        c.carried(len);
        let since = now.saturating_duration_since(c.created).as_nanos();
        self.last_packet
            .fetch_max(u64::try_from(since).unwrap_or(u64::MAX - 1) + 1, Ordering::Relaxed);
        Ok(Decapsulated { offset, len, next_header: nh, seq })
    }

    fn lock_window(&self) -> std::sync::MutexGuard<'_, ReplayWindow> {
        // A panic while holding this lock cannot leave the window inconsistent (every update is
        // a single assignment), so a poisoned lock is still usable.
        self.window.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Where the SA stands against its lifetime.
    pub fn lifetime_state(&self, now: Instant) -> LifetimeState {
        self.common.state(now, LifetimeState::Live)
    }

    /// True exactly once, the first time soft (or hard) expiry is reached.
    pub fn take_soft_expired(&self, now: Instant) -> bool {
        self.common.take_soft(self.lifetime_state(now))
    }

    /// Packets and bytes accepted, drops by reason.
    pub fn counters(&self) -> SaCounters {
        self.common.counters()
    }

    /// Counts a drop the caller decided for this SA (for example `SelectorMismatch`).
    pub fn count_drop(&self, reason: DropReason) {
        self.common.drops.count(reason);
    }

    /// When the last packet verified (for "received nothing for N s" diagnostics).
    pub fn last_packet(&self) -> Option<Instant> {
        match self.last_packet.load(Ordering::Relaxed) {
            0 => None,
            n => Some(self.common.created + Duration::from_nanos(n - 1)),
        }
    }
}

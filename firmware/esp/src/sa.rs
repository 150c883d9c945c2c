//! Security associations: tunnel-mode encapsulation (RFC 4303 §3.1.2, §3.3) and decapsulation
//! (RFC 4303 §3.4) with an AEAD (AES-GCM, RFC 4106; ChaCha20-Poly1305, RFC 7634) or a CBC cipher
//! with HMAC (RFC 3602, RFC 2451, RFC 4868, RFC 2404), lifetimes and counters.

use std::fmt;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::aead::{AeadBackend, NONCE_LEN, SALT_LEN};
use crate::cbc::{CbcKey, IvSource};
use crate::replay;
use crate::{
    Backend, Cipher, DropCounters, DropReason, ESP_HEADER_LEN, EspError, HEADER_LEN, NH_IPV4,
    NH_IPV6, NH_NONE, ReplayWindow, SaCounters, TRAILER_LEN, Transform,
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
    /// The algorithms.
    pub transform: Transform,
    /// Which implementation runs AES-GCM (other transforms ignore it).
    pub backend: Backend,
    /// Key material as KEYMAT lays it out (RFC 7296 §2.17): the encryption key, the 4-byte
    /// salt of an AEAD (RFC 4106 §8.1), the integrity key of a CBC cipher
    /// ([`Transform::key_material_len`] bytes). Never shown by `Debug`.
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
            .field("transform", &self.transform)
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
    /// [`decapsulate`](InboundSa::decapsulate), the SA's
    /// [`header_len`](InboundSa::header_len) for
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

/// The largest ESP overhead of any transform for any inner packet: header with a 16-byte IV,
/// at most 15 padding bytes, trailer and a 32-byte ICV (73 bytes). Buffers sized with it fit
/// every SA; [`OutboundSa::max_overhead`] is one SA's.
pub const fn max_overhead() -> usize {
    HEADER_LEN + 15 + TRAILER_LEN + crate::MAX_ICV_LEN
}

/// Padding so that payload, padding and trailer end on a multiple of `align`: the cipher's
/// block, or 4 bytes for an AEAD (RFC 4303 §2.4; GCM and ChaCha20 need none themselves,
/// RFC 4106 §3.2). `align` is a power of two.
#[inline]
fn pad_len(inner_len: usize, align: usize) -> usize {
    (align - (inner_len + TRAILER_LEN) % align) % align
}

/// Salt and explicit IV (RFC 4106 §4, RFC 7634 §2).
#[inline]
fn nonce(salt: &[u8; SALT_LEN], iv: [u8; 8]) -> [u8; NONCE_LEN] {
    let mut n = [0; NONCE_LEN];
    n[..SALT_LEN].copy_from_slice(salt);
    n[SALT_LEN..].copy_from_slice(&iv);
    n
}

/// How an SA's packets are protected.
// Keys stay inline, as in `Cipher`: a box would add a pointer chase per packet.
#[allow(clippy::large_enum_variant)]
enum Protection {
    /// AES-GCM or ChaCha20-Poly1305 and the salt of the nonce.
    Aead { cipher: Cipher, salt: [u8; SALT_LEN] },
    /// A CBC cipher, then HMAC (encrypt-then-MAC, RFC 4303 §3.3.2).
    Cbc { cipher: CbcKey, mac: ring::hmac::Key },
}

impl fmt::Debug for Protection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Protection::Aead { cipher, .. } => cipher.fmt(f),
            Protection::Cbc { cipher, .. } => cipher.fmt(f),
        }
    }
}

/// Overwrites key material before its memory is freed (`black_box` keeps the stores from being
/// optimised away as dead).
fn wipe(key: &mut [u8]) {
    key.fill(0);
    std::hint::black_box(key);
}

/// State shared by both directions.
struct Common {
    spi: u32,
    esn: bool,
    transform: Transform,
    /// [`Transform::header_len`], [`Transform::align`] and [`Transform::icv_len`], kept so the
    /// packet path reads fields instead of matching.
    header_len: usize,
    align: usize,
    icv_len: usize,
    prot: Protection,
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
        let t = cfg.transform;
        let expected = t.key_material_len();
        if cfg.key.len() != expected {
            return Err(EspError::KeyLength { transform: t, expected, got: cfg.key.len() });
        }
        let prot = match t {
            Transform::Aead(aead) => {
                let (key, salt) = cfg.key.split_at(aead.key_len());
                let mut s = [0; SALT_LEN];
                s.copy_from_slice(salt);
                Protection::Aead { cipher: Cipher::new(aead, cfg.backend, key)?, salt: s }
            }
            Transform::Cbc(cipher, integ) => {
                let (key, mac) = cfg.key.split_at(cipher.key_len());
                Protection::Cbc {
                    cipher: CbcKey::new(cipher, key)?,
                    mac: ring::hmac::Key::new(integ.ring(), mac),
                }
            }
        };
        Ok(Common {
            spi: cfg.spi,
            esn: cfg.esn,
            transform: t,
            header_len: t.header_len(),
            align: t.align(),
            icv_len: t.icv_len(),
            prot,
            lifetime: cfg.lifetime,
            created: now,
            packets: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            drops: DropCounters::new(),
            soft_reported: AtomicBool::new(false),
        })
    }

    /// Protects `buf`: SPI and sequence number are in `buf[..8]`, the IV is to be written at
    /// `buf[8..header_len]`, the plaintext (payload, padding, trailer) follows up to
    /// `buf.len() - icv_len`, and the ICV goes last. `iv` is this packet's IV source.
    #[inline]
    fn protect(&self, buf: &mut [u8], seq: u64, iv: &IvSource) -> Result<(), DropReason> {
        let (hl, icv) = (self.header_len, self.icv_len);
        match &self.prot {
            Protection::Aead { cipher, salt } => {
                // Explicit IV: the full sequence number, unique per key (RFC 4106 §3.1,
                // RFC 7634 §2).
                let iv = seq.to_be_bytes();
                buf[ESP_HEADER_LEN..hl].copy_from_slice(&iv);
                let (aad, aad_len) = self.aad(seq);
                cipher
                    .seal_in_place(&nonce(salt, iv), &aad[..aad_len], &mut buf[hl..])
                    .map_err(|_| DropReason::TooBig)
            }
            Protection::Cbc { cipher, mac } => {
                let ct_end = buf.len() - icv;
                let (head, body) = buf.split_at_mut(hl);
                iv.fill(seq, &mut head[ESP_HEADER_LEN..]);
                cipher.encrypt(&head[ESP_HEADER_LEN..], &mut body[..ct_end - hl])?;
                let tag = self.mac(mac, head, &body[..ct_end - hl], seq);
                body[ct_end - hl..].copy_from_slice(&tag.as_ref()[..icv]);
                Ok(())
            }
        }
    }

    /// Verifies and decrypts: `head` is SPI, sequence number and IV, `body` the ciphertext
    /// followed by the ICV; the plaintext is left at the front of `body`.
    #[inline]
    fn unprotect(&self, head: &[u8], body: &mut [u8], seq: u64) -> Result<(), DropReason> {
        match &self.prot {
            Protection::Aead { cipher, salt } => {
                let mut iv = [0; 8];
                iv.copy_from_slice(&head[ESP_HEADER_LEN..]);
                let (aad, aad_len) = self.aad(seq);
                cipher
                    .open_in_place(&nonce(salt, iv), &aad[..aad_len], body)
                    .map_err(|_| DropReason::IcvFailure)
            }
            Protection::Cbc { cipher, mac } => {
                let ct_len = body.len() - self.icv_len;
                let (ct, icv) = body.split_at_mut(ct_len);
                let tag = self.mac(mac, head, ct, seq);
                // Constant time, so a forger learns nothing from how long the refusal took.
                let equal = subtle::ConstantTimeEq::ct_eq(&tag.as_ref()[..self.icv_len], &*icv);
                if !bool::from(equal) {
                    return Err(DropReason::IcvFailure);
                }
                cipher.decrypt(&head[ESP_HEADER_LEN..], ct)
            }
        }
    }

    /// The ICV of encrypt-then-MAC: HMAC over SPI, sequence number, IV and ciphertext, and with
    /// ESN the high 32 bits of the sequence number after them (RFC 4303 §2.2.1, §3.3.2.2.1).
    #[inline]
    fn mac(&self, key: &ring::hmac::Key, head: &[u8], ct: &[u8], seq: u64) -> ring::hmac::Tag {
        let mut ctx = ring::hmac::Context::with_key(key);
        ctx.update(head);
        ctx.update(ct);
        if self.esn {
            ctx.update(&((seq >> 32) as u32).to_be_bytes());
        }
        ctx.sign()
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
    /// Where a CBC cipher's IVs come from.
    iv: IvSource,
}

impl fmt::Debug for OutboundSa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OutboundSa")
            .field("spi", &format_args!("{:#010x}", self.common.spi))
            .field("transform", &self.common.transform)
            .field("protection", &self.common.prot)
            .field("esn", &self.common.esn)
            .field("next_seq", &self.next_seq.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl OutboundSa {
    /// An SA installed at `now` (lifetimes count from it).
    /// The key material in `cfg` is wiped once the cipher holds it.
    pub fn new(mut cfg: SaConfig, now: Instant) -> Result<OutboundSa, EspError> {
        let common = Common::new(&cfg, now);
        wipe(&mut cfg.key);
        let common = common?;
        let iv = match common.prot {
            Protection::Cbc { .. } => IvSource::random()?,
            Protection::Aead { .. } => IvSource::none(),
        };
        Ok(OutboundSa { common, next_seq: AtomicU64::new(1), iv })
    }

    /// The algorithms.
    pub fn transform(&self) -> Transform {
        self.common.transform
    }

    /// Bytes in front of the inner packet: SPI, sequence number and IV. The in-place API
    /// takes the inner packet at this offset.
    #[inline]
    pub fn header_len(&self) -> usize {
        self.common.header_len
    }

    /// The most bytes this SA adds to any inner packet (for path MTU advice that holds
    /// whatever the padding of the next packet).
    #[inline]
    pub fn max_overhead(&self) -> usize {
        self.common.transform.max_overhead()
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
        let c = &self.common;
        c.header_len + pad_len(inner_len, c.align) + TRAILER_LEN + c.icv_len
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
        let hl = self.common.header_len;
        out[hl..hl + inner.len()].copy_from_slice(inner);
        self.seal(out, inner.len(), nh, now)
    }

    /// Like [`encapsulate`](Self::encapsulate), for a packet already in place:
    /// `buf[h..h + inner_len]` holds the inner packet, where `h` is
    /// [`header_len`](Self::header_len) (at most [`HEADER_LEN`]), and `buf` has room for the
    /// padding, trailer and ICV after it. Saves the copy of the packet.
    #[inline]
    pub fn encapsulate_in_place(
        &self,
        buf: &mut [u8],
        inner_len: usize,
        now: Instant,
    ) -> Result<usize, DropReason> {
        let hl = self.common.header_len;
        let inner = buf.get(hl..hl + inner_len);
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
        let hl = self.common.header_len;
        let dst = out.get_mut(hl..hl + len);
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
        let pad = pad_len(inner_len, c.align);
        let trailer_at = c.header_len + inner_len;
        let ct_end = trailer_at + pad + TRAILER_LEN;
        let total = ct_end + c.icv_len;
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
        for (i, b) in buf[trailer_at..trailer_at + pad].iter_mut().enumerate() {
            *b = i as u8 + 1;
        }
        buf[ct_end - 2] = pad as u8;
        buf[ct_end - 1] = nh;
        c.protect(&mut buf[..total], seq, &self.iv).map_err(|r| c.drop(r))?;
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
    /// Copy of the window's highest accepted number, for the lock-free pre-check.
    top: AtomicU64,
    window_size: u32,
    /// Nanoseconds after `created` of the last verified packet, plus one; 0 for none.
    last_packet: AtomicU64,
}

impl fmt::Debug for InboundSa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InboundSa")
            .field("spi", &format_args!("{:#010x}", self.common.spi))
            .field("transform", &self.common.transform)
            .field("protection", &self.common.prot)
            .field("esn", &self.common.esn)
            .finish_non_exhaustive()
    }
}

impl InboundSa {
    /// An SA installed at `now` (lifetimes count from it).
    /// The key material in `cfg` is wiped once the cipher holds it.
    pub fn new(mut cfg: SaConfig, now: Instant) -> Result<InboundSa, EspError> {
        let common = Common::new(&cfg, now);
        wipe(&mut cfg.key);
        Ok(InboundSa {
            common: common?,
            window: Mutex::new(ReplayWindow::new(cfg.replay_window)?),
            top: AtomicU64::new(0),
            window_size: cfg.replay_window,
            last_packet: AtomicU64::new(0),
        })
    }

    /// The SPI (this side chose it).
    pub fn spi(&self) -> u32 {
        self.common.spi
    }

    /// The algorithms.
    pub fn transform(&self) -> Transform {
        self.common.transform
    }

    /// Bytes of SPI, sequence number and IV: where
    /// [`decapsulate_in_place`](Self::decapsulate_in_place) leaves the inner packet.
    #[inline]
    pub fn header_len(&self) -> usize {
        self.common.header_len
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
        let (seq, ct_len) = self.precheck(esp, now)?;
        let Some(dst) = out.get_mut(..ct_len + c.icv_len) else {
            return Err(c.drop(DropReason::TooBig));
        };
        let (head, body) = esp.split_at(c.header_len);
        dst.copy_from_slice(body);
        self.open(seq, head, dst, now, 0)
    }

    /// Like [`decapsulate`](Self::decapsulate), in place: the inner packet ends up at
    /// `esp[h..h + len]` where `h` is [`header_len`](Self::header_len) (see
    /// [`Decapsulated::offset`]). Saves the copy.
    #[inline]
    pub fn decapsulate_in_place(
        &self,
        esp: &mut [u8],
        now: Instant,
    ) -> Result<Decapsulated, DropReason> {
        let (seq, _) = self.precheck(esp, now)?;
        let hl = self.common.header_len;
        let (head, body) = esp.split_at_mut(hl);
        self.open(seq, head, body, now, hl)
    }

    /// Length, SPI, expiry and replay checks before spending time on the cipher. Returns the
    /// (inferred) sequence number and the ciphertext length.
    #[inline]
    fn precheck(&self, esp: &[u8], now: Instant) -> Result<(u64, usize), DropReason> {
        let c = &self.common;
        // At least header, IV, trailer and ICV; the ciphertext fills whole blocks, or 4-byte
        // units for an AEAD (RFC 4303 §2.4).
        let ct_len = esp.len().checked_sub(c.header_len + c.icv_len);
        let ct_len = ct_len.filter(|&l| l >= TRAILER_LEN && l % c.align == 0);
        let Some(ct_len) = ct_len else { return Err(c.drop(DropReason::Malformed)) };
        if peek_spi(esp) != Some(c.spi) {
            return Err(c.drop(DropReason::UnknownSpi));
        }
        if c.hard_expired(now) {
            return Err(c.drop(DropReason::Expired));
        }
        let seq_lo = u32::from_be_bytes([esp[4], esp[5], esp[6], esp[7]]);
        // Lock-free fast path: a number above the highest accepted one needs no bitmap look-up
        // (the common, in-order case). `accept` checks again under the lock after the ICV.
        let top = self.top.load(Ordering::Acquire);
        let seq = if c.esn {
            replay::infer_esn(top, self.window_size, seq_lo)
        } else {
            u64::from(seq_lo)
        };
        if seq <= top || seq == 0 {
            self.lock_window().check(seq).map_err(|r| c.drop(r))?;
        }
        Ok((seq, ct_len))
    }

    /// Verifies and decrypts `buf` (ciphertext followed by the ICV; `head` is SPI, sequence
    /// number and IV), then updates the window, checks the trailer and the inner packet.
    /// `offset` is reported back as where the inner packet starts in the caller's buffer.
    #[inline]
    fn open(
        &self,
        seq: u64,
        head: &[u8],
        buf: &mut [u8],
        now: Instant,
        offset: usize,
    ) -> Result<Decapsulated, DropReason> {
        let c = &self.common;
        c.unprotect(head, buf, seq).map_err(|r| c.drop(r))?;
        // Only an authenticated packet moves the window (RFC 4303 §3.4.3).
        {
            let mut w = self.lock_window();
            w.accept(seq).map_err(|r| c.drop(r))?;
            self.top.store(w.top(), Ordering::Release);
        }
        let ct_len = buf.len() - c.icv_len;
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
        // A plain store: racing threads may leave a time a few nanoseconds older, which is fine
        // for diagnostics and avoids a compare-and-swap loop per packet.
        let stamp = u64::try_from(since).unwrap_or(u64::MAX - 1) + 1;
        self.last_packet.store(stamp, Ordering::Relaxed);
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    use crate::{Aead, CbcCipher, ICV_LEN, Integ};

    fn key_for(t: Transform) -> Vec<u8> {
        (0..t.key_material_len() as u8).map(|i| i.wrapping_mul(37).wrapping_add(11)).collect()
    }

    fn cfg(t: impl Into<Transform>, backend: Backend, esn: bool, window: u32) -> SaConfig {
        let transform = t.into();
        SaConfig {
            spi: 0x1234_5678,
            transform,
            backend,
            key: key_for(transform),
            esn,
            replay_window: window,
            lifetime: Lifetime::default(),
        }
    }

    fn pair(c: SaConfig, now: Instant) -> (OutboundSa, InboundSa) {
        (OutboundSa::new(c.clone(), now).unwrap(), InboundSa::new(c, now).unwrap())
    }

    /// A syntactically plausible IP packet of `len` bytes: version nibble, total length, and a
    /// payload pattern.
    fn ip_packet(version: u8, len: usize, fill: u8) -> Vec<u8> {
        let mut p: Vec<u8> = (0..len).map(|i| (i as u8).wrapping_mul(7) ^ fill).collect();
        p[0] = (version << 4) | if version == 4 { 5 } else { 0 };
        if version == 4 {
            p[2..4].copy_from_slice(&(len as u16).to_be_bytes());
        } else {
            p[4..6].copy_from_slice(&((len - 40) as u16).to_be_bytes());
        }
        p
    }

    /// Builds an ESP packet by hand from the RFCs, independently of `OutboundSa`: SPI, seq,
    /// IV, then the AEAD over `plaintext` (payload, padding and trailer, RFC 4106 §5), or CBC
    /// and an HMAC from the `hmac` crate over SPI, seq, IV, ciphertext and, with ESN, the high
    /// half of seq (RFC 4303 §3.3.2.2.1). `iv` is as long as the transform's.
    fn craft(c: &SaConfig, seq: u64, iv: &[u8], plaintext: &[u8]) -> Vec<u8> {
        let mut pkt = c.spi.to_be_bytes().to_vec();
        pkt.extend((seq as u32).to_be_bytes());
        pkt.extend(iv);
        let mut body = plaintext.to_vec();
        match c.transform {
            Transform::Aead(aead) => {
                let cipher = Cipher::new(aead, c.backend, &c.key[..aead.key_len()]).unwrap();
                let mut nonce = [0u8; 12];
                nonce[..4].copy_from_slice(&c.key[aead.key_len()..]);
                nonce[4..].copy_from_slice(iv);
                let mut aad = c.spi.to_be_bytes().to_vec();
                if c.esn {
                    aad.extend(((seq >> 32) as u32).to_be_bytes());
                }
                aad.extend((seq as u32).to_be_bytes());
                body.extend([0; ICV_LEN]);
                cipher.seal_in_place(&nonce, &aad, &mut body).unwrap();
                pkt.extend(body);
            }
            Transform::Cbc(cipher, integ) => {
                let (ek, ak) = c.key.split_at(cipher.key_len());
                CbcKey::new(cipher, ek).unwrap().encrypt(iv, &mut body).unwrap();
                pkt.extend(body);
                let mut mac_input = pkt.clone();
                if c.esn {
                    mac_input.extend(((seq >> 32) as u32).to_be_bytes());
                }
                let tag = hmac_of(integ, ak, &mac_input);
                pkt.extend(&tag[..integ.icv_len()]);
            }
        }
        pkt
    }

    /// HMAC from RustCrypto's `hmac`, not ring's (which the engine uses).
    fn hmac_of(integ: Integ, key: &[u8], data: &[u8]) -> Vec<u8> {
        use hmac::{Mac, SimpleHmac};
        fn run<D: hmac::digest::Digest + hmac::digest::core_api::BlockSizeUser>(
            key: &[u8],
            data: &[u8],
        ) -> Vec<u8> {
            let mut m = SimpleHmac::<D>::new_from_slice(key).unwrap();
            m.update(data);
            m.finalize().into_bytes().to_vec()
        }
        match integ {
            Integ::HmacSha1_96 => run::<sha1::Sha1>(key, data),
            Integ::HmacSha256_128 => run::<sha2::Sha256>(key, data),
            Integ::HmacSha384_192 => run::<sha2::Sha384>(key, data),
            Integ::HmacSha512_256 => run::<sha2::Sha512>(key, data),
        }
    }

    /// Every transform, with a CBC cipher of each size against each HMAC once.
    const TRANSFORMS: [Transform; 7] = [
        Transform::Aead(Aead::Aes128Gcm16),
        Transform::Aead(Aead::Aes256Gcm16),
        Transform::Aead(Aead::ChaCha20Poly1305),
        Transform::Cbc(CbcCipher::Aes128, Integ::HmacSha256_128),
        Transform::Cbc(CbcCipher::Aes192, Integ::HmacSha384_192),
        Transform::Cbc(CbcCipher::Aes256, Integ::HmacSha512_256),
        Transform::Cbc(CbcCipher::TripleDes, Integ::HmacSha1_96),
    ];

    fn all_configs() -> Vec<SaConfig> {
        let mut v = Vec::new();
        for t in TRANSFORMS {
            for backend in Backend::ALL {
                for esn in [false, true] {
                    v.push(cfg(t, backend, esn, 64));
                }
            }
        }
        v
    }

    /// Payload, default padding (RFC 4303 §2.4) and trailer for `inner` under `t`.
    fn padded(t: Transform, inner: &[u8], nh: u8) -> Vec<u8> {
        let pad = pad_len(inner.len(), t.align());
        let mut p = inner.to_vec();
        p.extend((1..=pad as u8).chain([pad as u8, nh]));
        p
    }

    #[test]
    fn rfc4303_2_and_rfc4106_layout_matches_a_hand_built_packet() {
        let now = Instant::now();
        for c in all_configs() {
            let (out_sa, in_sa) = pair(c.clone(), now);
            let t = c.transform;
            let inner = ip_packet(4, 21, 0);
            let mut out = [0u8; 128];
            let n = out_sa.encapsulate(&inner, &mut out, now).unwrap();
            // 21 bytes, then padding to 4 bytes (GCM, ChaCha20: one byte), 8 (3DES) or 16 (AES),
            // pad length and next header 4.
            let plain = padded(t, &inner, NH_IPV4);
            assert_eq!(plain.len() % t.align(), 0);
            // An AEAD's IV is the sequence number (RFC 4106 §3.1); a CBC one's is not.
            let hl = t.header_len();
            let iv = match t {
                Transform::Aead(_) => 1u64.to_be_bytes().to_vec(),
                Transform::Cbc(..) => {
                    assert_ne!(&out[8..16], &1u64.to_be_bytes(), "{c:?}");
                    out[8..hl].to_vec()
                }
            };
            let expected = craft(&c, 1, &iv, &plain);
            assert_eq!(hex::encode(&out[..n]), hex::encode(&expected), "{c:?}");
            assert_eq!(n, inner.len() + out_sa.overhead(inner.len()));
            // And a hand-built packet with a peer's arbitrary IV decapsulates.
            let peer_iv: Vec<u8> =
                (0..t.iv_len() as u8).map(|i| 0x9a ^ i.wrapping_mul(29)).collect();
            let peer = craft(&c, 1, &peer_iv, &plain);
            let mut back = [0u8; 128];
            let d = in_sa.decapsulate(&peer, &mut back, now).unwrap();
            assert_eq!(d, Decapsulated { offset: 0, len: 21, next_header: NH_IPV4, seq: 1 });
            assert_eq!(&back[..21], &inner[..]);
        }
    }

    #[test]
    fn both_backends_interoperate_and_ipv6_uses_next_header_41() {
        let now = Instant::now();
        for aead in [Aead::Aes128Gcm16, Aead::Aes256Gcm16, Aead::ChaCha20Poly1305] {
            let tx = OutboundSa::new(cfg(aead, Backend::Ring, true, 64), now).unwrap();
            let rx = InboundSa::new(cfg(aead, Backend::RustCrypto, true, 64), now).unwrap();
            let inner = ip_packet(6, 100, 3);
            let mut wire = [0u8; 256];
            let n = tx.encapsulate(&inner, &mut wire, now).unwrap();
            let mut back = [0u8; 256];
            let d = rx.decapsulate(&wire[..n], &mut back, now).unwrap();
            assert_eq!((d.len, d.next_header), (100, NH_IPV6));
            assert_eq!(&back[..100], &inner[..]);
        }
    }

    #[test]
    fn in_place_variants_match_the_copying_ones() {
        let now = Instant::now();
        for t in TRANSFORMS {
            let c = cfg(t, Backend::Ring, false, 64);
            let (a, rx_a) = pair(c.clone(), now);
            let (b, rx) = pair(c, now);
            let inner = ip_packet(4, 1400, 9);
            let mut copy = vec![0u8; 1500];
            let n = a.encapsulate(&inner, &mut copy, now).unwrap();
            let mut buf = vec![0u8; 1400 + max_overhead()];
            let hl = b.header_len();
            assert!(hl <= HEADER_LEN);
            buf[hl..hl + 1400].copy_from_slice(&inner);
            let m = b.encapsulate_in_place(&mut buf, 1400, now).unwrap();
            assert_eq!(m, n);
            if let Transform::Aead(_) = t {
                assert_eq!(&copy[..n], &buf[..m]);
            }
            let d = rx.decapsulate_in_place(&mut buf[..m], now).unwrap();
            assert_eq!(d.offset, hl);
            assert_eq!(&buf[d.offset..d.offset + d.len], &inner[..]);
            let d = rx_a.decapsulate_in_place(&mut copy[..n], now).unwrap();
            assert_eq!(&copy[d.offset..d.offset + d.len], &inner[..], "{t}");
        }
    }

    /// RFC 3602 §4 cases 5 and 6: ESP packets (transport mode, ICMP inside, no ICV) whose
    /// ciphertext the CBC layer must turn back into payload, default padding and trailer.
    #[test]
    fn rfc3602_esp_cases_5_and_6_decrypt() {
        let key = hex::decode("90d382b410eeba7ad938c46cec1a82bf").unwrap();
        let cases = [
            (
                "0000432100000001e96e8c08ab465763fd098d45dd3ff893f663c25d325c18c6a9453e194e120849a4870b66cc6b9965330013b4898dc856a4699e523a55db080b59ec3a8e4b7e52775b07d1db34ed9c538ab50c551b874aa269add047ad2d5913ac19b7cfbad4a6",
                "08000ebda70a00008e9c083db95b070008090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f202122232425262728292a2b2c2d2e2f3031323334353637",
            ),
            (
                "000043210000000869d08df7d203329db093fc4924e5bd80f51995881ec4e0c4488987ce742e8109689bb379d2d750c0d915dca346a89f75",
                "0800b5e8a80a0500a69c083d0b660e00777777777777777777777777",
            ),
        ];
        let t = Transform::Cbc(CbcCipher::Aes128, Integ::HmacSha256_128);
        let k = CbcKey::new(CbcCipher::Aes128, &key).unwrap();
        for (msg, payload) in cases {
            let msg = hex::decode(msg).unwrap();
            let (head, ct) = msg.split_at(t.header_len());
            let mut plain = ct.to_vec();
            k.decrypt(&head[8..], &mut plain).unwrap();
            // Next header 1: ICMP in transport mode.
            let expected = padded(t, &hex::decode(payload).unwrap(), 1);
            assert_eq!(hex::encode(&plain), hex::encode(&expected));
            // And back.
            k.encrypt(&head[8..], &mut plain).unwrap();
            assert_eq!(plain, ct);
        }
    }

    #[test]
    fn cbc_ivs_are_fresh_per_packet_and_per_sa() {
        let now = Instant::now();
        let c =
            cfg(Transform::Cbc(CbcCipher::Aes256, Integ::HmacSha256_128), Backend::Ring, false, 64);
        let (a, b) = (OutboundSa::new(c.clone(), now).unwrap(), OutboundSa::new(c, now).unwrap());
        let inner = ip_packet(4, 40, 0);
        let mut ivs = std::collections::HashSet::new();
        for _ in 0..100 {
            for sa in [&a, &b] {
                let mut w = [0u8; 128];
                sa.encapsulate(&inner, &mut w, now).unwrap();
                assert!(ivs.insert(w[8..24].to_vec()), "IV repeated");
            }
        }
        // Two SAs with the same key and sequence numbers still send different IVs.
        assert_eq!(ivs.len(), 200);
    }

    #[test]
    fn tampered_truncated_replayed_and_wrong_spi_are_rejected_and_counted() {
        let now = Instant::now();
        for c in all_configs() {
            let (tx, rx) = pair(c.clone(), now);
            let inner = ip_packet(4, 60, 1);
            let mut wire = [0u8; 256];
            let n = tx.encapsulate(&inner, &mut wire, now).unwrap();
            let pkt = wire[..n].to_vec();
            let mut out = [0u8; 256];
            // Flip one bit in the sequence number, IV, ciphertext and ICV in turn.
            for at in [5, 9, 20, n - 20, n - 1] {
                let mut bad = pkt.clone();
                bad[at] ^= 0x10;
                assert_eq!(rx.decapsulate(&bad, &mut out, now), Err(DropReason::IcvFailure));
            }
            let mut bad = pkt.clone();
            bad[3] ^= 1;
            assert_eq!(rx.decapsulate(&bad, &mut out, now), Err(DropReason::UnknownSpi));
            // Truncated: not aligned, cut by a block (a word for an AEAD), and shorter than any
            // packet.
            let align = c.transform.align();
            assert_eq!(rx.decapsulate(&pkt[..n - 1], &mut out, now), Err(DropReason::Malformed));
            assert_eq!(
                rx.decapsulate(&pkt[..n - align], &mut out, now),
                Err(DropReason::IcvFailure)
            );
            assert_eq!(rx.decapsulate(&pkt[..20], &mut out, now), Err(DropReason::Malformed));
            assert_eq!(rx.decapsulate(&[], &mut out, now), Err(DropReason::Malformed));
            // No room for the result.
            assert_eq!(rx.decapsulate(&pkt, &mut out[..40], now), Err(DropReason::TooBig));
            // The good one passes once, then is a replay.
            assert!(rx.decapsulate(&pkt, &mut out, now).is_ok());
            assert_eq!(rx.decapsulate(&pkt, &mut out, now), Err(DropReason::Replay));
            let s = rx.counters();
            assert_eq!((s.packets, s.bytes), (1, 60));
            assert_eq!(s.drops.get(DropReason::IcvFailure), 6);
            assert_eq!(s.drops.get(DropReason::UnknownSpi), 1);
            assert_eq!(s.drops.get(DropReason::Malformed), 3);
            assert_eq!(s.drops.get(DropReason::TooBig), 1);
            assert_eq!(s.drops.get(DropReason::Replay), 1);
            assert_eq!(s.drops.total(), 12);
            assert_eq!(peek_spi(&pkt), Some(0x1234_5678));
            assert_eq!(peek_spi(&pkt[..3]), None);
        }
    }

    #[test]
    fn rfc4303_3_4_3_forged_packets_do_not_move_the_window() {
        let now = Instant::now();
        let c = cfg(Aead::Aes128Gcm16, Backend::Ring, false, 64);
        let (tx, rx) = pair(c.clone(), now);
        // A forgery far ahead: correct layout, wrong key.
        let mut forged_cfg = c.clone();
        forged_cfg.key[0] ^= 1;
        let mut plain = ip_packet(4, 20, 0);
        plain.extend([1, 2, 2, NH_IPV4]);
        let forged = craft(&forged_cfg, 1_000_000, &[0; 8], &plain);
        let mut out = [0u8; 256];
        assert_eq!(rx.decapsulate(&forged, &mut out, now), Err(DropReason::IcvFailure));
        assert_eq!(rx.highest_seq(), 0);
        // Genuine packets 1..=100 still pass, delivered out of order.
        let mut pkts = Vec::new();
        for _ in 0..100 {
            let mut w = [0u8; 128];
            let n = tx.encapsulate(&ip_packet(4, 40, 0), &mut w, now).unwrap();
            pkts.push(w[..n].to_vec());
        }
        for p in pkts.iter().rev().take(64) {
            rx.decapsulate(p, &mut out, now).unwrap();
        }
        // Packet 36 is now 64 behind 100: outside a 64-packet window.
        assert_eq!(rx.decapsulate(&pkts[35], &mut out, now), Err(DropReason::OutsideWindow));
        assert_eq!(rx.decapsulate(&pkts[36], &mut out, now), Err(DropReason::Replay));
        assert_eq!(rx.counters().drops.get(DropReason::OutsideWindow), 1);
    }

    #[test]
    fn rfc4303_2_4_padding_is_checked() {
        let now = Instant::now();
        let c = cfg(Aead::Aes128Gcm16, Backend::RustCrypto, false, 64);
        let rx = InboundSa::new(c.clone(), now).unwrap();
        let mut out = [0u8; 256];
        let inner = ip_packet(4, 20, 0);
        // Wrong padding bytes.
        let mut bad = inner.clone();
        bad.extend([7, 9, 2, NH_IPV4]);
        assert_eq!(
            rx.decapsulate(&craft(&c, 1, &[1; 8], &bad), &mut out, now),
            Err(DropReason::BadPadding)
        );
        // Pad length longer than what was sent.
        let mut long = ip_packet(4, 20, 0)[..2].to_vec();
        long.extend([200, NH_IPV4]);
        assert_eq!(
            rx.decapsulate(&craft(&c, 2, &[2; 8], &long), &mut out, now),
            Err(DropReason::BadPadding)
        );
        // Good padding passes; a larger-than-needed padding (TFC style, RFC 4303 §2.4) too.
        let mut good = inner.clone();
        good.extend([1, 2, 3, 4, 5, 6, 6, NH_IPV4]);
        let d = rx.decapsulate(&craft(&c, 3, &[3; 8], &good), &mut out, now).unwrap();
        assert_eq!(d.len, 20);
        assert_eq!(rx.counters().drops.get(DropReason::BadPadding), 2);
    }

    #[test]
    fn inner_must_be_ip_of_the_version_the_trailer_names() {
        let now = Instant::now();
        let c = cfg(Aead::Aes128Gcm16, Backend::Ring, false, 0);
        let (tx, rx) = pair(c.clone(), now);
        let mut out = [0u8; 256];
        assert_eq!(tx.encapsulate(&[0x10; 40], &mut out, now), Err(DropReason::Malformed));
        assert_eq!(tx.encapsulate(&[], &mut out, now), Err(DropReason::Malformed));
        assert_eq!(tx.encapsulate(&[0x45; 19], &mut out, now), Err(DropReason::Malformed));
        assert_eq!(tx.encapsulate(&ip_packet(4, 300, 0), &mut out, now), Err(DropReason::TooBig));
        assert_eq!(tx.counters().drops.get(DropReason::Malformed), 3);
        assert_eq!(tx.counters().drops.get(DropReason::TooBig), 1);
        // Next header 4 over an IPv6 packet, and a transport protocol in tunnel mode.
        let mut v6_as_v4 = ip_packet(6, 40, 0);
        v6_as_v4.extend([1, 2, 2, NH_IPV4]);
        assert_eq!(
            rx.decapsulate(&craft(&c, 1, &[0; 8], &v6_as_v4), &mut out, now),
            Err(DropReason::Malformed)
        );
        let mut udp = ip_packet(4, 20, 0);
        udp.extend([1, 2, 2, 17]);
        assert_eq!(
            rx.decapsulate(&craft(&c, 2, &[0; 8], &udp), &mut out, now),
            Err(DropReason::Malformed)
        );
    }

    #[test]
    fn rfc4303_2_6_dummy_packets_verify_and_are_marked() {
        let now = Instant::now();
        let (tx, rx) = pair(cfg(Aead::Aes256Gcm16, Backend::Ring, true, 64), now);
        let mut wire = [0u8; 128];
        let n = tx.encapsulate_dummy(30, &mut wire, now).unwrap();
        let mut out = [0u8; 128];
        let d = rx.decapsulate(&wire[..n], &mut out, now).unwrap();
        assert!(d.is_dummy());
        assert_eq!(d.len, 30);
        assert_eq!(rx.counters().drops.total(), 0);
        // It still counts against replay.
        assert_eq!(rx.decapsulate(&wire[..n], &mut out, now), Err(DropReason::Replay));
    }

    #[test]
    fn lifetimes_soft_once_then_hard_stops_both_directions() {
        let t0 = Instant::now();
        let mut c = cfg(Aead::Aes128Gcm16, Backend::Ring, false, 64);
        c.lifetime = Lifetime {
            soft_packets: Some(3),
            hard_packets: Some(5),
            soft_time: Some(Duration::from_secs(60)),
            hard_time: Some(Duration::from_secs(90)),
            ..Lifetime::default()
        };
        let (tx, rx) = pair(c, t0);
        let inner = ip_packet(4, 40, 0);
        let mut wire = [0u8; 128];
        let mut out = [0u8; 128];
        assert_eq!(tx.lifetime_state(t0), LifetimeState::Live);
        assert!(!tx.take_soft_expired(t0));
        for i in 1..=5 {
            let n = tx.encapsulate(&inner, &mut wire, t0).unwrap();
            rx.decapsulate(&wire[..n], &mut out, t0).unwrap();
            if i == 3 {
                assert_eq!(tx.lifetime_state(t0), LifetimeState::Soft);
                assert_eq!(rx.lifetime_state(t0), LifetimeState::Soft);
                assert!(tx.take_soft_expired(t0));
                assert!(!tx.take_soft_expired(t0));
                assert!(rx.take_soft_expired(t0));
            }
        }
        assert_eq!(tx.lifetime_state(t0), LifetimeState::Hard);
        assert_eq!(tx.encapsulate(&inner, &mut wire, t0), Err(DropReason::Expired));
        assert_eq!(rx.decapsulate(&wire[..76], &mut out, t0), Err(DropReason::Expired));
        assert_eq!(tx.counters().drops.get(DropReason::Expired), 1);
        assert_eq!(tx.counters().packets, 5);

        // Time limits alone.
        let mut c = cfg(Aead::Aes128Gcm16, Backend::Ring, false, 64);
        c.lifetime = Lifetime {
            soft_time: Some(Duration::from_secs(60)),
            hard_time: Some(Duration::from_secs(90)),
            soft_bytes: Some(1000),
            ..Lifetime::default()
        };
        let tx = OutboundSa::new(c, t0).unwrap();
        assert_eq!(tx.lifetime_state(t0 + Duration::from_secs(59)), LifetimeState::Live);
        assert_eq!(tx.lifetime_state(t0 + Duration::from_secs(60)), LifetimeState::Soft);
        assert_eq!(tx.lifetime_state(t0 + Duration::from_secs(90)), LifetimeState::Hard);
        assert!(tx.encapsulate(&inner, &mut wire, t0 + Duration::from_secs(89)).is_ok());
        let late = t0 + Duration::from_secs(90);
        assert_eq!(tx.encapsulate(&inner, &mut wire, late), Err(DropReason::Expired));
        // Bytes: 25 packets of 40 bytes reach the soft 1000.
        for _ in 0..24 {
            tx.encapsulate(&inner, &mut wire, t0).unwrap();
        }
        assert_eq!(tx.lifetime_state(t0), LifetimeState::Soft);
        assert!(tx.take_soft_expired(t0));
    }

    #[test]
    fn rfc4303_3_3_3_sequence_numbers_never_cycle_without_esn() {
        let now = Instant::now();
        let (tx, _) = pair(cfg(Aead::Aes128Gcm16, Backend::Ring, false, 64), now);
        let inner = ip_packet(4, 40, 0);
        let mut wire = [0u8; 128];
        tx.next_seq.store(u64::from(u32::MAX) - SEQ_SOFT_MARGIN, Ordering::Relaxed);
        assert_eq!(tx.lifetime_state(now), LifetimeState::Live);
        tx.next_seq.store(u64::from(u32::MAX), Ordering::Relaxed);
        assert_eq!(tx.lifetime_state(now), LifetimeState::Soft);
        assert!(tx.take_soft_expired(now));
        let n = tx.encapsulate(&inner, &mut wire, now).unwrap();
        assert_eq!(&wire[4..8], &[0xff; 4]);
        assert_eq!(n, 76);
        assert_eq!(tx.encapsulate(&inner, &mut wire, now), Err(DropReason::Expired));
        assert_eq!(tx.lifetime_state(now), LifetimeState::Hard);
    }

    #[test]
    fn rfc4303_appendix_a_esn_wraps_across_2_pow_32_end_to_end() {
        let now = Instant::now();
        for backend in Backend::ALL {
            let (tx, rx) = pair(cfg(Aead::Aes128Gcm16, backend, true, 64), now);
            tx.next_seq.store((1 << 32) - 3, Ordering::Relaxed);
            let inner = ip_packet(4, 40, 0);
            let mut pkts = Vec::new();
            for _ in 0..6 {
                let mut w = [0u8; 128];
                let n = tx.encapsulate(&inner, &mut w, now).unwrap();
                pkts.push(w[..n].to_vec());
            }
            // Seqs 2^32-3 .. 2^32+2; deliver 0, 1, then 4 (past the wrap), then late 2 and 3.
            let mut out = [0u8; 128];
            for i in [0usize, 1, 4, 2, 3, 5] {
                let d = rx.decapsulate(&pkts[i], &mut out, now).unwrap();
                assert_eq!(d.seq, (1 << 32) - 3 + i as u64, "{backend}");
            }
            assert_eq!(rx.highest_seq(), (1 << 32) + 2);
            assert_eq!(rx.decapsulate(&pkts[2], &mut out, now), Err(DropReason::Replay));
            // The high half is in the ICV: a receiver without ESN cannot verify these.
            let plain_rx = InboundSa::new(cfg(Aead::Aes128Gcm16, backend, false, 64), now).unwrap();
            assert_eq!(plain_rx.decapsulate(&pkts[5], &mut out, now), Err(DropReason::IcvFailure));
        }
    }

    #[test]
    fn shared_between_threads_every_sequence_number_is_unique() {
        let now = Instant::now();
        let mut c = cfg(Aead::Aes128Gcm16, Backend::Ring, false, 4096);
        c.replay_window = 4096;
        let (tx, rx) = pair(c, now);
        let (tx, rx) = (Arc::new(tx), Arc::new(rx));
        let handles: Vec<_> = (0..2)
            .map(|t| {
                let (tx, rx) = (tx.clone(), rx.clone());
                std::thread::spawn(move || {
                    let inner = ip_packet(4, 64, t);
                    let mut w = [0u8; 128];
                    let mut out = [0u8; 128];
                    for _ in 0..1000 {
                        let n = tx.encapsulate(&inner, &mut w, now).unwrap();
                        rx.decapsulate(&w[..n], &mut out, now).unwrap();
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        assert_eq!(rx.counters().packets, 2000);
        assert_eq!(rx.highest_seq(), 2000);
        assert_eq!(tx.next_seq(), 2001);
    }

    #[test]
    fn config_errors_name_the_problem_and_debug_redacts_the_key() {
        let now = Instant::now();
        let mut c = cfg(Aead::Aes256Gcm16, Backend::Ring, false, 64);
        c.key.pop();
        let e = OutboundSa::new(c.clone(), now).unwrap_err();
        assert_eq!(
            e.to_string(),
            "ESP key material for aes256gcm16 must be 36 bytes (encryption key, the 4-byte salt of an AEAD, the integrity key of CBC; RFC 7296 §2.17), got 35"
        );
        c.key.push(0);
        c.spi = 255;
        assert_eq!(InboundSa::new(c.clone(), now).unwrap_err(), EspError::ReservedSpi(255));
        c.spi = 0x1000;
        c.replay_window = 1 << 20;
        assert!(InboundSa::new(c.clone(), now).unwrap_err().to_string().contains("larger than"));
        let dbg = format!("{c:?}");
        assert!(dbg.contains("<redacted 36 bytes>"), "{dbg}");
        assert!(!dbg.contains(&format!("{:?}", &c.key[..4])), "{dbg}");
        let (tx, rx) = pair(cfg(Aead::Aes128Gcm16, Backend::Ring, false, 64), now);
        assert!(!format!("{tx:?}{rx:?}").contains("11, 48"), "key bytes leaked");
    }

    #[test]
    fn last_packet_reports_when_traffic_last_verified() {
        let t0 = Instant::now();
        let (tx, rx) = pair(cfg(Aead::Aes128Gcm16, Backend::Ring, false, 64), t0);
        assert_eq!(rx.last_packet(), None);
        let mut w = [0u8; 128];
        let n = tx.encapsulate(&ip_packet(4, 40, 0), &mut w, t0).unwrap();
        let t1 = t0 + Duration::from_millis(1500);
        let mut out = [0u8; 128];
        rx.decapsulate(&w[..n], &mut out, t1).unwrap();
        assert_eq!(rx.last_packet(), Some(t1));
        // A failed packet does not count as traffic.
        w[n - 1] ^= 1;
        let _ = rx.decapsulate(&w[..n], &mut out, t1 + Duration::from_secs(5));
        assert_eq!(rx.last_packet(), Some(t1));
    }

    mod proptests {
        use super::*;
        use proptest::prelude::*;

        fn transform() -> impl Strategy<Value = Transform> {
            proptest::sample::select(TRANSFORMS.to_vec())
        }
        fn backend() -> impl Strategy<Value = Backend> {
            prop_oneof![Just(Backend::Ring), Just(Backend::RustCrypto)]
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(256))]

            #[test]
            fn round_trip_any_size_both_ip_versions(
                v6 in any::<bool>(),
                len in 40usize..9100,
                fill in any::<u8>(),
                t in transform(),
                tx_backend in backend(),
                rx_backend in backend(),
                esn in any::<bool>(),
                start in prop_oneof![Just(1u64), 1u64..u64::from(u32::MAX), (1u64 << 32) - 8..(1 << 32) + 8],
            ) {
                let now = Instant::now();
                let mut c = cfg(t, tx_backend, esn, 128);
                let start = if esn { start } else { start.min(u64::from(u32::MAX)) };
                let tx = OutboundSa::new(c.clone(), now).unwrap();
                tx.next_seq.store(start, Ordering::Relaxed);
                c.backend = rx_backend;
                let rx = InboundSa::new(c, now).unwrap();
                if start > 1 {
                    // The receiver has seen the packet before (it knows the high half).
                    let mut w = rx.lock_window();
                    w.accept(start - 1).unwrap();
                    rx.top.store(w.top(), Ordering::Relaxed);
                }
                let inner = ip_packet(if v6 { 6 } else { 4 }, len, fill);
                let mut wire = vec![0u8; len + max_overhead()];
                let n = tx.encapsulate(&inner, &mut wire, now).unwrap();
                prop_assert_eq!(n, len + tx.overhead(len));
                prop_assert_eq!((n - t.header_len() - t.icv_len()) % t.align(), 0);
                prop_assert!(n - len <= max_overhead());
                let mut out = vec![0u8; n];
                let d = rx.decapsulate(&wire[..n], &mut out, now).unwrap();
                prop_assert_eq!(d.len, len);
                prop_assert_eq!(d.seq, start);
                prop_assert_eq!(d.next_header, if v6 { NH_IPV6 } else { NH_IPV4 });
                prop_assert_eq!(&out[..len], &inner[..]);
                prop_assert_eq!(rx.decapsulate(&wire[..n], &mut out, now), Err(DropReason::Replay));
            }

            #[test]
            fn any_single_bit_flip_is_refused(
                at in any::<proptest::sample::Index>(),
                bit in 0u8..8,
                t in transform(),
            ) {
                let now = Instant::now();
                let (tx, rx) = pair(cfg(t, Backend::Ring, true, 64), now);
                let inner = ip_packet(4, 100, 0);
                let mut wire = [0u8; 256];
                let n = tx.encapsulate(&inner, &mut wire, now).unwrap();
                let i = at.index(n);
                wire[i] ^= 1 << bit;
                let mut out = [0u8; 256];
                prop_assert!(rx.decapsulate(&wire[..n], &mut out, now).is_err());
                prop_assert_eq!(rx.counters().drops.total(), 1);
                prop_assert_eq!(rx.counters().packets, 0);
            }

            #[test]
            fn arbitrary_bytes_never_panic(
                bytes in proptest::collection::vec(any::<u8>(), 0..200),
                t in transform(),
            ) {
                let now = Instant::now();
                let rx = InboundSa::new(cfg(t, Backend::Ring, true, 64), now).unwrap();
                let mut out = [0u8; 256];
                let mut b = bytes.clone();
                if b.len() >= 4 {
                    b[..4].copy_from_slice(&0x1234_5678u32.to_be_bytes());
                }
                prop_assert!(rx.decapsulate(&b, &mut out, now).is_err());
                prop_assert!(rx.decapsulate_in_place(&mut b, now).is_err());
            }
        }
    }
}

//! The worker loops: TUN to WAN (outbound), WAN to TUN (inbound, one per socket), and
//! housekeeping (lifetimes, retiring inbound SAs).
//!
//! Workers never allocate per packet (an IKE message handed to the control plane is the one
//! copy) and never block on the control plane: they read the published snapshot once per
//! batch, and counters are summed locally and added to the shared atomics once per batch.
//! Encryption and decryption happen in place. Outbound, a packet read from TUN is copied once
//! into its send-batch slot behind room for the ESP header (a TSO super-segment is cut into its
//! slots there) and sealed in that slot; the read buffer is kept apart because one read can
//! fill several slots and an ICMP too-big answer is built from it. Inbound, an ESP datagram is
//! opened in the receive buffer and written to TUN from there (or merged into a coalesced
//! super-segment first, when the TUN device offloads).

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use isthmus_esp::{DropReason, peek_spi};
use isthmus_tables::sg::{AttachmentId, Direction as SgDir};
use isthmus_tables::spd::SpdAction;
use isthmus_wire::natt::{NattPayload, classify_natt};

use crate::counters::{Drop, Io, IoCounts};
use crate::filter::{LocalDrops, SgState};
use crate::offload::{self, Coalescer, VNET_HDR_LEN, VnetHdr};
use crate::sad::{Outbound, Snapshot};
use crate::sys::{RecvBatch, SendBatch, WanSocket, poll_readable};
use crate::{Encap, Event, Shared, pmtu};

/// How long a worker waits for packets before checking for a stop request.
const POLL_MS: i32 = 100;
/// An outbound batch ends after this much TUN input even when reads keep succeeding: the batch
/// works from one SAD snapshot, so this bounds the traffic a rekey's switch can lag behind
/// (64 super-segments of 64 KiB would be 4 MiB under the old SA).
const BATCH_BYTES: usize = 256 << 10;

const TAG_UDP: u8 = 0;
const TAG_RAW: u8 = 1;

/// Counts summed during one batch.
#[derive(Default)]
struct Local {
    io: IoCounts,
    drops: LocalDrops,
}

impl Local {
    fn flush(&mut self, sh: &Shared) {
        sh.io.add(&mut self.io);
        sh.drops.add(&mut self.drops.counts);
    }

    #[inline]
    fn drop(&mut self, d: impl Into<Drop>) {
        self.drops.counts[d.into()] += 1;
    }
}

/// TUN to WAN: classify, encrypt, send in batches.
pub(crate) fn outbound(sh: &Shared) {
    let cap = sh.cfg.batch.max(1);
    let mut out = Out {
        batch: SendBatch::new(cap, sh.buf_size),
        filled: 0,
        icmp: vec![0u8; 1400],
        local: Local::default(),
    };
    let vnet = sh.tun.vnet();
    // Room for the largest super-segment the kernel hands over with offloads.
    let mut scratch = vec![0u8; VNET_HDR_LEN + 65_536];
    // When the last batch emptied the device, wait in poll (which returns at once if packets
    // came meanwhile) instead of paying a read that fails with EAGAIN first.
    let mut drained = false;
    while !sh.stop.load(Ordering::Relaxed) {
        if drained && !poll_readable(sh.tun.raw_fd(), POLL_MS).unwrap_or(true) {
            continue;
        }
        drained = false;
        let snap = sh.state.load();
        let sg = sh.sg.load();
        let now = Instant::now();
        let (mut got, mut bytes) = (0, 0);
        while got < cap && bytes < BATCH_BYTES {
            let n = match sh.tun.read(&mut scratch) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    drained = true;
                    break;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    tracing::warn!(error = %e, "reading the TUN device failed");
                    out.local.io[Io::IoErrors] += 1;
                    break;
                }
            };
            got += 1;
            bytes += n;
            out.local.io[Io::TunRx] += 1;
            let (hdr, pkt) = if vnet {
                let Some(hdr) = VnetHdr::parse(&scratch[..n]) else { continue };
                (hdr, &mut scratch[VNET_HDR_LEN..n])
            } else {
                (VnetHdr::default(), &mut scratch[..n])
            };
            outbound_one(sh, &snap, &sg, hdr, pkt, now, &mut out);
        }
        out.flush(sh);
        sh.filter.flush(&sg, &mut out.local.drops);
        if got == 0 {
            // An error other than EAGAIN: do not spin on it.
            drained = true;
        }
    }
}

/// The outbound worker's send batch and scratch space.
struct Out {
    batch: SendBatch,
    filled: usize,
    icmp: Vec<u8>,
    local: Local,
}

impl Out {
    /// Sends what is queued and the batch's counts.
    fn flush(&mut self, sh: &Shared) {
        flush(sh, &self.batch, self.filled, &mut self.local);
        self.filled = 0;
        self.local.flush(sh);
    }

    /// A free slot, flushing first when the batch is full.
    fn slot(&mut self, sh: &Shared) -> &mut [u8] {
        if self.filled == self.batch.capacity() {
            self.flush(sh);
        }
        self.batch.slot(self.filled)
    }

    /// Encrypts the inner packet of `len` bytes at the SA's header length in the current slot
    /// and queues it.
    fn seal(&mut self, ob: &Outbound, len: usize, now: Instant) -> Result<(), DropReason> {
        let slot = self.batch.slot(self.filled);
        let n = ob.sa.encapsulate_in_place(slot, len, now)?;
        let tag = match ob.encap {
            Encap::Udp { .. } => TAG_UDP,
            Encap::Esp { .. } => TAG_RAW,
        };
        self.batch.set(self.filled, n, ob.dest, tag);
        self.filled += 1;
        Ok(())
    }
}

/// Sends the filled slots, each run of consecutive same-socket slots in one `sendmmsg`.
fn flush(sh: &Shared, batch: &SendBatch, filled: usize, local: &mut Local) {
    let mut start = 0;
    while start < filled {
        let tag = batch.tag(start);
        let mut end = start + 1;
        while end < filled && batch.tag(end) == tag {
            end += 1;
        }
        let (ok, failed) = match (tag, sh.raw.as_ref()) {
            (TAG_UDP, _) if sh.udp_gso => sh.udp.send_gso(batch, start, end),
            (TAG_UDP, _) => sh.udp.send_batch(batch, start, end),
            (_, Some(raw)) => raw.send_batch(batch, start, end),
            (_, None) => (0, end - start),
        };
        local.io[Io::WanTx] += ok as u64;
        local.io[Io::IoErrors] += failed as u64;
        start = end;
    }
}

/// One packet (or TCP super-segment, with offloads) read from TUN: classify it, then encrypt
/// it, or each of its segments, into the send batch. Drops are counted; oversized packets are
/// answered with an ICMP error.
fn outbound_one(
    sh: &Shared,
    snap: &Snapshot,
    sg: &SgState,
    hdr: VnetHdr,
    pkt: &mut [u8],
    now: Instant,
    out: &mut Out,
) {
    let gso = hdr.is_tcp_gso();
    if hdr.flags & offload::F_NEEDS_CSUM != 0
        && !gso
        && !offload::finish_checksum(pkt, usize::from(hdr.csum_start), usize::from(hdr.csum_offset))
    {
        out.local.drop(Drop::Malformed);
        return;
    }
    let Ok(flow) = isthmus_wire::flow_key(pkt) else {
        out.local.drop(Drop::Malformed);
        return;
    };
    if link_scoped(&flow) {
        out.local.drop(Drop::LinkScope);
        return;
    }
    let Some((idx, entry)) = snap.spd.lookup(&flow) else {
        out.local.drop(Drop::SpdNoPolicy);
        return;
    };
    let (tunnel, child) = match &entry.action {
        SpdAction::Protect { tunnel, child } => (tunnel, child),
        SpdAction::Discard => {
            out.local.drop(Drop::SpdDiscard);
            return;
        }
        SpdAction::Bypass => {
            out.local.drop(Drop::SpdBypass);
            return;
        }
    };
    let ob = snap.resolved.get(idx).and_then(Option::as_ref);
    // Network ACL and security group of the tunnel (and LAN) before the SA: denied traffic
    // neither leaves nor asks for an SA.
    let att = ob.map_or_else(|| AttachmentId::of(tunnel), |o| o.att);
    if !sh.filter.check(sg, att, SgDir::Outbound, &flow, now, &mut out.local.drops) {
        return;
    }
    let Some(ob) = ob else {
        // Never in clear: no SA, no packet; ask the control plane for one.
        out.local.drop(Drop::NoSa);
        sh.acquire(tunnel, child, flow, now);
        return;
    };
    let layout = if gso {
        match offload::tcp_layout(pkt, &hdr) {
            Some(l) => Some(l),
            None => {
                out.local.drop(Drop::Malformed);
                return;
            }
        }
    } else {
        None
    };
    let mtu = sh.cfg.tunnel_mtu;
    // What the sender should use: the worst-case ESP overhead keeps the advice valid whatever
    // the padding of the next packet.
    let advice = pmtu::inner_mtu(mtu, ob.outer_len + ob.sa.max_overhead(), flow.dst);
    let seg_len = layout.map_or(pkt.len(), |l| (l.payload + l.mss).min(pkt.len()));
    if seg_len + ob.outer_len + ob.sa.overhead(seg_len) > mtu as usize && pmtu::dont_fragment(pkt) {
        if let Some(n) = pmtu::build_too_big(pkt, advice, &mut out.icmp) {
            match sh.tun.write(&out.icmp[..n]) {
                Ok(_) => {
                    out.local.io[Io::IcmpTooBig] += 1;
                    out.local.io[Io::TunTx] += 1;
                }
                Err(_) => out.local.io[Io::IoErrors] += 1,
            }
        }
        out.local.drop(Drop::TooBig);
        ob.sa.count_drop(DropReason::TooBig);
        return;
    }
    if sh.cfg.mss_clamp && flow.proto == 6 && !gso {
        let ip_len = if flow.dst.is_ipv4() { 20 } else { 40 };
        let mss = advice.saturating_sub(ip_len + 20).min(u32::from(u16::MAX)) as u16;
        if isthmus_wire::tcp::clamp_mss(pkt, mss).unwrap_or(false) {
            out.local.io[Io::MssClamped] += 1;
        }
    }
    // The inner packet goes where the SA's ESP header and IV end (RFC 4303 §2).
    let hl = ob.sa.header_len();
    let result = match layout {
        None => {
            let slot = out.slot(sh);
            match slot.get_mut(hl..hl + pkt.len()) {
                Some(dst) => {
                    dst.copy_from_slice(pkt);
                    out.seal(ob, pkt.len(), now)
                }
                None => Err(DropReason::TooBig),
            }
        }
        Some(lay) => (0..lay.count).try_for_each(|i| {
            let slot = out.slot(sh);
            let n =
                offload::segment_tcp(pkt, &lay, i, &mut slot[hl..]).ok_or(DropReason::TooBig)?;
            out.seal(ob, n, now)
        }),
    };
    if let Err(r) = result {
        out.local.drop(r);
        if r == DropReason::Expired {
            sh.acquire(tunnel, child, flow, now);
        }
    }
}

/// Link-local addresses must not be forwarded (RFC 4291 §2.5.6, RFC 3927 §7), nor multicast of
/// interface- or link-local scope (RFC 4291 §2.7) or in 224.0.0.0/24 (RFC 5771 §4): such a packet
/// in the tunnel device is the kernel's own (MLD reports, router solicitations), not traffic to
/// protect, and is dropped under its own counter instead of `spd-no-policy`.
pub fn link_scoped(flow: &isthmus_tables::FlowKey) -> bool {
    use std::net::IpAddr;
    let link_local = |a: &IpAddr| match a {
        // Multicast scope is the low nibble of the second byte (RFC 4291 §2.7).
        IpAddr::V6(a) => {
            a.is_unicast_link_local() || (a.is_multicast() && a.octets()[1] & 0xf <= 2)
        }
        IpAddr::V4(a) => a.is_link_local(),
    };
    let local_v4_mcast = matches!(flow.dst, IpAddr::V4(a) if a.octets()[..3] == [224, 0, 0]);
    link_local(&flow.src) || link_local(&flow.dst) || local_v4_mcast
}

/// WAN to TUN for one socket: receive in batches, split IKE and keepalives off (UDP), decrypt,
/// check selectors, write to TUN.
pub(crate) fn inbound(sh: &Shared, udp: bool) {
    let sock: &WanSocket = match (udp, sh.raw.as_ref()) {
        (true, _) => &sh.udp,
        (false, Some(raw)) => raw,
        (false, None) => return,
    };
    let gro = udp && sh.cfg.udp_offload && sock.enable_gro();
    // A coalesced receive holds up to 64 KiB; fewer, larger buffers then.
    let (cap, size) =
        if gro { (sh.cfg.batch.clamp(1, 16), 65_536) } else { (sh.cfg.batch.max(1), sh.buf_size) };
    let mut rb = RecvBatch::new(cap, size);
    let mut local = Local::default();
    let mut co = sh.tun.offload().then(Coalescer::default);
    // A batch that came back short emptied the socket: wait in poll before the next receive.
    let mut drained = false;
    while !sh.stop.load(Ordering::Relaxed) {
        if drained && !poll_readable(sock.raw_fd(), POLL_MS).unwrap_or(true) {
            continue;
        }
        drained = true;
        let n = match sock.recv_batch(&mut rb) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                // ICMP errors queued on the socket (peer unreachable) surface here; go on.
                tracing::debug!(error = %e, "WAN receive error");
                local.io[Io::IoErrors] += 1;
                local.flush(sh);
                continue;
            }
        };
        drained = n < cap;
        let snap = sh.state.load();
        let sg = sh.sg.load();
        let now = Instant::now();
        let mut ctx = InCtx { sg: &sg, local: &mut local };
        for i in 0..n {
            let (d, from, seg) = rb.get_mut(i);
            for dgram in d.chunks_mut(seg) {
                inbound_one(sh, &snap, dgram, from, udp, now, &mut ctx, co.as_mut());
            }
        }
        if let Some(co) = co.as_mut() {
            co.flush(&mut |h, p| to_tun(sh, h, p, &mut local));
        }
        local.flush(sh);
        sh.filter.flush(&sg, &mut local.drops);
    }
}

/// The inbound worker's per-batch state.
struct InCtx<'a> {
    sg: &'a SgState,
    local: &'a mut Local,
}

#[allow(clippy::too_many_arguments)] // the per-packet state of one worker, kept on its stack
fn inbound_one(
    sh: &Shared,
    snap: &Snapshot,
    d: &mut [u8],
    from: Option<SocketAddr>,
    udp: bool,
    now: Instant,
    ctx: &mut InCtx<'_>,
    co: Option<&mut Coalescer>,
) {
    let local = &mut *ctx.local;
    local.io[Io::WanRx] += 1;
    if udp {
        // RFC 3948 §2.2, §2.3; ESP and runts go on to the ESP path, which counts them.
        match classify_natt(d) {
            Ok(NattPayload::Keepalive) => {
                local.io[Io::Keepalives] += 1;
                return;
            }
            Ok(NattPayload::Ike(payload)) => {
                if let Some(from) = from {
                    local.io[Io::IkeRx] += 1;
                    sh.emit(Event::Ike { from, payload: payload.to_vec() });
                }
                return;
            }
            Ok(NattPayload::Esp(_)) | Err(_) => {}
        }
    }
    let Some(spi) = peek_spi(d) else {
        local.drop(Drop::Malformed);
        return;
    };
    let Some(ib) = snap.inbound.get(&spi) else {
        local.drop(Drop::UnknownSpi);
        return;
    };
    let dec = match ib.sa.decapsulate_in_place(d, now) {
        Ok(dec) => dec,
        Err(r) => {
            local.drop(r);
            return;
        }
    };
    if dec.is_dummy() {
        local.io[Io::Dummies] += 1;
        return;
    }
    let Some(inner) = d.get(dec.offset..dec.offset + dec.len) else {
        local.drop(Drop::Malformed);
        return;
    };
    // RFC 4301 §5.2 step 4: the inner packet must be one this SA may carry.
    match isthmus_wire::flow_key(inner).ok() {
        Some(f) if !ib.admits(&f) => {
            local.drop(Drop::SelectorMismatch);
            ib.sa.count_drop(DropReason::SelectorMismatch);
        }
        // Network ACL and security group of the tunnel (and LAN), inbound.
        Some(f) if !sh.filter.check(ctx.sg, ib.att, SgDir::Inbound, &f, now, &mut local.drops) => {}
        Some(_) => match co {
            Some(co) => co.push(inner, &mut |h, p| to_tun(sh, h, p, local)),
            None => match sh.tun.write(inner) {
                Ok(_) => local.io[Io::TunTx] += 1,
                Err(_) => local.io[Io::IoErrors] += 1,
            },
        },
        None => {
            local.drop(Drop::Malformed);
            ib.sa.count_drop(DropReason::Malformed);
        }
    }
}

/// Writes a (possibly coalesced) packet to the offloading TUN device.
fn to_tun(sh: &Shared, hdr: &VnetHdr, pkt: &[u8], local: &mut Local) {
    match sh.tun.write_vnet(&hdr.to_bytes(), pkt) {
        Ok(_) => local.io[Io::TunTx] += 1,
        Err(_) => local.io[Io::IoErrors] += 1,
    }
}

/// Lifetime checks and inbound SA retirement, a few times a second.
pub(crate) fn housekeeping(sh: &Shared) {
    let tick = Duration::from_millis(50);
    while !sh.stop.load(Ordering::Relaxed) {
        std::thread::sleep(tick);
        let now = Instant::now();
        let mut sad = sh.lock_sad();
        let (events, changed) = sad.housekeeping(now, sh.cfg.rekey_linger);
        if changed {
            sh.publish(&sad);
        }
        drop(sad);
        sh.filter.sweep(now);
        for e in events {
            sh.emit(e);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::link_scoped;
    use isthmus_tables::FlowKey;

    fn key(src: &str, dst: &str) -> FlowKey {
        FlowKey {
            src: src.parse().unwrap(),
            dst: dst.parse().unwrap(),
            proto: 58,
            src_port: 0,
            dst_port: 0,
        }
    }

    #[test]
    fn the_kernels_own_link_scoped_packets_are_recognised() {
        // MLDv2 report (RFC 3810 §5.2.14: to ff02::16) and router solicitation (RFC 4861 §4.1).
        assert!(link_scoped(&key("fe80::1", "ff02::16")));
        assert!(link_scoped(&key("::", "ff02::16")));
        assert!(link_scoped(&key("fe80::1", "ff02::2")));
        assert!(link_scoped(&key("2001:db8::1", "ff01::1")));
        assert!(link_scoped(&key("10.0.0.1", "224.0.0.22")));
        assert!(link_scoped(&key("169.254.1.1", "10.0.0.1")));
        // Routable traffic, including multicast of wider scope, is the SPD's question.
        assert!(!link_scoped(&key("2001:db8::1", "2001:db8:1::1")));
        assert!(!link_scoped(&key("2001:db8::1", "ff05::1:3")));
        assert!(!link_scoped(&key("fd00::1", "fe00::1")));
        assert!(!link_scoped(&key("10.0.0.1", "224.0.1.1")));
        assert!(!link_scoped(&key("10.0.0.1", "10.1.0.1")));
    }
}

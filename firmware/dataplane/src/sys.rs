//! The Linux system calls of the packet path: the TUN device (attached with
//! [`isthmus_net::tun::attach`], the one `TUNSETIFF` path), the UDP 4500 socket, the raw
//! IP-protocol-50 socket, `poll`, and `recvmmsg`/`sendmmsg` batches.
//!
//! Every file descriptor is an [`OwnedFd`], closed on drop. All sockets and the TUN queue are
//! non-blocking; workers wait in [`poll_readable`] with a timeout so they notice a stop request.

use std::io;
use std::mem;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use isthmus_net::tun::ifreq;

/// Converts a `-1` return into the thread's `errno`.
fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 { Err(io::Error::last_os_error()) } else { Ok(r) }
}

fn cvt_size(r: libc::ssize_t) -> io::Result<usize> {
    if r < 0 { Err(io::Error::last_os_error()) } else { Ok(r as usize) }
}

/// One queue of a TUN device in `IFF_TUN | IFF_NO_PI` mode: each read returns one IP packet.
#[derive(Debug)]
pub struct Tun {
    fd: OwnedFd,
    name: String,
    vnet: bool,
    offload: bool,
}

impl Tun {
    /// Opens (creating if needed) the TUN device `name`. `multi_queue` lets several workers each
    /// open their own queue of the same device. With `vnet`, every packet read or written is
    /// prefixed by a `virtio_net_hdr` and TCP segmentation offload is asked for (see
    /// [`crate::offload`]); [`Tun::offload`] says whether the kernel granted it.
    pub fn open(name: &str, multi_queue: bool, vnet: bool) -> io::Result<Tun> {
        let mut flags = libc::IFF_TUN | libc::IFF_NO_PI;
        if multi_queue {
            flags |= libc::IFF_MULTI_QUEUE;
        }
        if vnet {
            flags |= libc::IFF_VNET_HDR;
        }
        let (fd, name) = isthmus_net::tun::attach(name, flags)?;
        let mut tun = Tun { fd, name, vnet, offload: false };
        if vnet {
            let features = libc::TUN_F_CSUM | libc::TUN_F_TSO4 | libc::TUN_F_TSO6;
            // SAFETY: TUNSETOFFLOAD takes the feature bits by value; no memory is passed.
            let r = unsafe {
                libc::ioctl(tun.fd.as_raw_fd(), libc::TUNSETOFFLOAD, features as libc::c_ulong)
            };
            tun.offload = r == 0;
        }
        set_nonblocking(tun.fd.as_raw_fd())?;
        Ok(tun)
    }

    /// The device's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The queue's descriptor (for `poll`).
    pub fn raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Reads one packet; `WouldBlock` when the queue is empty.
    pub fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        // SAFETY: `buf` is valid for writes of `buf.len()` bytes for the duration of the call.
        cvt_size(unsafe { libc::read(self.raw_fd(), buf.as_mut_ptr().cast(), buf.len()) })
    }

    /// True when reads and writes carry a `virtio_net_hdr`.
    pub fn vnet(&self) -> bool {
        self.vnet
    }

    /// True when the kernel accepted TCP segmentation offload (reads may be super-segments).
    pub fn offload(&self) -> bool {
        self.offload
    }

    /// Writes one packet towards the kernel (the LAN side), behind an empty `virtio_net_hdr`
    /// when the device has them.
    pub fn write(&self, pkt: &[u8]) -> io::Result<usize> {
        if self.vnet {
            return self.write_vnet(&[0; crate::offload::VNET_HDR_LEN], pkt);
        }
        // SAFETY: `pkt` is valid for reads of `pkt.len()` bytes for the duration of the call.
        cvt_size(unsafe { libc::write(self.raw_fd(), pkt.as_ptr().cast(), pkt.len()) })
    }

    /// Writes `hdr` and `pkt` as one packet with one `writev`.
    pub fn write_vnet(&self, hdr: &[u8], pkt: &[u8]) -> io::Result<usize> {
        let iov = [
            libc::iovec { iov_base: hdr.as_ptr() as *mut libc::c_void, iov_len: hdr.len() },
            libc::iovec { iov_base: pkt.as_ptr() as *mut libc::c_void, iov_len: pkt.len() },
        ];
        // SAFETY: both iovecs point at live slices for the call; the kernel only reads them.
        cvt_size(unsafe { libc::writev(self.raw_fd(), iov.as_ptr(), 2) })
    }
}

/// Sets the MTU of interface `name` and brings it up (SIOCSIFMTU, SIOCSIFFLAGS).
pub fn set_mtu_and_up(name: &str, mtu: u32) -> io::Result<()> {
    // SAFETY: plain socket(2) call; the result is checked and owned below.
    let raw =
        cvt(unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) })?;
    // SAFETY: `raw` is a fresh descriptor owned by nothing else.
    let sock = unsafe { OwnedFd::from_raw_fd(raw) };
    let mut req = ifreq(name)?;
    req.ifr_ifru.ifru_mtu = i32::try_from(mtu)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "MTU out of range"))?;
    // SAFETY: SIOCSIFMTU reads an `ifreq` that lives across the call.
    cvt(unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFMTU as _, &mut req) })?;
    let mut req = ifreq(name)?;
    // SAFETY: SIOCGIFFLAGS fills the `ifreq` that lives across the call.
    cvt(unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS as _, &mut req) })?;
    // SAFETY: SIOCGIFFLAGS just initialised the `ifru_flags` member of the union.
    let flags = unsafe { req.ifr_ifru.ifru_flags };
    req.ifr_ifru.ifru_flags = flags | libc::IFF_UP as libc::c_short;
    // SAFETY: SIOCSIFFLAGS reads the `ifreq` that lives across the call.
    cvt(unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS as _, &mut req) })?;
    Ok(())
}

/// Sets the nice value of the calling thread (Linux keeps one per thread); errors are ignored
/// (an unprivileged process may not raise its priority).
pub fn set_thread_nice(nice: i32) {
    // SAFETY: gettid has no preconditions.
    let tid = unsafe { libc::gettid() };
    // SAFETY: setpriority on our own thread id; the result is only informative.
    let _ = unsafe { libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, nice) };
}

/// Puts `fd` in non-blocking mode.
pub fn set_nonblocking(fd: RawFd) -> io::Result<()> {
    // SAFETY: F_GETFL/F_SETFL on a descriptor we own; results are checked.
    let fl = cvt(unsafe { libc::fcntl(fd, libc::F_GETFL) })?;
    // SAFETY: as above.
    cvt(unsafe { libc::fcntl(fd, libc::F_SETFL, fl | libc::O_NONBLOCK) })?;
    Ok(())
}

/// Waits up to `timeout_ms` for `fd` to become readable. `Ok(false)` on timeout or signal.
pub fn poll_readable(fd: RawFd, timeout_ms: i32) -> io::Result<bool> {
    let mut p = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
    // SAFETY: `p` is one valid pollfd for the duration of the call.
    let r = unsafe { libc::poll(&mut p, 1, timeout_ms) };
    if r < 0 {
        let e = io::Error::last_os_error();
        return if e.kind() == io::ErrorKind::Interrupted { Ok(false) } else { Err(e) };
    }
    Ok(r > 0)
}

fn setsockopt_int(
    fd: RawFd,
    level: libc::c_int,
    name: libc::c_int,
    v: libc::c_int,
) -> io::Result<()> {
    // SAFETY: `v` is a c_int that outlives the call, and its size is passed.
    cvt(unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&v as *const libc::c_int).cast(),
            mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    })?;
    Ok(())
}

/// A socket address in the kernel's form.
#[derive(Clone, Copy)]
pub struct RawAddr {
    storage: libc::sockaddr_storage,
    len: libc::socklen_t,
}

impl RawAddr {
    /// True when both hold the same address bytes.
    fn same_as(&self, other: &RawAddr) -> bool {
        let n = self.len as usize;
        if n != other.len as usize || n > mem::size_of::<libc::sockaddr_storage>() {
            return false;
        }
        // SAFETY: both storages are at least `n` bytes of initialised memory (zeroed first).
        let (a, b) = unsafe {
            (
                std::slice::from_raw_parts(
                    (&self.storage as *const libc::sockaddr_storage).cast::<u8>(),
                    n,
                ),
                std::slice::from_raw_parts(
                    (&other.storage as *const libc::sockaddr_storage).cast::<u8>(),
                    n,
                ),
            )
        };
        a == b
    }

    /// An empty address for the kernel to fill.
    pub fn empty() -> RawAddr {
        // SAFETY: all-zero bytes are a valid `sockaddr_storage`.
        let storage = unsafe { mem::zeroed() };
        RawAddr { storage, len: mem::size_of::<libc::sockaddr_storage>() as _ }
    }

    /// The kernel form of `addr`.
    pub fn from_socket_addr(addr: SocketAddr) -> RawAddr {
        let mut r = RawAddr::empty();
        match addr {
            SocketAddr::V4(a) => {
                let sin = libc::sockaddr_in {
                    sin_family: libc::AF_INET as libc::sa_family_t,
                    sin_port: a.port().to_be(),
                    sin_addr: libc::in_addr { s_addr: u32::from_ne_bytes(a.ip().octets()) },
                    sin_zero: [0; 8],
                };
                // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in.
                unsafe {
                    std::ptr::write((&mut r.storage as *mut libc::sockaddr_storage).cast(), sin)
                };
                r.len = mem::size_of::<libc::sockaddr_in>() as _;
            }
            SocketAddr::V6(a) => {
                let sin6 = libc::sockaddr_in6 {
                    sin6_family: libc::AF_INET6 as libc::sa_family_t,
                    sin6_port: a.port().to_be(),
                    sin6_flowinfo: a.flowinfo(),
                    sin6_addr: libc::in6_addr { s6_addr: a.ip().octets() },
                    sin6_scope_id: a.scope_id(),
                };
                // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in6.
                unsafe {
                    std::ptr::write((&mut r.storage as *mut libc::sockaddr_storage).cast(), sin6)
                };
                r.len = mem::size_of::<libc::sockaddr_in6>() as _;
            }
        }
        r
    }

    /// Back to a Rust address; `None` for families other than IPv4/IPv6.
    pub fn to_socket_addr(&self) -> Option<SocketAddr> {
        match self.storage.ss_family as libc::c_int {
            libc::AF_INET => {
                // SAFETY: the family says the storage holds a sockaddr_in; storage is aligned.
                let sin: libc::sockaddr_in = unsafe {
                    std::ptr::read((&self.storage as *const libc::sockaddr_storage).cast())
                };
                let ip = Ipv4Addr::from(sin.sin_addr.s_addr.to_ne_bytes());
                Some(SocketAddr::V4(SocketAddrV4::new(ip, u16::from_be(sin.sin_port))))
            }
            libc::AF_INET6 => {
                // SAFETY: the family says the storage holds a sockaddr_in6; storage is aligned.
                let sin6: libc::sockaddr_in6 = unsafe {
                    std::ptr::read((&self.storage as *const libc::sockaddr_storage).cast())
                };
                let ip = Ipv6Addr::from(sin6.sin6_addr.s6_addr);
                Some(SocketAddr::V6(SocketAddrV6::new(
                    ip,
                    u16::from_be(sin6.sin6_port),
                    sin6.sin6_flowinfo,
                    sin6.sin6_scope_id,
                )))
            }
            _ => None,
        }
    }
}

/// Socket buffer size asked for on the WAN sockets.
const SOCKET_BUFFER: libc::c_int = 8 << 20;

/// A datagram socket on the WAN: the UDP 4500 socket or the raw ESP socket.
#[derive(Debug)]
pub struct WanSocket {
    fd: OwnedFd,
    /// Raw IPv4 sockets deliver the IP header in front of the payload.
    strips_ipv4_header: bool,
}

impl WanSocket {
    /// A UDP socket bound to `addr` (ESP-in-UDP and IKE, RFC 3948).
    pub fn udp(addr: SocketAddr) -> io::Result<WanSocket> {
        let family = if addr.is_ipv4() { libc::AF_INET } else { libc::AF_INET6 };
        let s = Self::socket(family, libc::SOCK_DGRAM, libc::IPPROTO_UDP)?;
        setsockopt_int(s.raw_fd(), libc::SOL_SOCKET, libc::SO_REUSEADDR, 1)?;
        let a = RawAddr::from_socket_addr(addr);
        // SAFETY: `a` holds a valid sockaddr of length `a.len` for the call.
        cvt(unsafe {
            libc::bind(s.raw_fd(), (&a.storage as *const libc::sockaddr_storage).cast(), a.len)
        })?;
        Ok(s)
    }

    /// A raw socket for IP protocol 50 (plain ESP, RFC 4303), bound to `local`.
    pub fn raw_esp(local: IpAddr) -> io::Result<WanSocket> {
        let family = if local.is_ipv4() { libc::AF_INET } else { libc::AF_INET6 };
        let mut s = Self::socket(family, libc::SOCK_RAW, libc::IPPROTO_ESP)?;
        s.strips_ipv4_header = local.is_ipv4();
        let a = RawAddr::from_socket_addr(SocketAddr::new(local, 0));
        // SAFETY: `a` holds a valid sockaddr of length `a.len` for the call.
        cvt(unsafe {
            libc::bind(s.raw_fd(), (&a.storage as *const libc::sockaddr_storage).cast(), a.len)
        })?;
        Ok(s)
    }

    fn socket(family: libc::c_int, ty: libc::c_int, proto: libc::c_int) -> io::Result<WanSocket> {
        // SAFETY: plain socket(2); the result is checked and owned below.
        let raw = cvt(unsafe {
            libc::socket(family, ty | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK, proto)
        })?;
        // SAFETY: `raw` is a fresh descriptor owned by nothing else.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let s = WanSocket { fd, strips_ipv4_header: false };
        // The dataplane enforces the tunnel MTU itself (sending ICMP to the LAN sender when DF
        // forbids fragmenting); what it does send may be fragmented by the kernel.
        if family == libc::AF_INET {
            setsockopt_int(
                s.raw_fd(),
                libc::IPPROTO_IP,
                libc::IP_MTU_DISCOVER,
                libc::IP_PMTUDISC_DONT,
            )?;
        } else {
            setsockopt_int(
                s.raw_fd(),
                libc::IPPROTO_IPV6,
                libc::IPV6_MTU_DISCOVER,
                libc::IP_PMTUDISC_DONT,
            )?;
        }
        // Large buffers absorb bursts between worker wake-ups: a coalesced (GRO) receive holds
        // 64 KiB, so the default cap (`net.core.rmem_max`, ~208 KiB) would drop bursts. The
        // FORCE variants (CAP_NET_ADMIN) pass the cap; without the capability, ask normally.
        for (force, plain) in
            [(libc::SO_RCVBUFFORCE, libc::SO_RCVBUF), (libc::SO_SNDBUFFORCE, libc::SO_SNDBUF)]
        {
            if setsockopt_int(s.raw_fd(), libc::SOL_SOCKET, force, SOCKET_BUFFER).is_err() {
                let _ = setsockopt_int(s.raw_fd(), libc::SOL_SOCKET, plain, SOCKET_BUFFER);
            }
        }
        Ok(s)
    }

    /// The descriptor (for `poll`).
    pub fn raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// The bound address.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        let mut a = RawAddr::empty();
        // SAFETY: `a.storage` is writable for `a.len` bytes; the kernel updates `a.len`.
        cvt(unsafe {
            libc::getsockname(
                self.raw_fd(),
                (&mut a.storage as *mut libc::sockaddr_storage).cast(),
                &mut a.len,
            )
        })?;
        a.to_socket_addr().ok_or_else(|| io::Error::other("unexpected address family"))
    }

    /// Sends one datagram to `to` (for the raw socket the port is ignored).
    pub fn send_to(&self, buf: &[u8], to: SocketAddr) -> io::Result<usize> {
        let a = RawAddr::from_socket_addr(to);
        // SAFETY: `buf` and `a` are valid for the duration of the call.
        cvt_size(unsafe {
            libc::sendto(
                self.raw_fd(),
                buf.as_ptr().cast(),
                buf.len(),
                0,
                (&a.storage as *const libc::sockaddr_storage).cast(),
                a.len,
            )
        })
    }

    /// Receives up to `batch.capacity()` datagrams with one `recvmmsg`; returns how many.
    /// For the raw IPv4 socket each datagram's offset skips the IP header.
    pub fn recv_batch(&self, batch: &mut RecvBatch) -> io::Result<usize> {
        let n = batch.bufs.len();
        let mut iov: Vec<libc::iovec> = Vec::with_capacity(n);
        for b in batch.bufs.iter_mut() {
            iov.push(libc::iovec { iov_base: b.as_mut_ptr().cast(), iov_len: b.len() });
        }
        // SAFETY: all-zero is a valid mmsghdr; the pointers are filled in below.
        let mut hdrs: Vec<libc::mmsghdr> = (0..n).map(|_| unsafe { mem::zeroed() }).collect();
        for (i, h) in hdrs.iter_mut().enumerate() {
            batch.addrs[i] = RawAddr::empty();
            h.msg_hdr.msg_name =
                (&mut batch.addrs[i].storage as *mut libc::sockaddr_storage).cast();
            h.msg_hdr.msg_namelen = batch.addrs[i].len;
            h.msg_hdr.msg_iov = &mut iov[i];
            h.msg_hdr.msg_iovlen = 1;
            h.msg_hdr.msg_control = batch.cmsgs[i].as_mut_ptr().cast();
            h.msg_hdr.msg_controllen = mem::size_of::<CmsgBuf>() as _;
        }
        // SAFETY: `hdrs` has `n` entries whose iovecs and names point into `batch` and `iov`,
        // which all outlive the call; MSG_DONTWAIT never blocks.
        let r = unsafe {
            libc::recvmmsg(
                self.raw_fd(),
                hdrs.as_mut_ptr(),
                n as libc::c_uint,
                libc::MSG_DONTWAIT as _,
                std::ptr::null_mut(),
            )
        };
        let got = cvt(r)? as usize;
        for (i, h) in hdrs.iter().enumerate().take(got) {
            batch.addrs[i].len = h.msg_hdr.msg_namelen;
            let len = h.msg_len as usize;
            let start = if self.strips_ipv4_header {
                let ihl = batch.bufs[i].first().map(|b| usize::from(b & 0x0f) * 4).unwrap_or(0);
                ihl.min(len)
            } else {
                0
            };
            batch.spans[i] = (start, len);
            batch.segs[i] = gro_segment_size(&h.msg_hdr).unwrap_or(len - start);
        }
        Ok(got)
    }

    /// Asks the kernel to coalesce received datagrams of one flow (`UDP_GRO`): one receive then
    /// returns many equal-sized ESP datagrams back to back. Returns whether it is on.
    pub fn enable_gro(&self) -> bool {
        setsockopt_int(self.raw_fd(), libc::SOL_UDP, libc::UDP_GRO, 1).is_ok()
    }

    /// Sends datagrams `start..end` of `batch`, gluing runs of equal-sized datagrams to the same
    /// destination into one UDP GSO send (`UDP_SEGMENT`): the kernel segments them late, or not
    /// at all across a veth. Returns how many datagrams were sent and how many failed.
    pub fn send_gso(&self, batch: &SendBatch, start: usize, end: usize) -> (usize, usize) {
        let end = end.min(batch.bufs.len());
        let mut iov: Vec<libc::iovec> = Vec::with_capacity(end.saturating_sub(start));
        for i in start..end {
            iov.push(libc::iovec {
                iov_base: batch.bufs[i].as_ptr() as *mut libc::c_void,
                iov_len: batch.lens[i],
            });
        }
        // Group: same destination, every datagram but the last of a group exactly the size of
        // the first, at most GSO_MAX_SEGMENTS and 64 KiB per group.
        let mut groups: Vec<(usize, usize, usize)> = Vec::new(); // (first, count, segment size)
        let mut i = start;
        while i < end {
            let size = batch.lens[i];
            let mut j = i + 1;
            let mut total = size;
            while j < end
                && j - i < GSO_MAX_SEGMENTS
                && batch.lens[j] <= size
                && total + batch.lens[j] <= GSO_MAX_BYTES
                && batch.addrs[j].same_as(&batch.addrs[i])
            {
                total += batch.lens[j];
                j += 1;
                if batch.lens[j - 1] < size {
                    break;
                }
            }
            groups.push((i, j - i, size));
            i = j;
        }
        let mut cmsgs: Vec<CmsgBuf> = vec![CmsgBuf::default(); groups.len()];
        // SAFETY: all-zero is a valid mmsghdr; the pointers are filled in below.
        let mut hdrs: Vec<libc::mmsghdr> =
            (0..groups.len()).map(|_| unsafe { mem::zeroed() }).collect();
        for (k, ((first, count, size), h)) in groups.iter().zip(hdrs.iter_mut()).enumerate() {
            let a = &batch.addrs[*first];
            h.msg_hdr.msg_name = (&a.storage as *const libc::sockaddr_storage) as *mut libc::c_void;
            h.msg_hdr.msg_namelen = a.len;
            h.msg_hdr.msg_iov = &mut iov[first - start];
            h.msg_hdr.msg_iovlen = *count as _;
            if *count > 1 {
                h.msg_hdr.msg_control = cmsgs[k].as_mut_ptr().cast();
                // SAFETY: CMSG_SPACE is a pure size computation.
                h.msg_hdr.msg_controllen = unsafe { libc::CMSG_SPACE(2) } as _;
                // SAFETY: the control buffer is aligned, zeroed and at least CMSG_SPACE(2)
                // bytes, so the first header and its 2 data bytes lie inside it.
                unsafe {
                    let c = libc::CMSG_FIRSTHDR(&h.msg_hdr);
                    (*c).cmsg_level = libc::SOL_UDP;
                    (*c).cmsg_type = libc::UDP_SEGMENT;
                    (*c).cmsg_len = libc::CMSG_LEN(2) as _;
                    std::ptr::write_unaligned(libc::CMSG_DATA(c).cast::<u16>(), *size as u16);
                }
            }
        }
        let (mut done, mut sent, mut failed) = (0, 0, 0);
        while done < hdrs.len() {
            // SAFETY: `hdrs[done..]` are valid mmsghdrs pointing into `batch`, `iov` and
            // `cmsgs`, which outlive the call; the kernel only reads the buffers.
            let r = unsafe {
                libc::sendmmsg(
                    self.raw_fd(),
                    hdrs[done..].as_mut_ptr(),
                    (hdrs.len() - done) as libc::c_uint,
                    0,
                )
            };
            match cvt(r) {
                Ok(k) => {
                    for g in &groups[done..done + k as usize] {
                        sent += g.1;
                    }
                    done += k as usize;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    let mut p =
                        libc::pollfd { fd: self.raw_fd(), events: libc::POLLOUT, revents: 0 };
                    // SAFETY: one valid pollfd for the call.
                    unsafe { libc::poll(&mut p, 1, 10) };
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    failed += groups[done].1;
                    done += 1;
                }
            }
        }
        (sent, failed)
    }

    /// Sends datagrams `start..end` of `batch` with `sendmmsg` (looping on partial sends and
    /// waiting while the send buffer is full). Returns how many the kernel took and how many
    /// failed.
    pub fn send_batch(&self, batch: &SendBatch, start: usize, end: usize) -> (usize, usize) {
        let end = end.min(batch.bufs.len());
        let count = end.saturating_sub(start);
        let mut iov: Vec<libc::iovec> = Vec::with_capacity(count);
        for i in start..end {
            iov.push(libc::iovec {
                iov_base: batch.bufs[i].as_ptr() as *mut libc::c_void,
                iov_len: batch.lens[i],
            });
        }
        // SAFETY: all-zero is a valid mmsghdr; the pointers are filled in below.
        let mut hdrs: Vec<libc::mmsghdr> = (0..count).map(|_| unsafe { mem::zeroed() }).collect();
        for (k, h) in hdrs.iter_mut().enumerate() {
            let a = &batch.addrs[start + k];
            h.msg_hdr.msg_name = (&a.storage as *const libc::sockaddr_storage) as *mut libc::c_void;
            h.msg_hdr.msg_namelen = a.len;
            h.msg_hdr.msg_iov = &mut iov[k];
            h.msg_hdr.msg_iovlen = 1;
        }
        let (mut done, mut failed) = (0, 0);
        while done < count {
            // SAFETY: `hdrs[done..]` are valid mmsghdrs pointing into `batch` and `iov`, which
            // outlive the call; the kernel only reads the buffers.
            let r = unsafe {
                libc::sendmmsg(
                    self.raw_fd(),
                    hdrs[done..].as_mut_ptr(),
                    (count - done) as libc::c_uint,
                    0,
                )
            };
            match cvt(r) {
                Ok(k) => done += k as usize,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    // The send buffer is full: wait for room rather than drop.
                    let mut p =
                        libc::pollfd { fd: self.raw_fd(), events: libc::POLLOUT, revents: 0 };
                    // SAFETY: one valid pollfd for the call.
                    unsafe { libc::poll(&mut p, 1, 10) };
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                // This datagram failed (e.g. an ICMP error from the peer was queued): skip it.
                Err(_) => {
                    done += 1;
                    failed += 1;
                }
            }
        }
        (done - failed, failed)
    }
}

/// Most datagrams in one UDP GSO send (the kernel's `UDP_MAX_SEGMENTS` is 64 on older kernels).
const GSO_MAX_SEGMENTS: usize = 64;
/// Most payload bytes in one UDP GSO send.
const GSO_MAX_BYTES: usize = 65_000;

/// An aligned control-message buffer, large enough for one `UDP_GRO`/`UDP_SEGMENT` message.
#[derive(Clone, Copy, Default)]
#[repr(C, align(8))]
pub struct CmsgBuf([u64; 8]);

impl CmsgBuf {
    fn as_mut_ptr(&mut self) -> *mut u64 {
        self.0.as_mut_ptr()
    }
}

/// The segment size the kernel reported for a coalesced (`UDP_GRO`) receive.
fn gro_segment_size(m: &libc::msghdr) -> Option<usize> {
    if m.msg_controllen == 0 || m.msg_control.is_null() {
        return None;
    }
    // SAFETY: the kernel filled `msg_control` with `msg_controllen` bytes of well-formed control
    // messages; the CMSG macros stay inside that length.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(m);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_UDP && (*c).cmsg_type == libc::UDP_GRO {
                let v = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast::<libc::c_int>());
                return usize::try_from(v).ok().filter(|&v| v > 0);
            }
            c = libc::CMSG_NXTHDR(m, c);
        }
    }
    None
}

/// Buffers for one `recvmmsg`.
pub struct RecvBatch {
    bufs: Vec<Box<[u8]>>,
    addrs: Vec<RawAddr>,
    spans: Vec<(usize, usize)>,
    cmsgs: Vec<CmsgBuf>,
    segs: Vec<usize>,
}

impl RecvBatch {
    /// `count` buffers of `size` bytes.
    pub fn new(count: usize, size: usize) -> RecvBatch {
        RecvBatch {
            bufs: (0..count).map(|_| vec![0u8; size].into_boxed_slice()).collect(),
            addrs: vec![RawAddr::empty(); count],
            spans: vec![(0, 0); count],
            cmsgs: vec![CmsgBuf::default(); count],
            segs: vec![0; count],
        }
    }

    /// Datagram `i` of the last receive and its sender.
    pub fn get(&self, i: usize) -> (&[u8], Option<SocketAddr>) {
        let (s, e) = self.spans[i];
        (&self.bufs[i][s..e], self.addrs[i].to_socket_addr())
    }

    /// Message `i` of the last receive, writable (for in-place decryption), its sender, and
    /// the size of the datagrams in it (a coalesced receive holds several back to back; the
    /// last may be shorter).
    pub fn get_mut(&mut self, i: usize) -> (&mut [u8], Option<SocketAddr>, usize) {
        let (s, e) = self.spans[i];
        (&mut self.bufs[i][s..e], self.addrs[i].to_socket_addr(), self.segs[i].max(1))
    }
}

/// Datagrams queued for `sendmmsg`, each tagged with the socket it leaves by.
pub struct SendBatch {
    bufs: Vec<Box<[u8]>>,
    lens: Vec<usize>,
    addrs: Vec<RawAddr>,
    tags: Vec<u8>,
}

impl SendBatch {
    /// `count` slots of `size` bytes.
    pub fn new(count: usize, size: usize) -> SendBatch {
        SendBatch {
            bufs: (0..count).map(|_| vec![0u8; size].into_boxed_slice()).collect(),
            lens: vec![0; count],
            addrs: vec![RawAddr::empty(); count],
            tags: vec![0; count],
        }
    }

    /// How many slots there are.
    pub fn capacity(&self) -> usize {
        self.bufs.len()
    }

    /// Slot `i`'s buffer, to write a datagram into.
    pub fn slot(&mut self, i: usize) -> &mut [u8] {
        &mut self.bufs[i]
    }

    /// Marks slot `i` as holding `len` bytes for `to`, leaving by the socket tagged `tag`.
    pub fn set(&mut self, i: usize, len: usize, to: SocketAddr, tag: u8) {
        self.lens[i] = len;
        self.addrs[i] = RawAddr::from_socket_addr(to);
        self.tags[i] = tag;
    }

    /// Slot `i`'s socket tag.
    pub fn tag(&self, i: usize) -> u8 {
        self.tags[i]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_addresses_round_trip() {
        for a in ["192.0.2.1:4500", "[2001:db8::1]:500"] {
            let a: SocketAddr = a.parse().unwrap();
            assert_eq!(RawAddr::from_socket_addr(a).to_socket_addr(), Some(a));
        }
        assert_eq!(RawAddr::empty().to_socket_addr(), None);
    }

    #[test]
    fn udp_gso_send_and_gro_receive_over_loopback() {
        let a = WanSocket::udp("127.0.0.1:0".parse().unwrap()).unwrap();
        let b = WanSocket::udp("127.0.0.1:0".parse().unwrap()).unwrap();
        let gro = b.enable_gro();
        let to = b.local_addr().unwrap();
        let mut sb = SendBatch::new(8, 1500);
        for i in 0..5 {
            let len = if i == 4 { 700 } else { 1400 };
            sb.slot(i)[..len].fill(i as u8);
            sb.set(i, len, to, 0);
        }
        assert_eq!(a.send_gso(&sb, 0, 5), (5, 0));
        let mut rb = RecvBatch::new(4, 65_536);
        let mut seen = Vec::new();
        while seen.len() < 5 {
            assert!(poll_readable(b.raw_fd(), 2000).unwrap(), "datagrams lost");
            let n = b.recv_batch(&mut rb).unwrap();
            for i in 0..n {
                let (d, _, seg) = rb.get_mut(i);
                for chunk in d.chunks(seg) {
                    seen.push((chunk.len(), chunk[0]));
                }
            }
        }
        assert_eq!(seen, vec![(1400, 0), (1400, 1), (1400, 2), (1400, 3), (700, 4)], "gro={gro}");
    }

    #[test]
    fn udp_batches_over_loopback() {
        let a = WanSocket::udp("127.0.0.1:0".parse().unwrap()).unwrap();
        let b = WanSocket::udp("127.0.0.1:0".parse().unwrap()).unwrap();
        let to = b.local_addr().unwrap();
        let mut sb = SendBatch::new(4, 64);
        for i in 0..3 {
            sb.slot(i)[..3].copy_from_slice(&[i as u8; 3]);
            sb.set(i, 3, to, 0);
        }
        assert_eq!(a.send_batch(&sb, 0, 3), (3, 0));
        assert!(poll_readable(b.raw_fd(), 1000).unwrap());
        let mut rb = RecvBatch::new(8, 64);
        let mut got = 0;
        while got < 3 {
            match b.recv_batch(&mut rb) {
                Ok(n) => {
                    for i in 0..n {
                        let (d, from) = rb.get(i);
                        assert_eq!(d, &[(got + i) as u8; 3]);
                        assert_eq!(from, Some(a.local_addr().unwrap()));
                    }
                    got += n;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    poll_readable(b.raw_fd(), 1000).unwrap();
                }
                Err(e) => panic!("{e}"),
            }
        }
    }
}

//! A small synchronous netlink transport shared by the rtnetlink and nftables halves.
//!
//! Requests are pipelined: many messages go out in one `sendmsg` (the kernel processes them in
//! order inside that call; message format in RFC 3549 §2.3 and `netlink(7)`), every one asks
//! for an ACK (`NLM_F_ACK`, with `NETLINK_CAP_ACK` and extended ACK messages), and the
//! ACKs are matched back to their requests by sequence number. That is what lets ten thousand
//! routes go in with a few dozen system calls instead of ten thousand round trips.
//!
//! Message framing (`struct nlmsghdr`, host byte order):
//!
//! ```text
//!  0               4       6       8               12              16
//! +---------------+-------+-------+---------------+---------------+---- payload, 4-byte aligned
//! |    length     | type  | flags |   sequence    |    port id    |
//! +---------------+-------+-------+---------------+---------------+----
//! ```

use netlink_sys::{Socket, SocketAddr};

use crate::Error;

pub(crate) const NLMSG_HDRLEN: usize = 16;
pub(crate) const NLMSG_ERROR: u16 = 2;
pub(crate) const NLMSG_DONE: u16 = 3;

pub(crate) const NLM_F_REQUEST: u16 = 0x1;
pub(crate) const NLM_F_ACK: u16 = 0x4;
pub(crate) const NLM_F_DUMP: u16 = 0x300;
pub(crate) const NLM_F_REPLACE: u16 = 0x100;
pub(crate) const NLM_F_EXCL: u16 = 0x200;
pub(crate) const NLM_F_CREATE: u16 = 0x400;
pub(crate) const NLM_F_APPEND: u16 = 0x800;
/// Set by the kernel on an error message that carries extended-ACK attributes.
const NLM_F_ACK_TLVS: u16 = 0x200;
/// Set on dump messages when the table changed while it was being dumped.
const NLM_F_DUMP_INTR: u16 = 0x10;
/// `NLMSGERR_ATTR_MSG`: the kernel's human-readable reason.
const NLMSGERR_ATTR_MSG: u16 = 1;

/// Requests per `sendmsg`: their ACKs (36 bytes each with `NETLINK_CAP_ACK`) must fit the
/// receive buffer, and one send must stay under the socket's send buffer.
const CHUNK_BYTES: usize = 64 * 1024;
const RECV_BUF: usize = 64 * 1024;
/// How long the kernel may take to answer one read.
const ANSWER_TIMEOUT_MS: libc::c_int = 10_000;

/// Rounds up to netlink's 4-byte alignment.
pub(crate) fn align(n: usize) -> usize {
    (n + 3) & !3
}

/// One request: message type, flags (NLM_F_REQUEST and NLM_F_ACK are added) and payload.
#[derive(Debug, Clone)]
pub(crate) struct Request {
    pub kind: u16,
    pub flags: u16,
    pub payload: Vec<u8>,
}

/// What the kernel said about one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct KernelError {
    /// Positive errno.
    pub errno: i32,
    /// The extended-ACK message, when the kernel gave one.
    pub message: Option<String>,
}

impl std::fmt::Display for KernelError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let os = std::io::Error::from_raw_os_error(self.errno);
        match &self.message {
            Some(m) => write!(f, "{os} ({m})"),
            None => write!(f, "{os}"),
        }
    }
}

/// A bound netlink socket of one protocol.
pub(crate) struct NlSocket {
    sock: Socket,
    seq: u32,
    rx: Vec<u8>,
}

impl std::fmt::Debug for NlSocket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NlSocket").field("seq", &self.seq).finish_non_exhaustive()
    }
}

impl NlSocket {
    /// Opens and binds a socket of `protocol` in the calling thread's network namespace.
    pub(crate) fn open(protocol: isize) -> Result<NlSocket, Error> {
        let io = |what: &'static str| move |e: std::io::Error| Error::Socket(what, e);
        let mut sock = Socket::new(protocol).map_err(io("open netlink socket"))?;
        sock.bind_auto().map_err(io("bind netlink socket"))?;
        sock.connect(&SocketAddr::new(0, 0)).map_err(io("connect netlink socket"))?;
        sock.set_ext_ack(true).map_err(io("enable extended ACKs"))?;
        sock.set_cap_ack(true).map_err(io("cap ACK size"))?;
        // Best effort: kernels before 4.20 lack strict dump checking; filtering is redone here.
        let _ = sock.set_netlink_get_strict_chk(true);
        // Thousands of ACKs may queue before they are read: ask for a big receive buffer, past
        // `net.core.rmem_max` when privileged (SO_RCVBUFFORCE), else as big as allowed.
        if !force_rcvbuf(&sock, 4 << 20) {
            sock.set_rx_buf_sz(1 << 20).map_err(io("size receive buffer"))?;
        }
        Ok(NlSocket { sock, seq: 1, rx: vec![0; RECV_BUF] })
    }

    fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1).max(1);
        self.seq
    }

    fn push(buf: &mut Vec<u8>, kind: u16, flags: u16, seq: u32, payload: &[u8]) {
        let len = NLMSG_HDRLEN + payload.len();
        buf.extend_from_slice(&(len as u32).to_ne_bytes());
        buf.extend_from_slice(&kind.to_ne_bytes());
        buf.extend_from_slice(&flags.to_ne_bytes());
        buf.extend_from_slice(&seq.to_ne_bytes());
        buf.extend_from_slice(&0u32.to_ne_bytes());
        buf.extend_from_slice(payload);
        buf.resize(align(buf.len()), 0);
    }

    fn send_all(&self, buf: &[u8]) -> Result<(), Error> {
        let n = self.sock.send(buf, 0).map_err(|e| Error::Socket("send netlink request", e))?;
        if n != buf.len() {
            return Err(Error::Protocol(format!("short netlink send: {n} of {}", buf.len())));
        }
        Ok(())
    }

    /// Sends every request (pipelined, in order) and returns one result per request.
    pub(crate) fn execute(
        &mut self,
        reqs: &[Request],
    ) -> Result<Vec<Result<(), KernelError>>, Error> {
        let mut results: Vec<Option<Result<(), KernelError>>> = vec![None; reqs.len()];
        let mut i = 0;
        let mut buf = Vec::with_capacity(CHUNK_BYTES + 4096);
        while i < reqs.len() {
            buf.clear();
            let first = i;
            let base = self.seq.wrapping_add(1);
            while i < reqs.len() && (buf.is_empty() || buf.len() < CHUNK_BYTES) {
                let seq = self.next_seq();
                let r = &reqs[i];
                Self::push(&mut buf, r.kind, r.flags | NLM_F_REQUEST | NLM_F_ACK, seq, &r.payload);
                i += 1;
            }
            self.send_all(&buf)?;
            let mut pending = i - first;
            while pending > 0 {
                let n = self.recv()?;
                pending -= take_acks(&self.rx[..n], base, &mut results[first..i]);
            }
        }
        Ok(results.into_iter().map(|r| r.unwrap_or(Ok(()))).collect())
    }

    /// Sends an nfnetlink batch: `begin`, the requests, `end` in one `sendmsg`. Every inner
    /// request asks for an ACK; the kernel applies the batch all or nothing.
    pub(crate) fn execute_batch(
        &mut self,
        begin: &Request,
        reqs: &[Request],
        end: &Request,
    ) -> Result<Vec<Result<(), KernelError>>, Error> {
        let mut buf = Vec::new();
        let s = self.next_seq();
        Self::push(&mut buf, begin.kind, begin.flags | NLM_F_REQUEST, s, &begin.payload);
        let base = self.seq.wrapping_add(1);
        for r in reqs {
            let seq = self.next_seq();
            Self::push(&mut buf, r.kind, r.flags | NLM_F_REQUEST | NLM_F_ACK, seq, &r.payload);
        }
        let s = self.next_seq();
        Self::push(&mut buf, end.kind, end.flags | NLM_F_REQUEST, s, &end.payload);
        self.send_all(&buf)?;
        let mut results: Vec<Option<Result<(), KernelError>>> = vec![None; reqs.len()];
        let mut pending = reqs.len();
        let mut failed = false;
        while pending > 0 {
            // After an error the kernel aborts the batch and may not ACK the rest.
            if failed && !self.readable(200)? {
                break;
            }
            let n = self.recv()?;
            let mut off = 0;
            while let Some((kind, flags, seq, payload, next)) = parse_header(&self.rx[..n], off) {
                off = next;
                if kind != NLMSG_ERROR {
                    continue;
                }
                let idx = seq.wrapping_sub(base) as usize;
                if idx >= reqs.len() {
                    // An error on the batch framing itself.
                    let ack = parse_ack(payload, flags);
                    if let Err(e) = ack {
                        return Err(Error::Protocol(format!("nftables batch refused: {e}")));
                    }
                    continue;
                }
                if results[idx].is_none() {
                    let ack = parse_ack(payload, flags);
                    failed |= ack.is_err();
                    results[idx] = Some(ack);
                    pending -= 1;
                }
            }
        }
        let aborted = KernelError { errno: libc::ECANCELED, message: Some("batch aborted".into()) };
        Ok(results.into_iter().map(|r| r.unwrap_or_else(|| Err(aborted.clone()))).collect())
    }

    /// Sends one message; returns its sequence number.
    fn send_one(&mut self, kind: u16, flags: u16, payload: &[u8]) -> Result<u32, Error> {
        let seq = self.next_seq();
        let mut buf = Vec::with_capacity(NLMSG_HDRLEN + payload.len() + 4);
        Self::push(&mut buf, kind, flags, seq, payload);
        self.send_all(&buf)?;
        Ok(seq)
    }

    /// Sends one request that the kernel answers with one message (no ACK asked), and returns
    /// that message's type and payload, or the kernel's error.
    pub(crate) fn get(
        &mut self,
        kind: u16,
        payload: &[u8],
    ) -> Result<Result<(u16, Vec<u8>), KernelError>, Error> {
        let seq = self.send_one(kind, NLM_F_REQUEST, payload)?;
        loop {
            let n = self.recv()?;
            let mut off = 0;
            while let Some((kind, flags, mseq, payload, next)) = parse_header(&self.rx[..n], off) {
                off = next;
                if mseq != seq {
                    continue;
                }
                return Ok(match kind {
                    NLMSG_ERROR => match parse_ack(payload, flags) {
                        Ok(()) => Err(KernelError { errno: libc::ENODATA, message: None }),
                        Err(e) => Err(e),
                    },
                    _ => Ok((kind, payload.to_vec())),
                });
            }
        }
    }

    /// Runs a dump request and calls `each(type, payload)` for every message of the answer.
    pub(crate) fn dump(
        &mut self,
        what: &'static str,
        kind: u16,
        payload: &[u8],
        mut each: impl FnMut(u16, &[u8]) -> Result<(), Error>,
    ) -> Result<(), Error> {
        let seq = self.send_one(kind, NLM_F_REQUEST | NLM_F_DUMP, payload)?;
        let mut interrupted = false;
        loop {
            let n = self.recv()?;
            if let Some(end) = dump_datagram(&self.rx[..n], what, seq, &mut interrupted, &mut each)
            {
                return end;
            }
        }
    }

    /// Receives one datagram; a kernel that stays silent for [`ANSWER_TIMEOUT_MS`] is an error
    /// rather than a hung daemon.
    fn recv(&mut self) -> Result<usize, Error> {
        if !self.readable(ANSWER_TIMEOUT_MS)? {
            return Err(Error::Protocol(format!(
                "the kernel did not answer within {} s",
                ANSWER_TIMEOUT_MS / 1000
            )));
        }
        loop {
            match self.sock.recv(&mut &mut self.rx[..], 0) {
                Ok(n) => return Ok(n),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(Error::Socket("receive netlink answer", e)),
            }
        }
    }

    /// True when an answer is waiting (waits up to `ms` milliseconds).
    fn readable(&self, ms: libc::c_int) -> Result<bool, Error> {
        use std::os::fd::AsRawFd;
        loop {
            let mut pfd =
                libc::pollfd { fd: self.sock.as_raw_fd(), events: libc::POLLIN, revents: 0 };
            // SAFETY: `pfd` is a valid pollfd for the duration of the call and nfds is 1.
            let r = unsafe { libc::poll(&mut pfd, 1, ms) };
            if r >= 0 {
                return Ok(r > 0);
            }
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::Interrupted {
                return Err(Error::Socket("poll netlink socket", e));
            }
        }
    }
}

fn force_rcvbuf(sock: &Socket, size: libc::c_int) -> bool {
    use std::os::fd::AsRawFd;
    // SAFETY: the fd is an open socket; the option value points at a live c_int whose size is
    // passed alongside.
    let r = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            (&size as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    r == 0
}

/// Reads one datagram of answers to requests numbered `base..base + results.len()`: fills in
/// the result of each request whose ACK (`NLMSG_ERROR`) it holds, ignoring other messages and
/// repeated or foreign sequence numbers. Returns how many results it filled in.
pub(crate) fn take_acks(
    buf: &[u8],
    base: u32,
    results: &mut [Option<Result<(), KernelError>>],
) -> usize {
    let mut filled = 0;
    let mut off = 0;
    while let Some((kind, flags, seq, payload, next)) = parse_header(buf, off) {
        off = next;
        if kind != NLMSG_ERROR {
            continue;
        }
        let Some(slot) = results.get_mut(seq.wrapping_sub(base) as usize) else { continue };
        if slot.is_none() {
            *slot = Some(parse_ack(payload, flags));
            filled += 1;
        }
    }
    filled
}

/// Reads one datagram of the answer to dump request `seq`: calls `each(type, payload)` for its
/// messages, and returns the end of the dump (`NLMSG_DONE`, or the `NLMSG_ERROR` that refuses it)
/// when the datagram holds it, `None` when more is to come. Messages of other requests are
/// skipped; `interrupted` remembers `NLM_F_DUMP_INTR` across datagrams.
pub(crate) fn dump_datagram(
    buf: &[u8],
    what: &'static str,
    seq: u32,
    interrupted: &mut bool,
    each: &mut impl FnMut(u16, &[u8]) -> Result<(), Error>,
) -> Option<Result<(), Error>> {
    let mut off = 0;
    while let Some((kind, flags, mseq, payload, next)) = parse_header(buf, off) {
        off = next;
        if mseq != seq {
            continue;
        }
        *interrupted |= flags & NLM_F_DUMP_INTR != 0;
        match kind {
            NLMSG_DONE if *interrupted => return Some(Err(Error::DumpInterrupted(what))),
            NLMSG_DONE => return Some(Ok(())),
            NLMSG_ERROR => {
                return Some(match parse_ack(payload, flags) {
                    Ok(()) => Ok(()),
                    Err(e) => Err(Error::Dump(what, e.to_string())),
                });
            }
            _ => {
                if let Err(e) = each(kind, payload) {
                    return Some(Err(e));
                }
            }
        }
    }
    None
}

/// Splits the message at `off`: (type, flags, seq, payload, offset of the next message).
/// Returns `None` at the end or on a malformed length (never panics on kernel bytes).
pub(crate) fn parse_header(buf: &[u8], off: usize) -> Option<(u16, u16, u32, &[u8], usize)> {
    let h = buf.get(off..off + NLMSG_HDRLEN)?;
    let len = u32::from_ne_bytes(h[0..4].try_into().ok()?) as usize;
    let kind = u16::from_ne_bytes(h[4..6].try_into().ok()?);
    let flags = u16::from_ne_bytes(h[6..8].try_into().ok()?);
    let seq = u32::from_ne_bytes(h[8..12].try_into().ok()?);
    if len < NLMSG_HDRLEN {
        return None;
    }
    let payload = buf.get(off + NLMSG_HDRLEN..off + len)?;
    Some((kind, flags, seq, payload, off + align(len)))
}

/// Reads an `NLMSG_ERROR` payload: error code, the echoed header (capped), extended-ACK TLVs.
pub(crate) fn parse_ack(payload: &[u8], flags: u16) -> Result<(), KernelError> {
    let Some(code) = payload.get(0..4).and_then(|b| b.try_into().ok()).map(i32::from_ne_bytes)
    else {
        return Err(KernelError { errno: libc::EBADMSG, message: Some("short ACK".into()) });
    };
    if code == 0 {
        return Ok(());
    }
    let mut message = None;
    if flags & NLM_F_ACK_TLVS != 0 {
        // With NETLINK_CAP_ACK the echoed request is only its 16-byte header.
        let tlvs = payload.get(4 + NLMSG_HDRLEN..).unwrap_or(&[]);
        for (t, v) in Attrs::new(tlvs) {
            if t == NLMSGERR_ATTR_MSG {
                let s = v.split(|b| *b == 0).next().unwrap_or(&[]);
                message = Some(String::from_utf8_lossy(s).into_owned());
            }
        }
    }
    Err(KernelError { errno: code.saturating_neg(), message })
}

/// An iterator over netlink attributes (`struct nlattr`: u16 length, u16 type, value, padding).
/// Yields `(type without NLA_F_NESTED/NLA_F_NET_BYTEORDER, value)` and stops at malformed input.
pub(crate) struct Attrs<'a> {
    buf: &'a [u8],
}

impl<'a> Attrs<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Attrs<'a> {
        Attrs { buf }
    }
}

impl<'a> Iterator for Attrs<'a> {
    type Item = (u16, &'a [u8]);

    fn next(&mut self) -> Option<(u16, &'a [u8])> {
        let h = self.buf.get(0..4)?;
        let len = u16::from_ne_bytes([h[0], h[1]]) as usize;
        let kind = u16::from_ne_bytes([h[2], h[3]]) & 0x3fff;
        if len < 4 {
            self.buf = &[];
            return None;
        }
        let Some(value) = self.buf.get(4..len) else {
            self.buf = &[];
            return None;
        };
        self.buf = self.buf.get(align(len)..).unwrap_or(&[]);
        Some((kind, value))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_an_error_ack_with_an_extended_message() {
        // NLMSG_ERROR payload: -EEXIST, echoed header, NLMSGERR_ATTR_MSG "File exists".
        let mut p = Vec::new();
        p.extend_from_slice(&(-libc::EEXIST).to_ne_bytes());
        p.extend_from_slice(&[0u8; NLMSG_HDRLEN]);
        let msg = b"route exists\0";
        p.extend_from_slice(&((4 + msg.len()) as u16).to_ne_bytes());
        p.extend_from_slice(&NLMSGERR_ATTR_MSG.to_ne_bytes());
        p.extend_from_slice(msg);
        let e = parse_ack(&p, NLM_F_ACK_TLVS).unwrap_err();
        assert_eq!(e.errno, libc::EEXIST);
        assert_eq!(e.message.as_deref(), Some("route exists"));
        assert!(e.to_string().contains("File exists"), "{e}");
        assert_eq!(parse_ack(&0i32.to_ne_bytes(), 0), Ok(()));
        assert!(parse_ack(&[1, 2], 0).is_err());
    }

    #[test]
    fn malformed_headers_and_attributes_end_iteration() {
        let mut buf = Vec::new();
        NlSocket::push(&mut buf, 24, 0, 7, &[1, 2, 3]);
        let (kind, _, seq, payload, next) = parse_header(&buf, 0).unwrap();
        assert_eq!((kind, seq, payload, next), (24, 7, &[1u8, 2, 3][..], 20));
        assert!(parse_header(&buf, next).is_none());
        // A length that points past the buffer is refused, not sliced.
        buf[0] = 200;
        assert!(parse_header(&buf, 0).is_none());
        let attrs = [8u8, 0, 1, 0, 9, 9, 9, 9, 50, 0, 2, 0];
        let got: Vec<_> = Attrs::new(&attrs).collect();
        assert_eq!(got, vec![(1, &[9u8, 9, 9, 9][..])]);
    }
}

//! The simulated Internet between the appliances: each appliance's WAN NIC is a QEMU UDP socket
//! netdev (`-netdev socket,udp=…,localaddr=…` on 127.0.0.1) pointed at this relay, which forwards
//! every Ethernet frame to the other side after an optional delay and drops a share of them, and
//! counts what passed.

use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::{Error, Result};

/// Link impairments.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Impairment {
    /// One-way delay added to every frame.
    pub delay: Duration,
    /// Share of frames dropped, 0.0..=1.0.
    pub loss: f64,
}

/// Frame counters of one direction.
#[derive(Debug, Default)]
pub struct Counters {
    /// Frames forwarded.
    pub forwarded: AtomicU64,
    /// Frames dropped by the loss setting.
    pub dropped: AtomicU64,
    /// Bytes forwarded.
    pub bytes: AtomicU64,
}

/// The relay. Dropping it stops its threads.
#[derive(Debug)]
pub struct Wan {
    /// Where site A's QEMU must send (`udp=` of A's netdev).
    pub a_remote: SocketAddr,
    /// Where site B's QEMU must send.
    pub b_remote: SocketAddr,
    /// Site A's QEMU listens here (`localaddr=` of A's netdev).
    pub a_local: SocketAddr,
    /// Site B's QEMU listens here.
    pub b_local: SocketAddr,
    /// Frames from A to B.
    pub a_to_b: Arc<Counters>,
    /// Frames from B to A.
    pub b_to_a: Arc<Counters>,
    stop: Arc<AtomicBool>,
}

fn free_udp() -> Result<SocketAddr> {
    let s =
        UdpSocket::bind("127.0.0.1:0").map_err(|e| Error::io(std::path::Path::new("udp"), e))?;
    s.local_addr().map_err(|e| Error::io(std::path::Path::new("udp"), e))
}

impl Wan {
    /// Binds the relay's two sockets on 127.0.0.1 and starts forwarding.
    pub fn start(imp: Impairment) -> Result<Wan> {
        let bind = |addr: &str| {
            UdpSocket::bind(addr).map_err(|e| Error::io(std::path::Path::new(addr), e))
        };
        let from_a = bind("127.0.0.1:0")?;
        let from_b = bind("127.0.0.1:0")?;
        let (a_local, b_local) = (free_udp()?, free_udp()?);
        let addr =
            |s: &UdpSocket| s.local_addr().map_err(|e| Error::io(std::path::Path::new("udp"), e));
        let wan = Wan {
            a_remote: addr(&from_a)?,
            b_remote: addr(&from_b)?,
            a_local,
            b_local,
            a_to_b: Arc::default(),
            b_to_a: Arc::default(),
            stop: Arc::default(),
        };
        // A's frames arrive on `from_a` and leave from `from_b` (so B's QEMU sees its peer's address).
        let out_b = from_b.try_clone().map_err(|e| Error::io(std::path::Path::new("udp"), e))?;
        let out_a = from_a.try_clone().map_err(|e| Error::io(std::path::Path::new("udp"), e))?;
        spawn_direction(
            from_a,
            out_b,
            b_local,
            imp,
            Arc::clone(&wan.a_to_b),
            Arc::clone(&wan.stop),
            1,
        );
        spawn_direction(
            from_b,
            out_a,
            a_local,
            imp,
            Arc::clone(&wan.b_to_a),
            Arc::clone(&wan.stop),
            2,
        );
        Ok(wan)
    }

    /// The `-netdev` definition for site A's WAN NIC.
    pub fn netdev_a(&self) -> String {
        format!("socket,udp={},localaddr={}", self.a_remote, self.a_local)
    }

    /// The `-netdev` definition for site B's WAN NIC.
    pub fn netdev_b(&self) -> String {
        format!("socket,udp={},localaddr={}", self.b_remote, self.b_local)
    }
}

impl Drop for Wan {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn spawn_direction(
    rx: UdpSocket,
    tx: UdpSocket,
    to: SocketAddr,
    imp: Impairment,
    counters: Arc<Counters>,
    stop: Arc<AtomicBool>,
    seed: u64,
) {
    let _ = rx.set_read_timeout(Some(Duration::from_millis(200)));
    // Delayed frames go through a queue to a sender thread, keeping their order.
    let (queue, pending) = mpsc::channel::<(Instant, Vec<u8>)>();
    let sender_stop = Arc::clone(&stop);
    std::thread::spawn(move || {
        while !sender_stop.load(Ordering::Relaxed) {
            let Ok((due, frame)) = pending.recv_timeout(Duration::from_millis(200)) else {
                continue;
            };
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
            let _ = tx.send_to(&frame, to);
        }
    });
    std::thread::spawn(move || {
        let mut rng = XorShift(0x9E37_79B9_7F4A_7C15 ^ seed);
        let mut buf = vec![0u8; 65536];
        while !stop.load(Ordering::Relaxed) {
            let Ok(n) = rx.recv(&mut buf) else { continue };
            if imp.loss > 0.0 && rng.unit() < imp.loss {
                counters.dropped.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            counters.forwarded.fetch_add(1, Ordering::Relaxed);
            counters.bytes.fetch_add(n as u64, Ordering::Relaxed);
            if queue.send((Instant::now() + imp.delay, buf[..n].to_vec())).is_err() {
                break;
            }
        }
    });
}

/// A small deterministic generator for the loss decision (no cryptographic need).
struct XorShift(u64);

impl XorShift {
    fn unit(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(imp: Impairment) -> (Wan, UdpSocket, UdpSocket) {
        let wan = Wan::start(imp).unwrap();
        // Stand-ins for the two QEMU processes, bound where QEMU would listen.
        let a = UdpSocket::bind(wan.a_local).unwrap();
        let b = UdpSocket::bind(wan.b_local).unwrap();
        b.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        a.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        (wan, a, b)
    }

    #[test]
    fn frames_cross_both_ways_and_are_counted() {
        let (wan, a, b) = pair(Impairment::default());
        a.send_to(b"frame from a", wan.a_remote).unwrap();
        let mut buf = [0u8; 64];
        let (n, from) = b.recv_from(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"frame from a");
        assert_eq!(from, wan.b_remote, "B sees frames coming from its own remote address");
        b.send_to(b"reply", wan.b_remote).unwrap();
        let n = a.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"reply");
        assert_eq!(wan.a_to_b.forwarded.load(Ordering::Relaxed), 1);
        assert_eq!(wan.b_to_a.bytes.load(Ordering::Relaxed), 5);
    }

    #[test]
    fn delay_holds_frames_back() {
        let (wan, a, b) = pair(Impairment { delay: Duration::from_millis(150), loss: 0.0 });
        let t = Instant::now();
        a.send_to(b"x", wan.a_remote).unwrap();
        let mut buf = [0u8; 8];
        b.recv(&mut buf).unwrap();
        assert!(t.elapsed() >= Duration::from_millis(150));
    }

    #[test]
    fn total_loss_drops_everything() {
        let (wan, a, b) = pair(Impairment { delay: Duration::ZERO, loss: 1.0 });
        for _ in 0..5 {
            a.send_to(b"x", wan.a_remote).unwrap();
        }
        b.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
        let mut buf = [0u8; 8];
        assert!(b.recv(&mut buf).is_err());
        assert_eq!(wan.a_to_b.dropped.load(Ordering::Relaxed), 5);
    }
}

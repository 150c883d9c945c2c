//! The IKE sockets: UDP 500 and, unless the dataplane owns it, UDP 4500, bound per local
//! address so that replies leave from the address the peer talks to.
//!
//! On port 4500 (classified by `isthmus_wire::natt`) a datagram that starts with the four-byte non-ESP marker is IKE (RFC 3948 §2.2),
//! a single `0xFF` byte is a NAT-T keepalive (§2.3, ignored), anything else is ESP, which only a
//! dataplane can use: when the driver owns 4500 it counts and drops it.
//!
//! Each socket has a reader thread that forwards datagrams to the driver loop over a channel;
//! the threads stop when the shared stop flag is set (they wake up every 200 ms to look).

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::Sender;
use std::thread::JoinHandle;
use std::time::Duration;

use isthmus_wire::natt::{NON_ESP_MARKER, NattPayload, classify_natt};

use crate::driver::Input;

/// The sockets of one local address.
struct Bound {
    ike: UdpSocket,
    nat_t: Option<UdpSocket>,
}

/// The driver's sockets, by local address.
pub(crate) struct Sockets {
    ike_port: u16,
    nat_t_port: u16,
    own_nat_t: bool,
    bound: HashMap<IpAddr, Bound>,
    tx: Sender<Input>,
    stop: Arc<AtomicBool>,
    readers: Vec<JoinHandle<()>>,
    /// ESP that arrived on a 4500 socket the driver owns (no dataplane to take it).
    pub(crate) esp_dropped: Arc<AtomicU64>,
}

impl Sockets {
    pub(crate) fn new(
        ike_port: u16,
        nat_t_port: u16,
        own_nat_t: bool,
        tx: Sender<Input>,
        stop: Arc<AtomicBool>,
    ) -> Sockets {
        Sockets {
            ike_port,
            nat_t_port,
            own_nat_t,
            bound: HashMap::new(),
            tx,
            stop,
            readers: Vec::new(),
            esp_dropped: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Binds the sockets of `ip` unless already bound.
    pub(crate) fn ensure(&mut self, ip: IpAddr) -> io::Result<()> {
        if self.bound.contains_key(&ip) {
            return Ok(());
        }
        let ike = bind(SocketAddr::new(ip, self.ike_port))?;
        let nat_t =
            if self.own_nat_t { Some(bind(SocketAddr::new(ip, self.nat_t_port))?) } else { None };
        self.spawn_reader(ike.try_clone()?, false)?;
        if let Some(s) = &nat_t {
            self.spawn_reader(s.try_clone()?, true)?;
        }
        self.bound.insert(ip, Bound { ike, nat_t });
        Ok(())
    }

    fn spawn_reader(&mut self, sock: UdpSocket, nat_t: bool) -> io::Result<()> {
        sock.set_read_timeout(Some(Duration::from_millis(200)))?;
        let local = sock.local_addr()?;
        let tx = self.tx.clone();
        let stop = self.stop.clone();
        let esp_dropped = self.esp_dropped.clone();
        let h = std::thread::Builder::new().name(format!("ike-rx-{}", local.port())).spawn(
            move || {
                let mut buf = vec![0u8; 65536];
                while !stop.load(Ordering::Relaxed) {
                    let (n, remote) = match sock.recv_from(&mut buf) {
                        Ok(r) => r,
                        Err(e)
                            if matches!(
                                e.kind(),
                                io::ErrorKind::WouldBlock
                                    | io::ErrorKind::TimedOut
                                    | io::ErrorKind::Interrupted
                            ) =>
                        {
                            continue;
                        }
                        Err(e) => {
                            tracing::warn!(%local, error = %e, "IKE socket receive failed");
                            std::thread::sleep(Duration::from_millis(100));
                            continue;
                        }
                    };
                    let data = &buf[..n];
                    let msg = if nat_t {
                        match classify_natt(data) {
                            Ok(NattPayload::Ike(m)) => m,
                            Ok(NattPayload::Esp(_)) => {
                                esp_dropped.fetch_add(1, Ordering::Relaxed);
                                continue;
                            }
                            // A keepalive, or too short to be anything.
                            Ok(NattPayload::Keepalive) | Err(_) => continue,
                        }
                    } else {
                        data
                    };
                    if tx.send(Input::Datagram { local, remote, data: msg.to_vec() }).is_err() {
                        return;
                    }
                }
            },
        )?;
        self.readers.push(h);
        Ok(())
    }

    /// Sends an IKE message (or keepalive) as the endpoint asked: from port 500, or from 4500
    /// with the marker when `nat_t`.
    pub(crate) fn send(
        &self,
        local: SocketAddr,
        remote: SocketAddr,
        data: &[u8],
        nat_t: bool,
    ) -> io::Result<()> {
        let b = self.bound.get(&local.ip()).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::AddrNotAvailable,
                format!("no IKE socket bound on {local}"),
            )
        })?;
        if local.port() == self.ike_port && !nat_t {
            b.ike.send_to(data, remote)?;
            return Ok(());
        }
        let s = b.nat_t.as_ref().ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::AddrNotAvailable,
                format!("port 4500 of {local} is not ours"),
            )
        })?;
        if nat_t {
            let mut buf = Vec::with_capacity(data.len() + 4);
            buf.extend_from_slice(&NON_ESP_MARKER);
            buf.extend_from_slice(data);
            s.send_to(&buf, remote)?;
        } else {
            s.send_to(data, remote)?;
        }
        Ok(())
    }

    /// Stops and joins the reader threads.
    pub(crate) fn close(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for h in self.readers.drain(..) {
            let _ = h.join();
        }
        self.bound.clear();
    }
}

fn bind(addr: SocketAddr) -> io::Result<UdpSocket> {
    UdpSocket::bind(addr).map_err(|e| io::Error::new(e.kind(), format!("bind {addr}: {e}")))
}

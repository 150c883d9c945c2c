//! The driver loop and its handle.
//!
//! One OS thread owns the [`isthmus_ike::Endpoint`], the [`Dataplane`] and the sockets. Every
//! input (a datagram from a socket reader, a command from the handle, an event from the
//! dataplane) arrives on one channel; the loop feeds it to the endpoint with the current time,
//! runs the endpoint's timers when they are due, sends its transmits, and acts on its events:
//! CHILD SAs into and out of the dataplane (make-before-break on rekey: the successor is
//! installed before the old SA is removed), status updates, events to subscribers, and the
//! tunnel's close action. It then sleeps on the channel until the next input or the endpoint's
//! next timer (RFC 7296 §2.4 retransmissions and liveness checks are endpoint timers).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Read as _;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::AtomicBool;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use isthmus_ike::{
    DownReason, DpdAction, Endpoint, EndpointConfig, Event, StartAction, Transmit, TunnelConfig,
};

use crate::Error;
use crate::dataplane::{ChildInstall, Dataplane, DataplaneEvent};
use crate::io::Sockets;
use crate::ratelimit::{Limits, RateLimit};
use crate::status::{ChildStatus, TunnelEvent, TunnelState, TunnelStatus};

/// The IKE port (RFC 7296 §2).
pub const IKE_PORT: u16 = 500;
/// The NAT-T port (RFC 3948).
pub const NAT_T_PORT: u16 = 4500;

/// What to do when the peer closes the tunnel (deletes the IKE SA).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseAction {
    /// Nothing: wait for the peer, traffic (with start action trap) or the operator.
    None,
    /// Initiate again at once.
    Restart,
}

/// A tunnel as the driver runs it: the IKE configuration plus what the driver does on its own.
#[derive(Debug, Clone)]
pub struct Tunnel {
    /// The IKE configuration (its `start_action` is honoured by the driver).
    pub ike: TunnelConfig,
    /// What to do when the peer deletes the IKE SA.
    pub close_action: CloseAction,
}

impl Tunnel {
    /// A tunnel with close action none.
    pub fn new(ike: TunnelConfig) -> Tunnel {
        Tunnel { ike, close_action: CloseAction::None }
    }
}

/// Driver settings.
#[derive(Debug, Clone)]
pub struct DriverConfig {
    /// The endpoint's settings (retransmission, cookies, keepalives).
    pub endpoint: EndpointConfig,
    /// A tunnel that should be up (start action start, an operator's initiate, DPD or close
    /// action restart) but failed to come up is tried again after this long, then after twice
    /// as long each time, up to [`DriverConfig::retry_max`].
    pub retry_initial: Duration,
    /// The longest wait between two attempts.
    pub retry_max: Duration,
    /// How often a negotiation failure of one source and reason is reported per interval (to
    /// the log and to subscribers); the rest are summarised when the interval ends.
    pub failure_reports: Limits,
}

impl Default for DriverConfig {
    fn default() -> DriverConfig {
        DriverConfig {
            endpoint: EndpointConfig::default(),
            retry_initial: Duration::from_secs(2),
            retry_max: Duration::from_secs(60),
            failure_reports: Limits::default(),
        }
    }
}

/// A tunnel in the driver: its configuration and whether the driver keeps it up.
struct Run {
    cfg: Tunnel,
    /// Bring it back whenever it goes down or fails (until terminated).
    wants_up: bool,
    /// The next attempt, while down.
    retry_at: Option<Instant>,
    /// Wait before the attempt after that.
    backoff: Duration,
}

pub(crate) enum Command {
    Add(Box<Tunnel>),
    Remove(String),
    Initiate(String),
    Terminate(String),
    RekeyChild(String, String),
    RekeyIke(String),
}

/// Everything the loop waits for.
pub(crate) enum Input {
    Datagram { local: SocketAddr, remote: SocketAddr, data: Vec<u8> },
    Command(Command, Sender<Result<(), Error>>),
    Dataplane(DataplaneEvent),
    Stop,
}

#[derive(Default)]
struct Shared {
    status: Mutex<BTreeMap<String, TunnelStatus>>,
    subscribers: Mutex<Vec<Sender<TunnelEvent>>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic elsewhere must not take the status with it.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Hands dataplane events to the driver; cheap to clone, usable from any thread.
#[derive(Clone)]
pub struct DataplaneSender(Sender<Input>);

impl DataplaneSender {
    /// Passes one event to the driver; false once the driver has stopped.
    pub fn send(&self, ev: DataplaneEvent) -> bool {
        self.0.send(Input::Dataplane(ev)).is_ok()
    }
}

impl std::fmt::Debug for DataplaneSender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DataplaneSender")
    }
}

/// What [`Tunnels::close_all`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Closed {
    /// Tunnels removed.
    pub tunnels: usize,
    /// Established IKE SAs among them, each deleted with its peer.
    pub ike_sas: usize,
    /// Distinct peer addresses told.
    pub peers: usize,
    /// Tunnels not removed before the budget ran out (or the driver had stopped).
    pub unfinished: usize,
}

/// The daemon's handle on the running driver. Dropping it stops the driver (its tunnels are
/// not deleted with the peers: call [`Tunnels::terminate`] first for that).
pub struct Tunnels {
    tx: Sender<Input>,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Tunnels {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tunnels").field("tunnels", &lock(&self.shared.status).len()).finish()
    }
}

impl Tunnels {
    /// Starts the driver thread. Sockets are bound (by the driver thread, so in the calling
    /// thread's network namespace) when tunnels are added.
    pub fn start(cfg: DriverConfig, dataplane: Box<dyn Dataplane>) -> Result<Tunnels, Error> {
        let mut seed = [0u8; 32];
        std::fs::File::open("/dev/urandom")
            .and_then(|mut f| f.read_exact(&mut seed))
            .map_err(Error::Random)?;
        let (tx, rx) = mpsc::channel();
        let shared = Arc::new(Shared::default());
        let own_nat_t = !dataplane.owns_nat_t();
        let stop = Arc::new(AtomicBool::new(false));
        let sockets = Sockets::new(IKE_PORT, NAT_T_PORT, own_nat_t, tx.clone(), stop);
        let mut driver = Driver {
            ep: Endpoint::new(cfg.endpoint.clone(), seed),
            retry_initial: cfg.retry_initial,
            retry_max: cfg.retry_max,
            dp: dataplane,
            sockets,
            own_nat_t,
            tunnels: HashMap::new(),
            shared: shared.clone(),
            expiring: HashSet::new(),
            answering: false,
            failures: RateLimit::new(cfg.failure_reports),
        };
        let thread = std::thread::Builder::new()
            .name("ike-driver".into())
            .spawn(move || driver.run(rx))
            .map_err(Error::Io)?;
        Ok(Tunnels { tx, shared, thread: Some(thread) })
    }

    fn command(&self, c: Command) -> Result<(), Error> {
        let (rtx, rrx) = mpsc::channel();
        self.tx.send(Input::Command(c, rtx)).map_err(|_| Error::Stopped)?;
        rrx.recv().map_err(|_| Error::Stopped)?
    }

    /// Adds a tunnel (binding its local address's sockets) and applies its start action.
    pub fn add_tunnel(&self, t: Tunnel) -> Result<(), Error> {
        self.command(Command::Add(Box::new(t)))
    }

    /// Removes a tunnel, deleting its SAs with the peer.
    pub fn remove_tunnel(&self, name: &str) -> Result<(), Error> {
        self.command(Command::Remove(name.to_owned()))
    }

    /// Removes every tunnel as [`Tunnels::remove_tunnel`] does (an established IKE SA is
    /// deleted with its peer: one INFORMATIONAL with Delete, or the IKEv1 Delete, sent once and
    /// not waited for), giving the driver `budget` in all: a stop must not hang on a driver
    /// that does not answer. Tunnels left when the budget runs out are counted, not removed.
    pub fn close_all(&self, budget: Duration) -> Closed {
        let deadline = Instant::now() + budget;
        let mut closed = Closed::default();
        let mut peers = HashSet::new();
        for s in self.status() {
            let (rtx, rrx) = mpsc::channel();
            let sent = self.tx.send(Input::Command(Command::Remove(s.name.clone()), rtx)).is_ok();
            let wait = deadline.saturating_duration_since(Instant::now());
            match sent.then(|| rrx.recv_timeout(wait)) {
                Some(Ok(Ok(()))) => {
                    closed.tunnels += 1;
                    if s.state == TunnelState::Up {
                        closed.ike_sas += 1;
                        peers.insert(s.peer.ip());
                    }
                }
                Some(Ok(Err(e))) => tracing::warn!(tunnel = %s.name, error = %e, "removing"),
                _ => closed.unfinished += 1,
            }
        }
        closed.peers = peers.len();
        closed
    }

    /// Brings a tunnel up (no-op while it is up or connecting).
    pub fn initiate(&self, name: &str) -> Result<(), Error> {
        self.command(Command::Initiate(name.to_owned()))
    }

    /// Deletes a tunnel's IKE SA and CHILD SAs with the peer.
    pub fn terminate(&self, name: &str) -> Result<(), Error> {
        self.command(Command::Terminate(name.to_owned()))
    }

    /// Rekeys the installed CHILD SA `child` of tunnel `name`.
    pub fn rekey_child(&self, name: &str, child: &str) -> Result<(), Error> {
        self.command(Command::RekeyChild(name.to_owned(), child.to_owned()))
    }

    /// Rekeys the IKE SA of tunnel `name`.
    pub fn rekey_ike(&self, name: &str) -> Result<(), Error> {
        self.command(Command::RekeyIke(name.to_owned()))
    }

    /// Every tunnel's status, by name.
    pub fn status(&self) -> Vec<TunnelStatus> {
        lock(&self.shared.status).values().cloned().collect()
    }

    /// One tunnel's status.
    pub fn tunnel(&self, name: &str) -> Option<TunnelStatus> {
        lock(&self.shared.status).get(name).cloned()
    }

    /// A receiver of every event from now on.
    pub fn subscribe(&self) -> Receiver<TunnelEvent> {
        let (tx, rx) = mpsc::channel();
        lock(&self.shared.subscribers).push(tx);
        rx
    }

    /// Where the dataplane sends its events (IKE datagrams on the shared port 4500, acquires,
    /// lifetime expiries).
    pub fn dataplane_events(&self) -> DataplaneSender {
        DataplaneSender(self.tx.clone())
    }

    /// Stops the driver and waits for its thread.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        let _ = self.tx.send(Input::Stop);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Tunnels {
    fn drop(&mut self) {
        self.stop();
    }
}

struct Driver {
    ep: Endpoint,
    retry_initial: Duration,
    retry_max: Duration,
    dp: Box<dyn Dataplane>,
    sockets: Sockets,
    own_nat_t: bool,
    tunnels: HashMap<String, Run>,
    shared: Arc<Shared>,
    /// Inbound SPIs whose rekey the dataplane already asked for (it reports both directions).
    expiring: HashSet<u32>,
    /// The input being handled is a CREATE_CHILD_SA request from the peer.
    answering: bool,
    /// Failure reports by (tunnel, source, reason): unauthenticated IKE_SA_INIT floods must
    /// not fill the log.
    failures: RateLimit<FailureKey>,
}

/// A negotiation failure's tunnel (empty: none matched), source address and reason.
type FailureKey = (String, IpAddr, String);

/// True for a CREATE_CHILD_SA request (RFC 7296 §3.1: exchange type 36 at byte 18, the
/// Response flag 0x20 clear in byte 19); the header is not encrypted.
fn is_create_child_request(ike: &[u8]) -> bool {
    matches!(ike.get(18..20), Some([36, flags]) if flags & 0x20 == 0)
}

impl Driver {
    fn run(&mut self, rx: Receiver<Input>) {
        loop {
            let next = self
                .ep
                .poll_timeout()
                .into_iter()
                .chain(self.next_retry())
                .chain(self.failures.deadline())
                .min();
            let wait = match next {
                Some(t) => t.saturating_duration_since(Instant::now()),
                None => Duration::from_secs(3600),
            };
            match rx.recv_timeout(wait) {
                Ok(Input::Stop) | Err(RecvTimeoutError::Disconnected) => break,
                Ok(input) => self.input(input),
                Err(RecvTimeoutError::Timeout) => {}
            }
            let now = Instant::now();
            if self.ep.poll_timeout().is_some_and(|t| t <= now) {
                self.ep.handle_timeout(now);
            }
            self.retries(now);
            self.drain();
            self.answering = false;
            self.summarise_failures(now);
        }
        self.sockets.close();
    }

    /// Reports what the failure rate limit suppressed once its interval is over.
    fn summarise_failures(&mut self, now: Instant) {
        let window = self.failures.window();
        for s in self.failures.summary(now) {
            let (tunnel, peer, what) = match s.key {
                Some((tunnel, peer, what)) => (tunnel, Some(peer), what),
                None => (String::new(), None, "negotiation failures".to_owned()),
            };
            self.emit(TunnelEvent::Suppressed { tunnel, peer, what, count: s.count, window });
        }
    }

    fn next_retry(&self) -> Option<Instant> {
        self.tunnels.values().filter_map(|r| r.retry_at).min()
    }

    /// Initiates every tunnel whose retry is due and that is still down.
    fn retries(&mut self, now: Instant) {
        let due: Vec<String> = self
            .tunnels
            .iter_mut()
            .filter(|(_, r)| r.retry_at.is_some_and(|t| t <= now))
            .map(|(name, r)| {
                r.retry_at = None;
                name.clone()
            })
            .collect();
        for name in due {
            let down =
                lock(&self.shared.status).get(&name).is_some_and(|s| s.state == TunnelState::Down);
            if down {
                tracing::info!(tunnel = %name, "trying the tunnel again");
                if let Err(e) = self.initiate(&name, now) {
                    tracing::warn!(tunnel = %name, error = %e, "retry failed");
                }
            }
        }
    }

    /// Schedules the next attempt of a tunnel that should be up, with exponential backoff.
    fn schedule_retry(&mut self, name: &str, now: Instant) {
        let max = self.retry_max;
        if let Some(r) = self.tunnels.get_mut(name)
            && r.wants_up
            && r.retry_at.is_none()
        {
            r.retry_at = Some(now + r.backoff);
            r.backoff = (r.backoff * 2).min(max);
        }
    }

    fn input(&mut self, input: Input) {
        let now = Instant::now();
        match input {
            Input::Datagram { local, remote, data } => {
                self.answering = is_create_child_request(&data);
                self.ep.handle_datagram(now, local, remote, &data);
            }
            Input::Command(c, reply) => {
                let r = self.command(c, now);
                let _ = reply.send(r);
            }
            Input::Dataplane(ev) => self.dataplane_event(ev, now),
            Input::Stop => {}
        }
    }

    fn command(&mut self, c: Command, now: Instant) -> Result<(), Error> {
        match c {
            Command::Add(t) => {
                let name = t.ike.name.clone();
                if self.tunnels.contains_key(&name) {
                    return Err(Error::DuplicateTunnel(name));
                }
                self.sockets.ensure(t.ike.local.ip()).map_err(Error::Io)?;
                self.ep.add_tunnel(t.ike.clone()).map_err(|e| Error::Ike(name.clone(), e))?;
                if let Err(why) = self.dp.tunnel_added(&t.ike) {
                    let _ = self.ep.remove_tunnel(&name, now);
                    return Err(Error::Dataplane(name, why));
                }
                lock(&self.shared.status).insert(
                    name.clone(),
                    TunnelStatus {
                        name: name.clone(),
                        state: TunnelState::Down,
                        local: t.ike.local,
                        peer: t.ike.remote,
                        ike_suite: None,
                        ike_version: None,
                        encap: false,
                        up_since: None,
                        ike_spis: None,
                        ike_initiator: false,
                        ike_since: None,
                        ike_rekey_at: None,
                        ike_expire_at: None,
                        children: Vec::new(),
                        ike_sas_established: 0,
                        child_sas_installed: 0,
                        rekeys: 0,
                        last_failure: None,
                        last_down_reason: None,
                    },
                );
                let start = t.ike.start_action == StartAction::Start;
                let run =
                    Run { cfg: *t, wants_up: start, retry_at: None, backoff: self.retry_initial };
                self.tunnels.insert(name.clone(), run);
                if start {
                    self.initiate(&name, now)?;
                }
                Ok(())
            }
            Command::Remove(name) => {
                self.known(&name)?;
                self.ep.remove_tunnel(&name, now).map_err(|e| Error::Ike(name.clone(), e))?;
                // The endpoint's down events still need the tunnel's entry: drain them first.
                self.drain();
                self.tunnels.remove(&name);
                self.dp.tunnel_removed(&name);
                lock(&self.shared.status).remove(&name);
                Ok(())
            }
            Command::Initiate(name) => {
                self.known(&name)?;
                if let Some(r) = self.tunnels.get_mut(&name) {
                    r.wants_up = true;
                    r.backoff = self.retry_initial;
                }
                self.initiate(&name, now)
            }
            Command::Terminate(name) => {
                self.known(&name)?;
                if let Some(r) = self.tunnels.get_mut(&name) {
                    r.wants_up = false;
                    r.retry_at = None;
                }
                self.ep.terminate(&name, now).map_err(|e| Error::Ike(name, e))
            }
            Command::RekeyChild(name, child) => {
                self.known(&name)?;
                let spi = lock(&self.shared.status)
                    .get(&name)
                    .and_then(|s| {
                        s.children.iter().rev().find(|c| c.name == child).map(|c| c.spi_in)
                    })
                    .ok_or_else(|| Error::NoChildSa { tunnel: name.clone(), child })?;
                self.ep.rekey_child(&name, spi, now).map_err(|e| Error::Ike(name, e))
            }
            Command::RekeyIke(name) => {
                self.known(&name)?;
                self.ep.rekey_ike(&name, now).map_err(|e| Error::Ike(name, e))
            }
        }
    }

    fn known(&self, name: &str) -> Result<(), Error> {
        if self.tunnels.contains_key(name) {
            Ok(())
        } else {
            Err(Error::UnknownTunnel(name.to_owned()))
        }
    }

    fn initiate(&mut self, name: &str, now: Instant) -> Result<(), Error> {
        self.ep.initiate(name, now).map_err(|e| Error::Ike(name.to_owned(), e))?;
        if let Some(s) = lock(&self.shared.status).get_mut(name)
            && s.state == TunnelState::Down
        {
            s.state = TunnelState::Connecting;
        }
        Ok(())
    }

    fn dataplane_event(&mut self, ev: DataplaneEvent, now: Instant) {
        match ev {
            DataplaneEvent::Ike { local, remote, data } => {
                self.answering = is_create_child_request(&data);
                self.ep.handle_datagram(now, local, remote, &data);
            }
            DataplaneEvent::Acquire { tunnel, child } => {
                let Some(run) = self.tunnels.get(&tunnel) else {
                    tracing::debug!(%tunnel, "acquire for an unknown tunnel");
                    return;
                };
                // A tunnel that waits for its peer is not started by traffic (its packets are
                // still dropped: the SPD protects them).
                if run.cfg.ike.start_action == StartAction::None && !run.wants_up {
                    tracing::debug!(%tunnel, "acquire ignored: the tunnel waits for its peer");
                    return;
                }
                match self.ep.acquire(&tunnel, &child, now) {
                    Ok(()) => {
                        if let Some(s) = lock(&self.shared.status).get_mut(&tunnel)
                            && s.state == TunnelState::Down
                        {
                            s.state = TunnelState::Connecting;
                        }
                    }
                    Err(e) => tracing::warn!(%tunnel, %child, error = %e, "acquire refused"),
                }
            }
            DataplaneEvent::SoftExpired { spi } | DataplaneEvent::HardExpired { spi } => {
                // The endpoint knows CHILD SAs by inbound SPI; the dataplane may name either.
                let spi_in = lock(&self.shared.status)
                    .values()
                    .flat_map(|s| s.children.iter())
                    .find(|c| c.spi_in == spi || c.spi_out == spi)
                    .map(|c| c.spi_in);
                match spi_in {
                    Some(spi_in) if !self.expiring.insert(spi_in) => {}
                    Some(spi_in) => {
                        if let Err(e) = self.ep.child_soft_expired(spi_in, now) {
                            tracing::warn!(spi = format_args!("{spi:08x}"), error = %e, "rekey on expiry refused");
                        }
                    }
                    None => tracing::debug!(
                        spi = format_args!("{spi:08x}"),
                        "expiry of an SA no longer installed"
                    ),
                }
            }
        }
    }

    /// Sends every transmit and handles every event the endpoint has queued.
    fn drain(&mut self) {
        loop {
            let mut progress = false;
            // Events first: a CHILD SA the peer's CREATE_CHILD_SA request created must be in the
            // dataplane before our response leaves, since the peer may send on it as soon as it
            // has the response (RFC 7296 §2.8). Sent the other way round, a fast peer's first
            // packet arrived to an unknown SPI.
            while let Some(e) = self.ep.poll_event() {
                progress = true;
                self.event(e);
            }
            while let Some(t) = self.ep.poll_transmit() {
                progress = true;
                self.transmit(&t);
            }
            if !progress {
                break;
            }
        }
    }

    /// Copies from the endpoint's snapshot what its events do not carry: the IKE SA's SPIs
    /// and role, and every SA's rekey and expiry times. These change only when an SA comes up
    /// (or a rekey starts, which leaves the last deadline shown, now past, until it is done),
    /// so they are read then, before subscribers hear of it.
    fn sync_sas(&self, tunnel: &str) {
        let Ok(ep) = self.ep.status(tunnel) else { return };
        let mut all = lock(&self.shared.status);
        let Some(s) = all.get_mut(tunnel) else { return };
        if let Some(ike) = ep.ike.filter(|i| i.established && s.state == TunnelState::Up) {
            s.ike_spis = Some((ike.spi_i, ike.spi_r));
            s.ike_initiator = ike.initiator;
            s.ike_rekey_at = ike.rekey_at;
            s.ike_expire_at = ike.expire_at;
        }
        for c in &mut s.children {
            if let Some(e) = ep.children.iter().find(|e| e.spi_in == c.spi_in) {
                c.rekey_at = e.rekey_at;
                c.expire_at = Some(e.expire_at);
            }
        }
    }

    fn transmit(&self, t: &Transmit) {
        let r = if t.local.port() == IKE_PORT && !t.nat_t || self.own_nat_t {
            self.sockets.send(t.local, t.remote, &t.data, t.nat_t)
        } else {
            self.dp.send_nat_t(t.local, t.remote, &t.data, t.nat_t)
        };
        if let Err(e) = r {
            tracing::warn!(local = %t.local, remote = %t.remote, error = %e, "IKE send failed");
        }
    }

    fn emit(&self, ev: TunnelEvent) {
        tracing::info!("{ev}");
        lock(&self.shared.subscribers).retain(|s| s.send(ev.clone()).is_ok());
    }

    fn event(&mut self, e: Event) {
        let now = Instant::now();
        match e {
            Event::IkeSaUp { tunnel, local, peer, suite, encap, rekeyed, version } => {
                if let Some(r) = self.tunnels.get_mut(&tunnel) {
                    r.retry_at = None;
                    r.backoff = self.retry_initial;
                }
                if let Some(s) = lock(&self.shared.status).get_mut(&tunnel) {
                    s.state = TunnelState::Up;
                    s.local = local;
                    s.peer = peer;
                    s.ike_suite = Some(suite.to_string());
                    s.ike_version = Some(version);
                    s.encap = encap;
                    // A rekey keeps the tunnel up: its uptime goes on.
                    if !rekeyed || s.up_since.is_none() {
                        s.up_since = Some(SystemTime::now());
                    }
                    s.ike_since = Some(SystemTime::now());
                    s.ike_sas_established += 1;
                    s.rekeys += u64::from(rekeyed);
                    s.last_failure = None;
                    if !rekeyed {
                        s.last_down_reason = None;
                    }
                }
                self.sync_sas(&tunnel);
                self.emit(TunnelEvent::IkeUp {
                    tunnel,
                    peer,
                    suite: suite.to_string(),
                    encap,
                    rekeyed,
                    version,
                });
            }
            Event::IkeSaDown { tunnel, reason } => {
                // A rekeyed, replaced or collision-losing IKE SA has a successor: the tunnel
                // stays up.
                let successor = matches!(
                    reason,
                    DownReason::Rekeyed | DownReason::Replaced | DownReason::RekeyCollision
                );
                if let Some(s) = lock(&self.shared.status).get_mut(&tunnel)
                    && !successor
                {
                    s.state = TunnelState::Down;
                    s.ike_suite = None;
                    s.ike_version = None;
                    s.up_since = None;
                    s.ike_spis = None;
                    s.ike_since = None;
                    s.ike_rekey_at = None;
                    s.ike_expire_at = None;
                    s.last_down_reason = Some(reason.to_string());
                }
                self.emit(TunnelEvent::IkeDown {
                    tunnel: tunnel.clone(),
                    reason: reason.to_string(),
                    cause: reason.clone(),
                });
                if successor {
                    return;
                }
                let Some(run) = self.tunnels.get_mut(&tunnel) else { return };
                // Whether the tunnel should come back: the close action decides when the peer
                // deleted it, the DPD action when the peer died.
                match reason {
                    DownReason::DeletedByPeer => {
                        run.wants_up = run.cfg.close_action == CloseAction::Restart;
                    }
                    DownReason::DeadPeer => {
                        run.wants_up = run.cfg.ike.dpd.action == DpdAction::Restart;
                    }
                    DownReason::Terminated => run.wants_up = false,
                    _ => {}
                }
                let restart = run.wants_up && reason == DownReason::DeletedByPeer;
                if restart && let Err(e) = self.initiate(&tunnel, now) {
                    tracing::warn!(%tunnel, error = %e, "close action restart failed");
                }
                // If that (or the endpoint's own DPD restart) fails, a retry brings it back.
                self.schedule_retry(&tunnel, now);
            }
            Event::ChildSaUp {
                tunnel,
                child,
                inbound,
                outbound,
                esp,
                local_ts,
                remote_ts,
                encap,
                local,
                peer,
                rekey_of,
            } => {
                let install = ChildInstall {
                    tunnel: &tunnel,
                    child: &child,
                    inbound: &inbound,
                    outbound: &outbound,
                    esp: &esp,
                    local_ts: &local_ts,
                    remote_ts: &remote_ts,
                    encap,
                    local,
                    peer,
                    rekey_of,
                    answered: self.answering,
                };
                if let Err(e) = self.dp.install_child(&install) {
                    self.emit(TunnelEvent::InstallFailed { tunnel, child, error: e.to_string() });
                    return;
                }
                if let Some(s) = lock(&self.shared.status).get_mut(&tunnel) {
                    s.children.push(ChildStatus {
                        name: child.clone(),
                        spi_in: inbound.spi,
                        spi_out: outbound.spi,
                        esp: esp.to_string(),
                        local_ts: local_ts.iter().map(|t| t.to_string()).collect(),
                        remote_ts: remote_ts.iter().map(|t| t.to_string()).collect(),
                        encap,
                        since: SystemTime::now(),
                        // From the endpoint's snapshot, below.
                        rekey_at: None,
                        expire_at: None,
                    });
                    s.child_sas_installed += 1;
                    s.rekeys += u64::from(rekey_of.is_some());
                    s.last_failure = None;
                }
                self.sync_sas(&tunnel);
                self.emit(TunnelEvent::ChildUp {
                    tunnel,
                    child,
                    spi_in: inbound.spi,
                    spi_out: outbound.spi,
                    esp: esp.to_string(),
                    rekey_of,
                });
            }
            Event::ChildSaDown { tunnel, child, spi_in, spi_out, reason } => {
                self.dp.remove_child(&tunnel, &child, spi_in, spi_out, &reason);
                self.expiring.remove(&spi_in);
                if let Some(s) = lock(&self.shared.status).get_mut(&tunnel) {
                    s.children.retain(|c| c.spi_in != spi_in);
                }
                self.emit(TunnelEvent::ChildDown {
                    tunnel,
                    child,
                    spi_in,
                    spi_out,
                    reason: reason.to_string(),
                });
            }
            Event::NegotiationFailed(x) => {
                let mut down = false;
                if let Some(s) = lock(&self.shared.status).get_mut(&x.tunnel) {
                    s.last_failure = Some(x.clone());
                    if s.state == TunnelState::Connecting {
                        s.state = TunnelState::Down;
                    }
                    down = s.state == TunnelState::Down;
                }
                if down {
                    self.schedule_retry(&x.tunnel, now);
                }
                let key =
                    (x.tunnel.clone(), x.peer.ip(), format!("{} failed: {}", x.exchange, x.cause));
                if self.failures.admit(&key, now) {
                    self.emit(TunnelEvent::Failed(x));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 7296 §3.1 header: SPIs (16), next payload, version, exchange type, flags, ...
    fn header(exchange: u8, flags: u8) -> Vec<u8> {
        let mut h = vec![0u8; 28];
        h[17] = 0x20;
        h[18] = exchange;
        h[19] = flags;
        h
    }

    #[test]
    fn rfc7296_section_3_1_create_child_requests_are_recognised() {
        assert!(is_create_child_request(&header(36, 0x08)));
        assert!(is_create_child_request(&header(36, 0x00)));
        assert!(!is_create_child_request(&header(36, 0x20)), "a response");
        assert!(!is_create_child_request(&header(36, 0x28)), "a response");
        assert!(!is_create_child_request(&header(37, 0x08)), "INFORMATIONAL");
        assert!(!is_create_child_request(&[0; 19]), "truncated");
    }

    #[test]
    fn driver_defaults_retry_with_backoff() {
        let c = DriverConfig::default();
        assert!(c.retry_initial < c.retry_max);
        assert_eq!(
            Tunnel::new(isthmus_ike::TunnelConfig::new(
                "t",
                "192.0.2.1:500".parse().unwrap(),
                "192.0.2.2:500".parse().unwrap(),
                isthmus_ike::Psk::new(b"k".to_vec()),
                vec!["10.0.0.0/8".parse().unwrap()],
                vec!["10.1.0.0/16".parse().unwrap()],
            ))
            .close_action,
            CloseAction::None
        );
    }
}

//! The [`Endpoint`]: every IKE SA of this gateway, driven by datagrams, commands and time.
//!
//! The shape follows quinn-proto: the driver feeds inputs (`handle_datagram`, `handle_timeout`,
//! commands such as `initiate`) with the current time, then drains the outputs
//! (`poll_transmit`, `poll_event`) and sleeps until `poll_timeout`. Nothing in here reads a
//! clock, opens a socket or draws OS randomness: randomness comes from a ChaCha20 generator
//! seeded by the driver, so a seed and a sequence of inputs always give the same outputs.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::Instant;

use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;

use crate::config::{EndpointConfig, TunnelConfig};
use crate::error::Error;
use crate::event::{Event, Transmit};

/// A sans-IO IKEv2 endpoint holding many IKE SAs, keyed by their SPIs.
pub struct Endpoint {
    config: EndpointConfig,
    #[allow(dead_code)]
    rng: ChaCha20Rng,
    tunnels: Vec<TunnelConfig>,
    transmits: VecDeque<Transmit>,
    events: VecDeque<Event>,
}

impl Endpoint {
    /// An endpoint with no tunnels. `rng_seed` seeds the CSPRNG used for SPIs, nonces and
    /// key-exchange secrets: the driver passes 32 bytes from the OS (getrandom), tests pass a
    /// constant.
    pub fn new(config: EndpointConfig, rng_seed: [u8; 32]) -> Endpoint {
        Endpoint {
            config,
            rng: ChaCha20Rng::from_seed(rng_seed),
            tunnels: Vec::new(),
            transmits: VecDeque::new(),
            events: VecDeque::new(),
        }
    }

    /// The endpoint-wide settings.
    pub fn config(&self) -> &EndpointConfig {
        &self.config
    }

    /// Adds a tunnel. Nothing is sent until [`Endpoint::initiate`] or [`Endpoint::acquire`],
    /// or until the peer initiates.
    pub fn add_tunnel(&mut self, cfg: TunnelConfig) -> Result<(), Error> {
        cfg.validate()?;
        if self.tunnels.iter().any(|t| t.name == cfg.name) {
            return Err(Error::DuplicateTunnel(cfg.name));
        }
        self.tunnels.push(cfg);
        Ok(())
    }

    /// Removes a tunnel, deleting its SAs (a DELETE is sent to the peer, best effort;
    /// `ChildSaDown`/`IkeSaDown` events follow).
    pub fn remove_tunnel(&mut self, name: &str, now: Instant) -> Result<(), Error> {
        let _ = now;
        let i = self.tunnel_index(name)?;
        self.tunnels.remove(i);
        Ok(())
    }

    /// Starts IKE_SA_INIT for a tunnel unless it already has an IKE SA (established or being
    /// set up).
    pub fn initiate(&mut self, tunnel: &str, now: Instant) -> Result<(), Error> {
        let _ = (self.tunnel_index(tunnel)?, now);
        Ok(())
    }

    /// Deletes the tunnel's IKE SA and its CHILD SAs (INFORMATIONAL with Delete, §1.4.1).
    pub fn terminate(&mut self, tunnel: &str, now: Instant) -> Result<(), Error> {
        let _ = (self.tunnel_index(tunnel)?, now);
        Ok(())
    }

    /// Rekeys the CHILD SA whose inbound SPI is `child_spi` (CREATE_CHILD_SA with REKEY_SA,
    /// §1.3.3), with PFS if its ESP proposals name a group.
    pub fn rekey_child(&mut self, tunnel: &str, child_spi: u32, now: Instant) -> Result<(), Error> {
        let _ = (self.tunnel_index(tunnel)?, child_spi, now);
        Ok(())
    }

    /// Rekeys the tunnel's IKE SA (CREATE_CHILD_SA, §1.3.2).
    pub fn rekey_ike(&mut self, tunnel: &str, now: Instant) -> Result<(), Error> {
        let _ = (self.tunnel_index(tunnel)?, now);
        Ok(())
    }

    /// The dataplane saw traffic for the named CHILD SA of a tunnel that has no SA: bring the
    /// IKE SA up if needed and create that CHILD SA. Repeated calls while it is being set up
    /// are ignored.
    pub fn acquire(&mut self, tunnel: &str, child: &str, now: Instant) -> Result<(), Error> {
        let _ = (self.tunnel_index(tunnel)?, child, now);
        Ok(())
    }

    /// The dataplane reports the soft (byte or packet) lifetime of the CHILD SA with inbound
    /// SPI `spi` expired: rekey it.
    pub fn child_soft_expired(&mut self, spi: u32, now: Instant) -> Result<(), Error> {
        let _ = now;
        Err(Error::UnknownChild(spi))
    }

    /// Feeds one received IKE message (without the non-ESP marker) that arrived on `local`
    /// from `remote`. Garbage is dropped silently (after, where the RFC asks for it, an error
    /// notify); it never panics.
    pub fn handle_datagram(
        &mut self,
        now: Instant,
        local: SocketAddr,
        remote: SocketAddr,
        data: &[u8],
    ) {
        let _ = (now, local, remote, data);
    }

    /// Runs every timer due at or before `now`: retransmissions, liveness checks, rekeys,
    /// expiries, keepalives.
    pub fn handle_timeout(&mut self, now: Instant) {
        let _ = now;
    }

    /// The next datagram to send, if any.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// When [`Endpoint::handle_timeout`] must next be called, if ever.
    pub fn poll_timeout(&self) -> Option<Instant> {
        None
    }

    /// The next event, if any.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    fn tunnel_index(&self, name: &str) -> Result<usize, Error> {
        self.tunnels
            .iter()
            .position(|t| t.name == name)
            .ok_or_else(|| Error::UnknownTunnel(name.to_owned()))
    }
}

//! The driver's [`Dataplane`] on the userspace ESP dataplane (`isthmus-dataplane`).
//!
//! - CHILD SAs become an `isthmus-esp` inbound SA (found by SPI, checked against the negotiated
//!   selectors after decryption, RFC 4301 §5.2) and an outbound SA bound to the tunnel's CHILD
//!   SA name, which the SPD's `Protect` entries point to.
//! - Rekeys are make-before-break: the successor's inbound SA is added while the old inbound SA
//!   is *retired* (it keeps decrypting what the peer sent before switching, until the successor
//!   carries traffic or a grace time passes), and the successor's outbound SA replaces the old
//!   one atomically: at once when we requested the rekey (the peer installed the SA before
//!   answering), but only when the peer deletes the old SA when we answered its request (RFC
//!   7296 §2.8; the peer installs the SA when our answer arrives, as strongSwan does). The old
//!   SA's removal after a rekey therefore leaves its inbound half to the dataplane.
//! - For every configured CHILD SA the SPD gets `Protect` entries for each local × remote
//!   selector pair ([`spd_entries`]) as soon as the tunnel is added, so matching traffic is never
//!   sent in clear and, while no SA exists, raises the acquire that starts an on-traffic tunnel.
//!   [`EspDataplane::sas_only`] leaves the SPD to its owner instead (the daemon compiles it from
//!   the configuration through its `spd` plugin hook, before the tunnels are added).
//! - Port 4500 belongs to the dataplane: IKE after the non-ESP marker comes back as
//!   [`DataplaneEvent::Ike`] through [`forward_events`], and the driver's IKE messages for 4500
//!   leave through [`isthmus_dataplane::Dataplane::send_ike`]; the NAT-T keepalives the endpoint
//!   schedules while NAT is detected in front of this gateway (RFC 3948 §2.3, §4; RFC 7296
//!   §2.23) through [`isthmus_dataplane::Dataplane::send_keepalive`].

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::mpsc::Receiver;
use std::thread::JoinHandle;
use std::time::Instant;

use isthmus_dataplane::{
    Encap, InboundBinding, OutboundBinding, Selector, SpdAction, SpdEntry, SpdTable,
};
use isthmus_esp::{Aead, Backend, CbcCipher, InboundSa, OutboundSa, SaConfig, Transform};
use isthmus_ike::event::ChildKeys;
use isthmus_ike::{DownReason, Encr, EspSuite, Integ, TrafficSelector, TunnelConfig};

use crate::dataplane::{ChildInstall, Dataplane, DataplaneError, DataplaneEvent};
use crate::driver::DataplaneSender;

/// How CHILD SAs are built in the ESP engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EspOptions {
    /// The AEAD implementation.
    pub backend: Backend,
    /// Anti-replay window in packets (RFC 4303 §3.4.3); 0 disables the check.
    pub replay_window: u32,
    /// Data limits per SA (time limits are the IKE layer's rekey timers): the soft ones make the
    /// dataplane ask for a rekey, the hard ones stop the SA.
    pub limits: DataLimits,
}

impl Default for EspOptions {
    fn default() -> EspOptions {
        EspOptions {
            backend: Backend::default(),
            replay_window: 1024,
            limits: DataLimits::default(),
        }
    }
}

/// Byte and packet lifetimes of each CHILD SA (RFC 4301 §4.4.2.1); `None` is unlimited.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DataLimits {
    /// Rekey after this many bytes.
    pub soft_bytes: Option<u64>,
    /// Stop after this many bytes.
    pub hard_bytes: Option<u64>,
    /// Rekey after this many packets.
    pub soft_packets: Option<u64>,
    /// Stop after this many packets.
    pub hard_packets: Option<u64>,
}

/// The userspace ESP dataplane as the driver's [`Dataplane`].
pub struct EspDataplane {
    dp: Arc<isthmus_dataplane::Dataplane>,
    options: EspOptions,
    generation: u64,
    /// Protect entries per tunnel, in configuration order; `None` when the SPD has another
    /// owner ([`EspDataplane::sas_only`]).
    policies: Option<BTreeMap<String, Vec<SpdEntry>>>,
    /// The outbound SA currently installed per (tunnel, child).
    outbound: HashMap<(String, String), Current>,
    /// Outbound SAs of successors not sending yet: one we created answering the peer's rekey
    /// (waits for the peer to delete the old SA), or the second successor of a simultaneous
    /// rekey (RFC 7296 §2.8.1, waits for the loser's deletion). Never used, so installing one
    /// later reuses no nonce.
    standby: HashMap<(String, String), Vec<Held>>,
}

impl std::fmt::Debug for EspDataplane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EspDataplane")
            .field("dataplane", &self.dp)
            .field("spd_generation", &self.generation)
            .finish_non_exhaustive()
    }
}

/// An outbound SA held back.
struct Held {
    spi_out: u32,
    rekey_of: Option<u32>,
    binding: OutboundBinding,
    sa: OutboundSa,
}

/// The installed outbound SA of a CHILD SA.
#[derive(Debug, Clone, Copy)]
struct Current {
    spi_out: u32,
    /// Inbound SPI of the SA it rekeyed.
    rekey_of: Option<u32>,
}

impl EspDataplane {
    /// Drives `dp`, building SAs as `options` say, and publishing the SPD of the tunnels the
    /// driver adds ([`spd_entries`]).
    pub fn new(dp: Arc<isthmus_dataplane::Dataplane>, options: EspOptions) -> Self {
        EspDataplane { policies: Some(BTreeMap::new()), ..Self::sas_only(dp, options) }
    }

    /// Drives `dp` for the CHILD SAs only: the SPD is published by its owner.
    pub fn sas_only(dp: Arc<isthmus_dataplane::Dataplane>, options: EspOptions) -> Self {
        EspDataplane {
            dp,
            options,
            generation: 0,
            policies: None,
            outbound: HashMap::new(),
            standby: HashMap::new(),
        }
    }

    fn publish(&mut self) -> Result<(), DataplaneError> {
        let Some(policies) = &self.policies else { return Ok(()) };
        self.generation += 1;
        let entries = policies.values().flatten().cloned().collect();
        Ok(self.dp.publish_spd(SpdTable::new(self.generation, entries))?)
    }

    fn sa_config(&self, keys: &ChildKeys, esp: &EspSuite) -> Result<SaConfig, DataplaneError> {
        Ok(SaConfig {
            spi: keys.spi,
            transform: transform(esp)?,
            backend: self.options.backend,
            key: keys.material().to_vec(),
            esn: esp.esn,
            replay_window: self.options.replay_window,
            // Time-based rekeys and expiry are the IKE layer's timers.
            lifetime: isthmus_esp::Lifetime {
                soft_bytes: self.options.limits.soft_bytes,
                hard_bytes: self.options.limits.hard_bytes,
                soft_packets: self.options.limits.soft_packets,
                hard_packets: self.options.limits.hard_packets,
                soft_time: None,
                hard_time: None,
            },
        })
    }
}

/// The ESP engine's transform for a negotiated suite: the IKE crate's algorithm names mapped to
/// what the fast path implements.
fn transform(esp: &EspSuite) -> Result<Transform, DataplaneError> {
    let cbc = match esp.encr {
        Encr::Aes128Gcm16 => return Ok(Aead::Aes128Gcm16.into()),
        Encr::Aes256Gcm16 => return Ok(Aead::Aes256Gcm16.into()),
        Encr::ChaCha20Poly1305 => return Ok(Aead::ChaCha20Poly1305.into()),
        Encr::Aes128Cbc => CbcCipher::Aes128,
        Encr::Aes192Cbc => CbcCipher::Aes192,
        Encr::Aes256Cbc => CbcCipher::Aes256,
        Encr::TripleDesCbc => CbcCipher::TripleDes,
    };
    let integ = match esp.integ {
        Some(Integ::HmacSha1_96) => isthmus_esp::Integ::HmacSha1_96,
        Some(Integ::HmacSha256_128) => isthmus_esp::Integ::HmacSha256_128,
        Some(Integ::HmacSha384_192) => isthmus_esp::Integ::HmacSha384_192,
        Some(Integ::HmacSha512_256) => isthmus_esp::Integ::HmacSha512_256,
        // IKE never chooses CBC without integrity (RFC 7296 §3.3.3); refuse rather than guess.
        None => {
            return Err(DataplaneError::UnsupportedSuite(format!(
                "{} without integrity",
                esp.encr.name()
            )));
        }
    };
    Ok(Transform::Cbc(cbc, integ))
}

/// The SPD selectors of every local × remote traffic selector pair (RFC 4301 §4.4.1.1): each
/// address range split into prefixes; a pair whose protocols differ protects nothing.
pub fn selectors(local: &[TrafficSelector], remote: &[TrafficSelector]) -> Vec<Selector> {
    let mut out = Vec::new();
    for l in local {
        for r in remote {
            if l.is_ipv4() != r.is_ipv4() {
                continue;
            }
            let proto = match (l.proto, r.proto) {
                (0, 0) => None,
                (0, p) | (p, 0) => Some(p),
                (a, b) if a == b => Some(a),
                _ => continue,
            };
            for lp in l.prefixes() {
                for rp in r.prefixes() {
                    out.push(Selector {
                        local: lp,
                        remote: rp,
                        proto,
                        local_ports: l.ports,
                        remote_ports: r.ports,
                    });
                }
            }
        }
    }
    out
}

/// The SPD entries that protect `cfg`'s traffic: a `Protect` entry per local × remote selector
/// pair of each CHILD SA (RFC 4301 §4.4.1.1), named `tunnel/child#i`, in configuration order.
pub fn spd_entries(cfg: &TunnelConfig) -> Vec<SpdEntry> {
    let mut entries = Vec::new();
    for (ci, c) in cfg.children.iter().enumerate() {
        for (i, s) in selectors(&c.local_ts, &c.remote_ts).into_iter().enumerate() {
            entries.push(SpdEntry {
                id: format!("{}/{}#{i}", cfg.name, c.name),
                selector: s,
                action: SpdAction::Protect {
                    tunnel: cfg.name.clone(),
                    child: cfg.dataplane_child(ci, i),
                },
            });
        }
    }
    entries
}

impl Dataplane for EspDataplane {
    fn tunnel_added(&mut self, cfg: &TunnelConfig) -> Result<(), DataplaneError> {
        let Some(policies) = &mut self.policies else { return Ok(()) };
        policies.insert(cfg.name.clone(), spd_entries(cfg));
        self.publish()
    }

    fn tunnel_removed(&mut self, tunnel: &str) {
        if self.policies.as_mut().is_some_and(|p| p.remove(tunnel).is_some())
            && let Err(e) = self.publish()
        {
            tracing::warn!(%tunnel, error = %e, "SPD publish after tunnel removal failed");
        }
    }

    fn install_child(&mut self, sa: &ChildInstall<'_>) -> Result<(), DataplaneError> {
        let now = Instant::now();
        let inbound = InboundSa::new(self.sa_config(sa.inbound, sa.esp)?, now)?;
        let outbound = OutboundSa::new(self.sa_config(sa.outbound, sa.esp)?, now)?;
        let binding = InboundBinding {
            tunnel: sa.tunnel.to_owned(),
            child: sa.child.to_owned(),
            selectors: selectors(sa.local_ts, sa.remote_ts),
        };
        let added = match sa.rekey_of {
            Some(old) => match self.dp.rekey_inbound(old, binding.clone(), inbound) {
                Ok(()) => Ok(()),
                // The old SA may be gone already (peer deleted it first): a plain add then.
                Err(_) => {
                    let inbound = InboundSa::new(self.sa_config(sa.inbound, sa.esp)?, now)?;
                    self.dp.add_inbound(binding, inbound)
                }
            },
            None => self.dp.add_inbound(binding, inbound),
        };
        added?;
        let encap =
            if sa.encap { Encap::Udp { peer: sa.peer } } else { Encap::Esp { peer: sa.peer.ip() } };
        let b = OutboundBinding { tunnel: sa.tunnel.to_owned(), child: sa.child.to_owned(), encap };
        let key = (sa.tunnel.to_owned(), sa.child.to_owned());
        let current = self.outbound.get(&key);
        // Keep sending on the old SA while the peer may not have installed this one yet; keep
        // sending on the first successor when both sides rekeyed the same SA; and keep the first
        // of two CHILD SAs that simultaneous initiation created (one of the two IKE SAs is deleted
        // right after, and with it its CHILD SA: switching to the second would leave nothing to
        // send on when that one is the deleted duplicate).
        let hold = current.is_some()
            && (sa.rekey_of.is_none()
                || sa.answered
                || current.is_some_and(|c| c.rekey_of == sa.rekey_of));
        if hold {
            let held =
                Held { spi_out: sa.outbound.spi, rekey_of: sa.rekey_of, binding: b, sa: outbound };
            self.standby.entry(key).or_default().push(held);
            return Ok(());
        }
        if let Err(e) = self.dp.install_outbound(b, outbound) {
            let _ = self.dp.remove_inbound(sa.inbound.spi);
            return Err(e.into());
        }
        self.outbound.insert(key, Current { spi_out: sa.outbound.spi, rekey_of: sa.rekey_of });
        Ok(())
    }

    fn remove_child(
        &mut self,
        tunnel: &str,
        child: &str,
        spi_in: u32,
        spi_out: u32,
        reason: &DownReason,
    ) {
        // After a rekey the dataplane retires the old inbound SA itself (grace time).
        if *reason != DownReason::Rekeyed {
            let _ = self.dp.remove_inbound(spi_in);
        }
        let key = (tunnel.to_owned(), child.to_owned());
        if let Some(held) = self.standby.get_mut(&key)
            && let Some(i) = held.iter().position(|h| h.spi_out == spi_out)
        {
            held.remove(i);
            return;
        }
        // Only if it is still the current outbound SA: a successor may have replaced it.
        if self.outbound.get(&key).is_none_or(|c| c.spi_out != spi_out) {
            return;
        }
        self.outbound.remove(&key);
        // Switch at once to a held successor: this SA's own, else a collision's winner.
        let held = self.standby.get_mut(&key).and_then(|list| {
            let i = list.iter().position(|h| h.rekey_of == Some(spi_in)).unwrap_or(0);
            (i < list.len()).then(|| list.remove(i))
        });
        if let Some(h) = held {
            let (spi, rekey_of) = (h.spi_out, h.rekey_of);
            match self.dp.install_outbound(h.binding, h.sa) {
                Ok(_) => {
                    self.outbound.insert(key, Current { spi_out: spi, rekey_of });
                    return;
                }
                Err(e) => {
                    tracing::warn!(%tunnel, %child, error = %e, "installing the successor SA failed")
                }
            }
        }
        let _ = self.dp.remove_outbound(tunnel, child);
    }

    fn owns_nat_t(&self) -> bool {
        true
    }

    fn send_nat_t(
        &self,
        _local: SocketAddr,
        remote: SocketAddr,
        data: &[u8],
        marker: bool,
    ) -> std::io::Result<()> {
        if !marker {
            // A NAT-T keepalive (RFC 3948 §2.3): the endpoint schedules one every interval only
            // while NAT was detected in front of this gateway (RFC 7296 §2.23), so pass it on.
            return self.dp.send_keepalive(remote).map_err(std::io::Error::other);
        }
        self.dp.send_ike(remote, data).map_err(std::io::Error::other)
    }
}

/// Starts the userspace ESP dataplane and the driver on it, in the calling thread's network
/// namespace, with the dataplane's events forwarded to the driver. Returns the driver's handle
/// and the dataplane (for counters).
pub fn start_with_dataplane(
    driver: crate::DriverConfig,
    dataplane: isthmus_dataplane::Config,
    options: EspOptions,
) -> Result<(crate::Tunnels, Arc<isthmus_dataplane::Dataplane>), crate::Error> {
    let (dp, events) = isthmus_dataplane::Dataplane::start(dataplane)
        .map_err(|e| crate::Error::DataplaneStart(e.into()))?;
    let dp = Arc::new(dp);
    let local = dp.udp_addr();
    let adapter = EspDataplane::new(dp.clone(), options);
    let tunnels = crate::Tunnels::start(driver, Box::new(adapter))?;
    forward_events(events, tunnels.dataplane_events(), local).map_err(crate::Error::Io)?;
    Ok((tunnels, dp))
}

/// Forwards the dataplane's events to the driver until either side stops. `local` is the
/// dataplane's UDP 4500 address (the IKE messages it hands over arrived there).
pub fn forward_events(
    events: Receiver<isthmus_dataplane::Event>,
    to: DataplaneSender,
    local: SocketAddr,
) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new().name("dp-events".into()).spawn(move || {
        for ev in events {
            let ev = match ev {
                isthmus_dataplane::Event::Ike { from, payload } => {
                    DataplaneEvent::Ike { local, remote: from, data: payload }
                }
                isthmus_dataplane::Event::Acquire { tunnel, child, .. } => {
                    DataplaneEvent::Acquire { tunnel, child }
                }
                isthmus_dataplane::Event::SoftExpired { spi, .. } => {
                    DataplaneEvent::SoftExpired { spi }
                }
                isthmus_dataplane::Event::HardExpired { spi, .. } => {
                    DataplaneEvent::HardExpired { spi }
                }
                isthmus_dataplane::Event::InboundRetired { .. } => continue,
            };
            if !to.send(ev) {
                return;
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> TrafficSelector {
        s.parse().unwrap()
    }

    #[test]
    fn rfc4301_selector_pairs_become_spd_selectors() {
        let s = selectors(&[ts("10.41.0.0/16"), ts("fd00::/64")], &[ts("10.42.1.0/24[tcp/443]")]);
        assert_eq!(s.len(), 1, "the IPv6 local selector pairs with no IPv4 remote one");
        assert_eq!(s[0].local.to_string(), "10.41.0.0/16");
        assert_eq!(s[0].remote.to_string(), "10.42.1.0/24");
        assert_eq!(s[0].proto, Some(6));
        assert_eq!(s[0].remote_ports, isthmus_tables::PortRange::single(443));
        assert!(s[0].local_ports.is_any());
        // A range that is not one prefix is split.
        let odd = TrafficSelector { end: "10.0.0.6".parse().unwrap(), ..ts("10.0.0.1/32") };
        assert_eq!(selectors(&[odd], &[ts("0.0.0.0/0")]).len(), 4);
        // Different protocols protect nothing.
        assert!(selectors(&[ts("10.0.0.0/8[udp]")], &[ts("10.0.0.0/8[tcp]")]).is_empty());
    }
}

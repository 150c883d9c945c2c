//! What the operator watches: the event bus, the monitor's time series, health checks,
//! alarms and the log. Observers read a [`Readings`] snapshot the core takes once per tick (or per request);
//! they do not reach back into the core.

pub mod alarms;
pub mod delivery;
pub mod events;
pub mod health;
pub mod log;
pub mod metrics;
pub mod monitor;

use std::collections::HashMap;
use std::sync::Arc;

use isthmus_config::Config;
use isthmus_tunnels::TunnelStatus;

/// What the observers read: the applied configuration, the tunnels' statuses and the
/// dataplane's counters, taken at one moment.
#[derive(Default)]
pub struct Readings {
    /// The applied configuration and its revision.
    pub applied: Option<(u64, Arc<Config>)>,
    /// The IKE driver's status of each tunnel it runs, by name (empty without a driver).
    pub tunnels: HashMap<String, TunnelStatus>,
    /// The dataplane (its tables, and to notice a new one) and its counters (`None` without one).
    pub dataplane: Option<(Arc<isthmus_dataplane::Dataplane>, isthmus_dataplane::Counters)>,
}

impl Readings {
    /// The status of the tunnel named `name`, if the driver runs it.
    pub fn tunnel(&self, name: &str) -> Option<&TunnelStatus> {
        self.tunnels.get(name)
    }

    /// The applied tunnels that are up (an IKE SA and a CHILD SA), as `tunnel list` says.
    pub fn tunnels_up(&self) -> Vec<String> {
        let Some((_, cfg)) = &self.applied else { return vec![] };
        cfg.tunnels
            .iter()
            .filter(|t| {
                monitor::state(self.tunnel(&t.name), Some(t)) == isthmus_api::TunnelState::Up
            })
            .map(|t| t.name.clone())
            .collect()
    }

    /// The dataplane's counters, if there is a dataplane.
    pub fn counters(&self) -> Option<&isthmus_dataplane::Counters> {
        self.dataplane.as_ref().map(|(_, c)| c)
    }
}

//! What the operator watches: the event bus, the monitor's time series, health checks and
//! alarms.

pub mod alarms;
pub mod events;
pub mod health;
pub mod monitor;

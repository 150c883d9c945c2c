//! The appliance's own duties: PID 1 (mounts, modules, the boot hook, supervision) and A/B slot
//! upgrades with their health gate.

pub mod pid1;
pub mod upgrade;

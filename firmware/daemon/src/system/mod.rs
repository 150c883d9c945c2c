//! The appliance's own duties: PID 1 (mounts, modules, the boot hook, supervision) and A/B slot
//! upgrades with their health gate: `uki` reads the image, `slot` the slots on the EFI system
//! partition, `upgrade` stages an image and runs the gate.

pub mod pid1;
pub mod slot;
pub mod uki;
pub mod upgrade;

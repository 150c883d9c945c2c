//! The WebAssembly policy plugin host: loads signed components bound to the `spd`,
//! `security-group` and `alarm` hooks (see `wit/`), runs them contained (deadlines, memory caps),
//! and publishes the tables they compile for the dataplane's native evaluator.
#![forbid(unsafe_code)]

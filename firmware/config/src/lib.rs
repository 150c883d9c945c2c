//! The gateway's configuration: the TOML schema of the object model, whole-document validation
//! with field paths in every error, and the sled-backed store of numbered revisions with commit,
//! commit-confirm and rollback.
#![forbid(unsafe_code)]

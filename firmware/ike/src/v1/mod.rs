//! IKEv1 (RFC 2409) beside IKEv2: the ISAKMP codec so far. It shares the header layout, the
//! bounds-checked reader and the error type with IKEv2's codec.

pub mod codec;
pub mod crypt;
pub mod info;
pub mod keys;
pub mod main_mode;
pub mod proposal;
pub mod quick_mode;
pub mod session;

//! Sans-IO ESP (RFC 4303) in tunnel mode with AES-GCM (RFC 4106) and UDP encapsulation (RFC 3948).
//!
//! Takes packets and time as input and writes into caller buffers; it never opens a socket or
//! reads the clock, so the dataplane owns the IO and tests run in memory.
#![forbid(unsafe_code)]

//! Sans-IO IKEv2 (RFC 7296): message codec, IKE and CHILD SA state machines, key schedule.
//!
//! Bytes and time go in; bytes to send, timers and events come out. The driver in the daemon owns
//! the sockets and the clock.
#![forbid(unsafe_code)]

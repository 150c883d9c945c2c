//! Zero-copy, checked views of the packet headers the gateway handles: IPv4, IPv6, UDP, TCP,
//! ICMP/ICMPv6, ESP (RFC 4303 §2) and the NAT-T non-ESP marker and keepalive (RFC 3948 §2).
//!
//! Every view is built with `new_checked`, which validates lengths once, so that no accessor can
//! panic afterwards on bytes from the network (the smoltcp pattern).
#![forbid(unsafe_code)]

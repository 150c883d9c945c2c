//! The packet path: TUN on the LAN side, ESP (raw IP protocol 50 or UDP 4500) on the WAN side,
//! policy and flow tables in between, on plain OS threads.

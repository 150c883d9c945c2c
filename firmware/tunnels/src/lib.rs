//! The IKE driver: owns the UDP sockets on ports 500 and 4500 (sharing 4500 with the dataplane
//! through the non-ESP marker, RFC 3948 §2.2), the clock, and the tunnels from the configuration;
//! feeds the sans-IO `isthmus-ike` state machines and installs their CHILD SAs into the dataplane.

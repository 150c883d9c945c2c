//! strongSwan (charon with `kernel-libipsec`) as an independent IKEv2/ESP peer inside a network
//! namespace, for interoperability tests.

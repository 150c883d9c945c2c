//! The security policy database (RFC 4301 §4.4.1): an ordered table of selectors, each mapping to
//! protect (through a tunnel's CHILD SA), bypass or discard.

//! What a UDP port 4500 datagram carries (RFC 3948 §2): a NAT-keepalive (a single 0xFF byte,
//! §2.3), an IKE message behind the 4-byte all-zero non-ESP marker (§2.2), or an ESP packet
//! (whose SPI is never zero, §2.1).

use crate::{WireError, need};

/// Bytes of the non-ESP marker.
pub const NON_ESP_MARKER_LEN: usize = 4;

/// The non-ESP marker that precedes IKE on port 4500 (RFC 3948 §2.2): where ESP has its SPI,
/// which is never zero.
pub const NON_ESP_MARKER: [u8; NON_ESP_MARKER_LEN] = [0; NON_ESP_MARKER_LEN];

/// The classified payload of a UDP 4500 datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NattPayload<'a> {
    /// A NAT-keepalive: received ones are ignored (RFC 3948 §2.3).
    Keepalive,
    /// An IKE message (marker removed), for the control plane.
    Ike(&'a [u8]),
    /// An ESP packet starting at the SPI.
    Esp(&'a [u8]),
}

/// The keepalive a sender transmits (RFC 3948 §2.3).
pub const KEEPALIVE: [u8; 1] = [0xff];

/// Classifies the payload of a UDP datagram to or from port 4500.
pub fn classify_natt(payload: &[u8]) -> Result<NattPayload<'_>, WireError> {
    if payload == KEEPALIVE {
        return Ok(NattPayload::Keepalive);
    }
    need("UDP-encapsulated ESP or IKE", payload, NON_ESP_MARKER_LEN)?;
    if payload[..NON_ESP_MARKER_LEN] == NON_ESP_MARKER {
        return Ok(NattPayload::Ike(&payload[NON_ESP_MARKER_LEN..]));
    }
    need("UDP-encapsulated ESP header", payload, 8)?;
    Ok(NattPayload::Esp(payload))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3948_2_2_and_2_3_classification() {
        assert_eq!(classify_natt(&[0xff]), Ok(NattPayload::Keepalive));
        assert_eq!(classify_natt(&[0, 0, 0, 0, 1, 2]), Ok(NattPayload::Ike(&[1, 2])));
        let esp = [0, 0, 1, 0, 0, 0, 0, 1, 9];
        assert_eq!(classify_natt(&esp), Ok(NattPayload::Esp(&esp)));
        assert!(classify_natt(&[]).is_err());
        assert!(classify_natt(&[0xfe]).is_err());
        assert!(classify_natt(&[0, 0, 1, 0, 0]).is_err());
        assert!(classify_natt(&[1, 2, 3]).is_err());
    }
}

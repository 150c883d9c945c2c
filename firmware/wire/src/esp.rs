//! The ESP header as it appears on the wire (RFC 4303 §2): SPI and sequence number, then the
//! payload (IV, ciphertext, ICV) that only the SA can interpret.

use crate::{WireError, be32, need};

/// Bytes of SPI and sequence number.
pub const HEADER_LEN: usize = 8;

/// A checked view of an ESP packet starting at the SPI.
#[derive(Debug, Clone, Copy)]
pub struct EspPacket<T> {
    buf: T,
}

impl<T: AsRef<[u8]>> EspPacket<T> {
    /// At least SPI and sequence number; SPI 0 is refused (it marks IKE behind the non-ESP
    /// marker, RFC 3948 §2.2, and is reserved, RFC 4303 §2.1).
    pub fn new_checked(buf: T) -> Result<EspPacket<T>, WireError> {
        need("ESP header", buf.as_ref(), HEADER_LEN)?;
        if be32(buf.as_ref(), 0) == 0 {
            return Err(WireError::BadLength("ESP SPI (zero)"));
        }
        Ok(EspPacket { buf })
    }

    /// The SPI.
    pub fn spi(&self) -> u32 {
        be32(self.buf.as_ref(), 0)
    }

    /// The low 32 bits of the sequence number.
    pub fn seq(&self) -> u32 {
        be32(self.buf.as_ref(), 4)
    }

    /// What follows the header.
    pub fn payload(&self) -> &[u8] {
        &self.buf.as_ref()[HEADER_LEN..]
    }

    /// The whole packet.
    pub fn as_bytes(&self) -> &[u8] {
        self.buf.as_ref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc4303_2_header_fields() {
        let b = [0, 0, 0x10, 0x01, 0, 0, 0, 9, 0xaa];
        let e = EspPacket::new_checked(&b[..]).unwrap();
        assert_eq!((e.spi(), e.seq(), e.payload()), (0x1001, 9, &[0xaa][..]));
        assert!(EspPacket::new_checked(&b[..7]).is_err());
        assert!(EspPacket::new_checked(&[0u8; 12][..]).is_err());
    }
}

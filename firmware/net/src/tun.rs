//! Persistent TUN devices (`Documentation/networking/tuntap.rst`).
//!
//! The reconciler creates the device by name and marks it persistent, so that it exists (and
//! routes can point at it) before the dataplane opens it, and survives the dataplane restarting.
//! The flags are `IFF_TUN | IFF_NO_PI`, plus `IFF_MULTI_QUEUE` when asked: a process attaching
//! later with `TUNSETIFF` must repeat the same `IFF_MULTI_QUEUE` choice (the kernel answers
//! `EINVAL` otherwise); `IFF_NO_PI` and `IFF_VNET_HDR` are per-attachment choices.
//!
//! The device is created in the network namespace of the calling thread.

use std::fs::OpenOptions;
use std::os::fd::AsRawFd;

use crate::Error;

const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const TUNSETPERSIST: libc::c_ulong = 0x4004_54cb;
const IFF_TUN: libc::c_short = 0x0001;
const IFF_NO_PI: libc::c_short = 0x1000;
const IFF_MULTI_QUEUE: libc::c_short = 0x0100;

/// `struct ifreq` as TUNSETIFF reads it: the name and the flags member of the union.
#[repr(C)]
struct IfReq {
    name: [libc::c_char; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

/// Creates (or attaches to and keeps) the persistent TUN device `name`.
pub fn create_persistent_tun(name: &str, multi_queue: bool) -> Result<(), Error> {
    crate::state::check_ifname(name)?;
    let fail = |what: &'static str, e: std::io::Error| Error::Tun(name.to_owned(), what, e);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")
        .map_err(|e| fail("open /dev/net/tun", e))?;
    let mut req = IfReq { name: [0; libc::IFNAMSIZ], flags: IFF_TUN | IFF_NO_PI, _pad: [0; 22] };
    if multi_queue {
        req.flags |= IFF_MULTI_QUEUE;
    }
    for (d, s) in req.name.iter_mut().zip(name.bytes()) {
        *d = s as libc::c_char;
    }
    // SAFETY: TUNSETIFF reads and writes a `struct ifreq`; `req` is a live, correctly laid out
    // (40-byte, repr(C)) ifreq with a NUL-terminated name (at most 15 bytes, checked above).
    let r = unsafe { libc::ioctl(file.as_raw_fd(), TUNSETIFF as _, &mut req as *mut IfReq) };
    if r < 0 {
        return Err(fail("TUNSETIFF", std::io::Error::last_os_error()));
    }
    // SAFETY: TUNSETPERSIST takes an integer argument by value; the fd is open.
    let r = unsafe { libc::ioctl(file.as_raw_fd(), TUNSETPERSIST as _, 1 as libc::c_ulong) };
    if r < 0 {
        return Err(fail("TUNSETPERSIST", std::io::Error::last_os_error()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ifreq_has_the_kernel_layout() {
        assert_eq!(std::mem::size_of::<IfReq>(), 40);
        assert_eq!(std::mem::offset_of!(IfReq, flags), 16);
    }
}

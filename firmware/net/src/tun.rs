//! Persistent TUN devices (`Documentation/networking/tuntap.rst`).
//!
//! The reconciler creates the device by name and marks it persistent, so that it exists (and
//! routes can point at it) before the dataplane opens it, and survives the dataplane restarting.
//! The flags are `IFF_TUN | IFF_NO_PI`, plus `IFF_MULTI_QUEUE` when asked: a process attaching
//! later with `TUNSETIFF` must repeat the same `IFF_MULTI_QUEUE` choice (the kernel answers
//! `EINVAL` otherwise); `IFF_NO_PI` and `IFF_VNET_HDR` are per-attachment choices.
//!
//! The device is created in the network namespace of the calling thread.
//!
//! # A tunnel device sends nothing of its own
//!
//! Everything the dataplane reads from the device must be traffic to protect. A Linux interface
//! with IPv6 enabled talks on its own: a router joins the all-routers group ff02::2 and reports
//! it with MLDv2 Listener Reports (RFC 3810 §6.1, to ff02::16, from the random link-local
//! address a TUN device gets), a host sends Router Solicitations (RFC 4861 §6.3.7). The
//! dataplane finds no SPD entry for such packets and counts them as `spd-no-policy`, drops no
//! operator can explain. So while the new device is still down, its IPv6 settings are made
//! quiet: MLDv1 (whose Done message is sent only by a node that has reported, RFC 2710 §4, so
//! leaving the group while down says nothing), host behaviour on this interface (no ff02::2
//! membership; `forwarding` per interface only selects host or router behaviour, packets are
//! forwarded by `net.ipv6.conf.all.forwarding`), no Router Advertisements accepted or
//! solicited, and no link-local address generated (`addr_gen_mode` 1: without one no Router
//! Solicitation or Neighbour Discovery can be sent). IPv6 stays enabled: inner IPv6 traffic is
//! routed into and out of the device as before.
//!
//! An MTU below 1280 removes IPv6 from the device; raising it again recreates it with the
//! namespace's defaults while the device is up. The configuration refuses such an MTU when IPv6
//! goes into a tunnel; an IPv4-only gateway that goes below and back gets a few MLD packets from
//! the device, which the dataplane drops as `link-scope`.

use std::ffi::CStr;
use std::fs::OpenOptions;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};

use crate::Error;

/// An `ifreq` naming `name`, everything else zero; refuses names the kernel would truncate.
/// The one place an interface name goes into an `ifreq` (TUNSETIFF here, SIOCSIFMTU and
/// friends in the dataplane).
pub fn ifreq(name: &str) -> io::Result<libc::ifreq> {
    if name.is_empty() || name.len() >= libc::IFNAMSIZ || name.as_bytes().contains(&0) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("interface name `{name}` must be 1 to 15 bytes without NUL"),
        ));
    }
    // SAFETY: `ifreq` is a plain C struct/union for which all-zero bytes are a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in req.ifr_name.iter_mut().zip(name.as_bytes()) {
        *d = *s as libc::c_char;
    }
    Ok(req)
}

/// How long [`attach`] waits for a busy single-queue device to be released.
pub const BUSY_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// Opens a queue of the TUN device `name` (`TUNSETIFF` with `flags`, e.g. `IFF_TUN |
/// IFF_NO_PI`), creating the device if it is missing; returns the queue (blocking,
/// close-on-exec) and the device's name as the kernel reports it.
///
/// A single-queue device still attached to a descriptor answers `EBUSY`. A descriptor of a
/// dataplane that just stopped can outlive it for a moment: a process forked elsewhere in this
/// program holds a copy until its `exec` closes it. So `EBUSY` is retried for up to
/// [`BUSY_WAIT`] before it is returned.
pub fn attach(name: &str, flags: libc::c_int) -> io::Result<(OwnedFd, String)> {
    let mut req = ifreq(name)?;
    req.ifr_ifru.ifru_flags = flags as libc::c_short;
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")
        .map_err(|e| io::Error::new(e.kind(), format!("cannot open /dev/net/tun: {e}")))?;
    let deadline = std::time::Instant::now() + BUSY_WAIT;
    loop {
        let mut try_req = req;
        // SAFETY: TUNSETIFF reads and writes an `ifreq`, which `try_req` is, and it outlives
        // the call.
        let r = unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETIFF, &mut try_req) };
        if r == 0 {
            req = try_req;
            break;
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EBUSY) || std::time::Instant::now() >= deadline {
            return Err(e);
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    // SAFETY: the kernel NUL-terminates `ifr_name` within IFNAMSIZ bytes.
    let actual = unsafe { CStr::from_ptr(req.ifr_name.as_ptr()) };
    Ok((file.into(), actual.to_string_lossy().into_owned()))
}

/// Creates (or attaches to and keeps) the persistent TUN device `name`.
pub fn create_persistent_tun(name: &str, multi_queue: bool) -> Result<(), Error> {
    crate::state::check_ifname(name)?;
    let fail = |what: &'static str, e: std::io::Error| Error::Tun(name.to_owned(), what, e);
    let mut flags = libc::IFF_TUN | libc::IFF_NO_PI;
    if multi_queue {
        flags |= libc::IFF_MULTI_QUEUE;
    }
    let (fd, _) = attach(name, flags).map_err(|e| fail("TUNSETIFF", e))?;
    // SAFETY: TUNSETPERSIST takes an integer argument by value; the fd is open.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNSETPERSIST, 1 as libc::c_ulong) };
    if r < 0 {
        return Err(fail("TUNSETPERSIST", std::io::Error::last_os_error()));
    }
    quiet_ipv6(name)
}

/// The IPv6 settings (`net.ipv6.conf.DEV.*`) that keep a tunnel device from sending packets of
/// its own, in the order they must be written (see the module documentation): the MLD version
/// before leaving ff02::2, everything before the device comes up. The third field names the
/// step in errors.
pub const QUIET_IPV6: [(&str, &str, &str); 5] = [
    ("force_mld_version", "1", "setting IPv6 force_mld_version"),
    ("forwarding", "0", "setting IPv6 forwarding (host behaviour)"),
    ("accept_ra", "0", "setting IPv6 accept_ra"),
    ("router_solicitations", "0", "setting IPv6 router_solicitations"),
    ("addr_gen_mode", "1", "setting IPv6 addr_gen_mode"),
];

/// Writes [`QUIET_IPV6`] for device `name` (in the calling thread's network namespace). A
/// kernel without IPv6 has nothing to quiet.
pub fn quiet_ipv6(name: &str) -> Result<(), Error> {
    crate::state::check_ifname(name)?;
    let dir = std::path::Path::new("/proc/sys/net/ipv6/conf").join(name);
    if !dir.exists() {
        return Ok(());
    }
    for (key, value, what) in QUIET_IPV6 {
        std::fs::write(dir.join(key), value).map_err(|e| Error::Tun(name.to_owned(), what, e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interface_names_are_checked() {
        assert!(ifreq("ist0").is_ok());
        assert!(ifreq("").is_err());
        assert!(ifreq("a-name-that-is-too-long").is_err());
    }
}

//! The two-site lab: site A (the VPC side) and site B (the customer's data centre), each an Isthmus
//! appliance in QEMU, joined by the simulated Internet ([`crate::wan`]), each with a host on its LAN.
//!
//! ```text
//!  LAN host A ── lan0 ┌ site-a ┐ eth1 ══ WAN relay (127.0.0.1, delay/loss) ══ eth1 ┌ site-b ┐ lan0 ── LAN host B
//! 172.16.1.10   .1    │ QEMU   │ 198.51.100.1                      198.51.100.2 │ QEMU   │ .1   172.16.2.10
//!                     └ eth0: mgmt, API :8443 → 127.0.0.1:PORT_A   ┘ eth0 → 127.0.0.1:PORT_B
//! ```
//!
//! Each LAN host is a network namespace inside its appliance, on a veth pair (`lan0` stays with the
//! appliance): no third VM per site, which matters under TCG on two cores. Until the daemon owns
//! the interfaces from its configuration (`qemu/configs/site-*.toml`), the lab sets the addresses
//! through the serial console.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use isthmus_image::Manifest;

use crate::vm::{Accel, Boot, Nic, Vm, VmSpec, fresh_vars, overlay};
use crate::wan::{Impairment, Wan};
use crate::{Error, Result};

/// The management API's port inside each appliance.
pub const API_PORT: u16 = 8443;
/// How long a boot may take before the lab gives up (TCG on a busy two-core machine).
pub const BOOT_TIMEOUT: Duration = Duration::from_secs(120);
const CMD: Duration = Duration::from_secs(30);

/// One site's addressing.
#[derive(Clone, Debug)]
pub struct SiteSpec {
    /// Hostname and file prefix, e.g. `site-a`.
    pub name: &'static str,
    /// WAN address with prefix length.
    pub wan: &'static str,
    /// The appliance's LAN address with prefix length.
    pub lan: &'static str,
    /// The LAN host's address with prefix length.
    pub host: &'static str,
    /// The LAN network (what the tunnel protects).
    pub lan_net: &'static str,
    /// MAC address prefix of its NICs.
    pub mac: &'static str,
    /// Its lab configuration file, relative to the workspace.
    pub config: &'static str,
}

/// The two sites.
pub const SITES: [SiteSpec; 2] = [
    SiteSpec {
        name: "site-a",
        wan: "198.51.100.1/24",
        lan: "172.16.1.1/24",
        host: "172.16.1.10/24",
        lan_net: "172.16.1.0/24",
        mac: "52:54:00:0a",
        config: "qemu/configs/site-a.toml",
    },
    SiteSpec {
        name: "site-b",
        wan: "198.51.100.2/24",
        lan: "172.16.2.1/24",
        host: "172.16.2.10/24",
        lan_net: "172.16.2.0/24",
        mac: "52:54:00:0b",
        config: "qemu/configs/site-b.toml",
    },
];

fn addr(cidr: &str) -> &str {
    cidr.split('/').next().unwrap_or(cidr)
}

/// Lab settings.
#[derive(Clone, Debug)]
pub struct LabOptions {
    /// The QEMU binary.
    pub qemu: PathBuf,
    /// Accelerator.
    pub accel: Accel,
    /// The built image.
    pub image: Manifest,
    /// Folder for overlays, consoles and logs.
    pub dir: PathBuf,
    /// WAN impairments.
    pub impairment: Impairment,
    /// Host ports for the two management APIs (`None`: any free port).
    pub api_ports: [Option<u16>; 2],
    /// Memory per appliance in MiB.
    pub mem_mib: u32,
    /// Boot each site under UEFI (OVMF, systemd-boot picks the A/B slot) instead of direct kernel
    /// boot: slower, but what upgrades need.
    pub uefi: [bool; 2],
}

/// A running appliance of the lab.
#[derive(Debug)]
pub struct Site {
    /// Its addressing.
    pub spec: SiteSpec,
    /// Its VM.
    pub vm: Vm,
    /// Host port forwarded to its API (127.0.0.1).
    pub api_port: u16,
    /// Seconds from QEMU start to the readiness line.
    pub ready_secs: f64,
    /// The readiness line as printed.
    pub ready_line: String,
    /// PID (inside the appliance) of the LAN host namespace's anchor process.
    lan_host_pid: Option<u32>,
}

/// The running lab. Dropping it stops both appliances and the WAN.
#[derive(Debug)]
pub struct Lab {
    /// Site A and site B.
    pub sites: Vec<Site>,
    /// The simulated Internet.
    pub wan: Wan,
}

/// The direct-boot command line of a lab appliance.
pub fn lab_cmdline(site: &str) -> String {
    // panic=-1 reboots at once; no `console=tty0`: the lab VMs have no display.
    format!("console=ttyS0,115200 quiet panic=-1 isthmus.slot=a isthmus.hostname={site}")
}

impl Lab {
    /// Starts both appliances (direct kernel boot on fresh overlays of the image) and waits for both
    /// readiness lines.
    pub fn boot(opts: &LabOptions) -> Result<Lab> {
        std::fs::create_dir_all(&opts.dir).map_err(|e| Error::io(&opts.dir, e))?;
        let wan = Wan::start(opts.impairment)?;
        let mut vms = Vec::new();
        for (i, spec) in SITES.iter().enumerate() {
            let api_port = match opts.api_ports[i] {
                Some(p) => p,
                None => crate::vm::free_tcp_port()?,
            };
            let disk = opts.dir.join(format!("{}.qcow2", spec.name));
            overlay(&opts.image.raw, "raw", &disk)?;
            let wan_netdev = if i == 0 { wan.netdev_a() } else { wan.netdev_b() };
            let boot = if opts.uefi[i] {
                let vars = opts.dir.join(format!("{}.vars.fd", spec.name));
                fresh_vars(&vars)?;
                Boot::Uefi { vars }
            } else {
                Boot::Direct {
                    kernel: opts.image.vmlinuz.clone(),
                    initrd: opts.image.initrd.clone(),
                    cmdline: lab_cmdline(spec.name),
                }
            };
            let vm = Vm::start(&VmSpec {
                name: spec.name.to_string(),
                qemu: opts.qemu.clone(),
                accel: opts.accel,
                boot,
                disk,
                disk_format: "qcow2".into(),
                nics: vec![
                    Nic {
                        netdev: format!(
                            "user,restrict=on,hostfwd=tcp:127.0.0.1:{api_port}-10.0.2.15:{API_PORT}"
                        ),
                        mac: format!("{}:00:01", spec.mac),
                    },
                    Nic { netdev: wan_netdev, mac: format!("{}:00:02", spec.mac) },
                ],
                mem_mib: opts.mem_mib,
                dir: opts.dir.clone(),
            })?;
            vms.push((spec.clone(), vm, api_port));
        }
        let mut sites = Vec::new();
        for (spec, mut vm, api_port) in vms {
            let ready_line = vm.wait_for(isthmus_ready(), BOOT_TIMEOUT)?;
            let ready_secs = vm.started.elapsed().as_secs_f64();
            sites.push(Site { spec, vm, api_port, ready_secs, ready_line, lan_host_pid: None });
        }
        Ok(Lab { sites, wan })
    }

    /// Creates each LAN host (a namespace on a veth pair whose appliance end is `lan0`), then finds
    /// out what the daemon does: a daemon that waits for its first configuration gets the site's
    /// `qemu/configs/site-*.toml` written to `/data/isthmus/config.toml` and owns the interfaces
    /// from then on; without one (the stub), the lab sets the addresses through the console.
    pub fn wire(&mut self, root: &Path) -> Result<DaemonMode> {
        let mut mode = DaemonMode::Stub;
        let mut seeded = true;
        for site in &mut self.sites {
            let s = site.spec.clone();
            let vm = &mut site.vm;
            vm.wait_for_shell(Duration::from_secs(30))?;
            // The image's boot hook (`/data/rc.local`, see [`lab_data_files`]) may have wired the LAN
            // host and installed the first-boot configuration already.
            if let Some(pid) = vm.lan_host_pid()? {
                site.lan_host_pid = Some(pid);
                mode = DaemonMode::WaitsForConfig;
                continue;
            }
            seeded = false;
            // BusyBox names the peer veth0; it moves into the host's namespace. A boot hook that PID 1
            // stopped at its time limit (a slow TCG boot) may have left `lan0` without a LAN host:
            // remove it first.
            vm.sh_ok("ip link del lan0 2>/dev/null; ip link add lan0 type veth", CMD)?;
            let pid =
                vm.sh_ok("unshare -n sleep 2147483647 </dev/null >/dev/null 2>&1 & echo $!", CMD)?;
            let pid: u32 =
                pid.lines().last().and_then(|l| l.trim().parse().ok()).ok_or_else(|| {
                    Error::Guest(format!("{}: no LAN host pid in {pid:?}", s.name))
                })?;
            vm.sh_ok(
                &format!(
                    "echo {pid} > /run/lan-host.pid; sleep 0.2; ip link set veth0 netns {pid}"
                ),
                CMD,
            )?;
            vm.sh_ok(
                &format!(
                    "nsenter -t {pid} -n sh -c 'ip link set lo up && ip link set veth0 up && \
                     ip addr add {} dev veth0 && ip route add default via {}'",
                    s.host,
                    addr(s.lan)
                ),
                CMD,
            )?;
            site.lan_host_pid = Some(pid);

            mode = daemon_mode(vm)?;
            if mode == DaemonMode::Stub {
                vm.sh_ok("ip link set eth0 up && ip addr add 10.0.2.15/24 dev eth0", CMD)?;
                vm.sh_ok(&format!("ip link set eth1 up && ip addr add {} dev eth1", s.wan), CMD)?;
                vm.sh_ok(&format!("ip addr add {} dev lan0 && ip link set lan0 up", s.lan), CMD)?;
                vm.sh_ok("sysctl -qw net.ipv4.ip_forward=1", CMD)?;
            }
        }
        if mode == DaemonMode::WaitsForConfig && !seeded {
            // The answering site first, so the initiator's first IKE_SA_INIT finds its peer ready
            // (no retransmission backoff).
            for site in self.sites.iter_mut().rev() {
                let path = root.join(site.spec.config);
                let config = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
                site.vm.sh_ok(
                    &format!(
                        "mkdir -p /data/isthmus && echo {} | base64 -d > /data/isthmus/config.toml.tmp && \
                         mv /data/isthmus/config.toml.tmp /data/isthmus/config.toml && sync",
                        base64(&config)
                    ),
                    CMD,
                )?;
            }
        }
        Ok(mode)
    }

    /// After site `i` rebooted (its readiness line seen): takes its console shell again and finds
    /// the LAN host its boot hook created.
    pub fn rewire_site(&mut self, i: usize) -> Result<()> {
        let site = &mut self.sites[i];
        site.vm.wait_for_shell(Duration::from_secs(30))?;
        site.lan_host_pid = site.vm.lan_host_pid()?;
        if site.lan_host_pid.is_none() {
            return Err(Error::Guest(format!(
                "{}: no LAN host after the reboot (the image has no lab boot hook?)",
                site.spec.name
            )));
        }
        Ok(())
    }

    /// Waits until both daemons listen on the API port; returns whether each does.
    pub fn wait_api(&mut self, timeout: Duration) -> Result<Vec<bool>> {
        let deadline = Instant::now() + timeout;
        loop {
            let up = self.api_listening()?;
            if up.iter().all(|&b| b) || Instant::now() >= deadline {
                return Ok(up);
            }
            std::thread::sleep(Duration::from_secs(1));
        }
    }

    /// Pings LAN host B from LAN host A, one packet a second, until one answers or `timeout`
    /// passes; returns when the first answer came (since site A's QEMU started).
    pub fn wait_tunnel(&mut self, timeout: Duration) -> Result<Option<f64>> {
        let pid = self.sites[0]
            .lan_host_pid
            .ok_or_else(|| Error::Guest("LAN host A not created".into()))?;
        let target = addr(SITES[1].host);
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            let (status, _) = self.sites[0]
                .vm
                .sh(&format!("nsenter -t {pid} -n ping -c 1 -W 1 {target} >/dev/null 2>&1"), CMD)?;
            if status == 0 {
                return Ok(Some(self.sites[0].vm.started.elapsed().as_secs_f64()));
            }
        }
        Ok(None)
    }

    /// Pings site B's WAN address from site A; returns ping's summary lines.
    pub fn wan_ping(&mut self) -> Result<String> {
        let b = addr(SITES[1].wan);
        let out =
            self.sites[0].vm.sh_ok(&format!("ping -c 3 -W 3 {b}"), Duration::from_secs(40))?;
        Ok(summary(&out))
    }

    /// Pings LAN host B from LAN host A (through the tunnel, once there is one). Returns
    /// (success, ping's summary).
    pub fn lan_ping(&mut self) -> Result<(bool, String)> {
        let pid = self.sites[0]
            .lan_host_pid
            .ok_or_else(|| Error::Guest("LAN host A not created".into()))?;
        let target = addr(SITES[1].host);
        let (status, out) = self.sites[0].vm.sh(
            &format!("nsenter -t {pid} -n ping -c 3 -W 2 {target} 2>&1"),
            Duration::from_secs(40),
        )?;
        Ok((status == 0, summary(&out)))
    }

    /// Whether each appliance's daemon listens on the API port (asked inside the appliance: QEMU's
    /// user networking accepts host connections even when nothing listens in the guest).
    pub fn api_listening(&mut self) -> Result<Vec<bool>> {
        let mut v = Vec::new();
        for site in &mut self.sites {
            let (status, _) = site.vm.sh(&format!("netstat -ltn | grep -q ':{API_PORT} '"), CMD)?;
            v.push(status == 0);
        }
        Ok(v)
    }

    /// The console log file of site `i`.
    pub fn console_log(&self, i: usize) -> &Path {
        &self.sites[i].vm.log
    }

    /// Powers both appliances off cleanly (kills them after a grace period).
    pub fn shutdown(self) {
        let started = Instant::now();
        for site in self.sites {
            site.vm.shutdown(Duration::from_secs(15).saturating_sub(started.elapsed()));
        }
    }
}

/// The lab's boot hook, seeded into the data partition as `/data/rc.local` (PID 1 runs it before
/// the daemon, on every boot, so it also survives reboots and upgrades): it tells the site by its
/// NIC's MAC address, sets the hostname, creates the LAN host (a namespace on the veth pair whose
/// appliance end is `lan0`), and on first boot installs the site's configuration from
/// `/data/isthmus/first-boot/`. This saves the console round trips of [`Lab::wire`] at boot.
pub fn rc_local() -> String {
    let mut cases = String::new();
    for s in &SITES {
        cases.push_str(&format!(
            "  {}:*) site={} host={} gw={} ;;\n",
            s.mac,
            s.name,
            s.host,
            addr(s.lan)
        ));
    }
    format!(
        r#"#!/bin/sh
# Isthmus lab boot hook (qemu/src/lab.rs): wires this appliance's LAN host and, on first boot,
# installs its configuration. PID 1 runs it before isthmusd on every boot.
mac=$(cat /sys/class/net/eth0/address 2>/dev/null)
case "$mac" in
{cases}  *) exit 0 ;;
esac
hostname "$site"
ip link add lan0 type veth || exit 1
unshare -n sleep 2147483647 </dev/null >/dev/null 2>&1 &
pid=$!
i=0
while [ "$(readlink /proc/$pid/ns/net)" = "$(readlink /proc/self/ns/net)" ] && [ $i -lt 200 ]; do
  sleep 0.02; i=$((i+1))
done
ip link set veth0 netns "$pid"
nsenter -t "$pid" -n sh -c "ip link set lo up && ip link set veth0 up && ip addr add $host dev veth0 && ip route add default via $gw"
echo "$pid" > /run/lan-host.pid
if [ ! -e /data/isthmus/config ] && [ ! -e /data/isthmus/config.toml ]; then
  cp "/data/isthmus/first-boot/$site.toml" /data/isthmus/config.toml
fi
echo "lab: $site LAN host $host (pid $pid)"
"#
    )
}

/// What the lab seeds into the image's data partition: the boot hook and both sites' first-boot
/// configurations.
pub fn lab_data_files(root: &Path) -> Result<Vec<(String, Vec<u8>, u32)>> {
    let mut v = vec![("rc.local".to_string(), rc_local().into_bytes(), 0o755)];
    for s in &SITES {
        let path = root.join(s.config);
        let text = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
        v.push((format!("isthmus/first-boot/{}.toml", s.name), text, 0o600));
    }
    Ok(v)
}

/// Builds the operator CLI (`cargo build --release -p isthmus`, once; quick when built) and
/// returns its path. `ISTHMUS_CLI=PATH` uses a prebuilt one instead; debug builds (the tests)
/// use the debug CLI that `cargo test --workspace` put beside them when there is one.
pub fn cli_binary(root: &Path) -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("ISTHMUS_CLI") {
        return Ok(PathBuf::from(p));
    }
    // Under `cargo test --workspace` the debug CLI was built beside the test binary
    // (target/debug/deps/..): use it rather than a release build of wasmtime for the host.
    if cfg!(debug_assertions)
        && let Some(p) = std::env::current_exe()
            .ok()
            .and_then(|exe| Some(exe.parent()?.parent()?.join("isthmus")))
            .filter(|p| p.is_file())
    {
        return Ok(p);
    }
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = std::process::Command::new(cargo)
        .current_dir(root)
        .args(["build", "-q", "--release", "-p", "isthmus", "--bin", "isthmus"])
        .status()
        .map_err(|e| Error::io(Path::new("cargo"), e))?;
    if !status.success() {
        return Err(Error::Guest(format!("building the CLI failed ({status})")));
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    Ok(target.join("release/isthmus"))
}

/// What the appliance's daemon does after boot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DaemonMode {
    /// The placeholder `isthmusd` that exits at once ("the daemon is not built yet").
    Stub,
    /// The daemon waits for `/data/isthmus/config.toml` (first boot).
    WaitsForConfig,
}

/// Tells from the console which daemon runs (waits up to 20 s for it to say).
fn daemon_mode(vm: &mut Vm) -> Result<DaemonMode> {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        let out = vm.output();
        if out.contains("the daemon is not built yet") {
            return Ok(DaemonMode::Stub);
        }
        if out.contains("/data/isthmus/config.toml") {
            return Ok(DaemonMode::WaitsForConfig);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    Err(Error::Guest(format!(
        "{}: isthmusd said neither that it waits for its configuration nor that it is a stub",
        vm.name
    )))
}

/// Standard base64 (RFC 4648 §4), for moving a file through the console as one line.
pub fn base64(data: &[u8]) -> String {
    const ABC: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ABC[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// The readiness line PID 1 prints (see `firmware/daemon/src/system/pid1.rs`).
pub fn isthmus_ready() -> &'static str {
    "isthmus: ready"
}

fn summary(ping: &str) -> String {
    ping.lines()
        .filter(|l| {
            l.contains("packets transmitted") || l.contains("round-trip") || l.contains("rtt")
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// Boots the image under OVMF (systemd-boot picks the slot) on a fresh overlay; returns the VM after
/// its readiness line, and that line.
pub fn boot_uefi(
    qemu: &Path,
    accel: Accel,
    image: &Path,
    dir: &Path,
    name: &str,
    mem_mib: u32,
) -> Result<(Vm, String)> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let disk = dir.join(format!("{name}.qcow2"));
    overlay(image, "raw", &disk)?;
    let vars = dir.join(format!("{name}.vars.fd"));
    fresh_vars(&vars)?;
    let mut vm = Vm::start(&VmSpec {
        name: name.to_string(),
        qemu: qemu.to_path_buf(),
        accel,
        boot: Boot::Uefi { vars },
        disk,
        disk_format: "qcow2".into(),
        nics: vec![],
        mem_mib,
        dir: dir.to_path_buf(),
    })?;
    let line = vm.wait_for(isthmus_ready(), BOOT_TIMEOUT)?;
    Ok((vm, line))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sites_do_not_overlap() {
        assert_ne!(SITES[0].lan_net, SITES[1].lan_net);
        assert_ne!(addr(SITES[0].wan), addr(SITES[1].wan));
        assert_eq!(addr("172.16.1.10/24"), "172.16.1.10");
    }

    #[test]
    fn lab_configs_match_the_lab_wiring() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
        for (i, s) in SITES.iter().enumerate() {
            let text = std::fs::read_to_string(root.join(s.config)).unwrap();
            let peer = &SITES[1 - i];
            assert!(text.contains(&format!("name = \"{}\"", s.name)), "{}", s.config);
            assert!(text.contains(&format!("address = \"{}\"", s.wan)), "{}: WAN", s.config);
            assert!(text.contains(&format!("addresses = [\"{}\"]", s.lan)), "{}: LAN", s.config);
            assert!(
                text.contains(&format!("address = \"{}\"", addr(peer.wan))),
                "{}: peer",
                s.config
            );
            assert!(text.contains(&format!("local = [\"{}\"]", s.lan_net)), "{}: spd", s.config);
            assert!(
                text.contains(&format!("remote = [\"{}\"]", peer.lan_net)),
                "{}: spd",
                s.config
            );
        }
    }

    #[test]
    fn base64_rfc4648_section_10_vectors() {
        for (plain, coded) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(plain.as_bytes()), coded);
        }
    }

    #[test]
    fn lab_configs_pass_the_daemons_validation() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
        for s in &SITES {
            let text = std::fs::read_to_string(root.join(s.config)).unwrap();
            if let Err(errors) = isthmus_config::Config::check(&text) {
                panic!("{}: {errors}", s.config);
            }
        }
    }

    #[test]
    fn ping_summary_keeps_the_totals() {
        let out = "PING 1.2.3.4 (1.2.3.4): 56 data bytes\n64 bytes from 1.2.3.4: seq=0 ttl=64 time=1.0 ms\n\n\
                   --- 1.2.3.4 ping statistics ---\n3 packets transmitted, 3 packets received, 0% packet loss\n\
                   round-trip min/avg/max = 0.5/1.0/1.5 ms";
        assert_eq!(
            summary(out),
            "3 packets transmitted, 3 packets received, 0% packet loss; round-trip min/avg/max = 0.5/1.0/1.5 ms"
        );
    }
}

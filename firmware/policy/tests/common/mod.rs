//! Shared helpers of the plugin tests: finding the built components, signing them, random data.
#![allow(dead_code)]

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;

use isthmus_policy::{
    Capability, Clock, Hook, HostConfig, LoadedPlugin, Manifest, Package, PluginHost, PublicKey,
    SecretKey, VerifiedPlugin, generate_key, sign, verify,
};
use isthmus_tables::{FlowKey, PortRange, Prefix};

/// The bytes of a plugin built by `make plugins`.
pub fn wasm(name: &str) -> Vec<u8> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(isthmus_policy::PLUGINS_DIR)
        .join(format!("{name}.wasm"));
    match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) => panic!(
            "cannot read {} ({e}): the plugins are not built; run `make plugins` first",
            path.display()
        ),
    }
}

pub struct Keys {
    pub secret: SecretKey,
    pub public: PublicKey,
}

pub fn keys() -> Keys {
    let (secret, public) = generate_key().unwrap();
    Keys { secret, public }
}

pub fn package(name: &str, file: &str, hook: Hook, caps: Vec<Capability>, k: &Keys) -> Vec<u8> {
    let m = Manifest {
        name: name.into(),
        version: "1.0.0".into(),
        hook,
        capabilities: caps,
        description: String::new(),
    };
    sign(Package::unsigned(m, wasm(file)).unwrap(), &k.secret).unwrap().to_bytes()
}

pub fn verified(
    name: &str,
    file: &str,
    hook: Hook,
    caps: Vec<Capability>,
    k: &Keys,
) -> VerifiedPlugin {
    verify(&package(name, file, hook, caps, k), std::slice::from_ref(&k.public)).unwrap()
}

pub fn host() -> PluginHost {
    PluginHost::new(HostConfig::default()).unwrap()
}

pub fn load(host: &PluginHost, file: &str, hook: Hook, k: &Keys) -> LoadedPlugin {
    host.load(&verified(&file.replace('_', "-"), file, hook, vec![], k), "", None).unwrap()
}

pub fn load_with(
    host: &PluginHost,
    file: &str,
    hook: Hook,
    caps: Vec<Capability>,
    config: &str,
    clock: Option<Arc<dyn Clock>>,
    k: &Keys,
) -> LoadedPlugin {
    host.load(&verified(&file.replace('_', "-"), file, hook, caps, k), config, clock).unwrap()
}

/// xorshift64*: deterministic, so failures reproduce.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    pub fn pick<T: Copy>(&mut self, xs: &[T]) -> T {
        xs[self.below(xs.len() as u64) as usize]
    }
}

pub fn v4(a: u32) -> IpAddr {
    IpAddr::V4(a.into())
}

/// A random IPv4 prefix inside 10.0.0.0/12 (or the default route), or an IPv6 one.
pub fn prefix(rng: &mut Rng, v6: bool) -> Prefix {
    if v6 {
        let len = rng.pick(&[0u8, 32, 48, 64, 96, 128]);
        let a = 0x2001_0db8u128 << 96 | u128::from(rng.below(16)) << 80 | u128::from(rng.next());
        Prefix::new(IpAddr::V6(a.into()), len).unwrap()
    } else {
        let len = rng.pick(&[0u8, 8, 12, 16, 20, 24, 28, 32]);
        Prefix::new(v4(0x0a00_0000 | rng.below(1 << 20) as u32), len).unwrap()
    }
}

pub fn ports(rng: &mut Rng) -> PortRange {
    match rng.below(4) {
        0 => PortRange::ANY,
        1 => PortRange::single(rng.pick(&[22, 53, 80, 443, 8080])),
        2 => {
            let a = rng.below(2000) as u16;
            PortRange { first: a, last: a + rng.below(3000) as u16 }
        }
        _ => PortRange { first: 1024, last: 65535 },
    }
}

/// A random packet, often inside `near` when given.
pub fn flow(rng: &mut Rng, v6: bool, near: Option<(&Prefix, &Prefix)>) -> FlowKey {
    let inside = |rng: &mut Rng, p: &Prefix| -> IpAddr {
        match p.addr() {
            IpAddr::V4(a) => {
                let host = if p.len() == 32 { 0 } else { u32::MAX >> p.len() };
                v4(u32::from(a) | (rng.next() as u32 & host))
            }
            IpAddr::V6(a) => {
                let host = if p.len() == 128 { 0 } else { u128::MAX >> p.len() };
                let r = u128::from(rng.next()) << 64 | u128::from(rng.next());
                IpAddr::V6((u128::from(a) | (r & host)).into())
            }
        }
    };
    let any = |rng: &mut Rng| -> IpAddr {
        if v6 {
            IpAddr::V6(
                (0x2001_0db8u128 << 96 | u128::from(rng.below(16)) << 80 | u128::from(rng.next()))
                    .into(),
            )
        } else {
            v4(0x0a00_0000 | rng.below(1 << 20) as u32)
        }
    };
    let (src, dst) = match near {
        Some((a, b)) if rng.below(3) != 0 => (inside(rng, a), inside(rng, b)),
        _ => (any(rng), any(rng)),
    };
    FlowKey {
        src,
        dst,
        proto: rng.pick(&[6, 17, 1, 47]),
        src_port: rng.pick(&[1000, 40000, 53, 443]),
        dst_port: rng.pick(&[22, 53, 80, 443, 1500, 8080, 60000]),
    }
}

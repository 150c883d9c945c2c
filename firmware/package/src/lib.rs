//! Signed plugin packages: the component, its manifest and an ed25519 signature (RFC 8032).
//!
//! Wire format (all integers big-endian):
//!
//! ```text
//! +----------------------------+ "ISTHMUS-PLUGIN\0\x01" (16 bytes: magic and format version 1)
//! | u32 manifest length        |
//! | manifest (JSON)            |
//! | u32 signature length       | 0 when unsigned
//! | signature (JSON)           | {"key": "ed25519:<hex>", "sig": "<hex>"}
//! | component (rest)           | the WebAssembly component
//! +----------------------------+
//! ```
//!
//! The signature covers `"isthmus-plugin-v1\0" || SHA-256(manifest) || SHA-256(component)`, so
//! neither the manifest (hook, capabilities) nor the code can change without breaking it. The
//! package's digest (its identity in the store) is the SHA-256 of that same message.
//!
//! Keys are text: `ed25519:<64 hex>` for a public key, `ed25519-secret:<hex PKCS#8>` for a
//! secret key. [`generate_key`], [`sign`] and [`verify`] are what `isthmus plugin keygen`,
//! `isthmus plugin sign` and the upload path call.
//!
//! This crate is apart from the plugin host (`isthmus-policy`) so that the CLI, which only signs,
//! does not link wasmtime.
#![forbid(unsafe_code)]

use ring::rand::SystemRandom;
use ring::signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey};
use serde::{Deserialize, Serialize};

/// Why a package or key was refused. Messages name what is wrong and what to do.
#[derive(Debug, thiserror::Error)]
pub enum PackageError {
    /// The package bytes are not a plugin package.
    #[error("not an Isthmus plugin package: {0}")]
    BadPackage(String),
    /// The manifest is missing a field or has a bad value.
    #[error("bad plugin manifest: {0}")]
    BadManifest(String),
    /// The package carries no signature.
    #[error("plugin `{0}` is not signed; sign it with `isthmus plugin sign`")]
    Unsigned(String),
    /// The signing key is not in the configuration's trusted keys.
    #[error(
        "plugin `{name}` is signed by {key}, which is not a trusted key; add it to the \
         configuration's trusted plugin keys or sign with a trusted key"
    )]
    UntrustedKey {
        /// The plugin's name.
        name: String,
        /// The key it was signed with.
        key: String,
    },
    /// The signature does not verify: the package was changed after signing.
    #[error("plugin `{0}` has a bad signature: the package was modified after it was signed")]
    BadSignature(String),
    /// A key file or key text does not parse.
    #[error("bad key: {0}")]
    BadKey(String),
}

/// This crate's result.
pub type Result<T, E = PackageError> = std::result::Result<T, E>;

const MAGIC: &[u8; 16] = b"ISTHMUS-PLUGIN\0\x01";
const CONTEXT: &[u8] = b"isthmus-plugin-v1\0";
/// Largest package accepted (components are typically 50–200 KiB).
pub const MAX_PACKAGE: usize = 32 << 20;

/// The hook a plugin is bound to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Hook {
    /// Compiles SPD tables (world `spd-plugin`).
    Spd,
    /// Compiles security-group and ACL tables, optionally decides punted flows (worlds
    /// `security-group-plugin`, `security-group-punt-plugin`).
    SecurityGroup,
    /// Handles alarm events (world `alarm-plugin`).
    Alarm,
}

impl Hook {
    /// The hook's name as written in manifests.
    pub fn name(self) -> &'static str {
        match self {
            Hook::Spd => "spd",
            Hook::SecurityGroup => "security-group",
            Hook::Alarm => "alarm",
        }
    }
}

/// A host capability beyond logging and configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Capability {
    /// The `isthmus:policy/clock` import: wall-clock time and the local UTC offset.
    Clock,
}

/// What a plugin says about itself; signed with the component.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Lowercase letters, digits and `-`, 1 to 64 characters.
    pub name: String,
    /// Free-form version, 1 to 32 characters (`1.2.0`).
    pub version: String,
    /// The hook it implements.
    pub hook: Hook,
    /// Capabilities it needs.
    #[serde(default)]
    pub capabilities: Vec<Capability>,
    /// One line for `isthmus plugin list`.
    #[serde(default)]
    pub description: String,
}

impl Manifest {
    /// Checks names and sizes.
    pub fn validate(&self) -> Result<()> {
        let ok_name = !self.name.is_empty()
            && self.name.len() <= 64
            && self.name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if !ok_name {
            return Err(PackageError::BadManifest(format!(
                "name `{}` must be 1 to 64 lowercase letters, digits or `-`",
                self.name
            )));
        }
        if self.version.is_empty() || self.version.len() > 32 {
            return Err(PackageError::BadManifest("version must be 1 to 32 characters".into()));
        }
        if self.description.len() > 200 {
            return Err(PackageError::BadManifest("description is longer than 200 bytes".into()));
        }
        Ok(())
    }

    /// True when the manifest grants `cap`.
    pub fn has(&self, cap: Capability) -> bool {
        self.capabilities.contains(&cap)
    }
}

/// An ed25519 public key.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct PublicKey([u8; 32]);

impl PublicKey {
    /// Parses `ed25519:<64 hex digits>`.
    pub fn parse(text: &str) -> Result<PublicKey> {
        let hex = text.trim().strip_prefix("ed25519:").ok_or_else(|| {
            PackageError::BadKey("a public key looks like `ed25519:` and 64 hex digits".into())
        })?;
        let bytes = from_hex(hex)
            .filter(|b| b.len() == 32)
            .ok_or_else(|| PackageError::BadKey("a public key has 64 hex digits".into()))?;
        let mut k = [0u8; 32];
        k.copy_from_slice(&bytes);
        Ok(PublicKey(k))
    }

    /// The raw 32 bytes.
    pub fn bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl std::fmt::Display for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ed25519:{}", to_hex(&self.0))
    }
}

impl std::fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PublicKey({self})")
    }
}

/// An ed25519 secret key (PKCS#8). Never printed: `Debug` redacts it.
#[derive(Clone)]
pub struct SecretKey(Vec<u8>);

impl std::fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretKey(<redacted>)")
    }
}

impl SecretKey {
    /// Parses `ed25519-secret:<hex PKCS#8>`.
    pub fn parse(text: &str) -> Result<SecretKey> {
        let bad = || {
            PackageError::BadKey("a secret key looks like `ed25519-secret:` and hex digits".into())
        };
        let hex = text.trim().strip_prefix("ed25519-secret:").ok_or_else(bad)?;
        let der = from_hex(hex).ok_or_else(bad)?;
        Ed25519KeyPair::from_pkcs8(&der).map_err(|_| {
            PackageError::BadKey("the secret key is not a valid ed25519 PKCS#8 key".into())
        })?;
        Ok(SecretKey(der))
    }

    /// The text form, for the key file (keep it private).
    pub fn to_text(&self) -> String {
        format!("ed25519-secret:{}", to_hex(&self.0))
    }

    /// The matching public key.
    pub fn public_key(&self) -> Result<PublicKey> {
        let kp = self.pair()?;
        let mut k = [0u8; 32];
        k.copy_from_slice(kp.public_key().as_ref());
        Ok(PublicKey(k))
    }

    fn pair(&self) -> Result<Ed25519KeyPair> {
        Ed25519KeyPair::from_pkcs8(&self.0).map_err(|_| {
            PackageError::BadKey("the secret key is not a valid ed25519 PKCS#8 key".into())
        })
    }
}

/// A fresh signing key pair (`isthmus plugin keygen`).
pub fn generate_key() -> Result<(SecretKey, PublicKey)> {
    let doc = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new())
        .map_err(|_| PackageError::BadKey("the system random source failed".into()))?;
    let sk = SecretKey(doc.as_ref().to_vec());
    let pk = sk.public_key()?;
    Ok((sk, pk))
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SignatureBlock {
    key: String,
    sig: String,
}

/// A parsed package, not yet verified.
#[derive(Clone, PartialEq, Eq)]
pub struct Package {
    manifest_bytes: Vec<u8>,
    /// The manifest.
    pub manifest: Manifest,
    signature: Option<(PublicKey, Vec<u8>)>,
    /// The component's bytes.
    pub component: Vec<u8>,
}

impl std::fmt::Debug for Package {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Package")
            .field("manifest", &self.manifest)
            .field("signed_by", &self.signature.as_ref().map(|(k, _)| k))
            .field("component_bytes", &self.component.len())
            .finish()
    }
}

fn message(manifest: &[u8], component: &[u8]) -> Vec<u8> {
    let mut m = CONTEXT.to_vec();
    m.extend_from_slice(ring::digest::digest(&ring::digest::SHA256, manifest).as_ref());
    m.extend_from_slice(ring::digest::digest(&ring::digest::SHA256, component).as_ref());
    m
}

impl Package {
    /// An unsigned package (what a build produces before `isthmus plugin sign`).
    pub fn unsigned(manifest: Manifest, component: Vec<u8>) -> Result<Package> {
        manifest.validate()?;
        let manifest_bytes =
            serde_json::to_vec(&manifest).map_err(|e| PackageError::BadManifest(e.to_string()))?;
        Ok(Package { manifest_bytes, manifest, signature: None, component })
    }

    /// Parses package bytes (no signature check: see [`verify`]).
    pub fn parse(bytes: &[u8]) -> Result<Package> {
        if bytes.len() > MAX_PACKAGE {
            return Err(PackageError::BadPackage(format!(
                "{} bytes is more than the {MAX_PACKAGE} allowed",
                bytes.len()
            )));
        }
        let rest = bytes.strip_prefix(MAGIC.as_slice()).ok_or_else(|| {
            PackageError::BadPackage(
                "missing the ISTHMUS-PLUGIN header (is this a bare .wasm? sign it first)".into(),
            )
        })?;
        let (manifest_bytes, rest) = take_block(rest, "manifest")?;
        let (sig_bytes, component) = take_block(rest, "signature")?;
        let manifest: Manifest = serde_json::from_slice(manifest_bytes)
            .map_err(|e| PackageError::BadManifest(e.to_string()))?;
        manifest.validate()?;
        let signature = if sig_bytes.is_empty() {
            None
        } else {
            let block: SignatureBlock = serde_json::from_slice(sig_bytes)
                .map_err(|e| PackageError::BadPackage(format!("signature block: {e}")))?;
            let key = PublicKey::parse(&block.key)?;
            let sig = from_hex(&block.sig).filter(|s| s.len() == 64).ok_or_else(|| {
                PackageError::BadPackage("the signature is not 128 hex digits".into())
            })?;
            Some((key, sig))
        };
        if component.is_empty() {
            return Err(PackageError::BadPackage("the package holds no component".into()));
        }
        Ok(Package {
            manifest_bytes: manifest_bytes.to_vec(),
            manifest,
            signature,
            component: component.to_vec(),
        })
    }

    /// The package's bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        let sig = match &self.signature {
            Some((k, s)) => {
                serde_json::to_vec(&SignatureBlock { key: k.to_string(), sig: to_hex(s) })
                    .unwrap_or_default()
            }
            None => Vec::new(),
        };
        let mut out = MAGIC.to_vec();
        for block in [&self.manifest_bytes, &sig] {
            out.extend_from_slice(&(block.len() as u32).to_be_bytes());
            out.extend_from_slice(block);
        }
        out.extend_from_slice(&self.component);
        out
    }

    /// The package's identity: SHA-256 (hex) of the signed message.
    pub fn digest(&self) -> String {
        to_hex(
            ring::digest::digest(
                &ring::digest::SHA256,
                &message(&self.manifest_bytes, &self.component),
            )
            .as_ref(),
        )
    }

    /// The key that signed it, if any.
    pub fn signer(&self) -> Option<&PublicKey> {
        self.signature.as_ref().map(|(k, _)| k)
    }
}

fn take_block<'a>(b: &'a [u8], what: &str) -> Result<(&'a [u8], &'a [u8])> {
    let short = || PackageError::BadPackage(format!("truncated {what} block"));
    let (len, rest) = b.split_first_chunk::<4>().ok_or_else(short)?;
    let len = u32::from_be_bytes(*len) as usize;
    if len > rest.len() || len > 1 << 20 {
        return Err(short());
    }
    Ok(rest.split_at(len))
}

/// Signs `package` with `key` (`isthmus plugin sign`), replacing any earlier signature.
pub fn sign(mut package: Package, key: &SecretKey) -> Result<Package> {
    let pair = key.pair()?;
    let sig = pair.sign(&message(&package.manifest_bytes, &package.component));
    package.signature = Some((key.public_key()?, sig.as_ref().to_vec()));
    Ok(package)
}

/// A package whose signature verified against a trusted key.
#[derive(Clone, Debug)]
pub struct VerifiedPlugin {
    package: Package,
    digest: String,
}

impl VerifiedPlugin {
    /// The manifest.
    pub fn manifest(&self) -> &Manifest {
        &self.package.manifest
    }

    /// The component's bytes.
    pub fn component(&self) -> &[u8] {
        &self.package.component
    }

    /// The package digest.
    pub fn digest(&self) -> &str {
        &self.digest
    }

    /// The package (to store it).
    pub fn package(&self) -> &Package {
        &self.package
    }
}

/// Parses and verifies package bytes against `trusted` keys. Unsigned, tampered or foreign
/// packages are refused with a message that says which.
pub fn verify(bytes: &[u8], trusted: &[PublicKey]) -> Result<VerifiedPlugin> {
    let package = Package::parse(bytes)?;
    let name = package.manifest.name.clone();
    let Some((key, sig)) = &package.signature else {
        return Err(PackageError::Unsigned(name));
    };
    if !trusted.contains(key) {
        return Err(PackageError::UntrustedKey { name, key: key.to_string() });
    }
    UnparsedPublicKey::new(&ED25519, key.bytes())
        .verify(&message(&package.manifest_bytes, &package.component), sig)
        .map_err(|_| PackageError::BadSignature(name))?;
    let digest = package.digest();
    Ok(VerifiedPlugin { package, digest })
}

pub(crate) fn to_hex(b: &[u8]) -> String {
    const D: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(b.len() * 2);
    for x in b {
        s.push(D[usize::from(x >> 4)] as char);
        s.push(D[usize::from(x & 15)] as char);
    }
    s
}

fn from_hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest() -> Manifest {
        Manifest {
            name: "demo".into(),
            version: "1.0.0".into(),
            hook: Hook::Spd,
            capabilities: vec![],
            description: String::new(),
        }
    }

    #[test]
    fn sign_then_verify_round_trips() {
        let (sk, pk) = generate_key().unwrap();
        let pkg =
            sign(Package::unsigned(manifest(), b"\0asm component".to_vec()).unwrap(), &sk).unwrap();
        let bytes = pkg.to_bytes();
        let v = verify(&bytes, std::slice::from_ref(&pk)).unwrap();
        assert_eq!(v.manifest().name, "demo");
        assert_eq!(v.component(), b"\0asm component");
        assert_eq!(v.digest().len(), 64);
        // Keys survive their text form.
        assert_eq!(PublicKey::parse(&pk.to_string()).unwrap(), pk);
        assert_eq!(SecretKey::parse(&sk.to_text()).unwrap().public_key().unwrap(), pk);
        assert_eq!(format!("{sk:?}"), "SecretKey(<redacted>)");
    }

    #[test]
    fn unsigned_tampered_and_foreign_packages_are_refused() {
        let (sk, pk) = generate_key().unwrap();
        let (_, other) = generate_key().unwrap();
        let unsigned = Package::unsigned(manifest(), b"code".to_vec()).unwrap();
        let e = verify(&unsigned.to_bytes(), std::slice::from_ref(&pk)).unwrap_err();
        assert_eq!(
            e.to_string(),
            "plugin `demo` is not signed; sign it with `isthmus plugin sign`"
        );

        let signed = sign(unsigned, &sk).unwrap().to_bytes();
        let e = verify(&signed, std::slice::from_ref(&other)).unwrap_err();
        assert!(e.to_string().contains("is not a trusted key"), "{e}");

        let mut tampered = signed.clone();
        let last = tampered.len() - 1;
        tampered[last] ^= 1;
        let e = verify(&tampered, std::slice::from_ref(&pk)).unwrap_err();
        assert_eq!(
            e.to_string(),
            "plugin `demo` has a bad signature: the package was modified after it was signed"
        );

        // Changing the manifest (here its version) breaks the signature too.
        let mut edited = signed.clone();
        let at = edited.windows(5).position(|w| w == b"1.0.0").unwrap();
        edited[at..at + 5].copy_from_slice(b"6.6.6");
        let e = verify(&edited, &[pk]).unwrap_err();
        assert!(matches!(e, PackageError::BadSignature(_)), "{e}");

        let e = verify(b"\0asm\x0d\0\x01\0", &[]).unwrap_err();
        assert!(e.to_string().contains("missing the ISTHMUS-PLUGIN header"), "{e}");
    }

    #[test]
    fn manifests_are_validated() {
        let mut m = manifest();
        m.name = "Bad Name".into();
        assert!(Package::unsigned(m, vec![1]).unwrap_err().to_string().contains("lowercase"));
        let json = br#"{"name":"x","version":"1","hook":"spd","capabilities":["network"]}"#;
        assert!(serde_json::from_slice::<Manifest>(json).is_err());
    }
}

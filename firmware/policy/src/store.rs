//! Plugin packages kept in a sled tree the caller provides, by digest, with the history of
//! activations so that a bad upgrade can be rolled back.
//!
//! Keys: `pkg/<digest>` holds a package's bytes; `plugin/<name>` a JSON record of the plugin's
//! versions (digest, version, hook) and its activation stack (the active one last). Packages are
//! stored only after verification and are verified again when loaded ([`PluginStore::load`]), so a
//! key removed from the trusted set stops its plugins at the next start.

use serde::{Deserialize, Serialize};

use crate::package::{Hook, PublicKey, VerifiedPlugin, verify};
use crate::{PolicyError, Result};

/// Versions kept per plugin (the active one, those the caller keeps and the one just stored are
/// never pruned, so a plugin can hold more).
pub const MAX_VERSIONS: usize = 8;

/// One stored version of a plugin.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionInfo {
    /// Package digest.
    pub digest: String,
    /// The manifest's version.
    pub version: String,
    /// The manifest's hook.
    pub hook: Hook,
}

/// A plugin as listed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PluginInfo {
    /// Its name.
    pub name: String,
    /// The active version's digest, if any.
    pub active: Option<String>,
    /// Stored versions, oldest first.
    pub versions: Vec<VersionInfo>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct Record {
    versions: Vec<VersionInfo>,
    /// Activation history; the last is active.
    activations: Vec<String>,
}

/// The plugin store over a sled tree.
#[derive(Clone, Debug)]
pub struct PluginStore {
    tree: sled::Tree,
}

fn db(e: impl std::fmt::Display) -> PolicyError {
    PolicyError::Backend(e.to_string())
}

impl PluginStore {
    /// A store over `tree` (a tree of the configuration database, for example `plugins`).
    pub fn new(tree: sled::Tree) -> PluginStore {
        PluginStore { tree }
    }

    fn record(&self, name: &str) -> Result<Option<Record>> {
        match self.tree.get(format!("plugin/{name}")).map_err(db)? {
            Some(v) => Ok(Some(serde_json::from_slice(&v).map_err(db)?)),
            None => Ok(None),
        }
    }

    fn save(&self, name: &str, r: &Record) -> Result<()> {
        self.tree
            .insert(format!("plugin/{name}"), serde_json::to_vec(r).map_err(db)?)
            .map_err(db)?;
        self.tree.flush().map_err(db)?;
        Ok(())
    }

    /// Stores a verified package (idempotent). Returns its digest. A plugin keeps one hook: a
    /// package for another hook under the same name is refused.
    pub fn put(&self, plugin: &VerifiedPlugin) -> Result<String> {
        self.put_keeping(plugin, &[])
    }

    /// [`PluginStore::put`], never pruning the versions in `keep` (the builds a configuration
    /// pins: pruning one would silently switch its hook to the default).
    pub fn put_keeping(&self, plugin: &VerifiedPlugin, keep: &[String]) -> Result<String> {
        let m = plugin.manifest();
        let digest = plugin.digest().to_owned();
        let mut r = self.record(&m.name)?.unwrap_or_default();
        if let Some(v) = r.versions.first()
            && v.hook != m.hook
        {
            return Err(PolicyError::HookMismatch {
                name: m.name.clone(),
                stored: v.hook.name(),
                package: m.hook.name(),
            });
        }
        self.tree.insert(format!("pkg/{digest}"), plugin.package().to_bytes()).map_err(db)?;
        if !r.versions.iter().any(|v| v.digest == digest) {
            r.versions.push(VersionInfo {
                digest: digest.clone(),
                version: m.version.clone(),
                hook: m.hook,
            });
            // Prune the oldest versions that are neither active nor kept, never the one just
            // stored; when every older one is active or kept, the plugin keeps more than
            // MAX_VERSIONS.
            while r.versions.len() > MAX_VERSIONS {
                let active = r.activations.last().cloned();
                let older = &r.versions[..r.versions.len() - 1];
                let Some(i) = older
                    .iter()
                    .position(|v| Some(&v.digest) != active.as_ref() && !keep.contains(&v.digest))
                else {
                    break;
                };
                let gone = r.versions.remove(i);
                r.activations.retain(|d| *d != gone.digest);
                self.tree.remove(format!("pkg/{}", gone.digest)).map_err(db)?;
            }
        }
        self.save(&m.name, &r)?;
        Ok(digest)
    }

    /// Makes `digest` the active version of `name`.
    pub fn activate(&self, name: &str, digest: &str) -> Result<()> {
        let mut r = self.record(name)?.ok_or_else(|| unknown(name))?;
        if !r.versions.iter().any(|v| v.digest == digest) {
            return Err(PolicyError::NoSuchVersion { name: name.into(), digest: digest.into() });
        }
        if r.activations.last().map(String::as_str) != Some(digest) {
            r.activations.push(digest.to_owned());
        }
        self.save(name, &r)
    }

    /// Re-activates the version active before the current one. Returns its digest.
    pub fn rollback(&self, name: &str) -> Result<String> {
        let mut r = self.record(name)?.ok_or_else(|| unknown(name))?;
        if r.activations.len() < 2 {
            return Err(PolicyError::NoPreviousVersion(name.into()));
        }
        r.activations.pop();
        let d = r.activations.last().cloned().unwrap_or_default();
        self.save(name, &r)?;
        Ok(d)
    }

    /// Removes one version (not the active one), or with `None` the whole plugin.
    pub fn remove(&self, name: &str, digest: Option<&str>) -> Result<()> {
        let mut r = self.record(name)?.ok_or_else(|| unknown(name))?;
        match digest {
            Some(d) => {
                if r.activations.last().map(String::as_str) == Some(d) {
                    return Err(PolicyError::InUse { name: name.into(), digest: d.into() });
                }
                let before = r.versions.len();
                r.versions.retain(|v| v.digest != d);
                if r.versions.len() == before {
                    return Err(PolicyError::NoSuchVersion { name: name.into(), digest: d.into() });
                }
                r.activations.retain(|x| x != d);
                self.tree.remove(format!("pkg/{d}")).map_err(db)?;
                self.save(name, &r)
            }
            None => {
                for v in &r.versions {
                    self.tree.remove(format!("pkg/{}", v.digest)).map_err(db)?;
                }
                self.tree.remove(format!("plugin/{name}")).map_err(db)?;
                self.tree.flush().map_err(db)?;
                Ok(())
            }
        }
    }

    /// Every plugin, by name.
    pub fn list(&self) -> Result<Vec<PluginInfo>> {
        let mut out = Vec::new();
        for kv in self.tree.scan_prefix("plugin/") {
            let (k, v) = kv.map_err(db)?;
            let name = String::from_utf8_lossy(&k["plugin/".len()..]).into_owned();
            let r: Record = serde_json::from_slice(&v).map_err(db)?;
            out.push(PluginInfo {
                name,
                active: r.activations.last().cloned(),
                versions: r.versions,
            });
        }
        Ok(out)
    }

    /// The active version of `name`, verified again against `trusted`.
    pub fn load(&self, name: &str, trusted: &[PublicKey]) -> Result<Option<VerifiedPlugin>> {
        let Some(r) = self.record(name)? else { return Ok(None) };
        let Some(d) = r.activations.last() else { return Ok(None) };
        self.package(name, d, trusted).map(Some)
    }

    /// Stored version `digest` of `name`, active or not, verified again against `trusted`
    /// (a configuration's `[[plugin]]` binding pins one build by digest). `None` when `name`
    /// has no such version.
    pub fn load_version(
        &self,
        name: &str,
        digest: &str,
        trusted: &[PublicKey],
    ) -> Result<Option<VerifiedPlugin>> {
        let Some(r) = self.record(name)? else { return Ok(None) };
        if !r.versions.iter().any(|v| v.digest == digest) {
            return Ok(None);
        }
        self.package(name, digest, trusted).map(Some)
    }

    fn package(&self, name: &str, digest: &str, trusted: &[PublicKey]) -> Result<VerifiedPlugin> {
        let bytes = self.tree.get(format!("pkg/{digest}")).map_err(db)?.ok_or_else(|| {
            PolicyError::Backend(format!("package {digest} of `{name}` is missing"))
        })?;
        Ok(verify(&bytes, trusted)?)
    }
}

fn unknown(name: &str) -> PolicyError {
    PolicyError::NoSuchPlugin(name.into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::package::{Manifest, Package, generate_key, sign};

    fn pkg(version: &str, code: &[u8], key: &crate::package::SecretKey) -> Vec<u8> {
        let m = Manifest {
            name: "sg".into(),
            version: version.into(),
            hook: Hook::SecurityGroup,
            capabilities: vec![],
            description: String::new(),
        };
        sign(Package::unsigned(m, code.to_vec()).unwrap(), key).unwrap().to_bytes()
    }

    /// A store in a fresh database (the directory and database too, to reopen it), a signing
    /// key and the trusted set holding its public half.
    fn fresh()
    -> (tempfile::TempDir, sled::Db, PluginStore, crate::package::SecretKey, [PublicKey; 1]) {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::open(dir.path()).unwrap();
        let store = PluginStore::new(db.open_tree("plugins").unwrap());
        let (sk, pk) = generate_key().unwrap();
        (dir, db, store, sk, [pk])
    }

    #[test]
    fn activate_rollback_remove_list() {
        let (dir, db, store, sk, trusted) = fresh();
        let v1 = verify(&pkg("1", b"one", &sk), &trusted).unwrap();
        let v2 = verify(&pkg("2", b"two", &sk), &trusted).unwrap();
        let d1 = store.put(&v1).unwrap();
        let d2 = store.put(&v2).unwrap();
        assert!(store.load("sg", &trusted).unwrap().is_none(), "nothing active yet");
        store.activate("sg", &d1).unwrap();
        store.activate("sg", &d2).unwrap();
        assert_eq!(store.load("sg", &trusted).unwrap().unwrap().manifest().version, "2");
        assert_eq!(store.rollback("sg").unwrap(), d1);
        assert_eq!(store.load("sg", &trusted).unwrap().unwrap().manifest().version, "1");
        // A pinned version loads whether it is active or not; an unknown one is `None`.
        let pinned = store.load_version("sg", &d2, &trusted).unwrap().unwrap();
        assert_eq!((pinned.digest(), pinned.manifest().version.as_str()), (d2.as_str(), "2"));
        assert!(store.load_version("sg", &"0".repeat(64), &trusted).unwrap().is_none());
        assert!(store.load_version("other", &d2, &trusted).unwrap().is_none());
        let e = store.rollback("sg").unwrap_err();
        assert_eq!(
            e.to_string(),
            "plugin store: plugin `sg` has no previous version to roll back to"
        );
        let e = store.remove("sg", Some(&d1)).unwrap_err();
        assert!(e.to_string().contains("is active"), "{e}");
        store.remove("sg", Some(&d2)).unwrap();
        let list = store.list().unwrap();
        assert_eq!(list.len(), 1);
        assert_eq!(list[0].active.as_deref(), Some(d1.as_str()));
        assert_eq!(list[0].versions.len(), 1);
        // A key dropped from the trusted set stops the stored plugin from loading.
        let (_, other) = generate_key().unwrap();
        assert!(matches!(
            store.load("sg", &[other]),
            Err(PolicyError::Package(crate::PackageError::UntrustedKey { .. }))
        ));
        store.remove("sg", None).unwrap();
        assert!(store.list().unwrap().is_empty());
        // Survives a reopen.
        let v = verify(&pkg("3", b"three", &sk), &trusted).unwrap();
        let d3 = store.put(&v).unwrap();
        store.activate("sg", &d3).unwrap();
        drop(store);
        drop(db);
        let db = sled::open(dir.path()).unwrap();
        let store = PluginStore::new(db.open_tree("plugins").unwrap());
        assert_eq!(store.load("sg", &trusted).unwrap().unwrap().digest(), d3);
    }

    #[test]
    fn pruning_spares_the_active_and_kept_versions() {
        let (_dir, _db, store, sk, trusted) = fresh();
        let stored = || -> Vec<String> {
            store.list().unwrap()[0].versions.iter().map(|v| v.digest.clone()).collect()
        };
        let put = |n: usize, keep: &[String]| {
            let v = verify(&pkg(&n.to_string(), n.to_string().as_bytes(), &sk), &trusted);
            store.put_keeping(&v.unwrap(), keep).unwrap()
        };
        let active = put(0, &[]);
        store.activate("sg", &active).unwrap();
        let pinned = put(1, &[]);
        let keep = [pinned.clone()];
        let newer: Vec<String> = (2..2 + 2 * MAX_VERSIONS).map(|n| put(n, &keep)).collect();
        let kept = stored();
        assert_eq!(kept.len(), MAX_VERSIONS);
        assert_eq!(&kept[..2], &[active.clone(), pinned.clone()], "active and pinned stay");
        assert_eq!(&kept[2..], &newer[newer.len() - (MAX_VERSIONS - 2)..], "then the newest");
        assert!(store.load_version("sg", &pinned, &trusted).unwrap().is_some());
        // Without the pin it is the oldest prunable version and goes first.
        put(99, &[]);
        assert!(store.load_version("sg", &pinned, &trusted).unwrap().is_none());
        assert_eq!(store.load("sg", &trusted).unwrap().unwrap().digest(), active);
        // Every stored version kept: a new upload is stored beyond the limit, not dropped.
        let extra = put(100, &stored());
        assert_eq!(store.list().unwrap()[0].versions.len(), MAX_VERSIONS + 1);
        assert!(store.load_version("sg", &extra, &trusted).unwrap().is_some());
    }
}

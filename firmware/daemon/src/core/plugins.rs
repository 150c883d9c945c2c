//! The plugin store's side of the core: uploads, activation, rollback and removal of plugin
//! versions, and the builds the configuration pins.

use std::sync::Arc;
use std::time::Instant;

use isthmus_api::{self as api, EventKind, Severity};
use isthmus_config::Config;

use super::{Core, CoreError, Reply, message};

/// Policy library errors by kind: a refused package (with the library's message)
/// (unsigned, tampered, untrusted, wrong world), an unknown plugin, a store conflict.
pub(super) fn plugin_failure(e: isthmus_policy::PolicyError) -> CoreError {
    use isthmus_policy::PolicyError as E;
    match e {
        e @ E::NoSuchPlugin(_) => CoreError::not_found(e.to_string()),
        e @ (E::NoSuchVersion { .. }
        | E::NoPreviousVersion(_)
        | E::InUse { .. }
        | E::HookMismatch { .. }) => CoreError::conflict(e.to_string()),
        e @ E::Backend(_) => CoreError::internal(e.to_string()),
        e @ (E::Engine(_) | E::Fault { .. } | E::Quarantined { .. }) => {
            CoreError::internal(e.to_string())
        }
        e => CoreError::PluginRefused(e.to_string()),
    }
}

/// A `[[plugin]]` binding's pinned build.
pub(super) struct Pin {
    binding: String,
    /// In the store's form ([`crate::policy::pinned_digest`]).
    digest: String,
    enabled: bool,
    /// In the applied configuration (else in the one a pending commit-confirm would restore).
    applied: bool,
}

impl Core {
    /// The builds configurations pin: the applied one's and, while a commit-confirm is pending,
    /// those of the revision a revert would restore. Disabled bindings count: enabling one again
    /// must find its build.
    pub(super) fn pins(&self) -> Vec<Pin> {
        let pending = self.store.pending().ok().flatten();
        let restore = pending.and_then(|p| self.store.get(p.previous).ok()?.config().ok());
        let pins = |cfg: &Config, applied: bool| -> Vec<Pin> {
            let pin = |b: &isthmus_config::Plugin| Pin {
                binding: b.name.clone(),
                digest: crate::policy::pinned_digest(b),
                enabled: b.enabled,
                applied,
            };
            cfg.plugins.iter().map(pin).collect()
        };
        let mut all = self.applied().map_or_else(Vec::new, |(_, c)| pins(&c, true));
        all.extend(restore.map_or_else(Vec::new, |c| pins(&c, false)));
        all
    }

    /// After a plugin change: the plugin of each hook is selected again and the tables
    /// recompiled; what changed is appended to `m`.
    pub(super) fn policy_refresh(&self, m: &mut String) {
        if let Some((_, cfg)) = self.applied() {
            for l in self.policy.reselect(&cfg, &crate::policy::trusted_keys(&cfg)) {
                m.push('\n');
                m.push_str(&l);
            }
        }
    }

    /// `GET /plugins`: every stored version of every plugin.
    pub fn plugins(&self) -> Result<Vec<api::Plugin>, CoreError> {
        let list = self.plugins.list().map_err(plugin_failure)?;
        Ok(list
            .into_iter()
            .flat_map(|p| {
                let active = p.active.clone();
                p.versions.into_iter().map(move |v| api::Plugin {
                    name: p.name.clone(),
                    version: v.version,
                    hook: v.hook.name().to_owned(),
                    active: active.as_deref() == Some(v.digest.as_str()),
                    signer: self.plugin_signer(&v.digest),
                    quarantined: self.policy.quarantined(&v.digest),
                    digest: v.digest,
                })
            })
            .collect())
    }

    /// `POST /plugins`: verifies the package against the applied configuration's trusted keys,
    /// compiles it with the policy host (imports, exports: the hook's world), and stores it. It
    /// is not activated.
    pub fn plugin_upload(&self, bytes: &[u8], who: &str) -> Result<api::Plugin, CoreError> {
        if bytes.len() > isthmus_policy::package::MAX_PACKAGE {
            return Err(CoreError::TooLarge(format!(
                "plugin package larger than {} MiB",
                isthmus_policy::package::MAX_PACKAGE >> 20
            )));
        }
        let trusted = self.trusted_keys();
        let refuse = |e: isthmus_policy::PolicyError| {
            self.events.emit(EventKind::PluginRefused, "plugins", Severity::Warning, e.to_string());
            plugin_failure(e)
        };
        let verified = isthmus_policy::verify(bytes, &trusted).map_err(|e| refuse(e.into()))?;
        let host = self.policy.host();
        let clock: Arc<dyn isthmus_policy::Clock> =
            Arc::new(isthmus_policy::SystemClock::default());
        let t0 = Instant::now();
        host.load(&verified, "", Some(clock)).map_err(refuse)?;
        let compile_ms = t0.elapsed().as_millis();
        // Pinned builds are never pruned to make room.
        let pins = self.pins();
        let keep: Vec<String> = pins.iter().map(|p| p.digest.clone()).collect();
        let digest = self.plugins.put_keeping(&verified, &keep).map_err(plugin_failure)?;
        let m = verified.manifest();
        let active = self
            .plugins
            .list()
            .map_err(plugin_failure)?
            .iter()
            .any(|p| p.name == m.name && p.active.as_deref() == Some(digest.as_str()));
        let signer = verified.package().signer().map(|k| k.to_string()).unwrap_or_default();
        // A build the applied configuration pins runs as soon as it is in the store.
        if pins.iter().any(|p| p.applied && p.enabled && p.digest == digest) {
            let mut lines = String::new();
            self.policy_refresh(&mut lines);
            tracing::info!(plugin = %m.name, "pinned build uploaded; hooks selected again{lines}");
        }
        self.events.emit(
            EventKind::PluginUploaded,
            &m.name,
            Severity::Info,
            format!(
                "plugin `{}` {} ({} hook, signed by {signer}) uploaded by {who}; digest {digest}, \
                 compiled in {compile_ms} ms",
                m.name,
                m.version,
                m.hook.name()
            ),
        );
        Ok(api::Plugin {
            name: m.name.clone(),
            version: m.version.clone(),
            hook: m.hook.name().to_owned(),
            digest,
            signer,
            active,
            quarantined: None,
        })
    }

    /// `GET /plugins/hooks`: what runs for each policy hook.
    pub fn plugin_hooks(&self) -> Vec<api::PluginHook> {
        self.policy.hooks()
    }

    /// The trusted plugin signing keys of the applied configuration (malformed ones skipped:
    /// validation reports them).
    pub(super) fn trusted_keys(&self) -> Vec<isthmus_policy::PublicKey> {
        self.applied().map(|(_, cfg)| crate::policy::trusted_keys(&cfg)).unwrap_or_default()
    }

    /// The key that signed stored package `digest` (empty if unreadable).
    pub(super) fn plugin_signer(&self, digest: &str) -> String {
        self.plugin_tree
            .get(format!("pkg/{digest}"))
            .ok()
            .flatten()
            .and_then(|b| isthmus_policy::Package::parse(&b).ok())
            .and_then(|p| p.signer().map(|k| k.to_string()))
            .unwrap_or_default()
    }

    /// The plugin name and version a stored digest belongs to.
    pub(super) fn plugin_by_digest(&self, digest: &str) -> Result<(String, String), CoreError> {
        for p in self.plugins.list().map_err(plugin_failure)? {
            if let Some(v) = p.versions.iter().find(|v| v.digest == digest) {
                return Ok((p.name, v.version.clone()));
            }
        }
        Err(CoreError::not_found(format!(
            "no stored plugin version has digest `{digest}` (see `isthmus plugin list`)"
        )))
    }

    pub(super) fn plugin_activate(&self, digest: &str, who: &str) -> Result<Reply, CoreError> {
        let (name, version) = self.plugin_by_digest(digest)?;
        self.plugins.activate(&name, digest).map_err(plugin_failure)?;
        let mut m = format!("activated plugin `{name}` {version} ({digest})");
        self.policy_refresh(&mut m);
        self.events.emit(
            EventKind::PluginActivated,
            &name,
            Severity::Info,
            format!("{m} by {who}"),
        );
        Ok(message(m))
    }

    pub(super) fn plugin_rollback(&self, name: &str, who: &str) -> Result<Reply, CoreError> {
        let digest = self.plugins.rollback(name).map_err(plugin_failure)?;
        let mut m = format!("plugin `{name}` rolled back to {digest}");
        self.policy_refresh(&mut m);
        self.events.emit(
            EventKind::PluginRolledBack,
            name,
            Severity::Info,
            format!("{m} by {who}"),
        );
        Ok(message(m))
    }

    pub(super) fn plugin_remove(&self, digest: &str, who: &str) -> Result<Reply, CoreError> {
        let (name, version) = self.plugin_by_digest(digest)?;
        if let Some(pin) = self.pins().into_iter().find(|p| p.digest == digest) {
            let (binding, state) = (pin.binding, if pin.enabled { "" } else { " (disabled)" });
            return Err(CoreError::conflict(format!(
                "version {version} ({digest}) of plugin `{name}` is pinned by plugin \
                     binding `{binding}`{state} of the applied configuration or the one a \
                     pending commit-confirm would restore; commit a configuration without \
                     that pin first"
            )));
        }
        self.plugins.remove(&name, Some(digest)).map_err(plugin_failure)?;
        let mut m = format!("removed version {version} ({digest}) of plugin `{name}`");
        self.policy_refresh(&mut m);
        self.events.emit(EventKind::PluginRemoved, &name, Severity::Info, format!("{m} by {who}"));
        Ok(message(m))
    }
}

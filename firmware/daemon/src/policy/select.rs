//! Which plugin runs for each hook (see the module documentation of [`crate::policy`]): the
//! pinned or active upload, the bundled default, or the builtin; and loading them.

use super::*;

pub(super) fn bundled_component(h: Hook) -> (&'static str, &'static [u8]) {
    match h {
        Hook::Spd => ("spd-selectors", bundled::SPD),
        Hook::SecurityGroup => ("security-group", bundled::SECURITY_GROUP),
        Hook::Alarm => ("alarm-notify", bundled::ALARM),
    }
}

/// The uploaded build a hook is to run.
pub(super) struct Chosen {
    name: String,
    digest: String,
    /// Already read and verified (a pinned build whose signer was checked).
    verified: Option<isthmus_policy::VerifiedPlugin>,
    /// Its configuration text (the binding's `config`).
    config: String,
}

/// [`Policy::pick`]'s answer.
pub(super) struct Pick {
    /// `None`: the hook's default (bundled or builtin).
    chosen: Option<Chosen>,
    /// For the hook's status.
    note: Option<String>,
    /// Pins that could not be honoured, and why.
    refused: Vec<String>,
}

/// The store's form of the digest a binding pins: lowercase hex, without `sha256:`.
pub fn pinned_digest(b: &isthmus_config::Plugin) -> String {
    b.digest.strip_prefix("sha256:").unwrap_or(&b.digest).to_ascii_lowercase()
}

/// A digest's first 12 hex digits, as `sha256:0123456789ab`.
pub(super) fn short(digest: &str) -> String {
    let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
    format!("sha256:{}", hex.get(..12).unwrap_or(hex))
}

pub(super) fn join_notes(notes: Vec<String>) -> Option<String> {
    (!notes.is_empty()).then(|| notes.join("; "))
}

/// The name of the configuration's trusted key `k`.
pub(super) fn key_name(cfg: &Config, k: &PublicKey) -> Option<String> {
    cfg.trusted_keys
        .iter()
        .find(|t| trusted_keys_of(std::slice::from_ref(*t)).first() == Some(k))
        .map(|t| t.name.clone())
}

pub(super) fn config_hook(h: isthmus_config::Hook) -> Hook {
    match h {
        isthmus_config::Hook::Spd => Hook::Spd,
        isthmus_config::Hook::SecurityGroup => Hook::SecurityGroup,
        isthmus_config::Hook::Alarm => Hook::Alarm,
    }
}

/// The trusted plugin signing keys of `cfg` (malformed ones skipped: validation reports them).
pub fn trusted_keys(cfg: &Config) -> Vec<PublicKey> {
    trusted_keys_of(&cfg.trusted_keys)
}

pub(super) fn trusted_keys_of(keys: &[isthmus_config::TrustedKey]) -> Vec<PublicKey> {
    keys.iter()
        .filter_map(|k| k.key_bytes())
        .filter_map(|b| PublicKey::parse(&format!("ed25519:{}", hex::encode(b))).ok())
        .collect()
}

impl Policy {
    /// Chooses and loads the plugin of each hook; returns lines for what changed.
    pub(super) fn select(&self, cfg: &Config, trusted: &[PublicKey]) -> Vec<String> {
        let mut lines = Vec::new();
        let listed = match self.store.list() {
            Ok(l) => l,
            Err(e) => {
                tracing::error!("listing the plugin store: {e}");
                Vec::new()
            }
        };
        for h in HOOKS {
            let pick = self.pick(h, cfg, &listed, trusted);
            let current = lock(&self.hooks)[idx(h)].clone();
            // A pin that cannot be honoured is said once, when the hook's note changes.
            if !pick.refused.is_empty() && current.note != pick.note {
                for why in &pick.refused {
                    tracing::warn!(hook = h.name(), "{why}");
                    self.events.emit(
                        EventKind::PluginPin,
                        h.name(),
                        Severity::Warning,
                        why.clone(),
                    );
                    lines.push(format!("policy: {why}"));
                }
            }
            let Pick { chosen, note, .. } = pick;
            // What to install (`None`: the builtin). Loading runs without the hook lock (it
            // takes seconds under TCG); installing and recording the state happen under it.
            let result = match &chosen {
                Some(c) => {
                    if current.digest.as_deref() == Some(&c.digest) {
                        lock(&self.hooks)[idx(h)].note = note;
                        continue;
                    }
                    self.load_uploaded(h, c, trusted).map(|(st, l)| (st, Some(l)))
                }
                None => {
                    let (_, wasm) = bundled_component(h);
                    if wasm.is_empty() {
                        if current.source == Source::Builtin {
                            lock(&self.hooks)[idx(h)].note = note;
                            continue;
                        }
                        Ok((HookState::default(), None))
                    } else {
                        if current.source == Source::Bundled {
                            lock(&self.hooks)[idx(h)].note = note;
                            continue;
                        }
                        // Compiling a component takes 0.2 s here and seconds under QEMU's
                        // TCG: the builtin tables (same semantics) serve until it is done.
                        let start = {
                            let mut hooks = lock(&self.hooks);
                            if hooks[idx(h)].source != Source::Builtin {
                                // An uploaded plugin was removed: builtin until the bundled
                                // loads.
                                self.sup.uninstall(h);
                                let published = hooks[idx(h)].published;
                                hooks[idx(h)] = HookState { published, ..HookState::default() };
                            }
                            hooks[idx(h)].note = note;
                            // `pending` is set and cleared under the hook lock, so a loader
                            // either decides after this state change or a new one starts.
                            let start = !self.pending[idx(h)].swap(true, Ordering::AcqRel);
                            if start {
                                self.loading[idx(h)].fetch_add(1, Ordering::AcqRel);
                            }
                            start
                        };
                        if start {
                            self.load_bundled_in_background(h, cfg.clone());
                            lines.push(format!(
                                "policy: hook {} compiles the bundled {} in the background \
                                 (builtin tables meanwhile)",
                                h.name(),
                                bundled_component(h).0
                            ));
                        }
                        continue;
                    }
                }
            };
            self.checkpoint(h, Checkpoint::UploadedLoaded);
            match result {
                Ok((mut st, loaded)) => {
                    st.note = note;
                    lines.push(format!(
                        "policy: hook {} runs {} ({})",
                        h.name(),
                        st.plugin,
                        st.source.name()
                    ));
                    let replaced = {
                        // One step under the hook lock: a background load of the bundled
                        // plugin checks the hook's source under it before installing, so it
                        // can never replace what is installed here.
                        let mut hooks = lock(&self.hooks);
                        st.published = hooks[idx(h)].published;
                        st.fallback = hooks[idx(h)].fallback;
                        hooks[idx(h)] = st;
                        match loaded {
                            Some(l) => self.sup.install(l),
                            None => self.sup.uninstall(h),
                        }
                    };
                    drop(replaced);
                    // Replaced or rolled back: a fault of the one before no longer holds.
                    self.alarms.plugin_recovered(plugin_name(&current.plugin));
                }
                Err(e) => {
                    let msg = format!(
                        "plugin for hook `{}` could not be loaded, {} stays in force: {e}",
                        h.name(),
                        current.plugin
                    );
                    self.fault_event(chosen.as_ref().map_or("bundled", |c| c.name.as_str()), &msg);
                    let mut hooks = lock(&self.hooks);
                    hooks[idx(h)].last_error = Some(msg.clone());
                    hooks[idx(h)].note = note;
                    lines.push(format!("policy: {msg}"));
                }
            }
        }
        lines
    }

    pub(super) fn plugin_config(cfg: &Config, name: &str) -> String {
        cfg.plugins
            .iter()
            .find(|b| b.enabled && b.plugin == name)
            .map(|b| b.config.to_string())
            .unwrap_or_default()
    }

    /// What hook `h` runs. A hook the configuration binds (an enabled `[[plugin]]` of that
    /// hook) runs only a build a binding pins: the first binding whose `digest` is in the store
    /// and whose signer its `signed_by` allows, active or not; with none, the hook's default
    /// (bundled or builtin), never an unpinned upload. An unbound hook runs the active upload
    /// (the first by name when several are active), else its default.
    pub(super) fn pick(
        &self,
        h: Hook,
        cfg: &Config,
        listed: &[isthmus_policy::PluginInfo],
        trusted: &[PublicKey],
    ) -> Pick {
        let mut active: Vec<(String, String)> = listed
            .iter()
            .filter_map(|p| {
                let d = p.active.as_ref()?;
                let v = p.versions.iter().find(|v| &v.digest == d)?;
                (v.hook == h).then(|| (p.name.clone(), d.clone()))
            })
            .collect();
        active.sort();
        let bindings: Vec<&isthmus_config::Plugin> =
            cfg.plugins.iter().filter(|b| b.enabled && config_hook(b.hook) == h).collect();
        if bindings.is_empty() {
            let note = (active.len() > 1).then(|| {
                format!(
                    "{} plugins of this hook are active ({}); `{}` runs. Bind one with a \
                     [[plugin]] entry in the configuration",
                    active.len(),
                    active.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>().join(", "),
                    active[0].0
                )
            });
            let chosen = active.into_iter().next().map(|(name, digest)| Chosen {
                config: Self::plugin_config(cfg, &name),
                name,
                digest,
                verified: None,
            });
            return Pick { chosen, note, refused: Vec::new() };
        }
        let mut refused = Vec::new();
        for b in bindings {
            let digest = pinned_digest(b);
            let pin = format!("binding `{}` pins `{}` {}", b.name, b.plugin, short(&digest));
            let info = listed.iter().find(|p| p.name == b.plugin);
            let stored = info.and_then(|p| p.versions.iter().find(|v| v.digest == digest));
            match stored {
                None => {
                    refused.push(format!("{pin}, which is not in the plugin store"));
                    continue;
                }
                Some(v) if v.hook != h => {
                    refused.push(format!("{pin}, a `{}` plugin: not run", v.hook.name()));
                    continue;
                }
                Some(_) => {}
            }
            // Only a signer restriction needs the package read and verified here; otherwise
            // `load_uploaded` reads it when the hook changes build, not at every refresh.
            let mut verified = None;
            if !b.signed_by.is_empty() {
                let v = match self.store.load_version(&b.plugin, &digest, trusted) {
                    Ok(Some(v)) => v,
                    Ok(None) => {
                        refused.push(format!("{pin}, which is not in the plugin store"));
                        continue;
                    }
                    Err(e) => {
                        refused.push(format!("{pin}, which does not load: {e}"));
                        continue;
                    }
                };
                let signer = v.package().signer();
                let name = signer.and_then(|k| key_name(cfg, k));
                if !name.as_ref().is_some_and(|n| b.signed_by.contains(n)) {
                    let by = match (name, signer) {
                        (Some(n), _) => format!("key `{n}`"),
                        (None, Some(k)) => k.to_string(),
                        (None, None) => "no key".into(),
                    };
                    refused.push(format!(
                        "{pin}, signed by {by}; the binding takes only builds signed by {}: \
                         not run",
                        b.signed_by.iter().map(|k| format!("`{k}`")).collect::<Vec<_>>().join(", ")
                    ));
                    continue;
                }
                verified = Some(v);
            }
            let mut notes = refused.clone();
            match info.and_then(|p| p.active.as_deref()) {
                Some(a) if a == digest => {}
                Some(a) => notes.push(format!(
                    "{pin}, which runs; the store's active version is {} (`plugin activate` \
                     does not override the configuration's pin)",
                    short(a)
                )),
                None => notes.push(format!("{pin}, which runs; it is not active in the store")),
            }
            let chosen =
                Chosen { name: b.plugin.clone(), digest, verified, config: b.config.to_string() };
            return Pick { chosen: Some(chosen), note: join_notes(notes), refused };
        }
        let mut notes = refused.clone();
        notes.push(match active.first() {
            Some((n, _)) => format!(
                "the hook's default runs: the configuration binds this hook, so the active \
                 `{n}` does not run unpinned"
            ),
            None => "the hook's default runs".into(),
        });
        Pick { chosen: None, note: join_notes(notes), refused }
    }

    pub(super) fn load_uploaded(
        &self,
        h: Hook,
        c: &Chosen,
        trusted: &[PublicKey],
    ) -> Result<(HookState, isthmus_policy::LoadedPlugin), PolicyError> {
        let v = match &c.verified {
            Some(v) => v.clone(),
            None => self.store.load_version(&c.name, &c.digest, trusted)?.ok_or_else(|| {
                PolicyError::NoSuchVersion { name: c.name.clone(), digest: c.digest.clone() }
            })?,
        };
        let clock: Arc<dyn isthmus_policy::Clock> =
            Arc::new(isthmus_policy::SystemClock::default());
        let loaded = self.host.load(&v, &c.config, Some(clock))?;
        let st = HookState {
            source: Source::Uploaded,
            plugin: format!("{}@{}", v.manifest().name, v.manifest().version),
            digest: Some(v.digest().to_owned()),
            compile: Some(loaded.compile_time()),
            ..HookState::default()
        };
        tracing::info!(
            hook = h.name(),
            plugin = st.plugin,
            compile_ms = loaded.compile_time().as_millis() as u64,
            "plugin loaded"
        );
        Ok((st, loaded))
    }

    /// Loads the bundled plugin of `h` on a thread and installs it unless an uploaded plugin
    /// took the hook meanwhile; then recompiles that hook's table. The caller has set
    /// `pending[h]` and counted the loader in `loading[h]` under the hook lock.
    pub(super) fn load_bundled_in_background(&self, h: Hook, cfg: Config) {
        let me = self.me.clone();
        let spawned = std::thread::Builder::new().name("policy-load".into()).spawn(move || {
            let Some(p) = me.upgrade() else { return };
            let r = p.load_bundled(h, &cfg);
            p.checkpoint(h, Checkpoint::BundledLoaded);
            let mut hooks = lock(&p.hooks);
            // The decision and the install are one step under the hook lock, as is every
            // other change of the hook's plugin (see `select`): whatever took the hook while
            // the component compiled stays.
            p.pending[idx(h)].store(false, Ordering::Release);
            let installed = match r {
                Ok((st, loaded)) if hooks[idx(h)].source == Source::Builtin => {
                    tracing::info!(hook = h.name(), plugin = st.plugin, "bundled plugin loaded");
                    let (published, note) = (hooks[idx(h)].published, hooks[idx(h)].note.take());
                    hooks[idx(h)] = HookState { published, note, ..st };
                    p.sup.install(loaded);
                    true
                }
                Ok(_) => false,
                Err(e) => {
                    let msg = format!(
                        "the bundled plugin for hook `{}` could not be loaded, builtin stays in \
                         force: {e}",
                        h.name()
                    );
                    hooks[idx(h)].last_error = Some(msg.clone());
                    drop(hooks);
                    p.fault_event(bundled_component(h).0, &msg);
                    p.loading[idx(h)].fetch_sub(1, Ordering::AcqRel);
                    return;
                }
            };
            drop(hooks);
            if installed {
                p.compile(h == Hook::Spd, h == Hook::SecurityGroup);
            }
            p.loading[idx(h)].fetch_sub(1, Ordering::AcqRel);
        });
        if let Err(e) = spawned {
            tracing::error!("starting the plugin loader: {e}");
            let _hooks = lock(&self.hooks);
            self.pending[idx(h)].store(false, Ordering::Release);
            self.loading[idx(h)].fetch_sub(1, Ordering::AcqRel);
        }
    }

    pub(super) fn load_bundled(
        &self,
        h: Hook,
        cfg: &Config,
    ) -> Result<(HookState, isthmus_policy::LoadedPlugin), PolicyError> {
        let (name, wasm) = bundled_component(h);
        let m = Manifest {
            name: name.to_owned(),
            version: format!("{}-bundled", env!("CARGO_PKG_VERSION")),
            hook: h,
            capabilities: vec![],
            description: format!("the default {} plugin bundled with isthmusd", h.name()),
        };
        let pkg = isthmus_policy::sign(Package::unsigned(m, wasm.to_vec())?, &self.bundled_key.0)?;
        let v = isthmus_policy::verify(&pkg.to_bytes(), std::slice::from_ref(&self.bundled_key.1))?;
        let loaded = self.host.load(&v, &Self::plugin_config(cfg, name), None)?;
        let st = HookState {
            source: Source::Bundled,
            plugin: format!("{}@{}", v.manifest().name, v.manifest().version),
            digest: Some(v.digest().to_owned()),
            compile: Some(loaded.compile_time()),
            ..HookState::default()
        };
        Ok((st, loaded))
    }
}

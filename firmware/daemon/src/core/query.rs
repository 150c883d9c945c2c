//! The read side: plain synchronous functions returning `api` types, for the HTTP layer and the
//! CLI's views.

use std::time::SystemTime;

use isthmus_api as api;
use isthmus_config::Config;

use super::error::{issues, plan_issue, store_failure};
use super::{Core, CoreError, unix};

impl Core {
    /// `POST /config/validate`.
    pub fn validate(&self, text: &str) -> api::ValidateResponse {
        match Config::check(text) {
            Ok(c) => {
                let mut errors = issues(&c.config.check_secrets());
                errors.extend(plan_issue(&c.config));
                let interop = c
                    .config
                    .tunnels
                    .iter()
                    .map(|t| {
                        let (meets, misses) = isthmus_config::interop::meets(t);
                        api::TunnelInterop { tunnel: t.name.clone(), meets, misses }
                    })
                    .collect();
                api::ValidateResponse {
                    ok: errors.is_empty(),
                    errors,
                    warnings: issues(&c.warnings),
                    interop,
                }
            }
            Err(e) => api::ValidateResponse {
                ok: false,
                errors: issues(e.issues()),
                warnings: vec![],
                interop: vec![],
            },
        }
    }

    /// `POST /config/diff`: the document's differences from the active revision.
    pub fn diff_against_active(&self, text: &str) -> Result<String, CoreError> {
        let new = Config::from_toml(text)
            .map_err(|e| store_failure(isthmus_config::Error::Invalid(e)))?;
        let old = self.store.active_revision().and_then(|r| r.config()).map_err(store_failure)?;
        let d = isthmus_config::diff::configs(&old, &new);
        Ok(if d.is_empty() { "no changes\n".to_owned() } else { d })
    }

    /// `GET /config`.
    pub fn config_text_redacted(&self) -> Result<String, CoreError> {
        self.store.active_revision().and_then(|r| r.show()).map_err(store_failure)
    }

    /// `GET /config/revisions/N`.
    pub fn revision_text_redacted(&self, n: u64) -> Result<String, CoreError> {
        self.store.get(n).and_then(|r| r.show()).map_err(store_failure)
    }

    /// `GET /config/revisions`.
    pub fn revisions(&self) -> Result<Vec<api::Revision>, CoreError> {
        let active = self.store.active().map_err(store_failure)?;
        let pending = self.store.pending().map_err(store_failure)?;
        Ok(self
            .store
            .revisions()
            .map_err(store_failure)?
            .into_iter()
            .map(|r| api::Revision {
                number: r.number,
                time: unix(r.time),
                author: r.author,
                comment: r.comment,
                active: Some(r.number) == active,
                confirm_deadline: pending
                    .as_ref()
                    .filter(|p| p.rev == r.number)
                    .map(|p| unix(p.deadline)),
            })
            .collect())
    }

    /// `GET /status`.
    pub fn status(&self) -> api::Status {
        let pending = self.store.pending().ok().flatten();
        // One snapshot for the whole answer.
        let r = self.readings();
        api::Status {
            gateway: r.applied.as_ref().map(|(_, c)| c.gateway.name.clone()).unwrap_or_default(),
            version: env!("CARGO_PKG_VERSION").into(),
            uptime_secs: self.started.elapsed().as_secs(),
            revision: self.store.active().ok().flatten(),
            confirm_pending_secs: pending.map(|p| {
                p.deadline.duration_since(SystemTime::now()).map(|d| d.as_secs()).unwrap_or(0)
            }),
            tunnels: self.monitor.summaries(&r),
            active_alarms: self.alarms.active_count(),
            drops: crate::obs::monitor::gateway_drops(&r),
        }
    }

    /// `GET /tunnels`: every configured tunnel, down ones included.
    pub fn tunnels(&self) -> Vec<api::TunnelSummary> {
        self.monitor.summaries(&self.readings())
    }

    /// `GET /sa`: every established IKE SA with its CHILD SAs.
    pub fn sas(&self) -> Vec<api::IkeSa> {
        self.monitor.sas(&self.readings())
    }

    /// `GET /tunnels/NAME`.
    pub fn tunnel(&self, name: &str) -> Result<api::TunnelDetail, CoreError> {
        let (_, cfg) =
            self.applied().ok_or_else(|| CoreError::not_found("no configuration applied"))?;
        if cfg.tunnel(name).is_none() {
            return Err(CoreError::not_found(format!("no tunnel named `{name}` is configured")));
        }
        Ok(self.monitor.detail(&self.readings(), &cfg, name, &self.events, &self.health))
    }

    /// `POST /tunnels/NAME/peer-config`: the customer gateway's side of tunnel `name` in
    /// `format` (`swanctl`), mirrored from what the driver negotiates with; the PSK only with
    /// `show_secret`.
    pub fn peer_config(
        &self,
        name: &str,
        format: &str,
        show_secret: bool,
    ) -> Result<String, CoreError> {
        if format != "swanctl" {
            return Err(CoreError::BadRequest(format!(
                "unknown peer configuration format `{format}`: use swanctl"
            )));
        }
        let (_, cfg) =
            self.applied().ok_or_else(|| CoreError::not_found("no configuration applied"))?;
        let t = cfg.tunnel(name).ok_or_else(|| {
            CoreError::not_found(format!("no tunnel named `{name}` is configured"))
        })?;
        let planned = super::plan::ike_tunnel(&cfg, t)
            .map_err(|e| CoreError::Conflict(format!("tunnel `{}`: {}", e.tunnel, e.why)))?;
        Ok(isthmus_tunnels::peer_config::swanctl(&planned.ike, show_secret))
    }

    /// `GET /alarms`.
    pub fn alarms(&self) -> Vec<api::Alarm> {
        self.alarms.list()
    }

    /// `GET /metrics`.
    pub fn metrics_text(&self) -> String {
        crate::obs::metrics::metrics(&self.readings(), &self.monitor, &self.health, &self.alarms)
    }
}

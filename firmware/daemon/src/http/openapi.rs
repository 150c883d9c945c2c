//! The OpenAPI description the daemon serves at `/openapi.json` (also the API's reference doc),
//! generated from the API types (`isthmus_api` with its `openapi` feature, doc comments as
//! descriptions) and the `#[utoipa::path]` annotation beside each handler in [`crate::http`].
//! The tests below and `tests/api.rs` check that it lists every route and every status served.

use std::sync::LazyLock;

use isthmus_api::ApiError;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{Modify, OpenApi, ToResponse, ToSchema};

use crate::http;

#[derive(OpenApi)]
#[openapi(
    info(title = "Isthmus management API"),
    paths(
        http::status,
        http::config_get,
        http::config_validate,
        http::config_diff,
        http::config_commit,
        http::config_confirm,
        http::config_rollback,
        http::revisions,
        http::revision_text,
        http::tunnels,
        http::tunnel,
        http::tunnel_op,
        http::sas,
        http::peer_config,
        http::plugins,
        http::plugin_upload,
        http::plugin_hooks,
        http::plugin_op,
        http::alarms,
        http::alarm_acknowledge,
        http::diagnose_path,
        http::diagnose_tunnel,
        http::sse::stream,
        http::system_status,
        http::system_upgrade,
        http::action,
        http::metrics,
        http::openapi,
    ),
    // ApiError is referenced only by the shared responses, which do not collect their schemas.
    components(
        schemas(ApiError),
        responses(
            Unauthorized,
            Forbidden,
            BadRequest,
            NotFound,
            Conflict,
            TooLarge,
            Invalid,
            Internal
        )
    ),
    security(("bearer" = [])),
    modifiers(&Conventions)
)]
struct Document;

/// What every operation shares and the derive cannot say: the bearer scheme, and the limits
/// (from the constants that enforce them).
struct Conventions;

impl Modify for Conventions {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        doc.info.description = Some(format!(
            "Bearer tokens, admin or read-only: every operation but this document needs one, and \
             every write an admin one. TLS with a self-signed certificate pinned on first use; \
             plain HTTP only on loopback. Request bodies are limited to {} MiB (plugin packages \
             {} MiB, firmware images {} MiB); requests time out after {} s (408). Every error \
             body is an ApiError. See docs/api.md.",
            http::MAX_BODY >> 20,
            http::MAX_PLUGIN >> 20,
            crate::system::upgrade::MAX_IMAGE >> 20,
            http::REQUEST_TIMEOUT.as_secs(),
        ));
        doc.components
            .get_or_insert_with(Default::default)
            .add_security_scheme("bearer", SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)));
    }
}

/// The document as served, built once.
pub fn document() -> &'static str {
    static JSON: LazyLock<String> = LazyLock::new(|| {
        Document::openapi().to_pretty_json().expect("an OpenAPI document serialises")
    });
    &JSON
}

/// What `POST /actions` answers: the body of the action's own endpoint. (Only described: the
/// handlers build these bodies themselves.)
#[derive(ToSchema)]
#[serde(untagged)]
pub enum ActionReply {
    /// Most actions: what was done.
    Message(isthmus_api::Message),
    /// `config-commit`, `config-rollback`.
    Commit(isthmus_api::CommitResponse),
    /// `config-validate`.
    Validate(isthmus_api::ValidateResponse),
    /// `config-diff`.
    Diff(isthmus_api::DiffResponse),
    /// `alarm-acknowledge`.
    Alarm(isthmus_api::Alarm),
}

// The error responses operations share, each an `ApiError` with the `code` named. Only
// described, like `ActionReply`: `http::Failure` builds them.

/// A missing or unknown token (`unauthorized`).
#[derive(ToResponse)]
#[response(headers(("WWW-Authenticate" = String, description = "`Bearer`")))]
pub struct Unauthorized(pub ApiError);

/// A read-only token on a write (`forbidden`).
#[derive(ToResponse)]
pub struct Forbidden(pub ApiError);

/// A malformed request (`bad-request`): bad JSON, an unknown or missing field, a bad parameter.
#[derive(ToResponse)]
pub struct BadRequest(pub ApiError);

/// No such object (`not-found`).
#[derive(ToResponse)]
pub struct NotFound(pub ApiError);

/// The change cannot be made in the current state (`conflict`), e.g. nothing changed, a
/// commit-confirm is pending or there is none to confirm, tunnels are not running, a plugin build
/// is active or pinned.
#[derive(ToResponse)]
pub struct Conflict(pub ApiError);

/// The body is larger than the operation's limit (`too-large`).
#[derive(ToResponse)]
pub struct TooLarge(pub ApiError);

/// The configuration is invalid (`invalid-config`, `details` names each field) or a secret it
/// references cannot be read, or applying it failed (`apply-failed`, rolled back).
#[derive(ToResponse)]
pub struct Invalid(pub ApiError);

/// The daemon failed internally (`internal`); its log has the cause.
#[derive(ToResponse)]
pub struct Internal(pub ApiError);

#[cfg(test)]
mod tests {
    use isthmus_api::Action;
    use serde_json::Value;

    fn doc() -> Value {
        serde_json::from_str(super::document()).unwrap()
    }

    #[test]
    fn document_is_json_and_lists_the_resources() {
        let v = doc();
        let paths = v["paths"].as_object().unwrap();
        for p in [
            "/api/v1/config/commit",
            "/api/v1/tunnels",
            "/api/v1/plugins",
            "/api/v1/events",
            "/metrics",
        ] {
            assert!(paths.contains_key(p), "{p} missing");
        }
        assert_eq!(v["components"]["securitySchemes"]["bearer"]["scheme"], "bearer");
        // Anonymous: one empty requirement.
        assert_eq!(v["paths"]["/openapi.json"]["get"]["security"], serde_json::json!([{}]));
    }

    /// Every route the router serves, with its methods, read from the router's source: the
    /// document must list each one (issue 14: it had drifted). `tests/api.rs` checks the reverse
    /// against a running daemon.
    #[test]
    fn every_routed_operation_is_documented() {
        let v = doc();
        let src = include_str!("mod.rs");
        let body = &src[src.find("pub fn router(").unwrap()..];
        let body = &body[..body.find(".fallback(").unwrap()];
        let mut seen = 0;
        for chunk in body.split(".route(").skip(1) {
            let path = chunk.trim_start().trim_start_matches('"');
            let path = &path[..path.find('"').unwrap()];
            let full = if path == "/metrics" || path == "/openapi.json" {
                path.to_owned()
            } else {
                format!("{}{path}", isthmus_api::PREFIX)
            };
            let handlers = chunk.split(".layer(").next().unwrap();
            for method in ["get", "post", "put", "delete", "patch"] {
                if handlers.contains(&format!("{method}(")) {
                    assert!(
                        v["paths"][&full][method].is_object(),
                        "{} {full} is routed but not in openapi.json",
                        method.to_uppercase()
                    );
                    seen += 1;
                }
            }
        }
        assert!(seen >= 26, "only {seen} routed operations found: has router() changed shape?");
    }

    /// The `Action` schema is serde's form: tagged by `action` in kebab-case, each variant's
    /// fields under their own names, the required ones present.
    #[test]
    fn the_action_schema_follows_serde() {
        let v = doc();
        let variants = v["components"]["schemas"]["Action"]["oneOf"].as_array().unwrap();
        assert_eq!(variants.len(), 12);
        let samples = [
            Action::ConfigCommit {
                text: "t".into(),
                comment: "c".into(),
                confirm_secs: Some(60),
                dry_run: true,
            },
            Action::ConfigConfirm {},
            Action::ConfigRollback { revision: 3 },
            Action::TunnelRekey { name: "to-idc".into(), ike: true },
            Action::AlarmAcknowledge { name: "a".into(), subject: "s".into() },
        ];
        for a in samples {
            let j = serde_json::to_value(&a).unwrap();
            let tag = &j["action"];
            let schema = variants
                .iter()
                .find(|s| s["properties"]["action"]["enum"][0] == *tag)
                .unwrap_or_else(|| panic!("no variant tagged {tag}"));
            let props = schema["properties"].as_object().unwrap();
            let fields = j.as_object().unwrap();
            for k in fields.keys() {
                assert!(props.contains_key(k), "{tag}: `{k}` is not in the schema");
            }
            for r in schema["required"].as_array().unwrap() {
                assert!(fields.contains_key(r.as_str().unwrap()), "{tag}: {r} is not serialised");
            }
        }
    }
}

//! The management API over HTTP: JSON in and out, bearer tokens, size limits and timeouts.
//!
//! The HTTP layer only authenticates and parses a request into an [`Action`] or a read; the
//! [`Core`] does the work. Every error is an [`ApiError`] whose message says what is wrong.

pub mod auth;
pub mod failure;
pub mod openapi;
pub mod sse;
pub mod tls;

pub use failure::Failure;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Request, State};
use axum::http::{Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use isthmus_api::{Action, ApiError, DiffResponse, EventKind, Message, PREFIX};
use serde::Deserialize;
use utoipa::{IntoParams, ToSchema};

use crate::core::{self, Core};
use crate::http::auth::Tokens;
use crate::http::openapi::{
    ActionReply, BadRequest, Conflict, Forbidden, Internal, Invalid, NotFound, TooLarge,
    Unauthorized,
};

/// Largest request body: a configuration with thousands of tunnels fits; a plugin upload has its
/// own, larger limit.
pub const MAX_BODY: usize = 4 << 20;
/// Largest plugin package.
pub const MAX_PLUGIN: usize = 32 << 20;
/// A request that takes longer is answered 408.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// Carries out an action through [`Core::handle`] on a blocking thread (it waits on netlink and
/// the IKE driver) and sends its reply as JSON.
async fn act(core: &Arc<Core>, a: Action, who: &str) -> Result<Response, Failure> {
    let (core, who) = (core.clone(), who.to_owned());
    let reply = tokio::task::spawn_blocking(move || core.handle(a, &who))
        .await
        .map_err(|e| Failure::internal(format!("the action did not complete: {e}")))??;
    Ok(reply.into_response())
}

impl IntoResponse for core::Reply {
    fn into_response(self) -> Response {
        match self {
            core::Reply::Validate(v) => axum::Json(v).into_response(),
            core::Reply::Diff(d) => axum::Json(d).into_response(),
            core::Reply::Commit(c) => axum::Json(c).into_response(),
            core::Reply::Message(m) => axum::Json(m).into_response(),
            core::Reply::Alarm(a) => axum::Json(a).into_response(),
        }
    }
}

/// What every handler sees.
#[derive(Clone)]
pub struct AppState {
    /// The daemon's core.
    pub core: Arc<Core>,
}

type Json<T> = axum::Json<T>;
type Reply<T> = Result<Json<T>, Failure>;

/// The request's authenticated caller, put there by the auth middleware.
#[derive(Clone, Debug)]
pub struct Caller(pub String);

/// Builds the router.
pub fn router(core: Arc<Core>) -> Router {
    let state = AppState { core };
    let api = Router::new()
        .route("/status", get(status))
        .route("/config", get(config_get))
        .route("/config/validate", post(config_validate))
        .route("/config/diff", post(config_diff))
        .route("/config/commit", post(config_commit))
        .route("/config/confirm", post(config_confirm))
        .route("/config/rollback", post(config_rollback))
        .route("/config/revisions", get(revisions))
        .route("/config/revisions/{n}", get(revision_text))
        .route("/tunnels", get(tunnels))
        .route("/tunnels/{name}", get(tunnel))
        .route("/tunnels/{name}/peer-config", post(peer_config))
        .route("/tunnels/{name}/{op}", post(tunnel_op))
        .route("/sa", get(sas))
        .route(
            "/plugins",
            get(plugins).post(plugin_upload).layer(DefaultBodyLimit::max(MAX_PLUGIN)),
        )
        .route("/plugins/hooks", get(plugin_hooks))
        .route("/plugins/{id}/{op}", post(plugin_op))
        .route("/alarms", get(alarms))
        .route("/alarms/acknowledge", post(alarm_acknowledge))
        .route("/diagnose/path", get(diagnose_path))
        .route("/diagnose/tunnel/{name}", get(diagnose_tunnel))
        .route("/events", get(sse::stream))
        .route("/system", get(system_status))
        .route(
            "/system/upgrade",
            post(system_upgrade).layer(DefaultBodyLimit::max(crate::system::upgrade::MAX_IMAGE)),
        )
        .route("/actions", post(action))
        .layer(DefaultBodyLimit::max(MAX_BODY));
    Router::new()
        .nest(PREFIX, api)
        .route("/metrics", get(metrics))
        .route("/openapi.json", get(openapi))
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(state.clone(), authenticate))
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            REQUEST_TIMEOUT,
        ))
        .with_state(state)
}

async fn authenticate(State(st): State<AppState>, mut req: Request, next: Next) -> Response {
    if req.uri().path() == "/openapi.json" {
        return next.run(req).await;
    }
    let write = req.method() != Method::GET && req.method() != Method::HEAD;
    let header = req.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    let tokens = Tokens::new(st.core.tokens());
    match tokens.check(header, write) {
        Ok(entry) => {
            req.extensions_mut().insert(Caller(entry.name.clone()));
            next.run(req).await
        }
        Err(denied) => {
            let (status, code) = match denied {
                crate::http::auth::Denied::ReadOnly(_) => (StatusCode::FORBIDDEN, "forbidden"),
                _ => (StatusCode::UNAUTHORIZED, "unauthorized"),
            };
            let mut r = Failure::new(status, code, denied.message()).into_response();
            if status == StatusCode::UNAUTHORIZED {
                r.headers_mut().insert(header::WWW_AUTHENTICATE, "Bearer".parse().expect("static"));
            }
            r
        }
    }
}

async fn not_found(req: Request) -> Failure {
    Failure::not_found(format!(
        "no such endpoint: {} {} (see /openapi.json)",
        req.method(),
        req.uri().path()
    ))
}

fn caller(headers: &axum::http::Extensions) -> String {
    headers.get::<Caller>().map(|c| c.0.clone()).unwrap_or_default()
}

/// Parses a JSON body with a message that says what is wrong with it.
fn parse<T: for<'de> Deserialize<'de>>(body: &Bytes) -> Result<T, Failure> {
    serde_json::from_slice(body)
        .map_err(|e| Failure::bad_request(format!("malformed JSON body: {e}")))
}

/// The caller and the request's JSON body (at most [`MAX_BODY`]; beyond it 413).
async fn caller_and_body<T: for<'de> Deserialize<'de>>(
    req: Request,
) -> Result<(String, T), Failure> {
    let who = caller(req.extensions());
    let body = axum::body::to_bytes(req.into_body(), MAX_BODY).await.map_err(|e| {
        let source = std::error::Error::source(&e);
        if source.is_some_and(|s| s.is::<http_body_util::LengthLimitError>()) {
            Failure::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too-large",
                format!("request body larger than {} MiB", MAX_BODY >> 20),
            )
        } else {
            Failure::bad_request(format!("reading the request body: {e}"))
        }
    })?;
    Ok((who, parse(&body)?))
}

/// The gateway at a glance
#[utoipa::path(get, path = "/status", context_path = PREFIX, tag = "status", responses(
    (status = 200, description = "Gateway, version, uptime, active revision, pending confirm, \
        tunnels, alarm count and drops", body = isthmus_api::Status),
    (status = 401, response = Unauthorized),
))]
async fn status(State(st): State<AppState>) -> Reply<isthmus_api::Status> {
    Ok(axum::Json(st.core.status()))
}

/// The active configuration as TOML, secrets redacted
#[utoipa::path(get, path = "/config", context_path = PREFIX, tag = "config", responses(
    (status = 200, description = "The TOML document", body = String,
        content_type = "application/toml"),
    (status = 401, response = Unauthorized),
    (status = 404, response = NotFound),
    (status = 500, response = Internal),
))]
async fn config_get(State(st): State<AppState>) -> Result<Response, Failure> {
    let text = st.core.config_text_redacted()?;
    Ok(([(header::CONTENT_TYPE, "application/toml")], text).into_response())
}

/// A configuration document.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct TextBody {
    /// The TOML document.
    text: String,
}

/// Validate a document; every issue names its field path
#[utoipa::path(post, path = "/config/validate", context_path = PREFIX, tag = "config",
    request_body = TextBody, responses(
    (status = 200, description = "Every error and warning", body = isthmus_api::ValidateResponse),
    (status = 400, response = BadRequest),
    (status = 401, response = Unauthorized),
    (status = 403, response = Forbidden),
    (status = 413, response = TooLarge),
))]
async fn config_validate(
    State(st): State<AppState>,
    body: Bytes,
) -> Reply<isthmus_api::ValidateResponse> {
    let b: TextBody = parse(&body)?;
    Ok(axum::Json(st.core.validate(&b.text)))
}

/// Diff a document against the active revision (secrets shown as fingerprints)
#[utoipa::path(post, path = "/config/diff", context_path = PREFIX, tag = "config",
    request_body = TextBody, responses(
    (status = 200, description = "The diff", body = DiffResponse),
    (status = 400, response = BadRequest),
    (status = 401, response = Unauthorized),
    (status = 403, response = Forbidden),
    (status = 404, response = NotFound),
    (status = 413, response = TooLarge),
    (status = 422, response = Invalid),
    (status = 500, response = Internal),
))]
async fn config_diff(
    State(st): State<AppState>,
    body: Bytes,
) -> Result<Json<DiffResponse>, Failure> {
    let b: TextBody = parse(&body)?;
    Ok(axum::Json(DiffResponse { diff: st.core.diff_against_active(&b.text)? }))
}

/// A commit.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct CommitBody {
    /// The TOML document.
    text: String,
    /// The commit comment.
    #[serde(default)]
    comment: String,
    /// Revert to the previous revision unless confirmed within this many seconds.
    #[serde(default)]
    confirm_secs: Option<u64>,
    /// Validate and plan only: nothing is stored or applied.
    #[serde(default)]
    dry_run: bool,
}

/// Validate, commit and apply; with `confirm_secs` the commit reverts unless confirmed
///
/// Needs an admin token. A revision that fails to apply is rolled back to the last one that
/// applied.
#[utoipa::path(post, path = "/config/commit", context_path = PREFIX, tag = "config",
    request_body = CommitBody, responses(
    (status = 200, description = "The revision (none for a dry run) and the plan",
        body = isthmus_api::CommitResponse),
    (status = 400, response = BadRequest),
    (status = 401, response = Unauthorized),
    (status = 403, response = Forbidden),
    (status = 409, response = Conflict),
    (status = 413, response = TooLarge),
    (status = 422, response = Invalid),
    (status = 500, response = Internal),
))]
async fn config_commit(State(st): State<AppState>, req: Request) -> Result<Response, Failure> {
    let (who, b): (_, CommitBody) = caller_and_body(req).await?;
    let a = Action::ConfigCommit {
        text: b.text,
        comment: b.comment,
        confirm_secs: b.confirm_secs,
        dry_run: b.dry_run,
    };
    act(&st.core, a, &who).await
}

/// Confirm a pending commit
///
/// Needs an admin token. No body.
#[utoipa::path(post, path = "/config/confirm", context_path = PREFIX, tag = "config", responses(
    (status = 200, description = "The revision confirmed", body = Message),
    (status = 401, response = Unauthorized),
    (status = 403, response = Forbidden),
    (status = 409, response = Conflict),
    (status = 500, response = Internal),
))]
async fn config_confirm(State(st): State<AppState>, req: Request) -> Result<Response, Failure> {
    let who = caller(req.extensions());
    act(&st.core, Action::ConfigConfirm {}, &who).await
}

/// A rollback.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct RollbackBody {
    /// The stored revision whose content becomes active again.
    revision: u64,
}

/// Make a stored revision active again (as a new revision)
///
/// Needs an admin token.
#[utoipa::path(post, path = "/config/rollback", context_path = PREFIX, tag = "config",
    request_body = RollbackBody, responses(
    (status = 200, description = "The new revision and the plan",
        body = isthmus_api::CommitResponse),
    (status = 400, response = BadRequest),
    (status = 401, response = Unauthorized),
    (status = 403, response = Forbidden),
    (status = 404, response = NotFound),
    (status = 409, response = Conflict),
    (status = 413, response = TooLarge),
    (status = 422, response = Invalid),
    (status = 500, response = Internal),
))]
async fn config_rollback(State(st): State<AppState>, req: Request) -> Result<Response, Failure> {
    let (who, b): (_, RollbackBody) = caller_and_body(req).await?;
    act(&st.core, Action::ConfigRollback { revision: b.revision }, &who).await
}

/// Stored revisions
#[utoipa::path(get, path = "/config/revisions", context_path = PREFIX, tag = "config", responses(
    (status = 200, description = "Every stored revision", body = Vec<isthmus_api::Revision>),
    (status = 401, response = Unauthorized),
    (status = 500, response = Internal),
))]
async fn revisions(State(st): State<AppState>) -> Reply<Vec<isthmus_api::Revision>> {
    Ok(axum::Json(st.core.revisions()?))
}

/// One revision as TOML, secrets redacted
#[utoipa::path(get, path = "/config/revisions/{n}", context_path = PREFIX, tag = "config",
    params(("n" = u64, Path, description = "The revision number")), responses(
    (status = 200, description = "The TOML document", body = String,
        content_type = "application/toml"),
    (status = 400, response = BadRequest),
    (status = 401, response = Unauthorized),
    (status = 404, response = NotFound),
    (status = 500, response = Internal),
))]
async fn revision_text(
    State(st): State<AppState>,
    Path(n): Path<u64>,
) -> Result<Response, Failure> {
    let text = st.core.revision_text_redacted(n)?;
    Ok(([(header::CONTENT_TYPE, "application/toml")], text).into_response())
}

/// Every configured tunnel, up or down
#[utoipa::path(get, path = "/tunnels", context_path = PREFIX, tag = "tunnels", responses(
    (status = 200, description = "One row per tunnel", body = Vec<isthmus_api::TunnelSummary>),
    (status = 401, response = Unauthorized),
))]
async fn tunnels(State(st): State<AppState>) -> Reply<Vec<isthmus_api::TunnelSummary>> {
    Ok(axum::Json(st.core.tunnels()))
}

/// Every established IKE SA with its CHILD SAs
///
/// SPIs, algorithms, ages, rekey and expiry countdowns, and each CHILD SA's bytes and packets,
/// like `swanctl --list-sas`. Tunnels without an IKE SA are not listed (see `GET /tunnels`).
#[utoipa::path(get, path = "/sa", context_path = PREFIX, tag = "tunnels", responses(
    (status = 200, description = "One entry per IKE SA, by tunnel name",
        body = Vec<isthmus_api::IkeSa>),
    (status = 401, response = Unauthorized),
))]
async fn sas(State(st): State<AppState>) -> Reply<Vec<isthmus_api::IkeSa>> {
    Ok(axum::Json(st.core.sas()))
}

/// One tunnel with its SAs, health, drops and recent events
#[utoipa::path(get, path = "/tunnels/{name}", context_path = PREFIX, tag = "tunnels",
    params(("name" = String, Path, description = "The tunnel's name")), responses(
    (status = 200, description = "The tunnel", body = isthmus_api::TunnelDetail),
    (status = 401, response = Unauthorized),
    (status = 404, response = NotFound),
))]
async fn tunnel(
    State(st): State<AppState>,
    Path(name): Path<String>,
) -> Reply<isthmus_api::TunnelDetail> {
    Ok(axum::Json(st.core.tunnel(&name)?))
}

/// Bring a tunnel up, tear it down or rekey it
///
/// Needs an admin token. No body.
#[utoipa::path(post, path = "/tunnels/{name}/{op}", context_path = PREFIX, tag = "tunnels",
    params(
        ("name" = String, Path, description = "The tunnel's name"),
        ("op" = String, Path, description = "`initiate`, `terminate`, `rekey` (its CHILD SAs) \
            or `rekey-ike`"),
    ), responses(
    (status = 200, description = "What was started", body = Message),
    (status = 401, response = Unauthorized),
    (status = 403, response = Forbidden),
    (status = 404, response = NotFound),
    (status = 409, response = Conflict),
    (status = 500, response = Internal),
))]
async fn tunnel_op(
    State(st): State<AppState>,
    Path((name, op)): Path<(String, String)>,
    req: Request,
) -> Result<Response, Failure> {
    let who = caller(req.extensions());
    let a = match op.as_str() {
        "initiate" => Action::TunnelInitiate { name },
        "terminate" => Action::TunnelTerminate { name },
        "rekey" => Action::TunnelRekey { name, ike: false },
        "rekey-ike" => Action::TunnelRekey { name, ike: true },
        _ => {
            return Err(Failure::not_found(format!(
                "unknown tunnel operation `{op}`: use initiate, terminate, rekey or rekey-ike"
            )));
        }
    };
    act(&st.core, a, &who).await
}

/// What to print in `POST /tunnels/{name}/peer-config`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct PeerConfigBody {
    /// `swanctl` (strongSwan's swanctl.conf).
    format: String,
    /// Put the pre-shared key in the file.
    #[serde(default)]
    show_secret: bool,
}

/// The customer gateway's side of a tunnel, for the peer's software
///
/// Mirrored from what this gateway negotiates: addresses, identities, proposals, selectors,
/// lifetimes and DPD. Needs an admin token: with `show_secret` the file carries the PSK.
#[utoipa::path(post, path = "/tunnels/{name}/peer-config", context_path = PREFIX, tag = "tunnels",
    params(("name" = String, Path, description = "The tunnel's name")),
    request_body = PeerConfigBody, responses(
    (status = 200, description = "The configuration file", body = String,
        content_type = "text/plain"),
    (status = 400, response = BadRequest),
    (status = 401, response = Unauthorized),
    (status = 403, response = Forbidden),
    (status = 404, response = NotFound),
    (status = 409, response = Conflict),
))]
async fn peer_config(
    State(st): State<AppState>,
    Path(name): Path<String>,
    req: Request,
) -> Result<Response, Failure> {
    let (_, body): (String, PeerConfigBody) = caller_and_body(req).await?;
    let text = st.core.peer_config(&name, &body.format, body.show_secret)?;
    Ok(([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], text).into_response())
}

/// Stored plugin versions
#[utoipa::path(get, path = "/plugins", context_path = PREFIX, tag = "plugins", responses(
    (status = 200, description = "Every stored version of every plugin",
        body = Vec<isthmus_api::Plugin>),
    (status = 401, response = Unauthorized),
    (status = 500, response = Internal),
))]
async fn plugins(State(st): State<AppState>) -> Reply<Vec<isthmus_api::Plugin>> {
    Ok(axum::Json(st.core.plugins()?))
}

/// Per policy hook: the plugin in force, its table and its faults
///
/// The plugin in force (uploaded, bundled or builtin), its table's generation and size,
/// quarantine, the last error and a note.
#[utoipa::path(get, path = "/plugins/hooks", context_path = PREFIX, tag = "plugins", responses(
    (status = 200, description = "One entry per hook", body = Vec<isthmus_api::PluginHook>),
    (status = 401, response = Unauthorized),
))]
async fn plugin_hooks(State(st): State<AppState>) -> Reply<Vec<isthmus_api::PluginHook>> {
    Ok(axum::Json(st.core.plugin_hooks()))
}

/// Upload a signed plugin package
///
/// Needs an admin token. The package is verified against the applied configuration's trusted
/// keys, compiled and stored; it is not activated.
#[utoipa::path(post, path = "/plugins", context_path = PREFIX, tag = "plugins",
    request_body(content = String, content_type = "application/octet-stream",
        description = "The signed package, as `isthmus plugin sign` makes it"),
    responses(
    (status = 201, description = "The stored version", body = isthmus_api::Plugin),
    (status = 401, response = Unauthorized),
    (status = 403, response = Forbidden),
    (status = 409, response = Conflict),
    (status = 413, response = TooLarge),
    (status = 422, description = "The package is refused (`plugin-refused`): not a signed \
        package, an untrusted key, or a component that does not load", body = ApiError),
    (status = 500, response = Internal),
))]
async fn plugin_upload(State(st): State<AppState>, req: Request) -> Result<Response, Failure> {
    let who = caller(req.extensions());
    let body = axum::body::to_bytes(req.into_body(), MAX_PLUGIN).await.map_err(|_| {
        Failure::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too-large",
            format!("plugin package larger than {} MiB", MAX_PLUGIN >> 20),
        )
    })?;
    let p = st.core.plugin_upload(&body, &who)?;
    Ok((StatusCode::CREATED, axum::Json(p)).into_response())
}

/// Activate a plugin version, roll a plugin back, or remove a version
///
/// Needs an admin token. No body.
#[utoipa::path(post, path = "/plugins/{id}/{op}", context_path = PREFIX, tag = "plugins",
    params(
        ("id" = String, Path, description = "The version's digest for `activate` and `remove`, \
            the plugin's name for `rollback`"),
        ("op" = String, Path, description = "`activate`, `rollback` or `remove`"),
    ), responses(
    (status = 200, description = "What changed", body = Message),
    (status = 401, response = Unauthorized),
    (status = 403, response = Forbidden),
    (status = 404, response = NotFound),
    (status = 409, description = "The change is refused (`conflict`), e.g. removing the active \
        build or one a configuration pins", body = ApiError),
    (status = 500, response = Internal),
))]
async fn plugin_op(
    State(st): State<AppState>,
    Path((id, op)): Path<(String, String)>,
    req: Request,
) -> Result<Response, Failure> {
    let who = caller(req.extensions());
    let a = match op.as_str() {
        "activate" => Action::PluginActivate { digest: id },
        "rollback" => Action::PluginRollback { name: id },
        "remove" => Action::PluginRemove { digest: id },
        _ => {
            return Err(Failure::not_found(format!(
                "unknown plugin operation `{op}`: use activate, rollback or remove"
            )));
        }
    };
    act(&st.core, a, &who).await
}

/// Firmware version, the A/B slots (booted, blessed, tries left) and the last upgrade
#[utoipa::path(get, path = "/system", context_path = PREFIX, tag = "system", responses(
    (status = 200, description = "The slots and the last upgrade",
        body = isthmus_api::SystemStatus),
    (status = 401, response = Unauthorized),
    (status = 500, response = Internal),
))]
async fn system_status(State(st): State<AppState>) -> Reply<isthmus_api::SystemStatus> {
    let core = st.core.clone();
    let s = tokio::task::spawn_blocking(move || crate::system::upgrade::status(core.data_dir()))
        .await
        .map_err(|e| Failure::internal(format!("reading the slots did not complete: {e}")))?;
    Ok(axum::Json(s))
}

/// `POST /system/upgrade?sha256=HEX&tries=N&gate_secs=S`: the body is the firmware image.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct UpgradeQuery {
    /// Hex SHA-256 of the body; the upload is refused if it differs.
    sha256: Option<String>,
    /// Boots the new slot gets.
    #[param(minimum = 1, maximum = 9, default = json!(crate::system::upgrade::DEFAULT_TRIES))]
    tries: Option<u32>,
    /// Health gate time limit, seconds.
    #[param(minimum = 10, maximum = 3600, default = json!(crate::system::upgrade::DEFAULT_GATE_SECS))]
    gate_secs: Option<u64>,
}

/// Write a firmware image to the other slot, on trial, and reboot into it
///
/// Needs an admin token. The image must be an Isthmus UKI (PE with `.osrel` `ID=isthmus` and a
/// newer `IMAGE_VERSION`, `.cmdline` with `isthmus.slot=`, `.linux` bzImage, `.initrd`). The new
/// firmware blesses its slot once its health gate passes (configuration applied, the tunnels up
/// at upload time up again within `gate_secs`); otherwise it reboots and falls back to the old
/// slot when its tries run out.
#[utoipa::path(post, path = "/system/upgrade", context_path = PREFIX, tag = "system",
    params(UpgradeQuery),
    request_body(content = String, content_type = "application/octet-stream",
        description = "The unified kernel image"),
    responses(
    (status = 200, description = "What was written; the appliance reboots now",
        body = isthmus_api::UpgradeResponse),
    (status = 400, response = BadRequest),
    (status = 401, response = Unauthorized),
    (status = 403, response = Forbidden),
    (status = 409, description = "Not running from the appliance image (`conflict`)",
        body = ApiError),
    (status = 413, response = TooLarge),
    (status = 422, description = "The image is refused (`upgrade-refused`), the message names \
        the problem", body = ApiError),
    (status = 500, response = Internal),
))]
async fn system_upgrade(
    State(st): State<AppState>,
    axum::extract::Query(q): axum::extract::Query<UpgradeQuery>,
    req: Request,
) -> Result<Response, Failure> {
    use crate::system::upgrade::{self as up, UpgradeError as E};
    let who = caller(req.extensions());
    let body = axum::body::to_bytes(req.into_body(), up::MAX_IMAGE).await.map_err(|_| {
        Failure::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too-large",
            format!("firmware image larger than {} MiB", up::MAX_IMAGE >> 20),
        )
    })?;
    let core = st.core.clone();
    let r = tokio::task::spawn_blocking(move || {
        up::stage(
            &core.readings(),
            core.data_dir(),
            core.events(),
            up::Request {
                image: &body,
                sha256: q.sha256.as_deref(),
                gate_secs: q.gate_secs.unwrap_or(up::DEFAULT_GATE_SECS),
                tries: q.tries.unwrap_or(up::DEFAULT_TRIES),
                who: &who,
            },
        )
    })
    .await
    .map_err(|e| Failure::internal(format!("the upgrade did not complete: {e}")))?;
    match r {
        Ok(resp) => {
            up::reboot_soon(Duration::from_secs(1));
            Ok(axum::Json(resp).into_response())
        }
        Err(e @ (E::Format(_) | E::Checksum { .. } | E::NotNewer { .. } | E::Invalid(_))) => {
            st.core.events().emit(
                EventKind::UpgradeRefused,
                "system",
                isthmus_api::Severity::Warning,
                e.to_string(),
            );
            Err(Failure::new(StatusCode::UNPROCESSABLE_ENTITY, "upgrade-refused", e.to_string()))
        }
        Err(e @ E::NotAppliance(_)) => {
            Err(Failure::new(StatusCode::CONFLICT, "conflict", e.to_string()))
        }
        Err(e) => Err(Failure::internal(format!("upgrade failed: {e}"))),
    }
}

/// Active and recently cleared alarms
#[utoipa::path(get, path = "/alarms", context_path = PREFIX, tag = "alarms", responses(
    (status = 200, description = "The alarms", body = Vec<isthmus_api::Alarm>),
    (status = 401, response = Unauthorized),
))]
async fn alarms(State(st): State<AppState>) -> Reply<Vec<isthmus_api::Alarm>> {
    Ok(axum::Json(st.core.alarms()))
}

/// Which alarm.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct AlarmKey {
    /// The alarm's name, e.g. `upgrade-failed`.
    name: String,
    /// What it concerns, e.g. `tunnel/to-idc` or `system`.
    subject: String,
}

/// Acknowledge a raised alarm
///
/// Needs an admin token. The alarm stays raised (and listed) until its condition ends, marked
/// with who acknowledged it and when; a later raise starts unacknowledged. A second
/// acknowledgement keeps the first.
#[utoipa::path(post, path = "/alarms/acknowledge", context_path = PREFIX, tag = "alarms",
    request_body = AlarmKey, responses(
    (status = 200, description = "The alarm, acknowledged", body = isthmus_api::Alarm),
    (status = 400, response = BadRequest),
    (status = 401, response = Unauthorized),
    (status = 403, response = Forbidden),
    (status = 404, description = "The alarm is not raised (never was, or cleared) \
        (`not-found`)", body = ApiError),
    (status = 413, response = TooLarge),
    (status = 500, response = Internal),
))]
async fn alarm_acknowledge(State(st): State<AppState>, req: Request) -> Result<Response, Failure> {
    let (who, k): (_, AlarmKey) = caller_and_body(req).await?;
    act(&st.core, Action::AlarmAcknowledge { name: k.name, subject: k.subject }, &who).await
}

/// Any action as tagged JSON, e.g. `{"action":"tunnel-initiate","name":"to-idc"}`
///
/// Needs an admin token. Answers as the action's own endpoint does.
#[utoipa::path(post, path = "/actions", context_path = PREFIX, tag = "actions",
    request_body = Action, responses(
    (status = 200, description = "The action's answer", body = ActionReply),
    (status = 400, response = BadRequest),
    (status = 401, response = Unauthorized),
    (status = 403, response = Forbidden),
    (status = 404, response = NotFound),
    (status = 409, response = Conflict),
    (status = 413, response = TooLarge),
    (status = 422, response = Invalid),
    (status = 500, response = Internal),
))]
async fn action(State(st): State<AppState>, req: Request) -> Result<Response, Failure> {
    let (who, a): (_, Action) = caller_and_body(req).await?;
    act(&st.core, a, &who).await
}

/// `GET /diagnose/path` query parameters (strings, so that a bad value gets a message naming it).
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct PathQuery {
    /// The packet's source address.
    #[param(required = true)]
    src: Option<String>,
    /// Its destination address, of the same family.
    #[param(required = true)]
    dst: Option<String>,
    /// `tcp`, `udp`, `icmp`, `icmpv6`, `gre`, `esp` or a protocol number; by default `tcp` with
    /// `dport`, else ICMP echo.
    proto: Option<String>,
    /// Source port (ICMP: type).
    #[param(value_type = Option<u16>)]
    sport: Option<String>,
    /// Destination port (ICMP: code).
    #[param(value_type = Option<u16>)]
    dport: Option<String>,
    /// Packet size in bytes, 20 to 65535 (default 100).
    #[param(value_type = Option<u32>)]
    size: Option<String>,
}

fn diagnose_failure(e: crate::diagnose::DiagnoseError) -> Failure {
    use crate::diagnose::DiagnoseError as E;
    match e {
        E::NoConfig | E::UnknownTunnel(_) => Failure::not_found(e.to_string()),
        E::BadQuery(m) => Failure::bad_request(m),
    }
}

/// Trace a packet through the gateway and back
///
/// Through the kernel's route, the dataplane's SPD, ACL and security-group tables, its SA and
/// the MTU: each stage's verdict and deciding entry, and advice.
#[utoipa::path(get, path = "/diagnose/path", context_path = PREFIX, tag = "diagnose",
    params(PathQuery), responses(
    (status = 200, description = "The trace", body = isthmus_api::PathReport),
    (status = 400, response = BadRequest),
    (status = 401, response = Unauthorized),
    (status = 404, response = NotFound),
    (status = 500, response = Internal),
))]
async fn diagnose_path(
    State(st): State<AppState>,
    axum::extract::Query(q): axum::extract::Query<PathQuery>,
) -> Reply<isthmus_api::PathReport> {
    fn num<T: std::str::FromStr>(what: &str, v: &Option<String>) -> Result<Option<T>, Failure> {
        v.as_deref()
            .filter(|s| !s.is_empty())
            .map(|s| {
                s.trim().parse::<T>().map_err(|_| {
                    Failure::bad_request(format!("{what} `{s}` is not a number in range"))
                })
            })
            .transpose()
    }
    let need = |what: &str, v: &Option<String>| {
        v.clone().filter(|s| !s.is_empty()).ok_or_else(|| {
            Failure::bad_request(format!("the query parameter `{what}` is required"))
        })
    };
    let query = crate::diagnose::Query::parse(
        &need("src", &q.src)?,
        &need("dst", &q.dst)?,
        q.proto.as_deref(),
        num("sport", &q.sport)?,
        num("dport", &q.dport)?,
        num("size", &q.size)?,
    )
    .map_err(diagnose_failure)?;
    let core = st.core.clone();
    let r = tokio::task::spawn_blocking(move || {
        crate::diagnose::diagnose_path(&core.readings(), &core.monitor, &query)
    })
    .await
    .map_err(|e| Failure::internal(format!("the diagnosis did not complete: {e}")))?;
    Ok(axum::Json(r.map_err(diagnose_failure)?))
}

/// Recent negotiation failures of a tunnel, explained
#[utoipa::path(get, path = "/diagnose/tunnel/{name}", context_path = PREFIX, tag = "diagnose",
    params(("name" = String, Path, description = "The tunnel's name")), responses(
    (status = 200, description = "The diagnosis", body = isthmus_api::TunnelDiagnosis),
    (status = 401, response = Unauthorized),
    (status = 404, response = NotFound),
    (status = 500, response = Internal),
))]
async fn diagnose_tunnel(
    State(st): State<AppState>,
    Path(name): Path<String>,
) -> Reply<isthmus_api::TunnelDiagnosis> {
    let core = st.core.clone();
    let r = tokio::task::spawn_blocking(move || {
        crate::diagnose::diagnose_tunnel(&core.readings(), core.events(), &name)
    })
    .await
    .map_err(|e| Failure::internal(format!("the diagnosis did not complete: {e}")))?;
    Ok(axum::Json(r.map_err(diagnose_failure)?))
}

/// Prometheus text exposition
///
/// Build and process facts, tunnel states, traffic, drops, IKE failures, rekeys, SA ages,
/// health checks, alarms and webhook deliveries, following the Prometheus naming conventions;
/// every family, label and reason is listed in docs/operations.md ("Metrics").
#[utoipa::path(get, path = "/metrics", tag = "metrics", responses(
    (status = 200, description = "Prometheus text format 0.0.4", body = String,
        content_type = "text/plain; version=0.0.4"),
    (status = 401, response = Unauthorized),
))]
async fn metrics(State(st): State<AppState>) -> Response {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], st.core.metrics_text()).into_response()
}

/// This document (no token needed)
#[utoipa::path(get, path = "/openapi.json", tag = "openapi", security(()), responses(
    (status = 200, description = "The OpenAPI document", content_type = "application/json"),
))]
async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], crate::http::openapi::document()).into_response()
}

/// Where the API listens without `--api`: loopback, in plain HTTP. It is always served, with or
/// without `[gateway.management]`, so that an operator on the box (and the CLI's default
/// endpoint, [`isthmus_api::LOCAL_ENDPOINT`]) always reaches the daemon.
pub const LOCAL: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), isthmus_api::LOCAL_PORT);

/// Binds the API's listeners and serves them until one fails. With `explicit` (`--api`), only
/// there; else on [`LOCAL`] and, with `[gateway.management]`, on the management address. Every
/// address but loopback gets TLS (`tls` forces it on loopback too), with the identity kept in
/// `data_dir`. `listening` is called once every listener is bound.
pub async fn serve_all(
    core: Arc<Core>,
    explicit: Option<SocketAddr>,
    tls: bool,
    data_dir: &std::path::Path,
    listening: impl FnOnce(),
) -> anyhow::Result<()> {
    let mgmt = core.management();
    let mut addrs = match explicit {
        Some(a) => vec![a],
        None => vec![LOCAL],
    };
    if let (None, Some(m)) = (explicit, &mgmt) {
        addrs.push(SocketAddr::new(m.address.addr, m.port));
    }
    let mut servers = tokio::task::JoinSet::new();
    for addr in addrs {
        let listener = match tokio::net::TcpListener::bind(addr).await {
            Ok(l) => l,
            // Without `--api` one listener is enough: another daemon on this host (a lab) may
            // hold loopback's port, and a configuration that failed to apply may not have put
            // the management address on its interface; the other one still lets the operator
            // in to fix it.
            Err(e) if explicit.is_none() => {
                tracing::warn!(%addr, "management API not listening there: {e}");
                continue;
            }
            Err(e) => return Err(anyhow::anyhow!("management API on {addr}: {e}")),
        };
        let identity = if addr.ip().is_loopback() && !tls {
            None
        } else {
            let names = vec!["isthmus".to_string(), addr.ip().to_string(), "127.0.0.1".to_string()];
            Some(crate::http::tls::Identity::load_or_create(data_dir, &names)?)
        };
        match &identity {
            Some(id) => {
                tracing::info!(%addr, fingerprint = %id.fingerprint(), "management API listening (TLS)")
            }
            None => tracing::info!(%addr, "management API listening (plain HTTP, loopback only)"),
        }
        let app = router(core.clone());
        servers.spawn(async move { serve(listener, identity.as_ref(), app).await });
    }
    if !servers.is_empty() {
        listening();
    }
    match servers.join_next().await {
        Some(r) => r?,
        None => Err(anyhow::anyhow!("management API: no address could be bound")),
    }
}

/// Serves the API on `addr`: TLS with `identity`, or plain HTTP when `identity` is `None`, which
/// is only allowed on loopback.
pub async fn serve(
    listener: tokio::net::TcpListener,
    identity: Option<&crate::http::tls::Identity>,
    app: Router,
) -> anyhow::Result<()> {
    let addr: SocketAddr = listener.local_addr()?;
    match identity {
        Some(id) => {
            let l = crate::http::tls::TlsListener::new(listener, id)?;
            axum::serve(l, app.into_make_service()).await?;
        }
        None => {
            anyhow::ensure!(
                addr.ip().is_loopback(),
                "plain HTTP is only allowed on loopback; {addr} needs TLS"
            );
            axum::serve(listener, app.into_make_service()).await?;
        }
    }
    Ok(())
}

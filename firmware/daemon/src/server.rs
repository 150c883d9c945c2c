//! The management API over HTTP: JSON in and out, bearer tokens, size limits and timeouts.
//!
//! The HTTP layer only authenticates and parses a request into an [`Action`] or a read; the
//! [`Core`] does the work. Every error is an [`ApiError`] whose message says what is wrong.

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
use isthmus_api::{Action, ApiError, PREFIX};
use serde::Deserialize;

use crate::auth::Tokens;
use crate::core::Core;

/// Largest request body: a configuration with thousands of tunnels fits; a plugin upload has its
/// own, larger limit.
pub const MAX_BODY: usize = 4 << 20;
/// Largest plugin package.
pub const MAX_PLUGIN: usize = 32 << 20;
/// A request that takes longer is answered 408.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// An error on its way to the client.
#[derive(Debug)]
pub struct Failure(pub ApiError);

impl Failure {
    /// A failure with a status, a stable code and a message.
    pub fn new(status: StatusCode, code: &str, message: impl Into<String>) -> Failure {
        Failure(ApiError {
            status: status.as_u16(),
            code: code.into(),
            message: message.into(),
            details: Vec::new(),
        })
    }

    /// 400 with a message.
    pub fn bad_request(message: impl Into<String>) -> Failure {
        Failure::new(StatusCode::BAD_REQUEST, "bad-request", message)
    }

    /// 404 with a message.
    pub fn not_found(message: impl Into<String>) -> Failure {
        Failure::new(StatusCode::NOT_FOUND, "not-found", message)
    }

    /// 500 with a message (the daemon logs the cause).
    pub fn internal(message: impl Into<String>) -> Failure {
        Failure::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message)
    }
}

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        let status =
            StatusCode::from_u16(self.0.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        (status, axum::Json(self.0)).into_response()
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
        .route("/tunnels/{name}/{op}", post(tunnel_op))
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
        .route("/events", get(crate::events::stream))
        .route("/system", get(system_status))
        .route(
            "/system/upgrade",
            post(system_upgrade).layer(DefaultBodyLimit::max(crate::upgrade::MAX_IMAGE)),
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
    let tokens: Tokens = st.core.tokens();
    match tokens.check(header, write) {
        Ok(entry) => {
            req.extensions_mut().insert(Caller(entry.name.clone()));
            next.run(req).await
        }
        Err(denied) => {
            let (status, code) = match denied {
                crate::auth::Denied::ReadOnly(_) => (StatusCode::FORBIDDEN, "forbidden"),
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

async fn status(State(st): State<AppState>) -> Reply<isthmus_api::Status> {
    Ok(axum::Json(st.core.status().await))
}

async fn config_get(State(st): State<AppState>) -> Result<Response, Failure> {
    let text = st.core.config_text_redacted().await?;
    Ok(([(header::CONTENT_TYPE, "application/toml")], text).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TextBody {
    text: String,
}

async fn config_validate(
    State(st): State<AppState>,
    body: Bytes,
) -> Reply<isthmus_api::ValidateResponse> {
    let b: TextBody = parse(&body)?;
    Ok(axum::Json(st.core.validate(&b.text).await))
}

#[derive(serde::Serialize)]
struct DiffResponse {
    diff: String,
}

async fn config_diff(
    State(st): State<AppState>,
    body: Bytes,
) -> Result<Json<DiffResponse>, Failure> {
    let b: TextBody = parse(&body)?;
    Ok(axum::Json(DiffResponse { diff: st.core.diff_against_active(&b.text).await? }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CommitBody {
    text: String,
    #[serde(default)]
    comment: String,
    #[serde(default)]
    confirm_secs: Option<u64>,
    #[serde(default)]
    dry_run: bool,
}

async fn config_commit(State(st): State<AppState>, req: Request) -> Result<Response, Failure> {
    let (who, b): (_, CommitBody) = caller_and_body(req).await?;
    let a = Action::ConfigCommit {
        text: b.text,
        comment: b.comment,
        confirm_secs: b.confirm_secs,
        dry_run: b.dry_run,
    };
    st.core.act(a, &who).await
}

async fn config_confirm(State(st): State<AppState>, req: Request) -> Result<Response, Failure> {
    let who = caller(req.extensions());
    st.core.act(Action::ConfigConfirm {}, &who).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RollbackBody {
    revision: u64,
}

async fn config_rollback(State(st): State<AppState>, req: Request) -> Result<Response, Failure> {
    let (who, b): (_, RollbackBody) = caller_and_body(req).await?;
    st.core.act(Action::ConfigRollback { revision: b.revision }, &who).await
}

async fn revisions(State(st): State<AppState>) -> Reply<Vec<isthmus_api::Revision>> {
    Ok(axum::Json(st.core.revisions().await?))
}

async fn revision_text(
    State(st): State<AppState>,
    Path(n): Path<u64>,
) -> Result<Response, Failure> {
    let text = st.core.revision_text_redacted(n).await?;
    Ok(([(header::CONTENT_TYPE, "application/toml")], text).into_response())
}

async fn tunnels(State(st): State<AppState>) -> Reply<Vec<isthmus_api::TunnelSummary>> {
    Ok(axum::Json(st.core.tunnels().await))
}

async fn tunnel(
    State(st): State<AppState>,
    Path(name): Path<String>,
) -> Reply<isthmus_api::TunnelDetail> {
    Ok(axum::Json(st.core.tunnel(&name).await?))
}

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
    st.core.act(a, &who).await
}

async fn plugins(State(st): State<AppState>) -> Reply<Vec<isthmus_api::Plugin>> {
    Ok(axum::Json(st.core.plugins().await?))
}

async fn plugin_hooks(State(st): State<AppState>) -> Reply<Vec<isthmus_api::PluginHook>> {
    Ok(axum::Json(st.core.plugin_hooks().await))
}

async fn plugin_upload(State(st): State<AppState>, req: Request) -> Result<Response, Failure> {
    let who = caller(req.extensions());
    let body = axum::body::to_bytes(req.into_body(), MAX_PLUGIN).await.map_err(|_| {
        Failure::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too-large",
            format!("plugin package larger than {} MiB", MAX_PLUGIN >> 20),
        )
    })?;
    let p = st.core.plugin_upload(&body, &who).await?;
    Ok((StatusCode::CREATED, axum::Json(p)).into_response())
}

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
    st.core.act(a, &who).await
}

async fn system_status(State(st): State<AppState>) -> Reply<isthmus_api::SystemStatus> {
    let core = st.core.clone();
    let s = tokio::task::spawn_blocking(move || crate::upgrade::status(&core))
        .await
        .map_err(|e| Failure::internal(format!("reading the slots did not complete: {e}")))?;
    Ok(axum::Json(s))
}

/// `POST /system/upgrade?sha256=HEX&tries=N&gate_secs=S`: the body is the firmware image.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UpgradeQuery {
    sha256: Option<String>,
    tries: Option<u32>,
    gate_secs: Option<u64>,
}

async fn system_upgrade(
    State(st): State<AppState>,
    axum::extract::Query(q): axum::extract::Query<UpgradeQuery>,
    req: Request,
) -> Result<Response, Failure> {
    use crate::upgrade::{self as up, UpgradeError as E};
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
            &core,
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
                "upgrade-refused",
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

async fn alarms(State(st): State<AppState>) -> Reply<Vec<isthmus_api::Alarm>> {
    Ok(axum::Json(st.core.alarms().await))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AlarmKey {
    name: String,
    subject: String,
}

async fn alarm_acknowledge(State(st): State<AppState>, req: Request) -> Result<Response, Failure> {
    let (who, k): (_, AlarmKey) = caller_and_body(req).await?;
    st.core.act(Action::AlarmAcknowledge { name: k.name, subject: k.subject }, &who).await
}

async fn action(State(st): State<AppState>, req: Request) -> Result<Response, Failure> {
    let (who, a): (_, Action) = caller_and_body(req).await?;
    st.core.act(a, &who).await
}

/// `GET /diagnose/path` query parameters (strings, so that a bad value gets a message naming it).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PathQuery {
    src: Option<String>,
    dst: Option<String>,
    proto: Option<String>,
    sport: Option<String>,
    dport: Option<String>,
    size: Option<String>,
}

fn diagnose_failure(e: crate::diagnose::DiagnoseError) -> Failure {
    use crate::diagnose::DiagnoseError as E;
    match e {
        E::NoConfig | E::UnknownTunnel(_) => Failure::not_found(e.to_string()),
        E::BadQuery(m) => Failure::bad_request(m),
    }
}

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
    let r = tokio::task::spawn_blocking(move || crate::diagnose::diagnose_path(&core, &query))
        .await
        .map_err(|e| Failure::internal(format!("the diagnosis did not complete: {e}")))?;
    Ok(axum::Json(r.map_err(diagnose_failure)?))
}

async fn diagnose_tunnel(
    State(st): State<AppState>,
    Path(name): Path<String>,
) -> Reply<isthmus_api::TunnelDiagnosis> {
    let core = st.core.clone();
    let r = tokio::task::spawn_blocking(move || crate::diagnose::diagnose_tunnel(&core, &name))
        .await
        .map_err(|e| Failure::internal(format!("the diagnosis did not complete: {e}")))?;
    Ok(axum::Json(r.map_err(diagnose_failure)?))
}

async fn metrics(State(st): State<AppState>) -> Response {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], st.core.metrics_text().await)
        .into_response()
}

async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], crate::openapi::DOCUMENT).into_response()
}

/// Where the API listens without `--api`: loopback, in plain HTTP. It is always served, with or
/// without `[gateway.management]`, so that an operator on the box (and the CLI's default
/// endpoint, [`isthmus_api::LOCAL_ENDPOINT`]) always reaches the daemon.
pub const LOCAL: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), isthmus_api::LOCAL_PORT);

/// Binds the API's listeners and serves them until one fails. With `explicit` (`--api`), only
/// there; else on [`LOCAL`] and, with `[gateway.management]`, on the management address. Every
/// address but loopback gets TLS (`tls` forces it on loopback too), with the identity kept in
/// `data_dir`.
pub async fn serve_all(
    core: Arc<Core>,
    explicit: Option<SocketAddr>,
    tls: bool,
    data_dir: &std::path::Path,
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
            Some(crate::tls::Identity::load_or_create(data_dir, &names)?)
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
    match servers.join_next().await {
        Some(r) => r?,
        None => Err(anyhow::anyhow!("management API: no address could be bound")),
    }
}

/// Serves the API on `addr`: TLS with `identity`, or plain HTTP when `identity` is `None`, which
/// is only allowed on loopback.
pub async fn serve(
    listener: tokio::net::TcpListener,
    identity: Option<&crate::tls::Identity>,
    app: Router,
) -> anyhow::Result<()> {
    let addr: SocketAddr = listener.local_addr()?;
    match identity {
        Some(id) => {
            let l = crate::tls::TlsListener::new(listener, id)?;
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

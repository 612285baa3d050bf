//! The control API over the Unix socket: HTTP+JSON, documented in `docs/api.yaml`.
//!
//! This is the only place that speaks HTTP about the daemon's state: the state model returns
//! [`ChangeError`], the app supervisor [`AppError`], and [`ErrorCode`] turns each into a status
//! and the stable code scripts match on (the single source of the list in `docs/api.yaml`).

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::rejection::QueryRejection;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use http::StatusCode;

use crate::api::{self, ErrorBody, ErrorDetail, PutRoute};
use crate::inspect::{self, Selection};
use crate::reload::ReloadError;
use crate::state::{ChangeError, StateHandle};
use crate::state_dir::StateDir;
use crate::supervisor::{AppError, AppSupervisor};

/// The stable error codes of the API, each with its HTTP status.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorCode {
    /// A route name that is not a host name below the domains (400).
    InvalidName,
    /// A target that cannot be parsed (400).
    InvalidTarget,
    /// A body that is not the JSON the endpoint takes (400, or 413 when too large).
    BadBody,
    /// A `timeout` that is not a duration (400).
    InvalidTimeout,
    /// A query string the endpoint does not take (400).
    BadQuery,
    /// No route for the host (404).
    NoRoute,
    /// No app of that name (404).
    NoApp,
    /// The daemon runs no environment (404).
    NoEnvironment,
    /// No such endpoint or app action (404).
    NotFound,
    /// The endpoint does not take the method (405).
    MethodNotAllowed,
    /// A restore of a host with only an override (409).
    NothingToRestore,
    /// A start by hand of an app whose dependency is not ready (409).
    DependencyNotReady,
    /// A target whose host name does not resolve (422).
    UnresolvableTarget,
    /// A target that is itproxy's own listener (422).
    RouteToItself,
    /// The change could not be persisted; nothing changed (500).
    PersistFailed,
    /// The Docker engine refused an operation (502).
    EngineError,
    /// An app did not start or become ready (503).
    NotReady,
    /// No snapshot of that name (404).
    NoSnapshot,
    /// The config file, read again for an app's start, is not valid (422).
    InvalidConfig,
    /// A snapshot cannot be saved or restored as asked (409).
    SnapshotFailed,
    /// A reload of a config whose changes only a new daemon applies (409).
    NeedsRestart,
    /// An app's clock cannot be read or moved: it declares no `faketime`, or the time is not
    /// one (409).
    NoClock,
    /// The dashboard asked from another machine or a container (403).
    Forbidden,
    /// A mock cannot start: its directory cannot be read or written, holds no exchange, or
    /// the route cannot be recorded (422).
    MockFailed,
}

impl ErrorCode {
    /// Every code, for the documentation test.
    #[cfg(test)]
    const ALL: [ErrorCode; 24] = [
        ErrorCode::InvalidName,
        ErrorCode::InvalidTarget,
        ErrorCode::BadBody,
        ErrorCode::InvalidTimeout,
        ErrorCode::BadQuery,
        ErrorCode::NoRoute,
        ErrorCode::NoApp,
        ErrorCode::NoEnvironment,
        ErrorCode::NotFound,
        ErrorCode::MethodNotAllowed,
        ErrorCode::NothingToRestore,
        ErrorCode::DependencyNotReady,
        ErrorCode::UnresolvableTarget,
        ErrorCode::RouteToItself,
        ErrorCode::PersistFailed,
        ErrorCode::EngineError,
        ErrorCode::NotReady,
        ErrorCode::NoSnapshot,
        ErrorCode::SnapshotFailed,
        ErrorCode::InvalidConfig,
        ErrorCode::NeedsRestart,
        ErrorCode::NoClock,
        ErrorCode::Forbidden,
        ErrorCode::MockFailed,
    ];

    /// The code as the API writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidName => "invalid_name",
            ErrorCode::InvalidTarget => "invalid_target",
            ErrorCode::BadBody => "bad_body",
            ErrorCode::InvalidTimeout => "invalid_timeout",
            ErrorCode::BadQuery => "bad_query",
            ErrorCode::NoRoute => "no_route",
            ErrorCode::NoApp => "no_app",
            ErrorCode::NoEnvironment => "no_environment",
            ErrorCode::NotFound => "not_found",
            ErrorCode::MethodNotAllowed => "method_not_allowed",
            ErrorCode::NothingToRestore => "nothing_to_restore",
            ErrorCode::DependencyNotReady => "dependency_not_ready",
            ErrorCode::UnresolvableTarget => "unresolvable_target",
            ErrorCode::RouteToItself => "route_to_itself",
            ErrorCode::PersistFailed => "persist_failed",
            ErrorCode::EngineError => "engine_error",
            ErrorCode::NotReady => "not_ready",
            ErrorCode::NoSnapshot => "no_snapshot",
            ErrorCode::SnapshotFailed => "snapshot_failed",
            ErrorCode::InvalidConfig => "invalid_config",
            ErrorCode::NeedsRestart => "needs_restart",
            ErrorCode::NoClock => "no_clock",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::MockFailed => "mock_failed",
        }
    }

    /// The HTTP status it is answered with.
    pub fn status(self) -> StatusCode {
        match self {
            ErrorCode::InvalidName
            | ErrorCode::InvalidTarget
            | ErrorCode::BadBody
            | ErrorCode::InvalidTimeout
            | ErrorCode::BadQuery => StatusCode::BAD_REQUEST,
            ErrorCode::NoRoute
            | ErrorCode::NoApp
            | ErrorCode::NoEnvironment
            | ErrorCode::NotFound
            | ErrorCode::NoSnapshot => StatusCode::NOT_FOUND,
            ErrorCode::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ErrorCode::Forbidden => StatusCode::FORBIDDEN,
            ErrorCode::NothingToRestore
            | ErrorCode::DependencyNotReady
            | ErrorCode::SnapshotFailed
            | ErrorCode::NeedsRestart
            | ErrorCode::NoClock => StatusCode::CONFLICT,
            ErrorCode::UnresolvableTarget
            | ErrorCode::RouteToItself
            | ErrorCode::InvalidConfig
            | ErrorCode::MockFailed => StatusCode::UNPROCESSABLE_ENTITY,
            ErrorCode::PersistFailed => StatusCode::INTERNAL_SERVER_ERROR,
            ErrorCode::EngineError => StatusCode::BAD_GATEWAY,
            ErrorCode::NotReady => StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}

/// An API failure: a code and a message for the person.
#[derive(Debug)]
pub struct ApiError {
    code: ErrorCode,
    /// Set only where the status differs from the code's usual one (a body too large).
    status: Option<StatusCode>,
    message: String,
}

impl ApiError {
    fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ApiError {
            code,
            status: None,
            message: message.into(),
        }
    }
}

impl From<ChangeError> for ApiError {
    fn from(e: ChangeError) -> Self {
        fn code(e: &ChangeError) -> ErrorCode {
            match e {
                ChangeError::InvalidName { .. } => ErrorCode::InvalidName,
                ChangeError::InvalidTarget(_) => ErrorCode::InvalidTarget,
                ChangeError::Unresolvable(_) => ErrorCode::UnresolvableTarget,
                ChangeError::RouteToItself { .. } => ErrorCode::RouteToItself,
                ChangeError::NoRoute(_) => ErrorCode::NoRoute,
                ChangeError::NothingToRestore(_) => ErrorCode::NothingToRestore,
                ChangeError::Persist(_) => {
                    tracing::error!(error = %e, "could not persist a route change");
                    ErrorCode::PersistFailed
                }
                // A batch is refused as its refused change would be.
                ChangeError::InBatch { error, .. } => code(error),
            }
        }
        ApiError::new(code(&e), e.to_string())
    }
}

impl From<AppError> for ApiError {
    fn from(e: AppError) -> Self {
        let code = match &e {
            AppError::NoApp { .. } => ErrorCode::NoApp,
            AppError::NotReady { .. } => ErrorCode::NotReady,
            AppError::Engine(_) => ErrorCode::EngineError,
            AppError::InvalidTimeout { .. } => ErrorCode::InvalidTimeout,
            AppError::UnknownAction(_) => ErrorCode::NotFound,
            AppError::DependencyNotReady { .. } => ErrorCode::DependencyNotReady,
            AppError::Snapshot(_) => ErrorCode::SnapshotFailed,
            AppError::NoSnapshot(_) => ErrorCode::NoSnapshot,
            AppError::Config(_) => ErrorCode::InvalidConfig,
            AppError::EnvironmentStarting => ErrorCode::NotReady,
            AppError::Clock(_) => ErrorCode::NoClock,
        };
        ApiError::new(code, e.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status.unwrap_or(self.code.status());
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code.as_str().to_string(),
                message: self.message,
            },
        };
        (status, Json(body)).into_response()
    }
}

/// What the status endpoint reports that the state does not hold: set once at start-up.
pub struct DaemonInfo {
    /// When the daemon started.
    pub started: Instant,
    /// The state directory.
    pub state_dir: StateDir,
    /// The config file, if any.
    pub config_file: Option<PathBuf>,
    /// The environment's name, if any.
    pub env: Option<String>,
    /// The local CA.
    pub ca: api::CaInfo,
    /// What the daemon listens on, known once the proxy and the DNS run.
    pub listening: OnceLock<Listening>,
}

/// What the daemon serves on.
#[derive(Default, Clone)]
pub struct Listening {
    /// HTTP listeners.
    pub http: Vec<String>,
    /// HTTPS listeners.
    pub https: Vec<String>,
    /// DNS listeners.
    pub dns: Vec<String>,
    /// Where the DNS forwards names outside the domains.
    pub dns_upstreams: Vec<String>,
}

/// Everything the API's handlers reach.
pub struct Control {
    /// The desired state.
    pub state: Arc<StateHandle>,
    /// The environment's apps, if the daemon runs an environment.
    pub apps: Option<Arc<AppSupervisor>>,
    /// The daemon's fixed facts.
    pub info: DaemonInfo,
    /// Notified when `POST /v1/shutdown` asks the daemon to stop.
    pub stop: tokio::sync::Notify,
    /// The config in force (none on built-in defaults); locked by a reload, so one runs at a
    /// time.
    pub config: tokio::sync::Mutex<Option<crate::config::Config>>,
    /// Every request the proxy answers, recorded and counted.
    pub inspector: Arc<itproxy_router::Inspector>,
    /// What `/v1/metrics` reads.
    pub metrics: crate::metrics::Metrics,
    /// Mocks in front of routes.
    pub mocks: crate::mocks::Mocks,
}

impl Control {
    fn apps(&self) -> Result<&Arc<AppSupervisor>, ApiError> {
        self.apps.as_ref().ok_or_else(|| {
            ApiError::new(
                ErrorCode::NoEnvironment,
                "this daemon runs no environment; declare [env] name and [[app]]s in itproxy.toml",
            )
        })
    }

    /// The daemon's status.
    pub async fn status(&self) -> api::Status {
        let info = &self.info;
        let (routes, overrides, domains) = self
            .state
            .read(|s| {
                let domains = s.domains().iter().map(|d| d.to_string()).collect();
                (s.route_count(), s.override_count(), domains)
            })
            .await;
        let listening = info.listening.get().cloned().unwrap_or_default();
        api::Status {
            version: env!("CARGO_PKG_VERSION").to_string(),
            pid: std::process::id(),
            uptime_seconds: info.started.elapsed().as_secs_f64(),
            state_dir: info.state_dir.to_string(),
            config_file: info.config_file.as_ref().map(|p| p.display().to_string()),
            domains,
            env: info.env.clone(),
            listeners: api::Listeners {
                http: listening.http,
                https: listening.https,
                dns: listening.dns,
                control: info.state_dir.control_socket().display().to_string(),
            },
            dns_upstreams: listening.dns_upstreams,
            ca: Some(info.ca.clone()),
            routes,
            overrides,
        }
    }
}

type Shared = State<Arc<Control>>;

/// The read-only part of the API, as the dashboard serves it at its own name (the same paths
/// and answers; nothing that changes anything), with the page and `/metrics`.
pub fn dashboard_app(control: Arc<Control>, guard: DashboardGuard) -> Router {
    Router::new()
        .route("/", get(crate::dashboard::page))
        .route("/dashboard.js", get(crate::dashboard::script))
        .route("/dashboard.css", get(crate::dashboard::style))
        .route("/metrics", get(metrics))
        .route("/v1/status", get(status))
        .route("/v1/routes", get(list))
        .route("/v1/apps", get(apps))
        .route("/v1/requests", get(dashboard_requests))
        .route("/v1/metrics", get(metrics))
        .fallback(not_found)
        .layer(axum::middleware::from_fn_with_state(
            Arc::new(guard),
            this_machine_only,
        ))
        .with_state(control)
}

/// The dashboard shows every request's headers (cookies, authorization): it answers clients
/// on this machine only, not containers or other hosts that reach the proxy. The proxy sets
/// `X-Forwarded-For` (its last entry is always the address it was reached from); a request
/// without one came to the loopback listener directly, from this machine.
async fn this_machine_only(
    State(guard): State<Arc<DashboardGuard>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    // A page of another site that got its name resolved to this machine (DNS rebinding)
    // asks with that name: only the dashboard's own, or a loopback address, is answered.
    let host = req
        .headers()
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(|h| {
            h.rsplit_once(':').map_or(h, |(name, port)| {
                if port.bytes().all(|b| b.is_ascii_digit()) {
                    name
                } else {
                    h
                }
            })
        })
        .map(|h| {
            h.trim_start_matches('[')
                .trim_end_matches(']')
                .to_ascii_lowercase()
        });
    let known = match &host {
        Some(h) => {
            guard.host.as_ref().is_some_and(|d| d.as_str() == h)
                || h == "localhost"
                || h.parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback())
        }
        None => false,
    };
    if !known {
        return ApiError::new(
            ErrorCode::Forbidden,
            "the dashboard answers at its own name only",
        )
        .into_response();
    }
    match asked_from(req.headers(), &guard.trusted_proxies) {
        Ok(()) => next.run(req).await,
        Err(from) => ApiError::new(
            ErrorCode::Forbidden,
            format!(
                "the dashboard answers clients on the machine itproxy runs on only (it shows \
                 every request's headers); this request came from {from}"
            ),
        )
        .into_response(),
    }
}

/// The dashboard's name, and the proxies trusted to extend `X-Forwarded-For` (their entries
/// are skipped: the client is the first address from the right that is not one of them).
#[derive(Clone, Debug, Default)]
pub struct DashboardGuard {
    /// `itproxy.test`.
    pub host: Option<itproxy_router::HostName>,
    /// `[proxy] trusted_proxies`.
    pub trusted_proxies: Vec<ipnet::IpNet>,
}

/// Whether a request to the dashboard came from this machine (see `this_machine_only`); if
/// not, where it came from.
fn asked_from(headers: &http::HeaderMap, trusted: &[ipnet::IpNet]) -> Result<(), String> {
    let values: Vec<&http::HeaderValue> = headers.get_all("x-forwarded-for").iter().collect();
    if values.is_empty() {
        return Ok(());
    }
    let mut entries: Vec<Option<std::net::IpAddr>> = Vec::new();
    for v in values {
        let Ok(text) = v.to_str() else {
            return Err("an address that cannot be read".to_string());
        };
        entries.extend(text.split(',').map(|ip| ip.trim().parse().ok()));
    }
    // From the right, past the trusted proxies (never past the first entry).
    let mut client = None;
    for (i, entry) in entries.iter().enumerate().rev() {
        client = Some(*entry);
        match entry {
            Some(ip) if i > 0 && trusted.iter().any(|n| n.contains(ip)) => continue,
            _ => break,
        }
    }
    match client.flatten() {
        Some(std::net::IpAddr::V4(v4)) if v4.is_loopback() => Ok(()),
        Some(std::net::IpAddr::V6(v6))
            if v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback()) =>
        {
            Ok(())
        }
        Some(ip) => Err(ip.to_string()),
        None => Err("an address that cannot be read".to_string()),
    }
}

/// The API's routes.
pub fn app(control: Arc<Control>) -> Router {
    Router::new()
        .route("/v1/status", get(status))
        .route(
            "/v1/routes",
            get(list)
                .put(put_routes)
                .layer(DefaultBodyLimit::max(api::MAX_ROUTES_BODY)),
        )
        .route(
            "/v1/routes/{name}",
            get(get_route).put(put_route).delete(delete_route),
        )
        .route("/v1/routes/{name}/restore", post(restore_route))
        .route(
            "/v1/routes/{name}/mock",
            axum::routing::put(put_mock).delete(delete_mock),
        )
        .route("/v1/apps", get(apps))
        .route("/v1/apps/{name}", get(get_app))
        .route("/v1/apps/{name}/logs", get(app_logs))
        .route("/v1/apps/{name}/time", get(app_clock).post(set_app_clock))
        .route("/v1/apps/{name}/{action}", post(app_action))
        .route("/v1/errors", get(errors))
        .route("/v1/requests", get(requests))
        .route("/v1/metrics", get(metrics))
        .route("/v1/snapshots", get(snapshots))
        .route("/v1/snapshots/{name}", post(snapshot_save))
        .route("/v1/snapshots/{name}/restore", post(snapshot_restore))
        .route("/v1/shutdown", post(shutdown))
        .route("/v1/reload", post(reload))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(api::MAX_BODY))
        .with_state(control)
}

async fn status(State(c): Shared) -> Json<api::Status> {
    Json(c.status().await)
}

async fn list(State(c): Shared) -> Json<Vec<api::RouteView>> {
    Json(c.state.read(|s| s.views()).await)
}

async fn get_route(
    State(c): Shared,
    Path(name): Path<String>,
) -> Result<Json<api::RouteView>, ApiError> {
    Ok(Json(c.state.route(&name).await?))
}

async fn put_routes(
    State(c): Shared,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<api::RoutesChanged>, ApiError> {
    let body = read_body(body)?;
    let put: api::PutRoutes = serde_json::from_slice(&body).map_err(|e| {
        ApiError::new(
            ErrorCode::BadBody,
            format!(
                "the body must be JSON like {{\"set\": {{\"api\": {{\"target\": \
                 \"localhost:8000\"}}}}, \"unroute\": [\"old\"], \"restore\": [\"www\"]}}: {e}"
            ),
        )
    })?;
    Ok(Json(c.state.change_routes(put).await?))
}

async fn put_route(
    State(c): Shared,
    Path(name): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<api::RouteView>, ApiError> {
    let body = read_body(body)?;
    let put = PutRoute::from_body(&body).map_err(|e| {
        ApiError::new(
            ErrorCode::BadBody,
            format!("the body must be JSON like {{\"target\": \"localhost:8000\"}}: {e}"),
        )
    })?;
    Ok(Json(c.state.set_route(&name, put).await?))
}

async fn delete_route(
    State(c): Shared,
    Path(name): Path<String>,
) -> Result<Json<api::Removed>, ApiError> {
    let view = c.state.unroute(&name).await?;
    Ok(Json(api::Removed {
        host: view.host,
        target: view.target,
    }))
}

async fn restore_route(
    State(c): Shared,
    Path(name): Path<String>,
) -> Result<Json<api::Restored>, ApiError> {
    // A mock goes first: the route is back as it was before it.
    let host = c.state.qualify(&name).await?;
    if c.mocks.stop(&c.state, &host).await? {
        let route = c.state.read(|s| s.view_or_endpoint(&host)).await;
        return Ok(Json(api::Restored {
            changed: true,
            route,
        }));
    }
    let (changed, route) = c.state.restore(&name).await?;
    Ok(Json(api::Restored {
        changed,
        route: Some(route),
    }))
}

async fn put_mock(
    State(c): Shared,
    Path(name): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<api::RouteView>, ApiError> {
    let body = read_body(body)?;
    let put: api::PutMock = serde_json::from_slice(&body).map_err(|e| {
        ApiError::new(
            ErrorCode::BadBody,
            format!("the body must be JSON like {{\"mode\": \"record\", \"dir\": \"/abs/dir\"}} (mode record or replay): {e}"),
        )
    })?;
    match c.mocks.start(&c.state, &name, put).await {
        Ok(view) => Ok(Json(view)),
        Err(crate::mocks::MockError::Route(e)) => Err(e.into()),
        Err(e) => Err(ApiError::new(ErrorCode::MockFailed, e.to_string())),
    }
}

async fn delete_mock(
    State(c): Shared,
    Path(name): Path<String>,
) -> Result<Json<api::Restored>, ApiError> {
    let host = c.state.qualify(&name).await?;
    if !c.mocks.stop(&c.state, &host).await? {
        return Err(ApiError::new(
            ErrorCode::NotFound,
            format!("no mock is in front of {host}"),
        ));
    }
    let route = c.state.read(|s| s.view_or_endpoint(&host)).await;
    Ok(Json(api::Restored {
        changed: true,
        route,
    }))
}

async fn reload(State(c): Shared) -> Result<Json<api::Reloaded>, ApiError> {
    let mut config = c.config.lock().await;
    let done = crate::reload::reload(&mut config, &c.state, c.apps.as_ref())
        .await
        .map_err(|e| {
            let code = match &e {
                ReloadError::NoFile | ReloadError::Invalid(_) => ErrorCode::InvalidConfig,
                ReloadError::NeedsRestart(_) => ErrorCode::NeedsRestart,
                ReloadError::Routes(_) => ErrorCode::PersistFailed,
                ReloadError::Apps(AppError::EnvironmentStarting) => ErrorCode::NotReady,
                ReloadError::Apps(_) => ErrorCode::EngineError,
            };
            ApiError::new(code, e.to_string())
        })?;
    Ok(Json(done))
}

async fn apps(State(c): Shared) -> Json<api::AppsView> {
    Json(match &c.apps {
        Some(apps) => apps.apps_view().await,
        None => api::AppsView {
            env: c.info.env.clone(),
            phase: api::EnvPhase::Idle,
            error: None,
            ready_after_ms: None,
            apps: Vec::new(),
        },
    })
}

async fn get_app(
    State(c): Shared,
    Path(name): Path<String>,
) -> Result<Json<api::AppView>, ApiError> {
    Ok(Json(c.apps()?.app(&name).await?))
}

async fn app_action(
    State(c): Shared,
    Path((name, action)): Path<(String, String)>,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<api::AppView>), ApiError> {
    let body = read_body(body)?;
    let action_body = api::AppAction::from_body(&body).map_err(|e| {
        ApiError::new(
            ErrorCode::BadBody,
            format!(
                "the body must be empty or JSON like {{\"wait\": true, \"timeout\": \"30s\"}}: {e}"
            ),
        )
    })?;
    let done = c.apps()?.app_action(&name, &action, action_body).await?;
    let status = if done.finished {
        StatusCode::OK
    } else {
        StatusCode::ACCEPTED
    };
    Ok((status, Json(done.view)))
}

async fn app_clock(
    State(c): Shared,
    Path(name): Path<String>,
) -> Result<Json<api::AppClock>, ApiError> {
    Ok(Json(c.apps()?.clock(&name)?))
}

async fn set_app_clock(
    State(c): Shared,
    Path(name): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<api::AppClock>, ApiError> {
    let body = read_body(body)?;
    let set: api::SetClock = serde_json::from_slice(&body).map_err(|e| {
        ApiError::new(
            ErrorCode::BadBody,
            format!("the body must be JSON like {{\"time\": \"+2d\"}}: {e}"),
        )
    })?;
    Ok(Json(c.apps()?.set_clock(&name, &set.time)?))
}

async fn app_logs(
    State(c): Shared,
    Path(name): Path<String>,
    query: Result<Query<api::LogsQuery>, QueryRejection>,
) -> Result<Json<api::AppLogs>, ApiError> {
    let q = read_query(query)?;
    Ok(Json(
        c.apps()?
            .logs(&name, q.since.unwrap_or(0.0), q.tail)
            .await?,
    ))
}

async fn errors(
    State(c): Shared,
    query: Result<Query<api::LogsQuery>, QueryRejection>,
) -> Result<Json<api::ErrorScanView>, ApiError> {
    let q = read_query(query)?;
    if q.tail.is_some() {
        return Err(ApiError::new(
            ErrorCode::BadQuery,
            "tail does not apply to the error scan, which reads every line since `since`",
        ));
    }
    Ok(Json(c.apps()?.error_lines(q.since.unwrap_or(0.0)).await?))
}

async fn requests(
    state: Shared,
    query: Result<Query<api::RequestsQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    requests_as(state, query, false).await
}

async fn requests_as(
    State(c): Shared,
    query: Result<Query<api::RequestsQuery>, QueryRejection>,
    redact: bool,
) -> Result<Response, ApiError> {
    let q = query.map(|Query(q)| q).map_err(|e| {
        ApiError::new(
            ErrorCode::BadQuery,
            format!(
                "{}; the query takes route (a name), since (a request id), limit (a count) \
                 and follow (true or false), e.g. ?route=api&limit=20",
                e.body_text()
            ),
        )
    })?;
    let route = match &q.route {
        Some(name) => Some(c.state.qualify(name).await?),
        None => None,
    };
    let selection = Selection {
        route,
        since: q.since.unwrap_or(0),
        limit: q.limit.unwrap_or(inspect::DEFAULT_LIMIT),
        redact,
    };
    if q.follow {
        let lines = axum::body::Body::from_stream(selection.follow(c.inspector.clone()));
        let json_lines = [(http::header::CONTENT_TYPE, "application/x-ndjson")];
        return Ok((json_lines, lines).into_response());
    }
    Ok(Json(selection.list(&c.inspector)).into_response())
}

async fn metrics(State(c): Shared) -> Response {
    let text = c.metrics.render().await;
    (
        [(http::header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)],
        text,
    )
        .into_response()
}

/// The dashboard's `/v1/requests`: the control API's, credential headers hidden.
async fn dashboard_requests(
    state: Shared,
    query: Result<Query<api::RequestsQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    requests_as(state, query, true).await
}

async fn snapshots(State(c): Shared) -> Result<Json<Vec<api::SnapshotView>>, ApiError> {
    c.apps()?;
    Ok(Json(crate::supervisor::list_snapshots(
        &c.info.state_dir.snapshots(),
    )?))
}

async fn snapshot_save(
    State(c): Shared,
    Path(name): Path<String>,
) -> Result<Json<api::SnapshotView>, ApiError> {
    let root = c.info.state_dir.snapshots();
    Ok(Json(c.apps()?.snapshot_save(&root, &name).await?))
}

async fn snapshot_restore(
    State(c): Shared,
    Path(name): Path<String>,
) -> Result<Json<api::SnapshotView>, ApiError> {
    let root = c.info.state_dir.snapshots();
    Ok(Json(c.apps()?.snapshot_restore(&root, &name).await?))
}

async fn shutdown(State(c): Shared) -> (StatusCode, Json<serde_json::Value>) {
    c.stop.notify_one();
    (
        StatusCode::ACCEPTED,
        Json(serde_json::json!({ "stopping": true, "pid": std::process::id() })),
    )
}

fn read_body(body: Result<Bytes, BytesRejection>) -> Result<Bytes, ApiError> {
    body.map_err(|e| ApiError {
        code: ErrorCode::BadBody,
        status: Some(e.status()),
        message: format!("cannot read the request body: {}", e.body_text()),
    })
}

fn read_query<T>(query: Result<Query<T>, QueryRejection>) -> Result<T, ApiError> {
    query.map(|Query(q)| q).map_err(|e| {
        ApiError::new(
            ErrorCode::BadQuery,
            format!(
                "{}; the query takes since (Unix seconds) and tail (a count), e.g. ?since=1764200000&tail=50",
                e.body_text()
            ),
        )
    })
}

async fn not_found() -> ApiError {
    ApiError::new(ErrorCode::NotFound, "no such endpoint; see docs/api.yaml")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        ErrorCode::MethodNotAllowed,
        "this endpoint does not take that method; see docs/api.yaml",
    )
}

#[cfg(test)]
mod tests {
    use super::ErrorCode;

    #[test]
    fn the_dashboard_answers_this_machine_only() {
        let asked = |xff: &[&str]| {
            let mut h = http::HeaderMap::new();
            for v in xff {
                h.append("x-forwarded-for", v.parse().unwrap());
            }
            super::asked_from(&h, &[])
        };
        assert_eq!(asked(&[]), Ok(()), "straight to the loopback listener");
        assert_eq!(asked(&["127.0.0.1"]), Ok(()));
        assert_eq!(asked(&["::1"]), Ok(()));
        assert_eq!(
            asked(&["10.0.0.9, 127.0.0.1"]),
            Ok(()),
            "the proxy's entry is the last"
        );
        assert_eq!(
            asked(&["127.0.0.1", "172.18.0.3"]),
            Err("172.18.0.3".into())
        );
        assert_eq!(
            asked(&["127.0.0.1, 192.168.1.20"]),
            Err("192.168.1.20".into())
        );
        assert!(asked(&["garbage"]).is_err());
        // Behind a trusted proxy on loopback, the client is the entry before it.
        let trusted = ["127.0.0.1/32".parse().unwrap()];
        let behind = |xff: &str| {
            let mut h = http::HeaderMap::new();
            h.append("x-forwarded-for", xff.parse().unwrap());
            super::asked_from(&h, &trusted)
        };
        assert_eq!(behind("203.0.113.9, 127.0.0.1"), Err("203.0.113.9".into()));
        assert_eq!(behind("127.0.0.1, 127.0.0.1"), Ok(()));
        assert_eq!(behind("127.0.0.1"), Ok(()));
    }

    /// The code list in docs/api.yaml is this enum, no more and no less.
    #[test]
    fn every_error_code_is_documented_in_api_yaml() {
        let yaml =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/api.yaml"))
                .expect("docs/api.yaml");
        let line = yaml
            .lines()
            .find(|l| l.trim_start().starts_with("code: { type: string, enum:"))
            .expect("docs/api.yaml lists the error codes as an enum of Error.error.code");
        let listed: Vec<&str> = line[line.find('[').unwrap() + 1..line.find(']').unwrap()]
            .split(',')
            .map(str::trim)
            .collect();
        let codes: Vec<&str> = ErrorCode::ALL.iter().map(|c| c.as_str()).collect();
        for c in &codes {
            assert!(
                listed.contains(c),
                "{c} is not in docs/api.yaml's code enum"
            );
        }
        for l in &listed {
            assert!(
                codes.contains(l),
                "docs/api.yaml lists {l}, which the API never answers"
            );
        }
        for c in ErrorCode::ALL {
            let status = c.status().as_u16().to_string();
            assert!(
                yaml.contains(&format!("{} ({status})", c.as_str())),
                "docs/api.yaml does not say {} is answered with {status}",
                c.as_str()
            );
        }
    }
}

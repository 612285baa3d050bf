//! The control API's wire types, shared by the daemon (server) and the CLI (client).
//! `docs/api.yaml` documents the same shapes as OpenAPI 3.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Largest request body the daemon reads.
pub const MAX_BODY: usize = 64 * 1024;
/// The largest body of `PUT /v1/routes` (about 100,000 routes).
pub const MAX_ROUTES_BODY: usize = 16 * 1024 * 1024;

/// Where a route's current target comes from.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum RouteSource {
    /// Declared in the config file.
    Config,
    /// Set through the API or CLI (persisted in the state directory).
    Override,
    /// A running container with `itproxy.host`/`itproxy.port` labels.
    Discovered,
    /// An HTTP endpoint of a declared app.
    App,
    /// A mock in front of the route (`route --record` or `--mock`), until `--restore`.
    Mock,
}

/// A mock in front of a route: recording its exchanges, or answering from them.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct MockView {
    /// `record` (forwarded to the route's target, each exchange saved) or `replay` (answered
    /// from the recording, no backend).
    pub mode: MockMode,
    /// The recording's directory (absolute).
    pub dir: String,
}

/// What a mock does.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum MockMode {
    /// Forwards and saves.
    Record,
    /// Answers from the recording.
    Replay,
}

/// One route as the API shows it.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct RouteView {
    /// Full host name, e.g. `api.test`.
    pub host: String,
    /// Where requests go, normalised: `http://localhost:8000`.
    pub target: String,
    /// Where that target comes from.
    pub source: RouteSource,
    /// The declared target, when an override replaces it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub declared: Option<String>,
    /// Plain-HTTP requests get a 308 to HTTPS.
    #[serde(default)]
    pub redirect_https: bool,
    /// An `https://` target's certificate is not verified.
    #[serde(default)]
    pub insecure_upstream: bool,
    /// The addresses the target resolved to, tried in order.
    pub addresses: Vec<String>,
    /// The mock in front of the route, if any (`source` is then `mock`, `declared` what the
    /// route goes back to with `--restore`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mock: Option<MockView>,
}

/// Body of `PUT /v1/routes/{name}`.
#[derive(Serialize, Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub struct PutRoute {
    /// `host:port`, `http://host:port`, `https://host[:port]` or a bare port.
    pub target: String,
    /// Redirect plain-HTTP requests to HTTPS.
    #[serde(default)]
    pub redirect_https: bool,
    /// Do not verify an `https://` target's certificate (self-signed dev backends).
    #[serde(default)]
    pub insecure_upstream: bool,
}

/// Body of `PUT /v1/routes`: many route changes, applied together or not at all.
#[derive(Serialize, Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
pub struct PutRoutes {
    /// Routes to set (overrides), by name.
    #[serde(default)]
    pub set: BTreeMap<String, PutRoute>,
    /// Names whose route to remove.
    #[serde(default)]
    pub unroute: Vec<String>,
    /// Names whose override to drop.
    #[serde(default)]
    pub restore: Vec<String>,
}

/// Answer of `PUT /v1/routes`.
#[derive(Serialize, Deserialize, Debug)]
pub struct RoutesChanged {
    /// Routes set.
    pub set: usize,
    /// Routes removed.
    pub unrouted: usize,
    /// Overrides dropped.
    pub restored: usize,
    /// Routes in force now.
    pub routes: usize,
}

impl PutRoute {
    /// Reads the body of `PUT /v1/routes/{name}` as the daemon does.
    pub fn from_body(body: &[u8]) -> Result<PutRoute, serde_json::Error> {
        serde_json::from_slice(body)
    }
}

/// Answer of `DELETE /v1/routes/{name}`.
#[derive(Serialize, Deserialize, Debug)]
pub struct Removed {
    /// The host whose route was removed.
    pub host: String,
    /// The target it had.
    pub target: String,
}

/// Answer of `POST /v1/routes/{name}/restore`.
#[derive(Serialize, Deserialize, Debug)]
pub struct Restored {
    /// Whether an override was dropped (false: the route already had its declared target).
    pub changed: bool,
    /// The route now; none when a mock of a name without a route was taken away.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route: Option<RouteView>,
}

/// Answer of `GET /v1/status`.
#[derive(Serialize, Deserialize, Debug)]
pub struct Status {
    /// itproxy's version.
    pub version: String,
    /// The daemon's process id.
    pub pid: u32,
    /// Seconds since the daemon started.
    pub uptime_seconds: f64,
    /// The state directory.
    pub state_dir: String,
    /// The config file, if one was loaded.
    pub config_file: Option<String>,
    /// Domains served, primary first.
    pub domains: Vec<String>,
    /// The Docker environment, if one is configured (its network is `itproxy-<env>`).
    #[serde(default)]
    pub env: Option<String>,
    /// Listening addresses.
    pub listeners: Listeners,
    /// Number of active routes.
    pub routes: usize,
    /// Number of persisted overrides.
    pub overrides: usize,
    /// The local CA.
    pub ca: Option<CaInfo>,
    /// Upstream resolvers the DNS server forwards to.
    pub dns_upstreams: Vec<String>,
}

/// The local CA, as `status` shows it.
#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct CaInfo {
    /// The root certificate file.
    pub root: String,
    /// System roots plus ours.
    pub bundle: String,
    /// SHA-256 fingerprint of the root.
    pub fingerprint: String,
    /// Names the root may sign.
    pub permitted: Vec<String>,
}

/// What the daemon listens on.
#[derive(Serialize, Deserialize, Debug)]
pub struct Listeners {
    /// Plain-HTTP proxy addresses.
    pub http: Vec<String>,
    /// HTTPS proxy addresses.
    pub https: Vec<String>,
    /// DNS addresses (UDP and TCP).
    pub dns: Vec<String>,
    /// The control socket.
    pub control: String,
}

/// The body of every error answer.
#[derive(Serialize, Deserialize, Debug)]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorDetail,
}

/// An error: a stable code for scripts and a sentence for people.
#[derive(Serialize, Deserialize, Debug)]
pub struct ErrorDetail {
    /// Stable, machine-readable code, e.g. `invalid_target`.
    pub code: String,
    /// What failed, on which input, and what to do.
    pub message: String,
}

/// Where the environment's apps are, as a whole.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum EnvPhase {
    /// No apps declared.
    Idle,
    /// Steps are running.
    Starting,
    /// Every app of the selected steps is ready.
    Ready,
    /// An app did not become ready; later steps were not started.
    Failed,
}

/// An app's state.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum AppState {
    /// Waiting for its step or its dependencies.
    Pending,
    /// Its containers are starting or being checked.
    Starting,
    /// Its readiness check passed.
    Ready,
    /// Ready and serving, while replacement containers start beside its own (a start-first
    /// restart); it stays ready if they fail.
    Restarting,
    /// It did not become ready.
    Failed,
    /// Stopped (or its step was not selected and it was not running).
    Stopped,
}

/// Answer of `GET /v1/apps`.
#[derive(Serialize, Deserialize, Debug)]
pub struct AppsView {
    /// The environment.
    pub env: Option<String>,
    /// The environment's phase.
    pub phase: EnvPhase,
    /// Why it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Milliseconds from the daemon's start to every selected app ready.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_after_ms: Option<u64>,
    /// The apps, in step order.
    pub apps: Vec<AppView>,
}

/// One app.
#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct AppView {
    /// Its name.
    pub name: String,
    /// Its step.
    pub step: String,
    /// Its image.
    pub image: String,
    /// Its state.
    pub state: AppState,
    /// Why it failed (with the container's last lines).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The readiness check, e.g. `http /health on port 9000 = 200`.
    pub ready_check: String,
    /// Milliseconds its last start took to pass the readiness check.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_in_ms: Option<u64>,
    /// Apps it waits for.
    pub depends_on: Vec<String>,
    /// Its containers, as the engine reports them now.
    pub containers: Vec<ContainerView>,
    /// What happens when its container exits on its own: `on-failure`, `always` or `no`.
    #[serde(default)]
    pub restart_policy: String,
    /// How often the restart policy started it again since the daemon started.
    #[serde(default)]
    pub restarts: u32,
    /// How its container last ended on its own (`exit code 1`, `exit code 137, ... (OOM)`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_exit: Option<String>,
}

/// One container of an app.
#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct ContainerView {
    /// The endpoint it runs.
    pub endpoint: String,
    /// The container's name.
    pub name: String,
    /// Docker's state (`running`, `exited`, `missing`...).
    pub state: String,
    /// Its address on the environment's network.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    /// What it serves: `http://www.test` (routed by the proxy), `tcp://s3.test:8000` (resolves
    /// to the container), or nothing for a worker.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serves: Option<String>,
}

/// Body of `POST /v1/apps/{name}/{start,stop,restart}` (all optional).
#[derive(Serialize, Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
pub struct AppAction {
    /// Answer only once the app is ready (or failed).
    #[serde(default)]
    pub wait: bool,
    /// Readiness timeout for this start, e.g. `30s` (default: the app's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
}

impl AppAction {
    /// Reads the body of `POST /v1/apps/{name}/{action}` as the daemon does: an empty (or
    /// blank) body asks for the defaults, as `curl -X POST` without `-d` sends.
    pub fn from_body(body: &[u8]) -> Result<AppAction, serde_json::Error> {
        if body.iter().all(u8::is_ascii_whitespace) {
            return Ok(AppAction::default());
        }
        serde_json::from_slice(body)
    }

    /// The readiness timeout asked for, if any.
    pub fn timeout(&self) -> Result<Option<std::time::Duration>, humantime::DurationError> {
        self.timeout
            .as_deref()
            .map(humantime::parse_duration)
            .transpose()
    }
}

/// Query of `GET /v1/apps/{app}/logs` and `GET /v1/errors`.
#[derive(Serialize, Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
pub struct LogsQuery {
    /// Only lines written since this time (Unix seconds, with a fraction); all when absent.
    #[serde(default)]
    pub since: Option<f64>,
    /// Only the last N lines of each container (logs only).
    #[serde(default)]
    pub tail: Option<usize>,
}

/// One line a container wrote.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct LogLineView {
    /// The container's name.
    pub container: String,
    /// The endpoint it runs.
    pub endpoint: String,
    /// `stdout` or `stderr`.
    pub stream: String,
    /// The line, without its newline.
    pub text: String,
}

/// `GET /v1/apps/{app}/logs`: the app's containers' lines, container by container.
#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct AppLogs {
    /// The app.
    pub app: String,
    /// Its lines.
    pub lines: Vec<LogLineView>,
}

/// `GET /v1/errors`: the `itproxy logs --errors` scan of every container, as data.
#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct ErrorScanView {
    /// The environment.
    pub env: String,
    /// The scan covered lines since this time (Unix seconds; 0 for all).
    pub since: f64,
    /// How many containers were scanned.
    pub containers: usize,
    /// The error lines, container by container (empty when none).
    pub findings: Vec<ErrorFinding>,
}

/// A line the app's patterns mark as an error.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct ErrorFinding {
    /// The app.
    pub app: String,
    /// The container's name.
    pub container: String,
    /// The line (a traceback's last line).
    pub line: String,
    /// A traceback's lines, first to last; absent for a single line.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub context: Vec<String>,
}

/// A snapshot of the environment's named volumes (`itproxy snapshot save NAME`).
#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct SnapshotView {
    /// Its name.
    pub name: String,
    /// When it was saved (Unix seconds).
    pub created: u64,
    /// The volumes it holds.
    pub volumes: Vec<SnapshotVolume>,
    /// How long the save or restore just done took (absent in a listing).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub took_ms: Option<u64>,
}

/// One volume of a snapshot.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct SnapshotVolume {
    /// The app that mounts it.
    pub app: String,
    /// The volume's name in the config (`pgdata`).
    pub volume: String,
    /// Where the app mounts it.
    pub target: String,
    /// The archive's size in bytes.
    pub bytes: u64,
}

/// Answer of `POST /v1/reload`: what reading the config file again changed.
#[derive(Serialize, Deserialize, Debug, Clone, Default)]
pub struct Reloaded {
    /// Declared routes new in the file.
    pub routes_added: Vec<String>,
    /// Declared routes whose target or options changed.
    pub routes_changed: Vec<String>,
    /// Declared routes no longer in the file.
    pub routes_removed: Vec<String>,
    /// Apps new in the file, started.
    pub apps_added: Vec<String>,
    /// Apps whose declaration changed, restarted (as their `restart` order says).
    pub apps_changed: Vec<String>,
    /// Apps no longer in the file: stopped, their containers removed (their volumes kept).
    pub apps_removed: Vec<String>,
    /// Unchanged apps that a failed `up` had left unstarted, started now.
    #[serde(default)]
    pub apps_started: Vec<String>,
    /// Apps that did not become ready, with why (the rest of the reload took effect).
    pub errors: Vec<String>,
}

/// An app's clock (`GET`/`POST /v1/apps/{name}/time`).
#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct AppClock {
    /// The app.
    pub app: String,
    /// Its declared `faketime`.
    pub declared: String,
    /// How far its clock is from the real one, in seconds (ahead if positive).
    pub offset_seconds: i64,
    /// The time its processes read now (RFC 3339, UTC).
    pub now: String,
}

/// Body of `POST /v1/apps/{name}/time`.
#[derive(Serialize, Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields)]
pub struct SetClock {
    /// An offset (`+2d`, `-1h`), a UTC time (`2027-01-01 10:00:00`), or `declared`.
    pub time: String,
}

/// One request the proxy answered, as `GET /v1/requests` and the access log show it.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct RequestView {
    /// Increasing in the order requests ended.
    pub id: u64,
    /// When its head was complete, RFC 3339 in UTC with milliseconds.
    pub time: String,
    /// `HTTP/1.0`, `HTTP/1.1` or `HTTP/2`.
    pub protocol: String,
    /// Whether it came over TLS.
    pub tls: bool,
    /// The client's address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client: Option<String>,
    /// The route it took (its host name); none when no route took it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route: Option<String>,
    /// That route's target.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream: Option<String>,
    /// The method ("" for a head that could not be read).
    pub method: String,
    /// The request target as the client sent it.
    pub target: String,
    /// The status sent to the client; 0 when none was.
    pub status: u16,
    /// From the complete head to the end of the response, in milliseconds.
    pub duration_ms: f64,
    /// From asking the upstream to its response head, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream_ms: Option<f64>,
    /// Bytes of the request, head and body.
    pub request_bytes: u64,
    /// Bytes of the response, head and body, as sent to the client.
    pub response_bytes: u64,
    /// The upstream failed (answered 502/504 by itproxy).
    #[serde(default)]
    pub upstream_failed: bool,
    /// Why the request ended badly, if it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The request's headers as the client sent them, in order.
    #[serde(default)]
    pub request_headers: Vec<(String, String)>,
    /// The response's headers as the client got them, in order.
    #[serde(default)]
    pub response_headers: Vec<(String, String)>,
    /// The request body, for the routes of `[proxy] inspect_bodies` (up to
    /// `inspect_body_limit` bytes; base64 in `request_body_base64` when it is not UTF-8).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_body: Option<String>,
    /// See `request_body`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_body_base64: Option<String>,
    /// The response body, likewise (as relayed: a chunked body keeps its chunk sizes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_body: Option<String>,
    /// See `response_body`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_body_base64: Option<String>,
    /// A body was longer than what was kept of it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub bodies_cut: bool,
}

/// Query of `GET /v1/requests`.
#[derive(Serialize, Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
pub struct RequestsQuery {
    /// Only this route's requests (a name, qualified like a route's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route: Option<String>,
    /// Only requests after this id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<u64>,
    /// At most this many (the newest), before following.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<usize>,
    /// Keep the answer open and send each new request as it ends (one JSON object per line).
    #[serde(default)]
    pub follow: bool,
}

/// Body of `PUT /v1/routes/{name}/mock`.
#[derive(Serialize, Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub struct PutMock {
    /// `record` or `replay`.
    pub mode: MockMode,
    /// The recording's directory, absolute (created for `record`).
    pub dir: String,
}

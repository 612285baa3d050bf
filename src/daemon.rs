//! The daemon: owns the desired state (config + persisted overrides), derives the route table
//! from it and publishes it to the proxy; serves the control API; stops on SIGINT/SIGTERM.
//! See `docs/LIFECYCLE.md` for the order of start-up and shutdown.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use arc_swap::ArcSwap;
use http::StatusCode;
use itproxy_router::{HostName, Route, RouteTable, Upstream, UpstreamOptions};
use tokio::sync::Mutex;

use crate::api::{self, RouteSource, RouteView};
use crate::config::{Config, RouteSpec};
use crate::state::{self, Override, Overrides};

mod apps;
pub use apps::Apps;

/// The control socket's file name in the state directory.
pub const CONTROL_SOCKET: &str = "control.sock";

/// An API failure: HTTP status, stable code, and a message for the person.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }
    fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }
}

/// A route's spec and the upstream built from it.
#[derive(Clone)]
struct Routed {
    spec: RouteSpec,
    upstream: Arc<Upstream>,
}

/// An active override: a resolved target, or the declared route removed.
#[derive(Clone)]
enum Active {
    Target(Routed),
    Removed,
}

struct Routes {
    declared: BTreeMap<HostName, Routed>,
    /// Containers running with `itproxy.host` labels, with their ids.
    discovered: BTreeMap<HostName, (String, Routed)>,
    /// Declared apps' HTTP endpoints, with their app.
    apps: BTreeMap<HostName, (itproxy_orchestrator::AppName, Routed)>,
    /// Declared apps' TCP endpoints: names that resolve to the container itself.
    direct: BTreeMap<HostName, (itproxy_orchestrator::AppName, std::net::IpAddr)>,
    overrides: BTreeMap<HostName, Active>,
    /// Bumped for every upstream created, so pooled connections never cross routes' lives.
    generation: u64,
}

impl Routes {
    /// The routes in force: declared, then apps', then discovered containers over them, then
    /// overrides.
    fn effective(&self) -> impl Iterator<Item = (&HostName, &Routed, RouteSource)> {
        let mut all: BTreeMap<&HostName, (&Routed, RouteSource)> = BTreeMap::new();
        for (h, r) in &self.declared {
            all.insert(h, (r, RouteSource::Config));
        }
        for (h, (_, r)) in &self.apps {
            all.insert(h, (r, RouteSource::App));
        }
        for (h, (_, r)) in &self.discovered {
            all.insert(h, (r, RouteSource::Discovered));
        }
        for (h, a) in &self.overrides {
            match a {
                Active::Target(r) => all.insert(h, (r, RouteSource::Override)),
                Active::Removed => all.remove(h),
            };
        }
        all.into_iter().map(|(h, (r, s))| (h, r, s))
    }

    /// What a host goes back to without its override: a discovered container, else an app's
    /// container, else the config.
    fn base(&self, host: &HostName) -> Option<&Routed> {
        self.discovered
            .get(host)
            .map(|(_, r)| r)
            .or_else(|| self.apps.get(host).map(|(_, r)| r))
            .or_else(|| self.declared.get(host))
    }

    fn view(&self, host: &HostName) -> Option<RouteView> {
        self.effective()
            .find(|(h, _, _)| *h == host)
            .map(|(h, r, source)| RouteView {
                host: h.to_string(),
                target: r.spec.target.to_string(),
                source,
                declared: match source {
                    RouteSource::Override => self.base(h).map(|d| d.spec.target.to_string()),
                    _ => None,
                },
                redirect_https: r.spec.redirect_https,
                insecure_upstream: r.spec.insecure_upstream,
                addresses: r.upstream.addrs().map(|a| a.to_string()).collect(),
            })
    }

    fn persisted(&self) -> Overrides {
        self.overrides
            .iter()
            .map(|(h, a)| {
                let o = match a {
                    Active::Target(r) => Override::Target(r.spec.clone()),
                    Active::Removed => Override::Removed,
                };
                (h.clone(), o)
            })
            .collect()
    }

    /// The DNS view of the same routes: every routed host resolves to the proxy.
    fn zone(&self, config: &Config) -> itproxy_dns::Zone {
        let domains: Vec<String> = config.domains.iter().map(|d| d.to_string()).collect();
        let hosts: Vec<&str> = self.effective().map(|(h, _, _)| h.as_str()).collect();
        // A TCP endpoint's name resolves to its container, unless an override routes it.
        let direct = self
            .direct
            .iter()
            .filter(|(h, _)| !self.overrides.contains_key(*h))
            .map(|(h, (_, ip))| (h.as_str(), vec![*ip]));
        itproxy_dns::Zone::new(
            domains.iter().map(String::as_str),
            hosts,
            direct,
            self.generation as u32,
            config.dns.ttl,
        )
        .expect("validated host names are valid DNS names")
    }

    fn table(&self) -> RouteTable {
        RouteTable::new(self.effective().map(|(h, r, _)| {
            Route::new(h.clone(), r.upstream.clone()).with_redirect_https(r.spec.redirect_https)
        }))
    }

    /// Builds the upstream for `spec` with a fresh generation.
    fn build(
        &mut self,
        spec: RouteSpec,
        addrs: Vec<std::net::SocketAddr>,
        timeouts: &crate::config::Timeouts,
    ) -> Routed {
        self.generation += 1;
        let options = UpstreamOptions {
            connect_timeout: spec.connect_timeout.unwrap_or(timeouts.connect),
            read_timeout: spec.read_timeout.unwrap_or(timeouts.read),
            verify_tls: !spec.insecure_upstream,
        };
        let upstream = Arc::new(Upstream::new(
            spec.target.clone(),
            addrs,
            self.generation,
            &options,
        ));
        Routed { spec, upstream }
    }
}

/// The running daemon's state, shared by the control API handlers.
pub struct Daemon {
    config: Config,
    state_dir: PathBuf,
    started: Instant,
    tls: TlsInfo,
    table: Arc<ArcSwap<RouteTable>>,
    routes: Mutex<Routes>,
    /// What the daemon listens on, known once everything runs.
    listeners: std::sync::OnceLock<Listening>,
    zone: Arc<ArcSwap<itproxy_dns::Zone>>,
    /// The environment's declared apps, when there is an environment.
    apps: Option<Apps>,
    /// Asked to stop through the API (`itproxy down`).
    shutdown: tokio::sync::Notify,
}

impl Daemon {
    /// Resolves every declared and persisted target and builds the first route table.
    /// A target that does not resolve stays routed (it answers 502 explaining why), so a
    /// persisted route is never dropped.
    async fn new(
        config: Config,
        state_dir: PathBuf,
        overrides: Overrides,
        tls: TlsInfo,
        apps: Option<Apps>,
    ) -> Self {
        let timeouts = config.proxy.timeouts;
        let mut routes = Routes {
            declared: BTreeMap::new(),
            discovered: BTreeMap::new(),
            apps: BTreeMap::new(),
            direct: BTreeMap::new(),
            overrides: BTreeMap::new(),
            generation: 0,
        };
        for (host, spec) in &config.routes {
            let addrs = resolve_or_warn(host, spec).await;
            let routed = routes.build(spec.clone(), addrs, &timeouts);
            routes.declared.insert(host.clone(), routed);
        }
        for (host, o) in overrides {
            if !config.domains.iter().any(|d| host.is_within(d)) {
                tracing::warn!(
                    %host,
                    domains = %config.domains.to_string_list(),
                    "a persisted route is outside the configured domains; it is kept and still routed"
                );
            }
            let a = match o {
                Override::Target(spec) => {
                    let addrs = resolve_or_warn(&host, &spec).await;
                    Active::Target(routes.build(spec, addrs, &timeouts))
                }
                Override::Removed => Active::Removed,
            };
            routes.overrides.insert(host, a);
        }
        let table = Arc::new(ArcSwap::from_pointee(routes.table()));
        let zone = Arc::new(ArcSwap::from_pointee(routes.zone(&config)));
        Daemon {
            zone,
            config,
            state_dir,
            started: Instant::now(),
            tls,
            table,
            routes: Mutex::new(routes),
            listeners: Default::default(),
            apps,
            shutdown: tokio::sync::Notify::new(),
        }
    }

    fn qualify(&self, name: &str) -> Result<HostName, ApiError> {
        self.config.domains.qualify(name).map_err(|m| {
            ApiError::bad_request("invalid_name", format!("invalid route name {name:?}: {m}"))
        })
    }

    /// Persists `next` and, only once that succeeded, makes it the live state.
    fn commit(
        &self,
        routes: &mut Routes,
        next: BTreeMap<HostName, Active>,
    ) -> Result<(), ApiError> {
        let old = std::mem::replace(&mut routes.overrides, next);
        if let Err(e) = state::save(&self.state_dir, &routes.persisted()) {
            routes.overrides = old;
            tracing::error!(error = %e, "could not persist a route change");
            return Err(ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "persist_failed",
                format!("the change was not applied: {e}"),
            ));
        }
        self.publish(routes);
        Ok(())
    }

    /// Makes `routes` live. Proxy first, then DNS: a name never resolves before its route works.
    fn publish(&self, routes: &Routes) {
        self.table.store(Arc::new(routes.table()));
        self.zone.store(Arc::new(routes.zone(&self.config)));
    }

    /// A labelled container runs: its host routes to it (an override still wins). Not persisted:
    /// the container's presence is the state.
    pub async fn discover(&self, c: itproxy_orchestrator::Labelled) {
        let host = match self.config.domains.qualify(&c.host) {
            Ok(h) => h,
            Err(e) => {
                tracing::warn!(container = %c.id, "ignoring the {} label: {e}", itproxy_orchestrator::HOST_LABEL);
                return;
            }
        };
        let addr = std::net::SocketAddr::new(c.ip, c.port);
        let target = match itproxy_router::UpstreamSpec::parse(&addr.to_string()) {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!(container = %c.id, "ignoring a labelled container: {e}");
                return;
            }
        };
        let mut routes = self.routes.lock().await;
        let routed = routes.build(
            RouteSpec::to(target),
            vec![addr],
            &self.config.proxy.timeouts,
        );
        routes
            .discovered
            .insert(host.clone(), (c.id.clone(), routed));
        self.publish(&routes);
        tracing::info!(%host, target = %addr, container = %&c.id[..c.id.len().min(12)], "container discovered");
    }

    /// Makes the discovered routes exactly `running`: routes of containers that stopped while
    /// nobody watched go away.
    pub async fn reconcile(&self, running: Vec<itproxy_orchestrator::Labelled>) {
        let stale: Vec<String> = {
            let routes = self.routes.lock().await;
            routes
                .discovered
                .values()
                .map(|(id, _)| id.clone())
                .filter(|id| !running.iter().any(|c| &c.id == id))
                .collect()
        };
        for id in stale {
            self.forget(&id).await;
        }
        for c in running {
            self.discover(c).await;
        }
    }

    /// A container stopped: its discovered route goes away.
    pub async fn forget(&self, id: &str) {
        let mut routes = self.routes.lock().await;
        let gone: Vec<HostName> = routes
            .discovered
            .iter()
            .filter(|(_, (cid, _))| cid == id)
            .map(|(h, _)| h.clone())
            .collect();
        if gone.is_empty() {
            return;
        }
        for h in &gone {
            routes.discovered.remove(h);
            tracing::info!(host = %h, container = %&id[..id.len().min(12)], "container stopped; route removed");
        }
        self.publish(&routes);
    }

    /// All active routes, sorted by host.
    pub async fn list(&self) -> Vec<RouteView> {
        let routes = self.routes.lock().await;
        let mut hosts: Vec<&HostName> = routes.effective().map(|(h, _, _)| h).collect();
        hosts.sort();
        hosts.into_iter().filter_map(|h| routes.view(h)).collect()
    }

    /// One route.
    pub async fn get(&self, name: &str) -> Result<RouteView, ApiError> {
        let host = self.qualify(name)?;
        self.routes
            .lock()
            .await
            .view(&host)
            .ok_or_else(|| no_route(&host))
    }

    /// Routes `name` to `target` (an override, persisted).
    pub async fn put(&self, name: &str, put: api::PutRoute) -> Result<RouteView, ApiError> {
        let host = self.qualify(name)?;
        let target = itproxy_router::UpstreamSpec::parse(&put.target)
            .map_err(|e| ApiError::bad_request("invalid_target", e.to_string()))?;
        let spec = RouteSpec {
            target,
            redirect_https: put.redirect_https,
            insecure_upstream: put.insecure_upstream,
            connect_timeout: None,
            read_timeout: None,
        };
        let addrs = spec.target.resolve().await.map_err(|e| {
            ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "unresolvable_target",
                format!("{e}; check the host name, or use an IP address"),
            )
        })?;
        if let Some((target, listener)) = self
            .listeners
            .get()
            .and_then(|l| own_listener(&addrs, &l.proxy))
        {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "route_to_itself",
                format!(
                    "{} ({target}) is itproxy's own listener {listener}: every request would \
                     come back to itproxy itself; route to the service's address instead",
                    spec.target
                ),
            ));
        }
        let mut routes = self.routes.lock().await;
        let routed = routes.build(spec, addrs, &self.config.proxy.timeouts);
        let mut next = routes.overrides.clone();
        next.insert(host.clone(), Active::Target(routed));
        self.commit(&mut routes, next)?;
        tracing::info!(%host, target = %put.target, "route set");
        Ok(routes.view(&host).expect("route just set"))
    }

    /// Removes `name`'s route, whether declared or set through the API.
    pub async fn delete(&self, name: &str) -> Result<api::Removed, ApiError> {
        let host = self.qualify(name)?;
        let mut routes = self.routes.lock().await;
        let view = routes.view(&host).ok_or_else(|| no_route(&host))?;
        let mut next = routes.overrides.clone();
        if routes.base(&host).is_some() {
            next.insert(host.clone(), Active::Removed);
        } else {
            next.remove(&host);
        }
        self.commit(&mut routes, next)?;
        tracing::info!(%host, "route removed");
        Ok(api::Removed {
            host: view.host,
            target: view.target,
        })
    }

    /// Drops `name`'s override, going back to its declared target.
    pub async fn restore(&self, name: &str) -> Result<api::Restored, ApiError> {
        let host = self.qualify(name)?;
        let mut routes = self.routes.lock().await;
        let declared = routes.base(&host).is_some();
        match (routes.overrides.contains_key(&host), declared) {
            (false, true) => Ok(api::Restored {
                changed: false,
                route: routes.view(&host).expect("declared route"),
            }),
            (false, false) => Err(no_route(&host)),
            (true, false) => Err(ApiError::new(
                StatusCode::CONFLICT,
                "nothing_to_restore",
                format!(
                    "{host} has no declared target to go back to (it is not in the config file, \
                     not a running app's endpoint, nor a running labelled container); remove it \
                     with `itproxy unroute {host}`"
                ),
            )),
            (true, true) => {
                let mut next = routes.overrides.clone();
                next.remove(&host);
                self.commit(&mut routes, next)?;
                tracing::info!(%host, "route restored to its declared target");
                Ok(api::Restored {
                    changed: true,
                    route: routes.view(&host).expect("declared"),
                })
            }
        }
    }

    /// The daemon's status.
    pub async fn status(&self) -> api::Status {
        let routes = self.routes.lock().await;
        let none = Listening::default();
        let listening = self.listeners.get().unwrap_or(&none);
        api::Status {
            version: env!("CARGO_PKG_VERSION").to_string(),
            pid: std::process::id(),
            uptime_seconds: self.started.elapsed().as_secs_f64(),
            state_dir: self.state_dir.display().to_string(),
            config_file: self.config.source.as_ref().map(|p| p.display().to_string()),
            domains: self.config.domains.iter().map(|d| d.to_string()).collect(),
            env: self.config.env.as_ref().map(|e| e.to_string()),
            listeners: api::Listeners {
                http: listening.http.clone(),
                https: listening.https.clone(),
                dns: listening.dns.clone(),
                control: self.state_dir.join(CONTROL_SOCKET).display().to_string(),
            },
            dns_upstreams: listening.dns_upstreams.clone(),
            ca: Some(api::CaInfo {
                root: self.tls.files.root.display().to_string(),
                bundle: self.tls.files.bundle.display().to_string(),
                fingerprint: self.tls.fingerprint.clone(),
                permitted: self.tls.permitted.clone(),
            }),
            routes: routes.effective().count(),
            overrides: routes.overrides.len(),
        }
    }
}

fn no_route(host: &HostName) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "no_route",
        format!("there is no route for {host}; `itproxy routes` lists them"),
    )
}

async fn resolve_or_warn(host: &HostName, spec: &RouteSpec) -> Vec<std::net::SocketAddr> {
    spec.target.resolve().await.unwrap_or_else(|e| {
        tracing::warn!(%host, error = %e, "target does not resolve; requests will get 502 until it is routed again");
        Vec::new()
    })
}

/// Refuses to start when another daemon serves this state directory; removes a stale socket.
async fn claim_socket(sock: &Path) -> anyhow::Result<()> {
    if tokio::net::UnixStream::connect(sock).await.is_ok() {
        anyhow::bail!(
            "another itproxy daemon is already running with this state directory (its control socket {} answers); \
             stop it, or give this one its own --state-dir",
            sock.display()
        );
    }
    match std::fs::remove_file(sock) {
        Ok(()) => tracing::debug!(socket = %sock.display(), "removed a stale control socket"),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(e).with_context(|| {
                format!("cannot remove the stale control socket {}", sock.display())
            })
        }
    }
    Ok(())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received, stopping"),
        _ = int.recv() => tracing::info!("SIGINT received, stopping"),
    }
}

/// What the daemon serves on.
#[derive(Default)]
struct Listening {
    /// The proxy's own HTTP and HTTPS sockets: no route may point at them.
    proxy: Vec<std::net::SocketAddr>,
    http: Vec<String>,
    https: Vec<String>,
    dns: Vec<String>,
    dns_upstreams: Vec<String>,
}

/// The first of `targets` that is one of the proxy's own `listeners`, with that listener: the
/// same address, a wildcard listener on the target's port of an address of this machine, or
/// a wildcard target (which reaches this machine).
fn own_listener(
    targets: &[std::net::SocketAddr],
    listeners: &[std::net::SocketAddr],
) -> Option<(std::net::SocketAddr, std::net::SocketAddr)> {
    let is_local = |ip: std::net::IpAddr| {
        ip.is_loopback()
            || ip.is_unspecified()
            || std::net::UdpSocket::bind(std::net::SocketAddr::new(ip, 0)).is_ok()
    };
    targets.iter().find_map(|t| {
        listeners
            .iter()
            .find(|l| {
                l.port() == t.port()
                    && (l.ip() == t.ip()
                        || (l.ip().is_unspecified() && is_local(t.ip()))
                        || (t.ip().is_unspecified() && (l.ip().is_loopback() || is_local(l.ip()))))
            })
            .map(|l| (*t, *l))
    })
}

/// The CA as the daemon uses it.
pub struct TlsInfo {
    files: itproxy_certs::TrustFiles,
    fingerprint: String,
    permitted: Vec<String>,
    resolver: Arc<itproxy_certs::CertResolver>,
}

/// Loads or creates the CA, refreshes the trust bundle and prepares the certificate resolver.
fn setup_tls(config: &Config, state_dir: &Path) -> anyhow::Result<TlsInfo> {
    let domains: Vec<String> = config.domains.iter().map(|d| d.to_string()).collect();
    let (authority, files, created) = crate::ca::load_or_create(state_dir, &domains)?;
    let fingerprint = authority.fingerprint();
    if created {
        tracing::info!(
            root = %files.root.display(),
            %fingerprint,
            "created a local CA; trust it with `itproxy ca install`, or `eval \"$(itproxy ca env)\"` per shell"
        );
    }
    let missing: Vec<&String> = domains.iter().filter(|d| !authority.permits(d)).collect();
    if !missing.is_empty() {
        tracing::warn!(
            "the CA only permits {}; HTTPS for {} will fail until you run `itproxy ca rotate`",
            authority.permitted().join(", "),
            missing
                .iter()
                .map(|d| d.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    let permitted = authority.permitted().to_vec();
    let cache = crate::ca::leaf_cache_dir(state_dir, &authority);
    let resolver = itproxy_certs::CertResolver::new(
        Arc::new(authority),
        &cache,
        config.tls.leaf_validity,
        Arc::new(std::time::SystemTime::now),
    )?;
    Ok(TlsInfo {
        files,
        fingerprint,
        permitted,
        resolver: Arc::new(resolver),
    })
}

impl Daemon {
    /// Asks the daemon to stop, as SIGTERM does.
    pub fn stop(&self) {
        self.shutdown.notify_one();
    }
}

/// Raises the soft limit on open files to the hard one, as nginx's worker_rlimit_nofile and
/// Go do: each proxied request holds two descriptors, and a soft limit of 1024 would cap
/// itproxy at a few hundred concurrent clients.
fn raise_fd_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write the struct passed to them.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 || limit.rlim_cur >= limit.rlim_max
        {
            return;
        }
        let before = limit.rlim_cur;
        limit.rlim_cur = limit.rlim_max;
        if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) == 0 {
            tracing::debug!(
                from = before,
                to = limit.rlim_max,
                "raised the open files limit"
            );
        }
    }
}

/// Runs the daemon in the foreground until SIGINT, SIGTERM or `POST /v1/shutdown`; with an
/// environment, brings up its apps (of the `steps` given, else all).
pub async fn run(config: Config, state_dir: PathBuf, steps: Vec<String>) -> anyhow::Result<()> {
    let declared = config.env.as_ref().map_or(&[][..], |e| e.apps.steps());
    if let Some(unknown) = steps
        .iter()
        .find(|s| !declared.iter().any(|p| &p.name == *s))
    {
        let known: Vec<&str> = declared.iter().map(|s| s.name.as_str()).collect();
        anyhow::bail!(
            "--step {unknown}: there is no such step (steps: {})",
            if known.is_empty() {
                "none; no apps are declared".to_string()
            } else {
                known.join(", ")
            }
        );
    }
    state::ensure_dir(&state_dir)?;
    raise_fd_limit();
    let sock = state_dir.join(CONTROL_SOCKET);
    claim_socket(&sock).await?;
    let overrides = state::load(&state_dir)?;
    let tls = setup_tls(&config, &state_dir)?;

    // The environment's network comes first: Pingora's listeners are fixed at start, and the
    // gateway is where containers reach the proxy and the DNS.
    let mut engine = None;
    let mut environment = None;
    if let Some(env) = &config.env {
        let docker = itproxy_orchestrator::Engine::connect().await?;
        let net = docker.ensure_network(&env.name).await?;
        engine = Some(docker);
        environment = Some(net.clone());
        let gateway = net.gateway.with_context(|| {
            format!(
                "the Docker network {} has no IPv4 gateway to listen on",
                net.name
            )
        })?;
        tracing::info!(
            network = %net.name,
            %gateway,
            subnet = net.subnet.as_deref().unwrap_or("?"),
            "{} the environment's network",
            if net.created { "created" } else { "reusing" }
        );
    }
    // The proxy and the DNS listen on the gateway too (see `router_config`, `dns_config`).
    let gateway = environment.as_ref().and_then(|n| n.gateway);
    let subnet = environment
        .as_ref()
        .and_then(|n| n.subnet.as_deref())
        .and_then(|s| s.parse().ok());
    let router_config = config.proxy.router_config(
        &config.listen,
        gateway,
        tls.resolver.clone(),
        tls.files.bundle.clone(),
    );
    let dns_config = config.dns.dns_config(&config.listen, gateway, subnet);
    // Declared apps get their own engine connection: discovery holds the other one.
    let apps = match (&config.env, environment) {
        (Some(env), Some(network)) => {
            let gateway = network.gateway;
            Some(Apps::new(
                itproxy_orchestrator::Engine::connect().await?,
                itproxy_orchestrator::Environment {
                    env: env.name.clone(),
                    network,
                    dns: gateway.filter(|_| !config.listen.dns.is_empty()),
                    ca: Some((tls.files.bundle.clone(), tls.files.root.clone())),
                },
                env.apps.clone(),
            ))
        }
        _ => None,
    };
    let mint = config.tls.mint;
    let daemon = Arc::new(Daemon::new(config, state_dir.clone(), overrides, tls, apps).await);
    let table = daemon.table.clone();
    if mint == crate::config::MintPolicy::Routed {
        let routes = table.clone();
        daemon.tls.resolver.serve_only(Arc::new(move |name: &str| {
            routes.load().lookup(name).is_some()
        }));
    }
    let mut router =
        tokio::task::spawn_blocking(move || itproxy_router::start(&router_config, table))
            .await
            .context("the proxy start-up task failed")??;
    let dns = if dns_config.listeners.is_empty() {
        None
    } else {
        match itproxy_dns::start(&dns_config, daemon.zone.clone()).await {
            Ok(dns) => Some(dns),
            Err(e) => {
                tokio::task::spawn_blocking(move || router.stop())
                    .await
                    .ok();
                return Err(e.into());
            }
        }
    };
    let listening = Listening {
        proxy: router
            .http_addrs()
            .iter()
            .chain(router.https_addrs())
            .copied()
            .collect(),
        http: router.http_addrs().iter().map(|a| a.to_string()).collect(),
        https: router.https_addrs().iter().map(|a| a.to_string()).collect(),
        dns: dns_config
            .listeners
            .iter()
            .map(|(a, _)| a.to_string())
            .collect(),
        dns_upstreams: dns
            .as_ref()
            .map(|d| d.upstreams().iter().map(|a| a.to_string()).collect())
            .unwrap_or_default(),
    };
    for a in &listening.http {
        tracing::info!("listening for HTTP on {a}");
    }
    for a in &listening.https {
        tracing::info!("listening for HTTPS on {a}");
    }
    for a in &listening.dns {
        tracing::info!(upstreams = %listening.dns_upstreams.join(", "), "listening for DNS on {a}");
    }
    let _ = daemon.listeners.set(listening);

    // Containers started by hand with itproxy.host/itproxy.port labels: reconcile, then follow.
    let discovery = engine.map(|engine| tokio::spawn(discover(engine, daemon.clone())));
    // Then the declared apps, step by step; the control API answers meanwhile.
    let bring_up = tokio::spawn(daemon.clone().bring_up(steps));
    let exits = tokio::spawn(daemon.clone().watch_exits());

    let served = serve_control(daemon.clone(), &sock).await;
    if let Some(task) = discovery {
        task.abort();
    }
    // Containers keep running: the next `up` reuses them; `itproxy down` removes them.
    bring_up.abort();
    exits.abort();
    if let Some(dns) = dns {
        dns.stop().await;
    }
    tokio::task::spawn_blocking(move || router.stop())
        .await
        .ok();
    let _ = std::fs::remove_file(&sock);
    served?;
    tracing::info!("stopped");
    Ok(())
}

/// Routes labelled containers: those already running, then each start and stop as it happens.
/// If the events stream ends (the engine restarted), it reconciles again and resumes.
async fn discover(engine: itproxy_orchestrator::Engine, daemon: Arc<Daemon>) {
    use futures_util::StreamExt;
    loop {
        let since = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs().saturating_sub(1));
        match engine.labelled_containers().await {
            Ok(list) => daemon.reconcile(list).await,
            Err(e) => tracing::warn!("cannot list labelled containers: {e}"),
        }
        let mut events = std::pin::pin!(engine.watch_labelled(since));
        while let Some(event) = events.next().await {
            match event {
                Ok(itproxy_orchestrator::Discovery::Up(c)) => daemon.discover(c).await,
                Ok(itproxy_orchestrator::Discovery::Down { id }) => daemon.forget(&id).await,
                Err(e) => {
                    tracing::warn!("container discovery: {e}");
                    break;
                }
            }
        }
        tracing::warn!("lost the Docker events stream; reconnecting in 2 s");
        tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    }
}

async fn serve_control(daemon: Arc<Daemon>, sock: &Path) -> anyhow::Result<()> {
    let listener = tokio::net::UnixListener::bind(sock)
        .with_context(|| format!("cannot create the control socket {}", sock.display()))?;
    std::fs::set_permissions(sock, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("cannot restrict the control socket {}", sock.display()))?;
    tracing::info!("control API on {}", sock.display());
    let routes = daemon.status().await.routes;
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        routes,
        "itproxy is ready"
    );
    let stop = daemon.clone();
    axum::serve(listener, crate::control::app(daemon))
        .with_graceful_shutdown(async move {
            tokio::select! {
                _ = shutdown_signal() => {}
                _ = stop.shutdown.notified() => tracing::info!("asked to stop through the control API"),
            }
        })
        .await
        .context("the control API failed")
}

//! The daemon's start-up and shutdown, as named steps in the order of `docs/LIFECYCLE.md`:
//!
//! ```text
//! claim_state_dir ─> persist::load ─> setup_tls ─> open_environment ─> initial_state
//!   ─> start_proxy ─> start_dns ─> bind_control ─> spawn background tasks ─> serve_control
//!   ... SIGINT/SIGTERM/POST /v1/shutdown ─> cancel tasks ─> stop DNS ─> stop proxy
//! ```
//!
//! The state lives in [`StateHandle`] (`state/`), the apps in [`AppSupervisor`], the API in
//! `control`; this file only wires them together and owns the order.

use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use itproxy_router::{HostName, Inspector, RouteTable, RouterConfig};
use tokio_util::sync::CancellationToken;

use crate::config::{Config, Gateway, MintPolicy};
use crate::control::{Control, DaemonInfo, Listening};
use crate::persist::{self, Overrides, StateError};
use crate::state::{Change, DesiredState, StateHandle};
use crate::state_dir::StateDir;
use crate::supervisor::AppSupervisor;
use crate::tls::Tls;

/// Why the daemon could not start, or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A `--step` that the plan does not have.
    #[error("--step {step}: there is no such step (steps: {known})")]
    UnknownStep {
        /// The step asked for.
        step: String,
        /// The plan's steps, or why there are none.
        known: String,
    },
    /// The state directory or the persisted routes cannot be used.
    #[error(transparent)]
    State(#[from] StateError),
    /// Another daemon answers on this state directory's control socket.
    #[error(
        "another itproxy daemon is already running with this state directory (its control \
         socket {} answers); stop it, or give this one its own --state-dir",
        .socket.display()
    )]
    AnotherDaemon {
        /// The control socket.
        socket: PathBuf,
    },
    /// The control socket's path is longer than a Unix socket address holds.
    #[error(
        "the control socket {} would be {len} bytes long, and a Unix socket's path holds at \
         most {max}: give a shorter --state-dir",
        .path.display(),
        max = MAX_SOCKET_PATH
    )]
    SocketPathTooLong {
        /// The socket.
        path: PathBuf,
        /// Its length in bytes.
        len: usize,
    },
    /// The control socket cannot be removed, created or restricted.
    #[error("cannot {action} the control socket {}: {error}", .path.display())]
    ControlSocket {
        /// "remove the stale", "create" or "restrict".
        action: &'static str,
        /// The socket.
        path: PathBuf,
        /// The OS error.
        error: std::io::Error,
    },
    /// The control API stopped with an error.
    #[error("the control API failed: {0}")]
    Control(std::io::Error),
    /// The local CA.
    #[error(transparent)]
    Ca(#[from] crate::tls::CaError),
    /// Docker.
    #[error(transparent)]
    Docker(#[from] itproxy_orchestrator::Error),
    /// The environment's network has no gateway address for the listeners.
    #[error("the Docker network {0} has no IPv4 gateway to listen on")]
    NoGateway(String),
    /// The proxy.
    #[error(transparent)]
    Proxy(#[from] itproxy_router::Error),
    /// The proxy's start-up task panicked.
    #[error("the proxy start-up task failed: {0}")]
    ProxyTask(tokio::task::JoinError),
    /// The DNS server.
    #[error(transparent)]
    Dns(#[from] itproxy_dns::Error),
    /// The access log cannot be opened.
    #[error("cannot open the access log {}: {error}", .path.display())]
    AccessLog {
        /// The file.
        path: PathBuf,
        /// The OS error.
        error: std::io::Error,
    },
    /// The dashboard's loopback listener.
    #[error("cannot listen on loopback for the dashboard: {0}; set [proxy] dashboard = \"\" to go without")]
    Dashboard(std::io::Error),
}

/// Runs the daemon in the foreground until SIGINT, SIGTERM or `POST /v1/shutdown`; with an
/// environment, brings up its apps (of the `steps` given, else all).
pub async fn run(config: Config, state_dir: PathBuf, steps: Vec<String>) -> Result<(), StartError> {
    check_steps(&config, &steps)?;
    let dir = StateDir::new(state_dir);
    claim_state_dir(&dir).await?;
    let persist::Loaded {
        overrides,
        problems,
    } = persist::load(&dir.routes_file())?;
    for problem in &problems {
        tracing::error!("route overrides: {problem}");
    }
    // A compaction cut short by a stop: finish it from what was just read. If the disk is
    // full, the logs keep everything and the next start tries again.
    if let Err(e) = persist::finish_interrupted_compaction(&dir.routes_file(), &overrides) {
        tracing::warn!("cannot finish the route log's compaction (the logs keep every route): {e}");
    }
    let (journal, unwritable) = persist::Journal::open_or_retry(&dir.routes_file());
    if let Some(e) = unwritable {
        tracing::error!("route changes will be refused until this is fixed: {e}");
    }
    let tls = crate::tls::setup(&config, &dir)?;
    let env = open_environment(&config).await?;
    // Containers reach the proxy and the DNS on the environment network's gateway.
    let gateway = env.as_ref().map(|e| e.gateway);
    let subnet = env
        .as_ref()
        .and_then(|e| e.network.subnet.as_deref())
        .and_then(|s| s.parse().ok());

    let dashboard = dashboard(&config)?;
    let trusted_proxies = config.proxy.trusted_proxies.clone();
    let access_log = match &config.proxy.access_log {
        Some(path) => {
            let path = dir.resolve(path);
            // It holds every request's headers (cookies, authorization): the owner's only,
            // and never written through a link left at its name.
            use std::os::unix::fs::OpenOptionsExt as _;
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .mode(0o600)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&path)
                .map_err(|error| StartError::AccessLog { path, error })?;
            Some(file)
        }
        None => None,
    };
    let mut initial = initial_state(&config, overrides).await;
    if let Some(d) = &dashboard {
        initial.serve_own_name(d.host.clone());
    }
    let state = Arc::new(StateHandle::new(initial, dir.routes_file(), journal));
    if config.tls.mint == MintPolicy::Routed {
        let table = state.table();
        let own = dashboard.as_ref().map(|d| d.host.clone());
        // A declared app's name gets its certificate while the app restarts too, so the
        // 503 saying so arrives over TLS the browser trusts.
        tls.resolver.serve_only(Arc::new(move |name: &str| {
            let table = table.load();
            table.lookup(name).is_some()
                || table.unavailable(name).is_some()
                || own.as_ref().is_some_and(|o| o.as_str() == name)
        }));
    }
    let (apps, discovery) = match env {
        Some(env) => (
            Some(Arc::new(
                env.supervisor(&config, &tls, &dir, state.clone()).await?,
            )),
            Some(env.engine),
        ),
        None => (None, None),
    };

    let bodies = config.proxy.inspect_bodies.iter().map(|h| h.to_string());
    let inspector = Arc::new(
        Inspector::new(config.proxy.recent_requests)
            .with_bodies(bodies, config.proxy.inspect_body_limit),
    );
    let mut router_config = config.proxy.router_config(
        &config.listen,
        gateway.map(|ip| Gateway {
            ip,
            standard_ports: may_listen_on_standard_ports(ip, &config.listen),
        }),
        tls.resolver.clone(),
        // `https://` upstreams are verified against the system roots plus ours.
        tls.files.bundle.clone(),
    );
    router_config.inspector = inspector.clone();
    if let Some(d) = &dashboard {
        router_config.own_routes = d.routes.clone();
    }
    let router = start_proxy(router_config, state.table()).await?;
    let proxy_addrs: Vec<SocketAddr> = router
        .http_addrs()
        .iter()
        .chain(router.https_addrs())
        .copied()
        .collect();
    state.set_own_listeners(proxy_addrs);
    let dns_config = config.dns.dns_config(&config.listen, gateway, subnet);
    let dns = match start_dns(&dns_config, state.zone()).await {
        Ok(dns) => dns,
        Err(e) => {
            stop_proxy(router).await;
            return Err(e);
        }
    };
    let listening = Listening {
        http: router.http_addrs().iter().map(|a| a.to_string()).collect(),
        https: router.https_addrs().iter().map(|a| a.to_string()).collect(),
        dns: dns
            .as_ref()
            .map(|d| d.addrs().iter().map(|a| a.to_string()).collect())
            .unwrap_or_default(),
        dns_upstreams: dns
            .as_ref()
            .map(|d| d.upstreams().iter().map(|a| a.to_string()).collect())
            .unwrap_or_default(),
    };
    log_listening(&listening);

    let control = Arc::new(Control {
        state: state.clone(),
        apps: apps.clone(),
        info: DaemonInfo {
            started: Instant::now(),
            state_dir: dir.clone(),
            config_file: config.source.clone(),
            env: config.env.as_ref().map(|e| e.name.to_string()),
            ca: tls.info.clone(),
            listening: listening.into(),
        },
        stop: tokio::sync::Notify::new(),
        config: tokio::sync::Mutex::new(config.source.is_some().then(|| config.clone())),
        inspector: inspector.clone(),
        mocks: Default::default(),
        metrics: crate::metrics::Metrics {
            inspector,
            dns: dns.as_ref().map(|d| d.counts()),
            certificates: tls.resolver.clone(),
            state: state.clone(),
        },
    });
    // SIGHUP reloads the config file, as it does nginx's.
    let hangups = tokio::spawn(crate::reload::on_hangup(control.clone()));
    let served = match bind_control(&dir).await {
        Ok(listener) => {
            let routes = state.read(|s| s.route_count()).await;
            tracing::info!(
                version = env!("CARGO_PKG_VERSION"),
                routes,
                "itproxy is ready"
            );
            // The control API answers while containers are found and apps come up.
            let background = CancellationToken::new();
            let mut tasks = spawn_background(&background, state.clone(), discovery, apps, steps);
            if let Some(d) = dashboard {
                let stop = background.clone();
                let guard = crate::control::DashboardGuard {
                    host: Some(d.host.clone()),
                    trusted_proxies: trusted_proxies.clone(),
                };
                tasks.push(crate::dashboard::serve(
                    d.listener,
                    control.clone(),
                    guard,
                    stop,
                ));
            }
            if let Some(file) = access_log {
                let (inspector, stop) = (control.inspector.clone(), background.clone());
                tasks.push(tokio::spawn(crate::inspect::write_access_log(
                    inspector, file, stop,
                )));
            }
            let served = serve_control(listener, control).await;
            background.cancel();
            for t in tasks {
                let _ = t.await;
            }
            served
        }
        Err(e) => Err(e),
    };
    hangups.abort();
    // Containers keep running: the next `up` reuses them; `itproxy down` removes them.
    if let Some(dns) = dns {
        dns.stop().await;
    }
    stop_proxy(router).await;
    let _ = std::fs::remove_file(dir.control_socket());
    served?;
    tracing::info!("stopped");
    Ok(())
}

/// `--step` names must be steps of the plan.
fn check_steps(config: &Config, steps: &[String]) -> Result<(), StartError> {
    let declared = config.env.as_ref().map_or(&[][..], |e| e.apps.steps());
    let known: Vec<&str> = declared.iter().map(|s| s.name.as_str()).collect();
    if let Some(unknown) = steps.iter().find(|s| !known.contains(&s.as_str())) {
        return Err(StartError::UnknownStep {
            step: unknown.clone(),
            known: if known.is_empty() {
                "none; no apps are declared".to_string()
            } else {
                known.join(", ")
            },
        });
    }
    Ok(())
}

/// Whether the proxy can take ports 80 and 443 on the gateway (as root, or where unprivileged
/// ports start low enough), tried by binding them for a moment; if not, containers reach it
/// at the host's ports only, and the log says so.
fn may_listen_on_standard_ports(gateway: IpAddr, listen: &crate::config::Listen) -> bool {
    for (used, port) in [(&listen.http, 80), (&listen.https, 443)] {
        // Not needed without such listeners, nor where one already covers the gateway.
        if used.is_empty()
            || used
                .iter()
                .any(|a| a.port() == port && a.ip().is_unspecified())
        {
            continue;
        }
        if let Err(e) = std::net::TcpListener::bind((gateway, port)) {
            tracing::warn!(
                %gateway,
                port,
                "containers reach itproxy at the host's ports only, not at 80 and 443 ({e}); \
                 run it as root or lower net.ipv4.ip_unprivileged_port_start to give them the \
                 URLs production uses"
            );
            return false;
        }
    }
    true
}

/// The longest path a Unix socket address holds (`sun_path` is 108 bytes with its NUL).
const MAX_SOCKET_PATH: usize = 107;

/// Creates the state directory and makes this daemon its only one: refuses when another
/// daemon's control socket answers, removes a stale one.
async fn claim_state_dir(dir: &StateDir) -> Result<(), StartError> {
    let sock = dir.control_socket();
    // Checked before anything is created: the bind would fail only after the environment's
    // network and listeners were up.
    let len = sock.as_os_str().len();
    if len > MAX_SOCKET_PATH {
        return Err(StartError::SocketPathTooLong { path: sock, len });
    }
    dir.ensure()?;
    raise_fd_limit();
    if tokio::net::UnixStream::connect(&sock).await.is_ok() {
        return Err(StartError::AnotherDaemon { socket: sock });
    }
    match std::fs::remove_file(&sock) {
        Ok(()) => tracing::debug!(socket = %sock.display(), "removed a stale control socket"),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(error) => {
            return Err(StartError::ControlSocket {
                action: "remove the stale",
                path: sock,
                error,
            })
        }
    }
    Ok(())
}

/// The environment's Docker network, opened before the proxy starts: Pingora's listeners are
/// fixed at start, and the gateway is where containers reach the proxy and the DNS.
struct OpenEnvironment {
    /// The engine connection container discovery follows events on.
    engine: itproxy_orchestrator::Engine,
    network: itproxy_orchestrator::NetworkInfo,
    gateway: IpAddr,
}

async fn open_environment(config: &Config) -> Result<Option<OpenEnvironment>, StartError> {
    let Some(env) = &config.env else {
        return Ok(None);
    };
    let engine = itproxy_orchestrator::Engine::connect().await?;
    let network = engine.ensure_network(&env.name).await?;
    let gateway = network
        .gateway
        .ok_or_else(|| StartError::NoGateway(network.name.clone()))?;
    tracing::info!(
        network = %network.name,
        %gateway,
        subnet = network.subnet.as_deref().unwrap_or("?"),
        "{} the environment's network",
        if network.created { "created" } else { "reusing" }
    );
    Ok(Some(OpenEnvironment {
        engine,
        network,
        gateway,
    }))
}

impl OpenEnvironment {
    /// The supervisor of the environment's declared apps, on its own engine connection
    /// (discovery holds the other one).
    async fn supervisor(
        &self,
        config: &Config,
        tls: &Tls,
        state_dir: &StateDir,
        state: Arc<StateHandle>,
    ) -> Result<AppSupervisor, StartError> {
        let env = config
            .env
            .as_ref()
            .expect("an open environment is configured");
        Ok(AppSupervisor::new(
            state,
            config.domains.clone(),
            itproxy_orchestrator::Engine::connect().await?,
            itproxy_orchestrator::Environment {
                env: env.name.clone(),
                network: self.network.clone(),
                dns: self
                    .network
                    .gateway
                    .filter(|_| !config.listen.dns.is_empty()),
                ca: Some((tls.files.bundle.clone(), tls.files.root.clone())),
                clocks: Some(itproxy_orchestrator::Clocks {
                    library: itproxy_orchestrator::Clocks::find_library(),
                    dir: state_dir.clocks().join(env.name.to_string()),
                }),
            },
            env.apps.clone(),
            Some(config.clone()),
            state_dir.snapshots(),
        ))
    }
}

/// The dashboard: its name, its loopback listener and the route to it (the proxy's own).
struct Dashboard {
    host: HostName,
    listener: std::net::TcpListener,
    routes: RouteTable,
}

/// The dashboard, unless it is off or the config routes its name itself.
fn dashboard(config: &Config) -> Result<Option<Dashboard>, StartError> {
    let Some(name) = &config.proxy.dashboard else {
        return Ok(None);
    };
    let Ok(host) = config.domains.qualify(name.as_str()) else {
        return Ok(None);
    };
    if config.routes.contains_key(&host) {
        tracing::info!(%host, "the config routes the dashboard's name itself: no dashboard");
        return Ok(None);
    }
    let (listener, addr) = crate::dashboard::bind().map_err(StartError::Dashboard)?;
    let spec = itproxy_router::UpstreamSpec::parse(&addr.to_string())
        .expect("a socket address is a target");
    // A generation no route of the state's takes (they count up from 1): its pooled
    // connections are its own.
    let upstream = itproxy_router::Upstream::new(spec, vec![addr], u64::MAX, &Default::default());
    let route = itproxy_router::Route::new(host.clone(), Arc::new(upstream));
    tracing::info!(url = %format!("https://{host}/"), "the dashboard is served");
    Ok(Some(Dashboard {
        host,
        listener,
        routes: RouteTable::new([route]),
    }))
}

/// The desired state at start: declared routes and persisted overrides, each target resolved.
/// A target that does not resolve stays routed (it answers 502 explaining why), so a persisted
/// route is never dropped.
async fn initial_state(config: &Config, overrides: Overrides) -> DesiredState {
    let mut state = DesiredState::new(
        config.domains.clone(),
        config.proxy.timeouts,
        config.dns.ttl,
    );
    for (host, spec) in &config.routes {
        let addrs = resolve_or_warn(host, &spec.target).await;
        state.declare(host.clone(), spec.clone(), addrs);
    }
    for app in config.env.iter().flat_map(|e| e.apps.apps()) {
        for e in &app.endpoints {
            if let Some((_, itproxy_orchestrator::EndpointKind::Http)) = e.port {
                // Checked when the config was read: endpoint names qualify.
                if let Ok(host) = config.domains.qualify(e.name.as_str()) {
                    state.declare_app_host(host, app.name.clone());
                }
            }
        }
    }
    for (host, o) in overrides {
        if !config.domains.iter().any(|d| host.is_within(d)) {
            tracing::warn!(
                %host,
                domains = %config.domains.to_string_list(),
                "a persisted route is outside the configured domains; it is kept and still routed"
            );
        }
        let addrs = match &o {
            persist::Override::Target(spec) => resolve_or_warn(&host, &spec.target).await,
            persist::Override::Removed => Vec::new(),
        };
        state.restore_persisted(host, o, addrs);
    }
    state
}

pub(crate) async fn resolve_or_warn(
    host: &itproxy_router::HostName,
    target: &itproxy_router::UpstreamSpec,
) -> Vec<SocketAddr> {
    target.resolve().await.unwrap_or_else(|e| {
        tracing::warn!(%host, error = %e, "target does not resolve; requests will get 502 until it is routed again");
        Vec::new()
    })
}

/// Starts the proxy and waits until each listener accepts connections.
async fn start_proxy(
    router_config: RouterConfig,
    table: Arc<arc_swap::ArcSwap<RouteTable>>,
) -> Result<itproxy_router::RunningRouter, StartError> {
    // Pingora's start-up blocks (it binds and spawns its threads).
    Ok(
        tokio::task::spawn_blocking(move || itproxy_router::start(&router_config, table))
            .await
            .map_err(StartError::ProxyTask)??,
    )
}

async fn stop_proxy(mut router: itproxy_router::RunningRouter) {
    tokio::task::spawn_blocking(move || router.stop())
        .await
        .ok();
}

/// Starts the DNS listeners, if any.
async fn start_dns(
    dns_config: &itproxy_dns::DnsConfig,
    zone: Arc<arc_swap::ArcSwap<itproxy_dns::Zone>>,
) -> Result<Option<itproxy_dns::RunningDns>, StartError> {
    if dns_config.listeners.is_empty() {
        return Ok(None);
    }
    Ok(Some(itproxy_dns::start(dns_config, zone).await?))
}

fn log_listening(listening: &Listening) {
    for a in &listening.http {
        tracing::info!("listening for HTTP on {a}");
    }
    for a in &listening.https {
        tracing::info!("listening for HTTPS on {a}");
    }
    for a in &listening.dns {
        tracing::info!(upstreams = %listening.dns_upstreams.join(", "), "listening for DNS on {a}");
    }
}

/// Binds the control socket, readable by this user only.
async fn bind_control(dir: &StateDir) -> Result<tokio::net::UnixListener, StartError> {
    let sock = dir.control_socket();
    let fail = |action, error| StartError::ControlSocket {
        action,
        path: sock.clone(),
        error,
    };
    let listener = tokio::net::UnixListener::bind(&sock).map_err(|e| fail("create", e))?;
    std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| fail("restrict", e))?;
    tracing::info!("control API on {}", sock.display());
    Ok(listener)
}

/// Serves the control API until SIGINT, SIGTERM or `POST /v1/shutdown`.
async fn serve_control(
    listener: tokio::net::UnixListener,
    control: Arc<Control>,
) -> Result<(), StartError> {
    let stop = control.clone();
    axum::serve(listener, crate::control::app(control))
        .with_graceful_shutdown(async move {
            tokio::select! {
                _ = shutdown_signal() => {}
                _ = stop.stop.notified() => tracing::info!("asked to stop through the control API"),
            }
        })
        .await
        .map_err(StartError::Control)
}

/// Discovery of labelled containers, the apps' bring-up and their exit watcher: each stops
/// when `token` is cancelled.
fn spawn_background(
    token: &CancellationToken,
    state: Arc<StateHandle>,
    discovery: Option<itproxy_orchestrator::Engine>,
    apps: Option<Arc<AppSupervisor>>,
    steps: Vec<String>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let mut tasks = Vec::new();
    let mut spawn = |f: std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>| {
        let token = token.clone();
        tasks.push(tokio::spawn(async move {
            tokio::select! {
                _ = token.cancelled() => {}
                _ = f => {}
            }
        }));
    };
    // Containers started by hand with itproxy.host/itproxy.port labels: reconcile, then follow.
    if let Some(engine) = discovery {
        spawn(Box::pin(discover(engine, state)));
    }
    // Then the declared apps, step by step.
    if let Some(apps) = apps {
        spawn(Box::pin(apps.clone().bring_up(steps)));
        spawn(Box::pin(apps.clone().watch_containers()));
        spawn(Box::pin(apps.tell_states()));
    }
    tasks
}

/// Routes labelled containers: those already running, then each start and stop as it happens.
/// If the events stream ends (the engine restarted), it reconciles again and resumes.
async fn discover(engine: itproxy_orchestrator::Engine, state: Arc<StateHandle>) {
    use futures_util::StreamExt;
    loop {
        let since = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs().saturating_sub(1));
        match engine.labelled_containers().await {
            Ok(running) => reconcile(&state, running).await,
            Err(e) => tracing::warn!("cannot list labelled containers: {e}"),
        }
        let mut events = std::pin::pin!(engine.watch_labelled(since));
        while let Some(event) = events.next().await {
            match event {
                Ok(itproxy_orchestrator::Discovery::Up(c)) => container_up(&state, c).await,
                Ok(itproxy_orchestrator::Discovery::Down { id }) => {
                    container_down(&state, id).await
                }
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

/// Makes the containers' routes exactly `running`: routes of containers that stopped while
/// nobody watched go away.
async fn reconcile(state: &StateHandle, running: Vec<itproxy_orchestrator::Labelled>) {
    let known = state.read(|s| s.container_ids()).await;
    for id in known {
        if !running.iter().any(|c| c.id == id) {
            container_down(state, id).await;
        }
    }
    for c in running {
        container_up(state, c).await;
    }
}

/// A labelled container runs: its host routes to it (an override still wins).
async fn container_up(state: &StateHandle, c: itproxy_orchestrator::Labelled) {
    let host = match state.qualify(&c.host).await {
        Ok(h) => h,
        Err(e) => {
            tracing::warn!(container = %c.id, "ignoring the {} label: {e}", itproxy_orchestrator::HOST_LABEL);
            return;
        }
    };
    let addr = SocketAddr::new(c.ip, c.port);
    let short = c.id[..c.id.len().min(12)].to_string();
    let change = Change::ContainerUp {
        id: c.id,
        host: host.clone(),
        addr,
    };
    match state.apply(change).await {
        Ok(_) => tracing::info!(%host, target = %addr, container = %short, "container discovered"),
        Err(e) => tracing::warn!(container = %short, "cannot route a labelled container: {e}"),
    }
}

/// A container stopped: its routes go away.
async fn container_down(state: &StateHandle, id: String) {
    let short = id[..id.len().min(12)].to_string();
    let hosts = state.read(|s| s.hosts_of_container(&id)).await;
    match state.apply(Change::ContainerDown { id }).await {
        Ok(_) => {
            for host in hosts {
                tracing::info!(%host, container = %short, "container stopped; route removed");
            }
        }
        Err(e) => tracing::warn!(container = %short, "cannot remove a container's routes: {e}"),
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install the SIGTERM/SIGINT handlers; stop with `itproxy down`");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received, stopping"),
        _ = int.recv() => tracing::info!("SIGINT received, stopping"),
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

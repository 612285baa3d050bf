//! Running the proxy inside our process: a Pingora `Server` on its own thread, no argv, no
//! daemonizing, no signal handlers of its own, stopped from code.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use async_trait::async_trait;
use ipnet::IpNet;
use pingora::listeners::tls::TlsSettings;
use pingora::listeners::TcpSocketOptions;
use pingora::server::configuration::ServerConf;
use pingora::server::{RunArgs, Server, ShutdownSignal, ShutdownSignalWatch};
use pingora::services::listening::Service;
use pingora::tls::ResolvesServerCert;
use tokio::sync::{oneshot, Mutex};

use crate::h1::{ClientCounts, ClientLimits, H1Front};
use crate::listener::SharedFreePort;
use crate::{Error, HostRouter, RouteTable};

/// How the proxy listens and behaves; built by the daemon from validated configuration.
#[derive(Clone)]
pub struct RouterConfig {
    /// Plain-HTTP listen addresses.
    pub http: Vec<SocketAddr>,
    /// HTTPS listen addresses (TLS 1.2/1.3, HTTP/2 by ALPN); needs `certificates`.
    pub https: Vec<SocketAddr>,
    /// Chooses the certificate for each TLS handshake by server name.
    pub certificates: Option<Arc<dyn ResolvesServerCert>>,
    /// PEM file of the roots that `https://` upstreams are verified against (default: the
    /// system's).
    pub upstream_roots: Option<std::path::PathBuf>,
    /// Clients allowed to pass their own `X-Forwarded-*` headers.
    pub trusted_proxies: Vec<IpNet>,
    /// Worker threads of the proxy.
    pub threads: usize,
    /// Let idle worker threads steal connections from busy ones (Tokio's multi-thread
    /// scheduler). Off by default: each thread then runs its own single-threaded runtime,
    /// which measured 17-20 % more requests/s and 15 % less CPU per request here (fewer
    /// cross-thread wake-ups).
    pub work_stealing: bool,
    /// How long requests in flight may take to finish when stopping.
    pub shutdown_timeout: Duration,
    /// Time from a request's first byte until its head (and a body of up to 64 KiB read with
    /// it) is complete; then 408 and the connection closes (nginx's client_header_timeout).
    pub header_timeout: Duration,
    /// How long an idle keepalive client connection waits for its next request.
    pub keepalive_timeout: Duration,
    /// How long a write to a client may wait before the client counts as gone (one that
    /// stopped reading its response; nginx's send_timeout).
    pub send_timeout: Duration,
    /// Open connections one client address may hold (plain and TLS together); more are
    /// answered 503 and closed.
    pub max_connections_per_client: usize,
    /// Let the HTTP/1.1 front forward simple requests (HTTP/1.1, bodies up to 64 KiB, no
    /// upgrade, plain-HTTP upstream) itself rather than lend them to Pingora's full pipeline
    /// (`[proxy] h1_front`). Off, every request is still read and checked by the front, then
    /// served by the pipeline.
    pub h1_front: bool,
    /// Where every request is recorded and counted (the inspector and the metrics).
    pub inspector: Arc<crate::Inspector>,
    /// Names the daemon serves itself (the dashboard's), taken where `routes` has none.
    pub own_routes: RouteTable,
}

impl Default for RouterConfig {
    fn default() -> Self {
        RouterConfig {
            http: vec![SocketAddr::from(([127, 0, 0, 1], 80))],
            https: Vec::new(),
            certificates: None,
            upstream_roots: None,
            trusted_proxies: Vec::new(),
            threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
            work_stealing: false,
            shutdown_timeout: Duration::from_secs(10),
            header_timeout: Duration::from_secs(60),
            keepalive_timeout: Duration::from_secs(60),
            send_timeout: Duration::from_secs(60),
            max_connections_per_client: 1024,
            h1_front: true,
            inspector: Arc::default(),
            own_routes: RouteTable::default(),
        }
    }
}

/// The proxy, serving. Dropping it without [`RunningRouter::stop`] leaves it running until the
/// process exits.
pub struct RunningRouter {
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
    plain: Option<crate::listener::PlainHttp>,
    http: Vec<SocketAddr>,
    https: Vec<SocketAddr>,
}

struct StopSignal(Mutex<Option<oneshot::Receiver<()>>>);

#[async_trait]
impl ShutdownSignalWatch for StopSignal {
    async fn recv(&self) -> ShutdownSignal {
        let rx = self.0.lock().await.take();
        match rx {
            // Either a stop request or the handle was dropped with the process going down.
            Some(rx) => {
                let _ = rx.await;
            }
            None => std::future::pending::<()>().await,
        }
        ShutdownSignal::GracefulTerminate
    }
}

/// Starts the proxy on `config.http`, routing by `routes`, and returns once every listener
/// accepts connections.
///
/// Bind problems (address in use, no permission, address not on this machine) are reported
/// here, before Pingora starts, because Pingora would panic on its own thread instead.
pub fn start(
    config: &RouterConfig,
    routes: Arc<ArcSwap<RouteTable>>,
) -> Result<RunningRouter, Error> {
    if config.http.is_empty() && config.https.is_empty() {
        return Err(Error::NoListener);
    }
    let certificates = match (&config.certificates, config.https.is_empty()) {
        (Some(c), false) => Some(c.clone()),
        (None, false) => return Err(Error::NoCertificates),
        (_, true) => None,
    };
    // Without work stealing, plain HTTP gets our per-thread accept loops (see `listener`);
    // TLS, and everything with work stealing, stays on Pingora's listeners.
    let own_http = !config.work_stealing && !config.http.is_empty();
    // Pingora's listeners are checked (and port 0 resolved) before Pingora starts: it would
    // panic on its own thread instead of reporting a bind error.
    // Placeholders for ports the system chose, and the addresses they hold.
    let mut held: Vec<(SocketAddr, socket2::Socket)> = Vec::new();
    let mut reserve = |addrs: &[SocketAddr], proto| -> Result<Vec<SocketAddr>, Error> {
        let mut free = SharedFreePort::default();
        let mut bound = Vec::with_capacity(addrs.len());
        for &addr in addrs {
            let (at, holder) = reserve(free.to_bind(addr), proto)?;
            free.bound(addr, at);
            held.extend(holder.map(|h| (at, h)));
            bound.push(at);
        }
        Ok(bound)
    };
    let https = reserve(&config.https, "HTTPS")?;
    let pingora_http = if own_http {
        // Checked only for the error: our own listeners bind these themselves below.
        for &addr in config.http.iter().filter(|a| a.port() != 0) {
            TcpListener::bind(addr).map_err(|error| Error::Bind {
                proto: "HTTP",
                addr,
                error,
            })?;
        }
        Vec::new()
    } else {
        reserve(&config.http, "HTTP")?
    };
    let conf = ServerConf {
        threads: config.threads.max(1),
        work_stealing: config.work_stealing,
        grace_period_seconds: Some(0),
        graceful_shutdown_timeout_seconds: Some(config.shutdown_timeout.as_secs().max(1)),
        ca_file: config
            .upstream_roots
            .as_ref()
            .map(|p| p.display().to_string()),
        ..Default::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    let https_port = https.first().map(|a| a.port());
    let router = HostRouter::new(routes.clone(), config.trusted_proxies.clone(), https_port)
        .with_inspector(config.inspector.clone())
        .with_own_routes(config.own_routes.clone());
    let limits = ClientLimits {
        header_timeout: config.header_timeout,
        keepalive_timeout: config.keepalive_timeout,
        send_timeout: config.send_timeout,
        connections_per_client: config.max_connections_per_client.max(1),
    };
    // One count of each client's connections across the plain and TLS fronts.
    let clients = Arc::new(ClientCounts::default());
    let front = || {
        H1Front::new(
            &server.configuration,
            router.clone(),
            config.h1_front,
            limits,
        )
        .with_clients(clients.clone())
    };
    let plain = if own_http {
        Some(crate::listener::PlainHttp::start(
            &config.http,
            config.threads.max(1),
            Arc::new(front()),
            config.shutdown_timeout,
        )?)
    } else {
        None
    };
    let mut service = Service::new("itproxy http".to_string(), front());
    // SO_REUSEPORT lets Pingora bind a port a placeholder holds (see `reserve`); only there,
    // so that a configured port is never shared with another program of the same user.
    let options = |addr: &SocketAddr| {
        let mut o = TcpSocketOptions::default();
        if held.iter().any(|(a, _)| a == addr) {
            o.so_reuseport = Some(true);
        }
        o
    };
    for addr in &pingora_http {
        service.add_tcp_with_settings(&addr.to_string(), options(addr));
    }
    if let Some(resolver) = certificates {
        for addr in &https {
            let mut tls =
                TlsSettings::intermediate("", "").map_err(|e| Error::Tls(e.to_string()))?;
            tls.set_cert_resolver(resolver.clone());
            tls.enable_h2();
            service.add_tls_with_settings(&addr.to_string(), Some(options(addr)), tls);
        }
    }
    server.add_service(service);

    let (tx, rx) = oneshot::channel();
    let signal = StopSignal(Mutex::new(Some(rx)));
    let thread = std::thread::Builder::new()
        .name("itproxy-router".into())
        .spawn(move || {
            server.run(RunArgs {
                shutdown_signal: Box::new(signal),
            });
        })
        .map_err(Error::Thread)?;

    let http = match &plain {
        Some(p) => p.addrs().to_vec(),
        None => pingora_http,
    };
    let mut running = RunningRouter {
        stop: Some(tx),
        thread: Some(thread),
        plain,
        http,
        https,
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    let addrs: Vec<SocketAddr> = running.http.iter().chain(&running.https).copied().collect();
    for addr in addrs {
        // Read from the kernel's socket table, not by connecting: a probe connection would
        // be a client that hangs up mid-handshake, logged as an error by the TLS listener.
        while !is_listening(addr) {
            if running.thread.as_ref().is_some_and(|t| t.is_finished()) || Instant::now() > deadline
            {
                running.stop();
                return Err(Error::NotListening { addr });
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    // Pingora listens on every address now: the placeholders can go.
    drop(held);
    Ok(running)
}

/// Checks that `addr` can be listened on. With port 0 the system picks a free port, and a
/// placeholder socket holds it (bound with `SO_REUSEPORT`, not listening, so it never accepts a
/// connection) until Pingora's listener, which shares it, is up: no other program can take the
/// port in between.
fn reserve(
    addr: SocketAddr,
    proto: &'static str,
) -> Result<(SocketAddr, Option<socket2::Socket>), Error> {
    let fail = |error| Error::Bind { proto, addr, error };
    if addr.port() != 0 {
        // std sets SO_REUSEADDR like Pingora does, so this probe does not block its bind.
        TcpListener::bind(addr).map_err(fail)?;
        return Ok((addr, None));
    }
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None).map_err(fail)?;
    socket.set_reuse_address(true).map_err(fail)?;
    socket.set_reuse_port(true).map_err(fail)?;
    socket.bind(&addr.into()).map_err(fail)?;
    let bound = socket
        .local_addr()
        .map_err(fail)?
        .as_socket()
        .ok_or_else(|| fail(std::io::Error::other("not an IP socket")))?;
    Ok((bound, Some(socket)))
}

/// Whether a socket listens on `addr` (`/proc/net/tcp` or `tcp6`: state 0A is LISTEN).
fn is_listening(addr: SocketAddr) -> bool {
    let (file, local) = match addr.ip() {
        IpAddr::V4(ip) => (
            "/proc/net/tcp",
            format!(
                "{:08X}:{:04X}",
                u32::from_ne_bytes(ip.octets()),
                addr.port()
            ),
        ),
        IpAddr::V6(ip) => {
            let words: String = ip
                .octets()
                .chunks(4)
                .map(|w| format!("{:08X}", u32::from_ne_bytes([w[0], w[1], w[2], w[3]])))
                .collect();
            ("/proc/net/tcp6", format!("{words}:{:04X}", addr.port()))
        }
    };
    let Ok(table) = std::fs::read_to_string(file) else {
        // No procfs: fall back to connecting.
        let probe = match addr.ip() {
            IpAddr::V4(ip) if ip.is_unspecified() => (Ipv4Addr::LOCALHOST, addr.port()).into(),
            IpAddr::V6(ip) if ip.is_unspecified() => (Ipv6Addr::LOCALHOST, addr.port()).into(),
            _ => addr,
        };
        return TcpStream::connect_timeout(&probe, Duration::from_millis(200)).is_ok();
    };
    table.lines().skip(1).any(|line| {
        let mut fields = line.split_whitespace();
        let (Some(_), Some(l), Some(_), Some(state)) =
            (fields.next(), fields.next(), fields.next(), fields.next())
        else {
            return false;
        };
        state == "0A" && l == local
    })
}

impl RunningRouter {
    /// The plain-HTTP addresses being served.
    pub fn http_addrs(&self) -> &[SocketAddr] {
        &self.http
    }

    /// The HTTPS addresses being served.
    pub fn https_addrs(&self) -> &[SocketAddr] {
        &self.https
    }

    /// Stops accepting, lets requests in flight finish (up to the shutdown timeout) and waits
    /// for the proxy thread to end.
    pub fn stop(&mut self) {
        if let Some(mut plain) = self.plain.take() {
            plain.stop();
        }
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            if t.join().is_err() {
                tracing::error!("the proxy thread panicked while stopping");
            }
        }
    }
}

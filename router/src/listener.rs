//! Plain-HTTP listeners with one accept loop per proxy thread.
//!
//! Pingora's per-thread runtimes (no work stealing) accept on one thread and run each
//! connection on a random one, while the socket stays registered with the accepting thread's
//! reactor: every read of half the connections then wakes two threads (seen with strace as an
//! eventfd write per request). Here each thread has its own `SO_REUSEPORT` socket per address
//! (the kernel spreads connections across them), accepts, and serves the connection on the
//! same thread, through the HTTP/1.1 front ([`H1Front`]).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use pingora::apps::ServerApp;
use tokio::sync::watch;

use crate::h1::H1Front;
use crate::Error;

/// The threads serving plain HTTP.
pub(crate) struct PlainHttp {
    stop: watch::Sender<bool>,
    threads: Vec<JoinHandle<()>>,
    /// The addresses served, with the port the system chose where one was 0.
    addrs: Vec<SocketAddr>,
}

/// A listening socket that shares its address with the other threads' (`SO_REUSEPORT`).
fn reuseport_listener(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

/// Port 0 on several addresses of one protocol means one free port for all of them, as
/// configured ports are shared (the environment's gateway listens on the loopback listener's
/// port): the first address with port 0 gets a free port, the others bind the same one.
#[derive(Default)]
pub(crate) struct SharedFreePort(Option<u16>);

impl SharedFreePort {
    /// The address to bind for the configured `addr`.
    pub(crate) fn to_bind(&self, addr: SocketAddr) -> SocketAddr {
        match (addr.port(), self.0) {
            (0, Some(port)) => SocketAddr::new(addr.ip(), port),
            _ => addr,
        }
    }

    /// Records that the configured `addr` was bound at `at`.
    pub(crate) fn bound(&mut self, addr: SocketAddr, at: SocketAddr) {
        if addr.port() == 0 && self.0.is_none() {
            self.0 = Some(at.port());
        }
    }
}

impl PlainHttp {
    /// Binds every address once per thread, then starts the threads. Addresses with port 0
    /// get one free port ([`SharedFreePort`]) from the first thread's bind; the other threads
    /// bind that port.
    pub(crate) fn start(
        addrs: &[SocketAddr],
        threads: usize,
        app: Arc<H1Front>,
        shutdown_timeout: Duration,
    ) -> Result<PlainHttp, Error> {
        let bind = |addr| {
            reuseport_listener(addr).map_err(|error| Error::Bind {
                proto: "HTTP",
                addr,
                error,
            })
        };
        let mut first = Vec::with_capacity(addrs.len());
        let mut bound = Vec::with_capacity(addrs.len());
        let mut free = SharedFreePort::default();
        for &addr in addrs {
            let listener = bind(free.to_bind(addr))?;
            let at = listener.local_addr().map_err(|error| Error::Bind {
                proto: "HTTP",
                addr,
                error,
            })?;
            free.bound(addr, at);
            first.push(listener);
            bound.push(at);
        }
        let mut sockets = Vec::with_capacity(threads);
        sockets.push(first);
        for _ in 1..threads {
            sockets.push(bound.iter().map(|&a| bind(a)).collect::<Result<_, _>>()?);
        }
        let (stop, watch) = watch::channel(false);
        let mut handles = Vec::with_capacity(threads);
        for (i, mine) in sockets.into_iter().enumerate() {
            let app = app.clone();
            let watch = watch.clone();
            let handle = std::thread::Builder::new()
                .name(format!("itproxy-http-{i}"))
                .spawn(move || serve_thread(mine, app, watch, shutdown_timeout))
                .map_err(Error::Thread)?;
            handles.push(handle);
        }
        Ok(PlainHttp {
            stop,
            threads: handles,
            addrs: bound,
        })
    }

    /// The addresses served (ports chosen by the system where 0 was asked).
    pub(crate) fn addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    /// Stops accepting, lets requests in flight finish (up to the shutdown timeout) and waits
    /// for the threads.
    pub(crate) fn stop(&mut self) {
        let _ = self.stop.send(true);
        for t in self.threads.drain(..) {
            if t.join().is_err() {
                tracing::error!("a proxy thread panicked while stopping");
            }
        }
    }
}

fn serve_thread(
    sockets: Vec<std::net::TcpListener>,
    app: Arc<H1Front>,
    mut stop: watch::Receiver<bool>,
    shutdown_timeout: Duration,
) {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!("cannot start a proxy thread's runtime: {e}");
            return;
        }
    };
    runtime.block_on(async move {
        let mut accepting = Vec::new();
        let connections = Arc::new(AtomicUsize::new(0));
        for socket in sockets {
            // Registered with this thread's reactor, as is every connection it accepts.
            let listener = match tokio::net::TcpListener::from_std(socket) {
                Ok(l) => l,
                Err(e) => {
                    tracing::error!("cannot listen: {e}");
                    continue;
                }
            };
            let app = app.clone();
            let stop = stop.clone();
            accepting.push(tokio::spawn(accept_loop(
                listener,
                app,
                stop,
                connections.clone(),
            )));
        }
        let _ = stop.wait_for(|s| *s).await;
        for a in &accepting {
            a.abort();
        }
        // Wake keepalive connections waiting for a next request, then give requests in
        // flight the grace period. Client connections are counted, not the runtime's tasks:
        // idle upstream connections in Pingora's pool keep a task each, and need no grace.
        app.cleanup().await;
        let deadline = tokio::time::Instant::now() + shutdown_timeout;
        while connections.load(Ordering::Acquire) > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    });
}

/// Counts a client connection while it is served.
struct Serving(Arc<AtomicUsize>);

impl Serving {
    fn new(count: &Arc<AtomicUsize>) -> Self {
        count.fetch_add(1, Ordering::AcqRel);
        Serving(count.clone())
    }
}

impl Drop for Serving {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

async fn accept_loop(
    listener: tokio::net::TcpListener,
    app: Arc<H1Front>,
    stop: watch::Receiver<bool>,
    connections: Arc<AtomicUsize>,
) {
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of file descriptors: accept fails at once until some are closed.
                tracing::warn!("accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let app = app.clone();
        let stop = stop.clone();
        let serving = Serving::new(&connections);
        tokio::spawn(async move {
            app.serve_plain(tcp, peer, &stop).await;
            drop(serving);
        });
    }
}

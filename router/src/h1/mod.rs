//! The HTTP/1.1 front: reads every request head on an HTTP/1 client connection itself, checks
//! it (`message`: framing, size, loops; a deadline for the whole head), forwards the simple
//! ones as bytes, and lends the connection to Pingora's full pipeline for one request at a time
//! for the rest. It is a security boundary: a head that could be read two ways is refused and
//! the connection closed, never guessed at. Which route a request takes and the `X-Forwarded-*`
//! it gets are the routing policy's (`policy`), the pipeline's own.
//!
//! ```text
//!  connection: our plain-HTTP listener (serve_plain) or Pingora's (process_new)
//!   │  HTTP/2 by ALPN ─────────────────────────────────────────────────▶ Pingora's pipeline
//!   ▼
//!  read head (client) ─ not whole within header_timeout of its first byte ─▶ 408, close
//!   ▲  │               ─ nothing within keepalive_timeout ──────────────────▶ close
//!   │  ▼
//!   │ check (request: message, Via) ─ ambiguous, too large, a loop ─▶ 400/431/508, close
//!   │  ▼
//!   │ decide (request, policy.decide): simple, to an http:// route, no redirect?
//!   │  │ yes                                    │ no
//!   │  ▼                                        ▼
//!   │ forward                                  lend (take_turns): a Pingora session on the
//!   │  exchange (upstream_conn, pool):          connection, the request's bytes read so far
//!   │   a pooled or new connection,             as its pipelined prefix, fenced at the
//!   │   request out, response head in           request's end (lent); the pipeline
//!   │   (response)                              (HostRouter) serves this one request and
//!   │  body relayed as it comes (body)          gives the connection back, with the bytes
//!   │  │  upstream failed ─▶ 502/504, close     the client sent past the fence
//!   │  ▼                                        │
//!   └─ keep-alive ◀─────────────────────────────┘
//! ```
//!
//! What is forwarded here is `request`'s to say (HTTP/1.1 in origin form, no body or a small
//! one with a length, no upgrade, an `http://` target); anything else (HTTP/1.0, chunked or
//! large bodies, WebSocket, unknown hosts and their 404 page, redirects, `https://` targets) is
//! lent. The head is parsed with httparse (Pingora's own parser) in the connection's buffer and
//! rewritten into the upstream request in one pass; the response head is rewritten the same
//! way and goes out with the first body bytes in one write; the body is relayed as it comes,
//! its framing followed only to know where it ends. Those steps are sans-io, and public as
//! [`codec`](crate::codec).
//!
//! Why not Pingora's session for these requests too: its per-request work (header maps, two
//! tasks joined by channels on the full path, header clones) cost 1.5-2.8x nginx's CPU per
//! request here (`make bench` runs the pipeline alone, `h1_front = false`, beside this front and
//! nginx: see the README's Benchmarks); this front does what nginx does per request and nothing
//! more.
//!
//! Upstream connections are pooled per route and per thread, with no lock (`pool`), so none
//! outlives or crosses a route change; a pooled one is checked before it is used, and a request
//! is sent twice only if it is idempotent and got no response byte (`upstream_conn`).

mod body;
pub(crate) mod chunked;
mod client;
mod pool;
pub(crate) mod request;
pub(crate) mod response;
mod upstream_conn;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::SystemTime;

use async_trait::async_trait;
use bytes::{Buf, BytesMut};
use pingora::apps::{HttpServerApp, ServerApp};
use pingora::protocols::http::v1::server::HttpSession as HttpSessionV1;
use pingora::protocols::http::ServerSession;
use pingora::protocols::l4::stream::Stream as L4Stream;
use pingora::protocols::{GetSocketDigest, Shutdown, SocketDigest, Stream, ALPN};
use pingora::proxy::HttpProxy;
use pingora::server::ShutdownWatch;
use pingora::Error as PError;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use self::body::{relay_body, BodyEnd, Timeouts};
pub(crate) use self::client::{ClientCounts, ClientLimits};
use self::client::{Conn, Read, Wait};
use self::request::{Parsed, Prepared, RequestRules};
use self::response::{put_connection, Framing};
use self::upstream_conn::{exchange, Exchanged, Failure};
use crate::inspect::{short_error, Exchange};
use crate::lent::{LentStream, RequestEnd};
use crate::message::HeadScan;
use crate::pages::{self, Page};
use crate::policy::RoutingPolicy;
use crate::HostRouter;

/// The HTTP/1.1 front: serves HTTP/1.1 client connections, forwarding simple requests itself
/// (see the module documentation) and lending the connection to `pipeline` for the rest.
pub(crate) struct H1Front {
    /// The routing policy (the pipeline's own), and whether simple requests are forwarded here.
    requests: RequestRules,
    limits: ClientLimits,
    clients: Arc<ClientCounts>,
    pipeline: Arc<HttpProxy<HostRouter>>,
}

/// What became of a client connection.
enum Outcome {
    /// Served to its end.
    Done,
    /// The request at the start of the buffer, which ends there, needs the full pipeline.
    HandOver(RequestEnd),
}

/// What to do with the client connection after a response.
enum Next {
    KeepAlive,
    Close,
}

impl H1Front {
    /// A front applying `router`'s policy, handing over to a pipeline of its own. Fronts
    /// built with `with_clients` sharing one count limit a client's connections together.
    pub(crate) fn new(
        conf: &Arc<pingora::server::configuration::ServerConf>,
        router: HostRouter,
        forwards: bool,
        limits: ClientLimits,
    ) -> Self {
        let requests = RequestRules {
            policy: router.policy().clone(),
            forwards,
        };
        // Its own: a pipeline whose service stops (Pingora's, when it has no listener)
        // refuses keepalive from then on.
        let mut pipeline = pingora::proxy::http_proxy(conf, router);
        // An idle HTTP/2 connection ends like an idle HTTP/1 one.
        let mut options = pingora::apps::HttpServerOptions::default();
        options.h2_idle_timeout = Some(limits.keepalive_timeout);
        pipeline.server_options = Some(options);
        let pipeline = Arc::new(pipeline);
        H1Front {
            requests,
            limits,
            clients: Arc::default(),
            pipeline,
        }
    }

    /// Counts client connections in `clients` (shared with other fronts).
    pub(crate) fn with_clients(mut self, clients: Arc<ClientCounts>) -> Self {
        self.clients = clients;
        self
    }

    /// Serves a connection accepted by our own plain-HTTP listener.
    pub(crate) async fn serve_plain(
        self: &Arc<Self>,
        tcp: TcpStream,
        peer: SocketAddr,
        shutdown: &ShutdownWatch,
    ) {
        let _ = tcp.set_nodelay(true);
        let mut conn = Conn::new(tcp, Some(peer.ip()), false);
        let Some(_slot) = self
            .clients
            .take(peer.ip(), self.limits.connections_per_client)
        else {
            self.refuse(&mut conn, &Page::TooManyConnections, None)
                .await;
            return;
        };
        let Outcome::HandOver(end) = self.serve(&mut conn, shutdown, true).await else {
            return;
        };
        let fd = std::os::fd::AsRawFd::as_raw_fd(&conn.client);
        let mut stream = L4Stream::from(conn.client);
        // Gives the session the client's address (X-Forwarded-For), read lazily.
        stream.set_socket_digest(SocketDigest::from_raw_fd(fd));
        // Written through a buffer of its own: Pingora's listeners give theirs one.
        let stream = Box::new(LentStream::new(Box::new(stream), true));
        self.take_turns(stream, conn.buf, end, Some(peer.ip()), false, shutdown)
            .await;
    }

    /// Lets the pipeline serve the request at the start of `read` (which ends at `end`) on
    /// `stream`, then takes the connection back for the next request, and so on: every request
    /// head on an HTTP/1 connection is read and checked here, whichever path serves it, and
    /// the pipeline reads no further than the end of the request it is lent (`lent`).
    async fn take_turns(
        self: &Arc<Self>,
        mut stream: Box<LentStream>,
        mut read: BytesMut,
        mut end: RequestEnd,
        peer: Option<IpAddr>,
        tls: bool,
        shutdown: &ShutdownWatch,
    ) {
        loop {
            // The request's bytes read so far; Pingora parses them first. What the client
            // sent after them stays with the stream, for this front.
            let prefix = stream.lend(read, end);
            let mut session = HttpSessionV1::new(stream);
            session.set_pipelined_prefix(prefix);
            let mut session = ServerSession::H1(session);
            let keepalive = (!*shutdown.borrow()).then(|| self.limits.keepalive_timeout.as_secs());
            session.set_keepalive(keepalive);
            session.set_write_timeout(Some(self.limits.send_timeout));
            // A streamed body must keep coming: each read waits at most this long.
            session.set_read_timeout(Some(self.limits.header_timeout));
            let Some(reused) = self.pipeline.process_new_http(session, shutdown).await else {
                return;
            };
            // The stream it was lent (a session gives back the one it was made with).
            let Ok(mut lent) = reused.consume().0.into_any().downcast::<LentStream>() else {
                return;
            };
            let Some(after) = lent.take_back() else {
                // The pipeline kept the connection, though the request did not end where this
                // front reads its end: whatever follows could be read two ways.
                tracing::debug!("a lent request did not end where its framing says: closing");
                Shutdown::shutdown(&mut *lent).await;
                return;
            };
            let mut conn = Conn::new(lent, peer, tls);
            if !after.is_empty() {
                conn.buf = after;
            }
            match self.serve(&mut conn, shutdown, false).await {
                Outcome::Done => return,
                Outcome::HandOver(next) => {
                    stream = conn.client;
                    read = conn.buf;
                    end = next;
                }
            }
        }
    }

    /// Reads and forwards requests until the connection ends or one needs the pipeline.
    /// A `fresh` connection must send its first byte within the header timeout (as nginx's
    /// client_header_timeout counts from the accept), not the keepalive timeout.
    async fn serve<C>(&self, conn: &mut Conn<C>, shutdown: &ShutdownWatch, fresh: bool) -> Outcome
    where
        C: AsyncRead + AsyncWrite + Unpin + Send,
    {
        let mut shutdown = shutdown.clone();
        let mut idle = if fresh {
            self.limits
                .header_timeout
                .min(self.limits.keepalive_timeout)
        } else {
            self.limits.keepalive_timeout
        };
        loop {
            // A request's head (and a body read with it) must be complete this long after its
            // first byte: a client sending a byte now and then cannot hold the connection.
            let mut deadline = None;
            // Bytes that cannot complete the request are not parsed again.
            let mut scan = HeadScan::default();
            let prepared = loop {
                if !conn.buf.is_empty() {
                    let due = *deadline
                        .get_or_insert_with(|| Instant::now() + self.limits.header_timeout);
                    let parsed = if scan.worth_parsing(&conn.buf) {
                        self.requests
                            .prepare(&conn.buf, conn.peer, conn.tls, &mut conn.out)
                    } else {
                        Parsed::Partial
                    };
                    match parsed {
                        Parsed::Forward(p) => break p,
                        Parsed::HandOver(end) => return Outcome::HandOver(end),
                        Parsed::Refuse(page) => {
                            self.refuse(conn, &page, None).await;
                            return Outcome::Done;
                        }
                        Parsed::AwaitBody(len) => scan.await_body(len),
                        Parsed::Partial => {}
                    }
                    match conn.read_client(Wait::Until(due), &mut shutdown).await {
                        Read::More => {}
                        Read::TimedOut => {
                            let page = Page::RequestTimeout;
                            self.refuse(conn, &page, None).await;
                            return Outcome::Done;
                        }
                        Read::Closed => return Outcome::Done,
                    }
                } else if conn.read_client(Wait::Idle(idle), &mut shutdown).await != Read::More {
                    return Outcome::Done;
                }
            };
            idle = self.limits.keepalive_timeout;
            // The request stays at the buffer's start while it is served (for its record);
            // what the client sent after it is only appended meanwhile.
            let next = self.forward(conn, &prepared).await;
            conn.buf.advance(prepared.len);
            match next {
                Next::KeepAlive => {}
                Next::Close => {
                    let _ = conn.client.shutdown().await;
                    return Outcome::Done;
                }
            }
        }
    }

    /// Answers a request this front refuses (or one it could not forward) with `page`, and
    /// closes the connection: after a refused head, nothing that follows can be trusted to
    /// start a request.
    async fn refuse<C>(&self, conn: &mut Conn<C>, page: &Page, p: Option<&Prepared>)
    where
        C: AsyncWrite + Unpin,
    {
        let html = p.map_or_else(|| conn.seems_a_browser(), |p| p.wants_html);
        conn.answer_and_close(page, html, self.limits.send_timeout)
            .await;
        match p {
            Some(p) => access_log(p, page.status()),
            None => {
                let summary = short_error(&page.summary());
                tracing::debug!(status = page.status(), "request refused: {summary}");
                let inspector = self.requests.policy.inspector();
                inspector.record(|e| {
                    e.status = page.status();
                    if inspector.keeps_requests() {
                        e.time = SystemTime::now();
                        e.tls = conn.tls;
                        e.client = conn.peer;
                        e.error = Some(summary);
                    }
                });
            }
        }
    }

    /// Sends the prepared request upstream and relays the response.
    async fn forward<C>(&self, conn: &mut Conn<C>, p: &Prepared) -> Next
    where
        C: AsyncRead + AsyncWrite + Unpin + Send,
    {
        let upstream = p.route.upstream();
        let started = Instant::now();
        let exchanged = exchange(upstream, conn, p).await;
        let upstream_time = started.elapsed();
        let Exchanged { mut up, response } = match exchanged {
            Ok(answer) => answer,
            Err(Failure::Upstream(e)) => {
                let status = self.upstream_failed(conn, p, &e).await;
                let error = short_error(&e.to_string());
                // The page answered is in `conn.out`.
                let head = conn
                    .out
                    .windows(4)
                    .position(|w| w == b"\r\n\r\n")
                    .map_or(0, |i| i + 4);
                self.record(conn, p, started, |r| {
                    r.status = status;
                    r.upstream_failed = true;
                    r.error = Some(error);
                    r.response_bytes = conn.out.len() as u64;
                    r.set_response_head(&conn.out[..head]);
                });
                return Next::Close;
            }
            Err(Failure::Client) => {
                self.record(conn, p, started, |r| {
                    r.error = Some("the client went away before the response".into());
                });
                return Next::Close;
            }
        };
        let client_keep = !p.client_close && response.framing != Framing::UntilClose;
        put_connection(&mut conn.out, client_keep);
        let head_bytes = conn.out.len() as u64;
        let body = &conn.upbuf[response.head_len..];
        let body_limit = self.requests.policy.inspector().body_limit(&p.route);
        let mut kept_body = Vec::new();
        let relayed = relay_body(
            &mut conn.client,
            &mut up,
            &mut conn.out,
            body,
            response.framing,
            Timeouts {
                upstream: upstream.read_timeout(),
                client: self.limits.send_timeout,
            },
            body_limit.map(|limit| (&mut kept_body, limit)),
        )
        .await;
        let cut_short = relayed
            .as_ref()
            .err()
            .map(|e| short_error(&format!("response cut short: {e}")));
        self.record(conn, p, started, |r| {
            r.status = response.status;
            r.upstream_duration = Some(upstream_time);
            r.response_bytes = head_bytes + relayed.as_ref().map_or(0, |b| b.body_bytes);
            r.error = cut_short;
            if self.requests.policy.inspector().keeps_requests() {
                r.set_response_head(&conn.out[..head_bytes as usize]);
            }
            if let Some(limit) = body_limit {
                r.set_bodies(&conn.buf[p.head_len..p.len], &kept_body, limit);
            }
        });
        conn.upbuf.clear();
        access_log(p, response.status);
        match relayed.map(|r| r.end) {
            Ok(end) => {
                if end == BodyEnd::Exact && response.reusable {
                    pool::put(upstream, up);
                }
                if client_keep {
                    Next::KeepAlive
                } else {
                    Next::Close
                }
            }
            Err(e) => {
                tracing::debug!(host = %p.route.host(), error = %e, "response cut short");
                Next::Close
            }
        }
    }

    /// Answers with the 502/504 page naming the route and target, as the pipeline does;
    /// returns the status.
    async fn upstream_failed<C>(&self, conn: &mut Conn<C>, p: &Prepared, e: &PError) -> u16
    where
        C: AsyncWrite + Unpin,
    {
        let status = pages::upstream_status(e.etype());
        RoutingPolicy::log_upstream_failure(Some(&p.route), status, e);
        self.refuse(conn, &Page::upstream_failed(status, &p.route, e), Some(p))
            .await;
        status
    }

    /// Records the forwarded request `p` (its head still at the start of `conn.buf`), served
    /// since `started`; `fill` adds how it ended.
    fn record<C>(
        &self,
        conn: &Conn<C>,
        p: &Prepared,
        started: Instant,
        fill: impl FnOnce(&mut Exchange),
    ) {
        let inspector = self.requests.policy.inspector();
        inspector.record(|e| {
            e.route = Some(p.route.clone());
            e.duration = started.elapsed();
            e.request_bytes = p.len as u64;
            if inspector.keeps_requests() {
                e.time = SystemTime::now()
                    .checked_sub(e.duration)
                    .unwrap_or(SystemTime::UNIX_EPOCH);
                e.tls = conn.tls;
                e.client = conn.peer;
                e.set_request_head(&conn.buf[..p.head_len]);
            }
            fill(e);
        });
    }
}

/// The same access line as the pipeline's (`HostRouter::logging`).
fn access_log(p: &Prepared, status: u16) {
    if let Some((method, uri)) = &p.access {
        RoutingPolicy::log_access(method, uri, Some(p.route.host().as_str()), status);
    }
}

/// Connections from Pingora's listeners (TLS, and plain HTTP with work stealing).
#[async_trait]
impl ServerApp for H1Front {
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let peer = stream
            .get_socket_digest()
            .and_then(|d| d.peer_addr().and_then(|a| a.as_inet()).map(|a| a.ip()));
        // HTTP/2 connections count against the client's connections too.
        let slot = peer.map(|ip| self.clients.take(ip, self.limits.connections_per_client));
        let h2 = matches!(stream.selected_alpn_proto(), Some(ALPN::H2));
        if h2 && !matches!(slot, Some(None)) {
            self.pipeline.process_new(stream, shutdown).await;
            return None;
        }
        let tls = stream.get_ssl_digest().is_some();
        let mut conn = Conn::new(stream, peer, tls);
        if let Some(None) = slot {
            // Over HTTP/2 the TLS connection just closes: there is no HTTP/1 to answer in.
            if !h2 {
                self.refuse(&mut conn, &Page::TooManyConnections, None)
                    .await;
            }
            return None;
        }
        if let Outcome::HandOver(end) = self.serve(&mut conn, shutdown, true).await {
            // Written through: Pingora's listeners give their connections a write buffer.
            let stream = Box::new(LentStream::new(conn.client, false));
            self.take_turns(stream, conn.buf, end, peer, tls, shutdown)
                .await;
        }
        None
    }

    async fn cleanup(&self) {
        self.pipeline.cleanup().await;
    }
}

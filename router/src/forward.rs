//! The HTTP/1.1 front: reads every request head on a client connection itself, checks it
//! (`message`: framing, size, loops; a deadline for the whole head), forwards the simple ones as
//! bytes, and lends the connection to Pingora's full pipeline for one request at a time for the
//! rest. It is a security boundary: a head that could be read two ways is refused and the
//! connection closed, never guessed at.
//!
//! A request is forwarded here when it is HTTP/1.1 in origin form with one Host header, has no
//! body or a `Content-Length` one of at most 64 KiB (read whole first; no `Transfer-Encoding`),
//! asks for no upgrade and no `100-continue`, and its route goes to an `http://` target without
//! an HTTPS redirect to make.
//! The head is parsed with httparse (Pingora's own parser) in the connection's buffer and
//! rewritten into the upstream request in one pass (hop-by-hop headers out, `X-Forwarded-*`
//! in, header case kept); the response head is rewritten the same way and goes out with the
//! first body bytes in one write; the body is relayed as it comes, with its framing (length,
//! chunked, until close) followed only to know where it ends.
//!
//! Anything else (HTTP/1.0, chunked or large bodies, WebSocket, unknown hosts and their 404
//! page, redirects, `https://` targets) is lent to Pingora: a Pingora HTTP/1 session is built on
//! the connection with the bytes read so far as its pipelined prefix, and when it gives the
//! connection back the next head is read here again. HTTP/2 (by ALPN) stays with Pingora.
//!
//! Why not Pingora's session for these requests too: its per-request work (header maps, two
//! tasks joined by channels on the full path, header clones) cost 1.5-2.8x nginx's CPU per
//! request here (see the LIFECYCLE notes and issue 6's measurements); this path does what nginx
//! does per request and nothing more.
//!
//! Upstream connections are pooled per route and per thread (`Upstream::take_idle`), so none
//! outlives or crosses a route change. An idle connection the upstream closed is found when it
//! is reused: every pooled connection is first checked with one non-blocking read (one the
//! upstream closed reads end-of-file; one with unasked bytes, such as a stray response or a
//! body after a HEAD answer, must not carry another client's request), and one goes back to the
//! pool only when its response ended exactly where its framing said. An idempotent request
//! (GET, HEAD, PUT, DELETE, ...) that got no response byte on a reused connection is sent once
//! more on a new one; any other (POST, PATCH) is never sent twice.

use std::io::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use bytes::{Buf, BytesMut};
use pingora::apps::{HttpServerApp, ServerApp};
use pingora::protocols::http::v1::server::HttpSession as HttpSessionV1;
use pingora::protocols::http::ServerSession;
use pingora::protocols::l4::stream::Stream as L4Stream;
use pingora::protocols::{GetSocketDigest, SocketDigest, Stream, ALPN};
use pingora::proxy::HttpProxy;
use pingora::server::ShutdownWatch;
use pingora::{Error as PError, ErrorType};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::chunked::ChunkedEnd;
use crate::message::{self, tokens, MAX_HEAD, MAX_HEADERS};
use crate::pages::{self, Page};
use crate::policy::{Decision, Incoming, Rewrite, RoutingPolicy};
use crate::replay::ReplayStream;
use crate::upstream::{Scheme, Upstream};
use crate::{HostRouter, Route, RouteTable};

/// Request bodies (with a Content-Length) up to this size are read whole and forwarded here;
/// larger ones stream through Pingora.
const MAX_BODY: usize = 64 * 1024;
/// Bytes read from an upstream at a time while relaying a body.
const READ_CHUNK: usize = 16 * 1024;

/// Limits and timeouts of the HTTP front, the same on both paths (see `RouterConfig`).
#[derive(Clone, Copy, Debug)]
pub(crate) struct ClientLimits {
    /// Time from a request's first byte until its head (and a small body) is complete.
    pub(crate) header_timeout: Duration,
    /// How long an idle keepalive connection waits for its next request.
    pub(crate) keepalive_timeout: Duration,
    /// How long a write to the client may wait (a client that stops reading its response).
    pub(crate) send_timeout: Duration,
    /// Open connections one client address may hold; more are answered 503 and closed.
    pub(crate) connections_per_client: usize,
}

/// Open client connections per client address, so one client cannot take every file
/// descriptor (each costs one, plus one per upstream connection).
#[derive(Default)]
pub(crate) struct ClientCounts(std::sync::Mutex<std::collections::HashMap<IpAddr, usize>>);

/// One counted connection; uncounted when dropped.
struct ClientSlot<'a> {
    counts: &'a ClientCounts,
    ip: IpAddr,
}

impl ClientCounts {
    /// Counts a connection from `ip`, unless it has `limit` already.
    fn take(&self, ip: IpAddr, limit: usize) -> Option<ClientSlot<'_>> {
        let mut counts = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let n = counts.entry(ip).or_insert(0);
        if *n >= limit {
            return None;
        }
        *n += 1;
        Some(ClientSlot { counts: self, ip })
    }
}

impl Drop for ClientSlot<'_> {
    fn drop(&mut self) {
        let mut counts = self.counts.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = counts.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                counts.remove(&self.ip);
            }
        }
    }
}

/// Hop-by-hop headers (RFC 9110 7.6.1): they describe one connection, not the message.
const HOP_BY_HOP: [&str; 7] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Serves HTTP/1.1 client connections, forwarding simple requests itself (see the module
/// documentation) and everything else through `pipeline`.
pub(crate) struct Forwarder {
    /// The routing policy (routes, trusted proxies, HTTPS redirects), the pipeline's own.
    router: HostRouter,
    /// Forward simple requests here; when off, every request is checked here and served by
    /// the pipeline.
    forwards: bool,
    limits: ClientLimits,
    clients: Arc<ClientCounts>,
    pipeline: Arc<HttpProxy<HostRouter>>,
}

/// What became of a client connection.
enum Outcome {
    /// Served to its end.
    Done,
    /// Needs the full pipeline from the request at the start of the buffer on.
    HandOver,
}

/// What to do with the client connection after a response.
enum Next {
    KeepAlive,
    Close,
}

/// A client connection and the buffers its requests reuse.
struct Conn<C> {
    client: C,
    peer: Option<IpAddr>,
    tls: bool,
    /// Bytes read from the client and not yet forwarded.
    buf: BytesMut,
    /// Bytes read from the upstream.
    upbuf: BytesMut,
    /// The head being written (to the upstream, then to the client).
    out: Vec<u8>,
}

/// A request this path forwards, already written out (head and body) for the upstream.
struct Prepared {
    /// Bytes of the client's buffer it takes (head and body).
    len: usize,
    /// It may be sent again if a pooled connection turns out closed (RFC 9110 9.2.2).
    idempotent: bool,
    route: Arc<Route>,
    head_request: bool,
    client_close: bool,
    wants_html: bool,
    /// Method and target, kept only while the access log is on.
    access: Option<(Box<str>, Box<str>)>,
}

enum Parsed {
    Partial,
    /// Refused with this page, and the connection closed.
    Refuse(Page),
    /// The head is complete, its body not yet.
    AwaitBody,
    Forward(Prepared),
    HandOver,
}

/// How the end of a response body is known.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Framing {
    Empty,
    Length(u64),
    Chunked,
    UntilClose,
}

/// A parsed upstream response head.
struct Response {
    head_len: usize,
    status: u16,
    framing: Framing,
    /// The upstream allows another request on this connection.
    reusable: bool,
}

impl Forwarder {
    /// A front applying `router`'s policy, handing over to a pipeline of its own. Fronts
    /// built with `with_clients` sharing one count limit a client's connections together.
    pub(crate) fn new(
        conf: &Arc<pingora::server::configuration::ServerConf>,
        router: HostRouter,
        forwards: bool,
        limits: ClientLimits,
    ) -> Self {
        // Its own: a pipeline whose service stops (Pingora's, when it has no listener)
        // refuses keepalive from then on.
        let mut pipeline = pingora::proxy::http_proxy(conf, router.clone());
        // An idle HTTP/2 connection ends like an idle HTTP/1 one.
        let mut options = pingora::apps::HttpServerOptions::default();
        options.h2_idle_timeout = Some(limits.keepalive_timeout);
        pipeline.server_options = Some(options);
        let pipeline = Arc::new(pipeline);
        Forwarder {
            router,
            forwards,
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
        if let Outcome::Done = self.serve(&mut conn, shutdown, true).await {
            return;
        }
        let fd = std::os::fd::AsRawFd::as_raw_fd(&conn.client);
        let mut stream = L4Stream::from(conn.client);
        // Gives the session the client's address (X-Forwarded-For), read lazily.
        stream.set_socket_digest(SocketDigest::from_raw_fd(fd));
        let stream = Box::new(ReplayStream::new(Box::new(stream)));
        self.take_turns(stream, conn.buf, Some(peer.ip()), false, shutdown)
            .await;
    }

    /// Lets the pipeline serve the request at the start of `read` on `stream`, then takes the
    /// connection back for the next request, and so on: every request head on an HTTP/1
    /// connection is read and checked here, whichever path serves it.
    async fn take_turns(
        self: &Arc<Self>,
        mut stream: Stream,
        mut read: BytesMut,
        peer: Option<IpAddr>,
        tls: bool,
        shutdown: &ShutdownWatch,
    ) {
        loop {
            let mut session = HttpSessionV1::new(stream);
            // The bytes read so far are the request's start; Pingora parses them first.
            session.set_pipelined_prefix(read);
            let mut session = ServerSession::H1(session);
            let keepalive = (!*shutdown.borrow()).then(|| self.limits.keepalive_timeout.as_secs());
            session.set_keepalive(keepalive);
            session.set_write_timeout(Some(self.limits.send_timeout));
            // A streamed body must keep coming: each read waits at most this long.
            session.set_read_timeout(Some(self.limits.header_timeout));
            let Some(reused) = self.pipeline.process_new_http(session, shutdown).await else {
                return;
            };
            let mut conn = Conn::new(reused.consume().0, peer, tls);
            match self.serve(&mut conn, shutdown, false).await {
                Outcome::Done => return,
                Outcome::HandOver => {
                    stream = conn.client;
                    read = conn.buf;
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
            let prepared = loop {
                if !conn.buf.is_empty() {
                    let due = *deadline
                        .get_or_insert_with(|| Instant::now() + self.limits.header_timeout);
                    match self.prepare(&conn.buf, conn.peer, conn.tls, &mut conn.out) {
                        Parsed::Forward(p) => break p,
                        Parsed::HandOver => return Outcome::HandOver,
                        Parsed::Refuse(page) => {
                            self.refuse(conn, &page, None).await;
                            return Outcome::Done;
                        }
                        Parsed::Partial if conn.buf.len() >= MAX_HEAD => {
                            let page = Page::BadRequest(message::Refusal {
                                status: 431,
                                reason: "the request head is larger than 64 KiB",
                            });
                            self.refuse(conn, &page, None).await;
                            return Outcome::Done;
                        }
                        Parsed::Partial | Parsed::AwaitBody => {}
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
            conn.buf.advance(prepared.len);
            idle = self.limits.keepalive_timeout;
            match self.forward(conn, &prepared).await {
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
        // Without a parsed request, a browser is recognised by its Accept header's bytes.
        let html = p.map_or_else(
            || {
                conn.buf
                    .windows(9)
                    .take(16 * 1024)
                    .any(|w| w == b"text/html")
            },
            |p| p.wants_html,
        );
        let (content_type, body) = page.render(html);
        let status = page.status();
        let reason = http::StatusCode::from_u16(status)
            .ok()
            .and_then(|s| s.canonical_reason())
            .unwrap_or("");
        let out = &mut conn.out;
        out.clear();
        let _ = write!(out, "HTTP/1.1 {status} {reason}\r\n");
        put_header(out, b"Content-Type", content_type.as_bytes());
        let _ = write!(out, "Content-Length: {}\r\n", body.len());
        put_header(out, b"Cache-Control", b"no-store");
        put_header(
            out,
            b"Date",
            pingora::protocols::http::date::get_cached_date().as_bytes(),
        );
        out.extend_from_slice(b"Connection: close\r\n\r\n");
        out.extend_from_slice(body.as_bytes());
        let client = &mut conn.client;
        let _ = tokio::time::timeout(self.limits.send_timeout, async {
            client.write_all(out).await?;
            client.flush().await?;
            client.shutdown().await
        })
        .await;
        match p {
            Some(p) => access_log(p, status),
            None => tracing::debug!(status, "request refused: {}", page.summary()),
        }
    }

    /// Parses the request head at the start of `buf` and, if this path takes it, writes the
    /// upstream request into `out`.
    fn prepare(&self, buf: &[u8], peer: Option<IpAddr>, tls: bool, out: &mut Vec<u8>) -> Parsed {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut req = httparse::Request::new(&mut headers);
        let head_len = match req.parse(buf) {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) => return Parsed::Partial,
            Err(httparse::Error::TooManyHeaders) => {
                return Parsed::Refuse(Page::BadRequest(message::Refusal {
                    status: 431,
                    reason: "the request has more than 256 header fields",
                }))
            }
            // Whatever httparse refuses (spaces in the target, bad bytes in a name, a TLS
            // hello on the plain port) is refused here, not read more leniently elsewhere.
            Err(_) => {
                return Parsed::Refuse(Page::BadRequest(message::Refusal {
                    status: 400,
                    reason: "the request head is malformed",
                }))
            }
        };
        let (Some(method), Some(path), Some(version)) = (req.method, req.path, req.version) else {
            return Parsed::HandOver;
        };
        // One framing rule for every HTTP/1 request, whichever front serves it.
        let body =
            match message::check_request(version, req.headers.iter().map(|h| (h.name, h.value))) {
                Ok(body) => body,
                Err(refusal) => return Parsed::Refuse(Page::BadRequest(refusal)),
            };
        let via = req
            .headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case("via"));
        if self.router.policy().passed_here(via.map(|h| h.value)) {
            let host = req
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case("host"));
            let host = host.map(|h| String::from_utf8_lossy(h.value).into_owned());
            return Parsed::Refuse(Page::Loop {
                host: host.unwrap_or_default(),
            });
        }
        if !self.forwards || version != 1 || method == "CONNECT" || !path.starts_with('/') {
            return Parsed::HandOver;
        }
        let body_len = match body {
            message::RequestBody::None => 0,
            message::RequestBody::Length(n) if n <= MAX_BODY as u64 => n as usize,
            // Streamed through the pipeline.
            message::RequestBody::Length(_) | message::RequestBody::Chunked => {
                return Parsed::HandOver
            }
        };
        let mut host = None;
        let mut connection = false;
        let mut client_close = false;
        let mut wants_html = false;
        let mut forwarded_for = None;
        let mut forwarded_proto = false;
        let mut forwarded_host = false;
        for h in req.headers.iter() {
            let name = h.name;
            if name.eq_ignore_ascii_case("host") {
                host = Some(h.value);
            } else if name.eq_ignore_ascii_case("upgrade") || name.eq_ignore_ascii_case("expect") {
                return Parsed::HandOver;
            } else if name.eq_ignore_ascii_case("connection") {
                connection = true;
                client_close |= tokens(h.value).any(|t| t.eq_ignore_ascii_case(b"close"));
            } else if name.eq_ignore_ascii_case("accept") {
                wants_html |= h.value.windows(9).any(|w| w == b"text/html");
            } else if name.eq_ignore_ascii_case("x-forwarded-for") {
                forwarded_for = forwarded_for.or(Some(h.value));
            } else if name.eq_ignore_ascii_case("x-forwarded-proto") {
                forwarded_proto = true;
            } else if name.eq_ignore_ascii_case("x-forwarded-host") {
                forwarded_host = true;
            }
        }
        let Some(host) = host else {
            return Parsed::HandOver;
        };
        if buf.len() < head_len + body_len {
            return Parsed::AwaitBody;
        }
        let Ok(authority) = std::str::from_utf8(host) else {
            return Parsed::HandOver;
        };
        let policy = self.router.policy();
        let route = match policy.decide(authority, tls) {
            Decision::Forward(route) if route.upstream().spec().scheme() == Scheme::Http => route,
            // Redirects, unknown hosts and https:// targets.
            _ => return Parsed::HandOver,
        };
        let forwarded = policy.forwarded(
            peer,
            tls,
            Incoming {
                forwarded_for,
                forwarded_proto,
                forwarded_host,
                host: Some(host),
            },
        );
        // The client's own, unless the policy keeps them.
        let drop_proto = !matches!(forwarded.proto, Rewrite::Keep);
        let drop_host = !matches!(forwarded.host, Rewrite::Keep);
        out.clear();
        out.extend_from_slice(method.as_bytes());
        out.push(b' ');
        out.extend_from_slice(path.as_bytes());
        out.extend_from_slice(b" HTTP/1.1\r\n");
        for h in req.headers.iter() {
            let name = h.name;
            let ours = name.eq_ignore_ascii_case("x-forwarded-for")
                || (drop_proto && name.eq_ignore_ascii_case("x-forwarded-proto"))
                || (drop_host && name.eq_ignore_ascii_case("x-forwarded-host"));
            if ours
                || HOP_BY_HOP.iter().any(|n| name.eq_ignore_ascii_case(n))
                || (connection && named_by_connection(name, req.headers))
            {
                continue;
            }
            put_header(out, name.as_bytes(), h.value);
        }
        if let Rewrite::Set(forwarded_for) = forwarded.for_ {
            out.extend_from_slice(b"X-Forwarded-For: ");
            forwarded_for.write_to(out);
            out.extend_from_slice(b"\r\n");
        }
        if let Rewrite::Set(proto) = forwarded.proto {
            put_header(out, b"X-Forwarded-Proto", proto.as_bytes());
        }
        if let Rewrite::Set(host) = forwarded.host {
            put_header(out, b"X-Forwarded-Host", host);
        }
        put_header(out, b"Via", policy.via().as_bytes());
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(&buf[head_len..head_len + body_len]);
        Parsed::Forward(Prepared {
            len: head_len + body_len,
            idempotent: matches!(
                method,
                "GET" | "HEAD" | "OPTIONS" | "TRACE" | "PUT" | "DELETE"
            ),
            route,
            head_request: method == "HEAD",
            client_close,
            wants_html,
            access: RoutingPolicy::access_log_enabled().then(|| (method.into(), path.into())),
        })
    }

    /// Sends the prepared request upstream and relays the response.
    async fn forward<C>(&self, conn: &mut Conn<C>, p: &Prepared) -> Next
    where
        C: AsyncRead + AsyncWrite + Unpin + Send,
    {
        let upstream = p.route.upstream();
        let (mut up, index, response) = match exchange(upstream, conn, p).await {
            Ok(answer) => answer,
            Err(Failure::Upstream(e)) => {
                self.upstream_failed(conn, p, &e).await;
                return Next::Close;
            }
            Err(Failure::Client) => return Next::Close,
        };
        let client_keep = !p.client_close && response.framing != Framing::UntilClose;
        put_connection(&mut conn.out, client_keep);
        let body = &conn.upbuf[response.head_len..];
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
        )
        .await;
        conn.upbuf.clear();
        access_log(p, response.status);
        match relayed {
            Ok(clean) => {
                if clean && response.reusable {
                    upstream.put_idle(index, up);
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

    /// Answers with the 502/504 page naming the route and target, as the pipeline does.
    async fn upstream_failed<C>(&self, conn: &mut Conn<C>, p: &Prepared, e: &PError)
    where
        C: AsyncWrite + Unpin,
    {
        let status = pages::upstream_status(e.etype());
        RoutingPolicy::log_upstream_failure(Some(&p.route), status, e);
        self.refuse(conn, &Page::upstream_failed(status, &p.route, e), Some(p))
            .await;
    }
}

/// The same access line as the pipeline's (`HostRouter::logging`).
fn access_log(p: &Prepared, status: u16) {
    if let Some((method, uri)) = &p.access {
        RoutingPolicy::log_access(method, uri, Some(p.route.host().as_str()), status);
    }
}

/// How long [`Conn::read_client`] waits.
#[derive(Clone, Copy)]
enum Wait {
    /// For the next request on an idle connection; ends early when the proxy stops.
    Idle(Duration),
    /// For the rest of a request, until this instant.
    Until(Instant),
}

/// What [`Conn::read_client`] got.
#[derive(Debug, PartialEq, Eq)]
enum Read {
    More,
    TimedOut,
    /// The client closed or failed, or the proxy is stopping while the connection is idle.
    Closed,
}

impl<C: AsyncRead + AsyncWrite + Unpin> Conn<C> {
    fn new(client: C, peer: Option<IpAddr>, tls: bool) -> Self {
        Conn {
            client,
            peer,
            tls,
            buf: BytesMut::with_capacity(4096),
            upbuf: BytesMut::with_capacity(READ_CHUNK),
            out: Vec::with_capacity(4096),
        }
    }

    /// Reads more of the next request.
    async fn read_client(&mut self, wait: Wait, shutdown: &mut ShutdownWatch) -> Read {
        let idle = matches!(wait, Wait::Idle(_));
        if idle && *shutdown.borrow() {
            return Read::Closed;
        }
        let deadline = match wait {
            Wait::Idle(d) => Instant::now() + d,
            Wait::Until(t) => t,
        };
        self.buf.reserve(4096);
        tokio::select! {
            read = tokio::time::timeout_at(deadline, self.client.read_buf(&mut self.buf)) => {
                match read {
                    Ok(Ok(n)) if n > 0 => Read::More,
                    Ok(_) => Read::Closed,
                    Err(_) if idle => Read::Closed,
                    Err(_) => Read::TimedOut,
                }
            }
            _ = shutdown.changed(), if idle => Read::Closed,
        }
    }
}

/// Why a request got no response from the upstream.
enum Failure {
    /// The upstream could not be reached or sent no valid response head.
    Upstream(Box<PError>),
    /// The client went away before the response (or while an informational one was relayed).
    Client,
}

/// Sends the request (from `conn.out`) and reads the final response head into `conn.upbuf`,
/// passing informational responses on; leaves the client's response head in `conn.out`
/// (without its `Connection` header).
async fn exchange<C>(
    upstream: &Upstream,
    conn: &mut Conn<C>,
    p: &Prepared,
) -> Result<(TcpStream, usize, Response), Failure>
where
    C: AsyncRead + AsyncWrite + Unpin,
{
    let timeout = upstream.read_timeout();
    let mut fresh_only = false;
    let (mut up, index) = loop {
        let idle = if fresh_only {
            None
        } else {
            upstream.take_idle()
        };
        let reused = idle.is_some();
        let (index, mut up) = match idle {
            // A pooled connection that has something to read is closed, or the upstream sent
            // bytes nobody asked for (a stray response, a body after a HEAD answer): either
            // way it must not carry another client's request.
            Some((_, up)) if !still_open(&up) => {
                drop(up);
                if !p.idempotent {
                    // Not sent twice: only a new connection for this one.
                    fresh_only = true;
                    upstream.clear_idle();
                }
                continue;
            }
            Some(c) => c,
            None => connect(upstream).await.map_err(Failure::Upstream)?,
        };
        conn.upbuf.clear();
        let sent = match tokio::time::timeout(timeout, up.write_all(&conn.out)).await {
            Ok(Ok(())) => await_response(&mut up, conn, timeout).await,
            Ok(Err(e)) => Err(Failure::Upstream(PError::because(
                ErrorType::WriteError,
                "sending the request",
                e,
            ))),
            Err(_) => Err(Failure::Upstream(PError::explain(
                ErrorType::WriteTimedout,
                format!("sending the request took more than {}", secs(timeout)),
            ))),
        };
        match sent {
            Ok(()) => break (up, index),
            Err(Failure::Upstream(e)) if reused && p.idempotent && is_stale(&e) => {
                // Closed while idle: so are its idle siblings, most likely.
                tracing::debug!(error = %e, "a pooled upstream connection was closed; retrying on a new one");
                upstream.clear_idle();
                fresh_only = true;
            }
            Err(e) => return Err(e),
        }
    };
    loop {
        match parse_response(&conn.upbuf, p.head_request, &mut conn.out) {
            Ok(Some(r)) if (100..200).contains(&r.status) => {
                // 103 Early Hints and the like go on to the client as they are.
                let info = conn.upbuf.split_to(r.head_len);
                let client = &mut conn.client;
                let sent = tokio::time::timeout(timeout, async {
                    client.write_all(&info).await?;
                    client.flush().await
                })
                .await;
                if !matches!(sent, Ok(Ok(()))) {
                    return Err(Failure::Client);
                }
                if conn.upbuf.is_empty() {
                    await_response(&mut up, conn, timeout).await?;
                }
                continue;
            }
            Ok(Some(r)) => return Ok((up, index, r)),
            Ok(None) if conn.upbuf.len() >= MAX_HEAD => {
                return Err(Failure::Upstream(PError::explain(
                    ErrorType::InvalidHTTPHeader,
                    "the response head is larger than 64 KiB",
                )))
            }
            Ok(None) => {}
            Err(e) => return Err(Failure::Upstream(e)),
        }
        await_response(&mut up, conn, timeout).await?;
    }
}

/// Whether a failure on a reused connection means it was closed while idle (so the request
/// never reached a live upstream and may be sent again), not that the upstream is slow.
fn is_stale(e: &PError) -> bool {
    !matches!(
        e.etype(),
        ErrorType::ReadTimedout | ErrorType::WriteTimedout
    )
}

fn secs(d: Duration) -> String {
    format!("{:?}", d)
}

/// Reads at least one more byte of the response into `conn.upbuf`, within `timeout`, while
/// watching the client: a client that closes its connection meanwhile is not waited for (its
/// upstream connection is dropped, as nginx does), and bytes it sends ahead (a pipelined next
/// request) are kept.
async fn await_response<C>(
    up: &mut TcpStream,
    conn: &mut Conn<C>,
    timeout: Duration,
) -> Result<(), Failure>
where
    C: AsyncRead + Unpin,
{
    let deadline = tokio::time::Instant::now() + timeout;
    conn.upbuf.reserve(READ_CHUNK);
    loop {
        // Past this much read ahead, stop reading the client until the response is in.
        let watch_client = conn.buf.len() < MAX_HEAD + MAX_BODY;
        if watch_client {
            conn.buf.reserve(4096);
        }
        tokio::select! {
            biased;
            read = tokio::time::timeout_at(deadline, up.read_buf(&mut conn.upbuf)) => {
                return match read {
                    Ok(Ok(0)) => Err(Failure::Upstream(PError::explain(
                        ErrorType::ConnectionClosed,
                        "the upstream closed the connection",
                    ))),
                    Ok(Ok(_)) => Ok(()),
                    Ok(Err(e)) => Err(Failure::Upstream(PError::because(
                        ErrorType::ReadError,
                        "reading the response",
                        e,
                    ))),
                    Err(_) => Err(Failure::Upstream(PError::explain(
                        ErrorType::ReadTimedout,
                        format!("no response within {}", secs(timeout)),
                    ))),
                };
            }
            read = conn.client.read_buf(&mut conn.buf), if watch_client => {
                if !matches!(read, Ok(n) if n > 0) {
                    return Err(Failure::Client);
                }
            }
        }
    }
}

/// Whether an idle upstream connection has neither been closed nor sent anything unasked
/// (one non-blocking read: an open, quiet socket has nothing to read).
fn still_open(up: &TcpStream) -> bool {
    let mut byte = [0u8; 1];
    matches!(up.try_read(&mut byte), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
}

/// Parses the response head at the start of `buf`. A final response's head is written for
/// the client into `out`, hop-by-hop headers removed, up to (not including) the `Connection`
/// header and the blank line.
fn parse_response(
    buf: &[u8],
    head_request: bool,
    out: &mut Vec<u8>,
) -> Result<Option<Response>, Box<PError>> {
    let invalid = |what: &str| PError::explain(ErrorType::InvalidHTTPHeader, what.to_string());
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut headers);
    let head_len = match resp.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(invalid(&format!("invalid response head: {e}"))),
    };
    let (Some(status), Some(version)) = (resp.code, resp.version) else {
        return Err(invalid("invalid response head"));
    };
    if status == 101 {
        return Err(invalid(
            "101 Switching Protocols to a request without Upgrade",
        ));
    }
    if (100..200).contains(&status) {
        return Ok(Some(Response {
            head_len,
            status,
            framing: Framing::Empty,
            reusable: false,
        }));
    }
    let mut connection = false;
    let mut close = false;
    let mut keep_alive = false;
    let mut length: Option<u64> = None;
    let mut chunked = None;
    let mut date = false;
    for h in resp.headers.iter() {
        let name = h.name;
        if name.eq_ignore_ascii_case("connection") {
            connection = true;
            for t in tokens(h.value) {
                close |= t.eq_ignore_ascii_case(b"close");
                keep_alive |= t.eq_ignore_ascii_case(b"keep-alive");
            }
        } else if name.eq_ignore_ascii_case("content-length") {
            let n = message::parse_length(h.value.trim_ascii())
                .ok_or_else(|| invalid("invalid Content-Length in the response"))?;
            if length.is_some_and(|l| l != n) {
                return Err(invalid(
                    "conflicting Content-Length headers in the response",
                ));
            }
            length = Some(n);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            // Only the last coding says how the message ends.
            chunked = Some(
                tokens(h.value)
                    .last()
                    .is_some_and(|t| t.eq_ignore_ascii_case(b"chunked")),
            );
        } else if name.eq_ignore_ascii_case("date") {
            date = true;
        }
    }
    let framing = if head_request || status == 204 || status == 304 {
        Framing::Empty
    } else {
        match (chunked, length) {
            (Some(true), _) => Framing::Chunked,
            (Some(false), _) => Framing::UntilClose,
            (None, Some(n)) => Framing::Length(n),
            (None, None) => Framing::UntilClose,
        }
    };
    // Both framings at once: the message is read by its coding, but whatever sent it cannot
    // be trusted with another request (RFC 9112 6.1).
    let reusable = framing != Framing::UntilClose
        && !(chunked.is_some() && length.is_some())
        && match version {
            1 => !close,
            _ => keep_alive && !close,
        };

    out.clear();
    let _ = write!(out, "HTTP/1.1 {status} {}\r\n", resp.reason.unwrap_or(""));
    for h in resp.headers.iter() {
        let name = h.name;
        // The length goes out once, normalised, below; next to a transfer coding it is
        // wrong and ignored (RFC 9112 6.3).
        let skip = HOP_BY_HOP[..3].iter().any(|n| name.eq_ignore_ascii_case(n))
            || name.eq_ignore_ascii_case("content-length")
            || (connection && named_by_connection(name, resp.headers));
        if !skip {
            put_header(out, name.as_bytes(), h.value);
        }
    }
    if let (None, Some(n)) = (chunked, length) {
        let _ = write!(out, "Content-Length: {n}\r\n");
    }
    if !date {
        put_header(
            out,
            b"Date",
            pingora::protocols::http::date::get_cached_date().as_bytes(),
        );
    }
    Ok(Some(Response {
        head_len,
        status,
        framing,
        reusable,
    }))
}

/// Ends the client's response head with its `Connection` header and the blank line.
fn put_connection(out: &mut Vec<u8>, keep_alive: bool) {
    out.extend_from_slice(if keep_alive {
        &b"Connection: keep-alive\r\n\r\n"[..]
    } else {
        &b"Connection: close\r\n\r\n"[..]
    });
}

/// Writes the response head (in `out`) and body to the client. `body` holds the body bytes
/// already read with the head. Returns whether the upstream connection ended exactly with
/// the body (so it may be reused).
async fn relay_body<C>(
    client: &mut C,
    up: &mut TcpStream,
    out: &mut Vec<u8>,
    body: &[u8],
    framing: Framing,
    timeouts: Timeouts,
) -> std::io::Result<bool>
where
    C: AsyncWrite + Unpin,
{
    let invalid = |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what);
    let mut chunks = ChunkedEnd::new();
    // How much of `body` belongs to this response, and whether it is complete with it.
    let (first, mut done) = match framing {
        Framing::Empty => (0, true),
        Framing::Length(n) => {
            let first = n.min(body.len() as u64) as usize;
            (first, first as u64 == n)
        }
        Framing::Chunked => match chunks.feed(body) {
            Ok(Some(end)) => (end, true),
            Ok(None) => (body.len(), false),
            Err(_) => return Err(invalid("invalid chunked body from the upstream")),
        },
        Framing::UntilClose => (body.len(), false),
    };
    let mut clean = first == body.len();
    out.extend_from_slice(&body[..first]);
    send(client, out, timeouts.client).await?;
    let mut left = match framing {
        Framing::Length(n) => n - first as u64,
        _ => 0,
    };
    let mut buf = BytesMut::new();
    while !done {
        buf.clear();
        buf.reserve(READ_CHUNK);
        // A response may stream for as long as it likes, but not stall for longer than this.
        let n = tokio::time::timeout(timeouts.upstream, up.read_buf(&mut buf))
            .await
            .map_err(|_| {
                std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("the upstream sent nothing for {}", secs(timeouts.upstream)),
                )
            })??;
        if n == 0 {
            if framing == Framing::UntilClose {
                break;
            }
            return Err(invalid("the upstream closed the connection mid-body"));
        }
        let take = match framing {
            Framing::Length(_) => {
                let take = left.min(n as u64) as usize;
                left -= take as u64;
                done = left == 0;
                take
            }
            Framing::Chunked => match chunks.feed(&buf) {
                Ok(Some(end)) => {
                    done = true;
                    end
                }
                Ok(None) => n,
                Err(_) => return Err(invalid("invalid chunked body from the upstream")),
            },
            _ => n,
        };
        clean &= take == n;
        send(client, &buf[..take], timeouts.client).await?;
    }
    // Buffered streams (TLS, a connection the pipeline served before) send on flush.
    within(timeouts.client, client.flush()).await?;
    Ok(clean)
}

/// How long a relayed body may stall on either side.
#[derive(Clone, Copy)]
struct Timeouts {
    upstream: Duration,
    client: Duration,
}

/// Writes to the client, giving up on one that stopped reading.
async fn send<C: AsyncWrite + Unpin>(
    client: &mut C,
    bytes: &[u8],
    timeout: Duration,
) -> std::io::Result<()> {
    within(timeout, client.write_all(bytes)).await
}

/// A write (or flush) to the client, unless it takes longer than `timeout`.
async fn within(
    timeout: Duration,
    write: impl std::future::Future<Output = std::io::Result<()>>,
) -> std::io::Result<()> {
    tokio::time::timeout(timeout, write).await.map_err(|_| {
        std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "the client stopped reading its response",
        )
    })?
}

/// Whether a `Connection` header among `headers` names `name` as hop-by-hop (never one
/// that frames or routes the message: see [`message::is_protected`]).
fn named_by_connection(name: &str, headers: &[httparse::Header<'_>]) -> bool {
    !message::is_protected(name)
        && headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case("connection"))
            .any(|h| tokens(h.value).any(|t| t.eq_ignore_ascii_case(name.as_bytes())))
}

fn put_header(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// A new connection to the upstream: its addresses from the preferred one on, each within
/// the connect timeout.
async fn connect(upstream: &Upstream) -> Result<(usize, TcpStream), Box<PError>> {
    let mut last: Option<Box<PError>> = None;
    for attempt in 0..upstream.peer_count() {
        let Some((index, addr)) = upstream.addr(attempt) else {
            break;
        };
        match try_connect(addr, upstream.connect_timeout()).await {
            Ok(tcp) => {
                if attempt > 0 {
                    upstream.prefer(index);
                }
                return Ok((index, tcp));
            }
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| {
        PError::explain(
            ErrorType::ConnectNoRoute,
            "the target's host name did not resolve to any address",
        )
    }))
}

async fn try_connect(addr: SocketAddr, timeout: Duration) -> Result<TcpStream, Box<PError>> {
    let tcp = match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
        Ok(Ok(tcp)) => tcp,
        Ok(Err(e)) => {
            let etype = match e.kind() {
                std::io::ErrorKind::ConnectionRefused => ErrorType::ConnectRefused,
                _ => ErrorType::ConnectError,
            };
            return Err(PError::because(etype, format!("connecting to {addr}"), e));
        }
        Err(_) => {
            return Err(PError::explain(
                ErrorType::ConnectTimedout,
                format!("connecting to {addr}"),
            ))
        }
    };
    // Small requests and answers: do not wait to fill a segment.
    let _ = tcp.set_nodelay(true);
    Ok(tcp)
}

/// Connections from Pingora's listeners (TLS, and plain HTTP with work stealing).
#[async_trait]
impl ServerApp for Forwarder {
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
        if let Outcome::HandOver = self.serve(&mut conn, shutdown, true).await {
            self.take_turns(conn.client, conn.buf, peer, tls, shutdown)
                .await;
        }
        None
    }

    async fn cleanup(&self) {
        self.pipeline.cleanup().await;
    }
}

/// The head rewriting alone, for the criterion benchmarks (not a stable API).
#[doc(hidden)]
pub mod bench {
    use super::*;

    pub(super) const TEST_LIMITS: ClientLimits = ClientLimits {
        header_timeout: Duration::from_secs(60),
        keepalive_timeout: Duration::from_secs(60),
        send_timeout: Duration::from_secs(60),
        connections_per_client: 1024,
    };

    /// Rewrites request heads the way the forwarder does for `routes`.
    pub struct RequestRewrite(Forwarder);

    impl RequestRewrite {
        /// A forwarder over `routes` (no trusted proxies).
        pub fn new(routes: Arc<ArcSwap<RouteTable>>) -> Self {
            let conf = Arc::new(pingora::server::configuration::ServerConf::default());
            RequestRewrite(Forwarder::new(
                &conf,
                HostRouter::new(routes, vec![], None),
                true,
                TEST_LIMITS,
            ))
        }

        /// Writes the upstream request for `head` into `out`; false if it would be handed
        /// to the pipeline (or is incomplete).
        pub fn rewrite(&self, head: &[u8], peer: IpAddr, out: &mut Vec<u8>) -> bool {
            matches!(
                self.0.prepare(head, Some(peer), false, out),
                Parsed::Forward(_)
            )
        }
    }

    /// Writes the client's response head for an upstream `head` into `out`.
    pub fn response(head: &[u8], out: &mut Vec<u8>) -> bool {
        matches!(parse_response(head, false, out), Ok(Some(_)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn forwarder(routes: &[(&str, &str)]) -> Forwarder {
        let table = RouteTable::new(routes.iter().map(|(host, target)| {
            let spec = crate::UpstreamSpec::parse(target).unwrap();
            let addr = format!("{}:{}", spec.host(), spec.port()).parse().unwrap();
            let upstream = Upstream::new(spec, vec![addr], 1, &Default::default());
            Route::new(crate::HostName::parse(host).unwrap(), Arc::new(upstream))
        }));
        let routes = Arc::new(ArcSwap::from_pointee(table));
        let conf = Arc::new(pingora::server::configuration::ServerConf::default());
        let trusted = vec!["10.0.0.0/8".parse().unwrap()];
        Forwarder::new(
            &conf,
            HostRouter::new(routes, trusted, None),
            true,
            bench::TEST_LIMITS,
        )
    }

    fn upstream_request(f: &Forwarder, req: &[u8], peer: &str) -> Option<String> {
        let mut out = Vec::new();
        match f.prepare(req, Some(peer.parse().unwrap()), false, &mut out) {
            Parsed::Forward(_) => Some(String::from_utf8(out).unwrap()),
            Parsed::HandOver => None,
            Parsed::Refuse(page) => panic!("refused: {}", page.summary()),
            Parsed::Partial | Parsed::AwaitBody => panic!("a complete request was seen as partial"),
        }
    }

    /// The status this front refuses `req` with, if it does.
    fn refused(f: &Forwarder, req: &[u8]) -> Option<u16> {
        let mut out = Vec::new();
        match f.prepare(req, Some("127.0.0.1".parse().unwrap()), false, &mut out) {
            Parsed::Refuse(page) => Some(page.status()),
            _ => None,
        }
    }

    #[test]
    fn simple_requests_are_rewritten_and_the_rest_handed_over() {
        let f = forwarder(&[
            ("api.test", "127.0.0.1:1"),
            ("secure.test", "https://127.0.0.1:2"),
        ]);
        let out = upstream_request(
            &f,
            b"GET /a?b HTTP/1.1\r\nHost: API.test:80\r\nConnection: keep-alive, X-Hop\r\nX-Hop: 1\r\nTE: trailers\r\nX-Forwarded-For: 6.6.6.6\r\nAccept: */*\r\n\r\n",
            "192.0.2.1",
        )
        .unwrap();
        assert_eq!(
            out,
            format!("GET /a?b HTTP/1.1\r\nHost: API.test:80\r\nAccept: */*\r\nX-Forwarded-For: 192.0.2.1\r\nX-Forwarded-Proto: http\r\nX-Forwarded-Host: API.test:80\r\nVia: {}\r\n\r\n", f.router.policy().via())
        );
        let trusted = upstream_request(
            &f,
            b"GET / HTTP/1.1\r\nHost: api.test\r\nX-Forwarded-For: 203.0.113.7\r\nX-Forwarded-Proto: https\r\n\r\n",
            "10.1.2.3",
        )
        .unwrap();
        assert!(
            trusted.contains("X-Forwarded-For: 203.0.113.7, 10.1.2.3\r\n"),
            "{trusted}"
        );
        assert!(
            trusted.contains("X-Forwarded-Proto: https\r\n"),
            "{trusted}"
        );
        for handed_over in [
            &b"GET / HTTP/1.0\r\nHost: api.test\r\n\r\n"[..],
            b"GET / HTTP/1.1\r\nHost: nowhere.test\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: secure.test\r\n\r\n",
            b"GET / HTTP/1.1\r\n\r\n",
            b"GET http://api.test/ HTTP/1.1\r\nHost: api.test\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: api.test\r\nContent-Length: 65537\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: api.test\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: api.test\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: api.test\r\nExpect: 100-continue\r\n\r\n",
        ] {
            assert_eq!(upstream_request(&f, handed_over, "127.0.0.1"), None, "{handed_over:?}");
        }
    }

    #[test]
    fn ambiguous_framing_is_refused_before_any_hand_over() {
        let f = forwarder(&[("api.test", "127.0.0.1:1")]);
        for (req, status) in [
            (&b"GET / HTTP/1.1\r\nHost: api.test\r\nHost: api.test\r\n\r\n"[..], 400),
            (b"POST / HTTP/1.1\r\nHost: api.test\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd", 400),
            (b"POST / HTTP/1.1\r\nHost: api.test\r\nContent-Length: 5\r\nContent-Length: 05\r\n\r\nhello", 400),
            (b"POST / HTTP/1.1\r\nHost: api.test\r\nContent-Length: +3\r\n\r\nabc", 400),
            (b"POST / HTTP/1.1\r\nHost: api.test\r\nConnection: Content-Length\r\nContent-Length: 3\r\n\r\nabc", 400),
            (b"GET / HTTP/1.1\r\nHost: api.test\r\nConnection: host\r\n\r\n", 400),
            (b"POST / HTTP/1.1\r\nHost: api.test\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n", 400),
            // The same rules for requests that would go to the pipeline.
            (b"POST / HTTP/1.0\r\nHost: api.test\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
            (b"POST / HTTP/1.1\r\nHost: nowhere.test\r\nTransfer-Encoding: gzip\r\n\r\n", 400),
            (b"GET / HTTP/1.1\r\nHost: api.test\r\n folded\r\n\r\n", 400),
            (b"GET /a b HTTP/1.1\r\nHost: api.test\r\n\r\n", 400),
            (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n", 400),
        ] {
            assert_eq!(refused(&f, req), Some(status), "{:?}", String::from_utf8_lossy(req));
        }
        let mut many = b"GET / HTTP/1.1\r\nHost: api.test\r\n".to_vec();
        for i in 0..300 {
            many.extend(format!("X-{i}: 1\r\n").bytes());
        }
        many.extend(b"\r\n");
        assert_eq!(refused(&f, &many), Some(431));
        let mut fine = b"GET / HTTP/1.1\r\nHost: api.test\r\n".to_vec();
        for i in 0..200 {
            fine.extend(format!("X-{i}: 1\r\n").bytes());
        }
        fine.extend(b"\r\n");
        assert!(
            upstream_request(&f, &fine, "127.0.0.1").is_some(),
            "200 fields are fine"
        );
    }

    #[test]
    fn a_request_that_passed_here_before_is_a_loop() {
        let f = forwarder(&[("api.test", "127.0.0.1:1")]);
        let first =
            upstream_request(&f, b"GET / HTTP/1.1\r\nHost: api.test\r\n\r\n", "127.0.0.1").unwrap();
        let via = first
            .lines()
            .find(|l| l.starts_with("Via: "))
            .expect("a Via entry is added");
        assert!(via.starts_with("Via: 1.1 itproxy-"), "{via}");
        let again = first.replace("X-Forwarded-For", "X-Old-For");
        assert_eq!(refused(&f, again.as_bytes()), Some(508));
        // Another itproxy's entry is no loop.
        let other = b"GET / HTTP/1.1\r\nHost: api.test\r\nVia: 1.1 itproxy-00000000\r\n\r\n";
        assert!(upstream_request(&f, other, "127.0.0.1").is_some());
    }

    #[test]
    fn small_bodies_are_forwarded_once_complete() {
        let f = forwarder(&[("api.test", "127.0.0.1:1")]);
        let post = b"POST /form HTTP/1.1\r\nHost: api.test\r\nContent-Length: 5\r\n\r\nhelloGET";
        let mut out = Vec::new();
        let peer = Some("127.0.0.1".parse().unwrap());
        for cut in [post.len() - 4, post.len()] {
            match f.prepare(&post[..cut], peer, false, &mut out) {
                Parsed::Forward(p) => {
                    assert_eq!(cut, post.len(), "forwarded before the body was complete");
                    assert_eq!(p.len, post.len() - 3, "the next request's bytes stay");
                    assert!(!p.idempotent);
                    assert!(
                        out.ends_with(b"\r\n\r\nhello"),
                        "{}",
                        String::from_utf8_lossy(&out)
                    );
                }
                Parsed::AwaitBody => assert!(cut < post.len()),
                _ => panic!("cut {cut}: neither forwarded nor waiting for the body"),
            }
        }
    }

    proptest! {
        /// Whatever a client sends, the forwarder answers one of partial, hand over or
        /// forward, and what it forwards is one well-formed request head with the route's Host.
        #[test]
        fn any_client_bytes_are_handled_without_panic(
            prefix in proptest::sample::select(vec![
                &b""[..],
                b"GET / HTTP/1.1\r\nHost: api.test\r\n",
                b"GET /x HTTP/1.1\r\nhost: api.test\r\nConnection: ",
            ]),
            noise in proptest::collection::vec(any::<u8>(), 0..200),
        ) {
            static F: std::sync::LazyLock<Forwarder> =
                std::sync::LazyLock::new(|| forwarder(&[("api.test", "127.0.0.1:1")]));
            let f = &*F;
            let mut input = prefix.to_vec();
            input.extend(&noise);
            input.extend(b"\r\n\r\n");
            let mut out = Vec::new();
            if let Parsed::Forward(p) = f.prepare(&input, Some("127.0.0.1".parse().unwrap()), false, &mut out) {
                let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS + 3];
                let mut req = httparse::Request::new(&mut headers);
                prop_assert_eq!(req.parse(&out), Ok(httparse::Status::Complete(out.len())));
                prop_assert_eq!(req.headers.iter().filter(|h| h.name.eq_ignore_ascii_case("host")).count(), 1);
                prop_assert!(p.len <= input.len());
            }
        }

        /// Whatever an upstream sends, the response parser returns a head or an error.
        #[test]
        fn any_upstream_bytes_are_handled_without_panic(
            prefix in proptest::sample::select(vec![
                &b""[..],
                b"HTTP/1.1 200 OK\r\n",
                b"HTTP/1.1 200 OK\r\nContent-Length: ",
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: ",
            ]),
            noise in proptest::collection::vec(any::<u8>(), 0..200),
            head_request in any::<bool>(),
        ) {
            let mut input = prefix.to_vec();
            input.extend(&noise);
            input.extend(b"\r\n\r\n");
            let mut out = Vec::new();
            let _ = parse_response(&input, head_request, &mut out);
        }
    }

    fn client_head(upstream: &[u8], head_request: bool) -> (String, Response) {
        let mut out = Vec::new();
        let r = parse_response(upstream, head_request, &mut out)
            .unwrap()
            .unwrap();
        (String::from_utf8(out).unwrap(), r)
    }

    #[test]
    fn response_hop_by_hop_headers_are_removed_and_framing_found() {
        let (head, r) = client_head(
            b"HTTP/1.1 200 OK\r\nConnection: close, X-Private\r\nX-Private: 1\r\nKeep-Alive: timeout=5\r\nContent-Length: 5\r\nDate: Wed, 25 Nov 2026 10:00:00 GMT\r\n\r\nhello",
            false,
        );
        assert_eq!(
            head,
            "HTTP/1.1 200 OK\r\nDate: Wed, 25 Nov 2026 10:00:00 GMT\r\nContent-Length: 5\r\n"
        );
        assert_eq!(r.framing, Framing::Length(5));
        assert!(!r.reusable, "the upstream said close");
    }

    #[test]
    fn response_framing_headers_survive_and_go_out_once() {
        // A Connection header cannot unframe the response it comes with.
        let (head, r) = client_head(
            b"HTTP/1.1 200 OK\r\nConnection: Content-Length, Transfer-Encoding\r\nContent-Length: 2\r\n\r\nok",
            false,
        );
        assert_eq!(r.framing, Framing::Length(2));
        assert!(head.contains("Content-Length: 2\r\n"), "{head}");
        let (head, r) = client_head(
            b"HTTP/1.1 200 OK\r\nConnection: transfer-encoding\r\nTransfer-Encoding: chunked\r\n\r\n",
            false,
        );
        assert_eq!(r.framing, Framing::Chunked);
        assert!(head.contains("Transfer-Encoding: chunked\r\n"), "{head}");
        // Equal lengths are one length.
        let (head, _) = client_head(
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 05\r\n\r\n",
            false,
        );
        assert_eq!(head.matches("Content-Length").count(), 1, "{head}");
        assert!(head.contains("Content-Length: 5\r\n"), "{head}");
        // 150 Set-Cookie fields are within the limit.
        let mut many = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n".to_vec();
        for i in 0..150 {
            many.extend(format!("Set-Cookie: c{i}=1\r\n").bytes());
        }
        many.extend(b"\r\n");
        let (head, _) = client_head(&many, false);
        assert_eq!(head.matches("Set-Cookie").count(), 150);
    }

    #[test]
    fn framing_follows_rfc_9112() {
        let framing = |head: &[u8], head_request| client_head(head, head_request).1.framing;
        let (_, both) = client_head(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
            false,
        );
        assert_eq!(both.framing, Framing::Chunked);
        assert!(
            !both.reusable,
            "both framings: the connection is not reused"
        );
        assert_eq!(
            framing(
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
                false
            ),
            Framing::UntilClose
        );
        assert_eq!(
            framing(b"HTTP/1.1 200 OK\r\n\r\n", false),
            Framing::UntilClose
        );
        assert_eq!(
            framing(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n", true),
            Framing::Empty
        );
        assert_eq!(
            framing(
                b"HTTP/1.1 304 Not Modified\r\nContent-Length: 9\r\n\r\n",
                false
            ),
            Framing::Empty
        );
        let (head, r) = client_head(b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\n", false);
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n"));
        assert!(head.contains("Date: "), "a Date is added when missing");
        assert!(!r.reusable, "HTTP/1.0 without keep-alive");
    }

    #[test]
    fn bad_response_heads_are_errors() {
        let mut out = Vec::new();
        for bad in [
            &b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: +1\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 1, 1\r\n\r\n",
            b"HTTP/1.1 101 Switching Protocols\r\n\r\n",
            b"NOT HTTP\r\n\r\n",
        ] {
            assert!(parse_response(bad, false, &mut out).is_err(), "{bad:?}");
        }
        assert!(
            parse_response(b"HTTP/1.1 200 OK\r\nContent-", false, &mut out)
                .unwrap()
                .is_none()
        );
    }
}

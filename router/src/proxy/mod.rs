//! The Pingora `ProxyHttp` implementation: pick the route by host, forward, explain failures.
//! Which route, which redirect and which `X-Forwarded-*` are the routing policy's (`policy`),
//! the same the HTTP/1.1 front applies.
//!
//! ```text
//! request ─▶ request_filter ── own Via entry ───────▶ 508
//!              │               no Host ─────────────▶ 400
//!              │  policy.decide(host) ─ no route ───▶ 404 (lists known routes)
//!              │                      ─ redirect ───▶ 308 to https://
//!              ▼
//!            upstream_peer ─▶ prepared HttpPeer (address tried last time first)
//!              │  connect fails ─▶ fail_to_connect: next address, if any
//!              ▼
//!            upstream_request_filter: origin-form URI, Via, policy.forwarded: X-Forwarded-*
//!              ▼
//!            response ─▶ client         errors ─▶ fail_to_proxy: 502/504 naming route + target
//! ```

mod answer;
mod upstream_request;

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;
use async_trait::async_trait;
use http::header;
use ipnet::IpNet;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::HttpPeer;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::{Error as PError, ErrorSource, ErrorType, Result as PResult};

use self::answer::{redirect_https, send_page};
use crate::inspect::{short_error, Exchange, Inspector, Protocol};
use crate::message;
use crate::pages::{self, Page};
use crate::policy::{Decision, RoutingPolicy};
use crate::{Route, RouteTable};

/// Per-request state.
pub struct RequestCtx {
    route: Option<Arc<Route>>,
    /// Connect attempts that failed so far.
    attempt: usize,
    /// Index of the address being tried.
    peer_index: usize,
    /// When the request's head was read (the context is made then).
    started: Instant,
    /// When the first upstream connection was asked for.
    upstream_started: Option<Instant>,
    /// From then to the upstream's response head.
    upstream_duration: Option<Duration>,
    /// The bodies kept for the inspector (its limit, the request's, the response's), for the
    /// routes whose bodies it keeps.
    bodies: Option<(usize, Vec<u8>, Vec<u8>)>,
}

impl Default for RequestCtx {
    fn default() -> Self {
        RequestCtx {
            route: None,
            attempt: 0,
            peer_index: 0,
            started: Instant::now(),
            upstream_started: None,
            upstream_duration: None,
            bodies: None,
        }
    }
}

/// Host-based reverse proxy over a shared, atomically swapped [`RouteTable`]. Its routing
/// policy is the HTTP/1.1 front's too (`policy`), so both fronts route alike.
#[derive(Clone)]
pub struct HostRouter {
    policy: RoutingPolicy,
}

impl HostRouter {
    /// A proxy that reads `routes` on every request. Clients whose address is in
    /// `trusted_proxies` may pass their own `X-Forwarded-*` headers, which are then extended;
    /// everyone else's are replaced. `https_port` is where redirects to HTTPS point.
    pub fn new(
        routes: Arc<ArcSwap<RouteTable>>,
        trusted_proxies: Vec<IpNet>,
        https_port: Option<u16>,
    ) -> Self {
        HostRouter {
            policy: RoutingPolicy::new(routes, trusted_proxies, https_port),
        }
    }

    /// The same proxy, recording every request it (or the HTTP/1.1 front sharing its policy)
    /// answers in `inspector`.
    pub fn with_inspector(mut self, inspector: Arc<Inspector>) -> Self {
        self.policy = self.policy.with_inspector(inspector);
        self
    }

    /// The same proxy, serving `own` routes (names the daemon serves itself, such as the
    /// dashboard's) where the route table has none.
    pub fn with_own_routes(mut self, own: RouteTable) -> Self {
        self.policy = self.policy.with_own_routes(Arc::new(own));
        self
    }

    /// The routing policy this proxy applies, for the HTTP/1.1 front to apply the same.
    pub(crate) fn policy(&self) -> &RoutingPolicy {
        &self.policy
    }
}

impl HostRouter {
    /// Records a request the pipeline answered with `status` (0: none), failed with `e`.
    fn record(&self, session: &Session, e: Option<&PError>, ctx: &RequestCtx, status: u16) {
        let inspector = self.policy.inspector();
        // Made whole before the lock every request takes.
        let mut r = Exchange::default();
        r.route = ctx.route.clone();
        r.status = status;
        r.duration = ctx.started.elapsed();
        r.upstream_duration = ctx.upstream_duration;
        r.upstream_failed = e.is_some_and(|e| *e.esource() == ErrorSource::Upstream);
        r.error = e.map(|e| short_error(&e.to_string()));
        if inspector.keeps_requests() {
            r.time = SystemTime::now()
                .checked_sub(r.duration)
                .unwrap_or(SystemTime::UNIX_EPOCH);
            let req = session.req_header();
            r.protocol = match req.version {
                http::Version::HTTP_2 => Protocol::Http2,
                http::Version::HTTP_10 | http::Version::HTTP_09 => Protocol::Http10,
                _ => Protocol::Http11,
            };
            r.tls = is_tls(session);
            r.client = session
                .client_addr()
                .and_then(|a| a.as_inet())
                .map(|a| a.ip());
            let target = req.uri.to_string();
            let headers = req.headers.iter().map(|(n, v)| (n.as_str(), v.as_bytes()));
            r.write_request_head(req.method.as_str(), &target, headers);
            r.request_bytes = (r.request_head_len() + session.body_bytes_read()) as u64;
            if let Some(resp) = session.response_written() {
                let headers = resp.headers.iter().map(|(n, v)| (n.as_str(), v.as_bytes()));
                r.write_response_head(resp.status.as_u16(), headers);
                r.response_bytes = (r.response_head_len() + session.body_bytes_sent()) as u64;
            }
        }
        if let Some((limit, request, response)) = &ctx.bodies {
            r.set_bodies(request, response, *limit);
        }
        inspector.record_made(r);
    }
}

/// Appends `bytes` to `kept` up to `limit` bytes and one more (which says it was cut).
fn keep_body(kept: &mut Vec<u8>, bytes: &[u8], limit: usize) {
    let room = (limit + 1).saturating_sub(kept.len());
    kept.extend_from_slice(&bytes[..bytes.len().min(room)]);
}

/// The host a request is for: the URI authority (absolute-form or HTTP/2) or the Host header.
fn request_authority(req: &RequestHeader) -> Option<&str> {
    if let Some(a) = req.uri.authority() {
        return Some(a.as_str());
    }
    req.headers.get(header::HOST).and_then(|v| v.to_str().ok())
}

fn is_tls(session: &Session) -> bool {
    session.digest().is_some_and(|d| d.ssl_digest.is_some())
}

#[async_trait]
impl ProxyHttp for HostRouter {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> RequestCtx {
        RequestCtx::default()
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> PResult<bool> {
        // Every HTTP/1 head passed the HTTP/1.1 front's gate (`message`) before it got here, loops
        // included; HTTP/2 requests come straight from Pingora's codec, which checks framing,
        // but a loop through another proxy can arrive over HTTP/2 too.
        let looped = self.policy.passed_here(
            session
                .req_header()
                .headers
                .get_all(header::VIA)
                .iter()
                .map(|v| v.as_bytes()),
        );
        if looped {
            let host = request_authority(session.req_header())
                .unwrap_or_default()
                .to_string();
            send_page(session, Page::Loop { host }).await?;
            return Ok(true);
        }
        let Some(authority) = request_authority(session.req_header()) else {
            send_page(session, Page::MissingHost).await?;
            return Ok(true);
        };
        match self.policy.decide(authority, is_tls(session)) {
            Decision::Forward(route) => {
                ctx.bodies = self
                    .policy
                    .inspector()
                    .body_limit(&route)
                    .map(|limit| (limit, Vec::new(), Vec::new()));
                ctx.route = Some(route);
                Ok(false)
            }
            Decision::RedirectHttps { route, port } => {
                redirect_https(session, route.host().as_str(), port).await?;
                Ok(true)
            }
            Decision::NoRoute => {
                let page = self.policy.no_route_page(authority);
                send_page(session, page).await?;
                Ok(true)
            }
            Decision::Unavailable(u) => {
                let page = Page::Unavailable {
                    host: u.host().to_string(),
                    reason: u.reason().to_string(),
                };
                send_page(session, page).await?;
                Ok(true)
            }
        }
    }

    async fn upstream_peer(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> PResult<Box<HttpPeer>> {
        let route = ctx
            .route
            .as_ref()
            .ok_or_else(|| PError::explain(ErrorType::InternalError, "no route selected"))?;
        ctx.upstream_started.get_or_insert_with(Instant::now);
        match route.upstream().peer(ctx.attempt) {
            Some((index, peer)) => {
                ctx.peer_index = index;
                let mut peer = Box::new(peer.clone());
                if session.is_upgrade_req() {
                    // A WebSocket may stay quiet for as long as its peers like.
                    peer.options.read_timeout = None;
                    peer.options.write_timeout = None;
                }
                Ok(peer)
            }
            None => Err(PError::explain(
                ErrorType::ConnectNoRoute,
                "the target's host name did not resolve to any address",
            )
            .into_up()),
        }
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut RequestCtx,
        mut e: Box<PError>,
    ) -> Box<PError> {
        ctx.attempt += 1;
        let more = ctx
            .route
            .as_ref()
            .is_some_and(|r| ctx.attempt < r.upstream().peer_count());
        if more {
            e.set_retry(true);
        }
        e
    }

    async fn connected_to_upstream(
        &self,
        _session: &mut Session,
        _reused: bool,
        _peer: &HttpPeer,
        _fd: std::os::unix::io::RawFd,
        _digest: Option<&pingora::protocols::Digest>,
        ctx: &mut RequestCtx,
    ) -> PResult<()> {
        if ctx.attempt > 0 {
            if let Some(route) = &ctx.route {
                route.upstream().prefer(ctx.peer_index);
            }
        }
        Ok(())
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        req: &mut RequestHeader,
        _ctx: &mut RequestCtx,
    ) -> PResult<()> {
        upstream_request::rewrite_for_upstream(&self.policy, session, is_tls(session), req)
    }

    async fn request_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<bytes::Bytes>,
        _end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> PResult<()> {
        // An HTTP/2 client ends a body of unknown length with an empty DATA frame; Pingora
        // writes an empty piece of a chunked upstream body as a zero-size chunk, which is the
        // chunked terminator, then its own terminator after it: the upstream would read a stray
        // `0\r\n\r\n` as the start of a next request on its connection. Nothing to send.
        if body.as_ref().is_some_and(|b| b.is_empty()) {
            *body = None;
        }
        if let (Some((limit, kept, _)), Some(b)) = (&mut ctx.bodies, body.as_ref()) {
            keep_body(kept, b, *limit);
        }
        Ok(())
    }

    fn response_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<bytes::Bytes>,
        _end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> PResult<Option<Duration>> {
        if let (Some((limit, _, kept)), Some(b)) = (&mut ctx.bodies, body.as_ref()) {
            keep_body(kept, b, *limit);
        }
        Ok(None)
    }

    async fn upstream_response_filter(
        &self,
        session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> PResult<()> {
        if let Some(sent) = ctx.upstream_started {
            ctx.upstream_duration.get_or_insert_with(|| sent.elapsed());
        }
        // A switch nobody asked for would turn the connection into a raw tunnel to whatever
        // the upstream sends next; the HTTP/1.1 front refuses it too.
        if upstream_response.status.as_u16() == 101 && !session.is_upgrade_req() {
            return Err(PError::explain(
                ErrorType::InvalidHTTPHeader,
                "101 Switching Protocols to a request without Upgrade",
            )
            .into_up());
        }
        // Our version, as the HTTP/1.1 front answers: relaying an HTTP/1.0 upstream's status line
        // makes clients fall back to HTTP/1.0 for their next request.
        if upstream_response.version == http::Version::HTTP_10 {
            upstream_response.set_version(http::Version::HTTP_11);
        }
        // The HTTP/1.1 front's response head limit, in the pipeline too.
        let head: usize = upstream_response
            .headers
            .iter()
            .map(|(n, v)| n.as_str().len() + v.len() + 4)
            .sum();
        if head > message::MAX_HEAD {
            return Err(PError::explain(
                ErrorType::InvalidHTTPHeader,
                "the response head is larger than 64 KiB",
            )
            .into_up());
        }
        // A transfer coding other than chunked last means "until close" (RFC 9112 6.3); as a
        // header relayed on a kept-alive connection it would leave the client unable to tell
        // where the body ends. Without it, Pingora frames the body for the client itself.
        let unframed = upstream_response
            .headers
            .get_all(header::TRANSFER_ENCODING)
            .iter()
            .next_back()
            .is_some_and(|v| {
                !message::tokens(v.as_bytes())
                    .last()
                    .is_some_and(|t| t.eq_ignore_ascii_case(b"chunked"))
            });
        if unframed {
            upstream_response.remove_header(&header::TRANSFER_ENCODING);
        }
        // A 204 is never framed (RFC 9110 8.6, RFC 9112 6.1), as the HTTP/1.1 front sends it.
        if upstream_response.status.as_u16() == 204 {
            upstream_response.remove_header(&header::TRANSFER_ENCODING);
            upstream_response.remove_header(&header::CONTENT_LENGTH);
        }
        // Headers the upstream's Connection names, Keep-Alive and Proxy-Connection describe its
        // connection to us, not the message (RFC 9110 7.6.1): the HTTP/1.1 front drops them
        // too. Framing headers are never dropped this way; Pingora writes its own Connection.
        // A 101's `Connection: Upgrade` and `Upgrade` are the switch itself: relayed as they are.
        if upstream_response.status.as_u16() == 101 {
            return Ok(());
        }
        let named: Vec<String> = upstream_response
            .headers
            .get_all(header::CONNECTION)
            .iter()
            .flat_map(|v| message::tokens(v.as_bytes()))
            .filter_map(|t| std::str::from_utf8(t).ok())
            .map(str::to_ascii_lowercase)
            .filter(|n| !message::is_protected(n) && n != "connection")
            .collect();
        for name in named
            .iter()
            .map(String::as_str)
            .chain(["keep-alive", "proxy-connection"])
        {
            upstream_response.remove_header(name);
        }
        Ok(())
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &PError,
        ctx: &mut RequestCtx,
    ) -> FailToProxy
    where
        RequestCtx: Send + Sync,
    {
        let status = match (e.esource(), e.etype()) {
            (_, ErrorType::HTTPStatus(code)) => *code,
            (ErrorSource::Upstream, etype) => pages::upstream_status(etype),
            (ErrorSource::Downstream, ErrorType::WriteError | ErrorType::ReadError)
            | (ErrorSource::Downstream, ErrorType::ConnectionClosed) => 0,
            (ErrorSource::Downstream, _) => 400,
            _ => 500,
        };
        // Once the response has started, the only honest answer is to cut it.
        let status = if session.response_written().is_some() {
            0
        } else {
            status
        };
        let written = match (&ctx.route, status) {
            (Some(route), 502 | 504) => {
                send_page(session, Page::upstream_failed(status, route, e)).await
            }
            (_, 0) => Ok(()),
            _ => session.respond_error(status).await,
        };
        if let Err(err) = written {
            tracing::debug!(error = %err, "could not send the error response");
        }
        FailToProxy {
            error_code: status,
            can_reuse_downstream: false,
        }
    }

    async fn logging(&self, session: &mut Session, e: Option<&PError>, ctx: &mut RequestCtx) {
        let status = session.response_written().map_or(0, |r| r.status.as_u16());
        let host = ctx.route.as_ref().map(|r| r.host().as_str());
        if let Some(e) = e {
            if *e.esource() == ErrorSource::Upstream {
                RoutingPolicy::log_upstream_failure(ctx.route.as_deref(), status, e);
            } else {
                tracing::debug!(host, status, error = %e, "request failed");
            }
        }
        if RoutingPolicy::access_log_enabled() {
            let req = session.req_header();
            RoutingPolicy::log_access(&req.method, &req.uri, host, status);
        }
        self.record(session, e, ctx, status);
    }
}

//! The fast path: HTTP/1 requests without a body or an upgrade, to plain-HTTP upstreams, are
//! forwarded here in the request's own task, in order: an idle connection from the route's own
//! pool (or a new one), the request header out, the response header and body back.
//!
//! Pingora's full pipeline runs the two directions as two tasks joined through channels and
//! watches every pooled connection with a task of its own: the right shape for bodies,
//! WebSocket and HTTP/2, and most of its per-request cost on small requests. Requests with a
//! body, upgrades, HTTP/2 clients and `https://` upstreams still take that pipeline.
//!
//! The pool lives in the [`Upstream`], so connections never outlive or cross a route change
//! (as Pingora's `group_key` ensures on the other path). An idle connection the upstream has
//! closed is found when it is reused: a request that got no response byte on a reused
//! connection is sent again once, on a new one.

use std::net::SocketAddr;

use bytes::Bytes;
use http::header::{self, HeaderName};
use http::Version;
use pingora::http::RequestHeader;
use pingora::protocols::http::v1::client::HttpSession as UpstreamSession;
use pingora::protocols::l4::stream::Stream as TcpStreamWrapper;
use pingora::proxy::Session;
use pingora::{Error as PError, ErrorType, Result as PResult};

use crate::upstream::{Scheme, Upstream};

/// Hop-by-hop headers (RFC 9110 7.6.1): they describe one connection, not the request.
const HOP_BY_HOP: [&str; 7] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Whether the request can take the fast path.
pub(crate) fn eligible(req: &RequestHeader, upstream: &Upstream) -> bool {
    let h = &req.headers;
    upstream.spec().scheme() == Scheme::Http
        && matches!(req.version, Version::HTTP_11 | Version::HTTP_10)
        && req.method != http::Method::CONNECT
        // In HTTP/1 a request without Content-Length and Transfer-Encoding has no body.
        && h.get(header::CONTENT_LENGTH).is_none_or(|v| v.as_bytes() == b"0")
        && !h.contains_key(header::TRANSFER_ENCODING)
        && !h.contains_key(header::UPGRADE)
        && !h.contains_key(header::EXPECT)
}

/// Removes the hop-by-hop headers and those the `Connection` header names.
pub(crate) fn strip_hop_by_hop(headers: &mut RequestHeader) {
    let named: Vec<HeaderName> = headers
        .headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for n in named {
        headers.remove_header(&n);
    }
    for n in HOP_BY_HOP {
        headers.remove_header(n);
    }
}

/// Forwards `req` (already rewritten for the upstream) and streams the answer to the client.
/// Errors before the response header reached the client are answered by the caller's error
/// page; later ones cut the response, as any proxy must.
pub(crate) async fn forward(
    session: &mut Session,
    upstream: &Upstream,
    mut req_header: Box<RequestHeader>,
) -> PResult<()> {
    req_header.set_version(Version::HTTP_11);
    let mut req = Some(req_header);
    let mut fresh_only = false;
    let (mut client, index) = loop {
        let idle = if fresh_only {
            None
        } else {
            upstream.take_idle()
        };
        let reused = idle.is_some();
        let (index, stream) = match idle {
            Some(c) => c,
            None => connect(upstream).await?,
        };
        let mut client = UpstreamSession::new(stream);
        // Keep a copy only when a stale connection may make us send it again.
        let sent = match (&mut req, reused) {
            (Some(r), true) => r.clone(),
            (r, false) => r.take().expect("sent at most once on a new connection"),
            (None, true) => unreachable!("a reused connection is only tried first"),
        };
        let exchanged = async {
            client.write_request_header(sent).await?;
            client.read_response().await
        }
        .await;
        match exchanged {
            Ok(_) => break (client, index),
            Err(e) if reused => {
                // Closed while idle: so are its idle siblings, most likely.
                tracing::debug!(error = %e, "a pooled upstream connection was closed; retrying on a new one");
                upstream.clear_idle();
                fresh_only = true;
            }
            Err(e) => return Err(e.into_up()),
        }
    };
    // Informational answers (103 Early Hints) go on to the client; then the final one.
    while client
        .get_status()
        .is_some_and(|s| s.is_informational() && s.as_u16() != 101)
    {
        let info = Box::new(client.resp_header().expect("read").clone());
        session.write_response_header(info, false).await?;
        client.read_response().await.map_err(|e| e.into_up())?;
    }
    let mut resp = Box::new(client.resp_header().expect("read").clone());
    // Connection management is per hop: the client's connection has its own.
    resp.remove_header(&header::CONNECTION);
    resp.remove_header("keep-alive");
    session.write_response_header(resp, false).await?;
    while let Some(chunk) = client.read_body_bytes().await.map_err(|e| e.into_up())? {
        session.write_response_body(Some(chunk), false).await?;
    }
    session.write_response_body(None::<Bytes>, true).await?;
    client.respect_keepalive();
    if let Some(stream) = client.reuse().await {
        upstream.put_idle(index, stream);
    }
    Ok(())
}

/// A new connection to the upstream: its addresses from the preferred one on, each within
/// the connect timeout.
async fn connect(upstream: &Upstream) -> PResult<(usize, pingora::protocols::Stream)> {
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
                let stream: pingora::protocols::Stream = Box::new(TcpStreamWrapper::from(tcp));
                return Ok((index, stream));
            }
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| {
        PError::explain(
            ErrorType::ConnectNoRoute,
            "the target's host name did not resolve to any address",
        )
        .into_up()
    }))
}

async fn try_connect(
    addr: SocketAddr,
    timeout: std::time::Duration,
) -> PResult<tokio::net::TcpStream> {
    let tcp = match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(addr)).await {
        Ok(Ok(tcp)) => tcp,
        Ok(Err(e)) => {
            let etype = match e.kind() {
                std::io::ErrorKind::ConnectionRefused => ErrorType::ConnectRefused,
                _ => ErrorType::ConnectError,
            };
            return Err(PError::because(etype, format!("connecting to {addr}"), e).into_up());
        }
        Err(_) => {
            return Err(PError::explain(
                ErrorType::ConnectTimedout,
                format!("connecting to {addr}"),
            )
            .into_up())
        }
    };
    // Small requests and answers: do not wait to fill a segment.
    let _ = tcp.set_nodelay(true);
    Ok(tcp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_and_those_named_by_connection_are_removed() {
        let mut req = RequestHeader::build("GET", b"/", None).unwrap();
        req.insert_header("connection", "close, x-private").unwrap();
        req.insert_header("x-private", "1").unwrap();
        req.insert_header("keep-alive", "timeout=5").unwrap();
        req.insert_header("te", "trailers").unwrap();
        req.insert_header("accept", "*/*").unwrap();
        strip_hop_by_hop(&mut req);
        let left: Vec<&str> = req.headers.keys().map(|k| k.as_str()).collect();
        assert_eq!(left, ["accept"]);
    }
}

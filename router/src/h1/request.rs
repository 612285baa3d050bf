//! Sans-io: the request head at the start of a client connection's buffer, parsed (httparse,
//! in place), checked (`message`: one framing rule for every HTTP/1 request, whichever front
//! serves it; the `Via` loop check), decided (this front forwards it, or lends it to Pingora's
//! pipeline) and, for a request forwarded here, written out as the upstream request in one
//! pass: hop-by-hop headers out, `X-Forwarded-*` and `Via` in (`policy`), header case kept,
//! the body (read whole first) after the head.
//!
//! A request is forwarded here when it is HTTP/1.1 in origin form with one Host header, has no
//! body or a `Content-Length` one of at most 64 KiB (no `Transfer-Encoding`), asks for no
//! upgrade and no `100-continue`, and its route goes to an `http://` target without an HTTPS
//! redirect to make.

use std::net::IpAddr;
use std::sync::Arc;

use crate::lent::RequestEnd;
use crate::message::{
    self, named_by_connection, put_header, tokens, HOP_BY_HOP, MAX_HEAD, MAX_HEADERS,
};
use crate::pages::Page;
use crate::policy::{Decision, Incoming, Rewrite, RoutingPolicy};
use crate::upstream::Scheme;
use crate::Route;

/// Request bodies (with a Content-Length) up to this size are read whole and forwarded here;
/// larger ones stream through Pingora.
pub(crate) const MAX_BODY: usize = 64 * 1024;

/// How the HTTP/1.1 front reads requests: the routing policy (the pipeline's own), and whether
/// it forwards simple requests itself.
#[derive(Clone)]
pub(crate) struct RequestRules {
    pub(crate) policy: RoutingPolicy,
    /// Forward simple requests here; when off, every request is checked here and served by
    /// the pipeline.
    pub(crate) forwards: bool,
}

/// A request this front forwards, already written out (head and body) for the upstream.
pub(crate) struct Prepared {
    /// Bytes of the client's buffer it takes (head and body).
    pub(crate) len: usize,
    /// Bytes of its head.
    pub(crate) head_len: usize,
    /// It may be sent again if a pooled connection turns out closed (RFC 9110 9.2.2).
    pub(crate) idempotent: bool,
    pub(crate) route: Arc<Route>,
    pub(crate) head_request: bool,
    pub(crate) client_close: bool,
    pub(crate) wants_html: bool,
    /// Method and target, kept only while the access log is on.
    pub(crate) access: Option<(Box<str>, Box<str>)>,
}

/// What becomes of the request at the start of the buffer.
pub(crate) enum Parsed {
    /// Its head is not complete yet (and within the 64 KiB a head may take).
    Partial,
    /// Refused with this page, and the connection closed.
    Refuse(Page),
    /// The head is complete, its body not yet: the request takes this many bytes in all.
    AwaitBody(usize),
    /// Forwarded by this front; the upstream request is written out.
    Forward(Prepared),
    /// Lent to Pingora's pipeline, for the request that ends there (the connection's next
    /// request is read here again).
    HandOver(RequestEnd),
}

impl RequestRules {
    /// Parses the request head at the start of `buf` and, if this front forwards it, writes the
    /// upstream request into `out`.
    pub(crate) fn prepare(
        &self,
        buf: &[u8],
        peer: Option<IpAddr>,
        tls: bool,
        out: &mut Vec<u8>,
    ) -> Parsed {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut req = httparse::Request::new(&mut headers);
        let head_len = match req.parse(buf) {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) if buf.len() >= MAX_HEAD => {
                return Parsed::Refuse(Page::BadRequest(message::Refusal {
                    status: 431,
                    reason: "the request head is larger than 64 KiB",
                }))
            }
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
            return Parsed::HandOver(RequestEnd::Open);
        };
        // One framing rule for every HTTP/1 request, whichever front serves it.
        let body =
            match message::check_request(version, req.headers.iter().map(|h| (h.name, h.value))) {
                Ok(body) => body,
                Err(refusal) => return Parsed::Refuse(Page::BadRequest(refusal)),
            };
        if let Err(refusal) = message::check_target(method, path) {
            return Parsed::Refuse(Page::BadRequest(refusal));
        }
        let via = req
            .headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case("via"));
        if self.policy.passed_here(via.map(|h| h.value)) {
            let host = req
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case("host"));
            let host = host.map(|h| String::from_utf8_lossy(h.value).into_owned());
            return Parsed::Refuse(Page::Loop {
                host: host.unwrap_or_default(),
            });
        }
        // Where the request ends, for a pipeline it is lent to: the next one is read here.
        let end = if method == "CONNECT"
            || req
                .headers
                .iter()
                .any(|h| h.name.eq_ignore_ascii_case("upgrade"))
        {
            // It may become a tunnel, whose bytes are all the pipeline's.
            RequestEnd::Open
        } else {
            match body {
                message::RequestBody::None => RequestEnd::At(head_len as u64),
                message::RequestBody::Length(n) => RequestEnd::At(head_len as u64 + n),
                message::RequestBody::Chunked => RequestEnd::Chunked { head: head_len },
            }
        };
        if !self.forwards || version != 1 || method == "CONNECT" || !path.starts_with('/') {
            return Parsed::HandOver(end);
        }
        let body_len = match body {
            message::RequestBody::None => 0,
            message::RequestBody::Length(n) if n <= MAX_BODY as u64 => n as usize,
            // Streamed through the pipeline.
            message::RequestBody::Length(_) | message::RequestBody::Chunked => {
                return Parsed::HandOver(end)
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
                return Parsed::HandOver(end);
            } else if name.eq_ignore_ascii_case("connection") {
                connection = true;
                client_close |= tokens(h.value).any(|t| t.eq_ignore_ascii_case(b"close"));
            } else if name.eq_ignore_ascii_case("accept") {
                wants_html |= h.value.windows(9).any(|w| w == b"text/html");
            } else if name.eq_ignore_ascii_case("x-forwarded-for") {
                // Several lines are one list (RFC 9110 5.3): the pipeline joins them.
                if forwarded_for.is_some() {
                    return Parsed::HandOver(end);
                }
                forwarded_for = Some(h.value);
            } else if name.eq_ignore_ascii_case("x-forwarded-proto") {
                forwarded_proto = true;
            } else if name.eq_ignore_ascii_case("x-forwarded-host") {
                forwarded_host = true;
            }
        }
        let Some(host) = host else {
            return Parsed::HandOver(end);
        };
        if buf.len() < head_len + body_len {
            return Parsed::AwaitBody(head_len + body_len);
        }
        let Ok(authority) = std::str::from_utf8(host) else {
            return Parsed::HandOver(end);
        };
        let policy = &self.policy;
        let route = match policy.decide(authority, tls) {
            Decision::Forward(route) if route.upstream().spec().scheme() == Scheme::Http => route,
            // Redirects, unknown hosts and https:// targets.
            _ => return Parsed::HandOver(end),
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
                || message::is_underscore_alias(name)
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
            head_len,
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
}

#[cfg(test)]
mod tests;

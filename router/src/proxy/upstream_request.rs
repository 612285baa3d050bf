//! The request as the upstream gets it from Pingora's pipeline: origin-form with a Host
//! header, one Cookie header, our `Via` entry, and the `X-Forwarded-*` the routing policy
//! decides (`policy`), the same as the HTTP/1.1 front writes (`h1::request`).

use http::header::{self, HeaderValue};
use pingora::http::RequestHeader;
use pingora::proxy::Session;
use pingora::{Error as PError, ErrorType, Result as PResult};

use crate::message;
use crate::policy::{Incoming, Rewrite, RoutingPolicy};

const X_FORWARDED_FOR: &str = "x-forwarded-for";
const X_FORWARDED_PROTO: &str = "x-forwarded-proto";
const X_FORWARDED_HOST: &str = "x-forwarded-host";

/// The request as the upstream gets it: origin-form with a Host header, and
/// `X-Forwarded-*` set (extended only for trusted proxies). `tls`: the client's connection is
/// encrypted.
pub(super) fn rewrite_for_upstream(
    policy: &RoutingPolicy,
    session: &Session,
    tls: bool,
    req: &mut RequestHeader,
) -> PResult<()> {
    // The host the client asked for, before the URI loses its authority below.
    let requested_host = session
        .req_header()
        .headers
        .get(header::HOST)
        .cloned()
        .or_else(|| {
            req.uri
                .authority()
                .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        });
    // HTTP/2 clients send each cookie as its own field; an HTTP/1.1 upstream expects one
    // Cookie header, joined with "; " (RFC 9113 8.2.3).
    if req.headers.get_all(header::COOKIE).iter().nth(1).is_some() {
        let joined = req
            .headers
            .get_all(header::COOKIE)
            .iter()
            .map(|v| v.as_bytes())
            .collect::<Vec<_>>()
            .join(&b"; "[..]);
        let joined = HeaderValue::from_bytes(&joined)
            .map_err(|_| PError::explain(ErrorType::InvalidHTTPHeader, "bad Cookie"))?;
        req.insert_header(header::COOKIE, joined)?;
    }
    // `Transfer_Encoding`, `X_Forwarded_For`: read as the real fields by CGI-style servers
    // (`message::is_underscore_alias`); HTTP/2 clients may send them too.
    let aliases: Vec<_> = req
        .headers
        .keys()
        .filter(|name| message::is_underscore_alias(name.as_str()))
        .cloned()
        .collect();
    for name in aliases {
        req.remove_header(&name);
    }
    req.append_header(header::VIA, policy.via())?;
    // Absolute-form over HTTP/1 (`GET http://api.test/a HTTP/1.1`): Pingora keeps the target
    // as sent for the wire and only its path and query in the URI (its authority equals the
    // Host header, or it was refused): the upstream gets origin-form, as nginx sends it.
    if !matches!(req.raw_path().first(), Some(b'/' | b'*')) && req.method != http::Method::CONNECT {
        let origin = req.uri.clone();
        req.set_uri(origin);
    }
    // HTTP/2 (`:authority`): the HTTP/1.1 upstream expects origin-form and a Host header.
    if req.uri.authority().is_some() {
        let authority = req.uri.authority().map(|a| a.as_str().to_string());
        let path = req
            .uri
            .path_and_query()
            .map_or_else(|| "/".to_string(), |p| p.as_str().to_string());
        let uri = path
            .parse()
            .map_err(|_| PError::explain(ErrorType::InvalidHTTPHeader, "bad request URI"))?;
        req.set_uri(uri);
        if let Some(a) = authority {
            req.insert_header(header::HOST, a)?;
        }
    }

    let client_ip = session
        .client_addr()
        .and_then(|a| a.as_inet())
        .map(|a| a.ip());
    // Several X-Forwarded-For lines are one list (RFC 9110 5.3), in order: a trusted proxy
    // that adds its own line after a client's must not lose the hop nearest us.
    let chain = {
        let mut lines = req.headers.get_all(X_FORWARDED_FOR).iter();
        lines.next().map(|first| {
            let mut v = first.as_bytes().to_vec();
            for more in lines {
                v.extend_from_slice(b", ");
                v.extend_from_slice(more.as_bytes());
            }
            v
        })
    };
    let incoming = Incoming {
        forwarded_for: chain.as_deref(),
        forwarded_proto: req.headers.contains_key(X_FORWARDED_PROTO),
        forwarded_host: req.headers.contains_key(X_FORWARDED_HOST),
        host: requested_host.as_ref().map(|h| h.as_bytes()),
    };
    // Taken out of the borrowed headers before they change.
    let (forwarded_for, proto, host) = {
        let f = policy.forwarded(client_ip, tls, incoming);
        let forwarded_for = f.for_.map(|f| {
            let mut v = Vec::with_capacity(64);
            f.write_to(&mut v);
            v
        });
        (forwarded_for, f.proto, f.host.map(|_| ()))
    };
    match forwarded_for {
        Rewrite::Set(v) => {
            let v = HeaderValue::from_bytes(&v).map_err(|_| {
                PError::explain(ErrorType::InvalidHTTPHeader, "bad X-Forwarded-For")
            })?;
            req.insert_header(X_FORWARDED_FOR, v)?;
        }
        Rewrite::Remove => {
            req.remove_header(X_FORWARDED_FOR);
        }
        Rewrite::Keep => {}
    }
    if let Rewrite::Set(proto) = proto {
        req.insert_header(X_FORWARDED_PROTO, proto)?;
    }
    match (host, requested_host) {
        (Rewrite::Set(()), Some(host)) => req.insert_header(X_FORWARDED_HOST, host)?,
        (Rewrite::Keep, _) => {}
        _ => {
            req.remove_header(X_FORWARDED_HOST);
        }
    }
    Ok(())
}

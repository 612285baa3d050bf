//! The pages itproxy answers with itself: 400, 404 and 502/504, as HTML for browsers and JSON
//! for everything else; Pingora's pipeline sends them through its session, the HTTP/1.1 front
//! as a whole response it writes itself ([`Page::write_h1`]).

use std::io::Write as _;

use serde_json::json;

use crate::message::put_header;

use crate::{RouteTable, Upstream};

/// At most this many routes are listed on a 404 page.
const MAX_LISTED: usize = 100;

/// A route as listed on the 404 page.
pub(crate) struct KnownRoute {
    host: String,
    target: String,
}

pub(crate) fn known_routes(table: &RouteTable) -> (Vec<KnownRoute>, usize) {
    let all = table.routes();
    let total = all.len();
    let listed = all
        .into_iter()
        .take(MAX_LISTED)
        .map(|r| KnownRoute {
            host: r.host().to_string(),
            target: r.upstream().spec().to_string(),
        })
        .collect();
    (listed, total)
}

pub(crate) enum Page {
    MissingHost,
    /// A request head the HTTP/1.1 front refuses (framing, size): 400 or 431.
    BadRequest(crate::message::Refusal),
    /// The request's head did not arrive in time.
    RequestTimeout,
    /// The client holds as many connections as it may.
    TooManyConnections,
    /// The request came back to this itproxy (its own `Via` token).
    Loop {
        host: String,
    },
    NoRoute {
        host: String,
        known: (Vec<KnownRoute>, usize),
    },
    /// The host is a declared app's that is not serving now.
    Unavailable {
        host: String,
        reason: String,
    },
    UpstreamFailed {
        status: u16,
        route: String,
        target: String,
        detail: String,
    },
}

impl Page {
    /// The `status` page (see [`upstream_status`]) for a request on `route` that failed
    /// upstream with `e`.
    pub(crate) fn upstream_failed(status: u16, route: &crate::Route, e: &pingora::Error) -> Page {
        Page::UpstreamFailed {
            status,
            route: route.host().to_string(),
            target: route.upstream().spec().to_string(),
            detail: describe_upstream_error(e, route.upstream()),
        }
    }

    pub(crate) fn status(&self) -> u16 {
        match self {
            Page::MissingHost => 400,
            Page::BadRequest(r) => r.status,
            Page::RequestTimeout => 408,
            Page::TooManyConnections => 503,
            Page::Loop { .. } => 508,
            Page::NoRoute { .. } => 404,
            Page::Unavailable { .. } => 503,
            Page::UpstreamFailed { status, .. } => *status,
        }
    }

    /// `Retry-After` (seconds): a page that says "soon" says when to try again.
    pub(crate) fn retry_after(&self) -> Option<u32> {
        matches!(self, Page::Unavailable { .. }).then_some(1)
    }

    /// One line for the log.
    pub(crate) fn summary(&self) -> String {
        self.message()
    }

    fn message(&self) -> String {
        match self {
            Page::BadRequest(r) => r.reason.to_string(),
            Page::RequestTimeout => {
                "the request head did not arrive in time; the connection is closed".to_string()
            }
            Page::TooManyConnections => "this client address holds as many open connections \
                 as itproxy allows one client (proxy.max_connections_per_client); close some \
                 or raise the limit"
                .to_string(),
            Page::Loop { host } => format!(
                "the request for {host:?} came back to this itproxy: its route leads to itproxy \
                 itself (directly or through another proxy); point it at the service instead"
            ),
            Page::MissingHost => "the request has no Host header (or one that is not a host \
                 name), so itproxy cannot tell which route it is for"
                .to_string(),
            Page::NoRoute { host, .. } => format!(
                "itproxy has no route for host {host:?}; add one with `itproxy route NAME TARGET`"
            ),
            Page::Unavailable { host, reason } => {
                format!("{host} is not being served right now: {reason}")
            }
            Page::UpstreamFailed {
                status: 504,
                route,
                target,
                detail,
            } => {
                format!("route {route} timed out reaching its target {target}: {detail}")
            }
            Page::UpstreamFailed {
                route,
                target,
                detail,
                ..
            } => {
                format!("route {route} could not reach its target {target}: {detail}")
            }
        }
    }

    /// Writes the whole HTTP/1.1 response for this page (head and body, `Connection: close`)
    /// into `out`, as the HTTP/1.1 front sends it: HTML for browsers (`html`), JSON for
    /// everyone else; the head alone for a HEAD request (`head`), with the body's length.
    pub(crate) fn write_h1(&self, html: bool, head: bool, out: &mut Vec<u8>) {
        let (content_type, body) = self.render(html);
        let status = self.status();
        let reason = http::StatusCode::from_u16(status)
            .ok()
            .and_then(|s| s.canonical_reason())
            .unwrap_or("");
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
        if let Some(seconds) = self.retry_after() {
            let _ = write!(out, "Retry-After: {seconds}\r\n");
        }
        out.extend_from_slice(b"Connection: close\r\n\r\n");
        if !head {
            out.extend_from_slice(body.as_bytes());
        }
    }

    /// The content type and body: HTML for browsers (`html`), JSON for everyone else.
    pub(crate) fn render(&self, html: bool) -> (&'static str, String) {
        if html {
            ("text/html; charset=utf-8", self.html())
        } else {
            ("application/json", self.json())
        }
    }

    pub(crate) fn json(&self) -> String {
        let mut v = json!({ "status": self.status(), "message": self.message() });
        match self {
            Page::MissingHost => v["error"] = json!("missing_host"),
            Page::BadRequest(_) => v["error"] = json!("bad_request"),
            Page::RequestTimeout => v["error"] = json!("request_timeout"),
            Page::TooManyConnections => v["error"] = json!("too_many_connections"),
            Page::Loop { host } => {
                v["error"] = json!("loop_detected");
                v["host"] = json!(host);
            }
            Page::Unavailable { host, reason } => {
                v["error"] = json!("app_unavailable");
                v["host"] = json!(host);
                v["reason"] = json!(reason);
            }
            Page::NoRoute {
                host,
                known: (routes, total),
            } => {
                v["error"] = json!("no_route");
                v["host"] = json!(host);
                v["routes"] = routes
                    .iter()
                    .map(|r| json!({ "host": r.host, "target": r.target }))
                    .collect();
                v["route_count"] = json!(total);
            }
            Page::UpstreamFailed {
                status,
                route,
                target,
                detail,
            } => {
                v["error"] = json!(if *status == 504 {
                    "upstream_timeout"
                } else {
                    "bad_gateway"
                });
                v["route"] = json!(route);
                v["target"] = json!(target);
                v["detail"] = json!(detail);
            }
        }
        let mut s = v.to_string();
        s.push('\n');
        s
    }

    pub(crate) fn html(&self) -> String {
        let title = match self.status() {
            400 => "400 Bad Request",
            404 => "404 No Route",
            408 => "408 Request Timeout",
            431 => "431 Request Header Fields Too Large",
            503 => "503 Service Unavailable",
            508 => "508 Loop Detected",
            504 => "504 Gateway Timeout",
            _ => "502 Bad Gateway",
        };
        let mut body = format!(
            "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>{title}</title></head>\n\
             <body style=\"font-family:sans-serif;max-width:50em;margin:2em auto\">\n\
             <h1>{title}</h1>\n<p>{}</p>\n",
            escape(&self.message())
        );
        if let Page::NoRoute {
            known: (routes, total),
            ..
        } = self
        {
            if routes.is_empty() {
                body.push_str("<p>There are no routes yet.</p>\n");
            } else {
                body.push_str("<h2>Known routes</h2>\n<ul>\n");
                for r in routes {
                    let host = escape(&r.host);
                    body.push_str(&format!(
                        "<li><a href=\"//{host}/\">{host}</a> &rarr; {}</li>\n",
                        escape(&r.target)
                    ));
                }
                if *total > routes.len() {
                    body.push_str(&format!("<li>... and {} more</li>\n", total - routes.len()));
                }
                body.push_str("</ul>\n");
            }
        }
        body.push_str("<hr><p><small>itproxy</small></p>\n</body></html>\n");
        body
    }
}

fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// The status for a request that failed upstream: 504 for a timeout, 502 otherwise.
pub(crate) fn upstream_status(e: &pingora::ErrorType) -> u16 {
    use pingora::ErrorType::*;
    match e {
        ConnectTimedout | ReadTimedout | WriteTimedout | TLSHandshakeTimedout => 504,
        _ => 502,
    }
}

/// A short explanation of why the upstream could not be used, for the 502/504 page.
pub(crate) fn describe_upstream_error(e: &pingora::Error, upstream: &Upstream) -> String {
    use pingora::ErrorType::*;
    let addrs: Vec<String> = upstream.addrs().map(|a| a.to_string()).collect();
    let addrs = addrs.join(", ");
    match e.etype() {
        ConnectRefused => format!("connection refused by {addrs}; is the service running?"),
        ConnectTimedout => format!("no answer to the connection attempt at {addrs}"),
        ConnectNoRoute if addrs.is_empty() => {
            "the target's host name did not resolve to any address".to_string()
        }
        ConnectNoRoute => format!("no route to {addrs}"),
        ReadTimedout | WriteTimedout => "the upstream stopped responding".to_string(),
        TLSHandshakeFailure | InvalidCert | HandshakeError => {
            format!("TLS handshake with the upstream failed: {e}")
        }
        ConnectionClosed | ReadError | WriteError => {
            "the upstream closed the connection before sending a complete response".to_string()
        }
        InvalidHTTPHeader | H1Error | H2Error | InvalidH2 => {
            "the upstream sent an invalid HTTP response".to_string()
        }
        _ => e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_route_page_escapes_the_requested_host() {
        let p = Page::NoRoute {
            host: "<script>".into(),
            known: (vec![], 0),
        };
        assert!(p.html().contains("&lt;script&gt;"));
        assert!(!p.html().contains("<script>"));
        let v: serde_json::Value = serde_json::from_str(&p.json()).unwrap();
        assert_eq!(v["host"], "<script>");
        assert_eq!(v["status"], 404);
    }

    #[test]
    fn an_h1_page_is_one_closing_response() {
        let mut out = Vec::new();
        Page::RequestTimeout.write_h1(false, false, &mut out);
        let text = String::from_utf8(out).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(
            head.starts_with("HTTP/1.1 408 Request Timeout\r\n"),
            "{head}"
        );
        assert!(
            head.contains("\r\nContent-Type: application/json\r\n"),
            "{head}"
        );
        assert!(head.contains(&format!("\r\nContent-Length: {}\r\n", body.len())));
        assert!(head.ends_with("\r\nConnection: close"), "{head}");
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(v["status"], 408);
    }

    #[test]
    fn upstream_failed_names_route_and_target() {
        let p = Page::UpstreamFailed {
            status: 502,
            route: "api.test".into(),
            target: "http://localhost:1".into(),
            detail: "connection refused".into(),
        };
        let v: serde_json::Value = serde_json::from_str(&p.json()).unwrap();
        assert_eq!(v["route"], "api.test");
        assert_eq!(v["target"], "http://localhost:1");
        assert!(p.html().contains("api.test"));
    }
}

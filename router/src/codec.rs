//! The HTTP/1.1 front's sans-io steps, as a small public API: what it does with a client's
//! request head, with an upstream's response head, and with a chunked body, on bytes alone (no
//! socket, no clock, no runtime). The criterion benchmarks and the fuzz targets call it, and
//! so can anyone who wants to know what the front would make of some bytes.
//!
//! These are the front's own code paths, not copies: a change to what they accept or write is
//! a change to the front. What each call promises is written on it.
//!
//! ```
//! use std::sync::Arc;
//! use arc_swap::ArcSwap;
//! use itproxy_router::codec::{RequestCodec, RequestVerdict};
//! use itproxy_router::{HostName, Route, RouteTable, Upstream, UpstreamSpec};
//!
//! let spec = UpstreamSpec::parse("127.0.0.1:8000").unwrap();
//! let addrs = vec!["127.0.0.1:8000".parse().unwrap()];
//! let upstream = Upstream::new(spec, addrs, 1, &Default::default());
//! let route = Route::new(HostName::parse("api.test").unwrap(), Arc::new(upstream));
//! let routes = Arc::new(ArcSwap::from_pointee(RouteTable::new([route])));
//! let codec = RequestCodec::new(routes, vec![], None);
//!
//! let mut out = Vec::new();
//! let head = b"GET / HTTP/1.1\r\nHost: api.test\r\nConnection: keep-alive\r\n\r\n";
//! let verdict = codec.read(head, "192.0.2.1".parse().unwrap(), false, &mut out);
//! assert_eq!(verdict, RequestVerdict::Forward { len: head.len() });
//! assert!(out.starts_with(b"GET / HTTP/1.1\r\nHost: api.test\r\nX-Forwarded-For: 192.0.2.1\r\n"));
//! ```

use std::net::IpAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;
use ipnet::IpNet;

pub use crate::h1::chunked::{ChunkedEnd, InvalidChunk};
use crate::h1::request::{Parsed, RequestRules};
use crate::h1::response::parse_response;
pub use crate::h1::response::Framing;
use crate::policy::RoutingPolicy;
use crate::RouteTable;

/// The request side of the HTTP/1.1 front, with the routing policy of a [`HostRouter`] built
/// from the same arguments.
///
/// [`HostRouter`]: crate::HostRouter
pub struct RequestCodec {
    rules: RequestRules,
}

/// What the HTTP/1.1 front does with the request at the start of a buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RequestVerdict {
    /// Its head, or the small body read with it, is not complete yet.
    Incomplete,
    /// Refused with this status (400, 431 or 508), and the connection closed.
    Refused(u16),
    /// Lent to Pingora's pipeline (which reads it from the same bytes).
    HandOver,
    /// Forwarded by the front: the upstream request (head and body) is in `out`, and it took
    /// the first `len` bytes of the buffer.
    Forward {
        /// Bytes of the buffer the request took; what follows is the next request.
        len: usize,
    },
}

impl RequestCodec {
    /// The front over `routes`: clients in `trusted_proxies` may pass their own
    /// `X-Forwarded-*` headers; `https_port` is where redirects to HTTPS point (none: no
    /// redirects).
    pub fn new(
        routes: Arc<ArcSwap<RouteTable>>,
        trusted_proxies: Vec<IpNet>,
        https_port: Option<u16>,
    ) -> Self {
        RequestCodec {
            rules: RequestRules {
                policy: RoutingPolicy::new(routes, trusted_proxies, https_port),
                forwards: true,
            },
        }
    }

    /// Reads the request at the start of `buf`, from a client at `peer` on a connection that
    /// is (`tls`) or is not encrypted. When it is forwarded, the upstream request is written
    /// into `out`: one head with the client's method and target, exactly one Host, no
    /// hop-by-hop header, `X-Forwarded-*` and `Via` set, then the body the client announced.
    pub fn read(&self, buf: &[u8], peer: IpAddr, tls: bool, out: &mut Vec<u8>) -> RequestVerdict {
        match self.rules.prepare(buf, Some(peer), tls, out) {
            Parsed::Partial | Parsed::AwaitBody(_) => RequestVerdict::Incomplete,
            Parsed::Refuse(page) => RequestVerdict::Refused(page.status()),
            Parsed::HandOver(_) => RequestVerdict::HandOver,
            Parsed::Forward(p) => RequestVerdict::Forward { len: p.len },
        }
    }
}

/// What the HTTP/1.1 front does with the upstream's response head at the start of a buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResponseVerdict {
    /// The head is not complete yet.
    Incomplete,
    /// Not a response the front relays (answered 502 instead): malformed, an unasked
    /// `101`, or a `Content-Length` that is not one number.
    Invalid,
    /// An informational (1xx) response, relayed to the client as it is; `out` is untouched.
    Interim {
        /// Bytes of the buffer its head takes.
        len: usize,
    },
    /// The final response: the client's head is in `out`, without its `Connection` header
    /// and the blank line (the front adds them once it knows whether the client connection
    /// stays open).
    Final {
        /// Bytes of the buffer its head takes; the body follows.
        len: usize,
        /// Its status code.
        status: u16,
        /// How the body's end is found.
        framing: Framing,
        /// Whether the upstream connection may carry another request afterwards.
        reusable: bool,
    },
}

/// Reads the response head at the start of `buf`, the answer to a `HEAD` request if
/// `head_request`, and writes the client's head into `out`.
pub fn read_response(buf: &[u8], head_request: bool, out: &mut Vec<u8>) -> ResponseVerdict {
    match parse_response(buf, head_request, out) {
        Ok(None) => ResponseVerdict::Incomplete,
        Err(_) => ResponseVerdict::Invalid,
        Ok(Some(r)) if (100..200).contains(&r.status) => {
            ResponseVerdict::Interim { len: r.head_len }
        }
        Ok(Some(r)) => ResponseVerdict::Final {
            len: r.head_len,
            status: r.status,
            framing: r.framing,
            reusable: r.reusable,
        },
    }
}

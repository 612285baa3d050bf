//! itproxy's HTTP data plane.
//!
//! This crate owns everything on the request path: the [`RouteTable`] (host name to
//! [`Upstream`]), the Pingora [`HostRouter`] that reads it on every request, the pages
//! itproxy answers itself (400/404/502/504), and running the proxy inside the daemon
//! ([`start`], [`RunningRouter`]).
//!
//! Every HTTP/1.1 request head is read and checked by the HTTP/1.1 front (`h1`; one framing rule
//! for both fronts, in `message`), which forwards simple requests (no body or a small one, no
//! upgrade, `http://` target) itself with a per-route, per-thread connection pool, and lends
//! the connection to Pingora's full proxy pipeline ([`HostRouter`]) one request at a time for
//! everything else (streamed bodies, WebSocket, its own pages); HTTP/2 goes to the pipeline.
//! Both fronts route by one policy (`policy`). Plain HTTP is accepted by one `SO_REUSEPORT`
//! loop per proxy thread (`listener`), TLS by Pingora's listeners. The front's sans-io steps
//! are public as [`codec`], for benchmarks and fuzzing.
//!
//! It reads no files and no environment: the daemon hands it validated values and publishes
//! new tables through the shared `ArcSwap<RouteTable>`; one `store` is one route swap.
//!
//! ```text
//!   daemon ──store(Arc<RouteTable>)──▶ ArcSwap ◀──load()── HostRouter (each request)
//! ```
#![warn(missing_docs, clippy::print_stdout)]

pub mod codec;
mod h1;
mod host;
pub mod inspect;
mod lent;
mod listener;
mod message;
mod pages;
mod policy;
mod proxy;
mod server;
mod table;
mod upstream;

use std::net::SocketAddr;

pub use host::HostName;
pub use inspect::Inspector;
pub use proxy::{HostRouter, RequestCtx};
pub use server::{start, RouterConfig, RunningRouter};
pub use table::{Route, RouteTable, Unavailable};
pub use upstream::{Scheme, Upstream, UpstreamOptions, UpstreamSpec};

/// What can go wrong in the router.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A host name that cannot be routed.
    #[error("invalid host name {host:?}: {reason}")]
    InvalidHost {
        /// The name as given.
        host: String,
        /// Why it is invalid.
        reason: String,
    },
    /// A target that cannot be parsed.
    #[error("invalid target {target:?}: {reason}")]
    InvalidTarget {
        /// The target as given.
        target: String,
        /// Why it is invalid.
        reason: String,
    },
    /// A target whose host name does not resolve.
    #[error("cannot resolve the target {target}: {error}")]
    Resolve {
        /// The target.
        target: String,
        /// The resolver's error.
        error: std::io::Error,
    },
    /// No listen address was configured.
    #[error("no HTTP or HTTPS listen address is configured")]
    NoListener,
    /// HTTPS listeners without a certificate resolver.
    #[error("HTTPS listeners need certificates, and none were provided")]
    NoCertificates,
    /// The TLS settings could not be built.
    #[error("cannot set up TLS: {0}")]
    Tls(String),
    /// A listen address cannot be bound.
    #[error(
        "cannot listen for {proto} on {addr}: {error}{}",
        bind_hint(error, proto)
    )]
    Bind {
        /// "HTTP" or "HTTPS".
        proto: &'static str,
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        error: std::io::Error,
    },
    /// The proxy did not come up on an address.
    #[error("the proxy did not start listening on {addr}; see the log above")]
    NotListening {
        /// The address.
        addr: SocketAddr,
    },
    /// The proxy thread could not be started.
    #[error("cannot start the proxy thread: {0}")]
    Thread(std::io::Error),
}

fn bind_hint(e: &std::io::Error, proto: &str) -> String {
    let (flag, example) = match proto {
        "HTTPS" => ("--https", "127.0.0.1:8443"),
        _ => ("--http", "127.0.0.1:8080"),
    };
    match e.kind() {
        std::io::ErrorKind::AddrInUse => {
            format!(" (another program uses it; choose another address with {flag}, e.g. {flag} {example})")
        }
        std::io::ErrorKind::PermissionDenied => format!(
            " (ports below 1024 need root or CAP_NET_BIND_SERVICE; choose another with {flag}, e.g. {flag} {example})"
        ),
        std::io::ErrorKind::AddrNotAvailable => {
            format!(" (the address is not on this machine; choose another with {flag})")
        }
        _ => format!(" (choose another address with {flag})"),
    }
}

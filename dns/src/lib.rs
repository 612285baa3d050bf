//! itproxy's DNS server (hickory-server).
//!
//! This crate owns name resolution for the environment: it is authoritative for the configured
//! domains ([`Zone`], an immutable snapshot the daemon swaps on every route change) and answers
//! each asker with the proxy's address *as that asker reaches it* ([`ProxyAddrs`], one per
//! listener: 127.0.0.1/::1 on loopback, the network gateway for containers). TCP-only services
//! resolve to their own addresses. Every other name is forwarded with hickory's forwarder to
//! the upstream resolvers, for local askers only: the server is never an open resolver.
//!
//! ```text
//!  query ─▶ Handler (per listener) ─▶ Zone::answer ─┬─ ours: AA answer / NODATA / NXDOMAIN + SOA
//!                                                    └─ not ours: allowed asker? ─▶ forwarder
//!                                                                          else ─▶ REFUSED
//! ```
//! Over UDP, the query nearly every client sends (A or AAAA for one of our names) is answered
//! from the packet's bytes by one thread per core (`fast`, `udp`); everything else, and TCP,
//! goes through hickory's server and the handler above.
//!
//! It reads no files of its own, except the system resolver configuration when no upstream is
//! given.
#![warn(missing_docs, clippy::print_stdout)]

pub mod counts;
mod fast;
mod server;
mod udp;
mod zone;

pub use server::{start, DnsConfig, RunningDns};
pub use zone::{Answer, ProxyAddrs, Zone};

/// The UDP fast path's answer to `packet` (its length in `out`), or `None` when the full path
/// answers it: for the fuzz targets only.
#[doc(hidden)]
pub fn fast_answer(
    packet: &[u8],
    zone: &Zone,
    view: &ProxyAddrs,
    out: &mut [u8; 512],
) -> Option<usize> {
    fast::answer(packet, zone, view, false, out)
}

/// Hickory's protocol types, for callers that build queries (e.g. `itproxy resolve`).
pub use hickory_server::proto;

/// What can go wrong in the DNS server.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A name that is not a valid DNS name.
    #[error("invalid DNS name {name:?}: {message}")]
    Name {
        /// The name.
        name: String,
        /// Why.
        message: String,
    },
    /// A zone without domains.
    #[error("the DNS zone needs at least one domain")]
    NoDomain,
    /// A listen address cannot be bound.
    #[error("cannot listen for DNS ({proto}) on {addr}: {error}{}", hint(error))]
    Bind {
        /// The address.
        addr: std::net::SocketAddr,
        /// "UDP" or "TCP".
        proto: &'static str,
        /// The OS error.
        error: std::io::Error,
    },
    /// The forwarder could not be built.
    #[error("cannot set up DNS forwarding: {0}")]
    Forwarder(String),
}

fn hint(e: &std::io::Error) -> &'static str {
    match e.kind() {
        std::io::ErrorKind::AddrInUse => {
            " (another DNS server uses it; choose another address with --dns, e.g. --dns 127.0.0.1:5353, or --no-dns)"
        }
        std::io::ErrorKind::PermissionDenied => {
            " (port 53 needs root or CAP_NET_BIND_SERVICE; choose another with --dns, e.g. --dns 127.0.0.1:5353)"
        }
        _ => " (choose another address with --dns, or --no-dns)",
    }
}

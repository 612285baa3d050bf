//! Where a route sends its requests.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use pingora::upstreams::peer::HttpPeer;

use crate::Error;

/// How itproxy talks to an upstream.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Scheme {
    /// Plain HTTP/1.1.
    Http,
    /// HTTP/1.1 over TLS, the certificate verified against the host name.
    Https,
}

impl Scheme {
    fn default_port(self) -> u16 {
        match self {
            Scheme::Http => 80,
            Scheme::Https => 443,
        }
    }
}

/// A parsed but unresolved upstream target: `host:port`, `http://host:port`,
/// `https://host[:port]`, or a bare port (`8000`, meaning `localhost:8000`).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct UpstreamSpec {
    scheme: Scheme,
    host: Box<str>,
    port: u16,
}

impl UpstreamSpec {
    /// Parses a target as a user types it on the command line or in the config file.
    pub fn parse(target: &str) -> Result<Self, Error> {
        let bad = |reason: &str| Error::InvalidTarget {
            target: target.to_string(),
            reason: reason.to_string(),
        };
        let t = target.trim();
        if t.is_empty() {
            return Err(bad(
                "the target is empty; expected host:port, e.g. localhost:8000",
            ));
        }
        if !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()) {
            let port = parse_port(t).map_err(|r| bad(&r))?;
            return Ok(UpstreamSpec {
                scheme: Scheme::Http,
                host: "localhost".into(),
                port,
            });
        }
        let (scheme, rest, explicit_scheme) = match t.split_once("://") {
            Some((s, rest)) => match s.to_ascii_lowercase().as_str() {
                "http" => (Scheme::Http, rest, true),
                "https" => (Scheme::Https, rest, true),
                other => {
                    return Err(bad(&format!(
                        "unsupported scheme {other:?}; use http:// or https://"
                    )))
                }
            },
            None => (Scheme::Http, t, false),
        };
        let authority = rest.strip_suffix('/').unwrap_or(rest);
        if authority.contains(['/', '?', '#']) {
            return Err(bad(
                "paths are not supported in a target; give only host:port",
            ));
        }
        if authority.contains('@') {
            return Err(bad("credentials are not supported in a target"));
        }
        if authority.contains(char::is_whitespace) {
            return Err(bad("it contains whitespace"));
        }
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (ip, after) = v6
                .split_once(']')
                .ok_or_else(|| bad("an IPv6 address must be closed with ']'"))?;
            ip.parse::<std::net::Ipv6Addr>()
                .map_err(|_| bad(&format!("{ip:?} is not an IPv6 address")))?;
            let port = match after.strip_prefix(':') {
                Some(p) => Some(p),
                None if after.is_empty() => None,
                None => return Err(bad("unexpected text after the IPv6 address")),
            };
            (ip, port)
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (authority, None),
            }
        };
        if host.is_empty() {
            return Err(bad("the host is empty"));
        }
        if host.parse::<IpAddr>().is_err() {
            crate::HostName::parse(host).map_err(|e| match e {
                Error::InvalidHost { reason, .. } => bad(&format!("bad host: {reason}")),
                other => other,
            })?;
        }
        let port = match port {
            Some(p) => parse_port(p).map_err(|r| bad(&r))?,
            None if explicit_scheme => scheme.default_port(),
            None => {
                return Err(bad(
                    "the port is missing; expected host:port, e.g. localhost:8000",
                ))
            }
        };
        Ok(UpstreamSpec {
            scheme,
            host: host.to_ascii_lowercase().into(),
            port,
        })
    }

    /// The scheme.
    pub fn scheme(&self) -> Scheme {
        self.scheme
    }

    /// The host name or IP literal, as given.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Resolves the host to socket addresses (no lookup for IP literals).
    pub async fn resolve(&self) -> Result<Vec<SocketAddr>, Error> {
        if let Ok(ip) = self.host.parse::<IpAddr>() {
            return Ok(vec![SocketAddr::new(ip, self.port)]);
        }
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host((&*self.host, self.port))
            .await
            .map_err(|e| Error::Resolve {
                target: self.to_string(),
                error: e,
            })?
            .collect();
        let mut unique = Vec::with_capacity(addrs.len());
        for a in addrs {
            if !unique.contains(&a) {
                unique.push(a);
            }
        }
        if unique.is_empty() {
            return Err(Error::Resolve {
                target: self.to_string(),
                error: std::io::Error::new(std::io::ErrorKind::NotFound, "no addresses"),
            });
        }
        Ok(unique)
    }
}

fn parse_port(p: &str) -> Result<u16, String> {
    match p.parse::<u16>() {
        Ok(0) | Err(_) => Err(format!("port {p:?} is not a number from 1 to 65535")),
        Ok(n) => Ok(n),
    }
}

impl fmt::Display for UpstreamSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = match self.scheme {
            Scheme::Http => "http",
            Scheme::Https => "https",
        };
        if self.host.contains(':') {
            write!(f, "{scheme}://[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{scheme}://{}:{}", self.host, self.port)
        }
    }
}

impl std::str::FromStr for UpstreamSpec {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        UpstreamSpec::parse(s)
    }
}

/// Connection settings applied to every upstream peer.
#[derive(Clone, Debug)]
pub struct UpstreamOptions {
    /// Time allowed for one TCP (and TLS) connect before the request fails with 504.
    pub connect_timeout: Duration,
    /// Time allowed for the response to start, and for each later read or write of the
    /// exchange (a stalled upstream): 504 before the response started, a cut response after.
    /// Upgraded connections (WebSocket) have none.
    pub read_timeout: Duration,
    /// For `https://` targets: verify the certificate and host name (off only for
    /// self-signed development backends).
    pub verify_tls: bool,
}

impl Default for UpstreamOptions {
    fn default() -> Self {
        UpstreamOptions {
            connect_timeout: Duration::from_secs(5),
            read_timeout: Duration::from_secs(60),
            verify_tls: true,
        }
    }
}

/// A resolved upstream: the target plus the peers to try, built once when the route is set so
/// the request path only clones a prepared [`HttpPeer`].
pub struct Upstream {
    spec: UpstreamSpec,
    peers: Vec<HttpPeer>,
    /// Index of the address that last accepted a connection; tried first.
    preferred: AtomicUsize,
    connect_timeout: Duration,
    read_timeout: Duration,
    /// Tells this upstream from an earlier one at the same address (see [`Upstream::new`]).
    generation: u64,
}

impl Upstream {
    /// Prepares the peers for `addrs`. `generation` must differ between two upstreams that may
    /// share an address (a route set twice, a container's IP reused): pooled connections are
    /// only reused within one generation, so an idle connection to an old target never serves
    /// a new one.
    pub fn new(
        spec: UpstreamSpec,
        addrs: Vec<SocketAddr>,
        generation: u64,
        options: &UpstreamOptions,
    ) -> Self {
        let tls = spec.scheme == Scheme::Https;
        let peers = addrs
            .into_iter()
            .map(|addr| {
                let mut peer = HttpPeer::new(addr, tls, spec.host.to_string());
                peer.group_key = generation;
                peer.options.connection_timeout = Some(options.connect_timeout);
                peer.options.total_connection_timeout = Some(options.connect_timeout);
                peer.options.read_timeout = Some(options.read_timeout);
                peer.options.write_timeout = Some(options.read_timeout);
                peer.options.verify_cert = options.verify_tls;
                peer.options.verify_hostname = options.verify_tls;
                peer
            })
            .collect();
        Upstream {
            spec,
            peers,
            preferred: AtomicUsize::new(0),
            connect_timeout: options.connect_timeout,
            read_timeout: options.read_timeout,
            generation,
        }
    }

    /// The target as the user gave it.
    pub fn spec(&self) -> &UpstreamSpec {
        &self.spec
    }

    /// The resolved addresses, in the order they were resolved.
    pub fn addrs(&self) -> impl Iterator<Item = SocketAddr> + '_ {
        self.peers
            .iter()
            .filter_map(|p| p._address.as_inet().copied())
    }

    /// How many addresses a request may try.
    pub(crate) fn peer_count(&self) -> usize {
        self.peers.len()
    }

    /// The peer for the `attempt`-th try of a request (0 = first), starting at the address that
    /// worked last.
    pub(crate) fn peer(&self, attempt: usize) -> Option<(usize, &HttpPeer)> {
        if self.peers.is_empty() {
            return None;
        }
        let i = (self.preferred.load(Ordering::Relaxed) + attempt) % self.peers.len();
        Some((i, &self.peers[i]))
    }

    /// Remembers that address `index` accepted a connection.
    pub(crate) fn prefer(&self, index: usize) {
        self.preferred.store(index, Ordering::Relaxed);
    }

    /// The address to try at `attempt` (from the preferred one on), with its index.
    pub(crate) fn addr(&self, attempt: usize) -> Option<(usize, SocketAddr)> {
        let (i, peer) = self.peer(attempt)?;
        peer._address.as_inet().map(|a| (i, *a))
    }

    pub(crate) fn connect_timeout(&self) -> Duration {
        self.connect_timeout
    }

    pub(crate) fn read_timeout(&self) -> Duration {
        self.read_timeout
    }

    /// Tells this upstream from an earlier one that may share an address: the HTTP/1.1
    /// front's pool keeps connections under it, as Pingora's keeps them under the peers'
    /// `group_key`.
    pub(crate) fn generation(&self) -> u64 {
        self.generation
    }
}

impl fmt::Debug for Upstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Upstream")
            .field("spec", &self.spec.to_string())
            .field("addrs", &self.addrs().collect::<Vec<_>>())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(t: &str) -> String {
        UpstreamSpec::parse(t).unwrap().to_string()
    }

    #[test]
    fn accepts_common_forms() {
        assert_eq!(ok("localhost:8000"), "http://localhost:8000");
        assert_eq!(ok("LOCALHOST:8000/"), "http://localhost:8000");
        assert_eq!(ok("http://127.0.0.1:3000"), "http://127.0.0.1:3000");
        assert_eq!(ok("https://api.example"), "https://api.example:443");
        assert_eq!(ok("http://web"), "http://web:80");
        assert_eq!(ok("[::1]:9000"), "http://[::1]:9000");
        assert_eq!(ok("8000"), "http://localhost:8000");
    }

    #[test]
    fn rejects_bad_targets_with_a_reason() {
        for (t, why) in [
            ("localhost:notaport", "not a number"),
            ("localhost:0", "not a number"),
            ("localhost:70000", "not a number"),
            ("localhost", "port is missing"),
            ("", "empty"),
            ("ftp://x:1", "unsupported scheme"),
            ("http://x:1/api", "paths are not supported"),
            ("http://u:p@x:1", "credentials"),
            ("my host:80", "whitespace"),
            (":80", "host is empty"),
            ("[::1:80", "closed with ']'"),
            ("bad_-.:80", "bad host"),
        ] {
            let e = UpstreamSpec::parse(t).unwrap_err().to_string();
            assert!(e.contains(why), "{t:?}: {e}");
            assert!(e.contains(&format!("{t:?}")), "{t:?}: {e}");
        }
    }

    #[tokio::test]
    async fn resolves_literals_and_localhost() {
        let s = UpstreamSpec::parse("127.0.0.1:1").unwrap();
        assert_eq!(
            s.resolve().await.unwrap(),
            vec!["127.0.0.1:1".parse().unwrap()]
        );
        let s = UpstreamSpec::parse("localhost:1").unwrap();
        assert!(s
            .resolve()
            .await
            .unwrap()
            .iter()
            .all(|a| a.ip().is_loopback()));
    }

    #[test]
    fn peers_rotate_from_the_preferred_address() {
        let spec = UpstreamSpec::parse("localhost:1").unwrap();
        let addrs = vec!["[::1]:1".parse().unwrap(), "127.0.0.1:1".parse().unwrap()];
        let u = Upstream::new(spec, addrs, 7, &UpstreamOptions::default());
        assert_eq!(u.peer(0).unwrap().0, 0);
        assert_eq!(u.peer(1).unwrap().0, 1);
        u.prefer(1);
        assert_eq!(u.peer(0).unwrap().0, 1);
        assert_eq!(u.peer(0).unwrap().1.group_key, 7);
    }
}

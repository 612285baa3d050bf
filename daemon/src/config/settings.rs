//! The validated settings, one group per subsystem, and their conversions into the services'
//! own configurations ([`ProxySettings::router_config`], [`DnsSettings::dns_config`]).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;
use itproxy_dns::{DnsConfig, ProxyAddrs};
use itproxy_router::{HostName, RouterConfig, UpstreamSpec};
use serde::Deserialize;

/// Where itproxy listens (`[listen]`, `--http`, `--https`, `--dns`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listen {
    /// Plain-HTTP listen addresses.
    pub http: Vec<SocketAddr>,
    /// HTTPS listen addresses (may be empty).
    pub https: Vec<SocketAddr>,
    /// DNS listen addresses (may be empty).
    pub dns: Vec<SocketAddr>,
}

/// The HTTP front (`[proxy]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxySettings {
    /// Clients whose `X-Forwarded-*` headers are kept and extended.
    pub trusted_proxies: Vec<IpNet>,
    /// The HTTP front's timeouts.
    pub timeouts: Timeouts,
    /// Open connections one client address may hold.
    pub max_connections_per_client: usize,
    /// Proxy worker threads (None: one per core).
    pub threads: Option<usize>,
    /// Whether proxy threads steal work from each other.
    pub work_stealing: bool,
    /// Whether HTTP/1.1 connections are read by itproxy's own HTTP/1.1 front (which lends
    /// what it does not serve itself to Pingora), or all go through Pingora's pipeline.
    pub h1_front: bool,
    /// How many recent requests the inspector keeps (0: none; they are still counted).
    pub recent_requests: usize,
    /// The name the dashboard is served at, as given (`itproxy`: `https://itproxy.test/`,
    /// qualified by the domains); none: no dashboard.
    pub dashboard: Option<HostName>,
    /// Where every request is written as one JSON line (relative: in the state directory).
    pub access_log: Option<PathBuf>,
    /// The routes whose request and response bodies the inspector keeps.
    pub inspect_bodies: Vec<HostName>,
    /// How many bytes of each of those bodies.
    pub inspect_body_limit: usize,
}

/// The HTTP front's timeouts, from `[proxy]`; a route may set its own `connect_timeout` and
/// `read_timeout`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// Connecting to a target (`connect_timeout`, 5 s): then 504.
    pub connect: Duration,
    /// The target's response to start, and each later read or write to stall at most
    /// (`read_timeout`, 60 s): 504 before the response, a cut response after. None for
    /// WebSocket.
    pub read: Duration,
    /// A client's request head to arrive whole after its first byte (`header_timeout`, 60 s):
    /// then 408.
    pub header: Duration,
    /// An idle client connection to send its next request (`keepalive_timeout`, 60 s).
    pub keepalive: Duration,
    /// A client to take more of its response (`send_timeout`, 60 s): then it is dropped.
    pub send: Duration,
    /// Requests in flight to finish when itproxy stops (`shutdown_grace`, 10 s).
    pub shutdown_grace: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect: Duration::from_secs(5),
            read: Duration::from_secs(60),
            header: Duration::from_secs(60),
            keepalive: Duration::from_secs(60),
            send: Duration::from_secs(60),
            shutdown_grace: Duration::from_secs(10),
        }
    }
}

/// The DNS server (`[dns]`, `--dns-upstream`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsSettings {
    /// Upstream resolvers (empty: the system's).
    pub upstreams: Vec<SocketAddr>,
    /// TTL of the environment's records and negative answers, in seconds.
    pub ttl: u32,
    /// Time allowed for a forwarded query.
    pub forward_timeout: Duration,
    /// Askers (besides loopback) allowed to use forwarding.
    pub recursion_from: Vec<IpNet>,
}

/// The local CA's leaf certificates (`[tls]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TlsSettings {
    /// Validity of issued leaf certificates.
    pub leaf_validity: Duration,
    /// Which server names get a certificate of their own.
    pub mint: MintPolicy,
}

/// Which TLS server names get a certificate of their own (`[tls] mint`).
#[derive(Deserialize, Debug, Clone, Copy, Default, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum MintPolicy {
    /// Routed names (and localhost); any other name in the domains shares the domain's
    /// wildcard certificate, so random names cannot fill the disk.
    #[default]
    Routed,
    /// Every name in the domains, at its first handshake.
    Any,
}

/// A route's target and options, as declared or set through the API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteSpec {
    /// Where requests go.
    pub target: UpstreamSpec,
    /// Redirect plain HTTP to HTTPS.
    pub redirect_https: bool,
    /// Do not verify an `https://` target's certificate.
    pub insecure_upstream: bool,
    /// This route's connect timeout, if not `[proxy]`'s.
    pub connect_timeout: Option<Duration>,
    /// This route's read timeout, if not `[proxy]`'s.
    pub read_timeout: Option<Duration>,
}

impl RouteSpec {
    /// A route to `target` with default options.
    pub fn to(target: UpstreamSpec) -> Self {
        RouteSpec {
            target,
            redirect_https: false,
            insecure_upstream: false,
            connect_timeout: None,
            read_timeout: None,
        }
    }
}

/// Where containers of the environment reach itproxy: its network's gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gateway {
    /// The gateway's address.
    pub ip: IpAddr,
    /// Whether the proxy may listen there on 80 and 443 too (it can bind them).
    pub standard_ports: bool,
}

impl ProxySettings {
    /// The proxy's configuration: `listen`'s HTTP and HTTPS addresses, plus, with an
    /// environment, the same ports on its network's gateway (where containers reach the
    /// proxy, so `api.test:PORT` works alike from the host and from containers) and, when
    /// [`Gateway::standard_ports`], 80 and 443 there too, so containers use the URLs
    /// production uses (`https://api.test/`). TLS handshakes get their certificate from
    /// `certificates`; `https://` upstreams are verified against `upstream_roots` (the
    /// system's roots plus ours).
    pub fn router_config(
        &self,
        listen: &Listen,
        gateway: Option<Gateway>,
        certificates: Arc<itproxy_certs::CertResolver>,
        upstream_roots: PathBuf,
    ) -> RouterConfig {
        let (mut http, mut https) = (listen.http.clone(), listen.https.clone());
        if let Some(g) = gateway {
            for (first, list, standard) in [
                (listen.http.first(), &mut http, 80),
                (listen.https.first(), &mut https, 443),
            ] {
                if let Some(a) = first {
                    list.push(SocketAddr::new(g.ip, a.port()));
                    if g.standard_ports && a.port() != standard {
                        list.push(SocketAddr::new(g.ip, standard));
                    }
                }
            }
        }
        RouterConfig {
            http,
            https,
            certificates: Some(certificates),
            upstream_roots: Some(upstream_roots),
            trusted_proxies: self.trusted_proxies.clone(),
            threads: self
                .threads
                .unwrap_or_else(|| RouterConfig::default().threads),
            work_stealing: self.work_stealing,
            h1_front: self.h1_front,
            shutdown_timeout: self.timeouts.shutdown_grace,
            header_timeout: self.timeouts.header,
            keepalive_timeout: self.timeouts.keepalive,
            send_timeout: self.timeouts.send,
            max_connections_per_client: self.max_connections_per_client,
            // The daemon's own, set where it makes them.
            inspector: Arc::default(),
            own_routes: Default::default(),
        }
    }
}

impl DnsSettings {
    /// The DNS server's configuration: `listen`'s DNS addresses, answering with the proxy's
    /// loopback address, plus, with an environment and DNS on, port 53 on its network's
    /// `gateway` (the only port a container's resolv.conf can name), answering with the
    /// gateway and forwarding for the network's `subnet`. Loopback askers may always forward.
    pub fn dns_config(
        &self,
        listen: &Listen,
        gateway: Option<IpAddr>,
        subnet: Option<IpNet>,
    ) -> DnsConfig {
        let proxy: Vec<SocketAddr> = listen.http.iter().chain(&listen.https).copied().collect();
        let mut listeners: Vec<(SocketAddr, ProxyAddrs)> = listen
            .dns
            .iter()
            .map(|a| (*a, loopback_view(&proxy)))
            .collect();
        let mut recursion_from: Vec<IpNet> = ["127.0.0.0/8", "::1/128"]
            .iter()
            .map(|n| n.parse().expect("valid network"))
            .chain(self.recursion_from.iter().copied())
            .collect();
        if let Some(gateway) = gateway.filter(|_| !listen.dns.is_empty()) {
            let view = ProxyAddrs {
                v4: match gateway {
                    IpAddr::V4(v4) => Some(v4),
                    IpAddr::V6(_) => None,
                },
                v6: None,
            };
            listeners.push((SocketAddr::new(gateway, 53), view));
            recursion_from.extend(subnet);
        }
        DnsConfig {
            listeners,
            upstreams: self.upstreams.clone(),
            recursion_from,
            forward_timeout: self.forward_timeout,
        }
    }
}

/// The proxy's address as loopback askers reach it: its first IPv4 and IPv6 listeners
/// (wildcards answer with the loopback address).
fn loopback_view(listeners: &[SocketAddr]) -> ProxyAddrs {
    ProxyAddrs {
        v4: listeners.iter().find_map(|a| match a.ip() {
            IpAddr::V4(ip) if ip.is_unspecified() => Some(Ipv4Addr::LOCALHOST),
            IpAddr::V4(ip) => Some(ip),
            IpAddr::V6(_) => None,
        }),
        v6: listeners.iter().find_map(|a| match a.ip() {
            IpAddr::V6(ip) if ip.is_unspecified() => Some(Ipv6Addr::LOCALHOST),
            IpAddr::V6(ip) => Some(ip),
            IpAddr::V4(_) => None,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{CliOverrides, Config};

    fn config(text: &str) -> Config {
        Config::from_str(text, &CliOverrides::default()).unwrap()
    }

    const LISTEN: &str = "[listen]\nhttp = [\"0.0.0.0:8080\", \"[::1]:8080\"]\nhttps = \"127.0.0.1:8443\"\ndns = \"127.0.0.1:5353\"\n";

    #[test]
    fn dns_config_answers_loopback_askers_with_the_proxy() {
        let c = config(&format!(
            "{LISTEN}[dns]\nupstreams = [\"1.1.1.1\"]\nforward_timeout = \"2s\"\nrecursion_from = [\"10.0.0.0/8\"]\n"
        ));
        let d = c.dns.dns_config(&c.listen, None, None);
        let loopback = ProxyAddrs {
            v4: Some(Ipv4Addr::LOCALHOST),
            v6: Some(Ipv6Addr::LOCALHOST),
        };
        assert_eq!(d.listeners, [("127.0.0.1:5353".parse().unwrap(), loopback)]);
        assert_eq!(d.upstreams, ["1.1.1.1:53".parse().unwrap()]);
        assert_eq!(d.forward_timeout, Duration::from_secs(2));
        let nets: Vec<String> = d.recursion_from.iter().map(|n| n.to_string()).collect();
        assert_eq!(nets, ["127.0.0.0/8", "::1/128", "10.0.0.0/8"]);
    }

    #[test]
    fn dns_config_listens_on_the_gateway_port_53_unless_dns_is_off() {
        let c = config(LISTEN);
        let gateway: IpAddr = "172.18.0.1".parse().unwrap();
        let subnet: IpNet = "172.18.0.0/16".parse().unwrap();
        let d = c.dns.dns_config(&c.listen, Some(gateway), Some(subnet));
        assert_eq!(d.listeners.len(), 2);
        assert_eq!(
            d.listeners[1],
            (
                "172.18.0.1:53".parse().unwrap(),
                ProxyAddrs {
                    v4: Some("172.18.0.1".parse().unwrap()),
                    v6: None
                }
            )
        );
        assert_eq!(d.recursion_from.last(), Some(&subnet));

        let off = Listen {
            dns: Vec::new(),
            ..c.listen.clone()
        };
        let d = c.dns.dns_config(&off, Some(gateway), Some(subnet));
        assert!(d.listeners.is_empty());
        assert!(!d.recursion_from.contains(&subnet));
    }

    #[test]
    fn the_old_fast_path_key_still_switches_the_http1_front() {
        assert!(config(LISTEN).proxy.h1_front);
        assert!(
            !config(&format!("{LISTEN}[proxy]\nfast_path = false\n"))
                .proxy
                .h1_front
        );
        assert!(
            !config(&format!("{LISTEN}[proxy]\nh1_front = false\n"))
                .proxy
                .h1_front
        );
    }

    #[test]
    fn router_config_adds_the_gateway_on_the_first_ports() {
        let c = config(&format!(
            "{LISTEN}[proxy]\nthreads = 3\nshutdown_grace = \"1s\"\nmax_connections_per_client = 7\nh1_front = false\n"
        ));
        let dir = tempfile::tempdir().unwrap();
        let (ca, _) = itproxy_certs::Authority::load_or_create(
            &dir.path().join("ca"),
            &["test".into()],
            "t",
            std::time::SystemTime::now(),
        )
        .unwrap();
        let certs = Arc::new(
            itproxy_certs::CertResolver::new(
                Arc::new(ca),
                &dir.path().join("certs"),
                c.tls.leaf_validity,
                Arc::new(std::time::SystemTime::now),
            )
            .unwrap(),
        );
        let bundle = dir.path().join("bundle.pem");

        let r = c
            .proxy
            .router_config(&c.listen, None, certs.clone(), bundle.clone());
        assert_eq!(r.http, c.listen.http);
        assert_eq!(r.https, c.listen.https);
        assert!(r.certificates.is_some());
        assert_eq!(r.upstream_roots.as_ref(), Some(&bundle));
        assert_eq!(
            (r.threads, r.max_connections_per_client, r.h1_front),
            (3, 7, false)
        );
        assert_eq!(r.shutdown_timeout, Duration::from_secs(1));
        assert_eq!(r.header_timeout, c.proxy.timeouts.header);

        let gateway = |standard_ports| {
            Some(Gateway {
                ip: "172.18.0.1".parse().unwrap(),
                standard_ports,
            })
        };
        let r = c
            .proxy
            .router_config(&c.listen, gateway(false), certs.clone(), bundle.clone());
        let http: Vec<String> = r.http.iter().map(|a| a.to_string()).collect();
        let https: Vec<String> = r.https.iter().map(|a| a.to_string()).collect();
        assert_eq!(http, ["0.0.0.0:8080", "[::1]:8080", "172.18.0.1:8080"]);
        assert_eq!(https, ["127.0.0.1:8443", "172.18.0.1:8443"]);
        // Where it may, the gateway also gets the ports production URLs imply.
        let r = c
            .proxy
            .router_config(&c.listen, gateway(true), certs, bundle);
        let http: Vec<String> = r.http.iter().map(|a| a.to_string()).collect();
        let https: Vec<String> = r.https.iter().map(|a| a.to_string()).collect();
        assert_eq!(
            http,
            [
                "0.0.0.0:8080",
                "[::1]:8080",
                "172.18.0.1:8080",
                "172.18.0.1:80"
            ]
        );
        assert_eq!(
            https,
            ["127.0.0.1:8443", "172.18.0.1:8443", "172.18.0.1:443"]
        );
    }
}

//! The DNS listeners: per address, UDP sockets read by worker threads ([`crate::udp`]) and a
//! hickory `Server` for TCP, each answering with the proxy address its askers can reach, and
//! forwarding other names for local askers only.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use hickory_server::net::runtime::Time;
use hickory_server::proto::op::{
    Edns, Header, HeaderCounts, MessageType, Metadata, OpCode, ResponseCode,
};
use hickory_server::proto::rr::{DNSClass, LowerName, Name};
use hickory_server::resolver::config::{NameServerConfig, ResolverOpts};
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::store::forwarder::{ForwardConfig, ForwardZoneHandler};
use hickory_server::zone_handler::{Catalog, MessageResponseBuilder, ZoneHandler};
use hickory_server::Server;
use ipnet::IpNet;

use crate::counts::{Outcome, QueryCounts};
use crate::udp::{self, UdpListener};
use crate::{Answer, Error, ProxyAddrs, Zone};

/// How the DNS server listens and forwards; built by the daemon from validated config.
#[derive(Debug, Clone)]
pub struct DnsConfig {
    /// Listen addresses (UDP and TCP), each with the proxy address its askers should get.
    pub listeners: Vec<(SocketAddr, ProxyAddrs)>,
    /// Upstream resolvers for names outside our domains; empty means the system's
    /// (`/etc/resolv.conf`), minus our own listeners.
    pub upstreams: Vec<SocketAddr>,
    /// Askers allowed to use forwarding; everyone else gets REFUSED for foreign names, so the
    /// server is never an open resolver even when listening on a public address.
    pub recursion_from: Vec<IpNet>,
    /// How long a forwarded query may take before SERVFAIL.
    pub forward_timeout: Duration,
}

/// The DNS server, serving until [`RunningDns::stop`].
pub struct RunningDns {
    udp: Vec<UdpListener>,
    servers: Vec<Server<Handler>>,
    upstreams: Vec<SocketAddr>,
    addrs: Vec<SocketAddr>,
    counts: Arc<QueryCounts>,
}

impl RunningDns {
    /// The addresses it listens on (UDP and TCP each), with the ports the system chose for
    /// listeners configured with port 0.
    pub fn addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    /// The upstream resolvers in use.
    pub fn upstreams(&self) -> &[SocketAddr] {
        &self.upstreams
    }

    /// The queries answered so far, by type and outcome (every listener, UDP and TCP).
    pub fn counts(&self) -> Arc<QueryCounts> {
        self.counts.clone()
    }

    /// Stops every listener, letting queries in progress finish.
    pub async fn stop(mut self) {
        for u in self.udp.drain(..) {
            u.stop().await;
        }
        for s in &mut self.servers {
            if let Err(e) = s.shutdown_gracefully().await {
                tracing::debug!(error = %e, "DNS listener stopped with an error");
            }
        }
    }
}

/// Answers one listener's queries: from the zone, or forwarded for allowed askers.
#[derive(Clone)]
pub(crate) struct Handler {
    zone: Arc<ArcSwap<Zone>>,
    view: ProxyAddrs,
    forward: Option<Arc<Catalog>>,
    recursion_from: Arc<Vec<IpNet>>,
    /// Permits for queries being forwarded (all listeners, UDP and TCP): each waits for an
    /// upstream, up to the forward timeout, with a socket of its own.
    forwarding: Arc<tokio::sync::Semaphore>,
    /// Every listener's queries, counted.
    pub(crate) counts: Arc<QueryCounts>,
}

/// How a query was dealt with, for its count.
enum Way {
    /// From the zone, or refused or failed here.
    Here,
    /// Sent to the upstream resolvers.
    Forwarded,
    /// Dropped: too many were being forwarded.
    Dropped,
}

/// Queries forwarded at once; more are dropped (the asker retries), so a flood of foreign
/// names cannot hold memory, sockets and the runtime (dnsmasq's `dns-forward-max` is 150).
const MAX_FORWARDING: usize = 150;

impl Handler {
    /// The zone in force.
    pub(crate) fn zone(&self) -> arc_swap::Guard<Arc<Zone>> {
        self.zone.load()
    }

    /// The proxy's addresses as this listener's askers reach it.
    pub(crate) fn view(&self) -> &ProxyAddrs {
        &self.view
    }

    /// A handler without forwarding, for tests of the query path.
    #[cfg(test)]
    pub(crate) fn without_forwarding(zone: Zone, view: ProxyAddrs) -> Handler {
        Handler {
            zone: Arc::new(ArcSwap::from_pointee(zone)),
            view,
            forward: None,
            recursion_from: Arc::new(Vec::new()),
            forwarding: Arc::new(tokio::sync::Semaphore::new(MAX_FORWARDING)),
            counts: Arc::default(),
        }
    }

    /// A handler forwarding other names to `upstream` for loopback askers, for tests.
    #[cfg(test)]
    pub(crate) fn forwarding_to(
        zone: Zone,
        view: ProxyAddrs,
        upstream: SocketAddr,
        timeout: Duration,
    ) -> Handler {
        Handler {
            forward: forwarder(&[upstream], timeout).unwrap(),
            recursion_from: Arc::new(vec!["127.0.0.0/8".parse().unwrap()]),
            ..Handler::without_forwarding(zone, view)
        }
    }

    /// Whether `asker` may use forwarding: the RA flag of its answers.
    pub(crate) fn recursion_available(&self, asker: IpAddr) -> bool {
        self.forward.is_some() && allowed(&self.recursion_from, asker)
    }
}

fn system_upstreams(own: &[SocketAddr]) -> Vec<SocketAddr> {
    let Ok((conf, _)) = hickory_server::resolver::system_conf::read_system_conf() else {
        return Vec::new();
    };
    conf.name_servers()
        .iter()
        .map(|ns| SocketAddr::new(ns.ip, ns.connections.first().map_or(53, |c| c.port)))
        .filter(|a| {
            !own.iter()
                .any(|o| o.port() == a.port() && (o.ip() == a.ip() || o.ip().is_unspecified()))
        })
        .fold(Vec::new(), |mut v, a| {
            if !v.contains(&a) {
                v.push(a);
            }
            v
        })
}

fn forwarder(upstreams: &[SocketAddr], timeout: Duration) -> Result<Option<Arc<Catalog>>, Error> {
    if upstreams.is_empty() {
        return Ok(None);
    }
    let name_servers = upstreams
        .iter()
        .map(|a| {
            let mut ns = NameServerConfig::udp_and_tcp(a.ip());
            for c in &mut ns.connections {
                c.port = a.port();
            }
            ns
        })
        .collect();
    let mut options = ResolverOpts::default();
    options.timeout = timeout;
    options.attempts = 1;
    let handler = ForwardZoneHandler::builder_tokio(ForwardConfig {
        name_servers,
        options: Some(options),
    })
    .build()
    .map_err(Error::Forwarder)?;
    let mut catalog = Catalog::new();
    catalog.upsert(
        LowerName::new(&Name::root()),
        vec![Arc::new(handler) as Arc<dyn ZoneHandler>],
    );
    Ok(Some(Arc::new(catalog)))
}

/// Binds every listener (UDP and TCP) and starts answering from `zone`.
pub async fn start(config: &DnsConfig, zone: Arc<ArcSwap<Zone>>) -> Result<RunningDns, Error> {
    let own: Vec<SocketAddr> = config.listeners.iter().map(|(a, _)| *a).collect();
    let upstreams = if config.upstreams.is_empty() {
        system_upstreams(&own)
    } else {
        config.upstreams.clone()
    };
    let forward = forwarder(&upstreams, config.forward_timeout)?;
    if forward.is_none() {
        tracing::warn!(
            "no upstream DNS resolver: names outside the environment's domains get SERVFAIL"
        );
    }
    let recursion_from = Arc::new(config.recursion_from.clone());
    let forwarding = Arc::new(tokio::sync::Semaphore::new(MAX_FORWARDING));
    let runtime = tokio::runtime::Handle::current();
    let mut running = RunningDns {
        udp: Vec::new(),
        servers: Vec::new(),
        upstreams,
        addrs: Vec::new(),
        counts: Arc::default(),
    };
    for &(addr, view) in &config.listeners {
        let (udp, tcp, addr) = match bind_pair(addr).await {
            Ok(x) => x,
            Err(e) => {
                running.stop().await;
                return Err(e);
            }
        };
        running.addrs.push(addr);
        let handler = Handler {
            zone: zone.clone(),
            view,
            forward: forward.clone(),
            recursion_from: recursion_from.clone(),
            forwarding: forwarding.clone(),
            counts: running.counts.clone(),
        };
        match UdpListener::start(udp, handler.clone(), runtime.clone()) {
            Ok(u) => running.udp.push(u),
            Err(e) => {
                running.stop().await;
                return Err(e);
            }
        }
        let mut server = Server::new(handler);
        server.register_listener(tcp, Duration::from_secs(5), 64 * 1024);
        running.servers.push(server);
    }
    Ok(running)
}

/// The UDP sockets and a TCP listener on the same address. With port 0, the UDP sockets pick a
/// free port and TCP takes the same one; if another program holds that port for TCP, another
/// is tried (a few times).
async fn bind_pair(
    addr: SocketAddr,
) -> Result<
    (
        Vec<std::net::UdpSocket>,
        tokio::net::TcpListener,
        SocketAddr,
    ),
    Error,
> {
    // A port the system picked for UDP may be taken for TCP (another socket's local port):
    // pick again, a bounded number of times (many in a busy test run).
    let mut attempts = if addr.port() == 0 { 64 } else { 1 };
    loop {
        attempts -= 1;
        let udp = udp::bind_group(addr, udp::workers())?;
        let bound = udp[0].local_addr().map_err(|error| Error::Bind {
            addr,
            proto: "UDP",
            error,
        })?;
        match tokio::net::TcpListener::bind(bound).await {
            Ok(tcp) => return Ok((udp, tcp, bound)),
            Err(e) if attempts > 0 && e.kind() == std::io::ErrorKind::AddrInUse => continue,
            Err(error) => {
                return Err(Error::Bind {
                    addr: bound,
                    proto: "TCP",
                    error,
                })
            }
        }
    }
}

/// The OPT of an answer to `request`, as hickory's catalog gives it to forwarded ones: none
/// without one in the query (RFC 6891 6.1.1), else version 0 and the asker's payload size (at
/// least 512); a code above 15 (BADVERS) goes in its high bits.
fn answer_edns(request: &Request, code: ResponseCode) -> Option<Edns> {
    let asked = request.edns.as_ref()?;
    let mut edns = Edns::new();
    edns.set_max_payload(asked.max_payload().max(512));
    edns.set_version(0);
    edns.set_rcode_high(code.high());
    Some(edns)
}

async fn reply_code<R: ResponseHandler>(
    request: &Request,
    mut rh: R,
    code: ResponseCode,
    ra: bool,
) -> ResponseInfo {
    let mut md = Metadata::response_from_request(&request.metadata);
    md.response_code = code;
    md.recursion_available = ra;
    let edns = answer_edns(request, code);
    let mut builder = MessageResponseBuilder::from_message_request(request);
    if let Some(edns) = &edns {
        builder.edns(edns);
    }
    let resp = builder.build_no_records(md);
    send(request, &mut rh, resp).await
}

async fn send<'a, R: ResponseHandler>(
    request: &Request,
    rh: &mut R,
    resp: hickory_server::zone_handler::MessageResponse<
        '_,
        'a,
        impl Iterator<Item = &'a hickory_server::proto::rr::Record> + Send + 'a,
        impl Iterator<Item = &'a hickory_server::proto::rr::Record> + Send + 'a,
        impl Iterator<Item = &'a hickory_server::proto::rr::Record> + Send + 'a,
        impl Iterator<Item = &'a hickory_server::proto::rr::Record> + Send + 'a,
    >,
) -> ResponseInfo {
    match rh.send_response(resp).await {
        Ok(info) => info,
        Err(e) => {
            tracing::debug!(error = %e, "cannot send a DNS response");
            not_sent(request, ResponseCode::ServFail)
        }
    }
}

/// What the server records, as `code`, for a query it could not answer or dropped.
fn not_sent(request: &Request, code: ResponseCode) -> ResponseInfo {
    let mut metadata = Metadata::new(
        request.metadata.id,
        MessageType::Response,
        request.metadata.op_code,
    );
    metadata.response_code = code;
    ResponseInfo::from(Header {
        metadata,
        counts: HeaderCounts::default(),
    })
}

fn allowed(nets: &[IpNet], ip: IpAddr) -> bool {
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    };
    nets.iter().any(|n| n.contains(&ip))
}

#[async_trait]
impl RequestHandler for Handler {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        rh: R,
    ) -> ResponseInfo {
        let (info, way) = self.respond::<R, T>(request, rh).await;
        let type_code = request
            .request_info()
            .ok()
            .map(|i| u16::from(i.query.query_type()));
        let outcome = match way {
            Way::Forwarded => Outcome::Forwarded,
            Way::Dropped => Outcome::Dropped,
            Way::Here => {
                let rcode = u16::from(info.response_code);
                Outcome::of_answer(rcode.min(255) as u8, info.counts().answers)
            }
        };
        self.counts.add(type_code, outcome);
        info
    }
}

impl Handler {
    /// Answers `request` (see the module's documentation) and says how.
    async fn respond<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        mut rh: R,
    ) -> (ResponseInfo, Way) {
        let here = |info| (info, Way::Here);
        let recursion = allowed(&self.recursion_from, request.src().ip());
        let ra = recursion && self.forward.is_some();
        if request.metadata.message_type != MessageType::Query {
            return here(reply_code(request, rh, ResponseCode::FormErr, ra).await);
        }
        if request.metadata.op_code != OpCode::Query {
            return here(reply_code(request, rh, ResponseCode::NotImp, ra).await);
        }
        let Ok(info) = request.request_info() else {
            return here(reply_code(request, rh, ResponseCode::FormErr, ra).await);
        };
        // EDNS versions after 0 get BADVERS (forwarded queries too, as hickory's catalog does).
        if request.edns.as_ref().is_some_and(|e| e.version() > 0) {
            return here(reply_code(request, rh, ResponseCode::BADVERS, ra).await);
        }
        let answer =
            self.zone
                .load()
                .answer(info.query.name(), info.query.query_type(), &self.view);
        match answer {
            // Our names exist in class IN only (as Knot and dnsmasq answer).
            Answer::Authoritative { .. } if info.query.query_class() != DNSClass::IN => {
                here(reply_code(request, rh, ResponseCode::Refused, ra).await)
            }
            Answer::Authoritative {
                code,
                answers,
                authority,
            } => {
                let mut md = Metadata::response_from_request(&request.metadata);
                md.authoritative = true;
                md.response_code = code;
                md.recursion_available = ra;
                let edns = answer_edns(request, code);
                let mut builder = MessageResponseBuilder::from_message_request(request);
                if let Some(edns) = &edns {
                    builder.edns(edns);
                }
                let resp =
                    builder.build(md, answers.iter(), authority.iter(), [].iter(), [].iter());
                here(send(request, &mut rh, resp).await)
            }
            Answer::NotOurs if !recursion => {
                here(reply_code(request, rh, ResponseCode::Refused, false).await)
            }
            Answer::NotOurs => match &self.forward {
                Some(catalog) => {
                    let Ok(_permit) = self.forwarding.try_acquire() else {
                        tracing::debug!(
                            src = %request.src(),
                            "{MAX_FORWARDING} DNS queries are being forwarded: one more dropped"
                        );
                        return (not_sent(request, ResponseCode::Refused), Way::Dropped);
                    };
                    let info = catalog.handle_request::<R, T>(request, rh).await;
                    (info, Way::Forwarded)
                }
                None => here(reply_code(request, rh, ResponseCode::ServFail, false).await),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_listed_askers_may_recurse() {
        let nets: Vec<IpNet> = vec!["127.0.0.0/8".parse().unwrap(), "::1/128".parse().unwrap()];
        assert!(allowed(&nets, "127.0.0.1".parse().unwrap()));
        assert!(allowed(&nets, "127.9.9.9".parse().unwrap()));
        assert!(allowed(&nets, "::1".parse().unwrap()));
        assert!(
            allowed(&nets, "::ffff:127.0.0.1".parse().unwrap()),
            "v4-mapped loopback"
        );
        assert!(!allowed(&nets, "192.0.2.7".parse().unwrap()));
        assert!(!allowed(&nets, "::ffff:192.0.2.7".parse().unwrap()));
        assert!(!allowed(&nets, "2001:db8::1".parse().unwrap()));
    }
}

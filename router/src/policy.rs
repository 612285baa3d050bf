//! The routing policy, one for both HTTP fronts: which route a request takes (or an HTTPS
//! redirect, or none), what `X-Forwarded-*` the upstream gets, whether a request is coming back
//! around a loop, and the two log lines every request may leave (the access line and the
//! upstream-failure warning).
//!
//! The HTTP/1.1 front (`h1`) and Pingora's pipeline ([`HostRouter`](crate::HostRouter)) read
//! requests their own way (bytes in a buffer, a parsed header map); both ask this type, so a
//! request gets the same answer whichever front serves it. It is sans-io: it loads the current
//! [`RouteTable`] and nothing else.
//!
//! ```text
//!   authority, tls ──decide──▶ Forward(route) │ RedirectHttps { route, port } │ NoRoute
//!   peer, tls, client's X-Forwarded-* ──forwarded──▶ Forwarded { for_, proto, host }
//! ```

use std::fmt::Display;
use std::io::Write as _;
use std::net::IpAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;
use ipnet::IpNet;

use crate::inspect::Inspector;
use crate::pages::{self, Page};
use crate::{Route, RouteTable, Unavailable};

/// Routes, trusted proxies and HTTPS redirects, shared by both fronts (cheap to clone).
#[derive(Clone)]
pub(crate) struct RoutingPolicy {
    routes: Arc<ArcSwap<RouteTable>>,
    /// Clients whose own `X-Forwarded-*` headers are extended rather than replaced.
    trusted_proxies: Vec<IpNet>,
    /// Where redirects to HTTPS point; none without an HTTPS listener.
    https_port: Option<u16>,
    /// This proxy's `Via` entry (`1.1 itproxy-<random>`): a request that carries it already
    /// has been here, so its route loops.
    via: Arc<str>,
    /// Where every request either front answers is recorded.
    inspector: Arc<Inspector>,
    /// Names the daemon serves itself (the dashboard), taken when the table has no route for
    /// them: they are no route of the user's (not listed, not persisted, not reloaded).
    own: Arc<RouteTable>,
}

/// Where a request goes.
#[derive(Debug)]
pub(crate) enum Decision {
    /// To this route's upstream.
    Forward(Arc<Route>),
    /// Answered with a permanent redirect to the same host and path over HTTPS, on `port`.
    RedirectHttps { route: Arc<Route>, port: u16 },
    /// Nowhere: no route has this host (answered 404 with the known routes).
    NoRoute,
    /// Nowhere for now: the host is a declared app's that is not serving (answered 503).
    Unavailable(Arc<Unavailable>),
}

/// The `X-Forwarded-*` headers a client sent, as far as the policy needs them.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Incoming<'a> {
    /// Its `X-Forwarded-For` value (several lines joined with ", ", in order).
    pub(crate) forwarded_for: Option<&'a [u8]>,
    /// Whether it sent `X-Forwarded-Proto`.
    pub(crate) forwarded_proto: bool,
    /// Whether it sent `X-Forwarded-Host`.
    pub(crate) forwarded_host: bool,
    /// The host it asked for (the Host header, or the URI's authority).
    pub(crate) host: Option<&'a [u8]>,
}

/// What becomes of one request header on its way upstream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Rewrite<T> {
    /// The client's own, as it sent it (a trusted proxy's).
    Keep,
    /// Ours, replacing any the client sent.
    Set(T),
    /// None at all, whatever the client sent.
    Remove,
}

impl<T> Rewrite<T> {
    /// The same rewrite with `f` applied to the value it sets.
    pub(crate) fn map<U>(self, f: impl FnOnce(T) -> U) -> Rewrite<U> {
        match self {
            Rewrite::Keep => Rewrite::Keep,
            Rewrite::Set(v) => Rewrite::Set(f(v)),
            Rewrite::Remove => Rewrite::Remove,
        }
    }
}

/// The `X-Forwarded-For` value the upstream gets: a trusted proxy's chain, then the client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ForwardedFor<'a> {
    /// What a trusted proxy said before us (its `X-Forwarded-For` lines, as one list).
    pub(crate) chain: Option<&'a [u8]>,
    /// The address the connection comes from.
    pub(crate) client: IpAddr,
}

impl ForwardedFor<'_> {
    /// Appends the value (`chain, client` or `client`) to `out`.
    pub(crate) fn write_to(&self, out: &mut Vec<u8>) {
        if let Some(chain) = self.chain {
            out.extend_from_slice(chain);
            out.extend_from_slice(b", ");
        }
        let _ = write!(out, "{}", self.client);
    }
}

/// The `X-Forwarded-*` headers the upstream gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Forwarded<'a> {
    /// `X-Forwarded-For`: never the client's alone (`Keep` is not used).
    pub(crate) for_: Rewrite<ForwardedFor<'a>>,
    /// `X-Forwarded-Proto`: `http` or `https`, unless a trusted proxy said.
    pub(crate) proto: Rewrite<&'static str>,
    /// `X-Forwarded-Host`: the requested host, unless a trusted proxy said.
    pub(crate) host: Rewrite<&'a [u8]>,
}

impl RoutingPolicy {
    /// A policy over `routes`; see [`HostRouter::new`](crate::HostRouter::new).
    pub(crate) fn new(
        routes: Arc<ArcSwap<RouteTable>>,
        trusted_proxies: Vec<IpNet>,
        https_port: Option<u16>,
    ) -> Self {
        use std::hash::{BuildHasher, Hasher};
        // Random per process, so two itproxy instances chained on purpose are no loop.
        let id = std::collections::hash_map::RandomState::new()
            .build_hasher()
            .finish() as u32;
        RoutingPolicy {
            routes,
            trusted_proxies,
            https_port,
            via: format!("1.1 itproxy-{id:08x}").into(),
            inspector: Arc::default(),
            own: Arc::default(),
        }
    }

    /// The same policy, serving `own` routes (the daemon's own names) where the table has
    /// none.
    pub(crate) fn with_own_routes(mut self, own: Arc<RouteTable>) -> Self {
        self.own = own;
        self
    }

    /// The same policy, recording requests in `inspector`.
    pub(crate) fn with_inspector(mut self, inspector: Arc<Inspector>) -> Self {
        self.inspector = inspector;
        self
    }

    /// Where requests are recorded.
    pub(crate) fn inspector(&self) -> &Inspector {
        &self.inspector
    }

    /// Where a request for `authority` (a Host header or a URI authority) goes, on a
    /// connection that is (`tls`) or is not encrypted.
    pub(crate) fn decide(&self, authority: &str, tls: bool) -> Decision {
        let table = self.routes.load();
        let route = match table.lookup(authority) {
            Some(route) => route.clone(),
            None => {
                return match (table.unavailable(authority), self.own.lookup(authority)) {
                    (Some(u), _) => Decision::Unavailable(u.clone()),
                    (None, Some(own)) => Decision::Forward(own.clone()),
                    (None, None) => Decision::NoRoute,
                }
            }
        };
        match (route.redirects_https(), self.https_port) {
            (true, Some(port)) if !tls => Decision::RedirectHttps { route, port },
            _ => Decision::Forward(route),
        }
    }

    /// The 404 page for `host`, listing the routes there are.
    pub(crate) fn no_route_page(&self, host: &str) -> Page {
        Page::NoRoute {
            host: host.to_string(),
            known: pages::known_routes(&self.routes.load()),
        }
    }

    /// The `X-Forwarded-*` headers for a request from `peer` (none when unknown) on a
    /// connection that is (`tls`) or is not encrypted. A trusted proxy's `X-Forwarded-For` is
    /// extended and its `X-Forwarded-Proto` and `X-Forwarded-Host` kept; everyone else's are
    /// replaced.
    pub(crate) fn forwarded<'a>(
        &self,
        peer: Option<IpAddr>,
        tls: bool,
        incoming: Incoming<'a>,
    ) -> Forwarded<'a> {
        let trusted = self.is_trusted(peer);
        let for_ = match peer {
            Some(client) => Rewrite::Set(ForwardedFor {
                chain: incoming.forwarded_for.filter(|_| trusted),
                client,
            }),
            None => Rewrite::Remove,
        };
        let proto = if trusted && incoming.forwarded_proto {
            Rewrite::Keep
        } else {
            Rewrite::Set(if tls { "https" } else { "http" })
        };
        let host = match incoming.host {
            _ if trusted && incoming.forwarded_host => Rewrite::Keep,
            Some(host) => Rewrite::Set(host),
            None => Rewrite::Remove,
        };
        Forwarded { for_, proto, host }
    }

    /// Whether a client at `ip` may pass its own `X-Forwarded-*` headers.
    fn is_trusted(&self, ip: Option<IpAddr>) -> bool {
        match ip {
            Some(ip) => self.trusted_proxies.iter().any(|n| n.contains(&ip)),
            None => false,
        }
    }

    /// The `Via` entry this proxy adds to every request it forwards.
    pub(crate) fn via(&self) -> &str {
        &self.via
    }

    /// Whether a request with these `Via` values passed through this proxy before (its own
    /// entry): its route loops back to us.
    pub(crate) fn passed_here<'h>(&self, mut via: impl Iterator<Item = &'h [u8]>) -> bool {
        let token = &self.via.as_bytes()[4..];
        via.any(|value| value.windows(token.len()).any(|w| w == token))
    }

    /// Whether the access line is logged (`itproxy::access` at debug): checked before its
    /// fields are gathered, so nothing is kept for it otherwise.
    pub(crate) fn access_log_enabled() -> bool {
        tracing::enabled!(target: "itproxy::access", tracing::Level::DEBUG)
    }

    /// The access line of one request, the same from both fronts.
    pub(crate) fn log_access(
        method: &dyn Display,
        uri: &dyn Display,
        host: Option<&str>,
        status: u16,
    ) {
        tracing::debug!(
            target: "itproxy::access",
            method = %method,
            uri = %uri,
            host,
            status,
        );
    }

    /// The warning for a request that failed upstream (Pingora's own error log is silenced
    /// by default; this line says the same once), the same from both fronts.
    pub(crate) fn log_upstream_failure(route: Option<&Route>, status: u16, error: &pingora::Error) {
        tracing::warn!(
            host = route.map(|r| tracing::field::display(r.host())),
            target = route.map(|r| tracing::field::display(r.upstream().spec())),
            status,
            error = %error,
            "upstream request failed"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{HostName, Upstream, UpstreamSpec};

    fn policy(https_port: Option<u16>) -> RoutingPolicy {
        let route = |host: &str, target: &str, redirect: bool| {
            let spec = UpstreamSpec::parse(target).unwrap();
            let addr = format!("127.0.0.1:{}", spec.port()).parse().unwrap();
            let upstream = Upstream::new(spec, vec![addr], 1, &Default::default());
            Route::new(HostName::parse(host).unwrap(), Arc::new(upstream))
                .with_redirect_https(redirect)
        };
        let table = RouteTable::new([
            route("api.test", "127.0.0.1:8000", false),
            route("shop.test", "127.0.0.1:9000", true),
        ]);
        let trusted = vec!["10.0.0.0/8".parse().unwrap()];
        RoutingPolicy::new(Arc::new(ArcSwap::from_pointee(table)), trusted, https_port)
    }

    /// What a decision says, in a form a table can hold.
    fn decision(d: Decision) -> String {
        match d {
            Decision::Forward(route) => format!("forward {}", route.upstream().spec()),
            Decision::RedirectHttps { route, port } => format!("redirect {}:{port}", route.host()),
            Decision::NoRoute => "no route".to_string(),
            Decision::Unavailable(u) => format!("unavailable: {}", u.reason()),
        }
    }

    #[test]
    fn decisions() {
        for (https_port, authority, tls, expected) in [
            (None, "api.test", false, "forward http://127.0.0.1:8000"),
            (
                Some(443),
                "API.Test:80",
                false,
                "forward http://127.0.0.1:8000",
            ),
            (
                Some(443),
                "api.test.",
                true,
                "forward http://127.0.0.1:8000",
            ),
            // A redirecting route redirects plain HTTP, and only with an HTTPS listener.
            (Some(8443), "shop.test", false, "redirect shop.test:8443"),
            (Some(443), "Shop.test:8080", false, "redirect shop.test:443"),
            (
                Some(443),
                "shop.test",
                true,
                "forward http://127.0.0.1:9000",
            ),
            (None, "shop.test", false, "forward http://127.0.0.1:9000"),
            (Some(443), "nowhere.test", false, "no route"),
            (Some(443), "", false, "no route"),
            (Some(443), "x.api.test", true, "no route"),
        ] {
            let got = decision(policy(https_port).decide(authority, tls));
            assert_eq!(
                got, expected,
                "{authority:?} tls={tls} https={https_port:?}"
            );
        }
    }

    #[test]
    fn forwarded_headers() {
        let ip = |s: &str| -> IpAddr { s.parse().unwrap() };
        let client = ip("192.0.2.1");
        let proxy = ip("10.1.2.3");
        let sent = Incoming {
            forwarded_for: Some(b"203.0.113.7"),
            forwarded_proto: true,
            forwarded_host: true,
            host: Some(b"api.test"),
        };
        let bare = Incoming {
            host: Some(b"api.test"),
            ..Incoming::default()
        };
        let ours =
            |chain: Option<&'static [u8]>, client| Rewrite::Set(ForwardedFor { chain, client });
        let host = Rewrite::Set(&b"api.test"[..]);
        for (peer, tls, incoming, expected) in [
            // An untrusted client's claims are replaced.
            (
                Some(client),
                false,
                sent,
                (ours(None, client), Rewrite::Set("http"), host),
            ),
            (
                Some(client),
                true,
                bare,
                (ours(None, client), Rewrite::Set("https"), host),
            ),
            // A trusted proxy's chain is extended, its proto and host kept.
            (
                Some(proxy),
                false,
                sent,
                (
                    ours(Some(b"203.0.113.7"), proxy),
                    Rewrite::Keep,
                    Rewrite::Keep,
                ),
            ),
            // A trusted proxy that said nothing gets ours.
            (
                Some(proxy),
                true,
                bare,
                (ours(None, proxy), Rewrite::Set("https"), host),
            ),
            // Without the client's address there is no X-Forwarded-For; without a host, no
            // X-Forwarded-Host.
            (
                None,
                false,
                Incoming::default(),
                (Rewrite::Remove, Rewrite::Set("http"), Rewrite::Remove),
            ),
            (
                None,
                false,
                sent,
                (Rewrite::Remove, Rewrite::Set("http"), host),
            ),
        ] {
            let f = policy(None).forwarded(peer, tls, incoming);
            assert_eq!((f.for_, f.proto, f.host), expected, "{peer:?} {incoming:?}");
        }
        let mut out = Vec::new();
        ForwardedFor {
            chain: Some(b"203.0.113.7"),
            client: ip("2001:db8::1"),
        }
        .write_to(&mut out);
        assert_eq!(out, b"203.0.113.7, 2001:db8::1");
    }

    #[test]
    fn only_our_own_via_entry_is_a_loop() {
        let p = policy(None);
        assert!(p.via().starts_with("1.1 itproxy-"));
        assert!(p.passed_here([b"1.0 fred, ".as_slice(), p.via().as_bytes()].into_iter()));
        let other = policy(None);
        assert!(!p.passed_here([other.via().as_bytes()].into_iter()));
        assert!(!p.passed_here(std::iter::empty()));
    }
}

//! The route table: host name to upstream, immutable once published.

use std::sync::Arc;

use crate::{HostName, Upstream};

/// One route: requests for `host` go to `upstream`.
#[derive(Debug)]
pub struct Route {
    host: HostName,
    upstream: Arc<Upstream>,
    redirect_https: bool,
}

impl Route {
    /// A route from `host` to `upstream`.
    pub fn new(host: HostName, upstream: Arc<Upstream>) -> Self {
        Route {
            host,
            upstream,
            redirect_https: false,
        }
    }

    /// Answer plain-HTTP requests with a permanent redirect to HTTPS (when an HTTPS listener
    /// exists) instead of proxying them.
    pub fn with_redirect_https(mut self, redirect: bool) -> Self {
        self.redirect_https = redirect;
        self
    }

    /// Whether plain-HTTP requests are redirected to HTTPS.
    pub fn redirects_https(&self) -> bool {
        self.redirect_https
    }

    /// The host name this route serves.
    pub fn host(&self) -> &HostName {
        &self.host
    }

    /// Where its requests go.
    pub fn upstream(&self) -> &Arc<Upstream> {
        &self.upstream
    }
}

/// A host that belongs to a declared app which is not serving now (starting, restarting,
/// stopped, failed): answered 503 saying why, instead of 404 "no route".
#[derive(Debug)]
pub struct Unavailable {
    host: HostName,
    reason: String,
}

impl Unavailable {
    /// The host.
    pub fn host(&self) -> &HostName {
        &self.host
    }

    /// Why nothing serves it, for the person: "app web is restarting".
    pub fn reason(&self) -> &str {
        &self.reason
    }
}

/// An immutable set of routes, looked up by host name on every request.
///
/// The daemon publishes a new table for every change with one `ArcSwap::store`; the proxy only
/// ever `load()`s it, so lookups take no lock and a swap is visible to the next request.
/// The maps are persistent (hash array mapped tries): a clone shares everything with its
/// original and [`RouteTable::insert`] copies only the path to one entry, so a change costs the
/// same at 10 routes as at 100,000 instead of a rebuild of the whole table.
#[derive(Debug, Default, Clone)]
pub struct RouteTable {
    routes: imbl::HashMap<Arc<str>, Arc<Route>>,
    unavailable: imbl::HashMap<Arc<str>, Arc<Unavailable>>,
}

impl RouteTable {
    /// Builds a table; a later route for the same host replaces an earlier one.
    pub fn new(routes: impl IntoIterator<Item = Route>) -> Self {
        let mut table = RouteTable::default();
        for r in routes {
            table.insert(r);
        }
        table
    }

    /// The same table with hosts that are known but not served now, each with why; a host
    /// that has a route is served, whatever this says of it.
    pub fn with_unavailable(mut self, hosts: impl IntoIterator<Item = (HostName, String)>) -> Self {
        self.unavailable = imbl::HashMap::new();
        for (host, reason) in hosts {
            self.set_unavailable(host, Some(reason));
        }
        self
    }

    /// Adds `route`, replacing the host's route if it had one (and any reason it was
    /// unavailable).
    pub fn insert(&mut self, route: Route) {
        let key: Arc<str> = Arc::from(route.host.as_str());
        self.unavailable.remove(&*key);
        self.routes.insert(key, Arc::new(route));
    }

    /// Removes `host`'s route, if it has one.
    pub fn remove(&mut self, host: &HostName) {
        self.routes.remove(host.as_str());
    }

    /// Says why `host` is not served now (`None`: it is simply unknown). Ignored while the
    /// host has a route.
    pub fn set_unavailable(&mut self, host: HostName, reason: Option<String>) {
        match reason {
            Some(reason) if !self.routes.contains_key(host.as_str()) => {
                let key = Arc::from(host.as_str());
                self.unavailable
                    .insert(key, Arc::new(Unavailable { host, reason }));
            }
            _ => {
                self.unavailable.remove(host.as_str());
            }
        }
    }

    /// Why a request host without a route is not served now, if it is a known one.
    pub fn unavailable(&self, host: &str) -> Option<&Arc<Unavailable>> {
        let host = crate::host::request_host(host)?;
        if host.bytes().any(|b| b.is_ascii_uppercase()) {
            self.unavailable.get(host.to_ascii_lowercase().as_str())
        } else {
            self.unavailable.get(host)
        }
    }

    /// The route for a request host, case-insensitively, ignoring a port and a trailing dot
    /// (`API.test:8080.` finds `api.test`).
    pub fn lookup(&self, host: &str) -> Option<&Arc<Route>> {
        let host = crate::host::request_host(host)?;
        if host.bytes().any(|b| b.is_ascii_uppercase()) {
            self.routes.get(host.to_ascii_lowercase().as_str())
        } else {
            self.routes.get(host)
        }
    }

    /// Number of routes.
    pub fn len(&self) -> usize {
        self.routes.len()
    }

    /// Whether there are no routes.
    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }

    /// The routes, sorted by host name.
    pub fn routes(&self) -> Vec<&Arc<Route>> {
        let mut all: Vec<_> = self.routes.values().collect();
        all.sort_by(|a, b| a.host.cmp(&b.host));
        all
    }
}

/// Two tables are the same when they send every host to the same upstream (the same
/// [`Upstream`], not an equal one: its pooled connections are part of it) with the same
/// redirect, and give the same reasons for the hosts they do not serve.
impl PartialEq for RouteTable {
    fn eq(&self, other: &Self) -> bool {
        let same_route = |a: &Arc<Route>, b: &Arc<Route>| {
            a.host == b.host
                && Arc::ptr_eq(&a.upstream, &b.upstream)
                && a.redirect_https == b.redirect_https
        };
        self.routes.len() == other.routes.len()
            && self.unavailable.len() == other.unavailable.len()
            && self
                .routes
                .iter()
                .all(|(h, r)| other.routes.get(h).is_some_and(|o| same_route(r, o)))
            && self.unavailable.iter().all(|(h, u)| {
                other
                    .unavailable
                    .get(h)
                    .is_some_and(|o| o.reason == u.reason)
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{UpstreamOptions, UpstreamSpec};

    fn route(host: &str, target: &str) -> Route {
        let spec = UpstreamSpec::parse(target).unwrap();
        let addr = format!("127.0.0.1:{}", spec.port()).parse().unwrap();
        let up = Upstream::new(spec, vec![addr], 1, &UpstreamOptions::default());
        Route::new(HostName::parse(host).unwrap(), Arc::new(up))
    }

    #[test]
    fn lookup_ignores_case_port_and_trailing_dot() {
        let t = RouteTable::new([route("api.test", "localhost:8000")]);
        for h in [
            "api.test",
            "API.Test",
            "api.test:80",
            "api.test.",
            "Api.test.:8443",
        ] {
            let r = t.lookup(h).unwrap_or_else(|| panic!("{h}"));
            assert_eq!(r.upstream().spec().port(), 8000);
        }
        for h in ["web.test", "", ":80", "api.test.x", "x.api.test"] {
            assert!(t.lookup(h).is_none(), "{h}");
        }
    }

    #[test]
    fn later_route_for_same_host_wins_and_listing_is_sorted() {
        let t = RouteTable::new([
            route("web.test", "localhost:1"),
            route("api.test", "localhost:2"),
            route("web.test", "localhost:3"),
        ]);
        assert_eq!(t.len(), 2);
        let hosts: Vec<_> = t.routes().iter().map(|r| r.host().to_string()).collect();
        assert_eq!(hosts, ["api.test", "web.test"]);
        assert_eq!(t.lookup("web.test").unwrap().upstream().spec().port(), 3);
    }

    #[test]
    fn a_known_host_without_a_route_says_why_unless_it_is_routed() {
        let t = RouteTable::new([route("api.test", "localhost:1")]).with_unavailable([
            (
                HostName::parse("web.test").unwrap(),
                "app web is stopped".into(),
            ),
            (
                HostName::parse("api.test").unwrap(),
                "app api is starting".into(),
            ),
        ]);
        assert_eq!(
            t.unavailable("WEB.test:80").unwrap().reason(),
            "app web is stopped"
        );
        assert!(t.unavailable("api.test").is_none(), "routed, so served");
        assert!(t.unavailable("other.test").is_none());
    }

    #[test]
    fn a_changed_copy_leaves_the_published_table_as_it_was() {
        let published = RouteTable::new([route("api.test", "localhost:1")]);
        let mut next = published.clone();
        next.insert(route("api.test", "localhost:2"));
        next.insert(route("web.test", "localhost:3"));
        next.set_unavailable(
            HostName::parse("worker.test").unwrap(),
            Some("app worker is starting".into()),
        );
        assert_eq!(published.len(), 1);
        assert_eq!(
            published
                .lookup("api.test")
                .unwrap()
                .upstream()
                .spec()
                .port(),
            1
        );
        assert!(published.unavailable("worker.test").is_none());
        assert_eq!(next.lookup("api.test").unwrap().upstream().spec().port(), 2);
        assert_eq!(next.len(), 2);
        next.remove(&HostName::parse("api.test").unwrap());
        assert!(next.lookup("api.test").is_none());
        assert!(published.lookup("api.test").is_some());
        assert_ne!(published, next);
        // A route wins over a reason; a reason set on a routed host is ignored.
        next.set_unavailable(HostName::parse("web.test").unwrap(), Some("x".into()));
        assert!(next.unavailable("web.test").is_none());
        next.insert(route("worker.test", "localhost:4"));
        assert!(next.unavailable("worker.test").is_none());
    }

    #[test]
    fn empty_table_finds_nothing() {
        let t = RouteTable::default();
        assert!(t.is_empty());
        assert!(t.lookup("api.test").is_none());
    }
}

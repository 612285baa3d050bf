//! The desired state and the one way it changes.
//!
//! ```text
//!   config file ─┐
//!   routes.log ──┤                          ┌─> Snapshot.table ─> proxy  (ArcSwap, first)
//!   API ─────────┼─> Change ─> DesiredState ┤
//!   discovery ───┤      apply()             └─> Snapshot.zone  ─> DNS    (ArcSwap, second)
//!   apps ────────┘
//! ```
//!
//! [`DesiredState`] holds every source of routes: the config's declared routes, the apps'
//! endpoints, labelled containers, and the overrides set through the API (the only part that is
//! persisted). Precedence, lowest first: declared < app < container < override; an override
//! may also remove a host. A [`Change`] is the only way to alter it ([`DesiredState::apply`]),
//! and [`DesiredState::snapshot`] derives the route table and the DNS zone from it together, so
//! the two cannot disagree. [`StateHandle`] is the shared, locked copy the daemon's tasks use:
//! it applies, persists when the overrides changed, then publishes.
//!
//! The model does no I/O: targets are resolved before a change is built, and persistence is
//! the handle's. That is what lets `tests.rs` pin precedence, restore and generations without
//! a binary or Docker.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use itproxy_orchestrator::AppName;
use itproxy_router::{HostName, Route, RouteTable, Upstream, UpstreamOptions, UpstreamSpec};

use crate::api::{self, RouteSource, RouteView};
use crate::config::{Domains, RouteSpec, Timeouts};
use crate::persist::{Override, Overrides};

mod handle;
#[cfg(test)]
mod tests;

pub use handle::StateHandle;

/// What went wrong with a change; the control API maps each to a status and a stable code.
#[derive(Debug, thiserror::Error)]
pub enum ChangeError {
    /// A route name that is not a host name below the configured domains.
    #[error("invalid route name {name:?}: {reason}")]
    InvalidName {
        /// The name as given.
        name: String,
        /// Why it is refused.
        reason: String,
    },
    /// A target that cannot be parsed.
    #[error("{0}")]
    InvalidTarget(String),
    /// A target whose host name does not resolve.
    #[error("{0}; check the host name, or use an IP address")]
    Unresolvable(String),
    /// A target that is one of itproxy's own listeners.
    #[error(
        "{target} ({addr}) is itproxy's own listener {listener}: every request would come back \
         to itproxy itself; route to the service's address instead"
    )]
    RouteToItself {
        /// The target as given.
        target: String,
        /// The address it resolved to.
        addr: SocketAddr,
        /// The listener it hits.
        listener: SocketAddr,
    },
    /// No route for this host.
    #[error("there is no route for {0}; `itproxy routes` lists them")]
    NoRoute(HostName),
    /// A restore of a host that has only an override.
    #[error(
        "{0} has no declared target to go back to (it is not in the config file, not a running \
         app's endpoint, nor a running labelled container); remove it with `itproxy unroute {0}`"
    )]
    NothingToRestore(HostName),
    /// The overrides could not be written; nothing changed.
    #[error("the change was not applied: {0}")]
    Persist(#[from] crate::persist::StateError),
    /// One change of a batch was refused, so none was applied.
    #[error("{name}: {error}; none of the changes was applied")]
    InBatch {
        /// The route name the refused change was for.
        name: String,
        /// Why it was refused.
        error: Box<ChangeError>,
    },
}

/// One change to the desired state. Targets come resolved: the model does no I/O.
#[derive(Debug, Clone)]
pub enum Change {
    /// Route a host to a target (an override, persisted), over whatever else routes it.
    SetRoute {
        /// The host.
        host: HostName,
        /// Its target and options.
        spec: RouteSpec,
        /// The target's addresses.
        addrs: Vec<SocketAddr>,
    },
    /// Remove a host's route, whatever routes it (persisted).
    Unroute {
        /// The host.
        host: HostName,
    },
    /// Drop a host's override: it goes back to its declared, app or container route.
    Restore {
        /// The host.
        host: HostName,
    },
    /// A labelled container runs: its host routes to it (not persisted: the container is the
    /// state).
    ContainerUp {
        /// The container's id.
        id: String,
        /// Its `itproxy.host` label, qualified.
        host: HostName,
        /// Its address and `itproxy.port`.
        addr: SocketAddr,
    },
    /// A labelled container stopped: its routes go.
    ContainerDown {
        /// The container's id.
        id: String,
    },
    /// An app's containers are ready: its endpoints replace whatever it published before.
    AppUp {
        /// The app.
        app: AppName,
        /// Its endpoints with their containers' addresses.
        endpoints: Vec<(HostName, Endpoint)>,
    },
    /// An app stopped: its routes and names go.
    AppDown {
        /// The app.
        app: AppName,
    },
    /// The config file's routes, read again (`itproxy reload`): they replace the declared
    /// routes; one whose spec did not change keeps its upstream (and pooled connections).
    Declared {
        /// Every declared route, its target resolved.
        routes: Vec<(HostName, RouteSpec, Vec<SocketAddr>)>,
    },
    /// A declared app's HTTP endpoint names, as the config now says (`itproxy reload`): none
    /// when the app is no longer declared (its state is forgotten too).
    AppNames {
        /// The app.
        app: AppName,
        /// Its endpoints' names.
        hosts: Vec<HostName>,
    },
    /// A mock in front of a host's route (`route --record` / `--mock`: a loopback server of
    /// the daemon's), or none: it wins over every other source and is not persisted.
    Mock {
        /// The host.
        host: HostName,
        /// What the mock does and where its server listens; none removes it.
        mock: Option<(api::MockView, SocketAddr)>,
    },
    /// What a declared app is doing, said to clients of its names while it serves none
    /// ("is starting", "is stopped; ..."): not persisted.
    AppStatus {
        /// The app.
        app: AppName,
        /// Its state, as the rest of "app NAME ...".
        status: String,
    },
}

/// Where an app's endpoint is reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// An HTTP endpoint: its name routes through the proxy to this address.
    Http(SocketAddr),
    /// A TCP endpoint: its name resolves to the container itself.
    Tcp(IpAddr),
}

/// What a change did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// The state changed and must be published.
    Changed,
    /// Nothing to do (e.g. a container that was not routed stopped, or a restore of a host
    /// with no override).
    Unchanged,
}

/// The routes and names in force, derived once per change from the desired state.
pub struct Snapshot {
    /// What the proxy routes.
    pub table: RouteTable,
    /// What the DNS server answers.
    pub zone: itproxy_dns::Zone,
}

/// A route's spec and the upstream built from it (with its own generation).
#[derive(Clone)]
pub struct BuiltRoute {
    spec: RouteSpec,
    upstream: Arc<Upstream>,
}

/// An override: a route set through the API, or the host's route removed.
#[derive(Clone)]
enum OverrideState {
    Target(BuiltRoute),
    Removed,
}

/// Every source of routes, and the defaults new upstreams are built with.
#[derive(Clone)]
pub struct DesiredState {
    domains: Domains,
    defaults: Timeouts,
    dns_ttl: u32,
    declared: BTreeMap<HostName, BuiltRoute>,
    /// Labelled containers' routes, with the containers' ids.
    discovered: BTreeMap<HostName, (String, BuiltRoute)>,
    /// Apps' HTTP endpoints, with their app.
    apps: BTreeMap<HostName, (AppName, BuiltRoute)>,
    /// Apps' TCP endpoints: names that resolve to the container itself.
    direct: BTreeMap<HostName, (AppName, IpAddr)>,
    /// Mocks in front of routes, with what they do: over every other source.
    mocks: BTreeMap<HostName, (api::MockView, BuiltRoute)>,
    /// Every declared app's HTTP endpoint names: they resolve to the proxy and, while the app
    /// serves none (starting, restarting, stopped), are answered 503 saying why, not 404.
    app_hosts: BTreeMap<HostName, AppName>,
    /// What each declared app is doing, for those answers.
    app_status: BTreeMap<AppName, String>,
    overrides: BTreeMap<HostName, OverrideState>,
    /// Bumped for every upstream built, so pooled connections never cross routes' lives; also
    /// the zone's serial.
    generation: u64,
    /// The routes in force, kept up to date host by host as changes touch them: a change
    /// costs the hosts it touched, not the size of the table (persistent maps make the
    /// published copy cheap).
    table: RouteTable,
    /// The names in force, kept the same way.
    zone: itproxy_dns::Zone,
    /// Names the daemon serves itself (the dashboard's): they resolve to the proxy whatever
    /// the routes say (the proxy takes them where no route does).
    own_names: std::collections::BTreeSet<HostName>,
}

impl DesiredState {
    /// An empty state: routes come from [`DesiredState::declare`] and [`Change`]s.
    pub fn new(domains: Domains, defaults: Timeouts, dns_ttl: u32) -> Self {
        let domains_of_new = domains.clone();
        DesiredState {
            domains,
            defaults,
            dns_ttl,
            declared: BTreeMap::new(),
            discovered: BTreeMap::new(),
            apps: BTreeMap::new(),
            direct: BTreeMap::new(),
            app_hosts: BTreeMap::new(),
            app_status: BTreeMap::new(),
            overrides: BTreeMap::new(),
            mocks: BTreeMap::new(),
            generation: 0,
            table: RouteTable::default(),
            zone: empty_zone(&domains_of_new, dns_ttl),
            own_names: Default::default(),
        }
    }

    /// Resolves `host` to the proxy from now on, whatever the routes say: a name the daemon
    /// serves itself (the dashboard's), which the proxy takes where no route does.
    pub fn serve_own_name(&mut self, host: HostName) {
        self.own_names.insert(host.clone());
        self.refresh(&host);
    }

    /// Names a declared app's HTTP endpoint (at start-up): it is the app's even while the app
    /// does not serve it.
    pub fn declare_app_host(&mut self, host: HostName, app: AppName) {
        self.app_hosts.insert(host.clone(), app);
        self.refresh(&host);
    }

    /// Adds a route from the config file (at start-up only: the config does not change while
    /// the daemon runs).
    pub fn declare(&mut self, host: HostName, spec: RouteSpec, addrs: Vec<SocketAddr>) {
        let built = self.build(spec, addrs);
        self.declared.insert(host.clone(), built);
        self.refresh(&host);
    }

    /// Adds an override read back from the state directory (at start-up only).
    pub fn restore_persisted(&mut self, host: HostName, o: Override, addrs: Vec<SocketAddr>) {
        let state = match o {
            Override::Target(spec) => OverrideState::Target(self.build(spec, addrs)),
            Override::Removed => OverrideState::Removed,
        };
        self.overrides.insert(host.clone(), state);
        self.refresh(&host);
    }

    /// The configured domains.
    pub fn domains(&self) -> &Domains {
        &self.domains
    }

    /// The full host name for a route name given by a person or a label.
    pub fn qualify(&self, name: &str) -> Result<HostName, ChangeError> {
        self.domains
            .qualify(name)
            .map_err(|reason| ChangeError::InvalidName {
                name: name.to_string(),
                reason,
            })
    }

    /// Applies one change. A change to the overrides is handed to `persist` (the host's
    /// override as it became) before it counts: if that fails, the state is as it was and the
    /// error says so. On any error nothing changed.
    pub fn apply(
        &mut self,
        change: Change,
        persist: impl FnOnce(&[(HostName, Option<Override>)]) -> Result<(), crate::persist::StateError>,
    ) -> Result<Applied, ChangeError> {
        match Self::persisted_host(&change) {
            None => self.apply_in_memory(change),
            // A change alone is refused as itself, not as a batch's.
            Some(host) => self
                .apply_batch(vec![(host.to_string(), change)], persist)
                .map_err(|e| match e {
                    ChangeError::InBatch { error, .. } => *error,
                    e => e,
                }),
        }
    }

    /// Applies `changes` to the overrides together: all of them, handed to `persist` in one
    /// call (each touched host's override as it became) and published once, or, on the first
    /// refusal (named by its name), none. A bulk route change then costs one write and one
    /// table, whatever the number of changes; undoing touches only the hosts changed.
    pub fn apply_batch(
        &mut self,
        changes: Vec<(String, Change)>,
        persist: impl FnOnce(&[(HostName, Option<Override>)]) -> Result<(), crate::persist::StateError>,
    ) -> Result<Applied, ChangeError> {
        let generation = self.generation;
        // Each touched host's override before the batch, to undo with.
        let mut before: Vec<(HostName, Option<OverrideState>)> = Vec::new();
        let mut touched: std::collections::BTreeSet<HostName> = std::collections::BTreeSet::new();
        let mut applied = Applied::Unchanged;
        let mut refused = None;
        for (name, change) in changes {
            let Some(host) = Self::persisted_host(&change).cloned() else {
                debug_assert!(false, "a batch holds changes to the overrides only");
                continue;
            };
            if touched.insert(host.clone()) {
                let was = self.overrides.get(&host).cloned();
                before.push((host, was));
            }
            match self.apply_in_memory(change) {
                Ok(Applied::Changed) => applied = Applied::Changed,
                Ok(Applied::Unchanged) => {}
                Err(error) => {
                    refused = Some(ChangeError::InBatch {
                        name,
                        error: Box::new(error),
                    });
                    break;
                }
            }
        }
        let undo = |state: &mut DesiredState, before: Vec<(HostName, Option<OverrideState>)>| {
            for (host, was) in before {
                match was {
                    Some(o) => state.overrides.insert(host.clone(), o),
                    None => state.overrides.remove(&host),
                };
                state.refresh(&host);
            }
            state.generation = generation;
            #[cfg(test)]
            state.check_published();
        };
        if let Some(e) = refused {
            undo(self, before);
            return Err(e);
        }
        if applied == Applied::Changed {
            let entries: Vec<(HostName, Option<Override>)> = before
                .iter()
                .map(|(h, _)| (h.clone(), self.persisted_one(h)))
                .collect();
            if let Err(e) = persist(&entries) {
                undo(self, before);
                return Err(ChangeError::Persist(e));
            }
        }
        Ok(applied)
    }

    /// The host whose override `change` alters, for the changes that are persisted.
    fn persisted_host(change: &Change) -> Option<&HostName> {
        match change {
            Change::SetRoute { host, .. } | Change::Unroute { host } | Change::Restore { host } => {
                Some(host)
            }
            _ => None,
        }
    }

    /// `host`'s override as persisted (None: it has none).
    fn persisted_one(&self, host: &HostName) -> Option<Override> {
        self.overrides.get(host).map(|o| match o {
            OverrideState::Target(r) => Override::Target(r.spec.clone()),
            OverrideState::Removed => Override::Removed,
        })
    }

    /// Applies `change` to its source, then brings the table and the zone up to date for the
    /// hosts it touched.
    fn apply_in_memory(&mut self, change: Change) -> Result<Applied, ChangeError> {
        let touched = self.touched_by(&change);
        let applied = self.change_source(change)?;
        if applied == Applied::Changed {
            match touched {
                Some(hosts) => hosts.iter().for_each(|h| self.refresh(h)),
                None => {
                    self.table = self.rebuilt_table();
                    self.zone = self.rebuilt_zone();
                }
            }
        }
        #[cfg(test)]
        self.check_published();
        Ok(applied)
    }

    /// The hosts whose route, reason or name `change` can alter (`None`: any of them).
    fn touched_by(&self, change: &Change) -> Option<Vec<HostName>> {
        Some(match change {
            Change::SetRoute { host, .. }
            | Change::Unroute { host }
            | Change::Restore { host }
            | Change::Mock { host, .. }
            | Change::ContainerUp { host, .. } => vec![host.clone()],
            Change::ContainerDown { id } => self.hosts_of_container(id),
            Change::AppUp { app, endpoints } => {
                let mut hosts = self.hosts_of_app(app);
                hosts.extend(endpoints.iter().map(|(h, _)| h.clone()));
                hosts
            }
            Change::AppNames { app, hosts: names } => {
                let mut hosts = self.hosts_of_app(app);
                hosts.extend(names.iter().cloned());
                hosts
            }
            Change::AppDown { app } | Change::AppStatus { app, .. } => self.hosts_of_app(app),
            Change::Declared { .. } => return None,
        })
    }

    /// Every host `app` routes, resolves or names.
    fn hosts_of_app(&self, app: &AppName) -> Vec<HostName> {
        let mut hosts: Vec<HostName> = self
            .apps
            .iter()
            .filter(|(_, (a, _))| a == app)
            .map(|(h, _)| h.clone())
            .chain(
                self.direct
                    .iter()
                    .filter(|(_, (a, _))| a == app)
                    .map(|(h, _)| h.clone()),
            )
            .chain(
                self.app_hosts
                    .iter()
                    .filter(|(_, a)| *a == app)
                    .map(|(h, _)| h.clone()),
            )
            .collect();
        hosts.sort_unstable();
        hosts.dedup();
        hosts
    }

    /// Brings the table and the zone up to date for `host`, from every source.
    fn refresh(&mut self, host: &HostName) {
        let route = self.effective_one(host).map(|(r, _)| {
            Route::new(host.clone(), r.upstream.clone()).with_redirect_https(r.spec.redirect_https)
        });
        let waiting = self.waiting_reason(host);
        let direct = self
            .direct
            .get(host)
            .filter(|_| !self.overrides.contains_key(host))
            .map(|(_, ip)| vec![*ip]);
        // An app's names resolve while it restarts too: a client sees 503, not NXDOMAIN.
        let resolves = route.is_some() || waiting.is_some() || self.own_names.contains(host);
        match route {
            Some(route) => self.table.insert(route),
            None => self.table.remove(host),
        }
        self.table.set_unavailable(host.clone(), waiting);
        // HostName only holds names that are valid DNS names.
        self.zone
            .set_routed(host.as_str(), resolves)
            .expect("a host name is a valid DNS name");
        self.zone
            .set_direct(host.as_str(), direct)
            .expect("a host name is a valid DNS name");
    }

    /// Why `host` is answered 503: it is a declared app's name (not removed by hand) and the
    /// app is not serving it.
    fn waiting_reason(&self, host: &HostName) -> Option<String> {
        if matches!(self.overrides.get(host), Some(OverrideState::Removed)) {
            return None;
        }
        let app = self.app_hosts.get(host)?;
        Some(self.reason_of(app))
    }

    fn reason_of(&self, app: &AppName) -> String {
        let status = self
            .app_status
            .get(app)
            .map_or("has not started yet", String::as_str);
        format!("app {app} {status}")
    }

    /// In tests, after every change: the table and the zone kept host by host are the ones a
    /// rebuild from every source gives.
    #[cfg(test)]
    fn check_published(&self) {
        assert!(
            self.table == self.rebuilt_table(),
            "the route table kept by change differs from a rebuild"
        );
        let mut zone = self.zone.clone();
        zone.set_serial(self.generation as u32);
        assert!(
            zone == self.rebuilt_zone(),
            "the zone kept by change differs from a rebuild"
        );
    }

    fn change_source(&mut self, change: Change) -> Result<Applied, ChangeError> {
        match change {
            Change::SetRoute { host, spec, addrs } => {
                let built = self.build(spec, addrs);
                self.overrides.insert(host, OverrideState::Target(built));
            }
            Change::Unroute { host } => {
                let app_host = self.app_hosts.contains_key(&host);
                let waiting =
                    app_host && !matches!(self.overrides.get(&host), Some(OverrideState::Removed));
                if self.view(&host).is_none() && !waiting {
                    return Err(ChangeError::NoRoute(host));
                }
                // Removed for good, even from an app that comes back later.
                if self.base(&host).is_some() || app_host {
                    self.overrides.insert(host, OverrideState::Removed);
                } else {
                    self.overrides.remove(&host);
                }
            }
            Change::Restore { host } => {
                let has_base = self.base(&host).is_some()
                    || self.direct.contains_key(&host)
                    || self.app_hosts.contains_key(&host);
                match (self.overrides.contains_key(&host), has_base) {
                    (false, true) => return Ok(Applied::Unchanged),
                    (false, false) => return Err(ChangeError::NoRoute(host)),
                    (true, false) => return Err(ChangeError::NothingToRestore(host)),
                    (true, true) => {
                        self.overrides.remove(&host);
                    }
                }
            }
            Change::ContainerUp { id, host, addr } => {
                let built = self.build(RouteSpec::to(target_of(addr)), vec![addr]);
                self.discovered.insert(host, (id, built));
            }
            Change::Mock {
                host,
                mock: Some((view, addr)),
            } => {
                let built = self.build(RouteSpec::to(target_of(addr)), vec![addr]);
                self.mocks.insert(host, (view, built));
            }
            Change::Mock { host, mock: None } => {
                if self.mocks.remove(&host).is_none() {
                    return Ok(Applied::Unchanged);
                }
            }
            Change::ContainerDown { id } => {
                let before = self.discovered.len();
                self.discovered.retain(|_, (cid, _)| *cid != id);
                if self.discovered.len() == before {
                    return Ok(Applied::Unchanged);
                }
            }
            Change::AppUp { app, endpoints } => {
                self.remove_app(&app);
                for (host, endpoint) in endpoints {
                    match endpoint {
                        Endpoint::Http(addr) => {
                            let built = self.build(RouteSpec::to(target_of(addr)), vec![addr]);
                            self.apps.insert(host, (app.clone(), built));
                        }
                        Endpoint::Tcp(ip) => {
                            self.direct.insert(host, (app.clone(), ip));
                        }
                    }
                }
            }
            Change::AppDown { app } => {
                self.remove_app(&app);
                // Until the supervisor says more (stopped, restarting...).
                self.app_status.insert(app, "is stopping".into());
            }
            Change::Declared { routes } => {
                let mut declared = BTreeMap::new();
                for (host, spec, addrs) in routes {
                    let built = match self.declared.get(&host) {
                        Some(b) if b.spec == spec => b.clone(),
                        _ => self.build(spec, addrs),
                    };
                    declared.insert(host, built);
                }
                let same = declared.len() == self.declared.len()
                    && declared.iter().all(|(h, b)| {
                        self.declared
                            .get(h)
                            .is_some_and(|old| Arc::ptr_eq(&old.upstream, &b.upstream))
                    });
                if same {
                    return Ok(Applied::Unchanged);
                }
                self.declared = declared;
            }
            Change::AppNames { app, hosts } => {
                let before = self.app_hosts.clone();
                self.app_hosts.retain(|_, a| *a != app);
                for host in &hosts {
                    self.app_hosts.insert(host.clone(), app.clone());
                }
                if hosts.is_empty() {
                    self.remove_app(&app);
                    self.app_status.remove(&app);
                } else if self.app_hosts == before {
                    return Ok(Applied::Unchanged);
                }
            }
            Change::AppStatus { app, status } => {
                if self.app_status.get(&app) == Some(&status) {
                    return Ok(Applied::Unchanged);
                }
                self.app_status.insert(app, status);
            }
        }
        Ok(Applied::Changed)
    }

    /// The table and the zone in force (cheap: they share their maps with the state's).
    pub fn snapshot(&self) -> Snapshot {
        let mut zone = self.zone.clone();
        zone.set_serial(self.generation as u32);
        Snapshot {
            table: self.table.clone(),
            zone,
        }
    }

    /// The overrides as they are persisted.
    pub fn persisted(&self) -> Overrides {
        self.overrides
            .iter()
            .map(|(h, a)| {
                let o = match a {
                    OverrideState::Target(r) => Override::Target(r.spec.clone()),
                    OverrideState::Removed => Override::Removed,
                };
                (h.clone(), o)
            })
            .collect()
    }

    /// One host's route as the API shows it.
    pub fn view(&self, host: &HostName) -> Option<RouteView> {
        let (route, source) = self.effective_one(host)?;
        Some(RouteView {
            host: host.to_string(),
            target: route.spec.target.to_string(),
            source,
            declared: match source {
                RouteSource::Override => self.base(host).map(|d| d.spec.target.to_string()),
                RouteSource::Mock => self
                    .under_mock(host)
                    .map(|(d, _)| d.spec.target.to_string()),
                _ => None,
            },
            redirect_https: route.spec.redirect_https,
            insecure_upstream: route.spec.insecure_upstream,
            addresses: route.upstream.addrs().map(|a| a.to_string()).collect(),
            mock: self.mocks.get(host).map(|(m, _)| m.clone()),
        })
    }

    /// One host's route, or for an app's TCP endpoint (which the proxy does not route) the
    /// container its name resolves to.
    pub fn view_or_endpoint(&self, host: &HostName) -> Option<RouteView> {
        self.view(host).or_else(|| {
            let (_, ip) = self.direct.get(host)?;
            Some(RouteView {
                host: host.to_string(),
                target: ip.to_string(),
                source: RouteSource::App,
                declared: None,
                redirect_https: false,
                insecure_upstream: false,
                addresses: vec![ip.to_string()],
                mock: None,
            })
        })
    }

    /// Every route in force, sorted by host.
    pub fn views(&self) -> Vec<RouteView> {
        self.effective()
            .filter_map(|(h, _, _)| self.view(h))
            .collect()
    }

    /// How many routes are in force.
    pub fn route_count(&self) -> usize {
        self.effective().count()
    }

    /// How many overrides there are.
    pub fn override_count(&self) -> usize {
        self.overrides.len()
    }

    /// The hosts a container's labels route.
    pub fn hosts_of_container(&self, id: &str) -> Vec<HostName> {
        self.discovered
            .iter()
            .filter(|(_, (cid, _))| cid == id)
            .map(|(h, _)| h.clone())
            .collect()
    }

    /// The ids of the containers that have routes.
    pub fn container_ids(&self) -> Vec<String> {
        let ids: std::collections::BTreeSet<&String> =
            self.discovered.values().map(|(id, _)| id).collect();
        ids.into_iter().cloned().collect()
    }

    /// The generation of the latest upstream built.
    #[cfg(test)]
    fn generation(&self) -> u64 {
        self.generation
    }

    fn remove_app(&mut self, app: &AppName) {
        self.apps.retain(|_, (a, _)| a != app);
        self.direct.retain(|_, (a, _)| a != app);
    }

    /// The routes in force, by host: declared, then apps', then containers' over them, then
    /// overrides.
    fn effective(&self) -> impl Iterator<Item = (&HostName, &BuiltRoute, RouteSource)> {
        let mut all: BTreeMap<&HostName, (&BuiltRoute, RouteSource)> = BTreeMap::new();
        for (h, r) in &self.declared {
            all.insert(h, (r, RouteSource::Config));
        }
        for (h, (_, r)) in &self.apps {
            all.insert(h, (r, RouteSource::App));
        }
        for (h, (_, r)) in &self.discovered {
            all.insert(h, (r, RouteSource::Discovered));
        }
        for (h, a) in &self.overrides {
            match a {
                OverrideState::Target(r) => all.insert(h, (r, RouteSource::Override)),
                OverrideState::Removed => all.remove(h),
            };
        }
        for (h, (_, r)) in &self.mocks {
            all.insert(h, (r, RouteSource::Mock));
        }
        all.into_iter().map(|(h, (r, s))| (h, r, s))
    }

    /// One host's route in force, by the same precedence as `effective`.
    fn effective_one(&self, host: &HostName) -> Option<(&BuiltRoute, RouteSource)> {
        if let Some((_, r)) = self.mocks.get(host) {
            return Some((r, RouteSource::Mock));
        }
        self.under_mock(host)
    }

    /// The target of the route a mock stands in front of (or would), and its addresses.
    pub fn target_under_mock(&self, host: &HostName) -> Option<(UpstreamSpec, Vec<SocketAddr>)> {
        self.under_mock(host)
            .map(|(r, _)| (r.spec.target.clone(), r.upstream.addrs().collect()))
    }

    /// The route a mock stands in front of (and `--restore` goes back to): the override,
    /// else a container, an app's endpoint or the config.
    pub fn under_mock(&self, host: &HostName) -> Option<(&BuiltRoute, RouteSource)> {
        match self.overrides.get(host) {
            Some(OverrideState::Target(r)) => Some((r, RouteSource::Override)),
            Some(OverrideState::Removed) => None,
            None => self
                .discovered
                .get(host)
                .map(|(_, r)| (r, RouteSource::Discovered))
                .or_else(|| self.apps.get(host).map(|(_, r)| (r, RouteSource::App)))
                .or_else(|| self.declared.get(host).map(|r| (r, RouteSource::Config))),
        }
    }

    /// What a host goes back to without its override: a container, else an app's endpoint,
    /// else the config.
    fn base(&self, host: &HostName) -> Option<&BuiltRoute> {
        self.discovered
            .get(host)
            .map(|(_, r)| r)
            .or_else(|| self.apps.get(host).map(|(_, r)| r))
            .or_else(|| self.declared.get(host))
    }

    /// The route table built from every source (a change that can touch any host, e.g. the
    /// config's routes read again, and the tests' check of the table kept by change).
    fn rebuilt_table(&self) -> RouteTable {
        RouteTable::new(self.effective().map(|(h, r, _)| {
            Route::new(h.clone(), r.upstream.clone()).with_redirect_https(r.spec.redirect_https)
        }))
        .with_unavailable(
            self.waiting()
                .map(|(h, app)| (h.clone(), self.reason_of(app))),
        )
    }

    /// Declared apps' HTTP endpoint names, but those removed by hand (`unroute`): the table
    /// answers them when nothing routes them, and the zone always has them.
    fn waiting(&self) -> impl Iterator<Item = (&HostName, &AppName)> {
        self.app_hosts
            .iter()
            .filter(|(h, _)| !matches!(self.overrides.get(*h), Some(OverrideState::Removed)))
    }

    /// The DNS view of the same routes, built from every source: every routed host resolves
    /// to the proxy, a TCP endpoint's name to its container (unless an override routes it).
    fn rebuilt_zone(&self) -> itproxy_dns::Zone {
        let domains: Vec<String> = self.domains.iter().map(|d| d.to_string()).collect();
        let mut hosts: Vec<&str> = self.effective().map(|(h, _, _)| h.as_str()).collect();
        // An app's names resolve while it restarts too: a client sees 503, not NXDOMAIN.
        hosts.extend(self.waiting().map(|(h, _)| h.as_str()));
        hosts.extend(self.own_names.iter().map(HostName::as_str));
        hosts.sort_unstable();
        hosts.dedup();
        let direct = self
            .direct
            .iter()
            .filter(|(h, _)| !self.overrides.contains_key(*h))
            .map(|(h, (_, ip))| (h.as_str(), vec![*ip]));
        itproxy_dns::Zone::new(
            domains.iter().map(String::as_str),
            hosts,
            direct,
            self.generation as u32,
            self.dns_ttl,
        )
        // HostName and Domains only hold names that are valid DNS names.
        .expect("validated host names are valid DNS names")
    }

    /// Builds the upstream for `spec` with a fresh generation.
    fn build(&mut self, spec: RouteSpec, addrs: Vec<SocketAddr>) -> BuiltRoute {
        self.generation += 1;
        let options = UpstreamOptions {
            connect_timeout: spec.connect_timeout.unwrap_or(self.defaults.connect),
            read_timeout: spec.read_timeout.unwrap_or(self.defaults.read),
            verify_tls: !spec.insecure_upstream,
        };
        let upstream = Arc::new(Upstream::new(
            spec.target.clone(),
            addrs,
            self.generation,
            &options,
        ));
        BuiltRoute { spec, upstream }
    }
}

/// A zone of `domains` without names yet.
fn empty_zone(domains: &Domains, ttl: u32) -> itproxy_dns::Zone {
    let domains: Vec<String> = domains.iter().map(|d| d.to_string()).collect();
    itproxy_dns::Zone::new(domains.iter().map(String::as_str), [], [], 0, ttl)
        // Domains holds at least one name, each a valid DNS name.
        .expect("validated domains make a zone")
}

/// A container's or app's address as a route target.
fn target_of(addr: SocketAddr) -> itproxy_router::UpstreamSpec {
    itproxy_router::UpstreamSpec::parse(&addr.to_string())
        .expect("a socket address is a valid target")
}

/// For the criterion benchmarks only (`daemon/benches/publish.rs`): a desired state holding
/// `n` routes, and what one more change costs to publish, whole and by part.
#[doc(hidden)]
pub mod bench {
    use super::*;

    /// A desired state with `n` routes set through the API (`r0.test`...).
    pub struct Routes {
        state: DesiredState,
        n: usize,
    }

    fn set(state: &mut DesiredState, i: usize, port: u16) {
        let target = itproxy_router::UpstreamSpec::parse(&format!("127.0.0.1:{port}"))
            .expect("a valid target");
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let change = Change::SetRoute {
            host: HostName::parse(&format!("r{i}.test")).expect("a valid name"),
            spec: RouteSpec::to(target),
            addrs: vec![addr],
        };
        state.apply(change, |_| Ok(())).expect("the change applies");
    }

    impl Routes {
        /// `n` routes under `test`.
        pub fn new(n: usize) -> Routes {
            let domains = Domains::new(vec![HostName::parse("test").expect("a valid name")])
                .expect("one domain");
            let mut state = DesiredState::new(domains, Timeouts::default(), 5);
            for i in 0..n {
                set(&mut state, i, 1000 + (i % 60_000) as u16);
            }
            Routes { state, n }
        }

        /// Changes route `i` and takes what would be published: the table and the zone.
        pub fn change_and_snapshot(&mut self, i: usize) -> Snapshot {
            set(&mut self.state, i % self.n.max(1), 9000 + (i % 2) as u16);
            self.state.snapshot()
        }

        /// The route table built from every source, as every change did before it was kept
        /// host by host (for comparison).
        pub fn rebuilt_table(&self) -> RouteTable {
            self.state.rebuilt_table()
        }

        /// The DNS zone built from every source (for comparison).
        pub fn rebuilt_zone(&self) -> itproxy_dns::Zone {
            self.state.rebuilt_zone()
        }
    }
}

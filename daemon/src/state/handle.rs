//! The daemon's shared copy of the desired state: one lock, one way in ([`StateHandle::apply`]),
//! persistence before acknowledgement, and publication of each change's [`Snapshot`].

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use arc_swap::ArcSwap;
use itproxy_router::{HostName, RouteTable, UpstreamSpec};
use tokio::sync::Mutex;

use super::{Applied, Change, ChangeError, DesiredState, Snapshot};
use crate::api::{self, RouteView};
use crate::config::RouteSpec;

/// The desired state behind a lock, and the published values the proxy and the DNS read.
pub struct StateHandle {
    state: Mutex<DesiredState>,
    table: Arc<ArcSwap<RouteTable>>,
    zone: Arc<ArcSwap<itproxy_dns::Zone>>,
    /// Where the overrides are persisted (`StateDir::routes_file`, and its log beside it).
    routes_file: PathBuf,
    /// The log each change to the overrides is appended to (taken under the state's lock).
    journal: std::sync::Mutex<crate::persist::Journal>,
    /// The proxy's own HTTP and HTTPS sockets, once bound: no route may point at them.
    own_listeners: OnceLock<Vec<SocketAddr>>,
    /// Snapshots published after the first.
    swaps: std::sync::atomic::AtomicU64,
}

impl StateHandle {
    /// Publishes `state`'s first snapshot; changes to the overrides go to `journal`, beside
    /// `routes_file`.
    pub fn new(
        state: DesiredState,
        routes_file: PathBuf,
        journal: crate::persist::Journal,
    ) -> Self {
        let Snapshot { table, zone } = state.snapshot();
        StateHandle {
            state: Mutex::new(state),
            table: Arc::new(ArcSwap::from_pointee(table)),
            zone: Arc::new(ArcSwap::from_pointee(zone)),
            routes_file,
            journal: std::sync::Mutex::new(journal),
            own_listeners: OnceLock::new(),
            swaps: Default::default(),
        }
    }

    /// Appends changed overrides to the log (before the change counts).
    fn persist(
        &self,
        changed: &[(HostName, Option<crate::persist::Override>)],
    ) -> Result<(), crate::persist::StateError> {
        self.journal.lock().expect("journal lock").append(changed)
    }

    /// Once the log has outgrown the overrides: a fresh log, and `routes.json` rewritten from
    /// the state as of now in the background (the old log is removed after). A change never
    /// waits for that; a failure is logged and the logs keep everything.
    fn compact_if_due(&self, state: &DesiredState) {
        let mut journal = self.journal.lock().expect("journal lock");
        if !journal.wants_compaction(state.override_count()) {
            return;
        }
        if let Err(e) = journal.rotate() {
            tracing::warn!("cannot compact the route log: {e}");
            return;
        }
        let overrides = state.persisted();
        let base = self.routes_file.clone();
        tokio::task::spawn_blocking(move || {
            match crate::persist::finish_compaction(&base, &overrides) {
                Ok(()) => tracing::debug!(overrides = overrides.len(), "route log compacted"),
                Err(e) => tracing::warn!("cannot compact the route log: {e}"),
            }
        });
    }

    /// The route table the proxy reads.
    pub fn table(&self) -> Arc<ArcSwap<RouteTable>> {
        self.table.clone()
    }

    /// The zone the DNS server reads.
    pub fn zone(&self) -> Arc<ArcSwap<itproxy_dns::Zone>> {
        self.zone.clone()
    }

    /// Records the proxy's own listeners once they are bound.
    pub fn set_own_listeners(&self, listeners: Vec<SocketAddr>) {
        let _ = self.own_listeners.set(listeners);
    }

    /// Applies `change`: persisted first if it changes the overrides, then published (the
    /// proxy's table first, then the zone: a name never resolves before its route works).
    pub async fn apply(&self, change: Change) -> Result<Applied, ChangeError> {
        let mut state = self.state.lock().await;
        self.apply_locked(&mut state, change)
    }

    fn apply_locked(
        &self,
        state: &mut DesiredState,
        change: Change,
    ) -> Result<Applied, ChangeError> {
        let applied = state.apply(change, |o| self.persist(o))?;
        if applied == Applied::Changed {
            self.compact_if_due(state);
            self.publish(state);
        }
        Ok(applied)
    }

    /// Publishes `state`'s snapshot: the proxy's table first, then the zone (a name never
    /// resolves before its route works).
    fn publish(&self, state: &DesiredState) {
        let Snapshot { table, zone } = state.snapshot();
        self.table.store(Arc::new(table));
        self.zone.store(Arc::new(zone));
        self.swaps
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// How many new route tables were published since the start (route swaps).
    pub fn swaps(&self) -> u64 {
        self.swaps.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Reads the state under its lock.
    pub async fn read<R>(&self, f: impl FnOnce(&DesiredState) -> R) -> R {
        f(&*self.state.lock().await)
    }

    /// Qualifies a route name given by a person or a label.
    pub async fn qualify(&self, name: &str) -> Result<HostName, ChangeError> {
        self.read(|s| s.qualify(name)).await
    }

    /// One route.
    pub async fn route(&self, name: &str) -> Result<RouteView, ChangeError> {
        let host = self.qualify(name).await?;
        self.read(|s| s.view(&host))
            .await
            .ok_or(ChangeError::NoRoute(host))
    }

    /// Routes `name` to `put.target` (an override): the target is parsed and resolved, and
    /// refused if it is one of itproxy's own listeners.
    pub async fn set_route(
        &self,
        name: &str,
        put: api::PutRoute,
    ) -> Result<RouteView, ChangeError> {
        let (host, spec, addrs) = self.prepare_route(name, &put).await?;
        let mut state = self.state.lock().await;
        self.apply_locked(
            &mut state,
            Change::SetRoute {
                host: host.clone(),
                spec,
                addrs,
            },
        )?;
        tracing::info!(%host, target = %put.target, "route set");
        Ok(state.view(&host).expect("a route just set is in force"))
    }

    /// `PUT /v1/routes`: many route changes applied together (one write, one new table) or,
    /// if one is refused, none; the refusal names its route.
    pub async fn change_routes(
        &self,
        put: api::PutRoutes,
    ) -> Result<api::RoutesChanged, ChangeError> {
        let in_batch = |name: &str| {
            let name = name.to_string();
            move |error| ChangeError::InBatch {
                name,
                error: Box::new(error),
            }
        };
        // Targets are resolved together, outside the lock.
        let prepared = futures_util::future::join_all(
            put.set
                .iter()
                .map(|(name, route)| async move { (name, self.prepare_route(name, route).await) }),
        )
        .await;
        let mut changes = Vec::new();
        for (name, p) in prepared {
            let (host, spec, addrs) = p.map_err(in_batch(name))?;
            changes.push((name.clone(), Change::SetRoute { host, spec, addrs }));
        }
        for name in &put.unroute {
            let host = self.qualify(name).await.map_err(in_batch(name))?;
            changes.push((name.clone(), Change::Unroute { host }));
        }
        for name in &put.restore {
            let host = self.qualify(name).await.map_err(in_batch(name))?;
            changes.push((name.clone(), Change::Restore { host }));
        }
        let mut state = self.state.lock().await;
        let applied = state.apply_batch(changes, |o| self.persist(o))?;
        if applied == Applied::Changed {
            self.compact_if_due(&state);
            self.publish(&state);
        }
        let changed = api::RoutesChanged {
            set: put.set.len(),
            unrouted: put.unroute.len(),
            restored: put.restore.len(),
            routes: state.route_count(),
        };
        tracing::info!(
            set = changed.set,
            unrouted = changed.unrouted,
            restored = changed.restored,
            "routes changed together"
        );
        Ok(changed)
    }

    /// `name` qualified, and `put`'s target parsed and resolved; refused if the target is one
    /// of itproxy's own listeners.
    async fn prepare_route(
        &self,
        name: &str,
        put: &api::PutRoute,
    ) -> Result<(HostName, RouteSpec, Vec<SocketAddr>), ChangeError> {
        let host = self.qualify(name).await?;
        let target = UpstreamSpec::parse(&put.target)
            .map_err(|e| ChangeError::InvalidTarget(e.to_string()))?;
        let addrs = target
            .resolve()
            .await
            .map_err(|e| ChangeError::Unresolvable(e.to_string()))?;
        if let Some((addr, listener)) = self
            .own_listeners
            .get()
            .and_then(|l| own_listener(&addrs, l))
        {
            return Err(ChangeError::RouteToItself {
                target: target.to_string(),
                addr,
                listener,
            });
        }
        let spec = RouteSpec {
            target,
            redirect_https: put.redirect_https,
            insecure_upstream: put.insecure_upstream,
            connect_timeout: None,
            read_timeout: None,
        };
        Ok((host, spec, addrs))
    }

    /// Removes `name`'s route, whatever routes it; returns the route it had.
    pub async fn unroute(&self, name: &str) -> Result<RouteView, ChangeError> {
        let host = self.qualify(name).await?;
        let mut state = self.state.lock().await;
        let view = state
            .view(&host)
            .ok_or(ChangeError::NoRoute(host.clone()))?;
        self.apply_locked(&mut state, Change::Unroute { host: host.clone() })?;
        tracing::info!(%host, "route removed");
        Ok(view)
    }

    /// Drops `name`'s override; returns whether there was one, and the route now in force.
    /// Puts a mock in front of `host`'s route, or (`None`) takes it away; the route as it
    /// became.
    pub async fn set_mock(
        &self,
        host: &HostName,
        mock: Option<(api::MockView, SocketAddr)>,
    ) -> Result<Option<RouteView>, ChangeError> {
        let mut state = self.state.lock().await;
        let change = Change::Mock {
            host: host.clone(),
            mock,
        };
        self.apply_locked(&mut state, change)?;
        Ok(state.view_or_endpoint(host))
    }

    pub async fn restore(&self, name: &str) -> Result<(bool, RouteView), ChangeError> {
        let host = self.qualify(name).await?;
        let mut state = self.state.lock().await;
        let applied = self.apply_locked(&mut state, Change::Restore { host: host.clone() })?;
        if applied == Applied::Changed {
            tracing::info!(%host, "route restored to its declared target");
        }
        let view = state
            .view_or_endpoint(&host)
            .expect("a restored host has a route or an app's endpoint");
        Ok((applied == Applied::Changed, view))
    }
}

/// The first of `targets` that is one of the proxy's own `listeners`, with that listener: the
/// same address, a wildcard listener on the target's port of an address of this machine, or
/// a wildcard target (which reaches this machine).
fn own_listener(
    targets: &[SocketAddr],
    listeners: &[SocketAddr],
) -> Option<(SocketAddr, SocketAddr)> {
    let is_local = |ip: std::net::IpAddr| {
        ip.is_loopback()
            || ip.is_unspecified()
            || std::net::UdpSocket::bind(SocketAddr::new(ip, 0)).is_ok()
    };
    targets.iter().find_map(|t| {
        listeners
            .iter()
            .find(|l| {
                l.port() == t.port()
                    && (l.ip() == t.ip()
                        || (l.ip().is_unspecified() && is_local(t.ip()))
                        || (t.ip().is_unspecified() && (l.ip().is_loopback() || is_local(l.ip()))))
            })
            .map(|l| (*t, *l))
    })
}

//! The desired state's rules, without a daemon, a socket or Docker: precedence of the route
//! sources, unroute and restore, persistence before a change counts, and generations.

use std::cell::RefCell;
use std::net::{IpAddr, SocketAddr};

use itproxy_dns::proto::rr::{LowerName, Name, RData, RecordType};
use itproxy_dns::{Answer, ProxyAddrs};
use itproxy_router::{HostName, UpstreamSpec};

use super::*;
use crate::persist::StateError;

fn host(s: &str) -> HostName {
    HostName::parse(s).unwrap()
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn spec(target: &str) -> RouteSpec {
    RouteSpec::to(UpstreamSpec::parse(target).unwrap())
}

/// `test` is the domain; `api.test` is declared to 127.0.0.1:8001.
fn state() -> DesiredState {
    let domains = Domains::new(vec![host("test")]).unwrap();
    let mut s = DesiredState::new(domains, Timeouts::default(), 5);
    s.declare(
        host("api.test"),
        spec("127.0.0.1:8001"),
        vec![addr("127.0.0.1:8001")],
    );
    s
}

/// Applies `change`, recording what would be persisted: when the change is handed to
/// persistence, every override as the state then holds them (the log's lines replayed).
fn apply(
    s: &mut DesiredState,
    change: Change,
) -> (Result<Applied, ChangeError>, Option<Overrides>) {
    let handed = RefCell::new(None);
    let r = s.apply(change, |changed| {
        *handed.borrow_mut() = Some(changed.to_vec());
        Ok(())
    });
    let saved = handed.into_inner().map(|changed| {
        let all = s.persisted();
        // What was handed over is each changed host as the state now holds it.
        for (host, o) in &changed {
            assert_eq!(all.get(host), o.as_ref(), "{host}");
        }
        all
    });
    (r, saved)
}

fn ok(s: &mut DesiredState, change: Change) -> Applied {
    apply(s, change).0.expect("change applies")
}

/// Where the published table sends `host`, if anywhere.
fn routed_to(s: &DesiredState, h: &str) -> Option<String> {
    let snap = s.snapshot();
    snap.table
        .lookup(h)
        .map(|r| r.upstream().spec().to_string())
}

fn source(s: &DesiredState, h: &str) -> Option<RouteSource> {
    s.view(&host(h)).map(|v| v.source)
}

fn set(h: &str, target: &str) -> Change {
    Change::SetRoute {
        host: host(h),
        spec: spec(target),
        addrs: vec![addr(target)],
    }
}

fn fqdn(name: &str) -> LowerName {
    let mut name = Name::from_ascii(name).unwrap();
    name.set_fqdn(true);
    LowerName::new(&name)
}

/// The addresses the zone answers for `name`'s A record (as seen from loopback).
fn resolves_to(s: &DesiredState, name: &str) -> Vec<IpAddr> {
    let zone = s.snapshot().zone;
    let view = ProxyAddrs {
        v4: Some("127.0.0.1".parse().unwrap()),
        v6: None,
    };
    match zone.answer(&fqdn(name), RecordType::A, &view) {
        Answer::Authoritative { answers, .. } => answers
            .iter()
            .filter_map(|r| match &r.data {
                RData::A(a) => Some(IpAddr::V4(a.0)),
                _ => None,
            })
            .collect(),
        Answer::NotOurs => Vec::new(),
    }
}

#[test]
fn an_override_wins_over_a_container_which_wins_over_an_app_which_wins_over_the_config() {
    let mut s = state();
    assert_eq!(
        routed_to(&s, "api.test").as_deref(),
        Some("http://127.0.0.1:8001")
    );
    assert_eq!(source(&s, "api.test"), Some(RouteSource::Config));

    ok(
        &mut s,
        Change::AppUp {
            app: "api".parse().unwrap(),
            endpoints: vec![(host("api.test"), Endpoint::Http(addr("172.18.0.2:80")))],
        },
    );
    assert_eq!(
        routed_to(&s, "api.test").as_deref(),
        Some("http://172.18.0.2:80")
    );
    assert_eq!(source(&s, "api.test"), Some(RouteSource::App));

    ok(
        &mut s,
        Change::ContainerUp {
            id: "c1".into(),
            host: host("api.test"),
            addr: addr("172.18.0.3:8080"),
        },
    );
    assert_eq!(
        routed_to(&s, "api.test").as_deref(),
        Some("http://172.18.0.3:8080")
    );
    assert_eq!(source(&s, "api.test"), Some(RouteSource::Discovered));

    ok(&mut s, set("api.test", "127.0.0.1:9000"));
    assert_eq!(
        routed_to(&s, "api.test").as_deref(),
        Some("http://127.0.0.1:9000")
    );
    let view = s.view(&host("api.test")).unwrap();
    assert_eq!(view.source, RouteSource::Override);
    assert_eq!(view.declared.as_deref(), Some("http://172.18.0.3:8080"));

    // Each layer, removed, uncovers the one below.
    ok(
        &mut s,
        Change::Restore {
            host: host("api.test"),
        },
    );
    assert_eq!(source(&s, "api.test"), Some(RouteSource::Discovered));
    ok(&mut s, Change::ContainerDown { id: "c1".into() });
    assert_eq!(source(&s, "api.test"), Some(RouteSource::App));
    ok(
        &mut s,
        Change::AppDown {
            app: "api".parse().unwrap(),
        },
    );
    assert_eq!(
        routed_to(&s, "api.test").as_deref(),
        Some("http://127.0.0.1:8001")
    );
    assert_eq!(source(&s, "api.test"), Some(RouteSource::Config));
}

#[test]
fn unrouting_a_declared_host_persists_its_removal_and_restore_brings_it_back() {
    let mut s = state();
    let (r, saved) = apply(
        &mut s,
        Change::Unroute {
            host: host("api.test"),
        },
    );
    assert_eq!(r.unwrap(), Applied::Changed);
    assert_eq!(routed_to(&s, "api.test"), None);
    assert!(
        resolves_to(&s, "api.test").is_empty(),
        "an unrouted name stops resolving"
    );
    let saved = saved.expect("the removal is persisted");
    assert_eq!(saved.get(&host("api.test")), Some(&Override::Removed));

    let (r, saved) = apply(
        &mut s,
        Change::Restore {
            host: host("api.test"),
        },
    );
    assert_eq!(r.unwrap(), Applied::Changed);
    assert!(saved.expect("the restore is persisted").is_empty());
    assert_eq!(
        routed_to(&s, "api.test").as_deref(),
        Some("http://127.0.0.1:8001")
    );
    assert_eq!(
        resolves_to(&s, "api.test"),
        vec!["127.0.0.1".parse::<IpAddr>().unwrap()]
    );
}

#[test]
fn a_route_set_only_through_the_api_is_gone_for_good_when_unrouted() {
    let mut s = state();
    ok(&mut s, set("web.test", "127.0.0.1:9001"));
    assert_eq!(s.persisted().len(), 1);
    assert!(matches!(
        apply(
            &mut s,
            Change::Restore {
                host: host("web.test")
            }
        )
        .0,
        Err(ChangeError::NothingToRestore(_))
    ));
    let (_, saved) = apply(
        &mut s,
        Change::Unroute {
            host: host("web.test"),
        },
    );
    assert!(
        saved.unwrap().is_empty(),
        "no removal marker for a host nothing else routes"
    );
    assert_eq!(routed_to(&s, "web.test"), None);
    assert!(matches!(
        apply(
            &mut s,
            Change::Restore {
                host: host("web.test")
            }
        )
        .0,
        Err(ChangeError::NoRoute(_))
    ));
    assert!(matches!(
        apply(
            &mut s,
            Change::Unroute {
                host: host("web.test")
            }
        )
        .0,
        Err(ChangeError::NoRoute(_))
    ));
}

#[test]
fn restoring_a_host_without_an_override_changes_nothing_and_persists_nothing() {
    let mut s = state();
    let generation = s.generation();
    let (r, saved) = apply(
        &mut s,
        Change::Restore {
            host: host("api.test"),
        },
    );
    assert_eq!(r.unwrap(), Applied::Unchanged);
    assert!(saved.is_none());
    assert_eq!(s.generation(), generation);
}

#[test]
fn a_change_that_cannot_be_persisted_leaves_the_state_as_it_was() {
    let mut s = state();
    ok(&mut s, set("web.test", "127.0.0.1:9001"));
    let (generation, persisted) = (s.generation(), s.persisted());
    let r = s.apply(set("api.test", "127.0.0.1:9002"), |_| {
        Err(StateError::Dir {
            path: "/nonexistent".into(),
            error: std::io::Error::other("disk full"),
        })
    });
    let e = r.unwrap_err();
    assert!(matches!(e, ChangeError::Persist(_)));
    assert!(e.to_string().contains("the change was not applied"), "{e}");
    assert_eq!(
        routed_to(&s, "api.test").as_deref(),
        Some("http://127.0.0.1:8001")
    );
    assert_eq!(s.persisted(), persisted);
    assert_eq!(s.generation(), generation);
}

#[test]
fn containers_and_apps_are_never_persisted() {
    let mut s = state();
    let (_, saved) = apply(
        &mut s,
        Change::ContainerUp {
            id: "c1".into(),
            host: host("db.test"),
            addr: addr("172.18.0.9:5432"),
        },
    );
    assert!(saved.is_none());
    let (_, saved) = apply(
        &mut s,
        Change::AppUp {
            app: "web".parse().unwrap(),
            endpoints: vec![(host("web.test"), Endpoint::Http(addr("172.18.0.4:80")))],
        },
    );
    assert!(saved.is_none());
    assert!(s.persisted().is_empty());
}

#[test]
fn a_stopped_container_takes_only_its_own_routes() {
    let mut s = state();
    for (id, h, a) in [
        ("c1", "one.test", "172.18.0.2:80"),
        ("c2", "two.test", "172.18.0.3:80"),
    ] {
        ok(
            &mut s,
            Change::ContainerUp {
                id: id.into(),
                host: host(h),
                addr: addr(a),
            },
        );
    }
    assert_eq!(s.container_ids(), vec!["c1".to_string(), "c2".to_string()]);
    assert_eq!(s.hosts_of_container("c1"), vec![host("one.test")]);
    assert_eq!(
        ok(&mut s, Change::ContainerDown { id: "c9".into() }),
        Applied::Unchanged
    );
    assert_eq!(
        ok(&mut s, Change::ContainerDown { id: "c1".into() }),
        Applied::Changed
    );
    assert_eq!(routed_to(&s, "one.test"), None);
    assert_eq!(
        routed_to(&s, "two.test").as_deref(),
        Some("http://172.18.0.3:80")
    );
}

#[test]
fn an_app_republished_replaces_its_endpoints_and_its_tcp_names_resolve_to_the_container() {
    let mut s = state();
    let app: AppName = "db".parse().unwrap();
    ok(
        &mut s,
        Change::AppUp {
            app: app.clone(),
            endpoints: vec![
                (
                    host("db.test"),
                    Endpoint::Tcp("172.18.0.5".parse().unwrap()),
                ),
                (host("admin.test"), Endpoint::Http(addr("172.18.0.5:8080"))),
            ],
        },
    );
    assert_eq!(
        resolves_to(&s, "db.test"),
        vec!["172.18.0.5".parse::<IpAddr>().unwrap()]
    );
    assert_eq!(
        routed_to(&s, "db.test"),
        None,
        "a TCP endpoint is not proxied"
    );
    assert_eq!(
        resolves_to(&s, "admin.test"),
        vec!["127.0.0.1".parse::<IpAddr>().unwrap()]
    );

    // Restarted on another address, without its HTTP endpoint.
    ok(
        &mut s,
        Change::AppUp {
            app: app.clone(),
            endpoints: vec![(
                host("db.test"),
                Endpoint::Tcp("172.18.0.7".parse().unwrap()),
            )],
        },
    );
    assert_eq!(
        resolves_to(&s, "db.test"),
        vec!["172.18.0.7".parse::<IpAddr>().unwrap()]
    );
    assert_eq!(routed_to(&s, "admin.test"), None);

    // An override routes the TCP name through the proxy instead.
    ok(&mut s, set("db.test", "127.0.0.1:15432"));
    assert_eq!(
        resolves_to(&s, "db.test"),
        vec!["127.0.0.1".parse::<IpAddr>().unwrap()]
    );

    // Restored, the name goes back to the container (an app's endpoint is a base to go back
    // to, even one the proxy does not route).
    assert_eq!(
        ok(
            &mut s,
            Change::Restore {
                host: host("db.test")
            }
        ),
        Applied::Changed
    );
    assert_eq!(
        resolves_to(&s, "db.test"),
        vec!["172.18.0.7".parse::<IpAddr>().unwrap()]
    );
    assert_eq!(
        s.view_or_endpoint(&host("db.test")).unwrap().target,
        "172.18.0.7"
    );
    ok(&mut s, Change::AppDown { app });
    assert!(resolves_to(&s, "db.test").is_empty());
}

#[test]
fn every_upstream_built_gets_a_new_generation_and_the_zone_serial_follows() {
    let mut s = state();
    let g0 = s.generation();
    ok(&mut s, set("web.test", "127.0.0.1:9001"));
    let g1 = s.generation();
    // The same target again: a new upstream, so no pooled connection crosses the change.
    ok(&mut s, set("web.test", "127.0.0.1:9001"));
    let g2 = s.generation();
    assert!(g0 < g1 && g1 < g2, "{g0} {g1} {g2}");
    let table = s.snapshot().table;
    let first = table.lookup("web.test").unwrap().upstream().clone();
    ok(&mut s, set("web.test", "127.0.0.1:9001"));
    let second = s
        .snapshot()
        .table
        .lookup("web.test")
        .unwrap()
        .upstream()
        .clone();
    assert!(!std::sync::Arc::ptr_eq(&first, &second));
    let serial = |s: &DesiredState| match s.snapshot().zone.answer(
        &fqdn("test"),
        RecordType::SOA,
        &ProxyAddrs { v4: None, v6: None },
    ) {
        Answer::Authoritative { answers, .. } => match &answers[0].data {
            RData::SOA(soa) => soa.serial,
            other => panic!("{other:?}"),
        },
        Answer::NotOurs => panic!("test is our domain"),
    };
    assert_eq!(serial(&s) as u64, s.generation());
}

#[test]
fn names_are_qualified_below_the_domains() {
    let s = state();
    assert_eq!(s.qualify("api").unwrap(), host("api.test"));
    assert_eq!(s.qualify("api.test").unwrap(), host("api.test"));
    let e = s.qualify("api.example").unwrap_err();
    assert!(matches!(e, ChangeError::InvalidName { .. }));
    assert!(
        e.to_string().contains("not below the configured domains"),
        "{e}"
    );
}

#[test]
fn a_declared_app_name_is_answered_503_while_the_app_serves_none() {
    let mut s = state();
    let web: AppName = "web".parse().unwrap();
    s.declare_app_host(host("web.test"), web.clone());
    let why = |s: &DesiredState| {
        s.snapshot()
            .table
            .unavailable("web.test")
            .map(|u| u.reason().to_string())
    };
    let proxy: IpAddr = "127.0.0.1".parse().unwrap();

    // Before its first start: not routed, but known and resolvable.
    assert_eq!(routed_to(&s, "web.test"), None);
    assert_eq!(why(&s).as_deref(), Some("app web has not started yet"));
    assert_eq!(resolves_to(&s, "web.test"), [proxy]);

    ok(
        &mut s,
        Change::AppStatus {
            app: web.clone(),
            status: "is starting".into(),
        },
    );
    assert_eq!(why(&s).as_deref(), Some("app web is starting"));
    let again = Change::AppStatus {
        app: web.clone(),
        status: "is starting".into(),
    };
    assert!(matches!(ok(&mut s, again), Applied::Unchanged));

    // Serving: routed, nothing to explain.
    ok(
        &mut s,
        Change::AppUp {
            app: web.clone(),
            endpoints: vec![(host("web.test"), Endpoint::Http(addr("172.18.0.4:80")))],
        },
    );
    assert!(routed_to(&s, "web.test").is_some());
    assert_eq!(why(&s), None);

    // Going down: explained at once, before the supervisor says more.
    ok(&mut s, Change::AppDown { app: web.clone() });
    assert_eq!(routed_to(&s, "web.test"), None);
    assert_eq!(why(&s).as_deref(), Some("app web is stopping"));
    assert_eq!(resolves_to(&s, "web.test"), [proxy]);

    // Removed by hand: gone from the table and the zone alike, until restored.
    ok(
        &mut s,
        Change::Unroute {
            host: host("web.test"),
        },
    );
    assert_eq!(why(&s), None);
    assert_eq!(resolves_to(&s, "web.test"), Vec::<IpAddr>::new());
    ok(
        &mut s,
        Change::Restore {
            host: host("web.test"),
        },
    );
    assert_eq!(why(&s).as_deref(), Some("app web is stopping"));
}

#[test]
fn reloaded_declared_routes_replace_the_old_and_keep_unchanged_upstreams() {
    let mut s = state();
    s.declare(
        host("old.test"),
        spec("127.0.0.1:8002"),
        vec![addr("127.0.0.1:8002")],
    );
    let upstream =
        |s: &DesiredState, h: &str| s.snapshot().table.lookup(h).unwrap().upstream().clone();
    let api_before = upstream(&s, "api.test");
    let reloaded = |moved: &str| Change::Declared {
        routes: vec![
            (
                host("api.test"),
                spec("127.0.0.1:8001"),
                vec![addr("127.0.0.1:8001")],
            ),
            (host("new.test"), spec(moved), vec![addr(moved)]),
        ],
    };
    assert!(matches!(
        ok(&mut s, reloaded("127.0.0.1:8003")),
        Applied::Changed
    ));
    assert_eq!(routed_to(&s, "old.test"), None);
    assert_eq!(
        routed_to(&s, "new.test").as_deref(),
        Some("http://127.0.0.1:8003")
    );
    // Unchanged: the same upstream, so its pooled connections stay.
    assert!(Arc::ptr_eq(&api_before, &upstream(&s, "api.test")));
    assert!(matches!(
        ok(&mut s, reloaded("127.0.0.1:8003")),
        Applied::Unchanged
    ));
    ok(&mut s, reloaded("127.0.0.1:8004"));
    assert_eq!(
        routed_to(&s, "new.test").as_deref(),
        Some("http://127.0.0.1:8004")
    );
    // An override still wins over a reloaded declaration.
    ok(&mut s, set("api.test", "127.0.0.1:9009"));
    ok(&mut s, reloaded("127.0.0.1:8004"));
    assert_eq!(
        routed_to(&s, "api.test").as_deref(),
        Some("http://127.0.0.1:9009")
    );
}

#[test]
fn an_app_no_longer_declared_loses_its_names_routes_and_state() {
    let mut s = state();
    let web: AppName = "web".parse().unwrap();
    ok(
        &mut s,
        Change::AppNames {
            app: web.clone(),
            hosts: vec![host("web.test"), host("www.test")],
        },
    );
    assert!(s.snapshot().table.unavailable("www.test").is_some());
    ok(
        &mut s,
        Change::AppUp {
            app: web.clone(),
            endpoints: vec![(host("web.test"), Endpoint::Http(addr("172.18.0.4:80")))],
        },
    );
    // Declared again with one name fewer: the other is no longer the app's.
    ok(
        &mut s,
        Change::AppNames {
            app: web.clone(),
            hosts: vec![host("web.test")],
        },
    );
    assert!(s.snapshot().table.unavailable("www.test").is_none());
    assert!(routed_to(&s, "web.test").is_some());
    ok(
        &mut s,
        Change::AppNames {
            app: web,
            hosts: Vec::new(),
        },
    );
    assert_eq!(routed_to(&s, "web.test"), None);
    assert!(s.snapshot().table.unavailable("web.test").is_none());
    assert_eq!(resolves_to(&s, "web.test"), Vec::<IpAddr>::new());
}

#[test]
fn a_batch_is_applied_and_persisted_once_or_not_at_all() {
    let mut s = state();
    let batch = |targets: &[(&str, &str)], restore: &str| {
        let mut changes: Vec<(String, Change)> = targets
            .iter()
            .map(|(h, t)| (h.to_string(), set(h, t)))
            .collect();
        changes.push((
            restore.to_string(),
            Change::Restore {
                host: host(restore),
            },
        ));
        changes
    };
    let writes = RefCell::new(0);
    let persist = |_: &[(HostName, Option<Override>)]| {
        *writes.borrow_mut() += 1;
        Ok(())
    };
    // Two routes and a restore of a declared host: one write.
    let ok_batch = batch(
        &[("a.test", "127.0.0.1:9001"), ("b.test", "127.0.0.1:9002")],
        "api.test",
    );
    assert!(matches!(
        s.apply_batch(ok_batch, persist),
        Ok(Applied::Changed)
    ));
    assert_eq!(*writes.borrow(), 1);
    assert_eq!(
        routed_to(&s, "b.test").as_deref(),
        Some("http://127.0.0.1:9002")
    );

    // The last change is refused: none applies, nothing is written, the refusal names it.
    let generation = s.generation();
    let refused = batch(&[("c.test", "127.0.0.1:9003")], "nowhere.test");
    let e = s.apply_batch(refused, persist).unwrap_err();
    assert!(
        matches!(&e, ChangeError::InBatch { name, .. } if name == "nowhere.test"),
        "{e}"
    );
    assert_eq!(routed_to(&s, "c.test"), None);
    assert_eq!(s.generation(), generation);
    assert_eq!(*writes.borrow(), 1);
}

#[test]
fn a_mock_stands_in_front_of_every_source_is_never_persisted_and_goes_back_to_what_was_there() {
    let mut s = state();
    let mock = |dir: &str, at: &str| Change::Mock {
        host: host("api.test"),
        mock: Some((
            api::MockView {
                mode: api::MockMode::Replay,
                dir: dir.into(),
            },
            addr(at),
        )),
    };
    let (r, saved) = apply(&mut s, mock("/rec", "127.0.0.1:9100"));
    assert_eq!(r.unwrap(), Applied::Changed);
    assert!(saved.is_none(), "a mock is not persisted");
    assert_eq!(source(&s, "api.test"), Some(RouteSource::Mock));
    assert_eq!(
        routed_to(&s, "api.test").as_deref(),
        Some("http://127.0.0.1:9100")
    );
    let view = s.view(&host("api.test")).unwrap();
    assert_eq!(view.declared.as_deref(), Some("http://127.0.0.1:8001"));
    assert_eq!(view.mock.unwrap().dir, "/rec");
    // An override set meanwhile stays under the mock; the mock's removal reveals it.
    ok(&mut s, set("api.test", "127.0.0.1:8002"));
    assert_eq!(source(&s, "api.test"), Some(RouteSource::Mock));
    assert_eq!(
        s.view(&host("api.test")).unwrap().declared.as_deref(),
        Some("http://127.0.0.1:8002")
    );
    ok(
        &mut s,
        Change::Mock {
            host: host("api.test"),
            mock: None,
        },
    );
    assert_eq!(
        routed_to(&s, "api.test").as_deref(),
        Some("http://127.0.0.1:8002")
    );
    // A name without any route resolves while mocked, and not after.
    let ghost = Change::Mock {
        host: host("ghost.test"),
        mock: Some((
            api::MockView {
                mode: api::MockMode::Replay,
                dir: "/g".into(),
            },
            addr("127.0.0.1:9101"),
        )),
    };
    ok(&mut s, ghost);
    assert_eq!(
        resolves_to(&s, "ghost.test"),
        [IpAddr::from([127, 0, 0, 1])]
    );
    ok(
        &mut s,
        Change::Mock {
            host: host("ghost.test"),
            mock: None,
        },
    );
    assert!(resolves_to(&s, "ghost.test").is_empty());
    assert_eq!(
        ok(
            &mut s,
            Change::Mock {
                host: host("ghost.test"),
                mock: None
            }
        ),
        Applied::Unchanged
    );
}

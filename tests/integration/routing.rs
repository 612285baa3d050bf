//! A developer routes apps by name and reaches them through the proxy.

use crate::util::*;

#[tokio::test]
async fn requests_reach_the_backend_named_by_the_host() {
    let api = Backend::start("api").await;
    let web = Backend::start("web").await;
    let p = Itproxy::start();

    let out = p.ok(&["route", "api", &api.target()]);
    assert_eq!(out.trim(), format!("api.test -> http://{}", api.target()));
    p.ok(&["route", "web.test", &format!("http://{}", web.target())]);

    // curl with --resolve, as a user would.
    let (status, body) = curl(p.http, "api.test", "/hello?x=1", &[]).await;
    assert_eq!(status, 200, "{body}");
    let seen: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(seen["backend"], "api");
    assert_eq!(seen["uri"], "/hello?x=1");

    // Host matching ignores case, the port and a trailing dot.
    for host in [
        "WEB.test",
        &format!("web.test:{}", p.http.port()),
        "web.test.",
    ] {
        let r = get(p.http, host, "/").await;
        assert_eq!((r.status, r.backend()), (200, Some("web")), "{host}");
    }
    assert_eq!(api.hits(), 1);
    assert_eq!(web.hits(), 3);

    let listed = p.ok(&["routes"]);
    assert!(
        listed.contains("api.test") && listed.contains("web.test"),
        "{listed}"
    );
    let routes = p.routes();
    assert_eq!(routes["api.test"], format!("http://{}", api.target()));
}

#[tokio::test]
async fn a_swap_is_seen_by_the_next_request_on_the_same_connection() {
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    let p = Itproxy::start();
    p.ok(&["route", "api", &a.target()]);

    let mut conn = Client::connect(p.http).await;
    assert_eq!(
        conn.get("api.test", "/").await.unwrap().backend(),
        Some("a")
    );
    p.ok(&["route", "api", &b.target()]);
    assert_eq!(
        conn.get("api.test", "/").await.unwrap().backend(),
        Some("b")
    );
    p.ok(&["route", "api", &a.target()]);
    assert_eq!(
        conn.get("api.test", "/").await.unwrap().backend(),
        Some("a")
    );
}

#[tokio::test]
async fn declared_routes_can_be_overridden_restored_and_removed() {
    let declared = Backend::start("declared").await;
    let dev = Backend::start("dev").await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(
        dir.path(),
        &format!("[routes]\napi = \"{}\"\n", declared.target()),
    );
    let p = Itproxy::start_with(&["--config", cfg.to_str().unwrap()]);
    assert_eq!(
        get(p.http, "api.test", "/").await.backend(),
        Some("declared")
    );

    let out = p.ok(&["route", "api", &dev.target()]);
    assert!(out.contains("overrides"), "{out}");
    assert_eq!(get(p.http, "api.test", "/").await.backend(), Some("dev"));
    assert!(p.ok(&["routes"]).contains("override (declared"));

    let out = p.ok(&["route", "api", "--restore"]);
    assert!(out.starts_with("restored api.test"), "{out}");
    assert_eq!(
        get(p.http, "api.test", "/").await.backend(),
        Some("declared")
    );
    let out = p.ok(&["route", "api", "--restore"]);
    assert!(out.contains("already at its declared target"), "{out}");

    let out = p.ok(&["unroute", "api"]);
    assert!(out.starts_with("removed api.test"), "{out}");
    assert_eq!(get(p.http, "api.test", "/").await.status, 404);
    // The removal of a declared route is itself persisted; restore brings it back.
    p.ok(&["route", "api", "--restore"]);
    assert_eq!(
        get(p.http, "api.test", "/").await.backend(),
        Some("declared")
    );
}

#[tokio::test]
async fn status_reports_listeners_routes_and_version() {
    let p = Itproxy::start();
    p.ok(&["route", "api", "127.0.0.1:9"]);
    let s: serde_json::Value = serde_json::from_str(&p.ok(&["status", "--json"])).unwrap();
    assert_eq!(s["listeners"]["http"][0], p.http.to_string());
    assert_eq!(s["routes"], 1);
    assert_eq!(s["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(s["domains"][0], "test");
    assert!(s["uptime_seconds"].as_f64().unwrap() >= 0.0);
    // Only this user may talk to the daemon or read its state.
    use std::os::unix::fs::PermissionsExt;
    let mode = |f: &std::path::Path| std::fs::metadata(f).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&p.state_dir().join("control.sock")), 0o600);
    assert_eq!(mode(p.state_dir()), 0o700);
    let text = p.ok(&["status"]);
    assert!(
        text.contains(&p.http.to_string()) && text.contains("routes:    1"),
        "{text}"
    );
}

#[tokio::test]
async fn upstream_connections_are_pooled_but_never_cross_a_swap() {
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    let p = Itproxy::start();
    p.ok(&["route", "api", &a.target()]);
    // The backend reports the proxy's source port: the same port means the same pooled connection.
    let upstream_conn = |r: Reply| r.json()["peer"].as_str().unwrap().to_string();

    // Pools are per proxy thread (each client connection lands on one of them), so eight
    // clients one after the other share at most one upstream connection per thread.
    let mut before = std::collections::BTreeSet::new();
    for _ in 0..8 {
        before.insert(upstream_conn(get(p.http, "api.test", "/").await));
    }
    assert!(
        before.len() < 8,
        "clients reuse pooled upstream connections: {before:?}"
    );

    // Routing the same target again is a new route: its requests get fresh connections.
    p.ok(&["route", "api", &a.target()]);
    let mut after = std::collections::BTreeSet::new();
    for _ in 0..8 {
        after.insert(upstream_conn(get(p.http, "api.test", "/").await));
    }
    assert!(
        before.is_disjoint(&after),
        "an idle connection from before the swap was reused: {before:?} {after:?}"
    );
    let third = after.iter().next().unwrap().clone();

    p.ok(&["route", "api", &b.target()]);
    assert_eq!(get(p.http, "api.test", "/").await.backend(), Some("b"));
    p.ok(&["route", "api", &a.target()]);
    let fourth = upstream_conn(get(p.http, "api.test", "/").await);
    assert!(!after.contains(&fourth) && fourth != third);
}

/// A browser or load generator keeps one connection for everything: GETs and small POSTs
/// (forwarded by itproxy's own HTTP/1.1 path), a large upload and an unknown host (answered by
/// the full pipeline) and GETs again, all on that one connection, with the full path alone too.
#[tokio::test]
async fn one_keepalive_connection_carries_every_kind_of_request() {
    let api = Backend::start("api").await;
    let pipeline_only = tempfile::tempdir().unwrap();
    let config = write_config(pipeline_only.path(), "[proxy]\nh1_front = false\n");
    for extra in [vec![], vec!["--config", config.to_str().unwrap()]] {
        let p = Itproxy::start_with(&extra);
        p.ok(&["route", "api", &api.target()]);
        let mut conn = Client::connect(p.http).await;
        for round in 0..3 {
            let r = conn.get("api.test", "/first").await.unwrap();
            assert_eq!(
                (r.status, r.backend()),
                (200, Some("api")),
                "{extra:?} round {round}"
            );
            let r = conn
                .post("api.test", "/form", "name=itproxy")
                .await
                .unwrap();
            assert_eq!(r.status, 200, "{extra:?} round {round}");
            assert_eq!(r.json()["body_len"], 12, "{extra:?}: the body arrives");
            // Read whole by itproxy (up to 64 KiB), and streamed by Pingora beyond.
            for size in [40_000, 100_000] {
                let r = conn
                    .post("api.test", "/upload", &"x".repeat(size))
                    .await
                    .unwrap();
                assert_eq!(r.json()["body_len"], size, "{extra:?} round {round}");
            }
            let r = conn.get("nowhere.test", "/").await.unwrap();
            assert_eq!(r.status, 404, "{extra:?} round {round}");
            let r = conn.get("api.test", "/again").await.unwrap();
            assert_eq!(r.json()["uri"], "/again", "{extra:?} round {round}");
        }
    }
}

/// Two requests written at once (HTTP/1.1 pipelining) get two answers, in order.
#[tokio::test]
async fn pipelined_requests_are_answered_in_order() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let api = Backend::start("api").await;
    let p = Itproxy::start();
    p.ok(&["route", "api", &api.target()]);
    let mut tcp = tokio::net::TcpStream::connect(p.http).await.unwrap();
    tcp.write_all(
        b"GET /one HTTP/1.1\r\nHost: api.test\r\n\r\nGET /two HTTP/1.1\r\nHost: api.test\r\nConnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    let mut answer = String::new();
    tokio::time::timeout(
        std::time::Duration::from_secs(10),
        tcp.read_to_string(&mut answer),
    )
    .await
    .expect("the proxy closes the connection after the request marked close")
    .unwrap();
    assert_eq!(answer.matches("HTTP/1.1 200 OK").count(), 2, "{answer}");
    let one = answer.find("\"uri\":\"/one\"").expect("first answer");
    let two = answer.find("\"uri\":\"/two\"").expect("second answer");
    assert!(one < two, "{answer}");
    assert!(answer.contains("Connection: close"), "{answer}");
}

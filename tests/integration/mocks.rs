//! A UI developer records a backend's answers, works without the backend, and finds out when
//! its API changed: `route --record`, `route --mock`, `mock diff`.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::Value;

use crate::util::*;

const LOGO: &[u8] = &[0x89, b'P', b'N', b'G', 0, 0xff, 0xfe, 7];

/// A users API; with `renamed` set, its users' `email` is called `mail` (an API change).
/// Every answer closes its connection, so a stopped backend answers nothing at all.
async fn users_api(renamed: Arc<AtomicBool>) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let renamed = renamed.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let renamed = renamed.load(Ordering::Relaxed);
                    async move {
                        let (method, path) =
                            (req.method().to_string(), req.uri().path().to_string());
                        let body = req.into_body().collect().await.unwrap().to_bytes();
                        let (status, ctype, out): (u16, &str, Vec<u8>) =
                            match (method.as_str(), path.as_str()) {
                                ("GET", "/users/1") if renamed => (
                                    200,
                                    "application/json",
                                    br#"{"id":1,"mail":"ada@example.test","roles":["admin"]}"#
                                        .to_vec(),
                                ),
                                ("GET", "/users/1") => (
                                    200,
                                    "application/json",
                                    br#"{"id":1,"email":"ada@example.test","roles":["admin"]}"#
                                        .to_vec(),
                                ),
                                ("POST", "/orders") => (
                                    201,
                                    "application/json",
                                    format!(r#"{{"order":7,"received":{}}}"#, body.len())
                                        .into_bytes(),
                                ),
                                ("GET", "/logo.png") => (200, "image/png", LOGO.to_vec()),
                                _ => (404, "text/plain", b"no such thing".to_vec()),
                            };
                        Ok::<_, std::convert::Infallible>(
                            Response::builder()
                                .status(status)
                                .header("content-type", ctype)
                                .header("x-api-version", "1")
                                .header("connection", "close")
                                .body(Full::new(Bytes::from(out)))
                                .unwrap(),
                        )
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    (addr, task)
}

/// The three requests a page makes, through the proxy: (status, content-type, body) each.
async fn page(proxy: SocketAddr) -> Vec<(u16, String, Bytes)> {
    let mut out = Vec::new();
    for (method, path, body) in [
        ("GET", "/users/1", ""),
        ("POST", "/orders", r#"{"item":"tea","qty":2}"#),
        ("GET", "/logo.png", ""),
    ] {
        let mut c = Client::connect(proxy).await;
        let r = c
            .request(
                method,
                "api.test",
                path,
                &[("content-type", "application/json")],
                body,
            )
            .await
            .unwrap();
        let ctype = r
            .headers
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default();
        out.push((r.status, ctype, r.body));
    }
    out
}

// Multi-threaded: the backends keep serving while the test waits on a CLI command.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recorded_route_replays_without_its_backend_and_diff_flags_an_api_change() {
    let renamed = Arc::new(AtomicBool::new(false));
    let (api, backend) = users_api(renamed.clone()).await;
    let p = Itproxy::start();
    p.ok(&["route", "api", &api.to_string()]);
    let dir = tempfile::tempdir().unwrap();
    let rec = dir.path().join("api-recording");
    let rec_arg = rec.to_str().unwrap();

    // Record: the page works as before, and every exchange lands in a readable file.
    let said = p.ok(&["route", "api", "--record", rec_arg]);
    assert!(said.contains("recording into"), "{said}");
    let live = page(p.http).await;
    assert_eq!(
        live.iter().map(|x| x.0).collect::<Vec<_>>(),
        [200, 201, 200]
    );
    let mut files: Vec<String> = std::fs::read_dir(&rec)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    assert_eq!(
        files,
        [
            "0001-GET-users-1.json",
            "0002-POST-orders.json",
            "0003-GET-logo-png.json",
            "itproxy-mock.json"
        ]
    );
    let order: Value =
        serde_json::from_str(&std::fs::read_to_string(rec.join("0002-POST-orders.json")).unwrap())
            .unwrap();
    assert_eq!(order["request"]["body"], r#"{"item":"tea","qty":2}"#);
    assert_eq!(order["response"]["status"], 201);

    // Mock: the backend is gone, the page gets the same answers, byte for byte.
    p.ok(&["route", "api", "--mock", rec_arg]);
    backend.abort();
    let _ = backend.await;
    assert!(
        tokio::net::TcpStream::connect(api).await.is_err(),
        "the backend is stopped"
    );
    let mocked = page(p.http).await;
    assert_eq!(mocked, live);
    let routes = p.ok(&["routes"]);
    assert!(
        routes.contains("mock: replaying") && routes.contains(rec_arg),
        "{routes}"
    );

    // A request nothing recorded answers 404 naming the near misses.
    let miss = get(p.http, "api.test", "/users/2").await;
    assert_eq!(miss.status, 404);
    let miss = miss.json();
    assert_eq!(miss["error"], "no_recorded_exchange");
    assert_eq!(miss["near_misses"][0]["request"], "GET /users/1", "{miss}");

    // Restore: back to the route as it was.
    let said = p.ok(&["route", "api", "--restore"]);
    assert!(
        said.contains(&format!("api.test -> http://{api}")),
        "{said}"
    );
    assert_eq!(p.routes()["api.test"], format!("http://{api}"));

    // mock diff: the same API is no change; a renamed field is flagged, and the exit is 1.
    let (api2, _backend2) = users_api(renamed.clone()).await;
    let target = format!("http://{api2}");
    let same = p.cli(&["mock", "diff", rec_arg, "--target", &target]);
    let same = output_text(&same);
    assert!(same.contains("no change"), "{same}");
    renamed.store(true, Ordering::Relaxed);
    let out = p.cli(&["mock", "diff", rec_arg, "--target", &target]);
    let text = output_text(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("0001-GET-users-1.json  GET /users/1:"),
        "{text}"
    );
    assert!(
        text.contains("field $.email removed (was string)"),
        "{text}"
    );
    assert!(text.contains("field $.mail added (string)"), "{text}");
    assert!(
        text.contains("0002-POST-orders.json  POST /orders: unchanged"),
        "{text}"
    );
    assert!(text.contains("1 of 3 recorded exchanges changed"), "{text}");
}

#[tokio::test]
async fn mocks_refuse_what_they_cannot_do_saying_why() {
    let p = Itproxy::start();
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().to_str().unwrap();
    // Nothing to record from, nothing to replay.
    let err = p.fails(&["route", "ghost", "--record", empty]);
    assert!(err.contains("no route for ghost.test"), "{err}");
    let err = p.fails(&["route", "ghost", "--mock", empty]);
    assert!(err.contains("holds no recorded exchange"), "{err}");
    std::fs::write(dir.path().join("0001-GET-x.json"), "{not json").unwrap();
    let err = p.fails(&["route", "ghost", "--mock", empty]);
    assert!(
        err.contains("0001-GET-x.json is not a recorded exchange"),
        "{err}"
    );
    // An https:// target is not recorded.
    p.ok(&["route", "secure", "https://127.0.0.1:9"]);
    let err = p.fails(&["route", "secure", "--record", empty]);
    assert!(err.contains("only http:// targets are recorded"), "{err}");
    // A mock of a name with no route still answers, and goes with --restore.
    std::fs::write(
        dir.path().join("0001-GET-x.json"),
        r#"{"request":{"method":"GET","path":"/x"},"response":{"status":200,"headers":[["content-type","text/plain"]],"body":"from the mock"}}"#,
    )
    .unwrap();
    p.ok(&["route", "ghost", "--mock", empty]);
    assert_eq!(
        get(p.http, "ghost.test", "/x").await.text(),
        "from the mock"
    );
    let said = p.ok(&["route", "ghost", "--restore"]);
    assert!(
        said.contains("mock taken away; ghost has no route"),
        "{said}"
    );
    assert_eq!(get(p.http, "ghost.test", "/x").await.status, 404);
}

//! A developer looks at what went through the proxy: `itproxy requests` and `GET /v1/requests`.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::util::*;

/// `itproxy requests --json`, one object per request, oldest first.
fn requests(p: &Itproxy, extra: &[&str]) -> Vec<Value> {
    let mut args = vec!["requests", "--json"];
    args.extend_from_slice(extra);
    p.ok(&args)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn header<'a>(headers: &'a Value, name: &str) -> Option<&'a str> {
    headers
        .as_array()?
        .iter()
        .find(|h| h[0].as_str().is_some_and(|n| n.eq_ignore_ascii_case(name)))
        .and_then(|h| h[1].as_str())
}

/// Sends raw bytes and reads until the proxy closes the connection.
async fn raw(proxy: std::net::SocketAddr, bytes: &[u8]) -> String {
    let mut s = tokio::net::TcpStream::connect(proxy).await.unwrap();
    s.write_all(bytes).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn every_request_shows_up_with_its_route_status_headers_and_timing() {
    let api = Backend::start("api").await;
    let p = Itproxy::start();
    p.ok(&["route", "api", &api.target()]);
    let dead = format!("127.0.0.1:{}", free_port());
    p.ok(&["route", "gone", &dead]);

    // Served by the HTTP/1.1 front.
    let mut conn = Client::connect(p.http).await;
    let r = conn
        .send("api.test", "/v1/users?page=2", &[("x-trace", "t-1")])
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    // Lent to Pingora's pipeline (a chunked body), then HTTP/2 over TLS.
    let (status, _) = curl(
        p.http,
        "api.test",
        "/upload",
        &["-H", "transfer-encoding: chunked", "--data-binary", "hello"],
    )
    .await;
    assert_eq!(status, 200);
    let resolve = format!("api.test:{}:127.0.0.1", p.https.port());
    let url = format!("https://api.test:{}/over-h2", p.https.port());
    let out = tokio::process::Command::new("curl")
        .args([
            "-sS",
            "-k",
            "--http2",
            "-o",
            "/dev/null",
            "--resolve",
            &resolve,
            &url,
        ])
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "{}", output_text(&out));
    // An unknown host, a route whose target is down, and a head that cannot be read.
    assert_eq!(get(p.http, "nobody.test", "/").await.status, 404);
    assert_eq!(get(p.http, "gone.test", "/x").await.status, 502);
    let refused = raw(
        p.http,
        b"GET / HTTP/1.1\r\nHost: api.test\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
    )
    .await;
    assert!(refused.starts_with("HTTP/1.1 400"), "{refused}");

    let seen = requests(&p, &[]);
    assert_eq!(seen.len(), 6, "{seen:#?}");
    let ids: Vec<u64> = seen.iter().map(|r| r["id"].as_u64().unwrap()).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "oldest first: {ids:?}");

    // Records are in the order requests ended: a request served by Pingora's pipeline is
    // recorded after its response went out, so the client's next request may end first.
    let find = |what: &str, pick: &dyn Fn(&Value) -> bool| -> Value {
        seen.iter()
            .find(|r| pick(r))
            .unwrap_or_else(|| panic!("no record of {what}: {seen:#?}"))
            .clone()
    };
    let first = &find("the first GET", &|r| r["target"] == "/v1/users?page=2");
    assert_eq!(first["method"], "GET");
    assert_eq!(first["target"], "/v1/users?page=2");
    assert_eq!(first["route"], "api.test");
    assert_eq!(first["upstream"], format!("http://{}", api.target()));
    assert_eq!(first["status"], 200);
    assert_eq!(first["protocol"], "HTTP/1.1");
    assert_eq!(first["client"], "127.0.0.1");
    assert_eq!(header(&first["request_headers"], "x-trace"), Some("t-1"));
    assert_eq!(
        header(&first["response_headers"], "content-type"),
        Some("application/json")
    );
    assert!(first["duration_ms"].as_f64().unwrap() > 0.0, "{first}");
    assert!(first["upstream_ms"].as_f64().unwrap() > 0.0, "{first}");
    assert!(first["response_bytes"].as_u64().unwrap() > 50, "{first}");

    let upload = &find("the upload", &|r| r["method"] == "POST");
    assert_eq!(
        (upload["method"].as_str(), upload["target"].as_str()),
        (Some("POST"), Some("/upload"))
    );
    assert_eq!(upload["status"], 200);
    assert!(upload["request_bytes"].as_u64().unwrap() >= 5, "{upload}");

    let h2 = &find("the HTTP/2 request", &|r| r["protocol"] == "HTTP/2");
    assert_eq!(
        (h2["protocol"].as_str(), h2["tls"].as_bool()),
        (Some("HTTP/2"), Some(true))
    );
    assert!(h2["target"].as_str().unwrap().ends_with("/over-h2"), "{h2}");
    assert_eq!(h2["status"], 200);

    let unknown = &find("the unknown host", &|r| r["status"] == 404);
    assert_eq!(
        (unknown["status"].as_u64(), unknown.get("route")),
        (Some(404), None)
    );

    let failed = &find("the failed upstream", &|r| r["status"] == 502);
    assert_eq!(failed["route"], "gone.test");
    assert_eq!(failed["status"], 502);
    assert_eq!(failed["upstream_failed"], true);
    assert!(
        failed["error"].as_str().is_some_and(|e| !e.is_empty()),
        "{failed}"
    );

    let bad = &find("the refused head", &|r| r["status"] == 400);
    assert_eq!(bad["status"], 400);
    assert!(
        bad["error"].as_str().unwrap().contains("Content-Length"),
        "{bad}"
    );

    // The table a user reads, and one route's requests only.
    let table = p.ok(&["requests"]);
    assert!(
        table.lines().any(|l| l.contains(" 200 ")
            && l.contains("api.test")
            && l.ends_with("/v1/users?page=2")),
        "{table}"
    );
    let only_gone = requests(&p, &["--route", "gone"]);
    assert_eq!(only_gone.len(), 1, "{only_gone:#?}");
    assert_eq!(requests(&p, &["-n", "2"]).len(), 2);
}

#[tokio::test]
async fn follow_prints_each_new_request_as_it_ends() {
    let api = Backend::start("api").await;
    let web = Backend::start("web").await;
    let p = Itproxy::start();
    p.ok(&["route", "api", &api.target()]);
    p.ok(&["route", "web", &web.target()]);
    get(p.http, "api.test", "/before").await;

    let mut follower = Command::new(env!("CARGO_BIN_EXE_itproxy"))
        .arg("--state-dir")
        .arg(p.state_dir())
        .args([
            "requests", "--follow", "--json", "--route", "api", "-n", "1",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (lines_tx, lines_rx) = std::sync::mpsc::channel::<String>();
    let stdout = follower.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = lines_tx.send(line);
        }
    });
    let next = |what: &str| -> Value {
        let line = lines_rx
            .recv_timeout(Duration::from_secs(10))
            .unwrap_or_else(|_| panic!("no line for {what} within 10 s"));
        serde_json::from_str(&line).unwrap()
    };
    assert_eq!(next("the latest request")["target"], "/before");

    // Another route's request is not printed; this route's next one is, within moments.
    get(p.http, "web.test", "/elsewhere").await;
    let sent = Instant::now();
    get(p.http, "api.test", "/after").await;
    assert_eq!(next("the new request")["target"], "/after");
    eprintln!(
        "a request reached the follower {:?} after it was sent",
        sent.elapsed()
    );

    let _ = follower.kill();
    let _ = follower.wait();
}

#[tokio::test]
async fn the_inspector_keeps_the_newest_requests_it_is_configured_for() {
    let api = Backend::start("api").await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "[proxy]\nrecent_requests = 3\n");
    let p = Itproxy::start_with(&["--config", config.to_str().unwrap()]);
    p.ok(&["route", "api", &api.target()]);
    for i in 0..5 {
        get(p.http, "api.test", &format!("/{i}")).await;
        // A request is recorded as it ends, after its response went out: a moment apart,
        // the order they ended in is the order they were sent in.
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let seen: Vec<String> = requests(&p, &[])
        .iter()
        .map(|r| r["target"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(seen, ["/2", "/3", "/4"]);

    // The API names what it takes when a query is wrong.
    let (status, body) = p.api("GET", "/v1/requests?limit=many", None);
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "bad_query");
    assert!(
        body["error"]["message"].as_str().unwrap().contains("limit"),
        "{body}"
    );
    let (status, body) = p.api("GET", "/v1/requests?route=not%20a%20name", None);
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (400, Some("invalid_name")),
        "{body}"
    );

    // A config asking for more than the inspector keeps is refused at start, saying so.
    let bad = write_config(dir.path(), "[proxy]\nrecent_requests = 1000000\n");
    let out = run_in(dir.path(), &["check-config", bad.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(
        output_text(&out).contains("recent_requests"),
        "{}",
        output_text(&out)
    );
}

/// `curl -k https://NAME:PORT/PATH --resolve` through the proxy's HTTPS listener.
async fn https_get(p: &Itproxy, host: &str, path: &str) -> (u16, String) {
    let resolve = format!("{host}:{}:127.0.0.1", p.https.port());
    let url = format!("https://{host}:{}{path}", p.https.port());
    let out = tokio::process::Command::new("curl")
        .args([
            "-sS",
            "-k",
            "-o",
            "-",
            "-w",
            "\n%{http_code}",
            "--resolve",
            &resolve,
            &url,
        ])
        .output()
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    (code.parse().unwrap_or(0), body.to_string())
}

#[tokio::test]
async fn the_dashboard_and_metrics_are_served_at_the_proxys_own_name() {
    let api = Backend::start("api").await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "[routes]\n");
    let p = Itproxy::start_with(&["--config", config.to_str().unwrap()]);
    p.ok(&["route", "api", &api.target()]);
    assert_eq!(get(p.http, "api.test", "/one").await.status, 200);
    assert_eq!(get(p.http, "nobody.test", "/").await.status, 404);

    let (status, page) = https_get(&p, "itproxy.test", "/").await;
    assert_eq!(status, 200, "{page}");
    assert!(page.contains("<title>itproxy</title>"), "{page}");
    let (status, metrics) = https_get(&p, "itproxy.test", "/metrics").await;
    assert_eq!(status, 200, "{metrics}");
    assert!(
        metrics.contains("itproxy_requests_total{route=\"api.test\",class=\"2xx\"} 1\n"),
        "{metrics}"
    );
    assert!(
        metrics.contains("itproxy_requests_total{route=\"-\",class=\"4xx\"} 1\n"),
        "{metrics}"
    );
    assert!(
        metrics.contains(
            "itproxy_request_duration_seconds_bucket{route=\"api.test\",le=\"+Inf\"} 1\n"
        ),
        "{metrics}"
    );
    assert!(
        metrics.contains("# TYPE itproxy_dns_queries_total counter"),
        "{metrics}"
    );
    // The same text from the control API.
    let sock = p.dir.path().join("control.sock");
    let out = Command::new("curl")
        .args(["-sS", "--unix-socket"])
        .arg(&sock)
        .arg("http://itproxy/v1/metrics")
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("itproxy_route_swaps_total "));

    // The dashboard's part of the API reads; it changes nothing, and hides credentials
    // (the control socket, the owner's only, shows them).
    let mut c = Client::connect(p.http).await;
    c.send(
        "api.test",
        "/secret",
        &[("authorization", "Bearer TOKEN-123")],
    )
    .await
    .unwrap();
    let (status, listed) = https_get(&p, "itproxy.test", "/v1/requests?route=api").await;
    assert_eq!(status, 200);
    assert!(
        !listed.contains("TOKEN-123") && listed.contains("hidden on the dashboard"),
        "{listed}"
    );
    assert!(p.ok(&["requests", "--json"]).contains("Bearer TOKEN-123"));
    let resolve = format!("itproxy.test:{}:127.0.0.1", p.https.port());
    let url = format!("https://itproxy.test:{}/v1/routes/api", p.https.port());
    let out = Command::new("curl")
        .args([
            "-sk",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "-X",
            "DELETE",
            "--resolve",
            &resolve,
            &url,
        ])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "404");
    assert!(
        p.routes().contains_key("api.test"),
        "the route is still there"
    );

    // The dashboard is no route of the user's: not listed, and a reload keeps it. Its name
    // resolves like a route's.
    std::fs::write(&config, "[routes]\nweb = \"127.0.0.1:9\"\n").unwrap();
    p.ok(&["reload"]);
    let routes = p.routes();
    assert!(
        !routes.contains_key("itproxy.test") && routes.contains_key("web.test"),
        "{routes:?}"
    );
    assert_eq!(https_get(&p, "itproxy.test", "/").await.0, 200);
    let out = Command::new("dig")
        .args([
            "+short",
            &format!("@{}", p.dns.ip()),
            "-p",
            &p.dns.port().to_string(),
            "itproxy.test",
        ])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "127.0.0.1");
    // A route the user sets for the name wins; the dashboard comes back when it goes.
    p.ok(&["route", "itproxy", &api.target()]);
    assert_eq!(
        get(p.http, "itproxy.test", "/").await.backend(),
        Some("api")
    );
    p.ok(&["unroute", "itproxy"]);
    assert_eq!(https_get(&p, "itproxy.test", "/").await.0, 200);
}

#[tokio::test]
async fn the_dashboard_can_be_turned_off() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "[proxy]\ndashboard = \"\"\n");
    let p = Itproxy::start_with(&["--config", config.to_str().unwrap()]);
    assert!(!p.routes().contains_key("itproxy.test"));
    assert_eq!(get(p.http, "itproxy.test", "/").await.status, 404);
}

#[tokio::test]
async fn the_access_log_has_one_json_line_per_request_with_the_same_fields() {
    let api = Backend::start("api").await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "[proxy]\naccess_log = \"access.jsonl\"\n");
    let p = Itproxy::start_with(&["--config", config.to_str().unwrap()]);
    p.ok(&["route", "api", &api.target()]);
    for i in 0..3 {
        get(p.http, "api.test", &format!("/logged/{i}")).await;
    }
    assert_eq!(get(p.http, "nobody.test", "/").await.status, 404);
    let log = p.state_dir().join("access.jsonl");
    let mut lines: Vec<Value> = Vec::new();
    for _ in 0..100 {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        lines = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        if lines.len() >= 4 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(lines.len(), 4, "{lines:#?}");
    let listed = requests(&p, &[]);
    assert_eq!(
        lines, listed,
        "the log says what `itproxy requests --json` says"
    );
    let mut targets: Vec<&str> = lines
        .iter()
        .map(|l| l["target"].as_str().unwrap())
        .collect();
    targets.sort();
    assert_eq!(targets, ["/", "/logged/0", "/logged/1", "/logged/2"]);

    // A log without requests kept to write it from is refused, saying why.
    let bad = write_config(
        dir.path(),
        "[proxy]\nrecent_requests = 0\naccess_log = \"a.log\"\n",
    );
    let out = run_in(dir.path(), &["check-config", bad.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(
        output_text(&out).contains("needs proxy.recent_requests above 0"),
        "{}",
        output_text(&out)
    );
}

#[tokio::test]
async fn bodies_are_kept_for_the_routes_asked_up_to_the_limit() {
    let api = Backend::start("api").await;
    let web = Backend::start("web").await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        "[proxy]\ninspect_bodies = [\"api\"]\ninspect_body_limit = 20\n",
    );
    let p = Itproxy::start_with(&["--config", config.to_str().unwrap()]);
    p.ok(&["route", "api", &api.target()]);
    p.ok(&["route", "web", &web.target()]);
    let mut c = Client::connect(p.http).await;
    // Served by the HTTP/1.1 front.
    c.post("api.test", "/short", "tea=2").await.unwrap();
    c.post("web.test", "/other", "not kept").await.unwrap();
    // Lent to the pipeline (a chunked body).
    let (status, _) = curl(
        p.http,
        "api.test",
        "/chunked",
        &[
            "-H",
            "transfer-encoding: chunked",
            "--data-binary",
            "a chunked request body that is long",
        ],
    )
    .await;
    assert_eq!(status, 200);

    let seen = requests(&p, &[]);
    let by_target = |t: &str| seen.iter().find(|r| r["target"] == t).unwrap().clone();
    let short = by_target("/short");
    assert_eq!(short["request_body"], "tea=2");
    assert!(
        short["response_body"]
            .as_str()
            .unwrap()
            .starts_with("{\"backend\""),
        "{short}"
    );
    assert_eq!(
        short["bodies_cut"], true,
        "the backend's JSON is longer than 20 bytes"
    );
    let other = by_target("/other");
    assert!(
        other.get("request_body").is_none() && other.get("response_body").is_none(),
        "{other}"
    );
    let chunked = by_target("/chunked");
    assert_eq!(chunked["request_body"], "a chunked request bo");
    assert_eq!(chunked["request_body"].as_str().unwrap().len(), 20);
}

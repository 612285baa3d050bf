//! What a user sees when there is no route or the target is down.

use std::time::Duration;

use crate::util::*;

#[tokio::test]
async fn unknown_host_gets_404_listing_known_routes() {
    let p = Itproxy::start();
    p.ok(&["route", "api", "127.0.0.1:9"]);

    let r = get(p.http, "nope.test", "/").await;
    assert_eq!(r.status, 404);
    let j = r.json();
    assert_eq!(j["host"], "nope.test");
    assert_eq!(j["routes"][0]["host"], "api.test");
    assert!(j["message"].as_str().unwrap().contains("nope.test"));

    let (status, html) = curl(p.http, "nope.test", "/", &["-H", "Accept: text/html,*/*"]).await;
    assert_eq!(status, 404);
    assert!(html.contains("<html>") && html.contains("nope.test") && html.contains("api.test"));

    // Never an open proxy: an absolute-form request for a real site is not forwarded.
    let mut c = Client::connect(p.http).await;
    let r = c.get("example.com", "http://example.com/").await.unwrap();
    assert_eq!(r.status, 404);
    assert_eq!(r.json()["host"], "example.com");
}

#[tokio::test]
async fn refused_upstream_gets_502_naming_route_and_target() {
    let p = Itproxy::start();
    let port = free_port();
    p.ok(&["route", "api", &format!("127.0.0.1:{port}")]);
    let r = get(p.http, "api.test", "/").await;
    assert_eq!(r.status, 502);
    let j = r.json();
    assert_eq!(j["route"], "api.test");
    assert_eq!(j["target"], format!("http://127.0.0.1:{port}"));
    assert!(j["detail"].as_str().unwrap().contains("refused"), "{j}");
    // The daemon logs it in its own words (just after answering, so allow it a moment).
    for _ in 0..200 {
        if p.log().contains("upstream request failed") {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("no log line for the failed request:\n{}", p.log());
}

#[tokio::test]
async fn unanswered_connect_gets_504_after_the_connect_timeout() {
    // A listener with a full accept queue never completes new handshakes: the SYN is dropped.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = socket.local_addr().unwrap();
    let listener = socket.listen(0).unwrap();
    let mut fillers = Vec::new();
    for _ in 0..4 {
        if let Ok(Ok(s)) = tokio::time::timeout(
            Duration::from_millis(200),
            tokio::net::TcpStream::connect(addr),
        )
        .await
        {
            fillers.push(s);
        }
    }

    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), "[proxy]\nconnect_timeout = \"300ms\"\n");
    let p = Itproxy::start_with(&["--config", cfg.to_str().unwrap()]);
    p.ok(&["route", "slow", &addr.to_string()]);
    let r = get(p.http, "slow.test", "/").await;
    assert_eq!(r.status, 504, "{}", r.text());
    assert_eq!(r.json()["error"], "upstream_timeout");
    assert_eq!(r.json()["target"], format!("http://{addr}"));
    drop(listener);
}

#[tokio::test]
async fn request_without_host_gets_400() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let p = Itproxy::start();
    let mut s = tokio::net::TcpStream::connect(p.http).await.unwrap();
    s.write_all(b"GET / HTTP/1.0\r\n\r\n").await.unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    assert!(out.starts_with("HTTP/1.1 400"), "{out}");
    assert!(out.contains("no Host header"), "{out}");
}

#[tokio::test]
async fn malformed_http_gets_an_error_and_the_proxy_keeps_serving() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let api = Backend::start("api").await;
    let p = Itproxy::start();
    p.ok(&["route", "api", &api.target()]);
    for garbage in [
        &b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03"[..],
        b"GET / HTTP/9.9\r\nHost: api.test\r\n\r\n",
        b"NOT HTTP AT ALL\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: api.test\r\nContent-Length: x\r\n\r\n",
    ] {
        let mut s = tokio::net::TcpStream::connect(p.http).await.unwrap();
        s.write_all(garbage).await.unwrap();
        let mut out = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out))
            .await
            .expect("the proxy closes or answers malformed requests");
        let text = String::from_utf8_lossy(&out);
        assert!(out.is_empty() || text.starts_with("HTTP/1.1 4"), "{text}");
    }
    assert_eq!(get(p.http, "api.test", "/").await.status, 200);
}

/// A raw HTTP/1.1 backend that answers each request in chunks (or without a body for HEAD),
/// keeps the connection open as HTTP/1.1 allows, then closes it 50 ms later, as servers do
/// with idle keepalive connections.
async fn closing_backend() -> std::net::SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (mut s, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let mut got = Vec::new();
                while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                    }
                }
                let answer: &[u8] = if got.starts_with(b"HEAD") {
                    b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\n"
                } else {
                    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
                };
                let _ = s.write_all(answer).await;
                tokio::time::sleep(Duration::from_millis(50)).await;
                // Dropped: closed while the proxy holds it as idle.
            });
        }
    });
    addr
}

#[tokio::test]
async fn an_upstream_closing_idle_connections_costs_no_failed_request() {
    let backend = closing_backend().await;
    let p = Itproxy::start();
    p.ok(&["route", "api", &backend.to_string()]);
    for round in 0..5 {
        // A POST is not sent twice, so a closed pooled connection must be seen before sending.
        let (status, body) = curl(p.http, "api.test", "/", &["-d", "x=1"]).await;
        assert_eq!(
            (status, body.as_str()),
            (200, "hello world"),
            "POST, round {round}"
        );
        let (status, body) = curl(p.http, "api.test", "/", &[]).await;
        assert_eq!(
            (status, body.as_str()),
            (200, "hello world"),
            "round {round}"
        );
        let (status, _) = curl(p.http, "api.test", "/", &["-I"]).await;
        assert_eq!(status, 200, "HEAD, round {round}");
        // Long enough for the backend to close the connection the proxy keeps idle.
        tokio::time::sleep(Duration::from_millis(120)).await;
    }
}

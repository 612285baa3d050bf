//! Route swaps under load: no request fails, every answer comes from a target the route had.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;

use crate::util::*;

const CLIENTS: usize = 8;
const SWAPS: usize = 1000;
/// Bounds on the load, whatever happens.
const MAX_REQUESTS_PER_CLIENT: usize = 200_000;
const MAX_DURATION: Duration = Duration::from_secs(60);

/// A keepalive connection to the control API, for swapping as fast as a script can.
async fn control(sock: &Path) -> hyper::client::conn::http1::SendRequest<Full<Bytes>> {
    let stream = tokio::net::UnixStream::connect(sock).await.unwrap();
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    sender
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_thousand_swaps_under_load_fail_no_request() {
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    let p = Itproxy::start();
    p.ok(&["route", "api", &a.target()]);

    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut clients = Vec::new();
    for _ in 0..CLIENTS {
        let (stop, failures, proxy) = (stop.clone(), failures.clone(), p.http);
        clients.push(tokio::spawn(async move {
            let mut conn = Client::connect(proxy).await;
            let (mut n, mut from_a, mut from_b) = (0usize, 0usize, 0usize);
            while !stop.load(Ordering::Relaxed)
                && n < MAX_REQUESTS_PER_CLIENT
                && started.elapsed() < MAX_DURATION
            {
                n += 1;
                match conn.get("api.test", "/").await {
                    Ok(r) if r.status == 200 && r.backend() == Some("a") => from_a += 1,
                    Ok(r) if r.status == 200 && r.backend() == Some("b") => from_b += 1,
                    Ok(r) => {
                        failures.fetch_add(1, Ordering::Relaxed);
                        eprintln!("unexpected answer {}: {}", r.status, r.text());
                    }
                    Err(e) => {
                        failures.fetch_add(1, Ordering::Relaxed);
                        eprintln!("request failed: {e}");
                        conn = Client::connect(proxy).await;
                    }
                }
            }
            (conn, n, from_a, from_b)
        }));
    }

    let mut api = control(&p.state_dir().join("control.sock")).await;
    let targets = [a.target(), b.target()];
    let swap_start = Instant::now();
    for i in 1..=SWAPS {
        // Odd swaps go to b, even ones back to a.
        let target = &targets[i % 2];
        let body = serde_json::json!({ "target": target }).to_string();
        let req = hyper::Request::put("/v1/routes/api")
            .header("host", "itproxy")
            .body(Full::new(Bytes::from(body)))
            .unwrap();
        api.ready().await.unwrap();
        let resp = api.send_request(req).await.unwrap();
        let status = resp.status();
        let text = resp.into_body().collect().await.unwrap().to_bytes();
        assert!(status.is_success(), "swap {i} failed: {status} {text:?}");
    }
    let swap_time = swap_start.elapsed();
    let final_backend = if SWAPS % 2 == 1 { "b" } else { "a" };
    stop.store(true, Ordering::Relaxed);

    let (mut total, mut total_a, mut total_b) = (0, 0, 0);
    for c in clients {
        let (mut conn, n, from_a, from_b) = c.await.unwrap();
        total += n;
        total_a += from_a;
        total_b += from_b;
        // After the last swap, the same keepalive connections only reach the final target.
        for _ in 0..5 {
            let r = conn.get("api.test", "/").await.unwrap();
            assert_eq!((r.status, r.backend()), (200, Some(final_backend)));
        }
    }
    let failed = failures.load(Ordering::Relaxed);
    println!(
        "swap under load: {total} requests over {CLIENTS} keepalive connections, {SWAPS} swaps in {:.2?} \
         ({:.0} µs/swap), {total_a} answered by a, {total_b} by b, {failed} failed",
        swap_time,
        swap_time.as_micros() as f64 / SWAPS as f64
    );
    assert_eq!(failed, 0, "requests failed during swaps");
    assert!(
        total_a > 0 && total_b > 0,
        "both targets served during the swaps"
    );
    assert_eq!(total_a + total_b, total);
}

//! A short smoke of `itproxy bench`, so the command cannot rot. No timing assertions: speed is
//! shown by `make bench`, not by tests.

use crate::util::*;

/// Runs `itproxy bench` without blocking the backends on this runtime; returns its JSON report.
async fn bench(p: &Itproxy, args: &[&str]) -> serde_json::Value {
    let out = tokio::process::Command::new(BIN)
        .arg("--state-dir")
        .arg(p.state_dir())
        .args(["bench", "api", "--json"])
        .args(args)
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_reports_proxy_and_direct_side_by_side() {
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    let p = Itproxy::start();
    p.ok(&["route", "api", &a.target()]);
    let plot = p.state_dir().join("latency.svg");
    let plot_arg = plot.display().to_string();
    let report = bench(
        &p,
        &[
            "--duration",
            "1s",
            "--slice",
            "250ms",
            "--connections",
            "4",
            "--direct",
            "--plot",
            &plot_arg,
        ],
    )
    .await;
    let results = report["results"].as_array().unwrap();
    assert_eq!(results[0]["label"], "itproxy");
    assert_eq!(results[1]["label"], "direct");
    for r in results {
        assert!(r["requests"].as_u64().unwrap() > 0, "{r}");
        assert_eq!(r["errors"], 0, "{r}");
        assert!(r["p50_us"].as_u64().unwrap() <= r["p99_us"].as_u64().unwrap());
    }
    assert!(report["overhead"]["p99_us"].is_i64());
    let svg = std::fs::read_to_string(&plot).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("itproxy") && svg.contains("direct"));

    // Swap mode: the route flips between two targets during the run, fails no request, and is
    // left as it was.
    let other = b.target();
    let report = bench(
        &p,
        &[
            "--duration",
            "1s",
            "--connections",
            "4",
            "--swap-every",
            "5ms",
            "--swap-with",
            &other,
        ],
    )
    .await;
    assert!(report["swaps"]["swaps"].as_u64().unwrap() > 10, "{report}");
    assert_eq!(report["swaps"]["failed_requests"], 0);
    assert!(b.hits() > 0, "the second target served during the swaps");
    assert_eq!(p.routes()["api.test"], format!("http://{}", a.target()));

    // A threshold without --direct is refused clearly; a route that does not exist too.
    let err = p.fails(&[
        "bench",
        "api",
        "--duration",
        "100ms",
        "--max-p99-overhead",
        "1s",
    ]);
    assert!(err.contains("needs --direct"), "{err}");
    let err = p.fails(&["bench", "ghost", "--duration", "100ms"]);
    assert!(err.contains("no route for ghost.test"), "{err}");
}

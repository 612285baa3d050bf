//! Acknowledged routes survive restarts and crashes.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::util::*;

#[tokio::test]
async fn routes_survive_a_restart() {
    let api = Backend::start("api").await;
    let mut p = Itproxy::start();
    p.ok(&["route", "api", &api.target()]);
    p.ok(&["route", "gone", "127.0.0.1:9"]);
    p.ok(&["unroute", "gone"]);
    let before = p.routes();

    p.restart();
    assert_eq!(p.routes(), before);
    assert_eq!(get(p.http, "api.test", "/").await.backend(), Some("api"));
    assert_eq!(get(p.http, "gone.test", "/").await.status, 404);
}

#[test]
fn every_acknowledged_route_survives_kill_9() {
    let mut p = Itproxy::start();
    let mut total = 0;
    // Each round waits for some acknowledgements (so a slow machine still tests something), then
    // kills at an arbitrary moment of the writes that follow.
    for (round, (min_acks, delay_ms)) in [(1usize, 0u64), (5, 7), (15, 23)].into_iter().enumerate()
    {
        let acked = Arc::new(Mutex::new(Vec::new()));
        let writer = {
            let acked = acked.clone();
            let dir = p.state_dir().to_path_buf();
            std::thread::spawn(move || {
                for i in 0..10_000 {
                    let name = format!("r{round}-{i}");
                    let out = run_in(&dir, &["route", &name, &format!("127.0.0.1:{}", 1000 + i)]);
                    if !out.status.success() {
                        return; // the daemon is gone
                    }
                    acked.lock().unwrap().push(format!("{name}.test"));
                }
            })
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while acked.lock().unwrap().len() < min_acks && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        std::thread::sleep(Duration::from_millis(delay_ms));
        p.kill9();
        writer.join().unwrap();
        p.relaunch();

        let routes = p.routes();
        let acked = acked.lock().unwrap();
        assert!(
            !acked.is_empty(),
            "no route was acknowledged before the kill"
        );
        for host in acked.iter() {
            assert!(
                routes.contains_key(host),
                "acknowledged route {host} lost after kill -9"
            );
        }
        total += acked.len();
        println!(
            "round {round}: kill -9 {delay_ms} ms after ack #{min_acks}, {} acknowledged routes all back",
            acked.len()
        );
    }
    assert!(total > 3);
}

/// `itproxy route --file`: a thousand routes in one change, kept across a restart; a file with
/// one bad route changes nothing and names it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_of_routes_is_set_together_or_not_at_all() {
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    let mut p = Itproxy::start();
    let file = p.state_dir().join("routes.toml");
    let many = |target: &str| {
        (0..1000)
            .map(|i| format!("r{i} = \"{target}\"\n"))
            .collect::<String>()
    };
    std::fs::write(
        &file,
        format!(
            "# a comment\n{}web = {{ target = \"{}\", redirect_https = true }}\n",
            many(&a.target()),
            b.target()
        ),
    )
    .unwrap();
    let said = p.ok(&["route", "--file", file.to_str().unwrap()]);
    assert!(said.contains("set 1001 routes"), "{said}");
    assert_eq!(get(p.http, "r999.test", "/").await.backend(), Some("a"));
    assert_eq!(get(p.http, "web.test", "/").await.status, 308);

    // One bad target among a thousand good ones: refused, named, and nothing changed.
    std::fs::write(
        &file,
        format!("{}bad = \"no such host.invalid:80\"\n", many(&b.target())),
    )
    .unwrap();
    let refused = p.fails(&["route", "--file", file.to_str().unwrap()]);
    assert!(
        refused.contains("bad:") && refused.contains("none of the changes was applied"),
        "{refused}"
    );
    assert_eq!(get(p.http, "r1.test", "/").await.backend(), Some("a"));
    // Not a routes file: refused, saying what one looks like.
    std::fs::write(&file, "r1 = 5\n").unwrap();
    let refused = p.fails(&["route", "--file", file.to_str().unwrap()]);
    assert!(refused.contains("NAME = \"TARGET\""), "{refused}");

    let before = p.routes();
    p.restart();
    assert_eq!(p.routes(), before);
    assert_eq!(get(p.http, "r999.test", "/").await.backend(), Some("a"));
}

/// Changes are appended to a log, which is compacted into routes.json once it outgrows the
/// routes, in the background; a kill -9 right after (whatever the compaction's step) loses
/// nothing, and the next start finishes a compaction it cut short.
#[test]
fn the_route_log_is_compacted_and_a_kill_during_it_loses_nothing() {
    let mut p = Itproxy::start();
    let file = p.state_dir().join("routes.toml");
    for round in 0..4u16 {
        let routes: String = (0..600)
            .map(|i| format!("r{i} = \"127.0.0.1:{}\"\n", 1000 + round))
            .collect();
        std::fs::write(&file, routes).unwrap();
        p.ok(&["route", "--file", file.to_str().unwrap()]);
    }
    // 2400 lines for 600 routes: compacted (the third file's lines went over twice the routes).
    p.kill9();
    p.relaunch();
    let routes = p.routes();
    assert_eq!(routes.len(), 600);
    assert!(
        routes.values().all(|t| t.ends_with(":1003")),
        "every route at its last target"
    );
    let dir = p.state_dir();
    assert!(
        dir.join("routes.json").exists(),
        "compacted into routes.json"
    );
    assert!(
        !dir.join("routes.log.old").exists(),
        "no compaction left half done"
    );
    let log_lines = std::fs::read_to_string(dir.join("routes.log"))
        .unwrap()
        .lines()
        .count();
    assert!(log_lines <= 1200, "the log was cut: {log_lines} lines");
}

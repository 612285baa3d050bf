//! Micro-benchmarks of the request-path route lookup, of publishing a new route table, of
//! rewriting request and response heads on the HTTP/1.1 front (`itproxy_router::codec`), and of
//! recording a request in the inspector.
//! Run with `make bench` (or `cargo bench --bench route_table`).

use std::hint::black_box;
use std::sync::Arc;

use arc_swap::ArcSwap;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use itproxy_router::{HostName, Route, RouteTable, Upstream, UpstreamOptions, UpstreamSpec};

fn routes(n: usize) -> Vec<Route> {
    let opts = UpstreamOptions::default();
    (0..n)
        .map(|i| {
            let spec = UpstreamSpec::parse(&format!("127.0.0.1:{}", 1000 + i % 60000)).unwrap();
            let addr = format!("127.0.0.1:{}", spec.port()).parse().unwrap();
            let up = Arc::new(Upstream::new(spec, vec![addr], i as u64, &opts));
            Route::new(HostName::parse(&format!("app{i}.test")).unwrap(), up)
        })
        .collect()
}

fn lookup(c: &mut Criterion) {
    let mut g = c.benchmark_group("lookup");
    for n in [10usize, 1_000, 100_000] {
        let table = ArcSwap::from_pointee(RouteTable::new(routes(n)));
        let hit = format!("app{}.test:8080", n / 2);
        g.bench_with_input(BenchmarkId::new("hit", n), &hit, |b, host| {
            b.iter(|| {
                table
                    .load()
                    .lookup(black_box(host))
                    .map(|r| r.upstream().clone())
            })
        });
        let mixed = format!("App{}.Test", n / 2);
        g.bench_with_input(BenchmarkId::new("hit_mixed_case", n), &mixed, |b, host| {
            b.iter(|| {
                table
                    .load()
                    .lookup(black_box(host))
                    .map(|r| r.upstream().clone())
            })
        });
        g.bench_with_input(BenchmarkId::new("miss", n), "nope.test", |b, host| {
            b.iter(|| table.load().lookup(black_box(host)).is_some())
        });
    }
    g.finish();
}

fn publish(c: &mut Criterion) {
    let mut g = c.benchmark_group("publish");
    for n in [10usize, 1_000] {
        let shared = ArcSwap::from_pointee(RouteTable::default());
        let all: Vec<Route> = routes(n);
        g.bench_with_input(BenchmarkId::new("build_and_store", n), &n, |b, _| {
            b.iter(|| {
                let table = RouteTable::new(
                    all.iter()
                        .map(|r| Route::new(r.host().clone(), r.upstream().clone())),
                );
                shared.store(Arc::new(table));
            })
        });
    }
    g.finish();
}

fn rewrite(c: &mut Criterion) {
    use itproxy_router::codec::{read_response, RequestCodec, RequestVerdict, ResponseVerdict};
    let mut g = c.benchmark_group("rewrite");
    let routes = Arc::new(ArcSwap::from_pointee(RouteTable::new(routes(1_000))));
    let requests = RequestCodec::new(routes, vec![], None);
    let forwarded = |v| matches!(v, RequestVerdict::Forward { .. });
    let relayed = |v| matches!(v, ResponseVerdict::Final { .. });
    // What a browser sends, give or take.
    let request = b"GET /api/items?page=2 HTTP/1.1\r\nHost: app500.test\r\n\
User-Agent: Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0\r\n\
Accept: application/json\r\nAccept-Language: en-US,en;q=0.5\r\n\
Accept-Encoding: gzip, deflate, br\r\nConnection: keep-alive\r\n\
Cookie: session=0123456789abcdef; theme=dark\r\nX-Forwarded-For: 203.0.113.9\r\n\r\n";
    let peer = "127.0.0.1".parse().unwrap();
    let mut out = Vec::with_capacity(4096);
    assert!(forwarded(requests.read(request, peer, false, &mut out)));
    g.bench_function("request_head", |b| {
        b.iter(|| forwarded(requests.read(black_box(request), peer, false, &mut out)))
    });
    let answer = b"HTTP/1.1 200 OK\r\nServer: nginx\r\nDate: Wed, 25 Nov 2026 10:00:00 GMT\r\n\
Content-Type: application/json\r\nContent-Length: 1234\r\nConnection: keep-alive\r\n\
Cache-Control: no-cache\r\nETag: \"abc123\"\r\n\r\n";
    assert!(relayed(read_response(answer, false, &mut out)));
    g.bench_function("response_head", |b| {
        b.iter(|| relayed(read_response(black_box(answer), false, &mut out)))
    });
    g.finish();
}

/// One request recorded as the HTTP/1.1 front records it (route, timings, both heads copied),
/// into a full ring (the steady state: the oldest record reused) and with no ring (counts only,
/// `recent_requests = 0`): the inspector's cost per request.
fn record(c: &mut Criterion) {
    use itproxy_router::Inspector;
    use std::time::{Duration, SystemTime};
    let mut g = c.benchmark_group("inspector_record");
    let route = Arc::new(routes(1).remove(0));
    let request = b"GET /v1/users?page=2 HTTP/1.1\r\nHost: app0.test\r\nUser-Agent: wrk\r\n\
                    Accept: application/json\r\nX-Request-Id: 0123456789abcdef\r\n\r\n";
    let response = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\
                     Content-Length: 512\r\nDate: Mon, 07 Dec 2026 04:00:00 GMT\r\n\
                     Connection: keep-alive\r\n\r\n";
    for (name, capacity) in [("ring_1000_full", 1000usize), ("counts_only", 0)] {
        let inspector = Inspector::new(capacity);
        let fill = |e: &mut itproxy_router::inspect::Exchange| {
            e.route = Some(route.clone());
            e.status = 200;
            e.duration = Duration::from_micros(180);
            e.upstream_duration = Some(Duration::from_micros(150));
            e.request_bytes = request.len() as u64;
            e.response_bytes = 700;
            if inspector.keeps_requests() {
                e.time = SystemTime::now();
                e.set_request_head(request);
                e.set_response_head(response);
            }
        };
        for _ in 0..capacity {
            inspector.record(fill);
        }
        g.bench_function(name, |b| b.iter(|| inspector.record(fill)));
    }
    g.finish();
}

criterion_group!(benches, lookup, publish, rewrite, record);
criterion_main!(benches);

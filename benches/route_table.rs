//! Micro-benchmarks of the request-path route lookup and of publishing a new route table.
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

criterion_group!(benches, lookup, publish);
criterion_main!(benches);

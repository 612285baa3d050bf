//! What one route change costs to publish at 10, 1,000 and 100,000 routes: the change applied
//! to the desired state and the route table and DNS zone to publish taken from it (kept host by
//! host in persistent maps), beside what rebuilding each from every source costs (what every
//! change did before). Persisting a change is one log append, measured separately. Run with
//! `make bench` (or `cargo bench -p itproxy-daemon --bench publish`).

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use itproxy_daemon::bench_support::Routes;

fn publish(c: &mut Criterion) {
    let mut g = c.benchmark_group("publish_change");
    g.sample_size(10);
    for n in [10usize, 1_000, 100_000] {
        let mut routes = Routes::new(n);
        let mut i = 0;
        g.bench_with_input(BenchmarkId::new("change_table_and_zone", n), &n, |b, _| {
            b.iter(|| {
                i += 1;
                black_box(routes.change_and_snapshot(i))
            })
        });
        g.bench_with_input(BenchmarkId::new("rebuild_table", n), &n, |b, _| {
            b.iter(|| black_box(routes.rebuilt_table()))
        });
        g.bench_with_input(BenchmarkId::new("rebuild_zone", n), &n, |b, _| {
            b.iter(|| black_box(routes.rebuilt_zone()))
        });
    }
    g.finish();
}

criterion_group!(benches, publish);
criterion_main!(benches);

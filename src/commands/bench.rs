//! `itproxy bench ROUTE`: routing latency through the running proxy, side by side with the
//! upstream reached directly (and any other proxy given with --also), for people and for CI.
//!
//! Targets are loaded in alternating slices (1 s by default) so that every target sees the same
//! machine noise. Closed loop by default (each connection sends its next request when the last
//! answer arrives); with --rate, open loop at a fixed rate, latency measured from when each
//! request *should* have been sent, so a stall is not hidden (coordinated omission).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use hdrhistogram::Histogram;
use http::Method;
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use serde::Serialize;

use crate::client::Client;
use itproxy_daemon::api::{self, RouteView};

/// What to measure and how; built from the command line.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    pub route: String,
    pub path: String,
    pub duration: Duration,
    pub slice: Duration,
    pub connections: usize,
    pub rate: Option<u64>,
    pub direct: bool,
    pub skip_itproxy: bool,
    pub also: Vec<(String, SocketAddr)>,
    pub json: bool,
    pub max_p99_overhead: Option<Duration>,
    pub plot: Option<PathBuf>,
    pub swap_every: Option<Duration>,
    pub swap_with: Option<String>,
}

#[derive(Clone)]
struct Target {
    label: String,
    addr: SocketAddr,
}

/// One target's figures.
#[derive(Serialize, Debug, Clone)]
pub struct TargetResult {
    pub label: String,
    pub addr: String,
    pub requests: u64,
    pub errors: u64,
    pub seconds: f64,
    pub requests_per_second: f64,
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
}

/// The whole run, as `--json` prints it.
#[derive(Serialize, Debug)]
pub struct Report {
    pub route: String,
    pub target: String,
    pub mode: String,
    pub connections: usize,
    pub duration_seconds: f64,
    pub results: Vec<TargetResult>,
    /// itproxy minus direct, when --direct was given.
    pub overhead: Option<Overhead>,
    pub swaps: Option<SwapReport>,
}

#[derive(Serialize, Debug)]
pub struct Overhead {
    pub p50_us: i64,
    pub p99_us: i64,
    pub throughput_ratio: f64,
}

#[derive(Serialize, Debug)]
pub struct SwapReport {
    pub swaps: u64,
    pub failed_requests: u64,
    pub every_us: u64,
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds")
}

struct Stats {
    hist: Histogram<u64>,
    requests: u64,
    errors: u64,
    elapsed: Duration,
}

async fn connect(
    addr: SocketAddr,
) -> anyhow::Result<hyper::client::conn::http1::SendRequest<Empty<Bytes>>> {
    let stream = tokio::net::TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

/// Sends one GET; returns the status and whether the server will close the connection.
async fn one_request(
    sender: &mut hyper::client::conn::http1::SendRequest<Empty<Bytes>>,
    host: &str,
    path: &str,
) -> anyhow::Result<(u16, bool)> {
    let req = hyper::Request::get(path)
        .header(http::header::HOST, host)
        .body(Empty::new())?;
    let resp = sender.send_request(req).await?;
    let status = resp.status().as_u16();
    let closing = resp
        .headers()
        .get(http::header::CONNECTION)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"close"));
    resp.into_body().collect().await?;
    Ok((status, closing))
}

/// Loads one target with `connections` workers until `until`.
async fn slice(target: &Target, opts: &BenchOptions, host: &str, until: Instant) -> Stats {
    let mut tasks = Vec::with_capacity(opts.connections);
    let interval = opts
        .rate
        .map(|r| Duration::from_secs_f64(opts.connections as f64 / r.max(1) as f64));
    let started = Instant::now();
    for w in 0..opts.connections {
        let (addr, host, path) = (target.addr, host.to_string(), opts.path.clone());
        let workers = opts.connections as f64;
        tasks.push(tokio::spawn(async move {
            let mut hist = histogram();
            let (mut requests, mut errors) = (0u64, 0u64);
            let mut sender: Option<hyper::client::conn::http1::SendRequest<Empty<Bytes>>> = None;
            // Open loop: stagger the workers' first sends over one interval.
            let mut next = interval.map(|i| Instant::now() + i.mul_f64(w as f64 / workers));
            loop {
                let intended = match (&mut next, interval) {
                    (Some(n), Some(i)) => {
                        let at = *n;
                        *n += i;
                        if at >= until {
                            break;
                        }
                        if Instant::now() < at {
                            // Idle until the send time: lateness from here on is the timer's
                            // (about 1 ms granularity), not the server's, so measure from the
                            // actual send.
                            tokio::time::sleep_until(at.into()).await;
                            Instant::now()
                        } else {
                            // Behind schedule because the server was slow: measure from when
                            // the request should have gone out (coordinated omission).
                            at
                        }
                    }
                    _ => {
                        let now = Instant::now();
                        if now >= until {
                            break;
                        }
                        now
                    }
                };
                // A keepalive connection the server closed is replaced, not counted as an error.
                if sender
                    .as_mut()
                    .is_some_and(|s| s.is_closed() || futures_ready(s).is_err())
                {
                    sender = None;
                }
                if sender.is_none() {
                    match connect(addr).await {
                        Ok(s) => sender = Some(s),
                        Err(_) => {
                            errors += 1;
                            requests += 1;
                            tokio::time::sleep(Duration::from_millis(10)).await;
                            continue;
                        }
                    }
                }
                let result = one_request(sender.as_mut().expect("connected"), &host, &path).await;
                let latency = intended.elapsed().as_micros().max(1) as u64;
                requests += 1;
                match result {
                    Ok((status, closing)) if status < 500 => {
                        let _ = hist.record(latency.min(60_000_000));
                        if closing {
                            sender = None;
                        }
                    }
                    Ok(_) => errors += 1,
                    Err(_) => {
                        errors += 1;
                        sender = None;
                    }
                }
            }
            (hist, requests, errors)
        }));
    }
    let mut stats = Stats {
        hist: histogram(),
        requests: 0,
        errors: 0,
        elapsed: Duration::ZERO,
    };
    for t in tasks {
        if let Ok((h, r, e)) = t.await {
            let _ = stats.hist.add(&h);
            stats.requests += r;
            stats.errors += e;
        }
    }
    stats.elapsed = started.elapsed();
    stats
}

/// Whether a sender can take a request now, without waiting.
fn futures_ready(s: &mut hyper::client::conn::http1::SendRequest<Empty<Bytes>>) -> Result<(), ()> {
    let waker = std::task::Waker::noop();
    let mut cx = std::task::Context::from_waker(waker);
    match s.poll_ready(&mut cx) {
        std::task::Poll::Ready(Err(_)) => Err(()),
        _ => Ok(()),
    }
}

fn result(t: &Target, s: &Stats) -> TargetResult {
    let secs = s.elapsed.as_secs_f64().max(1e-9);
    TargetResult {
        label: t.label.clone(),
        addr: t.addr.to_string(),
        requests: s.requests,
        errors: s.errors,
        seconds: secs,
        requests_per_second: s.requests as f64 / secs,
        p50_us: s.hist.value_at_quantile(0.50),
        p90_us: s.hist.value_at_quantile(0.90),
        p99_us: s.hist.value_at_quantile(0.99),
        p999_us: s.hist.value_at_quantile(0.999),
        max_us: s.hist.max(),
    }
}

async fn swapper(
    client: Arc<Client>,
    path: String,
    targets: [String; 2],
    every: Duration,
    stop: Arc<AtomicBool>,
    swaps: Arc<AtomicU64>,
) -> anyhow::Result<()> {
    let mut i = 1;
    while !stop.load(Ordering::Relaxed) {
        let body = serde_json::json!({ "target": targets[i % 2] });
        let _: RouteView = client.call(Method::PUT, &path, Some(body)).await?;
        swaps.fetch_add(1, Ordering::Relaxed);
        i += 1;
        tokio::time::sleep(every).await;
    }
    Ok(())
}

fn us(v: u64) -> String {
    if v >= 10_000 {
        format!("{:.1}ms", v as f64 / 1000.0)
    } else {
        format!("{v}µs")
    }
}

fn print_table(r: &Report) {
    println!(
        "itproxy bench {} -> {} ({}, {} connections, {:.1}s)",
        r.route, r.target, r.mode, r.connections, r.duration_seconds
    );
    println!(
        "{:<10} {:>10} {:>10} {:>8} {:>9} {:>9} {:>9} {:>9} {:>9}",
        "TARGET", "REQUESTS", "REQ/S", "ERRORS", "P50", "P90", "P99", "P99.9", "MAX"
    );
    for t in &r.results {
        println!(
            "{:<10} {:>10} {:>10.0} {:>8} {:>9} {:>9} {:>9} {:>9} {:>9}",
            t.label,
            t.requests,
            t.requests_per_second,
            t.errors,
            us(t.p50_us),
            us(t.p90_us),
            us(t.p99_us),
            us(t.p999_us),
            us(t.max_us)
        );
    }
    if let Some(o) = &r.overhead {
        println!(
            "overhead through itproxy: p50 {:+}µs, p99 {:+}µs, throughput {:.2}x of direct",
            o.p50_us, o.p99_us, o.throughput_ratio
        );
    }
    if let Some(s) = &r.swaps {
        println!(
            "route swaps: {} (every {}µs), failed requests: {}",
            s.swaps, s.every_us, s.failed_requests
        );
    }
}

fn plot(path: &Path, targets: &[Target], stats: &[Stats]) -> anyhow::Result<()> {
    use plotters::prelude::*;
    let root = SVGBackend::new(path, (900, 540)).into_drawing_area();
    root.fill(&WHITE)?;
    let max_us = stats.iter().map(|s| s.hist.max()).max().unwrap_or(1).max(1) as f64;
    let mut chart = ChartBuilder::on(&root)
        .caption("itproxy bench: latency by percentile", ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d((1f64..100_000f64).log_scale(), 0f64..(max_us * 1.05))?;
    chart
        .configure_mesh()
        .x_desc("percentile")
        .y_desc("latency (µs)")
        .x_label_formatter(&|x| {
            let p = 100.0 * (1.0 - 1.0 / x);
            if p < 1.0 {
                "0%".into()
            } else {
                let text = format!("{p:.3}");
                format!("{}%", text.trim_end_matches('0').trim_end_matches('.'))
            }
        })
        .draw()?;
    let colors = [BLUE, RED, GREEN, MAGENTA, CYAN];
    for (i, (t, s)) in targets.iter().zip(stats).enumerate() {
        if s.hist.is_empty() {
            continue;
        }
        let points: Vec<(f64, f64)> = (0..=500)
            .map(|k| {
                let q = 1.0 - 10f64.powf(-(k as f64) / 100.0);
                (
                    1.0 / (1.0 - q).max(1e-5),
                    s.hist.value_at_quantile(q.min(0.99999)) as f64,
                )
            })
            .collect();
        let color = colors[i % colors.len()];
        chart
            .draw_series(LineSeries::new(points, color.stroke_width(2)))?
            .label(t.label.clone())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
    }
    chart
        .configure_series_labels()
        .border_style(BLACK)
        .background_style(WHITE)
        .draw()?;
    root.present()?;
    Ok(())
}

/// `bench`: the load generator gets a worker per core.
pub fn main(a: crate::cli::BenchArgs, state_dir: &Path) -> anyhow::Result<()> {
    let opts = BenchOptions {
        route: a.route,
        path: a.path,
        duration: a.duration,
        slice: a.slice,
        connections: a.connections,
        rate: a.rate,
        direct: a.direct,
        skip_itproxy: a.skip_itproxy,
        also: a.also,
        json: a.json,
        max_p99_overhead: a.max_p99_overhead,
        plot: a.plot,
        swap_every: a.swap_every,
        swap_with: a.swap_with,
    };
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cores)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?
        .block_on(run(opts, state_dir))
}

/// Runs the benchmark against the daemon behind `state_dir`.
pub async fn run(opts: BenchOptions, state_dir: &Path) -> anyhow::Result<()> {
    let client = Arc::new(Client::new(state_dir));
    let route_path = super::route_path(&opts.route)?;
    let route: RouteView = client.call(Method::GET, &route_path, None).await?;
    let status: api::Status = client.call(Method::GET, "/v1/status", None).await?;
    let proxy: SocketAddr = status
        .listeners
        .http
        .first()
        .context("the daemon has no plain-HTTP listener to load (itproxy bench measures HTTP)")?
        .parse()?;
    if opts.connections == 0 {
        bail!("--connections must be at least 1");
    }
    let mut targets = vec![Target {
        label: "itproxy".into(),
        addr: proxy,
    }];
    if opts.direct {
        if !route.target.starts_with("http://") {
            bail!(
                "--direct needs an http:// target; {} is {}",
                route.host,
                route.target
            );
        }
        let addr = route
            .addresses
            .first()
            .with_context(|| format!("{} has no resolved address to load directly", route.host))?
            .parse()?;
        targets.push(Target {
            label: "direct".into(),
            addr,
        });
    }
    for (label, addr) in &opts.also {
        targets.push(Target {
            label: label.clone(),
            addr: *addr,
        });
    }
    // Every target must answer before the clock starts.
    for t in &targets {
        let mut s = connect(t.addr)
            .await
            .with_context(|| format!("cannot connect to {} ({})", t.label, t.addr))?;
        let (code, _) = one_request(&mut s, &route.host, &opts.path)
            .await
            .with_context(|| format!("{} ({}) did not answer", t.label, t.addr))?;
        if code >= 500 {
            bail!(
                "{} ({}) answers {code} for http://{}{}; is the upstream running?",
                t.label,
                t.addr,
                route.host,
                opts.path
            );
        }
    }

    let stop = Arc::new(AtomicBool::new(false));
    let swaps = Arc::new(AtomicU64::new(0));
    let swap_task = match (opts.swap_every, &opts.swap_with) {
        (Some(every), Some(other)) => Some(tokio::spawn(swapper(
            client.clone(),
            route_path.clone(),
            [route.target.clone(), other.clone()],
            every,
            stop.clone(),
            swaps.clone(),
        ))),
        (Some(_), None) => {
            bail!("--swap-every needs --swap-with TARGET, the second target to swap to")
        }
        _ => None,
    };

    let slice_len = opts
        .slice
        .min(opts.duration / targets.len().max(1) as u32)
        .max(Duration::from_millis(100));
    let mut stats: Vec<Stats> = targets
        .iter()
        .map(|_| Stats {
            hist: histogram(),
            requests: 0,
            errors: 0,
            elapsed: Duration::ZERO,
        })
        .collect();
    // Every target gets the same number of slices, in turn.
    let per_round = slice_len * targets.len() as u32;
    let rounds = (opts.duration.as_secs_f64() / per_round.as_secs_f64())
        .round()
        .max(1.0) as usize;
    let started = Instant::now();
    for _ in 0..rounds {
        for (t, target) in targets.iter().enumerate() {
            let s = slice(target, &opts, &route.host, Instant::now() + slice_len).await;
            let _ = stats[t].hist.add(&s.hist);
            stats[t].requests += s.requests;
            stats[t].errors += s.errors;
            stats[t].elapsed += s.elapsed;
        }
    }
    let total = started.elapsed();

    let swap_report = if let Some(task) = swap_task {
        stop.store(true, Ordering::Relaxed);
        task.await.context("the swap task failed")??;
        // Leave the route as it was.
        let body = serde_json::json!({
            "target": route.target,
            "redirect_https": route.redirect_https,
            "insecure_upstream": route.insecure_upstream,
        });
        let _: RouteView = client.call(Method::PUT, &route_path, Some(body)).await?;
        if route.source == api::RouteSource::Config {
            let _: api::Restored = client
                .call(Method::POST, &format!("{route_path}/restore"), None)
                .await?;
        }
        Some(SwapReport {
            swaps: swaps.load(Ordering::Relaxed),
            failed_requests: stats[0].errors,
            every_us: opts.swap_every.map_or(0, |d| d.as_micros() as u64),
        })
    } else {
        None
    };

    let results: Vec<TargetResult> = targets
        .iter()
        .zip(&stats)
        .map(|(t, s)| result(t, s))
        .collect();
    let overhead = (opts.direct && !opts.skip_itproxy).then(|| {
        let (p, d) = (&results[0], &results[1]);
        Overhead {
            p50_us: p.p50_us as i64 - d.p50_us as i64,
            p99_us: p.p99_us as i64 - d.p99_us as i64,
            throughput_ratio: p.requests_per_second / d.requests_per_second.max(1e-9),
        }
    });
    let report = Report {
        route: route.host.clone(),
        target: route.target.clone(),
        mode: match opts.rate {
            Some(r) => format!("open loop at {r} req/s"),
            None => "closed loop".into(),
        },
        connections: opts.connections,
        duration_seconds: total.as_secs_f64(),
        results,
        overhead,
        swaps: swap_report,
    };
    if let Some(p) = &opts.plot {
        plot(p, &targets, &stats)
            .with_context(|| format!("cannot write the plot {}", p.display()))?;
    }
    if opts.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_table(&report);
        if let Some(p) = &opts.plot {
            println!("plot: {}", p.display());
        }
    }
    if let (Some(limit), Some(o)) = (opts.max_p99_overhead, &report.overhead) {
        if o.p99_us > limit.as_micros() as i64 {
            bail!(
                "p99 overhead through itproxy is {}µs, over the limit of {}µs (--max-p99-overhead)",
                o.p99_us,
                limit.as_micros()
            );
        }
    }
    if opts.max_p99_overhead.is_some() && report.overhead.is_none() {
        bail!("--max-p99-overhead needs --direct to measure the overhead against");
    }
    Ok(())
}

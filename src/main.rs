//! The `itproxy` binary: CLI, daemon wiring, configuration, state and the control API.
//! Protocol work lives in the subsystem crates (`itproxy-router`, ...).

mod bench;
mod ca;
mod cli;
mod client;
mod control;
mod daemon;
mod envcmd;
mod hostdns;
mod resolve;
mod state;

use itproxy::{api, config};

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use http::Method;

use crate::api::RouteView;
use crate::cli::{CaCommand, Cli, Command, RouteArgs, UpArgs};
use crate::client::Client;
use crate::config::Config;

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(&cli);
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(cli: &Cli) {
    let daemon = matches!(cli.command, Command::Up(_));
    let level = match (cli.quiet, cli.verbose, daemon) {
        (true, _, _) => "error",
        (_, 0, true) => "info,pingora_core=warn,pingora_core::services::listening=off,pingora_core::connectors=off,pingora_proxy=off,pingora=warn,hickory_server=warn,hickory_proto=warn,hickory_resolver=warn,hickory_net=warn",
        (_, 0, false) => "warn",
        (_, 1, _) => "debug,pingora_core=info,pingora_proxy=info,hyper=info",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .try_init();
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

fn default_state_dir() -> anyhow::Result<PathBuf> {
    if let Some(x) = std::env::var_os("XDG_STATE_HOME").filter(|v| !v.is_empty()) {
        return Ok(PathBuf::from(x).join("itproxy"));
    }
    let home = std::env::var_os("HOME")
        .filter(|v| !v.is_empty())
        .context("cannot find a state directory: HOME is not set; pass --state-dir")?;
    Ok(PathBuf::from(home).join(".local/state/itproxy"))
}

fn config_path(explicit: Option<PathBuf>) -> Option<PathBuf> {
    explicit.or_else(|| {
        let p = PathBuf::from("itproxy.toml");
        p.is_file().then_some(p)
    })
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let state_dir = match cli.state_dir {
        Some(d) => d,
        None => default_state_dir()?,
    };
    let config = cli.config;
    match cli.command {
        Command::Up(args) => up(args, config, state_dir),
        Command::CheckConfig { file } => check_config(file.or(config)),
        Command::Ca(cmd) => ca_command(cmd, config, &state_dir),
        Command::Down { env } => {
            // The file's apps need not be valid to tear down what they left.
            let c =
                Config::load(config_path(config).as_deref(), &Default::default()).or_else(|e| {
                    if env.is_some() {
                        Config::load(None, &Default::default())
                    } else {
                        Err(e)
                    }
                })?;
            runtime()?.block_on(envcmd::down(&c, env, &state_dir))
        }
        Command::Apps { json } => runtime()?.block_on(envcmd::apps(&state_dir, json)),
        Command::App(cmd) => runtime()?.block_on(envcmd::app(&state_dir, cmd)),
        Command::Logs(args) => {
            let c = Config::load(config_path(config).as_deref(), &Default::default())?;
            runtime()?.block_on(envcmd::logs(&c, args))
        }
        Command::Dns(cmd) => {
            let c = Config::load(
                config_path(config).as_deref(),
                &config::CliOverrides::default(),
            )?;
            match cmd {
                cli::DnsCommand::Setup { apply } => hostdns::setup(&c, apply, false),
                cli::DnsCommand::Teardown { apply } => hostdns::setup(&c, apply, true),
            }
        }
        Command::Resolve {
            name,
            record_type,
            json,
        } => runtime()?.block_on(resolve::run(&state_dir, &name, &record_type, json)),
        Command::Bench(a) => {
            let opts = bench::BenchOptions {
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
            // The load generator gets both cores' worth of workers.
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .context("cannot start the async runtime")?
                .block_on(bench::run(opts, &state_dir))
        }
        Command::Route(args) => runtime()?.block_on(route(args, &state_dir)),
        Command::Unroute { name, json } => runtime()?.block_on(async {
            let removed: api::Removed = Client::new(&state_dir)
                .call(Method::DELETE, &route_path(&name)?, None)
                .await?;
            if json {
                print_json(&removed)
            } else {
                println!("removed {} (was {})", removed.host, removed.target);
                Ok(())
            }
        }),
        Command::Routes { json } => runtime()?.block_on(async {
            let routes: Vec<RouteView> = Client::new(&state_dir)
                .call(Method::GET, "/v1/routes", None)
                .await?;
            if json {
                print_json(&routes)
            } else {
                print_routes(&routes)
            }
        }),
        Command::Status { json } => runtime()?.block_on(async {
            let s: api::Status = Client::new(&state_dir)
                .call(Method::GET, "/v1/status", None)
                .await?;
            if json {
                print_json(&s)
            } else {
                print_status(&s)
            }
        }),
    }
}

fn up(args: UpArgs, config: Option<PathBuf>, state_dir: PathBuf) -> anyhow::Result<()> {
    let overrides = config::CliOverrides {
        http: args.http,
        https: args.https,
        no_https: args.no_https,
        dns: args.dns,
        no_dns: args.no_dns,
        dns_upstreams: args.dns_upstream,
        env: args.env,
        domains: args.domain,
    };
    let path = config_path(config);
    let config = Config::load(path.as_deref(), &overrides)?;
    if args.detach && !envcmd::is_detached_child() {
        return runtime()?.block_on(envcmd::up_detached(&state_dir));
    }
    if let Some(p) = &config.source {
        tracing::info!("using config file {}", p.display());
    }
    // One thread for the DNS server and the control API (the proxy has its own): measured
    // faster for DNS than two workers on a 2-core machine (fewer cross-thread wake-ups).
    runtime()?.block_on(daemon::run(config, state_dir, args.step))
}

fn ca_command(cmd: CaCommand, config: Option<PathBuf>, state_dir: &Path) -> anyhow::Result<()> {
    let rotate_domains = match &cmd {
        CaCommand::Rotate { domain, .. } => domain.clone(),
        _ => Vec::new(),
    };
    let overrides = config::CliOverrides {
        domains: rotate_domains,
        ..Default::default()
    };
    let c = Config::load(config_path(config).as_deref(), &overrides)?;
    let domains: Vec<String> = c.domains.iter().map(|d| d.to_string()).collect();
    match cmd {
        CaCommand::Path => ca::path(state_dir, &domains),
        CaCommand::Env { json } => ca::env(state_dir, &domains, json),
        CaCommand::Install => ca::install(state_dir, &domains, false),
        CaCommand::Uninstall => ca::install(state_dir, &domains, true),
        CaCommand::Rotate { yes, .. } => ca::rotate(state_dir, &domains, yes),
    }
}

fn check_config(file: Option<PathBuf>) -> anyhow::Result<()> {
    let path = config_path(file).context(
        "no config file given and ./itproxy.toml does not exist; pass the file to check",
    )?;
    let c = Config::load(Some(&path), &config::CliOverrides::default())?;
    println!("{}: ok", path.display());
    println!("  domains: {}", c.domains.to_string_list());
    let http: Vec<String> = c.listen.http.iter().map(|a| a.to_string()).collect();
    let https: Vec<String> = c.listen.https.iter().map(|a| a.to_string()).collect();
    println!("  http:    {}", http.join(", "));
    println!("  https:   {}", https.join(", "));
    let dns: Vec<String> = c.listen.dns.iter().map(|a| a.to_string()).collect();
    println!("  dns:     {}", dns.join(", "));
    println!("  routes:  {}", c.routes.len());
    for (host, r) in &c.routes {
        println!("    {host} -> {}", r.target);
    }
    let Some(env) = &c.env else {
        return Ok(());
    };
    println!("  env:     {}", env.name);
    for step in env.apps.steps() {
        println!("  step {}:", step.name);
        for a in &step.apps {
            let deps: Vec<&str> = a.depends_on.iter().map(|d| d.as_str()).collect();
            println!(
                "    {} ({}){}; ready: {} within {}",
                a.name,
                a.image,
                if deps.is_empty() {
                    String::new()
                } else {
                    format!(" after {}", deps.join(", "))
                },
                a.ready.check,
                humantime::format_duration(a.ready.timeout)
            );
        }
    }
    Ok(())
}

/// The API path for a route name; the daemon validates the name itself.
fn route_path(name: &str) -> anyhow::Result<String> {
    if name.trim().is_empty() {
        anyhow::bail!("the route name is empty; give an app name such as `api`");
    }
    let mut p = String::from("/v1/routes/");
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            p.push(b as char);
        } else {
            p.push_str(&format!("%{b:02X}"));
        }
    }
    Ok(p)
}

async fn route(args: RouteArgs, state_dir: &Path) -> anyhow::Result<()> {
    let client = Client::new(state_dir);
    let path = route_path(&args.name)?;
    if args.restore {
        let r: api::Restored = client
            .call(Method::POST, &format!("{path}/restore"), None)
            .await?;
        if args.json {
            return print_json(&r);
        }
        let what = if r.changed {
            "restored"
        } else {
            "already at its declared target:"
        };
        println!("{what} {} -> {}", r.route.host, r.route.target);
        return Ok(());
    }
    let target = args
        .target
        .expect("clap requires a target without --restore");
    let body = serde_json::json!({
        "target": target,
        "redirect_https": args.redirect_https,
        "insecure_upstream": args.insecure_upstream,
    });
    let r: RouteView = client.call(Method::PUT, &path, Some(body)).await?;
    if args.json {
        return print_json(&r);
    }
    match &r.declared {
        Some(d) => println!("{} -> {} (overrides {d})", r.host, r.target),
        None => println!("{} -> {}", r.host, r.target),
    }
    Ok(())
}

pub(crate) fn print_json<T: serde::Serialize>(v: &T) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, v)?;
    writeln!(out)?;
    Ok(())
}

fn print_routes(routes: &[RouteView]) -> anyhow::Result<()> {
    if routes.is_empty() {
        println!("no routes; add one with `itproxy route NAME TARGET`");
        return Ok(());
    }
    let hw = routes
        .iter()
        .map(|r| r.host.len())
        .max()
        .unwrap_or(0)
        .max(4);
    let tw = routes
        .iter()
        .map(|r| r.target.len())
        .max()
        .unwrap_or(0)
        .max(6);
    println!("{:hw$}  {:tw$}  SOURCE", "HOST", "TARGET");
    for r in routes {
        let source = match (&r.source, &r.declared) {
            (api::RouteSource::Config, _) => "config".to_string(),
            (api::RouteSource::Discovered, _) => "container".to_string(),
            (api::RouteSource::App, _) => "app".to_string(),
            (api::RouteSource::Override, None) => "override".to_string(),
            (api::RouteSource::Override, Some(d)) => format!("override (declared {d})"),
        };
        println!("{:hw$}  {:tw$}  {source}", r.host, r.target);
    }
    Ok(())
}

fn print_status(s: &api::Status) -> anyhow::Result<()> {
    let up = humantime::format_duration(std::time::Duration::from_secs(s.uptime_seconds as u64));
    println!("itproxy {} (pid {}), up {up}", s.version, s.pid);
    println!("  http:      {}", s.listeners.http.join(", "));
    println!("  https:     {}", s.listeners.https.join(", "));
    println!("  dns:       {}", s.listeners.dns.join(", "));
    if !s.listeners.dns.is_empty() {
        let up = if s.dns_upstreams.is_empty() {
            "none".to_string()
        } else {
            s.dns_upstreams.join(", ")
        };
        println!("  upstream:  {up}");
    }
    println!("  control:   {}", s.listeners.control);
    println!("  domains:   {}", s.domains.join(", "));
    if let Some(env) = &s.env {
        println!("  env:       {env} (Docker network itproxy-{env})");
    }
    println!("  routes:    {} ({} overrides)", s.routes, s.overrides);
    println!("  state dir: {}", s.state_dir);
    println!(
        "  config:    {}",
        s.config_file.as_deref().unwrap_or("(built-in defaults)")
    );
    Ok(())
}

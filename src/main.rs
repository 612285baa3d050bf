//! The `itproxy` binary: the command line (parsing, dispatch, printing). The daemon it starts
//! with `up` is the `itproxy-daemon` crate; protocol work lives in the subsystem crates.

mod cli;
mod client;
mod commands;

use itproxy_daemon::config;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;

use crate::cli::{CaCommand, Cli, Command, UpArgs};
use itproxy_daemon::config::Config;

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
            runtime()?.block_on(commands::env::down(&c, env, &state_dir))
        }
        Command::Apps { json } => runtime()?.block_on(commands::env::apps(&state_dir, json)),
        Command::App(cmd) => runtime()?.block_on(commands::env::app(&state_dir, cmd)),
        Command::Logs(args) => {
            let c = Config::load(config_path(config).as_deref(), &Default::default())?;
            runtime()?.block_on(commands::env::logs(&c, args))
        }
        Command::Dns(cmd) => {
            let c = Config::load(
                config_path(config).as_deref(),
                &config::CliOverrides::default(),
            )?;
            match cmd {
                cli::DnsCommand::Setup { apply } => commands::dns::setup(&c, apply, false),
                cli::DnsCommand::Teardown { apply } => commands::dns::setup(&c, apply, true),
            }
        }
        Command::Resolve {
            name,
            record_type,
            json,
        } => runtime()?.block_on(commands::resolve::run(
            &state_dir,
            &name,
            &record_type,
            json,
        )),
        Command::Bench(a) => {
            let opts = commands::bench::BenchOptions {
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
                .block_on(commands::bench::run(opts, &state_dir))
        }
        Command::Route(args) => runtime()?.block_on(commands::route(args, &state_dir)),
        Command::Unroute { name, json } => {
            runtime()?.block_on(commands::unroute(&name, json, &state_dir))
        }
        Command::Routes { json } => runtime()?.block_on(commands::routes(json, &state_dir)),
        Command::Status { json } => runtime()?.block_on(commands::status(json, &state_dir)),
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
    if args.detach && !commands::env::is_detached_child() {
        return runtime()?.block_on(commands::env::up_detached(&state_dir));
    }
    if let Some(p) = &config.source {
        tracing::info!("using config file {}", p.display());
    }
    // One thread for the DNS server and the control API (the proxy has its own): measured
    // faster for DNS than two workers on a 2-core machine (fewer cross-thread wake-ups).
    Ok(runtime()?.block_on(itproxy_daemon::run(config, state_dir, args.step))?)
}

fn ca_command(cmd: CaCommand, config: Option<PathBuf>, state_dir: &Path) -> anyhow::Result<()> {
    let state_dir = &itproxy_daemon::StateDir::new(state_dir);
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
        CaCommand::Path => commands::ca::path(state_dir, &domains),
        CaCommand::Env { json } => commands::ca::env(state_dir, &domains, json),
        CaCommand::Install => commands::ca::install(state_dir, &domains, false),
        CaCommand::Uninstall => commands::ca::install(state_dir, &domains, true),
        CaCommand::Rotate { yes, .. } => commands::ca::rotate(state_dir, &domains, yes),
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

//! `itproxy up`: the daemon in the foreground, or `--detach`ed (`env::up_detached`).

use std::path::{Path, PathBuf};

use anyhow::bail;
use itproxy_daemon::api;
use itproxy_daemon::config::{CliOverrides, Config};

use super::{config_path, runtime};
use crate::cli::UpArgs;

/// A daemon runs with this state directory: fine if it serves this config's environment from
/// the same file, an error naming both otherwise.
fn already_up(status: &api::Status, config: &Config, state_dir: &Path) -> anyhow::Result<()> {
    let canonical = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
    let theirs = status
        .config_file
        .as_deref()
        .map(|p| canonical(Path::new(p)));
    let ours = config.source.as_deref().map(canonical);
    let env = config.env.as_ref().map(|e| e.name.to_string());
    let listens = listens_on(&config.listen.http, &status.listeners.http)
        && listens_on(&config.listen.https, &status.listeners.https)
        && listens_on(&config.listen.dns, &status.listeners.dns);
    if !listens {
        bail!(
            "itproxy (pid {}) is already running with the state directory {}, listening on \
             HTTP {}, HTTPS {}, DNS {}; this `up` asks for other addresses: stop it \
             (`itproxy stop`), or give this one its own --state-dir",
            status.pid,
            state_dir.display(),
            status.listeners.http.join(", "),
            status.listeners.https.join(", "),
            status.listeners.dns.join(", ")
        );
    }
    if theirs != ours || status.env != env {
        let show = |f: &Option<PathBuf>, e: &Option<String>| {
            format!(
                "{} (environment {})",
                f.as_ref().map_or("the built-in defaults".to_string(), |p| p
                    .display()
                    .to_string()),
                e.as_deref().unwrap_or("none")
            )
        };
        bail!(
            "itproxy (pid {}) is already running with the state directory {} for {}; this `up` \
             is for {}: stop it (`itproxy stop`, or `itproxy down` to remove its environment \
             too), or give this one its own --state-dir",
            status.pid,
            state_dir.display(),
            show(&theirs, &status.env),
            show(&ours, &env)
        );
    }
    println!(
        "itproxy (pid {}) is already running with the state directory {}; nothing to start",
        status.pid,
        state_dir.display()
    );
    Ok(())
}

/// Whether the daemon's listeners include every `requested` address (port 0: any port).
fn listens_on(requested: &[std::net::SocketAddr], running: &[String]) -> bool {
    let running: Vec<std::net::SocketAddr> =
        running.iter().filter_map(|a| a.parse().ok()).collect();
    requested.iter().all(|r| {
        running
            .iter()
            .any(|a| a.ip() == r.ip() && (r.port() == 0 || a.port() == r.port()))
    })
}

/// `up`: loads the config with the flags over it and runs the daemon until it is stopped.
pub fn run(args: UpArgs, config: Option<PathBuf>, state_dir: PathBuf) -> anyhow::Result<()> {
    let overrides = CliOverrides {
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
    if !super::env::is_detached_child() {
        let rt = runtime()?;
        // `up` is idempotent: the same environment already up is success, not a conflict.
        if let Some(status) = rt.block_on(super::running_daemon(&state_dir))? {
            already_up(&status, &config, &state_dir)?;
            return if args.detach {
                rt.block_on(super::env::wait_until_up(&state_dir, None))
            } else {
                Ok(())
            };
        }
        if args.detach {
            return rt.block_on(super::env::up_detached(&state_dir));
        }
    }
    if let Some(p) = &config.source {
        tracing::info!("using config file {}", p.display());
    }
    // One thread for the DNS server and the control API (the proxy has its own): measured
    // faster for DNS than two workers on a 2-core machine (fewer cross-thread wake-ups).
    Ok(runtime()?.block_on(itproxy_daemon::run(config, state_dir, args.step))?)
}

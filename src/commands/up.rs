//! `itproxy up`: the daemon in the foreground, or `--detach`ed (`env::up_detached`).

use std::path::PathBuf;

use itproxy_daemon::config::{CliOverrides, Config};

use super::{config_path, runtime};
use crate::cli::UpArgs;

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
    if args.detach && !super::env::is_detached_child() {
        return runtime()?.block_on(super::env::up_detached(&state_dir));
    }
    if let Some(p) = &config.source {
        tracing::info!("using config file {}", p.display());
    }
    // One thread for the DNS server and the control API (the proxy has its own): measured
    // faster for DNS than two workers on a 2-core machine (fewer cross-thread wake-ups).
    Ok(runtime()?.block_on(itproxy_daemon::run(config, state_dir, args.step))?)
}

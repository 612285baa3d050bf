//! Command-line syntax (clap). Parsing only: no I/O happens here.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// itproxy: local production for integration environments. Every service under a real host
/// name, routes that swap in microseconds.
#[derive(Parser, Debug)]
#[command(name = "itproxy", version, about, long_about = None, propagate_version = true)]
pub struct Cli {
    /// State directory: control socket, persisted routes.
    /// [default: $XDG_STATE_HOME/itproxy or ~/.local/state/itproxy]
    #[arg(long, global = true, env = "ITPROXY_STATE_DIR", value_name = "DIR")]
    pub state_dir: Option<PathBuf>,

    /// Config file [default: ./itproxy.toml if it exists, else built-in defaults].
    #[arg(
        long,
        short = 'c',
        global = true,
        env = "ITPROXY_CONFIG",
        value_name = "FILE"
    )]
    pub config: Option<PathBuf>,

    /// More log output (repeat for more); RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,

    /// Only errors in the log.
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    pub quiet: bool,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the daemon (proxy, DNS, control API) and bring up the environment's apps; in the
    /// foreground until SIGINT/SIGTERM, or with --detach until the apps are ready.
    Up(UpArgs),
    /// Route NAME (an app name like `api`, or a host like `api.test`) to TARGET, or restore it.
    #[command(arg_required_else_help = true)]
    Route(RouteArgs),
    /// Remove NAME's route (declared or set with `route`).
    Unroute {
        /// App name or host name.
        name: String,
        /// Print the answer as JSON.
        #[arg(long)]
        json: bool,
    },
    /// List the routes.
    Routes {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Show the daemon's listeners, route count, uptime and version.
    Status {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Stop the daemon if it runs, then remove the environment's containers and network
    /// (nothing else on the engine is touched).
    Down {
        /// The environment [default: the running daemon's, else the config's `env.name`].
        #[arg(long, value_name = "NAME")]
        env: Option<String>,
        /// Remove the environment's volumes too (their data is lost).
        #[arg(long)]
        volumes: bool,
    },
    /// Stop the daemon only; the environment's containers keep running (`up` reuses them).
    Stop,
    /// Read the config file again and apply it: declared routes, and apps added (started),
    /// removed (stopped, containers removed, volumes kept) or changed (restarted). Domains,
    /// [listen], [env] name, [proxy], [dns] and [tls] need `itproxy stop` and `up`.
    Reload {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// List the environment's apps: state, readiness, containers and what they serve.
    Apps {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Start, stop or restart one app.
    #[command(subcommand)]
    App(AppCommand),
    /// Save the environment's named volumes as a snapshot, or restore one: known data for
    /// each test without re-running seeds.
    #[command(subcommand)]
    Snapshot(SnapshotCommand),
    /// Show or move the clock of an app that declares `faketime`, while it runs.
    #[command(subcommand)]
    Time(TimeCommand),
    /// Print an app's logs, or with --errors scan every container of the environment and
    /// exit 1 if a line looks like an error.
    #[command(arg_required_else_help = true)]
    Logs(LogsArgs),
    /// Show the requests the proxy answered lately (newest last): status, method, host,
    /// target, time taken, size; --follow prints each new one as it ends.
    Requests(RequestsArgs),
    /// Backend mocks recorded with `route NAME --record DIR`.
    #[command(subcommand)]
    Mock(MockCommand),
    /// Show what the daemon's DNS server answers for NAME.
    Resolve {
        /// The name, e.g. api.test.
        name: String,
        /// Record type.
        #[arg(long = "type", short = 't', default_value = "A", value_name = "TYPE")]
        record_type: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Measure routing latency through the running proxy (and directly, with --direct).
    Bench(BenchArgs),
    /// Make this machine's resolver send the environment's domains to itproxy.
    #[command(subcommand)]
    Dns(DnsCommand),
    /// The local certificate authority: where it is, how to trust it, rotation.
    #[command(subcommand)]
    Ca(CaCommand),
    /// Chromium with the CA trusted and the domains' names sent to this daemon: print its
    /// command line (a profile and NSS database of its own under the state directory), or
    /// start it with --launch.
    Browser(BrowserArgs),
    /// Print a shell completion script, e.g. `itproxy completions bash >
    /// ~/.local/share/bash-completion/completions/itproxy`.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Validate a config file and print what it declares.
    CheckConfig {
        /// The file [default: ./itproxy.toml].
        #[arg(value_name = "FILE")]
        file: Option<PathBuf>,
    },
}

#[derive(Subcommand, Debug)]
pub enum AppCommand {
    /// Start the app's containers (its dependencies must be ready).
    Start(AppActionArgs),
    /// Stop the app's containers; its routes go away first.
    Stop {
        /// The app.
        name: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Restart the app: a ready app without writable named volumes keeps serving while new
    /// containers start beside its own, and switches to them once they are ready
    /// (`restart = "stop-first"` in the config stops it first).
    Restart(AppActionArgs),
    /// Start the app afresh: its containers recreated from the image and its volumes emptied
    /// (their data is lost), as a fixture between tests.
    Reset(AppActionArgs),
}

#[derive(Subcommand, Debug)]
pub enum TimeCommand {
    /// The time the app's processes read now, and its offset.
    Show {
        /// The app.
        app: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Move the app's clock: an offset from the real time (`+2d`, `-3h`) or a UTC time
    /// (`"2027-01-01 10:00:00"`); its processes read it within a second, no restart.
    Set {
        /// The app.
        app: String,
        /// The offset or time.
        #[arg(allow_hyphen_values = true)]
        time: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Put the app's clock back as declared (its `faketime`, from now).
    Reset {
        /// The app.
        app: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum SnapshotCommand {
    /// Save every app's named volumes as NAME (each app stopped meanwhile, then started again).
    Save {
        /// The snapshot's name.
        name: String,
    },
    /// Give each app of snapshot NAME fresh volumes holding what was saved, and start it.
    Restore {
        /// The snapshot's name.
        name: String,
    },
    /// List the snapshots.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args, Debug)]
pub struct AppActionArgs {
    /// The app.
    pub name: String,
    /// Return only once the app is ready (exit 1 if it does not become ready).
    #[arg(long)]
    pub wait: bool,
    /// Readiness timeout for this start [default: the app's `ready.timeout`].
    #[arg(long, value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub timeout: Option<std::time::Duration>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// `itproxy mock ...`.
#[derive(Subcommand, Debug)]
pub enum MockCommand {
    /// Send every request recorded in DIR to the live backend and report what changed in
    /// status, headers and JSON shape; exit 1 if anything did.
    Diff {
        /// The recording.
        dir: std::path::PathBuf,
        /// The backend, e.g. `http://127.0.0.1:8000` [default: the target it was recorded
        /// from].
        #[arg(long, value_name = "URL")]
        target: Option<String>,
    },
}

/// Arguments of `itproxy requests`.
#[derive(Args, Debug)]
pub struct RequestsArgs {
    /// Only this route's requests (an app name like `api`, or a host like `api.test`).
    #[arg(long, value_name = "NAME")]
    pub route: Option<String>,
    /// Keep printing requests as they end, until interrupted.
    #[arg(long, short = 'f')]
    pub follow: bool,
    /// How many of the latest requests to print first.
    #[arg(long, short = 'n', value_name = "N", default_value_t = 20)]
    pub limit: usize,
    /// One JSON object per request and line, with headers (as `GET /v1/requests` gives).
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct LogsArgs {
    /// App, endpoint or container name.
    #[arg(required_unless_present = "errors", conflicts_with = "errors")]
    pub name: Option<String>,
    /// Keep printing new lines.
    #[arg(long, short = 'f', conflicts_with = "errors")]
    pub follow: bool,
    /// Only the last N lines of each container.
    #[arg(long, value_name = "N", conflicts_with = "errors")]
    pub tail: Option<usize>,
    /// Scan every container of the environment for error lines; exit 1 listing them.
    #[arg(long)]
    pub errors: bool,
    /// Only lines since this time: a duration ago (`10m`) or a time (`2026-11-25T18:00:00Z`).
    #[arg(long, value_parser = parse_since, value_name = "WHEN")]
    pub since: Option<i64>,
    /// With --errors: a regex that marks error lines, replacing the apps' patterns (repeatable).
    #[arg(long, value_name = "REGEX", requires = "errors")]
    pub pattern: Vec<regex::Regex>,
    /// The environment [default: the running daemon's, else the config's `env.name`].
    #[arg(long, value_name = "NAME")]
    pub env: Option<String>,
}

/// `--since`: a duration ago or an RFC 3339 time, as Unix seconds.
fn parse_since(s: &str) -> Result<i64, String> {
    let now = std::time::SystemTime::now();
    let at = match humantime::parse_duration(s) {
        Ok(ago) => now.checked_sub(ago).ok_or("that is before 1970")?,
        Err(_) => humantime::parse_rfc3339_weak(s).map_err(|_| {
            format!("{s:?} is neither a duration like 10m nor a time like 2026-11-25T18:00:00Z")
        })?,
    };
    Ok(at
        .duration_since(std::time::UNIX_EPOCH)
        .map_err(|_| "that is before 1970")?
        .as_secs() as i64)
}

#[derive(Subcommand, Debug)]
pub enum DnsCommand {
    /// Print (or with --apply, perform) the host resolver set-up for the domains.
    Setup {
        /// Write the files and restart the resolver instead of printing the plan.
        #[arg(long)]
        apply: bool,
    },
    /// Print (or with --apply, perform) the undoing of `dns setup`.
    Teardown {
        /// Remove the files and restart the resolver instead of printing the plan.
        #[arg(long)]
        apply: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum CaCommand {
    /// Print the root certificate's path (creating the CA on first use).
    Path,
    /// Print shell `export` lines that make runtimes trust the CA (SSL_CERT_FILE, ...).
    Env {
        /// Print JSON instead.
        #[arg(long)]
        json: bool,
    },
    /// Add the root to the system store and the Chromium/Firefox NSS databases.
    Install,
    /// Remove the root from the system store and the NSS databases.
    Uninstall,
    /// Replace the root with a new one (e.g. after changing the domains).
    Rotate {
        /// Do not ask for confirmation.
        #[arg(long, short = 'y')]
        yes: bool,
        /// Domains the new root permits (repeatable) [default: the config's].
        #[arg(long, value_name = "DOMAIN")]
        domain: Vec<String>,
    },
}

#[derive(Args, Debug)]
pub struct UpArgs {
    /// Plain-HTTP listen address (repeatable) [default: 127.0.0.1:80].
    #[arg(long, value_name = "ADDR")]
    pub http: Vec<SocketAddr>,
    /// HTTPS listen address (repeatable) [default: 127.0.0.1:443].
    #[arg(long, value_name = "ADDR", conflicts_with = "no_https")]
    pub https: Vec<SocketAddr>,
    /// Serve no HTTPS.
    #[arg(long)]
    pub no_https: bool,
    /// DNS listen address, UDP and TCP (repeatable) [default: 127.0.0.1:53].
    #[arg(long, value_name = "ADDR", conflicts_with = "no_dns")]
    pub dns: Vec<SocketAddr>,
    /// Serve no DNS.
    #[arg(long)]
    pub no_dns: bool,
    /// Docker environment: create (or reuse) its network and listen on its gateway too, so
    /// containers reach every route and the DNS [default: the config's `env.name`, else none].
    #[arg(long, value_name = "NAME")]
    pub env: Option<String>,
    /// Upstream resolver for other names (repeatable) [default: those in /etc/resolv.conf].
    #[arg(long, value_name = "IP[:PORT]", value_parser = itproxy_daemon::config::parse_resolver)]
    pub dns_upstream: Vec<SocketAddr>,
    /// Domain to serve (repeatable; the first qualifies app names) [default: test].
    #[arg(long, value_name = "DOMAIN")]
    pub domain: Vec<String>,
    /// Run only these steps of the apps (repeatable); apps of other steps are used if they
    /// already run [default: all steps].
    #[arg(long, value_name = "NAME")]
    pub step: Vec<String>,
    /// Run the daemon in the background and return once every app is ready (exit 1 with the
    /// reason if one is not); its log goes to `itproxy.log` in the state directory.
    #[arg(long, short = 'd')]
    pub detach: bool,
}

#[derive(Args, Debug)]
pub struct BrowserArgs {
    /// Pages to open: an app or host name (`api`, `www.shop.test/login`) or a URL.
    #[arg(value_name = "PAGE")]
    pub pages: Vec<String>,
    /// Start Chromium (in the background) instead of printing its command line.
    #[arg(long)]
    pub launch: bool,
    /// No window (`--headless=new`).
    #[arg(long)]
    pub headless: bool,
    /// The browser to run [default: chromium, chromium-browser or google-chrome on PATH].
    #[arg(long, env = "ITPROXY_CHROMIUM", value_name = "PATH")]
    pub chromium: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct BenchArgs {
    /// The route to load (app name or host).
    pub route: String,
    /// Request path.
    #[arg(long, default_value = "/")]
    pub path: String,
    /// How long to load, all targets together.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub duration: std::time::Duration,
    /// Targets take turns in slices of this length.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    pub slice: std::time::Duration,
    /// Concurrent keepalive connections.
    #[arg(long, default_value_t = 32)]
    pub connections: usize,
    /// Open loop at this many requests per second (latency corrected for coordinated omission);
    /// closed loop without it.
    #[arg(long)]
    pub rate: Option<u64>,
    /// Also load the upstream directly, alternating, to show the overhead.
    #[arg(long)]
    pub direct: bool,
    /// Do not load itproxy itself, only --direct and --also targets (to measure another proxy
    /// with the same client).
    #[arg(long)]
    pub skip_itproxy: bool,
    /// Also load another proxy for the same host, e.g. --also nginx=127.0.0.1:8081 (repeatable).
    #[arg(long, value_name = "NAME=ADDR", value_parser = parse_also)]
    pub also: Vec<(String, SocketAddr)>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
    /// Exit non-zero when the p99 overhead over direct exceeds this (needs --direct).
    #[arg(long, value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub max_p99_overhead: Option<std::time::Duration>,
    /// Write a latency-by-percentile plot (SVG).
    #[arg(long, value_name = "FILE.svg")]
    pub plot: Option<PathBuf>,
    /// Swap the route to --swap-with and back at this interval during the run.
    #[arg(long, value_parser = humantime::parse_duration, value_name = "DURATION", requires = "swap_with")]
    pub swap_every: Option<std::time::Duration>,
    /// The second target for --swap-every.
    #[arg(long, value_name = "TARGET", requires = "swap_every")]
    pub swap_with: Option<String>,
}

fn parse_also(s: &str) -> Result<(String, SocketAddr), String> {
    let (name, addr) = s
        .split_once('=')
        .ok_or("expected NAME=ADDR, e.g. nginx=127.0.0.1:8081")?;
    let addr = addr
        .parse()
        .map_err(|_| format!("{addr:?} is not an address like 127.0.0.1:8081"))?;
    Ok((name.to_string(), addr))
}

#[derive(Args, Debug)]
pub struct RouteArgs {
    /// App name (`api` means `api.<domain>`) or full host name.
    #[arg(required_unless_present = "file", conflicts_with = "file")]
    pub name: Option<String>,
    /// `host:port`, `http://host:port`, `https://host[:port]`, or a port on localhost.
    #[arg(required_unless_present_any = ["restore", "file", "record", "mock"], conflicts_with_all = ["restore", "record", "mock"])]
    pub target: Option<String>,
    /// Record: forward as usual and save each exchange (method, path, query, content-type,
    /// accept, body; the response) as a JSON file in DIR, until --restore.
    #[arg(long, value_name = "DIR", conflicts_with_all = ["restore", "file", "mock", "redirect_https", "insecure_upstream"])]
    pub record: Option<std::path::PathBuf>,
    /// Mock: answer from the exchanges recorded in DIR, without the backend, until --restore.
    #[arg(long, value_name = "DIR", conflicts_with_all = ["restore", "file", "redirect_https", "insecure_upstream"])]
    pub mock: Option<std::path::PathBuf>,
    /// Set every route of a TOML file (`NAME = "TARGET"` or `NAME = { target = "...",
    /// redirect_https = true, insecure_upstream = true }`) in one change: all or none.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["restore", "redirect_https", "insecure_upstream"])]
    pub file: Option<std::path::PathBuf>,
    /// Drop the mock, else the override: back to the route before it.
    #[arg(long)]
    pub restore: bool,
    /// Answer plain-HTTP requests with a redirect to HTTPS.
    #[arg(long, conflicts_with = "restore")]
    pub redirect_https: bool,
    /// Do not verify an https:// target's certificate (self-signed dev backends).
    #[arg(long, conflicts_with = "restore")]
    pub insecure_upstream: bool,
    /// Print the answer as JSON.
    #[arg(long)]
    pub json: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn logs_takes_a_name_or_errors() {
        assert!(Cli::try_parse_from(["itproxy", "logs"]).is_err());
        assert!(Cli::try_parse_from(["itproxy", "logs", "api", "--errors"]).is_err());
        assert!(Cli::try_parse_from(["itproxy", "logs", "--errors", "--pattern", "("]).is_err());
        assert!(Cli::try_parse_from(["itproxy", "logs", "--errors", "--since", "soon"]).is_err());
        assert!(Cli::try_parse_from(["itproxy", "logs", "--errors", "--since", "10m"]).is_ok());
        assert!(Cli::try_parse_from([
            "itproxy",
            "logs",
            "api",
            "-f",
            "--since",
            "2026-11-25T18:00:00Z"
        ])
        .is_ok());
    }

    #[test]
    fn route_needs_a_target_or_restore_not_both() {
        assert!(Cli::try_parse_from(["itproxy", "route", "api"]).is_err());
        assert!(Cli::try_parse_from(["itproxy", "route", "api", "x:1", "--restore"]).is_err());
        assert!(Cli::try_parse_from(["itproxy", "route", "api", "--restore"]).is_ok());
        assert!(Cli::try_parse_from(["itproxy", "up", "--http", "nowhere"]).is_err());
    }
}

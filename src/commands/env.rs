//! The environment's commands on the CLI side: `up --detach`, `apps`, `app`, `logs`, `down`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use futures_util::StreamExt;
use http::Method;
use itproxy_orchestrator::{Engine, EnvName, ErrorScan};

use crate::cli::{AppActionArgs, AppCommand, LogsArgs, SnapshotCommand};
use crate::client::{Client, ClientError};
use itproxy_daemon::api::{self, AppState, EnvPhase};
use itproxy_daemon::config::Config;
use itproxy_daemon::StateDir;

/// Set in the detached daemon's environment, so it runs in the foreground.
const DETACHED_CHILD: &str = "ITPROXY_DETACHED_CHILD";
/// The longest `up --detach` waits for the environment (each app has its own timeout too).
const DETACH_LIMIT: Duration = Duration::from_secs(30 * 60);

/// Whether this process is the daemon started by `up --detach`.
pub fn is_detached_child() -> bool {
    std::env::var_os(DETACHED_CHILD).is_some()
}

/// `up --detach`: starts this same command as a background daemon (own process group, log in
/// the state directory), then waits until its apps are ready, or reports why not.
pub async fn up_detached(state_dir: &Path) -> anyhow::Result<()> {
    use std::os::unix::process::CommandExt;
    StateDir::new(state_dir).ensure()?;
    let log_path = StateDir::new(state_dir).daemon_log();
    let log = std::fs::File::create(&log_path)
        .with_context(|| format!("cannot create the daemon's log {}", log_path.display()))?;
    let exe = std::env::current_exe().context("cannot find the itproxy executable to start")?;
    let mut child = std::process::Command::new(exe)
        .args(std::env::args_os().skip(1))
        .env(DETACHED_CHILD, "1")
        // As the variable, not an argument: the arguments may hold --state-dir already.
        .env("ITPROXY_STATE_DIR", state_dir)
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        // Its own process group: a Ctrl-C in this terminal does not reach it.
        .process_group(0)
        .spawn()
        .context("cannot start the daemon")?;
    wait_until_up(state_dir, Some(&mut child)).await
}

/// Waits until the daemon's environment is ready (or has none), printing each app's state as
/// it changes; fails when an app fails, or when `child` (a daemon just started) exits.
pub async fn wait_until_up(
    state_dir: &Path,
    mut child: Option<&mut std::process::Child>,
) -> anyhow::Result<()> {
    let log_path = StateDir::new(state_dir).daemon_log();
    let began = Instant::now();
    let client = Client::new(state_dir);
    let mut last_state = String::new();
    loop {
        if let Some(c) = child.as_deref_mut() {
            if let Some(status) = c.try_wait()? {
                let tail = tail_of(&log_path, 20);
                anyhow::bail!(
                    "the daemon exited ({status}) before its apps were ready; the end of {}:\n{tail}",
                    log_path.display()
                );
            }
        }
        match client
            .call::<api::AppsView>(Method::GET, "/v1/apps", None)
            .await
        {
            Ok(view) => {
                let states: Vec<String> = view
                    .apps
                    .iter()
                    .map(|a| format!("{} {}", a.name, state_word(a.state)))
                    .collect();
                let now = states.join(", ");
                if now != last_state && !now.is_empty() {
                    eprintln!("  {now}");
                    last_state = now;
                }
                match view.phase {
                    EnvPhase::Ready | EnvPhase::Idle => {
                        let ready = view
                            .apps
                            .iter()
                            .filter(|a| a.state == AppState::Ready)
                            .count();
                        match child.as_deref() {
                            Some(c) => println!(
                                "itproxy is up (pid {}) in {:.2} s: {ready} apps ready; log: {}",
                                c.id(),
                                began.elapsed().as_secs_f64(),
                                log_path.display()
                            ),
                            None => println!("{ready} apps ready"),
                        }
                        return Ok(());
                    }
                    EnvPhase::Failed => anyhow::bail!(
                        "the environment did not come up:\n{}\nthe daemon keeps running: \
                         see `itproxy apps` and `itproxy logs APP`; fix itproxy.toml and \
                         `itproxy reload` to finish, or `itproxy down` to remove it all",
                        view.error.unwrap_or_default(),
                    ),
                    EnvPhase::Starting => {}
                }
            }
            Err(ClientError::NotRunning { .. }) if child.is_some() => {}
            Err(e) => return Err(e.into()),
        }
        if began.elapsed() > DETACH_LIMIT {
            anyhow::bail!(
                "the environment is still starting after {} min; see `itproxy apps`",
                DETACH_LIMIT.as_secs() / 60
            );
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

fn tail_of(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..]
        .iter()
        .map(|l| format!("  | {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

fn state_word(s: AppState) -> &'static str {
    match s {
        AppState::Pending => "pending",
        AppState::Starting => "starting",
        AppState::Ready => "ready",
        AppState::Restarting => "restarting",
        AppState::Failed => "FAILED",
        AppState::Stopped => "stopped",
    }
}

/// `itproxy apps`.
pub async fn apps(state_dir: &Path, json: bool) -> anyhow::Result<()> {
    let view: api::AppsView = Client::new(state_dir)
        .call(Method::GET, "/v1/apps", None)
        .await?;
    if json {
        return super::print_json(&view);
    }
    let Some(env) = &view.env else {
        println!(
            "this daemon runs no environment; declare [env] name and [[app]]s in itproxy.toml"
        );
        return Ok(());
    };
    if view.apps.is_empty() {
        println!("environment {env}: no apps declared");
        return Ok(());
    }
    let phase = match view.phase {
        EnvPhase::Idle => "idle".to_string(),
        EnvPhase::Starting => "starting".to_string(),
        EnvPhase::Ready => format!(
            "ready{}",
            view.ready_after_ms
                .map(|ms| format!(" ({:.2} s after start)", ms as f64 / 1000.0))
                .unwrap_or_default()
        ),
        EnvPhase::Failed => "FAILED".to_string(),
    };
    println!("environment {env}: {phase}");
    let width = |f: &dyn Fn(&api::AppView) -> Vec<usize>, min: usize| {
        view.apps.iter().flat_map(f).max().unwrap_or(0).max(min)
    };
    let aw = width(&|a| vec![a.name.len()], 3);
    let sw = width(&|a| vec![a.step.len()], 4);
    let cw = width(&|a| a.containers.iter().map(|c| c.name.len()).collect(), 9);
    let mut out = crate::out::stdout();
    writeln!(
        out,
        "{:aw$}  {:sw$}  {:8}  {:8}  {:cw$}  {:10}  {:15}  SERVES",
        "APP", "STEP", "STATE", "RESTARTS", "CONTAINER", "STATUS", "ADDRESS"
    )?;
    for a in &view.apps {
        for (i, c) in a.containers.iter().enumerate() {
            let (name, step, state, restarts) = if i == 0 {
                (
                    a.name.as_str(),
                    a.step.as_str(),
                    state_word(a.state),
                    a.restarts.to_string(),
                )
            } else {
                ("", "", "", String::new())
            };
            writeln!(
                out,
                "{:aw$}  {:sw$}  {:8}  {:8}  {:cw$}  {:10}  {:15}  {}",
                name,
                step,
                state,
                restarts,
                c.name,
                c.state,
                c.address.as_deref().unwrap_or("-"),
                c.serves.as_deref().unwrap_or("-")
            )?;
        }
        if let Some(e) = &a.error {
            for line in e.lines() {
                writeln!(out, "    {line}")?;
            }
        } else if let Some(exit) = &a.last_exit {
            writeln!(
                out,
                "    last exit: {exit} (restart_policy = \"{}\")",
                a.restart_policy
            )?;
        }
    }
    Ok(())
}

/// `itproxy app start|stop|restart`.
pub async fn app(state_dir: &Path, cmd: AppCommand) -> anyhow::Result<()> {
    let client = Client::new(state_dir);
    let (name, action, args) = match cmd {
        AppCommand::Start(a) => (a.name.clone(), "start", Some(a)),
        AppCommand::Restart(a) => (a.name.clone(), "restart", Some(a)),
        AppCommand::Reset(a) => (a.name.clone(), "reset", Some(a)),
        AppCommand::Stop { name, json } => (
            name.clone(),
            "stop",
            Some(AppActionArgs {
                name,
                wait: false,
                timeout: None,
                json,
            }),
        ),
    };
    let args = args.expect("every action has arguments");
    if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
        anyhow::bail!("{name:?} is not an app name; `itproxy apps` lists them");
    }
    let mut body = serde_json::json!({ "wait": args.wait });
    if let Some(t) = args.timeout {
        body["timeout"] = humantime::format_duration(t).to_string().into();
    }
    // A waiting start may take as long as the app's readiness timeout (up to an hour).
    let within = args
        .timeout
        .map_or(Duration::from_secs(3700), |t| t + Duration::from_secs(60));
    let view: api::AppView = client
        .call_within(
            within,
            Method::POST,
            &format!("/v1/apps/{name}/{action}"),
            Some(body),
        )
        .await?;
    if args.json {
        return super::print_json(&view);
    }
    let took = view
        .ready_in_ms
        .filter(|_| view.state == AppState::Ready)
        .map(|ms| format!(" in {:.2} s", ms as f64 / 1000.0))
        .unwrap_or_default();
    println!("{}: {}{took}", view.name, state_word(view.state));
    Ok(())
}

fn env_of(config: &Config, env: Option<String>) -> anyhow::Result<EnvName> {
    match env {
        Some(e) => Ok(e.parse()?),
        None => config
            .env
            .as_ref()
            .map(|e| e.name.clone())
            .context("no environment: pass --env NAME or set env.name in itproxy.toml"),
    }
}

/// The environment a command acts on: `--env`, else the running daemon's, else the config's
/// (read only when needed, so a broken config does not stop `down` of what runs).
fn which_env(
    given: Option<String>,
    daemon: Option<&api::Status>,
    config: Option<PathBuf>,
) -> anyhow::Result<EnvName> {
    if let Some(e) = given {
        return Ok(e.parse()?);
    }
    if let Some(e) = daemon.and_then(|s| s.env.as_deref()) {
        return Ok(e.parse()?);
    }
    let c = super::load_config(config)?;
    env_of(&c, None)
}

/// `down`: stops the daemon running with this state directory (if it serves this
/// environment, or any when none is named), then removes the environment's containers and
/// network. The daemon is asked first, so `down` needs no config or `--env` for what runs.
pub fn down_command(
    config: Option<PathBuf>,
    env: Option<String>,
    volumes: bool,
    state_dir: &Path,
) -> anyhow::Result<()> {
    super::runtime()?.block_on(async {
        let daemon = super::running_daemon(state_dir).await?;
        let named = env.is_some();
        let env = match which_env(env, daemon.as_ref(), config) {
            Ok(e) => Some(e),
            // A daemon without an environment: stopping it is all there is to do.
            Err(_) if daemon.is_some() && !named => None,
            Err(e) => return Err(e),
        };
        if let Some(status) = &daemon {
            if env.is_none() || status.env == env.as_ref().map(|e| e.to_string()) {
                stop_daemon(state_dir, status).await?;
            }
        }
        match env {
            Some(env) => {
                remove_env(&env, volumes).await?;
                // The clocks of its apps that declare `faketime` go with their containers.
                let clocks = StateDir::new(state_dir).clocks().join(env.to_string());
                match std::fs::remove_dir_all(&clocks) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                        eprintln!("warning: cannot remove {}: {e}", clocks.display())
                    }
                    _ => {}
                }
                Ok(())
            }
            None => Ok(()),
        }
    })
}

/// `stop`: the daemon only; the environment's containers keep running (`up` reuses them).
pub fn stop_command(state_dir: &Path) -> anyhow::Result<()> {
    super::runtime()?.block_on(async {
        match super::running_daemon(state_dir).await? {
            Some(status) => stop_daemon(state_dir, &status).await,
            None => {
                println!(
                    "no itproxy daemon is running with the state directory {}",
                    state_dir.display()
                );
                Ok(())
            }
        }
    })
}

/// Asks the daemon to stop and waits until its control socket is gone.
async fn stop_daemon(state_dir: &Path, status: &api::Status) -> anyhow::Result<()> {
    Client::new(state_dir)
        .call::<serde_json::Value>(Method::POST, "/v1/shutdown", None)
        .await?;
    let socket: PathBuf = StateDir::new(state_dir).control_socket();
    // Requests in flight have the daemon's shutdown grace (10 s by default) to finish.
    let deadline = Instant::now() + Duration::from_secs(70);
    while socket.exists() {
        if Instant::now() > deadline {
            anyhow::bail!(
                "the daemon (pid {}) was asked to stop but still runs after 70 s; `kill {}` ends it",
                status.pid,
                status.pid
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!("stopped the daemon (pid {})", status.pid);
    Ok(())
}

/// `itproxy logs`: read straight from the engine, so it works after the daemon stopped too.
/// The environment is the running daemon's unless named; `--errors` asks the daemon (its
/// config's patterns) when it serves that environment and no `--pattern` is given.
pub async fn logs(config: Option<PathBuf>, state_dir: &Path, args: LogsArgs) -> anyhow::Result<()> {
    let daemon = super::running_daemon(state_dir).await?;
    let env = which_env(args.env.clone(), daemon.as_ref(), config.clone())?;
    let since = args.since.unwrap_or(0) as f64;
    let served = daemon
        .as_ref()
        .is_some_and(|s| s.env.as_deref() == Some(env.to_string().as_str()));
    if args.errors && args.pattern.is_empty() && served {
        return errors_from_daemon(state_dir, since).await;
    }
    let engine = Engine::connect().await?;
    let containers = engine.env_containers(&env).await?;
    if args.errors {
        let config = super::load_config(config)?;
        return scan_errors(&config, &engine, &env, &containers, since, &args.pattern).await;
    }
    let name = args.name.expect("clap requires a name without --errors");
    let chosen: Vec<_> = containers
        .iter()
        .filter(|c| c.app == name || c.endpoint == name || c.name == name)
        .collect();
    if chosen.is_empty() {
        let names: Vec<&str> = containers.iter().map(|c| c.app.as_str()).collect();
        anyhow::bail!(
            "environment {env} has no container for {name:?} (apps with containers: {})",
            if names.is_empty() {
                "none".to_string()
            } else {
                let mut n = names;
                n.dedup();
                n.join(", ")
            }
        );
    }
    let prefix = chosen.len() > 1;
    let streams = chosen.iter().map(|c| {
        let label = format!("{} | ", c.endpoint);
        engine
            .logs(&c.id, since, args.follow, args.tail)
            .map(move |l| (label.clone(), l))
            .boxed()
    });
    let mut all = futures_util::stream::select_all(streams);
    while let Some((label, line)) = all.next().await {
        let line = line?;
        let label = if prefix { label.as_str() } else { "" };
        if line.stderr {
            eprintln!("{label}{}", line.text);
        } else {
            println!("{label}{}", line.text);
        }
    }
    Ok(())
}

/// `container: line`, then a traceback's lines indented below it.
fn print_finding(
    out: &mut impl Write,
    container: &str,
    line: &str,
    context: &[String],
) -> std::io::Result<()> {
    writeln!(out, "{container}: {line}")?;
    for l in context {
        writeln!(out, "    | {l}")?;
    }
    Ok(())
}

/// `GET /v1/errors`, printed as [`scan_errors`] prints.
async fn errors_from_daemon(state_dir: &Path, since: f64) -> anyhow::Result<()> {
    let scan: api::ErrorScanView = Client::new(state_dir)
        .call(Method::GET, &format!("/v1/errors?since={since}"), None)
        .await?;
    let mut out = crate::out::stdout();
    for f in &scan.findings {
        print_finding(&mut out, &f.container, &f.line, &f.context)?;
    }
    if !scan.findings.is_empty() {
        let mut with: Vec<&str> = scan.findings.iter().map(|f| f.container.as_str()).collect();
        with.dedup();
        anyhow::bail!(
            "{} error line(s) in {} of {} containers of environment {}",
            scan.findings.len(),
            with.len(),
            scan.containers,
            scan.env
        );
    }
    writeln!(
        out,
        "no error lines in the {} containers of environment {}",
        scan.containers, scan.env
    )?;
    Ok(())
}

async fn scan_errors(
    config: &Config,
    engine: &Engine,
    env: &EnvName,
    containers: &[itproxy_orchestrator::Container],
    since: f64,
    patterns: &[regex::Regex],
) -> anyhow::Result<()> {
    let mut found = 0usize;
    let mut containers_with = 0usize;
    let mut out = crate::out::stdout();
    for c in containers {
        let scan = if !patterns.is_empty() {
            ErrorScan {
                patterns: patterns.to_vec(),
                ignore: Vec::new(),
            }
        } else {
            config
                .env
                .as_ref()
                .and_then(|e| e.apps.app(&c.app))
                .map(|a| a.errors.clone())
                .unwrap_or_default()
        };
        let bad = engine.error_lines(&c.id, since, &scan).await?;
        if !bad.is_empty() {
            containers_with += 1;
            found += bad.len();
            for f in bad {
                print_finding(&mut out, &c.name, &f.line, &f.context)?;
            }
        }
    }
    if found > 0 {
        anyhow::bail!(
            "{found} error line(s) in {containers_with} of {} containers of environment {env}",
            containers.len()
        );
    }
    writeln!(
        out,
        "no error lines in the {} containers of environment {env}",
        containers.len()
    )?;
    Ok(())
}

/// Removes the environment's containers and network from the engine (nothing else).
async fn remove_env(env: &EnvName, volumes: bool) -> anyhow::Result<()> {
    let engine = Engine::connect().await?;
    for name in engine.remove_env_containers(env).await? {
        println!("removed the container {name}");
    }
    if volumes {
        for name in engine.remove_env_volumes(env).await? {
            println!("removed the volume {name}");
        }
    }
    if engine.remove_network(env).await? {
        println!("removed the network {}", env.network_name());
    } else {
        println!("environment {env} has no network; nothing to remove");
    }
    Ok(())
}

/// `snapshot save|restore|list`.
pub async fn snapshot(state_dir: &Path, cmd: SnapshotCommand) -> anyhow::Result<()> {
    let client = Client::new(state_dir);
    let (path, verb) = match &cmd {
        SnapshotCommand::List { json } => {
            let all: Vec<api::SnapshotView> =
                client.call(Method::GET, "/v1/snapshots", None).await?;
            if *json {
                return super::print_json(&all);
            }
            if all.is_empty() {
                println!("no snapshots; `itproxy snapshot save NAME` makes one");
            }
            for s in all {
                println!("{}  {}", s.name, describe_volumes(&s.volumes));
            }
            return Ok(());
        }
        SnapshotCommand::Save { name } => (format!("/v1/snapshots/{name}"), "saved"),
        SnapshotCommand::Restore { name } => (format!("/v1/snapshots/{name}/restore"), "restored"),
    };
    if let SnapshotCommand::Save { name } | SnapshotCommand::Restore { name } = &cmd {
        // The daemon checks too; a name that is not one must not become another path.
        if name.is_empty()
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_".contains(&b))
        {
            anyhow::bail!("{name:?} is not a snapshot name; use 1 to 64 of a-z, 0-9, '-' and '_'");
        }
    }
    // Restoring waits for the apps to be ready: as long as their readiness timeouts.
    let s: api::SnapshotView = client
        .call_within(Duration::from_secs(3700), Method::POST, &path, None)
        .await?;
    println!(
        "{verb} snapshot {} in {:.2} s: {}",
        s.name,
        s.took_ms.unwrap_or(0) as f64 / 1000.0,
        describe_volumes(&s.volumes)
    );
    Ok(())
}

/// `itproxy time show|set|reset APP`.
pub async fn time(state_dir: &Path, cmd: crate::cli::TimeCommand) -> anyhow::Result<()> {
    use crate::cli::TimeCommand;
    let client = Client::new(state_dir);
    let (app, set, json) = match cmd {
        TimeCommand::Show { app, json } => (app, None, json),
        TimeCommand::Set { app, time, json } => (app, Some(time), json),
        TimeCommand::Reset { app, json } => (app, Some("declared".to_string()), json),
    };
    let path = format!("/v1/apps/{app}/time");
    let clock: api::AppClock = match set {
        None => client.call(Method::GET, &path, None).await?,
        Some(time) => {
            let body = serde_json::to_value(api::SetClock { time })?;
            client.call(Method::POST, &path, Some(body)).await?
        }
    };
    if json {
        return super::print_json(&clock);
    }
    let offset = clock.offset_seconds;
    let ahead = humantime::format_duration(Duration::from_secs(offset.unsigned_abs()));
    let relation = match offset {
        0 => "the real time".to_string(),
        o if o > 0 => format!("{ahead} ahead"),
        _ => format!("{ahead} behind"),
    };
    println!(
        "{}: {} ({relation}; declared {})",
        clock.app, clock.now, clock.declared
    );
    Ok(())
}

/// `itproxy reload`: what changed; exit 1 when an app did not become ready.
pub async fn reload(state_dir: &Path, json: bool) -> anyhow::Result<()> {
    // Started and restarted apps are waited for: as long as their readiness timeouts.
    let done: api::Reloaded = Client::new(state_dir)
        .call_within(Duration::from_secs(3700), Method::POST, "/v1/reload", None)
        .await?;
    if json {
        super::print_json(&done)?;
    } else {
        let lines = [
            ("routes added", &done.routes_added),
            ("routes changed", &done.routes_changed),
            ("routes removed", &done.routes_removed),
            ("apps added", &done.apps_added),
            ("apps changed", &done.apps_changed),
            ("apps removed", &done.apps_removed),
            ("apps started", &done.apps_started),
        ];
        let mut any = false;
        for (what, names) in lines {
            if !names.is_empty() {
                println!("{what}: {}", names.join(", "));
                any = true;
            }
        }
        if !any && done.errors.is_empty() {
            println!("reloaded: nothing changed");
        }
    }
    if !done.errors.is_empty() {
        anyhow::bail!("reloaded, but:\n{}", done.errors.join("\n"));
    }
    Ok(())
}

fn describe_volumes(volumes: &[api::SnapshotVolume]) -> String {
    let list: Vec<String> = volumes
        .iter()
        .map(|v| format!("{}:{} ({:.1} MB)", v.app, v.volume, v.bytes as f64 / 1e6))
        .collect();
    list.join(", ")
}

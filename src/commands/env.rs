//! The environment's commands on the CLI side: `up --detach`, `apps`, `app`, `logs`, `down`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use futures_util::StreamExt;
use http::Method;
use itproxy_orchestrator::{Engine, EnvName, ErrorScan};

use crate::cli::{AppActionArgs, AppCommand, LogsArgs};
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
    // Checked here too: otherwise the old daemon's answers would pass for the new one's.
    if let Ok(status) = Client::new(state_dir)
        .call::<api::Status>(Method::GET, "/v1/status", None)
        .await
    {
        anyhow::bail!(
            "another itproxy daemon (pid {}) is already running with the state directory {}; \
             stop it (`itproxy down`, or kill {}), or give this one its own --state-dir",
            status.pid,
            state_dir.display(),
            status.pid
        );
    }
    let log_path = StateDir::new(state_dir).daemon_log();
    let log = std::fs::File::create(&log_path)
        .with_context(|| format!("cannot create the daemon's log {}", log_path.display()))?;
    let exe = std::env::current_exe().context("cannot find the itproxy executable to start")?;
    let began = Instant::now();
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
    let client = Client::new(state_dir);
    let mut last_state = String::new();
    loop {
        if let Some(status) = child.try_wait()? {
            let tail = tail_of(&log_path, 20);
            anyhow::bail!(
                "the daemon exited ({status}) before its apps were ready; the end of {}:\n{tail}",
                log_path.display()
            );
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
                        println!(
                            "itproxy is up (pid {}) in {:.2} s: {} apps ready; log: {}",
                            child.id(),
                            began.elapsed().as_secs_f64(),
                            view.apps
                                .iter()
                                .filter(|a| a.state == AppState::Ready)
                                .count(),
                            log_path.display()
                        );
                        return Ok(());
                    }
                    EnvPhase::Failed => anyhow::bail!(
                        "the environment did not come up:\n{}\nthe daemon (pid {}) keeps running: \
                         see `itproxy apps` and `itproxy logs APP`; `itproxy down` removes it all",
                        view.error.unwrap_or_default(),
                        child.id()
                    ),
                    EnvPhase::Starting => {}
                }
            }
            Err(ClientError::NotRunning { .. }) => {}
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
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "{:aw$}  {:sw$}  {:8}  {:cw$}  {:10}  {:15}  SERVES",
        "APP", "STEP", "STATE", "CONTAINER", "STATUS", "ADDRESS"
    )?;
    for a in &view.apps {
        for (i, c) in a.containers.iter().enumerate() {
            let (name, step, state) = if i == 0 {
                (a.name.as_str(), a.step.as_str(), state_word(a.state))
            } else {
                ("", "", "")
            };
            writeln!(
                out,
                "{:aw$}  {:sw$}  {:8}  {:cw$}  {:10}  {:15}  {}",
                name,
                step,
                state,
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

/// `down`: the config's apps need not be valid to tear down what they left, when the
/// environment is named.
pub fn down_command(
    config: Option<PathBuf>,
    env: Option<String>,
    state_dir: &Path,
) -> anyhow::Result<()> {
    let c = super::load_config(config).or_else(|e| {
        if env.is_some() {
            super::load_config(None)
        } else {
            Err(e)
        }
    })?;
    super::runtime()?.block_on(down(&c, env, state_dir))
}

/// `itproxy logs`: read straight from the engine, so it works after the daemon stopped too.
pub async fn logs(config: &Config, args: LogsArgs) -> anyhow::Result<()> {
    let env = env_of(config, args.env.clone())?;
    let engine = Engine::connect().await?;
    let containers = engine.env_containers(&env).await?;
    let since = args.since.unwrap_or(0) as f64;
    if args.errors {
        return scan_errors(config, &engine, &env, &containers, since, &args.pattern).await;
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
    let mut out = std::io::stdout().lock();
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
            for l in bad {
                writeln!(out, "{}: {}", c.name, l.text)?;
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

/// `itproxy down`: stops the daemon serving this environment (if it runs here), then removes
/// the environment's containers and network.
pub async fn down(config: &Config, env: Option<String>, state_dir: &Path) -> anyhow::Result<()> {
    let env = env_of(config, env)?;
    let client = Client::new(state_dir);
    if let Ok(status) = client
        .call::<api::Status>(Method::GET, "/v1/status", None)
        .await
    {
        if status.env.as_deref() == Some(env.to_string().as_str()) {
            client
                .call::<serde_json::Value>(Method::POST, "/v1/shutdown", None)
                .await?;
            let socket: PathBuf = StateDir::new(state_dir).control_socket();
            let deadline = Instant::now() + Duration::from_secs(15);
            while socket.exists() && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            println!("stopped the daemon (pid {})", status.pid);
        }
    }
    let engine = Engine::connect().await?;
    for name in engine.remove_env_containers(&env).await? {
        println!("removed the container {name}");
    }
    if engine.remove_network(&env).await? {
        println!("removed the network {}", env.network_name());
    } else {
        println!("environment {env} has no network; nothing to remove");
    }
    Ok(())
}

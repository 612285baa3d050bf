//! The CLI's subcommands other than `up`: each file is one command family and talks to the
//! daemon through `Client` (or, for `ca`, `dns` and `logs`, works without one).

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;

use http::Method;

use crate::cli::RouteArgs;
use crate::client::Client;
use itproxy_daemon::api::{self, RouteView};

pub mod bench;
pub mod browser;
pub mod ca;
pub mod check_config;
pub mod dns;
pub mod env;
pub mod mock;
pub mod requests;
pub mod resolve;
pub mod up;

/// `s` as one shell word.
pub fn shell_quote(s: &str) -> String {
    if s.bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"/._-+:@".contains(&b))
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

/// The listener a client on this machine dials, of those the daemon reports: a loopback one
/// if there is one, else the first; a wildcard address is dialled on loopback.
pub fn local_listener(listeners: &[String]) -> Option<std::net::SocketAddr> {
    let all: Vec<std::net::SocketAddr> = listeners
        .iter()
        .filter_map(|l| l.parse::<std::net::SocketAddr>().ok())
        .map(|a| {
            let ip: std::net::IpAddr = match a.ip() {
                ip if ip.is_unspecified() && ip.is_ipv4() => std::net::Ipv4Addr::LOCALHOST.into(),
                ip if ip.is_unspecified() => std::net::Ipv6Addr::LOCALHOST.into(),
                ip => ip,
            };
            std::net::SocketAddr::new(ip, a.port())
        })
        .collect();
    all.iter()
        .find(|a| a.ip().is_loopback())
        .or(all.first())
        .copied()
}

/// The daemon running with `state_dir`, if one answers: commands ask it before reading a
/// config file, so they act on what runs.
pub async fn running_daemon(state_dir: &Path) -> anyhow::Result<Option<api::Status>> {
    match Client::new(state_dir)
        .call::<api::Status>(Method::GET, "/v1/status", None)
        .await
    {
        Ok(s) => Ok(Some(s)),
        Err(crate::client::ClientError::NotRunning { .. }) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

pub fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

pub fn default_state_dir() -> anyhow::Result<PathBuf> {
    if let Some(x) = std::env::var_os("XDG_STATE_HOME").filter(|v| !v.is_empty()) {
        return Ok(PathBuf::from(x).join("itproxy"));
    }
    let home = std::env::var_os("HOME")
        .filter(|v| !v.is_empty())
        .context("cannot find a state directory: HOME is not set; pass --state-dir")?;
    Ok(PathBuf::from(home).join(".local/state/itproxy"))
}

pub fn config_path(explicit: Option<PathBuf>) -> Option<PathBuf> {
    explicit.or_else(|| {
        let p = PathBuf::from("itproxy.toml");
        p.is_file().then_some(p)
    })
}

/// The config as the client commands read it: the file (`--config`, else `./itproxy.toml`),
/// without `up`'s flags.
pub fn load_config(explicit: Option<PathBuf>) -> anyhow::Result<itproxy_daemon::config::Config> {
    Ok(itproxy_daemon::config::Config::load(
        config_path(explicit).as_deref(),
        &Default::default(),
    )?)
}

/// The API path for a route name; the daemon validates the name itself.
pub fn route_path(name: &str) -> anyhow::Result<String> {
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

/// One route of `itproxy route --file`.
#[derive(serde::Deserialize)]
#[serde(untagged)]
enum FileRoute {
    Target(String),
    Full(FullRoute),
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct FullRoute {
    target: String,
    #[serde(default)]
    redirect_https: bool,
    #[serde(default)]
    insecure_upstream: bool,
}

/// `itproxy route --file FILE`: every route of the file in one `PUT /v1/routes`.
async fn route_file(client: &Client, file: &Path, json: bool) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(file)
        .with_context(|| format!("cannot read the routes file {}", file.display()))?;
    let routes: std::collections::BTreeMap<String, FileRoute> = toml::from_str(&text)
        .with_context(|| {
            format!(
                "{}: each line must be NAME = \"TARGET\" or NAME = {{ target = \"...\", \
                 redirect_https = true, insecure_upstream = true }}",
                file.display()
            )
        })?;
    let set: serde_json::Map<String, serde_json::Value> = routes
        .into_iter()
        .map(|(name, r)| {
            let (target, redirect_https, insecure_upstream) = match r {
                FileRoute::Target(t) => (t, false, false),
                FileRoute::Full(f) => (f.target, f.redirect_https, f.insecure_upstream),
            };
            let route = serde_json::json!({
                "target": target,
                "redirect_https": redirect_https,
                "insecure_upstream": insecure_upstream,
            });
            (name, route)
        })
        .collect();
    let began = std::time::Instant::now();
    let changed: api::RoutesChanged = client
        .call(
            Method::PUT,
            "/v1/routes",
            Some(serde_json::json!({ "set": set })),
        )
        .await?;
    if json {
        return print_json(&changed);
    }
    println!(
        "set {} routes in {:.1} ms ({} routes in force)",
        changed.set,
        began.elapsed().as_secs_f64() * 1000.0,
        changed.routes
    );
    Ok(())
}

pub async fn route(args: RouteArgs, state_dir: &Path) -> anyhow::Result<()> {
    let client = Client::new(state_dir);
    if let Some(file) = &args.file {
        return route_file(&client, file, args.json).await;
    }
    let name = args
        .name
        .as_deref()
        .expect("clap requires a name without --file");
    let path = route_path(name)?;
    if args.restore {
        let r: api::Restored = client
            .call(Method::POST, &format!("{path}/restore"), None)
            .await?;
        if args.json {
            return print_json(&r);
        }
        let Some(route) = &r.route else {
            println!("mock taken away; {name} has no route");
            return Ok(());
        };
        let what = if r.changed {
            "restored"
        } else {
            "already at its declared target:"
        };
        println!("{what} {} -> {}", route.host, route.target);
        return Ok(());
    }
    let mocked = match (&args.record, &args.mock) {
        (Some(dir), _) => Some(("record", dir)),
        (_, Some(dir)) => Some(("replay", dir)),
        _ => None,
    };
    if let Some((mode, dir)) = mocked {
        let dir = std::path::absolute(dir)
            .with_context(|| format!("cannot make {} absolute", dir.display()))?;
        let body = serde_json::json!({"mode": mode, "dir": dir.display().to_string()});
        let r: RouteView = client
            .call(Method::PUT, &format!("{path}/mock"), Some(body))
            .await?;
        if args.json {
            return print_json(&r);
        }
        let over = r.declared.as_deref().unwrap_or("no route");
        match mode {
            "record" => println!("{} -> {over}, recording into {}", r.host, dir.display()),
            _ => println!(
                "{} -> mock answering from {} (instead of {over})",
                r.host,
                dir.display()
            ),
        }
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

pub fn print_json<T: serde::Serialize>(v: &T) -> anyhow::Result<()> {
    let mut out = crate::out::stdout();
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
            (api::RouteSource::Discovered, _) => "discovered".to_string(),
            (api::RouteSource::App, _) => "app".to_string(),
            (api::RouteSource::Override, None) => "override".to_string(),
            (api::RouteSource::Override, Some(d)) => format!("override (declared {d})"),
            (api::RouteSource::Mock, over) => {
                let over = over.as_deref().unwrap_or("no route");
                match &r.mock {
                    Some(m) if m.mode == api::MockMode::Record => {
                        format!("mock: recording {over} into {}", m.dir)
                    }
                    Some(m) => format!("mock: replaying {} (instead of {over})", m.dir),
                    None => "mock".to_string(),
                }
            }
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

/// `itproxy unroute NAME`.
pub async fn unroute(name: &str, json: bool, state_dir: &Path) -> anyhow::Result<()> {
    let removed: api::Removed = Client::new(state_dir)
        .call(Method::DELETE, &route_path(name)?, None)
        .await?;
    if json {
        print_json(&removed)
    } else {
        println!("removed {} (was {})", removed.host, removed.target);
        Ok(())
    }
}

/// `itproxy routes`.
pub async fn routes(json: bool, state_dir: &Path) -> anyhow::Result<()> {
    let routes: Vec<RouteView> = Client::new(state_dir)
        .call(Method::GET, "/v1/routes", None)
        .await?;
    if json {
        print_json(&routes)
    } else {
        print_routes(&routes)
    }
}

/// `itproxy status`.
pub async fn status(json: bool, state_dir: &Path) -> anyhow::Result<()> {
    let s: api::Status = Client::new(state_dir)
        .call(Method::GET, "/v1/status", None)
        .await?;
    if json {
        print_json(&s)
    } else {
        print_status(&s)
    }
}

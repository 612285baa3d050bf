//! Configuration: the `itproxy.toml` file format, its validation, and the defaults.
//!
//! ```text
//!  itproxy.toml ──toml──▶ FileConfig (file.rs: serde, unknown keys rejected, values checked in place)
//!  CLI flags (CliOverrides) ──┐
//!                             ▼
//!                    Config (validated; cannot hold an invalid value), grouped by subsystem:
//!                      domains, listen, proxy, dns, tls, routes, env (its apps: apps.rs → Plan)
//!                             │
//!                             ▼  ProxySettings::router_config, DnsSettings::dns_config
//!                    RouterConfig, DnsConfig (the services' own)
//! ```
//! Values are checked while deserializing so that an error carries the file's line, column and
//! key. Nothing here opens sockets or resolves names.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use itproxy_orchestrator::{EnvName, Plan};
use itproxy_router::HostName;

mod apps;
mod domains;
mod file;
mod settings;

pub use domains::Domains;
pub use file::parse_resolver;
pub use settings::{
    DnsSettings, Gateway, Listen, MintPolicy, ProxySettings, RouteSpec, Timeouts, TlsSettings,
};

use file::{FileConfig, FileRoute};

/// The default domain: `api` means `api.test`.
pub const DEFAULT_DOMAIN: &str = "test";
/// The default plain-HTTP listener.
pub const DEFAULT_HTTP: &str = "127.0.0.1:80";
/// The default HTTPS listener.
pub const DEFAULT_HTTPS: &str = "127.0.0.1:443";
/// The default DNS listener.
pub const DEFAULT_DNS: &str = "127.0.0.1:53";
/// Default TTL of the environment's DNS records.
pub const DEFAULT_DNS_TTL: u32 = 5;
/// Open connections one client address may hold by default: a browser opens 6 per host, a
/// load generator a few hundred.
pub const DEFAULT_CONNECTIONS_PER_CLIENT: usize = 1024;
/// Bytes of each body the inspector keeps by default for `inspect_bodies` routes.
pub const DEFAULT_INSPECT_BODY_LIMIT: usize = 16 * 1024;
/// The most bytes of a body `inspect_body_limit` may ask for.
pub const MAX_INSPECT_BODY_LIMIT: usize = 1024 * 1024;
/// The dashboard's name by default (`itproxy.<first domain>`).
pub const DEFAULT_DASHBOARD: &str = "itproxy";
/// Requests the inspector keeps by default (`itproxy requests`, the dashboard).
pub const DEFAULT_RECENT_REQUESTS: usize = 1000;
/// The most `[proxy] recent_requests` may ask to keep (a kept request takes about a KiB).
pub const MAX_RECENT_REQUESTS: usize = 100_000;
/// Default validity of issued leaf certificates.
pub const DEFAULT_LEAF_VALIDITY: Duration = Duration::from_secs(7 * 86400);

/// A configuration problem, worded for the person who wrote the file or the flags.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file cannot be read.
    #[error("cannot read the config file {path}: {error}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        error: std::io::Error,
    },
    /// The file is not valid TOML or has a bad key or value (the message has line and key).
    #[error("invalid config file {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// toml's message, with line, column and key.
        message: String,
    },
    /// A value that is fine alone but not together with the rest.
    #[error("invalid configuration{}: {message}", origin.as_ref().map(|p| format!(" in {}", p.display())).unwrap_or_default())]
    Invalid {
        /// The file, if the value came from one.
        origin: Option<PathBuf>,
        /// What is wrong.
        message: String,
    },
}

impl ConfigError {
    /// A bad command-line value: it names the flag, not the file.
    fn flag(message: String) -> Self {
        ConfigError::Invalid {
            origin: None,
            message,
        }
    }
}

/// The validated configuration the daemon runs with, one group per subsystem.
#[derive(Debug, Clone)]
pub struct Config {
    /// Domains served.
    pub domains: Domains,
    /// Where the proxy and the DNS listen.
    pub listen: Listen,
    /// The HTTP front.
    pub proxy: ProxySettings,
    /// The DNS server.
    pub dns: DnsSettings,
    /// The local CA's leaf certificates.
    pub tls: TlsSettings,
    /// Routes declared in the file.
    pub routes: BTreeMap<HostName, RouteSpec>,
    /// The Docker environment, if any: its network's gateway gets listeners for containers,
    /// and its apps run on it.
    pub env: Option<EnvConfig>,
    /// The file this came from, if any.
    pub source: Option<PathBuf>,
    /// The command-line values it was read with: reading the file again (an app's restart
    /// picks up its edited declaration) applies them again.
    pub overrides: CliOverrides,
}

/// The Docker environment (`[env]`, `--env`) and the apps declared to run in it.
#[derive(Debug, Clone)]
pub struct EnvConfig {
    /// The environment's name.
    pub name: EnvName,
    /// Apps declared in the file, in steps (may be empty).
    pub apps: Plan,
}

/// The environment, shown by its name.
impl std::fmt::Display for EnvConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.name.fmt(f)
    }
}

/// Command-line values that override the file.
#[derive(Debug, Default, Clone)]
pub struct CliOverrides {
    /// `--http`, replacing the file's listeners.
    pub http: Vec<SocketAddr>,
    /// `--domain`, replacing the file's domains.
    pub domains: Vec<String>,
    /// `--https`, replacing the file's HTTPS listeners.
    pub https: Vec<SocketAddr>,
    /// `--no-https`: no HTTPS listener at all.
    pub no_https: bool,
    /// `--dns`, replacing the file's DNS listeners.
    pub dns: Vec<SocketAddr>,
    /// `--no-dns`: no DNS listener.
    pub no_dns: bool,
    /// `--dns-upstream`, replacing the file's upstream resolvers.
    pub dns_upstreams: Vec<SocketAddr>,
    /// `--env`, replacing the file's environment name.
    pub env: Option<String>,
}

impl Config {
    /// Reads and validates `path`, then applies the command-line overrides.
    pub fn load(path: Option<&Path>, cli: &CliOverrides) -> Result<Config, ConfigError> {
        let file = match path {
            Some(p) => {
                let text = std::fs::read_to_string(p).map_err(|error| ConfigError::Read {
                    path: p.to_path_buf(),
                    error,
                })?;
                file::parse(&text).map_err(|message| ConfigError::Parse {
                    path: p.to_path_buf(),
                    message,
                })?
            }
            None => FileConfig::default(),
        };
        Config::build(file, path.map(Path::to_path_buf), cli)
    }

    /// Validates configuration text as [`Config::load`] validates a file's (tests, fuzzers).
    pub fn from_str(text: &str, cli: &CliOverrides) -> Result<Config, ConfigError> {
        let file = file::parse(text).map_err(|message| ConfigError::Parse {
            path: PathBuf::from("itproxy.toml"),
            message,
        })?;
        Config::build(file, Some(PathBuf::from("itproxy.toml")), cli)
    }

    /// The file's sections, with the flags over them, checked together.
    fn build(
        file: FileConfig,
        source: Option<PathBuf>,
        cli: &CliOverrides,
    ) -> Result<Config, ConfigError> {
        let invalid = |message: String| ConfigError::Invalid {
            origin: source.clone(),
            message,
        };
        let domains = domains(file.domains, file.env.domain, cli, &invalid)?;
        let listen = listen(file.listen, cli, &invalid)?;
        let dns = dns(file.dns, cli);
        let tls = tls(file.tls, &invalid)?;
        let proxy = proxy(file.proxy, &domains, &invalid)?;
        let routes = routes(file.routes, &domains, &invalid)?;
        // Paths in the file (env_file, volumes) are relative to the file.
        let base = source
            .as_deref()
            .and_then(Path::parent)
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let base = std::path::absolute(base).unwrap_or_else(|_| base.to_path_buf());
        let env = env(
            file.env.name,
            file.app,
            file.env.steps,
            &domains,
            &base,
            cli,
            &invalid,
        )?;
        if let Some(env) = &env {
            endpoints_apart_from_routes(&env.apps, &domains, &routes, &invalid)?;
        }
        Ok(Config {
            domains,
            listen,
            proxy,
            dns,
            tls,
            routes,
            env,
            source,
            overrides: cli.clone(),
        })
    }

    /// The file read again, as it was first read (same flags): `None` without a file.
    pub fn reread(&self) -> Option<Result<Config, ConfigError>> {
        let source = self.source.as_deref()?;
        Some(Config::load(Some(source), &self.overrides))
    }
}

/// `--domain`, else `domains` or `[env] domain` (not both), else [`DEFAULT_DOMAIN`].
fn domains(
    file: Option<file::OneOrMany<file::Domain>>,
    env_domain: Option<file::Domain>,
    cli: &CliOverrides,
    invalid: &impl Fn(String) -> ConfigError,
) -> Result<Domains, ConfigError> {
    let list = if !cli.domains.is_empty() {
        let mut list = Vec::new();
        for d in &cli.domains {
            let d = d.strip_prefix('.').unwrap_or(d);
            list.push(HostName::parse(d).map_err(|e| ConfigError::flag(format!("--domain: {e}")))?);
        }
        list
    } else {
        match (file, env_domain) {
            (Some(_), Some(_)) => {
                return Err(invalid(
                    "both `domains` and `env.domain` are set; keep one".into(),
                ))
            }
            (Some(d), None) => d.into_vec().into_iter().map(|d| d.0).collect(),
            (None, Some(d)) => vec![d.0],
            (None, None) => {
                vec![HostName::parse(DEFAULT_DOMAIN).expect("valid default domain")]
            }
        }
    };
    Domains::new(list).map_err(|_| invalid("`domains` is empty".into()))
}

/// `[listen]` under `--http`, `--https`/`--no-https` and `--dns`/`--no-dns`; HTTP or HTTPS
/// must remain.
fn listen(
    file: file::ListenSection,
    cli: &CliOverrides,
    invalid: &impl Fn(String) -> ConfigError,
) -> Result<Listen, ConfigError> {
    let or_default = |list: Option<file::OneOrMany<SocketAddr>>, default: &str| match list {
        Some(l) => l.into_vec(),
        None => vec![default.parse().expect("valid default address")],
    };
    let http = if !cli.http.is_empty() {
        cli.http.clone()
    } else {
        or_default(file.http, DEFAULT_HTTP)
    };
    let https = if cli.no_https {
        Vec::new()
    } else if !cli.https.is_empty() {
        cli.https.clone()
    } else {
        or_default(file.https, DEFAULT_HTTPS)
    };
    if http.is_empty() && https.is_empty() {
        return Err(invalid(
            "`listen.http` and `listen.https` are both empty; give at least one address".into(),
        ));
    }
    let dns = if cli.no_dns {
        Vec::new()
    } else if !cli.dns.is_empty() {
        cli.dns.clone()
    } else {
        or_default(file.dns, DEFAULT_DNS)
    };
    Ok(Listen { http, https, dns })
}

/// `[dns]` under `--dns-upstream`.
fn dns(file: file::DnsSection, cli: &CliOverrides) -> DnsSettings {
    DnsSettings {
        upstreams: if cli.dns_upstreams.is_empty() {
            file.upstreams.iter().map(|r| r.0).collect()
        } else {
            cli.dns_upstreams.clone()
        },
        ttl: file.ttl.map_or(DEFAULT_DNS_TTL, |t| t.0),
        forward_timeout: file.forward_timeout.unwrap_or(Duration::from_secs(1)),
        recursion_from: file.recursion_from,
    }
}

/// `[tls]`: leaves live from 1 h to 398 days (the browsers' limit).
fn tls(
    file: file::TlsSection,
    invalid: &impl Fn(String) -> ConfigError,
) -> Result<TlsSettings, ConfigError> {
    let leaf_validity = file.leaf_validity.unwrap_or(DEFAULT_LEAF_VALIDITY);
    if leaf_validity < Duration::from_secs(3600) || leaf_validity > Duration::from_secs(398 * 86400)
    {
        return Err(invalid(format!(
            "tls.leaf_validity must be from 1h to 398days, not {}",
            humantime::format_duration(leaf_validity)
        )));
    }
    Ok(TlsSettings {
        leaf_validity,
        mint: file.mint,
    })
}

/// `[proxy]`: timeouts (all but `shutdown_grace`) more than 0, at least 1 connection per
/// client.
fn proxy(
    file: file::ProxySection,
    domains: &Domains,
    invalid: &impl Fn(String) -> ConfigError,
) -> Result<ProxySettings, ConfigError> {
    let d = Timeouts::default();
    let timeouts = Timeouts {
        connect: file.connect_timeout.unwrap_or(d.connect),
        read: file.read_timeout.unwrap_or(d.read),
        header: file.header_timeout.unwrap_or(d.header),
        keepalive: file.keepalive_timeout.unwrap_or(d.keepalive),
        send: file.send_timeout.unwrap_or(d.send),
        shutdown_grace: file.shutdown_grace.unwrap_or(d.shutdown_grace),
    };
    for (key, v) in [
        ("connect_timeout", timeouts.connect),
        ("read_timeout", timeouts.read),
        ("header_timeout", timeouts.header),
        ("keepalive_timeout", timeouts.keepalive),
        ("send_timeout", timeouts.send),
    ] {
        if v.is_zero() {
            return Err(invalid(format!("proxy.{key} must be more than 0")));
        }
    }
    let max_connections_per_client = match file.max_connections_per_client {
        None => DEFAULT_CONNECTIONS_PER_CLIENT,
        Some(0) => {
            return Err(invalid(
                "proxy.max_connections_per_client must be at least 1".into(),
            ))
        }
        Some(n) => n,
    };
    let recent_requests = match file.recent_requests {
        None => DEFAULT_RECENT_REQUESTS,
        Some(n) if n > MAX_RECENT_REQUESTS => {
            return Err(invalid(format!(
                "proxy.recent_requests is {n}; at most {MAX_RECENT_REQUESTS} are kept \
                 (0 keeps none)"
            )))
        }
        Some(n) => n,
    };
    // The dashboard's name, qualified like a route's; "" turns it off.
    let dashboard = match file.dashboard.as_deref().unwrap_or(DEFAULT_DASHBOARD) {
        "" => None,
        name => {
            // Kept as given, qualified where it is used: the same section whatever the domains.
            domains
                .qualify(name)
                .map_err(|e| invalid(format!("proxy.dashboard: {e}")))?;
            Some(HostName::parse(name).map_err(|e| invalid(format!("proxy.dashboard: {e}")))?)
        }
    };
    if file.access_log.is_some() && recent_requests == 0 {
        return Err(invalid(
            "proxy.access_log is written from the requests the inspector keeps: it needs \
             proxy.recent_requests above 0"
                .into(),
        ));
    }
    let mut inspect_bodies = Vec::new();
    for name in &file.inspect_bodies {
        inspect_bodies.push(
            domains
                .qualify(name)
                .map_err(|e| invalid(format!("proxy.inspect_bodies: {e}")))?,
        );
    }
    let inspect_body_limit = match file.inspect_body_limit {
        None => DEFAULT_INSPECT_BODY_LIMIT,
        Some(n) if n == 0 || n > MAX_INSPECT_BODY_LIMIT => {
            return Err(invalid(format!(
                "proxy.inspect_body_limit is {n}; give 1 to {MAX_INSPECT_BODY_LIMIT} bytes"
            )))
        }
        Some(n) => n,
    };
    Ok(ProxySettings {
        inspect_bodies,
        inspect_body_limit,
        access_log: file.access_log,
        dashboard,
        recent_requests,
        trusted_proxies: file.trusted_proxies,
        timeouts,
        max_connections_per_client,
        threads: file.threads.map(|t| t.0),
        work_stealing: file.work_stealing.unwrap_or(false),
        h1_front: file.h1_front.unwrap_or(true),
    })
}

/// `[routes]`, each name qualified by the domains: below them, declared once, timeouts more
/// than 0.
fn routes(
    file: BTreeMap<file::Parsed<HostName>, FileRoute>,
    domains: &Domains,
    invalid: &impl Fn(String) -> ConfigError,
) -> Result<BTreeMap<HostName, RouteSpec>, ConfigError> {
    let mut routes = BTreeMap::new();
    for (key, route) in file {
        let spec = match route {
            FileRoute::Target(t) => RouteSpec::to(t),
            FileRoute::Options(t) => RouteSpec {
                target: t.target.0,
                redirect_https: t.redirect_https,
                insecure_upstream: t.insecure_upstream,
                connect_timeout: t.connect_timeout,
                read_timeout: t.read_timeout,
            },
        };
        for (k, v) in [
            ("connect_timeout", spec.connect_timeout),
            ("read_timeout", spec.read_timeout),
        ] {
            if v == Some(Duration::ZERO) {
                return Err(invalid(format!("routes.{}.{k} must be more than 0", key.0)));
            }
        }
        let host = domains
            .qualify(key.0.as_str())
            .map_err(|e| invalid(format!("routes.{}: {e}", key.0)))?;
        if routes.insert(host.clone(), spec).is_some() {
            return Err(invalid(format!(
                "routes: {host} is declared twice (as an app name and as a host name)"
            )));
        }
    }
    Ok(routes)
}

/// `--env`, else `[env] name`, with the `[[app]]`s; apps need an environment.
fn env(
    name: Option<file::Parsed<EnvName>>,
    apps: Vec<file::FileApp>,
    steps: Option<Vec<String>>,
    domains: &Domains,
    base: &Path,
    cli: &CliOverrides,
    invalid: &impl Fn(String) -> ConfigError,
) -> Result<Option<EnvConfig>, ConfigError> {
    let name = match &cli.env {
        Some(name) => {
            Some(EnvName::parse(name).map_err(|e| ConfigError::flag(format!("--env: {e}")))?)
        }
        None => name.map(|n| n.0),
    };
    let apps = apps::build_plan(apps, steps, domains, base, name.as_ref())
        .map_err(|e| invalid(e.to_string()))?;
    match name {
        Some(name) => Ok(Some(EnvConfig { name, apps })),
        None if apps.is_empty() => Ok(None),
        None => Err(invalid(
            "apps are declared but there is no environment to run them in; set `[env] name` \
             (or pass --env NAME)"
                .into(),
        )),
    }
}

/// Each app endpoint's host name lies below the domains and is not also a declared route.
fn endpoints_apart_from_routes(
    apps: &Plan,
    domains: &Domains,
    routes: &BTreeMap<HostName, RouteSpec>,
    invalid: &impl Fn(String) -> ConfigError,
) -> Result<(), ConfigError> {
    for app in apps.apps() {
        for e in &app.endpoints {
            let host = domains
                .qualify(e.name.as_str())
                .map_err(|m| invalid(format!("app {:?}: {m}", app.name.as_str())))?;
            if routes.contains_key(&host) {
                return Err(invalid(format!(
                    "{host} is both in [routes] and an endpoint of app {:?}; keep one",
                    app.name.as_str()
                )));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Result<Config, String> {
        Config::from_str(text, &CliOverrides::default()).map_err(|e| e.to_string())
    }

    #[test]
    fn empty_file_gives_defaults() {
        let c = load("").unwrap();
        assert_eq!(c.domains.to_string_list(), "test");
        assert_eq!(
            c.listen,
            Listen {
                http: vec![DEFAULT_HTTP.parse().unwrap()],
                https: vec![DEFAULT_HTTPS.parse().unwrap()],
                dns: vec![DEFAULT_DNS.parse().unwrap()],
            }
        );
        assert_eq!(
            c.proxy,
            ProxySettings {
                trusted_proxies: vec![],
                timeouts: Timeouts::default(),
                max_connections_per_client: DEFAULT_CONNECTIONS_PER_CLIENT,
                threads: None,
                work_stealing: false,
                h1_front: true,
                recent_requests: DEFAULT_RECENT_REQUESTS,
                dashboard: Some(HostName::parse("itproxy").unwrap()),
                access_log: None,
                inspect_bodies: vec![],
                inspect_body_limit: DEFAULT_INSPECT_BODY_LIMIT,
            }
        );
        assert_eq!(
            c.dns,
            DnsSettings {
                upstreams: vec![],
                ttl: DEFAULT_DNS_TTL,
                forward_timeout: Duration::from_secs(1),
                recursion_from: vec![],
            }
        );
        assert_eq!(
            c.tls,
            TlsSettings {
                leaf_validity: DEFAULT_LEAF_VALIDITY,
                mint: MintPolicy::Routed,
            }
        );
        assert!(c.routes.is_empty());
        assert!(c.env.is_none());
    }

    #[test]
    fn full_file() {
        let c = load(
            r#"
            domains = ["test", "example.internal"]
            [listen]
            http = ["127.0.0.1:8080", "[::1]:8080"]
            https = "127.0.0.1:8443"
            dns = "127.0.0.1:5353"
            [env]
            name = "demo"
            [tls]
            leaf_validity = "14days"
            mint = "any"
            [dns]
            upstreams = ["1.1.1.1", "127.0.0.1:5300"]
            ttl = 30
            forward_timeout = "1s"
            recursion_from = ["172.16.0.0/12"]
            [proxy]
            trusted_proxies = ["10.0.0.0/8"]
            connect_timeout = "250ms"
            read_timeout = "2m"
            header_timeout = "10s"
            keepalive_timeout = "75s"
            shutdown_grace = "30s"
            threads = 2
            recent_requests = 250
            dashboard = ""
            access_log = "access.jsonl"
            inspect_bodies = ["api"]
            inspect_body_limit = 4096
            [routes]
            api = "localhost:8000"
            slow = { target = "localhost:8001", read_timeout = "10m", connect_timeout = "1s" }
            "web.example.internal" = "https://127.0.0.1:8443"
            "#,
        )
        .unwrap();
        assert_eq!(
            c.listen,
            Listen {
                http: vec![
                    "127.0.0.1:8080".parse().unwrap(),
                    "[::1]:8080".parse().unwrap()
                ],
                https: vec!["127.0.0.1:8443".parse().unwrap()],
                dns: vec!["127.0.0.1:5353".parse().unwrap()],
            }
        );
        assert_eq!(
            c.proxy,
            ProxySettings {
                trusted_proxies: vec!["10.0.0.0/8".parse().unwrap()],
                timeouts: Timeouts {
                    connect: Duration::from_millis(250),
                    read: Duration::from_secs(120),
                    header: Duration::from_secs(10),
                    keepalive: Duration::from_secs(75),
                    send: Duration::from_secs(60),
                    shutdown_grace: Duration::from_secs(30),
                },
                max_connections_per_client: DEFAULT_CONNECTIONS_PER_CLIENT,
                threads: Some(2),
                work_stealing: false,
                h1_front: true,
                recent_requests: 250,
                dashboard: None,
                access_log: Some("access.jsonl".into()),
                inspect_bodies: vec![HostName::parse("api.test").unwrap()],
                inspect_body_limit: 4096,
            }
        );
        assert_eq!(
            c.dns,
            DnsSettings {
                upstreams: vec![
                    "1.1.1.1:53".parse().unwrap(),
                    "127.0.0.1:5300".parse().unwrap()
                ],
                ttl: 30,
                forward_timeout: Duration::from_secs(1),
                recursion_from: vec!["172.16.0.0/12".parse().unwrap()],
            }
        );
        assert_eq!(
            c.tls,
            TlsSettings {
                leaf_validity: Duration::from_secs(14 * 86400),
                mint: MintPolicy::Any,
            }
        );
        let env = c.env.as_ref().unwrap();
        assert_eq!(env.to_string(), "demo");
        assert!(env.apps.is_empty());
        let slow = &c.routes[&HostName::parse("slow.test").unwrap()];
        assert_eq!(slow.read_timeout, Some(Duration::from_secs(600)));
        assert_eq!(slow.connect_timeout, Some(Duration::from_secs(1)));
        let routes: Vec<_> = c
            .routes
            .iter()
            .map(|(h, t)| format!("{h}={}", t.target))
            .collect();
        assert_eq!(
            routes,
            [
                "api.test=http://localhost:8000",
                "slow.test=http://localhost:8001",
                "web.example.internal=https://127.0.0.1:8443"
            ]
        );
    }

    #[test]
    fn errors_name_line_and_key() {
        let cases = [
            (
                "[routes]\napi = \"localhost:notaport\"\n",
                &["line 2", "api", "not a number"][..],
            ),
            ("[listen]\nhttp = \"nowhere\"\n", &["line 2", "http"]),
            (
                "[proxy]\nconnect_timeout = \"soon\"\n",
                &["line 2", "connect_timeout"],
            ),
            ("[proxy]\nthreads = 0\n", &["line 2", "threads"]),
            (
                "[proxy]\nheader_timeout = \"0s\"\n",
                &["proxy.header_timeout", "more than 0"],
            ),
            (
                "[routes]\napi = { target = \"localhost:1\", read_timeout = \"0s\" }\n",
                &["routes.api.read_timeout", "more than 0"],
            ),
            (
                "[routes]\napi = { target = \"localhost:1\", redirect = true }\n",
                &["line 2", "api"],
            ),
            ("[tls]\nmint = \"all\"\n", &["line 2", "mint", "routed"]),
            (
                "[tls]\nleaf_validity = \"2years\"\n",
                &["leaf_validity", "398"],
            ),
            ("colour = 1\n", &["line 1", "unknown field", "colour"]),
            (
                "[proxy]\ntrusted = []\n",
                &["line 2", "unknown field", "trusted"],
            ),
            (
                "[routes]\n\"my app\" = \"localhost:1\"\n",
                &["line 2", "my app"],
            ),
            ("domains = [\"te st\"]\n", &["line 1", "te st"]),
            ("[routes\n", &["line 1"]),
        ];
        for (text, needles) in cases {
            let e = load(text).unwrap_err();
            assert!(e.contains("itproxy.toml"), "{e}");
            for n in needles {
                assert!(e.contains(n), "{text:?}: missing {n:?} in {e}");
            }
        }
    }

    #[test]
    fn route_options_in_a_table() {
        let c = load("[routes]\napi = { target = \"https://127.0.0.1:8443\", redirect_https = true, insecure_upstream = true }\nweb = \"localhost:1\"\n").unwrap();
        let api = &c.routes[&HostName::parse("api.test").unwrap()];
        assert!(api.redirect_https && api.insecure_upstream);
        let web = &c.routes[&HostName::parse("web.test").unwrap()];
        assert!(!web.redirect_https && !web.insecure_upstream);
    }

    #[test]
    fn https_can_be_turned_off() {
        let cli = CliOverrides {
            no_https: true,
            ..Default::default()
        };
        assert!(Config::from_str("[listen]\nhttps = \"127.0.0.1:1\"", &cli)
            .unwrap()
            .listen
            .https
            .is_empty());
        assert_eq!(
            load("").unwrap().listen.https,
            vec![DEFAULT_HTTPS.parse().unwrap()]
        );
    }

    #[test]
    fn routes_outside_the_domains_and_duplicates_are_rejected() {
        let e = load("[routes]\n\"api.example.com\" = \"localhost:1\"\n").unwrap_err();
        assert!(
            e.contains("routes.api.example.com") && e.contains("not below"),
            "{e}"
        );
        let e =
            load("[routes]\napi = \"localhost:1\"\n\"api.test\" = \"localhost:2\"\n").unwrap_err();
        assert!(e.contains("declared twice"), "{e}");
    }

    #[test]
    fn cli_overrides_file() {
        let cli = CliOverrides {
            http: vec!["127.0.0.1:9999".parse().unwrap()],
            domains: vec!["dev".into(), ".test".into()],
            https: vec!["127.0.0.1:9443".parse().unwrap()],
            dns_upstreams: vec!["127.0.0.1:5300".parse().unwrap()],
            ..Default::default()
        };
        let c = Config::from_str("domains = \"x\"\n[routes]\napi = \"localhost:1\"", &cli).unwrap();
        assert_eq!(c.listen.http, cli.http);
        assert_eq!(c.listen.https, cli.https);
        assert_eq!(c.dns.upstreams, cli.dns_upstreams);
        assert_eq!(c.domains.to_string_list(), "dev, test");
        assert!(c.routes.contains_key(&HostName::parse("api.dev").unwrap()));
        let bad = CliOverrides {
            domains: vec!["a b".into()],
            ..Default::default()
        };
        assert!(Config::from_str("", &bad)
            .unwrap_err()
            .to_string()
            .contains("--domain"));
    }

    #[test]
    fn env_flag_gives_the_apps_an_environment() {
        let apps = "[[app]]\nname = \"a\"\nimage = \"i\"\n";
        let cli = CliOverrides {
            env: Some("ci-1".into()),
            ..Default::default()
        };
        let c = Config::from_str(apps, &cli).unwrap();
        let env = c.env.unwrap();
        assert_eq!(env.name.to_string(), "ci-1");
        assert!(env.apps.app("a").is_some());
        let bad = CliOverrides {
            env: Some("Not Valid".into()),
            ..Default::default()
        };
        let e = Config::from_str("", &bad).unwrap_err().to_string();
        assert!(e.starts_with("invalid configuration: --env"), "{e}");
    }
}

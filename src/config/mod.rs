//! Configuration: the `itproxy.toml` file format, its validation, and the defaults.
//!
//! ```text
//!  itproxy.toml ──toml──▶ FileConfig (serde, unknown keys rejected, values checked in place)
//!  CLI flags ─────────────────┐
//!                             ▼
//!                    Config (validated; cannot hold an invalid value)
//! ```
//! Values are checked while deserializing so that an error carries the file's line, column and
//! key. Nothing here opens sockets or resolves names.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;
use itproxy_orchestrator::{AppName, AppSpec, Check, Endpoint, EndpointKind, Plan, Readiness};
use itproxy_router::{HostName, UpstreamSpec};
use regex::Regex;
use serde::Deserialize;

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

/// A value parsed from a string by its own `FromStr` while the file is read, so a bad value's
/// error carries the file's line and key (host names, targets, environment names).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Parsed<T>(T);

impl<'de, T: std::str::FromStr> Deserialize<'de> for Parsed<T>
where
    T::Err: std::fmt::Display,
{
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map(Parsed).map_err(serde::de::Error::custom)
    }
}

/// One value or a list of them (`http = "127.0.0.1:80"` or `http = ["127.0.0.1:80", "[::1]:80"]`).
#[derive(Deserialize, Debug)]
#[serde(untagged)]
enum OneOrMany<T> {
    One(T),
    Many(Vec<T>),
}

impl<T> OneOrMany<T> {
    fn into_vec(self) -> Vec<T> {
        match self {
            OneOrMany::One(t) => vec![t],
            OneOrMany::Many(v) => v,
        }
    }
}

/// `itproxy.toml` as written.
#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    #[serde(default)]
    env: EnvSection,
    domains: Option<OneOrMany<Domain>>,
    #[serde(default)]
    listen: ListenSection,
    #[serde(default)]
    proxy: ProxySection,
    #[serde(default)]
    tls: TlsSection,
    #[serde(default)]
    dns: DnsSection,
    #[serde(default)]
    routes: BTreeMap<Parsed<HostName>, FileRoute>,
    #[serde(default)]
    app: Vec<FileApp>,
}

#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
struct EnvSection {
    name: Option<Parsed<itproxy_orchestrator::EnvName>>,
    /// Shorthand for a single `domains` entry.
    domain: Option<Domain>,
    /// The order of the apps' steps (else the order in which the file first names them).
    steps: Option<Vec<String>>,
}

/// `[[app]]` as written.
#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct FileApp {
    name: Parsed<AppName>,
    image: String,
    step: Option<String>,
    #[serde(default)]
    depends_on: Vec<Parsed<AppName>>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    command: Option<Command>,
    /// Shorthand for one endpoint named after the app.
    port: Option<Port>,
    kind: Option<Kind>,
    endpoints: Option<Vec<FileEndpoint>>,
    ready: Option<FileReady>,
    log_errors: Option<Vec<Parsed<Regex>>>,
    #[serde(default)]
    log_ignore: Vec<Parsed<Regex>>,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct FileEndpoint {
    name: Parsed<AppName>,
    command: Option<Command>,
    port: Option<Port>,
    kind: Option<Kind>,
}

#[derive(Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum Kind {
    Http,
    Tcp,
}

/// A command: `["start", "-b", "0.0.0.0:9000"]`, or a string run by `/bin/sh -c`.
#[derive(Deserialize, Debug)]
#[serde(untagged)]
enum Command {
    Shell(String),
    Argv(Vec<String>),
}

impl Command {
    fn into_argv(self) -> Vec<String> {
        match self {
            Command::Shell(s) => vec!["/bin/sh".into(), "-c".into(), s],
            Command::Argv(v) => v,
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Port(u16);

impl<'de> Deserialize<'de> for Port {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match u16::deserialize(d)? {
            0 => Err(serde::de::Error::custom(
                "port 0 is not a port; use 1 to 65535",
            )),
            n => Ok(Port(n)),
        }
    }
}

/// `ready = { tcp = 8000 }`, `{ http = "/health", status = 200 }`, `{ log = "regex" }` or
/// `{ docker_health = true }`, each with an optional `timeout` and `endpoint`.
#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct FileReady {
    tcp: Option<Port>,
    http: Option<String>,
    status: Option<u16>,
    port: Option<Port>,
    log: Option<Parsed<Regex>>,
    docker_health: Option<bool>,
    #[serde(default, with = "humantime_serde")]
    timeout: Option<Duration>,
    endpoint: Option<Parsed<AppName>>,
}

#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
struct DnsSection {
    #[serde(default)]
    upstreams: Vec<Resolver>,
    ttl: Option<Ttl>,
    #[serde(default, with = "humantime_serde")]
    forward_timeout: Option<Duration>,
    #[serde(default)]
    recursion_from: Vec<IpNet>,
}

/// An upstream resolver: `1.1.1.1`, `1.1.1.1:53` or `[2606:4700::1111]:53`.
#[derive(Debug, Clone, Copy)]
struct Resolver(SocketAddr);

impl<'de> Deserialize<'de> for Resolver {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        parse_resolver(&s)
            .map(Resolver)
            .map_err(serde::de::Error::custom)
    }
}

/// Parses a resolver address; the port defaults to 53.
pub fn parse_resolver(s: &str) -> Result<SocketAddr, String> {
    s.parse::<SocketAddr>()
        .or_else(|_| {
            s.parse::<std::net::IpAddr>()
                .map(|ip| SocketAddr::new(ip, 53))
        })
        .map_err(|_| {
            format!(
                "{s:?} is not an IP address with an optional port, e.g. 1.1.1.1 or 127.0.0.1:5353"
            )
        })
}

#[derive(Debug, Clone, Copy)]
struct Ttl(u32);

impl<'de> Deserialize<'de> for Ttl {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match u32::deserialize(d)? {
            n @ 0..=3600 => Ok(Ttl(n)),
            n => Err(serde::de::Error::custom(format!(
                "ttl must be from 0 to 3600 seconds, not {n}"
            ))),
        }
    }
}

#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
struct ListenSection {
    http: Option<OneOrMany<SocketAddr>>,
    https: Option<OneOrMany<SocketAddr>>,
    dns: Option<OneOrMany<SocketAddr>>,
}

#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
struct TlsSection {
    #[serde(default, with = "humantime_serde")]
    leaf_validity: Option<Duration>,
    #[serde(default)]
    mint: MintPolicy,
}

/// Which TLS server names get a certificate of their own (`[tls] mint`).
#[derive(Deserialize, Debug, Clone, Copy, Default, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum MintPolicy {
    /// Routed names (and localhost); any other name in the domains shares the domain's
    /// wildcard certificate, so random names cannot fill the disk.
    #[default]
    Routed,
    /// Every name in the domains, at its first handshake.
    Any,
}

/// A route in the file: `api = "localhost:8000"` or
/// `api = { target = "localhost:8000", redirect_https = true, insecure_upstream = false }`.
#[derive(Debug)]
enum FileRoute {
    Target(UpstreamSpec),
    Table(RouteTable),
}

// By hand rather than `untagged`, so a bad target keeps its own error message.
impl<'de> Deserialize<'de> for FileRoute {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = FileRoute;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a target string or a table with `target`")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<FileRoute, E> {
                UpstreamSpec::parse(v)
                    .map(FileRoute::Target)
                    .map_err(E::custom)
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<FileRoute, A::Error> {
                RouteTable::deserialize(serde::de::value::MapAccessDeserializer::new(map))
                    .map(FileRoute::Table)
            }
        }
        d.deserialize_any(Visitor)
    }
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct RouteTable {
    target: Parsed<UpstreamSpec>,
    #[serde(default)]
    redirect_https: bool,
    #[serde(default)]
    insecure_upstream: bool,
    #[serde(default, with = "humantime_serde")]
    connect_timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    read_timeout: Option<Duration>,
}

/// The HTTP front's timeouts, from `[proxy]`; a route may set its own `connect_timeout` and
/// `read_timeout`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// Connecting to a target (`connect_timeout`, 5 s): then 504.
    pub connect: Duration,
    /// The target's response to start, and each later read or write to stall at most
    /// (`read_timeout`, 60 s): 504 before the response, a cut response after. None for
    /// WebSocket.
    pub read: Duration,
    /// A client's request head to arrive whole after its first byte (`header_timeout`, 60 s):
    /// then 408.
    pub header: Duration,
    /// An idle client connection to send its next request (`keepalive_timeout`, 60 s).
    pub keepalive: Duration,
    /// A client to take more of its response (`send_timeout`, 60 s): then it is dropped.
    pub send: Duration,
    /// Requests in flight to finish when itproxy stops (`shutdown_grace`, 10 s).
    pub shutdown_grace: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect: Duration::from_secs(5),
            read: Duration::from_secs(60),
            header: Duration::from_secs(60),
            keepalive: Duration::from_secs(60),
            send: Duration::from_secs(60),
            shutdown_grace: Duration::from_secs(10),
        }
    }
}

/// A route's target and options, as declared or set through the API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteSpec {
    /// Where requests go.
    pub target: UpstreamSpec,
    /// Redirect plain HTTP to HTTPS.
    pub redirect_https: bool,
    /// Do not verify an `https://` target's certificate.
    pub insecure_upstream: bool,
    /// This route's connect timeout, if not `[proxy]`'s.
    pub connect_timeout: Option<Duration>,
    /// This route's read timeout, if not `[proxy]`'s.
    pub read_timeout: Option<Duration>,
}

impl RouteSpec {
    /// A route to `target` with default options.
    pub fn to(target: UpstreamSpec) -> Self {
        RouteSpec {
            target,
            redirect_https: false,
            insecure_upstream: false,
            connect_timeout: None,
            read_timeout: None,
        }
    }
}

#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
struct ProxySection {
    #[serde(default)]
    trusted_proxies: Vec<IpNet>,
    #[serde(default, with = "humantime_serde")]
    connect_timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    read_timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    header_timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    keepalive_timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    send_timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    shutdown_grace: Option<Duration>,
    max_connections_per_client: Option<usize>,
    threads: Option<Threads>,
    work_stealing: Option<bool>,
    fast_path: Option<bool>,
}

/// A domain, validated as a host name while the file is read.
#[derive(Debug, Clone)]
struct Domain(HostName);

impl<'de> Deserialize<'de> for Domain {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        let s = s.strip_prefix('.').unwrap_or(&s);
        HostName::parse(s)
            .map(Domain)
            .map_err(serde::de::Error::custom)
    }
}

#[derive(Debug, Clone, Copy)]
struct Threads(usize);

impl<'de> Deserialize<'de> for Threads {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match usize::deserialize(d)? {
            n @ 1..=256 => Ok(Threads(n)),
            n => Err(serde::de::Error::custom(format!(
                "threads must be from 1 to 256, not {n}"
            ))),
        }
    }
}

/// The domains itproxy serves; never empty. The first one qualifies bare app names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Domains(Vec<HostName>);

impl Domains {
    /// Domains from a list; duplicates are dropped, order kept.
    pub fn new(list: Vec<HostName>) -> Result<Self, ConfigError> {
        let mut out: Vec<HostName> = Vec::with_capacity(list.len());
        for d in list {
            if !out.contains(&d) {
                out.push(d);
            }
        }
        if out.is_empty() {
            return Err(ConfigError::Invalid {
                origin: None,
                message: "at least one domain is needed".into(),
            });
        }
        Ok(Domains(out))
    }

    /// The domains, primary first.
    pub fn iter(&self) -> impl Iterator<Item = &HostName> {
        self.0.iter()
    }

    /// The full host name for a route name: `api` is `api.<first domain>`; a dotted name must
    /// lie below one of the domains.
    pub fn qualify(&self, name: &str) -> Result<HostName, String> {
        if name.trim().is_empty() {
            return Err("the route name is empty; give an app name such as `api`".into());
        }
        let host = HostName::parse(name).map_err(|e| e.to_string())?;
        if !host.as_str().contains('.') {
            return HostName::parse(&format!("{host}.{}", self.0[0])).map_err(|e| e.to_string());
        }
        if self.0.iter().any(|d| host.is_within(d) && host != *d) {
            Ok(host)
        } else {
            Err(format!(
                "{host} is not below the configured domains ({}); use a name like `{}.{}` \
                 or add the domain with --domain",
                self.to_string_list(),
                host.as_str().split('.').next().unwrap_or("app"),
                self.0[0]
            ))
        }
    }

    /// The domains joined with ", ".
    pub fn to_string_list(&self) -> String {
        self.0
            .iter()
            .map(|d| d.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// The validated configuration the daemon runs with.
#[derive(Debug, Clone)]
pub struct Config {
    /// The Docker environment, if any: its network's gateway gets listeners for containers.
    pub env: Option<itproxy_orchestrator::EnvName>,
    /// Domains served.
    pub domains: Domains,
    /// Plain-HTTP listen addresses.
    pub http: Vec<SocketAddr>,
    /// HTTPS listen addresses (may be empty).
    pub https: Vec<SocketAddr>,
    /// Validity of issued leaf certificates.
    pub leaf_validity: Duration,
    /// Which server names get a certificate of their own.
    pub mint: MintPolicy,
    /// DNS listen addresses (may be empty).
    pub dns: Vec<SocketAddr>,
    /// Upstream resolvers (empty: the system's).
    pub dns_upstreams: Vec<SocketAddr>,
    /// TTL of the environment's records and negative answers.
    pub dns_ttl: u32,
    /// Time allowed for a forwarded query.
    pub dns_forward_timeout: Duration,
    /// Askers (besides loopback) allowed to use forwarding.
    pub dns_recursion_from: Vec<IpNet>,
    /// Clients whose `X-Forwarded-*` headers are kept and extended.
    pub trusted_proxies: Vec<IpNet>,
    /// The HTTP front's timeouts.
    pub timeouts: Timeouts,
    /// Open connections one client address may hold.
    pub max_connections_per_client: usize,
    /// Proxy worker threads (None: one per core).
    pub threads: Option<usize>,
    /// Whether proxy threads steal work from each other.
    pub work_stealing: bool,
    /// Whether simple requests take the lean forwarding path.
    pub fast_path: bool,
    /// Routes declared in the file.
    pub routes: BTreeMap<HostName, RouteSpec>,
    /// Apps declared in the file, in steps.
    pub apps: Plan,
    /// The file this came from, if any.
    pub source: Option<PathBuf>,
}

/// Command-line values that override the file.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
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
    pub fn load(path: Option<&Path>, cli: &Overrides) -> Result<Config, ConfigError> {
        let file = match path {
            Some(p) => {
                let text = std::fs::read_to_string(p).map_err(|error| ConfigError::Read {
                    path: p.to_path_buf(),
                    error,
                })?;
                parse_file(&text).map_err(|message| ConfigError::Parse {
                    path: p.to_path_buf(),
                    message,
                })?
            }
            None => FileConfig::default(),
        };
        Config::build(file, path.map(Path::to_path_buf), cli)
    }

    /// Validates configuration text as [`Config::load`] validates a file's (tests, fuzzers).
    pub fn from_str(text: &str, cli: &Overrides) -> Result<Config, ConfigError> {
        let file = parse_file(text).map_err(|message| ConfigError::Parse {
            path: PathBuf::from("itproxy.toml"),
            message,
        })?;
        Config::build(file, Some(PathBuf::from("itproxy.toml")), cli)
    }

    fn build(
        file: FileConfig,
        source: Option<PathBuf>,
        cli: &Overrides,
    ) -> Result<Config, ConfigError> {
        let invalid = |message: String| ConfigError::Invalid {
            origin: source.clone(),
            message,
        };
        let domains = if !cli.domains.is_empty() {
            let mut list = Vec::new();
            for d in &cli.domains {
                let d = d.strip_prefix('.').unwrap_or(d);
                list.push(HostName::parse(d).map_err(|e| ConfigError::Invalid {
                    origin: None,
                    message: format!("--domain: {e}"),
                })?);
            }
            list
        } else {
            match (file.domains, file.env.domain) {
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
        let domains = Domains::new(domains).map_err(|_| invalid("`domains` is empty".into()))?;

        let http = if !cli.http.is_empty() {
            cli.http.clone()
        } else {
            match file.listen.http {
                Some(h) => h.into_vec(),
                None => vec![DEFAULT_HTTP.parse().expect("valid default address")],
            }
        };
        let https = if cli.no_https {
            Vec::new()
        } else if !cli.https.is_empty() {
            cli.https.clone()
        } else {
            match file.listen.https {
                Some(h) => h.into_vec(),
                None => vec![DEFAULT_HTTPS.parse().expect("valid default address")],
            }
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
            match file.listen.dns {
                Some(d) => d.into_vec(),
                None => vec![DEFAULT_DNS.parse().expect("valid default address")],
            }
        };
        let dns_upstreams = if cli.dns_upstreams.is_empty() {
            file.dns.upstreams.iter().map(|r| r.0).collect()
        } else {
            cli.dns_upstreams.clone()
        };
        let leaf_validity = file.tls.leaf_validity.unwrap_or(DEFAULT_LEAF_VALIDITY);
        if leaf_validity < Duration::from_secs(3600)
            || leaf_validity > Duration::from_secs(398 * 86400)
        {
            return Err(invalid(format!(
                "tls.leaf_validity must be from 1h to 398days, not {}",
                humantime::format_duration(leaf_validity)
            )));
        }

        let timeouts = {
            let d = Timeouts::default();
            let p = &file.proxy;
            let t = Timeouts {
                connect: p.connect_timeout.unwrap_or(d.connect),
                read: p.read_timeout.unwrap_or(d.read),
                header: p.header_timeout.unwrap_or(d.header),
                keepalive: p.keepalive_timeout.unwrap_or(d.keepalive),
                send: p.send_timeout.unwrap_or(d.send),
                shutdown_grace: p.shutdown_grace.unwrap_or(d.shutdown_grace),
            };
            for (key, v) in [
                ("connect_timeout", t.connect),
                ("read_timeout", t.read),
                ("header_timeout", t.header),
                ("keepalive_timeout", t.keepalive),
                ("send_timeout", t.send),
            ] {
                if v.is_zero() {
                    return Err(invalid(format!("proxy.{key} must be more than 0")));
                }
            }
            t
        };

        let mut routes = BTreeMap::new();
        for (key, route) in file.routes {
            let spec = match route {
                FileRoute::Target(t) => RouteSpec::to(t),
                FileRoute::Table(t) => RouteSpec {
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

        let env = match &cli.env {
            Some(name) => Some(itproxy_orchestrator::EnvName::parse(name).map_err(|e| {
                ConfigError::Invalid {
                    origin: None,
                    message: format!("--env: {e}"),
                }
            })?),
            None => file.env.name.map(|n| n.0),
        };
        let apps = build_plan(file.app, file.env.steps).map_err(invalid)?;
        if !apps.is_empty() && env.is_none() {
            return Err(invalid(
                "apps are declared but there is no environment to run them in; set `[env] name` \
                 (or pass --env NAME)"
                    .into(),
            ));
        }
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
        Ok(Config {
            apps,
            env,
            domains,
            http,
            https,
            leaf_validity,
            mint: file.tls.mint,
            dns,
            dns_upstreams,
            dns_ttl: file.dns.ttl.map_or(DEFAULT_DNS_TTL, |t| t.0),
            dns_forward_timeout: file.dns.forward_timeout.unwrap_or(Duration::from_secs(1)),
            dns_recursion_from: file.dns.recursion_from,
            trusted_proxies: file.proxy.trusted_proxies,
            timeouts,
            max_connections_per_client: match file.proxy.max_connections_per_client {
                None => DEFAULT_CONNECTIONS_PER_CLIENT,
                Some(0) => {
                    return Err(invalid(
                        "proxy.max_connections_per_client must be at least 1".into(),
                    ))
                }
                Some(n) => n,
            },
            threads: file.proxy.threads.map(|t| t.0),
            work_stealing: file.proxy.work_stealing.unwrap_or(false),
            fast_path: file.proxy.fast_path.unwrap_or(true),
            routes,
            source,
        })
    }
}

/// Turns the `[[app]]` tables into a [`Plan`], checking what serde could not: keys that go
/// together, and the plan as a whole (duplicates, cycles, steps).
fn build_plan(apps: Vec<FileApp>, steps: Option<Vec<String>>) -> Result<Plan, String> {
    let mut out = Vec::with_capacity(apps.len());
    for a in apps {
        let name = a.name.0;
        let err = |key: &str, m: &str| format!("app {:?}, `{key}`: {m}", name.as_str());
        if a.image.trim().is_empty() {
            return Err(err(
                "image",
                "is empty; name an image on the engine, e.g. \"itproxy-test/web:latest\"",
            ));
        }
        let endpoint_of = |ename: AppName,
                           command: Option<Command>,
                           port: Option<Port>,
                           kind: Option<Kind>|
         -> Result<Endpoint, String> {
            let port = match (port, kind) {
                (Some(p), Some(Kind::Tcp)) => Some((p.0, EndpointKind::Tcp)),
                (Some(p), _) => Some((p.0, EndpointKind::Http)),
                (None, Some(_)) => {
                    return Err(format!(
                        "app {:?}, endpoint {:?}: `kind` needs a `port`",
                        name.as_str(),
                        ename.as_str()
                    ))
                }
                (None, None) => None,
            };
            Ok(Endpoint {
                name: ename,
                command: command.map(Command::into_argv),
                port,
            })
        };
        let app_command = a.command.map(Command::into_argv);
        let endpoints = match a.endpoints {
            None => vec![endpoint_of(name.clone(), None, a.port, a.kind)?],
            Some(list) => {
                if a.port.is_some() || a.kind.is_some() {
                    return Err(err(
                        "port",
                        "give ports in `endpoints` when the app has endpoints",
                    ));
                }
                if list.is_empty() {
                    return Err(err(
                        "endpoints",
                        "is empty; remove it, or list at least one",
                    ));
                }
                let mut v = Vec::new();
                for e in list {
                    v.push(endpoint_of(e.name.0, e.command, e.port, e.kind)?);
                }
                v
            }
        };
        let endpoints: Vec<Endpoint> = endpoints
            .into_iter()
            .map(|mut e| {
                e.command = e.command.or_else(|| app_command.clone());
                e
            })
            .collect();
        for k in a.env.keys() {
            if k.is_empty() || k.contains('=') || k.contains('\0') {
                return Err(err("env", &format!("{k:?} is not a variable name")));
            }
        }
        let ready = match a.ready {
            None => Readiness {
                check: Check::Running,
                endpoint: 0,
                timeout: itproxy_orchestrator::DEFAULT_READY_TIMEOUT,
            },
            Some(r) => {
                let endpoint = match &r.endpoint {
                    Some(e) => endpoints
                        .iter()
                        .position(|x| x.name == e.0)
                        .ok_or_else(|| {
                            err(
                                "ready.endpoint",
                                &format!("the app has no endpoint {:?}", e.0.as_str()),
                            )
                        })?,
                    None => match r.tcp.or(r.port) {
                        // The endpoint serving that port, else the first with a port.
                        Some(p) => endpoints
                            .iter()
                            .position(|x| x.port.map(|(q, _)| q) == Some(p.0))
                            .unwrap_or(0),
                        None => endpoints.iter().position(|x| x.port.is_some()).unwrap_or(0),
                    },
                };
                let given = [
                    r.tcp.is_some(),
                    r.http.is_some(),
                    r.log.is_some(),
                    r.docker_health == Some(true),
                ];
                if given.iter().filter(|g| **g).count() != 1 {
                    return Err(err(
                        "ready",
                        "give exactly one of `tcp = PORT`, `http = \"/path\"`, `log = \"regex\"` or `docker_health = true`",
                    ));
                }
                if r.status.is_some() && r.http.is_none() {
                    return Err(err("ready.status", "only goes with `http`"));
                }
                if r.port.is_some() && r.http.is_none() {
                    return Err(err(
                        "ready.port",
                        "only goes with `http` (`tcp` names its port)",
                    ));
                }
                let check = if let Some(p) = r.tcp {
                    Check::Tcp { port: p.0 }
                } else if let Some(path) = r.http {
                    if !path.starts_with('/') {
                        return Err(err(
                            "ready.http",
                            &format!("{path:?} is not a path; it starts with '/'"),
                        ));
                    }
                    let port = match r
                        .port
                        .map(|p| p.0)
                        .or(endpoints[endpoint].port.map(|(p, _)| p))
                    {
                        Some(p) => p,
                        None => {
                            return Err(err(
                                "ready.http",
                                &format!(
                                    "endpoint {:?} has no port to ask; give `port`",
                                    endpoints[endpoint].name.as_str()
                                ),
                            ))
                        }
                    };
                    let status = r.status.unwrap_or(200);
                    if !(100..=599).contains(&status) {
                        return Err(err(
                            "ready.status",
                            &format!("{status} is not an HTTP status"),
                        ));
                    }
                    Check::Http { port, path, status }
                } else if let Some(re) = r.log {
                    Check::Log(re.0)
                } else {
                    Check::DockerHealth
                };
                let timeout = r
                    .timeout
                    .unwrap_or(itproxy_orchestrator::DEFAULT_READY_TIMEOUT);
                if timeout.is_zero() || timeout > Duration::from_secs(3600) {
                    return Err(err("ready.timeout", "must be from 1ms to 1h"));
                }
                Readiness {
                    check,
                    endpoint,
                    timeout,
                }
            }
        };
        let mut errors = itproxy_orchestrator::ErrorScan::default();
        if let Some(p) = a.log_errors {
            errors.patterns = p.into_iter().map(|r| r.0).collect();
        }
        errors.ignore = a.log_ignore.into_iter().map(|r| r.0).collect();
        let step = a
            .step
            .unwrap_or_else(|| itproxy_orchestrator::DEFAULT_STEP.into());
        if step.trim().is_empty() {
            return Err(err("step", "is empty"));
        }
        out.push(AppSpec {
            name,
            image: a.image,
            step,
            depends_on: a.depends_on.into_iter().map(|d| d.0).collect(),
            env: a.env,
            endpoints,
            ready,
            errors,
        });
    }
    Plan::new(out, steps).map_err(|e| e.to_string())
}

fn parse_file(text: &str) -> Result<FileConfig, String> {
    toml::from_str::<FileConfig>(text).map_err(|e| e.to_string().trim_end().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Result<Config, String> {
        Config::from_str(text, &Overrides::default()).map_err(|e| e.to_string())
    }

    #[test]
    fn empty_file_gives_defaults() {
        let c = load("").unwrap();
        assert_eq!(c.domains.to_string_list(), "test");
        assert_eq!(c.http, vec![DEFAULT_HTTP.parse().unwrap()]);
        assert_eq!(c.timeouts, Timeouts::default());
        assert!(c.routes.is_empty());
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
            [routes]
            api = "localhost:8000"
            slow = { target = "localhost:8001", read_timeout = "10m", connect_timeout = "1s" }
            "web.example.internal" = "https://127.0.0.1:8443"
            "#,
        )
        .unwrap();
        assert_eq!(c.http.len(), 2);
        assert_eq!(
            c.timeouts,
            Timeouts {
                connect: Duration::from_millis(250),
                read: Duration::from_secs(120),
                header: Duration::from_secs(10),
                keepalive: Duration::from_secs(75),
                send: Duration::from_secs(60),
                shutdown_grace: Duration::from_secs(30),
            }
        );
        let slow = &c.routes[&HostName::parse("slow.test").unwrap()];
        assert_eq!(slow.read_timeout, Some(Duration::from_secs(600)));
        assert_eq!(slow.connect_timeout, Some(Duration::from_secs(1)));
        assert_eq!(c.threads, Some(2));
        assert_eq!(c.https, vec!["127.0.0.1:8443".parse().unwrap()]);
        assert_eq!(c.leaf_validity, Duration::from_secs(14 * 86400));
        assert_eq!(c.mint, MintPolicy::Any);
        assert_eq!(c.dns, vec!["127.0.0.1:5353".parse().unwrap()]);
        assert_eq!(
            c.env.as_ref().map(|e| e.to_string()).as_deref(),
            Some("demo")
        );
        assert_eq!(
            c.dns_upstreams,
            vec![
                "1.1.1.1:53".parse().unwrap(),
                "127.0.0.1:5300".parse().unwrap()
            ]
        );
        assert_eq!(
            (c.dns_ttl, c.dns_forward_timeout),
            (30, Duration::from_secs(1))
        );
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
        let cli = Overrides {
            no_https: true,
            ..Default::default()
        };
        assert!(Config::from_str("[listen]\nhttps = \"127.0.0.1:1\"", &cli)
            .unwrap()
            .https
            .is_empty());
        assert_eq!(
            load("").unwrap().https,
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
        let cli = Overrides {
            http: vec!["127.0.0.1:9999".parse().unwrap()],
            domains: vec!["dev".into(), ".test".into()],
            https: vec!["127.0.0.1:9443".parse().unwrap()],
            dns_upstreams: vec!["127.0.0.1:5300".parse().unwrap()],
            ..Default::default()
        };
        let c = Config::from_str("domains = \"x\"\n[routes]\napi = \"localhost:1\"", &cli).unwrap();
        assert_eq!(c.http, cli.http);
        assert_eq!(c.domains.to_string_list(), "dev, test");
        assert!(c.routes.contains_key(&HostName::parse("api.dev").unwrap()));
        let bad = Overrides {
            domains: vec!["a b".into()],
            ..Default::default()
        };
        assert!(Config::from_str("", &bad)
            .unwrap_err()
            .to_string()
            .contains("--domain"));
    }

    const APPS: &str = r#"
        [env]
        name = "demo"
        domain = "test"
        steps = ["infra", "apps"]

        [[app]]
        name  = "s3"
        image = "itproxy-test/s3:latest"
        step  = "infra"
        env   = { HOST_NAME = "s3.test" }
        endpoints = [{ name = "s3", port = 8000, kind = "tcp" }]
        ready = { tcp = 8000, timeout = "30s" }

        [[app]]
        name  = "sentry"
        image = "itproxy-test/web:latest"
        depends_on = ["s3"]
        endpoints = [
          { name = "www", command = ["start", "-b", "0.0.0.0:9000"], port = 9000 },
          { name = "wrk", command = ["worker"] },
        ]
        ready = { http = "/health", status = 200 }
        log_ignore = ["expected error"]

        [[app]]
        name = "api"
        image = "itproxy-test/web:latest"
        command = "httpd -f -p 8080"
        port = 8080
        ready = { log = "listening" }
    "#;

    #[test]
    fn apps_in_steps() {
        let c = load(APPS).unwrap();
        let steps: Vec<(&str, Vec<&str>)> = c
            .apps
            .steps()
            .iter()
            .map(|s| {
                (
                    s.name.as_str(),
                    s.apps.iter().map(|a| a.name.as_str()).collect(),
                )
            })
            .collect();
        assert_eq!(
            steps,
            [("infra", vec!["s3"]), ("apps", vec!["sentry", "api"])]
        );
        let s3 = c.apps.app("s3").unwrap();
        assert_eq!(s3.endpoints[0].port, Some((8000, EndpointKind::Tcp)));
        assert_eq!(s3.ready.check, Check::Tcp { port: 8000 });
        assert_eq!(s3.ready.timeout, Duration::from_secs(30));
        let sentry = c.apps.app("sentry").unwrap();
        assert_eq!(sentry.endpoints[1].port, None);
        assert_eq!(
            sentry.endpoints[1].command.as_deref(),
            Some(&["worker".to_string()][..])
        );
        assert_eq!(
            sentry.ready.check,
            Check::Http {
                port: 9000,
                path: "/health".into(),
                status: 200
            }
        );
        assert!(!sentry.errors.is_error("an expected error, fine"));
        assert!(sentry.errors.is_error("ERROR: boom"));
        // One endpoint named after the app; a string command runs in a shell.
        let api = c.apps.app("api").unwrap();
        assert_eq!(api.endpoints[0].name.as_str(), "api");
        assert_eq!(api.endpoints[0].port, Some((8080, EndpointKind::Http)));
        assert_eq!(
            api.endpoints[0].command.as_ref().unwrap()[..2],
            ["/bin/sh", "-c"]
        );
        assert_eq!(c.domains.to_string_list(), "test");
    }

    #[test]
    fn bad_apps_name_the_app_and_key() {
        let base = "[env]\nname = \"demo\"\n";
        let cases: &[(&str, &[&str])] = &[
            ("[[app]]\nname = \"a\"\nimage = \"i\"\ncolour = 1\n", &["line 6", "colour"]),
            ("[[app]]\nname = \"A b\"\nimage = \"i\"\n", &["line 4", "A b"]),
            ("[[app]]\nname = \"a\"\nimage = \"i\"\nready = { tcp = 1, timeout = \"soon\" }\n", &["line 6", "timeout"]),
            ("[[app]]\nname = \"a\"\nimage = \"i\"\nready = { tcp = 1, http = \"/\" }\n", &["app \"a\"", "`ready`", "exactly one"]),
            ("[[app]]\nname = \"a\"\nimage = \"i\"\nready = { http = \"/\" }\n", &["app \"a\"", "no port"]),
            ("[[app]]\nname = \"a\"\nimage = \"i\"\nready = { log = \"(\" }\n", &["line 6", "regex"]),
            ("[[app]]\nname = \"a\"\nimage = \"i\"\nkind = \"tcp\"\n", &["kind", "port"]),
            ("[[app]]\nname = \"a\"\nimage = \"i\"\nkind = \"udp\"\n", &["line 6", "udp"]),
            ("[[app]]\nname = \"a\"\nimage = \"i\"\nport = 0\n", &["line 6", "port 0"]),
            (
                "[[app]]\nname = \"a\"\nimage = \"i\"\ndepends_on = [\"b\"]\n[[app]]\nname = \"b\"\nimage = \"i\"\ndepends_on = [\"a\"]\n",
                &["cycle", "a -> b -> a"],
            ),
            ("[[app]]\nname = \"a\"\nimage = \"i\"\n[[app]]\nname = \"a\"\nimage = \"j\"\n", &["app \"a\"", "two apps"]),
            ("[[app]]\nname = \"a\"\nimage = \"\"\n", &["app \"a\"", "`image`"]),
            ("[[app]]\nname = \"api\"\nimage = \"i\"\nport = 1\n[routes]\napi = \"localhost:1\"\n", &["api.test", "both"]),
        ];
        for (text, needles) in cases {
            let text = format!("{base}{text}");
            let e = load(&text).unwrap_err();
            for n in *needles {
                assert!(e.contains(n), "{text:?}: missing {n:?} in {e}");
            }
        }
        let e = load("[[app]]\nname = \"a\"\nimage = \"i\"\n").unwrap_err();
        assert!(e.contains("[env] name"), "{e}");
    }

    #[test]
    fn qualify_route_names() {
        let d = Domains::new(vec![HostName::parse("test").unwrap()]).unwrap();
        assert_eq!(d.qualify("api").unwrap().as_str(), "api.test");
        assert_eq!(d.qualify("API.test").unwrap().as_str(), "api.test");
        assert_eq!(d.qualify("a.b.test").unwrap().as_str(), "a.b.test");
        assert!(d.qualify("").unwrap_err().contains("empty"));
        assert_eq!(d.qualify("test").unwrap().as_str(), "test.test");
        assert!(d.qualify("api.com").unwrap_err().contains("not below"));
        assert!(d.qualify("my api").unwrap_err().contains("' '"));
    }
}

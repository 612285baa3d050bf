//! `itproxy.toml` as written: the serde schema. Unknown keys are rejected everywhere, and each
//! value is checked by its own type while the file is read (`Port`, `Ttl`, `Threads`, `Domain`,
//! `Resolver`, `Parsed<T>`, `FileRoute`), so an error carries the file's line, column and key.
//! Checks across keys happen later, in [`super::Config`]'s build and in [`super::apps`].

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use ipnet::IpNet;
use itproxy_orchestrator::{AppName, EnvName};
use itproxy_router::{HostName, UpstreamSpec};
use regex::Regex;
use serde::Deserialize;

use super::MintPolicy;

/// Parses `itproxy.toml`'s text; the error is toml's message, with line, column and key.
pub(super) fn parse(text: &str) -> Result<FileConfig, String> {
    toml::from_str::<FileConfig>(text).map_err(|e| e.to_string().trim_end().to_string())
}

/// A value parsed from a string by its own `FromStr` while the file is read, so a bad value's
/// error carries the file's line and key (host names, targets, environment names).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct Parsed<T>(pub(super) T);

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
pub(super) enum OneOrMany<T> {
    One(T),
    Many(Vec<T>),
}

impl<T> OneOrMany<T> {
    pub(super) fn into_vec(self) -> Vec<T> {
        match self {
            OneOrMany::One(t) => vec![t],
            OneOrMany::Many(v) => v,
        }
    }
}

/// `itproxy.toml` as written.
#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct FileConfig {
    #[serde(default)]
    pub(super) env: EnvSection,
    pub(super) domains: Option<OneOrMany<Domain>>,
    #[serde(default)]
    pub(super) listen: ListenSection,
    #[serde(default)]
    pub(super) proxy: ProxySection,
    #[serde(default)]
    pub(super) tls: TlsSection,
    #[serde(default)]
    pub(super) dns: DnsSection,
    #[serde(default)]
    pub(super) routes: BTreeMap<Parsed<HostName>, FileRoute>,
    #[serde(default)]
    pub(super) app: Vec<FileApp>,
}

/// `[env]`.
#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct EnvSection {
    pub(super) name: Option<Parsed<EnvName>>,
    /// Shorthand for a single `domains` entry.
    pub(super) domain: Option<Domain>,
    /// The order of the apps' steps (else the order in which the file first names them).
    pub(super) steps: Option<Vec<String>>,
}

/// `[listen]`.
#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct ListenSection {
    pub(super) http: Option<OneOrMany<SocketAddr>>,
    pub(super) https: Option<OneOrMany<SocketAddr>>,
    pub(super) dns: Option<OneOrMany<SocketAddr>>,
}

/// `[proxy]`.
#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct ProxySection {
    #[serde(default)]
    pub(super) trusted_proxies: Vec<IpNet>,
    #[serde(default, with = "humantime_serde")]
    pub(super) connect_timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub(super) read_timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub(super) header_timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub(super) keepalive_timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub(super) send_timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub(super) shutdown_grace: Option<Duration>,
    pub(super) max_connections_per_client: Option<usize>,
    pub(super) threads: Option<Threads>,
    pub(super) work_stealing: Option<bool>,
    /// `fast_path`, its earlier name, is still read.
    #[serde(alias = "fast_path")]
    pub(super) h1_front: Option<bool>,
    pub(super) recent_requests: Option<usize>,
    pub(super) dashboard: Option<String>,
    pub(super) access_log: Option<std::path::PathBuf>,
    #[serde(default)]
    pub(super) inspect_bodies: Vec<String>,
    pub(super) inspect_body_limit: Option<usize>,
}

/// `[tls]`.
#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct TlsSection {
    #[serde(default, with = "humantime_serde")]
    pub(super) leaf_validity: Option<Duration>,
    #[serde(default)]
    pub(super) mint: MintPolicy,
}

/// `[dns]`.
#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct DnsSection {
    #[serde(default)]
    pub(super) upstreams: Vec<Resolver>,
    pub(super) ttl: Option<Ttl>,
    #[serde(default, with = "humantime_serde")]
    pub(super) forward_timeout: Option<Duration>,
    #[serde(default)]
    pub(super) recursion_from: Vec<IpNet>,
}

/// A route in the file: `api = "localhost:8000"` or
/// `api = { target = "localhost:8000", redirect_https = true, insecure_upstream = false }`.
#[derive(Debug)]
pub(super) enum FileRoute {
    Target(UpstreamSpec),
    Options(RouteOptions),
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
                RouteOptions::deserialize(serde::de::value::MapAccessDeserializer::new(map))
                    .map(FileRoute::Options)
            }
        }
        d.deserialize_any(Visitor)
    }
}

/// A route's table form: `{ target = "...", redirect_https = true, read_timeout = "10m" }`.
#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub(super) struct RouteOptions {
    pub(super) target: Parsed<UpstreamSpec>,
    #[serde(default)]
    pub(super) redirect_https: bool,
    #[serde(default)]
    pub(super) insecure_upstream: bool,
    #[serde(default, with = "humantime_serde")]
    pub(super) connect_timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub(super) read_timeout: Option<Duration>,
}

/// `[[app]]` as written.
#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub(super) struct FileApp {
    pub(super) name: Parsed<AppName>,
    pub(super) image: Option<String>,
    /// A directory with a Dockerfile: `image` is built from it before each start.
    pub(super) build: Option<String>,
    pub(super) step: Option<String>,
    #[serde(default)]
    pub(super) depends_on: Vec<Parsed<AppName>>,
    #[serde(default)]
    pub(super) env: BTreeMap<String, String>,
    pub(super) command: Option<Command>,
    /// Shorthand for one endpoint named after the app.
    pub(super) port: Option<Port>,
    pub(super) kind: Option<Kind>,
    pub(super) endpoints: Option<Vec<FileEndpoint>>,
    pub(super) ready: Option<FileReady>,
    pub(super) log_errors: Option<Vec<Parsed<Regex>>>,
    #[serde(default)]
    pub(super) log_ignore: Vec<Parsed<Regex>>,
    /// `SOURCE:TARGET[:ro]`, as docker run's `-v`.
    #[serde(default)]
    pub(super) volumes: Vec<String>,
    /// Files of `KEY=VALUE` lines, under `env`.
    pub(super) env_file: Option<OneOrMany<String>>,
    /// How `app restart` replaces the containers (default: start-first unless a named volume
    /// is mounted writable).
    pub(super) restart: Option<Restart>,
    /// What happens when a ready app's container exits on its own (default: on-failure).
    pub(super) restart_policy: Option<FileRestartPolicy>,
    /// The most memory its containers may use, as `docker run --memory`: "256m", "1GiB".
    pub(super) memory: Option<Parsed<itproxy_orchestrator::MemoryLimit>>,
    /// The app keeps no state of its own (none in its container, none in its volumes), so
    /// `app restart` may run new containers beside the old ones even when nothing changed.
    #[serde(default)]
    pub(super) stateless: bool,
    /// A clock of its own: an offset ("+3d") or the time it starts at ("2027-01-01 10:00:00").
    pub(super) faketime: Option<String>,
}

/// An app's `restart` order.
#[derive(Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub(super) enum Restart {
    StartFirst,
    StopFirst,
}

/// An app's `restart_policy`.
#[derive(Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub(super) enum FileRestartPolicy {
    OnFailure,
    Always,
    No,
}

/// One of an app's `endpoints`.
#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub(super) struct FileEndpoint {
    pub(super) name: Parsed<AppName>,
    pub(super) command: Option<Command>,
    pub(super) port: Option<Port>,
    pub(super) kind: Option<Kind>,
}

/// An endpoint's `kind`.
#[derive(Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub(super) enum Kind {
    Http,
    Tcp,
}

/// A command: `["start", "-b", "0.0.0.0:9000"]`, or a string run by `/bin/sh -c`.
#[derive(Deserialize, Debug)]
#[serde(untagged)]
pub(super) enum Command {
    Shell(String),
    Argv(Vec<String>),
}

impl Command {
    pub(super) fn into_argv(self) -> Vec<String> {
        match self {
            Command::Shell(s) => vec!["/bin/sh".into(), "-c".into(), s],
            Command::Argv(v) => v,
        }
    }
}

/// `ready = { tcp = 8000 }`, `{ http = "/health", status = 200 }`, `{ log = "regex" }` or
/// `{ docker_health = true }`, each with an optional `timeout` and `endpoint`.
#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub(super) struct FileReady {
    pub(super) tcp: Option<Port>,
    pub(super) http: Option<String>,
    pub(super) status: Option<u16>,
    pub(super) port: Option<Port>,
    pub(super) log: Option<Parsed<Regex>>,
    pub(super) docker_health: Option<bool>,
    #[serde(default, with = "humantime_serde")]
    pub(super) timeout: Option<Duration>,
    pub(super) endpoint: Option<Parsed<AppName>>,
    pub(super) host: Option<String>,
}

/// A TCP port, 1 to 65535.
#[derive(Debug, Clone, Copy)]
pub(super) struct Port(pub(super) u16);

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

/// A DNS TTL in seconds, 0 to 3600.
#[derive(Debug, Clone, Copy)]
pub(super) struct Ttl(pub(super) u32);

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

/// Proxy worker threads, 1 to 256.
#[derive(Debug, Clone, Copy)]
pub(super) struct Threads(pub(super) usize);

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

/// A domain, validated as a host name while the file is read (a leading dot is dropped).
#[derive(Debug, Clone)]
pub(super) struct Domain(pub(super) HostName);

impl<'de> Deserialize<'de> for Domain {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        let s = s.strip_prefix('.').unwrap_or(&s);
        HostName::parse(s)
            .map(Domain)
            .map_err(serde::de::Error::custom)
    }
}

/// An upstream resolver: `1.1.1.1`, `1.1.1.1:53` or `[2606:4700::1111]:53`.
#[derive(Debug, Clone, Copy)]
pub(super) struct Resolver(pub(super) SocketAddr);

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

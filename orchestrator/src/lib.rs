//! itproxy's Docker orchestrator (bollard).
//!
//! This crate owns everything itproxy does with the Docker engine. Today that is the engine
//! connection ([`Engine::connect`], with a clear error naming the socket and `DOCKER_HOST`) and
//! the environment's private network ([`Engine::ensure_network`], created once and reused,
//! labelled so that only this environment's network is ever touched; [`Engine::remove_network`]).
//! The network's gateway is where the proxy and DNS will listen for containers, and it must be
//! known before the proxy starts (Pingora fixes its listeners at start).
//!
//! Containers started by hand with `itproxy.host`/`itproxy.port` labels are found at start-up
//! ([`Engine::labelled_containers`]) and followed on the events stream
//! ([`Engine::watch_labelled`]).
//!
//! Declared apps ([`Plan`], checked as a whole) run as one container per endpoint on the
//! environment's network ([`Engine::ensure_container`]: reused when nothing changed), with
//! itproxy's DNS as their resolver and the CA mounted; [`Engine::wait_ready`] runs their
//! readiness checks, and [`Engine::logs`] reads what they wrote.
#![warn(missing_docs, clippy::print_stdout)]

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;

use bollard::models::NetworkCreateRequest;
use bollard::Docker;

mod apps;
mod build;
mod containers;
mod discovery;
mod ready;
mod snapshot;
pub use apps::{
    AppName, AppSpec, Check, Endpoint, EndpointKind, ErrorScan, FakeTime, Finding, MemoryLimit,
    Plan, PlanError, Readiness, RestartOrder, RestartPolicy, Step, Volume, VolumeSource,
    DEFAULT_ERROR_PATTERNS, DEFAULT_READY_TIMEOUT, DEFAULT_STEP,
};
pub use containers::{
    container_name, replacement_name, volume_name, AppEvent, Clocks, Container, ContainerEvent,
    Environment, ExitStatus, KeptState, APP_LABEL, CA_BUNDLE_IN_CONTAINER, CA_ROOT_IN_CONTAINER,
    CLOCK_FILE, CLOCK_IN_CONTAINER, ENDPOINT_LABEL, FAKETIME_IN_CONTAINER, SPEC_LABEL,
};
pub use discovery::{Discovery, Labelled, HOST_LABEL, PORT_LABEL};
pub use ready::{unix_seconds, unix_time, LogLine, LOG_LINES_ON_FAILURE};

/// Label carried by every object itproxy creates, with the environment's name.
pub const ENV_LABEL: &str = "itproxy.env";

/// What can go wrong talking to Docker.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The engine cannot be reached.
    #[error(
        "cannot reach the Docker engine at {socket}: {error}; is Docker running? \
         Set DOCKER_HOST (e.g. unix:///run/user/1000/docker.sock) to use another socket"
    )]
    Unreachable {
        /// The socket or URL tried.
        socket: String,
        /// Why.
        error: String,
    },
    /// An environment name that cannot name Docker objects.
    #[error("invalid environment name {name:?}: use 1 to 40 of a-z, 0-9, '-' and '_', starting with a letter or digit")]
    InvalidEnvName {
        /// The name.
        name: String,
    },
    /// A network with our name exists but is not ours.
    #[error("a Docker network named {name} exists but was not created by itproxy (no {ENV_LABEL} label); remove or rename it, or choose another environment name")]
    NotOurs {
        /// The network name.
        name: String,
    },
    /// A container with our name exists but belongs to no environment of ours.
    #[error("a container named {name} exists but is not this environment's (its {ENV_LABEL} label differs); remove or rename it")]
    ContainerNotOurs {
        /// The container's name.
        name: String,
    },
    /// An app declares `faketime` and libfaketime is not installed on the host.
    #[error(
        "app {app} declares faketime, but libfaketime is not installed on this machine; \
         install it (`apt-get install libfaketime`) and start the app again"
    )]
    NoFaketime {
        /// The app.
        app: String,
    },
    /// The app's image is not on the engine.
    #[error("app {app}: the image {image} is not on this Docker engine; build or load it first (e.g. `docker build -t {image} .`; itproxy does not pull)")]
    NoImage {
        /// The app.
        app: String,
        /// The image.
        image: String,
    },
    /// An app did not become ready.
    #[error(
        "app {app} is not ready: {reason}\n  last lines of {container}:{}",
        format_lines(last_logs)
    )]
    NotReady {
        /// The app.
        app: String,
        /// The container checked.
        container: String,
        /// Why.
        reason: String,
        /// What it wrote last.
        last_logs: Vec<LogLine>,
    },
    /// An app's image could not be built from its `build` context.
    #[error("app {app}: building the image {image} from {} failed: {reason}{}", .context.display(), format_text(.output))]
    Build {
        /// The app.
        app: String,
        /// The image's tag.
        image: String,
        /// The build context.
        context: std::path::PathBuf,
        /// Why.
        reason: String,
        /// The build's last lines.
        output: Vec<String>,
    },
    /// The engine refused a request.
    #[error("Docker refused to {action}: {error}")]
    Engine {
        /// What was being done.
        action: String,
        /// The engine's answer.
        error: String,
    },
}

fn format_text(lines: &[String]) -> String {
    lines.iter().map(|l| format!("\n    | {l}")).collect()
}

fn format_lines(lines: &[LogLine]) -> String {
    if lines.is_empty() {
        return " (none)".into();
    }
    lines
        .iter()
        .map(|l| format!("\n    | {}", l.text))
        .collect()
}

/// An environment's name: namespaces its network, containers and labels, so that parallel CI
/// jobs on one engine do not clash.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct EnvName(String);

impl EnvName {
    /// Validates a name: 1 to 40 of `a-z0-9-_`, starting with a letter or digit.
    pub fn parse(name: &str) -> Result<Self, Error> {
        let ok = !name.is_empty()
            && name.len() <= 40
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
            && name.as_bytes()[0].is_ascii_alphanumeric();
        if ok {
            Ok(EnvName(name.to_string()))
        } else {
            Err(Error::InvalidEnvName {
                name: name.to_string(),
            })
        }
    }

    /// The Docker network's name for this environment.
    pub fn network_name(&self) -> String {
        format!("itproxy-{}", self.0)
    }
}

impl std::str::FromStr for EnvName {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        EnvName::parse(s)
    }
}

impl fmt::Display for EnvName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The environment's network as Docker reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkInfo {
    /// Docker's id.
    pub id: String,
    /// The name (`itproxy-<env>`).
    pub name: String,
    /// The subnet, e.g. `172.18.0.0/16`.
    pub subnet: Option<String>,
    /// The gateway address: where the proxy and DNS listen for containers.
    pub gateway: Option<IpAddr>,
    /// Whether this call created it (false: reused).
    pub created: bool,
}

/// A connection to the Docker engine.
pub struct Engine {
    docker: Docker,
}

pub(crate) fn engine_err(
    action: impl Into<String>,
) -> impl FnOnce(bollard::errors::Error) -> Error {
    let action = action.into();
    move |e| Error::Engine {
        action,
        error: e.to_string(),
    }
}

/// An engine answer where 404 means "there is none": `Ok(None)`, other errors name `action`.
pub(crate) fn found<T>(
    answer: Result<T, bollard::errors::Error>,
    action: impl FnOnce() -> String,
) -> Result<Option<T>, Error> {
    match answer {
        Ok(t) => Ok(Some(t)),
        Err(bollard::errors::Error::DockerResponseServerError {
            status_code: 404, ..
        }) => Ok(None),
        Err(e) => Err(engine_err(action())(e)),
    }
}

impl Engine {
    /// Connects to the local engine (`DOCKER_HOST`, else /var/run/docker.sock), agrees on an
    /// API version the engine speaks, and checks that it answers.
    pub async fn connect() -> Result<Engine, Error> {
        let socket =
            std::env::var("DOCKER_HOST").unwrap_or_else(|_| "unix:///var/run/docker.sock".into());
        let unreachable = |e: bollard::errors::Error| Error::Unreachable {
            socket: socket.clone(),
            error: e.to_string(),
        };
        let docker = Docker::connect_with_local_defaults().map_err(unreachable)?;
        // Engines older than bollard's default API version (e.g. 20.10 speaks 1.41) need this.
        let docker = docker.negotiate_version().await.map_err(unreachable)?;
        docker.ping().await.map_err(unreachable)?;
        Ok(Engine { docker })
    }

    /// Creates the environment's bridge network, or reuses it if it exists and carries our label.
    pub async fn ensure_network(&self, env: &EnvName) -> Result<NetworkInfo, Error> {
        let name = env.network_name();
        let created = match self.inspect(&name).await? {
            Some(_) => false,
            None => {
                let labels = HashMap::from([(ENV_LABEL.to_string(), env.to_string())]);
                let request = NetworkCreateRequest {
                    name: name.clone(),
                    driver: Some("bridge".into()),
                    labels: Some(labels),
                    ..Default::default()
                };
                match self.docker.create_network(request).await {
                    Ok(_) => true,
                    // Another itproxy created it at the same moment: reuse it.
                    Err(bollard::errors::Error::DockerResponseServerError {
                        status_code: 409,
                        ..
                    }) => false,
                    Err(e) => return Err(engine_err(format!("create the network {name}"))(e)),
                }
            }
        };
        let mut info = self.inspect(&name).await?.ok_or_else(|| Error::Engine {
            action: format!("inspect the network {name}"),
            error: "it disappeared right after being created".into(),
        })?;
        info.created = created;
        Ok(info)
    }

    async fn inspect(&self, name: &str) -> Result<Option<NetworkInfo>, Error> {
        let answer = self.docker.inspect_network(name, None).await;
        let Some(net) = found(answer, || format!("inspect the network {name}"))? else {
            return Ok(None);
        };
        if !net
            .labels
            .as_ref()
            .is_some_and(|l| l.contains_key(ENV_LABEL))
        {
            return Err(Error::NotOurs {
                name: name.to_string(),
            });
        }
        let config = net
            .ipam
            .and_then(|i| i.config)
            .and_then(|c| c.into_iter().next());
        Ok(Some(NetworkInfo {
            id: net.id.unwrap_or_default(),
            name: net.name.unwrap_or_else(|| name.to_string()),
            subnet: config.as_ref().and_then(|c| c.subnet.clone()),
            gateway: config.and_then(|c| c.gateway).and_then(|g| g.parse().ok()),
            created: false,
        }))
    }

    /// Removes the environment's volumes (those it created, by label; its containers must be
    /// gone); returns their names.
    pub async fn remove_env_volumes(&self, env: &EnvName) -> Result<Vec<String>, Error> {
        let label = format!("{ENV_LABEL}={env}");
        let filters = HashMap::from([("label", vec![label.as_str()])]);
        let options = bollard::query_parameters::ListVolumesOptionsBuilder::default()
            .filters(&filters)
            .build();
        let listed = self
            .docker
            .list_volumes(Some(options))
            .await
            .map_err(engine_err("list the environment's volumes"))?;
        let mut removed = Vec::new();
        for v in listed.volumes.unwrap_or_default() {
            self.docker
                .remove_volume(
                    &v.name,
                    None::<bollard::query_parameters::RemoveVolumeOptions>,
                )
                .await
                .map_err(engine_err(format!("remove the volume {}", v.name)))?;
            removed.push(v.name);
        }
        removed.sort();
        Ok(removed)
    }

    /// Removes the environment's network; returns whether there was one.
    pub async fn remove_network(&self, env: &EnvName) -> Result<bool, Error> {
        let name = env.network_name();
        if self.inspect(&name).await?.is_none() {
            return Ok(false);
        }
        self.docker
            .remove_network(&name)
            .await
            .map_err(engine_err(format!("remove the network {name}")))?;
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn environment_names() {
        assert_eq!(
            EnvName::parse("demo").unwrap().network_name(),
            "itproxy-demo"
        );
        assert!(EnvName::parse("ci-job_42").is_ok());
        for bad in ["", "-x", "Demo", "a b", "a/b", &"x".repeat(41)] {
            assert!(EnvName::parse(bad).is_err(), "{bad:?}");
        }
    }
}

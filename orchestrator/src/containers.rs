//! The environment's containers: one per app endpoint, created (or reused when nothing
//! changed), started on the environment's network, stopped and removed.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::PathBuf;

use bollard::models::{ContainerCreateBody, HostConfig};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, EventsOptionsBuilder, ListContainersOptionsBuilder,
    RemoveContainerOptionsBuilder, StopContainerOptionsBuilder,
};
use futures_util::{Stream, StreamExt};

use crate::apps::{AppSpec, VolumeSource};
use crate::{engine_err, found, Engine, EnvName, Error, NetworkInfo, ENV_LABEL};

/// The label naming a container's app.
pub const APP_LABEL: &str = "itproxy.app";
/// The label naming a container's endpoint.
pub const ENDPOINT_LABEL: &str = "itproxy.endpoint";
/// The label holding a digest of what the container was created from: a container is reused
/// only when it matches.
pub const SPEC_LABEL: &str = "itproxy.spec";

/// Where the CA's files are mounted in every container.
pub const CA_BUNDLE_IN_CONTAINER: &str = "/etc/itproxy/ca-bundle.pem";
/// The root alone, for runtimes that add it to their own roots (Node).
pub const CA_ROOT_IN_CONTAINER: &str = "/etc/itproxy/ca.pem";
/// Where an app with a clock of its own finds libfaketime.
pub const FAKETIME_IN_CONTAINER: &str = "/usr/lib/itproxy/libfaketime.so.1";
/// The directory holding the app's clock offset (read-only in the container).
pub const CLOCK_IN_CONTAINER: &str = "/etc/itproxy/clock";
/// The file in an app's clock directory holding its offset, as libfaketime reads it.
pub const CLOCK_FILE: &str = "offset";

/// Where the apps that declare `faketime` get their clocks from.
#[derive(Debug, Clone)]
pub struct Clocks {
    /// libfaketime on the host (Debian's package `libfaketime`), if installed.
    pub library: Option<PathBuf>,
    /// A directory per app (named after it) holding [`CLOCK_FILE`].
    pub dir: PathBuf,
}

impl Clocks {
    /// The host directory mounted as the app's clock.
    pub fn app_dir(&self, app: &str) -> PathBuf {
        self.dir.join(app)
    }

    /// The first libfaketime found where Debian and Ubuntu install it.
    pub fn find_library() -> Option<PathBuf> {
        [
            "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1",
            "/usr/lib/aarch64-linux-gnu/faketime/libfaketime.so.1",
            "/usr/lib/faketime/libfaketime.so.1",
        ]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
    }
}

/// What every container of the environment gets from itproxy.
#[derive(Debug, Clone)]
pub struct Environment {
    /// The environment.
    pub env: EnvName,
    /// Its network.
    pub network: NetworkInfo,
    /// The resolver containers use: itproxy's DNS on the network's gateway.
    pub dns: Option<IpAddr>,
    /// The CA bundle (system roots + ours) and the root alone, to mount read-only.
    pub ca: Option<(PathBuf, PathBuf)>,
    /// Clocks for the apps that declare `faketime`.
    pub clocks: Option<Clocks>,
}

/// A container of the environment as the engine reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Container {
    /// Docker's id.
    pub id: String,
    /// Its name (`itproxy-<env>-<app>[-<endpoint>]`).
    pub name: String,
    /// The app.
    pub app: String,
    /// The endpoint.
    pub endpoint: String,
    /// Docker's state: `running`, `exited`, `created`...
    pub state: String,
    /// Its address on the environment's network, when running.
    pub ip: Option<IpAddr>,
    /// When it was last started (RFC 3339), if ever.
    pub started_at: Option<String>,
    /// How it last exited, when it has (from an inspection; a listing does not say).
    pub exit: Option<ExitStatus>,
    /// Whether this call reused an existing container (as opposed to creating it).
    pub reused: bool,
}

impl Container {
    /// Whether it runs.
    pub fn running(&self) -> bool {
        self.state == "running"
    }

    /// From the engine's full description of it (`name` as asked, if it has none).
    fn from_inspect(c: bollard::models::ContainerInspectResponse, name: &str) -> Container {
        let labels = c.config.and_then(|c| c.labels).unwrap_or_default();
        let env = labels.get(ENV_LABEL).cloned().unwrap_or_default();
        let state = c.state.unwrap_or_default();
        let running = state.running.unwrap_or(false);
        let ip = if running {
            c.network_settings
                .and_then(|n| n.networks)
                .and_then(|nets| nets.get(&format!("itproxy-{env}")).cloned())
                .and_then(|e| e.ip_address)
                .and_then(|ip| ip.parse().ok())
        } else {
            None
        };
        let exit = (!running
            && state
                .started_at
                .as_deref()
                .is_some_and(|s| !s.starts_with("0001-")))
        .then(|| ExitStatus {
            code: state.exit_code,
            oom_killed: state.oom_killed.unwrap_or(false),
        });
        Container {
            exit,
            id: c.id.unwrap_or_default(),
            name: c
                .name
                .map(|n| n.trim_start_matches('/').to_string())
                .unwrap_or_else(|| name.to_string()),
            app: labels.get(APP_LABEL).cloned().unwrap_or_default(),
            endpoint: labels.get(ENDPOINT_LABEL).cloned().unwrap_or_default(),
            state: state
                .status
                .map(|s| s.to_string())
                .unwrap_or_else(|| "unknown".into()),
            ip,
            started_at: state.started_at.filter(|s| !s.starts_with("0001-")),
            reused: false,
        }
    }
}

/// What a restart of a container could lose (see [`Engine::kept_state`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeptState {
    /// The container exists as declared now (same declaration, same image).
    pub unchanged: bool,
    /// How many anonymous volumes it has (an image's `VOLUME`s, e.g. a database's data).
    pub anonymous_volumes: usize,
}

/// The anonymous volumes of container `c` (those of no name of ours) at a path `app` does not
/// mount something else at: (volume, path in the container).
fn carried_volumes(
    c: &bollard::models::ContainerInspectResponse,
    app: &AppSpec,
) -> Vec<(String, String)> {
    c.mounts
        .iter()
        .flatten()
        .filter(|m| m.typ.as_deref() == Some("volume"))
        .filter_map(|m| Some((m.name.clone()?, m.destination.clone()?)))
        // Named volumes are the environment's own (`itproxy-<env>-<name>`) and are declared.
        .filter(|(name, _)| !name.starts_with("itproxy-"))
        .filter(|(_, target)| !app.volumes.iter().any(|v| &v.target == target))
        .collect()
}

/// The container name of an app's endpoint.
pub fn container_name(env: &EnvName, app: &str, endpoint: &str) -> String {
    if app == endpoint {
        format!("itproxy-{env}-{app}")
    } else {
        format!("itproxy-{env}-{app}-{endpoint}")
    }
}

/// The name of the container that replaces `name` while both run (a blue/green restart).
/// App and endpoint names have no `_`, so it cannot be another endpoint's container.
pub fn replacement_name(name: &str) -> String {
    format!("{name}_next")
}

/// The engine's name of the environment's volume `name`.
pub fn volume_name(env: &EnvName, name: &str) -> String {
    format!("itproxy-{env}-{name}")
}

/// FNV-1a: a digest that stays the same across builds (std's hasher does not promise that), so
/// an unchanged declaration reuses its container after an upgrade too.
fn digest(bytes: &[u8]) -> String {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x100000001b3);
    }
    format!("{h:016x}")
}

impl Engine {
    /// Makes the container of `app`'s endpoint `index` run as declared: reused if it exists
    /// with the same declaration and image, else (re)created; then started if it is not running.
    pub async fn ensure_container(
        &self,
        environment: &Environment,
        app: &AppSpec,
        index: usize,
    ) -> Result<Container, Error> {
        let (name, existing) = self.ensure_created(environment, app, index).await?;
        match existing {
            Some(mut c) => {
                if !c.running() {
                    c = self.start(&name).await?;
                }
                c.reused = true;
                Ok(c)
            }
            None => self.start(&name).await,
        }
    }

    /// The container of `app`'s endpoint `index` as declared, created if need be but not
    /// started: its name, and the container when an existing one was kept.
    pub async fn ensure_created(
        &self,
        environment: &Environment,
        app: &AppSpec,
        index: usize,
    ) -> Result<(String, Option<Container>), Error> {
        let endpoint = &app.endpoints[index];
        let env = &environment.env;
        let name = container_name(env, app.name.as_str(), endpoint.name.as_str());
        let (mut body, spec) = self.declared_body(environment, app, index).await?;

        let answer = self.docker.inspect_container(&name, None).await;
        let existing = found(answer, || format!("inspect the container {name}"))?;
        if let Some(c) = existing {
            let labels = c.config.as_ref().and_then(|c| c.labels.as_ref());
            if labels.and_then(|l| l.get(ENV_LABEL)) != Some(&env.to_string()) {
                return Err(Error::ContainerNotOurs { name });
            }
            if labels.and_then(|l| l.get(SPEC_LABEL)) == Some(&spec) {
                let c = Container::from_inspect(c, &name);
                return Ok((name, Some(c)));
            }
            // What the old container keeps in anonymous volumes (an image's `VOLUME`, e.g. a
            // database's data directory) goes on in the new one, as Compose does.
            let carried = carried_volumes(&c, app);
            if !carried.is_empty() {
                tracing::info!(container = %name, volumes = ?carried, "carrying anonymous volumes over");
                let host = body.host_config.get_or_insert_with(Default::default);
                host.binds
                    .get_or_insert_with(Vec::new)
                    .extend(carried.iter().map(|(v, target)| format!("{v}:{target}")));
            }
            tracing::info!(container = %name, "declaration or image changed; recreating");
            self.stop(&name, 10).await?;
            self.remove_container_keeping_volumes(&name).await?;
        }
        let options = CreateContainerOptionsBuilder::new().name(&name).build();
        self.docker
            .create_container(Some(options), body)
            .await
            .map_err(engine_err(format!("create the container {name}")))?;
        Ok((name, None))
    }

    /// What a restart of `app`'s endpoint `index` could lose: whether its container is as
    /// declared (same declaration and image), and how many anonymous volumes it has.
    pub async fn kept_state(
        &self,
        environment: &Environment,
        app: &AppSpec,
        index: usize,
    ) -> Result<KeptState, Error> {
        let name = container_name(
            &environment.env,
            app.name.as_str(),
            app.endpoints[index].name.as_str(),
        );
        let (_, spec) = self.declared_body(environment, app, index).await?;
        let answer = self.docker.inspect_container(&name, None).await;
        let Some(c) = found(answer, || format!("inspect the container {name}"))? else {
            return Ok(KeptState {
                unchanged: false,
                anonymous_volumes: 0,
            });
        };
        let labels = c.config.as_ref().and_then(|c| c.labels.as_ref());
        Ok(KeptState {
            unchanged: labels.and_then(|l| l.get(SPEC_LABEL)) == Some(&spec),
            anonymous_volumes: carried_volumes(&c, app).len(),
        })
    }

    /// What the container of `app`'s endpoint `index` is created from, labelled with a digest
    /// of it and of the image it runs (the image must be on the engine), and that digest.
    async fn declared_body(
        &self,
        environment: &Environment,
        app: &AppSpec,
        index: usize,
    ) -> Result<(ContainerCreateBody, String), Error> {
        if app.faketime.is_some()
            && environment
                .clocks
                .as_ref()
                .and_then(|c| c.library.as_ref())
                .is_none()
        {
            return Err(Error::NoFaketime {
                app: app.name.to_string(),
            });
        }
        let image = self.docker.inspect_image(&app.image).await;
        let image_id = found(image, || format!("inspect the image {}", app.image))?
            .ok_or_else(|| Error::NoImage {
                app: app.name.to_string(),
                image: app.image.clone(),
            })?
            .id
            .unwrap_or_default();
        self.ensure_volumes(environment, app).await?;
        let mut body = self.create_body(environment, app, index);
        // Through a JSON value, whose maps are sorted: the labels' HashMap order is not stable.
        let canonical = serde_json::to_value(&body).expect("serializable body");
        let spec = digest(format!("{image_id}\n{canonical}").as_bytes());
        body.labels
            .get_or_insert_with(HashMap::new)
            .insert(SPEC_LABEL.into(), spec.clone());
        Ok((body, spec))
    }

    /// Creates and starts a container for `app`'s endpoint `index` beside the one that runs
    /// (under [`replacement_name`]), so the app keeps serving while its replacement starts.
    /// A replacement left by an earlier attempt is removed first.
    pub async fn start_replacement(
        &self,
        environment: &Environment,
        app: &AppSpec,
        index: usize,
    ) -> Result<Container, Error> {
        let endpoint = &app.endpoints[index];
        let name = replacement_name(&container_name(
            &environment.env,
            app.name.as_str(),
            endpoint.name.as_str(),
        ));
        self.remove_container(&name).await?;
        let (body, _) = self.declared_body(environment, app, index).await?;
        let options = CreateContainerOptionsBuilder::new().name(&name).build();
        self.docker
            .create_container(Some(options), body)
            .await
            .map_err(engine_err(format!("create the container {name}")))?;
        self.start(&name).await
    }

    /// Puts a started replacement in the place of the container it replaces: the old one is
    /// stopped (SIGTERM, then SIGKILL after `grace_seconds`) and removed, and the replacement
    /// takes its name (its address stays), so the next `up` reuses it.
    pub async fn promote_replacement(&self, name: &str, grace_seconds: i32) -> Result<(), Error> {
        self.stop(name, grace_seconds).await?;
        self.remove_container(name).await?;
        let next = replacement_name(name);
        let options = bollard::query_parameters::RenameContainerOptionsBuilder::new()
            .name(name)
            .build();
        self.docker
            .rename_container(&next, options)
            .await
            .map_err(engine_err(format!("rename the container {next} to {name}")))
    }

    /// Removes the app's containers and its named volumes (their data is lost): what a reset
    /// starts again from. Returns what was removed.
    pub async fn remove_app(
        &self,
        environment: &Environment,
        app: &AppSpec,
    ) -> Result<Vec<String>, Error> {
        let mut removed = Vec::new();
        for e in &app.endpoints {
            let name = container_name(&environment.env, app.name.as_str(), e.name.as_str());
            if self.container(&name).await?.is_some() {
                self.remove_container(&name).await?;
                removed.push(format!("container {name}"));
            }
        }
        for v in &app.volumes {
            if let VolumeSource::Named(name) = &v.source {
                let full = volume_name(&environment.env, name);
                match self
                    .docker
                    .remove_volume(
                        &full,
                        None::<bollard::query_parameters::RemoveVolumeOptions>,
                    )
                    .await
                {
                    Ok(()) => removed.push(format!("volume {full}")),
                    Err(bollard::errors::Error::DockerResponseServerError {
                        status_code: 404,
                        ..
                    }) => {}
                    Err(e) => return Err(engine_err(format!("remove the volume {full}"))(e)),
                }
            }
        }
        Ok(removed)
    }

    /// Creates the app's named volumes that do not exist yet, labelled with the environment
    /// (a volume that exists, with its data, is kept as it is).
    async fn ensure_volumes(&self, environment: &Environment, app: &AppSpec) -> Result<(), Error> {
        for v in &app.volumes {
            if let VolumeSource::Named(name) = &v.source {
                let full = volume_name(&environment.env, name);
                let request = bollard::models::VolumeCreateRequest {
                    name: Some(full.clone()),
                    labels: Some(HashMap::from([
                        (ENV_LABEL.to_string(), environment.env.to_string()),
                        (APP_LABEL.to_string(), app.name.to_string()),
                    ])),
                    ..Default::default()
                };
                // Idempotent on the engine: an existing volume is returned unchanged.
                self.docker
                    .create_volume(request)
                    .await
                    .map_err(engine_err(format!("create the volume {full}")))?;
            }
        }
        Ok(())
    }

    fn create_body(
        &self,
        environment: &Environment,
        app: &AppSpec,
        index: usize,
    ) -> ContainerCreateBody {
        let endpoint = &app.endpoints[index];
        let network = environment.network.name.clone();
        let mut env: Vec<String> = Vec::new();
        let mut binds = Vec::new();
        if let Some((bundle, root)) = &environment.ca {
            binds.push(format!("{}:{CA_BUNDLE_IN_CONTAINER}:ro", bundle.display()));
            binds.push(format!("{}:{CA_ROOT_IN_CONTAINER}:ro", root.display()));
            for var in ["SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"] {
                if !app.env.contains_key(var) {
                    env.push(format!("{var}={CA_BUNDLE_IN_CONTAINER}"));
                }
            }
            if !app.env.contains_key("NODE_EXTRA_CA_CERTS") {
                env.push(format!("NODE_EXTRA_CA_CERTS={CA_ROOT_IN_CONTAINER}"));
            }
        }
        let clock = app
            .faketime
            .and(environment.clocks.as_ref())
            .and_then(|c| Some((c.library.as_ref()?, c.app_dir(app.name.as_str()))));
        if let Some((library, dir)) = &clock {
            binds.push(format!("{}:{FAKETIME_IN_CONTAINER}:ro", library.display()));
            binds.push(format!("{}:{CLOCK_IN_CONTAINER}:ro", dir.display()));
            // The offset is read again within a second of a change; timers and timeouts
            // (the monotonic clock) keep real time.
            env.push(format!(
                "FAKETIME_TIMESTAMP_FILE={CLOCK_IN_CONTAINER}/{CLOCK_FILE}"
            ));
            env.push("FAKETIME_CACHE_DURATION=1".into());
            env.push("FAKETIME_DONT_FAKE_MONOTONIC=1".into());
        }
        env.extend(
            app.env
                .iter()
                .filter(|(k, _)| clock.is_none() || *k != "LD_PRELOAD")
                .map(|(k, v)| format!("{k}={v}")),
        );
        if clock.is_some() {
            let preload = match app.env.get("LD_PRELOAD") {
                Some(theirs) => format!("{FAKETIME_IN_CONTAINER}:{theirs}"),
                None => FAKETIME_IN_CONTAINER.to_string(),
            };
            env.push(format!("LD_PRELOAD={preload}"));
        }
        for v in &app.volumes {
            let source = match &v.source {
                VolumeSource::Named(name) => volume_name(&environment.env, name),
                VolumeSource::Host(path) => path.display().to_string(),
            };
            let mode = if v.read_only { ":ro" } else { "" };
            binds.push(format!("{source}:{}{mode}", v.target));
        }
        let labels = HashMap::from([
            (ENV_LABEL.to_string(), environment.env.to_string()),
            (APP_LABEL.to_string(), app.name.to_string()),
            (ENDPOINT_LABEL.to_string(), endpoint.name.to_string()),
        ]);
        ContainerCreateBody {
            image: Some(app.image.clone()),
            cmd: endpoint.command.clone(),
            env: Some(env),
            labels: Some(labels),
            hostname: Some(endpoint.name.to_string()),
            host_config: Some(HostConfig {
                network_mode: Some(network),
                // No published ports: everything goes through itproxy on the gateway.
                dns: environment.dns.map(|ip| vec![ip.to_string()]),
                binds: (!binds.is_empty()).then_some(binds),
                // An init as PID 1 passes SIGTERM on, so servers that do not handle it as
                // PID 1 (most) stop at once rather than after the kill timeout.
                init: Some(true),
                memory: app.memory.map(|m| m.bytes() as i64),
                // No swap beyond it, as in Kubernetes: over the limit is an OOM kill.
                memory_swap: app.memory.map(|m| m.bytes() as i64),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// Starts a created or stopped container and reports it running.
    pub async fn start(&self, name: &str) -> Result<Container, Error> {
        self.docker
            .start_container(name, None)
            .await
            .map_err(engine_err(format!("start the container {name}")))?;
        self.container(name).await?.ok_or_else(|| Error::Engine {
            action: format!("inspect the container {name}"),
            error: "it disappeared right after starting".into(),
        })
    }

    /// Stops a container (SIGTERM, then SIGKILL after `grace_seconds`); a missing or stopped
    /// one is fine.
    pub async fn stop(&self, name: &str, grace_seconds: i32) -> Result<(), Error> {
        let options = StopContainerOptionsBuilder::new().t(grace_seconds).build();
        match self.docker.stop_container(name, Some(options)).await {
            Ok(())
            | Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 304 | 404,
                ..
            }) => Ok(()),
            Err(e) => Err(engine_err(format!("stop the container {name}"))(e)),
        }
    }

    /// Removes a container, running or not, with its anonymous volumes (those it was given
    /// by an earlier container too); a missing one is fine.
    pub async fn remove_container(&self, name: &str) -> Result<(), Error> {
        let answer = self.docker.inspect_container(name, None).await;
        let carried: Vec<String> = found(answer, || format!("inspect the container {name}"))?
            .map(|c| {
                c.mounts
                    .iter()
                    .flatten()
                    .filter(|m| m.typ.as_deref() == Some("volume"))
                    .filter_map(|m| m.name.clone())
                    .filter(|v| !v.starts_with("itproxy-"))
                    .collect()
            })
            .unwrap_or_default();
        let options = RemoveContainerOptionsBuilder::new()
            .force(true)
            .v(true)
            .build();
        match self.docker.remove_container(name, Some(options)).await {
            Ok(())
            | Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            }) => {}
            Err(e) => return Err(engine_err(format!("remove the container {name}"))(e)),
        }
        // A volume carried over is mounted by name, so the engine keeps it: removed here (one
        // still in use elsewhere, or already gone, is left alone).
        for v in carried {
            let _ = self
                .docker
                .remove_volume(&v, None::<bollard::query_parameters::RemoveVolumeOptions>)
                .await;
        }
        Ok(())
    }

    /// Removes a container but not its anonymous volumes (they are carried over to the
    /// container that replaces it); a missing one is fine.
    async fn remove_container_keeping_volumes(&self, name: &str) -> Result<(), Error> {
        let options = RemoveContainerOptionsBuilder::new().force(true).build();
        match self.docker.remove_container(name, Some(options)).await {
            Ok(())
            | Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            }) => Ok(()),
            Err(e) => Err(engine_err(format!("remove the container {name}"))(e)),
        }
    }

    /// Whether a process of the container (other than its init) has libfaketime loaded: a
    /// static binary, or one built on another C library, ignores LD_PRELOAD. None when the
    /// host's /proc cannot tell (itproxy without the right to read the maps).
    pub async fn loads_faketime(&self, name: &str) -> Result<Option<bool>, Error> {
        let options = bollard::query_parameters::TopOptionsBuilder::new()
            .ps_args("-o pid,args")
            .build();
        let top = self
            .docker
            .top_processes(name, Some(options))
            .await
            .map_err(engine_err(format!("list the processes of {name}")))?;
        let titles = top.titles.unwrap_or_default();
        let Some(pid_column) = titles.iter().position(|t| t == "PID") else {
            return Ok(None);
        };
        let mut readable = false;
        for process in top.processes.unwrap_or_default() {
            let Some(pid) = process.get(pid_column) else {
                continue;
            };
            // The init itproxy gives every container is static, and does not count.
            if process.iter().any(|c| c.contains("docker-init")) {
                continue;
            }
            match std::fs::read_to_string(format!("/proc/{pid}/maps")) {
                Ok(maps) if maps.contains("libfaketime") => return Ok(Some(true)),
                Ok(_) => readable = true,
                Err(_) => {}
            }
        }
        Ok(readable.then_some(false))
    }

    /// One container of an environment by name or id, if it exists.
    pub async fn container(&self, name: &str) -> Result<Option<Container>, Error> {
        let answer = self.docker.inspect_container(name, None).await;
        Ok(found(answer, || format!("inspect the container {name}"))?
            .map(|c| Container::from_inspect(c, name)))
    }

    /// Every container of the environment (declared apps'), running or not, by name: from one
    /// listing (no start times).
    pub async fn env_containers(&self, env: &EnvName) -> Result<Vec<Container>, Error> {
        let label = format!("{ENV_LABEL}={env}");
        let list = self
            .listed(&label, true, "list the environment's containers")
            .await?;
        let network = env.network_name();
        let mut out: Vec<Container> = list
            .into_iter()
            .map(|c| {
                let labels = c.labels.unwrap_or_default();
                let state = c.state.map_or_else(|| "unknown".into(), |s| s.to_string());
                let ip = (state == "running")
                    .then(|| c.network_settings.and_then(|n| n.networks))
                    .flatten()
                    .and_then(|nets| nets.get(&network).and_then(|e| e.ip_address.clone()))
                    .and_then(|ip| ip.parse().ok());
                Container {
                    id: c.id.unwrap_or_default(),
                    name: c
                        .names
                        .and_then(|n| n.into_iter().next())
                        .map(|n| n.trim_start_matches('/').to_string())
                        .unwrap_or_default(),
                    app: labels.get(APP_LABEL).cloned().unwrap_or_default(),
                    endpoint: labels.get(ENDPOINT_LABEL).cloned().unwrap_or_default(),
                    state,
                    ip,
                    started_at: None,
                    exit: None,
                    reused: false,
                }
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// The containers with `label` (`key` or `key=value`), running only unless `all`.
    pub(crate) async fn listed(
        &self,
        label: &str,
        all: bool,
        action: &str,
    ) -> Result<Vec<bollard::models::ContainerSummary>, Error> {
        let filters = HashMap::from([("label", vec![label])]);
        let options = ListContainersOptionsBuilder::new()
            .all(all)
            .filters(&filters)
            .build();
        self.docker
            .list_containers(Some(options))
            .await
            .map_err(engine_err(action))
    }

    /// Removes every container of the environment; returns their names.
    pub async fn remove_env_containers(&self, env: &EnvName) -> Result<Vec<String>, Error> {
        let mut removed = Vec::new();
        for c in self.env_containers(env).await? {
            self.remove_container(&c.id).await?;
            removed.push(c.name);
        }
        Ok(removed)
    }
}

/// How a container exited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExitStatus {
    /// Its exit code, when the engine says.
    pub code: Option<i64>,
    /// Whether the kernel killed it for going over its memory limit.
    pub oom_killed: bool,
}

impl std::fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.code {
            Some(c) => write!(f, "exit code {c}")?,
            None => write!(f, "exit code unknown")?,
        }
        if self.oom_killed {
            write!(f, ", killed for using more than its memory limit (OOM)")?;
        }
        Ok(())
    }
}

/// What happened to a container of the environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ContainerEvent {
    /// It stopped (its exit code, when the engine says).
    Died(Option<i64>),
    /// The kernel killed a process of it for going over its memory limit (a `Died` follows
    /// when that was its main process).
    OutOfMemory,
    /// Its Docker health check failed as often as it allows.
    Unhealthy,
    /// Its Docker health check passes again.
    Healthy,
    /// It started (by itproxy, or by hand).
    Started,
}

/// An event of a container of the environment's apps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppEvent {
    /// The container's id.
    pub id: String,
    /// Its name.
    pub name: String,
    /// Its app.
    pub app: String,
    /// What happened.
    pub event: ContainerEvent,
}

impl Engine {
    /// The environment's apps' containers as they stop, start, run out of memory or change
    /// health (from `since`, Unix seconds). The stream ends if the engine goes away.
    pub fn watch_app_events(
        &self,
        env: &EnvName,
        since: u64,
    ) -> impl Stream<Item = Result<AppEvent, Error>> + use<> {
        let label = format!("{ENV_LABEL}={env}");
        let filters = HashMap::from([
            ("type", vec!["container"]),
            ("label", vec![label.as_str()]),
            ("event", vec!["die", "oom", "start", "health_status"]),
        ]);
        let options = EventsOptionsBuilder::new()
            .since(&since.to_string())
            .filters(&filters)
            .build();
        self.docker
            .events(Some(options))
            .filter_map(|event| async move {
                let event = match event {
                    Ok(e) => e,
                    Err(e) => return Some(Err(engine_err("watch container events")(e))),
                };
                let action = event.action.unwrap_or_default();
                let actor = event.actor?;
                let attributes = actor.attributes.unwrap_or_default();
                let what = match action.as_str() {
                    "die" => ContainerEvent::Died(
                        attributes.get("exitCode").and_then(|c| c.parse().ok()),
                    ),
                    "oom" => ContainerEvent::OutOfMemory,
                    "start" => ContainerEvent::Started,
                    "health_status: unhealthy" => ContainerEvent::Unhealthy,
                    "health_status: healthy" => ContainerEvent::Healthy,
                    _ => return None,
                };
                Some(Ok(AppEvent {
                    id: actor.id.unwrap_or_default(),
                    name: attributes.get("name").cloned().unwrap_or_default(),
                    app: attributes.get(APP_LABEL).cloned()?,
                    event: what,
                }))
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn container_names() {
        let env: EnvName = "ci".parse().unwrap();
        assert_eq!(container_name(&env, "api", "api"), "itproxy-ci-api");
        assert_eq!(
            container_name(&env, "sentry", "www"),
            "itproxy-ci-sentry-www"
        );
    }

    #[test]
    fn digest_is_stable() {
        // A fixed value: changing the digest would recreate every user's containers.
        assert_eq!(digest(b"itproxy"), "51592608505892e0");
        assert_ne!(digest(b"a"), digest(b"b"));
    }
}

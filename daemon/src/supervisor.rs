//! The environment's declared apps inside the daemon: [`AppSupervisor`] runs the steps, waits
//! for dependencies and readiness, watches for exits, and publishes each app's endpoints as
//! [`Change::AppUp`]/[`Change::AppDown`] through the state handle: routes for HTTP endpoints,
//! DNS records for TCP ones.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use itproxy_orchestrator::{AppName, AppSpec, Container, EndpointKind, Engine, Environment, Plan};

use crate::api::{self, AppState, EnvPhase};
use crate::config::Domains;
use crate::state::{Change, Endpoint, StateHandle};

mod clock;
mod logs;
mod reconcile;
mod restart;
mod snapshots;
mod watch;

use restart::RestartMode;

pub use snapshots::list_snapshots;

/// Why an app operation was refused or failed; the control API maps each to a code.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// No app of that name.
    #[error("there is no app {name:?} in this environment (apps: {known})")]
    NoApp {
        /// The name asked for.
        name: String,
        /// The apps there are, joined, or "none".
        known: String,
    },
    /// The app could not be started or did not become ready.
    #[error("app {app}: {message}")]
    NotReady {
        /// The app.
        app: AppName,
        /// Why.
        message: String,
    },
    /// The Docker engine refused an operation.
    #[error("{0}")]
    Engine(String),
    /// A `timeout` that is not a duration.
    #[error("timeout {given:?}: {reason}; use e.g. 30s")]
    InvalidTimeout {
        /// The value given.
        given: String,
        /// Why it is not a duration.
        reason: String,
    },
    /// A snapshot that cannot be saved or restored (the message says why).
    #[error("{0}")]
    Snapshot(String),
    /// No snapshot of that name.
    #[error("there is no snapshot {0:?}; `itproxy snapshot list` shows those there are")]
    NoSnapshot(String),
    /// An app's clock cannot be read or moved (the message says why).
    #[error("{0}")]
    Clock(String),
    /// A reload while the environment's steps still run.
    #[error("the environment is still starting; reload once `itproxy up` has finished")]
    EnvironmentStarting,
    /// An action other than start, stop and restart.
    #[error("unknown app action {0:?}; use start, stop, restart or reset")]
    UnknownAction(String),
    /// The config file, read again for a start by hand, is not valid (nothing was stopped).
    #[error("{0}")]
    Config(String),
    /// A start by hand of an app whose dependency is not ready.
    #[error(
        "app {app} depends on {dependency}, which is not ready; start it first with \
         `itproxy app start {dependency} --wait`"
    )]
    DependencyNotReady {
        /// The app.
        app: String,
        /// The dependency.
        dependency: AppName,
    },
}

/// What an app action answers: the app, and whether it finished (a start without `wait` is
/// accepted and goes on in the background).
pub struct ActionDone {
    /// The app after the action (or as it starts).
    pub view: api::AppView,
    /// False when the start goes on in the background.
    pub finished: bool,
}

/// "app NAME ..." for a client of a name the app does not serve now.
fn describe(app: &AppName, status: Option<&AppStatus>) -> String {
    match status.map(|s| (s.state, s.error.as_deref())) {
        None | Some((AppState::Pending, _)) => {
            "has not started yet (it waits for its step or its dependencies)".into()
        }
        Some((AppState::Starting, _)) => {
            "is starting; it is served once its readiness check passes".into()
        }
        Some((AppState::Ready | AppState::Restarting, _)) => "is ready".into(),
        Some((AppState::Failed, error)) => {
            let why = error
                .and_then(|e| e.lines().next())
                .unwrap_or("see `itproxy apps`");
            format!("failed ({why}); `itproxy app restart {app}` tries again")
        }
        Some((AppState::Stopped, _)) => {
            format!("is stopped; `itproxy app start {app}` starts it")
        }
    }
}

/// Grace period for an app's containers to stop before they are killed.
const STOP_GRACE_SECONDS: i32 = 10;

/// How long replaced containers keep running after the routes moved to their replacements:
/// requests already sent to them finish before they are told to stop.
const DRAIN: Duration = Duration::from_secs(1);

#[derive(Clone)]
struct AppStatus {
    state: AppState,
    error: Option<String>,
    ready_in: Option<Duration>,
    /// The supervisor's change count when this was set: a restart the policy scheduled goes
    /// ahead only if nothing else happened to the app since.
    epoch: u64,
}

struct Phase {
    phase: EnvPhase,
    error: Option<String>,
    ready_after: Option<Duration>,
}

/// The apps of the environment, what is known of them, and the state handle their endpoints
/// are published through.
pub struct AppSupervisor {
    state: Arc<StateHandle>,
    domains: Domains,
    /// When the daemon started: the environment's readiness is timed from it.
    started: Instant,
    engine: Engine,
    environment: Environment,
    /// The declared apps: those of start-up, or of the last `reload`.
    plan: std::sync::RwLock<Plan>,
    /// The config the daemon runs: read again when an app starts by hand, so an edited
    /// declaration takes effect on `app restart` (none: no file to read).
    config: Option<crate::config::Config>,
    /// Apps whose declaration changed since start-up, as last read.
    edited: std::sync::Mutex<HashMap<AppName, AppSpec>>,
    status: std::sync::Mutex<BTreeMap<AppName, AppStatus>>,
    /// Bumped on every state change, so dependents waiting for an app wake up.
    changed: tokio::sync::watch::Sender<u64>,
    /// One operation at a time per app (start, stop, restart).
    locks: std::sync::Mutex<HashMap<AppName, Arc<tokio::sync::Mutex<()>>>>,
    phase: std::sync::Mutex<Phase>,
    /// What each app's restart policy has done.
    crashes: std::sync::Mutex<HashMap<AppName, watch::Crashes>>,
    /// Where snapshots are kept (a restore cut short is finished from there).
    snapshots: std::path::PathBuf,
}

impl AppSupervisor {
    /// A supervisor for `plan`'s apps; nothing starts until [`AppSupervisor::bring_up`].
    pub fn new(
        state: Arc<StateHandle>,
        domains: Domains,
        engine: Engine,
        environment: Environment,
        plan: Plan,
        config: Option<crate::config::Config>,
        snapshots: std::path::PathBuf,
    ) -> Self {
        let status = plan
            .apps()
            .map(|a| {
                (
                    a.name.clone(),
                    AppStatus {
                        state: AppState::Pending,
                        error: None,
                        ready_in: None,
                        epoch: 0,
                    },
                )
            })
            .collect();
        let locks = std::sync::Mutex::new(HashMap::new());
        let phase = if plan.is_empty() {
            EnvPhase::Idle
        } else {
            EnvPhase::Starting
        };
        AppSupervisor {
            state,
            domains,
            started: Instant::now(),
            engine,
            environment,
            plan: std::sync::RwLock::new(plan),
            config,
            edited: std::sync::Mutex::new(HashMap::new()),
            status: std::sync::Mutex::new(status),
            changed: tokio::sync::watch::channel(0).0,
            locks,
            phase: std::sync::Mutex::new(Phase {
                phase,
                error: None,
                ready_after: None,
            }),
            crashes: Default::default(),
            snapshots,
        }
    }

    /// The declared apps now.
    fn plan(&self) -> Plan {
        self.plan.read().expect("plan lock").clone()
    }

    /// The lock an operation on `app` holds (start, stop, restart).
    fn lock_of(&self, app: &AppName) -> Arc<tokio::sync::Mutex<()>> {
        self.locks
            .lock()
            .expect("locks lock")
            .entry(app.clone())
            .or_default()
            .clone()
    }

    fn set(
        &self,
        app: &AppName,
        state: AppState,
        error: Option<String>,
        ready_in: Option<Duration>,
    ) -> u64 {
        // Under the status lock, so epochs follow the order of the states they stamp.
        let mut status = self.status.lock().expect("status lock");
        let mut epoch = 0;
        self.changed.send_modify(|n| {
            *n += 1;
            epoch = *n;
        });
        status.insert(
            app.clone(),
            AppStatus {
                state,
                error,
                ready_in,
                epoch,
            },
        );
        epoch
    }

    /// The epoch of the app's state now (see [`AppStatus::epoch`]).
    fn epoch(&self, app: &AppName) -> u64 {
        self.status
            .lock()
            .expect("status lock")
            .get(app)
            .map_or(0, |s| s.epoch)
    }

    /// The environment's containers as the engine reports them now (none if it cannot say).
    async fn listed(&self) -> Vec<Container> {
        self.engine
            .env_containers(&self.environment.env)
            .await
            .unwrap_or_else(|e| {
                tracing::warn!("cannot list the environment's containers: {e}");
                Vec::new()
            })
    }

    /// The app's endpoints with their containers' names.
    fn containers_of<'a>(
        &self,
        app: &'a AppSpec,
    ) -> impl Iterator<Item = (&'a itproxy_orchestrator::Endpoint, String)> + 'a {
        let env = self.environment.env.clone();
        app.endpoints.iter().map(move |e| {
            let name =
                itproxy_orchestrator::container_name(&env, app.name.as_str(), e.name.as_str());
            (e, name)
        })
    }

    fn state(&self, app: &AppName) -> AppState {
        self.status
            .lock()
            .expect("status lock")
            .get(app)
            .map_or(AppState::Pending, |s| s.state)
    }

    /// Runs the steps in order (only `selected` ones if any are given; the apps of the others
    /// are adopted if they already run). A step's apps start together, each once its
    /// dependencies are ready; a failed app stops the steps after its own.
    pub async fn bring_up(self: Arc<Self>, selected: Vec<String>) {
        // What an earlier daemon left half done goes first: its containers are compared with
        // the plan, so every app below starts exactly once.
        self.reconcile().await;
        let mut failed: Vec<String> = Vec::new();
        let plan = self.plan();
        for step in plan.steps() {
            if !selected.is_empty() && !selected.contains(&step.name) {
                for app in &step.apps {
                    self.adopt(app).await;
                }
                continue;
            }
            let began = Instant::now();
            tracing::info!(step = %step.name, apps = step.apps.len(), "starting step");
            let results = futures_util::future::join_all(
                step.apps.iter().map(|app| self.start_app(app, None)),
            )
            .await;
            for r in results {
                if let Err(e) = r {
                    failed.push(e.to_string());
                }
            }
            if !failed.is_empty() {
                tracing::error!(step = %step.name, "step failed; later steps are not started");
                break;
            }
            tracing::info!(step = %step.name, took_ms = began.elapsed().as_millis() as u64, "step ready");
        }
        if failed.is_empty() {
            if let Err(e) = self.finish_interrupted_restore().await {
                failed.push(e.to_string());
            }
        }
        let mut phase = self.phase.lock().expect("phase lock");
        if failed.is_empty() {
            let took = self.started.elapsed();
            phase.phase = EnvPhase::Ready;
            phase.ready_after = Some(took);
            tracing::info!(took_ms = took.as_millis() as u64, "environment ready");
        } else {
            phase.phase = EnvPhase::Failed;
            phase.error = Some(failed.join("\n"));
        }
        self.changed.send_modify(|n| *n += 1);
    }

    /// An app of a step that was not selected: routed if its containers already run.
    async fn adopt(&self, app: &AppSpec) {
        let mut containers = Vec::new();
        for (_, name) in self.containers_of(app) {
            match self.engine.container(&name).await {
                Ok(Some(c)) if c.running() => containers.push(c),
                _ => {
                    self.set(&app.name, AppState::Stopped, None, None);
                    return;
                }
            }
        }
        self.publish_app(app, &containers).await;
        self.set(&app.name, AppState::Ready, None, None);
        tracing::info!(app = %app.name, "step not selected; adopted the running app");
    }

    /// Starts `app`'s containers once its dependencies are ready, waits for its readiness
    /// check, then routes its endpoints.
    async fn start_app(&self, app: &AppSpec, timeout: Option<Duration>) -> Result<(), AppError> {
        let lock = self.lock_of(&app.name);
        let _one_at_a_time = lock.lock().await;
        self.start_app_locked(app, timeout).await
    }

    /// [`AppSupervisor::start_app`] with the app's lock already held.
    async fn start_app_locked(
        &self,
        app: &AppSpec,
        timeout: Option<Duration>,
    ) -> Result<(), AppError> {
        let fail = |message: String| {
            self.set(&app.name, AppState::Failed, Some(message.clone()), None);
            tracing::error!(app = %app.name, "{message}");
            AppError::NotReady {
                app: app.name.clone(),
                message,
            }
        };
        self.set(&app.name, AppState::Pending, None, None);
        if let Err(m) = self.wait_for_dependencies(app).await {
            return Err(fail(m));
        }
        self.set(&app.name, AppState::Starting, None, None);
        let began = Instant::now();
        if let Err(e) = self.engine.build_app_image(app).await {
            return Err(fail(e.to_string()));
        }
        if let Err(e) = self.set_declared_clock(app) {
            return Err(fail(e.to_string()));
        }
        // The endpoints' containers start together.
        let started = futures_util::future::join_all(
            (0..app.endpoints.len())
                .map(|i| self.engine.ensure_container(&self.environment, app, i)),
        )
        .await;
        let mut containers = Vec::new();
        for c in started {
            match c {
                Ok(c) => {
                    tracing::info!(app = %app.name, container = %c.name, address = ?c.ip, "{}", if c.reused { "container reused" } else { "container started" });
                    containers.push(c)
                }
                Err(e) => return Err(fail(e.to_string())),
            }
        }
        let mut check = app.clone();
        if let Some(t) = timeout {
            check.ready.timeout = t;
        }
        let checked = &containers[app.ready.endpoint];
        if let Err(e) = self.engine.wait_ready(&check, checked).await {
            let message = match e {
                itproxy_orchestrator::Error::NotReady { .. } => {
                    e.to_string()
                        .replacen(&format!("app {} is not ready: ", app.name), "", 1)
                }
                other => other.to_string(),
            };
            return Err(fail(message));
        }
        let names: Vec<String> = containers.iter().map(|c| c.name.clone()).collect();
        if let Err(m) = self.check_clock_loaded(app, &names).await {
            return Err(fail(m));
        }
        let took = began.elapsed();
        self.publish_app(app, &containers).await;
        self.set(&app.name, AppState::Ready, None, Some(took));
        tracing::info!(app = %app.name, took_ms = took.as_millis() as u64, check = %app.ready.check, "app ready");
        Ok(())
    }

    async fn wait_for_dependencies(&self, app: &AppSpec) -> Result<(), String> {
        let mut changes = self.changed.subscribe();
        loop {
            let mut waiting = false;
            for dep in &app.depends_on {
                match self.state(dep) {
                    AppState::Ready | AppState::Restarting => {}
                    AppState::Failed => return Err(format!("its dependency {dep} failed")),
                    AppState::Stopped => {
                        return Err(format!(
                        "its dependency {dep} is stopped; start it with `itproxy app start {dep}`"
                    ))
                    }
                    AppState::Pending | AppState::Starting => waiting = true,
                }
            }
            if !waiting {
                return Ok(());
            }
            if changes.changed().await.is_err() {
                return Err("the daemon is stopping".into());
            }
        }
    }

    /// Routes the app's HTTP endpoints to its containers and points its TCP endpoints' names
    /// at them.
    async fn publish_app(&self, app: &AppSpec, containers: &[Container]) {
        let mut endpoints = Vec::new();
        for (e, c) in app.endpoints.iter().zip(containers) {
            let (Some((port, kind)), Some(ip)) = (e.port, c.ip) else {
                continue;
            };
            let host = match self.domains.qualify(e.name.as_str()) {
                Ok(h) => h,
                Err(m) => {
                    tracing::warn!(app = %app.name, "endpoint not routed: {m}");
                    continue;
                }
            };
            let endpoint = match kind {
                EndpointKind::Http => Endpoint::Http(std::net::SocketAddr::new(ip, port)),
                EndpointKind::Tcp => Endpoint::Tcp(ip),
            };
            endpoints.push((host, endpoint));
        }
        let change = Change::AppUp {
            app: app.name.clone(),
            endpoints,
        };
        if let Err(e) = self.state.apply(change).await {
            tracing::error!(app = %app.name, "cannot publish the app's endpoints: {e}");
        }
    }

    async fn unpublish_app(&self, app: &AppSpec) {
        let change = Change::AppDown {
            app: app.name.clone(),
        };
        if let Err(e) = self.state.apply(change).await {
            tracing::error!(app = %app.name, "cannot remove the app's endpoints: {e}");
        }
    }

    /// Stops an app: its routes and records go first, then its containers.
    async fn stop_app(&self, app: &AppSpec) -> Result<(), AppError> {
        let lock = self.lock_of(&app.name);
        let _one_at_a_time = lock.lock().await;
        self.stop_app_locked(app).await
    }

    /// [`AppSupervisor::stop_app`] with the app's lock already held.
    async fn stop_app_locked(&self, app: &AppSpec) -> Result<(), AppError> {
        self.unpublish_app(app).await;
        for (_, name) in self.containers_of(app) {
            self.engine
                .stop(&name, STOP_GRACE_SECONDS)
                .await
                .map_err(|e| AppError::Engine(e.to_string()))?;
        }
        self.set(&app.name, AppState::Stopped, None, None);
        tracing::info!(app = %app.name, "app stopped");
        Ok(())
    }

    /// `POST /v1/apps/{name}/{action}`.
    pub async fn app_action(
        self: &Arc<Self>,
        name: &str,
        action: &str,
        body: api::AppAction,
    ) -> Result<ActionDone, AppError> {
        let app = if action == "stop" {
            self.current(name).ok_or_else(|| self.no_app(name))?
        } else {
            // Read before anything stops: a config with a mistake changes nothing.
            self.declared_now(name)?
        };
        let timeout = body.timeout().map_err(|e| AppError::InvalidTimeout {
            given: body.timeout.clone().unwrap_or_default(),
            reason: e.to_string(),
        })?;
        let done = |view| ActionDone {
            view,
            finished: true,
        };
        match action {
            "stop" => {
                self.stop_app(&app).await?;
                return Ok(done(self.app_view(&app).await));
            }
            "start" | "restart" | "reset" => {}
            _ => return Err(AppError::UnknownAction(action.to_string())),
        }
        // Dependencies must already be ready: a start by hand does not cascade.
        for dep in &app.depends_on {
            if !matches!(self.state(dep), AppState::Ready | AppState::Restarting) {
                return Err(AppError::DependencyNotReady {
                    app: name.to_string(),
                    dependency: dep.clone(),
                });
            }
        }
        // A ready app restarts blue/green when that keeps its data (see `restart_mode`): it
        // serves until its replacement is.
        if action == "restart"
            && matches!(
                self.state(&app.name),
                AppState::Ready | AppState::Restarting
            )
            && self.restart_mode(&app).await == RestartMode::BlueGreen
        {
            if body.wait {
                self.replace_app(&app, timeout).await?;
                return Ok(done(self.app_view(&app).await));
            }
            let supervisor = self.clone();
            let spec = app.clone();
            tokio::spawn(async move {
                let _ = supervisor.replace_app(&spec, timeout).await;
            });
            return Ok(ActionDone {
                view: self.app_view(&app).await,
                finished: false,
            });
        }
        if action == "restart" || action == "reset" {
            self.stop_app(&app).await?;
        }
        if action == "reset" {
            // From the image again, with empty volumes: the fixture tests start from.
            let removed = self
                .engine
                .remove_app(&self.environment, &app)
                .await
                .map_err(|e| AppError::Engine(e.to_string()))?;
            tracing::info!(app = %app.name, removed = ?removed, "app reset");
        }
        if body.wait {
            self.start_app(&app, timeout).await?;
            Ok(done(self.app_view(&app).await))
        } else {
            self.set(&app.name, AppState::Starting, None, None);
            let supervisor = self.clone();
            let spec = app.clone();
            tokio::spawn(async move {
                let _ = supervisor.start_app(&spec, timeout).await;
            });
            Ok(ActionDone {
                view: self.app_view(&app).await,
                finished: false,
            })
        }
    }

    /// `itproxy reload`'s part: `plan` (the apps as the file declares them now) replaces the
    /// declared apps. Apps no longer declared stop and their containers go (volumes stay);
    /// new ones start; changed ones restart in their `restart` order if they ran, start if
    /// they had failed, and stay as they are if stopped by hand. One app at a time, in plan
    /// order, so dependencies come first. Refused while the environment is still starting.
    pub async fn reload(
        self: &Arc<Self>,
        plan: Plan,
        done: &mut api::Reloaded,
    ) -> Result<(), AppError> {
        if self.phase.lock().expect("phase lock").phase == EnvPhase::Starting {
            return Err(AppError::EnvironmentStarting);
        }
        let old = self.plan();
        let spec_text = |a: &AppSpec| format!("{a:?}");
        let mut removed = Vec::new();
        for app in old.apps() {
            if plan.app(app.name.as_str()).is_none() {
                removed.push(
                    self.current(app.name.as_str())
                        .unwrap_or_else(|| app.clone()),
                );
            }
        }
        let mut added = Vec::new();
        let mut changed = Vec::new();
        for app in plan.apps() {
            match self.current(app.name.as_str()) {
                None => added.push(app.name.clone()),
                Some(now) if spec_text(&now) != spec_text(app) => changed.push(app.name.clone()),
                Some(_) => {}
            }
        }
        for app in &removed {
            if let Err(e) = self.stop_app(app).await {
                done.errors.push(format!("app {}: {e}", app.name));
            }
            for (_, name) in self.containers_of(app) {
                if let Err(e) = self.engine.remove_container(&name).await {
                    done.errors.push(format!("app {}: {e}", app.name));
                }
            }
            self.forget(&app.name).await;
            done.apps_removed.push(app.name.to_string());
            tracing::info!(app = %app.name, "no longer declared: stopped and removed");
        }
        *self.plan.write().expect("plan lock") = plan.clone();
        self.edited.lock().expect("edited lock").clear();
        for app in plan
            .apps()
            .filter(|a| added.contains(&a.name) || changed.contains(&a.name))
        {
            let hosts = app
                .endpoints
                .iter()
                .filter(|e| matches!(e.port, Some((_, EndpointKind::Http))))
                .filter_map(|e| self.domains.qualify(e.name.as_str()).ok())
                .collect();
            let change = Change::AppNames {
                app: app.name.clone(),
                hosts,
            };
            if let Err(e) = self.state.apply(change).await {
                tracing::error!(app = %app.name, "cannot declare the app's names: {e}");
            }
            if added.contains(&app.name) {
                self.set(&app.name, AppState::Pending, None, None);
            }
        }
        // After a failed `up`, the apps its failure left unstarted start too: fixing the file
        // and reloading finishes the environment.
        let finishing = self.phase.lock().expect("phase lock").phase == EnvPhase::Failed;
        for app in plan.apps() {
            let result = if added.contains(&app.name) {
                done.apps_added.push(app.name.to_string());
                self.start_app(app, None).await
            } else if changed.contains(&app.name) {
                done.apps_changed.push(app.name.to_string());
                let ready = matches!(
                    self.state(&app.name),
                    AppState::Ready | AppState::Restarting
                );
                let blue_green = ready && self.restart_mode(app).await == RestartMode::BlueGreen;
                match self.state(&app.name) {
                    AppState::Ready | AppState::Restarting if blue_green => {
                        self.replace_app(app, None).await
                    }
                    AppState::Ready | AppState::Restarting => match self.stop_app(app).await {
                        Ok(()) => self.start_app(app, None).await,
                        Err(e) => Err(e),
                    },
                    AppState::Failed => self.start_app(app, None).await,
                    AppState::Pending if finishing => self.start_app(app, None).await,
                    // Stopped by hand, or waiting for its dependencies: the new declaration is
                    // used at its next start.
                    AppState::Stopped | AppState::Pending | AppState::Starting => Ok(()),
                }
            } else if finishing && self.state(&app.name) == AppState::Pending {
                done.apps_started.push(app.name.to_string());
                self.start_app(app, None).await
            } else {
                Ok(())
            };
            if let Err(e) = result {
                done.errors.push(e.to_string());
            }
        }
        if finishing && done.errors.is_empty() {
            let mut phase = self.phase.lock().expect("phase lock");
            phase.phase = EnvPhase::Ready;
            phase.error = None;
            phase.ready_after = Some(self.started.elapsed());
            drop(phase);
            self.changed.send_modify(|n| *n += 1);
            tracing::info!("environment ready after the reload");
        }
        Ok(())
    }

    /// An app no longer declared: its names, routes and state go.
    async fn forget(&self, app: &AppName) {
        let change = Change::AppNames {
            app: app.clone(),
            hosts: Vec::new(),
        };
        if let Err(e) = self.state.apply(change).await {
            tracing::error!(%app, "cannot remove the app's names: {e}");
        }
        self.status.lock().expect("status lock").remove(app);
        self.changed.send_modify(|n| *n += 1);
    }

    /// Tells the state what each app is doing whenever that changes, so requests for the names
    /// of an app that serves none get a 503 saying why (starting, stopped, failed).
    pub async fn tell_states(self: Arc<Self>) {
        let mut changed = self.changed.subscribe();
        let mut told: BTreeMap<AppName, String> = BTreeMap::new();
        loop {
            let now: Vec<(AppName, String)> = {
                let status = self.status.lock().expect("status lock");
                self.plan()
                    .apps()
                    .map(|a| (a.name.clone(), describe(&a.name, status.get(&a.name))))
                    .collect()
            };
            // An app no longer declared is forgotten, so one declared again is told anew.
            told.retain(|app, _| now.iter().any(|(a, _)| a == app));
            for (app, text) in now {
                if told.get(&app) == Some(&text) {
                    continue;
                }
                let change = Change::AppStatus {
                    app: app.clone(),
                    status: text.clone(),
                };
                if let Err(e) = self.state.apply(change).await {
                    tracing::warn!(%app, "cannot record the app's state: {e}");
                }
                told.insert(app, text);
            }
            if changed.changed().await.is_err() {
                return;
            }
        }
    }

    /// `GET /v1/apps`: states, with the containers as the engine reports them now.
    pub async fn apps_view(&self) -> api::AppsView {
        // One listing for all apps, not an inspection per container.
        let listed = self.listed().await;
        let views: Vec<api::AppView> = self
            .plan()
            .apps()
            .filter_map(|app| self.current(app.name.as_str()))
            .map(|app| self.app_view_from(&app, &listed))
            .collect();
        let phase = self.phase.lock().expect("phase lock");
        api::AppsView {
            env: Some(self.environment.env.to_string()),
            phase: phase.phase,
            error: phase.error.clone(),
            ready_after_ms: phase.ready_after.map(|d| d.as_millis() as u64),
            apps: views,
        }
    }

    /// `GET /v1/apps/{name}`.
    pub async fn app(&self, name: &str) -> Result<api::AppView, AppError> {
        let app = self.current(name).ok_or_else(|| self.no_app(name))?;
        Ok(self.app_view(&app).await)
    }

    async fn app_view(&self, app: &AppSpec) -> api::AppView {
        let listed = self.listed().await;
        self.app_view_from(app, &listed)
    }

    /// The app as `listed` (the environment's containers) shows it.
    fn app_view_from(&self, app: &AppSpec, listed: &[Container]) -> api::AppView {
        let status = self
            .status
            .lock()
            .expect("status lock")
            .get(&app.name)
            .cloned();
        let mut containers = Vec::new();
        for (e, name) in self.containers_of(app) {
            let c = listed.iter().find(|c| c.name == name);
            let host = self
                .domains
                .qualify(e.name.as_str())
                .map(|h| h.to_string())
                .unwrap_or_default();
            containers.push(api::ContainerView {
                endpoint: e.name.to_string(),
                name,
                state: c.map_or("missing".into(), |c| c.state.clone()),
                address: c.and_then(|c| c.ip).map(|ip| ip.to_string()),
                serves: e.port.map(|(port, kind)| match kind {
                    EndpointKind::Http => format!("http://{host} -> :{port}"),
                    EndpointKind::Tcp => format!("tcp://{host}:{port}"),
                }),
            });
        }
        let status = status.unwrap_or(AppStatus {
            state: AppState::Pending,
            error: None,
            ready_in: None,
            epoch: 0,
        });
        let crashes = self
            .crashes
            .lock()
            .expect("crashes lock")
            .get(&app.name)
            .cloned()
            .unwrap_or_default();
        api::AppView {
            name: app.name.to_string(),
            step: app.step.clone(),
            image: app.image.clone(),
            state: status.state,
            error: status.error,
            ready_check: app.ready.check.to_string(),
            ready_in_ms: status.ready_in.map(|d| d.as_millis() as u64),
            depends_on: app.depends_on.iter().map(|d| d.to_string()).collect(),
            containers,
            restart_policy: app.restart_policy.to_string(),
            restarts: crashes.restarts,
            last_exit: crashes.last_exit,
        }
    }

    /// The app's declaration in force: as last read from the file, else as at start-up.
    fn current(&self, name: &str) -> Option<AppSpec> {
        let plan = self.plan.read().expect("plan lock");
        let app = plan.app(name)?;
        let edited = self.edited.lock().expect("edited lock");
        Some(edited.get(&app.name).unwrap_or(app).clone())
    }

    /// The app's declaration as the config file says now, for a start by hand. Only the app's
    /// own keys take effect (image, command, env, ready, volumes...); its step and
    /// dependencies stay those of start-up, and so do the domains, listeners and routes.
    fn declared_now(&self, name: &str) -> Result<AppSpec, AppError> {
        let known = self.current(name).ok_or_else(|| self.no_app(name))?;
        let Some(reread) = self.config.as_ref().and_then(|c| c.reread()) else {
            return Ok(known);
        };
        let config = reread.map_err(|e| {
            AppError::Config(format!(
                "the config file has a mistake, so app {name} was left as it is: {e}"
            ))
        })?;
        let source = config
            .source
            .as_ref()
            .map_or_else(String::new, |p| p.display().to_string());
        let fresh = config
            .env
            .as_ref()
            .and_then(|e| e.apps.app(name))
            .cloned()
            .ok_or_else(|| {
                AppError::Config(format!(
                    "app {name} is no longer declared in {source}; it keeps running as it was \
                     (`itproxy down` and `itproxy up` apply a changed list of apps)"
                ))
            })?;
        if fresh.depends_on != known.depends_on || fresh.step != known.step {
            tracing::warn!(
                app = name,
                "a changed step or depends_on takes effect at the next `up`"
            );
        }
        self.edited
            .lock()
            .expect("edited lock")
            .insert(known.name.clone(), fresh.clone());
        Ok(fresh)
    }

    fn no_app(&self, name: &str) -> AppError {
        let plan = self.plan();
        let names: Vec<&str> = plan.apps().map(|a| a.name.as_str()).collect();
        AppError::NoApp {
            name: name.to_string(),
            known: if names.is_empty() {
                "none".to_string()
            } else {
                names.join(", ")
            },
        }
    }
}

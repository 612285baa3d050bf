//! The engine's events about the apps' containers drive the route table: a container of a
//! ready app that dies, is killed or turns unhealthy takes the app's names out of the table at
//! once (503 with Retry-After, naming the app and what happened), and its restart policy
//! decides what comes next: started again after a wait that doubles with each crash in a row
//! (Kubernetes' CrashLoopBackOff), or left stopped.

use std::sync::Arc;
use std::time::{Duration, Instant};

use itproxy_orchestrator::{AppEvent, AppName, AppSpec, ContainerEvent, ExitStatus};

use super::AppSupervisor;
use crate::api::AppState;

/// The wait before the first restart after a crash; each crash in a row doubles it.
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
/// The longest wait between restarts (Kubernetes' cap).
const MAX_BACKOFF: Duration = Duration::from_secs(300);
/// An app that stayed ready this long has its crash streak forgotten.
const BACKOFF_RESET: Duration = Duration::from_secs(600);

/// What an app's restart policy has done, for `itproxy apps`.
#[derive(Debug, Clone, Default)]
pub(super) struct Crashes {
    /// Restarts made by the policy since the daemon started.
    pub(super) restarts: u32,
    /// How its container last ended on its own ("exit code 1", "OOM"...).
    pub(super) last_exit: Option<String>,
    /// Crashes in a row (the backoff's exponent).
    streak: u32,
    /// When the app last became ready after a restart of the policy.
    ready_since: Option<Instant>,
    /// The app is out of the table because its health check fails (not because it exited).
    unhealthy: bool,
}

/// The wait before restart number `streak` (1-based) of a crash loop.
fn backoff(streak: u32) -> Duration {
    let doublings = streak.saturating_sub(1).min(16);
    (FIRST_BACKOFF * 2u32.pow(doublings)).min(MAX_BACKOFF)
}

impl AppSupervisor {
    /// Follows the engine's events about the apps' containers for the daemon's life. After
    /// each (re)connection, ready apps whose containers stopped meanwhile are handled as if
    /// the events had been seen.
    pub async fn watch_containers(self: Arc<Self>) {
        use futures_util::StreamExt;
        loop {
            let since = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            let mut events =
                std::pin::pin!(self.engine.watch_app_events(&self.environment.env, since));
            self.check_ready_apps_run().await;
            while let Some(event) = events.next().await {
                match event {
                    Ok(e) => self.on_event(e).await,
                    Err(e) => {
                        tracing::warn!("watching the apps' containers: {e}");
                        break;
                    }
                }
            }
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
    }

    /// A ready app whose container is not running (it stopped while no events were watched:
    /// the engine restarted, or the stream broke) goes the way of a container that died.
    async fn check_ready_apps_run(self: &Arc<Self>) {
        let listed = self.listed().await;
        for app in self.plan().apps() {
            if self.state(&app.name) != AppState::Ready {
                continue;
            }
            let Some(spec) = self.current(app.name.as_str()) else {
                continue;
            };
            for (_, name) in self.containers_of(&spec) {
                if listed.iter().any(|c| c.name == name && c.running()) {
                    continue;
                }
                let id = listed
                    .iter()
                    .find(|c| c.name == name)
                    .map(|c| c.id.clone())
                    .unwrap_or_default();
                self.on_event(AppEvent {
                    id,
                    name,
                    app: app.name.to_string(),
                    event: ContainerEvent::Died(None),
                })
                .await;
                break;
            }
        }
    }

    async fn on_event(self: &Arc<Self>, event: AppEvent) {
        let Ok(app) = event.app.parse::<AppName>() else {
            return;
        };
        // Only the app's own containers: not a replacement that did not become ready (the app
        // kept serving from the containers it replaced).
        let Some(spec) = self.current(app.as_str()) else {
            return;
        };
        if !self
            .containers_of(&spec)
            .any(|(_, name)| name == event.name)
        {
            return;
        }
        // A start, stop or restart in progress owns the app's state.
        let lock = self.lock_of(&app);
        let Ok(_idle) = lock.try_lock() else {
            return;
        };
        match event.event {
            ContainerEvent::Died(code) => {
                if self.state(&app) != AppState::Ready {
                    return;
                }
                // Only this very container, stopped for good: not a late event from an
                // earlier stop (it runs again), nor from a container since recreated.
                let exit = match self.engine.container(&event.name).await {
                    Ok(Some(c)) if (event.id.is_empty() || c.id == event.id) && !c.running() => {
                        c.exit.unwrap_or(ExitStatus {
                            code,
                            oom_killed: false,
                        })
                    }
                    Ok(None) => ExitStatus {
                        code,
                        oom_killed: false,
                    },
                    _ => return,
                };
                self.crashed(&spec, &event.name, exit).await;
            }
            ContainerEvent::Unhealthy => {
                if self.state(&app) != AppState::Ready {
                    return;
                }
                self.unpublish_app(&spec).await;
                self.crashes_of(&app, |c| c.unhealthy = true);
                let message = format!(
                    "container {} is unhealthy (its Docker health check fails); its names are \
                     served again once it is healthy",
                    event.name
                );
                tracing::warn!(%app, "{message}");
                self.set(&app, AppState::Failed, Some(message), None);
            }
            ContainerEvent::Healthy => {
                let unhealthy = self.crashes_of(&app, |c| std::mem::take(&mut c.unhealthy));
                if !unhealthy || self.state(&app) != AppState::Failed {
                    return;
                }
                let mut containers = Vec::new();
                for (_, name) in self.containers_of(&spec) {
                    match self.engine.container(&name).await {
                        Ok(Some(c)) if c.running() => containers.push(c),
                        _ => return,
                    }
                }
                self.publish_app(&spec, &containers).await;
                self.set(&app, AppState::Ready, None, None);
                tracing::info!(%app, "healthy again; its names are served");
            }
            ContainerEvent::OutOfMemory => {
                tracing::warn!(%app, container = %event.name, "a process went over the container's memory limit and was killed");
            }
            ContainerEvent::Started => {}
        }
    }

    /// Changes what `f` says of the app's crash record; returns what `f` returns.
    fn crashes_of<T>(&self, app: &AppName, f: impl FnOnce(&mut Crashes) -> T) -> T {
        f(self
            .crashes
            .lock()
            .expect("crashes lock")
            .entry(app.clone())
            .or_default())
    }

    /// A container of the ready app `spec` ended on its own: the app's names leave the table
    /// now, and its restart policy says whether it starts again, and when.
    async fn crashed(self: &Arc<Self>, spec: &AppSpec, container: &str, exit: ExitStatus) {
        let app = &spec.name;
        self.unpublish_app(spec).await;
        let restarts = spec.restart_policy.restarts_after(exit.code) || exit.oom_killed;
        let streak = self.crashes_of(app, |c| {
            c.last_exit = Some(exit.to_string());
            if c.ready_since.is_some_and(|t| t.elapsed() >= BACKOFF_RESET) {
                c.streak = 0;
            }
            c.ready_since = None;
            c.streak += 1;
            c.streak
        });
        let why = format!("container {container} exited ({exit})");
        if !restarts {
            let message = format!(
                "{why}; restart_policy = \"{}\" leaves it stopped; `itproxy logs {app}` shows \
                 why, `itproxy app restart {app}` starts it again",
                spec.restart_policy
            );
            tracing::warn!(%app, "{message}");
            self.set(app, AppState::Failed, Some(message), None);
            return;
        }
        let wait = backoff(streak);
        let message = format!(
            "{why}; restarting in {} (crash {streak} in a row, restart_policy = \"{}\"); \
             `itproxy logs {app}` shows why",
            humantime::format_duration(wait),
            spec.restart_policy
        );
        tracing::warn!(%app, "{message}");
        let epoch = self.set(app, AppState::Failed, Some(message), None);
        let supervisor = self.clone();
        let spec = spec.clone();
        tokio::spawn(async move { supervisor.restart_after(spec, wait, epoch).await });
    }

    /// The policy's restart of `spec`, after `wait`, unless something else happened to the
    /// app meanwhile (a stop, a restart by hand: its state changed since `epoch`). A restart
    /// that fails is tried again with the next wait.
    async fn restart_after(self: Arc<Self>, spec: AppSpec, mut wait: Duration, mut epoch: u64) {
        let app = spec.name.clone();
        loop {
            tokio::time::sleep(wait).await;
            let lock = self.lock_of(&app);
            let _one_at_a_time = lock.lock().await;
            // Still the app it was (not forgotten by a reload), and nothing happened to it.
            let Some(spec) = self
                .current(app.as_str())
                .filter(|_| self.epoch(&app) == epoch)
            else {
                return;
            };
            self.crashes_of(&app, |c| c.restarts += 1);
            tracing::info!(%app, "restarting after a crash (restart_policy = \"{}\")", spec.restart_policy);
            match self.start_app_locked(&spec, None).await {
                Ok(()) => {
                    self.crashes_of(&app, |c| c.ready_since = Some(Instant::now()));
                    return;
                }
                Err(e) => {
                    let streak = self.crashes_of(&app, |c| {
                        c.streak += 1;
                        c.streak
                    });
                    wait = backoff(streak);
                    let message = format!(
                        "{e}; restarting in {} (crash {streak} in a row, restart_policy = \"{}\")",
                        humantime::format_duration(wait),
                        spec.restart_policy
                    );
                    tracing::warn!(%app, "{message}");
                    epoch = self.set(&app, AppState::Failed, Some(message), None);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_wait_doubles_up_to_a_cap() {
        let waits: Vec<u64> = (1..=12).map(|n| backoff(n).as_secs()).collect();
        assert_eq!(waits, [1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300, 300]);
        assert_eq!(backoff(u32::MAX), MAX_BACKOFF);
        assert_eq!(backoff(0), FIRST_BACKOFF);
    }
}

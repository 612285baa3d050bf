//! How `app restart` (and a reload of a changed app) replaces a running app's containers,
//! without discarding data nobody asked to discard:
//!
//! - in place (the same containers stopped and started, as `docker restart`) when the
//!   declaration and image are unchanged, unless the app declares `stateless = true`: what it
//!   keeps in its container or its anonymous volumes stays;
//! - blue/green (new containers beside the old ones, no request refused) for a `stateless`
//!   app, or a changed one with no anonymous volume and a start-first order;
//! - else stop-first: the old containers stop, new ones are created from the new declaration
//!   with the old ones' anonymous volumes carried over (as Compose does), and start.

use std::time::{Duration, Instant};

use itproxy_orchestrator::{AppSpec, RestartOrder};

use super::{AppError, AppSupervisor, DRAIN, STOP_GRACE_SECONDS};
use crate::api::AppState;

/// How an app's running containers are replaced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum RestartMode {
    /// New containers beside the old ones; the routes move once they are ready.
    BlueGreen,
    /// Stop, then start: the same containers when unchanged, new ones carrying the old ones'
    /// anonymous volumes when not.
    StopFirst,
}

impl AppSupervisor {
    /// The way `app`'s running containers are replaced (see the module documentation).
    pub(super) async fn restart_mode(&self, app: &AppSpec) -> RestartMode {
        if app.restart == RestartOrder::StopFirst {
            return RestartMode::StopFirst;
        }
        if app.stateless {
            return RestartMode::BlueGreen;
        }
        for i in 0..app.endpoints.len() {
            match self.engine.kept_state(&self.environment, app, i).await {
                // Unchanged: restarted in place. Anonymous volumes: carried over stop-first
                // (two servers must not share them).
                Ok(kept) if kept.unchanged || kept.anonymous_volumes > 0 => {
                    return RestartMode::StopFirst
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(app = %app.name, "cannot inspect the app's containers, restarting stop-first: {e}");
                    return RestartMode::StopFirst;
                }
            }
        }
        RestartMode::BlueGreen
    }

    /// A blue/green restart: new containers start beside the running ones, which keep
    /// serving until the new ones are ready; then the routes and records move to them in one
    /// change, the old ones drain and stop, and the new ones take their names. If the new ones
    /// fail, they are removed and the old ones go on serving.
    pub(super) async fn replace_app(
        &self,
        app: &AppSpec,
        timeout: Option<Duration>,
    ) -> Result<(), AppError> {
        let lock = self.lock_of(&app.name);
        let _one_at_a_time = lock.lock().await;
        let began = Instant::now();
        let names: Vec<String> = self.containers_of(app).map(|(_, n)| n).collect();
        let discard = || async {
            for name in &names {
                let next = itproxy_orchestrator::replacement_name(name);
                if let Err(e) = self.engine.remove_container(&next).await {
                    tracing::warn!(app = %app.name, "cannot remove {next}: {e}");
                }
            }
        };
        let kept = |message: String| {
            let message =
                format!("the restart failed and the running containers go on serving: {message}");
            tracing::error!(app = %app.name, "{message}");
            self.set(&app.name, AppState::Ready, Some(message.clone()), None);
            AppError::NotReady {
                app: app.name.clone(),
                message,
            }
        };
        self.set(&app.name, AppState::Restarting, None, None);
        tracing::info!(app = %app.name, "restarting start-first: the app serves meanwhile");
        if let Err(e) = self.engine.build_app_image(app).await {
            return Err(kept(e.to_string()));
        }
        if let Err(e) = self.set_declared_clock(app) {
            return Err(kept(e.to_string()));
        }
        let started = futures_util::future::join_all(
            (0..app.endpoints.len())
                .map(|i| self.engine.start_replacement(&self.environment, app, i)),
        )
        .await;
        let mut containers = Vec::new();
        for c in started {
            match c {
                Ok(c) => containers.push(c),
                Err(e) => {
                    discard().await;
                    return Err(kept(e.to_string()));
                }
            }
        }
        let mut check = app.clone();
        if let Some(t) = timeout {
            check.ready.timeout = t;
        }
        if let Err(e) = self
            .engine
            .wait_ready(&check, &containers[app.ready.endpoint])
            .await
        {
            discard().await;
            return Err(kept(e.to_string()));
        }
        let started: Vec<String> = containers.iter().map(|c| c.name.clone()).collect();
        if let Err(m) = self.check_clock_loaded(app, &started).await {
            discard().await;
            return Err(kept(m));
        }
        self.publish_app(app, &containers).await;
        tokio::time::sleep(DRAIN).await;
        let mut misnamed = None;
        for name in &names {
            if let Err(e) = self
                .engine
                .promote_replacement(name, STOP_GRACE_SECONDS)
                .await
            {
                // The new containers serve; only their names are off.
                tracing::warn!(app = %app.name, "{e}");
                misnamed = Some(format!(
                    "the new containers serve, but {e}; `itproxy app restart {}` again \
                     or `itproxy down` and `up` put things straight",
                    app.name
                ));
            }
        }
        let took = began.elapsed();
        self.set(&app.name, AppState::Ready, misnamed, Some(took));
        tracing::info!(app = %app.name, took_ms = took.as_millis() as u64, "app restarted start-first");
        Ok(())
    }
}

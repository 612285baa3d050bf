//! `itproxy reload`: the config file read again and applied while the daemon runs. The
//! declared routes and the environment's apps (added, removed, changed) take effect; what
//! needs new listeners, another environment or new defaults for every route (domains,
//! `[listen]`, the environment's name, `[proxy]`, `[dns]`, `[tls]`) is refused, naming it, and
//! then nothing changes.

use std::sync::Arc;

use crate::api::Reloaded;
use crate::config::Config;
use crate::state::{Change, ChangeError, StateHandle};
use crate::supervisor::{AppError, AppSupervisor};

/// Why a reload changed nothing, or stopped part way.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The daemon runs on built-in defaults.
    #[error("this daemon runs on built-in defaults (no config file): there is nothing to reload")]
    NoFile,
    /// The file has a mistake.
    #[error("the config file has a mistake, so nothing was reloaded: {0}")]
    Invalid(String),
    /// A section that only a new daemon can apply changed.
    #[error(
        "{0} changed: that takes effect at the next `itproxy up` (after `itproxy stop`); \
         nothing was reloaded"
    )]
    NeedsRestart(String),
    /// The new declared routes could not be applied.
    #[error("the declared routes were not applied: {0}")]
    Routes(#[from] ChangeError),
    /// The apps could not be reloaded (the routes were).
    #[error("the routes were reloaded, the apps were not: {0}")]
    Apps(#[from] AppError),
}

/// Reads `config`'s file again and applies it; `config` becomes the new one when the routes
/// and apps took effect.
pub(crate) async fn reload(
    config: &mut Option<Config>,
    state: &StateHandle,
    apps: Option<&Arc<AppSupervisor>>,
) -> Result<Reloaded, ReloadError> {
    let old = config.as_ref().ok_or(ReloadError::NoFile)?;
    let fresh = old
        .reread()
        .ok_or(ReloadError::NoFile)?
        .map_err(|e| ReloadError::Invalid(e.to_string()))?;
    let fixed = fixed_sections_changed(old, &fresh);
    if !fixed.is_empty() {
        return Err(ReloadError::NeedsRestart(fixed.join(", ")));
    }
    let mut done = Reloaded::default();
    for (host, spec) in &fresh.routes {
        match old.routes.get(host) {
            None => done.routes_added.push(host.to_string()),
            Some(was) if was != spec => done.routes_changed.push(host.to_string()),
            Some(_) => {}
        }
    }
    done.routes_removed = old
        .routes
        .keys()
        .filter(|h| !fresh.routes.contains_key(*h))
        .map(|h| h.to_string())
        .collect();
    let mut routes = Vec::new();
    for (host, spec) in &fresh.routes {
        let addrs = crate::startup::resolve_or_warn(host, &spec.target).await;
        routes.push((host.clone(), spec.clone(), addrs));
    }
    state.apply(Change::Declared { routes }).await?;
    let plan = fresh.env.as_ref().map(|e| e.apps.clone());
    *config = Some(fresh);
    if let (Some(apps), Some(plan)) = (apps, plan) {
        apps.reload(plan, &mut done).await?;
    }
    tracing::info!(
        routes_added = done.routes_added.len(),
        routes_changed = done.routes_changed.len(),
        routes_removed = done.routes_removed.len(),
        apps_added = done.apps_added.len(),
        apps_changed = done.apps_changed.len(),
        apps_removed = done.apps_removed.len(),
        errors = done.errors.len(),
        "config reloaded"
    );
    Ok(done)
}

/// The sections that differ and that only a new daemon applies, by their names in the file.
fn fixed_sections_changed(old: &Config, new: &Config) -> Vec<&'static str> {
    let mut changed = Vec::new();
    if old.domains != new.domains {
        changed.push("domains");
    }
    if old.listen != new.listen {
        changed.push("[listen]");
    }
    if old.env.as_ref().map(|e| &e.name) != new.env.as_ref().map(|e| &e.name) {
        changed.push("the environment ([env] name)");
    }
    if old.proxy != new.proxy {
        changed.push("[proxy]");
    }
    if old.dns != new.dns {
        changed.push("[dns]");
    }
    if old.tls != new.tls {
        changed.push("[tls]");
    }
    changed
}

/// Reloads on every SIGHUP, logging what changed or why nothing did.
pub(crate) async fn on_hangup(control: Arc<crate::control::Control>) {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut hangups) = signal(SignalKind::hangup()) else {
        tracing::warn!("cannot install the SIGHUP handler; reload with `itproxy reload`");
        return;
    };
    while hangups.recv().await.is_some() {
        tracing::info!("SIGHUP received, reloading the config file");
        let mut config = control.config.lock().await;
        match reload(&mut config, &control.state, control.apps.as_ref()).await {
            Ok(done) if done.errors.is_empty() => {}
            Ok(done) => {
                tracing::error!(errors = ?done.errors, "reloaded, but apps did not become ready")
            }
            Err(e) => tracing::error!("{e}"),
        }
    }
}

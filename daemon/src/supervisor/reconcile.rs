//! What an earlier daemon left half done, put straight before the apps start: every container
//! labelled with the environment is compared with the plan. The apps' own containers are
//! adopted (reused by the start when their declaration and image still match, which their
//! `itproxy.spec` label says); a replacement left by a blue/green restart cut short is removed
//! (the old container still serves) or, when the old one was already gone, takes its place; a
//! container of an app or endpoint no longer declared is removed. A snapshot's unfinished
//! directory is removed, and a restore cut short is done again once the apps are up. Each action
//! is one line of the log.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use super::{AppError, AppSupervisor};

/// The file that marks a snapshot restore in progress (it holds the snapshot's name).
const RESTORING: &str = ".restoring";

/// The marker of a restore in progress under the snapshots' `root`.
pub(super) fn restoring_marker(root: &Path) -> PathBuf {
    root.join(RESTORING)
}

impl AppSupervisor {
    /// Compares the environment's containers with the plan and removes or renames what does
    /// not belong (see the module documentation).
    pub(super) async fn reconcile(&self) {
        let listed = match self.engine.env_containers(&self.environment.env).await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!("cannot list the environment's containers to reconcile: {e}");
                return;
            }
        };
        let plan = self.plan();
        let declared: BTreeSet<String> = plan
            .apps()
            .filter_map(|a| self.current(a.name.as_str()))
            .flat_map(|a| self.containers_of(&a).map(|(_, n)| n).collect::<Vec<_>>())
            .collect();
        for c in &listed {
            // Containers of declared apps only (not those started by hand with labels).
            if c.app.is_empty() {
                continue;
            }
            if let Some(old) = c.name.strip_suffix("_next") {
                if declared.contains(old) {
                    if listed.iter().any(|o| o.name == old) {
                        self.remove_left(
                            &c.name,
                            "a restart cut short left it beside the container it was to replace, which serves on",
                        )
                        .await;
                    } else {
                        self.promote_left(&c.name, old).await;
                    }
                    continue;
                }
            }
            if !declared.contains(&c.name) {
                self.remove_left(&c.name, &format!("app {} no longer declares it", c.app))
                    .await;
            }
        }
        self.remove_partial_snapshots();
    }

    async fn remove_left(&self, name: &str, why: &str) {
        match self.engine.remove_container(name).await {
            Ok(()) => tracing::info!(container = name, "reconcile: removed ({why})"),
            Err(e) => tracing::warn!(container = name, "reconcile: cannot remove ({why}): {e}"),
        }
    }

    /// A replacement whose old container was already removed when the restart was cut short:
    /// it finishes the restart by taking the old one's name.
    async fn promote_left(&self, next: &str, name: &str) {
        match self.engine.promote_replacement(name, 0).await {
            Ok(()) => tracing::info!(
                container = name,
                "reconcile: {next} took the name {name} (a restart cut short after the old container was removed)"
            ),
            Err(e) => {
                tracing::warn!(container = next, "reconcile: cannot rename to {name} ({e}); removing it");
                self.remove_left(next, "its restart was cut short").await;
            }
        }
    }

    /// Unfinished snapshot directories (`.NAME.partial`) of a save cut short: never listed,
    /// and only taking space.
    fn remove_partial_snapshots(&self) {
        let Ok(entries) = std::fs::read_dir(&self.snapshots) else {
            return;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') && name.ends_with(".partial") {
                match std::fs::remove_dir_all(e.path()) {
                    Ok(()) => {
                        tracing::info!(dir = %e.path().display(), "reconcile: removed a snapshot's unfinished directory")
                    }
                    Err(err) => {
                        tracing::warn!(dir = %e.path().display(), "reconcile: cannot remove: {err}")
                    }
                }
            }
        }
    }

    /// A snapshot restore that a stop cut short (its marker is still there) is done again, so
    /// the apps hold the snapshot's data, not half of it.
    pub(super) async fn finish_interrupted_restore(&self) -> Result<(), AppError> {
        let marker = restoring_marker(&self.snapshots);
        let Ok(name) = std::fs::read_to_string(&marker) else {
            return Ok(());
        };
        let name = name.trim().to_string();
        tracing::info!(snapshot = %name, "reconcile: restoring the snapshot again (its restore was cut short)");
        match self.snapshot_restore(&self.snapshots.clone(), &name).await {
            Ok(_) => Ok(()),
            Err(AppError::NoSnapshot(_)) => {
                tracing::warn!(snapshot = %name, "reconcile: the snapshot whose restore was cut short is gone");
                let _ = std::fs::remove_file(&marker);
                Ok(())
            }
            Err(e) => Err(e),
        }
    }
}

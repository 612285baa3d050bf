//! Snapshots of the environment's named volumes: saved from the apps' stopped containers and
//! restored into fresh ones, so a test can start from known data without re-running seeds.
//! Each app is stopped while its volumes are read or written (a database's files are only
//! consistent at rest) and started again if it was ready.

use std::path::Path;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use itproxy_orchestrator::{container_name, AppSpec, VolumeSource};

use super::{AppError, AppSupervisor};
use crate::api::{self, AppState};

/// The file describing a snapshot, beside its archives.
const MANIFEST: &str = "snapshot.json";

/// A snapshot name: it names a directory.
fn check_name(name: &str) -> Result<(), AppError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        && name.as_bytes()[0].is_ascii_alphanumeric();
    if ok {
        Ok(())
    } else {
        Err(AppError::Snapshot(format!(
            "{name:?} is not a snapshot name; use 1 to 64 of a-z, 0-9, '-' and '_'"
        )))
    }
}

fn io_err(what: String) -> impl FnOnce(std::io::Error) -> AppError {
    move |e| AppError::Snapshot(format!("{what}: {e}"))
}

impl AppSupervisor {
    /// The apps with named volumes, and those volumes (name, target).
    fn with_volumes(&self) -> Vec<(AppSpec, Vec<(String, String)>)> {
        self.plan()
            .apps()
            .filter_map(|a| self.current(a.name.as_str()))
            .filter_map(|a| {
                let named: Vec<(String, String)> = a
                    .volumes
                    .iter()
                    .filter_map(|v| match &v.source {
                        VolumeSource::Named(n) => Some((n.clone(), v.target.clone())),
                        VolumeSource::Host(_) => None,
                    })
                    .collect();
                (!named.is_empty()).then_some((a, named))
            })
            .collect()
    }

    /// The container holding an app's volumes (its first endpoint's).
    fn volume_container(&self, app: &AppSpec) -> String {
        container_name(
            &self.environment.env,
            app.name.as_str(),
            app.endpoints[0].name.as_str(),
        )
    }

    /// `POST /v1/snapshots/{name}`: every app's named volumes into `root/name`.
    pub async fn snapshot_save(
        &self,
        root: &Path,
        name: &str,
    ) -> Result<api::SnapshotView, AppError> {
        check_name(name)?;
        let began = Instant::now();
        let apps = self.with_volumes();
        if apps.is_empty() {
            return Err(AppError::Snapshot(
                "no app of this environment declares a named volume (volumes = [\"data:/path\"])"
                    .into(),
            ));
        }
        let dir = root.join(name);
        let partial = root.join(format!(".{name}.partial"));
        let _ = std::fs::remove_dir_all(&partial);
        std::fs::create_dir_all(&partial)
            .map_err(io_err(format!("create {}", partial.display())))?;
        let saved = self.save_into(&partial, name, &apps).await;
        let view = match saved.and_then(|view| {
            publish(root, &partial, &dir)?;
            Ok(view)
        }) {
            Ok(view) => view,
            Err(e) => {
                // A full disk keeps nothing half-written: an earlier snapshot of the name stays.
                let _ = std::fs::remove_dir_all(&partial);
                return Err(e);
            }
        };
        tracing::info!(snapshot = name, took = ?began.elapsed(), "snapshot saved");
        Ok(api::SnapshotView {
            took_ms: Some(began.elapsed().as_millis() as u64),
            ..view
        })
    }

    /// Saves `apps`' volumes and the manifest into `partial`, each file synced.
    async fn save_into(
        &self,
        partial: &Path,
        name: &str,
        apps: &[(AppSpec, Vec<(String, String)>)],
    ) -> Result<api::SnapshotView, AppError> {
        let mut volumes = Vec::new();
        for (app, named) in apps {
            let container = self.volume_container(app);
            if self
                .engine
                .container(&container)
                .await
                .map_err(engine)?
                .is_none()
            {
                return Err(AppError::Snapshot(format!(
                    "app {} has no container yet; start it before saving its volumes",
                    app.name
                )));
            }
            let was_ready = self.state(&app.name) == AppState::Ready;
            self.stop_app(app).await?;
            let mut saved = Ok(());
            for (volume, target) in named {
                let file = partial.join(format!("{}-{volume}.tar", app.name));
                match self.engine.save_path(&container, target, &file).await {
                    Ok(bytes) => volumes.push(api::SnapshotVolume {
                        app: app.name.to_string(),
                        volume: volume.clone(),
                        target: target.clone(),
                        bytes,
                    }),
                    Err(e) => {
                        saved = Err(engine(e));
                        break;
                    }
                }
            }
            if was_ready {
                self.start_app(app, None).await?;
            }
            saved?;
        }
        let view = api::SnapshotView {
            name: name.to_string(),
            created: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            volumes,
            took_ms: None,
        };
        let manifest = serde_json::to_vec_pretty(&view).expect("serializable");
        let path = partial.join(MANIFEST);
        std::fs::write(&path, manifest).map_err(io_err(format!("write {}", path.display())))?;
        // Durable before it is listed: a snapshot listed after a power cut is whole.
        for entry in std::fs::read_dir(partial)
            .map_err(io_err(format!("read {}", partial.display())))?
            .flatten()
        {
            let path = entry.path();
            std::fs::File::open(&path)
                .and_then(|f| f.sync_all())
                .map_err(io_err(format!("sync {}", path.display())))?;
        }
        sync_dir(partial)?;
        Ok(view)
    }

    /// `POST /v1/snapshots/{name}/restore`: each app of the snapshot gets fresh containers and
    /// volumes holding what was saved, and is started again (waiting until it is ready).
    pub async fn snapshot_restore(
        &self,
        root: &Path,
        name: &str,
    ) -> Result<api::SnapshotView, AppError> {
        check_name(name)?;
        let began = Instant::now();
        let dir = root.join(name);
        let view = read_manifest(&dir)?;
        let mut apps: Vec<AppSpec> = Vec::new();
        for v in &view.volumes {
            let app = self.current(&v.app).ok_or_else(|| {
                AppError::Snapshot(format!(
                    "snapshot {name} holds volumes of app {}, which this environment no longer declares",
                    v.app
                ))
            })?;
            if !apps.iter().any(|a| a.name == app.name) {
                apps.push(app);
            }
        }
        // A stop from here on leaves a marker: the next start restores the snapshot again,
        // so no app is left with half of it.
        let marker = super::reconcile::restoring_marker(root);
        std::fs::write(&marker, name)
            .and_then(|()| std::fs::File::open(&marker)?.sync_all())
            .map_err(io_err(format!("write {}", marker.display())))?;
        for app in &apps {
            self.stop_app(app).await?;
            self.engine
                .remove_app(&self.environment, app)
                .await
                .map_err(engine)?;
            for i in 0..app.endpoints.len() {
                self.engine
                    .ensure_created(&self.environment, app, i)
                    .await
                    .map_err(engine)?;
            }
            let container = self.volume_container(app);
            for v in view.volumes.iter().filter(|v| v.app == app.name.as_str()) {
                let file = dir.join(format!("{}-{}.tar", v.app, v.volume));
                self.engine
                    .restore_path(&container, &v.target, &file)
                    .await
                    .map_err(engine)?;
            }
            self.start_app(app, None).await?;
        }
        let _ = std::fs::remove_file(&marker);
        tracing::info!(snapshot = name, took = ?began.elapsed(), "snapshot restored");
        Ok(api::SnapshotView {
            took_ms: Some(began.elapsed().as_millis() as u64),
            ..view
        })
    }
}

/// Puts the complete snapshot in `partial` at `dir` in one step: a snapshot of the same name
/// is exchanged with it atomically (`renameat2(RENAME_EXCHANGE)`) and only then removed, so a
/// crash at any point leaves the old snapshot or the new one, never neither.
fn publish(root: &Path, partial: &Path, dir: &Path) -> Result<(), AppError> {
    use std::os::unix::ffi::OsStrExt;
    if dir.exists() {
        let c = |p: &Path| std::ffi::CString::new(p.as_os_str().as_bytes()).expect("no NUL");
        let (from, to) = (c(partial), c(dir));
        // SAFETY: both are valid NUL-terminated paths that outlive the call.
        let r = unsafe {
            libc::renameat2(
                libc::AT_FDCWD,
                from.as_ptr(),
                libc::AT_FDCWD,
                to.as_ptr(),
                libc::RENAME_EXCHANGE,
            )
        };
        if r != 0 {
            return Err(io_err(format!("replace {}", dir.display()))(
                std::io::Error::last_os_error(),
            ));
        }
        sync_dir(root)?;
        // `partial` now holds the old snapshot.
        let _ = std::fs::remove_dir_all(partial);
    } else {
        std::fs::rename(partial, dir).map_err(io_err(format!("create {}", dir.display())))?;
    }
    sync_dir(root)
}

fn sync_dir(dir: &Path) -> Result<(), AppError> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(format!("sync {}", dir.display())))
}

/// `GET /v1/snapshots`: those saved under `root`, by name.
pub fn list_snapshots(root: &Path) -> Result<Vec<api::SnapshotView>, AppError> {
    let mut all = Vec::new();
    let entries = match std::fs::read_dir(root) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(all),
        Err(e) => return Err(io_err(format!("read {}", root.display()))(e)),
    };
    for e in entries.flatten() {
        if e.file_name().to_string_lossy().starts_with('.') {
            continue;
        }
        if let Ok(v) = read_manifest(&e.path()) {
            all.push(v);
        }
    }
    all.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(all)
}

fn read_manifest(dir: &Path) -> Result<api::SnapshotView, AppError> {
    let path = dir.join(MANIFEST);
    let text = std::fs::read(&path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            AppError::NoSnapshot(
                dir.file_name()
                    .map_or_else(String::new, |n| n.to_string_lossy().into_owned()),
            )
        } else {
            io_err(format!("read {}", path.display()))(e)
        }
    })?;
    serde_json::from_slice(&text)
        .map_err(|e| AppError::Snapshot(format!("{} is damaged: {e}", path.display())))
}

fn engine(e: itproxy_orchestrator::Error) -> AppError {
    AppError::Engine(e.to_string())
}

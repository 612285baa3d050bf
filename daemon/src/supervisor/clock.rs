//! Apps with a clock of their own (`faketime`): libfaketime in their containers reads an offset
//! from a file itproxy writes, so `itproxy time set` moves a running app's clock within a second,
//! without a restart. The offset is set from the declaration at each start.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use itproxy_orchestrator::{AppSpec, FakeTime, CLOCK_FILE};

use super::{AppError, AppSupervisor};
use crate::api;

/// How long a started container has to show libfaketime loaded (its command may exec the real
/// program through a shell first).
const LOAD_CHECK: Duration = Duration::from_secs(3);

fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

impl AppSupervisor {
    /// Sets the app's clock from its declaration, before its containers start.
    pub(super) fn set_declared_clock(&self, app: &AppSpec) -> Result<(), AppError> {
        match app.faketime {
            Some(declared) => self.write_offset(app, declared.offset_at(now_unix())),
            None => Ok(()),
        }
    }

    /// Writes the offset libfaketime reads: a new file renamed over the old one, so a reader
    /// never sees half of it.
    fn write_offset(&self, app: &AppSpec, offset: i64) -> Result<(), AppError> {
        let Some(clocks) = &self.environment.clocks else {
            return Ok(());
        };
        let dir = clocks.app_dir(app.name.as_str());
        let failed = |e: std::io::Error| {
            AppError::Clock(format!(
                "app {}: cannot write its clock in {}: {e}",
                app.name,
                dir.display()
            ))
        };
        std::fs::create_dir_all(&dir).map_err(failed)?;
        let tmp = dir.join(format!(".{CLOCK_FILE}.tmp"));
        std::fs::write(&tmp, format!("{offset:+}\n")).map_err(failed)?;
        std::fs::rename(&tmp, dir.join(CLOCK_FILE)).map_err(failed)
    }

    fn read_offset(&self, app: &AppSpec) -> Option<i64> {
        let clocks = self.environment.clocks.as_ref()?;
        let text =
            std::fs::read_to_string(clocks.app_dir(app.name.as_str()).join(CLOCK_FILE)).ok()?;
        text.trim().parse().ok()
    }

    /// After the app's readiness check: each of its containers must have libfaketime loaded,
    /// or its clock cannot be moved (a static binary, or one on another C library).
    pub(super) async fn check_clock_loaded(
        &self,
        app: &AppSpec,
        containers: &[String],
    ) -> Result<(), String> {
        if app.faketime.is_none() {
            return Ok(());
        }
        for name in containers {
            let deadline = Instant::now() + LOAD_CHECK;
            loop {
                match self.engine.loads_faketime(name).await {
                    Ok(Some(true)) => break,
                    Ok(None) => {
                        tracing::warn!(app = %app.name, container = %name, "cannot tell whether libfaketime is loaded (/proc not readable)");
                        break;
                    }
                    Ok(Some(false)) if Instant::now() < deadline => {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    Ok(Some(false)) => {
                        return Err(format!(
                            "it declares faketime, but no process of {name} loads libfaketime: a \
                             static binary (busybox, most Go programs) or one built on musl \
                             (Alpine) ignores LD_PRELOAD, so its clock cannot be moved; use an \
                             image whose program links glibc dynamically, or remove faketime"
                        ))
                    }
                    Err(e) => return Err(e.to_string()),
                }
            }
        }
        Ok(())
    }

    /// `GET /v1/apps/{name}/time`.
    pub fn clock(&self, name: &str) -> Result<api::AppClock, AppError> {
        let app = self.current(name).ok_or_else(|| self.no_app(name))?;
        let declared = self.declared_clock(&app)?;
        Ok(self.clock_view(&app, declared))
    }

    /// `POST /v1/apps/{name}/time`: moves the running app's clock (`declared` puts it back as
    /// declared, from now).
    pub fn set_clock(&self, name: &str, time: &str) -> Result<api::AppClock, AppError> {
        let app = self.current(name).ok_or_else(|| self.no_app(name))?;
        let declared = self.declared_clock(&app)?;
        let wanted = if time.trim() == "declared" {
            declared
        } else {
            FakeTime::parse(time).map_err(AppError::Clock)?
        };
        self.write_offset(&app, wanted.offset_at(now_unix()))?;
        tracing::info!(app = %app.name, time = %wanted, "clock set");
        Ok(self.clock_view(&app, declared))
    }

    fn declared_clock(&self, app: &AppSpec) -> Result<FakeTime, AppError> {
        app.faketime.ok_or_else(|| {
            AppError::Clock(format!(
                "app {0} has no clock of its own; declare `faketime = \"+0s\"` (or a time) for it \
                 in itproxy.toml and restart it (`itproxy app restart {0}`)",
                app.name
            ))
        })
    }

    fn clock_view(&self, app: &AppSpec, declared: FakeTime) -> api::AppClock {
        let offset = self.read_offset(app).unwrap_or(0);
        let now = now_unix() + offset;
        let at = UNIX_EPOCH + Duration::from_secs(now.max(0) as u64);
        api::AppClock {
            app: app.name.to_string(),
            declared: declared.to_string(),
            offset_seconds: offset,
            now: humantime::format_rfc3339_seconds(at).to_string(),
        }
    }
}

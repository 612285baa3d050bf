//! What the apps' containers wrote, for the control API: an app's lines, and the error scan of
//! every container (`itproxy logs --errors` as data, which test fixtures run after each test).

use futures_util::StreamExt;

use super::{AppError, AppSupervisor};
use crate::api;

impl AppSupervisor {
    /// `GET /v1/apps/{app}/logs`: the app's containers' lines since `since` (Unix seconds),
    /// the last `tail` of each if given; containers that do not exist have none.
    pub async fn logs(
        &self,
        name: &str,
        since: f64,
        tail: Option<usize>,
    ) -> Result<api::AppLogs, AppError> {
        let app = self.current(name).ok_or_else(|| self.no_app(name))?;
        let listed = self.listed().await;
        let mut lines = Vec::new();
        for (endpoint, container) in self.containers_of(&app) {
            let Some(c) = listed.iter().find(|c| c.name == container) else {
                continue;
            };
            let mut stream = std::pin::pin!(self.engine.logs(&c.id, since, false, tail));
            while let Some(line) = stream.next().await {
                let line = line.map_err(|e| AppError::Engine(e.to_string()))?;
                lines.push(api::LogLineView {
                    container: container.clone(),
                    endpoint: endpoint.name.to_string(),
                    stream: if line.stderr { "stderr" } else { "stdout" }.to_string(),
                    text: line.text,
                });
            }
        }
        Ok(api::AppLogs {
            app: app.name.to_string(),
            lines,
        })
    }

    /// `GET /v1/errors`: every container of the environment scanned with its app's patterns
    /// (`log_errors`, `log_ignore`) for lines since `since`.
    pub async fn error_lines(&self, since: f64) -> Result<api::ErrorScanView, AppError> {
        let containers = self
            .engine
            .env_containers(&self.environment.env)
            .await
            .map_err(|e| AppError::Engine(e.to_string()))?;
        let mut findings = Vec::new();
        for c in &containers {
            let scan = self.current(&c.app).map(|a| a.errors).unwrap_or_default();
            let scan = &scan;
            let bad = self
                .engine
                .error_lines(&c.id, since, scan)
                .await
                .map_err(|e| AppError::Engine(e.to_string()))?;
            findings.extend(bad.into_iter().map(|f| api::ErrorFinding {
                app: c.app.clone(),
                container: c.name.clone(),
                line: f.line,
                context: f.context,
            }));
        }
        Ok(api::ErrorScanView {
            env: self.environment.env.to_string(),
            since,
            containers: containers.len(),
            findings,
        })
    }
}

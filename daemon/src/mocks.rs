//! Mocks in front of routes (`itproxy route NAME --record DIR` / `--mock DIR`): the daemon
//! runs a loopback server per mocked route (`itproxy_mock`'s recorder or replayer) and puts it
//! in front of the route in the desired state (`Change::Mock`, over every other source, not
//! persisted); `--restore` takes it away and stops the server.

use std::collections::HashMap;
use std::path::PathBuf;

use itproxy_mock::recording::Origin;
use itproxy_mock::server::{self, Running};
use itproxy_router::{HostName, Scheme};

use crate::api::{MockMode, MockView, PutMock, RouteView};
use crate::state::{ChangeError, StateHandle};

/// Why a mock could not start.
#[derive(Debug, thiserror::Error)]
pub enum MockError {
    /// The name, or the route to record.
    #[error(transparent)]
    Route(#[from] ChangeError),
    /// The directory is not absolute.
    #[error("the recording's directory must be an absolute path, not {0:?}")]
    RelativeDir(String),
    /// The route cannot be recorded as it is.
    #[error("cannot record {host}: {reason}")]
    NotRecordable {
        /// The route.
        host: HostName,
        /// Why.
        reason: String,
    },
    /// The recording or its server.
    #[error(transparent)]
    Mock(#[from] itproxy_mock::Error),
}

/// The mock servers running, by route.
#[derive(Default)]
pub struct Mocks {
    running: tokio::sync::Mutex<HashMap<HostName, Running>>,
}

impl Mocks {
    /// Puts the mock `put` asks for in front of `name`'s route (replacing one there).
    pub async fn start(
        &self,
        state: &StateHandle,
        name: &str,
        put: PutMock,
    ) -> Result<RouteView, MockError> {
        let host = state.qualify(name).await?;
        let dir = PathBuf::from(&put.dir);
        if !dir.is_absolute() {
            return Err(MockError::RelativeDir(put.dir));
        }
        let mut running = self.running.lock().await;
        let server = match put.mode {
            MockMode::Record => {
                let under = state.read(|s| s.target_under_mock(&host)).await;
                let Some((spec, addrs)) = under else {
                    return Err(ChangeError::NoRoute(host).into());
                };
                if spec.scheme() != Scheme::Http {
                    return Err(MockError::NotRecordable {
                        host,
                        reason: format!("its target {spec} is not plain HTTP (only http:// targets are recorded)"),
                    });
                }
                let Some(addr) = addrs.first().copied() else {
                    return Err(MockError::NotRecordable {
                        host,
                        reason: format!("its target {spec} has no address"),
                    });
                };
                let origin = Origin {
                    host: host.to_string(),
                    target: spec.to_string(),
                };
                server::start_recorder(&dir, origin, addr).await?
            }
            MockMode::Replay => server::start_replayer(&dir).await?,
        };
        let view = MockView {
            mode: put.mode,
            dir: dir.display().to_string(),
        };
        let route = state.set_mock(&host, Some((view, server.addr()))).await?;
        // The one it replaces stops once the new one is in front.
        if let Some(old) = running.insert(host.clone(), server) {
            old.stop();
        }
        tracing::info!(%host, mode = ?put.mode, dir = %dir.display(), "mock in front of the route");
        Ok(route.expect("a mocked host has a route"))
    }

    /// Takes the mock in front of `host`'s route away; whether there was one.
    pub async fn stop(&self, state: &StateHandle, host: &HostName) -> Result<bool, ChangeError> {
        let mut running = self.running.lock().await;
        let Some(server) = running.remove(host) else {
            return Ok(false);
        };
        state.set_mock(host, None).await?;
        server.stop();
        tracing::info!(%host, "mock taken away");
        Ok(true)
    }
}

//! Discovery of containers started by hand: `--label itproxy.host=NAME --label itproxy.port=PORT`
//! gets a route while the container runs.

use std::collections::HashMap;
use std::net::IpAddr;

use bollard::query_parameters::EventsOptionsBuilder;
use futures_util::{Stream, StreamExt};

use crate::{engine_err, found, Engine, Error};

/// The label naming the route (an app name or a host name).
pub const HOST_LABEL: &str = "itproxy.host";
/// The label naming the container's HTTP port.
pub const PORT_LABEL: &str = "itproxy.port";

/// A running container that asks for a route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Labelled {
    /// The container's id.
    pub id: String,
    /// The `itproxy.host` label.
    pub host: String,
    /// The `itproxy.port` label.
    pub port: u16,
    /// The container's address on its first network.
    pub ip: IpAddr,
}

/// A change seen on the engine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Discovery {
    /// A labelled container is running.
    Up(Labelled),
    /// A container stopped.
    Down {
        /// The container's id.
        id: String,
    },
}

impl Engine {
    /// The running containers with an `itproxy.host` label (for reconciling at start-up).
    pub async fn labelled_containers(&self) -> Result<Vec<Labelled>, Error> {
        let listed = self.listed(HOST_LABEL, false, "list containers").await?;
        let mut out = Vec::new();
        for id in listed.into_iter().filter_map(|c| c.id) {
            if let Some(l) = self.labelled(&id).await? {
                out.push(l);
            }
        }
        Ok(out)
    }

    /// A container's route request, if it runs and its labels are usable (bad labels are
    /// logged and ignored).
    pub async fn labelled(&self, id: &str) -> Result<Option<Labelled>, Error> {
        let answer = self.docker.inspect_container(id, None).await;
        let Some(c) = found(answer, || format!("inspect the container {id}"))? else {
            return Ok(None);
        };
        if !c.state.as_ref().and_then(|s| s.running).unwrap_or(false) {
            return Ok(None);
        }
        let labels = c.config.and_then(|c| c.labels).unwrap_or_default();
        let Some(host) = labels.get(HOST_LABEL).cloned() else {
            return Ok(None);
        };
        let port = match labels.get(PORT_LABEL).map(|p| p.parse::<u16>()) {
            Some(Ok(p)) if p > 0 => p,
            other => {
                tracing::warn!(
                    container = id,
                    ?other,
                    "ignoring a container whose {PORT_LABEL} label is missing or not a port"
                );
                return Ok(None);
            }
        };
        let ip = c
            .network_settings
            .and_then(|n| n.networks)
            .and_then(|nets| {
                let mut nets: Vec<_> = nets.into_iter().collect();
                nets.sort_by(|a, b| a.0.cmp(&b.0));
                nets.into_iter()
                    .find_map(|(_, e)| e.ip_address.filter(|ip| !ip.is_empty()))
            })
            .and_then(|ip| ip.parse().ok());
        let Some(ip) = ip else {
            tracing::warn!(
                container = id,
                "ignoring a labelled container without a network address"
            );
            return Ok(None);
        };
        Ok(Some(Labelled {
            id: c.id.unwrap_or_else(|| id.to_string()),
            host,
            port,
            ip,
        }))
    }

    /// Starts and stops of labelled containers from `since` (Unix seconds; the engine replays
    /// what happened after it, so nothing is missed between a listing and the watch). The
    /// stream ends if the engine goes away.
    pub fn watch_labelled(&self, since: u64) -> impl Stream<Item = Result<Discovery, Error>> + '_ {
        let filters = HashMap::from([
            ("type", vec!["container"]),
            ("label", vec![HOST_LABEL]),
            ("event", vec!["start", "die"]),
        ]);
        let options = EventsOptionsBuilder::new()
            .since(&since.to_string())
            .filters(&filters)
            .build();
        self.docker
            .events(Some(options))
            .filter_map(move |event| async move {
                let event = match event {
                    Ok(e) => e,
                    Err(e) => return Some(Err(engine_err("watch container events")(e))),
                };
                let id = event.actor.and_then(|a| a.id)?;
                match event.action.as_deref() {
                    Some("start") => match self.labelled(&id).await {
                        Ok(Some(l)) => Some(Ok(Discovery::Up(l))),
                        Ok(None) => None,
                        Err(e) => Some(Err(e)),
                    },
                    Some("die") => Some(Ok(Discovery::Down { id })),
                    _ => None,
                }
            })
    }
}

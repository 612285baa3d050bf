//! The request inspector's readers: `GET /v1/requests` (a list, or a stream of JSON lines
//! that follows new requests) over the router's [`Inspector`], and the conversion of its
//! records into the API's [`RequestView`].

use std::sync::Arc;
use std::time::Duration;

use itproxy_router::inspect::Exchange;
use itproxy_router::{HostName, Inspector};

use crate::api::RequestView;

/// Requests a list answers with when the query names no limit.
pub const DEFAULT_LIMIT: usize = 100;

/// How long a follower waits for a new request before it checks the client is still there.
const FOLLOW_TICK: Duration = Duration::from_secs(15);

/// How long a follower lets new requests gather before it reads them.
const FOLLOW_BATCH: Duration = Duration::from_millis(50);

/// A kept request as the API shows it.
pub fn view(e: &Exchange) -> RequestView {
    let request = e.request().unwrap_or_default();
    let response = e.response().unwrap_or_default();
    RequestView {
        id: e.id,
        time: humantime::format_rfc3339_millis(e.time).to_string(),
        protocol: e.protocol.as_str().to_string(),
        tls: e.tls,
        client: e.client.map(|ip| ip.to_string()),
        route: e.route.as_ref().map(|r| r.host().to_string()),
        upstream: e.route.as_ref().map(|r| r.upstream().spec().to_string()),
        method: request.start.0,
        target: request.start.1,
        status: e.status,
        duration_ms: e.duration.as_secs_f64() * 1000.0,
        upstream_ms: e.upstream_duration.map(|d| d.as_secs_f64() * 1000.0),
        request_bytes: e.request_bytes,
        response_bytes: e.response_bytes,
        upstream_failed: e.upstream_failed,
        error: e.error.clone(),
        request_headers: request.headers,
        response_headers: response.headers,
        request_body: text(e.request_body()),
        request_body_base64: base64(e.request_body()),
        response_body: text(e.response_body()),
        response_body_base64: base64(e.response_body()),
        bodies_cut: e.bodies_cut,
    }
}

/// A kept body as text, when it is some and UTF-8.
fn text(body: &[u8]) -> Option<String> {
    (!body.is_empty())
        .then(|| std::str::from_utf8(body).ok().map(str::to_string))
        .flatten()
}

/// A kept body as base64, when it is some and not UTF-8.
fn base64(body: &[u8]) -> Option<String> {
    use base64::Engine as _;
    (!body.is_empty() && std::str::from_utf8(body).is_err())
        .then(|| base64::engine::general_purpose::STANDARD.encode(body))
}

/// Which requests a reader asked for.
#[derive(Clone, Debug)]
pub struct Selection {
    /// Only this route's.
    pub route: Option<HostName>,
    /// Only after this id.
    pub since: u64,
    /// At most this many at first (the newest).
    pub limit: usize,
    /// Hide the values of the headers that carry credentials (the dashboard's view).
    pub redact: bool,
}

/// Headers whose values the dashboard does not show.
const CREDENTIALS: [&str; 4] = [
    "authorization",
    "proxy-authorization",
    "cookie",
    "set-cookie",
];

/// `v` with the values of credential headers replaced by what they were.
fn redacted(mut v: RequestView) -> RequestView {
    for (name, value) in v
        .request_headers
        .iter_mut()
        .chain(v.response_headers.iter_mut())
    {
        if CREDENTIALS.iter().any(|c| name.eq_ignore_ascii_case(c)) {
            *value = format!(
                "(hidden on the dashboard: {} bytes; `itproxy requests --json` shows it)",
                value.len()
            );
        }
    }
    v
}

impl Selection {
    fn keeps(&self, e: &Exchange) -> bool {
        match &self.route {
            Some(host) => e.route.as_ref().is_some_and(|r| r.host() == host),
            None => true,
        }
    }

    /// The kept requests selected, oldest first.
    pub fn list(&self, inspector: &Inspector) -> Vec<RequestView> {
        inspector
            .requests(self.since, self.limit, |e| self.keeps(e))
            .iter()
            .map(|e| self.view(e))
            .collect()
    }

    fn view(&self, e: &Exchange) -> RequestView {
        if self.redact {
            redacted(view(e))
        } else {
            view(e)
        }
    }

    /// The selected requests as JSON lines: those kept now, then each new one as it ends,
    /// until the reader goes away. A reader slower than the proxy misses the requests that
    /// left the ring before it read them (their ids are skipped).
    pub fn follow(
        self,
        inspector: Arc<Inspector>,
    ) -> impl futures_util::Stream<Item = Result<Vec<u8>, std::convert::Infallible>> {
        let first = self.list(&inspector);
        let since = first
            .last()
            .map_or(inspector.last_id().max(self.since), |v| v.id);
        let first = lines(&first);
        let state = (self, inspector, since, Some(first));
        futures_util::stream::unfold(state, |(sel, inspector, since, first)| async move {
            if let Some(first) = first.filter(|f| !f.is_empty()) {
                return Some((Ok(first), (sel, inspector, since, None)));
            }
            inspector.wait_past(since, FOLLOW_TICK).await;
            // Requests that end close together go in one chunk: a follower wakes at most
            // this often, however busy the proxy.
            tokio::time::sleep(FOLLOW_BATCH).await;
            let next = inspector.last_id();
            // Up to `next` only: a request recorded meanwhile comes in the next round.
            let found: Vec<RequestView> = inspector
                .requests(since, usize::MAX, |e| e.id <= next && sel.keeps(e))
                .iter()
                .map(|e| sel.view(e))
                .collect();
            let mut chunk = lines(&found);
            if chunk.is_empty() {
                // A blank line when nothing came (readers skip it): a reader that left is
                // found by the write, and the connection does not look dead to proxies.
                chunk.push(b'\n');
            }
            Some((Ok(chunk), (sel, inspector, next.max(since), None)))
        })
    }
}

fn lines(views: &[RequestView]) -> Vec<u8> {
    let mut out = Vec::new();
    for v in views {
        serde_json::to_writer(&mut out, v).expect("a view serializes");
        out.push(b'\n');
    }
    out
}

/// Writes every request the proxy answers to `file` as one JSON line (the API's fields),
/// appending, until `stop`. It follows the inspector's ring: when more requests end between two
/// writes than the ring keeps, a line `{"missed": N, "after": ID}` says how many were not
/// written.
pub async fn write_access_log(
    inspector: Arc<Inspector>,
    file: std::fs::File,
    stop: tokio_util::sync::CancellationToken,
) {
    use std::io::Write as _;
    let mut out = file;
    // The length after the last whole batch: a write cut off (a full disk) is taken back to
    // it, so the log never holds half a line, and the batch is written again later.
    let mut len = out.metadata().map_or(0, |m| m.len());
    let mut failing = false;
    let mut since = inspector.last_id();
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = inspector.wait_past(since, Duration::from_secs(1)) => {}
        }
        let next = inspector.last_id();
        if next == since {
            continue;
        }
        let found = inspector.requests(since, usize::MAX, |e| e.id <= next);
        let mut lines = Vec::new();
        let first = found.first().map_or(next + 1, |e| e.id);
        if first > since + 1 {
            let missed = serde_json::json!({"missed": first - since - 1, "after": since});
            lines.extend_from_slice(missed.to_string().as_bytes());
            lines.push(b'\n');
        }
        lines.extend(self::lines(&found.iter().map(view).collect::<Vec<_>>()));
        if let Err(e) = out.write_all(&lines) {
            if !failing {
                tracing::warn!(error = %e, "cannot write the access log; trying again as requests come");
                failing = true;
            }
            let _ = out.set_len(len);
            // Not past `since`: the wait would return at once; wait a second instead.
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
            continue;
        }
        if failing {
            tracing::info!("the access log is written again");
            failing = false;
        }
        len += lines.len() as u64;
        since = next;
    }
}

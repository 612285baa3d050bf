//! The two loopback servers a mocked route goes to: the [`start_recorder`] forwards each
//! request to the route's target and saves the exchange; the [`start_replayer`] answers from
//! a recording (see `matching`) without any backend.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;

use crate::matching::{Matched, Matcher};
use crate::recording::{Exchange, Origin, RecordedRequest, RecordedResponse, Recording};
use crate::Error;

/// The largest request body a mock reads.
pub const MAX_REQUEST_BODY: usize = 16 * 1024 * 1024;
/// The largest response body a recorder keeps.
pub const MAX_RESPONSE_BODY: usize = 64 * 1024 * 1024;

/// Headers about one connection, never passed on.
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
    "content-length",
];

/// A mock server, serving until [`Running::stop`] (or dropped).
pub struct Running {
    addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Running {
    /// Where it listens (loopback, a port of its own).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops it: requests in flight finish.
    pub fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

async fn serve(app: axum::Router) -> Result<Running, Error> {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
        .await
        .map_err(Error::Listen)?;
    let addr = listener.local_addr().map_err(Error::Listen)?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = stopped.await;
            })
            .await;
        if let Err(e) = served {
            tracing::warn!(error = %e, "a mock server stopped");
        }
    });
    Ok(Running {
        addr,
        stop: Some(stop),
    })
}

async fn read_body(body: Body, limit: usize) -> Result<Bytes, String> {
    let limited = http_body_util::Limited::new(body, limit);
    limited
        .collect()
        .await
        .map(|c| c.to_bytes())
        .map_err(|e| e.to_string())
}

/// A request's body, read whole up to [`MAX_REQUEST_BODY`], or the 413 that says why not.
async fn request_body(body: Body) -> Result<Bytes, Response> {
    read_body(body, MAX_REQUEST_BODY).await.map_err(|e| {
        text(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the request body cannot be read whole: {e}"),
        )
    })
}

fn text(status: StatusCode, message: String) -> Response {
    (
        status,
        [(http::header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        message + "\n",
    )
        .into_response()
}

/// Records what goes to `target` (an `http://` address) in `dir`.
struct Recorder {
    origin: Origin,
    target: SocketAddr,
    recording: Mutex<Recording>,
}

/// Starts a recorder: every request is sent to `target` (plain HTTP at that address; the Host
/// header the client sent is kept) and answered with its response, and the exchange is saved
/// in `dir` (created if needed; exchanges already there are kept, new ones numbered after).
pub async fn start_recorder(
    dir: &Path,
    origin: Origin,
    target: SocketAddr,
) -> Result<Running, Error> {
    let (d, o) = (dir.to_path_buf(), origin.clone());
    let recording = tokio::task::spawn_blocking(move || Recording::create(&d, o))
        .await
        .map_err(|e| Error::Listen(std::io::Error::other(e)))??;
    let recorder = Arc::new(Recorder {
        origin,
        target,
        recording: Mutex::new(recording),
    });
    let app = axum::Router::new().fallback(record).with_state(recorder);
    serve(app).await
}

async fn record(State(r): State<Arc<Recorder>>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let body = match request_body(body).await {
        Ok(b) => b,
        Err(refused) => return refused,
    };
    let path_and_query = parts
        .uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_string();
    let (status, headers, answer) =
        match forward(r.target, &parts, &path_and_query, body.clone()).await {
            Ok(x) => x,
            Err(e) => {
                return text(
                    StatusCode::BAD_GATEWAY,
                    format!(
                        "recording {}: its target {} failed: {e}",
                        r.origin.host, r.origin.target
                    ),
                )
            }
        };
    let exchange = Exchange {
        request: RecordedRequest::new(
            parts.method.as_str(),
            &path_and_query,
            &parts.headers,
            &body,
        ),
        response: RecordedResponse::new(status.as_u16(), &headers, &answer),
    };
    // Files are written off the runtime that serves the control API too.
    let recorder = r.clone();
    let saved = tokio::task::spawn_blocking(move || {
        let mut recording = recorder.recording.lock().unwrap_or_else(|e| e.into_inner());
        recording.save(&exchange)
    })
    .await;
    match saved {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => tracing::warn!(error = %e, "an exchange could not be recorded"),
        Err(e) => tracing::warn!(error = %e, "an exchange could not be recorded"),
    }
    let mut resp = Response::new(Body::from(answer));
    *resp.status_mut() = status;
    copy_headers(&headers, resp.headers_mut());
    resp
}

fn copy_headers(from: &HeaderMap, to: &mut HeaderMap) {
    for (name, value) in from {
        if !HOP_BY_HOP.contains(&name.as_str()) {
            to.append(name.clone(), value.clone());
        }
    }
}

/// One request to `target` on a connection of its own; the response read whole.
async fn forward(
    target: SocketAddr,
    parts: &http::request::Parts,
    path_and_query: &str,
    body: Bytes,
) -> Result<(StatusCode, HeaderMap, Bytes), String> {
    let stream = tokio::net::TcpStream::connect(target)
        .await
        .map_err(|e| e.to_string())?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let mut req = http::Request::builder()
        .method(parts.method.clone())
        .uri(path_and_query)
        .body(http_body_util::Full::new(body))
        .map_err(|e| e.to_string())?;
    copy_headers(&parts.headers, req.headers_mut());
    let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
    let (parts, body) = resp.into_parts();
    let limited = http_body_util::Limited::new(body, MAX_RESPONSE_BODY);
    let body = limited
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok((parts.status, parts.headers, body))
}

/// Answers from a recording.
struct Replayer {
    recording: Recording,
    matcher: Matcher,
}

/// Starts a replayer over the recording in `dir`; it needs at least one exchange.
pub async fn start_replayer(dir: &Path) -> Result<Running, Error> {
    let d = dir.to_path_buf();
    let recording = tokio::task::spawn_blocking(move || Recording::load(&d))
        .await
        .map_err(|e| Error::Listen(std::io::Error::other(e)))??;
    if recording.exchanges.is_empty() {
        return Err(Error::Empty(dir.to_path_buf()));
    }
    let matcher = Matcher::new(recording.exchanges.iter().map(|(_, e)| e));
    let app = axum::Router::new()
        .fallback(replay)
        .with_state(Arc::new(Replayer { recording, matcher }));
    serve(app).await
}

async fn replay(State(r): State<Arc<Replayer>>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let body = match request_body(body).await {
        Ok(b) => b,
        Err(refused) => return refused,
    };
    let path = parts.uri.path();
    let query = parts.uri.query().unwrap_or("");
    match r.matcher.find(parts.method.as_str(), path, query, &body) {
        Matched::Found(i) => {
            let recorded = &r.recording.exchanges[i].1.response;
            let mut resp = Response::new(Body::from(recorded.body.bytes()));
            *resp.status_mut() = StatusCode::from_u16(recorded.status).unwrap_or(StatusCode::OK);
            for (name, value) in &recorded.headers {
                if let (Ok(n), Ok(v)) = (
                    HeaderName::try_from(name.as_str()),
                    HeaderValue::try_from(value.as_str()),
                ) {
                    if !HOP_BY_HOP.contains(&n.as_str()) {
                        resp.headers_mut().append(n, v);
                    }
                }
            }
            resp
        }
        Matched::Missed(near) => {
            let asked = if query.is_empty() {
                format!("{} {path}", parts.method)
            } else {
                format!("{} {path}?{query}", parts.method)
            };
            let near: Vec<serde_json::Value> = near
                .iter()
                .map(|i| {
                    let (file, e) = &r.recording.exchanges[*i];
                    serde_json::json!({
                        "request": e.request.line(),
                        "file": file.file_name().map(|f| f.to_string_lossy().into_owned()),
                    })
                })
                .collect();
            let body = serde_json::json!({
                "error": "no_recorded_exchange",
                "message": format!(
                    "the mock recorded in {} has no exchange for {asked}; it matches the method and path, \
                     then prefers the same query and body; record it with `itproxy route NAME --record DIR` \
                     or add a file",
                    r.recording.dir.display()
                ),
                "request": asked,
                "near_misses": near,
            });
            (
                StatusCode::NOT_FOUND,
                [(http::header::CONTENT_TYPE, "application/json")],
                serde_json::to_string_pretty(&body).expect("json") + "\n",
            )
                .into_response()
        }
    }
}

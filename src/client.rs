//! The CLI's side of the control API: one HTTP/1.1 request per call over the Unix socket.

use std::path::{Path, PathBuf};
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::Request;
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;

use itproxy_daemon::api::ErrorBody;

/// How long one call may take.
const TIMEOUT: Duration = Duration::from_secs(30);

/// A failed call, worded for the CLI's user.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No daemon answers on the socket.
    #[error(
        "no itproxy daemon is running for the state directory {} (cannot connect to {}: {error}); \
         start one with `itproxy up`, or pass the daemon's --state-dir",
        state_dir.display(), socket.display()
    )]
    NotRunning {
        /// The state directory.
        state_dir: PathBuf,
        /// The socket tried.
        socket: PathBuf,
        /// Why the connection failed.
        error: std::io::Error,
    },
    /// The daemon answered with an error.
    #[error("{message}")]
    Api {
        /// HTTP status.
        status: u16,
        /// Stable error code.
        code: String,
        /// The daemon's explanation.
        message: String,
    },
    /// The exchange itself failed.
    #[error("talking to the itproxy daemon on {socket} failed: {message}")]
    Protocol {
        /// The socket.
        socket: PathBuf,
        /// What failed.
        message: String,
    },
}

/// A client for the daemon behind one state directory.
pub struct Client {
    state_dir: PathBuf,
    socket: PathBuf,
}

impl Client {
    /// A client for the daemon whose state directory is `state_dir`.
    pub fn new(state_dir: &Path) -> Self {
        Client {
            state_dir: state_dir.to_path_buf(),
            socket: itproxy_daemon::StateDir::new(state_dir).control_socket(),
        }
    }

    /// Sends one request and decodes the answer.
    pub async fn call<T: DeserializeOwned>(
        &self,
        method: http::Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<T, ClientError> {
        self.call_within(TIMEOUT, method, path, body).await
    }

    /// Like [`Client::call`], for requests that take longer (an app start with `--wait`).
    pub async fn call_within<T: DeserializeOwned>(
        &self,
        timeout: Duration,
        method: http::Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<T, ClientError> {
        match tokio::time::timeout(timeout, self.exchange(method, path, body)).await {
            Ok(r) => r,
            Err(_) => Err(self.protocol(format!("no answer within {}s", timeout.as_secs()))),
        }
    }

    /// Sends a GET whose answer is JSON lines that keep coming (`?follow=true`) and hands
    /// each line to `each` as it arrives (blank lines, the daemon's keep-alives, skipped),
    /// until the daemon ends the answer or `each` returns false.
    pub async fn follow_lines(
        &self,
        path: &str,
        mut each: impl FnMut(&[u8]) -> bool,
    ) -> Result<(), ClientError> {
        let mut sender = self.connect().await?;
        let req = Request::builder()
            .uri(path)
            .header(http::header::HOST, "itproxy")
            .body(Full::new(Bytes::new()))
            .map_err(|e| self.protocol(e.to_string()))?;
        let resp = tokio::time::timeout(TIMEOUT, sender.send_request(req))
            .await
            .map_err(|_| self.protocol(format!("no answer within {}s", TIMEOUT.as_secs())))?
            .map_err(|e| self.protocol(e.to_string()))?;
        let status = resp.status();
        let mut body = resp.into_body();
        if !status.is_success() {
            let bytes = body
                .collect()
                .await
                .map_err(|e| self.protocol(e.to_string()))?
                .to_bytes();
            return Err(match serde_json::from_slice::<ErrorBody>(&bytes) {
                Ok(e) => ClientError::Api {
                    status: status.as_u16(),
                    code: e.error.code,
                    message: e.error.message,
                },
                Err(_) => self.protocol(format!("HTTP {status}")),
            });
        }
        let mut pending: Vec<u8> = Vec::new();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| self.protocol(e.to_string()))?;
            let Some(data) = frame.data_ref() else {
                continue;
            };
            pending.extend_from_slice(data);
            while let Some(end) = pending.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = pending.drain(..=end).collect();
                let line = line.trim_ascii();
                if !line.is_empty() && !each(line) {
                    return Ok(());
                }
            }
        }
        Ok(())
    }

    /// A connection to the daemon's socket, ready for a request.
    async fn connect(
        &self,
    ) -> Result<hyper::client::conn::http1::SendRequest<Full<Bytes>>, ClientError> {
        let stream = tokio::net::UnixStream::connect(&self.socket)
            .await
            .map_err(|error| ClientError::NotRunning {
                state_dir: self.state_dir.clone(),
                socket: self.socket.clone(),
                error,
            })?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| self.protocol(e.to_string()))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(sender)
    }

    fn protocol(&self, message: impl Into<String>) -> ClientError {
        ClientError::Protocol {
            socket: self.socket.clone(),
            message: message.into(),
        }
    }

    async fn exchange<T: DeserializeOwned>(
        &self,
        method: http::Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<T, ClientError> {
        let mut sender = self.connect().await?;
        let payload = body.map(|b| b.to_string()).unwrap_or_default();
        let req = Request::builder()
            .method(method)
            .uri(path)
            .header(http::header::HOST, "itproxy")
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(payload)))
            .map_err(|e| self.protocol(e.to_string()))?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| self.protocol(e.to_string()))?;
        let status = resp.status();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| self.protocol(e.to_string()))?
            .to_bytes();
        if status.is_success() {
            serde_json::from_slice(&bytes).map_err(|e| {
                self.protocol(format!(
                    "unexpected answer ({e}); is the daemon the same version?"
                ))
            })
        } else {
            match serde_json::from_slice::<ErrorBody>(&bytes) {
                Ok(e) => Err(ClientError::Api {
                    status: status.as_u16(),
                    code: e.error.code,
                    message: e.error.message,
                }),
                Err(_) => Err(self.protocol(format!(
                    "HTTP {status}: {}",
                    String::from_utf8_lossy(&bytes).trim()
                ))),
            }
        }
    }
}

//! Test harness: the real `itproxy` binary on loopback with a temporary state directory, real
//! HTTP/WebSocket backends on loopback, and real clients. itproxy binds port 0 and the harness
//! reads the ports it got from its `listening for ... on ADDR` lines, so no test races another
//! for a port.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::net::{TcpListener, TcpStream};

pub const BIN: &str = env!("CARGO_BIN_EXE_itproxy");

/// A port nobody listens on right now: for an upstream that is down, or a name that must be
/// unique. (itproxy itself binds port 0; see `Itproxy::start_with`.)
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The first loopback address a start-up log says itproxy listens on for `proto`
/// (`listening for HTTP on 127.0.0.1:41234`).
fn listening(log: &str, proto: &str) -> SocketAddr {
    let marker = format!("listening for {proto} on ");
    log.lines()
        .filter_map(|l| l.split_once(&marker))
        .filter_map(|(_, rest)| rest.split_whitespace().next()?.parse::<SocketAddr>().ok())
        .find(|a| a.ip().is_loopback())
        .unwrap_or_else(|| panic!("no `{marker}` line in the log:\n{log}"))
}

/// A running `itproxy up`, stopped (SIGTERM, then SIGKILL) when dropped.
pub struct Itproxy {
    pub dir: tempfile::TempDir,
    pub http: SocketAddr,
    pub https: SocketAddr,
    pub dns: SocketAddr,
    extra: Vec<String>,
    child: Option<Child>,
    starts: usize,
}

impl Itproxy {
    /// Starts itproxy with default settings on a free port.
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// Starts itproxy with extra `up` arguments (e.g. `--config FILE`), on ports it picks.
    pub fn start_with(extra: &[&str]) -> Self {
        Self::start_in(tempfile::tempdir().unwrap(), extra)
    }

    /// Starts itproxy with its state in `dir` (e.g. on a small file system of the test's).
    pub fn start_in(dir: tempfile::TempDir, extra: &[&str]) -> Self {
        // Port 0 the first time; a restart asks for the ports it had.
        let any = SocketAddr::from(([127, 0, 0, 1], 0));
        let (http, https, dns) = (any, any, any);
        let mut p = Itproxy {
            dir,
            http,
            https,
            dns,
            extra: extra.iter().map(|s| s.to_string()).collect(),
            child: None,
            starts: 0,
        };
        p.launch();
        p
    }

    /// Tests never forward DNS beyond loopback: without an explicit `--dns-upstream`, a dead
    /// loopback port stands in for the system's resolvers.
    fn default_upstream(&self) -> Vec<String> {
        if self.extra.iter().any(|a| a == "--dns-upstream") {
            return vec![];
        }
        vec![
            "--dns-upstream".into(),
            format!("127.0.0.1:{}", free_port()),
        ]
    }

    /// CPU time (user and system, all threads) the daemon has used so far (Linux).
    pub fn cpu_time(&self) -> Duration {
        let pid = self.child.as_ref().expect("itproxy runs").id();
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        // Fields 14 and 15 (utime, stime), counted after the parenthesised command name.
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .unwrap()
            .1
            .split_whitespace()
            .collect();
        let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
        let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
        Duration::from_millis(ticks * 1000 / per_second)
    }

    pub fn state_dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join(format!("itproxy-{}.log", self.starts))
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    fn launch(&mut self) {
        self.starts += 1;
        let log = std::fs::File::create(self.log_path()).unwrap();
        let child = Command::new(BIN)
            .arg("--state-dir")
            .arg(self.dir.path())
            .args([
                "up",
                "--http",
                &self.http.to_string(),
                "--https",
                &self.https.to_string(),
                "--dns",
                &self.dns.to_string(),
            ])
            .args(&self.extra)
            .args(self.default_upstream())
            .env_remove("RUST_LOG")
            .env_remove("ITPROXY_CONFIG")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn itproxy");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let log = self.log();
            if log.contains("itproxy is ready") {
                self.http = listening(&log, "HTTP");
                self.https = listening(&log, "HTTPS");
                self.dns = listening(&log, "DNS");
                return;
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!(
                    "itproxy exited with {status} during start-up:\n{}",
                    self.log()
                );
            }
            assert!(
                Instant::now() < deadline,
                "itproxy did not start:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Sends `signal` to the running daemon.
    pub fn signal(&self, signal: i32) {
        let child = self.child.as_ref().expect("itproxy runs");
        // SAFETY: kill(2) on the pid of a child this test started and has not reaped.
        unsafe { libc::kill(child.id() as i32, signal) };
    }

    /// SIGTERM and wait; panics unless it exits cleanly within 10 s.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                if let Some(status) = child.try_wait().unwrap() {
                    assert!(
                        status.success(),
                        "itproxy exited with {status}:\n{}",
                        self.log()
                    );
                    return;
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!(
                        "itproxy did not stop within 10 s of SIGTERM:\n{}",
                        self.log()
                    );
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }

    /// SIGKILL: no chance to clean up.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }

    /// Starts again on the same state directory and port.
    pub fn restart(&mut self) {
        self.stop();
        self.launch();
    }

    /// Starts again after a stop or kill.
    pub fn relaunch(&mut self) {
        assert!(self.child.is_none());
        self.launch();
    }

    /// Runs an `itproxy` client command against this daemon.
    pub fn cli(&self, args: &[&str]) -> Output {
        run_in(self.dir.path(), args)
    }

    /// Runs a client command that must succeed; returns its stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(
            out.status.success(),
            "itproxy {args:?} failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Runs a client command that must fail; returns its stderr.
    pub fn fails(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(
            !out.status.success(),
            "itproxy {args:?} unexpectedly succeeded"
        );
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        String::from_utf8(out.stderr).unwrap()
    }

    /// `itproxy routes --json`, as host -> target.
    pub fn routes(&self) -> BTreeMap<String, String> {
        let v: Value = serde_json::from_str(&self.ok(&["routes", "--json"])).unwrap();
        v.as_array()
            .unwrap()
            .iter()
            .map(|r| {
                (
                    r["host"].as_str().unwrap().into(),
                    r["target"].as_str().unwrap().into(),
                )
            })
            .collect()
    }

    /// A request to the control API with curl, as a script would send it.
    pub fn api(&self, method: &str, path: &str, body: Option<&str>) -> (u16, Value) {
        let sock = self.dir.path().join("control.sock");
        let mut cmd = Command::new("curl");
        cmd.args([
            "-sS",
            "-o",
            "-",
            "-w",
            "\n%{http_code}",
            "-X",
            method,
            "--unix-socket",
        ])
        .arg(&sock)
        .arg(format!("http://itproxy{path}"));
        if let Some(b) = body {
            cmd.args(["-H", "content-type: application/json", "--data-binary", b]);
        }
        let out = cmd.output().expect("curl is installed");
        let text = String::from_utf8(out.stdout).unwrap();
        let (body, code) = text.rsplit_once('\n').unwrap();
        let json = serde_json::from_str(body).unwrap_or(Value::String(body.to_string()));
        (code.parse().unwrap(), json)
    }
}

impl Drop for Itproxy {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            for _ in 0..500 {
                if child.try_wait().ok().flatten().is_some() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Runs `itproxy --state-dir DIR ARGS` to completion: client commands, and daemons expected to
/// refuse to start.
pub fn run_in(dir: &Path, args: &[&str]) -> Output {
    Command::new(BIN)
        .arg("--state-dir")
        .arg(dir)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// A loopback HTTP backend that answers every request with JSON naming itself and echoing
/// the request line and headers.
pub struct Backend {
    pub addr: SocketAddr,
    pub hits: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Backend {
    pub async fn start(name: &'static str) -> Backend {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let hits = Arc::new(AtomicUsize::new(0));
        let h = hits.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, peer)) = listener.accept().await else {
                    return;
                };
                let h = h.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                        h.fetch_add(1, Ordering::Relaxed);
                        answer(name, peer, req)
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Backend { addr, hits, task }
    }

    /// `127.0.0.1:PORT`, as a route target.
    pub fn target(&self) -> String {
        self.addr.to_string()
    }

    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::Relaxed)
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn answer(
    name: &'static str,
    peer: SocketAddr,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let headers: BTreeMap<String, String> = req
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let method = req.method().to_string();
    let uri = req.uri().to_string();
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let json = serde_json::json!({
        "backend": name,
        "method": method,
        "uri": uri,
        "peer": peer.to_string(),
        "headers": headers,
        "body_len": body.len(),
    });
    Ok(Response::builder()
        .header("content-type", "application/json")
        .header("x-backend", name)
        .body(Full::new(Bytes::from(json.to_string())))
        .unwrap())
}

/// A WebSocket backend echoing every text message as `NAME: message`.
pub async fn websocket_backend(name: &'static str) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    use futures_util::{SinkExt, StreamExt};
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
                    return;
                };
                while let Some(Ok(msg)) = ws.next().await {
                    if msg.is_text() {
                        let reply = format!("{name}: {}", msg.to_text().unwrap());
                        if ws.send(reply.into()).await.is_err() {
                            return;
                        }
                    } else if msg.is_close() {
                        return;
                    }
                }
            });
        }
    });
    (addr, task)
}

/// An HTTP/1.1 keepalive connection to the proxy, like one browser or load-generator socket.
pub struct Client {
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
}

/// What a client saw.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    /// The backend that answered (its `x-backend` header).
    pub fn backend(&self) -> Option<&str> {
        self.headers.get("x-backend").and_then(|v| v.to_str().ok())
    }
}

impl Client {
    pub async fn connect(addr: SocketAddr) -> Client {
        let stream = TcpStream::connect(addr).await.unwrap();
        stream.set_nodelay(true).unwrap();
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Client { sender }
    }

    pub async fn get(&mut self, host: &str, path: &str) -> Result<Reply, hyper::Error> {
        self.send(host, path, &[]).await
    }

    pub async fn send(
        &mut self,
        host: &str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Result<Reply, hyper::Error> {
        self.request("GET", host, path, headers, "").await
    }

    pub async fn post(
        &mut self,
        host: &str,
        path: &str,
        body: &str,
    ) -> Result<Reply, hyper::Error> {
        self.request("POST", host, path, &[], body).await
    }

    pub async fn request(
        &mut self,
        method: &str,
        host: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> Result<Reply, hyper::Error> {
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header("host", host);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req
            .body(Full::new(Bytes::copy_from_slice(body.as_bytes())))
            .unwrap();
        self.sender.ready().await?;
        let resp = self.sender.send_request(req).await?;
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = resp.into_body().collect().await?.to_bytes();
        Ok(Reply {
            status,
            headers,
            body,
        })
    }
}

/// One request on a fresh connection.
pub async fn get(proxy: SocketAddr, host: &str, path: &str) -> Reply {
    Client::connect(proxy).await.get(host, path).await.unwrap()
}

/// `curl` through the proxy with `--resolve`, as a user would type it; returns (status, body).
/// Async, so backends on the test's runtime keep serving while curl waits.
pub async fn curl(proxy: SocketAddr, url_host: &str, path: &str, extra: &[&str]) -> (u16, String) {
    let url = format!("http://{url_host}:{}{path}", proxy.port());
    let resolve = format!("{url_host}:{}:{}", proxy.port(), proxy.ip());
    let out = tokio::process::Command::new("curl")
        .args([
            "-sS",
            "-o",
            "-",
            "-w",
            "\n%{http_code}",
            "--resolve",
            &resolve,
        ])
        .args(extra)
        .arg(&url)
        .output()
        .await
        .expect("curl is installed");
    let text = String::from_utf8(out.stdout).unwrap();
    let (body, code) = text.rsplit_once('\n').unwrap();
    (code.parse().unwrap_or(0), body.to_string())
}

/// What a command printed, stdout then stderr.
pub fn output_text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Writes a config file into `dir` and returns its path.
pub fn write_config(dir: &Path, text: &str) -> PathBuf {
    let p = dir.join("itproxy.toml");
    std::fs::write(&p, text).unwrap();
    p
}

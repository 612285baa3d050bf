//! Readiness checks and logs.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use bollard::container::LogOutput;
use bollard::query_parameters::LogsOptionsBuilder;
use futures_util::{Stream, StreamExt};

use crate::apps::{AppSpec, Check, ErrorScan, Finding};
use crate::containers::Container;
use crate::{engine_err, Engine, Error};

/// How many of a container's last log lines a readiness failure shows.
pub const LOG_LINES_ON_FAILURE: usize = 20;
/// The pause after the first failed probe; it grows by half each time, up to [`POLL_MAX`].
const POLL_FIRST: Duration = Duration::from_millis(50);
/// The longest pause between probes.
const POLL_MAX: Duration = Duration::from_secs(1);

/// A line a container wrote.
#[derive(Debug, Clone, PartialEq)]
pub struct LogLine {
    /// Whether it went to stderr.
    pub stderr: bool,
    /// The line, without its newline.
    pub text: String,
    /// When the engine received it (Unix seconds), if it said.
    pub at: Option<f64>,
}

impl Engine {
    /// Waits until `app` is ready (its check passes on `container`, the endpoint checked),
    /// failing early if the container stops, and with its last log lines after the timeout.
    pub async fn wait_ready(
        &self,
        app: &AppSpec,
        container: &Container,
    ) -> Result<Duration, Error> {
        let started = Instant::now();
        let timeout = app.ready.timeout;
        let outcome = tokio::time::timeout(timeout, self.check_loop(app, container)).await;
        let reason = match outcome {
            Ok(Ok(())) => return Ok(started.elapsed()),
            Ok(Err(reason)) => reason,
            Err(_) => format!(
                "not ready after {} ({})",
                humantime_short(timeout),
                app.ready.check
            ),
        };
        Err(Error::NotReady {
            app: app.name.to_string(),
            container: container.name.clone(),
            reason,
            last_logs: self.last_lines(&container.id, LOG_LINES_ON_FAILURE).await,
        })
    }

    /// Runs the check until it passes; Err when it can no longer pass (the container stopped).
    async fn check_loop(&self, app: &AppSpec, container: &Container) -> Result<(), String> {
        if let Check::Log(re) = &app.ready.check {
            return self.wait_for_line(container, re).await;
        }
        let mut pause = POLL_FIRST;
        loop {
            let now = self
                .container(&container.id)
                .await
                .map_err(|e| e.to_string())?
                .ok_or("the container was removed")?;
            if !now.running() {
                return Err(format!(
                    "the container stopped ({})",
                    self.exit_status(&container.id).await
                ));
            }
            let ip = now
                .ip
                .ok_or("the container has no address on the environment's network")?;
            let passed = match &app.ready.check {
                Check::Running => true,
                Check::Tcp { port } => tcp_accepts(ip, *port).await,
                Check::Http {
                    port,
                    path,
                    status,
                    host,
                } => http_status(ip, *port, path, host).await == Some(*status),
                Check::DockerHealth => match self.health(&container.id).await? {
                    Some(h) if h == "healthy" => true,
                    Some(_) => false,
                    None => {
                        return Err(format!(
                            "docker_health is set but the image {} has no HEALTHCHECK",
                            app.image
                        ))
                    }
                },
                Check::Log(_) => unreachable!("handled above"),
            };
            if passed {
                return Ok(());
            }
            tokio::time::sleep(pause).await;
            // Quick for an app that is ready at once, gentle on one that takes its time
            // (each failed probe may be an error line in its log).
            pause = (pause * 3 / 2).min(POLL_MAX);
        }
    }

    async fn health(&self, id: &str) -> Result<Option<String>, String> {
        let c = self
            .docker
            .inspect_container(id, None)
            .await
            .map_err(|e| e.to_string())?;
        Ok(c.state
            .and_then(|s| s.health)
            .and_then(|h| h.status)
            .map(|s| s.to_string())
            .filter(|s| !s.is_empty() && s != "none"))
    }

    async fn exit_status(&self, id: &str) -> String {
        match self.docker.inspect_container(id, None).await {
            Ok(c) => {
                let s = c.state.unwrap_or_default();
                match (s.exit_code, s.error.filter(|e| !e.is_empty())) {
                    (_, Some(e)) => format!("error: {e}"),
                    (Some(code), None) => format!("exit code {code}"),
                    _ => "status unknown".into(),
                }
            }
            Err(e) => e.to_string(),
        }
    }

    /// Follows the container's output since its start until a line matches.
    async fn wait_for_line(&self, container: &Container, re: &regex::Regex) -> Result<(), String> {
        let since = container
            .started_at
            .as_deref()
            .and_then(unix_seconds)
            .unwrap_or(0);
        let mut lines = std::pin::pin!(self.logs(&container.id, since as f64, true, None));
        while let Some(line) = lines.next().await {
            match line {
                Ok(l) if re.is_match(&l.text) => return Ok(()),
                Ok(_) => {}
                Err(e) => return Err(e.to_string()),
            }
        }
        Err(format!(
            "the container stopped ({}) before a line matched /{}/",
            self.exit_status(&container.id).await,
            re.as_str()
        ))
    }

    /// The container's last `n` lines (empty if they cannot be read).
    pub async fn last_lines(&self, id: &str, n: usize) -> Vec<LogLine> {
        self.logs(id, 0.0, false, Some(n))
            .filter_map(|l| async move { l.ok() })
            .collect()
            .await
    }

    /// The errors `scan` finds in a container's output since `since` (Unix seconds, 0 for
    /// all): the `logs --errors` rule, shared by the CLI and the control API.
    pub async fn error_lines(
        &self,
        id: &str,
        since: f64,
        scan: &ErrorScan,
    ) -> Result<Vec<Finding>, Error> {
        let lines: Vec<LogLine> = self
            .logs(id, since, false, None)
            .collect::<Vec<_>>()
            .await
            .into_iter()
            .collect::<Result<_, _>>()?;
        Ok(scan.findings(lines.iter().map(|l| l.text.as_str())))
    }

    /// A container's output as lines (stdout and stderr), from `since` (Unix seconds with a
    /// fraction, 0 for all: the engine filters by whole seconds, the rest is cut here by each
    /// line's time), following new output if `follow`, or only the last `tail` lines.
    pub fn logs(
        &self,
        id: &str,
        since: f64,
        follow: bool,
        tail: Option<usize>,
    ) -> impl Stream<Item = Result<LogLine, Error>> + use<> {
        let since = if since.is_finite() {
            since.max(0.0)
        } else {
            0.0
        };
        let options = LogsOptionsBuilder::new()
            .stdout(true)
            .stderr(true)
            .follow(follow)
            .timestamps(true)
            .since(i32::try_from(since.floor() as i64).unwrap_or(0))
            .tail(&tail.map_or("all".to_string(), |n| n.to_string()))
            .build();
        let action = format!("read the logs of {id}");
        let chunks = self.docker.logs(id, Some(options));
        // Output arrives as the engine's messages, each prefixed with its time; a message need
        // not end at a newline (long lines are split): keep a partial line per stream, with the
        // time of its first part, until its end comes.
        let mut partial: [(Vec<u8>, Option<f64>); 2] = [(Vec::new(), None), (Vec::new(), None)];
        chunks
            .map(Some)
            .chain(futures_util::stream::once(async { None }))
            .flat_map(move |chunk| {
                let mut out: Vec<Result<LogLine, Error>> = Vec::new();
                match chunk {
                    Some(Ok(chunk)) => {
                        let stderr = matches!(chunk, LogOutput::StdErr { .. });
                        let bytes = chunk.into_bytes();
                        let (at, text) = split_time(&bytes);
                        let (buf, started) = &mut partial[usize::from(stderr)];
                        if buf.is_empty() {
                            *started = at;
                        }
                        buf.extend_from_slice(text);
                        while let Some(nl) = buf.iter().position(|b| *b == b'\n') {
                            let line: Vec<u8> = buf.drain(..=nl).collect();
                            out.push(Ok(to_line(stderr, &line[..nl], *started)));
                            *started = at;
                        }
                    }
                    Some(Err(e)) => out.push(Err(engine_err(action.clone())(e))),
                    None => {
                        for (i, (buf, started)) in partial.iter_mut().enumerate() {
                            if !buf.is_empty() {
                                out.push(Ok(to_line(i == 1, buf, *started)));
                                buf.clear();
                            }
                        }
                    }
                }
                out.retain(|l| !matches!(l, Ok(LogLine { at: Some(t), .. }) if *t < since));
                futures_util::stream::iter(out)
            })
    }
}

/// A message's time and the rest: `2026-11-25T18:00:01.123456789Z text` -> (time, `text`).
fn split_time(message: &[u8]) -> (Option<f64>, &[u8]) {
    let Some(space) = message.iter().take(40).position(|b| *b == b' ') else {
        return (None, message);
    };
    match std::str::from_utf8(&message[..space])
        .ok()
        .and_then(unix_time)
    {
        Some(t) => (Some(t), &message[space + 1..]),
        None => (None, message),
    }
}

fn to_line(stderr: bool, bytes: &[u8], at: Option<f64>) -> LogLine {
    let text = String::from_utf8_lossy(bytes);
    LogLine {
        stderr,
        text: text.strip_suffix('\r').unwrap_or(&text).to_string(),
        at,
    }
}

async fn tcp_accepts(ip: IpAddr, port: u16) -> bool {
    matches!(
        tokio::time::timeout(
            Duration::from_secs(1),
            tokio::net::TcpStream::connect(SocketAddr::new(ip, port))
        )
        .await,
        Ok(Ok(_))
    )
}

/// The status of `GET path` (HTTP/1.1, with `host` as Host), if one comes back.
async fn http_status(ip: IpAddr, port: u16, path: &str, host: &str) -> Option<u16> {
    use http_body_util::Empty;
    let attempt = async {
        let stream = tokio::net::TcpStream::connect(SocketAddr::new(ip, port))
            .await
            .ok()?;
        let (mut send, conn) = hyper::client::conn::http1::handshake::<_, Empty<bytes::Bytes>>(
            hyper_util::rt::TokioIo::new(stream),
        )
        .await
        .ok()?;
        tokio::spawn(conn);
        let req = http::Request::get(path)
            .header(http::header::HOST, host)
            .header(http::header::USER_AGENT, "itproxy-readiness")
            .body(Empty::new())
            .ok()?;
        let resp = send.send_request(req).await.ok()?;
        Some(resp.status().as_u16())
    };
    tokio::time::timeout(Duration::from_secs(2), attempt)
        .await
        .ok()
        .flatten()
}

/// [`unix_seconds`] with the fraction of a second Docker writes (`.123456789`).
pub fn unix_time(rfc3339: &str) -> Option<f64> {
    let whole = unix_seconds(rfc3339)?;
    let fraction = rfc3339
        .get(19..)
        .and_then(|r| r.strip_prefix('.'))
        .map(|r| r.trim_end_matches(|c: char| !c.is_ascii_digit()))
        .filter(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|d| format!("0.{d}").parse::<f64>().ok())
        .unwrap_or(0.0);
    Some(whole as f64 + fraction)
}

/// Seconds since the epoch of an RFC 3339 time as Docker writes it (`2026-11-25T18:00:01.123Z`).
pub fn unix_seconds(rfc3339: &str) -> Option<i64> {
    let (date, time) = rfc3339.split_once('T')?;
    let mut d = date.split('-').map(|p| p.parse::<i64>());
    let (y, m, day) = (d.next()?.ok()?, d.next()?.ok()?, d.next()?.ok()?);
    let hms: Vec<i64> = time
        .get(..8)?
        .split(':')
        .map(|p| p.parse::<i64>())
        .collect::<Result<_, _>>()
        .ok()?;
    if hms.len() != 3 {
        return None;
    }
    // Days from civil (Howard Hinnant's algorithm); Docker writes UTC.
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146097 + doe - 719468;
    Some(days * 86400 + hms[0] * 3600 + hms[1] * 60 + hms[2])
}

fn humantime_short(d: Duration) -> String {
    if d < Duration::from_secs(1) {
        format!("{}ms", d.as_millis())
    } else if d.subsec_millis() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{:.1}s", d.as_secs_f64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_times() {
        assert_eq!(unix_seconds("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(
            unix_seconds("2026-11-25T18:34:30.123456789Z"),
            Some(1795631670)
        );
        assert_eq!(unix_seconds("garbage"), None);
        assert_eq!(unix_time("2026-11-25T18:34:30.25Z"), Some(1795631670.25));
        assert_eq!(unix_time("2026-11-25T18:34:30Z"), Some(1795631670.0));
    }

    #[test]
    fn messages_lose_their_time_prefix() {
        let (at, text) = split_time(b"2026-11-25T18:34:30.5Z hello world\n");
        assert_eq!(at, Some(1795631670.5));
        assert_eq!(text, b"hello world\n");
        let (at, text) = split_time(b"no time here\n");
        assert_eq!((at, text), (None, &b"no time here\n"[..]));
    }
}

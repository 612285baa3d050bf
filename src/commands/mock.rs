//! `itproxy mock diff DIR`: each recorded request sent again to the live backend, and what
//! changed since the recording (status, headers, the JSON body's shape) reported.

use std::io::Write;
use std::path::Path;

use anyhow::{bail, Context};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use itproxy_mock::diff;
use itproxy_mock::recording::{Exchange, Recording};

use crate::cli::MockCommand;

/// Runs `itproxy mock ...`.
pub async fn run(cmd: MockCommand) -> anyhow::Result<()> {
    match cmd {
        MockCommand::Diff { dir, target } => diff_dir(&dir, target.as_deref()).await,
    }
}

async fn diff_dir(dir: &Path, target: Option<&str>) -> anyhow::Result<()> {
    let recording = Recording::load(dir)?;
    if recording.exchanges.is_empty() {
        bail!(
            "{} holds no recorded exchange; record some with `itproxy route NAME --record {}`",
            dir.display(),
            dir.display()
        );
    }
    let target = match (target, &recording.origin) {
        (Some(t), _) => t.to_string(),
        (None, Some(o)) => o.target.clone(),
        (None, None) => bail!(
            "{} does not say which backend it was recorded from; give one with --target http://HOST:PORT",
            dir.display()
        ),
    };
    let authority = target
        .strip_prefix("http://")
        .with_context(|| {
            format!("the target {target} is not http://HOST:PORT (only plain HTTP is replayed)")
        })?
        .trim_end_matches('/');
    let host = recording
        .origin
        .as_ref()
        .map_or(authority.to_string(), |o| o.host.clone());
    let mut out = crate::out::stdout();
    writeln!(
        out,
        "replaying {} recorded exchanges of {} against {target}",
        recording.exchanges.len(),
        dir.display()
    )?;
    let mut changed = 0;
    for (file, exchange) in &recording.exchanges {
        let name = file
            .file_name()
            .map_or_else(String::new, |f| f.to_string_lossy().into_owned());
        let line = exchange.request.line();
        let changes = match send(authority, &host, exchange).await {
            Ok((status, headers, body)) => {
                let was = &exchange.response;
                diff::compare(
                    (was.status, &was.headers, &was.body.bytes()),
                    (status, &headers, &body),
                )
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
            }
            Err(e) => vec![format!("no answer: {e}")],
        };
        if changes.is_empty() {
            writeln!(out, "  {name}  {line}: unchanged")?;
        } else {
            changed += 1;
            writeln!(out, "  {name}  {line}:")?;
            for c in changes {
                writeln!(out, "      {c}")?;
            }
        }
    }
    if changed > 0 {
        bail!(
            "{changed} of {} recorded exchanges changed at {target}",
            recording.exchanges.len()
        );
    }
    writeln!(out, "no change")?;
    Ok(())
}

/// One recorded request sent to `authority` with Host `host`; the answer read whole.
async fn send(
    authority: &str,
    host: &str,
    exchange: &Exchange,
) -> anyhow::Result<(u16, Vec<(String, String)>, Bytes)> {
    let stream = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        tokio::net::TcpStream::connect(authority),
    )
    .await
    .context("connecting timed out")?
    .with_context(|| format!("cannot connect to {authority}"))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let r = &exchange.request;
    let uri = if r.query.is_empty() {
        r.path.clone()
    } else {
        format!("{}?{}", r.path, r.query)
    };
    let mut req = hyper::Request::builder()
        .method(r.method.as_str())
        .uri(uri)
        .header(http::header::HOST, host);
    for (n, v) in &r.headers {
        req = req.header(n.as_str(), v.as_str());
    }
    let req = req.body(Full::new(Bytes::from(r.body.bytes())))?;
    let resp = tokio::time::timeout(std::time::Duration::from_secs(30), sender.send_request(req))
        .await
        .context("no answer within 30 s")??;
    let status = resp.status().as_u16();
    let headers = resp
        .headers()
        .iter()
        .map(|(n, v)| {
            (
                n.to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let body = resp.into_body().collect().await?.to_bytes();
    Ok((status, headers, body))
}

//! `itproxy requests`: the request inspector's list, printed as a table or JSON lines.

use std::io::Write;
use std::path::Path;

use http::Method;
use itproxy_daemon::api::RequestView;

use crate::cli::RequestsArgs;
use crate::client::Client;

/// Prints the latest requests, then, with --follow, each new one as it ends.
pub async fn run(args: RequestsArgs, state_dir: &Path) -> anyhow::Result<()> {
    let mut path = format!("/v1/requests?limit={}", args.limit);
    if let Some(route) = &args.route {
        if route.trim().is_empty() {
            anyhow::bail!("the route name is empty; give an app name such as `api`");
        }
        path.push_str("&route=");
        path.push_str(&encode(route));
    }
    let client = Client::new(state_dir);
    let mut out = std::io::stdout().lock();
    if !args.json {
        writeln!(out, "{}", header())?;
    }
    if !args.follow {
        let views: Vec<RequestView> = client.call(Method::GET, &path, None).await?;
        for v in &views {
            print_one(&mut out, v, args.json)?;
        }
        return Ok(());
    }
    path.push_str("&follow=true");
    let mut failed = None;
    client
        .follow_lines(&path, |line| {
            let printed = match serde_json::from_slice::<RequestView>(line) {
                Ok(v) => print_one(&mut out, &v, args.json),
                Err(e) => Err(anyhow::anyhow!(
                    "the daemon sent a request line this itproxy cannot read ({e}); is the \
                     daemon the same version?"
                )),
            };
            // A closed stdout (`| head`) ends the follow quietly.
            match printed {
                Ok(()) => true,
                Err(e) => {
                    let broken_pipe = e
                        .downcast_ref::<std::io::Error>()
                        .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe);
                    if !broken_pipe {
                        failed = Some(e);
                    }
                    false
                }
            }
        })
        .await?;
    match failed {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// A query value, percent-encoded; the daemon validates the name itself.
fn encode(value: &str) -> String {
    let mut s = String::new();
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            s.push(b as char);
        } else {
            s.push_str(&format!("%{b:02X}"));
        }
    }
    s
}

fn header() -> String {
    format!(
        "{:<12}  {:>3}  {:<7}  {:<24}  {:>9}  {:>8}  TARGET",
        "TIME", "ST", "METHOD", "HOST", "TIME(ms)", "BYTES"
    )
}

fn print_one(out: &mut impl Write, v: &RequestView, json: bool) -> anyhow::Result<()> {
    if json {
        serde_json::to_writer(&mut *out, v)?;
        writeln!(out)?;
    } else {
        writeln!(out, "{}", line(v))?;
    }
    out.flush()?;
    Ok(())
}

/// One request as a table row: the time of day (UTC), status ("-" when none was sent),
/// method, route, time taken, bytes sent, target, and why it failed if it did.
fn line(v: &RequestView) -> String {
    let time = v.time.get(11..23).unwrap_or(&v.time);
    let status = match v.status {
        0 => "-".to_string(),
        s => s.to_string(),
    };
    let host = v.route.as_deref().unwrap_or("-");
    let method = if v.method.is_empty() { "-" } else { &v.method };
    let mut row = format!(
        "{time:<12}  {status:>3}  {method:<7}  {host:<24}  {:>9.2}  {:>8}  {}",
        v.duration_ms, v.response_bytes, v.target
    );
    if let Some(error) = &v.error {
        row.push_str("  (");
        row.push_str(error);
        row.push(')');
    }
    row
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_row_says_what_a_user_looks_for() {
        let v = RequestView {
            id: 7,
            time: "2026-12-07T04:05:06.789Z".into(),
            protocol: "HTTP/1.1".into(),
            tls: false,
            client: Some("127.0.0.1".into()),
            route: Some("api.test".into()),
            upstream: Some("http://127.0.0.1:8000".into()),
            method: "GET".into(),
            target: "/v1/users?page=2".into(),
            status: 502,
            duration_ms: 1.234,
            upstream_ms: None,
            request_bytes: 80,
            response_bytes: 512,
            upstream_failed: true,
            error: Some("connection refused".into()),
            request_headers: vec![],
            response_headers: vec![],
        };
        let row = line(&v);
        assert!(
            row.starts_with("04:05:06.789  502  GET      api.test"),
            "{row}"
        );
        assert!(row.contains("1.23"), "{row}");
        assert!(
            row.ends_with("/v1/users?page=2  (connection refused)"),
            "{row}"
        );
        assert_eq!(encode("api test/ä"), "api%20test%2F%C3%A4");
    }
}

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
    let mut out = crate::out::stdout();
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
        let line = serde_json::to_string(v)?;
        writeln!(out, "{}", json_for_terminal(&line))?;
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
        v.duration_ms,
        v.response_bytes,
        printable(&v.target)
    );
    if let Some(error) = &v.error {
        row.push_str("  (");
        row.push_str(&printable(error));
        row.push(')');
    }
    row
}

/// Characters a terminal acts on rather than shows: controls (C0 and C1: escape sequences
/// that could rewrite the screen, line breaks that could fake a row) and the bidirectional
/// overrides that make text read other than it is.
fn acts_on_terminal(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// Text a client chose, safe for a terminal: what [`acts_on_terminal`] shown escaped.
fn printable(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if acts_on_terminal(c) {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// A JSON line safe for a terminal: serde_json leaves C1 controls and bidirectional overrides
/// as they are; written as `\uXXXX` escapes they mean the same to a JSON reader. (They can
/// only occur inside strings: everything else serde_json writes is ASCII.)
fn json_for_terminal(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    for c in line.chars() {
        if acts_on_terminal(c) && !c.is_ascii() {
            out.push_str(&format!("\\u{:04x}", c as u32));
        } else {
            out.push(c);
        }
    }
    out
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
            request_body: None,
            request_body_base64: None,
            response_body: None,
            response_body_base64: None,
            bodies_cut: false,
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
        assert_eq!(printable("/x\u{1b}[2J\nfake"), "/x\\u{1b}[2J\\nfake");
        assert_eq!(
            printable("/c1\u{9b}31m\u{202e}evil"),
            "/c1\\u{9b}31m\\u{202e}evil"
        );
        let line =
            serde_json::to_string(&serde_json::json!({"t": "/a\u{9b}b\u{202e}c é"})).unwrap();
        let safe = json_for_terminal(&line);
        assert_eq!(safe, "{\"t\":\"/a\\u009bb\\u202ec é\"}");
        let back: serde_json::Value = serde_json::from_str(&safe).unwrap();
        assert_eq!(back["t"], "/a\u{9b}b\u{202e}c é");
    }
}

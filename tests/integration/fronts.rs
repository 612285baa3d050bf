//! Conformance of the HTTP fronts: one table of requests, each sent through every front a user
//! can reach, asserting that the upstream sees the same request and the client the same
//! answer on all of them, and that both are what they should be.
//!
//! The fronts: itproxy's own HTTP/1.1 front on the plain port (`h1`), Pingora's pipeline alone
//! (`h1_front = false`, `pipeline`), the HTTP/1.1 front over TLS (`h1-tls`), and HTTP/2 over
//! TLS, which Pingora serves (`h2`). The client is curl, as a user would type it (from
//! 127.0.0.2 when it plays a trusted proxy); the upstream is a raw socket that records the
//! exact request head and body it receives.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::util::*;

/// A request as received by the upstream.
#[derive(Clone, PartialEq)]
struct Seen {
    method: String,
    target: String,
    /// Header names in lower case, values as sent; repeated names joined with ", ".
    headers: BTreeMap<String, String>,
    body: Vec<u8>,
}

/// Bodies shown by their length and first bytes: a 200 KB body would drown a failure.
impl std::fmt::Debug for Seen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let start = String::from_utf8_lossy(&self.body[..self.body.len().min(40)]);
        f.debug_struct("Seen")
            .field("method", &self.method)
            .field("target", &self.target)
            .field("headers", &self.headers)
            .field(
                "body",
                &format_args!("{} bytes: {start:?}", self.body.len()),
            )
            .finish()
    }
}

/// An upstream that records every request (head and body, de-chunked) and answers by path.
struct Recorder {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Recorder {
    async fn start() -> Recorder {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                tokio::spawn(record(tcp, s.clone()));
            }
        });
        Recorder { addr, seen, task }
    }

    /// The requests received since the last call.
    fn take(&self) -> Vec<Seen> {
        std::mem::take(&mut *self.seen.lock().unwrap())
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The answer to a request for `path` (the part before `?`).
fn answer(method: &str, path: &str) -> Vec<u8> {
    let fixed = |s: &str| s.as_bytes().to_vec();
    match path {
        "/head" => fixed("HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-Kind: head\r\n\r\n"),
        "/no-content" => fixed("HTTP/1.1 204 No Content\r\nX-Kind: none\r\n\r\n"),
        "/not-modified" => fixed("HTTP/1.1 304 Not Modified\r\nETag: \"v1\"\r\n\r\n"),
        "/chunked" => fixed(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-Kind: chunked\r\n\r\n\
             5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
        ),
        "/early" => fixed(
            "HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n\
             HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nlater",
        ),
        "/hop" => fixed(
            "HTTP/1.1 200 OK\r\nConnection: X-Internal\r\nX-Internal: secret\r\n\
             Keep-Alive: timeout=5\r\nX-Public: yes\r\nContent-Length: 2\r\n\r\nok",
        ),
        _ if method == "HEAD" => fixed("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n"),
        _ => {
            let body = format!("{method} {path}");
            format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nX-Kind: echo\r\n\r\n{body}",
                body.len()
            )
            .into_bytes()
        }
    }
}

async fn record(mut tcp: TcpStream, seen: Arc<Mutex<Vec<Seen>>>) {
    let mut buf = Vec::new();
    loop {
        let Some(end) = read_until(&mut tcp, &mut buf, b"\r\n\r\n").await else {
            return;
        };
        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
        buf.drain(..end + 4);
        let mut lines = head.split("\r\n");
        let mut first = lines.next().unwrap_or("").split(' ');
        let (method, target) = (
            first.next().unwrap_or("").to_string(),
            first.next().unwrap_or("").to_string(),
        );
        let mut headers: BTreeMap<String, String> = BTreeMap::new();
        for l in lines {
            let Some((n, v)) = l.split_once(':') else {
                continue;
            };
            headers
                .entry(n.trim().to_ascii_lowercase())
                .and_modify(|old| {
                    old.push_str(", ");
                    old.push_str(v.trim())
                })
                .or_insert_with(|| v.trim().to_string());
        }
        let body = if headers.get("transfer-encoding").map(String::as_str) == Some("chunked") {
            let mut body = Vec::new();
            loop {
                let Some(end) = read_until(&mut tcp, &mut buf, b"\r\n").await else {
                    return;
                };
                let size_line = String::from_utf8_lossy(&buf[..end]).into_owned();
                buf.drain(..end + 2);
                let size = usize::from_str_radix(size_line.split(';').next().unwrap().trim(), 16)
                    .unwrap_or(0);
                if size == 0 {
                    // Trailers (none expected) end with an empty line.
                    let _ = read_until(&mut tcp, &mut buf, b"\r\n").await;
                    buf.drain(..2.min(buf.len()));
                    break body;
                }
                if !fill(&mut tcp, &mut buf, size + 2).await {
                    return;
                }
                body.extend(buf.drain(..size));
                buf.drain(..2);
            }
        } else {
            let n: usize = headers
                .get("content-length")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            if !fill(&mut tcp, &mut buf, n).await {
                return;
            }
            buf.drain(..n).collect()
        };
        let path = target.split('?').next().unwrap_or("").to_string();
        seen.lock().unwrap().push(Seen {
            method: method.clone(),
            target,
            headers,
            body,
        });
        if path == "/slow" {
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
        if tcp.write_all(&answer(&method, &path)).await.is_err() {
            return;
        }
    }
}

/// Reads into `buf` until it holds `marker`; where it starts. None if the peer closed.
async fn read_until(tcp: &mut TcpStream, buf: &mut Vec<u8>, marker: &[u8]) -> Option<usize> {
    loop {
        if let Some(at) = buf.windows(marker.len()).position(|w| w == marker) {
            return Some(at);
        }
        let mut chunk = [0u8; 16384];
        match tokio::time::timeout(Duration::from_secs(10), tcp.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => buf.extend_from_slice(&chunk[..n]),
            _ => return None,
        }
    }
}

/// Reads into `buf` until it holds `n` bytes; false if the peer closed first.
async fn fill(tcp: &mut TcpStream, buf: &mut Vec<u8>, n: usize) -> bool {
    while buf.len() < n {
        let mut chunk = [0u8; 16384];
        match tokio::time::timeout(Duration::from_secs(10), tcp.read(&mut chunk)).await {
            Ok(Ok(k)) if k > 0 => buf.extend_from_slice(&chunk[..k]),
            _ => return false,
        }
    }
    true
}

/// What the client got: interim statuses, the final status, its headers and the body.
#[derive(Clone, Debug, PartialEq)]
struct Got {
    interim: Vec<u16>,
    status: u16,
    headers: BTreeMap<String, String>,
    body: String,
}

/// One front: how curl reaches it.
struct Front {
    name: &'static str,
    /// The proxy's address for this front.
    addr: SocketAddr,
    /// `http` or `https`.
    scheme: &'static str,
    /// curl's protocol flag.
    flag: &'static str,
    /// The CA root to trust, for TLS.
    root: Option<String>,
}

impl Front {
    fn tls(&self) -> bool {
        self.scheme == "https"
    }

    fn h2(&self) -> bool {
        self.name == "h2"
    }

    /// Sends `req` with curl; what the client got.
    async fn send(&self, req: &Req) -> Got {
        let url = format!(
            "{}://{}:{}{}",
            self.scheme,
            req.host,
            self.addr.port(),
            req.path
        );
        let resolve = format!("{}:{}:{}", req.host, self.addr.port(), self.addr.ip());
        let mut cmd = tokio::process::Command::new("curl");
        cmd.args([
            "-sS",
            "-i",
            "--max-time",
            "10",
            self.flag,
            "--resolve",
            &resolve,
        ]);
        if let Some(root) = &self.root {
            cmd.args(["--cacert", root]);
        }
        if let Some(from) = req.from {
            cmd.args(["--interface", from]);
        }
        match req.method {
            "HEAD" => {
                cmd.arg("--head");
            }
            "GET" => {}
            m => {
                cmd.args(["-X", m]);
            }
        }
        for (n, v) in req.headers {
            // `Name:` with nothing after it: curl leaves out a header it would add.
            let h = if v.is_empty() {
                format!("{n}:")
            } else {
                format!("{n}: {v}")
            };
            cmd.args(["-H", &h]);
        }
        if let Some(body) = &req.body {
            if req.upload {
                cmd.args(["-T", "-"]);
            } else {
                cmd.args(["--data-binary", "@-"]);
            }
            if req.chunked {
                cmd.args(["-H", "Transfer-Encoding: chunked"]);
            }
            cmd.stdin(std::process::Stdio::piped());
            let mut child = cmd
                .arg(&url)
                .stdout(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            let mut stdin = child.stdin.take().unwrap();
            stdin.write_all(body).await.unwrap();
            drop(stdin);
            let out = child.wait_with_output().await.unwrap();
            return parse_curl(&out.stdout);
        }
        let out = cmd.arg(&url).output().await.unwrap();
        parse_curl(&out.stdout)
    }
}

/// Splits curl's `-i` output into the interim heads, the final head and the body.
fn parse_curl(out: &[u8]) -> Got {
    let text = String::from_utf8_lossy(out).into_owned();
    let mut rest = text.as_str();
    let mut interim = Vec::new();
    loop {
        let (head, after) = rest.split_once("\r\n\r\n").unwrap_or((rest, ""));
        let mut lines = head.split("\r\n");
        let status: u16 = lines
            .next()
            .and_then(|l| l.split(' ').nth(1))
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        if (100..200).contains(&status) {
            interim.push(status);
            rest = after;
            continue;
        }
        let mut headers = BTreeMap::new();
        for l in lines {
            if let Some((n, v)) = l.split_once(':') {
                headers.insert(n.trim().to_ascii_lowercase(), v.trim().to_string());
            }
        }
        return Got {
            interim,
            status,
            headers,
            body: after.to_string(),
        };
    }
}

/// One case of the table: a request, and what every front must make of it.
struct Req {
    what: &'static str,
    method: &'static str,
    host: &'static str,
    path: &'static str,
    headers: &'static [(&'static str, &'static str)],
    body: Option<Vec<u8>>,
    chunked: bool,
    /// Not sent over HTTP/2, and why.
    not_h2: Option<&'static str>,
    /// The client's own address, if not 127.0.0.1.
    from: Option<&'static str>,
    /// The body is streamed from stdin (`curl -T -`): no length known in advance.
    upload: bool,
    /// What the client and the upstream must see through `front`.
    expect: fn(&Front, &Got, &[Seen]),
}

impl Req {
    fn get(what: &'static str, host: &'static str, path: &'static str) -> Req {
        Req {
            what,
            method: "GET",
            host,
            path,
            headers: &[],
            body: None,
            chunked: false,
            not_h2: None,
            from: None,
            upload: false,
            expect: |_, _, _| {},
        }
    }
}

/// The one request the upstream saw.
fn one(seen: &[Seen]) -> &Seen {
    assert_eq!(seen.len(), 1, "the upstream saw {} requests", seen.len());
    &seen[0]
}

fn header<'a>(h: &'a BTreeMap<String, String>, name: &str) -> Option<&'a str> {
    h.get(name).map(String::as_str)
}

/// A request refused by the gate: our 400 page, the connection closed, the upstream never
/// asked.
fn refused(_: &Front, got: &Got, seen: &[Seen]) {
    assert_eq!(got.status, 400);
    assert!(
        got.body.contains("\"error\":\"bad_request\""),
        "{}",
        got.body
    );
    assert_eq!(header(&got.headers, "connection"), Some("close"));
    assert!(seen.is_empty(), "the upstream saw {seen:?}");
}

/// What every forwarded request carries: the client's address, the scheme it used, the host
/// it asked for, and our Via entry.
fn forwarded_as_usual(front: &Front, seen: &Seen, host: &str) {
    let h = &seen.headers;
    assert_eq!(header(h, "x-forwarded-for"), Some("127.0.0.1"), "{h:?}");
    assert_eq!(header(h, "x-forwarded-proto"), Some(front.scheme), "{h:?}");
    let asked = format!("{host}:{}", front.addr.port());
    assert_eq!(header(h, "x-forwarded-host"), Some(asked.as_str()), "{h:?}");
    assert_eq!(header(h, "host"), Some(asked.as_str()), "{h:?}");
    assert!(
        header(h, "via").is_some_and(|v| v.starts_with("1.1 itproxy-")),
        "{h:?}"
    );
}

/// The address of a trusted proxy in front of itproxy (`[proxy] trusted_proxies`).
const TRUSTED: &str = "127.0.0.2";

/// The table: every case, to the route `api.test` unless it says otherwise.
fn table() -> Vec<Req> {
    let big: Vec<u8> = (0..200_000u32).map(|i| b'a' + (i % 26) as u8).collect();
    vec![
        Req {
            expect: |front, got, seen| {
                assert_eq!((got.status, got.body.as_str()), (200, "GET /a/b"));
                let seen = one(seen);
                assert_eq!(
                    (seen.method.as_str(), seen.target.as_str()),
                    ("GET", "/a/b?c=1&d=%20")
                );
                forwarded_as_usual(front, seen, "api.test");
            },
            ..Req::get("a plain GET with a query", "api.test", "/a/b?c=1&d=%20")
        },
        Req {
            headers: &[
                ("X-Forwarded-For", "6.6.6.6"),
                ("X-Forwarded-Proto", "gopher"),
                ("X-Forwarded-Host", "evil.example"),
                ("Forwarded", "for=6.6.6.6"),
            ],
            expect: |front, got, seen| {
                assert_eq!(got.status, 200);
                let seen = one(seen);
                // An untrusted client's values are replaced, not extended.
                forwarded_as_usual(front, seen, "api.test");
                // RFC 7239's Forwarded is the client's own header: relayed untouched, as
                // nginx does (itproxy writes only X-Forwarded-*).
                assert_eq!(header(&seen.headers, "forwarded"), Some("for=6.6.6.6"));
            },
            ..Req::get(
                "spoofed X-Forwarded-* from an untrusted client",
                "api.test",
                "/spoof",
            )
        },
        Req {
            headers: &[
                ("X-Forwarded-For", "6.6.6.6"),
                ("X-Forwarded-Proto", "https"),
                ("X-Forwarded-Host", "shop.example"),
            ],
            from: Some(TRUSTED),
            expect: |_, got, seen| {
                assert_eq!(got.status, 200);
                let h = &one(seen).headers;
                // A trusted proxy's chain is extended with its own address; its scheme and
                // host are the original client's, so they are kept.
                assert_eq!(
                    header(h, "x-forwarded-for"),
                    Some("6.6.6.6, 127.0.0.2"),
                    "{h:?}"
                );
                assert_eq!(header(h, "x-forwarded-proto"), Some("https"), "{h:?}");
                assert_eq!(header(h, "x-forwarded-host"), Some("shop.example"), "{h:?}");
            },
            ..Req::get("X-Forwarded-* from a trusted proxy", "api.test", "/trusted")
        },
        Req {
            headers: &[
                ("X-Forwarded-For", "203.0.113.7"),
                ("X-Forwarded-For", "10.1.2.3"),
            ],
            from: Some(TRUSTED),
            expect: |_, got, seen| {
                assert_eq!(got.status, 200);
                // Two lines are one list, in order: the hop nearest us is not lost.
                let h = &one(seen).headers;
                assert_eq!(
                    header(h, "x-forwarded-for"),
                    Some("203.0.113.7, 10.1.2.3, 127.0.0.2"),
                    "{h:?}"
                );
            },
            ..Req::get(
                "a trusted proxy's chain on two lines",
                "api.test",
                "/two-lines",
            )
        },
        Req {
            from: Some(TRUSTED),
            expect: |front, got, seen| {
                assert_eq!(got.status, 200);
                let h = &one(seen).headers;
                assert_eq!(header(h, "x-forwarded-for"), Some(TRUSTED), "{h:?}");
                assert_eq!(header(h, "x-forwarded-proto"), Some(front.scheme), "{h:?}");
                let asked = format!("api.test:{}", front.addr.port());
                assert_eq!(header(h, "x-forwarded-host"), Some(asked.as_str()), "{h:?}");
            },
            ..Req::get(
                "a trusted proxy that sends no X-Forwarded-*",
                "api.test",
                "/bare",
            )
        },
        Req {
            headers: &[
                ("Connection", "X-Forwarded-For"),
                ("X-Forwarded-For", "6.6.6.6"),
            ],
            not_h2: Some("HTTP/2 has no Connection header"),
            expect: refused,
            ..Req::get("Connection naming X-Forwarded-For", "api.test", "/hide")
        },
        Req {
            headers: &[("Connection", "keep-alive, \"X-Forwarded-For\"")],
            not_h2: Some("HTTP/2 has no Connection header"),
            expect: refused,
            ..Req::get("a quoted Connection option", "api.test", "/quoted")
        },
        Req {
            headers: &[("Connection", "o1, o2, o3, o4, o5, o6, o7, o8, o9, o10")],
            not_h2: Some("HTTP/2 has no Connection header"),
            expect: refused,
            ..Req::get("ten Connection options", "api.test", "/ten")
        },
        Req {
            method: "POST",
            body: Some(vec![b'x'; 40_000]),
            upload: true,
            // curl asks HTTP/1.1 servers to continue but not HTTP/2 ones: the same request on
            // every front.
            headers: &[("Expect", "")],
            expect: |_, got, seen| {
                assert_eq!((got.status, got.body.as_str()), (200, "POST /stream"));
                // Exactly one request, its body once: nothing after it on the connection.
                let seen = one(seen);
                assert_eq!(seen.body, vec![b'x'; 40_000]);
            },
            ..Req::get("a streamed upload without a length", "api.test", "/stream")
        },
        Req {
            headers: &[
                ("Connection", "keep-alive, X-Secret"),
                ("X-Secret", "1"),
                ("Keep-Alive", "timeout=5"),
                ("Proxy-Authorization", "Basic Zm9vOmJhcg=="),
                ("Upgrade-Insecure-Requests", "1"),
            ],
            not_h2: Some("HTTP/2 has no Connection header: curl refuses to send one"),
            expect: |_, got, seen| {
                assert_eq!(got.status, 200);
                let h = &one(seen).headers;
                for gone in [
                    "connection",
                    "x-secret",
                    "keep-alive",
                    "proxy-authorization",
                ] {
                    assert_eq!(header(h, gone), None, "{gone} reached the upstream: {h:?}");
                }
                assert_eq!(header(h, "upgrade-insecure-requests"), Some("1"));
            },
            ..Req::get(
                "hop-by-hop headers and those Connection names",
                "api.test",
                "/conn",
            )
        },
        Req {
            expect: |_, got, _| {
                assert_eq!((got.status, got.body.as_str()), (200, "ok"));
                for gone in ["x-internal", "keep-alive"] {
                    assert_eq!(header(&got.headers, gone), None, "{:?}", got.headers);
                }
                assert_eq!(header(&got.headers, "x-public"), Some("yes"));
            },
            ..Req::get("hop-by-hop headers in a response", "api.test", "/hop")
        },
        Req {
            method: "HEAD",
            expect: |_, got, seen| {
                assert_eq!((got.status, got.body.as_str()), (200, ""));
                assert_eq!(header(&got.headers, "content-length"), Some("5"));
                assert_eq!(one(seen).method, "HEAD");
            },
            ..Req::get(
                "HEAD answered with a length and no body",
                "api.test",
                "/head",
            )
        },
        Req {
            method: "HEAD",
            expect: |_, got, seen| {
                // itproxy's own page: its length, and no body (HTTP/2 sent one, a stream error).
                assert_eq!((got.status, got.body.as_str()), (404, ""));
                let length: usize = header(&got.headers, "content-length")
                    .unwrap()
                    .parse()
                    .unwrap();
                assert!(length > 0, "{:?}", got.headers);
                assert!(seen.is_empty());
            },
            ..Req::get("HEAD of a host with no route", "nowhere.test", "/")
        },
        Req {
            expect: |_, got, _| {
                assert_eq!((got.status, got.body.as_str()), (204, ""));
                assert_eq!(header(&got.headers, "content-length"), None);
                assert_eq!(header(&got.headers, "transfer-encoding"), None);
                assert_eq!(header(&got.headers, "x-kind"), Some("none"));
            },
            ..Req::get("204 No Content", "api.test", "/no-content")
        },
        Req {
            headers: &[("If-None-Match", "\"v1\"")],
            expect: |_, got, seen| {
                assert_eq!((got.status, got.body.as_str()), (304, ""));
                assert_eq!(header(&got.headers, "etag"), Some("\"v1\""));
                assert_eq!(header(&one(seen).headers, "if-none-match"), Some("\"v1\""));
            },
            ..Req::get("304 Not Modified", "api.test", "/not-modified")
        },
        Req {
            expect: |front, got, _| {
                assert_eq!((got.status, got.body.as_str()), (200, "hello world"));
                if !front.h2() {
                    assert_eq!(header(&got.headers, "transfer-encoding"), Some("chunked"));
                }
            },
            ..Req::get("a chunked response", "api.test", "/chunked")
        },
        Req {
            expect: |front, got, _| {
                assert_eq!((got.status, got.body.as_str()), (200, "later"));
                // Pingora's HTTP/2 server does not relay 1xx heads; HTTP/1.1 clients get them.
                let interim: &[u16] = if front.h2() { &[] } else { &[103] };
                assert_eq!(got.interim, interim);
            },
            ..Req::get("103 Early Hints before the answer", "api.test", "/early")
        },
        Req {
            method: "POST",
            headers: &[("Content-Type", "application/json")],
            body: Some(br#"{"small":true}"#.to_vec()),
            expect: |_, got, seen| {
                assert_eq!((got.status, got.body.as_str()), (200, "POST /post"));
                let seen = one(seen);
                assert_eq!(seen.body, br#"{"small":true}"#);
                assert_eq!(header(&seen.headers, "content-length"), Some("14"));
                assert_eq!(
                    header(&seen.headers, "content-type"),
                    Some("application/json")
                );
            },
            ..Req::get("a small POST body", "api.test", "/post")
        },
        Req {
            method: "PUT",
            body: Some(big),
            expect: |_, got, seen| {
                assert_eq!((got.status, got.body.as_str()), (200, "PUT /big"));
                let seen = one(seen);
                assert_eq!(seen.body.len(), 200_000);
                assert!(seen
                    .body
                    .iter()
                    .enumerate()
                    .all(|(i, b)| *b == b'a' + (i % 26) as u8));
                assert_eq!(header(&seen.headers, "content-length"), Some("200000"));
            },
            ..Req::get("a 200 KB PUT body", "api.test", "/big")
        },
        Req {
            method: "POST",
            body: Some(b"chunk-by-chunk body".to_vec()),
            chunked: true,
            not_h2: Some("HTTP/2 has no Transfer-Encoding"),
            expect: |_, got, seen| {
                assert_eq!((got.status, got.body.as_str()), (200, "POST /chunked-body"));
                let seen = one(seen);
                assert_eq!(seen.body, b"chunk-by-chunk body");
                assert_eq!(header(&seen.headers, "transfer-encoding"), Some("chunked"));
                assert_eq!(header(&seen.headers, "content-length"), None);
            },
            ..Req::get("a chunked POST body", "api.test", "/chunked-body")
        },
        Req {
            expect: |_, got, seen| {
                assert_eq!(got.status, 502);
                assert!(
                    got.body
                        .contains("route down.test could not reach its target"),
                    "{}",
                    got.body
                );
                assert!(seen.is_empty());
            },
            ..Req::get("an upstream that is down", "down.test", "/x")
        },
        Req {
            expect: |_, got, seen| {
                assert_eq!(got.status, 504);
                assert!(
                    got.body.contains("\"error\":\"upstream_timeout\""),
                    "{}",
                    got.body
                );
                assert_eq!(one(seen).target, "/slow");
            },
            ..Req::get(
                "an upstream slower than the route's read_timeout",
                "api.test",
                "/slow",
            )
        },
        Req {
            expect: |_, got, seen| {
                assert_eq!(got.status, 404);
                assert!(got.body.contains("\"error\":\"no_route\""), "{}", got.body);
                assert!(seen.is_empty());
            },
            ..Req::get("an unknown host", "nothing.test", "/x")
        },
        Req {
            expect: |front, got, seen| {
                if front.tls() {
                    // Already on HTTPS: served.
                    assert_eq!((got.status, got.body.as_str()), (200, "GET /s"));
                    assert_eq!(one(seen).target, "/s?q=1");
                } else {
                    assert_eq!(got.status, 308);
                    let location = header(&got.headers, "location").unwrap_or("");
                    assert!(
                        location.starts_with("https://secure.test:")
                            && location.ends_with("/s?q=1"),
                        "{location}"
                    );
                    assert!(seen.is_empty());
                }
            },
            ..Req::get(
                "a route that redirects plain HTTP to HTTPS",
                "secure.test",
                "/s?q=1",
            )
        },
    ]
}

/// What may differ between two fronts' views of one case: their own ports, `Via` ids, the
/// date, the scheme (asserted per front), and the connection management and framing HTTP/2
/// does its own way.
fn comparable(ports: &[u16], got: &Got, seen: &[Seen]) -> String {
    let mut client = got.clone();
    client.headers.remove("date");
    client.headers.remove("connection");
    // HTTP/2 frames bodies itself, and Pingora's HTTP/2 server relays no 1xx heads (both
    // asserted per case).
    client.headers.remove("transfer-encoding");
    client.interim.clear();
    let seen: Vec<Seen> = seen
        .iter()
        .map(|s| {
            let mut s = s.clone();
            s.headers.remove("x-forwarded-proto");
            s
        })
        .collect();
    let mut text = format!("{client:?}\n{seen:?}");
    for port in ports {
        text = text.replace(&format!(":{port}"), ":PORT");
    }
    let via = regex::Regex::new("itproxy-[0-9a-f]+").unwrap();
    via.replace_all(&text, "itproxy-ID").into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_front_gives_the_upstream_and_the_client_the_same_exchange() {
    let up = Recorder::start().await;
    let dir = tempfile::tempdir().unwrap();
    let routes = format!(
        "[routes]\napi = {{ target = \"{0}\", read_timeout = \"1s\" }}\n\
         secure = {{ target = \"{0}\", redirect_https = true }}\n\
         down = \"127.0.0.1:{1}\"\n",
        up.addr,
        free_port()
    );
    for d in ["h1", "pipeline"] {
        std::fs::create_dir_all(dir.path().join(d)).unwrap();
    }
    let proxy = format!("[proxy]\ntrusted_proxies = [\"{TRUSTED}/32\"]\n");
    let h1 = write_config(&dir.path().join("h1"), &format!("{proxy}{routes}"));
    let pipeline = write_config(
        &dir.path().join("pipeline"),
        &format!("{proxy}h1_front = false\n{routes}"),
    );
    let a = Itproxy::start_with(&["--config", h1.to_str().unwrap()]);
    let b = Itproxy::start_with(&["--config", pipeline.to_str().unwrap()]);
    let root = a.state_dir().join("ca/root.pem").display().to_string();
    let ports = [a.http.port(), a.https.port(), b.http.port(), b.https.port()];
    let fronts = [
        Front {
            name: "h1",
            addr: a.http,
            scheme: "http",
            flag: "--http1.1",
            root: None,
        },
        Front {
            name: "pipeline",
            addr: b.http,
            scheme: "http",
            flag: "--http1.1",
            root: None,
        },
        Front {
            name: "h1-tls",
            addr: a.https,
            scheme: "https",
            flag: "--http1.1",
            root: Some(root.clone()),
        },
        Front {
            name: "h2",
            addr: a.https,
            scheme: "https",
            flag: "--http2",
            root: Some(root),
        },
    ];
    for req in table() {
        // Each front's view, and the first view of each scheme to hold the others to.
        let mut first: BTreeMap<&str, (&str, String)> = BTreeMap::new();
        for front in &fronts {
            if front.h2() && req.not_h2.is_some() {
                continue;
            }
            let got = front.send(&req).await;
            let seen = up.take();
            let story = format!("{} via {}", req.what, front.name);
            let expected = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                (req.expect)(front, &got, &seen)
            }));
            assert!(
                expected.is_ok(),
                "{story}: not what a user should see\nclient: {got:?}\nupstream: {seen:?}"
            );
            let view = comparable(&ports, &got, &seen);
            match first.get(front.scheme) {
                None => {
                    first.insert(front.scheme, (front.name, view));
                }
                Some((name, reference)) => assert_eq!(
                    &view, reference,
                    "{story}: differs from what {name} gave (left: {}, right: {name})",
                    front.name
                ),
            }
        }
        // Plain and TLS agree too, but for the redirect, which only plain HTTP gets.
        if let (Some((p, plain)), Some((t, tls))) = (first.get("http"), first.get("https")) {
            if req.path != "/s?q=1" {
                assert_eq!(plain, tls, "{}: {p} and {t} differ", req.what);
            }
        }
    }
}

/// A client connection to one front, plain or TLS.
trait Conn: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Conn for T {}

/// Connects to `addr`, over TLS for `api.test` trusting `root` if there is one.
async fn connect(addr: SocketAddr, root: Option<&std::path::Path>) -> Box<dyn Conn> {
    use rustls::pki_types::pem::PemObject;
    let tcp = TcpStream::connect(addr).await.unwrap();
    tcp.set_nodelay(true).unwrap();
    let Some(root) = root else {
        return Box::new(tcp);
    };
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls::pki_types::CertificateDer::from_pem_file(root).unwrap())
        .unwrap();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from("api.test").unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .unwrap();
    Box::new(tls)
}

/// Reads up to `n` responses (framed by Content-Length, as the recorder's answers and the
/// proxy's pages are) until the connection ends or stays silent for 10 s: status and body of
/// each.
async fn read_responses(conn: &mut dyn Conn, n: usize) -> Vec<(u16, String)> {
    let mut buf = Vec::new();
    let mut got = Vec::new();
    while got.len() < n {
        let head_end = buf.windows(4).position(|w| w == b"\r\n\r\n");
        if let Some(end) = head_end {
            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
            let status = head
                .split(' ')
                .nth(1)
                .and_then(|s| s.parse().ok())
                .unwrap_or(0);
            let len: usize = head
                .lines()
                .find_map(|l| {
                    let (n, v) = l.split_once(':')?;
                    n.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse().ok())?
                })
                .unwrap_or(0);
            if buf.len() >= end + 4 + len {
                let body = String::from_utf8_lossy(&buf[end + 4..end + 4 + len]).into_owned();
                buf.drain(..end + 4 + len);
                got.push((status, body));
                continue;
            }
        }
        let mut chunk = [0u8; 16384];
        match tokio::time::timeout(Duration::from_secs(10), conn.read(&mut chunk)).await {
            Ok(Ok(k)) if k > 0 => buf.extend_from_slice(&chunk[..k]),
            _ => break,
        }
    }
    got
}

/// A body of `len` bytes that differs from every other one the test sends.
fn patterned(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| b'0' + ((i / 7 + seed as usize) % 75) as u8)
        .collect()
}

/// A body larger than the HTTP/1.1 front forwards itself (64 KiB) is lent to Pingora's
/// pipeline with the bytes read so far; a request the client pipelined after it, in the same
/// write as the body's end or in a write of its own, must neither cut that body short upstream
/// nor turn into a 400: both requests are answered, in order, on every HTTP/1 front, and the
/// upstream gets every body byte for byte.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_pipelined_after_a_large_body_is_answered_and_the_body_arrives_whole() {
    let up = Recorder::start().await;
    let dir = tempfile::tempdir().unwrap();
    let routes = format!("[routes]\napi = \"{}\"\n", up.addr);
    for d in ["h1", "pipeline"] {
        std::fs::create_dir_all(dir.path().join(d)).unwrap();
    }
    let h1 = write_config(&dir.path().join("h1"), &routes);
    let pipeline = write_config(
        &dir.path().join("pipeline"),
        &format!("[proxy]\nh1_front = false\n{routes}"),
    );
    let a = Itproxy::start_with(&["--config", h1.to_str().unwrap()]);
    let b = Itproxy::start_with(&["--config", pipeline.to_str().unwrap()]);
    let root = a.state_dir().join("ca/root.pem");
    let fronts = [
        ("h1", a.http, None),
        ("pipeline", b.http, None),
        ("h1-tls", a.https, Some(root.as_path())),
    ];
    let request = |method: &str, path: &str, body: &[u8]| {
        let mut r = format!(
            "{method} {path} HTTP/1.1\r\nHost: api.test\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        r.extend_from_slice(body);
        r
    };
    // The same body, chunked (64 KiB chunks): always lent too.
    let chunked = |path: &str, body: &[u8]| {
        let mut r =
            format!("POST {path} HTTP/1.1\r\nHost: api.test\r\nTransfer-Encoding: chunked\r\n\r\n")
                .into_bytes();
        for chunk in body.chunks(64 * 1024) {
            r.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
            r.extend_from_slice(chunk);
            r.extend_from_slice(b"\r\n");
        }
        r.extend_from_slice(b"0\r\n\r\n");
        r
    };
    // (first body's size, its path: /slow is answered 2 s late, so the next request surely
    // arrives while the pipeline waits for the answer; whether it is chunked)
    let firsts = [
        (64 * 1024 + 1, "/first", false),
        (200 * 1024, "/first", false),
        (1024 * 1024, "/first", false),
        (1024 * 1024, "/slow", false),
        (200 * 1024 + 7, "/first", true),
    ];
    for (size, path, is_chunked) in firsts {
        for second_size in [0, 100 * 1024] {
            for separate in [false, true] {
                if path == "/slow" && !separate {
                    continue;
                }
                for (front, addr, root) in &fronts {
                    let how = if separate {
                        "in a write of its own"
                    } else {
                        "in the same write"
                    };
                    let story = format!(
                        "{front}: POST {path} of {size} bytes (chunked: {is_chunked}), \
                         then a request with {second_size} bytes of body {how}"
                    );
                    let first_body = patterned(size, 1);
                    let second_body = patterned(second_size, 2);
                    let first = if is_chunked {
                        chunked(path, &first_body)
                    } else {
                        request("POST", path, &first_body)
                    };
                    let (method, second) = if second_size == 0 {
                        ("GET", request("GET", "/next", b""))
                    } else {
                        ("POST", request("POST", "/next", &second_body))
                    };
                    let mut conn = connect(*addr, *root).await;
                    if separate {
                        conn.write_all(&first).await.unwrap();
                        conn.flush().await.unwrap();
                        let pause = if path == "/slow" { 300 } else { 20 };
                        tokio::time::sleep(Duration::from_millis(pause)).await;
                        conn.write_all(&second).await.unwrap();
                    } else {
                        conn.write_all(&[first, second].concat()).await.unwrap();
                    }
                    conn.flush().await.unwrap();
                    let got = read_responses(&mut *conn, 2).await;
                    let seen = up.take();
                    let want = vec![
                        (200, format!("POST {path}")),
                        (200, format!("{method} /next")),
                    ];
                    assert_eq!(got, want, "{story}\nupstream: {seen:?}");
                    assert_eq!(seen.len(), 2, "{story}: {seen:?}");
                    assert!(
                        seen[0].body == first_body,
                        "{story}: the first body reached the upstream as {:?}",
                        seen[0]
                    );
                    assert!(
                        seen[1].body == second_body,
                        "{story}: the second body reached the upstream as {:?}",
                        seen[1]
                    );
                }
            }
        }
    }
}

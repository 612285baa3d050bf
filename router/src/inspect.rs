//! The request inspector: every request either front answers, recorded in a bounded ring (the
//! newest kept) and counted per route, for `itproxy requests`, the dashboard and `/metrics`.
//!
//! ```text
//!  HTTP/1.1 front (forward, refuse) ─┐
//!  Pingora's pipeline (logging) ─────┴─▶ Inspector::record ─▶ ring of Exchange (newest N)
//!                                             │                 └─▶ followers woken
//!                                             └─▶ per-route counts (status class, latency)
//! ```
//!
//! Recording is on the request path, so it costs one short lock and no allocation once the
//! ring is full: the oldest entry is reused, its buffers refilled. Heads are kept as the bytes
//! the client and the upstream sent (HTTP/2 and Pingora's requests written out in HTTP/1 form)
//! and parsed only when someone looks. Readers copy what they ask for under the same lock.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use tokio::sync::Notify;

use crate::Route;

/// How many routes get counts of their own in the metrics; requests for more are counted
/// under the empty route, so a stream of short-lived routes cannot grow the map for ever.
const MAX_COUNTED_ROUTES: usize = 10_000;

/// The most bytes of a request or response head a record keeps; longer ones are kept up to
/// their last whole line within it (default `large_client_header_buffers` of nginx is 8 KiB a
/// line; a request's whole head may be 64 KiB here).
pub const MAX_KEPT_HEAD: usize = 8 * 1024;

/// Upper bounds (seconds) of the latency histograms' buckets, Prometheus' defaults extended
/// down to half a millisecond (a local proxy's requests mostly take less than one).
pub const LATENCY_BUCKETS: [f64; 15] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// The HTTP version a request came in.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Protocol {
    /// HTTP/1.0.
    Http10,
    /// HTTP/1.1.
    #[default]
    Http11,
    /// HTTP/2.
    Http2,
}

impl Protocol {
    /// The version as HTTP writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Http10 => "HTTP/1.0",
            Protocol::Http11 => "HTTP/1.1",
            Protocol::Http2 => "HTTP/2",
        }
    }
}

/// One request as the proxy saw it.
#[derive(Clone, Debug)]
pub struct Exchange {
    /// Increasing from 1 in the order requests ended; never reused within a daemon's life.
    pub id: u64,
    /// When the request's head was complete (wall clock).
    pub time: SystemTime,
    /// The HTTP version.
    pub protocol: Protocol,
    /// Whether it came over TLS.
    pub tls: bool,
    /// The client's address.
    pub client: Option<IpAddr>,
    /// The route it took; none for a request no route took (unknown host, refused head).
    pub route: Option<Arc<Route>>,
    /// The status sent to the client; 0 when none was (the client went away first).
    pub status: u16,
    /// From the complete head to the end of the response.
    pub duration: Duration,
    /// From sending the request upstream to the upstream's response head.
    pub upstream_duration: Option<Duration>,
    /// Bytes of the request (head and body) and of the response (head and body) as sent.
    pub request_bytes: u64,
    /// See `request_bytes`.
    pub response_bytes: u64,
    /// The upstream failed (no connection, no valid response, a timeout): answered 502/504.
    pub upstream_failed: bool,
    /// Why the request ended badly (refused, failed upstream, cut short), if it did.
    pub error: Option<String>,
    request_head: Vec<u8>,
    response_head: Vec<u8>,
    /// The bodies, up to the inspector's limit, for the routes whose bodies it keeps.
    request_body: Vec<u8>,
    response_body: Vec<u8>,
    /// A body was longer than what was kept of it.
    pub bodies_cut: bool,
}

impl Default for Exchange {
    fn default() -> Self {
        Exchange {
            id: 0,
            time: SystemTime::UNIX_EPOCH,
            protocol: Protocol::default(),
            tls: false,
            client: None,
            route: None,
            status: 0,
            duration: Duration::ZERO,
            upstream_duration: None,
            request_bytes: 0,
            response_bytes: 0,
            upstream_failed: false,
            error: None,
            request_head: Vec::new(),
            response_head: Vec::new(),
            request_body: Vec::new(),
            response_body: Vec::new(),
            bodies_cut: false,
        }
    }
}

/// A request or response head, parsed for a reader.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Head {
    /// The request's method and target, or the response's status line after the version.
    pub start: (String, String),
    /// The header lines in order, values as text (bytes that are not UTF-8 replaced).
    pub headers: Vec<(String, String)>,
}

impl Exchange {
    /// Empties this record for reuse, keeping its buffers.
    fn reset(&mut self) {
        let (mut request_head, mut response_head) = (
            std::mem::take(&mut self.request_head),
            std::mem::take(&mut self.response_head),
        );
        request_head.clear();
        response_head.clear();
        // A slot keeps at most what one kept head may take.
        request_head.shrink_to(MAX_KEPT_HEAD);
        response_head.shrink_to(MAX_KEPT_HEAD);
        // Bodies are kept for some routes only: their buffers are not kept for the next.
        *self = Exchange {
            request_head,
            response_head,
            ..Exchange::default()
        };
    }

    /// Keeps the bodies (each cut to `limit` bytes).
    pub fn set_bodies(&mut self, request: &[u8], response: &[u8], limit: usize) {
        self.bodies_cut = request.len() > limit || response.len() > limit;
        self.request_body.clear();
        self.request_body
            .extend_from_slice(&request[..request.len().min(limit)]);
        self.response_body.clear();
        self.response_body
            .extend_from_slice(&response[..response.len().min(limit)]);
    }

    /// The request body kept (empty when bodies are not kept for its route).
    pub fn request_body(&self) -> &[u8] {
        &self.request_body
    }

    /// The response body kept, as relayed (a chunked body with its chunk sizes when the
    /// HTTP/1.1 front relayed it).
    pub fn response_body(&self) -> &[u8] {
        &self.response_body
    }

    /// Keeps `head` (HTTP/1 request head bytes, as the client sent them) as the request's.
    pub fn set_request_head(&mut self, head: &[u8]) {
        keep_head(&mut self.request_head, head);
    }

    /// Keeps `head` (HTTP/1 response head bytes) as the response's.
    pub fn set_response_head(&mut self, head: &[u8]) {
        keep_head(&mut self.response_head, head);
    }

    /// Writes a request head in HTTP/1 form from its parts (Pingora's and HTTP/2 requests).
    pub(crate) fn write_request_head<'a>(
        &mut self,
        method: &str,
        target: &str,
        headers: impl Iterator<Item = (&'a str, &'a [u8])>,
    ) {
        let mut out = std::mem::take(&mut self.request_head);
        out.clear();
        out.extend_from_slice(method.as_bytes());
        out.push(b' ');
        out.extend_from_slice(target.as_bytes());
        out.extend_from_slice(b" HTTP/1.1\r\n");
        put_headers(&mut out, headers);
        keep_head(&mut self.request_head, &out);
    }

    /// Writes a response head in HTTP/1 form from its parts.
    pub(crate) fn write_response_head<'a>(
        &mut self,
        status: u16,
        headers: impl Iterator<Item = (&'a str, &'a [u8])>,
    ) {
        let mut out = std::mem::take(&mut self.response_head);
        out.clear();
        let reason = http::StatusCode::from_u16(status)
            .ok()
            .and_then(|s| s.canonical_reason())
            .unwrap_or("");
        out.extend_from_slice(format!("HTTP/1.1 {status} {reason}\r\n").as_bytes());
        put_headers(&mut out, headers);
        keep_head(&mut self.response_head, &out);
    }

    /// Bytes of the request head kept.
    pub(crate) fn request_head_len(&self) -> usize {
        self.request_head.len()
    }

    /// Bytes of the response head kept.
    pub(crate) fn response_head_len(&self) -> usize {
        self.response_head.len()
    }

    /// The request's method, target and headers; none when the head was not kept (a request
    /// refused before it could be read).
    pub fn request(&self) -> Option<Head> {
        let mut headers = vec![httparse::EMPTY_HEADER; lines(&self.request_head)];
        let mut req = httparse::Request::new(&mut headers);
        if !req.parse(&self.request_head).ok()?.is_complete() {
            return None;
        }
        Some(Head {
            start: (
                req.method.unwrap_or_default().to_string(),
                req.path.unwrap_or_default().to_string(),
            ),
            headers: text_headers(req.headers),
        })
    }

    /// The response's status line and headers as the client got them (from the upstream or
    /// itproxy's own page); none when no response head was kept.
    pub fn response(&self) -> Option<Head> {
        let mut headers = vec![httparse::EMPTY_HEADER; lines(&self.response_head)];
        let mut resp = httparse::Response::new(&mut headers);
        if !resp.parse(&self.response_head).ok()?.is_complete() {
            return None;
        }
        Some(Head {
            start: (
                resp.code.unwrap_or_default().to_string(),
                resp.reason.unwrap_or_default().to_string(),
            ),
            headers: text_headers(resp.headers),
        })
    }

    /// The method and target, or empty strings when the head was not kept.
    #[cfg(test)]
    fn method_and_target(&self) -> (String, String) {
        self.request().map(|h| h.start).unwrap_or_default()
    }

    /// The route's host name, or "" for a request no route took.
    pub fn route_host(&self) -> &str {
        self.route.as_ref().map_or("", |r| r.host().as_str())
    }
}

/// Copies `head` into `kept`, cut after the last whole line within [`MAX_KEPT_HEAD`] (then
/// ended as a head again), so a client sending the largest heads cannot make the ring hold
/// more than that per request.
fn keep_head(kept: &mut Vec<u8>, head: &[u8]) {
    kept.clear();
    if head.len() <= MAX_KEPT_HEAD {
        kept.extend_from_slice(head);
        return;
    }
    let within = &head[..MAX_KEPT_HEAD - 2];
    let cut = within
        .windows(2)
        .rposition(|w| w == b"\r\n")
        .map_or(0, |i| i + 2);
    kept.extend_from_slice(&head[..cut]);
    kept.extend_from_slice(b"\r\n");
}

/// How many lines a kept head has: enough header slots to parse it, however many it holds.
fn lines(head: &[u8]) -> usize {
    head.iter().filter(|b| **b == b'\n').count()
}

/// The most bytes of an error a record keeps (an upstream's error may quote what it sent).
pub const MAX_KEPT_ERROR: usize = 1024;

/// `error`, cut to at most [`MAX_KEPT_ERROR`] bytes (on a character boundary) and trimmed.
pub fn short_error(error: &str) -> String {
    let error = error.trim();
    if error.len() <= MAX_KEPT_ERROR {
        return error.to_string();
    }
    let mut end = MAX_KEPT_ERROR - 3;
    while !error.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &error[..end])
}

fn put_headers<'a>(out: &mut Vec<u8>, headers: impl Iterator<Item = (&'a str, &'a [u8])>) {
    for (name, value) in headers {
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

fn text_headers(headers: &[httparse::Header<'_>]) -> Vec<(String, String)> {
    headers
        .iter()
        .take_while(|h| !h.name.is_empty())
        .map(|h| {
            (
                h.name.to_string(),
                String::from_utf8_lossy(h.value).into_owned(),
            )
        })
        .collect()
}

/// Counts of one route's requests, for the metrics.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RouteCounts {
    /// Requests by status class: index 0 for no response, 1 for 1xx ... 5 for 5xx.
    pub by_class: [u64; 6],
    /// Requests whose upstream failed (502/504 from itproxy).
    pub upstream_failures: u64,
    /// Total latency: requests per bucket of [`LATENCY_BUCKETS`] (not cumulative; the last
    /// is the rest), and the sum in seconds.
    pub duration: Histogram,
    /// Upstream latency (request sent to response head), for requests that reached it.
    pub upstream_duration: Histogram,
}

/// A latency histogram over [`LATENCY_BUCKETS`].
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Histogram {
    /// Observations per bucket (not cumulative); the last one counts those above every bound.
    pub buckets: [u64; LATENCY_BUCKETS.len() + 1],
    /// The sum of every observation, in seconds.
    pub sum: f64,
    /// How many observations.
    pub count: u64,
}

impl Histogram {
    fn observe(&mut self, d: Duration) {
        let secs = d.as_secs_f64();
        let i = LATENCY_BUCKETS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(LATENCY_BUCKETS.len());
        self.buckets[i] += 1;
        self.sum += secs;
        self.count += 1;
    }
}

impl RouteCounts {
    fn count(&mut self, e: &Exchange) {
        let class = match e.status {
            100..=599 => usize::from(e.status / 100),
            _ => 0,
        };
        self.by_class[class] += 1;
        self.upstream_failures += u64::from(e.upstream_failed);
        self.duration.observe(e.duration);
        if let Some(d) = e.upstream_duration {
            self.upstream_duration.observe(d);
        }
    }
}

/// Every request's record and counts; shared by both fronts and the daemon's readers.
#[derive(Debug)]
pub struct Inspector {
    /// How many requests the ring keeps; 0 keeps none (counts are still kept).
    capacity: usize,
    recorded: Mutex<Recorded>,
    /// Readers waiting for new requests: only then does a record wake anyone.
    followers: AtomicUsize,
    news: Notify,
    /// The routes whose bodies are kept (host names), and how many bytes of each body.
    bodies: (std::collections::HashSet<String>, usize),
}

#[derive(Debug, Default)]
struct Recorded {
    ring: VecDeque<Exchange>,
    /// The id the next request gets.
    next_id: u64,
    routes: HashMap<Box<str>, RouteCounts>,
}

impl Default for Inspector {
    fn default() -> Self {
        Inspector::new(0)
    }
}

impl Inspector {
    /// An inspector keeping the last `capacity` requests (none with 0; counts are kept either
    /// way).
    pub fn new(capacity: usize) -> Self {
        Inspector {
            capacity,
            recorded: Mutex::new(Recorded {
                ring: VecDeque::with_capacity(capacity),
                next_id: 1,
                routes: HashMap::new(),
            }),
            followers: AtomicUsize::new(0),
            news: Notify::new(),
            bodies: Default::default(),
        }
    }

    /// The same inspector, keeping up to `limit` bytes of each body of the routes of `hosts`.
    pub fn with_bodies(mut self, hosts: impl IntoIterator<Item = String>, limit: usize) -> Self {
        self.bodies = (hosts.into_iter().collect(), limit);
        self
    }

    /// How many bytes of each body to keep for a request on `route`, if any.
    pub fn body_limit(&self, route: &Route) -> Option<usize> {
        // Checked per request: no hash of the host unless some route's bodies are kept.
        let (hosts, limit) = &self.bodies;
        (self.capacity > 0
            && *limit > 0
            && !hosts.is_empty()
            && hosts.contains(route.host().as_str()))
        .then_some(*limit)
    }

    /// Whether requests are kept (heads copied): fronts skip gathering them otherwise.
    pub fn keeps_requests(&self) -> bool {
        self.capacity > 0
    }

    fn lock(&self) -> MutexGuard<'_, Recorded> {
        // A panic while holding the lock leaves plain data behind; nothing to repair.
        self.recorded.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records a request made whole beforehand (the pipeline's, whose heads take longer to
    /// write out than the lock should be held).
    pub fn record_made(&self, made: Exchange) {
        self.record(move |e| *e = made);
    }

    /// Records one request (both fronts call this as each request ends): `fill` writes it
    /// into a record (a reused one: every field it does not set is empty). `fill` runs under
    /// the lock every request takes: it should only copy.
    pub fn record(&self, fill: impl FnOnce(&mut Exchange)) {
        {
            let mut r = self.lock();
            let mut e = if self.capacity > 0 && r.ring.len() >= self.capacity {
                let mut old = r.ring.pop_front().expect("a full ring is not empty");
                old.reset();
                old
            } else {
                Exchange::default()
            };
            fill(&mut e);
            debug_assert!(e
                .error
                .as_ref()
                .is_none_or(|x| x.len() <= MAX_KEPT_ERROR + 3));
            e.id = r.next_id;
            r.next_id += 1;
            let r = &mut *r;
            let host = e.route_host();
            match r.routes.get_mut(host) {
                Some(counts) => counts.count(&e),
                None => {
                    let key = if r.routes.len() < MAX_COUNTED_ROUTES {
                        host
                    } else {
                        ""
                    };
                    r.routes.entry(key.into()).or_default().count(&e);
                }
            }
            if self.capacity > 0 {
                r.ring.push_back(e);
            }
        }
        // The lock orders this load after a follower's registration (see `wait_past`).
        if self.followers.load(Ordering::Relaxed) > 0 {
            self.news.notify_waiters();
        }
    }

    /// The id of the newest request recorded (0 before the first).
    pub fn last_id(&self) -> u64 {
        self.lock().next_id - 1
    }

    /// The kept requests after `since` (by id) that `keep` accepts, oldest first, at most
    /// `limit` of them (the newest ones when more match).
    pub fn requests(
        &self,
        since: u64,
        limit: usize,
        keep: impl Fn(&Exchange) -> bool,
    ) -> Vec<Exchange> {
        // Copied a few at a time, newest first, so a large read never holds the lock that
        // every request takes for long.
        const CHUNK: usize = 64;
        let mut found: Vec<Exchange> = Vec::new();
        let mut before = u64::MAX;
        while found.len() < limit {
            let r = self.lock();
            let end = r.ring.partition_point(|e| e.id < before);
            let start = r.ring.partition_point(|e| e.id <= since).min(end);
            let from = end.saturating_sub(CHUNK).max(start);
            if from == end {
                break;
            }
            let room = limit - found.len();
            found.extend(
                r.ring
                    .range(from..end)
                    .rev()
                    .filter(|e| keep(e))
                    .take(room)
                    .cloned(),
            );
            before = r.ring[from].id;
        }
        found.reverse();
        found
    }

    /// The id of the oldest request still kept, if any.
    #[cfg(test)]
    fn oldest_id(&self) -> Option<u64> {
        self.lock().ring.front().map(|e| e.id)
    }

    /// Waits until a request after `id` is recorded, or `timeout` passes.
    pub async fn wait_past(&self, id: u64, timeout: Duration) {
        struct Following<'a>(&'a AtomicUsize);
        impl Drop for Following<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::Relaxed);
            }
        }
        self.followers.fetch_add(1, Ordering::Relaxed);
        let _following = Following(&self.followers);
        let news = self.news.notified();
        tokio::pin!(news);
        news.as_mut().enable();
        // Registered before this check (under the lock), so a record after it wakes us.
        if self.last_id() > id {
            return;
        }
        let _ = tokio::time::timeout(timeout, news).await;
    }

    /// Every route's counts so far, by host name ("" for requests no route took).
    pub fn route_counts(&self) -> Vec<(String, RouteCounts)> {
        let r = self.lock();
        let mut all: Vec<(String, RouteCounts)> = r
            .routes
            .iter()
            .map(|(host, counts)| (host.to_string(), counts.clone()))
            .collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{HostName, Upstream, UpstreamSpec};

    fn route(host: &str) -> Arc<Route> {
        let spec = UpstreamSpec::parse("127.0.0.1:8000").unwrap();
        let upstream = Upstream::new(
            spec,
            vec!["127.0.0.1:8000".parse().unwrap()],
            1,
            &Default::default(),
        );
        Arc::new(Route::new(
            HostName::parse(host).unwrap(),
            Arc::new(upstream),
        ))
    }

    fn request(inspector: &Inspector, route: &Arc<Route>, path: &str, status: u16) {
        inspector.record(|e| {
            e.route = Some(route.clone());
            e.status = status;
            e.duration = Duration::from_micros(700);
            e.set_request_head(format!("GET {path} HTTP/1.1\r\nHost: api.test\r\n\r\n").as_bytes());
            e.set_response_head(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n");
        });
    }

    #[test]
    fn the_ring_keeps_the_newest_requests_in_order() {
        let inspector = Inspector::new(3);
        let api = route("api.test");
        for i in 1..=5 {
            request(&inspector, &api, &format!("/{i}"), 200);
        }
        let kept = inspector.requests(0, 10, |_| true);
        let paths: Vec<String> = kept.iter().map(|e| e.method_and_target().1).collect();
        assert_eq!(paths, ["/3", "/4", "/5"]);
        assert_eq!(kept.iter().map(|e| e.id).collect::<Vec<_>>(), [3, 4, 5]);
        assert_eq!(inspector.oldest_id(), Some(3));
        assert_eq!(inspector.last_id(), 5);
        // After an id, and the newest when a limit cuts.
        assert_eq!(inspector.requests(4, 10, |_| true).len(), 1);
        assert_eq!(inspector.requests(0, 1, |_| true)[0].id, 5);
    }

    #[test]
    fn a_reused_record_keeps_nothing_of_the_old_request() {
        let inspector = Inspector::new(1);
        let api = route("api.test");
        inspector.record(|e| {
            e.route = Some(api.clone());
            e.error = Some("refused".into());
            e.upstream_failed = true;
            e.set_request_head(b"GET /old HTTP/1.1\r\nX-Secret: 1\r\n\r\n");
        });
        inspector.record(|e| e.status = 404);
        let e = &inspector.requests(0, 10, |_| true)[0];
        assert_eq!(
            (e.route.is_none(), e.error.is_none(), e.upstream_failed),
            (true, true, false)
        );
        assert!(e.request().is_none(), "{:?}", e.request());
    }

    #[test]
    fn a_large_head_is_kept_up_to_its_last_whole_line_within_the_limit() {
        let inspector = Inspector::new(2);
        let mut head = b"GET /big HTTP/1.1\r\nHost: api.test\r\n".to_vec();
        for i in 0..2000 {
            head.extend_from_slice(format!("X-Filler-{i}: {}\r\n", "v".repeat(20)).as_bytes());
        }
        head.extend_from_slice(b"\r\n");
        assert!(head.len() > 4 * MAX_KEPT_HEAD);
        inspector.record(|e| e.set_request_head(&head));
        let e = &inspector.requests(0, 1, |_| true)[0];
        assert!(e.request_head_len() <= MAX_KEPT_HEAD);
        let req = e.request().expect("still a head");
        assert_eq!(req.start.1, "/big");
        assert_eq!(req.headers[0], ("Host".to_string(), "api.test".to_string()));
        let last = &req.headers.last().unwrap().0;
        assert!(last.starts_with("X-Filler-"), "whole lines only: {last}");
    }

    #[test]
    fn reads_larger_than_a_chunk_keep_order_filter_and_limit() {
        let inspector = Inspector::new(500);
        let api = route("api.test");
        for i in 1..=300 {
            if i % 3 == 0 {
                request(&inspector, &api, &format!("/{i}"), 200);
            } else {
                inspector.record(|e| e.status = 404);
            }
        }
        let api_only = |e: &Exchange| e.route.is_some();
        let all = inspector.requests(0, usize::MAX, api_only);
        assert_eq!(all.len(), 100);
        assert!(all.windows(2).all(|w| w[0].id < w[1].id));
        let newest = inspector.requests(0, 70, api_only);
        assert_eq!((newest.len(), newest[0].id, newest[69].id), (70, 93, 300));
        let after = inspector.requests(250, usize::MAX, api_only);
        assert_eq!(after.first().map(|e| e.id), Some(252));
        assert_eq!(inspector.requests(300, 10, |_| true).len(), 0);
    }

    #[test]
    fn a_head_with_hundreds_of_headers_is_still_read() {
        let inspector = Inspector::new(1);
        let mut head = b"GET /many HTTP/1.1\r\n".to_vec();
        for i in 0..300 {
            head.extend_from_slice(format!("X-{i}: v\r\n").as_bytes());
        }
        head.extend_from_slice(b"\r\n");
        inspector.record(|e| e.set_request_head(&head));
        let req = inspector.requests(0, 1, |_| true)[0].request().unwrap();
        assert_eq!((req.start.1.as_str(), req.headers.len()), ("/many", 300));
        assert!(short_error(&"x".repeat(5000)).len() <= MAX_KEPT_ERROR);
        assert_eq!(short_error(" spaced "), "spaced");
    }

    #[test]
    fn heads_are_parsed_for_readers() {
        let inspector = Inspector::new(4);
        inspector.record(|e| {
            e.write_request_head(
                "POST",
                "/v1/x?y=1",
                [("host", &b"api.test"[..]), ("x-bin", &b"\xff"[..])].into_iter(),
            );
            e.write_response_head(
                201,
                [("content-type", &b"application/json"[..])].into_iter(),
            );
        });
        let e = &inspector.requests(0, 1, |_| true)[0];
        let req = e.request().unwrap();
        assert_eq!(req.start, ("POST".to_string(), "/v1/x?y=1".to_string()));
        assert_eq!(
            req.headers[1],
            ("x-bin".to_string(), "\u{fffd}".to_string())
        );
        assert_eq!(e.response().unwrap().start.0, "201");
    }

    #[test]
    fn counts_by_route_status_class_and_latency() {
        let inspector = Inspector::new(0);
        let api = route("api.test");
        request(&inspector, &api, "/", 200);
        request(&inspector, &api, "/", 503);
        inspector.record(|e| e.status = 404);
        assert!(
            inspector.requests(0, 10, |_| true).is_empty(),
            "capacity 0 keeps none"
        );
        let counts = inspector.route_counts();
        assert_eq!(counts[0].0, "");
        assert_eq!(counts[0].1.by_class, [0, 0, 0, 0, 1, 0]);
        assert_eq!(counts[1].0, "api.test");
        assert_eq!(counts[1].1.by_class, [0, 0, 1, 0, 0, 1]);
        // 700 µs falls in the (0.5 ms, 1 ms] bucket.
        assert_eq!(counts[1].1.duration.buckets[1], 2);
        assert_eq!(counts[1].1.duration.count, 2);
    }

    #[tokio::test]
    async fn a_follower_wakes_on_the_next_request() {
        let inspector = Arc::new(Inspector::new(8));
        let last = inspector.last_id();
        let waiter = {
            let inspector = inspector.clone();
            tokio::spawn(async move {
                let started = std::time::Instant::now();
                inspector.wait_past(last, Duration::from_secs(10)).await;
                started.elapsed()
            })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        inspector.record(|e| e.status = 200);
        let waited = waiter.await.unwrap();
        assert!(
            waited < Duration::from_secs(5),
            "woken by the record, not the timeout"
        );
        assert_eq!(inspector.last_id(), last + 1);
    }
}

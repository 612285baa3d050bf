//! Which recorded exchange answers a request. The rules, in order:
//!
//! 1. the method and the path must be the same;
//! 2. among those, one with the same query (its parameters in any order) is preferred, then
//!    one with the same body (JSON bodies compared as JSON: key order and spacing do not
//!    matter);
//! 3. when several are as good (the same request recorded more than once), they answer in the
//!    order they were recorded, the last one again after that: a recorded sequence (pending,
//!    then done) plays back as it happened.
//!
//! A request nothing matches gets a 404 that lists the near misses: the same path with
//! another method, or the same method with the nearest paths.

use std::collections::HashMap;
use std::sync::Mutex;

use crate::recording::{Exchange, RecordedRequest};

/// What answers a request.
#[derive(Debug, PartialEq, Eq)]
pub enum Matched {
    /// This exchange (an index into the recording).
    Found(usize),
    /// None; these come closest (indices, best first, at most 5).
    Missed(Vec<usize>),
}

/// Matches requests against a recording's exchanges.
#[derive(Debug)]
pub struct Matcher {
    requests: Vec<RecordedRequest>,
    /// Each recorded body's bytes and, when it is JSON, its value: read once, not per request.
    bodies: Vec<(Vec<u8>, Option<serde_json::Value>)>,
    /// How many times each set of equally good candidates answered (by its first index).
    served: Mutex<HashMap<Vec<usize>, usize>>,
}

fn sorted_query(q: &str) -> Vec<&str> {
    let mut params: Vec<&str> = q.split('&').filter(|p| !p.is_empty()).collect();
    params.sort_unstable();
    params
}

fn same_body(
    recorded: &(Vec<u8>, Option<serde_json::Value>),
    body: &[u8],
    json: Option<&serde_json::Value>,
) -> bool {
    recorded.0 == body || matches!((&recorded.1, json), (Some(a), Some(b)) if a == b)
}

/// How many leading bytes two paths share, for near misses.
fn shared_prefix(a: &str, b: &str) -> usize {
    a.bytes().zip(b.bytes()).take_while(|(x, y)| x == y).count()
}

impl Matcher {
    /// A matcher over `exchanges`, in recorded order.
    pub fn new<'a>(exchanges: impl IntoIterator<Item = &'a Exchange>) -> Self {
        let requests: Vec<RecordedRequest> =
            exchanges.into_iter().map(|e| e.request.clone()).collect();
        let bodies = requests
            .iter()
            .map(|r| {
                let bytes = r.body.bytes();
                let json = serde_json::from_slice(&bytes).ok();
                (bytes, json)
            })
            .collect();
        Matcher {
            requests,
            bodies,
            served: Mutex::default(),
        }
    }

    /// The exchange that answers `method path?query` with `body`.
    pub fn find(&self, method: &str, path: &str, query: &str, body: &[u8]) -> Matched {
        let query = sorted_query(query);
        let json: Option<serde_json::Value> = serde_json::from_slice(body).ok();
        let mut best: Option<(u8, Vec<usize>)> = None;
        for (i, r) in self.requests.iter().enumerate() {
            if r.method != method || r.path != path {
                continue;
            }
            let score = 2 * u8::from(sorted_query(&r.query) == query)
                + u8::from(same_body(&self.bodies[i], body, json.as_ref()));
            match &mut best {
                Some((s, all)) if *s == score => all.push(i),
                Some((s, _)) if *s > score => {}
                _ => best = Some((score, vec![i])),
            }
        }
        match best {
            Some((_, candidates)) => {
                let mut served = self.served.lock().unwrap_or_else(|e| e.into_inner());
                let n = served.entry(candidates.clone()).or_insert(0);
                let pick = candidates[(*n).min(candidates.len() - 1)];
                *n += 1;
                Matched::Found(pick)
            }
            None => Matched::Missed(self.near(method, path)),
        }
    }

    fn near(&self, method: &str, path: &str) -> Vec<usize> {
        let mut near: Vec<(usize, usize)> = self
            .requests
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let closeness = if r.path == path {
                    usize::MAX
                } else if r.method == method {
                    shared_prefix(&r.path, path)
                } else {
                    shared_prefix(&r.path, path) / 2
                };
                (closeness, i)
            })
            .filter(|(c, _)| *c > 1)
            .collect();
        near.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
        // One near miss per method and path.
        let mut seen = std::collections::HashSet::new();
        near.retain(|(_, i)| seen.insert((&self.requests[*i].method, &self.requests[*i].path)));
        near.into_iter().take(5).map(|(_, i)| i).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::recording::{Body, RecordedResponse};

    fn ex(method: &str, path: &str, query: &str, body: &str, status: u16) -> Exchange {
        Exchange {
            request: RecordedRequest {
                method: method.into(),
                path: path.into(),
                query: query.into(),
                headers: vec![],
                body: Body::of(body.as_bytes()),
            },
            response: RecordedResponse {
                status,
                headers: vec![],
                body: Body::default(),
            },
        }
    }

    #[test]
    fn method_and_path_first_then_query_then_body() {
        let rec = [
            ex("GET", "/users", "page=1", "", 200),
            ex("GET", "/users", "page=2&size=10", "", 201),
            ex("POST", "/users", "", r#"{"name":"a","age":1}"#, 202),
            ex("POST", "/users", "", r#"{"name":"b"}"#, 203),
        ];
        let m = Matcher::new(&rec);
        assert_eq!(
            m.find("GET", "/users", "size=10&page=2", b""),
            Matched::Found(1),
            "params in any order"
        );
        assert_eq!(
            m.find("GET", "/users", "page=9", b""),
            Matched::Found(0),
            "the path alone still matches"
        );
        assert_eq!(
            m.find("POST", "/users", "", br#"{ "age": 1, "name": "a" }"#),
            Matched::Found(2),
            "JSON compared as JSON"
        );
        assert_eq!(
            m.find("POST", "/users", "", br#"{"name":"b"}"#),
            Matched::Found(3)
        );
        assert_eq!(
            m.find("DELETE", "/users", "", b""),
            Matched::Missed(vec![0, 2])
        );
    }

    #[test]
    fn a_request_recorded_several_times_plays_back_in_order() {
        let rec = [
            ex("GET", "/job/1", "", "", 202),
            ex("GET", "/other", "", "", 200),
            ex("GET", "/job/1", "", "", 200),
        ];
        let m = Matcher::new(&rec);
        let seq: Vec<Matched> = (0..3).map(|_| m.find("GET", "/job/1", "", b"")).collect();
        assert_eq!(
            seq,
            [Matched::Found(0), Matched::Found(2), Matched::Found(2)]
        );
    }

    #[test]
    fn near_misses_are_the_closest_paths() {
        let rec = [
            ex("GET", "/v1/users", "", "", 200),
            ex("GET", "/v1/orders", "", "", 200),
            ex("GET", "/health", "", "", 200),
        ];
        let m = Matcher::new(&rec);
        assert_eq!(
            m.find("GET", "/v1/userz", "", b""),
            Matched::Missed(vec![0, 1])
        );
        assert_eq!(
            m.find("GET", "/nothing-alike", "", b""),
            Matched::Missed(vec![])
        );
    }
}

//! A recording's exchange file (anyone may edit one), matched against requests and its
//! response compared with a live answer as `mock diff` does: errors or answers, never panics.
//!
//! Input: the file's bytes, a NUL, then the live body.
#![no_main]

use itproxy_mock::diff;
use itproxy_mock::recording::Exchange;
use itproxy_mock::Matcher;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (file, live) = match data.iter().position(|&b| b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    let Ok(exchange) = serde_json::from_slice::<Exchange>(file) else {
        return;
    };
    let r = &exchange.request;
    let matcher = Matcher::new([&exchange, &exchange]);
    let _ = matcher.find(&r.method, &r.path, &r.query, &r.body.bytes());
    let _ = matcher.find(&r.method, &r.path, &r.query, &r.body.bytes());
    let _ = matcher.find("GET", "/", "b=2&a=1", live);
    let was = &exchange.response;
    let changes = diff::compare(
        (was.status, &was.headers, &was.body.bytes()),
        (200, &[("content-type".into(), "application/json".into())], live),
    );
    for c in changes {
        let _ = c.to_string();
    }
});

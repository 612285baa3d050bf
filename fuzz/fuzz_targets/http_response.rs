//! The HTTP/1.1 front's upstream response head parser (`itproxy_router::codec`), which decides
//! the body's framing and writes the client's response head, on any bytes an upstream may send.
//!
//! Never panics, and what it writes for a final response (once the front adds its Connection
//! header) is one well-formed response head with the upstream's status, only the front's own
//! connection headers, and never a length beside a transfer coding.
#![no_main]

use itproxy_router::codec::{read_response, ResponseVerdict};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|head: &[u8]| {
    let mut out = Vec::new();
    if let ResponseVerdict::Incomplete | ResponseVerdict::Invalid =
        read_response(head, false, &mut out)
    {
        return;
    }
    // As many fields as the front takes (its 256, Pingora's limit).
    let mut theirs = [httparse::EMPTY_HEADER; 256];
    let mut upstream = httparse::Response::new(&mut theirs);
    let status = match upstream.parse(head) {
        Ok(httparse::Status::Complete(_)) => upstream.code,
        other => panic!("a head that does not parse was accepted ({other:?}): {head:?}"),
    };
    if status.is_some_and(|s| s < 200) {
        // Interim responses go to the client as they came; nothing is written for them.
        return;
    }

    out.extend_from_slice(b"Connection: close\r\n\r\n");
    let mut headers = [httparse::EMPTY_HEADER; 260];
    let mut resp = httparse::Response::new(&mut headers);
    match resp.parse(&out) {
        Ok(httparse::Status::Complete(n)) => assert_eq!(n, out.len(), "{out:?}"),
        other => panic!("the client's head does not parse ({other:?}): {out:?}"),
    }
    assert_eq!(resp.code, status);
    assert_eq!(resp.version, Some(1));
    let has = |name: &str| {
        resp.headers
            .iter()
            .any(|h| h.name.eq_ignore_ascii_case(name))
    };
    assert!(
        !(has("transfer-encoding") && has("content-length")),
        "a length beside a transfer coding: {out:?}"
    );
    for name in ["keep-alive", "proxy-connection"] {
        assert!(
            !resp
                .headers
                .iter()
                .any(|h| h.name.eq_ignore_ascii_case(name)),
            "{name} was passed on: {out:?}"
        );
    }
    // The client frames the body as the front relays it. From the upstream's head: a 204 is
    // never framed; a transfer coding whose last coding (in its last field; empty list items
    // do not count, RFC 9110 5.6.1) is chunked goes on as chunked, alone; any other coding means "until close", and neither field goes on; with
    // no coding, equal lengths go out once, as a plain number.
    let relayed = |headers: &[httparse::Header<'_>]| -> (bool, Vec<u64>) {
        let te = headers
            .iter()
            .any(|h| h.name.eq_ignore_ascii_case("transfer-encoding"));
        let mut lengths: Vec<u64> = headers
            .iter()
            .filter(|h| !te && h.name.eq_ignore_ascii_case("content-length"))
            .map(|h| {
                std::str::from_utf8(h.value.trim_ascii())
                    .ok()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(u64::MAX)
            })
            .collect();
        lengths.dedup();
        (te, lengths)
    };
    let expected = if status == Some(204) {
        (false, Vec::new())
    } else {
        let last_coding_chunked = upstream
            .headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case("transfer-encoding"))
            .last()
            .map(|h| {
                h.value
                    .split(|&b| b == b',')
                    .map(|t| t.trim_ascii())
                    .rfind(|t| !t.is_empty())
                    .is_some_and(|t| t.eq_ignore_ascii_case(b"chunked"))
            });
        match last_coding_chunked {
            Some(true) => (true, Vec::new()),
            Some(false) => (false, Vec::new()),
            None => relayed(upstream.headers),
        }
    };
    assert_eq!(relayed(resp.headers), expected, "{out:?}");
    let connections = resp
        .headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("connection"))
        .count();
    assert_eq!(connections, 1, "only the front's own Connection: {out:?}");
});

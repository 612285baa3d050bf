//! The request side of the HTTP/1.1 front, bytes in and bytes out: what is forwarded, how it
//! is rewritten, what is refused and what is lent to the pipeline.

use std::sync::Arc;

use arc_swap::ArcSwap;
use proptest::prelude::*;

use super::*;
use crate::{RouteTable, Upstream};

fn rules(routes: &[(&str, &str)]) -> RequestRules {
    let table = RouteTable::new(routes.iter().map(|(host, target)| {
        let spec = crate::UpstreamSpec::parse(target).unwrap();
        let addr = format!("{}:{}", spec.host(), spec.port()).parse().unwrap();
        let upstream = Upstream::new(spec, vec![addr], 1, &Default::default());
        Route::new(crate::HostName::parse(host).unwrap(), Arc::new(upstream))
    }));
    let routes = Arc::new(ArcSwap::from_pointee(table));
    let trusted = vec!["10.0.0.0/8".parse().unwrap()];
    RequestRules {
        policy: RoutingPolicy::new(routes, trusted, None),
        forwards: true,
    }
}

fn upstream_request(f: &RequestRules, req: &[u8], peer: &str) -> Option<String> {
    let mut out = Vec::new();
    match f.prepare(req, Some(peer.parse().unwrap()), false, &mut out) {
        Parsed::Forward(_) => Some(String::from_utf8(out).unwrap()),
        Parsed::HandOver(_) => None,
        Parsed::Refuse(page) => panic!("refused: {}", page.summary()),
        Parsed::Partial | Parsed::AwaitBody(_) => panic!("a complete request was seen as partial"),
    }
}

/// The status this front refuses `req` with, if it does.
fn refused(f: &RequestRules, req: &[u8]) -> Option<u16> {
    let mut out = Vec::new();
    match f.prepare(req, Some("127.0.0.1".parse().unwrap()), false, &mut out) {
        Parsed::Refuse(page) => Some(page.status()),
        _ => None,
    }
}

#[test]
fn simple_requests_are_rewritten_and_the_rest_handed_over() {
    let f = rules(&[
        ("api.test", "127.0.0.1:1"),
        ("secure.test", "https://127.0.0.1:2"),
    ]);
    let out = upstream_request(
        &f,
        b"GET /a?b HTTP/1.1\r\nHost: API.test:80\r\nConnection: keep-alive, X-Hop\r\nX-Hop: 1\r\nTE: trailers\r\nX-Forwarded-For: 6.6.6.6\r\nAccept: */*\r\n\r\n",
        "192.0.2.1",
    )
    .unwrap();
    assert_eq!(
        out,
        format!("GET /a?b HTTP/1.1\r\nHost: API.test:80\r\nAccept: */*\r\nX-Forwarded-For: 192.0.2.1\r\nX-Forwarded-Proto: http\r\nX-Forwarded-Host: API.test:80\r\nVia: {}\r\n\r\n", f.policy.via())
    );
    let trusted = upstream_request(
        &f,
        b"GET / HTTP/1.1\r\nHost: api.test\r\nX-Forwarded-For: 203.0.113.7\r\nX-Forwarded-Proto: https\r\n\r\n",
        "10.1.2.3",
    )
    .unwrap();
    assert!(
        trusted.contains("X-Forwarded-For: 203.0.113.7, 10.1.2.3\r\n"),
        "{trusted}"
    );
    assert!(
        trusted.contains("X-Forwarded-Proto: https\r\n"),
        "{trusted}"
    );
    for handed_over in [
        &b"GET / HTTP/1.0\r\nHost: api.test\r\n\r\n"[..],
        b"GET / HTTP/1.1\r\nHost: nowhere.test\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: secure.test\r\n\r\n",
        b"GET / HTTP/1.1\r\n\r\n",
        b"GET http://api.test/ HTTP/1.1\r\nHost: api.test\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: api.test\r\nContent-Length: 65537\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: api.test\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: api.test\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: api.test\r\nExpect: 100-continue\r\n\r\n",
    ] {
        assert_eq!(
            upstream_request(&f, handed_over, "127.0.0.1"),
            None,
            "{handed_over:?}"
        );
    }
}

#[test]
fn ambiguous_framing_is_refused_before_any_hand_over() {
    let f = rules(&[("api.test", "127.0.0.1:1")]);
    for (req, status) in [
        (&b"GET / HTTP/1.1\r\nHost: api.test\r\nHost: api.test\r\n\r\n"[..], 400),
        (b"POST / HTTP/1.1\r\nHost: api.test\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd", 400),
        (b"POST / HTTP/1.1\r\nHost: api.test\r\nContent-Length: 5\r\nContent-Length: 05\r\n\r\nhello", 400),
        (b"POST / HTTP/1.1\r\nHost: api.test\r\nContent-Length: +3\r\n\r\nabc", 400),
        (b"POST / HTTP/1.1\r\nHost: api.test\r\nConnection: Content-Length\r\nContent-Length: 3\r\n\r\nabc", 400),
        (b"GET / HTTP/1.1\r\nHost: api.test\r\nConnection: host\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nHost: api.test\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n", 400),
        // The same rules for requests that would go to the pipeline.
        (b"POST / HTTP/1.0\r\nHost: api.test\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nHost: nowhere.test\r\nTransfer-Encoding: gzip\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: api.test\r\n folded\r\n\r\n", 400),
        (b"GET /a b HTTP/1.1\r\nHost: api.test\r\n\r\n", 400),
        (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n", 400),
    ] {
        assert_eq!(refused(&f, req), Some(status), "{:?}", String::from_utf8_lossy(req));
    }
    let mut many = b"GET / HTTP/1.1\r\nHost: api.test\r\n".to_vec();
    for i in 0..300 {
        many.extend(format!("X-{i}: 1\r\n").bytes());
    }
    many.extend(b"\r\n");
    assert_eq!(refused(&f, &many), Some(431));
    // A head still unfinished at 64 KiB is refused, not waited for.
    let mut long = b"GET / HTTP/1.1\r\nHost: api.test\r\nX-Long: ".to_vec();
    long.resize(MAX_HEAD, b'a');
    assert_eq!(refused(&f, &long), Some(431));
    long.truncate(MAX_HEAD - 1);
    assert_eq!(
        refused(&f, &long),
        None,
        "one byte less may still become a head"
    );
    let mut fine = b"GET / HTTP/1.1\r\nHost: api.test\r\n".to_vec();
    for i in 0..200 {
        fine.extend(format!("X-{i}: 1\r\n").bytes());
    }
    fine.extend(b"\r\n");
    assert!(
        upstream_request(&f, &fine, "127.0.0.1").is_some(),
        "200 fields are fine"
    );
}

#[test]
fn a_request_that_passed_here_before_is_a_loop() {
    let f = rules(&[("api.test", "127.0.0.1:1")]);
    let first =
        upstream_request(&f, b"GET / HTTP/1.1\r\nHost: api.test\r\n\r\n", "127.0.0.1").unwrap();
    let via = first
        .lines()
        .find(|l| l.starts_with("Via: "))
        .expect("a Via entry is added");
    assert!(via.starts_with("Via: 1.1 itproxy-"), "{via}");
    let again = first.replace("X-Forwarded-For", "X-Old-For");
    assert_eq!(refused(&f, again.as_bytes()), Some(508));
    // Another itproxy's entry is no loop.
    let other = b"GET / HTTP/1.1\r\nHost: api.test\r\nVia: 1.1 itproxy-00000000\r\n\r\n";
    assert!(upstream_request(&f, other, "127.0.0.1").is_some());
}

#[test]
fn small_bodies_are_forwarded_once_complete() {
    let f = rules(&[("api.test", "127.0.0.1:1")]);
    let post = b"POST /form HTTP/1.1\r\nHost: api.test\r\nContent-Length: 5\r\n\r\nhelloGET";
    let mut out = Vec::new();
    let peer = Some("127.0.0.1".parse().unwrap());
    for cut in [post.len() - 4, post.len()] {
        match f.prepare(&post[..cut], peer, false, &mut out) {
            Parsed::Forward(p) => {
                assert_eq!(cut, post.len(), "forwarded before the body was complete");
                assert_eq!(p.len, post.len() - 3, "the next request's bytes stay");
                assert!(!p.idempotent);
                assert!(
                    out.ends_with(b"\r\n\r\nhello"),
                    "{}",
                    String::from_utf8_lossy(&out)
                );
            }
            Parsed::AwaitBody(len) => {
                assert!(cut < post.len());
                assert_eq!(len, post.len() - 3);
            }
            _ => panic!("cut {cut}: neither forwarded nor waiting for the body"),
        }
    }
}

/// A lent request says where it ends, so the pipeline reads that far and no further: the
/// next request on the connection is read here.
#[test]
fn a_lent_request_says_where_it_ends() {
    let f = rules(&[("api.test", "127.0.0.1:1")]);
    let end = |req: &[u8]| {
        let mut out = Vec::new();
        match f.prepare(req, Some("127.0.0.1".parse().unwrap()), false, &mut out) {
            Parsed::HandOver(end) => end,
            _ => panic!("not lent: {}", String::from_utf8_lossy(req)),
        }
    };
    let head = "POST /a HTTP/1.1\r\nHost: api.test\r\nContent-Length: 70000\r\n\r\n";
    assert_eq!(
        end(format!("{head}01234GET / HTTP/1.1\r\n").as_bytes()),
        RequestEnd::At(head.len() as u64 + 70_000)
    );
    let head = "POST /a HTTP/1.1\r\nHost: api.test\r\nTransfer-Encoding: chunked\r\n\r\n";
    assert_eq!(
        end(format!("{head}5\r\n").as_bytes()),
        RequestEnd::Chunked { head: head.len() }
    );
    // HTTP/1.0, an unknown host: no body, the head is all.
    for head in [
        "GET / HTTP/1.0\r\nHost: api.test\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: nobody.test\r\n\r\n",
    ] {
        assert_eq!(
            end(format!("{head}GET /").as_bytes()),
            RequestEnd::At(head.len() as u64)
        );
    }
    // An upgrade may turn the connection into a tunnel: all its bytes are the pipeline's.
    assert_eq!(
        end(b"GET /ws HTTP/1.1\r\nHost: api.test\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n"),
        RequestEnd::Open
    );
}

proptest! {
    /// Whatever a client sends, the HTTP/1.1 front answers one of partial, hand over or
    /// forward, and what it forwards is one well-formed request head with the route's Host.
    #[test]
    fn any_client_bytes_are_handled_without_panic(
        prefix in proptest::sample::select(vec![
            &b""[..],
            b"GET / HTTP/1.1\r\nHost: api.test\r\n",
            b"GET /x HTTP/1.1\r\nhost: api.test\r\nConnection: ",
        ]),
        noise in proptest::collection::vec(any::<u8>(), 0..200),
    ) {
        static F: std::sync::LazyLock<RequestRules> =
            std::sync::LazyLock::new(|| rules(&[("api.test", "127.0.0.1:1")]));
        let f = &*F;
        let mut input = prefix.to_vec();
        input.extend(&noise);
        input.extend(b"\r\n\r\n");
        let mut out = Vec::new();
        if let Parsed::Forward(p) = f.prepare(&input, Some("127.0.0.1".parse().unwrap()), false, &mut out) {
            let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS + 3];
            let mut req = httparse::Request::new(&mut headers);
            prop_assert_eq!(req.parse(&out), Ok(httparse::Status::Complete(out.len())));
            prop_assert_eq!(req.headers.iter().filter(|h| h.name.eq_ignore_ascii_case("host")).count(), 1);
            prop_assert!(p.len <= input.len());
        }
    }
}

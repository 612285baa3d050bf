//! The HTTP/1.1 front's request head parser and rewriter (`itproxy_router::codec`), on any
//! bytes a client may send.
//!
//! Never panics, and whatever it forwards is one well-formed request head (plus the body it
//! announced) with exactly one Host, no hop-by-hop header, and our X-Forwarded-For.
#![no_main]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, LazyLock};

use arc_swap::ArcSwap;
use itproxy_router::codec::{RequestCodec, RequestVerdict};
use itproxy_router::{HostName, Route, RouteTable, Upstream, UpstreamSpec};
use libfuzzer_sys::fuzz_target;

/// The hosts the seeds use: a plain route, a TLS upstream (handed over) and a redirecting one.
static FRONT: LazyLock<RequestCodec> = LazyLock::new(|| {
    let route = |host: &str, target: &str, redirect: bool| {
        let spec = UpstreamSpec::parse(target).unwrap();
        let addr = SocketAddr::new(Ipv4Addr::LOCALHOST.into(), spec.port());
        let upstream = Upstream::new(spec, vec![addr], 1, &Default::default());
        Route::new(HostName::parse(host).unwrap(), Arc::new(upstream)).with_redirect_https(redirect)
    };
    let table = RouteTable::new([
        route("api.test", "127.0.0.1:8000", false),
        route("web.test", "http://localhost:3000", false),
        route("secure.test", "https://127.0.0.1:8443", false),
        route("shop.test", "127.0.0.1:9000", true),
    ]);
    // No trusted proxies and no HTTPS listener (so no redirects), as before.
    RequestCodec::new(Arc::new(ArcSwap::from_pointee(table)), vec![], None)
});

/// Headers a proxy must not pass on (RFC 9110 7.6.1, and the proxy credentials), whatever the
/// client sent. Written out here rather than taken from the router: the oracle must not share
/// the code's mistakes.
const HOP_BY_HOP: [&str; 10] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "proxy-authorization",
    "proxy-authenticate",
    "http2-settings",
];

fuzz_target!(|data: &[u8]| {
    // The first byte picks the client's address family, so both X-Forwarded-For forms are seen.
    let Some((&family, head)) = data.split_first() else {
        return;
    };
    let peer = if family & 1 == 0 {
        IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1))
    } else {
        IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1))
    };
    let mut out = Vec::new();
    let RequestVerdict::Forward { len } = FRONT.read(head, peer, false, &mut out) else {
        return;
    };

    // As many fields as the front takes (its 256, Pingora's limit), and ours.
    let mut headers = [httparse::EMPTY_HEADER; 260];
    let mut req = httparse::Request::new(&mut headers);
    let head_len = match req.parse(&out) {
        Ok(httparse::Status::Complete(n)) => n,
        other => panic!("the forwarded head does not parse ({other:?}): {out:?}"),
    };
    let mut theirs = [httparse::EMPTY_HEADER; 256];
    let mut original = httparse::Request::new(&mut theirs);
    let Ok(httparse::Status::Complete(original_len)) = original.parse(head) else {
        panic!("a head that does not parse was forwarded: {head:?}");
    };
    assert_eq!(len, original_len + (out.len() - head_len), "{out:?}");
    assert_eq!(req.method, original.method, "the method changed");
    assert_eq!(req.path, original.path, "the target changed");
    assert_eq!(req.version, Some(1));

    let count = |name: &str| {
        req.headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case(name))
            .count()
    };
    assert_eq!(count("host"), 1, "not exactly one Host: {out:?}");
    for name in HOP_BY_HOP {
        assert_eq!(count(name), 0, "{name} was forwarded: {out:?}");
    }
    assert_eq!(count("x-forwarded-for"), 1, "{out:?}");
    let xff = req
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("x-forwarded-for"))
        .unwrap();
    // No trusted proxies here: the client's own claim is dropped, its address stands alone.
    assert_eq!(xff.value, peer.to_string().as_bytes());

    // The body the client announced, and nothing after it, follows the head, and the
    // upstream is told its length: else it would read the body as a next request.
    let length = |headers: &[httparse::Header<'_>]| -> Vec<Vec<u8>> {
        headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case("content-length"))
            .map(|h| h.value.to_vec())
            .collect()
    };
    let body = &out[head_len..];
    assert_eq!(body, &head[original_len..original_len + body.len()]);
    let sent = length(req.headers);
    assert_eq!(
        sent,
        length(original.headers),
        "Content-Length changed: {out:?}"
    );
    if !body.is_empty() {
        // Leading zeros are allowed ("07"), so compare numbers.
        let announced = sent
            .first()
            .and_then(|v| std::str::from_utf8(v).ok()?.parse::<usize>().ok());
        assert_eq!(announced, Some(body.len()), "{out:?}");
    }
});

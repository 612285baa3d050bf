//! DNS as users and containers meet it: the environment's names from itproxy, everything else
//! forwarded (here to a stub resolver on loopback), never an open resolver.

use std::net::{Ipv4Addr, SocketAddr};
use std::process::Command;
use std::time::{Duration, Instant};

use hickory_server::proto::op::{Metadata, ResponseCode};
use hickory_server::proto::rr::rdata::A;
use hickory_server::proto::rr::{Name, RData, Record};
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponseBuilder;

use crate::util::*;

/// `dig` against the daemon; returns its whole output.
fn dig(p: &Itproxy, args: &[&str]) -> String {
    let out = Command::new("dig")
        .args([
            &format!("@{}", p.dns.ip()),
            "-p",
            &p.dns.port().to_string(),
            "+time=3",
            "+tries=1",
        ])
        .args(args)
        .output()
        .expect("dig is installed (dnsutils)");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn short(p: &Itproxy, args: &[&str]) -> Vec<String> {
    let mut a = args.to_vec();
    a.push("+short");
    dig(p, &a).lines().map(str::to_string).collect()
}

fn status(out: &str) -> &str {
    out.split("status: ")
        .nth(1)
        .and_then(|s| s.split(',').next())
        .unwrap_or("none")
}

fn flags(out: &str) -> String {
    out.split(";; flags: ")
        .nth(1)
        .and_then(|s| s.split(';').next())
        .unwrap_or("")
        .to_string()
}

/// A stub upstream resolver on loopback: `ext.example.` has one A record, `big.example.` forty.
struct Stub;

#[async_trait::async_trait]
impl RequestHandler for Stub {
    async fn handle_request<R: ResponseHandler, T: hickory_server::net::runtime::Time>(
        &self,
        request: &Request,
        mut rh: R,
    ) -> ResponseInfo {
        let info = request.request_info().unwrap();
        let name: Name = info.query.name().into();
        let count = match name.to_ascii().as_str() {
            "ext.example." => 1,
            "big.example." => 40,
            _ => 0,
        };
        let answers: Vec<Record> = (0..count)
            .map(|i| {
                Record::from_rdata(
                    name.clone(),
                    60,
                    RData::A(A(Ipv4Addr::new(192, 0, 2, i as u8 + 1))),
                )
            })
            .collect();
        let mut md = Metadata::response_from_request(&request.metadata);
        md.authoritative = true;
        md.response_code = if count == 0 {
            ResponseCode::NXDomain
        } else {
            ResponseCode::NoError
        };
        let resp = MessageResponseBuilder::from_message_request(request).build(
            md,
            answers.iter(),
            [].iter(),
            [].iter(),
            [].iter(),
        );
        rh.send_response(resp).await.unwrap()
    }
}

async fn stub_upstream() -> SocketAddr {
    // UDP picks a free port; TCP takes the same one (another if a parallel test holds it).
    let (udp, tcp, addr) = loop {
        let udp = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = udp.local_addr().unwrap();
        if let Ok(tcp) = tokio::net::TcpListener::bind(addr).await {
            break (udp, tcp, addr);
        }
    };
    let mut server = hickory_server::Server::new(Stub);
    server.register_socket(udp);
    server.register_listener(tcp, Duration::from_secs(5), 65535);
    tokio::spawn(async move {
        let _ = server.block_until_done().await;
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routed_names_resolve_to_the_proxy_and_follow_the_route_table() {
    let p = Itproxy::start();
    let nx = dig(&p, &["api.test", "A"]);
    assert_eq!(status(&nx), "NXDOMAIN", "{nx}");
    assert!(flags(&nx).contains("aa"), "{nx}");
    assert!(nx.contains("SOA"), "NXDOMAIN carries the SOA: {nx}");

    p.ok(&["route", "api", "127.0.0.1:9"]);
    assert_eq!(
        short(&p, &["api.test", "A"]),
        ["127.0.0.1"],
        "a new route resolves at once"
    );
    assert_eq!(short(&p, &["API.Test", "A"]), ["127.0.0.1"]);
    assert_eq!(
        short(&p, &["v2.api.test", "A"]),
        ["127.0.0.1"],
        "names below a route too"
    );
    assert_eq!(short(&p, &["api.test", "A", "+tcp"]), ["127.0.0.1"]);
    let aaaa = dig(&p, &["api.test", "AAAA"]);
    assert_eq!(
        status(&aaaa),
        "NOERROR",
        "NODATA: the proxy has no IPv6 listener: {aaaa}"
    );
    assert!(aaaa.contains("ANSWER: 0"), "{aaaa}");
    let soa = short(&p, &["test", "SOA"]);
    assert!(soa[0].starts_with("ns.test. hostmaster.test. "), "{soa:?}");
    assert_eq!(short(&p, &["test", "NS"]), ["ns.test."]);
    let ttl = dig(&p, &["api.test", "A", "+noall", "+answer"]);
    assert!(
        ttl.contains("\t5\tIN\tA\t127.0.0.1") || ttl.contains(" 5 IN A "),
        "{ttl}"
    );

    p.ok(&["unroute", "api"]);
    assert_eq!(
        status(&dig(&p, &["api.test", "A"])),
        "NXDOMAIN",
        "a removed route stops resolving"
    );

    let out = p.ok(&["route", "web", "127.0.0.1:9"]);
    assert!(out.contains("web.test"));
    let shown = p.ok(&["resolve", "web.test"]);
    assert!(
        shown.contains("web.test.")
            && shown.contains("127.0.0.1")
            && shown.contains("authoritative"),
        "{shown}"
    );
    let json: serde_json::Value =
        serde_json::from_str(&p.ok(&["resolve", "nope.test", "--json"])).unwrap();
    assert_eq!(json["status"], "Non-Existent Domain");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hickory_client_resolves_routed_names() {
    use hickory_resolver::config::{NameServerConfig, ResolverConfig};
    let p = Itproxy::start();
    p.ok(&["route", "shop", "127.0.0.1:9"]);
    let mut ns = NameServerConfig::udp_and_tcp(p.dns.ip());
    for c in &mut ns.connections {
        c.port = p.dns.port();
    }
    let config = ResolverConfig::from_parts(None, vec![], vec![ns]);
    let resolver = hickory_resolver::Resolver::builder_with_config(
        config,
        hickory_resolver::net::runtime::TokioRuntimeProvider::default(),
    )
    .build()
    .unwrap();
    let ips: Vec<_> = resolver
        .lookup_ip("shop.test.")
        .await
        .unwrap()
        .iter()
        .collect();
    assert_eq!(ips, [std::net::IpAddr::V4(Ipv4Addr::LOCALHOST)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_names_are_forwarded_with_truncation_and_tcp_fallback() {
    let upstream = stub_upstream().await;
    let p = Itproxy::start_with(&["--dns-upstream", &upstream.to_string()]);
    assert_eq!(short(&p, &["ext.example", "A"]), ["192.0.2.1"]);
    let nx = dig(&p, &["missing.example", "A"]);
    assert_eq!(
        status(&nx),
        "NXDOMAIN",
        "an honest NXDOMAIN from upstream: {nx}"
    );

    // 40 A records do not fit in 512 bytes: without EDNS the UDP answer is truncated...
    let udp = dig(&p, &["big.example", "A", "+noedns", "+ignore"]);
    assert!(flags(&udp).contains("tc"), "{udp}");
    // ...and the client gets all of them over TCP.
    assert_eq!(short(&p, &["big.example", "A", "+tcp"]).len(), 40);
    // With EDNS (dig's default 1232 bytes) they fit in UDP.
    assert_eq!(short(&p, &["big.example", "A"]).len(), 40);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_upstream_gives_a_quick_servfail() {
    let dead = format!("127.0.0.1:{}", free_port());
    let p = Itproxy::start_with(&["--dns-upstream", &dead]);
    let started = Instant::now();
    let out = dig(&p, &["ext.example", "A"]);
    assert_eq!(status(&out), "SERVFAIL", "{out}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "took {:?}",
        started.elapsed()
    );
    // Our own names do not depend on the upstream.
    p.ok(&["route", "api", "127.0.0.1:9"]);
    assert_eq!(short(&p, &["api.test", "A"]), ["127.0.0.1"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_packets_never_break_the_server() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let p = Itproxy::start();
    p.ok(&["route", "api", "127.0.0.1:9"]);
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let mut garbage: Vec<Vec<u8>> = vec![
        vec![],
        vec![0x12],
        vec![0x12, 0x34, 0x01, 0x00, 0x00], // truncated header
        vec![0x12, 0x34, 0x01, 0x00, 0x00, 0x01, 0, 0, 0, 0, 0, 0], // one query promised, none there
        // a question whose name is a compression pointer to itself
        vec![
            0x12, 0x34, 0x01, 0x00, 0x00, 0x01, 0, 0, 0, 0, 0, 0, 0xC0, 0x0C, 0x00, 0x01, 0x00,
            0x01,
        ],
        // a label longer than the packet
        vec![
            0x12, 0x34, 0x01, 0x00, 0x00, 0x01, 0, 0, 0, 0, 0, 0, 0x3F, b'a', 0x00,
        ],
    ];
    // Plus bounded pseudo-random packets (a fixed seed keeps failures reproducible).
    let mut x: u64 = 0x2545_F491_4F6C_DD1D;
    for len in 0..300usize {
        let mut packet = Vec::with_capacity(len);
        for _ in 0..len {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            packet.push(x as u8);
        }
        garbage.push(packet);
    }
    for g in &garbage {
        sock.send_to(g, p.dns).await.unwrap();
        let mut buf = [0u8; 1500];
        // FORMERR, another error, or silence: anything but a crash.
        if let Ok(Ok((n, _))) =
            tokio::time::timeout(Duration::from_millis(20), sock.recv_from(&mut buf)).await
        {
            assert!(n >= 4);
        }
    }
    let formerr = dig(&p, &["api.test", "A"]); // still answering normally
    assert_eq!(short(&p, &["api.test", "A"]), ["127.0.0.1"], "{formerr}");

    // The same over TCP, including a length prefix that promises more than arrives.
    for g in garbage.iter().take(50) {
        let mut s = tokio::net::TcpStream::connect(p.dns).await.unwrap();
        let _ = s.write_all(&((g.len() as u16) + 5).to_be_bytes()).await;
        let _ = s.write_all(g).await;
        drop(s);
    }
    let mut s = tokio::net::TcpStream::connect(p.dns).await.unwrap();
    s.write_all(&[0x00, 0x05, 1, 2, 3, 4, 5]).await.unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(6), s.read_to_end(&mut buf)).await;
    assert_eq!(short(&p, &["api.test", "A", "+tcp"]), ["127.0.0.1"]);
    assert!(
        p.log().lines().all(|l| !l.contains("panicked")),
        "{}",
        p.log()
    );
}

#[test]
fn dns_setup_prints_a_plan_for_the_domains() {
    let dir = tempfile::tempdir().unwrap();
    let out = run_in(dir.path(), &["dns", "setup"]);
    let text = output_text(&out);
    // Which resolver is configured depends on the machine; the plan or the advice names the
    // domain and the listener either way, and nothing is changed without --apply.
    assert!(
        text.contains("test") && text.contains("127.0.0.1"),
        "{text}"
    );
    assert!(!text.contains("wrote "), "{text}");
}

/// DNS header: id, flags (a standard query asking for recursion), section counts.
fn header(id: u16, qdcount: u16) -> Vec<u8> {
    let mut h = id.to_be_bytes().to_vec();
    h.extend([0x01, 0x00]);
    h.extend(qdcount.to_be_bytes());
    h.extend([0, 0, 0, 0, 0, 0]);
    h
}

/// A query for `labels` (each written as given, so it may be illegal) type A class IN.
fn query_for(id: u16, labels: &[&[u8]]) -> Vec<u8> {
    let mut q = header(id, 1);
    for l in labels {
        q.push(l.len() as u8);
        q.extend_from_slice(l);
    }
    q.extend([0, 0, 1, 0, 1]);
    q
}

/// Sends `packet` in one datagram; the answer, if one comes within a second.
async fn over_udp(dns: SocketAddr, packet: &[u8]) -> Option<Vec<u8>> {
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    sock.send_to(packet, dns).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let (n, _) = tokio::time::timeout(Duration::from_secs(1), sock.recv_from(&mut buf))
        .await
        .ok()?
        .ok()?;
    buf.truncate(n);
    Some(buf)
}

/// Sends `packet` in one TCP frame; the answer, if one comes within a second.
async fn over_tcp(dns: SocketAddr, packet: &[u8]) -> Option<Vec<u8>> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(dns).await.unwrap();
    let mut frame = (packet.len() as u16).to_be_bytes().to_vec();
    frame.extend_from_slice(packet);
    s.write_all(&frame).await.unwrap();
    let read = async {
        let mut len = [0u8; 2];
        s.read_exact(&mut len).await.ok()?;
        let mut buf = vec![0u8; u16::from_be_bytes(len).into()];
        s.read_exact(&mut buf).await.ok()?;
        Some(buf)
    };
    tokio::time::timeout(Duration::from_secs(1), read)
        .await
        .ok()?
}

/// The server still answers a routed name, over UDP and TCP, within a second each.
async fn assert_still_answers(dns: SocketAddr, after: &str) {
    use hickory_server::proto::op::Message;
    let q = query_for(0x0a0a, &[b"api", b"test"]);
    for (proto, answer) in [
        ("UDP", over_udp(dns, &q).await),
        ("TCP", over_tcp(dns, &q).await),
    ] {
        let answer = answer.unwrap_or_else(|| panic!("no {proto} answer after {after}"));
        let m = Message::from_vec(&answer).unwrap();
        assert_eq!(m.metadata.response_code, ResponseCode::NoError, "{after}");
        assert_eq!(m.answers.len(), 1, "{proto} after {after}: {m:?}");
    }
}

/// What dnsmasq and Knot answer to a query they cannot read but whose header they can: the
/// same id, QR set, FORMERR, nothing echoed.
fn assert_formerr(answer: Option<Vec<u8>>, id: u16, case: &str) {
    use hickory_server::proto::op::{Message, MessageType};
    let answer = answer.unwrap_or_else(|| panic!("no answer to {case}"));
    let m = Message::from_vec(&answer).unwrap_or_else(|e| panic!("{case}: unreadable answer: {e}"));
    assert_eq!(m.metadata.id, id, "{case}");
    assert_eq!(m.metadata.message_type, MessageType::Response, "{case}");
    assert_eq!(m.metadata.response_code, ResponseCode::FormErr, "{case}");
    assert!(m.answers.is_empty(), "{case}: {m:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queries_that_cannot_be_read_get_formerr_and_the_server_keeps_answering() {
    let p = Itproxy::start();
    p.ok(&["route", "api", "127.0.0.1:9"]);
    let long_label = [b'a'; 64];
    let label = [b'b'; 63];
    let mut self_pointer = header(0x1002, 1);
    self_pointer.extend([0xC0, 12, 0, 1, 0, 1]); // the name at offset 12 is "see offset 12"
    let mut pointer_pair = header(0x1003, 1);
    pointer_pair.extend([0xC0, 14, 0xC0, 12, 0, 1, 0, 1]); // 12 -> 14 -> 12 -> ...
    let mut two_promised = query_for(0x1006, &[b"api", b"test"]);
    two_promised[5] = 2; // QDCOUNT 2, one question
    let cases: Vec<(&str, u16, Vec<u8>)> = vec![
        ("a name that is a pointer to itself", 0x1002, self_pointer),
        ("two pointers to each other", 0x1003, pointer_pair),
        (
            "a label of 64 bytes",
            0x1004,
            query_for(0x1004, &[&long_label, b"test"]),
        ),
        (
            "a name of 261 bytes",
            0x1005,
            query_for(0x1005, &[&label, &label, &label, &label, b"test"]),
        ),
        ("QDCOUNT 2 with one question", 0x1006, two_promised),
        (
            "bytes that are not DNS after a query's header",
            0x1007,
            [
                &header(0x1007, 0)[..4],
                b" GET / HTTP/1.1\r\n\r\n\x00\xff\xc0\x0c",
            ]
            .concat(),
        ),
    ];
    for (case, id, packet) in &cases {
        assert_formerr(over_udp(p.dns, packet).await, *id, &format!("{case} (UDP)"));
        assert_still_answers(p.dns, case).await;
        assert_formerr(over_tcp(p.dns, packet).await, *id, &format!("{case} (TCP)"));
        assert_still_answers(p.dns, case).await;
    }
    assert!(!p.log().contains("panicked"), "{}", p.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncated_packets_garbage_and_broken_tcp_frames_never_stop_the_server() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let p = Itproxy::start();
    p.ok(&["route", "api", "127.0.0.1:9"]);

    // Too short for a header: there is no id to answer to.
    let truncated = [0x12, 0x34, 0x01, 0x00, 0x00];
    assert_eq!(over_udp(p.dns, &truncated).await, None, "truncated (UDP)");
    assert_eq!(over_tcp(p.dns, &truncated).await, None, "truncated (TCP)");
    assert_still_answers(p.dns, "a truncated header").await;

    // Garbage whose header has the QR bit set. dnsmasq and Knot drop anything marked as a
    // response; hickory answers what it cannot read with FORMERR before it looks at QR, so
    // the asker may get a bare 12-byte header back, but never more than it sent: no
    // amplification, and a FORMERR (a readable response) is dropped in turn, so two servers
    // cannot bounce it between them.
    let garbage = b"\xde\xad\xbe\xef GET / HTTP/1.1\r\n\r\n\x00\xff\xc0\x0c";
    let answers = [
        over_udp(p.dns, garbage).await,
        over_tcp(p.dns, garbage).await,
    ];
    for answer in answers.iter().flatten() {
        assert!(answer.len() <= 12, "{answer:?}");
    }
    assert_still_answers(p.dns, "garbage").await;
    let formerr = header(0xdead, 0)
        .into_iter()
        .enumerate()
        .map(|(i, b)| if i == 2 { 0x80 | b } else { b }) // QR: a response
        .collect::<Vec<u8>>();
    assert_eq!(
        over_udp(p.dns, &formerr).await,
        None,
        "a response is not answered"
    );

    // An empty TCP frame ends the connection: nothing more is read from it, and it is closed
    // by the 5 s idle timeout at the latest (dnsmasq and Knot close it at once; hickory's
    // stream stops reading and leaves the socket to the timeout).
    let mut s = tokio::net::TcpStream::connect(p.dns).await.unwrap();
    let started = Instant::now();
    s.write_all(&[0, 0]).await.unwrap();
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(7), s.read_to_end(&mut rest)).await;
    assert!(
        closed.is_ok(),
        "an empty frame left the connection open past the idle timeout"
    );
    assert!(rest.is_empty(), "{rest:?}");
    assert!(started.elapsed() < Duration::from_secs(7));
    assert_still_answers(p.dns, "an empty TCP frame").await;

    // A length prefix promising more than arrives, then the client goes away.
    let mut s = tokio::net::TcpStream::connect(p.dns).await.unwrap();
    let mut short = 512u16.to_be_bytes().to_vec();
    short.extend(query_for(0x2001, &[b"api", b"test"]));
    s.write_all(&short).await.unwrap();
    drop(s);
    assert_still_answers(p.dns, "a frame cut short").await;
    assert!(!p.log().contains("panicked"), "{}", p.log());
}

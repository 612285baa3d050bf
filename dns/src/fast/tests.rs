//! The fast path answers only what it answers exactly as the full path (hickory's decoder, the
//! handler, hickory's encoder) does: same header, question, records and TTLs; names compared
//! case-insensitively (the fast path's answer owner points at the question as sent).

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex};

use hickory_server::net::runtime::TokioTime;
use hickory_server::net::xfer::Protocol;
use hickory_server::net::NetError;
use hickory_server::proto::op::Message;
use hickory_server::proto::rr::Record;
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponse;
use proptest::prelude::*;

use super::*;
use crate::server::Handler;

fn zone() -> Zone {
    Zone::new(
        ["test", "dev.internal"],
        ["api.test", "web.test", "a.b.dev.internal"],
        [
            ("db.test", vec!["172.18.0.5".parse().unwrap()]),
            (
                "both.test",
                vec!["172.18.0.6".parse().unwrap(), "fd00::6".parse().unwrap()],
            ),
        ],
        42,
        5,
    )
    .unwrap()
}

const LOOPBACK: ProxyAddrs = ProxyAddrs {
    v4: Some(Ipv4Addr::LOCALHOST),
    v6: Some(Ipv6Addr::LOCALHOST),
};
const GATEWAY: ProxyAddrs = ProxyAddrs {
    v4: Some(Ipv4Addr::new(172, 18, 0, 1)),
    v6: None,
};

#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>, Vec<u8>);

#[async_trait::async_trait]
impl ResponseHandler for Capture {
    async fn send_response<'a>(
        &mut self,
        response: MessageResponse<
            '_,
            'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
        >,
    ) -> Result<ResponseInfo, NetError> {
        let (info, bytes) = crate::udp::encode(response, &self.1)?;
        *self.0.lock().unwrap() = bytes;
        Ok(info)
    }
}

/// The full path's answer to `packet`.
fn full(packet: &[u8], view: ProxyAddrs) -> Vec<u8> {
    let handler = Handler::without_forwarding(zone(), view);
    let src: SocketAddr = "127.0.0.1:5353".parse().unwrap();
    let request = Request::from_bytes(packet.to_vec(), src, Protocol::Udp)
        .expect("a query the fast path answered decodes");
    let capture = Capture(Arc::default(), crate::udp::question_of(&request));
    tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
        .block_on(handler.handle_request::<_, TokioTime>(&request, capture.clone()));
    let bytes = capture.0.lock().unwrap().clone();
    bytes
}

fn fast(packet: &[u8], view: ProxyAddrs) -> Option<Vec<u8>> {
    let mut out = [0u8; MAX_ANSWER];
    answer(packet, &zone(), &view, false, &mut out).map(|n| out[..n].to_vec())
}

/// What a reader of the answer sees: header fields and every record, names lowercased.
fn seen(bytes: &[u8]) -> String {
    let m = Message::from_vec(bytes).expect("an answer parses");
    let rec = |r: &Record| {
        format!(
            "{} {} {:?} {} {}",
            r.name.to_lowercase(),
            r.ttl,
            r.dns_class,
            r.record_type(),
            r.data.to_string().to_lowercase()
        )
    };
    format!(
        "{:?}\nq={:?}\nan={:?}\nns={:?}\nar={:?}\nedns={:?}",
        m.metadata,
        m.queries
            .iter()
            .map(|q| format!(
                "{} {} {:?}",
                q.name.to_lowercase(),
                q.query_type,
                q.query_class
            ))
            .collect::<Vec<_>>(),
        m.answers.iter().map(rec).collect::<Vec<_>>(),
        m.authorities.iter().map(rec).collect::<Vec<_>>(),
        m.additionals.iter().map(rec).collect::<Vec<_>>(),
        m.edns.as_ref().map(|e| (
            e.max_payload(),
            e.version(),
            e.rcode_high(),
            e.flags().dnssec_ok
        )),
    )
}

/// A query packet: header flags bytes, one question, and an optional OPT with `options` bytes.
fn query(
    id: u16,
    flags: [u8; 2],
    labels: &[&[u8]],
    qtype: u16,
    qclass: u16,
    opt: Option<(u16, u32, Vec<u8>)>,
) -> Vec<u8> {
    let mut p = Vec::new();
    p.extend(id.to_be_bytes());
    p.extend(flags);
    p.extend([0, 1, 0, 0, 0, 0, 0, u8::from(opt.is_some())]);
    for l in labels {
        p.push(l.len() as u8);
        p.extend(*l);
    }
    p.push(0);
    p.extend(qtype.to_be_bytes());
    p.extend(qclass.to_be_bytes());
    if let Some((payload, ttl, options)) = opt {
        p.push(0);
        p.extend(41u16.to_be_bytes());
        p.extend(payload.to_be_bytes());
        p.extend(ttl.to_be_bytes());
        p.extend((options.len() as u16).to_be_bytes());
        p.extend(options);
    }
    p
}

fn plain(name: &str, qtype: u16) -> Vec<u8> {
    let labels: Vec<&[u8]> = name.split('.').map(str::as_bytes).collect();
    query(0x1234, [0x01, 0x00], &labels, qtype, 1, None)
}

#[test]
fn common_queries_take_the_fast_path_and_answer_as_the_full_path() {
    for (packet, view) in [
        (plain("api.test", TYPE_A), LOOPBACK),
        (plain("API.Test", TYPE_AAAA), LOOPBACK),
        (plain("v2.api.test", TYPE_A), GATEWAY),
        (plain("api.test", TYPE_AAAA), GATEWAY), // NODATA + SOA
        (plain("nope.test", TYPE_A), LOOPBACK),  // NXDOMAIN + SOA
        (plain("db.test", TYPE_A), LOOPBACK),
        (plain("both.test", TYPE_AAAA), LOOPBACK),
        (plain("ns.test", TYPE_A), LOOPBACK),
        (plain("x.a.b.dev.internal", TYPE_A), LOOPBACK),
        (
            query(
                7,
                [0x00, 0x10],
                &[b"web", b"test"],
                TYPE_A,
                1,
                Some((1232, 0, vec![])),
            ),
            LOOPBACK,
        ),
    ] {
        let fast = fast(&packet, view).unwrap_or_else(|| panic!("not fast: {packet:?}"));
        assert_eq!(seen(&fast), seen(&full(&packet, view)), "{packet:?}");
    }
}

#[test]
fn the_rest_takes_the_full_path() {
    let cookie = vec![0, 10, 0, 8, 1, 2, 3, 4, 5, 6, 7, 8];
    for packet in [
        plain("test", TYPE_A),                                    // the apex
        plain("api.test", 15),                                    // MX
        plain("api.test", 255),                                   // ANY
        plain("example.com", TYPE_A),                             // forwarded
        query(1, [0x01, 0], &[b"api", b"test"], TYPE_A, 3, None), // class CH
        query(1, [0x81, 0], &[b"api", b"test"], TYPE_A, 1, None), // a response
        query(1, [0x11, 0], &[b"api", b"test"], TYPE_A, 1, None), // opcode STATUS
        query(1, [0x03, 0], &[b"api", b"test"], TYPE_A, 1, None), // truncated
        query(
            1,
            [0x01, 0],
            &[b"api", b"test"],
            TYPE_A,
            1,
            Some((1232, 0, cookie.clone())),
        ),
        [plain("api.test", TYPE_A), vec![0]].concat(), // trailing byte
        vec![0; 11],
    ] {
        assert_eq!(fast(&packet, LOOPBACK), None, "{packet:?}");
    }
}

fn label() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        Just(b"api".to_vec()),
        Just(b"API".to_vec()),
        Just(b"test".to_vec()),
        Just(b"TeSt".to_vec()),
        Just(b"db".to_vec()),
        Just(b"both".to_vec()),
        Just(b"ns".to_vec()),
        Just(b"dev".to_vec()),
        Just(b"internal".to_vec()),
        Just(b"a".to_vec()),
        Just(b"b".to_vec()),
        proptest::collection::vec(any::<u8>(), 1..63),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 3000, ..ProptestConfig::default() })]

    #[test]
    fn whatever_it_answers_it_answers_as_the_full_path(
        id in any::<u16>(),
        // Mostly flags of a standard query (RD, CD, AD, AA, Z set or not), sometimes anything.
        flags in prop_oneof![
            (any::<u8>(), any::<u8>()).prop_map(|(a, b)| [a & 0x05, b & 0x7f]),
            any::<[u8; 2]>(),
        ],
        prefix in proptest::collection::vec(label(), 0..4),
        suffix in prop_oneof![
            Just(vec![b"test".to_vec()]),
            Just(vec![b"TEST".to_vec()]),
            Just(vec![b"dev".to_vec(), b"internal".to_vec()]),
            proptest::collection::vec(label(), 0..2),
        ],
        qtype in prop_oneof![3 => Just(TYPE_A), 3 => Just(TYPE_AAAA), 1 => Just(6u16), 1 => any::<u16>()],
        qclass in prop_oneof![4 => Just(1u16), 1 => any::<u16>()],
        opt in proptest::option::of((any::<u16>(), any::<u32>(), proptest::collection::vec(any::<u8>(), 0..3))),
        gateway in any::<bool>(),
    ) {
        let labels: Vec<&[u8]> = prefix.iter().chain(&suffix).map(Vec::as_slice).collect();
        let packet = query(id, flags, &labels, qtype, qclass, opt);
        let view = if gateway { GATEWAY } else { LOOPBACK };
        if let Some(fast) = fast(&packet, view) {
            prop_assert_eq!(seen(&fast), seen(&full(&packet, view)));
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic_and_any_answer_parses(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        if let Some(a) = fast(&bytes, LOOPBACK) {
            prop_assert!(Message::from_vec(&a).is_ok());
        }
    }
}

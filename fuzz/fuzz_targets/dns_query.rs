//! The DNS server's query path: any bytes a client may send, read by the same hickory parser
//! the server uses, and every question answered by the zone. Never panics, and every answer
//! can be sent back (it encodes, and its records belong to the question's name). The UDP fast
//! path answers only what the full path decodes, with the zone's code, in a message that reads.
#![no_main]

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::LazyLock;

use hickory_server::net::xfer::Protocol;
use hickory_server::server::Request;
use itproxy_dns::proto::op::{Message, OpCode, ResponseCode};
use itproxy_dns::proto::rr::Name;
use itproxy_dns::{Answer, ProxyAddrs, Zone};
use libfuzzer_sys::fuzz_target;

/// Two domains, routed names (one nested below another domain), and a TCP-only service.
static ZONE: LazyLock<Zone> = LazyLock::new(|| {
    Zone::new(
        ["test", "corp.example"],
        ["api.test", "web.test", "app.corp.example"],
        [(
            "db.test",
            vec!["172.18.0.5".parse().unwrap(), "fd00::5".parse().unwrap()],
        )],
        7,
        5,
    )
    .unwrap()
});

const VIEW: ProxyAddrs = ProxyAddrs {
    v4: Some(Ipv4Addr::LOCALHOST),
    v6: Some(Ipv6Addr::LOCALHOST),
};

fuzz_target!(|data: &[u8]| {
    // The client side's parser too (`itproxy resolve` reads answers with it).
    let _ = Message::from_vec(data);

    let mut out = [0u8; 512];
    let fast = itproxy_dns::fast_answer(data, &ZONE, &VIEW, &mut out).map(|n| {
        Message::from_vec(&out[..n]).expect("a fast answer does not read back")
    });

    let src = SocketAddr::new(Ipv4Addr::LOCALHOST.into(), 53000);
    let Ok(request) = Request::from_bytes(data.to_vec(), src, Protocol::Udp) else {
        assert!(fast.is_none(), "the fast path answered what the full path cannot decode");
        return;
    };
    if let Some(fast) = &fast {
        let query = &request.queries.queries()[0];
        match ZONE.answer(query.name(), query.query_type(), &VIEW) {
            Answer::Authoritative { code, answers, .. } => {
                assert_eq!(fast.metadata.response_code, code);
                assert_eq!(fast.answers.len(), answers.len());
            }
            Answer::NotOurs => panic!("the fast path answered a name that is not ours"),
        }
    }
    for query in request.queries.queries() {
        let Answer::Authoritative {
            code,
            answers,
            authority,
        } = ZONE.answer(query.name(), query.query_type(), &VIEW)
        else {
            continue;
        };
        assert!(matches!(
            code,
            ResponseCode::NoError | ResponseCode::NXDomain
        ));
        let asked = Name::from(query.name());
        for record in &answers {
            assert_eq!(record.name, asked, "an answer for another name");
        }
        let mut reply = Message::response(request.metadata.id, OpCode::Query);
        reply.metadata.response_code = code;
        reply.add_query(query.original().clone());
        reply.insert_answers(answers);
        reply.insert_authorities(authority);
        let wire = reply.to_vec().expect("the answer does not encode");
        Message::from_vec(&wire).expect("the answer does not read back");
    }
});

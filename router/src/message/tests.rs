//! The gate's rules, one table per rule.

use super::*;

fn check(head: &[(&'static str, &'static str)], version: u8) -> Result<RequestBody, u16> {
    check_request(version, head.iter().map(|(n, v)| (*n, v.as_bytes()))).map_err(|r| r.status)
}

#[test]
fn plain_requests_pass() {
    assert_eq!(check(&[("Host", "a.test")], 1), Ok(RequestBody::None));
    assert_eq!(
        check(&[("Host", "a.test"), ("Content-Length", "05")], 1),
        Ok(RequestBody::Length(5))
    );
    assert_eq!(
        check(&[("Host", "a.test"), ("Transfer-Encoding", "Chunked")], 1),
        Ok(RequestBody::Chunked)
    );
    assert_eq!(
        check(&[("Connection", "keep-alive, X-Private")], 1),
        Ok(RequestBody::None)
    );
}

#[test]
fn ambiguous_framing_is_refused() {
    for (head, status) in [
        (&[("Host", "a.test"), ("host", "b.test")][..], 400),
        (&[("Content-Length", "5"), ("Content-Length", "5")], 400),
        (&[("Content-Length", "5"), ("content-length", "05")], 400),
        (&[("Content-Length", "5, 5")], 400),
        (&[("Content-Length", "+5")], 400),
        (&[("Content-Length", "")], 400),
        (&[("Content-Length", "99999999999999999999")], 400),
        (
            &[("Transfer-Encoding", "chunked"), ("Content-Length", "3")],
            400,
        ),
        (
            &[
                ("Transfer-Encoding", "chunked"),
                ("Transfer-Encoding", "chunked"),
            ],
            400,
        ),
        (&[("Transfer-Encoding", "gzip, chunked")], 400),
        (&[("Transfer-Encoding", "chunked, gzip")], 400),
        (&[("Transfer-Encoding", "identity")], 400),
        (&[("Connection", "Content-Length")], 400),
        (&[("Connection", "keep-alive, transfer-encoding")], 400),
        (&[("Connection", "Host")], 400),
        (&[("Connection", "x-forwarded-for")], 400),
        (&[("Connection", ":authority")], 400),
        (&[("Connection", "\"X-Forwarded-For\"")], 400),
        (&[("Connection", "keep-alive, x forwarded")], 400),
    ] {
        assert_eq!(check(head, 1), Err(status), "{head:?}");
    }
    assert_eq!(check(&[("Transfer-Encoding", "chunked")], 0), Err(400));
    // Nine options pass, a tenth is refused, as Pingora's pipeline would.
    let nine = "a,b,c,d,e,f,g,h,i";
    assert!(check(&[("Connection", nine)], 1).is_ok());
    assert_eq!(check(&[("Connection", "a,b,c,d,e,f,g,h,i,j")], 1), Err(400));
}

#[test]
fn a_head_is_parsed_at_first_and_once_complete() {
    let head = b"GET / HTTP/1.1\r\nHost: a.test\r\nContent-Length: 2\r\n\r\nok";
    let end = head.len() - 2;
    for ends in [&b"\r\n\r\n"[..], b"\n\n", b"\n\r\n", b"\r\n\n"] {
        let mut head = b"GET / HTTP/1.1\r\nHost: a.test".to_vec();
        head.extend_from_slice(ends);
        let mut scan = HeadScan::default();
        let parses: Vec<usize> = (1..=head.len())
            .filter(|&n| scan.worth_parsing(&head[..n]))
            .collect();
        assert_eq!(parses, [1, head.len()], "{ends:?}");
    }
    // Once the head is complete, only the body's last byte is worth another parse.
    let mut scan = HeadScan::default();
    assert!(scan.worth_parsing(&head[..end]));
    scan.await_body(head.len());
    assert!(!scan.worth_parsing(&head[..end + 1]));
    assert!(scan.worth_parsing(head));
    // At the head limit, the parser refuses it.
    let mut scan = HeadScan::default();
    let big = vec![b'a'; MAX_HEAD];
    assert!(scan.worth_parsing(&big[..10]));
    assert!(!scan.worth_parsing(&big[..MAX_HEAD - 1]));
    assert!(scan.worth_parsing(&big));
}

#[test]
fn request_target_forms() {
    for (method, target) in [
        ("GET", "/"),
        ("GET", "//a.test/x?q"),
        ("GET", "http://a.test/x"),
        ("GET", "HTTPS://a.test"),
        ("OPTIONS", "*"),
        ("OPTIONS", "/x"),
        ("CONNECT", "a.test:443"),
    ] {
        assert_eq!(check_target(method, target), Ok(()), "{method} {target}");
    }
    for (method, target) in [
        ("GET", "x"),
        ("GET", "*"),
        ("GET", "?q=1"),
        ("GET", "ftp://a.test/x"),
        ("GET", "http:/a.test"),
        ("GET", "a.test:80"),
    ] {
        assert!(check_target(method, target).is_err(), "{method} {target}");
    }
}

#[test]
fn underscore_spellings_of_protected_fields() {
    for name in [
        "Transfer_Encoding",
        "content_length",
        "X_Forwarded_For",
        "x-forwarded_proto",
        "X_FORWARDED_HOST",
    ] {
        assert!(is_underscore_alias(name), "{name}");
    }
    for name in [
        "Transfer-Encoding",
        "X-Forwarded-For",
        "X_Request_Id",
        "Host_",
        "Via",
        "content__length",
    ] {
        assert!(!is_underscore_alias(name), "{name}");
    }
}

#[test]
fn one_content_length_rule() {
    for (value, length) in [
        ("0", Some(0)),
        ("05", Some(5)),
        ("9999999999999999999", Some(9_999_999_999_999_999_999)),
        ("", None),
        ("+5", None),
        ("-5", None),
        ("5, 5", None),
        ("5 5", None),
        ("0x5", None),
        ("99999999999999999999", None),
    ] {
        assert_eq!(content_length(value.as_bytes()), length, "{value:?}");
    }
    // The whitespace around a value is httparse's to remove, in both directions.
    let mut headers = [httparse::EMPTY_HEADER; 4];
    let mut req = httparse::Request::new(&mut headers);
    req.parse(b"POST / HTTP/1.1\r\nContent-Length: \t5 \t\r\n\r\n")
        .unwrap();
    assert_eq!(content_length(req.headers[0].value), Some(5));
    let mut headers = [httparse::EMPTY_HEADER; 4];
    let mut resp = httparse::Response::new(&mut headers);
    resp.parse(b"HTTP/1.1 200 OK\r\nContent-Length:  5  \r\n\r\n")
        .unwrap();
    assert_eq!(content_length(resp.headers[0].value), Some(5));
}

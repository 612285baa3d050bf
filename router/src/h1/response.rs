//! Sans-io: an upstream's response head, parsed (httparse), its body's [`Framing`] found, and
//! the client's response head written from it in one pass (hop-by-hop headers out, the length
//! normalised, a `Date` added when missing, header case kept). The `Connection` header and the
//! blank line are added by the caller ([`put_connection`]) once it knows whether the client
//! connection stays open.
//!
//! An upstream head that could be read two ways is an error (a 502), never guessed at:
//! `Content-Length` follows the one rule of [`message::content_length`], and unequal lengths
//! are refused.

use std::io::Write as _;

use pingora::{Error as PError, ErrorType};

use crate::message::{self, named_by_connection, put_header, tokens, HOP_BY_HOP, MAX_HEADERS};

/// How the end of a response body is known.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    /// No body: a HEAD answer, 1xx, 204 or 304.
    Empty,
    /// This many bytes (`Content-Length`).
    Length(u64),
    /// Chunked coding, to its last chunk and trailers.
    Chunked,
    /// Until the upstream closes the connection (no length, or a last coding other than
    /// chunked).
    UntilClose,
}

/// A parsed upstream response head.
#[derive(Debug)]
pub(crate) struct ResponseHead {
    /// Bytes of the buffer the head takes.
    pub(crate) head_len: usize,
    pub(crate) status: u16,
    pub(crate) framing: Framing,
    /// The upstream allows another request on this connection.
    pub(crate) reusable: bool,
}

/// Parses the response head at the start of `buf`. A final response's head is written for
/// the client into `out`, hop-by-hop headers removed, up to (not including) the `Connection`
/// header and the blank line; an informational one (1xx) is relayed as it is and writes
/// nothing. `Ok(None)`: the head is not complete yet.
pub(crate) fn parse_response(
    buf: &[u8],
    head_request: bool,
    out: &mut Vec<u8>,
) -> Result<Option<ResponseHead>, Box<PError>> {
    let invalid = |what: &str| PError::explain(ErrorType::InvalidHTTPHeader, what.to_string());
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut headers);
    let head_len = match resp.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(invalid(&format!("invalid response head: {e}"))),
    };
    let (Some(status), Some(version)) = (resp.code, resp.version) else {
        return Err(invalid("invalid response head"));
    };
    if status == 101 {
        return Err(invalid(
            "101 Switching Protocols to a request without Upgrade",
        ));
    }
    if (100..200).contains(&status) {
        return Ok(Some(ResponseHead {
            head_len,
            status,
            framing: Framing::Empty,
            reusable: false,
        }));
    }
    let mut connection = false;
    let mut close = false;
    let mut keep_alive = false;
    let mut length: Option<u64> = None;
    let mut chunked = None;
    let mut date = false;
    for h in resp.headers.iter() {
        let name = h.name;
        if name.eq_ignore_ascii_case("connection") {
            connection = true;
            for t in tokens(h.value) {
                close |= t.eq_ignore_ascii_case(b"close");
                keep_alive |= t.eq_ignore_ascii_case(b"keep-alive");
            }
        } else if name.eq_ignore_ascii_case("content-length") {
            let n = message::content_length(h.value)
                .ok_or_else(|| invalid("invalid Content-Length in the response"))?;
            if length.is_some_and(|l| l != n) {
                return Err(invalid(
                    "conflicting Content-Length headers in the response",
                ));
            }
            length = Some(n);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            // Only the last coding says how the message ends.
            chunked = Some(
                tokens(h.value)
                    .last()
                    .is_some_and(|t| t.eq_ignore_ascii_case(b"chunked")),
            );
        } else if name.eq_ignore_ascii_case("date") {
            date = true;
        }
    }
    let framing = if head_request || status == 204 || status == 304 {
        Framing::Empty
    } else {
        match (chunked, length) {
            (Some(true), _) => Framing::Chunked,
            (Some(false), _) => Framing::UntilClose,
            (None, Some(n)) => Framing::Length(n),
            (None, None) => Framing::UntilClose,
        }
    };
    // Both framings at once: the message is read by its coding, but whatever sent it cannot
    // be trusted with another request (RFC 9112 6.1).
    let reusable = framing != Framing::UntilClose
        && !(chunked.is_some() && length.is_some())
        && match version {
            1 => !close,
            _ => keep_alive && !close,
        };

    out.clear();
    let _ = write!(out, "HTTP/1.1 {status} {}\r\n", resp.reason.unwrap_or(""));
    for h in resp.headers.iter() {
        let name = h.name;
        // The length goes out once, normalised, below; next to a transfer coding it is
        // wrong and ignored (RFC 9112 6.3). A transfer coding whose last is not chunked
        // means "until close" (the client connection closes after it), and relayed it could
        // be read two ways (`chunked` then `identity`: chunks, for a client reading the first
        // field), so it goes too, as the pipeline removes it.
        // A 204 has no body and is never framed (RFC 9110 8.6, RFC 9112 6.1): a client that
        // honoured either field would read the next response as its body.
        let skip = HOP_BY_HOP[..3].iter().any(|n| name.eq_ignore_ascii_case(n))
            || name.eq_ignore_ascii_case("content-length")
            || ((chunked == Some(false) || status == 204)
                && name.eq_ignore_ascii_case("transfer-encoding"))
            || (connection && named_by_connection(name, resp.headers));
        if !skip {
            put_header(out, name.as_bytes(), h.value);
        }
    }
    if let (None, Some(n), false) = (chunked, length, status == 204) {
        let _ = write!(out, "Content-Length: {n}\r\n");
    }
    if !date {
        put_header(
            out,
            b"Date",
            pingora::protocols::http::date::get_cached_date().as_bytes(),
        );
    }
    Ok(Some(ResponseHead {
        head_len,
        status,
        framing,
        reusable,
    }))
}

/// Ends the client's response head with its `Connection` header and the blank line.
pub(crate) fn put_connection(out: &mut Vec<u8>, keep_alive: bool) {
    out.extend_from_slice(if keep_alive {
        &b"Connection: keep-alive\r\n\r\n"[..]
    } else {
        &b"Connection: close\r\n\r\n"[..]
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Whatever an upstream sends, the response parser returns a head or an error.
        #[test]
        fn any_upstream_bytes_are_handled_without_panic(
            prefix in proptest::sample::select(vec![
                &b""[..],
                b"HTTP/1.1 200 OK\r\n",
                b"HTTP/1.1 200 OK\r\nContent-Length: ",
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: ",
            ]),
            noise in proptest::collection::vec(any::<u8>(), 0..200),
            head_request in any::<bool>(),
        ) {
            let mut input = prefix.to_vec();
            input.extend(&noise);
            input.extend(b"\r\n\r\n");
            let mut out = Vec::new();
            let _ = parse_response(&input, head_request, &mut out);
        }
    }

    fn client_head(upstream: &[u8], head_request: bool) -> (String, ResponseHead) {
        let mut out = Vec::new();
        let r = parse_response(upstream, head_request, &mut out)
            .unwrap()
            .unwrap();
        (String::from_utf8(out).unwrap(), r)
    }

    #[test]
    fn response_hop_by_hop_headers_are_removed_and_framing_found() {
        let (head, r) = client_head(
            b"HTTP/1.1 200 OK\r\nConnection: close, X-Private\r\nX-Private: 1\r\nKeep-Alive: timeout=5\r\nContent-Length: 5\r\nDate: Wed, 25 Nov 2026 10:00:00 GMT\r\n\r\nhello",
            false,
        );
        assert_eq!(
            head,
            "HTTP/1.1 200 OK\r\nDate: Wed, 25 Nov 2026 10:00:00 GMT\r\nContent-Length: 5\r\n"
        );
        assert_eq!(r.framing, Framing::Length(5));
        assert!(!r.reusable, "the upstream said close");
    }

    #[test]
    fn response_framing_headers_survive_and_go_out_once() {
        // A Connection header cannot unframe the response it comes with.
        let (head, r) = client_head(
            b"HTTP/1.1 200 OK\r\nConnection: Content-Length, Transfer-Encoding\r\nContent-Length: 2\r\n\r\nok",
            false,
        );
        assert_eq!(r.framing, Framing::Length(2));
        assert!(head.contains("Content-Length: 2\r\n"), "{head}");
        let (head, r) = client_head(
            b"HTTP/1.1 200 OK\r\nConnection: transfer-encoding\r\nTransfer-Encoding: chunked\r\n\r\n",
            false,
        );
        assert_eq!(r.framing, Framing::Chunked);
        assert!(head.contains("Transfer-Encoding: chunked\r\n"), "{head}");
        // Equal lengths are one length.
        let (head, _) = client_head(
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 05\r\n\r\n",
            false,
        );
        assert_eq!(head.matches("Content-Length").count(), 1, "{head}");
        assert!(head.contains("Content-Length: 5\r\n"), "{head}");
        // 150 Set-Cookie fields are within the limit.
        let mut many = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n".to_vec();
        for i in 0..150 {
            many.extend(format!("Set-Cookie: c{i}=1\r\n").bytes());
        }
        many.extend(b"\r\n");
        let (head, _) = client_head(&many, false);
        assert_eq!(head.matches("Set-Cookie").count(), 150);
    }

    #[test]
    fn framing_follows_rfc_9112() {
        let framing = |head: &[u8], head_request| client_head(head, head_request).1.framing;
        let (_, both) = client_head(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
            false,
        );
        assert_eq!(both.framing, Framing::Chunked);
        assert!(
            !both.reusable,
            "both framings: the connection is not reused"
        );
        assert_eq!(
            framing(
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
                false
            ),
            Framing::UntilClose
        );
        // A 204 goes out unframed.
        for upstream in [
            &b"HTTP/1.1 204 No Content\r\nTransfer-Encoding: chunked\r\n\r\n"[..],
            b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n",
        ] {
            let (head, r) = client_head(upstream, false);
            assert_eq!(r.framing, Framing::Empty);
            assert!(!head.contains("Transfer-Encoding") && !head.contains("Content-Length"));
        }
        // Until close: no transfer coding a client could read as chunked goes on.
        let (head, r) = client_head(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n\r\n",
            false,
        );
        assert_eq!(r.framing, Framing::UntilClose);
        assert!(!head.contains("Transfer-Encoding"), "{head}");
        assert_eq!(
            framing(b"HTTP/1.1 200 OK\r\n\r\n", false),
            Framing::UntilClose
        );
        assert_eq!(
            framing(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n", true),
            Framing::Empty
        );
        assert_eq!(
            framing(
                b"HTTP/1.1 304 Not Modified\r\nContent-Length: 9\r\n\r\n",
                false
            ),
            Framing::Empty
        );
        let (head, r) = client_head(b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\n", false);
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n"));
        assert!(head.contains("Date: "), "a Date is added when missing");
        assert!(!r.reusable, "HTTP/1.0 without keep-alive");
    }

    #[test]
    fn bad_response_heads_are_errors() {
        let mut out = Vec::new();
        for bad in [
            &b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: +1\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 1, 1\r\n\r\n",
            b"HTTP/1.1 101 Switching Protocols\r\n\r\n",
            b"NOT HTTP\r\n\r\n",
        ] {
            assert!(parse_response(bad, false, &mut out).is_err(), "{bad:?}");
        }
        assert!(
            parse_response(b"HTTP/1.1 200 OK\r\nContent-", false, &mut out)
                .unwrap()
                .is_none()
        );
    }
}

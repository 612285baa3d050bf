//! What makes an HTTP/1 request head acceptable, and how its body is framed: one rule for both
//! fronts (the HTTP/1.1 front checks every head before it forwards the request or lends the
//! connection to Pingora's pipeline), so a message that one front would read one way never
//! reaches an upstream that could read it another way. Also the header rules both directions
//! share: the `Content-Length` value, hop-by-hop fields, and fields a `Connection` header may
//! not name.
//!
//! The rules follow RFC 9110/9112 and, where those allow a choice, nginx: a request is refused
//! (and its connection closed) rather than repaired when its framing is ambiguous.

/// Most header fields in one head, on both fronts (Pingora's own limit).
pub(crate) const MAX_HEADERS: usize = 256;
/// Largest request or response head, on both fronts.
pub(crate) const MAX_HEAD: usize = 64 * 1024;
/// Most tokens in a request's `Connection` headers: Pingora's pipeline refuses a tenth (with a
/// bare 400 of its own), so the gate refuses it first, on both fronts.
const MAX_CONNECTION_TOKENS: usize = 9;

/// Header fields a `Connection` header may not name as hop-by-hop: removing them would change
/// how the message is framed or routed, or let a client hide our own forwarding headers.
const PROTECTED: [&str; 7] = [
    "host",
    "content-length",
    "transfer-encoding",
    "x-forwarded-for",
    "x-forwarded-host",
    "x-forwarded-proto",
    "via",
];

/// Hop-by-hop headers (RFC 9110 7.6.1): they describe one connection, not the message. The
/// first three are those of a response too; the proxy credentials are for a proxy (here, us),
/// not the upstream. Pingora's pipeline strips the same list from requests.
pub(crate) const HOP_BY_HOP: [&str; 10] = [
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

/// Why a request is refused; always answered with `status` and a closed connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Refusal {
    /// 400 or 431.
    pub(crate) status: u16,
    /// What was wrong, for the client's page and the log.
    pub(crate) reason: &'static str,
}

const fn refuse(status: u16, reason: &'static str) -> Refusal {
    Refusal { status, reason }
}

/// How a request's body is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RequestBody {
    None,
    Length(u64),
    Chunked,
}

/// Checks a request head's framing headers: one `Host` at most, `Content-Length` a single
/// number, `Transfer-Encoding` exactly `chunked` and never with a length or in HTTP/1.0, and no
/// `Connection` token naming a protected field. `version` is the minor version (0 or 1).
pub(crate) fn check_request<'h>(
    version: u8,
    headers: impl Iterator<Item = (&'h str, &'h [u8])> + Clone,
) -> Result<RequestBody, Refusal> {
    let mut hosts = 0;
    let mut length: Option<u64> = None;
    let mut chunked = None;
    let mut connection_tokens = 0;
    for (name, value) in headers.clone() {
        if name.eq_ignore_ascii_case("host") {
            hosts += 1;
            if hosts > 1 {
                return Err(refuse(400, "the request has more than one Host header"));
            }
        } else if name.eq_ignore_ascii_case("content-length") {
            if length.is_some() {
                return Err(refuse(
                    400,
                    "the request has more than one Content-Length header",
                ));
            }
            length = Some(content_length(value).ok_or(refuse(
                400,
                "the request's Content-Length is not a single number",
            ))?);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            if chunked.is_some() {
                return Err(refuse(
                    400,
                    "the request has more than one Transfer-Encoding header",
                ));
            }
            let mut codings = tokens(value);
            chunked = Some(matches!(
                (codings.next(), codings.next()),
                (Some(c), None) if c.eq_ignore_ascii_case(b"chunked")
            ));
        } else if name.eq_ignore_ascii_case("connection") {
            for token in tokens(value) {
                connection_tokens += 1;
                if connection_tokens > MAX_CONNECTION_TOKENS {
                    return Err(refuse(400, "the request's Connection header is too long"));
                }
                // Not a token (`"X-Forwarded-For"`, quoted): it could name a protected field
                // in a spelling the check below would miss. Pingora refuses it too.
                if !token.iter().all(|&b| is_tchar(b)) {
                    return Err(refuse(
                        400,
                        "the request's Connection header has an option that is not a token",
                    ));
                }
                if PROTECTED
                    .iter()
                    .any(|p| token.eq_ignore_ascii_case(p.as_bytes()))
                {
                    return Err(refuse(
                        400,
                        "the request's Connection header names a field that cannot be hop-by-hop",
                    ));
                }
            }
        }
    }
    match (chunked, length) {
        (None, None) => Ok(RequestBody::None),
        (None, Some(n)) => Ok(RequestBody::Length(n)),
        (Some(_), Some(_)) => Err(refuse(
            400,
            "the request has both Transfer-Encoding and Content-Length",
        )),
        (Some(_), None) if version == 0 => Err(refuse(
            400,
            "an HTTP/1.0 request cannot use Transfer-Encoding",
        )),
        (Some(true), None) => Ok(RequestBody::Chunked),
        // 400 rather than 501: Pingora's parser refuses these before anyone could answer 501.
        (Some(false), None) => Err(refuse(
            400,
            "the request's Transfer-Encoding is not \"chunked\"; no other coding is supported",
        )),
    }
}

/// Checks a request-target's form (RFC 9112 3.2): origin-form (`/path?query`), absolute-form
/// with an `http` or `https` scheme (routed by its authority, which must equal Host, and sent
/// upstream in origin-form), `*` for OPTIONS, and authority-form for CONNECT (refused later).
/// Anything else (`GET abs`, `GET *`, `?q`, `ftp://...`) would be passed on for the upstream to
/// read its own way, so it is refused, as nginx does.
pub(crate) fn check_target(method: &str, target: &str) -> Result<(), Refusal> {
    let absolute = |scheme: &str| {
        target
            .get(..scheme.len())
            .is_some_and(|s| s.eq_ignore_ascii_case(scheme))
    };
    if target.starts_with('/')
        || (target == "*" && method == "OPTIONS")
        || method == "CONNECT"
        || absolute("http://")
        || absolute("https://")
    {
        Ok(())
    } else {
        Err(refuse(
            400,
            "the request target is not a path, an http(s) URL, or * for OPTIONS",
        ))
    }
}

/// A `Content-Length` value, the one rule for requests and responses alike: 1 to 19 ASCII
/// digits and nothing else: no sign (`+5`), no list (`5, 5`), no inner spaces. Leading zeros
/// are fine (`05` is 5). `value` is the field value as httparse gives it, which has already lost
/// the optional whitespace around it (RFC 9110 5.5).
///
/// What differs by direction is how several fields are read: a request with two is refused
/// (`check_request`); a response's equal ones are one length and unequal ones make it invalid
/// (`h1::response`), as Pingora reads them. Either way an invalid value is never guessed at: a
/// request is answered 400, a response 502.
pub(crate) fn content_length(value: &[u8]) -> Option<u64> {
    if value.is_empty() || value.len() > 19 || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(value).ok()?.parse().ok()
}

/// A `tchar` of RFC 9110 5.6.2: what a token (a field name, a Connection option) is made of.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// The comma-separated items of a header value, trimmed, empty ones skipped.
pub(crate) fn tokens(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|&b| b == b',')
        .map(|t| t.trim_ascii())
        .filter(|t| !t.is_empty())
}

/// Whether `name` spells a protected field with an underscore for a hyphen (`Transfer_Encoding`,
/// `X_Forwarded_For`). Servers that read header names as CGI variables (WSGI, Rack, PHP:
/// `HTTP_TRANSFER_ENCODING`) take it for the field itself, so a client could reframe its body
/// past both fronts' framing rule (and smuggle a request onto a pooled upstream connection) or
/// forge the `X-Forwarded-*` the policy sets. Both fronts drop such fields on the way upstream,
/// as nginx drops every name with an underscore.
pub(crate) fn is_underscore_alias(name: &str) -> bool {
    name.contains('_')
        && PROTECTED.iter().any(|p| {
            p.len() == name.len()
                && p.bytes()
                    .zip(name.bytes())
                    .all(|(p, n)| p == n.to_ascii_lowercase() || (p == b'-' && n == b'_'))
        })
}

/// Whether `name` may be removed because a `Connection` header names it: never a protected
/// field, whoever sent it (an upstream's `Connection: Content-Length` must not unframe the
/// response it relays).
pub(crate) fn is_protected(name: &str) -> bool {
    PROTECTED.iter().any(|p| name.eq_ignore_ascii_case(p))
}

/// Whether a `Connection` header among `headers` names `name` as hop-by-hop (never one
/// that frames or routes the message: see [`is_protected`]).
pub(crate) fn named_by_connection(name: &str, headers: &[httparse::Header<'_>]) -> bool {
    !is_protected(name)
        && headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case("connection"))
            .any(|h| tokens(h.value).any(|t| t.eq_ignore_ascii_case(name.as_bytes())))
}

/// Where a head being read stands, so that bytes which cannot have completed it are not parsed
/// again: parsing the whole buffer after every read would make a head sent a byte at a time
/// cost its length times its number of reads (64 KiB a byte a millisecond, within the header
/// timeout, is gigabytes of parsing for one connection; nginx parses each byte once). One per
/// head, requests and responses alike.
#[derive(Debug, Default)]
pub(crate) struct HeadScan {
    /// Bytes of the buffer already searched for the blank line that ends a head.
    searched: usize,
    /// The message is not complete below this length: its head is, its body is still coming.
    need: usize,
}

impl HeadScan {
    /// Whether `buf` (the same buffer, grown since the last call) is worth parsing: at first
    /// (a malformed head is refused at once), then once the blank line that ends a head has
    /// arrived or the buffer reached the head limit, or, with the head complete, once the
    /// body is in (`await_body`).
    pub(crate) fn worth_parsing(&mut self, buf: &[u8]) -> bool {
        if buf.len() < self.need {
            return false;
        }
        let first = self.searched == 0;
        // A blank line may have started in the last bytes searched: `\n` + `\r\n`.
        let from = self.searched.saturating_sub(2).min(buf.len());
        self.searched = buf.len();
        first || self.need > 0 || buf.len() >= MAX_HEAD || has_blank_line(&buf[from..])
    }

    /// The head is complete; the message needs `len` bytes in all.
    pub(crate) fn await_body(&mut self, len: usize) {
        self.need = len;
    }
}

/// Whether `bytes` hold an empty line (`\n\n` or `\n\r\n`, as httparse reads line ends).
fn has_blank_line(mut bytes: &[u8]) -> bool {
    while let Some(nl) = bytes.iter().position(|&b| b == b'\n') {
        bytes = &bytes[nl + 1..];
        if bytes.starts_with(b"\n") || bytes.starts_with(b"\r\n") {
            return true;
        }
    }
    false
}

/// Appends one header line, `name: value`, to a head being written.
pub(crate) fn put_header(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests;

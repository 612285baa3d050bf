//! Where a chunked message body ends (RFC 9112 7.1), found while its bytes are relayed as they
//! are: the HTTP/1.1 front passes chunked bodies through untouched and only needs to know when
//! the last chunk and the trailer section are over, so the upstream connection can be reused.
//! Sans-io; public through [`codec`](crate::codec).

/// Longest chunk-size line or trailer line accepted; real ones are a few dozen bytes.
const MAX_LINE: usize = 8 * 1024;

/// A body that is not valid chunked coding.
#[derive(Debug, PartialEq, Eq)]
pub struct InvalidChunk;

#[derive(Debug)]
enum State {
    /// Reading a chunk-size line (size, extensions, CRLF).
    Size,
    /// Inside chunk data, this many bytes left.
    Data(u64),
    /// The CRLF after chunk data; `true` once the CR was seen.
    DataEnd(bool),
    /// Reading trailer lines until the empty line that ends the message.
    Trailer,
    Done,
}

/// Follows a chunked body fed to it in pieces of any size, to find where it ends.
#[derive(Debug)]
pub struct ChunkedEnd {
    state: State,
    /// The part of the current line seen so far (size and trailer lines only).
    line: Vec<u8>,
}

impl Default for ChunkedEnd {
    fn default() -> Self {
        ChunkedEnd::new()
    }
}

impl ChunkedEnd {
    /// A scanner at the start of a body.
    pub fn new() -> Self {
        ChunkedEnd {
            state: State::Size,
            line: Vec::new(),
        }
    }

    /// Consumes the next bytes of the body. Returns where in `data` the body ends, if it does.
    pub fn feed(&mut self, data: &[u8]) -> Result<Option<usize>, InvalidChunk> {
        let mut at = 0;
        while at < data.len() {
            match self.state {
                State::Size | State::Trailer => {
                    let rest = &data[at..];
                    let (piece, complete) = match rest.iter().position(|&b| b == b'\n') {
                        Some(nl) => (&rest[..=nl], true),
                        None => (rest, false),
                    };
                    if self.line.len() + piece.len() > MAX_LINE {
                        return Err(InvalidChunk);
                    }
                    self.line.extend_from_slice(piece);
                    at += piece.len();
                    if complete {
                        self.end_of_line()?;
                        if matches!(self.state, State::Done) {
                            return Ok(Some(at));
                        }
                    }
                }
                State::Data(left) => {
                    let take = left.min((data.len() - at) as u64);
                    at += take as usize;
                    self.state = if take == left {
                        State::DataEnd(false)
                    } else {
                        State::Data(left - take)
                    };
                }
                State::DataEnd(cr) => {
                    match (cr, data[at]) {
                        (false, b'\r') => self.state = State::DataEnd(true),
                        (true, b'\n') => self.state = State::Size,
                        _ => return Err(InvalidChunk),
                    }
                    at += 1;
                }
                State::Done => return Ok(Some(at)),
            }
        }
        Ok(matches!(self.state, State::Done).then_some(at))
    }

    fn end_of_line(&mut self) -> Result<(), InvalidChunk> {
        let line = std::mem::take(&mut self.line);
        self.state = match self.state {
            State::Size => match httparse::parse_chunk_size(&line) {
                Ok(httparse::Status::Complete((_, 0))) => State::Trailer,
                Ok(httparse::Status::Complete((_, size))) => State::Data(size),
                _ => return Err(InvalidChunk),
            },
            State::Trailer if line == b"\r\n" => State::Done,
            State::Trailer if line.ends_with(b"\r\n") && line.contains(&b':') => State::Trailer,
            _ => return Err(InvalidChunk),
        };
        self.line = line;
        self.line.clear();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn end_in_one_piece(body: &[u8]) -> Result<Option<usize>, InvalidChunk> {
        ChunkedEnd::new().feed(body)
    }

    #[test]
    fn finds_the_end_after_the_last_chunk_and_trailers() {
        let body = b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\n\r\nGET / HTTP/1.1\r\n";
        assert_eq!(end_in_one_piece(body), Ok(Some(body.len() - 16)));
        let with_trailer = b"3\r\nabc\r\n0\r\nx-sum: 1\r\n\r\n";
        assert_eq!(end_in_one_piece(with_trailer), Ok(Some(with_trailer.len())));
        assert_eq!(end_in_one_piece(b"a\r\n0123"), Ok(None));
    }

    #[test]
    fn rejects_bad_coding() {
        for bad in [
            &b"zz\r\n"[..],
            b"3\r\nabcX\r\n",
            b"0\r\nnot a trailer\r\n",
            b"ffffffffffffffffffff\r\n",
        ] {
            assert_eq!(end_in_one_piece(bad), Err(InvalidChunk), "{bad:?}");
        }
        let mut long = b"1;".to_vec();
        long.extend(std::iter::repeat_n(b'x', MAX_LINE));
        assert_eq!(end_in_one_piece(&long), Err(InvalidChunk));
    }

    fn chunked(chunks: &[Vec<u8>], trailer: bool) -> Vec<u8> {
        let mut body = Vec::new();
        for c in chunks.iter().filter(|c| !c.is_empty()) {
            body.extend(format!("{:x}\r\n", c.len()).bytes());
            body.extend(c);
            body.extend(b"\r\n");
        }
        body.extend(b"0\r\n");
        if trailer {
            body.extend(b"x-checksum: abc\r\n");
        }
        body.extend(b"\r\n");
        body
    }

    proptest! {
        /// However the bytes are split into reads, the end is found at the same place.
        #[test]
        fn end_does_not_depend_on_how_the_body_is_split(
            chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 0..8),
            trailer in any::<bool>(),
            cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..6),
        ) {
            let mut body = chunked(&chunks, trailer);
            let len = body.len();
            body.extend(b"HTTP/1.1 200 OK\r\n");
            let mut cuts: Vec<usize> = cuts.iter().map(|i| i.index(body.len())).collect();
            cuts.push(body.len());
            cuts.sort();
            let mut scanner = ChunkedEnd::new();
            let mut start = 0;
            let mut found = None;
            for cut in cuts {
                if let Some(end) = scanner.feed(&body[start..cut]).unwrap() {
                    found = Some(start + end);
                    break;
                }
                start = cut;
            }
            prop_assert_eq!(found, Some(len));
        }
    }
}

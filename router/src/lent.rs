//! The stream a client connection is lent to Pingora's pipeline on, one request at a time,
//! after the HTTP/1.1 front has read that request's head (`h1::H1Front::take_turns`): the
//! bytes of the request already read are put back in front of the connection as the Pingora
//! session's pipelined prefix, and the session then reads and writes through this wrapper.
//!
//! The wrapper fences the lent request in: Pingora reads the request up to where the front's
//! framing rules (`message`) say it ends, and never past it. Bytes past that end (the next
//! request, pipelined by the client in the same packet or while the lent one is served) are
//! kept here, for the front to read as the next request once Pingora gives the connection
//! back ([`LentStream::take_back`]). Without the fence Pingora, which serves one request per
//! session without pipelining, would read them itself: a next request in the prefix would close
//! the connection unanswered, and one that came while the answer was awaited would be taken for
//! "data after the end of the body", answered with a 400 and the upstream request dropped with
//! its body half sent. The front reads a request's end the way it reads its head, so every
//! request on a connection passes its gate whichever path serves it.
//!
//! Once the request is in, a read from Pingora waits for the client: its next bytes are kept
//! and the read stays pending (the answer goes on), while its end of the connection is passed
//! on, so a client that gives up still stops the upstream request.
//!
//! Plain connections accepted by the front's own listener also get write gathering, as
//! Pingora's listeners give theirs with a 1460-byte write buffer: without it a response's head
//! and a small body would leave in separate `send`s. Connections from Pingora's listeners
//! (TLS) are written through as they are.

use bytes::BytesMut;
use pingora::protocols::Stream;

use crate::h1::chunked::ChunkedEnd;

/// Where a request lent to Pingora ends, as the front reads its head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RequestEnd {
    /// After this many bytes in all: its head and its `Content-Length` body (or no body).
    At(u64),
    /// After its chunked body, which starts after a head of this many bytes.
    Chunked {
        /// Bytes of the head.
        head: usize,
    },
    /// Not known: the connection may become a tunnel (an upgrade, CONNECT), whose bytes are
    /// all Pingora's.
    Open,
}

/// How far Pingora may read.
#[derive(Debug)]
enum Fence {
    /// As far as it likes: not lent, or lent for a request whose end is not known.
    Open,
    /// This many bytes of the request are still to come.
    Length(u64),
    /// Its chunked body is still coming.
    Chunked(ChunkedEnd),
    /// The request is in; what follows is the front's.
    Reached,
    /// The chunked body is not valid coding: Pingora reads on as it likes (its own parser
    /// answers 400), and the connection is not taken back.
    Invalid,
}

/// A client connection lent to Pingora's pipeline, fenced to one request; see the module
/// documentation.
#[derive(Debug)]
pub(crate) struct LentStream {
    inner: tokio::io::BufWriter<Stream>,
    fence: Fence,
    /// Bytes past the lent request's end, read with it or while it was served: the start of
    /// the next request.
    after: BytesMut,
}

/// Big enough for the header and body of most API answers.
const WRITE_BUFFER: usize = 8 * 1024;

/// What a read at the fence reads at most, waiting for the client.
const WAIT_READ: usize = 4 * 1024;

/// The most a lent connection keeps of what the client sent past the lent request while it is
/// served (the next requests); beyond it the client's bytes wait in the socket.
const MAX_KEPT: usize = 64 * 1024;

impl LentStream {
    /// Wraps a client connection; `gather` writes until Pingora flushes (for connections that
    /// lack a write buffer of their own).
    pub(crate) fn new(stream: Stream, gather: bool) -> Self {
        let capacity = if gather { WRITE_BUFFER } else { 0 };
        LentStream {
            inner: tokio::io::BufWriter::with_capacity(capacity, stream),
            fence: Fence::Open,
            after: BytesMut::new(),
        }
    }

    /// Lends the connection for the request at the start of `read` (the bytes the front has
    /// read and not served), which ends at `end`: returns that request's bytes in `read`,
    /// Pingora's pipelined prefix, and keeps the rest for the front.
    pub(crate) fn lend(&mut self, mut read: BytesMut, end: RequestEnd) -> BytesMut {
        debug_assert!(
            self.after.is_empty(),
            "a lent connection was not taken back"
        );
        self.fence = match end {
            RequestEnd::Open => Fence::Open,
            RequestEnd::At(len) => match usize::try_from(len) {
                Ok(len) if len <= read.len() => {
                    self.after = read.split_off(len);
                    Fence::Reached
                }
                _ => Fence::Length(len - read.len() as u64),
            },
            RequestEnd::Chunked { head } => {
                let mut body = ChunkedEnd::new();
                match body.feed(&read[head.min(read.len())..]) {
                    Ok(Some(len)) => {
                        self.after = read.split_off(head + len);
                        Fence::Reached
                    }
                    Ok(None) => Fence::Chunked(body),
                    Err(_) => Fence::Invalid,
                }
            }
        };
        read
    }

    /// Takes the connection back from Pingora, which served the lent request and would keep
    /// the connection: the bytes read past the request, where the front reads on. `None` if
    /// the request did not end where the front's framing says (Pingora's reading of it
    /// differs): nothing that follows can be trusted to start a request.
    pub(crate) fn take_back(&mut self) -> Option<BytesMut> {
        let whole = matches!(self.fence, Fence::Open | Fence::Reached);
        self.fence = Fence::Open;
        let after = std::mem::take(&mut self.after);
        whole.then_some(after)
    }
}

mod lent_stream_io {
    use std::io;
    use std::pin::Pin;
    use std::sync::Arc;
    use std::task::{ready, Context, Poll};
    use std::time::Duration;

    use async_trait::async_trait;
    use pingora::protocols::raw_connect::ProxyDigest;
    use pingora::protocols::tls::SslDigest;
    use pingora::protocols::tls::TlsRef;
    use pingora::protocols::{
        GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl,
        TimingDigest, UniqueID, UniqueIDType, ALPN,
    };
    use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

    use super::{Fence, LentStream, MAX_KEPT, WAIT_READ};

    impl LentStream {
        /// A read past the lent request's end: waits for the client. Its next bytes are kept
        /// for the front (up to [`MAX_KEPT`]; then the socket pushes back) and the read stays
        /// pending while the answer goes on; the end of its connection, or an error, is
        /// Pingora's to see, so a client that gives up stops the upstream request even after
        /// it sent more. Reading on until the socket has nothing keeps the waker registered.
        fn poll_wait(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            loop {
                if self.after.len() >= MAX_KEPT {
                    return Poll::Pending;
                }
                let mut bytes = [0u8; WAIT_READ];
                let mut next = ReadBuf::new(&mut bytes);
                ready!(Pin::new(&mut self.inner).poll_read(cx, &mut next))?;
                if next.filled().is_empty() {
                    return Poll::Ready(Ok(()));
                }
                self.after.extend_from_slice(next.filled());
            }
        }
    }

    impl AsyncRead for LentStream {
        fn poll_read(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            let this = self.get_mut();
            match this.fence {
                Fence::Open | Fence::Invalid => {
                    return Pin::new(&mut this.inner).poll_read(cx, buf)
                }
                Fence::Reached => return this.poll_wait(cx),
                Fence::Length(_) | Fence::Chunked(_) => {}
            }
            let start = buf.filled().len();
            ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
            let read = &buf.filled()[start..];
            if read.is_empty() {
                // The client closed with the request unfinished: Pingora's to see.
                return Poll::Ready(Ok(()));
            }
            // How many of the bytes read are the request's: at least one.
            let ours = match &mut this.fence {
                Fence::Length(left) => {
                    let ours = (*left).min(read.len() as u64);
                    *left -= ours;
                    if *left == 0 {
                        this.fence = Fence::Reached;
                    }
                    ours as usize
                }
                Fence::Chunked(body) => match body.feed(read) {
                    Ok(Some(end)) => {
                        this.fence = Fence::Reached;
                        end
                    }
                    Ok(None) => read.len(),
                    Err(_) => {
                        this.fence = Fence::Invalid;
                        read.len()
                    }
                },
                Fence::Open | Fence::Reached | Fence::Invalid => read.len(),
            };
            if ours < read.len() {
                this.after.extend_from_slice(&read[ours..]);
                buf.set_filled(start + ours);
            }
            Poll::Ready(Ok(()))
        }
    }

    impl AsyncWrite for LentStream {
        fn poll_write(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            Pin::new(&mut self.inner).poll_write(cx, buf)
        }
        fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.inner).poll_flush(cx)
        }
        fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.inner).poll_shutdown(cx)
        }
    }

    #[async_trait]
    impl Shutdown for LentStream {
        async fn shutdown(&mut self) {
            let _ = tokio::io::AsyncWriteExt::shutdown(&mut self.inner).await;
        }
    }

    impl UniqueID for LentStream {
        fn id(&self) -> UniqueIDType {
            self.inner.get_ref().id()
        }
    }

    impl Ssl for LentStream {
        fn get_ssl(&self) -> Option<&TlsRef> {
            self.inner.get_ref().get_ssl()
        }
        fn get_ssl_digest(&self) -> Option<Arc<SslDigest>> {
            self.inner.get_ref().get_ssl_digest()
        }
        fn selected_alpn_proto(&self) -> Option<ALPN> {
            self.inner.get_ref().selected_alpn_proto()
        }
    }

    impl GetTimingDigest for LentStream {
        fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
            self.inner.get_ref().get_timing_digest()
        }
        fn get_read_pending_time(&self) -> Duration {
            self.inner.get_ref().get_read_pending_time()
        }
        fn get_write_pending_time(&self) -> Duration {
            self.inner.get_ref().get_write_pending_time()
        }
    }

    impl GetProxyDigest for LentStream {
        fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
            self.inner.get_ref().get_proxy_digest()
        }
        fn set_proxy_digest(&mut self, digest: ProxyDigest) {
            self.inner.get_mut().set_proxy_digest(digest)
        }
    }

    impl GetSocketDigest for LentStream {
        fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
            self.inner.get_ref().get_socket_digest()
        }
        fn set_socket_digest(&mut self, digest: SocketDigest) {
            self.inner.get_mut().set_socket_digest(digest)
        }
    }

    #[async_trait]
    impl Peek for LentStream {
        async fn try_peek(&mut self, buf: &mut [u8]) -> io::Result<bool> {
            self.inner.get_mut().try_peek(buf).await
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use bytes::BytesMut;
    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

    use super::{LentStream, RequestEnd, MAX_KEPT, WAIT_READ};

    const POST: &[u8] = b"POST /a HTTP/1.1\r\nHost: a.test\r\nContent-Length: 10\r\n\r\n";
    const NEXT: &[u8] = b"GET /next HTTP/1.1\r\nHost: a.test\r\n\r\n";

    /// A lent connection and the client's end of it.
    fn lent() -> (LentStream, DuplexStream) {
        let (client, server) = tokio::io::duplex(64 * 1024);
        (LentStream::new(Box::new(server), false), client)
    }

    /// What Pingora can read now, all of it; `None` if its first read waits.
    async fn readable(lent: &mut LentStream) -> Option<Vec<u8>> {
        let mut got = Vec::new();
        let mut buf = [0u8; 7];
        loop {
            let wait = Duration::from_millis(if got.is_empty() { 50 } else { 10 });
            match tokio::time::timeout(wait, lent.read(&mut buf)).await {
                Ok(Ok(0)) => return Some(got),
                Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
                Ok(Err(e)) => panic!("{e}"),
                Err(_) if got.is_empty() => return None,
                Err(_) => return Some(got),
            }
        }
    }

    /// Takes the connection back: what the front reads next, kept and still to come.
    async fn taken_back(lent: &mut LentStream) -> Option<Vec<u8>> {
        let mut next = lent.take_back()?.to_vec();
        next.extend(readable(lent).await.unwrap_or_default());
        Some(next)
    }

    fn bytes(parts: &[&[u8]]) -> BytesMut {
        BytesMut::from(&parts.concat()[..])
    }

    #[tokio::test]
    async fn a_request_read_whole_with_the_next_is_lent_alone() {
        let (mut lent, mut client) = lent();
        let len = (POST.len() + 10) as u64;
        let prefix = lent.lend(bytes(&[POST, b"0123456789", NEXT]), RequestEnd::At(len));
        assert_eq!(prefix, bytes(&[POST, b"0123456789"]));
        // The client sends more meanwhile: it is not Pingora's to read, but the front's.
        client.write_all(b"more").await.unwrap();
        assert_eq!(readable(&mut lent).await, None);
        assert_eq!(taken_back(&mut lent).await, Some([NEXT, b"more"].concat()));
        // Taken back, the connection reads as it is.
        client.write_all(b"and more").await.unwrap();
        assert_eq!(readable(&mut lent).await, Some(b"and more".to_vec()));
    }

    #[tokio::test]
    async fn the_rest_of_a_body_is_read_up_to_its_end_and_what_follows_kept() {
        let (mut lent, mut client) = lent();
        let len = (POST.len() + 10) as u64;
        let prefix = lent.lend(bytes(&[POST, b"012"]), RequestEnd::At(len));
        assert_eq!(prefix, bytes(&[POST, b"012"]));
        client
            .write_all(&[&b"3456789"[..], NEXT].concat())
            .await
            .unwrap();
        assert_eq!(readable(&mut lent).await, Some(b"3456789".to_vec()));
        assert_eq!(taken_back(&mut lent).await, Some(NEXT.to_vec()));
    }

    #[tokio::test]
    async fn past_the_end_a_read_waits_for_the_client_and_sees_it_go() {
        let (mut lent, mut client) = lent();
        let prefix = lent.lend(bytes(&[NEXT]), RequestEnd::At(NEXT.len() as u64));
        assert_eq!(prefix, bytes(&[NEXT]));
        assert_eq!(readable(&mut lent).await, None);
        // The client's next request is kept; the read stays pending.
        client.write_all(b"GET /").await.unwrap();
        assert_eq!(readable(&mut lent).await, None);
        assert_eq!(lent.take_back(), Some(bytes(&[b"GET /"])));

        let (mut lent, client) = self::lent();
        lent.lend(bytes(&[NEXT]), RequestEnd::At(NEXT.len() as u64));
        drop(client);
        // The end of the connection is passed on, so the pipeline stops the request.
        assert_eq!(readable(&mut lent).await, Some(vec![]));

        // Even after the client sent more past the end (the pending read went on watching).
        let (mut lent, mut client) = self::lent();
        lent.lend(bytes(&[NEXT]), RequestEnd::At(NEXT.len() as u64));
        client.write_all(b"G").await.unwrap();
        assert_eq!(readable(&mut lent).await, None);
        drop(client);
        assert_eq!(readable(&mut lent).await, Some(vec![]));
    }

    #[tokio::test]
    async fn what_is_kept_past_the_end_is_bounded() {
        let (mut lent, mut client) = lent();
        lent.lend(bytes(&[NEXT]), RequestEnd::At(NEXT.len() as u64));
        let flood = vec![b'x'; 3 * MAX_KEPT];
        let writer = tokio::spawn(async move {
            let _ = client.write_all(&flood).await;
            client
        });
        assert_eq!(readable(&mut lent).await, None);
        let kept = lent.take_back().unwrap();
        assert!(
            kept.len() >= MAX_KEPT && kept.len() < MAX_KEPT + WAIT_READ,
            "{}",
            kept.len()
        );
        writer.abort();
    }

    #[tokio::test]
    async fn a_chunked_body_is_read_up_to_its_last_chunk() {
        let head = b"POST /a HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\n\r\n";
        let end = RequestEnd::Chunked { head: head.len() };
        let (mut lent, mut client) = lent();
        let prefix = lent.lend(bytes(&[head, b"5\r\nhel"]), end);
        assert_eq!(prefix, bytes(&[head, b"5\r\nhel"]));
        client
            .write_all(&[&b"lo\r\n0\r\n\r\n"[..], NEXT].concat())
            .await
            .unwrap();
        assert_eq!(readable(&mut lent).await, Some(b"lo\r\n0\r\n\r\n".to_vec()));
        assert_eq!(taken_back(&mut lent).await, Some(NEXT.to_vec()));

        let (mut lent, _client) = self::lent();
        let prefix = lent.lend(bytes(&[head, b"1\r\nx\r\n0\r\n\r\n", NEXT]), end);
        assert_eq!(prefix, bytes(&[head, b"1\r\nx\r\n0\r\n\r\n"]));
        assert_eq!(lent.take_back(), Some(bytes(&[NEXT])));
    }

    #[tokio::test]
    async fn a_request_not_read_to_its_end_is_not_taken_back() {
        let (mut lent, _client) = lent();
        let len = (POST.len() + 10) as u64;
        lent.lend(bytes(&[POST, b"012"]), RequestEnd::At(len));
        assert_eq!(lent.take_back(), None);

        let head = b"POST /a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n";
        let (mut lent, mut client) = self::lent();
        lent.lend(bytes(&[head]), RequestEnd::Chunked { head: head.len() });
        // Not chunked coding: Pingora reads it and refuses it.
        client.write_all(b"zz\r\n").await.unwrap();
        assert_eq!(readable(&mut lent).await, Some(b"zz\r\n".to_vec()));
        assert_eq!(lent.take_back(), None);
    }

    #[tokio::test]
    async fn an_open_request_is_read_freely() {
        let (mut lent, mut client) = lent();
        let prefix = lent.lend(bytes(&[NEXT, b"tunnel"]), RequestEnd::Open);
        assert_eq!(prefix, bytes(&[NEXT, b"tunnel"]));
        client.write_all(b"bytes").await.unwrap();
        assert_eq!(readable(&mut lent).await, Some(b"bytes".to_vec()));
        assert_eq!(lent.take_back(), Some(BytesMut::new()));
    }
}

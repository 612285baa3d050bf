//! The stream a plain client connection is lent to Pingora's pipeline on, after the HTTP/1.1
//! front has read from it (`h1::H1Front::take_turns`): the bytes already read are put back in
//! front of the connection as the Pingora session's pipelined prefix, and the session then
//! reads and writes through this wrapper.
//!
//! What the wrapper adds is write gathering, as Pingora's own listeners do with their 1460-byte
//! write buffer, which streams built outside them lack: without it a response's head and a
//! small body would leave in separate `send`s. TLS connections come from Pingora's listeners
//! and are lent as they are.

use pingora::protocols::Stream;

/// A plain client connection lent to Pingora's pipeline: writes are gathered until Pingora
/// flushes, so a response's header and a small body leave in one `send`.
#[derive(Debug)]
pub(crate) struct LentStream {
    inner: tokio::io::BufWriter<Stream>,
}

/// Big enough for the header and body of most API answers.
const WRITE_BUFFER: usize = 8 * 1024;

impl LentStream {
    pub(crate) fn new(stream: Stream) -> Self {
        LentStream {
            inner: tokio::io::BufWriter::with_capacity(WRITE_BUFFER, stream),
        }
    }
}

mod lent_stream_io {
    use std::io;
    use std::pin::Pin;
    use std::sync::Arc;
    use std::task::{Context, Poll};
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

    use super::LentStream;

    impl AsyncRead for LentStream {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            Pin::new(&mut self.inner).poll_read(cx, buf)
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

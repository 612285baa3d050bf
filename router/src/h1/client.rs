//! The client side of a connection on the HTTP/1.1 front: its buffers ([`Conn`]), reading the
//! next request within its deadline or idle timeout, and the limits every client connection
//! lives under (timeouts, connections per client address).

use std::net::IpAddr;
use std::time::Duration;

use bytes::BytesMut;
use pingora::server::ShutdownWatch;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;

use super::body::READ_CHUNK;
use crate::pages::Page;

/// Limits and timeouts of client connections on the HTTP/1.1 front, whichever front then
/// serves their requests (see `RouterConfig`).
#[derive(Clone, Copy, Debug)]
pub(crate) struct ClientLimits {
    /// Time from a request's first byte until its head (and a small body) is complete.
    pub(crate) header_timeout: Duration,
    /// How long an idle keepalive connection waits for its next request.
    pub(crate) keepalive_timeout: Duration,
    /// How long a write to the client may wait (a client that stops reading its response).
    pub(crate) send_timeout: Duration,
    /// Open connections one client address may hold; more are answered 503 and closed.
    pub(crate) connections_per_client: usize,
}

/// Open client connections per client address, so one client cannot take every file
/// descriptor (each costs one, plus one per upstream connection).
#[derive(Default)]
pub(crate) struct ClientCounts(std::sync::Mutex<std::collections::HashMap<IpAddr, usize>>);

/// One counted connection; uncounted when dropped.
pub(super) struct ClientSlot<'a> {
    counts: &'a ClientCounts,
    ip: IpAddr,
}

impl ClientCounts {
    /// Counts a connection from `ip`, unless it has `limit` already.
    pub(super) fn take(&self, ip: IpAddr, limit: usize) -> Option<ClientSlot<'_>> {
        let mut counts = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let n = counts.entry(ip).or_insert(0);
        if *n >= limit {
            return None;
        }
        *n += 1;
        Some(ClientSlot { counts: self, ip })
    }
}

impl Drop for ClientSlot<'_> {
    fn drop(&mut self) {
        let mut counts = self.counts.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = counts.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                counts.remove(&self.ip);
            }
        }
    }
}

/// A client connection and the buffers its requests reuse.
pub(super) struct Conn<C> {
    pub(super) client: C,
    pub(super) peer: Option<IpAddr>,
    pub(super) tls: bool,
    /// Bytes read from the client and not yet forwarded.
    pub(super) buf: BytesMut,
    /// Bytes read from the upstream.
    pub(super) upbuf: BytesMut,
    /// The head being written (to the upstream, then to the client).
    pub(super) out: Vec<u8>,
}

/// How long [`Conn::read_client`] waits.
#[derive(Clone, Copy)]
pub(super) enum Wait {
    /// For the next request on an idle connection; ends early when the proxy stops.
    Idle(Duration),
    /// For the rest of a request, until this instant.
    Until(Instant),
}

/// What [`Conn::read_client`] got.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Read {
    More,
    TimedOut,
    /// The client closed or failed, or the proxy is stopping while the connection is idle.
    Closed,
}

impl<C: AsyncRead + AsyncWrite + Unpin> Conn<C> {
    pub(super) fn new(client: C, peer: Option<IpAddr>, tls: bool) -> Self {
        Conn {
            client,
            peer,
            tls,
            buf: BytesMut::with_capacity(4096),
            upbuf: BytesMut::with_capacity(READ_CHUNK),
            out: Vec::with_capacity(4096),
        }
    }

    /// Reads more of the next request.
    pub(super) async fn read_client(&mut self, wait: Wait, shutdown: &mut ShutdownWatch) -> Read {
        let idle = matches!(wait, Wait::Idle(_));
        if idle && *shutdown.borrow() {
            return Read::Closed;
        }
        let deadline = match wait {
            Wait::Idle(d) => Instant::now() + d,
            Wait::Until(t) => t,
        };
        self.buf.reserve(4096);
        tokio::select! {
            read = tokio::time::timeout_at(deadline, self.client.read_buf(&mut self.buf)) => {
                match read {
                    Ok(Ok(n)) if n > 0 => Read::More,
                    Ok(_) => Read::Closed,
                    Err(_) if idle => Read::Closed,
                    Err(_) => Read::TimedOut,
                }
            }
            _ = shutdown.changed(), if idle => Read::Closed,
        }
    }
}

impl<C> Conn<C> {
    /// Whether the client seems to be a browser, for a page answered before its request was
    /// parsed: recognised by its Accept header's bytes.
    pub(super) fn seems_a_browser(&self) -> bool {
        self.buf
            .windows(9)
            .take(16 * 1024)
            .any(|w| w == b"text/html")
    }

    /// Whether the request being answered is a HEAD (whose answer has no body).
    pub(super) fn asked_head(&self) -> bool {
        self.buf.starts_with(b"HEAD ")
    }
}

impl<C: AsyncWrite + Unpin> Conn<C> {
    /// Answers with `page` (HTML for a browser, `html`) and closes the connection, giving up on
    /// a client that does not take it within `timeout`.
    pub(super) async fn answer_and_close(&mut self, page: &Page, html: bool, timeout: Duration) {
        let head = self.asked_head();
        page.write_h1(html, head, &mut self.out);
        let (client, out) = (&mut self.client, &self.out);
        let _ = tokio::time::timeout(timeout, async {
            client.write_all(out).await?;
            client.flush().await?;
            client.shutdown().await
        })
        .await;
    }
}

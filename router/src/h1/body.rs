//! The response body, relayed from the upstream to the client as it comes, its framing
//! ([`Framing`]: length, chunked, until close) followed only to know where it ends and whether
//! the upstream connection ended exactly there ([`BodyEnd`]). Bytes are passed on untouched;
//! chunked bodies keep their coding (`chunked` finds their end).

use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use super::chunked::ChunkedEnd;
use super::response::Framing;

/// Bytes read from an upstream at a time while relaying a body.
pub(super) const READ_CHUNK: usize = 16 * 1024;

/// Where the upstream connection stood when a relayed body ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum BodyEnd {
    /// Nothing past the body's end was read: the connection may carry another request, if
    /// the upstream allows it (`ResponseHead::reusable`).
    Exact,
    /// Bytes past the body's end were read (a stray response, a body after a HEAD answer):
    /// the connection carries nothing more.
    Overrun,
}

/// A body relayed to its end.
#[derive(Clone, Copy, Debug)]
pub(super) struct Relayed {
    pub(super) end: BodyEnd,
    /// Body bytes sent to the client.
    pub(super) body_bytes: u64,
}

/// How long a relayed body may stall on either side.
#[derive(Clone, Copy)]
pub(super) struct Timeouts {
    pub(super) upstream: Duration,
    pub(super) client: Duration,
}

/// Writes the response head (in `out`) and body to the client. `body` holds the body bytes
/// already read with the head.
pub(super) async fn relay_body<C>(
    client: &mut C,
    up: &mut TcpStream,
    out: &mut Vec<u8>,
    body: &[u8],
    framing: Framing,
    timeouts: Timeouts,
    mut kept: Option<(&mut Vec<u8>, usize)>,
) -> std::io::Result<Relayed>
where
    C: AsyncWrite + Unpin,
{
    // The inspector's copy of the body, up to its limit (one byte more says it was cut).
    let mut keep = |bytes: &[u8]| {
        if let Some((kept, limit)) = kept.as_mut() {
            let room = (*limit + 1).saturating_sub(kept.len());
            kept.extend_from_slice(&bytes[..bytes.len().min(room)]);
        }
    };
    let invalid = |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what);
    let mut chunks = ChunkedEnd::new();
    // How much of `body` belongs to this response, and whether it is complete with it.
    let (first, mut done) = match framing {
        Framing::Empty => (0, true),
        Framing::Length(n) => {
            let first = n.min(body.len() as u64) as usize;
            (first, first as u64 == n)
        }
        Framing::Chunked => match chunks.feed(body) {
            Ok(Some(end)) => (end, true),
            Ok(None) => (body.len(), false),
            Err(_) => return Err(invalid("invalid chunked body from the upstream")),
        },
        Framing::UntilClose => (body.len(), false),
    };
    let mut clean = first == body.len();
    let mut body_bytes = first as u64;
    keep(&body[..first]);
    out.extend_from_slice(&body[..first]);
    send(client, out, timeouts.client).await?;
    let mut left = match framing {
        Framing::Length(n) => n - first as u64,
        _ => 0,
    };
    let mut buf = BytesMut::new();
    while !done {
        buf.clear();
        buf.reserve(READ_CHUNK);
        // A response may stream for as long as it likes, but not stall for longer than this.
        let n = tokio::time::timeout(timeouts.upstream, up.read_buf(&mut buf))
            .await
            .map_err(|_| {
                std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("the upstream sent nothing for {:?}", timeouts.upstream),
                )
            })??;
        if n == 0 {
            if framing == Framing::UntilClose {
                break;
            }
            return Err(invalid("the upstream closed the connection mid-body"));
        }
        let take = match framing {
            Framing::Length(_) => {
                let take = left.min(n as u64) as usize;
                left -= take as u64;
                done = left == 0;
                take
            }
            Framing::Chunked => match chunks.feed(&buf) {
                Ok(Some(end)) => {
                    done = true;
                    end
                }
                Ok(None) => n,
                Err(_) => return Err(invalid("invalid chunked body from the upstream")),
            },
            _ => n,
        };
        clean &= take == n;
        send(client, &buf[..take], timeouts.client).await?;
        keep(&buf[..take]);
        body_bytes += take as u64;
    }
    // Buffered streams (TLS, a connection the pipeline served before) send on flush.
    within(timeouts.client, client.flush()).await?;
    let end = if clean {
        BodyEnd::Exact
    } else {
        BodyEnd::Overrun
    };
    Ok(Relayed { end, body_bytes })
}

/// Writes to the client, giving up on one that stopped reading.
async fn send<C: AsyncWrite + Unpin>(
    client: &mut C,
    bytes: &[u8],
    timeout: Duration,
) -> std::io::Result<()> {
    within(timeout, client.write_all(bytes)).await
}

/// A write (or flush) to the client, unless it takes longer than `timeout`.
async fn within(
    timeout: Duration,
    write: impl std::future::Future<Output = std::io::Result<()>>,
) -> std::io::Result<()> {
    tokio::time::timeout(timeout, write).await.map_err(|_| {
        std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "the client stopped reading its response",
        )
    })?
}

//! One request's trip to the upstream: a connection (this thread's pool, or a new one to the
//! upstream's addresses from the preferred one on), the request written, and the final
//! response head read, informational ones passed on to the client meanwhile.
//!
//! The retry rules. An idle connection the upstream closed is found when it is reused: every
//! pooled connection is first checked with one non-blocking read ([`still_open`]: one the
//! upstream closed reads end-of-file; one with unasked bytes, such as a stray response or a
//! body after a HEAD answer, must not carry another client's request), and one goes back to the
//! pool only when its response ended exactly where its framing said (`body::BodyEnd`). An
//! idempotent request (GET, HEAD, PUT, DELETE, ...) that got no response byte on a reused
//! connection is sent once more on a new one; any other (POST, PATCH) is never sent twice, so
//! it only ever goes on a connection the check showed open, or a new one.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use pingora::{Error as PError, ErrorType};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use super::body::READ_CHUNK;
use super::client::Conn;
use super::pool;
use super::request::{Prepared, MAX_BODY};
use super::response::{parse_response, ResponseHead};
use crate::message::{HeadScan, MAX_HEAD};
use crate::Upstream;

/// A final response head read from the upstream (in `Conn::upbuf`, the client's head written
/// in `Conn::out`), and the connection the rest of the response comes on.
pub(super) struct Exchanged {
    pub(super) up: TcpStream,
    pub(super) response: ResponseHead,
}

/// Why a request got no response from the upstream.
pub(super) enum Failure {
    /// The upstream could not be reached or sent no valid response head.
    Upstream(Box<PError>),
    /// The client went away before the response (or while an informational one was relayed).
    Client,
}

/// Sends the request (from `conn.out`) and reads the final response head into `conn.upbuf`,
/// passing informational responses on; leaves the client's response head in `conn.out`
/// (without its `Connection` header).
pub(super) async fn exchange<C>(
    upstream: &Arc<Upstream>,
    conn: &mut Conn<C>,
    p: &Prepared,
) -> Result<Exchanged, Failure>
where
    C: AsyncRead + AsyncWrite + Unpin,
{
    let timeout = upstream.read_timeout();
    let mut fresh_only = false;
    let mut up = loop {
        let idle = if fresh_only {
            None
        } else {
            pool::take(upstream)
        };
        let reused = idle.is_some();
        let mut up = match idle {
            // A pooled connection that has something to read is closed, or the upstream sent
            // bytes nobody asked for (a stray response, a body after a HEAD answer): either
            // way it must not carry another client's request.
            Some(up) if !still_open(&up) => {
                drop(up);
                if !p.idempotent {
                    // Not sent twice: only a new connection for this one.
                    fresh_only = true;
                    pool::clear(upstream);
                }
                continue;
            }
            Some(up) => up,
            None => connect(upstream).await.map_err(Failure::Upstream)?,
        };
        conn.upbuf.clear();
        let sent = match tokio::time::timeout(timeout, up.write_all(&conn.out)).await {
            Ok(Ok(())) => await_response(&mut up, conn, timeout).await,
            Ok(Err(e)) => Err(Failure::Upstream(PError::because(
                ErrorType::WriteError,
                "sending the request",
                e,
            ))),
            Err(_) => Err(Failure::Upstream(PError::explain(
                ErrorType::WriteTimedout,
                format!("sending the request took more than {timeout:?}"),
            ))),
        };
        match sent {
            Ok(()) => break up,
            Err(Failure::Upstream(e)) if reused && p.idempotent && is_stale(&e) => {
                // Closed while idle: so are its idle siblings, most likely.
                tracing::debug!(error = %e, "a pooled upstream connection was closed; retrying on a new one");
                pool::clear(upstream);
                fresh_only = true;
            }
            Err(e) => return Err(e),
        }
    };
    // Bytes that cannot complete the head are not parsed again.
    let mut scan = HeadScan::default();
    loop {
        if !scan.worth_parsing(&conn.upbuf) {
            await_response(&mut up, conn, timeout).await?;
            continue;
        }
        match parse_response(&conn.upbuf, p.head_request, &mut conn.out) {
            Ok(Some(r)) if (100..200).contains(&r.status) => {
                scan = HeadScan::default();
                // 103 Early Hints and the like go on to the client as they are.
                let info = conn.upbuf.split_to(r.head_len);
                let client = &mut conn.client;
                let sent = tokio::time::timeout(timeout, async {
                    client.write_all(&info).await?;
                    client.flush().await
                })
                .await;
                if !matches!(sent, Ok(Ok(()))) {
                    return Err(Failure::Client);
                }
                if conn.upbuf.is_empty() {
                    await_response(&mut up, conn, timeout).await?;
                }
                continue;
            }
            Ok(Some(response)) => return Ok(Exchanged { up, response }),
            Ok(None) if conn.upbuf.len() >= MAX_HEAD => {
                return Err(Failure::Upstream(PError::explain(
                    ErrorType::InvalidHTTPHeader,
                    "the response head is larger than 64 KiB",
                )))
            }
            Ok(None) => {}
            Err(e) => return Err(Failure::Upstream(e)),
        }
        await_response(&mut up, conn, timeout).await?;
    }
}

/// Whether a failure on a reused connection means it was closed while idle (so the request
/// never reached a live upstream and may be sent again), not that the upstream is slow.
fn is_stale(e: &PError) -> bool {
    !matches!(
        e.etype(),
        ErrorType::ReadTimedout | ErrorType::WriteTimedout
    )
}

/// Reads at least one more byte of the response into `conn.upbuf`, within `timeout`, while
/// watching the client: a client that closes its connection meanwhile is not waited for (its
/// upstream connection is dropped, as nginx does), and bytes it sends ahead (a pipelined next
/// request) are kept.
async fn await_response<C>(
    up: &mut TcpStream,
    conn: &mut Conn<C>,
    timeout: Duration,
) -> Result<(), Failure>
where
    C: AsyncRead + Unpin,
{
    let deadline = tokio::time::Instant::now() + timeout;
    conn.upbuf.reserve(READ_CHUNK);
    loop {
        // Past this much read ahead, stop reading the client until the response is in.
        let watch_client = conn.buf.len() < MAX_HEAD + MAX_BODY;
        if watch_client {
            conn.buf.reserve(4096);
        }
        tokio::select! {
            biased;
            read = tokio::time::timeout_at(deadline, up.read_buf(&mut conn.upbuf)) => {
                return match read {
                    Ok(Ok(0)) => Err(Failure::Upstream(PError::explain(
                        ErrorType::ConnectionClosed,
                        "the upstream closed the connection",
                    ))),
                    Ok(Ok(_)) => Ok(()),
                    Ok(Err(e)) => Err(Failure::Upstream(PError::because(
                        ErrorType::ReadError,
                        "reading the response",
                        e,
                    ))),
                    Err(_) => Err(Failure::Upstream(PError::explain(
                        ErrorType::ReadTimedout,
                        format!("no response within {timeout:?}"),
                    ))),
                };
            }
            read = conn.client.read_buf(&mut conn.buf), if watch_client => {
                if !matches!(read, Ok(n) if n > 0) {
                    return Err(Failure::Client);
                }
            }
        }
    }
}

/// Whether an idle upstream connection has neither been closed nor sent anything unasked
/// (one non-blocking read: an open, quiet socket has nothing to read).
fn still_open(up: &TcpStream) -> bool {
    let mut byte = [0u8; 1];
    matches!(up.try_read(&mut byte), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
}

/// A new connection to the upstream: its addresses from the preferred one on, each within
/// the connect timeout.
async fn connect(upstream: &Upstream) -> Result<TcpStream, Box<PError>> {
    let mut last: Option<Box<PError>> = None;
    for attempt in 0..upstream.peer_count() {
        let Some((index, addr)) = upstream.addr(attempt) else {
            break;
        };
        match try_connect(addr, upstream.connect_timeout()).await {
            Ok(tcp) => {
                if attempt > 0 {
                    upstream.prefer(index);
                }
                return Ok(tcp);
            }
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| {
        PError::explain(
            ErrorType::ConnectNoRoute,
            "the target's host name did not resolve to any address",
        )
    }))
}

async fn try_connect(addr: SocketAddr, timeout: Duration) -> Result<TcpStream, Box<PError>> {
    let tcp = match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
        Ok(Ok(tcp)) => tcp,
        Ok(Err(e)) => {
            let etype = match e.kind() {
                std::io::ErrorKind::ConnectionRefused => ErrorType::ConnectRefused,
                _ => ErrorType::ConnectError,
            };
            return Err(PError::because(etype, format!("connecting to {addr}"), e));
        }
        Err(_) => {
            return Err(PError::explain(
                ErrorType::ConnectTimedout,
                format!("connecting to {addr}"),
            ))
        }
    };
    // Small requests and answers: do not wait to fill a segment.
    let _ = tcp.set_nodelay(true);
    Ok(tcp)
}

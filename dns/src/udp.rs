//! DNS over UDP: one socket per core on the listener's address (SO_REUSEPORT, so the kernel
//! spreads askers over them), each read by its own thread that answers the common query from
//! the packet's bytes ([`crate::fast`]) and hands anything else to hickory's full path on the
//! daemon's runtime.
//!
//! Threads with blocking sockets, not tasks: queries are taken and answered in batches
//! (`recvmmsg`, `sendmmsg`: two system calls for up to 32 queries under load, one query per
//! call when idle), with no readiness polling, no wake-up of another thread and no allocation,
//! the way Knot's UDP workers run; the daemon's runtime stays free for the control API and the
//! supervisor.

use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use hickory_server::net::runtime::TokioTime;
use hickory_server::net::xfer::Protocol;
use hickory_server::net::NetError;
use hickory_server::proto::op::{
    Header, HeaderCounts, MessageType, Metadata, OpCode, ResponseCode,
};
use hickory_server::proto::rr::Record;
use hickory_server::proto::serialize::binary::{BinEncodable, BinEncoder};
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponse;

use crate::counts::{question_type, Batch, Outcome};
use crate::fast::{self, MAX_ANSWER};
use crate::server::Handler;
use crate::Error;

/// Queries larger than this are cut (they are not DNS queries anyone sends over UDP).
const MAX_QUERY: usize = 4096;
/// Queries of one listener on hickory's path at once: above this, more are dropped, as the
/// network drops them, instead of queueing without bound in the daemon when the threads read
/// faster than the runtime answers. (Forwarding has its own, smaller limit in the handler, so
/// a flood of foreign names cannot take these from our own names.)
const MAX_FULL_PATH: usize = 1024;
/// How often an idle worker looks at the stop flag, should the wake-up at stop be missed.
const IDLE_CHECK: Duration = Duration::from_secs(1);

/// How many sockets (and threads) a UDP listener gets: one per core, up to four.
pub(crate) fn workers() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get().min(4))
}

/// `count` UDP sockets bound to `addr` together (SO_REUSEPORT). With port 0, the first picks
/// a free port and the others join it.
pub(crate) fn bind_group(addr: SocketAddr, count: usize) -> Result<Vec<UdpSocket>, Error> {
    let bind_error = |error| Error::Bind {
        addr,
        proto: "UDP",
        error,
    };
    let mut sockets: Vec<UdpSocket> = Vec::with_capacity(count);
    let mut at = addr;
    for _ in 0..count.max(1) {
        let socket = socket2::Socket::new(
            socket2::Domain::for_address(at),
            socket2::Type::DGRAM,
            Some(socket2::Protocol::UDP),
        )
        .map_err(bind_error)?;
        socket.set_reuse_port(true).map_err(bind_error)?;
        socket.bind(&at.into()).map_err(bind_error)?;
        socket
            .set_read_timeout(Some(IDLE_CHECK))
            .map_err(bind_error)?;
        let socket = UdpSocket::from(socket);
        at = socket.local_addr().map_err(bind_error)?;
        sockets.push(socket);
    }
    Ok(sockets)
}

/// The worker threads of one UDP listener, until [`UdpListener::stop`].
pub(crate) struct UdpListener {
    stop: Arc<AtomicBool>,
    sockets: Vec<Arc<UdpSocket>>,
    threads: Vec<JoinHandle<()>>,
}

impl UdpListener {
    /// Starts one thread per socket; queries the fast path does not answer go to `runtime`.
    pub(crate) fn start(
        sockets: Vec<UdpSocket>,
        handler: Handler,
        runtime: tokio::runtime::Handle,
    ) -> Result<UdpListener, Error> {
        let stop = Arc::new(AtomicBool::new(false));
        let handler = Arc::new(handler);
        let full_path = Arc::new(tokio::sync::Semaphore::new(MAX_FULL_PATH));
        let sockets: Vec<Arc<UdpSocket>> = sockets.into_iter().map(Arc::new).collect();
        let mut listener = UdpListener {
            stop,
            sockets: sockets.clone(),
            threads: Vec::with_capacity(sockets.len()),
        };
        for (i, socket) in sockets.iter().enumerate() {
            let worker = Worker {
                socket: socket.clone(),
                handler: handler.clone(),
                runtime: runtime.clone(),
                full_path: full_path.clone(),
            };
            let stop = listener.stop.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("dns-udp-{i}"))
                .spawn(move || serve(&worker, &stop));
            match spawned {
                Ok(thread) => listener.threads.push(thread),
                Err(error) => {
                    // The threads already started end on their own.
                    listener.wake_to_stop();
                    return Err(Error::Bind {
                        addr: socket
                            .local_addr()
                            .unwrap_or_else(|_| ([0, 0, 0, 0], 0).into()),
                        proto: "UDP",
                        error,
                    });
                }
            }
        }
        Ok(listener)
    }

    /// Sets the stop flag and wakes every thread from its `recvmmsg`.
    fn wake_to_stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
        for s in &self.sockets {
            // On an unconnected UDP socket Linux answers ENOTCONN but still wakes a reader
            // blocked in recvmmsg, which then sees the stop flag.
            let _ = socket2::SockRef::from(&**s).shutdown(std::net::Shutdown::Read);
        }
    }

    /// Stops the threads: each is woken from its `recvfrom` and ends; queries handed to the
    /// full path finish on the runtime.
    pub(crate) async fn stop(self) {
        self.wake_to_stop();
        let threads = self.threads;
        let _ = tokio::task::spawn_blocking(move || {
            for t in threads {
                let _ = t.join();
            }
        })
        .await;
    }
}

/// How many queries one `recvmmsg` takes at most (and one `sendmmsg` answers).
const BATCH: usize = 32;

/// What one worker thread reads and answers with.
struct Worker {
    socket: Arc<UdpSocket>,
    handler: Arc<Handler>,
    runtime: tokio::runtime::Handle,
    /// Permits for the listener's queries on the full path.
    full_path: Arc<tokio::sync::Semaphore>,
}

impl Worker {
    /// Hands `packet` to hickory's path on the runtime, or drops it when the listener already
    /// has as many there as it may.
    fn to_full_path(&self, packet: &[u8], src: SocketAddr, batch: &mut Batch) {
        let Ok(permit) = self.full_path.clone().try_acquire_owned() else {
            tracing::debug!(%src, "too many DNS queries waiting on the full path: one dropped");
            batch.add(question_type(packet), Outcome::Dropped);
            return;
        };
        let reply = UdpReply {
            socket: self.socket.clone(),
            dst: src,
            question: Vec::new(),
        };
        let handler = self.handler.clone();
        let packet = packet.to_vec();
        self.runtime.spawn(async move {
            full_path(handler, packet, reply).await;
            drop(permit);
        });
    }
}

/// One worker: takes whatever queries are waiting (`recvmmsg`, blocking for the first),
/// answers those the fast path can into its own buffers, sends all those answers with one
/// `sendmmsg`, and hands the others to the full path.
fn serve(worker: &Worker, stop: &AtomicBool) {
    use std::os::fd::AsRawFd;
    let (socket, handler) = (&worker.socket, &worker.handler);
    let fd = socket.as_raw_fd();
    let mut batch = Batch::default();
    let mut queries = vec![[0u8; MAX_QUERY]; BATCH];
    let mut answers = vec![[0u8; MAX_ANSWER]; BATCH];
    // SAFETY (for the zeroed values): sockaddr_storage, iovec and mmsghdr are plain C structs
    // for which all-zero bytes are valid values.
    let mut addrs: Vec<libc::sockaddr_storage> = vec![unsafe { std::mem::zeroed() }; BATCH];
    let mut in_iov: Vec<libc::iovec> = vec![unsafe { std::mem::zeroed() }; BATCH];
    let mut in_hdr: Vec<libc::mmsghdr> = vec![unsafe { std::mem::zeroed() }; BATCH];
    let mut out_iov: Vec<libc::iovec> = vec![unsafe { std::mem::zeroed() }; BATCH];
    let mut out_hdr: Vec<libc::mmsghdr> = vec![unsafe { std::mem::zeroed() }; BATCH];
    while !stop.load(Ordering::Relaxed) {
        for i in 0..BATCH {
            in_iov[i] = libc::iovec {
                iov_base: queries[i].as_mut_ptr().cast(),
                iov_len: MAX_QUERY,
            };
            let h = &mut in_hdr[i].msg_hdr;
            h.msg_name = (&mut addrs[i] as *mut libc::sockaddr_storage).cast();
            h.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            h.msg_iov = &mut in_iov[i];
            h.msg_iovlen = 1;
            h.msg_control = std::ptr::null_mut();
            h.msg_controllen = 0;
            h.msg_flags = 0;
        }
        // SAFETY: every header points at a live buffer of the length it gives, in vectors
        // that are neither moved nor resized while the call runs.
        let got = unsafe {
            libc::recvmmsg(
                fd,
                in_hdr.as_mut_ptr(),
                BATCH as libc::c_uint,
                libc::MSG_WAITFORONE,
                std::ptr::null_mut(),
            )
        };
        if got < 0 {
            let e = std::io::Error::last_os_error();
            match e.kind() {
                std::io::ErrorKind::WouldBlock
                | std::io::ErrorKind::TimedOut
                | std::io::ErrorKind::Interrupted
                | std::io::ErrorKind::ConnectionRefused
                | std::io::ErrorKind::ConnectionReset => continue,
                _ => {
                    tracing::warn!(error = %e, "the DNS UDP socket failed; this worker stops");
                    return;
                }
            }
        }
        let mut ready = 0;
        // One load of the published zone for the whole batch.
        let zone = handler.zone();
        for i in 0..got as usize {
            // A datagram longer than the buffer is no query anyone sends: dropped, not cut.
            if in_hdr[i].msg_hdr.msg_flags & libc::MSG_TRUNC != 0 {
                continue;
            }
            let len = (in_hdr[i].msg_len as usize).min(MAX_QUERY);
            let src = socket_addr(&addrs[i]);
            let Some(src) = src.filter(|s| answerable(*s)) else {
                continue;
            };
            let packet = &queries[i][..len];
            let ra = handler.recursion_available(src.ip());
            let answer = &mut answers[ready];
            match fast::answer(packet, &zone, handler.view(), ra, answer) {
                Some(n) => {
                    out_iov[ready] = libc::iovec {
                        iov_base: answer.as_mut_ptr().cast(),
                        iov_len: n,
                    };
                    let h = &mut out_hdr[ready].msg_hdr;
                    h.msg_name = (&mut addrs[i] as *mut libc::sockaddr_storage).cast();
                    h.msg_namelen = in_hdr[i].msg_hdr.msg_namelen;
                    h.msg_iov = &mut out_iov[ready];
                    h.msg_iovlen = 1;
                    ready += 1;
                    batch.add_answer(&answer[..n]);
                }
                None => worker.to_full_path(packet, src, &mut batch),
            }
        }
        batch.flush(&handler.counts);
        let mut sent = 0;
        while sent < ready {
            // SAFETY: headers [sent, ready) point at answers and addresses filled above.
            let n = unsafe {
                libc::sendmmsg(
                    fd,
                    out_hdr[sent..].as_mut_ptr(),
                    (ready - sent) as libc::c_uint,
                    0,
                )
            };
            if n <= 0 {
                let e = std::io::Error::last_os_error();
                if e.kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                // This answer cannot go (e.g. its asker's address is unreachable): skip it,
                // as a lost datagram; the asker retries.
                tracing::debug!(error = %e, "cannot send a DNS answer");
                sent += 1;
            } else {
                sent += n as usize;
            }
        }
    }
}

/// The address the kernel wrote for a received datagram (IPv4 or IPv6; `None` for any other).
fn socket_addr(storage: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match libc::c_int::from(storage.ss_family) {
        libc::AF_INET => {
            // SAFETY: the family says the storage holds a sockaddr_in, which it is big enough
            // for and aligned for.
            let a =
                unsafe { &*(storage as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            Some(SocketAddr::new(
                std::net::Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr)).into(),
                u16::from_be(a.sin_port),
            ))
        }
        libc::AF_INET6 => {
            // SAFETY: as above, for sockaddr_in6.
            let a = unsafe {
                &*(storage as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>()
            };
            Some(SocketAddr::V6(std::net::SocketAddrV6::new(
                std::net::Ipv6Addr::from(a.sin6_addr.s6_addr),
                u16::from_be(a.sin6_port),
                a.sin6_flowinfo,
                a.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

/// Whether an answer can go back to `src` (hickory's rule: not port 0, not an unspecified or
/// broadcast address).
fn answerable(src: SocketAddr) -> bool {
    src.port() != 0
        && match src.ip() {
            std::net::IpAddr::V4(v4) => !v4.is_unspecified() && !v4.is_broadcast(),
            std::net::IpAddr::V6(v6) => !v6.is_unspecified(),
        }
}

/// Hickory's path for one query, as its own UDP server runs it: a packet shorter than a header
/// is dropped, one that does not decode gets FORMERR; a response (QR set) is ignored, decoded
/// or not, so no answer ever goes to a packet that was itself an answer.
async fn full_path(handler: Arc<Handler>, packet: Vec<u8>, mut reply: UdpReply) {
    if packet.len() < 12 || packet[2] & 0x80 != 0 {
        return;
    }
    let header = [packet[0], packet[1], packet[2], packet[3]];
    match Request::from_bytes(packet, reply.dst, Protocol::Udp) {
        Ok(request) => {
            reply.question = question_of(&request);
            handler
                .handle_request::<_, TokioTime>(&request, reply)
                .await;
        }
        Err(e) => {
            tracing::debug!(error = %e, src = %reply.dst, "a DNS query that does not decode");
            reply.send(&form_error(header));
        }
    }
}

/// FORMERR for a query whose header starts with `header`: its id, opcode, RD and CD flags,
/// nothing else (as hickory answers one it cannot decode).
fn form_error(header: [u8; 4]) -> [u8; 12] {
    let mut out = [0u8; 12];
    out[..2].copy_from_slice(&header[..2]);
    out[2] = 0x80 | (header[2] & 0x79);
    out[3] = (header[3] & 0x10) | ResponseCode::FormErr.low();
    out
}

/// The question section of `request` as it came (its count, then its bytes), for an answer cut
/// down to it.
pub(crate) fn question_of(request: &Request) -> Vec<u8> {
    let mut q = (request.queries.len() as u16).to_be_bytes().to_vec();
    q.extend_from_slice(request.queries.as_bytes());
    q
}

/// Sends hickory's answers back from the socket the query came in on.
#[derive(Clone)]
struct UdpReply {
    socket: Arc<UdpSocket>,
    dst: SocketAddr,
    /// The query's question section ([`question_of`]).
    question: Vec<u8>,
}

impl UdpReply {
    /// Sends without blocking the runtime's thread: a full send buffer drops the answer, as
    /// the network may, and the asker retries.
    fn send(&self, bytes: &[u8]) {
        let sock = socket2::SockRef::from(&*self.socket);
        if let Err(e) = sock.send_to_with_flags(bytes, &self.dst.into(), libc::MSG_DONTWAIT) {
            tracing::debug!(error = %e, dst = %self.dst, "cannot send a DNS answer");
        }
    }
}

#[async_trait::async_trait]
impl ResponseHandler for UdpReply {
    async fn send_response<'a>(
        &mut self,
        response: MessageResponse<
            '_,
            'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
        >,
    ) -> Result<ResponseInfo, NetError> {
        let (info, bytes) = encode(response, &self.question)?;
        self.send(&bytes);
        Ok(info)
    }
}

/// Encodes an answer as hickory does for UDP: up to the asker's EDNS payload size, else 512
/// bytes; one that does not fit becomes SERVFAIL. `question` is the query's question section
/// ([`question_of`]): an answer that does not fit is cut to its header (TC set), that question
/// and its OPT, where hickory's encoder would leave a record cut in the middle.
pub(crate) fn encode<'a>(
    response: MessageResponse<
        '_,
        'a,
        impl Iterator<Item = &'a Record> + Send + 'a,
        impl Iterator<Item = &'a Record> + Send + 'a,
        impl Iterator<Item = &'a Record> + Send + 'a,
        impl Iterator<Item = &'a Record> + Send + 'a,
    >,
    question: &[u8],
) -> Result<(ResponseInfo, Vec<u8>), NetError> {
    let id = response.metadata().id;
    let max = response.edns().map_or(512, |e| e.max_payload());
    let opt = response.edns().map(|e| {
        let mut opt = vec![0, 0, 41];
        opt.extend(e.max_payload().to_be_bytes());
        opt.extend([e.rcode_high(), e.version()]);
        opt.extend(if e.flags().dnssec_ok {
            [0x80, 0]
        } else {
            [0, 0]
        });
        opt.extend([0, 0]);
        opt
    });
    let mut bytes = Vec::with_capacity(512);
    let mut encoder = BinEncoder::new(&mut bytes);
    encoder.set_max_size(max);
    match response.destructive_emit(&mut encoder) {
        Ok(info) if bytes.len() >= 12 && bytes[2] & 0x02 != 0 && question.len() >= 2 => {
            bytes.truncate(4);
            bytes.extend_from_slice(&question[..2]);
            bytes.extend([0, 0, 0, 0, 0, u8::from(opt.is_some())]);
            bytes.extend_from_slice(&question[2..]);
            bytes.extend(opt.unwrap_or_default());
            Ok((info, bytes))
        }
        Ok(info) => Ok((info, bytes)),
        Err(e) => {
            tracing::debug!(error = %e, "cannot encode a DNS answer");
            bytes.clear();
            let mut encoder = BinEncoder::new(&mut bytes);
            let mut metadata = Metadata::new(id, MessageType::Response, OpCode::Query);
            metadata.response_code = ResponseCode::ServFail;
            let header = Header {
                metadata,
                counts: HeaderCounts::default(),
            };
            header.emit(&mut encoder)?;
            Ok((ResponseInfo::from(header), bytes))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sockets_of_a_group_share_one_port() {
        let group = bind_group("127.0.0.1:0".parse().unwrap(), 3).unwrap();
        let port = group[0].local_addr().unwrap().port();
        assert_ne!(port, 0);
        assert!(group.iter().all(|s| s.local_addr().unwrap().port() == port));
    }

    /// A listener on loopback answering from a small zone, and a client socket.
    fn listener() -> (UdpListener, SocketAddr, UdpSocket) {
        let zone = crate::Zone::new(["test"], ["api.test"], [], 1, 5).unwrap();
        let view = crate::ProxyAddrs {
            v4: Some("127.0.0.1".parse().unwrap()),
            v6: None,
        };
        let group = bind_group("127.0.0.1:0".parse().unwrap(), 2).unwrap();
        let addr = group[0].local_addr().unwrap();
        let handler = Handler::without_forwarding(zone, view);
        let running =
            UdpListener::start(group, handler, tokio::runtime::Handle::current()).unwrap();
        let client = UdpSocket::bind("127.0.0.1:0").unwrap();
        client
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        (running, addr, client)
    }

    fn ask(
        client: &UdpSocket,
        server: SocketAddr,
        packet: &[u8],
    ) -> hickory_server::proto::op::Message {
        client.send_to(packet, server).unwrap();
        let mut buf = [0u8; 1500];
        let (n, from) = client.recv_from(&mut buf).expect("an answer");
        assert_eq!(from, server, "answered from the address asked");
        hickory_server::proto::op::Message::from_vec(&buf[..n]).unwrap()
    }

    /// `api.test A` with RD, id 0x0102, then `extra` appended with ARCOUNT `ar`.
    fn api_query(ar: u8, extra: &[u8]) -> Vec<u8> {
        let mut p = vec![1, 2, 1, 0, 0, 1, 0, 0, 0, 0, 0, ar];
        p.extend(b"\x03api\x04test\x00\x00\x01\x00\x01");
        p.extend(extra);
        p
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn queries_are_answered_on_both_paths_and_the_listener_stops() {
        let (running, server, client) = listener();
        tokio::task::spawn_blocking(move || {
            // The fast path (no EDNS).
            let m = ask(&client, server, &api_query(0, &[]));
            assert_eq!(m.metadata.id, 0x0102);
            assert!(m.metadata.authoritative);
            assert_eq!(m.answers[0].data.to_string(), "127.0.0.1");
            // The full path (EDNS with a cookie option), the same answer.
            let cookie = [
                0, 0, 41, 4, 0xd0, 0, 0, 0, 0, 0, 12, 0, 10, 0, 8, 1, 2, 3, 4, 5, 6, 7, 8,
            ];
            let m = ask(&client, server, &api_query(1, &cookie));
            assert_eq!(m.answers[0].data.to_string(), "127.0.0.1");
            // A header and nothing the decoder can read: FORMERR.
            let m = ask(&client, server, &[9, 9, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0xc0]);
            assert_eq!(
                m.metadata.response_code,
                hickory_server::proto::op::ResponseCode::FormErr
            );
            // Longer than any query (5,000 bytes): dropped, not cut and answered.
            let mut huge = api_query(0, &[]);
            huge.resize(5000, 0);
            huge[..2].copy_from_slice(&[9, 9]);
            client.send_to(&huge, server).unwrap();
            client
                .set_read_timeout(Some(Duration::from_millis(300)))
                .unwrap();
            let mut buf = [0u8; 1500];
            assert!(
                client.recv_from(&mut buf).is_err(),
                "a cut datagram was answered"
            );
            client
                .set_read_timeout(Some(Duration::from_secs(5)))
                .unwrap();
            // Shorter than a header: no answer; the next query still gets one.
            client.send_to(&[1, 2, 3], server).unwrap();
            assert_eq!(ask(&client, server, &api_query(0, &[])).metadata.id, 0x0102);
        })
        .await
        .unwrap();
        let stopping = std::time::Instant::now();
        running.stop().await;
        assert!(
            stopping.elapsed() < IDLE_CHECK,
            "the workers woke at stop instead of waiting for their timeout"
        );
    }

    /// `extra` appended to `api_query`'s question, with flags `flags` and ARCOUNT `ar`.
    fn with(flags: [u8; 2], qclass: u8, ar: u8, extra: &[u8]) -> Vec<u8> {
        let mut p = api_query(ar, extra);
        p[2..4].copy_from_slice(&flags);
        p[12 + 10 + 3] = qclass;
        p
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn odd_queries_get_well_formed_answers_or_none() {
        use hickory_server::proto::op::ResponseCode;
        let (running, server, client) = listener();
        tokio::task::spawn_blocking(move || {
            let opt = |version: u8| [0, 0, 41, 4, 0xd0, 0, version, 0, 0, 0, 0];
            // EDNS without options: the fast path, with an OPT in the answer.
            let m = ask(&client, server, &api_query(1, &opt(0)));
            assert_eq!(m.answers.len(), 1);
            assert_eq!(m.edns.as_ref().map(|e| e.max_payload()), Some(1232));
            // EDNS version 1: BADVERS, with an OPT.
            let m = ask(&client, server, &api_query(1, &opt(1)));
            // 16, which hickory reads back as BADSIG (the same code, in TSIG).
            assert_eq!(u16::from(m.metadata.response_code), 16);
            assert!(m.edns.is_some() && m.answers.is_empty());
            // Class CH: REFUSED.
            let m = ask(&client, server, &with([1, 0], 3, 0, &[]));
            assert_eq!(m.metadata.response_code, ResponseCode::Refused);
            // A name of 255 bytes below api.test, TC set in the query (the full path, no EDNS:
            // 512 bytes): cut to a clean header and question, TC set.
            let mut long = vec![1, 2, 3, 0, 0, 1, 0, 0, 0, 0, 0, 0];
            for n in [63, 63, 63, 52] {
                long.push(n);
                long.extend(std::iter::repeat_n(b'a', n as usize));
            }
            long.extend(b"\x03api\x04test\x00\x00\x01\x00\x01");
            let m = ask(&client, server, &long);
            assert!(m.metadata.truncation);
            assert_eq!((m.queries.len(), m.answers.len()), (1, 0));
            // An answer (QR set) that does not decode: nothing comes back; the next query's
            // answer is the next thing read.
            client
                .send_to(&[7, 7, 0x81, 0, 0, 1, 0, 0, 0, 0, 0, 0], server)
                .unwrap();
            assert_eq!(ask(&client, server, &api_query(0, &[])).metadata.id, 0x0102);
        })
        .await
        .unwrap();
        running.stop().await;
    }

    fn open_files() -> usize {
        std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_flood_of_names_to_forward_is_bounded_and_our_names_still_answer() {
        // An upstream that never answers: each forwarded query waits the whole timeout.
        let blackhole = UdpSocket::bind("127.0.0.1:0").unwrap();
        let zone = crate::Zone::new(["test"], ["api.test"], [], 1, 5).unwrap();
        let view = crate::ProxyAddrs {
            v4: Some("127.0.0.1".parse().unwrap()),
            v6: None,
        };
        let handler = Handler::forwarding_to(
            zone,
            view,
            blackhole.local_addr().unwrap(),
            Duration::from_secs(3),
        );
        let group = bind_group("127.0.0.1:0".parse().unwrap(), 2).unwrap();
        let server = group[0].local_addr().unwrap();
        let running =
            UdpListener::start(group, handler, tokio::runtime::Handle::current()).unwrap();
        let before = open_files();
        let peak = tokio::task::spawn_blocking(move || {
            let flood = UdpSocket::bind("127.0.0.1:0").unwrap();
            let mut peak = 0;
            for i in 0..3000u32 {
                let mut q = vec![0, 1, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 9];
                q.extend(format!("x{i:08x}").bytes());
                q.extend(b"\x07example\x03com\x00\x00\x01\x00\x01");
                flood.send_to(&q, server).unwrap();
                if i % 100 == 0 {
                    peak = peak.max(open_files());
                }
            }
            // While the forwarded ones wait on the upstream (3 s), count what they hold.
            for _ in 0..20 {
                std::thread::sleep(Duration::from_millis(50));
                peak = peak.max(open_files());
            }
            // Our names answer at once on both paths, flood or not.
            let client = UdpSocket::bind("127.0.0.1:0").unwrap();
            client
                .set_read_timeout(Some(Duration::from_secs(2)))
                .unwrap();
            let cookie = [
                0, 0, 41, 4, 0xd0, 0, 0, 0, 0, 0, 12, 0, 10, 0, 8, 1, 2, 3, 4, 5, 6, 7, 8,
            ];
            assert_eq!(
                ask(&client, server, &api_query(1, &cookie)).answers.len(),
                1
            );
            assert_eq!(ask(&client, server, &api_query(0, &[])).answers.len(), 1);
            peak.max(open_files())
        })
        .await
        .unwrap();
        assert!(
            // Sockets for at most 150 queries forwarded (about three each, as hickory's
            // forwarder opens them; 2,400 without the limit), and a few of the test's own.
            peak < before + 700,
            "{peak} files open during the flood, {before} before: forwarding is not bounded"
        );
        running.stop().await;
    }

    #[test]
    fn form_error_keeps_id_opcode_rd_and_cd() {
        // id 0xabcd, opcode 2 (STATUS), RD; CD and AD set.
        let out = form_error([0xab, 0xcd, 0x11, 0x30]);
        assert_eq!(&out[..2], &[0xab, 0xcd]);
        assert_eq!(out[2], 0x80 | 0x10 | 0x01);
        assert_eq!(out[3], 0x10 | 1);
        assert!(out[4..].iter().all(|b| *b == 0));
    }
}

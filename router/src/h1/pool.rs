//! The HTTP/1.1 front's idle upstream connections: one pool per thread, in a thread local, so
//! taking and returning a connection takes no lock (DESIGN: nobody locks per request).
//!
//! Per thread because each proxy thread runs its own runtime (without work stealing), and a
//! socket registered with another thread's reactor would have every read wake that thread,
//! which then wakes this one (measured: one extra syscall and a cross-thread wake-up per
//! request).
//!
//! Per upstream: connections are kept under the upstream's identity (its allocation, held by
//! a `Weak` while connections wait, so no other upstream can take its place) and its
//! generation, so none outlives or crosses a route change. A route set again gets a new
//! [`Upstream`], hence fresh connections, even to the same address; the connections of an
//! upstream no route uses any more are closed at this thread's next sweep (at most one
//! [`SWEEP_EVERY`] after its next use of the pool).
//!
//! A connection taken from here must still be checked (`upstream_conn::still_open`): the
//! upstream may have closed it, or sent bytes nobody asked for, while it waited.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use tokio::net::TcpStream;

use crate::Upstream;

/// At most this many idle connections per upstream on one thread (as many as its concurrent
/// requests need).
const MAX_IDLE: usize = 256;
/// Idle connections older than this are closed rather than reused: servers close theirs
/// after 60-75 s (nginx, Node) or less, and a reused closed one costs a retry.
const IDLE_LIMIT: Duration = Duration::from_secs(30);
/// How often a thread's pool closes the connections of upstreams no route uses any more, and
/// those idle for longer than [`IDLE_LIMIT`].
const SWEEP_EVERY: Duration = Duration::from_secs(1);

thread_local! {
    static POOL: RefCell<Pool> = RefCell::new(Pool::default());
}

/// An upstream's identity: its address (kept unique by the slot's `Weak`) and generation.
type Key = (usize, u64);

fn key(upstream: &Arc<Upstream>) -> Key {
    (Arc::as_ptr(upstream) as usize, upstream.generation())
}

/// One thread's idle connections.
#[derive(Default)]
struct Pool {
    slots: HashMap<Key, Slot>,
    /// When the next sweep is due.
    sweep_at: Option<Instant>,
}

/// One upstream's idle connections on this thread, oldest first.
struct Slot {
    upstream: Weak<Upstream>,
    idle: Vec<Idle>,
}

struct Idle {
    conn: TcpStream,
    since: Instant,
}

impl Pool {
    /// Closes the connections of upstreams that are gone and those idle too long, when due.
    fn sweep(&mut self, now: Instant) {
        if self.sweep_at.is_some_and(|at| now < at) {
            return;
        }
        self.sweep_at = Some(now + SWEEP_EVERY);
        self.slots.retain(|_, slot| {
            if slot.upstream.strong_count() == 0 {
                return false;
            }
            slot.idle
                .retain(|c| now.duration_since(c.since) < IDLE_LIMIT);
            true
        });
    }
}

/// This thread's most recently used idle connection to `upstream`, if one is fresh enough.
pub(super) fn take(upstream: &Arc<Upstream>) -> Option<TcpStream> {
    let now = Instant::now();
    POOL.with_borrow_mut(|pool| {
        pool.sweep(now);
        let idle = &mut pool.slots.get_mut(&key(upstream))?.idle;
        if now.duration_since(idle.last()?.since) >= IDLE_LIMIT {
            // The most recent one is too old, so are the older ones: close them all.
            idle.clear();
            return None;
        }
        idle.pop().map(|c| c.conn)
    })
}

/// Keeps a connection for the next request to `upstream` on this thread (closed instead when
/// the pool is full).
pub(super) fn put(upstream: &Arc<Upstream>, conn: TcpStream) {
    let now = Instant::now();
    POOL.with_borrow_mut(|pool| {
        pool.sweep(now);
        let slot = pool.slots.entry(key(upstream)).or_insert_with(|| Slot {
            upstream: Arc::downgrade(upstream),
            idle: Vec::new(),
        });
        if slot.idle.len() < MAX_IDLE {
            slot.idle.push(Idle { conn, since: now });
        }
    })
}

/// Closes this thread's idle connections to `upstream`.
pub(super) fn clear(upstream: &Arc<Upstream>) {
    POOL.with_borrow_mut(|pool| {
        if let Some(slot) = pool.slots.get_mut(&key(upstream)) {
            slot.idle.clear();
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{UpstreamOptions, UpstreamSpec};

    fn upstream(generation: u64) -> Arc<Upstream> {
        let spec = UpstreamSpec::parse("127.0.0.1:1").unwrap();
        let addrs = vec!["127.0.0.1:1".parse().unwrap()];
        Arc::new(Upstream::new(
            spec,
            addrs,
            generation,
            &UpstreamOptions::default(),
        ))
    }

    /// Connected sockets, their far ends accepted and closed (the pool does not look).
    struct Far(tokio::net::TcpListener);

    impl Far {
        async fn new() -> Self {
            Far(tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap())
        }

        async fn conn(&self) -> TcpStream {
            let addr = self.0.local_addr().unwrap();
            let (near, far) = tokio::join!(TcpStream::connect(addr), self.0.accept());
            drop(far.unwrap());
            near.unwrap()
        }
    }

    fn idle_count() -> usize {
        POOL.with_borrow(|p| p.slots.values().map(|s| s.idle.len()).sum())
    }

    #[tokio::test]
    async fn connections_come_back_last_in_first_out_and_per_upstream() {
        let far = Far::new().await;
        let (a, b) = (upstream(1), upstream(1));
        put(&a, far.conn().await);
        put(&a, far.conn().await);
        let last = far.conn().await;
        let port = last.local_addr().unwrap().port();
        put(&a, last);
        assert!(take(&b).is_none(), "another upstream, same generation");
        assert_eq!(take(&a).unwrap().local_addr().unwrap().port(), port);
        clear(&a);
        assert!(take(&a).is_none());
    }

    #[tokio::test]
    async fn a_route_change_leaves_nothing_behind() {
        let far = Far::new().await;
        let old = upstream(1);
        put(&old, far.conn().await);
        let new = upstream(2);
        assert!(take(&new).is_none());
        drop(old);
        // The next use of the pool once a sweep is due closes the old upstream's.
        POOL.with_borrow_mut(|p| p.sweep_at = None);
        put(&new, far.conn().await);
        assert_eq!(idle_count(), 1);
    }

    #[tokio::test]
    async fn old_connections_are_not_reused() {
        let far = Far::new().await;
        let up = upstream(1);
        put(&up, far.conn().await);
        POOL.with_borrow_mut(|p| {
            for slot in p.slots.values_mut() {
                for c in &mut slot.idle {
                    c.since -= IDLE_LIMIT;
                }
            }
        });
        assert!(take(&up).is_none());
        assert_eq!(idle_count(), 0);
    }

    #[tokio::test]
    async fn the_pool_is_bounded() {
        let far = Far::new().await;
        let up = upstream(1);
        for _ in 0..MAX_IDLE + 3 {
            put(&up, far.conn().await);
        }
        assert_eq!(idle_count(), MAX_IDLE);
    }
}

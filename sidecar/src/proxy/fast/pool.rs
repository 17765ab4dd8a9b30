//! Idle links of the fast path, shared by every connection of the proxy
//! port: a caller that opens a connection per request still reuses the
//! links to instances (as hyper's pool did), and idle links are bounded
//! in number and age so neither descriptors nor QUIC streams pile up (a
//! peer lets us open 512 streams at once; an idle one holds one).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::upstream::{Target, Upstream};
use crate::proxy::hop_pool::{sweep_every_second, HOP_IDLE};

/// How long an unused loopback connection to an instance is kept (as the
/// pooled client's idle timeout).
const DIRECT_IDLE: Duration = Duration::from_secs(60);
/// Idle loopback connections kept per instance.
const MAX_IDLE_DIRECT: usize = 256;
/// Idle streams kept per instance behind another sidecar.
const MAX_IDLE_HOPS: usize = 32;

struct Idle {
    conn: Upstream,
    since: Instant,
}

impl Idle {
    fn fresh(&self, now: Instant) -> bool {
        let limit = if self.conn.target.via.is_some() {
            HOP_IDLE
        } else {
            DIRECT_IDLE
        };
        now.duration_since(self.since) < limit
    }
}

/// Idle links by target.
#[derive(Default)]
pub struct LinkPool {
    idle: Mutex<HashMap<Target, Vec<Idle>>>,
}

impl LinkPool {
    /// A pool whose stale links are dropped every second until it is.
    pub fn start() -> Arc<Self> {
        let pool = Arc::new(Self::default());
        tokio::spawn(sweep_every_second(Arc::downgrade(&pool), Self::prune));
        pool
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Target, Vec<Idle>>> {
        // A poisoned pool only means a panic elsewhere; its links are whole.
        self.idle.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The most recently used idle link to `target` that is still open.
    pub(super) fn take(&self, target: Target) -> Option<Upstream> {
        let mut idle = self.lock();
        let links = idle.get_mut(&target)?;
        let now = Instant::now();
        while let Some(mut link) = links.pop() {
            if link.fresh(now) && link.conn.link.is_idle_and_open() {
                return Some(link.conn);
            }
        }
        None
    }

    /// Keeps `conn` for the next request to its target, unless as many are
    /// idle already.
    pub(super) fn put(&self, mut conn: Upstream) {
        conn.shrink();
        let most = if conn.target.via.is_some() {
            MAX_IDLE_HOPS
        } else {
            MAX_IDLE_DIRECT
        };
        let mut idle = self.lock();
        let links = idle.entry(conn.target).or_default();
        if links.len() < most {
            links.push(Idle {
                conn,
                since: Instant::now(),
            });
        }
    }

    fn prune(&self) {
        let now = Instant::now();
        // Dropped outside the lock: closing a stream or socket takes time.
        let mut stale = Vec::new();
        {
            let mut idle = self.lock();
            idle.retain(|_, links| {
                let (keep, old): (Vec<Idle>, Vec<Idle>) = std::mem::take(links)
                    .into_iter()
                    .partition(|l| l.fresh(now));
                *links = keep;
                stale.extend(old);
                !links.is_empty()
            });
        }
        drop(stale);
    }

    /// Idle links kept now (for tests).
    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().values().map(Vec::len).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::fast::upstream::Link;
    use bytes::BytesMut;
    use tokio::io::AsyncWriteExt;

    async fn linked(listener: &tokio::net::TcpListener) -> (Upstream, tokio::net::TcpStream) {
        let address = listener.local_addr().expect("addr");
        let stream = tokio::net::TcpStream::connect(address)
            .await
            .expect("connect");
        let (far, _) = listener.accept().await.expect("accept");
        let conn = Upstream {
            target: Target { address, via: None },
            link: Link::Direct(stream),
            buf: BytesMut::new(),
        };
        (conn, far)
    }

    #[tokio::test]
    async fn a_kept_link_is_reused_unless_its_far_end_closed_or_spoke() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let target = Target {
            address: listener.local_addr().expect("addr"),
            via: None,
        };
        let pool = LinkPool::default();

        let (open, _far_open) = linked(&listener).await;
        pool.put(open);
        assert!(pool.take(target).is_some(), "an open idle link is reused");

        let (closed, far_closed) = linked(&listener).await;
        pool.put(closed);
        drop(far_closed);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(
            pool.take(target).is_none(),
            "a link its instance closed is dropped"
        );

        let (spoken, mut far_spoke) = linked(&listener).await;
        pool.put(spoken);
        far_spoke
            .write_all(b"HTTP/1.1 200 OK\r\n")
            .await
            .expect("write");
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(
            pool.take(target).is_none(),
            "a link with unasked-for bytes is dropped"
        );
        assert_eq!(pool.len(), 0);
    }
}

//! Keep-alive hops between sidecars: the HTTP/1.1 connection a request
//! opened on a QUIC stream to a peer sidecar is kept once its answer has
//! been read whole, and the next request for the same instance goes on it.
//!
//! A stream per request cost each side a stream, a task, connection buffers
//! and a handshake per call (two sidecars at c32 spent ~55 µs of CPU per
//! request on the caller, ~50 µs on the callee). The frame that opens a
//! stream names one instance, so hops are kept per instance; the caller
//! still picks the instance for every request.
//!
//! A hop goes back to the pool only when its answer was read to the end; an
//! answer dropped early (a cancelled call) ends its hop at once, as a hop
//! of its own did before. Idle hops hold their QUIC connection open (a
//! stream in use is never idle), so they are dropped after [`HOP_IDLE`].

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use hyper::client::conn::http1::SendRequest;
use mesh_proto::frame::ProxyFrame;
use tokio::task::AbortHandle;

use super::forward::ProxyBody;

/// How long an unused hop is kept. Shorter than any profile's idle close,
/// so a connection nobody calls over still closes.
pub const HOP_IDLE: Duration = Duration::from_secs(5);

/// Idle hops kept per peer sidecar, over all its instances: each holds one
/// of the 512 streams a peer lets us open at once.
const MAX_IDLE_PER_PEER: usize = 128;

/// A hop ready for the next request: its sender and the task driving it.
pub struct Hop {
    /// Sends requests on the hop's connection.
    pub sender: SendRequest<ProxyBody>,
    /// The task driving the connection (aborted to end the hop at once).
    pub connection: AbortHandle,
}

impl Hop {
    /// Ends the hop now: its stream closes, and the far sidecar drops any
    /// call still running on it.
    pub fn end(self) {
        self.connection.abort();
    }
}

struct IdleHop {
    hop: Hop,
    address: SocketAddr,
    service: String,
    since: Instant,
}

impl IdleHop {
    /// Kept for less than [`HOP_IDLE`] and its connection still open.
    fn fresh(&self, now: Instant) -> bool {
        now.duration_since(self.since) < HOP_IDLE && !self.hop.sender.is_closed()
    }
}

#[derive(Default)]
struct PeerHops {
    by_instance: HashMap<String, Vec<IdleHop>>,
    count: usize,
}

impl PeerHops {
    fn prune(&mut self, now: Instant) {
        let mut count = 0;
        self.by_instance.retain(|_, hops| {
            hops.retain(|idle| idle.fresh(now));
            count += hops.len();
            !hops.is_empty()
        });
        self.count = count;
    }
}

/// Idle hops by peer sidecar and instance.
#[derive(Default)]
pub struct HopPool {
    peers: Mutex<HashMap<SocketAddr, PeerHops>>,
}

impl HopPool {
    /// A pool whose idle hops are swept every second until it is dropped.
    pub fn start() -> Arc<Self> {
        let pool = Arc::new(Self::default());
        tokio::spawn(sweep_every_second(Arc::downgrade(&pool), Self::prune));
        pool
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<SocketAddr, PeerHops>> {
        // A poisoned pool only means a panic elsewhere; its hops are whole.
        self.peers.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The most recently used idle hop to `frame`'s instance through
    /// `sidecar`, if one is kept and ready. It may still turn out closed
    /// when used (the peer went); the caller then opens a new one.
    pub fn take(&self, sidecar: SocketAddr, frame: &ProxyFrame) -> Option<Hop> {
        let mut peers = self.lock();
        let peer = peers.get_mut(&sidecar)?;
        let hops = peer.by_instance.get_mut(frame.instance_id.as_str())?;
        let now = Instant::now();
        let mut found = None;
        while let Some(idle) = hops.pop() {
            peer.count -= 1;
            let usable = idle.address == frame.address
                && idle.service == frame.service
                && idle.fresh(now)
                && idle.hop.sender.is_ready();
            if usable {
                found = Some(idle.hop);
                break;
            }
            idle.hop.end();
        }
        if hops.is_empty() {
            peer.by_instance.remove(frame.instance_id.as_str());
        }
        found
    }

    /// Keeps `hop`, whose last answer was read whole, for the next request
    /// to `frame`'s instance once its connection is ready for one (it may
    /// still be reading the end of the answer, as after trailers).
    pub fn keep(self: &Arc<Self>, sidecar: SocketAddr, frame: ProxyFrame, mut hop: Hop) {
        if hop.sender.is_ready() {
            self.put(sidecar, &frame, hop);
            return;
        }
        let pool = Arc::downgrade(self);
        tokio::spawn(async move {
            let ready = tokio::time::timeout(HOP_IDLE, hop.sender.ready()).await;
            match (ready, pool.upgrade()) {
                (Ok(Ok(())), Some(pool)) => pool.put(sidecar, &frame, hop),
                _ => hop.end(),
            }
        });
    }

    /// Keeps `hop`, ready for a request; ends it instead when the peer has
    /// enough.
    fn put(&self, sidecar: SocketAddr, frame: &ProxyFrame, hop: Hop) {
        if hop.sender.is_closed() {
            return;
        }
        let mut peers = self.lock();
        let peer = peers.entry(sidecar).or_default();
        if peer.count >= MAX_IDLE_PER_PEER {
            peer.prune(Instant::now());
            if peer.count >= MAX_IDLE_PER_PEER {
                drop(peers);
                hop.end();
                return;
            }
        }
        let idle = IdleHop {
            hop,
            address: frame.address,
            service: frame.service.clone(),
            since: Instant::now(),
        };
        match peer.by_instance.get_mut(frame.instance_id.as_str()) {
            Some(hops) => hops.push(idle),
            None => {
                peer.by_instance
                    .insert(frame.instance_id.clone(), vec![idle]);
            }
        }
        peer.count += 1;
    }

    /// Idle hops kept, over every peer.
    #[cfg(test)]
    fn idle(&self) -> usize {
        self.lock().values().map(|peer| peer.count).sum()
    }

    fn prune(&self) {
        let now = Instant::now();
        self.lock().retain(|_, peer| {
            peer.prune(now);
            peer.count > 0
        });
    }
}

/// Prunes `pool` every second until it is dropped (idle kept links of
/// either pool must close on time even when no request comes).
pub(crate) async fn sweep_every_second<T>(pool: Weak<T>, prune: fn(&T)) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(pool) = pool.upgrade() else { return };
        prune(&pool);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper_util::rt::TokioIo;

    fn frame(instance: &str, port: u16) -> ProxyFrame {
        ProxyFrame {
            instance_id: instance.to_owned(),
            address: SocketAddr::from(([127, 0, 0, 1], port)),
            service: "svc".to_owned(),
            timeout_ms: 0,
        }
    }

    /// A ready hop over an in-memory pipe, and the far end of the pipe
    /// (dropping it closes the hop).
    async fn hop() -> (Hop, tokio::io::DuplexStream) {
        let (near, far) = tokio::io::duplex(1024);
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(near))
            .await
            .expect("handshake");
        let connection = tokio::spawn(connection).abort_handle();
        sender.ready().await.expect("ready");
        (Hop { sender, connection }, far)
    }

    const PEER: SocketAddr =
        SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 4300);

    #[tokio::test]
    async fn a_kept_hop_is_taken_only_for_its_instance_at_its_address() {
        let pool = HopPool::start();
        let (first, _far1) = hop().await;
        pool.keep(PEER, frame("i1", 8080), first);
        assert_eq!(pool.idle(), 1);
        assert!(
            pool.take(PEER, &frame("i2", 8080)).is_none(),
            "another instance"
        );
        let other_peer = SocketAddr::from(([127, 0, 0, 2], 4300));
        assert!(
            pool.take(other_peer, &frame("i1", 8080)).is_none(),
            "another peer"
        );
        assert_eq!(pool.idle(), 1);
        // Re-registered at another address: the kept hop is stale, ended.
        assert!(pool.take(PEER, &frame("i1", 9090)).is_none());
        assert_eq!(pool.idle(), 0, "a stale hop is dropped, not kept");

        let (second, _far2) = hop().await;
        pool.keep(PEER, frame("i1", 8080), second);
        assert!(pool.take(PEER, &frame("i1", 8080)).is_some());
        assert_eq!(pool.idle(), 0, "taken hops leave the pool");
    }

    #[tokio::test]
    async fn a_peer_keeps_at_most_its_share_of_idle_hops() {
        let pool = HopPool::start();
        let mut pipes = Vec::new();
        for i in 0..MAX_IDLE_PER_PEER + 3 {
            let (hop, far) = hop().await;
            pipes.push(far);
            pool.keep(PEER, frame(&format!("i{}", i % 7), 8080), hop);
        }
        assert_eq!(pool.idle(), MAX_IDLE_PER_PEER);
    }

    #[tokio::test]
    async fn a_hop_whose_stream_closed_is_not_taken() {
        let pool = HopPool::start();
        let (kept, far) = hop().await;
        pool.keep(PEER, frame("i1", 8080), kept);
        drop(far);
        // The connection task sees the pipe close and drops its end.
        let deadline = Instant::now() + Duration::from_secs(5);
        while pool.lock().values().any(|peer| {
            peer.by_instance
                .values()
                .flatten()
                .any(|idle| !idle.hop.sender.is_closed())
        }) {
            assert!(
                Instant::now() < deadline,
                "the hop never saw its pipe close"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(pool.take(PEER, &frame("i1", 8080)).is_none());
    }
}

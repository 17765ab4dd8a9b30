//! TEST ONLY: a UDP socket wrapper that delays or drops datagrams sent to
//! chosen peers, so tests and the demo can give loopback links a latency or
//! cut them (the kernel here has no netem).
//!
//! It wraps quinn's own socket; a per-destination task releases delayed
//! datagrams in order once their time has come.

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::Duration;

use quinn::udp::{RecvMeta, Transmit};
use quinn::{AsyncUdpSocket, UdpPoller};
use tokio::sync::mpsc;
use tokio::time::Instant;

/// What happens to datagrams bound for one address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkRule {
    /// Held back this long before sending.
    Delay(Duration),
    /// Silently dropped.
    Drop,
}

/// Rules by destination, shared with whoever changes them at run time (tests
/// partition and heal through it).
#[derive(Debug, Clone, Default)]
pub struct LinkRules {
    rules: Arc<RwLock<HashMap<SocketAddr, LinkRule>>>,
}

impl LinkRules {
    /// Sets (or replaces) the rule for `addr`.
    pub fn set(&self, addr: SocketAddr, rule: LinkRule) {
        if let Ok(mut rules) = self.rules.write() {
            rules.insert(addr, rule);
        }
    }

    /// Removes the rule for `addr`.
    pub fn clear(&self, addr: SocketAddr) {
        if let Ok(mut rules) = self.rules.write() {
            rules.remove(&addr);
        }
    }

    /// True when no rule is set (the shim then only forwards).
    pub fn is_empty(&self) -> bool {
        self.rules.read().map(|r| r.is_empty()).unwrap_or(true)
    }

    fn get(&self, addr: &SocketAddr) -> Option<LinkRule> {
        self.rules.read().ok()?.get(addr).copied()
    }
}

struct Delayed {
    due: Instant,
    bytes: Vec<u8>,
}

/// The wrapping socket.
pub struct ShimSocket {
    inner: Arc<dyn AsyncUdpSocket>,
    rules: LinkRules,
    queues: std::sync::Mutex<HashMap<SocketAddr, mpsc::UnboundedSender<Delayed>>>,
}

impl fmt::Debug for ShimSocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ShimSocket")
            .field("rules", &self.rules)
            .finish()
    }
}

impl ShimSocket {
    /// Wraps `inner`, applying `rules` to every datagram sent.
    pub fn new(inner: Arc<dyn AsyncUdpSocket>, rules: LinkRules) -> Self {
        Self {
            inner,
            rules,
            queues: std::sync::Mutex::new(HashMap::new()),
        }
    }

    fn enqueue(&self, transmit: &Transmit, delay: Duration) {
        let Ok(mut queues) = self.queues.lock() else {
            return;
        };
        let destination = transmit.destination;
        let sender = queues.entry(destination).or_insert_with(|| {
            let (tx, rx) = mpsc::unbounded_channel();
            tokio::spawn(release_in_order(self.inner.clone(), destination, rx));
            tx
        });
        let _ = sender.send(Delayed {
            due: Instant::now() + delay,
            bytes: transmit.contents.to_vec(),
        });
    }
}

async fn release_in_order(
    socket: Arc<dyn AsyncUdpSocket>,
    destination: SocketAddr,
    mut queue: mpsc::UnboundedReceiver<Delayed>,
) {
    while let Some(datagram) = queue.recv().await {
        tokio::time::sleep_until(datagram.due).await;
        let transmit = Transmit {
            destination,
            ecn: None,
            contents: &datagram.bytes,
            segment_size: None,
            src_ip: None,
        };
        // A full socket buffer is transient on loopback; give it a few tries,
        // then drop the datagram as a congested network would.
        for _ in 0..20 {
            match socket.try_send(&transmit) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    tokio::time::sleep(Duration::from_micros(200)).await;
                }
                _ => break,
            }
        }
    }
}

impl AsyncUdpSocket for ShimSocket {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        self.inner.clone().create_io_poller()
    }

    fn try_send(&self, transmit: &Transmit) -> io::Result<()> {
        match self.rules.get(&transmit.destination) {
            None => self.inner.try_send(transmit),
            Some(LinkRule::Drop) => Ok(()),
            Some(LinkRule::Delay(delay)) => {
                self.enqueue(transmit, delay);
                Ok(())
            }
        }
    }

    fn poll_recv(
        &self,
        cx: &mut Context,
        bufs: &mut [io::IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        self.inner.poll_recv(cx, bufs, meta)
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    fn max_transmit_segments(&self) -> usize {
        // One datagram per transmit, so a delayed copy is exactly one packet.
        1
    }

    fn max_receive_segments(&self) -> usize {
        self.inner.max_receive_segments()
    }

    fn may_fragment(&self) -> bool {
        self.inner.may_fragment()
    }
}

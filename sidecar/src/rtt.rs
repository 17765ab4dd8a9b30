//! RTT sampling: the QUIC estimate of each open connection once a second,
//! fed to the RTT table (`core::rtt`). SWIM probe round trips and the
//! coordinates SWIM packets carry come in through `membership`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use mesh_proto::api::RttSource;
use mesh_proto::codec;
use mesh_proto::coordinate::Coordinate;
use mesh_proto::gossip::{DatagramKind, Ping};
use mesh_proto::NodeId;
use quinn::Connection;
use tokio::sync::{mpsc, watch};
use tracing::debug;

use crate::core::rtt::RttCore;
use crate::membership::ActiveMembers;
use crate::metrics;
use crate::transport::Transport;

/// How often each peer is sampled.
const SAMPLE_EVERY: Duration = Duration::from_secs(1);
/// Largest ping datagram accepted.
pub const MAX_PING: usize = 512;

/// RTT by peer, measured or estimated: the [`RttCore`] behind a lock held
/// only for in-memory updates.
pub struct RttTable {
    allow_estimated: bool,
    core: Mutex<RttCore>,
}

impl RttTable {
    /// An empty table for `local`.
    pub fn new(local: NodeId, allow_estimated: bool) -> Arc<Self> {
        Arc::new(Self {
            allow_estimated,
            core: Mutex::new(RttCore::new(local)),
        })
    }

    fn lock(&self) -> MutexGuard<'_, RttCore> {
        self.core.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether estimated RTT may satisfy hard requirements.
    pub fn allow_estimated(&self) -> bool {
        self.allow_estimated
    }

    /// RTT to `node` in ms and where it came from (see [`RttCore::get`]).
    pub fn get(&self, node: &NodeId, published: Option<&Coordinate>) -> (Option<f64>, RttSource) {
        self.lock().get(node, published)
    }

    /// Folds in one RTT sample to `node`.
    pub fn observe(&self, node: &NodeId, rtt: Duration) {
        let smoothed = self.lock().observe(node, rtt);
        ::metrics::gauge!(metrics::PEER_RTT, "peer" => node.to_string()).set(smoothed / 1000.0);
    }

    /// Moves our coordinate by one sample against a peer's coordinate.
    pub fn observe_coordinate(&self, node: &NodeId, coordinate: &Coordinate, rtt: Duration) {
        if let Err(e) = self.lock().observe_coordinate(node, coordinate, rtt) {
            debug!(peer = %node, error = %e, "coordinate update skipped");
        }
    }

    /// Remembers a peer's coordinate (carried on its SWIM packets) for
    /// estimates, without moving ours: no RTT sample came with it.
    pub fn learn_coordinate(&self, node: &NodeId, coordinate: &Coordinate) {
        self.lock().learn_coordinate(node, coordinate);
    }

    /// Drops what we know of a departed peer.
    pub fn forget(&self, node: &NodeId) {
        self.lock().forget(node);
    }

    /// This node's coordinate.
    pub fn coordinate(&self) -> Coordinate {
        self.lock().coordinate().clone()
    }
}

/// What the sampling task uses.
pub struct RttSampler {
    /// The table it fills.
    pub rtt: Arc<RttTable>,
    /// Connections to sample.
    pub transport: Arc<Transport>,
    /// Who is who (peer address to node id).
    pub members: watch::Receiver<ActiveMembers>,
}

/// Once a second, reads QUIC's RTT estimate of every open connection (only
/// peers in use have one: upstreams of the proxy, anti-entropy partners),
/// and answers pings from peers that still send them.
///
/// Nothing here dials, and nothing runs per member: peers without a
/// connection are measured by SWIM probe round trips (`membership`) and
/// estimated from the coordinates SWIM packets carry. quinn refreshes its
/// estimate from the ACKs of whatever the connection carries, so the RTT
/// of an upstream is the one its calls see.
pub async fn run(
    sampler: RttSampler,
    mut datagrams: mpsc::Receiver<(DatagramKind, Bytes, Connection)>,
) {
    let sampler = &sampler;
    let mut tick = tokio::time::interval(SAMPLE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut members = sampler.members.clone();
    let mut by_addr = addresses(&members.borrow_and_update());
    loop {
        tokio::select! {
            _ = tick.tick() => {
                if members.has_changed().unwrap_or(false) {
                    by_addr = addresses(&members.borrow_and_update());
                }
                for (addr, connection) in sampler.transport.live() {
                    if let Some(node) = by_addr.get(&addr) {
                        // quinn's estimate includes the handshake's round
                        // trip, so it is real from the connection's first moment.
                        sampler.rtt.observe(node, connection.rtt());
                    }
                }
            }
            Some((kind, body, connection)) = datagrams.recv() => {
                handle_datagram(sampler, &by_addr, kind, &body, &connection);
            }
        }
    }
}

fn addresses(members: &ActiveMembers) -> HashMap<SocketAddr, NodeId> {
    members
        .iter()
        .map(|(node, identity)| (identity.addr, node.clone()))
        .collect()
}

fn send_ping(
    connection: &Connection,
    kind: DatagramKind,
    seq: u64,
    coordinate: Option<Coordinate>,
) {
    let Ok(body) = codec::encode(&Ping { seq, coordinate }) else {
        return;
    };
    let mut datagram = Vec::with_capacity(body.len() + 1);
    datagram.push(kind as u8);
    datagram.extend_from_slice(&body);
    let _ = connection.send_datagram(Bytes::from(datagram));
}

fn handle_datagram(
    sampler: &RttSampler,
    by_addr: &HashMap<SocketAddr, NodeId>,
    kind: DatagramKind,
    body: &[u8],
    connection: &Connection,
) {
    let Ok(ping) = codec::decode::<Ping>(body, MAX_PING) else {
        metrics::decode_error();
        return;
    };
    match kind {
        DatagramKind::Ping => send_ping(
            connection,
            DatagramKind::Pong,
            ping.seq,
            Some(sampler.rtt.coordinate()),
        ),
        DatagramKind::Pong => {
            let Some(coordinate) = ping.coordinate.filter(Coordinate::is_valid) else {
                return;
            };
            if let Some(node) = by_addr.get(&connection.remote_address()) {
                sampler
                    .rtt
                    .observe_coordinate(node, &coordinate, connection.rtt());
            }
        }
        DatagramKind::Swim => {}
    }
}

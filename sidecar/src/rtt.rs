//! RTT sampling: the QUIC connection's own estimate once a second (a ping
//! datagram keeps it fresh when the connection is otherwise idle), and the
//! peer's coordinate on every pong, fed to the RTT table (`core::rtt`).

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
use crate::registry::Registry;
use crate::transport::Transport;

/// How often each peer is sampled.
const SAMPLE_EVERY: Duration = Duration::from_secs(1);
/// Largest ping datagram accepted.
pub const MAX_PING: usize = 512;
/// Sampling ticks between checks of whether to republish the coordinate.
const REPUBLISH_CHECK_TICKS: u64 = 30;

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

    /// Drops what we know of a departed peer.
    pub fn forget(&self, node: &NodeId) {
        self.lock().forget(node);
    }

    /// This node's coordinate.
    pub fn coordinate(&self) -> Coordinate {
        self.lock().coordinate().clone()
    }

    /// True (once) when our coordinate moved enough to republish it.
    fn coordinate_moved(&self) -> bool {
        self.lock().coordinate_moved()
    }
}

/// What the sampling task uses.
pub struct RttSampler {
    /// The table it fills.
    pub rtt: Arc<RttTable>,
    /// Connections to sample.
    pub transport: Arc<Transport>,
    /// Who to sample.
    pub members: watch::Receiver<ActiveMembers>,
    /// Where a moved coordinate is republished.
    pub registry: Arc<Registry>,
}

/// Samples every active peer each second and answers pings.
pub async fn run(
    sampler: RttSampler,
    mut datagrams: mpsc::Receiver<(DatagramKind, Bytes, Connection)>,
) {
    let sampler = &sampler;
    let mut tick = tokio::time::interval(SAMPLE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut seq = 0u64;
    let mut ticks = 0u64;
    loop {
        tokio::select! {
            _ = tick.tick() => {
                seq += 1;
                ticks += 1;
                sample_all(sampler, seq);
                if ticks.is_multiple_of(REPUBLISH_CHECK_TICKS) && sampler.rtt.coordinate_moved() {
                    sampler.registry.publish_node_meta(sampler.rtt.coordinate()).await;
                }
            }
            Some((kind, body, connection)) = datagrams.recv() => {
                handle_datagram(sampler, kind, &body, &connection);
            }
        }
    }
}

fn sample_all(sampler: &RttSampler, seq: u64) {
    let members = sampler.members.borrow().clone();
    for (node, identity) in members.iter() {
        // Dial in the background: a dead peer must not hold up the others.
        let Some(connection) = sampler.transport.cached(identity.addr) else {
            let transport = sampler.transport.clone();
            let addr = identity.addr;
            tokio::spawn(async move {
                let _ = transport.connection(addr).await;
            });
            continue;
        };
        // quinn's estimate includes the handshake's round trip, so it is a
        // real measurement from the first moment the connection exists.
        sampler.rtt.observe(node, connection.rtt());
        send_ping(&connection, DatagramKind::Ping, seq, None);
    }
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

fn handle_datagram(sampler: &RttSampler, kind: DatagramKind, body: &[u8], connection: &Connection) {
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
            let peer = connection.remote_address();
            let members = sampler.members.borrow().clone();
            if let Some((node, _)) = members.iter().find(|(_, m)| m.addr == peer) {
                sampler
                    .rtt
                    .observe_coordinate(node, &coordinate, connection.rtt());
            }
        }
        DatagramKind::Swim => {}
    }
}

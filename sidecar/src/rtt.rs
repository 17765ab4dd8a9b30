//! RTT to every peer: sampled from the QUIC connection's own estimate once a
//! second (a ping datagram keeps that estimate fresh when the connection is
//! otherwise idle), smoothed with an EWMA; plus this node's Vivaldi
//! coordinate, moved by every sample, for estimates to peers never measured.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use mesh_proto::api::RttSource;
use mesh_proto::codec;
use mesh_proto::coordinate::{Coordinate, Vivaldi, VivaldiConfig};
use mesh_proto::gossip::{DatagramKind, Ping};
use mesh_proto::NodeId;
use quinn::Connection;
use tokio::sync::{mpsc, watch};
use tracing::debug;

use crate::membership::ActiveMembers;
use crate::metrics;
use crate::registry::Registry;
use crate::transport::Transport;

/// Weight of a new sample in the smoothed RTT.
const EWMA_ALPHA: f64 = 0.3;
/// How often each peer is sampled.
const SAMPLE_EVERY: Duration = Duration::from_secs(1);
/// Largest ping datagram accepted.
const MAX_PING: usize = 512;
/// Republish our coordinate in node metadata when it moved this much.
/// Peers we ping get our live coordinate on every pong; the broadcast only
/// serves peers that never measured us, which an estimate a few ms and a
/// few tens of seconds old serves well. Every republish is a catalog record
/// gossiped to every node: on a loaded machine RTT jitter moved coordinates
/// by 2 ms constantly, which was most of the gossip at rest (bench/).
const COORDINATE_REPUBLISH: Duration = Duration::from_millis(5);
/// Sampling ticks between checks of whether to republish the coordinate.
const REPUBLISH_CHECK_TICKS: u64 = 30;

#[derive(Debug, Clone, Copy)]
struct Measured {
    smoothed_ms: f64,
    updated: Instant,
}

struct Inner {
    measured: HashMap<NodeId, Measured>,
    coordinates: HashMap<NodeId, Coordinate>,
    vivaldi: Vivaldi,
    published: Coordinate,
}

/// RTT by peer, measured or estimated.
pub struct RttTable {
    local: NodeId,
    allow_estimated: bool,
    inner: Mutex<Inner>,
}

impl RttTable {
    /// An empty table for `local`.
    pub fn new(local: NodeId, allow_estimated: bool) -> Arc<Self> {
        let vivaldi = Vivaldi::new(VivaldiConfig::default());
        let published = vivaldi.coordinate().clone();
        Arc::new(Self {
            local,
            allow_estimated,
            inner: Mutex::new(Inner {
                measured: HashMap::new(),
                coordinates: HashMap::new(),
                vivaldi,
                published,
            }),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether estimated RTT may satisfy hard requirements.
    pub fn allow_estimated(&self) -> bool {
        self.allow_estimated
    }

    /// RTT to `node` in ms and where it came from; this node is 0 ms,
    /// measured. `published` is the coordinate the node published in the
    /// catalog, used when no pong carried a fresher one.
    pub fn get(&self, node: &NodeId, published: Option<&Coordinate>) -> (Option<f64>, RttSource) {
        if *node == self.local {
            return (Some(0.0), RttSource::Measured);
        }
        let inner = self.lock();
        if let Some(m) = inner.measured.get(node) {
            return (Some(m.smoothed_ms), RttSource::Measured);
        }
        let published = published.filter(|c| c.is_valid());
        match inner.coordinates.get(node).or(published) {
            Some(theirs) => {
                let estimate = inner.vivaldi.coordinate().distance_to(theirs);
                (Some(estimate.as_secs_f64() * 1000.0), RttSource::Estimated)
            }
            None => (None, RttSource::Unknown),
        }
    }

    /// Folds in one RTT sample to `node`.
    pub fn observe(&self, node: &NodeId, rtt: Duration) {
        let ms = rtt.as_secs_f64() * 1000.0;
        let mut inner = self.lock();
        let now = Instant::now();
        let entry = inner.measured.entry(node.clone()).or_insert(Measured {
            smoothed_ms: ms,
            updated: now,
        });
        entry.smoothed_ms += EWMA_ALPHA * (ms - entry.smoothed_ms);
        entry.updated = now;
        let smoothed = entry.smoothed_ms;
        drop(inner);
        ::metrics::gauge!(metrics::PEER_RTT, "peer" => node.to_string()).set(smoothed / 1000.0);
    }

    /// Moves our coordinate by one sample against a peer's coordinate.
    pub fn observe_coordinate(&self, node: &NodeId, coordinate: &Coordinate, rtt: Duration) {
        let mut inner = self.lock();
        inner.coordinates.insert(node.clone(), coordinate.clone());
        if let Err(e) = inner.vivaldi.update(node.as_str(), coordinate, rtt) {
            debug!(peer = %node, error = %e, "coordinate update skipped");
        }
    }

    /// Drops what we know of a departed peer.
    pub fn forget(&self, node: &NodeId) {
        let mut inner = self.lock();
        inner.measured.remove(node);
        inner.coordinates.remove(node);
        inner.vivaldi.forget(node.as_str());
    }

    /// This node's coordinate.
    pub fn coordinate(&self) -> Coordinate {
        self.lock().vivaldi.coordinate().clone()
    }

    /// True (once) when our coordinate moved enough to republish it.
    fn coordinate_moved(&self) -> bool {
        let mut inner = self.lock();
        let current = inner.vivaldi.coordinate().clone();
        if current.distance_to(&inner.published) > COORDINATE_REPUBLISH {
            inner.published = current;
            true
        } else {
            false
        }
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

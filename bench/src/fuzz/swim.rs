//! A whole SWIM packet as the agent takes it: the membership core
//! (`sidecar::core::membership::SwimCore`, foca inside) with the agent's
//! foca configuration, and a custom-broadcast handler that decodes catalog
//! broadcasts as the agent's does. One input is one packet; the core keeps
//! its state between packets (members learnt, broadcasts queued) and starts
//! afresh every [`PACKETS_PER_CORE`] packets, so its tables stay small.
//!
//! There is no round trip here (a packet is not one value); the check is
//! that nothing panics and the heap stays within the bound.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use foca::{AccumulatingRuntime, BroadcastHandler, Codec, Message, PostcardCodec};
use mesh_proto::codec;
use mesh_proto::gossip::{CatalogBroadcast, MAX_SWIM_PACKET};
use mesh_proto::{NodeId, NodeIdentity};
use rand::rngs::SmallRng;
use rand::{RngExt, SeedableRng};
use sidecar::config::Profile;
use sidecar::core::membership::SwimCore;
use sidecar::membership::{foca_config, BroadcastKey, BroadcastRejected};

use super::targets::Outcome;
use super::values;
use super::HeapMeter;

/// Packets one core takes before a fresh one replaces it.
const PACKETS_PER_CORE: u32 = 1024;

/// Decodes catalog broadcasts as the agent's handler does (the agent then
/// merges them; every one counts as new here, so foca queues it).
struct Handler;

impl BroadcastHandler<NodeIdentity> for Handler {
    type Key = BroadcastKey;
    type Error = BroadcastRejected;

    fn receive_item(
        &mut self,
        data: &[u8],
        _sender: Option<&NodeIdentity>,
    ) -> Result<Option<BroadcastKey>, BroadcastRejected> {
        let broadcast: CatalogBroadcast =
            codec::decode(data, MAX_SWIM_PACKET).map_err(|e| BroadcastRejected(e.to_string()))?;
        Ok(Some(BroadcastKey {
            key: broadcast.record.key,
            version: broadcast.record.version,
        }))
    }
}

/// The node receiving the packets; valid packets are addressed to it.
fn local() -> NodeIdentity {
    NodeIdentity {
        node_id: NodeId::new("fuzz-local").unwrap_or_else(|_| unreachable!("a valid id")),
        addr: SocketAddr::from(([127, 0, 0, 1], 4300)),
        generation: 1,
    }
}

struct Receiver {
    core: SwimCore<NodeIdentity, Handler, SmallRng>,
    started: Instant,
    packets: u32,
}

impl Receiver {
    fn new() -> Self {
        let started = Instant::now();
        Self {
            core: SwimCore::new(
                local(),
                Arc::new(|size| foca_config(Profile::Lan, size)),
                SmallRng::seed_from_u64(1),
                Handler,
                started,
            ),
            started,
            packets: 0,
        }
    }
}

thread_local! {
    static RECEIVER: RefCell<Option<Receiver>> = const { RefCell::new(None) };
}

/// Hands one packet to the core: `Decoded` when it took it, `Rejected`
/// when it refused it.
pub fn check(packet: &[u8], meter: &dyn HeapMeter) -> (Outcome, usize) {
    RECEIVER.with(|slot| {
        let mut slot = slot.borrow_mut();
        if slot.as_ref().is_none_or(|r| r.packets >= PACKETS_PER_CORE) {
            *slot = Some(Receiver::new());
        }
        let Some(receiver) = slot.as_mut() else {
            unreachable!("filled above")
        };
        receiver.packets += 1;
        // Time moves 1 ms per packet, so foca's timers come due now and then.
        let now = receiver.started + Duration::from_millis(u64::from(receiver.packets));
        let mut runtime = AccumulatingRuntime::new();
        let (result, heap) = meter.measure(|| receiver.core.handle_data(packet, now, &mut runtime));
        let outcome = match result {
            Ok(()) => Outcome::Decoded,
            Err(e) => Outcome::Rejected {
                deep: !matches!(e, foca::Error::DataTooBig),
            },
        };
        (outcome, heap)
    })
}

/// A valid packet addressed to the receiver: a header, then member updates
/// or catalog broadcasts, each behind foca's big-endian u16 count or length.
pub fn valid(rng: &mut SmallRng) -> Vec<u8> {
    let mut header = values::header(rng);
    if rng.random_bool(0.9) {
        header.dst = local();
    }
    let mut packet = Vec::new();
    let _ = PostcardCodec.encode_header(&header, &mut packet);
    match header.message {
        Message::Announce => {}
        Message::Broadcast => broadcasts(rng, &mut packet),
        _ => {
            let n = rng.random_range(0..4u16);
            packet.extend_from_slice(&n.to_be_bytes());
            for _ in 0..n {
                let _ = PostcardCodec.encode_member(&values::member(rng), &mut packet);
            }
            if rng.random_bool(0.3) {
                broadcasts(rng, &mut packet);
            }
        }
    }
    packet
}

fn broadcasts(rng: &mut SmallRng, packet: &mut Vec<u8>) {
    for _ in 0..rng.random_range(1..=2) {
        let item = codec::encode(&values::broadcast(rng)).unwrap_or_default();
        if let Ok(len) = u16::try_from(item.len()) {
            packet.extend_from_slice(&len.to_be_bytes());
            packet.extend_from_slice(&item);
        }
    }
}

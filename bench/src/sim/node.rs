//! One simulated node: the agent's own membership core
//! (`sidecar::core::membership::SwimCore`: foca, ordered timers, suspicion
//! watchdog, resizing) with a compact identity, and the agent's catalog core
//! (`sidecar::core::catalog::CatalogCore`) behind its custom broadcasts.
//!
//! The identity is an index and a generation, so foca's member table stays
//! small enough for 10,000 nodes each knowing 10,000 members. On the wire it
//! is padded to the size of the agent's `NodeIdentity`, so packets hold as
//! many updates as the agent's do and the byte counts are comparable.

use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use std::time::Instant;

use foca::BroadcastHandler;
use mesh_proto::catalog::{Applied, Catalog};
use mesh_proto::codec;
use mesh_proto::gossip::{CatalogBroadcast, MAX_SWIM_PACKET};
use mesh_proto::{NodeId, NodeIdentity};
use rand::rngs::SmallRng;
use serde::de::{self, SeqAccess, Visitor};
use serde::ser::SerializeTuple;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sidecar::core::catalog::CatalogCore;
use sidecar::core::membership::{ConfigFor, SwimCore};
use sidecar::membership::{BroadcastKey, BroadcastRejected};

/// A simulated node's identity: its index and its generation (bumped when
/// foca renews it after being declared down).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SimId {
    /// Index of the node in the simulation.
    pub index: u32,
    /// Restart count, as the agent's generation.
    pub generation: u16,
}

impl foca::Identity for SimId {
    type Addr = u32;

    fn renew(&self) -> Option<Self> {
        Some(Self {
            generation: self.generation.wrapping_add(1),
            ..*self
        })
    }

    fn addr(&self) -> u32 {
        self.index
    }

    fn win_addr_conflict(&self, adversary: &Self) -> bool {
        self.generation > adversary.generation
    }
}

/// Bytes of index and generation on the wire, before padding.
const ID_BYTES: usize = 6;

/// Encoded size of a typical agent identity (10-character node id, IPv4
/// address, millisecond generation), measured with the agent's codec.
pub fn agent_identity_wire_bytes() -> usize {
    static SIZE: OnceLock<usize> = OnceLock::new();
    *SIZE.get_or_init(|| {
        let sample = NodeId::new("node-04242").map(|node_id| NodeIdentity {
            node_id,
            addr: std::net::SocketAddr::from(([10, 0, 16, 42], 4300)),
            generation: 1_760_000_000_000,
        });
        sample
            .ok()
            .and_then(|id| codec::encode(&id).ok())
            // Less the wire version byte: foca encodes identities with bare postcard.
            .map_or(24, |bytes| bytes.len().saturating_sub(1))
    })
}

fn padding() -> usize {
    agent_identity_wire_bytes().saturating_sub(ID_BYTES)
}

impl Serialize for SimId {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let pad = padding();
        let mut tuple = serializer.serialize_tuple(ID_BYTES + pad)?;
        for byte in self
            .index
            .to_le_bytes()
            .into_iter()
            .chain(self.generation.to_le_bytes())
        {
            tuple.serialize_element(&byte)?;
        }
        for _ in 0..pad {
            tuple.serialize_element(&0u8)?;
        }
        tuple.end()
    }
}

impl<'de> Deserialize<'de> for SimId {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct IdVisitor;
        impl<'de> Visitor<'de> for IdVisitor {
            type Value = SimId;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a padded simulated identity")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<SimId, A::Error> {
                let mut bytes = [0u8; ID_BYTES];
                for (i, slot) in bytes.iter_mut().enumerate() {
                    *slot = seq
                        .next_element()?
                        .ok_or_else(|| de::Error::invalid_length(i, &self))?;
                }
                for i in 0..padding() {
                    seq.next_element::<u8>()?
                        .ok_or_else(|| de::Error::invalid_length(ID_BYTES + i, &self))?;
                }
                Ok(SimId {
                    index: u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]),
                    generation: u16::from_le_bytes([bytes[4], bytes[5]]),
                })
            }
        }
        deserializer.deserialize_tuple(ID_BYTES + padding(), IdVisitor)
    }
}

/// A node's catalog core, shared between its broadcast handler (inside
/// foca) and the simulator's anti-entropy.
#[derive(Clone)]
pub struct SharedCatalog(Arc<Mutex<CatalogCore>>);

impl SharedCatalog {
    /// An empty catalog for simulated node `index`.
    pub fn new(index: u32) -> anyhow::Result<Self> {
        let node = NodeId::new(format!("node-{index:05}"))
            .map_err(|e| anyhow::anyhow!("simulated node id: {e}"))?;
        Ok(Self(Arc::new(Mutex::new(CatalogCore::new(
            node,
            Catalog::new(),
        )))))
    }

    /// Locks the catalog (the simulation is single-threaded once running).
    pub fn lock(&self) -> MutexGuard<'_, CatalogCore> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// foca's custom-broadcast handler: decodes a catalog broadcast and merges
/// it, answering `None` for stale records so foca stops re-sending them.
pub struct CatalogHandler {
    catalog: SharedCatalog,
}

impl BroadcastHandler<SimId> for CatalogHandler {
    type Key = BroadcastKey;
    type Error = BroadcastRejected;

    fn receive_item(
        &mut self,
        data: &[u8],
        _sender: Option<&SimId>,
    ) -> Result<Option<BroadcastKey>, BroadcastRejected> {
        let broadcast: CatalogBroadcast =
            codec::decode(data, MAX_SWIM_PACKET).map_err(|e| BroadcastRejected(e.to_string()))?;
        let key = BroadcastKey {
            key: broadcast.record.key.clone(),
            version: broadcast.record.version.clone(),
        };
        match self.catalog.lock().apply_remote(broadcast.record) {
            Ok(Applied::Newer) => Ok(Some(key)),
            Ok(Applied::Stale) => Ok(None),
            Err(refused) => Err(BroadcastRejected(refused.to_string())),
        }
    }
}

/// The membership core every simulated node runs.
pub type SimCore = SwimCore<SimId, CatalogHandler, SmallRng>;

/// One simulated node.
pub struct SimNode {
    /// Its membership core.
    pub core: SimCore,
    /// Its catalog.
    pub catalog: SharedCatalog,
    /// False once crashed: it neither receives nor fires timers.
    pub running: bool,
    /// The time of the wake event queued for its core, if any.
    pub wake_at: Option<u64>,
}

impl SimNode {
    /// A node that knows nobody yet, its clock starting at `now`.
    pub fn new(
        id: SimId,
        config_for: ConfigFor,
        rng: SmallRng,
        now: Instant,
        lifeguard: bool,
    ) -> anyhow::Result<Self> {
        let catalog = SharedCatalog::new(id.index)?;
        let mut core = SwimCore::new(
            id,
            config_for,
            rng,
            CatalogHandler {
                catalog: catalog.clone(),
            },
            now,
        );
        core.set_lifeguard(lifeguard.then(sidecar::core::membership::Lifeguard::default));
        Ok(Self {
            core,
            catalog,
            running: true,
            wake_at: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use foca::Identity;

    #[test]
    fn identities_round_trip_at_the_agent_size() {
        let id = SimId {
            index: 9_999,
            generation: 3,
        };
        let bytes = codec::encode(&id).expect("encodes");
        // Less the version byte the agent's codec adds.
        assert_eq!(bytes.len() - 1, agent_identity_wire_bytes());
        let back: SimId = codec::decode(&bytes, 64).expect("decodes");
        assert_eq!(back, id);
        assert!(id.renew().expect("renews").win_addr_conflict(&id));
    }
}

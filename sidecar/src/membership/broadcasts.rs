//! Catalog items riding on SWIM packets: how foca's queue tells a newer
//! item from the one it replaces, and who applies what arrives.

use std::sync::Arc;

use foca::{BroadcastHandler, Invalidates};
use mesh_proto::catalog::RecordKey;
use mesh_proto::{NodeIdentity, Version};

/// What identifies a catalog broadcast for replacement in foca's queue.
#[derive(Debug, Clone)]
pub struct BroadcastKey {
    /// Record the broadcast carries.
    pub key: RecordKey,
    /// Its version.
    pub version: Version,
}

impl Invalidates for BroadcastKey {
    fn invalidates(&self, other: &Self) -> bool {
        self.key == other.key && self.version >= other.version
    }
}

/// A broadcast item the receiver refused (undecodable or invalid).
#[derive(Debug, thiserror::Error)]
#[error("rejected broadcast: {0}")]
pub struct BroadcastRejected(pub String);

/// The consumer of custom broadcasts (the catalog).
pub trait BroadcastReceiver: Send + Sync + 'static {
    /// Applies an item; `Some` when it was new to us and must spread further,
    /// `None` when stale (foca would otherwise re-send it forever).
    fn receive(&self, data: &[u8]) -> Result<Option<BroadcastKey>, BroadcastRejected>;

    /// An item of our own being queued (`Membership::broadcast`). The writer
    /// has already applied it, so `receive` would call it stale and foca
    /// would drop it; this must return its key for it to be gossiped.
    fn receive_own(&self, data: &[u8]) -> Result<Option<BroadcastKey>, BroadcastRejected> {
        self.receive(data)
    }
}

pub(super) struct Handler(pub(super) Arc<dyn BroadcastReceiver>);

impl BroadcastHandler<NodeIdentity> for Handler {
    type Key = BroadcastKey;
    type Error = BroadcastRejected;

    fn receive_item(
        &mut self,
        data: &[u8],
        sender: Option<&NodeIdentity>,
    ) -> Result<Option<BroadcastKey>, BroadcastRejected> {
        // foca passes no sender only from `add_broadcast`: our own item.
        match sender {
            None => self.0.receive_own(data),
            Some(_) => self.0.receive(data),
        }
    }
}

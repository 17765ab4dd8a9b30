//! The agent's catalog store: the merged catalog behind a lock, its hybrid
//! logical clock, and the index that blocking queries wait on.
//!
//! Writes made here are stamped with this node's clock and returned so the
//! caller can gossip them; records from peers are checked (an instance may
//! only be written by its own node) and merged with the pure rule from
//! `mesh-proto`.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use mesh_proto::catalog::{Applied, Catalog, Record, RecordBody, RecordKey};
use mesh_proto::codec;
use mesh_proto::gossip::{CatalogBroadcast, MAX_SWIM_PACKET};
use mesh_proto::{HlcClock, NodeId, Version};
use tokio::sync::watch;

use crate::membership::{BroadcastKey, BroadcastReceiver, BroadcastRejected};
use crate::metrics;

struct Inner {
    catalog: Catalog,
    clock: HlcClock,
}

/// The catalog as this agent knows it.
pub struct CatalogStore {
    node_id: NodeId,
    inner: Mutex<Inner>,
    index: watch::Sender<u64>,
}

/// Wall-clock milliseconds since the Unix epoch.
pub fn wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl CatalogStore {
    /// A store for `node_id`, starting from `catalog` (a snapshot, or empty).
    pub fn new(node_id: NodeId, catalog: Catalog) -> Arc<Self> {
        let mut clock = HlcClock::default();
        for record in catalog.records() {
            clock.observe(record.version.hlc);
        }
        let store = Arc::new(Self {
            node_id,
            inner: Mutex::new(Inner { catalog, clock }),
            index: watch::channel(1).0,
        });
        store.publish_gauges(&store.lock());
        store
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // The catalog is only mutated through `apply`, which cannot leave it
        // half-written, so a poisoned lock still guards valid data.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// This node's id.
    pub fn node_id(&self) -> &NodeId {
        &self.node_id
    }

    /// Writes `body` under `key` as this node, returning the stamped record.
    pub fn write(&self, key: RecordKey, body: RecordBody) -> Record {
        let mut inner = self.lock();
        let hlc = inner.clock.tick(wall_ms());
        let record = Record {
            key,
            version: Version {
                hlc,
                writer: self.node_id.clone(),
            },
            body,
        };
        inner.catalog.apply(record.clone());
        self.changed(&inner);
        record
    }

    /// Merges a record from a peer; returns whether it was new.
    pub fn apply_remote(&self, record: Record) -> Result<Applied, String> {
        let mut inner = self.lock();
        check_ownership(&inner.catalog, &record)?;
        inner.clock.observe(record.version.hlc);
        let applied = inner.catalog.apply(record);
        if applied == Applied::Newer {
            self.changed(&inner);
        }
        Ok(applied)
    }

    /// Runs `f` on the current catalog.
    pub fn read<T>(&self, f: impl FnOnce(&Catalog) -> T) -> T {
        f(&self.lock().catalog)
    }

    /// Current index: grows on every change the agent observes.
    pub fn index(&self) -> u64 {
        *self.index.borrow()
    }

    /// Subscribes to index changes (blocking queries).
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.index.subscribe()
    }

    /// Bumps the index without a catalog change (membership changed what
    /// the catalog shows, for example a node went down).
    pub fn touch(&self) {
        self.index.send_modify(|i| *i += 1);
        metrics::index(self.index());
    }

    /// Drops tombstones older than `ttl_ms`.
    pub fn expire_tombstones(&self, ttl_ms: u64) -> usize {
        let mut inner = self.lock();
        let removed = inner.catalog.expire_tombstones(wall_ms(), ttl_ms);
        if removed > 0 {
            self.changed(&inner);
        }
        removed
    }

    fn changed(&self, inner: &Inner) {
        self.index.send_modify(|i| *i += 1);
        self.publish_gauges(inner);
    }

    fn publish_gauges(&self, inner: &Inner) {
        let mut counts = [0usize; 4];
        for record in inner.catalog.records() {
            let slot = match (&record.body, &record.key) {
                (RecordBody::Tombstone, _) => 3,
                (_, RecordKey::Definition(_)) => 0,
                (_, RecordKey::Instance(_)) => 1,
                (_, RecordKey::Node(_)) => 2,
            };
            counts[slot] += 1;
        }
        for (kind, n) in ["definition", "instance", "node", "tombstone"]
            .iter()
            .zip(counts)
        {
            ::metrics::gauge!(metrics::CATALOG_RECORDS, "kind" => *kind).set(n as f64);
        }
        metrics::index(self.index());
    }
}

/// Instances and node metadata may only be written by the node they describe.
fn check_ownership(catalog: &Catalog, record: &Record) -> Result<(), String> {
    let writer = &record.version.writer;
    let owner = match &record.body {
        RecordBody::Instance(instance) => Some(&instance.node),
        RecordBody::Node(meta) => Some(&meta.node),
        RecordBody::Definition(_) => None,
        RecordBody::Tombstone => match catalog.get(&record.key).map(|r| &r.body) {
            Some(RecordBody::Instance(instance)) => Some(&instance.node),
            Some(RecordBody::Node(meta)) => Some(&meta.node),
            _ => None,
        },
    };
    match owner {
        Some(owner) if owner != writer => Err(format!(
            "{} {:?} written by {writer}, but only {owner} may write it",
            record.key.kind(),
            record.key
        )),
        _ => Ok(()),
    }
}

/// Encodes a record as a gossip broadcast, or None when it is too large to
/// ride on SWIM (anti-entropy carries those).
pub fn encode_broadcast(record: &Record) -> Option<Vec<u8>> {
    let bytes = codec::encode(&CatalogBroadcast {
        record: record.clone(),
    })
    .ok()?;
    // Leave room for foca's header and membership updates in the packet.
    (bytes.len() <= MAX_SWIM_PACKET / 2).then_some(bytes)
}

fn decode_broadcast(data: &[u8]) -> Result<(CatalogBroadcast, BroadcastKey), BroadcastRejected> {
    let broadcast: CatalogBroadcast = codec::decode(data, MAX_SWIM_PACKET).map_err(|e| {
        metrics::decode_error();
        BroadcastRejected(e.to_string())
    })?;
    let key = BroadcastKey {
        key: broadcast.record.key.clone(),
        version: broadcast.record.version.clone(),
    };
    Ok((broadcast, key))
}

impl BroadcastReceiver for CatalogStore {
    fn receive_own(&self, data: &[u8]) -> Result<Option<BroadcastKey>, BroadcastRejected> {
        // `write` applied it already; it only needs to go out.
        decode_broadcast(data).map(|(_, key)| Some(key))
    }

    fn receive(&self, data: &[u8]) -> Result<Option<BroadcastKey>, BroadcastRejected> {
        let (broadcast, key) = decode_broadcast(data)?;
        match self.apply_remote(broadcast.record) {
            Ok(Applied::Newer) => Ok(Some(key)),
            Ok(Applied::Stale) => Ok(None),
            Err(reason) => Err(BroadcastRejected(reason)),
        }
    }
}

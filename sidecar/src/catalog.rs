//! The catalog service: owns the [`CatalogCore`] and publishes its
//! snapshots.
//!
//! Writers (this node's registry, gossip, anti-entropy) take the core's
//! lock for an in-memory merge only, never across I/O. Readers (the proxy,
//! the admin API, DNS) never take it: they clone the `Arc` of the latest
//! [`CatalogSnapshot`] from a watch channel, which also wakes blocking
//! queries.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use mesh_proto::catalog::{Applied, Catalog, DigestSummary, Record, RecordBody, RecordKey};
use mesh_proto::codec;
use mesh_proto::gossip::{CatalogBroadcast, SyncMessage, MAX_SWIM_PACKET};
use mesh_proto::NodeId;
use tokio::sync::watch;

use crate::core::anti_entropy;
use crate::core::catalog::{CatalogCore, RecordCounts};
pub use crate::core::catalog::{CatalogSnapshot, OwnershipError, ServiceEntry};
use crate::membership::{BroadcastKey, BroadcastReceiver, BroadcastRejected};
use crate::metrics;

/// The catalog as this agent knows it.
pub struct CatalogStore {
    node_id: NodeId,
    core: Mutex<CatalogCore>,
    published: watch::Sender<Arc<CatalogSnapshot>>,
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
        let core = CatalogCore::new(node_id.clone(), catalog);
        let (published, _) = watch::channel(core.snapshot());
        publish_gauges(core.counts(), core.index());
        Arc::new(Self {
            node_id,
            core: Mutex::new(core),
            published,
        })
    }

    fn lock(&self) -> MutexGuard<'_, CatalogCore> {
        // The core changes only through methods that leave it whole, so a
        // poisoned lock still guards valid data.
        self.core.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// This node's id.
    pub fn node_id(&self) -> &NodeId {
        &self.node_id
    }

    /// The latest snapshot; never blocks on a writer.
    pub fn snapshot(&self) -> Arc<CatalogSnapshot> {
        self.published.borrow().clone()
    }

    /// Writes `body` under `key` as this node, returning the stamped record.
    pub fn write(&self, key: RecordKey, body: RecordBody) -> Record {
        self.change(|core| core.write(key, body, wall_ms()))
    }

    /// Merges a record from a peer.
    pub fn apply_remote(&self, record: Record) -> Result<Applied, OwnershipError> {
        self.change(|core| core.apply_remote(record))
    }

    /// Runs `f` on the merged catalog (anti-entropy digests and selections).
    /// In-memory only: never call I/O inside.
    pub fn read<T>(&self, f: impl FnOnce(&Catalog) -> T) -> T {
        f(self.lock().catalog())
    }

    /// What an anti-entropy round compares first.
    pub fn summary(&self) -> DigestSummary {
        self.lock().catalog().summary()
    }

    /// The message that opens an anti-entropy round (our digest).
    pub fn open_exchange(&self) -> SyncMessage {
        anti_entropy::open(&self.lock())
    }

    /// One step of an anti-entropy round: merges what `message` carries and
    /// returns what to answer.
    pub fn exchange(&self, message: SyncMessage) -> anti_entropy::Step {
        self.change(|core| anti_entropy::step(core, message))
    }

    /// Every record, copied out for a persisted snapshot, with the summary
    /// of what they are (which tells whether a later snapshot has anything
    /// new to save).
    pub fn records(&self) -> (DigestSummary, Vec<Record>) {
        let core = self.lock();
        (core.catalog().summary(), core.records())
    }

    /// Current index: grows on every change the agent observes.
    pub fn index(&self) -> u64 {
        self.published.borrow().index
    }

    /// Subscribes to new snapshots (blocking queries).
    pub fn subscribe(&self) -> watch::Receiver<Arc<CatalogSnapshot>> {
        self.published.subscribe()
    }

    /// Bumps the index without a catalog change (membership changed what
    /// the catalog shows, for example a node went down).
    pub fn touch(&self) {
        self.change(CatalogCore::touch);
    }

    /// Drops tombstones older than `ttl_ms`.
    pub fn expire_tombstones(&self, ttl_ms: u64) -> usize {
        self.change(|core| core.expire_tombstones(wall_ms(), ttl_ms))
    }

    /// Drops the records `owner` owns (down longer than the reap time).
    pub fn reap(&self, owner: &NodeId) -> usize {
        self.change(|core| core.reap(owner))
    }

    /// Takes a reaped owner's records back (it is active again).
    pub fn unreap(&self, owner: &NodeId) {
        self.change(|core| core.unreap(owner));
    }

    /// Runs one change on the core and publishes the snapshot it left.
    fn change<T>(&self, f: impl FnOnce(&mut CatalogCore) -> T) -> T {
        let mut core = self.lock();
        let before = core.index();
        let result = f(&mut core);
        if core.index() != before {
            let snapshot = core.snapshot();
            let counts = core.counts();
            // Published under the core's lock so snapshots never go back in
            // index; the watch swap is a pointer store.
            self.published.send_replace(snapshot);
            drop(core);
            publish_gauges(counts, self.index());
        }
        result
    }
}

fn publish_gauges(counts: RecordCounts, index: u64) {
    for (kind, n) in [
        ("definition", counts.definitions),
        ("instance", counts.instances),
        ("node", counts.nodes),
        ("tombstone", counts.tombstones),
    ] {
        ::metrics::gauge!(metrics::CATALOG_RECORDS, "kind" => kind).set(n as f64);
    }
    metrics::index(index);
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
            Err(reason) => Err(BroadcastRejected(reason.to_string())),
        }
    }
}

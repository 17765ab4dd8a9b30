//! The catalog core: the merged catalog, its hybrid logical clock, the
//! ownership rule, and the immutable snapshot readers use.
//!
//! No I/O and no clock reads: every write takes the wall time from its
//! caller. After each change the core rebuilds only what the change touched
//! (one service's entry, the node map, or this node's instances) and hands
//! out a new [`CatalogSnapshot`], so a reader of one service does no work
//! proportional to the whole catalog.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use mesh_proto::catalog::{Applied, Catalog, Definition, Instance, NodeMeta, Record, RecordBody};
use mesh_proto::catalog::{Digest, RecordKey};
use mesh_proto::{HlcClock, NodeId, Version};

/// A record from a peer that its writer was not allowed to write.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind} {key:?} written by {writer}, but only {owner} may write it")]
pub struct OwnershipError {
    /// Record kind (`instance`, `node`).
    pub kind: &'static str,
    /// The record's key, for the log.
    pub key: RecordKey,
    /// Who wrote it.
    pub writer: NodeId,
    /// Who owns it.
    pub owner: NodeId,
}

/// One service as a reader sees it: its definition and its instances.
#[derive(Debug, Clone, Default)]
pub struct ServiceEntry {
    /// The definition, when one was written.
    pub definition: Option<Definition>,
    /// Every instance of the service, whatever its node's state.
    pub instances: Vec<Instance>,
    /// Catalog index of this entry's last change (per-resource blocking queries).
    pub index: u64,
}

/// An immutable view of the catalog at one index.
#[derive(Debug, Clone, Default)]
pub struct CatalogSnapshot {
    /// The catalog index this view was taken at.
    pub index: u64,
    services: Arc<BTreeMap<String, Arc<ServiceEntry>>>,
    nodes: Arc<BTreeMap<NodeId, NodeMeta>>,
    local: Arc<HashMap<String, Instance>>,
}

impl CatalogSnapshot {
    /// One service, or None when neither a definition nor an instance names it.
    pub fn service(&self, name: &str) -> Option<&Arc<ServiceEntry>> {
        self.services.get(name)
    }

    /// Every service, by name.
    pub fn services(&self) -> impl Iterator<Item = (&String, &Arc<ServiceEntry>)> {
        self.services.iter()
    }

    /// A service's definition.
    pub fn definition(&self, name: &str) -> Option<&Definition> {
        self.service(name).and_then(|s| s.definition.as_ref())
    }

    /// The protocol a service's instances speak: its definition's, else
    /// plain HTTP/1.1 (an instance registered without a definition).
    pub fn protocol(&self, name: &str) -> mesh_proto::Protocol {
        self.definition(name)
            .map(|d| d.protocol)
            .unwrap_or_default()
    }

    /// Metadata of every node that published it.
    pub fn nodes(&self) -> &BTreeMap<NodeId, NodeMeta> {
        &self.nodes
    }

    /// Metadata of one node.
    pub fn node(&self, id: &NodeId) -> Option<&NodeMeta> {
        self.nodes.get(id)
    }

    /// One of this node's own instances, by id.
    pub fn local_instance(&self, id: &str) -> Option<&Instance> {
        self.local.get(id)
    }

    /// This node's own instances.
    pub fn local_instances(&self) -> impl Iterator<Item = &Instance> {
        self.local.values()
    }
}

/// Record counts by kind, for the catalog gauges.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RecordCounts {
    /// Live definitions.
    pub definitions: usize,
    /// Live instances.
    pub instances: usize,
    /// Live node records.
    pub nodes: usize,
    /// Tombstones kept.
    pub tombstones: usize,
}

/// What applied records changed, so one snapshot covers a whole batch.
#[derive(Debug, Default)]
struct Touched {
    any: bool,
    services: Vec<String>,
    nodes: bool,
    local: bool,
}

/// The catalog as this node knows it, and the single place it changes.
pub struct CatalogCore {
    node_id: NodeId,
    catalog: Catalog,
    clock: HlcClock,
    index: u64,
    /// Instance ids by service, so a change rebuilds one service only.
    by_service: HashMap<String, BTreeSet<String>>,
    counts: RecordCounts,
    snapshot: Arc<CatalogSnapshot>,
    /// Records of nodes reaped (down longer than the reap time), by owner:
    /// copies a peer still holds, at or below these versions, are ignored
    /// until the owner is back.
    reaped: HashMap<NodeId, HashMap<RecordKey, Version>>,
}

impl CatalogCore {
    /// A core for `node_id`, starting from `catalog` (a snapshot, or empty).
    pub fn new(node_id: NodeId, catalog: Catalog) -> Self {
        let mut clock = HlcClock::default();
        for record in catalog.records() {
            clock.observe(record.version.hlc);
        }
        let mut core = Self {
            node_id,
            catalog,
            clock,
            index: 1,
            by_service: HashMap::new(),
            counts: RecordCounts::default(),
            snapshot: Arc::new(CatalogSnapshot::default()),
            reaped: HashMap::new(),
        };
        core.rebuild_all();
        core
    }

    /// This node's id.
    pub fn node_id(&self) -> &NodeId {
        &self.node_id
    }

    /// The current snapshot (cheap: an `Arc`).
    pub fn snapshot(&self) -> Arc<CatalogSnapshot> {
        self.snapshot.clone()
    }

    /// The current index.
    pub fn index(&self) -> u64 {
        self.index
    }

    /// Record counts by kind.
    pub fn counts(&self) -> RecordCounts {
        self.counts
    }

    /// The merged catalog (anti-entropy digests, persistence).
    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    /// Writes `body` under `key` as this node at wall time `now_ms`.
    pub fn write(&mut self, key: RecordKey, body: RecordBody, now_ms: u64) -> Record {
        let hlc = self.clock.tick(now_ms);
        let record = Record {
            key,
            version: Version {
                hlc,
                writer: self.node_id.clone(),
            },
            body,
        };
        self.apply(record.clone());
        record
    }

    /// Merges a record from a peer, refusing one its writer may not write.
    pub fn apply_remote(&mut self, record: Record) -> Result<Applied, OwnershipError> {
        check_ownership(&self.catalog, &record)?;
        self.clock.observe(record.version.hlc);
        if self.was_reaped(&record) {
            return Ok(Applied::Stale);
        }
        Ok(self.apply(record))
    }

    /// Drops every record `owner` owns (its instances and node metadata)
    /// without writing a tombstone: the owner was down longer than the reap
    /// time. Each node reaps on its own clock, so nothing is gossiped; a
    /// peer's copy at the same version is ignored until [`Self::unreap`].
    /// Returns how many records went.
    pub fn reap(&mut self, owner: &NodeId) -> usize {
        if *owner == self.node_id {
            return 0;
        }
        let removed = self.catalog.take_owned_by(owner);
        if removed.is_empty() {
            return 0;
        }
        let mut touched = Touched {
            any: true,
            ..Touched::default()
        };
        for record in &removed {
            self.untrack(&record.key, &record.body, &mut touched);
        }
        let versions = self.reaped.entry(owner.clone()).or_default();
        for record in &removed {
            versions.insert(record.key.clone(), record.version.clone());
        }
        self.index += 1;
        self.publish_touched(touched);
        removed.len()
    }

    /// The owner is back: its records are welcome again (anti-entropy
    /// brings them from the owner itself).
    pub fn unreap(&mut self, owner: &NodeId) {
        self.reaped.remove(owner);
    }

    /// Owners with reaped records.
    pub fn reaped_owners(&self) -> impl Iterator<Item = &NodeId> {
        self.reaped.keys()
    }

    fn was_reaped(&self, record: &Record) -> bool {
        record
            .owner()
            .and_then(|owner| self.reaped.get(owner))
            .and_then(|versions| versions.get(&record.key))
            .is_some_and(|reaped| record.version <= *reaped)
    }

    /// Drops tombstones older than `ttl_ms`; returns how many.
    pub fn expire_tombstones(&mut self, now_ms: u64, ttl_ms: u64) -> usize {
        let removed = self.catalog.expire_tombstones(now_ms, ttl_ms);
        if removed > 0 {
            self.counts.tombstones = self.counts.tombstones.saturating_sub(removed);
            self.index += 1;
            self.publish(None, false, false);
        }
        removed
    }

    /// Bumps the index without a catalog change (membership changed what
    /// the catalog shows); every service entry counts as changed.
    pub fn touch(&mut self) {
        self.index += 1;
        let index = self.index;
        let services = self
            .snapshot
            .services
            .iter()
            .map(|(name, entry)| {
                let mut entry = ServiceEntry::clone(entry);
                entry.index = index;
                (name.clone(), Arc::new(entry))
            })
            .collect();
        self.snapshot = Arc::new(CatalogSnapshot {
            index,
            services: Arc::new(services),
            nodes: self.snapshot.nodes.clone(),
            local: self.snapshot.local.clone(),
        });
    }

    fn apply(&mut self, record: Record) -> Applied {
        let mut touched = Touched::default();
        let applied = self.apply_into(record, &mut touched);
        self.publish_touched(touched);
        applied
    }

    /// Merges a batch of records from a peer (an anti-entropy message) and
    /// publishes one snapshot at the end: a snapshot per record rebuilt a
    /// large service once per instance, quadratic in the batch. Returns the
    /// records refused for their writer.
    pub fn apply_remote_all(&mut self, records: Vec<Record>) -> Vec<OwnershipError> {
        let mut touched = Touched::default();
        let mut refused = Vec::new();
        for record in records {
            if let Err(e) = check_ownership(&self.catalog, &record) {
                refused.push(e);
                continue;
            }
            self.clock.observe(record.version.hlc);
            if !self.was_reaped(&record) {
                self.apply_into(record, &mut touched);
            }
        }
        self.publish_touched(touched);
        refused
    }

    /// Applies one record and notes what its change touched; publishes nothing.
    fn apply_into(&mut self, record: Record, touched: &mut Touched) -> Applied {
        let key = record.key.clone();
        let before = self.catalog.get(&key).map(|r| r.body.clone());
        let applied = self.catalog.apply(record);
        if applied != Applied::Newer {
            return applied;
        }
        let after = self.catalog.get(&key).map(|r| r.body.clone());
        self.index += 1;
        touched.any = true;
        if let Some(before) = &before {
            self.untrack(&key, before, touched);
        }
        if let Some(after) = &after {
            self.track(&key, after, touched);
        }
        if let RecordKey::Definition(name) = &key {
            touched.services.push(name.clone());
        }
        applied
    }

    /// Accounts for `body` leaving the catalog under `key`: counts, the
    /// service index, and what the next snapshot must rebuild.
    fn untrack(&mut self, key: &RecordKey, body: &RecordBody, touched: &mut Touched) {
        self.count(Some(body), -1);
        self.note_touched(body, touched);
        if let (RecordKey::Instance(id), RecordBody::Instance(old)) = (key, body) {
            if let Some(ids) = self.by_service.get_mut(&old.service) {
                ids.remove(id);
            }
        }
    }

    /// Accounts for `body` entering the catalog under `key`.
    fn track(&mut self, key: &RecordKey, body: &RecordBody, touched: &mut Touched) {
        self.count(Some(body), 1);
        self.note_touched(body, touched);
        if let (RecordKey::Instance(id), RecordBody::Instance(new)) = (key, body) {
            self.by_service
                .entry(new.service.clone())
                .or_default()
                .insert(id.clone());
        }
    }

    fn note_touched(&self, body: &RecordBody, touched: &mut Touched) {
        match body {
            RecordBody::Definition(d) => touched.services.push(d.name.clone()),
            RecordBody::Instance(i) => {
                touched.services.push(i.service.clone());
                touched.local |= i.node == self.node_id;
            }
            RecordBody::Node(_) => touched.nodes = true,
            RecordBody::Tombstone => {}
        }
    }

    fn publish_touched(&mut self, mut touched: Touched) {
        if !touched.any {
            return;
        }
        touched.services.sort();
        touched.services.dedup();
        self.publish(Some(&touched.services), touched.nodes, touched.local);
    }

    fn count(&mut self, body: Option<&RecordBody>, delta: isize) {
        let slot = match body {
            None => return,
            Some(RecordBody::Definition(_)) => &mut self.counts.definitions,
            Some(RecordBody::Instance(_)) => &mut self.counts.instances,
            Some(RecordBody::Node(_)) => &mut self.counts.nodes,
            Some(RecordBody::Tombstone) => &mut self.counts.tombstones,
        };
        *slot = slot.saturating_add_signed(delta);
    }

    /// Publishes a new snapshot with `services` (None: no service), the
    /// node map and the local instances rebuilt as asked.
    fn publish(&mut self, services: Option<&[String]>, nodes: bool, local: bool) {
        let mut snapshot = CatalogSnapshot::clone(&self.snapshot);
        snapshot.index = self.index;
        if let Some(names) = services.filter(|n| !n.is_empty()) {
            let mut map = BTreeMap::clone(&snapshot.services);
            for name in names {
                match self.service_entry(name) {
                    Some(entry) => map.insert(name.clone(), Arc::new(entry)),
                    None => map.remove(name),
                };
            }
            snapshot.services = Arc::new(map);
        }
        if nodes {
            snapshot.nodes = Arc::new(
                self.catalog
                    .nodes()
                    .map(|n| (n.node.clone(), n.clone()))
                    .collect(),
            );
        }
        if local {
            snapshot.local = Arc::new(self.local_instances());
        }
        self.snapshot = Arc::new(snapshot);
    }

    fn service_entry(&self, name: &str) -> Option<ServiceEntry> {
        let definition = self.catalog.definition(name).cloned();
        let instances: Vec<Instance> = self
            .by_service
            .get(name)
            .into_iter()
            .flatten()
            .filter_map(|id| self.catalog.instance(id).cloned())
            .collect();
        (definition.is_some() || !instances.is_empty()).then_some(ServiceEntry {
            definition,
            instances,
            index: self.index,
        })
    }

    fn local_instances(&self) -> HashMap<String, Instance> {
        self.catalog
            .instances()
            .filter(|i| i.node == self.node_id)
            .map(|i| (i.id.clone(), i.clone()))
            .collect()
    }

    fn rebuild_all(&mut self) {
        self.by_service.clear();
        self.counts = RecordCounts::default();
        for record in self.catalog.records() {
            let body = Some(&record.body);
            let slot = match body {
                Some(RecordBody::Definition(_)) => &mut self.counts.definitions,
                Some(RecordBody::Instance(_)) => &mut self.counts.instances,
                Some(RecordBody::Node(_)) => &mut self.counts.nodes,
                _ => &mut self.counts.tombstones,
            };
            *slot += 1;
        }
        for instance in self.catalog.instances() {
            self.by_service
                .entry(instance.service.clone())
                .or_default()
                .insert(instance.id.clone());
        }
        let mut names: Vec<String> = self.by_service.keys().cloned().collect();
        names.extend(self.catalog.definitions().map(|d| d.name.clone()));
        names.sort();
        names.dedup();
        self.publish(Some(&names), true, true);
    }

    /// The digest of every record (anti-entropy).
    pub fn digest(&self) -> Digest {
        self.catalog.digest()
    }

    /// Every record, for a persisted snapshot.
    pub fn records(&self) -> Vec<Record> {
        self.catalog.records().cloned().collect()
    }
}

/// Instances and node metadata may only be written by the node they describe.
pub fn check_ownership(catalog: &Catalog, record: &Record) -> Result<(), OwnershipError> {
    let writer = &record.version.writer;
    // A tombstone's owner is the owner of what it deletes.
    let owner = record
        .owner()
        .or_else(|| catalog.get(&record.key).and_then(Record::owner));
    match owner {
        Some(owner) if owner != writer => Err(OwnershipError {
            kind: record.key.kind(),
            key: record.key.clone(),
            writer: writer.clone(),
            owner: owner.clone(),
        }),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests;

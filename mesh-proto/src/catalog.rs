//! The service catalog and its merge rule.
//!
//! Every record has one key and one version. Merging keeps, per key, the
//! record with the highest version; a delete is a tombstone record, kept for a
//! TTL so a late copy of the deleted record cannot resurrect it. Because the
//! rule is "max by version" per key, merge is commutative, associative and
//! idempotent, and every delivery order ends in the same catalog.

use std::collections::{BTreeMap, BTreeSet};
use std::hash::{Hash, Hasher};
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::coordinate::Coordinate;
pub use crate::definition_wire::EXTENSION_PREFIX;
use crate::hlc::Version;
use crate::identity::NodeId;

/// What a service needs from the nodes that run or call it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Requirements {
    /// Callers prefer instances within this RTT (ms).
    #[serde(default)]
    pub soft_rtt_ms: Option<u32>,
    /// Callers never use instances beyond this RTT (ms).
    #[serde(default)]
    pub hard_rtt_ms: Option<u32>,
    /// CPU an instance needs, in thousandths of a core.
    #[serde(default)]
    pub cpu_millis: Option<u32>,
    /// Memory an instance needs, in MiB.
    #[serde(default)]
    pub memory_mb: Option<u32>,
}

/// A service definition: cluster-wide, any node may write it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Definition {
    /// Routing name (`<name>.localhost`); the admin API fills it in from the
    /// path when a body omits it.
    #[serde(default)]
    pub name: String,
    /// Free-form version of the service (for example a semver).
    #[serde(default)]
    pub version: String,
    /// Port the service listens on by default (inside its container, when
    /// it runs from `image`).
    #[serde(default)]
    pub port: Option<u16>,
    /// Container image it runs from, for example `nginx:1.27`.
    #[serde(default)]
    pub image: Option<String>,
    /// Port on the host that a container's `port` is published on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_port: Option<u16>,
    /// Source repository it is built from, when it has no `image`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repository: Option<Repository>,
    /// Named endpoints, for example `openapi` → URL of the OpenAPI document.
    #[serde(default)]
    pub endpoints: BTreeMap<String, String>,
    /// Client SDK URLs by language.
    #[serde(default)]
    pub client_sdks: BTreeMap<String, String>,
    /// RTT, CPU and memory requirements.
    #[serde(default)]
    pub requirements: Requirements,
    /// What the instances speak, and so how the proxy reaches them.
    #[serde(default, skip_serializing_if = "Protocol::is_http")]
    pub protocol: Protocol,
    /// Hash of the content above, filled in by the agent that writes it.
    #[serde(default)]
    pub content_hash: String,
}

/// What a service's instances speak. Callers may use HTTP/1.1 or HTTP/2
/// with any HTTP protocol: the sidecar beside the instance speaks the
/// instance's own.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, Default,
)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// HTTP/1.1 (the default).
    #[default]
    Http,
    /// HTTP/2 without TLS (h2c, prior knowledge).
    Http2,
    /// gRPC: HTTP/2, with failures read from `grpc-status`.
    Grpc,
    /// A TCP byte stream, reached through a `--tcp` listener.
    Tcp,
}

impl Protocol {
    /// The name used in definitions, metrics and the CLI.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Http => "http",
            Protocol::Http2 => "http2",
            Protocol::Grpc => "grpc",
            Protocol::Tcp => "tcp",
        }
    }

    /// True for the default, HTTP/1.1 (left out of JSON, so definitions
    /// written before `protocol` existed keep their content hash).
    pub fn is_http(&self) -> bool {
        *self == Protocol::Http
    }

    /// The protocol named `name`, if any.
    pub fn parse(name: &str) -> Option<Self> {
        [
            Protocol::Http,
            Protocol::Http2,
            Protocol::Grpc,
            Protocol::Tcp,
        ]
        .into_iter()
        .find(|p| p.as_str() == name)
    }

    /// True when the instances are spoken to in HTTP/2.
    pub fn is_http2(self) -> bool {
        matches!(self, Protocol::Http2 | Protocol::Grpc)
    }
}

impl std::fmt::Display for Protocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where a service's source lives, for services built rather than pulled.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Repository {
    /// Clone URL, for example `https://github.com/acme/billing.git`.
    pub url: String,
    /// Path of the container file (Dockerfile) inside the repository.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_file: Option<String>,
}

/// Health of an instance, as its own node sees it.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, Default,
)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    /// Serving normally.
    #[default]
    Passing,
    /// Serving, but degraded; still routable.
    Warning,
    /// Not serving; never routed to.
    Critical,
}

/// One running copy of a service. Written only by the node it runs on.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Instance {
    /// Unique instance id.
    pub id: String,
    /// Service name this instance serves.
    pub service: String,
    /// The node whose sidecar fronts this instance.
    pub node: NodeId,
    /// Where that node's sidecar reaches the instance.
    pub address: SocketAddr,
    /// Deployment that started it (for rollouts).
    #[serde(default)]
    pub deployment_id: Option<String>,
    /// Free-form tags.
    #[serde(default)]
    pub tags: Vec<String>,
    /// Current health.
    #[serde(default)]
    pub health: Health,
}

/// A node's description, spread with the catalog.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeMeta {
    /// The node described.
    pub node: NodeId,
    /// Number of CPUs.
    pub cpus: u32,
    /// Total memory in MiB.
    pub memory_mb: u64,
    /// Failure domain, if the operator set one.
    pub zone: Option<String>,
    /// Agent version string.
    pub agent_version: String,
    /// Network coordinate, for RTT estimates to nodes never measured.
    pub coordinate: Option<Coordinate>,
}

/// The key of a catalog record. Ordering groups records by kind.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum RecordKey {
    /// A service definition, by service name.
    Definition(String),
    /// An instance, by instance id.
    Instance(String),
    /// Node metadata, by node id.
    Node(NodeId),
}

impl RecordKey {
    /// Short kind name, used in metrics labels and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            RecordKey::Definition(_) => "definition",
            RecordKey::Instance(_) => "instance",
            RecordKey::Node(_) => "node",
        }
    }
}

/// What a record holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum RecordBody {
    /// A service definition (its wire layout is frozen: see `definition_wire`).
    Definition(#[serde(with = "crate::definition_wire")] Definition),
    /// A service instance.
    Instance(Instance),
    /// Node metadata.
    Node(NodeMeta),
    /// The record was deleted at `version`; kept for a TTL.
    Tombstone,
}

/// One versioned entry of the catalog.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// Which entry this is.
    pub key: RecordKey,
    /// When and by whom it was written.
    pub version: Version,
    /// The content, or a tombstone.
    pub body: RecordBody,
}

impl Record {
    /// True for a delete marker.
    pub fn is_tombstone(&self) -> bool {
        matches!(self.body, RecordBody::Tombstone)
    }

    /// The node that alone may write this record (instances and node
    /// metadata); None for definitions and tombstones.
    pub fn owner(&self) -> Option<&NodeId> {
        match &self.body {
            RecordBody::Instance(instance) => Some(&instance.node),
            RecordBody::Node(meta) => Some(&meta.node),
            RecordBody::Definition(_) | RecordBody::Tombstone => None,
        }
    }
}

/// What happened to a record offered to [`Catalog::apply`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// It was newer and replaced (or created) the entry.
    Newer,
    /// It was the same or older; nothing changed.
    Stale,
}

/// The summary of a catalog exchanged in anti-entropy: every key and its
/// version (the first [`MAX_DIGEST_ENTRIES`] in key order).
pub type Digest = Vec<(RecordKey, Version)>;

/// What two anti-entropy partners compare before exchanging digests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DigestSummary {
    /// Entries of the digest.
    pub entries: u64,
    /// The sum of each entry's FNV-1a hash (of its key and version).
    pub hash: u64,
}

/// FNV-1a, 64 bits: fixed by its specification, unlike std's default
/// hasher, so every agent computes the same summary.
struct Fnv1a(u64);

impl Default for Fnv1a {
    fn default() -> Self {
        Self(0xcbf2_9ce4_8422_2325)
    }
}

impl Hasher for Fnv1a {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for byte in bytes {
            self.0 ^= u64::from(*byte);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }
}

/// Most records (or wanted keys) one anti-entropy message carries. A side
/// that lacks more gets the rest in the next rounds; a decoder refuses a
/// message with more, so a peer's message costs a bounded amount of memory.
pub const MAX_SYNC_RECORDS: usize = 16_384;

/// Most entries of a digest. A catalog larger than this repairs only its
/// first keys by digest; the rest still spread by broadcast.
pub const MAX_DIGEST_ENTRIES: usize = 262_144;

/// The whole catalog, as one node knows it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Catalog {
    records: BTreeMap<RecordKey, Record>,
    /// Sum of every record's [`entry_hash`], kept as records come and go:
    /// each anti-entropy round reads the summary, and recomputing it walked
    /// the whole catalog (at 500 agents, every agent every round).
    hash_sum: u64,
}

/// FNV-1a of `value`: what one entry adds to a summary's sum (a catalog
/// digest's here, a member pull's in `gossip`).
pub(crate) fn fnv1a(value: &impl Hash) -> u64 {
    let mut entry = Fnv1a::default();
    value.hash(&mut entry);
    entry.finish()
}

/// What one record adds to a [`DigestSummary`]'s hash.
fn entry_hash(key: &RecordKey, version: &Version) -> u64 {
    fnv1a(&(key, version))
}

impl Catalog {
    /// An empty catalog.
    pub fn new() -> Self {
        Self::default()
    }

    /// Merges one record: keeps it if its version is higher than what we hold.
    pub fn apply(&mut self, record: Record) -> Applied {
        match self.records.get(&record.key) {
            Some(current) if current.version >= record.version => Applied::Stale,
            _ => {
                self.hash_sum = self
                    .hash_sum
                    .wrapping_add(entry_hash(&record.key, &record.version));
                if let Some(old) = self.records.insert(record.key.clone(), record) {
                    self.hash_sum = self
                        .hash_sum
                        .wrapping_sub(entry_hash(&old.key, &old.version));
                }
                Applied::Newer
            }
        }
    }

    /// Merges every record of `other` into `self`.
    pub fn merge(&mut self, other: &Catalog) -> usize {
        other
            .records
            .values()
            .filter(|r| self.apply((*r).clone()) == Applied::Newer)
            .count()
    }

    /// The record under `key`, tombstones included.
    pub fn get(&self, key: &RecordKey) -> Option<&Record> {
        self.records.get(key)
    }

    /// All records, tombstones included, in key order.
    pub fn records(&self) -> impl Iterator<Item = &Record> {
        self.records.values()
    }

    /// Number of records, tombstones included.
    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// True when the catalog holds nothing at all.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// Live definitions, by name.
    pub fn definitions(&self) -> impl Iterator<Item = &Definition> {
        self.records.values().filter_map(|r| match &r.body {
            RecordBody::Definition(d) => Some(d),
            _ => None,
        })
    }

    /// The live definition of `name`.
    pub fn definition(&self, name: &str) -> Option<&Definition> {
        match self
            .records
            .get(&RecordKey::Definition(name.to_owned()))?
            .body
        {
            RecordBody::Definition(ref d) => Some(d),
            _ => None,
        }
    }

    /// Live instances of every service.
    pub fn instances(&self) -> impl Iterator<Item = &Instance> {
        self.records.values().filter_map(|r| match &r.body {
            RecordBody::Instance(i) => Some(i),
            _ => None,
        })
    }

    /// The live instance with this id.
    pub fn instance(&self, id: &str) -> Option<&Instance> {
        match self.records.get(&RecordKey::Instance(id.to_owned()))?.body {
            RecordBody::Instance(ref i) => Some(i),
            _ => None,
        }
    }

    /// Removes and returns the live records `owner` owns (its instances
    /// and node metadata), leaving no tombstone: a reap, not a delete.
    pub fn take_owned_by(&mut self, owner: &NodeId) -> Vec<Record> {
        let keys: Vec<RecordKey> = self
            .records
            .values()
            .filter(|r| r.owner() == Some(owner))
            .map(|r| r.key.clone())
            .collect();
        let taken: Vec<Record> = keys
            .iter()
            .filter_map(|key| self.records.remove(key))
            .collect();
        for record in &taken {
            self.hash_sum = self
                .hash_sum
                .wrapping_sub(entry_hash(&record.key, &record.version));
        }
        taken
    }

    /// Live node metadata records.
    pub fn nodes(&self) -> impl Iterator<Item = &NodeMeta> {
        self.records.values().filter_map(|r| match &r.body {
            RecordBody::Node(n) => Some(n),
            _ => None,
        })
    }

    /// A summary of [`Catalog::digest`]: two catalogs with equal summaries
    /// hold the same keys at the same versions (barring a 64-bit collision),
    /// so a round between them can stop after exchanging 20 bytes instead
    /// of a digest that grows with the catalog.
    pub fn summary(&self) -> DigestSummary {
        if self.records.len() <= MAX_DIGEST_ENTRIES {
            return DigestSummary {
                entries: self.records.len() as u64,
                hash: self.hash_sum,
            };
        }
        // Past the digest's cap, the summary covers what a digest would.
        let mut summary = DigestSummary::default();
        for record in self.records.values().take(MAX_DIGEST_ENTRIES) {
            // A sum does not depend on the order the entries are visited in.
            summary.hash = summary
                .hash
                .wrapping_add(entry_hash(&record.key, &record.version));
            summary.entries += 1;
        }
        summary
    }

    /// Every key with its version: what a peer needs to find what we lack.
    pub fn digest(&self) -> Digest {
        self.records
            .values()
            .take(MAX_DIGEST_ENTRIES)
            .map(|r| (r.key.clone(), r.version.clone()))
            .collect()
    }

    /// Records we hold that are newer than, or absent from, a peer's
    /// digest: the first [`MAX_SYNC_RECORDS`] in key order.
    pub fn newer_than(&self, digest: &Digest) -> Vec<Record> {
        let theirs: BTreeMap<&RecordKey, &Version> = digest.iter().map(|(k, v)| (k, v)).collect();
        self.records
            .values()
            .filter(|r| theirs.get(&r.key).is_none_or(|v| **v < r.version))
            .take(MAX_SYNC_RECORDS)
            .cloned()
            .collect()
    }

    /// Keys of a peer's digest whose version is newer than ours (or that we
    /// lack): the first [`MAX_SYNC_RECORDS`].
    pub fn wanted_from(&self, digest: &Digest) -> Vec<RecordKey> {
        digest
            .iter()
            .filter(|(k, v)| self.records.get(k).is_none_or(|r| r.version < *v))
            .take(MAX_SYNC_RECORDS)
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// The records under `keys` that we hold.
    pub fn select(&self, keys: &[RecordKey]) -> Vec<Record> {
        let keys: BTreeSet<&RecordKey> = keys.iter().collect();
        self.records
            .values()
            .filter(|r| keys.contains(&r.key))
            .cloned()
            .collect()
    }

    /// Drops tombstones older than `ttl_ms` at wall time `now_ms`; returns how many.
    pub fn expire_tombstones(&mut self, now_ms: u64, ttl_ms: u64) -> usize {
        let before = self.records.len();
        let mut hash_sum = self.hash_sum;
        self.records.retain(|_, r| {
            let expired = r.is_tombstone() && r.version.hlc.wall_ms.saturating_add(ttl_ms) < now_ms;
            if expired {
                hash_sum = hash_sum.wrapping_sub(entry_hash(&r.key, &r.version));
            }
            !expired
        });
        self.hash_sum = hash_sum;
        before - self.records.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hlc::Hlc;

    fn record(key: RecordKey, body: RecordBody) -> Record {
        Record {
            key,
            version: Version {
                hlc: Hlc {
                    wall_ms: 1,
                    logical: 0,
                },
                writer: NodeId::new("node-a").expect("valid id"),
            },
            body,
        }
    }

    #[test]
    fn equal_catalogs_have_equal_summaries_and_any_difference_shows() {
        let a_def = record(RecordKey::Definition("a".into()), RecordBody::Tombstone);
        let b_def = record(RecordKey::Definition("b".into()), RecordBody::Tombstone);
        let mut one = Catalog::new();
        one.apply(a_def.clone());
        one.apply(b_def.clone());
        let mut two = Catalog::new();
        two.apply(b_def.clone());
        two.apply(a_def.clone());
        assert_eq!(
            one.summary(),
            two.summary(),
            "insertion order is not content"
        );
        assert_eq!(one.summary().entries, 2);
        assert_ne!(one.summary(), Catalog::new().summary());

        // A newer version of one record, a record missing, or the same key
        // written by another node: each changes the summary.
        let mut newer = b_def.clone();
        newer.version.hlc.logical += 1;
        let mut three = Catalog::new();
        three.apply(a_def.clone());
        three.apply(newer);
        assert_ne!(one.summary(), three.summary());
        let mut four = Catalog::new();
        four.apply(a_def.clone());
        assert_ne!(one.summary(), four.summary());
        let mut other_writer = b_def;
        other_writer.version.writer = NodeId::new("node-b").expect("valid id");
        let mut five = Catalog::new();
        five.apply(a_def);
        five.apply(other_writer);
        assert_ne!(one.summary(), five.summary());
    }

    /// The summary the catalog keeps as records come and go equals one
    /// computed afresh from what it holds.
    #[test]
    fn the_kept_summary_follows_replacements_reaps_and_expiries() {
        let node = NodeId::new("node-b").expect("valid id");
        let meta = record(
            RecordKey::Node(node.clone()),
            RecordBody::Node(NodeMeta {
                node: node.clone(),
                cpus: 2,
                memory_mb: 1024,
                zone: None,
                agent_version: "test".into(),
                coordinate: None,
            }),
        );
        let old_tombstone = record(RecordKey::Definition("gone".into()), RecordBody::Tombstone);
        let mut kept = record(RecordKey::Definition("kept".into()), RecordBody::Tombstone);
        kept.version.hlc.wall_ms = 10_000;
        let mut catalog = Catalog::new();
        for r in [meta, old_tombstone, kept.clone()] {
            catalog.apply(r);
        }
        let mut newer = kept.clone();
        newer.version.hlc.logical += 1;
        catalog.apply(newer.clone());
        assert_eq!(catalog.take_owned_by(&node).len(), 1);
        assert_eq!(catalog.expire_tombstones(5_000, 1_000), 1);

        let mut afresh = Catalog::new();
        afresh.apply(newer);
        assert_eq!(catalog.summary(), afresh.summary());
        assert_eq!(catalog.summary().entries, 1);
    }

    #[test]
    fn kinds_name_the_metric_labels() {
        let node = NodeId::new("node-a").expect("valid id");
        assert_eq!(RecordKey::Definition("x".into()).kind(), "definition");
        assert_eq!(RecordKey::Instance("x".into()).kind(), "instance");
        assert_eq!(RecordKey::Node(node).kind(), "node");
    }

    #[test]
    fn live_views_list_each_kind_and_emptiness_follows_records() {
        let mut catalog = Catalog::new();
        assert!(catalog.is_empty());
        let definition = Definition {
            name: "billing".into(),
            ..Definition::default()
        };
        let instance = Instance {
            id: "billing-1".into(),
            service: "billing".into(),
            node: NodeId::new("node-a").expect("valid id"),
            address: "127.0.0.1:8080".parse().expect("address"),
            deployment_id: None,
            tags: Vec::new(),
            health: Health::Passing,
        };
        catalog.apply(record(
            RecordKey::Definition("billing".into()),
            RecordBody::Definition(definition.clone()),
        ));
        assert!(!catalog.is_empty());
        catalog.apply(record(
            RecordKey::Instance("billing-1".into()),
            RecordBody::Instance(instance.clone()),
        ));
        catalog.apply(record(
            RecordKey::Definition("gone".into()),
            RecordBody::Tombstone,
        ));
        assert_eq!(catalog.definitions().collect::<Vec<_>>(), [&definition]);
        assert_eq!(catalog.instances().collect::<Vec<_>>(), [&instance]);
        assert_eq!(
            catalog.len(),
            3,
            "the tombstone is a record, not a definition"
        );
    }
}

//! Proptest strategies shared by the property tests: catalog records over a
//! small key space (so that keys collide and the merge has work to do), with
//! versions unique per (writer, HLC) as real clocks guarantee.

// Each test binary uses its own subset of these helpers.
#![allow(dead_code)]

use std::collections::BTreeSet;
use std::net::{SocketAddr, SocketAddrV6};

use mesh_proto::catalog::{Health, Repository, Requirements};
use mesh_proto::coordinate::{Coordinate, DIMENSIONS};
use mesh_proto::{
    Catalog, Definition, Hlc, Instance, NodeId, NodeMeta, Record, RecordBody, RecordKey, Version,
};
use proptest::collection::{btree_map, vec};
use proptest::prelude::*;

/// Number of distinct writers, services, instances and nodes.
pub const SPACE: u8 = 3;

/// The `i`-th node id of the small key space.
pub fn node_id(i: u8) -> NodeId {
    NodeId::new(format!("node-{i}")).expect("generated node ids are valid")
}

/// A version from a small range, so that ties and near-ties are common.
pub fn version() -> impl Strategy<Value = Version> {
    (0u64..20, 0u32..3, 0..SPACE).prop_map(|(wall_ms, logical, w)| Version {
        hlc: Hlc { wall_ms, logical },
        writer: node_id(w),
    })
}

/// A key from the small key space.
pub fn key() -> impl Strategy<Value = RecordKey> {
    prop_oneof![
        (0..SPACE).prop_map(|i| RecordKey::Definition(format!("svc-{i}"))),
        (0..SPACE).prop_map(|i| RecordKey::Instance(format!("inst-{i}"))),
        (0..SPACE).prop_map(|i| RecordKey::Node(node_id(i))),
    ]
}

/// A coordinate with finite components, so records compare equal to themselves.
pub fn coordinate() -> impl Strategy<Value = Coordinate> {
    (
        vec(-1.0f64..1.0, DIMENSIONS),
        0.0f64..1.5,
        -0.01f64..0.01,
        0.0f64..0.1,
    )
        .prop_map(|(v, error, adjustment, height)| {
            let mut c = Coordinate::origin();
            c.vec.copy_from_slice(&v);
            c.error = error;
            c.adjustment = adjustment;
            c.height = height;
            c
        })
}

fn health() -> impl Strategy<Value = Health> {
    prop_oneof![
        Just(Health::Passing),
        Just(Health::Warning),
        Just(Health::Critical)
    ]
}

fn definition(name: String) -> impl Strategy<Value = Definition> {
    (
        "\\PC{0,8}",
        any::<Option<u16>>(),
        proptest::option::of("\\PC{0,12}"),
        btree_map("[a-z]{1,6}", "\\PC{0,12}", 0..3),
        btree_map("[a-z]{1,6}", "\\PC{0,12}", 0..2),
        (
            any::<Option<u32>>(),
            any::<Option<u32>>(),
            any::<Option<u32>>(),
            any::<Option<u32>>(),
        ),
        "[0-9a-f]{0,16}",
        any::<Option<u16>>(),
        proptest::option::of(("\\PC{0,12}", proptest::option::of("\\PC{0,12}"))),
    )
        .prop_map(
            move |(
                version,
                port,
                image,
                endpoints,
                client_sdks,
                req,
                content_hash,
                host_port,
                repository,
            )| Definition {
                name: name.clone(),
                version,
                port,
                image,
                host_port,
                repository: repository.map(|(url, container_file)| Repository {
                    url,
                    container_file,
                }),
                endpoints,
                client_sdks,
                requirements: Requirements {
                    soft_rtt_ms: req.0,
                    hard_rtt_ms: req.1,
                    cpu_millis: req.2,
                    memory_mb: req.3,
                },
                protocol: [
                    mesh_proto::Protocol::Http,
                    mesh_proto::Protocol::Http2,
                    mesh_proto::Protocol::Grpc,
                    mesh_proto::Protocol::Tcp,
                ][content_hash.len() % 4],
                content_hash,
            },
        )
}

/// A socket address as the wire carries it. serde writes an IPv6 address
/// as (ip, port) only, so flow info and scope id do not survive encoding;
/// they are zeroed here to keep round-trip equality meaningful.
pub fn socket_addr() -> impl Strategy<Value = SocketAddr> {
    any::<SocketAddr>().prop_map(|addr| match addr {
        SocketAddr::V6(v6) => SocketAddr::V6(SocketAddrV6::new(*v6.ip(), v6.port(), 0, 0)),
        v4 => v4,
    })
}

fn instance(id: String, node: NodeId) -> impl Strategy<Value = Instance> {
    (
        (0..SPACE).prop_map(|i| format!("svc-{i}")),
        socket_addr(),
        proptest::option::of("[a-z0-9-]{0,10}"),
        vec("\\PC{0,6}", 0..3),
        health(),
    )
        .prop_map(
            move |(service, address, deployment_id, tags, health)| Instance {
                id: id.clone(),
                service,
                node: node.clone(),
                address,
                deployment_id,
                tags,
                health,
            },
        )
}

fn node_meta(node: NodeId) -> impl Strategy<Value = NodeMeta> {
    (
        any::<u32>(),
        any::<u64>(),
        proptest::option::of("[a-z0-9-]{1,8}"),
        "[0-9.]{1,8}",
        proptest::option::of(coordinate()),
    )
        .prop_map(
            move |(cpus, memory_mb, zone, agent_version, coordinate)| NodeMeta {
                node: node.clone(),
                cpus,
                memory_mb,
                zone,
                agent_version,
                coordinate,
            },
        )
}

/// A live body that fits `key`; instances name their writer as their node,
/// since only the node an instance runs on writes it.
pub fn live_body(key: &RecordKey, writer: &NodeId) -> BoxedStrategy<RecordBody> {
    match key {
        RecordKey::Definition(name) => definition(name.clone())
            .prop_map(RecordBody::Definition)
            .boxed(),
        RecordKey::Instance(id) => instance(id.clone(), writer.clone())
            .prop_map(RecordBody::Instance)
            .boxed(),
        RecordKey::Node(node) => node_meta(node.clone()).prop_map(RecordBody::Node).boxed(),
    }
}

/// One record: a live body (3 in 4) or a tombstone.
pub fn record() -> impl Strategy<Value = Record> {
    (key(), version()).prop_flat_map(|(key, version)| {
        let live = live_body(&key, &version.writer);
        prop_oneof![1 => Just(RecordBody::Tombstone), 3 => live].prop_map(move |body| Record {
            key: key.clone(),
            version: version.clone(),
            body,
        })
    })
}

/// Up to `max` records whose versions are all distinct: one (writer, HLC)
/// is one write, so two records with the same version are the same record.
pub fn pool(max: usize) -> impl Strategy<Value = Vec<Record>> {
    vec(record(), 0..max).prop_map(|records| {
        let mut seen = BTreeSet::new();
        records
            .into_iter()
            .filter(|r| seen.insert(r.version.clone()))
            .collect()
    })
}

/// The catalog holding `records`, applied in order.
pub fn catalog_of<'a>(records: impl IntoIterator<Item = &'a Record>) -> Catalog {
    let mut catalog = Catalog::new();
    for r in records {
        catalog.apply(r.clone());
    }
    catalog
}

/// `a ⊔ b`, leaving both inputs alone.
pub fn join(a: &Catalog, b: &Catalog) -> Catalog {
    let mut out = a.clone();
    out.merge(b);
    out
}

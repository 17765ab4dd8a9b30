use std::net::SocketAddr;

use mesh_proto::catalog::RecordKey;
use mesh_proto::catalog::{Applied, Catalog, Definition, Health, Instance, Record, RecordBody};
use mesh_proto::{Hlc, Version};

use mesh_proto::catalog::NodeMeta;

use super::{CatalogCore, RecordCounts};

use crate::test_support::node;

fn instance(id: &str, service: &str, on: &str) -> Instance {
    Instance {
        id: id.to_owned(),
        service: service.to_owned(),
        node: node(on),
        address: SocketAddr::from(([127, 0, 0, 1], 8080)),
        deployment_id: None,
        tags: Vec::new(),
        health: Health::Passing,
    }
}

fn definition(name: &str) -> Definition {
    Definition {
        name: name.to_owned(),
        version: "1".to_owned(),
        ..Default::default()
    }
}

fn remote(key: RecordKey, body: RecordBody, writer: &str, wall_ms: u64) -> Record {
    Record {
        key,
        version: Version {
            hlc: Hlc {
                wall_ms,
                logical: 0,
            },
            writer: node(writer),
        },
        body,
    }
}

fn put_instance(core: &mut CatalogCore, id: &str, service: &str, now: u64) {
    let on = core.node_id().to_string();
    core.write(
        RecordKey::Instance(id.to_owned()),
        RecordBody::Instance(instance(id, service, &on)),
        now,
    );
}

#[test]
fn a_write_shows_in_the_next_snapshot_and_not_in_the_one_held() {
    let mut core = CatalogCore::new(node("a"), Catalog::new());
    let before = core.snapshot();
    put_instance(&mut core, "web-1", "web", 1_000);
    let after = core.snapshot();
    assert!(
        before.service("web").is_none(),
        "a held snapshot never changes"
    );
    let web = after.service("web").expect("web is in the new snapshot");
    assert_eq!(web.instances.len(), 1);
    assert_eq!(
        after.local_instance("web-1").map(|i| i.service.as_str()),
        Some("web")
    );
    assert!(after.index > before.index);
}

#[test]
fn a_change_to_one_service_leaves_the_others_index_alone() {
    let mut core = CatalogCore::new(node("a"), Catalog::new());
    put_instance(&mut core, "a-1", "alpha", 1_000);
    let alpha_index = core.snapshot().service("alpha").expect("alpha").index;
    for n in 0..100 {
        put_instance(&mut core, &format!("b-{n}"), "beta", 1_001 + n);
    }
    let snapshot = core.snapshot();
    assert_eq!(snapshot.service("alpha").expect("alpha").index, alpha_index);
    assert_eq!(snapshot.service("beta").expect("beta").instances.len(), 100);
    assert!(snapshot.index > alpha_index + 99);
}

#[test]
fn an_instance_moving_service_leaves_its_old_service() {
    let mut core = CatalogCore::new(node("a"), Catalog::new());
    put_instance(&mut core, "x-1", "old", 1_000);
    put_instance(&mut core, "x-1", "new", 2_000);
    let snapshot = core.snapshot();
    assert!(
        snapshot.service("old").is_none(),
        "no definition, no instance: gone"
    );
    assert_eq!(snapshot.service("new").expect("new").instances[0].id, "x-1");
}

#[test]
fn a_tombstone_removes_the_instance_and_a_definition_keeps_the_service() {
    let mut core = CatalogCore::new(node("a"), Catalog::new());
    core.write(
        RecordKey::Definition("web".into()),
        RecordBody::Definition(definition("web")),
        1_000,
    );
    put_instance(&mut core, "web-1", "web", 1_001);
    core.write(
        RecordKey::Instance("web-1".into()),
        RecordBody::Tombstone,
        1_002,
    );
    let snapshot = core.snapshot();
    let web = snapshot
        .service("web")
        .expect("the definition keeps it listed");
    assert!(web.instances.is_empty());
    assert!(snapshot.local_instance("web-1").is_none());
    assert_eq!(core.counts().tombstones, 1);
    assert_eq!(core.counts().definitions, 1);
    assert_eq!(core.counts().instances, 0);
}

#[test]
fn a_peer_cannot_write_another_nodes_instance() {
    let mut core = CatalogCore::new(node("a"), Catalog::new());
    let forged = remote(
        RecordKey::Instance("c-1".into()),
        RecordBody::Instance(instance("c-1", "web", "c")),
        "b",
        5_000,
    );
    let error = core
        .apply_remote(forged)
        .expect_err("b may not write c's instance");
    assert_eq!(error.owner, node("c"));
    assert!(core.snapshot().service("web").is_none());
}

#[test]
fn a_stale_record_changes_nothing() {
    let mut core = CatalogCore::new(node("a"), Catalog::new());
    let newer = remote(
        RecordKey::Instance("b-1".into()),
        RecordBody::Instance(instance("b-1", "web", "b")),
        "b",
        5_000,
    );
    let mut older = newer.clone();
    older.version.hlc.wall_ms = 4_000;
    assert_eq!(core.apply_remote(newer), Ok(Applied::Newer));
    let index = core.index();
    assert_eq!(core.apply_remote(older), Ok(Applied::Stale));
    assert_eq!(core.index(), index, "a stale record must not wake watchers");
}

#[test]
fn writes_after_a_remote_record_are_stamped_later_even_with_a_slow_clock() {
    let mut core = CatalogCore::new(node("a"), Catalog::new());
    let theirs = remote(
        RecordKey::Definition("web".into()),
        RecordBody::Definition(definition("web")),
        "b",
        9_000,
    );
    core.apply_remote(theirs.clone())
        .expect("definitions are anyone's");
    // Our wall clock is behind theirs: the HLC still orders our write after.
    let ours = core.write(
        RecordKey::Definition("web".into()),
        RecordBody::Definition(definition("web")),
        1_000,
    );
    assert!(ours.version > theirs.version);
    assert_eq!(
        core.snapshot()
            .definition("web")
            .map(|d| d.version.as_str()),
        Some("1")
    );
}

#[test]
fn a_restored_catalog_is_indexed_whole() {
    let mut seed = CatalogCore::new(node("a"), Catalog::new());
    put_instance(&mut seed, "web-1", "web", 1_000);
    put_instance(&mut seed, "api-1", "api", 1_001);
    let mut catalog = Catalog::new();
    for record in seed.records() {
        catalog.apply(record);
    }
    let restored = CatalogCore::new(node("a"), catalog);
    let snapshot = restored.snapshot();
    assert_eq!(snapshot.services().count(), 2);
    assert_eq!(snapshot.local_instances().count(), 2);
    assert_eq!(restored.counts().instances, 2);
}

#[test]
fn touch_marks_every_service_changed() {
    let mut core = CatalogCore::new(node("a"), Catalog::new());
    put_instance(&mut core, "web-1", "web", 1_000);
    let before = core.snapshot().service("web").expect("web").index;
    core.touch();
    assert!(core.snapshot().service("web").expect("web").index > before);
}

#[test]
fn tombstones_expire_after_their_ttl_only() {
    let mut core = CatalogCore::new(node("a"), Catalog::new());
    put_instance(&mut core, "web-1", "web", 1_000);
    core.write(
        RecordKey::Instance("web-1".into()),
        RecordBody::Tombstone,
        2_000,
    );
    assert_eq!(core.expire_tombstones(2_500, 1_000), 0);
    assert_eq!(core.expire_tombstones(3_500, 1_000), 1);
    assert_eq!(core.counts().tombstones, 0);
}

#[test]
fn reaping_a_node_drops_its_records_and_ignores_peers_copies_until_it_is_back() {
    let mut core = CatalogCore::new(node("a"), Catalog::new());
    put_instance(&mut core, "a-1", "web", 1_000);
    let b_web = remote(
        RecordKey::Instance("b-1".into()),
        RecordBody::Instance(instance("b-1", "web", "b")),
        "b",
        1_000,
    );
    let b_api = remote(
        RecordKey::Instance("b-2".into()),
        RecordBody::Instance(instance("b-2", "api", "b")),
        "b",
        1_000,
    );
    let c_web = remote(
        RecordKey::Instance("c-1".into()),
        RecordBody::Instance(instance("c-1", "web", "c")),
        "c",
        1_000,
    );
    let refused = core.apply_remote_all(vec![b_web.clone(), b_api.clone(), c_web.clone()]);
    assert!(refused.is_empty());
    assert_eq!(
        core.snapshot().service("web").expect("web").instances.len(),
        3
    );

    assert_eq!(core.reap(&node("b")), 2);
    let snapshot = core.snapshot();
    let web: Vec<&str> = snapshot
        .service("web")
        .expect("web")
        .instances
        .iter()
        .map(|i| i.id.as_str())
        .collect();
    assert_eq!(web, ["a-1", "c-1"], "only b's records go");
    assert!(snapshot.service("api").is_none());
    assert_eq!(core.counts().instances, 2);
    assert_eq!(core.reap(&node("a")), 0, "a node never reaps itself");

    // A peer that has not reaped yet sends the same copies: ignored.
    assert_eq!(core.apply_remote(b_web.clone()), Ok(Applied::Stale));
    assert!(core.apply_remote_all(vec![b_api.clone()]).is_empty());
    assert!(core.snapshot().service("api").is_none());
    // Anything b wrote after the reap is b alive again somewhere: taken.
    let b_newer = remote(
        RecordKey::Instance("b-2".into()),
        RecordBody::Instance(instance("b-2", "api", "b")),
        "b",
        2_000,
    );
    assert_eq!(core.apply_remote(b_newer), Ok(Applied::Newer));
    assert!(core.snapshot().service("api").is_some());

    // Once b is back, the old copies are welcome again.
    core.unreap(&node("b"));
    assert_eq!(core.apply_remote(b_web), Ok(Applied::Newer));
    assert_eq!(
        core.snapshot().service("web").expect("web").instances.len(),
        3
    );
}

#[test]
fn a_batch_from_a_peer_is_published_as_one_snapshot() {
    let mut core = CatalogCore::new(node("a"), Catalog::new());
    let records: Vec<Record> = (0..50)
        .map(|i| {
            let id = format!("b-{i}");
            remote(
                RecordKey::Instance(id.clone()),
                RecordBody::Instance(instance(&id, "web", "b")),
                "b",
                1_000,
            )
        })
        .collect();
    let forged = remote(
        RecordKey::Instance("c-1".into()),
        RecordBody::Instance(instance("c-1", "web", "c")),
        "mallory",
        1_000,
    );
    let before = core.index();
    let mut batch = records;
    batch.push(forged);
    let refused = core.apply_remote_all(batch);
    assert_eq!(refused.len(), 1, "the forged record is refused");
    let snapshot = core.snapshot();
    let web = snapshot.service("web").expect("web");
    assert_eq!(web.instances.len(), 50);
    assert_eq!(snapshot.index, before + 50, "one index per record applied");
    assert_eq!(web.index, snapshot.index);
}

#[test]
fn node_metadata_shows_in_the_snapshot_at_the_cores_index() {
    let mut core = CatalogCore::new(node("a"), Catalog::new());
    assert_eq!(core.snapshot().index, core.index());
    let start = core.index();
    let meta = NodeMeta {
        node: node("b"),
        cpus: 4,
        memory_mb: 8192,
        zone: Some("z1".into()),
        agent_version: "0.1.0".into(),
        coordinate: None,
    };
    core.apply_remote(remote(
        RecordKey::Node(node("b")),
        RecordBody::Node(meta.clone()),
        "b",
        1_000,
    ))
    .expect("b writes its own metadata");
    assert_eq!(core.index(), start + 1);
    let snap = core.snapshot();
    assert_eq!(snap.index, core.index());
    assert_eq!(snap.node(&node("b")), Some(&meta));
    assert_eq!(snap.node(&node("c")), None);
    assert_eq!(snap.nodes().keys().collect::<Vec<_>>(), [&node("b")]);
}

#[test]
fn expiring_tombstones_moves_the_index_only_when_one_went() {
    let mut core = CatalogCore::new(node("a"), Catalog::new());
    put_instance(&mut core, "web-1", "web", 1_000);
    core.write(
        RecordKey::Instance("web-1".into()),
        RecordBody::Tombstone,
        2_000,
    );
    let index = core.index();
    assert_eq!(core.expire_tombstones(2_500, 1_000), 0);
    assert_eq!(
        core.index(),
        index,
        "nothing expired: no blocking query wakes"
    );
    assert_eq!(core.expire_tombstones(3_500, 1_000), 1);
    assert_eq!(core.index(), index + 1);
    assert_eq!(core.snapshot().index, index + 1);
}

fn meta(on: &str) -> NodeMeta {
    NodeMeta {
        node: node(on),
        cpus: 2,
        memory_mb: 1024,
        zone: None,
        agent_version: "0.1.0".into(),
        coordinate: None,
    }
}

#[test]
fn a_restored_catalog_counts_every_kind_and_keeps_its_digest() {
    let mut seed = CatalogCore::new(node("a"), Catalog::new());
    put_instance(&mut seed, "web-1", "web", 1_000);
    put_instance(&mut seed, "api-1", "api", 1_001);
    seed.write(
        RecordKey::Definition("web".into()),
        RecordBody::Definition(definition("web")),
        1_002,
    );
    seed.write(
        RecordKey::Node(node("a")),
        RecordBody::Node(meta("a")),
        1_003,
    );
    seed.write(
        RecordKey::Instance("api-1".into()),
        RecordBody::Tombstone,
        1_004,
    );
    let mut catalog = Catalog::new();
    for record in seed.records() {
        catalog.apply(record);
    }
    let restored = CatalogCore::new(node("a"), catalog);
    let expected = RecordCounts {
        definitions: 1,
        instances: 1,
        nodes: 1,
        tombstones: 1,
    };
    assert_eq!(restored.counts(), expected);
    assert_eq!(seed.counts(), expected, "as counted while written");
    assert_eq!(restored.digest().len(), 4);
    assert_eq!(restored.digest(), seed.digest());
}

#[test]
fn only_the_owner_may_delete_an_instance_or_a_node_record() {
    let mut core = CatalogCore::new(node("a"), Catalog::new());
    let own = [
        (
            RecordKey::Instance("b-1".into()),
            RecordBody::Instance(instance("b-1", "web", "b")),
        ),
        (RecordKey::Node(node("b")), RecordBody::Node(meta("b"))),
    ];
    for (key, body) in own.clone() {
        core.apply_remote(remote(key, body, "b", 1_000))
            .expect("b writes its own records");
    }
    for (key, _) in own {
        let error = core
            .apply_remote(remote(key.clone(), RecordBody::Tombstone, "c", 2_000))
            .expect_err("c may not delete b's records");
        assert_eq!((error.writer, error.owner), (node("c"), node("b")));
        core.apply_remote(remote(key, RecordBody::Tombstone, "b", 2_000))
            .expect("b deletes its own records");
    }
    assert!(core.snapshot().service("web").is_none());
    assert!(core.snapshot().node(&node("b")).is_none());
}

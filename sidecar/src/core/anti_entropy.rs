//! The anti-entropy exchange, one step at a time: the initiator sends its
//! digest; the partner answers with the records the initiator lacks and the
//! keys it lacks itself; the initiator merges and pushes those. Records a
//! writer was not allowed to write are refused, as from gossip. The agent
//! (over a QUIC stream) and `bench sim` (over its simulated network) run the
//! same steps.

use mesh_proto::gossip::SyncMessage;

use super::catalog::{CatalogCore, OwnershipError};

/// What one step produced: the message to send back, if any, and the
/// records refused for their writer.
#[derive(Debug, Default)]
pub struct Step {
    /// The answer to send.
    pub reply: Option<SyncMessage>,
    /// Records refused (the caller logs them).
    pub refused: Vec<OwnershipError>,
}

/// The message that opens a round.
pub fn open(core: &CatalogCore) -> SyncMessage {
    SyncMessage::Digest(core.digest())
}

/// Handles one message of a round and returns what to send back.
pub fn step(core: &mut CatalogCore, message: SyncMessage) -> Step {
    match message {
        SyncMessage::Digest(digest) => Step {
            reply: Some(SyncMessage::Records {
                records: core.catalog().newer_than(&digest),
                wanted: core.catalog().wanted_from(&digest),
            }),
            refused: Vec::new(),
        },
        SyncMessage::Records { records, wanted } => {
            let refused = merge(core, records);
            Step {
                reply: Some(SyncMessage::Push(core.catalog().select(&wanted))),
                refused,
            }
        }
        SyncMessage::Push(records) => Step {
            reply: None,
            refused: merge(core, records),
        },
        // Answered with ours; the comparison is the transport's to act on.
        SyncMessage::Summary(_) => Step {
            reply: Some(SyncMessage::Summary(core.catalog().summary())),
            refused: Vec::new(),
        },
    }
}

fn merge(core: &mut CatalogCore, records: Vec<mesh_proto::Record>) -> Vec<OwnershipError> {
    core.apply_remote_all(records)
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use mesh_proto::catalog::{Catalog, Definition, Health, Instance, RecordBody, RecordKey};

    use super::*;

    use crate::test_support::node;

    fn definition(name: &str) -> RecordBody {
        RecordBody::Definition(Definition {
            name: name.to_owned(),
            version: "1".to_owned(),
            ..Default::default()
        })
    }

    fn own_instance(core: &mut CatalogCore, id: &str, now: u64) {
        let instance = Instance {
            id: id.to_owned(),
            service: "web".to_owned(),
            node: core.node_id().clone(),
            address: SocketAddr::from(([127, 0, 0, 1], 80)),
            deployment_id: None,
            tags: Vec::new(),
            health: Health::Passing,
        };
        core.write(
            RecordKey::Instance(id.to_owned()),
            RecordBody::Instance(instance),
            now,
        );
    }

    /// Runs a whole round between `a` (initiator) and `b`.
    fn round(a: &mut CatalogCore, b: &mut CatalogCore) -> usize {
        let mut messages = 1;
        let mut to_b = Some(open(a));
        let mut at_b = true;
        while let Some(message) = to_b.take() {
            let target = if at_b { &mut *b } else { &mut *a };
            let step = step(target, message);
            assert!(step.refused.is_empty());
            if let Some(reply) = step.reply {
                messages += 1;
                to_b = Some(reply);
                at_b = !at_b;
            }
        }
        messages
    }

    #[test]
    fn one_round_gives_both_sides_what_each_lacked() {
        let mut a = CatalogCore::new(node("a"), Catalog::new());
        let mut b = CatalogCore::new(node("b"), Catalog::new());
        own_instance(&mut a, "a-1", 1_000);
        own_instance(&mut b, "b-1", 1_000);
        b.write(
            RecordKey::Definition("web".into()),
            definition("web"),
            1_001,
        );
        let messages = round(&mut a, &mut b);
        assert_eq!(messages, 3, "digest, records and wanted, push");
        assert_eq!(a.digest(), b.digest());
        assert_eq!(a.snapshot().service("web").expect("web").instances.len(), 2);
    }

    #[test]
    fn a_catalog_larger_than_one_message_arrives_over_several_rounds() {
        use mesh_proto::catalog::MAX_SYNC_RECORDS;
        let mut a = CatalogCore::new(node("a"), Catalog::new());
        let mut b = CatalogCore::new(node("b"), Catalog::new());
        let total = 2 * MAX_SYNC_RECORDS + 100;
        // b learnt them from c in one batch (c's own writes one by one
        // would rebuild c's local view each time, quadratic in a test of
        // this size).
        let records: Vec<mesh_proto::Record> = (0..total)
            .map(|i| {
                let instance = Instance {
                    id: format!("c-{i}"),
                    service: format!("web-{}", i % 256),
                    node: node("c"),
                    address: SocketAddr::from(([127, 0, 0, 1], 80)),
                    deployment_id: None,
                    tags: Vec::new(),
                    health: Health::Passing,
                };
                mesh_proto::Record {
                    key: RecordKey::Instance(instance.id.clone()),
                    version: mesh_proto::Version {
                        hlc: mesh_proto::Hlc {
                            wall_ms: 1_000,
                            logical: 0,
                        },
                        writer: node("c"),
                    },
                    body: RecordBody::Instance(instance),
                }
            })
            .collect();
        assert!(b.apply_remote_all(records).is_empty());
        let mut rounds = 0;
        while a.digest() != b.digest() {
            rounds += 1;
            assert!(rounds <= 3, "three rounds carry {total} records");
            let Some(SyncMessage::Records { records, wanted }) = step(&mut b, open(&a)).reply
            else {
                panic!("a digest is answered with records");
            };
            assert!(records.len() <= MAX_SYNC_RECORDS && wanted.len() <= MAX_SYNC_RECORDS);
            step(&mut a, SyncMessage::Records { records, wanted });
        }
        assert_eq!(rounds, 3);
        let held: usize = a
            .snapshot()
            .services()
            .map(|(_, e)| e.instances.len())
            .sum();
        assert_eq!(held, total);
    }

    #[test]
    fn a_forged_record_in_a_push_is_refused() {
        let mut a = CatalogCore::new(node("a"), Catalog::new());
        let mut c = CatalogCore::new(node("c"), Catalog::new());
        own_instance(&mut c, "c-1", 1_000);
        let mut forged = c.records();
        for record in &mut forged {
            record.version.writer = node("mallory");
        }
        let step = step(&mut a, SyncMessage::Push(forged));
        assert_eq!(step.refused.len(), 1);
        assert!(a.snapshot().service("web").is_none());
    }
}

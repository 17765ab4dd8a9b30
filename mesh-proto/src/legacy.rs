//! Readers for what older wire versions wrote to disk, so an upgraded agent
//! keeps its catalog snapshot. Gossip between nodes of different wire
//! versions is refused (counted as decode errors): upgrade a cluster's nodes
//! together.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::catalog::{
    Definition, Instance, NodeMeta, Protocol, Record, RecordBody, RecordKey, Requirements,
};
use crate::codec::{self, DecodeError};
use crate::hlc::Version;

/// Decodes a catalog snapshot (`Vec<Record>`) written by this version or by
/// wire version 1.
pub fn decode_snapshot(bytes: &[u8], limit: usize) -> Result<Vec<Record>, DecodeError> {
    match codec::decode::<Vec<Record>>(bytes, limit) {
        Err(DecodeError::UnsupportedVersion { found: 1 }) => {
            let records: Vec<RecordV1> = codec::decode_version(bytes, limit, 1)?;
            Ok(records.into_iter().map(Record::from).collect())
        }
        other => other,
    }
}

/// A definition as wire version 1 wrote it (no `protocol`).
#[derive(Deserialize)]
struct DefinitionV1 {
    name: String,
    version: String,
    port: Option<u16>,
    image: Option<String>,
    endpoints: BTreeMap<String, String>,
    client_sdks: BTreeMap<String, String>,
    requirements: Requirements,
    content_hash: String,
}

#[derive(Deserialize)]
enum RecordBodyV1 {
    Definition(DefinitionV1),
    Instance(Instance),
    Node(NodeMeta),
    Tombstone,
}

#[derive(Deserialize)]
struct RecordV1 {
    key: RecordKey,
    version: Version,
    body: RecordBodyV1,
}

impl From<RecordV1> for Record {
    fn from(old: RecordV1) -> Self {
        let body = match old.body {
            RecordBodyV1::Definition(d) => RecordBody::Definition(Definition {
                name: d.name,
                version: d.version,
                port: d.port,
                image: d.image,
                endpoints: d.endpoints,
                client_sdks: d.client_sdks,
                requirements: d.requirements,
                protocol: Protocol::Http,
                content_hash: d.content_hash,
            }),
            RecordBodyV1::Instance(i) => RecordBody::Instance(i),
            RecordBodyV1::Node(n) => RecordBody::Node(n),
            RecordBodyV1::Tombstone => RecordBody::Tombstone,
        };
        Record {
            key: old.key,
            version: old.version,
            body,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hlc::Hlc;
    use crate::identity::NodeId;
    use serde::Serialize;

    /// Wire version 1's definition, written as that version's agents did.
    #[derive(Serialize)]
    struct WrittenV1 {
        name: String,
        version: String,
        port: Option<u16>,
        image: Option<String>,
        endpoints: BTreeMap<String, String>,
        client_sdks: BTreeMap<String, String>,
        requirements: Requirements,
        content_hash: String,
    }

    #[derive(Serialize)]
    enum BodyV1 {
        Definition(WrittenV1),
    }

    #[derive(Serialize)]
    struct RecV1 {
        key: RecordKey,
        version: Version,
        body: BodyV1,
    }

    #[test]
    fn a_version_1_snapshot_is_read_with_http_as_the_protocol() {
        let version = Version {
            hlc: Hlc {
                wall_ms: 5,
                logical: 0,
            },
            writer: NodeId::new("n1").expect("valid id"),
        };
        let old = vec![RecV1 {
            key: RecordKey::Definition("billing".into()),
            version: version.clone(),
            body: BodyV1::Definition(WrittenV1 {
                name: "billing".into(),
                version: "1.2".into(),
                port: Some(8080),
                image: None,
                endpoints: BTreeMap::new(),
                client_sdks: BTreeMap::new(),
                requirements: Requirements {
                    hard_rtt_ms: Some(20),
                    ..Requirements::default()
                },
                content_hash: "abc".into(),
            }),
        }];
        let mut bytes = vec![1u8];
        bytes.extend(postcard::to_allocvec(&old).expect("encodes"));
        let records = decode_snapshot(&bytes, 1 << 20).expect("reads version 1");
        let RecordBody::Definition(d) = &records[0].body else {
            panic!("expected a definition, got {:?}", records[0].body);
        };
        assert_eq!(d.name, "billing");
        assert_eq!(d.requirements.hard_rtt_ms, Some(20));
        assert_eq!(d.protocol, Protocol::Http);
        assert_eq!(records[0].version, version);
        // Anything else written as version 1 is refused, not misread.
        assert!(matches!(
            codec::decode::<Vec<Record>>(&bytes, 1 << 20),
            Err(DecodeError::UnsupportedVersion { found: 1 })
        ));
    }
}

//! The binary (postcard) layout of a [`Definition`], frozen at the fields of
//! the first release.
//!
//! Postcard is not self-describing: a struct is its fields in order, with no
//! names and no lengths, so a field added to `Definition` would shift every
//! later byte, and a catalog snapshot written by an older agent, or a record
//! gossiped by an older peer, could no longer be read (`#[serde(default)]`
//! only helps self-describing formats such as JSON). Fields added since then
//! travel instead inside `endpoints`, under keys starting with
//! [`EXTENSION_PREFIX`]: an older agent keeps them as opaque endpoints and
//! passes them on unchanged, a newer one lifts them back out. Extension keys
//! this build does not know stay in `endpoints`, so a record written by a
//! newer agent survives a trip through this one.
//!
//! JSON (the admin API) is human-readable and uses `Definition`'s own derive,
//! with every field named.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::catalog::{Definition, Protocol, Repository, Requirements};

/// Endpoint names starting with this are reserved for fields added to the
/// definition after the first release; the admin API refuses them as
/// endpoint names.
pub const EXTENSION_PREFIX: &str = "gossamer.ext.";
const HOST_PORT: &str = "gossamer.ext.host_port";
const REPOSITORY_URL: &str = "gossamer.ext.repository.url";
const REPOSITORY_CONTAINER_FILE: &str = "gossamer.ext.repository.container_file";
const PROTOCOL: &str = "gossamer.ext.protocol";

/// The first release's `Definition`, field for field and in order.
#[derive(Debug, Serialize, Deserialize)]
struct Wire {
    name: String,
    version: String,
    port: Option<u16>,
    image: Option<String>,
    endpoints: BTreeMap<String, String>,
    client_sdks: BTreeMap<String, String>,
    requirements: Requirements,
    content_hash: String,
}

pub(crate) fn serialize<S: Serializer>(d: &Definition, serializer: S) -> Result<S::Ok, S::Error> {
    if serializer.is_human_readable() {
        return d.serialize(serializer);
    }
    let mut endpoints = d.endpoints.clone();
    if let Some(port) = d.host_port {
        endpoints.insert(HOST_PORT.to_owned(), port.to_string());
    }
    if !d.protocol.is_http() {
        endpoints.insert(PROTOCOL.to_owned(), d.protocol.as_str().to_owned());
    }
    if let Some(repository) = &d.repository {
        endpoints.insert(REPOSITORY_URL.to_owned(), repository.url.clone());
        if let Some(file) = &repository.container_file {
            endpoints.insert(REPOSITORY_CONTAINER_FILE.to_owned(), file.clone());
        }
    }
    Wire {
        name: d.name.clone(),
        version: d.version.clone(),
        port: d.port,
        image: d.image.clone(),
        endpoints,
        client_sdks: d.client_sdks.clone(),
        requirements: d.requirements.clone(),
        content_hash: d.content_hash.clone(),
    }
    .serialize(serializer)
}

pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Definition, D::Error> {
    if deserializer.is_human_readable() {
        return Definition::deserialize(deserializer);
    }
    let mut wire = Wire::deserialize(deserializer)?;
    // A host port that does not parse (a buggy peer) stays an opaque endpoint
    // rather than failing the whole record.
    let host_port = match wire.endpoints.get(HOST_PORT).map(|v| v.parse::<u16>()) {
        Some(Ok(port)) => {
            wire.endpoints.remove(HOST_PORT);
            Some(port)
        }
        _ => None,
    };
    // A protocol this build does not know stays an opaque endpoint, and the
    // definition reads as the default.
    let protocol = match wire
        .endpoints
        .get(PROTOCOL)
        .and_then(|v| Protocol::parse(v))
    {
        Some(protocol) => {
            wire.endpoints.remove(PROTOCOL);
            protocol
        }
        None => Protocol::Http,
    };
    let repository = wire.endpoints.remove(REPOSITORY_URL).map(|url| Repository {
        url,
        container_file: wire.endpoints.remove(REPOSITORY_CONTAINER_FILE),
    });
    Ok(Definition {
        name: wire.name,
        version: wire.version,
        port: wire.port,
        image: wire.image,
        host_port,
        repository,
        endpoints: wire.endpoints,
        client_sdks: wire.client_sdks,
        requirements: wire.requirements,
        protocol,
        content_hash: wire.content_hash,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::{Record, RecordBody, RecordKey};
    use crate::codec;
    use crate::hlc::{Hlc, Version};
    use crate::identity::NodeId;

    /// A record as the first release wrote it, with `Wire` standing in for
    /// that release's `Definition` (same fields, same order).
    #[derive(Debug, Serialize, Deserialize)]
    enum OldBody {
        Definition(Wire),
    }
    #[derive(Debug, Serialize, Deserialize)]
    struct OldRecord {
        key: RecordKey,
        version: Version,
        body: OldBody,
    }

    fn version() -> Version {
        Version {
            hlc: Hlc {
                wall_ms: 1,
                logical: 0,
            },
            writer: NodeId::new("node-a").expect("valid id"),
        }
    }

    fn old_wire(endpoints: BTreeMap<String, String>) -> Wire {
        Wire {
            name: "billing".into(),
            version: "1.0".into(),
            port: Some(8080),
            image: Some("acme/billing:1".into()),
            endpoints,
            client_sdks: BTreeMap::from([("go".into(), "https://sdk/go".into())]),
            requirements: Requirements::default(),
            content_hash: "abc".into(),
        }
    }

    #[test]
    fn a_snapshot_of_the_first_release_still_decodes() {
        let old = vec![OldRecord {
            key: RecordKey::Definition("billing".into()),
            version: version(),
            body: OldBody::Definition(old_wire(BTreeMap::from([(
                "openapi".into(),
                "https://billing/openapi.json".into(),
            )]))),
        }];
        let bytes = codec::encode(&old).expect("encodes");
        let records: Vec<Record> = codec::decode(&bytes, 1 << 20).expect("old bytes decode");
        let RecordBody::Definition(d) = &records[0].body else {
            panic!("not a definition: {records:?}");
        };
        assert_eq!(d.image.as_deref(), Some("acme/billing:1"));
        assert_eq!(d.endpoints.len(), 1);
        assert_eq!((d.host_port, d.repository.clone()), (None, None));
    }

    #[test]
    fn new_fields_round_trip_and_an_older_agent_reads_the_rest() {
        let definition = Definition {
            name: "billing".into(),
            port: Some(8080),
            host_port: Some(18080),
            repository: Some(Repository {
                url: "https://github.com/acme/billing.git".into(),
                container_file: Some("deploy/Dockerfile".into()),
            }),
            endpoints: BTreeMap::from([("openapi".into(), "https://b/openapi.json".into())]),
            protocol: Protocol::Grpc,
            ..Definition::default()
        };
        let record = Record {
            key: RecordKey::Definition("billing".into()),
            version: version(),
            body: RecordBody::Definition(definition.clone()),
        };
        let bytes = codec::encode(&vec![record.clone()]).expect("encodes");
        let back: Vec<Record> = codec::decode(&bytes, 1 << 20).expect("decodes");
        assert_eq!(back, vec![record]);

        // The first release reads the same bytes: base fields intact, the
        // new ones as opaque endpoints it passes on unchanged.
        let old: Vec<OldRecord> = codec::decode(&bytes, 1 << 20).expect("old layout decodes");
        let OldBody::Definition(wire) = &old[0].body;
        assert_eq!(wire.port, Some(8080));
        assert_eq!(
            wire.endpoints.get(HOST_PORT).map(String::as_str),
            Some("18080")
        );
        assert_eq!(
            wire.endpoints.get(PROTOCOL).map(String::as_str),
            Some("grpc")
        );
        let again = codec::encode(&old).expect("re-encodes");
        let relayed: Vec<Record> = codec::decode(&again, 1 << 20).expect("decodes");
        assert_eq!(relayed[0].body, RecordBody::Definition(definition));
    }

    #[test]
    fn unknown_extension_keys_survive_and_a_bad_host_port_stays_opaque() {
        let endpoints = BTreeMap::from([
            ("gossamer.ext.future".to_owned(), "x".to_owned()),
            (HOST_PORT.to_owned(), "not-a-port".to_owned()),
            (PROTOCOL.to_owned(), "quic-of-the-future".to_owned()),
        ]);
        let old = vec![OldRecord {
            key: RecordKey::Definition("billing".into()),
            version: version(),
            body: OldBody::Definition(old_wire(endpoints.clone())),
        }];
        let bytes = codec::encode(&old).expect("encodes");
        let records: Vec<Record> = codec::decode(&bytes, 1 << 20).expect("decodes");
        let RecordBody::Definition(d) = &records[0].body else {
            panic!("not a definition");
        };
        assert_eq!(d.host_port, None);
        assert_eq!(d.protocol, Protocol::Http);
        assert_eq!(d.endpoints, endpoints);
    }
}

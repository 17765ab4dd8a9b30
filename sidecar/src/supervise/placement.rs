//! Placement by CPU and memory: each node advertises its CPU count and
//! memory in its metadata; what its instances reserve (their definitions'
//! `cpu_millis` and `memory_mb`) is subtracted to give what is free, and a
//! service fits a node when every copy's requirement fits in that.
//! Pure functions of the catalog, so they are tested without an agent.

use mesh_proto::catalog::{Catalog, Definition, Requirements};
use mesh_proto::NodeId;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tracing::{info, warn};

use super::ServiceSpec;
use crate::registry::Registry;

/// One node's resources.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeResources {
    /// Node id.
    pub node: String,
    /// Membership state (alive, suspect, down).
    pub state: String,
    /// CPUs advertised.
    pub cpus: u32,
    /// Memory advertised, MiB.
    pub memory_mb: u64,
    /// CPU reserved by the node's instances, thousandths of a core.
    pub reserved_cpu_millis: u64,
    /// Memory reserved by the node's instances, MiB.
    pub reserved_memory_mb: u64,
    /// CPU left, thousandths of a core.
    pub free_cpu_millis: u64,
    /// Memory left, MiB.
    pub free_memory_mb: u64,
    /// Instances on the node.
    pub instances: usize,
    /// Whether the service asked about fits (absent when none was asked).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fits: Option<bool>,
}

/// `GET /v1/placement[/{name}]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PlacementView {
    /// The service asked about, if any.
    pub service: Option<String>,
    /// Its CPU requirement per instance.
    pub cpu_millis: Option<u32>,
    /// Its memory requirement per instance.
    pub memory_mb: Option<u32>,
    /// Every node with metadata, in id order.
    pub nodes: Vec<NodeResources>,
}

/// Resources of `nodes` (id, state) from the catalog; the instances of
/// `except` (a service on a node) are not counted as reserved, so a service
/// about to be (re)started is not charged for its own old copies.
pub fn resources(
    catalog: &Catalog,
    nodes: &[(NodeId, String)],
    except: Option<(&NodeId, &str)>,
) -> Vec<NodeResources> {
    let mut out: Vec<NodeResources> = nodes
        .iter()
        .filter_map(|(id, state)| {
            let meta = catalog.nodes().find(|m| &m.node == id)?;
            Some(NodeResources {
                node: id.to_string(),
                state: state.clone(),
                cpus: meta.cpus,
                memory_mb: meta.memory_mb,
                reserved_cpu_millis: 0,
                reserved_memory_mb: 0,
                free_cpu_millis: 0,
                free_memory_mb: 0,
                instances: 0,
                fits: None,
            })
        })
        .collect();
    for instance in catalog.instances() {
        if except
            .is_some_and(|(node, service)| instance.node == *node && instance.service == service)
        {
            continue;
        }
        let Some(node) = out.iter_mut().find(|n| n.node == instance.node.as_str()) else {
            continue;
        };
        node.instances += 1;
        if let Some(definition) = catalog.definition(&instance.service) {
            let r = &definition.requirements;
            node.reserved_cpu_millis += u64::from(r.cpu_millis.unwrap_or(0));
            node.reserved_memory_mb += u64::from(r.memory_mb.unwrap_or(0));
        }
    }
    for node in &mut out {
        node.free_cpu_millis =
            (u64::from(node.cpus) * 1000).saturating_sub(node.reserved_cpu_millis);
        node.free_memory_mb = node.memory_mb.saturating_sub(node.reserved_memory_mb);
    }
    out.sort_by(|a, b| a.node.cmp(&b.node));
    out
}

/// True when `copies` instances needing `requirements` fit in what is free.
pub fn fits(node: &NodeResources, requirements: &Requirements, copies: u32) -> bool {
    let cpu = u64::from(requirements.cpu_millis.unwrap_or(0)) * u64::from(copies);
    let memory = u64::from(requirements.memory_mb.unwrap_or(0)) * u64::from(copies);
    node.free_cpu_millis >= cpu && node.free_memory_mb >= memory
}

/// Writes the requirements a `[[supervise]]` table declares into the
/// service's definition (keeping its other fields), so placement sees them.
pub(super) async fn declare_requirements(registry: &Registry, spec: &ServiceSpec) {
    if !spec.declares_requirements() {
        return;
    }
    let current = registry
        .catalog()
        .snapshot()
        .definition(&spec.name)
        .cloned();
    let mut definition = current.clone().unwrap_or_else(|| Definition {
        name: spec.name.clone(),
        ..Definition::default()
    });
    let declared = &spec.requirements;
    let r = &mut definition.requirements;
    r.cpu_millis = declared.cpu_millis.or(r.cpu_millis);
    r.memory_mb = declared.memory_mb.or(r.memory_mb);
    r.soft_rtt_ms = declared.soft_rtt_ms.or(r.soft_rtt_ms);
    r.hard_rtt_ms = declared.hard_rtt_ms.or(r.hard_rtt_ms);
    if current
        .as_ref()
        .is_some_and(|c| c.requirements == definition.requirements)
    {
        return;
    }
    // The same content hash the admin API computes for a written definition.
    definition.content_hash = String::new();
    let canonical = serde_json::to_vec(&definition).unwrap_or_default();
    definition.content_hash = Sha256::digest(&canonical)
        .iter()
        .take(16)
        .map(|b| format!("{b:02x}"))
        .collect();
    info!(service = %spec.name, requirements = ?definition.requirements, "writing the declared requirements to the service definition");
    if let Err(e) = registry.put_definition(definition).await {
        warn!(service = %spec.name, error = %e, hint = %e.hint, "cannot write the declared requirements");
    }
}

/// Warns when this node has no room for the service's copies; false when
/// the service's requirements are not known yet.
pub(super) fn warn_if_no_room(registry: &Registry, spec: &ServiceSpec) -> bool {
    let node = registry.node_id().clone();
    let (requirements, resources) = registry.catalog().read(|c| {
        let requirements = c.definition(&spec.name).map(|d| d.requirements.clone());
        let resources = resources(
            c,
            &[(node.clone(), "alive".to_owned())],
            Some((&node, &spec.name)),
        );
        (requirements, resources)
    });
    let Some(requirements) = requirements else {
        return false;
    };
    let Some(mine) = resources.first() else {
        return false;
    };
    if !fits(mine, &requirements, spec.scale) {
        warn!(
            node = %node,
            service = %spec.name,
            "this node does not fit {} cop{} of {}: it has {} CPU millis and {} MiB free, \
             each copy needs {} CPU millis and {} MiB (cpu_millis and memory_mb of the definition); \
             starting anyway. `gossamer nodes --fits {}` lists the nodes with room",
            spec.scale,
            if spec.scale == 1 { "y" } else { "ies" },
            spec.name,
            mine.free_cpu_millis,
            mine.free_memory_mb,
            requirements.cpu_millis.unwrap_or(0),
            requirements.memory_mb.unwrap_or(0),
            spec.name,
        );
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use mesh_proto::catalog::{
        Definition, Health, Instance, NodeMeta, Record, RecordBody, RecordKey,
    };
    use mesh_proto::{Hlc, Version};

    use crate::test_support::node;

    fn put(catalog: &mut Catalog, n: &mut u64, key: RecordKey, body: RecordBody) {
        *n += 1;
        catalog.apply(Record {
            key,
            version: Version {
                hlc: Hlc {
                    wall_ms: *n,
                    logical: 0,
                },
                writer: node("w"),
            },
            body,
        });
    }

    fn catalog() -> Catalog {
        let mut catalog = Catalog::new();
        let mut n = 0;
        for (id, cpus, memory_mb) in [("a", 2, 4096), ("b", 8, 1024)] {
            put(
                &mut catalog,
                &mut n,
                RecordKey::Node(node(id)),
                RecordBody::Node(NodeMeta {
                    node: node(id),
                    cpus,
                    memory_mb,
                    zone: None,
                    agent_version: "t".into(),
                    coordinate: None,
                }),
            );
        }
        let definition = |name: &str, cpu, mem| Definition {
            name: name.into(),
            version: String::new(),
            port: None,
            image: None,
            host_port: None,
            repository: None,
            endpoints: Default::default(),
            client_sdks: Default::default(),
            requirements: Requirements {
                cpu_millis: Some(cpu),
                memory_mb: Some(mem),
                ..Requirements::default()
            },
            ..Definition::default()
        };
        for d in [definition("db", 1500, 2048), definition("web", 250, 128)] {
            put(
                &mut catalog,
                &mut n,
                RecordKey::Definition(d.name.clone()),
                RecordBody::Definition(d),
            );
        }
        for (id, service, on) in [
            ("db-1", "db", "a"),
            ("web-1", "web", "b"),
            ("web-2", "web", "b"),
        ] {
            put(
                &mut catalog,
                &mut n,
                RecordKey::Instance(id.into()),
                RecordBody::Instance(Instance {
                    id: id.into(),
                    service: service.into(),
                    node: node(on),
                    address: "127.0.0.1:1".parse().expect("addr"),
                    deployment_id: None,
                    tags: vec![],
                    health: Health::Passing,
                }),
            );
        }
        catalog
    }

    #[test]
    fn free_is_capacity_minus_what_instances_reserve() {
        let catalog = catalog();
        let nodes = [
            (node("a"), "alive".to_owned()),
            (node("b"), "alive".to_owned()),
        ];
        let r = resources(&catalog, &nodes, None);
        assert_eq!(r[0].node, "a");
        assert_eq!((r[0].free_cpu_millis, r[0].free_memory_mb), (500, 2048));
        assert_eq!((r[1].free_cpu_millis, r[1].free_memory_mb), (7500, 768));
        assert_eq!(r[1].instances, 2);
        let db = catalog.definition("db").expect("db").requirements.clone();
        assert!(!fits(&r[0], &db, 1));
        assert!(!fits(&r[1], &db, 1), "b has CPU but not memory");
        let web = catalog.definition("web").expect("web").requirements.clone();
        assert!(fits(&r[0], &web, 2));
        assert!(!fits(&r[0], &web, 3));
        // Not charged for its own copies: db fits a again when restarting there.
        let again = resources(&catalog, &nodes, Some((&node("a"), "db")));
        assert!(fits(&again[0], &db, 1));
        // A node without metadata is not listed; no requirement fits anywhere.
        let r = resources(&catalog, &[(node("zz"), "alive".into())], None);
        assert!(r.is_empty());
        assert!(fits(&again[1], &Requirements::default(), 64));
    }
}

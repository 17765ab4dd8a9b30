//! Candidate building: the instances of one service a caller may be routed
//! to, as the selection module sees them. Work is proportional to the
//! service's instances, never to the catalog or the member table.

use std::collections::BTreeMap;

use client::select::{Candidate, Requirements};
use mesh_proto::api::RttSource;
use mesh_proto::catalog::{Definition, Instance};
use mesh_proto::{NodeId, NodeIdentity};

use super::catalog::ServiceEntry;

/// Instances of `entry` on nodes that are up: this node, or active members.
pub fn live_instances<'e>(
    entry: &'e ServiceEntry,
    local: &NodeId,
    active: &BTreeMap<NodeId, NodeIdentity>,
) -> Vec<&'e Instance> {
    entry
        .instances
        .iter()
        .filter(|i| i.node == *local || active.contains_key(&i.node))
        .collect()
}

/// The selection module's view of `instances`, with each node's RTT from `rtt`.
pub fn candidates(
    instances: &[&Instance],
    local: &NodeId,
    mut rtt: impl FnMut(&NodeId) -> (Option<f64>, RttSource),
) -> Vec<Candidate> {
    instances
        .iter()
        .map(|instance| {
            let (rtt_ms, rtt_source) = rtt(&instance.node);
            Candidate {
                instance_id: instance.id.clone(),
                node: instance.node.to_string(),
                local: instance.node == *local,
                rtt_ms,
                rtt_source,
                health: instance.health,
                node_alive: true,
            }
        })
        .collect()
}

/// The definition's requirements made stricter by the caller's.
pub fn effective_requirements(
    definition: Option<&Definition>,
    caller: Requirements,
) -> Requirements {
    let defined = definition
        .map(|d| Requirements {
            hard_rtt_ms: d.requirements.hard_rtt_ms,
            soft_rtt_ms: d.requirements.soft_rtt_ms,
        })
        .unwrap_or_default();
    defined.stricter(caller)
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use mesh_proto::catalog::Health;

    use super::*;

    use crate::test_support::node;

    fn instance(id: &str, on: &str) -> Instance {
        Instance {
            id: id.to_owned(),
            service: "web".to_owned(),
            node: node(on),
            address: SocketAddr::from(([127, 0, 0, 1], 80)),
            deployment_id: None,
            tags: Vec::new(),
            health: Health::Passing,
        }
    }

    #[test]
    fn instances_of_nodes_not_up_are_left_out() {
        let entry = ServiceEntry {
            definition: None,
            instances: vec![
                instance("a-1", "a"),
                instance("b-1", "b"),
                instance("c-1", "c"),
            ],
            index: 1,
        };
        let mut active = BTreeMap::new();
        active.insert(
            node("b"),
            NodeIdentity {
                node_id: node("b"),
                addr: SocketAddr::from(([127, 0, 0, 2], 4300)),
                generation: 1,
            },
        );
        let live = live_instances(&entry, &node("a"), &active);
        let ids: Vec<&str> = live.iter().map(|i| i.id.as_str()).collect();
        assert_eq!(ids, ["a-1", "b-1"], "c is not a member that is up");
    }

    #[test]
    fn own_instances_are_local_and_others_carry_their_nodes_rtt() {
        let instances = [instance("a-1", "a"), instance("b-1", "b")];
        let built = candidates(&[&instances[0], &instances[1]], &node("a"), |n| {
            if n.as_str() == "b" {
                (Some(12.5), RttSource::Measured)
            } else {
                (Some(0.0), RttSource::Measured)
            }
        });
        assert!(built[0].local);
        assert!(!built[1].local);
        assert_eq!(built[1].rtt_ms, Some(12.5));
    }

    #[test]
    fn the_stricter_requirement_wins() {
        let mut definition = Definition {
            name: "web".into(),
            ..Default::default()
        };
        definition.requirements.hard_rtt_ms = Some(30);
        definition.requirements.soft_rtt_ms = Some(10);
        let caller = Requirements {
            hard_rtt_ms: Some(20),
            soft_rtt_ms: None,
        };
        let effective = effective_requirements(Some(&definition), caller);
        assert_eq!(effective.hard_rtt_ms, Some(20));
        assert_eq!(effective.soft_rtt_ms, Some(10));
        assert_eq!(effective_requirements(None, caller), caller);
    }
}

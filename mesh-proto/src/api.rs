//! JSON bodies of the admin API, shared by the agent and the SDK.

use serde::{Deserialize, Serialize};

use crate::catalog::{Definition, Health, Instance, NodeMeta};

/// Header carrying the catalog index on every admin answer.
pub const INDEX_HEADER: &str = "x-gossamer-index";

/// Every error answer: what went wrong and what to do about it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// What failed, with the offending value.
    pub error: String,
    /// What to do about it.
    pub hint: String,
}

/// SWIM state of a member as this node sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MemberState {
    /// Answering probes.
    Alive,
    /// Missed probes; may still be alive.
    Suspect,
    /// Declared failed, or left.
    Down,
}

impl MemberState {
    /// Lowercase name, as in JSON and metrics labels.
    pub fn as_str(self) -> &'static str {
        match self {
            MemberState::Alive => "alive",
            MemberState::Suspect => "suspect",
            MemberState::Down => "down",
        }
    }
}

/// Where an RTT figure came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum RttSource {
    /// Measured on the QUIC connection to the node (or the node itself).
    Measured,
    /// Estimated from network coordinates; never measured.
    Estimated,
    /// Neither measured nor estimated.
    #[default]
    Unknown,
}

/// Member counts by state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberCounts {
    /// Alive members, this node included.
    pub alive: usize,
    /// Suspect members.
    pub suspect: usize,
    /// Down members still remembered.
    pub down: usize,
}

/// `GET /v1/health`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthView {
    /// This node's id.
    pub node_id: String,
    /// True once the agent serves all its listeners.
    pub ready: bool,
    /// Members by state.
    pub members: MemberCounts,
    /// Current catalog index.
    pub catalog_index: u64,
    /// Agent version.
    pub version: String,
    /// `ok`, or `degraded` while something in `problems` needs an operator.
    #[serde(default = "ok_status")]
    pub status: String,
    /// What is wrong (for example the data dir refusing writes).
    #[serde(default)]
    pub problems: Vec<String>,
}

fn ok_status() -> String {
    "ok".to_owned()
}

/// One entry of `GET /v1/nodes`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeView {
    /// Node id.
    pub id: String,
    /// Advertised QUIC address.
    pub address: String,
    /// SWIM state.
    pub state: MemberState,
    /// Restart generation.
    pub generation: u64,
    /// Milliseconds since this node last heard from it (None for itself).
    pub last_heard_ms: Option<u64>,
    /// Round-trip time in ms, if known.
    pub rtt_ms: Option<f64>,
    /// Where `rtt_ms` came from.
    pub rtt_source: RttSource,
    /// True for the node answering.
    pub is_self: bool,
    /// Node metadata, once gossiped.
    pub meta: Option<NodeMeta>,
    /// What looks wrong with its advertised address (see [`address_warnings`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

/// Flags advertised addresses that peers cannot all reach: an address (IP
/// and port) shared by two live nodes, and a loopback address while some
/// other live node advertises a routable one (the loopback node is then
/// reachable from its own host only: start it with `--advertise`). Nodes
/// that are down are left out, since a restarted node may reuse the address
/// of the one it replaced.
pub fn address_warnings(nodes: &mut [NodeView]) {
    let live = |n: &NodeView| n.state != MemberState::Down;
    let ip = |n: &NodeView| {
        n.address
            .parse::<std::net::SocketAddr>()
            .ok()
            .map(|a| a.ip())
    };
    let routable_peer = |me: &NodeView, all: &[NodeView]| {
        all.iter()
            .filter(|n| live(n) && n.id != me.id)
            .any(|n| ip(n).is_some_and(|ip| !ip.is_loopback()))
    };
    let mut found: Vec<Vec<String>> = Vec::with_capacity(nodes.len());
    for me in nodes.iter() {
        let mut warnings = Vec::new();
        if live(me) {
            let sharing: Vec<&str> = nodes
                .iter()
                .filter(|n| live(n) && n.id != me.id && n.address == me.address)
                .map(|n| n.id.as_str())
                .collect();
            if !sharing.is_empty() {
                warnings.push(format!(
                    "address {} is also advertised by {}",
                    me.address,
                    sharing.join(", ")
                ));
            }
            if ip(me).is_some_and(|ip| ip.is_loopback()) && routable_peer(me, nodes) {
                warnings.push(format!(
                    "loopback address {} while peers are routable; only its own host reaches it",
                    me.address
                ));
            }
        }
        found.push(warnings);
    }
    for (node, warnings) in nodes.iter_mut().zip(found) {
        node.warnings = warnings;
    }
}

/// One entry of `GET /v1/services`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceSummary {
    /// Service name.
    pub name: String,
    /// Its definition, if one was written.
    pub definition: Option<Definition>,
    /// Live instances on nodes that are not down.
    pub instances: usize,
    /// Of those, instances whose health is passing.
    pub passing: usize,
}

/// Why an instance may not be used for a call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Ineligible {
    /// Its node's RTT exceeds the hard requirement.
    OverHardRtt {
        /// Node RTT in ms.
        rtt_ms: f64,
        /// The requirement in ms.
        hard_rtt_ms: u32,
    },
    /// Its node's RTT is unknown (or only estimated) while a hard requirement is set.
    RttUnknown,
    /// Its health is critical.
    Unhealthy,
    /// Ejected after consecutive failures, until the given time.
    Ejected {
        /// Milliseconds until it may be probed again.
        for_ms: u64,
    },
    /// Its node is not alive.
    NodeDown,
}

/// An instance as a caller on this node sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstanceView {
    /// The catalog record.
    #[serde(flatten)]
    pub instance: Instance,
    /// RTT from this node to the instance's node, in ms.
    pub rtt_ms: Option<f64>,
    /// Where `rtt_ms` came from.
    pub rtt_source: RttSource,
    /// Whether it lies within the soft requirement.
    pub within_soft: bool,
    /// Why it may not be used, when it may not.
    pub ineligible: Option<Ineligible>,
}

/// `GET /v1/services/{name}/instances`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstancesView {
    /// Service name.
    pub service: String,
    /// Effective hard requirement (stricter of definition and caller).
    pub hard_rtt_ms: Option<u32>,
    /// Effective soft requirement.
    pub soft_rtt_ms: Option<u32>,
    /// What the instances speak (`None`: no definition, so `http`).
    #[serde(default)]
    pub protocol: Option<crate::catalog::Protocol>,
    /// Usable instances, best first.
    pub eligible: Vec<InstanceView>,
    /// The rest, each with its reason.
    pub ineligible: Vec<InstanceView>,
}

/// `PUT /v1/instances`: register an instance on the answering node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegisterInstance {
    /// Service name.
    pub service: String,
    /// Port on 127.0.0.1 (shorthand for `address`).
    #[serde(default)]
    pub port: Option<u16>,
    /// Full address, when the service is not on loopback.
    #[serde(default)]
    pub address: Option<String>,
    /// Instance id; generated when absent.
    #[serde(default)]
    pub id: Option<String>,
    /// Deployment id.
    #[serde(default)]
    pub deployment_id: Option<String>,
    /// Tags.
    #[serde(default)]
    pub tags: Vec<String>,
    /// Initial health (default passing).
    #[serde(default)]
    pub health: Option<Health>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: &str, address: &str, state: MemberState) -> NodeView {
        NodeView {
            id: id.into(),
            address: address.into(),
            state,
            generation: 0,
            last_heard_ms: None,
            rtt_ms: None,
            rtt_source: RttSource::Unknown,
            is_self: false,
            meta: None,
            warnings: Vec::new(),
        }
    }

    #[test]
    fn shared_and_lone_loopback_addresses_are_flagged() {
        let mut nodes = vec![
            node("a", "10.0.0.1:4300", MemberState::Alive),
            node("b", "10.0.0.1:4300", MemberState::Alive),
            node("c", "127.0.0.1:4300", MemberState::Suspect),
            node("d", "10.0.0.4:4300", MemberState::Alive),
            node("old", "10.0.0.4:4300", MemberState::Down),
        ];
        address_warnings(&mut nodes);
        assert!(nodes[0].warnings[0].contains("also advertised by b"));
        assert!(nodes[1].warnings[0].contains("also advertised by a"));
        assert!(nodes[2].warnings[0].contains("loopback"), "{:?}", nodes[2]);
        assert!(nodes[3].warnings.is_empty(), "down nodes do not count");
        assert!(nodes[4].warnings.is_empty());
    }

    #[test]
    fn a_down_routable_peer_does_not_make_loopback_suspect() {
        let mut nodes = vec![
            node("a", "127.0.0.1:4300", MemberState::Alive),
            node("gone", "10.0.0.9:4300", MemberState::Down),
        ];
        address_warnings(&mut nodes);
        assert!(nodes.iter().all(|n| n.warnings.is_empty()), "{nodes:?}");
    }

    #[test]
    fn member_states_have_their_label_names() {
        let names =
            [MemberState::Alive, MemberState::Suspect, MemberState::Down].map(MemberState::as_str);
        assert_eq!(names, ["alive", "suspect", "down"]);
    }

    #[test]
    fn an_all_loopback_mesh_is_not_flagged() {
        let mut nodes = vec![
            node("a", "127.0.0.1:4300", MemberState::Alive),
            node("b", "127.0.0.1:4301", MemberState::Alive),
        ];
        address_warnings(&mut nodes);
        assert!(nodes.iter().all(|n| n.warnings.is_empty()));
    }
}

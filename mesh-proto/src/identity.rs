//! Who a node is: the identity foca gossips about.
//!
//! foca's known pitfall is that a restarted node keeps meeting its own stale
//! identity. The cure, used here, is that the identity's *address* (what foca
//! uses to tell members apart) is the node id, and every restart bumps a
//! generation, so the new incarnation always beats the old one.

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::names::{validate_id, InvalidName};

/// A node's stable name, unique in the cluster.
///
/// Decoding validates like [`NodeId::new`]: ids arrive from peers and end up
/// in metrics labels, logs and file names, so the wire must not bypass the rule.
///
/// Shared, not owned: foca compares members by this id (its `Identity::addr`
/// returns one per call), scanning its member list for every update a packet
/// carries, so a clone must not allocate (with a `String` inside, those
/// clones were a fifth of a 250-agent cluster's CPU). On the wire it is a
/// plain string.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize)]
#[serde(try_from = "String")]
pub struct NodeId(Arc<str>);

impl Serialize for NodeId {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl TryFrom<String> for NodeId {
    type Error = InvalidName;

    fn try_from(id: String) -> Result<Self, InvalidName> {
        Self::new(id)
    }
}

impl From<NodeId> for String {
    fn from(id: NodeId) -> String {
        id.0.to_string()
    }
}

impl NodeId {
    /// Validates and wraps a node id.
    pub fn new(id: impl Into<String>) -> Result<Self, InvalidName> {
        let id = id.into();
        validate_id("node id", &id)?;
        Ok(Self(Arc::from(id)))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for NodeId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The identity a node announces in SWIM: its id, where to reach it, and
/// which run of the process this is.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct NodeIdentity {
    /// Stable node name.
    pub node_id: NodeId,
    /// Address peers dial (QUIC, UDP).
    pub addr: SocketAddr,
    /// Grows on every restart so a restarted node replaces its old self at once.
    pub generation: u64,
}

impl foca::Identity for NodeIdentity {
    type Addr = NodeId;

    fn renew(&self) -> Option<Self> {
        Some(Self {
            generation: self.generation.wrapping_add(1),
            ..self.clone()
        })
    }

    fn addr(&self) -> NodeId {
        self.node_id.clone()
    }

    fn win_addr_conflict(&self, adversary: &Self) -> bool {
        self.generation > adversary.generation
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use foca::Identity;

    fn identity(generation: u64) -> NodeIdentity {
        NodeIdentity {
            node_id: NodeId::new("node-a").expect("valid id"),
            addr: "127.0.0.1:4300".parse().expect("valid addr"),
            generation,
        }
    }

    #[test]
    fn newer_generation_wins_and_renew_bumps_it() {
        let old = identity(3);
        let new = old.renew().expect("renewable");
        assert_eq!(new.generation, 4);
        assert_eq!(new.addr(), old.addr());
        assert!(new.win_addr_conflict(&old));
        assert!(!old.win_addr_conflict(&new));
    }

    #[test]
    fn a_node_id_shows_as_itself() {
        let id = NodeId::new("node-a.zone1").expect("valid id");
        assert_eq!(id.as_str(), "node-a.zone1");
        assert_eq!(id.to_string(), "node-a.zone1");
        assert_eq!(format!("[{id}]"), "[node-a.zone1]");
    }

    #[test]
    fn the_same_generation_does_not_win_a_conflict() {
        assert!(!identity(3).win_addr_conflict(&identity(3)));
    }
}

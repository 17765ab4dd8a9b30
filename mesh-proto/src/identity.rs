//! Who a node is: the identity foca gossips about.
//!
//! foca's known pitfall is that a restarted node keeps meeting its own stale
//! identity. The cure, used here, is that the identity's *address* (what foca
//! uses to tell members apart) is the node id, and every restart bumps a
//! generation, so the new incarnation always beats the old one.

use std::fmt;
use std::hash::{BuildHasher, RandomState};
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};

use serde::{Deserialize, Serialize};

use crate::names::{validate_id, InvalidName};

/// A node's stable name, unique in the cluster.
///
/// Decoding validates like [`NodeId::new`]: ids arrive from peers and end up
/// in metrics labels, logs and file names, so the wire must not bypass the rule.
///
/// Shared, not owned, and carrying its [`MemberKey`]: foca tells members apart
/// by `Identity::addr`, scanning its member list for every update a packet
/// carries. With the id itself as the address, every step of that scan cloned
/// and dropped two shared strings and chased them on the heap (over half of a
/// forming 500-agent cluster's CPU); the key is compared in place. On the wire
/// a node id is a plain string; the key never leaves the process.
#[derive(Debug, Clone)]
pub struct NodeId {
    text: Arc<str>,
    key: MemberKey,
}

/// How foca tells members apart: a keyed 64-bit hash of the node id.
///
/// The hash key is drawn at random once per process, so nobody outside can
/// pick a node id that collides with another's; two honest ids collide with
/// probability 2⁻⁶⁴ per pair (about 3·10⁻¹² for a 10,000-node cluster).
/// Nothing trusts the key for identity: certificates are checked against the
/// node id's text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MemberKey(u64);

impl MemberKey {
    fn of(text: &str) -> Self {
        static HASH_KEY: OnceLock<RandomState> = OnceLock::new();
        Self(HASH_KEY.get_or_init(RandomState::new).hash_one(text))
    }
}

impl PartialEq for NodeId {
    fn eq(&self, other: &Self) -> bool {
        self.key == other.key && self.text == other.text
    }
}

impl Eq for NodeId {}

impl PartialOrd for NodeId {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for NodeId {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.text.cmp(&other.text)
    }
}

impl std::hash::Hash for NodeId {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.text.hash(state);
    }
}

impl Serialize for NodeId {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.text)
    }
}

impl<'de> Deserialize<'de> for NodeId {
    /// Reads the id in place where the decoder can lend it (postcard from a
    /// packet can): foca decodes every member update of every SWIM packet,
    /// and an owned `String` first was one more allocation and copy each.
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = NodeId;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a node id")
            }

            fn visit_str<E: serde::de::Error>(self, id: &str) -> Result<NodeId, E> {
                NodeId::from_str_checked(id).map_err(E::custom)
            }
        }
        deserializer.deserialize_str(Visitor)
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
        id.text.to_string()
    }
}

impl NodeId {
    /// Validates and wraps a node id.
    pub fn new(id: impl Into<String>) -> Result<Self, InvalidName> {
        Self::from_str_checked(&id.into())
    }

    fn from_str_checked(id: &str) -> Result<Self, InvalidName> {
        validate_id("node id", id)?;
        Ok(Self {
            text: Arc::from(id),
            key: MemberKey::of(id),
        })
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The key foca compares members by.
    pub fn key(&self) -> MemberKey {
        self.key
    }
}

impl AsRef<str> for NodeId {
    fn as_ref(&self) -> &str {
        &self.text
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
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
    type Addr = MemberKey;

    fn renew(&self) -> Option<Self> {
        Some(Self {
            generation: self.generation.wrapping_add(1),
            ..self.clone()
        })
    }

    fn addr(&self) -> MemberKey {
        self.node_id.key()
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

//! Helpers shared by the crate's unit tests.

use mesh_proto::NodeId;

/// The node id `name`, which the test knows is valid.
pub fn node(name: &str) -> NodeId {
    NodeId::new(name).expect("valid node id")
}

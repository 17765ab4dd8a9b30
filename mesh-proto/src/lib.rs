//! Gossamer's wire types and the rules that act on them.
//!
//! Everything here is pure: no sockets, no clocks read directly, no tasks.
//! Callers pass the time and the bytes in and get decisions back, so every
//! rule is testable on its own and the cluster simulator (`bench sim`) can
//! drive the same code as the agent.
#![forbid(unsafe_code)]

pub mod api;
pub mod bounded;
pub mod catalog;
pub mod codec;
pub mod coordinate;
mod definition_wire;
pub mod frame;
pub mod gossip;
pub mod hlc;
pub mod identity;
pub mod names;

pub use catalog::{
    Catalog, Definition, Health, Instance, NodeMeta, Protocol, Record, RecordBody, RecordKey,
    Repository,
};
pub use hlc::{Hlc, HlcClock, Version};
pub use identity::{MemberKey, NodeId, NodeIdentity};

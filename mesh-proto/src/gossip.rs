//! What travels between agents besides the proxy: how each QUIC datagram and
//! stream is tagged, the custom broadcasts riding on foca, the RTT ping, and
//! the anti-entropy (push-pull) exchange.

use serde::{Deserialize, Serialize};

use crate::bounded;
use crate::catalog::{
    Digest, DigestSummary, Record, RecordKey, MAX_DIGEST_ENTRIES, MAX_SYNC_RECORDS,
};
use crate::coordinate::Coordinate;
use crate::hlc::Version;
use crate::identity::NodeIdentity;

/// Largest SWIM packet foca may produce: 1200-byte minimum QUIC MTU, less the
/// QUIC short header and datagram frame overhead (as corrosion does).
pub const MAX_SWIM_PACKET: usize = 1178;
/// Largest anti-entropy message accepted on a stream.
pub const MAX_SYNC_MESSAGE: usize = 16 * 1024 * 1024;
/// Most members a [`MemberList`] may hold.
pub const MAX_MEMBER_LIST: usize = 65_536;
/// Largest [`MemberList`] accepted on a stream (a member is under 64 bytes).
pub const MAX_MEMBER_LIST_MESSAGE: usize = 4 * 1024 * 1024;
/// Largest SWIM packet accepted on a unidirectional stream.
pub const MAX_STREAM_PACKET: usize = 64 * 1024;

/// First byte of every QUIC datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum DatagramKind {
    /// A foca (SWIM) packet follows.
    Swim = 0,
    /// An RTT ping ([`Ping`]) follows.
    Ping = 1,
    /// An RTT pong ([`Ping`] echoed with the responder's coordinate) follows.
    Pong = 2,
}

impl DatagramKind {
    /// Parses the tag byte.
    pub fn from_byte(b: u8) -> Option<Self> {
        match b {
            0 => Some(Self::Swim),
            1 => Some(Self::Ping),
            2 => Some(Self::Pong),
            _ => None,
        }
    }
}

/// First byte of every QUIC stream an agent opens to another.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum StreamKind {
    /// Unidirectional: one SWIM packet too large for a datagram.
    Swim = 0,
    /// Bidirectional: anti-entropy push-pull.
    Sync = 1,
    /// Bidirectional: a proxied HTTP request ([`crate::frame::ProxyFrame`] first).
    Proxy = 2,
    /// Bidirectional: the dialler asks who we are; we answer our encoded
    /// [`crate::identity::NodeIdentity`]. Joining uses it to learn a seed's id.
    Hello = 3,
    /// Bidirectional: a tunnelled TCP connection ([`crate::frame::ProxyFrame`]
    /// first; the receiver answers one [`crate::frame::TcpStatus`] byte, then
    /// bytes flow both ways).
    Tcp = 4,
    /// Bidirectional: a joiner asks for every member the receiver knows;
    /// the receiver answers a [`MemberList`] (push-pull on join: the
    /// joiner's announce pushes it, this pulls the rest at once).
    Members = 5,
}

impl StreamKind {
    /// Parses the tag byte.
    pub fn from_byte(b: u8) -> Option<Self> {
        match b {
            0 => Some(Self::Swim),
            1 => Some(Self::Sync),
            2 => Some(Self::Proxy),
            3 => Some(Self::Hello),
            4 => Some(Self::Tcp),
            5 => Some(Self::Members),
            _ => None,
        }
    }
}

/// An RTT probe; the pong carries it back with the responder's coordinate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Ping {
    /// Sender's sequence number, echoed back.
    pub seq: u64,
    /// The responder's network coordinate (pong only).
    pub coordinate: Option<Coordinate>,
}

/// A catalog change carried as a foca custom broadcast.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CatalogBroadcast {
    /// The record written or deleted.
    pub record: Record,
}

impl CatalogBroadcast {
    /// The key foca uses to replace older broadcasts of the same record.
    pub fn invalidation_key(&self) -> (RecordKey, Version) {
        (self.record.key.clone(), self.record.version.clone())
    }
}

/// Anti-entropy, one round: the initiator may first send a
/// [`SyncMessage::Summary`], answered with the partner's (equal ones end the
/// round); then it sends [`SyncMessage::Digest`]; the
/// responder answers with [`SyncMessage::Records`] holding what the initiator
/// lacks plus the keys it wants; the initiator ends with the wanted records.
///
/// Every vector is read with [`bounded::seq`]: a count over its limit is
/// refused, and the count a peer claims reserves no more than a few KiB
/// before the elements arrive.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum SyncMessage {
    /// Every key and version the sender holds (at most [`MAX_DIGEST_ENTRIES`]).
    Digest(#[serde(deserialize_with = "bounded::seq::<_, _, MAX_DIGEST_ENTRIES>")] Digest),
    /// Records the receiver lacks, and keys the sender wants back (at most
    /// [`MAX_SYNC_RECORDS`] of each).
    Records {
        /// Records newer than the receiver's digest.
        #[serde(deserialize_with = "bounded::seq::<_, _, MAX_SYNC_RECORDS>")]
        records: Vec<Record>,
        /// Keys the sender would like.
        #[serde(deserialize_with = "bounded::seq::<_, _, MAX_SYNC_RECORDS>")]
        wanted: Vec<RecordKey>,
    },
    /// The final push of wanted records.
    Push(#[serde(deserialize_with = "bounded::seq::<_, _, MAX_SYNC_RECORDS>")] Vec<Record>),
    /// Sent before the digest, and answered with the partner's own: equal
    /// summaries end the round (at rest, every round), so what a round
    /// costs does not grow with the catalog.
    Summary(DigestSummary),
}

/// A member as a joiner learns it from the member it joined through.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KnownMember {
    /// Its identity (id, address, generation).
    pub identity: NodeIdentity,
    /// Its SWIM incarnation, so an older word never overrides a newer one.
    pub incarnation: u16,
    /// True when the sender suspects it (down members are not sent).
    pub suspect: bool,
}

/// What a periodic member pull sends first: how many members the puller
/// knows (alive or suspect, itself included) and the sum of their FNV-1a
/// hashes (node id and generation). A partner whose own summary is equal
/// answers with an empty list, so a pull at rest costs a few bytes, not the
/// member table.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberSummary {
    /// Members counted.
    pub members: u64,
    /// Sum of each member's hash.
    pub hash: u64,
}

impl MemberSummary {
    /// The summary of `identities` (order does not matter).
    pub fn of<'a>(identities: impl IntoIterator<Item = &'a NodeIdentity>) -> Self {
        let mut summary = Self::default();
        for identity in identities {
            let entry = crate::catalog::fnv1a(&(identity.node_id.as_str(), identity.generation));
            summary.hash = summary.hash.wrapping_add(entry);
            summary.members += 1;
        }
        summary
    }
}

/// Largest member pull request read (a [`MemberSummary`] is at most 20 bytes).
pub const MAX_MEMBER_SUMMARY_MESSAGE: usize = 64;

/// The answer to a [`StreamKind::Members`] stream.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberList {
    /// Every alive or suspect member the sender knows besides itself (the
    /// joiner knows the sender already).
    #[serde(deserialize_with = "bounded::seq::<_, _, MAX_MEMBER_LIST>")]
    pub members: Vec<KnownMember>,
}

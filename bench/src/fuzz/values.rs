//! Random structured values of every wire type, whose encodings seed the
//! mutations: a mutated valid message gets past the version byte and the
//! first fields, so the deep parts of each decoder see hostile bytes too.
//!
//! The values lean towards what decoders find hard: empty and multi-byte
//! strings, the definition's extension keys, IPv6 addresses, NaN and
//! infinite coordinates, the largest integers.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV6};

use foca::{Header, Member, Message, State};
use mesh_proto::catalog::{Health, Protocol, Repository, Requirements, EXTENSION_PREFIX};
use mesh_proto::coordinate::Coordinate;
use mesh_proto::frame::ProxyFrame;
use mesh_proto::gossip::{
    CatalogBroadcast, KnownMember, MemberList, MemberSummary, Ping, SyncMessage,
};
use mesh_proto::{
    Definition, Hlc, Instance, NodeId, NodeIdentity, NodeMeta, Record, RecordBody, RecordKey,
    Version,
};
use rand::rngs::SmallRng;
use rand::{Rng, RngExt};

/// Characters a node id may hold.
const ID_CHARS: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._:-";
/// Fragments of free text: ASCII, multi-byte UTF-8, control characters.
const TEXT: &[&str] = &[
    "a",
    "echo",
    "billing",
    "-",
    ".",
    " ",
    "/",
    "\"",
    "\\",
    "\n",
    "\0",
    "é",
    "ß",
    "日本",
    "🦀",
    "\u{feff}",
    "\u{10ffff}",
    "{}",
    "%s",
    "http://",
    "gossamer.ext.",
];
/// Endpoint keys the wire layout gives a meaning to, and near misses.
const EXTENSION_KEYS: &[&str] = &[
    "gossamer.ext.host_port",
    "gossamer.ext.protocol",
    "gossamer.ext.repository.url",
    "gossamer.ext.repository.container_file",
    "gossamer.ext.future",
    "gossamer.ext.",
    "gossamer.ext.host_port ",
    "openapi",
];
/// Values those keys may carry: ports, protocols, near misses.
const EXTENSION_VALUES: &[&str] = &[
    "0",
    "80",
    "080",
    "+80",
    "65535",
    "65536",
    "-1",
    "",
    "http",
    "http2",
    "grpc",
    "tcp",
    "HTTP",
    "quic",
    "https://x/y.git",
    "Dockerfile",
];

/// A node id within the rules (1-128 of `[A-Za-z0-9._:-]`).
pub fn node_id(rng: &mut SmallRng) -> NodeId {
    let len = match rng.random_range(0..8) {
        0 => 128,
        1 => 1,
        _ => rng.random_range(1..24),
    };
    let id: String = (0..len)
        .map(|_| char::from(ID_CHARS[rng.random_range(0..ID_CHARS.len())]))
        .collect();
    NodeId::new(id).unwrap_or_else(|_| unreachable!("built from the allowed characters"))
}

/// Free text of up to about `max` bytes.
pub fn text(rng: &mut SmallRng, max: usize) -> String {
    let mut out = String::new();
    let target = rng.random_range(0..=max);
    while out.len() < target {
        if rng.random_bool(0.5) {
            out.push(char::from(rng.random_range(b'a'..=b'z')));
        } else {
            out.push_str(TEXT[rng.random_range(0..TEXT.len())]);
        }
    }
    out
}

fn maybe<T>(rng: &mut SmallRng, f: impl FnOnce(&mut SmallRng) -> T) -> Option<T> {
    rng.random_bool(0.5).then(|| f(rng))
}

/// An integer that is often 0, 1 or the largest of its type.
fn edgy_u64(rng: &mut SmallRng) -> u64 {
    match rng.random_range(0..6) {
        0 => 0,
        1 => u64::MAX,
        2 => rng.random_range(0..300),
        _ => rng.next_u64() >> rng.random_range(0..64),
    }
}

fn edgy_u32(rng: &mut SmallRng) -> u32 {
    u32::try_from(edgy_u64(rng) & u64::from(u32::MAX)).unwrap_or(u32::MAX)
}

/// An address; IPv6 ones carry no flow info or scope, which serde's
/// compact form leaves out.
pub fn socket_addr(rng: &mut SmallRng) -> SocketAddr {
    let port = if rng.random_bool(0.2) {
        0
    } else {
        rng.random()
    };
    if rng.random_bool(0.6) {
        SocketAddr::from((Ipv4Addr::from(rng.random::<u32>()), port))
    } else {
        SocketAddr::V6(SocketAddrV6::new(
            Ipv6Addr::from(rng.random::<u128>()),
            port,
            0,
            0,
        ))
    }
}

/// A float that is often one a decoder or a comparison trips on.
fn edgy_f64(rng: &mut SmallRng) -> f64 {
    match rng.random_range(0..12) {
        0 => f64::NAN,
        1 => f64::INFINITY,
        2 => f64::NEG_INFINITY,
        3 => -0.0,
        4 => f64::MIN_POSITIVE / 2.0,
        5 => f64::from_bits(rng.next_u64()),
        _ => rng.random_range(-1.0..1.0),
    }
}

/// A coordinate, finite most of the time.
pub fn coordinate(rng: &mut SmallRng) -> Coordinate {
    let mut c = Coordinate::origin();
    let wild = rng.random_bool(0.2);
    let component = |rng: &mut SmallRng| {
        if wild {
            edgy_f64(rng)
        } else {
            rng.random_range(-0.5..0.5)
        }
    };
    for v in &mut c.vec {
        *v = component(rng);
    }
    c.error = component(rng);
    c.adjustment = component(rng);
    c.height = component(rng);
    c
}

/// A version with a random HLC and writer.
pub fn version(rng: &mut SmallRng) -> Version {
    Version {
        hlc: Hlc {
            wall_ms: edgy_u64(rng),
            logical: edgy_u32(rng),
        },
        writer: node_id(rng),
    }
}

/// A record key of any kind.
pub fn key(rng: &mut SmallRng) -> RecordKey {
    match rng.random_range(0..3) {
        0 => RecordKey::Definition(text(rng, 20)),
        1 => RecordKey::Instance(text(rng, 20)),
        _ => RecordKey::Node(node_id(rng)),
    }
}

fn text_map(rng: &mut SmallRng, max: usize, extensions: bool) -> BTreeMap<String, String> {
    let n = rng.random_range(0..=max);
    (0..n)
        .map(|_| {
            if extensions && rng.random_bool(0.6) {
                let key = EXTENSION_KEYS[rng.random_range(0..EXTENSION_KEYS.len())];
                let value = if rng.random_bool(0.7) {
                    EXTENSION_VALUES[rng.random_range(0..EXTENSION_VALUES.len())].to_owned()
                } else {
                    text(rng, 12)
                };
                (key.to_owned(), value)
            } else if rng.random_bool(0.1) {
                (format!("{EXTENSION_PREFIX}{}", text(rng, 8)), text(rng, 8))
            } else {
                (text(rng, 8), text(rng, 16))
            }
        })
        .collect()
}

/// A definition using every field, its extension keys included.
pub fn definition(rng: &mut SmallRng) -> Definition {
    let protocols = [
        Protocol::Http,
        Protocol::Http2,
        Protocol::Grpc,
        Protocol::Tcp,
    ];
    Definition {
        name: text(rng, 16),
        version: text(rng, 8),
        port: maybe(rng, |r| r.random()),
        image: maybe(rng, |r| text(r, 24)),
        host_port: maybe(rng, |r| r.random()),
        repository: maybe(rng, |r| Repository {
            url: text(r, 24),
            container_file: maybe(r, |r| text(r, 12)),
        }),
        endpoints: text_map(rng, 4, true),
        client_sdks: text_map(rng, 2, false),
        requirements: Requirements {
            soft_rtt_ms: maybe(rng, edgy_u32),
            hard_rtt_ms: maybe(rng, edgy_u32),
            cpu_millis: maybe(rng, edgy_u32),
            memory_mb: maybe(rng, edgy_u32),
        },
        protocol: protocols[rng.random_range(0..protocols.len())],
        content_hash: text(rng, 16),
    }
}

fn instance(rng: &mut SmallRng) -> Instance {
    let health = [Health::Passing, Health::Warning, Health::Critical];
    let tags = rng.random_range(0..4);
    Instance {
        id: text(rng, 20),
        service: text(rng, 12),
        node: node_id(rng),
        address: socket_addr(rng),
        deployment_id: maybe(rng, |r| text(r, 12)),
        tags: (0..tags).map(|_| text(rng, 8)).collect(),
        health: health[rng.random_range(0..health.len())],
    }
}

fn node_meta(rng: &mut SmallRng) -> NodeMeta {
    NodeMeta {
        node: node_id(rng),
        cpus: edgy_u32(rng),
        memory_mb: edgy_u64(rng),
        zone: maybe(rng, |r| text(r, 12)),
        agent_version: text(rng, 12),
        coordinate: maybe(rng, coordinate),
    }
}

/// A record body of any kind.
pub fn record_body(rng: &mut SmallRng) -> RecordBody {
    match rng.random_range(0..4) {
        0 => RecordBody::Definition(definition(rng)),
        1 => RecordBody::Instance(instance(rng)),
        2 => RecordBody::Node(node_meta(rng)),
        _ => RecordBody::Tombstone,
    }
}

/// A record of any kind.
pub fn record(rng: &mut SmallRng) -> Record {
    Record {
        key: key(rng),
        version: version(rng),
        body: record_body(rng),
    }
}

/// A catalog broadcast.
pub fn broadcast(rng: &mut SmallRng) -> CatalogBroadcast {
    CatalogBroadcast {
        record: record(rng),
    }
}

/// An anti-entropy message of any of its four kinds.
pub fn sync_message(rng: &mut SmallRng) -> SyncMessage {
    let n = rng.random_range(0..6);
    match rng.random_range(0..4) {
        3 => SyncMessage::Summary(mesh_proto::catalog::DigestSummary {
            entries: rng.random(),
            hash: rng.random(),
        }),
        0 => SyncMessage::Digest((0..n * 3).map(|_| (key(rng), version(rng))).collect()),
        1 => SyncMessage::Records {
            records: (0..n).map(|_| record(rng)).collect(),
            wanted: (0..rng.random_range(0..6)).map(|_| key(rng)).collect(),
        },
        _ => SyncMessage::Push((0..n).map(|_| record(rng)).collect()),
    }
}

/// A member list, as a pull answers.
pub fn member_list(rng: &mut SmallRng) -> MemberList {
    let n = rng.random_range(0..40);
    MemberList {
        members: (0..n)
            .map(|_| KnownMember {
                identity: identity(rng),
                incarnation: rng.random(),
                suspect: rng.random(),
            })
            .collect(),
    }
}

/// A member pull's summary.
pub fn member_summary(rng: &mut SmallRng) -> MemberSummary {
    MemberSummary {
        members: edgy_u64(rng),
        hash: rng.random(),
    }
}

/// An RTT ping or pong.
pub fn ping(rng: &mut SmallRng) -> Ping {
    Ping {
        seq: edgy_u64(rng),
        coordinate: maybe(rng, coordinate),
    }
}

/// A node's SWIM identity.
pub fn identity(rng: &mut SmallRng) -> NodeIdentity {
    NodeIdentity {
        node_id: node_id(rng),
        addr: socket_addr(rng),
        generation: edgy_u64(rng),
    }
}

/// A proxy frame that fits its size limit.
pub fn proxy_frame(rng: &mut SmallRng) -> ProxyFrame {
    ProxyFrame {
        instance_id: text(rng, 40),
        address: socket_addr(rng),
        service: text(rng, 63),
        timeout_ms: edgy_u32(rng),
    }
}

/// A foca member update.
pub fn member(rng: &mut SmallRng) -> Member<NodeIdentity> {
    let state = [State::Alive, State::Suspect, State::Down];
    Member::new(
        identity(rng),
        rng.random(),
        state[rng.random_range(0..state.len())],
    )
}

/// A foca packet header with any message.
pub fn header(rng: &mut SmallRng) -> Header<NodeIdentity> {
    let probe_number = rng.random();
    let message = match rng.random_range(0..11) {
        0 => Message::Ping(probe_number),
        1 => Message::Ack(probe_number),
        2 => Message::PingReq {
            target: identity(rng),
            probe_number,
        },
        3 => Message::IndirectPing {
            origin: identity(rng),
            probe_number,
        },
        4 => Message::IndirectAck {
            target: identity(rng),
            probe_number,
        },
        5 => Message::ForwardedAck {
            origin: identity(rng),
            probe_number,
        },
        6 => Message::Announce,
        7 => Message::Feed,
        8 => Message::Gossip,
        9 => Message::Broadcast,
        _ => Message::TurnUndead,
    };
    Header {
        src: identity(rng),
        src_incarnation: rng.random(),
        dst: identity(rng),
        message,
    }
}

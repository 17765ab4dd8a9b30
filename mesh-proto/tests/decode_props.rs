//! Every decoder a peer can reach, fed hostile bytes: random input, strict
//! prefixes of valid messages, valid messages with flipped bits, oversized
//! input and absurd length claims. A decoder may say `Err`; it must never
//! panic, never read past its size limit, and never allocate what the input
//! cannot describe. The cargo-fuzz targets in `mesh-proto/fuzz` run the same
//! decoders for longer; these run on stable in CI.
//!
//! "What the input cannot describe" is measured: every decode here runs
//! under a counting allocator and must hold at most [`HEAP_PER_BYTE`] bytes
//! of heap per input byte, plus [`HEAP_SLACK`]. The factor is what the
//! in-memory types cost against their most compact encoding (a 7-byte
//! tombstone record is a 264-byte `Record`, and a growing `Vec` briefly
//! holds its old and new buffers); a decoder that preallocated from a
//! length claim would blow it at once.

mod common;

/// Measures the heap each decode uses, on the decoding thread only (the
/// tests of this binary run in parallel). A test-only global allocator is
/// the one place this workspace needs `unsafe`: it forwards every call to
/// the system allocator and keeps two thread-local counters.
mod heap {
    use std::alloc::{GlobalAlloc, Layout, System};
    use std::cell::Cell;

    thread_local! {
        static LIVE: Cell<isize> = const { Cell::new(0) };
        static PEAK: Cell<isize> = const { Cell::new(0) };
    }

    /// The system allocator, counting this thread's live bytes and their peak.
    pub struct Tracking;

    fn note(delta: isize) {
        let _ = LIVE.try_with(|live| {
            let now = live.get() + delta;
            live.set(now);
            let _ = PEAK.try_with(|peak| peak.set(peak.get().max(now)));
        });
    }

    fn size(layout: Layout) -> isize {
        isize::try_from(layout.size()).unwrap_or(isize::MAX)
    }

    // SAFETY: every call is forwarded unchanged to `System`; the counters
    // are const-initialised thread-local cells, which never allocate.
    unsafe impl GlobalAlloc for Tracking {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            note(size(layout));
            // SAFETY: the caller upholds `GlobalAlloc::alloc`'s contract.
            unsafe { System.alloc(layout) }
        }

        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            note(-size(layout));
            // SAFETY: the caller upholds `GlobalAlloc::dealloc`'s contract.
            unsafe { System.dealloc(ptr, layout) }
        }

        unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
            // Counted as if the old block lived until the new one exists.
            note(isize::try_from(new_size).unwrap_or(isize::MAX));
            // SAFETY: the caller upholds `GlobalAlloc::realloc`'s contract.
            let out = unsafe { System.realloc(ptr, layout, new_size) };
            note(-size(layout));
            out
        }
    }

    /// Runs `f`; returns its result and the most heap it held at once.
    pub fn peak_during<T>(f: impl FnOnce() -> T) -> (T, usize) {
        let start = LIVE.with(Cell::get);
        PEAK.with(|peak| peak.set(start));
        let out = f();
        let peak = PEAK.with(Cell::get) - start;
        (out, usize::try_from(peak).unwrap_or(0))
    }
}

#[global_allocator]
static HEAP: heap::Tracking = heap::Tracking;

/// Heap a decode may hold per input byte (see the file's doc).
const HEAP_PER_BYTE: usize = 128;
/// Heap any decode may hold whatever its input (error values, small buffers).
const HEAP_SLACK: usize = 64 * 1024;

/// Runs one decode under the heap counter and checks the bound.
fn bounded<T>(what: &str, input_len: usize, decode: impl FnOnce() -> T) -> T {
    let (out, peak) = heap::peak_during(decode);
    let bound = HEAP_PER_BYTE * input_len + HEAP_SLACK;
    assert!(
        peak <= bound,
        "decoding {input_len} bytes as {what} held {peak} bytes of heap; the bound is {bound}"
    );
    out
}

use std::fmt::Debug;
use std::net::SocketAddr;

use common::{coordinate, key, record, socket_addr, version};
use mesh_proto::catalog::{MAX_DIGEST_ENTRIES, MAX_SYNC_RECORDS};
use mesh_proto::codec::{self, DecodeError, WIRE_VERSION};
use mesh_proto::coordinate::{Coordinate, DIMENSIONS};
use mesh_proto::frame::{ProxyFrame, MAX_FRAME};
use mesh_proto::gossip::{
    CatalogBroadcast, DatagramKind, Ping, StreamKind, SyncMessage, MAX_STREAM_PACKET,
    MAX_SWIM_PACKET, MAX_SYNC_MESSAGE,
};
use mesh_proto::{NodeId, NodeIdentity, Record};
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::Index;
use serde::de::DeserializeOwned;
use serde::Serialize;

/// Size limits the agent uses for each message type.
const BROADCAST_LIMIT: usize = MAX_STREAM_PACKET;
const RECORD_LIMIT: usize = MAX_STREAM_PACKET;
const PING_LIMIT: usize = MAX_SWIM_PACKET;
const IDENTITY_LIMIT: usize = MAX_SWIM_PACKET;
const SYNC_LIMIT: usize = MAX_SYNC_MESSAGE;

/// Decodes `bytes` as `T`; when that succeeds, the value must survive another
/// trip through the codec byte for byte. Bytes rather than `==`, because a
/// coordinate may hold a NaN, which is not equal to itself.
fn exercise<T: Serialize + DeserializeOwned>(bytes: &[u8], limit: usize) -> bool {
    let decoded = bounded(std::any::type_name::<T>(), bytes.len(), || {
        codec::decode::<T>(bytes, limit)
    });
    let Ok(value) = decoded else {
        return false;
    };
    let encoded = codec::encode(&value).expect("a decoded value encodes");
    let again: T = codec::decode(&encoded, encoded.len()).expect("a re-encoded value decodes");
    let encoded_again = codec::encode(&again).expect("encodes twice");
    assert_eq!(encoded, encoded_again, "re-encoding is not stable");
    true
}

/// Runs every decoder over the same bytes.
fn exercise_all(bytes: &[u8]) {
    exercise::<CatalogBroadcast>(bytes, BROADCAST_LIMIT);
    exercise::<SyncMessage>(bytes, SYNC_LIMIT);
    exercise::<Ping>(bytes, PING_LIMIT);
    exercise::<Record>(bytes, RECORD_LIMIT);
    exercise::<NodeIdentity>(bytes, IDENTITY_LIMIT);
    if let Ok(frame) = bounded("ProxyFrame", bytes.len(), || ProxyFrame::decode(bytes)) {
        let encoded = frame.encode().expect("a decoded frame encodes");
        assert_eq!(ProxyFrame::decode(&encoded[2..]), Ok(frame));
    }
    // Reading a frame off a stream: the prefix first, then that many bytes.
    if let [a, b, rest @ ..] = bytes {
        if let Ok(len) = ProxyFrame::body_len([*a, *b]) {
            assert!(len <= MAX_FRAME);
            if let Some(body) = rest.get(..len) {
                let _ = bounded("ProxyFrame", body.len(), || ProxyFrame::decode(body));
            }
        }
    }
}

/// A valid message of each type, already encoded, with the limit it is read under.
fn valid_encoding() -> impl Strategy<Value = (String, Vec<u8>, usize)> {
    fn enc<T: Serialize>(name: &str, v: &T, limit: usize) -> (String, Vec<u8>, usize) {
        (
            name.to_owned(),
            codec::encode(v).expect("valid values encode"),
            limit,
        )
    }
    prop_oneof![
        broadcast().prop_map(|v| enc("broadcast", &v, BROADCAST_LIMIT)),
        sync_message().prop_map(|v| enc("sync", &v, SYNC_LIMIT)),
        ping().prop_map(|v| enc("ping", &v, PING_LIMIT)),
        record().prop_map(|v| enc("record", &v, RECORD_LIMIT)),
        identity().prop_map(|v| enc("identity", &v, IDENTITY_LIMIT)),
        proxy_frame().prop_map(|v| (
            "frame".to_owned(),
            v.encode().expect("valid frames encode"),
            MAX_FRAME + 2
        )),
    ]
}

/// Decodes `bytes` as the type `name` stands for.
fn decode_as(name: &str, bytes: &[u8], limit: usize) -> Result<(), DecodeError> {
    match name {
        "broadcast" => codec::decode::<CatalogBroadcast>(bytes, limit).map(drop),
        "sync" => codec::decode::<SyncMessage>(bytes, limit).map(drop),
        "ping" => codec::decode::<Ping>(bytes, limit).map(drop),
        "record" => codec::decode::<Record>(bytes, limit).map(drop),
        "identity" => codec::decode::<NodeIdentity>(bytes, limit).map(drop),
        "frame" => {
            let [a, b, body @ ..] = bytes else {
                return Err(DecodeError::Empty);
            };
            let len = ProxyFrame::body_len([*a, *b])?;
            let body = body.get(..len).ok_or(DecodeError::Empty)?;
            ProxyFrame::decode(body).map(drop)
        }
        other => panic!("unknown message type {other}"),
    }
}

/// A coordinate with any bit pattern at all, NaN and infinities included:
/// the codec must carry what a (broken) peer sends; validity is checked later.
fn wire_coordinate() -> impl Strategy<Value = Coordinate> {
    prop_oneof![
        coordinate(),
        (vec(any::<f64>(), DIMENSIONS), any::<[f64; 3]>()).prop_map(|(v, [e, a, h])| {
            let mut c = Coordinate::origin();
            c.vec.copy_from_slice(&v);
            c.error = e;
            c.adjustment = a;
            c.height = h;
            c
        }),
    ]
}

fn ping() -> impl Strategy<Value = Ping> {
    (any::<u64>(), proptest::option::of(wire_coordinate()))
        .prop_map(|(seq, coordinate)| Ping { seq, coordinate })
}

fn broadcast() -> impl Strategy<Value = CatalogBroadcast> {
    record().prop_map(|record| CatalogBroadcast { record })
}

fn sync_message() -> impl Strategy<Value = SyncMessage> {
    prop_oneof![
        vec((key(), version()), 0..16).prop_map(SyncMessage::Digest),
        (vec(record(), 0..6), vec(key(), 0..6))
            .prop_map(|(records, wanted)| SyncMessage::Records { records, wanted }),
        vec(record(), 0..6).prop_map(SyncMessage::Push),
    ]
}

fn identity() -> impl Strategy<Value = NodeIdentity> {
    ("[A-Za-z0-9._:-]{1,128}", socket_addr(), any::<u64>()).prop_map(|(id, addr, generation)| {
        NodeIdentity {
            node_id: NodeId::new(id).expect("regex yields valid ids"),
            addr,
            generation,
        }
    })
}

fn proxy_frame() -> impl Strategy<Value = ProxyFrame> {
    ("\\PC{0,40}", socket_addr(), "[a-z0-9-]{1,63}", any::<u32>()).prop_map(
        |(instance_id, address, service, timeout_ms)| ProxyFrame {
            instance_id,
            address,
            service,
            timeout_ms,
        },
    )
}

/// Round trip of one typed value, with `==` where the value allows it.
fn round_trips<T>(value: &T, limit: usize) -> Result<(), TestCaseError>
where
    T: Serialize + DeserializeOwned + PartialEq + Debug,
{
    let bytes = codec::encode(value).expect("valid values encode");
    prop_assert!(bytes.len() <= limit, "{} bytes over {}", bytes.len(), limit);
    let back: T = codec::decode(&bytes, limit).expect("valid encodings decode");
    prop_assert_eq!(&back, value);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn random_bytes_never_panic(bytes in vec(any::<u8>(), 0..512)) {
        exercise_all(&bytes);
    }

    #[test]
    fn random_bodies_behind_a_valid_version_byte_never_panic(body in vec(any::<u8>(), 0..512)) {
        let mut bytes = vec![WIRE_VERSION];
        bytes.extend_from_slice(&body);
        exercise_all(&bytes);
    }

    #[test]
    fn valid_values_round_trip(
        b in broadcast(),
        s in sync_message(),
        r in record(),
        i in identity(),
        f in proxy_frame(),
        p in ping(),
    ) {
        round_trips(&b, BROADCAST_LIMIT)?;
        round_trips(&s, SYNC_LIMIT)?;
        round_trips(&r, RECORD_LIMIT)?;
        round_trips(&i, IDENTITY_LIMIT)?;
        let frame = f.encode().expect("frames encode");
        prop_assert_eq!(ProxyFrame::body_len([frame[0], frame[1]])?, frame.len() - 2);
        prop_assert_eq!(ProxyFrame::decode(&frame[2..])?, f);
        // A ping may carry NaN, so compare its bytes, not its value.
        prop_assert!(exercise::<Ping>(&codec::encode(&p).expect("pings encode"), PING_LIMIT));
    }

    #[test]
    fn every_strict_prefix_of_a_valid_message_is_rejected(
        (name, bytes, limit) in valid_encoding(),
        cuts in vec(any::<Index>(), 1..24),
    ) {
        prop_assert!(decode_as(&name, &bytes, limit).is_ok());
        // Short messages are cut everywhere; long ones at sampled places.
        let lens: Vec<usize> = if bytes.len() <= 64 {
            (0..bytes.len()).collect()
        } else {
            cuts.iter().map(|c| c.index(bytes.len())).collect()
        };
        for len in lens {
            let prefix = &bytes[..len];
            prop_assert!(decode_as(&name, prefix, limit).is_err(), "{} decoded from {} of {} bytes", name, len, bytes.len());
            exercise_all(prefix);
        }
    }

    #[test]
    fn valid_messages_with_flipped_bits_never_panic(
        (name, bytes, limit) in valid_encoding(),
        flips in vec((any::<Index>(), 0u8..8), 1..6),
    ) {
        let mut bytes = bytes;
        for (at, bit) in flips {
            let i = at.index(bytes.len());
            bytes[i] ^= 1 << bit;
        }
        let _ = decode_as(&name, &bytes, limit);
        exercise_all(&bytes);
    }

    #[test]
    fn input_over_the_limit_is_refused_before_parsing(
        (name, bytes, _) in valid_encoding(),
        limit in any::<Index>(),
    ) {
        // Frames have a fixed limit, checked in a unit test below.
        prop_assume!(name != "frame");
        // Even a perfectly valid message is refused, with its real length,
        // when it is longer than the caller allows.
        let limit = limit.index(bytes.len());
        prop_assert_eq!(
            decode_as(&name, &bytes, limit),
            Err(DecodeError::TooLarge { len: bytes.len(), limit })
        );
    }

    #[test]
    fn the_frame_length_prefix_is_bounded(prefix in any::<[u8; 2]>()) {
        let claimed = usize::from(u16::from_be_bytes(prefix));
        match ProxyFrame::body_len(prefix) {
            Ok(len) => prop_assert!(len == claimed && len <= MAX_FRAME),
            Err(e) => prop_assert_eq!(e, DecodeError::TooLarge { len: claimed, limit: MAX_FRAME }),
        }
    }
}

#[test]
fn every_decoder_refuses_one_byte_over_its_limit_without_parsing() {
    // Zeros would parse as something for several types; the size check
    // must come first all the same.
    let cases: [(&str, usize); 5] = [
        ("broadcast", BROADCAST_LIMIT),
        ("sync", SYNC_LIMIT),
        ("ping", PING_LIMIT),
        ("record", RECORD_LIMIT),
        ("identity", IDENTITY_LIMIT),
    ];
    for (name, limit) in cases {
        let mut bytes = vec![0u8; limit + 1];
        bytes[0] = WIRE_VERSION;
        assert_eq!(
            decode_as(name, &bytes, limit),
            Err(DecodeError::TooLarge {
                len: limit + 1,
                limit
            }),
            "{name}"
        );
    }
    let frame = vec![WIRE_VERSION; MAX_FRAME + 1];
    assert_eq!(
        ProxyFrame::decode(&frame),
        Err(DecodeError::TooLarge {
            len: MAX_FRAME + 1,
            limit: MAX_FRAME
        })
    );
}

#[test]
fn every_tag_byte_parses_to_one_kind_or_none() {
    for byte in 0..=u8::MAX {
        if let Some(kind) = DatagramKind::from_byte(byte) {
            assert_eq!(kind as u8, byte);
        }
        if let Some(kind) = StreamKind::from_byte(byte) {
            assert_eq!(kind as u8, byte);
        }
    }
    for kind in [DatagramKind::Swim, DatagramKind::Ping, DatagramKind::Pong] {
        assert_eq!(DatagramKind::from_byte(kind as u8), Some(kind));
    }
    for kind in [
        StreamKind::Swim,
        StreamKind::Sync,
        StreamKind::Proxy,
        StreamKind::Hello,
        StreamKind::Tcp,
    ] {
        assert_eq!(StreamKind::from_byte(kind as u8), Some(kind));
    }
}

#[test]
fn the_densest_valid_messages_stay_within_the_heap_bound() {
    // The most compact record: an empty definition name, a one-letter
    // writer, a tombstone. Seven bytes on the wire, a 264-byte `Record`.
    let record = Record {
        key: mesh_proto::RecordKey::Definition(String::new()),
        version: mesh_proto::Version {
            hlc: mesh_proto::Hlc {
                wall_ms: 0,
                logical: 0,
            },
            writer: NodeId::new("a").expect("valid id"),
        },
        body: mesh_proto::RecordBody::Tombstone,
    };
    let digest_entry = (record.key.clone(), record.version.clone());
    for n in [1usize, 100, 10_000, MAX_SYNC_RECORDS] {
        let messages = [
            SyncMessage::Push(vec![record.clone(); n]),
            SyncMessage::Digest(vec![digest_entry.clone(); n * 16]),
            SyncMessage::Records {
                records: vec![record.clone(); n],
                wanted: vec![record.key.clone(); n],
            },
        ];
        for message in messages {
            let bytes = codec::encode(&message).expect("encodes");
            let back = bounded("SyncMessage", bytes.len(), || {
                codec::decode::<SyncMessage>(&bytes, SYNC_LIMIT)
            });
            // Not assert_eq: a failure would print 10^5 records.
            assert!(
                back.as_ref() == Ok(&message),
                "{n} records: {:?}",
                back.err()
            );
        }
    }
    // One past a count limit is refused, whatever the bytes allow: a
    // peer's message costs at most the limit in records.
    let over = [
        SyncMessage::Push(vec![record.clone(); MAX_SYNC_RECORDS + 1]),
        SyncMessage::Records {
            records: Vec::new(),
            wanted: vec![record.key.clone(); MAX_SYNC_RECORDS + 1],
        },
        SyncMessage::Digest(vec![digest_entry; MAX_DIGEST_ENTRIES + 1]),
    ];
    for message in over {
        let bytes = codec::encode(&message).expect("encodes");
        assert!(bytes.len() <= SYNC_LIMIT, "fits the byte limit");
        let back = bounded("SyncMessage", bytes.len(), || {
            codec::decode::<SyncMessage>(&bytes, SYNC_LIMIT)
        });
        assert!(
            matches!(back, Err(DecodeError::Malformed(_))),
            "over the count limit: {:?}",
            back.err()
        );
    }
    let broadcast = codec::encode(&CatalogBroadcast { record }).expect("encodes");
    assert!(bounded("CatalogBroadcast", broadcast.len(), || {
        codec::decode::<CatalogBroadcast>(&broadcast, BROADCAST_LIMIT)
    })
    .is_ok());
}

/// Runs a decode of a 20-byte input, which may hold no more than 4 KiB.
fn tiny<T>(decode: impl FnOnce() -> T) -> T {
    let (out, peak) = heap::peak_during(decode);
    assert!(peak <= 4096, "a 20-byte input held {peak} bytes of heap");
    out
}

/// postcard's varint encoding of `n`.
fn varint(mut n: u64) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let byte = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            out.push(byte);
            return out;
        }
        out.push(byte | 0x80);
    }
}

/// A message of `len` bytes: `head`, then zeros.
fn padded(head: &[u8], len: usize) -> Vec<u8> {
    let mut bytes = head.to_vec();
    bytes.resize(len.max(head.len()), 0);
    bytes
}

#[test]
fn absurd_length_claims_fail_fast_instead_of_allocating() {
    // If any of these preallocated what they claim, the test would abort
    // for want of memory (2^32 digest entries is hundreds of GiB); passing
    // is the check.
    for claim in [1u64 << 32, u64::from(u32::MAX), u64::MAX, 1 << 20] {
        let n = varint(claim);
        // Each input is 20 bytes: whatever it claims, a few KiB of heap at most.

        // SyncMessage::Digest (variant 0) with `claim` entries, in 20 bytes.
        let head = [&[WIRE_VERSION, 0][..], &n].concat();
        assert!(tiny(|| codec::decode::<SyncMessage>(&padded(&head, 20), SYNC_LIMIT)).is_err());

        // SyncMessage::Records (variant 1) and Push (variant 2) likewise.
        for variant in [1u8, 2] {
            let head = [&[WIRE_VERSION, variant][..], &n].concat();
            assert!(tiny(|| codec::decode::<SyncMessage>(&padded(&head, 20), SYNC_LIMIT)).is_err());
        }

        // A record whose key is a definition name of `claim` bytes.
        let head = [&[WIRE_VERSION, 0][..], &n].concat();
        assert!(tiny(|| codec::decode::<Record>(&padded(&head, 20), RECORD_LIMIT)).is_err());
        assert!(
            tiny(|| codec::decode::<CatalogBroadcast>(&padded(&head, 20), BROADCAST_LIMIT))
                .is_err()
        );

        // An identity whose node id claims `claim` bytes.
        let head = [&[WIRE_VERSION][..], &n].concat();
        assert!(
            tiny(|| codec::decode::<NodeIdentity>(&padded(&head, 20), IDENTITY_LIMIT)).is_err()
        );

        // A proxy frame whose instance id claims `claim` bytes.
        assert!(tiny(|| ProxyFrame::decode(&padded(&head, 20))).is_err());
    }
}

#[test]
fn a_digest_that_claims_more_entries_than_it_carries_is_rejected() {
    // Real entries follow the claim: the decoder reads them and then runs
    // out, rather than trusting the count.
    let entry = (
        mesh_proto::RecordKey::Definition("echo".into()),
        mesh_proto::Version {
            hlc: mesh_proto::Hlc {
                wall_ms: 1,
                logical: 0,
            },
            writer: NodeId::new("node-a").expect("valid id"),
        },
    );
    let honest = codec::encode(&SyncMessage::Digest(vec![entry; 3])).expect("encodes");
    assert!(codec::decode::<SyncMessage>(&honest, SYNC_LIMIT).is_ok());
    // Byte 2 is the entry count (3); claim 2^32 instead.
    assert_eq!(honest[2], 3);
    let lying = [&honest[..2], &varint(1 << 32), &honest[3..]].concat();
    assert!(codec::decode::<SyncMessage>(&lying, SYNC_LIMIT).is_err());
}

#[test]
fn node_ids_are_validated_when_decoded() {
    // Same shape as NodeIdentity, but free to carry any string.
    #[derive(Serialize)]
    struct RawIdentity {
        node_id: String,
        addr: SocketAddr,
        generation: u64,
    }
    let addr: SocketAddr = "10.0.0.1:4300".parse().expect("addr");
    let encode = |id: &str| {
        codec::encode(&RawIdentity {
            node_id: id.into(),
            addr,
            generation: 1,
        })
        .expect("encodes")
    };
    assert!(codec::decode::<NodeIdentity>(&encode("node-a"), IDENTITY_LIMIT).is_ok());
    for bad in [
        "",
        "../etc/passwd",
        "a b",
        "node\n{evil=\"1\"}",
        &"x".repeat(129),
    ] {
        assert!(
            matches!(
                codec::decode::<NodeIdentity>(&encode(bad), IDENTITY_LIMIT),
                Err(DecodeError::Malformed(_))
            ),
            "{bad:?} was accepted"
        );
    }
}

#[test]
fn a_record_count_the_input_could_hold_reserves_only_a_few_kib() {
    // Found by `bench fuzz`: a sync message of a few KB claiming as many
    // records as it has bytes left. postcard lets such a claim through
    // (the bytes could hold that many), and serde's vector reserved up to
    // 1 MiB for it (3,970 records of 264 bytes) before the first record
    // failed to parse: 1,048,320 bytes of heap for a 3,794-byte input.
    for len in [463usize, 745, 1243, 3794, 16 * 1024] {
        for variant in [1u8, 2] {
            let claim = varint((len - 4) as u64);
            let head = [&[WIRE_VERSION, variant][..], &claim].concat();
            let bytes = padded(&head, len);
            let decoded = bounded("SyncMessage", len, || {
                codec::decode::<SyncMessage>(&bytes, SYNC_LIMIT)
            });
            assert!(decoded.is_err(), "{len} bytes of zeros decoded");
        }
    }
}

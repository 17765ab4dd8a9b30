//! Property tests of the catalog merge and the hybrid logical clock: the
//! merge is a join (commutative, associative, idempotent), every delivery
//! order ends in the same catalog, tombstones obey their versions, the
//! anti-entropy exchange makes two catalogs equal, and clocks never repeat.

mod common;

use std::collections::BTreeMap;

use common::{catalog_of, join, key, live_body, pool, record, version};
use mesh_proto::catalog::Applied;
use mesh_proto::codec;
use mesh_proto::gossip::{SyncMessage, MAX_SYNC_MESSAGE};
use mesh_proto::{Catalog, Hlc, HlcClock, Record, RecordBody, RecordKey};
use proptest::prelude::*;
use proptest::sample::{subsequence, Index};

/// What the merge must compute: per key, the record with the highest version.
fn model<'a>(records: impl IntoIterator<Item = &'a Record>) -> BTreeMap<RecordKey, Record> {
    let mut best: BTreeMap<RecordKey, Record> = BTreeMap::new();
    for r in records {
        let newer = best.get(&r.key).is_none_or(|b| b.version < r.version);
        if newer {
            best.insert(r.key.clone(), r.clone());
        }
    }
    best
}

fn contents(catalog: &Catalog) -> BTreeMap<RecordKey, Record> {
    catalog
        .records()
        .map(|r| (r.key.clone(), r.clone()))
        .collect()
}

/// A pool of records and three catalogs built from parts of it.
fn three_catalogs() -> impl Strategy<Value = (Vec<Record>, Catalog, Catalog, Catalog)> {
    pool(24).prop_flat_map(|pool| {
        let n = pool.len();
        (
            Just(pool.clone()),
            subsequence(pool.clone(), 0..=n),
            subsequence(pool.clone(), 0..=n),
            subsequence(pool, 0..=n),
        )
            .prop_map(|(pool, a, b, c)| (pool, catalog_of(&a), catalog_of(&b), catalog_of(&c)))
    })
}

/// Every record of a pool, some of them again, in a shuffled order.
fn shuffled_with_duplicates() -> impl Strategy<Value = (Vec<Record>, Vec<Record>)> {
    (pool(24), proptest::collection::vec(any::<Index>(), 0..24)).prop_flat_map(|(pool, extra)| {
        let mut delivery = pool.clone();
        if !pool.is_empty() {
            delivery.extend(extra.iter().map(|i| i.get(&pool).clone()));
        }
        (Just(pool), Just(delivery).prop_shuffle())
    })
}

/// One anti-entropy round between `a` (initiator) and `b`, through the codec,
/// as the agents run it: digest →, records + wanted ←, push →.
fn push_pull(a: &mut Catalog, b: &mut Catalog) {
    fn wire(msg: &SyncMessage) -> SyncMessage {
        let bytes = codec::encode(msg).expect("sync messages encode");
        codec::decode(&bytes, MAX_SYNC_MESSAGE).expect("sync messages decode")
    }

    let SyncMessage::Digest(digest) = wire(&SyncMessage::Digest(a.digest())) else {
        panic!("a digest decodes as a digest");
    };
    let reply = wire(&SyncMessage::Records {
        records: b.newer_than(&digest),
        wanted: b.wanted_from(&digest),
    });
    let SyncMessage::Records { records, wanted } = reply else {
        panic!("records decode as records");
    };
    for r in records {
        a.apply(r);
    }
    let SyncMessage::Push(pushed) = wire(&SyncMessage::Push(a.select(&wanted))) else {
        panic!("a push decodes as a push");
    };
    for r in pushed {
        b.apply(r);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn merge_is_commutative((_, a, b, _) in three_catalogs()) {
        prop_assert_eq!(join(&a, &b), join(&b, &a));
    }

    #[test]
    fn merge_is_associative((_, a, b, c) in three_catalogs()) {
        prop_assert_eq!(join(&join(&a, &b), &c), join(&a, &join(&b, &c)));
    }

    #[test]
    fn merge_is_idempotent((_, a, b, _) in three_catalogs()) {
        prop_assert_eq!(join(&a, &a), a.clone());
        let ab = join(&a, &b);
        prop_assert_eq!(join(&ab, &b), ab.clone());
        // Merging what we already have reports no change.
        let mut again = ab.clone();
        prop_assert_eq!(again.merge(&ab), 0);
    }

    #[test]
    fn merge_keeps_the_newest_record_per_key((pool, a, b, _) in three_catalogs()) {
        let ab = join(&a, &b);
        let expected = model(a.records().chain(b.records()));
        prop_assert_eq!(contents(&ab), expected);
        // And nothing the pool did not contain appears.
        prop_assert!(ab.records().all(|r| pool.contains(r)));
    }

    #[test]
    fn any_delivery_order_with_duplicates_gives_the_same_catalog(
        (pool, delivery) in shuffled_with_duplicates()
    ) {
        let in_order = catalog_of(&pool);
        let shuffled = catalog_of(&delivery);
        prop_assert_eq!(&shuffled, &in_order);
        prop_assert_eq!(contents(&shuffled), model(&pool));
    }

    #[test]
    fn apply_reports_newer_exactly_when_the_version_grows(
        records in pool(24)
    ) {
        let mut catalog = Catalog::new();
        for r in records {
            let before = catalog.get(&r.key).map(|c| c.version.clone());
            let applied = catalog.apply(r.clone());
            let expect_newer = before.is_none_or(|v| v < r.version);
            prop_assert_eq!(applied == Applied::Newer, expect_newer);
            prop_assert!(catalog.get(&r.key).is_some_and(|c| c.version >= r.version));
        }
    }

    #[test]
    fn tombstones_beat_older_writes_and_lose_to_newer_ones(
        (key, v1, v2, live) in (key(), version(), version())
            .prop_filter("distinct versions", |(_, v1, v2)| v1 != v2)
            .prop_flat_map(|(key, v1, v2)| {
                let live = live_body(&key, &v1.writer);
                (Just(key), Just(v1), Just(v2), live)
            })
    ) {
        let write = Record { key: key.clone(), version: v1.clone(), body: live };
        let delete = Record { key: key.clone(), version: v2.clone(), body: RecordBody::Tombstone };
        let winner = if v2 > v1 { &delete } else { &write };
        for order in [[&write, &delete], [&delete, &write]] {
            let catalog = catalog_of(order);
            prop_assert_eq!(catalog.get(&key), Some(winner));
            let visible = match &key {
                RecordKey::Definition(name) => catalog.definition(name).is_some(),
                RecordKey::Instance(id) => catalog.instance(id).is_some(),
                RecordKey::Node(node) => catalog.nodes().any(|n| &n.node == node),
            };
            prop_assert_eq!(visible, !winner.is_tombstone());
        }
    }

    #[test]
    fn one_push_pull_round_makes_two_catalogs_equal((_, a, b, _) in three_catalogs()) {
        let expected = join(&a, &b);
        let (mut a, mut b) = (a, b);
        push_pull(&mut a, &mut b);
        prop_assert_eq!(&a, &expected);
        prop_assert_eq!(&b, &expected);
        // A second round has nothing left to move.
        let digest = a.digest();
        prop_assert!(b.newer_than(&digest).is_empty());
        prop_assert!(b.wanted_from(&digest).is_empty());
    }

    #[test]
    fn expiry_drops_only_tombstones_past_their_ttl(
        records in pool(24),
        now_ms in 0u64..40,
        ttl_ms in prop_oneof![0u64..25, Just(u64::MAX)],
    ) {
        let before = catalog_of(&records);
        let mut after = before.clone();
        let removed = after.expire_tombstones(now_ms, ttl_ms);
        prop_assert_eq!(removed, before.len() - after.len());
        for r in before.records() {
            let expired = r.is_tombstone() && r.version.hlc.wall_ms.saturating_add(ttl_ms) < now_ms;
            prop_assert_eq!(after.get(&r.key).is_none(), expired, "record {:?}", r);
        }
    }

    /// A late copy of a deleted record is stale while the tombstone is
    /// kept, and comes back once the tombstone expired: why the TTL must
    /// outlast any copy still travelling (anti-entropy, a node back from a
    /// partition).
    #[test]
    fn a_late_copy_is_stale_within_the_tombstone_ttl_and_resurrects_after_it(
        live in record().prop_filter("a live record", |r| !r.is_tombstone()),
        later_ms in 1u64..1_000,
        ttl_ms in 1u64..10_000,
    ) {
        let mut catalog = Catalog::new();
        prop_assert_eq!(catalog.apply(live.clone()), Applied::Newer);
        let mut version = live.version.clone();
        version.hlc.wall_ms += later_ms;
        let tombstone = Record {
            key: live.key.clone(),
            version: version.clone(),
            body: RecordBody::Tombstone,
        };
        prop_assert_eq!(catalog.apply(tombstone.clone()), Applied::Newer);

        // Up to the end of the TTL: kept, and the late copy changes nothing.
        let last_kept_ms = version.hlc.wall_ms + ttl_ms;
        prop_assert_eq!(catalog.expire_tombstones(last_kept_ms, ttl_ms), 0);
        prop_assert_eq!(catalog.apply(live.clone()), Applied::Stale);
        prop_assert_eq!(catalog.get(&live.key), Some(&tombstone));

        // Past it: gone, and the same late copy is a new record again.
        prop_assert_eq!(catalog.expire_tombstones(last_kept_ms + 1, ttl_ms), 1);
        prop_assert!(catalog.get(&live.key).is_none());
        prop_assert_eq!(catalog.apply(live.clone()), Applied::Newer);
        prop_assert_eq!(catalog.get(&live.key), Some(&live));
    }

    #[test]
    fn records_round_trip_through_the_codec(r in record()) {
        let bytes = codec::encode(&r).expect("records encode");
        let back: Record = codec::decode(&bytes, bytes.len()).expect("records decode");
        prop_assert_eq!(back, r);
    }

    #[test]
    fn one_clock_hands_out_strictly_increasing_timestamps(
        ops in proptest::collection::vec(clock_op(), 1..64)
    ) {
        let mut clock = HlcClock::default();
        let mut last: Option<Hlc> = None;
        for op in ops {
            match op {
                ClockOp::Tick(wall_ms) => {
                    let t = clock.tick(wall_ms);
                    prop_assert!(last.is_none_or(|l| l < t), "{:?} after {:?}", t, last);
                    prop_assert!(t.wall_ms >= wall_ms);
                    last = Some(t);
                }
                ClockOp::Observe(remote) => clock.observe(remote),
            }
        }
    }

    #[test]
    fn a_tick_after_observing_a_remote_timestamp_is_later_than_it(
        local in proptest::collection::vec(0u64..1_000_000, 0..8),
        remote in remote_hlc(),
        wall_ms in 0u64..2_000_000,
    ) {
        let mut clock = HlcClock::default();
        for w in local {
            clock.tick(w);
        }
        let before = clock.last();
        clock.observe(remote);
        let t = clock.tick(wall_ms);
        prop_assert!(t > remote, "{:?} not after observed {:?}", t, remote);
        prop_assert!(t > before);
    }
}

/// One step of a clock's life.
#[derive(Debug, Clone)]
enum ClockOp {
    /// A local event at this wall time (which may step backwards).
    Tick(u64),
    /// A timestamp arriving from another node.
    Observe(Hlc),
}

fn clock_op() -> impl Strategy<Value = ClockOp> {
    prop_oneof![
        3 => (0u64..2_000_000).prop_map(ClockOp::Tick),
        1 => remote_hlc().prop_map(ClockOp::Observe),
    ]
}

/// Remote timestamps, including a counter at its maximum (a peer that has
/// run hot, or a corrupt one). The largest wall time is left out: nothing
/// can follow `u64::MAX` ms, half a billion years from now.
fn remote_hlc() -> impl Strategy<Value = Hlc> {
    (
        prop_oneof![0u64..2_000_000, 0u64..u64::MAX],
        prop_oneof![any::<u32>(), Just(u32::MAX), Just(u32::MAX - 1), 0u32..4],
    )
        .prop_map(|(wall_ms, logical)| Hlc { wall_ms, logical })
}

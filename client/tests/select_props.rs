//! Property and statistical tests of `client::select`: whatever the
//! candidates, requirements and history, a pick keeps the promises.

use std::time::{Duration, Instant};

use client::select::{Balancer, BalancerConfig, Candidate, Outcome, Requirements};
use mesh_proto::api::{Ineligible, RttSource};
use mesh_proto::catalog::Health;
use proptest::prelude::*;

fn source() -> impl Strategy<Value = RttSource> {
    prop_oneof![
        Just(RttSource::Measured),
        Just(RttSource::Estimated),
        Just(RttSource::Unknown)
    ]
}

fn health() -> impl Strategy<Value = Health> {
    prop_oneof![
        3 => Just(Health::Passing),
        1 => Just(Health::Warning),
        1 => Just(Health::Critical)
    ]
}

fn candidates() -> impl Strategy<Value = Vec<Candidate>> {
    prop::collection::vec(
        (
            prop::option::weighted(0.9, 0.0f64..100.0),
            source(),
            health(),
            prop::bool::weighted(0.15),
            prop::bool::weighted(0.9),
        ),
        1..12,
    )
    .prop_map(|specs| {
        specs
            .into_iter()
            .enumerate()
            .map(
                |(i, (rtt_ms, rtt_source, health, local, node_alive))| Candidate {
                    instance_id: format!("i{i}"),
                    node: format!("node-{}", i % 4),
                    local,
                    rtt_ms,
                    rtt_source,
                    health,
                    node_alive,
                },
            )
            .collect()
    })
}

fn requirements() -> impl Strategy<Value = Requirements> {
    (prop::option::of(0u32..120), prop::option::of(0u32..120)).prop_map(
        |(hard_rtt_ms, soft_rtt_ms)| Requirements {
            hard_rtt_ms,
            soft_rtt_ms,
        },
    )
}

/// One step of a random history: pick (maybe excluding one instance), then
/// report a success or failure after `advance_ms`.
fn history() -> impl Strategy<Value = Vec<(Option<usize>, bool, u64)>> {
    prop::collection::vec(
        (
            prop::option::of(0usize..12),
            prop::bool::weighted(0.3),
            0u64..20_000,
        ),
        0..120,
    )
}

/// The RTT a hard requirement may trust under the default config.
fn trusted(c: &Candidate) -> Option<f64> {
    if c.local {
        return Some(0.0);
    }
    match c.rtt_source {
        RttSource::Measured => c.rtt_ms.filter(|r| r.is_finite()),
        _ => None,
    }
}

fn latency(ms: u64) -> Duration {
    Duration::from_millis(ms)
}

/// Drives `b` through `steps`, checking the ejection cap after each one.
fn replay(
    b: &mut Balancer,
    cs: &[Candidate],
    req: Requirements,
    steps: &[(Option<usize>, bool, u64)],
    mut now: Instant,
) -> Result<Instant, TestCaseError> {
    for &(exclude, success, advance_ms) in steps {
        let excluded: Vec<&str> = exclude
            .and_then(|i| cs.get(i))
            .map(|c| c.instance_id.as_str())
            .into_iter()
            .collect();
        if let Ok(p) = b.pick(cs, req, &excluded, now) {
            now += latency(advance_ms);
            let outcome = if success {
                Outcome::Success {
                    latency: latency(advance_ms),
                }
            } else {
                Outcome::Failure {
                    latency: latency(advance_ms),
                }
            };
            b.report(&p.instance_id, outcome, now);
        } else {
            now += latency(advance_ms);
        }
        let ejected = b
            .rank(cs, Requirements::default(), now)
            .ineligible
            .iter()
            .filter(|(_, why)| matches!(why, Ineligible::Ejected { .. }))
            .count();
        prop_assert!(ejected * 2 <= cs.len(), "{ejected} of {} ejected", cs.len());
    }
    Ok(now)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn a_pick_keeps_every_promise(
        cs in candidates(),
        req in requirements(),
        steps in history(),
        seed in any::<u64>(),
    ) {
        let mut b = Balancer::with_seed(BalancerConfig::default(), seed);
        let now = replay(&mut b, &cs, req, &steps, Instant::now())?;

        let ranking = b.rank(&cs, req, now);
        let result = b.pick(&cs, req, &[], now);

        // (3) rank and pick agree on eligibility.
        prop_assert_eq!(ranking.eligible.is_empty(), result.is_err(), "{:?}", result);
        prop_assert_eq!(ranking.eligible.len() + ranking.ineligible.len(), cs.len());
        let Ok(pick) = result else { return Ok(()) };
        let c = &cs[pick.index];
        prop_assert_eq!(&c.instance_id, &pick.instance_id);
        let ranked = ranking
            .eligible
            .iter()
            .find(|r| r.candidate.instance_id == pick.instance_id);
        prop_assert!(ranked.is_some(), "picked {} not ranked eligible", pick.instance_id);
        prop_assert_eq!(ranked.map(|r| r.within_soft), Some(pick.within_soft));

        // (1) the hard requirement holds.
        if let Some(hard) = req.hard_rtt_ms {
            let rtt = trusted(c);
            prop_assert!(
                rtt.is_some_and(|r| r <= f64::from(hard)),
                "picked {:?} under hard {}", c, hard
            );
        }
        // (2) within soft whenever anything eligible is.
        if ranking.eligible.iter().any(|r| r.within_soft) {
            prop_assert!(pick.within_soft);
            if let Some(soft) = req.soft_rtt_ms {
                prop_assert!(trusted(c).is_some_and(|r| r <= f64::from(soft)));
            }
        }
        // (4) never critical, never on a down node.
        prop_assert!(c.health != Health::Critical && c.node_alive);
        // Ineligible reasons are consistent with the candidate.
        for (c, why) in &ranking.ineligible {
            match why {
                Ineligible::NodeDown => prop_assert!(!c.node_alive),
                Ineligible::Unhealthy => prop_assert!(c.health == Health::Critical),
                Ineligible::OverHardRtt { rtt_ms, hard_rtt_ms } => {
                    prop_assert!(*rtt_ms > f64::from(*hard_rtt_ms));
                }
                Ineligible::RttUnknown => prop_assert!(trusted(c).is_none()),
                Ineligible::Ejected { .. } => {}
            }
        }
    }

    #[test]
    fn at_most_half_are_ejected_after_any_history(
        cs in candidates(),
        steps in prop::collection::vec(
            (prop::option::of(0usize..12), prop::bool::weighted(0.1), 0u64..5_000),
            0..300,
        ),
        seed in any::<u64>(),
    ) {
        let mut b = Balancer::with_seed(BalancerConfig::default(), seed);
        replay(&mut b, &cs, Requirements::default(), &steps, Instant::now())?;
    }

    #[test]
    fn stricter_is_a_per_field_minimum(a in requirements(), b in requirements()) {
        let s = a.stricter(b);
        prop_assert_eq!(s, b.stricter(a));
        for (got, x, y) in [
            (s.hard_rtt_ms, a.hard_rtt_ms, b.hard_rtt_ms),
            (s.soft_rtt_ms, a.soft_rtt_ms, b.soft_rtt_ms),
        ] {
            let want = match (x, y) {
                (Some(x), Some(y)) => Some(x.min(y)),
                _ => x.or(y),
            };
            prop_assert_eq!(got, want);
        }
    }
}

fn healthy(id: &str) -> Candidate {
    Candidate {
        instance_id: id.into(),
        node: format!("node-{id}"),
        local: false,
        rtt_ms: Some(1.0),
        rtt_source: RttSource::Measured,
        health: Health::Passing,
        node_alive: true,
    }
}

/// Sends `total` calls at `concurrency`, each lasting its instance's latency,
/// and returns how many each instance got.
fn simulate(seed: u64, latencies_ms: &[u64], total: usize, concurrency: usize) -> Vec<usize> {
    let cs: Vec<Candidate> = (0..latencies_ms.len())
        .map(|i| healthy(&format!("i{i}")))
        .collect();
    let mut b = Balancer::with_seed(BalancerConfig::default(), seed);
    let mut now = Instant::now();
    let mut counts = vec![0; cs.len()];
    // Calls in flight: (when it ends, instance index).
    let mut open: Vec<(Instant, usize)> = Vec::new();
    for _ in 0..total {
        if open.len() >= concurrency {
            open.sort_by_key(|&(end, _)| std::cmp::Reverse(end));
            if let Some((end, i)) = open.pop() {
                now = now.max(end);
                b.report(
                    &cs[i].instance_id,
                    Outcome::Success {
                        latency: latency(latencies_ms[i]),
                    },
                    now,
                );
            }
        }
        let p = b
            .pick(&cs, Requirements::default(), &[], now)
            .expect("healthy instances are eligible");
        counts[p.index] += 1;
        open.push((now + latency(latencies_ms[p.index]), p.index));
        now += Duration::from_millis(1);
    }
    counts
}

#[test]
fn the_fast_instance_gets_clearly_most_of_the_traffic() {
    for seed in 0..20 {
        for concurrency in [1, 4] {
            let counts = simulate(seed, &[5, 50], 1000, concurrency);
            assert!(
                counts[0] > 800,
                "seed {seed}, concurrency {concurrency}: {counts:?}"
            );
        }
    }
}

#[test]
fn equal_instances_share_the_traffic_fairly() {
    for seed in 0..20 {
        for concurrency in [1, 8] {
            let counts = simulate(seed, &[10, 10, 10, 10], 4000, concurrency);
            for &n in &counts {
                assert!(
                    (700..=1300).contains(&n),
                    "seed {seed}, concurrency {concurrency}: {counts:?}"
                );
            }
        }
    }
}

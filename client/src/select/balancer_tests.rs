//! Tests of the balancer as a whole: every rule, with synthetic instants.

use super::*;
use mesh_proto::api::{Ineligible, RttSource};
use mesh_proto::catalog::Health;

fn cand(id: &str, rtt_ms: f64) -> Candidate {
    Candidate {
        instance_id: id.into(),
        node: format!("node-{id}"),
        local: false,
        rtt_ms: Some(rtt_ms),
        rtt_source: RttSource::Measured,
        health: Health::Passing,
        node_alive: true,
    }
}

fn req(hard: Option<u32>, soft: Option<u32>) -> Requirements {
    Requirements {
        hard_rtt_ms: hard,
        soft_rtt_ms: soft,
    }
}

fn balancer(seed: u64) -> Balancer {
    Balancer::with_seed(BalancerConfig::default(), seed)
}

fn ok(ms: u64) -> Outcome {
    Outcome::Success {
        latency: Duration::from_millis(ms),
    }
}

fn fail() -> Outcome {
    Outcome::Failure {
        latency: Duration::from_millis(1),
    }
}

/// Picks `id` (by excluding the others) and reports `outcome`, `n` times.
fn call(b: &mut Balancer, cs: &[Candidate], id: &str, outcome: Outcome, n: usize, now: Instant) {
    let others: Vec<&str> = cs
        .iter()
        .map(|c| c.instance_id.as_str())
        .filter(|&other| other != id)
        .collect();
    for _ in 0..n {
        let p = b.pick(cs, req(None, None), &others, now).unwrap();
        assert_eq!(p.instance_id, id);
        b.report(id, outcome, now);
    }
}

fn ejected_ids(b: &Balancer, cs: &[Candidate], now: Instant) -> Vec<String> {
    b.rank(cs, req(None, None), now)
        .ineligible
        .into_iter()
        .filter(|(_, why)| matches!(why, Ineligible::Ejected { .. }))
        .map(|(c, _)| c.instance_id)
        .collect()
}

#[test]
fn a_single_eligible_instance_is_always_picked() {
    let t0 = Instant::now();
    let mut b = balancer(1);
    let cs = [cand("a", 50.0), cand("b", 5.0)];
    for _ in 0..20 {
        let p = b.pick(&cs, req(Some(20), None), &[], t0).unwrap();
        assert_eq!((p.instance_id.as_str(), p.index), ("b", 1));
    }
}

#[test]
fn two_choices_are_distinct_so_the_less_loaded_of_two_always_wins() {
    let t0 = Instant::now();
    for seed in 0..50 {
        let mut b = balancer(seed);
        let cs = [cand("a", 1.0), cand("b", 1.0)];
        let first = b.pick(&cs, req(None, None), &[], t0).unwrap();
        // The first is now in flight (cost doubled): with two distinct draws,
        // the other must win.
        let second = b.pick(&cs, req(None, None), &[], t0).unwrap();
        assert_ne!(first.instance_id, second.instance_id, "seed {seed}");
    }
}

#[test]
fn a_retry_goes_to_another_instance() {
    let t0 = Instant::now();
    let mut b = balancer(2);
    let cs = [cand("a", 1.0), cand("b", 1.0), cand("c", 1.0)];
    let first = b.pick(&cs, req(None, None), &[], t0).unwrap();
    b.report(&first.instance_id, fail(), t0);
    for _ in 0..20 {
        let retry = b
            .pick(&cs, req(None, None), &[first.instance_id.as_str()], t0)
            .unwrap();
        assert_ne!(retry.instance_id, first.instance_id);
        b.report(&retry.instance_id, ok(1), t0);
    }
    let err = b
        .pick(&cs, req(None, None), &["a", "b", "c"], t0)
        .unwrap_err();
    assert_eq!(err, SelectError::AllTried { tried: 3 });
}

#[test]
fn soft_requirement_keeps_calls_within_it_when_it_can() {
    let t0 = Instant::now();
    let mut b = balancer(3);
    let cs = [cand("near", 5.0), cand("mid", 15.0), cand("far", 25.0)];
    for _ in 0..50 {
        let p = b.pick(&cs, req(Some(30), Some(10)), &[], t0).unwrap();
        assert_eq!(p.instance_id, "near");
        assert!(p.within_soft);
        b.report(&p.instance_id, ok(1), t0);
    }
    // The near one already tried: the best of the rest, flagged as outside soft.
    let p = b.pick(&cs, req(Some(30), Some(10)), &["near"], t0).unwrap();
    assert!(!p.within_soft);
    assert_ne!(p.instance_id, "near");
}

#[test]
fn outside_soft_the_best_of_the_rest_is_used() {
    let t0 = Instant::now();
    let mut b = balancer(4);
    let cs = [cand("mid", 15.0), cand("far", 25.0)];
    let p = b.pick(&cs, req(None, Some(10)), &[], t0).unwrap();
    assert!(!p.within_soft);
}

#[test]
fn hard_requirement_is_never_violated_and_the_error_names_the_nearest() {
    let t0 = Instant::now();
    let mut b = balancer(5);
    let mut unknown = cand("unknown", 1.0);
    unknown.rtt_source = RttSource::Unknown;
    let mut estimated = cand("estimated", 1.0);
    estimated.rtt_source = RttSource::Estimated;
    let cs = [
        cand("echo-3", 41.2),
        cand("echo-4", 80.0),
        unknown,
        estimated,
    ];
    let err = b.pick(&cs, req(Some(20), None), &[], t0).unwrap_err();
    assert_eq!(
        err.to_string(),
        "no instance within hard RTT 20 ms (nearest: echo-3 on node-echo-3 at 41.2 ms); \
         relax x-gossamer-hard-rtt-ms or add an instance closer to this node"
    );
    // With estimates allowed, the estimated one qualifies.
    let config = BalancerConfig {
        allow_estimated_rtt: true,
        ..BalancerConfig::default()
    };
    let mut b = Balancer::with_seed(config, 5);
    let p = b.pick(&cs, req(Some(20), None), &[], t0).unwrap();
    assert_eq!(p.instance_id, "estimated");
}

#[test]
fn a_local_instance_meets_any_hard_requirement() {
    let t0 = Instant::now();
    let mut b = balancer(6);
    let mut local = cand("local", 0.0);
    local.local = true;
    local.rtt_ms = None;
    local.rtt_source = RttSource::Unknown;
    let cs = [cand("remote", 3.0), local];
    let p = b.pick(&cs, req(Some(0), None), &[], t0).unwrap();
    assert_eq!(p.instance_id, "local");
}

#[test]
fn no_candidates_and_all_unhealthy_are_reported_as_such() {
    let t0 = Instant::now();
    let mut b = balancer(7);
    assert_eq!(
        b.pick(&[], req(None, None), &[], t0).unwrap_err(),
        SelectError::NoInstances {}
    );
    let mut crit = cand("crit", 1.0);
    crit.health = Health::Critical;
    let mut down = cand("down", 1.0);
    down.node_alive = false;
    let cs = [crit, down];
    assert_eq!(
        b.pick(&cs, req(Some(10), None), &[], t0).unwrap_err(),
        SelectError::AllUnhealthy
    );
}

#[test]
fn rank_orders_within_soft_first_then_by_cost() {
    let t0 = Instant::now();
    let mut b = balancer(8);
    let cs = [
        cand("far-fast", 40.0),
        cand("near-slow", 5.0),
        cand("near-fast", 6.0),
        cand("too-far", 90.0),
    ];
    call(&mut b, &cs, "near-slow", ok(200), 1, t0);
    call(&mut b, &cs, "near-fast", ok(2), 1, t0);
    call(&mut b, &cs, "far-fast", ok(1), 1, t0);
    let r = b.rank(&cs, req(Some(50), Some(10)), t0);
    let order: Vec<&str> = r
        .eligible
        .iter()
        .map(|e| e.candidate.instance_id.as_str())
        .collect();
    assert_eq!(order, vec!["near-fast", "near-slow", "far-fast"]);
    assert_eq!(r.eligible[1].cost, 200.0);
    assert_eq!(
        r.ineligible,
        vec![(
            cs[3].clone(),
            Ineligible::OverHardRtt {
                rtt_ms: 90.0,
                hard_rtt_ms: 50
            }
        )]
    );
}

#[test]
fn new_instances_start_at_the_default_rtt() {
    let t0 = Instant::now();
    let b = balancer(9);
    let r = b.rank(&[cand("new", 1.0)], req(None, None), t0);
    assert_eq!(r.eligible[0].cost, 30.0);
}

#[test]
fn cost_counts_in_flight_requests() {
    let t0 = Instant::now();
    let mut b = balancer(10);
    let cs = [cand("a", 1.0)];
    b.pick(&cs, req(None, None), &[], t0).unwrap();
    b.pick(&cs, req(None, None), &[], t0).unwrap();
    assert_eq!(b.rank(&cs, req(None, None), t0).eligible[0].cost, 90.0);
    b.report("a", ok(30), t0);
    assert_eq!(b.rank(&cs, req(None, None), t0).eligible[0].cost, 60.0);
}

#[test]
fn a_fast_failure_does_not_make_an_instance_look_fast() {
    let t0 = Instant::now();
    let mut b = balancer(11);
    let cs = [cand("a", 1.0), cand("b", 1.0)];
    call(&mut b, &cs, "a", fail(), 1, t0);
    call(&mut b, &cs, "b", ok(5), 1, t0);
    let r = b.rank(&cs, req(None, None), t0);
    assert_eq!(r.eligible[0].candidate.instance_id, "b");
    assert!(r.eligible[1].cost >= 1000.0);
}

#[test]
fn five_consecutive_failures_eject_for_30_s() {
    let t0 = Instant::now();
    let mut b = balancer(12);
    let cs = [cand("a", 1.0), cand("b", 1.0), cand("c", 1.0)];
    call(&mut b, &cs, "a", fail(), 4, t0);
    assert!(ejected_ids(&b, &cs, t0).is_empty());
    call(&mut b, &cs, "a", fail(), 1, t0);
    assert_eq!(b.ejections_total(), 1);
    let r = b.rank(&cs, req(None, None), t0);
    assert_eq!(
        r.ineligible,
        vec![(cs[0].clone(), Ineligible::Ejected { for_ms: 30_000 })]
    );
    for _ in 0..50 {
        let p = b.pick(&cs, req(None, None), &[], t0).unwrap();
        assert_ne!(p.instance_id, "a");
        b.report(&p.instance_id, ok(5), t0);
    }
    let t29 = t0 + Duration::from_secs(29);
    assert_eq!(ejected_ids(&b, &cs, t29), vec!["a".to_string()]);
}

#[test]
fn an_instance_that_was_gone_comes_back_with_a_clean_record() {
    let t0 = Instant::now();
    let mut b = balancer(14);
    let cs = [cand("a", 1.0), cand("b", 1.0), cand("c", 1.0)];
    call(&mut b, &cs, "a", fail(), 5, t0);
    assert_eq!(ejected_ids(&b, &cs, t0), vec!["a".to_string()]);
    // Still listed, it stays ejected: nothing says it changed.
    b.pick(&cs, req(None, None), &[], t0).unwrap();
    assert_eq!(ejected_ids(&b, &cs, t0), vec!["a".to_string()]);
    // Gone from the candidates for a pick (critical, node down), then back.
    let t1 = t0 + Duration::from_secs(1);
    b.pick(&cs[1..], req(None, None), &[], t1).unwrap();
    b.pick(&cs, req(None, None), &[], t1).unwrap();
    assert!(ejected_ids(&b, &cs, t1).is_empty());
    // And its failure count starts again: four failures do not eject it.
    call(&mut b, &cs, "a", fail(), 4, t1);
    assert!(ejected_ids(&b, &cs, t1).is_empty());
}

#[test]
fn never_more_than_half_are_ejected() {
    let t0 = Instant::now();
    let mut b = balancer(13);
    let cs = [cand("a", 1.0), cand("b", 1.0)];
    call(&mut b, &cs, "a", fail(), 5, t0);
    call(&mut b, &cs, "b", fail(), 20, t0);
    assert_eq!(ejected_ids(&b, &cs, t0), vec!["a".to_string()]);
    assert_eq!(b.ejections_total(), 1);

    // A lone instance is never ejected.
    let mut b = balancer(14);
    let one = [cand("a", 1.0)];
    for _ in 0..20 {
        let p = b.pick(&one, req(None, None), &[], t0).unwrap();
        b.report(&p.instance_id, fail(), t0);
    }
    assert!(ejected_ids(&b, &one, t0).is_empty());
}

#[test]
fn once_room_is_made_the_capped_instance_is_ejected() {
    let t0 = Instant::now();
    let mut b = balancer(15);
    let cs = [cand("a", 1.0), cand("b", 1.0)];
    call(&mut b, &cs, "a", fail(), 5, t0);
    call(&mut b, &cs, "b", fail(), 5, t0);
    // a comes back after its probe succeeds; b's next failure ejects it.
    let t31 = t0 + Duration::from_secs(31);
    call(&mut b, &cs, "a", ok(1), 1, t31);
    call(&mut b, &cs, "b", fail(), 1, t31);
    assert_eq!(ejected_ids(&b, &cs, t31), vec!["b".to_string()]);
}

#[test]
fn after_the_ejection_one_probe_at_a_time_and_success_restores() {
    let t0 = Instant::now();
    let mut b = balancer(16);
    let cs = [cand("a", 1.0), cand("b", 1.0)];
    call(&mut b, &cs, "a", fail(), 5, t0);
    let t31 = t0 + Duration::from_secs(31);
    let probe = b.pick(&cs, req(None, None), &["b"], t31).unwrap();
    assert_eq!(probe.instance_id, "a");
    // The probe is out: nothing else may go to a.
    assert_eq!(
        b.pick(&cs, req(None, None), &["b"], t31).unwrap_err(),
        SelectError::AllTried { tried: 1 }
    );
    let r = b.rank(&cs, req(None, None), t31);
    assert_eq!(
        r.ineligible,
        vec![(cs[0].clone(), Ineligible::Ejected { for_ms: 0 })]
    );
    b.report("a", ok(2), t31);
    assert!(ejected_ids(&b, &cs, t31).is_empty());
    call(&mut b, &cs, "a", ok(2), 3, t31);
}

#[test]
fn a_failed_probe_ejects_again_for_twice_as_long() {
    let t0 = Instant::now();
    let mut b = balancer(17);
    let cs = [cand("a", 1.0), cand("b", 1.0)];
    call(&mut b, &cs, "a", fail(), 5, t0);
    let t31 = t0 + Duration::from_secs(31);
    call(&mut b, &cs, "a", fail(), 1, t31);
    assert_eq!(b.ejections_total(), 2);
    let r = b.rank(&cs, req(None, None), t31);
    assert_eq!(
        r.ineligible,
        vec![(cs[0].clone(), Ineligible::Ejected { for_ms: 60_000 })]
    );
    let mut b_down = cs[1].clone();
    b_down.node_alive = false;
    let err = b
        .pick(&[cs[0].clone(), b_down], req(None, None), &[], t31)
        .unwrap_err();
    assert_eq!(
        err,
        SelectError::AllEjected {
            retry_in_ms: 60_000
        }
    );
    // With a alone, the cap lets it back (Envoy's panic mode) rather than fail.
    let p = b.pick(&cs[..1], req(None, None), &[], t31).unwrap();
    assert_eq!(p.instance_id, "a");
}

#[test]
fn an_instance_back_from_ejection_must_still_meet_the_hard_requirement() {
    let t0 = Instant::now();
    let mut b = balancer(18);
    let cs = [cand("a", 5.0), cand("b", 5.0)];
    call(&mut b, &cs, "a", fail(), 5, t0);
    // Meanwhile a's node moved away.
    let moved = [cand("a", 60.0), cand("b", 5.0)];
    let t31 = t0 + Duration::from_secs(31);
    let r = b.rank(&moved, req(Some(20), None), t31);
    assert_eq!(
        r.ineligible[0].1,
        Ineligible::OverHardRtt {
            rtt_ms: 60.0,
            hard_rtt_ms: 20
        }
    );
    for _ in 0..20 {
        let p = b.pick(&moved, req(Some(20), None), &[], t31).unwrap();
        assert_eq!(p.instance_id, "b");
        b.report("b", ok(1), t31);
    }
}

#[test]
fn ejected_and_otherwise_unusable_gives_all_ejected() {
    let t0 = Instant::now();
    let mut b = balancer(19);
    let cs = [cand("near", 5.0), cand("far", 80.0)];
    call(&mut b, &cs, "near", fail(), 5, t0);
    let t1 = t0 + Duration::from_secs(10);
    let err = b.pick(&cs, req(Some(20), None), &[], t1).unwrap_err();
    assert_eq!(
        err,
        SelectError::AllEjected {
            retry_in_ms: 20_000
        }
    );
}

#[test]
fn the_fast_instance_gets_most_of_the_traffic() {
    let t0 = Instant::now();
    let mut b = balancer(20);
    let cs = [cand("fast", 1.0), cand("slow", 1.0)];
    let mut now = t0;
    let mut fast = 0;
    for _ in 0..1000 {
        let p = b.pick(&cs, req(None, None), &[], now).unwrap();
        let latency = if p.instance_id == "fast" { 5 } else { 50 };
        if p.instance_id == "fast" {
            fast += 1;
        }
        now += Duration::from_millis(10);
        b.report(&p.instance_id, ok(latency), now);
    }
    assert!(fast > 800, "fast got {fast} of 1000");
}

#[test]
fn the_retry_budget_allows_twenty_percent_plus_ten_per_second() {
    let t0 = Instant::now();
    let mut b = balancer(21);
    let cs = [cand("a", 1.0)];
    for _ in 0..1000 {
        let p = b.pick(&cs, req(None, None), &[], t0).unwrap();
        b.report(&p.instance_id, ok(1), t0);
    }
    // Retries (picks with `exclude`) do not deposit.
    for _ in 0..100 {
        let _ = b.pick(&cs, req(None, None), &["x"], t0);
    }
    let mut retries = 0;
    while b.try_retry(t0) {
        retries += 1;
    }
    assert_eq!(retries, 200 + 100);
    let t11 = t0 + Duration::from_secs(11);
    assert!(b.try_retry(t11), "the reserve refills as the window slides");
}

#[test]
fn stats_of_instances_gone_for_long_are_forgotten() {
    let t0 = Instant::now();
    let mut b = balancer(22);
    let old = [cand("old", 1.0)];
    b.pick(&old, req(None, None), &[], t0).unwrap();
    let new = [cand("new", 1.0)];
    let later = t0 + Duration::from_secs(601);
    b.pick(&new, req(None, None), &[], later).unwrap();
    assert!(!b.stats.contains_key("old"));
    assert!(b.stats.contains_key("new"));
    // A late report for it is ignored.
    b.report("old", fail(), later);
    assert!(!b.stats.contains_key("old"));
}

#[test]
fn churning_instance_ids_do_not_grow_memory_without_bound() {
    let t0 = Instant::now();
    let mut b = balancer(23);
    for i in 0..10_000 {
        let cs = [cand(&format!("i-{i}"), 1.0)];
        b.pick(&cs, req(None, None), &[], t0).unwrap();
    }
    assert!(b.stats.len() <= 4 + 64 + 1, "{} stats kept", b.stats.len());
}

#[test]
fn reports_for_unknown_instances_are_ignored() {
    let t0 = Instant::now();
    let mut b = balancer(24);
    b.report("nobody", fail(), t0);
    assert!(b.stats.is_empty());
}

#[test]
fn seeded_balancers_are_deterministic() {
    let t0 = Instant::now();
    let cs: Vec<Candidate> = (0..6).map(|i| cand(&format!("i{i}"), 1.0)).collect();
    let run = |seed| {
        let mut b = balancer(seed);
        (0..30)
            .map(|_| b.pick(&cs, req(None, None), &[], t0).unwrap().index)
            .collect::<Vec<_>>()
    };
    assert_eq!(run(7), run(7));
    let _ = Balancer::new(BalancerConfig::default());
}

#[test]
fn the_balancer_runs_with_the_config_it_was_given() {
    let config = BalancerConfig {
        failure_threshold: 2,
        allow_estimated_rtt: true,
        ..BalancerConfig::default()
    };
    let b = Balancer::with_seed(config.clone(), 25);
    assert_eq!(b.config(), &config);
}

#[test]
fn an_explained_pick_counts_the_eligible_and_says_why_not_the_others() {
    let t0 = Instant::now();
    let mut b = balancer(26);
    let mut down = cand("down", 1.0);
    down.node_alive = false;
    let cs = [cand("a", 1.0), down, cand("far", 50.0), cand("b", 2.0)];
    let e = b.pick_explained(&cs, req(Some(20), None), &["a"], t0);
    assert_eq!(e.pick.map(|p| p.instance_id), Ok("b".to_string()));
    assert_eq!(e.eligible, 2, "an excluded instance is still eligible");
    assert_eq!(
        e.ineligible,
        vec![
            (1, Ineligible::NodeDown),
            (
                2,
                Ineligible::OverHardRtt {
                    rtt_ms: 50.0,
                    hard_rtt_ms: 20
                }
            )
        ]
    );
}

#[test]
fn an_instance_briefly_absent_keeps_its_calls_in_flight() {
    let t0 = Instant::now();
    let mut b = balancer(27);
    let both = [cand("a", 1.0), cand("b", 1.0)];
    b.pick(&both, req(None, None), &["b"], t0).unwrap();
    // `a` is left out of a pick that runs the timed prune, 200 s later
    // (critical for a while, say), then comes back with its call still out.
    let later = t0 + Duration::from_secs(200);
    b.pick(&both[1..], req(None, None), &[], later).unwrap();
    b.pick(&both, req(None, None), &["b"], later).unwrap();
    // Latency reset to the default 30 ms, but two calls are out: 30 × 3.
    let cost = |b: &Balancer| b.rank(&both[..1], req(None, None), later).eligible[0].cost;
    assert_eq!(cost(&b), 90.0);
    b.report("a", ok(30), later);
    assert_eq!(cost(&b), 60.0, "the first call's report still counts");
}

#[test]
fn stats_are_forgotten_after_exactly_forget_after() {
    let t0 = Instant::now();
    let mut b = balancer(28);
    b.pick(&[cand("old", 1.0)], req(None, None), &[], t0)
        .unwrap();
    let at = t0 + b.config().forget_after;
    b.pick(&[cand("new", 1.0)], req(None, None), &[], at)
        .unwrap();
    assert!(!b.stats.contains_key("old"));
}

#[test]
fn the_map_is_pruned_at_once_past_four_times_the_service_plus_64() {
    let t0 = Instant::now();
    let mut b = balancer(29);
    let batch =
        |k: usize| -> Vec<Candidate> { (0..4).map(|i| cand(&format!("i-{k}-{i}"), 1.0)).collect() };
    for k in 0..20 {
        b.pick(&batch(k), req(None, None), &[], t0).unwrap();
    }
    // 80 = 4 × 4 + 64 is not more than the bound, and no timed prune is due.
    assert_eq!(b.stats.len(), 80);
    b.pick(&batch(20), req(None, None), &[], t0).unwrap();
    assert_eq!(b.stats.len(), 4, "only the current service is left");
}

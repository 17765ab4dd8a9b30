//! Tests of the Vivaldi coordinates: Serf's own tests, ported, and updates worked by hand.

use super::*;

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1.0e-6
}

fn at(x: [f64; 2], height: f64) -> Coordinate {
    let mut c = Coordinate::origin();
    c.vec[0] = x[0];
    c.vec[1] = x[1];
    c.height = height;
    c
}

fn clients(n: usize) -> Vec<Vivaldi> {
    (0..n)
        .map(|_| Vivaldi::new(VivaldiConfig::default()))
        .collect()
}

#[test]
fn origin_is_valid_and_two_origins_are_two_min_heights_apart() {
    let o = Coordinate::origin();
    assert!(o.is_valid());
    assert_eq!(o.error, 1.5);
    assert_eq!(o.distance_to(&o), Duration::from_micros(20));
}

#[test]
fn distance_is_euclidean_plus_heights_plus_positive_adjustments() {
    let a = at([0.0, 0.0], 0.0);
    let mut b = at([0.003, 0.004], 0.0);
    assert_eq!(a.distance_to(&b), Duration::from_millis(5));
    b.height = 0.002;
    assert_eq!(a.distance_to(&b), Duration::from_millis(7));
    b.adjustment = 0.001;
    assert_eq!(a.distance_to(&b), Duration::from_millis(8));
    // An adjustment that would make the estimate negative is ignored.
    b.adjustment = -1.0;
    assert_eq!(a.distance_to(&b), Duration::from_millis(7));
}

#[test]
fn is_valid_rejects_nan_and_infinity_in_every_field() {
    let fields: [fn(&mut Coordinate, f64); 4] = [
        |c, v| c.vec[5] = v,
        |c, v| c.error = v,
        |c, v| c.adjustment = v,
        |c, v| c.height = v,
    ];
    for set in fields {
        for bad in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
            let mut c = Coordinate::origin();
            set(&mut c, bad);
            assert!(!c.is_valid());
            // Distances from a broken coordinate never panic.
            let _ = c.distance_to(&Coordinate::origin());
        }
    }
    let mut huge = Coordinate::origin();
    huge.vec[0] = 1.0e300;
    huge.vec[1] = 1.0e300;
    assert_eq!(huge.distance_to(&Coordinate::origin()), Duration::MAX);
}

#[test]
fn a_longer_rtt_than_expected_pushes_the_client_away() {
    // Serf's TestClient_Update: the peer sits 1 ms "above" us but the
    // sample says 2 ms, so we move down.
    let mut client = Vivaldi::new(VivaldiConfig::default());
    let mut other = Coordinate::origin();
    other.vec[2] = 0.001;
    let c = client
        .update("node", &other, Duration::from_millis(2))
        .expect("valid sample");
    assert!(c.vec[2] < 0.0, "moved to {:?}", c.vec);
}

#[test]
fn latency_filter_takes_the_median_of_the_last_three_per_peer() {
    // Serf's TestClient_latencyFilter, value for value.
    let mut c = Vivaldi::new(VivaldiConfig::default());
    let mut f = |peer: &str, s: f64| c.latency_filter(peer, s);
    for (sample, median) in [
        (0.201, 0.201),
        (0.200, 0.201),
        (0.207, 0.201),
        (1.9, 0.207), // a glitch is medianed out
        (0.203, 0.207),
        (0.199, 0.203),
        (0.211, 0.203),
    ] {
        assert!(close(f("alice", sample), median));
    }
    assert!(close(f("bob", 0.310), 0.310));
    c.forget("alice");
    assert!(close(c.latency_filter("alice", 0.888), 0.888));
}

#[test]
fn invalid_samples_are_refused_and_change_nothing() {
    let mut client = Vivaldi::new(VivaldiConfig::default());
    let peer = at([0.01, 0.0], 0.001);
    client
        .update("p", &peer, Duration::from_millis(15))
        .expect("valid sample");
    let before = client.coordinate().clone();
    let filter_before = client.latency_samples.clone();

    for rtt in [
        Duration::ZERO,
        MAX_RTT + Duration::from_nanos(1),
        Duration::MAX,
    ] {
        let err = client.update("p", &peer, rtt).expect_err("bad rtt");
        assert!(matches!(err, CoordinateError::InvalidRtt { .. }));
    }
    let mut bad = peer.clone();
    bad.vec[0] = f64::NAN;
    assert!(client.update("p", &bad, Duration::from_millis(15)).is_err());
    bad = peer.clone();
    bad.height = f64::INFINITY;
    assert!(client.update("p", &bad, Duration::from_millis(15)).is_err());
    bad = peer.clone();
    bad.error = -1.0;
    assert!(client.update("p", &bad, Duration::from_millis(15)).is_err());
    bad = peer.clone();
    bad.height = -0.5;
    assert!(client.update("p", &bad, Duration::from_millis(15)).is_err());
    assert!(client.set_coordinate(at([f64::NAN, 0.0], 0.0)).is_err());

    assert_eq!(client.coordinate(), &before);
    assert_eq!(client.latency_samples, filter_before);
    // The largest accepted sample is fine.
    assert!(client.update("p", &peer, MAX_RTT).is_ok());
}

#[test]
fn a_poisoned_coordinate_is_reset_on_the_next_update() {
    // Serf's TestClient_NaN_Defense, last part.
    let mut client = Vivaldi::new(VivaldiConfig::default());
    client.coord.vec[0] = f64::NAN;
    let c = client
        .update("node", &Coordinate::origin(), Duration::from_millis(250))
        .expect("valid sample");
    assert!(c.is_valid());
    assert_eq!(client.resets(), 1);
}

#[test]
fn coincident_nodes_separate_and_runs_replay_identically() {
    let run = || {
        let mut cs = clients(2);
        for _ in 0..5 {
            let b = cs[1].coordinate().clone();
            cs[0]
                .update("b", &b, Duration::from_millis(10))
                .expect("ok");
            let a = cs[0].coordinate().clone();
            cs[1]
                .update("a", &a, Duration::from_millis(10))
                .expect("ok");
        }
        (cs[0].coordinate().clone(), cs[1].coordinate().clone())
    };
    let (a, b) = run();
    assert!(a.distance_to(&b) > Duration::from_millis(1));
    assert_eq!(run(), (a, b));
}

#[test]
fn both_adjustments_count_and_a_zero_estimate_falls_back_to_the_raw_distance() {
    let mut a = at([0.0, 0.0], 0.0);
    let mut b = at([0.003, 0.004], 0.0);
    a.adjustment = 0.002;
    b.adjustment = 0.001;
    assert_eq!(a.distance_to(&b), Duration::from_millis(8));
    assert_eq!(b.distance_to(&a), Duration::from_millis(8));
    // Adjustments that cancel the distance exactly give no estimate of
    // zero: only a positive adjusted figure replaces the raw one.
    a.adjustment = 0.0;
    b.adjustment = -a.raw_distance_secs(&b);
    assert_eq!(a.distance_secs(&b), a.raw_distance_secs(&b));
}

#[test]
fn a_force_moves_along_the_unit_vector_and_scales_the_height() {
    // Serf's TestCoordinate_ApplyForce, in 8 dimensions.
    let mut fallback = Directions::new("peer", 1);
    let mut origin = Coordinate::origin();
    origin.height = 0.0;
    let mut above = origin.clone();
    above.vec[2] = 2.9;
    let mut c = origin.clone();
    c.apply_force(0.0, 5.3, &above, &mut fallback);
    assert_eq!(c.vec, [0.0, 0.0, -5.3, 0.0, 0.0, 0.0, 0.0, 0.0]);
    // Away from the origin too, towards a point to the right.
    let mut right = origin.clone();
    right.vec[0] = 3.4;
    right.vec[2] = -5.3;
    c.apply_force(0.0, 2.0, &right, &mut fallback);
    assert_eq!(c.vec, [-2.0, 0.0, -5.3, 0.0, 0.0, 0.0, 0.0, 0.0]);
    // Points on top of each other part in some direction, one unit apart.
    let mut c = origin.clone();
    c.apply_force(0.0, 1.0, &origin, &mut fallback);
    assert!(close(origin.distance_secs(&c), 1.0));
    // With a minimum height the height grows in proportion to the force...
    let height_min = 10.0e-6;
    // (As in Serf, the point above keeps the height 0 it was made with.)
    let origin = Coordinate::origin();
    let mut above = origin.clone();
    above.vec[2] = 2.9;
    above.height = 0.0;
    let mut c = origin.clone();
    c.apply_force(height_min, 5.3, &above, &mut fallback);
    assert_eq!(c.vec[2], -5.3);
    assert!(close(c.height, height_min + 5.3 * height_min / 2.9));
    assert!(c.height > height_min, "height {}", c.height);
    // ...and never drops below the minimum.
    let mut c = origin.clone();
    c.apply_force(height_min, -5.3, &above, &mut fallback);
    assert_eq!(c.vec[2], 5.3);
    assert_eq!(c.height, height_min);
}

#[test]
fn fallback_directions_are_splitmix64() {
    // The first five outputs of splitmix64 (Vigna's reference algorithm)
    // from seed 1234567, scaled to [-0.5, 0.5): a sound mixer, so the
    // directions of coincident peers are not correlated.
    let mut d = Directions { state: 1_234_567 };
    for reference in [
        6_457_827_717_110_365_317u64,
        3_203_168_211_198_807_973,
        9_817_491_932_198_370_423,
        4_593_380_528_125_082_431,
        16_408_922_859_458_223_821,
    ] {
        let expected = (reference >> 11) as f64 / (1u64 << 53) as f64 - 0.5;
        assert_eq!(d.next_component(), expected);
    }
}

#[test]
fn the_client_keeps_its_config_and_counts_every_reset() {
    let config = VivaldiConfig {
        latency_filter_size: 5,
        ..VivaldiConfig::default()
    };
    let mut client = Vivaldi::new(config.clone());
    assert_eq!(client.config(), &config);
    assert_eq!(client.resets(), 0);
    for expected in 1..=2 {
        client.coord.vec[0] = f64::NAN;
        client
            .update("node", &Coordinate::origin(), Duration::from_millis(250))
            .expect("valid sample");
        assert_eq!(client.resets(), expected);
    }
}

fn approx(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1.0e-6 * b.abs()
}

#[test]
fn one_update_follows_serfs_rule_worked_by_hand() {
    // Both at error 1.5 (weight 0.5); the peer 10 ms away on x, heights
    // 10 µs each, so the estimate is 10.02 ms against a 20 ms sample.
    let mut client = Vivaldi::new(VivaldiConfig::default());
    let peer = at([0.01, 0.0], 10.0e-6);
    let c = client
        .update("p", &peer, Duration::from_millis(20))
        .expect("valid sample")
        .clone();
    // wrongness |10.02 - 20| / 20 = 0.499; error 0.25·0.5·0.499 + 1.5·(1 - 0.125).
    assert!(approx(c.error, 1.374_875), "error {}", c.error);
    // Pushed away from the peer by 0.25·0.5·(20 - 10.02) ms (gravity's
    // pull, 0.1 ns here, is below the tolerance).
    assert!(approx(c.vec[0], -0.001_247_5), "x {}", c.vec[0]);
    assert!(c.vec[1..].iter().all(|&v| v == 0.0), "{:?}", c.vec);
    // Height grows by (10 + 10) µs · force / 10 ms.
    assert!(approx(c.height, 12.495e-6), "height {}", c.height);
    // Adjustment: (20 ms - new raw distance 11.269995 ms) / (2 · 20 samples).
    assert!(
        approx(c.adjustment, 0.008_730_005 / 40.0),
        "adj {}",
        c.adjustment
    );
}

#[test]
fn the_adjustment_is_half_the_mean_of_the_last_window_samples() {
    // No spring and no gravity: only the adjustment term moves.
    let config = VivaldiConfig {
        cc: 0.0,
        adjustment_window: 2,
        gravity_rho: 1.0e300,
        ..VivaldiConfig::default()
    };
    let mut client = Vivaldi::new(config);
    let peer = at([0.01, 0.0], 10.0e-6);
    // Raw distance 10.02 ms: samples of 20, 30 and 40 ms leave 9.98,
    // 19.98 and 29.98 ms; a window of two keeps the last two.
    for (name, ms) in [("p1", 20), ("p2", 30), ("p3", 40)] {
        client
            .update(name, &peer, Duration::from_millis(ms))
            .expect("valid sample");
    }
    let adjustment = client.coordinate().adjustment;
    assert!(
        approx(adjustment, (0.019_98 + 0.029_98) / 4.0),
        "{adjustment}"
    );
}

#[test]
fn gravity_pulls_a_far_coordinate_back_by_the_square_of_its_distance() {
    let mut client = Vivaldi::new(VivaldiConfig::default());
    client
        .set_coordinate(at([15.0, 0.0], 10.0e-6))
        .expect("valid coordinate");
    // A sample that matches the estimate exactly: no spring force.
    let peer = at([15.01, 0.0], 10.0e-6);
    let c = client
        .update("p", &peer, Duration::from_micros(10_020))
        .expect("valid sample");
    // (15.00002 s / 150)² ≈ 10 ms towards the origin.
    assert!(close(c.vec[0], 15.0 - 0.010_000_027), "x {}", c.vec[0]);
}

#[test]
fn a_peer_with_zero_error_and_zero_height_is_usable() {
    let mut client = Vivaldi::new(VivaldiConfig::default());
    let mut peer = at([0.01, 0.0], 0.0);
    peer.error = 0.0;
    assert!(client.update("p", &peer, Duration::from_millis(10)).is_ok());
}

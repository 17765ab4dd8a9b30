//! Vivaldi convergence on small synthetic topologies, after Serf's
//! `performance_test.go`: every node starts at the origin, samples its
//! peers' true RTTs in a fixed (not random) order, and must end with
//! estimates close to the truth. Deterministic: no clock, no RNG.

use std::time::Duration;

use mesh_proto::coordinate::{Vivaldi, VivaldiConfig};

const MS: f64 = 1.0e-3;

/// A true RTT matrix, in seconds.
type Truth = Vec<Vec<f64>>;

fn clients(n: usize) -> Vec<Vivaldi> {
    (0..n)
        .map(|_| Vivaldi::new(VivaldiConfig::default()))
        .collect()
}

/// Serf's `Simulate`, made deterministic: each cycle every node samples one
/// peer, chosen by a fixed rotation instead of a random draw.
fn simulate(clients: &mut [Vivaldi], truth: &Truth, cycles: usize) {
    let n = clients.len();
    for cycle in 0..cycles {
        for i in 0..n {
            let j = (i + 1 + (cycle * 7 + i * 3) % (n - 1)) % n;
            let peer = clients[j].coordinate().clone();
            let rtt = Duration::from_secs_f64(truth[i][j]);
            clients[i]
                .update(&format!("node-{j}"), &peer, rtt)
                .expect("valid sample");
        }
    }
}

/// Serf's `Evaluate`: largest and mean relative error over all pairs.
fn evaluate(clients: &[Vivaldi], truth: &Truth) -> (f64, f64) {
    let (mut max, mut sum, mut count) = (0.0f64, 0.0, 0.0);
    for i in 0..clients.len() {
        for j in i + 1..clients.len() {
            let est = clients[i]
                .distance_to(clients[j].coordinate())
                .as_secs_f64();
            let err = (est - truth[i][j]).abs() / truth[i][j];
            max = max.max(err);
            sum += err;
            count += 1.0;
        }
    }
    (max, sum / count)
}

/// A fixed sequence of numbers in [0, 1): splitmix64, so the topology is the
/// same on every run and every machine.
struct Sequence(u64);

impl Sequence {
    fn next(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[test]
fn a_triangle_converges_to_its_rtts() {
    let truth = vec![
        vec![0.0, 10.0 * MS, 20.0 * MS],
        vec![10.0 * MS, 0.0, 25.0 * MS],
        vec![20.0 * MS, 25.0 * MS, 0.0],
    ];
    let mut cs = clients(3);
    simulate(&mut cs, &truth, 1000);
    let (max, _) = evaluate(&cs, &truth);
    assert!(max < 0.05, "worst relative error {max}");
}

#[test]
fn a_line_of_nodes_converges() {
    // Serf's TestPerformance_Line: ten nodes 10 ms apart.
    let n = 10;
    let truth: Truth = (0..n)
        .map(|i: usize| {
            (0..n)
                .map(|j: usize| i.abs_diff(j) as f64 * 10.0 * MS)
                .collect()
        })
        .collect();
    let mut cs = clients(n);
    simulate(&mut cs, &truth, 1000);
    let (max, avg) = evaluate(&cs, &truth);
    assert!(avg < 0.02 && max < 0.1, "avg {avg} max {max}");
}

#[test]
fn ten_nodes_in_a_plane_estimate_within_fifteen_percent() {
    // Fixed pseudo-random points in a 100 ms square, each with its own
    // access-link latency of 1-5 ms, as real hosts have.
    let mut seq = Sequence(42);
    let nodes: Vec<([f64; 2], f64)> = (0..10)
        .map(|_| {
            let x = seq.next() * 100.0 * MS;
            let y = seq.next() * 100.0 * MS;
            let h = (1.0 + seq.next() * 4.0) * MS;
            ([x, y], h)
        })
        .collect();
    let truth: Truth = nodes
        .iter()
        .map(|(p, hp)| {
            nodes
                .iter()
                .map(|(q, hq)| (p[0] - q[0]).hypot(p[1] - q[1]) + hp + hq)
                .collect()
        })
        .collect();
    let mut cs = clients(nodes.len());
    simulate(&mut cs, &truth, 2000);
    let (max, avg) = evaluate(&cs, &truth);
    assert!(max < 0.15 && avg < 0.05, "avg {avg} max {max}");
}

#[test]
fn two_sites_ride_out_rtt_glitches_through_the_latency_filter() {
    // Two sites of five nodes, 1 ms inside a site and 40 ms across, with a
    // 900 ms glitch injected once in every ten samples: the latency filter
    // (median of three) must keep it out of the estimates.
    let n = 10;
    let truth: Truth = (0..n)
        .map(|i: usize| {
            (0..n)
                .map(|j: usize| {
                    if (i < 5) == (j < 5) {
                        1.0 * MS
                    } else {
                        41.0 * MS
                    }
                })
                .collect()
        })
        .collect();
    let mut cs = clients(n);
    for cycle in 0..1500 {
        for i in 0..n {
            let j = (i + 1 + (cycle * 7 + i * 3) % (n - 1)) % n;
            let peer = cs[j].coordinate().clone();
            let rtt = if (cycle + i) % 10 == 0 {
                Duration::from_millis(900)
            } else {
                Duration::from_secs_f64(truth[i][j])
            };
            cs[i]
                .update(&format!("node-{j}"), &peer, rtt)
                .expect("valid sample");
        }
    }
    // Judge the cross-site estimates, where an error would misroute calls.
    for i in 0..5 {
        for j in 5..n {
            let est = cs[i].distance_to(cs[j].coordinate()).as_secs_f64();
            assert!(
                (est - truth[i][j]).abs() / truth[i][j] < 0.15,
                "{i}->{j}: estimated {est}, true {}",
                truth[i][j]
            );
        }
    }
}

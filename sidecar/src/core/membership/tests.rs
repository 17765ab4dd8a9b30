//! A tiny in-memory network of cores under simulated time: every packet is
//! delivered (or dropped) by the test, every clock is the test's.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use foca::{AccumulatingRuntime, Config, NoCustomBroadcast, OwnedNotification};
use mesh_proto::{NodeId, NodeIdentity};
use rand::rngs::SmallRng;
use rand::SeedableRng;

use super::{ConfigFor, Lifeguard, SwimCore};

type Core = SwimCore<NodeIdentity, NoCustomBroadcast, SmallRng>;

fn identity(n: u16) -> NodeIdentity {
    NodeIdentity {
        node_id: NodeId::new(format!("node-{n}")).expect("valid id"),
        addr: SocketAddr::from(([127, 0, 0, 1], 5000 + n)),
        generation: 1,
    }
}

fn fast(size: usize) -> Config {
    let mut config = Config::simple();
    config.probe_period = Duration::from_millis(500);
    config.probe_rtt = Duration::from_millis(200);
    config.suspect_to_down_after = Duration::from_secs(2);
    config.notify_down_members = true;
    config.max_transmissions =
        std::num::NonZeroU8::new(if size > 4 { 10 } else { 5 }).unwrap_or(std::num::NonZeroU8::MIN);
    config
}

struct Net {
    cores: Vec<Core>,
    runtimes: Vec<AccumulatingRuntime<NodeIdentity>>,
    /// Nodes whose packets are dropped both ways (crashed).
    dead: Vec<bool>,
    now: Instant,
    downs_seen: Vec<Vec<NodeId>>,
    /// Nodes whose CPU is stalled: packets to them wait here until released.
    stalled: Vec<bool>,
    held: Vec<Vec<Vec<u8>>>,
}

impl Net {
    fn new(n: u16, config_for: ConfigFor) -> Self {
        let now = Instant::now();
        let cores = (0..n)
            .map(|i| {
                SwimCore::new(
                    identity(i),
                    config_for.clone(),
                    SmallRng::seed_from_u64(u64::from(i) + 7),
                    NoCustomBroadcast,
                    now,
                )
            })
            .collect();
        Self {
            cores,
            runtimes: (0..n).map(|_| AccumulatingRuntime::new()).collect(),
            dead: vec![false; n as usize],
            now,
            downs_seen: vec![Vec::new(); n as usize],
            stalled: vec![false; n as usize],
            held: vec![Vec::new(); n as usize],
        }
    }

    fn with_lifeguard(mut self) -> Self {
        for core in &mut self.cores {
            core.set_lifeguard(Some(Lifeguard::default()));
        }
        self
    }

    /// A stalled node finally reads the packets that waited for it.
    fn release(&mut self, i: usize) {
        let now = self.now;
        for data in std::mem::take(&mut self.held[i]) {
            let _ = self.cores[i].handle_data(&data, now, &mut self.runtimes[i]);
        }
        self.deliver();
    }

    fn index(addr: SocketAddr) -> usize {
        usize::from(addr.port() - 5000)
    }

    /// Delivers every pending packet (instantly) until the network is quiet.
    fn deliver(&mut self) {
        loop {
            let mut packets = Vec::new();
            for (from, rt) in self.runtimes.iter_mut().enumerate() {
                while let Some((to, data)) = rt.to_send() {
                    packets.push((from, Self::index(to.addr), data));
                }
                while let Some(notification) = rt.to_notify() {
                    if let OwnedNotification::MemberDown(id) = notification {
                        self.downs_seen[from].push(id.node_id);
                    }
                }
                assert!(
                    rt.to_schedule().is_none(),
                    "timers must stay in the core's queue"
                );
            }
            if packets.is_empty() {
                return;
            }
            for (from, to, data) in packets {
                if self.dead[from] || self.dead[to] {
                    continue;
                }
                if self.stalled[to] {
                    self.held[to].push(data.to_vec());
                    continue;
                }
                let now = self.now;
                let _ = self.cores[to].handle_data(&data, now, &mut self.runtimes[to]);
            }
        }
    }

    /// Advances simulated time by `step` increments up to `total`.
    fn run_for(&mut self, total: Duration, step: Duration) {
        let end = self.now + total;
        while self.now < end {
            self.now += step;
            for i in 0..self.cores.len() {
                if !self.dead[i] {
                    let now = self.now;
                    self.cores[i].advance(now, &mut self.runtimes[i]);
                }
            }
            self.deliver();
        }
    }

    fn members_of(&self, i: usize) -> usize {
        self.cores[i].foca().num_members()
    }
}

fn join_all(net: &mut Net) {
    let seed = identity(0);
    for i in 1..net.cores.len() {
        let now = net.now;
        net.cores[i]
            .announce(seed.clone(), now, &mut net.runtimes[i])
            .expect("announce");
    }
    net.deliver();
}

#[test]
fn nodes_that_announce_to_a_seed_all_learn_each_other() {
    let mut net = Net::new(5, Arc::new(fast));
    join_all(&mut net);
    net.run_for(Duration::from_secs(5), Duration::from_millis(100));
    for i in 0..5 {
        assert_eq!(net.members_of(i), 4, "node {i} knows every other node");
    }
}

#[test]
fn a_crashed_node_is_declared_down_by_every_other() {
    let mut net = Net::new(4, Arc::new(fast));
    join_all(&mut net);
    net.run_for(Duration::from_secs(3), Duration::from_millis(100));
    assert!((0..4).all(|i| net.members_of(i) == 3));
    net.dead[3] = true;
    // Probe 0.5 s, suspicion 2 s: a few seconds of simulated time suffice.
    net.run_for(Duration::from_secs(10), Duration::from_millis(100));
    let gone = identity(3).node_id;
    for i in 0..3 {
        assert_eq!(net.members_of(i), 2, "node {i} dropped the crashed node");
        assert!(
            net.downs_seen[i].contains(&gone),
            "node {i} was told it is down"
        );
    }
}

#[test]
fn nothing_fires_before_the_next_wakeup() {
    let mut net = Net::new(2, Arc::new(fast));
    join_all(&mut net);
    let wake = net.cores[1].next_wakeup();
    let before = wake - Duration::from_millis(1);
    assert!(before >= net.now, "the first timer is in the future");
    let fired = net.cores[1].advance(before, &mut net.runtimes[1]);
    assert_eq!(fired, 0);
    assert!(net.cores[1].pending_timers() > 0);
    let fired = net.cores[1].advance(wake, &mut net.runtimes[1]);
    assert!(
        fired >= 1 || net.cores[1].next_wakeup() > wake,
        "at its wakeup the core fires its due timer (or the watchdog ran)"
    );
}

#[test]
fn timings_follow_the_cluster_size() {
    let sizes = Arc::new(Mutex::new(Vec::new()));
    let seen = sizes.clone();
    let config_for: ConfigFor = Arc::new(move |size| {
        seen.lock().expect("lock").push(size);
        fast(size)
    });
    let mut net = Net::new(6, config_for);
    join_all(&mut net);
    net.run_for(Duration::from_secs(5), Duration::from_millis(100));
    assert!(
        net.cores.iter().all(|c| c.sized_for() >= 5),
        "every core resized for the six-node cluster: {:?}",
        net.cores.iter().map(|c| c.sized_for()).collect::<Vec<_>>()
    );
    assert!(sizes.lock().expect("lock").iter().any(|&s| s >= 5));
}

#[test]
fn a_node_that_leaves_is_down_at_once_without_detection() {
    let mut net = Net::new(3, Arc::new(fast));
    join_all(&mut net);
    net.run_for(Duration::from_secs(3), Duration::from_millis(100));
    let now = net.now;
    net.cores[2]
        .leave(now, &mut net.runtimes[2])
        .expect("leave");
    net.deliver();
    // Well under the 0.5 s probe plus 2 s suspicion detection would take.
    net.dead[2] = true;
    net.run_for(Duration::from_millis(1000), Duration::from_millis(50));
    let gone = identity(2).node_id;
    for i in 0..2 {
        assert_eq!(net.members_of(i), 1, "node {i} dropped the node that left");
        assert!(
            net.downs_seen[i].contains(&gone),
            "node {i} was told it left"
        );
    }
}

#[test]
fn lifeguard_suspicion_timeout_shrinks_with_confirmations() {
    let lg = Lifeguard::default();
    let min = Duration::from_secs(2);
    let timeouts: Vec<Duration> = (0..6).map(|c| lg.suspicion_timeout(min, c)).collect();
    assert_eq!(timeouts[0], min * 6, "unconfirmed: the longest, 6 × min");
    assert!(
        timeouts[1] < timeouts[0] && timeouts[1] > min,
        "{timeouts:?}"
    );
    assert_eq!(timeouts[2], min, "K = 2 confirmations reach the floor");
    assert!(
        timeouts[3..].iter().all(|t| *t == min),
        "never under the floor"
    );
    // The formula: max − (max − min) · log(C + 1) / log(K + 1), at C = 1.
    let expected = 12.0 - 10.0 * 2f64.ln() / 3f64.ln();
    assert!((timeouts[1].as_secs_f64() - expected).abs() < 1e-6);
}

#[test]
fn a_suspicion_confirmed_by_independent_members_times_out_sooner() {
    let mut net = Net::new(8, Arc::new(fast)).with_lifeguard();
    join_all(&mut net);
    net.run_for(Duration::from_secs(5), Duration::from_millis(100));
    assert!((0..8).all(|i| net.members_of(i) == 7));
    net.dead[7] = true;
    let gone = identity(7);
    // Follow node 0's timeout for the crashed node until it is down.
    let mut seen = Vec::new();
    for _ in 0..300 {
        net.run_for(Duration::from_millis(100), Duration::from_millis(100));
        if let Some(t) = net.cores[0].suspicion_timeout(&gone) {
            if seen.last() != Some(&t) {
                seen.push(t);
            }
        }
        if net.downs_seen[0].contains(&gone.node_id) {
            break;
        }
    }
    assert!(
        net.downs_seen[0].contains(&gone.node_id),
        "node 0 declared the crashed node down; timeouts seen {seen:?}"
    );
    let first = *seen.first().expect("node 0 followed the suspicion");
    let last = *seen.last().expect("node 0 followed the suspicion");
    assert!(
        last < first,
        "the timeout shrank as others confirmed: {seen:?}"
    );
    assert!(last >= Duration::from_secs(2), "never under the floor");
    net.run_for(Duration::from_secs(20), Duration::from_millis(100));
    for i in 0..7 {
        assert!(
            net.downs_seen[i].contains(&gone.node_id),
            "node {i} saw it down"
        );
    }
}

/// Runs 6 nodes for a minute while node 0's CPU stalls: it reads its
/// packets only once every 3 s (its clock and timers run on). Returns the
/// healthy nodes (all but node 0) that anyone declared down. Node 0 itself
/// may well be: it does not answer for seconds at a time.
fn stall_node_zero(lifeguard: bool) -> (Vec<NodeId>, u32) {
    let mut net = Net::new(6, Arc::new(fast));
    if lifeguard {
        net = net.with_lifeguard();
    }
    join_all(&mut net);
    net.run_for(Duration::from_secs(5), Duration::from_millis(100));
    assert!((0..6).all(|i| net.members_of(i) == 5));
    net.stalled[0] = true;
    let mut worst_health = 0;
    for _ in 0..20 {
        net.run_for(Duration::from_secs(3), Duration::from_millis(100));
        net.release(0);
        worst_health = worst_health.max(net.cores[0].local_health());
    }
    let stalled = identity(0).node_id;
    let mut wrongly_down: Vec<NodeId> = net
        .downs_seen
        .iter()
        .flatten()
        .filter(|id| **id != stalled)
        .cloned()
        .collect();
    wrongly_down.sort();
    wrongly_down.dedup();
    (wrongly_down, worst_health)
}

#[test]
fn a_node_with_a_stalled_cpu_does_not_declare_the_healthy_cluster_dead() {
    let (down, health) = stall_node_zero(true);
    assert!(
        down.is_empty(),
        "with Lifeguard nobody healthy is declared down, got {down:?}"
    );
    assert!(health > 0, "the stalled node noticed its own trouble");
    // The same stall without Lifeguard: the stalled node's 2 s suspicion
    // timeouts fire before it reads the refutations.
    let (down, _) = stall_node_zero(false);
    assert!(
        !down.is_empty(),
        "without Lifeguard the stall costs healthy nodes (the test's premise)"
    );
}

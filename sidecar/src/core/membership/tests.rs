//! A tiny in-memory network of cores under simulated time: every packet is
//! delivered (or dropped) by the test, every clock is the test's.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use foca::{AccumulatingRuntime, Config, NoCustomBroadcast, OwnedNotification};
use mesh_proto::{NodeId, NodeIdentity};
use rand::rngs::SmallRng;
use rand::SeedableRng;

use super::{Certified, ConfigFor, Lifeguard, PacketError, SwimCore};

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
    /// Members each node's own probes failed, in order.
    probes_failed: Vec<Vec<NodeId>>,
    /// Nodes whose CPU is stalled: packets to them wait here until released.
    stalled: Vec<bool>,
    held: Vec<Vec<Vec<u8>>>,
    /// (from, to) pairs whose next packet the network loses.
    lose_next: Vec<(usize, usize)>,
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
            probes_failed: vec![Vec::new(); n as usize],
            stalled: vec![false; n as usize],
            held: vec![Vec::new(); n as usize],
            lose_next: Vec::new(),
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
                    match notification {
                        OwnedNotification::MemberDown(id) => self.downs_seen[from].push(id.node_id),
                        OwnedNotification::ProbeFailed(_, id) => {
                            self.probes_failed[from].push(id.node_id);
                        }
                        _ => {}
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
                if let Some(at) = self.lose_next.iter().position(|&p| p == (from, to)) {
                    self.lose_next.swap_remove(at);
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
fn a_certificate_admits_only_its_own_node_as_the_source() {
    let node = Certified::Node("node-1".into());
    assert!(node.admits("node-1"));
    assert!(!node.admits("node-2"));
    assert!(!node.admits("node-10"), "a prefix is not the node");
    assert!(!node.admits(""));
    assert!(Certified::Unbound.admits("anyone"));
    assert!(!Certified::Unreadable.admits("node-1"));
}

#[test]
fn a_packet_whose_source_is_not_the_certified_node_is_refused_before_foca_sees_it() {
    let mut net = Net::new(2, Arc::new(fast));
    let now = net.now;
    net.cores[1]
        .announce(identity(0), now, &mut net.runtimes[1])
        .expect("announce");
    let (to, announce) = net.runtimes[1]
        .to_send()
        .expect("node-1 sends its announce");
    assert_eq!(to, identity(0));
    let mut rt = AccumulatingRuntime::new();

    // node-1's announce over a connection certified as node-2 (or whose
    // binding cannot be read): refused, with the claim, and nothing learnt
    // or answered.
    for certified in [Certified::Node("node-2".into()), Certified::Unreadable] {
        let refused = net.cores[0]
            .handle_data_from(&announce, &certified, now, &mut rt)
            .expect_err("an impostor's packet");
        match refused {
            PacketError::Impersonation { claimed } => assert_eq!(claimed, identity(1)),
            PacketError::Foca(e) => panic!("refused by foca, not by the check: {e}"),
        }
        assert_eq!(net.members_of(0), 0, "{certified:?}: the claim was applied");
        assert!(
            rt.to_send().is_none(),
            "{certified:?}: the impostor was answered"
        );
        assert!(
            rt.to_notify().is_none(),
            "{certified:?}: foca saw the packet"
        );
    }

    // Garbage is still foca's to refuse (a decode error, not impersonation).
    let garbage =
        net.cores[0].handle_data_from(&[0xff; 40], &Certified::Node("node-2".into()), now, &mut rt);
    assert!(matches!(garbage, Err(PacketError::Foca(_))), "{garbage:?}");

    // The same packet over node-1's own connection is taken and answered;
    // so is one over a connection whose certificate binds no id.
    net.cores[0]
        .handle_data_from(&announce, &Certified::Node("node-1".into()), now, &mut rt)
        .expect("node-1's own packet");
    assert_eq!(net.members_of(0), 1);
    assert!(rt.to_send().is_some_and(|(to, _)| to == identity(1)));
    let mut fresh = Net::new(1, Arc::new(fast));
    fresh.cores[0]
        .handle_data_from(&announce, &Certified::Unbound, now, &mut rt)
        .expect("a packet over an unbound certificate");
    assert_eq!(fresh.members_of(0), 1);
}

#[test]
fn a_membership_change_is_reported_once_and_timers_start_with_the_join() {
    let mut net = Net::new(2, Arc::new(fast));
    assert_eq!(net.cores[1].pending_timers(), 0, "nothing to do alone");
    assert!(!net.cores[1].take_members_changed(), "nothing happened yet");
    join_all(&mut net);
    assert!(net.cores[1].pending_timers() > 0);
    assert!(net.cores[1].take_members_changed(), "the seed came up");
    assert!(!net.cores[1].take_members_changed(), "reported once");
}

/// The state `core` holds for node `n`, if it knows it.
fn state_of(core: &Core, n: u16) -> Option<foca::State> {
    let id = identity(n);
    core.foca()
        .iter_membership_state()
        .find(|m| *m.id() == id)
        .map(|m| m.state())
}

#[test]
fn a_suspicion_nobody_times_out_is_declared_down_after_twice_the_suspicion_time_and_a_probe() {
    // A suspicion learnt from gossip starts no timer here (only the prober
    // that raised it holds one), so if that prober is gone the suspect
    // stays suspect forever unless the watchdog expires it.
    let mut net = Net::new(1, Arc::new(fast));
    let start = net.now;
    let learnt = [
        foca::Member::new(identity(1), 0, foca::State::Suspect),
        foca::Member::new(identity(2), 0, foca::State::Alive),
    ];
    net.cores[0]
        .apply_many(learnt.into_iter(), false, start, &mut net.runtimes[0])
        .expect("apply the gossiped states");
    assert_eq!(state_of(&net.cores[0], 1), Some(foca::State::Suspect));
    // fast(): suspicion 2 s and probe 500 ms, so the limit is 4.5 s.
    let limit = Duration::from_millis(4_500);
    let rt = &mut net.runtimes[0];
    assert_eq!(net.cores[0].expire_stuck_suspicions(start, rt), 0);
    assert_eq!(
        net.cores[0].expire_stuck_suspicions(start + limit, rt),
        0,
        "not past the limit yet"
    );
    assert_eq!(state_of(&net.cores[0], 1), Some(foca::State::Suspect));
    assert_eq!(
        net.cores[0].expire_stuck_suspicions(start + limit + Duration::from_millis(1), rt),
        1,
        "one stuck suspicion expired"
    );
    assert_eq!(state_of(&net.cores[0], 1), Some(foca::State::Down));
    assert_eq!(
        state_of(&net.cores[0], 2),
        Some(foca::State::Alive),
        "an alive member is never expired"
    );
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

#[test]
fn a_prober_that_heard_the_suspicion_first_still_shrinks_its_timeout() {
    // After the first prober of a crashed node suspects it, the suspicion
    // reaches everyone by gossip before their own probes fail. Those later
    // probers originated the suspicion too, and their timeout must shrink
    // with confirmations; held to the floor for relays (2 × suspicion +
    // probe), detection at 100 agents took 9 s instead of 4.
    let mut net = Net::new(6, Arc::new(fast)).with_lifeguard();
    join_all(&mut net);
    net.run_for(Duration::from_secs(5), Duration::from_millis(100));
    assert!((0..6).all(|i| net.members_of(i) == 5));
    for failed in &mut net.probes_failed {
        failed.clear();
    }
    net.dead[5] = true;
    let gone = identity(5);
    // fast(): suspicion 2 s, probe 500 ms.
    let floor = Duration::from_millis(4_500);
    let mut shortest: Vec<Option<Duration>> = vec![None; 5];
    let mut relayed_first = vec![false; 5];
    for _ in 0..200 {
        net.run_for(Duration::from_millis(50), Duration::from_millis(50));
        for i in 0..5 {
            let own_failed = net.probes_failed[i].contains(&gone.node_id);
            let timeout = net.cores[i].suspicion_timeout(&gone);
            if timeout.is_some() && !own_failed {
                relayed_first[i] = true;
            }
            if own_failed {
                if let Some(t) = timeout {
                    shortest[i] = Some(shortest[i].map_or(t, |s: Duration| s.min(t)));
                }
            }
        }
        if (0..5).all(|i| net.downs_seen[i].contains(&gone.node_id)) {
            break;
        }
    }
    let late_probers: Vec<usize> = (0..5)
        .filter(|&i| relayed_first[i] && shortest[i].is_some())
        .collect();
    assert!(
        !late_probers.is_empty(),
        "no node probed the crashed one after hearing the suspicion: {relayed_first:?} {shortest:?}"
    );
    for i in late_probers {
        let t = shortest[i].unwrap_or(floor);
        assert!(
            t < floor,
            "node {i} heard the suspicion, then its own probe failed: its timeout stayed at {t:?}, the floor for relays"
        );
    }
}

/// Two nodes (so nobody can probe indirectly), and the next packet from
/// node 0 to node 1 is lost: a ping, or the ack to node 1's ping. The
/// probes that failed, on either side.
fn failed_probes_after_one_lost_packet(retry_direct_probe: bool) -> Vec<NodeId> {
    let config_for: ConfigFor = Arc::new(move |size| {
        let mut config = fast(size);
        config.retry_direct_probe = retry_direct_probe;
        config
    });
    let mut net = Net::new(2, config_for);
    join_all(&mut net);
    net.run_for(Duration::from_secs(2), Duration::from_millis(50));
    assert_eq!(net.members_of(0), 1, "formed");
    net.lose_next.push((0, 1));
    net.run_for(Duration::from_secs(2), Duration::from_millis(50));
    assert!(net.lose_next.is_empty(), "a packet was lost");
    net.probes_failed.concat()
}

#[test]
fn one_lost_datagram_is_retried_directly_before_anyone_is_suspected() {
    assert_eq!(
        failed_probes_after_one_lost_packet(true),
        Vec::<NodeId>::new(),
        "the second direct ping at the indirect stage is answered"
    );
    // The same loss without the second ping: with no member to ask for an
    // indirect probe, the probe fails and its member becomes suspect.
    assert_eq!(failed_probes_after_one_lost_packet(false).len(), 1);
}

#[test]
fn the_agent_probes_with_a_second_chance() {
    for profile in [
        crate::config::Profile::Local,
        crate::config::Profile::Lan,
        crate::config::Profile::Wan,
    ] {
        let config = crate::membership::foca_config(profile, 100);
        assert!(config.retry_direct_probe, "{profile:?}");
        assert_eq!(config.num_indirect_probes.get(), 5, "{profile:?}");
    }
}

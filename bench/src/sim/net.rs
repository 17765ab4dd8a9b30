//! The simulated world: a clock, an event queue ordered by (time, sequence)
//! so runs are deterministic, and a lossy network with a one-way delay. The
//! [`NodeRuntime`] hands what a node's membership core sends and notifies
//! to them; timers stay in each core's own queue, woken by `Wake` events.

use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::time::Duration;

use foca::{Notification, Timer};

use mesh_proto::gossip::SyncMessage;
use rand::rngs::SmallRng;
use rand::{RngExt, SeedableRng};

use super::node::SimId;
use super::observe::Observer;

/// Simulated time in nanoseconds since the start of the run.
pub type Nanos = u64;

/// Nanoseconds in a duration, saturating.
pub fn nanos(d: Duration) -> Nanos {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// What travels between nodes.
#[derive(Debug)]
pub enum Payload {
    /// A SWIM packet, as foca encoded it.
    Swim(Vec<u8>),
    /// An anti-entropy message (kept decoded; its encoded size is counted).
    Sync(SyncMessage),
}

/// Something that happens at a point in simulated time.
#[derive(Debug)]
pub enum EventKind {
    /// A message arrives.
    Deliver {
        /// Receiver.
        to: u32,
        /// Sender.
        from: u32,
        /// Content.
        payload: Payload,
    },
    /// A node's membership core is due (its next timer or watchdog).
    Wake {
        /// Which node.
        node: u32,
    },
    /// A node starts an anti-entropy round.
    SyncTick {
        /// Which node.
        node: u32,
    },
    /// A joiner checks that its announce was answered, else announces again.
    JoinCheck {
        /// The joiner.
        node: u32,
        /// Where it announces.
        seed: u32,
    },
}

struct Event {
    at: Nanos,
    seq: u64,
    kind: EventKind,
}

impl PartialEq for Event {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}

impl Eq for Event {}

impl PartialOrd for Event {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Event {
    // Reversed: BinaryHeap is a max-heap and the earliest event goes first.
    fn cmp(&self, other: &Self) -> Ordering {
        (other.at, other.seq).cmp(&(self.at, self.seq))
    }
}

/// Pending events, earliest first; ties go in the order they were queued.
#[derive(Default)]
pub struct Queue {
    heap: BinaryHeap<Event>,
    seq: u64,
}

impl Queue {
    /// Queues `kind` at time `at`.
    pub fn push(&mut self, at: Nanos, kind: EventKind) {
        self.seq += 1;
        self.heap.push(Event {
            at,
            seq: self.seq,
            kind,
        });
    }

    /// Time of the next event.
    pub fn next_at(&self) -> Option<Nanos> {
        self.heap.peek().map(|e| e.at)
    }

    /// Takes the next event.
    pub fn pop(&mut self) -> Option<(Nanos, EventKind)> {
        self.heap.pop().map(|e| (e.at, e.kind))
    }
}

/// Per-node traffic counters (sent side).
#[derive(Debug, Clone, Default)]
pub struct Traffic {
    /// SWIM packets sent.
    pub swim_packets: u64,
    /// SWIM bytes sent.
    pub swim_bytes: u64,
    /// Anti-entropy messages sent.
    pub sync_messages: u64,
    /// Anti-entropy bytes sent.
    pub sync_bytes: u64,
    /// Messages the network lost.
    pub lost: u64,
}

impl Traffic {
    /// Every message sent.
    pub fn messages(&self) -> u64 {
        self.swim_packets + self.sync_messages
    }

    /// Every byte sent.
    pub fn bytes(&self) -> u64 {
        self.swim_bytes + self.sync_bytes
    }
}

/// The links between every pair of nodes: independent loss, and a one-way
/// delay drawn uniformly from 80 % to 120 % of the nominal delay.
pub struct Network {
    loss: f64,
    delay: Nanos,
    rng: SmallRng,
    /// Totals over the run.
    pub total: Traffic,
}

impl Network {
    /// A network losing `loss` (0..1) of messages, with `delay` one way.
    pub fn new(loss: f64, delay: Duration, seed: u64) -> Self {
        Self {
            loss: loss.clamp(0.0, 1.0),
            delay: nanos(delay),
            rng: SmallRng::seed_from_u64(seed),
            total: Traffic::default(),
        }
    }

    /// Sends `payload` of `bytes` from `from` to `to` at `now`.
    pub fn send(
        &mut self,
        queue: &mut Queue,
        now: Nanos,
        from: u32,
        to: u32,
        payload: Payload,
        bytes: usize,
    ) {
        match payload {
            Payload::Swim(_) => {
                self.total.swim_packets += 1;
                self.total.swim_bytes += bytes as u64;
            }
            Payload::Sync(_) => {
                self.total.sync_messages += 1;
                self.total.sync_bytes += bytes as u64;
            }
        }
        if self.loss > 0.0 && self.rng.random::<f64>() < self.loss {
            self.total.lost += 1;
            return;
        }
        let delay = if self.delay == 0 {
            0
        } else {
            let low = self.delay * 4 / 5;
            self.rng.random_range(low..=self.delay * 6 / 5)
        };
        queue.push(now + delay, EventKind::Deliver { to, from, payload });
    }
}

/// foca's view of the world while one node handles one event.
pub struct NodeRuntime<'a> {
    /// The node foca belongs to.
    pub node: u32,
    /// Current simulated time.
    pub now: Nanos,
    /// Where timers and deliveries go.
    pub queue: &'a mut Queue,
    /// The links.
    pub net: &'a mut Network,
    /// Who watches the notifications.
    pub observer: &'a mut Observer,
}

impl foca::Runtime<SimId> for NodeRuntime<'_> {
    fn notify(&mut self, notification: Notification<'_, SimId>) {
        self.observer.note(self.node, self.now, notification);
    }

    fn send_to(&mut self, to: SimId, data: &[u8]) {
        self.net.send(
            self.queue,
            self.now,
            self.node,
            to.index,
            Payload::Swim(data.to_vec()),
            data.len(),
        );
    }

    fn submit_after(&mut self, _timer: Timer<SimId>, _after: Duration) {
        // Never called: the membership core keeps its timers in its own
        // ordered queue and the world wakes it at its next deadline.
    }
}

/// The runtime of bootstrap: ignores notifications and refuses to send
/// (the core keeps the timers).
pub struct BootRuntime {
    /// Packets foca tried to send (none are expected).
    pub unexpected_sends: usize,
}

impl foca::Runtime<SimId> for BootRuntime {
    fn notify(&mut self, _notification: Notification<'_, SimId>) {}

    fn send_to(&mut self, _to: SimId, _data: &[u8]) {
        self.unexpected_sends += 1;
    }

    fn submit_after(&mut self, _timer: Timer<SimId>, _after: Duration) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_come_out_in_time_then_queue_order() {
        let mut q = Queue::default();
        q.push(20, EventKind::SyncTick { node: 1 });
        q.push(10, EventKind::SyncTick { node: 2 });
        q.push(10, EventKind::SyncTick { node: 3 });
        let order: Vec<u32> = std::iter::from_fn(|| q.pop())
            .map(|(_, k)| match k {
                EventKind::SyncTick { node } => node,
                _ => 0,
            })
            .collect();
        assert_eq!(order, vec![2, 3, 1]);
    }

    #[test]
    fn the_network_loses_about_what_it_is_told_to_and_deterministically() {
        let run = |seed| {
            let mut q = Queue::default();
            let mut net = Network::new(0.1, Duration::from_millis(5), seed);
            for _ in 0..10_000 {
                net.send(&mut q, 0, 0, 1, Payload::Swim(vec![0]), 1);
            }
            (net.total.lost, q.next_at())
        };
        let (lost, first) = run(7);
        assert!((800..1200).contains(&lost), "lost {lost}");
        assert_eq!(run(7), (lost, first));
        assert!(first.is_some_and(|t| (4_000_000..=6_000_000).contains(&t)));
    }
}

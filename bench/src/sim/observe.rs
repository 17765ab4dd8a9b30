//! What the simulator learns from foca's notifications: when each node saw
//! a watched member come up or go down, and how often a node that was in
//! fact running got suspected or declared down (false positives).

use std::collections::BTreeSet;

use foca::Notification;

use super::net::Nanos;
use super::node::SimId;

/// Tracks how one membership fact spreads: which nodes have noticed it, and when.
#[derive(Debug, Clone)]
pub struct Spread {
    /// The member the fact is about.
    pub target: u32,
    /// When the fact became true.
    pub since: Nanos,
    seen: Vec<Option<Nanos>>,
    /// How many nodes have noticed.
    pub count: usize,
    /// When the latest one noticed.
    pub last_at: Nanos,
}

impl Spread {
    /// Starts watching `target` among `nodes` nodes from time `since`.
    pub fn new(target: u32, nodes: usize, since: Nanos) -> Self {
        Self {
            target,
            since,
            seen: vec![None; nodes],
            count: 0,
            last_at: since,
        }
    }

    /// Notes that `node` noticed at `now` (only its first time counts).
    pub fn mark(&mut self, node: u32, now: Nanos) {
        if let Some(slot) = self.seen.get_mut(node as usize) {
            if slot.is_none() {
                *slot = Some(now);
                self.count += 1;
                self.last_at = now;
            }
        }
    }

    /// Whether `node` has noticed.
    pub fn has(&self, node: u32) -> bool {
        self.seen.get(node as usize).is_some_and(Option::is_some)
    }

    /// How long after `since` each node that noticed did, sorted, in seconds.
    pub fn delays_secs(&self) -> Vec<f64> {
        let mut out: Vec<f64> = self
            .seen
            .iter()
            .flatten()
            .map(|at| at.saturating_sub(self.since) as f64 / 1e9)
            .collect();
        out.sort_by(f64::total_cmp);
        out
    }
}

/// Everything the simulator counts from notifications.
#[derive(Debug, Clone, Default)]
pub struct Observer {
    /// Nodes that really crashed (by index); suspicions of the others are false.
    pub crashed: Vec<bool>,
    /// A member whose MemberUp is being watched (a joiner).
    pub up: Option<Spread>,
    /// A member whose MemberDown is being watched (a crashed node).
    pub down: Option<Spread>,
    /// Probes of a running node that failed (it became suspect).
    pub false_suspicions: u64,
    /// Probes of a crashed node that failed.
    pub true_suspicions: u64,
    /// First failed probe of the watched down member.
    pub first_suspicion_at: Option<Nanos>,
    /// Down notifications about running nodes (one per node told).
    pub false_downs: u64,
    /// The running nodes those notifications were about.
    pub falsely_down: BTreeSet<u32>,
    /// Nodes that learned they had been declared down and renewed their identity.
    pub rejoins: u64,
}

impl Observer {
    /// An observer of `nodes` nodes, none crashed.
    pub fn new(nodes: usize) -> Self {
        Self {
            crashed: vec![false; nodes],
            ..Self::default()
        }
    }

    fn is_crashed(&self, id: &SimId) -> bool {
        self.crashed
            .get(id.index as usize)
            .copied()
            .unwrap_or(false)
    }

    /// Records one notification `node` got at `now`.
    pub fn note(&mut self, node: u32, now: Nanos, notification: Notification<'_, SimId>) {
        match notification {
            Notification::MemberUp(id) => {
                if let Some(up) = self.up.as_mut().filter(|s| s.target == id.index) {
                    up.mark(node, now);
                }
            }
            Notification::MemberDown(id) => {
                if self.is_crashed(id) {
                    if let Some(down) = self.down.as_mut().filter(|s| s.target == id.index) {
                        down.mark(node, now);
                    }
                } else {
                    self.false_downs += 1;
                    self.falsely_down.insert(id.index);
                }
            }
            Notification::ProbeFailed(_, id) => {
                if self.is_crashed(id) {
                    self.true_suspicions += 1;
                    if self.down.as_ref().is_some_and(|s| s.target == id.index) {
                        self.first_suspicion_at.get_or_insert(now);
                    }
                } else {
                    self.false_suspicions += 1;
                }
            }
            Notification::Rejoin(_) => self.rejoins += 1,
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spreads_count_each_node_once_and_suspicions_split_true_from_false() {
        let mut o = Observer::new(4);
        o.crashed[3] = true;
        o.down = Some(Spread::new(3, 4, 0));
        let dead = SimId {
            index: 3,
            generation: 0,
        };
        let alive = SimId {
            index: 2,
            generation: 0,
        };
        o.note(0, 5, Notification::MemberDown(&dead));
        o.note(0, 6, Notification::MemberDown(&dead));
        o.note(1, 9, Notification::MemberDown(&dead));
        o.note(1, 9, Notification::ProbeFailed(1, &alive));
        o.note(1, 7, Notification::ProbeFailed(1, &dead));
        let down = o.down.as_ref().expect("watching");
        assert_eq!((down.count, down.last_at), (2, 9));
        assert!(down.has(1) && !down.has(2));
        assert_eq!((o.false_suspicions, o.true_suspicions), (1, 1));
        assert_eq!(o.first_suspicion_at, Some(7));
    }
}

//! Which nodes to reap. A node absent from the active members for longer
//! than the reap time has its records (instances, node metadata) dropped
//! from this node's catalog; once it is back, its records are welcome
//! again. Consul reaps after 72 h and Serf after 24 h for the same reason: a
//! node that crashed and never returns must not stay in every catalog and
//! every listing forever.

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use mesh_proto::NodeId;

/// What one look at the members decided.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Verdict {
    /// Absent longer than the reap time: drop their records.
    pub reap: Vec<NodeId>,
    /// Reaped earlier and active again: take their records back.
    pub back: Vec<NodeId>,
}

/// Absence bookkeeping per node that owns records.
#[derive(Debug)]
pub struct Reaper {
    after: Duration,
    absent_since: HashMap<NodeId, Instant>,
    reaped: BTreeSet<NodeId>,
}

impl Reaper {
    /// Reaps nodes absent for `after`.
    pub fn new(after: Duration) -> Self {
        Self {
            after,
            absent_since: HashMap::new(),
            reaped: BTreeSet::new(),
        }
    }

    /// Looks at the `owners` of records in the catalog (never this node)
    /// and which of them `is_active`, at `now`.
    pub fn observe(
        &mut self,
        owners: impl IntoIterator<Item = NodeId>,
        is_active: impl Fn(&NodeId) -> bool,
        now: Instant,
    ) -> Verdict {
        let mut verdict = Verdict::default();
        let owners: BTreeSet<NodeId> = owners.into_iter().collect();
        // A node that owns nothing any more (deregistered everything, or
        // reaped) needs no clock.
        self.absent_since.retain(|node, _| owners.contains(node));
        for node in owners {
            if is_active(&node) {
                self.absent_since.remove(&node);
                continue;
            }
            let since = *self.absent_since.entry(node.clone()).or_insert(now);
            if now.saturating_duration_since(since) >= self.after
                && self.reaped.insert(node.clone())
            {
                self.absent_since.remove(&node);
                verdict.reap.push(node);
            }
        }
        let back: Vec<NodeId> = self
            .reaped
            .iter()
            .filter(|node| is_active(node))
            .cloned()
            .collect();
        for node in &back {
            self.reaped.remove(node);
        }
        verdict.back = back;
        verdict
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::test_support::node;

    #[test]
    fn a_node_absent_for_the_reap_time_is_reaped_once_and_taken_back_when_active() {
        let mut reaper = Reaper::new(Duration::from_secs(60));
        let start = Instant::now();
        let owners = || vec![node("a"), node("b")];
        let only_a = |n: &NodeId| n.as_str() == "a";
        assert_eq!(reaper.observe(owners(), only_a, start), Verdict::default());
        let almost = start + Duration::from_secs(59);
        assert_eq!(reaper.observe(owners(), only_a, almost), Verdict::default());
        let due = start + Duration::from_secs(60);
        assert_eq!(reaper.observe(owners(), only_a, due).reap, vec![node("b")]);
        // Reaped: its records are gone from the catalog, so it owns nothing.
        let later = due + Duration::from_secs(600);
        assert_eq!(
            reaper.observe(vec![node("a")], only_a, later),
            Verdict::default()
        );
        let both = |_: &NodeId| true;
        assert_eq!(
            reaper.observe(vec![node("a")], both, later).back,
            vec![node("b")]
        );
        assert_eq!(
            reaper.observe(owners(), both, later),
            Verdict::default(),
            "back once only"
        );
    }

    #[test]
    fn absence_restarts_when_a_node_comes_back_before_the_reap_time() {
        let mut reaper = Reaper::new(Duration::from_secs(60));
        let start = Instant::now();
        let owners = || vec![node("b")];
        let never = |_: &NodeId| false;
        let always = |_: &NodeId| true;
        reaper.observe(owners(), never, start);
        reaper.observe(owners(), always, start + Duration::from_secs(50));
        let verdict = reaper.observe(owners(), never, start + Duration::from_secs(70));
        assert!(verdict.reap.is_empty(), "absent for 20 s only: {verdict:?}");
        let verdict = reaper.observe(owners(), never, start + Duration::from_secs(130));
        assert_eq!(verdict.reap, vec![node("b")]);
    }
}

//! The recent routing decisions of this node's proxy, in a bounded ring:
//! which instance a call went to and why, and why not the others. The proxy
//! writes, the admin API (`GET /v1/decisions`) and the UI read.
//!
//! The ring holds at most [`Decisions::capacity`] entries whatever callers
//! send, and its lock is held only to push or copy, never across I/O.

use std::collections::VecDeque;
use std::sync::Mutex;

use mesh_proto::api::Ineligible;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

/// Default number of decisions kept.
pub const DEFAULT_CAPACITY: usize = 256;

/// One instance the proxy did not use, and why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rejected {
    /// `node/instance`.
    pub upstream: String,
    /// Why it could not be used.
    pub reason: Ineligible,
}

/// One routing decision of the proxy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Decision {
    /// Wall-clock time of the decision, ms since the Unix epoch.
    pub at_ms: u64,
    /// The service asked for (as the caller named it).
    pub service: String,
    /// `node/instance` picked, when one was.
    pub picked: Option<String>,
    /// RTT to the picked instance's node, in ms.
    pub rtt_ms: Option<f64>,
    /// Why this instance (or why none); the most common reasons are
    /// fixed text, not a copy per request.
    pub why: std::borrow::Cow<'static, str>,
    /// Eligible instances that were not picked this time.
    pub eligible_others: usize,
    /// Instances that could not be used, each with its reason.
    pub rejected: Vec<Rejected>,
    /// True when this was the retry of a failed attempt.
    pub retry: bool,
}

/// The ring of recent decisions.
pub struct Decisions {
    ring: Mutex<VecDeque<Decision>>,
    capacity: usize,
    /// Counts decisions recorded, for watchers (the UI's event stream).
    recorded: watch::Sender<u64>,
}

impl Decisions {
    /// An empty ring of at most `capacity` entries (at least 1).
    pub fn new(capacity: usize) -> Self {
        let capacity = capacity.max(1);
        Self {
            ring: Mutex::new(VecDeque::with_capacity(capacity)),
            capacity,
            recorded: watch::Sender::new(0),
        }
    }

    /// How many decisions are kept at most.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Records `decision`, dropping the oldest when the ring is full.
    pub fn record(&self, decision: Decision) {
        {
            let mut ring = self.ring.lock().unwrap_or_else(|p| p.into_inner());
            if ring.len() == self.capacity {
                ring.pop_front();
            }
            ring.push_back(decision);
        }
        self.recorded.send_modify(|n| *n += 1);
    }

    /// Up to `limit` decisions, newest first.
    pub fn recent(&self, limit: usize) -> Vec<Decision> {
        let ring = self.ring.lock().unwrap_or_else(|p| p.into_inner());
        ring.iter().rev().take(limit).cloned().collect()
    }

    /// A receiver that changes whenever a decision is recorded.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.recorded.subscribe()
    }
}

impl Default for Decisions {
    fn default() -> Self {
        Self::new(DEFAULT_CAPACITY)
    }
}

/// A short human text for a rejection reason.
pub fn describe(reason: &Ineligible) -> String {
    match reason {
        Ineligible::OverHardRtt {
            rtt_ms,
            hard_rtt_ms,
        } => format!("over hard RTT: {rtt_ms:.1} ms > {hard_rtt_ms} ms"),
        Ineligible::RttUnknown => "RTT unknown under a hard requirement".to_owned(),
        Ineligible::Unhealthy => "unhealthy (critical)".to_owned(),
        Ineligible::Ejected { for_ms } => {
            format!("ejected after consecutive failures ({for_ms} ms left)")
        }
        Ineligible::NodeDown => "node down".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decision(n: u64) -> Decision {
        Decision {
            at_ms: n,
            service: "svc".to_owned(),
            picked: None,
            rtt_ms: None,
            why: "".into(),
            eligible_others: 0,
            rejected: Vec::new(),
            retry: false,
        }
    }

    #[test]
    fn the_ring_keeps_the_newest_within_its_capacity() {
        let ring = Decisions::new(3);
        for n in 0..10 {
            ring.record(decision(n));
        }
        let recent: Vec<u64> = ring.recent(10).iter().map(|d| d.at_ms).collect();
        assert_eq!(recent, vec![9, 8, 7]);
        assert_eq!(ring.recent(1).len(), 1);
        assert_eq!(*ring.subscribe().borrow(), 10);
    }
}

//! Hybrid logical clocks: versions that respect causality across nodes whose
//! wall clocks disagree a little.
//!
//! A version is `(wall ms, logical counter, writer node)`; the node id breaks
//! ties so two writes never compare equal unless they are the same write.

use serde::{Deserialize, Serialize};

use crate::identity::NodeId;

/// A hybrid logical timestamp.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default,
)]
pub struct Hlc {
    /// Physical component, milliseconds since the Unix epoch.
    pub wall_ms: u64,
    /// Logical counter for events within the same millisecond.
    pub logical: u32,
}

/// The version of one catalog write: newer wins, the writer breaks ties.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Version {
    /// When the write happened.
    pub hlc: Hlc,
    /// Who wrote it.
    pub writer: NodeId,
}

/// One node's clock. Feed it the wall time; it never goes backwards.
#[derive(Debug, Clone, Default)]
pub struct HlcClock {
    last: Hlc,
}

impl HlcClock {
    /// Timestamp for a local event at wall time `wall_ms`.
    pub fn tick(&mut self, wall_ms: u64) -> Hlc {
        self.last = if wall_ms > self.last.wall_ms {
            Hlc {
                wall_ms,
                logical: 0,
            }
        } else if let Some(logical) = self.last.logical.checked_add(1) {
            Hlc {
                wall_ms: self.last.wall_ms,
                logical,
            }
        } else {
            // The counter is spent (a remote timestamp observed at its
            // maximum): step into the next millisecond rather than hand out
            // the same timestamp twice, which would give two different
            // writes one version and let replicas diverge.
            Hlc {
                wall_ms: self.last.wall_ms.saturating_add(1),
                logical: 0,
            }
        };
        self.last
    }

    /// Folds in a timestamp seen from another node, so our next tick is after it.
    pub fn observe(&mut self, remote: Hlc) {
        if remote > self.last {
            self.last = remote;
        }
    }

    /// The last timestamp handed out or observed.
    pub fn last(&self) -> Hlc {
        self.last
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_strictly_increasing_even_if_the_wall_clock_stalls_or_steps_back() {
        let mut clock = HlcClock::default();
        let a = clock.tick(1000);
        let b = clock.tick(1000);
        let c = clock.tick(900);
        let d = clock.tick(1001);
        assert!(a < b && b < c && c < d);
    }

    #[test]
    fn a_spent_logical_counter_moves_to_the_next_millisecond() {
        let mut clock = HlcClock::default();
        let remote = Hlc {
            wall_ms: 5000,
            logical: u32::MAX,
        };
        clock.observe(remote);
        let next = clock.tick(1000);
        assert!(next > remote);
    }

    #[test]
    fn observing_a_remote_future_moves_the_clock_forward() {
        let mut clock = HlcClock::default();
        clock.observe(Hlc {
            wall_ms: 5000,
            logical: 7,
        });
        let next = clock.tick(1000);
        assert!(
            next > Hlc {
                wall_ms: 5000,
                logical: 7
            }
        );
    }

    #[test]
    fn last_is_the_latest_tick_or_observed_timestamp() {
        let mut clock = HlcClock::default();
        let t = clock.tick(1000);
        assert_eq!(clock.last(), t);
        let remote = Hlc {
            wall_ms: 2000,
            logical: 3,
        };
        clock.observe(remote);
        assert_eq!(clock.last(), remote);
        clock.observe(t);
        assert_eq!(clock.last(), remote, "an older timestamp changes nothing");
    }
}

//! Why no instance could be picked, worded for the person who has to act.

use std::fmt;

use mesh_proto::api::{ErrorBody, RttSource};
use serde::{Deserialize, Serialize};

/// The instance closest to meeting a hard RTT requirement it still misses.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Nearest {
    /// Instance id.
    pub instance_id: String,
    /// Node it runs on.
    pub node: String,
    /// RTT from this node to its node, in ms, if known at all.
    pub rtt_ms: Option<f64>,
    /// Where `rtt_ms` came from.
    pub rtt_source: RttSource,
}

/// Why [`Balancer::pick`](super::Balancer::pick) found nothing to call.
///
/// `Display` gives the problem followed by what to do; [`SelectError::message`]
/// and [`SelectError::hint`] give the two halves apart, for JSON error bodies.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SelectError {
    /// No candidates at all.
    NoInstances {},
    /// Instances exist, but none is known to lie within the hard RTT requirement.
    NoneWithinHardRtt {
        /// The requirement, in ms.
        hard_rtt_ms: u32,
        /// The healthy instance closest to it, if any.
        nearest: Option<Nearest>,
    },
    /// Every instance is critical or on a node that is down.
    AllUnhealthy,
    /// Every instance that could serve is ejected after consecutive failures.
    AllEjected {
        /// Milliseconds until the first may be probed; 0 when a probe is in flight now.
        retry_in_ms: u64,
    },
    /// Every eligible instance is in `exclude`: already tried for this request.
    AllTried {
        /// How many eligible instances were excluded.
        tried: usize,
    },
}

// === impl SelectError ===

impl SelectError {
    /// What failed, with the values that made it fail (no advice).
    pub fn message(&self) -> String {
        match self {
            SelectError::NoInstances {} => "no instance of this service is registered".to_string(),
            SelectError::NoneWithinHardRtt {
                hard_rtt_ms,
                nearest,
            } => {
                let nearest = match nearest {
                    None => "no healthy instance to compare".to_string(),
                    Some(n) => match (n.rtt_ms, n.rtt_source) {
                        (Some(rtt), RttSource::Measured) => format!(
                            "nearest: {} on {} at {rtt:.1} ms",
                            n.instance_id, n.node
                        ),
                        (Some(rtt), _) => format!(
                            "nearest: {} on {} at {rtt:.1} ms, estimated, not yet measured",
                            n.instance_id, n.node
                        ),
                        (None, _) => format!(
                            "nearest: {} on {}, RTT not yet known",
                            n.instance_id, n.node
                        ),
                    },
                };
                format!("no instance within hard RTT {hard_rtt_ms} ms ({nearest})")
            }
            SelectError::AllUnhealthy => {
                "every instance is critical or on a node that is down".to_string()
            }
            SelectError::AllEjected { retry_in_ms: 0 } => {
                "every instance is ejected after consecutive failures; one is being probed now"
                    .to_string()
            }
            SelectError::AllEjected { retry_in_ms } => format!(
                "every instance is ejected after consecutive failures; the next probe is in {retry_in_ms} ms"
            ),
            SelectError::AllTried { tried } => format!(
                "all {tried} eligible instance(s) were already tried for this request"
            ),
        }
    }

    /// What to do about it.
    pub fn hint(&self) -> &'static str {
        match self {
            SelectError::NoInstances {} => {
                "check the service name, or register an instance (gossamer register NAME --port PORT)"
            }
            SelectError::NoneWithinHardRtt { .. } => {
                "relax x-gossamer-hard-rtt-ms or add an instance closer to this node"
            }
            SelectError::AllUnhealthy => {
                "check the instances' health and their nodes (gossamer instances NAME); calls resume as soon as one passes"
            }
            SelectError::AllEjected { .. } => {
                "the instances keep failing (connect errors, resets or 5xx): check their logs; calls resume when a probe succeeds"
            }
            SelectError::AllTried { .. } => {
                "no other instance is left to retry on; add instances or find out why they fail"
            }
        }
    }

    /// The body of the proxy's or admin API's error answer.
    pub fn to_error_body(&self) -> ErrorBody {
        ErrorBody {
            error: self.message(),
            hint: self.hint().to_string(),
        }
    }
}

impl fmt::Display for SelectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}; {}", self.message(), self.hint())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nearest(rtt_ms: Option<f64>, rtt_source: RttSource) -> Option<Nearest> {
        Some(Nearest {
            instance_id: "echo-3".into(),
            node: "node-c".into(),
            rtt_ms,
            rtt_source,
        })
    }

    #[test]
    fn hard_rtt_message_names_the_nearest_instance_and_what_to_do() {
        let e = SelectError::NoneWithinHardRtt {
            hard_rtt_ms: 20,
            nearest: nearest(Some(41.23), RttSource::Measured),
        };
        assert_eq!(
            e.to_string(),
            "no instance within hard RTT 20 ms (nearest: echo-3 on node-c at 41.2 ms); \
             relax x-gossamer-hard-rtt-ms or add an instance closer to this node"
        );
    }

    #[test]
    fn hard_rtt_message_says_when_the_rtt_is_not_measured() {
        let est = SelectError::NoneWithinHardRtt {
            hard_rtt_ms: 20,
            nearest: nearest(Some(12.0), RttSource::Estimated),
        };
        assert!(est
            .message()
            .contains("12.0 ms, estimated, not yet measured"));
        let unknown = SelectError::NoneWithinHardRtt {
            hard_rtt_ms: 20,
            nearest: nearest(None, RttSource::Unknown),
        };
        assert!(unknown.message().contains("RTT not yet known"));
        let none = SelectError::NoneWithinHardRtt {
            hard_rtt_ms: 20,
            nearest: None,
        };
        assert!(none.message().contains("no healthy instance"));
    }

    #[test]
    fn every_variant_has_a_message_and_a_hint() {
        let all = [
            SelectError::NoInstances {},
            SelectError::NoneWithinHardRtt {
                hard_rtt_ms: 1,
                nearest: None,
            },
            SelectError::AllUnhealthy,
            SelectError::AllEjected { retry_in_ms: 0 },
            SelectError::AllEjected { retry_in_ms: 1500 },
            SelectError::AllTried { tried: 2 },
        ];
        for e in all {
            assert!(!e.message().is_empty());
            assert!(!e.hint().is_empty());
            let body = e.to_error_body();
            assert_eq!(format!("{}; {}", body.error, body.hint), e.to_string());
        }
        assert!(SelectError::AllEjected { retry_in_ms: 1500 }
            .message()
            .contains("1500 ms"));
    }
}

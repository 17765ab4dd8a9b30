//! Upstream selection: which instance of a service a call goes to.
//!
//! Pure: nothing here reads a clock or touches a socket. Every function takes
//! `now`, so the sidecar's proxy, SDK callers and the `bench` simulator drive
//! the same code, and tests drive it with synthetic instants.
//!
//! The pipeline, in the order a call meets it:
//! 1. **requirements**: the stricter of the definition's and the caller's
//!    ([`Requirements::stricter`]).
//! 2. **eligibility** ([`Balancer::rank`]): a node that is down, a critical
//!    instance, or (under a hard requirement) an RTT above it or not measured
//!    rules an instance out; so does an ejection. Among the rest, those within
//!    the soft requirement are preferred whenever there are any.
//! 3. **pick** ([`Balancer::pick`]): power of two random choices on
//!    peak-EWMA latency × (in-flight + 1), as linkerd does.
//! 4. **report** ([`Balancer::report`]): the outcome feeds the latency
//!    estimate, failure accrual and ejection.
//! 5. **retry** ([`Balancer::try_retry`]): a linkerd-style retry budget.

mod balancer;
mod budget;
mod classify;
mod config;
mod eject;
mod error;
mod ewma;

use std::time::Duration;

use mesh_proto::api::{Ineligible, RttSource};
use mesh_proto::catalog::{self, Health};
use serde::{Deserialize, Serialize};

pub use balancer::Balancer;
pub use config::BalancerConfig;
pub use error::{Nearest, SelectError};

/// RTT requirements of one call, in milliseconds; `None` means none.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Requirements {
    /// Never call an instance whose node RTT is above this, or not known.
    #[serde(default)]
    pub hard_rtt_ms: Option<u32>,
    /// Prefer instances whose node RTT is at most this.
    #[serde(default)]
    pub soft_rtt_ms: Option<u32>,
}

// === impl Requirements ===

impl Requirements {
    /// Per field, the stricter (smaller) of the two; a missing one never wins.
    pub fn stricter(self, other: Requirements) -> Requirements {
        fn min(a: Option<u32>, b: Option<u32>) -> Option<u32> {
            match (a, b) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            }
        }
        Requirements {
            hard_rtt_ms: min(self.hard_rtt_ms, other.hard_rtt_ms),
            soft_rtt_ms: min(self.soft_rtt_ms, other.soft_rtt_ms),
        }
    }
}

impl From<&catalog::Requirements> for Requirements {
    fn from(def: &catalog::Requirements) -> Self {
        Requirements {
            hard_rtt_ms: def.hard_rtt_ms,
            soft_rtt_ms: def.soft_rtt_ms,
        }
    }
}

/// One instance of the service, as the caller's node sees it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Candidate {
    /// Instance id; the key of the balancer's per-instance state.
    pub instance_id: String,
    /// Node the instance runs on.
    pub node: String,
    /// On the caller's own node: RTT 0, counted as measured.
    pub local: bool,
    /// RTT from the caller's node to the instance's node, in ms.
    pub rtt_ms: Option<f64>,
    /// Where `rtt_ms` came from.
    pub rtt_source: RttSource,
    /// The instance's health.
    pub health: Health,
    /// Whether the instance's node is alive in the member table.
    pub node_alive: bool,
}

// === impl Candidate ===

impl Candidate {
    /// The RTT to show: 0 for a local instance, else `rtt_ms` when its source
    /// is not `Unknown` and it is a usable number (negative figures count as
    /// 0, NaN and infinities as unknown).
    pub fn effective_rtt_ms(&self) -> Option<f64> {
        if self.local {
            return Some(0.0);
        }
        if self.rtt_source == RttSource::Unknown {
            return None;
        }
        self.rtt_ms.filter(|r| r.is_finite()).map(|r| r.max(0.0))
    }

    /// The RTT requirements may rely on: local, or measured, or estimated
    /// when `allow_estimated`; `None` otherwise.
    pub fn trusted_rtt_ms(&self, allow_estimated: bool) -> Option<f64> {
        match (self.local, self.rtt_source) {
            (true, _) | (false, RttSource::Measured) => self.effective_rtt_ms(),
            (false, RttSource::Estimated) if allow_estimated => self.effective_rtt_ms(),
            _ => None,
        }
    }
}

/// Every candidate, classified.
#[derive(Debug, Clone, PartialEq)]
pub struct Ranking {
    /// Usable instances, best first: within soft before the rest, then by cost.
    pub eligible: Vec<Ranked>,
    /// The others, in the order given, each with its reason.
    pub ineligible: Vec<(Candidate, Ineligible)>,
}

/// One eligible instance and how it scores.
#[derive(Debug, Clone, PartialEq)]
pub struct Ranked {
    /// The instance.
    pub candidate: Candidate,
    /// Within the soft requirement (always true when there is none).
    pub within_soft: bool,
    /// Peak-EWMA latency in ms × (in-flight + 1): lower is better.
    pub cost: f64,
}

/// The instance a call should go to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pick {
    /// Its instance id.
    pub instance_id: String,
    /// Its index in the candidates passed to [`Balancer::pick`].
    pub index: usize,
    /// Within the soft requirement (always true when there is none).
    pub within_soft: bool,
}

/// A pick with why the candidates were or were not usable, from the one
/// classification the pick made (for callers that explain their choice).
#[derive(Debug, Clone, PartialEq)]
pub struct Explained {
    /// The pick, or why there is none.
    pub pick: Result<Pick, SelectError>,
    /// Candidates that may not be called (index into the candidates), and why.
    pub ineligible: Vec<(usize, Ineligible)>,
    /// How many candidates were eligible (excluded ones included).
    pub eligible: usize,
}

/// How a picked call ended.
///
/// `latency` is the time to the first byte of the response (linkerd samples
/// there), or to the failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The upstream answered (any status but 5xx).
    Success {
        /// Time to the first response byte.
        latency: Duration,
    },
    /// Connect error, reset, timeout or 5xx.
    Failure {
        /// Time until the failure was seen.
        latency: Duration,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(hard: Option<u32>, soft: Option<u32>) -> Requirements {
        Requirements {
            hard_rtt_ms: hard,
            soft_rtt_ms: soft,
        }
    }

    #[test]
    fn stricter_takes_the_smaller_of_each_field() {
        assert_eq!(
            req(Some(30), Some(10)).stricter(req(Some(20), Some(15))),
            req(Some(20), Some(10))
        );
        assert_eq!(
            req(None, Some(10)).stricter(req(Some(20), None)),
            req(Some(20), Some(10))
        );
        assert_eq!(req(None, None).stricter(req(None, None)), req(None, None));
    }

    #[test]
    fn requirements_come_from_a_definition() {
        let def = catalog::Requirements {
            soft_rtt_ms: Some(10),
            hard_rtt_ms: Some(30),
            cpu_millis: Some(500),
            memory_mb: None,
        };
        assert_eq!(Requirements::from(&def), req(Some(30), Some(10)));
    }

    #[test]
    fn local_candidates_have_rtt_zero_and_are_trusted() {
        let c = Candidate {
            local: true,
            rtt_ms: Some(50.0),
            rtt_source: RttSource::Unknown,
            ..Candidate::default()
        };
        assert_eq!(c.effective_rtt_ms(), Some(0.0));
        assert_eq!(c.trusted_rtt_ms(false), Some(0.0));
    }

    #[test]
    fn only_measured_rtt_is_trusted_unless_estimates_are_allowed() {
        let mut c = Candidate {
            rtt_ms: Some(5.0),
            rtt_source: RttSource::Measured,
            ..Candidate::default()
        };
        assert_eq!(c.trusted_rtt_ms(false), Some(5.0));
        c.rtt_source = RttSource::Estimated;
        assert_eq!(c.trusted_rtt_ms(false), None);
        assert_eq!(c.trusted_rtt_ms(true), Some(5.0));
        c.rtt_source = RttSource::Unknown;
        assert_eq!(c.trusted_rtt_ms(true), None);
        c.rtt_source = RttSource::Measured;
        c.rtt_ms = Some(f64::NAN);
        assert_eq!(c.trusted_rtt_ms(false), None);
        c.rtt_ms = None;
        assert_eq!(c.trusted_rtt_ms(false), None);
    }

    #[test]
    fn requirements_round_trip_through_json() {
        let r = req(Some(30), None);
        let json = serde_json::to_string(&r).unwrap();
        assert_eq!(serde_json::from_str::<Requirements>(&json).unwrap(), r);
        assert_eq!(
            serde_json::from_str::<Requirements>("{}").unwrap(),
            req(None, None)
        );
    }
}

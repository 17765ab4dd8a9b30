//! Balancer settings, defaulting to linkerd's and Envoy's.

use std::time::Duration;

use super::eject::EjectPolicy;

/// How a [`Balancer`](super::Balancer) scores, ejects and retries.
///
/// The defaults are linkerd2-proxy's balancer and Envoy's outlier detection.
#[derive(Debug, Clone, PartialEq)]
pub struct BalancerConfig {
    /// Latency estimate of an instance never called (linkerd: 30 ms). High
    /// enough that a new instance is not flooded before its first answers
    /// are in, low enough that it is tried soon.
    pub default_rtt: Duration,
    /// Lowest latency estimate (linkerd: 1 ms), so load still counts when an
    /// idle instance's estimate has decayed toward zero.
    pub ewma_floor: Duration,
    /// Time constant of the peak-EWMA decay (linkerd: 10 s).
    pub decay: Duration,
    /// A failure counts as a latency sample of at least this (1 s), so an
    /// instance that fails fast never looks fast.
    pub failure_penalty: Duration,
    /// Consecutive failures that eject an instance (Envoy: 5).
    pub failure_threshold: u32,
    /// First ejection time, doubled on each repeat (Envoy: 30 s).
    pub base_ejection: Duration,
    /// Longest ejection time (5 min); also how long an instance must stay
    /// healthy before its next ejection counts as a first one again.
    pub max_ejection: Duration,
    /// Largest share of a service's instances ejected at once (0.5).
    pub max_ejected_fraction: f64,
    /// How long a probe of an instance on probation may go unreported before
    /// another is allowed (30 s, the proxy's default request timeout).
    pub probe_timeout: Duration,
    /// Retries allowed per request, over the window (linkerd: 0.2).
    pub retry_ratio: f64,
    /// Retries allowed per second whatever the traffic (linkerd: 10).
    pub retry_min_per_sec: u32,
    /// Window of the retry budget (linkerd: 10 s).
    pub retry_window: Duration,
    /// Whether an estimated (never measured) RTT may satisfy a requirement.
    /// Off by default: an estimate that is wrong would break a hard promise.
    pub allow_estimated_rtt: bool,
    /// Per-instance state of an instance absent from the candidates this
    /// long is dropped (10 min), which bounds memory as instances come and go.
    pub forget_after: Duration,
}

impl Default for BalancerConfig {
    fn default() -> Self {
        Self {
            default_rtt: Duration::from_millis(30),
            ewma_floor: Duration::from_millis(1),
            decay: Duration::from_secs(10),
            failure_penalty: Duration::from_secs(1),
            failure_threshold: 5,
            base_ejection: Duration::from_secs(30),
            max_ejection: Duration::from_secs(300),
            max_ejected_fraction: 0.5,
            probe_timeout: Duration::from_secs(30),
            retry_ratio: 0.2,
            retry_min_per_sec: 10,
            retry_window: Duration::from_secs(10),
            allow_estimated_rtt: false,
            forget_after: Duration::from_secs(600),
        }
    }
}

// === impl BalancerConfig ===

impl BalancerConfig {
    /// The ejection settings, with a threshold of at least one failure.
    pub(crate) fn eject_policy(&self) -> EjectPolicy {
        EjectPolicy {
            threshold: self.failure_threshold.max(1),
            base: self.base_ejection,
            max: self.max_ejection.max(self.base_ejection),
            probe_timeout: self.probe_timeout,
        }
    }

    /// `max_ejected_fraction` as a usable number in `[0, 1]`.
    pub(crate) fn ejected_fraction(&self) -> f64 {
        if self.max_ejected_fraction.is_nan() {
            0.0
        } else {
            self.max_ejected_fraction.clamp(0.0, 1.0)
        }
    }

    /// How many of `total` instances may be out at once.
    pub(crate) fn max_ejected(&self, total: usize) -> usize {
        // Counts are small, so the float product is exact enough; floor keeps
        // "never more than half": 1 of 2, 1 of 3, 0 of 1.
        (self.ejected_fraction() * total as f64).floor() as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_linkerd_and_envoy() {
        let c = BalancerConfig::default();
        assert_eq!(c.default_rtt, Duration::from_millis(30));
        assert_eq!(c.decay, Duration::from_secs(10));
        assert_eq!(c.failure_threshold, 5);
        assert_eq!(c.base_ejection, Duration::from_secs(30));
        assert_eq!(c.max_ejected_fraction, 0.5);
        assert_eq!(c.retry_ratio, 0.2);
        assert_eq!(c.retry_min_per_sec, 10);
        assert!(!c.allow_estimated_rtt);
    }

    #[test]
    fn never_more_than_half_ejected() {
        let c = BalancerConfig::default();
        let caps: Vec<usize> = (0..6).map(|n| c.max_ejected(n)).collect();
        assert_eq!(caps, vec![0, 0, 1, 1, 2, 2]);
        let odd = BalancerConfig {
            max_ejected_fraction: f64::NAN,
            ..c
        };
        assert_eq!(odd.max_ejected(10), 0);
    }
}

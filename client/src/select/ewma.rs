//! Peak-EWMA latency estimate, after linkerd's `linkerd/ewma` and tower's `PeakEwma`.
//!
//! A sample above the current estimate replaces it at once, so a slowdown is
//! felt on the next pick; a sample below it only pulls the estimate down with
//! weight `1 - exp(-elapsed / decay)`, so recovery is gradual. Between samples
//! the estimate decays toward zero, exactly as tower's does on every read:
//! an instance nobody has called for a while looks cheap again and gets
//! probed, which is how a recovered instance wins its traffic back.

use std::time::{Duration, Instant};

/// One instance's latency estimate, in milliseconds, as of `at`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct PeakEwma {
    /// Estimate in ms when it was last updated.
    estimate_ms: f64,
    /// When `estimate_ms` was last updated.
    at: Instant,
}

// === impl PeakEwma ===

impl PeakEwma {
    /// A new estimate starting at `initial_ms` (the configured default RTT).
    pub(crate) fn new(initial_ms: f64, now: Instant) -> Self {
        Self {
            estimate_ms: initial_ms,
            at: now,
        }
    }

    /// The estimate at `now`, never below `floor_ms`.
    ///
    /// The floor keeps `estimate × (in_flight + 1)` meaningful: an estimate of
    /// zero would make every instance cost zero whatever its load.
    pub(crate) fn get(&self, now: Instant, decay: Duration, floor_ms: f64) -> f64 {
        let decayed = self.estimate_ms * weight(self.at, now, decay);
        decayed.max(floor_ms)
    }

    /// Folds in one latency sample taken at `now`.
    pub(crate) fn observe(&mut self, sample_ms: f64, now: Instant, decay: Duration) {
        if !sample_ms.is_finite() || sample_ms < 0.0 {
            return;
        }
        let w = weight(self.at, now, decay);
        // Compared with the stored estimate, as tower's `PeakEwma` does:
        // compared with the decayed one, a sample just below it raised the
        // estimate more than a sample just above (100 ms decayed to 90.5:
        // 90 gave 99.0, 91 gave 91), so a faster answer could make an
        // instance look slower.
        self.estimate_ms = if sample_ms > self.estimate_ms {
            sample_ms
        } else {
            self.estimate_ms * w + sample_ms * (1.0 - w)
        };
        // A sample carrying an older `now` must not move the clock backwards.
        self.at = self.at.max(now);
    }
}

/// `exp(-elapsed / decay)`: how much of the old estimate survives.
fn weight(at: Instant, now: Instant, decay: Duration) -> f64 {
    let elapsed = now.saturating_duration_since(at).as_secs_f64();
    // A zero decay would divide by zero; treat it as "forget at once".
    let decay = decay.as_secs_f64().max(f64::MIN_POSITIVE);
    (-elapsed / decay).exp()
}

#[cfg(test)]
mod tests {
    use super::*;

    const DECAY: Duration = Duration::from_secs(10);

    #[test]
    fn starts_at_initial_value() {
        let t0 = Instant::now();
        let e = PeakEwma::new(30.0, t0);
        assert_eq!(e.get(t0, DECAY, 1.0), 30.0);
    }

    #[test]
    fn a_peak_replaces_the_estimate_at_once() {
        let t0 = Instant::now();
        let mut e = PeakEwma::new(30.0, t0);
        let t1 = t0 + Duration::from_millis(5);
        e.observe(500.0, t1, DECAY);
        assert_eq!(e.get(t1, DECAY, 1.0), 500.0);
    }

    #[test]
    fn a_lower_sample_only_pulls_the_estimate_down_gradually() {
        let t0 = Instant::now();
        let mut e = PeakEwma::new(100.0, t0);
        let t1 = t0 + Duration::from_secs(1);
        e.observe(10.0, t1, DECAY);
        let w = (-0.1f64).exp();
        let expected = 100.0 * w + 10.0 * (1.0 - w);
        assert!((e.get(t1, DECAY, 1.0) - expected).abs() < 1e-9);
        assert!(e.get(t1, DECAY, 1.0) > 90.0);
    }

    #[test]
    fn decays_toward_zero_between_samples_but_not_below_the_floor() {
        let t0 = Instant::now();
        let e = PeakEwma::new(100.0, t0);
        let after_decay = e.get(t0 + DECAY, DECAY, 1.0);
        assert!((after_decay - 100.0 / std::f64::consts::E).abs() < 1e-9);
        assert_eq!(e.get(t0 + Duration::from_secs(600), DECAY, 1.0), 1.0);
    }

    #[test]
    fn samples_after_a_long_pause_dominate() {
        let t0 = Instant::now();
        let mut e = PeakEwma::new(1000.0, t0);
        let t1 = t0 + Duration::from_secs(100);
        e.observe(5.0, t1, DECAY);
        // 1000 × e^-10 of the old estimate is left: 0.05 ms.
        assert!((e.get(t1, DECAY, 1.0) - 5.0).abs() < 0.05);
    }

    #[test]
    fn a_faster_answer_never_makes_the_estimate_higher_than_a_slower_one() {
        let t0 = Instant::now();
        let t1 = t0 + Duration::from_secs(1);
        let after = |sample: f64| {
            let mut e = PeakEwma::new(100.0, t0);
            e.observe(sample, t1, DECAY);
            e.get(t1, DECAY, 0.0)
        };
        // Around the decayed estimate (90.5 ms) and the stored one (100).
        let samples = [
            0.0, 10.0, 89.0, 90.0, 90.4, 90.6, 91.0, 99.9, 100.0, 100.1, 150.0,
        ];
        for pair in samples.windows(2) {
            assert!(
                after(pair[0]) <= after(pair[1]),
                "{} ms gave {}, {} ms gave {}",
                pair[0],
                after(pair[0]),
                pair[1],
                after(pair[1])
            );
        }
        assert_eq!(after(150.0), 150.0, "a peak replaces it");
    }

    #[test]
    fn ignores_a_time_going_backwards_and_bad_samples() {
        let t0 = Instant::now();
        let t1 = t0 + Duration::from_secs(1);
        let mut e = PeakEwma::new(30.0, t1);
        e.observe(f64::NAN, t1, DECAY);
        e.observe(-3.0, t1, DECAY);
        assert_eq!(e.get(t1, DECAY, 1.0), 30.0);
        e.observe(10.0, t0, DECAY);
        // Zero elapsed time: the lower sample has no weight yet.
        assert_eq!(e.get(t1, DECAY, 1.0), 30.0);
    }

    #[test]
    fn zero_decay_does_not_produce_nan() {
        let t0 = Instant::now();
        let mut e = PeakEwma::new(30.0, t0);
        e.observe(10.0, t0, Duration::ZERO);
        assert!(e.get(t0, Duration::ZERO, 1.0).is_finite());
    }

    #[test]
    fn a_negative_sample_is_ignored_after_time_has_passed_too() {
        let t0 = Instant::now();
        let mut e = PeakEwma::new(30.0, t0);
        let t1 = t0 + Duration::from_secs(5);
        let before = e.get(t1, DECAY, 1.0);
        e.observe(-3.0, t1, DECAY);
        assert_eq!(e.get(t1, DECAY, 1.0), before);
    }
}

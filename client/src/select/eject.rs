//! Failure accrual and ejection of one instance (Envoy's outlier detection,
//! linkerd's failure accrual with a one-request probation).
//!
//! `threshold` consecutive failures eject the instance for `base`, doubled on
//! each repeat up to `max`. When that time has passed the instance is on
//! probation: one request at a time may go to it; the first report after that
//! probe was sent settles it, success bringing the instance back and failure
//! ejecting it again for twice as long.
//!
//! The cap on how many instances of a service may be out at once needs the
//! whole service, so it is the balancer's to check: [`Accrual::record`] only
//! ejects when told it may.

use std::time::{Duration, Instant};

/// The knobs of ejection, copied out of the balancer's configuration.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct EjectPolicy {
    /// Consecutive failures that eject.
    pub(crate) threshold: u32,
    /// First ejection time.
    pub(crate) base: Duration,
    /// Longest ejection time.
    pub(crate) max: Duration,
    /// How long a probe may stay unanswered before another is allowed.
    pub(crate) probe_timeout: Duration,
}

// === impl EjectPolicy ===

impl EjectPolicy {
    /// Ejection time after `times` earlier ejections in a row.
    pub(crate) fn ejection_for(&self, times: u32) -> Duration {
        // 2^20 × 30 s is far past any sane `max`; capping the shift keeps it from overflowing.
        let factor = 1u32 << times.min(20);
        self.base.saturating_mul(factor).min(self.max)
    }
}

/// Where an instance stands, as rank and pick see it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Status {
    /// In rotation.
    Active,
    /// Ejected; may be probed in `for_ms` milliseconds.
    Ejected {
        /// Milliseconds left, rounded up.
        for_ms: u64,
    },
    /// Ejection time is over: one probe at a time.
    Probation {
        /// A probe is in flight, so nothing else may go to it.
        busy: bool,
    },
}

impl Status {
    /// Counts against the cap on ejected instances (ejected or on probation).
    pub(crate) fn is_out(self) -> bool {
        !matches!(self, Status::Active)
    }
}

/// What a report changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Change {
    /// Nothing visible.
    None,
    /// The instance was ejected (first time, or again after a failed probe).
    Ejected,
    /// A probe succeeded: the instance is back in rotation.
    Restored,
}

#[derive(Debug, Clone, PartialEq)]
enum Phase {
    Active {
        /// Consecutive failures so far.
        failures: u32,
    },
    Ejected {
        /// When probation starts.
        until: Instant,
        /// When the current probe was sent, if one is out.
        probe: Option<Instant>,
    },
}

/// Failure accrual state of one instance.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Accrual {
    phase: Phase,
    /// Ejections in a row, for the doubling.
    times: u32,
    /// When a probe last brought the instance back.
    restored_at: Option<Instant>,
}

impl Default for Accrual {
    fn default() -> Self {
        Self {
            phase: Phase::Active { failures: 0 },
            times: 0,
            restored_at: None,
        }
    }
}

// === impl Accrual ===

impl Accrual {
    /// The instance's status at `now`.
    pub(crate) fn status(&self, now: Instant, policy: &EjectPolicy) -> Status {
        match self.phase {
            Phase::Active { .. } => Status::Active,
            Phase::Ejected { until, probe } => {
                if now < until {
                    let left = until.duration_since(now);
                    // Round up so "0 ms" never means "still ejected".
                    let for_ms = left.as_nanos().div_ceil(1_000_000);
                    Status::Ejected {
                        for_ms: u64::try_from(for_ms).unwrap_or(u64::MAX),
                    }
                } else {
                    let busy = probe.is_some_and(|sent| {
                        now.saturating_duration_since(sent) < policy.probe_timeout
                    });
                    Status::Probation { busy }
                }
            }
        }
    }

    /// True when one more failure reaches the threshold while in rotation:
    /// the balancer then checks the cap before calling [`Accrual::record`].
    pub(crate) fn next_failure_ejects(&self, policy: &EjectPolicy) -> bool {
        matches!(self.phase, Phase::Active { failures } if failures.saturating_add(1) >= policy.threshold)
    }

    /// Notes that a request was sent at `now`; on probation it becomes the probe.
    pub(crate) fn on_pick(&mut self, now: Instant, policy: &EjectPolicy) {
        if self.status(now, policy) == (Status::Probation { busy: false }) {
            if let Phase::Ejected { probe, .. } = &mut self.phase {
                *probe = Some(now);
            }
        }
    }

    /// Folds in one outcome. `may_eject` says whether the service's cap on
    /// ejected instances leaves room for this one.
    pub(crate) fn record(
        &mut self,
        success: bool,
        now: Instant,
        policy: &EjectPolicy,
        may_eject: bool,
    ) -> Change {
        match &mut self.phase {
            Phase::Active { failures } => {
                if success {
                    *failures = 0;
                    return Change::None;
                }
                *failures = failures.saturating_add(1);
                if *failures < policy.threshold || !may_eject {
                    // Past the threshold but capped: stay counting, so the next
                    // failure tries again once another instance is back.
                    return Change::None;
                }
                // Flapping long after the last recovery is a fresh problem, not a repeat.
                if self
                    .restored_at
                    .is_some_and(|at| now.saturating_duration_since(at) >= policy.max)
                {
                    self.times = 0;
                }
                self.eject(now, policy);
                Change::Ejected
            }
            Phase::Ejected { probe, .. } => {
                // Without a probe out, this is a request sent before the
                // ejection finishing late: it says nothing new.
                if probe.is_none() {
                    return Change::None;
                }
                if success {
                    self.phase = Phase::Active { failures: 0 };
                    self.restored_at = Some(now);
                    Change::Restored
                } else {
                    self.eject(now, policy);
                    Change::Ejected
                }
            }
        }
    }

    fn eject(&mut self, now: Instant, policy: &EjectPolicy) {
        let length = policy.ejection_for(self.times);
        self.times = self.times.saturating_add(1);
        // Only an absurd `max` overflows an Instant; then probe at once rather than panic.
        let until = now.checked_add(length).unwrap_or(now);
        self.phase = Phase::Ejected { until, probe: None };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> EjectPolicy {
        EjectPolicy {
            threshold: 5,
            base: Duration::from_secs(30),
            max: Duration::from_secs(300),
            probe_timeout: Duration::from_secs(30),
        }
    }

    fn fail_n(a: &mut Accrual, n: u32, now: Instant) -> Change {
        let mut last = Change::None;
        for _ in 0..n {
            last = a.record(false, now, &policy(), true);
        }
        last
    }

    #[test]
    fn ejection_time_doubles_and_is_capped() {
        let p = policy();
        let secs: Vec<u64> = (0..6).map(|t| p.ejection_for(t).as_secs()).collect();
        assert_eq!(secs, vec![30, 60, 120, 240, 300, 300]);
        assert_eq!(p.ejection_for(u32::MAX), Duration::from_secs(300));
    }

    #[test]
    fn five_consecutive_failures_eject_for_30_s() {
        let t0 = Instant::now();
        let mut a = Accrual::default();
        assert_eq!(fail_n(&mut a, 4, t0), Change::None);
        assert_eq!(a.status(t0, &policy()), Status::Active);
        assert!(a.next_failure_ejects(&policy()));
        assert_eq!(fail_n(&mut a, 1, t0), Change::Ejected);
        assert_eq!(a.status(t0, &policy()), Status::Ejected { for_ms: 30_000 });
        let t29 = t0 + Duration::from_millis(29_999);
        assert_eq!(a.status(t29, &policy()), Status::Ejected { for_ms: 1 });
        let t30 = t0 + Duration::from_secs(30);
        assert_eq!(a.status(t30, &policy()), Status::Probation { busy: false });
    }

    #[test]
    fn a_success_resets_the_count() {
        let t0 = Instant::now();
        let mut a = Accrual::default();
        fail_n(&mut a, 4, t0);
        a.record(true, t0, &policy(), true);
        assert_eq!(fail_n(&mut a, 4, t0), Change::None);
        assert_eq!(a.status(t0, &policy()), Status::Active);
    }

    #[test]
    fn the_cap_blocks_ejection_but_the_next_failure_tries_again() {
        let t0 = Instant::now();
        let mut a = Accrual::default();
        for _ in 0..7 {
            assert_eq!(a.record(false, t0, &policy(), false), Change::None);
        }
        assert_eq!(a.status(t0, &policy()), Status::Active);
        assert!(a.next_failure_ejects(&policy()));
        assert_eq!(a.record(false, t0, &policy(), true), Change::Ejected);
    }

    #[test]
    fn probation_allows_one_probe_and_success_restores() {
        let t0 = Instant::now();
        let p = policy();
        let mut a = Accrual::default();
        fail_n(&mut a, 5, t0);
        let t31 = t0 + Duration::from_secs(31);
        a.on_pick(t31, &p);
        assert_eq!(a.status(t31, &p), Status::Probation { busy: true });
        assert_eq!(a.record(true, t31, &p, true), Change::Restored);
        assert_eq!(a.status(t31, &p), Status::Active);
    }

    #[test]
    fn a_failed_probe_ejects_again_for_twice_as_long() {
        let t0 = Instant::now();
        let p = policy();
        let mut a = Accrual::default();
        fail_n(&mut a, 5, t0);
        let t31 = t0 + Duration::from_secs(31);
        a.on_pick(t31, &p);
        assert_eq!(a.record(false, t31, &p, true), Change::Ejected);
        assert_eq!(a.status(t31, &p), Status::Ejected { for_ms: 60_000 });
        let t92 = t31 + Duration::from_secs(61);
        a.on_pick(t92, &p);
        assert_eq!(a.record(false, t92, &p, true), Change::Ejected);
        assert_eq!(a.status(t92, &p), Status::Ejected { for_ms: 120_000 });
    }

    #[test]
    fn late_reports_of_earlier_requests_do_not_settle_or_extend_an_ejection() {
        let t0 = Instant::now();
        let p = policy();
        let mut a = Accrual::default();
        fail_n(&mut a, 5, t0);
        assert_eq!(fail_n(&mut a, 3, t0), Change::None);
        assert_eq!(a.record(true, t0, &p, true), Change::None);
        assert_eq!(a.status(t0, &p), Status::Ejected { for_ms: 30_000 });
    }

    #[test]
    fn an_unanswered_probe_frees_the_slot_after_the_probe_timeout() {
        let t0 = Instant::now();
        let p = policy();
        let mut a = Accrual::default();
        fail_n(&mut a, 5, t0);
        let t31 = t0 + Duration::from_secs(31);
        a.on_pick(t31, &p);
        let later = t31 + p.probe_timeout;
        assert_eq!(a.status(later, &p), Status::Probation { busy: false });
    }

    #[test]
    fn repeats_reset_after_a_long_healthy_stretch() {
        let t0 = Instant::now();
        let p = policy();
        let mut a = Accrual::default();
        fail_n(&mut a, 5, t0);
        let t31 = t0 + Duration::from_secs(31);
        a.on_pick(t31, &p);
        a.record(true, t31, &p, true);
        // Soon after recovery: a repeat, doubled.
        let mut b = a.clone();
        let soon = t31 + Duration::from_secs(10);
        fail_n(&mut b, 5, soon);
        assert_eq!(b.status(soon, &p), Status::Ejected { for_ms: 60_000 });
        // Long after: a fresh ejection.
        let late = t31 + p.max;
        fail_n(&mut a, 5, late);
        assert_eq!(a.status(late, &p), Status::Ejected { for_ms: 30_000 });
    }

    #[test]
    fn only_the_failure_that_reaches_the_threshold_in_rotation_ejects() {
        let t0 = Instant::now();
        let p = policy();
        let mut a = Accrual::default();
        assert!(!a.next_failure_ejects(&p));
        fail_n(&mut a, 3, t0);
        assert!(
            !a.next_failure_ejects(&p),
            "3 failures, a 4th does not eject"
        );
        fail_n(&mut a, 1, t0);
        assert!(a.next_failure_ejects(&p));
        fail_n(&mut a, 1, t0);
        // Ejected: another failure re-ejects only as a probe, never by count.
        assert!(!a.next_failure_ejects(&p));
    }
}

//! Retry budget, as linkerd's (tower's `TpsBudget`): every request deposits,
//! every retry withdraws, over a sliding window.
//!
//! With a ratio of 20 %, a request deposits one unit and a retry costs five,
//! so retries stay under a fifth of requests; a standing reserve of
//! `min_per_sec × window` retries lets a quiet service retry at all. Deposits
//! and withdrawals older than the window expire, so a burst of failures
//! cannot spend what was earned long ago.

use std::time::{Duration, Instant};

/// Slots the window is divided into (as tower does).
const SLOTS: usize = 10;
/// Fixed-point scale, so ratios like 0.3 need no floats in the window.
const SCALE: f64 = 1000.0;

/// A sliding-window retry budget.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct RetryBudget {
    /// Net balance of each slot: deposits minus withdrawals.
    slots: [i64; SLOTS],
    /// The slot `now` falls in.
    head: usize,
    /// When the head slot started; `None` until the first use.
    head_start: Option<Instant>,
    /// Length of one slot.
    slot_len: Duration,
    /// Units one request adds.
    deposit: i64,
    /// Units one retry costs.
    withdraw: i64,
    /// Units always available, whatever the traffic.
    reserve: i64,
}

// === impl RetryBudget ===

impl RetryBudget {
    /// A budget allowing `ratio` retries per request plus `min_per_sec` per
    /// second, counted over `window`.
    pub(crate) fn new(window: Duration, min_per_sec: u32, ratio: f64) -> Self {
        // Below a millisecond the window would be all rounding; tower clamps too.
        let window = window.max(Duration::from_millis(1));
        let ratio = if ratio.is_finite() {
            ratio.clamp(0.0, 1000.0)
        } else {
            0.0
        };
        let (deposit, withdraw) = if ratio == 0.0 {
            // No ratio: only the reserve pays for retries.
            (0, 1)
        } else {
            (SCALE as i64, ((SCALE / ratio).round() as i64).max(1))
        };
        let reserve =
            (f64::from(min_per_sec) * window.as_secs_f64() * withdraw as f64).round() as i64;
        Self {
            slots: [0; SLOTS],
            head: 0,
            head_start: None,
            slot_len: window / SLOTS as u32,
            deposit,
            withdraw,
            reserve,
        }
    }

    /// Records one request.
    pub(crate) fn deposit(&mut self, now: Instant) {
        self.rotate(now);
        self.slots[self.head] = self.slots[self.head].saturating_add(self.deposit);
    }

    /// Spends one retry if the budget allows it.
    pub(crate) fn withdraw(&mut self, now: Instant) -> bool {
        self.rotate(now);
        let balance: i64 = self.slots.iter().sum::<i64>().saturating_add(self.reserve);
        if balance < self.withdraw {
            return false;
        }
        self.slots[self.head] = self.slots[self.head].saturating_sub(self.withdraw);
        true
    }

    /// Moves the head to the slot containing `now`, clearing expired slots.
    fn rotate(&mut self, now: Instant) {
        let Some(start) = self.head_start else {
            self.head_start = Some(now);
            return;
        };
        let elapsed = now.saturating_duration_since(start);
        let steps = elapsed.as_nanos() / self.slot_len.as_nanos().max(1);
        if steps == 0 {
            return;
        }
        if steps >= SLOTS as u128 {
            self.slots = [0; SLOTS];
            self.head_start = Some(now);
            return;
        }
        for _ in 0..steps {
            self.head = (self.head + 1) % SLOTS;
            self.slots[self.head] = 0;
        }
        // `steps` < SLOTS, so this multiplication cannot overflow.
        self.head_start = Some(start + self.slot_len * steps as u32);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn linkerd() -> RetryBudget {
        RetryBudget::new(Duration::from_secs(10), 10, 0.2)
    }

    fn drain(b: &mut RetryBudget, now: Instant) -> usize {
        let mut n = 0;
        while b.withdraw(now) {
            n += 1;
            assert!(n < 1_000_000, "budget never ran out");
        }
        n
    }

    #[test]
    fn reserve_alone_allows_min_per_sec_times_window() {
        let t0 = Instant::now();
        let mut b = linkerd();
        assert_eq!(drain(&mut b, t0), 100);
    }

    #[test]
    fn twenty_percent_of_requests_on_top_of_the_reserve() {
        let t0 = Instant::now();
        let mut b = linkerd();
        for _ in 0..1000 {
            b.deposit(t0);
        }
        assert_eq!(drain(&mut b, t0), 100 + 200);
    }

    #[test]
    fn without_the_reserve_retries_are_a_fifth_of_requests() {
        let t0 = Instant::now();
        let mut b = RetryBudget::new(Duration::from_secs(10), 0, 0.2);
        assert!(!b.withdraw(t0));
        for i in 1..=50 {
            b.deposit(t0);
            let allowed = b.withdraw(t0);
            assert_eq!(allowed, i % 5 == 0, "request {i}");
        }
    }

    #[test]
    fn deposits_and_withdrawals_expire_after_the_window() {
        let t0 = Instant::now();
        let mut b = linkerd();
        for _ in 0..1000 {
            b.deposit(t0);
        }
        let t11 = t0 + Duration::from_secs(11);
        // The deposits are gone: only the reserve is left.
        assert_eq!(drain(&mut b, t11), 100);
        // And the withdrawals expire as well.
        let t22 = t11 + Duration::from_secs(11);
        assert_eq!(drain(&mut b, t22), 100);
    }

    #[test]
    fn the_window_slides_slot_by_slot() {
        let t0 = Instant::now();
        let mut b = RetryBudget::new(Duration::from_secs(10), 0, 0.2);
        for _ in 0..10 {
            b.deposit(t0);
        }
        let t5 = t0 + Duration::from_secs(5);
        for _ in 0..10 {
            b.deposit(t5);
        }
        // At 10.5 s the first ten deposits have left the window, the next ten have not.
        let t10 = t0 + Duration::from_millis(10_500);
        assert_eq!(drain(&mut b, t10), 2);
    }

    #[test]
    fn zero_ratio_leaves_only_the_reserve() {
        let t0 = Instant::now();
        let mut b = RetryBudget::new(Duration::from_secs(10), 1, 0.0);
        for _ in 0..1000 {
            b.deposit(t0);
        }
        assert_eq!(drain(&mut b, t0), 10);
        let mut nan = RetryBudget::new(Duration::from_secs(10), 0, f64::NAN);
        nan.deposit(t0);
        assert!(!nan.withdraw(t0));
    }
}

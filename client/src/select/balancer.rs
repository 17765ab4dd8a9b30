//! The per-service balancer: power of two random choices over peak-EWMA,
//! with failure accrual, ejection and a retry budget.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use rand::rngs::SmallRng;
use rand::{RngExt, SeedableRng};

use super::budget::RetryBudget;
use super::classify::{classify, no_pick_error, Verdict};
use super::config::BalancerConfig;
use super::eject::{Accrual, Change, EjectPolicy, Status};
use super::error::SelectError;
use super::ewma::PeakEwma;
use super::{Candidate, Explained, Outcome, Pick, Ranked, Ranking, Requirements};

/// What the balancer remembers about one instance.
#[derive(Debug, Clone)]
struct Stats {
    /// Latency estimate.
    ewma: PeakEwma,
    /// Picks not yet reported.
    in_flight: u32,
    /// Failure accrual and ejection.
    accrual: Accrual,
    /// Last time the instance was among the candidates of a pick.
    seen_at: Instant,
    /// The pick generation it was last seen in.
    seen_gen: u64,
}

/// Balances the calls to one service.
///
/// Keep one per service and give every pick a [`report`](Balancer::report)
/// exactly once: the in-flight counts, latency estimates and probes depend
/// on it. A pick whose `exclude` is empty counts as a new request for the
/// retry budget; a pick with `exclude` is taken to be a retry and does not.
///
/// For metrics, [`ejections_total`](Balancer::ejections_total) counts every
/// ejection, including re-ejections after a failed probe.
#[derive(Debug, Clone)]
pub struct Balancer {
    config: BalancerConfig,
    policy: EjectPolicy,
    stats: HashMap<String, Stats>,
    rng: SmallRng,
    budget: RetryBudget,
    /// Bumped on every pick; stats with the current value are the service's instances.
    generation: u64,
    /// Number of candidates in the latest pick: the size of the service.
    service_size: usize,
    /// Next time stale stats are dropped.
    next_prune: Option<Instant>,
    ejections: u64,
}

// === impl Balancer ===

impl Balancer {
    /// A balancer whose random choices are seeded from OS entropy.
    pub fn new(config: BalancerConfig) -> Self {
        Self::with_rng(config, rand::make_rng())
    }

    /// A balancer whose random choices follow `seed`, for tests and benchmarks.
    pub fn with_seed(config: BalancerConfig, seed: u64) -> Self {
        Self::with_rng(config, SmallRng::seed_from_u64(seed))
    }

    fn with_rng(config: BalancerConfig, rng: SmallRng) -> Self {
        Self {
            policy: config.eject_policy(),
            budget: RetryBudget::new(
                config.retry_window,
                config.retry_min_per_sec,
                config.retry_ratio,
            ),
            config,
            stats: HashMap::new(),
            rng,
            generation: 0,
            service_size: 0,
            next_prune: None,
            ejections: 0,
        }
    }

    /// The configuration it runs with.
    pub fn config(&self) -> &BalancerConfig {
        &self.config
    }

    /// Ejections so far, for `gossamer_upstream_ejections_total`.
    pub fn ejections_total(&self) -> u64 {
        self.ejections
    }

    /// Classifies every candidate: eligible ones first, best first (within
    /// soft before the others, then by cost), then the ineligible ones with
    /// their reason, in the order given.
    pub fn rank(&self, candidates: &[Candidate], req: Requirements, now: Instant) -> Ranking {
        let verdicts = self.classify(candidates, req, now);
        let mut eligible = Vec::new();
        let mut ineligible = Vec::new();
        for (c, v) in candidates.iter().zip(verdicts) {
            match v {
                Verdict::Eligible { within_soft, .. } => eligible.push(Ranked {
                    candidate: c.clone(),
                    within_soft,
                    cost: self.cost(&c.instance_id, now),
                }),
                Verdict::Ineligible(reason) => ineligible.push((c.clone(), reason)),
            }
        }
        eligible.sort_by(|a, b| {
            b.within_soft
                .cmp(&a.within_soft)
                .then(a.cost.total_cmp(&b.cost))
                .then_with(|| {
                    let rtt = |r: &Ranked| r.candidate.effective_rtt_ms().unwrap_or(f64::INFINITY);
                    rtt(a).total_cmp(&rtt(b))
                })
                .then_with(|| a.candidate.instance_id.cmp(&b.candidate.instance_id))
        });
        Ranking {
            eligible,
            ineligible,
        }
    }

    /// Picks one eligible instance by power of two random choices on
    /// cost = peak-EWMA latency × (in-flight + 1), and marks it in flight.
    ///
    /// `exclude` lists instance ids already tried for this request, so a
    /// retry goes to another instance. If any eligible instance left is
    /// within the soft requirement, only those are considered.
    pub fn pick(
        &mut self,
        candidates: &[Candidate],
        req: Requirements,
        exclude: &[&str],
        now: Instant,
    ) -> Result<Pick, SelectError> {
        self.pick_explained(candidates, req, exclude, now).pick
    }

    /// [`Balancer::pick`], also returning why each other candidate was or
    /// was not usable, from the same classification (no second pass).
    pub fn pick_explained(
        &mut self,
        candidates: &[Candidate],
        req: Requirements,
        exclude: &[&str],
        now: Instant,
    ) -> Explained {
        if exclude.is_empty() {
            self.budget.deposit(now);
        }
        self.observe_candidates(candidates, now);
        let verdicts = self.classify(candidates, req, now);
        let mut ineligible = Vec::new();
        let mut eligible = 0;
        for (i, verdict) in verdicts.iter().enumerate() {
            match verdict {
                Verdict::Eligible { .. } => eligible += 1,
                Verdict::Ineligible(reason) => ineligible.push((i, reason.clone())),
            }
        }
        let pick = self.choose(candidates, &verdicts, req, exclude, now);
        Explained {
            pick,
            ineligible,
            eligible,
        }
    }

    /// P2C among the eligible, not excluded candidates; marks the choice in flight.
    fn choose(
        &mut self,
        candidates: &[Candidate],
        verdicts: &[Verdict],
        req: Requirements,
        exclude: &[&str],
        now: Instant,
    ) -> Result<Pick, SelectError> {
        let mut pool: Vec<(usize, bool, bool)> = candidates
            .iter()
            .zip(verdicts)
            .enumerate()
            .filter_map(|(i, (c, v))| match *v {
                Verdict::Eligible { within_soft, probe }
                    if !exclude.contains(&c.instance_id.as_str()) =>
                {
                    Some((i, within_soft, probe))
                }
                _ => None,
            })
            .collect();
        if pool.iter().any(|&(_, soft, _)| soft) {
            pool.retain(|&(_, soft, _)| soft);
        }

        let chosen = match pool.len() {
            0 => return Err(no_pick_error(candidates, verdicts, req)),
            1 => pool[0],
            n => {
                let a = self.rng.random_range(0..n);
                // Draw from the n - 1 others so the two choices are distinct.
                let mut b = self.rng.random_range(0..n - 1);
                if b >= a {
                    b += 1;
                }
                let cost = |k: usize| self.cost(&candidates[pool[k].0].instance_id, now);
                if cost(b) < cost(a) {
                    pool[b]
                } else {
                    pool[a]
                }
            }
        };

        let (index, within_soft, _) = chosen;
        let instance_id = candidates[index].instance_id.clone();
        if let Some(s) = self.stats.get_mut(&instance_id) {
            s.in_flight = s.in_flight.saturating_add(1);
            s.accrual.on_pick(now, &self.policy);
        }
        Ok(Pick {
            instance_id,
            index,
            within_soft,
        })
    }

    /// Reports how a picked call ended: frees its in-flight slot, feeds the
    /// latency estimate (a failure counts as at least `failure_penalty`), and
    /// drives failure accrual, ejection and probation. Reports for instances
    /// the balancer does not know (never picked, or forgotten) are ignored.
    pub fn report(&mut self, instance_id: &str, outcome: Outcome, now: Instant) {
        let (success, latency) = match outcome {
            Outcome::Success { latency } => (true, latency),
            Outcome::Failure { latency } => (false, latency.max(self.config.failure_penalty)),
        };
        let Some(stats) = self.stats.get(instance_id) else {
            return;
        };
        let may_eject = !success
            && stats.accrual.next_failure_ejects(&self.policy)
            && self.has_room_to_eject(stats, now);

        let Some(stats) = self.stats.get_mut(instance_id) else {
            return;
        };
        stats.in_flight = stats.in_flight.saturating_sub(1);
        stats.ewma.observe(millis(latency), now, self.config.decay);
        if stats.accrual.record(success, now, &self.policy, may_eject) == Change::Ejected {
            self.ejections += 1;
        }
    }

    /// Asks to retry a failed request: true, and the budget is spent, if the
    /// retry budget allows it.
    pub fn try_retry(&mut self, now: Instant) -> bool {
        self.budget.withdraw(now)
    }

    fn classify(&self, candidates: &[Candidate], req: Requirements, now: Instant) -> Vec<Verdict> {
        classify(candidates, req, &self.config, |c| {
            self.stats
                .get(&c.instance_id)
                .map_or(Status::Active, |s| s.accrual.status(now, &self.policy))
        })
    }

    /// Cost in ms: latency estimate × (in-flight + 1).
    fn cost(&self, instance_id: &str, now: Instant) -> f64 {
        let floor = millis(self.config.ewma_floor);
        match self.stats.get(instance_id) {
            Some(s) => s.ewma.get(now, self.config.decay, floor) * (f64::from(s.in_flight) + 1.0),
            None => millis(self.config.default_rtt).max(floor),
        }
    }

    /// Whether one more instance of the latest candidate set may be ejected.
    fn has_room_to_eject(&self, stats: &Stats, now: Instant) -> bool {
        // An instance no longer among the candidates is not worth ejecting.
        if stats.seen_gen != self.generation {
            return false;
        }
        let out = self
            .stats
            .values()
            .filter(|s| s.seen_gen == self.generation)
            .filter(|s| s.accrual.status(now, &self.policy).is_out())
            .count();
        out < self.config.max_ejected(self.service_size)
    }

    /// Starts tracking new candidates, marks the current set, and now and
    /// then drops instances that have been gone for `forget_after`.
    fn observe_candidates(&mut self, candidates: &[Candidate], now: Instant) {
        self.generation += 1;
        self.service_size = candidates.len();
        for c in candidates {
            match self.stats.get_mut(&c.instance_id) {
                Some(s) => {
                    // Missing from a pick means it was critical or its node
                    // was down: back now, it was restarted or recovered, so
                    // its old failures and latency no longer describe it.
                    if s.seen_gen + 1 < self.generation {
                        s.ewma = PeakEwma::new(millis(self.config.default_rtt), now);
                        s.accrual = Accrual::default();
                    }
                    s.seen_at = now;
                    s.seen_gen = self.generation;
                }
                None => {
                    let stats = Stats {
                        ewma: PeakEwma::new(millis(self.config.default_rtt), now),
                        in_flight: 0,
                        accrual: Accrual::default(),
                        seen_at: now,
                        seen_gen: self.generation,
                    };
                    self.stats.insert(c.instance_id.clone(), stats);
                }
            }
        }
        // Churning instance ids could grow the map between timed prunes; a
        // map far larger than the service is pruned at once.
        let oversized = self.stats.len() > 4 * candidates.len() + 64;
        let due = self.next_prune.is_none_or(|at| now >= at);
        if due || oversized {
            let forget_after = self.config.forget_after;
            let generation = self.generation;
            self.stats.retain(|_, s| {
                s.seen_gen == generation
                    || (!oversized && now.saturating_duration_since(s.seen_at) < forget_after)
            });
            // Pruning every quarter of `forget_after` keeps the work off the hot path.
            let every = (forget_after / 4).max(Duration::from_secs(1));
            self.next_prune = Some(now.checked_add(every).unwrap_or(now));
        }
    }
}

fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[cfg(test)]
#[path = "balancer_tests.rs"]
mod tests;

//! A discrete-event model of one caller and one service: instances at
//! several RTTs, each a queue in front of a few workers with a service-time
//! distribution; requests arrive as a Poisson stream. A strategy picks the
//! instance of each request; the sidecar's strategy is the real
//! `client::select::Balancer`, driven with simulated instants.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::time::{Duration, Instant};

use client::select::{Balancer, BalancerConfig, Candidate, Outcome, Requirements};
use mesh_proto::api::RttSource;
use mesh_proto::catalog::Health;
use rand::rngs::SmallRng;
use rand::{RngExt, SeedableRng};

/// One instance of the simulated service.
#[derive(Debug, Clone, serde::Serialize)]
pub struct InstanceSpec {
    /// Instance id.
    pub id: String,
    /// RTT from the caller's node, in ms; None when never measured.
    pub rtt_ms: Option<f64>,
    /// Mean service time, in ms.
    pub service_ms: f64,
    /// Share of connection attempts refused (1.0: the process is gone).
    pub fail_rate: f64,
    /// Requests it serves at once; the rest wait in its queue.
    pub workers: usize,
}

/// How instances are chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum Strategy {
    /// Gossamer: requirements, P2C over peak-EWMA, ejection, retry budget.
    Gossamer,
    /// Every instance in turn, whatever its RTT or health.
    RoundRobin,
    /// A uniformly random instance.
    Random,
    /// In turn among instances known to be within the hard requirement.
    RoundRobinWithinHard,
}

impl Strategy {
    /// Name in tables and JSON.
    pub fn name(self) -> &'static str {
        match self {
            Strategy::Gossamer => "gossamer (P2C peak-EWMA)",
            Strategy::RoundRobin => "round robin",
            Strategy::Random => "random",
            Strategy::RoundRobinWithinHard => "round robin within hard",
        }
    }
}

/// The workload.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Workload {
    /// The service's instances.
    pub instances: Vec<InstanceSpec>,
    /// The caller's requirements.
    pub soft_rtt_ms: u32,
    /// The caller's hard requirement.
    pub hard_rtt_ms: u32,
    /// Requests per second (Poisson).
    pub rate: f64,
    /// Simulated seconds measured.
    pub seconds: f64,
    /// Simulated seconds before measuring (estimates warm up).
    pub warmup: f64,
    /// Seed of arrivals, service times and failures.
    pub seed: u64,
}

/// What one strategy did with the workload.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Tally {
    /// Requests measured.
    pub requests: u64,
    /// Answered.
    pub ok: u64,
    /// Failed (no retry, or the retry failed too).
    pub errors: u64,
    /// Retries sent.
    pub retries: u64,
    /// Answered by an instance within the soft requirement.
    pub within_soft: u64,
    /// Attempts sent to an instance over the hard requirement or of unknown RTT.
    pub hard_violations: u64,
    /// Attempts per instance, in the order of the workload.
    pub per_instance: Vec<u64>,
    /// Latencies of answered requests, in µs (sorted at the end).
    #[serde(skip)]
    pub latencies_us: Vec<u64>,
}

enum Event {
    Arrive { req: usize },
    AtInstance { req: usize, inst: usize },
    Done { req: usize, inst: usize },
    Respond { req: usize, inst: usize, ok: bool },
}

struct Request {
    arrived: f64,
    attempt_started: f64,
    tried: Vec<usize>,
    measured: bool,
}

struct Sim<'a> {
    w: &'a Workload,
    strategy: Strategy,
    balancer: Balancer,
    base: Instant,
    rng: SmallRng,
    queue: BinaryHeap<Reverse<(u64, u64)>>,
    events: Vec<Option<Event>>,
    busy: Vec<usize>,
    waiting: Vec<VecDeque<usize>>,
    requests: Vec<Request>,
    candidates: Vec<Candidate>,
    rr: usize,
    tally: Tally,
}

/// Runs one strategy over the workload.
pub fn simulate(w: &Workload, strategy: Strategy) -> Tally {
    let candidates = w
        .instances
        .iter()
        .map(|spec| Candidate {
            instance_id: spec.id.clone(),
            node: format!("node-{}", spec.id),
            local: spec.rtt_ms == Some(0.0),
            rtt_ms: spec.rtt_ms,
            rtt_source: if spec.rtt_ms.is_some() {
                RttSource::Measured
            } else {
                RttSource::Unknown
            },
            health: Health::Passing,
            node_alive: true,
        })
        .collect();
    let mut sim = Sim {
        w,
        strategy,
        balancer: Balancer::with_seed(BalancerConfig::default(), w.seed),
        base: Instant::now(),
        rng: SmallRng::seed_from_u64(w.seed),
        queue: BinaryHeap::new(),
        events: Vec::new(),
        busy: vec![0; w.instances.len()],
        waiting: vec![VecDeque::new(); w.instances.len()],
        requests: Vec::new(),
        candidates,
        rr: 0,
        tally: Tally {
            per_instance: vec![0; w.instances.len()],
            ..Tally::default()
        },
    };
    sim.run();
    sim.tally.latencies_us.sort_unstable();
    sim.tally
}

/// A draw from the exponential distribution with mean 1.
fn exp1(rng: &mut SmallRng) -> f64 {
    -(1.0 - rng.random::<f64>()).ln()
}

impl Sim<'_> {
    fn at(&mut self, t: f64, event: Event) {
        let key = (t * 1e9) as u64;
        self.events.push(Some(event));
        self.queue
            .push(Reverse((key, self.events.len() as u64 - 1)));
    }

    fn now(&self, t: f64) -> Instant {
        self.base + Duration::from_secs_f64(t)
    }

    fn run(&mut self) {
        let end = self.w.warmup + self.w.seconds;
        let mut t = 0.0;
        // Arrivals are drawn up front so every strategy sees the same stream.
        let mut arrivals = SmallRng::seed_from_u64(self.w.seed ^ 0xA5A5);
        while t < end && self.requests.len() < 50_000_000 {
            t += exp1(&mut arrivals) / self.w.rate.max(1e-9);
            self.requests.push(Request {
                arrived: t,
                attempt_started: t,
                tried: Vec::new(),
                measured: t >= self.w.warmup && t < end,
            });
            let req = self.requests.len() - 1;
            self.at(t, Event::Arrive { req });
        }
        while let Some(Reverse((key, slot))) = self.queue.pop() {
            let t = key as f64 / 1e9;
            if let Some(event) = self.events.get_mut(slot as usize).and_then(Option::take) {
                self.handle(t, event);
            }
        }
    }

    fn handle(&mut self, t: f64, event: Event) {
        match event {
            Event::Arrive { req } => {
                if self.requests[req].measured {
                    self.tally.requests += 1;
                }
                self.send(t, req);
            }
            Event::AtInstance { req, inst } => {
                if self.busy[inst] < self.w.instances[inst].workers {
                    self.start(t, req, inst);
                } else {
                    self.waiting[inst].push_back(req);
                }
            }
            Event::Done { req, inst } => {
                let half = self.w.instances[inst].rtt_ms.unwrap_or(0.0) / 2000.0;
                self.at(
                    t + half,
                    Event::Respond {
                        req,
                        inst,
                        ok: true,
                    },
                );
                self.busy[inst] -= 1;
                if let Some(next) = self.waiting[inst].pop_front() {
                    self.start(t, next, inst);
                }
            }
            Event::Respond { req, inst, ok } => self.respond(t, req, inst, ok),
        }
    }

    fn start(&mut self, t: f64, req: usize, inst: usize) {
        self.busy[inst] += 1;
        let mean = self.w.instances[inst].service_ms / 1000.0;
        let service = mean * (0.5 + 0.5 * exp1(&mut self.rng));
        self.at(t + service, Event::Done { req, inst });
    }

    /// Picks an instance for `req` (avoiding ones it tried) and sends it.
    fn send(&mut self, t: f64, req: usize) {
        let Some(inst) = self.pick(t, req) else {
            self.finish(t, req, None);
            return;
        };
        self.requests[req].tried.push(inst);
        self.requests[req].attempt_started = t;
        let spec = &self.w.instances[inst];
        let rtt = spec.rtt_ms.unwrap_or(0.0) / 1000.0;
        if self.requests[req].measured {
            self.tally.per_instance[inst] += 1;
            if spec
                .rtt_ms
                .is_none_or(|r| r > f64::from(self.w.hard_rtt_ms))
            {
                self.tally.hard_violations += 1;
            }
        }
        let refused = spec.fail_rate > 0.0 && self.rng.random::<f64>() < spec.fail_rate;
        if refused {
            // A refused connection costs one round trip.
            self.at(
                t + rtt,
                Event::Respond {
                    req,
                    inst,
                    ok: false,
                },
            );
        } else {
            self.at(t + rtt / 2.0, Event::AtInstance { req, inst });
        }
    }

    fn pick(&mut self, t: f64, req: usize) -> Option<usize> {
        let n = self.candidates.len();
        let tried = &self.requests[req].tried;
        match self.strategy {
            Strategy::Gossamer => {
                let exclude: Vec<&str> = tried
                    .iter()
                    .map(|&i| self.candidates[i].instance_id.as_str())
                    .collect();
                let requirements = Requirements {
                    hard_rtt_ms: Some(self.w.hard_rtt_ms),
                    soft_rtt_ms: Some(self.w.soft_rtt_ms),
                };
                let now = self.now(t);
                self.balancer
                    .pick(&self.candidates, requirements, &exclude, now)
                    .ok()
                    .map(|p| p.index)
            }
            Strategy::RoundRobin => {
                self.rr = (self.rr + 1) % n;
                Some(self.rr)
            }
            Strategy::Random => Some(self.rng.random_range(0..n)),
            Strategy::RoundRobinWithinHard => {
                let hard = f64::from(self.w.hard_rtt_ms);
                for _ in 0..n {
                    self.rr = (self.rr + 1) % n;
                    if self.w.instances[self.rr].rtt_ms.is_some_and(|r| r <= hard) {
                        return Some(self.rr);
                    }
                }
                None
            }
        }
    }

    fn respond(&mut self, t: f64, req: usize, inst: usize, ok: bool) {
        if self.strategy == Strategy::Gossamer {
            let started = self.requests[req].attempt_started;
            let latency = Duration::from_secs_f64((t - started).max(0.0));
            let outcome = if ok {
                Outcome::Success { latency }
            } else {
                Outcome::Failure { latency }
            };
            let now = self.now(t);
            self.balancer
                .report(&self.candidates[inst].instance_id, outcome, now);
            // The proxy retries a refused connection once, within the budget.
            if !ok && self.requests[req].tried.len() == 1 && self.balancer.try_retry(now) {
                if self.requests[req].measured {
                    self.tally.retries += 1;
                }
                self.send(t, req);
                return;
            }
        }
        self.finish(t, req, ok.then_some(inst));
    }

    fn finish(&mut self, t: f64, req: usize, answered_by: Option<usize>) {
        let request = &self.requests[req];
        if !request.measured {
            return;
        }
        match answered_by {
            Some(inst) => {
                self.tally.ok += 1;
                let us = ((t - request.arrived) * 1e6).max(1.0) as u64;
                self.tally.latencies_us.push(us);
                let soft = f64::from(self.w.soft_rtt_ms);
                if self.w.instances[inst].rtt_ms.is_some_and(|r| r <= soft) {
                    self.tally.within_soft += 1;
                }
            }
            None => self.tally.errors += 1,
        }
    }
}

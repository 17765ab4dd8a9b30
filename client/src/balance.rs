//! [`Balancer`]: client-side balancing for callers that skip the proxy.
//!
//! It keeps a recent view of a service's instances from the agent, and picks
//! among them with [`select::Balancer`], the very code the sidecar's proxy
//! uses: RTT requirements, then power of two choices over peak-EWMA, with
//! ejection of failing instances. The caller makes the call itself and
//! reports how it went.

use std::fmt;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use mesh_proto::api::{InstanceView, InstancesView, RttSource};

use crate::admin::Client;
use crate::error::Error;
use crate::select::{self, BalancerConfig, Candidate, Outcome, Requirements};

/// How a [`Balancer`] selects and how fresh it keeps its view.
#[derive(Debug, Clone, PartialEq)]
pub struct BalancerOptions {
    /// The caller's RTT requirements; the definition's make them stricter.
    pub requirements: Requirements,
    /// Selection settings (ejection, peak-EWMA, retry budget); the defaults
    /// are the sidecar's.
    pub config: BalancerConfig,
    /// A pick older than this asks the agent for a fresh view first (default 2 s).
    pub refresh_every: Duration,
    /// While the agent cannot be reached, picks go on from the last view
    /// for this long (default 60 s); after that they fail with the
    /// agent's error.
    pub max_stale: Duration,
}

impl Default for BalancerOptions {
    fn default() -> Self {
        Self {
            requirements: Requirements::default(),
            config: BalancerConfig::default(),
            refresh_every: Duration::from_secs(2),
            max_stale: Duration::from_secs(60),
        }
    }
}

/// The instance to call, from [`Balancer::pick`]. Give it back to
/// [`Balancer::report`] exactly once, with how the call went.
#[derive(Debug, Clone, PartialEq)]
#[must_use = "report the outcome with Balancer::report, or the instance stays counted as in flight"]
pub struct Picked {
    /// Instance id.
    pub instance_id: String,
    /// Where to send the call: the address the instance registered.
    pub address: SocketAddr,
    /// Node the instance runs on.
    pub node: String,
    /// RTT from the agent's node to the instance's node, in ms, if known.
    pub rtt_ms: Option<f64>,
    /// Where `rtt_ms` came from.
    pub rtt_source: RttSource,
    /// Whether it lies within the soft requirement (true when there is none).
    pub within_soft: bool,
    /// When it was picked.
    pub picked_at: Instant,
}

// === impl Picked ===

impl Picked {
    /// Time since the pick.
    pub fn elapsed(&self) -> Duration {
        self.picked_at.elapsed()
    }

    /// A success or failure with the time since the pick as its latency,
    /// for callers that report right after the first byte of the answer.
    pub fn outcome(&self, success: bool) -> Outcome {
        let latency = self.elapsed();
        if success {
            Outcome::Success { latency }
        } else {
            Outcome::Failure { latency }
        }
    }
}

/// Client-side balancing over the instances of one service.
///
/// ```no_run
/// # async fn run() -> Result<(), client::Error> {
/// let agent = client::Client::new("http://127.0.0.1:4200")?;
/// let balancer = client::Balancer::new(agent, "billing");
/// let picked = balancer.pick().await?;
/// let ok = call(picked.address).await; // the caller's own HTTP/gRPC call
/// let outcome = picked.outcome(ok);
/// balancer.report(picked, outcome);
/// # Ok(())
/// # }
/// # async fn call(_: std::net::SocketAddr) -> bool { true }
/// ```
///
/// [`pick`](Balancer::pick) refreshes the view from the agent when it is
/// older than [`BalancerOptions::refresh_every`] (or feed it yourself from
/// a [`Watch`](crate::Watch) with [`update`](Balancer::update)), then picks
/// with [`select::Balancer::pick`]: instances outside the hard RTT
/// requirement, critical, or on a down node are never picked; those within
/// the soft requirement are preferred; among them the cheaper of two random
/// ones wins, cost being peak-EWMA latency × (in-flight + 1). An instance
/// with 5 failures in a row (by default) is ejected for 30 s.
///
/// The agent's own ejections (from proxy traffic) are not applied: this
/// balancer judges instances by the outcomes its caller reports.
///
/// Cloning is cheap and clones share state: one balancer per service for
/// the whole process is the intended use.
#[derive(Clone)]
pub struct Balancer {
    shared: Arc<Shared>,
}

struct Shared {
    client: Client,
    service: String,
    options: BalancerOptions,
    state: Mutex<State>,
    /// Held while asking the agent, so concurrent picks refresh once.
    refreshing: tokio::sync::Mutex<()>,
}

struct State {
    selector: select::Balancer,
    view: Option<View>,
    /// Last attempt to refresh, successful or not.
    attempted_at: Option<Instant>,
    /// Why the last attempt failed, if it did.
    last_error: Option<Error>,
}

/// The instances as last seen, ready for selection.
struct View {
    at: Instant,
    requirements: Requirements,
    candidates: Vec<Candidate>,
    instances: Vec<InstanceView>,
}

// === impl Balancer ===

impl Balancer {
    /// A balancer of `service` with default options.
    pub fn new(client: Client, service: &str) -> Self {
        Self::with_options(client, service, BalancerOptions::default())
    }

    /// A balancer of `service` with the given options.
    pub fn with_options(client: Client, service: &str, options: BalancerOptions) -> Self {
        let selector = select::Balancer::new(options.config.clone());
        Self::with_selector(client, service, options, selector)
    }

    /// As [`with_options`](Balancer::with_options), with random choices that
    /// follow `seed`: for tests and benchmarks that must repeat.
    pub fn with_seed(client: Client, service: &str, options: BalancerOptions, seed: u64) -> Self {
        let selector = select::Balancer::with_seed(options.config.clone(), seed);
        Self::with_selector(client, service, options, selector)
    }

    fn with_selector(
        client: Client,
        service: &str,
        options: BalancerOptions,
        selector: select::Balancer,
    ) -> Self {
        Self {
            shared: Arc::new(Shared {
                client,
                service: service.to_owned(),
                options,
                state: Mutex::new(State {
                    selector,
                    view: None,
                    attempted_at: None,
                    last_error: None,
                }),
                refreshing: tokio::sync::Mutex::new(()),
            }),
        }
    }

    /// The service balanced.
    pub fn service(&self) -> &str {
        &self.shared.service
    }

    /// The options it runs with.
    pub fn options(&self) -> &BalancerOptions {
        &self.shared.options
    }

    /// Asks the agent for the instances now and uses the answer from the
    /// next pick on.
    pub async fn refresh(&self) -> Result<(), Error> {
        let _one_at_a_time = self.shared.refreshing.lock().await;
        self.fetch().await
    }

    async fn fetch(&self) -> Result<(), Error> {
        let shared = &self.shared;
        let answer = shared
            .client
            .instances(&shared.service, &shared.options.requirements)
            .await;
        let mut state = self.state();
        state.attempted_at = Some(Instant::now());
        match answer {
            Ok(view) => {
                state.view = Some(self.view_of(view));
                state.last_error = None;
                Ok(())
            }
            Err(error) => {
                state.last_error = Some(error.clone());
                Err(error)
            }
        }
    }

    /// Replaces the view with one you fetched, for example an update of a
    /// [`Watch`](crate::Watch) of the same service and requirements. A view
    /// of another service is ignored.
    pub fn update(&self, view: InstancesView) {
        if view.service != self.shared.service {
            return;
        }
        let view = self.view_of(view);
        let mut state = self.state();
        state.attempted_at = Some(view.at);
        state.last_error = None;
        state.view = Some(view);
    }

    /// Picks an instance to call, refreshing the view first when it is stale.
    pub async fn pick(&self) -> Result<Picked, Error> {
        self.pick_excluding(&[]).await
    }

    /// Picks an instance other than those in `tried` (instance ids already
    /// tried for this request): for a retry, after
    /// [`try_retry`](Balancer::try_retry) allowed it.
    pub async fn pick_excluding(&self, tried: &[&str]) -> Result<Picked, Error> {
        if self.needs_refresh() {
            let _one_at_a_time = self.shared.refreshing.lock().await;
            // Another pick may have refreshed while this one waited.
            if self.needs_refresh() {
                // A failed refresh is remembered; the stale view may still do.
                let _ = self.fetch().await;
            }
        }
        self.pick_now(tried)
    }

    /// Picks from the view at hand without asking the agent: for callers
    /// that keep the view fresh with [`update`](Balancer::update).
    pub fn pick_now(&self, tried: &[&str]) -> Result<Picked, Error> {
        let now = Instant::now();
        let max_stale = self.shared.options.max_stale;
        let mut state = self.state();
        let state = &mut *state;
        let stale = state
            .view
            .as_ref()
            .is_none_or(|v| now.saturating_duration_since(v.at) > max_stale);
        if stale {
            if let Some(error) = &state.last_error {
                return Err(error.clone());
            }
        }
        let Some(view) = state.view.as_ref() else {
            return Err(Error::Unreachable {
                url: self.shared.client.url().to_owned(),
                reason: "no answer from the agent yet (call Balancer::refresh or pick first)"
                    .to_owned(),
            });
        };
        let pick = state
            .selector
            .pick(&view.candidates, view.requirements, tried, now)
            .map_err(|source| Error::NoInstance {
                service: self.shared.service.clone(),
                source,
            })?;
        let instance = &view.instances[pick.index];
        Ok(Picked {
            instance_id: pick.instance_id,
            address: instance.instance.address,
            node: instance.instance.node.to_string(),
            rtt_ms: instance.rtt_ms,
            rtt_source: instance.rtt_source,
            within_soft: pick.within_soft,
            picked_at: now,
        })
    }

    /// Reports how a call to a picked instance went: frees its in-flight
    /// slot and feeds its latency estimate and failure count (5 failures in
    /// a row eject it, by default). `latency` is best taken at the first
    /// byte of the answer; a connect error, reset, timeout or 5xx is a
    /// failure.
    pub fn report(&self, picked: Picked, outcome: Outcome) {
        self.state()
            .selector
            .report(&picked.instance_id, outcome, Instant::now());
    }

    /// Whether the retry budget (20 % of requests plus 10 per second, by
    /// default) allows one more retry; if so it is spent.
    pub fn try_retry(&self) -> bool {
        self.state().selector.try_retry(Instant::now())
    }

    /// Instances ejected so far, re-ejections included.
    pub fn ejections_total(&self) -> u64 {
        self.state().selector.ejections_total()
    }

    /// The instances from the last view with the effective requirements,
    /// as the selection code ranks them now: eligible ones best first.
    pub fn ranking(&self) -> Option<select::Ranking> {
        let state = self.state();
        let view = state.view.as_ref()?;
        Some(
            state
                .selector
                .rank(&view.candidates, view.requirements, Instant::now()),
        )
    }

    fn needs_refresh(&self) -> bool {
        let state = self.state();
        state.attempted_at.is_none_or(|at| {
            Instant::now().saturating_duration_since(at) >= self.shared.options.refresh_every
        })
    }

    fn view_of(&self, view: InstancesView) -> View {
        let requirements = Requirements {
            hard_rtt_ms: view.hard_rtt_ms,
            soft_rtt_ms: view.soft_rtt_ms,
        }
        .stricter(self.shared.options.requirements);
        let instances: Vec<InstanceView> =
            view.eligible.into_iter().chain(view.ineligible).collect();
        let candidates = instances.iter().map(candidate).collect();
        View {
            at: Instant::now(),
            requirements,
            candidates,
            instances,
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // The state stays consistent between statements, so a panic
        // elsewhere while it was held does not spoil it.
        self.shared
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl fmt::Debug for Balancer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Balancer")
            .field("service", &self.shared.service)
            .field("agent", &self.shared.client.url())
            .field("options", &self.shared.options)
            .finish_non_exhaustive()
    }
}

/// The selection module's view of an instance the agent listed. The agent
/// reports RTT 0, measured, for its own node, which the selection treats
/// like a local instance; the agent's ejections are left out on purpose.
fn candidate(view: &InstanceView) -> Candidate {
    Candidate {
        instance_id: view.instance.id.clone(),
        node: view.instance.node.to_string(),
        local: false,
        rtt_ms: view.rtt_ms,
        rtt_source: view.rtt_source,
        health: view.instance.health,
        node_alive: !matches!(view.ineligible, Some(mesh_proto::api::Ineligible::NodeDown)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mesh_proto::api::Ineligible;
    use mesh_proto::catalog::{Health, Instance};

    fn instance(id: &str, node: &str, port: u16, rtt_ms: f64, health: Health) -> InstanceView {
        InstanceView {
            instance: Instance {
                id: id.to_owned(),
                service: "web".to_owned(),
                node: mesh_proto::NodeId::new(node).expect("node id"),
                address: SocketAddr::from(([127, 0, 0, 1], port)),
                deployment_id: None,
                tags: Vec::new(),
                health,
            },
            rtt_ms: Some(rtt_ms),
            rtt_source: RttSource::Measured,
            within_soft: true,
            ineligible: None,
        }
    }

    fn balancer(requirements: Requirements) -> Balancer {
        // Never contacted: every test feeds views with `update`.
        let client = Client::new("http://127.0.0.1:9").expect("client");
        let options = BalancerOptions {
            requirements,
            refresh_every: Duration::from_secs(3600),
            ..BalancerOptions::default()
        };
        Balancer::with_seed(client, "web", options, 7)
    }

    fn web(hard: Option<u32>, instances: Vec<InstanceView>) -> InstancesView {
        InstancesView {
            service: "web".to_owned(),
            hard_rtt_ms: hard,
            soft_rtt_ms: None,
            protocol: None,
            eligible: instances,
            ineligible: Vec::new(),
        }
    }

    #[test]
    fn picks_only_within_the_hard_requirement_and_returns_the_address() {
        let b = balancer(Requirements::default());
        b.update(web(
            Some(30),
            vec![
                instance("near", "a", 1001, 0.0, Health::Passing),
                instance("mid", "b", 1002, 5.0, Health::Passing),
                instance("far", "c", 1003, 41.0, Health::Passing),
                instance("sick", "b", 1004, 5.0, Health::Critical),
            ],
        ));
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..200 {
            let picked = b.pick_now(&[]).expect("pick");
            seen.insert((picked.instance_id.clone(), picked.address.port()));
            let outcome = Outcome::Success {
                latency: Duration::from_millis(2),
            };
            b.report(picked, outcome);
        }
        let seen: Vec<_> = seen.into_iter().collect();
        assert_eq!(
            seen,
            vec![("mid".to_owned(), 1002), ("near".to_owned(), 1001)]
        );
    }

    #[test]
    fn the_callers_requirement_tightens_the_agents() {
        let b = balancer(Requirements {
            hard_rtt_ms: Some(3),
            soft_rtt_ms: None,
        });
        b.update(web(
            Some(30),
            vec![
                instance("near", "a", 1001, 0.0, Health::Passing),
                instance("mid", "b", 1002, 5.0, Health::Passing),
            ],
        ));
        for _ in 0..20 {
            let picked = b.pick_now(&[]).expect("pick");
            assert_eq!(picked.instance_id, "near");
            b.report(picked.clone(), picked.outcome(true));
        }
    }

    #[test]
    fn an_instance_reported_failing_is_ejected_and_avoided() {
        let b = balancer(Requirements::default());
        b.update(web(
            None,
            vec![
                instance("good", "a", 1001, 1.0, Health::Passing),
                instance("bad", "b", 1002, 1.0, Health::Passing),
            ],
        ));
        let mut failures = 0;
        for _ in 0..200 {
            let picked = b.pick_now(&[]).expect("pick");
            let ok = picked.instance_id == "good";
            failures += usize::from(!ok);
            let latency = Duration::from_millis(1);
            let outcome = if ok {
                Outcome::Success { latency }
            } else {
                Outcome::Failure { latency }
            };
            b.report(picked, outcome);
        }
        // After its first failure, peak-EWMA makes it the costlier of the two.
        assert!(
            failures <= 2,
            "{failures} calls went to the failing instance"
        );

        // Five failures in a row (counting the one above) eject it;
        // forced there as retries.
        let mut forced = 0;
        while b.ejections_total() == 0 && forced < 10 {
            let picked = b.pick_now(&["good"]).expect("pick bad");
            assert_eq!(picked.instance_id, "bad");
            let outcome = picked.outcome(false);
            b.report(picked, outcome);
            forced += 1;
        }
        assert_eq!(failures + forced, 5);
        assert_eq!(b.ejections_total(), 1);
        let ranking = b.ranking().expect("ranking");
        assert!(matches!(
            ranking.ineligible.as_slice(),
            [(c, Ineligible::Ejected { .. })] if c.instance_id == "bad"
        ));
        assert!(b.pick_now(&["good"]).is_err());
    }

    #[test]
    fn no_instance_is_a_typed_error_with_a_hint() {
        let b = balancer(Requirements::default());
        b.update(web(
            Some(10),
            vec![instance("far", "c", 1003, 41.0, Health::Passing)],
        ));
        let error = b.pick_now(&[]).expect_err("nothing within 10 ms");
        assert!(matches!(
            error,
            Error::NoInstance {
                source: select::SelectError::NoneWithinHardRtt {
                    hard_rtt_ms: 10,
                    ..
                },
                ..
            }
        ));
        assert!(error.to_string().contains("\"web\""), "{error}");
    }

    #[test]
    fn a_view_of_another_service_is_ignored() {
        let b = balancer(Requirements::default());
        let mut other = web(None, vec![instance("x", "a", 1001, 0.0, Health::Passing)]);
        other.service = "db".to_owned();
        b.update(other);
        assert!(b.ranking().is_none());
    }

    #[tokio::test]
    async fn without_an_agent_pick_says_where_it_looked() {
        let client = Client::new("http://127.0.0.1:9")
            .expect("client")
            .with_timeout(Duration::from_secs(2));
        let b = Balancer::new(client, "web");
        let error = b.pick().await.expect_err("no agent on port 9");
        assert!(error.is_transient(), "{error}");
        assert!(error.to_string().contains("127.0.0.1:9"), "{error}");
    }
}

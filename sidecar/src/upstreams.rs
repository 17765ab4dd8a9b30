//! The upstream candidates of a service as this node sees them (catalog +
//! membership + RTT), and one balancer per service, shared by the proxy and
//! the admin API's instance listing.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

use client::select::{Balancer, BalancerConfig, Candidate, Ranking, Requirements};
use mesh_proto::catalog::Instance;

use crate::agent::Agent;

/// Balancers by service name.
pub struct Upstreams {
    config: BalancerConfig,
    balancers: Mutex<HashMap<String, Balancer>>,
}

impl Upstreams {
    /// No balancer yet; each is made on first use.
    pub fn new(config: BalancerConfig) -> Self {
        Self {
            config,
            balancers: Mutex::new(HashMap::new()),
        }
    }

    /// Runs `f` on the balancer of `service`.
    pub fn with<T>(&self, service: &str, f: impl FnOnce(&mut Balancer) -> T) -> T {
        let mut balancers = self.balancers.lock().unwrap_or_else(|p| p.into_inner());
        let balancer = balancers
            .entry(service.to_owned())
            .or_insert_with(|| Balancer::new(self.config.clone()));
        f(balancer)
    }

    /// Ranks the instances of `service` under `requirements`.
    pub fn rank(
        &self,
        service: &str,
        candidates: &[Candidate],
        requirements: Requirements,
    ) -> Ranking {
        self.with(service, |b| {
            b.rank(candidates, requirements, Instant::now())
        })
    }
}

/// Live instances of `service` on nodes that are up (ours, or active members).
pub fn live_instances(agent: &Agent, service: &str) -> Vec<Instance> {
    let active = agent.membership.active().borrow().clone();
    agent.catalog.read(|catalog| {
        catalog
            .instances()
            .filter(|i| i.service == service)
            .filter(|i| i.node == *agent.node_id() || active.contains_key(&i.node))
            .cloned()
            .collect()
    })
}

/// The selection module's view of instances.
pub fn candidates(agent: &Agent, instances: &[Instance]) -> Vec<Candidate> {
    instances
        .iter()
        .map(|instance| {
            let (rtt_ms, rtt_source) = agent.rtt.get(&instance.node);
            Candidate {
                instance_id: instance.id.clone(),
                node: instance.node.to_string(),
                local: instance.node == *agent.node_id(),
                rtt_ms,
                rtt_source,
                health: instance.health,
                node_alive: true,
            }
        })
        .collect()
}

/// The definition's requirements made stricter by the caller's.
pub fn effective_requirements(agent: &Agent, service: &str, caller: Requirements) -> Requirements {
    let defined = agent
        .catalog
        .read(|c| c.definition(service).map(|d| d.requirements.clone()))
        .map(|r| Requirements {
            hard_rtt_ms: r.hard_rtt_ms,
            soft_rtt_ms: r.soft_rtt_ms,
        })
        .unwrap_or_default();
    defined.stricter(caller)
}

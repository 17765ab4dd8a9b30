//! [`DnsSource`] for today's agent: the only file of the DNS front that
//! touches [`crate::agent`], so it can be re-pointed at a catalog snapshot
//! without changing the answer core or the server.
//!
//! Eligibility is the proxy's: [`crate::upstreams`] builds the candidates and
//! the service's balancer ranks them under the definition's requirements (a
//! critical instance, a node over the hard RTT or not measured, an ejected
//! instance are out; when some are within the soft RTT, only those count).
//! DNS answers only `passing` instances (issue 19; Consul's `only_passing`):
//! a client caches an address for the TTL and has no ejection of its own,
//! so a `warning` instance, still routable by the proxy, is left out.

use std::net::IpAddr;
use std::sync::Arc;

use client::select::Requirements;
use mesh_proto::catalog::{Health, Instance};

use super::{DnsSource, DnsTarget};
use crate::agent::Agent;
use crate::upstreams::{candidates, effective_requirements, live_instances};

/// The agent seen as a [`DnsSource`].
pub struct AgentSource(Arc<Agent>);

impl AgentSource {
    /// The shared agent as the DNS front's source.
    pub fn shared(agent: Arc<Agent>) -> Arc<dyn DnsSource> {
        Arc::new(Self(agent))
    }

    fn target(&self, instance: &Instance) -> DnsTarget {
        DnsTarget {
            instance: instance.id.clone(),
            node: instance.node.to_string(),
            addr: instance.address,
            rtt_ms: self.0.rtt.get(&instance.node).0,
        }
    }
}

impl DnsSource for AgentSource {
    fn service_answers(&self, service: &str, tag: Option<&str>) -> Option<Vec<DnsTarget>> {
        let agent = &self.0;
        let live = live_instances(agent, service);
        // Checked before ranking: ranking makes a balancer per name, and
        // names from the network must not grow that map.
        if live.is_empty() && agent.catalog.read(|c| c.definition(service).is_none()) {
            return None;
        }
        let live: Vec<Instance> = live
            .into_iter()
            .filter(|i| i.health == Health::Passing)
            .filter(|i| tag.is_none_or(|tag| i.tags.iter().any(|t| t.eq_ignore_ascii_case(tag))))
            .collect();
        if live.is_empty() {
            return Some(Vec::new());
        }
        let requirements = effective_requirements(agent, service, Requirements::default());
        let ranking = agent
            .upstreams
            .rank(service, &candidates(agent, &live), requirements);
        let any_within_soft = ranking.eligible.iter().any(|r| r.within_soft);
        Some(
            ranking
                .eligible
                .iter()
                .filter(|r| r.within_soft || !any_within_soft)
                .filter_map(|r| live.iter().find(|i| i.id == r.candidate.instance_id))
                .map(|i| self.target(i))
                .collect(),
        )
    }

    fn node_addr(&self, node: &str) -> Option<IpAddr> {
        let agent = &self.0;
        if agent.node_id().as_str().eq_ignore_ascii_case(node) {
            return Some(agent.identity.addr.ip());
        }
        let active = agent.membership.active().borrow().clone();
        active
            .iter()
            .find(|(id, _)| id.as_str().eq_ignore_ascii_case(node))
            .map(|(_, identity)| identity.addr.ip())
    }

    fn instance(&self, instance: &str, node: &str) -> Option<DnsTarget> {
        let agent = &self.0;
        let active = agent.membership.active().borrow().clone();
        // Cloned out so the RTT table is not read under the catalog's lock.
        let found = agent.catalog.read(|catalog| {
            catalog
                .instances()
                .find(|i| {
                    i.id.eq_ignore_ascii_case(instance)
                        && i.node.as_str().eq_ignore_ascii_case(node)
                        && (i.node == *agent.node_id() || active.contains_key(&i.node))
                })
                .cloned()
        })?;
        Some(self.target(&found))
    }
}

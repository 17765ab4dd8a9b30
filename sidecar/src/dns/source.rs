//! [`DnsSource`] over the agent's services: the only file of the DNS front
//! that reads them, so the answer core and the server stay independent.
//!
//! Eligibility is the proxy's: [`crate::upstreams`] builds the candidates from
//! the catalog snapshot and
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
use mesh_proto::NodeIdentity;

use super::{DnsSource, DnsTarget};
use crate::catalog::{CatalogSnapshot, CatalogStore};
use crate::upstreams::Upstreams;

/// The agent's services seen as a [`DnsSource`].
pub struct AgentSource {
    /// This node.
    pub identity: NodeIdentity,
    /// Candidates, RTT and balancers (the proxy's own).
    pub upstreams: Arc<Upstreams>,
    /// Instance lookups by id (SRV targets).
    pub catalog: Arc<CatalogStore>,
}

impl AgentSource {
    /// The source as the DNS front takes it.
    pub fn shared(self) -> Arc<dyn DnsSource> {
        Arc::new(self)
    }

    fn target(&self, snapshot: &CatalogSnapshot, instance: &Instance) -> DnsTarget {
        DnsTarget {
            instance: instance.id.clone(),
            node: instance.node.to_string(),
            addr: instance.address,
            rtt_ms: self.upstreams.rtt_to(snapshot, &instance.node).0,
        }
    }
}

impl DnsSource for AgentSource {
    fn service_answers(&self, service: &str, tag: Option<&str>) -> Option<Vec<DnsTarget>> {
        let upstreams = &self.upstreams;
        let snapshot = upstreams.snapshot();
        // Checked before ranking: ranking makes a balancer per name, and
        // names from the network must not grow that map.
        snapshot.service(service)?;
        let live: Vec<&Instance> = upstreams
            .live_instances(&snapshot, service)
            .into_iter()
            .filter(|i| i.health == Health::Passing)
            .filter(|i| tag.is_none_or(|tag| i.tags.iter().any(|t| t.eq_ignore_ascii_case(tag))))
            .collect();
        if live.is_empty() {
            return Some(Vec::new());
        }
        let requirements =
            upstreams.effective_requirements(&snapshot, service, Requirements::default());
        let candidates = upstreams.candidates(&snapshot, &live);
        let ranking = upstreams.rank(service, &candidates, requirements);
        let any_within_soft = ranking.eligible.iter().any(|r| r.within_soft);
        Some(
            ranking
                .eligible
                .iter()
                .filter(|r| r.within_soft || !any_within_soft)
                .filter_map(|r| live.iter().find(|i| i.id == r.candidate.instance_id))
                .map(|i| self.target(&snapshot, i))
                .collect(),
        )
    }

    fn node_addr(&self, node: &str) -> Option<IpAddr> {
        if self.identity.node_id.as_str().eq_ignore_ascii_case(node) {
            return Some(self.identity.addr.ip());
        }
        self.upstreams
            .members()
            .iter()
            .find(|(id, _)| id.as_str().eq_ignore_ascii_case(node))
            .map(|(_, identity)| identity.addr.ip())
    }

    fn instance(&self, instance: &str, node: &str) -> Option<DnsTarget> {
        let active = self.upstreams.members();
        let local = &self.identity.node_id;
        // Cloned out so the RTT table is not read under the catalog's lock.
        let found = self.catalog.read(|catalog| {
            let matches = |i: &&Instance| {
                i.id.eq_ignore_ascii_case(instance)
                    && i.node.as_str().eq_ignore_ascii_case(node)
                    && (i.node == *local || active.contains_key(&i.node))
            };
            // The exact id first (a map lookup); a name a resolver changed
            // the case of falls back to a scan.
            catalog
                .instance(instance)
                .filter(matches)
                .or_else(|| catalog.instances().find(matches))
                .cloned()
        })?;
        Some(self.target(&self.upstreams.snapshot(), &found))
    }
}

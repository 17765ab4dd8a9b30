//! What the admin API shows: the agent's state turned into the JSON bodies of
//! `mesh_proto::api`.

use std::collections::BTreeMap;
use std::time::Instant;

use client::select::Requirements;
use mesh_proto::api::{
    HealthView, InstanceView, InstancesView, MemberCounts, MemberState, NodeView, ServiceSummary,
};
use mesh_proto::catalog::Health;

use crate::handles::AdminHandles;

/// `GET /v1/health`.
pub async fn health(agent: &AdminHandles) -> HealthView {
    let problems: Vec<String> = agent
        .registry
        .storage_problem()
        .map(|p| format!("the data dir refuses writes: {p}"))
        .into_iter()
        .chain(agent.join_problem.get())
        .collect();
    let members = agent.membership.members().await;
    let count = |state| members.iter().filter(|m| m.state == state).count();
    HealthView {
        node_id: agent.node_id().to_string(),
        ready: agent.is_ready(),
        members: MemberCounts {
            alive: count(MemberState::Alive),
            suspect: count(MemberState::Suspect),
            down: count(MemberState::Down),
        },
        catalog_index: agent.catalog.index(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        status: if problems.is_empty() {
            "ok"
        } else {
            "degraded"
        }
        .to_owned(),
        problems,
    }
}

/// `GET /v1/nodes`: every member foca remembers, with RTT and metadata.
pub async fn nodes(agent: &AdminHandles) -> Vec<NodeView> {
    let members = agent.membership.members().await;
    let snapshot = agent.catalog.snapshot();
    let metas = snapshot.nodes();
    let now = Instant::now();
    let mut views: Vec<NodeView> = members
        .into_iter()
        .map(|member| {
            let node = &member.identity.node_id;
            let is_self = node == agent.node_id();
            let (rtt_ms, rtt_source) = agent.upstreams.rtt_to(&snapshot, node);
            NodeView {
                id: node.to_string(),
                address: member.identity.addr.to_string(),
                state: member.state,
                generation: member.identity.generation,
                last_heard_ms: member
                    .last_heard
                    .map(|t| now.saturating_duration_since(t).as_millis() as u64),
                rtt_ms: rtt_ms.map(round2),
                rtt_source,
                is_self,
                meta: metas.get(node).cloned(),
                warnings: Vec::new(),
            }
        })
        .collect();
    views.sort_by(|a, b| a.id.cmp(&b.id));
    mesh_proto::api::address_warnings(&mut views);
    views
}

/// `GET /v1/services`: definitions and services that only have instances.
pub fn services(agent: &AdminHandles) -> Vec<ServiceSummary> {
    let snapshot = agent.catalog.snapshot();
    snapshot
        .services()
        .map(|(name, entry)| {
            let live = agent.upstreams.live_instances(&snapshot, name);
            ServiceSummary {
                name: name.clone(),
                definition: entry.definition.clone(),
                instances: live.len(),
                passing: live.iter().filter(|i| i.health == Health::Passing).count(),
            }
        })
        .collect()
}

/// `GET /v1/services/{name}/instances`: eligible first (best first), then the rest with reasons.
pub fn instances(agent: &AdminHandles, service: &str, caller: Requirements) -> InstancesView {
    let snapshot = agent.catalog.snapshot();
    let upstreams = &agent.upstreams;
    let requirements = upstreams.effective_requirements(&snapshot, service, caller);
    let live = upstreams.live_instances(&snapshot, service);
    let candidates = upstreams.candidates(&snapshot, &live);
    let ranking = agent.upstreams.rank(service, &candidates, requirements);
    let by_id: BTreeMap<&str, &mesh_proto::Instance> =
        live.iter().map(|i| (i.id.as_str(), *i)).collect();
    let view = |candidate: &client::select::Candidate, within_soft: bool, ineligible| {
        by_id
            .get(candidate.instance_id.as_str())
            .map(|instance| InstanceView {
                instance: (*instance).clone(),
                rtt_ms: candidate.rtt_ms.map(round2),
                rtt_source: candidate.rtt_source,
                within_soft,
                ineligible,
            })
    };
    InstancesView {
        service: service.to_owned(),
        hard_rtt_ms: requirements.hard_rtt_ms,
        soft_rtt_ms: requirements.soft_rtt_ms,
        protocol: snapshot.definition(service).map(|d| d.protocol),
        eligible: ranking
            .eligible
            .iter()
            .filter_map(|r| view(&r.candidate, r.within_soft, None))
            .collect(),
        ineligible: ranking
            .ineligible
            .iter()
            .filter_map(|(c, why)| {
                let within_soft = match (requirements.soft_rtt_ms, c.rtt_ms) {
                    (Some(soft), Some(rtt)) => rtt <= f64::from(soft),
                    _ => false,
                };
                view(c, within_soft, Some(why.clone()))
            })
            .collect(),
    }
}

fn round2(ms: f64) -> f64 {
    (ms * 100.0).round() / 100.0
}

//! The decision record: what the proxy picked for a request and why, and
//! what it ruled out, kept in the ring the UI and `GET /v1/decisions` read.

use std::time::Instant;

use client::select::{Requirements, SelectError};
use mesh_proto::Instance;

use crate::catalog::CatalogSnapshot;

use super::ProxyHandles;
use crate::decisions::{Decision, Rejected};

/// What was picked, for the decision record.
pub(super) struct Picked {
    pub(super) upstream: String,
    pub(super) rtt_ms: Option<f64>,
    pub(super) within_soft: bool,
    pub(super) others: usize,
}

/// The instance a pick chose, by its index in the live instances.
pub(super) struct Pick {
    pub(super) index: usize,
    /// RTT to its node, when known (0 on this node).
    pub(super) rtt_ms: Option<f64>,
    /// Its `node/instance`, as the decision record names it.
    pub(super) upstream: String,
}

/// Picks one of `live` for `service` (never one of `tried`) with the
/// shared selection, and records the decision and what it ruled out.
pub(super) fn pick_recorded(
    agent: &ProxyHandles,
    snapshot: &CatalogSnapshot,
    service: &str,
    live: &[&Instance],
    requirements: Requirements,
    tried: &[String],
) -> Result<Pick, SelectError> {
    let candidates = agent.upstreams.candidates(snapshot, live);
    let excluded: Vec<&str> = tried.iter().map(String::as_str).collect();
    // One classification serves the pick and the decision record.
    let explained = agent.upstreams.with(service, |b| {
        b.pick_explained(&candidates, requirements, &excluded, Instant::now())
    });
    let rejected: Vec<Rejected> = explained
        .ineligible
        .into_iter()
        .map(|(i, reason)| Rejected {
            upstream: upstream_at(live, i),
            reason,
        })
        .collect();
    let pick = explained.pick;
    let picked = pick.as_ref().map(|p| Picked {
        upstream: upstream_at(live, p.index),
        rtt_ms: candidates.get(p.index).and_then(|c| c.rtt_ms),
        within_soft: p.within_soft,
        others: explained.eligible.saturating_sub(1),
    });
    record(
        agent,
        service,
        picked.as_ref().map_err(|e| *e),
        &rejected,
        requirements,
        !tried.is_empty(),
    );
    let upstream = picked.ok().map(|p| p.upstream).unwrap_or_default();
    let pick = pick?;
    Ok(Pick {
        index: pick.index,
        rtt_ms: candidates.get(pick.index).and_then(|c| c.rtt_ms),
        upstream,
    })
}

/// `node/instance` of the candidate at `index` (candidates follow `live`).
pub(super) fn upstream_at(live: &[&Instance], index: usize) -> String {
    live.get(index)
        .map_or_else(String::new, |i| format!("{}/{}", i.node, i.id))
}

/// Records one decision in the ring the UI and `GET /v1/decisions` read.
pub(super) fn record(
    agent: &ProxyHandles,
    service: &str,
    outcome: Result<&Picked, &SelectError>,
    rejected: &[Rejected],
    requirements: Requirements,
    retry: bool,
) {
    let (picked, rtt_ms, why, eligible_others) = match outcome {
        Ok(p) => {
            let local = p.rtt_ms == Some(0.0);
            let why = match (requirements.soft_rtt_ms, p.within_soft) {
                _ if local && p.others == 0 => "the only eligible instance (on this node)".into(),
                (Some(soft), true) => format!(
                    "within soft {soft} ms; P2C over peak-EWMA among {} eligible",
                    p.others + 1
                )
                .into(),
                (Some(soft), false) => format!(
                    "none within soft {soft} ms: the best of {} eligible",
                    p.others + 1
                )
                .into(),
                (None, _) => format!("P2C over peak-EWMA among {} eligible", p.others + 1).into(),
            };
            (Some(p.upstream.clone()), p.rtt_ms, why, p.others)
        }
        Err(e) => (None, None, e.message().into(), 0),
    };
    let why = if retry {
        format!("retry after a failed attempt; {why}").into()
    } else {
        why
    };
    agent.decisions.record(Decision {
        at_ms: crate::catalog::wall_ms(),
        service: service.to_owned(),
        picked,
        rtt_ms,
        why,
        eligible_others,
        rejected: rejected.to_vec(),
        retry,
    });
}

//! The decision record: what the proxy picked for a request and why, and
//! what it ruled out, kept in the ring the UI and `GET /v1/decisions` read.

use client::select::SelectError;
use mesh_proto::Instance;

use super::ProxyHandles;
use crate::decisions::{Decision, Rejected};

/// What was picked, for the decision record.
pub(super) struct Picked {
    pub(super) upstream: String,
    pub(super) rtt_ms: Option<f64>,
    pub(super) within_soft: bool,
    pub(super) others: usize,
}

/// `node/instance` of the candidate at `index` (candidates follow `live`).
pub(super) fn upstream_at(live: &[Instance], index: usize) -> String {
    live.get(index)
        .map_or_else(String::new, |i| format!("{}/{}", i.node, i.id))
}

/// Records one decision in the ring the UI and `GET /v1/decisions` read.
pub(super) fn record(
    agent: &ProxyHandles,
    service: &str,
    outcome: Result<&Picked, &SelectError>,
    rejected: &[Rejected],
    requirements: client::select::Requirements,
    retry: bool,
) {
    let (picked, rtt_ms, why, eligible_others) = match outcome {
        Ok(p) => {
            let local = p.rtt_ms == Some(0.0);
            let why = match (requirements.soft_rtt_ms, p.within_soft) {
                _ if local && p.others == 0 => {
                    "the only eligible instance (on this node)".to_owned()
                }
                (Some(soft), true) => format!(
                    "within soft {soft} ms; P2C over peak-EWMA among {} eligible",
                    p.others + 1
                ),
                (Some(soft), false) => {
                    format!(
                        "none within soft {soft} ms: the best of {} eligible",
                        p.others + 1
                    )
                }
                (None, _) => format!("P2C over peak-EWMA among {} eligible", p.others + 1),
            };
            (Some(p.upstream.clone()), p.rtt_ms, why, p.others)
        }
        Err(e) => (None, None, e.message(), 0),
    };
    let why = if retry {
        format!("retry after a failed attempt; {why}")
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

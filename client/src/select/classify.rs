//! Eligibility: which candidates a call may use, and why not the others.
//!
//! Shared by `rank` and `pick` so the two can never disagree.

use mesh_proto::api::{Ineligible, RttSource};
use mesh_proto::catalog::Health;

use super::config::BalancerConfig;
use super::eject::Status;
use super::error::{Nearest, SelectError};
use super::{Candidate, Requirements};

/// What one candidate is for this call.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Verdict {
    /// May be called.
    Eligible {
        /// Within the soft requirement (true when there is none).
        within_soft: bool,
        /// On probation: a call to it is the probe.
        probe: bool,
    },
    /// May not be called, and why.
    Ineligible(Ineligible),
}

/// Classifies every candidate; `status` gives each one's ejection status.
///
/// The order of checks sets the reason shown: a down node or a critical
/// instance first, then the hard requirement, and ejection last, so an
/// instance coming back from ejection still has to meet the requirement.
pub(crate) fn classify(
    candidates: &[Candidate],
    req: Requirements,
    config: &BalancerConfig,
    status: impl Fn(&Candidate) -> Status,
) -> Vec<Verdict> {
    let mut statuses: Vec<Status> = candidates.iter().map(&status).collect();
    cap_ejections(&mut statuses, config.max_ejected(candidates.len()));
    candidates
        .iter()
        .zip(statuses)
        .map(|(c, st)| {
            if let Some(reason) = static_reason(c, req, config.allow_estimated_rtt) {
                return Verdict::Ineligible(reason);
            }
            match st {
                Status::Active => Verdict::Eligible {
                    within_soft: within_soft(c, req, config.allow_estimated_rtt),
                    probe: false,
                },
                Status::Probation { busy: false } => Verdict::Eligible {
                    within_soft: within_soft(c, req, config.allow_estimated_rtt),
                    probe: true,
                },
                // A probe is out; until it reports, nothing else goes there.
                Status::Probation { busy: true } => {
                    Verdict::Ineligible(Ineligible::Ejected { for_ms: 0 })
                }
                Status::Ejected { for_ms } => Verdict::Ineligible(Ineligible::Ejected { for_ms }),
            }
        })
        .collect()
}

/// The reason a candidate is out whatever the balancer's state.
fn static_reason(c: &Candidate, req: Requirements, allow_estimated: bool) -> Option<Ineligible> {
    if !c.node_alive {
        return Some(Ineligible::NodeDown);
    }
    if c.health == Health::Critical {
        return Some(Ineligible::Unhealthy);
    }
    let hard = req.hard_rtt_ms?;
    match c.trusted_rtt_ms(allow_estimated) {
        None => Some(Ineligible::RttUnknown),
        Some(rtt_ms) if rtt_ms > f64::from(hard) => Some(Ineligible::OverHardRtt {
            rtt_ms,
            hard_rtt_ms: hard,
        }),
        Some(_) => None,
    }
}

/// Whether a candidate lies within the soft requirement. An untrusted RTT
/// never does: "within soft" is shown to users as a fact.
fn within_soft(c: &Candidate, req: Requirements, allow_estimated: bool) -> bool {
    match req.soft_rtt_ms {
        None => true,
        Some(soft) => c
            .trusted_rtt_ms(allow_estimated)
            .is_some_and(|rtt| rtt <= f64::from(soft)),
    }
}

/// Keeps at most `allowed` candidates out of rotation. The cap is enforced
/// when ejecting, but the candidate set can shrink afterwards; then, as
/// Envoy's panic mode does, the instances closest to probation are let back.
fn cap_ejections(statuses: &mut [Status], allowed: usize) {
    let mut out: Vec<usize> = (0..statuses.len())
        .filter(|&i| statuses[i].is_out())
        .collect();
    if out.len() <= allowed {
        return;
    }
    let left = |st: Status| match st {
        Status::Ejected { for_ms } => for_ms,
        _ => 0,
    };
    out.sort_by_key(|&i| left(statuses[i]));
    let release = out.len() - allowed;
    for &i in &out[..release] {
        statuses[i] = Status::Active;
    }
}

/// The error for a pick that found nothing: the most actionable reason first.
pub(crate) fn no_pick_error(
    candidates: &[Candidate],
    verdicts: &[Verdict],
    req: Requirements,
) -> SelectError {
    if candidates.is_empty() {
        return SelectError::NoInstances {};
    }
    let tried = verdicts
        .iter()
        .filter(|v| matches!(v, Verdict::Eligible { .. }))
        .count();
    if tried > 0 {
        return SelectError::AllTried { tried };
    }
    let ejected = verdicts
        .iter()
        .filter_map(|v| match v {
            Verdict::Ineligible(Ineligible::Ejected { for_ms }) => Some(*for_ms),
            _ => None,
        })
        .min();
    if let Some(retry_in_ms) = ejected {
        return SelectError::AllEjected { retry_in_ms };
    }
    if let Some(hard_rtt_ms) = req.hard_rtt_ms {
        let missed_rtt = candidates.iter().zip(verdicts).filter(|(_, v)| {
            matches!(
                v,
                Verdict::Ineligible(Ineligible::OverHardRtt { .. } | Ineligible::RttUnknown)
            )
        });
        let mut any = false;
        let nearest = missed_rtt
            .inspect(|_| any = true)
            .min_by(|(a, _), (b, _)| {
                // Measured before estimated before unknown, then the smaller:
                // a measured figure is the one the user can act on.
                let key = |c: &Candidate| {
                    let rtt = c.effective_rtt_ms();
                    let measured = c.local || c.rtt_source == RttSource::Measured;
                    (rtt.is_none(), !measured, rtt.unwrap_or(f64::INFINITY))
                };
                let (ka, kb) = (key(a), key(b));
                (ka.0, ka.1).cmp(&(kb.0, kb.1)).then(ka.2.total_cmp(&kb.2))
            })
            .map(|(c, _)| Nearest {
                instance_id: c.instance_id.clone(),
                node: c.node.clone(),
                rtt_ms: c.effective_rtt_ms(),
                rtt_source: if c.local {
                    RttSource::Measured
                } else {
                    c.rtt_source
                },
            });
        if any {
            return SelectError::NoneWithinHardRtt {
                hard_rtt_ms,
                nearest,
            };
        }
    }
    SelectError::AllUnhealthy
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cand(id: &str, rtt: Option<f64>, source: RttSource) -> Candidate {
        Candidate {
            instance_id: id.into(),
            node: format!("node-{id}"),
            local: false,
            rtt_ms: rtt,
            rtt_source: source,
            health: Health::Passing,
            node_alive: true,
        }
    }

    fn hard(ms: u32) -> Requirements {
        Requirements {
            hard_rtt_ms: Some(ms),
            soft_rtt_ms: None,
        }
    }

    fn active(_: &Candidate) -> Status {
        Status::Active
    }

    fn run(cs: &[Candidate], req: Requirements) -> Vec<Verdict> {
        classify(cs, req, &BalancerConfig::default(), active)
    }

    const OK: Verdict = Verdict::Eligible {
        within_soft: true,
        probe: false,
    };

    #[test]
    fn hard_requirement_drops_slow_unknown_and_estimated_nodes() {
        let cs = [
            cand("a", Some(10.0), RttSource::Measured),
            cand("b", Some(20.0), RttSource::Measured),
            cand("c", Some(20.5), RttSource::Measured),
            cand("d", None, RttSource::Unknown),
            cand("e", Some(1.0), RttSource::Estimated),
        ];
        let v = run(&cs, hard(20));
        assert_eq!(v[0], OK);
        assert_eq!(v[1], OK, "exactly at the limit is within it");
        assert_eq!(
            v[2],
            Verdict::Ineligible(Ineligible::OverHardRtt {
                rtt_ms: 20.5,
                hard_rtt_ms: 20
            })
        );
        assert_eq!(v[3], Verdict::Ineligible(Ineligible::RttUnknown));
        assert_eq!(v[4], Verdict::Ineligible(Ineligible::RttUnknown));
    }

    #[test]
    fn estimates_count_when_allowed() {
        let cs = [cand("e", Some(1.0), RttSource::Estimated)];
        let config = BalancerConfig {
            allow_estimated_rtt: true,
            ..BalancerConfig::default()
        };
        assert_eq!(classify(&cs, hard(20), &config, active), vec![OK]);
    }

    #[test]
    fn local_instances_always_meet_the_hard_requirement() {
        let mut c = cand("l", None, RttSource::Unknown);
        c.local = true;
        assert_eq!(run(&[c], hard(0)), vec![OK]);
    }

    #[test]
    fn without_a_hard_requirement_unknown_rtt_is_fine() {
        let cs = [cand("d", None, RttSource::Unknown)];
        assert_eq!(run(&cs, Requirements::default()), vec![OK]);
    }

    #[test]
    fn critical_and_down_are_out_whatever_the_rtt() {
        let mut crit = cand("c", Some(1.0), RttSource::Measured);
        crit.health = Health::Critical;
        let mut down = cand("d", Some(1.0), RttSource::Measured);
        down.node_alive = false;
        down.local = true;
        let mut warn = cand("w", Some(1.0), RttSource::Measured);
        warn.health = Health::Warning;
        let v = run(&[crit, down, warn], hard(5));
        assert_eq!(v[0], Verdict::Ineligible(Ineligible::Unhealthy));
        assert_eq!(v[1], Verdict::Ineligible(Ineligible::NodeDown));
        assert_eq!(v[2], OK, "warning is still routable");
    }

    #[test]
    fn within_soft_needs_a_trusted_rtt_at_most_soft() {
        let req = Requirements {
            hard_rtt_ms: None,
            soft_rtt_ms: Some(10),
        };
        let cs = [
            cand("a", Some(10.0), RttSource::Measured),
            cand("b", Some(11.0), RttSource::Measured),
            cand("c", Some(2.0), RttSource::Estimated),
        ];
        let soft: Vec<bool> = run(&cs, req)
            .iter()
            .map(|v| {
                matches!(
                    v,
                    Verdict::Eligible {
                        within_soft: true,
                        ..
                    }
                )
            })
            .collect();
        assert_eq!(soft, vec![true, false, false]);
    }

    #[test]
    fn ejection_never_overrides_the_rtt_requirement() {
        let cs = [cand("far", Some(50.0), RttSource::Measured)];
        let probation = |_: &Candidate| Status::Probation { busy: false };
        let v = classify(&cs, hard(20), &BalancerConfig::default(), probation);
        assert!(matches!(
            v[0],
            Verdict::Ineligible(Ineligible::OverHardRtt { .. })
        ));
    }

    #[test]
    fn probation_is_eligible_as_a_probe_until_one_is_out() {
        let cs = [
            cand("a", Some(1.0), RttSource::Measured),
            cand("b", Some(1.0), RttSource::Measured),
            cand("c", Some(1.0), RttSource::Measured),
            cand("d", Some(1.0), RttSource::Measured),
        ];
        let st = |c: &Candidate| match c.instance_id.as_str() {
            "a" => Status::Probation { busy: false },
            "b" => Status::Probation { busy: true },
            _ => Status::Active,
        };
        let v = classify(&cs, hard(5), &BalancerConfig::default(), st);
        assert_eq!(
            v[0],
            Verdict::Eligible {
                within_soft: true,
                probe: true
            }
        );
        assert_eq!(v[1], Verdict::Ineligible(Ineligible::Ejected { for_ms: 0 }));
    }

    #[test]
    fn at_most_half_stay_ejected_when_the_set_shrinks() {
        let cs = [
            cand("a", Some(1.0), RttSource::Measured),
            cand("b", Some(1.0), RttSource::Measured),
            cand("c", Some(1.0), RttSource::Measured),
        ];
        let st = |c: &Candidate| match c.instance_id.as_str() {
            "a" => Status::Ejected { for_ms: 5_000 },
            "b" => Status::Ejected { for_ms: 1_000 },
            _ => Status::Ejected { for_ms: 9_000 },
        };
        let v = classify(&cs, Requirements::default(), &BalancerConfig::default(), st);
        // One of three may stay out: the one with the longest time left.
        assert_eq!(v[0], OK);
        assert_eq!(v[1], OK);
        assert_eq!(
            v[2],
            Verdict::Ineligible(Ineligible::Ejected { for_ms: 9_000 })
        );
    }

    #[test]
    fn errors_name_the_most_actionable_reason() {
        assert_eq!(
            no_pick_error(&[], &[], Requirements::default()),
            SelectError::NoInstances {}
        );
        let cs = [
            cand("far", Some(41.2), RttSource::Measured),
            cand("unknown", None, RttSource::Unknown),
            cand("farther", Some(80.0), RttSource::Measured),
        ];
        let v = run(&cs, hard(20));
        match no_pick_error(&cs, &v, hard(20)) {
            SelectError::NoneWithinHardRtt {
                hard_rtt_ms: 20,
                nearest: Some(n),
            } => {
                assert_eq!(n.instance_id, "far");
                assert_eq!(n.rtt_ms, Some(41.2));
            }
            other => panic!("unexpected {other:?}"),
        }
        let mut crit = cand("c", Some(1.0), RttSource::Measured);
        crit.health = Health::Critical;
        let cs = [crit, cand("far", Some(50.0), RttSource::Measured)];
        let v = run(&cs, hard(20));
        let err = no_pick_error(&cs, &v, hard(20));
        assert!(
            matches!(err, SelectError::NoneWithinHardRtt { nearest: Some(ref n), .. } if n.instance_id == "far")
        );
        let v = run(&cs[..1], hard(20));
        assert_eq!(
            no_pick_error(&cs[..1], &v, hard(20)),
            SelectError::AllUnhealthy
        );
        let v = vec![
            Verdict::Ineligible(Ineligible::Ejected { for_ms: 300 }),
            Verdict::Ineligible(Ineligible::OverHardRtt {
                rtt_ms: 50.0,
                hard_rtt_ms: 20,
            }),
        ];
        assert_eq!(
            no_pick_error(&cs, &v, hard(20)),
            SelectError::AllEjected { retry_in_ms: 300 }
        );
        assert_eq!(
            no_pick_error(&cs[..1], &[OK], hard(20)),
            SelectError::AllTried { tried: 1 }
        );
    }

    #[test]
    fn the_instances_closest_to_probation_are_let_back_first() {
        // Longest time left first, so the order given cannot pick for it.
        let cs = [
            cand("a", Some(1.0), RttSource::Measured),
            cand("b", Some(1.0), RttSource::Measured),
            cand("c", Some(1.0), RttSource::Measured),
        ];
        let st = |c: &Candidate| match c.instance_id.as_str() {
            "a" => Status::Ejected { for_ms: 9_000 },
            "b" => Status::Ejected { for_ms: 5_000 },
            _ => Status::Ejected { for_ms: 1_000 },
        };
        let v = classify(&cs, Requirements::default(), &BalancerConfig::default(), st);
        assert_eq!(
            v,
            vec![
                Verdict::Ineligible(Ineligible::Ejected { for_ms: 9_000 }),
                OK,
                OK
            ]
        );
    }
}

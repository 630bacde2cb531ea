//! Rollouts and cycle reports as the `Admin` API answers them.

use ouroboros_proto::v1 as pb;

use crate::detect::Decision;
use crate::fleet::store::RolloutSummary;
use crate::plan::rollout::{Rollout, RolloutState, TargetState};

/// Why a rollout is in its state, as the admin API shows it (empty: nothing to say).
fn state_reason(state: &RolloutState) -> String {
    match state {
        RolloutState::Paused { reason }
        | RolloutState::RollingBack { reason }
        | RolloutState::RolledBack { reason }
        | RolloutState::Cancelled { reason } => reason.clone(),
        RolloutState::Completed { failed } if *failed > 0 => format!("{failed} target(s) failed"),
        _ => String::new(),
    }
}

/// A rollout's summary as the admin API shows it: no targets, their counts.
pub(super) fn rollout_summary_pb(r: &RolloutSummary) -> pb::Rollout {
    pb::Rollout {
        id: r.head.id.clone(),
        state: r.head.state.name().to_owned(),
        reason: state_reason(&r.head.state),
        created_unix_ms: r.head.created_ms,
        updated_unix_ms: r.head.updated_ms,
        targets: Vec::new(),
        targets_total: u32::try_from(r.targets_total).unwrap_or(u32::MAX),
        targets_updated: u32::try_from(r.targets_updated).unwrap_or(u32::MAX),
    }
}

/// A rollout as the admin API shows it.
pub fn rollout_pb(r: &Rollout) -> pb::Rollout {
    pb::Rollout {
        targets: r
            .targets
            .iter()
            .map(|t| {
                let reason = match &t.state {
                    TargetState::Failed { reason, outcome } => format!("{outcome}: {reason}"),
                    TargetState::Skipped { reason }
                    | TargetState::RevertFailed { reason }
                    | TargetState::Cancelled { reason }
                    | TargetState::Vetoed { reason } => reason.clone(),
                    _ => String::new(),
                };
                let op_id = match &t.state {
                    TargetState::Dispatched { op_id, .. }
                    | TargetState::Reverting { op_id, .. } => op_id.clone(),
                    _ => t.op_id.clone(),
                };
                pb::RolloutTarget {
                    host: t.host.clone(),
                    container: t.container.clone(),
                    image: t.image.clone(),
                    old_digest: t.old_digest.clone(),
                    new_digest: t.new_digest.clone(),
                    state: t.state.name().to_owned(),
                    reason,
                    op_id,
                    started_unix_ms: t.started_ms,
                    finished_unix_ms: t.finished_ms,
                    transitions: t
                        .transitions
                        .iter()
                        .map(|(at, s)| format!("{at} {s}"))
                        .collect(),
                }
            })
            .collect(),
        ..rollout_summary_pb(&r.into())
    }
}

/// A cycle's report as the admin API answers it.
pub fn check_response(report: crate::run::cycle::Report) -> pb::CheckResponse {
    let containers = report
        .checked
        .into_iter()
        .map(|c| {
            let d = c.detection;
            let (decision, reason, target) = match d.decision {
                Decision::Current => ("current", String::new(), String::new()),
                Decision::Update { target, .. } => ("update", String::new(), target),
                Decision::Skip { reason } => ("skip", reason, String::new()),
            };
            pb::ContainerCheck {
                host: d.host,
                container: d.container,
                image: d.image,
                decision: decision.to_owned(),
                reason,
                target,
                result: c.result.as_ref().map(Into::into),
            }
        })
        .collect();
    pb::CheckResponse {
        containers,
        pruned: report.pruned.iter().map(Into::into).collect(),
        rollout: report.rollout.as_ref().map(rollout_pb),
    }
}

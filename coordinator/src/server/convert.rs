//! The one place where the agents' answers cross from the wire (`ouroboros.v1`) into the
//! coordinator's own types ([`crate::plan::outcome`]), and back for the admin API.

use ouroboros_proto::v1 as pb;
use pb::recreate_result::Status as Wire;

use crate::plan::outcome::{DependantAction, DependantResult, Pruned, Status, UpdateResult};

impl From<Wire> for Status {
    fn from(s: Wire) -> Self {
        match s {
            Wire::Updated => Self::Updated,
            Wire::AlreadyCurrent => Self::AlreadyCurrent,
            Wire::Refused => Self::Refused,
            Wire::RolledBack => Self::RolledBack,
            Wire::RollbackFailed => Self::RollbackFailed,
            Wire::Interrupted => Self::Interrupted,
            Wire::NotStarted => Self::NotStarted,
            Wire::Cancelled => Self::Cancelled,
            Wire::Vetoed => Self::Vetoed,
            Wire::Gone => Self::Gone,
            Wire::Error | Wire::Unspecified => Self::Error,
        }
    }
}

impl From<Status> for Wire {
    fn from(s: Status) -> Self {
        match s {
            Status::Updated => Self::Updated,
            Status::AlreadyCurrent => Self::AlreadyCurrent,
            Status::Refused => Self::Refused,
            Status::RolledBack => Self::RolledBack,
            Status::RollbackFailed => Self::RollbackFailed,
            Status::Interrupted => Self::Interrupted,
            Status::Error => Self::Error,
            Status::NotStarted => Self::NotStarted,
            Status::Cancelled => Self::Cancelled,
            Status::Vetoed => Self::Vetoed,
            Status::Gone => Self::Gone,
        }
    }
}

fn action(name: &str) -> DependantAction {
    match name {
        "updated" => DependantAction::Updated,
        "recreated" => DependantAction::Recreated,
        "restarted" => DependantAction::Restarted,
        "restored" => DependantAction::Restored,
        "untouched" => DependantAction::Untouched,
        // An agent that says something else is not believed to have brought it back.
        _ => DependantAction::Failed,
    }
}

impl From<pb::RecreateResult> for UpdateResult {
    fn from(r: pb::RecreateResult) -> Self {
        let mut reason = r.reason.clone();
        if r.status() == Wire::Unspecified && reason.is_empty() {
            reason = "the agent answered without a status".into();
        }
        Self {
            status: r.status().into(),
            new_id: r.new_id,
            image_id: r.image_id,
            step: r.step,
            reason,
            cleanup: r.cleanup,
            dependants: r
                .dependants
                .into_iter()
                .map(|d| DependantResult {
                    action: action(&d.action),
                    container: d.container,
                    kind: d.kind,
                    new_id: d.new_id,
                    image_id: d.image_id,
                    reason: d.reason,
                })
                .collect(),
        }
    }
}

impl From<&UpdateResult> for pb::RecreateResult {
    fn from(r: &UpdateResult) -> Self {
        let mut out = Self {
            new_id: r.new_id.clone(),
            image_id: r.image_id.clone(),
            step: r.step.clone(),
            reason: r.reason.clone(),
            cleanup: r.cleanup.clone(),
            dependants: r
                .dependants
                .iter()
                .map(|d| pb::DependantResult {
                    container: d.container.clone(),
                    kind: d.kind.clone(),
                    action: d.action.name().to_owned(),
                    new_id: d.new_id.clone(),
                    image_id: d.image_id.clone(),
                    reason: d.reason.clone(),
                })
                .collect(),
            ..Default::default()
        };
        out.set_status(r.status.into());
        out
    }
}

impl From<&Pruned> for pb::VolumePrune {
    fn from(p: &Pruned) -> Self {
        Self {
            host: p.host.clone(),
            removed: p.removed.clone(),
            error: p.error.clone(),
        }
    }
}

/// The name the CLI shows for an answer on the wire (the admin client's side).
pub fn status_name(result: &pb::RecreateResult) -> &'static str {
    Status::from(result.status()).name()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_cross_the_wire_both_ways() {
        let domain = UpdateResult {
            status: Status::RolledBack,
            new_id: "n".into(),
            image_id: "sha256:i".into(),
            step: "health gate".into(),
            reason: "unhealthy".into(),
            cleanup: String::new(),
            dependants: vec![DependantResult {
                container: "side".into(),
                kind: "network".into(),
                action: DependantAction::Restored,
                new_id: String::new(),
                image_id: String::new(),
                reason: "health gate: unhealthy".into(),
            }],
        };
        let wire = pb::RecreateResult::from(&domain);
        assert_eq!(status_name(&wire), "rolled-back");
        assert_eq!(UpdateResult::from(wire), domain);
        for s in [
            Status::Updated,
            Status::AlreadyCurrent,
            Status::Refused,
            Status::RolledBack,
            Status::RollbackFailed,
            Status::Interrupted,
            Status::Error,
            Status::NotStarted,
            Status::Cancelled,
            Status::Vetoed,
            Status::Gone,
        ] {
            assert_eq!(Status::from(Wire::from(s)), s);
        }
    }

    #[test]
    fn what_the_agent_leaves_out_is_not_taken_for_success() {
        let silent = UpdateResult::from(pb::RecreateResult::default());
        assert_eq!(silent.status, Status::Error);
        assert!(silent.reason.contains("without a status"));
        let odd = pb::RecreateResult {
            dependants: vec![pb::DependantResult {
                action: "teleported".into(),
                ..Default::default()
            }],
            ..Default::default()
        };
        assert_eq!(
            UpdateResult::from(odd).dependants[0].action,
            DependantAction::Failed
        );
    }
}

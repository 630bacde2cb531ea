//! Recreating a container on a new image without losing a setting (DESIGN.md section 5):
//! [`spec`] derives the replacement's create request, [`executor`] runs the safe sequence
//! (with rollback and crash recovery), [`journal`] records each step before it is taken.

pub mod executor;
pub mod journal;
pub mod spec;

use ouroboros_proto::v1 as pb;
use pb::recreate_result::Status;

use journal::Outcome;

impl From<&Outcome> for pb::RecreateResult {
    fn from(outcome: &Outcome) -> Self {
        let mut r = pb::RecreateResult::default();
        match outcome {
            Outcome::Updated { new_id, image_id } => {
                r.set_status(Status::Updated);
                r.new_id.clone_from(new_id);
                r.image_id.clone_from(image_id);
            }
            Outcome::AlreadyCurrent => r.set_status(Status::AlreadyCurrent),
            Outcome::Refused { reason } => {
                r.set_status(Status::Refused);
                r.reason.clone_from(reason);
            }
            Outcome::RolledBack { step, reason } => {
                r.set_status(Status::RolledBack);
                r.step.clone_from(step);
                r.reason.clone_from(reason);
            }
            Outcome::RollbackFailed { step, reason } => {
                r.set_status(Status::RollbackFailed);
                r.step.clone_from(step);
                r.reason.clone_from(reason);
            }
        }
        r
    }
}

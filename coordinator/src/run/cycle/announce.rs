//! What a cycle's rollout did, told to the notifiers: one message for the updates it made, one
//! for those that failed or went back.

use std::collections::BTreeMap;

use crate::plan::outcome::UpdateResult;
use crate::plan::rollout::{Rollout, Target, TargetState};

use super::Cycle;

impl Cycle {
    /// One message for the updates a rollout made, one for those that failed.
    pub(super) fn announce_outcome(&self, done: &Rollout, answers: &BTreeMap<usize, UpdateResult>) {
        let image = |t: &Target, digest: &str| {
            format!("{}@{}", t.image, digest.get(..19).unwrap_or(digest))
        };
        let updated: Vec<String> = done
            .targets
            .iter()
            .filter(|t| {
                matches!(
                    t.state,
                    TargetState::Updated {
                        already_current: false,
                        ..
                    }
                )
            })
            .map(|t| {
                format!(
                    "{}/{}: {} -> {}",
                    t.host,
                    t.container,
                    image(t, &t.old_digest),
                    image(t, &t.new_digest)
                )
            })
            .collect();
        if !updated.is_empty() {
            self.notifiers().send(crate::notify::Message {
                event: "updates-done",
                kind: crate::notify::Kind::Success,
                title: format!("Ouroboros: {} container(s) updated", updated.len()),
                body: updated.join("\n"),
            });
        }
        let failed: Vec<String> = done
            .targets
            .iter()
            .enumerate()
            .filter_map(|(i, t)| match &t.state {
                TargetState::Failed { reason, outcome } => Some(format!(
                    "{}/{}: {} ({outcome}: {reason})",
                    t.host,
                    t.container,
                    image(t, &t.new_digest)
                )),
                TargetState::Reverted { .. } => Some(format!(
                    "{}/{}: sent back to {} ({})",
                    t.host,
                    t.container,
                    image(t, &t.old_digest),
                    answers.get(&i).map_or(String::new(), |r| r.reason.clone())
                )),
                _ => None,
            })
            .collect();
        if !failed.is_empty() {
            self.notifiers().send(crate::notify::Message {
                event: "update-failed",
                kind: crate::notify::Kind::Failure,
                title: format!(
                    "Ouroboros: {} update(s) failed or rolled back (rollout {} {})",
                    failed.len(),
                    done.id,
                    done.state.name()
                ),
                body: failed.join("\n"),
            });
        }
    }
}

//! An operator's cancel, taken by the run in progress or applied to the stored rollout.

use crate::plan::rollout::{Cancel, Rollout, TargetState};

use super::Runner;

/// Why a cancel was not taken; the admin API answers each with its own status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CancelError {
    #[error("no rollout {0}")]
    NotFound(String),
    #[error("rollout {id} already ended ({state})")]
    AlreadyEnded { id: String, state: &'static str },
    /// The store could not be read or written, or the run did not answer: try again.
    #[error("{0}")]
    Unavailable(String),
}

/// Where a cancel went.
#[derive(Debug, Clone, PartialEq)]
pub enum CancelTaken {
    /// The rollout is being run: the runner applies it at once.
    ByRunner,
    /// Nobody runs it: it was applied to the stored rollout (under the runner's lock, so
    /// that no run started meanwhile); a run must finish what is left.
    Stored(Box<Rollout>),
}

impl Runner {
    /// Cancels rollout `id`: handed to the run in progress if there is one; otherwise the
    /// stored rollout gets it (written before this returns, so that a run starting later
    /// sees it). Errors: no such rollout, or it already ended.
    pub fn cancel(&self, id: &str, cancel: Cancel) -> Result<CancelTaken, CancelError> {
        let mut active = self.active();
        if active.running.contains(id) {
            active.cancels.insert(id.to_owned(), cancel);
            return Ok(CancelTaken::ByRunner);
        }
        let mut rollout = self
            .fleet
            .rollout(id)
            .map_err(|e| CancelError::Unavailable(e.to_string()))?
            .ok_or_else(|| CancelError::NotFound(id.to_owned()))?;
        if rollout.state.is_ended() {
            return Err(CancelError::AlreadyEnded {
                id: id.to_owned(),
                state: rollout.state.name(),
            });
        }
        rollout.cancel = Some(cancel.clone());
        rollout.updated_ms = cancel.at_ms;
        // Targets not started are cancelled now; a run finishes the rest (work in flight,
        // ways back).
        for i in 0..rollout.targets.len() {
            if rollout.targets[i].state == TargetState::Pending {
                rollout.set(
                    i,
                    TargetState::Cancelled {
                        reason: cancel.reason.clone(),
                    },
                    cancel.at_ms,
                );
            }
        }
        let history = rollout
            .targets
            .iter()
            .filter(|t| matches!(t.state, TargetState::Cancelled { .. }))
            .map(|t| t.history(&rollout.id))
            .collect();
        for i in 0..rollout.targets.len() {
            if matches!(rollout.targets[i].state, TargetState::Cancelled { .. }) {
                self.remember_outcome(&rollout, i, cancel.at_ms);
            }
        }
        if !self.fleet.save_rollout(&rollout, history) {
            return Err(CancelError::Unavailable(
                "cannot store the rollout; try again".into(),
            ));
        }
        Ok(CancelTaken::Stored(Box::new(rollout)))
    }
}

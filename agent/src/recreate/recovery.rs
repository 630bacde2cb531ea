//! Recovery at start: every operation a crash (or a SIGKILL) interrupted is finished or
//! reverted before the agent takes new work, from what its journal says and what the engine
//! shows.
//!
//! - Nothing touched yet: nothing to do.
//! - Before the replacement passed its health gate: reverted. Old containers go back under
//!   their names; what ran is started again, after any stop still under way in the engine
//!   ended; and only containers seen running (and not unhealthy) for the settle time count as
//!   restored.
//! - Past the gate: finished. The dependants still to follow the new container are recreated,
//!   the old containers removed, the stopped dependants started.
//! - Old containers whose removal failed before are removed now.
//!
//! Whatever cannot be brought back running is logged as an error and becomes an [`Alert`] for
//! the coordinator, as does a journal file that cannot be read (moved to quarantine).
//!
//! Several operations may have been in flight at once (on distinct containers): each is
//! recovered on its own, one after the other. An operation still running in this agent (a
//! recovery tried again before a command while others run) is left to itself.

use tracing::{error, info, warn};

use super::Alert;
use super::executor::{RecreateError, Recreator};
use super::journal::{DependantState, Outcome, RETENTION, Step};
use super::ops::StepFailure;

/// What recovery did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recovered {
    /// Each interrupted operation with its outcome.
    pub operations: Vec<(String, Outcome)>,
    /// What needs an operator.
    pub alerts: Vec<Alert>,
}

fn step_name(step: &Step) -> &'static str {
    match step {
        Step::Planned => "stopping the dependants",
        Step::Stopping => "stop",
        Step::RenamingAside => "rename",
        Step::Creating => "create",
        Step::Created { .. } => "start and health gate",
        Step::Following { .. } => "recreating the dependants",
        Step::RemovingOld { .. } => "removing the old containers",
        Step::RollingBack { .. } => "rollback",
        Step::Done { .. } => "done",
    }
}

impl Recreator {
    /// Finishes or reverts every operation a crash interrupted (call before taking new work),
    /// removes leftovers of earlier operations and prunes the journal.
    pub async fn recover(&self) -> Result<Recovered, RecreateError> {
        let mut recovered = Recovered::default();
        let unfinished = self.journal.unfinished()?;
        for q in self.journal.take_quarantined() {
            error!(path = %q.path.display(), reason = %q.reason, "Unreadable journal entry moved to quarantine; the operation it recorded is not recovered. Check the containers it names.");
            recovered.alerts.push(Alert {
                container: String::new(),
                op_id: String::new(),
                message: format!(
                    "unreadable journal entry {} moved to quarantine ({}); the operation it recorded was not recovered",
                    q.path.display(),
                    q.reason
                ),
            });
        }
        for entry in unfinished {
            let op_id = entry.op_id.clone();
            let name = entry.name.clone();
            // Its containers are the recovery's alone meanwhile; an operation in flight (or
            // another recovery of it) holds them, and is left alone.
            let containers = [&entry.name, &entry.old_id]
                .into_iter()
                .chain(entry.dependants.iter().flat_map(|d| [&d.name, &d.old_id]))
                .cloned()
                .collect();
            let Some(_claim) = self.claims.try_claim(&op_id, containers, None) else {
                continue;
            };
            // Read again now that it is claimed: the operation may have finished (and let go
            // of its containers) since the list was read.
            let entry = match self.journal.get(&op_id) {
                Ok(Some(entry)) if !entry.is_done() => entry,
                _ => continue,
            };
            match self.recover_one(entry).await {
                Ok((outcome, trouble)) => {
                    if trouble.is_empty() {
                        info!(op = %op_id, container = %name, ?outcome, "Interrupted operation recovered.");
                    } else {
                        error!(op = %op_id, container = %name, problems = %trouble.join("; "), "Recovery could not bring every container back running; it needs an operator.");
                        recovered.alerts.push(Alert {
                            container: name.clone(),
                            op_id: op_id.clone(),
                            message: format!(
                                "recovery of update {op_id} of {name} left containers that do not run: {}",
                                trouble.join("; ")
                            ),
                        });
                    }
                    recovered.operations.push((op_id, outcome));
                }
                // A crash point of a test stops recovery there, like a crash would.
                Err(RecreateError::Crashed(point)) => return Err(RecreateError::Crashed(point)),
                // The others go on; this one is tried again before the next command.
                Err(e) => {
                    error!(op = %op_id, container = %name, error = %e, "Cannot recover an interrupted operation; nothing new starts on this host until it is.");
                    recovered.alerts.push(Alert {
                        container: name,
                        op_id,
                        message: format!("cannot recover the interrupted update: {e}"),
                    });
                }
            }
        }
        for mut entry in self.journal.with_leftovers().unwrap_or_default() {
            let mut still = Vec::new();
            for id in &entry.leftovers {
                match self.remove(id).await {
                    Ok(()) => {
                        info!(op = %entry.op_id, old = %id, "Leftover old container removed.")
                    }
                    Err(e) => {
                        warn!(op = %entry.op_id, old = %id, error = %e, "Cannot remove a leftover old container; trying again at the next start.");
                        still.push(id.clone());
                    }
                }
            }
            if still != entry.leftovers {
                entry.leftovers = still;
                if let Err(e) = self.journal.record(&entry) {
                    warn!(op = %entry.op_id, error = %e, "Cannot record the leftovers removed.");
                }
            }
        }
        let _ = self.journal.prune(std::time::SystemTime::now(), RETENTION);
        Ok(recovered)
    }

    /// Finishes or reverts one interrupted operation. Returns its outcome and what does not
    /// run afterwards.
    async fn recover_one(
        &self,
        mut entry: super::journal::Entry,
    ) -> Result<(Outcome, Vec<String>), RecreateError> {
        let touched = entry
            .dependants
            .iter()
            .any(|d| d.state != DependantState::Untouched);
        let outcome = match entry.step.clone() {
            Step::Done { outcome } => outcome,
            Step::Planned if !touched => {
                let outcome = Outcome::Refused {
                    reason: "the agent restarted before anything was changed".into(),
                };
                entry.step = Step::Done {
                    outcome: outcome.clone(),
                };
                self.journal.record(&entry)?;
                outcome
            }
            Step::Following { .. } | Step::RemovingOld { .. } => {
                info!(op = %entry.op_id, container = %entry.name, "The replacement had passed its health gate; finishing the operation.");
                let deadlines = self.deadlines;
                self.finish(&mut entry, &deadlines, &|_| {}).await?
            }
            step => {
                let interrupted = step_name(&step);
                let (new_id, stop_under_way) = match &step {
                    Step::Created { new_id } => (Some(new_id.clone()), false),
                    Step::RollingBack {
                        new_id,
                        stop_under_way,
                        ..
                    } => (new_id.clone(), *stop_under_way),
                    Step::Stopping => (None, true),
                    _ => (None, false),
                };
                let failure = StepFailure::new(
                    interrupted,
                    format!("the agent restarted during {interrupted}"),
                );
                entry.step = Step::RollingBack {
                    new_id: new_id.clone(),
                    reason: failure.reason.clone(),
                    stop_under_way,
                };
                self.journal.record(&entry)?;
                let outcome = self
                    .revert(&mut entry, new_id.as_deref(), failure, stop_under_way)
                    .await;
                entry.step = Step::Done {
                    outcome: outcome.clone(),
                };
                self.journal.record(&entry)?;
                outcome
            }
        };
        let mut trouble: Vec<String> = entry
            .dependants
            .iter()
            .filter_map(|d| match &d.state {
                DependantState::Failed { reason } => Some(format!("{}: {reason}", d.name)),
                _ => None,
            })
            .collect();
        if let Outcome::RollbackFailed { reason, .. } = &outcome {
            trouble.insert(0, reason.clone());
        }
        Ok((outcome, trouble))
    }
}

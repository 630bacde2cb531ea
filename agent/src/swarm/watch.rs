//! Watching a service update to its end, as a pure decision: what the engine's `UpdateStatus`
//! (and the service's tasks) say at one look, and what the agent does next.
//!
//! The engine resets `UpdateStatus` when an update is accepted, and the orchestrator sets a new
//! one (with a new `StartedAt`) once it starts replacing tasks. A status whose `StartedAt` is
//! the one seen *before* the update was sent belongs to an earlier update and is never
//! trusted (see [`Look::fresh`]); a service with no task to replace (zero replicas) never gets
//! a status at all, so "no fresh status, and every running task on the target" counts as done.

use super::super::recreate::journal::Outcome;

/// `UpdateStatus.State`, as the engine reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpdateState {
    Updating,
    Paused,
    Completed,
    RollbackStarted,
    RollbackPaused,
    RollbackCompleted,
}

impl UpdateState {
    /// Parses the engine's state name; `None` for an empty or unknown one.
    pub fn parse(state: &str) -> Option<Self> {
        Some(match state {
            "updating" => Self::Updating,
            "paused" => Self::Paused,
            "completed" => Self::Completed,
            "rollback_started" => Self::RollbackStarted,
            "rollback_paused" => Self::RollbackPaused,
            "rollback_completed" => Self::RollbackCompleted,
            _ => return None,
        })
    }
}

/// Where the watch is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Phase {
    /// The update was sent; waiting for its end.
    Updating,
    /// The service is being rolled back (by the agent, or by its own failure action), because
    /// of `why`.
    RollingBack { why: String },
}

/// One look at the service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Look {
    /// `UpdateStatus.State`, when there is one.
    pub state: Option<UpdateState>,
    /// `UpdateStatus.Message`.
    pub message: String,
    /// Whether the status belongs to this update (its `StartedAt` differs from the one seen
    /// before the update was sent); an earlier update's status is ignored.
    pub fresh: bool,
    /// Every task the service wants running has the target image in its spec (vacuously true
    /// without tasks).
    pub tasks_on_target: bool,
    /// The phase's deadline has passed.
    pub overdue: bool,
}

/// What to do after a look.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    /// Look again later.
    Wait,
    /// The update ended; answer this.
    Done(Outcome),
    /// The agent rolls the service back (`rollback=previous`), because of the reason given.
    RollBack(String),
    /// The service rolls itself back (its failure action): follow it, because of the reason.
    Follow(String),
}

/// The step name reported with a rollback.
pub const STEP: &str = "watch";

/// Decides what follows `look` in `phase`. `done`: the outcome of a completed update.
pub fn next(phase: &Phase, look: &Look, done: impl FnOnce() -> Outcome) -> Next {
    let state = look.state.filter(|_| look.fresh);
    match phase {
        Phase::Updating => match state {
            Some(UpdateState::Completed) => Next::Done(done()),
            None if look.tasks_on_target => Next::Done(done()),
            Some(UpdateState::Paused) => {
                Next::RollBack(format!("the update paused: {}", look.message))
            }
            Some(UpdateState::RollbackStarted) => Next::Follow(format!(
                "the service's failure action rolls it back: {}",
                look.message
            )),
            Some(UpdateState::RollbackCompleted) => Next::Done(Outcome::RolledBack {
                step: STEP.to_owned(),
                reason: format!(
                    "the service's failure action rolled it back: {}",
                    look.message
                ),
            }),
            Some(UpdateState::RollbackPaused) => Next::Done(Outcome::RollbackFailed {
                step: STEP.to_owned(),
                reason: format!(
                    "the service's failure action started a rollback, which paused: {}",
                    look.message
                ),
            }),
            Some(UpdateState::Updating) | None if look.overdue => {
                Next::RollBack("the update did not end within its deadline".to_owned())
            }
            Some(UpdateState::Updating) | None => Next::Wait,
        },
        Phase::RollingBack { why } => match state {
            Some(UpdateState::RollbackCompleted) => Next::Done(Outcome::RolledBack {
                step: STEP.to_owned(),
                reason: format!("{why}; rolled back: {}", look.message),
            }),
            Some(UpdateState::RollbackPaused) => Next::Done(Outcome::RollbackFailed {
                step: STEP.to_owned(),
                reason: format!("{why}; the rollback paused: {}", look.message),
            }),
            _ if look.overdue => Next::Done(Outcome::RollbackFailed {
                step: STEP.to_owned(),
                reason: format!("{why}; the rollback did not end within its deadline"),
            }),
            _ => Next::Wait,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn look(state: Option<UpdateState>, fresh: bool) -> Look {
        Look {
            state,
            message: "msg".into(),
            fresh,
            tasks_on_target: false,
            overdue: false,
        }
    }

    fn updated() -> Outcome {
        Outcome::Updated {
            new_id: "svc".into(),
            image_id: "sha256:b".into(),
        }
    }

    #[test]
    fn states_parse_by_their_engine_names() {
        assert_eq!(
            UpdateState::parse("rollback_completed"),
            Some(UpdateState::RollbackCompleted)
        );
        assert_eq!(
            UpdateState::parse("completed"),
            Some(UpdateState::Completed)
        );
        assert_eq!(UpdateState::parse(""), None);
    }

    #[test]
    fn a_completed_status_of_an_earlier_update_is_not_trusted() {
        let stale = look(Some(UpdateState::Completed), false);
        assert_eq!(next(&Phase::Updating, &stale, updated), Next::Wait);
        let fresh = look(Some(UpdateState::Completed), true);
        assert_eq!(
            next(&Phase::Updating, &fresh, updated),
            Next::Done(updated())
        );
    }

    #[test]
    fn without_a_status_the_tasks_decide() {
        // Zero replicas: no task to replace, the orchestrator never sets a status.
        let nothing = Look {
            tasks_on_target: true,
            ..look(None, false)
        };
        assert_eq!(
            next(&Phase::Updating, &nothing, updated),
            Next::Done(updated())
        );
        // Not started yet: old tasks still run.
        assert_eq!(
            next(&Phase::Updating, &look(None, false), updated),
            Next::Wait
        );
        // A stale status with the tasks on the target counts as none.
        let stale = Look {
            tasks_on_target: true,
            ..look(Some(UpdateState::Paused), false)
        };
        assert_eq!(
            next(&Phase::Updating, &stale, updated),
            Next::Done(updated())
        );
    }

    #[test]
    fn a_pause_or_the_deadline_makes_the_agent_roll_back() {
        let paused = look(Some(UpdateState::Paused), true);
        assert_eq!(
            next(&Phase::Updating, &paused, updated),
            Next::RollBack("the update paused: msg".into())
        );
        let late = Look {
            overdue: true,
            ..look(Some(UpdateState::Updating), true)
        };
        assert!(matches!(
            next(&Phase::Updating, &late, updated),
            Next::RollBack(why) if why.contains("deadline")
        ));
        let not_started = Look {
            overdue: true,
            ..look(None, false)
        };
        assert!(matches!(
            next(&Phase::Updating, &not_started, updated),
            Next::RollBack(_)
        ));
    }

    #[test]
    fn the_services_own_rollback_is_followed_not_repeated() {
        assert!(matches!(
            next(
                &Phase::Updating,
                &look(Some(UpdateState::RollbackStarted), true),
                updated
            ),
            Next::Follow(_)
        ));
        assert!(matches!(
            next(&Phase::Updating, &look(Some(UpdateState::RollbackCompleted), true), updated),
            Next::Done(Outcome::RolledBack { reason, .. }) if reason.contains("failure action")
        ));
        assert!(matches!(
            next(
                &Phase::Updating,
                &look(Some(UpdateState::RollbackPaused), true),
                updated
            ),
            Next::Done(Outcome::RollbackFailed { .. })
        ));
    }

    #[test]
    fn a_rollback_ends_rolled_back_or_failed() {
        let phase = Phase::RollingBack { why: "why".into() };
        assert_eq!(
            next(
                &phase,
                &look(Some(UpdateState::RollbackStarted), true),
                updated
            ),
            Next::Wait
        );
        assert_eq!(
            next(
                &phase,
                &look(Some(UpdateState::RollbackCompleted), true),
                updated
            ),
            Next::Done(Outcome::RolledBack {
                step: STEP.into(),
                reason: "why; rolled back: msg".into()
            })
        );
        assert!(matches!(
            next(
                &phase,
                &look(Some(UpdateState::RollbackPaused), true),
                updated
            ),
            Next::Done(Outcome::RollbackFailed { .. })
        ));
        let late = Look {
            overdue: true,
            ..look(Some(UpdateState::RollbackStarted), true)
        };
        assert!(matches!(
            next(&phase, &late, updated),
            Next::Done(Outcome::RollbackFailed { reason, .. }) if reason.contains("deadline")
        ));
    }
}

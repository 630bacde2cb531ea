//! Going back, and starting again what was stopped (see [`super::executor`]): a failure
//! before the end of step 3 takes the replacements away and gives the old containers their
//! names back; what ran is started again, providers first, and believed restored only when
//! the engine shows it running. When the old container is gone, the replacement is kept and
//! the operation is finished around it.

use std::collections::BTreeMap;

use tracing::{info, warn};

use super::dependants::Action;
use super::executor::Recreator;
use super::journal::{DependantEntry, DependantState, Entry, Outcome, Step};
use super::ops::{Interrupt, StepFailure};
use crate::engine::is_not_found;

impl Recreator {
    /// Starts again what this operation stopped, providers first: with `parent` the old
    /// container (`Some(true)`: its stop may still be under way), and each dependant that ran
    /// and is `Stopping` or `Stopped` for which `which` says so. A stop still under way is
    /// ended first (the engine answers when the container is down). Then it looks: each must
    /// run for the settle time. Dependants end `Restored { restored }` (or `Started` without
    /// it), or `Failed`. Returns what does not run, by name, with why.
    pub(crate) async fn start_again(
        &self,
        entry: &mut Entry,
        parent: Option<bool>,
        which: &(dyn Fn(&DependantEntry) -> bool + Sync),
        restored: Option<String>,
    ) -> BTreeMap<String, String> {
        let mut started: Vec<(Option<usize>, String, String)> = Vec::new();
        let mut down = BTreeMap::new();
        if let Some(stop_under_way) = parent {
            if stop_under_way {
                let _ = self.stop_as_configured(&entry.old_id).await;
            }
            if let Err(e) = self.start(&entry.old_id).await {
                down.insert(entry.name.clone(), format!("cannot start it: {e}"));
            }
            started.push((None, entry.old_id.clone(), entry.name.clone()));
        }
        for i in 0..entry.dependants.len() {
            let d = entry.dependants[i].clone();
            let stopped = matches!(d.state, DependantState::Stopping | DependantState::Stopped);
            if !d.was_running || !stopped || !which(&d) {
                continue;
            }
            if d.state == DependantState::Stopping {
                let _ = self.stop_as_configured(&d.old_id).await;
            }
            if let Err(e) = self.start(&d.old_id).await {
                warn!(dependant = %d.name, error = %e, "Cannot start a dependant again.");
            }
            started.push((Some(i), d.old_id.clone(), d.name.clone()));
        }
        let targets: Vec<(String, String)> = started
            .iter()
            .map(|(_, id, name)| (id.clone(), name.clone()))
            .collect();
        down.extend(self.verify_running(&targets).await);
        for (i, _, name) in started {
            let Some(i) = i else { continue };
            let state = match (down.get(&name), &restored) {
                (Some(why), _) => {
                    warn!(container = %entry.name, dependant = %name, why = %why, "A dependant does not run again; it needs an operator.");
                    DependantState::Failed {
                        reason: format!("does not run again: {why}"),
                    }
                }
                (None, Some(reason)) => DependantState::Restored {
                    reason: reason.clone(),
                },
                (None, None) => DependantState::Started,
            };
            let _ = self.set_dependant(entry, i, state);
        }
        down
    }

    /// Step 4: removes the old containers of the recreated dependants (deepest first), then
    /// the container's own. Returns those that could not be removed.
    pub(crate) async fn remove_old(&self, entry: &Entry) -> Vec<String> {
        let olds = entry
            .dependants
            .iter()
            .rev()
            .filter(|d| matches!(d.state, DependantState::Passed { .. }))
            .map(|d| (d.old_id.clone(), d.name.clone()))
            .chain([(entry.old_id.clone(), entry.name.clone())]);
        let mut leftovers = Vec::new();
        for (id, name) in olds {
            let removed = if self.faults.fail_removal {
                Err("removal refused (fault injection)".to_owned())
            } else {
                self.remove(&id).await.map_err(|e| e.to_string())
            };
            if let Err(e) = removed {
                // The update holds; the old container lingers under its aside name until the
                // next start of the agent removes it.
                warn!(container = %name, old = %id, error = %e, "Cannot remove an old container; the agent tries again at its next start.");
                leftovers.push(id);
            }
        }
        leftovers
    }

    /// Rolls the whole operation back: replacements away, old containers under their names,
    /// and what ran runs again (checked by looking). `stop_under_way`: the container's stop
    /// may still be going on in the engine (it is waited for before the start).
    pub(crate) async fn revert(
        &self,
        entry: &mut Entry,
        new_id: Option<&str>,
        failure: StepFailure,
        stop_under_way: bool,
    ) -> Outcome {
        // The replacement: by id if known, else what holds the name if this operation made it.
        let holder = match new_id {
            Some(id) => Some(id.to_owned()),
            None => self.made_by(&entry.name, &entry.op_id, &entry.old_id).await,
        };
        // Only the engine's "no such container" says the old one is gone.
        let old_gone = matches!(
            self.docker.inspect_container(&entry.old_id, None).await,
            Err(ref e) if is_not_found(e)
        );
        if old_gone {
            return self.keep_replacement(entry, holder, failure).await;
        }
        let mut problems = Vec::new();
        for i in (0..entry.dependants.len()).rev() {
            if entry.dependants[i].action == Action::Recreate {
                let name = entry.dependants[i].name.clone();
                problems.extend(
                    self.undo_dependant(entry, i)
                        .await
                        .into_iter()
                        .map(|p| format!("{name}: {p}")),
                );
            }
        }
        if let Some(id) = holder
            && let Err(e) = self.remove(&id).await
        {
            problems.push(format!("cannot remove the new container: {e}"));
        }
        match self.name_of(&entry.old_id).await {
            Some(name) if name == entry.name => {}
            Some(_) => {
                if let Err(e) = self.rename(&entry.old_id, &entry.name).await {
                    problems.push(format!("cannot rename the old container back: {e}"));
                }
            }
            None => problems.push("cannot inspect the old container".into()),
        }
        // What ran runs again, providers first: the container, then its dependants.
        let why = format!("{}: {}", failure.step, failure.reason);
        let down = self
            .start_again(
                entry,
                entry.was_running.then_some(stop_under_way),
                &|_| true,
                Some(why),
            )
            .await;
        problems.extend(
            down.iter()
                .map(|(name, why)| format!("{name} does not run again: {why}")),
        );
        if problems.is_empty() {
            info!(container = %entry.name, "Old containers restored and seen running.");
            Outcome::RolledBack {
                step: failure.step.to_owned(),
                reason: failure.reason,
            }
        } else {
            warn!(container = %entry.name, problems = %problems.join("; "), "Rollback incomplete: needs an operator.");
            Outcome::RollbackFailed {
                step: failure.step.to_owned(),
                reason: format!("{}; rollback: {}", failure.reason, problems.join("; ")),
            }
        }
    }

    /// The old container is gone (removed by someone meanwhile): there is nothing to go back
    /// to, so the replacement is kept running rather than leave nothing under the name, and
    /// the operation is finished around it (dependants follow it, stopped ones start).
    pub(crate) async fn keep_replacement(
        &self,
        entry: &mut Entry,
        replacement: Option<String>,
        failure: StepFailure,
    ) -> Outcome {
        let mut problems = Vec::new();
        match &replacement {
            Some(new_id) => {
                warn!(container = %entry.name, "The old container is gone; the replacement is kept and what refers to it follows it.");
                if let Err(e) = self.start(new_id).await {
                    problems.push(format!("cannot start the new container: {e}"));
                }
                entry.step = Step::Following {
                    new_id: new_id.clone(),
                };
                if let Err(e) = self.journal.record(entry) {
                    problems.push(e.to_string());
                }
                let deadlines = self.deadlines;
                if let Err(Interrupt::Failed(f)) =
                    self.follow(entry, new_id, &deadlines, &|_| {}).await
                {
                    problems.push(format!("{}: {}", f.step, f.reason));
                }
            }
            None => problems.push("and there is no replacement".into()),
        }
        let down = self.start_again(entry, None, &|_| true, None).await;
        problems.extend(
            down.iter()
                .map(|(name, why)| format!("{name} does not run: {why}")),
        );
        entry.leftovers = self.remove_old(entry).await;
        Outcome::RollbackFailed {
            step: failure.step.to_owned(),
            reason: format!(
                "{}; the old container is gone, so the new one was kept{}",
                failure.reason,
                if problems.is_empty() {
                    String::new()
                } else {
                    format!("; {}", problems.join("; "))
                }
            ),
        }
    }
}

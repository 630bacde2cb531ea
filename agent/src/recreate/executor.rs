//! The safe recreate sequence (DESIGN.md sections 5 and 11): never destroy before the
//! replacement runs, and leave nothing that refers to the container down. (Over 600 lines:
//! the sequence with the checks that guard its start, claims and unrecovered operations, which
//! must be read together.)
//!
//! 1. Prepare (nothing changes): inspect, pull, derive the replacement; find the dependants
//!    ([`super::dependants`]) and pull the new images of those whose own tag moved too.
//! 2. Stop the dependants that cannot outlive the old container (shared namespaces, legacy
//!    links) and the soft ones, deepest first; then stop the container, set it aside, create
//!    its replacement, start it, pass the health gate.
//! 3. Follow: recreate each dependant that must refer to the new container, parents first,
//!    with the same sequence and gate.
//! 4. Remove the old containers (never volumes) and start the soft dependants again.
//!
//! A failure before the end of step 3 rolls everything back to the old containers (a hard
//! dependant that fails on its own is rolled back alone; a namespace dependant whose new image
//! fails runs its own image again). Every step, of the container and of each dependant, is
//! journaled before it is taken; [`super::recovery`] finishes (from step 3 on) or reverts
//! (before) what a crash interrupted. Asked to stop, the agent starts nothing new and brings
//! an operation to that same safe point.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use bollard::Docker;
use bollard::models::NetworkConnectRequest;
use tokio::sync::watch;
use tracing::{info, warn};

use super::claims::{Claim, Claims};
use super::dependants::{Action, Fixed};
use super::faults::{CrashMode, CrashPoint, Faults, Hook};
use super::journal::{DependantEntry, DependantState, Entry, Journal, JournalError, Outcome, Step};
use super::lifecycle::Phase;
use super::ops::{Interrupt, OnStop, StepFailure, failed};
use super::pull::RegistryAuth;
use super::spec::{ApiVersion, CreatePlan};
use super::{ASIDE_MARK, DependantReport, Report, short};
use crate::engine::Engine;

/// How long each part may take; each deadline acts (the step fails and rolls back).
#[derive(Debug, Clone, Copy)]
pub struct Deadlines {
    pub pull: Duration,
    /// Upper bound for the health gate.
    pub health: Duration,
    /// Without a healthcheck: how long the new container must run without a restart.
    pub min_running: Duration,
    /// With a healthcheck: how long the new container must stay healthy (0: once is enough).
    pub min_healthy_with_check: Duration,
    /// How often the health gate looks.
    pub poll: Duration,
    /// How long a container restored by a rollback or recovery must be seen running before
    /// it counts as restored.
    pub settle: Duration,
}

impl Default for Deadlines {
    fn default() -> Self {
        Self {
            pull: Duration::from_secs(600),
            health: Duration::from_secs(120),
            min_running: Duration::from_secs(10),
            min_healthy_with_check: Duration::ZERO,
            poll: Duration::from_millis(250),
            settle: Duration::from_secs(2),
        }
    }
}

/// One recreate request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Request {
    pub op_id: String,
    /// Container name or id.
    pub container: String,
    /// Image to recreate it from; its configured reference when `None`. `repo:tag@sha256:…`
    /// pulls exactly that manifest and points `repo:tag` at it.
    pub image: Option<String>,
    /// Credentials for the pulls.
    pub auth: Option<RegistryAuth>,
    /// The coordinator's health gate for this update, instead of the agent's defaults.
    pub gate: Option<HealthGate>,
    /// More soft dependants (names), besides those the labels declare.
    pub soft_dependants: Vec<String>,
    /// Dependants recreated with the container whose own tag moved too: name →
    /// `repo:tag@sha256:…`; they move to it in the same operation.
    pub dependant_images: BTreeMap<String, String>,
    /// The image is on the engine already (pulled with credentials by whoever asks): no pull.
    pub skip_pull: bool,
    /// Where this operation asks the coordinator at its hook points (nobody: `None`).
    pub hooks: Option<super::gate::Hooks>,
}

/// A health gate asked for with one update (rollout policy).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HealthGate {
    /// The new container must be healthy (or, without a healthcheck, running) this long.
    pub min_healthy: Duration,
    /// Longest wait for that; zero keeps the agent's own.
    pub deadline: Duration,
}

/// Failures that leave nothing to report as an outcome.
#[derive(Debug, thiserror::Error)]
pub enum RecreateError {
    #[error(transparent)]
    Journal(#[from] JournalError),
    #[error("operation {0} is still in progress")]
    InProgress(String),
    #[error("stopped at crash point {0:?} (fault injection)")]
    Crashed(CrashPoint),
    #[error("the agent is stopping; the operation was not started")]
    ShuttingDown,
}

/// Recreates containers of one engine.
pub struct Recreator {
    pub(crate) docker: Docker,
    pub(crate) api: ApiVersion,
    pub(crate) journal: Journal,
    pub(crate) deadlines: Deadlines,
    pub(crate) own_id: Option<String>,
    pub(crate) faults: Faults,
    stopping: watch::Receiver<bool>,
    /// The fixed parts of the host's containers, by id (see [`Recreator::host_nodes`]).
    pub(crate) fixed: std::sync::Mutex<HashMap<String, Fixed>>,
    /// When the journal was last pruned.
    pruned: std::sync::Mutex<Option<std::time::Instant>>,
    /// What the operations in flight hold (several may run at once).
    pub(crate) claims: Claims,
}

/// What preparing found; nothing was changed.
pub(crate) struct Prepared {
    pub(crate) plan: CreatePlan,
    pub(crate) old_id: String,
    pub(crate) target: String,
    pub(crate) dependants: Vec<DependantEntry>,
}

impl Recreator {
    pub fn new(
        engine: &Engine,
        journal: Journal,
        deadlines: Deadlines,
        own_id: Option<String>,
    ) -> Self {
        Self {
            docker: engine.docker().clone(),
            api: engine.api(),
            journal,
            deadlines,
            own_id,
            faults: Faults::default(),
            stopping: watch::channel(false).1,
            fixed: std::sync::Mutex::default(),
            pruned: std::sync::Mutex::default(),
            claims: Claims::default(),
        }
    }

    /// The engine this recreator works on.
    pub fn docker(&self) -> &Docker {
        &self.docker
    }

    /// The engine's API version.
    pub fn api(&self) -> ApiVersion {
        self.api
    }

    /// The journal.
    pub fn journal(&self) -> &Journal {
        &self.journal
    }

    /// Runs `hook` whenever a recreate passes `point` (tests only), then goes on.
    pub fn with_hook(mut self, point: CrashPoint, hook: Hook) -> Self {
        self.faults.hooks.push((point, hook));
        self
    }

    /// Injects a crash right after `point` (tests only).
    pub fn with_crash(mut self, point: CrashPoint, mode: CrashMode) -> Self {
        self.faults.crash = Some((point, mode));
        self
    }

    /// Makes the removal of old containers after a successful update fail (tests only).
    pub fn with_failing_removal(mut self) -> Self {
        self.faults.fail_removal = true;
        self
    }

    /// `stopping` turning true asks operations to reach their safe point (see the module
    /// docs) and new ones not to start.
    pub fn with_stopping(mut self, stopping: watch::Receiver<bool>) -> Self {
        self.stopping = stopping;
        self
    }

    pub(crate) fn is_stopping(&self) -> bool {
        *self.stopping.borrow()
    }

    /// Completes when the agent is asked to stop (never, if nobody can ask).
    pub(crate) async fn until_stopping(&self) {
        let mut stopping = self.stopping.clone();
        if stopping.wait_for(|s| *s).await.is_err() {
            std::future::pending::<()>().await;
        }
    }

    /// Fails the current step when the agent is asked to stop.
    pub(crate) fn unless_stopping(&self) -> Result<(), StepFailure> {
        if self.is_stopping() {
            Err(StepFailure::new("shutdown", "the agent is stopping"))
        } else {
            Ok(())
        }
    }

    /// Runs one recreate. A repeated op id gets the stored outcome, without doing anything.
    pub async fn recreate(&self, request: &Request) -> Result<Outcome, RecreateError> {
        Ok(self.run(request, &|_| {}).await?.outcome)
    }

    /// Runs one recreate, calling `report` with the name of each step as it starts; returns
    /// the outcome and what became of each dependant. Several may run at once on distinct
    /// containers: one whose container another operation holds waits for it, one with a
    /// dependant another operation holds is refused (see [`super::claims`]).
    pub async fn run(
        &self,
        request: &Request,
        report: &(dyn Fn(&'static str) + Send + Sync),
    ) -> Result<Report, RecreateError> {
        let mut claim = self
            .claims
            .wait_for(&request.op_id, request.hooks.as_ref().map(|h| h.0.clone()))
            .await;
        if let Some(entry) = self.journal.get(&request.op_id)? {
            return match entry.step {
                Step::Done { ref outcome } => Ok(report_of(&entry, outcome.clone())),
                _ => Err(RecreateError::InProgress(request.op_id.clone())),
            };
        }
        if self.is_stopping() {
            return Err(RecreateError::ShuttingDown);
        }
        // An operation a recovery could not finish holds the host: nothing new starts on it
        // until it is (recovery is tried again now). Those in flight are not such.
        if let Some(refused) = self.held_by_unrecovered(request).await? {
            return Ok(refused);
        }
        // Its containers, once no other operation holds them (the same container sent twice
        // waits for the first).
        let containers: Vec<String> = std::iter::once(&request.container)
            .chain(&request.soft_dependants)
            .chain(request.dependant_images.keys())
            .cloned()
            .collect();
        claim.wait_for(&containers).await;
        if self.is_stopping() {
            return Err(RecreateError::ShuttingDown);
        }
        // The operation it waited for may have ended unfinished (a journal failure): its
        // containers are recovery's first.
        if let Some(refused) = self.held_by_unrecovered(request).await? {
            return Ok(refused);
        }
        report("prepare");
        self.lifecycle(&request.container, Phase::PreCheck).await;
        let done = self.update(request, &mut claim, report).await;
        self.lifecycle(&request.container, Phase::PostCheck).await;
        done
    }

    /// The refusal of `request` while an operation recovery could not finish holds the host
    /// (recovery is tried again first); `None`: none does.
    async fn held_by_unrecovered(
        &self,
        request: &Request,
    ) -> Result<Option<Report>, RecreateError> {
        if self.unfinished_elsewhere().is_none() {
            return Ok(None);
        }
        let _ = self.recover().await;
        let Some(op) = self.unfinished_elsewhere() else {
            return Ok(None);
        };
        let outcome = Outcome::Refused {
            reason: format!(
                "operation {op} on this host could not be recovered yet (see the agent's log); nothing else starts until it is"
            ),
        };
        self.finish_without_change(request, &outcome)?;
        Ok(Some(Report {
            outcome,
            dependants: Vec::new(),
        }))
    }

    /// An unfinished operation in the journal that is not in flight (one a crash interrupted
    /// and recovery could not finish yet).
    fn unfinished_elsewhere(&self) -> Option<String> {
        self.journal
            .unfinished_ops()
            .into_iter()
            .find(|op| !self.claims.is_active(op))
    }

    /// [`Recreator::run`] from preparing on, between the container's `pre-check` and
    /// `post-check` commands.
    async fn update(
        &self,
        request: &Request,
        claim: &mut Claim<'_>,
        report: &(dyn Fn(&'static str) + Send + Sync),
    ) -> Result<Report, RecreateError> {
        let Prepared {
            plan,
            old_id,
            target,
            dependants,
        } = match self.prepare(request).await {
            Ok(p) => p,
            // Given up because the agent stops: not an answer (the same op id may come again).
            Err(_) if self.is_stopping() => return Err(RecreateError::ShuttingDown),
            Err(outcome) => {
                self.finish_without_change(request, &outcome)?;
                return Ok(Report {
                    outcome,
                    dependants: Vec::new(),
                });
            }
        };
        // Everything it may touch, by name and id, is this operation's alone before anything
        // changes (found only now: the dependants the engine shows).
        // (A dependant left untouched, such as a `--volumes-from` user, is not claimed: the
        // coordinator may update it at the same time.)
        let touched: Vec<String> = [plan.name.clone(), old_id.clone()]
            .into_iter()
            .chain(
                dependants
                    .iter()
                    .filter(|d| d.action != crate::recreate::dependants::Action::Untouched)
                    .flat_map(|d| [d.name.clone(), d.old_id.clone()]),
            )
            .collect();
        if let Err((container, holder)) = claim.extend(&touched) {
            let outcome = Outcome::Refused {
                reason: format!(
                    "container {container} is being updated by operation {holder} on this host at the same time; nothing was changed"
                ),
            };
            self.finish_without_change(request, &outcome)?;
            return Ok(Report {
                outcome,
                dependants: Vec::new(),
            });
        }
        // The container's own `pre-update` command, before anything changes.
        if let Err(outcome) = self.pre_update(&old_id).await {
            self.finish_without_change(request, &outcome)?;
            return Ok(Report {
                outcome,
                dependants: Vec::new(),
            });
        }
        let mut entry = Entry {
            op_id: request.op_id.clone(),
            name: plan.name.clone(),
            old_id,
            aside_name: format!("{}{ASIDE_MARK}{}", plan.name, short(&request.op_id)),
            was_running: plan.was_running,
            target_image: target,
            dependants,
            leftovers: Vec::new(),
            step: Step::Planned,
        };
        self.journal.record(&entry)?;
        let deadlines = self.deadlines_for(request.gate);
        let outcome = self.execute(&mut entry, &plan, &deadlines, report).await?;
        if let Outcome::Updated { new_id, .. } = &outcome {
            self.lifecycle(new_id, Phase::PostUpdate).await;
        }
        if matches!(outcome, Outcome::Interrupted { .. }) {
            // Nothing changed: the operation may be sent again and then runs in full.
            self.journal.forget(&entry.op_id)?;
        }
        self.prune_now_and_then();
        Ok(report_of(&entry, outcome))
    }

    /// Prunes the journal (see [`Journal::prune`]), at most every ten minutes.
    fn prune_now_and_then(&self) {
        let mut last = self.pruned.lock().unwrap_or_else(|p| p.into_inner());
        if last.is_some_and(|at| at.elapsed() < Duration::from_secs(600)) {
            return;
        }
        *last = Some(std::time::Instant::now());
        if let Err(e) = self
            .journal
            .prune(std::time::SystemTime::now(), super::journal::RETENTION)
        {
            warn!(error = %e, "Cannot prune the journal.");
        }
    }

    /// The agent's deadlines with the coordinator's health gate applied.
    pub(crate) fn deadlines_for(&self, gate: Option<HealthGate>) -> Deadlines {
        let mut deadlines = self.deadlines;
        if let Some(gate) = gate {
            if !gate.deadline.is_zero() {
                deadlines.health = gate.deadline;
            }
            deadlines.min_running = gate.min_healthy;
            deadlines.min_healthy_with_check = gate.min_healthy;
        }
        deadlines
    }

    /// Steps 2 to 4 of the module docs, from a planned entry.
    async fn execute(
        &self,
        entry: &mut Entry,
        plan: &CreatePlan,
        deadlines: &Deadlines,
        report: &(dyn Fn(&'static str) + Send + Sync),
    ) -> Result<Outcome, RecreateError> {
        if let Err(interrupt) = self.stop_dependants(entry, report).await {
            return self.after_failure(entry, interrupt, report).await;
        }
        let new_id = match self.swap(entry, plan, deadlines, report).await {
            Ok(new_id) => new_id,
            Err(interrupt) => return self.after_failure(entry, interrupt, report).await,
        };
        entry.step = Step::Following { new_id };
        self.journal.record(entry)?;
        if let Err(Interrupt::Crashed(p)) = self.faults.at(CrashPoint::AfterHealthGate).await {
            return Err(RecreateError::Crashed(p));
        }
        self.finish(entry, deadlines, report).await
    }

    /// Steps 3 and 4 from an entry whose container passed its gate (also after a crash).
    pub(crate) async fn finish(
        &self,
        entry: &mut Entry,
        deadlines: &Deadlines,
        report: &(dyn Fn(&'static str) + Send + Sync),
    ) -> Result<Outcome, RecreateError> {
        if let Step::Following { new_id } = entry.step.clone() {
            match self.follow(entry, &new_id, deadlines, report).await {
                Ok(()) => {}
                Err(interrupt) => return self.after_failure(entry, interrupt, report).await,
            }
            entry.step = Step::RemovingOld { new_id };
            self.journal.record(entry)?;
        }
        let Step::RemovingOld { new_id } = entry.step.clone() else {
            return Err(RecreateError::InProgress(entry.op_id.clone()));
        };
        if let Err(Interrupt::Crashed(p)) = self.faults.at(CrashPoint::BeforeRemoveOld).await {
            return Err(RecreateError::Crashed(p));
        }
        report("start dependants");
        self.ask_before_starting(entry).await?;
        self.start_again(entry, None, &|d| d.action == Action::Restart, None)
            .await;
        report("remove old");
        entry.leftovers = self.remove_old(entry).await;
        let image_id = self
            .inspect(&new_id)
            .await
            .and_then(|c| c.image)
            .unwrap_or_default();
        info!(container = %entry.name, new = %new_id, "Container updated.");
        let outcome = Outcome::Updated { new_id, image_id };
        entry.step = Step::Done {
            outcome: outcome.clone(),
        };
        self.journal.record(entry)?;
        Ok(outcome)
    }

    /// A failure rolls everything back; a crash leaves it to recovery.
    async fn after_failure(
        &self,
        entry: &mut Entry,
        interrupt: Interrupt,
        report: &(dyn Fn(&'static str) + Send + Sync),
    ) -> Result<Outcome, RecreateError> {
        let failure = match interrupt {
            Interrupt::Crashed(point) => return Err(RecreateError::Crashed(point)),
            Interrupt::Failed(f) => f,
        };
        warn!(container = %entry.name, step = failure.step, reason = %failure.reason, "Update failed; rolling back.");
        let stop_under_way = entry.step == Step::Stopping;
        let new_id = match &entry.step {
            Step::Created { new_id } | Step::Following { new_id } => Some(new_id.clone()),
            _ => None,
        };
        entry.step = Step::RollingBack {
            new_id: new_id.clone(),
            reason: failure.reason.clone(),
            stop_under_way,
        };
        self.journal.record(entry)?;
        if let Err(Interrupt::Crashed(point)) = self.faults.at(CrashPoint::BeforeRollback).await {
            return Err(RecreateError::Crashed(point));
        }
        report("rollback");
        let stopping = self.is_stopping();
        let outcome = match self
            .revert(entry, new_id.as_deref(), failure, stop_under_way)
            .await
        {
            // The agent was asked to stop: not the image's failure, and everything is back.
            Outcome::RolledBack { step, reason } if stopping => Outcome::Interrupted {
                step,
                reason: format!("{reason}; everything is as it was"),
            },
            // A hook said no before anything was replaced: everything is back.
            Outcome::RolledBack { step, reason } if step == "hook" => Outcome::Vetoed { reason },
            other => other,
        };
        entry.step = Step::Done {
            outcome: outcome.clone(),
        };
        self.journal.record(entry)?;
        Ok(outcome)
    }

    fn finish_without_change(
        &self,
        request: &Request,
        outcome: &Outcome,
    ) -> Result<(), JournalError> {
        self.journal.record(&Entry {
            op_id: request.op_id.clone(),
            name: request.container.clone(),
            old_id: String::new(),
            aside_name: String::new(),
            was_running: false,
            target_image: request.image.clone().unwrap_or_default(),
            dependants: Vec::new(),
            leftovers: Vec::new(),
            step: Step::Done {
                outcome: outcome.clone(),
            },
        })
    }

    /// Records the outcome of an operation done outside the recreate sequence (a self-update),
    /// so that a repeated op id is answered from the journal.
    pub(crate) fn record_done(
        &self,
        request: &Request,
        outcome: &Outcome,
    ) -> Result<(), JournalError> {
        self.finish_without_change(request, outcome)
    }

    /// Records dependant `i`'s new state.
    pub(crate) fn set_dependant(
        &self,
        entry: &mut Entry,
        i: usize,
        state: DependantState,
    ) -> Result<(), StepFailure> {
        entry.dependants[i].state = state;
        self.journal
            .record(entry)
            .map_err(|e| StepFailure::new("journal", e.to_string()))
    }

    /// Stop, rename aside, create, connect, start, health gate. Returns the new id.
    pub(crate) async fn swap(
        &self,
        entry: &mut Entry,
        plan: &CreatePlan,
        deadlines: &Deadlines,
        report: &(dyn Fn(&'static str) + Send + Sync),
    ) -> Result<String, Interrupt> {
        let journal = |e: JournalError| StepFailure::new("journal", e.to_string());
        self.unless_stopping()?;
        entry.step = Step::Stopping;
        self.journal.record(entry).map_err(journal)?;
        report("stop");
        self.stop_with(
            &entry.old_id,
            plan.stop_signal.as_deref(),
            plan.stop_timeout,
        )
        .await
        .map_err(failed("stop"))?;
        self.faults.at(CrashPoint::AfterStop).await?;

        self.unless_stopping()?;
        entry.step = Step::RenamingAside;
        self.journal.record(entry).map_err(journal)?;
        report("rename");
        self.rename(&entry.old_id, &entry.aside_name)
            .await
            .map_err(failed("rename"))?;
        self.faults.at(CrashPoint::AfterRename).await?;

        self.unless_stopping()?;
        entry.step = Step::Creating;
        self.journal.record(entry).map_err(journal)?;
        report("create");
        let new_id = self
            .create(plan, &entry.op_id)
            .await
            .map_err(failed("create"))?;
        entry.step = Step::Created {
            new_id: new_id.clone(),
        };
        self.journal.record(entry).map_err(journal)?;
        self.faults.at(CrashPoint::AfterCreate).await?;

        for (network, endpoint) in &plan.extra_networks {
            self.docker
                .connect_network(
                    network,
                    NetworkConnectRequest {
                        container: new_id.clone(),
                        endpoint_config: Some(endpoint.clone()),
                    },
                )
                .await
                .map_err(failed("connect network"))?;
        }
        if plan.was_running {
            self.unless_stopping()?;
            report("start");
            self.docker
                .start_container(&new_id, None)
                .await
                .map_err(failed("start"))?;
            self.faults.at(CrashPoint::AfterStart).await?;
            report("health gate");
            self.health_gate(&new_id, deadlines, OnStop::Fail).await?;
        }
        Ok(new_id)
    }
}

/// The outcome with what the journal says of each dependant.
fn report_of(entry: &Entry, outcome: Outcome) -> Report {
    Report {
        outcome,
        dependants: entry.dependants.iter().map(DependantReport::of).collect(),
    }
}

//! The safe recreate sequence (DESIGN.md sections 5 and 11): never destroy before the
//! replacement runs, and leave nothing that refers to the container down.
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
use bollard::models::{ImageInspect, NetworkConnectRequest};
use futures_util::StreamExt;
use tokio::sync::watch;
use tracing::{info, warn};

use super::dependants::{self, Action, Fixed, Node};
use super::faults::{CrashMode, CrashPoint, Faults, Hook};
use super::journal::{
    DependantEntry, DependantState, Entry, Journal, JournalError, Outcome, Step, TagBack,
};
use super::ops::{Interrupt, OnStop, StepFailure, failed};
use super::pull::{RegistryAuth, split_pinned};
use super::spec::{self, ApiVersion, CreatePlan};
use super::{ASIDE_MARK, DependantReport, Report, short};
use crate::engine::{Engine, is_not_found};

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
    own_id: Option<String>,
    pub(crate) faults: Faults,
    stopping: watch::Receiver<bool>,
    /// The fixed parts of the host's containers, by id (see [`Recreator::host_nodes`]).
    fixed: std::sync::Mutex<HashMap<String, Fixed>>,
    /// When the journal was last pruned.
    pruned: std::sync::Mutex<Option<std::time::Instant>>,
}

/// What preparing found; nothing was changed.
struct Prepared {
    plan: CreatePlan,
    old_id: String,
    target: String,
    dependants: Vec<DependantEntry>,
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
    fn unless_stopping(&self) -> Result<(), StepFailure> {
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
    /// the outcome and what became of each dependant.
    pub async fn run(
        &self,
        request: &Request,
        report: &(dyn Fn(&'static str) + Send + Sync),
    ) -> Result<Report, RecreateError> {
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
        // until it is (recovery is tried again now).
        if self.journal.has_unfinished().is_some() {
            let _ = self.recover().await;
            if let Some(op) = self.journal.has_unfinished() {
                let outcome = Outcome::Refused {
                    reason: format!(
                        "operation {op} on this host could not be recovered yet (see the agent's log); nothing else starts until it is"
                    ),
                };
                self.finish_without_change(request, &outcome)?;
                return Ok(Report {
                    outcome,
                    dependants: Vec::new(),
                });
            }
        }
        report("prepare");
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

    /// Inspect, pull and derive, for the container and its dependants; nothing is changed.
    /// Err is the outcome to report.
    async fn prepare(&self, request: &Request) -> Result<Prepared, Outcome> {
        let refused = |reason: String| Outcome::Refused { reason };
        let old = self
            .docker
            .inspect_container(&request.container, None)
            .await
            .map_err(|e| {
                refused(format!(
                    "cannot inspect container {}: {e}",
                    request.container
                ))
            })?;
        let old_id = old.id.clone().unwrap_or_default();
        let configured = old
            .config
            .as_ref()
            .and_then(|c| c.image.clone())
            .unwrap_or_default();
        let target = request.image.clone().unwrap_or(configured);
        if target.is_empty() {
            return Err(refused("no image to recreate from".into()));
        }
        // Everything that can refuse the update is checked before the pull.
        if let Some(pinned) = spec::pinned(&old) {
            return Err(refused(spec::Refusal::DigestPinned(pinned).to_string()));
        }
        spec::check(&old, self.own_id.as_deref()).map_err(|e| refused(e.to_string()))?;
        // `repo:tag@sha256:…`: exactly this manifest, and the container keeps following its
        // tag afterwards (the tag is pointed at it once nothing can refuse the update).
        let (pulled, tag_to) = match split_pinned(&target) {
            Some((pinned, tag)) => (pinned, tag),
            None => (target, None),
        };
        if !pulled.starts_with("sha256:") {
            self.pull(&pulled, request.auth.as_ref())
                .await
                .map_err(refused)?;
        }
        let new_image = self
            .docker
            .inspect_image(&pulled)
            .await
            .map_err(|e| refused(format!("cannot inspect image {pulled}: {e}")))?;
        let image_id = new_image.id.clone().unwrap_or_default();
        if old.image.as_deref() == Some(image_id.as_str()) {
            return Err(Outcome::AlreadyCurrent);
        }
        let old_image = self
            .old_image(old.image.as_deref())
            .await
            .map_err(refused)?;
        let dependants = self
            .prepare_dependants(request, &old_id)
            .await
            .map_err(refused)?;
        let target = match tag_to {
            Some(tag) => {
                self.tag(&pulled, &tag).await.map_err(refused)?;
                tag
            }
            None => pulled,
        };
        let plan = spec::derive(&old, &old_image, &target, self.api, self.own_id.as_deref())
            .map_err(|e| refused(e.to_string()))?;
        Ok(Prepared {
            plan,
            old_id,
            target,
            dependants,
        })
    }

    /// The image a container was made from; empty when it is gone (then nothing can be told
    /// apart, so every setting is kept).
    async fn old_image(&self, id: Option<&str>) -> Result<ImageInspect, String> {
        match id {
            Some(id) => match self.docker.inspect_image(id).await {
                Ok(i) => Ok(i),
                Err(e) if is_not_found(&e) => Ok(ImageInspect::default()),
                Err(e) => Err(format!("cannot inspect the old image: {e}")),
            },
            None => Ok(ImageInspect::default()),
        }
    }

    /// The dependants of `root_id`, checked and with their new images pulled.
    async fn prepare_dependants(
        &self,
        request: &Request,
        root_id: &str,
    ) -> Result<Vec<DependantEntry>, String> {
        let nodes = self.host_nodes().await?;
        if !nodes.iter().any(|n| n.id == root_id) {
            return Err("the container is not in the host's list any more".into());
        }
        let found = dependants::dependants(root_id, &nodes, &request.soft_dependants);
        let mut entries = Vec::new();
        for d in found {
            if d.action != Action::Untouched {
                // Its own stop and create must be possible, or nothing starts.
                let c = self
                    .docker
                    .inspect_container(&d.id, None)
                    .await
                    .map_err(|e| format!("dependant {}: cannot inspect it: {e}", d.name))?;
                spec::check(&c, self.own_id.as_deref())
                    .map_err(|e| format!("dependant {} ({}): {e}", d.name, d.kind.as_str()))?;
            }
            let target = match request.dependant_images.get(&d.name) {
                Some(image) if d.action == Action::Recreate => {
                    let (pinned, _) = split_pinned(image).ok_or_else(|| {
                        format!("dependant {}: {image} is not repo:tag@digest", d.name)
                    })?;
                    self.pull(&pinned, request.auth.as_ref())
                        .await
                        .map_err(|e| format!("dependant {}: {e}", d.name))?;
                    Some(image.clone())
                }
                _ => None,
            };
            entries.push(DependantEntry {
                aside_name: format!("{}{ASIDE_MARK}{}", d.name, short(&request.op_id)),
                name: d.name,
                old_id: d.id,
                kind: d.kind,
                action: d.action,
                parent: d.parent,
                was_running: d.running,
                target,
                state: DependantState::Untouched,
            });
        }
        Ok(entries)
    }

    /// Step 2 for the dependants: those that cannot outlive the old container, and the soft
    /// ones, are stopped, deepest first.
    async fn stop_dependants(
        &self,
        entry: &mut Entry,
        report: &(dyn Fn(&'static str) + Send + Sync),
    ) -> Result<(), Interrupt> {
        for i in (0..entry.dependants.len()).rev() {
            let d = &entry.dependants[i];
            let goes_down = d.action == Action::Restart
                || (d.action == Action::Recreate && d.kind.refers_to_container());
            if !goes_down || d.state != DependantState::Untouched {
                continue;
            }
            self.unless_stopping()?;
            // Whether it runs now (pulls may have taken a while since it was listed) is what
            // it goes back to.
            let running = self
                .inspect(&d.old_id)
                .await
                .and_then(|c| c.state)
                .and_then(|s| s.running)
                .unwrap_or(false);
            if entry.dependants[i].was_running != running {
                entry.dependants[i].was_running = running;
                self.journal
                    .record(entry)
                    .map_err(|e| StepFailure::new("journal", e.to_string()))?;
            }
            if !running {
                continue;
            }
            let d = &entry.dependants[i];
            report("stop dependant");
            let id = d.old_id.clone();
            let name = d.name.clone();
            self.set_dependant(entry, i, DependantState::Stopping)?;
            self.stop_as_configured(&id)
                .await
                .map_err(|e| StepFailure::new("stop dependant", format!("{name}: {e}")))?;
            self.set_dependant(entry, i, DependantState::Stopped)?;
            self.faults.at(CrashPoint::AfterDependantStop).await?;
        }
        Ok(())
    }

    /// The host's containers as [`Node`]s: one list call, and an inspect of each container not
    /// seen before (what the model needs of a container never changes while it exists).
    async fn host_nodes(&self) -> Result<Vec<Node>, String> {
        let listed = self
            .docker
            .list_containers(Some(
                bollard::query_parameters::ListContainersOptionsBuilder::new()
                    .all(true)
                    .build(),
            ))
            .await
            .map_err(|e| format!("cannot list the host's containers for dependants: {e}"))?;
        let unknown: Vec<String> = {
            let known = self.fixed.lock().unwrap_or_else(|p| p.into_inner());
            listed
                .iter()
                .filter_map(|c| c.id.clone())
                .filter(|id| !known.contains_key(id))
                .collect()
        };
        let docker = &self.docker;
        let inspected: Vec<_> = futures_util::stream::iter(unknown)
            .map(|id| async move { (docker.inspect_container(&id, None).await, id) })
            .buffered(8)
            .collect()
            .await;
        let mut known = self.fixed.lock().unwrap_or_else(|p| p.into_inner());
        for (result, id) in inspected {
            match result {
                Ok(c) => {
                    known.insert(id, Fixed::from_inspect(&c));
                }
                // Gone since the list: it refers to nothing any more.
                Err(e) if is_not_found(&e) => {}
                // A container not seen could be a dependant: nothing starts without it.
                Err(e) => return Err(format!("cannot inspect container {id}: {e}")),
            }
        }
        // Containers that are gone are forgotten.
        let present: std::collections::HashSet<&str> =
            listed.iter().filter_map(|c| c.id.as_deref()).collect();
        known.retain(|id, _| present.contains(id.as_str()));
        Ok(dependants::nodes(&listed, &known))
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
    async fn swap(
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

    /// Step 3: each dependant that must refer to the new container is recreated, parents
    /// first. Re-entered after a crash, it undoes a dependant caught half-way and goes on.
    async fn follow(
        &self,
        entry: &mut Entry,
        new_id: &str,
        deadlines: &Deadlines,
        report: &(dyn Fn(&'static str) + Send + Sync),
    ) -> Result<(), Interrupt> {
        let mut new_ids: HashMap<String, String> =
            HashMap::from([(entry.name.clone(), new_id.to_owned())]);
        for i in 0..entry.dependants.len() {
            let d = entry.dependants[i].clone();
            if d.action != Action::Recreate {
                continue;
            }
            match &d.state {
                DependantState::Passed { new_id, .. } => {
                    new_ids.insert(d.name.clone(), new_id.clone());
                    continue;
                }
                DependantState::Restored { .. } | DependantState::Failed { .. } => continue,
                DependantState::RenamingAside
                | DependantState::Creating { .. }
                | DependantState::Created { .. } => {
                    let problems = self.undo_dependant(entry, i).await;
                    if !problems.is_empty() {
                        return Err(StepFailure::new(
                            "dependant",
                            format!("{}: {}", d.name, problems.join("; ")),
                        )
                        .into());
                    }
                }
                _ => {}
            }
            report("dependant");
            let first = self
                .recreate_dependant(entry, i, &new_ids, deadlines, false)
                .await;
            let failure = match first {
                Ok(id) => {
                    new_ids.insert(d.name.clone(), id);
                    continue;
                }
                Err(Interrupt::Crashed(p)) => return Err(Interrupt::Crashed(p)),
                Err(Interrupt::Failed(f)) => f,
            };
            warn!(container = %entry.name, dependant = %d.name, step = failure.step, reason = %failure.reason, "A dependant failed to follow the new container.");
            let mut problems = self.undo_dependant(entry, i).await;
            let why = format!("{}: {}", failure.step, failure.reason);
            if problems.is_empty() && d.target.is_some() && d.kind.refers_to_container() {
                // Its own new image failed: it follows the new container on its old image.
                match self
                    .recreate_dependant(entry, i, &new_ids, deadlines, true)
                    .await
                {
                    Ok(id) => {
                        if let DependantState::Passed { reason, .. } =
                            &mut entry.dependants[i].state
                        {
                            *reason = format!("its new image failed ({why}); it kept its own");
                        }
                        self.journal
                            .record(entry)
                            .map_err(|e| StepFailure::new("journal", e.to_string()))?;
                        new_ids.insert(d.name.clone(), id);
                        continue;
                    }
                    Err(Interrupt::Crashed(p)) => return Err(Interrupt::Crashed(p)),
                    Err(Interrupt::Failed(f)) => {
                        problems = self.undo_dependant(entry, i).await;
                        problems.insert(0, format!("{}: {}", f.step, f.reason));
                    }
                }
            }
            let followed_by_others = entry
                .dependants
                .iter()
                .any(|o| o.parent == d.name && o.action == Action::Recreate);
            if d.kind.refers_to_container() || followed_by_others || !problems.is_empty() {
                problems.insert(0, why);
                return Err(StepFailure::new(
                    "dependant",
                    format!("{} ({}): {}", d.name, d.kind.as_str(), problems.join("; ")),
                )
                .into());
            }
            // A hard dependant on its own: its old container again, the update stands.
            let name = d.name.clone();
            self.start_again(entry, None, &|o| o.name == name, Some(why.clone()))
                .await;
            if entry.dependants[i].state == DependantState::Untouched {
                self.set_dependant(entry, i, DependantState::Restored { reason: why })?;
            }
        }
        Ok(())
    }

    /// Recreates dependant `i` to refer to the new containers in `new_ids` (by name): on its
    /// new image, or with `own_image` on the one it ran. Returns its new id.
    async fn recreate_dependant(
        &self,
        entry: &mut Entry,
        i: usize,
        new_ids: &HashMap<String, String>,
        deadlines: &Deadlines,
        own_image: bool,
    ) -> Result<String, Interrupt> {
        let d = entry.dependants[i].clone();
        let fail = |step: &'static str| move |reason: String| StepFailure::new(step, reason);
        let old = self
            .inspect(&d.old_id)
            .await
            .ok_or_else(|| StepFailure::new("dependant", "its old container is gone".to_owned()))?;
        if old.state.as_ref().and_then(|s| s.running) == Some(true) {
            // A hard dependant ran on during the update; it stops only now.
            self.set_dependant(entry, i, DependantState::Stopping)?;
            self.stop_as_configured(&d.old_id)
                .await
                .map_err(failed("stop"))?;
            self.set_dependant(entry, i, DependantState::Stopped)?;
        }
        self.set_dependant(entry, i, DependantState::RenamingAside)?;
        self.rename(&d.old_id, &d.aside_name)
            .await
            .map_err(failed("rename"))?;
        self.faults.at(CrashPoint::AfterDependantRename).await?;

        let configured = old
            .config
            .as_ref()
            .and_then(|c| c.image.clone())
            .unwrap_or_default();
        let old_image_id = old.image.clone().unwrap_or_default();
        let (reference, moved) = match (&d.target, own_image) {
            (Some(target), false) => match split_pinned(target) {
                Some((pinned, Some(tag))) => {
                    self.tag(&pinned, &tag).await.map_err(fail("create"))?;
                    (tag, true)
                }
                Some((pinned, None)) => (pinned, true),
                None => (configured, false),
            },
            _ => (configured, false),
        };
        let named = self
            .docker
            .inspect_image(&reference)
            .await
            .ok()
            .and_then(|i| i.id);
        let image_id = if moved {
            named
                .clone()
                .ok_or_else(|| StepFailure::new("create", format!("{reference} is not here")))?
        } else {
            old_image_id.clone()
        };
        // The container keeps its reference (its tag), never an image id. When the tag names
        // another image now (the update moved it), it is lent to this container's image for
        // the create and given back right after; journaled, so a crash gives it back too.
        let tag_back =
            (named.as_deref() != Some(image_id.as_str()) && reference != image_id).then(|| {
                TagBack {
                    reference: reference.clone(),
                    image: named.clone().unwrap_or_default(),
                }
            });
        let old_image = self
            .old_image(Some(&old_image_id))
            .await
            .map_err(fail("create"))?;
        let mut plan = spec::derive(
            &old,
            &old_image,
            &reference,
            self.api,
            self.own_id.as_deref(),
        )
        .map_err(|e| StepFailure::new("create", e.to_string()))?;
        refer_to_new(&mut plan, entry, new_ids);
        self.set_dependant(
            entry,
            i,
            DependantState::Creating {
                tag_back: tag_back.clone(),
            },
        )?;
        if let Some(lent) = &tag_back {
            self.tag(&image_id, &lent.reference)
                .await
                .map_err(fail("create"))?;
        }
        let created = self.create(&plan, &entry.op_id).await;
        if let Some(lent) = &tag_back {
            self.give_tag_back(lent).await;
        }
        let new_id = created.map_err(failed("create"))?;
        self.set_dependant(
            entry,
            i,
            DependantState::Created {
                new_id: new_id.clone(),
            },
        )?;
        self.faults.at(CrashPoint::AfterDependantCreate).await?;
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
        if d.was_running {
            self.start(&new_id).await.map_err(failed("start"))?;
            self.health_gate(&new_id, deadlines, OnStop::AcceptRunning)
                .await?;
        }
        self.set_dependant(
            entry,
            i,
            DependantState::Passed {
                new_id: new_id.clone(),
                image_id,
                moved,
                reason: String::new(),
            },
        )?;
        info!(container = %entry.name, dependant = %d.name, kind = d.kind.as_str(), new = %new_id, "Dependant follows the new container.");
        Ok(new_id)
    }

    /// Takes dependant `i`'s replacement away (if this operation made one) and gives its old
    /// container its name back. Returns what could not be done.
    pub(crate) async fn undo_dependant(&self, entry: &mut Entry, i: usize) -> Vec<String> {
        let d = entry.dependants[i].clone();
        let mut problems = Vec::new();
        let replacement = match &d.state {
            DependantState::Created { new_id } | DependantState::Passed { new_id, .. } => {
                Some(new_id.clone())
            }
            _ => self.made_by(&d.name, &entry.op_id, &d.old_id).await,
        };
        if let Some(id) = replacement
            && let Err(e) = self.remove(&id).await
        {
            problems.push(format!("cannot remove its new container: {e}"));
        }
        if let DependantState::Creating {
            tag_back: Some(lent),
        } = &d.state
        {
            self.give_tag_back(lent).await;
        }
        match self.name_of(&d.old_id).await {
            Some(name) if name == d.name => {}
            Some(_) => {
                if let Err(e) = self.rename(&d.old_id, &d.name).await {
                    problems.push(format!("cannot rename its old container back: {e}"));
                }
            }
            None => problems.push("its old container is gone".into()),
        }
        // A stop that may still be under way stays recorded as such, so that whoever starts
        // it again waits for that stop first.
        let state = match d.state {
            DependantState::Stopping => DependantState::Stopping,
            DependantState::Untouched => DependantState::Untouched,
            _ if d.was_running => DependantState::Stopped,
            _ => DependantState::Untouched,
        };
        if let Err(e) = self.set_dependant(entry, i, state) {
            problems.push(e.reason);
        }
        problems
    }

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
    async fn remove_old(&self, entry: &Entry) -> Vec<String> {
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
    async fn keep_replacement(
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

/// The outcome with what the journal says of each dependant.
fn report_of(entry: &Entry, outcome: Outcome) -> Report {
    Report {
        outcome,
        dependants: entry.dependants.iter().map(DependantReport::of).collect(),
    }
}

/// Points a dependant's references to containers recreated in this operation (`new_ids`, by
/// name) at their new containers: `container:` namespace modes by id, legacy links and
/// `--volumes-from` by name (inspect shows a set-aside container under its aside name).
fn refer_to_new(plan: &mut CreatePlan, entry: &Entry, new_ids: &HashMap<String, String>) {
    // (old id, aside name, name, new id) of each recreated container.
    let mut moved: Vec<(&str, &str, &str, &str)> = Vec::new();
    if let Some(new_id) = new_ids.get(&entry.name) {
        moved.push((&entry.old_id, &entry.aside_name, &entry.name, new_id));
    }
    for d in &entry.dependants {
        if let Some(new_id) = new_ids.get(&d.name) {
            moved.push((&d.old_id, &d.aside_name, &d.name, new_id));
        }
    }
    let find = |reference: &str| {
        let r = reference.trim_start_matches('/');
        moved.iter().find(|(old_id, aside, name, _)| {
            r == *aside || r == *name || r == *old_id || (r.len() >= 12 && old_id.starts_with(r))
        })
    };
    let Some(hc) = plan.body.host_config.as_mut() else {
        return;
    };
    for mode in [&mut hc.network_mode, &mut hc.pid_mode, &mut hc.ipc_mode] {
        if let Some(value) = mode.as_mut()
            && let Some(reference) = value.strip_prefix("container:")
            && let Some((_, _, _, new_id)) = find(reference)
        {
            *value = format!("container:{new_id}");
        }
    }
    if let Some(links) = hc.links.as_mut() {
        for link in links.iter_mut() {
            if let Some((target, alias)) = link.split_once(':')
                && let Some((_, _, name, _)) = find(target)
            {
                *link = format!("{name}:{alias}");
            }
        }
    }
    if let Some(from) = hc.volumes_from.as_mut() {
        for source in from.iter_mut() {
            let (reference, mode) = match source.split_once(':') {
                Some((r, m)) => (r.to_owned(), format!(":{m}")),
                None => (source.clone(), String::new()),
            };
            if let Some((_, _, name, _)) = find(&reference) {
                *source = format!("{name}{mode}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::recreate::dependants::Kind;
    use bollard::models::{ContainerCreateBody, HostConfig};

    #[test]
    fn references_to_recreated_containers_point_at_the_new_ones() {
        let entry = Entry {
            op_id: "op-1".into(),
            name: "web".into(),
            old_id: "a".repeat(64),
            aside_name: "web-ouroboros-old-op-1".into(),
            was_running: true,
            target_image: "app:2".into(),
            dependants: vec![DependantEntry {
                name: "side".into(),
                old_id: "b".repeat(64),
                kind: Kind::Network,
                action: Action::Recreate,
                parent: "web".into(),
                was_running: true,
                target: None,
                aside_name: "side-ouroboros-old-op-1".into(),
                state: DependantState::Stopped,
            }],
            leftovers: Vec::new(),
            step: Step::Following {
                new_id: "n".repeat(64),
            },
        };
        let new_ids = HashMap::from([
            ("web".to_owned(), "n".repeat(64)),
            ("side".to_owned(), "s".repeat(64)),
        ]);
        let mut plan = CreatePlan {
            name: "tail".into(),
            body: ContainerCreateBody {
                host_config: Some(HostConfig {
                    network_mode: Some(format!("container:{}", "a".repeat(64))),
                    pid_mode: Some(format!("container:{}", &"b".repeat(64)[..12])),
                    ipc_mode: Some("shareable".into()),
                    links: Some(vec![
                        "web-ouroboros-old-op-1:db".into(),
                        "cache:cache".into(),
                    ]),
                    volumes_from: Some(vec![format!("{}:ro", "a".repeat(64)), "data".into()]),
                    ..HostConfig::default()
                }),
                ..ContainerCreateBody::default()
            },
            legacy_mac: None,
            extra_networks: Vec::new(),
            was_running: true,
            stop_signal: None,
            stop_timeout: None,
        };
        refer_to_new(&mut plan, &entry, &new_ids);
        let hc = plan.body.host_config.unwrap();
        assert_eq!(
            hc.network_mode,
            Some(format!("container:{}", "n".repeat(64)))
        );
        assert_eq!(hc.pid_mode, Some(format!("container:{}", "s".repeat(64))));
        assert_eq!(hc.ipc_mode.as_deref(), Some("shareable"));
        assert_eq!(
            hc.links,
            Some(vec!["web:db".to_owned(), "cache:cache".to_owned()])
        );
        assert_eq!(
            hc.volumes_from,
            Some(vec!["web:ro".to_owned(), "data".to_owned()])
        );
    }
}

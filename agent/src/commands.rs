//! Commands from the coordinator, with their progress and result sent back on the link.
//! Recreates of distinct containers run at the same time (the coordinator bounds how many per
//! host; the recreator keeps each container to one operation, see [`crate::recreate`]); a
//! self-update, a successor's take-over, a Swarm service update and a volume prune run alone,
//! after the operations in flight. A command outlives the link it came on: if the stream
//! breaks, the journal still records its end, and a repeated op id gets that stored result. The
//! containers that refer to the one updated (soft dependants included) are the recreate's own
//! business, journaled with it.

use std::sync::Arc;
use std::time::Duration;

use ouroboros_proto::v1 as pb;
use pb::agent_message::Kind;
use pb::recreate_result::Status;
use tokio::sync::{RwLock, mpsc};
use tracing::info;

use crate::engine::Engine;
use crate::handover::{End, Handover};
use crate::recreate::executor::{HealthGate, RecreateError, Recreator, Request};
use crate::recreate::gate::Hooks;
use crate::recreate::journal::SetAside;
use crate::recreate::pull::RegistryAuth;

/// Runs the coordinator's commands on this host.
pub struct CommandRunner {
    recreator: Recreator,
    /// For the inventory sent with each result.
    engine: Engine,
    /// Recreates share the host (read); what must run alone takes it whole (write), after
    /// every operation in flight.
    host: RwLock<()>,
    /// Self-updates, when the agent runs in a container.
    handover: Option<Handover>,
    /// Self-updates by an updater container (`up`).
    updater: Option<crate::updater::Updater>,
    /// The coordinator's verdicts at its hook points, for the operation in flight.
    pub verdicts: Arc<crate::verdicts::Verdicts>,
}

impl CommandRunner {
    pub fn new(
        recreator: Recreator,
        engine: Engine,
        handover: Option<Handover>,
        updater: Option<crate::updater::Updater>,
    ) -> Arc<Self> {
        Arc::new(Self {
            recreator,
            engine,
            host: RwLock::new(()),
            handover,
            updater,
            verdicts: Arc::default(),
        })
    }

    /// Self-updates of this agent, when it runs in a container.
    pub fn handover(&self) -> Option<&Handover> {
        self.handover.as_ref()
    }

    /// The old agent's wait for a successor, when the agent restarted during a hand-over; the
    /// outcome goes to the journal (the coordinator asks again with the same op id).
    pub async fn resume_handover(&self, record: crate::handover::Record) {
        let Some(handover) = &self.handover else {
            return;
        };
        let _alone = self.host.write().await;
        if let End::Answer(outcome) = handover.await_successor(&self.recreator, &record).await {
            self.record_handover(&record.op_id, &record.name, &outcome);
        }
    }

    /// The successor's part of a self-update, after it connected (the coordinator's hooks are
    /// asked on `tx`): the result to send, if it completed one. Err: this agent lost the
    /// hand-over and must stop.
    pub async fn take_over(
        &self,
        tx: &mpsc::Sender<pb::AgentMessage>,
    ) -> Result<Option<pb::CommandResult>, String> {
        let Some(handover) = &self.handover else {
            return Ok(None);
        };
        // Only a successor waits for the host's operations (an ordinary reconnect must not
        // wait behind a recreate in flight).
        let Some(op_id) = handover.successor_op() else {
            return Ok(None);
        };
        let _alone = self.host.write().await;
        let gate = handover
            .successor_hooks()
            .map(|deadline| self.verdicts.gate(tx.clone(), op_id.clone(), deadline));
        let outcome = handover.take_over(&self.recreator, gate.as_deref()).await?;
        Ok(outcome.map(|outcome| pb::CommandResult {
            op_id,
            recreate: Some(pb::RecreateResult::from(&outcome)),
            prune: None,
        }))
    }

    fn record_handover(
        &self,
        op_id: &str,
        name: &str,
        outcome: &crate::recreate::journal::Outcome,
    ) {
        let request = Request {
            op_id: op_id.to_owned(),
            container: name.to_owned(),
            ..Request::default()
        };
        if let Err(e) = self.recreator.record_done(&request, outcome) {
            tracing::warn!(op = %op_id, error = %e, "Cannot record the self-update's outcome in the journal.");
        }
    }

    /// Completes when no command runs (every one in flight ended).
    pub async fn idle(&self) {
        let _alone = self.host.write().await;
    }

    /// What the journal says about containers set aside, for the inventory.
    pub fn set_aside(&self) -> SetAside {
        self.recreator.journal().set_aside()
    }

    /// Runs a `Recreate` and sends its progress and result on `tx`. A stopping agent starts
    /// nothing and does not answer: the coordinator asks again, with the same op id, when
    /// the agent is back. Recreates run beside each other; the agent's own container (a
    /// self-update) waits until it is alone on the host.
    pub async fn recreate(&self, command: pb::Recreate, tx: mpsc::Sender<pb::AgentMessage>) {
        let shared = self.host.read().await;
        let op_id = command.op_id.clone();
        if self.recreator.is_stopping() || self.handing_over() {
            info!(op = %op_id, container = %command.container, "Recreate not started: the agent is stopping or handing over to its successor.");
            return;
        }
        info!(op = %op_id, container = %command.container, image = %command.image, "Recreate requested.");
        let asked = Asked {
            hooks: command
                .ask_hooks
                .then(|| hook_deadline(command.hook_deadline_ms)),
            cleanup: command.cleanup,
        };
        let request = Request {
            op_id: op_id.clone(),
            container: command.container,
            image: (!command.image.is_empty()).then_some(command.image),
            auth: command.auth.map(registry_auth),
            gate: (command.min_healthy_ms > 0 || command.healthy_deadline_ms > 0).then(|| {
                HealthGate {
                    min_healthy: Duration::from_millis(command.min_healthy_ms.max(0) as u64),
                    deadline: Duration::from_millis(command.healthy_deadline_ms.max(0) as u64),
                }
            }),
            soft_dependants: command.soft_dependants,
            dependant_images: command.dependant_images.into_iter().collect(),
            skip_pull: false,
            hooks: None,
        };
        if !self.is_own(&request).await {
            self.run_recreate(request, asked, &tx).await;
            return;
        }
        drop(shared);
        let _alone = self.host.write().await;
        if self.recreator.is_stopping() || self.handing_over() {
            info!(op = %op_id, "Self-update not started: the agent is stopping or handing over to its successor.");
            return;
        }
        if !self.self_update(&request, asked.hooks, &tx).await {
            // Answered from the journal after all.
            self.run_recreate(request, asked, &tx).await;
        }
    }

    /// Whether `request` is about the agent's own container (or the hand-over under way).
    async fn is_own(&self, request: &Request) -> bool {
        if self.updater_of(request).await.is_some() {
            return true;
        }
        match &self.handover {
            Some(handover) => handover.owns(&self.recreator, request).await.is_some(),
            None => false,
        }
    }

    /// The updater, when `request` is about the agent's own container and an updater container
    /// recreates it (`up`).
    async fn updater_of(&self, request: &Request) -> Option<&crate::updater::Updater> {
        let updater = self.updater.as_ref()?;
        let container = self.recreator.inspect(&request.container).await?;
        crate::own::same(
            container.id.as_deref().unwrap_or_default(),
            updater.own_id(),
        )
        .then_some(updater)
    }

    /// The agent's own container: a self-update (by an updater container, or a hand-over to a
    /// successor), answered on `tx` when it ends here. `false` when it is to run as an
    /// ordinary recreate (its outcome is in the journal already).
    async fn self_update(
        &self,
        request: &Request,
        hooks: Option<Duration>,
        tx: &mpsc::Sender<pb::AgentMessage>,
    ) -> bool {
        let op_id = request.op_id.clone();
        if let Some(updater) = self.updater_of(request).await {
            info!(op = %op_id, "This is the agent's own container: self-update by an updater container.");
            let wait =
                crate::recreate::executor::Deadlines::default().health + Duration::from_secs(60);
            if let crate::updater::Answer::Now(outcome) =
                updater.handle(&self.recreator, request, wait).await
            {
                let result = pb::RecreateResult::from(&outcome);
                self.answer(tx, op_id, result).await;
            }
            return true;
        }
        let Some(handover) = &self.handover else {
            return false;
        };
        match handover.owns(&self.recreator, request).await {
            // The hand-over under way: answered when it ends.
            Some(false) => true,
            Some(true)
                if self
                    .recreator
                    .journal()
                    .get(&op_id)
                    .ok()
                    .flatten()
                    .is_none() =>
            {
                info!(op = %op_id, "This is the agent's own container: self-update.");
                let report = progress_reporter(tx, &op_id);
                match handover
                    .start(&self.recreator, request, hooks, &report)
                    .await
                {
                    End::Taken | End::Interrupted => {}
                    End::Answer(outcome) => {
                        self.record_handover(&op_id, &request.container, &outcome);
                        let result = pb::RecreateResult::from(&outcome);
                        self.answer(tx, op_id, result).await;
                    }
                }
                true
            }
            // Answered from the journal, or not this agent's container (any more).
            _ => false,
        }
    }

    /// The recreate itself, with the cleanup of the old image after it, answered on `tx`.
    async fn run_recreate(
        &self,
        mut request: Request,
        asked: Asked,
        tx: &mpsc::Sender<pb::AgentMessage>,
    ) {
        let op_id = request.op_id.clone();
        // The coordinator has hooks: it is asked at each hook point of this operation.
        let gate = asked
            .hooks
            .map(|deadline| self.verdicts.gate(tx.clone(), op_id.clone(), deadline));
        request.hooks = gate.clone().map(Hooks);
        // The old image, for the cleanup after a successful update.
        let old_image = if asked.cleanup {
            crate::cleanup::image_of(self.recreator.docker(), &request.container).await
        } else {
            None
        };
        let report = progress_reporter(tx, &op_id);
        let ran = self.recreator.run(&request, &report).await;
        let result = match ran {
            Ok(done) => {
                let mut result = pb::RecreateResult::from(&done);
                if let (Status::Updated, Some(old)) = (result.status(), &old_image) {
                    report("cleanup");
                    let asked = match &gate {
                        Some(gate) => {
                            gate.ask(crate::recreate::gate::Ask {
                                point: crate::recreate::gate::BEFORE_IMAGE_CLEANUP,
                                container: request.container.clone(),
                                subject: old.clone(),
                            })
                            .await
                        }
                        None => Ok(()),
                    };
                    result.cleanup = match asked {
                        Ok(()) => {
                            crate::cleanup::remove_image_if_unused(
                                self.recreator.docker(),
                                old,
                                &result.image_id,
                            )
                            .await
                        }
                        Err(why) => format!("kept: {why}"),
                    };
                }
                result
            }
            Err(RecreateError::ShuttingDown) => {
                info!(op = %op_id, "Recreate not started: the agent is stopping.");
                return;
            }
            Err(error) => error_result(&error),
        };
        info!(op = %op_id, status = ?result.status(), reason = %result.reason, "Recreate finished.");
        self.answer(tx, op_id, result).await;
    }

    /// Runs an `UpdateService` (alone on the host, after the operations in flight) and
    /// sends its progress and result on `tx`. Refused when this host is not a Swarm manager,
    /// the service does not exist or the image is not `repo:tag@sha256:…`. A stopping agent
    /// starts nothing and does not answer; one that stops while the engine replaces the tasks
    /// answers interrupted (see [`crate::swarm::update`]).
    pub async fn update_service(
        &self,
        command: pb::UpdateService,
        tx: mpsc::Sender<pb::AgentMessage>,
    ) {
        let _alone = self.host.write().await;
        let op_id = command.op_id.clone();
        if self.recreator.is_stopping() || self.handing_over() {
            info!(op = %op_id, service = %command.service, "Service update not started: the agent is stopping or handing over to its successor.");
            return;
        }
        info!(op = %op_id, service = %command.service, image = %command.image, "Service update requested.");
        let request = crate::swarm::ServiceUpdate {
            op_id: op_id.clone(),
            service: command.service,
            image: command.image,
            auth: command.auth.map(registry_auth),
            deadline: if command.deadline_ms > 0 {
                Duration::from_millis(command.deadline_ms as u64)
            } else {
                crate::swarm::DEFAULT_DEADLINE
            },
        };
        let report = progress_reporter(&tx, &op_id);
        let result = match crate::swarm::update(&self.recreator, &request, &report).await {
            Ok(outcome) => pb::RecreateResult::from(&outcome),
            Err(RecreateError::ShuttingDown) => {
                info!(op = %op_id, "Service update not started: the agent is stopping.");
                return;
            }
            Err(error) => error_result(&error),
        };
        info!(op = %op_id, status = ?result.status(), reason = %result.reason, "Service update finished.");
        self.answer(&tx, op_id, result).await;
    }

    /// Sends `result` for `op_id`, after an inventory of the host as it is now.
    async fn answer(
        &self,
        tx: &mpsc::Sender<pb::AgentMessage>,
        op_id: String,
        result: pb::RecreateResult,
    ) {
        // The host as it is now goes first, so that the coordinator's view is current (no
        // container still set aside by this operation) when the answer arrives.
        match self.engine.inventory(|| self.set_aside()).await {
            Ok(inventory) => {
                let _ = tx
                    .send(pb::AgentMessage {
                        kind: Some(Kind::Inventory(inventory.into())),
                    })
                    .await;
            }
            Err(error) => {
                tracing::debug!(%error, "No inventory with the result; the next one follows.")
            }
        }
        let _ = tx
            .send(pb::AgentMessage {
                kind: Some(Kind::Result(pb::CommandResult {
                    op_id,
                    recreate: Some(result),
                    prune: None,
                })),
            })
            .await;
    }

    /// Whether the agent handed its host over to a successor (or is doing so): no command is
    /// taken meanwhile.
    fn handing_over(&self) -> bool {
        self.handover.as_ref().is_some_and(|h| *h.busy().borrow())
    }

    /// Runs a `PruneVolumes` (after any recreate in progress, so that no volume is caught
    /// between an old container and its replacement) and sends its result on `tx`.
    pub async fn prune_volumes(
        &self,
        command: pb::PruneVolumes,
        tx: mpsc::Sender<pb::AgentMessage>,
    ) {
        let _alone = self.host.write().await;
        if self.recreator.is_stopping() || self.handing_over() {
            info!(op = %command.op_id, "Volume prune not started: the agent is stopping or handing over to its successor.");
            return;
        }
        let (removed, failed) =
            crate::cleanup::prune_anonymous_volumes(self.recreator.docker(), self.recreator.api())
                .await;
        info!(op = %command.op_id, removed = removed.len(), failed = failed.len(), "Volume prune finished.");
        let _ = tx
            .send(pb::AgentMessage {
                kind: Some(Kind::Result(pb::CommandResult {
                    op_id: command.op_id,
                    recreate: None,
                    prune: Some(pb::PruneResult {
                        removed,
                        error: failed.join("; "),
                    }),
                })),
            })
            .await;
    }
}

/// Sends each step of operation `op_id` as progress on `tx`.
fn progress_reporter(
    tx: &mpsc::Sender<pb::AgentMessage>,
    op_id: &str,
) -> impl Fn(&'static str) + Send + Sync + use<> {
    let progress = tx.clone();
    let op_id = op_id.to_owned();
    move |step: &'static str| {
        let message = pb::AgentMessage {
            kind: Some(Kind::Progress(pb::CommandProgress {
                op_id: op_id.clone(),
                step: step.to_owned(),
            })),
        };
        // Progress is informative: never wait for the link because of it.
        let _ = progress.try_send(message);
    }
}

/// What a `Recreate` asks for besides the request itself.
struct Asked {
    /// The coordinator has hooks: each verdict is awaited this long.
    hooks: Option<Duration>,
    /// Remove the old image after a successful update.
    cleanup: bool,
}

/// How long the agent waits for the coordinator's verdict at each hook point of a `Recreate`
/// (its `hook_deadline_ms`).
fn hook_deadline(ms: i64) -> Duration {
    Duration::from_millis(ms.max(1000) as u64)
}

/// The coordinator's registry credentials, as the agent passes them to the engine.
fn registry_auth(a: pb::RegistryAuth) -> RegistryAuth {
    RegistryAuth {
        username: a.username,
        password: a.password,
        identity_token: a.identity_token,
        registry_token: a.registry_token,
    }
}

/// The answer to an operation the agent could not run (journal failure, still in progress).
fn error_result(error: &RecreateError) -> pb::RecreateResult {
    let mut r = pb::RecreateResult {
        reason: error.to_string(),
        ..Default::default()
    };
    r.set_status(Status::Error);
    r
}

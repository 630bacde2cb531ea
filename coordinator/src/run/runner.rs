//! Runs a rollout: asks [`plan`] what to do, writes each state change to the store before the
//! command it leads to is sent, sends the commands and feeds the agents' answers back. A
//! rollout read back after a restart continues where it stopped: a target caught between its
//! command and its answer gets the same op id again, which an agent answers with its stored
//! outcome instead of doing the work twice (and does now if the command never reached it).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::fleet::Fleet;
use crate::plan::outcome::{DependantAction, Status, UpdateResult};
use crate::plan::rollout::{
    Action, Cancel, HistoryEntry, Observation, Rollout, RolloutState, TargetState, after_revert,
    after_update, next_wake, plan,
};
use crate::plan::window::Windows;
use crate::run::clock::{Clock, WallClock};
use crate::server::dispatch::Commands;
use crate::telemetry::metrics::Metrics;

mod cancel;
mod hooks;
mod own;
mod send;
pub use cancel::{CancelError, CancelTaken};
pub use hooks::recreate_with_hooks;

/// How often the runner looks again without an answer (hosts connect and go).
const TICK: Duration = Duration::from_secs(1);
/// Pause between attempts to reach an agent that is away.
const RESEND: Duration = Duration::from_secs(1);

/// One agent answer for target `index`.
struct Answer {
    index: usize,
    op_id: String,
    revert: bool,
    result: UpdateResult,
    /// The hooks that ran around it (`point/file: end`).
    hooks: Vec<String>,
}

/// Runs rollouts on the fleet.
pub struct Runner {
    fleet: Arc<Fleet>,
    commands: Arc<dyn Commands>,
    /// Remove old images after updates (CLEANUP).
    cleanup_images: bool,
    /// The latest state of the rollout being run, for watchers.
    pub progress: watch::Sender<Option<Arc<Rollout>>>,
    /// Told when a rollout pauses.
    pub notifiers: std::sync::Mutex<crate::notify::Notifiers>,
    next_id: AtomicU64,
    /// Rollouts being run now, and cancels asked for them (see [`Runner::cancel`]).
    active: std::sync::Mutex<Active>,
    clock: Arc<dyn Clock>,
    /// Where ended updates are counted.
    metrics: Metrics,
    /// Operators' scripts around each update.
    hooks: Arc<crate::hooks::Hooks>,
}

/// What the runner is running, and the cancels waiting to be picked up.
#[derive(Default)]
struct Active {
    running: std::collections::BTreeSet<String>,
    cancels: BTreeMap<String, Cancel>,
}

/// Targets that target `index`'s operation moved to their new image along with it (dependants
/// recreated by it, from [`crate::plan::rollout::Target::dependant_images`]): they become updated
/// without a command of their own (counted in `metrics`); returns them with their results.
fn moved_with(
    rollout: &mut Rollout,
    index: usize,
    result: &UpdateResult,
    now: i64,
    metrics: &Metrics,
) -> Vec<(usize, UpdateResult)> {
    let parent = rollout.targets[index].clone();
    let mut moved = Vec::new();
    for d in result
        .dependants
        .iter()
        .filter(|d| d.action == DependantAction::Updated)
    {
        if !parent.dependant_images.contains_key(&d.container) {
            continue;
        }
        let Some(i) = rollout.targets.iter().position(|t| {
            t.host == parent.host && t.container == d.container && t.state == TargetState::Pending
        }) else {
            continue;
        };
        rollout.targets[i].started_ms = now;
        rollout.set(
            i,
            TargetState::Updated {
                at_ms: now,
                already_current: false,
            },
            now,
        );
        metrics.update_done(&parent.host, &d.container, "updated");
        moved.push((
            i,
            UpdateResult {
                new_id: d.new_id.clone(),
                image_id: d.image_id.clone(),
                ..UpdateResult::with(
                    Status::Updated,
                    format!(
                        "updated with {}, whose operation recreated it",
                        parent.container
                    ),
                )
            },
        ));
    }
    moved
}

impl Runner {
    pub fn new(
        fleet: Arc<Fleet>,
        commands: Arc<dyn Commands>,
        cleanup_images: bool,
        metrics: Metrics,
    ) -> Self {
        Self {
            fleet,
            commands,
            cleanup_images,
            progress: watch::channel(None).0,
            notifiers: std::sync::Mutex::new(crate::notify::Notifiers::default()),
            next_id: AtomicU64::new(0),
            active: std::sync::Mutex::default(),
            clock: Arc::new(WallClock),
            metrics,
            hooks: Arc::default(),
        }
    }

    /// Runs `hooks` around each update it sends.
    pub fn with_hooks(mut self, hooks: Arc<crate::hooks::Hooks>) -> Self {
        self.hooks = hooks;
        self
    }

    /// Reads time from `clock` instead of the wall clock.
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    fn active(&self) -> std::sync::MutexGuard<'_, Active> {
        self.active.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A fresh rollout id, ordered by time.
    pub fn new_id(&self) -> String {
        let n = self.next_id.fetch_add(1, Ordering::Relaxed);
        format!("r-{}-{n}", self.clock.now_ms())
    }

    /// Applies one agent's answer to `rollout` (its target's new state, metrics, known-bad
    /// digests, the targets it moved with it); returns the history entries to store with it.
    /// A late answer (to a command the target no longer waits for) changes nothing.
    fn take_answer(
        &self,
        rollout: &mut Rollout,
        mut answer: Answer,
        senders: &mut BTreeMap<usize, JoinHandle<()>>,
        results: &mut BTreeMap<usize, UpdateResult>,
    ) -> Vec<HistoryEntry> {
        // Only the answer to what the target waits for now counts (a late answer
        // to a timed-out command does not).
        let expected = match &rollout.targets[answer.index].state {
            TargetState::Dispatched { op_id, .. } | TargetState::Reverting { op_id, .. } => {
                op_id == &answer.op_id
            }
            _ => false,
        };
        if !expected {
            warn!(rollout = %rollout.id, op = %answer.op_id, "Ignoring a late answer.");
            return Vec::new();
        }
        senders.remove(&answer.index);
        self.gone_is_not_a_failure(&rollout.targets[answer.index], &mut answer);
        let now = self.clock.now_ms();
        let status = answer.result.status;
        let reason = answer.result.reason.clone();
        let state = if answer.revert {
            after_revert(status, &reason, now)
        } else {
            after_update(status, &reason, now)
        };
        let t = &rollout.targets[answer.index];
        if status.left_alone() {
            info!(rollout = %rollout.id, host = %t.host, container = %t.container, status = status.name(), reason = %reason, "Target left as it is (vetoed by a hook, or the container is gone).");
        } else if status.succeeded() {
            info!(rollout = %rollout.id, host = %t.host, container = %t.container, status = status.name(), "Target answered.");
        } else {
            warn!(rollout = %rollout.id, host = %t.host, container = %t.container, status = status.name(), reason = %reason, "Target failed.");
        }
        let outcome = match (answer.revert, status.succeeded()) {
            (true, true) => "reverted",
            (true, false) => "revert-failed",
            (false, _) => status.name(),
        };
        self.metrics.update_done(&t.host, &t.container, outcome);
        let canary_was_done = rollout.canary_done_ms > 0;
        for line in &answer.hooks {
            rollout.targets[answer.index]
                .transitions
                .push((now, format!("hook {line}")));
        }
        rollout.set(answer.index, state, now);
        if !canary_was_done && rollout.canary_done_ms > 0 && rollout.policy.canary_wait_ms > 0 {
            info!(rollout = %rollout.id, wait_s = rollout.policy.canary_wait_ms / 1000, "Canary hosts done; the other hosts start once the canary wait has passed without a failure.");
        }
        self.remember_outcome(rollout, answer.index, now);
        let mut entries = vec![rollout.targets[answer.index].history(&rollout.id)];
        if !answer.revert {
            for (i, result) in moved_with(rollout, answer.index, &answer.result, now, &self.metrics)
            {
                entries.push(rollout.targets[i].history(&rollout.id));
                self.remember_outcome(rollout, i, now);
                results.insert(i, result);
            }
        }
        for d in &answer.result.dependants {
            if matches!(
                d.action,
                DependantAction::Failed | DependantAction::Restored
            ) {
                warn!(rollout = %rollout.id, host = %rollout.targets[answer.index].host, container = %rollout.targets[answer.index].container, dependant = %d.container, kind = %d.kind, action = d.action.name(), reason = %d.reason, "A dependant did not follow the update.");
            }
        }
        self.after_self_update(&rollout.targets[answer.index], &answer.result);
        results.insert(answer.index, answer.result);
        entries
    }

    /// An update refused because the container no longer exists (removed since the plan; the
    /// agent's inventory, sent before its answer, no longer lists it) is `gone`, not a failure:
    /// a fleet whose containers come and go must not pause its rollouts over them.
    fn gone_is_not_a_failure(&self, t: &crate::plan::rollout::Target, answer: &mut Answer) {
        if answer.revert || t.service || answer.result.status != Status::Refused {
            return;
        }
        let Ok(host) = ouroboros_shared::host::HostName::parse(&t.host) else {
            return;
        };
        let listed = self
            .fleet
            .containers(Some(&host))
            .map(|cs| cs.iter().any(|(_, c)| c.name == t.container));
        if listed == Some(false) {
            answer.result.status = Status::Gone;
            answer.result.reason = format!(
                "{} no longer exists on {}: {}",
                t.container, t.host, answer.result.reason
            );
        }
    }

    /// Known-bad digests: a target whose image failed (or was sent back) marks its digest for
    /// its container; one that runs its target image now clears the mark.
    fn remember_outcome(&self, rollout: &Rollout, index: usize, now: i64) {
        let t = &rollout.targets[index];
        let key = format!("{}/{}", t.host, t.container);
        let change = match &t.state {
            TargetState::Updated { .. } => {
                if !self.fleet.bad_digests().contains_key(&key) {
                    return;
                }
                None
            }
            _ => match rollout.bad_digest(t, now) {
                Some(bad) => {
                    info!(host = %t.host, container = %t.container, digest = %bad.digest, outcome = %bad.outcome, "Known-bad digest: scheduled cycles will not try it on this container again.");
                    Some(bad)
                }
                None => return,
            },
        };
        self.fleet.set_bad_digests(BTreeMap::from([(key, change)]));
    }

    /// Writes `rollout` (and outcomes) and waits until it is on disk; while the store fails,
    /// keeps trying: nothing may be sent before its state is stored.
    async fn persist(&self, rollout: &Rollout, history: Vec<HistoryEntry>) {
        let mut history = history;
        // One copy, shared by the store writer and the watchers (a 5,000-target rollout is
        // some MiB, stored after every batch of answers).
        let shared = Arc::new(rollout.clone());
        loop {
            let h = std::mem::take(&mut history);
            if self.fleet.store_rollout(shared.clone(), h).await {
                let _ = self.progress.send(Some(shared));
                return;
            }
            warn!(rollout = %rollout.id, "Cannot store the rollout; retrying before going on.");
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// Runs `rollout` until it has ended or is paused with nothing in flight. Returns it with
    /// the agents' last answers by target.
    pub async fn run(
        &self,
        mut rollout: Rollout,
        windows: &Windows,
    ) -> (Rollout, BTreeMap<usize, UpdateResult>) {
        {
            let mut active = self.active();
            active.running.insert(rollout.id.clone());
            // A cancel stored while nobody ran it.
            if rollout.cancel.is_none()
                && let Ok(Some(stored)) = self.fleet.rollout(&rollout.id)
                && let Some(cancel) = stored.cancel
            {
                rollout.cancel = Some(cancel);
            }
        }
        let result = self.run_registered(rollout, windows).await;
        self.active().running.remove(&result.0.id);
        result
    }

    async fn run_registered(
        &self,
        mut rollout: Rollout,
        windows: &Windows,
    ) -> (Rollout, BTreeMap<usize, UpdateResult>) {
        let (answers_tx, mut answers) = mpsc::channel::<Answer>(64);
        let mut senders: BTreeMap<usize, JoinHandle<()>> = BTreeMap::new();
        let mut results: BTreeMap<usize, UpdateResult> = BTreeMap::new();
        // Picked up after a restart: what was in flight is asked again, with its op id and a
        // fresh deadline (the agent may have finished long ago, or never got the command).
        let now = self.clock.now_ms();
        for i in 0..rollout.targets.len() {
            let (op_id, revert) = match &rollout.targets[i].state {
                TargetState::Dispatched { op_id, .. } => (op_id.clone(), false),
                TargetState::Reverting { op_id, .. } => (op_id.clone(), true),
                _ => continue,
            };
            let state = if revert {
                TargetState::Reverting {
                    op_id: op_id.clone(),
                    at_ms: now,
                }
            } else {
                TargetState::Dispatched {
                    op_id: op_id.clone(),
                    at_ms: now,
                }
            };
            rollout.targets[i].state = state;
            info!(rollout = %rollout.id, host = %rollout.targets[i].host, container = %rollout.targets[i].container, op = %op_id, "Resuming: asking the agent for the outcome of an operation in flight.");
            senders.insert(
                i,
                self.send(&rollout, i, (op_id, revert, true), answers_tx.clone()),
            );
        }
        loop {
            let now = self.clock.now_ms();
            if let Some(cancel) = self.active().cancels.remove(&rollout.id) {
                info!(rollout = %rollout.id, revert = cancel.revert, reason = %cancel.reason, "Rollout cancelled by the operator.");
                rollout.cancel = Some(cancel);
                rollout.updated_ms = now;
            }
            let ready: std::collections::HashSet<String> = self
                .fleet
                .links()
                .into_iter()
                .filter(|l| l.connected && l.reported)
                .map(|l| l.host)
                .collect();
            let connected = |host: &str| ready.contains(host);
            let observation = Observation {
                now_ms: now,
                connected: &connected,
                windows,
            };
            let mut actions = plan(&rollout, &observation);
            // The operator paused updates: nothing new starts; what is in flight finishes.
            if rollout.state == RolloutState::Running
                && rollout.cancel.is_none()
                && let Some(why) = self.fleet.paused()
            {
                actions.retain(|a| matches!(a, Action::TimedOut(_)));
                actions.push(Action::Become(RolloutState::Paused {
                    reason: crate::fleet::paused_text(&why),
                }));
            }
            let mut history = Vec::new();
            let mut to_send = Vec::new();
            for action in &actions {
                match action {
                    Action::Dispatch(i) | Action::Revert(i) => {
                        let revert = matches!(action, Action::Revert(_));
                        let op_id = self.commands.new_op_id();
                        rollout.targets[*i].op_id.clone_from(&op_id);
                        let state = if revert {
                            TargetState::Reverting {
                                op_id: op_id.clone(),
                                at_ms: now,
                            }
                        } else {
                            TargetState::Dispatched {
                                op_id: op_id.clone(),
                                at_ms: now,
                            }
                        };
                        rollout.set(*i, state, now);
                        to_send.push((*i, op_id, revert));
                    }
                    Action::TimedOut(i) => {
                        if let Some(sender) = senders.remove(i) {
                            sender.abort();
                        }
                        let reverting =
                            matches!(rollout.targets[*i].state, TargetState::Reverting { .. });
                        let reason = format!(
                            "no answer from host {} within the progress deadline ({} s)",
                            rollout.targets[*i].host,
                            rollout.policy.progress_deadline_ms / 1000
                        );
                        let state = if reverting {
                            TargetState::RevertFailed { reason }
                        } else {
                            TargetState::Failed {
                                reason,
                                outcome: "timeout".into(),
                            }
                        };
                        self.metrics.update_done(
                            &rollout.targets[*i].host,
                            &rollout.targets[*i].container,
                            if reverting {
                                "revert-failed"
                            } else {
                                "timeout"
                            },
                        );
                        rollout.set(*i, state, now);
                        history.push(rollout.targets[*i].history(&rollout.id));
                    }
                    Action::Abandon(i) => {
                        let reason = format!(
                            "host {} away for longer than the progress deadline ({} s)",
                            rollout.targets[*i].host,
                            rollout.policy.progress_deadline_ms / 1000
                        );
                        let state = if rollout.targets[*i].state == TargetState::Pending {
                            TargetState::Skipped { reason }
                        } else {
                            TargetState::RevertFailed { reason }
                        };
                        rollout.set(*i, state, now);
                        history.push(rollout.targets[*i].history(&rollout.id));
                    }
                    Action::Cancel(i) => {
                        let reason = rollout
                            .cancel
                            .as_ref()
                            .map_or_else(String::new, |c| c.reason.clone());
                        rollout.set(*i, TargetState::Cancelled { reason }, now);
                        self.remember_outcome(&rollout, *i, now);
                        history.push(rollout.targets[*i].history(&rollout.id));
                    }
                    Action::Become(state) => {
                        info!(rollout = %rollout.id, state = state.name(), "Rollout state changes.");
                        if let RolloutState::Cancelled { reason } = state {
                            let notifiers = self
                                .notifiers
                                .lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .clone();
                            notifiers.send(crate::notify::Message {
                                event: "rollout-cancelled",
                                kind: crate::notify::Kind::Warning,
                                title: format!("Ouroboros: rollout {} cancelled", rollout.id),
                                body: format!(
                                    "{reason}. {} target(s) updated before, {} cancelled.",
                                    rollout
                                        .targets
                                        .iter()
                                        .filter(|t| matches!(t.state, TargetState::Updated { .. }))
                                        .count(),
                                    rollout
                                        .targets
                                        .iter()
                                        .filter(|t| matches!(
                                            t.state,
                                            TargetState::Cancelled { .. }
                                        ))
                                        .count()
                                ),
                            });
                        }
                        if let RolloutState::Paused { reason } = state {
                            let notifiers = self
                                .notifiers
                                .lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .clone();
                            notifiers.send(crate::notify::Message {
                                event: "rollout-paused",
                                kind: crate::notify::Kind::Warning,
                                title: format!("Ouroboros: rollout {} paused", rollout.id),
                                body: format!(
                                    "{reason}. `ouroboros-coordinator resume` lets it go on."
                                ),
                            });
                        }
                        rollout.state = state.clone();
                        rollout.updated_ms = now;
                        if matches!(state, RolloutState::RolledBack { .. }) {
                            // Its digests are taken back: those not started are not tried
                            // again by the next cycle either.
                            for i in 0..rollout.targets.len() {
                                self.remember_outcome(&rollout, i, now);
                            }
                        }
                    }
                }
            }
            if !actions.is_empty() {
                // Stored before anything it leads to is sent.
                self.persist(&rollout, history).await;
                self.before_self_updates(&rollout, &to_send).await;
                for (i, op_id, revert) in to_send {
                    senders.insert(
                        i,
                        self.send(&rollout, i, (op_id, revert, false), answers_tx.clone()),
                    );
                }
            }
            let in_flight = rollout.targets.iter().any(|t| !t.state.is_terminal());
            let waiting_for_answers = rollout.targets.iter().any(|t| {
                matches!(
                    t.state,
                    TargetState::Dispatched { .. } | TargetState::Reverting { .. }
                )
            });
            let cancelling = rollout.cancel.is_some() && !rollout.state.is_ended();
            if !rollout.state.is_active() && !waiting_for_answers && !cancelling {
                break;
            }
            if !actions.is_empty() && in_flight {
                // Plan again at once: one change may allow the next.
                continue;
            }
            let wake = next_wake(&rollout, &observation)
                .map(|t| Duration::from_millis((t - now).max(0) as u64))
                .unwrap_or(TICK)
                .min(TICK);
            tokio::select! {
                Some(answer) = answers.recv() => {
                    // Every answer already here is taken before the one write: under a wide
                    // rollout answers come faster than a whole rollout can be stored each.
                    let mut entries = self.take_answer(&mut rollout, answer, &mut senders, &mut results);
                    while let Ok(answer) = answers.try_recv() {
                        entries.extend(self.take_answer(&mut rollout, answer, &mut senders, &mut results));
                    }
                    self.persist(&rollout, entries).await;
                }
                () = tokio::time::sleep(wake) => {}
            }
        }
        for (_, sender) in senders {
            sender.abort();
        }
        (rollout, results)
    }
}

#[cfg(test)]
#[path = "runner_tests.rs"]
mod tests;

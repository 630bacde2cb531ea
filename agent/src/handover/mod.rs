//! Self-update of the agent: the hand-over from the running agent (the *old* one) to its
//! successor container, on the same data volume and with the same identity.
//!
//! A `Recreate` of the agent's own container comes here instead of the recreate sequence
//! (which cannot stop the process that runs it). The steps, each recoverable:
//!
//! 1. The old agent pulls the new image and derives the successor's configuration from its own
//!    container, exactly as a recreate would (same volumes, socket, environment, restart policy).
//! 2. It writes the record (`DATA_DIR/handover.json`: op id, both names, the deadline), then
//!    creates the successor as `NAME-ouroboros-next-OP`, records its id and starts it. From now
//!    on its link does not reconnect: the host's connection is the successor's to take.
//! 3. The successor finds the record naming it, connects to the coordinator with the same
//!    certificate (`Hello.handover_op_id`), and after the coordinator's `Welcome` claims the
//!    hand-over. The claim is the decision file (`handover.decision`), created once and
//!    atomically (a hard link): `taken` by the successor or `abandoned` by the old agent,
//!    whichever comes first; the other side obeys it.
//! 4. Taken: the successor stops and removes the old agent's container, takes the original name,
//!    records the outcome in the journal (a repeated op id is answered from it, as for every
//!    recreate) and clears the record. When the coordinator has hooks, the successor asks it at
//!    `before_self_cleanup` before it claims (a veto is the decision `vetoed`: the old agent
//!    keeps the host, removes the successor and answers `vetoed`) and tells it
//!    `after_self_cleanup` once it holds the original name.
//! 5. Abandoned (the successor exited, or did not claim within the deadline): the old agent
//!    removes the successor, clears the record, answers "rolled back" and reconnects.
//!
//! A crash or kill anywhere leaves the record: at its next start the old agent goes on waiting
//! for the decision (until the deadline), the successor goes on taking over, and a container
//! named as a successor that no record names is removed by the old agent (or, being that
//! container, exits without connecting).

use std::path::PathBuf;
use std::time::Duration;

use futures_util::StreamExt;
use ouroboros_shared::time_fmt::now_unix_ms;
use tokio::sync::watch;
use tracing::{error, info, warn};

mod files;

pub use files::{Decision, Files, Record};

use crate::own;
use crate::recreate::executor::{Recreator, Request};
use crate::recreate::gate::{AFTER_SELF_CLEANUP, Ask, BEFORE_SELF_CLEANUP, HookGate};
use crate::recreate::journal::Outcome;
use crate::recreate::pull::split_pinned;
use crate::recreate::{short, spec};

/// The record of the hand-over under way, in the data dir.
pub const RECORD_FILE: &str = "handover.json";
/// The decision, created once: `taken` or `abandoned`.
pub const DECISION_FILE: &str = "handover.decision";
/// What a successor's temporary name carries: `NAME-ouroboros-next-OP`.
pub const NEXT_MARK: &str = "-ouroboros-next-";
/// How long the successor has to connect and claim the hand-over, by default.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(120);
const POLL: Duration = Duration::from_millis(500);

/// How a self-update ended, for the old agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum End {
    /// The successor took over: this agent answers nothing more and waits to be stopped.
    Taken,
    /// The answer (rolled back, refused, already current), also kept in the journal.
    Answer(Outcome),
    /// The agent is stopping; the hand-over stays as it is (the successor may still take
    /// over, or the next start goes on waiting).
    Interrupted,
}

/// What a hand-over left at the agent's start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found {
    Nothing,
    /// This agent is the old one and the hand-over is still undecided: wait on.
    Old(Record),
    /// This agent is the old one and the successor took over: stay off the link.
    Retired,
    /// This agent is the successor: take over once connected.
    Successor(Record),
    /// This agent is a successor of a hand-over that is over: it must not connect.
    Orphan(String),
}

/// The agent's side of self-updates.
pub struct Handover {
    files: Files,
    own_id: String,
    timeout: Duration,
    /// True while a hand-over is under way and for good once the successor took over: the
    /// link does not reconnect meanwhile (the host's connection is the successor's).
    busy: watch::Sender<bool>,
    /// The hand-over this agent (a successor) completes after it connects.
    successor: std::sync::Mutex<Option<Record>>,
    /// Fault injection for tests: hang at this step (after telling `reached`), to be aborted
    /// like a killed agent.
    pause: Option<(Step, std::sync::Arc<tokio::sync::Notify>)>,
}

/// The steps of a hand-over where a test can stop it (see [`Handover::with_pause`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Old agent: the record is written, no successor exists yet.
    Recorded,
    /// Old agent: the successor is created (and recorded), not started.
    Created,
    /// Old agent: the successor runs; waiting for the decision.
    Started,
    /// Successor: the hand-over is claimed; the old agent still exists.
    Claimed,
    /// Successor: the old agent is removed; the name is not taken yet.
    OldRemoved,
}

impl Handover {
    pub fn new(data_dir: impl Into<PathBuf>, own_id: String, timeout: Duration) -> Self {
        Self {
            files: Files::new(data_dir),
            own_id,
            timeout,
            busy: watch::channel(false).0,
            successor: std::sync::Mutex::new(None),
            pause: None,
        }
    }

    /// Hangs at `step` after notifying `reached` (tests abort the task there, as a SIGKILL
    /// would end the agent).
    pub fn with_pause(mut self, step: Step, reached: std::sync::Arc<tokio::sync::Notify>) -> Self {
        self.pause = Some((step, reached));
        self
    }

    async fn at(&self, step: Step) {
        if let Some((pause, reached)) = &self.pause
            && *pause == step
        {
            reached.notify_one();
            std::future::pending::<()>().await;
        }
    }

    pub fn own_id(&self) -> &str {
        &self.own_id
    }

    /// Follows whether a hand-over holds the link.
    pub fn busy(&self) -> watch::Receiver<bool> {
        self.busy.subscribe()
    }

    /// The op id a successor announces in its `Hello`, until it has taken over.
    pub fn successor_op(&self) -> Option<String> {
        self.lock_successor().as_ref().map(|r| r.op_id.clone())
    }

    /// How long a successor waits for each hook verdict, when the coordinator has hooks.
    pub fn successor_hooks(&self) -> Option<Duration> {
        self.lock_successor()
            .as_ref()
            .and_then(|r| r.hook_deadline_ms)
            .map(Duration::from_millis)
    }

    fn lock_successor(&self) -> std::sync::MutexGuard<'_, Option<Record>> {
        self.successor.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether `request` is in this agent's hands: its own container, or the hand-over under
    /// way (which is not answered until it ends).
    pub async fn owns(&self, recreator: &Recreator, request: &Request) -> Option<bool> {
        if let Some(record) = self.files.read()
            && record.op_id == request.op_id
        {
            return Some(false);
        }
        let target = recreator.inspect(&request.container).await?;
        own::same(target.id.as_deref().unwrap_or_default(), &self.own_id).then_some(true)
    }

    /// Runs the old agent's part of a self-update to `request.image`; `hooks`: the coordinator
    /// has hooks, and each verdict is awaited this long (the successor asks them).
    pub async fn start(
        &self,
        recreator: &Recreator,
        request: &Request,
        hooks: Option<Duration>,
        report: &(dyn Fn(&'static str) + Send + Sync),
    ) -> End {
        let refused = |reason: String| End::Answer(Outcome::Refused { reason });
        if let Some(other) = self.files.read() {
            return refused(format!(
                "self-update {} is still under way on this host",
                other.op_id
            ));
        }
        // A decision left without its record is stale (see `Files::clear`).
        self.files.clear();
        report("prepare");
        let Some(old) = recreator.inspect(&self.own_id).await else {
            return refused(format!(
                "cannot inspect the agent's own container {}",
                self.own_id
            ));
        };
        let configured = old.config.as_ref().and_then(|c| c.image.clone());
        let Some(target) = request.image.clone().or(configured) else {
            return refused("no image to update the agent to".into());
        };
        let (pulled, tag_to) = match split_pinned(&target) {
            Some((pinned, tag)) => (pinned, tag),
            None => (target.clone(), None),
        };
        report("pull");
        if let Err(reason) = recreator.pull(&pulled, request.auth.as_ref()).await {
            return if recreator.is_stopping() {
                End::Interrupted
            } else {
                refused(reason)
            };
        }
        let new_image = match recreator.docker().inspect_image(&pulled).await {
            Ok(i) => i,
            Err(e) => return refused(format!("cannot inspect image {pulled}: {e}")),
        };
        let image_id = new_image.id.clone().unwrap_or_default();
        if old.image.as_deref() == Some(image_id.as_str()) {
            return End::Answer(Outcome::AlreadyCurrent);
        }
        let old_image = match recreator.old_image(old.image.as_deref()).await {
            Ok(i) => i,
            Err(reason) => return refused(reason),
        };
        let reference = match tag_to {
            Some(tag) => {
                if let Err(reason) = recreator.tag(&pulled, &tag).await {
                    return refused(reason);
                }
                tag
            }
            None => pulled,
        };
        // The successor is what a recreate would make of this container (the refusal of the
        // agent's own container does not apply: this is that case).
        let mut plan = match spec::derive(&old, &old_image, &reference, recreator.api(), None) {
            Ok(plan) => plan,
            Err(e) => return refused(e.to_string()),
        };
        let name = plan.name.clone();
        plan.name = format!("{name}{NEXT_MARK}{}", short(&request.op_id));
        let mut record = Record {
            op_id: request.op_id.clone(),
            old_id: old.id.clone().unwrap_or_default(),
            name,
            successor_name: plan.name.clone(),
            successor_id: None,
            image: reference,
            image_id,
            deadline_unix_ms: now_unix_ms() + self.timeout.as_millis() as i64,
            hook_deadline_ms: hooks.map(|d| d.as_millis() as u64),
        };
        if let Err(e) = self.files.write(&record) {
            return refused(format!("cannot write the hand-over record: {e}"));
        }
        self.at(Step::Recorded).await;
        report("create");
        self.busy.send_replace(true);
        let created = recreator.create(&plan, &request.op_id).await;
        let id = match created {
            Ok(id) => id,
            Err(e) => {
                return self
                    .give_up(
                        recreator,
                        &record,
                        format!("cannot create the successor: {e}"),
                    )
                    .await;
            }
        };
        record.successor_id = Some(id.clone());
        if let Err(e) = self.files.write(&record) {
            return self
                .give_up(
                    recreator,
                    &record,
                    format!("cannot write the hand-over record: {e}"),
                )
                .await;
        }
        self.at(Step::Created).await;
        report("start");
        if let Err(e) = recreator.start(&id).await {
            return self
                .give_up(
                    recreator,
                    &record,
                    format!("cannot start the successor: {e}"),
                )
                .await;
        }
        info!(op = %record.op_id, successor = %record.successor_name, image = %record.image, "Self-update: successor agent started; waiting for it to take over.");
        report("handover");
        self.at(Step::Started).await;
        self.await_successor(recreator, &record).await
    }

    /// The old agent waits for the decision; the successor exiting, or the deadline, makes it
    /// abandon the hand-over.
    pub async fn await_successor(&self, recreator: &Recreator, record: &Record) -> End {
        self.busy.send_replace(true);
        loop {
            match self.files.decision(&record.op_id) {
                Some(Decision::Taken) => return self.taken(record),
                Some(Decision::Abandoned | Decision::Vetoed) => {
                    return self
                        .give_up(recreator, record, "the hand-over was abandoned".into())
                        .await;
                }
                None => {}
            }
            // The record goes only when a successor finished taking over (it clears the
            // decision with it): this agent is the old one, gone already for the engine.
            if self.files.read().is_none_or(|r| r.op_id != record.op_id) {
                return self.taken(record);
            }
            if recreator.is_stopping() {
                info!(op = %record.op_id, "Stopping during a self-update; the hand-over stays as it is.");
                return End::Interrupted;
            }
            let successor = record
                .successor_id
                .as_deref()
                .unwrap_or(&record.successor_name);
            if let Some(reason) = exited(recreator, successor).await {
                return self.give_up(recreator, record, reason).await;
            }
            if now_unix_ms() >= record.deadline_unix_ms {
                let reason = format!(
                    "the successor agent did not take over within {}s",
                    self.timeout.as_secs()
                );
                return self.give_up(recreator, record, reason).await;
            }
            tokio::select! {
                () = tokio::time::sleep(POLL) => {}
                () = recreator.until_stopping() => {}
            }
        }
    }

    fn taken(&self, record: &Record) -> End {
        info!(op = %record.op_id, successor = %record.successor_name, "Self-update: the successor agent took over; this agent waits to be removed.");
        self.busy.send_replace(true);
        End::Taken
    }

    /// Abandons the hand-over (unless the successor claimed it first): the successor goes,
    /// the record is cleared and the answer is "rolled back" ("vetoed" when the successor's
    /// `before_self_cleanup` hook said no).
    async fn give_up(&self, recreator: &Recreator, record: &Record, reason: String) -> End {
        let mut vetoed = None;
        match self
            .files
            .decide(&record.op_id, Decision::Abandoned, &self.own_id)
        {
            Ok(Decision::Taken) => return self.taken(record),
            Ok(Decision::Abandoned) => {}
            Ok(Decision::Vetoed) => {
                vetoed = Some(
                    self.files
                        .note(&record.op_id)
                        .unwrap_or_else(|| "vetoed by a before_self_cleanup hook".into()),
                );
            }
            Err(e) => {
                // Without a decision the successor could still claim: keep waiting is safer
                // than removing it, but the disk is failing; report and keep the record.
                error!(op = %record.op_id, error = %e, "Cannot write the hand-over decision; the hand-over stays undecided.");
                return End::Answer(Outcome::RollbackFailed {
                    step: "handover".into(),
                    reason: format!("{reason}; and the decision cannot be written: {e}"),
                });
            }
        }
        let successor = record
            .successor_id
            .clone()
            .or_else(|| Some(record.successor_name.clone()));
        if let Some(successor) = successor
            && let Err(e) = recreator.remove(&successor).await
        {
            warn!(successor = %successor, error = %e, "Cannot remove the successor agent; it is removed at the next start.");
        }
        self.files.clear();
        self.busy.send_replace(false);
        if let Some(reason) = vetoed {
            warn!(op = %record.op_id, %reason, "Self-update vetoed at before_self_cleanup: this agent goes on.");
            return End::Answer(Outcome::Vetoed { reason });
        }
        warn!(op = %record.op_id, %reason, "Self-update rolled back: this agent goes on.");
        End::Answer(Outcome::RolledBack {
            step: "handover".into(),
            reason,
        })
    }

    /// At the agent's start: what a hand-over left, and orphan successors removed.
    pub async fn found(&self, recreator: &Recreator) -> Found {
        let own_name = recreator.name_of(&self.own_id).await.unwrap_or_default();
        let record = self.files.read();
        let found = match &record {
            Some(r) if own::same(&r.old_id, &self.own_id) => match self.files.decision(&r.op_id) {
                Some(Decision::Taken) => Found::Retired,
                _ => Found::Old(r.clone()),
            },
            Some(r)
                if r.successor_id
                    .as_deref()
                    .is_some_and(|s| own::same(s, &self.own_id))
                    || own_name == r.successor_name =>
            {
                Found::Successor(r.clone())
            }
            _ if own_name.contains(NEXT_MARK) => Found::Orphan(own_name.clone()),
            Some(r) => {
                // Neither side of it: a record another container left (the volume was
                // reused); it holds nothing of this agent's.
                warn!(op = %r.op_id, "A hand-over record of other containers is in the data dir; cleared.");
                self.files.clear();
                Found::Nothing
            }
            None => Found::Nothing,
        };
        if matches!(found, Found::Nothing | Found::Old(_)) && !own_name.is_empty() {
            self.remove_orphans(recreator, &own_name, record.as_ref())
                .await;
        }
        if let Found::Successor(r) = &found {
            *self.lock_successor() = Some(r.clone());
        }
        if matches!(found, Found::Old(_) | Found::Retired) {
            self.busy.send_replace(true);
        }
        found
    }

    /// Successors of this agent that no hand-over under way names.
    async fn remove_orphans(&self, recreator: &Recreator, own_name: &str, record: Option<&Record>) {
        let prefix = format!("{own_name}{NEXT_MARK}");
        for (id, name) in recreator.named_with_prefix(&prefix).await {
            if record.is_some_and(|r| r.successor_name == name) {
                continue;
            }
            warn!(container = %name, "Removing a successor agent left by an abandoned self-update.");
            if let Err(e) = recreator.remove(&id).await {
                warn!(container = %name, error = %e, "Cannot remove the leftover successor agent.");
            }
        }
    }

    /// The successor's part, once connected: asks `gate` (the coordinator's hooks) at
    /// `before_self_cleanup`, claims the hand-over, removes the old agent, takes its name and
    /// tells `gate` `after_self_cleanup`. Err: the old agent abandoned the hand-over first, or
    /// the hook vetoed it (this agent must stop without doing anything more; the old agent
    /// removes it).
    pub async fn take_over(
        &self,
        recreator: &Recreator,
        gate: Option<&dyn HookGate>,
    ) -> Result<Option<Outcome>, String> {
        let Some(record) = self.lock_successor().clone() else {
            return Ok(None);
        };
        // The hand-over must still be this one (the old agent clears it once it gave up).
        if self.files.read().is_none_or(|r| r.op_id != record.op_id) {
            return Err(format!(
                "self-update {} is over (the old agent gave it up) before this successor could take over; this container is removed by it",
                record.op_id
            ));
        }
        let ask = |point| Ask {
            point,
            container: record.name.clone(),
            subject: record.image.clone(),
        };
        if let Some(gate) = gate {
            info!(event = "before_self_cleanup", op = %record.op_id, "Self-update: asking the coordinator's before_self_cleanup hooks.");
            if let Err(reason) = gate.ask(ask(BEFORE_SELF_CLEANUP)).await {
                let note = format!("before_self_cleanup: {reason}");
                return match self.files.decide_with(
                    &record.op_id,
                    Decision::Vetoed,
                    &self.own_id,
                    &note,
                ) {
                    Ok(Decision::Vetoed) => Err(format!(
                        "self-update {} {note}; the old agent keeps this host and removes this container",
                        record.op_id
                    )),
                    Ok(_) => Err(format!(
                        "the old agent abandoned self-update {} before this successor could take over; this container is removed by it",
                        record.op_id
                    )),
                    Err(e) => Err(format!("cannot write the hand-over decision: {e}")),
                };
            }
        }
        match self
            .files
            .decide(&record.op_id, Decision::Taken, &self.own_id)
        {
            Ok(Decision::Taken) => {}
            Ok(Decision::Abandoned | Decision::Vetoed) => {
                return Err(format!(
                    "the old agent abandoned self-update {} before this successor could take over; this container is removed by it",
                    record.op_id
                ));
            }
            Err(e) => return Err(format!("cannot write the hand-over decision: {e}")),
        }
        self.at(Step::Claimed).await;
        info!(op = %record.op_id, old = %record.old_id, "Self-update: taking over; the old agent is stopped and removed.");
        if let Err(e) = recreator.stop_as_configured(&record.old_id).await {
            warn!(error = %e, "Cannot stop the old agent gracefully; removing it anyway.");
        }
        if let Err(e) = recreator.remove(&record.old_id).await {
            // Both run: this one is connected, the old one stays off its link (decision).
            error!(error = %e, "Cannot remove the old agent's container; remove it by hand.");
        }
        self.at(Step::OldRemoved).await;
        let own_name = recreator.name_of(&self.own_id).await.unwrap_or_default();
        if own_name != record.name
            && let Err(e) = recreator.rename(&self.own_id, &record.name).await
        {
            error!(name = %record.name, error = %e, "Cannot take the old agent's name; this agent keeps its temporary one.");
        }
        let outcome = Outcome::Updated {
            new_id: recreator
                .inspect(&self.own_id)
                .await
                .and_then(|c| c.id)
                .unwrap_or_else(|| self.own_id.clone()),
            image_id: record.image_id.clone(),
        };
        let done = Request {
            op_id: record.op_id.clone(),
            container: record.name.clone(),
            image: Some(record.image.clone()),
            ..Request::default()
        };
        if let Err(e) = recreator.record_done(&done, &outcome) {
            warn!(error = %e, "Cannot record the self-update's outcome in the journal.");
        }
        self.files.clear();
        *self.lock_successor() = None;
        info!(event = "after_self_cleanup", op = %record.op_id, name = %record.name, "Self-update done: the old agent is gone and this agent runs under the original name.");
        if let Some(gate) = gate
            && let Err(reason) = gate.ask(ask(AFTER_SELF_CLEANUP)).await
        {
            // Informational: the hand-over is done whatever the hooks say.
            warn!(op = %record.op_id, %reason, "The after_self_cleanup hooks did not all succeed.");
        }
        Ok(Some(outcome))
    }
}

/// Why the successor `id` is out of the race (gone, or exited once: a successor does not exit,
/// and its restart policy would only hide the crash), with its last log lines; `None` while it
/// runs its first life.
async fn exited(recreator: &Recreator, id: &str) -> Option<String> {
    let Some(c) = recreator.inspect(id).await else {
        return Some("the successor agent's container is gone".into());
    };
    let restarts = c.restart_count.unwrap_or(0);
    let state = c.state.unwrap_or_default();
    if state.running.unwrap_or(false) && !state.restarting.unwrap_or(false) && restarts == 0 {
        return None;
    }
    if state
        .started_at
        .as_deref()
        .is_none_or(|t| t.starts_with("0001-"))
    {
        // Created but never started (the old agent stopped in between).
        return Some("the successor agent was never started".into());
    }
    let options = bollard::query_parameters::LogsOptionsBuilder::new()
        .stdout(true)
        .stderr(true)
        .tail("3")
        .build();
    let mut lines: Vec<String> = recreator
        .docker()
        .logs(id, Some(options))
        .filter_map(|l| async move { l.ok().map(|l| l.to_string().trim().to_owned()) })
        .filter(|l| std::future::ready(!l.is_empty()))
        .collect()
        .await;
    // A restarting successor says the same thing each time.
    lines.dedup();
    let mut reason = format!(
        "the successor agent exited with code {}",
        state.exit_code.unwrap_or_default()
    );
    if !lines.is_empty() {
        reason.push_str(": ");
        reason.push_str(&lines.join(" | "));
    }
    Some(reason)
}

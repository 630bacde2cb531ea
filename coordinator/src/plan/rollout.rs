//! Rollouts: the updates of one cycle as a persisted object with a plan, a state machine per
//! target and a policy that bounds the blast radius. (Over 600 lines: the state machine and
//! its scenario tests, which belong together.) Everything here is pure: the runner
//! ([`crate::run::runner`]) observes, asks [`plan`] what to do now, writes the new state to the store
//! and only then sends the commands.
//!
//! Per host, targets run in dependency order, at most `max_containers_in_flight` at once (one
//! by default): a target starts only when what its update touches (its [`Target::touches`])
//! meets nothing touched by a target of its host in flight or before it in order, and
//! Ouroboros' own containers, Swarm services and ways back run alone. Hosts start while fewer than
//! `max_hosts_in_flight` are busy, canary hosts first; the others wait until every canary host
//! is done and `canary_wait` has passed; a failed canary triggers the failure action whatever
//! the ratio. After a host finishes, its slot is
//! free again `batch_delay` later. New work starts only inside a maintenance window; work in
//! flight always finishes. When failures exceed `max_failure_ratio` of the targets, the
//! `failure_action` applies: `pause` (nothing new starts), `rollback` (targets already updated
//! go back to their previous digest, last updated first, then the rollout stops) or `continue`.

use serde::{Deserialize, Serialize};

use crate::plan::outcome::Status;
use crate::plan::window::Windows;

/// What happens when too many targets fail.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FailureAction {
    #[default]
    Pause,
    Rollback,
    Continue,
}

impl std::str::FromStr for FailureAction {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "pause" => Ok(Self::Pause),
            "rollback" => Ok(Self::Rollback),
            "continue" => Ok(Self::Continue),
            _ => Err(format!("{s:?} is not pause, rollback or continue")),
        }
    }
}

/// Which hosts go first.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Canary {
    #[default]
    None,
    /// These hosts (those of them with updates).
    Hosts(Vec<String>),
    /// The first N hosts with updates, by name.
    Count(u32),
}

/// The rollout policy, copied into each rollout when it is made.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Policy {
    /// Hosts updating at once; 0: no limit.
    pub max_hosts_in_flight: u32,
    /// Containers of one host updating at once (those that do not depend on each other).
    #[serde(default = "one")]
    pub max_containers_in_flight: u32,
    pub canary: Canary,
    /// Health period after the canary hosts, before the others start.
    pub canary_wait_ms: i64,
    /// Pause before a freed host slot takes the next host.
    pub batch_delay_ms: i64,
    /// The agent's health gate: the new container must stay up (and healthy) this long.
    pub min_healthy_ms: i64,
    /// The agent's health gate: longest wait for healthy.
    pub healthy_deadline_ms: i64,
    /// Longest a target may take from its command to its result; then it is failed.
    pub progress_deadline_ms: i64,
    pub failure_action: FailureAction,
    /// Failures tolerated, as a share of the targets; 0 means none.
    pub max_failure_ratio: f64,
    /// Maintenance windows (text, see [`Windows`]); empty: always.
    pub windows: String,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            max_hosts_in_flight: 0,
            max_containers_in_flight: 1,
            canary: Canary::None,
            canary_wait_ms: 0,
            batch_delay_ms: 0,
            min_healthy_ms: 0,
            healthy_deadline_ms: 0,
            progress_deadline_ms: 15 * 60 * 1000,
            failure_action: FailureAction::Pause,
            max_failure_ratio: 0.0,
            windows: String::new(),
        }
    }
}

/// One container per host at a time, for rollouts stored before the option existed.
fn one() -> u32 {
    1
}

/// One container's part in a rollout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum TargetState {
    Pending,
    /// The command with `op_id` is (being) sent; written before it goes out.
    Dispatched {
        op_id: String,
        at_ms: i64,
    },
    /// Runs the new image (or already did).
    Updated {
        at_ms: i64,
        already_current: bool,
    },
    /// Did not update; the agent says what it left (`rolled back`, `refused`, ...).
    Failed {
        reason: String,
        outcome: String,
    },
    /// Not attempted.
    Skipped {
        reason: String,
    },
    /// Going back to the previous digest (failure action `rollback`).
    Reverting {
        op_id: String,
        at_ms: i64,
    },
    Reverted {
        at_ms: i64,
    },
    RevertFailed {
        reason: String,
    },
    /// Never started: the rollout was cancelled first.
    Cancelled {
        reason: String,
    },
    /// A hook said no (`before_update`, or the container's `pre-update` exiting 75): nothing
    /// changed. Counts neither as updated nor as failed.
    Vetoed {
        reason: String,
    },
}

impl TargetState {
    /// No more work for this target (unless a rollback picks an updated one up).
    pub fn is_terminal(&self) -> bool {
        !matches!(
            self,
            Self::Pending | Self::Dispatched { .. } | Self::Reverting { .. }
        )
    }

    pub fn name(&self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Dispatched { .. } => "updating",
            Self::Updated { .. } => "updated",
            Self::Failed { .. } => "failed",
            Self::Skipped { .. } => "skipped",
            Self::Reverting { .. } => "reverting",
            Self::Reverted { .. } => "reverted",
            Self::RevertFailed { .. } => "revert-failed",
            Self::Cancelled { .. } => "cancelled",
            Self::Vetoed { .. } => "vetoed",
        }
    }
}

/// Whether a target is one of Ouroboros' own containers (self-update): the agent of its host
/// goes after the host's other targets and one host at a time; the coordinator goes last, when
/// nothing else is in flight.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Own {
    #[default]
    No,
    Agent,
    Coordinator,
}

impl Own {
    fn is_no(&self) -> bool {
        *self == Self::No
    }
}

/// One container to update.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Target {
    pub host: String,
    pub container: String,
    /// As configured (`repo:tag`).
    pub image: String,
    /// What it is recreated from: `repo:tag@new_digest`.
    pub target: String,
    /// `repo:tag@old_digest`, to go back to.
    pub previous: String,
    pub old_digest: String,
    pub new_digest: String,
    /// Canary (0) or the rest (1).
    pub batch: u32,
    pub state: TargetState,
    pub started_ms: i64,
    pub finished_ms: i64,
    /// Every state the target went through, with when (for `rollout --watch` and tests).
    pub transitions: Vec<(i64, String)>,
    /// Containers that depend on it softly: stopped before its update, started after.
    #[serde(default)]
    pub soft_dependants: Vec<String>,
    /// Containers its operation recreates with it whose own tag moved in the same rollout:
    /// name → `repo:tag@digest`. They move there with it, and their own targets count as
    /// updated by its answer.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub dependant_images: std::collections::BTreeMap<String, String>,
    /// The op id of its last command (update or way back), kept after the answer.
    #[serde(default)]
    pub op_id: String,
    /// Ouroboros' own agent or coordinator container.
    #[serde(default, skip_serializing_if = "Own::is_no")]
    pub own: Own,
    /// A Swarm service (`container` is `service:NAME`), updated through `host`, a manager of
    /// its swarm.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub service: bool,
    /// The containers of its host its update may stop or recreate: itself and whatever
    /// depends on it, directly or not (the dependency graph when the rollout was made). Two
    /// targets of a host whose sets meet never run at once. `None` (a rollout stored before
    /// this was kept): unknown, so it runs alone on its host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub touches: Option<Vec<String>>,
}

impl Target {
    /// Runs alone on its host: an own container (a self-update), a Swarm service, or one
    /// whose reach is unknown.
    fn alone(&self) -> bool {
        self.own != Own::No || self.service || self.touches.is_none()
    }

    /// Whether `self` and `other` (of the same host) may be updated at the same time.
    fn independent_of(&self, other: &Target) -> bool {
        match (&self.touches, &other.touches) {
            (Some(mine), Some(theirs)) if !self.alone() && !other.alone() => {
                !mine.iter().any(|c| theirs.contains(c))
            }
            _ => false,
        }
    }
}

/// Where a rollout stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum RolloutState {
    Running,
    /// Nothing new starts; the reason says why.
    Paused {
        reason: String,
    },
    /// Updated targets are going back (failure action `rollback`).
    RollingBack {
        reason: String,
    },
    /// Every target ended; `failed` of them did not update.
    Completed {
        failed: u32,
    },
    /// Rolled back after failures.
    RolledBack {
        reason: String,
    },
    /// Ended by the operator: targets not started were cancelled.
    Cancelled {
        reason: String,
    },
}

impl RolloutState {
    pub fn is_active(&self) -> bool {
        matches!(self, Self::Running | Self::RollingBack { .. })
    }

    /// Whether the rollout is over (nothing will ever run for it again).
    pub fn is_ended(&self) -> bool {
        matches!(
            self,
            Self::Completed { .. } | Self::RolledBack { .. } | Self::Cancelled { .. }
        )
    }

    pub fn name(&self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Paused { .. } => "paused",
            Self::RollingBack { .. } => "rolling-back",
            Self::Completed { failed: 0 } => "completed",
            Self::Completed { .. } => "completed-with-failures",
            Self::RolledBack { .. } => "rolled-back",
            Self::Cancelled { .. } => "cancelled",
        }
    }
}

/// A persisted rollout.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rollout {
    pub id: String,
    pub created_ms: i64,
    pub updated_ms: i64,
    pub policy: Policy,
    pub state: RolloutState,
    /// In plan order: hosts by batch then name, each host's targets in dependency order.
    pub targets: Vec<Target>,
    /// When the last host finished its targets (for the batch delay), and the canary end.
    pub last_host_done_ms: i64,
    pub canary_done_ms: i64,
    /// Failures the operator accepted by resuming: only failures beyond these count.
    #[serde(default)]
    pub acknowledged_failures: u32,
    /// The operator cancelled it: nothing new starts, what is in flight finishes (and, with
    /// `revert`, the targets it updated go back), then it ends as cancelled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cancel: Option<Cancel>,
}

/// An operator's cancel of a rollout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cancel {
    pub reason: String,
    /// Send the targets this rollout updated back to their previous digest.
    pub revert: bool,
    pub at_ms: i64,
}

/// A digest whose update of a container failed or was taken back: scheduled cycles do not try
/// it on that container again (a new digest of the tag, `update` or `retry` do).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BadDigest {
    pub digest: String,
    /// When it failed (unix ms).
    pub at_ms: i64,
    /// `rolled-back`, `rollback-failed`, `reverted` (sent back by a failure action or cancel).
    pub outcome: String,
    pub reason: String,
    pub rollout: String,
}

/// One target's outcome, kept in the history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryEntry {
    pub rollout: String,
    pub host: String,
    pub container: String,
    pub image: String,
    pub old_digest: String,
    pub new_digest: String,
    /// `updated`, `already-current`, `failed`, `skipped`, `vetoed`, `reverted`, `revert-failed`.
    pub result: String,
    pub reason: String,
    pub started_ms: i64,
    pub finished_ms: i64,
    pub duration_ms: i64,
}

impl Target {
    /// This target's outcome for the history.
    pub fn history(&self, rollout: &str) -> HistoryEntry {
        let (result, reason) = match &self.state {
            TargetState::Updated {
                already_current: true,
                ..
            } => ("already-current".to_owned(), String::new()),
            TargetState::Failed { reason, outcome } => {
                ("failed".to_owned(), format!("{outcome}: {reason}"))
            }
            TargetState::Skipped { reason }
            | TargetState::RevertFailed { reason }
            | TargetState::Vetoed { reason } => (self.state.name().to_owned(), reason.clone()),
            other => (other.name().to_owned(), String::new()),
        };
        HistoryEntry {
            rollout: rollout.to_owned(),
            host: self.host.clone(),
            container: self.container.clone(),
            image: self.image.clone(),
            old_digest: self.old_digest.clone(),
            new_digest: self.new_digest.clone(),
            result,
            reason,
            started_ms: self.started_ms,
            finished_ms: self.finished_ms,
            duration_ms: if self.started_ms > 0 {
                self.finished_ms - self.started_ms
            } else {
                0
            },
        }
    }
}

/// What the runner should do now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Send the update of target `index`.
    Dispatch(usize),
    /// Send the way back of target `index` (to `previous`).
    Revert(usize),
    /// Target `index` had no result in time.
    TimedOut(usize),
    /// Target `index` cannot start: its host has been away past the progress deadline.
    Abandon(usize),
    /// Target `index` never starts: the rollout is cancelled.
    Cancel(usize),
    /// The rollout changes state.
    Become(RolloutState),
}

/// What the runner sees.
#[derive(Clone)]
pub struct Observation<'a> {
    pub now_ms: i64,
    /// Hosts whose agents are connected.
    pub connected: &'a (dyn Fn(&str) -> bool + Sync),
    pub windows: &'a Windows,
}

impl Rollout {
    fn failed(&self) -> usize {
        self.targets
            .iter()
            .filter(|t| matches!(t.state, TargetState::Failed { .. }))
            .count()
    }

    fn host_busy(&self, host: &str) -> bool {
        self.targets.iter().any(|t| {
            t.host == host
                && matches!(
                    t.state,
                    TargetState::Dispatched { .. } | TargetState::Reverting { .. }
                )
        })
    }

    /// The pending targets of `host` that may start now, in order, with at most `limit` of
    /// its targets in flight: each independent of every unfinished target of the host that is
    /// in flight or comes before it (see [`Target::touches`]). Nothing while a way back, or a
    /// target that runs alone, is in flight.
    fn startable(&self, host: &str, limit: usize) -> Vec<usize> {
        let of_host = || {
            self.targets
                .iter()
                .enumerate()
                .filter(move |(_, t)| t.host == host)
        };
        let mut busy: Vec<&Target> = of_host()
            .map(|(_, t)| t)
            .filter(|t| {
                matches!(
                    t.state,
                    TargetState::Dispatched { .. } | TargetState::Reverting { .. }
                )
            })
            .collect();
        if busy
            .iter()
            .any(|t| t.alone() || matches!(t.state, TargetState::Reverting { .. }))
        {
            return Vec::new();
        }
        let mut waiting: Vec<&Target> = Vec::new();
        let mut picked = Vec::new();
        for (i, t) in of_host() {
            if busy.len() >= limit {
                break;
            }
            if t.state != TargetState::Pending {
                continue;
            }
            if busy.iter().chain(&waiting).all(|u| t.independent_of(u)) {
                picked.push(i);
                busy.push(t);
            } else {
                waiting.push(t);
            }
        }
        picked
    }

    fn host_started(&self, host: &str) -> bool {
        self.targets
            .iter()
            .any(|t| t.host == host && t.state != TargetState::Pending)
    }

    fn host_done(&self, host: &str) -> bool {
        self.targets
            .iter()
            .filter(|t| t.host == host)
            .all(|t| t.state.is_terminal())
    }

    fn hosts(&self) -> Vec<String> {
        let mut hosts: Vec<String> = Vec::new();
        for t in &self.targets {
            if !hosts.contains(&t.host) {
                hosts.push(t.host.clone());
            }
        }
        hosts
    }

    /// Whether failures (beyond those acknowledged by a resume) exceed what the policy
    /// tolerates.
    fn too_many_failures(&self) -> bool {
        let failed = self
            .failed()
            .saturating_sub(self.acknowledged_failures as usize);
        failed > 0
            && (failed as f64) / (self.targets.len().max(1) as f64) > self.policy.max_failure_ratio
    }

    /// The targets that did not start yet (for a report of what a pause or cancel left).
    pub fn not_started(&self) -> usize {
        self.targets
            .iter()
            .filter(|t| t.state == TargetState::Pending)
            .count()
    }

    /// What went wrong for `t` that makes its digest a bad one for its container, if anything
    /// did: the agent tried the image and it failed, or the update was taken back.
    pub fn bad_digest(&self, t: &Target, now_ms: i64) -> Option<BadDigest> {
        let (outcome, reason) = match &t.state {
            TargetState::Failed { reason, outcome }
                if outcome == "rolled-back" || outcome == "rollback-failed" =>
            {
                (outcome.clone(), reason.clone())
            }
            TargetState::Reverted { .. } => (
                "reverted".to_owned(),
                format!("sent back when rollout {} {}", self.id, self.state.name()),
            ),
            // The operator cancelled the rollout of this digest, or it was rolled back
            // before this target's turn: not to be tried again by itself either.
            TargetState::Cancelled { reason } => (
                "cancelled".to_owned(),
                format!("rollout {}: {reason}", self.id),
            ),
            TargetState::Pending if matches!(self.state, RolloutState::RolledBack { .. }) => (
                "not-started".to_owned(),
                format!("rollout {} rolled back before its turn", self.id),
            ),
            _ => return None,
        };
        Some(BadDigest {
            digest: t.new_digest.clone(),
            at_ms: now_ms,
            outcome,
            reason,
            rollout: self.id.clone(),
        })
    }

    /// The operator resumes: the failures so far are accepted, the rollout runs again.
    pub fn resume(&mut self, now_ms: i64) {
        self.acknowledged_failures = u32::try_from(self.failed()).unwrap_or(u32::MAX);
        self.state = RolloutState::Running;
        self.updated_ms = now_ms;
    }

    /// Records a state change of target `index` at `now_ms`.
    pub fn set(&mut self, index: usize, state: TargetState, now_ms: i64) {
        if let Some(t) = self.targets.get_mut(index) {
            if t.started_ms == 0 && matches!(state, TargetState::Dispatched { .. }) {
                t.started_ms = now_ms;
            }
            if state.is_terminal() {
                t.finished_ms = now_ms;
            }
            t.transitions.push((now_ms, state.name().to_owned()));
            t.state = state;
            let host = t.host.clone();
            if self.host_done(&host) {
                self.last_host_done_ms = self.last_host_done_ms.max(now_ms);
                let canary_done = self
                    .targets
                    .iter()
                    .filter(|t| t.batch == 0)
                    .all(|t| t.state.is_terminal());
                if canary_done
                    && self.canary_done_ms == 0
                    && self.targets.iter().any(|t| t.batch == 0)
                {
                    self.canary_done_ms = now_ms;
                }
            }
        }
        self.updated_ms = now_ms;
    }
}

/// The target's next state after the agent's answer to an update.
pub fn after_update(status: Status, reason: &str, now_ms: i64) -> TargetState {
    match status {
        Status::Updated => TargetState::Updated {
            at_ms: now_ms,
            already_current: false,
        },
        Status::AlreadyCurrent => TargetState::Updated {
            at_ms: now_ms,
            already_current: true,
        },
        Status::Vetoed => TargetState::Vetoed {
            reason: reason.to_owned(),
        },
        Status::Gone => TargetState::Skipped {
            reason: reason.to_owned(),
        },
        other => TargetState::Failed {
            reason: reason.to_owned(),
            outcome: other.name().to_owned(),
        },
    }
}

/// The target's next state after the agent's answer to a way back.
pub fn after_revert(status: Status, reason: &str, now_ms: i64) -> TargetState {
    if status.succeeded() {
        TargetState::Reverted { at_ms: now_ms }
    } else {
        TargetState::RevertFailed {
            reason: format!("{}: {reason}", status.name()),
        }
    }
}

/// What to do now. Pure: the same rollout and observation give the same actions.
pub fn plan(r: &Rollout, o: &Observation<'_>) -> Vec<Action> {
    let mut actions = Vec::new();
    // Deadlines act whatever the rollout's state.
    for (i, t) in r.targets.iter().enumerate() {
        if let TargetState::Dispatched { at_ms, .. } | TargetState::Reverting { at_ms, .. } =
            t.state
            && o.now_ms - at_ms > r.policy.progress_deadline_ms
        {
            actions.push(Action::TimedOut(i));
        }
    }
    // Targets whose host stayed away longer than the progress deadline are given up, so that
    // no rollout waits for ever.
    if r.state.is_active()
        && o.now_ms - r.updated_ms.max(r.created_ms) > r.policy.progress_deadline_ms
    {
        for (i, t) in r.targets.iter().enumerate() {
            let waiting = t.state == TargetState::Pending
                || (matches!(r.state, RolloutState::RollingBack { .. })
                    && matches!(
                        t.state,
                        TargetState::Updated {
                            already_current: false,
                            ..
                        }
                    ));
            if waiting && !(o.connected)(&t.host) {
                actions.push(Action::Abandon(i));
            }
        }
        if !actions.is_empty() {
            return actions;
        }
    }
    if let Some(cancel) = &r.cancel
        && !r.state.is_ended()
    {
        return plan_cancel(r, cancel, o, actions);
    }
    match &r.state {
        RolloutState::Running => {}
        RolloutState::RollingBack { reason } => {
            // One way back per host at a time, the last updated first.
            let mut pending: Vec<(usize, i64)> = r
                .targets
                .iter()
                .enumerate()
                .filter_map(|(i, t)| match t.state {
                    TargetState::Updated {
                        at_ms,
                        already_current: false,
                    } => Some((i, at_ms)),
                    _ => None,
                })
                .collect();
            pending.sort_by_key(|(_, at)| std::cmp::Reverse(*at));
            actions.extend(reverts(r, o, &pending));
            // Updates still in flight may yet need their way back: wait for them too.
            let in_flight = r.targets.iter().any(|t| {
                matches!(
                    t.state,
                    TargetState::Reverting { .. } | TargetState::Dispatched { .. }
                )
            });
            if pending.is_empty() && !in_flight {
                actions.push(Action::Become(RolloutState::RolledBack {
                    reason: reason.clone(),
                }));
            }
            return actions;
        }
        _ => return actions,
    }
    // A canary that fails stops the rollout whatever the ratio: the canaries exist to find
    // what the other hosts must not get (failures a resume accepted aside).
    let canary_failed = r.failed() > r.acknowledged_failures as usize
        && r.targets.iter().any(|t| t.batch == 0)
        && r.targets
            .iter()
            .any(|t| t.batch == 0 && matches!(t.state, TargetState::Failed { .. }));
    if r.too_many_failures() || canary_failed {
        let failed = r.failed();
        let reason = if canary_failed && !r.too_many_failures() {
            "a canary host failed".to_owned()
        } else {
            format!(
                "{failed} of {} targets failed (tolerated: {:.0}%)",
                r.targets.len(),
                r.policy.max_failure_ratio * 100.0
            )
        };
        match r.policy.failure_action {
            FailureAction::Pause => {
                actions.push(Action::Become(RolloutState::Paused { reason }));
                return actions;
            }
            FailureAction::Rollback => {
                actions.push(Action::Become(RolloutState::RollingBack { reason }));
                return actions;
            }
            FailureAction::Continue => {}
        }
    }
    if r.targets.iter().all(|t| t.state.is_terminal()) {
        actions.push(Action::Become(RolloutState::Completed {
            failed: r.failed() as u32,
        }));
        return actions;
    }
    // Outside a window nothing new is sent, not even a started host's next container; what
    // is in flight finishes.
    let window_open = o.windows.open(chrono_from_ms(o.now_ms));
    let canary_hosts: Vec<String> = r
        .targets
        .iter()
        .filter(|t| t.batch == 0)
        .map(|t| t.host.clone())
        .collect();
    let canary_pending = !canary_hosts.is_empty()
        && (r.canary_done_ms == 0
            || o.now_ms < r.canary_done_ms.saturating_add(r.policy.canary_wait_ms));
    let hosts = r.hosts();
    let mut in_flight = hosts
        .iter()
        .filter(|h| r.host_started(h) && !r.host_done(h))
        .count();
    let limit = match r.policy.max_hosts_in_flight {
        0 => usize::MAX,
        n => n as usize,
    };
    // An agent's self-update chosen in this round (one host at a time).
    let mut agent_sent = false;
    let per_host = r.policy.max_containers_in_flight.max(1) as usize;
    for host in &hosts {
        if r.host_done(host) || !(o.connected)(host) || !window_open {
            continue;
        }
        let next = r.startable(host, per_host);
        let Some(&first) = next.first() else {
            continue;
        };
        // An own container runs alone, so it can only be the first (and only) one.
        if !own_may_start(r, first, agent_sent) {
            continue;
        }
        agent_sent |= r.targets[first].own == Own::Agent;
        let started = r.host_started(host);
        if !started {
            let is_canary = canary_hosts.contains(host);
            if (!is_canary && canary_pending)
                || in_flight >= limit
                || (r.last_host_done_ms > 0
                    && o.now_ms < r.last_host_done_ms.saturating_add(r.policy.batch_delay_ms))
            {
                continue;
            }
            in_flight += 1;
        }
        actions.extend(next.into_iter().map(Action::Dispatch));
    }
    actions
}

/// The ways back to start now, of `pending` (target, when updated; the last updated first):
/// one per host at a time; going back is a self-update too for Ouroboros' own containers, so
/// one agent at a time and the coordinator only when nothing else is pending or in flight.
fn reverts(r: &Rollout, o: &Observation<'_>, pending: &[(usize, i64)]) -> Vec<Action> {
    let in_flight = |t: &Target| {
        matches!(
            t.state,
            TargetState::Dispatched { .. } | TargetState::Reverting { .. }
        )
    };
    let mut agent_busy = r
        .targets
        .iter()
        .any(|t| t.own == Own::Agent && in_flight(t));
    let others_busy = r.targets.iter().any(in_flight);
    let mut busy: Vec<String> = r.hosts().into_iter().filter(|h| r.host_busy(h)).collect();
    let mut actions = Vec::new();
    for (i, _) in pending {
        let t = &r.targets[*i];
        let allowed = match t.own {
            Own::No => true,
            Own::Agent => !agent_busy,
            Own::Coordinator => pending.len() == 1 && !others_busy,
        };
        if allowed && !busy.contains(&t.host) && (o.connected)(&t.host) {
            busy.push(t.host.clone());
            agent_busy |= t.own == Own::Agent;
            actions.push(Action::Revert(*i));
        }
    }
    actions
}

/// Whether target `i`, one of Ouroboros' own containers, may start now: an agent while no other
/// agent is being replaced (`agent_sent`: one was chosen already in this round), the
/// coordinator once every other target has ended.
fn own_may_start(r: &Rollout, i: usize, agent_sent: bool) -> bool {
    let mut others = r.targets.iter().enumerate().filter(|(j, _)| *j != i);
    match r.targets[i].own {
        Own::No => true,
        Own::Agent => {
            !agent_sent
                && !others
                    .filter(|(_, t)| t.own == Own::Agent)
                    .any(|(_, t)| !t.state.is_terminal() && t.state != TargetState::Pending)
        }
        Own::Coordinator => others.all(|(_, t)| t.state.is_terminal()),
    }
}

/// A cancelled rollout: the targets not started are cancelled, what is in flight finishes;
/// with `revert` the targets it updated go back (one per host at a time, the last updated
/// first); then it ends.
fn plan_cancel(
    r: &Rollout,
    cancel: &Cancel,
    o: &Observation<'_>,
    mut actions: Vec<Action>,
) -> Vec<Action> {
    for (i, t) in r.targets.iter().enumerate() {
        if t.state == TargetState::Pending {
            actions.push(Action::Cancel(i));
        }
    }
    let mut back: Vec<(usize, i64)> = Vec::new();
    if cancel.revert {
        back = r
            .targets
            .iter()
            .enumerate()
            .filter_map(|(i, t)| match t.state {
                TargetState::Updated {
                    at_ms,
                    already_current: false,
                } => Some((i, at_ms)),
                _ => None,
            })
            .collect();
        back.sort_by_key(|(_, at)| std::cmp::Reverse(*at));
        actions.extend(reverts(r, o, &back));
    }
    let in_flight = r.targets.iter().any(|t| {
        matches!(
            t.state,
            TargetState::Dispatched { .. } | TargetState::Reverting { .. }
        )
    });
    if back.is_empty() && !in_flight {
        actions.push(Action::Become(RolloutState::Cancelled {
            reason: cancel.reason.clone(),
        }));
    }
    actions
}

/// When [`plan`] may have something new to do without any answer arriving: the next deadline,
/// window start, canary wait or batch delay end.
pub fn next_wake(r: &Rollout, o: &Observation<'_>) -> Option<i64> {
    let mut times: Vec<i64> = r
        .targets
        .iter()
        .filter_map(|t| match t.state {
            TargetState::Dispatched { at_ms, .. } | TargetState::Reverting { at_ms, .. } => Some(
                at_ms
                    .saturating_add(r.policy.progress_deadline_ms)
                    .saturating_add(1),
            ),
            _ => None,
        })
        .collect();
    if r.canary_done_ms > 0 {
        times.push(r.canary_done_ms.saturating_add(r.policy.canary_wait_ms));
    }
    if r.last_host_done_ms > 0 {
        times.push(r.last_host_done_ms.saturating_add(r.policy.batch_delay_ms));
    }
    if let Some(next) = o.windows.next_open(chrono_from_ms(o.now_ms)) {
        times.push(next.timestamp_millis());
    }
    times.into_iter().filter(|t| *t > o.now_ms).min()
}

fn chrono_from_ms(ms: i64) -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::from_timestamp_millis(ms).unwrap_or_default()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A pending target of `host` (also for the store's tests).
    pub(crate) fn target(host: &str, container: &str, batch: u32) -> Target {
        Target {
            host: host.into(),
            container: container.into(),
            image: format!("reg/{container}:1"),
            target: format!("reg/{container}:1@sha256:new"),
            previous: format!("reg/{container}:1@sha256:old"),
            old_digest: "sha256:old".into(),
            new_digest: "sha256:new".into(),
            batch,
            state: TargetState::Pending,
            started_ms: 0,
            finished_ms: 0,
            transitions: Vec::new(),
            soft_dependants: Vec::new(),
            dependant_images: Default::default(),
            op_id: String::new(),
            own: Own::No,
            service: false,
            touches: Some(vec![container.into()]),
        }
    }

    /// A target whose update touches `touches` besides itself.
    fn touching(host: &str, container: &str, touches: &[&str]) -> Target {
        let mut t = target(host, container, 1);
        if let Some(list) = t.touches.as_mut() {
            list.extend(touches.iter().map(|c| (*c).to_owned()));
        }
        t
    }

    fn per_host(n: u32) -> Policy {
        Policy {
            max_containers_in_flight: n,
            ..Policy::default()
        }
    }

    fn rollout(policy: Policy, targets: Vec<Target>) -> Rollout {
        Rollout {
            id: "r-1".into(),
            created_ms: 0,
            updated_ms: 0,
            policy,
            state: RolloutState::Running,
            targets,
            last_host_done_ms: 0,
            canary_done_ms: 0,
            acknowledged_failures: 0,
            cancel: None,
        }
    }

    fn all(_: &str) -> bool {
        true
    }

    fn plan_at(r: &Rollout, now_ms: i64) -> Vec<Action> {
        let windows = Windows::default();
        plan(
            r,
            &Observation {
                now_ms,
                connected: &all,
                windows: &windows,
            },
        )
    }

    /// Applies an action the way the runner would, answering every update with `answer`.
    fn apply(r: &mut Rollout, actions: &[Action], now_ms: i64, answer: &dyn Fn(&Target) -> Status) {
        for a in actions {
            match a {
                Action::Dispatch(i) => {
                    r.set(
                        *i,
                        TargetState::Dispatched {
                            op_id: format!("op-{i}"),
                            at_ms: now_ms,
                        },
                        now_ms,
                    );
                }
                Action::Revert(i) => {
                    r.set(
                        *i,
                        TargetState::Reverting {
                            op_id: format!("back-{i}"),
                            at_ms: now_ms,
                        },
                        now_ms,
                    );
                }
                Action::TimedOut(i) => r.set(
                    *i,
                    TargetState::Failed {
                        reason: "no result in time".into(),
                        outcome: "timeout".into(),
                    },
                    now_ms,
                ),
                Action::Become(s) => r.state = s.clone(),
                Action::Cancel(i) => r.set(
                    *i,
                    TargetState::Cancelled {
                        reason: "cancelled".into(),
                    },
                    now_ms,
                ),
                Action::Abandon(i) => r.set(
                    *i,
                    TargetState::Skipped {
                        reason: "host away".into(),
                    },
                    now_ms,
                ),
            }
        }
        // Answers arrive.
        for i in 0..r.targets.len() {
            let state = r.targets[i].state.clone();
            match state {
                TargetState::Dispatched { .. } => {
                    let status = answer(&r.targets[i]);
                    r.set(
                        i,
                        after_update(status, "health check failed", now_ms + 1),
                        now_ms + 1,
                    );
                }
                TargetState::Reverting { .. } => {
                    r.set(i, after_revert(Status::Updated, "", now_ms + 1), now_ms + 1)
                }
                _ => {}
            }
        }
    }

    #[test]
    fn agents_update_themselves_one_host_at_a_time_and_the_coordinator_last() {
        let own = |host: &str, container: &str, own: Own| Target {
            own,
            ..target(host, container, 1)
        };
        let mut r = rollout(
            Policy::default(),
            vec![
                target("a", "app", 1),
                own("a", "agent", Own::Agent),
                own("a", "coordinator", Own::Coordinator),
                target("b", "app", 1),
                own("b", "agent", Own::Agent),
                own("c", "agent", Own::Agent),
            ],
        );
        let rounds = run(&mut r, &|_| Status::Updated);
        // Round 1: the apps of a and b, and c's agent (c has nothing else); then one agent
        // at a time; the coordinator alone at the end.
        assert_eq!(rounds, vec![vec![0, 3, 5], vec![1], vec![4], vec![2]]);
        assert!(matches!(r.state, RolloutState::Completed { failed: 0 }));
    }

    #[test]
    fn going_back_replaces_one_agent_at_a_time_and_the_coordinator_last() {
        let updated = |host: &str, container: &str, own: Own, at_ms: i64| Target {
            own,
            state: TargetState::Updated {
                at_ms,
                already_current: false,
            },
            ..target(host, container, 1)
        };
        let mut r = rollout(
            Policy {
                failure_action: FailureAction::Rollback,
                ..Policy::default()
            },
            vec![
                updated("a", "app", Own::No, 1),
                updated("b", "agent", Own::Agent, 2),
                updated("c", "agent", Own::Agent, 3),
                updated("a", "coordinator", Own::Coordinator, 4),
            ],
        );
        r.state = RolloutState::RollingBack {
            reason: "test".into(),
        };
        let rounds = run(&mut r, &|_| Status::Updated);
        // The coordinator was updated last but goes back last; agents one at a time.
        assert_eq!(rounds, vec![vec![2, 0], vec![1], vec![3]]);
    }

    /// Runs the rollout to its end; returns the dispatch rounds (which targets each round).
    fn run(r: &mut Rollout, answer: &dyn Fn(&Target) -> Status) -> Vec<Vec<usize>> {
        let mut rounds = Vec::new();
        let mut now = 1_000;
        for _ in 0..100 {
            let actions = plan_at(r, now);
            let sent: Vec<usize> = actions
                .iter()
                .filter_map(|a| match a {
                    Action::Dispatch(i) | Action::Revert(i) => Some(*i),
                    _ => None,
                })
                .collect();
            if !sent.is_empty() {
                rounds.push(sent);
            }
            apply(r, &actions, now, answer);
            if !r.state.is_active() {
                break;
            }
            now += 1_000;
        }
        rounds
    }

    fn ok(_: &Target) -> Status {
        Status::Updated
    }

    #[test]
    fn hosts_in_flight_are_bounded_and_each_host_goes_in_order() {
        let mut r = rollout(
            Policy {
                max_hosts_in_flight: 1,
                ..Policy::default()
            },
            vec![
                target("a", "db", 1),
                target("a", "app", 1),
                target("b", "db", 1),
                target("c", "db", 1),
            ],
        );
        let rounds = run(&mut r, &ok);
        assert_eq!(rounds, vec![vec![0], vec![1], vec![2], vec![3]]);
        assert_eq!(r.state, RolloutState::Completed { failed: 0 });
        let mut r2 = rollout(
            Policy::default(),
            r.targets
                .iter()
                .map(|t| target(&t.host, &t.container, 1))
                .collect(),
        );
        let rounds = run(&mut r2, &ok);
        assert_eq!(
            rounds[0],
            vec![0, 2, 3],
            "no limit: every host at once, one container each"
        );
    }

    #[test]
    fn canary_hosts_go_first_and_the_rest_wait_for_the_health_period() {
        let mut r = rollout(
            Policy {
                canary_wait_ms: 2_500,
                ..Policy::default()
            },
            vec![
                target("a", "x", 0),
                target("b", "x", 1),
                target("c", "x", 1),
            ],
        );
        let mut now = 1_000;
        assert_eq!(plan_at(&r, now), vec![Action::Dispatch(0)]);
        let actions = plan_at(&r, now);
        apply(&mut r, &actions, now, &ok);
        now += 1_000;
        assert_eq!(plan_at(&r, now), vec![], "canary wait");
        now += 2_000;
        assert_eq!(
            plan_at(&r, now),
            vec![Action::Dispatch(1), Action::Dispatch(2)]
        );
    }

    #[test]
    fn a_failure_pauses_and_no_other_host_is_touched() {
        let mut r = rollout(
            Policy {
                max_hosts_in_flight: 1,
                ..Policy::default()
            },
            vec![
                target("a", "x", 1),
                target("b", "x", 1),
                target("c", "x", 1),
            ],
        );
        let rounds = run(&mut r, &|t: &Target| {
            if t.host == "a" {
                Status::RolledBack
            } else {
                Status::Updated
            }
        });
        assert_eq!(rounds, vec![vec![0]]);
        assert!(
            matches!(&r.state, RolloutState::Paused { reason } if reason.contains("1 of 3")),
            "{:?}",
            r.state
        );
        assert_eq!(r.targets[1].state, TargetState::Pending);
        assert!(
            matches!(&r.targets[0].state, TargetState::Failed { outcome, .. } if outcome == "rolled-back")
        );
    }

    #[test]
    fn a_failure_with_rollback_sends_updated_targets_back_last_first() {
        let mut r = rollout(
            Policy {
                max_hosts_in_flight: 1,
                failure_action: FailureAction::Rollback,
                ..Policy::default()
            },
            vec![
                target("a", "x", 1),
                target("b", "x", 1),
                target("c", "x", 1),
            ],
        );
        let rounds = run(&mut r, &|t: &Target| {
            if t.host == "c" {
                Status::RolledBack
            } else {
                Status::Updated
            }
        });
        assert_eq!(
            rounds,
            vec![vec![0], vec![1], vec![2], vec![1, 0]],
            "b was updated last"
        );
        assert!(
            matches!(r.state, RolloutState::RolledBack { .. }),
            "{:?}",
            r.state
        );
        assert!(matches!(r.targets[0].state, TargetState::Reverted { .. }));
        assert!(matches!(r.targets[1].state, TargetState::Reverted { .. }));
    }

    #[test]
    fn vetoed_targets_are_neither_updated_nor_failed() {
        // No failure tolerated: a single failure would pause. Vetoes do not.
        let policy = Policy {
            max_hosts_in_flight: 1,
            max_failure_ratio: 0.0,
            ..Policy::default()
        };
        let targets = vec![target("a", "x", 1), target("b", "x", 1)];
        let mut r = rollout(policy, targets);
        run(&mut r, &|t: &Target| {
            if t.host == "a" {
                Status::Vetoed
            } else {
                Status::Updated
            }
        });
        assert_eq!(r.state, RolloutState::Completed { failed: 0 });
        assert_eq!(r.targets[0].state.name(), "vetoed");
        assert!(matches!(r.targets[1].state, TargetState::Updated { .. }));
        let vetoed = after_update(Status::Vetoed, "vetoed by hook before_update/x: no", 5);
        let mut t = target("a", "x", 1);
        t.state = vetoed;
        let entry = t.history("r-1");
        assert_eq!(entry.result, "vetoed");
        assert_eq!(entry.reason, "vetoed by hook before_update/x: no");
        // Not a bad digest: the next cycle asks the hook again.
        assert!(r.bad_digest(&r.targets[0], 5).is_none());
    }

    #[test]
    fn tolerated_failures_continue_and_continue_never_stops() {
        let policy = Policy {
            max_hosts_in_flight: 1,
            max_failure_ratio: 0.5,
            ..Policy::default()
        };
        let targets = vec![
            target("a", "x", 1),
            target("b", "x", 1),
            target("c", "x", 1),
        ];
        let mut r = rollout(policy.clone(), targets.clone());
        run(&mut r, &|t: &Target| {
            if t.host == "a" {
                Status::Refused
            } else {
                Status::Updated
            }
        });
        assert_eq!(
            r.state,
            RolloutState::Completed { failed: 1 },
            "1 of 3 is under half"
        );
        let mut r = rollout(
            Policy {
                failure_action: FailureAction::Continue,
                ..policy
            },
            targets,
        );
        run(&mut r, &|_: &Target| Status::RolledBack);
        assert_eq!(r.state, RolloutState::Completed { failed: 3 });
    }

    #[test]
    fn deadlines_act_and_disconnected_hosts_wait() {
        let mut r = rollout(
            Policy {
                progress_deadline_ms: 5_000,
                failure_action: FailureAction::Continue,
                ..Policy::default()
            },
            vec![target("a", "x", 1), target("b", "x", 1)],
        );
        let windows = Windows::default();
        let only_a = |h: &str| h == "a";
        let o = Observation {
            now_ms: 1_000,
            connected: &only_a,
            windows: &windows,
        };
        assert_eq!(
            plan(&r, &o),
            vec![Action::Dispatch(0)],
            "b is not connected"
        );
        r.set(
            0,
            TargetState::Dispatched {
                op_id: "op".into(),
                at_ms: 1_000,
            },
            1_000,
        );
        let later = Observation {
            now_ms: 6_001,
            ..o.clone()
        };
        assert_eq!(
            plan(&r, &later),
            vec![Action::TimedOut(0), Action::Abandon(1)],
            "a's command timed out; b stayed away as long"
        );
        assert_eq!(next_wake(&r, &o), Some(6_001));
    }

    #[test]
    fn new_work_starts_only_inside_a_window_and_batches_are_delayed() {
        // 2026-11-28 (Saturday) 01:00 UTC, then 02:30.
        let before = chrono::DateTime::parse_from_rfc3339("2026-11-28T01:00:00Z")
            .unwrap()
            .timestamp_millis();
        let inside = before + 90 * 60 * 1000;
        let windows = Windows::parse("Sat 02:00-04:00").unwrap();
        let mut r = rollout(
            Policy {
                max_hosts_in_flight: 1,
                batch_delay_ms: 60_000,
                ..Policy::default()
            },
            vec![target("a", "x", 1), target("b", "x", 1)],
        );
        let at = |now_ms| Observation {
            now_ms,
            connected: &all,
            windows: &windows,
        };
        assert_eq!(plan(&r, &at(before)), vec![]);
        assert_eq!(next_wake(&r, &at(before)), Some(before + 60 * 60 * 1000));
        assert_eq!(plan(&r, &at(inside)), vec![Action::Dispatch(0)]);
        r.set(
            0,
            TargetState::Dispatched {
                op_id: "o".into(),
                at_ms: inside,
            },
            inside,
        );
        r.set(
            0,
            after_update(Status::Updated, "", inside + 10),
            inside + 10,
        );
        assert_eq!(plan(&r, &at(inside + 20)), vec![], "batch delay");
        assert_eq!(
            plan(&r, &at(inside + 10 + 60_000)),
            vec![Action::Dispatch(1)]
        );
    }

    #[test]
    fn a_cancelled_rollout_starts_nothing_new_and_ends_cancelled() {
        let mut r = rollout(
            Policy {
                max_hosts_in_flight: 1,
                ..Policy::default()
            },
            vec![
                target("a", "x", 1),
                target("b", "x", 1),
                target("c", "x", 1),
            ],
        );
        // a fails and pauses the rollout; b and c never started.
        run(&mut r, &|t: &Target| {
            if t.host == "a" {
                Status::RolledBack
            } else {
                Status::Updated
            }
        });
        assert!(matches!(r.state, RolloutState::Paused { .. }));
        r.cancel = Some(Cancel {
            reason: "bad image".into(),
            revert: false,
            at_ms: 9_000,
        });
        let rounds = run(&mut r, &ok);
        assert!(rounds.is_empty(), "something was sent: {rounds:?}");
        assert_eq!(
            r.state,
            RolloutState::Cancelled {
                reason: "bad image".into()
            }
        );
        let states: Vec<&str> = r.targets.iter().map(|t| t.state.name()).collect();
        assert_eq!(states, ["failed", "cancelled", "cancelled"]);
        assert_eq!(r.not_started(), 0);
        assert!(r.state.is_ended() && !r.state.is_active());
    }

    #[test]
    fn a_cancel_lets_work_in_flight_finish_and_with_revert_sends_updates_back() {
        let mut r = rollout(
            Policy::default(),
            vec![
                target("a", "x", 1),
                target("b", "x", 1),
                target("c", "y", 1),
            ],
        );
        let now = 1_000;
        let started = plan_at(&r, now);
        assert_eq!(started.len(), 3);
        apply(
            &mut r,
            &[Action::Dispatch(0), Action::Dispatch(1)],
            now,
            &ok,
        );
        // a answered updated, b is still in flight, c never started.
        r.set(
            1,
            TargetState::Dispatched {
                op_id: "o".into(),
                at_ms: now,
            },
            now,
        );
        r.cancel = Some(Cancel {
            reason: "stop".into(),
            revert: true,
            at_ms: now,
        });
        let actions = plan_at(&r, now + 10);
        assert!(actions.contains(&Action::Cancel(2)), "{actions:?}");
        assert!(actions.contains(&Action::Revert(0)), "{actions:?}");
        assert!(
            !actions.iter().any(|a| matches!(a, Action::Become(_))),
            "ended with b in flight: {actions:?}"
        );
        assert!(!actions.contains(&Action::Revert(1)), "b is busy");
        // b ends updated, then goes back too; then the rollout ends.
        r.set(
            2,
            TargetState::Cancelled {
                reason: "stop".into(),
            },
            now + 20,
        );
        r.set(
            0,
            TargetState::Reverting {
                op_id: "back".into(),
                at_ms: now + 20,
            },
            now + 20,
        );
        r.set(1, after_update(Status::Updated, "", now + 30), now + 30);
        r.set(0, after_revert(Status::Updated, "", now + 40), now + 40);
        assert_eq!(plan_at(&r, now + 50), vec![Action::Revert(1)]);
        r.set(
            1,
            TargetState::Reverting {
                op_id: "back2".into(),
                at_ms: now + 50,
            },
            now + 50,
        );
        r.set(1, after_revert(Status::Updated, "", now + 60), now + 60);
        assert_eq!(
            plan_at(&r, now + 70),
            vec![Action::Become(RolloutState::Cancelled {
                reason: "stop".into()
            })]
        );
        // Both sent back, and c cancelled: the digest is a bad one for each container now.
        let bad: Vec<String> = r
            .targets
            .iter()
            .filter_map(|t| r.bad_digest(t, 5))
            .map(|b| format!("{} {}", b.outcome, b.digest))
            .collect();
        assert_eq!(
            bad,
            [
                "reverted sha256:new",
                "reverted sha256:new",
                "cancelled sha256:new"
            ]
        );
    }

    #[test]
    fn only_an_image_that_was_tried_and_failed_is_a_bad_digest() {
        let r = rollout(Policy::default(), vec![target("a", "x", 1)]);
        let with = |state: TargetState| Target {
            state,
            ..target("a", "x", 1)
        };
        let failed = |outcome: &str| TargetState::Failed {
            reason: "why".into(),
            outcome: outcome.into(),
        };
        assert!(r.bad_digest(&with(failed("rolled-back")), 1).is_some());
        assert!(r.bad_digest(&with(failed("rollback-failed")), 1).is_some());
        for not_the_image in ["refused", "error", "timeout"] {
            assert!(
                r.bad_digest(&with(failed(not_the_image)), 1).is_none(),
                "{not_the_image}"
            );
        }
        assert!(r.bad_digest(&with(TargetState::Pending), 1).is_none());
        let cancelled = TargetState::Cancelled {
            reason: "cancelled by the operator".into(),
        };
        assert_eq!(
            r.bad_digest(&with(cancelled), 1).map(|b| b.outcome),
            Some("cancelled".into())
        );
        let rolled_back = Rollout {
            state: RolloutState::RolledBack {
                reason: "1 of 2 failed".into(),
            },
            ..r.clone()
        };
        assert_eq!(
            rolled_back
                .bad_digest(&with(TargetState::Pending), 1)
                .map(|b| b.outcome),
            Some("not-started".into())
        );
    }

    #[test]
    fn a_resumed_rollout_goes_on_past_the_failures_it_paused_for() {
        let mut r = rollout(
            Policy {
                max_hosts_in_flight: 1,
                ..Policy::default()
            },
            vec![
                target("a", "x", 1),
                target("b", "x", 1),
                target("c", "x", 1),
            ],
        );
        run(&mut r, &|t: &Target| {
            if t.host == "a" {
                Status::RolledBack
            } else {
                Status::Updated
            }
        });
        assert!(matches!(r.state, RolloutState::Paused { .. }));
        r.resume(50_000);
        let rounds = run(&mut r, &ok);
        assert_eq!(rounds, vec![vec![1], vec![2]], "b and c after the resume");
        assert_eq!(r.state, RolloutState::Completed { failed: 1 });
        // A new failure after the resume pauses again.
        let mut r = rollout(
            Policy {
                max_hosts_in_flight: 1,
                ..Policy::default()
            },
            vec![
                target("a", "x", 1),
                target("b", "x", 1),
                target("c", "x", 1),
            ],
        );
        run(&mut r, &|t: &Target| {
            if t.host == "a" {
                Status::Refused
            } else {
                Status::Updated
            }
        });
        r.resume(50_000);
        run(&mut r, &|t: &Target| {
            if t.host == "b" {
                Status::Refused
            } else {
                Status::Updated
            }
        });
        assert!(
            matches!(r.state, RolloutState::Paused { .. }),
            "{:?}",
            r.state
        );
        assert_eq!(r.targets[2].state, TargetState::Pending);
    }

    #[test]
    fn a_rollback_waits_for_updates_still_in_flight_and_sends_them_back_too() {
        let mut r = rollout(
            Policy {
                failure_action: FailureAction::Rollback,
                ..Policy::default()
            },
            vec![target("a", "x", 1), target("b", "x", 1)],
        );
        let now = 1_000;
        for i in 0..2 {
            r.set(
                i,
                TargetState::Dispatched {
                    op_id: format!("op-{i}"),
                    at_ms: now,
                },
                now,
            );
        }
        r.set(
            0,
            after_update(Status::RolledBack, "unhealthy", now + 1),
            now + 1,
        );
        let actions = plan_at(&r, now + 2);
        assert!(
            matches!(
                actions.as_slice(),
                [Action::Become(RolloutState::RollingBack { .. })]
            ),
            "{actions:?}"
        );
        r.state = RolloutState::RollingBack {
            reason: "1 of 2".into(),
        };
        assert_eq!(
            plan_at(&r, now + 3),
            vec![],
            "b is still in flight: not rolled back yet"
        );
        r.set(1, after_update(Status::Updated, "", now + 4), now + 4);
        assert_eq!(
            plan_at(&r, now + 5),
            vec![Action::Revert(1)],
            "b goes back too"
        );
    }

    #[test]
    fn targets_of_a_host_away_past_the_deadline_are_given_up() {
        let mut r = rollout(
            Policy {
                progress_deadline_ms: 5_000,
                failure_action: FailureAction::Continue,
                ..Policy::default()
            },
            vec![target("a", "x", 1), target("b", "x", 1)],
        );
        r.created_ms = 1_000;
        r.updated_ms = 1_000;
        let windows = Windows::default();
        let only_a = |h: &str| h == "a";
        let at = |now_ms| Observation {
            now_ms,
            connected: &only_a,
            windows: &windows,
        };
        assert_eq!(plan(&r, &at(2_000)), vec![Action::Dispatch(0)]);
        assert_eq!(plan(&r, &at(7_000)), vec![Action::Abandon(1)]);
    }

    #[test]
    fn a_failed_canary_stops_the_rollout_whatever_the_ratio() {
        let mut r = rollout(
            Policy {
                max_failure_ratio: 0.9,
                canary_wait_ms: 0,
                ..Policy::default()
            },
            vec![
                target("a", "x", 0),
                target("b", "x", 1),
                target("c", "x", 1),
            ],
        );
        let rounds = run(&mut r, &|t: &Target| {
            if t.host == "a" {
                Status::RolledBack
            } else {
                Status::Updated
            }
        });
        assert_eq!(rounds, vec![vec![0]], "nothing after the failed canary");
        assert!(
            matches!(&r.state, RolloutState::Paused { reason } if reason == "a canary host failed"),
            "{:?}",
            r.state
        );
    }

    #[test]
    fn independent_containers_of_a_host_go_out_together_up_to_the_limit() {
        let targets: Vec<Target> = (0..7)
            .map(|i| target("a", &format!("c{i}"), 1))
            .chain([target("b", "x", 1), target("b", "y", 1)])
            .collect();
        let mut r = rollout(per_host(3), targets.clone());
        let rounds = run(&mut r, &ok);
        assert_eq!(
            rounds,
            vec![vec![0, 1, 2, 7, 8], vec![3, 4, 5], vec![6]],
            "three of a at once, both of b"
        );
        assert_eq!(r.state, RolloutState::Completed { failed: 0 });
        // A freed slot is taken at once, while the others are still in flight.
        let mut r = rollout(per_host(3), targets);
        let first = plan_at(&r, 1_000);
        for a in &first {
            if let Action::Dispatch(i) = a {
                r.set(
                    *i,
                    TargetState::Dispatched {
                        op_id: format!("op-{i}"),
                        at_ms: 1_000,
                    },
                    1_000,
                );
            }
        }
        r.set(1, after_update(Status::Updated, "", 1_500), 1_500);
        assert_eq!(plan_at(&r, 1_600), vec![Action::Dispatch(3)]);
        // The host counts once against the hosts in flight.
        let mut r = rollout(
            Policy {
                max_hosts_in_flight: 1,
                ..per_host(5)
            },
            vec![
                target("a", "x", 1),
                target("a", "y", 1),
                target("b", "x", 1),
            ],
        );
        assert_eq!(run(&mut r, &ok), vec![vec![0, 1], vec![2]]);
    }

    #[test]
    fn dependent_containers_wait_for_each_other_in_order() {
        // db's update touches app and worker (its dependants); app's touches the proxy;
        // api's too. cache is on its own.
        let mut r = rollout(
            per_host(10),
            vec![
                touching("a", "db", &["app", "worker", "proxy"]),
                touching("a", "cache", &[]),
                touching("a", "app", &["proxy"]),
                touching("a", "worker", &[]),
                touching("a", "api", &["proxy"]),
                touching("a", "proxy", &[]),
            ],
        );
        let rounds = run(&mut r, &ok);
        // Round 1: db and cache; api shares the proxy with app, which waits for db, so it
        // waits too. Then app and worker; then api; then the proxy.
        assert_eq!(rounds, vec![vec![0, 1], vec![2, 3], vec![4], vec![5]]);
    }

    #[test]
    fn own_containers_services_and_unknown_reaches_run_alone() {
        let alone =
            |container: &str, own: Own, service: bool, touches: Option<Vec<String>>| Target {
                own,
                service,
                touches,
                ..target("a", container, 1)
            };
        let mut r = rollout(
            per_host(10),
            vec![
                target("a", "x", 1),
                target("a", "y", 1),
                alone(
                    "service:web",
                    Own::No,
                    true,
                    Some(vec!["service:web".into()]),
                ),
                target("a", "z", 1),
                alone("old", Own::No, false, None),
                target("a", "w", 1),
                alone("agent", Own::Agent, false, Some(vec!["agent".into()])),
                alone(
                    "coordinator",
                    Own::Coordinator,
                    false,
                    Some(vec!["coordinator".into()]),
                ),
            ],
        );
        let rounds = run(&mut r, &ok);
        assert_eq!(
            rounds,
            vec![
                vec![0, 1],
                vec![2],
                vec![3],
                vec![4],
                vec![5],
                vec![6],
                vec![7]
            ]
        );
        // A way back in flight holds the host too.
        let mut r = rollout(per_host(10), vec![target("a", "x", 1), target("a", "y", 1)]);
        r.set(
            0,
            TargetState::Reverting {
                op_id: "back".into(),
                at_ms: 1,
            },
            1,
        );
        assert_eq!(plan_at(&r, 2), vec![]);
    }

    #[test]
    fn one_container_per_host_is_the_default_and_old_rollouts_keep_it() {
        let targets = vec![
            target("a", "x", 1),
            target("a", "y", 1),
            target("b", "x", 1),
        ];
        let mut r = rollout(Policy::default(), targets);
        assert_eq!(run(&mut r, &ok), vec![vec![0, 2], vec![1]]);
        // A rollout stored before the option and the targets' reaches existed.
        let mut stored = serde_json::to_value(rollout(Policy::default(), Vec::new())).unwrap();
        stored["policy"]
            .as_object_mut()
            .unwrap()
            .remove("max_containers_in_flight");
        let mut old_target = serde_json::to_value(target("a", "x", 1)).unwrap();
        old_target.as_object_mut().unwrap().remove("touches");
        stored["targets"] = serde_json::json!([old_target.clone(), old_target]);
        stored["targets"][1]["container"] = "y".into();
        let mut back: Rollout = serde_json::from_value(stored).unwrap();
        assert_eq!(back.policy.max_containers_in_flight, 1);
        assert_eq!(back.targets[0].touches, None);
        // Run with a newer configuration allowing more: unknown reaches still go one by one.
        back.policy.max_containers_in_flight = 5;
        assert_eq!(run(&mut back, &ok), vec![vec![0], vec![1]]);
    }
}

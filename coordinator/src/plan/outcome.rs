//! What became of one update, as the coordinator reasons about it (the wire's
//! `RecreateResult` is turned into this at the edge, in [`crate::server::convert`]).

/// How an update ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Runs the new image; the old container is gone.
    Updated,
    /// It already ran the target image; nothing changed.
    AlreadyCurrent,
    /// The agent declined or failed before anything was changed.
    Refused,
    /// Failed after the stop; the old container was restored.
    RolledBack,
    /// Failed and the old container could not be fully restored.
    RollbackFailed,
    /// The agent stopped first; nothing changed and the same operation may be sent again.
    Interrupted,
    /// The agent could not run the command.
    Error,
    /// Never sent: its rollout paused or ended first (or its host stayed away).
    NotStarted,
    /// Never sent: its rollout was cancelled.
    Cancelled,
    /// A hook said no (a `before_update` script, or the container's `pre-update` command
    /// exiting 75): nothing changed. Neither a success nor a failure.
    Vetoed,
    /// The container was removed before its update reached it: the agent found no such
    /// container and the host's inventory (sent just before the answer) no longer lists it.
    /// Nothing to update; neither a success nor a failure (a fleet with churn must not pause).
    Gone,
}

impl Status {
    /// The name the CLI, the history and the metrics use.
    pub fn name(self) -> &'static str {
        match self {
            Self::Updated => "updated",
            Self::AlreadyCurrent => "already-current",
            Self::Refused => "refused",
            Self::RolledBack => "rolled-back",
            Self::RollbackFailed => "rollback-failed",
            Self::Interrupted => "interrupted",
            Self::Error => "error",
            Self::NotStarted => "not-started",
            Self::Cancelled => "cancelled",
            Self::Vetoed => "vetoed",
            Self::Gone => "gone",
        }
    }

    /// Whether the container runs the target image now.
    pub fn succeeded(self) -> bool {
        matches!(self, Self::Updated | Self::AlreadyCurrent)
    }

    /// Whether it ended without an update and without a failure: a hook said no, or the
    /// container is gone.
    pub fn left_alone(self) -> bool {
        matches!(self, Self::Vetoed | Self::Gone)
    }

    /// Whether the target was never sent to its agent.
    pub fn never_sent(self) -> bool {
        matches!(self, Self::NotStarted | Self::Cancelled)
    }
}

/// What the agent did with one container that refers to the one updated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DependantAction {
    /// Recreated on the new image of its own tag.
    Updated,
    /// Recreated on its own image, to follow the new container.
    Recreated,
    /// Stopped before and started after.
    Restarted,
    /// Back to its old container after a failure.
    Restored,
    /// Nothing was needed.
    Untouched,
    /// Does not run again: needs an operator.
    Failed,
}

impl DependantAction {
    pub fn name(self) -> &'static str {
        match self {
            Self::Updated => "updated",
            Self::Recreated => "recreated",
            Self::Restarted => "restarted",
            Self::Restored => "restored",
            Self::Untouched => "untouched",
            Self::Failed => "failed",
        }
    }
}

/// One dependant's part in an update.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DependantResult {
    pub container: String,
    /// How it refers to the container (`network`, `link`, `soft`, ...).
    pub kind: String,
    pub action: DependantAction,
    pub new_id: String,
    pub image_id: String,
    pub reason: String,
}

/// What became of one update.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpdateResult {
    pub status: Status,
    pub new_id: String,
    pub image_id: String,
    /// The step that failed.
    pub step: String,
    pub reason: String,
    /// With cleanup: what became of the old image.
    pub cleanup: String,
    pub dependants: Vec<DependantResult>,
}

impl UpdateResult {
    /// A result with only a status and a reason.
    pub fn with(status: Status, reason: impl Into<String>) -> Self {
        Self {
            status,
            new_id: String::new(),
            image_id: String::new(),
            step: String::new(),
            reason: reason.into(),
            cleanup: String::new(),
            dependants: Vec::new(),
        }
    }
}

/// What a volume prune did on one host.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pruned {
    pub host: String,
    /// Anonymous volumes removed.
    pub removed: Vec<String>,
    /// Why the prune failed, in part or whole.
    pub error: String,
}

//! Recreating a container on a new image without losing a setting, and without leaving any
//! container that refers to it down (DESIGN.md sections 5 and 11):
//!
//! - [`spec`] derives a replacement's create request from `docker inspect` (pure);
//! - [`dependants`] finds the containers that refer to it and what each needs (pure);
//! - [`executor`] runs the safe sequence: pull, stop, set aside, create, start, health gate,
//!   then the dependants, then remove the old containers; any failure rolls everything back.
//!   Its parts: `prepare` (inspect, check, pull, derive; nothing changes), `follow` (the
//!   dependants stopped before and recreated after), `rollback` (going back, and starting
//!   again what was stopped);
//! - [`ops`] holds the Docker steps it is made of (stop with the right signal on every API
//!   version, starts that are checked by looking, removal), [`pull`] the pull with
//!   credentials;
//! - [`journal`] records each step before it is taken, and [`recovery`] finishes or reverts
//!   what a crash interrupted (every operation of the host: several may run at once, each on
//!   containers [`claims`] keeps for it alone);
//! - [`gate`] asks the coordinator at its hook points inside an operation;
//! - [`lifecycle`] runs the container's own lifecycle commands (labels) around its update;
//! - [`faults`] injects crashes for tests; [`signal`] reads stop signals.

mod claims;
pub mod dependants;
pub mod executor;
pub mod faults;
mod follow;
pub mod gate;
pub mod journal;
pub mod lifecycle;
pub mod ops;
mod prepare;
pub mod pull;
pub mod recovery;
mod rollback;
pub mod signal;
pub mod spec;

use std::sync::{Arc, Mutex};

use ouroboros_proto::v1 as pb;
use pb::recreate_result::Status;

use journal::{DependantEntry, DependantState, Outcome};

/// Label on every container a recreate creates: the operation that made it. A rollback only
/// removes a container under the name that carries its own operation's label.
pub const LABEL_OP: &str = "com.ouroboros.op";

/// What an old container's name gets while it is set aside: `NAME-ouroboros-old-OP`.
pub const ASIDE_MARK: &str = "-ouroboros-old-";

/// Something an operator must look at, found where no command can carry it (recovery at
/// start, an unreadable journal entry). Sent to the coordinator, which notifies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Alert {
    pub container: String,
    pub op_id: String,
    pub message: String,
}

/// Alerts waiting for the link to the coordinator.
pub type Alerts = Arc<Mutex<Vec<Alert>>>;

/// What an operation did: its outcome and what became of each dependant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub outcome: Outcome,
    pub dependants: Vec<DependantReport>,
}

/// One dependant's part in an operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DependantReport {
    pub container: String,
    pub kind: &'static str,
    /// `updated`, `recreated`, `restarted`, `restored`, `untouched` or `failed`.
    pub action: &'static str,
    pub new_id: String,
    pub image_id: String,
    pub reason: String,
}

impl DependantReport {
    /// What the journal says became of `d`.
    pub fn of(d: &DependantEntry) -> Self {
        let (action, new_id, image_id, reason) = match &d.state {
            DependantState::Passed {
                new_id,
                image_id,
                moved,
                reason,
            } => (
                if *moved { "updated" } else { "recreated" },
                new_id.clone(),
                image_id.clone(),
                reason.clone(),
            ),
            DependantState::Started => ("restarted", String::new(), String::new(), String::new()),
            DependantState::Restored { reason } => {
                ("restored", String::new(), String::new(), reason.clone())
            }
            DependantState::Failed { reason } => {
                ("failed", String::new(), String::new(), reason.clone())
            }
            DependantState::Untouched => ("untouched", String::new(), String::new(), String::new()),
            other => (
                "failed",
                String::new(),
                String::new(),
                format!("left in state {other:?}"),
            ),
        };
        Self {
            container: d.name.clone(),
            kind: d.kind.as_str(),
            action,
            new_id,
            image_id,
            reason,
        }
    }
}

impl From<&Outcome> for pb::RecreateResult {
    fn from(outcome: &Outcome) -> Self {
        let mut r = pb::RecreateResult::default();
        match outcome {
            Outcome::Updated { new_id, image_id } => {
                r.set_status(Status::Updated);
                r.new_id.clone_from(new_id);
                r.image_id.clone_from(image_id);
            }
            Outcome::AlreadyCurrent => r.set_status(Status::AlreadyCurrent),
            Outcome::Refused { reason } => {
                r.set_status(Status::Refused);
                r.reason.clone_from(reason);
            }
            Outcome::RolledBack { step, reason } => {
                r.set_status(Status::RolledBack);
                r.step.clone_from(step);
                r.reason.clone_from(reason);
            }
            Outcome::RollbackFailed { step, reason } => {
                r.set_status(Status::RollbackFailed);
                r.step.clone_from(step);
                r.reason.clone_from(reason);
            }
            Outcome::Interrupted { step, reason } => {
                r.set_status(Status::Interrupted);
                r.step.clone_from(step);
                r.reason.clone_from(reason);
            }
            Outcome::Vetoed { reason } => {
                r.set_status(Status::Vetoed);
                r.reason.clone_from(reason);
            }
        }
        r
    }
}

impl From<&Report> for pb::RecreateResult {
    fn from(report: &Report) -> Self {
        let mut r = pb::RecreateResult::from(&report.outcome);
        r.dependants = report
            .dependants
            .iter()
            .map(|d| pb::DependantResult {
                container: d.container.clone(),
                kind: d.kind.to_owned(),
                action: d.action.to_owned(),
                new_id: d.new_id.clone(),
                image_id: d.image_id.clone(),
                reason: d.reason.clone(),
            })
            .collect();
        r
    }
}

impl From<&Alert> for pb::Alert {
    fn from(a: &Alert) -> Self {
        Self {
            container: a.container.clone(),
            op_id: a.op_id.clone(),
            message: a.message.clone(),
        }
    }
}

/// The op id as a container-name suffix (letters, digits, `-`).
pub(crate) fn short(op_id: &str) -> String {
    op_id
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .take(100)
        .collect()
}

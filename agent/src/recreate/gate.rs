//! The coordinator's hook points inside an operation (`--hooks-dir` on the coordinator): at
//! each, the agent asks through a [`HookGate`] and waits for the verdict before the Docker step
//! it names. A `before_*` point's veto, or no verdict, means the step is not taken: before the
//! dependants are stopped the update is rolled back and reported `vetoed`; a soft dependant
//! that may not start stays stopped (reported failed); a hard dependant that may not be
//! recreated keeps its old container; the old image is kept. Recovery after a crash asks
//! nothing (it has no coordinator to ask).

use std::sync::Arc;

use futures_util::future::BoxFuture;

use super::executor::Recreator;

pub const BEFORE_STOP_DEPENDS: &str = "before_stop_depends_container";
pub const BEFORE_START_DEPENDS: &str = "before_start_depends_container";
pub const BEFORE_RECREATE_HARD: &str = "before_recreate_hard_depends_container";
pub const AFTER_RECREATE_HARD: &str = "after_recreate_hard_depends_container";
pub const BEFORE_IMAGE_CLEANUP: &str = "before_image_cleanup";
/// Asked by a successor agent before it removes the old one (self-update), about the agent's
/// container (`subject`: the new image); a veto keeps the old agent.
pub const BEFORE_SELF_CLEANUP: &str = "before_self_cleanup";
/// Told by a successor agent once the old one is gone and it holds the original name.
pub const AFTER_SELF_CLEANUP: &str = "after_self_cleanup";

/// One question to the coordinator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ask {
    pub point: &'static str,
    /// The container the operation updates.
    pub container: String,
    /// The dependant the step is about, or the image to remove.
    pub subject: String,
}

/// Where the agent asks: the link to the coordinator, or a fake in tests.
pub trait HookGate: Send + Sync {
    /// `Ok` to go on; `Err` with the veto (or why no verdict came).
    fn ask(&self, ask: Ask) -> BoxFuture<'_, Result<(), String>>;
}

/// Where one operation asks at its hook points (a [`super::executor::Request`]'s `hooks`);
/// two are equal when they are the same gate.
#[derive(Clone)]
pub struct Hooks(pub Arc<dyn HookGate>);

impl std::fmt::Debug for Hooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Hooks(..)")
    }
}

impl PartialEq for Hooks {
    fn eq(&self, other: &Self) -> bool {
        std::ptr::addr_eq(Arc::as_ptr(&self.0), Arc::as_ptr(&other.0))
    }
}

impl Eq for Hooks {}

impl Recreator {
    /// The verdict at `point` of operation `op_id`, for `container`'s step about `subject`
    /// (`Ok` when the operation has no gate, as in recovery).
    pub(crate) async fn ask_hook(
        &self,
        op_id: &str,
        point: &'static str,
        container: &str,
        subject: &str,
    ) -> Result<(), String> {
        let Some(gate) = self.claims.gate(op_id) else {
            return Ok(());
        };
        let verdict = gate
            .ask(Ask {
                point,
                container: container.to_owned(),
                subject: subject.to_owned(),
            })
            .await;
        if let Err(why) = &verdict {
            tracing::warn!(op = %op_id, container = %container, point, subject = %subject, reason = %why, "Hook point vetoed; the step is not taken.");
        }
        verdict
    }
}

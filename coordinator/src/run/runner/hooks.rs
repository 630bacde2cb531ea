//! The hook points around one target's update, as the runner sends it: `before_update` (a
//! veto leaves the container as it is: the target is `vetoed`) and `after_update` with the
//! agent's answer. The points inside the operation (dependants, image cleanup) the agent asks
//! for when their step is due (the command says how long it waits for each verdict). Each
//! run's end here is kept for the rollout's record.

use std::sync::Arc;
use std::time::Duration;

use crate::hooks::{Event, Fired, Hooks, Point};
use crate::plan::outcome::{Status, UpdateResult};
use crate::plan::rollout::Rollout;
use crate::server::dispatch::{CommandError, Commands, RecreateOptions, Recreated};

/// One update outside a rollout (`update --host H --container C`) with the same hooks around
/// it: a `before_update` veto answers `vetoed` without sending anything.
pub async fn recreate_with_hooks(
    hooks: &Arc<Hooks>,
    commands: &dyn Commands,
    event: Event,
    (host, container, image): (&str, &str, &str),
    options: &RecreateOptions,
    timeout: Duration,
) -> Result<Recreated, CommandError> {
    let mut options = options.clone();
    options.hook_deadline_ms = millis(hooks.verdict_deadline());
    let mut around = (!hooks.is_empty()).then(|| TargetHooks {
        hooks: hooks.clone(),
        event,
        own: false,
        record: Vec::new(),
    });
    if let Some(h) = around.as_mut() {
        match h.before().await {
            Ok(()) => {}
            Err(vetoed) => {
                return Ok(Recreated {
                    op_id: options.op_id.unwrap_or_else(|| commands.new_op_id()),
                    result: vetoed,
                    steps: h.record.iter().map(|r| format!("hook {r}")).collect(),
                });
            }
        }
    }
    let mut done = commands
        .recreate(host, container, image, &options, timeout)
        .await?;
    if let Some(h) = around.as_mut() {
        h.after(&done.result).await;
        done.steps
            .extend(h.record.iter().map(|r| format!("hook {r}")));
    }
    Ok(done)
}

/// `d` in milliseconds, for a command.
pub(super) fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// The hooks of one target's update.
pub(super) struct TargetHooks {
    hooks: Arc<Hooks>,
    event: Event,
    /// One of Ouroboros' own containers: `before_self_update` and `after_self_update` instead
    /// of `before_update` and `after_update`.
    own: bool,
    /// `point/file: end` of each run so far.
    pub record: Vec<String>,
}

impl TargetHooks {
    /// For target `index` of `rollout`; `None` without hooks.
    pub fn of(hooks: &Arc<Hooks>, rollout: &Rollout, index: usize) -> Option<Self> {
        if hooks.is_empty() {
            return None;
        }
        let t = rollout.targets.get(index)?;
        Some(Self {
            hooks: hooks.clone(),
            event: Event {
                rollout: rollout.id.clone(),
                host: t.host.clone(),
                container: t.container.clone(),
                image: t.image.clone(),
                old_digest: t.old_digest.clone(),
                new_digest: t.new_digest.clone(),
                ..Event::default()
            },
            own: t.own != crate::plan::rollout::Own::No,
            record: Vec::new(),
        })
    }

    async fn fire(&mut self, point: Point, event: &Event) -> Fired {
        let fired = self.hooks.fire(point, event).await;
        self.record.extend(fired.summaries());
        fired
    }

    /// Before the command: `Err` with the target's result when `before_update` vetoes.
    pub async fn before(&mut self) -> Result<(), UpdateResult> {
        let event = self.event.clone();
        let point = if self.own {
            Point::BeforeSelfUpdate
        } else {
            Point::BeforeUpdate
        };
        if let Some(veto) = self.fire(point, &event).await.veto {
            tracing::warn!(host = %event.host, container = %event.container, hook = %veto.hook, "A hook vetoed the update; the container is left as it is.");
            return Err(UpdateResult::with(Status::Vetoed, veto.to_string()));
        }
        Ok(())
    }

    /// After the agent's answer (`outcome` and `reason` in the event).
    pub async fn after(&mut self, result: &UpdateResult) {
        let event = Event {
            outcome: result.status.name().to_owned(),
            reason: result.reason.clone(),
            ..self.event.clone()
        };
        let point = if self.own {
            Point::AfterSelfUpdate
        } else {
            Point::AfterUpdate
        };
        self.fire(point, &event).await;
    }
}

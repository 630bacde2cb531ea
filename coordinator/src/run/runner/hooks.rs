//! The hook points around one target's update, as the runner sends it: `before_update` (a
//! veto leaves the container as it is: the target is `vetoed`), `before_image_cleanup` when
//! the command would remove the old image (a veto keeps that image; the update goes on), and
//! `after_update` with the agent's answer. Each run's end is kept for the rollout's record.

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
    let mut around = (!hooks.is_empty()).then(|| TargetHooks {
        hooks: hooks.clone(),
        event,
        record: Vec::new(),
    });
    if let Some(h) = around.as_mut() {
        match h.before(options.cleanup).await {
            Ok(cleanup) => options.cleanup = cleanup,
            Err(vetoed) => {
                return Ok(Recreated {
                    op_id: options.op_id.unwrap_or_else(|| commands.new_op_id()),
                    result: vetoed,
                    steps: h.record.clone(),
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

/// The hooks of one target's update.
pub(super) struct TargetHooks {
    hooks: Arc<Hooks>,
    event: Event,
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
            record: Vec::new(),
        })
    }

    async fn fire(&mut self, point: Point, event: &Event) -> Fired {
        let fired = self.hooks.fire(point, event).await;
        self.record.extend(fired.summaries());
        fired
    }

    /// Before the command: `Err` with the target's result when `before_update` vetoes; else
    /// whether the old image may still be removed (`cleanup`, unless `before_image_cleanup`
    /// vetoes that).
    pub async fn before(&mut self, cleanup: bool) -> Result<bool, UpdateResult> {
        let event = self.event.clone();
        if let Some(veto) = self.fire(Point::BeforeUpdate, &event).await.veto {
            tracing::warn!(host = %event.host, container = %event.container, hook = %veto.hook, "A hook vetoed the update; the container is left as it is.");
            return Err(UpdateResult::with(Status::Vetoed, veto.to_string()));
        }
        if !cleanup {
            return Ok(false);
        }
        match self.fire(Point::BeforeImageCleanup, &event).await.veto {
            Some(veto) => {
                tracing::info!(host = %event.host, container = %event.container, hook = %veto.hook, "A hook vetoed the image cleanup; the old image is kept.");
                Ok(false)
            }
            None => Ok(true),
        }
    }

    /// After the agent's answer (`outcome` and `reason` in the event).
    pub async fn after(&mut self, result: &UpdateResult) {
        let event = Event {
            outcome: result.status.name().to_owned(),
            reason: result.reason.clone(),
            ..self.event.clone()
        };
        self.fire(Point::AfterUpdate, &event).await;
    }
}

//! Ouroboros' own containers in a rollout (self-update): the store is flushed before the
//! coordinator's own container goes, and the moments Ouroboros calls `before_self_update` and
//! `after_self_update` are logged and notified (a successor agent asks the coordinator's
//! `before_self_cleanup` and `after_self_cleanup` hooks around its removal of the old agent,
//! through the gateway's hook requests).

use tracing::{info, warn};

use super::Runner;
use crate::notify::{Kind, Message};
use crate::plan::outcome::UpdateResult;
use crate::plan::rollout::{Own, Rollout, Target};

impl Runner {
    /// Before the commands of `to_send` (target index, op id, revert) go out.
    pub(super) async fn before_self_updates(
        &self,
        rollout: &Rollout,
        to_send: &[(usize, String, bool)],
    ) {
        for (i, _, _) in to_send {
            let t = &rollout.targets[*i];
            let Some(what) = what(t) else { continue };
            if t.own == Own::Coordinator {
                // Everything it would write at its shutdown is stored now (the stop of its
                // container may not wait for that).
                self.flush_store().await;
            }
            info!(event = "before_self_update", rollout = %rollout.id, host = %t.host, container = %t.container, target = %t.target, "Self-update of {what} starts.");
            self.notify(Message {
                event: "before-self-update",
                kind: Kind::Info,
                title: format!("Ouroboros: self-update of {what} on {}", t.host),
                body: format!(
                    "{} goes to {} (rollout {}).",
                    t.container, t.target, rollout.id
                ),
            });
        }
    }

    /// After the answer for target `t`.
    pub(super) fn after_self_update(&self, t: &Target, result: &UpdateResult) {
        let Some(what) = what(t) else { return };
        let status = result.status;
        if status.succeeded() {
            info!(event = "after_self_update", host = %t.host, container = %t.container, status = status.name(), "Self-update of {what} done.");
        } else {
            warn!(event = "after_self_update", host = %t.host, container = %t.container, status = status.name(), reason = %result.reason, "Self-update of {what} did not happen.");
        }
        self.notify(Message {
            event: "after-self-update",
            kind: if status.succeeded() {
                Kind::Success
            } else {
                Kind::Failure
            },
            title: format!(
                "Ouroboros: self-update of {what} on {}: {}",
                t.host,
                status.name()
            ),
            body: if result.reason.is_empty() {
                format!("{} runs {}.", t.container, t.target)
            } else {
                format!("{}: {}", t.container, result.reason)
            },
        });
    }

    /// Stores the counters and the hosts' last-seen times, and waits until the store has them.
    async fn flush_store(&self) {
        crate::telemetry::metrics::store_counters(&self.fleet, &self.metrics);
        let fleet = self.fleet.clone();
        let stored = tokio::task::spawn_blocking(move || {
            fleet.flush_last_seen();
            fleet.sync()
        })
        .await;
        match stored {
            Ok(true) => info!("Store flushed before the coordinator's own update."),
            _ => warn!("The store could not be flushed before the coordinator's own update."),
        }
    }

    fn notify(&self, message: Message) {
        let notifiers = self
            .notifiers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        notifiers.send(message);
    }
}

/// "the agent" or "the coordinator", for one of Ouroboros' own containers.
fn what(t: &Target) -> Option<&'static str> {
    match t.own {
        Own::No => None,
        Own::Agent => Some("the agent"),
        Own::Coordinator => Some("the coordinator"),
    }
}

//! Sending one target's command to its agent until an answer comes, with the hooks around an
//! update ([`super::hooks`]).

use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::info;

use super::{Answer, RESEND, Runner, hooks};
use crate::plan::outcome::Status;
use crate::plan::rollout::Rollout;
use crate::server::dispatch::{CommandError, RecreateOptions};

impl Runner {
    /// Sends the command for target `index` with `op_id` until an answer comes (the agent may
    /// be away for a while: the rollout's progress deadline ends the attempts). An update's
    /// hooks run around it; `resumed` (sent again after a restart) skips the `before_*` ones.
    pub(super) fn send(
        &self,
        rollout: &Rollout,
        index: usize,
        (op_id, revert, resumed): (String, bool, bool),
        answers: mpsc::Sender<Answer>,
    ) -> JoinHandle<()> {
        let t = &rollout.targets[index];
        let host = t.host.clone();
        let container = t.container.clone();
        let service = t.service;
        let image = if revert {
            t.previous.clone()
        } else {
            t.target.clone()
        };
        let mut target_hooks = if revert {
            None
        } else {
            hooks::TargetHooks::of(&self.hooks, rollout, index)
        };
        let options = RecreateOptions {
            op_id: Some(op_id),
            // Going back keeps the image that was just replaced, in case it is wanted again.
            cleanup: self.cleanup_images && !revert,
            min_healthy_ms: rollout.policy.min_healthy_ms,
            healthy_deadline_ms: rollout.policy.healthy_deadline_ms,
            auth_image: None,
            soft_dependants: t.soft_dependants.clone(),
            // Going back, each dependant keeps what it runs (its own target goes back itself).
            dependant_images: if revert {
                Default::default()
            } else {
                t.dependant_images.clone()
            },
            // Going back asks no hook.
            hook_deadline_ms: if revert {
                0
            } else {
                hooks::millis(self.hooks.verdict_deadline())
            },
        };
        let wait = Duration::from_millis(rollout.policy.progress_deadline_ms.max(1000) as u64);
        let commands = self.commands.clone();
        let answer_op = options.op_id.clone().unwrap_or_default();
        tokio::spawn(async move {
            if let Some(h) = target_hooks.as_mut().filter(|_| !resumed) {
                match h.before().await {
                    Ok(()) => {}
                    Err(vetoed) => {
                        let _ = answers
                            .send(Answer {
                                index,
                                op_id: answer_op,
                                revert,
                                result: vetoed,
                                hooks: std::mem::take(&mut h.record),
                            })
                            .await;
                        return;
                    }
                }
            }
            loop {
                let sent = if service {
                    // The agent watches the Swarm update for at most this long and a rollback
                    // as long again: both within the rollout's progress deadline.
                    let watch = wait.saturating_sub(Duration::from_secs(10)) / 2;
                    commands
                        .update_service(
                            &host,
                            crate::detect::swarm::service_name(&container),
                            &image,
                            options.op_id.clone(),
                            watch.max(Duration::from_secs(1)),
                            wait,
                        )
                        .await
                } else {
                    commands
                        .recreate(&host, &container, &image, &options, wait)
                        .await
                };
                match sent {
                    Ok(outcome) if outcome.result.status == Status::Interrupted => {
                        // The agent stopped first and changed nothing: the same operation
                        // again once it is back.
                        info!(host = %host, container = %container, "The agent stopped before the update could finish; it is sent again when the agent is back.");
                        tokio::time::sleep(RESEND).await;
                    }
                    Ok(outcome) => {
                        let mut hooks = Vec::new();
                        if let Some(h) = target_hooks.as_mut() {
                            // The hooks the agent asked for inside the operation, in order.
                            h.record.extend(
                                outcome
                                    .steps
                                    .iter()
                                    .filter_map(|s| s.strip_prefix("hook "))
                                    .map(str::to_owned),
                            );
                            h.after(&outcome.result).await;
                            hooks = std::mem::take(&mut h.record);
                        }
                        let _ = answers
                            .send(Answer {
                                index,
                                op_id: answer_op,
                                revert,
                                result: outcome.result,
                                hooks,
                            })
                            .await;
                        return;
                    }
                    Err(
                        e @ (CommandError::NotConnected(_)
                        | CommandError::AgentGone { .. }
                        | CommandError::TimedOut { .. }),
                    ) => {
                        info!(host = %host, container = %container, error = %e, "No answer yet; the same operation is sent again when the agent is there.");
                        tokio::time::sleep(RESEND).await;
                    }
                }
            }
        })
    }
}

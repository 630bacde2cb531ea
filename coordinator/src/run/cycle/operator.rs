//! What operators ask of the cycle between cycles: resume a paused rollout (and rollouts a
//! restart interrupted), cancel one, forget known-bad digests (`retry`), the policy of the
//! running configuration for stored rollouts, moving a paused rollout's targets to what their
//! tags name now, and the figures `status` shows.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tracing::{info, warn};

use super::{Cycle, PROBE_CONCURRENCY};
use crate::detect::{Decision, Detection, detect};
use crate::plan::rollout::{Rollout, RolloutState, TargetState};
use crate::run::runner::CancelError;

impl Cycle {
    /// A stored rollout that is paused, if any.
    pub(super) fn paused_rollout(&self) -> Option<Rollout> {
        self.fleet
            .newest_rollout(|r| matches!(r.state, RolloutState::Paused { .. }))
            .ok()
            .flatten()
    }

    /// The operator resumes a paused rollout (`id`, or the newest paused one): under the cycle
    /// lock, so that no runner holds an older copy of it, and then runs it.
    pub async fn resume_rollout(&self, id: &str) -> Result<Option<Rollout>, String> {
        let turn = self.running.lock().await;
        let Some(mut rollout) = self
            .fleet
            .newest_rollout(|r| {
                matches!(r.state, RolloutState::Paused { .. }) && (id.is_empty() || r.id == id)
            })
            .map_err(|e| e.to_string())?
        else {
            return Ok(None);
        };
        rollout.resume(self.clock.now_ms());
        self.apply_policy(&mut rollout);
        // What its tags name now: a resume never deploys a digest the tag no longer names.
        let units = self.units();
        let wanted: Vec<super::Unit<'_>> = units
            .list()
            .into_iter()
            .filter(|(h, c)| {
                rollout.targets.iter().any(|t| {
                    t.state == TargetState::Pending && t.host == *h && t.container == c.name
                })
            })
            .collect();
        let detections = detect(
            self.registry.clone(),
            &wanted,
            &self.selection,
            PROBE_CONCURRENCY,
        )
        .await;
        self.supersede(&mut rollout, &detections).await;
        let fleet = self.fleet.clone();
        let stored = rollout.clone();
        let saved = tokio::task::spawn_blocking(move || fleet.save_rollout(&stored, Vec::new()))
            .await
            .unwrap_or(false);
        if !saved {
            return Err("cannot store the rollout; try again".into());
        }
        info!(rollout = %rollout.id, "Rollout resumed.");
        drop(turn);
        Ok(Some(rollout))
    }

    /// Continues the rollouts a restart interrupted, before any new cycle.
    pub async fn resume(&self) {
        let _turn = self.running.lock().await;
        let active: Vec<Rollout> = self
            .fleet
            .rollouts()
            .unwrap_or_default()
            .into_iter()
            // Paused ones too when something was in flight: its outcome is still wanted.
            .filter(|r| {
                r.state.is_active()
                    || (r.cancel.is_some() && !r.state.is_ended())
                    || r.targets.iter().any(|t| {
                        matches!(
                            t.state,
                            TargetState::Dispatched { .. } | TargetState::Reverting { .. }
                        )
                    })
            })
            .collect();
        for mut r in active {
            info!(rollout = %r.id, "Resuming a rollout interrupted by a restart.");
            self.apply_policy(&mut r);
            let (done, _) = self.runner.run(r, &self.windows).await;
            info!(rollout = %done.id, state = done.state.name(), "Resumed rollout stops.");
        }
    }

    /// The running configuration's rollout policy applies to the work of `rollout` not yet
    /// started (a restart with other options changes what a stored rollout does next).
    fn apply_policy(&self, rollout: &mut Rollout) {
        if rollout.policy != self.policy {
            info!(rollout = %rollout.id, "The running configuration's rollout policy applies to what is not started yet.");
            rollout.policy = self.policy.clone();
        }
    }

    /// Moves the targets of `rollout` that have not started to what their tags name now
    /// (`detections`): a newer digest replaces the planned one; a container already current
    /// is skipped. Stored when something changed.
    pub(super) async fn supersede(&self, rollout: &mut Rollout, detections: &[Detection]) {
        let now = self.clock.now_ms();
        let mut changed = false;
        for i in 0..rollout.targets.len() {
            let t = &rollout.targets[i];
            if t.state != TargetState::Pending {
                continue;
            }
            let Some(d) = detections
                .iter()
                .find(|d| d.host == t.host && d.container == t.container)
            else {
                continue;
            };
            match &d.decision {
                Decision::Update { target, digest } if *digest != t.new_digest => {
                    info!(rollout = %rollout.id, host = %t.host, container = %t.container, planned = %t.new_digest, now = %digest, "The tag moved on: the target goes to its newest digest.");
                    let t = &mut rollout.targets[i];
                    t.target.clone_from(target);
                    t.new_digest.clone_from(digest);
                    changed = true;
                }
                Decision::Current => {
                    info!(rollout = %rollout.id, host = %t.host, container = %t.container, "Already on its tag's image: skipped.");
                    rollout.set(
                        i,
                        TargetState::Skipped {
                            reason: "already on the image its tag names now".into(),
                        },
                        now,
                    );
                    changed = true;
                }
                _ => {}
            }
        }
        if changed {
            rollout.updated_ms = now;
            let fleet = self.fleet.clone();
            let stored = rollout.clone();
            let saved =
                tokio::task::spawn_blocking(move || fleet.save_rollout(&stored, Vec::new()))
                    .await
                    .unwrap_or(false);
            if !saved {
                warn!(rollout = %rollout.id, "Cannot store the rollout's new digests.");
            }
        }
    }

    /// The operator cancels rollout `id`: its targets not started are cancelled, work in
    /// flight finishes (and with `revert`, what it updated goes back), then it ends. Returns
    /// the rollout as it is once the cancel took.
    pub async fn cancel_rollout(
        self: &Arc<Self>,
        id: &str,
        revert: bool,
        reason: &str,
    ) -> Result<Rollout, CancelError> {
        let cancel = crate::plan::rollout::Cancel {
            reason: if reason.trim().is_empty() {
                "cancelled by the operator".to_owned()
            } else {
                format!("cancelled by the operator: {}", reason.trim())
            },
            revert,
            at_ms: self.clock.now_ms(),
        };
        let mut watch = self.runner.progress.subscribe();
        let runner_cycle = self.clone();
        let id_owned = id.to_owned();
        let taken =
            tokio::task::spawn_blocking(move || runner_cycle.runner.cancel(&id_owned, cancel))
                .await
                .map_err(|e| CancelError::Unavailable(format!("the cancel failed: {e}")))??;
        match taken {
            crate::run::runner::CancelTaken::ByRunner => {
                // The run in progress picks it up within its tick.
                let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
                loop {
                    if let Some(r) = watch.borrow_and_update().clone()
                        && r.id == id
                        && r.cancel.is_some()
                    {
                        return Ok((*r).clone());
                    }
                    if tokio::time::timeout_at(deadline, watch.changed())
                        .await
                        .is_err()
                    {
                        return Err(CancelError::Unavailable(
                            "the running rollout did not take the cancel in time; see `rollout ID`"
                                .into(),
                        ));
                    }
                }
            }
            crate::run::runner::CancelTaken::Stored(rollout) => {
                info!(rollout = %rollout.id, revert, "Rollout cancelled by the operator.");
                // What is left (answers in flight, ways back, the end) is a run's to do.
                let cycle = self.clone();
                let run = (*rollout).clone();
                tokio::spawn(async move {
                    let _turn = cycle.running.lock().await;
                    let (done, _) = cycle.runner.run(run, &cycle.windows).await;
                    info!(rollout = %done.id, state = done.state.name(), "Cancelled rollout stops.");
                });
                Ok(*rollout)
            }
        }
    }

    /// Forgets the known-bad digests of the containers of `host` and/or named `container`
    /// (all without either); returns how many.
    pub fn forget_bad_digests(&self, host: Option<&str>, container: Option<&str>) -> usize {
        let changes: BTreeMap<String, Option<crate::plan::rollout::BadDigest>> = self
            .fleet
            .bad_digests()
            .into_keys()
            .filter(|key| {
                let (h, c) = key.split_once('/').unwrap_or((key, ""));
                host.is_none_or(|want| want == h) && container.is_none_or(|want| want == c)
            })
            .map(|key| (key, None))
            .collect();
        let n = changes.len();
        self.fleet.set_bad_digests(changes);
        n
    }

    /// Containers the selection watches now, from the fleet view (no registry involved).
    pub fn monitored_now(&self) -> usize {
        self.units()
            .list()
            .iter()
            .filter(|(h, c)| self.selection.check(h, c).is_ok())
            .count()
    }

    /// Updates the last cycle found that the fleet view does not show done yet.
    pub fn pending_now(&self) -> usize {
        let units = self.units();
        let containers = units.list();
        let index = super::by_name(&containers);
        self.found
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|(host, name, digest)| {
                !index.get(&(host.as_str(), name.as_str())).is_some_and(|c| {
                    c.repo_digests
                        .iter()
                        .any(|d| d.ends_with(&format!("@{digest}")))
                })
            })
            .count()
    }
}

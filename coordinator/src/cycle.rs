//! One check cycle: detect what moved for the connected fleet, then (unless it is a dry run)
//! send `Recreate` for each container to update, one container at a time per host, hosts in
//! parallel. Ordering and fleet-wide policy come with rollouts.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use ouroboros_proto::v1 as pb;
use tracing::{info, warn};

use crate::commands::Dispatcher;
use crate::detect::{Decision, Detection, Selection, detect};
use crate::fleet::Fleet;
use crate::registry::RegistryClient;

/// Probes in flight at once across registries (each registry has its own limit too).
const PROBE_CONCURRENCY: usize = 32;
/// Longest a host's volume prune may take.
const PRUNE_TIMEOUT: Duration = Duration::from_secs(120);

/// What is cleaned up after updates.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Cleanup {
    /// The old image after a successful update, when nothing else uses it (CLEANUP).
    pub images: bool,
    /// Unused anonymous volumes after each cycle that is not a dry run (CLEANUP_UNUSED_VOLUMES).
    pub volumes: bool,
}

/// What a cycle needs.
pub struct Cycle {
    pub fleet: Arc<Fleet>,
    pub commands: Arc<Dispatcher>,
    pub registry: Arc<RegistryClient>,
    pub selection: Selection,
    pub cleanup: Cleanup,
    pub update_timeout: Duration,
    /// One cycle at a time, whoever starts it (schedule or `check`).
    running: tokio::sync::Mutex<()>,
}

/// One container's part in a cycle.
#[derive(Debug, Clone)]
pub struct Checked {
    pub detection: Detection,
    /// The agent's answer, for updates sent.
    pub result: Option<pb::RecreateResult>,
}

/// What a cycle did.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub checked: Vec<Checked>,
    /// Volume prunes, by host (with [`Cleanup::volumes`], outside dry runs).
    pub pruned: Vec<pb::VolumePrune>,
}

impl Cycle {
    pub fn new(
        fleet: Arc<Fleet>,
        commands: Arc<Dispatcher>,
        registry: Arc<RegistryClient>,
        selection: Selection,
        cleanup: Cleanup,
        update_timeout: Duration,
    ) -> Self {
        Self {
            fleet,
            commands,
            registry,
            selection,
            cleanup,
            update_timeout,
            running: tokio::sync::Mutex::new(()),
        }
    }

    /// Runs one cycle, after any cycle already running.
    pub async fn run(&self, dry_run: bool) -> Report {
        let _turn = self.running.lock().await;
        // Only hosts that reported since they connected: a stored inventory may be stale.
        let connected: Vec<String> = self
            .fleet
            .hosts()
            .into_iter()
            .filter(|h| h.connected && h.reported)
            .map(|h| h.record.host)
            .collect();
        let mut containers = Vec::new();
        let mut offline = Vec::new();
        for (host, c) in self.fleet.containers(None).unwrap_or_default() {
            if connected.contains(&host) {
                containers.push((host, c));
            } else {
                offline.push(Detection {
                    host,
                    container: c.name,
                    image: c.image,
                    decision: Decision::Skip {
                        reason: "host not connected (or not reported since it connected)".into(),
                    },
                });
            }
        }
        let detections = detect(
            self.registry.clone(),
            &containers,
            &self.selection,
            PROBE_CONCURRENCY,
        )
        .await;
        let updates = detections
            .iter()
            .filter(|d| matches!(d.decision, Decision::Update { .. }))
            .count();
        info!(
            containers = detections.len(),
            updates, dry_run, "Check cycle: detection done."
        );
        let mut results: BTreeMap<(String, String), pb::RecreateResult> = BTreeMap::new();
        if !dry_run {
            let mut per_host: BTreeMap<String, Vec<(String, String)>> = BTreeMap::new();
            for d in &detections {
                if let Decision::Update { target, .. } = &d.decision {
                    per_host
                        .entry(d.host.clone())
                        .or_default()
                        .push((d.container.clone(), target.clone()));
                }
            }
            let runs = per_host.into_iter().map(|(host, list)| async move {
                let mut done = Vec::new();
                for (container, target) in list {
                    let result = match self
                        .commands
                        .recreate(
                            &host,
                            &container,
                            &target,
                            &crate::commands::RecreateOptions {
                                cleanup: self.cleanup.images,
                                ..Default::default()
                            },
                            self.update_timeout,
                        )
                        .await
                    {
                        Ok(outcome) => outcome.result.recreate.unwrap_or_default(),
                        Err(e) => {
                            warn!(host = %host, container = %container, error = %e, "Update not done.");
                            let mut r = pb::RecreateResult {
                                reason: e.to_string(),
                                ..Default::default()
                            };
                            r.set_status(pb::recreate_result::Status::Error);
                            r
                        }
                    };
                    done.push(((host.clone(), container), result));
                }
                done
            });
            for done in futures_util::future::join_all(runs).await {
                results.extend(done);
            }
        }
        let pruned = if self.cleanup.volumes && !dry_run {
            self.prune(&connected).await
        } else {
            Vec::new()
        };
        let checked = detections
            .into_iter()
            .chain(offline)
            .map(|detection| {
                let result = results.remove(&(detection.host.clone(), detection.container.clone()));
                Checked { detection, result }
            })
            .collect();
        Report { checked, pruned }
    }

    /// Each host's unused anonymous volumes, hosts in parallel.
    async fn prune(&self, hosts: &[String]) -> Vec<pb::VolumePrune> {
        let prunes = hosts.iter().map(|host| async move {
            match self.commands.prune_volumes(host, PRUNE_TIMEOUT).await {
                Ok(outcome) => {
                    let r = outcome.result.prune.unwrap_or_default();
                    pb::VolumePrune {
                        host: host.clone(),
                        removed: r.removed,
                        error: r.error,
                    }
                }
                Err(e) => {
                    warn!(host = %host, error = %e, "Volume prune not done.");
                    pb::VolumePrune {
                        host: host.clone(),
                        removed: Vec::new(),
                        error: e.to_string(),
                    }
                }
            }
        });
        futures_util::future::join_all(prunes).await
    }
}

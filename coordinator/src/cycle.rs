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

/// What a cycle needs.
pub struct Cycle {
    pub fleet: Arc<Fleet>,
    pub commands: Arc<Dispatcher>,
    pub registry: Arc<RegistryClient>,
    pub selection: Selection,
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

impl Cycle {
    pub fn new(
        fleet: Arc<Fleet>,
        commands: Arc<Dispatcher>,
        registry: Arc<RegistryClient>,
        selection: Selection,
        update_timeout: Duration,
    ) -> Self {
        Self {
            fleet,
            commands,
            registry,
            selection,
            update_timeout,
            running: tokio::sync::Mutex::new(()),
        }
    }

    /// Runs one cycle, after any cycle already running.
    pub async fn run(&self, dry_run: bool) -> Vec<Checked> {
        let _turn = self.running.lock().await;
        let connected: Vec<String> = self
            .fleet
            .hosts()
            .into_iter()
            .filter(|h| h.connected)
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
                        reason: "host not connected".into(),
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
                        .recreate(&host, &container, &target, self.update_timeout)
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
        detections
            .into_iter()
            .chain(offline)
            .map(|detection| {
                let result = results.remove(&(detection.host.clone(), detection.container.clone()));
                Checked { detection, result }
            })
            .collect()
    }
}

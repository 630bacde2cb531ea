//! The rollout of a cycle's updates: its targets per host in dependency order, canary hosts
//! first, Ouroboros' own containers after the others (see [`Own`]).

use std::collections::BTreeMap;

use ouroboros_agent::own::same;
use ouroboros_shared::inventory::ContainerInfo;
use ouroboros_shared::reference::ImageRef;

use super::Cycle;
use crate::detect::{Decision, Detection};
use crate::plan::deps::Graph;
use crate::plan::rollout::{Canary, Own, Rollout, RolloutState, Target, TargetState};

/// Why `up`'s own container is not updated by itself.
pub(crate) const UP_ITSELF: &str = "the container of `up` itself: `up` cannot replace its own process (run `serve` with an agent container to self-update)";

impl Cycle {
    /// The container of `up` (the coordinator and the host's agent in one process) is skipped
    /// with the reason: its agent cannot stop the process it runs in, and a refusal would count
    /// as a failure and hold the rollout.
    pub(super) fn skip_self_update_of_up(
        &self,
        detections: &mut [Detection],
        containers: &[(String, ContainerInfo)],
    ) {
        let Some(own) = coordinator_container() else {
            return;
        };
        let agents: BTreeMap<String, String> = self
            .fleet
            .hosts()
            .into_iter()
            .map(|h| (h.record.host, h.record.agent_container))
            .collect();
        skip_up_itself(own, &agents, detections, containers);
    }

    /// The rollout of this cycle's updates: per host in dependency order, canary hosts first.
    pub(super) fn plan_rollout(
        &self,
        detections: &[Detection],
        containers: &[(String, ContainerInfo)],
        graphs: &BTreeMap<String, Graph>,
    ) -> Rollout {
        let mut by_host: BTreeMap<String, Vec<&Detection>> = BTreeMap::new();
        for d in detections {
            if matches!(d.decision, Decision::Update { .. }) {
                by_host.entry(d.host.clone()).or_default().push(d);
            }
        }
        let hosts: Vec<String> = by_host.keys().cloned().collect();
        let canary: Vec<String> = match &self.policy.canary {
            Canary::None => Vec::new(),
            Canary::Hosts(list) => hosts.iter().filter(|h| list.contains(h)).cloned().collect(),
            Canary::Count(n) => hosts.iter().take(*n as usize).cloned().collect(),
        };
        let agents: BTreeMap<String, String> = self
            .fleet
            .hosts()
            .into_iter()
            .filter(|h| !h.record.agent_container.is_empty())
            .map(|h| (h.record.host, h.record.agent_container))
            .collect();
        let own_of = |host: &str, info: Option<&ContainerInfo>| {
            let id = info.map(|c| c.id.as_str()).unwrap_or_default();
            if coordinator_container().is_some_and(|own| same(id, own)) {
                Own::Coordinator
            } else if agents.get(host).is_some_and(|own| same(id, own)) {
                Own::Agent
            } else {
                Own::No
            }
        };
        let mut targets = Vec::new();
        let mut ordered_hosts = hosts.clone();
        ordered_hosts.sort_by_key(|h| (!canary.contains(h), h.clone()));
        for host in ordered_hosts {
            let list = &by_host[&host];
            let names: Vec<String> = list.iter().map(|d| d.container.clone()).collect();
            let mut order = graphs.get(&host).map(|g| g.order(&names)).unwrap_or(names);
            // Ouroboros' own containers after the host's others: the agent, then the
            // coordinator (see `Own`).
            order.sort_by_key(|name| {
                let info = containers
                    .iter()
                    .find(|(h, c)| h == &host && &c.name == name)
                    .map(|(_, c)| c);
                own_of(&host, info)
            });
            for name in order {
                let Some(d) = list.iter().find(|d| d.container == name) else {
                    continue;
                };
                let Decision::Update { target, digest } = &d.decision else {
                    continue;
                };
                let info = containers
                    .iter()
                    .find(|(h, c)| h == &host && c.name == name)
                    .map(|(_, c)| c);
                let old_digest = info
                    .and_then(|c| {
                        ImageRef::parse(&c.image)
                            .ok()
                            .and_then(|r| r.digest_in(&c.repo_digests).map(str::to_owned))
                    })
                    .unwrap_or_default();
                let tagged = target.split('@').next().unwrap_or(target).to_owned();
                targets.push(Target {
                    host: host.clone(),
                    container: name.clone(),
                    image: d.image.clone(),
                    target: target.clone(),
                    previous: format!("{tagged}@{old_digest}"),
                    old_digest,
                    new_digest: digest.clone(),
                    batch: u32::from(!canary.contains(&host)),
                    state: TargetState::Pending,
                    started_ms: 0,
                    finished_ms: 0,
                    transitions: vec![(self.clock.now_ms(), "pending".to_owned())],
                    soft_dependants: graphs
                        .get(&host)
                        .map(|g| {
                            g.dependants(&name)
                                .into_iter()
                                .filter(|(_, kind)| *kind == crate::plan::deps::Kind::Soft)
                                .map(|(n, _)| n)
                                .collect()
                        })
                        .unwrap_or_default(),
                    // Recreated by this container's operation anyway: those whose own tag
                    // moved go to their new image in the same operation.
                    op_id: String::new(),
                    own: own_of(&host, info),
                    dependant_images: graphs
                        .get(&host)
                        .map(|g| g.recreated_with(&name))
                        .unwrap_or_default()
                        .into_iter()
                        .filter_map(|dependant| {
                            list.iter()
                                .find(|d| d.container == dependant)
                                .and_then(|d| match &d.decision {
                                    Decision::Update { target, .. } => {
                                        Some((dependant.clone(), target.clone()))
                                    }
                                    _ => None,
                                })
                        })
                        .collect(),
                });
            }
        }
        let now = self.clock.now_ms();
        Rollout {
            id: self.runner.new_id(),
            created_ms: now,
            updated_ms: now,
            policy: self.policy.clone(),
            state: RolloutState::Running,
            targets,
            last_host_done_ms: 0,
            canary_done_ms: 0,
            acknowledged_failures: 0,
            cancel: None,
        }
    }
}

/// The coordinator's own container id, when it runs in one (read once).
fn coordinator_container() -> Option<&'static str> {
    static OWN: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    OWN.get_or_init(ouroboros_agent::own::container_id)
        .as_deref()
}

/// Skips the update of container `own` where the agent of its host runs in it too (`up`).
fn skip_up_itself(
    own: &str,
    agents: &BTreeMap<String, String>,
    detections: &mut [Detection],
    containers: &[(String, ContainerInfo)],
) {
    for d in detections.iter_mut() {
        let is_up = containers.iter().any(|(h, c)| {
            h == &d.host
                && c.name == d.container
                && same(&c.id, own)
                && agents.get(h).is_some_and(|a| same(a, own))
        });
        if is_up && matches!(d.decision, Decision::Update { .. }) {
            d.decision = Decision::Skip {
                reason: UP_ITSELF.to_owned(),
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_container_that_runs_up_itself_is_skipped() {
        let own = "c".repeat(64);
        let container = |name: &str, id: String| ContainerInfo {
            id,
            name: name.into(),
            image: "r/c:1".into(),
            image_id: String::new(),
            repo_digests: Vec::new(),
            labels: Default::default(),
            state: ouroboros_shared::inventory::ContainerState::Running,
            health: ouroboros_shared::inventory::Health::None,
            restart_count: 0,
            created_unix: 0,
            network_mode: String::new(),
            links: Vec::new(),
            pid_mode: String::new(),
            ipc_mode: String::new(),
            set_aside: String::new(),
        };
        let containers = vec![
            ("h1".to_owned(), container("up", own.clone())),
            ("h1".to_owned(), container("app", "a".repeat(64))),
            // The coordinator's own container on a host whose agent runs elsewhere: `serve`.
            ("h2".to_owned(), container("up", own.clone())),
        ];
        let agents = BTreeMap::from([
            ("h1".to_owned(), own[..12].to_owned()),
            ("h2".to_owned(), "b".repeat(64)),
        ]);
        let update = Decision::Update {
            target: "r/c:1@sha256:00".into(),
            digest: "sha256:00".into(),
        };
        let mut detections: Vec<Detection> = [("h1", "up"), ("h1", "app"), ("h2", "up")]
            .into_iter()
            .map(|(host, container)| Detection {
                host: host.into(),
                container: container.into(),
                image: "r/c:1".into(),
                decision: update.clone(),
            })
            .collect();
        skip_up_itself(&own, &agents, &mut detections, &containers);
        assert_eq!(
            detections[0].decision,
            Decision::Skip {
                reason: UP_ITSELF.into()
            }
        );
        assert_eq!(detections[1].decision, update);
        assert_eq!(detections[2].decision, update);
    }
}

//! The rollout of a cycle's updates: its targets per host in dependency order, canary hosts
//! first, Ouroboros' own containers after the others (see [`Own`]).

use std::collections::BTreeMap;

use ouroboros_agent::own::same;
use ouroboros_shared::inventory::ContainerInfo;

use super::Cycle;
use crate::detect::{Decision, Detection};
use crate::plan::deps::Graph;
use crate::plan::rollout::{Canary, Own, Rollout, RolloutState, Target, TargetState};

impl Cycle {
    /// The rollout of this cycle's updates: per host in dependency order, canary hosts first.
    pub(super) fn plan_rollout(
        &self,
        detections: &[Detection],
        containers: &[super::Unit<'_>],
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
            .links()
            .into_iter()
            .filter(|h| !h.agent_container.is_empty())
            .map(|h| (h.host, h.agent_container))
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
        let index = super::by_name(containers);
        let info_of = |host: &str, name: &str| index.get(&(host, name)).copied();
        let mut targets = Vec::new();
        let mut ordered_hosts = hosts.clone();
        ordered_hosts.sort_by_key(|h| (!canary.contains(h), h.clone()));
        for host in ordered_hosts {
            let list = &by_host[&host];
            let names: Vec<String> = list.iter().map(|d| d.container.clone()).collect();
            let mut order = graphs.get(&host).map(|g| g.order(&names)).unwrap_or(names);
            // Ouroboros' own containers after the host's others: the agent, then the
            // coordinator (see `Own`).
            order.sort_by_key(|name| own_of(&host, info_of(&host, name)));
            for name in order {
                let Some(d) = list.iter().find(|d| d.container == name) else {
                    continue;
                };
                let Decision::Update { target, digest } = &d.decision else {
                    continue;
                };
                let info = info_of(&host, &name);
                let old_digest = super::old_digest(info);
                let tagged = target.split('@').next().unwrap_or(target).to_owned();
                let soft_dependants: Vec<String> = graphs
                    .get(&host)
                    .map(|g| {
                        g.dependants(&name)
                            .into_iter()
                            .filter(|(_, kind)| *kind == crate::plan::deps::Kind::Soft)
                            .map(|(n, _)| n)
                            .collect()
                    })
                    .unwrap_or_default();
                // Recreated by this container's operation anyway: those whose own tag moved
                // go to their new image in the same operation.
                let dependant_images: BTreeMap<String, String> = graphs
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
                    .collect();
                // What its update may stop or recreate, for the containers updating at the
                // same time on its host (unknown without the host's graph: then it runs alone).
                let touches = graphs.get(&host).map(|g| {
                    let mut reach = g.reach(&name);
                    reach.extend(soft_dependants.iter().cloned());
                    reach.extend(dependant_images.keys().cloned());
                    reach.into_iter().collect()
                });
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
                    soft_dependants,
                    op_id: String::new(),
                    own: own_of(&host, info),
                    service: crate::detect::swarm::is_service(&name),
                    dependant_images,
                    touches,
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

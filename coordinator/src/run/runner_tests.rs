//! The runner's decisions with a fake fleet of agents and paused time: a rollout of hours runs
//! in microseconds, and every command the runner sends is logged with the (fake) time it went.
//! (Over 600 lines: one scenario per rollout rule, over the one fake fleet they share.)

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use ouroboros_shared::host::HostName;
use ouroboros_shared::inventory::{
    ContainerInfo, ContainerState, EngineInfo, Health, Hello, HostMode, Inventory,
};

use super::*;
use crate::fleet::SessionGuard;
use crate::fleet::store::MemoryStore;
use crate::plan::outcome::Pruned;
use crate::plan::rollout::{Canary, FailureAction, Policy, Target};
use crate::run::clock::TokioClock;
use crate::server::dispatch::{CommandError, RecreateOptions, Recreated};

/// 2001-09-09, well away from zero so that "never" (0) cannot pass for a time.
const BASE_MS: i64 = 1_000_000_000_000;

/// How a fake agent answers a container's update.
#[derive(Clone, Copy)]
enum Reply {
    /// After this long, with this status.
    After(Duration, Status),
    /// Never: the command times out.
    Never,
}

/// One command as the fake agents received it.
#[derive(Debug, Clone, PartialEq)]
struct Sent {
    at_ms: i64,
    container: String,
    image: String,
}

/// Agents that answer by script (by container; default: updated after 5 s).
struct Agents {
    clock: TokioClock,
    replies: BTreeMap<String, Reply>,
    log: Mutex<Vec<Sent>>,
    next_op: AtomicU64,
}

impl Agents {
    fn new(clock: TokioClock, replies: &[(&str, Reply)]) -> Arc<Self> {
        Arc::new(Self {
            clock,
            replies: replies.iter().map(|(c, r)| ((*c).to_owned(), *r)).collect(),
            log: Mutex::default(),
            next_op: AtomicU64::new(0),
        })
    }

    fn log(&self) -> Vec<Sent> {
        self.log.lock().unwrap().clone()
    }

    /// When `container` was first sent something (relative to the start), if it was.
    fn first_sent(&self, container: &str) -> Option<i64> {
        self.log()
            .iter()
            .find(|s| s.container == container)
            .map(|s| s.at_ms - BASE_MS)
    }
}

#[tonic::async_trait]
impl Commands for Agents {
    fn new_op_id(&self) -> String {
        format!("op-{}", self.next_op.fetch_add(1, Ordering::Relaxed))
    }

    async fn recreate(
        &self,
        host: &str,
        container: &str,
        image: &str,
        options: &RecreateOptions,
        timeout: Duration,
    ) -> Result<Recreated, CommandError> {
        assert!(
            !crate::detect::swarm::is_service(container),
            "a service is never recreated: {container}"
        );
        self.answer(host, container, image, options.op_id.clone(), timeout)
            .await
    }

    async fn update_service(
        &self,
        host: &str,
        service: &str,
        image: &str,
        op_id: Option<String>,
        watch: Duration,
        timeout: Duration,
    ) -> Result<Recreated, CommandError> {
        // The agent's update and its rollback each get `watch`.
        assert!(
            watch * 2 < timeout,
            "the agent must answer before the runner gives up"
        );
        let unit = format!("{}{service}", crate::detect::swarm::SERVICE_MARK);
        self.answer(host, &unit, image, op_id, timeout).await
    }

    async fn prune_volumes(&self, host: &str, _: Duration) -> Result<Pruned, CommandError> {
        Ok(Pruned {
            host: host.to_owned(),
            ..Pruned::default()
        })
    }
}

impl Agents {
    /// The scripted answer to a command about `container` (a service's unit name for
    /// services).
    async fn answer(
        &self,
        host: &str,
        container: &str,
        image: &str,
        op_id: Option<String>,
        timeout: Duration,
    ) -> Result<Recreated, CommandError> {
        self.log.lock().unwrap().push(Sent {
            at_ms: self.clock.now_ms(),
            container: container.to_owned(),
            image: image.to_owned(),
        });
        let op_id = op_id.unwrap_or_else(|| self.new_op_id());
        let reply = self
            .replies
            .get(container)
            .copied()
            .unwrap_or(Reply::After(Duration::from_secs(5), Status::Updated));
        match reply {
            Reply::After(after, status) if after <= timeout => {
                tokio::time::sleep(after).await;
                Ok(Recreated {
                    op_id,
                    result: UpdateResult::with(status, format!("scripted {}", status.name())),
                    steps: Vec::new(),
                })
            }
            _ => {
                tokio::time::sleep(timeout).await;
                Err(CommandError::TimedOut {
                    host: host.to_owned(),
                    op_id,
                    timeout,
                })
            }
        }
    }
}

/// The containers every fake host's inventory lists (the tests' target names, and `gone`,
/// which none lists).
const LISTED: &[&str] = &[
    "a", "b", "c", "d", "agent", "app", "canary", "fine", "vetoed", "web",
];

fn listed(name: &str) -> ContainerInfo {
    ContainerInfo {
        id: format!("id-{name}"),
        name: name.into(),
        image: format!("reg/{name}:1"),
        image_id: "sha256:1".into(),
        repo_digests: vec![format!("reg/{name}@sha256:old")],
        labels: Default::default(),
        state: ContainerState::Running,
        health: Health::None,
        restart_count: 0,
        created_unix: 1,
        network_mode: String::new(),
        links: Vec::new(),
        pid_mode: String::new(),
        ipc_mode: String::new(),
        set_aside: String::new(),
    }
}

/// A runner over `hosts` (connected, reported) and the fake agents; keep the guards alive.
fn fleet_runner(
    hosts: &[&str],
    agents: Arc<Agents>,
    clock: TokioClock,
) -> (Runner, Vec<SessionGuard>) {
    let fleet = Arc::new(Fleet::open(Arc::new(MemoryStore::default())).unwrap());
    let guards = hosts
        .iter()
        .map(|h| {
            let name = HostName::parse(h).unwrap();
            let hello = Hello {
                host: (*h).to_owned(),
                agent_version: "0.1.0".into(),
                engine: EngineInfo::default(),
                mode: HostMode::Standalone,
                container_id: None,
                agent_image: None,
                handover_op_id: None,
            };
            let (guard, _) = fleet.connect(&name, &hello, "127.0.0.1:1".parse().unwrap(), BASE_MS);
            let inventory = Inventory {
                containers: LISTED.iter().map(|c| listed(c)).collect(),
                mode: HostMode::Standalone,
                observed_at_unix_ms: BASE_MS,
                cluster_id: String::new(),
                services: Vec::new(),
            };
            assert!(fleet.inventory(&name, guard.id, inventory, BASE_MS));
            guard
        })
        .collect();
    let metrics = crate::telemetry::metrics::Metrics::new(true).unwrap();
    let runner = Runner::new(fleet, agents, false, metrics).with_clock(Arc::new(clock));
    (runner, guards)
}

/// One target per `(host, container, batch)`.
fn rollout(policy: Policy, targets: &[(&str, &str, u32)]) -> Rollout {
    Rollout {
        id: "r-test".into(),
        created_ms: BASE_MS,
        updated_ms: BASE_MS,
        policy,
        state: RolloutState::Running,
        targets: targets
            .iter()
            .map(|(host, container, batch)| Target {
                host: (*host).into(),
                container: (*container).into(),
                image: format!("reg/{container}:1"),
                target: format!("reg/{container}:1@sha256:new"),
                previous: format!("reg/{container}:1@sha256:old"),
                old_digest: "sha256:old".into(),
                new_digest: "sha256:new".into(),
                batch: *batch,
                state: TargetState::Pending,
                started_ms: 0,
                finished_ms: 0,
                transitions: Vec::new(),
                soft_dependants: Vec::new(),
                dependant_images: BTreeMap::new(),
                op_id: String::new(),
                own: Default::default(),
                service: false,
                touches: Some(vec![(*container).into()]),
            })
            .collect(),
        last_host_done_ms: 0,
        canary_done_ms: 0,
        acknowledged_failures: 0,
        cancel: None,
    }
}

fn state_of<'a>(r: &'a Rollout, container: &str) -> &'a TargetState {
    &r.targets
        .iter()
        .find(|t| t.container == container)
        .unwrap()
        .state
}

#[tokio::test(start_paused = true)]
async fn a_target_without_an_answer_fails_at_the_progress_deadline_and_pauses_the_rollout() {
    let clock = TokioClock::starting_at(BASE_MS);
    let agents = Agents::new(clock, &[("a", Reply::Never)]);
    let (runner, _hosts) = fleet_runner(&["h1", "h2"], agents.clone(), clock);
    let policy = Policy {
        max_hosts_in_flight: 1,
        progress_deadline_ms: 60_000,
        ..Policy::default()
    };
    let (done, results) = runner
        .run(
            rollout(policy, &[("h1", "a", 1), ("h2", "b", 1)]),
            &Windows::default(),
        )
        .await;

    let a = &done.targets[0];
    assert!(
        matches!(&a.state, TargetState::Failed { outcome, reason } if outcome == "timeout" && reason.contains("within the progress deadline (60 s)")),
        "{:?}",
        a.state
    );
    let failed_after = a.finished_ms - BASE_MS;
    assert!(
        (60_000..=62_000).contains(&failed_after),
        "failed {failed_after} ms after the start, not at the 60 s deadline"
    );
    assert!(
        matches!(&done.state, RolloutState::Paused { reason } if reason.contains("1 of 2 targets failed")),
        "{:?}",
        done.state
    );
    assert_eq!(*state_of(&done, "b"), TargetState::Pending);
    assert_eq!(
        agents.first_sent("b"),
        None,
        "nothing new starts once paused"
    );
    assert!(!results.contains_key(&0), "a timeout is no agent answer");
}

#[tokio::test(start_paused = true)]
async fn independent_containers_of_a_host_are_sent_together_up_to_the_limit() {
    let clock = TokioClock::starting_at(BASE_MS);
    let agents = Agents::new(clock, &[]);
    let (runner, _hosts) = fleet_runner(&["h1"], agents.clone(), clock);
    let policy = Policy {
        max_containers_in_flight: 2,
        ..Policy::default()
    };
    let (done, _) = runner
        .run(
            rollout(policy, &[("h1", "a", 1), ("h1", "b", 1), ("h1", "c", 1)]),
            &Windows::default(),
        )
        .await;
    assert_eq!(done.state, RolloutState::Completed { failed: 0 });
    // a and b at once; c once one of them answered (each after 5 s).
    assert_eq!(agents.first_sent("a"), Some(0));
    assert_eq!(agents.first_sent("b"), Some(0));
    let c = agents.first_sent("c").unwrap();
    assert!((5_000..6_000).contains(&c), "c sent at {c} ms");
}

#[tokio::test(start_paused = true)]
async fn failures_up_to_the_ratio_are_tolerated_and_one_more_applies_the_failure_action() {
    let refused = Reply::After(Duration::from_secs(2), Status::Refused);
    let policy = Policy {
        max_hosts_in_flight: 1,
        max_failure_ratio: 0.5,
        ..Policy::default()
    };
    let targets = [
        ("h1", "a", 1),
        ("h2", "b", 1),
        ("h3", "c", 1),
        ("h4", "d", 1),
    ];
    let hosts = ["h1", "h2", "h3", "h4"];

    // 2 of 4 failed: at the ratio, not over it; every target is tried.
    let clock = TokioClock::starting_at(BASE_MS);
    let agents = Agents::new(clock, &[("a", refused), ("b", refused)]);
    let (runner, _hosts) = fleet_runner(&hosts, agents.clone(), clock);
    let (done, results) = runner
        .run(rollout(policy.clone(), &targets), &Windows::default())
        .await;
    assert_eq!(done.state, RolloutState::Completed { failed: 2 });
    assert_eq!(agents.log().len(), 4);
    assert_eq!(results[&0].status, Status::Refused);
    assert_eq!(results[&3].status, Status::Updated);

    // 3 of 4: over it; the last target never starts.
    let clock = TokioClock::starting_at(BASE_MS);
    let agents = Agents::new(clock, &[("a", refused), ("b", refused), ("c", refused)]);
    let (runner, _hosts) = fleet_runner(&hosts, agents.clone(), clock);
    let (done, _) = runner
        .run(rollout(policy.clone(), &targets), &Windows::default())
        .await;
    assert!(
        matches!(&done.state, RolloutState::Paused { reason } if reason.contains("3 of 4 targets failed (tolerated: 50%)")),
        "{:?}",
        done.state
    );
    assert_eq!(*state_of(&done, "d"), TargetState::Pending);
    assert_eq!(agents.first_sent("d"), None);

    // The same with the rollback action: what was updated goes back to its previous image.
    let clock = TokioClock::starting_at(BASE_MS);
    let agents = Agents::new(clock, &[("b", refused), ("c", refused), ("d", refused)]);
    let (runner, _hosts) = fleet_runner(&hosts, agents.clone(), clock);
    let policy = Policy {
        failure_action: FailureAction::Rollback,
        ..policy
    };
    let (done, _) = runner
        .run(rollout(policy, &targets), &Windows::default())
        .await;
    assert!(
        matches!(done.state, RolloutState::RolledBack { .. }),
        "{:?}",
        done.state
    );
    assert!(matches!(state_of(&done, "a"), TargetState::Reverted { .. }));
    let sent_to_a: Vec<String> = agents
        .log()
        .into_iter()
        .filter(|s| s.container == "a")
        .map(|s| s.image)
        .collect();
    assert_eq!(
        sent_to_a,
        ["reg/a:1@sha256:new", "reg/a:1@sha256:old"],
        "updated, then sent back"
    );
}

#[tokio::test(start_paused = true)]
async fn a_container_removed_since_the_plan_is_gone_not_failed_and_the_rollout_goes_on() {
    let refused = Reply::After(Duration::from_secs(2), Status::Refused);
    let policy = Policy {
        max_hosts_in_flight: 1,
        max_failure_ratio: 0.0,
        ..Policy::default()
    };
    let targets = [("h1", "gone", 1), ("h2", "a", 1), ("h3", "b", 1)];
    let clock = TokioClock::starting_at(BASE_MS);
    // `gone` is not in h1's inventory any more; `b` still is, so its refusal is a failure.
    let agents = Agents::new(clock, &[("gone", refused), ("b", refused)]);
    let (runner, _hosts) = fleet_runner(&["h1", "h2", "h3"], agents.clone(), clock);
    let (done, results) = runner
        .run(rollout(policy, &targets), &Windows::default())
        .await;
    assert_eq!(results[&0].status, Status::Gone);
    assert!(
        results[&0]
            .reason
            .starts_with("gone no longer exists on h1: scripted refused"),
        "{}",
        results[&0].reason
    );
    assert!(matches!(
        state_of(&done, "gone"),
        TargetState::Skipped { .. }
    ));
    assert!(matches!(state_of(&done, "a"), TargetState::Updated { .. }));
    // The failure ratio (0) counts `b` only: the rollout pauses after it, not after `gone`.
    assert_eq!(results[&2].status, Status::Refused);
    assert!(
        matches!(&done.state, RolloutState::Paused { reason } if reason.contains("1 of 3 targets failed")),
        "{:?}",
        done.state
    );
}

#[tokio::test(start_paused = true)]
async fn the_other_hosts_wait_for_the_canary_and_its_wait_and_a_failed_canary_stops_them() {
    let policy = Policy {
        canary: Canary::Count(1),
        canary_wait_ms: 300_000,
        ..Policy::default()
    };
    let targets = [("h1", "canary", 0), ("h2", "b", 1), ("h3", "c", 1)];
    let hosts = ["h1", "h2", "h3"];

    let clock = TokioClock::starting_at(BASE_MS);
    let agents = Agents::new(
        clock,
        &[(
            "canary",
            Reply::After(Duration::from_secs(20), Status::Updated),
        )],
    );
    let (runner, _hosts) = fleet_runner(&hosts, agents.clone(), clock);
    let (done, _) = runner
        .run(rollout(policy.clone(), &targets), &Windows::default())
        .await;
    assert_eq!(done.state, RolloutState::Completed { failed: 0 });
    assert_eq!(agents.first_sent("canary"), Some(0));
    assert_eq!(
        done.canary_done_ms - BASE_MS,
        20_000,
        "the canary answered at 20 s"
    );
    for other in ["b", "c"] {
        let at = agents.first_sent(other).unwrap();
        assert!(
            (320_000..=321_000).contains(&at),
            "{other} started {at} ms in, not once the canary's 20 s and its 300 s wait had passed"
        );
    }

    // A failed canary pauses the rollout even though 1 of 3 is under the ratio.
    let clock = TokioClock::starting_at(BASE_MS);
    let agents = Agents::new(
        clock,
        &[(
            "canary",
            Reply::After(Duration::from_secs(20), Status::RolledBack),
        )],
    );
    let (runner, _hosts) = fleet_runner(&hosts, agents.clone(), clock);
    let policy = Policy {
        max_failure_ratio: 0.5,
        ..policy
    };
    let (done, _) = runner
        .run(rollout(policy, &targets), &Windows::default())
        .await;
    assert!(
        matches!(done.state, RolloutState::Paused { .. }),
        "{:?}",
        done.state
    );
    assert_eq!(agents.first_sent("b"), None);
    assert_eq!(agents.first_sent("c"), None);
}

#[tokio::test(start_paused = true)]
async fn a_cancel_lets_the_update_in_flight_finish_and_starts_nothing_more() {
    let clock = TokioClock::starting_at(BASE_MS);
    let slow = Reply::After(Duration::from_secs(30), Status::Updated);
    let agents = Agents::new(clock, &[("a", slow)]);
    let (runner, _hosts) = fleet_runner(&["h1", "h2", "h3"], agents.clone(), clock);
    let policy = Policy {
        max_hosts_in_flight: 1,
        ..Policy::default()
    };
    let r = rollout(policy, &[("h1", "a", 1), ("h2", "b", 1), ("h3", "c", 1)]);
    let always = Windows::default();
    let cancel = async {
        tokio::time::sleep(Duration::from_secs(10)).await;
        runner.cancel(
            "r-test",
            Cancel {
                reason: "bad image".into(),
                revert: false,
                at_ms: clock.now_ms(),
            },
        )
    };
    let ((done, results), taken) = tokio::join!(runner.run(r, &always), cancel);
    assert_eq!(taken, Ok(CancelTaken::ByRunner));
    assert!(
        matches!(&done.state, RolloutState::Cancelled { reason } if reason.contains("bad image")),
        "{:?}",
        done.state
    );
    assert!(
        matches!(state_of(&done, "a"), TargetState::Updated { .. }),
        "the update in flight finishes: {:?}",
        state_of(&done, "a")
    );
    assert_eq!(results[&0].status, Status::Updated);
    for other in ["b", "c"] {
        assert!(
            matches!(state_of(&done, other), TargetState::Cancelled { reason } if reason == "bad image")
        );
        assert_eq!(agents.first_sent(other), None);
    }
    assert_eq!(
        runner.cancel(
            "r-test",
            Cancel {
                reason: "again".into(),
                revert: false,
                at_ms: clock.now_ms(),
            }
        ),
        Err(CancelError::AlreadyEnded {
            id: "r-test".into(),
            state: "cancelled"
        })
    );
}

#[tokio::test(start_paused = true)]
async fn a_cancel_with_revert_sends_the_updated_targets_back() {
    let clock = TokioClock::starting_at(BASE_MS);
    let agents = Agents::new(clock, &[]);
    let (runner, _hosts) = fleet_runner(&["h1", "h2", "h3"], agents.clone(), clock);
    let policy = Policy {
        max_hosts_in_flight: 1,
        batch_delay_ms: 60_000,
        ..Policy::default()
    };
    let r = rollout(policy, &[("h1", "a", 1), ("h2", "b", 1), ("h3", "c", 1)]);
    // a is done at 5 s; b would start at 65 s.
    let always = Windows::default();
    let cancel = async {
        tokio::time::sleep(Duration::from_secs(30)).await;
        runner.cancel(
            "r-test",
            Cancel {
                reason: "wrong tag".into(),
                revert: true,
                at_ms: clock.now_ms(),
            },
        )
    };
    let ((done, _), taken) = tokio::join!(runner.run(r, &always), cancel);
    assert_eq!(taken, Ok(CancelTaken::ByRunner));
    assert!(
        matches!(done.state, RolloutState::Cancelled { .. }),
        "{:?}",
        done.state
    );
    assert!(matches!(state_of(&done, "a"), TargetState::Reverted { .. }));
    let log = agents.log();
    assert_eq!(
        log.iter().map(|s| s.image.as_str()).collect::<Vec<_>>(),
        ["reg/a:1@sha256:new", "reg/a:1@sha256:old"],
        "a updated, then sent back; b and c never sent"
    );
    assert!(
        log[1].at_ms - BASE_MS >= 30_000,
        "sent back after the cancel"
    );
}

/// The hooks around updates, with real hook processes.
#[path = "runner_hooks_tests.rs"]
mod hooks;

#[tokio::test(start_paused = true)]
async fn a_service_goes_to_its_manager_as_a_service_update_and_its_failure_counts() {
    let clock = TokioClock::starting_at(BASE_MS);
    let agents = Agents::new(
        clock,
        &[(
            "service:api",
            Reply::After(Duration::from_secs(3), Status::RolledBack),
        )],
    );
    let (runner, _hosts) = fleet_runner(&["m1", "h2"], agents.clone(), clock);
    let policy = Policy {
        max_hosts_in_flight: 1,
        ..Policy::default()
    };
    let mut r = rollout(
        policy,
        &[
            ("m1", "service:web", 1),
            ("m1", "service:api", 1),
            ("h2", "b", 1),
        ],
    );
    for t in &mut r.targets {
        t.service = crate::detect::swarm::is_service(&t.container);
    }
    // The fake agents' `recreate` refuses a service: each went through `update_service`.
    let (done, _) = runner.run(r, &Windows::default()).await;
    let sent: Vec<(String, String)> = agents
        .log()
        .into_iter()
        .map(|s| (s.container, s.image))
        .collect();
    assert_eq!(
        sent[..2],
        [
            (
                "service:web".to_owned(),
                "reg/service:web:1@sha256:new".to_owned()
            ),
            (
                "service:api".to_owned(),
                "reg/service:api:1@sha256:new".to_owned()
            ),
        ]
    );
    assert!(matches!(
        state_of(&done, "service:web"),
        TargetState::Updated { .. }
    ));
    // A rolled-back service is a failed target like a rolled-back container: 1 of 3 is over
    // the default ratio, so the rollout pauses before the next host.
    assert!(
        matches!(state_of(&done, "service:api"), TargetState::Failed { outcome, .. } if outcome == "rolled-back"),
        "{:?}",
        state_of(&done, "service:api")
    );
    assert!(
        matches!(done.state, RolloutState::Paused { .. }),
        "{:?}",
        done.state
    );
    assert_eq!(agents.first_sent("b"), None);
}

#[tokio::test(start_paused = true)]
async fn a_service_updated_before_a_failure_goes_back_through_a_service_update() {
    let clock = TokioClock::starting_at(BASE_MS);
    let refused = Reply::After(Duration::from_secs(2), Status::Refused);
    let agents = Agents::new(clock, &[("b", refused)]);
    let (runner, _hosts) = fleet_runner(&["m1", "h2"], agents.clone(), clock);
    let policy = Policy {
        max_hosts_in_flight: 1,
        failure_action: FailureAction::Rollback,
        ..Policy::default()
    };
    let mut r = rollout(policy, &[("m1", "service:web", 1), ("h2", "b", 1)]);
    r.targets[0].service = true;
    // The fake agents' `recreate` refuses a service: both ways went through `update_service`.
    let (done, _) = runner.run(r, &Windows::default()).await;
    assert!(
        matches!(done.state, RolloutState::RolledBack { .. }),
        "{:?}",
        done.state
    );
    assert!(matches!(
        state_of(&done, "service:web"),
        TargetState::Reverted { .. }
    ));
    let sent: Vec<String> = agents
        .log()
        .into_iter()
        .filter(|s| s.container == "service:web")
        .map(|s| s.image)
        .collect();
    assert_eq!(
        sent,
        [
            "reg/service:web:1@sha256:new",
            "reg/service:web:1@sha256:old"
        ],
        "updated, then sent back"
    );
}

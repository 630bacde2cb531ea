//! The fleet simulator (`fleet-sim`): N simulated agents in one process, each with its own
//! certificate, over real mTLS gRPC to a real `ouroboros-coordinator serve`; each agent in
//! front of an in-memory engine with M containers over T unique tags of a fake registry.
//!
//! [`run`] drives one scenario and measures it:
//! 1. all agents connect and report (`connect_s`);
//! 2. an idle cycle: nothing moved (`idle_cycle_*`, registry requests = unique tags);
//! 3. a share of the tags moves: a dry-run `check` (`plan_ms`: probe, detect and plan), then
//!    the real one, a rollout bounded by `--max-hosts-in-flight` (`rollout_s`);
//! 4. more tags move and, while that rollout runs, the coordinator is killed (SIGKILL) and
//!    started again: `reconnect_s` until every agent reported again, then the rollout must go on
//!    from its stored state and end with every update done once;
//! 5. `cycles` more cycles with churn, disconnects and tags moving (`store_bytes`);
//! 6. a last cycle with every agent back: every container on its tag's digest.
//!
//! Correctness is counted, not assumed: `updates_applied_twice` (a container moved to the
//! same digest twice) and `updates_missing` (a container not on its tag's digest at the end)
//! must be 0, and `idle_cycle_registry_requests` must equal `tags`.

pub mod agent;
pub mod coordinator;
pub mod registry;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use ouroboros_proto::v1 as pb;
use ouroboros_shared::host::HostName;
use ouroboros_shared::pki::{CertificateAuthority, LeafKind, PkiDir, Validity};
use serde_json::{Value, json};
use tokio::sync::watch;

use self::agent::{Fleet, SimAgent, SimContainer};
use self::coordinator::{ServeArgs, SimCoordinator, reported_hosts};
use self::registry::SimRegistry;

/// A scenario.
#[derive(Debug, Clone)]
pub struct Config {
    pub agents: usize,
    /// Containers per agent.
    pub containers: usize,
    /// Unique tags over the whole fleet.
    pub tags: usize,
    /// Share of the tags moved for the measured rollout (and again for the restart).
    pub rollout_share: f64,
    /// Tags moved in each of the later cycles.
    pub tags_per_cycle: usize,
    /// Cycles after the restart.
    pub cycles: usize,
    /// Share of agents whose host changes (a container goes, another appears) before a cycle.
    pub churn: f64,
    /// Share of agents whose link drops before a cycle.
    pub disconnect_rate: f64,
    pub registry_rtt: Duration,
    /// How long a simulated recreate takes.
    pub recreate: Duration,
    pub max_hosts_in_flight: u32,
    /// The coordinator's `--max-containers-in-flight`.
    pub max_containers_in_flight: u32,
    /// `--history-retention` for the coordinator.
    pub history_retention: Option<String>,
    /// Kill and restart the coordinator during the second rollout.
    pub restart: bool,
    pub coordinator_bin: PathBuf,
    /// Time allowed for each wait (all agents reporting, a rollout ending).
    pub timeout: Duration,
}

impl Config {
    /// The issue's reference scenario at `agents` x `containers` over `tags`.
    pub fn new(agents: usize, containers: usize, tags: usize, coordinator_bin: PathBuf) -> Self {
        Self {
            agents,
            containers,
            tags,
            rollout_share: 0.1,
            tags_per_cycle: 1,
            cycles: 20,
            churn: 0.0,
            disconnect_rate: 0.0,
            registry_rtt: Duration::ZERO,
            recreate: Duration::from_millis(100),
            max_hosts_in_flight: 50,
            max_containers_in_flight: 1,
            history_retention: None,
            restart: true,
            coordinator_bin,
            timeout: Duration::from_secs(600),
        }
    }

    fn validate(&self) -> anyhow::Result<()> {
        ensure!(self.agents >= 1, "--agents must be at least 1");
        ensure!(self.containers >= 1, "--containers must be at least 1");
        ensure!(self.tags >= 1, "--tags must be at least 1");
        ensure!(
            self.tags <= self.agents * self.containers,
            "--tags {} is more than the {} containers: every tag needs a container",
            self.tags,
            self.agents * self.containers
        );
        for (name, v) in [
            ("--rollout-share", self.rollout_share),
            ("--churn", self.churn),
            ("--disconnect-rate", self.disconnect_rate),
        ] {
            ensure!(
                (0.0..=1.0).contains(&v),
                "{name} {v} is not between 0 and 1"
            );
        }
        ensure!(
            self.tags_per_cycle <= self.tags,
            "--tags-per-cycle is more than --tags"
        );
        ensure!(
            self.coordinator_bin.is_file(),
            "--coordinator {} does not exist",
            self.coordinator_bin.display()
        );
        Ok(())
    }
}

/// Runs the scenario; the report is one JSON object (see the module documentation).
pub async fn run(config: &Config) -> anyhow::Result<Value> {
    config.validate()?;
    let dir = tempfile::Builder::new()
        .prefix("ouroboros-test-fleet-sim-")
        .tempdir()?;
    let pki = PkiDir::new(dir.path().join("pki"));
    ouroboros_shared::pki::init(&pki, &[]).map_err(|e| anyhow::anyhow!("pki init: {e}"))?;
    let ca = CertificateAuthority::load(&pki).map_err(|e| anyhow::anyhow!("{e}"))?;
    let registry = SimRegistry::start(config.tags, config.registry_rtt)?;

    let serve = ServeArgs {
        bin: config.coordinator_bin.clone(),
        pki: pki.dir().to_owned(),
        data: dir.path().join("data"),
        max_hosts_in_flight: config.max_hosts_in_flight,
        max_containers_in_flight: config.max_containers_in_flight,
        history_retention: config.history_retention.clone(),
    };
    let mut coordinator =
        tokio::task::block_in_place(|| SimCoordinator::start(serve, "127.0.0.1:0"))?;
    let fleet = Arc::new(Fleet {
        url: coordinator.url(),
        ca_pem: ca.cert_pem().to_owned(),
        registry_host: registry.host(),
        recreate: config.recreate,
        ledger: Default::default(),
        commands: Default::default(),
    });

    // The agents, container j of agent a on tag (a * M + j) mod T: every tag is used, evenly.
    let mut agents = Vec::with_capacity(config.agents);
    for a in 0..config.agents {
        let host = format!("sim-{a:05}");
        let name = HostName::parse(&host).map_err(|e| anyhow::anyhow!("{e}"))?;
        let cert = ca
            .issue(&LeafKind::Agent { host: name }, Validity::days_from_now(30))
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let containers = (0..config.containers)
            .map(|j| {
                let tag = (a * config.containers + j) % config.tags;
                let name = format!("app-{j}");
                SimContainer {
                    id: agent::container_id(&host, &name, 0),
                    name,
                    tag,
                    digest: registry.current(tag),
                }
            })
            .collect();
        agents.push(Arc::new(SimAgent::new(
            host,
            cert.cert_pem,
            cert.key_pem,
            containers,
        )));
    }
    let (stop, stopped) = watch::channel(false);
    let started = Instant::now();
    for agent in &agents {
        tokio::spawn(agent.clone().run(fleet.clone(), stopped.clone()));
    }
    let outcome = drive(
        config,
        &mut coordinator,
        &registry,
        &fleet,
        &agents,
        started,
    )
    .await;
    let _ = stop.send(true);
    // Read while the process is there (a stopped one has no /proc entry).
    let peak_rss = coordinator.peak_rss();
    let stopped_cleanly = tokio::task::block_in_place(|| coordinator.stop());
    let mut report = match outcome {
        Ok(report) => report,
        Err(e) => bail!("{e:#}\ncoordinator log (tail):\n{}", coordinator.log_tail()),
    };
    if let Err(e) = stopped_cleanly {
        bail!("the coordinator did not stop: {e:#}");
    }
    report["coordinator_peak_rss_bytes"] = json!(peak_rss);
    Ok(report)
}

async fn drive(
    config: &Config,
    coordinator: &mut SimCoordinator,
    registry: &SimRegistry,
    fleet: &Fleet,
    agents: &[Arc<SimAgent>],
    started: Instant,
) -> anyhow::Result<Value> {
    let n = agents.len();
    let mut admin = coordinator.admin().await?;
    wait_reported(&mut admin, n, config.timeout).await?;
    let connect_s = started.elapsed().as_secs_f64();
    // The coordinator's peak and current RSS after each phase, to see which one sets it.
    let mut peaks = serde_json::Map::new();
    peaks.insert(
        "connected".into(),
        json!([coordinator.peak_rss(), coordinator.rss()]),
    );

    // An idle cycle: one HEAD per unique tag, nothing to do.
    registry.take_heads();
    let (cpu, t) = (coordinator.cpu_time(), Instant::now());
    let idle = check(&mut admin, false, config.timeout).await?;
    let idle_cycle_ms = ms(t.elapsed());
    let idle_cycle_cpu_ms = ms(coordinator.cpu_time().saturating_sub(cpu));
    let idle_cycle_registry_requests = registry.take_heads();
    ensure!(
        decisions(&idle, "update") == 0,
        "the idle cycle planned updates"
    );
    peaks.insert(
        "idle_cycle".into(),
        json!([coordinator.peak_rss(), coordinator.rss()]),
    );

    // A share of the tags moves: the plan (dry run), then the rollout.
    let share = ((config.tags as f64 * config.rollout_share).round() as usize).max(1);
    let moved: Vec<usize> = (0..share).collect();
    registry.bump(moved.iter().copied());
    let expected = containers_on(agents, &moved);
    let t = Instant::now();
    let plan = check(&mut admin, true, config.timeout).await?;
    let plan_ms = ms(t.elapsed());
    let plan_updates = decisions(&plan, "update");
    peaks.insert(
        "plan".into(),
        json!([coordinator.peak_rss(), coordinator.rss()]),
    );
    ensure!(
        plan_updates == expected.len(),
        "the dry run planned {plan_updates} updates, {} containers are on the moved tags",
        expected.len()
    );
    registry.take_heads();
    let t = Instant::now();
    let rollout = check(&mut admin, false, config.timeout).await?;
    let rollout_s = t.elapsed().as_secs_f64();
    let rollout_state = rollout
        .rollout
        .as_ref()
        .map(|r| r.state.clone())
        .unwrap_or_default();
    ensure!(
        rollout_state == "completed",
        "the rollout ended {rollout_state:?}, not completed"
    );
    let rollout_targets = rollout.rollout.as_ref().map_or(0, |r| r.targets.len());
    peaks.insert(
        "rollout".into(),
        json!([coordinator.peak_rss(), coordinator.rss()]),
    );
    each_updated_once(fleet, registry, &expected)?;

    // More tags move, and the coordinator crashes while that rollout runs.
    let mut reconnect_s = Value::Null;
    let mut resumed = Value::Null;
    if config.restart {
        let moved: Vec<usize> = (share..(2 * share).min(config.tags)).collect();
        registry.bump(moved.iter().copied());
        let expected = containers_on(agents, &moved);
        let mut during = coordinator.admin().await?;
        let timeout = config.timeout;
        let in_flight = tokio::spawn(async move { check(&mut during, false, timeout).await });
        // Kill it once a third of the updates are done (or it ended first).
        let before = fleet.applied();
        let deadline = Instant::now() + config.timeout;
        while fleet.applied() < before + expected.len() / 3 && !in_flight.is_finished() {
            ensure!(
                Instant::now() < deadline,
                "the second rollout made no progress"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let running = newest_rollout(&mut admin).await?;
        ensure!(
            running.state == "running",
            "the rollout was {} before the crash, not running (a longer --recreate-ms gives the crash time to land in it)",
            running.state
        );
        tokio::task::block_in_place(|| coordinator.crash_and_restart())?;
        let _ = in_flight.await;
        let t = Instant::now();
        admin = coordinator.admin().await?;
        wait_reported(&mut admin, n, config.timeout).await?;
        reconnect_s = json!(t.elapsed().as_secs_f64());
        // The rollout goes on from the store.
        let deadline = Instant::now() + config.timeout;
        let ended = loop {
            let r = newest_rollout(&mut admin).await?;
            ensure!(
                r.id == running.id,
                "after the restart the newest rollout is {}, not {}",
                r.id,
                running.id
            );
            if r.state != "running" {
                break r;
            }
            ensure!(Instant::now() < deadline, "the resumed rollout did not end");
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        ensure!(
            ended.state == "completed",
            "the resumed rollout ended {:?}: {}",
            ended.state,
            ended.reason
        );
        each_updated_once(fleet, registry, &expected)?;
        resumed = json!(ended.state);
        peaks.insert(
            "restart".into(),
            json!([coordinator.peak_rss(), coordinator.rss()]),
        );
    }

    // Cycles with churn, disconnects and tags moving.
    let mut cycle_ms = Vec::with_capacity(config.cycles);
    let mut store_by_cycle = Vec::new();
    let mut next_tag = 0;
    for c in 0..config.cycles {
        for agent in agents {
            if config.churn > 0.0 && fastrand::f64() < config.churn {
                let tag = fastrand::usize(..config.tags);
                agent.churn(tag, registry.current(tag));
            }
            if config.disconnect_rate > 0.0 && fastrand::f64() < config.disconnect_rate {
                agent.cut();
            }
        }
        let tags: Vec<usize> = (0..config.tags_per_cycle)
            .map(|i| (next_tag + i) % config.tags)
            .collect();
        next_tag = (next_tag + config.tags_per_cycle) % config.tags;
        registry.bump(tags);
        let t = Instant::now();
        check(&mut admin, false, config.timeout).await?;
        cycle_ms.push(ms(t.elapsed()));
        if (c + 1) % (config.cycles / 10).max(1) == 0 || c + 1 == config.cycles {
            store_by_cycle.push(json!({
                "cycle": c + 1,
                "store_bytes": coordinator.store_bytes(),
                "coordinator_rss_bytes": coordinator.rss(),
            }));
        }
    }
    let store_bytes = coordinator.store_bytes();
    let rollouts_stored = admin
        .list_rollouts(pb::ListRolloutsRequest {
            summary: true,
            ..Default::default()
        })
        .await?
        .into_inner()
        .rollouts
        .len();

    // Every agent back, one more cycle, then an idle one: every container on its tag's digest.
    wait_reported(&mut admin, n, config.timeout).await?;
    let last = check(&mut admin, false, config.timeout).await?;
    if let Some(r) = &last.rollout {
        ensure!(
            r.state == "completed",
            "the last rollout ended {:?}: {}",
            r.state,
            r.reason
        );
    }
    registry.take_heads();
    let idle = check(&mut admin, false, config.timeout).await?;
    ensure!(
        decisions(&idle, "update") == 0,
        "the final idle cycle planned updates"
    );
    let final_idle_requests = registry.take_heads();
    // Why containers were left alone in the end (there should be none to leave).
    let mut skipped: std::collections::BTreeMap<String, usize> = Default::default();
    for c in idle.containers.iter().filter(|c| c.decision == "skip") {
        *skipped.entry(c.reason.clone()).or_default() += 1;
    }
    let missing: usize = agents
        .iter()
        .flat_map(|a| a.containers())
        .filter(|c| c.digest != registry.current(c.tag))
        .count();

    let mean = |v: &[u64]| {
        if v.is_empty() {
            0
        } else {
            v.iter().sum::<u64>() / v.len() as u64
        }
    };
    Ok(json!({
        "agents": n,
        "containers_per_agent": config.containers,
        "containers": n * config.containers,
        "tags": config.tags,
        "registry_rtt_ms": ms(config.registry_rtt),
        "recreate_ms": ms(config.recreate),
        "max_hosts_in_flight": config.max_hosts_in_flight,
        "max_containers_in_flight": config.max_containers_in_flight,
        "connect_s": connect_s,
        "idle_cycle_ms": idle_cycle_ms,
        "idle_cycle_cpu_ms": idle_cycle_cpu_ms,
        "idle_cycle_registry_requests": idle_cycle_registry_requests,
        "final_idle_cycle_registry_requests": final_idle_requests,
        "plan_ms": plan_ms,
        "plan_updates": plan_updates,
        "rollout_tags": share,
        "rollout_targets": rollout_targets,
        "rollout_s": rollout_s,
        "reconnect_s": reconnect_s,
        "resumed_rollout": resumed,
        "cycles": config.cycles,
        "cycle_ms_mean": mean(&cycle_ms),
        "cycle_ms_max": cycle_ms.iter().max().copied().unwrap_or(0),
        "churn": config.churn,
        "disconnect_rate": config.disconnect_rate,
        "store_bytes": store_bytes,
        "store_bytes_by_cycle": store_by_cycle,
        "rollouts_stored": rollouts_stored,
        "coordinator_peak_and_current_rss_bytes_after": peaks,
        "recreate_commands": fleet.commands.load(Ordering::Relaxed),
        "updates_applied": fleet.applied(),
        "updates_applied_twice": fleet.applied_twice(),
        "updates_missing": missing,
        "final_skipped": skipped,
    }))
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// One `check` (all hosts); a failed call is an error.
async fn check(
    admin: &mut ouroboros_proto::v1::admin_client::AdminClient<tonic::transport::Channel>,
    dry_run: bool,
    timeout: Duration,
) -> anyhow::Result<pb::CheckResponse> {
    let request = admin.check(pb::CheckRequest {
        dry_run,
        ..Default::default()
    });
    Ok(tokio::time::timeout(timeout, request)
        .await
        .map_err(|_| anyhow::anyhow!("a check did not end within {timeout:?}"))?
        .context("check")?
        .into_inner())
}

fn decisions(response: &pb::CheckResponse, decision: &str) -> usize {
    response
        .containers
        .iter()
        .filter(|c| c.decision == decision)
        .count()
}

async fn newest_rollout(
    admin: &mut ouroboros_proto::v1::admin_client::AdminClient<tonic::transport::Channel>,
) -> anyhow::Result<pb::Rollout> {
    admin
        .list_rollouts(pb::ListRolloutsRequest {
            summary: true,
            ..Default::default()
        })
        .await?
        .into_inner()
        .rollouts
        .into_iter()
        .next()
        .context("no rollout is stored")
}

/// Waits until `n` hosts are connected and reported.
async fn wait_reported(
    admin: &mut ouroboros_proto::v1::admin_client::AdminClient<tonic::transport::Channel>,
    n: usize,
    timeout: Duration,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let (reported, known) = reported_hosts(admin).await?;
        if reported == n {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "{reported} of {n} agents connected and reported within {timeout:?} ({known} known)"
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// (host, container, tag) of every container on `tags` now.
fn containers_on(agents: &[Arc<SimAgent>], tags: &[usize]) -> Vec<(String, String, usize)> {
    agents
        .iter()
        .flat_map(|a| {
            a.containers()
                .into_iter()
                .filter(|c| tags.contains(&c.tag))
                .map(|c| (a.host.clone(), c.name, c.tag))
        })
        .collect()
}

/// Each of `expected` moved to its tag's digest exactly once.
fn each_updated_once(
    fleet: &Fleet,
    registry: &SimRegistry,
    expected: &[(String, String, usize)],
) -> anyhow::Result<()> {
    let mut wrong: HashMap<u32, usize> = HashMap::new();
    for (host, container, tag) in expected {
        let times = fleet.times_applied(host, container, &registry.current(*tag));
        if times != 1 {
            *wrong.entry(times).or_default() += 1;
        }
    }
    ensure!(
        wrong.is_empty(),
        "of {} updates, these were applied a wrong number of times (times: containers): {wrong:?}",
        expected.len()
    );
    Ok(())
}

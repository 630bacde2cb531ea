//! One check cycle: detect what moved for the connected fleet, then (unless it is a dry run)
//! plan a rollout of the updates (per host in dependency order, canary hosts first) and let
//! the [`Runner`] run it. What operators ask between cycles (resume, cancel, retry) is in
//! `cycle/operator.rs`.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use tracing::{info, warn};

use crate::detect::registry::RegistryClient;
use crate::detect::{Decision, Detection, Selection, detect};
use crate::fleet::Fleet;
use crate::plan::deps::{Graph, Node};
use crate::plan::outcome::{Pruned, Status, UpdateResult};
use crate::plan::rollout::{Policy, Rollout, RolloutState, Target, TargetState};
use crate::plan::window::Windows;
use crate::run::clock::{Clock, WallClock};
use crate::run::runner::Runner;
use crate::server::dispatch::Commands;
use crate::telemetry::metrics::Metrics;
use ouroboros_shared::inventory::ContainerInfo;
use ouroboros_shared::reference::ImageRef;

mod announce;
mod hooks;
mod operator;
mod targets;

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
    pub commands: Arc<dyn Commands>,
    pub registry: Arc<RegistryClient>,
    pub selection: Selection,
    pub cleanup: Cleanup,
    /// How updates roll out.
    pub policy: Policy,
    pub windows: Windows,
    pub runner: Runner,
    /// Where cycles and updates are counted.
    pub metrics: Metrics,
    /// One cycle at a time, whoever starts it (schedule or `check`).
    running: tokio::sync::Mutex<()>,
    /// What the last cycle saw: when, containers watched, updates found.
    pub last: std::sync::Mutex<Option<(i64, u32, u32)>>,
    /// The updates the last cycle found: (host, container, digest).
    found: std::sync::Mutex<Vec<(String, String, String)>>,
    /// When the next scheduled cycle runs (unix ms; 0: none scheduled).
    pub next_at: std::sync::atomic::AtomicI64,
    /// Woken after every cycle (for the InfluxDB export).
    pub done: Arc<tokio::sync::Notify>,
    clock: Arc<dyn Clock>,
    /// Operators' scripts (`updates_enumerated`, `dry_run_update`, `notify_update` here; the
    /// runner's around each update).
    hooks: Arc<crate::hooks::Hooks>,
    /// MONITOR_ONLY: dry runs fire `notify_update` for new images, not `dry_run_update`.
    monitor_only: bool,
    /// `--history-retention`: outcomes and ended rollouts older than this are pruned before
    /// every cycle, scheduled or asked for (`None`: never).
    retention: Option<Duration>,
}

/// Who asked for a cycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// The schedule (or run-once): the cycle `status` and the metrics report as the last.
    Schedule,
    /// `check` or `updates`: an operator's look; as a dry run (`updates`) it changes nothing,
    /// not even the time of the last cycle.
    Check,
    /// `update` or `retry` of some containers: known-bad digests do not hold them back.
    Update,
}

/// One container's part in a cycle.
#[derive(Debug, Clone)]
pub struct Checked {
    pub detection: Detection,
    /// The agent's answer, for updates sent.
    pub result: Option<UpdateResult>,
}

/// What a cycle did.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub checked: Vec<Checked>,
    /// Volume prunes, by host (with [`Cleanup::volumes`], outside dry runs).
    pub pruned: Vec<Pruned>,
    /// The rollout of this cycle's updates, as it ended (or paused).
    pub rollout: Option<Rollout>,
}

/// What a target that got no answer from its agent reports.
fn unanswered(t: &Target, rollout: &Rollout) -> UpdateResult {
    let (status, reason) = match &t.state {
        TargetState::Failed { reason, .. } => (Status::Error, reason.clone()),
        TargetState::Skipped { reason } => (Status::NotStarted, reason.clone()),
        TargetState::Cancelled { reason } => (
            Status::Cancelled,
            format!("rollout {} cancelled: {reason}", rollout.id),
        ),
        TargetState::Pending => (
            Status::NotStarted,
            format!(
                "not started: rollout {} {}",
                rollout.id,
                rollout.state.name()
            ),
        ),
        other => (Status::Error, format!("no answer ({})", other.name())),
    };
    UpdateResult::with(status, reason)
}

/// What a cycle looks at: every container of the fleet, and each Swarm service once, as a
/// unit of the manager it is updated through ([`crate::detect::swarm`]). The hosts'
/// inventories are shared with the fleet view, not copied: at 50,000 containers a copy per
/// cycle was tens of MiB at the cycle's peak.
pub(crate) struct Units {
    hosts: Vec<(String, Arc<[ContainerInfo]>)>,
    services: Vec<(String, ContainerInfo)>,
}

/// One unit of a cycle: (host, container).
pub(crate) type Unit<'a> = (&'a str, &'a ContainerInfo);

impl Units {
    /// Every unit, hosts by name and each host's containers in its inventory's order, then
    /// the services.
    pub(crate) fn list(&self) -> Vec<Unit<'_>> {
        self.hosts
            .iter()
            .flat_map(|(h, cs)| cs.iter().map(move |c| (h.as_str(), c)))
            .chain(self.services.iter().map(|(h, c)| (h.as_str(), c)))
            .collect()
    }
}

impl Cycle {
    /// The fleet's units now (see [`Units`]).
    pub(crate) fn units(&self) -> Units {
        Units {
            hosts: self.fleet.inventories(),
            services: self
                .fleet
                .services()
                .into_iter()
                .map(|(host, s)| (host, crate::detect::swarm::unit(&s)))
                .collect(),
        }
    }
}

/// The fleet's containers by (host, name), looked up once per target instead of a scan of the
/// whole fleet each (with 50,000 containers the scans made planning quadratic).
fn by_name<'a>(containers: &[Unit<'a>]) -> HashMap<(&'a str, &'a str), &'a ContainerInfo> {
    containers
        .iter()
        .map(|&(h, c)| ((h, c.name.as_str()), c))
        .collect()
}

/// The digest a container runs now, by its image reference's repository.
fn old_digest(info: Option<&ContainerInfo>) -> String {
    info.and_then(|c| {
        ImageRef::parse(&c.image)
            .ok()
            .and_then(|r| r.digest_in(&c.repo_digests).map(str::to_owned))
    })
    .unwrap_or_default()
}

/// The skip reason of a known-bad digest: what failed, when, and how to try again.
fn known_bad_reason(b: &crate::plan::rollout::BadDigest) -> String {
    let short = b.digest.get(..19).unwrap_or(&b.digest);
    let mut why = b.reason.clone();
    if why.chars().count() > 160 {
        why = why.chars().take(160).collect::<String>() + "…";
    }
    format!(
        "known-bad: its update to {short} {} at {} ({why}); tried again when the tag moves on, or by `update` or `retry`",
        b.outcome,
        ouroboros_shared::time_fmt::rfc3339_ms(b.at_ms).unwrap_or_default()
    )
}

impl Cycle {
    // Each part is a different collaborator or setting of the server's; a struct of them
    // would only move the list.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        fleet: Arc<Fleet>,
        commands: Arc<dyn Commands>,
        registry: Arc<RegistryClient>,
        selection: Selection,
        cleanup: Cleanup,
        policy: Policy,
        windows: Windows,
        metrics: Metrics,
    ) -> Self {
        let runner = Runner::new(
            fleet.clone(),
            commands.clone(),
            cleanup.images,
            metrics.clone(),
        );
        Self {
            fleet,
            commands,
            registry,
            selection,
            cleanup,
            policy,
            windows,
            runner,
            metrics,
            running: tokio::sync::Mutex::new(()),
            last: std::sync::Mutex::new(None),
            found: std::sync::Mutex::default(),
            next_at: std::sync::atomic::AtomicI64::new(0),
            done: Arc::new(tokio::sync::Notify::new()),
            clock: Arc::new(WallClock),
            hooks: Arc::default(),
            monitor_only: false,
            retention: None,
        }
    }

    /// Prunes history and ended rollouts older than `retention` before every cycle.
    pub fn with_retention(mut self, retention: Duration) -> Self {
        self.retention = Some(retention);
        self
    }

    /// The hooks (for an update outside a rollout).
    pub fn hooks(&self) -> Arc<crate::hooks::Hooks> {
        self.hooks.clone()
    }

    /// Runs `hooks` at the cycle's points and around each update; `monitor_only`: the
    /// coordinator only monitors (dry runs fire `notify_update`).
    pub fn with_hooks(mut self, hooks: Arc<crate::hooks::Hooks>, monitor_only: bool) -> Self {
        self.runner = self.runner.with_hooks(hooks.clone());
        self.hooks = hooks;
        self.monitor_only = monitor_only;
        self
    }

    /// Reads time (its own and its runner's) from `clock` instead of the wall clock.
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.runner = self.runner.with_clock(clock.clone());
        self.clock = clock;
        self
    }

    /// Runs one scheduled cycle, after any cycle already running.
    pub async fn run(&self, dry_run: bool) -> Report {
        self.run_scoped(dry_run, None, None, Trigger::Schedule)
            .await
    }

    /// Runs one cycle over the containers of `host` and/or named `container` only.
    pub async fn run_scoped(
        &self,
        dry_run: bool,
        host: Option<&str>,
        container: Option<&str>,
        trigger: Trigger,
    ) -> Report {
        let _turn = self.running.lock().await;
        let started = std::time::Instant::now();
        if let Some(retention) = self.retention {
            let keep_ms = i64::try_from(retention.as_millis()).unwrap_or(i64::MAX);
            self.fleet
                .prune_history(self.clock.now_ms().saturating_sub(keep_ms));
        }
        let in_scope = |h: &str, c: &ContainerInfo| {
            host.is_none_or(|want| want == h)
                && container.is_none_or(|want| want == c.name || c.id.starts_with(want))
        };
        // Only hosts that reported since they connected: a stored inventory may be stale.
        let connected: Vec<String> = self
            .fleet
            .links()
            .into_iter()
            .filter(|h| h.connected && h.reported)
            .map(|h| h.host)
            .collect();
        let is_connected: std::collections::HashSet<&str> =
            connected.iter().map(String::as_str).collect();
        let units = self.units();
        let mut containers: Vec<Unit<'_>> = Vec::new();
        let mut offline = Vec::new();
        for (host, c) in units.list() {
            if !in_scope(host, c) {
                continue;
            }
            if is_connected.contains(host) {
                containers.push((host, c));
            } else {
                offline.push(Detection {
                    host: host.to_owned(),
                    container: c.name.clone(),
                    image: c.image.clone(),
                    decision: Decision::Skip {
                        reason: "host not connected (or not reported since it connected)".into(),
                    },
                });
            }
        }
        let mut detections = detect(
            self.registry.clone(),
            &containers,
            &self.selection,
            PROBE_CONCURRENCY,
        )
        .await;
        // Dependencies, per host: containers in a cycle or missing a parent are skipped.
        // (One pass over the fleet: a pass per host was quadratic at 100,000 containers.)
        let mut nodes: BTreeMap<&str, Vec<Node>> =
            connected.iter().map(|h| (h.as_str(), Vec::new())).collect();
        for (h, c) in &containers {
            if let Some(list) = nodes.get_mut(h)
                && !crate::detect::swarm::is_service(&c.name)
            {
                list.push(Node {
                    id: c.id.clone(),
                    name: c.name.clone(),
                    labels: c.labels.clone(),
                    network_mode: c.network_mode.clone(),
                    pid_mode: c.pid_mode.clone(),
                    ipc_mode: c.ipc_mode.clone(),
                    links: c.links.clone(),
                });
            }
        }
        let graphs: BTreeMap<String, Graph> = nodes
            .into_iter()
            .map(|(host, nodes)| (host.to_owned(), Graph::build(&nodes)))
            .collect();
        for d in &mut detections {
            if let (Decision::Update { .. }, Some(graph)) = (&d.decision, graphs.get(&d.host))
                && let Some(why) = graph.broken(&d.container)
            {
                d.decision = Decision::Skip {
                    reason: why.to_owned(),
                };
            }
        }
        // A digest whose update of this container failed is not tried again by a schedule or
        // a check: only a new digest of the tag, `update` or `retry` try again.
        if trigger != Trigger::Update {
            let bad = self.fleet.bad_digests();
            for d in &mut detections {
                if let Decision::Update { digest, .. } = &d.decision
                    && let Some(b) = bad.get(&format!("{}/{}", d.host, d.container))
                    && &b.digest == digest
                {
                    d.decision = Decision::Skip {
                        reason: known_bad_reason(b),
                    };
                }
            }
        }
        let updates = detections
            .iter()
            .filter(|d| matches!(d.decision, Decision::Update { .. }))
            .count();
        // Each new digest of a container is announced once; the store remembers across
        // restarts.
        let announced = self.fleet.announced_digests().unwrap_or_default();
        let mut fresh = Vec::new();
        let mut fresh_keys = Vec::new();
        for d in &detections {
            if let Decision::Update { digest, .. } = &d.decision {
                let key = format!("{}/{}", d.host, d.container);
                if announced.get(&key) != Some(digest) {
                    info!(host = %d.host, container = %d.container, image = %d.image, digest = %digest, "New image available.");
                    self.fleet.announced(key.clone(), digest.clone());
                    fresh_keys.push(key);
                    fresh.push(format!(
                        "{}/{}: {} ({digest})",
                        d.host, d.container, d.image
                    ));
                }
            }
        }
        // Announced when nothing will be updated now (monitor-only, dry runs, paused).
        let will_update = !dry_run && self.fleet.paused().is_none();
        if !fresh.is_empty() && !will_update {
            self.notifiers().send(crate::notify::Message {
                event: "updates-available",
                kind: crate::notify::Kind::Info,
                title: format!("Ouroboros: {} update(s) available", fresh.len()),
                body: fresh.join("\n"),
            });
        }
        info!(
            containers = detections.len(),
            updates, dry_run, "Check cycle: detection done."
        );
        let monitored = detections
            .iter()
            .filter(|d| !matches!(d.decision, Decision::Skip { .. }))
            .count();
        let mut monitored_by_host: BTreeMap<String, u64> =
            connected.iter().map(|h| (h.clone(), 0)).collect();
        for d in detections
            .iter()
            .filter(|d| !matches!(d.decision, Decision::Skip { .. }))
        {
            *monitored_by_host.entry(d.host.clone()).or_default() += 1;
        }
        // A look that changes nothing (`updates`) is not a cycle of the schedule's: it must
        // not hide a stalled scheduler.
        let counts = trigger == Trigger::Schedule || !dry_run;
        if counts {
            *self.last.lock().unwrap_or_else(|p| p.into_inner()) = Some((
                self.clock.now_ms(),
                u32::try_from(monitored).unwrap_or(u32::MAX),
                u32::try_from(updates).unwrap_or(u32::MAX),
            ));
        }
        *self.found.lock().unwrap_or_else(|p| p.into_inner()) = detections
            .iter()
            .filter_map(|d| match &d.decision {
                Decision::Update { digest, .. } => {
                    Some((d.host.clone(), d.container.clone(), digest.clone()))
                }
                _ => None,
            })
            .collect();
        self.fire_detection_hooks(&detections, &containers, dry_run, &fresh_keys)
            .await;
        let paused = self.fleet.paused();
        let mut results: BTreeMap<(String, String), UpdateResult> = BTreeMap::new();
        let mut rollout = None;
        if !dry_run && updates > 0 {
            if let Some(why) = &paused {
                for d in &mut detections {
                    if matches!(d.decision, Decision::Update { .. }) {
                        d.decision = Decision::Skip {
                            reason: format!("updates are {}", crate::fleet::paused_text(why)),
                        };
                    }
                }
            } else if let Some(mut paused) = self.paused_rollout() {
                self.supersede(&mut paused, &detections).await;
                // A paused rollout holds the fleet: nothing new starts until it is resumed.
                let why = match &paused.state {
                    RolloutState::Paused { reason } => reason.clone(),
                    _ => String::new(),
                };
                for d in &mut detections {
                    if matches!(d.decision, Decision::Update { .. }) {
                        d.decision = Decision::Skip {
                            reason: format!("rollout {} is paused ({why})", paused.id),
                        };
                    }
                }
            } else {
                let planned = self.plan_rollout(&detections, &containers, &graphs);
                info!(rollout = %planned.id, targets = planned.targets.len(), "Rollout starts.");
                let (done, answers) = self.runner.run(planned, &self.windows).await;
                info!(rollout = %done.id, state = done.state.name(), "Rollout stops.");
                self.announce_outcome(&done, &answers);
                for (i, t) in done.targets.iter().enumerate() {
                    let result = answers
                        .get(&i)
                        .cloned()
                        .map(|mut r| {
                            if matches!(t.state, TargetState::Reverted { .. }) {
                                r.status = Status::RolledBack;
                                r.reason = format!("reverted: rollout {}", done.state.name());
                            }
                            r
                        })
                        .unwrap_or_else(|| unanswered(t, &done));
                    results.insert((t.host.clone(), t.container.clone()), result);
                }
                rollout = Some(done);
            }
        }
        let pruned = if self.cleanup.volumes && !dry_run && paused.is_none() {
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
        let now = self.clock.now_ms();
        if counts {
            self.metrics.cycle(
                started.elapsed().as_secs_f64(),
                now as f64 / 1000.0,
                monitored_by_host,
                updates as u64,
            );
            self.done.notify_waiters();
        }
        Report {
            checked,
            pruned,
            rollout,
        }
    }

    /// The notifiers, as configured.
    pub fn notifiers(&self) -> crate::notify::Notifiers {
        self.runner
            .notifiers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Each host's unused anonymous volumes, hosts in parallel.
    async fn prune(&self, hosts: &[String]) -> Vec<Pruned> {
        let prunes = hosts.iter().map(|host| async move {
            match self.commands.prune_volumes(host, PRUNE_TIMEOUT).await {
                Ok(pruned) => pruned,
                Err(e) => {
                    warn!(host = %host, error = %e, "Volume prune not done.");
                    Pruned {
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

//! A simulated agent: the agent's side of the protocol (`ouroboros.v1.AgentGateway`) over real
//! mTLS gRPC with its own certificate, in front of an in-memory engine. It says `Hello`,
//! reports its containers, sends heartbeats at the interval the coordinator asks, answers
//! `Refresh` and `Recreate` (after a simulated recreate time, idempotent by op id, an inventory
//! before each result as the real agent does), and reconnects with the agent's own backoff.
//! The driver changes its containers (churn) and cuts its link.
//!
//! Written against the protocol rather than the real agent's link: that one is bound to a
//! Docker engine through bollard, and a thousand engines are what the simulator avoids.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use ouroboros_proto::v1 as pb;
use ouroboros_proto::v1::agent_gateway_client::AgentGatewayClient;
use ouroboros_shared::backoff::{Backoff, RECONNECT_INITIAL, RECONNECT_MAX};
use ouroboros_shared::time_fmt::now_unix_ms;
use pb::coordinator_message::Kind as In;
use pb::recreate_result::Status;
use tokio::sync::{Notify, mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

/// One container of the in-memory engine.
#[derive(Debug, Clone)]
pub struct SimContainer {
    pub id: String,
    pub name: String,
    /// Index of its repository in the registry.
    pub tag: usize,
    /// `repository` as configured is `registry/sim/t{tag}:stable`; this is its image's digest.
    pub digest: String,
}

/// What every agent shares: where the coordinator is, how long a recreate takes, and the
/// ledger of updates applied (for the correctness checks).
pub struct Fleet {
    pub url: String,
    pub ca_pem: String,
    pub registry_host: String,
    pub recreate: Duration,
    /// (host, container, digest) → the op ids that moved it there or found it there (a
    /// repeated op id counts once: it is answered from the stored result).
    pub ledger: Mutex<HashMap<(String, String, String), HashSet<String>>>,
    /// Recreate commands received (repeats of an op id included).
    pub commands: AtomicU64,
}

impl Fleet {
    fn image(&self, tag: usize) -> String {
        format!("{}/sim/t{tag}:{}", self.registry_host, super::registry::TAG)
    }

    fn repository(&self, tag: usize) -> String {
        format!("{}/sim/t{tag}", self.registry_host)
    }

    fn record(&self, host: &str, container: &str, digest: &str, op_id: &str) {
        self.ledger
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry((host.to_owned(), container.to_owned(), digest.to_owned()))
            .or_default()
            .insert(op_id.to_owned());
    }

    /// Containers sent to the same digest by more than one operation.
    pub fn applied_twice(&self) -> usize {
        self.ledger
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .filter(|ops| ops.len() > 1)
            .count()
    }

    /// Updates applied (distinct container and digest).
    pub fn applied(&self) -> usize {
        self.ledger
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// Whether `container` of `host` was moved to `digest`, and how many times.
    pub fn times_applied(&self, host: &str, container: &str, digest: &str) -> u32 {
        self.ledger
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&(host.to_owned(), container.to_owned(), digest.to_owned()))
            .map_or(0, |ops| u32::try_from(ops.len()).unwrap_or(u32::MAX))
    }
}

struct State {
    containers: Vec<SimContainer>,
    /// Answers by op id (a repeated op id gets the stored one).
    results: HashMap<String, pb::RecreateResult>,
    /// Op ids being recreated now (a repeat while it runs is answered when it ends).
    running: HashSet<String>,
    serial: u64,
}

/// One simulated host.
pub struct SimAgent {
    pub host: String,
    cert_pem: String,
    key_pem: String,
    state: Mutex<State>,
    /// The containers changed: send an inventory.
    changed: Notify,
    /// Drop the link now (and reconnect).
    cut: Notify,
    connected: AtomicBool,
}

impl SimAgent {
    pub fn new(
        host: String,
        cert_pem: String,
        key_pem: String,
        containers: Vec<SimContainer>,
    ) -> Self {
        Self {
            host,
            cert_pem,
            key_pem,
            state: Mutex::new(State {
                containers,
                results: HashMap::new(),
                running: HashSet::new(),
                serial: 0,
            }),
            changed: Notify::new(),
            cut: Notify::new(),
            connected: AtomicBool::new(false),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A copy of its containers.
    pub fn containers(&self) -> Vec<SimContainer> {
        self.state().containers.clone()
    }

    pub fn is_connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }

    /// Churn: one container goes (the first) and a new one appears on `tag`, at `digest`.
    pub fn churn(&self, tag: usize, digest: String) {
        {
            let mut state = self.state();
            if !state.containers.is_empty() {
                state.containers.remove(0);
            }
            state.serial += 1;
            let serial = state.serial;
            let name = format!("churn-{serial}");
            state.containers.push(SimContainer {
                id: container_id(&self.host, &name, serial),
                name,
                tag,
                digest,
            });
        }
        self.changed.notify_one();
    }

    /// Drops the link; the agent reconnects after its backoff.
    pub fn cut(&self) {
        self.cut.notify_one();
    }

    /// Connects, and again after every break, until `stop`.
    pub async fn run(self: Arc<Self>, fleet: Arc<Fleet>, mut stop: watch::Receiver<bool>) {
        let mut backoff = Backoff::new(RECONNECT_INITIAL, RECONNECT_MAX);
        loop {
            let stopping = *stop.borrow();
            if stopping {
                return;
            }
            let welcomed = self.session(&fleet, stop.clone()).await;
            self.connected.store(false, Ordering::Relaxed);
            if welcomed {
                backoff.reset();
            }
            tokio::select! {
                () = tokio::time::sleep(backoff.next_delay()) => {}
                () = stopped(&mut stop) => return,
            }
        }
    }

    /// One session; true when the coordinator welcomed it.
    async fn session(
        self: &Arc<Self>,
        fleet: &Arc<Fleet>,
        mut stop: watch::Receiver<bool>,
    ) -> bool {
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&fleet.ca_pem))
            .identity(Identity::from_pem(&self.cert_pem, &self.key_pem));
        let Ok(endpoint) = Endpoint::from_shared(fleet.url.clone()).and_then(|e| e.tls_config(tls))
        else {
            return false;
        };
        let Ok(channel) = endpoint
            .connect_timeout(Duration::from_secs(10))
            .connect()
            .await
        else {
            return false;
        };
        let (tx, rx) = mpsc::channel(64);
        let _ = tx
            .send(message(pb::agent_message::Kind::Hello(self.hello())))
            .await;
        let Ok(response) = AgentGatewayClient::new(channel)
            .connect(ReceiverStream::new(rx))
            .await
        else {
            return false;
        };
        let mut inbound = response.into_inner();
        let beat = match inbound.message().await {
            Ok(Some(pb::CoordinatorMessage {
                kind: Some(In::Welcome(w)),
            })) => Duration::from_secs(u64::from(w.heartbeat_interval_secs.max(1))),
            _ => return false,
        };
        self.connected.store(true, Ordering::Relaxed);
        if tx.send(self.inventory(fleet)).await.is_err() {
            return true;
        }
        let mut heartbeat = tokio::time::interval_at(tokio::time::Instant::now() + beat, beat);
        loop {
            tokio::select! {
                () = stopped(&mut stop) => return true,
                () = self.cut.notified() => return true,
                () = self.changed.notified() => {
                    if tx.send(self.inventory(fleet)).await.is_err() {
                        return true;
                    }
                }
                _ = heartbeat.tick() => {
                    let beat = pb::Heartbeat { sent_at_unix_ms: now_unix_ms() };
                    if tx.send(message(pb::agent_message::Kind::Heartbeat(beat))).await.is_err() {
                        return true;
                    }
                }
                received = inbound.message() => match received {
                    Ok(Some(pb::CoordinatorMessage { kind: Some(kind) })) => self.handle(kind, fleet, &tx).await,
                    Ok(Some(_)) => {}
                    Ok(None) | Err(_) => return true,
                },
            }
        }
    }

    async fn handle(
        self: &Arc<Self>,
        kind: In,
        fleet: &Arc<Fleet>,
        tx: &mpsc::Sender<pb::AgentMessage>,
    ) {
        match kind {
            In::Refresh(_) => {
                let _ = tx.send(self.inventory(fleet)).await;
            }
            In::Recreate(command) => {
                let (agent, fleet, tx) = (self.clone(), fleet.clone(), tx.clone());
                tokio::spawn(async move { agent.recreate(command, &fleet, &tx).await });
            }
            In::UpdateService(command) => {
                let result = refused("the simulated hosts are not Swarm managers");
                let _ = tx.send(answer(command.op_id, result)).await;
            }
            In::PruneVolumes(command) => {
                let result = pb::CommandResult {
                    op_id: command.op_id,
                    recreate: None,
                    prune: Some(pb::PruneResult::default()),
                };
                let _ = tx
                    .send(message(pb::agent_message::Kind::Result(result)))
                    .await;
            }
            In::Welcome(_) | In::HookVerdict(_) => {}
        }
    }

    async fn recreate(
        &self,
        command: pb::Recreate,
        fleet: &Fleet,
        tx: &mpsc::Sender<pb::AgentMessage>,
    ) {
        fleet.commands.fetch_add(1, Ordering::Relaxed);
        let op_id = command.op_id.clone();
        // A repeated op id: the stored answer, or (still running) the one to come.
        let stored = {
            let mut state = self.state();
            match state.results.get(&op_id).cloned() {
                Some(result) => Some(Some(result)),
                None if !state.running.insert(op_id.clone()) => Some(None),
                None => None,
            }
        };
        match stored {
            Some(Some(result)) => {
                let _ = tx.send(self.inventory(fleet)).await;
                let _ = tx.send(answer(op_id, result)).await;
                return;
            }
            // Still running: answered (on this link) when it ends, as the real agent does.
            Some(None) => {
                let result = loop {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    if let Some(result) = self.state().results.get(&op_id).cloned() {
                        break result;
                    }
                };
                let _ = tx.send(self.inventory(fleet)).await;
                let _ = tx.send(answer(op_id, result)).await;
                return;
            }
            None => {}
        }
        tokio::time::sleep(fleet.recreate).await;
        let result = {
            let mut state = self.state();
            state.running.remove(&op_id);
            state.serial += 1;
            let serial = state.serial;
            let digest = command.image.split_once('@').map(|(_, d)| d.to_owned());
            let found = state
                .containers
                .iter_mut()
                .find(|c| c.name == command.container || c.id.starts_with(&command.container));
            let result = match (found, digest) {
                (None, _) => refused(&format!("no such container: {}", command.container)),
                (Some(_), None) => refused("the simulator recreates from repo:tag@digest only"),
                (Some(c), Some(digest)) if c.digest == digest => {
                    fleet.record(&self.host, &c.name, &digest, &op_id);
                    pb::RecreateResult {
                        status: Status::AlreadyCurrent as i32,
                        new_id: c.id.clone(),
                        image_id: image_id(&digest),
                        ..Default::default()
                    }
                }
                (Some(c), Some(digest)) => {
                    c.id = container_id(&self.host, &c.name, serial);
                    c.digest = digest.clone();
                    fleet.record(&self.host, &c.name, &digest, &op_id);
                    pb::RecreateResult {
                        status: Status::Updated as i32,
                        new_id: c.id.clone(),
                        image_id: image_id(&digest),
                        ..Default::default()
                    }
                }
            };
            state.results.insert(op_id.clone(), result.clone());
            result
        };
        let _ = tx.send(self.inventory(fleet)).await;
        let _ = tx.send(answer(op_id, result)).await;
    }

    fn hello(&self) -> pb::Hello {
        pb::Hello {
            host: self.host.clone(),
            agent_version: env!("CARGO_PKG_VERSION").to_owned(),
            engine: Some(pb::EngineInfo {
                version: "20.10.24".into(),
                api_version: "1.41".into(),
                os: "linux".into(),
                arch: "amd64".into(),
            }),
            mode: pb::HostMode::Standalone as i32,
            ..Default::default()
        }
    }

    fn inventory(&self, fleet: &Fleet) -> pb::AgentMessage {
        let containers = self
            .state()
            .containers
            .iter()
            .map(|c| pb::Container {
                id: c.id.clone(),
                name: c.name.clone(),
                image: fleet.image(c.tag),
                image_id: image_id(&c.digest),
                repo_digests: vec![format!("{}@{}", fleet.repository(c.tag), c.digest)],
                state: pb::ContainerState::Running as i32,
                health: pb::HealthStatus::None as i32,
                created_unix: 1_700_000_000,
                network_mode: "bridge".into(),
                ..Default::default()
            })
            .collect();
        message(pb::agent_message::Kind::Inventory(pb::Inventory {
            containers,
            observed_at_unix_ms: now_unix_ms(),
            mode: pb::HostMode::Standalone as i32,
            ..Default::default()
        }))
    }
}

/// Completes when `stop` becomes true (or its sender is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

fn message(kind: pb::agent_message::Kind) -> pb::AgentMessage {
    pb::AgentMessage { kind: Some(kind) }
}

fn answer(op_id: String, result: pb::RecreateResult) -> pb::AgentMessage {
    message(pb::agent_message::Kind::Result(pb::CommandResult {
        op_id,
        recreate: Some(result),
        prune: None,
    }))
}

fn refused(reason: &str) -> pb::RecreateResult {
    pb::RecreateResult {
        status: Status::Refused as i32,
        step: "inspect".into(),
        reason: reason.to_owned(),
        ..Default::default()
    }
}

/// A 64-hex container id, distinct per (host, name, serial).
pub fn container_id(host: &str, name: &str, serial: u64) -> String {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (host, name).hash(&mut h);
    format!("{:016x}{serial:016x}{:032x}", h.finish(), 0xc0_u128)
}

/// The local image id of the image with `digest` (one per digest).
fn image_id(digest: &str) -> String {
    let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
    format!("sha256:{}", hex.chars().rev().collect::<String>())
}

//! The Ouroboros agent: runs on every Docker host, dials out to the coordinator and reports
//! what runs there.
//!
//! Layout:
//! - [`cli`]: flags, environment fallbacks, validation into [`AgentConfig`]; [`enrol`]:
//!   `--join`, a certificate for a new host from a join token.
//! - [`engine`]: the local Docker engine (connection, negotiation, inventory, events);
//!   [`services`]: a Swarm manager's services in the inventory.
//! - [`link`]: the stream to the coordinator, reconnecting with [`ouroboros_shared::backoff`]; [`schedule`]
//!   decides when it takes the next inventory; [`renew`]: a new certificate before expiry.
//! - [`commands`]: the coordinator's commands, one destructive operation at a time;
//!   [`recreate`]: the safe recreate with its dependants, journal and recovery; [`cleanup`]:
//!   old images and unused anonymous volumes; [`swarm`]: the update of one Swarm
//!   service to a new digest, watched and rolled back.
//! - [`health`]: the heartbeat file behind `ouroboros-agent healthcheck`.

pub mod cleanup;
pub mod cli;
pub mod commands;
pub mod engine;
pub mod enrol;
pub mod handover;
pub mod health;
pub mod link;
pub mod own;
pub mod recreate;
pub mod renew;
pub mod schedule;
pub mod services;
pub mod swarm;
pub mod updater;
pub mod verdicts;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tracing::{error, info, warn};

use crate::commands::CommandRunner;
use crate::engine::{DockerEndpoint, Engine};
use crate::handover::{Found, Handover};
use crate::link::LinkConfig;
use crate::recreate::Alerts;
use crate::recreate::executor::{Deadlines, Recreator};
use crate::recreate::faults::{CrashMode, CrashPoint};
use crate::recreate::journal::Journal;

/// How long a stopping agent gives the operation in flight to reach a safe point, by default.
pub const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(60);

/// Validated configuration of the agent.
#[derive(Clone)]
pub struct AgentConfig {
    pub link: LinkConfig,
    pub docker: DockerEndpoint,
    pub data_dir: PathBuf,
    /// Fault injection for tests (built with the `failpoints` feature only).
    pub crash: Option<CrashPoint>,
    /// After SIGTERM: the longest wait for the operation in flight (finished past its health
    /// gate, else reverted) before the agent exits anyway.
    pub shutdown_timeout: Duration,
    /// Self-update: how long a successor container has to take over; `None`: the agent never
    /// hands over (its own container is refused, as in `up`, whose process is the coordinator too).
    pub handover_timeout: Option<Duration>,
    /// Its own container is recreated by an updater container instead (`up`: see [`updater`]).
    pub updater: bool,
}

/// Runs the agent until `shutdown` completes. Waits (with backoff) for the Docker engine when it
/// is not reachable yet; before it connects to the coordinator it finishes or reverts every
/// recreate a crash interrupted. On `shutdown` it takes no new command, lets the operation in
/// flight reach a safe point (at most [`AgentConfig::shutdown_timeout`]), sends its answer and
/// closes the link. Fails only when its journal cannot be used.
pub async fn run(
    config: AgentConfig,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), String> {
    let journal = Journal::open(&config.data_dir).map_err(|e| e.to_string())?;
    health::forget(&config.data_dir);
    let (stopping_tx, stopping_rx) = watch::channel(false);
    let (link_stop_tx, link_stop_rx) = watch::channel(false);
    let alerts: Alerts = Arc::default();
    let bound = config.shutdown_timeout;
    let agent = async move {
        let mut stopping = stopping_rx.clone();
        let mut backoff = ouroboros_shared::backoff::Backoff::new(
            Duration::from_millis(500),
            Duration::from_secs(30),
        );
        let engine = loop {
            match Engine::connect(&config.docker).await {
                Ok(engine) => break engine,
                Err(error) => {
                    let delay = backoff.next_delay();
                    warn!(%error, delay_ms = delay.as_millis(), "Docker engine unreachable; retrying.");
                    tokio::select! {
                        () = tokio::time::sleep(delay) => {}
                        () = link::stopped(&mut stopping) => return,
                    }
                }
            }
        };
        info!(
            docker = %config.docker.host,
            api = %engine.api_version(),
            host = %config.link.host,
            "Docker engine connected."
        );
        tokio::spawn(health::beat(
            engine.clone(),
            config.data_dir.clone(),
            stopping_rx.clone(),
        ));
        let own_id = own::container_id();
        let mut recreator = Recreator::new(&engine, journal, Deadlines::default(), own_id.clone())
            .with_stopping(stopping_rx.clone());
        if let Some(point) = config.crash {
            warn!(
                ?point,
                "Fault injection: the agent hangs at this point of every recreate, to be killed."
            );
            recreator = recreator.with_crash(point, CrashMode::Hang);
        }
        match recreator.recover().await {
            Ok(recovered) => {
                for (op, outcome) in recovered.operations {
                    info!(op = %op, ?outcome, "Recovered an interrupted recreate.");
                }
                alerts
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .extend(recovered.alerts);
            }
            Err(e) => {
                error!(error = %e, "Cannot recover interrupted recreates; the journal needs an operator.")
            }
        }
        let mut link_config = config.link;
        if let Some(id) = &own_id {
            link_config.container_id = Some(id.clone());
            link_config.agent_image = own::image(recreator.docker(), id).await;
        }
        let handover = own_id
            .clone()
            .zip(config.handover_timeout)
            .map(|(id, timeout)| Handover::new(&config.data_dir, id, timeout));
        let found = match &handover {
            Some(h) => h.found(&recreator).await,
            None => Found::Nothing,
        };
        let updater = own_id
            .clone()
            .filter(|_| config.updater)
            .map(|id| updater::Updater::new(id, &config.data_dir));
        if let Some(u) = &updater {
            u.tidy(&recreator, false).await;
        }
        let commands = CommandRunner::new(recreator, engine.clone(), handover, updater);
        match found {
            Found::Nothing | Found::Successor(_) => {}
            Found::Orphan(name) => {
                error!(container = %name, "This container is a successor agent of a self-update that is over; it does not connect (the old agent removes it).");
                return;
            }
            Found::Retired => {
                info!("A successor agent took over this host; this agent waits to be removed.")
            }
            Found::Old(record) => {
                info!(op = %record.op_id, "Restarted during a self-update: waiting for the successor agent to take over.");
                let commands = commands.clone();
                tokio::spawn(async move { commands.resume_handover(record).await });
            }
        }
        let link = link::run(
            link_config,
            engine,
            commands.clone(),
            alerts.clone(),
            link_stop_rx,
        );
        tokio::pin!(link);
        tokio::select! {
            () = &mut link => return,
            () = link::stopped(&mut stopping) => {}
        }
        info!(
            bound_s = bound.as_secs(),
            "Stopping: no new command is taken; an operation in flight reaches a safe point first."
        );
        match tokio::time::timeout(bound, commands.idle()).await {
            Ok(()) => info!("Nothing in flight any more."),
            Err(_) => warn!(
                bound_s = bound.as_secs(),
                "An operation is still in flight at the shutdown bound; exiting anyway. The journal finishes or reverts it at the next start."
            ),
        }
        let _ = link_stop_tx.send(true);
        let _ = tokio::time::timeout(Duration::from_secs(5), link).await;
    };
    tokio::pin!(agent);
    tokio::select! {
        () = &mut agent => {}
        () = shutdown => {
            let _ = stopping_tx.send(true);
            // The agent ends within its bound (plus the link's close).
            let _ = tokio::time::timeout(bound + Duration::from_secs(10), agent).await;
        }
    }
    Ok(())
}

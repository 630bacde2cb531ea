//! The Ouroboros agent: runs on every Docker host, dials out to the coordinator and reports
//! what runs there.
//!
//! Layout:
//! - [`cli`]: flags, environment fallbacks, validation into [`AgentConfig`].
//! - [`engine`]: the local Docker engine (connection, negotiation, inventory, events).
//! - [`link`]: the stream to the coordinator, reconnecting with [`backoff`]; [`schedule`]
//!   decides when it takes the next inventory.

pub mod backoff;
pub mod cleanup;
pub mod cli;
pub mod commands;
pub mod engine;
pub mod link;
pub mod recreate;
pub mod schedule;

use std::path::PathBuf;
use std::time::Duration;

use tokio::sync::watch;
use tracing::{error, info, warn};

use crate::commands::CommandRunner;
use crate::engine::{DockerEndpoint, Engine};
use crate::link::LinkConfig;
use crate::recreate::executor::{CrashMode, CrashPoint, Deadlines, Recreator};
use crate::recreate::journal::Journal;

/// Validated configuration of the agent.
#[derive(Clone)]
pub struct AgentConfig {
    pub link: LinkConfig,
    pub docker: DockerEndpoint,
    pub data_dir: PathBuf,
    /// Fault injection for tests (built with the `failpoints` feature only).
    pub crash: Option<CrashPoint>,
}

/// The agent's own container id, when it runs in a container (Docker sets `HOSTNAME` to the
/// short id unless told otherwise).
fn own_container_id() -> Option<String> {
    let host = std::env::var("HOSTNAME").ok()?;
    (host.len() == 12 && host.bytes().all(|b| b.is_ascii_hexdigit())).then_some(host)
}

/// Runs the agent until `shutdown` completes. Waits (with backoff) for the Docker engine when it
/// is not reachable yet; before it connects to the coordinator it finishes or reverts every
/// recreate a crash interrupted. Fails only when its journal cannot be used.
pub async fn run(
    config: AgentConfig,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), String> {
    let journal = Journal::open(&config.data_dir).map_err(|e| e.to_string())?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let agent = async move {
        let mut backoff =
            backoff::Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
        let engine = loop {
            match Engine::connect(&config.docker).await {
                Ok(engine) => break engine,
                Err(error) => {
                    let delay = backoff.next_delay();
                    warn!(%error, delay_ms = delay.as_millis(), "Docker engine unreachable; retrying.");
                    tokio::time::sleep(delay).await;
                }
            }
        };
        info!(
            docker = %config.docker.host,
            api = %engine.api_version(),
            host = %config.link.host,
            "Docker engine connected."
        );
        let mut recreator =
            Recreator::new(&engine, journal, Deadlines::default(), own_container_id());
        if let Some(point) = config.crash {
            warn!(
                ?point,
                "Fault injection: the agent hangs at this point of every recreate, to be killed."
            );
            recreator = recreator.with_crash(point, CrashMode::Hang);
        }
        match recreator.recover().await {
            Ok(recovered) => {
                for (op, outcome) in recovered {
                    info!(op = %op, ?outcome, "Recovered an interrupted recreate.");
                }
            }
            Err(e) => {
                error!(error = %e, "Cannot recover interrupted recreates; the journal needs an operator.")
            }
        }
        link::run(config.link, engine, CommandRunner::new(recreator), stop_rx).await;
    };
    tokio::pin!(agent);
    tokio::select! {
        () = &mut agent => {}
        () = shutdown => {
            let _ = stop_tx.send(true);
            // The link ends at its next await point.
            let _ = tokio::time::timeout(Duration::from_secs(5), agent).await;
        }
    }
    Ok(())
}

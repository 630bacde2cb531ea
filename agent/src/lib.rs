//! The Ouroboros agent: runs on every Docker host, dials out to the coordinator and reports
//! what runs there.
//!
//! Layout:
//! - [`cli`]: flags, environment fallbacks, validation into [`AgentConfig`].
//! - [`engine`]: the local Docker engine (connection, negotiation, inventory, events).
//! - [`link`]: the stream to the coordinator, reconnecting with [`backoff`]; [`schedule`]
//!   decides when it takes the next inventory.

pub mod backoff;
pub mod cli;
pub mod engine;
pub mod link;
pub mod recreate;
pub mod schedule;

use std::path::PathBuf;
use std::time::Duration;

use tokio::sync::watch;
use tracing::{info, warn};

use crate::engine::{DockerEndpoint, Engine};
use crate::link::LinkConfig;

/// Validated configuration of the agent.
#[derive(Clone)]
pub struct AgentConfig {
    pub link: LinkConfig,
    pub docker: DockerEndpoint,
    pub data_dir: PathBuf,
}

/// Runs the agent until `shutdown` completes. Waits (with backoff) for the Docker engine when it
/// is not reachable yet.
pub async fn run(config: AgentConfig, shutdown: impl std::future::Future<Output = ()>) {
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
        link::run(config.link, engine, stop_rx).await;
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
}

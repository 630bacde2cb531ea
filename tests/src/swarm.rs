//! A single-node Swarm on an extra engine, left again on drop.
//!
//! `docker swarm init` makes a `docker_gwbridge` Linux bridge in the machine's network
//! namespace, which outlives the daemon; the guard removes it. Daemons in one namespace share
//! that name, so two swarms on this machine must not run at the same time: tests serialize
//! their swarms. Never init a swarm on the system engine.

use anyhow::{Context as _, ensure};

use crate::engine::Engine;

/// Leaves the Swarm on drop and removes the `docker_gwbridge` network it made, so no bridge
/// of ours stays on the machine.
pub struct SwarmGuard {
    engine: Engine,
}

impl SwarmGuard {
    /// Guards a swarm the caller makes on `engine` (an extra engine).
    pub fn new(engine: &Engine) -> SwarmGuard {
        SwarmGuard {
            engine: engine.clone(),
        }
    }

    /// Makes extra engine `engine` the manager of a new single-node swarm, advertising
    /// 127.0.0.1 on a free port.
    pub fn init(engine: &Engine) -> anyhow::Result<SwarmGuard> {
        ensure!(
            engine.is_extra(),
            "a swarm is only made on an extra engine, never on the system one"
        );
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .context("finding a free port for the swarm")?
            .port();
        let guard = SwarmGuard::new(engine);
        engine
            .docker(&[
                "swarm",
                "init",
                "--advertise-addr",
                "127.0.0.1",
                "--listen-addr",
                &format!("127.0.0.1:{port}"),
            ])
            .context("docker swarm init")?;
        Ok(guard)
    }
}

impl Drop for SwarmGuard {
    fn drop(&mut self) {
        let _ = self.engine.docker(&["swarm", "leave", "--force"]);
        let _ = self.engine.docker(&["network", "rm", "docker_gwbridge"]);
    }
}

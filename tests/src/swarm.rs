//! A single-node Swarm on an extra engine, left again on drop.
//!
//! `docker swarm init` makes a `docker_gwbridge` Linux bridge in the machine's network
//! namespace, which outlives the daemon; the guard removes it. Daemons in one namespace share
//! that name, so two swarms on this machine must not run at the same time: a guard holds a
//! lock on a file (`flock`, so test threads and test binaries alike wait for each other) from
//! before the swarm is made until it is gone. Never init a swarm on the system engine.

use anyhow::{Context as _, ensure};

use crate::engine::Engine;

/// Leaves the Swarm on drop and removes the `docker_gwbridge` network it made, so no bridge
/// of ours stays on the machine.
pub struct SwarmGuard {
    engine: Engine,
    /// Engines that joined as managers (left first).
    joined: Vec<Engine>,
    /// This machine's one swarm at a time (unlocked when dropped, after the swarm is gone).
    _turn: Option<std::fs::File>,
}

impl SwarmGuard {
    /// Guards a swarm the caller makes on `engine` (an extra engine), once no other swarm of
    /// the tests exists (waits for it).
    pub fn new(engine: &Engine) -> SwarmGuard {
        let path = std::env::temp_dir().join("ouroboros-test-swarm.lock");
        let turn = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .and_then(|f| f.lock().map(|()| f))
            .map_err(|e| eprintln!("cannot lock {}: {e}; swarms may overlap", path.display()))
            .ok();
        SwarmGuard {
            engine: engine.clone(),
            joined: Vec::new(),
            _turn: turn,
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

impl SwarmGuard {
    /// Joins extra engine `other` to this swarm as a second manager. It advertises
    /// 127.0.0.2 (any loopback address is this machine's): the gossip port (7946) is fixed,
    /// so two nodes in one network namespace need two addresses.
    pub fn join_manager(&mut self, other: &Engine) -> anyhow::Result<()> {
        ensure!(
            other.is_extra(),
            "a swarm is only made on an extra engine, never on the system one"
        );
        let token = self
            .engine
            .docker(&["swarm", "join-token", "--quiet", "manager"])?;
        let leader = self.engine.docker(&[
            "info",
            "--format",
            "{{range .Swarm.RemoteManagers}}{{.Addr}} {{end}}",
        ])?;
        let leader = leader
            .split_whitespace()
            .next()
            .context("the swarm names no manager address")?
            .to_owned();
        let port = std::net::TcpListener::bind("127.0.0.2:0")
            .and_then(|l| l.local_addr())
            .context("finding a free port on 127.0.0.2")?
            .port();
        self.joined.push(other.clone());
        other
            .docker(&[
                "swarm",
                "join",
                "--token",
                token.trim(),
                "--advertise-addr",
                "127.0.0.2",
                "--listen-addr",
                &format!("127.0.0.2:{port}"),
                &leader,
            ])
            .context("docker swarm join")?;
        Ok(())
    }
}

impl Drop for SwarmGuard {
    fn drop(&mut self) {
        for other in &self.joined {
            let _ = other.docker(&["swarm", "leave", "--force"]);
            let _ = other.docker(&["network", "rm", "docker_gwbridge"]);
        }
        let _ = self.engine.docker(&["swarm", "leave", "--force"]);
        let _ = self.engine.docker(&["network", "rm", "docker_gwbridge"]);
        // `_turn` unlocks after this, when the fields drop.
    }
}

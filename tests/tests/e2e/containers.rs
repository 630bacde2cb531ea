//! The product as it is meant to run: three engines as hosts, each running the agent **image**
//! as a container (the engine's socket mounted, its data on a volume), enrolled with one join
//! token; the coordinator image runs on the first engine. A new digest of a tag is rolled out
//! to the containers of all three hosts, `hosts` shows all three connected, and no private key
//! other than the agent's own exists in an agent's container or data volume.

use std::process::{Command, Stdio};

use anyhow::{Context, ensure};
use ouroboros_tests::{
    Cleanup, Engine, Registry, eventually, publish, require_engine, unique_name,
};
use serde_json::Value;

use crate::fleet::{CONVERGE, POLL};
use crate::images::build_images;

/// `docker save IMAGE` on `from` into `docker load` on `to` (extra engines have image stores of
/// their own and, like this machine, no registry to pull the agent image from).
pub(crate) fn copy_image(from: &Engine, to: &Engine, image: &str) -> anyhow::Result<()> {
    let mut save = from
        .docker_command()
        .args(["save", image])
        .stdout(Stdio::piped())
        .spawn()
        .context("docker save")?;
    let stdout = save.stdout.take().context("docker save: no stdout")?;
    let load = to
        .docker_command()
        .args(["load", "--quiet"])
        .stdin(stdout)
        .output()
        .context("docker load")?;
    let saved = save.wait()?;
    ensure!(
        saved.success() && load.status.success(),
        "copying {image}: save {saved}, load {}: {}",
        load.status,
        String::from_utf8_lossy(&load.stderr)
    );
    Ok(())
}

/// Names of the entries of a tar stream (`docker cp … -`, `docker export`).
fn tar_names(mut command: Command) -> anyhow::Result<Vec<String>> {
    let mut child = command.stdout(Stdio::piped()).spawn()?;
    let stdout = child.stdout.take().context("no stdout")?;
    let listed = Command::new("tar")
        .arg("-t")
        .stdin(stdout)
        .output()
        .context("tar -t")?;
    ensure!(child.wait()?.success(), "{command:?} failed");
    ensure!(listed.status.success(), "tar -t failed");
    Ok(String::from_utf8_lossy(&listed.stdout)
        .lines()
        .map(str::to_owned)
        .collect())
}

/// The admin CLI inside the coordinator's container (its CLI certificate is in its volume).
pub(crate) fn admin(
    engine: &Engine,
    container: &str,
    url: &str,
    args: &[&str],
) -> anyhow::Result<(i32, String)> {
    let out = engine
        .docker_command()
        .args(["exec", container, "/usr/local/bin/ouroboros-coordinator"])
        .args(args)
        .args(["--server", url, "--pki-dir", "/var/lib/ouroboros/pki"])
        .output()
        .with_context(|| format!("docker exec … {args:?}"))?;
    Ok((
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    ))
}

/// The coordinator image running on an engine: PKI in its volume, then `serve`, with host
/// networking so that agents on every engine and the registry on loopback are reachable.
pub(crate) struct CoordinatorContainer {
    pub(crate) engine: Engine,
    pub(crate) name: String,
    pub(crate) url: String,
    /// Where its metrics endpoint listens (on the loopback).
    pub(crate) metrics: String,
}

impl CoordinatorContainer {
    /// Starts `serve` as container `name` with `env` (`NAME=VALUE`) besides its listen and
    /// metrics ports; `options` go to `docker run` too.
    pub(crate) fn start(
        cleanup: &Cleanup,
        name: &str,
        image: &str,
        env: &[&str],
        options: &[&str],
    ) -> anyhow::Result<CoordinatorContainer> {
        let engine = cleanup.engine().clone();
        let free_port = || -> anyhow::Result<u16> {
            Ok(std::net::TcpListener::bind("127.0.0.1:0")?
                .local_addr()?
                .port())
        };
        let port = free_port()?;
        let metrics_port = free_port()?;
        let metrics_env = format!("PROMETHEUS_PORT={metrics_port}");
        let url = format!("https://127.0.0.1:{port}");
        let data = cleanup.create_volume("containers-coordinator")?;
        let data_mount = format!("{data}:/var/lib/ouroboros");
        let init = engine.docker(&[
            "run",
            "--rm",
            "--network",
            "none",
            "-v",
            &data_mount,
            image,
            "pki",
            "init",
        ])?;
        println!("pki init: {init}");
        let listen = format!("OUROBOROS_LISTEN=127.0.0.1:{port}");
        let mut args = vec![
            "--network",
            "host",
            "-v",
            &data_mount,
            "-e",
            &listen,
            // Metrics on a free port of their own (host networking shares the port space).
            "-e",
            &metrics_env,
            "-e",
            "OUROBOROS_INTERVAL=3600",
        ];
        for e in env {
            args.extend(["-e", e]);
        }
        args.extend_from_slice(options);
        cleanup.run_named(name, &args, image, &["serve"])?;
        Ok(CoordinatorContainer {
            engine,
            name: name.to_owned(),
            url,
            metrics: format!("127.0.0.1:{metrics_port}"),
        })
    }

    /// The admin CLI in the coordinator's container; exit code and output.
    pub(crate) fn admin(&self, args: &[&str]) -> anyhow::Result<(i32, String)> {
        admin(&self.engine, &self.name, &self.url, args)
    }

    /// A join token for `uses` hosts.
    pub(crate) fn token(&self, uses: u32) -> anyhow::Result<String> {
        let uses = uses.to_string();
        eventually(CONVERGE, POLL, || {
            let (code, out) = self.admin(&["token", "create", "--uses", &uses])?;
            ensure!(code == 0, "token create: exit {code}: {out}");
            let token = out.lines().last().unwrap_or_default().trim().to_owned();
            ensure!(token.starts_with("ouro1."), "no token: {out}");
            Ok(token)
        })
        .with_context(|| {
            self.engine
                .docker(&["logs", &self.name])
                .unwrap_or_default()
        })
    }

    /// An agent container named `name` on `cleanup`'s engine: the engine's socket, a data
    /// volume, the token, host networking; `options` go to `docker run` too. Returns the
    /// container's name and its volume.
    pub(crate) fn run_agent(
        &self,
        cleanup: &Cleanup,
        image: &str,
        name: &str,
        token: &str,
        host_name: &str,
        options: &[&str],
    ) -> anyhow::Result<(String, String)> {
        let engine = cleanup.engine();
        let socket = engine
            .socket()
            .context("the engines here listen on unix sockets")?;
        let socket_mount = format!("{}:/var/run/docker.sock", socket.display());
        let volume = cleanup.create_volume("containers-agent")?;
        let volume_mount = format!("{volume}:/var/lib/ouroboros-agent");
        let coordinator_env = format!("OUROBOROS_COORDINATOR={}", self.url);
        let token_env = format!("OUROBOROS_JOIN_TOKEN={token}");
        let host_env = format!("OUROBOROS_HOST_NAME={host_name}");
        let mut args = vec![
            "--network",
            "host",
            "-v",
            &socket_mount,
            "-v",
            &volume_mount,
            "-e",
            &coordinator_env,
            "-e",
            &token_env,
            "-e",
            &host_env,
        ];
        args.extend_from_slice(options);
        cleanup.run_named(name, &args, image, &[])?;
        Ok((name.to_owned(), volume))
    }
}

/// Waits until `count` hosts are connected; the `hosts` JSON. On failure the error carries the
/// coordinator's and the agents' logs.
pub(crate) fn connected_hosts(
    engines: &[Engine],
    coordinator: &str,
    url: &str,
    agents: &[(String, String)],
    count: usize,
) -> anyhow::Result<Value> {
    let hosts = eventually(CONVERGE, POLL, || {
        let (code, out) = admin(
            &engines[0],
            coordinator,
            url,
            &["hosts", "--output", "json"],
        )?;
        ensure!(code == 0, "hosts: exit {code}: {out}");
        let hosts: Value =
            serde_json::from_str(&out).with_context(|| format!("not JSON: {out}"))?;
        let connected = hosts
            .as_array()
            .into_iter()
            .flatten()
            .filter(|h| h["connected"] == true)
            .count();
        ensure!(
            connected == count,
            "{connected} of {count} hosts connected: {hosts}"
        );
        Ok(hosts)
    });
    hosts.map_err(|error| {
        let mut logs = String::new();
        for ((agent, _), engine) in agents.iter().zip(engines) {
            logs.push_str(&format!(
                "\n{agent}: {}",
                engine.docker(&["logs", agent]).unwrap_or_default()
            ));
        }
        anyhow::anyhow!(
            "{error:#}\ncoordinator: {}{logs}",
            engines[0]
                .docker(&["logs", coordinator])
                .unwrap_or_default()
        )
    })
}

#[test]
fn three_hosts_run_the_agent_image_enrolled_by_token_and_a_rollout_reaches_all()
-> anyhow::Result<()> {
    let Some(engine_a) = require_engine() else {
        return Ok(());
    };
    let engines = [engine_a, Engine::start_extra()?, Engine::start_extra()?];
    let cleanups: Vec<Cleanup> = engines.iter().map(Cleanup::new).collect();
    let tag = unique_name("containers");
    let agent_image = format!("ouroboros-agent:{tag}");
    let coordinator_image = format!("ouroboros-coordinator:{tag}");
    for cleanup in &cleanups {
        cleanup.track_image(&agent_image)?;
    }
    cleanups[0].track_image(&coordinator_image)?;
    build_images(&engines[0], &tag)?;
    for engine in &engines[1..] {
        copy_image(&engines[0], engine, &agent_image)?;
    }

    // One container per host on v1 of a tag.
    let registry = Registry::start()?;
    let repo = unique_name("containers");
    let v1 = publish(&cleanups[0], &registry, &repo, "stable", 1)?;
    let mut workloads = Vec::new();
    for cleanup in &cleanups {
        cleanup.track_image(&v1.reference)?;
        workloads.push(cleanup.run_container(
            "containers-app",
            &["--network", "none"],
            &v1.reference,
            &[],
        )?);
    }

    let monitor = format!("MONITOR={}", workloads.join(","));
    let coordinator = CoordinatorContainer::start(
        &cleanups[0],
        &unique_name("containers-coordinator"),
        &coordinator_image,
        &[&monitor],
        &[],
    )?;
    let token = coordinator.token(3)?;
    let mut agents = Vec::new();
    for (i, cleanup) in cleanups.iter().enumerate() {
        let name = unique_name("containers-agent");
        agents.push(coordinator.run_agent(
            cleanup,
            &agent_image,
            &name,
            &token,
            &format!("ctr-host-{i}"),
            &[],
        )?);
    }
    let (url, coordinator) = (coordinator.url.clone(), coordinator.name.clone());

    // All three enrol and connect.
    connected_hosts(&engines, &coordinator, &url, &agents, 3)?;

    // A new digest of the tag: one check rolls it out to every host.
    let v2 = publish(&cleanups[0], &registry, &repo, "stable", 2)?;
    for cleanup in &cleanups[1..] {
        cleanup.track_image(&v2.pinned())?;
    }
    let (code, out) = admin(
        &engines[0],
        &coordinator,
        &url,
        &["check", "--output", "json"],
    )?;
    ensure!(code == 0, "check: exit {code}: {out}");
    for (engine, name) in engines.iter().zip(&workloads) {
        let running = engine.inspect(name, "{{.Image}}")?;
        let v2_id = engine.docker(&["image", "inspect", "--format", "{{.Id}}", &v2.pinned()])?;
        ensure!(
            running == v2_id,
            "{name} on {} still runs {running}",
            engine.host()
        );
        ensure!(
            engine.inspect(name, "{{.State.Running}}")? == "true",
            "{name} not running"
        );
    }

    // No private key but the agent's own in its container or its data volume.
    for ((agent, volume), engine) in agents.iter().zip(&engines) {
        let mut export = engine.docker_command();
        export.args(["export", agent]);
        let in_container: Vec<String> = tar_names(export)?
            .into_iter()
            .filter(|n| n.ends_with(".pem") || n.contains("key"))
            .collect();
        let mut copy = engine.docker_command();
        copy.args(["cp", &format!("{agent}:/var/lib/ouroboros-agent/."), "-"]);
        let in_volume: Vec<String> = tar_names(copy)?
            .into_iter()
            .filter(|n| n.ends_with(".pem") || n.contains("key"))
            .collect();
        let keys: Vec<&String> = in_volume.iter().filter(|n| n.contains("key")).collect();
        ensure!(
            keys.len() == 1 && keys[0].ends_with("key.pem"),
            "{agent}'s data volume {volume} holds {in_volume:?}"
        );
        ensure!(
            !in_volume
                .iter()
                .any(|n| n.contains("ca-key") || n.contains("cli")),
            "{in_volume:?}"
        );
        // `docker export` leaves out volumes: the image itself holds no key or certificate.
        ensure!(
            in_container.iter().all(|n| !n.contains("key")),
            "{agent}'s filesystem holds {in_container:?}"
        );
    }
    for cleanup in cleanups.iter().rev() {
        cleanup.remove_all()?;
    }
    Ok(())
}

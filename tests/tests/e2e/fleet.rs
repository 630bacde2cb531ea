//! The fleet view end to end: one coordinator and two agents, each on its own Docker engine
//! (the machine's and one started by the harness), driven through the real binaries and CLI.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use ouroboros_tests::{
    Binaries, Cleanup, Engine, Process, Registry, SwarmGuard, eventually, publish, require_engine,
    unique_name,
};
use serde_json::Value;

pub(crate) const CONVERGE: Duration = Duration::from_secs(30);
pub(crate) const POLL: Duration = Duration::from_millis(200);

/// The coordinator's files and how to reach it.
pub(crate) struct Coordinator {
    pub(crate) bin: PathBuf,
    pub(crate) pki: PathBuf,
    data: PathBuf,
    pub(crate) url: String,
}

impl Coordinator {
    /// `pki init` plus an agent certificate per host.
    pub(crate) fn init(bin: &Path, dir: &Path, hosts: &[&str]) -> anyhow::Result<Self> {
        let pki = dir.join("pki");
        run(Command::new(bin).args(["pki", "init", "--dir"]).arg(&pki))?;
        for host in hosts {
            run(Command::new(bin)
                .args(["pki", "issue", "--agent", host, "--dir"])
                .arg(&pki))?;
        }
        Ok(Self {
            bin: bin.to_owned(),
            pki,
            data: dir.join("data"),
            url: String::new(),
        })
    }

    /// Starts `serve` on `listen` and learns its address from its log.
    pub(crate) fn serve(&mut self, listen: &str) -> anyhow::Result<Process> {
        self.serve_with_env(listen, &[])
    }

    /// [`Coordinator::serve`] with extra environment variables.
    pub(crate) fn serve_with_env(
        &mut self,
        listen: &str,
        env: &[(&str, &str)],
    ) -> anyhow::Result<Process> {
        let process = Process::spawn(
            &self.bin,
            &[
                "serve",
                "--listen",
                listen,
                "--data-dir",
                path_str(&self.data)?,
                "--pki-dir",
                path_str(&self.pki)?,
                "--log-level",
                "debug",
            ],
            env,
        )?;
        let line = process.wait_for_log("Coordinator listening.", CONVERGE)?;
        let addr = line
            .split_whitespace()
            .find_map(|w| w.strip_prefix("addr="))
            .with_context(|| format!("no addr= in {line:?}"))?;
        self.url = format!("https://{addr}");
        Ok(process)
    }

    pub(crate) fn agent(
        &self,
        agent_bin: &Path,
        host: &str,
        engine: &Engine,
    ) -> anyhow::Result<Process> {
        self.agent_with(agent_bin, host, &["--docker-host", engine.host()], &[])
    }

    /// The data directory (journal) of `host`'s agent.
    pub(crate) fn agent_data(&self, host: &str) -> PathBuf {
        self.data.with_file_name(format!("agent-{host}"))
    }

    /// Starts the agent of `host` with extra arguments and environment (its Docker engine
    /// given either way).
    pub(crate) fn agent_with(
        &self,
        agent_bin: &Path,
        host: &str,
        extra_args: &[&str],
        env: &[(&str, &str)],
    ) -> anyhow::Result<Process> {
        let cert = self.pki.join(format!("agent-{host}.pem"));
        let key = self.pki.join(format!("agent-{host}-key.pem"));
        let data = self.agent_data(host);
        let ca = self.pki.join("ca.pem");
        let mut args = vec![
            "--coordinator",
            &self.url,
            "--ca",
            path_str(&ca)?,
            "--cert",
            path_str(&cert)?,
            "--key",
            path_str(&key)?,
            "--data-dir",
            path_str(&data)?,
            "--log-level",
            "debug",
        ];
        args.extend_from_slice(extra_args);
        Process::spawn(agent_bin, &args, env)
    }

    /// Runs an admin command with `--output json` and parses its answer.
    pub(crate) fn json(&self, args: &[&str]) -> anyhow::Result<Value> {
        let out = run(Command::new(&self.bin)
            .args(args)
            .args(["--output", "json", "--server", &self.url, "--pki-dir"])
            .arg(&self.pki))?;
        serde_json::from_str(&out).with_context(|| format!("not JSON: {out}"))
    }

    /// Runs an admin command with `--output json` whatever its outcome: its exit code and
    /// its JSON answer (`Null` when it printed none).
    pub(crate) fn admin(&self, args: &[&str]) -> anyhow::Result<(i32, Value)> {
        let out = Command::new(&self.bin)
            .args(args)
            .args(["--output", "json", "--server", &self.url, "--pki-dir"])
            .arg(&self.pki)
            .output()
            .with_context(|| format!("running {args:?}"))?;
        let json = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        Ok((out.status.code().unwrap_or(-1), json))
    }

    pub(crate) fn hosts(&self) -> anyhow::Result<Vec<Value>> {
        Ok(self
            .json(&["hosts"])?
            .as_array()
            .cloned()
            .unwrap_or_default())
    }

    pub(crate) fn host(&self, name: &str) -> anyhow::Result<Value> {
        self.hosts()?
            .into_iter()
            .find(|h| h["host"] == name)
            .with_context(|| format!("host {name} not listed"))
    }

    /// The container called `name` as the coordinator reports it for `host`.
    /// Waits until `updates` plans exactly `n` updates (agents connected and reported, the
    /// registry probed).
    pub(crate) fn wait_planned(&self, n: usize) -> anyhow::Result<()> {
        eventually(CONVERGE, POLL, || {
            let planned = self.json(&["updates"])?;
            let updates = planned
                .as_array()
                .into_iter()
                .flatten()
                .filter(|c| c["decision"] == "update")
                .count();
            ensure!(updates == n, "{updates} of {n} updates planned: {planned}");
            Ok(())
        })
    }

    pub(crate) fn container(&self, host: &str, name: &str) -> anyhow::Result<Value> {
        let all = self.json(&["containers", "--host", host])?;
        all.as_array()
            .into_iter()
            .flatten()
            .find(|c| c["name"] == name)
            .cloned()
            .with_context(|| format!("{name} not reported for {host}"))
    }
}

fn path_str(p: &Path) -> anyhow::Result<&str> {
    p.to_str().context("non-UTF-8 path")
}

fn run(command: &mut Command) -> anyhow::Result<String> {
    let out = command
        .output()
        .with_context(|| format!("running {command:?}"))?;
    if !out.status.success() {
        bail!(
            "{command:?} exited with {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[test]
fn two_hosts_report_reconnect_and_survive_a_coordinator_restart() -> anyhow::Result<()> {
    let Some(engine_a) = require_engine() else {
        return Ok(());
    };
    let bins = Binaries::get()?;
    let engine_b = Engine::start_extra()?;
    let registry = Registry::start()?;
    let on_a = Cleanup::new(&engine_a);
    let on_b = Cleanup::new(&engine_b);
    let image = publish(&on_a, &registry, &unique_name("fleet"), "1", 1)?;
    on_b.track_image(&image.reference)?;

    // A container on each engine before anything of ours runs. Pulled from the registry, so
    // the image has RepoDigests.
    let a1 = on_a.run_container(
        "fleet-a1",
        &["--network", "none", "--label", "org.example.role=web"],
        &image.reference,
        &[],
    )?;
    let b1 = on_b.run_container("fleet-b1", &["--network", "none"], &image.reference, &[])?;

    let dir = tempfile::Builder::new()
        .prefix("ouroboros-test-e2e-")
        .tempdir()?;
    let mut coordinator = Coordinator::init(&bins.coordinator, dir.path(), &["host-a", "host-b"])?;
    let server = coordinator.serve("127.0.0.1:0")?;
    let agent_a = coordinator.agent(&bins.agent, "host-a", &engine_a)?;
    let mut agent_b = coordinator.agent(&bins.agent, "host-b", &engine_b)?;

    // Both hosts' containers appear, with what the agent reports about each.
    let image_id = engine_a.inspect(&a1, "{{.Image}}")?;
    let reported = eventually(CONVERGE, POLL, || {
        let c = coordinator.container("host-a", &a1)?;
        ensure!(c["health"] == "healthy", "not healthy yet: {c}");
        Ok(c)
    })?;
    assert_eq!(reported["image"], image.reference.as_str());
    assert_eq!(reported["image_id"], image_id.as_str());
    assert_eq!(reported["state"], "running");
    assert_eq!(reported["restart_count"], 0);
    assert_eq!(reported["labels"]["org.example.role"], "web");
    assert_eq!(reported["labels"]["com.ouroboros.test"], "1");
    assert!(
        reported["created"]
            .as_str()
            .is_some_and(|t| t.ends_with('Z')),
        "{reported}"
    );
    let pinned = image.pinned();
    assert!(
        reported["repo_digests"]
            .as_array()
            .is_some_and(|d| d.iter().any(|x| x == pinned.as_str())),
        "{reported} lacks {pinned}"
    );
    eventually(CONVERGE, POLL, || coordinator.container("host-b", &b1))?;
    let host_a = coordinator.host("host-a")?;
    assert_eq!(host_a["connected"], true);
    let api = engine_a.docker(&["version", "--format", "{{.Server.APIVersion}}"])?;
    assert_eq!(host_a["api_version"], api.as_str());
    assert_eq!(host_a["mode"], "standalone");
    assert!(
        host_a["engine_version"]
            .as_str()
            .is_some_and(|v| !v.is_empty())
    );

    // A container started later appears without restarting anything.
    let a2 = on_a.run_container("fleet-a2", &["--network", "none"], &image.reference, &[])?;
    eventually(CONVERGE, POLL, || coordinator.container("host-a", &a2))?;
    // And a removed one disappears.
    engine_a.docker(&["rm", "-f", &a2])?;
    eventually(CONVERGE, POLL, || {
        match coordinator.container("host-a", &a2) {
            Ok(_) => bail!("{a2} still reported"),
            Err(_) => Ok(()),
        }
    })?;

    // kill -9 of one agent: its host shows disconnected; after a restart it is back with its
    // containers.
    agent_b.kill9()?;
    eventually(CONVERGE, POLL, || {
        let h = coordinator.host("host-b")?;
        ensure!(h["connected"] == false, "still connected: {h}");
        ensure!(h["last_seen"].is_string(), "no last_seen: {h}");
        Ok(())
    })?;
    // A container started while its agent is down shows up once the agent is back: the
    // agent sends a fresh inventory after reconnecting.
    let b2 = on_b.run_container("fleet-b2", &["--network", "none"], &image.reference, &[])?;
    agent_b = coordinator.agent(&bins.agent, "host-b", &engine_b)?;
    eventually(CONVERGE, POLL, || {
        let h = coordinator.host("host-b")?;
        ensure!(h["connected"] == true, "not reconnected: {h}");
        coordinator.container("host-b", &b1)?;
        coordinator.container("host-b", &b2)
    })?;
    // Host B becomes a Swarm manager while its agent is connected: the mode follows.
    let _swarm = SwarmGuard::init(&engine_b)?;
    eventually(CONVERGE, POLL, || {
        let h = coordinator.host("host-b")?;
        ensure!(h["mode"] == "swarm-manager", "mode not updated: {h}");
        Ok(())
    })?;
    assert!(agent_b.is_running());

    // A coordinator killed and restarted on the same data dir still lists both hosts. Agent B
    // is stopped first, so what is listed for host-b can only come from the store; agent A
    // stays up and must reconnect by itself.
    agent_b.terminate(Duration::from_secs(10))?;
    let listen = coordinator.url.trim_start_matches("https://").to_owned();
    server.kill9()?;
    drop(server);
    let server = coordinator.serve(&listen)?;
    let hosts = coordinator.hosts()?;
    let names: Vec<&str> = hosts.iter().filter_map(|h| h["host"].as_str()).collect();
    assert_eq!(names, ["host-a", "host-b"], "{hosts:?}");
    let host_b = coordinator.host("host-b")?;
    assert_eq!(host_b["connected"], false, "{host_b}");
    assert!(host_b["last_seen"].is_string(), "{host_b}");
    assert_eq!(host_b["containers"], 2, "{host_b}");
    coordinator.container("host-b", &b1)?;

    eventually(CONVERGE, POLL, || {
        let h = coordinator.host("host-a")?;
        ensure!(h["connected"] == true, "agent A did not reconnect: {h}");
        coordinator.container("host-a", &a1)
    })?;
    assert!(
        agent_a.is_running(),
        "agent A exited: {}",
        agent_a.log_tail(20)
    );
    assert!(server.is_running());
    Ok(())
}

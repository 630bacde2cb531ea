//! The agent stopped or killed in the middle of an update, as `docker stop`, systemd,
//! compose and supervisors do: SIGTERM lets the operation in flight reach a safe point and the
//! agent exit 0 (standalone, and embedded in `up`); `kill -9` of `up` while the engine is still
//! stopping a slow container, restarted at once, never leaves that container exited. What
//! counts is what the engine shows afterwards, not what the agent logged.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use ouroboros_tests::{
    Binaries, Cleanup, Engine, ImageSpec, Process, Registry, eventually, publish, require_engine,
    unique_name,
};
use serde_json::Value;

use crate::fleet::Coordinator;

const CONVERGE: Duration = Duration::from_secs(60);
const POLL: Duration = Duration::from_millis(100);

/// The steps recorded in the journal under `agent_dir`.
fn journal_steps(agent_dir: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(agent_dir.join("journal")) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
        .filter_map(|e| std::fs::read(e.path()).ok())
        .filter_map(|b| serde_json::from_slice::<Value>(&b).ok())
        .filter_map(|v| v["step"].as_str().map(str::to_owned))
        .collect()
}

fn wait_for_step(agent_dir: &Path, step: &str) -> anyhow::Result<()> {
    eventually(CONVERGE, Duration::from_millis(20), || {
        let steps = journal_steps(agent_dir);
        ensure!(steps.iter().any(|s| s == step), "journal steps: {steps:?}");
        Ok(())
    })
}

/// Exactly one container under `name`, running, and no `-ouroboros-old-` twin of it.
fn one_running(engine: &Engine, name: &str) -> anyhow::Result<()> {
    let named = engine.docker(&[
        "ps",
        "-a",
        "--filter",
        &format!("name={name}"),
        "--format",
        "{{.Names}}",
    ])?;
    let others: Vec<&str> = named.lines().filter(|n| *n != name).collect();
    ensure!(others.is_empty(), "left behind next to {name}: {others:?}");
    ensure!(
        engine.inspect(name, "{{.State.Running}}")? == "true",
        "{name} does not run: {}",
        engine.inspect(name, "{{.State.Status}} exit {{.State.ExitCode}}")?
    );
    Ok(())
}

/// Runs `update` of `container` on `host` in the background; joins to its exit code and JSON.
fn update_in_background(
    bin: &Path,
    url: &str,
    pki: &Path,
    host: &str,
    container: &str,
) -> std::thread::JoinHandle<anyhow::Result<(i32, Value)>> {
    let mut command = Command::new(bin);
    command
        .args(["update", "--host", host, "--container", container])
        .args(["--output", "json", "--server", url, "--pki-dir"])
        .arg(pki);
    std::thread::spawn(move || {
        let out = command.output()?;
        let json = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        Ok((out.status.code().unwrap_or(-1), json))
    })
}

/// A container, a soft dependant and a network sidecar; the next image of its tag never
/// gets healthy within a minute, so an update waits in its health gate.
struct Stuck {
    name: String,
    old_id: String,
    soft: String,
    side: String,
}

fn stuck_stack(cleanup: &Cleanup, registry: &Registry, prefix: &str) -> anyhow::Result<Stuck> {
    let repo = unique_name(prefix);
    let v1 = publish(cleanup, registry, &repo, "stable", 1)?;
    let name = cleanup.run_container(prefix, &["--network", "none"], &v1.reference, &[])?;
    let old_id = cleanup.engine().inspect(&name, "{{.Id}}")?;
    let label = format!("com.ouroboros.depends_on={name}");
    let soft = cleanup.run_container(
        &format!("{prefix}-soft"),
        &["--network", "none", "--label", &label],
        &v1.reference,
        &[],
    )?;
    let side = cleanup.run_container(
        &format!("{prefix}-side"),
        &["--network", &format!("container:{old_id}")],
        &v1.reference,
        &[],
    )?;
    publish(
        cleanup,
        registry,
        &repo,
        "stable",
        ImageSpec::new(2)
            .with_config(&["HEALTHCHECK --interval=1s --start-period=60s CMD test -f /never"]),
    )?;
    Ok(Stuck {
        name,
        old_id,
        soft,
        side,
    })
}

/// After a SIGTERM in the health gate: the old container, running, alone under its name; the
/// dependants running; the update answered as interrupted because the agent stopped.
fn after_sigterm(
    engine: &Engine,
    stack: &Stuck,
    agent: &Process,
    asked: Instant,
    update: std::thread::JoinHandle<anyhow::Result<(i32, Value)>>,
) -> anyhow::Result<()> {
    let bound = Duration::from_secs(30);
    let status = eventually(bound, POLL, || agent.try_status()?.context("still running"))
        .with_context(|| format!("not stopped within {bound:?}:\n{}", agent.log_tail(30)))?;
    ensure!(
        status.code() == Some(0),
        "exit {status}:\n{}",
        agent.log_tail(30)
    );
    ensure!(asked.elapsed() < bound, "took {:?}", asked.elapsed());
    one_running(engine, &stack.name)?;
    ensure!(
        engine.inspect(&stack.name, "{{.Id}}")? == stack.old_id,
        "not the old container"
    );
    for dependant in [&stack.soft, &stack.side] {
        one_running(engine, dependant)?;
    }
    let (_, answer) = update
        .join()
        .map_err(|_| anyhow::anyhow!("update thread panicked"))??;
    // Told as interrupted (nothing changed, to be sent again), not as a failure.
    ensure!(answer[0]["status"] == "interrupted", "{answer}");
    ensure!(
        answer[0]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("stopping")),
        "{answer}"
    );
    Ok(())
}

#[test]
fn sigterm_in_the_health_gate_rolls_back_and_the_agent_exits_0() -> anyhow::Result<()> {
    let Some(engine) = require_engine() else {
        return Ok(());
    };
    let bins = Binaries::get()?;
    let registry = Registry::start()?;
    let cleanup = Cleanup::new(&engine);
    let stack = stuck_stack(&cleanup, &registry, "term")?;
    let dir = tempfile::Builder::new()
        .prefix("ouroboros-test-term-")
        .tempdir()?;
    let mut coordinator = Coordinator::init(&bins.coordinator, dir.path(), &["host-a"])?;
    let _server = coordinator.serve("127.0.0.1:0")?;
    let agent = coordinator.agent_with(
        &bins.agent,
        "host-a",
        &["--docker-host", engine.host(), "--shutdown-timeout", "30"],
        &[],
    )?;
    eventually(CONVERGE, POLL, || {
        coordinator.container("host-a", &stack.name)
    })?;
    let update = update_in_background(
        &coordinator.bin,
        &coordinator.url,
        &coordinator.pki,
        "host-a",
        &stack.name,
    );
    wait_for_step(&coordinator.agent_data("host-a"), "created")?;
    let asked = Instant::now();
    agent.signal("TERM")?;
    after_sigterm(&engine, &stack, &agent, asked, update)?;
    ensure!(agent.log().contains("Nothing in flight any more."));
    Ok(())
}

/// Starts `up` (not run-once) on `data`; returns it with its server's URL.
fn start_up(bin: &Path, engine: &Engine, data: &Path) -> anyhow::Result<(Process, String)> {
    let up = Process::spawn(
        bin,
        &[
            "up",
            "--listen",
            "127.0.0.1:0",
            "--interval",
            "3600",
            "--docker-host",
            engine.host(),
            "--shutdown-timeout",
            "30",
            "--data-dir",
            data.to_str().context("path")?,
        ],
        &[],
    )?;
    let line = up.wait_for_log("Coordinator listening.", CONVERGE)?;
    let addr = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("addr="))
        .with_context(|| format!("no addr= in {line:?}"))?;
    Ok((up, format!("https://{addr}")))
}

/// Waits until `up`'s embedded agent is connected and reported `container` (the store keeps
/// the last run's view, so both are asked).
fn wait_reported(bin: &Path, url: &str, pki: &Path, container: &str) -> anyhow::Result<()> {
    let ask = |what: &str| -> anyhow::Result<Value> {
        let out = Command::new(bin)
            .args([what, "--output", "json", "--server", url, "--pki-dir"])
            .arg(pki)
            .output()?;
        Ok(serde_json::from_slice(&out.stdout).unwrap_or(Value::Null))
    };
    eventually(CONVERGE, POLL, || {
        let hosts = ask("hosts")?;
        ensure!(
            hosts
                .as_array()
                .into_iter()
                .flatten()
                .any(|h| h["host"] == "local" && h["connected"] == true),
            "the agent is not connected yet: {hosts}"
        );
        let listed = ask("containers")?;
        ensure!(
            listed
                .as_array()
                .into_iter()
                .flatten()
                .any(|c| c["name"] == container),
            "{container} not reported yet"
        );
        Ok(())
    })
}

#[test]
fn up_brings_its_embedded_agent_to_a_safe_point_on_sigterm() -> anyhow::Result<()> {
    let Some(engine) = require_engine() else {
        return Ok(());
    };
    let bins = Binaries::get()?;
    let registry = Registry::start()?;
    let cleanup = Cleanup::new(&engine);
    let stack = stuck_stack(&cleanup, &registry, "upterm")?;
    let dir = tempfile::Builder::new()
        .prefix("ouroboros-test-upterm-")
        .tempdir()?;
    let data = dir.path().join("data");
    let (up, url) = start_up(&bins.coordinator, &engine, &data)?;
    let pki = data.join("pki");
    wait_reported(&bins.coordinator, &url, &pki, &stack.name)?;
    let update = update_in_background(&bins.coordinator, &url, &pki, "local", &stack.name);
    wait_for_step(&data.join("agent"), "created")?;
    let asked = Instant::now();
    up.signal("TERM")?;
    after_sigterm(&engine, &stack, &up, asked, update)
}

#[test]
fn kill_9_during_a_slow_stop_never_leaves_the_container_exited() -> anyhow::Result<()> {
    let Some(engine) = require_engine() else {
        return Ok(());
    };
    let bins = Binaries::get()?;
    let registry = Registry::start()?;
    let cleanup = Cleanup::new(&engine);
    let repo = unique_name("slow");
    let v1 = publish(&cleanup, &registry, &repo, "stable", 1)?;
    // Ignores SIGTERM: every stop takes its full 3 s timeout, then the engine kills it.
    let name = cleanup.run_container(
        "slow",
        &["--network", "none", "--stop-timeout", "3"],
        &v1.reference,
        &[
            "sh",
            "-c",
            "trap '' TERM; while :; do sleep 1 & wait $!; done",
        ],
    )?;
    publish(&cleanup, &registry, &repo, "stable", 2)?;
    let dir = tempfile::Builder::new()
        .prefix("ouroboros-test-slow-")
        .tempdir()?;
    let data = dir.path().join("data");
    let pki = data.join("pki");
    for run in 1..=5 {
        let (up, url) = start_up(&bins.coordinator, &engine, &data)?;
        wait_reported(&bins.coordinator, &url, &pki, &name)?;
        let stops_before = journal_steps(&data.join("agent"))
            .iter()
            .filter(|s| *s == "stopping")
            .count();
        let update = update_in_background(&bins.coordinator, &url, &pki, "local", &name);
        eventually(CONVERGE, Duration::from_millis(20), || {
            let now = journal_steps(&data.join("agent"))
                .iter()
                .filter(|s| *s == "stopping")
                .count();
            ensure!(now > stops_before, "run {run}: not stopping yet");
            Ok(())
        })
        .with_context(|| format!("up's log:\n{}", up.log_tail(40)))?;
        // Killed while the engine is stopping the container; a supervisor restarts it at once.
        up.kill9()?;
        let _ = update.join();
        let (again, _) = start_up(&bins.coordinator, &engine, &data)?;
        again.wait_for_log("Recovered an interrupted recreate.", CONVERGE)?;
        // Running, and still running well past the stop timeout the engine was counting.
        let until = Instant::now() + Duration::from_secs(5);
        while Instant::now() < until {
            one_running(&engine, &name).with_context(|| format!("run {run}"))?;
            std::thread::sleep(Duration::from_millis(250));
        }
        let status = again.terminate(Duration::from_secs(45))?;
        ensure!(status.code() == Some(0), "run {run}: up exited {status}");
    }
    Ok(())
}

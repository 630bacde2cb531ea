//! Swarm mode end to end: a swarm of two managers, each an extra engine with its agent, and
//! services from the local registry:
//!
//! 1. Without `SWARM`: the services are listed as skipped with why, and left alone.
//! 2. With `SWARM`: a new digest on their tag moves a replicated (2 replicas) and a global
//!    service to it in one cycle, each updated once (through one manager, though both report
//!    it), with every other field of their specs unchanged.
//! 3. A new digest whose healthcheck never passes: the service ends on the old digest, the
//!    rollout reports the failure.
//!
//! And `deploy/swarm-agents.yml` as an operator runs it: the agent image from a registry, the
//! join token a Swarm secret; the node's agent enrols, reports the swarm, and its own service
//! is left alone.

use std::io::Write as _;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, ensure};
use ouroboros_tests::{
    Binaries, Cleanup, Engine, ImageSpec, Registry, SwarmGuard, eventually, publish, push_image,
    require_engine, unique_name,
};
use serde_json::Value;

use crate::containers::CoordinatorContainer;
use crate::fleet::{Coordinator, POLL};
use crate::images::build_images;
use crate::rollout::newest_rollout;

/// `docker service inspect`'s `Spec` of `service`.
fn spec(engine: &Engine, service: &str) -> anyhow::Result<Value> {
    let out = engine.docker(&["service", "inspect", "--format", "{{json .Spec}}", service])?;
    serde_json::from_str(&out).with_context(|| format!("not JSON: {out}"))
}

/// The image a spec names.
fn image_of(spec: &Value) -> String {
    spec["TaskTemplate"]["ContainerSpec"]["Image"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// The spec without its image (what an update must leave as it was).
fn without_image(mut spec: Value) -> Value {
    if let Some(c) = spec["TaskTemplate"]["ContainerSpec"].as_object_mut() {
        c.remove("Image");
    }
    spec
}

/// `service` has `n` running task containers on the swarm's `nodes`, each on the image of
/// `digest`.
fn tasks_run(nodes: &[Engine], service: &str, digest: &str, n: usize) -> anyhow::Result<()> {
    let mut images = Vec::new();
    for node in nodes {
        let ids = node.docker(&[
            "ps",
            "--quiet",
            "--filter",
            &format!("label=com.docker.swarm.service.name={service}"),
        ])?;
        for id in ids.split_whitespace() {
            images.push(node.inspect(id, "{{.Config.Image}}")?);
        }
    }
    ensure!(
        images.len() == n && images.iter().all(|i| i.ends_with(&format!("@{digest}"))),
        "{service}: {n} tasks on {digest} wanted, running {images:?}"
    );
    Ok(())
}

/// The unit of `service` in a `check` or `updates` answer.
fn unit<'a>(answer: &'a Value, service: &str) -> anyhow::Result<&'a Value> {
    let name = format!("service:{service}");
    answer
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["container"] == name.as_str())
        .with_context(|| format!("{name} not in {answer}"))
}

#[test]
fn services_move_to_a_new_digest_with_their_specs_intact_and_a_failing_one_rolls_back()
-> anyhow::Result<()> {
    if require_engine().is_none() {
        return Ok(());
    }
    let bins = Binaries::get()?;
    let nodes = [Engine::start_extra()?, Engine::start_extra()?];
    let engine = &nodes[0];
    let registry = Registry::start()?;
    let cleanup = Cleanup::new(engine);
    let mut swarm = SwarmGuard::init(engine)?;
    swarm.join_manager(&nodes[1])?;
    let repo = unique_name("swarm-app");
    let v1 = publish(&cleanup, &registry, &repo, "stable", 1)?;
    let web = unique_name("swarm-web");
    let all = unique_name("swarm-all");
    let volume = unique_name("swarm-data");
    let mount = format!("type=volume,source={volume},target=/data");
    // The docker CLI pins the digest its tag names now, as every deploy does.
    engine.docker(&[
        "service",
        "create",
        "--detach",
        "--quiet",
        "--name",
        &web,
        // The extra engine's bridge has room for one container.
        "--network",
        "host",
        "--replicas",
        "2",
        "--label",
        "org.example.tier=front",
        "--env",
        "APP_MODE=prod",
        "--mount",
        &mount,
        "--limit-memory",
        "64m",
        "--update-parallelism",
        "1",
        "--update-monitor",
        "3s",
        "--update-delay",
        "0s",
        "--stop-grace-period",
        "2s",
        &v1.reference,
    ])?;
    engine.docker(&[
        "service",
        "create",
        "--detach",
        "--quiet",
        "--name",
        &all,
        "--network",
        "host",
        "--mode",
        "global",
        "--label",
        "org.example.tier=agent",
        "--update-monitor",
        "3s",
        "--stop-grace-period",
        "2s",
        &v1.reference,
    ])?;
    eventually(Duration::from_secs(60), POLL, || {
        tasks_run(&nodes, &web, &v1.digest, 2)?;
        tasks_run(&nodes, &all, &v1.digest, 2)
    })?;
    let before = [spec(engine, &web)?, spec(engine, &all)?];
    let v2 = publish(&cleanup, &registry, &repo, "stable", 2)?;

    // 1. Without SWARM: skipped, with why; nothing changes.
    let dir = tempfile::Builder::new()
        .prefix("ouroboros-test-swarm-")
        .tempdir()?;
    let mut coordinator = Coordinator::init(&bins.coordinator, dir.path(), &["mgr-a", "mgr-b"])?;
    let server = coordinator.serve("127.0.0.1:0")?;
    let mut agents = vec![
        coordinator.agent(&bins.agent, "mgr-a", &nodes[0])?,
        coordinator.agent(&bins.agent, "mgr-b", &nodes[1])?,
    ];
    eventually(Duration::from_secs(30), POLL, || {
        let planned = coordinator.json(&["updates"])?;
        for service in [&web, &all] {
            let u = unit(&planned, service)?;
            ensure!(
                u["decision"] == "skip"
                    && u["reason"]
                        .as_str()
                        .is_some_and(|r| r.contains("services are updated only with SWARM")),
                "{u}"
            );
        }
        Ok(())
    })?;
    let (code, checked) = coordinator.admin(&["check"])?;
    ensure!(code == 0, "check without SWARM: {checked}");
    ensure!(image_of(&spec(engine, &web)?) == image_of(&before[0]));
    ensure!(image_of(&spec(engine, &all)?) == image_of(&before[1]));
    drop(server);

    // 2. With SWARM, both managers connected: each service once, through one manager, in one
    //    cycle, to v2 by digest, with nothing else in its spec changed.
    let _server = coordinator.serve_with_env("127.0.0.1:0", &[("SWARM", "true")])?;
    // The agents follow the coordinator's new address.
    for a in &mut agents {
        a.terminate(Duration::from_secs(10))?;
    }
    agents = vec![
        coordinator.agent(&bins.agent, "mgr-a", &nodes[0])?,
        coordinator.agent(&bins.agent, "mgr-b", &nodes[1])?,
    ];
    coordinator.wait_planned(2)?;
    let (code, checked) = coordinator.admin(&["check"])?;
    ensure!(code == 0, "check: {checked}");
    let rollout = newest_rollout(&coordinator)?;
    ensure!(rollout["state"] == "completed", "{rollout}");
    let targets = rollout["targets"].as_array().cloned().unwrap_or_default();
    ensure!(targets.len() == 2, "one target per service: {rollout}");
    for t in &targets {
        ensure!(
            t["host"] == "mgr-a" && t["state"] == "updated",
            "through the first manager: {t}"
        );
    }
    for (service, before) in [(&web, &before[0]), (&all, &before[1])] {
        let after = spec(engine, service)?;
        ensure!(
            image_of(&after) == format!("{}@{}", v2.reference, v2.digest),
            "{service}: {}",
            image_of(&after)
        );
        ensure!(
            without_image(after.clone()) == without_image(before.clone()),
            "{service}: the spec changed beyond its image:\nbefore {before}\nafter {after}"
        );
        eventually(Duration::from_secs(60), POLL, || {
            tasks_run(&nodes, service, &v2.digest, 2)
        })?;
    }

    // `update` recreates containers: a service named to it is refused, with why.
    let unit_name = format!("service:{web}");
    let refused = std::process::Command::new(&coordinator.bin)
        .args(["update", "--host", "mgr-a", "--container", &unit_name])
        .args(["--server", &coordinator.url, "--pki-dir"])
        .arg(&coordinator.pki)
        .output()?;
    let stderr = String::from_utf8_lossy(&refused.stderr);
    ensure!(
        !refused.status.success()
            && stderr.contains("is a Swarm service: `update` recreates one container"),
        "update of a service: {}: {stderr}",
        refused.status
    );

    // 3. A v3 that never turns healthy: the service is rolled back to v2, the rollout fails.
    let v3 = publish(
        &cleanup,
        &registry,
        &repo,
        "stable",
        ImageSpec::new(3).unhealthy(),
    )?;
    let (code, checked) = coordinator.admin(&["check"])?;
    ensure!(
        code == 1,
        "a failed service update fails the check: {checked}"
    );
    let rollout = newest_rollout(&coordinator)?;
    ensure!(rollout["state"] == "paused", "{rollout}");
    let failed: Vec<&Value> = rollout["targets"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|t| t["state"] == "failed")
        .collect();
    ensure!(failed.len() == 1, "the first failure pauses it: {rollout}");
    ensure!(
        failed[0]["reason"]
            .as_str()
            .is_some_and(|r| r.starts_with("rolled-back")),
        "{rollout}"
    );
    for service in [&web, &all] {
        ensure!(
            image_of(&spec(engine, service)?) == format!("{}@{}", v2.reference, v2.digest),
            "{service} is back on v2"
        );
        eventually(Duration::from_secs(60), POLL, || {
            tasks_run(&nodes, service, &v2.digest, 2)
        })?;
    }
    ensure!(!v3.digest.is_empty());
    let id = rollout["id"].as_str().unwrap_or_default();
    coordinator.admin(&["rollout", "cancel", id])?;
    for a in &mut agents {
        a.terminate(Duration::from_secs(10))?;
    }
    engine.docker(&["service", "rm", &web, &all])?;
    Ok(())
}

#[test]
fn the_stack_file_runs_an_agent_on_the_node_enrolled_by_a_secret_token() -> anyhow::Result<()> {
    let Some(system) = require_engine() else {
        return Ok(());
    };
    let on_system = Cleanup::new(&system);
    let tag = unique_name("stack");
    let built_agent = format!("ouroboros-agent:{tag}");
    let built_coordinator = format!("ouroboros-coordinator:{tag}");
    on_system.track_image(&built_agent)?;
    on_system.track_image(&built_coordinator)?;
    build_images(&system, &tag)?;
    // The image every node pulls, from a registry.
    let registry = Registry::start()?;
    let agent_ref = registry.reference(&unique_name("ouroboros-agent"), "stable");
    on_system.track_image(&agent_ref)?;
    system.docker(&["tag", &built_agent, &agent_ref])?;
    push_image(&system, &agent_ref)?;

    let coordinator = CoordinatorContainer::start(
        &on_system,
        &unique_name("stack-coordinator"),
        &built_coordinator,
        &["SWARM=true"],
        &[],
    )?;
    let token = coordinator.token(1)?;

    let engine = Engine::start_extra()?;
    let _swarm = SwarmGuard::init(&engine)?;
    let mut secret = engine
        .docker_command()
        .args(["secret", "create", "ouroboros-join-token", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()?;
    secret
        .stdin
        .take()
        .context("no stdin")?
        .write_all(token.as_bytes())?;
    ensure!(secret.wait()?.success(), "docker secret create failed");
    let stack = unique_name("stack").replace('-', "_");
    let stack_file = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy/swarm-agents.yml")
        .display()
        .to_string();
    let socket = engine
        .socket()
        .context("the engines here listen on unix sockets")?
        .display()
        .to_string();
    let deployed = engine
        .docker_command()
        .args(["stack", "deploy", "--compose-file", &stack_file, &stack])
        .env("OUROBOROS_COORDINATOR", &coordinator.url)
        .env("OUROBOROS_AGENT_IMAGE", &agent_ref)
        .env("OUROBOROS_DOCKER_SOCKET", &socket)
        .output()?;
    ensure!(
        deployed.status.success(),
        "docker stack deploy: {}",
        String::from_utf8_lossy(&deployed.stderr)
    );
    let node = engine
        .docker(&["info", "--format", "{{.Name}}"])?
        .trim()
        .to_owned();
    let service = format!("{stack}_agent");
    let logs = || {
        format!(
            "agent: {}\ncoordinator: {}",
            engine
                .docker(&["service", "logs", "--raw", &service])
                .unwrap_or_default(),
            system
                .docker(&["logs", &coordinator.name])
                .unwrap_or_default()
        )
    };
    // The node's agent enrols with the secret's token under the node's name, as a manager.
    eventually(Duration::from_secs(90), POLL, || {
        let (code, out) = coordinator.admin(&["hosts", "--output", "json"])?;
        ensure!(code == 0, "hosts: {out}");
        let hosts: Value =
            serde_json::from_str(&out).with_context(|| format!("not JSON: {out}"))?;
        let host = hosts
            .as_array()
            .into_iter()
            .flatten()
            .find(|h| h["host"] == node.as_str())
            .with_context(|| format!("{node} not enrolled: {hosts}"))?;
        ensure!(
            host["connected"] == true && host["mode"] == "swarm-manager",
            "{host}"
        );
        Ok(())
    })
    .with_context(logs)?;
    // It reports the swarm's services: its own among them, left alone as Ouroboros' own.
    eventually(Duration::from_secs(30), POLL, || {
        let (code, out) = coordinator.admin(&["updates", "--output", "json"])?;
        ensure!(code == 0, "updates: {out}");
        let planned: Value =
            serde_json::from_str(&out).with_context(|| format!("not JSON: {out}"))?;
        let own = unit(&planned, &service)?;
        ensure!(
            own["decision"] == "skip"
                && own["reason"]
                    .as_str()
                    .is_some_and(|r| r.contains("Ouroboros' own")),
            "{own}"
        );
        Ok(())
    })
    .with_context(logs)?;
    engine.docker(&["stack", "rm", &stack])?;
    Ok(())
}

//! `ouroboros-coordinator update` end to end: the command reaches the agent, the container
//! moves to the new image, and an agent killed with SIGKILL at each step of the sequence (a
//! soft and a hard dependant present) recovers on restart to exactly one container under each
//! name, running, with no leftovers.

use std::time::Duration;

use anyhow::{Context, ensure};
use ouroboros_tests::{
    Binaries, Cleanup, ImageSpec, Process, Registry, eventually, publish, require_engine,
    unique_name,
};
use serde_json::Value;

use crate::fleet::Coordinator;

const CONVERGE: Duration = Duration::from_secs(60);
const POLL: Duration = Duration::from_millis(200);

/// Runs `update` of `container` on host-a: exit code and JSON answer.
fn update(coordinator: &Coordinator, container: &str) -> anyhow::Result<(i32, Value)> {
    coordinator.admin(&["update", "--host", "host-a", "--container", container])
}

#[test]
fn update_moves_a_container_to_the_new_image_of_its_tag() -> anyhow::Result<()> {
    let Some(engine) = require_engine() else {
        return Ok(());
    };
    let bins = Binaries::get()?;
    let registry = Registry::start()?;
    let cleanup = Cleanup::new(&engine);
    let repo = unique_name("upd");
    let v1 = publish(&cleanup, &registry, &repo, "stable", 1)?;
    let name = cleanup.run_container("upd", &["--network", "none"], &v1.reference, &[])?;
    let v2 = publish(&cleanup, &registry, &repo, "stable", 2)?;

    let dir = tempfile::Builder::new()
        .prefix("ouroboros-test-upd-")
        .tempdir()?;
    let mut coordinator = Coordinator::init(&bins.coordinator, dir.path(), &["host-a"])?;
    let _server = coordinator.serve("127.0.0.1:0")?;
    let _agent = coordinator.agent(&bins.agent, "host-a", &engine)?;
    eventually(CONVERGE, POLL, || coordinator.container("host-a", &name))?;

    let (code, answer) = update(&coordinator, &name)?;
    let result = &answer[0];
    assert_eq!(code, 0, "{answer}");
    assert_eq!(result["status"], "updated", "{answer}");
    let steps: Vec<&str> = result["steps"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    for step in [
        "prepare",
        "stop",
        "rename",
        "create",
        "start",
        "health gate",
        "remove old",
    ] {
        assert!(steps.contains(&step), "{step} not reported: {steps:?}");
    }
    let image_id = engine.docker(&["image", "inspect", &v2.pinned(), "--format", "{{.Id}}"])?;
    assert_eq!(engine.inspect(&name, "{{.Image}}")?, image_id);
    assert_eq!(result["image_id"], image_id.as_str());
    // The coordinator's view follows.
    eventually(CONVERGE, POLL, || {
        let c = coordinator.container("host-a", &name)?;
        ensure!(c["image_id"] == image_id.as_str(), "view not updated: {c}");
        Ok(())
    })?;

    // Again: nothing to do, and it says so.
    let (code, answer) = update(&coordinator, &name)?;
    assert_eq!(code, 0);
    assert_eq!(answer[0]["status"], "already-current");

    // An unknown container: refused, exit 1, nothing changed.
    let missing = unique_name("upd-missing");
    let (code, answer) = update(&coordinator, &missing)?;
    assert_eq!(code, 1);
    assert_eq!(answer[0]["status"], "refused");
    Ok(())
}

/// The agent aborts at `point` during an update of a container with a soft and a hard
/// dependant; restarted, it reverts (before the health gate) or finishes (after it): every
/// container runs under its name, with no set-aside twin.
fn crash_and_recover(point: &str) -> anyhow::Result<()> {
    let Some(engine) = require_engine() else {
        return Ok(());
    };
    let finishes = matches!(
        point,
        "after-health-gate"
            | "after-dependant-rename"
            | "after-dependant-create"
            | "before-remove-old"
    );
    let bins = Binaries::get()?;
    let registry = Registry::start()?;
    let cleanup = Cleanup::new(&engine);
    let repo = unique_name("crash");
    let v1 = publish(&cleanup, &registry, &repo, "stable", 1)?;
    let name = cleanup.run_container("crash", &["--network", "none"], &v1.reference, &[])?;
    let soft_label = format!("com.ouroboros.depends_on={name}");
    let soft = cleanup.run_container(
        "crash-soft",
        &["--network", "none", "--label", &soft_label],
        &v1.reference,
        &[],
    )?;
    let hard_label = format!("com.ouroboros.hard_depends_on={name}");
    let hard = cleanup.run_container(
        "crash-hard",
        &["--network", "none", "--label", &hard_label],
        &v1.reference,
        &[],
    )?;
    let ids = |names: &[&str]| -> anyhow::Result<Vec<String>> {
        names.iter().map(|n| engine.inspect(n, "{{.Id}}")).collect()
    };
    let before = ids(&[&name, &soft, &hard])?;
    publish(&cleanup, &registry, &repo, "stable", ImageSpec::new(2))?;

    let dir = tempfile::Builder::new()
        .prefix("ouroboros-test-crash-")
        .tempdir()?;
    let mut coordinator = Coordinator::init(&bins.coordinator, dir.path(), &["host-a"])?;
    let _server = coordinator.serve("127.0.0.1:0")?;
    let crashing = coordinator.agent_with(
        &bins.agent,
        "host-a",
        &["--docker-host", engine.host()],
        &[("OUROBOROS_FAILPOINT", point)],
    )?;
    eventually(CONVERGE, POLL, || coordinator.container("host-a", &name))?;
    // The update runs in the background; the agent hangs at the crash point and is killed.
    let updating = {
        let bin = coordinator.bin.clone();
        let url = coordinator.url.clone();
        let pki = coordinator.pki.clone();
        let name = name.clone();
        std::thread::spawn(move || {
            std::process::Command::new(bin)
                .args(["update", "--host", "host-a", "--container", &name])
                .args(["--server", &url, "--pki-dir"])
                .arg(pki)
                .output()
        })
    };
    crashing
        .wait_for_log("Hanging at the injected crash point", CONVERGE)
        .with_context(|| format!("the agent never reached {point}"))?;
    if point == "after-health-gate" {
        // Meanwhile the host reports the old container and the unconfirmed replacement:
        // neither is ever offered for an update.
        eventually(CONVERGE, POLL, || {
            let planned = coordinator.json(&["updates"])?;
            let rows: Vec<&Value> = planned
                .as_array()
                .into_iter()
                .flatten()
                .filter(|c| {
                    c["container"]
                        .as_str()
                        .is_some_and(|c| c.starts_with(&name))
                })
                .collect();
            ensure!(rows.len() == 2, "old and new not both reported: {planned}");
            for row in rows {
                ensure!(row["decision"] == "skip", "offered: {row}");
                ensure!(
                    row["reason"]
                        .as_str()
                        .is_some_and(|r| r.starts_with("set aside")),
                    "{row}"
                );
            }
            Ok(())
        })?;
    }
    crashing.kill9()?;
    let out = updating
        .join()
        .map_err(|_| anyhow::anyhow!("update thread panicked"))??;
    assert_ne!(
        out.status.code(),
        Some(0),
        "update succeeded although the agent was killed at {point}"
    );

    let restarted: Process = coordinator.agent(&bins.agent, "host-a", &engine)?;
    restarted.wait_for_log("Recovered an interrupted recreate.", CONVERGE)?;
    for container in [&name, &soft, &hard] {
        assert_eq!(
            engine.inspect(container, "{{.State.Running}}")?,
            "true",
            "{container} does not run after a crash at {point}"
        );
        let others: Vec<String> = engine
            .docker(&[
                "ps",
                "-a",
                "--filter",
                &format!("name={container}"),
                "--format",
                "{{.Names}}",
            ])?
            .lines()
            .filter(|n| *n != container.as_str())
            .map(str::to_owned)
            .collect();
        assert!(
            others.is_empty(),
            "left behind after a crash at {point}: {others:?}"
        );
    }
    let after = ids(&[&name, &soft, &hard])?;
    assert_eq!(
        after[1], before[1],
        "the soft dependant is another container"
    );
    if finishes {
        assert_ne!(after[0], before[0], "not updated after a crash at {point}");
        assert_ne!(after[2], before[2], "the hard dependant was not recreated");
        assert_eq!(engine.docker(&["exec", &name, "cat", "/version"])?, "2");
    } else {
        assert_eq!(
            after, before,
            "not the old containers after a crash at {point}"
        );
        // And the update goes through now.
        let (code, answer) = update(&coordinator, &name)?;
        assert_eq!(code, 0, "{answer:?}");
    }
    Ok(())
}

#[test]
fn agent_killed_after_a_dependant_stop_recovers() -> anyhow::Result<()> {
    crash_and_recover("after-dependant-stop")
}

#[test]
fn agent_killed_after_stop_recovers() -> anyhow::Result<()> {
    crash_and_recover("after-stop")
}

#[test]
fn agent_killed_after_rename_recovers() -> anyhow::Result<()> {
    crash_and_recover("after-rename")
}

#[test]
fn agent_killed_after_create_recovers() -> anyhow::Result<()> {
    crash_and_recover("after-create")
}

#[test]
fn agent_killed_after_start_recovers() -> anyhow::Result<()> {
    crash_and_recover("after-start")
}

#[test]
fn agent_killed_during_the_health_wait_recovers() -> anyhow::Result<()> {
    crash_and_recover("during-health")
}

#[test]
fn agent_killed_after_the_health_gate_finishes_and_set_aside_containers_are_not_offered()
-> anyhow::Result<()> {
    crash_and_recover("after-health-gate")
}

#[test]
fn agent_killed_after_a_dependant_create_finishes() -> anyhow::Result<()> {
    crash_and_recover("after-dependant-create")
}

#[test]
fn agent_killed_before_removing_the_old_containers_finishes() -> anyhow::Result<()> {
    crash_and_recover("before-remove-old")
}

#[test]
fn update_pulls_with_the_coordinators_credentials_and_pins_a_digest() -> anyhow::Result<()> {
    let Some(engine) = require_engine() else {
        return Ok(());
    };
    let bins = Binaries::get()?;
    // A password whose standard base64 needs '+' or '/': the engine only decodes the
    // URL-safe alphabet.
    let (user, password) = ("ouroboros", "s3cr?t>>~~??");
    let registry = Registry::start_with_auth(user, password)?;
    engine.login(registry.addr(), user, password)?;
    let cleanup = Cleanup::new(&engine);
    let repo = unique_name("auth");
    let v1 = publish(&cleanup, &registry, &repo, "stable", 1)?;
    let name = cleanup.run_container("auth", &["--network", "none"], &v1.reference, &[])?;
    let v2 = publish(&cleanup, &registry, &repo, "stable", 2)?;
    // The tag moves on to v3; the update asks for v2 by digest.
    publish(&cleanup, &registry, &repo, "stable", 3)?;
    engine.logout(registry.addr())?;
    let pinned = format!("{}@{}", v1.reference, v2.digest);

    let dir = tempfile::Builder::new()
        .prefix("ouroboros-test-auth-")
        .tempdir()?;
    let mut coordinator = Coordinator::init(&bins.coordinator, dir.path(), &["host-a"])?;
    let run_update = |coordinator: &Coordinator| {
        coordinator.admin(&[
            "update",
            "--host",
            "host-a",
            "--container",
            &name,
            "--image",
            &pinned,
        ])
    };

    // Without credentials the pull is refused and nothing changes.
    let server = coordinator.serve("127.0.0.1:0")?;
    let _agent = coordinator.agent(&bins.agent, "host-a", &engine)?;
    eventually(CONVERGE, POLL, || coordinator.container("host-a", &name))?;
    let before = engine.inspect(&name, "{{.Id}}")?;
    let (code, answer) = run_update(&coordinator)?;
    assert_eq!(code, 1, "{answer}");
    assert_eq!(answer[0]["status"], "refused", "{answer}");
    assert_eq!(engine.inspect(&name, "{{.Id}}")?, before);

    // With REPO_USER/REPO_PASS the agent pulls exactly v2 and the container keeps its tag.
    let listen = coordinator.url.trim_start_matches("https://").to_owned();
    drop(server);
    let server =
        coordinator.serve_with_env(&listen, &[("REPO_USER", user), ("REPO_PASS", password)])?;
    eventually(CONVERGE, POLL, || {
        let h = coordinator.host("host-a")?;
        ensure!(h["connected"] == true, "agent not back: {h}");
        Ok(())
    })?;
    let (code, answer) = run_update(&coordinator)?;
    assert_eq!(code, 0, "{answer}");
    assert_eq!(answer[0]["status"], "updated", "{answer}");
    let v2_id = engine.docker(&["image", "inspect", "--format", "{{.Id}}", &pinned])?;
    assert_eq!(engine.inspect(&name, "{{.Image}}")?, v2_id, "not v2");
    assert_eq!(
        engine.inspect(&name, "{{.Config.Image}}")?,
        v1.reference,
        "the container no longer follows its tag"
    );
    assert_eq!(engine.docker(&["exec", &name, "cat", "/version"])?, "2");
    // The password never shows in the coordinator's log.
    assert!(
        !server.log().contains(password),
        "password in the coordinator's log"
    );
    Ok(())
}

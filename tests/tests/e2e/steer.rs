//! Steering out of a bad image, end to end on real engines and a real registry: a bad image
//! pauses its rollout, `rollout cancel` ends it, later cycles leave the containers alone (the
//! digest is known-bad) until a fixed image is pushed; with `--failure-action rollback` a bad
//! digest is tried once per container however many cycles follow; a paused rollout whose tag
//! moved resumes on the newest digest. What counts is the engines' own events and state.

use std::time::Duration;

use anyhow::{Context, ensure};
use ouroboros_tests::{
    Binaries, Cleanup, Engine, ImageSpec, Registry, eventually, publish, require_engine,
    unique_name,
};
use serde_json::Value;

use crate::fleet::Coordinator;
use crate::rollout::{EventLog, newest_rollout};

const CONVERGE: Duration = Duration::from_secs(90);
const POLL: Duration = Duration::from_millis(200);

/// The row of `container` in a `check`/`updates` answer.
fn row<'a>(answer: &'a Value, container: &str) -> anyhow::Result<&'a Value> {
    answer
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["container"] == container)
        .with_context(|| format!("{container} not in {answer}"))
}

/// How many containers named `name` the engine created since the log started.
fn creates(log: &EventLog, name: &str) -> anyhow::Result<usize> {
    Ok(log
        .events()?
        .iter()
        .filter(|e| e.action == "create" && e.name == name)
        .count())
}

#[test]
fn a_cancelled_bad_image_is_left_alone_until_the_tag_moves() -> anyhow::Result<()> {
    let Some(engine) = require_engine() else {
        return Ok(());
    };
    let bins = Binaries::get()?;
    let registry = Registry::start()?;
    let cleanup = Cleanup::new(&engine);
    let repo = unique_name("bad");
    let v1 = publish(&cleanup, &registry, &repo, "stable", 1)?;
    let none = ["--network", "none"];
    let a1 = cleanup.run_container("bad-a1", &none, &v1.reference, &[])?;
    let a2 = cleanup.run_container("bad-a2", &none, &v1.reference, &[])?;
    let ids = |names: &[&str]| -> anyhow::Result<Vec<String>> {
        names.iter().map(|n| engine.inspect(n, "{{.Id}}")).collect()
    };
    let before = ids(&[&a1, &a2])?;
    let bad = publish(
        &cleanup,
        &registry,
        &repo,
        "stable",
        ImageSpec::new(2).unhealthy(),
    )?;

    let dir = tempfile::Builder::new()
        .prefix("ouroboros-test-bad-")
        .tempdir()?;
    let mut coordinator = Coordinator::init(&bins.coordinator, dir.path(), &["host-a"])?;
    let monitor = format!("{a1},{a2}");
    let _server = coordinator.serve_with_env(
        "127.0.0.1:0",
        &[
            ("MONITOR", &monitor),
            ("OUROBOROS_HEALTHY_DEADLINE", "5"),
            ("OUROBOROS_FAILURE_ACTION", "pause"),
        ],
    )?;
    let _agent = coordinator.agent(&bins.agent, "host-a", &engine)?;
    coordinator.wait_planned(2)?;

    // The bad image fails on the first container and pauses the rollout; the second one is
    // reported as not started (not as refused).
    let (code, checked) = coordinator.admin(&["check"])?;
    assert_eq!(code, 1, "{checked}");
    let rollout = newest_rollout(&coordinator)?;
    assert_eq!(rollout["state"], "paused", "{rollout}");
    let failed = row(&checked, &a1)?;
    assert_eq!(failed["status"], "rolled-back", "{checked}");
    assert_eq!(row(&checked, &a2)?["status"], "not-started", "{checked}");
    for t in rollout["targets"].as_array().into_iter().flatten() {
        if t["state"] != "pending" {
            ensure!(
                t["op_id"].as_str().is_some_and(|o| !o.is_empty()),
                "no op id: {t}"
            );
        }
    }
    let status = coordinator.json(&["status"])?;
    assert_eq!(status["rollouts_paused"], 1, "{status}");
    assert_eq!(status["containers_monitored"], 2, "{status}");
    assert_eq!(status["updates_pending"], 2, "{status}");

    // Cancelled: the pending target never starts, the rollout ends.
    let id = rollout["id"].as_str().context("no id")?.to_owned();
    let (code, cancelled) = coordinator.admin(&["rollout", "cancel", &id])?;
    assert_eq!(code, 0, "{cancelled}");
    let rollout = newest_rollout(&coordinator)?;
    assert_eq!(rollout["state"], "cancelled", "{rollout}");
    let states: Vec<&str> = rollout["targets"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|t| t["state"].as_str())
        .collect();
    assert!(
        states.contains(&"failed") && states.contains(&"cancelled"),
        "{states:?}"
    );
    let status = coordinator.json(&["status"])?;
    assert_eq!(status["rollouts_paused"], 0, "{status}");

    // `updates` looks only: no cycle time, no counter changes.
    let last = status["last_cycle"].clone();
    let (_, planned) = coordinator.admin(&["updates"])?;
    assert_eq!(coordinator.json(&["status"])?["last_cycle"], last);
    // Neither container is offered the bad digest again, and a cycle leaves both alone.
    for name in [&a1, &a2] {
        let r = row(&planned, name)?;
        assert_eq!(r["decision"], "skip", "{planned}");
        assert!(
            r["reason"]
                .as_str()
                .is_some_and(|why| why.starts_with("known-bad") && why.contains(&bad.digest[..19])),
            "{r}"
        );
    }
    let log = EventLog::start(&engine)?;
    let (code, checked) = coordinator.admin(&["check"])?;
    assert_eq!(code, 0, "{checked}");
    assert_eq!(ids(&[&a1, &a2])?, before, "touched although known-bad");
    assert_eq!(creates(&log, &a1)? + creates(&log, &a2)?, 0);

    // A fixed image under the tag: both are updated in one cycle.
    let fixed = publish(&cleanup, &registry, &repo, "stable", 3)?;
    coordinator.wait_planned(2)?;
    let (code, checked) = coordinator.admin(&["check"])?;
    assert_eq!(code, 0, "{checked}");
    let fixed_id = engine.docker(&["image", "inspect", "--format", "{{.Id}}", &fixed.pinned()])?;
    for name in [&a1, &a2] {
        assert_eq!(row(&checked, name)?["status"], "updated", "{checked}");
        assert_eq!(engine.inspect(name, "{{.Image}}")?, fixed_id);
        assert_eq!(engine.inspect(name, "{{.State.Running}}")?, "true");
    }
    Ok(())
}

#[test]
fn with_failure_action_rollback_a_bad_digest_is_tried_once_per_container() -> anyhow::Result<()> {
    let Some(engine_a) = require_engine() else {
        return Ok(());
    };
    let bins = Binaries::get()?;
    let engine_b = Engine::start_extra()?;
    let registry = Registry::start()?;
    let on_a = Cleanup::new(&engine_a);
    let on_b = Cleanup::new(&engine_b);
    let repo = unique_name("rbonce");
    let v1 = publish(&on_a, &registry, &repo, "stable", 1)?;
    on_b.track_image(&v1.reference)?;
    let none = ["--network", "none"];
    let a = on_a.run_container("rbonce-a", &none, &v1.reference, &[])?;
    let b = on_b.run_container("rbonce-b", &none, &v1.reference, &[])?;
    publish(
        &on_a,
        &registry,
        &repo,
        "stable",
        ImageSpec::new(2).unhealthy(),
    )?;
    let log_a = EventLog::start(&engine_a)?;
    let log_b = EventLog::start(&engine_b)?;

    let dir = tempfile::Builder::new()
        .prefix("ouroboros-test-rbonce-")
        .tempdir()?;
    let mut coordinator = Coordinator::init(&bins.coordinator, dir.path(), &["host-a", "host-b"])?;
    let monitor = format!("{a},{b}");
    let _server = coordinator.serve_with_env(
        "127.0.0.1:0",
        &[
            ("MONITOR", &monitor),
            ("INTERVAL", "2"),
            ("OUROBOROS_HEALTHY_DEADLINE", "4"),
            ("OUROBOROS_FAILURE_ACTION", "rollback"),
        ],
    )?;
    let _agent_a = coordinator.agent(&bins.agent, "host-a", &engine_a)?;
    let _agent_b = coordinator.agent(&bins.agent, "host-b", &engine_b)?;
    // The schedule runs: the first cycle's rollout fails and rolls back, then at least two
    // more scheduled cycles pass.
    let first = eventually(CONVERGE, POLL, || {
        let r = newest_rollout(&coordinator)?;
        ensure!(r["state"] == "rolled-back", "{r}");
        Ok(coordinator.json(&["status"])?["last_cycle"].clone())
    })?;
    let mut seen = vec![first];
    eventually(CONVERGE, POLL, || {
        let last = coordinator.json(&["status"])?["last_cycle"].clone();
        if !seen.contains(&last) {
            seen.push(last);
        }
        ensure!(seen.len() >= 3, "{} cycles seen", seen.len());
        Ok(())
    })?;
    let rollouts = coordinator.json(&["rollouts"])?;
    assert_eq!(
        rollouts.as_array().map_or(0, Vec::len),
        1,
        "later cycles made rollouts: {rollouts}"
    );
    assert_eq!(creates(&log_a, &a)?, 1, "{a} tried more than once");
    assert_eq!(creates(&log_b, &b)?, 1, "{b} tried more than once");
    for (engine, name) in [(&engine_a, &a), (&engine_b, &b)] {
        assert_eq!(engine.inspect(name, "{{.State.Running}}")?, "true");
        assert_eq!(engine.docker(&["exec", name, "cat", "/version"])?, "1");
    }
    Ok(())
}

#[test]
fn a_paused_rollout_resumes_on_the_digest_its_tag_names_now() -> anyhow::Result<()> {
    let Some(engine) = require_engine() else {
        return Ok(());
    };
    let bins = Binaries::get()?;
    let registry = Registry::start()?;
    let cleanup = Cleanup::new(&engine);
    let repo = unique_name("resume");
    let v1 = publish(&cleanup, &registry, &repo, "stable", 1)?;
    let none = ["--network", "none"];
    let a1 = cleanup.run_container("resume-a1", &none, &v1.reference, &[])?;
    let a2 = cleanup.run_container("resume-a2", &none, &v1.reference, &[])?;
    let bad = publish(
        &cleanup,
        &registry,
        &repo,
        "stable",
        ImageSpec::new(2).unhealthy(),
    )?;

    let dir = tempfile::Builder::new()
        .prefix("ouroboros-test-resume-")
        .tempdir()?;
    let mut coordinator = Coordinator::init(&bins.coordinator, dir.path(), &["host-a"])?;
    let monitor = format!("{a1},{a2}");
    let _server = coordinator.serve_with_env(
        "127.0.0.1:0",
        &[("MONITOR", &monitor), ("OUROBOROS_HEALTHY_DEADLINE", "5")],
    )?;
    let _agent = coordinator.agent(&bins.agent, "host-a", &engine)?;
    coordinator.wait_planned(2)?;
    let (code, _) = coordinator.admin(&["check"])?;
    assert_eq!(code, 1);
    let paused = newest_rollout(&coordinator)?;
    assert_eq!(paused["state"], "paused", "{paused}");

    // The tag moves on to a good image; resume deploys it, never the digest that failed.
    let good = publish(&cleanup, &registry, &repo, "stable", 3)?;
    let log = EventLog::start(&engine)?;
    let (code, resumed) = coordinator.admin(&["resume"])?;
    assert_eq!(code, 0, "{resumed}");
    assert_eq!(resumed["was_paused"], true, "{resumed}");
    let id = paused["id"].as_str().context("no id")?.to_owned();
    let done = eventually(CONVERGE, POLL, || {
        let r = coordinator.json(&["rollout", &id])?;
        let r = r[0].clone();
        ensure!(r["state"] == "completed-with-failures", "{r}");
        Ok(r)
    })?;
    let t2 = done["targets"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|t| t["container"] == a2.as_str())
        .context("no target for a2")?;
    assert_eq!(t2["state"], "updated", "{done}");
    assert_eq!(t2["new_digest"], good.digest.as_str(), "{done}");
    assert_ne!(t2["new_digest"], bad.digest.as_str());
    assert_eq!(engine.docker(&["exec", &a2, "cat", "/version"])?, "3");
    assert_eq!(creates(&log, &a2)?, 1, "a2 recreated more than once");
    // The one that failed is left for the next cycle (its bad digest is no longer the tag's).
    assert_eq!(engine.docker(&["exec", &a1, "cat", "/version"])?, "1");
    Ok(())
}

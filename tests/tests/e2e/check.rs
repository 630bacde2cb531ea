//! A check cycle end to end: a registry with htpasswd auth, containers of two images on two
//! engines. An idle cycle sends one HEAD per unique tag and no GET; after v2 of one tag is
//! pushed, exactly the containers using that tag are updated, on both hosts.

use std::time::Duration;

use anyhow::ensure;
use ouroboros_tests::{
    Binaries, Cleanup, Engine, Registry, eventually, publish, require_engine, unique_name,
};
use serde_json::Value;

use crate::fleet::Coordinator;

const CONVERGE: Duration = Duration::from_secs(60);
const POLL: Duration = Duration::from_millis(200);

fn admin(coordinator: &Coordinator, args: &[&str]) -> anyhow::Result<(i32, Value)> {
    let (code, json) = coordinator.admin(args)?;
    ensure!(!json.is_null(), "{args:?} printed no JSON (exit {code})");
    Ok((code, json))
}

fn decision<'a>(checked: &'a Value, host: &str, container: &str) -> &'a Value {
    checked
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["host"] == host && c["container"] == container)
        .unwrap_or(&Value::Null)
}

#[test]
fn idle_cycles_only_head_and_a_new_tag_updates_its_containers_on_both_hosts() -> anyhow::Result<()>
{
    let Some(engine_a) = require_engine() else {
        return Ok(());
    };
    let bins = Binaries::get()?;
    let engine_b = Engine::start_extra()?;
    let (user, password) = ("fleet", "fl33t?>~pw");
    let registry = Registry::start_with_auth(user, password)?;
    engine_a.login(registry.addr(), user, password)?;
    engine_b.login(registry.addr(), user, password)?;
    let on_a = Cleanup::new(&engine_a);
    let on_b = Cleanup::new(&engine_b);
    let (repo1, repo2) = (unique_name("chk1"), unique_name("chk2"));
    let one = publish(&on_a, &registry, &repo1, "stable", 1)?;
    let two = publish(&on_a, &registry, &repo2, "stable", 1)?;
    for image in [&one, &two] {
        on_b.track_image(&image.reference)?;
    }
    let run = |on: &Cleanup, prefix: &str, image: &str| {
        on.run_container(prefix, &["--network", "none"], image, &[])
    };
    let a1 = run(&on_a, "chk-a1", &one.reference)?;
    let a2 = run(&on_a, "chk-a2", &two.reference)?;
    let b1 = run(&on_b, "chk-b1", &one.reference)?;
    let b2 = run(&on_b, "chk-b2", &two.reference)?;
    let ids_before: Vec<String> = [(&engine_a, &a2), (&engine_b, &b2)]
        .iter()
        .map(|(e, c)| e.inspect(c, "{{.Id}}"))
        .collect::<anyhow::Result<_>>()?;

    let dir = tempfile::Builder::new()
        .prefix("ouroboros-test-chk-")
        .tempdir()?;
    let mut coordinator = Coordinator::init(&bins.coordinator, dir.path(), &["host-a", "host-b"])?;
    let monitor = [&a1, &a2, &b1, &b2]
        .iter()
        .map(|s| s.as_str())
        .collect::<Vec<_>>()
        .join(",");
    let _server = coordinator.serve_with_env(
        "127.0.0.1:0",
        &[
            ("REPO_USER", user),
            ("REPO_PASS", password),
            ("MONITOR", &monitor),
        ],
    )?;
    let _agent_a = coordinator.agent(&bins.agent, "host-a", &engine_a)?;
    let _agent_b = coordinator.agent(&bins.agent, "host-b", &engine_b)?;
    eventually(CONVERGE, POLL, || {
        for (host, c) in [
            ("host-a", &a1),
            ("host-a", &a2),
            ("host-b", &b1),
            ("host-b", &b2),
        ] {
            let info = coordinator.container(host, c)?;
            ensure!(
                info["repo_digests"]
                    .as_array()
                    .is_some_and(|d| !d.is_empty()),
                "{c} has no RepoDigests yet"
            );
        }
        Ok(())
    })?;

    let paths = [
        format!("/v2/{repo1}/manifests/stable"),
        format!("/v2/{repo2}/manifests/stable"),
    ];
    let counts =
        |method: &str| -> Vec<usize> { paths.iter().map(|p| registry.count(method, p)).collect() };
    let settle = || {
        // The registry writes its access log right after answering.
        std::thread::sleep(Duration::from_millis(300));
    };

    // First idle cycle: at most a challenge and one HEAD per tag, never a GET.
    let (heads0, gets0) = (counts("HEAD"), counts("GET"));
    let (code, checked) = admin(&coordinator, &["check"])?;
    assert_eq!(code, 0, "{checked}");
    for (host, c) in [
        ("host-a", &a1),
        ("host-a", &a2),
        ("host-b", &b1),
        ("host-b", &b2),
    ] {
        assert_eq!(
            decision(&checked, host, c)["decision"],
            "current",
            "{checked}"
        );
    }
    settle();
    for (i, (h, h0)) in counts("HEAD").iter().zip(&heads0).enumerate() {
        assert!((1..=2).contains(&(h - h0)), "tag {i}: {} HEADs", h - h0);
    }
    assert_eq!(counts("GET"), gets0, "an idle cycle sent a GET");

    // Second idle cycle: exactly one HEAD per unique tag (four containers, two tags).
    let heads1 = counts("HEAD");
    let (code, _) = admin(&coordinator, &["check"])?;
    assert_eq!(code, 0);
    settle();
    let heads2 = counts("HEAD");
    assert_eq!(
        heads2
            .iter()
            .zip(&heads1)
            .map(|(a, b)| a - b)
            .collect::<Vec<_>>(),
        [1, 1],
        "not one HEAD per unique tag"
    );
    assert_eq!(counts("GET"), gets0);

    // v2 of the first tag: `updates` shows it, changing nothing; `check` updates exactly
    // the two containers of that tag.
    let v2 = publish(&on_a, &registry, &repo1, "stable", 2)?;
    let (_, planned) = admin(&coordinator, &["updates"])?;
    for (host, c) in [("host-a", &a1), ("host-b", &b1)] {
        assert_eq!(
            decision(&planned, host, c)["decision"],
            "update",
            "{planned}"
        );
    }
    assert_eq!(decision(&planned, "host-a", &a2)["decision"], "current");
    assert_ne!(engine_a.inspect(&a1, "{{.Image}}")?, "", "still there");

    let (code, checked) = admin(&coordinator, &["check"])?;
    assert_eq!(code, 0, "{checked}");
    for (host, c) in [("host-a", &a1), ("host-b", &b1)] {
        assert_eq!(
            decision(&checked, host, c)["status"],
            "updated",
            "{checked}"
        );
    }
    for (host, c) in [("host-a", &a2), ("host-b", &b2)] {
        assert_eq!(
            decision(&checked, host, c)["decision"],
            "current",
            "{checked}"
        );
    }
    let v2_id = engine_a.docker(&["image", "inspect", "--format", "{{.Id}}", &v2.pinned()])?;
    assert_eq!(engine_a.inspect(&a1, "{{.Image}}")?, v2_id);
    assert_eq!(engine_b.inspect(&b1, "{{.Image}}")?, v2_id);
    assert_eq!(
        engine_b.inspect(&b1, "{{.Config.Image}}")?,
        one.reference,
        "tag not kept"
    );
    let ids_after: Vec<String> = [(&engine_a, &a2), (&engine_b, &b2)]
        .iter()
        .map(|(e, c)| e.inspect(c, "{{.Id}}"))
        .collect::<anyhow::Result<_>>()?;
    assert_eq!(
        ids_after, ids_before,
        "a container of the other tag was touched"
    );
    Ok(())
}

#[test]
fn scheduled_cycles_update_and_a_dry_run_changes_nothing() -> anyhow::Result<()> {
    let Some(engine) = require_engine() else {
        return Ok(());
    };
    let bins = Binaries::get()?;
    let registry = Registry::start()?;
    let cleanup = Cleanup::new(&engine);
    let repo = unique_name("sched");
    let v1 = publish(&cleanup, &registry, &repo, "stable", 1)?;
    let name = cleanup.run_container("sched", &["--network", "none"], &v1.reference, &[])?;
    let old_id = engine.inspect(&name, "{{.Id}}")?;
    let v2 = publish(&cleanup, &registry, &repo, "stable", 2)?;

    let dir = tempfile::Builder::new()
        .prefix("ouroboros-test-sched-")
        .tempdir()?;
    let mut coordinator = Coordinator::init(&bins.coordinator, dir.path(), &["host-a"])?;
    // DRY_RUN: cycles every second see the update and leave the container alone.
    let server = coordinator.serve_with_env(
        "127.0.0.1:0",
        &[("INTERVAL", "1"), ("DRY_RUN", "true"), ("MONITOR", &name)],
    )?;
    let _agent = coordinator.agent(&bins.agent, "host-a", &engine)?;
    eventually(CONVERGE, POLL, || {
        let cycles = server
            .log()
            .lines()
            .filter(|l| l.contains("Scheduled check cycle done.") && l.contains("updates=1"))
            .count();
        ensure!(cycles >= 2, "{cycles} dry-run cycles saw the update");
        Ok(())
    })?;
    assert_eq!(
        engine.inspect(&name, "{{.Id}}")?,
        old_id,
        "a dry run changed the container"
    );

    // Without it, the next scheduled cycle updates the container.
    let listen = coordinator.url.trim_start_matches("https://").to_owned();
    drop(server);
    let _server = coordinator.serve_with_env(&listen, &[("INTERVAL", "1"), ("MONITOR", &name)])?;
    eventually(CONVERGE, POLL, || {
        // v2 is only local once the agent pulled it.
        let v2_id = engine.docker(&["image", "inspect", "--format", "{{.Id}}", &v2.pinned()])?;
        let image = engine.inspect(&name, "{{.Image}}")?;
        ensure!(image == v2_id, "not updated yet");
        Ok(())
    })?;
    Ok(())
}

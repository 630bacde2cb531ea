//! Hooks end to end (`--hooks-dir`), on real engines and a real registry: every point's
//! scripts append their event to a log with the time they ran, which is checked against the
//! engines' own events; a `before_update` hook vetoes one of two hosts (left untouched,
//! reported `vetoed`, no failure); a hook past its deadline is killed with its children; no
//! hook sees the registry password the coordinator holds.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, ensure};
use ouroboros_tests::{Binaries, Cleanup, Engine, Registry, publish, require_engine, unique_name};
use serde_json::Value;

use crate::fleet::Coordinator;
use crate::rollout::{EventLog, newest_rollout};

/// The 14 points, as directory names.
pub(crate) const POINTS: [&str; 14] = [
    "updates_enumerated",
    "before_update",
    "after_update",
    "before_image_cleanup",
    "before_stop_depends_container",
    "before_start_depends_container",
    "before_recreate_hard_depends_container",
    "after_recreate_hard_depends_container",
    "before_self_update",
    "after_self_update",
    "before_self_cleanup",
    "after_self_cleanup",
    "dry_run_update",
    "notify_update",
];

/// The registry password the coordinator is given (the registry has no auth: it is ignored).
const SECRET: &str = "hook-must-not-see-this-pass";

pub(crate) fn script(dir: &Path, point: &str, name: &str, body: &str) -> anyhow::Result<()> {
    let sub = dir.join(point);
    std::fs::create_dir_all(&sub)?;
    let path = sub.join(name);
    std::fs::write(&path, body)?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))?;
    Ok(())
}

/// One line of the hooks' log: when (unix ns), which point, its event.
#[derive(Debug)]
struct Fired {
    nanos: u128,
    point: String,
    event: Value,
}

fn fired(log: &Path) -> anyhow::Result<Vec<Fired>> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    text.lines()
        .map(|l| {
            let mut parts = l.splitn(3, ' ');
            let nanos = parts.next().context("time")?.parse()?;
            let point = parts.next().context("point")?.to_owned();
            let event = serde_json::from_str(parts.next().context("event")?)
                .with_context(|| format!("not JSON: {l}"))?;
            Ok(Fired {
                nanos,
                point,
                event,
            })
        })
        .collect()
}

/// `point` fired for `container` (all of them when `None`).
fn of<'a>(all: &'a [Fired], point: &str, container: Option<&str>) -> Vec<&'a Fired> {
    all.iter()
        .filter(|f| f.point == point && container.is_none_or(|c| f.event["container"] == c))
        .collect()
}

pub(crate) fn row<'a>(answer: &'a Value, container: &str) -> anyhow::Result<&'a Value> {
    answer
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["container"] == container)
        .with_context(|| format!("{container} not in {answer}"))
}

#[test]
fn hooks_fire_at_their_points_and_a_before_update_veto_leaves_one_host_untouched()
-> anyhow::Result<()> {
    let Some(engine_a) = require_engine() else {
        return Ok(());
    };
    let bins = Binaries::get()?;
    let engine_b = Engine::start_extra()?;
    let registry = Registry::start()?;
    let on_a = Cleanup::new(&engine_a);
    let on_b = Cleanup::new(&engine_b);
    let repo = unique_name("hooked");
    let v1 = publish(&on_a, &registry, &repo, "stable", 1)?;
    on_b.track_image(&v1.reference)?;
    let none = ["--network", "none"];
    let a = on_a.run_container("hook-a", &none, &v1.reference, &[])?;
    // On host-a, a soft and a hard dependant of a (not watched themselves).
    let soft_label = format!("com.ouroboros.depends_on={a}");
    let soft = on_a.run_container(
        "hook-soft",
        &["--network", "none", "--label", &soft_label],
        &v1.reference,
        &[],
    )?;
    let hard_label = format!("com.ouroboros.hard_depends_on={a}");
    let hard = on_a.run_container(
        "hook-hard",
        &["--network", "none", "--label", &hard_label],
        &v1.reference,
        &[],
    )?;
    let b = on_b.run_container("hook-b", &none, &v1.reference, &[])?;
    let b_id = engine_b.inspect(&b, "{{.Id}}")?;
    let v2 = publish(&on_a, &registry, &repo, "stable", 2)?;

    let dir = tempfile::Builder::new()
        .prefix("ouroboros-test-hooks-")
        .tempdir()?;
    let hooks = dir.path().join("hooks");
    let log = dir.path().join("fired.log");
    let envs = dir.path().join("env");
    std::fs::create_dir_all(&envs)?;
    for point in POINTS {
        script(
            &hooks,
            point,
            "10-record",
            &format!(
                "#!/bin/sh\nevent=$(cat)\nprintf '%s %s %s\\n' \"$(date +%s%N)\" \"$OUROBOROS_HOOK\" \"$event\" >> {log}\nenv > {envs}/$OUROBOROS_HOOK.env\n",
                log = log.display(),
                envs = envs.display()
            ),
        )?;
    }
    script(
        &hooks,
        "before_update",
        "20-gate",
        "#!/bin/sh\nif [ \"$OUROBOROS_HOST\" = host-b ]; then echo 'maintenance on host-b'; exit 1; fi\n",
    )?;
    // A Python hook, not executable: run with python3.
    let py = hooks.join("after_update").join("30-python.py");
    std::fs::write(
        &py,
        format!(
            "import json, sys\ne = json.load(sys.stdin)\nopen({:?}, 'a').write(e['container'] + ' ' + e['outcome'] + '\\n')\n",
            dir.path().join("python.log").display().to_string()
        ),
    )?;
    std::fs::set_permissions(&py, std::fs::Permissions::from_mode(0o644))?;

    let mut coordinator = Coordinator::init(&bins.coordinator, dir.path(), &["host-a", "host-b"])?;
    let monitor = format!("{a},{b}");
    let hooks_dir = hooks.display().to_string();
    let _server = coordinator.serve_with_env(
        "127.0.0.1:0",
        &[
            ("MONITOR", &monitor),
            ("HOOKS_DIR", &hooks_dir),
            ("CLEANUP", "true"),
            ("REPO_USER", "robot"),
            ("REPO_PASS", SECRET),
            ("OUROBOROS_FAILURE_ACTION", "pause"),
        ],
    )?;
    let _agent_a = coordinator.agent(&bins.agent, "host-a", &engine_a)?;
    let _agent_b = coordinator.agent(&bins.agent, "host-b", &engine_b)?;
    coordinator.wait_planned(2)?;
    // What `updates` fired while waiting is not this test's.
    let _ = std::fs::remove_file(&log);

    // A dry run: the list, then one dry_run_update per update; nothing else, nothing changed.
    let (code, dry) = coordinator.admin(&["check", "--dry-run"])?;
    assert_eq!(code, 0, "{dry}");
    let seen = fired(&log)?;
    let points: Vec<&str> = seen.iter().map(|f| f.point.as_str()).collect();
    assert_eq!(
        points,
        ["updates_enumerated", "dry_run_update", "dry_run_update"],
        "{seen:?}"
    );
    let list = seen[0].event["updates"].as_array().context("no updates")?;
    assert_eq!(list.len(), 2, "{list:?}");
    for name in [&a, &b] {
        let u = list
            .iter()
            .find(|u| u["container"] == name.as_str())
            .with_context(|| format!("{name} not listed: {list:?}"))?;
        assert_eq!(u["new_digest"], v2.digest.as_str());
        assert_eq!(u["old_digest"], v1.digest.as_str());
        assert_eq!(of(&seen, "dry_run_update", Some(name)).len(), 1);
    }
    std::fs::remove_file(&log)?;

    // The update: host-b's gate says no.
    let events = EventLog::start(&engine_a)?;
    let (code, checked) = coordinator.admin(&["check"])?;
    assert_eq!(code, 0, "a veto is not a failure: {checked}");
    let seen = fired(&log)?;
    let count = |point: &str, c: Option<&str>| of(&seen, point, c).len();
    assert_eq!(count("updates_enumerated", None), 1, "{seen:?}");
    assert_eq!(count("before_update", Some(&a)), 1, "{seen:?}");
    assert_eq!(count("before_update", Some(&b)), 1, "{seen:?}");
    assert_eq!(count("before_image_cleanup", Some(&a)), 1, "{seen:?}");
    assert_eq!(count("after_update", Some(&a)), 1, "{seen:?}");
    // Asked by host-a's agent inside its operation, each about its dependant.
    let about = |point: &str, dependant: &str| -> Vec<&Fired> {
        of(&seen, point, Some(&a))
            .into_iter()
            .filter(|f| f.event["dependant"] == dependant && f.event["host"] == "host-a")
            .collect()
    };
    let stop_soft = about("before_stop_depends_container", &soft);
    let start_soft = about("before_start_depends_container", &soft);
    let before_hard = about("before_recreate_hard_depends_container", &hard);
    let after_hard = about("after_recreate_hard_depends_container", &hard);
    for (name, fired) in [
        ("before_stop", &stop_soft),
        ("before_start", &start_soft),
        ("before_recreate_hard", &before_hard),
        ("after_recreate_hard", &after_hard),
    ] {
        assert_eq!(fired.len(), 1, "{name}: {seen:?}");
    }
    assert_eq!(
        seen.len(),
        9,
        "nothing more (no after_update or cleanup for the vetoed host, no dry-run point): {seen:?}"
    );
    let after = of(&seen, "after_update", Some(&a))[0];
    assert_eq!(after.event["outcome"], "updated");
    assert_eq!(after.event["host"], "host-a");
    assert_eq!(after.event["image"], v1.reference.as_str());
    assert_eq!(after.event["new_digest"], v2.digest.as_str());
    let rollout_id = after.event["rollout"].as_str().unwrap_or_default();
    assert!(rollout_id.starts_with("r-"), "{after:?}");
    assert_eq!(
        std::fs::read_to_string(dir.path().join("python.log"))?,
        format!("{a} updated\n")
    );

    // host-a: its hooks ran around its new container, as the engine saw it.
    let ev = events.events()?;
    let created = ev
        .iter()
        .find(|e| e.action == "create" && e.name == a)
        .with_context(|| format!("{a} not recreated: {ev:?}"))?
        .nanos;
    let started = ev
        .iter()
        .filter(|e| e.action == "start" && e.name == a)
        .map(|e| e.nanos)
        .max()
        .context("not started")?;
    let before_a = of(&seen, "before_update", Some(&a))[0].nanos;
    let cleanup_a = of(&seen, "before_image_cleanup", Some(&a))[0].nanos;
    let enumerated = of(&seen, "updates_enumerated", None)[0].nanos;
    ensure!(
        enumerated < before_a,
        "updates_enumerated after before_update"
    );
    ensure!(
        before_a < created,
        "before_update not before the new container"
    );
    ensure!(
        after.nanos > started,
        "after_update before the new container started"
    );
    // The image cleanup is asked for by the agent once the new container passed its gate,
    // before its answer.
    ensure!(
        started < cleanup_a && cleanup_a < after.nanos,
        "before_image_cleanup not between the new container's start and after_update"
    );
    // The dependants' points, each right before its step, as the engine saw them.
    let at = |action: &str, name: &str, after: u128| {
        ev.iter()
            .filter(|e| e.action == action && e.name == name && e.nanos > after)
            .map(|e| e.nanos)
            .min()
            .with_context(|| format!("no {action} of {name} after {after}: {ev:?}"))
    };
    let soft_stopped = at("stop", &soft, 0)?;
    ensure!(
        stop_soft[0].nanos < soft_stopped && soft_stopped < created,
        "before_stop_depends_container not right before the soft dependant's stop"
    );
    let soft_started = at("start", &soft, soft_stopped)?;
    ensure!(
        started < start_soft[0].nanos && start_soft[0].nanos < soft_started,
        "before_start_depends_container not between the new container and the soft start"
    );
    let hard_created = at("create", &hard, 0)?;
    ensure!(
        started < before_hard[0].nanos && before_hard[0].nanos < hard_created,
        "before_recreate_hard_depends_container not before the hard dependant's recreate"
    );
    let hard_started = at("start", &hard, hard_created)?;
    ensure!(
        hard_started < after_hard[0].nanos,
        "after_recreate_hard_depends_container before the hard dependant started"
    );
    let image = engine_a.inspect(&a, "{{.Image}}")?;
    let digests = engine_a.docker(&[
        "image",
        "inspect",
        "--format",
        "{{json .RepoDigests}}",
        &image,
    ])?;
    assert!(digests.contains(&v2.digest), "{a} not on v2: {digests}");

    // host-b: untouched and reported vetoed, with the hook and its first line.
    assert_eq!(engine_b.inspect(&b, "{{.Id}}")?, b_id);
    let rb = row(&checked, &b)?;
    assert_eq!(rb["status"], "vetoed", "{rb}");
    assert_eq!(
        rb["result_reason"],
        "vetoed by hook before_update/20-gate: maintenance on host-b"
    );
    assert_eq!(row(&checked, &a)?["status"], "updated");
    let rollout = newest_rollout(&coordinator)?;
    assert_eq!(rollout["state"], "completed", "{rollout}");
    let history = coordinator.json(&["history", "--host", "host-b"])?;
    let entry = history
        .as_array()
        .and_then(|h| h.last())
        .cloned()
        .unwrap_or_default();
    assert_eq!(entry["result"], "vetoed", "{history}");
    // The rollout keeps each hook's end with its target, in the order they ran (the agent's
    // questions between before_update and after_update).
    let target_a = rollout["targets"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|t| t["host"] == "host-a")
        .context("no host-a target")?;
    let record = target_a["transitions"].to_string();
    let mut last = 0;
    for line in [
        "hook before_update/10-record: exit 0",
        "hook before_update/20-gate: exit 0",
        "hook before_stop_depends_container/10-record: exit 0",
        "hook before_recreate_hard_depends_container/10-record: exit 0",
        "hook before_image_cleanup/10-record: exit 0",
        "hook after_update/30-python.py: exit 0",
    ] {
        let at = record
            .find(line)
            .with_context(|| format!("{line} not in {record}"))?;
        ensure!(at > last, "{line} out of order in {record}");
        last = at;
    }

    // No hook saw the registry credentials.
    let mut env_files = 0;
    for file in std::fs::read_dir(&envs)? {
        let text = std::fs::read_to_string(file?.path())?;
        env_files += 1;
        assert!(text.contains("OUROBOROS_HOOK="), "{text}");
        for secret in ["REPO_PASS", "REPO_USER", SECRET] {
            assert!(!text.contains(secret), "{secret} reached a hook:\n{text}");
        }
    }
    assert!(env_files >= 4, "{env_files} env files");
    Ok(())
}

#[test]
fn a_hook_past_its_deadline_is_killed_and_vetoes_its_update() -> anyhow::Result<()> {
    let Some(engine) = require_engine() else {
        return Ok(());
    };
    let bins = Binaries::get()?;
    let registry = Registry::start()?;
    let on = Cleanup::new(&engine);
    let repo = unique_name("hookslow");
    let v1 = publish(&on, &registry, &repo, "stable", 1)?;
    let c = on.run_container("hook-slow", &["--network", "none"], &v1.reference, &[])?;
    let id = engine.inspect(&c, "{{.Id}}")?;
    publish(&on, &registry, &repo, "stable", 2)?;

    let dir = tempfile::Builder::new()
        .prefix("ouroboros-test-hookslow-")
        .tempdir()?;
    let hooks = dir.path().join("hooks");
    let pid_file = dir.path().join("sleeper.pid");
    script(
        &hooks,
        "before_update",
        "10-slow",
        &format!(
            "#!/bin/sh\nsleep 600 &\necho $! > {}\nwait\n",
            pid_file.display()
        ),
    )?;
    let mut coordinator = Coordinator::init(&bins.coordinator, dir.path(), &["host-a"])?;
    let hooks_dir = hooks.display().to_string();
    let server = coordinator.serve_with_env(
        "127.0.0.1:0",
        &[
            ("MONITOR", &c),
            ("HOOKS_DIR", &hooks_dir),
            ("OUROBOROS_HOOK_TIMEOUT", "2"),
        ],
    )?;
    let _agent = coordinator.agent(&bins.agent, "host-a", &engine)?;
    coordinator.wait_planned(1)?;
    let started = std::time::Instant::now();
    let (code, checked) = coordinator.admin(&["check"])?;
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(code, 0, "{checked}");
    let r = row(&checked, &c)?;
    assert_eq!(r["status"], "vetoed", "{r}");
    assert_eq!(
        r["result_reason"],
        "vetoed by hook before_update/10-slow: killed after its deadline (2 s)"
    );
    assert_eq!(engine.inspect(&c, "{{.Id}}")?, id, "the container changed");
    // The hook's own child went with it.
    let pid = std::fs::read_to_string(&pid_file)?;
    let stat = std::fs::read_to_string(format!("/proc/{}/stat", pid.trim())).unwrap_or_default();
    assert!(
        stat.is_empty() || stat.contains(") Z "),
        "the hook's child still runs: {stat}"
    );
    // One container's update outside a rollout gets the same hooks.
    let (code, one) = coordinator.admin(&["update", "--host", "host-a", "--container", &c])?;
    assert_eq!(code, 1, "{one}");
    assert_eq!(one[0]["status"], "vetoed", "{one}");
    assert_eq!(
        one[0]["reason"],
        "vetoed by hook before_update/10-slow: killed after its deadline (2 s)"
    );
    assert_eq!(engine.inspect(&c, "{{.Id}}")?, id, "the container changed");
    let log = server.log();
    assert!(
        log.lines().any(|l| l.contains("Hook failed.")
            && l.contains("before_update/10-slow")
            && l.contains("killed after its deadline")),
        "not logged:\n{}",
        server.log_tail(40)
    );
    Ok(())
}

#[test]
fn a_monitor_only_coordinator_fires_notify_update_once_per_new_image() -> anyhow::Result<()> {
    let Some(engine) = require_engine() else {
        return Ok(());
    };
    let bins = Binaries::get()?;
    let registry = Registry::start()?;
    let on = Cleanup::new(&engine);
    let repo = unique_name("hookmon");
    let v1 = publish(&on, &registry, &repo, "stable", 1)?;
    let c = on.run_container("hook-mon", &["--network", "none"], &v1.reference, &[])?;
    let id = engine.inspect(&c, "{{.Id}}")?;
    let v2 = publish(&on, &registry, &repo, "stable", 2)?;

    let dir = tempfile::Builder::new()
        .prefix("ouroboros-test-hookmon-")
        .tempdir()?;
    let hooks = dir.path().join("hooks");
    let log = dir.path().join("fired.log");
    for point in POINTS {
        script(
            &hooks,
            point,
            "10-record",
            &format!(
                "#!/bin/sh\nevent=$(cat)\nprintf '%s %s %s\\n' \"$(date +%s%N)\" \"$OUROBOROS_HOOK\" \"$event\" >> {}\n",
                log.display()
            ),
        )?;
    }
    let mut coordinator = Coordinator::init(&bins.coordinator, dir.path(), &["host-a"])?;
    let hooks_dir = hooks.display().to_string();
    let _server = coordinator.serve_with_env(
        "127.0.0.1:0",
        &[
            ("MONITOR", &c),
            ("HOOKS_DIR", &hooks_dir),
            ("MONITOR_ONLY", "true"),
        ],
    )?;
    let _agent = coordinator.agent(&bins.agent, "host-a", &engine)?;
    coordinator.wait_planned(1)?;
    // Once more: the image is no longer new.
    let (code, again) = coordinator.admin(&["check", "--dry-run"])?;
    assert_eq!(code, 0, "{again}");
    let seen = fired(&log)?;
    let notified = of(&seen, "notify_update", Some(&c));
    assert_eq!(notified.len(), 1, "{seen:?}");
    assert_eq!(notified[0].event["new_digest"], v2.digest.as_str());
    assert_eq!(notified[0].event["old_digest"], v1.digest.as_str());
    for f in &seen {
        assert!(
            ["updates_enumerated", "notify_update"].contains(&f.point.as_str()),
            "{} fired in monitor-only mode: {seen:?}",
            f.point
        );
    }
    assert!(of(&seen, "updates_enumerated", None).len() >= 2, "{seen:?}");
    assert_eq!(
        engine.inspect(&c, "{{.Id}}")?,
        id,
        "monitor-only changed it"
    );
    Ok(())
}

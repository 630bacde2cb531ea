//! Rollouts end to end, on real engines: dependency order, health-gated failure with pause,
//! hosts in flight bounded, and a coordinator killed mid-rollout that resumes without doing
//! anything twice. Orders and counts come from the engines' own event logs.
//!
//! (Over 600 lines: the rollout scenarios share the event log and the fleet set-up.)

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, ensure};
use ouroboros_tests::{
    Binaries, Cleanup, Engine, ImageSpec, Process, Registry, eventually, publish, require_engine,
    unique_name,
};
use serde_json::Value;

use crate::fleet::Coordinator;

const CONVERGE: Duration = Duration::from_secs(90);
const POLL: Duration = Duration::from_millis(200);

/// Now in unix nanoseconds, as event times are given.
fn now_nanos() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}

/// One container event of an engine.
#[derive(Debug, Clone)]
pub(crate) struct Event {
    pub(crate) action: String,
    pub(crate) name: String,
    id: String,
    pub(crate) nanos: u128,
}

/// An engine's container lifecycle events, streamed from when it is made (`docker events`
/// replays only the engine's last 256 events, which healthcheck execs soon push out).
pub(crate) struct EventLog {
    process: Process,
}

impl EventLog {
    pub(crate) fn start(engine: &Engine) -> anyhow::Result<Self> {
        // From now on, whenever the stream actually starts: `--since` replays what came
        // between.
        let now = now_nanos();
        let since = format!("{}.{:09}", now / 1_000_000_000, now % 1_000_000_000);
        let mut command = engine.docker_command();
        command.args([
            "events",
            "--since",
            &since,
            "--filter",
            "type=container",
            "--filter",
            "event=create",
            "--filter",
            "event=start",
            "--filter",
            "event=stop",
            "--filter",
            "event=destroy",
            "--format",
            "{{.Actor.Attributes.name}} {{.Actor.ID}} {{.TimeNano}} {{.Action}}",
        ]);
        let process = Process::spawn_command(command)?;
        Ok(Self { process })
    }

    /// The events so far.
    pub(crate) fn events(&self) -> anyhow::Result<Vec<Event>> {
        self.process
            .log()
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                let parts: Vec<&str> = l.splitn(4, ' ').collect();
                ensure!(parts.len() == 4, "unexpected event line {l:?}");
                Ok(Event {
                    name: parts[0].to_owned(),
                    id: parts[1].to_owned(),
                    nanos: parts[2].parse().context("event time")?,
                    action: parts[3].trim().to_owned(),
                })
            })
            .collect()
    }
}

fn first(events: &[Event], action: &str, name: &str) -> Option<u128> {
    events
        .iter()
        .filter(|e| e.action == action && e.name == name)
        .map(|e| e.nanos)
        .min()
}

fn last(events: &[Event], action: &str, name: &str) -> Option<u128> {
    events
        .iter()
        .filter(|e| e.action == action && e.name == name)
        .map(|e| e.nanos)
        .max()
}

/// The only rollout of the coordinator (or the newest), as JSON.
pub(crate) fn newest_rollout(coordinator: &Coordinator) -> anyhow::Result<Value> {
    let all = coordinator.json(&["rollouts"])?;
    all.as_array()
        .and_then(|a| a.first())
        .cloned()
        .context("no rollout stored")
}

fn target<'a>(rollout: &'a Value, host: &str) -> &'a Value {
    rollout["targets"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|t| t["host"] == host)
        .unwrap_or(&Value::Null)
}

#[test]
fn a_stack_updates_in_dependency_order_and_ends_healthy() -> anyhow::Result<()> {
    let Some(engine) = require_engine() else {
        return Ok(());
    };
    let bins = Binaries::get()?;
    let registry = Registry::start()?;
    let on = Cleanup::new(&engine);
    let repos: Vec<String> = ["db", "app", "proxy", "side"]
        .iter()
        .map(|r| unique_name(&format!("stack-{r}")))
        .collect();
    let v1: Vec<_> = repos
        .iter()
        .map(|r| publish(&on, &registry, r, "stable", 1))
        .collect::<anyhow::Result<_>>()?;
    let none = ["--network", "none"];
    let db = on.run_container("stk-db", &none, &v1[0].reference, &[])?;
    let app_label = format!("com.ouroboros.depends_on={db}");
    let app = on.run_container(
        "stk-app",
        &["--network", "none", "--label", &app_label],
        &v1[1].reference,
        &[],
    )?;
    let proxy_label = format!("com.ouroboros.depends_on={app}");
    let proxy = on.run_container(
        "stk-proxy",
        &["--network", "none", "--label", &proxy_label],
        &v1[2].reference,
        &[],
    )?;
    let app_ns = format!("container:{app}");
    let side = on.run_container("stk-side", &["--network", &app_ns], &v1[3].reference, &[])?;
    for r in &repos {
        publish(&on, &registry, r, "stable", 2)?;
    }

    let dir = tempfile::Builder::new()
        .prefix("ouroboros-test-stack-")
        .tempdir()?;
    let mut coordinator = Coordinator::init(&bins.coordinator, dir.path(), &["host-a"])?;
    let monitor = [&proxy, &side, &app, &db]
        .iter()
        .map(|s| s.as_str())
        .collect::<Vec<_>>()
        .join(",");
    let _server = coordinator.serve_with_env("127.0.0.1:0", &[("MONITOR", &monitor)])?;
    let agent = coordinator.agent(&bins.agent, "host-a", &engine)?;
    coordinator.wait_planned(4)?;
    let event_log = EventLog::start(&engine)?;
    let (code, checked) = coordinator.admin(&["check"])?;
    if code != 0 {
        let log = agent.log();
        let steps: Vec<&str> = log
            .lines()
            .filter(|l| {
                l.contains("ouroboros_agent::")
                    && !l.contains("Docker event")
                    && !l.contains("inventory")
            })
            .collect();
        eprintln!("{}", steps.join("\n"));
    }
    assert_eq!(code, 0, "{checked}");
    let rollout = newest_rollout(&coordinator)?;
    assert_eq!(rollout["state"], "completed", "{rollout}");
    // A cycle right after the rollout offers nothing: not the four updated containers, and
    // no set-aside container (however fresh the host's last report is).
    let after = coordinator.json(&["updates"])?;
    for row in after.as_array().into_iter().flatten() {
        assert_ne!(row["decision"], "update", "offered again: {row}");
        let name = row["container"].as_str().unwrap_or_default();
        if name.contains("-ouroboros-old-") {
            assert!(
                row["reason"]
                    .as_str()
                    .is_some_and(|r| r.starts_with("set aside")),
                "{row}"
            );
        }
    }

    let ev = event_log.events()?;
    let created = |name: &str| {
        last(&ev, "create", name).with_context(|| format!("{name} not recreated: {ev:?}"))
    };
    let (t_db, t_app, t_proxy, t_side) = (
        created(&db)?,
        created(&app)?,
        created(&proxy)?,
        created(&side)?,
    );
    assert!(t_db < t_app, "app recreated before db");
    assert!(t_app < t_proxy, "proxy recreated before app");
    assert!(t_app < t_side, "the sidecar was not recreated after app");
    // The sidecar's own tag moved too: app's operation moved it to its new image, once, and
    // its own target counts as updated without a second recreate.
    let side_creates = ev
        .iter()
        .filter(|e| e.action == "create" && e.name == side)
        .count();
    assert_eq!(
        side_creates, 1,
        "the sidecar was recreated {side_creates} times"
    );
    let side_result = checked
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["container"] == side.as_str())
        .context("the sidecar is not in the check output")?;
    assert_eq!(side_result["status"], "updated", "{side_result}");
    assert!(
        side_result["result_reason"]
            .as_str()
            .is_some_and(|r| r.contains(&format!("updated with {app}"))),
        "{side_result}"
    );
    // The soft dependant (proxy) was stopped before app's new container and started again
    // once app was up.
    let app_started = last(&ev, "start", &app).context("app not started")?;
    let proxy_stopped = first(&ev, "stop", &proxy).context("proxy not stopped")?;
    assert!(
        proxy_stopped < t_app,
        "proxy not stopped before app's update"
    );
    assert!(
        ev.iter().any(|e| e.action == "start"
            && e.name == proxy
            && e.nanos > app_started
            && e.nanos < t_proxy),
        "proxy not started again after app's update"
    );
    // Every container ends running, healthy, on v2, the sidecar in app's new namespace.
    for (name, repo) in [
        (&db, &repos[0]),
        (&app, &repos[1]),
        (&proxy, &repos[2]),
        (&side, &repos[3]),
    ] {
        assert_eq!(
            engine.inspect(name, "{{.State.Running}}")?,
            "true",
            "{name}"
        );
        assert_eq!(
            engine.inspect(name, "{{.State.Health.Status}}")?,
            "healthy",
            "{name}"
        );
        let image = engine.inspect(name, "{{.Image}}")?;
        let v2 = engine.docker(&[
            "image",
            "inspect",
            "--format",
            "{{.Id}}",
            &registry.reference(repo, "stable"),
        ])?;
        assert_eq!(image, v2, "{name} not on v2");
    }
    let app_id = engine.inspect(&app, "{{.Id}}")?;
    assert_eq!(
        engine.inspect(&side, "{{.HostConfig.NetworkMode}}")?,
        format!("container:{app_id}")
    );
    Ok(())
}

#[test]
fn a_failing_update_rolls_back_and_pauses_and_no_other_host_is_touched() -> anyhow::Result<()> {
    let Some(engine_a) = require_engine() else {
        return Ok(());
    };
    let bins = Binaries::get()?;
    let engine_b = Engine::start_extra()?;
    let registry = Registry::start()?;
    let on_a = Cleanup::new(&engine_a);
    let on_b = Cleanup::new(&engine_b);
    let repo = unique_name("fail");
    let v1 = publish(&on_a, &registry, &repo, "stable", 1)?;
    on_b.track_image(&v1.reference)?;
    let none = ["--network", "none"];
    let a = on_a.run_container("fail-a", &none, &v1.reference, &[])?;
    let b = on_b.run_container("fail-b", &none, &v1.reference, &[])?;
    let (a_id, b_id) = (
        engine_a.inspect(&a, "{{.Id}}")?,
        engine_b.inspect(&b, "{{.Id}}")?,
    );
    publish(
        &on_a,
        &registry,
        &repo,
        "stable",
        ImageSpec::new(2).unhealthy(),
    )?;

    let dir = tempfile::Builder::new()
        .prefix("ouroboros-test-fail-")
        .tempdir()?;
    let mut coordinator = Coordinator::init(&bins.coordinator, dir.path(), &["host-a", "host-b"])?;
    let monitor = format!("{a},{b}");
    let _server = coordinator.serve_with_env(
        "127.0.0.1:0",
        &[
            ("MONITOR", &monitor),
            ("OUROBOROS_MAX_HOSTS_IN_FLIGHT", "1"),
            ("OUROBOROS_HEALTHY_DEADLINE", "5"),
            ("OUROBOROS_FAILURE_ACTION", "pause"),
        ],
    )?;
    let _agent_a = coordinator.agent(&bins.agent, "host-a", &engine_a)?;
    let _agent_b = coordinator.agent(&bins.agent, "host-b", &engine_b)?;
    coordinator.wait_planned(2)?;
    let (code, checked) = coordinator.admin(&["check"])?;
    assert_eq!(code, 1, "a failed update must fail the check: {checked}");
    let rollout = newest_rollout(&coordinator)?;
    assert_eq!(rollout["state"], "paused", "{rollout}");
    let ta = target(&rollout, "host-a");
    assert_eq!(ta["state"], "failed", "{rollout}");
    let reason = ta["reason"].as_str().unwrap_or_default();
    assert!(
        reason.starts_with("rolled-back") && reason.contains("health"),
        "{reason}"
    );
    assert_eq!(target(&rollout, "host-b")["state"], "pending", "{rollout}");
    // host-a: the old container is back under its name, running the old image.
    assert_eq!(engine_a.inspect(&a, "{{.Id}}")?, a_id);
    assert_eq!(engine_a.inspect(&a, "{{.State.Running}}")?, "true");
    // host-b: untouched, and a new cycle does not touch it while the rollout is paused.
    assert_eq!(engine_b.inspect(&b, "{{.Id}}")?, b_id);
    let (_, again) = coordinator.admin(&["check"])?;
    let row = again
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["container"] == b.as_str())
        .cloned()
        .unwrap_or_default();
    assert!(
        row["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("is paused"),
        "{again}"
    );
    assert_eq!(engine_b.inspect(&b, "{{.Id}}")?, b_id);
    // The history has the failure with its reason.
    let history = coordinator.json(&["history", "--host", "host-a"])?;
    let entry = history
        .as_array()
        .and_then(|h| h.last())
        .cloned()
        .unwrap_or_default();
    assert_eq!(entry["result"], "failed", "{history}");
    assert_eq!(entry["container"], a.as_str());
    // `resume` accepts the failure and goes on with host-b, whose v2 fails too: a new failure
    // pauses the rollout again, and host-b's agent rolled its container back.
    let (code, resumed) = coordinator.admin(&["resume"])?;
    assert_eq!(code, 0, "{resumed}");
    eventually(CONVERGE, POLL, || {
        let rollout = newest_rollout(&coordinator)?;
        ensure!(
            target(&rollout, "host-b")["state"] == "failed",
            "host-b not done yet: {rollout}"
        );
        ensure!(rollout["state"] == "paused", "{rollout}");
        Ok(())
    })?;
    assert_eq!(engine_b.inspect(&b, "{{.Id}}")?, b_id);
    assert_eq!(engine_b.inspect(&b, "{{.State.Running}}")?, "true");
    Ok(())
}

/// Starts `count` engines (the system's first), each running one container of `reference`.
fn fleet_of(
    count: usize,
    system: Engine,
    reference: &str,
) -> anyhow::Result<(Vec<Engine>, Vec<Cleanup>, Vec<String>)> {
    let mut engines = vec![system];
    for _ in 1..count {
        engines.push(Engine::start_extra()?);
    }
    let cleanups: Vec<Cleanup> = engines.iter().map(Cleanup::new).collect();
    let mut names = Vec::new();
    for on in &cleanups {
        on.track_image(reference)?;
        names.push(on.run_container("fl", &["--network", "none"], reference, &[])?);
    }
    Ok((engines, cleanups, names))
}

#[test]
fn four_engines_never_have_two_hosts_updating_at_once() -> anyhow::Result<()> {
    let Some(system) = require_engine() else {
        return Ok(());
    };
    let bins = Binaries::get()?;
    let registry = Registry::start()?;
    let repo = unique_name("four");
    let publisher = Cleanup::new(&system);
    let v1 = publish(&publisher, &registry, &repo, "stable", 1)?;
    let (engines, _cleanups, names) = fleet_of(4, system.clone(), &v1.reference)?;
    publish(&publisher, &registry, &repo, "stable", 2)?;
    let hosts: Vec<String> = (0..4).map(|i| format!("host-{i}")).collect();
    let dir = tempfile::Builder::new()
        .prefix("ouroboros-test-four-")
        .tempdir()?;
    let host_refs: Vec<&str> = hosts.iter().map(String::as_str).collect();
    let mut coordinator = Coordinator::init(&bins.coordinator, dir.path(), &host_refs)?;
    let monitor = names.join(",");
    let _server = coordinator.serve_with_env(
        "127.0.0.1:0",
        &[
            ("MONITOR", &monitor),
            ("OUROBOROS_MAX_HOSTS_IN_FLIGHT", "1"),
            ("OUROBOROS_MIN_HEALTHY_TIME", "2"),
        ],
    )?;
    let _agents: Vec<Process> = hosts
        .iter()
        .zip(&engines)
        .map(|(h, e)| coordinator.agent(&bins.agent, h, e))
        .collect::<anyhow::Result<_>>()?;
    coordinator.wait_planned(4)?;
    let event_logs: Vec<EventLog> = engines
        .iter()
        .map(EventLog::start)
        .collect::<anyhow::Result<_>>()?;
    let (code, checked) = coordinator.admin(&["check"])?;
    assert_eq!(code, 0, "{checked}");
    // Each host's update, from its engine's log: the old container's stop to its removal.
    let mut spans: Vec<(u128, u128, String)> = Vec::new();
    for ((event_log, name), host) in event_logs.iter().zip(&names).zip(&hosts) {
        let ev = event_log.events()?;
        let begin = first(&ev, "stop", name).with_context(|| format!("{host}: no stop"))?;
        let old_id = ev
            .iter()
            .find(|e| e.action == "stop" && e.name == *name)
            .map(|e| e.id.clone())
            .unwrap_or_default();
        let end = ev
            .iter()
            .filter(|e| e.action == "destroy" && e.id == old_id)
            .map(|e| e.nanos)
            .max()
            .with_context(|| format!("{host}: old container not removed"))?;
        spans.push((begin, end, host.clone()));
    }
    spans.sort();
    for pair in spans.windows(2) {
        assert!(
            pair[0].1 <= pair[1].0,
            "{} and {} were updating at once: {spans:?}",
            pair[0].2,
            pair[1].2
        );
    }
    Ok(())
}

/// Counts `create` events per container name on each engine from `since` (unix ns) on.
fn creates(
    logs: &[EventLog],
    names: &[String],
    since: u128,
) -> anyhow::Result<BTreeMap<String, usize>> {
    let mut counts = BTreeMap::new();
    for (log, name) in logs.iter().zip(names) {
        let ev = log.events()?;
        counts.insert(
            name.clone(),
            ev.iter()
                .filter(|e| e.action == "create" && e.name == *name && e.nanos >= since)
                .count(),
        );
    }
    Ok(counts)
}

#[test]
fn a_coordinator_killed_mid_rollout_resumes_and_recreates_each_container_once() -> anyhow::Result<()>
{
    let Some(system) = require_engine() else {
        return Ok(());
    };
    let bins = Binaries::get()?;
    let registry = Registry::start()?;
    let repo = unique_name("kill");
    let publisher = Cleanup::new(&system);
    let v1 = publish(&publisher, &registry, &repo, "stable", 1)?;
    let (engines, _cleanups, names) = fleet_of(2, system.clone(), &v1.reference)?;
    let hosts = ["host-a", "host-b"];
    let dir = tempfile::Builder::new()
        .prefix("ouroboros-test-kill-")
        .tempdir()?;
    let mut coordinator = Coordinator::init(&bins.coordinator, dir.path(), &hosts)?;
    let monitor = names.join(",");
    let env = [
        ("MONITOR", monitor.as_str()),
        ("OUROBOROS_MAX_HOSTS_IN_FLIGHT", "1"),
        ("OUROBOROS_BATCH_DELAY", "6"),
        ("OUROBOROS_MIN_HEALTHY_TIME", "3"),
        ("INTERVAL", "3600"),
    ];
    let server = coordinator.serve_with_env("127.0.0.1:0", &env)?;
    let listen = coordinator.url.trim_start_matches("https://").to_owned();
    let agents: Vec<Process> = hosts
        .iter()
        .zip(&engines)
        .map(|(h, e)| coordinator.agent(&bins.agent, h, e))
        .collect::<anyhow::Result<_>>()?;
    let wait_planned = |coordinator: &Coordinator| {
        eventually(CONVERGE, POLL, || {
            let planned = coordinator.json(&["updates"])?;
            let updates = planned
                .as_array()
                .into_iter()
                .flatten()
                .filter(|c| c["decision"] == "update")
                .count();
            ensure!(updates == 2, "{updates} of 2 planned");
            Ok(())
        })
    };
    let run_check = |coordinator: &Coordinator| -> anyhow::Result<Process> {
        Process::spawn(
            &coordinator.bin,
            &[
                "check",
                "--server",
                &coordinator.url,
                "--pki-dir",
                coordinator.pki.to_str().context("pki path")?,
            ],
            &[],
        )
    };
    let wait_completed = |coordinator: &Coordinator, id: &str| {
        eventually(CONVERGE, POLL, || {
            let r = coordinator.json(&["rollouts", id])?;
            let state = r[0]["state"].as_str().unwrap_or_default().to_owned();
            ensure!(state == "completed", "rollout {id} is {state}");
            Ok(())
        })
    };

    let event_logs: Vec<EventLog> = engines
        .iter()
        .map(EventLog::start)
        .collect::<anyhow::Result<_>>()?;

    // 1. Killed between batches: host-a is done, host-b waits for the batch delay.
    publish(&publisher, &registry, &repo, "stable", 2)?;
    wait_planned(&coordinator)?;
    let since = now_nanos();
    let _check = run_check(&coordinator)?;
    server.wait_for_log("Target answered.", CONVERGE)?;
    server.kill9()?;
    drop(server);
    let server = coordinator.serve_with_env(&listen, &env)?;
    server.wait_for_log("Resuming a rollout interrupted by a restart.", CONVERGE)?;
    let rollout = newest_rollout(&coordinator)?;
    let id = rollout["id"].as_str().unwrap_or_default().to_owned();
    wait_completed(&coordinator, &id)?;
    assert_eq!(
        coordinator.json(&["rollouts"])?.as_array().map(Vec::len),
        Some(1),
        "one rollout"
    );
    let counts = creates(&event_logs, &names, since)?;
    assert!(
        counts.values().all(|n| *n == 1),
        "recreated other than once: {counts:?}"
    );

    // 2. Killed right after a command went out: the agent finishes it, the restarted
    // coordinator asks again with the same op id and gets the stored outcome.
    publish(&publisher, &registry, &repo, "stable", 3)?;
    wait_planned(&coordinator)?;
    let since = now_nanos();
    let mark = agents[0].mark();
    let _check = run_check(&coordinator)?;
    agents[0].wait_for_log_since(mark, "Recreate requested.", CONVERGE)?;
    server.kill9()?;
    drop(server);
    let server = coordinator.serve_with_env(&listen, &env)?;
    server.wait_for_log("Resuming a rollout interrupted by a restart.", CONVERGE)?;
    // The command was stored as sent: the same op id goes out again.
    server.wait_for_log(
        "Resuming: asking the agent for the outcome of an operation in flight.",
        CONVERGE,
    )?;
    let rollout = newest_rollout(&coordinator)?;
    let id = rollout["id"].as_str().unwrap_or_default().to_owned();
    wait_completed(&coordinator, &id)?;
    let counts = creates(&event_logs, &names, since)?;
    if !counts.values().all(|n| *n == 1) {
        for (log, name) in event_logs.iter().zip(&names) {
            let ev = log.events()?;
            eprintln!(
                "{name}: {:?}",
                ev.iter()
                    .filter(|e| e.name.starts_with(name.as_str()))
                    .collect::<Vec<_>>()
            );
        }
        for a in &agents {
            eprintln!(
                "{}",
                a.log()
                    .lines()
                    .filter(|l| l.contains("INFO") || l.contains("WARN"))
                    .collect::<Vec<_>>()
                    .join("\n")
            );
        }
    }
    assert!(
        counts.values().all(|n| *n == 1),
        "recreated other than once: {counts:?}"
    );
    // Both hosts end on v3.
    for (engine, name) in engines.iter().zip(&names) {
        let v3 = engine.docker(&["image", "inspect", "--format", "{{.Id}}", &v1.reference])?;
        assert_eq!(engine.inspect(name, "{{.Image}}")?, v3, "{name}");
    }
    Ok(())
}

#[test]
fn with_failure_action_rollback_updated_hosts_go_back_to_their_previous_digest()
-> anyhow::Result<()> {
    let Some(engine_a) = require_engine() else {
        return Ok(());
    };
    let bins = Binaries::get()?;
    let engine_b = Engine::start_extra()?;
    let registry = Registry::start()?;
    let on_a = Cleanup::new(&engine_a);
    let on_b = Cleanup::new(&engine_b);
    // host-a's image gets a good v2, host-b's a v2 that never gets healthy; host-a goes first.
    let (good, bad) = (unique_name("rb-good"), unique_name("rb-bad"));
    let good_v1 = publish(&on_a, &registry, &good, "stable", 1)?;
    let bad_v1 = publish(&on_a, &registry, &bad, "stable", 1)?;
    on_b.track_image(&bad_v1.reference)?;
    let none = ["--network", "none"];
    let a = on_a.run_container("rb-a", &none, &good_v1.reference, &[])?;
    let b = on_b.run_container("rb-b", &none, &bad_v1.reference, &[])?;
    let a_v1_image = engine_a.inspect(&a, "{{.Image}}")?;
    let b_id = engine_b.inspect(&b, "{{.Id}}")?;
    publish(&on_a, &registry, &good, "stable", 2)?;
    publish(
        &on_a,
        &registry,
        &bad,
        "stable",
        ImageSpec::new(2).unhealthy(),
    )?;

    let dir = tempfile::Builder::new()
        .prefix("ouroboros-test-rb-")
        .tempdir()?;
    let mut coordinator = Coordinator::init(&bins.coordinator, dir.path(), &["host-a", "host-b"])?;
    let monitor = format!("{a},{b}");
    let _server = coordinator.serve_with_env(
        "127.0.0.1:0",
        &[
            ("MONITOR", &monitor),
            ("OUROBOROS_MAX_HOSTS_IN_FLIGHT", "1"),
            ("OUROBOROS_HEALTHY_DEADLINE", "5"),
            ("OUROBOROS_FAILURE_ACTION", "rollback"),
        ],
    )?;
    let _agent_a = coordinator.agent(&bins.agent, "host-a", &engine_a)?;
    let _agent_b = coordinator.agent(&bins.agent, "host-b", &engine_b)?;
    coordinator.wait_planned(2)?;
    let (code, checked) = coordinator.admin(&["check"])?;
    assert_eq!(code, 1, "{checked}");
    let rollout = newest_rollout(&coordinator)?;
    assert_eq!(rollout["state"], "rolled-back", "{rollout}");
    assert_eq!(target(&rollout, "host-a")["state"], "reverted", "{rollout}");
    assert_eq!(target(&rollout, "host-b")["state"], "failed", "{rollout}");
    // host-a runs its previous image again, still following its tag.
    assert_eq!(engine_a.inspect(&a, "{{.Image}}")?, a_v1_image);
    assert_eq!(
        engine_a.inspect(&a, "{{.Config.Image}}")?,
        good_v1.reference
    );
    assert_eq!(engine_a.inspect(&a, "{{.State.Running}}")?, "true");
    // host-b's own failure was rolled back by its agent.
    assert_eq!(engine_b.inspect(&b, "{{.Id}}")?, b_id);
    let history = coordinator.json(&["history", "--host", "host-a"])?;
    let results: Vec<&str> = history
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["result"].as_str())
        .collect();
    assert_eq!(results, ["updated", "reverted"], "{history}");
    Ok(())
}

//! Self-update, as it is meant to run: three engines as hosts, each running the agent image
//! (from a registry tag) as a container enrolled by token, the coordinator image (from a tag
//! too) on the first, `SELF_UPDATE` on. In order:
//!
//! 1. A new agent image on the tag replaces every agent container under its original name, one
//!    host at a time, and every host reconnects on the new digest. The coordinator's hooks
//!    (a busybox script at each point, mounted into its container) fire `before_self_update`,
//!    `before_self_cleanup`, `after_self_cleanup` and `after_self_update` for each agent, in
//!    that order.
//! 2. A new coordinator image: the first host's agent replaces the coordinator's container;
//!    the new coordinator resumes from the store (history and `ouroboros_updates_total` carry
//!    on) and every agent reconnects; `before_self_update` and `after_self_update` fire for it.
//! 3. A successor that never connects, and the old agent SIGKILLed while it waits: restarted,
//!    it waits on, abandons at the deadline and removes the successor (one agent container).
//! 4. A successor image that exits at once: rolled back with its cause; the agents go on.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, ensure};
use ouroboros_tests::image::busybox_path;
use ouroboros_tests::{
    Cleanup, Engine, Registry, eventually, http_request, push_image, require_engine, unique_name,
};
use serde_json::Value;

use crate::containers::{CoordinatorContainer, connected_hosts};
use crate::fleet::POLL;
use crate::images::build_images;

/// Builds `FROM base` plus `lines` as `reference` on `engine` (no network: the base is local).
fn derive_image(
    engine: &Engine,
    base: &str,
    lines: &[&str],
    reference: &str,
) -> anyhow::Result<()> {
    let dir = tempfile::Builder::new()
        .prefix("ouroboros-test-selfupdate-")
        .tempdir()?;
    let mut dockerfile = vec![format!("FROM {base}")];
    dockerfile.extend(lines.iter().map(|l| (*l).to_owned()));
    std::fs::write(dir.path().join("Dockerfile"), dockerfile.join("\n") + "\n")?;
    let context = dir.path().display().to_string();
    engine
        .docker(&[
            "build",
            "--quiet",
            "--network",
            "none",
            "--tag",
            reference,
            &context,
        ])
        .with_context(|| format!("building {reference}"))?;
    Ok(())
}

/// Where the hooks directory is mounted in the coordinator's container.
const HOOKS_MOUNT: &str = "/ouroboros-test-hooks";
/// The self-update points.
const SELF_POINTS: [&str; 4] = [
    "before_self_update",
    "before_self_cleanup",
    "after_self_cleanup",
    "after_self_update",
];

/// A hooks directory for a coordinator on `scratch` (no shell): busybox, and at each point a
/// script run by it that appends `POINT JSON` to `fired.log`; all of it readable by the
/// coordinator's user and the log writable.
fn hooks_dir(dir: &Path) -> anyhow::Result<()> {
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))?;
    std::fs::copy(busybox_path(), dir.join("busybox")).context("copying busybox")?;
    let log = dir.join("fired.log");
    std::fs::write(&log, "")?;
    std::fs::set_permissions(&log, std::fs::Permissions::from_mode(0o666))?;
    for point in crate::hooks::POINTS {
        crate::hooks::script(
            &dir.join("points"),
            point,
            "10-record",
            &format!(
                "#!{HOOKS_MOUNT}/busybox sh\nevent=$({HOOKS_MOUNT}/busybox cat)\nprintf '%s %s\\n' \"$OUROBOROS_HOOK\" \"$event\" >> {HOOKS_MOUNT}/fired.log\n"
            ),
        )?;
    }
    Ok(())
}

/// The self-update points fired for `container` so far, in order, with their events.
fn self_points(dir: &Path, container: &str) -> anyhow::Result<Vec<(String, Value)>> {
    let text = std::fs::read_to_string(dir.join("fired.log"))?;
    let mut fired = Vec::new();
    for line in text.lines() {
        let (point, json) = line
            .split_once(' ')
            .with_context(|| format!("bad line {line}"))?;
        if !SELF_POINTS.contains(&point) {
            continue;
        }
        let event: Value =
            serde_json::from_str(json).with_context(|| format!("not JSON: {line}"))?;
        if event["container"] == container {
            fired.push((point.to_owned(), event));
        }
    }
    Ok(fired)
}

/// Names of every container on `engine` (all states).
fn names(engine: &Engine) -> anyhow::Result<Vec<String>> {
    Ok(engine
        .docker(&["ps", "--all", "--format", "{{.Names}}"])?
        .lines()
        .map(str::to_owned)
        .collect())
}

/// Each agent runs `image_id` under its original name, running, with no successor or set-aside
/// container of it left on its engine.
fn agents_run(
    engines: &[Engine],
    agents: &[(String, String)],
    image_id: &str,
) -> anyhow::Result<()> {
    for ((agent, _), engine) in agents.iter().zip(engines) {
        let running = engine.inspect(agent, "{{.Image}} {{.State.Running}}")?;
        ensure!(
            running == format!("{image_id} true"),
            "{agent} on {}: {running}, not {image_id} running",
            engine.host()
        );
        let same_family: Vec<String> = names(engine)?
            .into_iter()
            .filter(|n| n.starts_with(agent.as_str()))
            .collect();
        ensure!(
            same_family == [agent.clone()],
            "{} has {same_family:?} besides one {agent}",
            engine.host()
        );
    }
    Ok(())
}

/// The agent image digest every host reports (from `hosts --output json`).
fn reported_digests(hosts: &Value) -> Vec<String> {
    hosts
        .as_array()
        .into_iter()
        .flatten()
        .map(|h| {
            h["agent_image"]
                .as_str()
                .and_then(|i| i.rsplit_once('@'))
                .map(|(_, d)| d.to_owned())
                .unwrap_or_default()
        })
        .collect()
}

/// The sum of `ouroboros_updates_total` on the coordinator's metrics endpoint.
fn updates_total(coordinator: &CoordinatorContainer) -> anyhow::Result<f64> {
    let text = http_request(&coordinator.metrics, "GET", "/metrics", &[])?.text();
    Ok(text
        .lines()
        .filter(|l| l.starts_with("ouroboros_updates_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum())
}

/// The ids of the rollouts the coordinator remembers.
fn rollout_ids(coordinator: &CoordinatorContainer) -> anyhow::Result<Vec<String>> {
    let (code, out) = coordinator.admin(&["rollouts", "--output", "json"])?;
    ensure!(code == 0, "rollouts: exit {code}: {out}");
    let list: Value = serde_json::from_str(&out).with_context(|| format!("not JSON: {out}"))?;
    Ok(list
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| r["id"].as_str().map(str::to_owned))
        .collect())
}

/// The newest rollout, whole (`rollout ID --output json`).
fn latest_rollout(coordinator: &CoordinatorContainer) -> anyhow::Result<Value> {
    let ids = rollout_ids(coordinator)?;
    let id = ids.first().context("no rollout")?;
    let (code, out) = coordinator.admin(&["rollout", id, "--output", "json"])?;
    ensure!(code == 0, "rollout {id}: exit {code}: {out}");
    let list: Value = serde_json::from_str(&out).with_context(|| format!("not JSON: {out}"))?;
    list.get(0)
        .cloned()
        .with_context(|| format!("no rollout {id}: {out}"))
}

/// Now, for `docker events --since/--until` (unix seconds with nanoseconds).
fn until_now() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    format!("{}.{:09}", now.as_secs(), now.subsec_nanos())
}

#[test]
fn agents_and_the_coordinator_replace_themselves_and_failed_hand_overs_leave_one_agent()
-> anyhow::Result<()> {
    let Some(engine_a) = require_engine() else {
        return Ok(());
    };
    let engines = [engine_a, Engine::start_extra()?, Engine::start_extra()?];
    let cleanups: Vec<Cleanup> = engines.iter().map(Cleanup::new).collect();
    let tag = unique_name("selfupdate");
    let built_agent = format!("ouroboros-agent:{tag}");
    let built_coordinator = format!("ouroboros-coordinator:{tag}");
    cleanups[0].track_image(&built_agent)?;
    cleanups[0].track_image(&built_coordinator)?;
    build_images(&engines[0], &tag)?;

    // Agents and coordinator run registry tags; v1 is what was built.
    let registry = Registry::start()?;
    let agent_ref = registry.reference(&unique_name("ouroboros-agent"), "stable");
    let coordinator_ref = registry.reference(&unique_name("ouroboros-coordinator"), "stable");
    for cleanup in &cleanups {
        cleanup.track_image(&agent_ref)?;
    }
    cleanups[0].track_image(&coordinator_ref)?;
    engines[0].docker(&["tag", &built_agent, &agent_ref])?;
    engines[0].docker(&["tag", &built_coordinator, &coordinator_ref])?;
    let v1 = push_image(&engines[0], &agent_ref)?;
    push_image(&engines[0], &coordinator_ref)?;
    for engine in &engines[1..] {
        engine.docker(&["pull", "--quiet", &agent_ref])?;
    }

    let agent_names: Vec<String> = (0..3).map(|_| unique_name("selfupdate-agent")).collect();
    let coordinator_name = unique_name("selfupdate-coordinator");
    let monitor = format!("MONITOR={},{coordinator_name}", agent_names.join(","));
    let hooks = tempfile::Builder::new()
        .prefix("ouroboros-test-selfupdate-hooks-")
        .tempdir()?;
    hooks_dir(hooks.path())?;
    let hooks_mount = format!("{}:{HOOKS_MOUNT}", hooks.path().display());
    let hooks_env = format!("HOOKS_DIR={HOOKS_MOUNT}/points");
    let coordinator = CoordinatorContainer::start(
        &cleanups[0],
        &coordinator_name,
        &coordinator_ref,
        &[&monitor, "SELF_UPDATE=true", &hooks_env],
        // Its health gate passes in seconds, not the image's 30 s interval.
        &[
            "--health-interval",
            "2s",
            "--health-start-period",
            "1s",
            "-v",
            &hooks_mount,
        ],
    )?;
    let token = coordinator.token(3)?;
    let mut agents = Vec::new();
    for (i, (cleanup, name)) in cleanups.iter().zip(&agent_names).enumerate() {
        agents.push(coordinator.run_agent(
            cleanup,
            &agent_ref,
            name,
            &token,
            &format!("self-host-{i}"),
            &[
                "--restart",
                "unless-stopped",
                "-e",
                "OUROBOROS_HANDOVER_TIMEOUT=30",
            ],
        )?);
    }
    let logs = || {
        let mut logs = format!(
            "coordinator: {}",
            engines[0]
                .docker(&["logs", &coordinator.name])
                .unwrap_or_default()
        );
        for ((agent, _), engine) in agents.iter().zip(&engines) {
            logs.push_str(&format!(
                "\n{agent}: {}",
                engine.docker(&["logs", agent]).unwrap_or_default()
            ));
        }
        logs
    };
    let connected = || connected_hosts(&engines, &coordinator.name, &coordinator.url, &agents, 3);
    let hosts = connected()?;
    ensure!(
        reported_digests(&hosts) == vec![v1.clone(); 3],
        "hosts before: {hosts}"
    );
    let v1_id = engines[0].inspect(&agent_ref, "{{.Id}}")?;
    agents_run(&engines, &agents, &v1_id)?;
    let old_ids: Vec<String> = agents
        .iter()
        .zip(&engines)
        .map(|((agent, _), engine)| engine.inspect(agent, "{{.Id}}"))
        .collect::<anyhow::Result<_>>()?;
    let since = until_now();

    // 1. v2 on the agents' tag (the same binary in another image): every agent replaces
    //    itself, one host at a time.
    derive_image(
        &engines[0],
        &agent_ref,
        &["LABEL org.ouroboros.test.agent=2"],
        &agent_ref,
    )?;
    let v2 = push_image(&engines[0], &agent_ref)?;
    let v2_id = engines[0].inspect(&agent_ref, "{{.Id}}")?;
    cleanups[0].track_image_id(&v1_id)?;
    let (code, out) = coordinator.admin(&["check", "--output", "json"])?;
    ensure!(code == 0, "check: exit {code}: {out}\n{}", logs());
    agents_run(&engines, &agents, &v2_id).with_context(|| format!("{out}\n{}", logs()))?;
    eventually(Duration::from_secs(60), POLL, || {
        let hosts = connected()?;
        ensure!(
            reported_digests(&hosts) == vec![v2.clone(); 3],
            "hosts: {hosts}"
        );
        Ok(())
    })
    .with_context(logs)?;
    // One host at a time, as the engines saw it: each hand-over runs from the successor's
    // creation to the old agent's removal, and no two of these overlap.
    let mut spans = Vec::new();
    for (((agent, _), engine), old_id) in agents.iter().zip(&engines).zip(&old_ids) {
        let new_id = engine.inspect(agent, "{{.Id}}")?;
        let at = |id: &str, event: &str| -> anyhow::Result<i64> {
            let out = engine.docker(&[
                "events",
                "--since",
                &since,
                "--until",
                &until_now(),
                "--filter",
                &format!("container={id}"),
                "--filter",
                &format!("event={event}"),
                "--format",
                "{{.TimeNano}}",
            ])?;
            out.lines()
                .next()
                .and_then(|l| l.trim().parse().ok())
                .with_context(|| format!("no {event} event of {id} on {}", engine.host()))
        };
        spans.push((at(&new_id, "create")?, at(old_id, "destroy")?));
    }
    for (i, a) in spans.iter().enumerate() {
        for b in &spans[i + 1..] {
            ensure!(
                a.1 <= b.0 || b.1 <= a.0,
                "two hand-overs overlapped: {spans:?}"
            );
        }
    }
    // The self-update hook points, for each agent in order, on its host; the cleanup pair
    // about the image the successor runs.
    for (i, (agent, _)) in agents.iter().enumerate() {
        let fired = self_points(hooks.path(), agent)?;
        let points: Vec<&str> = fired.iter().map(|(p, _)| p.as_str()).collect();
        ensure!(points == SELF_POINTS, "{agent}: {fired:?}\n{}", logs());
        for (point, event) in &fired {
            ensure!(
                event["host"] == format!("self-host-{i}"),
                "{point}: {event}"
            );
        }
        for (point, event) in &fired[1..3] {
            ensure!(event["image"] == agent_ref.as_str(), "{point}: {event}");
        }
        ensure!(fired[3].1["outcome"] == "updated", "{:?}", fired[3]);
    }

    // 2. v2 of the coordinator: its host's agent replaces it; the new one resumes.
    let history_before = rollout_ids(&coordinator)?;
    let counted_before = updates_total(&coordinator)?;
    let c1_id = engines[0].inspect(&coordinator_ref, "{{.Id}}")?;
    derive_image(
        &engines[0],
        &coordinator_ref,
        &["LABEL org.ouroboros.test.coordinator=2"],
        &coordinator_ref,
    )?;
    push_image(&engines[0], &coordinator_ref)?;
    let c2_id = engines[0].inspect(&coordinator_ref, "{{.Id}}")?;
    cleanups[0].track_image_id(&c1_id)?;
    // The CLI's connection ends with the coordinator it talks to.
    let (code, out) = coordinator.admin(&["check", "--output", "json"])?;
    println!("check during the coordinator's self-update: exit {code}: {out}");
    eventually(Duration::from_secs(120), POLL, || {
        let running = engines[0].inspect(&coordinator.name, "{{.Image}} {{.State.Running}}")?;
        ensure!(running == format!("{c2_id} true"), "coordinator: {running}");
        connected()?;
        let ids = rollout_ids(&coordinator)?;
        ensure!(
            history_before.iter().all(|id| ids.contains(id))
                && ids.len() == history_before.len() + 1,
            "history before {history_before:?}, now {ids:?}"
        );
        let rollout = latest_rollout(&coordinator)?;
        ensure!(
            rollout["state"] == "completed",
            "the coordinator's rollout ends: {rollout}"
        );
        Ok(())
    })
    .with_context(logs)?;
    // Its hooks: before on the old coordinator, after on the new one; no cleanup points (its
    // agent recreated it like any container).
    eventually(Duration::from_secs(30), POLL, || {
        let fired = self_points(hooks.path(), &coordinator.name)?;
        let points: Vec<&str> = fired.iter().map(|(p, _)| p.as_str()).collect();
        ensure!(
            points == ["before_self_update", "after_self_update"],
            "{fired:?}"
        );
        Ok(())
    })
    .with_context(logs)?;
    let counted_after = updates_total(&coordinator)?;
    ensure!(
        counted_after == counted_before + 1.0,
        "ouroboros_updates_total {counted_before} before, {counted_after} after (its own update counted once)"
    );

    // 3. A successor that never connects (another coordinator address), and the old agent
    //    SIGKILLed while it waits for it: once started again it waits on, abandons the
    //    hand-over at the deadline and removes the successor.
    derive_image(
        &engines[0],
        &agent_ref,
        &[
            r#"ENTRYPOINT ["/usr/local/bin/ouroboros-agent", "--coordinator", "https://127.0.0.1:9"]"#,
        ],
        &agent_ref,
    )?;
    push_image(&engines[0], &agent_ref)?;
    cleanups[0].track_image_id(&v2_id)?;
    let first = &agents[0].0;
    let killer = {
        let (engine, first) = (engines[0].clone(), first.clone());
        std::thread::spawn(move || -> anyhow::Result<()> {
            let prefix = format!("{first}-ouroboros-next-");
            eventually(Duration::from_secs(60), POLL, || {
                let successor = names(&engine)?.into_iter().find(|n| n.starts_with(&prefix));
                let successor = successor.context("no successor yet")?;
                ensure!(
                    engine.inspect(&successor, "{{.State.Running}}")? == "true",
                    "not running yet"
                );
                Ok(())
            })?;
            engine.docker(&["kill", "--signal", "KILL", &first])?;
            engine.docker(&["start", &first])?;
            Ok(())
        })
    };
    let (code, out) = coordinator.admin(&["check", "--output", "json"])?;
    println!("check with a successor that never connects: exit {code}: {out}");
    killer.join().expect("killer thread")?;
    eventually(Duration::from_secs(90), POLL, || {
        agents_run(&engines, &agents, &v2_id)?;
        connected()?;
        Ok(())
    })
    .with_context(logs)?;
    let rollout = latest_rollout(&coordinator)?;
    ensure!(
        rollout.to_string().contains("did not take over"),
        "the cause is reported: {rollout}\n{}",
        logs()
    );
    let id = rollout["id"].as_str().unwrap_or_default();
    let (code, out) = coordinator.admin(&["rollout", "cancel", id])?;
    ensure!(code == 0, "rollout cancel: exit {code}: {out}");

    // 4. A successor that exits at once: rolled back with its cause; every agent goes on.
    derive_image(
        &engines[0],
        &agent_ref,
        &[r#"ENTRYPOINT ["/usr/local/bin/ouroboros-agent", "--no-such-flag"]"#],
        &agent_ref,
    )?;
    push_image(&engines[0], &agent_ref)?;
    let (code, out) = coordinator.admin(&["check", "--output", "json"])?;
    println!("check with an exiting successor: exit {code}: {out}");
    ensure!(
        out.contains("successor agent exited"),
        "the rollback is reported with its cause: {out}\n{}",
        logs()
    );
    eventually(Duration::from_secs(30), POLL, || {
        agents_run(&engines, &agents, &v2_id)?;
        connected()?;
        Ok(())
    })
    .with_context(logs)?;
    // Neither failed hand-over reached a cleanup point (no successor connected): the first
    // agent's self-update points are its first update's and two more before/after pairs.
    let points: Vec<String> = self_points(hooks.path(), first)?
        .into_iter()
        .map(|(p, _)| p)
        .collect();
    ensure!(
        points
            == [
                &SELF_POINTS[..],
                &["before_self_update", "after_self_update"],
                &["before_self_update", "after_self_update"],
            ]
            .concat(),
        "{points:?}"
    );
    for cleanup in cleanups.iter().rev() {
        cleanup.remove_all()?;
    }
    Ok(())
}

#[test]
fn up_in_a_container_updates_itself_through_an_updater_container() -> anyhow::Result<()> {
    let Some(engine) = require_engine() else {
        return Ok(());
    };
    let cleanup = Cleanup::new(&engine);
    let tag = unique_name("selfupdate-up");
    let built = format!("ouroboros-coordinator:{tag}");
    cleanup.track_image(&built)?;
    cleanup.track_image(&format!("ouroboros-agent:{tag}"))?;
    build_images(&engine, &tag)?;
    let registry = Registry::start()?;
    let up_ref = registry.reference(&unique_name("ouroboros-up"), "stable");
    cleanup.track_image(&up_ref)?;
    engine.docker(&["tag", &built, &up_ref])?;
    push_image(&engine, &up_ref)?;
    let v1_id = engine.inspect(&up_ref, "{{.Id}}")?;

    // `up` in a container, as root for the socket, from the registry tag, watching itself.
    let free_port = || -> anyhow::Result<u16> {
        Ok(std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port())
    };
    let port = free_port()?;
    let url = format!("https://127.0.0.1:{port}");
    let name = unique_name("selfupdate-up");
    let volume = cleanup.create_volume("selfupdate-up")?;
    let socket = engine
        .socket()
        .context("the engine here listens on a unix socket")?;
    let (socket_mount, data_mount) = (
        format!("{}:/var/run/docker.sock", socket.display()),
        format!("{volume}:/var/lib/ouroboros"),
    );
    let (listen, metrics, monitor) = (
        format!("OUROBOROS_LISTEN=127.0.0.1:{port}"),
        format!("PROMETHEUS_PORT={}", free_port()?),
        format!("MONITOR={name}"),
    );
    cleanup.run_named(
        &name,
        &[
            "--user",
            "0",
            "--network",
            "host",
            "-v",
            &socket_mount,
            "-v",
            &data_mount,
            "-e",
            &listen,
            "-e",
            &metrics,
            "-e",
            &monitor,
            "-e",
            "SELF_UPDATE=true",
            "-e",
            "OUROBOROS_INTERVAL=3600",
            "--health-interval",
            "2s",
            "--health-start-period",
            "1s",
        ],
        &up_ref,
        &["up"],
    )?;
    let admin = |args: &[&str]| -> anyhow::Result<(i32, String)> {
        crate::containers::admin(&engine, &name, &url, args)
    };
    let logs = || engine.docker(&["logs", &name]).unwrap_or_default();
    eventually(Duration::from_secs(60), POLL, || {
        let (code, out) = admin(&["hosts", "--output", "json"])?;
        ensure!(
            code == 0 && out.contains("\"connected\": true"),
            "hosts: {out}"
        );
        Ok(())
    })
    .with_context(logs)?;

    // v2 on its tag: the updater recreates `up`'s container; the new `up` ends the rollout.
    derive_image(
        &engine,
        &up_ref,
        &["LABEL org.ouroboros.test.up=2"],
        &up_ref,
    )?;
    push_image(&engine, &up_ref)?;
    let v2_id = engine.inspect(&up_ref, "{{.Id}}")?;
    cleanup.track_image_id(&v1_id)?;
    let (code, out) = admin(&["check", "--output", "json"])?;
    println!("check during up's self-update: exit {code}: {out}");
    let updater_prefix = format!("{name}-ouroboros-updater-");
    eventually(Duration::from_secs(180), POLL, || {
        let running = engine.inspect(&name, "{{.Image}} {{.State.Running}}")?;
        ensure!(running == format!("{v2_id} true"), "{name}: {running}");
        let (code, out) = admin(&["rollouts", "--output", "json"])?;
        ensure!(code == 0, "rollouts: exit {code}: {out}");
        let rollouts: Value = serde_json::from_str(&out)?;
        ensure!(rollouts[0]["state"] == "completed", "rollouts: {out}");
        let leftovers: Vec<String> = names(&engine)?
            .into_iter()
            .filter(|n| n.starts_with(name.as_str()) && n != &name)
            .collect();
        ensure!(leftovers.is_empty(), "left: {leftovers:?}");
        Ok(())
    })
    .with_context(|| {
        let updater = names(&engine)
            .unwrap_or_default()
            .into_iter()
            .find(|n| n.starts_with(&updater_prefix))
            .map(|u| engine.docker(&["logs", &u]).unwrap_or_default())
            .unwrap_or_default();
        format!("up: {}\nupdater: {updater}", logs())
    })?;
    cleanup.remove_all()
}

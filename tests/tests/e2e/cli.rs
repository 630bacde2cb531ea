//! The admin CLI against a live rollout: `rollout ID --watch` follows the server stream,
//! printing each target's transitions, and exits 0 when the rollout completes, 1 when it
//! fails; on a terminal (a pseudo-terminal made by `script`) it draws a progress display.
//! `status`, `pause` and `resume` on the same fleet.

use std::process::Command;
use std::time::Duration;

use anyhow::{Context, ensure};
use ouroboros_tests::{
    Binaries, Cleanup, ImageSpec, Process, Registry, eventually, publish, require_engine,
    unique_name,
};
use serde_json::Value;

use crate::fleet::Coordinator;

const CONVERGE: Duration = Duration::from_secs(90);
const POLL: Duration = Duration::from_millis(100);

/// The id of the rollout running now.
fn running_rollout(coordinator: &Coordinator) -> anyhow::Result<String> {
    let mut id = String::new();
    eventually(CONVERGE, POLL, || {
        let all = coordinator.json(&["rollouts"])?;
        let running = all
            .as_array()
            .into_iter()
            .flatten()
            .find(|r| r["state"] == "running")
            .context("no running rollout yet")?;
        id = running["id"].as_str().unwrap_or_default().to_owned();
        Ok(())
    })?;
    Ok(id)
}

fn admin_args(coordinator: &Coordinator) -> anyhow::Result<Vec<String>> {
    Ok(vec![
        "--server".into(),
        coordinator.url.clone(),
        "--pki-dir".into(),
        coordinator.pki.to_str().context("pki path")?.to_owned(),
    ])
}

/// Runs `rollout ID --watch` on a pseudo-terminal (`script`), in the background.
fn watch_on_terminal(
    coordinator: &Coordinator,
    id: &str,
    no_color: bool,
) -> anyhow::Result<Process> {
    let mut line = format!(
        "{} rollout {id} --watch",
        coordinator.bin.to_str().context("bin path")?
    );
    for a in admin_args(coordinator)? {
        line.push(' ');
        line.push_str(&a);
    }
    let mut command = Command::new("script");
    command
        .args(["-qefc", &line, "/dev/null"])
        .env("TERM", "xterm")
        .env_remove("NO_COLOR");
    if no_color {
        command.env("NO_COLOR", "1");
    }
    Process::spawn_command(command)
}

fn wait_exit(p: &Process, within: Duration) -> anyhow::Result<i32> {
    let deadline = std::time::Instant::now() + within;
    loop {
        if let Some(status) = p.try_status()? {
            return Ok(status.code().unwrap_or(-1));
        }
        ensure!(
            std::time::Instant::now() < deadline,
            "still running: {}",
            p.log_tail(20)
        );
        std::thread::sleep(POLL);
    }
}

#[test]
fn watch_follows_a_rollout_to_its_end_and_status_pause_resume_work() -> anyhow::Result<()> {
    let Some(engine) = require_engine() else {
        return Ok(());
    };
    let bins = Binaries::get()?;
    let registry = Registry::start()?;
    let on = Cleanup::new(&engine);
    let repo = unique_name("watch");
    let v1 = publish(&on, &registry, &repo, "stable", 1)?;
    let none = ["--network", "none"];
    let c1 = on.run_container("watch-1", &none, &v1.reference, &[])?;
    let c2 = on.run_container("watch-2", &none, &v1.reference, &[])?;
    publish(&on, &registry, &repo, "stable", 2)?;

    let dir = tempfile::Builder::new()
        .prefix("ouroboros-test-watch-")
        .tempdir()?;
    let mut coordinator = Coordinator::init(&bins.coordinator, dir.path(), &["host-a"])?;
    let monitor = format!("{c1},{c2}");
    let _server = coordinator.serve_with_env(
        "127.0.0.1:0",
        &[
            ("MONITOR", &monitor),
            ("OUROBOROS_MIN_HEALTHY_TIME", "3"),
            ("OUROBOROS_HEALTHY_DEADLINE", "8"),
        ],
    )?;
    let _agent = coordinator.agent(&bins.agent, "host-a", &engine)?;
    coordinator.wait_planned(2)?;
    // status before: two updates pending, nothing paused.
    let status = coordinator.json(&["status"])?;
    assert_eq!(status["hosts_connected"], 1, "{status}");
    assert_eq!(status["updates_pending"], 2, "{status}");
    assert_eq!(status["paused"], false, "{status}");

    // A rollout that completes: watched plain and on a terminal at once.
    let args = admin_args(&coordinator)?;
    let mut check = vec!["check".to_owned()];
    check.extend(args.clone());
    let check_refs: Vec<&str> = check.iter().map(String::as_str).collect();
    let _check = Process::spawn(&coordinator.bin, &check_refs, &[])?;
    let id = running_rollout(&coordinator)?;
    let terminal = watch_on_terminal(&coordinator, &id, false)?;
    let colourless = watch_on_terminal(&coordinator, &id, true)?;
    let plain = Command::new(&coordinator.bin)
        .args(["rollout", &id, "--watch"])
        .args(&args)
        .output()?;
    let text = String::from_utf8_lossy(&plain.stdout);
    assert_eq!(
        plain.status.code(),
        Some(0),
        "{text}{}",
        String::from_utf8_lossy(&plain.stderr)
    );
    for c in [&c1, &c2] {
        for state in ["updating", "updated"] {
            assert!(
                text.lines()
                    .any(|l| l.contains(&format!("host-a/{c}  {state}"))),
                "no {state} line for {c}:\n{text}"
            );
        }
    }
    assert!(text.contains(&format!("rollout {id}: completed")), "{text}");
    assert!(
        !text.contains('\u{1b}'),
        "escape sequences off a terminal:\n{text}"
    );
    assert_eq!(wait_exit(&terminal, CONVERGE)?, 0, "{}", terminal.log());
    let shown = terminal.log();
    assert!(
        shown.contains("\u{1b}[") && shown.contains("[##############################] 2/2"),
        "{shown}"
    );
    assert!(
        shown.contains("\u{1b}[32mcompleted\u{1b}[0m"),
        "no colour on a terminal:\n{shown}"
    );
    // NO_COLOR: the same display, without colour.
    assert_eq!(wait_exit(&colourless, CONVERGE)?, 0, "{}", colourless.log());
    let plain_display = colourless.log();
    assert!(plain_display.contains("] 2/2"), "{plain_display}");
    assert!(
        !plain_display.contains("\u{1b}[32m"),
        "colour despite NO_COLOR:\n{plain_display}"
    );

    // pause: a new cycle updates nothing; status says so; resume lets it run again.
    let paused = Command::new(&coordinator.bin)
        .args(["pause", "--reason", "change freeze"])
        .args(&args)
        .output()?;
    assert_eq!(paused.status.code(), Some(0));
    let status: Value = coordinator.json(&["status"])?;
    assert_eq!(status["paused"], true, "{status}");
    assert_eq!(status["paused_reason"], "change freeze", "{status}");
    publish(
        &on,
        &registry,
        &repo,
        "stable",
        ImageSpec::new(3).unhealthy(),
    )?;
    let before = engine.inspect(&c1, "{{.Id}}")?;
    let (_, checked) = coordinator.admin(&["check"])?;
    let row = checked
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["container"] == c1.as_str())
        .cloned()
        .unwrap_or_default();
    assert!(
        row["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("updates are paused by the operator: change freeze"),
        "{checked}"
    );
    assert_eq!(engine.inspect(&c1, "{{.Id}}")?, before);
    let resumed = Command::new(&coordinator.bin)
        .arg("resume")
        .args(&args)
        .output()?;
    assert_eq!(
        resumed.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&resumed.stderr)
    );
    assert_eq!(coordinator.json(&["status"])?["paused"], false);

    // A rollout that fails (v3 never gets healthy): the watch exits 1.
    let _check = Process::spawn(&coordinator.bin, &check_refs, &[])?;
    let id = running_rollout(&coordinator)?;
    let watched = Command::new(&coordinator.bin)
        .args(["rollout", &id, "--watch"])
        .args(&args)
        .output()?;
    let text = String::from_utf8_lossy(&watched.stdout);
    assert_eq!(watched.status.code(), Some(1), "{text}");
    assert!(text.lines().any(|l| l.contains("  failed")), "{text}");
    assert!(text.contains(&format!("rollout {id}: paused")), "{text}");
    Ok(())
}

//! Inside an update, end to end: a container's own lifecycle commands (labels) through the
//! coordinator (`pre-update` exit 75 reported `vetoed`, `post-update` in the new container),
//! and an agent cut off from the coordinator while a `before_*` hook runs, which takes no step.

use std::time::Duration;

use anyhow::ensure;
use ouroboros_tests::{Binaries, Cleanup, Registry, publish, require_engine, unique_name};

use crate::fleet::Coordinator;
use crate::hooks::{row, script};
use crate::rollout::newest_rollout;

#[test]
fn a_container_pre_update_exiting_75_is_reported_vetoed_and_post_update_runs_in_the_new_one()
-> anyhow::Result<()> {
    let Some(engine) = require_engine() else {
        return Ok(());
    };
    let bins = Binaries::get()?;
    let registry = Registry::start()?;
    let on = Cleanup::new(&engine);
    let repo = unique_name("hooklc");
    let v1 = publish(&on, &registry, &repo, "stable", 1)?;
    let out = tempfile::Builder::new()
        .prefix("ouroboros-test-hooklc-")
        .tempdir()?;
    let bind = format!("{}:/out", out.path().display());
    let busy = on.run_container(
        "hook-busy",
        &[
            "--network",
            "none",
            "--label",
            "com.centurylinklabs.watchtower.lifecycle.pre-update=echo busy till midnight; exit 75",
        ],
        &v1.reference,
        &[],
    )?;
    let post = "com.ouroboros.hook.post-update=if [ -e /old-marker ]; then echo old; else echo new; fi > /out/post";
    let pre = "com.ouroboros.hook.pre-update=touch /old-marker";
    let willing = on.run_container(
        "hook-willing",
        &[
            "--network",
            "none",
            "-v",
            &bind,
            "--label",
            pre,
            "--label",
            post,
        ],
        &v1.reference,
        &[],
    )?;
    let (busy_id, willing_id) = (
        engine.inspect(&busy, "{{.Id}}")?,
        engine.inspect(&willing, "{{.Id}}")?,
    );
    publish(&on, &registry, &repo, "stable", 2)?;

    let dir = tempfile::Builder::new()
        .prefix("ouroboros-test-hooklc-")
        .tempdir()?;
    let mut coordinator = Coordinator::init(&bins.coordinator, dir.path(), &["host-a"])?;
    let monitor = format!("{busy},{willing}");
    let _server = coordinator.serve_with_env(
        "127.0.0.1:0",
        &[("MONITOR", &monitor), ("OUROBOROS_FAILURE_ACTION", "pause")],
    )?;
    let _agent = coordinator.agent(&bins.agent, "host-a", &engine)?;
    coordinator.wait_planned(2)?;
    let (code, checked) = coordinator.admin(&["check"])?;
    assert_eq!(code, 0, "a skip is no failure: {checked}");
    let r = row(&checked, &busy)?;
    assert_eq!(r["status"], "vetoed", "{r}");
    assert_eq!(
        r["result_reason"],
        "skipped by the container's pre-update command (exit 75: busy till midnight)"
    );
    assert_eq!(engine.inspect(&busy, "{{.Id}}")?, busy_id, "busy changed");
    assert_eq!(row(&checked, &willing)?["status"], "updated");
    assert_ne!(engine.inspect(&willing, "{{.Id}}")?, willing_id);
    assert_eq!(std::fs::read_to_string(out.path().join("post"))?, "new\n");
    assert_eq!(newest_rollout(&coordinator)?["state"], "completed");
    Ok(())
}

#[test]
fn an_agent_cut_off_while_a_before_hook_runs_takes_no_step() -> anyhow::Result<()> {
    let Some(engine) = require_engine() else {
        return Ok(());
    };
    let bins = Binaries::get()?;
    let registry = Registry::start()?;
    let on = Cleanup::new(&engine);
    let repo = unique_name("hookcut");
    let v1 = publish(&on, &registry, &repo, "stable", 1)?;
    let web = on.run_container("hook-cut", &["--network", "none"], &v1.reference, &[])?;
    let label = format!("com.ouroboros.depends_on={web}");
    let soft = on.run_container(
        "hook-cut-soft",
        &["--network", "none", "--label", &label],
        &v1.reference,
        &[],
    )?;
    let (web_id, soft_id) = (
        engine.inspect(&web, "{{.Id}}")?,
        engine.inspect(&soft, "{{.Id}}")?,
    );
    let soft_started = engine.inspect(&soft, "{{.State.StartedAt}}")?;
    publish(&on, &registry, &repo, "stable", 2)?;

    let dir = tempfile::Builder::new()
        .prefix("ouroboros-test-hookcut-")
        .tempdir()?;
    let hooks = dir.path().join("hooks");
    let asked = dir.path().join("asked");
    script(
        &hooks,
        "before_stop_depends_container",
        "10-slow",
        &format!("#!/bin/sh\necho $$ > {}\nexec sleep 60\n", asked.display()),
    )?;
    let mut coordinator = Coordinator::init(&bins.coordinator, dir.path(), &["host-a"])?;
    let hooks_dir = hooks.display().to_string();
    let server = coordinator.serve_with_env(
        "127.0.0.1:0",
        &[("MONITOR", &web), ("HOOKS_DIR", &hooks_dir)],
    )?;
    let agent = coordinator.agent(&bins.agent, "host-a", &engine)?;
    coordinator.wait_planned(1)?;
    let check = {
        let (bin, url, pki) = (
            coordinator.bin.clone(),
            coordinator.url.clone(),
            coordinator.pki.clone(),
        );
        std::thread::spawn(move || {
            std::process::Command::new(bin)
                .args(["check", "--server", &url, "--pki-dir"])
                .arg(pki)
                .output()
        })
    };
    // The agent asked, the coordinator runs the hook: the coordinator goes away.
    ouroboros_tests::eventually(Duration::from_secs(60), Duration::from_millis(100), || {
        ensure!(asked.exists(), "the hook was not asked for");
        Ok(())
    })?;
    server.kill9()?;
    let _ = check.join();
    // The hook the killed coordinator left behind (its own process group) goes too.
    let hook_pid = std::fs::read_to_string(&asked)?;
    let _ = std::process::Command::new("kill")
        .args(["-9", hook_pid.trim()])
        .status();
    ouroboros_tests::eventually(Duration::from_secs(30), Duration::from_millis(200), || {
        ensure!(
            agent
                .log()
                .lines()
                .any(|l| l.contains("Hook point vetoed") && l.contains("no verdict")),
            "no veto in the agent's log:\n{}",
            agent.log_tail(30)
        );
        Ok(())
    })?;
    // Nothing changed: neither the container nor its dependant was stopped.
    assert_eq!(engine.inspect(&web, "{{.Id}}")?, web_id);
    assert_eq!(engine.inspect(&web, "{{.State.Running}}")?, "true");
    assert_eq!(engine.inspect(&soft, "{{.Id}}")?, soft_id);
    assert_eq!(engine.inspect(&soft, "{{.State.StartedAt}}")?, soft_started);
    Ok(())
}

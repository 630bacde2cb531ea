//! What keeps a container from being left down besides the sequence itself, on a real engine:
//! the stop signal reaches the container on API 1.41 too, a bad one refuses the update;
//! recovery waits for a stop the engine is still carrying out and believes only what it sees;
//! an unreadable journal entry does not block the others; an old container whose removal
//! failed is reported set aside and removed at the next start; a stopping agent brings the
//! operation to a safe point.

use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use ouroboros_agent::recreate::journal::{Outcome, Step};
use ouroboros_tests::{ImageSpec, require_engine};

use crate::recreate::{DEADLINES, Setup, request};

/// A main process that records SIGUSR1 in `/out/got` and exits on it, and ignores SIGTERM (so
/// only the configured signal stops it before its timeout).
const USR1_ONLY: &str = "trap 'echo usr1 > /out/got; exit 0' USR1; trap '' TERM; \
                         while :; do sleep 1 & wait $!; done";

#[tokio::test]
async fn the_stop_signal_label_is_sent_on_every_api_version() -> anyhow::Result<()> {
    let Some(engine) = require_engine() else {
        return Ok(());
    };
    let s = Setup::new(engine).await?;
    let out = tempfile::Builder::new()
        .prefix("ouroboros-test-signal-")
        .tempdir()?;
    let bind = format!("{}:/out", out.path().display());
    let name = s.cleanup.run_container(
        "sf-usr1",
        &[
            "--network",
            "none",
            "-v",
            &bind,
            "--stop-timeout",
            "20",
            "--restart",
            "always",
            "--label",
            "com.ouroboros.stop_signal=SIGUSR1",
        ],
        &s.v1.reference,
        &["sh", "-c", USR1_ONLY],
    )?;
    s.publish_next(ImageSpec::new(2))?;
    let started = Instant::now();
    let outcome = s.recreator.recreate(&request("op-usr1", &name)).await?;
    let took = started.elapsed();
    ensure!(matches!(outcome, Outcome::Updated { .. }), "{outcome:?}");
    let got = std::fs::read_to_string(out.path().join("got")).context("no SIGUSR1 recorded")?;
    ensure!(got.trim() == "usr1", "{got}");
    // It exited by itself on the signal, long before its 20 s timeout and a SIGKILL.
    ensure!(
        took < Duration::from_secs(15),
        "the stop waited for the timeout: {took:?}"
    );
    Ok(())
}

#[tokio::test]
async fn an_invalid_stop_signal_refuses_the_update_and_touches_nothing() -> anyhow::Result<()> {
    let Some(engine) = require_engine() else {
        return Ok(());
    };
    let s = Setup::new(engine).await?;
    let name = s.cleanup.run_container(
        "sf-badsig",
        &[
            "--network",
            "none",
            "--label",
            "com.ouroboros.stop_signal=SIGFOO",
        ],
        &s.v1.reference,
        &[],
    )?;
    let id = s.inspect(&name, "{{.Id}}")?;
    let started_at = s.inspect(&name, "{{.State.StartedAt}}")?;
    let v2 = s.publish_next(ImageSpec::new(2))?;
    let outcome = s.recreator.recreate(&request("op-badsig", &name)).await?;
    match &outcome {
        Outcome::Refused { reason } => ensure!(
            reason.contains("com.ouroboros.stop_signal") && reason.contains("SIGFOO"),
            "{reason}"
        ),
        other => anyhow::bail!("expected a refusal, got {other:?}"),
    }
    s.assert_old_restored(&name, &id)?;
    ensure!(
        s.inspect(&name, "{{.State.StartedAt}}")? == started_at,
        "restarted"
    );
    // Refused before the pull: the new image is not even here.
    ensure!(
        s.engine
            .docker(&["image", "inspect", &v2.pinned()])
            .is_err(),
        "pulled although refused"
    );
    Ok(())
}

/// The engine goes on stopping a container after the client died; recovery must wait for
/// that stop to end before it starts the container again, else the engine kills it later.
#[tokio::test]
async fn recovery_waits_for_a_stop_still_under_way() -> anyhow::Result<()> {
    let Some(engine) = require_engine() else {
        return Ok(());
    };
    let s = Setup::new(engine).await?;
    let name = s.cleanup.run_container(
        "sf-slow",
        &["--network", "none", "--stop-timeout", "3"],
        &s.v1.reference,
        &[
            "sh",
            "-c",
            "trap '' TERM; while :; do sleep 1 & wait $!; done",
        ],
    )?;
    let id = s.inspect(&name, "{{.Id}}")?;
    s.publish_next(ImageSpec::new(2))?;
    let recreator = s.restarted()?;
    let op = "op-slow";
    let updating = {
        let request = request(op, &name);
        tokio::spawn(async move { recreator.recreate(&request).await })
    };
    // The agent "dies" while the engine stops the container.
    let journal = ouroboros_agent::recreate::journal::Journal::open(s.journal_dir.path())?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let stopping = journal.get(op)?.is_some_and(|e| e.step == Step::Stopping);
        if stopping {
            break;
        }
        ensure!(Instant::now() < deadline, "never reached the stop");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    updating.abort();
    let recovered = s.restarted()?.recover().await?;
    ensure!(
        matches!(recovered.operations[0].1, Outcome::RolledBack { .. }),
        "{recovered:?}"
    );
    // Running, and still running well past the 3 s stop timeout.
    let until = Instant::now() + Duration::from_secs(5);
    while Instant::now() < until {
        ensure!(
            s.inspect(&name, "{{.State.Running}}")? == "true",
            "the container was stopped after recovery: {}",
            s.inspect(&name, "{{.State.Status}} {{.State.ExitCode}}")?
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    s.assert_old_restored(&name, &id)?;
    Ok(())
}

#[tokio::test]
async fn an_unreadable_journal_entry_does_not_block_recovery() -> anyhow::Result<()> {
    use ouroboros_agent::recreate::faults::{CrashMode, CrashPoint};
    let Some(engine) = require_engine() else {
        return Ok(());
    };
    let s = Setup::new(engine).await?;
    let name =
        s.cleanup
            .run_container("sf-journal", &["--network", "none"], &s.v1.reference, &[])?;
    let id = s.inspect(&name, "{{.Id}}")?;
    s.publish_next(ImageSpec::new(2))?;
    let crashing = s
        .restarted()?
        .with_crash(CrashPoint::AfterCreate, CrashMode::Return);
    ensure!(
        crashing
            .recreate(&request("op-journal", &name))
            .await
            .is_err()
    );
    // Another version's entry, and a damaged one.
    let dir = s.journal_dir.path().join("journal");
    std::fs::write(
        dir.join("op-future.json"),
        br#"{"op_id":"op-future","step":"teleporting"}"#,
    )?;
    std::fs::write(dir.join("op-torn.json"), b"{\"op_id\": \"op-to")?;
    let recovered = s.restarted()?.recover().await?;
    ensure!(recovered.operations.len() == 1, "{recovered:?}");
    ensure!(
        matches!(recovered.operations[0].1, Outcome::RolledBack { .. }),
        "{recovered:?}"
    );
    s.assert_old_restored(&name, &id)?;
    ensure!(recovered.alerts.len() == 2, "{:?}", recovered.alerts);
    for alert in &recovered.alerts {
        ensure!(alert.message.contains("quarantine"), "{alert:?}");
    }
    ensure!(dir.join("quarantine/op-future.json").exists());
    ensure!(dir.join("quarantine/op-torn.json").exists());
    Ok(())
}

#[tokio::test]
async fn an_old_container_that_could_not_be_removed_is_reported_and_removed_later()
-> anyhow::Result<()> {
    let Some(engine) = require_engine() else {
        return Ok(());
    };
    let s = Setup::new(engine).await?;
    let name = s
        .cleanup
        .run_container("sf-left", &["--network", "none"], &s.v1.reference, &[])?;
    let old_id = s.inspect(&name, "{{.Id}}")?;
    s.publish_next(ImageSpec::new(2))?;
    let failing = s.restarted()?.with_failing_removal();
    let outcome = failing.recreate(&request("op-left", &name)).await?;
    ensure!(matches!(outcome, Outcome::Updated { .. }), "{outcome:?}");
    ensure!(
        s.inspect(&old_id, "{{.Name}}")?.contains("-ouroboros-old-"),
        "the old container is not set aside"
    );
    // The inventory says why it is there.
    let inventory = s
        .agent_engine
        .inventory(|| failing.journal().set_aside())
        .await?;
    let old = inventory
        .containers
        .iter()
        .find(|c| c.id == old_id)
        .context("old container not reported")?;
    ensure!(
        old.set_aside.contains("removal failed"),
        "{:?}",
        old.set_aside
    );
    let new = inventory
        .containers
        .iter()
        .find(|c| c.name == name)
        .context("new container not reported")?;
    ensure!(new.set_aside.is_empty(), "{:?}", new.set_aside);
    // The next start removes it.
    let recovered = s.restarted()?.recover().await?;
    ensure!(recovered.operations.is_empty(), "{recovered:?}");
    ensure!(s.inspect(&old_id, "{{.Id}}").is_err(), "still there");
    let entry = failing.journal().get("op-left")?.context("entry pruned")?;
    ensure!(entry.leftovers.is_empty(), "{entry:?}");
    Ok(())
}

#[tokio::test]
async fn a_stopping_agent_rolls_back_an_update_in_its_health_gate() -> anyhow::Result<()> {
    let Some(engine) = require_engine() else {
        return Ok(());
    };
    let s = Setup::new(engine).await?;
    let name = s
        .cleanup
        .run_container("sf-term", &["--network", "none"], &s.v1.reference, &[])?;
    let id = s.inspect(&name, "{{.Id}}")?;
    let web_id = id.clone();
    let side = s.cleanup.run_container(
        "sf-term-side",
        &["--network", &format!("container:{web_id}")],
        &s.v1.reference,
        &[],
    )?;
    // Healthy only after a minute: the update waits in its gate.
    s.publish_next(
        ImageSpec::new(2)
            .with_config(&["HEALTHCHECK --interval=1s --start-period=60s CMD test -f /never"]),
    )?;
    let (stop, stopping) = tokio::sync::watch::channel(false);
    let recreator = s
        .restarted_with(ouroboros_agent::recreate::executor::Deadlines {
            health: Duration::from_secs(60),
            ..DEADLINES
        })?
        .with_stopping(stopping);
    let journal = recreator.journal().clone();
    let updating = {
        let request = request("op-term", &name);
        tokio::spawn(async move { recreator.recreate(&request).await })
    };
    // (An async poll: the recreate runs on this test's one runtime thread.)
    let deadline = Instant::now() + Duration::from_secs(30);
    while !matches!(
        journal.get("op-term")?.map(|e| e.step),
        Some(Step::Created { .. })
    ) {
        ensure!(Instant::now() < deadline, "never reached the health gate");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let asked = Instant::now();
    stop.send(true)?;
    let outcome = updating.await??;
    ensure!(
        asked.elapsed() < Duration::from_secs(15),
        "took {:?}",
        asked.elapsed()
    );
    match &outcome {
        Outcome::Interrupted { reason, .. } => ensure!(reason.contains("stopping"), "{reason}"),
        other => anyhow::bail!("expected an interruption, got {other:?}"),
    }
    s.assert_old_restored(&name, &id)?;
    ensure!(s.inspect(&side, "{{.State.Running}}")? == "true");
    // Nothing changed: the operation is not kept, so the same op id runs in full later.
    ensure!(journal.get("op-term")?.is_none(), "kept in the journal");
    Ok(())
}

#[tokio::test]
async fn a_label_signal_the_engine_would_answer_with_a_restart_is_not_sent() -> anyhow::Result<()> {
    let Some(engine) = require_engine() else {
        return Ok(());
    };
    // The container's own stop signal is SIGQUIT; a kill with another signal would let the
    // restart policy start it again (API 1.41 has no signal on stop).
    let s = Setup::new(engine).await?;
    let out = tempfile::Builder::new()
        .prefix("ouroboros-test-signal-")
        .tempdir()?;
    let bind = format!("{}:/out", out.path().display());
    let name = s.cleanup.run_container(
        "sf-quit",
        &[
            "--network",
            "none",
            "-v",
            &bind,
            "--stop-timeout",
            "3",
            "--restart",
            "always",
            "--stop-signal",
            "SIGQUIT",
            "--label",
            "com.ouroboros.stop_signal=SIGUSR1",
        ],
        &s.v1.reference,
        &[
            "sh",
            "-c",
            "trap 'echo usr1 > /out/got; exit 0' USR1; trap 'echo quit > /out/got; exit 0' QUIT; \
             while :; do sleep 1 & wait $!; done",
        ],
    )?;
    s.publish_next(ImageSpec::new(2))?;
    let outcome = s.recreator.recreate(&request("op-quit", &name)).await?;
    ensure!(matches!(outcome, Outcome::Updated { .. }), "{outcome:?}");
    let api = s.recreator.api();
    let got = std::fs::read_to_string(out.path().join("got")).context("no signal recorded")?;
    if api < ouroboros_agent::recreate::spec::ApiVersion::new(1, 42) {
        ensure!(
            got.trim() == "quit",
            "stopped with {got}, not its own signal"
        );
    } else {
        ensure!(
            got.trim() == "usr1",
            "stopped with {got}, not the label's signal"
        );
    }
    ensure!(s.inspect(&name, "{{.State.Running}}")? == "true");
    Ok(())
}

#[tokio::test]
async fn containers_run_with_rm_are_refused_and_touched_not() -> anyhow::Result<()> {
    let Some(engine) = require_engine() else {
        return Ok(());
    };
    let s = Setup::new(engine).await?;
    let lone = s.cleanup.run_container(
        "sf-rm",
        &["--network", "none", "--rm"],
        &s.v1.reference,
        &[],
    )?;
    let web = s
        .cleanup
        .run_container("sf-rmweb", &["--network", "none"], &s.v1.reference, &[])?;
    let label = format!("com.ouroboros.depends_on={web}");
    let soft = s.cleanup.run_container(
        "sf-rmsoft",
        &["--network", "none", "--rm", "--label", &label],
        &s.v1.reference,
        &[],
    )?;
    let ids: Vec<String> = [&lone, &web, &soft]
        .iter()
        .map(|n| s.inspect(n, "{{.Id}}"))
        .collect::<anyhow::Result<_>>()?;
    s.publish_next(ImageSpec::new(2))?;
    for (container, op, mention) in [(&lone, "op-rm", "--rm"), (&web, "op-rmweb", soft.as_str())] {
        match s.recreator.recreate(&request(op, container)).await? {
            Outcome::Refused { reason } => {
                ensure!(
                    reason.contains("--rm") && reason.contains(mention),
                    "{reason}"
                )
            }
            other => anyhow::bail!("expected a refusal, got {other:?}"),
        }
    }
    for (name, id) in [&lone, &web, &soft].iter().zip(&ids) {
        ensure!(s.inspect(name, "{{.Id}}")? == *id, "{name} was replaced");
        ensure!(
            s.inspect(name, "{{.State.Running}}")? == "true",
            "{name} stopped"
        );
    }
    Ok(())
}

/// A soft dependant's stop under way when the agent dies: recovery waits for it, so the
/// dependant ends running.
#[tokio::test]
async fn recovery_waits_for_a_dependants_stop_still_under_way() -> anyhow::Result<()> {
    let Some(engine) = require_engine() else {
        return Ok(());
    };
    let s = Setup::new(engine).await?;
    let web = s
        .cleanup
        .run_container("sf-dslow", &["--network", "none"], &s.v1.reference, &[])?;
    let web_id = s.inspect(&web, "{{.Id}}")?;
    let side = s.cleanup.run_container(
        "sf-dslow-side",
        &[
            "--network",
            &format!("container:{web_id}"),
            "--stop-timeout",
            "3",
        ],
        &s.v1.reference,
        &[
            "sh",
            "-c",
            "trap '' TERM; while :; do sleep 1 & wait $!; done",
        ],
    )?;
    let side_id = s.inspect(&side, "{{.Id}}")?;
    s.publish_next(ImageSpec::new(2))?;
    let recreator = s.restarted()?;
    let journal = recreator.journal().clone();
    let updating = {
        let request = request("op-dslow", &web);
        tokio::spawn(async move { recreator.recreate(&request).await })
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let stopping = journal.get("op-dslow")?.is_some_and(|e| {
            e.dependants
                .iter()
                .any(|d| d.state == ouroboros_agent::recreate::journal::DependantState::Stopping)
        });
        if stopping {
            break;
        }
        ensure!(Instant::now() < deadline, "never stopped the dependant");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    updating.abort();
    let recovered = s.restarted()?.recover().await?;
    ensure!(
        matches!(recovered.operations[0].1, Outcome::RolledBack { .. }),
        "{recovered:?}"
    );
    let until = Instant::now() + Duration::from_secs(5);
    while Instant::now() < until {
        ensure!(
            s.inspect(&side, "{{.State.Running}}")? == "true",
            "the dependant was stopped after recovery: {}",
            s.inspect(&side, "{{.State.Status}} {{.State.ExitCode}}")?
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    ensure!(s.inspect(&side, "{{.Id}}")? == side_id);
    ensure!(s.inspect(&web, "{{.Id}}")? == web_id);
    Ok(())
}

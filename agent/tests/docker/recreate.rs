//! The safe recreate sequence on a real engine: a container moves to the new image of its tag
//! keeping its settings and data; a failing new image rolls back to the old container; a
//! repeated op id does nothing twice.
//!
//! (Over 600 lines: the sequence's scenarios on one shared setup.)

use std::time::Duration;

use anyhow::{Context, ensure};
use ouroboros_agent::engine::{DockerEndpoint, Engine as AgentEngine};
use ouroboros_agent::recreate::executor::{Deadlines, RecreateError, Recreator, Request};
use ouroboros_agent::recreate::faults::{CrashMode, CrashPoint};
use ouroboros_agent::recreate::journal::{Journal, Outcome};
use ouroboros_tests::{
    Cleanup, Engine, ImageSpec, Registry, TestImage, publish, require_engine, unique_name,
};

/// What every test here needs: an engine, a registry, v1 published and a container of it.
pub(crate) struct Setup {
    pub(crate) engine: Engine,
    pub(crate) cleanup: Cleanup,
    pub(crate) registry: Registry,
    pub(crate) repo: String,
    pub(crate) v1: TestImage,
    pub(crate) recreator: Recreator,
    pub(crate) agent_engine: AgentEngine,
    pub(crate) journal_dir: tempfile::TempDir,
}

impl Setup {
    pub(crate) async fn new(engine: Engine) -> anyhow::Result<Self> {
        Self::with_v1(engine, ImageSpec::new(1)).await
    }

    /// Like [`Setup::new`], with `v1` built from `spec`.
    pub(crate) async fn with_v1(engine: Engine, spec: ImageSpec) -> anyhow::Result<Self> {
        let registry = Registry::start()?;
        let cleanup = Cleanup::new(&engine);
        let repo = unique_name("rc");
        let v1 = publish(&cleanup, &registry, &repo, "stable", spec)?;
        let endpoint =
            DockerEndpoint::new(engine.host(), false, None).map_err(anyhow::Error::msg)?;
        let agent_engine = AgentEngine::connect(&endpoint).await?;
        let journal_dir = tempfile::Builder::new()
            .prefix("ouroboros-test-journal-")
            .tempdir()?;
        let recreator = Recreator::new(
            &agent_engine,
            Journal::open(journal_dir.path())?,
            DEADLINES,
            None,
        );
        Ok(Self {
            engine,
            cleanup,
            registry,
            repo,
            v1,
            recreator,
            agent_engine,
            journal_dir,
        })
    }

    /// A fresh recreator on the same journal, as after an agent restart.
    pub(crate) fn restarted(&self) -> anyhow::Result<Recreator> {
        self.restarted_with(DEADLINES)
    }

    /// Like [`Setup::restarted`], with other deadlines.
    pub(crate) fn restarted_with(&self, deadlines: Deadlines) -> anyhow::Result<Recreator> {
        Ok(Recreator::new(
            &self.agent_engine,
            Journal::open(self.journal_dir.path())?,
            deadlines,
            None,
        ))
    }

    /// Publishes `spec` under the same tag as v1.
    pub(crate) fn publish_next(&self, spec: ImageSpec) -> anyhow::Result<TestImage> {
        publish(&self.cleanup, &self.registry, &self.repo, "stable", spec)
    }

    pub(crate) fn inspect(&self, container: &str, format: &str) -> anyhow::Result<String> {
        self.engine.inspect(container, format)
    }

    /// Containers whose name contains `part`.
    pub(crate) fn named_like(&self, part: &str) -> anyhow::Result<Vec<String>> {
        let out = self.engine.docker(&[
            "ps",
            "-a",
            "--filter",
            &format!("name={part}"),
            "--format",
            "{{.Names}}",
        ])?;
        Ok(out.lines().map(str::to_owned).collect())
    }

    /// Asserts that `name` is the old container, running, and that nothing else carries the
    /// name (no replacement, no set-aside container).
    pub(crate) fn assert_old_restored(&self, name: &str, old_id: &str) -> anyhow::Result<()> {
        ensure!(
            self.inspect(name, "{{.Id}}")? == old_id,
            "the name is not on the old container"
        );
        ensure!(
            self.inspect(name, "{{.State.Running}}")? == "true",
            "{name} not running"
        );
        let others: Vec<String> = self
            .named_like(name)?
            .into_iter()
            .filter(|n| n != name)
            .collect();
        ensure!(others.is_empty(), "left behind: {others:?}");
        Ok(())
    }

    /// The anonymous volumes mounted into `container`, removed by the test at its end.
    pub(crate) fn volumes_of(&self, container: &str) -> anyhow::Result<Vec<String>> {
        let out = self.inspect(
            container,
            "{{range .Mounts}}{{if eq .Type \"volume\"}}{{.Name}} {{end}}{{end}}",
        )?;
        Ok(out.split_whitespace().map(str::to_owned).collect())
    }
}

pub(crate) const DEADLINES: Deadlines = Deadlines {
    pull: Duration::from_secs(60),
    health: Duration::from_secs(20),
    min_running: Duration::from_secs(2),
    min_healthy_with_check: Duration::ZERO,
    poll: Duration::from_millis(100),
    settle: Duration::from_secs(1),
};

pub(crate) fn request(op: &str, container: &str) -> Request {
    Request {
        op_id: op.into(),
        container: container.into(),
        ..Request::default()
    }
}

#[tokio::test]
async fn container_moves_to_the_new_image_keeping_settings_and_data() -> anyhow::Result<()> {
    let Some(engine) = require_engine() else {
        return Ok(());
    };
    let s = Setup::new(engine).await?;
    let name = s.cleanup.run_container(
        "rc-happy",
        &[
            "--network",
            "none",
            "-e",
            "USER_SETTING=kept",
            "--label",
            "user.label=kept",
            "-v",
            "/data",
            "--restart",
            "unless-stopped",
            "--memory",
            "64m",
        ],
        &s.v1.reference,
        &[],
    )?;
    let volumes = s.volumes_of(&name)?;
    s.engine
        .docker(&["exec", &name, "sh", "-c", "echo precious > /data/file"])?;
    let old_id = s.inspect(&name, "{{.Id}}")?;
    let v2 = s.publish_next(ImageSpec::new(2))?;

    let outcome = s.recreator.recreate(&request("op-happy", &name)).await?;
    let Outcome::Updated { new_id, image_id } = outcome.clone() else {
        anyhow::bail!("not updated: {outcome:?}");
    };
    let result: anyhow::Result<()> = (|| {
        ensure!(
            s.inspect(&name, "{{.Id}}")? == new_id,
            "name not on the new container"
        );
        ensure!(new_id != old_id);
        ensure!(s.inspect(&name, "{{.Image}}")? == image_id);
        ensure!(
            s.engine
                .docker(&["image", "inspect", &v2.reference, "--format", "{{.Id}}"])?
                == image_id,
            "not the new image"
        );
        let env = s.inspect(&name, "{{json .Config.Env}}")?;
        ensure!(
            env.contains("OUROBOROS_TEST_VERSION=2"),
            "image env not updated: {env}"
        );
        ensure!(
            !env.contains("OUROBOROS_TEST_VERSION=1"),
            "old image env frozen in: {env}"
        );
        ensure!(env.contains("USER_SETTING=kept"), "user env lost: {env}");
        let labels = s.inspect(&name, "{{json .Config.Labels}}")?;
        ensure!(
            labels.contains(r#""user.label":"kept""#),
            "user label lost: {labels}"
        );
        ensure!(
            labels.contains(r#""org.ouroboros.test.version":"2""#),
            "image label not updated: {labels}"
        );
        ensure!(s.inspect(&name, "{{.HostConfig.Memory}}")? == (64 * 1024 * 1024).to_string());
        ensure!(s.inspect(&name, "{{.HostConfig.RestartPolicy.Name}}")? == "unless-stopped");
        ensure!(
            s.inspect(&name, "{{.State.Status}} {{.State.Health.Status}}")? == "running healthy"
        );
        ensure!(s.engine.docker(&["exec", &name, "cat", "/version"])? == "2");
        ensure!(
            s.engine.docker(&["exec", &name, "cat", "/data/file"])? == "precious",
            "anonymous volume data lost"
        );
        ensure!(
            s.volumes_of(&name)? == volumes,
            "a different volume is mounted"
        );
        ensure!(
            s.inspect(&old_id, "{{.Id}}").is_err(),
            "old container left behind"
        );
        ensure!(
            s.named_like("ouroboros-old")?
                .iter()
                .all(|n| !n.starts_with(&name))
        );
        Ok(())
    })();
    // A repeated op id answers the stored outcome and changes nothing.
    let again = s.recreator.recreate(&request("op-happy", &name)).await?;
    let still = s.inspect(&name, "{{.Id}}")?;
    s.engine.docker(&["rm", "-f", &name])?;
    for v in volumes {
        let _ = s.engine.docker(&["volume", "rm", &v]);
    }
    result?;
    assert_eq!(again, outcome);
    assert_eq!(still, new_id, "a repeated op id recreated again");
    Ok(())
}

/// Runs a container of v1, publishes `next` under its tag, recreates, and checks that the old
/// container is back under its name, running on v1, with nothing left over.
async fn rolls_back_to_the_old_container(
    prefix: &str,
    next: ImageSpec,
    failed_step: &str,
) -> anyhow::Result<()> {
    let Some(engine) = require_engine() else {
        return Ok(());
    };
    let s = Setup::new(engine).await?;
    let name = s
        .cleanup
        .run_container(prefix, &["--network", "none"], &s.v1.reference, &[])?;
    let old_id = s.inspect(&name, "{{.Id}}")?;
    let old_image = s.inspect(&name, "{{.Image}}")?;
    s.publish_next(next)?;

    let outcome = s
        .recreator
        .recreate(&request(&format!("op-{prefix}"), &name))
        .await?;
    match &outcome {
        Outcome::RolledBack { step, .. } => assert_eq!(step, failed_step, "{outcome:?}"),
        other => anyhow::bail!("expected a rollback, got {other:?}"),
    }
    assert_eq!(s.inspect(&name, "{{.Image}}")?, old_image);
    s.assert_old_restored(&name, &old_id)?;
    // The failed target image is pulled but unused; the harness removes it.
    Ok(())
}

#[tokio::test]
async fn an_image_that_exits_at_once_rolls_back() -> anyhow::Result<()> {
    rolls_back_to_the_old_container("rc-exits", ImageSpec::new(2).exiting(), "health gate").await
}

#[tokio::test]
async fn an_image_that_never_gets_healthy_rolls_back() -> anyhow::Result<()> {
    rolls_back_to_the_old_container("rc-unhealthy", ImageSpec::new(2).unhealthy(), "health gate")
        .await
}

#[tokio::test]
async fn a_stopped_container_is_recreated_and_stays_stopped() -> anyhow::Result<()> {
    let Some(engine) = require_engine() else {
        return Ok(());
    };
    let s = Setup::new(engine).await?;
    let name =
        s.cleanup
            .run_container("rc-stopped", &["--network", "none"], &s.v1.reference, &[])?;
    s.engine.docker(&["stop", &name])?;
    s.publish_next(ImageSpec::new(2))?;
    let outcome = s.recreator.recreate(&request("op-stopped", &name)).await?;
    let Outcome::Updated { image_id, .. } = outcome else {
        anyhow::bail!("not updated: {outcome:?}");
    };
    assert_eq!(s.inspect(&name, "{{.Image}}")?, image_id);
    assert_eq!(s.inspect(&name, "{{.State.Status}}")?, "created");
    Ok(())
}

#[tokio::test]
async fn an_unknown_container_is_refused_and_nothing_changes() -> anyhow::Result<()> {
    let Some(engine) = require_engine() else {
        return Ok(());
    };
    let s = Setup::new(engine).await?;
    let missing = unique_name("rc-missing");
    let outcome = s
        .recreator
        .recreate(&request("op-missing", &missing))
        .await?;
    match outcome {
        Outcome::Refused { reason } => {
            ensure!(reason.contains(&missing), "{reason}");
        }
        other => anyhow::bail!("expected a refusal, got {other:?}"),
    }
    s.named_like(&missing)
        .map(|n| assert!(n.is_empty()))
        .context("listing")?;
    Ok(())
}

/// A crash right after `point`, then a restart: recovery leaves exactly one container under
/// the name, running, on the old image, and nothing else.
async fn crash_then_recover(point: CrashPoint, prefix: &str) -> anyhow::Result<()> {
    let Some(engine) = require_engine() else {
        return Ok(());
    };
    let s = Setup::new(engine).await?;
    let name = s
        .cleanup
        .run_container(prefix, &["--network", "none"], &s.v1.reference, &[])?;
    let old_id = s.inspect(&name, "{{.Id}}")?;
    s.publish_next(ImageSpec::new(2))?;
    let crashing = s.restarted()?.with_crash(point, CrashMode::Return);
    let op = format!("op-{prefix}");
    match crashing.recreate(&request(&op, &name)).await {
        Err(RecreateError::Crashed(p)) => assert_eq!(p, point),
        other => anyhow::bail!("expected the injected crash, got {other:?}"),
    }
    // The same op id while unfinished is not started again.
    assert!(matches!(
        s.restarted()?.recreate(&request(&op, &name)).await,
        Err(RecreateError::InProgress(_))
    ));

    let recovered = s.restarted()?.recover().await?.operations;
    assert_eq!(recovered.len(), 1, "{recovered:?}");
    assert!(
        matches!(recovered[0].1, Outcome::RolledBack { .. }),
        "{recovered:?}"
    );
    s.assert_old_restored(&name, &old_id)?;
    // Recovered operations answer their outcome; a second recovery has nothing to do.
    assert_eq!(
        s.restarted()?.recreate(&request(&op, &name)).await?,
        recovered[0].1
    );
    assert!(s.restarted()?.recover().await?.operations.is_empty());
    Ok(())
}

#[tokio::test]
async fn crash_after_stop_is_recovered() -> anyhow::Result<()> {
    crash_then_recover(CrashPoint::AfterStop, "rc-crash-stop").await
}

#[tokio::test]
async fn crash_after_rename_is_recovered() -> anyhow::Result<()> {
    crash_then_recover(CrashPoint::AfterRename, "rc-crash-rename").await
}

#[tokio::test]
async fn crash_after_create_is_recovered() -> anyhow::Result<()> {
    crash_then_recover(CrashPoint::AfterCreate, "rc-crash-create").await
}

#[tokio::test]
async fn crash_after_start_is_recovered() -> anyhow::Result<()> {
    crash_then_recover(CrashPoint::AfterStart, "rc-crash-start").await
}

#[tokio::test]
async fn crash_during_the_health_wait_is_recovered() -> anyhow::Result<()> {
    crash_then_recover(CrashPoint::DuringHealthWait, "rc-crash-health").await
}

#[tokio::test]
async fn a_host_port_taken_meanwhile_rolls_back() -> anyhow::Result<()> {
    use std::sync::Arc;
    let Some(engine) = require_engine() else {
        return Ok(());
    };
    let s = Setup::new(engine).await?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let name = s.cleanup.run_container(
        "rc-port",
        &["-p", &format!("127.0.0.1:{port}:8080")],
        &s.v1.reference,
        &[],
    )?;
    let old_id = s.inspect(&name, "{{.Id}}")?;
    s.publish_next(ImageSpec::new(2))?;
    // Another container takes the port between the old container's stop and the new one's
    // start, and goes away again while the update rolls back.
    let squatter = unique_name("rc-squatter");
    s.cleanup.track_container(&squatter)?;
    let took = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let take = {
        let (engine, took, squatter) = (s.engine.clone(), took.clone(), squatter.clone());
        let image = s.v1.reference.clone();
        let publish = format!("127.0.0.1:{port}:8080");
        Arc::new(move || {
            let ran = engine.docker(&[
                "run",
                "-d",
                "--name",
                &squatter,
                "--label",
                "com.ouroboros.test=1",
                "-p",
                &publish,
                &image,
            ]);
            took.store(ran.is_ok(), std::sync::atomic::Ordering::SeqCst);
        })
    };
    let release = {
        let (engine, squatter) = (s.engine.clone(), squatter.clone());
        Arc::new(move || {
            let _ = engine.docker(&["rm", "-f", &squatter]);
        })
    };
    let recreator = s
        .restarted()?
        .with_hook(CrashPoint::AfterCreate, take)
        .with_hook(CrashPoint::BeforeRollback, release);
    let outcome = recreator.recreate(&request("op-port", &name)).await?;
    assert!(
        took.load(std::sync::atomic::Ordering::SeqCst),
        "the port was not taken"
    );
    match &outcome {
        Outcome::RolledBack { step, reason } => {
            assert_eq!(step, "start", "{outcome:?}");
            assert!(
                reason.contains(&port.to_string()) || reason.contains("address"),
                "{reason}"
            );
        }
        other => anyhow::bail!("expected a rollback, got {other:?}"),
    }
    s.assert_old_restored(&name, &old_id)?;
    Ok(())
}

#[tokio::test]
async fn a_user_set_mac_address_is_kept() -> anyhow::Result<()> {
    let Some(engine) = require_engine() else {
        return Ok(());
    };
    let s = Setup::new(engine).await?;
    let network = unique_name("rc-macnet");
    s.engine.docker(&[
        "network",
        "create",
        "--label",
        "com.ouroboros.test=1",
        &network,
    ])?;
    s.cleanup.track_network(&network)?;
    // The Docker CLI refuses --mac-address against API 1.41; the Engine API takes it.
    let name = unique_name("rc-mac");
    s.cleanup.track_container(&name)?;
    let mac = "02:aa:bb:cc:dd:01";
    let body = serde_json::json!({
        "Image": s.v1.reference,
        "MacAddress": mac,
        "Labels": {"com.ouroboros.test": "1"},
        "HostConfig": {"NetworkMode": network},
    });
    s.engine.docker(&["pull", &s.v1.reference])?;
    let socket = s.engine.host().trim_start_matches("unix://").to_owned();
    let created = std::process::Command::new("curl")
        .args([
            "-sf",
            "--unix-socket",
            &socket,
            "-H",
            "Content-Type: application/json",
        ])
        .args(["-d", &body.to_string()])
        .arg(format!(
            "http://localhost/v1.41/containers/create?name={name}"
        ))
        .output()?;
    ensure!(
        created.status.success(),
        "create: {}",
        String::from_utf8_lossy(&created.stderr)
    );
    s.engine.docker(&["start", &name])?;
    let mac_of = |c: &str| {
        s.inspect(
            c,
            &format!("{{{{(index .NetworkSettings.Networks \"{network}\").MacAddress}}}}"),
        )
    };
    assert_eq!(mac_of(&name)?, mac);
    s.publish_next(ImageSpec::new(2))?;
    let outcome = s.recreator.recreate(&request("op-mac", &name)).await?;
    assert!(matches!(outcome, Outcome::Updated { .. }), "{outcome:?}");
    assert_eq!(mac_of(&name)?, mac, "user-set MAC lost");
    Ok(())
}

#[tokio::test]
async fn the_health_deadline_acts() -> anyhow::Result<()> {
    let Some(engine) = require_engine() else {
        return Ok(());
    };
    let s = Setup::new(engine).await?;
    let name = s
        .cleanup
        .run_container("rc-slow", &["--network", "none"], &s.v1.reference, &[])?;
    let old_id = s.inspect(&name, "{{.Id}}")?;
    // Stays "starting" for two minutes: only the deadline can end the wait.
    s.publish_next(
        ImageSpec::new(2)
            .with_config(&["HEALTHCHECK --interval=1s --start-period=120s CMD test -f /never"]),
    )?;
    let recreator = s.restarted_with(Deadlines {
        health: Duration::from_secs(3),
        ..DEADLINES
    })?;
    let started = std::time::Instant::now();
    let outcome = recreator.recreate(&request("op-slow", &name)).await?;
    let took = started.elapsed();
    match &outcome {
        Outcome::RolledBack { step, reason } => {
            assert_eq!(step, "health gate");
            assert!(reason.contains("not healthy within 3s"), "{reason}");
        }
        other => anyhow::bail!("expected a rollback, got {other:?}"),
    }
    assert!(
        took < Duration::from_secs(60),
        "the deadline did not act: {took:?}"
    );
    assert_eq!(s.inspect(&name, "{{.Id}}")?, old_id);
    assert_eq!(s.inspect(&name, "{{.State.Running}}")?, "true");
    Ok(())
}

#[tokio::test]
async fn a_requested_health_gate_replaces_the_agents_own() -> anyhow::Result<()> {
    use ouroboros_agent::recreate::executor::HealthGate;
    let Some(engine) = require_engine() else {
        return Ok(());
    };
    let s = Setup::new(engine).await?;
    let name = s
        .cleanup
        .run_container("rc-gate", &["--network", "none"], &s.v1.reference, &[])?;
    // Healthy at once: with min_healthy the gate still watches it for that long.
    s.publish_next(ImageSpec::new(2).with_config(&["HEALTHCHECK --interval=1s CMD true"]))?;
    let started = std::time::Instant::now();
    let outcome = s
        .recreator
        .recreate(&Request {
            gate: Some(HealthGate {
                min_healthy: Duration::from_secs(4),
                deadline: Duration::from_secs(30),
            }),
            ..request("op-gate-long", &name)
        })
        .await?;
    assert!(matches!(outcome, Outcome::Updated { .. }), "{outcome:?}");
    assert!(
        started.elapsed() >= Duration::from_secs(4),
        "healthy for less than min_healthy: {:?}",
        started.elapsed()
    );
    // Never healthy: the requested deadline (2 s, not the agent's 20 s) acts.
    let before = s.inspect(&name, "{{.Id}}")?;
    s.publish_next(
        ImageSpec::new(3)
            .with_config(&["HEALTHCHECK --interval=1s --start-period=120s CMD test -f /never"]),
    )?;
    let outcome = s
        .recreator
        .recreate(&Request {
            gate: Some(HealthGate {
                min_healthy: Duration::ZERO,
                deadline: Duration::from_secs(2),
            }),
            ..request("op-gate-short", &name)
        })
        .await?;
    match &outcome {
        Outcome::RolledBack { reason, .. } => {
            assert!(reason.contains("not healthy within 2s"), "{reason}");
        }
        other => anyhow::bail!("expected a rollback, got {other:?}"),
    }
    assert_eq!(s.inspect(&name, "{{.Id}}")?, before);
    Ok(())
}

#[tokio::test]
async fn the_pull_deadline_acts_before_anything_is_stopped() -> anyhow::Result<()> {
    let Some(engine) = require_engine() else {
        return Ok(());
    };
    let s = Setup::new(engine).await?;
    let name = s
        .cleanup
        .run_container("rc-pull", &["--network", "none"], &s.v1.reference, &[])?;
    let old_id = s.inspect(&name, "{{.Id}}")?;
    let started_at = s.inspect(&name, "{{.State.StartedAt}}")?;
    s.publish_next(ImageSpec::new(2))?;
    let recreator = s.restarted_with(Deadlines {
        pull: Duration::from_millis(1),
        ..DEADLINES
    })?;
    let outcome = recreator.recreate(&request("op-pull", &name)).await?;
    match &outcome {
        Outcome::Refused { reason } => assert!(reason.contains("exceeded"), "{reason}"),
        other => anyhow::bail!("expected a refusal, got {other:?}"),
    }
    // Nothing was touched: same container, never restarted.
    s.assert_old_restored(&name, &old_id)?;
    assert_eq!(s.inspect(&name, "{{.State.StartedAt}}")?, started_at);
    Ok(())
}

#[tokio::test]
async fn a_rollback_without_the_old_container_keeps_the_new_one() -> anyhow::Result<()> {
    use std::sync::Arc;
    let Some(engine) = require_engine() else {
        return Ok(());
    };
    let s = Setup::new(engine).await?;
    let name = s
        .cleanup
        .run_container("rc-gone", &["--network", "none"], &s.v1.reference, &[])?;
    let old_id = s.inspect(&name, "{{.Id}}")?;
    // The new image never gets healthy, and meanwhile someone removes the set-aside old
    // container (a `docker container prune`, say).
    s.publish_next(ImageSpec::new(2).unhealthy())?;
    let remove_old = {
        let (engine, old_id) = (s.engine.clone(), old_id.clone());
        Arc::new(move || {
            let _ = engine.docker(&["rm", "-f", &old_id]);
        })
    };
    let recreator = s.restarted()?.with_hook(CrashPoint::AfterStart, remove_old);
    let outcome = recreator.recreate(&request("op-gone", &name)).await?;
    match &outcome {
        Outcome::RollbackFailed { reason, .. } => assert!(reason.contains("kept"), "{reason}"),
        other => anyhow::bail!("expected a failed rollback, got {other:?}"),
    }
    // Something still runs under the name: the replacement.
    let now = s.inspect(&name, "{{.Id}}")?;
    assert_ne!(now, old_id);
    assert_eq!(s.inspect(&name, "{{.State.Running}}")?, "true");
    Ok(())
}

//! Swarm service updates that fail or are cut short, on a real single-node swarm: a
//! never-healthy image ends rolled back (by the agent after a pause or past the deadline, or by
//! the service's own failure action); an agent stopping during the watch leaves the update to
//! the engine and picks it up again after its restart.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::ensure;
use ouroboros_agent::recreate::executor::{Deadlines, Recreator};
use ouroboros_agent::recreate::journal::{Journal, Outcome};
use ouroboros_agent::swarm::{self, ServiceUpdate};
use ouroboros_tests::{ImageSpec, eventually, unique_name};

use crate::swarm::{CONVERGE, POLL, Swarm, agent_on, request};

#[tokio::test]
async fn swarm_never_healthy_update_ends_rolled_back() -> anyhow::Result<()> {
    let Some(s) = Swarm::start(ImageSpec::new(2).unhealthy()).await? else {
        return Ok(());
    };
    let paused = unique_name("svc-pause");
    let rolling = unique_name("svc-rollback");
    let late = unique_name("svc-late");
    s.create(&paused, &["--replicas", "2"], 2)?;
    s.create(
        &rolling,
        &["--replicas", "2", "--update-failure-action", "rollback"],
        2,
    )?;
    // Failures do not stop this one, and it watches for a minute: it outlasts its deadline.
    s.create(
        &late,
        &[
            "--replicas",
            "1",
            "--update-failure-action",
            "continue",
            "--update-monitor",
            "60s",
        ],
        1,
    )?;
    let result = rollbacks(&s, [(&paused, 2), (&rolling, 2), (&late, 1)]).await;
    s.remove(&[&paused, &rolling, &late]);
    result
}

async fn rollbacks(s: &Swarm, services: [(&str, usize); 3]) -> anyhow::Result<()> {
    let [(paused, _), (rolling, _), (late, _)] = services;
    let v1 = Swarm::pinned(&s.v1);
    let v2 = Swarm::pinned(&s.v2);
    let steps = Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = steps.clone();
    let report = move |step: &'static str| seen.lock().unwrap().push(step);
    let started = Instant::now();
    let (pause_request, rollback_request, late_request) = (
        request("op-pause", paused, &v2),
        request("op-rollback", rolling, &v2),
        ServiceUpdate {
            deadline: Duration::from_secs(4),
            ..request("op-late", late, &v2)
        },
    );
    let (by_agent, by_service, overdue) = tokio::join!(
        swarm::update(&s.recreator, &pause_request, &report),
        swarm::update(&s.recreator, &rollback_request, &|_| {}),
        swarm::update(&s.recreator, &late_request, &|_| {}),
    );
    eprintln!("all three rolled back in {:.1?}", started.elapsed());
    match by_agent? {
        Outcome::RolledBack { reason, .. } => {
            assert!(reason.contains("paused"), "{reason}")
        }
        other => panic!("paused update: {other:?}"),
    }
    assert_eq!(*steps.lock().unwrap(), ["update", "watch", "rollback"]);
    match by_service? {
        Outcome::RolledBack { reason, .. } => {
            assert!(reason.contains("failure action"), "{reason}")
        }
        other => panic!("update with failure action rollback: {other:?}"),
    }
    match overdue? {
        Outcome::RolledBack { reason, .. } => {
            assert!(reason.contains("deadline"), "{reason}")
        }
        other => panic!("update past its deadline: {other:?}"),
    }
    for (service, tasks) in services {
        assert_eq!(s.spec_image(service)?, v1, "{service}");
        eventually(CONVERGE, POLL, || {
            let images = s.running_images(service)?;
            ensure!(images == vec![v1.clone(); tasks], "{service}: {images:?}");
            Ok(())
        })?;
    }
    Ok(())
}

#[tokio::test]
async fn swarm_stopping_agent_leaves_the_update_to_the_engine_and_resumes_it() -> anyhow::Result<()>
{
    let Some(s) = Swarm::start(ImageSpec::new(2)).await? else {
        return Ok(());
    };
    let web = unique_name("svc-stop");
    s.create(&web, &["--replicas", "1"], 1)?;
    let result = stop_and_resume(&s, &web).await;
    s.remove(&[&web]);
    result
}

/// Sends `op` (service `web` to v2) through an agent that gets SIGTERM as its watch begins:
/// it answers interrupted and records nothing. The agent's data dir, for its restart.
async fn stopped_as_the_watch_begins(
    s: &Swarm,
    web: &str,
    op: &str,
) -> anyhow::Result<tempfile::TempDir> {
    let v2 = Swarm::pinned(&s.v2);
    let (stop, stopping) = tokio::sync::watch::channel(false);
    let (_, recreator, journal) = agent_on(&s.engine).await?;
    let recreator = recreator.with_stopping(stopping);
    let report = move |step: &'static str| {
        if step == "watch" {
            let _ = stop.send(true);
        }
    };
    let outcome = swarm::update(&recreator, &request(op, web, &v2), &report).await?;
    assert!(
        matches!(outcome, Outcome::Interrupted { .. }),
        "{outcome:?}"
    );
    assert!(recreator.journal().get(op)?.is_none());
    Ok(journal)
}

async fn stop_and_resume(s: &Swarm, web: &str) -> anyhow::Result<()> {
    let v2 = Swarm::pinned(&s.v2);
    // SIGTERM as the watch begins: the agent answers interrupted and records nothing.
    let journal = stopped_as_the_watch_begins(s, web, "op-stop").await?;
    assert_eq!(s.spec_image(web)?, v2, "the engine was not left the update");
    // After the restart the same op id picks up the watch of the update still running.
    let restarted = Recreator::new(
        &s.agent,
        Journal::open(journal.path())?,
        Deadlines::default(),
        None,
    );
    let resumed = swarm::update(&restarted, &request("op-stop", web, &v2), &|_| {}).await?;
    assert!(matches!(resumed, Outcome::Updated { .. }), "{resumed:?}");
    assert_eq!(s.running_images(web)?, vec![v2]);
    assert!(restarted.journal().get("op-stop")?.is_some());
    // Sent once: the spec before the update is v1's (a second send would have made it v2's).
    assert_eq!(previous_image(s, web)?, Swarm::pinned(&s.v1));
    assert!(
        !journal.path().join("swarm-sent/op-stop.json").exists(),
        "the note of the update outlived its recorded outcome"
    );
    Ok(())
}

/// The image of the spec before the last update (`PreviousSpec`).
fn previous_image(s: &Swarm, service: &str) -> anyhow::Result<String> {
    s.engine.inspect(
        service,
        "{{.PreviousSpec.TaskTemplate.ContainerSpec.Image}}",
    )
}

#[tokio::test]
async fn swarm_rollback_while_the_agent_is_away_is_answered_and_never_sent_again()
-> anyhow::Result<()> {
    let Some(s) = Swarm::start(ImageSpec::new(2).unhealthy()).await? else {
        return Ok(());
    };
    let web = unique_name("svc-away");
    s.create(
        &web,
        &["--replicas", "1", "--update-failure-action", "rollback"],
        1,
    )?;
    let result = rolled_back_while_away(&s, &web).await;
    s.remove(&[&web]);
    result
}

async fn rolled_back_while_away(s: &Swarm, web: &str) -> anyhow::Result<()> {
    let (v1, v2) = (Swarm::pinned(&s.v1), Swarm::pinned(&s.v2));
    // The agent stops as the watch begins, with the update sent.
    let journal = stopped_as_the_watch_begins(s, web, "op-away").await?;
    // Meanwhile the service's own failure action takes it back to v1.
    eventually(Duration::from_secs(90), POLL, || {
        let state = s.engine.inspect(web, "{{.UpdateStatus.State}}")?;
        ensure!(state == "rollback_completed", "{state}");
        Ok(())
    })?;
    let version = s.engine.inspect(web, "{{.Version.Index}}")?;
    // The same op id after the restart: the rollback is the answer; v2 is not sent again.
    let restarted = Recreator::new(
        &s.agent,
        Journal::open(journal.path())?,
        Deadlines::default(),
        None,
    );
    let resumed = swarm::update(&restarted, &request("op-away", web, &v2), &|_| {}).await?;
    assert!(
        matches!(&resumed, Outcome::RolledBack { reason, .. } if reason.contains("went back to")),
        "{resumed:?}"
    );
    assert_eq!(s.spec_image(web)?, v1);
    assert_eq!(s.engine.inspect(web, "{{.Version.Index}}")?, version);
    assert_eq!(
        s.engine.inspect(web, "{{.UpdateStatus.State}}")?,
        "rollback_completed"
    );
    // Answered from the journal from now on.
    let again = swarm::update(&restarted, &request("op-away", web, &v2), &|_| {}).await?;
    assert_eq!(again, resumed);
    Ok(())
}

//! The self-update hand-over against a real engine, with test containers standing in for the
//! old agent and its successor (the processes are played by [`Handover`] objects sharing one
//! data dir): the successor takes the old one's place and name; and an agent "killed" (its task
//! aborted) at each step of the hand-over leaves, after its restart (a fresh `Handover` on the
//! same data dir), exactly one agent container, under the original name, running. With the
//! coordinator's hooks, the successor asks `before_self_cleanup` while the old agent still
//! runs and tells `after_self_cleanup` once it holds the name; a veto keeps the old agent.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, ensure};
use futures_util::future::BoxFuture;
use ouroboros_agent::handover::{End, Found, Handover, NEXT_MARK, Step};
use ouroboros_agent::recreate::gate::{AFTER_SELF_CLEANUP, Ask, BEFORE_SELF_CLEANUP, HookGate};
use ouroboros_agent::recreate::journal::Outcome;
use ouroboros_tests::{Engine, ImageSpec, require_engine};

use crate::recreate::{Setup, request};

/// How long a successor has to claim, in these tests.
const TIMEOUT: Duration = Duration::from_secs(3);

/// An "agent" container on the tag's image.
async fn agent(s: &Setup, prefix: &str) -> anyhow::Result<(String, String)> {
    let name = s.cleanup.run_container(
        prefix,
        &["--network", "none", "--stop-timeout", "2"],
        &s.v1.reference,
        &[],
    )?;
    let id = s.inspect(&name, "{{.Id}}")?;
    Ok((name, id))
}

/// One question: point, container, subject, and the agent's containers at that moment.
type Asked = (String, String, String, Vec<String>);

/// The coordinator's hooks, played by a script: each question is recorded with the containers
/// of the agent's family at that moment (from the engine); `veto` points say no.
struct Hooks {
    engine: Engine,
    family: String,
    veto: Option<&'static str>,
    asked: Mutex<Vec<Asked>>,
}

impl HookGate for Hooks {
    fn ask(&self, ask: Ask) -> BoxFuture<'_, Result<(), String>> {
        let family: Vec<String> = self
            .engine
            .docker(&["ps", "--all", "--format", "{{.Names}}"])
            .unwrap_or_default()
            .lines()
            .filter(|n| n.starts_with(&self.family))
            .map(str::to_owned)
            .collect();
        let answer = if self.veto == Some(ask.point) {
            Err(format!("vetoed by hook {}/10-test: not now", ask.point))
        } else {
            Ok(())
        };
        self.asked
            .lock()
            .unwrap()
            .push((ask.point.to_owned(), ask.container, ask.subject, family));
        Box::pin(async move { answer })
    }
}

/// The containers whose name starts with `name` (the agent and any successor of it).
fn family(s: &Setup, name: &str) -> anyhow::Result<Vec<String>> {
    Ok(s.named_like(name)?
        .into_iter()
        .filter(|n| n.starts_with(name))
        .collect())
}

/// Exactly one container of the family: `name`, with id `id`, running.
fn one_agent(s: &Setup, name: &str, id: &str) -> anyhow::Result<()> {
    let family = family(s, name)?;
    ensure!(family == [name.to_owned()], "containers: {family:?}");
    ensure!(
        s.inspect(name, "{{.Id}} {{.State.Running}}")? == format!("{id} true"),
        "{name} is not {id}, running"
    );
    Ok(())
}

/// The successor container the old agent made, once it exists.
async fn successor_of(s: &Setup, name: &str) -> anyhow::Result<(String, String)> {
    let prefix = format!("{name}{NEXT_MARK}");
    // A pull and a create on a busy machine: up to a minute.
    for _ in 0..600 {
        if let Some(n) = family(s, name)?
            .into_iter()
            .find(|n| n.starts_with(&prefix))
        {
            let id = s.inspect(&n, "{{.Id}}")?;
            return Ok((n, id));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    anyhow::bail!("no successor of {name} appeared")
}

#[tokio::test]
async fn the_successor_takes_the_old_agents_place_and_name() -> anyhow::Result<()> {
    let Some(engine) = require_engine() else {
        return Ok(());
    };
    let s = Setup::new(engine).await?;
    let data = tempfile::tempdir()?;
    let (name, old_id) = agent(&s, "ho-happy").await?;
    let v2 = s.publish_next(ImageSpec::new(2))?;
    let old = Arc::new(Handover::new(data.path(), old_id.clone(), TIMEOUT * 10));
    let old_side = {
        let (old, recreator) = (old.clone(), s.restarted()?);
        let request = request("op-ho-happy", &name);
        let hooks = Some(Duration::from_secs(7));
        tokio::spawn(async move { old.start(&recreator, &request, hooks, &|_| {}).await })
    };
    let (successor_name, successor_id) = match successor_of(&s, &name).await {
        Ok(found) => found,
        Err(e) => anyhow::bail!("{e}: the old agent ended with {:?}", old_side.await),
    };
    let successor = Handover::new(data.path(), successor_id.clone(), TIMEOUT);
    let recreator = s.restarted()?;
    let found = successor.found(&recreator).await;
    ensure!(matches!(found, Found::Successor(_)), "{found:?}");
    ensure!(successor.successor_op().as_deref() == Some("op-ho-happy"));
    // The record carries the coordinator's hook deadline to the successor.
    ensure!(successor.successor_hooks() == Some(Duration::from_secs(7)));
    let hooks = Hooks {
        engine: s.engine.clone(),
        family: name.clone(),
        veto: None,
        asked: Mutex::default(),
    };
    let outcome = successor
        .take_over(&recreator, Some(&hooks))
        .await
        .map_err(anyhow::Error::msg)?;
    ensure!(
        matches!(&outcome, Some(Outcome::Updated { new_id, .. }) if *new_id == successor_id),
        "{outcome:?}"
    );
    let end = tokio::time::timeout(TIMEOUT * 4, old_side).await??;
    ensure!(end == End::Taken, "{end:?}");
    one_agent(&s, &name, &successor_id).context(successor_name.clone())?;
    // It runs v2, the image its tag names now.
    ensure!(
        s.inspect(&name, "{{.Image}}")? == s.inspect(&v2.pinned(), "{{.Id}}")?,
        "{name} does not run v2"
    );
    // before_self_cleanup while both agents exist, after_self_cleanup once only the successor
    // does, under the original name; both about the agent's container and its new image.
    let image = s.v1.reference.clone();
    let asked = hooks.asked.lock().unwrap().clone();
    let mut both = vec![name.clone(), successor_name.clone()];
    both.sort();
    let expected = vec![
        (
            BEFORE_SELF_CLEANUP.to_owned(),
            name.clone(),
            image.clone(),
            both,
        ),
        (
            AFTER_SELF_CLEANUP.to_owned(),
            name.clone(),
            image,
            vec![name.clone()],
        ),
    ];
    let sorted: Vec<_> = asked
        .into_iter()
        .map(|(p, c, i, mut f)| {
            f.sort();
            (p, c, i, f)
        })
        .collect();
    ensure!(
        sorted == expected,
        "asked {sorted:?}, expected {expected:?}"
    );
    // The journal answers the op id again; the record is gone.
    let stored = recreator.recreate(&request("op-ho-happy", &name)).await?;
    ensure!(matches!(stored, Outcome::Updated { .. }), "{stored:?}");
    ensure!(!data.path().join("handover.json").exists());
    Ok(())
}

#[tokio::test]
async fn an_old_agent_killed_at_any_step_leaves_one_agent_after_its_restart() -> anyhow::Result<()>
{
    let Some(engine) = require_engine() else {
        return Ok(());
    };
    let s = Setup::new(engine).await?;
    let steps = [Step::Recorded, Step::Created, Step::Started];
    let mut agents = Vec::new();
    for _ in steps {
        agents.push(agent(&s, "ho-kill-old").await?);
    }
    // The agents run v1; their tag moves to v2.
    s.publish_next(ImageSpec::new(2))?;
    for (step, (name, old_id)) in steps.into_iter().zip(agents) {
        let data = tempfile::tempdir()?;
        let reached = Arc::new(tokio::sync::Notify::new());
        let old =
            Handover::new(data.path(), old_id.clone(), TIMEOUT).with_pause(step, reached.clone());
        let recreator = s.restarted()?;
        let op = format!("op-ho-{step:?}").to_lowercase();
        let task = {
            let request = request(&op, &name);
            tokio::spawn(async move { old.start(&recreator, &request, None, &|_| {}).await })
        };
        tokio::time::timeout(Duration::from_secs(60), reached.notified())
            .await
            .with_context(|| format!("{step:?} not reached"))?;
        // SIGKILL: nothing after this step runs.
        task.abort();
        let _ = task.await;
        // The restart: a new agent process on the same data dir and container.
        let restarted = Handover::new(data.path(), old_id.clone(), TIMEOUT);
        let recreator = s.restarted()?;
        let Found::Old(record) = restarted.found(&recreator).await else {
            anyhow::bail!("{step:?}: the restarted agent does not find its hand-over");
        };
        let end = restarted.await_successor(&recreator, &record).await;
        ensure!(
            matches!(&end, End::Answer(Outcome::RolledBack { .. })),
            "{step:?}: {end:?}"
        );
        one_agent(&s, &name, &old_id).with_context(|| format!("after a kill at {step:?}"))?;
        ensure!(
            !data.path().join("handover.json").exists(),
            "{step:?}: record left"
        );
        ensure!(
            !data.path().join("handover.decision").exists(),
            "{step:?}: decision left"
        );
    }
    Ok(())
}

#[tokio::test]
async fn a_successor_killed_while_taking_over_finishes_after_its_restart() -> anyhow::Result<()> {
    let Some(engine) = require_engine() else {
        return Ok(());
    };
    let s = Setup::new(engine).await?;
    let steps = [Step::Claimed, Step::OldRemoved];
    let mut agents = Vec::new();
    for _ in steps {
        agents.push(agent(&s, "ho-kill-new").await?);
    }
    s.publish_next(ImageSpec::new(2))?;
    for (step, (name, old_id)) in steps.into_iter().zip(agents) {
        let data = tempfile::tempdir()?;
        let old = Arc::new(Handover::new(data.path(), old_id.clone(), TIMEOUT * 10));
        let op = format!("op-ho-{step:?}").to_lowercase();
        let old_side = {
            let (old, recreator, request) = (old.clone(), s.restarted()?, request(&op, &name));
            tokio::spawn(async move { old.start(&recreator, &request, None, &|_| {}).await })
        };
        let (_, successor_id) = successor_of(&s, &name).await?;
        let reached = Arc::new(tokio::sync::Notify::new());
        let successor = Handover::new(data.path(), successor_id.clone(), TIMEOUT)
            .with_pause(step, reached.clone());
        let recreator = s.restarted()?;
        ensure!(matches!(
            successor.found(&recreator).await,
            Found::Successor(_)
        ));
        let task = tokio::spawn(async move { successor.take_over(&recreator, None).await });
        tokio::time::timeout(Duration::from_secs(60), reached.notified())
            .await
            .with_context(|| format!("{step:?} not reached"))?;
        task.abort();
        let _ = task.await;
        // The old agent obeys the claim: it answers nothing and waits to be removed.
        let end = tokio::time::timeout(TIMEOUT * 4, old_side).await??;
        ensure!(end == End::Taken, "{step:?}: {end:?}");
        // The successor's restart completes the hand-over.
        let restarted = Handover::new(data.path(), successor_id.clone(), TIMEOUT);
        let recreator = s.restarted()?;
        ensure!(matches!(
            restarted.found(&recreator).await,
            Found::Successor(_)
        ));
        let outcome = restarted
            .take_over(&recreator, None)
            .await
            .map_err(anyhow::Error::msg)?;
        ensure!(
            matches!(outcome, Some(Outcome::Updated { .. })),
            "{step:?}: {outcome:?}"
        );
        one_agent(&s, &name, &successor_id).with_context(|| format!("after a kill at {step:?}"))?;
        ensure!(
            !data.path().join("handover.json").exists(),
            "{step:?}: record left"
        );
    }
    Ok(())
}

#[tokio::test]
async fn a_successor_no_record_names_is_removed_and_never_takes_part() -> anyhow::Result<()> {
    let Some(engine) = require_engine() else {
        return Ok(());
    };
    let s = Setup::new(engine).await?;
    let data = tempfile::tempdir()?;
    let (name, old_id) = agent(&s, "ho-orphan").await?;
    let orphan = format!("{name}{NEXT_MARK}op-gone");
    s.cleanup.track_container(&orphan)?;
    s.engine.docker(&[
        "run",
        "--detach",
        "--name",
        &orphan,
        "--network",
        "none",
        &s.v1.reference,
    ])?;
    let orphan_id = s.inspect(&orphan, "{{.Id}}")?;
    // The orphan itself, started as an agent, does not connect.
    let as_orphan = Handover::new(data.path(), orphan_id, TIMEOUT);
    let found = as_orphan.found(&s.restarted()?).await;
    ensure!(matches!(found, Found::Orphan(_)), "{found:?}");
    // The old agent's start removes it.
    let old = Handover::new(data.path(), old_id.clone(), TIMEOUT);
    let found = old.found(&s.restarted()?).await;
    ensure!(found == Found::Nothing, "{found:?}");
    one_agent(&s, &name, &old_id)
}

#[tokio::test]
async fn a_before_self_cleanup_veto_keeps_the_old_agent_and_is_answered_vetoed()
-> anyhow::Result<()> {
    let Some(engine) = require_engine() else {
        return Ok(());
    };
    let s = Setup::new(engine).await?;
    let data = tempfile::tempdir()?;
    let (name, old_id) = agent(&s, "ho-veto").await?;
    s.publish_next(ImageSpec::new(2))?;
    let old = Arc::new(Handover::new(data.path(), old_id.clone(), TIMEOUT * 10));
    let old_side = {
        let (old, recreator) = (old.clone(), s.restarted()?);
        let request = request("op-ho-veto", &name);
        let hooks = Some(Duration::from_secs(5));
        tokio::spawn(async move { old.start(&recreator, &request, hooks, &|_| {}).await })
    };
    let (_, successor_id) = successor_of(&s, &name).await?;
    let successor = Handover::new(data.path(), successor_id, TIMEOUT);
    let recreator = s.restarted()?;
    ensure!(matches!(
        successor.found(&recreator).await,
        Found::Successor(_)
    ));
    let hooks = Hooks {
        engine: s.engine.clone(),
        family: name.clone(),
        veto: Some(BEFORE_SELF_CLEANUP),
        asked: Mutex::default(),
    };
    let refused = successor.take_over(&recreator, Some(&hooks)).await;
    ensure!(
        refused
            .as_ref()
            .is_err_and(|e| e.contains("vetoed by hook before_self_cleanup/10-test")),
        "{refused:?}"
    );
    // The old agent keeps the host, removes the successor and answers `vetoed` with the line.
    let end = tokio::time::timeout(TIMEOUT * 4, old_side).await??;
    ensure!(
        matches!(&end, End::Answer(Outcome::Vetoed { reason }) if reason.contains("not now")),
        "{end:?}"
    );
    one_agent(&s, &name, &old_id)?;
    let asked: Vec<String> = hooks
        .asked
        .lock()
        .unwrap()
        .iter()
        .map(|a| a.0.clone())
        .collect();
    ensure!(asked == [BEFORE_SELF_CLEANUP], "asked {asked:?}");
    ensure!(!data.path().join("handover.json").exists(), "record left");
    ensure!(
        !data.path().join("handover.decision").exists(),
        "decision left"
    );
    Ok(())
}

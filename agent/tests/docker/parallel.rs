//! Several recreates at once on one host (`--max-containers-in-flight`): five containers that
//! do not depend on each other, without healthchecks, updated side by side through one
//! `CommandRunner` each end updated exactly once with the journal empty, and their updates
//! really overlap; a crash with all five in flight is recovered for every one of them; two
//! operations on one container never run at the same time.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use ouroboros_agent::commands::CommandRunner;
use ouroboros_agent::recreate::faults::{CrashMode, CrashPoint};
use ouroboros_agent::recreate::journal::{Journal, Outcome, Step};
use ouroboros_proto::v1 as pb;
use ouroboros_tests::{ImageSpec, require_engine};
use pb::agent_message::Kind;
use tokio::sync::{mpsc, watch};

use crate::recreate::Setup;

/// Containers updated at once, as with `--max-containers-in-flight 5`.
const PARALLEL: usize = 5;

/// How long each new container must run (no healthcheck) before it counts as updated: the
/// stability window every update waits through, which parallel updates share.
const MIN_RUNNING_MS: i64 = 3_000;

/// `PARALLEL` containers of v1 without a healthcheck, each with a label of its own; v2
/// published under their tag.
struct Five {
    s: Setup,
    names: Vec<String>,
    old_ids: Vec<String>,
}

impl Five {
    async fn new(prefix: &str) -> anyhow::Result<Option<Self>> {
        let Some(engine) = require_engine() else {
            return Ok(None);
        };
        let s = Setup::new(engine).await?;
        let mut names = Vec::new();
        let mut old_ids = Vec::new();
        for i in 0..PARALLEL {
            let label = format!("user.label=kept-{i}");
            let name = s.cleanup.run_container(
                &format!("{prefix}-{i}"),
                &["--network", "none", "--no-healthcheck", "--label", &label],
                &s.v1.reference,
                &[],
            )?;
            old_ids.push(s.inspect(&name, "{{.Id}}")?);
            names.push(name);
        }
        s.publish_next(ImageSpec::new(2))?;
        Ok(Some(Self { s, names, old_ids }))
    }

    fn op(&self, i: usize) -> String {
        format!("op-{}", self.names[i])
    }

    /// Sends the `PARALLEL` recreates to `runner` at once, each in its own task as the link
    /// does.
    fn send_all(
        &self,
        runner: &Arc<CommandRunner>,
    ) -> (
        Vec<tokio::task::JoinHandle<()>>,
        mpsc::Receiver<pb::AgentMessage>,
    ) {
        let (tx, rx) = mpsc::channel(1024);
        let tasks = (0..PARALLEL)
            .map(|i| {
                let command = pb::Recreate {
                    op_id: self.op(i),
                    container: self.names[i].clone(),
                    min_healthy_ms: MIN_RUNNING_MS,
                    ..Default::default()
                };
                let (runner, tx) = (runner.clone(), tx.clone());
                tokio::spawn(async move { runner.recreate(command, tx).await })
            })
            .collect();
        (tasks, rx)
    }

    /// Asserts that each container exists once under its name, running (as the engine shows
    /// it), with nothing set aside left over.
    fn assert_each_once_and_running(&self) -> anyhow::Result<()> {
        for name in &self.names {
            let same_name = self.s.named_like(name)?;
            ensure!(
                same_name == std::slice::from_ref(name),
                "{name}: {same_name:?}"
            );
            ensure!(
                self.s
                    .inspect(name, "{{.State.Status}} {{.State.Running}}")?
                    == "running true",
                "{name} does not run"
            );
        }
        Ok(())
    }

    /// Asserts that the journal has no unfinished operation.
    fn assert_journal_empty(&self) -> anyhow::Result<()> {
        let unfinished = Journal::open(self.s.journal_dir.path())?.unfinished()?;
        ensure!(
            unfinished.is_empty(),
            "unfinished: {:?}",
            unfinished.iter().map(|e| &e.op_id).collect::<Vec<_>>()
        );
        Ok(())
    }
}

/// What the agent sent: when each operation's steps began, and its result with when it came.
#[derive(Default)]
struct Heard {
    steps: BTreeMap<String, Vec<(String, Instant)>>,
    results: BTreeMap<String, Vec<(pb::RecreateResult, Instant)>>,
}

async fn listen(mut rx: mpsc::Receiver<pb::AgentMessage>) -> Heard {
    let mut heard = Heard::default();
    while let Some(message) = rx.recv().await {
        let at = Instant::now();
        match message.kind {
            Some(Kind::Progress(p)) => heard.steps.entry(p.op_id).or_default().push((p.step, at)),
            Some(Kind::Result(r)) => {
                if let Some(result) = r.recreate {
                    heard.results.entry(r.op_id).or_default().push((result, at));
                }
            }
            _ => {}
        }
    }
    heard
}

#[tokio::test]
async fn five_independent_containers_update_at_once_each_exactly_once() -> anyhow::Result<()> {
    let Some(five) = Five::new("par-ok").await? else {
        return Ok(());
    };
    let s = &five.s;
    let runner = CommandRunner::new(s.restarted()?, s.agent_engine.clone(), None, None);
    let started = Instant::now();
    let (tasks, rx) = five.send_all(&runner);
    let heard = tokio::time::timeout(Duration::from_secs(120), listen(rx))
        .await
        .context("the updates did not end")?;
    let took = started.elapsed();
    for task in tasks {
        task.await?;
    }

    let v2_env = format!("{}=2", ouroboros_tests::image::VERSION_ENV);
    let mut stops = Vec::new();
    let mut ends = Vec::new();
    for (i, name) in five.names.iter().enumerate() {
        let op = five.op(i);
        let results = heard
            .results
            .get(&op)
            .map(Vec::as_slice)
            .unwrap_or_default();
        let [(result, done_at)] = results else {
            anyhow::bail!("{op}: {} results", results.len());
        };
        ensure!(
            result.status() == pb::recreate_result::Status::Updated,
            "{op}: {result:?}"
        );
        let stop = heard
            .steps
            .get(&op)
            .and_then(|steps| steps.iter().find(|(step, _)| step == "stop"))
            .with_context(|| format!("{op}: no stop step"))?;
        stops.push(stop.1);
        ends.push(*done_at);
        // The new container under the name, on v2, the user's label kept, still without a
        // healthcheck; the old one gone.
        ensure!(
            s.inspect(name, "{{.Id}}")? == result.new_id,
            "{name}: not the new one"
        );
        ensure!(result.new_id != five.old_ids[i]);
        ensure!(
            s.inspect(&five.old_ids[i], "{{.Id}}").is_err(),
            "{name}: old container left"
        );
        ensure!(s.inspect(name, "{{.Image}}")? == result.image_id);
        ensure!(s.inspect(name, "{{json .Config.Env}}")?.contains(&v2_env));
        ensure!(s.inspect(name, "{{index .Config.Labels \"user.label\"}}")? == format!("kept-{i}"));
        ensure!(
            s.inspect(name, "{{json .Config.Healthcheck.Test}}")? == r#"["NONE"]"#,
            "{name}: healthcheck setting lost"
        );
        // Exactly one container made by its operation.
        let made = s.engine.docker(&[
            "ps",
            "-a",
            "--filter",
            &format!("label=com.ouroboros.op={op}"),
            "--format",
            "{{.Names}}",
        ])?;
        ensure!(made == *name, "{op} made: {made:?}");
        let entry = Journal::open(s.journal_dir.path())?
            .get(&op)?
            .with_context(|| format!("{op} not in the journal"))?;
        ensure!(
            matches!(
                entry.step,
                Step::Done {
                    outcome: Outcome::Updated { .. }
                }
            ),
            "{op}: {:?}",
            entry.step
        );
    }
    five.assert_each_once_and_running()?;
    five.assert_journal_empty()?;
    // They ran side by side: every container was stopped before the first update ended (one
    // after the other, each would wait for the one before, stability window included).
    let last_stop = stops.iter().max().copied().context("no stops")?;
    let first_end = ends.iter().min().copied().context("no ends")?;
    ensure!(
        last_stop < first_end,
        "serialised: the last stop came {:?} after the first update ended",
        last_stop - first_end
    );
    let window = Duration::from_millis(MIN_RUNNING_MS as u64);
    ensure!(
        took < window * PARALLEL as u32,
        "{PARALLEL} updates with a {window:?} window each took {took:?}"
    );
    Ok(())
}

/// Sends five recreates at once with a crash injected at `point` for all of them: each hangs
/// there as a killed agent would stop (the test waits until all five are there, then drops
/// them). A new recreator on the same journal recovers all five; each container then exists
/// once under its name, running: on v2 when `updated`, else its old container again.
async fn crash_all_then_recover(
    point: CrashPoint,
    prefix: &str,
    updated: bool,
) -> anyhow::Result<()> {
    let Some(five) = Five::new(prefix).await? else {
        return Ok(());
    };
    let s = &five.s;
    let (arrived_tx, mut arrived) = watch::channel(0_usize);
    let arrive = Arc::new(move || arrived_tx.send_modify(|n| *n += 1));
    let crashing = s
        .restarted()?
        .with_hook(point, arrive)
        .with_crash(point, CrashMode::Hang);
    let runner = CommandRunner::new(crashing, s.agent_engine.clone(), None, None);
    let (tasks, _rx) = five.send_all(&runner);
    tokio::time::timeout(
        Duration::from_secs(120),
        arrived.wait_for(|n| *n == PARALLEL),
    )
    .await
    .with_context(|| format!("not all {PARALLEL} reached {point:?}"))??;
    // The agent dies with all five in flight.
    for task in &tasks {
        task.abort();
    }
    for task in tasks {
        let _ = task.await;
    }
    drop(runner);
    let unfinished = Journal::open(s.journal_dir.path())?.unfinished()?;
    ensure!(
        unfinished.len() == PARALLEL,
        "{} unfinished before recovery",
        unfinished.len()
    );

    let recovered = s.restarted()?.recover().await?;
    ensure!(recovered.alerts.is_empty(), "{:?}", recovered.alerts);
    ensure!(
        recovered.operations.len() == PARALLEL,
        "{:?}",
        recovered.operations
    );
    for (op, outcome) in &recovered.operations {
        let as_expected = if updated {
            matches!(outcome, Outcome::Updated { .. })
        } else {
            matches!(outcome, Outcome::RolledBack { .. })
        };
        ensure!(as_expected, "{op}: {outcome:?}");
    }
    five.assert_each_once_and_running()?;
    five.assert_journal_empty()?;
    let v2_env = format!("{}=2", ouroboros_tests::image::VERSION_ENV);
    for (name, old_id) in five.names.iter().zip(&five.old_ids) {
        let on_v2 = s.inspect(name, "{{json .Config.Env}}")?.contains(&v2_env);
        if updated {
            ensure!(on_v2 && s.inspect(name, "{{.Id}}")? != *old_id, "{name}");
            ensure!(
                s.inspect(old_id, "{{.Id}}").is_err(),
                "{name}: old one left"
            );
        } else {
            s.assert_old_restored(name, old_id)?;
            ensure!(!on_v2, "{name}");
        }
    }
    Ok(())
}

#[tokio::test]
async fn a_crash_with_five_started_replacements_reverts_all_five() -> anyhow::Result<()> {
    crash_all_then_recover(CrashPoint::AfterStart, "par-crash-start", false).await
}

#[tokio::test]
async fn a_crash_with_five_replacements_past_their_gate_finishes_all_five() -> anyhow::Result<()> {
    crash_all_then_recover(CrashPoint::AfterHealthGate, "par-crash-gate", true).await
}

#[tokio::test]
async fn two_operations_on_one_container_never_overlap() -> anyhow::Result<()> {
    let Some(engine) = require_engine() else {
        return Ok(());
    };
    let s = Setup::new(engine).await?;
    let name = s.cleanup.run_container(
        "par-same",
        &["--network", "none", "--no-healthcheck"],
        &s.v1.reference,
        &[],
    )?;
    s.publish_next(ImageSpec::new(2))?;
    // A coordinator that sends the same container twice (two op ids) at once: the second
    // waits for the first, then finds the container on the new image already.
    let runner = CommandRunner::new(s.restarted()?, s.agent_engine.clone(), None, None);
    let (tx, rx) = mpsc::channel(1024);
    let tasks: Vec<_> = ["op-par-same-1", "op-par-same-2"]
        .into_iter()
        .map(|op| {
            let command = pb::Recreate {
                op_id: op.into(),
                container: name.clone(),
                ..Default::default()
            };
            let (runner, tx) = (runner.clone(), tx.clone());
            tokio::spawn(async move { runner.recreate(command, tx).await })
        })
        .collect();
    drop(tx);
    let heard = tokio::time::timeout(Duration::from_secs(120), listen(rx))
        .await
        .context("the updates did not end")?;
    for task in tasks {
        task.await?;
    }
    let mut statuses: Vec<pb::recreate_result::Status> = heard
        .results
        .values()
        .flatten()
        .map(|(r, _)| r.status())
        .collect();
    statuses.sort();
    use pb::recreate_result::Status;
    let mut expected = vec![Status::Updated, Status::AlreadyCurrent];
    expected.sort();
    ensure!(statuses == expected, "{statuses:?}");
    ensure!(s.named_like(&name)? == std::slice::from_ref(&name));
    ensure!(s.inspect(&name, "{{.State.Running}}")? == "true");
    Ok(())
}

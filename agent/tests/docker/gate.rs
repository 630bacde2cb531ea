//! The coordinator's hook points inside an operation, on a real engine, through a scripted
//! gate: each is asked when its step is due, in order; a veto before a dependant's stop rolls
//! the update back and reports it `vetoed`; a veto before a soft dependant's start leaves it
//! stopped (reported); a veto before a hard dependant's recreate leaves its old container.

use std::sync::{Arc, Mutex};

use anyhow::ensure;
use futures_util::future::BoxFuture;
use ouroboros_agent::recreate::executor::Request;
use ouroboros_agent::recreate::gate::{self, Ask, HookGate, Hooks};
use ouroboros_agent::recreate::journal::Outcome;
use ouroboros_agent::recreate::{DependantReport, Report};
use ouroboros_tests::{ImageSpec, require_engine};

use crate::recreate::{Setup, request};

/// Says no at the points in `veto`, yes elsewhere; remembers every question.
struct Scripted {
    veto: Vec<&'static str>,
    asked: Mutex<Vec<(String, String)>>,
}

impl HookGate for Scripted {
    fn ask(&self, ask: Ask) -> BoxFuture<'_, Result<(), String>> {
        self.asked
            .lock()
            .unwrap()
            .push((ask.point.to_owned(), ask.subject.clone()));
        let answer = if self.veto.contains(&ask.point) {
            Err(format!("vetoed by hook {}/10-test: not now", ask.point))
        } else {
            Ok(())
        };
        Box::pin(async move { answer })
    }
}

/// `web` with a soft and a hard dependant (all on v1), v2 published; the gate made (each
/// request names it, see [`Stack::request`]).
struct Stack {
    s: Setup,
    web: String,
    soft: String,
    hard: String,
    gate: Arc<Scripted>,
}

async fn stack(prefix: &str, veto: &[&'static str]) -> anyhow::Result<Option<Stack>> {
    let Some(engine) = require_engine() else {
        return Ok(None);
    };
    let s = Setup::new(engine).await?;
    let none = ["--network", "none"];
    let web = s
        .cleanup
        .run_container(&format!("{prefix}-web"), &none, &s.v1.reference, &[])?;
    let soft_label = format!("com.ouroboros.depends_on={web}");
    let soft = s.cleanup.run_container(
        &format!("{prefix}-soft"),
        &["--network", "none", "--label", &soft_label],
        &s.v1.reference,
        &[],
    )?;
    let hard_label = format!("com.ouroboros.hard_depends_on={web}");
    let hard = s.cleanup.run_container(
        &format!("{prefix}-hard"),
        &["--network", "none", "--label", &hard_label],
        &s.v1.reference,
        &[],
    )?;
    s.publish_next(ImageSpec::new(2))?;
    let gate = Arc::new(Scripted {
        veto: veto.to_vec(),
        asked: Mutex::default(),
    });
    Ok(Some(Stack {
        s,
        web,
        soft,
        hard,
        gate,
    }))
}

impl Stack {
    /// A request for `container` whose hook points are asked through the scripted gate.
    fn request(&self, op: &str, container: &str) -> Request {
        Request {
            hooks: Some(Hooks(self.gate.clone())),
            ..request(op, container)
        }
    }

    fn asked(&self) -> Vec<(String, String)> {
        self.gate.asked.lock().unwrap().clone()
    }

    fn dependant<'a>(&self, report: &'a Report, name: &str) -> anyhow::Result<&'a DependantReport> {
        report
            .dependants
            .iter()
            .find(|d| d.container == name)
            .ok_or_else(|| anyhow::anyhow!("{name} not in {report:?}"))
    }

    fn running(&self, name: &str) -> anyhow::Result<bool> {
        Ok(self.s.inspect(name, "{{.State.Running}}")? == "true")
    }
}

#[tokio::test]
async fn a_veto_before_a_dependant_stop_rolls_the_update_back_as_vetoed() -> anyhow::Result<()> {
    let Some(st) = stack("gt-stop", &[gate::BEFORE_STOP_DEPENDS]).await? else {
        return Ok(());
    };
    let ids: Vec<String> = [&st.web, &st.soft, &st.hard]
        .iter()
        .map(|n| st.s.inspect(n, "{{.Id}}"))
        .collect::<anyhow::Result<_>>()?;
    let report =
        st.s.recreator
            .run(&st.request("op-gt-stop", &st.web), &|_| {})
            .await?;
    ensure!(
        report.outcome
            == Outcome::Vetoed {
                reason: "vetoed by hook before_stop_depends_container/10-test: not now".into()
            },
        "{report:?}"
    );
    ensure!(
        st.asked() == [("before_stop_depends_container".to_owned(), st.soft.clone())],
        "{:?}",
        st.asked()
    );
    st.s.assert_old_restored(&st.web, &ids[0])?;
    for (name, id) in [(&st.soft, &ids[1]), (&st.hard, &ids[2])] {
        ensure!(st.s.inspect(name, "{{.Id}}")? == *id, "{name} changed");
        ensure!(st.running(name)?, "{name} not running");
    }
    Ok(())
}

#[tokio::test]
async fn each_point_is_asked_in_order_and_a_start_veto_leaves_the_soft_dependant_stopped()
-> anyhow::Result<()> {
    let Some(st) = stack("gt-start", &[gate::BEFORE_START_DEPENDS]).await? else {
        return Ok(());
    };
    let hard_id = st.s.inspect(&st.hard, "{{.Id}}")?;
    let report =
        st.s.recreator
            .run(&st.request("op-gt-start", &st.web), &|_| {})
            .await?;
    ensure!(
        matches!(report.outcome, Outcome::Updated { .. }),
        "{report:?}"
    );
    let expected: Vec<(String, String)> = [
        ("before_stop_depends_container", &st.soft),
        ("before_recreate_hard_depends_container", &st.hard),
        ("after_recreate_hard_depends_container", &st.hard),
        ("before_start_depends_container", &st.soft),
    ]
    .iter()
    .map(|(p, n)| ((*p).to_owned(), (*n).clone()))
    .collect();
    ensure!(st.asked() == expected, "{:?}", st.asked());
    ensure!(
        st.s.inspect(&st.hard, "{{.Id}}")? != hard_id,
        "hard not recreated"
    );
    ensure!(st.running(&st.hard)?, "hard not running");
    ensure!(!st.running(&st.soft)?, "the vetoed start happened");
    let soft = st.dependant(&report, &st.soft)?;
    ensure!(
        soft.action == "failed"
            && soft.reason
                == "left stopped: vetoed by hook before_start_depends_container/10-test: not now",
        "{soft:?}"
    );
    Ok(())
}

#[tokio::test]
async fn a_veto_before_a_hard_recreate_keeps_its_old_container() -> anyhow::Result<()> {
    let Some(st) = stack("gt-hard", &[gate::BEFORE_RECREATE_HARD]).await? else {
        return Ok(());
    };
    let (web_id, hard_id) = (
        st.s.inspect(&st.web, "{{.Id}}")?,
        st.s.inspect(&st.hard, "{{.Id}}")?,
    );
    let report =
        st.s.recreator
            .run(&st.request("op-gt-hard", &st.web), &|_| {})
            .await?;
    ensure!(
        matches!(report.outcome, Outcome::Updated { .. }),
        "{report:?}"
    );
    ensure!(
        st.s.inspect(&st.web, "{{.Id}}")? != web_id,
        "web not updated"
    );
    ensure!(
        st.s.inspect(&st.hard, "{{.Id}}")? == hard_id,
        "hard recreated"
    );
    ensure!(
        st.running(&st.hard)? && st.running(&st.soft)?,
        "not running"
    );
    let hard = st.dependant(&report, &st.hard)?;
    ensure!(
        hard.action == "restored" && hard.reason.starts_with("not recreated: vetoed by hook"),
        "{hard:?}"
    );
    ensure!(
        !st.asked()
            .iter()
            .any(|(p, _)| p == "after_recreate_hard_depends_container"),
        "{:?}",
        st.asked()
    );
    Ok(())
}

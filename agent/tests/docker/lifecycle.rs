//! Container lifecycle commands (labels) on a real engine: `pre-update` exiting 75 skips the
//! update (`vetoed`, nothing touched); the four phases run in order, `pre-update` in the old
//! container and `post-update` in the new one; a failing or overlong `pre-update` refuses the
//! update, bounded by its timeout label.

use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use ouroboros_agent::recreate::journal::Outcome;
use ouroboros_tests::{ImageSpec, require_engine};

use crate::recreate::{Setup, request};

#[tokio::test]
async fn a_pre_update_exiting_75_skips_the_update_and_touches_nothing() -> anyhow::Result<()> {
    let Some(engine) = require_engine() else {
        return Ok(());
    };
    let s = Setup::new(engine).await?;
    let name = s.cleanup.run_container(
        "lc-skip",
        &[
            "--network",
            "none",
            "--label",
            "com.centurylinklabs.watchtower.lifecycle.pre-update=echo still busy; exit 75",
        ],
        &s.v1.reference,
        &[],
    )?;
    let id = s.inspect(&name, "{{.Id}}")?;
    let started_at = s.inspect(&name, "{{.State.StartedAt}}")?;
    s.publish_next(ImageSpec::new(2))?;
    let outcome = s.recreator.recreate(&request("op-lc-skip", &name)).await?;
    match &outcome {
        Outcome::Vetoed { reason } => ensure!(
            reason == "skipped by the container's pre-update command (exit 75: still busy)",
            "{reason}"
        ),
        other => anyhow::bail!("expected a skip, got {other:?}"),
    }
    s.assert_old_restored(&name, &id)?;
    ensure!(
        s.inspect(&name, "{{.State.StartedAt}}")? == started_at,
        "restarted"
    );
    // The same op id again: the stored answer, nothing run again.
    let again = s.recreator.recreate(&request("op-lc-skip", &name)).await?;
    ensure!(again == outcome, "{again:?}");
    Ok(())
}

#[tokio::test]
async fn the_phases_run_in_order_pre_update_in_the_old_container_post_update_in_the_new()
-> anyhow::Result<()> {
    let Some(engine) = require_engine() else {
        return Ok(());
    };
    let s = Setup::new(engine).await?;
    let out = tempfile::Builder::new()
        .prefix("ouroboros-test-lifecycle-")
        .tempdir()?;
    let bind = format!("{}:/out", out.path().display());
    // Each phase appends its name and whether the container is the old one (marked by
    // pre-check and pre-update in its own filesystem).
    let phase = |name: &str| {
        format!("if [ -e /marked-old ]; then c=old; else c=new; fi; echo {name} $c >> /out/order")
    };
    let labels = [
        format!(
            "com.ouroboros.hook.pre-check=touch /marked-old; {}",
            phase("pre-check")
        ),
        format!(
            "com.ouroboros.hook.pre-update=touch /marked-old; {}",
            phase("pre-update")
        ),
        format!(
            "com.centurylinklabs.watchtower.lifecycle.post-update={}",
            phase("post-update")
        ),
        format!("com.ouroboros.hook.post-check={}", phase("post-check")),
    ];
    let mut options = vec!["--network", "none", "-v", &bind];
    for l in &labels {
        options.extend(["--label", l.as_str()]);
    }
    let name = s
        .cleanup
        .run_container("lc-order", &options, &s.v1.reference, &[])?;
    let id = s.inspect(&name, "{{.Id}}")?;
    s.publish_next(ImageSpec::new(2))?;
    let outcome = s.recreator.recreate(&request("op-lc-order", &name)).await?;
    ensure!(matches!(outcome, Outcome::Updated { .. }), "{outcome:?}");
    ensure!(s.inspect(&name, "{{.Id}}")? != id, "not recreated");
    let order = std::fs::read_to_string(out.path().join("order")).context("nothing ran")?;
    ensure!(
        order == "pre-check old\npre-update old\npost-update new\npost-check new\n",
        "{order}"
    );
    Ok(())
}

#[tokio::test]
async fn a_failing_or_overlong_pre_update_refuses_within_its_timeout_label() -> anyhow::Result<()> {
    let Some(engine) = require_engine() else {
        return Ok(());
    };
    let s = Setup::new(engine).await?;
    let slow = s.cleanup.run_container(
        "lc-slow",
        &[
            "--network",
            "none",
            "--label",
            "com.ouroboros.hook.pre-update=sleep 60",
            "--label",
            "com.ouroboros.hook.timeout=2",
        ],
        &s.v1.reference,
        &[],
    )?;
    let failing = s.cleanup.run_container(
        "lc-fail",
        &[
            "--network",
            "none",
            "--label",
            "com.centurylinklabs.watchtower.lifecycle.pre-update=echo no drain >&2; exit 3",
        ],
        &s.v1.reference,
        &[],
    )?;
    let (slow_id, failing_id) = (
        s.inspect(&slow, "{{.Id}}")?,
        s.inspect(&failing, "{{.Id}}")?,
    );
    s.publish_next(ImageSpec::new(2))?;
    let started = Instant::now();
    let outcome = s.recreator.recreate(&request("op-lc-slow", &slow)).await?;
    ensure!(
        started.elapsed() < Duration::from_secs(20),
        "{:?}",
        started.elapsed()
    );
    ensure!(
        outcome
            == Outcome::Refused {
                reason:
                    "the container's pre-update command failed (no end within its deadline (2 s))"
                        .into()
            },
        "{outcome:?}"
    );
    s.assert_old_restored(&slow, &slow_id)?;
    let outcome = s
        .recreator
        .recreate(&request("op-lc-fail", &failing))
        .await?;
    ensure!(
        outcome
            == Outcome::Refused {
                reason: "the container's pre-update command failed (exit 3: no drain)".into()
            },
        "{outcome:?}"
    );
    s.assert_old_restored(&failing, &failing_id)?;
    Ok(())
}

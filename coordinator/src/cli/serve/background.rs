//! What `serve` runs beside the gRPC server: the scheduled cycles and the watch on agents that
//! stay away.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::fleet::Fleet;
use crate::plan::schedule::Schedule;
use crate::run::cycle::Cycle;

/// Runs a cycle at every tick of `schedule` until `stop`. The wait is computed after each
/// cycle, so missed ticks collapse into one run.
pub(super) async fn scheduled_cycles(
    cycle: Arc<Cycle>,
    schedule: Schedule,
    detect_only: bool,
    mut stop: watch::Receiver<bool>,
) {
    // Rollouts a restart interrupted go on before anything new.
    tokio::select! {
        () = cycle.resume() => {}
        _ = stop.wait_for(|s| *s) => return,
    }
    loop {
        let wait = schedule
            .wait_from(chrono::Utc::now())
            .unwrap_or(crate::plan::schedule::DEFAULT_INTERVAL);
        let wait_ms = i64::try_from(wait.as_millis()).unwrap_or(i64::MAX);
        cycle.next_at.store(
            ouroboros_shared::time_fmt::now_unix_ms().saturating_add(wait_ms),
            std::sync::atomic::Ordering::Relaxed,
        );
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let report = cycle.run(detect_only).await;
        let pruned: usize = report.pruned.iter().map(|p| p.removed.len()).sum();
        let checked = report.checked;
        let count = |f: &dyn Fn(&crate::run::cycle::Checked) -> bool| {
            checked.iter().filter(|c| f(c)).count()
        };
        let updates =
            count(&|c| matches!(c.detection.decision, crate::detect::Decision::Update { .. }));
        let failed = count(&|c| {
            c.result
                .as_ref()
                .is_some_and(|r| !r.status.succeeded() && !r.status.left_alone())
        });
        tracing::info!(
            containers = checked.len(),
            updates,
            failed,
            detect_only,
            volumes_pruned = pruned,
            "Scheduled check cycle done."
        );
    }
}

/// Logs (WARN) and notifies "agent lost" once a host has been away for `after` (it was
/// connected during this run), and "agent back" (INFO) when it returns.
pub(super) async fn watch_agents(
    fleet: Arc<Fleet>,
    notifiers: crate::notify::Notifiers,
    after: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let mut seen_connected = std::collections::HashSet::new();
    let mut lost = std::collections::HashSet::new();
    let mut away_since: std::collections::HashMap<String, tokio::time::Instant> =
        std::collections::HashMap::new();
    let tick = (after / 4).clamp(Duration::from_millis(200), Duration::from_secs(5));
    loop {
        tokio::select! {
            () = tokio::time::sleep(tick) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        for h in fleet.links() {
            let host = h.host.clone();
            if h.connected {
                seen_connected.insert(host.clone());
                away_since.remove(&host);
                if lost.remove(&host) {
                    tracing::info!(host = %host, "Agent back.");
                    notifiers.send(crate::notify::Message {
                        event: "agent-back",
                        kind: crate::notify::Kind::Success,
                        title: format!("Ouroboros: agent of {host} is back"),
                        body: format!("{host} is connected again."),
                    });
                }
            } else if seen_connected.contains(&host) && !lost.contains(&host) {
                let since = *away_since
                    .entry(host.clone())
                    .or_insert_with(tokio::time::Instant::now);
                if since.elapsed() >= after {
                    lost.insert(host.clone());
                    tracing::warn!(
                        host = %host,
                        away_s = after.as_secs(),
                        "Agent lost: not connected for {} s; its containers are not updated until it is back.",
                        after.as_secs()
                    );
                    notifiers.send(crate::notify::Message {
                        event: "agent-lost",
                        kind: crate::notify::Kind::Warning,
                        title: format!("Ouroboros: agent of {host} lost"),
                        body: format!(
                            "{host} has not been connected for {} s; its containers are not updated.",
                            after.as_secs()
                        ),
                    });
                }
            }
        }
    }
}

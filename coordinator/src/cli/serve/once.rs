//! `serve --run-once`: the server runs until the fleet's agents have reported, one cycle runs,
//! its report is printed, the server stops.

use std::net::SocketAddr;
use std::time::Duration;

use super::{ServeConfig, prepare_and_listen, run};
use crate::admin::args::Failure;

/// `serve --run-once`: serve until the known hosts have reported (or the wait ends), run one
/// cycle, print it, stop.
pub(super) async fn serve_once(config: ServeConfig, listen: SocketAddr) -> Result<(), Failure> {
    let wait = config.run_once.unwrap_or(Duration::from_secs(60));
    let dry_run = config.detect_only;
    let (prepared, listener, _) = prepare_and_listen(config, listen).await?;
    let fleet = prepared.fleet();
    let cycle = prepared.cycle();
    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    let server = tokio::spawn(run(prepared, listener, async move {
        let _ = stop_rx.wait_for(|s| *s).await;
    }));
    let once = async {
        let missing = wait_for_fleet(&fleet, wait).await;
        cycle.resume().await;
        let report = cycle.run(dry_run).await;
        (missing, report)
    };
    let outcome = tokio::select! {
        done = once => Some(done),
        () = ouroboros_shared::shutdown::signal() => None,
    };
    let _ = stop_tx.send(true);
    // The server lets notifications under way end (35 s at most).
    match tokio::time::timeout(Duration::from_secs(40), server).await {
        Ok(Ok(Err(e))) => return Err(Failure::runtime(e)),
        Ok(Err(e)) => return Err(Failure::runtime(format!("server task failed: {e}"))),
        _ => {}
    }
    let Some((missing, report)) = outcome else {
        return Err(Failure::runtime("interrupted before the cycle finished"));
    };
    let printed = crate::admin::client::print_check(
        &crate::admin::api::check_response(report),
        crate::admin::output::OutputFormat::Table,
    );
    if !missing.is_empty() {
        return Err(Failure::runtime(format!(
            "host(s) not reporting within {}s: {}",
            wait.as_secs(),
            missing.join(", ")
        )));
    }
    printed
}

/// Waits until every host the store knows is connected and has reported on this connection,
/// at most `wait`. Returns the hosts still missing. With an empty store (a first run) the
/// fleet is whoever comes: the wait ends once hosts have reported and no new one came for
/// [`SETTLE`].
async fn wait_for_fleet(fleet: &crate::fleet::Fleet, wait: Duration) -> Vec<String> {
    const SETTLE: Duration = Duration::from_secs(5);
    let deadline = tokio::time::Instant::now() + wait;
    let first_run = fleet.hosts().is_empty();
    let mut known = 0;
    let mut changed = tokio::time::Instant::now();
    loop {
        let hosts = fleet.hosts();
        if hosts.len() != known {
            known = hosts.len();
            changed = tokio::time::Instant::now();
        }
        let missing: Vec<String> = hosts
            .iter()
            .filter(|h| !(h.connected && h.reported))
            .map(|h| h.record.host.clone())
            .collect();
        let settled = !first_run || changed.elapsed() >= SETTLE;
        if !hosts.is_empty() && missing.is_empty() && settled {
            return missing;
        }
        if tokio::time::Instant::now() >= deadline {
            if hosts.is_empty() {
                return vec!["(no agent connected)".to_owned()];
            }
            return missing;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

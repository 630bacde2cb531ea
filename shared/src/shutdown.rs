//! Graceful shutdown on SIGTERM or SIGINT.

/// Completes on the first SIGTERM or SIGINT.
pub async fn signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let term = signal(SignalKind::terminate());
    let int = signal(SignalKind::interrupt());
    match (term, int) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM received; shutting down."),
                _ = int.recv() => tracing::info!("SIGINT received; shutting down."),
            }
        }
        _ => {
            // No signal handling possible: run until killed.
            std::future::pending::<()>().await;
        }
    }
}

/// Completes on the first SIGTERM or SIGINT, like [`signal`]; from then on a second one ends
/// the process at once with exit code `forced_exit`, abandoning the graceful path (work in
/// flight is left to the next start's recovery).
pub async fn signal_then_force(forced_exit: i32) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        // No signal handling possible: run until killed.
        return std::future::pending::<()>().await;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received; shutting down (a second signal ends the process at once)."),
        _ = int.recv() => tracing::info!("SIGINT received; shutting down (a second signal ends the process at once)."),
    }
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        tracing::warn!("Second signal: exiting now; the next start recovers what was in flight.");
        std::process::exit(forced_exit);
    });
}

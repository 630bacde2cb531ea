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

//! The agent's liveness, for `ouroboros-agent healthcheck` (the image's `HEALTHCHECK`, which
//! runs without a shell). While the agent runs, a task pings the Docker engine every [`BEAT`]
//! and, when the engine answers, writes the time into `DATA_DIR/health`. The healthcheck
//! reads that file: healthy when it was written less than [`MAX_AGE`] ago. A stuck agent (a
//! blocked runtime, an engine that no longer answers, an agent still waiting for its engine)
//! stops writing it, and the check fails with one line saying since when.
//!
//! The link to the coordinator is not part of it: a coordinator that restarts must not make
//! every agent container unhealthy (the coordinator's `hosts` shows links).

use std::path::{Path, PathBuf};
use std::time::Duration;

use ouroboros_shared::time_fmt::now_unix_ms;
use tokio::sync::watch;
use tracing::{debug, warn};

use crate::engine::Engine;

/// The file under the data dir that the beat writes.
pub const HEALTH_FILE: &str = "health";
/// How often the engine is pinged and the file written.
pub const BEAT: Duration = Duration::from_secs(10);
/// The longest an engine ping may take.
const PING_TIMEOUT: Duration = Duration::from_secs(10);
/// Older than this (several missed beats), the agent counts as stuck.
pub const MAX_AGE: Duration = Duration::from_secs(60);

/// The file's path under `data_dir`.
pub fn health_file(data_dir: &Path) -> PathBuf {
    data_dir.join(HEALTH_FILE)
}

/// Removes a file left by an earlier run: until this run's first beat, the agent is not healthy.
pub fn forget(data_dir: &Path) {
    let _ = std::fs::remove_file(health_file(data_dir));
}

/// Writes `now_ms` (milliseconds since the epoch) into the file, atomically.
pub fn record(data_dir: &Path, now_ms: i64) -> std::io::Result<()> {
    let path = health_file(data_dir);
    let tmp = data_dir.join(format!("{HEALTH_FILE}.tmp"));
    std::fs::write(&tmp, format!("{now_ms}\n"))?;
    std::fs::rename(tmp, path)
}

/// The verdict at `now_ms`: `Ok(line)` when the last beat is younger than `max_age`, else
/// `Err(line)`; either line says why.
pub fn check(data_dir: &Path, now_ms: i64, max_age: Duration) -> Result<String, String> {
    let path = health_file(data_dir);
    let text = std::fs::read_to_string(&path).map_err(|e| {
        format!(
            "unhealthy: no engine answer recorded yet ({}: {e})",
            path.display()
        )
    })?;
    let at: i64 = text.trim().parse().map_err(|_| {
        format!(
            "unhealthy: {} holds {:?}, not a time",
            path.display(),
            text.trim()
        )
    })?;
    let age = Duration::from_millis(u64::try_from(now_ms.saturating_sub(at)).unwrap_or(0));
    if age < max_age {
        Ok(format!(
            "healthy: the Docker engine answered {}s ago",
            age.as_secs()
        ))
    } else {
        Err(format!(
            "unhealthy: the Docker engine last answered {}s ago (limit {}s); the agent is stuck or its engine is gone",
            age.as_secs(),
            max_age.as_secs()
        ))
    }
}

/// Pings the engine every [`BEAT`] and records each answer, until `stopping` turns true.
pub async fn beat(engine: Engine, data_dir: PathBuf, mut stopping: watch::Receiver<bool>) {
    loop {
        match tokio::time::timeout(PING_TIMEOUT, engine.ping()).await {
            Ok(Ok(())) => {
                if let Err(error) = record(&data_dir, now_unix_ms()) {
                    warn!(%error, dir = %data_dir.display(), "Cannot write the health file.");
                }
            }
            Ok(Err(error)) => debug!(%error, "Docker engine did not answer the health ping."),
            Err(_) => debug!("Docker engine health ping timed out."),
        }
        tokio::select! {
            () = tokio::time::sleep(BEAT) => {}
            () = crate::link::stopped(&mut stopping) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_800_000_000_000;

    #[test]
    fn a_recent_beat_is_healthy() {
        let dir = tempfile::tempdir().unwrap();
        record(dir.path(), NOW - 5_000).unwrap();
        let line = check(dir.path(), NOW, MAX_AGE).unwrap();
        assert_eq!(line, "healthy: the Docker engine answered 5s ago");
    }

    #[test]
    fn a_stale_beat_is_unhealthy() {
        let dir = tempfile::tempdir().unwrap();
        record(dir.path(), NOW - 61_000).unwrap();
        let line = check(dir.path(), NOW, MAX_AGE).unwrap_err();
        assert!(
            line.starts_with("unhealthy: the Docker engine last answered 61s ago"),
            "{line}"
        );
    }

    #[test]
    fn no_beat_yet_or_garbage_is_unhealthy() {
        let dir = tempfile::tempdir().unwrap();
        let line = check(dir.path(), NOW, MAX_AGE).unwrap_err();
        assert!(
            line.starts_with("unhealthy: no engine answer recorded yet"),
            "{line}"
        );
        std::fs::write(health_file(dir.path()), "soon").unwrap();
        let line = check(dir.path(), NOW, MAX_AGE).unwrap_err();
        assert!(line.contains("not a time"), "{line}");
        record(dir.path(), NOW).unwrap();
        forget(dir.path());
        assert!(check(dir.path(), NOW, MAX_AGE).is_err());
    }
}

//! Container lifecycle hooks: commands a container's labels ask to run inside it with
//! `docker exec` (`sh -c`) around its update, Watchtower's
//! `com.centurylinklabs.watchtower.lifecycle.{pre-check,post-check,pre-update,post-update}`
//! and Ouroboros' `com.ouroboros.hook.*` (which win over Watchtower's for the same phase).
//! Deadlines: Watchtower's `...lifecycle.PHASE-timeout` in minutes, Ouroboros'
//! `com.ouroboros.hook.timeout` in seconds, else one minute.
//!
//! Where they run in an update: `pre-check` before anything (the registry check is the
//! coordinator's and runs nothing in containers), `pre-update` once the new image is pulled
//! and before anything is stopped (exit 75 skips the update, as in Watchtower: `vetoed`; any
//! other failure refuses it, nothing changed), `post-update` in the new container once it
//! passed its health gate, `post-check` at the end in whatever container runs under the name.
//! Commands run only in running containers. The Engine API cannot stop an exec: past its
//! deadline a command is left to finish on its own and counts as failed.

use std::collections::HashMap;
use std::time::Duration;

use bollard::Docker;
use bollard::exec::{StartExecOptions, StartExecResults};
use bollard::models::ExecConfig;
use futures_util::StreamExt;
use ouroboros_shared::names::*;
use tracing::{info, warn};

use super::executor::Recreator;
use super::journal::Outcome;

/// Deadline of a command without a timeout label (Watchtower's default).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);
/// Output kept of one command (for the log and the first line of a refusal).
const MAX_OUTPUT: usize = 16 * 1024;

/// When a command runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    PreCheck,
    PostCheck,
    PreUpdate,
    PostUpdate,
}

impl Phase {
    pub fn name(self) -> &'static str {
        match self {
            Self::PreCheck => "pre-check",
            Self::PostCheck => "post-check",
            Self::PreUpdate => "pre-update",
            Self::PostUpdate => "post-update",
        }
    }

    fn labels(self) -> (&'static str, &'static str) {
        match self {
            Self::PreCheck => (LABEL_HOOK_PRE_CHECK, LABEL_WATCHTOWER_PRE_CHECK),
            Self::PostCheck => (LABEL_HOOK_POST_CHECK, LABEL_WATCHTOWER_POST_CHECK),
            Self::PreUpdate => (LABEL_HOOK_PRE_UPDATE, LABEL_WATCHTOWER_PRE_UPDATE),
            Self::PostUpdate => (LABEL_HOOK_POST_UPDATE, LABEL_WATCHTOWER_POST_UPDATE),
        }
    }
}

/// One command to run, from the labels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Command {
    /// The label it came from.
    pub label: &'static str,
    pub script: String,
    pub timeout: Duration,
}

/// Seconds (or Watchtower's minutes) of a timeout label; a bad or zero value is none.
fn timeout_label(labels: &HashMap<String, String>, key: &str, unit: u64) -> Option<Duration> {
    let n = labels.get(key)?.trim().parse::<u64>().ok()?;
    (n > 0).then(|| Duration::from_secs(n.saturating_mul(unit).min(24 * 3600)))
}

/// `phase`'s command in `labels`, if any (Ouroboros' label first).
pub fn command(labels: &HashMap<String, String>, phase: Phase) -> Option<Command> {
    let (ours, watchtower) = phase.labels();
    let present = |key: &str| labels.get(key).filter(|s| !s.trim().is_empty()).cloned();
    if let Some(script) = present(ours) {
        let timeout = timeout_label(labels, LABEL_HOOK_TIMEOUT, 1).unwrap_or(DEFAULT_TIMEOUT);
        return Some(Command {
            label: ours,
            script,
            timeout,
        });
    }
    let script = present(watchtower)?;
    let timeout_key = format!("{watchtower}{LABEL_WATCHTOWER_TIMEOUT_SUFFIX}");
    let timeout = timeout_label(labels, &timeout_key, 60).unwrap_or(DEFAULT_TIMEOUT);
    Some(Command {
        label: watchtower,
        script,
        timeout,
    })
}

/// How a command ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum End {
    Exited(i64),
    TimedOut(Duration),
    /// It could not be run (the exec failed).
    Failed(String),
}

impl std::fmt::Display for End {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Exited(code) => write!(f, "exit {code}"),
            Self::TimedOut(after) => {
                write!(f, "no end within its deadline ({} s)", after.as_secs())
            }
            Self::Failed(why) => write!(f, "could not run: {why}"),
        }
    }
}

/// One command's run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ran {
    pub end: End,
    /// stdout and stderr together, bounded.
    pub output: String,
}

impl Ran {
    /// The first non-empty line of the output, else how it ended.
    pub fn first_line(&self) -> String {
        self.output
            .lines()
            .map(str::trim)
            .find(|l| !l.is_empty())
            .map_or_else(|| self.end.to_string(), str::to_owned)
    }
}

/// Runs `command` in `container` (`sh -c`), waiting at most its deadline.
pub async fn exec(docker: &Docker, container: &str, command: &Command) -> Ran {
    let run = async {
        let config = ExecConfig {
            attach_stdout: Some(true),
            attach_stderr: Some(true),
            cmd: Some(vec!["sh".into(), "-c".into(), command.script.clone()]),
            ..ExecConfig::default()
        };
        let id = docker
            .create_exec(container, config)
            .await
            .map_err(|e| e.to_string())?
            .id;
        let mut output = Vec::new();
        let started = docker
            .start_exec(&id, None::<StartExecOptions>)
            .await
            .map_err(|e| e.to_string())?;
        if let StartExecResults::Attached {
            output: mut out, ..
        } = started
        {
            while let Some(chunk) = out.next().await {
                let Ok(chunk) = chunk else { break };
                let bytes = chunk.into_bytes();
                let room = MAX_OUTPUT.saturating_sub(output.len());
                output.extend_from_slice(&bytes[..bytes.len().min(room)]);
            }
        }
        let inspect = docker.inspect_exec(&id).await.map_err(|e| e.to_string())?;
        let code = inspect.exit_code.unwrap_or(-1);
        Ok::<_, String>((code, String::from_utf8_lossy(&output).into_owned()))
    };
    match tokio::time::timeout(command.timeout, run).await {
        Ok(Ok((code, output))) => Ran {
            end: End::Exited(code),
            output,
        },
        Ok(Err(why)) => Ran {
            end: End::Failed(why),
            output: String::new(),
        },
        Err(_) => Ran {
            end: End::TimedOut(command.timeout),
            output: String::new(),
        },
    }
}

impl Recreator {
    /// Runs `phase`'s command of `container` (id or name) when its labels have one and it
    /// runs; logs how it ended.
    pub(crate) async fn lifecycle(&self, container: &str, phase: Phase) -> Option<Ran> {
        let inspected = self.inspect(container).await?;
        if !inspected
            .state
            .as_ref()
            .and_then(|s| s.running)
            .unwrap_or(false)
        {
            return None;
        }
        let labels = inspected.config.and_then(|c| c.labels).unwrap_or_default();
        let command = command(&labels, phase)?;
        let ran = exec(&self.docker, container, &command).await;
        if ran.end == End::Exited(0) {
            info!(container = %container, phase = phase.name(), label = command.label, output = %ran.output, "Lifecycle command ran.");
        } else {
            warn!(container = %container, phase = phase.name(), label = command.label, end = %ran.end, output = %ran.output, "Lifecycle command failed.");
        }
        Some(ran)
    }

    /// The container's `pre-update` verdict: `Err` with the outcome when it skips (exit 75:
    /// vetoed) or fails (refused); nothing has changed either way.
    pub(crate) async fn pre_update(&self, container: &str) -> Result<(), Outcome> {
        let Some(ran) = self.lifecycle(container, Phase::PreUpdate).await else {
            return Ok(());
        };
        let said = |ran: &Ran| match ran.output.trim().is_empty() {
            true => ran.end.to_string(),
            false => format!("{}: {}", ran.end, ran.first_line()),
        };
        match ran.end {
            End::Exited(0) => Ok(()),
            End::Exited(LIFECYCLE_SKIP_EXIT) => Err(Outcome::Vetoed {
                reason: format!(
                    "skipped by the container's pre-update command ({})",
                    said(&ran)
                ),
            }),
            _ => Err(Outcome::Refused {
                reason: format!("the container's pre-update command failed ({})", said(&ran)),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn watchtower_labels_with_their_minutes_ours_with_seconds_and_ours_win() {
        let wt = labels(&[
            (LABEL_WATCHTOWER_PRE_UPDATE, "/drain.sh"),
            (
                "com.centurylinklabs.watchtower.lifecycle.pre-update-timeout",
                "2",
            ),
            (LABEL_WATCHTOWER_POST_UPDATE, "echo done"),
        ]);
        assert_eq!(
            command(&wt, Phase::PreUpdate),
            Some(Command {
                label: LABEL_WATCHTOWER_PRE_UPDATE,
                script: "/drain.sh".into(),
                timeout: Duration::from_secs(120),
            })
        );
        assert_eq!(
            command(&wt, Phase::PostUpdate).map(|c| c.timeout),
            Some(DEFAULT_TIMEOUT)
        );
        assert_eq!(command(&wt, Phase::PreCheck), None);
        let both = labels(&[
            (LABEL_WATCHTOWER_PRE_CHECK, "watchtower's"),
            (LABEL_HOOK_PRE_CHECK, "ours"),
            (LABEL_HOOK_TIMEOUT, "5"),
        ]);
        assert_eq!(
            command(&both, Phase::PreCheck),
            Some(Command {
                label: LABEL_HOOK_PRE_CHECK,
                script: "ours".into(),
                timeout: Duration::from_secs(5),
            })
        );
        // Blank commands and bad timeouts are none.
        let odd = labels(&[
            (LABEL_HOOK_POST_CHECK, "  "),
            (LABEL_HOOK_PRE_UPDATE, "x"),
            (LABEL_HOOK_TIMEOUT, "soon"),
        ]);
        assert_eq!(command(&odd, Phase::PostCheck), None);
        assert_eq!(
            command(&odd, Phase::PreUpdate).map(|c| c.timeout),
            Some(DEFAULT_TIMEOUT)
        );
    }
}

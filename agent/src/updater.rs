//! Self-update of an agent that cannot hand over: the agent of `up` is the coordinator's own
//! process, and two `up` processes cannot run side by side (one store, one set of ports). Its
//! container is recreated like any other, by a one-shot *updater* container that runs the
//! recreate sequence from outside (stop, rename aside, create, health gate, remove the old one,
//! or roll back), as Ouroboros starts a new instance to update itself.
//!
//! 1. The agent pulls the new image (with the coordinator's credentials), then starts
//!    `NAME-ouroboros-updater-OP` from the image it runs itself (known to work), with its own
//!    container's mounts (the Docker socket, the data volume) and environment, running
//!    `ouroboros-coordinator self-recreate`. It does not answer: its process is about to stop.
//! 2. The updater journals the recreate in `AGENT_DATA_DIR/updater/` (its restart policy runs
//!    it again after a crash, and it first finishes or reverts what it left).
//! 3. The new `up` (or the old one again, after a rollback) resumes its rollout and asks for
//!    the same op id: the agent answers with the updater's outcome from that journal, and
//!    removes updater containers that have ended.

use std::path::{Path, PathBuf};
use std::time::Duration;

use bollard::models::{ContainerCreateBody, HostConfig, RestartPolicy, RestartPolicyNameEnum};
use tracing::{info, warn};

use crate::engine::{DockerEndpoint, Engine};
use crate::own;
use crate::recreate::executor::{Deadlines, Recreator, Request};
use crate::recreate::journal::{Journal, Outcome, Step};
use crate::recreate::pull::split_pinned;
use crate::recreate::short;

/// What an updater container's name carries: `NAME-ouroboros-updater-OP`.
pub const UPDATER_MARK: &str = "-ouroboros-updater-";
/// The updater's journal, under the agent's data dir.
pub const JOURNAL_DIR: &str = "updater";
/// The subcommand of `ouroboros-coordinator` the updater runs.
pub const SUBCOMMAND: &str = "self-recreate";
/// Where the journal is seen from inside the updater: the agent's data dir, as mounted in
/// its own container.
const POLL: Duration = Duration::from_secs(1);

/// The agent's side: starts updaters and answers with their outcome.
pub struct Updater {
    own_id: String,
    journal_dir: PathBuf,
}

/// What to do with a recreate of the agent's own container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// Answer this now.
    Now(Outcome),
    /// The updater runs; its outcome is asked for again with the same op id.
    Later,
}

impl Updater {
    /// `data_dir`: the agent's data dir (on the container's volume).
    pub fn new(own_id: String, data_dir: &Path) -> Self {
        Self {
            own_id,
            journal_dir: data_dir.join(JOURNAL_DIR),
        }
    }

    pub fn own_id(&self) -> &str {
        &self.own_id
    }

    /// The updater's entry for `op_id`: `Some(Some(outcome))` when it ended, `Some(None)`
    /// while it runs (see [`Journal::peek`]: the running updater's files stay untouched).
    fn entry(&self, op_id: &str) -> Option<Option<Outcome>> {
        Some(match Journal::peek(&self.journal_dir, op_id)?.step {
            Step::Done { outcome } => Some(outcome),
            _ => None,
        })
    }

    /// Handles a recreate of the agent's own container: the outcome of the updater for this
    /// op id (waited for while it runs, up to `wait`), or a new updater.
    pub async fn handle(&self, recreator: &Recreator, request: &Request, wait: Duration) -> Answer {
        let started = std::time::Instant::now();
        loop {
            match self.entry(&request.op_id) {
                Some(Some(outcome)) => {
                    self.tidy(recreator, true).await;
                    return Answer::Now(outcome);
                }
                Some(None) if started.elapsed() < wait => tokio::time::sleep(POLL).await,
                Some(None) => return Answer::Later,
                None => break,
            }
        }
        match self.start(recreator, request).await {
            Ok(()) => Answer::Later,
            Err(reason) => Answer::Now(Outcome::Refused { reason }),
        }
    }

    /// Pulls the target and starts the updater container.
    async fn start(&self, recreator: &Recreator, request: &Request) -> Result<(), String> {
        let own = recreator
            .inspect(&self.own_id)
            .await
            .ok_or_else(|| format!("cannot inspect the agent's own container {}", self.own_id))?;
        let name = own
            .name
            .as_deref()
            .unwrap_or_default()
            .trim_start_matches('/')
            .to_owned();
        let config = own.config.clone().unwrap_or_default();
        let target = request
            .image
            .clone()
            .or_else(|| config.image.clone())
            .ok_or("no image to update to")?;
        let (pulled, tag) = split_pinned(&target).unwrap_or((target.clone(), None));
        recreator.pull(&pulled, request.auth.as_ref()).await?;
        let reference = match tag {
            Some(tag) => {
                recreator.tag(&pulled, &tag).await?;
                tag
            }
            None => pulled,
        };
        let host = own.host_config.clone().unwrap_or_default();
        let env = config.env.clone().unwrap_or_default();
        // The engine through a TCP address needs a network; a socket needs none.
        let tcp = env.iter().any(|e| {
            e.strip_prefix("DOCKER_HOST=")
                .is_some_and(|h| h.starts_with("tcp://") || h.starts_with("https://"))
        });
        let op = &request.op_id;
        let updater = format!("{name}{UPDATER_MARK}{}", short(op));
        let journal = self.journal_dir.display().to_string();
        let body = ContainerCreateBody {
            image: own.image.clone(),
            entrypoint: config.entrypoint.clone(),
            cmd: Some(
                [
                    SUBCOMMAND,
                    "--container",
                    &self.own_id,
                    "--image",
                    &reference,
                    "--op",
                    op,
                    "--journal-dir",
                    &journal,
                ]
                .map(str::to_owned)
                .to_vec(),
            ),
            env: Some(env),
            user: config.user.clone(),
            labels: Some(
                [
                    ("com.ouroboros.enable".to_owned(), "false".to_owned()),
                    ("com.ouroboros.updater".to_owned(), op.clone()),
                ]
                .into(),
            ),
            // No healthcheck of the image's: the updater is not the coordinator.
            healthcheck: Some(bollard::models::HealthConfig {
                test: Some(vec!["NONE".to_owned()]),
                ..Default::default()
            }),
            host_config: Some(HostConfig {
                binds: host.binds.clone(),
                mounts: host.mounts.clone(),
                network_mode: Some(if tcp { "host" } else { "none" }.to_owned()),
                restart_policy: Some(RestartPolicy {
                    name: Some(RestartPolicyNameEnum::ON_FAILURE),
                    maximum_retry_count: Some(3),
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let options = bollard::query_parameters::CreateContainerOptionsBuilder::new()
            .name(&updater)
            .build();
        let id = recreator
            .docker()
            .create_container(Some(options), body)
            .await
            .map_err(|e| format!("cannot create the updater container {updater}: {e}"))?
            .id;
        recreator
            .start(&id)
            .await
            .map_err(|e| format!("cannot start the updater container {updater}: {e}"))?;
        info!(op = %op, updater = %updater, image = %reference, "Self-update: the updater container recreates this container.");
        Ok(())
    }

    /// Removes the updater containers of this agent's container (waiting a little for one
    /// that is ending). Called when their outcome is known, and at the agent's start.
    pub async fn tidy(&self, recreator: &Recreator, outcome_known: bool) {
        let Some(name) = recreator.name_of(&self.own_id).await else {
            return;
        };
        let prefix = format!("{name}{UPDATER_MARK}");
        for (id, _) in recreator.named_with_prefix(&prefix).await {
            // One that still runs is at work (at the agent's start, the updater may be
            // waiting for this very container's health): left alone. Once its outcome is in
            // the journal, it is only writing its last words and ends within moments.
            let waits = if outcome_known { 60 } else { 0 };
            let mut running = runs(recreator, &id).await;
            for _ in 0..waits {
                if !running {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
                running = runs(recreator, &id).await;
            }
            if running {
                continue;
            }
            if let Err(e) = recreator.remove(&id).await {
                warn!(container = %id, error = %e, "Cannot remove an updater container that ended.");
            }
        }
    }
}

/// Whether container `id` runs (or restarts).
async fn runs(recreator: &Recreator, id: &str) -> bool {
    recreator
        .inspect(id)
        .await
        .and_then(|c| c.state)
        .is_some_and(|s| s.running.unwrap_or(false) || s.restarting.unwrap_or(false))
}

/// The updater's run (`ouroboros-coordinator self-recreate`): finishes or reverts what an
/// earlier run of it left, then recreates `container` on `image` (on the engine already).
pub async fn run(
    docker: &DockerEndpoint,
    journal_dir: &Path,
    container: &str,
    image: &str,
    op_id: &str,
) -> Result<Outcome, String> {
    let engine = Engine::connect(docker).await.map_err(|e| e.to_string())?;
    let journal = Journal::open(journal_dir).map_err(|e| e.to_string())?;
    let own = own::container_id();
    let recreator = Recreator::new(&engine, journal, Deadlines::default(), own);
    recreator.recover().await.map_err(|e| e.to_string())?;
    let request = Request {
        op_id: op_id.to_owned(),
        container: container.to_owned(),
        image: Some(image.to_owned()),
        skip_pull: true,
        ..Request::default()
    };
    recreator
        .recreate(&request)
        .await
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::recreate::journal::Entry;

    #[test]
    fn the_updaters_outcome_is_read_from_its_journal_without_opening_it() {
        let data = tempfile::tempdir().unwrap();
        let updater = Updater::new("a".repeat(64), data.path());
        assert_eq!(updater.entry("op-1"), None, "no updater ran");
        let journal = Journal::open(&data.path().join(JOURNAL_DIR)).unwrap();
        let mut entry = Entry {
            op_id: "op-1".into(),
            name: "up".into(),
            old_id: "a".repeat(64),
            aside_name: "up-ouroboros-old-op-1".into(),
            was_running: true,
            target_image: "r/up:2".into(),
            dependants: Vec::new(),
            leftovers: Vec::new(),
            step: Step::Planned,
        };
        journal.record(&entry).unwrap();
        // A half-written file of the running updater stays where it is.
        let half = data
            .path()
            .join(JOURNAL_DIR)
            .join(crate::recreate::journal::DIR)
            .join("op-1.json.tmp");
        std::fs::write(&half, "{").unwrap();
        assert_eq!(updater.entry("op-1"), Some(None), "under way");
        assert!(half.exists());
        let outcome = Outcome::Updated {
            new_id: "b".repeat(64),
            image_id: "sha256:00".into(),
        };
        entry.step = Step::Done {
            outcome: outcome.clone(),
        };
        journal.record(&entry).unwrap();
        assert_eq!(updater.entry("op-1"), Some(Some(outcome)));
        assert_eq!(updater.entry("../op-1"), None, "not a path");
    }
}

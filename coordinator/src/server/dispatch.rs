//! Commands to agents: the coordinator's side. Each connected agent's link registers its
//! outbound stream here; a command gets a fresh op id, goes down that stream, and its caller
//! waits for the agent's result (with a deadline), collecting the progress steps meanwhile.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use ouroboros_proto::v1 as pb;
use ouroboros_shared::reference::ImageRef;
use ouroboros_shared::time_fmt::now_unix_ms;
use tokio::sync::{mpsc, oneshot};
use tonic::Status;
use tracing::warn;

use crate::detect::credentials::Credentials;
use crate::fleet::SessionId;
use crate::plan::outcome::{Pruned, Status as Outcome, UpdateResult};

type Outbound = mpsc::Sender<Result<pb::CoordinatorMessage, Status>>;

struct Waiting {
    result: oneshot::Sender<(pb::CommandResult, Vec<String>)>,
    steps: Vec<String>,
}

struct Link {
    session: SessionId,
    outbound: Outbound,
    waiting: HashMap<String, Waiting>,
}

/// Why a command got no result.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CommandError {
    #[error("host {0} is not connected")]
    NotConnected(String),
    #[error(
        "host {host}'s agent went away during operation {op_id}; its journal finishes or reverts the operation when it is back"
    )]
    AgentGone { host: String, op_id: String },
    #[error("no result for operation {op_id} on host {host} within {timeout:?}")]
    TimedOut {
        host: String,
        op_id: String,
        timeout: Duration,
    },
}

/// What the agent answered to a `Recreate`.
#[derive(Debug, Clone, PartialEq)]
pub struct Recreated {
    pub op_id: String,
    pub result: UpdateResult,
    /// The steps it reported, in order.
    pub steps: Vec<String>,
}

impl Recreated {
    /// What an agent answered to a `Recreate` or an `UpdateService` (both answer with a
    /// `RecreateResult`), with the steps it reported.
    fn from_answer(op_id: String, answer: pb::CommandResult, steps: Vec<String>) -> Self {
        Recreated {
            result: answer.recreate.map_or_else(
                || UpdateResult::with(Outcome::Error, "the agent answered without a result"),
                UpdateResult::from,
            ),
            op_id,
            steps,
        }
    }
}

/// Commands to the fleet's agents, as the rollout runner and the cycle use them: the
/// [`Dispatcher`], or a fake in tests.
#[tonic::async_trait]
pub trait Commands: Send + Sync {
    /// A fresh op id.
    fn new_op_id(&self) -> String;
    /// Sends `Recreate` to `host` and waits (at most `timeout`) for its result.
    async fn recreate(
        &self,
        host: &str,
        container: &str,
        image: &str,
        options: &RecreateOptions,
        timeout: Duration,
    ) -> Result<Recreated, CommandError>;
    /// Sends `UpdateService` to `host` (a Swarm manager) and waits (at most `timeout`) for
    /// its result; the agent watches the update for at most `watch`.
    async fn update_service(
        &self,
        host: &str,
        service: &str,
        image: &str,
        op_id: Option<String>,
        watch: Duration,
        timeout: Duration,
    ) -> Result<Recreated, CommandError>;
    /// Sends `PruneVolumes` to `host` and waits for its result.
    async fn prune_volumes(&self, host: &str, timeout: Duration) -> Result<Pruned, CommandError>;
}

/// How one recreate is asked for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecreateOptions {
    /// A known op id (a rollout resending after a restart); a fresh one when `None`.
    pub op_id: Option<String>,
    /// Remove the old image after a successful update when nothing uses it.
    pub cleanup: bool,
    /// The health gate (0: the agent's own).
    pub min_healthy_ms: i64,
    pub healthy_deadline_ms: i64,
    /// With an empty `image`: the reference whose registry's credentials go with the pull.
    pub auth_image: Option<String>,
    /// Stopped before the update and started after it.
    pub soft_dependants: Vec<String>,
    /// Recreated with it and moved to these images (name → `repo:tag@digest`).
    pub dependant_images: std::collections::BTreeMap<String, String>,
    /// With hooks: the agent asks at each hook point inside the operation and waits this long
    /// for each verdict (0: it asks nothing).
    pub hook_deadline_ms: i64,
}

/// The links of connected agents, by host.
#[derive(Default)]
pub struct Dispatcher {
    links: Mutex<HashMap<String, Link>>,
    next_op: AtomicU64,
    credentials: Arc<Credentials>,
}

impl Dispatcher {
    /// `credentials` go with each pull, those of the image's registry only.
    pub fn new(credentials: Arc<Credentials>) -> Self {
        Self {
            credentials,
            ..Self::default()
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, Link>> {
        self.links.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A new connection of `host`; replaces an older one.
    pub fn register(&self, host: &str, session: SessionId, outbound: Outbound) {
        self.register_successor(host, session, outbound, None);
    }

    /// A new connection of `host` made by a successor agent completing self-update
    /// `handover_op`: the caller waiting for that operation's result keeps waiting on it.
    pub fn register_successor(
        &self,
        host: &str,
        session: SessionId,
        outbound: Outbound,
        handover_op: Option<&str>,
    ) {
        let mut links = self.lock();
        let mut waiting = HashMap::new();
        if let Some(op) = handover_op
            && let Some(w) = links.get_mut(host).and_then(|l| l.waiting.remove(op))
        {
            waiting.insert(op.to_owned(), w);
        }
        links.insert(
            host.to_owned(),
            Link {
                session,
                outbound,
                waiting,
            },
        );
    }

    /// The connection ended; its waiting callers learn that the agent went away.
    pub fn unregister(&self, host: &str, session: SessionId) {
        let mut links = self.lock();
        if links.get(host).is_some_and(|l| l.session == session) {
            links.remove(host);
        }
    }

    /// Whether operation `op_id` was sent to `host`'s current connection and waits for its
    /// result (an agent may ask for hooks only inside such an operation).
    pub fn waits_for(&self, host: &str, op_id: &str) -> bool {
        self.lock()
            .get(host)
            .is_some_and(|l| l.waiting.contains_key(op_id))
    }

    /// A progress step from `host`'s agent.
    pub fn progress(&self, host: &str, progress: pb::CommandProgress) {
        if let Some(w) = self
            .lock()
            .get_mut(host)
            .and_then(|l| l.waiting.get_mut(&progress.op_id))
        {
            w.steps.push(progress.step);
        }
    }

    /// A result from `host`'s agent.
    pub fn result(&self, host: &str, result: pb::CommandResult) {
        let waiting = self
            .lock()
            .get_mut(host)
            .and_then(|l| l.waiting.remove(&result.op_id));
        if let Some(w) = waiting {
            let _ = w.result.send((result, w.steps));
        }
    }

    /// A fresh op id, unique in this coordinator's life (and across restarts by its time).
    pub fn new_op_id(&self) -> String {
        let n = self.next_op.fetch_add(1, Ordering::Relaxed);
        format!("op-{}-{n}", now_unix_ms())
    }

    /// The credentials for pulling `image`, if its registry has any.
    async fn pull_auth(&self, image: &str) -> Option<pb::RegistryAuth> {
        let registry = ImageRef::parse(image).ok()?.registry;
        match self.credentials.get(&registry).await {
            Ok(found) => found.map(|c| c.pull_auth()),
            Err(e) => {
                warn!(registry = %registry, error = %e, "No credentials for the pull; trying anonymously.");
                None
            }
        }
    }

    /// Sends `Recreate` to `host` and waits for its result. `image` empty: the container's
    /// configured reference (pulled without credentials). `cleanup`: the agent removes the old
    /// image after a successful update unless something still uses it.
    pub async fn recreate(
        &self,
        host: &str,
        container: &str,
        image: &str,
        options: &RecreateOptions,
        timeout: Duration,
    ) -> Result<Recreated, CommandError> {
        let auth = match (image, &options.auth_image) {
            ("", Some(known)) => self.pull_auth(known).await,
            _ => self.pull_auth(image).await,
        };
        let (op_id, answer, steps) = self
            .command(host, options.op_id.clone(), timeout, |op_id| {
                pb::coordinator_message::Kind::Recreate(pb::Recreate {
                    op_id,
                    container: container.to_owned(),
                    image: image.to_owned(),
                    auth,
                    cleanup: options.cleanup,
                    min_healthy_ms: options.min_healthy_ms,
                    healthy_deadline_ms: options.healthy_deadline_ms,
                    soft_dependants: options.soft_dependants.clone(),
                    dependant_images: options
                        .dependant_images
                        .iter()
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect(),
                    ask_hooks: options.hook_deadline_ms > 0,
                    hook_deadline_ms: options.hook_deadline_ms,
                })
            })
            .await?;
        Ok(Recreated::from_answer(op_id, answer, steps))
    }

    /// Sends `UpdateService` to `host` (a manager of the service's swarm) and waits for its
    /// result: `service` goes to `image` (`repo:tag@sha256:…`), watched by the agent for at
    /// most `watch`. The registry credentials of the image go with it (every node pulls).
    pub async fn update_service(
        &self,
        host: &str,
        service: &str,
        image: &str,
        op_id: Option<String>,
        watch: Duration,
        timeout: Duration,
    ) -> Result<Recreated, CommandError> {
        let auth = self.pull_auth(image).await;
        let (op_id, answer, steps) = self
            .command(host, op_id, timeout, |op_id| {
                pb::coordinator_message::Kind::UpdateService(pb::UpdateService {
                    op_id,
                    service: service.to_owned(),
                    image: image.to_owned(),
                    auth,
                    deadline_ms: watch.as_millis() as i64,
                })
            })
            .await?;
        Ok(Recreated::from_answer(op_id, answer, steps))
    }

    /// Sends `PruneVolumes` to `host` and waits for its result.
    pub async fn prune_volumes(
        &self,
        host: &str,
        timeout: Duration,
    ) -> Result<Pruned, CommandError> {
        let (_, answer, _) = self
            .command(host, None, timeout, |op_id| {
                pb::coordinator_message::Kind::PruneVolumes(pb::PruneVolumes { op_id })
            })
            .await?;
        let r = answer.prune.unwrap_or_default();
        Ok(Pruned {
            host: host.to_owned(),
            removed: r.removed,
            error: r.error,
        })
    }

    /// Sends the command `make` builds for `op_id` (a fresh one when `None`) and waits for its
    /// result. A repeated op id gets the agent's stored result, not a second run.
    async fn command(
        &self,
        host: &str,
        op_id: Option<String>,
        timeout: Duration,
        make: impl FnOnce(String) -> pb::coordinator_message::Kind,
    ) -> Result<(String, pb::CommandResult, Vec<String>), CommandError> {
        let op_id = op_id.unwrap_or_else(|| self.new_op_id());
        let (tx, rx) = oneshot::channel();
        let outbound = {
            let mut links = self.lock();
            let link = links
                .get_mut(host)
                .ok_or_else(|| CommandError::NotConnected(host.to_owned()))?;
            link.waiting.insert(
                op_id.clone(),
                Waiting {
                    result: tx,
                    steps: Vec::new(),
                },
            );
            link.outbound.clone()
        };
        let command = pb::CoordinatorMessage {
            kind: Some(make(op_id.clone())),
        };
        let gone = || CommandError::AgentGone {
            host: host.to_owned(),
            op_id: op_id.clone(),
        };
        if outbound.send(Ok(command)).await.is_err() {
            self.forget(host, &op_id);
            return Err(gone());
        }
        let (result, steps) = match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(_)) => return Err(gone()),
            Err(_) => {
                self.forget(host, &op_id);
                return Err(CommandError::TimedOut {
                    host: host.to_owned(),
                    op_id,
                    timeout,
                });
            }
        };
        Ok((op_id, result, steps))
    }

    fn forget(&self, host: &str, op_id: &str) {
        if let Some(link) = self.lock().get_mut(host) {
            link.waiting.remove(op_id);
        }
    }
}

#[tonic::async_trait]
impl Commands for Dispatcher {
    fn new_op_id(&self) -> String {
        Dispatcher::new_op_id(self)
    }

    async fn recreate(
        &self,
        host: &str,
        container: &str,
        image: &str,
        options: &RecreateOptions,
        timeout: Duration,
    ) -> Result<Recreated, CommandError> {
        Dispatcher::recreate(self, host, container, image, options, timeout).await
    }

    async fn update_service(
        &self,
        host: &str,
        service: &str,
        image: &str,
        op_id: Option<String>,
        watch: Duration,
        timeout: Duration,
    ) -> Result<Recreated, CommandError> {
        Dispatcher::update_service(self, host, service, image, op_id, watch, timeout).await
    }

    async fn prune_volumes(&self, host: &str, timeout: Duration) -> Result<Pruned, CommandError> {
        Dispatcher::prune_volumes(self, host, timeout).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session() -> SessionId {
        SessionId::for_tests(7)
    }

    #[tokio::test]
    async fn a_command_gets_its_result_and_steps() {
        let d = std::sync::Arc::new(Dispatcher::default());
        let (tx, mut rx) = mpsc::channel(4);
        d.register("h1", session(), tx);
        let agent = {
            let d = d.clone();
            tokio::spawn(async move {
                let Some(Ok(pb::CoordinatorMessage {
                    kind: Some(pb::coordinator_message::Kind::Recreate(cmd)),
                })) = rx.recv().await
                else {
                    panic!("no Recreate sent");
                };
                assert_eq!(cmd.container, "web");
                // Hooks may be asked for inside this operation only, on this host only.
                assert!(d.waits_for("h1", &cmd.op_id));
                assert!(!d.waits_for("h2", &cmd.op_id));
                assert!(!d.waits_for("h1", "op-other"));
                d.progress(
                    "h1",
                    pb::CommandProgress {
                        op_id: cmd.op_id.clone(),
                        step: "stop".into(),
                    },
                );
                d.result(
                    "h1",
                    pb::CommandResult {
                        op_id: cmd.op_id,
                        recreate: Some(pb::RecreateResult::default()),
                        prune: None,
                    },
                );
            })
        };
        let outcome = d
            .recreate(
                "h1",
                "web",
                "",
                &RecreateOptions::default(),
                Duration::from_secs(5),
            )
            .await
            .unwrap();
        assert_eq!(outcome.steps, ["stop"]);
        assert_eq!(
            outcome.result.status,
            Outcome::Error,
            "an answer without a status"
        );
        assert!(
            !d.waits_for("h1", &outcome.op_id),
            "answered: no more hooks"
        );
        agent.await.unwrap();
    }

    #[tokio::test]
    async fn unknown_host_gone_agent_and_timeout_are_errors() {
        let d = Dispatcher::default();
        assert_eq!(
            d.recreate(
                "nope",
                "web",
                "",
                &RecreateOptions::default(),
                Duration::from_secs(1)
            )
            .await,
            Err(CommandError::NotConnected("nope".into()))
        );
        let (tx, rx) = mpsc::channel(4);
        d.register("h1", session(), tx);
        let timed_out = d
            .recreate(
                "h1",
                "web",
                "",
                &RecreateOptions::default(),
                Duration::from_millis(50),
            )
            .await;
        assert!(
            matches!(timed_out, Err(CommandError::TimedOut { .. })),
            "{timed_out:?}"
        );
        drop(rx);
        let gone = d
            .recreate(
                "h1",
                "web",
                "",
                &RecreateOptions::default(),
                Duration::from_secs(1),
            )
            .await;
        assert!(
            matches!(gone, Err(CommandError::AgentGone { .. })),
            "{gone:?}"
        );
    }

    #[tokio::test]
    async fn a_successor_agent_answers_the_self_update_the_old_one_was_asked() {
        let d = Arc::new(Dispatcher::default());
        let (old_tx, mut old_rx) = mpsc::channel(4);
        d.register("h1", SessionId::for_tests(1), old_tx);
        let asked = {
            let d = d.clone();
            tokio::spawn(async move {
                d.recreate(
                    "h1",
                    "agent",
                    "r/agent:2",
                    &RecreateOptions::default(),
                    Duration::from_secs(5),
                )
                .await
            })
        };
        let Some(Ok(pb::CoordinatorMessage {
            kind: Some(pb::coordinator_message::Kind::Recreate(cmd)),
        })) = old_rx.recv().await
        else {
            panic!("no Recreate sent");
        };
        // The successor connects for that op, then an unrelated reconnect would not carry it.
        let (new_tx, _new_rx) = mpsc::channel(4);
        d.register_successor("h1", SessionId::for_tests(2), new_tx, Some(&cmd.op_id));
        let mut result = pb::RecreateResult::default();
        result.set_status(pb::recreate_result::Status::Updated);
        d.result(
            "h1",
            pb::CommandResult {
                op_id: cmd.op_id.clone(),
                recreate: Some(result),
                prune: None,
            },
        );
        let done = asked.await.unwrap().expect("the successor's answer");
        assert_eq!(done.result.status, Outcome::Updated);
    }

    #[tokio::test]
    async fn pulls_carry_the_credentials_of_their_registry_only() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("config.json"),
            r#"{"auths": {"reg.a:5000": {"username": "alice", "password": "a-pw"}}}"#,
        )
        .unwrap();
        let credentials = Arc::new(Credentials::new(None, Some(dir.path())).unwrap());
        let d = Arc::new(Dispatcher::new(credentials));
        let (tx, mut rx) = mpsc::channel(4);
        d.register("h1", session(), tx);
        let sent = tokio::spawn(async move {
            let mut auths = Vec::new();
            for _ in 0..3 {
                let Some(Ok(pb::CoordinatorMessage {
                    kind: Some(pb::coordinator_message::Kind::Recreate(cmd)),
                })) = rx.recv().await
                else {
                    panic!("no Recreate sent");
                };
                assert!(cmd.cleanup, "cleanup not passed on");
                auths.push(cmd.auth.map(|a| (a.username, a.password)));
            }
            auths
        });
        for image in ["reg.a:5000/app:1", "reg.b:5000/app:1", "app:1"] {
            // No agent answers: each times out at once; only what was sent matters here.
            let _ = d
                .recreate(
                    "h1",
                    "web",
                    image,
                    &RecreateOptions {
                        cleanup: true,
                        ..RecreateOptions::default()
                    },
                    Duration::from_millis(1),
                )
                .await;
        }
        assert_eq!(
            sent.await.unwrap(),
            vec![Some(("alice".to_owned(), "a-pw".to_owned())), None, None]
        );
    }
}

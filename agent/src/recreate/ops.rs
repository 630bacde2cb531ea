//! The Docker steps a recreate is made of, each doing what it says on every engine: a stop
//! that sends the container's own stop signal also where the stop call cannot carry one (API
//! before 1.42), a create that keeps the container's image reference even when its tag moved,
//! starts that are believed only when the engine shows the container running, and removal
//! that never touches volumes.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use bollard::models::{ContainerCreateBody, ContainerInspectResponse};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, KillContainerOptionsBuilder, RemoveContainerOptionsBuilder,
    RenameContainerOptionsBuilder, StopContainerOptionsBuilder, WaitContainerOptionsBuilder,
};
use futures_util::StreamExt;
use tokio::time::Instant;

use super::LABEL_OP;
use super::executor::{Deadlines, Recreator};
use super::faults::CrashPoint;
use super::journal::TagBack;
use super::signal::StopSignal;
use super::spec::{self, ApiVersion, CreatePlan};
use crate::engine::is_not_found;

/// The engine's stop timeout when a container sets none.
const DEFAULT_STOP_TIMEOUT: u64 = 10;

/// Why the sequence stopped before the end.
pub(crate) enum Interrupt {
    Failed(StepFailure),
    Crashed(CrashPoint),
}

impl From<StepFailure> for Interrupt {
    fn from(f: StepFailure) -> Self {
        Self::Failed(f)
    }
}

/// A failed step: what was being done and why it failed.
#[derive(Debug, Clone)]
pub(crate) struct StepFailure {
    pub(crate) step: &'static str,
    pub(crate) reason: String,
}

impl StepFailure {
    pub(crate) fn new(step: &'static str, reason: impl Into<String>) -> Self {
        Self {
            step,
            reason: reason.into(),
        }
    }
}

pub(crate) fn failed(step: &'static str) -> impl FnOnce(bollard::errors::Error) -> StepFailure {
    move |e| StepFailure::new(step, e.to_string())
}

/// 304 Not Modified from stop/start means "already so".
pub(crate) fn not_modified(e: bollard::errors::Error) -> Result<(), bollard::errors::Error> {
    match e {
        bollard::errors::Error::DockerResponseServerError {
            status_code: 304, ..
        } => Ok(()),
        other => Err(other),
    }
}

/// How lenient a health gate is when the agent is asked to stop meanwhile.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OnStop {
    /// Give up (the update is rolled back): the container being updated.
    Fail,
    /// Accept a container that runs and is not unhealthy: a dependant recreated after its
    /// parent passed, which the operation finishes.
    AcceptRunning,
}

impl Recreator {
    pub(crate) async fn inspect(&self, id_or_name: &str) -> Option<ContainerInspectResponse> {
        self.docker.inspect_container(id_or_name, None).await.ok()
    }

    pub(crate) async fn name_of(&self, id: &str) -> Option<String> {
        self.inspect(id)
            .await
            .and_then(|c| c.name)
            .map(|n| n.trim_start_matches('/').to_owned())
    }

    /// The container holding `name`, if this operation made it (its label says so) and it is
    /// not `not_id`; never someone else's container.
    pub(crate) async fn made_by(&self, name: &str, op_id: &str, not_id: &str) -> Option<String> {
        let c = self.inspect(name).await?;
        let labelled = c
            .config
            .as_ref()
            .and_then(|cfg| cfg.labels.as_ref())
            .and_then(|l| l.get(LABEL_OP))
            .is_some_and(|op| op == op_id);
        (labelled && c.id.as_deref() != Some(not_id))
            .then_some(c.id)
            .flatten()
    }

    /// The containers (all states) whose name starts with `prefix`: (id, name).
    pub(crate) async fn named_with_prefix(&self, prefix: &str) -> Vec<(String, String)> {
        let options = bollard::query_parameters::ListContainersOptionsBuilder::new()
            .all(true)
            .build();
        let listed = self
            .docker
            .list_containers(Some(options))
            .await
            .unwrap_or_default();
        listed
            .into_iter()
            .filter_map(|c| {
                let name = c
                    .names
                    .iter()
                    .flatten()
                    .map(|n| n.trim_start_matches('/'))
                    .find(|n| n.starts_with(prefix))?
                    .to_owned();
                Some((c.id.unwrap_or_default(), name))
            })
            .collect()
    }

    pub(crate) async fn rename(&self, id: &str, name: &str) -> Result<(), bollard::errors::Error> {
        self.docker
            .rename_container(id, RenameContainerOptionsBuilder::new().name(name).build())
            .await
    }

    /// Stops `id` with `signal` (else the engine's default) and `timeout` seconds before the
    /// engine kills it. API 1.41 and older have no signal parameter on stop (it came with
    /// 1.42; the engine would send SIGTERM): there the signal goes with `kill`, the container
    /// gets its timeout to exit, and what still runs is stopped.
    pub(crate) async fn stop_with(
        &self,
        id: &str,
        signal: Option<&str>,
        timeout: Option<i64>,
    ) -> Result<(), bollard::errors::Error> {
        let wait = Duration::from_secs(
            timeout
                .and_then(|t| u64::try_from(t).ok())
                .unwrap_or(DEFAULT_STOP_TIMEOUT),
        );
        // The client's own timeout must outlast the engine's wait for the container.
        let docker = self
            .docker
            .clone()
            .with_timeout(wait + Duration::from_secs(60));
        let parsed = signal.and_then(|s| StopSignal::parse(s).ok());
        let mut options = StopContainerOptionsBuilder::new();
        if let Some(t) = timeout.and_then(|t| i32::try_from(t).ok()) {
            options = options.t(t);
        }
        if let Some(sig) = parsed
            && !sig.is_term()
            && self.api < ApiVersion::new(1, 42)
            && self.kill_keeps_it_down(id, sig).await
        {
            let kill = KillContainerOptionsBuilder::new()
                .signal(&sig.number().to_string())
                .build();
            match docker.kill_container(id, Some(kill)).await {
                Ok(()) => {}
                // Not running (409): nothing to stop.
                Err(bollard::errors::Error::DockerResponseServerError {
                    status_code: 409, ..
                }) => return Ok(()),
                Err(e) => return Err(e),
            }
            // Its timeout to exit on the signal; then a plain stop ends whatever still runs
            // (and answers at once when it is down).
            let _ = tokio::time::timeout(wait, self.until_not_running(id)).await;
            return docker
                .stop_container(id, Some(options.t(0).build()))
                .await
                .or_else(not_modified);
        }
        if let Some(sig) = parsed
            && self.api >= ApiVersion::new(1, 42)
        {
            options = options.signal(&sig.number().to_string());
        }
        docker
            .stop_container(id, Some(options.build()))
            .await
            .or_else(not_modified)
    }

    /// Whether a `kill` with `sig` stops `id` for good. The engine marks a killed container
    /// as meant to stay down only when the signal is its own stop signal (or it has none);
    /// otherwise a restart policy would start it again at once. Then only the stop call, with
    /// the container's own signal, is safe on an engine that cannot pass another one.
    async fn kill_keeps_it_down(&self, id: &str, sig: StopSignal) -> bool {
        let Some(c) = self.inspect(id).await else {
            return true;
        };
        let own = c
            .config
            .and_then(|cfg| cfg.stop_signal)
            .filter(|s| !s.is_empty());
        let restarts = c
            .host_config
            .and_then(|h| h.restart_policy)
            .and_then(|p| p.name)
            .is_some_and(|name| {
                !matches!(
                    name,
                    bollard::models::RestartPolicyNameEnum::EMPTY
                        | bollard::models::RestartPolicyNameEnum::NO
                )
            });
        let keeps = match own.as_deref().map(StopSignal::parse) {
            None => true,
            Some(Ok(own)) => own == sig,
            Some(Err(_)) => false,
        };
        if !keeps && restarts {
            tracing::warn!(container = %id, signal = sig.number(), own = ?own, "This engine (API before 1.42) cannot stop with the label's signal without the restart policy starting the container again; it is stopped with its own signal.");
        }
        keeps || !restarts
    }

    /// Stops `id` the way its own configuration asks (stop-signal label, else its
    /// `StopSignal`; its `StopTimeout`). A stop already under way (the engine goes on after a
    /// client died) is waited for: the engine answers when the container is down. (Recovery
    /// also calls it to end such a stop when it cannot tell: a container that was in fact
    /// still running is then stopped and started once more, which is safe.)
    pub(crate) async fn stop_as_configured(&self, id: &str) -> Result<(), bollard::errors::Error> {
        let Some(c) = self.inspect(id).await else {
            return Ok(());
        };
        let config = c.config.unwrap_or_default();
        let labels = config.labels.unwrap_or_default();
        let signal = spec::stop_signal(&labels, config.stop_signal.as_deref());
        self.stop_with(id, signal.as_deref(), config.stop_timeout)
            .await
    }

    /// Completes when `id` does not run (or is gone).
    async fn until_not_running(&self, id: &str) {
        let options = WaitContainerOptionsBuilder::new()
            .condition("not-running")
            .build();
        let mut wait = self.docker.wait_container(id, Some(options));
        // Any answer (exit code, error, end) means it is down or gone.
        let _ = wait.next().await;
    }

    pub(crate) async fn start(&self, id: &str) -> Result<(), bollard::errors::Error> {
        self.docker
            .start_container(id, None)
            .await
            .or_else(not_modified)
    }

    /// Watches `targets` (id, name) for the settle time: each must run throughout, without a
    /// restart, and not be unhealthy. Returns those that did not, by name, with why. This is
    /// what recovery and rollbacks believe, not the answer of a start call.
    pub(crate) async fn verify_running(
        &self,
        targets: &[(String, String)],
    ) -> BTreeMap<String, String> {
        let deadline = Instant::now() + self.deadlines.settle;
        let mut first: HashMap<&str, (Option<String>, Option<i64>)> = HashMap::new();
        let mut failed: BTreeMap<String, String> = BTreeMap::new();
        loop {
            for (id, name) in targets {
                if failed.contains_key(name) {
                    continue;
                }
                let Some(c) = self.inspect(id).await else {
                    failed.insert(name.clone(), "it is gone".into());
                    continue;
                };
                let state = c.state.unwrap_or_default();
                if state.running != Some(true) || state.restarting == Some(true) {
                    let status = state
                        .status
                        .map_or("not running".to_owned(), |s| s.to_string());
                    failed.insert(
                        name.clone(),
                        format!(
                            "it is {status} (exit code {})",
                            state.exit_code.unwrap_or_default()
                        ),
                    );
                    continue;
                }
                let seen = (state.started_at.clone(), c.restart_count);
                if *first.entry(id.as_str()).or_insert_with(|| seen.clone()) != seen {
                    failed.insert(name.clone(), "it restarted".into());
                    continue;
                }
                let health = state.health.and_then(|h| h.status).map(|h| h.to_string());
                if health.as_deref() == Some("unhealthy") {
                    failed.insert(name.clone(), "it is unhealthy".into());
                }
            }
            if Instant::now() >= deadline || failed.len() == targets.len() {
                return failed;
            }
            tokio::time::sleep(self.deadlines.poll).await;
        }
    }

    /// Healthy (with a healthcheck), or running without a restart for the minimum time;
    /// both within the health deadline. When the agent is asked to stop meanwhile, `on_stop`
    /// says what counts.
    pub(crate) async fn health_gate(
        &self,
        id: &str,
        deadlines: &Deadlines,
        on_stop: OnStop,
    ) -> Result<(), Interrupt> {
        let gate = |reason: String| StepFailure::new("health gate", reason);
        let started = Instant::now();
        let deadline = started + deadlines.health;
        let mut first_restarts = None;
        // With a healthcheck: since when it has been healthy, for the minimum healthy time.
        let mut healthy_since: Option<Instant> = None;
        loop {
            let state = self
                .docker
                .inspect_container(id, None)
                .await
                .map_err(|e| gate(format!("cannot inspect the new container: {e}")))?;
            self.faults.at(CrashPoint::DuringHealthWait).await?;
            let restarts = state.restart_count.unwrap_or(0);
            let first = *first_restarts.get_or_insert(restarts);
            let s = state.state.clone().unwrap_or_default();
            if s.running != Some(true) || s.restarting == Some(true) {
                return Err(gate(format!(
                    "the new container is not running (exit code {})",
                    s.exit_code.unwrap_or_default()
                ))
                .into());
            }
            if restarts != first {
                return Err(gate("the new container restarted".into()).into());
            }
            let health = s.health.and_then(|h| h.status).map(|h| h.to_string());
            if health.as_deref() == Some("unhealthy") {
                return Err(gate("the new container is unhealthy".into()).into());
            }
            if self.is_stopping() {
                return match on_stop {
                    OnStop::AcceptRunning => Ok(()),
                    OnStop::Fail => Err(gate("the agent is stopping".into()).into()),
                };
            }
            match health.as_deref() {
                Some("healthy") => {
                    let since = *healthy_since.get_or_insert_with(Instant::now);
                    if since.elapsed() >= deadlines.min_healthy_with_check {
                        return Ok(());
                    }
                }
                Some("starting") => {}
                // No healthcheck: running without a restart for the minimum time.
                _ if started.elapsed() >= deadlines.min_running => return Ok(()),
                _ => {}
            }
            if Instant::now() >= deadline {
                return Err(gate(format!("not healthy within {:?}", deadlines.health)).into());
            }
            tokio::select! {
                () = tokio::time::sleep(deadlines.poll) => {}
                () = self.until_stopping() => {}
            }
        }
    }

    /// Gives a tag lent for a create back to the image it named before.
    pub(crate) async fn give_tag_back(&self, lent: &TagBack) {
        if lent.image.is_empty() {
            // It named nothing before: it stays on the image it was lent to.
            return;
        }
        if let Err(e) = self.tag(&lent.image, &lent.reference).await {
            tracing::warn!(reference = %lent.reference, error = %e, "Cannot point the tag back at its image.");
        }
    }

    /// Creates the replacement; on engines before API 1.44 a user-set MAC goes into
    /// `Config.MacAddress`, which the typed request body cannot carry.
    pub(crate) async fn create(
        &self,
        plan: &CreatePlan,
        op_id: &str,
    ) -> Result<String, bollard::errors::Error> {
        let options = CreateContainerOptionsBuilder::new()
            .name(&plan.name)
            .build();
        let mut body = plan.body.clone();
        body.labels
            .get_or_insert_with(Default::default)
            .insert(LABEL_OP.to_owned(), op_id.to_owned());
        let docker = match &plan.legacy_mac {
            Some(mac) => with_legacy_mac(&self.docker, &body, mac),
            None => self.docker.clone(),
        };
        Ok(docker.create_container(Some(options), body).await?.id)
    }

    /// Removes a container, never its volumes; a container already gone is fine.
    pub(crate) async fn remove(&self, id: &str) -> Result<(), bollard::errors::Error> {
        let options = RemoveContainerOptionsBuilder::new()
            .force(true)
            .v(false)
            .build();
        match self.docker.remove_container(id, Some(options)).await {
            Err(e) if is_not_found(&e) => Ok(()),
            other => other,
        }
    }
}

/// A client whose create request carries `Config.MacAddress` (engines before API 1.44).
fn with_legacy_mac(
    docker: &bollard::Docker,
    body: &ContainerCreateBody,
    mac: &str,
) -> bollard::Docker {
    let mut json = serde_json::to_value(body).unwrap_or_default();
    if let Some(obj) = json.as_object_mut() {
        obj.insert(
            "MacAddress".into(),
            serde_json::Value::String(mac.to_owned()),
        );
    }
    let bytes = bytes::Bytes::from(serde_json::to_vec(&json).unwrap_or_default());
    docker.clone().with_request_modifier(move |mut request| {
        if request.uri().path().ends_with("/containers/create") {
            *request.body_mut() = bollard::body_full(bytes.clone());
        }
        request
    })
}

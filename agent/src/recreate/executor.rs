//! The safe recreate sequence (DESIGN.md section 5): never destroy before the replacement
//! runs. Pull and inspect first; then stop, rename the old container aside, create the new one
//! under the original name, connect its networks, start it, pass the health gate, and only
//! then remove the old container (never its volumes). Any failure after the stop rolls back:
//! the new container is removed, the old one renamed back and started again. Every step is
//! journaled before it is taken (see [`super::journal`]).

use std::time::Duration;

use bollard::Docker;
use bollard::models::{
    ContainerCreateBody, ContainerInspectResponse, ImageInspect, NetworkConnectRequest,
};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, CreateImageOptionsBuilder, RemoveContainerOptionsBuilder,
    RenameContainerOptionsBuilder, StopContainerOptionsBuilder,
};
use futures_util::StreamExt;
use tokio::time::Instant;
use tracing::{info, warn};

use super::journal::{Entry, Journal, JournalError, Outcome, Step};
use super::spec::{self, ApiVersion, CreatePlan};
use crate::engine::{Engine, is_not_found};
use ouroboros_shared::reference::ImageRef;

/// Label on every container a recreate creates: the operation that made it. A rollback only
/// removes a container under the name that carries its own operation's label.
pub const LABEL_OP: &str = "com.ouroboros.op";

/// How long each part may take; each deadline acts (the step fails and rolls back).
#[derive(Debug, Clone, Copy)]
pub struct Deadlines {
    pub pull: Duration,
    /// Upper bound for the health gate.
    pub health: Duration,
    /// Without a healthcheck: how long the new container must run without a restart.
    pub min_running: Duration,
    /// With a healthcheck: how long the new container must stay healthy (0: once is enough).
    pub min_healthy_with_check: Duration,
    /// How often the health gate looks.
    pub poll: Duration,
}

impl Default for Deadlines {
    fn default() -> Self {
        Self {
            pull: Duration::from_secs(600),
            health: Duration::from_secs(120),
            min_running: Duration::from_secs(10),
            min_healthy_with_check: Duration::ZERO,
            poll: Duration::from_millis(250),
        }
    }
}

/// One recreate request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Request {
    pub op_id: String,
    /// Container name or id.
    pub container: String,
    /// Image to recreate it from; its configured reference when `None`. `repo:tag@sha256:…`
    /// pulls exactly that manifest and points `repo:tag` at it.
    pub image: Option<String>,
    /// Credentials for the pull.
    pub auth: Option<RegistryAuth>,
    /// The coordinator's health gate for this update, instead of the agent's defaults.
    pub gate: Option<HealthGate>,
}

/// A health gate asked for with one update (rollout policy).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HealthGate {
    /// The new container must be healthy (or, without a healthcheck, running) this long.
    pub min_healthy: Duration,
    /// Longest wait for that; zero keeps the agent's own.
    pub deadline: Duration,
}

/// Registry credentials: username and password, or an identity token, or a registry token.
/// `Debug` never shows a secret.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct RegistryAuth {
    pub username: String,
    pub password: String,
    pub identity_token: String,
    pub registry_token: String,
}

impl std::fmt::Debug for RegistryAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryAuth")
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

/// The `X-Registry-Auth` header value: JSON in URL-safe base64, which is what the engine
/// decodes (bollard's standard alphabet silently turns some passwords into an anonymous pull).
pub fn registry_auth_header(auth: &RegistryAuth, server: &str) -> String {
    let mut json = serde_json::json!({ "serveraddress": server });
    for (key, value) in [
        ("username", &auth.username),
        ("password", &auth.password),
        ("identitytoken", &auth.identity_token),
        ("registrytoken", &auth.registry_token),
    ] {
        if !value.is_empty() {
            json[key] = serde_json::Value::String(value.clone());
        }
    }
    ouroboros_shared::base64::url_safe(json.to_string().as_bytes())
}

/// Splits `repo:tag@sha256:…` into the pinned reference to pull and the tag to point at it.
fn split_pinned(reference: &str) -> Option<(String, Option<String>)> {
    let (named, digest) = reference.split_once('@')?;
    let repo_end = named.rfind('/').map_or(0, |i| i + 1);
    let (repo, tag) = match named[repo_end..].rfind(':') {
        Some(i) => (&named[..repo_end + i], Some(named.to_owned())),
        None => (named, None),
    };
    Some((format!("{repo}@{digest}"), tag))
}

/// Failures that leave nothing to report as an outcome (the journal itself failed).
#[derive(Debug, thiserror::Error)]
pub enum RecreateError {
    #[error(transparent)]
    Journal(#[from] JournalError),
    #[error("operation {0} is still in progress")]
    InProgress(String),
    #[error("stopped at crash point {0:?} (fault injection)")]
    Crashed(CrashPoint),
}

/// Places where a crash is injected for tests: right after the named step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CrashPoint {
    AfterStop,
    AfterRename,
    AfterCreate,
    AfterStart,
    /// While waiting for the health gate (after its first look).
    DuringHealthWait,
    /// When a failure is about to be rolled back.
    BeforeRollback,
}

impl CrashPoint {
    /// Parses `after-stop`, `after-rename`, `after-create`, `after-start`, `during-health`.
    pub fn parse(value: &str) -> Option<Self> {
        match value {
            "after-stop" => Some(Self::AfterStop),
            "after-rename" => Some(Self::AfterRename),
            "after-create" => Some(Self::AfterCreate),
            "after-start" => Some(Self::AfterStart),
            "during-health" => Some(Self::DuringHealthWait),
            "before-rollback" => Some(Self::BeforeRollback),
            _ => None,
        }
    }
}

/// What an injected crash does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CrashMode {
    /// Return [`RecreateError::Crashed`] at once, leaving Docker and the journal as they are
    /// (library tests).
    Return,
    /// Log and hang at the point, for the test to SIGKILL the process (end-to-end tests of
    /// the binary).
    Hang,
}

/// Recreates containers of one engine.
pub struct Recreator {
    docker: Docker,
    api: ApiVersion,
    journal: Journal,
    deadlines: Deadlines,
    own_id: Option<String>,
    crash: Option<(CrashPoint, CrashMode)>,
    hooks: Vec<(CrashPoint, Hook)>,
}

/// A test's action at a [`CrashPoint`] (fault injection: take a port, kill a process, ...).
pub type Hook = std::sync::Arc<dyn Fn() + Send + Sync>;

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
pub(crate) struct StepFailure {
    step: &'static str,
    reason: String,
}

fn failed(step: &'static str) -> impl FnOnce(bollard::errors::Error) -> StepFailure {
    move |e| StepFailure {
        step,
        reason: e.to_string(),
    }
}

impl Recreator {
    /// The engine this recreator works on.
    pub fn docker(&self) -> &Docker {
        &self.docker
    }

    /// The engine's API version.
    pub fn api(&self) -> ApiVersion {
        self.api
    }

    /// Whether operation `op_id` is already in the journal (done, or begun before a crash):
    /// a repeated command then gets the stored outcome and nothing around it runs again.
    pub fn knows(&self, op_id: &str) -> bool {
        self.journal.get(op_id).ok().flatten().is_some()
    }

    pub fn new(
        engine: &Engine,
        journal: Journal,
        deadlines: Deadlines,
        own_id: Option<String>,
    ) -> Self {
        Self {
            docker: engine.docker().clone(),
            api: engine.api(),
            journal,
            deadlines,
            own_id,
            crash: None,
            hooks: Vec::new(),
        }
    }

    /// Runs `hook` whenever a recreate passes `point` (tests only), then goes on.
    pub fn with_hook(mut self, point: CrashPoint, hook: Hook) -> Self {
        self.hooks.push((point, hook));
        self
    }

    /// Injects a crash right after `point` (tests only).
    pub fn with_crash(mut self, point: CrashPoint, mode: CrashMode) -> Self {
        self.crash = Some((point, mode));
        self
    }

    async fn crash_point(&self, point: CrashPoint) -> Result<(), Interrupt> {
        for (p, hook) in &self.hooks {
            if *p == point {
                hook();
            }
        }
        match self.crash {
            Some((p, CrashMode::Hang)) if p == point => {
                warn!(
                    ?point,
                    "Hanging at the injected crash point; waiting to be killed."
                );
                std::future::pending().await
            }
            Some((p, CrashMode::Return)) if p == point => Err(Interrupt::Crashed(point)),
            _ => Ok(()),
        }
    }

    /// Runs one recreate. A repeated op id gets the stored outcome, without doing anything.
    pub async fn recreate(&self, request: &Request) -> Result<Outcome, RecreateError> {
        self.recreate_reporting(request, &|_| {}).await
    }

    /// [`Recreator::recreate`], calling `report` with the name of each step as it starts.
    pub async fn recreate_reporting(
        &self,
        request: &Request,
        report: &(dyn Fn(&'static str) + Send + Sync),
    ) -> Result<Outcome, RecreateError> {
        let outcome = self
            .recreate_one(request, &Dependency::None, report)
            .await?;
        let dependants_of = match &outcome {
            Outcome::Updated { .. } | Outcome::RolledBack { .. } => {
                self.journal.get(&request.op_id)?.map(|e| e.old_id)
            }
            _ => None,
        };
        if let Some(old_id) = dependants_of {
            self.follow_dependants(request, &old_id, &outcome, report)
                .await?;
        }
        Ok(outcome)
    }

    /// Containers in `container:<old_id>` network mode run in a namespace that is gone once
    /// the old container stopped. After an update they are recreated pointing at the new
    /// container; after a rollback they are restarted to rejoin the restored one.
    async fn follow_dependants(
        &self,
        request: &Request,
        old_id: &str,
        outcome: &Outcome,
        report: &(dyn Fn(&'static str) + Send + Sync),
    ) -> Result<(), RecreateError> {
        let mode = format!("container:{old_id}");
        let options = bollard::query_parameters::ListContainersOptionsBuilder::new()
            .all(true)
            .build();
        let listed = match self.docker.list_containers(Some(options)).await {
            Ok(l) => l,
            Err(e) => {
                warn!(error = %e, "Cannot list containers to find dependants.");
                return Ok(());
            }
        };
        let dependants: Vec<(String, bool)> = listed
            .into_iter()
            .filter(|c| {
                c.host_config
                    .as_ref()
                    .and_then(|h| h.network_mode.as_deref())
                    == Some(mode.as_str())
            })
            .filter_map(|c| {
                let running = c.state.map(|s| s.to_string()) == Some("running".into());
                c.id.map(|id| (id, running))
            })
            .collect();
        for (id, running) in dependants {
            match outcome {
                Outcome::Updated { new_id, .. } => {
                    report("dependant");
                    // Named by the dependant, not its place in a list: a resend after a crash
                    // must find the same op id for the same container.
                    let dependant = Request {
                        op_id: format!("{}-dep-{}", request.op_id, short(&id)),
                        container: id.clone(),
                        image: None,
                        auth: None,
                        gate: request.gate,
                    };
                    let provider = Dependency::NetworkOf(new_id.clone());
                    let result = Box::pin(self.recreate_one(&dependant, &provider, report)).await?;
                    info!(dependant = %id, ?result, "Dependant recreated on the new container's network.");
                }
                _ if running => {
                    report("dependant");
                    if let Err(e) = self.docker.restart_container(&id, None).await {
                        warn!(dependant = %id, error = %e, "Cannot restart a dependant after the rollback.");
                    }
                }
                _ => {}
            }
        }
        Ok(())
    }

    async fn recreate_one(
        &self,
        request: &Request,
        dependency: &Dependency,
        report: &(dyn Fn(&'static str) + Send + Sync),
    ) -> Result<Outcome, RecreateError> {
        if let Some(entry) = self.journal.get(&request.op_id)? {
            return match entry.step {
                Step::Done { outcome } => Ok(outcome),
                _ => Err(RecreateError::InProgress(request.op_id.clone())),
            };
        }
        report("prepare");
        let prepared = match self.prepare(request, dependency).await {
            Ok(p) => p,
            Err(outcome) => {
                self.finish_without_change(request, &outcome)?;
                return Ok(outcome);
            }
        };
        let Prepared {
            plan,
            old_id,
            image_id,
            target,
        } = prepared;
        let aside_name = format!("{}-ouroboros-old-{}", plan.name, short(&request.op_id));
        let mut entry = Entry {
            op_id: request.op_id.clone(),
            name: plan.name.clone(),
            old_id: old_id.clone(),
            aside_name,
            was_running: plan.was_running,
            target_image: target,
            step: Step::Planned,
        };
        self.journal.record(&entry)?;
        let mut deadlines = self.deadlines;
        if let Some(gate) = request.gate {
            if !gate.deadline.is_zero() {
                deadlines.health = gate.deadline;
            }
            deadlines.min_running = gate.min_healthy;
            deadlines.min_healthy_with_check = gate.min_healthy;
        }
        let outcome = match self.swap(&mut entry, &plan, &deadlines, report).await {
            Ok(new_id) => {
                report("remove old");
                entry.step = Step::RemovingOld {
                    new_id: new_id.clone(),
                };
                self.journal.record(&entry)?;
                if let Err(e) = self.remove(&old_id).await {
                    // The update holds; the old container only lingers under its aside name.
                    warn!(container = %plan.name, old = %old_id, error = %e, "Cannot remove the old container.");
                }
                info!(container = %plan.name, new = %new_id, "Container updated.");
                Outcome::Updated { new_id, image_id }
            }
            Err(Interrupt::Crashed(point)) => return Err(RecreateError::Crashed(point)),
            Err(Interrupt::Failed(failure)) => {
                warn!(container = %plan.name, step = failure.step, reason = %failure.reason, "Update failed; rolling back.");
                let new_id = match &entry.step {
                    Step::Created { new_id } => Some(new_id.clone()),
                    _ => None,
                };
                entry.step = Step::RollingBack {
                    new_id: new_id.clone(),
                    reason: failure.reason.clone(),
                };
                self.journal.record(&entry)?;
                if let Err(Interrupt::Crashed(point)) =
                    self.crash_point(CrashPoint::BeforeRollback).await
                {
                    return Err(RecreateError::Crashed(point));
                }
                report("rollback");
                self.roll_back(&entry, new_id.as_deref(), failure).await
            }
        };
        entry.step = Step::Done {
            outcome: outcome.clone(),
        };
        self.journal.record(&entry)?;
        Ok(outcome)
    }

    fn finish_without_change(
        &self,
        request: &Request,
        outcome: &Outcome,
    ) -> Result<(), JournalError> {
        self.journal.record(&Entry {
            op_id: request.op_id.clone(),
            name: request.container.clone(),
            old_id: String::new(),
            aside_name: String::new(),
            was_running: false,
            target_image: request.image.clone().unwrap_or_default(),
            step: Step::Done {
                outcome: outcome.clone(),
            },
        })
    }

    /// Inspect, pull and derive; nothing is changed. Err is the outcome to report.
    async fn prepare(
        &self,
        request: &Request,
        dependency: &Dependency,
    ) -> Result<Prepared, Outcome> {
        let refused = |reason: String| Outcome::Refused { reason };
        let old = self
            .docker
            .inspect_container(&request.container, None)
            .await
            .map_err(|e| {
                refused(format!(
                    "cannot inspect container {}: {e}",
                    request.container
                ))
            })?;
        let old_id = old.id.clone().unwrap_or_default();
        let configured = old
            .config
            .as_ref()
            .and_then(|c| c.image.clone())
            .unwrap_or_default();
        let mut target = request.image.clone().unwrap_or(configured);
        if target.is_empty() {
            return Err(refused("no image to recreate from".into()));
        }
        let pinned_request = split_pinned(&target);
        if let Some((pinned, tag)) = &pinned_request {
            // Exactly this manifest; the container keeps following its tag afterwards.
            self.pull(pinned, request.auth.as_ref())
                .await
                .map_err(refused)?;
            match tag {
                Some(tag) => {
                    self.tag(pinned, tag).await.map_err(refused)?;
                    target = tag.clone();
                }
                None => target = pinned.clone(),
            }
        }
        // A dependant keeps its image: it is recreated only to follow its provider. When its
        // configured reference no longer names that image here (the tag moved or is gone),
        // it is recreated from the image id rather than left in a namespace that is gone.
        let follows = matches!(dependency, Dependency::NetworkOf(_));
        if follows {
            let named = self
                .docker
                .inspect_image(&target)
                .await
                .ok()
                .and_then(|i| i.id);
            if let Some(id) = old.image.clone()
                && named.as_deref() != Some(id.as_str())
            {
                warn!(container = %request.container, reference = %target, image = %id, "The dependant's reference names another image now; recreating it from its own image id.");
                target = id;
            }
        }
        // An image id names a local image; there is nothing to pull.
        let local = target.starts_with("sha256:") || pinned_request.is_some();
        if !follows && !local {
            self.pull(&target, request.auth.as_ref())
                .await
                .map_err(refused)?;
        }
        let new_image = self
            .docker
            .inspect_image(&target)
            .await
            .map_err(|e| refused(format!("cannot inspect image {target}: {e}")))?;
        let image_id = new_image.id.clone().unwrap_or_default();
        if old.image.as_deref() == Some(image_id.as_str()) && !follows {
            return Err(Outcome::AlreadyCurrent);
        }
        let old_image = match old.image.as_deref() {
            Some(id) => match self.docker.inspect_image(id).await {
                Ok(i) => i,
                // The old image is gone: nothing can be told apart, so everything is kept.
                Err(e) if is_not_found(&e) => ImageInspect::default(),
                Err(e) => return Err(refused(format!("cannot inspect the old image: {e}"))),
            },
            None => ImageInspect::default(),
        };
        let mut plan = spec::derive(&old, &old_image, &target, self.api, self.own_id.as_deref())
            .map_err(|e| refused(e.to_string()))?;
        if let Dependency::NetworkOf(provider) = dependency
            && let Some(hc) = plan.body.host_config.as_mut()
        {
            hc.network_mode = Some(format!("container:{provider}"));
        }
        Ok(Prepared {
            plan,
            old_id,
            image_id,
            target,
        })
    }

    /// Points `tag` (`repo:tag`) at the image `source`.
    async fn tag(&self, source: &str, tag: &str) -> Result<(), String> {
        let repo_end = tag.rfind('/').map_or(0, |i| i + 1);
        let (repo, name) = match tag[repo_end..].rfind(':') {
            Some(i) => (&tag[..repo_end + i], &tag[repo_end + i + 1..]),
            None => (tag, "latest"),
        };
        let options = bollard::query_parameters::TagImageOptionsBuilder::new()
            .repo(repo)
            .tag(name)
            .build();
        self.docker
            .tag_image(source, Some(options))
            .await
            .map_err(|e| format!("cannot tag {source} as {tag}: {e}"))
    }

    /// Pulls `reference`, with `auth` when given; when the credentials are refused (they may
    /// be for another registry), once more anonymously.
    async fn pull(&self, reference: &str, auth: Option<&RegistryAuth>) -> Result<(), String> {
        match (self.pull_once(reference, auth).await, auth) {
            (Err(first), Some(_)) => self.pull_once(reference, None).await.map_err(|_| first),
            (result, _) => result,
        }
    }

    async fn pull_once(&self, reference: &str, auth: Option<&RegistryAuth>) -> Result<(), String> {
        let options = CreateImageOptionsBuilder::new()
            .from_image(reference)
            .build();
        let docker = match auth {
            Some(auth) => {
                // The server as a docker config.json keys it (Docker Hub's v1 URL).
                let server = ImageRef::parse(reference)
                    .map(|r| r.auth_key().to_owned())
                    .map_err(|e| e.to_string())?;
                let header = registry_auth_header(auth, &server);
                self.docker
                    .clone()
                    .with_request_modifier(move |mut request| {
                        if request.uri().path().ends_with("/images/create")
                            && let Ok(value) = header.parse()
                        {
                            request.headers_mut().insert("X-Registry-Auth", value);
                        }
                        request
                    })
            }
            None => self.docker.clone(),
        };
        let pulling = async {
            let mut stream = docker.create_image(Some(options), None, None);
            while let Some(item) = stream.next().await {
                item.map_err(|e| format!("cannot pull {reference}: {e}"))?;
            }
            Ok(())
        };
        tokio::time::timeout(self.deadlines.pull, pulling)
            .await
            .map_err(|_| format!("pull of {reference} exceeded {:?}", self.deadlines.pull))?
    }

    /// Stop, rename aside, create, connect, start, health gate. Returns the new id.
    async fn swap(
        &self,
        entry: &mut Entry,
        plan: &CreatePlan,
        deadlines: &Deadlines,
        report: &(dyn Fn(&'static str) + Send + Sync),
    ) -> Result<String, Interrupt> {
        let journal = |e: JournalError| StepFailure {
            step: "journal",
            reason: e.to_string(),
        };
        entry.step = Step::Stopping;
        self.journal.record(entry).map_err(journal)?;
        report("stop");
        let mut stop = StopContainerOptionsBuilder::new();
        if let Some(t) = plan.stop_timeout.and_then(|t| i32::try_from(t).ok()) {
            stop = stop.t(t);
        }
        if let Some(signal) = &plan.stop_signal {
            stop = stop.signal(signal);
        }
        // The client's own timeout must outlast the engine's wait for the container.
        let stop_wait = Duration::from_secs(
            plan.stop_timeout
                .and_then(|t| u64::try_from(t).ok())
                .unwrap_or(10),
        );
        self.docker
            .clone()
            .with_timeout(stop_wait + Duration::from_secs(60))
            .stop_container(&entry.old_id, Some(stop.build()))
            .await
            .or_else(not_modified)
            .map_err(failed("stop"))?;
        self.crash_point(CrashPoint::AfterStop).await?;

        entry.step = Step::RenamingAside;
        self.journal.record(entry).map_err(journal)?;
        report("rename");
        self.docker
            .rename_container(
                &entry.old_id,
                RenameContainerOptionsBuilder::new()
                    .name(&entry.aside_name)
                    .build(),
            )
            .await
            .map_err(failed("rename"))?;
        self.crash_point(CrashPoint::AfterRename).await?;

        entry.step = Step::Creating;
        self.journal.record(entry).map_err(journal)?;
        report("create");
        let new_id = self
            .create(plan, &entry.op_id)
            .await
            .map_err(failed("create"))?;
        entry.step = Step::Created {
            new_id: new_id.clone(),
        };
        self.journal.record(entry).map_err(journal)?;
        self.crash_point(CrashPoint::AfterCreate).await?;

        for (network, endpoint) in &plan.extra_networks {
            self.docker
                .connect_network(
                    network,
                    NetworkConnectRequest {
                        container: new_id.clone(),
                        endpoint_config: Some(endpoint.clone()),
                    },
                )
                .await
                .map_err(failed("connect network"))?;
        }
        if plan.was_running {
            report("start");
            self.docker
                .start_container(&new_id, None)
                .await
                .map_err(failed("start"))?;
            self.crash_point(CrashPoint::AfterStart).await?;
            report("health gate");
            self.health_gate(&new_id, deadlines).await?;
        }
        Ok(new_id)
    }

    /// Creates the replacement; on engines before API 1.44 a user-set MAC goes into
    /// `Config.MacAddress`, which the typed request body cannot carry.
    async fn create(
        &self,
        plan: &CreatePlan,
        op_id: &str,
    ) -> Result<String, bollard::errors::Error> {
        let options = CreateContainerOptionsBuilder::new()
            .name(&plan.name)
            .build();
        let mut plan = plan.clone();
        plan.body
            .labels
            .get_or_insert_with(Default::default)
            .insert(LABEL_OP.to_owned(), op_id.to_owned());
        let plan = &plan;
        let docker = match &plan.legacy_mac {
            Some(mac) => with_legacy_mac(&self.docker, &plan.body, mac),
            None => self.docker.clone(),
        };
        Ok(docker
            .create_container(Some(options), plan.body.clone())
            .await?
            .id)
    }

    /// Healthy (with a healthcheck), or running without a restart for the minimum time;
    /// both within the health deadline.
    async fn health_gate(&self, id: &str, deadlines: &Deadlines) -> Result<(), Interrupt> {
        let gate = |reason: String| StepFailure {
            step: "health gate",
            reason,
        };
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
            self.crash_point(CrashPoint::DuringHealthWait).await?;
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
            match s.health.and_then(|h| h.status).map(|h| h.to_string()) {
                Some(h) if h == "healthy" => {
                    let since = *healthy_since.get_or_insert_with(Instant::now);
                    if since.elapsed() >= deadlines.min_healthy_with_check {
                        return Ok(());
                    }
                }
                Some(h) if h == "unhealthy" => {
                    return Err(gate("the new container is unhealthy".into()).into());
                }
                Some(h) if h == "starting" => {}
                // No healthcheck: running without a restart for the minimum time.
                _ if started.elapsed() >= deadlines.min_running => return Ok(()),
                _ => {}
            }
            if Instant::now() >= deadline {
                return Err(gate(format!("not healthy within {:?}", deadlines.health)).into());
            }
            tokio::time::sleep(deadlines.poll).await;
        }
    }

    async fn remove(&self, id: &str) -> Result<(), bollard::errors::Error> {
        // Volumes are never removed (v=false).
        let options = RemoveContainerOptionsBuilder::new()
            .force(true)
            .v(false)
            .build();
        match self.docker.remove_container(id, Some(options)).await {
            Err(e) if is_not_found(&e) => Ok(()),
            other => other,
        }
    }

    /// Removes the replacement and puts the old container back under its name, running if it
    /// was.
    pub(crate) async fn roll_back(
        &self,
        entry: &Entry,
        new_id: Option<&str>,
        failure: StepFailure,
    ) -> Outcome {
        let mut problems = Vec::new();
        // The replacement: by id if known, else what holds the name if this operation made it
        // (its label says so); never someone else's container.
        let holder = match new_id {
            Some(id) => Some(id.to_owned()),
            None => match self.inspect(&entry.name).await {
                Some(c)
                    if c.id.as_deref() != Some(entry.old_id.as_str())
                        && c.config
                            .as_ref()
                            .and_then(|cfg| cfg.labels.as_ref())
                            .and_then(|l| l.get(LABEL_OP))
                            == Some(&entry.op_id) =>
                {
                    c.id
                }
                _ => None,
            },
        };
        // Without the old container there is nothing to go back to: keep the replacement
        // (running) rather than leave nothing under the name.
        if self.name_of(&entry.old_id).await.is_none() {
            if let Some(id) = &holder {
                let _ = self
                    .docker
                    .start_container(id, None)
                    .await
                    .or_else(not_modified);
            }
            warn!(container = %entry.name, "The old container is gone; the replacement is kept.");
            return Outcome::RollbackFailed {
                step: failure.step.to_owned(),
                reason: format!(
                    "{}; the old container is gone, so the new one was kept",
                    failure.reason
                ),
            };
        }
        if let Some(id) = holder
            && let Err(e) = self.remove(&id).await
        {
            problems.push(format!("cannot remove the new container: {e}"));
        }
        match self.name_of(&entry.old_id).await {
            Some(name) if name == entry.name => {}
            Some(_) => {
                if let Err(e) = self
                    .docker
                    .rename_container(
                        &entry.old_id,
                        RenameContainerOptionsBuilder::new()
                            .name(&entry.name)
                            .build(),
                    )
                    .await
                {
                    problems.push(format!("cannot rename the old container back: {e}"));
                }
            }
            None => problems.push("the old container is gone".into()),
        }
        if entry.was_running
            && let Err(e) = self
                .docker
                .start_container(&entry.old_id, None)
                .await
                .or_else(not_modified)
        {
            problems.push(format!("cannot start the old container: {e}"));
        }
        if problems.is_empty() {
            info!(container = %entry.name, "Old container restored.");
            Outcome::RolledBack {
                step: failure.step.to_owned(),
                reason: failure.reason,
            }
        } else {
            warn!(container = %entry.name, problems = %problems.join("; "), "Rollback incomplete.");
            Outcome::RollbackFailed {
                step: failure.step.to_owned(),
                reason: format!("{}; rollback: {}", failure.reason, problems.join("; ")),
            }
        }
    }

    /// Finishes or reverts every operation a crash interrupted (call before taking new
    /// work). An operation whose replacement had passed the health gate is finished (the old
    /// container removed); every other one is reverted to the old container. Returns each
    /// operation with its outcome.
    pub async fn recover(&self) -> Result<Vec<(String, Outcome)>, RecreateError> {
        let mut done = Vec::new();
        for mut entry in self.journal.unfinished()? {
            let outcome = match entry.step.clone() {
                Step::RemovingOld { new_id } => {
                    if let Err(e) = self.remove(&entry.old_id).await {
                        warn!(container = %entry.name, error = %e, "Cannot remove the old container.");
                    }
                    let image_id = self
                        .inspect(&new_id)
                        .await
                        .and_then(|c| c.image)
                        .unwrap_or_default();
                    Outcome::Updated { new_id, image_id }
                }
                Step::Planned => Outcome::Refused {
                    reason: "the agent restarted before anything was changed".into(),
                },
                step => {
                    let new_id = match &step {
                        Step::Created { new_id } => Some(new_id.clone()),
                        Step::RollingBack { new_id, .. } => new_id.clone(),
                        _ => None,
                    };
                    let interrupted = step_name(&step);
                    let failure = StepFailure {
                        step: interrupted,
                        reason: format!("the agent restarted during {interrupted}"),
                    };
                    entry.step = Step::RollingBack {
                        new_id: new_id.clone(),
                        reason: failure.reason.clone(),
                    };
                    self.journal.record(&entry)?;
                    self.roll_back(&entry, new_id.as_deref(), failure).await
                }
            };
            info!(op = %entry.op_id, container = %entry.name, ?outcome, "Interrupted operation recovered.");
            entry.step = Step::Done {
                outcome: outcome.clone(),
            };
            self.journal.record(&entry)?;
            done.push((entry.op_id, outcome));
        }
        Ok(done)
    }

    async fn inspect(&self, id_or_name: &str) -> Option<ContainerInspectResponse> {
        self.docker.inspect_container(id_or_name, None).await.ok()
    }

    async fn name_of(&self, id: &str) -> Option<String> {
        self.inspect(id)
            .await
            .and_then(|c| c.name)
            .map(|n| n.trim_start_matches('/').to_owned())
    }
}

/// What a recreate follows.
enum Dependency {
    /// A container of its own: pulled, skipped when already current.
    None,
    /// A dependant sharing the network namespace of this (new) container: recreated on its
    /// configured reference without a pull, joined to the provider's namespace.
    NetworkOf(String),
}

struct Prepared {
    plan: CreatePlan,
    old_id: String,
    image_id: String,
    target: String,
}

fn step_name(step: &Step) -> &'static str {
    match step {
        Step::Planned => "planning",
        Step::Stopping => "stop",
        Step::RenamingAside => "rename",
        Step::Creating => "create",
        Step::Created { .. } => "start and health gate",
        Step::RemovingOld { .. } => "removing the old container",
        Step::RollingBack { .. } => "rollback",
        Step::Done { .. } => "done",
    }
}

/// 304 Not Modified from stop/start means "already so".
fn not_modified(e: bollard::errors::Error) -> Result<(), bollard::errors::Error> {
    match e {
        bollard::errors::Error::DockerResponseServerError {
            status_code: 304, ..
        } => Ok(()),
        other => Err(other),
    }
}

/// The op id as a container-name suffix (letters, digits, `-`).
fn short(op_id: &str) -> String {
    op_id
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .take(100)
        .collect()
}

/// A client whose create request carries `Config.MacAddress` (engines before API 1.44).
fn with_legacy_mac(docker: &Docker, body: &ContainerCreateBody, mac: &str) -> Docker {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auth_header_is_url_safe_and_carries_the_server() {
        let auth = RegistryAuth {
            username: "ci".into(),
            password: "s3cr?t>>~~??".into(),
            ..RegistryAuth::default()
        };
        let header = registry_auth_header(&auth, "127.0.0.1:5000");
        assert!(!header.contains('+') && !header.contains('/'), "{header}");
        assert!(header.contains('-') || header.contains('_'), "{header}");
        assert!(
            !format!("{auth:?}").contains("s3cr"),
            "password in Debug output"
        );
        let decoded = |h: &str| -> serde_json::Value {
            let standard = h.replace('-', "+").replace('_', "/");
            let raw = ouroboros_shared::base64::decode_standard(&standard).unwrap();
            serde_json::from_slice(&raw).unwrap()
        };
        assert_eq!(
            decoded(&header),
            serde_json::json!({"username": "ci", "password": "s3cr?t>>~~??", "serveraddress": "127.0.0.1:5000"})
        );
        let token = RegistryAuth {
            identity_token: "refresh-sentinel".into(),
            ..RegistryAuth::default()
        };
        assert_eq!(
            decoded(&registry_auth_header(&token, "ghcr.io")),
            serde_json::json!({"identitytoken": "refresh-sentinel", "serveraddress": "ghcr.io"})
        );
        assert!(!format!("{token:?}").contains("sentinel"));
    }

    #[test]
    fn pinned_references_split_into_pull_and_tag() {
        assert_eq!(
            split_pinned("127.0.0.1:5000/app:stable@sha256:ab"),
            Some((
                "127.0.0.1:5000/app@sha256:ab".into(),
                Some("127.0.0.1:5000/app:stable".into())
            ))
        );
        assert_eq!(
            split_pinned("127.0.0.1:5000/app@sha256:ab"),
            Some(("127.0.0.1:5000/app@sha256:ab".into(), None))
        );
        assert_eq!(split_pinned("app:1"), None);
    }
}

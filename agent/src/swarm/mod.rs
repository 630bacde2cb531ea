//! The update of one Swarm service, through a manager, to a new image digest, watched to its
//! end and rolled back when it fails (what the inventory reports is [`crate::services`]).
//!
//! An update changes only `Spec.TaskTemplate.ContainerSpec.Image` of the spec as read, names
//! the service's `Version.Index` (a stale one, "update out of sequence", is read again and
//! retried), and carries the coordinator's registry auth in `X-Registry-Auth` (URL-safe base64,
//! as the engine decodes it; without auth the engine keeps the auth already in the spec). The
//! engine then replaces the tasks by itself; [`watch`] decides from its `UpdateStatus` when it
//! ended. A paused or overdue update is rolled back by the agent with the engine's
//! `rollback=previous` (bollard's `Service` has no `PreviousSpec`); one the service's own
//! failure action rolls back is followed, not repeated.
//!
//! Outcomes go to the recreate journal, so that a repeated op id is answered from it. Before an
//! update goes to the engine, the agent notes it (`DATA_DIR/swarm-sent/OP.json`): the same op
//! id coming again before its outcome is recorded (the agent restarted, or the coordinator sent
//! it again) is never sent a second time, only watched where the engine is with it.

pub mod spec;
pub mod watch;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use bollard::Docker;
use bollard::models::{Service, ServiceUpdateStatus};
use bollard::query_parameters::ListTasksOptionsBuilder;
use ouroboros_shared::reference::ImageRef;
use tracing::{debug, info, warn};

use crate::recreate::executor::{RecreateError, Recreator, Request};
use crate::recreate::faults::CrashPoint;
use crate::recreate::journal::{Outcome, Step};
use crate::recreate::ops::Interrupt;
use crate::recreate::pull::{RegistryAuth, registry_auth_header};
use crate::services::spec_image;
use spec::{inspect, out_of_sequence, read, send};
use watch::{Look, Next, Phase, UpdateState};

/// How long an update is watched when the command names no deadline.
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(300);
/// How often the service is inspected while an update runs.
pub const POLL: Duration = Duration::from_millis(500);
/// The shortest wait for a rollback: a short update deadline must not cut the way back short
/// (the old tasks still have to start and pass their health checks and monitor period).
pub const MIN_ROLLBACK_WAIT: Duration = Duration::from_secs(60);
/// Attempts at sending an update whose version went stale meanwhile.
const ATTEMPTS: u32 = 5;

/// One service update, as the coordinator asks for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceUpdate {
    pub op_id: String,
    /// Service id or name.
    pub service: String,
    /// `repo:tag@sha256:…`.
    pub image: String,
    /// Sent with the update, for the nodes that pull the image.
    pub auth: Option<RegistryAuth>,
    /// How long the update may take; a rollback then gets as long again, at least
    /// [`MIN_ROLLBACK_WAIT`].
    pub deadline: Duration,
}

/// The folder (beside the journal's) of the notes of updates sent.
const SENT_DIR: &str = "swarm-sent";

/// What the agent sent for an operation, noted before it goes to the engine.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct Sent {
    service_id: String,
    target: String,
    /// `UpdateStatus.StartedAt` before the update (see [`watch::Look::fresh`]).
    baseline: Option<String>,
}

fn sent_path(recreator: &Recreator, op_id: &str) -> Result<std::path::PathBuf, RecreateError> {
    Ok(recreator.journal().note_path(SENT_DIR, op_id)?)
}

/// The note of `op_id`'s update, if it was sent.
fn read_sent(recreator: &Recreator, op_id: &str) -> Result<Option<Sent>, RecreateError> {
    let path = sent_path(recreator, op_id)?;
    Ok(std::fs::read_to_string(&path)
        .ok()
        .and_then(|text| serde_json::from_str(&text).ok()))
}

/// Notes durably that `op_id`'s update is about to be sent.
fn write_sent(recreator: &Recreator, op_id: &str, sent: &Sent) -> Result<(), String> {
    let path = sent_path(recreator, op_id).map_err(|e| e.to_string())?;
    let dir = path
        .parent()
        .map(std::path::Path::to_path_buf)
        .unwrap_or_default();
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let tmp = path.with_extension("json.tmp");
    let json = serde_json::to_string(sent).map_err(|e| e.to_string())?;
    ouroboros_shared::files::write_fresh(&tmp, &json, 0o600)
        .and_then(|()| std::fs::rename(&tmp, &path))
        .and_then(|()| std::fs::File::open(&dir)?.sync_all())
        .map_err(|e| format!("{}: {e}", path.display()))
}

/// The digest a reference pins, if any.
fn digest_of(reference: &str) -> Option<&str> {
    reference.split_once('@').map(|(_, d)| d)
}

/// How an update ended for the agent.
enum End {
    /// Answer this, and record it.
    Answer(Outcome),
    /// The agent is stopping: answer this, but record nothing (the engine goes on by itself,
    /// and the same op id picks the watch up again).
    Interrupted(Outcome),
}

/// Updates one service (see the module docs) and records the outcome in the journal. A
/// repeated op id gets the stored outcome, without doing anything.
///
/// An agent asked to stop while the engine replaces tasks stops watching at once and answers
/// [`Outcome::Interrupted`] without recording it: the update is in the engine's hands (Swarm
/// carries it on, or pauses or rolls it back by its own failure action), nothing the agent
/// could do in a shutdown bound would make it safer, and the same op id sent again after the
/// restart finds the spec on the target and picks the watch up where the engine is (still
/// updating: watched; paused: rolled back; ended: already current). A rollback the agent
/// started is watched on, within the agent's shutdown bound, so that its end is recorded.
pub async fn update(
    recreator: &Recreator,
    request: &ServiceUpdate,
    report: &(dyn Fn(&'static str) + Send + Sync),
) -> Result<Outcome, RecreateError> {
    if let Some(entry) = recreator.journal().get(&request.op_id)? {
        return match entry.step {
            Step::Done { outcome } => Ok(outcome),
            _ => Err(RecreateError::InProgress(request.op_id.clone())),
        };
    }
    if recreator.is_stopping() {
        return Err(RecreateError::ShuttingDown);
    }
    let ended = match read_sent(recreator, &request.op_id)? {
        Some(sent) => resume_sent(recreator, request, &sent, report).await,
        None => run(recreator, request, report).await?,
    };
    let outcome = match ended {
        End::Interrupted(outcome) => return Ok(outcome),
        End::Answer(outcome) => outcome,
    };
    let done = Request {
        op_id: request.op_id.clone(),
        container: request.service.clone(),
        image: Some(request.image.clone()),
        ..Request::default()
    };
    if let Err(e) = recreator.record_done(&done, &outcome) {
        warn!(op = %request.op_id, error = %e, "Cannot record the service update's outcome in the journal.");
    } else if let Ok(path) = sent_path(recreator, &request.op_id) {
        // The journal answers from now on.
        let _ = std::fs::remove_file(path);
    }
    Ok(outcome)
}

/// An update this agent sent before (for the same op id) whose outcome it never recorded: it
/// is not sent again. On the target, it is watched (an update that has not started yet
/// included: the tasks tell); rolling back by the service's own failure action, followed; else
/// it went back (or elsewhere) while the agent was away, which is the answer.
async fn resume_sent(
    recreator: &Recreator,
    request: &ServiceUpdate,
    sent: &Sent,
    report: &(dyn Fn(&'static str) + Send + Sync),
) -> End {
    let docker = recreator.docker();
    let service = match inspect(docker, &sent.service_id).await {
        Ok(Some(service)) => service,
        Ok(None) => {
            return End::Answer(Outcome::Refused {
                reason: format!(
                    "service {:?} is gone (its update was sent before the agent restarted)",
                    request.service
                ),
            });
        }
        Err(e) => {
            // Not known yet: answer nothing recorded; the same op id comes again.
            return End::Interrupted(Outcome::Interrupted {
                step: watch::STEP.to_owned(),
                reason: format!("cannot inspect service {:?}: {e}", request.service),
            });
        }
    };
    let now = spec_image(&service).unwrap_or_default().to_owned();
    let on_target = digest_of(&now) == digest_of(&sent.target);
    let status = service.update_status.as_ref();
    let state = status
        .and_then(|s| s.state)
        .and_then(|s| UpdateState::parse(s.as_ref()));
    let fresh = state.is_some() && started_at(status) != sent.baseline;
    info!(op = %request.op_id, service = %request.service, on_target, ?state, fresh, "Resuming a service update sent before; it is not sent again.");
    if on_target || (fresh && state == Some(UpdateState::RollbackStarted)) {
        return follow(
            recreator,
            request,
            &sent.service_id,
            &sent.target,
            sent.baseline.clone(),
            report,
        )
        .await;
    }
    let how = match (fresh, state) {
        (true, Some(state)) => format!(
            " ({state:?}: {})",
            status.and_then(|s| s.message.clone()).unwrap_or_default()
        ),
        _ => String::new(),
    };
    End::Answer(Outcome::RolledBack {
        step: watch::STEP.to_owned(),
        reason: format!("while the agent was away the service went back to {now}{how}"),
    })
}

/// A refusal: nothing was changed, for `reason` (one line).
fn refused(reason: String) -> Result<End, RecreateError> {
    Ok(End::Answer(Outcome::Refused { reason }))
}

/// Checks the request, sends the update (again on a stale version) and watches it to its end.
/// The spec's digest alone tells whether the service is on the target already (the same
/// content under another repository name is current too).
async fn run(
    recreator: &Recreator,
    request: &ServiceUpdate,
    report: &(dyn Fn(&'static str) + Send + Sync),
) -> Result<End, RecreateError> {
    let docker = recreator.docker();
    report("update");
    match is_manager(docker).await {
        Ok(true) => {}
        Ok(false) => {
            return refused(
                "this host is not a Swarm manager: services are updated through a manager"
                    .to_owned(),
            );
        }
        Err(e) => return refused(format!("cannot read the engine's Swarm role: {e}")),
    }
    let target = match ImageRef::parse(&request.image) {
        Ok(r) if r.is_pinned() && r.tag.is_some() => request.image.clone(),
        Ok(_) => {
            return refused(format!(
                "image {:?} is not pinned as repo:tag@sha256:…; the engine does not resolve tags for API clients",
                request.image
            ));
        }
        Err(e) => return refused(e.to_string()),
    };
    let digest = digest_of(&target).unwrap_or_default().to_owned();
    let mut attempt = 0;
    let (id, baseline) = loop {
        attempt += 1;
        let read = match read(docker, &request.service).await {
            Ok(Some(r)) => r,
            Ok(None) => return refused(format!("no service {:?} in this swarm", request.service)),
            Err(e) => return refused(format!("cannot inspect service {:?}: {e}", request.service)),
        };
        let service = &read.service;
        let id = service.id.clone().unwrap_or_default();
        if spec_image(service).and_then(digest_of) == Some(digest.as_str()) {
            return resume(recreator, request, &id, service, &target, report).await;
        }
        match recreator.faults.at(CrashPoint::AfterServiceRead).await {
            Ok(()) => {}
            Err(Interrupt::Crashed(point)) => return Err(RecreateError::Crashed(point)),
            Err(Interrupt::Failed(f)) => return refused(format!("{}: {}", f.step, f.reason)),
        }
        let Some(spec) = read.spec_with_image(&target) else {
            return refused(format!(
                "service {:?} runs no container (plugin or network-attachment task)",
                request.service
            ));
        };
        let version = read.version();
        let baseline = started_at(service.update_status.as_ref());
        let note = Sent {
            service_id: id.clone(),
            target: target.clone(),
            baseline: baseline.clone(),
        };
        if let Err(e) = write_sent(recreator, &request.op_id, &note) {
            return refused(format!(
                "cannot note the update before sending it (the data dir): {e}"
            ));
        }
        info!(op = %request.op_id, service = %request.service, image = %target, version, attempt, "Updating the service.");
        let auth = request.auth.as_ref().map(|a| {
            let server = ImageRef::parse(&target)
                .map(|r| r.auth_key().to_owned())
                .unwrap_or_default();
            registry_auth_header(a, &server)
        });
        match send(docker, &id, &spec, version, false, auth).await {
            Ok(()) => break (id, baseline),
            Err(e) if out_of_sequence(&e) && attempt < ATTEMPTS => {
                debug!(op = %request.op_id, attempt, "Service version went stale; reading it again.");
            }
            Err(e) => {
                // Without an answer (a timeout, a broken connection) the update may still
                // have reached the engine: only a spec still off the target is a refusal.
                let answered =
                    matches!(e, bollard::errors::Error::DockerResponseServerError { .. });
                if !answered
                    && let Ok(Some(now)) = spec::read(docker, &id).await
                    && spec_image(&now.service).and_then(digest_of) == Some(digest.as_str())
                {
                    warn!(op = %request.op_id, error = %e, "The update's answer was lost, but the engine took it; watching it.");
                    break (id, baseline);
                }
                // Refused: nothing was sent, so nothing to resume.
                if let Ok(path) = sent_path(recreator, &request.op_id) {
                    let _ = std::fs::remove_file(path);
                }
                return refused(format!(
                    "the engine refused the update of service {:?} (attempt {attempt}): {e}",
                    request.service
                ));
            }
        }
    };
    Ok(follow(recreator, request, &id, &target, baseline, report).await)
}

/// The spec already names the target (a repeated command, or one sent again after an agent
/// restart): an update still running, or paused, is watched like a new one; else there is
/// nothing to do.
async fn resume(
    recreator: &Recreator,
    request: &ServiceUpdate,
    id: &str,
    service: &Service,
    target: &str,
    report: &(dyn Fn(&'static str) + Send + Sync),
) -> Result<End, RecreateError> {
    let state = service.update_status.as_ref().and_then(|s| s.state);
    match state.and_then(|s| UpdateState::parse(s.as_ref())) {
        Some(UpdateState::Updating | UpdateState::Paused) => {
            info!(op = %request.op_id, service = %request.service, "The service is on the target already, its update not ended: watching it.");
            Ok(follow(recreator, request, id, target, None, report).await)
        }
        _ => Ok(End::Answer(Outcome::AlreadyCurrent)),
    }
}

/// Watches the update of service `id` to its end (see [`watch::next`]); `baseline`: the
/// `StartedAt` of the status seen before the update was sent (`None`: every status counts).
async fn follow(
    recreator: &Recreator,
    request: &ServiceUpdate,
    id: &str,
    target: &str,
    baseline: Option<String>,
    report: &(dyn Fn(&'static str) + Send + Sync),
) -> End {
    let docker = recreator.docker();
    report("watch");
    let mut phase = Phase::Updating;
    let mut overdue_at = Instant::now() + request.deadline;
    let digest = digest_of(target).unwrap_or_default().to_owned();
    loop {
        if matches!(phase, Phase::Updating) {
            tokio::select! {
                () = tokio::time::sleep(POLL) => {}
                () = recreator.until_stopping() => {
                    info!(op = %request.op_id, service = %request.service, "The agent is stopping: the engine carries the service update on; not watched any more.");
                    return End::Interrupted(Outcome::Interrupted {
                        step: watch::STEP.to_owned(),
                        reason: "the agent is stopping; the engine carries the service update on, and the same op id watches it again after the restart".to_owned(),
                    });
                }
            }
        } else {
            tokio::time::sleep(POLL).await;
        }
        let look = look(docker, id, target, baseline.as_deref(), overdue_at).await;
        let done = || Outcome::Updated {
            new_id: id.to_owned(),
            image_id: digest.clone(),
        };
        match watch::next(&phase, &look, done) {
            Next::Wait => {}
            Next::Done(outcome) => return End::Answer(outcome),
            Next::Follow(why) => {
                info!(op = %request.op_id, service = %request.service, %why, "The service rolls itself back.");
                report("rollback");
                phase = Phase::RollingBack { why };
                overdue_at = Instant::now() + request.deadline.max(MIN_ROLLBACK_WAIT);
            }
            Next::RollBack(why) => {
                info!(op = %request.op_id, service = %request.service, %why, "Rolling the service back.");
                report("rollback");
                if let Err(e) = roll_back(docker, id).await {
                    return End::Answer(Outcome::RollbackFailed {
                        step: watch::STEP.to_owned(),
                        reason: format!("{why}; the engine refused the rollback: {e}"),
                    });
                }
                phase = Phase::RollingBack { why };
                overdue_at = Instant::now() + request.deadline.max(MIN_ROLLBACK_WAIT);
            }
        }
    }
}

/// One look at service `id` for [`watch::next`]. A service that cannot be read counts as not
/// ended (the deadline ends the wait).
async fn look(
    docker: &Docker,
    id: &str,
    target: &str,
    baseline: Option<&str>,
    overdue_at: Instant,
) -> Look {
    let overdue = Instant::now() >= overdue_at;
    let service = match inspect(docker, id).await {
        Ok(Some(service)) => service,
        other => {
            debug!(service = %id, result = ?other.err(), "Cannot read the service while watching its update.");
            return Look {
                state: None,
                message: String::new(),
                fresh: false,
                tasks_on_target: false,
                overdue,
            };
        }
    };
    let status = service.update_status.clone().unwrap_or_default();
    let state = status.state.and_then(|s| UpdateState::parse(s.as_ref()));
    let started = started_at(service.update_status.as_ref());
    let fresh = state.is_some() && (baseline.is_none() || started.as_deref() != baseline);
    // Only without a status of this update do the tasks tell whether it is over.
    let tasks_on_target = !fresh && tasks_on(docker, id, target).await;
    Look {
        state,
        message: status.message.unwrap_or_default(),
        fresh,
        tasks_on_target,
        overdue,
    }
}

/// `UpdateStatus.StartedAt` as text (bollard's date type depends on its features).
fn started_at(status: Option<&ServiceUpdateStatus>) -> Option<String> {
    status
        .and_then(|s| s.started_at.as_ref())
        .and_then(|t| serde_json::to_value(t).ok())
        .map(|v| v.to_string())
}

/// Whether every task service `id` wants running has `target` in its spec (no task: true).
async fn tasks_on(docker: &Docker, id: &str, target: &str) -> bool {
    let filters = HashMap::from([
        ("service", vec![id.to_owned()]),
        ("desired-state", vec!["running".to_owned()]),
    ]);
    let options = ListTasksOptionsBuilder::new().filters(&filters).build();
    match docker.list_tasks(Some(options)).await {
        Ok(tasks) => tasks.iter().all(|t| {
            t.spec
                .as_ref()
                .and_then(|s| s.container_spec.as_ref())
                .and_then(|c| c.image.as_deref())
                == Some(target)
        }),
        Err(e) => {
            debug!(service = %id, error = %e, "Cannot list the service's tasks.");
            false
        }
    }
}

/// Asks the engine to roll service `id` back to its previous spec, reading its version again
/// when it went stale.
async fn roll_back(docker: &Docker, id: &str) -> Result<(), String> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        let read = match read(docker, id).await {
            Ok(Some(r)) => r,
            Ok(None) => return Err(format!("service {id} is gone")),
            Err(e) => return Err(format!("cannot inspect service {id}: {e}")),
        };
        // The engine takes the previous spec; the body must still be a valid spec, and the
        // current one is.
        let spec = read.raw.get("Spec").cloned().unwrap_or_default();
        match send(docker, id, &spec, read.version(), true, None).await {
            Ok(()) => return Ok(()),
            Err(e) if out_of_sequence(&e) && attempt < ATTEMPTS => {}
            Err(e) => return Err(e.to_string()),
        }
    }
}

/// Whether the engine is an active Swarm manager.
async fn is_manager(docker: &Docker) -> Result<bool, bollard::errors::Error> {
    let info = docker.info().await?;
    Ok(info.swarm.is_some_and(|s| {
        s.local_node_state == Some(bollard::models::LocalNodeState::ACTIVE)
            && s.control_available == Some(true)
    }))
}

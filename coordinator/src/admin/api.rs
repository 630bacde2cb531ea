//! The `Admin` API served to the operator's CLI certificate.

use std::sync::Arc;
use std::time::Duration;

use ouroboros_proto::v1 as pb;
use ouroboros_shared::host::HostName;
use tonic::{Request, Response, Status};
use tracing::info;

use crate::fleet::Fleet;
use crate::plan::rollout::RolloutState;
use crate::run::cycle::Cycle;
use crate::run::runner::CancelError;
use crate::server::dispatch::{CommandError, Dispatcher, RecreateOptions};
use crate::server::enrol::{Enrolment, token_info};

use super::convert::rollout_summary_pb;
pub use super::convert::{check_response, rollout_pb};

/// The `Admin` service.
pub struct AdminApi {
    fleet: Arc<Fleet>,
    commands: Arc<Dispatcher>,
    update_timeout: Duration,
    cycle: Arc<Cycle>,
    enrolment: Option<Arc<Enrolment>>,
}

impl AdminApi {
    pub fn new(
        fleet: Arc<Fleet>,
        commands: Arc<Dispatcher>,
        update_timeout: Duration,
        cycle: Arc<Cycle>,
    ) -> Self {
        Self {
            fleet,
            commands,
            update_timeout,
            cycle,
            enrolment: None,
        }
    }

    /// Serves the join token calls and `ForgetHost` from `enrolment`.
    pub fn with_enrolment(mut self, enrolment: Arc<Enrolment>) -> Self {
        self.enrolment = Some(enrolment);
        self
    }

    fn enrolment(&self) -> Result<Arc<Enrolment>, Status> {
        self.enrolment
            .clone()
            .ok_or_else(|| Status::unimplemented("this coordinator does not enrol hosts"))
    }
}

#[tonic::async_trait]
impl pb::admin_server::Admin for AdminApi {
    async fn create_join_token(
        &self,
        request: Request<pb::CreateJoinTokenRequest>,
    ) -> Result<Response<pb::CreateJoinTokenResponse>, Status> {
        let r = request.into_inner();
        let (token, record) = self
            .enrolment()?
            .create(Duration::from_secs(r.ttl_seconds), r.uses)?;
        Ok(Response::new(pb::CreateJoinTokenResponse {
            token: token.expose(),
            info: Some(token_info(&record)),
        }))
    }

    async fn list_join_tokens(
        &self,
        _request: Request<pb::ListJoinTokensRequest>,
    ) -> Result<Response<pb::ListJoinTokensResponse>, Status> {
        let tokens = self.enrolment()?.list()?.iter().map(token_info).collect();
        Ok(Response::new(pb::ListJoinTokensResponse { tokens }))
    }

    async fn revoke_join_token(
        &self,
        request: Request<pb::RevokeJoinTokenRequest>,
    ) -> Result<Response<pb::JoinTokenInfo>, Status> {
        let record = self.enrolment()?.revoke(&request.into_inner().id)?;
        Ok(Response::new(token_info(&record)))
    }

    async fn forget_host(
        &self,
        request: Request<pb::ForgetHostRequest>,
    ) -> Result<Response<pb::ForgetHostResponse>, Status> {
        let (enrolment, host) = (self.enrolment()?, request.into_inner().host);
        tokio::task::spawn_blocking(move || enrolment.forget(&host))
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map(|forgotten| Response::new(forgotten.into()))
    }

    async fn list_hosts(
        &self,
        _request: Request<pb::ListHostsRequest>,
    ) -> Result<Response<pb::ListHostsResponse>, Status> {
        let hosts = self
            .fleet
            .hosts()
            .into_iter()
            .map(|h| pb::HostStatus {
                host: h.record.host,
                connected: h.connected,
                last_seen_unix_ms: h.record.last_seen_unix_ms,
                agent_version: h.record.agent_version,
                agent_image: h.record.agent_image,
                engine: Some(h.record.engine.into()),
                mode: pb::HostMode::from(h.record.mode).into(),
                container_count: u32::try_from(h.record.containers.len()).unwrap_or(u32::MAX),
                connected_since_unix_ms: h.connected_since_unix_ms,
                reported: h.reported,
                inventory_at_unix_ms: h.record.inventory_at_unix_ms,
            })
            .collect();
        Ok(Response::new(pb::ListHostsResponse { hosts }))
    }

    async fn list_containers(
        &self,
        request: Request<pb::ListContainersRequest>,
    ) -> Result<Response<pb::ListContainersResponse>, Status> {
        let wanted = &request.get_ref().host;
        let host = if wanted.is_empty() {
            None
        } else {
            Some(HostName::parse(wanted).map_err(|e| Status::invalid_argument(e.to_string()))?)
        };
        let containers = self
            .fleet
            .containers(host.as_ref())
            .ok_or_else(|| Status::not_found(format!("no such host: {wanted}")))?
            .into_iter()
            .map(|(host, c)| pb::HostContainer {
                host,
                container: Some(c.into()),
            })
            .collect();
        Ok(Response::new(pb::ListContainersResponse { containers }))
    }

    async fn update(
        &self,
        request: Request<pb::UpdateRequest>,
    ) -> Result<Response<pb::UpdateResponse>, Status> {
        let r = request.into_inner();
        let host = HostName::parse(&r.host).map_err(|e| Status::invalid_argument(e.to_string()))?;
        if r.container.trim().is_empty() {
            return Err(Status::invalid_argument("no container given"));
        }
        if crate::detect::swarm::is_service(&r.container) {
            return Err(Status::invalid_argument(format!(
                "{} is a Swarm service: `update` recreates one container; services are updated by `check` and the schedule, with --swarm",
                r.container
            )));
        }
        if !self
            .fleet
            .hosts()
            .iter()
            .any(|h| h.record.host == host.as_str())
        {
            return Err(Status::not_found(format!(
                "host {host} is not known: no agent has connected under that name (`hosts` lists the fleet)"
            )));
        }
        if !r.image.is_empty() && r.image.chars().any(char::is_whitespace) {
            return Err(Status::invalid_argument(format!(
                "invalid image reference {:?}",
                r.image
            )));
        }
        let known = |fleet: &Fleet| {
            fleet
                .containers(Some(&host))
                .unwrap_or_default()
                .into_iter()
                .find(|(_, c)| {
                    c.name == r.container
                        || (r.container.len() >= 12 && c.id.starts_with(&r.container))
                })
                .map(|(_, c)| c)
        };
        let before = known(&self.fleet);
        let digest_of = |c: &ouroboros_shared::inventory::ContainerInfo| {
            ouroboros_shared::reference::ImageRef::parse(&c.image)
                .ok()
                .and_then(|i| i.digest_in(&c.repo_digests).map(str::to_owned))
                .unwrap_or_default()
        };
        // No image given: the agent recreates from the container's live configured reference;
        // the credentials are chosen by the registry of the reference the fleet view knows.
        let auth_image = if r.image.is_empty() {
            before.as_ref().map(|c| c.image.clone())
        } else {
            None
        };
        let started = ouroboros_shared::time_fmt::now_unix_ms();
        let event = crate::hooks::Event {
            host: host.to_string(),
            container: r.container.clone(),
            image: before.as_ref().map_or(r.image.clone(), |c| c.image.clone()),
            old_digest: before.as_ref().map(digest_of).unwrap_or_default(),
            ..Default::default()
        };
        let outcome = crate::run::runner::recreate_with_hooks(
            &self.cycle.hooks(),
            self.commands.as_ref(),
            event,
            (host.as_str(), &r.container, &r.image),
            &RecreateOptions {
                cleanup: self.cycle.cleanup.images,
                auth_image,
                ..RecreateOptions::default()
            },
            self.update_timeout,
        )
        .await
        .map_err(|e| match e {
            CommandError::NotConnected(_) => Status::failed_precondition(e.to_string()),
            CommandError::AgentGone { .. } => Status::unavailable(e.to_string()),
            CommandError::TimedOut { .. } => Status::deadline_exceeded(e.to_string()),
        })?;
        info!(host = %host, container = %r.container, op = %outcome.op_id, "Update finished.");
        {
            let result = &outcome.result;
            let status = result.status.name();
            self.cycle
                .metrics
                .update_done(host.as_str(), &r.container, status);
            // In the history like a rollout's targets (the agent sent the host's inventory
            // before its answer, so the view shows what runs now).
            if let Some(before) = &before {
                let after = known(&self.fleet);
                let finished = ouroboros_shared::time_fmt::now_unix_ms();
                self.fleet
                    .record_history(vec![crate::plan::rollout::HistoryEntry {
                        rollout: format!("update:{}", outcome.op_id),
                        host: host.to_string(),
                        container: before.name.clone(),
                        image: before.image.clone(),
                        old_digest: digest_of(before),
                        new_digest: after.as_ref().map(digest_of).unwrap_or_default(),
                        result: if result.status.succeeded() || result.status.left_alone() {
                            status.to_owned()
                        } else {
                            "failed".to_owned()
                        },
                        reason: if result.reason.is_empty() {
                            String::new()
                        } else {
                            format!("{status}: {}", result.reason)
                        },
                        started_ms: started,
                        finished_ms: finished,
                        duration_ms: finished - started,
                    }]);
                if result.status == crate::plan::outcome::Status::Updated {
                    self.cycle
                        .forget_bad_digests(Some(host.as_str()), Some(&before.name));
                }
            }
        }
        Ok(Response::new(pb::UpdateResponse {
            op_id: outcome.op_id,
            result: Some((&outcome.result).into()),
            steps: outcome.steps,
        }))
    }

    async fn check(
        &self,
        request: Request<pb::CheckRequest>,
    ) -> Result<Response<pb::CheckResponse>, Status> {
        let r = request.into_inner();
        let dry_run = r.dry_run;
        let host = (!r.host.is_empty()).then_some(r.host);
        let container = (!r.container.is_empty()).then_some(r.container);
        if r.retry {
            let n = self
                .cycle
                .forget_bad_digests(host.as_deref(), container.as_deref());
            info!(forgotten = n, "Known-bad digests forgotten for a retry.");
        }
        let trigger = if r.update || r.retry {
            crate::run::cycle::Trigger::Update
        } else {
            crate::run::cycle::Trigger::Check
        };
        // A cycle never overlaps a running one: `run` waits for it. It runs in a task of its
        // own: a client that goes away must not cancel a rollout half way.
        let cycle = self.cycle.clone();
        let report = tokio::spawn(async move {
            cycle
                .run_scoped(dry_run, host.as_deref(), container.as_deref(), trigger)
                .await
        })
        .await
        .map_err(|e| Status::internal(format!("the cycle failed: {e}")))?;
        Ok(Response::new(check_response(report)))
    }

    async fn list_rollouts(
        &self,
        request: Request<pb::ListRolloutsRequest>,
    ) -> Result<Response<pb::ListRolloutsResponse>, Status> {
        let pb::ListRolloutsRequest { id, summary } = request.into_inner();
        let rollouts: Vec<pb::Rollout> = if id.is_empty() && summary {
            self.fleet
                .rollout_summaries()
                .map_err(|e| Status::internal(e.to_string()))?
                .iter()
                .map(rollout_summary_pb)
                .collect()
        } else if id.is_empty() {
            self.fleet
                .rollouts()
                .map_err(|e| Status::internal(e.to_string()))?
                .iter()
                .map(rollout_pb)
                .collect()
        } else {
            // One read by key, not every stored rollout.
            let one = self
                .fleet
                .rollout(&id)
                .map_err(|e| Status::internal(e.to_string()))?
                .ok_or_else(|| Status::not_found(format!("no rollout {id}")))?;
            vec![rollout_pb(&one)]
        };
        Ok(Response::new(pb::ListRolloutsResponse { rollouts }))
    }

    async fn history(
        &self,
        request: Request<pb::HistoryRequest>,
    ) -> Result<Response<pb::HistoryResponse>, Status> {
        let r = request.into_inner();
        let entries = self
            .fleet
            .history()
            .map_err(|e| Status::internal(e.to_string()))?
            .into_iter()
            .filter(|e| r.host.is_empty() || e.host == r.host)
            .filter(|e| r.container.is_empty() || e.container == r.container)
            .filter(|e| e.finished_ms >= r.since_unix_ms)
            .map(|e| pb::HistoryEntry {
                rollout: e.rollout,
                host: e.host,
                container: e.container,
                image: e.image,
                old_digest: e.old_digest,
                new_digest: e.new_digest,
                result: e.result,
                reason: e.reason,
                started_unix_ms: e.started_ms,
                finished_unix_ms: e.finished_ms,
                duration_ms: e.duration_ms,
            })
            .collect();
        Ok(Response::new(pb::HistoryResponse { entries }))
    }

    async fn resume_rollout(
        &self,
        request: Request<pb::ResumeRolloutRequest>,
    ) -> Result<Response<pb::ResumeRolloutResponse>, Status> {
        let id = request.into_inner().id;
        let updates_paused = self.fleet.paused().is_some();
        let paused_rollout = self
            .fleet
            .newest_rollout(|r| {
                matches!(r.state, RolloutState::Paused { .. }) && (id.is_empty() || r.id == id)
            })
            .map_err(|e| Status::internal(e.to_string()))?;
        let was_paused = updates_paused || paused_rollout.is_some();
        if paused_rollout.is_none() && (!id.is_empty() || !updates_paused) {
            return Err(Status::failed_precondition(if id.is_empty() {
                "nothing is paused".to_owned()
            } else {
                format!("no paused rollout {id}")
            }));
        }
        if updates_paused {
            let fleet = self.fleet.clone();
            let saved = tokio::task::spawn_blocking(move || fleet.set_paused(None))
                .await
                .unwrap_or(false);
            if !saved {
                return Err(Status::unavailable("cannot store the setting; try again"));
            }
            info!("Updates resumed.");
        }
        let mut shown = None;
        if paused_rollout.is_some() {
            let resumed = self
                .cycle
                .resume_rollout(&id)
                .await
                .map_err(Status::unavailable)?;
            if let Some(rollout) = resumed {
                shown = Some(rollout_pb(&rollout));
                let cycle = self.cycle.clone();
                tokio::spawn(async move { cycle.resume().await });
            }
        }
        Ok(Response::new(pb::ResumeRolloutResponse {
            rollout: shown,
            was_paused,
        }))
    }

    async fn status(
        &self,
        _request: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusResponse>, Status> {
        let hosts = self.fleet.hosts();
        let count = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
        let containers: usize = hosts.iter().map(|h| h.record.containers.len()).sum();
        let last_at = self
            .cycle
            .last
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .map_or(0, |(at, _, _)| at);
        // From the fleet view as it is now, not from what the last cycle saw.
        let monitored = count(self.cycle.monitored_now());
        let pending = count(self.cycle.pending_now());
        let rollouts = self
            .fleet
            .rollout_heads()
            .map_err(|e| Status::internal(e.to_string()))?;
        let active = rollouts
            .iter()
            .filter(|r| r.state.is_active() || matches!(r.state, RolloutState::Paused { .. }))
            .count();
        let rollouts_paused = rollouts
            .iter()
            .filter(|r| matches!(r.state, RolloutState::Paused { .. }))
            .count();
        let paused = self.fleet.paused();
        let mut agents: std::collections::BTreeMap<(String, String), usize> = Default::default();
        for h in &hosts {
            let key = (h.record.agent_version.clone(), h.record.agent_image.clone());
            *agents.entry(key).or_default() += 1;
        }
        let agents = agents
            .into_iter()
            .map(|((version, image), n)| pb::AgentVersion {
                version,
                image,
                hosts: count(n),
            })
            .collect();
        Ok(Response::new(pb::StatusResponse {
            agents,
            hosts: count(hosts.len()),
            hosts_connected: count(hosts.iter().filter(|h| h.connected).count()),
            containers_monitored: monitored,
            updates_pending: pending,
            rollouts_active: count(active),
            last_cycle_unix_ms: last_at,
            next_cycle_unix_ms: self
                .cycle
                .next_at
                .load(std::sync::atomic::Ordering::Relaxed),
            paused: paused.is_some(),
            paused_reason: paused.unwrap_or_default(),
            containers: count(containers),
            rollouts_paused: count(rollouts_paused),
        }))
    }

    async fn pause(
        &self,
        request: Request<pb::PauseRequest>,
    ) -> Result<Response<pb::PauseResponse>, Status> {
        let reason = request.into_inner().reason.trim().to_owned();
        let fleet = self.fleet.clone();
        let saved = tokio::task::spawn_blocking(move || fleet.set_paused(Some(reason)))
            .await
            .unwrap_or(false);
        if !saved {
            return Err(Status::unavailable("cannot store the setting; try again"));
        }
        info!("Updates paused.");
        Ok(Response::new(pb::PauseResponse {}))
    }

    async fn cancel_rollout(
        &self,
        request: Request<pb::CancelRolloutRequest>,
    ) -> Result<Response<pb::Rollout>, Status> {
        let r = request.into_inner();
        if r.id.trim().is_empty() {
            return Err(Status::invalid_argument("no rollout id given"));
        }
        let rollout = self
            .cycle
            .cancel_rollout(&r.id, r.revert, &r.reason)
            .await
            .map_err(|e| match e {
                CancelError::NotFound(_) => Status::not_found(e.to_string()),
                CancelError::AlreadyEnded { .. } => Status::failed_precondition(e.to_string()),
                CancelError::Unavailable(_) => Status::unavailable(e.to_string()),
            })?;
        Ok(Response::new(rollout_pb(&rollout)))
    }

    type WatchRolloutStream = tokio_stream::wrappers::ReceiverStream<Result<pb::Rollout, Status>>;

    async fn watch_rollout(
        &self,
        request: Request<pb::ListRolloutsRequest>,
    ) -> Result<Response<Self::WatchRolloutStream>, Status> {
        let id = request.into_inner().id;
        // Subscribe first, so that no change between the read and the subscription is lost.
        let mut changes = self.cycle.runner.progress.subscribe();
        let current = self
            .fleet
            .rollout(&id)
            .map_err(|e| Status::internal(e.to_string()))?
            .ok_or_else(|| Status::not_found(format!("no rollout {id}")))?;
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        tokio::spawn(async move {
            let running = current.state.is_active();
            if tx.send(Ok(rollout_pb(&current))).await.is_err() || !running {
                return;
            }
            while changes.changed().await.is_ok() {
                let update = changes.borrow_and_update().clone();
                let Some(r) = update.filter(|r| r.id == id) else {
                    continue;
                };
                if tx.send(Ok(rollout_pb(&r))).await.is_err() || !r.state.is_active() {
                    return;
                }
            }
        });
        Ok(Response::new(tokio_stream::wrappers::ReceiverStream::new(
            rx,
        )))
    }
}

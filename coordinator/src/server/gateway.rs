//! `AgentGateway.Connect`: one long-lived stream per agent. The agent's host is its
//! certificate's; a `Hello` that claims another host is refused, and so is a revoked
//! certificate (the handshake refuses it already; this covers a connection made before the
//! revocation). The serial of each agent certificate seen is recorded.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures_util::Stream;
use ouroboros_proto::v1 as pb;
use ouroboros_proto::v1::agent_message::Kind;
use ouroboros_shared::host::HostName;
use ouroboros_shared::inventory::{Hello, Inventory};
use ouroboros_shared::pki::PeerIdentity;
use ouroboros_shared::time_fmt::now_unix_ms;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use tracing::{error, info, warn};

use crate::fleet::{Fleet, SessionGuard};
use crate::hooks::{Event, Hooks, Point};
use crate::server::dispatch::Dispatcher;
use crate::server::enrol::Enrolment;
use crate::server::tls::{PeerInfo, peer};

/// What an agent of a forgotten host is told (the agent recognises "revoked").
pub const REVOKED: &str = "this host's certificate was revoked by the coordinator (hosts forget); enrol it again with a new join token";

/// How long an agent has to send `Hello` after opening the stream.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

/// The `AgentGateway` service.
pub struct Gateway {
    fleet: Arc<Fleet>,
    commands: Arc<Dispatcher>,
    heartbeat: Duration,
    missed_heartbeats: u32,
    shutdown: watch::Receiver<bool>,
    /// For the agents' alerts.
    notifiers: crate::notify::Notifiers,
    /// Serials seen and revoked, and the CA that signs renewals.
    enrolment: Option<Arc<Enrolment>>,
    /// Run when an agent asks at a hook point inside its operation.
    hooks: Arc<Hooks>,
}

impl Gateway {
    /// Runs `hooks` when an agent asks at a hook point inside its operation.
    pub fn with_hooks(mut self, hooks: Arc<Hooks>) -> Self {
        self.hooks = hooks;
        self
    }

    /// Records the serials of agent certificates, refuses revoked ones and renews.
    pub fn with_enrolment(mut self, enrolment: Arc<Enrolment>) -> Self {
        self.enrolment = Some(enrolment);
        self
    }

    /// The verified agent of a request, unless its certificate is revoked.
    fn agent<T>(&self, request: &Request<T>) -> Result<(PeerInfo, HostName), Status> {
        let peer = peer(request)?;
        let PeerIdentity::Agent(host) = peer.identity.clone() else {
            // The interceptor already refuses other roles; this guards a misconfigured router.
            return Err(Status::permission_denied("not an agent certificate"));
        };
        if let Some(e) = &self.enrolment
            && e.certs().is_revoked(&peer.serial)
        {
            warn!(peer = %peer.addr, host = %host, serial = %peer.serial, "Refused agent: its certificate is revoked.");
            return Err(Status::permission_denied(REVOKED));
        }
        Ok((peer, host))
    }

    pub fn new(
        fleet: Arc<Fleet>,
        commands: Arc<Dispatcher>,
        heartbeat: Duration,
        missed_heartbeats: u32,
        shutdown: watch::Receiver<bool>,
        notifiers: crate::notify::Notifiers,
    ) -> Self {
        Self {
            fleet,
            commands,
            heartbeat,
            missed_heartbeats,
            shutdown,
            notifiers,
            enrolment: None,
            hooks: Arc::default(),
        }
    }
}

type OutStream = Pin<Box<dyn Stream<Item = Result<pb::CoordinatorMessage, Status>> + Send>>;

#[tonic::async_trait]
impl pb::agent_gateway_server::AgentGateway for Gateway {
    type ConnectStream = OutStream;

    async fn connect(
        &self,
        request: Request<Streaming<pb::AgentMessage>>,
    ) -> Result<Response<Self::ConnectStream>, Status> {
        let (peer, host) = self.agent(&request)?;
        let mut inbound = request.into_inner();
        let first = match tokio::time::timeout(HELLO_TIMEOUT, inbound.message()).await {
            Ok(Ok(Some(message))) => message,
            Ok(Ok(None)) => return Err(Status::cancelled("stream closed before Hello")),
            Ok(Err(status)) => return Err(status),
            Err(_) => {
                warn!(peer = %peer.addr, host = %host, "Refused agent: no Hello within {HELLO_TIMEOUT:?}.");
                return Err(Status::deadline_exceeded("no Hello received"));
            }
        };
        let hello = match first.kind {
            Some(Kind::Hello(h)) => Hello::try_from(h).map_err(|e| {
                warn!(peer = %peer.addr, host = %host, error = %e, "Refused agent: invalid Hello.");
                Status::invalid_argument(e.to_string())
            })?,
            _ => {
                warn!(peer = %peer.addr, host = %host, "Refused agent: first message is not Hello.");
                return Err(Status::invalid_argument("the first message must be Hello"));
            }
        };
        if HostName::parse(&hello.host).ok().as_ref() != Some(&host) {
            warn!(
                peer = %peer.addr,
                certificate_host = %host,
                claimed_host = %hello.host,
                "Refused agent: its Hello claims a host other than its certificate's."
            );
            return Err(Status::permission_denied(format!(
                "certificate is for host {host}, Hello claims {:?}",
                hello.host
            )));
        }
        if let Some(certs) = self.enrolment.as_ref().map(|e| e.certs()) {
            let (h, serial) = (host.to_string(), peer.serial.clone());
            let recorded = tokio::task::spawn_blocking(move || certs.record(&h, &serial)).await;
            if let Ok(Err(error)) = recorded {
                warn!(host = %host, %error, "Cannot record the agent certificate's serial.");
            }
        }
        let (session, replaced) = self.fleet.connect(&host, &hello, peer.addr, now_unix_ms());
        if let (Some(old_peer), Some(op)) = (replaced, &hello.handover_op_id) {
            info!(
                host = %host,
                peer = %peer.addr,
                old_peer = %old_peer,
                op = %op,
                agent_image = hello.agent_image.as_deref().unwrap_or_default(),
                "Self-update: the successor agent takes over the host's connection."
            );
        } else if let Some(old_peer) = replaced {
            warn!(
                host = %host,
                peer = %peer.addr,
                old_peer = %old_peer,
                "Host connected again while its previous connection was open; the previous one is closed. Two agents sharing one certificate look like this."
            );
        }
        info!(
            peer = %peer.addr,
            host = %host,
            agent_version = %hello.agent_version,
            engine = %hello.engine.version,
            api = %hello.engine.api_version,
            mode = hello.mode.as_str(),
            "Agent connected."
        );
        let (tx, rx) = mpsc::channel(16);
        let welcome = pb::CoordinatorMessage {
            kind: Some(pb::coordinator_message::Kind::Welcome(pb::Welcome {
                host: host.to_string(),
                heartbeat_interval_secs: u32::try_from(self.heartbeat.as_secs()).unwrap_or(5),
            })),
        };
        tx.send(Ok(welcome))
            .await
            .map_err(|_| Status::cancelled("agent went away"))?;
        self.commands.register_successor(
            host.as_str(),
            session.id,
            tx.clone(),
            hello.handover_op_id.as_deref(),
        );
        let link = AgentLink {
            fleet: self.fleet.clone(),
            commands: self.commands.clone(),
            host,
            session,
            silence_limit: self.heartbeat * self.missed_heartbeats,
            shutdown: self.shutdown.clone(),
            outbound: tx,
            notifiers: self.notifiers.clone(),
            hooks: self.hooks.clone(),
        };
        tokio::spawn(link.run(inbound));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn renew(
        &self,
        request: Request<pb::RenewRequest>,
    ) -> Result<Response<pb::RenewResponse>, Status> {
        let (peer, host) = self.agent(&request)?;
        let Some(enrolment) = self.enrolment.clone() else {
            return Err(Status::unimplemented(
                "this coordinator does not renew certificates",
            ));
        };
        let csr = request.into_inner().csr_der;
        let h = host.clone();
        let answer = tokio::task::spawn_blocking(move || enrolment.renew(&h, &csr))
            .await
            .map_err(|e| Status::internal(e.to_string()))?;
        match &answer {
            Ok((_, serial)) => {
                info!(peer = %peer.addr, host = %host, old_serial = %peer.serial, %serial, "Certificate renewed.")
            }
            Err(status) => {
                warn!(peer = %peer.addr, host = %host, reason = status.message(), "Refused certificate renewal.")
            }
        }
        answer.map(|(cert_pem, _)| Response::new(pb::RenewResponse { cert_pem }))
    }
}

/// The coordinator's side of one connected agent.
struct AgentLink {
    fleet: Arc<Fleet>,
    commands: Arc<Dispatcher>,
    host: HostName,
    /// Marks the host disconnected when the link ends, however it ends.
    session: SessionGuard,
    silence_limit: Duration,
    shutdown: watch::Receiver<bool>,
    /// The response stream; open while the link lives.
    outbound: mpsc::Sender<Result<pb::CoordinatorMessage, Status>>,
    notifiers: crate::notify::Notifiers,
    hooks: Arc<Hooks>,
}

/// Why a link ended, and what the agent is told.
enum LinkEnd {
    /// The agent closed its side; nothing to tell.
    Closed(String),
    /// The coordinator ends the stream with this status.
    Ended(Status),
}

impl AgentLink {
    async fn run(mut self, mut inbound: Streaming<pb::AgentMessage>) {
        let end = loop {
            let message = tokio::select! {
                m = tokio::time::timeout(self.silence_limit, inbound.message()) => m,
                _ = self.session.replaced.wait_for(|r| *r) => break LinkEnd::Ended(
                    if self.fleet.knows(self.host.as_str()) {
                        Status::aborted("replaced by a newer connection of the same host")
                    } else {
                        Status::permission_denied(REVOKED)
                    },
                ),
                _ = self.shutdown.wait_for(|s| *s) => break LinkEnd::Ended(
                    Status::unavailable("coordinator shutting down"),
                ),
            };
            let message = match message {
                Ok(Ok(Some(m))) => m,
                Ok(Ok(None)) => break LinkEnd::Closed("stream closed".to_owned()),
                Ok(Err(status)) => {
                    break LinkEnd::Closed(format!("stream error: {}", status.message()));
                }
                Err(_) => {
                    break LinkEnd::Ended(Status::deadline_exceeded(format!(
                        "no message for {:?}",
                        self.silence_limit
                    )));
                }
            };
            if let Err(status) = self.handle(message) {
                break LinkEnd::Ended(status);
            }
        };
        match end {
            LinkEnd::Closed(reason) => {
                info!(host = %self.host, %reason, "Agent disconnected.");
            }
            LinkEnd::Ended(status) => {
                let reason = status.message().to_owned();
                if matches!(
                    status.code(),
                    tonic::Code::InvalidArgument | tonic::Code::DeadlineExceeded
                ) {
                    warn!(host = %self.host, %reason, "Agent disconnected.");
                } else {
                    info!(host = %self.host, %reason, "Agent disconnected.");
                }
                let _ = self.outbound.try_send(Err(status));
            }
        }
        self.commands
            .unregister(self.host.as_str(), self.session.id);
        // Dropping `self.session` marks the host disconnected.
    }

    fn handle(&self, message: pb::AgentMessage) -> Result<(), Status> {
        let now = now_unix_ms();
        match message.kind {
            Some(Kind::Inventory(inventory)) => {
                let inventory = Inventory::try_from(inventory)
                    .map_err(|e| Status::invalid_argument(e.to_string()))?;
                let count = inventory.containers.len();
                if self
                    .fleet
                    .inventory(&self.host, self.session.id, inventory, now)
                {
                    tracing::debug!(host = %self.host, containers = count, "Inventory received.");
                }
                Ok(())
            }
            Some(Kind::Heartbeat(_)) => {
                self.fleet.seen(&self.host, self.session.id, now);
                Ok(())
            }
            Some(Kind::Progress(progress)) => {
                info!(host = %self.host, op = %progress.op_id, step = %progress.step, "Command progress.");
                self.commands.progress(self.host.as_str(), progress);
                Ok(())
            }
            Some(Kind::Result(result)) => {
                self.commands.result(self.host.as_str(), result);
                Ok(())
            }
            Some(Kind::Alert(alert)) => {
                // Found by the agent where no command could carry it (recovery at its start):
                // a container that does not run again, an unreadable journal entry.
                error!(host = %self.host, container = %alert.container, op = %alert.op_id, message = %alert.message, "Agent alert: needs an operator.");
                let what = if alert.container.is_empty() {
                    String::new()
                } else {
                    format!("/{}", alert.container)
                };
                self.notifiers.send(crate::notify::Message {
                    event: "operator-needed",
                    kind: crate::notify::Kind::Failure,
                    title: format!("Ouroboros: {}{what} needs an operator", self.host),
                    body: alert.message,
                });
                Ok(())
            }
            Some(Kind::HookRequest(request)) => {
                self.answer_hook(request);
                Ok(())
            }
            Some(Kind::Hello(_)) => Err(Status::invalid_argument("protocol error: second Hello")),
            None => Err(Status::invalid_argument("protocol error: empty message")),
        }
    }
}

impl AgentLink {
    /// Runs the hooks the agent asks for at a point inside its operation (in a task: the
    /// link goes on meanwhile) and sends the verdict; a point agents do not ask for, or an
    /// operation the coordinator does not wait for, is refused (an agent cannot run the
    /// operator's scripts at will).
    fn answer_hook(&self, r: pb::HookRequest) {
        let hooks = self.hooks.clone();
        let outbound = self.outbound.clone();
        let host = self.host.to_string();
        // Only inside an operation the coordinator sent this host and waits for.
        let in_flight = self.commands.waits_for(&host, &r.op_id);
        let commands = self.commands.clone();
        tokio::spawn(async move {
            let point = Point::from_name(&r.point).filter(|p| p.asked_by_agents());
            let (allowed, reason) = match point {
                _ if !in_flight => (
                    false,
                    format!("no operation {} in flight for this host", r.op_id),
                ),
                None => (
                    false,
                    format!("no such hook point inside an operation: {:?}", r.point),
                ),
                Some(point) => {
                    let mut event = Event {
                        host,
                        container: r.container.clone(),
                        ..Event::default()
                    };
                    // The image to remove, or the one a successor agent runs.
                    if matches!(
                        point,
                        Point::BeforeImageCleanup
                            | Point::BeforeSelfCleanup
                            | Point::AfterSelfCleanup
                    ) {
                        event.image = r.subject.clone();
                    } else {
                        event.dependant = r.subject.clone();
                    }
                    let fired = hooks.fire(point, &event).await;
                    // With the operation's steps, for the rollout's record.
                    for run in fired.summaries() {
                        commands.progress(
                            &event.host,
                            pb::CommandProgress {
                                op_id: r.op_id.clone(),
                                step: format!("hook {run}"),
                            },
                        );
                    }
                    match fired.veto {
                        Some(veto) => (false, veto.to_string()),
                        None => (true, String::new()),
                    }
                }
            };
            let verdict = pb::CoordinatorMessage {
                kind: Some(pb::coordinator_message::Kind::HookVerdict(
                    pb::HookVerdict {
                        request_id: r.request_id,
                        allowed,
                        reason,
                    },
                )),
            };
            let _ = outbound.send(Ok(verdict)).await;
        });
    }
}

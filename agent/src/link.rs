//! The agent's link to the coordinator: one bidirectional stream, re-opened with backoff
//! whenever it breaks. Each session sends `Hello`, then a full inventory, then a fresh
//! inventory after Docker events (debounced) and heartbeats.

use std::time::Duration;

use futures_util::StreamExt;
use ouroboros_proto::v1 as pb;
use ouroboros_proto::v1::agent_gateway_client::AgentGatewayClient;
use ouroboros_proto::v1::coordinator_message::Kind;
use ouroboros_shared::cli::error_chain;
use ouroboros_shared::host::HostName;
use ouroboros_shared::inventory::{Hello, Inventory};
use ouroboros_shared::names::HEARTBEAT_INTERVAL_SECS;
use ouroboros_shared::pki::ClientPem;
use ouroboros_shared::time_fmt::now_unix_ms;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};
use tracing::{debug, error, info, warn};

use std::sync::Arc;

use crate::commands::CommandRunner;
use crate::engine::{Engine, EngineError};
use crate::recreate::{Alert, Alerts};
use crate::renew::{RenewError, Renewal, due_in, renew};
use crate::schedule::InventorySchedule;
use ouroboros_shared::backoff::Backoff;

/// A session that lasted this long resets the backoff; shorter ones (refused, replaced,
/// dropped at once) keep backing off.
const STABLE_SESSION: Duration = Duration::from_secs(30);
/// After a failed renewal, the next try.
const RENEW_RETRY: Duration = Duration::from_secs(60);
/// A full inventory at least this often, whatever the events say.
const RESYNC: Duration = Duration::from_secs(300);

/// How the agent reaches the coordinator.
#[derive(Clone)]
pub struct LinkConfig {
    pub coordinator: String,
    pub tls: ClientPem,
    pub host: HostName,
    pub reconnect_initial: Duration,
    pub reconnect_max: Duration,
    /// Where the certificate is renewed before it expires; `None`: never renewed here.
    pub renewal: Option<Renewal>,
    /// The agent's own container and its image, for `Hello` (set at the agent's start).
    pub container_id: Option<String>,
    pub agent_image: Option<String>,
}

#[derive(Debug, thiserror::Error)]
enum SessionError {
    #[error("cannot connect: {0}")]
    Connect(String),
    #[error("coordinator refused the stream: {0}")]
    Refused(tonic::Status),
    #[error("stream broken: {0}")]
    Stream(tonic::Status),
    #[error(transparent)]
    Engine(#[from] crate::engine::EngineError),
    #[error("protocol error: {0}")]
    Protocol(&'static str),
    /// A successor agent that lost its hand-over: it must not stay connected.
    #[error("{0}")]
    Defunct(String),
}

impl SessionError {
    /// The coordinator revoked this host's certificate (`hosts forget`): the handshake ends
    /// with the TLS alert `certificate_revoked`, or the stream is refused or ended saying so.
    fn revoked(&self) -> bool {
        const ALERT: &str = "CertificateRevoked";
        match self {
            Self::Connect(text) => text.contains(ALERT),
            Self::Refused(status) | Self::Stream(status) => {
                (status.code() == tonic::Code::PermissionDenied
                    && status.message().contains("revoked"))
                    || error_chain(status).contains(ALERT)
            }
            _ => false,
        }
    }
}

/// Keeps a session open until `shutdown` becomes true; then the session's last messages go
/// out and the stream is closed cleanly.
pub async fn run(
    mut config: LinkConfig,
    engine: Engine,
    commands: Arc<CommandRunner>,
    alerts: Alerts,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut backoff = Backoff::new(config.reconnect_initial, config.reconnect_max);
    // Said once (ERROR), then quietly retried at the longest delay: a forgotten host's agent
    // keeps running (no restart loop) until it is enrolled again or removed.
    let mut revoked_said = false;
    loop {
        if *shutdown.borrow() {
            return;
        }
        // A hand-over holds the link: the host's connection is the successor's to take.
        if let Some(handover) = commands.handover() {
            let mut busy = handover.busy();
            if *busy.borrow() {
                info!("Handing this host over to a successor agent; not reconnecting meanwhile.");
            }
            tokio::select! {
                _ = busy.wait_for(|b| !*b) => {}
                () = stopped(&mut shutdown) => return,
            }
        }
        let started = Instant::now();
        let result = session(&config, &engine, &commands, &alerts, shutdown.clone()).await;
        // Cut off: a question at a hook point gets no verdict now (a veto, at once).
        commands.verdicts.link_ended();
        if *shutdown.borrow() {
            return;
        }
        if let Err(SessionError::Defunct(reason)) = &result {
            error!(%reason, "This agent stops taking part.");
            return;
        }
        let revoked = result.as_ref().is_err_and(SessionError::revoked);
        let result = match result {
            Ok(Some(renewed)) => {
                // At once, with the new certificate: no gap longer than a reconnect.
                config.tls = renewed;
                backoff.reset();
                revoked_said = false;
                continue;
            }
            Ok(None) => Ok(()),
            Err(e) => Err(e),
        };
        match result {
            Ok(()) => info!(coordinator = %config.coordinator, "Coordinator closed the stream."),
            Err(_) if revoked && !revoked_said => {
                error!(
                    coordinator = %config.coordinator,
                    host = %config.host,
                    "This host's certificate was revoked by the coordinator (hosts forget); to enrol it again, remove its certificate (cert.pem in the data dir, or --cert) and start the agent with --join and a new token. Retrying every {:?} meanwhile.",
                    config.reconnect_max
                );
            }
            Err(error) if revoked => debug!(%error, "Certificate still revoked."),
            Err(error) => {
                warn!(coordinator = %config.coordinator, %error, "Link to the coordinator lost.")
            }
        }
        revoked_said = revoked;
        if started.elapsed() >= STABLE_SESSION {
            backoff.reset();
        }
        let delay = if revoked {
            config.reconnect_max
        } else {
            backoff.next_delay()
        };
        info!(
            delay_ms = delay.as_millis(),
            "Reconnecting to the coordinator."
        );
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = stopped(&mut shutdown) => return,
        }
    }
}

fn endpoint(config: &LinkConfig) -> Result<Endpoint, SessionError> {
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&config.tls.ca))
        .identity(Identity::from_pem(&config.tls.cert, &config.tls.key));
    Ok(Endpoint::from_shared(config.coordinator.clone())
        .and_then(|e| e.tls_config(tls))
        .map_err(|e| SessionError::Connect(e.to_string()))?
        .connect_timeout(Duration::from_secs(10))
        .http2_keep_alive_interval(Duration::from_secs(20))
        .keep_alive_timeout(Duration::from_secs(10))
        .keep_alive_while_idle(true))
}

fn message(kind: pb::agent_message::Kind) -> pb::AgentMessage {
    pb::AgentMessage { kind: Some(kind) }
}

/// How long a closing session waits for the coordinator to end the stream after its own
/// last message.
const DRAIN: Duration = Duration::from_secs(3);

/// One session; `Ok(Some(tls))` when it ended to reconnect with a renewed certificate.
async fn session(
    config: &LinkConfig,
    engine: &Engine,
    commands: &Arc<CommandRunner>,
    alerts: &Alerts,
    mut shutdown: watch::Receiver<bool>,
) -> Result<Option<ClientPem>, SessionError> {
    let endpoint = endpoint(config)?;
    let channel = tokio::select! {
        c = endpoint.connect() => c.map_err(|e| SessionError::Connect(error_chain(&e)))?,
        () = stopped(&mut shutdown) => return Ok(None),
    };
    let (engine_info, mode) = engine.describe().await?;
    let hello = Hello {
        host: config.host.to_string(),
        agent_version: env!("CARGO_PKG_VERSION").to_owned(),
        engine: engine_info,
        mode,
        container_id: config.container_id.clone(),
        agent_image: config.agent_image.clone(),
        handover_op_id: commands.handover().and_then(|h| h.successor_op()),
    };
    let (tx, rx) = mpsc::channel(16);
    send(
        &tx,
        message(pb::agent_message::Kind::Hello(hello.clone().into())),
    )
    .await?;
    let mut inbound = AgentGatewayClient::new(channel.clone())
        .connect(ReceiverStream::new(rx))
        .await
        .map_err(SessionError::Refused)?
        .into_inner();
    let heartbeat = match inbound.message().await.map_err(SessionError::Stream)? {
        Some(pb::CoordinatorMessage {
            kind: Some(Kind::Welcome(w)),
        }) => Duration::from_secs(u64::from(if w.heartbeat_interval_secs == 0 {
            HEARTBEAT_INTERVAL_SECS
        } else {
            w.heartbeat_interval_secs
        })),
        Some(_) => return Err(SessionError::Protocol("expected Welcome")),
        None => return Err(SessionError::Protocol("stream closed before Welcome")),
    };
    info!(
        coordinator = %config.coordinator,
        host = %config.host,
        engine = %hello.engine.version,
        api = %hello.engine.api_version,
        "Connected to the coordinator."
    );
    // A successor agent completes its self-update now that it is the host's connection (in a
    // task: the verdicts of the coordinator's hooks it asks arrive through this loop).
    let mut taking_over = commands.handover().and_then(|h| h.successor_op()).map(|_| {
        let (commands, tx) = (commands.clone(), tx.clone());
        tokio::spawn(async move { commands.take_over(&tx).await })
    });
    // What recovery (or the journal) found for an operator, now that someone can hear it.
    let pending: Vec<Alert> =
        std::mem::take(&mut *alerts.lock().unwrap_or_else(|p| p.into_inner()));
    for alert in &pending {
        send(&tx, message(pb::agent_message::Kind::Alert(alert.into()))).await?;
    }

    // Events are replayed from before the first inventory, so no change falls between.
    let mut events_since = now_unix_ms() / 1000 - 1;
    let mut events = Box::pin(engine.events(events_since));
    let mut events_retry: Option<Instant> = None;
    let mut beat = tokio::time::interval_at(Instant::now() + heartbeat, heartbeat);
    let mut resync = tokio::time::interval_at(Instant::now() + RESYNC, RESYNC);
    let mut schedule = InventorySchedule::new(Instant::now());
    // The inventory being taken; heartbeats go on meanwhile.
    let mut job: Option<JoinHandle<Result<Inventory, EngineError>>> = None;
    // When the certificate is due for renewal, and the renewal under way.
    let mut renew_timer = config.renewal.as_ref().and_then(|r| {
        let wait = due_in(&config.tls.cert, r.before, now_unix_ms() / 1000)?;
        if !wait.is_zero() {
            debug!(in_secs = wait.as_secs(), "Certificate renewal scheduled.");
        }
        Some(Instant::now() + wait)
    });
    let mut renewing: Option<JoinHandle<Result<ClientPem, RenewError>>> = None;
    loop {
        let start_at = schedule.next_start();
        tokio::select! {
            () = stopped(&mut shutdown) => {
                // Nothing more to say: close our side, and let the coordinator read what is
                // still on its way (the last result) and end the stream.
                drop(tx);
                let _ = tokio::time::timeout(DRAIN, async {
                    while let Ok(Some(_)) = inbound.message().await {}
                })
                .await;
                return Ok(None);
            }
            () = sleep_until(renew_timer) => {
                renew_timer = None;
                if let Some(renewal) = config.renewal.clone() {
                    info!(host = %config.host, "Certificate due for renewal; asking the coordinator for a new one.");
                    let (channel, host, tls) = (channel.clone(), config.host.clone(), config.tls.clone());
                    renewing = Some(tokio::spawn(async move {
                        renew(channel, &renewal, &host, &tls).await
                    }));
                }
            }
            renewed = join(&mut renewing) => {
                renewing = None;
                match renewed {
                    Ok(Ok(tls)) => {
                        info!(host = %config.host, "Certificate renewed and stored; reconnecting with it.");
                        drop(tx);
                        return Ok(Some(tls));
                    }
                    Ok(Err(error)) => {
                        warn!(%error, retry_secs = RENEW_RETRY.as_secs(), "Certificate renewal failed; the current certificate and key stay.");
                        renew_timer = Some(Instant::now() + RENEW_RETRY);
                    }
                    Err(error) => {
                        warn!(%error, "Certificate renewal task failed.");
                        renew_timer = Some(Instant::now() + RENEW_RETRY);
                    }
                }
            }
            _ = beat.tick() => {
                let hb = pb::Heartbeat { sent_at_unix_ms: now_unix_ms() };
                send(&tx, message(pb::agent_message::Kind::Heartbeat(hb))).await?;
            }
            _ = resync.tick() => schedule.due_now(Instant::now()),
            event = events.next(), if events_retry.is_none() => match event {
                Some(Ok(e)) => {
                    let action = e.action.as_deref().unwrap_or("");
                    if let Some(t) = e.time {
                        events_since = events_since.max(t);
                    }
                    if !changes_inventory(action) {
                        continue;
                    }
                    debug!(action, "Docker event.");
                    schedule.event(Instant::now());
                }
                Some(Err(error)) => {
                    warn!(%error, "Docker event stream broke; following it again shortly.");
                    events_retry = Some(Instant::now() + Duration::from_secs(1));
                }
                None => {
                    warn!("Docker event stream ended; following it again shortly.");
                    events_retry = Some(Instant::now() + Duration::from_secs(1));
                }
            },
            () = sleep_until(events_retry) => {
                events_retry = None;
                events = Box::pin(engine.events(events_since));
                // Whatever happened meanwhile is in the next inventory.
                schedule.due_now(Instant::now());
            }
            () = sleep_until(start_at) => {
                schedule.started();
                let engine = engine.clone();
                let commands = commands.clone();
                job = Some(tokio::spawn(async move { engine.inventory(|| commands.set_aside()).await }));
            }
            taken = join(&mut taking_over) => {
                taking_over = None;
                match taken {
                    Ok(Ok(Some(result))) => {
                        send(&tx, message(pb::agent_message::Kind::Result(result))).await?;
                    }
                    Ok(Ok(None)) => {}
                    Ok(Err(reason)) => return Err(SessionError::Defunct(reason)),
                    Err(error) => {
                        return Err(SessionError::Defunct(format!("the take-over failed: {error}")));
                    }
                }
            }
            taken = join(&mut job) => {
                job = None;
                schedule.finished(matches!(taken, Ok(Ok(_))), Instant::now());
                match taken {
                    Ok(Ok(inventory)) => {
                        debug!(containers = inventory.containers.len(), "Sending inventory.");
                        send(&tx, message(pb::agent_message::Kind::Inventory(inventory.into()))).await?;
                    }
                    Ok(Err(error)) => {
                        warn!(%error, "Cannot take the inventory; trying again shortly.");
                    }
                    Err(error) => {
                        warn!(%error, "Inventory task failed; trying again shortly.");
                    }
                }
            }
            m = inbound.message() => match m.map_err(SessionError::Stream)? {
                Some(pb::CoordinatorMessage { kind: Some(Kind::Refresh(_)) }) => {
                    schedule.due_now(Instant::now());
                }
                Some(pb::CoordinatorMessage { kind: Some(Kind::Recreate(command)) }) => {
                    let commands = commands.clone();
                    let tx = tx.clone();
                    tokio::spawn(async move { commands.recreate(command, tx).await });
                }
                Some(pb::CoordinatorMessage { kind: Some(Kind::UpdateService(command)) }) => {
                    let commands = commands.clone();
                    let tx = tx.clone();
                    tokio::spawn(async move { commands.update_service(command, tx).await });
                }
                Some(pb::CoordinatorMessage { kind: Some(Kind::HookVerdict(verdict)) }) => {
                    commands.verdicts.deliver(verdict);
                }
                Some(pb::CoordinatorMessage { kind: Some(Kind::PruneVolumes(command)) }) => {
                    let commands = commands.clone();
                    let tx = tx.clone();
                    tokio::spawn(async move { commands.prune_volumes(command, tx).await });
                }
                Some(other) => debug!(?other, "Ignoring a message this agent does not know."),
                None => return Ok(None),
            },
        }
    }
}

/// Completes once `shutdown` is true (holding no borrow of it afterwards).
pub(crate) async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    if shutdown.wait_for(|s| *s).await.is_err() {
        std::future::pending::<()>().await;
    }
}

async fn send(
    tx: &mpsc::Sender<pb::AgentMessage>,
    m: pb::AgentMessage,
) -> Result<(), SessionError> {
    tx.send(m)
        .await
        .map_err(|_| SessionError::Protocol("outbound stream closed"))
}

/// Waits for the running inventory task, or forever when none runs.
async fn join<T>(job: &mut Option<JoinHandle<T>>) -> Result<T, tokio::task::JoinError> {
    match job {
        Some(handle) => handle.await,
        None => std::future::pending().await,
    }
}

/// Whether a Docker event can change what the inventory reports. Healthcheck probes alone
/// produce `exec_*` events every interval; those (and terminal I/O) do not count.
fn changes_inventory(action: &str) -> bool {
    const IGNORED: [&str; 8] = [
        "attach",
        "detach",
        "resize",
        "top",
        "copy",
        "export",
        "archive-path",
        "extract-to-dir",
    ];
    !action.starts_with("exec_") && !IGNORED.contains(&action)
}

/// Sleeps until `at`, or forever when there is nothing to wait for.
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_revoked_certificate_is_told_apart_from_other_failures() {
        let alert = SessionError::Connect(
            "transport error: received fatal alert: CertificateRevoked".into(),
        );
        assert!(alert.revoked());
        let forgotten = SessionError::Stream(tonic::Status::permission_denied(
            "this host's certificate was revoked by the coordinator",
        ));
        assert!(forgotten.revoked());
        assert!(!SessionError::Connect("connection refused".into()).revoked());
        assert!(!SessionError::Refused(tonic::Status::permission_denied("other host")).revoked());
    }

    #[test]
    fn healthcheck_probes_do_not_trigger_inventories() {
        for quiet in [
            "exec_create: test -f /version",
            "exec_start: sh",
            "exec_die",
            "attach",
            "resize",
        ] {
            assert!(!changes_inventory(quiet), "{quiet}");
        }
        for change in [
            "create",
            "start",
            "die",
            "destroy",
            "rename",
            "health_status: healthy",
            "pull",
            "tag",
            "untag",
            "delete",
        ] {
            assert!(changes_inventory(change), "{change}");
        }
    }
}

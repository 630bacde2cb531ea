//! `serve`: the coordinator's gRPC server behind mutual TLS, with the fleet view and store.

use crate::admin::args::Failure;
use crate::cli::args::ServeArgs;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use ouroboros_proto::v1::admin_server::AdminServer;
use ouroboros_proto::v1::agent_gateway_server::AgentGatewayServer;
use ouroboros_proto::v1::enrolment_server::EnrolmentServer;
use ouroboros_shared::pki::{self, PkiDir, PkiError, Role};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::admin::api::AdminApi;
use crate::detect::Selection;
use crate::detect::registry::{RegistryClient, RegistryConfig};
use crate::fleet::Fleet;
use crate::fleet::certs::DenyList;
use crate::fleet::store::{RedbStore, StoreError};
use crate::plan::schedule::Schedule;
use crate::run::cycle::Cycle;
use crate::server::dispatch::Dispatcher;
use crate::server::enrol::{Enrolment, EnrolmentApi};
use crate::server::gateway::Gateway;
use crate::server::tls::RevocationCheck;
use crate::server::tls::{incoming, require_role};
use crate::telemetry::counters::Counters;
use crate::telemetry::metrics::{METRICS_SETTING, Metrics, store_counters};

mod background;
mod enrolment;
mod once;

use background::{scheduled_cycles, watch_agents};
use once::serve_once;

/// Longest an `update` waits for the agent's result (pull, stop, health gate included).
const UPDATE_TIMEOUT: Duration = Duration::from_secs(900);
/// How often heartbeat times (and changed counters) are queued for the store.
const FLUSH_INTERVAL: Duration = Duration::from_secs(10);
/// The largest message an agent may send (its inventory).
const MAX_AGENT_MESSAGE: usize = 64 * 1024 * 1024;

/// Validated settings of `serve`.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub data_dir: PathBuf,
    pub pki: PkiDir,
    pub heartbeat: Duration,
    pub missed_heartbeats: u32,
    /// The registry client's settings; its credentials also go to agents with each pull,
    /// those of the image's registry only.
    pub registry: RegistryConfig,
    /// Which containers are watched.
    pub selection: Selection,
    /// Remove old images after successful updates (CLEANUP).
    pub cleanup: bool,
    /// Remove unused anonymous volumes after each cycle (CLEANUP_UNUSED_VOLUMES).
    pub cleanup_volumes: bool,
    /// `serve --run-once`: the longest wait for the fleet's agents before the one cycle.
    pub run_once: Option<Duration>,
    /// How updates roll out.
    pub rollout: crate::plan::rollout::Policy,
    /// How long outcomes are kept.
    pub history_retention: Duration,
    /// Where `/metrics`, `/healthz` and `/readyz` are served (none: not served).
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// Per-container update series (`ouroboros_container_updates_total`).
    pub metrics_per_container: bool,
    /// `DATA_EXPORT=influxdb`: where the figures go after every cycle.
    pub influx: Option<crate::telemetry::export::InfluxConfig>,
    /// Where notifications go.
    pub notifiers: crate::notify::Notifiers,
    /// Notify at startup.
    pub startup_notification: bool,
    /// How long an agent must be away before "agent lost" is notified.
    pub agent_lost_after: Duration,
    /// When scheduled cycles run.
    pub schedule: Schedule,
    /// Scheduled cycles only detect and report (DRY_RUN, MONITOR_ONLY).
    pub detect_only: bool,
    /// MONITOR_ONLY (without DRY_RUN): new images fire `notify_update` rather than `dry_run_update`.
    pub monitor_only: bool,
    /// Operators' scripts at the hook points (`--hooks-dir`).
    pub hooks: crate::hooks::Hooks,
}

impl ServeConfig {
    /// The defaults: every container watched, cycles every 300 s, no credentials.
    pub fn new(data_dir: PathBuf, pki: PkiDir) -> Self {
        Self {
            data_dir,
            pki,
            heartbeat: Duration::from_secs(u64::from(
                ouroboros_shared::names::HEARTBEAT_INTERVAL_SECS,
            )),
            missed_heartbeats: ouroboros_shared::names::HEARTBEAT_MISSES_ALLOWED,
            registry: RegistryConfig::default(),
            selection: Selection::default(),
            cleanup: false,
            cleanup_volumes: false,
            run_once: None,
            rollout: crate::plan::rollout::Policy::default(),
            history_retention: Duration::from_secs(90 * 24 * 3600),
            metrics_listen: None,
            metrics_per_container: true,
            influx: None,
            notifiers: crate::notify::Notifiers::default(),
            startup_notification: false,
            agent_lost_after: Duration::from_secs(60),
            schedule: Schedule::Interval(crate::plan::schedule::DEFAULT_INTERVAL),
            detect_only: false,
            monitor_only: false,
            hooks: crate::hooks::Hooks::none(),
        }
    }
}

/// Why the server could not run.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(
        "--pki-dir {dir}: {source} (create it with `ouroboros-coordinator pki init --dir {dir}`)"
    )]
    Pki { dir: String, source: PkiError },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0}")]
    Registry(String),
    #[error("--prometheus-addr/--prometheus-port {addr}: cannot listen: {source}")]
    Metrics {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot register the metrics: {0}")]
    MetricFamilies(#[source] prometheus::Error),
    #[error("gRPC server failed: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("--maintenance-windows: {0}")]
    Windows(String),
}

impl ServeError {
    /// Whether this is the operator's configuration (exit 64) rather than a runtime failure.
    pub fn is_config(&self) -> bool {
        matches!(
            self,
            Self::Pki { .. }
                | Self::Metrics { .. }
                | Self::Windows(_)
                | Self::Store(StoreError::Locked(_) | StoreError::DataDir { .. })
        )
    }
}

/// Everything `serve` opens before it accepts connections: checked first, so that bad
/// configuration fails before anything listens.
pub struct Prepared {
    config: ServeConfig,
    enrolment: Arc<Enrolment>,
    tls: Arc<rustls::ServerConfig>,
    fleet: Arc<Fleet>,
    commands: Arc<Dispatcher>,
    cycle: Arc<Cycle>,
    metrics: Metrics,
    monitoring: Option<std::net::TcpListener>,
}

impl Prepared {
    /// The fleet view the server will keep.
    pub fn fleet(&self) -> Arc<Fleet> {
        self.fleet.clone()
    }

    /// The check cycle the server runs (schedule, `check`), for a run-once caller.
    pub fn cycle(&self) -> Arc<Cycle> {
        self.cycle.clone()
    }

    /// The server's figures (what `/metrics` serves).
    pub fn metrics(&self) -> Metrics {
        self.metrics.clone()
    }
}

/// Loads the PKI, opens the store and makes the metrics registry, counters restored.
pub fn prepare(mut config: ServeConfig) -> Result<Prepared, ServeError> {
    let p = &config.pki;
    let denied = DenyList::default();
    let tls = pki::server_config_with(
        &p.ca_cert(),
        &p.coordinator_cert(),
        &p.coordinator_key(),
        |verifier| RevocationCheck::wrap(verifier, denied.clone()),
    )
    .map_err(|source| ServeError::Pki {
        dir: p.dir().display().to_string(),
        source,
    })?;
    let metrics = Metrics::new(config.metrics_per_container).map_err(ServeError::MetricFamilies)?;
    let registry = RegistryClient::new(config.registry.clone(), metrics.clone())
        .map_err(ServeError::Registry)?;
    let store = Arc::new(RedbStore::open(&config.data_dir)?);
    let fleet = Arc::new(Fleet::open(store.clone())?);
    let enrolment = Arc::new(enrolment::open(&config.pki, store, denied, fleet.clone())?);
    // Counters go on from where they were.
    if let Some(stored) = fleet.setting(METRICS_SETTING) {
        match serde_json::from_str::<Counters>(&stored) {
            Ok(counters) => metrics.restore(&counters),
            Err(e) => tracing::warn!(error = %e, "Stored counters unreadable; starting from zero."),
        }
    }
    // Every notifier counts its deliveries in these figures.
    config.notifiers = config.notifiers.with_metrics(metrics.clone());
    let commands = Arc::new(Dispatcher::new(config.registry.credentials.clone()));
    // Validated by the command line already; a failure here must not open every window.
    let windows = crate::plan::window::Windows::parse(&config.rollout.windows)
        .map_err(ServeError::Windows)?;
    let cycle = Arc::new(
        Cycle::new(
            fleet.clone(),
            commands.clone(),
            Arc::new(registry),
            config.selection.clone(),
            crate::run::cycle::Cleanup {
                images: config.cleanup,
                volumes: config.cleanup_volumes,
            },
            config.rollout.clone(),
            windows,
            metrics.clone(),
        )
        .with_hooks(
            Arc::new(config.hooks.clone().with_metrics(metrics.clone())),
            config.monitor_only,
        )
        .with_retention(config.history_retention),
    );
    let monitoring = match config.metrics_listen {
        Some(addr) => {
            let listener = std::net::TcpListener::bind(addr)
                .and_then(|l| l.set_nonblocking(true).map(|()| l))
                .map_err(|source| ServeError::Metrics { addr, source })?;
            let bound = listener.local_addr().unwrap_or(addr);
            tracing::info!(addr = %bound, "Metrics listening.");
            Some(listener)
        }
        None => None,
    };
    *cycle
        .runner
        .notifiers
        .lock()
        .unwrap_or_else(|p| p.into_inner()) = config.notifiers.clone();
    Ok(Prepared {
        config,
        enrolment,
        tls,
        fleet,
        commands,
        cycle,
        metrics,
        monitoring,
    })
}

/// Serves until `shutdown` completes, then lets agent streams end and stores what is pending.
pub async fn run(
    prepared: Prepared,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServeError> {
    let Prepared {
        config,
        enrolment,
        tls,
        fleet,
        commands,
        cycle,
        metrics,
        monitoring,
    } = prepared;
    let (stop_tx, stop_rx) = watch::channel(false);
    let exporting = match config
        .influx
        .clone()
        .map(|influx| crate::telemetry::export::Exporter::new(influx, metrics.clone()))
    {
        Some(Ok(exporter)) => Some(tokio::spawn(crate::telemetry::export::run(
            exporter,
            fleet.clone(),
            cycle.done.clone(),
            stop_rx.clone(),
        ))),
        Some(Err(e)) => {
            tracing::warn!(error = %e, "No InfluxDB export.");
            None
        }
        None => None,
    };
    if config.startup_notification && !config.notifiers.is_empty() {
        let hosts = fleet.hosts().len();
        config.notifiers.send(crate::notify::Message {
            event: "startup",
            kind: crate::notify::Kind::Info,
            title: "Ouroboros coordinator started".into(),
            body: format!(
                "Version {}; {hosts} host(s) known; {}.",
                env!("CARGO_PKG_VERSION"),
                config.schedule.describe()
            ),
        });
    }
    // Lost agents are logged whether or not anything is notified.
    let watching = tokio::spawn(watch_agents(
        fleet.clone(),
        config.notifiers.clone(),
        config.agent_lost_after,
        stop_rx.clone(),
    ));
    let monitoring = match monitoring.map(TcpListener::from_std) {
        Some(Ok(listener)) => Some(tokio::spawn(crate::telemetry::http::serve(
            listener,
            fleet.clone(),
            metrics.clone(),
            stop_rx.clone(),
        ))),
        Some(Err(e)) => {
            tracing::warn!(error = %e, "Cannot serve metrics.");
            None
        }
        None => None,
    };

    let flusher = {
        let fleet = fleet.clone();
        let metrics = metrics.clone();
        let mut stop = stop_rx.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(FLUSH_INTERVAL);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = stop.wait_for(|s| *s) => return,
                }
                fleet.flush_last_seen();
                store_counters(&fleet, &metrics);
            }
        })
    };

    // A run-once server runs no scheduled cycles: its caller runs the one cycle.
    let scheduler = tokio::spawn(scheduled_cycles(
        cycle.clone(),
        config.schedule.clone(),
        config.detect_only,
        stop_rx.clone(),
    ));
    if config.run_once.is_some() {
        scheduler.abort();
    }
    let gateway = tonic::service::interceptor::InterceptedService::new(
        AgentGatewayServer::new(
            Gateway::new(
                fleet.clone(),
                commands.clone(),
                config.heartbeat,
                config.missed_heartbeats,
                stop_rx,
                config.notifiers.clone(),
            )
            .with_enrolment(enrolment.clone())
            .with_hooks(cycle.hooks()),
        )
        // A dense host's inventory (thousands of labelled containers) outgrows tonic's 4 MiB.
        .max_decoding_message_size(MAX_AGENT_MESSAGE),
        require_role(Role::Agent, "AgentGateway"),
    );
    let admin = AdminServer::with_interceptor(
        AdminApi::new(
            fleet.clone(),
            commands.clone(),
            UPDATE_TIMEOUT,
            cycle.clone(),
        )
        .with_enrolment(enrolment.clone()),
        require_role(Role::Admin, "Admin"),
    );
    // The only service without `require_role`: a client without a certificate reaches this
    // and nothing else (see `server::tls`).
    let enrol = EnrolmentServer::new(EnrolmentApi::new(enrolment));
    let result = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(20)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
        .add_service(gateway)
        .add_service(admin)
        .add_service(enrol)
        .serve_with_incoming_shutdown(incoming(listener, tls), async move {
            shutdown.await;
            let _ = stop_tx.send(true);
        })
        .await;
    flusher.abort();
    scheduler.abort();
    if let Some(m) = monitoring {
        m.abort();
    }
    if let Some(e) = exporting {
        e.abort();
    }
    watching.abort();
    // Messages just made (a run-once cycle's "updates done") still go out.
    config.notifiers.drain(Duration::from_secs(35)).await;
    // Links have ended; store what is pending before returning.
    store_counters(&fleet, &metrics);
    let closing = fleet.clone();
    let _ = tokio::task::spawn_blocking(move || closing.close()).await;
    result.map_err(ServeError::from)
}

/// `serve`: the coordinator until SIGTERM, or one cycle with `--run-once`.
pub(crate) async fn serve_command(args: ServeArgs) -> Result<(), Failure> {
    let mut config = args
        .policy
        .into_config(args.data_dir, PkiDir::new(args.pki_dir))?;
    if args.run_once {
        config.run_once = Some(Duration::from_secs(args.run_once_wait));
        return serve_once(config, args.listen).await;
    }
    let (prepared, listener, _) = prepare_and_listen(config, args.listen).await?;
    run(prepared, listener, ouroboros_shared::shutdown::signal())
        .await
        .map_err(Failure::runtime)?;
    tracing::info!("Coordinator stopped.");
    Ok(())
}

/// Checks the PKI, opens the store and binds `listen`, in that order, so bad configuration
/// fails before anything listens. Logs the bound address (tests read it).
pub(crate) async fn prepare_and_listen(
    config: ServeConfig,
    listen: SocketAddr,
) -> Result<(Prepared, tokio::net::TcpListener, SocketAddr), Failure> {
    let prepared = prepare(config).map_err(|e| {
        if e.is_config() {
            Failure::usage(e)
        } else {
            Failure::runtime(e)
        }
    })?;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| Failure::usage(format!("--listen {listen}: cannot listen: {e}")))?;
    let addr = listener.local_addr().unwrap_or(listen);
    tracing::info!(addr = %addr, "Coordinator listening.");
    Ok((prepared, listener, addr))
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::Mutex;

    use ouroboros_shared::host::HostName;
    use ouroboros_shared::inventory::{Hello, HostMode};

    use super::*;

    /// Log lines written on this test's thread.
    #[derive(Clone, Default)]
    struct Logs(Arc<Mutex<Vec<u8>>>);

    impl Logs {
        fn lines(&self, parts: &[&str]) -> Vec<String> {
            String::from_utf8_lossy(&self.0.lock().unwrap())
                .lines()
                .filter(|l| parts.iter().all(|p| l.contains(p)))
                .map(str::to_owned)
                .collect()
        }
    }

    impl Write for Logs {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// Polls until a line with every one of `parts` was logged (10 s at most).
    async fn wait_for(logs: &Logs, parts: &[&str]) -> String {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(line) = logs.lines(parts).pop() {
                return line;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no log line with {parts:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test]
    async fn a_lost_agent_is_logged_at_warn_and_its_return_at_info() {
        let logs = Logs::default();
        let writer = logs.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .finish();
        let _guard = tracing::subscriber::set_default(subscriber);
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(RedbStore::open(dir.path()).unwrap());
        let fleet = Arc::new(Fleet::open(store).unwrap());
        let (stop_tx, stop_rx) = watch::channel(false);
        let after = Duration::from_millis(500);
        let watching = tokio::spawn(watch_agents(
            fleet.clone(),
            crate::notify::Notifiers::default(),
            after,
            stop_rx,
        ));
        let host = HostName::parse("web-01").unwrap();
        let hello = Hello {
            host: host.to_string(),
            agent_version: "0.1.0".into(),
            engine: Default::default(),
            mode: HostMode::Standalone,
            container_id: None,
            agent_image: None,
            handover_op_id: None,
        };
        let peer = "127.0.0.1:1".parse().unwrap();
        let (session, _) = fleet.connect(&host, &hello, peer, 0);
        // Seen connected by a tick (200 ms apart), then away.
        tokio::time::sleep(Duration::from_millis(400)).await;
        let away = tokio::time::Instant::now();
        drop(session);
        let lost = wait_for(&logs, &["Agent lost"]).await;
        assert!(away.elapsed() >= after, "logged before {after:?}");
        assert!(
            lost.contains("WARN") && lost.contains("host=web-01"),
            "{lost}"
        );
        let (_session, _) = fleet.connect(&host, &hello, peer, 0);
        let back = wait_for(&logs, &["Agent back"]).await;
        assert!(
            back.contains("INFO") && back.contains("host=web-01"),
            "{back}"
        );
        // Each said once, not at every tick.
        assert_eq!(logs.lines(&["Agent lost"]).len(), 1);
        let _ = stop_tx.send(true);
        watching.await.unwrap();
    }
}

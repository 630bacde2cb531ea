//! `up`: the all-in-one mode for a single host. The coordinator and an agent for the local
//! Docker engine in one process, the PKI created under the data dir on first start, listening
//! on this machine only by default. `--run-once` runs one full check cycle and exits: 0 when
//! every update succeeded, 1 otherwise.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use ouroboros_agent::AgentConfig;
use ouroboros_agent::engine::DockerEndpoint;
use ouroboros_agent::link::LinkConfig;
use ouroboros_proto::v1 as pb;
use ouroboros_shared::cli::parse_flag;
use ouroboros_shared::host::HostName;
use ouroboros_shared::names::*;
use ouroboros_shared::pki::{self, ClientPem, PkiDir};
use tokio::sync::watch;
use tracing::info;

use crate::admin::client as admin_client;
use crate::admin::output::OutputFormat;
use crate::cli::serve as server;
use crate::cli::serve::prepare_and_listen;
use crate::cli::{AdminArgs, Failure, PolicyArgs};

/// Name of this host when `--host-name` is not given.
const DEFAULT_HOST_NAME: &str = "local";
/// Longest `--run-once` waits for the embedded agent's first inventory.
const FIRST_INVENTORY: Duration = Duration::from_secs(60);

#[derive(Debug, Args)]
pub struct UpArgs {
    /// Address to listen on for the admin CLI (and other agents).
    #[arg(long, env = ENV_LISTEN, default_value = DEFAULT_UP_LISTEN, value_name = "ADDR")]
    pub listen: SocketAddr,
    /// Directory for the store, the PKI (`DIR/pki`) and the agent's journal.
    #[arg(long, env = ENV_DATA_DIR, default_value = DEFAULT_DATA_DIR, value_name = "DIR")]
    pub data_dir: PathBuf,
    /// Docker engine: unix:///PATH (or tcp://, https:// with DOCKER_CERT_PATH).
    #[arg(long, env = ENV_DOCKER_HOST, default_value = DEFAULT_DOCKER_HOST, value_name = "URL")]
    pub docker_host: String,
    /// This host's name in the fleet view.
    #[arg(long, env = ENV_HOST_NAME, default_value = DEFAULT_HOST_NAME, value_name = "HOST", value_parser = |v: &str| HostName::parse(v).map_err(|e| e.to_string()))]
    pub host_name: HostName,
    /// Run one full check cycle (detect, update) and exit: 0 when every update succeeded.
    #[arg(long, env = ENV_RUN_ONCE, value_parser = parse_flag, default_value = "false", num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    pub run_once: bool,
    /// After SIGTERM: seconds the embedded agent's operation in flight gets to reach a safe
    /// point (finished past its health gate, else rolled back) before `up` exits anyway.
    #[arg(long, env = ENV_SHUTDOWN_TIMEOUT, default_value = "60", value_name = "SECS", value_parser = ouroboros_agent::cli::parse_shutdown_timeout)]
    pub shutdown_timeout: Duration,
    #[command(flatten)]
    pub policy: PolicyArgs,
}

pub async fn up(args: UpArgs) -> Result<(), Failure> {
    let pki = PkiDir::new(args.data_dir.join("pki"));
    // Every option is checked before anything is written under --data-dir.
    let docker = DockerEndpoint::new(&args.docker_host, false, None)
        .map_err(|e| Failure::usage(format!("--docker-host: {e}")))?;
    let config = args
        .policy
        .into_config(args.data_dir.join("coordinator"), pki.clone())?;
    if !pki.ca_cert().exists() {
        let mut sans = Vec::new();
        let ip = args.listen.ip();
        if !ip.is_unspecified() && !ip.is_loopback() {
            sans.push(ip.to_string());
        }
        pki::init(&pki, &sans).map_err(Failure::usage)?;
        info!(dir = %pki.dir().display(), "PKI created.");
    }
    let host = args.host_name;
    if !pki.agent_cert(&host).exists() {
        pki::issue_agent(&pki, &host, pki::CA_DAYS).map_err(Failure::usage)?;
    }
    let detect_only = config.detect_only;
    let (prepared, listener, addr) = prepare_and_listen(config, args.listen).await?;
    let ip = if addr.ip().is_unspecified() {
        "127.0.0.1".to_owned()
    } else {
        addr.ip().to_string()
    };
    let url = format!("https://{ip}:{}", addr.port());

    // The agent stops first, so that the answer of its operation in flight still reaches the
    // server; then the server.
    let (stop_tx, stop_rx) = watch::channel(false);
    let (stop_agent_tx, stop_agent_rx) = watch::channel(false);
    let stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let server = tokio::spawn(server::run(prepared, listener, stopped(stop_rx)));

    let agent_dir = args.data_dir.join("agent");
    std::fs::create_dir_all(&agent_dir)
        .map_err(|e| Failure::usage(format!("--data-dir {}: {e}", agent_dir.display())))?;
    let tls = ClientPem::read(
        &pki.ca_cert(),
        &pki.agent_cert(&host),
        &pki.agent_key(&host),
    )
    .map_err(Failure::usage)?;
    let agent_config = AgentConfig {
        link: LinkConfig {
            coordinator: url.clone(),
            tls,
            host: host.clone(),
            reconnect_initial: Duration::from_millis(200),
            reconnect_max: Duration::from_secs(5),
            // Not renewed over the link: `up` keeps its own PKI dir, where `pki issue` renews.
            renewal: None,
            container_id: None,
            agent_image: None,
        },
        docker,
        data_dir: agent_dir,
        crash: None,
        shutdown_timeout: args.shutdown_timeout,
        // The embedded agent shares the process with the coordinator: it never hands over.
        handover_timeout: None,
        // Its own container is recreated by an updater container (see `ouroboros_agent::updater`).
        updater: true,
    };
    let agent = tokio::spawn(ouroboros_agent::run(agent_config, stopped(stop_agent_rx)));

    let result = if args.run_once {
        let admin = AdminArgs {
            server: url,
            pki_dir: pki.dir().to_owned(),
            ca: None,
            cert: None,
            key: None,
            output: OutputFormat::Table,
        };
        match first_inventory(&admin, &host).await {
            Ok(()) => admin_client::check(&admin, detect_only).await,
            Err(e) => Err(e),
        }
    } else {
        // A second signal ends `up` at once (128 + SIGTERM); the agent's journal recovers.
        ouroboros_shared::shutdown::signal_then_force(143).await;
        Ok(())
    };
    let _ = stop_agent_tx.send(true);
    let _ = tokio::time::timeout(args.shutdown_timeout + Duration::from_secs(15), agent).await;
    let _ = stop_tx.send(true);
    match tokio::time::timeout(Duration::from_secs(40), server).await {
        Ok(Ok(Err(e))) => return Err(Failure::runtime(e)),
        Ok(Err(e)) => return Err(Failure::runtime(format!("coordinator task failed: {e}"))),
        _ => {}
    }
    result
}

/// Waits until the embedded agent is connected and has reported an inventory.
async fn first_inventory(admin: &AdminArgs, host: &HostName) -> Result<(), Failure> {
    let deadline = tokio::time::Instant::now() + FIRST_INVENTORY;
    let mut client = admin_client::connect(admin).await?;
    loop {
        let hosts = client
            .list_hosts(pb::ListHostsRequest {})
            .await
            .map_err(|e| Failure::runtime(format!("cannot list hosts: {}", e.message())))?
            .into_inner()
            .hosts;
        if hosts
            .iter()
            .any(|h| h.host == host.as_str() && h.connected && h.reported)
        {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(Failure::runtime(format!(
                "the local agent did not report within {FIRST_INVENTORY:?}; is the Docker engine reachable?"
            )));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

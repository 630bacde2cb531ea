//! The `ouroboros-coordinator` command line: flags, their environment-variable fallbacks and
//! defaults (flag > environment > default), and the dispatch to each command.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use ouroboros_shared::cli::{parse_flag, parse_https_url, parse_list};
use ouroboros_shared::host::HostName;
use ouroboros_shared::names::*;
use ouroboros_shared::pki::{self, DEFAULT_LEAF_DAYS, PkiDir};
use ouroboros_shared::telemetry::parse_filter;

use crate::admin_client;
use crate::credentials::Credentials;
use crate::detect::Selection;
use crate::output::OutputFormat;
use crate::registry::RegistryConfig;
use crate::schedule::Schedule;
use crate::server::{self, ServeConfig};

#[derive(Debug, Parser)]
#[command(
    name = "ouroboros-coordinator",
    version,
    about = "Ouroboros coordinator: keeps a fleet of Docker hosts on the newest images.",
    propagate_version = true
)]
pub struct Cli {
    /// Log level: trace, debug, info, warn, error (or a tracing filter).
    #[arg(long, global = true, env = ENV_LOG_LEVEL, default_value = "info", value_parser = parse_filter)]
    pub log_level: String,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create the fleet's certificate authority and certificates.
    #[command(subcommand)]
    Pki(PkiCommand),
    /// Run the coordinator.
    Serve(ServeArgs),
    /// All in one for a single host: the coordinator and an agent for the local engine, PKI
    /// created under --data-dir on first start.
    Up(crate::up::UpArgs),
    /// List the hosts of the fleet.
    Hosts(AdminArgs),
    /// List the containers of the fleet.
    Containers(ContainersArgs),
    /// Recreate one container now on the current image of its tag (or on --image), with the
    /// safe sequence: health-gated, rolled back on failure.
    Update(UpdateArgs),
    /// Run one check cycle now: probe every watched container's tag and update what moved.
    Check(CheckArgs),
    /// What would update now, and what is skipped and why (a dry-run check).
    Updates(AdminArgs),
    /// Stored rollouts, newest first; with an id, that rollout's targets.
    Rollouts(RolloutsArgs),
    /// Outcomes of past updates, oldest first.
    History(HistoryArgs),
    /// Let updates run again after `pause`, and a paused rollout go on (the newest paused one
    /// without an id).
    Resume(RolloutsArgs),
    /// The fleet at a glance: hosts up and down, containers, pending updates, rollouts,
    /// cycles, paused or not.
    Status(AdminArgs),
    /// Stop starting updates (cycles detect only; a running rollout pauses) until `resume`.
    Pause(PauseArgs),
    /// One rollout's targets; with --watch, their transitions as they happen, exiting 0 when
    /// the rollout completes and 1 when it fails or pauses. `rollout cancel ID` ends it.
    Rollout(RolloutArgs),
    /// Try again the updates that failed: forget the known-bad digests of these containers
    /// (all without --host/--container) and run a cycle over them.
    Retry(RetryArgs),
    /// Print a shell completion script.
    Completions {
        /// The shell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

#[derive(Debug, Args)]
pub struct PauseArgs {
    #[command(flatten)]
    pub admin: AdminArgs,
    /// Why (shown by `status` and in paused rollouts).
    #[arg(long, value_name = "TEXT")]
    pub reason: Option<String>,
}

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct RolloutArgs {
    #[command(subcommand)]
    pub action: Option<RolloutAction>,
    #[command(flatten)]
    pub admin: AdminArgs,
    /// The rollout id (`r-…`).
    #[arg(value_name = "ID", required = true)]
    pub id: Option<String>,
    /// Follow the rollout until it ends.
    #[arg(long)]
    pub watch: bool,
}

#[derive(Debug, Subcommand)]
pub enum RolloutAction {
    /// End a rollout: its targets not started are cancelled, work in flight finishes; with
    /// --revert, the targets it updated go back to their previous digest.
    Cancel(CancelArgs),
}

#[derive(Debug, Args)]
pub struct CancelArgs {
    #[command(flatten)]
    pub admin: AdminArgs,
    /// The rollout id (`r-…`).
    #[arg(value_name = "ID", value_parser = parse_rollout_id)]
    pub id: String,
    /// Also send the targets it updated back to their previous digest.
    #[arg(long)]
    pub revert: bool,
    /// Why (shown in the rollout and the notification).
    #[arg(long, value_name = "TEXT")]
    pub reason: Option<String>,
}

#[derive(Debug, Args)]
pub struct RetryArgs {
    #[command(flatten)]
    pub admin: AdminArgs,
    /// Only this host's containers.
    #[arg(long, value_name = "HOST", value_parser = parse_host)]
    pub host: Option<HostName>,
    /// Only containers of this name.
    #[arg(long, value_name = "NAME", value_parser = parse_container)]
    pub container: Option<String>,
}

fn parse_rollout_id(value: &str) -> Result<String, String> {
    let ok = value.len() <= 64
        && value.starts_with("r-")
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-');
    if ok {
        Ok(value.to_owned())
    } else {
        Err("a rollout id like r-1764412800000-0 (see `rollouts`)".into())
    }
}

#[derive(Debug, Args)]
pub struct RolloutsArgs {
    #[command(flatten)]
    pub admin: AdminArgs,
    /// A rollout id (`r-…`).
    #[arg(value_name = "ID")]
    pub id: Option<String>,
}

#[derive(Debug, Args)]
pub struct HistoryArgs {
    #[command(flatten)]
    pub admin: AdminArgs,
    /// Only this host's outcomes.
    #[arg(long, value_name = "HOST", value_parser = parse_host)]
    pub host: Option<HostName>,
    /// Only this container's outcomes.
    #[arg(long, value_name = "NAME", value_parser = parse_container)]
    pub container: Option<String>,
    /// Only outcomes of the last DURATION (`90s`, `30m`, `12h`, `7d`).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub since: Option<Duration>,
}

fn parse_duration(value: &str) -> Result<Duration, String> {
    let value = value.trim();
    let (number, unit) = value.split_at(
        value
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(value.len()),
    );
    let bad = || "not a duration like 90s, 30m, 12h or 7d".to_owned();
    let n: u64 = number.parse().map_err(|_| bad())?;
    let unit = match unit {
        "s" | "" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(bad()),
    };
    n.checked_mul(unit)
        .map(Duration::from_secs)
        .ok_or_else(|| "too long a duration".to_owned())
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    #[command(flatten)]
    pub admin: AdminArgs,
    /// Detect and show only; nothing is pulled or changed.
    #[arg(long)]
    pub dry_run: bool,
}

#[derive(Debug, Subcommand)]
pub enum PkiCommand {
    /// Write a new CA, the coordinator's server certificate and the CLI's client certificate.
    Init {
        /// Directory to write to (created with mode 0700).
        #[arg(long, env = ENV_PKI_DIR, default_value = DEFAULT_PKI_DIR)]
        dir: PathBuf,
        /// Extra DNS name or IP address of the coordinator for its server certificate
        /// (`localhost` and `127.0.0.1` are always included). Repeatable.
        #[arg(long = "san", value_name = "NAME")]
        sans: Vec<String>,
    },
    /// Write a client certificate for one host's agent, signed by the CA in --dir.
    Issue {
        /// Directory made by `pki init`.
        #[arg(long, env = ENV_PKI_DIR, default_value = DEFAULT_PKI_DIR)]
        dir: PathBuf,
        /// The host's name; the certificate's subject alternative name, the agent's identity.
        #[arg(long, value_name = "HOST", value_parser = parse_host)]
        agent: HostName,
        /// Validity in days.
        #[arg(long, default_value_t = DEFAULT_LEAF_DAYS, value_parser = clap::value_parser!(u32).range(1..=3650))]
        days: u32,
    },
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on for agents and the admin CLI.
    #[arg(long, env = ENV_LISTEN, default_value = DEFAULT_LISTEN, value_name = "ADDR")]
    pub listen: SocketAddr,
    /// Directory of the embedded store.
    #[arg(long, env = ENV_DATA_DIR, default_value = DEFAULT_DATA_DIR, value_name = "DIR")]
    pub data_dir: PathBuf,
    /// Directory made by `pki init`.
    #[arg(long, env = ENV_PKI_DIR, default_value = DEFAULT_PKI_DIR, value_name = "DIR")]
    pub pki_dir: PathBuf,
    /// Run one check cycle once the fleet's agents have reported, print it and exit: 0 when
    /// every update succeeded and every known host reported, 1 otherwise.
    #[arg(long, env = ENV_RUN_ONCE, value_parser = parse_flag, default_value = "false", num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    pub run_once: bool,
    /// With --run-once: the longest wait for every host the store knows to connect and
    /// report; the cycle then runs with those that did.
    #[arg(long, env = ENV_RUN_ONCE_WAIT, default_value_t = 60, value_name = "SECONDS", value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub run_once_wait: u64,
    #[command(flatten)]
    pub policy: PolicyArgs,
}

/// Longest value of the policy's waits and deadlines in seconds (`--canary-wait`,
/// `--batch-delay`, `--min-healthy-time`, `--healthy-deadline`, `--progress-deadline`,
/// `--agent-lost-after`): 30 days. Longer ones are typos, and would overflow the rollout's
/// millisecond clock.
pub const MAX_WAIT_SECS: u64 = 30 * 24 * 3600;

/// What the coordinator checks, when, and how (shared by `serve` and `up`).
#[derive(Debug, Args)]
pub struct PolicyArgs {
    /// Seconds between check cycles (at most 30 days).
    #[arg(long, env = ENV_INTERVAL, default_value_t = 300, value_name = "SECONDS", value_parser = clap::value_parser!(u64).range(1..=crate::schedule::MAX_INTERVAL_SECS))]
    pub interval: u64,
    /// Cron schedule of check cycles, 5 fields (or 6 with seconds first); wins over --interval.
    #[arg(long, env = ENV_CRON, value_name = "EXPR")]
    pub cron: Option<String>,
    /// Scheduled cycles detect and show only; nothing is pulled or changed.
    #[arg(long, env = ENV_DRY_RUN, value_parser = parse_flag, default_value = "false", num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    pub dry_run: bool,
    /// Scheduled cycles detect and report only; never pull or change.
    #[arg(long, env = ENV_MONITOR_ONLY, value_parser = parse_flag, default_value = "false", num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    pub monitor_only: bool,
    /// Only these containers (names, or HOST/NAME for one host; comma-separated).
    #[arg(long, env = ENV_MONITOR, value_name = "NAMES", value_parser = parse_names, default_value = "")]
    pub monitor: Names,
    /// Never these containers (same forms).
    #[arg(long, env = ENV_IGNORE, value_name = "NAMES", value_parser = parse_names, default_value = "")]
    pub ignore: Names,
    /// Only containers labelled com.ouroboros.enable=true (or Watchtower's enable label).
    #[arg(long, env = ENV_LABEL_ENABLE, value_parser = parse_flag, default_value = "false", num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    pub label_enable: bool,
    /// Only labelled containers; MONITOR and IGNORE are not used.
    #[arg(long, env = ENV_LABELS_ONLY, value_parser = parse_flag, default_value = "false", num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    pub labels_only: bool,
    /// Update Ouroboros' own containers too.
    #[arg(long, env = ENV_SELF_UPDATE, value_parser = parse_flag, default_value = "false", num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    pub self_update: bool,
    /// Registry user for probes and pulls (with --repo-pass).
    #[arg(long, env = ENV_REPO_USER, value_name = "USER", requires = "repo_pass")]
    pub repo_user: Option<String>,
    /// Registry password for probes and pulls (with --repo-user). Never logged.
    #[arg(long, env = ENV_REPO_PASS, value_name = "PASSWORD", requires = "repo_user", hide_env_values = true)]
    pub repo_pass: Option<String>,
    /// Docker CLI config (a directory holding config.json, or the file): per-registry
    /// credentials from `auths`, `credHelpers` and `credsStore`; wins over --repo-user.
    #[arg(long, env = ENV_DOCKER_CONFIG, value_name = "PATH")]
    pub docker_config: Option<PathBuf>,
    /// Registries (HOST[:PORT], comma-separated) spoken to over plain HTTP; loopback
    /// registries always are.
    #[arg(long, env = ENV_INSECURE_REGISTRIES, value_name = "REGISTRIES", value_parser = parse_registries, default_value = "")]
    pub insecure_registries: Registries,
    /// Extra CA certificates (PEM) trusted for registries, besides the system's.
    #[arg(long, env = ENV_REGISTRY_CA, value_name = "FILE")]
    pub registry_ca: Option<PathBuf>,
    /// Probe each repository's `latest` and update containers to it, whatever their tag.
    #[arg(long, env = ENV_LATEST_ONLY, value_parser = parse_flag, default_value = "false", num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    pub latest_only: bool,
    /// Remove the old image after a successful update when no other container or tag uses it.
    #[arg(long, env = ENV_CLEANUP, value_parser = parse_flag, default_value = "false", num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    pub cleanup: bool,
    /// After each cycle, remove anonymous volumes no container uses (named volumes are kept).
    #[arg(long, env = ENV_CLEANUP_UNUSED_VOLUMES, value_parser = parse_flag, default_value = "false", num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    pub cleanup_unused_volumes: bool,
    /// Hosts updating at once in a rollout; 0: no limit.
    #[arg(long, env = ENV_MAX_HOSTS_IN_FLIGHT, default_value_t = 0, value_name = "N")]
    pub max_hosts_in_flight: u32,
    /// Canary hosts, updated first: host names (comma-separated) or a count.
    #[arg(long, env = ENV_CANARY_HOSTS, value_name = "HOSTS|N", value_parser = parse_canary, default_value = "")]
    pub canary_hosts: CanaryArg,
    /// Seconds the canary hosts must stay healthy before the other hosts start.
    #[arg(long, env = ENV_CANARY_WAIT, default_value_t = 60, value_name = "SECONDS", value_parser = clap::value_parser!(u64).range(0..=MAX_WAIT_SECS))]
    pub canary_wait: u64,
    /// Seconds before a freed host slot takes the next host.
    #[arg(long, env = ENV_BATCH_DELAY, default_value_t = 0, value_name = "SECONDS", value_parser = clap::value_parser!(u64).range(0..=MAX_WAIT_SECS))]
    pub batch_delay: u64,
    /// Seconds a new container must be healthy (or, without a healthcheck, running) to count
    /// as updated [default: 0, the agent's own: 10 s running without a healthcheck].
    #[arg(long, env = ENV_MIN_HEALTHY_TIME, default_value_t = 0, value_name = "SECONDS", value_parser = clap::value_parser!(u64).range(0..=MAX_WAIT_SECS))]
    pub min_healthy_time: u64,
    /// Longest wait in seconds for a new container to become healthy [default: 0, the
    /// agent's own: 120 s].
    #[arg(long, env = ENV_HEALTHY_DEADLINE, default_value_t = 0, value_name = "SECONDS", value_parser = clap::value_parser!(u64).range(0..=MAX_WAIT_SECS))]
    pub healthy_deadline: u64,
    /// Longest time in seconds from a command to its agent's answer; then the target fails.
    #[arg(long, env = ENV_PROGRESS_DEADLINE, default_value_t = 900, value_name = "SECONDS", value_parser = clap::value_parser!(u64).range(1..=MAX_WAIT_SECS))]
    pub progress_deadline: u64,
    /// When too many targets fail: pause (nothing new starts), rollback (updated targets go
    /// back to their previous digest) or continue.
    #[arg(long, env = ENV_FAILURE_ACTION, default_value = "pause", value_name = "ACTION")]
    pub failure_action: crate::rollout::FailureAction,
    /// Failures tolerated before the failure action, as a share of the targets (0 to 1).
    #[arg(long, env = ENV_MAX_FAILURE_RATIO, default_value_t = 0.0, value_name = "RATIO", value_parser = parse_ratio)]
    pub max_failure_ratio: f64,
    /// Maintenance windows, `;`-separated, e.g. `Sat 02:00-04:00; Mon-Fri 22:00-06:00
    /// Europe/Berlin`: new work starts only inside one (UTC unless a zone is given).
    #[arg(long, env = ENV_MAINTENANCE_WINDOWS, value_name = "WINDOWS", value_parser = parse_windows, default_value = "")]
    pub maintenance_windows: crate::window::Windows,
    /// Address of the metrics endpoint (`/metrics`, `/healthz`, `/readyz`).
    #[arg(long, env = ENV_PROMETHEUS_ADDR, default_value = "0.0.0.0", value_name = "IP")]
    pub prometheus_addr: std::net::IpAddr,
    /// Port of the metrics endpoint; served only when given.
    #[arg(long, env = ENV_PROMETHEUS_PORT, value_name = "PORT")]
    pub prometheus_port: Option<u16>,
    /// Per-container update counters (ouroboros_container_updates_total); off for large
    /// fleets.
    #[arg(long, env = ENV_METRICS_PER_CONTAINER, value_parser = parse_flag, default_value = "true", num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    pub metrics_per_container: bool,
    /// `influxdb`: write the figures to InfluxDB after every cycle.
    #[arg(long, env = ENV_DATA_EXPORT, value_name = "KIND", value_parser = ["influxdb"])]
    pub data_export: Option<String>,
    /// InfluxDB: `http://HOST` or `https://HOST`.
    #[arg(long, env = ENV_INFLUX_URL, default_value = "http://localhost", value_name = "URL")]
    pub influx_url: String,
    /// InfluxDB: port.
    #[arg(long, env = ENV_INFLUX_PORT, default_value_t = 8086, value_name = "PORT")]
    pub influx_port: u16,
    /// InfluxDB 1.x: user.
    #[arg(long, env = ENV_INFLUX_USERNAME, value_name = "USER")]
    pub influx_username: Option<String>,
    /// InfluxDB 1.x: password. Never logged.
    #[arg(long, env = ENV_INFLUX_PASSWORD, value_name = "PASSWORD", hide_env_values = true)]
    pub influx_password: Option<String>,
    /// InfluxDB 1.x: database (2.x: the bucket unless --influx-bucket).
    #[arg(long, env = ENV_INFLUX_DATABASE, default_value = "ouroboros", value_name = "NAME")]
    pub influx_database: String,
    /// InfluxDB 2.x: organisation.
    #[arg(long, env = ENV_INFLUX_ORG, value_name = "ORG")]
    pub influx_org: Option<String>,
    /// InfluxDB 2.x: bucket.
    #[arg(long, env = ENV_INFLUX_BUCKET, value_name = "BUCKET")]
    pub influx_bucket: Option<String>,
    /// InfluxDB 2.x: token (uses the 2.x write API). Never logged.
    #[arg(long, env = ENV_INFLUX_TOKEN, value_name = "TOKEN", hide_env_values = true)]
    pub influx_token: Option<String>,
    /// Notification services as Apprise URLs (json://, discord://, slack://, tgram://,
    /// mailto://, ntfy://, gotify://, msteams://, pushover://, apprise:// and their TLS forms),
    /// separated by spaces. Their secrets are never logged.
    #[arg(long, env = ENV_NOTIFIERS, value_name = "URLS", default_value = "", hide_env_values = true)]
    pub notifiers: String,
    /// No notification at startup.
    #[arg(long, env = ENV_SKIP_STARTUP_NOTIFICATIONS, value_parser = parse_flag, default_value = "false", num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    pub skip_startup_notifications: bool,
    /// A template file for notification texts: {event}, {kind}, {title} and {message} are
    /// replaced.
    #[arg(long, env = ENV_NOTIFICATION_TEMPLATE, value_name = "FILE")]
    pub notification_template: Option<PathBuf>,
    /// Other API roots for notification services with fixed hosts, e.g. an egress proxy:
    /// `discord=URL,slack=URL,tgram=URL,pushover=URL,msteams=URL,ntfy=URL`.
    #[arg(long, env = ENV_NOTIFY_API, value_name = "ROOTS", default_value = "", value_parser = crate::notify::parse_api_roots)]
    pub notify_api: crate::notify::ApiRoots,
    /// Extra CA certificates (PEM) trusted for notifications over TLS (SMTP).
    #[arg(long, env = ENV_NOTIFY_CA, value_name = "FILE")]
    pub notify_ca: Option<PathBuf>,
    /// Seconds an agent must be away before "agent lost" is notified.
    #[arg(long, env = ENV_AGENT_LOST_AFTER, default_value_t = 60, value_name = "SECONDS", value_parser = clap::value_parser!(u64).range(1..=MAX_WAIT_SECS))]
    pub agent_lost_after: u64,
    /// Days of update history kept.
    #[arg(long, env = ENV_HISTORY_RETENTION, default_value_t = 90, value_name = "DAYS", value_parser = clap::value_parser!(u64).range(1..=36500))]
    pub history_retention: u64,
}

/// `--canary-hosts`: names or a count.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CanaryArg(pub crate::rollout::Canary);

fn parse_canary(value: &str) -> Result<CanaryArg, String> {
    use crate::rollout::Canary;
    let value = value.trim();
    if value.is_empty() {
        return Ok(CanaryArg(Canary::None));
    }
    // Digits only: a count, never a host name (one too large is refused, not read as a name).
    if value.bytes().all(|b| b.is_ascii_digit()) {
        let n = value
            .parse::<u32>()
            .map_err(|_| format!("a count of hosts is at most {}", u32::MAX))?;
        return Ok(CanaryArg(if n == 0 {
            Canary::None
        } else {
            Canary::Count(n)
        }));
    }
    let hosts = parse_list(value)?;
    for h in &hosts {
        parse_host(h)?;
    }
    Ok(CanaryArg(Canary::Hosts(hosts)))
}

fn parse_ratio(value: &str) -> Result<f64, String> {
    match value.trim().parse::<f64>() {
        Ok(r) if (0.0..=1.0).contains(&r) => Ok(r),
        _ => Err(format!("{value:?} is not a ratio from 0 to 1")),
    }
}

fn parse_windows(value: &str) -> Result<crate::window::Windows, String> {
    crate::window::Windows::parse(value)
}

fn secs_ms(seconds: u64) -> i64 {
    i64::try_from(seconds.saturating_mul(1000)).unwrap_or(i64::MAX)
}

/// Registry hosts (`host[:port]`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Registries(pub Vec<String>);

fn parse_registries(value: &str) -> Result<Registries, String> {
    let list = parse_list(value)?;
    for r in &list {
        let (host, port) = r.rsplit_once(':').unwrap_or((r, "1"));
        let host_ok = !host.is_empty()
            && host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'[' | b']'));
        if !host_ok || port.parse::<u16>().map_or(true, |p| p == 0) {
            return Err(format!("{r:?} is not a registry HOST[:PORT]"));
        }
    }
    Ok(Registries(list))
}

#[derive(Debug, Args)]
pub struct AdminArgs {
    /// Coordinator URL.
    #[arg(long, env = ENV_SERVER, default_value = DEFAULT_SERVER, value_name = "URL", value_parser = parse_https_url)]
    pub server: String,
    /// Directory made by `pki init`; the CLI certificate is read from there by default.
    #[arg(long, env = ENV_PKI_DIR, default_value = DEFAULT_PKI_DIR, value_name = "DIR")]
    pub pki_dir: PathBuf,
    /// CA certificate [default: PKI_DIR/ca.pem].
    #[arg(long, env = ENV_CA, value_name = "FILE")]
    pub ca: Option<PathBuf>,
    /// Client certificate [default: PKI_DIR/cli.pem].
    #[arg(long, env = ENV_CERT, value_name = "FILE")]
    pub cert: Option<PathBuf>,
    /// Client private key [default: PKI_DIR/cli-key.pem].
    #[arg(long, env = ENV_KEY, value_name = "FILE")]
    pub key: Option<PathBuf>,
    /// Output format.
    #[arg(long, short = 'o', value_enum, default_value = "table")]
    pub output: OutputFormat,
}

#[derive(Debug, Args)]
pub struct ContainersArgs {
    #[command(flatten)]
    pub admin: AdminArgs,
    /// Only this host's containers.
    #[arg(long, value_name = "HOST", value_parser = parse_host)]
    pub host: Option<HostName>,
}

#[derive(Debug, Args)]
pub struct UpdateArgs {
    #[command(flatten)]
    pub admin: AdminArgs,
    /// Only this host's containers; with --container, that one container now.
    #[arg(long, value_name = "HOST", value_parser = parse_host)]
    pub host: Option<HostName>,
    /// Only containers of this name or id (on every host, or on --host).
    #[arg(long, value_name = "NAME", value_parser = parse_container)]
    pub container: Option<String>,
    /// Image reference to recreate from [default: the container's configured reference];
    /// needs --host and --container.
    #[arg(long, value_name = "REF", value_parser = parse_image, requires_all = ["host", "container"])]
    pub image: Option<String>,
}

/// A list of container names (`NAME` or `HOST/NAME`), comma- or space-separated.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Names(pub Vec<String>);

fn parse_names(value: &str) -> Result<Names, String> {
    let names = parse_list(value)?;
    for name in &names {
        let (host, container) = match name.split_once('/') {
            Some((h, c)) => (Some(h), c),
            None => (None, name.as_str()),
        };
        if let Some(h) = host {
            parse_host(h)?;
        }
        parse_container(container).map_err(|e| format!("{name:?}: {e}"))?;
    }
    Ok(Names(names))
}

fn parse_container(value: &str) -> Result<String, String> {
    let ok = !value.is_empty()
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if ok {
        Ok(value.to_owned())
    } else {
        Err("a container name or id: letters, digits, '_', '.' and '-'".into())
    }
}

fn parse_image(value: &str) -> Result<String, String> {
    if value.is_empty() || value.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("not an image reference".into());
    }
    Ok(value.to_owned())
}

fn parse_host(value: &str) -> Result<HostName, String> {
    HostName::parse(value).map_err(|e| e.to_string())
}

/// Admin commands: exit code of a usage error (as clap and most CLIs use).
pub const EXIT_ADMIN_USAGE: i32 = 2;
/// Admin commands: exit code when the coordinator cannot be reached.
pub const EXIT_UNREACHABLE: i32 = 3;

impl Command {
    /// Whether this is an admin command (talks to a running coordinator): those exit 2 on a
    /// usage error, while `serve`, `up` and `pki` keep 64 (bad configuration).
    pub fn is_admin(&self) -> bool {
        !matches!(
            self,
            Self::Pki(_) | Self::Serve(_) | Self::Up(_) | Self::Completions { .. }
        )
    }
}

/// Whether the command line names an admin command (for errors clap reports before a command
/// is known).
pub fn admin_command_line(args: &[String]) -> bool {
    let mut rest = args.iter().skip(1);
    while let Some(arg) = rest.next() {
        if arg == "--log-level" {
            rest.next();
            continue;
        }
        if arg.starts_with('-') {
            continue;
        }
        return !matches!(
            arg.as_str(),
            "pki" | "serve" | "up" | "help" | "completions"
        );
    }
    false
}

/// A failure to report with its exit code: 64 for the operator's input, 1 otherwise.
#[derive(Debug)]
pub struct Failure {
    pub code: i32,
    pub message: String,
}

impl Failure {
    pub fn usage(message: impl std::fmt::Display) -> Self {
        Self {
            code: EXIT_USAGE,
            message: message.to_string(),
        }
    }
    pub fn runtime(message: impl std::fmt::Display) -> Self {
        Self {
            code: 1,
            message: message.to_string(),
        }
    }
    /// The coordinator cannot be reached (admin commands exit 3).
    pub fn unreachable(message: impl std::fmt::Display) -> Self {
        Self {
            code: EXIT_UNREACHABLE,
            message: message.to_string(),
        }
    }
}

/// Runs the parsed command.
pub async fn run(cli: Cli) -> Result<(), Failure> {
    match cli.command {
        Command::Pki(PkiCommand::Init { dir, sans }) => {
            let pki = PkiDir::new(dir);
            let written = pki::init(&pki, &sans).map_err(Failure::usage)?;
            for path in written {
                println!("wrote {}", path.display());
            }
            println!(
                "Next: issue one certificate per host with `ouroboros-coordinator pki issue --dir {} --agent HOST`.",
                pki.dir().display()
            );
            Ok(())
        }
        Command::Pki(PkiCommand::Issue { dir, agent, days }) => {
            let pki = PkiDir::new(dir);
            let written = pki::issue_agent(&pki, &agent, days).map_err(Failure::usage)?;
            for path in written {
                println!("wrote {}", path.display());
            }
            Ok(())
        }
        Command::Serve(args) => serve(args).await,
        Command::Up(args) => crate::up::up(args).await,
        Command::Hosts(args) => admin_client::hosts(&args).await,
        Command::Containers(args) => {
            admin_client::containers(&args.admin, args.host.as_ref()).await
        }
        Command::Update(args) => match (&args.host, &args.container) {
            // One container: recreated now, on its tag's current image or on --image.
            (Some(_), Some(_)) => admin_client::update(&args).await,
            // A host's or a name's containers: a cycle over them, updating what moved.
            (host, container) => {
                admin_client::check_scoped(
                    &args.admin,
                    false,
                    host.as_ref().map(HostName::as_str),
                    container.as_deref(),
                    admin_client::Scope::Update,
                )
                .await
            }
        },
        Command::Check(args) => admin_client::check(&args.admin, args.dry_run).await,
        Command::Updates(args) => admin_client::check(&args, true).await,
        Command::Rollouts(args) => admin_client::rollouts(&args.admin, args.id.as_deref()).await,
        Command::History(args) => {
            admin_client::history(
                &args.admin,
                args.host.as_ref().map(HostName::as_str),
                args.container.as_deref(),
                args.since,
            )
            .await
        }
        Command::Resume(args) => admin_client::resume(&args.admin, args.id.as_deref()).await,
        Command::Status(args) => admin_client::status(&args).await,
        Command::Pause(args) => admin_client::pause(&args.admin, args.reason.as_deref()).await,
        Command::Rollout(args) => match (args.action, args.id) {
            (Some(RolloutAction::Cancel(c)), _) => {
                admin_client::cancel(&c.admin, &c.id, c.revert, c.reason.as_deref()).await
            }
            (None, Some(id)) => admin_client::rollout(&args.admin, &id, args.watch).await,
            (None, None) => Err(Failure {
                code: EXIT_ADMIN_USAGE,
                message: "rollout: give a rollout id (see `rollouts`), or `rollout cancel ID`"
                    .into(),
            }),
        },
        Command::Retry(args) => {
            admin_client::check_scoped(
                &args.admin,
                false,
                args.host.as_ref().map(HostName::as_str),
                args.container.as_deref(),
                admin_client::Scope::Retry,
            )
            .await
        }
        Command::Completions { shell } => {
            use clap::CommandFactory;
            let mut command = Cli::command();
            clap_complete::generate(
                shell,
                &mut command,
                "ouroboros-coordinator",
                &mut std::io::stdout(),
            );
            Ok(())
        }
    }
}

impl PolicyArgs {
    /// The validated policy part of a [`ServeConfig`].
    pub(crate) fn into_config(
        self,
        data_dir: PathBuf,
        pki: PkiDir,
    ) -> Result<ServeConfig, Failure> {
        let args = self;
        let schedule =
            Schedule::from_options(args.interval, args.cron.as_deref(), chrono::Utc::now())
                .map_err(Failure::usage)?;
        crate::metrics::METRICS.set_per_container(args.metrics_per_container);
        let template = match &args.notification_template {
            Some(path) => Some(std::fs::read_to_string(path).map_err(|e| {
                Failure::usage(format!("--notification-template {}: {e}", path.display()))
            })?),
            None => None,
        };
        let urls: Vec<String> = args
            .notifiers
            .split_whitespace()
            .map(str::to_owned)
            .collect();
        let notify_ca = match &args.notify_ca {
            Some(path) => Some(
                std::fs::read(path)
                    .map_err(|e| Failure::usage(format!("--notify-ca {}: {e}", path.display())))?,
            ),
            None => None,
        };
        let notifiers = crate::notify::Notifiers::new(&urls, template, &args.notify_api, notify_ca)
            .map_err(|e| Failure::usage(format!("--notifiers: {e}")))?;
        let influx = match args.data_export.as_deref() {
            Some("influxdb") => {
                let config = crate::export::InfluxConfig {
                    url: args.influx_url.clone(),
                    port: args.influx_port,
                    database: args.influx_database.clone(),
                    username: args.influx_username.clone(),
                    password: args.influx_password.clone(),
                    org: args.influx_org.clone(),
                    bucket: args.influx_bucket.clone(),
                    token: args.influx_token.clone(),
                };
                config
                    .write_url()
                    .map_err(|e| Failure::usage(format!("--influx-url: {e}")))?;
                if config.token.is_some() && config.org.as_deref().is_none_or(str::is_empty) {
                    return Err(Failure::usage(
                        "--influx-org: InfluxDB 2.x (a token is given) needs the organisation",
                    ));
                }
                Some(config)
            }
            _ => None,
        };
        let repo = args.repo_user.zip(args.repo_pass);
        let credentials = Credentials::new(repo, args.docker_config.as_deref())
            .map_err(|e| Failure::usage(format!("--docker-config: {e}")))?;
        let extra_ca_pem = match &args.registry_ca {
            Some(path) => {
                let pem = std::fs::read(path).map_err(|e| {
                    Failure::usage(format!("--registry-ca {}: {e}", path.display()))
                })?;
                // Checked now, so a bad file stops startup rather than every probe.
                if !String::from_utf8_lossy(&pem).contains("-----BEGIN CERTIFICATE-----") {
                    return Err(Failure::usage(format!(
                        "--registry-ca {}: no PEM certificate in it",
                        path.display()
                    )));
                }
                crate::registry::RegistryClient::new(RegistryConfig {
                    extra_ca_pem: Some(pem.clone()),
                    ..RegistryConfig::default()
                })
                .map_err(|e| Failure::usage(format!("--registry-ca {}: {e}", path.display())))?;
                Some(pem)
            }
            None => None,
        };
        Ok(ServeConfig {
            data_dir,
            pki,
            heartbeat: Duration::from_secs(u64::from(HEARTBEAT_INTERVAL_SECS)),
            missed_heartbeats: HEARTBEAT_MISSES_ALLOWED,
            schedule,
            detect_only: args.dry_run || args.monitor_only,
            selection: Selection {
                monitor: args.monitor.0,
                ignore: args.ignore.0,
                label_enable: args.label_enable,
                labels_only: args.labels_only,
                self_update: args.self_update,
                latest_only: args.latest_only,
            },
            cleanup: args.cleanup,
            cleanup_volumes: args.cleanup_unused_volumes,
            registry: RegistryConfig {
                credentials: std::sync::Arc::new(credentials),
                insecure: args.insecure_registries.0,
                extra_ca_pem,
                ..RegistryConfig::default()
            },
            run_once: None,
            rollout: crate::rollout::Policy {
                max_hosts_in_flight: args.max_hosts_in_flight,
                canary: args.canary_hosts.0,
                canary_wait_ms: secs_ms(args.canary_wait),
                batch_delay_ms: secs_ms(args.batch_delay),
                min_healthy_ms: secs_ms(args.min_healthy_time),
                healthy_deadline_ms: secs_ms(args.healthy_deadline),
                progress_deadline_ms: secs_ms(args.progress_deadline),
                failure_action: args.failure_action,
                max_failure_ratio: args.max_failure_ratio,
                windows: args.maintenance_windows.to_string(),
            },
            history_retention: Duration::from_secs(args.history_retention * 24 * 3600),
            metrics_listen: args
                .prometheus_port
                .map(|port| SocketAddr::new(args.prometheus_addr, port)),
            influx,
            notifiers,
            startup_notification: !args.skip_startup_notifications,
            agent_lost_after: Duration::from_secs(args.agent_lost_after),
        })
    }
}

/// Checks the PKI, opens the store and binds `listen`, in that order, so bad configuration
/// fails before anything listens. Logs the bound address (tests read it).
pub(crate) async fn prepare_and_listen(
    config: ServeConfig,
    listen: SocketAddr,
) -> Result<(server::Prepared, tokio::net::TcpListener, SocketAddr), Failure> {
    let prepared = server::prepare(config).map_err(|e| {
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

async fn serve(args: ServeArgs) -> Result<(), Failure> {
    let mut config = args
        .policy
        .into_config(args.data_dir, PkiDir::new(args.pki_dir))?;
    if args.run_once {
        config.run_once = Some(Duration::from_secs(args.run_once_wait));
        return serve_once(config, args.listen).await;
    }
    let (prepared, listener, _) = prepare_and_listen(config, args.listen).await?;
    server::run(prepared, listener, ouroboros_shared::shutdown::signal())
        .await
        .map_err(Failure::runtime)?;
    tracing::info!("Coordinator stopped.");
    Ok(())
}

/// `serve --run-once`: serve until the known hosts have reported (or the wait ends), run one
/// cycle, print it, stop.
async fn serve_once(config: ServeConfig, listen: SocketAddr) -> Result<(), Failure> {
    let wait = config.run_once.unwrap_or(Duration::from_secs(60));
    let dry_run = config.detect_only;
    let (prepared, listener, _) = prepare_and_listen(config, listen).await?;
    let fleet = prepared.fleet();
    let cycle = prepared.cycle();
    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    let server = tokio::spawn(server::run(prepared, listener, async move {
        let _ = stop_rx.wait_for(|s| *s).await;
    }));
    let once = async {
        let missing = wait_for_fleet(&fleet, wait).await;
        cycle.resume().await;
        let report = cycle.run(dry_run).await;
        (missing, report)
    };
    let outcome = tokio::select! {
        done = once => Some(done),
        () = ouroboros_shared::shutdown::signal() => None,
    };
    let _ = stop_tx.send(true);
    // The server lets notifications under way end (35 s at most).
    match tokio::time::timeout(Duration::from_secs(40), server).await {
        Ok(Ok(Err(e))) => return Err(Failure::runtime(e)),
        Ok(Err(e)) => return Err(Failure::runtime(format!("server task failed: {e}"))),
        _ => {}
    }
    let Some((missing, report)) = outcome else {
        return Err(Failure::runtime("interrupted before the cycle finished"));
    };
    let printed =
        admin_client::print_check(&crate::admin::check_response(report), OutputFormat::Table);
    if !missing.is_empty() {
        return Err(Failure::runtime(format!(
            "host(s) not reporting within {}s: {}",
            wait.as_secs(),
            missing.join(", ")
        )));
    }
    printed
}

/// Waits until every host the store knows is connected and has reported on this connection,
/// at most `wait`. Returns the hosts still missing. With an empty store (a first run) the
/// fleet is whoever comes: the wait ends once hosts have reported and no new one came for
/// [`SETTLE`].
async fn wait_for_fleet(fleet: &crate::fleet::Fleet, wait: Duration) -> Vec<String> {
    const SETTLE: Duration = Duration::from_secs(5);
    let deadline = tokio::time::Instant::now() + wait;
    let first_run = fleet.hosts().is_empty();
    let mut known = 0;
    let mut changed = tokio::time::Instant::now();
    loop {
        let hosts = fleet.hosts();
        if hosts.len() != known {
            known = hosts.len();
            changed = tokio::time::Instant::now();
        }
        let missing: Vec<String> = hosts
            .iter()
            .filter(|h| !(h.connected && h.reported))
            .map(|h| h.record.host.clone())
            .collect();
        let settled = !first_run || changed.elapsed() >= SETTLE;
        if !hosts.is_empty() && missing.is_empty() && settled {
            return missing;
        }
        if tokio::time::Instant::now() >= deadline {
            if hosts.is_empty() {
                return vec!["(no agent connected)".to_owned()];
            }
            return missing;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `serve` with `args`, as clap parses it: the one line it would print, or the command.
    fn serve(args: &[&str]) -> Result<ServeArgs, String> {
        let line = ["ouroboros-coordinator", "serve"].iter().chain(args);
        match Cli::try_parse_from(line) {
            Ok(Cli {
                command: Command::Serve(serve),
                ..
            }) => Ok(serve),
            Ok(other) => panic!("not serve: {other:?}"),
            Err(e) => Err(e.to_string()),
        }
    }

    /// Asserts that `args` stop `serve` at parsing, naming `option` and `value`.
    fn refused(args: &[&str], option: &str, value: &str) {
        let e = serve(args).expect_err(&args.join(" "));
        assert!(e.contains(option), "{e}");
        assert!(e.contains(value), "{e}");
    }

    /// The validation after parsing (`into_config`): its one line and exit code.
    fn config_failure(args: &[&str]) -> Failure {
        let dir = PathBuf::from("/nonexistent");
        match serve(args)
            .unwrap()
            .policy
            .into_config(dir.clone(), PkiDir::new(dir))
        {
            Ok(_) => panic!("accepted: {args:?}"),
            Err(failure) => failure,
        }
    }

    #[test]
    fn intervals_past_thirty_days_are_refused() {
        for value in ["99999999999999999", "18446744073709551615", "2592001", "0"] {
            refused(&["--interval", value], "--interval", value);
        }
        let ok = serve(&["--interval", "2592000"]).unwrap();
        assert_eq!(ok.policy.interval, crate::schedule::MAX_INTERVAL_SECS);
    }

    #[test]
    fn waits_and_deadlines_past_thirty_days_are_refused() {
        for option in [
            "--canary-wait",
            "--batch-delay",
            "--min-healthy-time",
            "--healthy-deadline",
            "--progress-deadline",
            "--agent-lost-after",
        ] {
            for value in ["2592001", "99999999999999999", "18446744073709551616"] {
                refused(&[option, value], option, value);
            }
            assert!(serve(&[option, "2592000"]).is_ok(), "{option}");
        }
    }

    #[test]
    fn a_cron_schedule_that_never_fires_stops_startup() {
        let failure = config_failure(&["--cron", "0 0 31 2 *"]);
        assert_eq!(failure.code, EXIT_USAGE);
        assert!(
            failure
                .message
                .starts_with("--cron: \"0 0 31 2 *\" never fires"),
            "{}",
            failure.message
        );
        let failure = config_failure(&["--cron", "61 * * * *"]);
        assert!(
            failure.message.starts_with("--cron: "),
            "{}",
            failure.message
        );
    }

    #[test]
    fn lists_with_empty_items_are_refused() {
        for (option, value) in [
            ("--monitor", ",,,"),
            ("--monitor", "web,,db"),
            ("--ignore", ","),
            ("--canary-hosts", ",,"),
            ("--canary-hosts", "web-01,"),
            ("--insecure-registries", ",,"),
            ("--maintenance-windows", ";;"),
            ("--maintenance-windows", "Sat 02:00-02:00"),
            ("--notify-api", ","),
            ("--notify-api", "slak=http://proxy.lan"),
        ] {
            refused(&[option, value], option, value);
        }
        // Empty or blank stays "none".
        let blank = serve(&["--monitor", " ", "--ignore", "", "--canary-hosts", " "]).unwrap();
        assert!(blank.policy.monitor.0.is_empty());
        assert!(blank.policy.ignore.0.is_empty());
        assert_eq!(blank.policy.canary_hosts, CanaryArg::default());
        let lists = serve(&["--monitor", "web, db", "--canary-hosts", "web-01,web-02"]).unwrap();
        assert_eq!(lists.policy.monitor.0, vec!["web", "db"]);
    }

    #[test]
    fn a_canary_count_too_large_is_not_read_as_a_host_name() {
        refused(
            &["--canary-hosts", "99999999999"],
            "--canary-hosts",
            "99999999999",
        );
        let two = serve(&["--canary-hosts", "2"]).unwrap();
        assert_eq!(
            two.policy.canary_hosts,
            CanaryArg(crate::rollout::Canary::Count(2))
        );
    }

    #[test]
    fn history_since_refuses_an_overflowing_duration() {
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(7 * 86_400)));
        assert!(parse_duration("999999999999999999d").is_err());
        assert!(parse_duration("soon").is_err());
    }
}

//! The `ouroboros-coordinator` command line as clap types: every command, flag, its
//! environment-variable fallback and default (flag > environment > default), and the parsers
//! that check each value (a bad one stops with one line naming the option).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use ouroboros_shared::cli::{parse_flag, parse_list};
use ouroboros_shared::host::HostName;
use ouroboros_shared::names::*;
use ouroboros_shared::pki::DEFAULT_LEAF_DAYS;
use ouroboros_shared::telemetry::parse_filter;

pub use crate::admin::args::{AdminArgs, UpdateArgs, parse_container, parse_host};

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
    Up(crate::cli::up::UpArgs),
    /// List the hosts of the fleet; `hosts forget HOST` removes one and revokes its
    /// certificates.
    Hosts(crate::admin::forget::HostsArgs),
    /// Join tokens for enrolling hosts: `token create` prints one for `ouroboros-agent --join`.
    #[command(subcommand)]
    Token(crate::admin::tokens::TokenCommand),
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
    /// Exit 0 when the running coordinator's /healthz (the metrics endpoint) answers 200,
    /// 1 otherwise, with one line (the image's HEALTHCHECK).
    Healthcheck(crate::cli::healthcheck::HealthcheckArgs),
    /// Run by the updater container of `up`'s self-update: recreate `up`'s container.
    #[command(hide = true, name = "self-recreate")]
    SelfRecreate(SelfRecreateArgs),
    /// Print a shell completion script.
    Completions {
        /// The shell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

#[derive(Debug, Args)]
pub struct SelfRecreateArgs {
    /// The container to recreate (`up`'s).
    #[arg(long, value_name = "ID")]
    pub container: String,
    /// The image to recreate it from (on the engine already).
    #[arg(long, value_name = "REF")]
    pub image: String,
    /// The operation's id (its journal entry).
    #[arg(long, value_name = "ID")]
    pub op: String,
    /// The updater's journal.
    #[arg(long, value_name = "DIR")]
    pub journal_dir: std::path::PathBuf,
    /// Docker engine.
    #[arg(long, env = ouroboros_shared::names::ENV_DOCKER_HOST, default_value = ouroboros_shared::names::DEFAULT_DOCKER_HOST, value_name = "URL")]
    pub docker_host: String,
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

pub(crate) fn parse_rollout_id(value: &str) -> Result<String, String> {
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

pub(crate) fn parse_duration(value: &str) -> Result<Duration, String> {
    // A bare number is seconds, as before; everything else as humantime reads it (`90s`,
    // `30m`, `12h`, `7d`, `1h 30m`), which also refuses what would overflow.
    let value = value.trim();
    if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        return value
            .parse::<u64>()
            .map(Duration::from_secs)
            .map_err(|_| "too long a duration".to_owned());
    }
    humantime::parse_duration(value)
        .map_err(|e| format!("not a duration like 90s, 30m, 12h or 7d ({e})"))
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
    /// A new server certificate and key for the coordinator from the same CA (its names kept,
    /// --san added); the old pair is kept as .bak. Restart `serve` to use it.
    RotateServer {
        /// Directory made by `pki init` (with ca-key.pem).
        #[arg(long, env = ENV_PKI_DIR, default_value = DEFAULT_PKI_DIR)]
        dir: PathBuf,
        /// Extra DNS name or IP address for the new certificate. Repeatable.
        #[arg(long = "san", value_name = "NAME")]
        sans: Vec<String>,
        /// Validity in days.
        #[arg(long, default_value_t = DEFAULT_LEAF_DAYS, value_parser = clap::value_parser!(u32).range(1..=3650))]
        days: u32,
    },
    /// A new client certificate and key for the admin CLI from the same CA; the old pair is
    /// kept as .bak (and stays valid until it expires).
    RotateCli {
        /// Directory made by `pki init` (with ca-key.pem).
        #[arg(long, env = ENV_PKI_DIR, default_value = DEFAULT_PKI_DIR)]
        dir: PathBuf,
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

/// Most containers of one host updating at once (`--max-containers-in-flight`).
pub const MAX_CONTAINERS_IN_FLIGHT: i64 = 64;

/// What the coordinator checks, when, and how (shared by `serve` and `up`).
#[derive(Debug, Args)]
pub struct PolicyArgs {
    /// Seconds between check cycles (at most 30 days).
    #[arg(long, env = ENV_INTERVAL, default_value_t = 300, value_name = "SECONDS", value_parser = clap::value_parser!(u64).range(1..=crate::plan::schedule::MAX_INTERVAL_SECS))]
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
    /// Update Swarm services too, through an agent on a manager of their swarm (services are
    /// selected by their service labels and names, like containers); without it services are
    /// left alone. Task containers are never recreated either way.
    #[arg(long, env = ENV_SWARM, value_parser = parse_flag, default_value = "false", num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    pub swarm: bool,
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
    /// Registries (`HOST[:PORT]`, comma-separated) spoken to over plain HTTP; loopback
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
    /// Containers of one host updating at once in a rollout, among those that do not depend
    /// on each other (1 to 64); Ouroboros' own containers and Swarm services go alone.
    #[arg(long, env = ENV_MAX_CONTAINERS_IN_FLIGHT, default_value_t = 1, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=MAX_CONTAINERS_IN_FLIGHT))]
    pub max_containers_in_flight: u32,
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
    pub failure_action: crate::plan::rollout::FailureAction,
    /// Failures tolerated before the failure action, as a share of the targets (0 to 1).
    #[arg(long, env = ENV_MAX_FAILURE_RATIO, default_value_t = 0.0, value_name = "RATIO", value_parser = parse_ratio)]
    pub max_failure_ratio: f64,
    /// Maintenance windows, `;`-separated, e.g. `Sat 02:00-04:00; Mon-Fri 22:00-06:00
    /// Europe/Berlin`: new work starts only inside one (UTC unless a zone is given).
    #[arg(long, env = ENV_MAINTENANCE_WINDOWS, value_name = "WINDOWS", value_parser = parse_windows, default_value = "")]
    pub maintenance_windows: crate::plan::window::Windows,
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
    /// Directory of hook scripts: `DIR/{point}/` for each of the 14 hook points
    /// (`before_update`, `updates_enumerated`, ...); executables and `*.py` files run in name
    /// order.
    #[arg(long, env = ENV_HOOKS_DIR, value_name = "DIR")]
    pub hooks_dir: Option<PathBuf>,
    /// Seconds one hook script may run; then it is killed (with what it started).
    #[arg(long, env = ENV_HOOK_TIMEOUT, default_value_t = 60, value_name = "SECONDS", value_parser = clap::value_parser!(u64).range(1..=MAX_WAIT_SECS))]
    pub hook_timeout: u64,
    /// How long update history and ended rollouts are kept: days (`90`), or a duration with
    /// its unit (`12h`, `30m`).
    #[arg(long, env = ENV_HISTORY_RETENTION, default_value = "90", value_name = "DAYS|DURATION", value_parser = parse_retention)]
    pub history_retention: std::time::Duration,
}

/// `--canary-hosts`: names or a count.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CanaryArg(pub crate::plan::rollout::Canary);

/// `--history-retention`: a number of days (1 to 36500), or a duration with its unit from one
/// second to 36500 days.
pub(crate) fn parse_retention(value: &str) -> Result<std::time::Duration, String> {
    const MAX: std::time::Duration = std::time::Duration::from_secs(36500 * 24 * 3600);
    let value = value.trim();
    let retention = match value.parse::<u64>() {
        Ok(days) if (1..=36500).contains(&days) => std::time::Duration::from_secs(days * 24 * 3600),
        Ok(days) => return Err(format!("{days} days is not between 1 and 36500")),
        Err(_) => humantime::parse_duration(value).map_err(|e| {
            format!("{value:?} is neither a number of days nor a duration such as 12h: {e}")
        })?,
    };
    if retention < std::time::Duration::from_secs(1) || retention > MAX {
        return Err(format!("{value:?} is not between 1s and 36500 days"));
    }
    Ok(retention)
}

pub(crate) fn parse_canary(value: &str) -> Result<CanaryArg, String> {
    use crate::plan::rollout::Canary;
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

pub(crate) fn parse_ratio(value: &str) -> Result<f64, String> {
    match value.trim().parse::<f64>() {
        Ok(r) if (0.0..=1.0).contains(&r) => Ok(r),
        _ => Err(format!("{value:?} is not a ratio from 0 to 1")),
    }
}

pub(crate) fn parse_windows(value: &str) -> Result<crate::plan::window::Windows, String> {
    crate::plan::window::Windows::parse(value)
}

/// Registry hosts (`host[:port]`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Registries(pub Vec<String>);

pub(crate) fn parse_registries(value: &str) -> Result<Registries, String> {
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
pub struct ContainersArgs {
    #[command(flatten)]
    pub admin: AdminArgs,
    /// Only this host's containers.
    #[arg(long, value_name = "HOST", value_parser = parse_host)]
    pub host: Option<HostName>,
}

/// A list of container names (`NAME` or `HOST/NAME`), comma- or space-separated.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Names(pub Vec<String>);

pub(crate) fn parse_names(value: &str) -> Result<Names, String> {
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

impl Command {
    /// Whether this is an admin command (talks to a running coordinator): those exit 2 on a
    /// usage error, while `serve`, `up` and `pki` keep 64 (bad configuration).
    pub fn is_admin(&self) -> bool {
        !matches!(
            self,
            Self::Pki(_)
                | Self::Serve(_)
                | Self::Up(_)
                | Self::Healthcheck(_)
                | Self::SelfRecreate(_)
                | Self::Completions { .. }
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
            "pki" | "serve" | "up" | "healthcheck" | "help" | "completions"
        );
    }
    false
}

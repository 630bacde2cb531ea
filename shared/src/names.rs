//! Names that operators and other programs depend on: environment variables, file names,
//! defaults. Ouroboros' own environment-variable names are kept where an option existed there.

/// Containers to watch (names or host/name), as in Ouroboros.
pub const ENV_MONITOR: &str = "MONITOR";
/// Containers never to update, as in Ouroboros.
pub const ENV_IGNORE: &str = "IGNORE";
/// Only containers labelled `com.ouroboros.enable=true`, as in Ouroboros.
pub const ENV_LABEL_ENABLE: &str = "LABEL_ENABLE";
/// Only labelled containers, ignoring the name lists, as in Ouroboros.
pub const ENV_LABELS_ONLY: &str = "LABELS_ONLY";
/// Update Ouroboros' own containers too, as in Ouroboros.
pub const ENV_SELF_UPDATE: &str = "SELF_UPDATE";
/// Update Swarm services (through a manager's agent), as Ouroboros' `SWARM`.
pub const ENV_SWARM: &str = "SWARM";

/// Seconds between check cycles, as in Ouroboros.
pub const ENV_INTERVAL: &str = "INTERVAL";
/// Cron schedule of check cycles (wins over INTERVAL), as in Ouroboros.
pub const ENV_CRON: &str = "CRON";
/// Detect and show only, as in Ouroboros.
pub const ENV_DRY_RUN: &str = "DRY_RUN";
/// Detect and report only, never pull or change, as in Ouroboros.
pub const ENV_MONITOR_ONLY: &str = "MONITOR_ONLY";

/// Run one cycle and exit, as in Ouroboros.
pub const ENV_RUN_ONCE: &str = "RUN_ONCE";
/// `up` and the agent's `--join`: the name of this host in the fleet view.
pub const ENV_HOST_NAME: &str = "OUROBOROS_HOST_NAME";
/// `up`: default listen address (this machine only).
pub const DEFAULT_UP_LISTEN: &str = "127.0.0.1:7443";

/// Registry user for pulls, as in Ouroboros.
pub const ENV_REPO_USER: &str = "REPO_USER";
/// Registry password for pulls, as in Ouroboros.
pub const ENV_REPO_PASS: &str = "REPO_PASS";

/// Docker CLI configuration: a directory holding `config.json` (or the file), read for
/// registry credentials (`auths`, `credHelpers`, `credsStore`), as the docker CLI reads it.
pub const ENV_DOCKER_CONFIG: &str = "DOCKER_CONFIG";
/// Registries (`host[:port]`) spoken to over plain HTTP besides loopback ones.
pub const ENV_INSECURE_REGISTRIES: &str = "OUROBOROS_INSECURE_REGISTRIES";
/// Extra CA certificates (PEM file) trusted for registries.
pub const ENV_REGISTRY_CA: &str = "OUROBOROS_REGISTRY_CA";
/// Probe each repository's `latest` and update to it, whatever tag a container runs.
pub const ENV_LATEST_ONLY: &str = "LATEST_ONLY";
/// Remove the old image after a successful update when nothing else uses it, as in Ouroboros.
pub const ENV_CLEANUP: &str = "CLEANUP";
/// Remove unused anonymous volumes after each cycle, as in Ouroboros (named volumes are kept).
pub const ENV_CLEANUP_UNUSED_VOLUMES: &str = "CLEANUP_UNUSED_VOLUMES";
/// `serve --run-once`: longest wait for the fleet's agents before the cycle.
pub const ENV_RUN_ONCE_WAIT: &str = "OUROBOROS_RUN_ONCE_WAIT";

/// Rollouts: hosts updating at once (0: no limit).
pub const ENV_MAX_HOSTS_IN_FLIGHT: &str = "OUROBOROS_MAX_HOSTS_IN_FLIGHT";
/// Rollouts: containers of one host updating at once (those that do not depend on each other).
pub const ENV_MAX_CONTAINERS_IN_FLIGHT: &str = "OUROBOROS_MAX_CONTAINERS_IN_FLIGHT";
/// Rollouts: canary hosts (names, or a count), updated first.
pub const ENV_CANARY_HOSTS: &str = "OUROBOROS_CANARY_HOSTS";
/// Rollouts: health period (s) after the canary hosts.
pub const ENV_CANARY_WAIT: &str = "OUROBOROS_CANARY_WAIT";
/// Rollouts: pause (s) before a freed host slot takes the next host.
pub const ENV_BATCH_DELAY: &str = "OUROBOROS_BATCH_DELAY";
/// Rollouts: how long (s) a new container must be healthy (or running) to count as updated.
pub const ENV_MIN_HEALTHY_TIME: &str = "OUROBOROS_MIN_HEALTHY_TIME";
/// Rollouts: longest wait (s) for a new container to become healthy.
pub const ENV_HEALTHY_DEADLINE: &str = "OUROBOROS_HEALTHY_DEADLINE";
/// Rollouts: longest (s) from a command to its answer; then the target fails.
pub const ENV_PROGRESS_DEADLINE: &str = "OUROBOROS_PROGRESS_DEADLINE";
/// Rollouts: `pause`, `rollback` or `continue` when too many targets fail.
pub const ENV_FAILURE_ACTION: &str = "OUROBOROS_FAILURE_ACTION";
/// Rollouts: failures tolerated, as a share of the targets (0 to 1).
pub const ENV_MAX_FAILURE_RATIO: &str = "OUROBOROS_MAX_FAILURE_RATIO";
/// Rollouts: maintenance windows, `;`-separated (`Sat 02:00-04:00 Europe/Berlin`).
pub const ENV_MAINTENANCE_WINDOWS: &str = "OUROBOROS_MAINTENANCE_WINDOWS";
/// Days of update history kept.
pub const ENV_HISTORY_RETENTION: &str = "OUROBOROS_HISTORY_RETENTION";

/// Address of the metrics endpoint (`/metrics`, `/healthz`, `/readyz`), as in Ouroboros.
pub const ENV_PROMETHEUS_ADDR: &str = "PROMETHEUS_ADDR";
/// Port of the metrics endpoint; the endpoint is served only when set, as in Ouroboros.
pub const ENV_PROMETHEUS_PORT: &str = "PROMETHEUS_PORT";
/// Per-container update counters (`true`/`false`), off for large fleets.
pub const ENV_METRICS_PER_CONTAINER: &str = "OUROBOROS_METRICS_PER_CONTAINER";

/// `influxdb`: write the figures to InfluxDB after every cycle, as in Ouroboros.
pub const ENV_DATA_EXPORT: &str = "DATA_EXPORT";
/// InfluxDB: `http://host` or `https://host`, as in Ouroboros.
pub const ENV_INFLUX_URL: &str = "INFLUX_URL";
/// InfluxDB: port, as in Ouroboros.
pub const ENV_INFLUX_PORT: &str = "INFLUX_PORT";
/// InfluxDB 1.x: user, as in Ouroboros.
pub const ENV_INFLUX_USERNAME: &str = "INFLUX_USERNAME";
/// InfluxDB 1.x: password, as in Ouroboros.
pub const ENV_INFLUX_PASSWORD: &str = "INFLUX_PASSWORD";
/// InfluxDB 1.x: database, as in Ouroboros.
pub const ENV_INFLUX_DATABASE: &str = "INFLUX_DATABASE";
/// InfluxDB 2.x: organisation.
pub const ENV_INFLUX_ORG: &str = "INFLUX_ORG";
/// InfluxDB 2.x: bucket.
pub const ENV_INFLUX_BUCKET: &str = "INFLUX_BUCKET";
/// InfluxDB 2.x: token (selects the 2.x write API).
pub const ENV_INFLUX_TOKEN: &str = "INFLUX_TOKEN";

/// Notification services as Apprise URLs, space-separated, as in Ouroboros.
pub const ENV_NOTIFIERS: &str = "NOTIFIERS";
/// No notification at startup, as in Ouroboros.
pub const ENV_SKIP_STARTUP_NOTIFICATIONS: &str = "SKIP_STARTUP_NOTIFICATIONS";
/// A template file for notification texts.
pub const ENV_NOTIFICATION_TEMPLATE: &str = "OUROBOROS_NOTIFICATION_TEMPLATE";
/// Seconds an agent must be away before "agent lost" is notified.
pub const ENV_AGENT_LOST_AFTER: &str = "OUROBOROS_AGENT_LOST_AFTER";

/// Other API roots for notification services with fixed hosts (`discord=URL,slack=URL`).
pub const ENV_NOTIFY_API: &str = "OUROBOROS_NOTIFY_API";
/// Extra CA certificates (PEM file) for notifications over TLS (SMTP).
pub const ENV_NOTIFY_CA: &str = "OUROBOROS_NOTIFY_CA";

/// Directory of hook scripts, one subdirectory per hook point (`before_update/`, ...), as
/// in Ouroboros' `hooks/{hookname}/`.
pub const ENV_HOOKS_DIR: &str = "HOOKS_DIR";
/// Longest run (s) of one hook script; then its process group is killed.
pub const ENV_HOOK_TIMEOUT: &str = "OUROBOROS_HOOK_TIMEOUT";
/// The variables a hook script gets with its event (the same as the JSON on its stdin);
/// nothing else of the coordinator's environment reaches it but [`HOOK_ENV_KEPT`].
pub const HOOK_ENV_HOOK: &str = "OUROBOROS_HOOK";
pub const HOOK_ENV_ROLLOUT: &str = "OUROBOROS_ROLLOUT";
pub const HOOK_ENV_HOST: &str = "OUROBOROS_HOST";
pub const HOOK_ENV_CONTAINER: &str = "OUROBOROS_CONTAINER";
pub const HOOK_ENV_IMAGE: &str = "OUROBOROS_IMAGE";
pub const HOOK_ENV_OLD_DIGEST: &str = "OUROBOROS_OLD_DIGEST";
pub const HOOK_ENV_NEW_DIGEST: &str = "OUROBOROS_NEW_DIGEST";
pub const HOOK_ENV_OUTCOME: &str = "OUROBOROS_OUTCOME";
pub const HOOK_ENV_DEPENDANT: &str = "OUROBOROS_DEPENDANT";
pub const HOOK_ENV_REASON: &str = "OUROBOROS_REASON";
/// `updates_enumerated`: one line per update, `HOST/CONTAINER IMAGE NEW_DIGEST`.
pub const HOOK_ENV_UPDATES: &str = "OUROBOROS_UPDATES";
/// The whole event as JSON (what stdin holds).
pub const HOOK_ENV_EVENT: &str = "OUROBOROS_EVENT";
/// The only variables of the coordinator's own environment a hook script sees: the basics a
/// shell or Python needs, never a credential.
pub const HOOK_ENV_KEPT: &[&str] = &[
    "PATH", "HOME", "USER", "LOGNAME", "LANG", "LANGUAGE", "LC_ALL", "LC_CTYPE", "TZ", "TMPDIR",
];

/// Container lifecycle hooks, Watchtower's labels: a command run in the container with
/// `docker exec` (`sh -c`), before and after the check and the update.
pub const LABEL_WATCHTOWER_PRE_CHECK: &str = "com.centurylinklabs.watchtower.lifecycle.pre-check";
pub const LABEL_WATCHTOWER_POST_CHECK: &str = "com.centurylinklabs.watchtower.lifecycle.post-check";
pub const LABEL_WATCHTOWER_PRE_UPDATE: &str = "com.centurylinklabs.watchtower.lifecycle.pre-update";
pub const LABEL_WATCHTOWER_POST_UPDATE: &str =
    "com.centurylinklabs.watchtower.lifecycle.post-update";
/// Watchtower's deadline labels, in minutes (`...lifecycle.pre-update-timeout`).
pub const LABEL_WATCHTOWER_TIMEOUT_SUFFIX: &str = "-timeout";
/// Ouroboros' own lifecycle labels, same meaning (they win over Watchtower's).
pub const LABEL_HOOK_PRE_CHECK: &str = "com.ouroboros.hook.pre-check";
pub const LABEL_HOOK_POST_CHECK: &str = "com.ouroboros.hook.post-check";
pub const LABEL_HOOK_PRE_UPDATE: &str = "com.ouroboros.hook.pre-update";
pub const LABEL_HOOK_POST_UPDATE: &str = "com.ouroboros.hook.post-update";
/// Deadline of every `com.ouroboros.hook.*` command of the container, in seconds.
pub const LABEL_HOOK_TIMEOUT: &str = "com.ouroboros.hook.timeout";
/// A `pre-update` command exiting with this code skips the update (as in Watchtower).
pub const LIFECYCLE_SKIP_EXIT: i64 = 75;

/// Agent (and `up`): seconds a stopping agent gives the operation in flight to reach a safe
/// point before it exits anyway.
pub const ENV_SHUTDOWN_TIMEOUT: &str = "OUROBOROS_SHUTDOWN_TIMEOUT";
/// Agent: seconds a successor agent has to connect and take over in a self-update.
pub const ENV_HANDOVER_TIMEOUT: &str = "OUROBOROS_HANDOVER_TIMEOUT";

/// Log level (`trace`, `debug`, `info`, `warn`, `error`), as in Ouroboros.
pub const ENV_LOG_LEVEL: &str = "LOG_LEVEL";

/// Coordinator: address the gRPC server listens on.
pub const ENV_LISTEN: &str = "OUROBOROS_LISTEN";
/// Coordinator: directory of the embedded store.
pub const ENV_DATA_DIR: &str = "OUROBOROS_DATA_DIR";
/// Coordinator and admin commands: directory made by `pki init`.
pub const ENV_PKI_DIR: &str = "OUROBOROS_PKI_DIR";
/// Admin commands: coordinator URL.
pub const ENV_SERVER: &str = "OUROBOROS_SERVER";
/// Agent: coordinator URL.
pub const ENV_COORDINATOR: &str = "OUROBOROS_COORDINATOR";
/// Agent and admin commands: CA certificate (PEM).
pub const ENV_CA: &str = "OUROBOROS_CA";
/// Agent and admin commands: client certificate (PEM).
pub const ENV_CERT: &str = "OUROBOROS_CERT";
/// Agent and admin commands: client private key (PEM).
pub const ENV_KEY: &str = "OUROBOROS_KEY";
/// Agent: Docker engine address, as the Docker CLI reads it.
pub const ENV_DOCKER_HOST: &str = "DOCKER_HOST";
/// Agent: directory with `ca.pem`, `cert.pem`, `key.pem` for a TLS Docker engine.
pub const ENV_DOCKER_CERT_PATH: &str = "DOCKER_CERT_PATH";
/// Agent: verify the TLS Docker engine's certificate (any non-empty value but `0`).
pub const ENV_DOCKER_TLS_VERIFY: &str = "DOCKER_TLS_VERIFY";
/// Agent: Ouroboros' name for "talk TLS to the Docker engine".
pub const ENV_DOCKER_TLS: &str = "DOCKER_TLS";
/// Agent: directory for the agent's own state.
pub const ENV_AGENT_DATA_DIR: &str = "OUROBOROS_AGENT_DATA_DIR";
/// Agent: join token for enrolling this host (`ouroboros-coordinator token create`).
pub const ENV_JOIN_TOKEN: &str = "OUROBOROS_JOIN_TOKEN";
/// A file holding the join token (a Docker or Swarm secret).
pub const ENV_JOIN_TOKEN_FILE: &str = "OUROBOROS_JOIN_TOKEN_FILE";
/// Agent: renew the certificate when less than this remains (`--renew-before`).
pub const ENV_RENEW_BEFORE: &str = "OUROBOROS_RENEW_BEFORE";
/// Agent: its files inside the data dir (written by enrolment, read by default).
pub const AGENT_CA_FILE: &str = "ca.pem";
pub const AGENT_CERT_FILE: &str = "cert.pem";
pub const AGENT_KEY_FILE: &str = "key.pem";

/// Default coordinator listen address.
pub const DEFAULT_LISTEN: &str = "0.0.0.0:7443";
/// Default coordinator URL for the admin commands.
pub const DEFAULT_SERVER: &str = "https://127.0.0.1:7443";
/// Default coordinator data directory.
pub const DEFAULT_DATA_DIR: &str = "/var/lib/ouroboros";
/// Default PKI directory.
pub const DEFAULT_PKI_DIR: &str = "/var/lib/ouroboros/pki";
/// Default agent data directory.
pub const DEFAULT_AGENT_DATA_DIR: &str = "/var/lib/ouroboros-agent";
/// Default Docker engine address.
pub const DEFAULT_DOCKER_HOST: &str = "unix:///var/run/docker.sock";

/// Heartbeat interval the coordinator asks agents for.
pub const HEARTBEAT_INTERVAL_SECS: u32 = 5;
/// A stream silent for this many heartbeat intervals is dropped.
pub const HEARTBEAT_MISSES_ALLOWED: u32 = 3;

/// Exit code for bad configuration or usage (BSD `EX_USAGE`).
pub const EXIT_USAGE: i32 = 64;

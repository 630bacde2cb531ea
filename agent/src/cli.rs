//! The `ouroboros-agent` command line. Every flag has an environment-variable fallback
//! (flag > environment > default); bad values exit with code 64 and one line.

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use ouroboros_shared::cli::{parse_flag, parse_https_url};
use ouroboros_shared::names::*;
use ouroboros_shared::pki::{ClientPem, PeerIdentity, identify, load_certs};
use ouroboros_shared::telemetry::parse_filter;

use ouroboros_shared::host::HostName;
use ouroboros_shared::join::JoinToken;

use crate::AgentConfig;
use crate::engine::DockerEndpoint;
use crate::enrol::{JoinPlan, machine_name};
use crate::link::LinkConfig;
use crate::recreate::faults::CrashPoint;
use crate::renew::Renewal;

#[derive(Debug, Parser)]
#[command(
    name = "ouroboros-agent",
    version,
    about = "Ouroboros agent: reports this Docker host to the coordinator and carries out its commands.",
    after_help = "Health: `ouroboros-agent healthcheck [--data-dir DIR]` exits 0 when this host's running agent heard its Docker engine within the last minute, 1 otherwise (the image's HEALTHCHECK)."
)]
pub struct Cli {
    /// Coordinator URL, e.g. https://coordinator.example:7443.
    #[arg(long, env = ENV_COORDINATOR, value_name = "URL", value_parser = parse_https_url)]
    pub coordinator: String,
    /// The fleet's CA certificate (ca.pem from `pki init`) [default: DATA_DIR/ca.pem].
    #[arg(long, env = ENV_CA, value_name = "FILE")]
    pub ca: Option<PathBuf>,
    /// This host's agent certificate (from `pki issue --agent HOST`, or written by --join); it
    /// names the host [default: DATA_DIR/cert.pem].
    #[arg(long, env = ENV_CERT, value_name = "FILE")]
    pub cert: Option<PathBuf>,
    /// The agent certificate's private key [default: DATA_DIR/key.pem].
    #[arg(long, env = ENV_KEY, value_name = "FILE")]
    pub key: Option<PathBuf>,
    /// Join token (`ouroboros-coordinator token create`): when there is no certificate yet,
    /// make a key here, get it signed by the coordinator and store both in the data dir.
    /// Ignored once a certificate exists. Exit 64 when refused, 1 when unreachable.
    #[arg(long, env = ENV_JOIN_TOKEN, value_name = "TOKEN", hide_env_values = true)]
    pub join: Option<String>,
    /// The join token read from a file (a Docker or Swarm secret, e.g. `/run/secrets/...`),
    /// instead of --join.
    #[arg(long, env = ENV_JOIN_TOKEN_FILE, value_name = "FILE", conflicts_with = "join")]
    pub join_file: Option<PathBuf>,
    /// This host's name in the fleet, for --join [default: the machine's name].
    #[arg(long, env = ENV_HOST_NAME, value_name = "NAME")]
    pub host_name: Option<String>,
    /// Renew the certificate (over the link, with a new key) when less than this remains,
    /// e.g. 30d or 12h [default: a third of its lifetime].
    #[arg(long, env = ENV_RENEW_BEFORE, value_name = "DURATION", value_parser = parse_renew_before)]
    pub renew_before: Option<Duration>,
    /// Docker engine: unix:///PATH, tcp://HOST:PORT or https://HOST:PORT.
    #[arg(long, env = ENV_DOCKER_HOST, default_value = DEFAULT_DOCKER_HOST, value_name = "URL")]
    pub docker_host: String,
    /// Talk TLS to a TCP engine, with client certificates from --docker-cert-path.
    #[arg(long, env = ENV_DOCKER_TLS, value_parser = parse_flag, default_value = "false", num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    pub docker_tls: bool,
    /// Same as --docker-tls (the Docker CLI's name); the engine's certificate is always verified.
    #[arg(long, env = ENV_DOCKER_TLS_VERIFY, value_parser = parse_flag, default_value = "false", num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    pub docker_tls_verify: bool,
    /// Directory with ca.pem, cert.pem and key.pem for a TLS engine [default: ~/.docker].
    #[arg(long, env = ENV_DOCKER_CERT_PATH, value_name = "DIR")]
    pub docker_cert_path: Option<PathBuf>,
    /// Directory for the agent's own state.
    #[arg(long, env = ENV_AGENT_DATA_DIR, default_value = DEFAULT_AGENT_DATA_DIR, value_name = "DIR")]
    pub data_dir: PathBuf,
    /// After SIGTERM: seconds the operation in flight gets to reach a safe point (finished
    /// past its health gate, else rolled back) before the agent exits anyway.
    #[arg(long, env = ENV_SHUTDOWN_TIMEOUT, default_value = "60", value_name = "SECS", value_parser = parse_shutdown_timeout)]
    pub shutdown_timeout: Duration,
    /// Self-update: seconds the successor agent container has to connect to the coordinator
    /// and take over before it is removed and this agent goes on (reported as rolled back).
    #[arg(long, env = ENV_HANDOVER_TIMEOUT, default_value = "120", value_name = "SECS", value_parser = parse_shutdown_timeout)]
    pub handover_timeout: Duration,
    /// Log level: trace, debug, info, warn, error (or a tracing filter).
    #[arg(long, env = ENV_LOG_LEVEL, default_value = "info", value_parser = parse_filter)]
    pub log_level: String,
}

impl Cli {
    fn ca_path(&self) -> PathBuf {
        self.ca
            .clone()
            .unwrap_or_else(|| self.data_dir.join(AGENT_CA_FILE))
    }
    pub fn cert_path(&self) -> PathBuf {
        self.cert
            .clone()
            .unwrap_or_else(|| self.data_dir.join(AGENT_CERT_FILE))
    }
    pub fn key_path(&self) -> PathBuf {
        self.key
            .clone()
            .unwrap_or_else(|| self.data_dir.join(AGENT_KEY_FILE))
    }

    /// With --join and no certificate yet: what to enrol. With a certificate, --join is
    /// ignored (said at INFO).
    pub fn join_plan(&self) -> Result<Option<JoinPlan>, String> {
        let from_file = match &self.join_file {
            Some(path) => Some(
                std::fs::read_to_string(path)
                    .map_err(|e| format!("--join-file {}: {e}", path.display()))?,
            ),
            None => None,
        };
        let Some(token) = from_file
            .as_deref()
            .or(self.join.as_deref())
            .map(str::trim)
            .filter(|t| !t.is_empty())
        else {
            return Ok(None);
        };
        let cert = self.cert_path();
        if cert.exists() {
            tracing::info!(cert = %cert.display(), "A certificate exists: --join ignored.");
            return Ok(None);
        }
        let option = if self.join_file.is_some() {
            "--join-file"
        } else {
            "--join"
        };
        let token = JoinToken::parse(token).map_err(|e| format!("{option}: {e}"))?;
        let name = match &self.host_name {
            Some(n) => n.clone(),
            None => machine_name().ok_or("--host-name: the machine's name is unknown; give one")?,
        };
        let host = HostName::parse(&name).map_err(|e| format!("--host-name {name:?}: {e}"))?;
        Ok(Some(JoinPlan {
            coordinator: self.coordinator.clone(),
            token,
            host,
            ca: self.ca_path(),
            cert,
            key: self.key_path(),
        }))
    }

    /// Reads the certificate files and checks every value; the error names the option.
    pub fn into_config(self) -> Result<AgentConfig, String> {
        let (ca_path, cert_path, key_path) = (self.ca_path(), self.cert_path(), self.key_path());
        if !cert_path.exists() && self.join.is_none() && self.join_file.is_none() {
            return Err(format!(
                "--ca/--cert/--key: no certificate at {}; enrol this host with --join TOKEN (`ouroboros-coordinator token create`) or give the files of `pki issue --agent HOST`",
                cert_path.display()
            ));
        }
        let tls = ClientPem::read(&ca_path, &cert_path, &key_path)
            .map_err(|e| format!("--ca/--cert/--key: {e}"))?;
        let cert = load_certs(&cert_path).map_err(|e| format!("--cert: {e}"))?;
        let host = match cert.first().map(|c| identify(c)) {
            Some(Ok(PeerIdentity::Agent(host))) => host,
            Some(Ok(other)) => {
                return Err(format!(
                    "--cert {}: {} certificate, not an agent's (make one with `ouroboros-coordinator pki issue --agent HOST`)",
                    cert_path.display(),
                    other.role().with_article()
                ));
            }
            Some(Err(e)) => return Err(format!("--cert {}: {e}", cert_path.display())),
            None => return Err(format!("--cert {}: no certificate", cert_path.display())),
        };
        let docker = DockerEndpoint::new(
            &self.docker_host,
            self.docker_tls || self.docker_tls_verify,
            self.docker_cert_path,
        )
        .map_err(|e| format!("--docker-host: {e}"))?;
        std::fs::create_dir_all(&self.data_dir)
            .map_err(|e| format!("--data-dir {}: {e}", self.data_dir.display()))?;
        Ok(AgentConfig {
            link: LinkConfig {
                coordinator: self.coordinator,
                tls,
                host,
                reconnect_initial: ouroboros_shared::backoff::RECONNECT_INITIAL,
                reconnect_max: ouroboros_shared::backoff::RECONNECT_MAX,
                renewal: Some(Renewal {
                    cert: cert_path,
                    key: key_path,
                    before: self.renew_before,
                }),
                container_id: None,
                agent_image: None,
            },
            docker,
            data_dir: self.data_dir,
            crash: crash_point()?,
            shutdown_timeout: self.shutdown_timeout,
            handover_timeout: Some(self.handover_timeout),
            updater: false,
        })
    }
}

/// The first argument that selects `ouroboros-agent healthcheck`.
pub const HEALTHCHECK: &str = "healthcheck";

/// `ouroboros-agent healthcheck`: is the agent that runs with this data dir alive? It reads
/// the heartbeat file the running agent writes (see [`crate::health`]) and exits 0 when it is
/// fresh, 1 otherwise, with one line saying why. It needs no shell, no network and no
/// certificate, so it serves as the image's `HEALTHCHECK`.
#[derive(Debug, Parser)]
#[command(name = "ouroboros-agent healthcheck", version)]
pub struct HealthcheckCli {
    /// The running agent's data directory.
    #[arg(long, env = ENV_AGENT_DATA_DIR, default_value = DEFAULT_AGENT_DATA_DIR, value_name = "DIR")]
    pub data_dir: PathBuf,
    /// Seconds since the engine's last answer that still count as healthy.
    #[arg(long, default_value = "60", value_name = "SECS", value_parser = parse_shutdown_timeout)]
    pub max_age: Duration,
}

impl HealthcheckCli {
    /// The verdict now: `Ok(line)` healthy, `Err(line)` not.
    pub fn verdict(&self) -> Result<String, String> {
        crate::health::check(
            &self.data_dir,
            ouroboros_shared::time_fmt::now_unix_ms(),
            self.max_age,
        )
    }
}

/// A duration as humantime reads it (`90s`, `30m`, `12h`, `30d`, `1h 30m`), at least 1s:
/// `--renew-before`.
pub fn parse_renew_before(value: &str) -> Result<Duration, String> {
    match humantime::parse_duration(value.trim()) {
        Ok(d) if d >= Duration::from_secs(1) => Ok(d),
        _ => Err(format!(
            "{value:?} is not a duration such as 90s, 30m, 12h or 30d"
        )),
    }
}

/// Seconds, 1 to 3600.
pub fn parse_shutdown_timeout(value: &str) -> Result<Duration, String> {
    match value.trim().parse::<u64>() {
        Ok(s) if (1..=3600).contains(&s) => Ok(Duration::from_secs(s)),
        _ => Err(format!(
            "{value:?} is not a number of seconds from 1 to 3600"
        )),
    }
}

/// `OUROBOROS_FAILPOINT` (a name of [`CrashPoint::ALL`]: after-stop, during-health, ...): hang
/// the agent at that point of every recreate, for a test to SIGKILL it. Only in builds with
/// the `failpoints` feature, which release builds do not have.
#[cfg(feature = "failpoints")]
fn crash_point() -> Result<Option<CrashPoint>, String> {
    match std::env::var("OUROBOROS_FAILPOINT") {
        Ok(v) if !v.is_empty() => CrashPoint::parse(&v)
            .map(Some)
            .ok_or_else(|| format!("OUROBOROS_FAILPOINT: unknown crash point {v:?}")),
        _ => Ok(None),
    }
}

#[cfg(not(feature = "failpoints"))]
fn crash_point() -> Result<Option<CrashPoint>, String> {
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn healthcheck_reads_the_data_dir_given() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().to_str().unwrap();
        let cli = HealthcheckCli::try_parse_from(["healthcheck", "--data-dir", path]).unwrap();
        assert_eq!(cli.max_age, Duration::from_secs(60));
        assert!(cli.verdict().unwrap_err().starts_with("unhealthy: "));
        crate::health::record(dir.path(), ouroboros_shared::time_fmt::now_unix_ms()).unwrap();
        assert!(cli.verdict().unwrap().starts_with("healthy: "));
    }

    #[test]
    fn the_join_token_may_come_from_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let token = format!(
            "ouro1.{}.{}.{}",
            "0".repeat(16),
            "a".repeat(64),
            "b".repeat(64)
        );
        let file = dir.path().join("token");
        std::fs::write(&file, format!("{token}\n")).unwrap();
        let data = dir.path().join("data");
        let args = |join: &[&str]| {
            let mut a = vec!["ouroboros-agent", "--coordinator", "https://c.example:7443"];
            a.extend_from_slice(join);
            a.extend_from_slice(&[
                "--host-name",
                "web-07",
                "--data-dir",
                data.to_str().unwrap(),
            ]);
            a.into_iter().map(str::to_owned).collect::<Vec<_>>()
        };
        let cli = Cli::try_parse_from(args(&["--join-file", file.to_str().unwrap()])).unwrap();
        let plan = cli.join_plan().unwrap().unwrap();
        assert_eq!(plan.host.as_str(), "web-07");
        assert_eq!(plan.token.id(), "0".repeat(16));
        // A missing file names the option; both ways at once are refused by the parser.
        let missing = Cli::try_parse_from(args(&["--join-file", "/nonexistent/token"])).unwrap();
        assert!(
            missing
                .join_plan()
                .unwrap_err()
                .starts_with("--join-file /nonexistent/token: ")
        );
        let both = args(&["--join", &token, "--join-file", file.to_str().unwrap()]);
        assert!(Cli::try_parse_from(both).is_err());
    }

    #[test]
    fn renew_before_takes_a_number_and_a_unit() {
        assert_eq!(
            parse_renew_before("30d"),
            Ok(Duration::from_secs(30 * 86_400))
        );
        assert_eq!(parse_renew_before("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(
            parse_renew_before(" 12h "),
            Ok(Duration::from_secs(12 * 3600))
        );
        assert_eq!(parse_renew_before("1h 30m"), Ok(Duration::from_secs(5400)));
        for bad in ["", "0d", "30", "d", "-1h", "999999999999999999999d"] {
            assert!(parse_renew_before(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn flags_read_like_docker() {
        assert_eq!(parse_flag("1"), Ok(true));
        assert_eq!(parse_flag("TRUE"), Ok(true));
        assert_eq!(parse_flag(""), Ok(false));
        assert!(parse_flag("maybe").is_err());
        assert!(parse_https_url("http://x:1").is_err());
        assert!(parse_https_url("https://x:1/").is_ok());
        assert_eq!(parse_shutdown_timeout("60"), Ok(Duration::from_secs(60)));
        for bad in ["0", "-1", "3601", "1m", ""] {
            assert!(parse_shutdown_timeout(bad).is_err(), "{bad}");
        }
    }
}

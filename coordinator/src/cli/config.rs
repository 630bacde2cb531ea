//! `serve` and `up` options checked into the typed [`ServeConfig`]: schedule, selection,
//! registries and credentials, rollout policy, metrics, notifications. A bad value stops
//! startup with one line naming the option (exit 64).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use ouroboros_shared::names::*;
use ouroboros_shared::pki::PkiDir;

use super::args::*;
use super::serve::ServeConfig;
use crate::admin::args::Failure;
use crate::detect::Selection;
use crate::detect::credentials::Credentials;
use crate::detect::registry::RegistryConfig;
use crate::plan::schedule::Schedule;

fn secs_ms(seconds: u64) -> i64 {
    i64::try_from(seconds.saturating_mul(1000)).unwrap_or(i64::MAX)
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
                let config = crate::telemetry::export::InfluxConfig {
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
                crate::detect::registry::http_client(&RegistryConfig {
                    extra_ca_pem: Some(pem.clone()),
                    ..RegistryConfig::default()
                })
                .map_err(|e| Failure::usage(format!("--registry-ca {}: {e}", path.display())))?;
                Some(pem)
            }
            None => None,
        };
        let hooks = match &args.hooks_dir {
            Some(dir) if !dir.is_dir() => {
                return Err(Failure::usage(format!(
                    "--hooks-dir {}: not a directory",
                    dir.display()
                )));
            }
            // Absolute, so that each script is found from its own directory.
            Some(dir) => crate::hooks::Hooks::new(
                std::fs::canonicalize(dir)
                    .map_err(|e| Failure::usage(format!("--hooks-dir {}: {e}", dir.display())))?,
                Duration::from_secs(args.hook_timeout),
            ),
            None => crate::hooks::Hooks::none(),
        };
        Ok(ServeConfig {
            data_dir,
            pki,
            heartbeat: Duration::from_secs(u64::from(HEARTBEAT_INTERVAL_SECS)),
            missed_heartbeats: HEARTBEAT_MISSES_ALLOWED,
            schedule,
            detect_only: args.dry_run || args.monitor_only,
            monitor_only: args.monitor_only && !args.dry_run,
            hooks,
            selection: Selection {
                monitor: args.monitor.0,
                ignore: args.ignore.0,
                label_enable: args.label_enable,
                labels_only: args.labels_only,
                self_update: args.self_update,
                latest_only: args.latest_only,
                swarm: args.swarm,
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
            rollout: crate::plan::rollout::Policy {
                max_hosts_in_flight: args.max_hosts_in_flight,
                max_containers_in_flight: args.max_containers_in_flight,
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
            history_retention: args.history_retention,
            metrics_listen: args
                .prometheus_port
                .map(|port| SocketAddr::new(args.prometheus_addr, port)),
            metrics_per_container: args.metrics_per_container,
            influx,
            notifiers,
            startup_notification: !args.skip_startup_notifications,
            agent_lost_after: Duration::from_secs(args.agent_lost_after),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

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
        assert_eq!(ok.policy.interval, crate::plan::schedule::MAX_INTERVAL_SECS);
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
    fn containers_in_flight_per_host_are_one_to_sixty_four() {
        for value in ["0", "65", "many"] {
            refused(
                &["--max-containers-in-flight", value],
                "--max-containers-in-flight",
                value,
            );
        }
        refused(
            &["--max-containers-in-flight=-1"],
            "--max-containers-in-flight",
            "-1",
        );
        let dir = PathBuf::from("/nonexistent");
        let policy = |args: &[&str]| {
            serve(args)
                .unwrap()
                .policy
                .into_config(dir.clone(), PkiDir::new(dir.clone()))
                .map(|c| c.rollout.max_containers_in_flight)
                .ok()
        };
        assert_eq!(policy(&[]), Some(1), "one at a time by default");
        assert_eq!(policy(&["--max-containers-in-flight", "64"]), Some(64));
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
    fn history_retention_is_days_or_a_duration_and_out_of_range_is_refused() {
        let days = serve(&["--history-retention", "7"]).unwrap();
        assert_eq!(
            days.policy.history_retention,
            Duration::from_secs(7 * 24 * 3600)
        );
        let hours = serve(&["--history-retention", "12h"]).unwrap();
        assert_eq!(
            hours.policy.history_retention,
            Duration::from_secs(12 * 3600)
        );
        let default = serve(&[]).unwrap();
        assert_eq!(
            default.policy.history_retention,
            Duration::from_secs(90 * 24 * 3600)
        );
        for value in ["0", "36501", "0s", "500ms", "soon"] {
            refused(
                &["--history-retention", value],
                "--history-retention",
                value,
            );
        }
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
            CanaryArg(crate::plan::rollout::Canary::Count(2))
        );
    }

    #[test]
    fn a_hooks_dir_must_be_a_directory_and_a_hook_timeout_in_range() {
        let failure = config_failure(&["--hooks-dir", "/nonexistent/hooks"]);
        assert_eq!(failure.code, EXIT_USAGE);
        assert_eq!(
            failure.message,
            "--hooks-dir /nonexistent/hooks: not a directory"
        );
        for value in ["0", "2592001", "soon"] {
            refused(&["--hook-timeout", value], "--hook-timeout", value);
        }
        let ok = serve(&["--hook-timeout", "5", "--hooks-dir", "/tmp"]).unwrap();
        assert_eq!(ok.policy.hook_timeout, 5);
        // A relative directory is made absolute (scripts run from their own directory).
        let dir = PathBuf::from("/nonexistent");
        let config = serve(&["--hooks-dir", "src/hooks"])
            .unwrap()
            .policy
            .into_config(dir.clone(), PkiDir::new(dir))
            .unwrap();
        let hooks = config.hooks.dir().unwrap();
        assert!(
            hooks.is_absolute() && hooks.ends_with("coordinator/src/hooks"),
            "{}",
            hooks.display()
        );
    }

    #[test]
    fn history_since_refuses_an_overflowing_duration() {
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(7 * 86_400)));
        assert_eq!(parse_duration("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("1h 30m"), Ok(Duration::from_secs(5400)));
        assert!(parse_duration("999999999999999999d").is_err());
        assert!(parse_duration("soon").is_err());
    }
}

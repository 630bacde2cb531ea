//! Metrics end to end: the coordinator's `/metrics` scraped by a real Prometheus (Debian's),
//! whose query API returns `ouroboros_updates_total` for the updated host; `promtool check
//! metrics` passes on the output; an update of a container the fleet does not have makes no
//! per-container series; `ouroboros_host_connected` follows an agent killed with SIGKILL;
//! counters survive a restart; the Grafana dashboard and the alert rules in `deploy/` only
//! name exported metrics, and the alert rules pass `promtool check` and `promtool test`.

use std::collections::BTreeSet;
use std::io::Write;
use std::time::Duration;

use anyhow::{Context, ensure};
use ouroboros_tests::{
    Binaries, Cleanup, Process, Registry, eventually, exposition, publish, require_engine,
    unique_name,
};

use crate::fleet::Coordinator;

const CONVERGE: Duration = Duration::from_secs(90);
const POLL: Duration = Duration::from_millis(250);

/// A plain HTTP GET: the status code and the body.
fn get(addr: &str, path: &str) -> anyhow::Result<(u16, String)> {
    request(addr, "GET", path, None)
}

/// The address the coordinator's log says metrics are served on.
fn metrics_addr(server: &Process) -> anyhow::Result<String> {
    let line = server.wait_for_log("Metrics listening.", CONVERGE)?;
    line.split_whitespace()
        .find_map(|w| w.strip_prefix("addr="))
        .map(str::to_owned)
        .with_context(|| format!("no addr= in {line:?}"))
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// The `deploy/` file `name`.
fn deploy_file(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy")
        .join(name)
}

/// The sum of the samples of `family` whose labels include `label` (`host="host-a"`).
fn sum_of(text: &str, family: &str, label: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(&format!("{family}{{")) && l.contains(label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Metric names (families) in a Prometheus text exposition.
fn families(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

#[test]
fn prometheus_scrapes_the_fleet_and_counters_survive_a_restart() -> anyhow::Result<()> {
    let Some(engine) = require_engine() else {
        return Ok(());
    };
    let bins = Binaries::get()?;
    let registry = Registry::start()?;
    let on = Cleanup::new(&engine);
    let repo = unique_name("metrics");
    let v1 = publish(&on, &registry, &repo, "stable", 1)?;
    let name = on.run_container("metrics", &["--network", "none"], &v1.reference, &[])?;
    publish(&on, &registry, &repo, "stable", 2)?;

    let dir = tempfile::Builder::new()
        .prefix("ouroboros-test-metrics-")
        .tempdir()?;
    let mut coordinator = Coordinator::init(&bins.coordinator, dir.path(), &["host-a"])?;
    let env = [
        ("MONITOR", name.as_str()),
        ("PROMETHEUS_ADDR", "127.0.0.1"),
        ("PROMETHEUS_PORT", "0"),
    ];
    let server = coordinator.serve_with_env("127.0.0.1:0", &env)?;
    let addr = metrics_addr(&server)?;
    let agent = coordinator.agent(&bins.agent, "host-a", &engine)?;
    eventually(CONVERGE, POLL, || {
        let planned = coordinator.json(&["updates"])?;
        ensure!(
            planned
                .as_array()
                .into_iter()
                .flatten()
                .any(|c| c["decision"] == "update"),
            "not planned yet"
        );
        Ok(())
    })?;
    let (code, checked) = coordinator.admin(&["check"])?;
    assert_eq!(code, 0, "{checked}");

    // An update of a container host-a does not have is counted for the host, and makes no
    // per-container series.
    let (_, before) = get(&addr, "/metrics")?;
    let (code, answer) =
        coordinator.admin(&["update", "--host", "host-a", "--container", "nope"])?;
    assert_ne!(code, 0, "updating a missing container succeeded: {answer}");

    // The endpoint.
    let (status, text) = get(&addr, "/metrics")?;
    assert_eq!(status, 200);
    let host_a = "host=\"host-a\"";
    assert_eq!(
        sum_of(&text, "ouroboros_updates_total", host_a),
        sum_of(&before, "ouroboros_updates_total", host_a) + 1.0,
        "the update of nope was not counted ({answer}):\n{text}"
    );
    assert!(!text.contains("container=\"nope\""), "{text}");
    // Samples are compared by label set: their order on the line means nothing.
    let per_container = |text: &str| {
        let labels = [
            ("host", "host-a"),
            ("container", name.as_str()),
            ("outcome", "updated"),
        ];
        exposition::value(text, "ouroboros_container_updates_total", &labels)
    };
    assert_eq!(per_container(&text), Some(1.0), "{text}");
    let connected = "ouroboros_host_connected{host=\"host-a\"}";
    assert!(text.contains(&format!("{connected} 1\n")), "{text}");
    let updated = "ouroboros_updates_total{host=\"host-a\",outcome=\"updated\"} 1";
    assert!(text.contains(updated), "{text}");
    assert!(text.contains("ouroboros_agents_connected 1"), "{text}");
    assert!(
        text.contains("ouroboros_containers_monitored{host=\"host-a\"} 1"),
        "{text}"
    );
    assert!(
        exposition::samples(&text).iter().any(|s| {
            s.name == "ouroboros_registry_requests_total"
                && s.labels
                    .get("registry")
                    .is_some_and(|r| r.starts_with("127.0.0.1:"))
        }),
        "{text}"
    );
    for family in [
        "ouroboros_agents_connected",
        "ouroboros_hosts",
        "ouroboros_host_connected",
        "ouroboros_containers_monitored",
        "ouroboros_updates_available",
        "ouroboros_updates_total",
        "ouroboros_rollbacks_total",
        "ouroboros_registry_requests_total",
        "ouroboros_registry_probe_seconds",
        "ouroboros_registry_ratelimit_remaining",
        "ouroboros_cycle_seconds",
        "ouroboros_last_cycle_timestamp_seconds",
        "ouroboros_rollouts",
        "ouroboros_notifications_total",
        "ouroboros_container_updates_total",
    ] {
        assert!(families(&text).contains(family), "no {family}:\n{text}");
    }
    assert_eq!(get(&addr, "/healthz")?.0, 200);
    assert_eq!(get(&addr, "/readyz")?.0, 200);
    assert_eq!(get(&addr, "/nothing")?.0, 404);

    // promtool accepts it.
    let mut promtool = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .context("running promtool (Debian's prometheus package)")?;
    promtool
        .stdin
        .take()
        .context("promtool stdin")?
        .write_all(text.as_bytes())?;
    let checked = promtool.wait_with_output()?;
    assert!(
        checked.status.success(),
        "promtool: {}{}",
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr)
    );

    // A real Prometheus scrapes it; its query API has the update of host-a.
    let prom_dir = tempfile::Builder::new()
        .prefix("ouroboros-test-prometheus-")
        .tempdir()?;
    let config = prom_dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: ouroboros\n    static_configs:\n      - targets: [\"{addr}\"]\n"
        ),
    )?;
    let port = free_port()?;
    let listen = format!("127.0.0.1:{port}");
    let prometheus = Process::spawn(
        "prometheus",
        &[
            &format!("--config.file={}", config.display()),
            &format!(
                "--storage.tsdb.path={}",
                prom_dir.path().join("data").display()
            ),
            &format!("--web.listen-address={listen}"),
        ],
        &[],
    )?;
    eventually(CONVERGE, Duration::from_millis(500), || {
        let (status, body) = get(
            &listen,
            "/api/v1/query?query=ouroboros_updates_total%7Bhost%3D%22host-a%22%2Coutcome%3D%22updated%22%7D",
        )?;
        ensure!(status == 200, "query answered {status}: {body}");
        let answer: serde_json::Value = serde_json::from_str(&body)?;
        let result = &answer["data"]["result"][0];
        ensure!(result["metric"]["outcome"] == "updated", "{body}");
        ensure!(result["value"][1] == "1", "{body}");
        Ok(())
    })
    .with_context(|| prometheus.log_tail(20))?;
    drop(prometheus);

    // The dashboard queries only exported metrics.
    let dashboard: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(
        deploy_file("grafana-dashboard.json"),
    )?)?;
    let exported = families(&text);
    let mut queries = 0;
    for panel in dashboard["panels"].as_array().context("panels")? {
        for target in panel["targets"].as_array().context("targets")? {
            let expr = target["expr"].as_str().context("expr")?;
            queries += 1;
            let named: Vec<&str> = expr
                .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .filter(|w| w.starts_with("ouroboros_"))
                .collect();
            ensure!(!named.is_empty(), "{expr} names no ouroboros metric");
            for metric in named {
                let family = metric
                    .trim_end_matches("_bucket")
                    .trim_end_matches("_sum")
                    .trim_end_matches("_count");
                ensure!(
                    exported.contains(family),
                    "{expr}: {metric} is not exported"
                );
            }
        }
    }
    ensure!(queries >= 10, "only {queries} queries");
    // So do the alert rules.
    let rules = std::fs::read_to_string(deploy_file("prometheus-alerts.yml"))?;
    let named: BTreeSet<&str> = rules
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| w.starts_with("ouroboros_"))
        .collect();
    ensure!(named.len() >= 2, "the alert rules name {named:?}");
    for metric in named {
        ensure!(
            exported.contains(metric),
            "alert rules: {metric} is not exported"
        );
    }

    // An agent killed with SIGKILL: its host is known and not connected.
    agent.kill9()?;
    eventually(CONVERGE, POLL, || {
        let (_, text) = get(&addr, "/metrics")?;
        ensure!(text.contains(&format!("{connected} 0\n")), "{text}");
        Ok(())
    })?;

    // Counters survive a restart; the stored count of nope still makes no series.
    server.terminate(Duration::from_secs(20))?;
    drop(server);
    let server = coordinator.serve_with_env("127.0.0.1:0", &env)?;
    let addr = metrics_addr(&server)?;
    let (_, text) = get(&addr, "/metrics")?;
    assert!(text.contains(updated), "counter lost in a restart:\n{text}");
    assert_eq!(per_container(&text), Some(1.0), "{text}");
    assert!(!text.contains("container=\"nope\""), "{text}");
    assert!(text.contains(&format!("{connected} 0\n")), "{text}");
    Ok(())
}

/// Runs `promtool` with `args`; its output on failure.
fn promtool(args: &[&str]) -> anyhow::Result<()> {
    let out = std::process::Command::new("promtool")
        .args(args)
        .output()
        .context("running promtool (Debian's prometheus package)")?;
    ensure!(
        out.status.success(),
        "promtool {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// The alert rules in `deploy/` are valid, loaded by `deploy/prometheus.yml`, and fire when
/// they should (a host disconnected for 5 minutes, no cycle for 30 minutes, the coordinator
/// not scraped for 5 minutes) and not before, per `promtool test rules`.
#[test]
fn the_alert_rules_pass_promtool_and_fire_when_they_should() -> anyhow::Result<()> {
    let rules = deploy_file("prometheus-alerts.yml");
    let rules = rules.to_str().context("path")?;
    promtool(&["check", "rules", rules])?;
    // Also fails when a rule file it names is missing.
    promtool(&[
        "check",
        "config",
        deploy_file("prometheus.yml").to_str().context("path")?,
    ])?;

    let dir = tempfile::Builder::new()
        .prefix("ouroboros-test-alerts-")
        .tempdir()?;
    let tests = dir.path().join("alerts-test.yml");
    // host-b's agent goes away at 2m; the stuck coordinator's last cycle ended at 10m; the
    // restarted one shows 0 until its first cycle at 5m; the coordinator is down from 2m.
    std::fs::write(
        &tests,
        format!(
            r#"rule_files:
  - {rules}
evaluation_interval: 1m
tests:
  - interval: 1m
    input_series:
      - series: 'ouroboros_host_connected{{host="host-a"}}'
        values: '1x30'
      - series: 'ouroboros_host_connected{{host="host-b"}}'
        values: '1 1 0x28'
      - series: 'ouroboros_last_cycle_timestamp_seconds{{instance="fresh"}}'
        values: '0+60x70'
      - series: 'ouroboros_last_cycle_timestamp_seconds{{instance="restarted"}}'
        values: '0x4 300+60x65'
      - series: 'ouroboros_last_cycle_timestamp_seconds{{instance="stuck"}}'
        values: '600x70'
      - series: 'up{{job="ouroboros",instance="c:9185"}}'
        values: '1 1 0x28'
    alert_rule_test:
      - eval_time: 6m
        alertname: OuroborosHostDisconnected
      - eval_time: 8m
        alertname: OuroborosHostDisconnected
        exp_alerts:
          - exp_labels: {{severity: warning, host: host-b}}
            exp_annotations:
              summary: "Ouroboros agent of host-b disconnected"
              description: "The coordinator has had no connection from the agent of host-b for more than 5 minutes."
      - eval_time: 45m
        alertname: OuroborosSchedulerStalled
      - eval_time: 60m
        alertname: OuroborosSchedulerStalled
        exp_alerts:
          - exp_labels: {{severity: critical, instance: stuck}}
            exp_annotations:
              summary: "Ouroboros has run no check cycle for 50m 0s"
              description: "No check cycle ended for more than 30 minutes (the interval is 5 minutes): the scheduler is stuck or a cycle hangs."
      - eval_time: 6m
        alertname: OuroborosCoordinatorDown
      - eval_time: 8m
        alertname: OuroborosCoordinatorDown
        exp_alerts:
          - exp_labels: {{severity: critical, job: ouroboros, instance: "c:9185"}}
            exp_annotations:
              summary: "Ouroboros coordinator c:9185 does not answer scrapes"
              description: "Prometheus could not scrape the coordinator for more than 5 minutes: no figures, and no alerts from them."
"#
        ),
    )?;
    promtool(&["test", "rules", tests.to_str().context("path")?])
}

/// An HTTP request with optional Basic credentials: status and body.
fn request(
    addr: &str,
    method: &str,
    path: &str,
    user: Option<(&str, &str)>,
) -> anyhow::Result<(u16, String)> {
    let auth = user.map(|(u, p)| {
        format!(
            "Basic {}",
            base64::Engine::encode(
                &base64::engine::general_purpose::STANDARD,
                format!("{u}:{p}")
            )
        )
    });
    let headers: Vec<(&str, &str)> = auth
        .as_deref()
        .map(|a| ("Authorization", a))
        .into_iter()
        .collect();
    let answer = ouroboros_tests::http_request(addr, method, path, &headers)?;
    Ok((answer.status, answer.text()))
}

#[test]
fn influxdb_receives_the_figures_after_a_cycle() -> anyhow::Result<()> {
    let Some(engine) = require_engine() else {
        return Ok(());
    };
    let bins = Binaries::get()?;
    // A real InfluxDB 1.x (Debian's), with authentication.
    let influx_dir = tempfile::Builder::new()
        .prefix("ouroboros-test-influxdb-")
        .tempdir()?;
    let (rpc_port, http_port) = (free_port()?, free_port()?);
    let d = influx_dir.path().display();
    let config = influx_dir.path().join("influxdb.conf");
    std::fs::write(
        &config,
        format!(
            "reporting-disabled = true\nbind-address = \"127.0.0.1:{rpc_port}\"\n[meta]\n  dir = \"{d}/meta\"\n[data]\n  dir = \"{d}/data\"\n  wal-dir = \"{d}/wal\"\n[http]\n  bind-address = \"127.0.0.1:{http_port}\"\n  auth-enabled = true\n  log-enabled = false\n[monitor]\n  store-enabled = false\n"
        ),
    )?;
    let influxd = Process::spawn(
        "influxd",
        &["-config", config.to_str().context("path")?],
        &[],
    )?;
    let influx = format!("127.0.0.1:{http_port}");
    let (user, password) = ("ouroboros", "infl?x>pw");
    let q = |s: &str| {
        s.replace(' ', "%20")
            .replace('\'', "%27")
            .replace('"', "%22")
    };
    eventually(CONVERGE, POLL, || {
        let (code, body) = request(&influx, "GET", "/ping", None)?;
        ensure!(code == 204, "ping answered {code}: {body}");
        Ok(())
    })
    .with_context(|| influxd.log_tail(20))?;
    // The first user may be made without credentials; then everything needs them.
    let create_user = format!(
        "/query?q={}",
        q(&format!(
            "CREATE USER {user} WITH PASSWORD '{password}' WITH ALL PRIVILEGES"
        ))
        .replace('?', "%3F")
        .replace('>', "%3E")
    );
    let (code, body) = request(&influx, "POST", &create_user, None)?;
    ensure!(code == 200, "create user: {code} {body}");
    let (code, body) = request(
        &influx,
        "POST",
        "/query?q=CREATE%20DATABASE%20fleet",
        Some((user, password)),
    )?;
    ensure!(code == 200, "create database: {code} {body}");

    let registry = Registry::start()?;
    let on = Cleanup::new(&engine);
    let repo = unique_name("influx");
    let v1 = publish(&on, &registry, &repo, "stable", 1)?;
    let name = on.run_container("influx", &["--network", "none"], &v1.reference, &[])?;
    publish(&on, &registry, &repo, "stable", 2)?;
    let dir = tempfile::Builder::new()
        .prefix("ouroboros-test-influx-")
        .tempdir()?;
    let mut coordinator = Coordinator::init(&bins.coordinator, dir.path(), &["host-a"])?;
    let port = http_port.to_string();
    let server = coordinator.serve_with_env(
        "127.0.0.1:0",
        &[
            ("MONITOR", name.as_str()),
            ("DATA_EXPORT", "influxdb"),
            ("INFLUX_URL", "http://127.0.0.1"),
            ("INFLUX_PORT", &port),
            ("INFLUX_USERNAME", user),
            ("INFLUX_PASSWORD", password),
            ("INFLUX_DATABASE", "fleet"),
        ],
    )?;
    let _agent = coordinator.agent(&bins.agent, "host-a", &engine)?;
    eventually(CONVERGE, POLL, || {
        let planned = coordinator.json(&["updates"])?;
        ensure!(
            planned
                .as_array()
                .into_iter()
                .flatten()
                .any(|c| c["decision"] == "update"),
            "not planned yet"
        );
        Ok(())
    })?;
    let (code, checked) = coordinator.admin(&["check"])?;
    assert_eq!(code, 0, "{checked}");
    let query = format!(
        "/query?db=fleet&q={}",
        q(
            "SELECT last(value) FROM ouroboros_updates_total WHERE host='host-a' AND outcome='updated'"
        )
    );
    eventually(CONVERGE, POLL, || {
        let (code, body) = request(&influx, "GET", &query, Some((user, password)))?;
        ensure!(code == 200, "query: {code} {body}");
        let answer: serde_json::Value = serde_json::from_str(&body)?;
        let value = &answer["results"][0]["series"][0]["values"][0][1];
        ensure!(value == 1, "no point yet: {body}");
        Ok(())
    })?;
    let (_, fleet) = request(
        &influx,
        "GET",
        &format!(
            "/query?db=fleet&q={}",
            q("SELECT last(hosts) FROM ouroboros_fleet")
        ),
        Some((user, password)),
    )?;
    assert!(fleet.contains("\"values\":[["), "{fleet}");
    assert!(
        !server.log().contains(password),
        "the InfluxDB password was logged"
    );
    drop(influxd);
    Ok(())
}

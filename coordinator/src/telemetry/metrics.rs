//! The coordinator's figures: counters, gauges and histograms kept in one process-wide
//! registry, rendered in the Prometheus text format (and as InfluxDB line protocol by
//! [`crate::telemetry::export`]). Counters are persisted in the store and survive restarts. Label sets
//! stay bounded: hosts, registries, outcomes, states, and containers only when per-container
//! series are on, and then only those the fleet view has.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{LazyLock, Mutex};

use serde::{Deserialize, Serialize};

/// Histogram buckets (seconds) of registry probes.
const PROBE_BUCKETS: [f64; 9] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0];
/// Histogram buckets (seconds) of check cycles.
const CYCLE_BUCKETS: [f64; 9] = [0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0];

/// Labels, as `(name, value)` pairs in a fixed order.
pub type Labels = Vec<(&'static str, String)>;

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
struct Histogram {
    buckets: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    fn observe(&mut self, bounds: &[f64], value: f64) {
        if self.buckets.len() != bounds.len() {
            self.buckets = vec![0; bounds.len()];
        }
        for (i, le) in bounds.iter().enumerate() {
            if value <= *le {
                self.buckets[i] += 1;
            }
        }
        self.sum += value;
        self.count += 1;
    }
}

/// Counters, kept across restarts.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Counters {
    /// `host\toutcome` → count.
    pub updates: BTreeMap<String, u64>,
    pub rollbacks: u64,
    /// `registry\tmethod\tcode` → count.
    pub registry_requests: BTreeMap<String, u64>,
    /// `scheme\toutcome` → count.
    pub notifications: BTreeMap<String, u64>,
    /// `host\tcontainer\toutcome` → count (per-container series).
    pub container_updates: BTreeMap<String, u64>,
}

#[derive(Debug, Default)]
struct State {
    counters: Counters,
    probe: Histogram,
    cycle: Histogram,
    last_cycle_seconds: f64,
    updates_available: u64,
    /// By host.
    monitored: BTreeMap<String, u64>,
    /// By registry.
    ratelimit_remaining: BTreeMap<String, f64>,
    /// Counters changed since the last store write.
    dirty: bool,
}

/// The registry of figures.
#[derive(Debug, Default)]
pub struct Metrics {
    state: Mutex<State>,
    /// Per-container update counters (off for large fleets).
    per_container: AtomicBool,
}

/// The process-wide registry.
pub static METRICS: LazyLock<Metrics> = LazyLock::new(|| {
    let m = Metrics::default();
    m.per_container.store(true, Ordering::Relaxed);
    m
});

/// What the fleet says at scrape time (not kept in the registry).
#[derive(Debug, Clone, Default)]
pub struct FleetFigures {
    /// Every host the coordinator knows, and whether its agent is connected now.
    pub host_connected: BTreeMap<String, bool>,
    /// The container names the fleet view has, by host (a disconnected host's last report
    /// included). Per-container series are exported for these pairs only.
    pub containers: BTreeMap<String, BTreeSet<String>>,
    /// Rollouts by state.
    pub rollouts: BTreeMap<String, u64>,
}

impl FleetFigures {
    /// Hosts whose agent is connected now.
    pub fn agents_connected(&self) -> u64 {
        self.host_connected.values().filter(|c| **c).count() as u64
    }

    /// Hosts the coordinator knows.
    pub fn hosts(&self) -> u64 {
        self.host_connected.len() as u64
    }

    /// Whether the fleet view has `container` on `host`.
    fn has_container(&self, host: &str, container: &str) -> bool {
        self.containers
            .get(host)
            .is_some_and(|names| names.contains(container))
    }
}

fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn labels(pairs: &[(&str, &str)]) -> String {
    if pairs.is_empty() {
        return String::new();
    }
    let inner: Vec<String> = pairs
        .iter()
        .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
        .collect();
    format!("{{{}}}", inner.join(","))
}

impl Metrics {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Switches per-container update series on or off.
    pub fn set_per_container(&self, on: bool) {
        self.per_container.store(on, Ordering::Relaxed);
    }

    /// Counters read back from the store at start.
    pub fn restore(&self, counters: Counters) {
        let mut s = self.lock();
        s.counters = counters;
        s.dirty = false;
    }

    /// The counters, when they changed since the last call (for the store).
    pub fn take_dirty(&self) -> Option<Counters> {
        let mut s = self.lock();
        if !s.dirty {
            return None;
        }
        s.dirty = false;
        Some(s.counters.clone())
    }

    /// An update of `container` on `host` ended with `outcome` (`updated`, `rolled-back`, ...).
    /// Every update is counted (and stored); a per-container series is exported only while
    /// the fleet view has the container (see [`Metrics::render`]), so a name that matches no
    /// container (a typo, an id) never becomes a series.
    pub fn update_done(&self, host: &str, container: &str, outcome: &str) {
        let per_container = self.per_container.load(Ordering::Relaxed);
        let mut s = self.lock();
        *s.counters
            .updates
            .entry(format!("{host}\t{outcome}"))
            .or_default() += 1;
        if per_container {
            *s.counters
                .container_updates
                .entry(format!("{host}\t{container}\t{outcome}"))
                .or_default() += 1;
        }
        if matches!(outcome, "rolled-back" | "rollback-failed" | "reverted") {
            s.counters.rollbacks += 1;
        }
        s.dirty = true;
    }

    /// A request to `registry` answered `code` (0: no answer).
    pub fn registry_request(&self, registry: &str, method: &str, code: u16) {
        let mut s = self.lock();
        *s.counters
            .registry_requests
            .entry(format!("{registry}\t{method}\t{code}"))
            .or_default() += 1;
        s.dirty = true;
    }

    /// A probe took `seconds`.
    pub fn probe(&self, seconds: f64) {
        self.lock().probe.observe(&PROBE_BUCKETS, seconds);
    }

    /// The registry's `ratelimit-remaining` (its first number).
    pub fn ratelimit(&self, registry: &str, header: &str) {
        if let Some(n) = header
            .split(';')
            .next()
            .and_then(|n| n.trim().parse::<f64>().ok())
        {
            self.lock()
                .ratelimit_remaining
                .insert(registry.to_owned(), n);
        }
    }

    /// A notification through `scheme` ended with `outcome`.
    pub fn notification(&self, scheme: &str, outcome: &str) {
        let mut s = self.lock();
        *s.counters
            .notifications
            .entry(format!("{scheme}\t{outcome}"))
            .or_default() += 1;
        s.dirty = true;
    }

    /// A cycle ended at `unix_seconds` after `seconds`, having watched `monitored` containers
    /// per host and found `available` updates.
    pub fn cycle(
        &self,
        seconds: f64,
        unix_seconds: f64,
        monitored: BTreeMap<String, u64>,
        available: u64,
    ) {
        let mut s = self.lock();
        s.cycle.observe(&CYCLE_BUCKETS, seconds);
        s.last_cycle_seconds = unix_seconds;
        s.monitored = monitored;
        s.updates_available = available;
    }

    /// Every figure, in the Prometheus text format (version 0.0.4). Per-container series are
    /// limited to the (host, container) pairs of `fleet`; their stored counts are kept either
    /// way, so a series goes on from its count when its container is back in the view.
    pub fn render(&self, fleet: &FleetFigures) -> String {
        let s = self.lock();
        let per_container = self.per_container.load(Ordering::Relaxed);
        let mut out = String::new();
        let mut lines: Vec<String> = Vec::new();
        let emit = |out_lines: &mut Vec<String>, name: &str, l: &[(&str, &str)], v: f64| {
            out_lines.push(format!("{name}{} {}", labels(l), number(v)));
        };
        // Families are written header first, then their samples.
        let flush = |out: &mut String, lines: &mut Vec<String>| {
            for l in lines.drain(..) {
                out.push_str(&l);
                out.push('\n');
            }
        };
        let section = |out: &mut String, name: &str, kind: &str, help: &str| {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} {kind}");
        };

        section(
            &mut out,
            "ouroboros_agents_connected",
            "gauge",
            "Agents connected now.",
        );
        emit(
            &mut lines,
            "ouroboros_agents_connected",
            &[],
            fleet.agents_connected() as f64,
        );
        flush(&mut out, &mut lines);

        section(
            &mut out,
            "ouroboros_hosts",
            "gauge",
            "Hosts the coordinator knows.",
        );
        emit(&mut lines, "ouroboros_hosts", &[], fleet.hosts() as f64);
        flush(&mut out, &mut lines);

        section(
            &mut out,
            "ouroboros_host_connected",
            "gauge",
            "Whether the host's agent is connected now (1) or not (0), for every host the coordinator knows.",
        );
        for (host, connected) in &fleet.host_connected {
            emit(
                &mut lines,
                "ouroboros_host_connected",
                &[("host", host)],
                f64::from(u8::from(*connected)),
            );
        }
        flush(&mut out, &mut lines);

        section(
            &mut out,
            "ouroboros_containers_monitored",
            "gauge",
            "Containers the last cycle watched, by host.",
        );
        for (host, n) in &s.monitored {
            emit(
                &mut lines,
                "ouroboros_containers_monitored",
                &[("host", host)],
                *n as f64,
            );
        }
        flush(&mut out, &mut lines);

        section(
            &mut out,
            "ouroboros_updates_available",
            "gauge",
            "Updates the last cycle found.",
        );
        emit(
            &mut lines,
            "ouroboros_updates_available",
            &[],
            s.updates_available as f64,
        );
        flush(&mut out, &mut lines);

        section(
            &mut out,
            "ouroboros_updates_total",
            "counter",
            "Container updates that ended, by host and outcome.",
        );
        for (key, n) in &s.counters.updates {
            let (host, outcome) = key.split_once('\t').unwrap_or((key, ""));
            emit(
                &mut lines,
                "ouroboros_updates_total",
                &[("host", host), ("outcome", outcome)],
                *n as f64,
            );
        }
        flush(&mut out, &mut lines);

        if per_container {
            section(
                &mut out,
                "ouroboros_container_updates_total",
                "counter",
                "Container updates that ended, by host, container and outcome.",
            );
            for (key, n) in &s.counters.container_updates {
                let mut parts = key.splitn(3, '\t');
                let (host, container, outcome) = (
                    parts.next().unwrap_or(""),
                    parts.next().unwrap_or(""),
                    parts.next().unwrap_or(""),
                );
                if !fleet.has_container(host, container) {
                    continue;
                }
                emit(
                    &mut lines,
                    "ouroboros_container_updates_total",
                    &[
                        ("host", host),
                        ("container", container),
                        ("outcome", outcome),
                    ],
                    *n as f64,
                );
            }
            flush(&mut out, &mut lines);
        }

        section(
            &mut out,
            "ouroboros_rollbacks_total",
            "counter",
            "Updates undone: rolled back by an agent or sent back by a rollout.",
        );
        emit(
            &mut lines,
            "ouroboros_rollbacks_total",
            &[],
            s.counters.rollbacks as f64,
        );
        flush(&mut out, &mut lines);

        section(
            &mut out,
            "ouroboros_registry_requests_total",
            "counter",
            "Registry requests, by registry, method and status code (0: no answer).",
        );
        for (key, n) in &s.counters.registry_requests {
            let mut parts = key.splitn(3, '\t');
            let (registry, method, code) = (
                parts.next().unwrap_or(""),
                parts.next().unwrap_or(""),
                parts.next().unwrap_or(""),
            );
            emit(
                &mut lines,
                "ouroboros_registry_requests_total",
                &[("registry", registry), ("method", method), ("code", code)],
                *n as f64,
            );
        }
        flush(&mut out, &mut lines);

        histogram(
            &mut out,
            "ouroboros_registry_probe_seconds",
            "Time of one tag's registry probe.",
            &PROBE_BUCKETS,
            &s.probe,
        );

        section(
            &mut out,
            "ouroboros_registry_ratelimit_remaining",
            "gauge",
            "The registry's ratelimit-remaining, as last seen.",
        );
        for (registry, n) in &s.ratelimit_remaining {
            emit(
                &mut lines,
                "ouroboros_registry_ratelimit_remaining",
                &[("registry", registry)],
                *n,
            );
        }
        flush(&mut out, &mut lines);

        histogram(
            &mut out,
            "ouroboros_cycle_seconds",
            "Time of one check cycle, its rollout included.",
            &CYCLE_BUCKETS,
            &s.cycle,
        );

        section(
            &mut out,
            "ouroboros_last_cycle_timestamp_seconds",
            "gauge",
            "When the last check cycle ended (unix seconds; 0: none yet).",
        );
        emit(
            &mut lines,
            "ouroboros_last_cycle_timestamp_seconds",
            &[],
            s.last_cycle_seconds,
        );
        flush(&mut out, &mut lines);

        section(
            &mut out,
            "ouroboros_rollouts",
            "gauge",
            "Stored rollouts, by state.",
        );
        for (state, n) in &fleet.rollouts {
            emit(
                &mut lines,
                "ouroboros_rollouts",
                &[("state", state)],
                *n as f64,
            );
        }
        flush(&mut out, &mut lines);

        section(
            &mut out,
            "ouroboros_notifications_total",
            "counter",
            "Notifications sent, by scheme and outcome.",
        );
        for (key, n) in &s.counters.notifications {
            let (scheme, outcome) = key.split_once('\t').unwrap_or((key, ""));
            emit(
                &mut lines,
                "ouroboros_notifications_total",
                &[("scheme", scheme), ("outcome", outcome)],
                *n as f64,
            );
        }
        flush(&mut out, &mut lines);
        out
    }

    /// The same figures as InfluxDB line protocol points at `unix_ns`.
    pub fn line_protocol(&self, fleet: &FleetFigures, unix_ns: i128) -> String {
        let s = self.lock();
        let tag = |v: &str| {
            v.replace(',', "\\,")
                .replace('=', "\\=")
                .replace(' ', "\\ ")
        };
        let mut out = String::new();
        let _ = writeln!(
            out,
            "ouroboros_fleet agents_connected={}i,hosts={}i,updates_available={}i,rollbacks_total={}i,last_cycle_timestamp_seconds={} {unix_ns}",
            fleet.agents_connected(),
            fleet.hosts(),
            s.updates_available,
            s.counters.rollbacks,
            number(s.last_cycle_seconds)
        );
        for (host, connected) in &fleet.host_connected {
            let _ = writeln!(
                out,
                "ouroboros_host_connected,host={} value={}i {unix_ns}",
                tag(host),
                u8::from(*connected)
            );
        }
        for (host, n) in &s.monitored {
            let _ = writeln!(
                out,
                "ouroboros_containers_monitored,host={} value={n}i {unix_ns}",
                tag(host)
            );
        }
        for (key, n) in &s.counters.updates {
            let (host, outcome) = key.split_once('\t').unwrap_or((key, ""));
            let _ = writeln!(
                out,
                "ouroboros_updates_total,host={},outcome={} value={n}i {unix_ns}",
                tag(host),
                tag(outcome)
            );
        }
        for (key, n) in &s.counters.registry_requests {
            let mut parts = key.splitn(3, '\t');
            let _ = writeln!(
                out,
                "ouroboros_registry_requests_total,registry={},method={},code={} value={n}i {unix_ns}",
                tag(parts.next().unwrap_or("")),
                tag(parts.next().unwrap_or("")),
                tag(parts.next().unwrap_or(""))
            );
        }
        for (state, n) in &fleet.rollouts {
            let _ = writeln!(
                out,
                "ouroboros_rollouts,state={} value={n}i {unix_ns}",
                tag(state)
            );
        }
        for (key, n) in &s.counters.notifications {
            let (scheme, outcome) = key.split_once('\t').unwrap_or((key, ""));
            let _ = writeln!(
                out,
                "ouroboros_notifications_total,scheme={},outcome={} value={n}i {unix_ns}",
                tag(scheme),
                tag(outcome)
            );
        }
        let _ = writeln!(
            out,
            "ouroboros_cycle_seconds count={}i,sum={} {unix_ns}",
            s.cycle.count,
            number(s.cycle.sum)
        );
        let _ = writeln!(
            out,
            "ouroboros_registry_probe_seconds count={}i,sum={} {unix_ns}",
            s.probe.count,
            number(s.probe.sum)
        );
        out
    }
}

fn number(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v}")
    }
}

fn histogram(out: &mut String, name: &str, help: &str, bounds: &[f64], h: &Histogram) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} histogram");
    for (i, le) in bounds.iter().enumerate() {
        let n = h.buckets.get(i).copied().unwrap_or(0);
        let _ = writeln!(out, "{name}_bucket{{le=\"{le}\"}} {n}");
    }
    let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {}", h.count);
    let _ = writeln!(out, "{name}_sum {}", number(h.sum));
    let _ = writeln!(out, "{name}_count {}", h.count);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fleet and figures with every family, label values that need escaping in both
    /// formats, a per-container update of a container the view does not have, and a second
    /// cycle; with the fleet view it is rendered for.
    fn busy() -> (Metrics, FleetFigures) {
        let m = Metrics::default();
        m.set_per_container(true);
        for (host, container, outcome) in [
            ("web-01", "shop", "updated"),
            ("web-01", "shop", "updated"),
            ("web-01", "cart", "reverted"),
            ("db-01", "pg", "rolled-back"),
            ("web-01", "gone", "error"),
            ("odd \"h\",x=y z", "c\\d", "updated"),
        ] {
            m.update_done(host, container, outcome);
        }
        for (registry, method, code) in [
            ("registry.lan:5000", "HEAD", 200),
            ("registry.lan:5000", "HEAD", 200),
            ("registry.lan:5000", "GET", 200),
            ("ghcr.io", "GET", 401),
            ("docker.io", "HEAD", 0),
        ] {
            m.registry_request(registry, method, code);
        }
        for seconds in [0.02, 0.3, 7.0] {
            m.probe(seconds);
        }
        m.ratelimit("docker.io", "99;w=21600");
        m.ratelimit("ghcr.io", "12.5");
        m.ratelimit("quay.io", "not a number");
        m.notification("ntfy", "sent");
        m.notification("ntfy", "sent");
        m.notification("smtp", "failed");
        m.cycle(
            1.5,
            1_764_000_000.0,
            BTreeMap::from([("web-01".into(), 3)]),
            2,
        );
        m.cycle(
            42.25,
            1_764_000_300.5,
            BTreeMap::from([
                ("web-01".into(), 2),
                ("db-01".into(), 1),
                ("odd \"h\",x=y z".into(), 1),
            ]),
            1,
        );
        let fleet = FleetFigures {
            host_connected: BTreeMap::from([
                ("web-01".into(), true),
                ("db-01".into(), false),
                ("odd \"h\",x=y z".into(), true),
            ]),
            containers: view(&[
                ("web-01", &["shop", "cart"]),
                ("db-01", &["pg"]),
                ("odd \"h\",x=y z", &["c\\d"]),
            ]),
            rollouts: BTreeMap::from([("completed".into(), 4), ("paused".into(), 1)]),
        };
        (m, fleet)
    }

    /// `fixtures/NAME` is `text` (`UPDATE_FIXTURES=1` writes it).
    fn matches_fixture(name: &str, text: &str) {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("src/telemetry/fixtures")
            .join(name);
        if std::env::var_os("UPDATE_FIXTURES").is_some() {
            std::fs::write(&path, text).unwrap();
        }
        let expected = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text, expected, "{name} differs");
    }

    /// What `/metrics` and the InfluxDB export print, fresh and busy, as recorded.
    #[test]
    fn the_exposition_and_the_line_protocol_are_as_recorded() {
        let fresh = Metrics::default();
        fresh.set_per_container(true);
        matches_fixture("fresh.prom", &fresh.render(&FleetFigures::default()));
        matches_fixture(
            "fresh.influx",
            &fresh.line_protocol(&FleetFigures::default(), 1_764_000_000_000_000_000),
        );
        let (busy, fleet) = busy();
        matches_fixture("busy.prom", &busy.render(&fleet));
        matches_fixture(
            "busy.influx",
            &busy.line_protocol(&fleet, 1_764_000_000_000_000_000),
        );
    }

    /// A fleet view: container names by host.
    fn view(hosts: &[(&str, &[&str])]) -> BTreeMap<String, BTreeSet<String>> {
        hosts
            .iter()
            .map(|(h, names)| {
                let names = names.iter().map(|n| (*n).to_owned()).collect();
                ((*h).to_owned(), names)
            })
            .collect()
    }

    /// The sample lines of `family` (its HELP and TYPE lines left out).
    fn samples<'t>(text: &'t str, family: &str) -> Vec<&'t str> {
        text.lines()
            .filter(|l| {
                l.starts_with(&format!("{family}{{")) || l.starts_with(&format!("{family} "))
            })
            .collect()
    }

    #[test]
    fn per_container_series_exist_only_for_containers_the_fleet_view_has() {
        let m = Metrics::default();
        m.set_per_container(true);
        m.update_done("web-01", "shop", "updated");
        m.update_done("web-01", "nope", "error");
        // A name of another host's container.
        m.update_done("db-01", "shop", "error");
        // A host the view does not have.
        m.update_done("gone-01", "shop", "updated");
        let mut fleet = FleetFigures {
            host_connected: BTreeMap::from([("web-01".into(), true), ("db-01".into(), true)]),
            containers: view(&[("web-01", &["shop"]), ("db-01", &["pg"])]),
            ..FleetFigures::default()
        };
        let text = m.render(&fleet);
        assert_eq!(
            samples(&text, "ouroboros_container_updates_total"),
            [
                "ouroboros_container_updates_total{host=\"web-01\",container=\"shop\",outcome=\"updated\"} 1"
            ],
            "{text}"
        );
        // The updates themselves are still counted by host, and all of it is stored.
        assert!(
            text.contains("ouroboros_updates_total{host=\"web-01\",outcome=\"error\"} 1\n"),
            "{text}"
        );
        let stored = m.take_dirty().unwrap();
        assert_eq!(stored.container_updates.len(), 4, "{stored:?}");
        assert_eq!(stored.updates.values().sum::<u64>(), 4);

        // Out of the view (set aside during a recreate, say), the series is not exported; back
        // in it, the series goes on from its stored count, after a restart too.
        fleet.containers = view(&[("web-01", &[]), ("db-01", &["pg"])]);
        let text = m.render(&fleet);
        assert!(
            samples(&text, "ouroboros_container_updates_total").is_empty(),
            "{text}"
        );
        m.update_done("web-01", "shop", "updated");
        let restarted = Metrics::default();
        restarted.set_per_container(true);
        restarted.restore(m.take_dirty().unwrap());
        fleet.containers = view(&[("web-01", &["shop"]), ("db-01", &["pg"])]);
        assert_eq!(
            samples(
                &restarted.render(&fleet),
                "ouroboros_container_updates_total"
            ),
            [
                "ouroboros_container_updates_total{host=\"web-01\",container=\"shop\",outcome=\"updated\"} 2"
            ]
        );
    }

    #[test]
    fn every_known_host_has_a_connected_gauge_and_nothing_else_does() {
        let m = Metrics::default();
        // Figures of a host the fleet does not know make no host_connected series.
        m.update_done("gone-01", "shop", "updated");
        let fleet = FleetFigures {
            host_connected: BTreeMap::from([
                ("a".into(), true),
                ("b".into(), false),
                ("c\"d".into(), false),
            ]),
            ..FleetFigures::default()
        };
        let text = m.render(&fleet);
        assert_eq!(
            samples(&text, "ouroboros_host_connected"),
            [
                "ouroboros_host_connected{host=\"a\"} 1",
                "ouroboros_host_connected{host=\"b\"} 0",
                "ouroboros_host_connected{host=\"c\\\"d\"} 0",
            ],
            "{text}"
        );
        assert!(text.contains("ouroboros_agents_connected 1\n"), "{text}");
        assert!(text.contains("ouroboros_hosts 3\n"), "{text}");
        let points = m.line_protocol(&fleet, 7);
        for needle in [
            "ouroboros_fleet agents_connected=1i,hosts=3i,",
            "ouroboros_host_connected,host=a value=1i 7\n",
            "ouroboros_host_connected,host=b value=0i 7\n",
        ] {
            assert!(points.contains(needle), "missing {needle:?} in:\n{points}");
        }
        assert!(
            !points.contains("ouroboros_host_connected,host=gone-01"),
            "{points}"
        );

        // No hosts yet: the family is declared and has no samples.
        let text = m.render(&FleetFigures::default());
        assert!(
            text.contains("# TYPE ouroboros_host_connected gauge\n"),
            "{text}"
        );
        assert!(
            samples(&text, "ouroboros_host_connected").is_empty(),
            "{text}"
        );
    }

    #[test]
    fn the_text_format_has_every_family_and_escapes_labels() {
        let m = Metrics::default();
        m.set_per_container(true);
        m.update_done("web-01", "shop", "updated");
        m.update_done("web-01", "shop", "updated");
        m.update_done("db-01", "pg", "rolled-back");
        m.registry_request("registry.lan:5000", "HEAD", 200);
        m.probe(0.02);
        m.ratelimit("docker.io", "99;w=21600");
        m.cycle(
            1.5,
            1_764_000_000.0,
            BTreeMap::from([("web\"01".into(), 3)]),
            2,
        );
        let fleet = FleetFigures {
            host_connected: BTreeMap::from([("web-01".into(), true), ("db-01".into(), false)]),
            containers: view(&[("web-01", &["shop"]), ("db-01", &["pg"])]),
            rollouts: BTreeMap::from([("completed".into(), 4)]),
        };
        let text = m.render(&fleet);
        for needle in [
            "ouroboros_agents_connected 1\n",
            "ouroboros_hosts 2\n",
            "# TYPE ouroboros_host_connected gauge\n",
            "ouroboros_host_connected{host=\"web-01\"} 1\n",
            "ouroboros_host_connected{host=\"db-01\"} 0\n",
            "ouroboros_containers_monitored{host=\"web\\\"01\"} 3\n",
            "ouroboros_updates_available 2\n",
            "ouroboros_updates_total{host=\"web-01\",outcome=\"updated\"} 2\n",
            "ouroboros_updates_total{host=\"db-01\",outcome=\"rolled-back\"} 1\n",
            "ouroboros_container_updates_total{host=\"web-01\",container=\"shop\",outcome=\"updated\"} 2\n",
            "ouroboros_rollbacks_total 1\n",
            "ouroboros_registry_requests_total{registry=\"registry.lan:5000\",method=\"HEAD\",code=\"200\"} 1\n",
            "ouroboros_registry_probe_seconds_bucket{le=\"0.025\"} 1\n",
            "ouroboros_registry_probe_seconds_count 1\n",
            "ouroboros_registry_ratelimit_remaining{registry=\"docker.io\"} 99\n",
            "ouroboros_cycle_seconds_sum 1.5\n",
            "ouroboros_last_cycle_timestamp_seconds 1764000000\n",
            "ouroboros_rollouts{state=\"completed\"} 4\n",
            "# TYPE ouroboros_notifications_total counter\n",
        ] {
            assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
        }
        // Per-container series off: none, and no new ones are counted.
        m.set_per_container(false);
        m.update_done("web-01", "cart", "updated");
        let text = m.render(&fleet);
        assert!(
            !text.contains("ouroboros_container_updates_total"),
            "{text}"
        );
        // Counters go to the store and come back.
        let counters = m.take_dirty().unwrap();
        assert!(m.take_dirty().is_none(), "nothing changed since");
        let restored = Metrics::default();
        restored.restore(counters.clone());
        assert_eq!(restored.lock().counters, counters);
    }
}

//! The coordinator's figures in one prometheus [`Registry`], held by a [`Metrics`] handle
//! made at startup (`cli/serve.rs`) and passed, as a cheap clone, to what records (cycle,
//! runner, admin API, registry client, notifiers) and to what reads (the `/metrics`
//! endpoint, the InfluxDB export). This is the one module that registers metrics; their
//! names, labels and help texts are in [`crate::telemetry::families`].
//!
//! Counters are saved in the store ([`Counters`]) and restored at start, so they survive
//! restarts. The fleet gauges (agents, hosts, rollouts) are set from the fleet view at scrape
//! time. Label sets stay bounded: hosts, registries, outcomes, states, and containers only
//! when per-container series are on, and then only those the fleet view has.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use prometheus::core::{Collector, Desc, MetricVec, MetricVecBuilder};
use prometheus::proto::MetricFamily;
use prometheus::{
    Gauge, GaugeVec, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec,
    Opts, Registry, TextEncoder,
};

use crate::telemetry::counters::{self, Counters};
use crate::telemetry::families::*;

/// The content type of `/metrics` (the text format, version 0.0.4).
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The registry of figures; clones share it.
#[derive(Clone)]
pub struct Metrics(Arc<Inner>);

struct Inner {
    registry: Registry,
    agents_connected: IntGauge,
    hosts: IntGauge,
    host_connected: IntGaugeVec,
    containers_monitored: IntGaugeVec,
    updates_available: IntGauge,
    updates: IntCounterVec,
    container_updates: ContainerUpdates,
    rollbacks: IntCounter,
    registry_requests: IntCounterVec,
    probe: Histogram,
    ratelimit_remaining: GaugeVec,
    cycle: Histogram,
    last_cycle: Gauge,
    rollouts: IntGaugeVec,
    notifications: IntCounterVec,
    hook_runs: IntCounterVec,
    /// Counters changed since the last store write.
    dirty: AtomicBool,
    /// One scrape at a time: its fleet gauges are set, then gathered.
    scrape: Mutex<()>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics")
            .field("per_container", &self.0.container_updates.on)
            .finish_non_exhaustive()
    }
}

/// What the fleet says at scrape time (not kept in the registry between scrapes).
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
}

/// `ouroboros_container_updates_total`, filtered when gathered: every update is counted (and
/// stored), but a series is exported only while the fleet view has its container, so a name
/// that matches no container (a typo, an id) never becomes a series. Off: nothing is counted
/// or exported. A collector of our own because the filter depends on the view.
#[derive(Clone)]
struct ContainerUpdates {
    counts: IntCounterVec,
    on: bool,
    /// The fleet view of the scrape under way: container names by host.
    view: Arc<Mutex<BTreeMap<String, BTreeSet<String>>>>,
}

impl Collector for ContainerUpdates {
    fn desc(&self) -> Vec<&Desc> {
        self.counts.desc()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        if !self.on {
            return Vec::new();
        }
        let view = self.view.lock().unwrap_or_else(|p| p.into_inner());
        let mut families = self.counts.collect();
        for family in &mut families {
            family.mut_metric().retain(|m| {
                let label = |name: &str| {
                    m.get_label()
                        .iter()
                        .find(|pair| pair.name() == name)
                        .map_or("", |pair| pair.value())
                };
                view.get(label(HOST))
                    .is_some_and(|names| names.contains(label(CONTAINER)))
            });
        }
        families
    }
}

fn opts(family: &Family) -> Opts {
    Opts::new(family.name, family.help)
}

/// `collector`, registered in `registry` (its clones share their values).
fn register<C: Collector + Clone + 'static>(
    registry: &Registry,
    collector: C,
) -> Result<C, prometheus::Error> {
    registry.register(Box::new(collector.clone()))?;
    Ok(collector)
}

/// The series of `vec` with label `values`. Their number is the family's, fixed in this
/// file (the tests make every series): a mismatch, prometheus's only refusal, records nothing.
fn series<B: MetricVecBuilder>(vec: &MetricVec<B>, values: &[&str]) -> Option<B::M> {
    vec.get_metric_with_label_values(values).ok()
}

impl Metrics {
    /// Registers every family; `per_container` switches the per-container update series on.
    /// Fails only on an invalid or repeated name in [`crate::telemetry::families`].
    pub fn new(per_container: bool) -> Result<Self, prometheus::Error> {
        let r = Registry::new();
        let histogram = |family: &Family, buckets: &[f64]| {
            Histogram::with_opts(HistogramOpts::from(opts(family)).buckets(buckets.to_vec()))
        };
        let container_updates = ContainerUpdates {
            counts: IntCounterVec::new(
                opts(&CONTAINER_UPDATES_TOTAL),
                CONTAINER_UPDATES_TOTAL.labels,
            )?,
            on: per_container,
            view: Arc::default(),
        };
        let inner = Inner {
            agents_connected: register(&r, IntGauge::with_opts(opts(&AGENTS_CONNECTED))?)?,
            hosts: register(&r, IntGauge::with_opts(opts(&HOSTS))?)?,
            host_connected: register(
                &r,
                IntGaugeVec::new(opts(&HOST_CONNECTED), HOST_CONNECTED.labels)?,
            )?,
            containers_monitored: register(
                &r,
                IntGaugeVec::new(opts(&CONTAINERS_MONITORED), CONTAINERS_MONITORED.labels)?,
            )?,
            updates_available: register(&r, IntGauge::with_opts(opts(&UPDATES_AVAILABLE))?)?,
            updates: register(
                &r,
                IntCounterVec::new(opts(&UPDATES_TOTAL), UPDATES_TOTAL.labels)?,
            )?,
            container_updates: register(&r, container_updates)?,
            rollbacks: register(&r, IntCounter::with_opts(opts(&ROLLBACKS_TOTAL))?)?,
            registry_requests: register(
                &r,
                IntCounterVec::new(
                    opts(&REGISTRY_REQUESTS_TOTAL),
                    REGISTRY_REQUESTS_TOTAL.labels,
                )?,
            )?,
            probe: register(&r, histogram(&REGISTRY_PROBE_SECONDS, &PROBE_BUCKETS)?)?,
            ratelimit_remaining: register(
                &r,
                GaugeVec::new(
                    opts(&REGISTRY_RATELIMIT_REMAINING),
                    REGISTRY_RATELIMIT_REMAINING.labels,
                )?,
            )?,
            cycle: register(&r, histogram(&CYCLE_SECONDS, &CYCLE_BUCKETS)?)?,
            last_cycle: register(&r, Gauge::with_opts(opts(&LAST_CYCLE_TIMESTAMP_SECONDS))?)?,
            rollouts: register(&r, IntGaugeVec::new(opts(&ROLLOUTS), ROLLOUTS.labels)?)?,
            notifications: register(
                &r,
                IntCounterVec::new(opts(&NOTIFICATIONS_TOTAL), NOTIFICATIONS_TOTAL.labels)?,
            )?,
            hook_runs: register(
                &r,
                IntCounterVec::new(opts(&HOOK_RUNS_TOTAL), HOOK_RUNS_TOTAL.labels)?,
            )?,
            registry: r,
            dirty: AtomicBool::new(false),
            scrape: Mutex::new(()),
        };
        Ok(Self(Arc::new(inner)))
    }

    /// Counters read back from the store at start (they replace the current ones).
    pub fn restore(&self, stored: &Counters) {
        let i = &self.0;
        counters::restore(&i.updates, UPDATES_TOTAL.labels, &stored.updates);
        counters::restore(
            &i.registry_requests,
            REGISTRY_REQUESTS_TOTAL.labels,
            &stored.registry_requests,
        );
        counters::restore(
            &i.notifications,
            NOTIFICATIONS_TOTAL.labels,
            &stored.notifications,
        );
        counters::restore(&i.hook_runs, HOOK_RUNS_TOTAL.labels, &stored.hook_runs);
        // Kept with per-container series off too, for when they are on again.
        counters::restore(
            &i.container_updates.counts,
            CONTAINER_UPDATES_TOTAL.labels,
            &stored.container_updates,
        );
        i.rollbacks.reset();
        i.rollbacks.inc_by(stored.rollbacks);
        i.dirty.store(false, Ordering::SeqCst);
    }

    /// The counters, when they changed since the last call (for the store).
    pub fn take_dirty(&self) -> Option<Counters> {
        let i = &self.0;
        if !i.dirty.swap(false, Ordering::SeqCst) {
            return None;
        }
        Some(Counters {
            updates: counters::stored(&i.updates, UPDATES_TOTAL.labels),
            rollbacks: i.rollbacks.get(),
            registry_requests: counters::stored(
                &i.registry_requests,
                REGISTRY_REQUESTS_TOTAL.labels,
            ),
            notifications: counters::stored(&i.notifications, NOTIFICATIONS_TOTAL.labels),
            container_updates: counters::stored(
                &i.container_updates.counts,
                CONTAINER_UPDATES_TOTAL.labels,
            ),
            hook_runs: counters::stored(&i.hook_runs, HOOK_RUNS_TOTAL.labels),
        })
    }

    fn changed(&self) {
        self.0.dirty.store(true, Ordering::SeqCst);
    }

    /// An update of `container` on `host` ended with `outcome` (`updated`, `rolled-back`, ...).
    /// Every update is counted (and stored); a per-container series is exported only while
    /// the fleet view has the container (see [`ContainerUpdates`]).
    pub fn update_done(&self, host: &str, container: &str, outcome: &str) {
        let i = &self.0;
        if let Some(c) = series(&i.updates, &[host, outcome]) {
            c.inc();
        }
        if i.container_updates.on
            && let Some(c) = series(&i.container_updates.counts, &[host, container, outcome])
        {
            c.inc();
        }
        if matches!(outcome, "rolled-back" | "rollback-failed" | "reverted") {
            i.rollbacks.inc();
        }
        self.changed();
    }

    /// A request to `registry` answered `code` (0: no answer).
    pub fn registry_request(&self, registry: &str, method: &str, code: u16) {
        let code = code.to_string();
        if let Some(c) = series(&self.0.registry_requests, &[registry, method, &code]) {
            c.inc();
        }
        self.changed();
    }

    /// A probe took `seconds`.
    pub fn probe(&self, seconds: f64) {
        self.0.probe.observe(seconds);
    }

    /// The registry's `ratelimit-remaining` header (its first number).
    pub fn ratelimit(&self, registry: &str, header: &str) {
        let remaining = header
            .split(';')
            .next()
            .and_then(|n| n.trim().parse::<f64>().ok());
        if let Some(n) = remaining
            && let Some(g) = series(&self.0.ratelimit_remaining, &[registry])
        {
            g.set(n);
        }
    }

    /// A hook script at `point` ended with `outcome` (`ok`, `failed`, `timeout`,
    /// `not-started`).
    pub fn hook_run(&self, point: &str, outcome: &str) {
        if let Some(c) = series(&self.0.hook_runs, &[point, outcome]) {
            c.inc();
        }
        self.changed();
    }

    /// A notification through `scheme` ended with `outcome`.
    pub fn notification(&self, scheme: &str, outcome: &str) {
        if let Some(c) = series(&self.0.notifications, &[scheme, outcome]) {
            c.inc();
        }
        self.changed();
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
        let i = &self.0;
        i.cycle.observe(seconds);
        i.last_cycle.set(unix_seconds);
        // The hosts of this cycle only: one that left is no longer watched.
        i.containers_monitored.reset();
        for (host, n) in &monitored {
            if let Some(g) = series(&i.containers_monitored, &[host]) {
                g.set(i64::try_from(*n).unwrap_or(i64::MAX));
            }
        }
        i.updates_available
            .set(i64::try_from(available).unwrap_or(i64::MAX));
    }

    /// Every family with samples, the fleet gauges set from `fleet` first; the
    /// per-container series limited to the (host, container) pairs of `fleet`.
    pub fn gather(&self, fleet: &FleetFigures) -> Vec<MetricFamily> {
        let i = &self.0;
        let _one_scrape = i.scrape.lock().unwrap_or_else(|p| p.into_inner());
        let count = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        i.agents_connected.set(count(fleet.agents_connected()));
        i.hosts.set(count(fleet.hosts()));
        i.host_connected.reset();
        for (host, connected) in &fleet.host_connected {
            if let Some(g) = series(&i.host_connected, &[host]) {
                g.set(i64::from(*connected));
            }
        }
        i.rollouts.reset();
        for (state, n) in &fleet.rollouts {
            if let Some(g) = series(&i.rollouts, &[state]) {
                g.set(count(*n));
            }
        }
        *i.container_updates
            .view
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = fleet.containers.clone();
        i.registry.gather()
    }

    /// The families `/metrics` lists: all of them, per-container updates only when on.
    pub fn declared(&self) -> impl Iterator<Item = &'static Family> + use<> {
        let per_container = self.0.container_updates.on;
        ALL.iter()
            .filter(move |f| per_container || f.name != CONTAINER_UPDATES_TOTAL.name)
    }

    /// Every figure in the Prometheus text format (version 0.0.4), families in the order of
    /// [`ALL`], samples as the registry sorts them (by label values).
    pub fn render(&self, fleet: &FleetFigures) -> Result<String, prometheus::Error> {
        let gathered = self.gather(fleet);
        let encoder = TextEncoder::new();
        let mut out = String::new();
        for family in self.declared() {
            match gathered.iter().find(|g| g.name() == family.name) {
                Some(g) => encoder.encode_utf8(std::slice::from_ref(g), &mut out)?,
                // Written by hand: the registry leaves out a family without samples and
                // TextEncoder refuses one, but every family is declared, as it always was,
                // so that dashboards and alert rules find theirs before its first sample.
                None => {
                    let _ = writeln!(out, "# HELP {} {}", family.name, family.help);
                    let _ = writeln!(out, "# TYPE {} {}", family.name, family.kind_name());
                }
            }
        }
        Ok(out)
    }
}

/// The setting that holds the counters.
pub const METRICS_SETTING: &str = "metrics";

/// Queues the counters for the store when they changed.
pub fn store_counters(fleet: &crate::fleet::Fleet, metrics: &Metrics) {
    if let Some(counters) = metrics.take_dirty()
        && let Ok(json) = serde_json::to_string(&counters)
    {
        fleet.save_setting(METRICS_SETTING, json);
    }
}

#[cfg(test)]
mod tests;

//! Every figure the coordinator exports, each named once here: metric names, label names,
//! help texts, types and histogram buckets. [`crate::telemetry::metrics`] registers them,
//! `/metrics` lists them in this order, and the InfluxDB export takes its measurement, field
//! and tag names from them. The dashboard and the alert rules in `deploy/` name the same.

use prometheus::proto::MetricType;

/// One metric family as exported.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Family {
    pub name: &'static str,
    pub help: &'static str,
    pub kind: MetricType,
    /// Label names, in the order recording calls give their values, stored counter keys
    /// join them and the InfluxDB export writes its tags.
    pub labels: &'static [&'static str],
}

impl Family {
    /// The type as a `# TYPE` line names it.
    pub fn kind_name(&self) -> &'static str {
        match self.kind {
            MetricType::COUNTER => "counter",
            MetricType::GAUGE => "gauge",
            MetricType::HISTOGRAM => "histogram",
            MetricType::SUMMARY => "summary",
            MetricType::UNTYPED => "untyped",
        }
    }

    /// The name without the common [`PREFIX`] (an InfluxDB field name).
    pub fn short_name(&self) -> &'static str {
        self.name.strip_prefix(PREFIX).unwrap_or(self.name)
    }
}

/// What every metric name starts with.
pub const PREFIX: &str = "ouroboros_";

pub const HOST: &str = "host";
pub const CONTAINER: &str = "container";
pub const OUTCOME: &str = "outcome";
pub const REGISTRY: &str = "registry";
pub const METHOD: &str = "method";
pub const CODE: &str = "code";
pub const SCHEME: &str = "scheme";
pub const STATE: &str = "state";
pub const POINT: &str = "point";

/// Histogram buckets (seconds) of registry probes.
pub const PROBE_BUCKETS: [f64; 9] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0];
/// Histogram buckets (seconds) of check cycles.
pub const CYCLE_BUCKETS: [f64; 9] = [0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0];

pub const AGENTS_CONNECTED: Family = Family {
    name: "ouroboros_agents_connected",
    help: "Agents connected now.",
    kind: MetricType::GAUGE,
    labels: &[],
};
pub const HOSTS: Family = Family {
    name: "ouroboros_hosts",
    help: "Hosts the coordinator knows.",
    kind: MetricType::GAUGE,
    labels: &[],
};
pub const HOST_CONNECTED: Family = Family {
    name: "ouroboros_host_connected",
    help: "Whether the host's agent is connected now (1) or not (0), for every host the coordinator knows.",
    kind: MetricType::GAUGE,
    labels: &[HOST],
};
pub const CONTAINERS_MONITORED: Family = Family {
    name: "ouroboros_containers_monitored",
    help: "Containers the last cycle watched, by host.",
    kind: MetricType::GAUGE,
    labels: &[HOST],
};
pub const UPDATES_AVAILABLE: Family = Family {
    name: "ouroboros_updates_available",
    help: "Updates the last cycle found.",
    kind: MetricType::GAUGE,
    labels: &[],
};
pub const UPDATES_TOTAL: Family = Family {
    name: "ouroboros_updates_total",
    help: "Container updates that ended, by host and outcome.",
    kind: MetricType::COUNTER,
    labels: &[HOST, OUTCOME],
};
pub const CONTAINER_UPDATES_TOTAL: Family = Family {
    name: "ouroboros_container_updates_total",
    help: "Container updates that ended, by host, container and outcome.",
    kind: MetricType::COUNTER,
    labels: &[HOST, CONTAINER, OUTCOME],
};
pub const ROLLBACKS_TOTAL: Family = Family {
    name: "ouroboros_rollbacks_total",
    help: "Updates undone: rolled back by an agent or sent back by a rollout.",
    kind: MetricType::COUNTER,
    labels: &[],
};
pub const REGISTRY_REQUESTS_TOTAL: Family = Family {
    name: "ouroboros_registry_requests_total",
    help: "Registry requests, by registry, method and status code (0: no answer).",
    kind: MetricType::COUNTER,
    labels: &[REGISTRY, METHOD, CODE],
};
pub const REGISTRY_PROBE_SECONDS: Family = Family {
    name: "ouroboros_registry_probe_seconds",
    help: "Time of one tag's registry probe.",
    kind: MetricType::HISTOGRAM,
    labels: &[],
};
pub const REGISTRY_RATELIMIT_REMAINING: Family = Family {
    name: "ouroboros_registry_ratelimit_remaining",
    help: "The registry's ratelimit-remaining, as last seen.",
    kind: MetricType::GAUGE,
    labels: &[REGISTRY],
};
pub const CYCLE_SECONDS: Family = Family {
    name: "ouroboros_cycle_seconds",
    help: "Time of one check cycle, its rollout included.",
    kind: MetricType::HISTOGRAM,
    labels: &[],
};
pub const LAST_CYCLE_TIMESTAMP_SECONDS: Family = Family {
    name: "ouroboros_last_cycle_timestamp_seconds",
    help: "When the last check cycle ended (unix seconds; 0: none yet).",
    kind: MetricType::GAUGE,
    labels: &[],
};
pub const ROLLOUTS: Family = Family {
    name: "ouroboros_rollouts",
    help: "Stored rollouts, by state.",
    kind: MetricType::GAUGE,
    labels: &[STATE],
};
pub const NOTIFICATIONS_TOTAL: Family = Family {
    name: "ouroboros_notifications_total",
    help: "Notifications sent, by scheme and outcome.",
    kind: MetricType::COUNTER,
    labels: &[SCHEME, OUTCOME],
};

pub const HOOK_RUNS_TOTAL: Family = Family {
    name: "ouroboros_hook_runs_total",
    help: "Hook scripts run (--hooks-dir), by hook point and outcome (ok, failed, timeout, not-started).",
    kind: MetricType::COUNTER,
    labels: &[POINT, OUTCOME],
};

/// Every family, in the order `/metrics` lists them.
pub const ALL: [Family; 16] = [
    AGENTS_CONNECTED,
    HOSTS,
    HOST_CONNECTED,
    CONTAINERS_MONITORED,
    UPDATES_AVAILABLE,
    UPDATES_TOTAL,
    CONTAINER_UPDATES_TOTAL,
    ROLLBACKS_TOTAL,
    REGISTRY_REQUESTS_TOTAL,
    REGISTRY_PROBE_SECONDS,
    REGISTRY_RATELIMIT_REMAINING,
    CYCLE_SECONDS,
    LAST_CYCLE_TIMESTAMP_SECONDS,
    ROLLOUTS,
    NOTIFICATIONS_TOTAL,
    HOOK_RUNS_TOTAL,
];

//! What the coordinator tells monitoring. [`families`] names every exported figure;
//! [`metrics`] registers them in a prometheus registry owned by the [`metrics::Metrics`]
//! handle made at startup and passed to what records; [`counters`] is their stored form,
//! so they survive restarts; [`http`] serves `/metrics`, `/healthz` and `/readyz` with hyper;
//! [`export`] writes the same figures to InfluxDB after each cycle.

pub mod counters;
pub mod export;
pub mod families;
pub mod http;
pub mod metrics;

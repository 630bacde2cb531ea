//! What the coordinator tells monitoring: [`metrics`] (Prometheus text format), [`http`]
//! (`/metrics`, `/healthz`, `/readyz`), [`export`] (InfluxDB line protocol after each cycle).

pub mod export;
pub mod http;
pub mod metrics;

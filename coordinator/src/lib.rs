//! The Ouroboros coordinator: one central service for the whole fleet.
//!
//! Layout, each layer using only those above it in this list:
//! - [`plan`]: what to do, pure: the rollout state machine, dependency order, maintenance
//!   windows, the schedule.
//! - [`fleet`]: the fleet view (hosts, their containers, connections) and its store (redb).
//! - [`telemetry`]: Prometheus metrics, their HTTP endpoint, the InfluxDB export.
//! - [`detect`]: update detection: registry client, credentials, one probe per tag.
//! - [`notify`]: notifications (Apprise URLs, delivery, mail).
//! - [`hooks`]: operators' scripts at the 14 hook points (`--hooks-dir`).
//! - [`server`]: the agents' side: mutual TLS, the `AgentGateway` stream, commands to agents.
//! - [`run`]: check cycles and the rollout runner.
//! - [`admin`]: the `Admin` API and the CLI's client for it, with its rendering.
//! - [`cli`]: the command line, and the `serve` and `up` commands that put it all together.

pub mod admin;
pub mod cli;
pub mod detect;
pub mod fleet;
pub mod hooks;
pub mod notify;
pub mod plan;
pub mod run;
pub mod server;
pub mod telemetry;

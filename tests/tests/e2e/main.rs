//! End-to-end tests: real Docker engines, a real registry, the real binaries.
//!
//! One test binary for the whole crate (the project's rule); each area is a module. Tests
//! that need Docker start with `let Some(engine) = require_engine() else { return Ok(()) };`:
//! they skip without an engine, except under `CI=true`, where they fail.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod check;
mod cli;
mod config;
mod containers;
mod docker_tls;
mod enrol;
mod fleet;
mod harness;
mod hooks;
mod images;
mod lifecycle;
mod metrics;
mod modes;
mod multiarch;
mod notify;
mod rollout;
mod selfupdate;
mod shutdown;
mod sim;
mod steer;
mod swarm;
mod up;
mod update;

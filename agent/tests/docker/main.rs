//! The agent against a real Docker engine and a real registry. Skips without an engine,
//! except with `CI=true`, where it fails.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod dependants;
mod fidelity;
mod gate;
mod handover;
mod lifecycle;
mod parallel;
mod recreate;
mod safety;
mod swarm;
mod swarm_failures;

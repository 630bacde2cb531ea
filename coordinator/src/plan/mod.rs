//! What to do, without doing it (pure, unit-tested): [`rollout`] the rollout state machine,
//! [`outcome`] what became of an update,
//! [`deps`] the dependency order of a host's containers, [`window`] maintenance windows,
//! [`schedule`] when cycles run.

pub mod deps;
pub mod outcome;
pub mod rollout;
pub mod schedule;
pub mod window;

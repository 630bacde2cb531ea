//! Doing it: [`cycle`] runs one check cycle (detect, plan a rollout), [`runner`] runs a
//! rollout's commands to its end, state stored before each command; both read time from a
//! [`clock`] and reach agents through [`crate::server::dispatch::Commands`], so that tests can
//! stand in for both.

pub mod clock;
pub mod cycle;
pub mod runner;

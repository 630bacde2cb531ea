//! Doing it: [`cycle`] runs one check cycle (detect, plan a rollout), [`runner`] runs a
//! rollout's commands to its end, state stored before each command.

pub mod cycle;
pub mod runner;

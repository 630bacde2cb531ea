//! Recreating a container on a new image without losing a setting (DESIGN.md section 5,
//! issue 3). So far: [`spec`], the pure derivation of the replacement's create request from
//! the old container and images. The safe sequence, journal and recovery build on it.

pub mod executor;
pub mod journal;
pub mod spec;

//! The Ouroboros coordinator: one central service for the whole fleet.
//!
//! Layout:
//! - [`cli`]: the command line (`pki`, `serve`, admin commands) and its dispatch.
//! - [`server`]: `serve`, the gRPC server behind [`tls`] (mutual TLS, identities, roles).
//! - [`gateway`]: `AgentGateway.Connect`, one stream per agent.
//! - [`admin`]: the `Admin` API; [`admin_client`], [`admin_failure`] and [`output`]: the CLI
//!   side of it.
//! - [`fleet`]: the fleet view; [`store`]: its persistence (redb), written by [`writer`].

pub mod admin;
pub mod admin_client;
pub mod admin_failure;
pub mod cli;
pub mod commands;
pub mod credentials;
pub mod cycle;
pub mod deps;
pub mod detect;
pub mod export;
pub mod fleet;
pub mod gateway;
pub mod http;
pub mod metrics;
pub mod notify;
pub mod output;
pub mod registry;
pub mod rollout;
pub mod runner;
pub mod schedule;
pub mod server;
pub mod smtp;
pub mod store;
pub mod tls;
pub mod up;
pub mod window;
pub mod writer;

//! Code shared by the Ouroboros agent and coordinator.
//!
//! - [`names`]: label keys, environment-variable names, file names and defaults, in one place.
//! - [`echo`]: user values echoed in reasons and messages, bounded.
//! - [`host`]: [`host::HostName`], the validated identity of a Docker host.
//! - [`inventory`]: domain types for what runs on a host, and their proto conversions.
//! - [`reference`]: image references normalized the way Docker does.
//! - [`join`]: join tokens, and enrolment of an agent over TLS pinned to the token's CA.
//! - [`pki`]: the certificate authority, certificate issuing and peer identities for mutual TLS.
//! - [`telemetry`]: log setup.
//! - [`time_fmt`]: timestamps for people and for JSON.
//! - [`backoff`]: capped, jittered exponential backoff for reconnecting agents (the agent's
//!   and the fleet simulator's).

pub mod backoff;
pub mod cli;
pub mod echo;
pub mod files;
pub mod host;
pub mod inventory;
pub mod join;
pub mod names;
pub mod pki;
pub mod reference;
pub mod shutdown;
pub mod telemetry;
pub mod time_fmt;

/// Installs the one rustls crypto provider of the workspace (ring). Call it first in every
/// binary and test harness; calling it again is harmless.
pub fn install_crypto_provider() {
    // An error only means a provider is already installed, which is what we want.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

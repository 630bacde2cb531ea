//! Test harness for Ouroboros's Docker and end-to-end tiers: real Docker engines, a real
//! registry, real processes.
//!
//! Everything here is blocking (plain threads); tests run in parallel threads and parallel
//! processes, so every object gets a [`unique_name`] and nothing assumes an empty engine.
//!
//! # Layout
//!
//! - [`naming`]: [`unique_name`] and the `com.ouroboros.test=1` label.
//! - [`poll`]: [`eventually`], polling with a deadline instead of sleeping.
//! - [`engine`]: [`Engine`], the system engine ([`require_engine`]) or an extra `dockerd` as a
//!   second host ([`Engine::start_extra`]; its containers need `--network none`).
//! - [`registry`]: [`Registry`], distribution 2.8 on a free loopback port, optionally with
//!   htpasswd auth; [`access_log`] parses which requests it served.
//! - [`image`]: busybox test images per version ([`build_image`], [`push_image`],
//!   [`publish`]; multi-arch: [`set_architecture`], [`push_manifest_list`]).
//! - [`swarm`]: [`SwarmGuard`], a single-node swarm on an extra engine, left on drop.
//! - [`cleanup`]: [`Cleanup`], removing a test's containers, networks, volumes and images on
//!   drop, even on panic.
//! - [`process`]: [`Process`], a child with its output in a log file to wait on.
//! - [`binaries`]: [`Binaries`], the agent and coordinator built once per test process.
//! - [`raw_http`]: a tiny HTTP/1.1 client for probes and hand-made requests.
//! - [`exposition`]: samples of a Prometheus text exposition, read by name and label set.
//! - [`sim`]: the fleet simulator behind the `fleet-sim` binary: simulated agents against a
//!   real coordinator.
//! - [`fake_http`]: [`FakeHttp`], the one fake HTTP server (plain or TLS) tests script
//!   answers with and read requests from.
//!
//! # Requirements
//!
//! Root, a Docker engine, and Debian's `docker.io` (`dockerd`, `docker`), `docker-registry`,
//! `busybox-static`, `apache2-utils` (`htpasswd`) and `iproute2` (`ip`, for an extra engine's
//! bridge). Without an engine the Docker tests skip, except under `CI=true`, where they fail.
//! Overrides: `OUROBOROS_TEST_DOCKERD`, `OUROBOROS_TEST_REGISTRY`, `OUROBOROS_TEST_BUSYBOX`,
//! `OUROBOROS_TEST_BIN_DIR`.
//!
//! # Example
//!
//! ```no_run
//! use ouroboros_tests::{Cleanup, Registry, publish, require_engine, unique_name};
//!
//! # fn main() -> anyhow::Result<()> {
//! let Some(engine) = require_engine() else { return Ok(()) };
//! let registry = Registry::start()?;
//! let cleanup = Cleanup::new(&engine);
//! let repo = unique_name("app");
//! let v1 = publish(&cleanup, &registry, &repo, "latest", 1)?;
//! let name = cleanup.run_container("app", &[], &v1.reference, &[])?;
//! assert_eq!(engine.docker(&["exec", &name, "cat", "/version"])?, "1");
//! # Ok(())
//! # }
//! ```

pub mod access_log;
pub mod binaries;
pub mod cleanup;
mod daemon;
pub mod engine;
pub mod exposition;
pub mod fake_http;
pub mod image;
pub mod naming;
pub mod poll;
pub mod process;
pub mod raw_http;
pub mod registry;
pub mod sim;
pub mod swarm;

pub use access_log::AccessEntry;
pub use binaries::Binaries;
pub use cleanup::Cleanup;
pub use daemon::DOCKERD_ENV;
pub use engine::{Engine, in_ci, require_engine};
pub use fake_http::FakeHttp;
pub use image::{
    Behaviour, ImageSpec, TestImage, build_image, build_image_with_dockerfile, publish, push_image,
    push_manifest_list, set_architecture,
};
pub use naming::{TEST_LABEL, TEST_LABEL_ARG, unique_name};
pub use poll::eventually;
pub use process::{LogMark, Process};
pub use raw_http::{HttpResponse, http_request, http_request_unix, http_request_with_body};
pub use registry::Registry;
pub use swarm::SwarmGuard;

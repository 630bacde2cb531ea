//! A Docker engine acting as one host of the fleet, driven through the `docker` CLI.
//!
//! [`Engine::system`] is the machine's engine (`DOCKER_HOST` or `/var/run/docker.sock`), shared
//! with every other test and maybe with a user: tests on it use [`crate::unique_name`] for
//! everything and never assume it is empty. [`Engine::start_extra`] spawns a private `dockerd`
//! (its flags, and why, are in `daemon.rs`) that is stopped and deleted on drop.
//!
//! Containers on an extra engine need `--network none` (or `host`): it has no bridge.
//!
//! Each `Engine` handle has its own Docker CLI config directory (`docker --config`), so a
//! [`Engine::login`] never touches the user's `~/.docker` and never leaks into another test.
//! Clones share the handle (and the daemon): the daemon stops when the last clone is dropped.

use std::fmt;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;

use anyhow::{Context as _, bail};

use crate::daemon::ExtraDaemon;
use crate::raw_http::http_request_unix;

/// The engine used when `DOCKER_HOST` is not set.
pub const DEFAULT_HOST: &str = "unix:///var/run/docker.sock";

/// A Docker engine: the system one or an extra daemon owned by this handle.
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

struct Inner {
    host: String,
    config_dir: tempfile::TempDir,
    daemon: Option<ExtraDaemon>,
    /// TLS TCP address, for engines from [`Engine::start_extra_tls`].
    tcp: Option<String>,
}

impl Engine {
    /// The engine at `DOCKER_HOST` (or [`DEFAULT_HOST`]) if it answers, `None` if not.
    pub fn system() -> anyhow::Result<Option<Engine>> {
        let host = system_host();
        let engine = Engine::with_host(host, None, None)?;
        Ok(engine.ping().is_ok().then_some(engine))
    }

    /// Starts an extra `dockerd` (a second "host") and waits until it answers.
    ///
    /// Needs root and `dockerd`. Run its containers with `--network none`.
    pub fn start_extra() -> anyhow::Result<Engine> {
        let daemon = ExtraDaemon::start(&[]).context("starting an extra dockerd")?;
        let host = format!("unix://{}", daemon.socket().display());
        Engine::with_host(host, Some(daemon), None)
    }

    /// Starts an extra `dockerd` that also listens on `tcp://127.0.0.1:<free port>` with
    /// mutual TLS (`--tlsverify`): `tls_dir` holds `ca.pem`, `server.pem` and `server-key.pem`
    /// (a server certificate for `127.0.0.1`). The harness's own `docker` commands keep using
    /// the unix socket; [`Engine::tcp_host`] is the TLS address.
    pub fn start_extra_tls(tls_dir: &Path) -> anyhow::Result<Engine> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .context("finding a free port")?
            .port();
        let file = |name: &str| tls_dir.join(name).display().to_string();
        let args = [
            "--tlsverify".to_owned(),
            format!("--tlscacert={}", file("ca.pem")),
            format!("--tlscert={}", file("server.pem")),
            format!("--tlskey={}", file("server-key.pem")),
            format!("-H=tcp://127.0.0.1:{port}"),
        ];
        let daemon = ExtraDaemon::start(&args).context("starting an extra dockerd with TLS")?;
        let host = format!("unix://{}", daemon.socket().display());
        Engine::with_host(host, Some(daemon), Some(format!("tcp://127.0.0.1:{port}")))
    }

    /// The TLS TCP address of an engine made by [`Engine::start_extra_tls`].
    pub fn tcp_host(&self) -> Option<&str> {
        self.inner.tcp.as_deref()
    }

    fn with_host(
        host: String,
        daemon: Option<ExtraDaemon>,
        tcp: Option<String>,
    ) -> anyhow::Result<Engine> {
        let config_dir = tempfile::Builder::new()
            .prefix("ouroboros-test-docker-config-")
            .tempdir()
            .context("creating a docker CLI config directory")?;
        Ok(Engine {
            inner: Arc::new(Inner {
                host,
                config_dir,
                daemon,
                tcp,
            }),
        })
    }

    /// The engine address as `docker -H` and `DOCKER_HOST` take it, e.g.
    /// `unix:///tmp/oe-Ab12Cd/docker.sock`.
    pub fn host(&self) -> &str {
        &self.inner.host
    }

    /// The unix socket path, when the engine listens on one.
    pub fn socket(&self) -> Option<&Path> {
        self.inner.host.strip_prefix("unix://").map(Path::new)
    }

    /// Whether this handle owns an extra daemon (as opposed to the shared system engine).
    pub fn is_extra(&self) -> bool {
        self.inner.daemon.is_some()
    }

    /// This handle's Docker CLI config directory: `config.json` there holds the logins made
    /// with [`Engine::login`]. Point a process under test at it with `DOCKER_CONFIG`.
    pub fn config_dir(&self) -> &Path {
        self.inner.config_dir.path()
    }

    /// An extra daemon's log (`None` for the system engine).
    pub fn daemon_log(&self) -> Option<String> {
        self.inner.daemon.as_ref().map(ExtraDaemon::log)
    }

    /// An extra daemon's data root (`None` for the system engine).
    pub fn data_root(&self) -> Option<PathBuf> {
        self.inner.daemon.as_ref().map(ExtraDaemon::data_root)
    }

    /// The directories an extra daemon owns and deletes when dropped (empty for the system
    /// engine).
    pub fn owned_dirs(&self) -> Vec<PathBuf> {
        self.inner
            .daemon
            .as_ref()
            .map(ExtraDaemon::dirs)
            .unwrap_or_default()
    }

    /// Checks that the engine answers `/_ping` (unix sockets) or `docker version` (others).
    pub fn ping(&self) -> anyhow::Result<()> {
        match self.socket() {
            Some(socket) => {
                let response = http_request_unix(socket, "GET", "/_ping", &[])?;
                if response.status != 200 {
                    bail!("/_ping on {} answered {}", self.host(), response.status);
                }
                Ok(())
            }
            None => self
                .docker(&["version", "--format", "{{.Server.APIVersion}}"])
                .map(drop),
        }
    }

    /// A `docker` command aimed at this engine, with this handle's config directory.
    ///
    /// `DOCKER_BUILDKIT=0` selects the classic builder (no buildx plugin here).
    pub fn docker_command(&self) -> Command {
        docker_command(self.host(), self.config_dir())
    }

    /// Runs `docker <args>` and returns its trimmed stdout; on failure the error carries the
    /// exit status and stderr.
    pub fn docker(&self, args: &[&str]) -> anyhow::Result<String> {
        run_docker(self.docker_command(), args)
    }

    /// `docker login` to `registry` (`host:port`), password on stdin, stored in this handle's
    /// config directory only.
    pub fn login(&self, registry: &str, user: &str, password: &str) -> anyhow::Result<()> {
        let mut command = self.docker_command();
        command
            .args(["login", "--username", user, "--password-stdin", registry])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = command.spawn().context("spawning docker login")?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin
                .write_all(password.as_bytes())
                .context("writing the password to docker login")?;
        }
        let output = child.wait_with_output().context("running docker login")?;
        if !output.status.success() {
            bail!(
                "docker login {registry} as {user} failed ({}): {}",
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        Ok(())
    }

    /// `docker logout` from `registry`.
    pub fn logout(&self, registry: &str) -> anyhow::Result<()> {
        self.docker(&["logout", registry]).map(drop)
    }

    /// `docker inspect --format <format> <object>`, trimmed.
    pub fn inspect(&self, object: &str, format: &str) -> anyhow::Result<String> {
        self.docker(&["inspect", "--format", format, object])
    }
}

impl fmt::Debug for Engine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Engine")
            .field("host", &self.inner.host)
            .field("extra", &self.is_extra())
            .finish()
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        if self.daemon.is_none() {
            return;
        }
        // Everything on an extra engine is the test's: remove it all before stopping.
        let docker = || docker_command(&self.host, self.config_dir.path());
        let result = run_docker(docker(), &["ps", "--all", "--quiet"]).and_then(|ids| {
            let ids: Vec<&str> = ids.split_whitespace().collect();
            if ids.is_empty() {
                return Ok(());
            }
            let mut args = vec!["rm", "--force", "--volumes"];
            args.extend(ids);
            run_docker(docker(), &args).map(drop)
        });
        if let Err(error) = result {
            eprintln!(
                "warning: removing containers of extra engine {}: {error:#}",
                self.host
            );
        }
        // Dropping the daemon stops it and deletes its directories.
        self.daemon = None;
    }
}

/// Returns `Some(engine)` for the system engine, or — when none answers — panics under
/// `CI=true` (Docker tests must fail in CI, never skip) and otherwise warns, once per test
/// binary and past the harness's output capture, and returns `None`.
///
/// ```no_run
/// let Some(engine) = ouroboros_tests::require_engine() else { return };
/// ```
pub fn require_engine() -> Option<Engine> {
    match Engine::system() {
        Ok(Some(engine)) => Some(engine),
        Ok(None) if in_ci() => panic!(
            "CI is set but no Docker engine answers at {}: in CI the Docker tests must run, not skip",
            system_host()
        ),
        Ok(None) => {
            // Once per test binary, past the test harness's capture (it hides what passing
            // tests print), so that a green run without an engine is not taken for coverage.
            static TOLD: std::sync::Once = std::sync::Once::new();
            TOLD.call_once(|| {
                use std::io::Write as _;
                let _ = writeln!(
                    std::io::stderr(),
                    "\nWARNING: no Docker engine answers at {}: the Docker-tier tests of this test binary pass WITHOUT RUNNING. Start an engine (or run `bash scripts/test`); with CI=true this is a failure.\n",
                    system_host()
                );
            });
            None
        }
        Err(error) => panic!("looking for a Docker engine: {error:#}"),
    }
}

/// Whether `CI` says we run in CI (`true`, `1` or `yes`, any case).
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| {
        let v = v.trim().to_ascii_lowercase();
        v == "true" || v == "1" || v == "yes"
    })
}

fn system_host() -> String {
    std::env::var("DOCKER_HOST")
        .ok()
        .filter(|h| !h.trim().is_empty())
        .unwrap_or_else(|| DEFAULT_HOST.to_owned())
}

fn docker_command(host: &str, config_dir: &Path) -> Command {
    let mut command = Command::new("docker");
    command
        .arg("--config")
        .arg(config_dir)
        .arg("--host")
        .arg(host)
        .env("DOCKER_BUILDKIT", "0")
        .env("DOCKER_CLI_HINTS", "false")
        .env_remove("DOCKER_CONTEXT");
    command
}

fn run_docker(mut command: Command, args: &[&str]) -> anyhow::Result<String> {
    let output = command
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("spawning docker {}", args.join(" ")))?;
    if !output.status.success() {
        bail!(
            "docker {} failed ({}): {}",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

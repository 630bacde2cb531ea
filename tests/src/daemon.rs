//! An extra `dockerd` on this machine, standing in for a second Docker host.
//!
//! What was found to work on Debian 12 (engine 20.10, system engine on fuse-overlayfs):
//!
//! ```text
//! ip link add oe-XXXXXXXX type bridge                 # its own bridge, made by the harness,
//! ip addr add 169.254.A.B/30 dev oe-XXXXXXXX          # with a tiny link-local subnet
//! dockerd --config-file <state>/daemon.json          # "{}": else /etc/docker/daemon.json is read,
//!                                                     # and its data-root/storage-driver clash
//!         --data-root <state>/data
//!         --exec-root /tmp/oe-XXXXXX                  # short: unix socket paths must stay < 108 bytes
//!         -H unix:///tmp/oe-XXXXXX/docker.sock
//!         --pidfile <state>/docker.pid
//!         --bridge=oe-XXXXXXXX
//!         --iptables=false --ip-masq=false --ip-forward=false
//!         --storage-driver vfs                        # overlay on overlay may not nest; vfs always works
//! ```
//!
//! **Not `--bridge=none`**: with it, dockerd 20.10 deletes the link named `docker0` at start
//! (`removeDefaultBridgeInterface`), i.e. the *system* engine's bridge, and every later
//! `docker run` on the system engine fails with "could not find bridge docker0". With a bridge
//! of its own the extra daemon never touches `docker0`. The /30 subnet leaves room for a
//! single container on that bridge; nothing is masqueraded or forwarded.
//!
//! The daemon starts its own containerd under its exec-root (no `--containerd` given), so two
//! daemons do not share containerd state; no extra namespace flags are needed. It answers
//! `/_ping` after about half a second.
//!
//! Containers on an extra engine must run with `--network none`: the bridge exists only to
//! keep dockerd away from `docker0`, not for traffic. Never `docker network create` there.
//!
//! Shutdown: SIGTERM and wait (SIGKILL after a deadline), kill any process still naming the
//! exec-root (containerd, shims, only after a SIGKILL), unmount whatever is left mounted under
//! the daemon's directories, delete them and the bridge.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

use crate::process::{Process, signal_pid};
use crate::raw_http::http_request_unix;

/// How long a daemon may take to answer `/_ping`.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// How long a daemon may take to stop after SIGTERM before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(20);

/// Environment variable naming the `dockerd` binary, if not `/usr/sbin/dockerd` or on `PATH`.
pub const DOCKERD_ENV: &str = "OUROBOROS_TEST_DOCKERD";

/// A running extra daemon; dropping it stops the daemon and deletes its directories.
pub(crate) struct ExtraDaemon {
    process: Process,
    /// Data root, config file, pid file.
    state_dir: PathBuf,
    /// Short directory: exec-root and API socket.
    exec_root: PathBuf,
    /// Dropped (deleted) after the daemon has stopped.
    _bridge: Bridge,
}

impl ExtraDaemon {
    /// Starts a daemon and waits until it answers `/_ping`.
    pub(crate) fn start(extra_args: &[String]) -> anyhow::Result<ExtraDaemon> {
        let bridge = Bridge::create()?;
        let state_dir = tempfile::Builder::new()
            .prefix("ouroboros-test-engine-")
            .tempdir()
            .context("creating the engine state directory")?
            .keep();
        let exec_root = match tempfile::Builder::new().prefix("oe-").tempdir_in("/tmp") {
            Ok(dir) => dir.keep(),
            Err(error) => {
                remove_dirs(&[&state_dir]);
                return Err(error).context("creating the engine exec-root under /tmp");
            }
        };
        let process = match spawn_dockerd(&state_dir, &exec_root, &bridge.name, extra_args) {
            Ok(process) => process,
            Err(error) => {
                remove_dirs(&[&state_dir, &exec_root]);
                return Err(error);
            }
        };
        // From here on, Drop cleans up even if the daemon never comes up.
        let daemon = ExtraDaemon {
            process,
            state_dir,
            exec_root,
            _bridge: bridge,
        };
        daemon.wait_until_up()?;
        Ok(daemon)
    }

    /// The API socket.
    pub(crate) fn socket(&self) -> PathBuf {
        self.exec_root.join("docker.sock")
    }

    /// The daemon's data root.
    pub(crate) fn data_root(&self) -> PathBuf {
        self.state_dir.join("data")
    }

    /// The daemon's own log.
    pub(crate) fn log(&self) -> String {
        self.process.log()
    }

    /// The directories this daemon owns; all are gone after drop.
    pub(crate) fn dirs(&self) -> Vec<PathBuf> {
        vec![self.state_dir.clone(), self.exec_root.clone()]
    }

    fn wait_until_up(&self) -> anyhow::Result<()> {
        let deadline = Instant::now() + START_TIMEOUT;
        let socket = self.socket();
        loop {
            if let Some(status) = self.process.try_status()? {
                bail!(
                    "dockerd exited with {status} before answering; log tail:\n{}",
                    self.process.log_tail(30)
                );
            }
            let answered = socket.exists()
                && http_request_unix(&socket, "GET", "/_ping", &[]).is_ok_and(|r| r.status == 200);
            if answered {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!(
                    "dockerd did not answer /_ping on {} within {START_TIMEOUT:?}; log tail:\n{}",
                    socket.display(),
                    self.process.log_tail(30)
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for ExtraDaemon {
    fn drop(&mut self) {
        if let Err(error) = self.process.terminate(STOP_TIMEOUT) {
            eprintln!("warning: stopping the extra dockerd: {error:#}");
        }
        kill_processes_naming(&self.exec_root);
        let dirs = [self.state_dir.as_path(), self.exec_root.as_path()];
        unmount_under(&dirs);
        remove_dirs(&dirs);
    }
}

fn spawn_dockerd(
    state_dir: &Path,
    exec_root: &Path,
    bridge: &str,
    extra_args: &[String],
) -> anyhow::Result<Process> {
    let config = state_dir.join("daemon.json");
    fs::write(&config, "{}\n").context("writing daemon.json")?;
    let mut command = Command::new(dockerd_binary());
    command
        .arg("--config-file")
        .arg(&config)
        .arg("--data-root")
        .arg(state_dir.join("data"))
        .arg("--exec-root")
        .arg(exec_root)
        .arg("-H")
        .arg(format!(
            "unix://{}",
            exec_root.join("docker.sock").display()
        ))
        .arg("--pidfile")
        .arg(state_dir.join("docker.pid"))
        .arg(format!("--bridge={bridge}"))
        .args(["--iptables=false", "--ip-masq=false", "--ip-forward=false"])
        .args(["--storage-driver", "vfs"])
        .args(extra_args);
    Process::spawn_command(command)
}

fn dockerd_binary() -> PathBuf {
    if let Some(path) = std::env::var_os(DOCKERD_ENV) {
        return PathBuf::from(path);
    }
    let sbin = Path::new("/usr/sbin/dockerd");
    if sbin.exists() {
        return sbin.to_path_buf();
    }
    PathBuf::from("dockerd")
}

/// A Linux bridge of the extra daemon's own (`oe-` + 8 hex digits) with a random link-local
/// /30; deleted on drop.
struct Bridge {
    name: String,
}

impl Bridge {
    fn create() -> anyhow::Result<Bridge> {
        let routes = ip(&["-4", "route", "show", "table", "all"])?;
        let mut last_error = None;
        for _ in 0..10 {
            let name = format!("oe-{:08x}", fastrand::u32(..));
            let (a, b) = (fastrand::u8(1..=254), fastrand::u8(0..64) * 4);
            let subnet = format!("169.254.{a}.{b}/30");
            if a == 169 || routes.contains(&format!("169.254.{a}.")) {
                continue;
            }
            if let Err(error) = ip(&["link", "add", &name, "type", "bridge"]) {
                last_error = Some(error);
                continue;
            }
            let bridge = Bridge { name };
            let gateway = format!("169.254.{a}.{}/30", b + 1);
            ip(&["addr", "add", &gateway, "dev", &bridge.name])
                .with_context(|| format!("giving bridge {} the subnet {subnet}", bridge.name))?;
            return Ok(bridge);
        }
        Err(last_error.unwrap_or_else(|| anyhow::anyhow!("no free link-local subnet")))
            .context("creating a bridge for the extra dockerd")
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        if let Err(error) = ip(&["link", "del", &self.name]) {
            eprintln!("warning: deleting bridge {}: {error:#}", self.name);
        }
    }
}

/// Runs `ip <args>` (iproute2) and returns its stdout.
fn ip(args: &[&str]) -> anyhow::Result<String> {
    let output = Command::new("ip")
        .args(args)
        .output()
        .context("running ip (iproute2)")?;
    if !output.status.success() {
        bail!(
            "ip {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// SIGKILLs every process (but this one) whose command line names `dir`: the daemon's
/// containerd and shims, left behind only when the daemon itself had to be killed.
fn kill_processes_naming(dir: &Path) {
    let needle = dir.display().to_string();
    let Ok(entries) = fs::read_dir("/proc") else {
        return;
    };
    let own = std::process::id();
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == own {
            continue;
        }
        let Ok(cmdline) = fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        if String::from_utf8_lossy(&cmdline).contains(&needle) {
            eprintln!("warning: killing leftover pid {pid} of an extra dockerd");
            let _ = signal_pid(pid, "KILL");
        }
    }
}

/// Unmounts (deepest first) every mount point under one of `dirs`.
fn unmount_under(dirs: &[&Path]) {
    let Ok(mountinfo) = fs::read_to_string("/proc/self/mountinfo") else {
        return;
    };
    let mut points: Vec<String> = mountinfo
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(|point| point.replace("\\040", " "))
        .filter(|point| dirs.iter().any(|dir| Path::new(point).starts_with(dir)))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.len()));
    points.dedup();
    for point in points {
        let unmounted = Command::new("umount")
            .arg(&point)
            .status()
            .is_ok_and(|s| s.success());
        if !unmounted {
            let _ = Command::new("umount").arg("-l").arg(&point).status();
        }
    }
}

fn remove_dirs(dirs: &[&Path]) {
    for dir in dirs {
        match fs::remove_dir_all(dir) {
            Err(error) if error.kind() != std::io::ErrorKind::NotFound => {
                eprintln!("warning: removing {}: {error}", dir.display());
            }
            _ => {}
        }
    }
}

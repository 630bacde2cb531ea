//! A child process whose output goes to a log file that tests can read and wait on.
//!
//! Used for the binaries under test (agent, coordinator) and for the harness's own servers
//! (`dockerd`, `docker-registry`). Stdout and stderr share one log file in a private temporary
//! directory. Dropping a [`Process`] kills it (SIGKILL); when the drop happens during a panic,
//! the tail of the log is printed to stderr first, so a failed test shows what the process said.

use std::ffi::OsStr;
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

/// How often log and exit checks poll.
const POLL: Duration = Duration::from_millis(50);

/// Lines of log printed when a process is dropped during a panic.
const TAIL_LINES: usize = 40;

/// A position in a process's log, from [`Process::mark`]; later searches start after it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct LogMark(usize);

/// A running child process with its output captured to a file.
pub struct Process {
    name: String,
    pid: u32,
    child: Mutex<Child>,
    log_path: PathBuf,
    _dir: tempfile::TempDir,
}

impl Process {
    /// Spawns `program` with `args` and extra `env` (on top of this process's environment).
    pub fn spawn(
        program: impl AsRef<OsStr>,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> anyhow::Result<Process> {
        let mut command = Command::new(program);
        command.args(args);
        command.envs(env.iter().copied());
        Process::spawn_command(command)
    }

    /// Spawns a prepared command; its stdin, stdout and stderr are replaced.
    pub fn spawn_command(mut command: Command) -> anyhow::Result<Process> {
        let name = Path::new(command.get_program())
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "process".to_owned());
        let dir = tempfile::Builder::new()
            .prefix(&format!("ouroboros-test-{name}-"))
            .tempdir()
            .context("creating the log directory")?;
        let log_path = dir.path().join(format!("{name}.log"));
        let log = File::create(&log_path)
            .with_context(|| format!("creating log file {}", log_path.display()))?;
        let log_err = log.try_clone().context("duplicating the log file handle")?;
        command
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log_err));
        let child = command
            .spawn()
            .with_context(|| format!("spawning {command:?}"))?;
        Ok(Process {
            name,
            pid: child.id(),
            child: Mutex::new(child),
            log_path,
            _dir: dir,
        })
    }

    /// The program's file name, used in messages.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The OS process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Where stdout and stderr go.
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// Everything the process has written so far (lossy UTF-8; empty if unreadable).
    pub fn log(&self) -> String {
        fs::read(&self.log_path)
            .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
            .unwrap_or_default()
    }

    /// The last `lines` lines of the log.
    pub fn log_tail(&self, lines: usize) -> String {
        let log = self.log();
        let all: Vec<&str> = log.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// The current end of the log: pass it to [`Process::wait_for_log_since`] to wait only for
    /// lines written after now.
    pub fn mark(&self) -> LogMark {
        LogMark(self.log().len())
    }

    /// Waits until a log line contains `needle` and returns that line.
    ///
    /// Fails at once if the process exits without having written it, and after `timeout`
    /// otherwise; both errors carry the log's tail.
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) -> anyhow::Result<String> {
        self.wait_for_log_since(LogMark::default(), needle, timeout)
    }

    /// Like [`Process::wait_for_log`], looking only at output written after `mark`.
    pub fn wait_for_log_since(
        &self,
        mark: LogMark,
        needle: &str,
        timeout: Duration,
    ) -> anyhow::Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            // Check for exit before reading, so output written just before exiting is seen.
            let exited = self.try_status()?;
            let log = self.log();
            let fresh = log.get(mark.0..).unwrap_or("");
            if let Some(line) = fresh.lines().find(|line| line.contains(needle)) {
                return Ok(line.to_owned());
            }
            if let Some(status) = exited {
                bail!(
                    "{} (pid {}) exited with {status} without logging {needle:?}; log tail:\n{}",
                    self.name,
                    self.pid,
                    self.log_tail(TAIL_LINES)
                );
            }
            if Instant::now() >= deadline {
                bail!(
                    "{} (pid {}) did not log {needle:?} within {timeout:?}; log tail:\n{}",
                    self.name,
                    self.pid,
                    self.log_tail(TAIL_LINES)
                );
            }
            thread::sleep(POLL);
        }
    }

    /// `Some(status)` once the process has exited (reaping it), `None` while it runs.
    pub fn try_status(&self) -> anyhow::Result<Option<ExitStatus>> {
        self.lock()
            .try_wait()
            .with_context(|| format!("checking whether {} has exited", self.name))
    }

    /// Whether the process is still running.
    pub fn is_running(&self) -> bool {
        matches!(self.try_status(), Ok(None))
    }

    /// Sends SIGKILL and reaps the process.
    pub fn kill9(&self) -> anyhow::Result<ExitStatus> {
        let mut child = self.lock();
        if let Some(status) = child.try_wait().context("checking for exit")? {
            return Ok(status);
        }
        child
            .kill()
            .with_context(|| format!("killing {} (pid {})", self.name, self.pid))?;
        child
            .wait()
            .with_context(|| format!("reaping {} (pid {})", self.name, self.pid))
    }

    /// Sends SIGTERM and waits up to `timeout` for the exit; SIGKILL after that.
    ///
    /// Returns the exit status, and an error if SIGKILL was needed.
    pub fn terminate(&self, timeout: Duration) -> anyhow::Result<ExitStatus> {
        if let Some(status) = self.try_status()? {
            return Ok(status);
        }
        self.signal("TERM")?;
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_status()? {
                return Ok(status);
            }
            if Instant::now() >= deadline {
                let status = self.kill9()?;
                bail!(
                    "{} (pid {}) ignored SIGTERM for {timeout:?} and was killed ({status})",
                    self.name,
                    self.pid
                );
            }
            thread::sleep(POLL);
        }
    }

    /// Sends a signal by name (`TERM`, `HUP`, `STOP`, ...) with `kill(1)`.
    pub fn signal(&self, signal: &str) -> anyhow::Result<()> {
        signal_pid(self.pid, signal)
    }

    fn lock(&self) -> MutexGuard<'_, Child> {
        self.child
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Sends `signal` to `pid` with `kill(1)` (the crate forbids the `unsafe` of `libc::kill`).
pub(crate) fn signal_pid(pid: u32, signal: &str) -> anyhow::Result<()> {
    let output = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .output()
        .context("running kill")?;
    if !output.status.success() {
        bail!(
            "kill -{signal} {pid} failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(())
}

impl Drop for Process {
    fn drop(&mut self) {
        if thread::panicking() {
            eprintln!(
                "--- last lines of {} (pid {}), {} ---\n{}\n--- end of {} ---",
                self.name,
                self.pid,
                self.log_path.display(),
                self.log_tail(TAIL_LINES),
                self.name
            );
        }
        if let Err(error) = self.kill9() {
            eprintln!("warning: {error:#}");
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn captures_output_and_terminates() {
        let process = Process::spawn(
            "sh",
            &["-c", "echo hello; echo oops >&2; trap 'exit 3' TERM; while :; do sleep 1 & wait $!; done"],
            &[("X", "1")],
        )
        .unwrap();
        let line = process
            .wait_for_log("oops", Duration::from_secs(5))
            .unwrap();
        assert_eq!(line, "oops");
        assert!(process.log().contains("hello"));
        let mark = process.mark();
        assert!(
            process
                .wait_for_log_since(mark, "hello", Duration::from_millis(100))
                .is_err()
        );
        let status = process.terminate(Duration::from_secs(5)).unwrap();
        assert_eq!(status.code(), Some(3));
        assert!(!process.is_running());
    }

    #[test]
    fn reports_early_exit() {
        let process = Process::spawn("sh", &["-c", "echo bye; exit 7"], &[]).unwrap();
        let error = process
            .wait_for_log("never", Duration::from_secs(10))
            .unwrap_err();
        let message = format!("{error:#}");
        assert!(message.contains("exited"), "{message}");
        assert!(message.contains("bye"), "{message}");
    }
}

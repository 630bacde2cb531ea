//! Running one hook file: in its own process group, with a cleared environment, the event on
//! stdin, its output read (and kept up to a bound) while it runs, and a deadline after which
//! the whole group is killed.

use std::ffi::OsString;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use ouroboros_shared::names::HOOK_ENV_KEPT;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::process::Command;

/// PATH for a hook when the coordinator has none.
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// How long output is still read after the hook ended (a child it left may hold the pipes).
const DRAIN: Duration = Duration::from_secs(2);

/// How a hook file is started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Runner {
    /// An executable file, run directly.
    Direct,
    /// A `.py` file, run with `python3`.
    Python,
}

impl Runner {
    /// How `path` runs, or `None` when it is not a hook (not a file, neither executable nor
    /// `.py`).
    pub fn of(path: &Path) -> Option<Self> {
        let meta = std::fs::metadata(path).ok()?;
        if !meta.is_file() {
            return None;
        }
        if meta.permissions().mode() & 0o111 != 0 {
            Some(Self::Direct)
        } else if path.extension().is_some_and(|e| e == "py") {
            Some(Self::Python)
        } else {
            None
        }
    }
}

/// How a hook run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum End {
    Exited(i32),
    /// Ended by a signal it did not get from us.
    Signalled,
    /// Past its deadline: its process group was killed.
    TimedOut(Duration),
    /// It could not be started.
    NotStarted(String),
}

impl End {
    pub fn succeeded(&self) -> bool {
        *self == Self::Exited(0)
    }

    /// The outcome label of `ouroboros_hook_runs_total`.
    pub fn outcome(&self) -> &'static str {
        match self {
            Self::Exited(0) => "ok",
            Self::Exited(_) | Self::Signalled => "failed",
            Self::TimedOut(_) => "timeout",
            Self::NotStarted(_) => "not-started",
        }
    }
}

impl std::fmt::Display for End {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Exited(code) => write!(f, "exit {code}"),
            Self::Signalled => write!(f, "ended by a signal"),
            Self::TimedOut(after) => write!(f, "killed after its deadline ({} s)", after.as_secs()),
            Self::NotStarted(why) => write!(f, "could not start: {why}"),
        }
    }
}

/// One hook file's run.
#[derive(Debug, Clone)]
pub struct HookRun {
    /// `point/file`.
    pub hook: String,
    pub end: End,
    /// At most the bound given to [`run`] of each.
    pub stdout: String,
    pub stderr: String,
}

impl HookRun {
    /// `before_update/10-drain.sh: exit 0`.
    pub fn summary(&self) -> String {
        format!("{}: {}", self.hook, self.end)
    }

    /// The first non-empty line of its output (stdout, else stderr), else how it ended.
    pub fn first_line(&self) -> String {
        [&self.stdout, &self.stderr]
            .into_iter()
            .flat_map(|s| s.lines())
            .map(str::trim)
            .find(|l| !l.is_empty())
            .map_or_else(|| self.end.to_string(), str::to_owned)
    }
}

/// Output read so far, shared with the task that reads it (so that what came is kept even
/// when a child the hook left holds the pipe open).
type Sink = std::sync::Arc<std::sync::Mutex<Vec<u8>>>;

/// Reads `from` to its end into `sink`, keeping the first `max` bytes.
async fn bounded(mut from: impl AsyncRead + Unpin, max: usize, sink: Sink) {
    let mut buf = [0u8; 8192];
    loop {
        match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                let mut kept = sink.lock().unwrap_or_else(|p| p.into_inner());
                let room = max.saturating_sub(kept.len());
                kept.extend_from_slice(&buf[..n.min(room)]);
            }
        }
    }
}

/// Reads `from` in a task; the sink holds what came.
fn read_bounded(
    from: Option<impl AsyncRead + Unpin + Send + 'static>,
    max: usize,
) -> (Sink, Option<tokio::task::JoinHandle<()>>) {
    let sink = Sink::default();
    let task = from.map(|from| tokio::spawn(bounded(from, max, sink.clone())));
    (sink, task)
}

/// Of the environment `from`, what a hook may see: [`HOOK_ENV_KEPT`] only (and a PATH).
pub fn kept_environment(
    from: impl Iterator<Item = (OsString, OsString)>,
) -> Vec<(OsString, OsString)> {
    let mut kept: Vec<(OsString, OsString)> = from
        .filter(|(name, _)| HOOK_ENV_KEPT.iter().any(|k| name == k))
        .collect();
    if !kept.iter().any(|(name, _)| name == "PATH") {
        kept.push(("PATH".into(), DEFAULT_PATH.into()));
    }
    kept
}

/// What one run is given.
pub struct Input<'a> {
    /// The event as JSON, for stdin.
    pub json: &'a str,
    /// The whole environment of the hook: [`kept_environment`] and the event's variables.
    pub environment: Vec<(OsString, OsString)>,
    pub timeout: Duration,
    /// Bytes kept of stdout and of stderr each.
    pub max_output: usize,
}

/// Runs `path` as hook `hook` with `input`: its JSON on stdin, nothing but its environment;
/// kills its process group after its timeout.
pub async fn run(hook: &str, path: &Path, how: Runner, input: Input<'_>) -> HookRun {
    let Input {
        json: stdin_json,
        environment,
        timeout,
        max_output,
    } = input;
    let mut command = match how {
        Runner::Direct => Command::new(path),
        Runner::Python => {
            let mut c = Command::new("python3");
            c.arg(path);
            c
        }
    };
    command.env_clear().envs(environment);
    if let Some(dir) = path.parent() {
        command.current_dir(dir);
    }
    command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let ended = |end: End| HookRun {
        hook: hook.to_owned(),
        end,
        stdout: String::new(),
        stderr: String::new(),
    };
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(e) => return ended(End::NotStarted(e.to_string())),
    };
    let group = child.id().and_then(|id| i32::try_from(id).ok());
    // A hook that does not read its stdin must not block: written alongside, errors ignored.
    let stdin = child.stdin.take().map(|mut stdin| {
        let json = stdin_json.as_bytes().to_vec();
        tokio::spawn(async move {
            let _ = stdin.write_all(&json).await;
        })
    });
    let (stdout, stdout_task) = read_bounded(child.stdout.take(), max_output);
    let (stderr, stderr_task) = read_bounded(child.stderr.take(), max_output);
    let end = match tokio::time::timeout(timeout, child.wait()).await {
        Ok(Ok(status)) => status.code().map_or(End::Signalled, End::Exited),
        Ok(Err(e)) => End::NotStarted(e.to_string()),
        Err(_) => {
            kill_group(group);
            let _ = child.kill().await;
            End::TimedOut(timeout)
        }
    };
    // What it started in its group goes with it, so that the pipes close.
    if !end.succeeded() {
        kill_group(group);
    }
    if let Some(task) = stdin {
        task.abort();
    }
    for task in [stdout_task, stderr_task].into_iter().flatten() {
        let abort = task.abort_handle();
        if tokio::time::timeout(DRAIN, task).await.is_err() {
            abort.abort();
        }
    }
    let text = |sink: Sink| {
        String::from_utf8_lossy(&sink.lock().unwrap_or_else(|p| p.into_inner())).into_owned()
    };
    HookRun {
        hook: hook.to_owned(),
        end,
        stdout: text(stdout),
        stderr: text(stderr),
    }
}

/// SIGKILL to process group `group` (the hook's own: it was started as its leader).
fn kill_group(group: Option<i32>) {
    if let Some(pid) = group.and_then(rustix::process::Pid::from_raw) {
        let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
    }
}

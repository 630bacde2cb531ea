//! Hooks: operators' scripts run at the 14 points of an update cycle that Ouroboros had, from
//! `--hooks-dir DIR` (`DIR/{point}/`, every file in name order). Executables run directly,
//! `*.py` files with `python3`, anything else is skipped with a warning. Each gets its
//! [`Event`] as JSON on stdin and as `OUROBOROS_*` variables, in an environment cleared of
//! everything but [`HOOK_ENV_KEPT`] (no credential reaches a hook), a deadline after which its
//! whole process group is killed, and its output captured (bounded) into the log. A `before_*`
//! point's hook that does not exit 0 vetoes that step ([`Fired::veto`]); the rest are
//! informational. Running one file is [`exec`].

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ouroboros_shared::names::*;
use serde::Serialize;
use tracing::{info, warn};

mod exec;
pub use exec::{End, HookRun};

#[cfg(test)]
mod tests;

/// Default deadline of one hook script.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);
/// Output kept of each stream (stdout, stderr) of one hook run; the rest is read and dropped.
pub const MAX_OUTPUT: usize = 64 * 1024;

/// The 14 points, named as Ouroboros named their directories.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Point {
    UpdatesEnumerated,
    BeforeUpdate,
    AfterUpdate,
    BeforeImageCleanup,
    BeforeStopDependsContainer,
    BeforeStartDependsContainer,
    BeforeRecreateHardDependsContainer,
    AfterRecreateHardDependsContainer,
    BeforeSelfUpdate,
    AfterSelfUpdate,
    BeforeSelfCleanup,
    AfterSelfCleanup,
    DryRunUpdate,
    NotifyUpdate,
}

impl Point {
    pub const ALL: [Point; 14] = [
        Self::UpdatesEnumerated,
        Self::BeforeUpdate,
        Self::AfterUpdate,
        Self::BeforeImageCleanup,
        Self::BeforeStopDependsContainer,
        Self::BeforeStartDependsContainer,
        Self::BeforeRecreateHardDependsContainer,
        Self::AfterRecreateHardDependsContainer,
        Self::BeforeSelfUpdate,
        Self::AfterSelfUpdate,
        Self::BeforeSelfCleanup,
        Self::AfterSelfCleanup,
        Self::DryRunUpdate,
        Self::NotifyUpdate,
    ];

    /// The directory name under `--hooks-dir`.
    pub fn name(self) -> &'static str {
        match self {
            Self::UpdatesEnumerated => "updates_enumerated",
            Self::BeforeUpdate => "before_update",
            Self::AfterUpdate => "after_update",
            Self::BeforeImageCleanup => "before_image_cleanup",
            Self::BeforeStopDependsContainer => "before_stop_depends_container",
            Self::BeforeStartDependsContainer => "before_start_depends_container",
            Self::BeforeRecreateHardDependsContainer => "before_recreate_hard_depends_container",
            Self::AfterRecreateHardDependsContainer => "after_recreate_hard_depends_container",
            Self::BeforeSelfUpdate => "before_self_update",
            Self::AfterSelfUpdate => "after_self_update",
            Self::BeforeSelfCleanup => "before_self_cleanup",
            Self::AfterSelfCleanup => "after_self_cleanup",
            Self::DryRunUpdate => "dry_run_update",
            Self::NotifyUpdate => "notify_update",
        }
    }

    /// The point named `name`.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.name() == name)
    }

    /// Whether an agent asks for it inside an operation, when the Docker step is due.
    pub fn asked_by_agents(self) -> bool {
        matches!(
            self,
            Self::BeforeStopDependsContainer
                | Self::BeforeStartDependsContainer
                | Self::BeforeRecreateHardDependsContainer
                | Self::AfterRecreateHardDependsContainer
                | Self::BeforeImageCleanup
                | Self::BeforeSelfCleanup
                | Self::AfterSelfCleanup
        )
    }

    /// Whether a hook failing here stops the step (the `before_*` points).
    pub fn can_veto(self) -> bool {
        self.name().starts_with("before_")
    }
}

/// One update of a cycle's list (`updates_enumerated`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Update {
    pub host: String,
    pub container: String,
    pub image: String,
    pub old_digest: String,
    pub new_digest: String,
}

/// What a hook is told: the JSON on its stdin, and the `OUROBOROS_*` variables. Fields that do
/// not apply at a point are empty; `updates` is there for `updates_enumerated` only.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Event {
    pub hook: String,
    pub rollout: String,
    pub host: String,
    pub container: String,
    pub image: String,
    pub old_digest: String,
    pub new_digest: String,
    /// The dependant the step is about (the `*_depends_container` points).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub dependant: String,
    /// How the step ended (`after_*` points): `updated`, `rolled-back`, ...
    pub outcome: String,
    pub reason: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub updates: Option<Vec<Update>>,
}

impl Event {
    /// The variables a hook gets besides [`HOOK_ENV_KEPT`].
    fn variables(&self, json: &str) -> Vec<(&'static str, String)> {
        let mut vars = vec![
            (HOOK_ENV_HOOK, self.hook.clone()),
            (HOOK_ENV_ROLLOUT, self.rollout.clone()),
            (HOOK_ENV_HOST, self.host.clone()),
            (HOOK_ENV_CONTAINER, self.container.clone()),
            (HOOK_ENV_IMAGE, self.image.clone()),
            (HOOK_ENV_OLD_DIGEST, self.old_digest.clone()),
            (HOOK_ENV_NEW_DIGEST, self.new_digest.clone()),
            (HOOK_ENV_OUTCOME, self.outcome.clone()),
            (HOOK_ENV_DEPENDANT, self.dependant.clone()),
            (HOOK_ENV_REASON, self.reason.clone()),
            (HOOK_ENV_EVENT, json.to_owned()),
        ];
        if let Some(updates) = &self.updates {
            let lines: Vec<String> = updates
                .iter()
                .map(|u| format!("{}/{} {} {}", u.host, u.container, u.image, u.new_digest))
                .collect();
            vars.push((HOOK_ENV_UPDATES, lines.join("\n")));
        }
        vars
    }
}

/// A `before_*` hook said no.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Veto {
    /// `point/file`.
    pub hook: String,
    /// Its first line of output (stdout, else stderr), or how it ended.
    pub line: String,
}

impl std::fmt::Display for Veto {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "vetoed by hook {}: {}", self.hook, self.line)
    }
}

/// What firing one point did.
#[derive(Debug, Default)]
pub struct Fired {
    pub runs: Vec<HookRun>,
    /// Set at a `before_*` point when one of its hooks failed (those after it did not run).
    pub veto: Option<Veto>,
}

impl Fired {
    /// One line per run (`before_update/10-drain.sh: exit 0`), for the rollout's record.
    pub fn summaries(&self) -> Vec<String> {
        self.runs.iter().map(HookRun::summary).collect()
    }
}

/// The hooks of `--hooks-dir` (none without one).
#[derive(Debug, Clone)]
pub struct Hooks {
    dir: Option<PathBuf>,
    timeout: Duration,
    /// The environment hooks inherit from (filtered): the process's when `None`.
    environment: Option<Vec<(OsString, OsString)>>,
    /// Where runs are counted (`ouroboros_hook_runs_total`).
    metrics: Option<crate::telemetry::metrics::Metrics>,
}

impl Default for Hooks {
    fn default() -> Self {
        Self::none()
    }
}

impl Hooks {
    /// No hooks: every point fires nothing.
    pub fn none() -> Self {
        Self {
            dir: None,
            timeout: DEFAULT_TIMEOUT,
            environment: None,
            metrics: None,
        }
    }

    /// The hooks under `dir`, each allowed `timeout`.
    pub fn new(dir: PathBuf, timeout: Duration) -> Self {
        Self {
            dir: Some(dir),
            timeout,
            environment: None,
            metrics: None,
        }
    }

    /// Counts every run in `metrics`.
    pub fn with_metrics(mut self, metrics: crate::telemetry::metrics::Metrics) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// Hooks inherit (what [`exec::kept_environment`] keeps of) `environment` instead of the
    /// process's.
    pub fn with_environment(mut self, environment: Vec<(OsString, OsString)>) -> Self {
        self.environment = Some(environment);
        self
    }

    pub fn is_empty(&self) -> bool {
        self.dir.is_none()
    }

    /// The directory of the hooks, if any.
    pub fn dir(&self) -> Option<&Path> {
        self.dir.as_deref()
    }

    /// How long an agent waits for the verdict at a point it asks for: every script of the
    /// fullest point's directory at its deadline, and a margin. Zero without hooks.
    pub fn verdict_deadline(&self) -> Duration {
        if self.is_empty() {
            return Duration::ZERO;
        }
        let most = Point::ALL
            .iter()
            .map(|p| self.scripts(*p).len())
            .max()
            .unwrap_or(0)
            .max(1);
        self.timeout * u32::try_from(most).unwrap_or(u32::MAX) + Duration::from_secs(10)
    }

    /// The files of `point`'s directory in name order, with how each is run (`None`: skipped).
    fn scripts(&self, point: Point) -> Vec<(PathBuf, Option<exec::Runner>)> {
        let Some(dir) = &self.dir else {
            return Vec::new();
        };
        let dir = dir.join(point.name());
        let Ok(entries) = std::fs::read_dir(&dir) else {
            return Vec::new();
        };
        let mut files: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
        files.sort();
        files
            .into_iter()
            .map(|path| {
                let how = exec::Runner::of(&path);
                (path, how)
            })
            .collect()
    }

    /// Runs `point`'s hooks in name order with `event` (its `hook` field set here). At a
    /// `before_*` point the first hook that fails vetoes, and the rest do not run.
    pub async fn fire(&self, point: Point, event: &Event) -> Fired {
        let mut fired = Fired::default();
        for (path, how) in self.scripts(point) {
            let hook = format!("{}/{}", point.name(), file_name(&path));
            let Some(how) = how else {
                warn!(hook = %hook, "Hook skipped: neither executable nor a .py file.");
                continue;
            };
            let mut event = event.clone();
            event.hook = point.name().to_owned();
            let json = serde_json::to_string(&event).unwrap_or_default();
            let inherited = match &self.environment {
                Some(env) => exec::kept_environment(env.iter().cloned()),
                None => exec::kept_environment(std::env::vars_os()),
            };
            let mut environment = inherited;
            environment.extend(
                event
                    .variables(&json)
                    .into_iter()
                    .map(|(k, v)| (OsString::from(k), OsString::from(v))),
            );
            let input = exec::Input {
                json: &json,
                environment,
                timeout: self.timeout,
                max_output: MAX_OUTPUT,
            };
            let run = exec::run(&hook, &path, how, input).await;
            log_run(&run, &event);
            if let Some(m) = &self.metrics {
                m.hook_run(point.name(), run.end.outcome());
            }
            let failed = !run.end.succeeded();
            if failed && point.can_veto() {
                fired.veto = Some(Veto {
                    hook: hook.clone(),
                    line: run.first_line(),
                });
                fired.runs.push(run);
                break;
            }
            fired.runs.push(run);
        }
        fired
    }
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// The run in the log, its output with it (bounded by [`MAX_OUTPUT`] already).
fn log_run(run: &HookRun, event: &Event) {
    if run.end.succeeded() {
        info!(hook = %run.hook, host = %event.host, container = %event.container, rollout = %event.rollout, end = %run.end, stdout = %run.stdout, stderr = %run.stderr, "Hook ran.");
    } else {
        warn!(hook = %run.hook, host = %event.host, container = %event.container, rollout = %event.rollout, end = %run.end, stdout = %run.stdout, stderr = %run.stderr, "Hook failed.");
    }
}

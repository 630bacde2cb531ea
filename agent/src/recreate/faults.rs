//! Fault injection for the crash tests: a crash (or a test's action) right after a named step
//! of the sequence. Library tests return at the point and leave Docker and the journal as they
//! are; the agent binary, built with the `failpoints` feature, hangs there to be killed.

use std::sync::Arc;

use tracing::warn;

use super::ops::Interrupt;

/// Places where a crash is injected: right after the named step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CrashPoint {
    /// After the first dependant was stopped, before the container itself.
    AfterDependantStop,
    AfterStop,
    AfterRename,
    AfterCreate,
    AfterStart,
    /// While waiting for the health gate (after its first look).
    DuringHealthWait,
    /// The replacement passed its health gate; no dependant recreated yet.
    AfterHealthGate,
    /// A dependant's old container was set aside.
    AfterDependantRename,
    /// A dependant's replacement was created.
    AfterDependantCreate,
    /// Everything passed; the old containers are about to be removed.
    BeforeRemoveOld,
    /// When a failure is about to be rolled back.
    BeforeRollback,
    /// A Swarm service update read the service (its spec and version) and is about to send
    /// the new spec (the Swarm service update).
    AfterServiceRead,
}

impl CrashPoint {
    /// Every point, with its name for `OUROBOROS_FAILPOINT`.
    pub const ALL: [(&'static str, CrashPoint); 12] = [
        ("after-dependant-stop", Self::AfterDependantStop),
        ("after-stop", Self::AfterStop),
        ("after-rename", Self::AfterRename),
        ("after-create", Self::AfterCreate),
        ("after-start", Self::AfterStart),
        ("during-health", Self::DuringHealthWait),
        ("after-health-gate", Self::AfterHealthGate),
        ("after-dependant-rename", Self::AfterDependantRename),
        ("after-dependant-create", Self::AfterDependantCreate),
        ("before-remove-old", Self::BeforeRemoveOld),
        ("before-rollback", Self::BeforeRollback),
        ("after-service-read", Self::AfterServiceRead),
    ];

    /// Parses a name of [`CrashPoint::ALL`] (`after-stop`, `during-health`, ...).
    pub fn parse(value: &str) -> Option<Self> {
        Self::ALL
            .iter()
            .find(|(name, _)| *name == value)
            .map(|(_, p)| *p)
    }
}

/// What an injected crash does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CrashMode {
    /// Return [`super::executor::RecreateError::Crashed`] at once, leaving Docker and the
    /// journal as they are (library tests).
    Return,
    /// Log and hang at the point, for the test to SIGKILL the process (end-to-end tests of
    /// the binary).
    Hang,
}

/// A test's action at a [`CrashPoint`] (fault injection: take a port, kill a process, ...).
pub type Hook = Arc<dyn Fn() + Send + Sync>;

/// The faults a recreator injects (none outside tests).
#[derive(Clone, Default)]
pub(crate) struct Faults {
    pub(crate) crash: Option<(CrashPoint, CrashMode)>,
    pub(crate) hooks: Vec<(CrashPoint, Hook)>,
    /// Removing an old container after a successful update fails.
    pub(crate) fail_removal: bool,
}

impl Faults {
    /// Runs the hooks of `point`, then crashes there if asked to.
    pub(crate) async fn at(&self, point: CrashPoint) -> Result<(), Interrupt> {
        for (p, hook) in &self.hooks {
            if *p == point {
                hook();
            }
        }
        match self.crash {
            Some((p, CrashMode::Hang)) if p == point => {
                warn!(
                    ?point,
                    "Hanging at the injected crash point; waiting to be killed."
                );
                std::future::pending().await
            }
            Some((p, CrashMode::Return)) if p == point => Err(Interrupt::Crashed(point)),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_point_parses_by_its_name() {
        for (name, point) in CrashPoint::ALL {
            assert_eq!(CrashPoint::parse(name), Some(point));
        }
        assert_eq!(CrashPoint::parse("nowhere"), None);
    }
}

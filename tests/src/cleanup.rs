//! Removing what a test created on an engine, even when the test panics.
//!
//! A [`Cleanup`] is bound to one [`Engine`]. Objects are tracked *before* they are created (so
//! a half-created one is still removed) and removed on drop: containers first (with their
//! anonymous volumes), then networks, volumes and image references. Its helpers create objects
//! with a [`unique_name`] and the label `com.ouroboros.test=1`.
//!
//! As a guard for a shared engine, only names containing [`NAME_MARKER`] can be tracked: a test
//! bug can never delete a user's container.
//!
//! Declare the `Cleanup` after the registry and engine it uses, so it is dropped first.

use std::sync::Mutex;

use anyhow::ensure;

use crate::engine::Engine;
use crate::naming::{NAME_MARKER, TEST_LABEL, TEST_LABEL_ARG, unique_name};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Container,
    Network,
    Volume,
    Image,
    /// An image id; removed only if the image carries the test label.
    ImageId,
}

impl Kind {
    /// Removal order: containers hold networks, volumes and images.
    const ORDER: [Kind; 5] = [
        Kind::Container,
        Kind::Network,
        Kind::Volume,
        Kind::Image,
        Kind::ImageId,
    ];

    fn remove_args(self) -> &'static [&'static str] {
        match self {
            Kind::Container => &["rm", "--force", "--volumes"],
            Kind::Network => &["network", "rm"],
            Kind::Volume => &["volume", "rm", "--force"],
            Kind::Image | Kind::ImageId => &["rmi", "--force"],
        }
    }
}

/// Tracks and, on drop, removes a test's Docker objects on one engine.
pub struct Cleanup {
    engine: Engine,
    tracked: Mutex<Vec<(Kind, String)>>,
}

impl Cleanup {
    /// A guard for objects on `engine`.
    pub fn new(engine: &Engine) -> Cleanup {
        Cleanup {
            engine: engine.clone(),
            tracked: Mutex::new(Vec::new()),
        }
    }

    /// The engine the objects live on.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Removes container `name` (by name or id) on drop.
    pub fn track_container(&self, name: &str) -> anyhow::Result<()> {
        self.track(Kind::Container, name)
    }

    /// Removes network `name` on drop.
    pub fn track_network(&self, name: &str) -> anyhow::Result<()> {
        self.track(Kind::Network, name)
    }

    /// Removes volume `name` on drop.
    pub fn track_volume(&self, name: &str) -> anyhow::Result<()> {
        self.track(Kind::Volume, name)
    }

    /// Removes image reference `reference` on drop (the image goes with its last reference).
    pub fn track_image(&self, reference: &str) -> anyhow::Result<()> {
        self.track(Kind::Image, reference)
    }

    /// Removes the image with id `id` on drop, with all its tags, if it carries the label
    /// `com.ouroboros.test=1` then. Catches images whose tag moved to a newer build.
    pub fn track_image_id(&self, id: &str) -> anyhow::Result<()> {
        ensure!(!id.trim().is_empty(), "empty image id");
        self.lock().push((Kind::ImageId, id.trim().to_owned()));
        Ok(())
    }

    /// `docker run --detach --name <unique> --label com.ouroboros.test=1 <options> <image>
    /// <command>`; returns the container name. On an extra engine pass `--network none`.
    pub fn run_container(
        &self,
        prefix: &str,
        options: &[&str],
        image: &str,
        command: &[&str],
    ) -> anyhow::Result<String> {
        let name = unique_name(prefix);
        self.run_named(&name, options, image, command)?;
        Ok(name)
    }

    /// Like [`Cleanup::run_container`], under `name` (tracked for removal).
    pub fn run_named(
        &self,
        name: &str,
        options: &[&str],
        image: &str,
        command: &[&str],
    ) -> anyhow::Result<()> {
        self.track_container(name)?;
        let mut args = vec!["run", "--detach", "--name", name, "--label", TEST_LABEL_ARG];
        args.extend_from_slice(options);
        args.push(image);
        args.extend_from_slice(command);
        self.engine.docker(&args)?;
        Ok(())
    }

    /// `docker network create --label com.ouroboros.test=1 <options> <unique>`; returns the
    /// name. Not on an extra engine: a bridge network there would add a Linux bridge.
    pub fn create_network(&self, prefix: &str, options: &[&str]) -> anyhow::Result<String> {
        let name = unique_name(prefix);
        self.track_network(&name)?;
        let mut args = vec!["network", "create", "--label", TEST_LABEL_ARG];
        args.extend_from_slice(options);
        args.push(&name);
        self.engine.docker(&args)?;
        Ok(name)
    }

    /// `docker volume create --label com.ouroboros.test=1 <unique>`; returns the name.
    pub fn create_volume(&self, prefix: &str) -> anyhow::Result<String> {
        let name = unique_name(prefix);
        self.track_volume(&name)?;
        self.engine
            .docker(&["volume", "create", "--label", TEST_LABEL_ARG, &name])?;
        Ok(name)
    }

    /// Removes everything tracked now (the same as dropping), reporting failures as an error.
    pub fn remove_all(&self) -> anyhow::Result<()> {
        let tracked = std::mem::take(&mut *self.lock());
        let mut failures = Vec::new();
        for kind in Kind::ORDER {
            // Newest first: a later object may depend on an earlier one.
            for (_, name) in tracked.iter().rev().filter(|(k, _)| *k == kind) {
                if kind == Kind::ImageId && !self.is_test_image(name) {
                    continue;
                }
                if kind == Kind::Container {
                    // A recreate interrupted by a failing test leaves the old container under
                    // `<name>-ouroboros-old-<op>`: it belongs to the test too.
                    self.remove_set_aside(name);
                }
                let mut args = kind.remove_args().to_vec();
                args.push(name);
                if let Err(error) = self.engine.docker(&args) {
                    let message = format!("{error:#}");
                    if !is_missing(&message) {
                        failures.push(message);
                    }
                }
            }
        }
        ensure!(
            failures.is_empty(),
            "cleanup failed: {}",
            failures.join("; ")
        );
        Ok(())
    }

    /// Removes containers named `<name>-ouroboros-old-…` (best effort).
    fn remove_set_aside(&self, name: &str) {
        let filter = format!("name=^/{name}-ouroboros-old-");
        let Ok(listed) = self.engine.docker(&["ps", "-aq", "--filter", &filter]) else {
            return;
        };
        for id in listed.lines().filter(|l| !l.is_empty()) {
            let _ = self.engine.docker(&["rm", "--force", "--volumes", id]);
        }
    }

    /// Whether image `id` still exists and carries the test label.
    fn is_test_image(&self, id: &str) -> bool {
        let format = format!("{{{{index .Config.Labels \"{TEST_LABEL}\"}}}}");
        self.engine
            .docker(&["image", "inspect", "--format", &format, id])
            .is_ok_and(|value| value == "1")
    }

    fn track(&self, kind: Kind, name: &str) -> anyhow::Result<()> {
        ensure!(
            name.contains(NAME_MARKER),
            "refusing to track {kind:?} {name:?}: only names from unique_name() (containing \
             {NAME_MARKER:?}) are removed by a Cleanup"
        );
        self.lock().push((kind, name.to_owned()));
        Ok(())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<(Kind, String)>> {
        self.tracked
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if let Err(error) = self.remove_all() {
            eprintln!("warning: {error:#}");
        }
    }
}

/// Whether a removal failed only because the object is already gone.
fn is_missing(message: &str) -> bool {
    let message = message.to_ascii_lowercase();
    message.contains("no such") || message.contains("not found")
}

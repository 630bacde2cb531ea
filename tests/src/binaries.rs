//! The workspace's binaries under test, built once per test process.
//!
//! Cargo sets `CARGO_BIN_EXE_<name>` only for the binaries of the package under test, so this
//! crate builds `ouroboros-agent` and `ouroboros-coordinator` itself: `$CARGO build --bins -p
//! ouroboros-agent -p ouroboros-coordinator --features ouroboros-agent/failpoints`, into the
//! target directory and profile of the
//! running test binary (found from `std::env::current_exe()`: `<target>/[<triple>/]<profile>/
//! deps/<test>`). When the binaries are up to date that build takes well under a second.
//!
//! Set `OUROBOROS_TEST_BIN_DIR` to a directory holding both binaries to skip the build (e.g.
//! when CI built them beforehand).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use anyhow::{Context as _, bail};

/// Environment variable naming a directory that already holds both binaries.
pub const BIN_DIR_ENV: &str = "OUROBOROS_TEST_BIN_DIR";

/// The agent's binary name.
pub const AGENT: &str = "ouroboros-agent";

/// The coordinator's binary name.
pub const COORDINATOR: &str = "ouroboros-coordinator";

/// Paths of the built binaries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binaries {
    /// `ouroboros-agent`.
    pub agent: PathBuf,
    /// `ouroboros-coordinator`.
    pub coordinator: PathBuf,
}

/// Where the running test binary was built.
#[derive(Debug, Clone, PartialEq, Eq)]
struct BuildLayout {
    target_dir: PathBuf,
    triple: Option<String>,
    /// The directory name: `debug`, `release` or a custom profile's name.
    profile_dir: String,
}

impl BuildLayout {
    /// Reads the layout from a test executable's path.
    fn of_test_binary(exe: &Path) -> anyhow::Result<BuildLayout> {
        let deps = exe
            .parent()
            .context("test binary has no parent directory")?;
        let profile = if deps.file_name().is_some_and(|n| n == "deps") {
            deps.parent().context("deps has no parent")?
        } else {
            // Not under deps/ (e.g. a copied binary): assume `<target>/<profile>/<exe>`.
            deps
        };
        let profile_dir = profile
            .file_name()
            .context("profile directory has no name")?
            .to_string_lossy()
            .into_owned();
        let above = profile.parent().context("profile has no parent")?;
        // The target directory is the one with CACHEDIR.TAG; one level higher means a triple.
        let tagged = |dir: &Path| dir.join("CACHEDIR.TAG").exists();
        let triple_target = above.parent().filter(|d| !tagged(above) && tagged(d));
        if let Some(target_dir) = triple_target {
            return Ok(BuildLayout {
                target_dir: target_dir.to_path_buf(),
                triple: above.file_name().map(|n| n.to_string_lossy().into_owned()),
                profile_dir,
            });
        }
        Ok(BuildLayout {
            target_dir: above.to_path_buf(),
            triple: None,
            profile_dir,
        })
    }

    /// The `--profile` for this directory (`debug` is the `dev` profile).
    fn profile(&self) -> &str {
        match self.profile_dir.as_str() {
            "debug" => "dev",
            other => other,
        }
    }

    /// Where the binaries land.
    fn bin_dir(&self) -> PathBuf {
        let mut dir = self.target_dir.clone();
        if let Some(triple) = &self.triple {
            dir.push(triple);
        }
        dir.push(&self.profile_dir);
        dir
    }

    fn build_command(&self, cargo: &Path, manifest: &Path) -> Command {
        let mut command = Command::new(cargo);
        command
            .arg("build")
            .arg("--bins")
            .args(["-p", AGENT, "-p", COORDINATOR])
            // Fault injection for the crash tests (OUROBOROS_FAILPOINT); inert without the
            // variable.
            .args(["--features", "ouroboros-agent/failpoints"])
            .arg("--manifest-path")
            .arg(manifest)
            .arg("--target-dir")
            .arg(&self.target_dir)
            .args(["--profile", self.profile()]);
        if let Some(triple) = &self.triple {
            command.args(["--target", triple]);
        }
        command
    }
}

impl Binaries {
    /// Builds (once per process) and returns the binaries; later calls return the same result.
    pub fn get() -> anyhow::Result<&'static Binaries> {
        static BINARIES: OnceLock<Result<Binaries, String>> = OnceLock::new();
        BINARIES
            .get_or_init(|| Binaries::build().map_err(|e| format!("{e:#}")))
            .as_ref()
            .map_err(|e| anyhow::anyhow!("{e}"))
    }

    fn build() -> anyhow::Result<Binaries> {
        if let Some(dir) = std::env::var_os(BIN_DIR_ENV) {
            return Binaries::in_dir(Path::new(&dir));
        }
        let exe = std::env::current_exe().context("finding the test binary")?;
        let layout = BuildLayout::of_test_binary(&exe)?;
        let cargo = std::env::var_os("CARGO")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("cargo"));
        let manifest = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .context("tests crate has no parent")?
            .join("Cargo.toml");
        let mut command = layout.build_command(&cargo, &manifest);
        let output = command
            .output()
            .with_context(|| format!("running {command:?}"))?;
        if !output.status.success() {
            bail!(
                "{command:?} failed ({}):\n{}",
                output.status,
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Binaries::in_dir(&layout.bin_dir())
    }

    fn in_dir(dir: &Path) -> anyhow::Result<Binaries> {
        let binaries = Binaries {
            agent: dir.join(AGENT),
            coordinator: dir.join(COORDINATOR),
        };
        for path in [&binaries.agent, &binaries.coordinator] {
            if !path.is_file() {
                bail!("{} does not exist", path.display());
            }
        }
        Ok(binaries)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn layout_of_plain_and_triple_targets() {
        let target = tempfile::tempdir().unwrap();
        std::fs::write(target.path().join("CACHEDIR.TAG"), "").unwrap();

        let exe = target.path().join("release/deps/e2e-0123");
        let layout = BuildLayout::of_test_binary(&exe).unwrap();
        assert_eq!(layout.target_dir, target.path());
        assert_eq!(layout.triple, None);
        assert_eq!(layout.profile(), "release");
        assert_eq!(layout.bin_dir(), target.path().join("release"));

        let exe = target
            .path()
            .join("x86_64-unknown-linux-gnu/debug/deps/e2e-0123");
        let layout = BuildLayout::of_test_binary(&exe).unwrap();
        assert_eq!(layout.target_dir, target.path());
        assert_eq!(layout.triple.as_deref(), Some("x86_64-unknown-linux-gnu"));
        assert_eq!(layout.profile(), "dev");
        assert_eq!(
            layout.bin_dir(),
            target.path().join("x86_64-unknown-linux-gnu/debug")
        );
    }
}

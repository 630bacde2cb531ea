//! Test images made from Debian's static busybox, without pulling anything.
//!
//! Every image is `FROM scratch` with `/bin/busybox` and its applet links, and is distinct per
//! version: a file `/version`, `ENV OUROBOROS_TEST_VERSION=<v>`, the label
//! `org.ouroboros.test.version=<v>` (plus `com.ouroboros.test=1`), a one-second
//! `HEALTHCHECK` and a long-lived `CMD` that exits at once on SIGTERM (a PID 1 without a TERM
//! handler makes every stop wait the full timeout).
//!
//! [`build_image`] makes the image with `docker import` and `--change` lines: one layer, no
//! build container, about 0.1 s instead of the 5-6 s a `docker build` takes on fuse-overlayfs
//! here, and no build cache shared between parallel tests (whose `rmi` could otherwise prune
//! a layer another build is using). Every import gets a fresh creation time, hence a fresh
//! image id and digest. [`build_image_with_dockerfile`] does the same with a real
//! `docker build`, for a test that needs one.
//!
//! [`publish`] builds, pushes, removes the local tag again (so a later pull on that engine is a
//! real pull) and returns the reference and the digest the registry holds.
//!
//! For multi-arch tags: [`set_architecture`] marks a built image as another platform's and
//! [`push_manifest_list`] pushes a manifest list of images already in the registry.

use std::fs;
use std::os::unix::fs::{PermissionsExt as _, symlink};
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, bail, ensure};

use crate::cleanup::Cleanup;
use crate::engine::Engine;
use crate::naming::{TEST_LABEL_ARG, unique_name};
use crate::registry::Registry;

/// Label holding the image version.
pub const VERSION_LABEL: &str = "org.ouroboros.test.version";

/// Environment variable holding the image version.
pub const VERSION_ENV: &str = "OUROBOROS_TEST_VERSION";

/// Environment variable naming a static busybox, if not `/bin/busybox`.
pub const BUSYBOX_ENV: &str = "OUROBOROS_TEST_BUSYBOX";

/// The long-lived main process: sleeps in the background so the TERM trap runs at once.
const LONG_LIVED_CMD: &str =
    r#"["sh","-c","trap 'exit 0' TERM; while :; do sleep 1 & wait $!; done"]"#;

/// What a test image's container does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Behaviour {
    /// Runs until stopped and becomes healthy after about a second.
    #[default]
    Healthy,
    /// Runs until stopped but its health check always fails.
    Unhealthy,
    /// Prints `exiting` and exits with status 1 right after start.
    Exits,
}

/// What to build: a version and a behaviour. A plain `u32` converts to a healthy image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageSpec {
    /// Written to `/version`, the env var and the label.
    pub version: u32,
    /// What the container does.
    pub behaviour: Behaviour,
    /// More image configuration, as Dockerfile instructions (`WORKDIR /srv`, `USER 1000`, ...),
    /// applied after the defaults (so a `HEALTHCHECK` or `CMD` here replaces the default one).
    pub extra: &'static [&'static str],
}

impl ImageSpec {
    /// A healthy image of `version`.
    pub fn new(version: u32) -> ImageSpec {
        ImageSpec {
            version,
            behaviour: Behaviour::Healthy,
            extra: &[],
        }
    }

    /// The same image with more configuration (see [`ImageSpec::extra`]).
    pub fn with_config(self, extra: &'static [&'static str]) -> ImageSpec {
        ImageSpec { extra, ..self }
    }

    /// The same version, never healthy.
    pub fn unhealthy(self) -> ImageSpec {
        ImageSpec {
            behaviour: Behaviour::Unhealthy,
            ..self
        }
    }

    /// The same version, exiting right after start.
    pub fn exiting(self) -> ImageSpec {
        ImageSpec {
            behaviour: Behaviour::Exits,
            ..self
        }
    }

    fn health_command(&self) -> &'static str {
        match self.behaviour {
            Behaviour::Unhealthy => "test -f /never-healthy",
            Behaviour::Healthy | Behaviour::Exits => "test -f /version",
        }
    }

    fn cmd(&self) -> &'static str {
        match self.behaviour {
            Behaviour::Exits => r#"["sh","-c","echo exiting; exit 1"]"#,
            Behaviour::Healthy | Behaviour::Unhealthy => LONG_LIVED_CMD,
        }
    }

    /// The image config as Dockerfile instructions (all but `FROM` and the file copies).
    fn instructions(&self) -> Vec<String> {
        let v = self.version;
        vec![
            format!("ENV {VERSION_ENV}={v}"),
            format!("LABEL {TEST_LABEL_ARG} {VERSION_LABEL}={v}"),
            format!(
                "HEALTHCHECK --interval=1s --timeout=3s --retries=2 CMD {}",
                self.health_command()
            ),
            format!("CMD {}", self.cmd()),
        ]
        .into_iter()
        .chain(self.extra.iter().map(|i| (*i).to_owned()))
        .collect()
    }
}

impl From<u32> for ImageSpec {
    fn from(version: u32) -> ImageSpec {
        ImageSpec::new(version)
    }
}

/// An image pushed to a registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestImage {
    /// `127.0.0.1:PORT/<repo>:<tag>`.
    pub reference: String,
    /// `127.0.0.1:PORT/<repo>`.
    pub repository: String,
    /// The tag.
    pub tag: String,
    /// The manifest digest the registry holds, `sha256:...`.
    pub digest: String,
    /// The version baked in.
    pub version: u32,
}

impl TestImage {
    /// `127.0.0.1:PORT/<repo>@sha256:...`.
    pub fn pinned(&self) -> String {
        format!("{}@{}", self.repository, self.digest)
    }
}

/// Builds `reference` on `engine` with `docker import` (see the module docs); returns the image
/// id. Prefer [`Cleanup::build_image`], which also tracks what it makes.
pub fn build_image(
    engine: &Engine,
    reference: &str,
    spec: impl Into<ImageSpec>,
) -> anyhow::Result<String> {
    let spec = spec.into();
    let dir = tempfile::Builder::new()
        .prefix("ouroboros-test-image-")
        .tempdir()
        .context("creating the image directory")?;
    let root = dir.path().join("rootfs");
    write_rootfs(&root, spec.version)?;
    let tarball = dir.path().join("rootfs.tar");
    let output = Command::new("tar")
        .args([
            "--create",
            "--numeric-owner",
            "--owner=0",
            "--group=0",
            "--file",
        ])
        .arg(&tarball)
        .arg("--directory")
        .arg(&root)
        .arg(".")
        .output()
        .context("running tar")?;
    if !output.status.success() {
        bail!(
            "tar of the image root failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    let mut args: Vec<String> = vec!["import".to_owned()];
    for instruction in spec.instructions() {
        args.push("--change".to_owned());
        args.push(instruction);
    }
    args.push(tarball.display().to_string());
    args.push(reference.to_owned());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    engine
        .docker(&args)
        .with_context(|| format!("importing test image {reference}"))
}

/// Builds the same image as [`build_image`] with a real `docker build` (classic builder,
/// `--network none`). Each build starts with a unique label, so no build cache is shared with
/// other tests: slower (seconds), but removing it cannot break a parallel build. Returns the
/// image id.
pub fn build_image_with_dockerfile(
    engine: &Engine,
    reference: &str,
    spec: impl Into<ImageSpec>,
) -> anyhow::Result<String> {
    let spec = spec.into();
    let dir = tempfile::Builder::new()
        .prefix("ouroboros-test-build-")
        .tempdir()
        .context("creating the build context")?;
    fs::copy(busybox_path(), dir.path().join("busybox")).context("copying busybox")?;
    fs::write(dir.path().join("version"), format!("{}\n", spec.version))?;
    let mut dockerfile = vec![
        "FROM scratch".to_owned(),
        format!("LABEL org.ouroboros.test.build={}", unique_name("build")),
        "COPY busybox /bin/busybox".to_owned(),
        r#"RUN ["/bin/busybox", "--install", "-s", "/bin"]"#.to_owned(),
        "COPY version /version".to_owned(),
    ];
    dockerfile.extend(spec.instructions());
    fs::write(dir.path().join("Dockerfile"), dockerfile.join("\n") + "\n")?;
    let context = dir.path().display().to_string();
    engine
        .docker(&[
            "build",
            "--quiet",
            "--network",
            "none",
            "--tag",
            reference,
            &context,
        ])
        .with_context(|| format!("building test image {reference}"))
}

/// Pushes `reference` from `engine` and returns the manifest digest (`sha256:...`), from the
/// push output or else the image's `RepoDigests`.
pub fn push_image(engine: &Engine, reference: &str) -> anyhow::Result<String> {
    let output = engine
        .docker(&["push", reference])
        .with_context(|| format!("pushing {reference}"))?;
    if let Some(digest) = digest_in_push_output(&output) {
        return Ok(digest);
    }
    let repository = repository_of(reference);
    let digests = engine.inspect(reference, "{{json .RepoDigests}}")?;
    let digests: Vec<String> = serde_json::from_str(&digests).context("parsing RepoDigests")?;
    digests
        .iter()
        .find_map(|d| d.strip_prefix(&format!("{repository}@")))
        .map(str::to_owned)
        .with_context(|| format!("no digest for {repository} after push: {digests:?}"))
}

// Here rather than in cleanup.rs, so that the cleanup module knows nothing of images.
impl Cleanup {
    /// Builds a test image as `reference` on the engine (see [`build_image`]) and tracks
    /// both the reference and the image id; returns the id.
    pub fn build_image(
        &self,
        reference: &str,
        spec: impl Into<ImageSpec>,
    ) -> anyhow::Result<String> {
        self.track_image(reference)?;
        let id = build_image(self.engine(), reference, spec)?;
        self.track_image_id(&id)?;
        Ok(id)
    }
}

/// Builds `spec` as `<registry>/<repo>:<tag>` on the cleanup's engine, pushes it, removes the
/// local tag again and returns what was published. The tag, the pinned reference and the
/// built image are tracked by `cleanup`, so whatever a test later pulls under them is removed
/// (also when the push fails). `repo` should come from [`unique_name`].
pub fn publish(
    cleanup: &Cleanup,
    registry: &Registry,
    repo: &str,
    tag: &str,
    spec: impl Into<ImageSpec>,
) -> anyhow::Result<TestImage> {
    let spec = spec.into();
    let engine = cleanup.engine();
    let reference = registry.reference(repo, tag);
    cleanup.build_image(&reference, spec)?;
    let digest = push_image(engine, &reference)?;
    let image = TestImage {
        repository: repository_of(&reference).to_owned(),
        reference,
        tag: tag.to_owned(),
        digest,
        version: spec.version,
    };
    cleanup.track_image(&image.pinned())?;
    engine
        .docker(&["rmi", &image.reference])
        .with_context(|| format!("removing the local tag {}", image.reference))?;
    Ok(image)
}

/// Rewrites the `architecture` in the config of local image `reference` (e.g. to `arm64`) and
/// returns the new image id; the tag moves to it, the old image stays (untagged).
///
/// Engine 20.10 without experimental features ignores `docker import --platform`, so this goes
/// through `docker save`, an edited config and `docker load`. Only the config changes: the
/// busybox inside is still the machine's, which is all a manifest-list member needs here.
pub fn set_architecture(
    engine: &Engine,
    reference: &str,
    architecture: &str,
) -> anyhow::Result<String> {
    let dir = tempfile::Builder::new()
        .prefix("ouroboros-test-arch-")
        .tempdir()
        .context("creating the save directory")?;
    let saved = dir.path().join("saved.tar");
    let root = dir.path().join("image");
    fs::create_dir(&root).context("creating the unpack directory")?;
    let saved_arg = saved.display().to_string();
    engine
        .docker(&["save", "--output", &saved_arg, reference])
        .with_context(|| format!("saving {reference}"))?;
    run_tar(
        Command::new("tar")
            .arg("-xf")
            .arg(&saved)
            .arg("-C")
            .arg(&root),
    )?;
    let manifest: serde_json::Value = serde_json::from_slice(
        &fs::read(root.join("manifest.json")).context("reading the saved manifest.json")?,
    )
    .context("parsing the saved manifest.json")?;
    let config_name = manifest[0]["Config"]
        .as_str()
        .context("no Config in the saved manifest.json")?;
    let config_path = root.join(config_name);
    let mut config: serde_json::Value =
        serde_json::from_slice(&fs::read(&config_path).context("reading the image config")?)
            .context("parsing the image config")?;
    config["architecture"] = serde_json::Value::from(architecture);
    fs::write(&config_path, serde_json::to_vec(&config)?).context("writing the image config")?;
    let loaded = dir.path().join("loaded.tar");
    run_tar(
        Command::new("tar")
            .arg("-cf")
            .arg(&loaded)
            .arg("-C")
            .arg(&root)
            .arg("."),
    )?;
    let loaded_arg = loaded.display().to_string();
    engine
        .docker(&["load", "--quiet", "--input", &loaded_arg])
        .with_context(|| format!("loading {reference} as {architecture}"))?;
    let id = engine.inspect(reference, "{{.Id}}")?;
    let now = engine.inspect(reference, "{{.Architecture}}")?;
    ensure!(
        now == architecture,
        "{reference} is {now} after loading it as {architecture}"
    );
    Ok(id)
}

/// Pushes a manifest list `list` (`registry/repo:tag`) of `members` (references already in
/// the registry, each entry with the platform of its image config) with `docker manifest
/// create` and `docker manifest push --purge`, over plain HTTP (`--insecure`). Returns the
/// list's digest, the one `docker pull <list>` records in RepoDigests.
///
/// The CLI keeps lists being made in the engine handle's own config directory, never in the
/// user's `~/.docker`; `--purge` removes the local copy so the same name can be made again.
pub fn push_manifest_list(engine: &Engine, list: &str, members: &[&str]) -> anyhow::Result<String> {
    let manifest = |args: &[&str]| -> anyhow::Result<String> {
        let output = engine
            .docker_command()
            // Needed by CLIs before 20.10 only; harmless after.
            .env("DOCKER_CLI_EXPERIMENTAL", "enabled")
            .arg("manifest")
            .args(args)
            .stdin(std::process::Stdio::null())
            .output()
            .context("spawning docker manifest")?;
        if !output.status.success() {
            bail!(
                "docker manifest {} failed ({}): {}",
                args.join(" "),
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
    };
    let mut create = vec!["create", "--insecure", list];
    create.extend_from_slice(members);
    manifest(&create)?;
    let output = manifest(&["push", "--purge", "--insecure", list])?;
    let digest = output.lines().last().unwrap_or_default().trim();
    let hex = digest.strip_prefix("sha256:").unwrap_or_default();
    ensure!(
        hex.len() == 64 && hex.chars().all(|c| c.is_ascii_hexdigit()),
        "docker manifest push {list} printed no digest: {output:?}"
    );
    Ok(digest.to_owned())
}

fn run_tar(command: &mut Command) -> anyhow::Result<()> {
    let output = command.output().context("running tar")?;
    if !output.status.success() {
        bail!(
            "{command:?} failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(())
}

/// The static busybox the test images are made of (`OUROBOROS_TEST_BUSYBOX` or `/bin/busybox`).
pub fn busybox_path() -> PathBuf {
    std::env::var_os(BUSYBOX_ENV)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/bin/busybox"))
}

/// `/bin/busybox` with a link per applet (what `busybox --install -s` makes), `/tmp`, `/version`.
fn write_rootfs(root: &Path, version: u32) -> anyhow::Result<()> {
    let bin = root.join("bin");
    fs::create_dir_all(&bin).context("creating rootfs/bin")?;
    fs::create_dir_all(root.join("tmp")).context("creating rootfs/tmp")?;
    fs::set_permissions(root.join("tmp"), fs::Permissions::from_mode(0o1777))?;
    let busybox = busybox_path();
    fs::copy(&busybox, bin.join("busybox"))
        .with_context(|| format!("copying {} (busybox-static)", busybox.display()))?;
    fs::set_permissions(bin.join("busybox"), fs::Permissions::from_mode(0o755))?;
    let list = Command::new(&busybox)
        .arg("--list")
        .output()
        .context("running busybox --list")?;
    for applet in String::from_utf8_lossy(&list.stdout).split_whitespace() {
        if applet != "busybox" && !applet.contains('/') {
            symlink("busybox", bin.join(applet))
                .with_context(|| format!("linking applet {applet}"))?;
        }
    }
    fs::write(root.join("version"), format!("{version}\n")).context("writing /version")
}

/// `host:port/repo:tag` -> `host:port/repo` (a digest suffix is dropped too).
fn repository_of(reference: &str) -> &str {
    let reference = reference.split('@').next().unwrap_or(reference);
    match reference.rfind(':') {
        Some(colon) if !reference[colon..].contains('/') => &reference[..colon],
        _ => reference,
    }
}

/// Finds `digest: sha256:<64 hex>` in `docker push` output.
fn digest_in_push_output(output: &str) -> Option<String> {
    output.lines().find_map(|line| {
        let (_, rest) = line.split_once("digest: ")?;
        let digest = rest.split_whitespace().next()?;
        let hex = digest.strip_prefix("sha256:")?;
        (hex.len() == 64 && hex.chars().all(|c| c.is_ascii_hexdigit())).then(|| digest.to_owned())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repository_strips_tag_and_digest() {
        assert_eq!(repository_of("127.0.0.1:5000/app:1"), "127.0.0.1:5000/app");
        assert_eq!(repository_of("127.0.0.1:5000/app"), "127.0.0.1:5000/app");
        assert_eq!(
            repository_of("127.0.0.1:5000/app@sha256:abc"),
            "127.0.0.1:5000/app"
        );
        assert_eq!(repository_of("app:latest"), "app");
    }

    #[test]
    fn finds_digest_in_push_output() {
        let hex = "0cd5116bff40488c85047f740321bacb280714836f7d0649bce3c4da864977aa";
        let output = format!(
            "The push refers to repository [127.0.0.1:5123/probe]\ne3079b9e48b4: Pushed\n1: digest: sha256:{hex} size: 943"
        );
        assert_eq!(
            digest_in_push_output(&output),
            Some(format!("sha256:{hex}"))
        );
        assert_eq!(digest_in_push_output("nothing here"), None);
    }

    #[test]
    fn specs_differ_per_behaviour() {
        let healthy = ImageSpec::from(3).instructions();
        assert!(healthy.contains(&"ENV OUROBOROS_TEST_VERSION=3".to_owned()));
        assert!(healthy.iter().any(|i| i.contains("test -f /version")));
        let unhealthy = ImageSpec::new(3).unhealthy().instructions();
        assert!(unhealthy.iter().any(|i| i.contains("/never-healthy")));
        let exiting = ImageSpec::new(3).exiting().instructions();
        assert!(exiting.iter().any(|i| i.contains("exit 1")));
    }
}

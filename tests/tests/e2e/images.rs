//! The container images: `deploy/build-images.sh` builds both from the Dockerfiles with no
//! registry access (under `CI=true` a failed build fails the test, never skips it); each is
//! under 40 MB, answers `--version`, carries Ouroboros' own label; the coordinator runs as a
//! non-root user on a named volume and its HEALTHCHECK turns it `healthy`; so does the agent's,
//! with the socket and a data volume, while its coordinator is unreachable; a container of the
//! agent image is skipped as Ouroboros' own unless `--self-update`. Also the `healthcheck`
//! subcommands of both binaries, healthy and not, without Docker.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use ouroboros_tests::{
    Binaries, Cleanup, Engine, TEST_LABEL_ARG, eventually, require_engine, unique_name,
};

/// Each image must stay under this (the limit).
const MAX_IMAGE_BYTES: u64 = 40 * 1000 * 1000;
/// The coordinator image's user.
const COORDINATOR_UID: &str = "65532";

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

/// Runs `deploy/build-images.sh TAG` against `engine`; its output on failure.
pub(crate) fn build_images(engine: &Engine, tag: &str) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    let mut command = Command::new("bash");
    command
        .arg(workspace_root().join("deploy/build-images.sh"))
        .arg(tag)
        .current_dir(workspace_root())
        .env("DOCKER_HOST", engine.host());
    // The variables cargo sets for this test (CARGO_MANIFEST_DIR, CARGO_PKG_*, ...) would
    // reach build scripts that watch them (ring's), and rebuild everything the script's
    // release build already has (`scripts/test` builds the images before the tests).
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy().into_owned();
        if name.starts_with("CARGO_") && name != "CARGO_HOME" && name != "CARGO_TARGET_DIR" {
            command.env_remove(name);
        }
    }
    let out = command.output().context("running deploy/build-images.sh")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        out.status.success(),
        "deploy/build-images.sh {tag} failed ({}):\nstdout: {stdout}\nstderr: {stderr}",
        out.status
    );
    println!(
        "deploy/build-images.sh took {:?}:\n{stdout}",
        started.elapsed()
    );
    Ok(())
}

/// `docker run --rm IMAGE ARGS` with the test label; stdout.
fn run_once(
    engine: &Engine,
    options: &[&str],
    image: &str,
    args: &[&str],
) -> anyhow::Result<String> {
    let mut all = vec!["run", "--rm", "--label", TEST_LABEL_ARG];
    all.extend_from_slice(options);
    all.push(image);
    all.extend_from_slice(args);
    engine.docker(&all)
}

/// The real uid of process `pid` (from /proc, on this host).
fn uid_of(pid: &str) -> anyhow::Result<String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .context("no Uid line")
}

#[test]
fn images_build_small_and_run_as_designed() -> anyhow::Result<()> {
    let Some(engine) = require_engine() else {
        return Ok(());
    };
    let bins = Binaries::get()?;
    let cleanup = Cleanup::new(&engine);
    let tag = unique_name("images");
    let agent = format!("ouroboros-agent:{tag}");
    let coordinator = format!("ouroboros-coordinator:{tag}");
    cleanup.track_image(&agent)?;
    cleanup.track_image(&coordinator)?;
    build_images(&engine, &tag)?;

    for (image, binary) in [
        (&agent, "ouroboros-agent"),
        (&coordinator, "ouroboros-coordinator"),
    ] {
        let size: u64 = engine
            .docker(&["image", "inspect", "--format", "{{.Size}}", image])?
            .trim()
            .parse()?;
        println!("{image}: {size} bytes");
        ensure!(
            size < MAX_IMAGE_BYTES,
            "{image} is {size} bytes, over 40 MB"
        );
        let version = run_once(&engine, &["--network", "none"], image, &["--version"])?;
        ensure!(
            version.starts_with(&format!("{binary} ")),
            "{image} --version said {version:?}"
        );
        let own = engine.docker(&[
            "image",
            "inspect",
            "--format",
            "{{index .Config.Labels \"com.ouroboros.self\"}}",
            image,
        ])?;
        ensure!(own.trim() == "true", "{image}: com.ouroboros.self={own:?}");
    }

    // The coordinator: non-root in the image and in the running process; healthy on a named
    // volume once `pki init` has run in it.
    let user = engine.docker(&[
        "image",
        "inspect",
        "--format",
        "{{.Config.User}}",
        &coordinator,
    ])?;
    ensure!(
        user.trim() == format!("{COORDINATOR_UID}:{COORDINATOR_UID}"),
        "Config.User is {user:?}"
    );
    let volume = cleanup.create_volume("images-data")?;
    let mount = format!("{volume}:/var/lib/ouroboros");
    run_once(
        &engine,
        &["--network", "none", "-v", &mount],
        &coordinator,
        &["pki", "init"],
    )
    .context("pki init in the coordinator image on a new named volume")?;
    let name = cleanup.run_container(
        "images-coordinator",
        &[
            "--network",
            "none",
            "-v",
            &mount,
            "--health-interval",
            "1s",
            "--health-start-period",
            "1s",
        ],
        &coordinator,
        &[],
    )?;
    let healthy = eventually(Duration::from_secs(60), Duration::from_millis(500), || {
        let status = engine.inspect(&name, "{{.State.Health.Status}}")?;
        ensure!(status == "healthy", "health status {status:?}");
        Ok(())
    });
    if let Err(error) = healthy {
        let logs = engine.docker(&["logs", &name]).unwrap_or_default();
        let health = engine
            .inspect(&name, "{{json .State.Health}}")
            .unwrap_or_default();
        bail!("{error:#}\nhealth: {health}\nlogs: {logs}");
    }
    let pid = engine.inspect(&name, "{{.State.Pid}}")?;
    let uid = uid_of(pid.trim())?;
    ensure!(uid == COORDINATOR_UID, "the coordinator runs as uid {uid}");
    println!("coordinator container {name}: healthy, uid {uid}");

    // The agent with the socket and a data volume turns healthy once its engine answers, even
    // while its coordinator is unreachable (the link is not part of its health).
    if let Some(socket) = engine.socket() {
        let pki = tempfile::Builder::new()
            .prefix("ouroboros-test-images-pki-")
            .tempdir()?;
        for args in [
            &["pki", "init", "--dir"][..],
            &["pki", "issue", "--agent", "imagehost", "--dir"],
        ] {
            let out = Command::new(&bins.coordinator)
                .args(args)
                .arg(pki.path())
                .output()?;
            ensure!(out.status.success(), "{args:?}: {out:?}");
        }
        let agent_volume = cleanup.create_volume("images-agent-data")?;
        let socket_mount = format!("{}:/var/run/docker.sock", socket.display());
        let data_mount = format!("{agent_volume}:/var/lib/ouroboros-agent");
        let pki_mount = format!("{}:/pki:ro", pki.path().display());
        let running = cleanup.run_container(
            "images-agent-running",
            &[
                "--network",
                "none",
                "-v",
                &socket_mount,
                "-v",
                &data_mount,
                "-v",
                &pki_mount,
                "-e",
                "OUROBOROS_COORDINATOR=https://127.0.0.1:7443",
                "-e",
                "OUROBOROS_CA=/pki/ca.pem",
                "-e",
                "OUROBOROS_CERT=/pki/agent-imagehost.pem",
                "-e",
                "OUROBOROS_KEY=/pki/agent-imagehost-key.pem",
                "--health-interval",
                "1s",
                "--health-start-period",
                "1s",
            ],
            &agent,
            &[],
        )?;
        let healthy = eventually(Duration::from_secs(60), Duration::from_millis(500), || {
            let status = engine.inspect(&running, "{{.State.Health.Status}}")?;
            ensure!(status == "healthy", "health status {status:?}");
            Ok(())
        });
        if let Err(error) = healthy {
            let logs = engine.docker(&["logs", &running]).unwrap_or_default();
            let health = engine
                .inspect(&running, "{{json .State.Health}}")
                .unwrap_or_default();
            bail!("agent: {error:#}\nhealth: {health}\nlogs: {logs}");
        }
        println!("agent container {running}: healthy");
    }

    // A container of the agent image is Ouroboros' own: skipped unless --self-update. (It exits
    // at once without a coordinator to dial; stopped containers are listed too.)
    let own = cleanup.run_container("images-agent", &["--network", "none"], &agent, &[])?;
    let dir = tempfile::Builder::new()
        .prefix("ouroboros-test-images-")
        .tempdir()?;
    let check = |self_update: bool| -> anyhow::Result<String> {
        let out = Command::new(&bins.coordinator)
            .args(["up", "--run-once", "--dry-run", "--listen", "127.0.0.1:0"])
            .args(["--monitor", &own, "--docker-host", engine.host()])
            .args(["--self-update", if self_update { "true" } else { "false" }])
            .arg("--data-dir")
            .arg(dir.path())
            .output()?;
        Ok(format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    };
    let skipped = check(false)?;
    ensure!(
        skipped.contains(&own) && skipped.contains("Ouroboros' own container"),
        "without --self-update: {skipped}"
    );
    let offered = check(true)?;
    ensure!(
        offered.contains(&own) && !offered.contains("Ouroboros' own container"),
        "with --self-update: {offered}"
    );
    cleanup.remove_all()
}

#[test]
fn agent_healthcheck_reads_the_heartbeat_file() -> anyhow::Result<()> {
    let bins = Binaries::get()?;
    let dir = tempfile::Builder::new()
        .prefix("ouroboros-test-health-")
        .tempdir()?;
    let run = || {
        Command::new(&bins.agent)
            .arg("healthcheck")
            .arg("--data-dir")
            .arg(dir.path())
            .output()
    };
    let out = run()?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.starts_with("unhealthy: no engine answer recorded yet"),
        "{stdout}"
    );
    assert_eq!(stdout.lines().count(), 1, "{stdout}");

    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis();
    std::fs::write(dir.path().join("health"), format!("{}\n", now_ms - 2_000))?;
    let out = run()?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert!(
        stdout.starts_with("healthy: the Docker engine answered"),
        "{stdout}"
    );

    std::fs::write(dir.path().join("health"), format!("{}\n", now_ms - 120_000))?;
    let out = run()?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("the agent is stuck"), "{stdout}");
    Ok(())
}

#[test]
fn coordinator_healthcheck_asks_healthz() -> anyhow::Result<()> {
    let bins = Binaries::get()?;
    // Nothing listens on a port just freed: unhealthy, exit 1, one line.
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let out = Command::new(&bins.coordinator)
        .args(["healthcheck", "--prometheus-port", &port.to_string()])
        .env_remove("PROMETHEUS_PORT")
        .output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("unhealthy: http://127.0.0.1:{port}/healthz")),
        "{stderr}"
    );
    // A running coordinator's endpoint: healthy, exit 0.
    let dir = tempfile::Builder::new()
        .prefix("ouroboros-test-health-")
        .tempdir()?;
    let serve_port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let pki = dir.path().join("pki");
    let init = Command::new(&bins.coordinator)
        .args(["pki", "init", "--dir"])
        .arg(&pki)
        .output()?;
    assert!(init.status.success(), "{init:?}");
    let mut serve = Command::new(&bins.coordinator)
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--prometheus-addr",
            "127.0.0.1",
        ])
        .args(["--prometheus-port", &serve_port.to_string(), "--data-dir"])
        .arg(dir.path().join("data"))
        .arg("--pki-dir")
        .arg(&pki)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()?;
    let result = eventually(Duration::from_secs(30), Duration::from_millis(200), || {
        let out = Command::new(&bins.coordinator)
            .args(["healthcheck", "--prometheus-addr", "127.0.0.1"])
            .args(["--prometheus-port", &serve_port.to_string()])
            .output()?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        ensure!(
            out.status.code() == Some(0),
            "exit {:?}: {stdout}",
            out.status
        );
        ensure!(stdout.starts_with("healthy: "), "{stdout}");
        Ok(())
    });
    let _ = serve.kill();
    let _ = serve.wait();
    result
}

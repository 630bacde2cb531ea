//! Self-tests of the harness against the real engine: images, registry, extra engine, cleanup.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context as _, ensure};
use ouroboros_tests::image::VERSION_LABEL;
use ouroboros_tests::registry::MANIFEST_ACCEPT;
use ouroboros_tests::{
    Binaries, Cleanup, Engine, ImageSpec, Process, Registry, TEST_LABEL, TEST_LABEL_ARG,
    build_image_with_dockerfile, eventually, http_request, publish, require_engine, unique_name,
};

const SECOND: Duration = Duration::from_secs(1);
const POLL: Duration = Duration::from_millis(100);

/// Names of objects with the test label on `engine` whose name contains `needle`.
fn labelled_leftovers(engine: &Engine, needle: &str) -> anyhow::Result<Vec<String>> {
    let filter = format!("label={TEST_LABEL}");
    let mut found = Vec::new();
    for args in [
        vec!["ps", "--all", "--filter", &filter, "--format", "{{.Names}}"],
        vec![
            "network",
            "ls",
            "--filter",
            &filter,
            "--format",
            "{{.Name}}",
        ],
        vec!["volume", "ls", "--filter", &filter, "--format", "{{.Name}}"],
        vec![
            "images",
            "--filter",
            &filter,
            "--format",
            "{{.Repository}}:{{.Tag}}",
        ],
        vec!["images", "--format", "{{.Repository}}:{{.Tag}}"],
    ] {
        let output = engine.docker(&args)?;
        found.extend(
            output
                .lines()
                .filter(|line| line.contains(needle))
                .map(str::to_owned),
        );
    }
    Ok(found)
}

fn health(engine: &Engine, container: &str) -> anyhow::Result<String> {
    engine.inspect(container, "{{.State.Health.Status}}")
}

#[test]
fn images_registry_and_extra_engine() -> anyhow::Result<()> {
    let Some(engine) = require_engine() else {
        return Ok(());
    };
    let started = Instant::now();
    let registry = Registry::start()?;
    let cleanup = Cleanup::new(&engine);
    let repo = unique_name("harness");

    // Two versions, pushed as two tags.
    let v1 = publish(&cleanup, &registry, &repo, "1", 1)?;
    let v2 = publish(&cleanup, &registry, &repo, "2", 2)?;
    assert_ne!(v1.digest, v2.digest);
    assert!(v1.digest.starts_with("sha256:"), "{}", v1.digest);
    assert_eq!(v1.reference, format!("{}/{repo}:1", registry.addr()));
    // publish removed the local tag: a later pull here is a real pull.
    assert!(engine.docker(&["image", "inspect", &v1.reference]).is_err());

    // A hand-made HEAD over a raw TCP connection sees the pushed digest.
    let manifest_path = format!("/v2/{repo}/manifests/1");
    let head = http_request(
        registry.addr(),
        "HEAD",
        &manifest_path,
        &[
            ("Accept", MANIFEST_ACCEPT),
            ("User-Agent", "harness-self-test"),
        ],
    )?;
    assert_eq!(head.status, 200);
    assert_eq!(
        head.header("Docker-Content-Digest"),
        Some(v1.digest.as_str())
    );
    assert_eq!(
        registry.manifest_digest(&repo, "2")?,
        Some(v2.digest.clone())
    );
    assert_eq!(registry.manifest_digest(&repo, "3")?, None);

    // The access log shows both manifest pushes and our HEAD.
    eventually(5 * SECOND, POLL, || {
        let log = registry.access_log();
        for tag in ["1", "2"] {
            let path = format!("/v2/{repo}/manifests/{tag}");
            let puts = log.iter().filter(|e| e.is("PUT", &path)).count();
            ensure!(puts == 1, "{puts} PUTs of {path}");
        }
        let ours = log
            .iter()
            .filter(|e| e.is("HEAD", &manifest_path) && e.user_agent == "harness-self-test")
            .count();
        ensure!(ours == 1, "{ours} HEADs from the self-test");
        ensure!(
            log.iter()
                .any(|e| e.method == "HEAD" && e.path.ends_with("/manifests/3") && e.status == 404),
            "no 404 HEAD for tag 3"
        );
        Ok(())
    })?;

    // A second host pulls each version and sees the right content.
    let docker0 = std::path::Path::new("/sys/class/net/docker0");
    let had_docker0 = docker0.exists();
    let extra = Engine::start_extra()?;
    assert!(extra.is_extra());
    let extra_dirs: Vec<PathBuf> = extra.owned_dirs();
    assert!(extra_dirs.iter().all(|d| d.exists()));
    for image in [&v1, &v2] {
        extra.docker(&["pull", &image.reference])?;
        let version = extra.docker(&[
            "run",
            "--rm",
            "--network",
            "none",
            "--label",
            TEST_LABEL_ARG,
            &image.reference,
            "cat",
            "/version",
        ])?;
        assert_eq!(version, image.version.to_string());
        let repo_digests = extra.inspect(&image.reference, "{{json .RepoDigests}}")?;
        assert!(repo_digests.contains(&image.pinned()), "{repo_digests}");
    }

    // The long-lived container becomes healthy, carries the version, and stops at once.
    let extra_cleanup = Cleanup::new(&extra);
    let name = extra_cleanup.run_container("long", &["--network", "none"], &v2.reference, &[])?;
    eventually(20 * SECOND, POLL, || {
        let status = health(&extra, &name)?;
        ensure!(status == "healthy", "health is {status:?}");
        Ok(())
    })?;
    assert_eq!(
        extra.docker(&["exec", &name, "sh", "-c", "echo $OUROBOROS_TEST_VERSION"])?,
        "2"
    );
    assert_eq!(
        extra.inspect(
            &name,
            &format!("{{{{index .Config.Labels \"{VERSION_LABEL}\"}}}}")
        )?,
        "2"
    );
    let stop = Instant::now();
    extra.docker(&["stop", "--time", "10", &name])?;
    let stop_time = stop.elapsed();
    assert!(stop_time < 3 * SECOND, "docker stop took {stop_time:?}");

    // Dropping the extra engine removes its containers, stops it and deletes its directories.
    let exec_root = extra_dirs[1].display().to_string();
    drop(extra_cleanup);
    drop(extra);
    for dir in &extra_dirs {
        assert!(!dir.exists(), "{} is still there", dir.display());
    }
    let mounts = std::fs::read_to_string("/proc/self/mountinfo")?;
    assert!(
        !mounts.contains(&exec_root),
        "mounts left under {exec_root}"
    );
    // The extra daemon must leave the system engine's bridge alone.
    assert_eq!(
        docker0.exists(),
        had_docker0,
        "docker0 appeared or vanished"
    );

    // Dropping the cleanup leaves nothing of this test on the shared engine.
    drop(cleanup);
    let leftovers = labelled_leftovers(&engine, &repo)?;
    assert!(leftovers.is_empty(), "left behind: {leftovers:?}");
    eprintln!(
        "images_registry_and_extra_engine took {:?}",
        started.elapsed()
    );
    Ok(())
}

#[test]
fn auth_registry_refuses_anonymous_pulls() -> anyhow::Result<()> {
    let Some(pusher) = require_engine() else {
        return Ok(());
    };
    // A password whose base64 holds '/' and '+' (see FACTS: X-Registry-Auth encoding).
    let (user, password) = ("alice", "s3cr/t+pw?>");
    let registry = Registry::start_with_auth(user, password)?;
    let cleanup = Cleanup::new(&pusher);
    let repo = unique_name("auth");

    let anonymous_push = publish(&cleanup, &registry, &repo, "1", 1);
    assert!(anonymous_push.is_err(), "push without login succeeded");
    pusher.login(registry.addr(), user, password)?;
    let image = publish(&cleanup, &registry, &repo, "1", 1)?;
    assert_eq!(
        registry.manifest_digest(&repo, "1")?,
        Some(image.digest.clone())
    );
    let anonymous_head = http_request(
        registry.addr(),
        "HEAD",
        &format!("/v2/{repo}/manifests/1"),
        &[],
    )?;
    assert_eq!(anonymous_head.status, 401);
    assert!(
        anonymous_head
            .header("WWW-Authenticate")
            .is_some_and(|v| v.starts_with("Basic"))
    );

    // Another handle on the same engine has its own (empty) CLI config.
    let puller = require_engine().context("engine vanished")?;
    let error = puller
        .docker(&["pull", &image.reference])
        .expect_err("anonymous pull succeeded");
    let message = format!("{error:#}");
    assert!(
        message.contains("no basic auth credentials") || message.contains("unauthorized"),
        "{message}"
    );
    puller.login(registry.addr(), user, password)?;
    puller.docker(&["pull", &image.reference])?;
    let config = std::fs::read_to_string(puller.config_dir().join("config.json"))?;
    assert!(config.contains(registry.addr()), "{config}");

    drop(cleanup);
    let leftovers = labelled_leftovers(&pusher, &repo)?;
    assert!(leftovers.is_empty(), "left behind: {leftovers:?}");
    Ok(())
}

#[test]
fn dockerfile_build_makes_the_same_image() -> anyhow::Result<()> {
    let Some(engine) = require_engine() else {
        return Ok(());
    };
    let cleanup = Cleanup::new(&engine);
    let reference = format!("{}:7", unique_name("dockerfile"));
    cleanup.track_image(&reference)?;
    let id = build_image_with_dockerfile(&engine, &reference, 7)?;
    cleanup.track_image_id(&id)?;
    assert_eq!(
        engine.inspect(
            &reference,
            &format!("{{{{index .Config.Labels \"{VERSION_LABEL}\"}}}}")
        )?,
        "7"
    );
    assert_eq!(
        engine.inspect(
            &reference,
            &format!("{{{{index .Config.Labels \"{TEST_LABEL}\"}}}}")
        )?,
        "1"
    );
    let name = cleanup.run_container("dockerfile", &[], &reference, &[])?;
    assert_eq!(engine.docker(&["exec", &name, "cat", "/version"])?, "7");
    eventually(20 * SECOND, POLL, || {
        let status = health(&engine, &name)?;
        ensure!(status == "healthy", "health is {status:?}");
        Ok(())
    })?;
    drop(cleanup);
    let leftovers = labelled_leftovers(&engine, "ouroboros-test-dockerfile-")?;
    assert!(
        leftovers.iter().all(|l| !l.contains(&reference)),
        "left behind: {leftovers:?}"
    );
    Ok(())
}

#[test]
fn unhealthy_and_exiting_images_and_objects() -> anyhow::Result<()> {
    let Some(engine) = require_engine() else {
        return Ok(());
    };
    let cleanup = Cleanup::new(&engine);
    let base = unique_name("behaviour");
    let unhealthy = format!("{base}:unhealthy");
    let exiting = format!("{base}:exiting");
    cleanup.build_image(&unhealthy, ImageSpec::new(1).unhealthy())?;
    cleanup.build_image(&exiting, ImageSpec::new(1).exiting())?;

    let network = cleanup.create_network("net", &["--internal"])?;
    let volume = cleanup.create_volume("vol")?;
    let sick = cleanup.run_container(
        "sick",
        &[
            "--network",
            &network,
            "--volume",
            &format!("{volume}:/data"),
        ],
        &unhealthy,
        &[],
    )?;
    let gone = cleanup.run_container("gone", &["--network", "none"], &exiting, &[])?;
    eventually(20 * SECOND, POLL, || {
        let status = health(&engine, &sick)?;
        ensure!(status == "unhealthy", "health is {status:?}");
        Ok(())
    })?;
    eventually(20 * SECOND, POLL, || {
        let state = engine.inspect(&gone, "{{.State.Status}} {{.State.ExitCode}}")?;
        ensure!(state == "exited 1", "state is {state:?}");
        Ok(())
    })?;
    assert!(engine.docker(&["logs", &gone])?.contains("exiting"));
    assert!(cleanup.track_container("not-a-test-container").is_err());

    drop(cleanup);
    let leftovers = labelled_leftovers(&engine, &base)?;
    assert!(leftovers.is_empty(), "left behind: {leftovers:?}");
    for (kind, name) in [("network", &network), ("volume", &volume)] {
        assert!(
            engine.docker(&[kind, "inspect", name]).is_err(),
            "{kind} {name} left behind"
        );
    }
    Ok(())
}

#[test]
fn binaries_are_built_and_spawned() -> anyhow::Result<()> {
    let binaries = Binaries::get()?;
    for path in [&binaries.agent, &binaries.coordinator] {
        let process = Process::spawn(path, &["--help"], &[("RUST_LOG", "info")])?;
        eventually(30 * SECOND, POLL, || {
            ensure!(!process.is_running(), "{} still running", path.display());
            Ok(())
        })?;
        assert!(
            !process.log().is_empty(),
            "{} printed nothing",
            path.display()
        );
    }
    // Same answer, no second build.
    assert!(std::ptr::eq(binaries, Binaries::get()?));
    Ok(())
}

//! Run modes and policy end to end, against real engines and registries:
//! - `serve --run-once` with per-registry credentials from a docker config whose credential
//!   helper is a real `docker-credential-*` program, `CLEANUP` and `CLEANUP_UNUSED_VOLUMES`;
//! - the selection matrix (`MONITOR`, `IGNORE`, `LABEL_ENABLE`, `LABELS_ONLY`, enable labels),
//!   `MONITOR_ONLY` and `LATEST_ONLY`.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use ouroboros_tests::{
    Binaries, Cleanup, Engine, Process, Registry, eventually, publish, require_engine, unique_name,
};
use serde_json::Value;

use crate::fleet::Coordinator;

const CONVERGE: Duration = Duration::from_secs(60);
const POLL: Duration = Duration::from_millis(200);

fn row<'a>(checked: &'a Value, container: &str) -> &'a Value {
    checked
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["container"] == container)
        .unwrap_or(&Value::Null)
}

/// Waits for `process` to exit; its exit code.
fn exit_code(process: &Process, within: Duration) -> anyhow::Result<i32> {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = process.try_status()? {
            return Ok(status.code().unwrap_or(-1));
        }
        ensure!(
            Instant::now() < deadline,
            "still running after {within:?}:\n{}",
            process.log_tail(40)
        );
        std::thread::sleep(POLL);
    }
}

/// A `docker-credential-NAME` program in `dir` that knows one registry's password.
fn credential_helper(dir: &Path, name: &str, registry: &str, user: &str, password: &str) {
    let path = dir.join(format!("docker-credential-{name}"));
    std::fs::write(
        &path,
        format!(
            r#"#!/bin/sh
[ "$1" = get ] || exit 2
read -r server || true
echo "$server" >> "{log}"
if [ "$server" = "{registry}" ]; then
  printf '{{"ServerURL":"%s","Username":"{user}","Secret":"{password}"}}' "$server"
else
  echo "credentials not found in native keychain"; exit 1
fi
"#,
            log = dir.join("asked.log").display()
        ),
    )
    .unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
        .unwrap_or_else(|e| panic!("chmod {}: {e}", path.display()));
}

#[test]
fn run_once_with_helper_credentials_cleans_up_old_images_and_unused_anonymous_volumes()
-> anyhow::Result<()> {
    let Some(_system) = require_engine() else {
        return Ok(());
    };
    let bins = Binaries::get()?;
    // Its own engine: the volume prune must not meet other tests' volumes.
    let engine = Engine::start_extra()?;
    let (user, password) = ("helped", "h3lp?>~pw");
    let registry = Registry::start_with_auth(user, password)?;
    engine.login(registry.addr(), user, password)?;
    let on = Cleanup::new(&engine);
    let (solo_repo, shared_repo, tagged_repo) = (
        unique_name("once1"),
        unique_name("once2"),
        unique_name("once3"),
    );
    let solo_v1 = publish(&on, &registry, &solo_repo, "stable", 1)?;
    let shared_v1 = publish(&on, &registry, &shared_repo, "stable", 1)?;
    let tagged_v1 = publish(&on, &registry, &tagged_repo, "stable", 1)?;
    let none = ["--network", "none"];
    let solo = on.run_container("once-solo", &none, &solo_v1.reference, &[])?;
    let user_c = on.run_container("once-user", &none, &shared_v1.reference, &[])?;
    // Not watched, on the shared image, with an anonymous volume in use.
    let bystander = on.run_container(
        "once-by",
        &["--network", "none", "-v", "/data"],
        &shared_v1.reference,
        &[],
    )?;
    // Its old image keeps a second tag of the same repository (a rollback tag, say).
    let tagged = on.run_container("once-tagged", &none, &tagged_v1.reference, &[])?;
    let keep_tag = format!("{}:keep-me", tagged_v1.repository);
    on.track_image(&keep_tag)?;
    engine.docker(&["tag", &tagged_v1.reference, &keep_tag])?;
    let tagged_v1_id = engine.inspect(&tagged, "{{.Image}}")?;
    let solo_v1_id = engine.inspect(&solo, "{{.Image}}")?;
    let shared_v1_id = engine.inspect(&user_c, "{{.Image}}")?;
    let used_volume = engine.inspect(&bystander, "{{range .Mounts}}{{.Name}}{{end}}")?;
    ensure!(used_volume.len() == 64, "anonymous volume {used_volume:?}");
    let unused_anonymous = engine.docker(&["volume", "create"])?.trim().to_owned();
    // Not tracked (its name is the engine's): the extra engine goes with everything on it.
    let unused_named = on.create_volume("ouroboros-test-keep")?;
    publish(&on, &registry, &solo_repo, "stable", 2)?;
    publish(&on, &registry, &shared_repo, "stable", 2)?;
    publish(&on, &registry, &tagged_repo, "stable", 2)?;

    let dir = tempfile::Builder::new()
        .prefix("ouroboros-test-once-")
        .tempdir()?;
    let helpers = dir.path().join("bin");
    std::fs::create_dir(&helpers)?;
    credential_helper(&helpers, "ouroborostest", registry.addr(), user, password);
    let docker_config = dir.path().join("docker");
    std::fs::create_dir(&docker_config)?;
    std::fs::write(
        docker_config.join("config.json"),
        format!(
            r#"{{"credHelpers": {{"{}": "ouroborostest"}}}}"#,
            registry.addr()
        ),
    )?;
    let path = format!(
        "{}:{}",
        helpers.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut coordinator = Coordinator::init(&bins.coordinator, dir.path(), &["host-a"])?;
    let monitor = format!("{solo},{user_c},{tagged}");
    let env = [
        ("PATH", path.as_str()),
        ("DOCKER_CONFIG", docker_config.to_str().context("path")?),
        ("RUN_ONCE", "true"),
        ("OUROBOROS_RUN_ONCE_WAIT", "60"),
        ("CLEANUP", "true"),
        ("CLEANUP_UNUSED_VOLUMES", "true"),
        ("MONITOR", &monitor),
    ];
    let server = coordinator.serve_with_env("127.0.0.1:0", &env)?;
    let agent = coordinator.agent(&bins.agent, "host-a", &engine)?;
    let code = exit_code(&server, Duration::from_secs(180))?;
    let log = server.log();
    assert_eq!(code, 0, "{log}");
    // The printed cycle: both updated; the solo image removed, the shared one kept.
    let line = |name: &str| -> String {
        // The printed table's row (log lines start with a timestamp).
        log.lines()
            .find(|l| l.starts_with("host-a") && l.contains(name))
            .unwrap_or_default()
            .to_owned()
    };
    assert!(
        line(&solo).contains(&format!("updated; removed {solo_v1_id}")),
        "{log}"
    );
    assert!(
        line(&user_c).contains(&format!("updated; kept {shared_v1_id}")),
        "{log}"
    );
    assert!(
        line(&tagged).contains(&format!(
            "updated; kept {tagged_v1_id}: still tagged {keep_tag}"
        )),
        "{log}"
    );
    engine.docker(&["image", "inspect", &keep_tag])?;
    assert!(
        log.contains("host-a: removed 1 unused anonymous volume(s)"),
        "{log}"
    );
    // The engine agrees.
    ensure!(
        engine.docker(&["image", "inspect", &solo_v1_id]).is_err(),
        "the unused old image is still there"
    );
    engine.docker(&["image", "inspect", &shared_v1_id])?;
    ensure!(
        engine
            .docker(&["volume", "inspect", &unused_anonymous])
            .is_err(),
        "the unused anonymous volume is still there"
    );
    engine.docker(&["volume", "inspect", &unused_named])?;
    engine.docker(&["volume", "inspect", &used_volume])?;
    // Credentials came from the helper, asked about this registry only.
    let asked = std::fs::read_to_string(helpers.join("asked.log"))?;
    ensure!(
        asked.lines().all(|l| l == registry.addr()) && !asked.is_empty(),
        "helper asked: {asked:?}"
    );
    ensure!(
        !log.contains(password),
        "the password reached the coordinator's log"
    );

    // A second run with the agent gone: every known host must report, so it fails (1), after
    // its wait, naming the host.
    drop(agent);
    let env = [
        ("RUN_ONCE", "true"),
        ("OUROBOROS_RUN_ONCE_WAIT", "2"),
        ("MONITOR", &monitor),
    ];
    let server = coordinator.serve_with_env("127.0.0.1:0", &env)?;
    assert_eq!(exit_code(&server, Duration::from_secs(60))?, 1);
    assert!(
        server
            .log()
            .contains("host(s) not reporting within 2s: host-a"),
        "{}",
        server.log()
    );
    Ok(())
}

/// The containers of the matrix, by role.
struct Matrix {
    plain: String,
    enabled: String,
    disabled: String,
    watchtower: String,
}

/// `updates --output json` against a coordinator started with `env`; the decision and reason
/// of each container of `m`.
fn updates_with(
    coordinator: &mut Coordinator,
    bins: &Binaries,
    engine: &Engine,
    env: &[(&str, &str)],
    m: &Matrix,
) -> anyhow::Result<Vec<(String, String)>> {
    let _server = coordinator.serve_with_env("127.0.0.1:0", env)?;
    let _agent = coordinator.agent(&bins.agent, "host-a", engine)?;
    // The store knows the host from the last run: wait for this run's agent.
    let mut planned = Value::Null;
    eventually(CONVERGE, POLL, || {
        planned = coordinator.json(&["updates"])?;
        let r = row(&planned, &m.plain);
        ensure!(
            !r.is_null()
                && !r["reason"]
                    .as_str()
                    .unwrap_or("")
                    .starts_with("host not connected"),
            "agent not connected yet"
        );
        Ok(())
    })?;
    Ok([&m.plain, &m.enabled, &m.disabled, &m.watchtower]
        .iter()
        .map(|c| {
            let r = row(&planned, c);
            (
                r["decision"].as_str().unwrap_or("absent").to_owned(),
                r["reason"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect())
}

#[test]
fn selection_matrix_monitor_only_and_latest_only() -> anyhow::Result<()> {
    let Some(engine) = require_engine() else {
        return Ok(());
    };
    let bins = Binaries::get()?;
    let registry = Registry::start()?;
    let on = Cleanup::new(&engine);
    let repo = unique_name("matrix");
    let v1 = publish(&on, &registry, &repo, "stable", 1)?;
    let none = ["--network", "none"];
    let labelled = |label: &'static str| ["--network", "none", "--label", label];
    let m = Matrix {
        plain: on.run_container("mx-plain", &none, &v1.reference, &[])?,
        enabled: on.run_container(
            "mx-on",
            &labelled("com.ouroboros.enable=true"),
            &v1.reference,
            &[],
        )?,
        disabled: on.run_container(
            "mx-off",
            &labelled("com.ouroboros.enable=false"),
            &v1.reference,
            &[],
        )?,
        watchtower: on.run_container(
            "mx-wt",
            &labelled("com.centurylinklabs.watchtower.enable=true"),
            &v1.reference,
            &[],
        )?,
    };
    publish(&on, &registry, &repo, "stable", 2)?;
    let all = [&m.plain, &m.enabled, &m.disabled, &m.watchtower]
        .iter()
        .map(|s| s.as_str())
        .collect::<Vec<_>>()
        .join(",");
    let ids = || -> anyhow::Result<Vec<String>> {
        [&m.plain, &m.enabled, &m.disabled, &m.watchtower]
            .iter()
            .map(|c| engine.inspect(c, "{{.Id}}"))
            .collect()
    };
    let ids_before = ids()?;

    let dir = tempfile::Builder::new()
        .prefix("ouroboros-test-matrix-")
        .tempdir()?;
    let mut coordinator = Coordinator::init(&bins.coordinator, dir.path(), &["host-a"])?;
    let update = |d: &(String, String)| d.0 == "update";
    let skip = |d: &(String, String), why: &str| d.0 == "skip" && d.1.contains(why);

    // MONITOR names the four (other tests' containers share this engine).
    let d = updates_with(&mut coordinator, bins, &engine, &[("MONITOR", &all)], &m)?;
    assert!(update(&d[0]) && update(&d[1]) && update(&d[3]), "{d:?}");
    assert!(
        skip(&d[2], "enable=false"),
        "enable=false always wins: {d:?}"
    );

    let env = [("MONITOR", all.as_str()), ("LABEL_ENABLE", "true")];
    let d = updates_with(&mut coordinator, bins, &engine, &env, &m)?;
    assert!(skip(&d[0], "not labelled enable=true"), "{d:?}");
    assert!(update(&d[1]) && update(&d[3]), "{d:?}");
    assert!(skip(&d[2], "enable=false"), "{d:?}");

    // LABELS_ONLY: the name lists are not used (MONITOR names only the plain one).
    let env = [("MONITOR", m.plain.as_str()), ("LABELS_ONLY", "true")];
    let d = updates_with(&mut coordinator, bins, &engine, &env, &m)?;
    assert!(skip(&d[0], "not labelled"), "{d:?}");
    assert!(update(&d[1]) && update(&d[3]), "{d:?}");

    // MONITOR with the host form, IGNORE wins over MONITOR.
    let monitor = format!("host-a/{},{},{}", m.plain, m.enabled, m.disabled);
    let env = [
        ("MONITOR", monitor.as_str()),
        ("IGNORE", m.enabled.as_str()),
    ];
    let d = updates_with(&mut coordinator, bins, &engine, &env, &m)?;
    assert!(update(&d[0]), "{d:?}");
    assert!(skip(&d[1], "in IGNORE"), "{d:?}");
    assert!(skip(&d[3], "not in MONITOR"), "{d:?}");
    let other_host = format!("host-b/{}", m.plain);
    let env = [("MONITOR", other_host.as_str())];
    let d = updates_with(&mut coordinator, bins, &engine, &env, &m)?;
    assert!(
        skip(&d[0], "not in MONITOR"),
        "host/name is for that host only: {d:?}"
    );

    // MONITOR_ONLY: scheduled cycles see the updates and change nothing. A store of its own,
    // where nothing was announced yet.
    let fresh = tempfile::Builder::new()
        .prefix("ouroboros-test-matrix-mo-")
        .tempdir()?;
    let mut watcher = Coordinator::init(&bins.coordinator, fresh.path(), &["host-a"])?;
    {
        let env = [
            ("MONITOR", all.as_str()),
            ("MONITOR_ONLY", "true"),
            ("INTERVAL", "1"),
        ];
        let server = watcher.serve_with_env("127.0.0.1:0", &env)?;
        let _agent = watcher.agent(&bins.agent, "host-a", &engine)?;
        eventually(CONVERGE, POLL, || {
            let cycles = server
                .log()
                .lines()
                .filter(|l| l.contains("Scheduled check cycle done.") && l.contains("updates=3"))
                .count();
            ensure!(
                cycles >= 3,
                "{cycles} monitor-only cycles saw the 3 updates"
            );
            Ok(())
        })?;
        // Each container's new digest was announced once, not once per cycle.
        let log = server.log();
        for c in [&m.plain, &m.enabled, &m.watchtower] {
            let announced = log
                .lines()
                .filter(|l| {
                    l.contains("New image available.") && l.contains(&format!("container={c} "))
                })
                .count();
            assert_eq!(announced, 1, "{c} announced {announced} times");
        }
    }
    {
        // The store remembers across a restart: nothing is announced again.
        let env = [
            ("MONITOR", all.as_str()),
            ("MONITOR_ONLY", "true"),
            ("INTERVAL", "1"),
        ];
        let server = watcher.serve_with_env("127.0.0.1:0", &env)?;
        let _agent = watcher.agent(&bins.agent, "host-a", &engine)?;
        eventually(CONVERGE, POLL, || {
            let cycles = server
                .log()
                .lines()
                .filter(|l| l.contains("Scheduled check cycle done.") && l.contains("updates=3"))
                .count();
            ensure!(cycles >= 2, "{cycles} cycles after the restart");
            Ok(())
        })?;
        assert!(
            !server.log().contains("New image available."),
            "announced again after a restart"
        );
    }
    assert_eq!(ids()?, ids_before, "MONITOR_ONLY changed a container");

    // LATEST_ONLY: a container on tag 1 follows `latest` and is recreated from it.
    let pinned_tag = publish(&on, &registry, &repo, "1", 1)?;
    let follower = on.run_container("mx-latest", &none, &pinned_tag.reference, &[])?;
    let latest = publish(&on, &registry, &repo, "latest", 3)?;
    let env = [("MONITOR", follower.as_str()), ("LATEST_ONLY", "true")];
    let _server = coordinator.serve_with_env("127.0.0.1:0", &env)?;
    let _agent = coordinator.agent(&bins.agent, "host-a", &engine)?;
    eventually(CONVERGE, POLL, || {
        let planned = coordinator.json(&["updates"])?;
        ensure!(
            row(&planned, &follower)["decision"] == "update",
            "not planned yet: {planned}"
        );
        Ok(())
    })?;
    let (code, checked) = coordinator.admin(&["check"])?;
    assert_eq!(code, 0, "{checked}");
    let r = row(&checked, &follower);
    assert_eq!(r["status"], "updated", "{checked}");
    assert_eq!(
        r["target"],
        format!("{}:latest@{}", latest.repository, latest.digest),
        "{checked}"
    );
    assert_eq!(
        engine.inspect(&follower, "{{.Config.Image}}")?,
        format!("{}:latest", latest.repository)
    );
    let latest_id =
        engine.docker(&["image", "inspect", "--format", "{{.Id}}", &latest.pinned()])?;
    assert_eq!(engine.inspect(&follower, "{{.Image}}")?, latest_id);
    Ok(())
}

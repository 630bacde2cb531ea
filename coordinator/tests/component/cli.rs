//! Snapshot tests of the admin commands' table and JSON output, run as the real binary
//! against a real coordinator serving a fake fleet: a store the test fills (two hosts, their
//! containers, two rollouts, a history, a pause) and no agents. Relative ages and the times
//! the coordinator makes itself (cycles) are masked; everything else must match the files in
//! `tests/component/snapshots/` byte for byte. `UPDATE_SNAPSHOTS=1` rewrites them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ouroboros_coordinator::cli::serve::{self as server, ServeConfig};
use ouroboros_coordinator::fleet::store::{Batch, FleetStore, HostRecord, RedbStore};
use ouroboros_coordinator::plan::rollout::{
    HistoryEntry, Policy, Rollout, RolloutState, Target, TargetState,
};
use ouroboros_shared::inventory::{ContainerInfo, ContainerState, EngineInfo, Health, HostMode};
use ouroboros_shared::pki::{self, PkiDir};

/// 2025-06-01T12:00:00Z: fixture times, far from the run's own.
const T0: i64 = 1_748_779_200_000;
const OLD: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
const NEW: &str = "sha256:2222222222222222222222222222222222222222222222222222222222222222";

fn container(name: &str, image: &str, state: ContainerState, health: Health) -> ContainerInfo {
    ContainerInfo {
        id: format!("{name:0<12}").replace(|c: char| !c.is_ascii_alphanumeric(), "0")
            + &"a".repeat(52),
        name: name.into(),
        image: image.into(),
        image_id: NEW.into(),
        repo_digests: vec![format!(
            "{}@{OLD}",
            image.rsplit_once(':').map_or(image, |(r, _)| r)
        )],
        labels: BTreeMap::from([("com.ouroboros.enable".to_owned(), "true".to_owned())]),
        state,
        health,
        restart_count: 0,
        created_unix: T0 / 1000 - 86_400,
        network_mode: "bridge".into(),
        links: Vec::new(),
        pid_mode: String::new(),
        ipc_mode: String::new(),
        set_aside: String::new(),
    }
}

fn host(name: &str, containers: Vec<ContainerInfo>) -> HostRecord {
    HostRecord {
        host: name.into(),
        agent_version: "0.1.0".into(),
        agent_image: String::new(),
        agent_container: String::new(),
        engine: EngineInfo {
            version: "20.10.24".into(),
            api_version: "1.41".into(),
            os: "linux".into(),
            arch: "x86_64".into(),
        },
        mode: HostMode::Standalone,
        last_seen_unix_ms: T0,
        inventory_at_unix_ms: T0,
        containers: containers.into(),
        cluster_id: String::new(),
        services: Vec::new(),
    }
}

fn target(host: &str, container: &str, state: TargetState, at: i64) -> Target {
    Target {
        host: host.into(),
        container: container.into(),
        image: format!("registry.lan:5000/{container}:stable"),
        target: format!("registry.lan:5000/{container}:stable@{NEW}"),
        previous: format!("registry.lan:5000/{container}:stable@{OLD}"),
        old_digest: OLD.into(),
        new_digest: NEW.into(),
        batch: 1,
        transitions: vec![
            (at, "pending".into()),
            (at + 1_000, "updating".into()),
            (at + 9_000, state.name().into()),
        ],
        state,
        started_ms: at + 1_000,
        finished_ms: at + 9_000,
        soft_dependants: Vec::new(),
        dependant_images: Default::default(),
        op_id: format!("op-{}-{container}", at / 1000),
        own: Default::default(),
        service: false,
        touches: None,
    }
}

/// The fake fleet, written straight into a store in `data`.
fn fill(data: &Path) {
    let store = RedbStore::open(data).unwrap();
    let mut batch = Batch::default();
    for h in [
        host(
            "web-01",
            vec![
                container(
                    "shop",
                    "registry.lan:5000/shop:stable",
                    ContainerState::Running,
                    Health::Healthy,
                ),
                container(
                    "proxy",
                    "registry.lan:5000/proxy:stable",
                    ContainerState::Running,
                    Health::None,
                ),
                ContainerInfo {
                    set_aside: "old container set aside by an update".into(),
                    ..container(
                        "shop-ouroboros-old-op-7",
                        "registry.lan:5000/shop:stable",
                        ContainerState::Exited,
                        Health::None,
                    )
                },
            ],
        ),
        host(
            "db-01",
            vec![container(
                "postgres",
                "postgres:16",
                ContainerState::Exited,
                Health::None,
            )],
        ),
    ]
    .into_iter()
    .map(|mut h| {
        // web-01's agent runs in a container, on an image digest `hosts` and `status` show.
        if h.host == "web-01" {
            h.agent_image = format!(
                "registry.lan:5000/ouroboros-agent:0.1@sha256:{}",
                "3f".repeat(32)
            );
        }
        h
    }) {
        batch.hosts.insert(h.host.clone(), h);
    }
    let done = Rollout {
        id: "r-1748779200000-0".into(),
        created_ms: T0,
        updated_ms: T0 + 9_000,
        policy: Policy::default(),
        state: RolloutState::Completed { failed: 0 },
        targets: vec![target(
            "web-01",
            "shop",
            TargetState::Updated {
                at_ms: T0 + 9_000,
                already_current: false,
            },
            T0,
        )],
        last_host_done_ms: T0 + 9_000,
        canary_done_ms: 0,
        acknowledged_failures: 0,
        cancel: None,
    };
    let paused = Rollout {
        id: "r-1748782800000-0".into(),
        created_ms: T0 + 3_600_000,
        updated_ms: T0 + 3_609_000,
        policy: Policy::default(),
        state: RolloutState::Paused {
            reason: "1 of 2 targets failed (tolerated: 0%)".into(),
        },
        targets: vec![
            target(
                "web-01",
                "proxy",
                TargetState::Failed {
                    reason: "the new container is unhealthy".into(),
                    outcome: "rolled-back".into(),
                },
                T0 + 3_600_000,
            ),
            {
                let mut t = target("db-01", "postgres", TargetState::Pending, T0 + 3_600_000);
                t.transitions.truncate(1);
                t.started_ms = 0;
                t.finished_ms = 0;
                t
            },
        ],
        last_host_done_ms: T0 + 3_609_000,
        canary_done_ms: 0,
        acknowledged_failures: 0,
        cancel: None,
    };
    batch.history = [&done, &paused]
        .iter()
        .flat_map(|r| {
            r.targets
                .iter()
                .filter(|t| t.finished_ms > 0)
                .map(|t| t.history(&r.id))
        })
        .collect::<Vec<HistoryEntry>>();
    batch.rollouts.insert(done.id.clone(), done.into());
    batch.rollouts.insert(paused.id.clone(), paused.into());
    batch
        .settings
        .insert("paused".into(), Some("change freeze".into()));
    store.save(&batch).unwrap();
}

/// Masks what differs from run to run: relative ages and the coordinator's own times. The
/// rest of each line, spacing included, is kept.
fn mask(text: &str) -> String {
    let is_age = |w: &str| {
        w.len() > 1
            && w[..w.len() - 1].bytes().all(|b| b.is_ascii_digit())
            && matches!(w.as_bytes()[w.len() - 1], b's' | b'm' | b'h' | b'd' | b'y')
    };
    let mut out = String::new();
    for line in text.lines() {
        let parts: Vec<&str> = line.split(' ').collect();
        let mut kept: Vec<String> = Vec::new();
        let mut i = 0;
        while i < parts.len() {
            let w = parts[i];
            if is_age(w) && parts.get(i + 1) == Some(&"ago") {
                kept.push("<age>".into());
                i += 2;
            } else if w == "in" && parts.get(i + 1).is_some_and(|n| is_age(n)) {
                kept.push("<in>".into());
                i += 2;
            } else if w.starts_with("\"20") && !w.starts_with("\"2025-") {
                // The run's own timestamps (cycles); the fixture's are of 2025.
                let comma = if w.ends_with(',') { "," } else { "" };
                kept.push(format!("\"<time>\"{comma}"));
                i += 1;
            } else {
                kept.push(w.to_owned());
                i += 1;
            }
        }
        out.push_str(&kept.join(" "));
        out.push('\n');
    }
    out
}

fn snapshot_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/component/snapshots")
}

fn check_snapshot(name: &str, actual: &str) -> Result<(), String> {
    let path = snapshot_dir().join(format!("{name}.txt"));
    if std::env::var_os("UPDATE_SNAPSHOTS").is_some() {
        std::fs::create_dir_all(snapshot_dir()).unwrap();
        std::fs::write(&path, actual).unwrap();
        return Ok(());
    }
    let expected = std::fs::read_to_string(&path)
        .map_err(|e| format!("{}: {e} (UPDATE_SNAPSHOTS=1 writes it)", path.display()))?;
    if expected == actual {
        Ok(())
    } else {
        Err(format!(
            "{name} differs from {}:\n--- expected\n{expected}--- actual\n{actual}",
            path.display()
        ))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_command_prints_its_table_and_json_as_in_the_snapshots() {
    ouroboros_shared::install_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    let pki_dir = PkiDir::new(dir.path().join("pki"));
    pki::init(&pki_dir, &[]).unwrap();
    let data = dir.path().join("data");
    fill(&data);
    let config = ServeConfig {
        schedule: ouroboros_coordinator::plan::schedule::Schedule::Interval(Duration::from_secs(
            3600,
        )),
        // The fixture's history is from 2025: keep it.
        history_retention: Duration::from_secs(100 * 365 * 24 * 3600),
        ..ServeConfig::new(data, pki_dir.clone())
    };
    let prepared = server::prepare(config).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("https://{}", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(server::run(prepared, listener, async {
        let _ = stopped.await;
    }));
    let bin = env!("CARGO_BIN_EXE_ouroboros-coordinator");
    let pki_path = pki_dir.dir().to_str().unwrap().to_owned();
    let run = |args: Vec<String>| {
        let bin = bin.to_owned();
        let url = url.clone();
        let pki_path = pki_path.clone();
        async move {
            tokio::task::spawn_blocking(move || {
                std::process::Command::new(bin)
                    .args(&args)
                    .args(["--server", &url, "--pki-dir", &pki_path])
                    .env_remove("NO_COLOR")
                    .output()
                    .unwrap()
            })
            .await
            .unwrap()
        }
    };
    let commands: Vec<(&str, Vec<&str>, i32)> = vec![
        ("status", vec!["status"], 0),
        ("hosts", vec!["hosts"], 0),
        ("containers", vec!["containers"], 0),
        (
            "containers-web-01",
            vec!["containers", "--host", "web-01"],
            0,
        ),
        ("updates", vec!["updates"], 0),
        ("check", vec!["check"], 0),
        ("update-host", vec!["update", "--host", "web-01"], 0),
        (
            "update-container",
            vec!["update", "--container", "postgres"],
            0,
        ),
        ("rollouts", vec!["rollouts"], 0),
        ("rollout", vec!["rollout", "r-1748782800000-0"], 0),
        (
            "rollout-watch",
            vec!["rollout", "r-1748779200000-0", "--watch"],
            0,
        ),
        ("history", vec!["history"], 0),
        (
            "history-web-01-shop",
            vec!["history", "--host", "web-01", "--container", "shop"],
            0,
        ),
    ];
    let mut failures = Vec::new();
    for (name, args, code) in &commands {
        for format in ["table", "json"] {
            let mut full: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
            full.extend(["--output".to_owned(), format.to_owned()]);
            let out = run(full).await;
            let stdout = String::from_utf8_lossy(&out.stdout);
            if out.status.code() != Some(*code) {
                failures.push(format!(
                    "{name} --output {format}: exit {:?}: {}",
                    out.status.code(),
                    String::from_utf8_lossy(&out.stderr)
                ));
                continue;
            }
            if let Err(e) = check_snapshot(&format!("{name}.{format}"), &mask(&stdout)) {
                failures.push(e);
            }
            if format == "json" {
                // Every JSON output parses (one document, or one per line for --watch).
                let parsed = serde_json::from_str::<serde_json::Value>(&stdout).is_ok()
                    || stdout
                        .lines()
                        .all(|l| serde_json::from_str::<serde_json::Value>(l).is_ok());
                if !parsed {
                    failures.push(format!("{name}: not JSON: {stdout}"));
                }
            }
        }
    }
    // The commands that change things, last: pause is already on (the fixture), resume lifts
    // it and lets the paused rollout go on.
    let out = run(vec!["resume".into(), "--output".into(), "table".into()]).await;
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    if let Err(e) = check_snapshot("resume.table", &mask(&String::from_utf8_lossy(&out.stdout))) {
        failures.push(e);
    }
    let out = run(vec!["pause".into(), "--reason".into(), "audit".into()]).await;
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    if let Err(e) = check_snapshot("pause.table", &mask(&String::from_utf8_lossy(&out.stdout))) {
        failures.push(e);
    }
    // The resumed rollout waits for its host (away): cancelled, its target not started is
    // cancelled and the rollout ends; a second cancel, an unknown id and a malformed one are
    // refused.
    let cancel = |id: &str, format: &str| {
        run(vec![
            "rollout".into(),
            "cancel".into(),
            id.into(),
            "--reason".into(),
            "bad image".into(),
            "--output".into(),
            format.into(),
        ])
    };
    let out = cancel("r-1748782800000-0", "table").await;
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    if let Err(e) = check_snapshot("cancel.table", &mask(&String::from_utf8_lossy(&out.stdout))) {
        failures.push(e);
    }
    let listed = run(vec![
        "rollout".into(),
        "r-1748782800000-0".into(),
        "--output".into(),
        "json".into(),
    ])
    .await;
    let json: serde_json::Value = serde_json::from_slice(&listed.stdout).unwrap();
    assert_eq!(json[0]["state"], "cancelled", "{json}");
    assert_eq!(
        json[0]["reason"], "cancelled by the operator: bad image",
        "{json}"
    );
    assert_eq!(json[0]["targets"][1]["state"], "cancelled", "{json}");
    assert_eq!(json[0]["targets"][0]["state"], "failed", "{json}");
    let again = cancel("r-1748782800000-0", "json").await;
    assert_eq!(again.status.code(), Some(1), "{again:?}");
    let said = String::from_utf8_lossy(&again.stderr);
    assert!(said.contains("already ended (cancelled)"), "{said}");
    let unknown = cancel("r-1", "json").await;
    assert_eq!(unknown.status.code(), Some(2), "{unknown:?}");
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("no rollout r-1"));
    let malformed = cancel("1; drop", "json").await;
    assert_eq!(malformed.status.code(), Some(2), "{malformed:?}");
    // `hosts forget`: db-01 leaves the fleet (it never connected: no serial to revoke); a
    // second forget, and an unknown host, are refused and change nothing.
    let forget = |host: &str, format: &str| {
        run(vec![
            "hosts".into(),
            "forget".into(),
            host.into(),
            "--output".into(),
            format.into(),
        ])
    };
    let out = forget("db-01", "table").await;
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    if let Err(e) = check_snapshot(
        "hosts-forget.table",
        &mask(&String::from_utf8_lossy(&out.stdout)),
    ) {
        failures.push(e);
    }
    let again = forget("db-01", "json").await;
    assert_eq!(again.status.code(), Some(2), "{again:?}");
    assert_eq!(
        String::from_utf8_lossy(&again.stderr).trim(),
        "error: coordinator refused: no host db-01: nothing forgotten (`hosts` lists the fleet)"
    );
    let listed = run(vec!["hosts".into(), "--output".into(), "json".into()]).await;
    let json: serde_json::Value = serde_json::from_slice(&listed.stdout).unwrap();
    let names: Vec<&str> = json
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["host"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["web-01"], "{json}");
    // Completions for each shell, and --version.
    for shell in ["bash", "zsh", "fish"] {
        let out = std::process::Command::new(bin)
            .args(["completions", shell])
            .output()
            .unwrap();
        let script = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(0), "{shell}: {out:?}");
        assert!(
            script.contains("ouroboros-coordinator") && script.contains("rollout"),
            "{shell}: {script}"
        );
    }
    let version = std::process::Command::new(bin)
        .arg("--version")
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&version.stdout).trim(),
        format!("ouroboros-coordinator {}", env!("CARGO_PKG_VERSION"))
    );
    let _ = stop.send(());
    let _ = serving.await;
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[tokio::test]
async fn rotated_server_and_cli_certificates_work_together_and_the_old_ones_are_kept() {
    ouroboros_shared::install_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    let bin = env!("CARGO_BIN_EXE_ouroboros-coordinator");
    let pki_dir = PkiDir::new(dir.path().join("pki"));
    pki::init(&pki_dir, &[]).unwrap();
    let old_server = std::fs::read_to_string(pki_dir.coordinator_cert()).unwrap();
    for command in ["rotate-server", "rotate-cli"] {
        let out = std::process::Command::new(bin)
            .args(["pki", command, "--dir"])
            .arg(pki_dir.dir())
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(0), "{command}: {out:?}");
        let said = String::from_utf8_lossy(&out.stdout);
        assert!(said.contains("previous one kept as"), "{said}");
    }
    assert_eq!(
        std::fs::read_to_string(dir.path().join("pki/coordinator.pem.bak")).unwrap(),
        old_server
    );
    assert!(dir.path().join("pki/cli-key.pem.bak").exists());
    // A server started on the rotated certificate answers the rotated CLI certificate.
    let prepared =
        server::prepare(ServeConfig::new(dir.path().join("data"), pki_dir.clone())).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("https://{}", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(server::run(prepared, listener, async {
        let _ = stopped.await;
    }));
    let pki_path = pki_dir.dir().to_owned();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(bin)
            .args(["hosts", "--server", &url, "--pki-dir"])
            .arg(pki_path)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let _ = stop.send(());
    let _ = serving.await;
}

//! Registry probing against the real registry: Debian's `docker-registry` (distribution 2.8)
//! with htpasswd (bcrypt) Basic auth on loopback, started by the harness. The counterpart of
//! the coordinator's `probe` bench, which uses an in-process fake with a fixed round trip.
//!
//! - an idle detection of 50 containers (on 10 hosts) over 2 images, with the coordinator's
//!   own `detect` and `RegistryClient`: registry requests (from the registry's access log) and
//!   wall time, for a new client (which learns Basic from a 401) and for the client the
//!   coordinator keeps between cycles;
//! - probing 1,000 unique tags (one manifest `PUT` under 1,000 tags through the registry API)
//!   at the default per-registry limit (8) and larger ones, with an already-authenticated
//!   client; the same against an anonymous registry, to show what the registry's bcrypt check
//!   of every request costs.
//!
//! Each row also gives the CPU time the registry and this process (the client) used, from
//! `/proc`: on loopback the registry's own CPU is what bounds the probing rate.
//!
//! `cargo bench -p ouroboros-tests --bench real_registry` (needs a Docker engine, only to push
//! the two images; prints `skipping` without one).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, ensure};
use ouroboros_coordinator::detect::credentials::Credentials;
use ouroboros_coordinator::detect::registry::{RegistryClient, RegistryConfig};
use ouroboros_coordinator::detect::{Decision, Selection, detect};
use ouroboros_coordinator::telemetry::metrics::Metrics;
use ouroboros_shared::inventory::{ContainerInfo, ContainerState, Health};
use ouroboros_shared::reference::ImageRef;
use ouroboros_tests::{Cleanup, Registry, TestImage, publish, require_engine, unique_name};

/// Containers in the idle cycle, spread over [`HOSTS`] hosts and the two images.
const CONTAINERS: usize = 50;
const HOSTS: usize = 10;
/// Unique tags probed at once.
const TAGS: usize = 1000;
/// Per-registry limits tried for the 1,000 tags; the first is the default.
const LIMITS: [usize; 3] = [8, 32, 128];
/// Probes in flight across registries during a cycle (the coordinator's `PROBE_CONCURRENCY`).
const CYCLE_CONCURRENCY: usize = 32;
/// Warm idle cycles measured (the median is printed).
const WARM_CYCLES: usize = 20;

const USER: &str = "bench";
const PASSWORD: &str = "b3nch/pw+";

const MANIFEST_V2: &str = "application/vnd.docker.distribution.manifest.v2+json";

/// Requests from the coordinator's client in the registry's access log so far, once the log
/// has stopped growing (the registry writes an access line right after each response).
fn client_requests(registry: &Registry) -> usize {
    let count = || {
        registry
            .access_log()
            .iter()
            .filter(|e| e.user_agent.starts_with("ouroboros/"))
            .count()
    };
    let mut last = count();
    loop {
        std::thread::sleep(Duration::from_millis(150));
        let now = count();
        if now == last {
            return now;
        }
        last = now;
    }
}

/// CPU time (user + system) process `pid` has used so far, from `/proc/<pid>/stat` (clock
/// ticks of 10 ms, `CLK_TCK` 100 as on Linux here).
fn cpu_of(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The fields after `(comm)` start with the state, field 3; utime is 14, stime 15.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks: u64 = [11, 12]
        .iter()
        .filter_map(|&i| fields.get(i).and_then(|f| f.parse::<u64>().ok()))
        .sum();
    Duration::from_millis(ticks * 10)
}

/// CPU used so far by the registry and by this process (the coordinator's client).
fn cpu(registry: &Registry) -> (Duration, Duration) {
    (cpu_of(registry.pid()), cpu_of(std::process::id()))
}

fn client(registry: &Registry, per_registry: usize) -> Arc<RegistryClient> {
    let repo_credentials = registry
        .credentials()
        .map(|(u, p)| (u.to_owned(), p.to_owned()));
    let config = RegistryConfig {
        credentials: Arc::new(Credentials::from_repo(repo_credentials)),
        per_registry,
        ..RegistryConfig::default()
    };
    Arc::new(
        RegistryClient::new(config, Metrics::new(false).expect("metrics"))
            .expect("registry client"),
    )
}

fn fleet(images: &[TestImage]) -> Vec<(String, ContainerInfo)> {
    (0..CONTAINERS)
        .map(|i| {
            let image = &images[i % images.len()];
            let info = ContainerInfo {
                id: format!("{i:064x}"),
                name: format!("c{i}"),
                image: image.reference.clone(),
                image_id: format!("sha256:{i:064x}"),
                repo_digests: vec![image.pinned()],
                labels: Default::default(),
                state: ContainerState::Running,
                health: Health::None,
                restart_count: 0,
                created_unix: 0,
                network_mode: String::new(),
                links: Vec::new(),
                pid_mode: String::new(),
                ipc_mode: String::new(),
                set_aside: String::new(),
            };
            (format!("host-{}", i % HOSTS), info)
        })
        .collect()
}

/// Pushes the manifest of `<repo>:stable` again under `<repo>:t0` … `<repo>:t999`.
fn tag_many(registry: &Registry, repo: &str) -> anyhow::Result<()> {
    let path = format!("/v2/{repo}/manifests/stable");
    let manifest = registry.request("GET", &path, &[("Accept", MANIFEST_V2)])?;
    ensure!(manifest.status == 200, "GET {path}: {}", manifest.status);
    let media_type = manifest
        .header("Content-Type")
        .unwrap_or(MANIFEST_V2)
        .to_owned();
    for i in 0..TAGS {
        let path = format!("/v2/{repo}/manifests/t{i}");
        let put = registry.request_with_body(
            "PUT",
            &path,
            &[("Content-Type", &media_type)],
            &manifest.body,
        )?;
        ensure!(
            put.status == 201,
            "PUT {path}: {} {}",
            put.status,
            put.text()
        );
    }
    Ok(())
}

/// One row of the table.
struct Row {
    what: String,
    requests: usize,
    took: Duration,
    /// CPU of the registry and of the client during it.
    cpu: (Duration, Duration),
    note: String,
}

/// Probes the 1,000 tags with an authenticated client limited to `limit` requests in flight.
fn probe_tags(
    runtime: &tokio::runtime::Runtime,
    registry: &Registry,
    repo: &str,
    limit: usize,
    what: &str,
) -> anyhow::Result<Row> {
    let client = client(registry, limit);
    let tags: Vec<ImageRef> = (0..TAGS)
        .map(|i| ImageRef::parse(&registry.reference(repo, &format!("t{i}"))))
        .collect::<Result<_, _>>()?;
    let stable = ImageRef::parse(&registry.reference(repo, "stable"))?;
    // Learn the registry's auth first, as the coordinator's long-lived client has.
    runtime
        .block_on(client.digest(&stable))
        .context("warm-up probe")?;
    let before = client_requests(registry);
    let cpu_before = cpu(registry);
    let started = Instant::now();
    let probes = runtime.block_on(futures_util::future::join_all(
        tags.iter().map(|t| client.digest(t)),
    ));
    let took = started.elapsed();
    let cpu_after = cpu(registry);
    let requests = client_requests(registry) - before;
    let failed: Vec<String> = probes
        .iter()
        .filter_map(|p| p.as_ref().err().map(ToString::to_string))
        .take(3)
        .collect();
    ensure!(failed.is_empty(), "probes failed: {failed:?}");
    Ok(Row {
        what: what.to_owned(),
        requests,
        took,
        cpu: (cpu_after.0 - cpu_before.0, cpu_after.1 - cpu_before.1),
        note: format!("{:.1} ms per request", per_request(took, requests)),
    })
}

fn per_request(took: Duration, requests: usize) -> f64 {
    took.as_secs_f64() * 1000.0 / requests.max(1) as f64
}

fn median(mut values: Vec<Duration>) -> Duration {
    values.sort();
    values[values.len() / 2]
}

fn main() -> anyhow::Result<()> {
    let Some(engine) = require_engine() else {
        return Ok(());
    };
    ouroboros_shared::install_crypto_provider();
    let runtime = tokio::runtime::Runtime::new()?;
    let registry = Registry::start_with_auth(USER, PASSWORD)?;
    let anonymous = Registry::start()?;
    engine.login(registry.addr(), USER, PASSWORD)?;
    let cleanup = Cleanup::new(&engine);
    let repos = [unique_name("bench-a"), unique_name("bench-b")];
    let images = repos
        .iter()
        .zip(1..)
        .map(|(repo, version)| publish(&cleanup, &registry, repo, "stable", version))
        .collect::<anyhow::Result<Vec<_>>>()?;
    publish(&cleanup, &anonymous, &repos[0], "stable", 1)?;
    let setup = Instant::now();
    tag_many(&registry, &repos[0])?;
    tag_many(&anonymous, &repos[0])?;
    let setup = setup.elapsed();
    let mut rows = Vec::new();

    // (a) The idle cycle: a new client, then the one the coordinator keeps.
    let fleet = fleet(&images);
    let units: Vec<_> = fleet.iter().map(|(h, c)| (h.as_str(), c)).collect();
    let client = client(&registry, RegistryConfig::default().per_registry);
    // One detection: requests, wall time and CPU (registry, client) of the detection alone.
    let cycle = |label: &str| -> anyhow::Result<(usize, Duration, (Duration, Duration))> {
        let before = client_requests(&registry);
        let cpu_before = cpu(&registry);
        let started = Instant::now();
        let out = runtime.block_on(detect(
            client.clone(),
            &units,
            &Selection::default(),
            CYCLE_CONCURRENCY,
        ));
        let took = started.elapsed();
        let cpu_after = cpu(&registry);
        let current = out
            .iter()
            .filter(|d| d.decision == Decision::Current)
            .count();
        ensure!(
            current == CONTAINERS,
            "{label}: {current} of {CONTAINERS} current: {:?}",
            out.iter().find(|d| d.decision != Decision::Current)
        );
        let cpu = (cpu_after.0 - cpu_before.0, cpu_after.1 - cpu_before.1);
        Ok((client_requests(&registry) - before, took, cpu))
    };
    let (requests, took, cpu_used) = cycle("first cycle")?;
    rows.push(Row {
        what: "idle cycle, 50 containers over 2 images, new client".to_owned(),
        requests,
        took,
        cpu: cpu_used,
        note: "a 401 per image, then Basic".to_owned(),
    });
    let mut warm = Vec::new();
    let mut warm_requests = Vec::new();
    let mut warm_cpu = (Duration::ZERO, Duration::ZERO);
    for _ in 0..WARM_CYCLES {
        let (requests, took, cpu_used) = cycle("idle cycle")?;
        warm.push(took);
        warm_requests.push(requests);
        warm_cpu = (warm_cpu.0 + cpu_used.0, warm_cpu.1 + cpu_used.1);
    }
    warm_requests.sort_unstable();
    warm_requests.dedup();
    let (fastest, slowest) = (
        warm.iter().min().copied().unwrap_or_default(),
        warm.iter().max().copied().unwrap_or_default(),
    );
    rows.push(Row {
        what: "idle cycle, 50 containers over 2 images, kept client".to_owned(),
        requests: warm_requests.iter().copied().max().unwrap_or_default(),
        took: median(warm),
        cpu: (warm_cpu.0 / WARM_CYCLES as u32, warm_cpu.1 / WARM_CYCLES as u32),
        note: format!(
            "median of {WARM_CYCLES} (min {fastest:.1?}, max {slowest:.1?}), CPU per cycle; requests per cycle {warm_requests:?}"
        ),
    });

    // (b) 1,000 unique tags, with htpasswd auth and anonymous.
    for (label, on) in [("htpasswd", &registry), ("anonymous", &anonymous)] {
        for limit in LIMITS {
            let default = if limit == RegistryConfig::default().per_registry {
                " (the default)"
            } else {
                ""
            };
            rows.push(probe_tags(
                &runtime,
                on,
                &repos[0],
                limit,
                &format!("1,000 unique tags, {label}, {limit} in flight{default}"),
            )?);
        }
    }

    println!(
        "docker-registry on {} (htpasswd) and {} (anonymous); {TAGS} tags pushed to each in {setup:.1?}",
        registry.addr(),
        anonymous.addr()
    );
    println!("| what | requests | wall time | registry CPU | client CPU | note |");
    println!("|---|---|---|---|---|---|");
    for row in &rows {
        println!(
            "| {} | {} | {:.1?} | {} ms | {} ms | {} |",
            row.what,
            row.requests,
            row.took,
            row.cpu.0.as_millis(),
            row.cpu.1.as_millis(),
            row.note
        );
    }
    Ok(())
}

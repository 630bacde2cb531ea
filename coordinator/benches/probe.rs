//! Registry probing cost, against an in-process registry that answers every manifest HEAD
//! after a fixed delay (a stand-in for the network round trip):
//!
//! - an idle cycle of 50 containers over 2 images: requests sent and wall time;
//! - probing 1,000 unique tags at several per-registry concurrency limits, next to the
//!   expected `round trip × 1,000 / concurrency`.
//!
//! `cargo bench -p ouroboros-coordinator --bench probe`

#![allow(clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use ouroboros_coordinator::detect::registry::{RegistryClient, RegistryConfig};
use ouroboros_coordinator::detect::{Decision, Selection, detect};
use ouroboros_coordinator::telemetry::metrics::Metrics;
use ouroboros_shared::inventory::{ContainerInfo, ContainerState, Health};
use ouroboros_shared::reference::ImageRef;
use ouroboros_tests::fake_http::{FakeHttp, Response};

const DIGEST: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
const ROUND_TRIP: Duration = Duration::from_millis(20);

/// The registry (the test harness's fake server): every manifest HEAD answered after
/// [`ROUND_TRIP`].
fn registry() -> FakeHttp {
    FakeHttp::start(|_| {
        Response::new(200)
            .header("Docker-Content-Digest", DIGEST)
            .delay(ROUND_TRIP)
    })
    .expect("fake registry")
}

fn container(i: usize, image: &str, repo_digest: &str) -> (String, ContainerInfo) {
    (
        format!("host-{}", i % 10),
        ContainerInfo {
            id: format!("id{i}"),
            name: format!("c{i}"),
            image: image.to_owned(),
            image_id: "sha256:x".into(),
            repo_digests: vec![repo_digest.to_owned()],
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
        },
    )
}

#[tokio::main]
async fn main() {
    let registry = registry();
    let addr = registry.addr().to_string();
    let requests = || registry.requests().len();

    // Idle cycle: 50 containers on 10 hosts over 2 images.
    let client = Arc::new(
        RegistryClient::new(
            RegistryConfig::default(),
            Metrics::new(false).expect("metrics"),
        )
        .expect("client"),
    );
    let fleet: Vec<_> = (0..50)
        .map(|i| {
            let repo = format!("{addr}/team/app{}", i % 2);
            container(i, &format!("{repo}:stable"), &format!("{repo}@{DIGEST}"))
        })
        .collect();
    let before = requests();
    let started = Instant::now();
    let units: Vec<_> = fleet.iter().map(|(h, c)| (h.as_str(), c)).collect();
    let out = detect(client.clone(), &units, &Selection::default(), 32).await;
    let took = started.elapsed();
    let current = out
        .iter()
        .filter(|d| d.decision == Decision::Current)
        .count();
    println!(
        "idle cycle, 50 containers over 2 images: {} registry requests, {took:.1?} ({current} current)",
        requests() - before
    );

    // 1,000 unique tags.
    for per_registry in [8, 32, 128] {
        let client = RegistryClient::new(
            RegistryConfig {
                per_registry,
                ..RegistryConfig::default()
            },
            Metrics::new(false).expect("metrics"),
        )
        .expect("client");
        let tags: Vec<ImageRef> = (0..1000)
            .map(|i| ImageRef::parse(&format!("{addr}/team/app:t{i}")).expect("ref"))
            .collect();
        let before = requests();
        let started = Instant::now();
        let probes = futures_util::future::join_all(tags.iter().map(|t| client.digest(t))).await;
        let took = started.elapsed();
        let ok = probes.iter().filter(|p| p.is_ok()).count();
        let expected = ROUND_TRIP * 1000 / u32::try_from(per_registry).unwrap_or(1);
        println!(
            "1,000 tags, per-registry limit {per_registry:>3}: {took:>8.1?} ({ok} ok, {} requests; round trip x 1,000 / limit = {expected:.1?})",
            requests() - before
        );
    }
}

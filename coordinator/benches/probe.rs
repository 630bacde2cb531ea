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
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use ouroboros_coordinator::detect::registry::{RegistryClient, RegistryConfig};
use ouroboros_coordinator::detect::{Decision, Selection, detect};
use ouroboros_shared::inventory::{ContainerInfo, ContainerState, Health};
use ouroboros_shared::reference::ImageRef;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

const DIGEST: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
const ROUND_TRIP: Duration = Duration::from_millis(20);

/// Starts the registry; returns its address and its request counter.
async fn registry() -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    let requests = Arc::new(AtomicUsize::new(0));
    let counter = requests.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let counter = counter.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 2048];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                counter.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(ROUND_TRIP).await;
                let answer = format!(
                    "HTTP/1.1 200 OK\r\nDocker-Content-Digest: {DIGEST}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                );
                let _ = stream.write_all(answer.as_bytes()).await;
            });
        }
    });
    (addr, requests)
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
    let (addr, requests) = registry().await;

    // Idle cycle: 50 containers on 10 hosts over 2 images.
    let client = Arc::new(RegistryClient::new(RegistryConfig::default()).expect("client"));
    let fleet: Vec<_> = (0..50)
        .map(|i| {
            let repo = format!("{addr}/team/app{}", i % 2);
            container(i, &format!("{repo}:stable"), &format!("{repo}@{DIGEST}"))
        })
        .collect();
    let before = requests.load(Ordering::Relaxed);
    let started = Instant::now();
    let out = detect(client.clone(), &fleet, &Selection::default(), 32).await;
    let took = started.elapsed();
    let current = out
        .iter()
        .filter(|d| d.decision == Decision::Current)
        .count();
    println!(
        "idle cycle, 50 containers over 2 images: {} registry requests, {took:.1?} ({current} current)",
        requests.load(Ordering::Relaxed) - before
    );

    // 1,000 unique tags.
    for per_registry in [8, 32, 128] {
        let client = RegistryClient::new(RegistryConfig {
            per_registry,
            ..RegistryConfig::default()
        })
        .expect("client");
        let tags: Vec<ImageRef> = (0..1000)
            .map(|i| ImageRef::parse(&format!("{addr}/team/app:t{i}")).expect("ref"))
            .collect();
        let before = requests.load(Ordering::Relaxed);
        let started = Instant::now();
        let probes = futures_util::future::join_all(tags.iter().map(|t| client.digest(t))).await;
        let took = started.elapsed();
        let ok = probes.iter().filter(|p| p.is_ok()).count();
        let expected = ROUND_TRIP * 1000 / u32::try_from(per_registry).unwrap_or(1);
        println!(
            "1,000 tags, per-registry limit {per_registry:>3}: {took:>8.1?} ({ok} ok, {} requests; round trip x 1,000 / limit = {expected:.1?})",
            requests.load(Ordering::Relaxed) - before
        );
    }
}

//! The coordinator's plain-HTTP endpoint for monitoring: `/metrics` in the Prometheus text
//! format, `/healthz` (the process answers) and `/readyz` (the store answers too). Nothing else
//! is served, and nothing here changes anything.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tracing::debug;

use crate::fleet::Fleet;
use crate::telemetry::metrics::{self, FleetFigures, Metrics};

/// Longest a client may take to send its request.
const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest request head read.
const MAX_HEAD: usize = 8 * 1024;

/// The fleet's figures at scrape time: every known host, connected or not, with the
/// containers of its last report (one snapshot of the view), and the stored rollouts.
pub fn fleet_figures(fleet: &Fleet) -> FleetFigures {
    let mut figures = FleetFigures::default();
    for h in fleet.hosts() {
        let names = h.record.containers.iter().map(|c| c.name.clone()).collect();
        figures.containers.insert(h.record.host.clone(), names);
        figures.host_connected.insert(h.record.host, h.connected);
    }
    for r in fleet.rollouts().unwrap_or_default() {
        *figures
            .rollouts
            .entry(r.state.name().to_owned())
            .or_insert(0) += 1;
    }
    figures
}

/// Serves until `stop`.
pub async fn serve(
    listener: TcpListener,
    fleet: Arc<Fleet>,
    metrics: Metrics,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stop.wait_for(|s| *s) => return,
        };
        match accepted {
            Ok((stream, _)) => {
                let (fleet, metrics) = (fleet.clone(), metrics.clone());
                tokio::spawn(async move { handle(stream, &fleet, &metrics).await });
            }
            // Out of descriptors, say: do not spin.
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// Whether the store answers (read off the async runtime).
async fn ready(fleet: &Arc<Fleet>) -> Result<(), String> {
    let f = fleet.clone();
    tokio::task::spawn_blocking(move || f.rollouts().map(|_| ()).map_err(|e| e.to_string()))
        .await
        .unwrap_or_else(|e| Err(e.to_string()))
}

async fn handle(mut stream: TcpStream, fleet: &Arc<Fleet>, metrics: &Metrics) {
    let mut head = Vec::new();
    let mut chunk = [0u8; 1024];
    let read = tokio::time::timeout(READ_TIMEOUT, async {
        while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < MAX_HEAD {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return false,
                Ok(n) => head.extend_from_slice(&chunk[..n]),
            }
        }
        true
    })
    .await;
    if !matches!(read, Ok(true)) {
        return;
    }
    let text = String::from_utf8_lossy(&head);
    let mut first = text.lines().next().unwrap_or_default().split(' ');
    let (method, target) = (first.next().unwrap_or(""), first.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    debug!(method, path, "Monitoring request.");
    let (status, kind, body) = match (method, path) {
        ("GET" | "HEAD", "/metrics") => {
            // The store is read off the async runtime.
            let f = fleet.clone();
            let figures = tokio::task::spawn_blocking(move || fleet_figures(&f))
                .await
                .unwrap_or_default();
            match metrics.render(&figures) {
                Ok(body) => ("200 OK", metrics::CONTENT_TYPE, body),
                Err(e) => (
                    "500 Internal Server Error",
                    "text/plain",
                    format!("metrics: {e}\n"),
                ),
            }
        }
        ("GET" | "HEAD", "/healthz") => ("200 OK", "text/plain", "ok\n".to_owned()),
        ("GET" | "HEAD", "/readyz") => match ready(fleet).await {
            Ok(_) => ("200 OK", "text/plain", "ready\n".to_owned()),
            Err(e) => (
                "503 Service Unavailable",
                "text/plain",
                format!("store: {e}\n"),
            ),
        },
        ("GET" | "HEAD", _) => ("404 Not Found", "text/plain", "not found\n".to_owned()),
        _ => (
            "405 Method Not Allowed",
            "text/plain",
            "only GET\n".to_owned(),
        ),
    };
    let mut answer = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    if method != "HEAD" {
        answer.extend_from_slice(body.as_bytes());
    }
    let _ = tokio::time::timeout(READ_TIMEOUT, async {
        let _ = stream.write_all(&answer).await;
        let _ = stream.shutdown().await;
    })
    .await;
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};
    use std::net::SocketAddr;

    use ouroboros_shared::host::HostName;
    use ouroboros_shared::inventory::{
        ContainerInfo, ContainerState, Health, Hello, HostMode, Inventory,
    };

    use super::*;
    use crate::fleet::store::MemoryStore;

    fn hello(host: &str) -> Hello {
        Hello {
            host: host.into(),
            agent_version: "0.1.0".into(),
            engine: Default::default(),
            mode: HostMode::Standalone,
        }
    }

    fn inventory(names: &[&str]) -> Inventory {
        Inventory {
            containers: names
                .iter()
                .map(|n| ContainerInfo {
                    id: format!("id-{n}"),
                    name: (*n).into(),
                    image: "img:1".into(),
                    image_id: "sha256:1".into(),
                    repo_digests: vec![],
                    labels: Default::default(),
                    state: ContainerState::Running,
                    health: Health::None,
                    restart_count: 0,
                    created_unix: 1,
                    network_mode: String::new(),
                    links: Vec::new(),
                    pid_mode: String::new(),
                    ipc_mode: String::new(),
                    set_aside: String::new(),
                })
                .collect(),
            mode: HostMode::Standalone,
            observed_at_unix_ms: 5,
        }
    }

    #[test]
    fn figures_have_every_known_host_and_its_last_reported_containers() {
        let fleet = Arc::new(Fleet::open(Arc::new(MemoryStore::default())).unwrap());
        let peer: SocketAddr = "127.0.0.1:1000".parse().unwrap();
        let (a, b) = (HostName::parse("a").unwrap(), HostName::parse("b").unwrap());
        let (session_a, _) = fleet.connect(&a, &hello("a"), peer, 1);
        assert!(fleet.inventory(&a, session_a.id, inventory(&["shop", "pg"]), 2));
        let (session_b, _) = fleet.connect(&b, &hello("b"), peer, 1);

        let figures = fleet_figures(&fleet);
        assert_eq!(
            figures.host_connected,
            BTreeMap::from([("a".into(), true), ("b".into(), true)])
        );
        assert_eq!(figures.agents_connected(), 2);
        assert_eq!(
            figures.containers,
            BTreeMap::from([
                ("a".into(), BTreeSet::from(["pg".into(), "shop".into()])),
                ("b".into(), BTreeSet::new()),
            ])
        );

        // A host that went away stays, as not connected, with what it last reported.
        drop(session_a);
        let figures = fleet_figures(&fleet);
        assert_eq!(
            figures.host_connected,
            BTreeMap::from([("a".into(), false), ("b".into(), true)])
        );
        assert_eq!(figures.hosts(), 2);
        assert_eq!(figures.agents_connected(), 1);
        assert_eq!(figures.containers["a"].len(), 2);
        drop(session_b);
    }
}

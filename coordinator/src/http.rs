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
use crate::metrics::{FleetFigures, METRICS};

/// Longest a client may take to send its request.
const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest request head read.
const MAX_HEAD: usize = 8 * 1024;

/// The fleet's figures at scrape time.
pub fn fleet_figures(fleet: &Fleet) -> FleetFigures {
    let hosts = fleet.hosts();
    let mut rollouts = std::collections::BTreeMap::new();
    for r in fleet.rollouts().unwrap_or_default() {
        *rollouts.entry(r.state.name().to_owned()).or_insert(0) += 1;
    }
    FleetFigures {
        agents_connected: hosts.iter().filter(|h| h.connected).count() as u64,
        hosts: hosts.len() as u64,
        rollouts,
    }
}

/// Serves until `stop`.
pub async fn serve(listener: TcpListener, fleet: Arc<Fleet>, mut stop: watch::Receiver<bool>) {
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stop.wait_for(|s| *s) => return,
        };
        match accepted {
            Ok((stream, _)) => {
                let fleet = fleet.clone();
                tokio::spawn(async move { handle(stream, &fleet).await });
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

async fn handle(mut stream: TcpStream, fleet: &Arc<Fleet>) {
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
            (
                "200 OK",
                "text/plain; version=0.0.4; charset=utf-8",
                METRICS.render(&figures),
            )
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

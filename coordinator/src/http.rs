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
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let fleet = fleet.clone();
                tokio::spawn(async move { handle(stream, &fleet).await });
            }
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

async fn handle(mut stream: TcpStream, fleet: &Fleet) {
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
        ("GET" | "HEAD", "/metrics") => (
            "200 OK",
            "text/plain; version=0.0.4; charset=utf-8",
            METRICS.render(&fleet_figures(fleet)),
        ),
        ("GET" | "HEAD", "/healthz") => ("200 OK", "text/plain", "ok\n".to_owned()),
        ("GET" | "HEAD", "/readyz") => match fleet.rollouts() {
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
    let _ = stream.write_all(&answer).await;
    let _ = stream.shutdown().await;
}

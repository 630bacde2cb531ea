//! The coordinator's plain-HTTP endpoint for monitoring, served by hyper (HTTP/1.1):
//! `/metrics` in the Prometheus text format, `/healthz` (the process answers) and `/readyz`
//! (the store answers too). GET and HEAD only; nothing else is served, and nothing here
//! changes anything.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::CONTENT_TYPE;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::debug;

use crate::fleet::Fleet;
use crate::telemetry::metrics::{self, FleetFigures, Metrics};

/// Longest a client may take to send its request head.
const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest one connection may last (its one request answered).
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest request head read.
const MAX_HEAD: usize = 8 * 1024;
/// The content type of every answer but the metrics.
const PLAIN: &str = "text/plain";

/// The fleet's figures at scrape time: every known host, connected or not, with the
/// containers of its last report (one snapshot of the view), and the stored rollouts.
pub fn fleet_figures(fleet: &Fleet) -> FleetFigures {
    let mut figures = FleetFigures::default();
    for h in fleet.hosts() {
        let names = h.record.containers.iter().map(|c| c.name.clone()).collect();
        figures.containers.insert(h.record.host.clone(), names);
        figures.host_connected.insert(h.record.host, h.connected);
    }
    for r in fleet.rollout_heads().unwrap_or_default() {
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
                let service = hyper::service::service_fn(move |request| {
                    let (fleet, metrics) = (fleet.clone(), metrics.clone());
                    async move { Ok::<_, Infallible>(answer(&request, &fleet, &metrics).await) }
                });
                // One request per connection, as before: scrapes are seconds apart.
                let connection = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(READ_TIMEOUT)
                    .max_buf_size(MAX_HEAD)
                    .keep_alive(false)
                    .serve_connection(TokioIo::new(stream), service);
                tokio::spawn(async move {
                    if let Ok(Err(e)) = tokio::time::timeout(CONNECTION_TIMEOUT, connection).await {
                        debug!(error = %e, "Monitoring connection failed.");
                    }
                });
            }
            // Out of descriptors, say: do not spin.
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// Whether the store answers (read off the async runtime).
async fn ready(fleet: &Arc<Fleet>) -> Result<(), String> {
    let f = fleet.clone();
    tokio::task::spawn_blocking(move || f.rollout_heads().map(|_| ()).map_err(|e| e.to_string()))
        .await
        .unwrap_or_else(|e| Err(e.to_string()))
}

/// The answer to `request` (hyper leaves out the body of an answer to HEAD).
async fn answer(
    request: &Request<Incoming>,
    fleet: &Arc<Fleet>,
    metrics: &Metrics,
) -> Response<Full<Bytes>> {
    let (method, path) = (request.method(), request.uri().path());
    debug!(%method, path, "Monitoring request.");
    if !matches!(*method, Method::GET | Method::HEAD) {
        return text(StatusCode::METHOD_NOT_ALLOWED, PLAIN, "only GET\n".into());
    }
    match path {
        "/metrics" => {
            // The store is read off the async runtime.
            let f = fleet.clone();
            let figures = tokio::task::spawn_blocking(move || fleet_figures(&f))
                .await
                .unwrap_or_default();
            match metrics.render(&figures) {
                Ok(body) => text(StatusCode::OK, metrics::CONTENT_TYPE, body),
                Err(e) => text(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    PLAIN,
                    format!("metrics: {e}\n"),
                ),
            }
        }
        "/healthz" => text(StatusCode::OK, PLAIN, "ok\n".into()),
        "/readyz" => match ready(fleet).await {
            Ok(()) => text(StatusCode::OK, PLAIN, "ready\n".into()),
            Err(e) => text(
                StatusCode::SERVICE_UNAVAILABLE,
                PLAIN,
                format!("store: {e}\n"),
            ),
        },
        _ => text(StatusCode::NOT_FOUND, PLAIN, "not found\n".into()),
    }
}

fn text(status: StatusCode, kind: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, hyper::header::HeaderValue::from_static(kind));
    response
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
            container_id: None,
            agent_image: None,
            handover_op_id: None,
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
            cluster_id: String::new(),
            services: Vec::new(),
        }
    }

    /// `request` sent as is to `addr`; the whole answer.
    async fn raw(addr: SocketAddr, request: &str) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).await.unwrap();
        String::from_utf8(answer).unwrap()
    }

    /// The status line, the content type and the body of `answer`.
    fn parts(answer: &str) -> (&str, &str, &str) {
        let (head, body) = answer.split_once("\r\n\r\n").unwrap();
        let status = head.lines().next().unwrap();
        let kind = head
            .lines()
            .find_map(|l| l.strip_prefix("content-type: "))
            .unwrap_or_default();
        (status, kind, body)
    }

    #[tokio::test]
    async fn each_path_answers_as_before() {
        let fleet = Arc::new(Fleet::open(Arc::new(MemoryStore::default())).unwrap());
        let metrics = Metrics::new(true).unwrap();
        metrics.update_done("a", "shop", "updated");
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = watch::channel(false);
        let serving = tokio::spawn(serve(listener, fleet, metrics, stopped));
        let get = |path: &str| format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n");

        let answer = raw(addr, &get("/metrics?from=test")).await;
        let (status, kind, body) = parts(&answer);
        assert_eq!(status, "HTTP/1.1 200 OK");
        assert_eq!(kind, "text/plain; version=0.0.4; charset=utf-8");
        assert!(
            body.contains("ouroboros_updates_total{host=\"a\",outcome=\"updated\"} 1\n"),
            "{body}"
        );
        assert!(answer.contains(&format!("content-length: {}\r\n", body.len())));
        assert!(answer.contains("connection: close\r\n"), "{answer}");
        for (path, status, body) in [
            ("/healthz", "HTTP/1.1 200 OK", "ok\n"),
            ("/readyz", "HTTP/1.1 200 OK", "ready\n"),
            ("/nothing", "HTTP/1.1 404 Not Found", "not found\n"),
        ] {
            let answer = raw(addr, &get(path)).await;
            assert_eq!(parts(&answer), (status, "text/plain", body), "{path}");
        }
        // HEAD: the head of GET's answer, without its body.
        let answer = raw(addr, "HEAD /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert_eq!(parts(&answer), ("HTTP/1.1 200 OK", "text/plain", ""));
        assert!(answer.contains("content-length: 3\r\n"), "{answer}");
        let answer = raw(addr, "POST /metrics HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert_eq!(
            parts(&answer),
            (
                "HTTP/1.1 405 Method Not Allowed",
                "text/plain",
                "only GET\n"
            )
        );
        // Not HTTP: refused, and the server goes on.
        let answer = raw(addr, "hello\r\n\r\n").await;
        assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
        assert_eq!(parts(&raw(addr, &get("/healthz")).await).2, "ok\n");

        stop.send(true).unwrap();
        serving.await.unwrap();
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

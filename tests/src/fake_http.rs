//! One fake HTTP server for every test that needs a peer to answer (a registry that throttles,
//! a webhook receiver, a token server, a TLS registry): `hyper` on a thread of its own, so that
//! blocking and async tests use it alike. A handler decides each answer; every request is kept
//! for the test to inspect.
//!
//! ```no_run
//! use ouroboros_tests::fake_http::{FakeHttp, Response};
//!
//! # fn main() -> anyhow::Result<()> {
//! let server = FakeHttp::start(|req| {
//!     if req.path == "/v2/" { Response::new(200) } else { Response::new(404) }
//! })?;
//! // ... point the code under test at server.url() ...
//! assert_eq!(server.count("GET", "/v2/"), 0);
//! # Ok(())
//! # }
//! ```

use std::convert::Infallible;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::sync::oneshot;

/// One request as the server received it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    /// Path and query, as sent (`/v2/team/app/manifests/1?x=y`).
    pub path: String,
    /// Header names in lower case, in the order received.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Request {
    /// The first value of header `name` (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body as text (lossy).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// What the handler answers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// Waited before the answer is sent (a slow server).
    pub delay: Option<Duration>,
}

impl Response {
    pub fn new(status: u16) -> Self {
        Self {
            status,
            ..Self::default()
        }
    }

    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }

    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = body.into();
        self
    }

    /// A JSON body with its content type.
    pub fn json(self, value: &serde_json::Value) -> Self {
        self.header("Content-Type", "application/json")
            .body(value.to_string())
    }

    pub fn delay(mut self, delay: Duration) -> Self {
        self.delay = Some(delay);
        self
    }
}

type Handler = Arc<dyn Fn(&Request) -> Response + Send + Sync>;

/// Where the server keeps what it received.
#[derive(Clone)]
struct Log {
    seen: Arc<Mutex<Vec<Request>>>,
    keep: Arc<AtomicBool>,
}

/// A running fake server; stops when dropped.
pub struct FakeHttp {
    addr: SocketAddr,
    tls: bool,
    seen: Arc<Mutex<Vec<Request>>>,
    /// Whether requests are kept in `seen` (see [`FakeHttp::keep_requests`]).
    keep: Arc<AtomicBool>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FakeHttp {
    /// Plain HTTP on a free port of 127.0.0.1.
    pub fn start(
        handler: impl Fn(&Request) -> Response + Send + Sync + 'static,
    ) -> anyhow::Result<Self> {
        Self::start_on(IpAddr::V4(Ipv4Addr::LOCALHOST), None, handler)
    }

    /// On a free port of `ip`, over TLS when `tls` is given.
    pub fn start_on(
        ip: IpAddr,
        tls: Option<Arc<rustls::ServerConfig>>,
        handler: impl Fn(&Request) -> Response + Send + Sync + 'static,
    ) -> anyhow::Result<Self> {
        let listener = std::net::TcpListener::bind((ip, 0)).context("binding the fake server")?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let seen: Arc<Mutex<Vec<Request>>> = Arc::default();
        let handler: Handler = Arc::new(handler);
        let (stop, stopped) = oneshot::channel();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("starting the fake server's runtime")?;
        let keep = Arc::new(AtomicBool::new(true));
        let log = Log {
            seen: seen.clone(),
            keep: keep.clone(),
        };
        let is_tls = tls.is_some();
        let thread = std::thread::Builder::new()
            .name(format!("fake-http-{}", addr.port()))
            .spawn(move || {
                runtime.block_on(async move {
                    let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
                        return;
                    };
                    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
                    tokio::select! {
                        () = accept(listener, acceptor, handler, log) => {}
                        _ = stopped => {}
                    }
                });
            })
            .context("starting the fake server's thread")?;
        Ok(Self {
            addr,
            tls: is_tls,
            seen,
            keep,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://ip:port` (or `https://`).
    pub fn url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }

    /// Whether requests are kept for [`FakeHttp::requests`] (they are by default). A server
    /// that answers millions (the fleet simulator's registry) counts in its handler instead.
    pub fn keep_requests(&self, keep: bool) {
        self.keep.store(keep, Ordering::Relaxed);
    }

    fn seen(&self) -> MutexGuard<'_, Vec<Request>> {
        self.seen.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Every request so far, in the order they came.
    pub fn requests(&self) -> Vec<Request> {
        self.seen().clone()
    }

    /// Requests with `method` whose path starts with `path_prefix`.
    pub fn count(&self, method: &str, path_prefix: &str) -> usize {
        self.seen()
            .iter()
            .filter(|r| r.method == method && r.path.starts_with(path_prefix))
            .count()
    }
}

impl Drop for FakeHttp {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

async fn accept(
    listener: tokio::net::TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    handler: Handler,
    seen: Log,
) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let handler = handler.clone();
        let seen = seen.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| {
                let handler = handler.clone();
                let seen = seen.clone();
                async move { Ok::<_, Infallible>(answer(request, &handler, &seen).await) }
            });
            let http = hyper::server::conn::http1::Builder::new();
            match tls {
                Some(acceptor) => {
                    // A client that refuses the certificate ends here; that is the test's point.
                    if let Ok(stream) = acceptor.accept(stream).await {
                        let _ = http.serve_connection(TokioIo::new(stream), service).await;
                    }
                }
                None => {
                    let _ = http.serve_connection(TokioIo::new(stream), service).await;
                }
            }
        });
    }
}

async fn answer(
    request: hyper::Request<hyper::body::Incoming>,
    handler: &Handler,
    log: &Log,
) -> hyper::Response<Full<Bytes>> {
    let (parts, body) = request.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes().to_vec())
        .unwrap_or_default();
    let request = Request {
        method: parts.method.to_string(),
        path: parts
            .uri
            .path_and_query()
            .map_or_else(|| parts.uri.path().to_owned(), |p| p.as_str().to_owned()),
        headers: parts
            .headers
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_owned(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect(),
        body,
    };
    if log.keep.load(Ordering::Relaxed) {
        log.seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(request.clone());
    }
    let out = handler(&request);
    if let Some(delay) = out.delay {
        tokio::time::sleep(delay).await;
    }
    let mut response = hyper::Response::new(Full::new(Bytes::from(out.body)));
    *response.status_mut() =
        hyper::StatusCode::from_u16(out.status).unwrap_or(hyper::StatusCode::INTERNAL_SERVER_ERROR);
    for (name, value) in &out.headers {
        if let (Ok(name), Ok(value)) = (
            hyper::header::HeaderName::from_bytes(name.as_bytes()),
            hyper::header::HeaderValue::from_str(value),
        ) {
            response.headers_mut().append(name, value);
        }
    }
    response
}

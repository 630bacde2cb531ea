//! The registry client against an in-process fake registry: the bearer flow with token reuse,
//! a missing digest header, and every failure answer, each with a clear reason.
//!
//! (Over 600 lines: every registry answer the client must handle, against one fake.)

use std::sync::{Arc, Mutex};
use std::time::Duration;

use ouroboros_coordinator::detect::credentials::Credentials;
use ouroboros_coordinator::detect::registry::{ProbeError, RegistryClient, RegistryConfig};
use ouroboros_coordinator::telemetry::metrics::{FleetFigures, Metrics};
use ouroboros_shared::reference::ImageRef;
use ouroboros_tests::exposition;
use ouroboros_tests::fake_http::{FakeHttp, Request as Req, Response as Resp};

const DIGEST: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

fn resp(status: u16, headers: &[(&str, &str)]) -> Resp {
    Resp {
        status,
        headers: headers
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
        ..Resp::default()
    }
}

type Handler = Arc<dyn Fn(&Req) -> Resp + Send + Sync>;

/// A registry answering with `handler` (the shared fake server); records every request.
struct Fake {
    server: FakeHttp,
    addr: String,
}

impl Fake {
    fn start(handler: Handler) -> Self {
        Self::start_on("127.0.0.1", handler)
    }

    fn start_on(ip: &str, handler: Handler) -> Self {
        let server =
            FakeHttp::start_on(ip.parse().unwrap(), None, move |r: &Req| handler(r)).unwrap();
        Self {
            addr: server.addr().to_string(),
            server,
        }
    }

    fn image(&self) -> ImageRef {
        ImageRef::parse(&format!("{}/team/app:1", self.addr)).unwrap()
    }

    fn count(&self, method: &str, path_prefix: &str) -> usize {
        self.server.count(method, path_prefix)
    }
}

fn repo_user(user: &str, password: &str) -> Arc<Credentials> {
    Arc::new(Credentials::from_repo(Some((user.into(), password.into()))))
}

/// Figures no test reads.
fn metrics() -> Metrics {
    Metrics::new(false).unwrap()
}

fn client(timeout: Duration) -> RegistryClient {
    counted(timeout, metrics())
}

/// [`client`] counting in `metrics`.
fn counted(timeout: Duration, metrics: Metrics) -> RegistryClient {
    RegistryClient::new(
        RegistryConfig {
            credentials: repo_user("user", "pass"),
            timeout,
            max_retry_after: Duration::from_secs(2),
            ..RegistryConfig::default()
        },
        metrics,
    )
    .unwrap()
}

/// A registry that wants a bearer token `t1` from its own `/token`.
fn bearer(token_answer: &'static str) -> Handler {
    Arc::new(move |r: &Req| {
        if r.path.starts_with("/token") {
            assert!(
                r.path.contains("scope=repository%3Ateam%2Fapp%3Apull"),
                "{}",
                r.path
            );
            assert!(
                r.header("authorization")
                    .is_some_and(|a| a.starts_with("Basic "))
            );
            return Resp {
                status: 200,
                body: token_answer.as_bytes().to_vec(),
                ..Resp::default()
            };
        }
        if r.header("authorization") == Some("Bearer t1") {
            let accept = r.header("accept").unwrap_or_default();
            for t in [
                "application/vnd.docker.distribution.manifest.list.v2+json",
                "application/vnd.oci.image.index.v1+json",
                "application/vnd.docker.distribution.manifest.v2+json",
                "application/vnd.oci.image.manifest.v1+json",
            ] {
                assert!(accept.contains(t), "Accept lacks {t}: {accept}");
            }
            return resp(
                200,
                &[
                    ("Docker-Content-Digest", DIGEST),
                    ("ratelimit-remaining", "99;w=21600"),
                ],
            );
        }
        let host = r.header("host").unwrap_or_default().to_owned();
        resp(
            401,
            &[(
                "WWW-Authenticate",
                &format!(r#"Bearer realm="http://{host}/token",service="fake""#),
            )],
        )
    })
}

#[tokio::test]
async fn bearer_tokens_are_fetched_once_and_reused() {
    let fake = Fake::start(bearer(r#"{"token":"t1","expires_in":300}"#));
    let metrics = metrics();
    let c = counted(Duration::from_secs(5), metrics.clone());
    let first = c.digest(&fake.image()).await.unwrap();
    assert_eq!(first.digest, DIGEST);
    assert_eq!(first.ratelimit_remaining.as_deref(), Some("99;w=21600"));
    let second = c.digest(&fake.image()).await.unwrap();
    assert_eq!(second.digest, DIGEST);
    assert_eq!(fake.count("GET", "/token"), 1, "token not reused");
    // 401 + authenticated HEAD, then one HEAD; never a manifest GET.
    assert_eq!(fake.count("HEAD", "/v2/team/app/manifests/1"), 3);
    assert_eq!(fake.count("GET", "/v2/"), 0);

    // Every request is counted by its answer, each probe timed, the rate limit kept.
    let text = metrics.render(&FleetFigures::default()).unwrap();
    let requests = |method, code| {
        let labels = [
            ("registry", fake.addr.as_str()),
            ("method", method),
            ("code", code),
        ];
        exposition::value(&text, "ouroboros_registry_requests_total", &labels)
    };
    assert_eq!(requests("HEAD", "401"), Some(1.0), "{text}");
    assert_eq!(requests("HEAD", "200"), Some(2.0), "{text}");
    assert_eq!(requests("GET", "200"), Some(1.0), "the token: {text}");
    let probes = exposition::value(&text, "ouroboros_registry_probe_seconds_count", &[]);
    assert_eq!(probes, Some(2.0), "{text}");
    let remaining = exposition::value(
        &text,
        "ouroboros_registry_ratelimit_remaining",
        &[("registry", &fake.addr)],
    );
    assert_eq!(remaining, Some(99.0), "{text}");
}

#[tokio::test]
async fn access_token_field_is_accepted() {
    let fake = Fake::start(bearer(r#"{"access_token":"t1"}"#));
    assert_eq!(
        client(Duration::from_secs(5))
            .digest(&fake.image())
            .await
            .unwrap()
            .digest,
        DIGEST
    );
}

#[tokio::test]
async fn a_missing_digest_header_is_replaced_by_hashing_the_manifest() {
    let manifest = br#"{"schemaVersion":2}"#;
    let fake = Fake::start(Arc::new(move |r: &Req| {
        let mut out = resp(200, &[]);
        if r.method == "GET" {
            out.body = manifest.to_vec();
        }
        out
    }));
    let probe = client(Duration::from_secs(5))
        .digest(&fake.image())
        .await
        .unwrap();
    let hash = ring::digest::digest(&ring::digest::SHA256, manifest);
    let hex: String = hash.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(probe.digest, format!("sha256:{hex}"));
    assert_eq!(fake.count("GET", "/v2/team/app/manifests/1"), 1);
}

/// Runs one probe against a registry answering `handler` and returns the error.
async fn failure(handler: Handler, timeout: Duration) -> ProbeError {
    let fake = Fake::start(handler);
    client(timeout)
        .digest(&fake.image())
        .await
        .expect_err("probe succeeded")
}

#[tokio::test]
async fn every_failure_answer_is_an_error_with_a_reason() {
    let secs = Duration::from_secs(5);
    let e = failure(
        Arc::new(|_: &Req| resp(401, &[("WWW-Authenticate", r#"Basic realm="x""#)])),
        secs,
    )
    .await;
    assert!(matches!(e, ProbeError::Unauthorized { .. }), "{e}");
    assert!(e.to_string().contains("401"), "{e}");
    assert!(!e.to_string().contains("pass"), "password in an error: {e}");

    let e = failure(bearer("not json"), secs).await;
    assert!(
        matches!(e, ProbeError::Malformed { .. }) && e.to_string().contains("token"),
        "{e}"
    );

    let e = failure(Arc::new(|_: &Req| resp(403, &[])), secs).await;
    assert!(matches!(e, ProbeError::Forbidden { .. }), "{e}");

    let e = failure(Arc::new(|_: &Req| resp(404, &[])), secs).await;
    assert!(matches!(e, ProbeError::NotFound { .. }), "{e}");

    let e = failure(Arc::new(|_: &Req| resp(500, &[])), secs).await;
    assert!(matches!(e, ProbeError::Server { status: 500, .. }), "{e}");

    let e = failure(
        Arc::new(|_: &Req| resp(429, &[("Retry-After", "3600")])),
        secs,
    )
    .await;
    assert!(
        matches!(e, ProbeError::RateLimited { retry_after: Some(d), .. } if d == Duration::from_secs(3600)),
        "{e}"
    );

    let e = failure(
        Arc::new(|_: &Req| resp(200, &[("Docker-Content-Digest", "sha256:nothex")])),
        secs,
    )
    .await;
    assert!(matches!(e, ProbeError::Malformed { .. }), "{e}");

    let e = failure(Arc::new(|_: &Req| resp(302, &[])), secs).await;
    assert!(matches!(e, ProbeError::Malformed { .. }), "{e}");

    let slow = Arc::new(|_: &Req| Resp {
        delay: Some(Duration::from_secs(3)),
        ..resp(200, &[("Docker-Content-Digest", DIGEST)])
    });
    let e = failure(slow, Duration::from_millis(300)).await;
    assert!(matches!(e, ProbeError::Timeout { .. }), "{e}");
}

#[tokio::test]
async fn a_short_retry_after_is_waited_out() {
    let calls = Arc::new(Mutex::new(0));
    let counter = calls.clone();
    let fake = Fake::start(Arc::new(move |_: &Req| {
        let mut n = counter.lock().unwrap();
        *n += 1;
        if *n == 1 {
            resp(429, &[("Retry-After", "1")])
        } else {
            resp(200, &[("Docker-Content-Digest", DIGEST)])
        }
    }));
    let started = std::time::Instant::now();
    let probe = client(Duration::from_secs(5))
        .digest(&fake.image())
        .await
        .unwrap();
    assert_eq!(probe.digest, DIGEST);
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "Retry-After not honoured"
    );
    assert_eq!(*calls.lock().unwrap(), 2);
}

/// Against the real registry (distribution, htpasswd auth): the digest is the one the push
/// recorded, only HEAD requests are sent, and Basic is sent at once after the first challenge.
#[tokio::test]
async fn the_real_registry_answers_the_pushed_digest_with_head_requests_only() {
    use ouroboros_tests::{Cleanup, Registry, eventually, publish, require_engine, unique_name};
    let Some(engine) = require_engine() else {
        return;
    };
    let (user, password) = ("probe", "pr0be?>~");
    let registry = Registry::start_with_auth(user, password).unwrap();
    engine.login(registry.addr(), user, password).unwrap();
    let cleanup = Cleanup::new(&engine);
    let repo = unique_name("probe");
    let v1 = publish(&cleanup, &registry, &repo, "stable", 1).unwrap();
    let image = ImageRef::parse(&v1.reference).unwrap();
    let client = RegistryClient::new(
        RegistryConfig {
            credentials: repo_user(user, password),
            ..RegistryConfig::default()
        },
        metrics(),
    )
    .unwrap();
    let path = format!("/v2/{repo}/manifests/stable");
    let before_heads = registry.count("HEAD", &path);
    let before_gets = registry.count("GET", &path);
    assert_eq!(client.digest(&image).await.unwrap().digest, v1.digest);
    assert_eq!(client.digest(&image).await.unwrap().digest, v1.digest);
    // A challenge and its answer, then one HEAD: never a GET.
    eventually(Duration::from_secs(5), Duration::from_millis(50), || {
        let heads = registry.count("HEAD", &path) - before_heads;
        anyhow::ensure!(heads == 3, "{heads} HEAD requests");
        Ok(())
    })
    .unwrap();
    assert_eq!(registry.count("GET", &path), before_gets);

    let v2 = publish(&cleanup, &registry, &repo, "stable", 2).unwrap();
    assert_ne!(v2.digest, v1.digest);
    assert_eq!(client.digest(&image).await.unwrap().digest, v2.digest);

    let anonymous = RegistryClient::new(RegistryConfig::default(), metrics()).unwrap();
    let e = anonymous.digest(&image).await.unwrap_err();
    assert!(matches!(e, ProbeError::Unauthorized { .. }), "{e}");
    engine.logout(registry.addr()).unwrap();
}

#[tokio::test]
async fn credentials_refused_by_the_token_server_fall_back_to_an_anonymous_token() {
    // A public repository on a registry the configured credentials are not for.
    let fake = Fake::start(Arc::new(|r: &Req| {
        if r.path.starts_with("/token") {
            return match r.header("authorization") {
                Some(_) => resp(401, &[]),
                None => Resp {
                    status: 200,
                    body: br#"{"token":"t1"}"#.to_vec(),
                    ..Resp::default()
                },
            };
        }
        if r.header("authorization") == Some("Bearer t1") {
            return resp(200, &[("Docker-Content-Digest", DIGEST)]);
        }
        let host = r.header("host").unwrap_or_default().to_owned();
        resp(
            401,
            &[(
                "WWW-Authenticate",
                &format!(r#"Bearer realm="http://{host}/token",service="fake""#),
            )],
        )
    }));
    let probe = client(Duration::from_secs(5))
        .digest(&fake.image())
        .await
        .unwrap();
    assert_eq!(probe.digest, DIGEST);
    assert_eq!(fake.count("GET", "/token"), 2, "no anonymous retry");
}

/// A client whose credentials come from a docker `config.json` with `text`.
fn client_with_config(text: &str) -> (RegistryClient, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("config.json"), text).unwrap();
    let credentials = Credentials::new(None, Some(dir.path())).unwrap();
    let client = RegistryClient::new(
        RegistryConfig {
            credentials: Arc::new(credentials),
            timeout: Duration::from_secs(5),
            ..RegistryConfig::default()
        },
        metrics(),
    )
    .unwrap();
    (client, dir)
}

fn challenge(r: &Req) -> Resp {
    let host = r.header("host").unwrap_or_default().to_owned();
    resp(
        401,
        &[(
            "WWW-Authenticate",
            &format!(r#"Bearer realm="http://{host}/token",service="fake""#),
        )],
    )
}

#[tokio::test]
async fn identity_tokens_are_exchanged_with_an_oauth2_post() {
    let fake = Fake::start(Arc::new(|r: &Req| {
        if r.path.starts_with("/token") {
            if r.method == "POST"
                && r.text().contains("grant_type=refresh_token")
                && r.text().contains("refresh_token=refresh-sentinel")
                && r.text().contains("scope=repository%3Ateam%2Fapp%3Apull")
                && r.text().contains("service=fake")
                && r.header("content-type") == Some("application/x-www-form-urlencoded")
            {
                return Resp {
                    status: 200,
                    body: br#"{"access_token":"t-oauth","expires_in":300}"#.to_vec(),
                    ..Resp::default()
                };
            }
            return resp(401, &[]);
        }
        if r.header("authorization") == Some("Bearer t-oauth") {
            return resp(200, &[("Docker-Content-Digest", DIGEST)]);
        }
        challenge(r)
    }));
    let (client, _dir) = client_with_config(&format!(
        r#"{{"auths": {{"{}": {{"identitytoken": "refresh-sentinel"}}}}}}"#,
        fake.addr
    ));
    assert_eq!(client.digest(&fake.image()).await.unwrap().digest, DIGEST);
    assert_eq!(fake.count("POST", "/token"), 1);
    assert_eq!(
        fake.count("GET", "/token"),
        0,
        "fell back to an anonymous token"
    );
}

#[tokio::test]
async fn registry_tokens_are_sent_as_they_are() {
    let fake = Fake::start(Arc::new(|r: &Req| {
        if r.header("authorization") == Some("Bearer rt-direct") {
            return resp(200, &[("Docker-Content-Digest", DIGEST)]);
        }
        challenge(r)
    }));
    let (client, _dir) = client_with_config(&format!(
        r#"{{"auths": {{"http://{}/v2/": {{"registrytoken": "rt-direct"}}}}}}"#,
        fake.addr
    ));
    assert_eq!(client.digest(&fake.image()).await.unwrap().digest, DIGEST);
    assert_eq!(
        fake.count("GET", "/token") + fake.count("POST", "/token"),
        0
    );
}

#[tokio::test]
async fn credentials_go_only_to_their_own_registry() {
    // Two registries asking for Basic; the config holds a password for the first only.
    let wants = |user_pass: &'static str| -> Handler {
        Arc::new(move |r: &Req| {
            let expected = format!(
                "Basic {}",
                base64::Engine::encode(&base64::engine::general_purpose::STANDARD, user_pass)
            );
            match r.header("authorization") {
                Some(a) if a == expected => resp(200, &[("Docker-Content-Digest", DIGEST)]),
                Some(_) => resp(401, &[]),
                None => resp(401, &[("WWW-Authenticate", r#"Basic realm="r""#)]),
            }
        })
    };
    let first = Fake::start(wants("alice:a-sentinel"));
    let second = Fake::start(wants("bob:b-sentinel"));
    let (client, _dir) = client_with_config(&format!(
        r#"{{"auths": {{"{}": {{"auth": "{}"}}}}}}"#,
        first.addr,
        base64::Engine::encode(
            &base64::engine::general_purpose::STANDARD,
            b"alice:a-sentinel"
        )
    ));
    assert_eq!(client.digest(&first.image()).await.unwrap().digest, DIGEST);
    let e = client.digest(&second.image()).await.unwrap_err();
    assert!(matches!(e, ProbeError::Unauthorized { .. }), "{e}");
    assert!(
        e.to_string()
            .contains(&format!("no credentials for {}", second.addr)),
        "{e}"
    );
    let seen = second.server.requests();
    assert!(
        seen.iter().all(|r| r.header("authorization").is_none()),
        "the first registry's password went to the second"
    );
}

#[tokio::test]
async fn a_long_retry_after_throttles_the_whole_registry_without_more_requests() {
    let fake = Fake::start(Arc::new(|_: &Req| resp(429, &[("Retry-After", "3600")])));
    let client = RegistryClient::new(
        RegistryConfig {
            per_registry: 2,
            max_retry_after: Duration::from_secs(2),
            ..RegistryConfig::default()
        },
        metrics(),
    )
    .unwrap();
    let images: Vec<ImageRef> = (0..6)
        .map(|i| ImageRef::parse(&format!("{}/team/app:{i}", fake.addr)).unwrap())
        .collect();
    let started = std::time::Instant::now();
    let results =
        futures_util::future::join_all(images.iter().map(|image| client.digest(image))).await;
    for r in &results {
        assert!(
            matches!(r, Err(ProbeError::RateLimited { retry_after: Some(d), .. }) if *d > Duration::from_secs(3500)),
            "{r:?}"
        );
    }
    // At most the requests already in flight when the first 429 came back.
    let heads = fake.count("HEAD", "/v2/");
    assert!(heads <= 2, "{heads} requests to a throttled registry");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "waited on a long throttle"
    );
    // Later probes fail at once too.
    let e = client.digest(&images[0]).await.unwrap_err();
    assert!(matches!(e, ProbeError::RateLimited { .. }), "{e}");
    assert_eq!(fake.count("HEAD", "/v2/"), heads);
}

#[tokio::test]
async fn a_429_without_retry_after_backs_off_and_other_probes_wait_too() {
    let calls = Arc::new(Mutex::new(0));
    let counter = calls.clone();
    let fake = Fake::start(Arc::new(move |_: &Req| {
        let mut n = counter.lock().unwrap();
        *n += 1;
        if *n == 1 {
            resp(429, &[])
        } else {
            resp(200, &[("Docker-Content-Digest", DIGEST)])
        }
    }));
    let client = RegistryClient::new(
        RegistryConfig {
            per_registry: 1,
            ..RegistryConfig::default()
        },
        metrics(),
    )
    .unwrap();
    let a = ImageRef::parse(&format!("{}/team/app:a", fake.addr)).unwrap();
    let b = ImageRef::parse(&format!("{}/team/app:b", fake.addr)).unwrap();
    let started = std::time::Instant::now();
    let (ra, rb) = tokio::join!(client.digest(&a), client.digest(&b));
    assert_eq!(ra.unwrap().digest, DIGEST);
    assert_eq!(rb.unwrap().digest, DIGEST);
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "no backoff after a 429 without Retry-After"
    );
    assert_eq!(
        *calls.lock().unwrap(),
        3,
        "one 429, then one request per tag"
    );
}

/// This machine's first global IPv4 address: a registry there is not loopback, so the client
/// must speak TLS to it.
fn global_ipv4() -> String {
    let out = std::process::Command::new("ip")
        .args(["-4", "-o", "addr", "show", "scope", "global"])
        .output()
        .expect("ip (iproute2) runs");
    let text = String::from_utf8_lossy(&out.stdout);
    text.split_whitespace()
        .skip_while(|w| *w != "inet")
        .nth(1)
        .and_then(|cidr| cidr.split('/').next())
        .map(str::to_owned)
        .unwrap_or_else(|| panic!("no global IPv4 address in: {text}"))
}

#[tokio::test]
async fn a_tls_registry_is_verified_and_an_extra_ca_can_be_trusted() {
    use ouroboros_shared::pki::{self, PkiDir};
    ouroboros_shared::install_crypto_provider();
    let ip = global_ipv4();
    let dir = tempfile::tempdir().unwrap();
    let pki = PkiDir::new(dir.path().join("pki"));
    pki::init(&pki, std::slice::from_ref(&ip)).unwrap();
    let certs = pki::load_certs(&pki.coordinator_cert()).unwrap();
    let key = pki::load_key(&pki.coordinator_key()).unwrap();
    let tls = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
    let server = FakeHttp::start_on(ip.parse().unwrap(), Some(Arc::new(tls)), |_: &Req| {
        Resp::new(200).header("Docker-Content-Digest", DIGEST)
    })
    .unwrap();
    let addr = server.addr().to_string();
    let served = || server.count("HEAD", "/v2/");
    let image = ImageRef::parse(&format!("{addr}/team/app:1")).unwrap();
    let with_ca = RegistryClient::new(
        RegistryConfig {
            extra_ca_pem: Some(std::fs::read(pki.ca_cert()).unwrap()),
            ..RegistryConfig::default()
        },
        metrics(),
    )
    .unwrap();
    assert_eq!(with_ca.digest(&image).await.unwrap().digest, DIGEST);
    assert_eq!(served(), 1);

    // Without the CA the certificate is refused, with the reason, and nothing is served.
    let without = RegistryClient::new(RegistryConfig::default(), metrics()).unwrap();
    let e = without.digest(&image).await.unwrap_err();
    assert!(
        matches!(e, ProbeError::Transport { .. }) && e.to_string().contains("certificate"),
        "{e}"
    );
    assert_eq!(served(), 1);

    // Listed as insecure, the registry is spoken to in plain HTTP, which this one refuses.
    let plain = RegistryClient::new(
        RegistryConfig {
            insecure: vec![addr.clone()],
            ..RegistryConfig::default()
        },
        metrics(),
    )
    .unwrap();
    assert!(plain.digest(&image).await.is_err());
    assert_eq!(served(), 1);
}

#[tokio::test]
async fn a_burst_of_429s_is_one_throttle_not_a_runaway_backoff() {
    // Eight requests in flight all answered 429 without Retry-After: one strike (1 s), not
    // eight (which would reach the 30 s fail-fast).
    let calls = Arc::new(Mutex::new(0));
    let counter = calls.clone();
    let fake = Fake::start(Arc::new(move |_: &Req| {
        let mut n = counter.lock().unwrap();
        *n += 1;
        if *n <= 8 {
            Resp {
                delay: Some(Duration::from_millis(100)),
                ..resp(429, &[])
            }
        } else {
            resp(200, &[("Docker-Content-Digest", DIGEST)])
        }
    }));
    let client = RegistryClient::new(
        RegistryConfig {
            per_registry: 8,
            ..RegistryConfig::default()
        },
        metrics(),
    )
    .unwrap();
    let images: Vec<ImageRef> = (0..8)
        .map(|i| ImageRef::parse(&format!("{}/team/app:{i}", fake.addr)).unwrap())
        .collect();
    let started = std::time::Instant::now();
    let results =
        futures_util::future::join_all(images.iter().map(|image| client.digest(image))).await;
    for r in &results {
        assert_eq!(r.as_ref().map(|p| p.digest.as_str()), Ok(DIGEST));
    }
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn credentials_go_to_the_plain_http_token_server_of_a_listed_insecure_registry() {
    // Not loopback: only the insecure list (HOST:PORT) makes plain HTTP and credentials fine.
    let ip = global_ipv4();
    let fake = Fake::start_on(
        &ip,
        Arc::new(|r: &Req| {
            if r.path.starts_with("/token") {
                return match r.header("authorization") {
                    Some(a) if a.starts_with("Basic ") => Resp {
                        status: 200,
                        body: br#"{"token":"t-auth"}"#.to_vec(),
                        ..Resp::default()
                    },
                    _ => Resp {
                        status: 200,
                        body: br#"{"token":"t-anon"}"#.to_vec(),
                        ..Resp::default()
                    },
                };
            }
            if r.header("authorization") == Some("Bearer t-auth") {
                return resp(200, &[("Docker-Content-Digest", DIGEST)]);
            }
            challenge(r)
        }),
    );
    let client = RegistryClient::new(
        RegistryConfig {
            credentials: repo_user("user", "pass"),
            insecure: vec![fake.addr.clone()],
            ..RegistryConfig::default()
        },
        metrics(),
    )
    .unwrap();
    assert_eq!(client.digest(&fake.image()).await.unwrap().digest, DIGEST);
    // Not listed: plain HTTP to it is refused outright (TLS is required).
    let strict = RegistryClient::new(
        RegistryConfig {
            credentials: repo_user("user", "pass"),
            timeout: Duration::from_secs(1),
            ..RegistryConfig::default()
        },
        metrics(),
    )
    .unwrap();
    assert!(strict.digest(&fake.image()).await.is_err());
}

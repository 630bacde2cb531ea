//! The registry client: what digest does a tag have now, without pulling.
//!
//! One `HEAD /v2/<repository>/manifests/<tag>` with all four manifest media types in `Accept`
//! (so `Docker-Content-Digest` is the digest `docker pull` records in RepoDigests, the list
//! digest for multi-arch tags). When the header is missing, a `GET` of the manifest is hashed.
//! Authentication follows the registry's `WWW-Authenticate` challenge: Bearer tokens
//! (`token` or `access_token`, cached per realm, service and scope for `expires_in`) or Basic.
//! Credentials are those of the probed registry ([`Credentials`]): username and password,
//! identity tokens (exchanged at the token server) or registry tokens.
//! Every request has a deadline, each registry a concurrency limit. A `429` throttles its whole
//! registry until `Retry-After` (or an exponential backoff when there is none): probes of that
//! registry wait when the wait is short, and fail at once, without a request, when it is long.
//! `ratelimit-remaining` is captured. TLS is always verified; plain HTTP is used only for
//! loopback registries and those listed as insecure, and secrets go to a token server only over
//! TLS or on this machine.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ouroboros_shared::reference::ImageRef;

use crate::detect::credentials::{Credential, Credentials, Secret};
use crate::telemetry::metrics::METRICS;
use reqwest::StatusCode;
use reqwest::header::{ACCEPT, AUTHORIZATION, HeaderMap, RETRY_AFTER, WWW_AUTHENTICATE};
use tokio::sync::Semaphore;
use tokio::time::Instant;

/// The four manifest media types, so the digest is the one `docker pull` records.
pub const MANIFEST_ACCEPT: &str = "application/vnd.docker.distribution.manifest.list.v2+json, \
application/vnd.oci.image.index.v1+json, \
application/vnd.docker.distribution.manifest.v2+json, \
application/vnd.oci.image.manifest.v1+json";

/// Longest throttle honoured from one `Retry-After` (a day), so that no answer overflows time.
const MAX_THROTTLE: Duration = Duration::from_secs(24 * 3600);
/// Longest a bearer token is kept, whatever `expires_in` says.
const MAX_TOKEN_LIFETIME: u64 = 24 * 3600;

/// Settings of the client.
#[derive(Clone)]
pub struct RegistryConfig {
    /// Per-registry credentials, for Basic and for token requests.
    pub credentials: Arc<Credentials>,
    /// Registries (`host[:port]`) spoken to over plain HTTP besides loopback ones.
    pub insecure: Vec<String>,
    /// Deadline of each request.
    pub timeout: Duration,
    /// Requests in flight per registry.
    pub per_registry: usize,
    /// Longest `Retry-After` honoured by waiting; longer ones fail the probe.
    pub max_retry_after: Duration,
    /// Extra CA certificates (PEM) trusted for registries.
    pub extra_ca_pem: Option<Vec<u8>>,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        Self {
            credentials: Arc::default(),
            insecure: Vec::new(),
            timeout: Duration::from_secs(10),
            per_registry: 8,
            max_retry_after: Duration::from_secs(30),
            extra_ca_pem: None,
        }
    }
}

impl std::fmt::Debug for RegistryConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryConfig")
            .field("credentials", &self.credentials)
            .field("insecure", &self.insecure)
            .field("timeout", &self.timeout)
            .field("per_registry", &self.per_registry)
            .finish_non_exhaustive()
    }
}

/// A tag's current digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    pub digest: String,
    /// The registry's `ratelimit-remaining`, when it sends one.
    pub ratelimit_remaining: Option<String>,
}

/// Why a probe gave no digest. Each names the image; none carries a secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProbeError {
    #[error("{image}: registry refused the credentials (401){detail}")]
    Unauthorized { image: String, detail: String },
    #[error("{image}: access denied (403)")]
    Forbidden { image: String },
    #[error("{image}: no such repository or tag (404)")]
    NotFound { image: String },
    #[error("{image}: rate limited (429), retry after {retry_after:?}")]
    RateLimited {
        image: String,
        retry_after: Option<Duration>,
    },
    #[error("{image}: registry error {status}")]
    Server { image: String, status: u16 },
    #[error("{image}: no answer within {timeout:?}")]
    Timeout { image: String, timeout: Duration },
    #[error("{image}: malformed answer: {reason}")]
    Malformed { image: String, reason: String },
    #[error("{image}: {reason}")]
    Transport { image: String, reason: String },
    #[error("{image}: credentials: {reason}")]
    Credentials { image: String, reason: String },
}

#[derive(Clone)]
struct Token {
    value: String,
    expires: Instant,
}

/// Probes tag digests. Cheap to share (`Arc`).
pub struct RegistryClient {
    http: reqwest::Client,
    config: RegistryConfig,
    tokens: Mutex<HashMap<String, Token>>,
    limits: Mutex<HashMap<String, Arc<Semaphore>>>,
    /// Registries that asked for Basic: later requests send it at once.
    basic: Mutex<std::collections::HashSet<String>>,
    /// Registries that answered `429`, until when.
    throttles: Mutex<HashMap<String, Throttle>>,
}

struct Throttle {
    until: Instant,
    /// `429`s in a row, for the backoff when the registry names no time.
    strikes: u32,
}

/// A `WWW-Authenticate` challenge.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Challenge {
    Bearer {
        realm: String,
        service: Option<String>,
        scope: Option<String>,
    },
    Basic,
}

impl RegistryClient {
    pub fn new(config: RegistryConfig) -> Result<Self, String> {
        // reqwest needs the process-wide provider; installing it again is a no-op.
        ouroboros_shared::install_crypto_provider();
        let mut builder = reqwest::Client::builder()
            .timeout(config.timeout)
            .connect_timeout(config.timeout)
            .redirect(reqwest::redirect::Policy::custom(|attempt| {
                // Never from TLS to plain HTTP (the Authorization header would go along).
                let downgrade = attempt
                    .previous()
                    .last()
                    .is_some_and(|u| u.scheme() == "https")
                    && attempt.url().scheme() == "http";
                if downgrade {
                    attempt.error("refusing a redirect from https to http")
                } else if attempt.previous().len() > 5 {
                    attempt.error("too many redirects")
                } else {
                    attempt.follow()
                }
            }))
            .user_agent(concat!("ouroboros/", env!("CARGO_PKG_VERSION")));
        if let Some(pem) = &config.extra_ca_pem {
            for cert in
                reqwest::Certificate::from_pem_bundle(pem).map_err(|e| format!("extra CA: {e}"))?
            {
                builder = builder.add_root_certificate(cert);
            }
        }
        let http = builder
            .build()
            .map_err(|e| format!("cannot build the registry client: {e}"))?;
        Ok(Self {
            http,
            config,
            tokens: Mutex::new(HashMap::new()),
            limits: Mutex::new(HashMap::new()),
            basic: Mutex::new(std::collections::HashSet::new()),
            throttles: Mutex::new(HashMap::new()),
        })
    }

    fn limit(&self, registry: &str) -> Arc<Semaphore> {
        let mut limits = self.limits.lock().unwrap_or_else(|p| p.into_inner());
        limits
            .entry(registry.to_owned())
            .or_insert_with(|| Arc::new(Semaphore::new(self.config.per_registry.max(1))))
            .clone()
    }

    fn scheme(&self, registry: &str) -> &'static str {
        let host = registry.rsplit_once(':').map_or(registry, |(h, p)| {
            if p.bytes().all(|b| b.is_ascii_digit()) {
                h
            } else {
                registry
            }
        });
        let loopback = host == "localhost"
            || host == "[::1]"
            || host
                .parse::<std::net::Ipv4Addr>()
                .is_ok_and(|ip| ip.is_loopback());
        if loopback || self.config.insecure.iter().any(|r| r == registry) {
            "http"
        } else {
            "https"
        }
    }

    /// The credentials the probe of `image` uses.
    pub fn credentials(&self) -> &Arc<Credentials> {
        &self.config.credentials
    }

    async fn credential(
        &self,
        image: &ImageRef,
        name: &str,
    ) -> Result<Option<Credential>, ProbeError> {
        self.config
            .credentials
            .get(&image.registry)
            .await
            .map_err(|reason| ProbeError::Credentials {
                image: name.to_owned(),
                reason,
            })
    }

    /// Waits while `registry` is throttled for at most `max_retry_after`; a longer throttle
    /// fails at once, without a request.
    async fn wait_throttle(&self, registry: &str, name: &str) -> Result<(), ProbeError> {
        loop {
            let until = self
                .throttles
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(registry)
                .map(|t| t.until);
            let now = Instant::now();
            match until {
                Some(until) if until > now => {
                    let wait = until - now;
                    if wait > self.config.max_retry_after {
                        return Err(ProbeError::RateLimited {
                            image: name.to_owned(),
                            retry_after: Some(
                                Duration::from_secs(wait.as_secs_f64().ceil() as u64),
                            ),
                        });
                    }
                    tokio::time::sleep_until(until).await;
                }
                _ => return Ok(()),
            }
        }
    }

    /// A `429` from `registry`: throttles it for `retry_after`, or for 1, 2, 4 … 64 s after
    /// each 429 in a row when the registry named no time. Returns the wait.
    fn throttle(&self, registry: &str, retry_after: Option<Duration>) -> Duration {
        let mut throttles = self.throttles.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let t = throttles.entry(registry.to_owned()).or_insert(Throttle {
            until: now,
            strikes: 0,
        });
        // One strike per throttle, not per answer: the requests in flight when the registry
        // started refusing all come back with a 429 at about the same time.
        if t.until <= now || t.strikes == 0 {
            t.strikes = t.strikes.saturating_add(1);
        }
        let wait = retry_after
            .unwrap_or_else(|| Duration::from_secs(1 << (t.strikes - 1).min(6)))
            .min(MAX_THROTTLE);
        t.until = t.until.max(now + wait);
        wait
    }

    fn throttled(&self, registry: &str) -> bool {
        self.throttles
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(registry)
            .is_some_and(|t| t.until > Instant::now())
    }

    /// An answer other than 429: the registry's backoff starts over.
    fn unthrottle(&self, registry: &str) {
        let mut throttles = self.throttles.lock().unwrap_or_else(|p| p.into_inner());
        if throttles
            .get(registry)
            .is_some_and(|t| t.until <= Instant::now())
        {
            throttles.remove(registry);
        }
    }

    /// The tag's (or pinned digest's) manifest digest now (timed, for the metrics).
    pub async fn digest(&self, image: &ImageRef) -> Result<Probe, ProbeError> {
        let started = std::time::Instant::now();
        let probe = self.probe(image).await;
        METRICS.probe(started.elapsed().as_secs_f64());
        if let Ok(Probe {
            ratelimit_remaining: Some(remaining),
            ..
        }) = &probe
        {
            METRICS.ratelimit(&image.registry, remaining);
        }
        probe
    }

    async fn probe(&self, image: &ImageRef) -> Result<Probe, ProbeError> {
        let name = image.to_string();
        let limit = self.limit(&image.registry);
        let reference = image
            .tag
            .as_deref()
            .or(image.digest.as_deref())
            .unwrap_or("latest");
        let url = format!(
            "{}://{}/v2/{}/manifests/{}",
            self.scheme(image.api_host()),
            image.api_host(),
            image.repository,
            reference
        );
        let scope = format!("repository:{}:pull", image.repository);
        let mut auth: Option<String> = self.cached_token(&image.registry, &scope);
        let known_basic = self
            .basic
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(&image.registry);
        if auth.is_none()
            && known_basic
            && let Some(Credential {
                secret: Secret::Basic { username, password },
                ..
            }) = self.credential(image, &name).await?
        {
            auth = Some(basic(&username, &password));
        }
        let mut authenticated_once = false;
        let mut rate_limited = 0;
        loop {
            self.wait_throttle(&image.registry, &name).await?;
            let _permit = limit.acquire().await.map_err(|_| ProbeError::Transport {
                image: name.clone(),
                reason: "client shut down".into(),
            })?;
            if self.throttled(&image.registry) {
                // A 429 came back while this probe waited for its turn.
                continue;
            }
            let response = self
                .send(reqwest::Method::HEAD, &url, auth.as_deref(), &name)
                .await?;
            let status = response.status();
            let headers = response.headers().clone();
            if status != StatusCode::TOO_MANY_REQUESTS {
                self.unthrottle(&image.registry);
            }
            match status {
                s if s.is_success() => {
                    let remaining = header(&headers, "ratelimit-remaining");
                    let digest = match header(&headers, "docker-content-digest") {
                        Some(d) => d,
                        None => self.hash_manifest(&url, auth.as_deref(), &name).await?,
                    };
                    validate_digest(&digest).map_err(|reason| ProbeError::Malformed {
                        image: name.clone(),
                        reason,
                    })?;
                    return Ok(Probe {
                        digest,
                        ratelimit_remaining: remaining,
                    });
                }
                StatusCode::UNAUTHORIZED if !authenticated_once => {
                    authenticated_once = true;
                    let challenge = header(&headers, WWW_AUTHENTICATE.as_str())
                        .and_then(|h| parse_challenge(&h));
                    let credential = self.credential(image, &name).await?;
                    auth = Some(match (challenge, credential) {
                        (
                            Some(Challenge::Bearer { .. }),
                            Some(Credential {
                                secret: Secret::RegistryToken(token),
                                ..
                            }),
                        ) => format!("Bearer {token}"),
                        (
                            Some(Challenge::Bearer {
                                realm,
                                service,
                                scope: challenged,
                            }),
                            credential,
                        ) => {
                            // Ask for the scope the registry named; cache under ours, which
                            // is what the next probe looks up.
                            let asked = challenged.unwrap_or_else(|| scope.clone());
                            let key = format!("{} {scope}", image.registry);
                            self.token(
                                &key,
                                &realm,
                                service.as_deref(),
                                &asked,
                                &name,
                                credential.as_ref(),
                            )
                            .await?
                        }
                        (
                            Some(Challenge::Basic) | None,
                            Some(Credential {
                                secret: Secret::Basic { username, password },
                                ..
                            }),
                        ) => {
                            self.basic
                                .lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .insert(image.registry.clone());
                            basic(&username, &password)
                        }
                        (Some(Challenge::Basic) | None, Some(other)) => {
                            return Err(ProbeError::Unauthorized {
                                image: name,
                                detail: format!(
                                    ": the registry asks for a password and {} holds a token",
                                    other.source
                                ),
                            });
                        }
                        (Some(Challenge::Basic) | None, None) => {
                            return Err(ProbeError::Unauthorized {
                                image: name,
                                detail: format!(": no credentials for {}", image.registry),
                            });
                        }
                    });
                }
                StatusCode::UNAUTHORIZED => {
                    return Err(ProbeError::Unauthorized {
                        image: name,
                        detail: String::new(),
                    });
                }
                StatusCode::FORBIDDEN => return Err(ProbeError::Forbidden { image: name }),
                StatusCode::NOT_FOUND => return Err(ProbeError::NotFound { image: name }),
                StatusCode::TOO_MANY_REQUESTS => {
                    let named =
                        header(&headers, RETRY_AFTER.as_str()).and_then(|v| parse_retry_after(&v));
                    let wait = self.throttle(&image.registry, named);
                    if rate_limited >= 2 || wait > self.config.max_retry_after {
                        return Err(ProbeError::RateLimited {
                            image: name,
                            retry_after: Some(wait),
                        });
                    }
                    rate_limited += 1;
                    // The permit goes back while the registry's throttle is waited out.
                }
                s if s.is_server_error() => {
                    return Err(ProbeError::Server {
                        image: name,
                        status: s.as_u16(),
                    });
                }
                s => {
                    return Err(ProbeError::Malformed {
                        image: name,
                        reason: format!("unexpected status {s}"),
                    });
                }
            }
        }
    }

    async fn send(
        &self,
        method: reqwest::Method,
        url: &str,
        auth: Option<&str>,
        image: &str,
    ) -> Result<reqwest::Response, ProbeError> {
        // Probes send HEAD, or GET for a manifest without a digest header.
        let name = if method == reqwest::Method::HEAD {
            "HEAD"
        } else {
            "GET"
        };
        let mut request = self
            .http
            .request(method, url)
            .header(ACCEPT, MANIFEST_ACCEPT);
        if let Some(auth) = auth {
            request = request.header(AUTHORIZATION, auth);
        }
        let answer = request.send().await;
        record(url, name, &answer);
        answer.map_err(|e| self.transport(e, image))
    }

    fn transport(&self, e: reqwest::Error, image: &str) -> ProbeError {
        if e.is_timeout() {
            ProbeError::Timeout {
                image: image.to_owned(),
                timeout: self.config.timeout,
            }
        } else {
            // reqwest's messages name the URL, never credentials.
            ProbeError::Transport {
                image: image.to_owned(),
                reason: ouroboros_shared::cli::error_chain(&e),
            }
        }
    }

    /// GET the manifest and hash the exact bytes (registries may omit the digest header).
    async fn hash_manifest(
        &self,
        url: &str,
        auth: Option<&str>,
        image: &str,
    ) -> Result<String, ProbeError> {
        let response = self.send(reqwest::Method::GET, url, auth, image).await?;
        if !response.status().is_success() {
            return Err(ProbeError::Malformed {
                image: image.to_owned(),
                reason: format!("manifest GET answered {}", response.status()),
            });
        }
        let body = response
            .bytes()
            .await
            .map_err(|e| self.transport(e, image))?;
        if body.is_empty() {
            return Err(ProbeError::Malformed {
                image: image.to_owned(),
                reason: "empty manifest and no digest header".into(),
            });
        }
        let hash = ring::digest::digest(&ring::digest::SHA256, &body);
        Ok(format!("sha256:{}", hex(hash.as_ref())))
    }

    fn cached_token(&self, registry: &str, scope: &str) -> Option<String> {
        let tokens = self.tokens.lock().unwrap_or_else(|p| p.into_inner());
        tokens
            .get(&format!("{registry} {scope}"))
            .filter(|t| t.expires > Instant::now())
            .map(|t| format!("Bearer {}", t.value))
    }

    /// Fetches (and caches) a bearer token for `scope`: with a password as Basic on a `GET`,
    /// with an identity token as an OAuth2 refresh-token `POST`; anonymously when there is
    /// none, when the token server refuses it (the image may be public on a registry the
    /// credentials are not for), or when the token server is neither TLS nor on this machine.
    async fn token(
        &self,
        cache_key: &str,
        realm: &str,
        service: Option<&str>,
        scope: &str,
        image: &str,
        credential: Option<&Credential>,
    ) -> Result<String, ProbeError> {
        let mut url = reqwest::Url::parse(realm).map_err(|e| ProbeError::Malformed {
            image: image.to_owned(),
            reason: format!("token realm {realm:?} is not a URL: {e}"),
        })?;
        {
            let mut query = url.query_pairs_mut();
            if let Some(service) = service {
                query.append_pair("service", service);
            }
            query.append_pair("scope", scope);
        }
        let host = url.host_str().unwrap_or_default().to_owned();
        let host_port = match url.port() {
            Some(port) => format!("{host}:{port}"),
            None => host.clone(),
        };
        let safe = url.scheme() == "https"
            || self.scheme(&host) == "http"
            || self.scheme(&host_port) == "http";
        let request = match (credential.map(|c| &c.secret), safe) {
            (Some(Secret::Basic { username, password }), true) => Some((
                "GET",
                self.http
                    .get(url.clone())
                    .basic_auth(username, Some(password)),
            )),
            (Some(Secret::IdentityToken(refresh)), true) => {
                let mut form = reqwest::Url::parse("http://form.invalid/").map_err(|e| {
                    ProbeError::Malformed {
                        image: image.to_owned(),
                        reason: e.to_string(),
                    }
                })?;
                form.query_pairs_mut()
                    .append_pair("grant_type", "refresh_token")
                    .append_pair("refresh_token", refresh)
                    .append_pair("service", service.unwrap_or_default())
                    .append_pair("scope", scope)
                    .append_pair("client_id", "ouroboros");
                let body = form.query().unwrap_or_default().to_owned();
                let mut endpoint = url.clone();
                endpoint.set_query(None);
                Some((
                    "POST",
                    self.http
                        .post(endpoint)
                        .header(
                            reqwest::header::CONTENT_TYPE,
                            "application/x-www-form-urlencoded",
                        )
                        .body(body),
                ))
            }
            _ => None,
        };
        let mut response = None;
        if let Some((method, request)) = request {
            let answer = request.send().await;
            record(url.as_str(), method, &answer);
            let r = answer.map_err(|e| self.transport(e, image))?;
            if !matches!(r.status(), StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN) {
                response = Some(r);
            }
        }
        let response = match response {
            Some(r) => r,
            None => {
                let answer = self.http.get(url.clone()).send().await;
                record(url.as_str(), "GET", &answer);
                answer.map_err(|e| self.transport(e, image))?
            }
        };
        match response.status() {
            s if s.is_success() => {}
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
                return Err(ProbeError::Unauthorized {
                    image: image.to_owned(),
                    detail: ": the token server refused the credentials".into(),
                });
            }
            s => {
                return Err(ProbeError::Malformed {
                    image: image.to_owned(),
                    reason: format!("token server answered {s}"),
                });
            }
        }
        let body = response
            .bytes()
            .await
            .map_err(|e| self.transport(e, image))?;
        let answer: serde_json::Value =
            serde_json::from_slice(&body).map_err(|e| ProbeError::Malformed {
                image: image.to_owned(),
                reason: format!("token answer is not JSON: {e}"),
            })?;
        let value = answer["token"]
            .as_str()
            .or_else(|| answer["access_token"].as_str())
            .filter(|t| !t.is_empty())
            .ok_or_else(|| ProbeError::Malformed {
                image: image.to_owned(),
                reason: "token answer has no token".into(),
            })?
            .to_owned();
        let lifetime = answer["expires_in"]
            .as_u64()
            .unwrap_or(60)
            .clamp(1, MAX_TOKEN_LIFETIME);
        // Renew a little before the registry would refuse it.
        let expires = Instant::now() + Duration::from_secs(lifetime).mul_f64(0.9);
        self.tokens
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(
                cache_key.to_owned(),
                Token {
                    value: value.clone(),
                    expires,
                },
            );
        Ok(format!("Bearer {value}"))
    }
}

fn header(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty())
}

/// Counts a request to `url`'s host by its answer's status (0: none).
fn record(url: &str, method: &str, answer: &Result<reqwest::Response, reqwest::Error>) {
    let host = reqwest::Url::parse(url)
        .ok()
        .and_then(|u| {
            u.host_str()
                .map(|h| u.port().map_or(h.to_owned(), |p| format!("{h}:{p}")))
        })
        .unwrap_or_default();
    let code = answer.as_ref().map_or(0, |r| r.status().as_u16());
    METRICS.registry_request(&host, method, code);
}

/// `Retry-After`: seconds, or an HTTP date.
fn parse_retry_after(value: &str) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(
        at.duration_since(std::time::SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
}

fn basic(user: &str, pass: &str) -> String {
    use base64::Engine as _;
    let encoded = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"));
    format!("Basic {encoded}")
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn validate_digest(digest: &str) -> Result<(), String> {
    let hex = digest
        .strip_prefix("sha256:")
        .ok_or_else(|| format!("digest {digest:?} is not sha256"))?;
    if hex.len() == 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        Ok(())
    } else {
        Err(format!("digest {digest:?} is not 64 hex digits"))
    }
}

/// Parses `Bearer realm="…",service="…",scope="…"` or `Basic realm="…"`.
fn parse_challenge(value: &str) -> Option<Challenge> {
    let (scheme, params) = value.trim().split_once(' ').unwrap_or((value.trim(), ""));
    if scheme.eq_ignore_ascii_case("basic") {
        return Some(Challenge::Basic);
    }
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let mut fields: HashMap<String, String> = HashMap::new();
    let mut rest = params.trim();
    while !rest.is_empty() {
        let (key, after) = rest.split_once('=')?;
        let key = key
            .trim()
            .trim_start_matches(',')
            .trim()
            .to_ascii_lowercase();
        let after = after.trim_start();
        let (val, remaining) = if let Some(quoted) = after.strip_prefix('"') {
            let end = quoted.find('"')?;
            (&quoted[..end], &quoted[end + 1..])
        } else {
            let end = after.find(',').unwrap_or(after.len());
            (&after[..end], &after[end..])
        };
        fields.insert(key, val.to_owned());
        rest = remaining.trim_start().trim_start_matches(',').trim_start();
    }
    Some(Challenge::Bearer {
        realm: fields.remove("realm")?,
        service: fields.remove("service"),
        scope: fields.remove("scope"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges_parse() {
        assert_eq!(
            parse_challenge(
                r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/nginx:pull""#
            ),
            Some(Challenge::Bearer {
                realm: "https://auth.docker.io/token".into(),
                service: Some("registry.docker.io".into()),
                scope: Some("repository:library/nginx:pull".into()),
            })
        );
        assert_eq!(
            parse_challenge(r#"Basic realm="Registry Realm""#),
            Some(Challenge::Basic)
        );
        assert_eq!(parse_challenge("Bearer service=x"), None, "no realm");
        assert_eq!(parse_challenge("Negotiate"), None);
    }

    #[test]
    fn digests_are_validated_and_basic_is_encoded() {
        assert!(validate_digest(&format!("sha256:{}", "a".repeat(64))).is_ok());
        assert!(validate_digest("sha256:xyz").is_err());
        assert!(validate_digest("md5:abc").is_err());
        assert_eq!(
            basic("Aladdin", "open sesame"),
            "Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ=="
        );
    }

    #[test]
    fn retry_after_takes_seconds_or_a_date() {
        assert_eq!(parse_retry_after("120"), Some(Duration::from_secs(120)));
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"),
            Some(Duration::ZERO),
            "a date in the past: no wait"
        );
        let later = httpdate::fmt_http_date(std::time::SystemTime::now() + Duration::from_secs(90));
        let wait = parse_retry_after(&later).unwrap();
        assert!(
            wait > Duration::from_secs(80) && wait <= Duration::from_secs(90),
            "{wait:?}"
        );
        assert_eq!(parse_retry_after("soon"), None);
    }

    #[test]
    fn loopback_registries_are_plain_http_others_tls() {
        let client = RegistryClient::new(RegistryConfig {
            insecure: vec!["reg.lan:5000".into()],
            ..RegistryConfig::default()
        })
        .unwrap();
        assert_eq!(client.scheme("127.0.0.1:5000"), "http");
        assert_eq!(client.scheme("localhost:5000"), "http");
        assert_eq!(client.scheme("reg.lan:5000"), "http");
        assert_eq!(client.scheme("ghcr.io"), "https");
        assert_eq!(client.scheme("10.0.0.1:5000"), "https");
    }
}

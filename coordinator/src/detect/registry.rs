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

mod auth;
mod throttle;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ouroboros_shared::reference::ImageRef;

use crate::detect::credentials::{Credential, Credentials, Secret};
use crate::telemetry::metrics::Metrics;
use auth::{Auth, Challenge, Token, parse_challenge};
use reqwest::StatusCode;
use reqwest::header::{ACCEPT, HeaderMap, RETRY_AFTER, WWW_AUTHENTICATE};
use throttle::{Throttle, parse_retry_after};
use tokio::sync::Semaphore;

/// The four manifest media types, so the digest is the one `docker pull` records.
pub const MANIFEST_ACCEPT: &str = "application/vnd.docker.distribution.manifest.list.v2+json, \
application/vnd.oci.image.index.v1+json, \
application/vnd.docker.distribution.manifest.v2+json, \
application/vnd.oci.image.manifest.v1+json";

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
    /// Where requests, probe times and rate limits are counted.
    metrics: Metrics,
}

impl RegistryClient {
    pub fn new(config: RegistryConfig, metrics: Metrics) -> Result<Self, String> {
        let http = http_client(&config)?;
        Ok(Self {
            http,
            config,
            tokens: Mutex::new(HashMap::new()),
            limits: Mutex::new(HashMap::new()),
            basic: Mutex::new(std::collections::HashSet::new()),
            throttles: Mutex::new(HashMap::new()),
            metrics,
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

    /// The tag's (or pinned digest's) manifest digest now (timed, for the metrics).
    pub async fn digest(&self, image: &ImageRef) -> Result<Probe, ProbeError> {
        let started = std::time::Instant::now();
        let probe = self.probe(image).await;
        self.metrics.probe(started.elapsed().as_secs_f64());
        if let Ok(Probe {
            ratelimit_remaining: Some(remaining),
            ..
        }) = &probe
        {
            self.metrics.ratelimit(&image.registry, remaining);
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
        let mut auth: Option<Auth> = self.cached_token(&image.registry, &scope);
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
            auth = Some(Auth::Basic { username, password });
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
                .send(reqwest::Method::HEAD, &url, auth.as_ref(), &name)
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
                        None => self.hash_manifest(&url, auth.as_ref(), &name).await?,
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
                        ) => Auth::Bearer(token),
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
                            Auth::Basic { username, password }
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

    /// Counts a request to `url`'s host by its answer's status (0: none).
    fn record(&self, url: &str, method: &str, answer: &Result<reqwest::Response, reqwest::Error>) {
        let host = reqwest::Url::parse(url)
            .ok()
            .and_then(|u| {
                u.host_str()
                    .map(|h| u.port().map_or(h.to_owned(), |p| format!("{h}:{p}")))
            })
            .unwrap_or_default();
        let code = answer.as_ref().map_or(0, |r| r.status().as_u16());
        self.metrics.registry_request(&host, method, code);
    }

    async fn send(
        &self,
        method: reqwest::Method,
        url: &str,
        auth: Option<&Auth>,
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
            request = auth.apply(request);
        }
        let answer = request.send().await;
        self.record(url, name, &answer);
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
        auth: Option<&Auth>,
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
}

/// The HTTP client of [`RegistryClient`] for `config`: deadlines, redirect policy and the
/// extra CA certificates (a bad certificate fails here, which startup checks).
pub fn http_client(config: &RegistryConfig) -> Result<reqwest::Client, String> {
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
    builder
        .build()
        .map_err(|e| format!("cannot build the registry client: {e}"))
}

fn header(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_are_validated() {
        assert!(validate_digest(&format!("sha256:{}", "a".repeat(64))).is_ok());
        assert!(validate_digest("sha256:xyz").is_err());
        assert!(validate_digest("md5:abc").is_err());
    }

    #[test]
    fn loopback_registries_are_plain_http_others_tls() {
        let client = RegistryClient::new(
            RegistryConfig {
                insecure: vec!["reg.lan:5000".into()],
                ..RegistryConfig::default()
            },
            Metrics::new(false).unwrap(),
        )
        .unwrap();
        assert_eq!(client.scheme("127.0.0.1:5000"), "http");
        assert_eq!(client.scheme("localhost:5000"), "http");
        assert_eq!(client.scheme("reg.lan:5000"), "http");
        assert_eq!(client.scheme("ghcr.io"), "https");
        assert_eq!(client.scheme("10.0.0.1:5000"), "https");
    }
}

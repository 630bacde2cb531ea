//! Registry authentication: the `WWW-Authenticate` challenge, bearer tokens from the token
//! server (cached per registry and scope) and what goes in `Authorization`.

use std::collections::HashMap;
use std::time::Duration;

use reqwest::StatusCode;
use tokio::time::Instant;

use super::{ProbeError, RegistryClient};
use crate::detect::credentials::{Credential, Secret};

/// Longest a bearer token is kept, whatever `expires_in` says.
const MAX_TOKEN_LIFETIME: u64 = 24 * 3600;

/// What a request to the registry carries in `Authorization` (no `Debug`: it holds secrets).
#[derive(Clone)]
pub(super) enum Auth {
    Bearer(String),
    Basic { username: String, password: String },
}

impl Auth {
    pub(super) fn apply(&self, request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match self {
            Self::Bearer(token) => request.bearer_auth(token),
            Self::Basic { username, password } => request.basic_auth(username, Some(password)),
        }
    }
}

#[derive(Clone)]
pub(super) struct Token {
    value: String,
    expires: Instant,
}

/// A `WWW-Authenticate` challenge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Challenge {
    Bearer {
        realm: String,
        service: Option<String>,
        scope: Option<String>,
    },
    Basic,
}

impl RegistryClient {
    pub(super) fn cached_token(&self, registry: &str, scope: &str) -> Option<Auth> {
        let tokens = self.tokens.lock().unwrap_or_else(|p| p.into_inner());
        tokens
            .get(&format!("{registry} {scope}"))
            .filter(|t| t.expires > Instant::now())
            .map(|t| Auth::Bearer(t.value.clone()))
    }

    /// Fetches (and caches) a bearer token for `scope`: with a password as Basic on a `GET`,
    /// with an identity token as an OAuth2 refresh-token `POST`; anonymously when there is
    /// none, when the token server refuses it (the image may be public on a registry the
    /// credentials are not for), or when the token server is neither TLS nor on this machine.
    pub(super) async fn token(
        &self,
        cache_key: &str,
        realm: &str,
        service: Option<&str>,
        scope: &str,
        image: &str,
        credential: Option<&Credential>,
    ) -> Result<Auth, ProbeError> {
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
            self.record(url.as_str(), method, &answer);
            let r = answer.map_err(|e| self.transport(e, image))?;
            if !matches!(r.status(), StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN) {
                response = Some(r);
            }
        }
        let response = match response {
            Some(r) => r,
            None => {
                let answer = self.http.get(url.clone()).send().await;
                self.record(url.as_str(), "GET", &answer);
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
        Ok(Auth::Bearer(value))
    }
}

/// Parses `Bearer realm="…",service="…",scope="…"` or `Basic realm="…"`. By hand: the
/// challenge grammar (RFC 7235 auth-params) is small, and the crates that parse it are
/// unmaintained or pull a web framework in.
pub(super) fn parse_challenge(value: &str) -> Option<Challenge> {
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
}

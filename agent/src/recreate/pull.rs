//! Pulling the image a replacement is made from, with the coordinator's credentials for its
//! registry, within the pull deadline; and pointing a tag at a pulled digest.

use bollard::query_parameters::CreateImageOptionsBuilder;
use futures_util::StreamExt;
use ouroboros_shared::reference::ImageRef;

use super::executor::Recreator;

/// Registry credentials: username and password, or an identity token, or a registry token.
/// `Debug` never shows a secret.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct RegistryAuth {
    pub username: String,
    pub password: String,
    pub identity_token: String,
    pub registry_token: String,
}

impl std::fmt::Debug for RegistryAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryAuth")
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

/// The `X-Registry-Auth` header value: JSON in URL-safe base64, which is what the engine
/// decodes (bollard's standard alphabet silently turns some passwords into an anonymous pull).
pub fn registry_auth_header(auth: &RegistryAuth, server: &str) -> String {
    let mut json = serde_json::json!({ "serveraddress": server });
    for (key, value) in [
        ("username", &auth.username),
        ("password", &auth.password),
        ("identitytoken", &auth.identity_token),
        ("registrytoken", &auth.registry_token),
    ] {
        if !value.is_empty() {
            json[key] = serde_json::Value::String(value.clone());
        }
    }
    base64::Engine::encode(&base64::engine::general_purpose::URL_SAFE, json.to_string())
}

/// Splits `repo:tag@sha256:…` into the pinned reference to pull and the tag to point at it.
pub fn split_pinned(reference: &str) -> Option<(String, Option<String>)> {
    let (named, digest) = reference.split_once('@')?;
    let repo_end = named.rfind('/').map_or(0, |i| i + 1);
    let (repo, tag) = match named[repo_end..].rfind(':') {
        Some(i) => (&named[..repo_end + i], Some(named.to_owned())),
        None => (named, None),
    };
    Some((format!("{repo}@{digest}"), tag))
}

impl Recreator {
    /// Points `tag` (`repo:tag`, or `repo` for `latest`) at the image `source`.
    pub(crate) async fn tag(&self, source: &str, tag: &str) -> Result<(), String> {
        let repo_end = tag.rfind('/').map_or(0, |i| i + 1);
        let (repo, name) = match tag[repo_end..].rfind(':') {
            Some(i) => (&tag[..repo_end + i], &tag[repo_end + i + 1..]),
            None => (tag, "latest"),
        };
        let options = bollard::query_parameters::TagImageOptionsBuilder::new()
            .repo(repo)
            .tag(name)
            .build();
        self.docker
            .tag_image(source, Some(options))
            .await
            .map_err(|e| format!("cannot tag {source} as {tag}: {e}"))
    }

    /// Pulls `reference`, with `auth` when given; when the credentials are refused (they may
    /// be for another registry), once more anonymously. Gives up when the agent is stopping.
    pub(crate) async fn pull(
        &self,
        reference: &str,
        auth: Option<&RegistryAuth>,
    ) -> Result<(), String> {
        let pulling = async {
            match (self.pull_once(reference, auth).await, auth) {
                (Err(first), Some(_)) => self.pull_once(reference, None).await.map_err(|_| first),
                (result, _) => result,
            }
        };
        tokio::select! {
            result = pulling => result,
            () = self.until_stopping() => Err(format!("pull of {reference} given up: the agent is stopping")),
        }
    }

    async fn pull_once(&self, reference: &str, auth: Option<&RegistryAuth>) -> Result<(), String> {
        let options = CreateImageOptionsBuilder::new()
            .from_image(reference)
            .build();
        let docker = match auth {
            Some(auth) => {
                // The server as a docker config.json keys it (Docker Hub's v1 URL).
                let server = ImageRef::parse(reference)
                    .map(|r| r.auth_key().to_owned())
                    .map_err(|e| e.to_string())?;
                let header = registry_auth_header(auth, &server);
                self.docker
                    .clone()
                    .with_request_modifier(move |mut request| {
                        if request.uri().path().ends_with("/images/create")
                            && let Ok(value) = header.parse()
                        {
                            request.headers_mut().insert("X-Registry-Auth", value);
                        }
                        request
                    })
            }
            None => self.docker.clone(),
        };
        let pulling = async {
            let mut stream = docker.create_image(Some(options), None, None);
            while let Some(item) = stream.next().await {
                item.map_err(|e| format!("cannot pull {reference}: {e}"))?;
            }
            Ok(())
        };
        tokio::time::timeout(self.deadlines.pull, pulling)
            .await
            .map_err(|_| format!("pull of {reference} exceeded {:?}", self.deadlines.pull))?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auth_header_is_url_safe_and_carries_the_server() {
        let auth = RegistryAuth {
            username: "ci".into(),
            password: "s3cr?t>>~~??".into(),
            ..RegistryAuth::default()
        };
        let header = registry_auth_header(&auth, "127.0.0.1:5000");
        assert!(!header.contains('+') && !header.contains('/'), "{header}");
        assert!(header.contains('-') || header.contains('_'), "{header}");
        assert!(
            !format!("{auth:?}").contains("s3cr"),
            "password in Debug output"
        );
        let decoded = |h: &str| -> serde_json::Value {
            let standard = h.replace('-', "+").replace('_', "/");
            let raw = base64::Engine::decode(&base64::engine::general_purpose::STANDARD, standard)
                .unwrap();
            serde_json::from_slice(&raw).unwrap()
        };
        assert_eq!(
            decoded(&header),
            serde_json::json!({"username": "ci", "password": "s3cr?t>>~~??", "serveraddress": "127.0.0.1:5000"})
        );
        let token = RegistryAuth {
            identity_token: "refresh-sentinel".into(),
            ..RegistryAuth::default()
        };
        assert_eq!(
            decoded(&registry_auth_header(&token, "ghcr.io")),
            serde_json::json!({"identitytoken": "refresh-sentinel", "serveraddress": "ghcr.io"})
        );
        assert!(!format!("{token:?}").contains("sentinel"));
    }

    #[test]
    fn pinned_references_split_into_pull_and_tag() {
        assert_eq!(
            split_pinned("127.0.0.1:5000/app:stable@sha256:ab"),
            Some((
                "127.0.0.1:5000/app@sha256:ab".into(),
                Some("127.0.0.1:5000/app:stable".into())
            ))
        );
        assert_eq!(
            split_pinned("127.0.0.1:5000/app@sha256:ab"),
            Some(("127.0.0.1:5000/app@sha256:ab".into(), None))
        );
        assert_eq!(split_pinned("app:1"), None);
    }
}

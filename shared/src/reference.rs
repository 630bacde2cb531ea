//! Image references normalized exactly as Docker does: `nginx` is
//! `docker.io/library/nginx:latest`, a first component with a `.` or `:` (or `localhost`)
//! names a registry, and `@sha256:…` pins a digest.

use std::fmt;

/// Docker Hub's name in references.
pub const DOCKER_HUB: &str = "docker.io";
/// Docker Hub's registry API host.
pub const DOCKER_HUB_API: &str = "registry-1.docker.io";
/// Docker Hub's key in `config.json` and `X-Registry-Auth`.
pub const DOCKER_HUB_AUTH_KEY: &str = "https://index.docker.io/v1/";

/// A normalized image reference.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ImageRef {
    /// `docker.io`, `ghcr.io`, `127.0.0.1:5000`, ...
    pub registry: String,
    /// `library/nginx`, `org/app`, ...
    pub repository: String,
    /// The tag; `latest` when the reference names neither tag nor digest.
    pub tag: Option<String>,
    /// `sha256:…` when pinned.
    pub digest: Option<String>,
}

/// Why a reference was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid image reference {reference:?}: {reason}")]
pub struct InvalidReference {
    reference: String,
    reason: &'static str,
}

impl ImageRef {
    /// Parses and normalizes `reference`.
    pub fn parse(reference: &str) -> Result<Self, InvalidReference> {
        // The reference is echoed in reasons: bounded (one may be 4 KB).
        let refuse = |reason| InvalidReference {
            reference: crate::echo::text(reference),
            reason,
        };
        if reference.is_empty() || reference.len() > 4096 {
            return Err(refuse("empty or too long"));
        }
        let (named, digest) = match reference.split_once('@') {
            Some((named, digest)) => {
                let hex = digest
                    .strip_prefix("sha256:")
                    .ok_or_else(|| refuse("only sha256 digests are supported"))?;
                if hex.len() != 64 || !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
                    return Err(refuse("a sha256 digest has 64 lower-case hex digits"));
                }
                (named, Some(digest.to_owned()))
            }
            None => (reference, None),
        };
        let last_slash = named.rfind('/').map_or(0, |i| i + 1);
        let (path, tag) = match named[last_slash..].rfind(':') {
            Some(i) => (
                &named[..last_slash + i],
                Some(named[last_slash + i + 1..].to_owned()),
            ),
            None => (named, None),
        };
        if let Some(t) = &tag
            && !valid_tag(t)
        {
            return Err(refuse(
                "a tag is 1-128 of [A-Za-z0-9_.-], not starting with . or -",
            ));
        }
        let (registry, repository) = match path.split_once('/') {
            Some((first, rest))
                if first.contains('.') || first.contains(':') || first == "localhost" =>
            {
                (first.to_owned(), rest.to_owned())
            }
            _ => (DOCKER_HUB.to_owned(), path.to_owned()),
        };
        let registry = match registry.as_str() {
            "index.docker.io" | "registry-1.docker.io" => DOCKER_HUB.to_owned(),
            _ => registry,
        };
        if !valid_registry(&registry) {
            return Err(refuse(
                "the registry is not a host name with an optional :port",
            ));
        }
        let repository = if registry == DOCKER_HUB && !repository.contains('/') {
            format!("library/{repository}")
        } else {
            repository
        };
        if repository.is_empty() || !repository.split('/').all(valid_component) {
            return Err(refuse(
                "repository path components are lower-case letters and digits, separated by . _ __ or -",
            ));
        }
        let tag = match (tag, &digest) {
            (None, None) => Some("latest".to_owned()),
            (tag, _) => tag,
        };
        Ok(Self {
            registry,
            repository,
            tag,
            digest,
        })
    }

    /// Whether the reference pins a digest (such containers are never updated).
    pub fn is_pinned(&self) -> bool {
        self.digest.is_some()
    }

    /// The host to send registry API requests to.
    pub fn api_host(&self) -> &str {
        if self.registry == DOCKER_HUB {
            DOCKER_HUB_API
        } else {
            &self.registry
        }
    }

    /// The key credentials are stored under in a docker `config.json`.
    pub fn auth_key(&self) -> &str {
        if self.registry == DOCKER_HUB {
            DOCKER_HUB_AUTH_KEY
        } else {
            &self.registry
        }
    }

    /// `registry/repository`, as RepoDigests name it (`docker.io` images without it, and
    /// without `library/`).
    pub fn repo_digest_name(&self) -> String {
        if self.registry == DOCKER_HUB {
            self.repository
                .strip_prefix("library/")
                .unwrap_or(&self.repository)
                .to_owned()
        } else {
            format!("{}/{}", self.registry, self.repository)
        }
    }

    /// Whether an image's RepoDigests hold `digest` for this reference's repository. An image
    /// can hold several (its platform digest and its list digest, or an old and a new list
    /// digest when only another platform changed), so every one counts, not only the first.
    pub fn has_digest(&self, repo_digests: &[String], digest: &str) -> bool {
        let name = self.repo_digest_name();
        let full = format!("{}/{}", self.registry, self.repository);
        repo_digests.iter().any(|rd| {
            rd.split_once('@')
                .is_some_and(|(repo, d)| (repo == name || repo == full) && d == digest)
        })
    }

    /// The digest this reference's repository has in an image's RepoDigests, if any.
    pub fn digest_in<'a>(&self, repo_digests: &'a [String]) -> Option<&'a str> {
        let name = self.repo_digest_name();
        let full = format!("{}/{}", self.registry, self.repository);
        repo_digests.iter().find_map(|rd| {
            let (repo, digest) = rd.split_once('@')?;
            (repo == name || repo == full).then_some(digest)
        })
    }
}

impl fmt::Display for ImageRef {
    /// The fully qualified form, e.g. `docker.io/library/nginx:latest`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(digest) = &self.digest {
            write!(f, "@{digest}")?;
        }
        Ok(())
    }
}

/// `host[:port]`: dot-separated labels of letters, digits and inner `-`.
fn valid_registry(registry: &str) -> bool {
    let (host, port) = match registry.rsplit_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (registry, None),
    };
    let port_ok =
        port.is_none_or(|p| !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()));
    let host_ok = !host.is_empty()
        && host.split('.').all(|label| {
            !label.is_empty()
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
    port_ok && host_ok
}

fn valid_tag(tag: &str) -> bool {
    !tag.is_empty()
        && tag.len() <= 128
        && !tag.starts_with(['.', '-'])
        && tag
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// `[a-z0-9]+` runs joined by `.`, `_`, `__` or any number of `-`.
fn valid_component(component: &str) -> bool {
    let bytes = component.as_bytes();
    if bytes.is_empty()
        || !bytes[0].is_ascii_lowercase() && !bytes[0].is_ascii_digit()
        || !bytes[bytes.len() - 1].is_ascii_lowercase() && !bytes[bytes.len() - 1].is_ascii_digit()
    {
        return false;
    }
    let mut separator = String::new();
    for &b in bytes {
        if b.is_ascii_lowercase() || b.is_ascii_digit() {
            if !separator.is_empty()
                && !matches!(separator.as_str(), "." | "_" | "__")
                && !separator.bytes().all(|s| s == b'-')
            {
                return false;
            }
            separator.clear();
        } else if matches!(b, b'.' | b'_' | b'-') {
            separator.push(char::from(b));
        } else {
            return false;
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn p(s: &str) -> ImageRef {
        ImageRef::parse(s).unwrap()
    }

    #[test]
    fn docker_hub_names_get_library_and_latest() {
        assert_eq!(p("nginx").to_string(), "docker.io/library/nginx:latest");
        assert_eq!(p("nginx:1.27").to_string(), "docker.io/library/nginx:1.27");
        assert_eq!(p("org/app").to_string(), "docker.io/org/app:latest");
        assert_eq!(
            p("docker.io/nginx").to_string(),
            "docker.io/library/nginx:latest"
        );
        assert_eq!(p("index.docker.io/library/nginx").registry, "docker.io");
        assert_eq!(p("nginx").api_host(), "registry-1.docker.io");
        assert_eq!(p("nginx").auth_key(), "https://index.docker.io/v1/");
    }

    #[test]
    fn registries_with_ports_and_localhost() {
        let r = p("127.0.0.1:5000/team/app:2");
        assert_eq!(
            (r.registry.as_str(), r.repository.as_str(), r.tag.as_deref()),
            ("127.0.0.1:5000", "team/app", Some("2"))
        );
        assert_eq!(p("localhost/app").registry, "localhost");
        assert_eq!(p("ghcr.io/o/app").api_host(), "ghcr.io");
        // A port-less single component is a Hub user, not a registry.
        assert_eq!(p("myhost/app").registry, "docker.io");
    }

    #[test]
    fn digests_pin_and_keep_the_tag() {
        let r = p(&format!("nginx:1.27@{D}"));
        assert!(r.is_pinned());
        assert_eq!(r.tag.as_deref(), Some("1.27"));
        let r = p(&format!("nginx@{D}"));
        assert_eq!(r.tag, None, "no implied latest with a digest");
        assert_eq!(r.to_string(), format!("docker.io/library/nginx@{D}"));
    }

    #[test]
    fn repo_digests_are_matched_for_this_repository_only() {
        let digests = vec![
            format!("other/app@{D}"),
            "nginx@sha256:1111111111111111111111111111111111111111111111111111111111111111"
                .to_owned(),
            format!("127.0.0.1:5000/team/app@{D}"),
        ];
        assert_eq!(
            p("nginx:1").digest_in(&digests),
            Some("sha256:1111111111111111111111111111111111111111111111111111111111111111")
        );
        assert_eq!(p("127.0.0.1:5000/team/app:2").digest_in(&digests), Some(D));
        assert_eq!(p("missing").digest_in(&digests), None);
        // Every RepoDigest of the repository counts, not only the first.
        let two = vec![
            "nginx@sha256:1111111111111111111111111111111111111111111111111111111111111111"
                .to_owned(),
            "nginx@sha256:2222222222222222222222222222222222222222222222222222222222222222"
                .to_owned(),
        ];
        let second = "sha256:2222222222222222222222222222222222222222222222222222222222222222";
        assert!(p("nginx:1").has_digest(&two, second));
        assert!(p("docker.io/library/nginx").has_digest(&two, second));
        assert!(!p("other/nginx").has_digest(&two, second));
        assert!(!p("nginx").has_digest(&digests, second));
    }

    #[test]
    fn invalid_references_are_refused() {
        for bad in [
            "",
            "Nginx",
            "nginx:",
            "nginx:-x",
            "nginx@sha256:abc",
            "nginx@md5:0123",
            "a//b",
            "-a/b",
            "a..b/c",
            "app:tag with space",
            &format!("nginx:{}", "t".repeat(129)),
        ] {
            assert!(ImageRef::parse(bad).is_err(), "{bad:?} accepted");
        }
        for good in [
            "a.b/c",
            "a_b",
            "a__b",
            "a---b",
            "registry.example.com:443/x/y-z:v1.2_3",
        ] {
            assert!(ImageRef::parse(good).is_ok(), "{good:?} refused");
        }
    }

    #[test]
    fn a_refused_reference_is_echoed_bounded() {
        let long = format!("nginx:{}", "t".repeat(4000));
        let e = ImageRef::parse(&long).unwrap_err().to_string();
        assert!(e.len() < 400, "{e}");
        assert!(e.starts_with("invalid image reference \"nginx:ttt"), "{e}");
        assert!(e.ends_with("not starting with . or -"), "{e}");
    }
}

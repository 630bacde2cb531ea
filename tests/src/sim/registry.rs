//! The simulator's registry: a [`FakeHttp`] that answers manifest `HEAD`s for `T` tags whose
//! digests the simulator moves, with a configurable round trip, and counts what it served.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use crate::fake_http::{FakeHttp, Response};

/// `T` repositories `sim/t{n}`, each with the tag `stable`.
pub struct SimRegistry {
    http: FakeHttp,
    versions: Arc<Mutex<Vec<u64>>>,
    heads: Arc<AtomicU64>,
}

/// The tag every simulated repository has.
pub const TAG: &str = "stable";

impl SimRegistry {
    /// Starts on a free loopback port (plain HTTP, as the coordinator uses for loopback
    /// registries); every answer waits `rtt` first.
    pub fn start(tags: usize, rtt: Duration) -> anyhow::Result<Self> {
        let versions: Arc<Mutex<Vec<u64>>> = Arc::new(Mutex::new(vec![1; tags]));
        let heads = Arc::new(AtomicU64::new(0));
        let (v, h) = (versions.clone(), heads.clone());
        let http = FakeHttp::start(move |req| {
            let answer = |r: Response| if rtt.is_zero() { r } else { r.delay(rtt) };
            if req.path == "/v2/" {
                return answer(Response::new(200));
            }
            let tag = req
                .path
                .strip_prefix("/v2/sim/t")
                .and_then(|rest| rest.strip_suffix(&format!("/manifests/{TAG}")))
                .and_then(|n| n.parse::<usize>().ok());
            let version = tag.and_then(|t| {
                v.lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .get(t)
                    .copied()
            });
            match (tag, version) {
                (Some(tag), Some(version)) => {
                    if req.method == "HEAD" {
                        h.fetch_add(1, Ordering::Relaxed);
                    }
                    answer(
                        Response::new(200)
                            .header(
                                "Content-Type",
                                "application/vnd.docker.distribution.manifest.v2+json",
                            )
                            .header("Docker-Content-Digest", &digest(tag, version)),
                    )
                }
                _ => answer(Response::new(404)),
            }
        })?;
        // The fake server keeps every request for tests to read; the simulator counts instead.
        http.keep_requests(false);
        Ok(Self {
            http,
            versions,
            heads,
        })
    }

    /// `127.0.0.1:PORT`.
    pub fn host(&self) -> String {
        self.http.addr().to_string()
    }

    /// `127.0.0.1:PORT/sim/t{tag}`.
    pub fn repository(&self, tag: usize) -> String {
        format!("{}/sim/t{tag}", self.host())
    }

    /// The digest `tag` points at now.
    pub fn current(&self, tag: usize) -> String {
        let version = self
            .versions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(tag)
            .copied()
            .unwrap_or_default();
        digest(tag, version)
    }

    /// Moves each of `tags` to a new digest.
    pub fn bump(&self, tags: impl IntoIterator<Item = usize>) {
        let mut versions = self.versions.lock().unwrap_or_else(PoisonError::into_inner);
        for t in tags {
            if let Some(v) = versions.get_mut(t) {
                *v += 1;
            }
        }
    }

    /// Manifest `HEAD`s served since the last call.
    pub fn take_heads(&self) -> u64 {
        self.heads.swap(0, Ordering::Relaxed)
    }
}

/// A valid, distinct `sha256:` digest for each (tag, version).
pub fn digest(tag: usize, version: u64) -> String {
    format!(
        "sha256:{:032x}{:016x}{version:016x}",
        0x0f0f_u128, tag as u64
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn digests_are_distinct_and_well_formed() {
        let a = digest(1, 2);
        assert_eq!(a.len(), "sha256:".len() + 64);
        assert!(a["sha256:".len()..].chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(digest(1, 2), digest(2, 1));
        assert_ne!(digest(1, 2), digest(1, 3));
    }

    #[test]
    fn moved_tags_answer_their_new_digest_and_heads_are_counted() {
        let registry = SimRegistry::start(3, Duration::ZERO).unwrap();
        let head = |tag: usize| {
            crate::raw_http::http_request(
                &registry.host(),
                "HEAD",
                &format!("/v2/sim/t{tag}/manifests/{TAG}"),
                &[],
            )
            .unwrap()
        };
        assert_eq!(
            head(1).header("docker-content-digest"),
            Some(digest(1, 1).as_str())
        );
        registry.bump([1]);
        assert_eq!(
            head(1).header("docker-content-digest"),
            Some(digest(1, 2).as_str())
        );
        assert_eq!(registry.current(1), digest(1, 2));
        assert_eq!(head(9).status, 404);
        assert_eq!(registry.take_heads(), 2);
        assert_eq!(registry.take_heads(), 0);
    }
}

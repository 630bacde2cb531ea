//! Update detection for the whole fleet: which containers are selected, one registry probe per
//! unique (registry, repository, tag), and a decision per container from its image's local
//! RepoDigests. Nothing here changes a container.

pub mod credentials;
pub mod registry;
pub mod swarm;

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::Arc;

use futures_util::StreamExt;
use ouroboros_shared::inventory::ContainerInfo;
use ouroboros_shared::reference::ImageRef;

use crate::detect::registry::{Probe, ProbeError, RegistryClient};

/// Ouroboros' enable label (`true`/`false`).
pub const LABEL_ENABLE: &str = "com.ouroboros.enable";
/// Watchtower's enable label, read too.
pub const LABEL_ENABLE_WATCHTOWER: &str = "com.centurylinklabs.watchtower.enable";
/// Label the coordinator and agents carry on their own containers.
pub const LABEL_SELF: &str = "com.ouroboros.self";
/// What an old container's name gets while an update sets it aside (`NAME-ouroboros-old-OP`).
pub const ASIDE_MARK: &str = "-ouroboros-old-";

/// Which containers are watched (Ouroboros' MONITOR, IGNORE, LABEL_ENABLE, LABELS_ONLY,
/// SELF_UPDATE).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selection {
    /// Only these (container names, or `host/name` for one host); all when empty.
    pub monitor: Vec<String>,
    /// Never these (same forms).
    pub ignore: Vec<String>,
    /// Only containers labelled `com.ouroboros.enable=true` (or Watchtower's).
    pub label_enable: bool,
    /// Only labelled containers, and no name lists.
    pub labels_only: bool,
    /// Ouroboros' own containers too.
    pub self_update: bool,
    /// Follow each repository's `latest` rather than the container's own tag (LATEST_ONLY).
    pub latest_only: bool,
    /// Swarm services too (SWARM); without it they are reported and left alone.
    pub swarm: bool,
}

fn matches(list: &[String], host: &str, name: &str) -> bool {
    list.iter().any(|entry| match entry.split_once('/') {
        Some((h, n)) => h == host && n == name,
        None => entry == name,
    })
}

fn enable_label(c: &ContainerInfo) -> Option<bool> {
    [LABEL_ENABLE, LABEL_ENABLE_WATCHTOWER]
        .iter()
        .find_map(|k| c.labels.get(*k))
        .map(|v| v.trim().eq_ignore_ascii_case("true"))
}

impl Selection {
    /// `Ok` when `container` on `host` is watched, else why not.
    pub fn check(&self, host: &str, c: &ContainerInfo) -> Result<(), String> {
        swarm::check(c, self.swarm)?;
        // A service left alone this cycle (a job, an update under way or paused) says why.
        if swarm::is_service(&c.name) && !c.set_aside.is_empty() {
            return Err(c.set_aside.clone());
        }
        // An update's set-aside container (the old one, or a replacement not yet confirmed)
        // is never an update of its own; agents say so, and the name tells for older ones.
        if !c.set_aside.is_empty() {
            return Err(format!(
                "set aside: {}",
                ouroboros_shared::echo::text(&c.set_aside)
            ));
        }
        if c.name.contains(ASIDE_MARK) {
            return Err("set aside: old container of an update".into());
        }
        // A service is named by its service name in MONITOR and IGNORE.
        let name = c.name.strip_prefix(swarm::SERVICE_MARK).unwrap_or(&c.name);
        let label = enable_label(c);
        if label == Some(false) {
            return Err("labelled enable=false".into());
        }
        if c.labels.contains_key(LABEL_SELF) && !self.self_update {
            return Err("Ouroboros' own container (SELF_UPDATE is off)".into());
        }
        if (self.label_enable || self.labels_only) && label != Some(true) {
            return Err("not labelled enable=true (LABEL_ENABLE)".into());
        }
        if !self.labels_only {
            // A service by its name or its unit name (`service:NAME`).
            let listed = |list: &[String]| {
                matches(list, host, name) || (name != c.name && matches(list, host, &c.name))
            };
            if listed(&self.ignore) {
                return Err("in IGNORE".into());
            }
            if !self.monitor.is_empty() && !listed(&self.monitor) {
                return Err("not in MONITOR".into());
            }
        }
        Ok(())
    }
}

/// What to do with one container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Runs the tag's current image.
    Current,
    /// The tag points at another image: recreate from `target` (`repo:tag@digest`).
    Update { target: String, digest: String },
    /// Not checked, with the reason.
    Skip { reason: String },
}

/// One container's detection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Detection {
    pub host: String,
    pub container: String,
    pub image: String,
    pub decision: Decision,
}

/// Where digests come from: the registry client, or a fake in tests.
pub trait DigestSource: Send + Sync {
    fn digest(&self, image: &ImageRef) -> impl Future<Output = Result<Probe, ProbeError>> + Send;
}

impl DigestSource for RegistryClient {
    async fn digest(&self, image: &ImageRef) -> Result<Probe, ProbeError> {
        RegistryClient::digest(self, image).await
    }
}

/// The tag a container follows (its own, or `latest` with `latest_only`), or why it has none.
fn followed(c: &ContainerInfo, latest_only: bool) -> Result<ImageRef, String> {
    let mut image = ImageRef::parse(&c.image).map_err(|e| e.to_string())?;
    if image.is_pinned() {
        return Err("pinned to a digest".into());
    }
    if c.name.starts_with(swarm::SERVICE_MARK) && c.repo_digests.is_empty() {
        return Err(
            "its spec names no digest (the engine did not resolve the tag when it was deployed); it is updated once deployed with `docker service update --image` resolving it"
                .into(),
        );
    }
    if latest_only {
        image.tag = Some("latest".into());
    }
    if c.repo_digests.is_empty() {
        return Err("its image has no RepoDigests (built or loaded locally)".into());
    }
    if image.digest_in(&c.repo_digests).is_none() {
        return Err(format!(
            "its image has no RepoDigest for {}",
            image.repo_digest_name()
        ));
    }
    Ok(image)
}

/// The reference with its tag written out in the user's spelling (`nginx` → `nginx:latest`;
/// `app:1` → `app:latest` with `latest_only`), so that a pinned pull leaves the container
/// following that tag.
fn with_tag(image: &str, latest_only: bool) -> String {
    let start = image.rfind('/').map_or(0, |i| i + 1);
    match image[start..].rfind(':') {
        Some(i) if latest_only => format!("{}:latest", &image[..start + i]),
        Some(_) => image.to_owned(),
        None => format!("{image}:latest"),
    }
}

/// Decides for every container: selection first, then one probe per unique tag (at most
/// `concurrency` at once), then a comparison with the container's own RepoDigest.
pub async fn detect<S: DigestSource>(
    source: Arc<S>,
    containers: &[(&str, &ContainerInfo)],
    selection: &Selection,
    concurrency: usize,
) -> Vec<Detection> {
    let mut wanted: Vec<Result<ImageRef, String>> = Vec::with_capacity(containers.len());
    let mut tags: BTreeSet<ImageRef> = BTreeSet::new();
    for &(host, c) in containers {
        let target = selection
            .check(host, c)
            .and_then(|()| followed(c, selection.latest_only));
        if let Ok(image) = &target
            && !tags.contains(image)
        {
            tags.insert(image.clone());
        }
        wanted.push(target);
    }
    let probes: BTreeMap<ImageRef, Result<Probe, ProbeError>> = futures_util::stream::iter(tags)
        .map(|image| {
            let source = source.clone();
            async move {
                let result = source.digest(&image).await;
                (image, result)
            }
        })
        .buffer_unordered(concurrency.max(1))
        .collect()
        .await;
    containers
        .iter()
        .zip(&wanted)
        .map(|(&(host, c), wanted)| {
            let decision = match wanted {
                Err(reason) => Decision::Skip {
                    reason: reason.clone(),
                },
                Ok(image) => match &probes[image] {
                    Err(e) => Decision::Skip {
                        reason: format!("registry: {e}"),
                    },
                    Ok(probe) if image.has_digest(&c.repo_digests, &probe.digest) => {
                        Decision::Current
                    }
                    Ok(probe) => Decision::Update {
                        target: format!(
                            "{}@{}",
                            with_tag(&c.image, selection.latest_only),
                            probe.digest
                        ),
                        digest: probe.digest.clone(),
                    },
                },
            };
            Detection {
                host: host.to_owned(),
                container: c.name.clone(),
                image: c.image.clone(),
                decision,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use ouroboros_shared::inventory::{ContainerState, Health};
    use std::sync::Mutex;

    const OLD: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
    const NEW: &str = "sha256:2222222222222222222222222222222222222222222222222222222222222222";

    fn container(
        name: &str,
        image: &str,
        digests: &[&str],
        labels: &[(&str, &str)],
    ) -> ContainerInfo {
        ContainerInfo {
            id: format!("id-{name}"),
            name: name.into(),
            image: image.into(),
            image_id: "sha256:img".into(),
            repo_digests: digests.iter().map(|d| (*d).to_owned()).collect(),
            labels: labels
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            state: ContainerState::Running,
            health: Health::None,
            restart_count: 0,
            created_unix: 0,
            network_mode: String::new(),
            links: Vec::new(),
            pid_mode: String::new(),
            ipc_mode: String::new(),
            set_aside: String::new(),
        }
    }

    /// Answers from a table and counts probes per tag.
    #[derive(Default)]
    struct Fake {
        digests: BTreeMap<String, Result<String, ProbeError>>,
        asked: Mutex<Vec<String>>,
    }

    impl DigestSource for Fake {
        async fn digest(&self, image: &ImageRef) -> Result<Probe, ProbeError> {
            let key = image.to_string();
            self.asked.lock().unwrap().push(key.clone());
            match self.digests.get(&key) {
                Some(Ok(d)) => Ok(Probe {
                    digest: d.clone(),
                    ratelimit_remaining: None,
                }),
                Some(Err(e)) => Err(e.clone()),
                None => Err(ProbeError::NotFound { image: key }),
            }
        }
    }

    fn borrowed(fleet: &[(String, ContainerInfo)]) -> Vec<(&str, &ContainerInfo)> {
        fleet.iter().map(|(h, c)| (h.as_str(), c)).collect()
    }

    #[tokio::test]
    async fn one_probe_per_unique_tag_and_a_decision_per_container() {
        let mut fake = Fake::default();
        fake.digests
            .insert("registry.lan:5000/app:1".into(), Ok(NEW.into()));
        fake.digests
            .insert("docker.io/library/nginx:1.27".into(), Ok(OLD.into()));
        fake.digests
            .insert("docker.io/library/redis:latest".into(), Ok(NEW.into()));
        let app_old = format!("registry.lan:5000/app@{OLD}");
        let nginx_old = format!("nginx@{OLD}");
        let fleet = vec![
            (
                "h1".to_owned(),
                container("a", "registry.lan:5000/app:1", &[&app_old], &[]),
            ),
            (
                "h2".to_owned(),
                container("a", "registry.lan:5000/app:1", &[&app_old], &[]),
            ),
            (
                "h1".to_owned(),
                container("web", "nginx:1.27", &[&nginx_old], &[]),
            ),
            (
                "h2".to_owned(),
                container("web2", "docker.io/library/nginx:1.27", &[&nginx_old], &[]),
            ),
            ("h1".to_owned(), container("local", "mybuild:dev", &[], &[])),
            (
                "h1".to_owned(),
                container("pinned", &format!("nginx@{OLD}"), &[&nginx_old], &[]),
            ),
            (
                "h1".to_owned(),
                container("tagless", "redis", &[&format!("redis@{OLD}")], &[]),
            ),
        ];
        let fake = Arc::new(fake);
        let out = detect(fake.clone(), &borrowed(&fleet), &Selection::default(), 4).await;
        let asked = fake.asked.lock().unwrap().clone();
        assert_eq!(asked.len(), 3, "one probe per unique tag: {asked:?}");
        let d: Vec<&Decision> = out.iter().map(|d| &d.decision).collect();
        assert_eq!(
            d[0],
            &Decision::Update {
                target: format!("registry.lan:5000/app:1@{NEW}"),
                digest: NEW.into()
            }
        );
        assert_eq!(d[1], d[0], "both hosts' containers of the tag are updated");
        assert_eq!(d[2], &Decision::Current);
        assert_eq!(d[3], &Decision::Current, "same tag written two ways");
        assert!(matches!(d[4], Decision::Skip { reason } if reason.contains("RepoDigests")));
        assert!(matches!(d[5], Decision::Skip { reason } if reason.contains("pinned")));
        assert_eq!(
            d[6],
            &Decision::Update {
                target: format!("redis:latest@{NEW}"),
                digest: NEW.into()
            },
            "a tagless reference must keep following latest"
        );
    }

    #[tokio::test]
    async fn a_registry_failure_skips_with_its_reason_and_changes_nothing() {
        let mut fake = Fake::default();
        fake.digests.insert(
            "registry.lan:5000/app:1".into(),
            Err(ProbeError::Server {
                image: "registry.lan:5000/app:1".into(),
                status: 503,
            }),
        );
        let digest = format!("registry.lan:5000/app@{OLD}");
        let fleet = vec![(
            "h1".to_owned(),
            container("a", "registry.lan:5000/app:1", &[&digest], &[]),
        )];
        let out = detect(Arc::new(fake), &borrowed(&fleet), &Selection::default(), 1).await;
        assert!(
            matches!(&out[0].decision, Decision::Skip { reason } if reason.contains("503")),
            "{out:?}"
        );
    }

    #[tokio::test]
    async fn latest_only_probes_latest_and_targets_it() {
        let mut fake = Fake::default();
        fake.digests
            .insert("registry.lan:5000/app:latest".into(), Ok(NEW.into()));
        let on_old = format!("registry.lan:5000/app@{OLD}");
        let on_new = format!("registry.lan:5000/app@{NEW}");
        let fleet = vec![
            (
                "h1".to_owned(),
                container("old", "registry.lan:5000/app:1.2", &[&on_old], &[]),
            ),
            (
                "h1".to_owned(),
                container("new", "registry.lan:5000/app:1.3", &[&on_new], &[]),
            ),
            (
                "h1".to_owned(),
                container(
                    "pinned",
                    &format!("registry.lan:5000/app@{OLD}"),
                    &[&on_old],
                    &[],
                ),
            ),
        ];
        let selection = Selection {
            latest_only: true,
            ..Selection::default()
        };
        let fake = Arc::new(fake);
        let out = detect(fake.clone(), &borrowed(&fleet), &selection, 4).await;
        assert_eq!(
            out[0].decision,
            Decision::Update {
                target: format!("registry.lan:5000/app:latest@{NEW}"),
                digest: NEW.into()
            }
        );
        assert_eq!(out[1].decision, Decision::Current, "1.3 is what latest is");
        assert!(matches!(&out[2].decision, Decision::Skip { reason } if reason.contains("pinned")));
        assert_eq!(
            *fake.asked.lock().unwrap(),
            vec!["registry.lan:5000/app:latest".to_owned()],
            "one probe of latest, none of the containers' own tags"
        );
        assert_eq!(
            with_tag("localhost:5000/app", true),
            "localhost:5000/app:latest"
        );
        assert_eq!(
            with_tag("localhost:5000/app:7", true),
            "localhost:5000/app:latest"
        );
        assert_eq!(
            with_tag("localhost:5000/app:7", false),
            "localhost:5000/app:7"
        );
        assert_eq!(with_tag("nginx", false), "nginx:latest");
    }

    #[test]
    fn selection_matrix() {
        let plain = container("web", "nginx", &[], &[]);
        let on = container("web", "nginx", &[], &[(LABEL_ENABLE, "true")]);
        let off = container("web", "nginx", &[], &[(LABEL_ENABLE, "false")]);
        let wt_on = container("web", "nginx", &[], &[(LABEL_ENABLE_WATCHTOWER, "true")]);
        let own = container("ouroboros", "ouroboros", &[], &[(LABEL_SELF, "agent")]);
        let all = Selection::default();
        assert!(all.check("h", &plain).is_ok());
        assert!(all.check("h", &off).is_err(), "enable=false always wins");
        assert!(
            all.check("h", &own).is_err(),
            "own containers need SELF_UPDATE"
        );
        let with_self = Selection {
            self_update: true,
            ..all.clone()
        };
        assert!(with_self.check("h", &own).is_ok());
        // The images (Dockerfile.agent, Dockerfile.coordinator) label their containers so.
        let from_image = container("agent", "ouroboros-agent:dev", &[], &[(LABEL_SELF, "true")]);
        assert_eq!(
            all.check("h", &from_image),
            Err("Ouroboros' own container (SELF_UPDATE is off)".into())
        );
        assert!(with_self.check("h", &from_image).is_ok());
        // Set-aside containers are never selected, whatever the lists and labels say.
        let mut aside = container("web", "nginx", &[], &[(LABEL_ENABLE, "true")]);
        aside.set_aside = "old container set aside by an update".into();
        let named_aside = container("web-ouroboros-old-op-7", "nginx", &[], &[]);
        let monitor_them = Selection {
            monitor: vec!["web".into(), "web-ouroboros-old-op-7".into()],
            label_enable: true,
            ..all.clone()
        };
        for c in [&aside, &named_aside] {
            for selection in [&all, &monitor_them] {
                let why = selection.check("h", c).unwrap_err();
                assert!(why.starts_with("set aside"), "{why}");
            }
        }

        // The agent's reason is echoed bounded.
        aside.set_aside = "x".repeat(10_000);
        let why = all.check("h", &aside).unwrap_err();
        assert!(why.len() < 300, "{why}");

        let label_enable = Selection {
            label_enable: true,
            ..all.clone()
        };
        assert!(label_enable.check("h", &plain).is_err());
        assert!(label_enable.check("h", &on).is_ok());
        assert!(
            label_enable.check("h", &wt_on).is_ok(),
            "Watchtower's label is read"
        );

        let monitor = Selection {
            monitor: vec!["web".into()],
            ..all.clone()
        };
        assert!(monitor.check("h", &plain).is_ok());
        assert!(monitor.check("h", &container("db", "x", &[], &[])).is_err());
        let monitor_host = Selection {
            monitor: vec!["h2/web".into()],
            ..all.clone()
        };
        assert!(monitor_host.check("h1", &plain).is_err());
        assert!(monitor_host.check("h2", &plain).is_ok());

        let ignore = Selection {
            ignore: vec!["web".into()],
            ..all.clone()
        };
        assert!(ignore.check("h", &plain).is_err());
        let labels_only = Selection {
            labels_only: true,
            ignore: vec!["web".into()],
            ..all.clone()
        };
        assert!(
            labels_only.check("h", &on).is_ok(),
            "LABELS_ONLY ignores the name lists"
        );
        assert!(labels_only.check("h", &plain).is_err());
        let label_and_ignore = Selection {
            label_enable: true,
            ignore: vec!["web".into()],
            ..all
        };
        assert!(label_and_ignore.check("h", &on).is_err());
    }
}

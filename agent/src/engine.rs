//! The host's Docker engine: connection (unix socket, or TCP with TLS), API version
//! negotiation, and what the agent reports about it.

use std::collections::HashMap;
use std::path::PathBuf;

use bollard::Docker;
use bollard::models::EventMessage;
use bollard::query_parameters::{EventsOptionsBuilder, ListContainersOptionsBuilder};
use futures_util::{Stream, StreamExt};
use ouroboros_shared::inventory::{
    ContainerInfo, ContainerState, EngineInfo, Health, HostMode, Inventory,
};
use ouroboros_shared::time_fmt::now_unix_ms;

/// Seconds a single Docker API call may take.
const API_TIMEOUT_SECS: u64 = 120;
/// Containers inspected at once while taking an inventory.
const INSPECT_CONCURRENCY: usize = 8;
/// The label of a Swarm task's container (its task id).
const SWARM_TASK_LABEL: &str = "com.docker.swarm.task.id";

/// How to reach the engine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DockerEndpoint {
    /// `unix:///path`, `tcp://host:port`, `http://…` or `https://…`.
    pub host: String,
    /// Client certificate directory (`ca.pem`, `cert.pem`, `key.pem`) for TLS.
    pub tls: Option<PathBuf>,
}

impl DockerEndpoint {
    /// Validates the address and TLS settings the way the Docker CLI reads them.
    pub fn new(host: &str, tls: bool, cert_path: Option<PathBuf>) -> Result<Self, String> {
        let host = host.trim();
        let scheme_ok = ["unix://", "tcp://", "http://", "https://"]
            .iter()
            .any(|s| host.starts_with(s) && host.len() > s.len());
        if !scheme_ok {
            return Err(format!(
                "{host:?} is not unix:///PATH, tcp://HOST:PORT or https://HOST:PORT"
            ));
        }
        let tls = tls || host.starts_with("https://");
        if host.starts_with("unix://") {
            return Ok(Self {
                host: host.to_owned(),
                tls: None,
            });
        }
        if !tls {
            return Ok(Self {
                host: host.to_owned(),
                tls: None,
            });
        }
        let dir = cert_path
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".docker")))
            .ok_or("TLS needs DOCKER_CERT_PATH (a directory with ca.pem, cert.pem, key.pem)")?;
        for file in ["ca.pem", "cert.pem", "key.pem"] {
            if !dir.join(file).is_file() {
                return Err(format!(
                    "TLS needs {} (DOCKER_CERT_PATH={})",
                    dir.join(file).display(),
                    dir.display()
                ));
            }
        }
        Ok(Self {
            host: host.to_owned(),
            tls: Some(dir),
        })
    }
}

/// A Docker API version, e.g. 1.41.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ApiVersion {
    pub major: u32,
    pub minor: u32,
}

impl ApiVersion {
    pub const fn new(major: u32, minor: u32) -> Self {
        Self { major, minor }
    }
}

/// Why a listed container is set aside by an operation, if it is (the recreate's journal
/// knows; the inventory only marks it).
pub trait SetAsideReasons {
    fn reason(
        &self,
        id: &str,
        name: &str,
        labels: &std::collections::HashMap<String, String>,
    ) -> Option<String>;
}

/// Errors talking to the engine, each naming what was being done.
#[derive(Debug, thiserror::Error)]
#[error("Docker engine {endpoint}: cannot {op}: {source}")]
pub struct EngineError {
    endpoint: String,
    op: &'static str,
    #[source]
    source: bollard::errors::Error,
}

/// A connected engine, at the API version both sides speak.
#[derive(Clone)]
pub struct Engine {
    docker: Docker,
    endpoint: String,
}

impl Engine {
    /// Connects and negotiates the API version (engine 20.10 speaks 1.41; newer ones more).
    pub async fn connect(endpoint: &DockerEndpoint) -> Result<Self, EngineError> {
        let err = |op| {
            let endpoint = endpoint.host.clone();
            move |source| EngineError {
                endpoint,
                op,
                source,
            }
        };
        let version = bollard::API_DEFAULT_VERSION;
        let docker = match (&endpoint.tls, endpoint.host.starts_with("unix://")) {
            (_, true) => Docker::connect_with_unix(&endpoint.host, API_TIMEOUT_SECS, version),
            (Some(dir), false) => Docker::connect_with_ssl(
                &endpoint.host,
                &dir.join("key.pem"),
                &dir.join("cert.pem"),
                &dir.join("ca.pem"),
                API_TIMEOUT_SECS,
                version,
            ),
            (None, false) => Docker::connect_with_http(&endpoint.host, API_TIMEOUT_SECS, version),
        }
        .map_err(err("connect"))?;
        let docker = docker
            .negotiate_version()
            .await
            .map_err(err("negotiate the API version"))?;
        Ok(Self {
            docker,
            endpoint: endpoint.host.clone(),
        })
    }

    fn err(&self, op: &'static str) -> impl FnOnce(bollard::errors::Error) -> EngineError + '_ {
        move |source| EngineError {
            endpoint: self.endpoint.clone(),
            op,
            source,
        }
    }

    /// The Docker client, at the negotiated API version.
    pub fn docker(&self) -> &Docker {
        &self.docker
    }

    /// The negotiated API version as numbers.
    pub fn api(&self) -> ApiVersion {
        let v = self.docker.client_version();
        ApiVersion::new(
            u32::try_from(v.major_version).unwrap_or(1),
            u32::try_from(v.minor_version).unwrap_or(0),
        )
    }

    /// The negotiated API version, e.g. "1.41".
    pub fn api_version(&self) -> String {
        let v = self.docker.client_version();
        format!("{}.{}", v.major_version, v.minor_version)
    }

    /// Whether the engine answers (`GET /_ping`).
    pub async fn ping(&self) -> Result<(), EngineError> {
        self.docker.ping().await.map_err(self.err("ping"))?;
        Ok(())
    }

    /// Engine version and whether it is a Swarm manager, worker or standalone.
    pub async fn describe(&self) -> Result<(EngineInfo, HostMode), EngineError> {
        let version = self
            .docker
            .version()
            .await
            .map_err(self.err("read its version"))?;
        let (mode, _) = self.role().await?;
        let engine = EngineInfo {
            version: version.version.unwrap_or_default(),
            api_version: self.api_version(),
            os: version.os.unwrap_or_default(),
            arch: version.arch.unwrap_or_default(),
        };
        Ok((engine, mode))
    }

    /// Whether the engine is a Swarm manager, worker or standalone, and on a manager the
    /// swarm's id (`Swarm.Cluster.ID`), from one `docker info`.
    async fn role(&self) -> Result<(HostMode, String), EngineError> {
        let info = self
            .docker
            .info()
            .await
            .map_err(self.err("read its info"))?;
        Ok(match info.swarm {
            Some(swarm)
                if swarm.local_node_state == Some(bollard::models::LocalNodeState::ACTIVE) =>
            {
                if swarm.control_available == Some(true) {
                    let cluster = swarm.cluster.and_then(|c| c.id).unwrap_or_default();
                    (HostMode::SwarmManager, cluster)
                } else {
                    (HostMode::SwarmWorker, String::new())
                }
            }
            _ => (HostMode::Standalone, String::new()),
        })
    }

    /// Every container on the host, running or not; those set aside (as `set_aside` tells,
    /// asked after the list so that no container listed is newer than its answer) are marked.
    /// On a Swarm manager also the swarm's id and its services.
    pub async fn inventory<S: SetAsideReasons>(
        &self,
        set_aside: impl Fn() -> S,
    ) -> Result<Inventory, EngineError> {
        let observed_at_unix_ms = now_unix_ms();
        let (mode, mut cluster_id) = self.role().await?;
        let services = if mode == HostMode::SwarmManager {
            match crate::services::list(&self.docker).await {
                Ok(services) => services,
                Err(error) => {
                    // A manager without quorum cannot list services: its containers are still
                    // reported, and no cluster id, so that its empty list never stands for
                    // the swarm's services.
                    tracing::warn!(%error, "Cannot list the swarm's services; reporting the containers only.");
                    cluster_id.clear();
                    Vec::new()
                }
            }
        } else {
            Vec::new()
        };
        let summaries = self
            .docker
            .list_containers(Some(ListContainersOptionsBuilder::new().all(true).build()))
            .await
            .map_err(self.err("list containers"))?;
        let set_aside = &set_aside();
        // A Swarm task's container is its service's to replace (a manager reports the
        // service): not reported, so never selected on its own.
        let summaries = summaries.into_iter().filter(|s| {
            !s.labels
                .as_ref()
                .is_some_and(|l| l.contains_key(SWARM_TASK_LABEL))
        });
        let inspected: Vec<Result<Option<ContainerInfo>, EngineError>> =
            futures_util::stream::iter(summaries)
                .map(|summary| self.container(summary, set_aside))
                .buffered(INSPECT_CONCURRENCY)
                .collect()
                .await;
        let mut containers = Vec::new();
        for c in inspected {
            if let Some(c) = c? {
                containers.push(c);
            }
        }
        // One image inspect per distinct image, not per container.
        let mut digests: HashMap<String, Vec<String>> = HashMap::new();
        for c in &mut containers {
            if c.image_id.is_empty() {
                continue;
            }
            if !digests.contains_key(&c.image_id) {
                let found = match self.docker.inspect_image(&c.image_id).await {
                    Ok(image) => image.repo_digests.unwrap_or_default(),
                    Err(e) if is_not_found(&e) => Vec::new(),
                    Err(e) => return Err(self.err("inspect an image")(e)),
                };
                digests.insert(c.image_id.clone(), found);
            }
            c.repo_digests = digests.get(&c.image_id).cloned().unwrap_or_default();
        }
        containers.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(Inventory {
            containers,
            mode,
            observed_at_unix_ms,
            cluster_id,
            services,
        })
    }

    /// Inspects one listed container; `None` if it vanished meanwhile.
    async fn container(
        &self,
        summary: bollard::models::ContainerSummary,
        set_aside: &impl SetAsideReasons,
    ) -> Result<Option<ContainerInfo>, EngineError> {
        let Some(id) = summary.id else {
            return Ok(None);
        };
        let inspect = match self.docker.inspect_container(&id, None).await {
            Ok(i) => i,
            Err(e) if is_not_found(&e) => return Ok(None),
            Err(e) => return Err(self.err("inspect a container")(e)),
        };
        let config = inspect.config.unwrap_or_default();
        let host_config = inspect.host_config.unwrap_or_default();
        let state = inspect.state.unwrap_or_default();
        let name = inspect
            .name
            .unwrap_or_default()
            .trim_start_matches('/')
            .to_owned();
        let labels = config.labels.unwrap_or_default();
        let set_aside = set_aside.reason(&id, &name, &labels).unwrap_or_default();
        Ok(Some(ContainerInfo {
            id,
            name,
            image: config.image.unwrap_or_default(),
            image_id: inspect.image.unwrap_or_default(),
            repo_digests: Vec::new(),
            labels: labels.into_iter().collect(),
            state: state.status.map_or(ContainerState::Unknown, |s| {
                ContainerState::from_docker(s.as_ref())
            }),
            health: Health::from_docker(
                state
                    .health
                    .and_then(|h| h.status)
                    .map(|s| s.to_string())
                    .as_deref(),
            ),
            restart_count: inspect
                .restart_count
                .and_then(|n| u32::try_from(n).ok())
                .unwrap_or(0),
            created_unix: summary.created.unwrap_or(0),
            network_mode: host_config.network_mode.unwrap_or_default(),
            pid_mode: host_config.pid_mode.unwrap_or_default(),
            ipc_mode: host_config.ipc_mode.unwrap_or_default(),
            set_aside,
            links: host_config
                .links
                .unwrap_or_default()
                .iter()
                .filter_map(|l| link_target(l))
                .collect(),
        }))
    }

    /// Container, image, daemon and Swarm node events since `since_unix` (seconds). The
    /// engine replays events from that time, so none falls into the gap between taking an
    /// inventory and the first poll of this stream.
    pub fn events(
        &self,
        since_unix: i64,
    ) -> impl Stream<Item = Result<EventMessage, EngineError>> + '_ {
        // `service`: a manager reports the swarm's services (their image, update status).
        let filters = HashMap::from([(
            "type",
            vec!["container", "image", "daemon", "node", "service"],
        )]);
        let options = EventsOptionsBuilder::new()
            .since(&since_unix.to_string())
            .filters(&filters)
            .build();
        self.docker
            .events(Some(options))
            .map(|r| r.map_err(self.err("follow events")))
    }
}

/// The container a legacy link (`/db:/app/db`, or `db:alias`) points at.
fn link_target(link: &str) -> Option<String> {
    let target = link.split(':').next()?.trim_start_matches('/');
    (!target.is_empty()).then(|| target.to_owned())
}

pub(crate) fn is_not_found(e: &bollard::errors::Error) -> bool {
    matches!(
        e,
        bollard::errors::Error::DockerResponseServerError {
            status_code: 404,
            ..
        }
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_validation() {
        assert_eq!(
            DockerEndpoint::new("unix:///var/run/docker.sock", false, None),
            Ok(DockerEndpoint {
                host: "unix:///var/run/docker.sock".into(),
                tls: None
            })
        );
        assert!(DockerEndpoint::new("tcp://10.0.0.1:2375", false, None).is_ok());
        assert!(DockerEndpoint::new("/var/run/docker.sock", false, None).is_err());
        assert!(DockerEndpoint::new("unix://", false, None).is_err());
        let missing = DockerEndpoint::new(
            "tcp://10.0.0.1:2376",
            true,
            Some(PathBuf::from("/nonexistent-ouroboros")),
        );
        assert!(missing.unwrap_err().contains("ca.pem"));
    }
}

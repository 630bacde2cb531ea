//! What runs on a host, as domain types, and the one place where they cross to and from the
//! wire (`ouroboros.v1`). Conversions from the wire reject missing or invalid fields.

use std::collections::BTreeMap;

use ouroboros_proto::v1 as pb;
use serde::{Deserialize, Serialize};

/// A message from the wire that cannot become a domain value.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid {message}: {reason}")]
pub struct InvalidMessage {
    message: &'static str,
    reason: String,
}

impl InvalidMessage {
    fn new(message: &'static str, reason: impl Into<String>) -> Self {
        Self {
            message,
            reason: reason.into(),
        }
    }
}

/// Lifecycle state of a container, as the engine reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ContainerState {
    Created,
    Running,
    Paused,
    Restarting,
    Removing,
    Exited,
    Dead,
    Unknown,
}

impl ContainerState {
    /// Parses the engine's `State.Status` / list `State` string.
    pub fn from_docker(status: &str) -> Self {
        match status {
            "created" => Self::Created,
            "running" => Self::Running,
            "paused" => Self::Paused,
            "restarting" => Self::Restarting,
            "removing" => Self::Removing,
            "exited" => Self::Exited,
            "dead" => Self::Dead,
            _ => Self::Unknown,
        }
    }

    /// Lower-case name, as Docker prints it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Created => "created",
            Self::Running => "running",
            Self::Paused => "paused",
            Self::Restarting => "restarting",
            Self::Removing => "removing",
            Self::Exited => "exited",
            Self::Dead => "dead",
            Self::Unknown => "unknown",
        }
    }
}

/// Result of the container's Docker healthcheck.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    /// The container has no healthcheck.
    None,
    Starting,
    Healthy,
    Unhealthy,
}

impl Health {
    /// Parses the engine's `State.Health.Status` (absent means no healthcheck).
    pub fn from_docker(status: Option<&str>) -> Self {
        match status {
            Some("starting") => Self::Starting,
            Some("healthy") => Self::Healthy,
            Some("unhealthy") => Self::Unhealthy,
            _ => Self::None,
        }
    }

    /// Lower-case name; `-` for none.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "-",
            Self::Starting => "starting",
            Self::Healthy => "healthy",
            Self::Unhealthy => "unhealthy",
        }
    }
}

/// What role the host's engine plays.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum HostMode {
    Standalone,
    SwarmManager,
    SwarmWorker,
    Unknown,
}

impl HostMode {
    /// Name as printed by the CLI.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Standalone => "standalone",
            Self::SwarmManager => "swarm-manager",
            Self::SwarmWorker => "swarm-worker",
            Self::Unknown => "unknown",
        }
    }
}

/// The Docker engine of a host.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EngineInfo {
    pub version: String,
    pub api_version: String,
    pub os: String,
    pub arch: String,
}

/// One container as reported by its host's agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerInfo {
    pub id: String,
    /// Without the leading slash.
    pub name: String,
    /// Image reference as configured (`Config.Image`).
    pub image: String,
    pub image_id: String,
    pub repo_digests: Vec<String>,
    pub labels: BTreeMap<String, String>,
    pub state: ContainerState,
    pub health: Health,
    pub restart_count: u32,
    pub created_unix: i64,
    /// `HostConfig.NetworkMode` (`bridge`, `host`, `container:<id>`, a network name).
    #[serde(default)]
    pub network_mode: String,
    /// Legacy links' target container names.
    #[serde(default)]
    pub links: Vec<String>,
    /// `HostConfig.PidMode` and `HostConfig.IpcMode` (`container:<id>` shares a namespace).
    #[serde(default)]
    pub pid_mode: String,
    #[serde(default)]
    pub ipc_mode: String,
    /// Why the container is set aside by an update (empty: it is not). A set-aside container
    /// is never selected for an update and not counted as monitored.
    #[serde(default)]
    pub set_aside: String,
}

/// The first message of an agent stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    pub host: String,
    pub agent_version: String,
    pub engine: EngineInfo,
    pub mode: HostMode,
    /// The agent's own container, when it runs in one.
    pub container_id: Option<String>,
    /// The image that container runs (`repo:tag@sha256:…` when its digest is known).
    pub agent_image: Option<String>,
    /// A successor agent completing the self-update with this op id.
    pub handover_op_id: Option<String>,
}

/// A full snapshot of one host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inventory {
    pub containers: Vec<ContainerInfo>,
    pub mode: HostMode,
    pub observed_at_unix_ms: i64,
    /// The swarm's id, on a Swarm manager (empty elsewhere).
    pub cluster_id: String,
    /// The swarm's services, on a Swarm manager.
    pub services: Vec<ServiceInfo>,
}

/// A Swarm service, as a manager reports it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceInfo {
    pub id: String,
    pub name: String,
    /// The spec's image: `repo:tag@sha256:…` once pinned.
    pub image: String,
    /// The service's own labels.
    pub labels: BTreeMap<String, String>,
    /// `replicated`, `global`, `replicated-job`, `global-job`.
    pub mode: String,
    /// Replicated mode: replicas wanted.
    pub replicas: u64,
    /// `Version.Index`.
    pub version: u64,
    /// `UpdateStatus.State` (empty: never updated).
    pub update_state: String,
    pub update_message: String,
    /// `Spec.UpdateConfig.FailureAction` (empty: pause).
    pub failure_action: String,
    /// `Spec.UpdateConfig` and `Spec.RollbackConfig` (`None`: the engine's defaults).
    pub update_config: Option<SwarmUpdateConfig>,
    pub rollback_config: Option<SwarmUpdateConfig>,
}

/// How Swarm replaces a service's tasks in an update or a rollback.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SwarmUpdateConfig {
    /// Tasks at once (0: all).
    pub parallelism: u64,
    pub delay_ms: i64,
    pub monitor_ms: i64,
    pub failure_action: String,
    /// Failures tolerated, in thousandths of the tasks.
    pub max_failure_permille: u32,
    /// `stop-first` or `start-first`.
    pub order: String,
}

impl From<SwarmUpdateConfig> for pb::SwarmUpdateConfig {
    fn from(c: SwarmUpdateConfig) -> Self {
        Self {
            parallelism: c.parallelism,
            delay_ms: c.delay_ms,
            monitor_ms: c.monitor_ms,
            failure_action: c.failure_action,
            max_failure_permille: c.max_failure_permille,
            order: c.order,
        }
    }
}

impl From<pb::SwarmUpdateConfig> for SwarmUpdateConfig {
    fn from(c: pb::SwarmUpdateConfig) -> Self {
        Self {
            parallelism: c.parallelism,
            delay_ms: c.delay_ms,
            monitor_ms: c.monitor_ms,
            failure_action: c.failure_action,
            max_failure_permille: c.max_failure_permille,
            order: c.order,
        }
    }
}

impl From<ServiceInfo> for pb::Service {
    fn from(s: ServiceInfo) -> Self {
        Self {
            id: s.id,
            name: s.name,
            image: s.image,
            labels: s.labels.into_iter().collect(),
            mode: s.mode,
            replicas: s.replicas,
            version: s.version,
            update_state: s.update_state,
            update_message: s.update_message,
            failure_action: s.failure_action,
            update_config: s.update_config.map(Into::into),
            rollback_config: s.rollback_config.map(Into::into),
        }
    }
}

impl TryFrom<pb::Service> for ServiceInfo {
    type Error = InvalidMessage;
    fn try_from(s: pb::Service) -> Result<Self, Self::Error> {
        if s.id.is_empty() || s.name.is_empty() {
            return Err(InvalidMessage::new("service", "empty id or name"));
        }
        if s.image.is_empty() {
            return Err(InvalidMessage::new("service", "empty image"));
        }
        Ok(Self {
            id: s.id,
            name: s.name,
            image: s.image,
            labels: s.labels.into_iter().collect(),
            mode: s.mode,
            replicas: s.replicas,
            version: s.version,
            update_state: s.update_state,
            update_message: s.update_message,
            failure_action: s.failure_action,
            update_config: s.update_config.map(Into::into),
            rollback_config: s.rollback_config.map(Into::into),
        })
    }
}

impl From<ContainerState> for pb::ContainerState {
    fn from(s: ContainerState) -> Self {
        match s {
            ContainerState::Created => Self::Created,
            ContainerState::Running => Self::Running,
            ContainerState::Paused => Self::Paused,
            ContainerState::Restarting => Self::Restarting,
            ContainerState::Removing => Self::Removing,
            ContainerState::Exited => Self::Exited,
            ContainerState::Dead => Self::Dead,
            ContainerState::Unknown => Self::Unspecified,
        }
    }
}

impl From<pb::ContainerState> for ContainerState {
    fn from(s: pb::ContainerState) -> Self {
        match s {
            pb::ContainerState::Created => Self::Created,
            pb::ContainerState::Running => Self::Running,
            pb::ContainerState::Paused => Self::Paused,
            pb::ContainerState::Restarting => Self::Restarting,
            pb::ContainerState::Removing => Self::Removing,
            pb::ContainerState::Exited => Self::Exited,
            pb::ContainerState::Dead => Self::Dead,
            pb::ContainerState::Unspecified => Self::Unknown,
        }
    }
}

impl From<Health> for pb::HealthStatus {
    fn from(h: Health) -> Self {
        match h {
            Health::None => Self::None,
            Health::Starting => Self::Starting,
            Health::Healthy => Self::Healthy,
            Health::Unhealthy => Self::Unhealthy,
        }
    }
}

impl From<pb::HealthStatus> for Health {
    fn from(h: pb::HealthStatus) -> Self {
        match h {
            pb::HealthStatus::Starting => Self::Starting,
            pb::HealthStatus::Healthy => Self::Healthy,
            pb::HealthStatus::Unhealthy => Self::Unhealthy,
            pb::HealthStatus::None | pb::HealthStatus::Unspecified => Self::None,
        }
    }
}

impl From<HostMode> for pb::HostMode {
    fn from(m: HostMode) -> Self {
        match m {
            HostMode::Standalone => Self::Standalone,
            HostMode::SwarmManager => Self::SwarmManager,
            HostMode::SwarmWorker => Self::SwarmWorker,
            HostMode::Unknown => Self::Unspecified,
        }
    }
}

impl From<pb::HostMode> for HostMode {
    fn from(m: pb::HostMode) -> Self {
        match m {
            pb::HostMode::Standalone => Self::Standalone,
            pb::HostMode::SwarmManager => Self::SwarmManager,
            pb::HostMode::SwarmWorker => Self::SwarmWorker,
            pb::HostMode::Unspecified => Self::Unknown,
        }
    }
}

impl From<EngineInfo> for pb::EngineInfo {
    fn from(e: EngineInfo) -> Self {
        Self {
            version: e.version,
            api_version: e.api_version,
            os: e.os,
            arch: e.arch,
        }
    }
}

impl From<pb::EngineInfo> for EngineInfo {
    fn from(e: pb::EngineInfo) -> Self {
        Self {
            version: e.version,
            api_version: e.api_version,
            os: e.os,
            arch: e.arch,
        }
    }
}

impl From<ContainerInfo> for pb::Container {
    fn from(c: ContainerInfo) -> Self {
        Self {
            id: c.id,
            name: c.name,
            image: c.image,
            image_id: c.image_id,
            repo_digests: c.repo_digests,
            labels: c.labels.into_iter().collect(),
            state: pb::ContainerState::from(c.state).into(),
            health: pb::HealthStatus::from(c.health).into(),
            restart_count: c.restart_count,
            created_unix: c.created_unix,
            network_mode: c.network_mode,
            links: c.links,
            set_aside: c.set_aside,
            pid_mode: c.pid_mode,
            ipc_mode: c.ipc_mode,
        }
    }
}

impl TryFrom<pb::Container> for ContainerInfo {
    type Error = InvalidMessage;
    fn try_from(c: pb::Container) -> Result<Self, Self::Error> {
        if c.id.is_empty() {
            return Err(InvalidMessage::new("container", "empty id"));
        }
        if c.name.is_empty() {
            return Err(InvalidMessage::new(
                "container",
                format!("container {} has no name", c.id),
            ));
        }
        Ok(Self {
            state: c.state().into(),
            health: c.health().into(),
            id: c.id,
            name: c.name,
            image: c.image,
            image_id: c.image_id,
            repo_digests: c.repo_digests,
            labels: c.labels.into_iter().collect(),
            restart_count: c.restart_count,
            created_unix: c.created_unix,
            network_mode: c.network_mode,
            links: c.links,
            pid_mode: c.pid_mode,
            ipc_mode: c.ipc_mode,
            set_aside: c.set_aside,
        })
    }
}

impl From<Hello> for pb::Hello {
    fn from(h: Hello) -> Self {
        Self {
            host: h.host,
            agent_version: h.agent_version,
            engine: Some(h.engine.into()),
            mode: pb::HostMode::from(h.mode).into(),
            container_id: h.container_id.unwrap_or_default(),
            agent_image: h.agent_image.unwrap_or_default(),
            handover_op_id: h.handover_op_id.unwrap_or_default(),
        }
    }
}

impl TryFrom<pb::Hello> for Hello {
    type Error = InvalidMessage;
    fn try_from(h: pb::Hello) -> Result<Self, Self::Error> {
        if h.host.is_empty() {
            return Err(InvalidMessage::new("hello", "empty host"));
        }
        if h.agent_version.is_empty() {
            return Err(InvalidMessage::new("hello", "empty agent version"));
        }
        let mode = h.mode().into();
        let engine = h
            .engine
            .ok_or_else(|| InvalidMessage::new("hello", "no engine information"))?;
        let given = |s: String| (!s.is_empty()).then_some(s);
        Ok(Self {
            host: h.host,
            agent_version: h.agent_version,
            engine: engine.into(),
            mode,
            container_id: given(h.container_id),
            agent_image: given(h.agent_image),
            handover_op_id: given(h.handover_op_id),
        })
    }
}

impl From<Inventory> for pb::Inventory {
    fn from(i: Inventory) -> Self {
        Self {
            containers: i.containers.into_iter().map(Into::into).collect(),
            swarm_manager: i.mode == HostMode::SwarmManager,
            observed_at_unix_ms: i.observed_at_unix_ms,
            mode: pb::HostMode::from(i.mode).into(),
            cluster_id: i.cluster_id,
            services: i.services.into_iter().map(Into::into).collect(),
        }
    }
}

impl TryFrom<pb::Inventory> for Inventory {
    type Error = InvalidMessage;
    fn try_from(i: pb::Inventory) -> Result<Self, Self::Error> {
        let mode = match (i.mode(), i.swarm_manager) {
            (pb::HostMode::Unspecified, true) => HostMode::SwarmManager,
            (m, _) => m.into(),
        };
        let containers = i
            .containers
            .into_iter()
            .map(ContainerInfo::try_from)
            .collect::<Result<Vec<_>, _>>()?;
        // A service the coordinator cannot use (no image: a plugin) is left out, not the
        // whole report: the host's containers still count.
        let services = i
            .services
            .into_iter()
            .filter_map(|s| ServiceInfo::try_from(s).ok())
            .collect();
        Ok(Self {
            containers,
            mode,
            observed_at_unix_ms: i.observed_at_unix_ms,
            cluster_id: i.cluster_id,
            services,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn container() -> ContainerInfo {
        ContainerInfo {
            id: "abc".into(),
            name: "web".into(),
            image: "nginx:1.27".into(),
            image_id: "sha256:1".into(),
            repo_digests: vec!["nginx@sha256:2".into()],
            labels: [("a".to_owned(), "b".to_owned())].into(),
            state: ContainerState::Running,
            health: Health::Healthy,
            restart_count: 2,
            created_unix: 1_700_000_000,
            network_mode: "container:abc".into(),
            links: vec!["db".into()],
            pid_mode: "container:def".into(),
            ipc_mode: "shareable".into(),
            set_aside: "set aside by update op-1".into(),
        }
    }

    #[test]
    fn container_round_trips_through_the_wire() {
        let wire = pb::Container::from(container());
        assert_eq!(ContainerInfo::try_from(wire), Ok(container()));
    }

    #[test]
    fn services_round_trip_and_one_without_an_image_is_left_out_not_the_report() {
        let web = ServiceInfo {
            id: "s1".into(),
            name: "web".into(),
            image: "reg/web:1@sha256:aa".into(),
            mode: "replicated".into(),
            replicas: 2,
            version: 7,
            update_config: Some(SwarmUpdateConfig {
                parallelism: 1,
                delay_ms: 0,
                monitor_ms: 3_000,
                failure_action: "rollback".into(),
                max_failure_permille: 250,
                order: "start-first".into(),
            }),
            ..ServiceInfo::default()
        };
        let plugin = pb::Service {
            id: "s2".into(),
            name: "plugin".into(),
            ..pb::Service::default()
        };
        let wire = pb::Inventory {
            containers: vec![pb::Container::from(container())],
            cluster_id: "c1".into(),
            services: vec![pb::Service::from(web.clone()), plugin],
            mode: pb::HostMode::SwarmManager.into(),
            ..pb::Inventory::default()
        };
        let inventory = Inventory::try_from(wire).unwrap();
        assert_eq!(inventory.services, vec![web]);
        assert_eq!(inventory.cluster_id, "c1");
        assert_eq!(inventory.containers, vec![container()]);
    }

    #[test]
    fn wire_container_without_id_or_name_is_refused() {
        let mut wire = pb::Container::from(container());
        wire.name.clear();
        assert!(ContainerInfo::try_from(wire.clone()).is_err());
        wire.id.clear();
        assert!(ContainerInfo::try_from(wire).is_err());
    }

    #[test]
    fn hello_needs_host_version_and_engine() {
        let hello = Hello {
            host: "h1".into(),
            agent_version: "0.1.0".into(),
            engine: EngineInfo::default(),
            mode: HostMode::SwarmManager,
            container_id: Some("ab".repeat(32)),
            agent_image: Some("r/ouroboros-agent:1@sha256:00".into()),
            handover_op_id: None,
        };
        let wire = pb::Hello::from(hello.clone());
        assert_eq!(wire.handover_op_id, "", "absent is empty on the wire");
        assert_eq!(Hello::try_from(wire.clone()), Ok(hello));
        let mut no_engine = wire.clone();
        no_engine.engine = None;
        assert!(Hello::try_from(no_engine).is_err());
        let mut no_host = wire;
        no_host.host.clear();
        assert!(Hello::try_from(no_host).is_err());
    }
}

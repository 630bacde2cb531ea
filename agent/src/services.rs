//! A Swarm manager's services, as the inventory reports them (id, name, pinned image, labels,
//! mode and replicas, version, update status, failure action).

use bollard::Docker;
use bollard::models::Service;
use bollard::query_parameters::ListServicesOptions;
use ouroboros_shared::inventory::{ServiceInfo, SwarmUpdateConfig};

/// The swarm's services as the inventory reports them (call on a manager only). Services that
/// run no container (plugins, network attachments) have no image to update: left out.
pub async fn list(docker: &Docker) -> Result<Vec<ServiceInfo>, bollard::errors::Error> {
    let mut services: Vec<ServiceInfo> = docker
        .list_services(None::<ListServicesOptions>)
        .await?
        .iter()
        .map(service_info)
        .filter(|s| !s.image.is_empty() && !s.name.is_empty())
        .collect();
    services.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(services)
}

/// A spec's update or rollback config (bollard has a type for each, with the same fields).
macro_rules! swarm_config {
    ($u:expr) => {
        SwarmUpdateConfig {
            parallelism: $u
                .parallelism
                .and_then(|p| u64::try_from(p).ok())
                .unwrap_or(0),
            delay_ms: $u.delay.unwrap_or(0) / 1_000_000,
            monitor_ms: $u.monitor.unwrap_or(0) / 1_000_000,
            failure_action: $u.failure_action.map(|a| a.to_string()).unwrap_or_default(),
            max_failure_permille: permille($u.max_failure_ratio),
            order: $u.order.map(|o| o.to_string()).unwrap_or_default(),
        }
    };
}

/// What the inventory reports about one service.
pub fn service_info(service: &Service) -> ServiceInfo {
    let spec = service.spec.clone().unwrap_or_default();
    let mode = spec.mode.unwrap_or_default();
    let (mode, replicas) = if let Some(r) = &mode.replicated {
        ("replicated", r.replicas.unwrap_or(1))
    } else if mode.global.is_some() {
        ("global", 0)
    } else if let Some(job) = &mode.replicated_job {
        ("replicated-job", job.total_completions.unwrap_or(1))
    } else if mode.global_job.is_some() {
        ("global-job", 0)
    } else {
        ("", 0)
    };
    let status = service.update_status.clone().unwrap_or_default();
    ServiceInfo {
        id: service.id.clone().unwrap_or_default(),
        name: spec.name.unwrap_or_default(),
        image: spec_image(service).unwrap_or_default().to_owned(),
        labels: spec.labels.unwrap_or_default().into_iter().collect(),
        mode: mode.to_owned(),
        replicas: u64::try_from(replicas).unwrap_or(0),
        version: service
            .version
            .as_ref()
            .and_then(|v| v.index)
            .unwrap_or_default(),
        update_state: status.state.map(|s| s.to_string()).unwrap_or_default(),
        update_message: status.message.unwrap_or_default(),
        failure_action: spec
            .update_config
            .as_ref()
            .and_then(|u| u.failure_action)
            .map(|a| a.to_string())
            .unwrap_or_default(),
        update_config: spec.update_config.as_ref().map(|u| swarm_config!(u)),
        rollback_config: spec.rollback_config.as_ref().map(|u| swarm_config!(u)),
    }
}

/// A failure ratio (0.0 to 1.0) in thousandths.
fn permille(ratio: Option<f64>) -> u32 {
    (ratio.unwrap_or(0.0).clamp(0.0, 1.0) * 1000.0).round() as u32
}

/// `Spec.TaskTemplate.ContainerSpec.Image`.
pub fn spec_image(service: &Service) -> Option<&str> {
    service
        .spec
        .as_ref()?
        .task_template
        .as_ref()?
        .container_spec
        .as_ref()?
        .image
        .as_deref()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn services_are_reported_with_mode_replicas_and_status() {
        let service: Service = serde_json::from_value(serde_json::json!({
            "ID": "abc",
            "Version": {"Index": 42},
            "Spec": {
                "Name": "web",
                "Labels": {"com.ouroboros.enable": "true"},
                "TaskTemplate": {"ContainerSpec": {"Image": "r/app:1@sha256:00"}},
                "Mode": {"Replicated": {"Replicas": 2}},
                "UpdateConfig": {"FailureAction": "rollback"}
            },
            "UpdateStatus": {"State": "paused", "Message": "task failed"}
        }))
        .unwrap();
        let info = service_info(&service);
        assert_eq!(info.id, "abc");
        assert_eq!(info.name, "web");
        assert_eq!(info.image, "r/app:1@sha256:00");
        assert_eq!(info.mode, "replicated");
        assert_eq!(info.replicas, 2);
        assert_eq!(info.version, 42);
        assert_eq!(info.update_state, "paused");
        assert_eq!(info.update_message, "task failed");
        assert_eq!(info.failure_action, "rollback");
        assert_eq!(info.labels["com.ouroboros.enable"], "true");
        let global: Service = serde_json::from_value(serde_json::json!({
            "ID": "g", "Spec": {"Name": "agent", "Mode": {"Global": {}}}
        }))
        .unwrap();
        let info = service_info(&global);
        assert_eq!((info.mode.as_str(), info.replicas), ("global", 0));
        assert_eq!(info.update_state, "");
    }
}

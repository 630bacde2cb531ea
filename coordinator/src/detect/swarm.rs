//! Swarm services in detection: a manager reports each service of its swarm, and with `SWARM`
//! each goes through selection, probing and the rollout as a *unit* shaped like a container
//! ([`unit`]): named `service:NAME` (no container name holds a `:`, so it never meets one),
//! its image the spec's `repo:tag`, its RepoDigest the digest the spec pins. Task containers
//! (a service's replicas) are never selected: their service is what updates.

use ouroboros_shared::inventory::{ContainerInfo, ContainerState, Health, ServiceInfo};
use ouroboros_shared::reference::ImageRef;

/// What a service's unit name starts with.
pub const SERVICE_MARK: &str = "service:";
/// The label the engine puts on a task container, naming its service.
pub const LABEL_TASK_SERVICE: &str = "com.docker.swarm.service.name";

/// `UpdateStatus.State`s of an update (or its rollback) still under way.
const UNDER_WAY: [&str; 2] = ["updating", "rollback_started"];
/// `UpdateStatus.State`s of an update stopped half-way: an operator's to resolve.
const PAUSED: [&str; 2] = ["paused", "rollback_paused"];

/// Whether `name` is a service's unit name.
pub fn is_service(name: &str) -> bool {
    name.starts_with(SERVICE_MARK)
}

/// The service name of a unit name.
pub fn service_name(unit: &str) -> &str {
    unit.strip_prefix(SERVICE_MARK).unwrap_or(unit)
}

/// `Err` with why a service unit (without `swarm`) or a task container is not selected.
pub fn check(c: &ContainerInfo, swarm: bool) -> Result<(), String> {
    if let Some(service) = c.labels.get(LABEL_TASK_SERVICE) {
        return Err(if swarm {
            format!("a task of Swarm service {service}: the service is updated instead")
        } else {
            format!(
                "a task of Swarm service {service}: services are updated only with SWARM (--swarm)"
            )
        });
    }
    if is_service(&c.name) && !swarm {
        return Err("a Swarm service: services are updated only with SWARM (--swarm)".into());
    }
    Ok(())
}

/// A service as a detection unit (see the module's doc).
pub fn unit(s: &ServiceInfo) -> ContainerInfo {
    let (image, repo_digests) = match ImageRef::parse(&s.image) {
        // Pinned by digest alone (`repo@sha256:…`): it follows no tag, like a container
        // pinned so (detection says "pinned to a digest").
        Ok(r) if r.tag.is_none() => (s.image.clone(), Vec::new()),
        Ok(r) => match &r.digest {
            Some(digest) => {
                let named = s.image.split_once('@').map_or(s.image.as_str(), |(n, _)| n);
                (
                    named.to_owned(),
                    vec![format!("{}@{digest}", r.repo_digest_name())],
                )
            }
            None => (s.image.clone(), Vec::new()),
        },
        // An unparsable reference is refused by detection with its reason.
        Err(_) => (s.image.clone(), Vec::new()),
    };
    // Why the service is left alone this cycle (told as it is, see `Selection::check`).
    let set_aside = if s.mode.ends_with("-job") {
        format!(
            "a Swarm job ({}): updating it would run it again; jobs are left alone",
            s.mode
        )
    } else if UNDER_WAY.contains(&s.update_state.as_str()) {
        format!(
            "a Swarm update of the service is under way ({})",
            s.update_state
        )
    } else if PAUSED.contains(&s.update_state.as_str()) {
        format!(
            "a Swarm update of the service is paused ({}): left to an operator (`docker service update` or `docker service rollback`)",
            s.update_state
        )
    } else {
        String::new()
    };
    ContainerInfo {
        id: s.id.clone(),
        name: format!("{SERVICE_MARK}{}", s.name),
        image,
        image_id: String::new(),
        repo_digests,
        labels: s.labels.clone(),
        state: ContainerState::Running,
        health: Health::None,
        restart_count: 0,
        created_unix: 0,
        network_mode: String::new(),
        links: Vec::new(),
        pid_mode: String::new(),
        ipc_mode: String::new(),
        set_aside,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::Selection;

    const D1: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";

    fn service(name: &str, image: &str) -> ServiceInfo {
        ServiceInfo {
            id: format!("id-{name}"),
            name: name.into(),
            image: image.into(),
            mode: "replicated".into(),
            replicas: 2,
            ..ServiceInfo::default()
        }
    }

    #[test]
    fn a_pinned_service_is_a_unit_on_its_tag_with_its_pin_as_repo_digest() {
        let u = unit(&service(
            "web",
            &format!("registry.lan:5000/shop/web:2@{D1}"),
        ));
        assert_eq!(u.name, "service:web");
        assert_eq!(u.image, "registry.lan:5000/shop/web:2");
        assert_eq!(u.repo_digests, [format!("registry.lan:5000/shop/web@{D1}")]);
        // Docker Hub: as RepoDigests name it.
        let hub = unit(&service("cache", &format!("redis:7@{D1}")));
        assert_eq!(hub.image, "redis:7");
        assert_eq!(hub.repo_digests, [format!("redis@{D1}")]);
        // Not pinned: no digest to compare.
        assert!(unit(&service("x", "redis:7")).repo_digests.is_empty());
        // An update under way: set aside until it ends.
        let busy = unit(&ServiceInfo {
            update_state: "updating".into(),
            ..service("web", &format!("redis:7@{D1}"))
        });
        assert!(busy.set_aside.contains("under way (updating)"));
        let paused = unit(&ServiceInfo {
            update_state: "paused".into(),
            ..service("web", &format!("redis:7@{D1}"))
        });
        assert!(paused.set_aside.contains("paused (paused)"));
        // A job would run again: left alone.
        let job = unit(&ServiceInfo {
            mode: "replicated-job".into(),
            ..service("migrate", &format!("redis:7@{D1}"))
        });
        assert!(
            job.set_aside.contains("would run it again"),
            "{}",
            job.set_aside
        );
        // Pinned by digest alone: no tag to follow.
        let pinned = unit(&service("x", &format!("redis@{D1}")));
        assert_eq!(pinned.image, format!("redis@{D1}"));
        let done = unit(&ServiceInfo {
            update_state: "completed".into(),
            ..service("web", &format!("redis:7@{D1}"))
        });
        assert!(done.set_aside.is_empty());
    }

    #[test]
    fn services_need_swarm_and_tasks_are_never_selected() {
        let web = unit(&service("web", &format!("redis:7@{D1}")));
        let off = Selection::default();
        let on = Selection {
            swarm: true,
            ..Selection::default()
        };
        assert_eq!(
            off.check("m1", &web),
            Err("a Swarm service: services are updated only with SWARM (--swarm)".into())
        );
        assert_eq!(on.check("m1", &web), Ok(()));
        // A service left alone says why, without SWARM too (SWARM's reason first).
        let job = unit(&ServiceInfo {
            mode: "global-job".into(),
            ..service("migrate", &format!("redis:7@{D1}"))
        });
        assert!(
            on.check("m1", &job)
                .unwrap_err()
                .starts_with("a Swarm job (global-job)")
        );
        assert!(
            off.check("m1", &job)
                .unwrap_err()
                .contains("only with SWARM")
        );
        // Names and labels select services like containers, by the service's name.
        let only_web = Selection {
            monitor: vec!["web".into()],
            ..on.clone()
        };
        assert_eq!(only_web.check("m1", &web), Ok(()));
        let ignore_web = Selection {
            ignore: vec!["m1/web".into()],
            ..on.clone()
        };
        assert_eq!(ignore_web.check("m1", &web), Err("in IGNORE".into()));
        let unit_named = Selection {
            monitor: vec!["service:web".into()],
            ..on.clone()
        };
        assert_eq!(unit_named.check("m1", &web), Ok(()));
        let labelled = Selection {
            label_enable: true,
            ..on.clone()
        };
        assert!(labelled.check("m1", &web).is_err());
        let mut enabled = web.clone();
        enabled
            .labels
            .insert("com.ouroboros.enable".into(), "true".into());
        assert_eq!(labelled.check("m1", &enabled), Ok(()));
        // A task container: never, with or without SWARM.
        let mut task = web.clone();
        task.name = "web.1.abcdef".into();
        task.labels.insert(LABEL_TASK_SERVICE.into(), "web".into());
        for selection in [&off, &on] {
            let why = selection.check("m1", &task).unwrap_err();
            assert!(why.starts_with("a task of Swarm service web"), "{why}");
        }
    }
}

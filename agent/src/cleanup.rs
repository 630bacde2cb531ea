//! Cleanup after updates: the old image once nothing uses it (CLEANUP), and anonymous volumes
//! no container uses (CLEANUP_UNUSED_VOLUMES). An image that still carries a tag is kept; one
//! without is removed without `force`, so the engine refuses while a container (running or
//! not) uses it. A volume is removed only when the engine lists it as dangling and it is
//! anonymous; named volumes are never touched, used or not.

use std::collections::HashMap;

use bollard::Docker;
use bollard::query_parameters::{
    ListVolumesOptionsBuilder, RemoveImageOptionsBuilder, RemoveVolumeOptionsBuilder,
};
use tracing::{info, warn};

/// Docker's label on anonymous volumes (engines from API 1.42 on; older ones name them only).
const LABEL_ANONYMOUS: &str = "com.docker.volume.anonymous";

/// The image id a container runs, if it exists.
pub async fn image_of(docker: &Docker, container: &str) -> Option<String> {
    docker
        .inspect_container(container, None)
        .await
        .ok()
        .and_then(|c| c.image)
}

/// Removes `image_id` unless it is `keep` or something still uses it. Returns a line for the
/// result: "removed …", or "kept …: why".
pub async fn remove_image_if_unused(docker: &Docker, image_id: &str, keep: &str) -> String {
    if image_id.is_empty() || image_id == keep {
        return format!("kept {image_id}: the container runs it");
    }
    // The engine deletes an image by id together with its tags when they are all of one
    // repository, so a tag someone keeps (a rollback tag, say) must be checked here.
    match docker.inspect_image(image_id).await {
        Ok(image) => {
            let tags: Vec<String> = image
                .repo_tags
                .unwrap_or_default()
                .into_iter()
                .filter(|t| t != "<none>:<none>")
                .collect();
            if !tags.is_empty() {
                return format!("kept {image_id}: still tagged {}", tags.join(", "));
            }
        }
        Err(e) if crate::engine::is_not_found(&e) => {
            return format!("removed {image_id} (already gone)");
        }
        Err(e) => return format!("kept {image_id}: cannot inspect it: {e}"),
    }
    let options = RemoveImageOptionsBuilder::new()
        .force(false)
        .noprune(false)
        .build();
    match docker.remove_image(image_id, Some(options), None).await {
        Ok(_) => {
            info!(image = %image_id, "Old image removed.");
            format!("removed {image_id}")
        }
        Err(bollard::errors::Error::DockerResponseServerError {
            status_code: 409,
            message,
        }) => format!("kept {image_id}: {message}"),
        Err(e) if crate::engine::is_not_found(&e) => format!("removed {image_id} (already gone)"),
        Err(e) => {
            warn!(image = %image_id, error = %e, "Cannot remove the old image.");
            format!("kept {image_id}: {e}")
        }
    }
}

/// Whether a volume is anonymous. Engines from API 1.42 on label anonymous volumes, and only
/// the label counts there (a bare `docker volume create` also gets a 64-hex name); older ones
/// have no label, and the generated 64-hex name is all there is to go by.
fn is_anonymous(name: &str, labels: &HashMap<String, String>, engine_labels: bool) -> bool {
    if engine_labels {
        return labels.contains_key(LABEL_ANONYMOUS);
    }
    name.len() == 64
        && name
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Removes every anonymous volume the engine lists as dangling. Returns the names removed and
/// the failures (a volume taken into use meanwhile is refused by the engine and kept).
pub async fn prune_anonymous_volumes(
    docker: &Docker,
    api: crate::engine::ApiVersion,
) -> (Vec<String>, Vec<String>) {
    let engine_labels = api >= crate::engine::ApiVersion::new(1, 42);
    let filters = HashMap::from([("dangling", vec!["true"])]);
    let options = ListVolumesOptionsBuilder::new().filters(&filters).build();
    let listed = match docker.list_volumes(Some(options)).await {
        Ok(l) => l.volumes.unwrap_or_default(),
        Err(e) => return (Vec::new(), vec![format!("cannot list volumes: {e}")]),
    };
    let mut removed = Vec::new();
    let mut failed = Vec::new();
    for volume in listed {
        if !is_anonymous(&volume.name, &volume.labels, engine_labels) {
            continue;
        }
        let options = RemoveVolumeOptionsBuilder::new().force(false).build();
        match docker.remove_volume(&volume.name, Some(options)).await {
            Ok(()) => removed.push(volume.name),
            Err(e) if crate::engine::is_not_found(&e) => {}
            Err(e) => failed.push(format!("{}: {e}", volume.name)),
        }
    }
    if !removed.is_empty() {
        info!(count = removed.len(), "Unused anonymous volumes removed.");
    }
    (removed, failed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_anonymous_volumes_qualify() {
        let none = HashMap::new();
        let hex = "0123456789abcdef".repeat(4);
        // API 1.41: the generated name is all there is.
        assert!(is_anonymous(&hex, &none, false));
        assert!(!is_anonymous("pgdata", &none, false));
        assert!(!is_anonymous(&hex.to_uppercase(), &none, false));
        assert!(!is_anonymous(&hex[..63], &none, false));
        // API 1.42+: only Docker's label, not a hex name someone chose.
        let labelled = HashMap::from([(LABEL_ANONYMOUS.to_owned(), String::new())]);
        assert!(is_anonymous("anything", &labelled, true));
        assert!(!is_anonymous(&hex, &none, true));
    }
}

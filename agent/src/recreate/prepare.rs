//! Step 1 of the sequence (see [`super::executor`]): inspect, check, pull and derive, for the
//! container and for each container that refers to it. Nothing is changed here; a refusal is
//! the outcome to report.

use bollard::models::ImageInspect;
use futures_util::StreamExt;

use super::dependants::{self, Action, Fixed, Node};
use super::executor::{Prepared, Recreator, Request};
use super::journal::{DependantEntry, DependantState, Outcome};
use super::pull::split_pinned;
use super::spec;
use super::{ASIDE_MARK, short};
use crate::engine::is_not_found;

impl Recreator {
    /// Inspect, pull and derive, for the container and its dependants; nothing is changed.
    /// Err is the outcome to report.
    pub(crate) async fn prepare(&self, request: &Request) -> Result<Prepared, Outcome> {
        let refused = |reason: String| Outcome::Refused { reason };
        let old = self
            .docker
            .inspect_container(&request.container, None)
            .await
            .map_err(|e| {
                refused(format!(
                    "cannot inspect container {}: {e}",
                    request.container
                ))
            })?;
        let old_id = old.id.clone().unwrap_or_default();
        let configured = old
            .config
            .as_ref()
            .and_then(|c| c.image.clone())
            .unwrap_or_default();
        let target = request.image.clone().unwrap_or(configured);
        if target.is_empty() {
            return Err(refused("no image to recreate from".into()));
        }
        // Everything that can refuse the update is checked before the pull.
        if let Some(pinned) = spec::pinned(&old) {
            return Err(refused(spec::Refusal::DigestPinned(pinned).to_string()));
        }
        spec::check(&old, self.own_id.as_deref()).map_err(|e| refused(e.to_string()))?;
        // `repo:tag@sha256:…`: exactly this manifest, and the container keeps following its
        // tag afterwards (the tag is pointed at it once nothing can refuse the update).
        let (pulled, tag_to) = match split_pinned(&target) {
            Some((pinned, tag)) => (pinned, tag),
            None => (target, None),
        };
        if !pulled.starts_with("sha256:") && !request.skip_pull {
            self.pull(&pulled, request.auth.as_ref())
                .await
                .map_err(refused)?;
        }
        let new_image = self
            .docker
            .inspect_image(&pulled)
            .await
            .map_err(|e| refused(format!("cannot inspect image {pulled}: {e}")))?;
        let image_id = new_image.id.clone().unwrap_or_default();
        if old.image.as_deref() == Some(image_id.as_str()) {
            return Err(Outcome::AlreadyCurrent);
        }
        let old_image = self
            .old_image(old.image.as_deref())
            .await
            .map_err(refused)?;
        let dependants = self
            .prepare_dependants(request, &old_id)
            .await
            .map_err(refused)?;
        let target = match tag_to {
            Some(tag) => {
                self.tag(&pulled, &tag).await.map_err(refused)?;
                tag
            }
            None => pulled,
        };
        let plan = spec::derive(&old, &old_image, &target, self.api, self.own_id.as_deref())
            .map_err(|e| refused(e.to_string()))?;
        Ok(Prepared {
            plan,
            old_id,
            target,
            dependants,
        })
    }

    /// The image a container was made from; empty when it is gone (then nothing can be told
    /// apart, so every setting is kept).
    pub(crate) async fn old_image(&self, id: Option<&str>) -> Result<ImageInspect, String> {
        match id {
            Some(id) => match self.docker.inspect_image(id).await {
                Ok(i) => Ok(i),
                Err(e) if is_not_found(&e) => Ok(ImageInspect::default()),
                Err(e) => Err(format!("cannot inspect the old image: {e}")),
            },
            None => Ok(ImageInspect::default()),
        }
    }

    /// The dependants of `root_id`, checked and with their new images pulled.
    pub(crate) async fn prepare_dependants(
        &self,
        request: &Request,
        root_id: &str,
    ) -> Result<Vec<DependantEntry>, String> {
        let nodes = self.host_nodes().await?;
        if !nodes.iter().any(|n| n.id == root_id) {
            return Err("the container is not in the host's list any more".into());
        }
        let found = dependants::dependants(root_id, &nodes, &request.soft_dependants);
        let mut entries = Vec::new();
        for d in found {
            if d.action != Action::Untouched {
                // Its own stop and create must be possible, or nothing starts.
                let c = self
                    .docker
                    .inspect_container(&d.id, None)
                    .await
                    .map_err(|e| format!("dependant {}: cannot inspect it: {e}", d.name))?;
                spec::check(&c, self.own_id.as_deref())
                    .map_err(|e| format!("dependant {} ({}): {e}", d.name, d.kind.as_str()))?;
            }
            let target = match request.dependant_images.get(&d.name) {
                Some(image) if d.action == Action::Recreate => {
                    let (pinned, _) = split_pinned(image).ok_or_else(|| {
                        format!("dependant {}: {image} is not repo:tag@digest", d.name)
                    })?;
                    self.pull(&pinned, request.auth.as_ref())
                        .await
                        .map_err(|e| format!("dependant {}: {e}", d.name))?;
                    Some(image.clone())
                }
                _ => None,
            };
            entries.push(DependantEntry {
                aside_name: format!("{}{ASIDE_MARK}{}", d.name, short(&request.op_id)),
                name: d.name,
                old_id: d.id,
                kind: d.kind,
                action: d.action,
                parent: d.parent,
                was_running: d.running,
                target,
                state: DependantState::Untouched,
            });
        }
        Ok(entries)
    }

    /// The host's containers as [`Node`]s: one list call, and an inspect of each container not
    /// seen before (what the model needs of a container never changes while it exists).
    pub(crate) async fn host_nodes(&self) -> Result<Vec<Node>, String> {
        let listed = self
            .docker
            .list_containers(Some(
                bollard::query_parameters::ListContainersOptionsBuilder::new()
                    .all(true)
                    .build(),
            ))
            .await
            .map_err(|e| format!("cannot list the host's containers for dependants: {e}"))?;
        let unknown: Vec<String> = {
            let known = self.fixed.lock().unwrap_or_else(|p| p.into_inner());
            listed
                .iter()
                .filter_map(|c| c.id.clone())
                .filter(|id| !known.contains_key(id))
                .collect()
        };
        let docker = &self.docker;
        let inspected: Vec<_> = futures_util::stream::iter(unknown)
            .map(|id| async move { (docker.inspect_container(&id, None).await, id) })
            .buffered(8)
            .collect()
            .await;
        let mut known = self.fixed.lock().unwrap_or_else(|p| p.into_inner());
        for (result, id) in inspected {
            match result {
                Ok(c) => {
                    known.insert(id, Fixed::from_inspect(&c));
                }
                // Gone since the list: it refers to nothing any more.
                Err(e) if is_not_found(&e) => {}
                // A container not seen could be a dependant: nothing starts without it.
                Err(e) => return Err(format!("cannot inspect container {id}: {e}")),
            }
        }
        // Containers that are gone are forgotten.
        let present: std::collections::HashSet<&str> =
            listed.iter().filter_map(|c| c.id.as_deref()).collect();
        known.retain(|id, _| present.contains(id.as_str()));
        Ok(dependants::nodes(&listed, &known))
    }
}

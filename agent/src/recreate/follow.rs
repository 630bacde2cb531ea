//! The dependants around the update (see [`super::executor`]): those that cannot outlive the
//! old container are stopped before it (step 2), and those that must refer to the new
//! container are recreated after it passed its gate (step 3), each with the same sequence and
//! gate, parents first. A dependant caught half-way by a crash is undone and done again.

use std::collections::HashMap;

use bollard::models::NetworkConnectRequest;
use tracing::{info, warn};

use super::dependants::Action;
use super::executor::{Deadlines, RecreateError, Recreator};
use super::faults::CrashPoint;
use super::journal::{DependantState, Entry, TagBack};
use super::ops::{Interrupt, OnStop, StepFailure, failed};
use super::pull::split_pinned;
use super::spec::{self, CreatePlan};

impl Recreator {
    /// Step 2 for the dependants: those that cannot outlive the old container, and the soft
    /// ones, are stopped, deepest first.
    pub(crate) async fn stop_dependants(
        &self,
        entry: &mut Entry,
        report: &(dyn Fn(&'static str) + Send + Sync),
    ) -> Result<(), Interrupt> {
        for i in (0..entry.dependants.len()).rev() {
            let d = &entry.dependants[i];
            let goes_down = d.action == Action::Restart
                || (d.action == Action::Recreate && d.kind.refers_to_container());
            if !goes_down || d.state != DependantState::Untouched {
                continue;
            }
            self.unless_stopping()?;
            // Whether it runs now (pulls may have taken a while since it was listed) is what
            // it goes back to.
            let running = self
                .inspect(&d.old_id)
                .await
                .and_then(|c| c.state)
                .and_then(|s| s.running)
                .unwrap_or(false);
            if entry.dependants[i].was_running != running {
                entry.dependants[i].was_running = running;
                self.journal
                    .record(entry)
                    .map_err(|e| StepFailure::new("journal", e.to_string()))?;
            }
            if !running {
                continue;
            }
            let d = &entry.dependants[i];
            let (name, parent) = (d.name.clone(), entry.name.clone());
            self.ask_hook(
                &entry.op_id,
                super::gate::BEFORE_STOP_DEPENDS,
                &parent,
                &name,
            )
            .await
            .map_err(|why| StepFailure::new("hook", why))?;
            let d = &entry.dependants[i];
            report("stop dependant");
            let id = d.old_id.clone();
            let name = d.name.clone();
            self.set_dependant(entry, i, DependantState::Stopping)?;
            self.stop_as_configured(&id)
                .await
                .map_err(|e| StepFailure::new("stop dependant", format!("{name}: {e}")))?;
            self.set_dependant(entry, i, DependantState::Stopped)?;
            self.faults.at(CrashPoint::AfterDependantStop).await?;
        }
        Ok(())
    }

    /// Step 3: each dependant that must refer to the new container is recreated, parents
    /// first. Re-entered after a crash, it undoes a dependant caught half-way and goes on.
    pub(crate) async fn follow(
        &self,
        entry: &mut Entry,
        new_id: &str,
        deadlines: &Deadlines,
        report: &(dyn Fn(&'static str) + Send + Sync),
    ) -> Result<(), Interrupt> {
        let mut new_ids: HashMap<String, String> =
            HashMap::from([(entry.name.clone(), new_id.to_owned())]);
        for i in 0..entry.dependants.len() {
            let d = entry.dependants[i].clone();
            if d.action != Action::Recreate {
                continue;
            }
            match &d.state {
                DependantState::Passed { new_id, .. } => {
                    new_ids.insert(d.name.clone(), new_id.clone());
                    continue;
                }
                DependantState::Restored { .. } | DependantState::Failed { .. } => continue,
                DependantState::RenamingAside
                | DependantState::Creating { .. }
                | DependantState::Created { .. } => {
                    let problems = self.undo_dependant(entry, i).await;
                    if !problems.is_empty() {
                        return Err(StepFailure::new(
                            "dependant",
                            format!("{}: {}", d.name, problems.join("; ")),
                        )
                        .into());
                    }
                }
                _ => {}
            }
            let hard = d.kind == super::dependants::Kind::Hard;
            if hard
                && let Err(why) = self
                    .ask_hook(
                        &entry.op_id,
                        super::gate::BEFORE_RECREATE_HARD,
                        &entry.name,
                        &d.name,
                    )
                    .await
            {
                // It ran on during the update: it keeps its old container.
                self.set_dependant(
                    entry,
                    i,
                    DependantState::Restored {
                        reason: format!("not recreated: {why}"),
                    },
                )?;
                continue;
            }
            report("dependant");
            let first = self
                .recreate_dependant(entry, i, &new_ids, deadlines, false)
                .await;
            let failure = match first {
                Ok(id) => {
                    new_ids.insert(d.name.clone(), id);
                    if hard {
                        let _ = self
                            .ask_hook(
                                &entry.op_id,
                                super::gate::AFTER_RECREATE_HARD,
                                &entry.name,
                                &d.name,
                            )
                            .await;
                    }
                    continue;
                }
                Err(Interrupt::Crashed(p)) => return Err(Interrupt::Crashed(p)),
                Err(Interrupt::Failed(f)) => f,
            };
            warn!(container = %entry.name, dependant = %d.name, step = failure.step, reason = %failure.reason, "A dependant failed to follow the new container.");
            let mut problems = self.undo_dependant(entry, i).await;
            let why = format!("{}: {}", failure.step, failure.reason);
            if problems.is_empty() && d.target.is_some() && d.kind.refers_to_container() {
                // Its own new image failed: it follows the new container on its old image.
                match self
                    .recreate_dependant(entry, i, &new_ids, deadlines, true)
                    .await
                {
                    Ok(id) => {
                        if let DependantState::Passed { reason, .. } =
                            &mut entry.dependants[i].state
                        {
                            *reason = format!("its new image failed ({why}); it kept its own");
                        }
                        self.journal
                            .record(entry)
                            .map_err(|e| StepFailure::new("journal", e.to_string()))?;
                        new_ids.insert(d.name.clone(), id);
                        continue;
                    }
                    Err(Interrupt::Crashed(p)) => return Err(Interrupt::Crashed(p)),
                    Err(Interrupt::Failed(f)) => {
                        problems = self.undo_dependant(entry, i).await;
                        problems.insert(0, format!("{}: {}", f.step, f.reason));
                    }
                }
            }
            let followed_by_others = entry
                .dependants
                .iter()
                .any(|o| o.parent == d.name && o.action == Action::Recreate);
            if d.kind.refers_to_container() || followed_by_others || !problems.is_empty() {
                problems.insert(0, why);
                return Err(StepFailure::new(
                    "dependant",
                    format!("{} ({}): {}", d.name, d.kind.as_str(), problems.join("; ")),
                )
                .into());
            }
            // A hard dependant on its own: its old container again, the update stands.
            let name = d.name.clone();
            self.start_again(entry, None, &|o| o.name == name, Some(why.clone()))
                .await;
            if entry.dependants[i].state == DependantState::Untouched {
                self.set_dependant(entry, i, DependantState::Restored { reason: why })?;
            }
        }
        Ok(())
    }

    /// Before the soft dependants start again: each one a hook vetoes stays stopped
    /// (reported failed, with the veto).
    pub(crate) async fn ask_before_starting(&self, entry: &mut Entry) -> Result<(), RecreateError> {
        for i in 0..entry.dependants.len() {
            let d = &entry.dependants[i];
            let stopped = matches!(d.state, DependantState::Stopping | DependantState::Stopped);
            if d.action != Action::Restart || !d.was_running || !stopped {
                continue;
            }
            let name = d.name.clone();
            if let Err(why) = self
                .ask_hook(
                    &entry.op_id,
                    super::gate::BEFORE_START_DEPENDS,
                    &entry.name,
                    &name,
                )
                .await
            {
                entry.dependants[i].state = DependantState::Failed {
                    reason: format!("left stopped: {why}"),
                };
                self.journal.record(entry)?;
            }
        }
        Ok(())
    }

    /// Recreates dependant `i` to refer to the new containers in `new_ids` (by name): on its
    /// new image, or with `own_image` on the one it ran. Returns its new id.
    pub(crate) async fn recreate_dependant(
        &self,
        entry: &mut Entry,
        i: usize,
        new_ids: &HashMap<String, String>,
        deadlines: &Deadlines,
        own_image: bool,
    ) -> Result<String, Interrupt> {
        let d = entry.dependants[i].clone();
        let fail = |step: &'static str| move |reason: String| StepFailure::new(step, reason);
        let old = self
            .inspect(&d.old_id)
            .await
            .ok_or_else(|| StepFailure::new("dependant", "its old container is gone".to_owned()))?;
        if old.state.as_ref().and_then(|s| s.running) == Some(true) {
            // A hard dependant ran on during the update; it stops only now.
            self.set_dependant(entry, i, DependantState::Stopping)?;
            self.stop_as_configured(&d.old_id)
                .await
                .map_err(failed("stop"))?;
            self.set_dependant(entry, i, DependantState::Stopped)?;
        }
        self.set_dependant(entry, i, DependantState::RenamingAside)?;
        self.rename(&d.old_id, &d.aside_name)
            .await
            .map_err(failed("rename"))?;
        self.faults.at(CrashPoint::AfterDependantRename).await?;

        let configured = old
            .config
            .as_ref()
            .and_then(|c| c.image.clone())
            .unwrap_or_default();
        let old_image_id = old.image.clone().unwrap_or_default();
        let (reference, moved) = match (&d.target, own_image) {
            (Some(target), false) => match split_pinned(target) {
                Some((pinned, Some(tag))) => {
                    self.tag(&pinned, &tag).await.map_err(fail("create"))?;
                    (tag, true)
                }
                Some((pinned, None)) => (pinned, true),
                None => (configured, false),
            },
            _ => (configured, false),
        };
        let named = self
            .docker
            .inspect_image(&reference)
            .await
            .ok()
            .and_then(|i| i.id);
        let image_id = if moved {
            named
                .clone()
                .ok_or_else(|| StepFailure::new("create", format!("{reference} is not here")))?
        } else {
            old_image_id.clone()
        };
        // The container keeps its reference (its tag), never an image id. When the tag names
        // another image now (the update moved it), it is lent to this container's image for
        // the create and given back right after; journaled, so a crash gives it back too.
        let tag_back =
            (named.as_deref() != Some(image_id.as_str()) && reference != image_id).then(|| {
                TagBack {
                    reference: reference.clone(),
                    image: named.clone().unwrap_or_default(),
                }
            });
        let old_image = self
            .old_image(Some(&old_image_id))
            .await
            .map_err(fail("create"))?;
        let mut plan = spec::derive(
            &old,
            &old_image,
            &reference,
            self.api,
            self.own_id.as_deref(),
        )
        .map_err(|e| StepFailure::new("create", e.to_string()))?;
        refer_to_new(&mut plan, entry, new_ids);
        self.set_dependant(
            entry,
            i,
            DependantState::Creating {
                tag_back: tag_back.clone(),
            },
        )?;
        if let Some(lent) = &tag_back {
            self.tag(&image_id, &lent.reference)
                .await
                .map_err(fail("create"))?;
        }
        let created = self.create(&plan, &entry.op_id).await;
        if let Some(lent) = &tag_back {
            self.give_tag_back(lent).await;
        }
        let new_id = created.map_err(failed("create"))?;
        self.set_dependant(
            entry,
            i,
            DependantState::Created {
                new_id: new_id.clone(),
            },
        )?;
        self.faults.at(CrashPoint::AfterDependantCreate).await?;
        for (network, endpoint) in &plan.extra_networks {
            self.docker
                .connect_network(
                    network,
                    NetworkConnectRequest {
                        container: new_id.clone(),
                        endpoint_config: Some(endpoint.clone()),
                    },
                )
                .await
                .map_err(failed("connect network"))?;
        }
        if d.was_running {
            self.start(&new_id).await.map_err(failed("start"))?;
            self.health_gate(&new_id, deadlines, OnStop::AcceptRunning)
                .await?;
        }
        self.set_dependant(
            entry,
            i,
            DependantState::Passed {
                new_id: new_id.clone(),
                image_id,
                moved,
                reason: String::new(),
            },
        )?;
        info!(container = %entry.name, dependant = %d.name, kind = d.kind.as_str(), new = %new_id, "Dependant follows the new container.");
        Ok(new_id)
    }

    /// Takes dependant `i`'s replacement away (if this operation made one) and gives its old
    /// container its name back. Returns what could not be done.
    pub(crate) async fn undo_dependant(&self, entry: &mut Entry, i: usize) -> Vec<String> {
        let d = entry.dependants[i].clone();
        let mut problems = Vec::new();
        let replacement = match &d.state {
            DependantState::Created { new_id } | DependantState::Passed { new_id, .. } => {
                Some(new_id.clone())
            }
            _ => self.made_by(&d.name, &entry.op_id, &d.old_id).await,
        };
        if let Some(id) = replacement
            && let Err(e) = self.remove(&id).await
        {
            problems.push(format!("cannot remove its new container: {e}"));
        }
        if let DependantState::Creating {
            tag_back: Some(lent),
        } = &d.state
        {
            self.give_tag_back(lent).await;
        }
        match self.name_of(&d.old_id).await {
            Some(name) if name == d.name => {}
            Some(_) => {
                if let Err(e) = self.rename(&d.old_id, &d.name).await {
                    problems.push(format!("cannot rename its old container back: {e}"));
                }
            }
            None => problems.push("its old container is gone".into()),
        }
        // A stop that may still be under way stays recorded as such, so that whoever starts
        // it again waits for that stop first.
        let state = match d.state {
            DependantState::Stopping => DependantState::Stopping,
            DependantState::Untouched => DependantState::Untouched,
            _ if d.was_running => DependantState::Stopped,
            _ => DependantState::Untouched,
        };
        if let Err(e) = self.set_dependant(entry, i, state) {
            problems.push(e.reason);
        }
        problems
    }
}

/// Points a dependant's references to containers recreated in this operation (`new_ids`, by
/// name) at their new containers: `container:` namespace modes by id, legacy links and
/// `--volumes-from` by name (inspect shows a set-aside container under its aside name).
fn refer_to_new(plan: &mut CreatePlan, entry: &Entry, new_ids: &HashMap<String, String>) {
    // (old id, aside name, name, new id) of each recreated container.
    let mut moved: Vec<(&str, &str, &str, &str)> = Vec::new();
    if let Some(new_id) = new_ids.get(&entry.name) {
        moved.push((&entry.old_id, &entry.aside_name, &entry.name, new_id));
    }
    for d in &entry.dependants {
        if let Some(new_id) = new_ids.get(&d.name) {
            moved.push((&d.old_id, &d.aside_name, &d.name, new_id));
        }
    }
    let find = |reference: &str| {
        let r = reference.trim_start_matches('/');
        moved.iter().find(|(old_id, aside, name, _)| {
            r == *aside || r == *name || r == *old_id || (r.len() >= 12 && old_id.starts_with(r))
        })
    };
    let Some(hc) = plan.body.host_config.as_mut() else {
        return;
    };
    for mode in [&mut hc.network_mode, &mut hc.pid_mode, &mut hc.ipc_mode] {
        if let Some(value) = mode.as_mut()
            && let Some(reference) = value.strip_prefix("container:")
            && let Some((_, _, _, new_id)) = find(reference)
        {
            *value = format!("container:{new_id}");
        }
    }
    if let Some(links) = hc.links.as_mut() {
        for link in links.iter_mut() {
            if let Some((target, alias)) = link.split_once(':')
                && let Some((_, _, name, _)) = find(target)
            {
                *link = format!("{name}:{alias}");
            }
        }
    }
    if let Some(from) = hc.volumes_from.as_mut() {
        for source in from.iter_mut() {
            let (reference, mode) = match source.split_once(':') {
                Some((r, m)) => (r.to_owned(), format!(":{m}")),
                None => (source.clone(), String::new()),
            };
            if let Some((_, _, name, _)) = find(&reference) {
                *source = format!("{name}{mode}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::recreate::dependants::Kind;
    use crate::recreate::journal::{DependantEntry, Step};
    use bollard::models::{ContainerCreateBody, HostConfig};

    #[test]
    fn references_to_recreated_containers_point_at_the_new_ones() {
        let entry = Entry {
            op_id: "op-1".into(),
            name: "web".into(),
            old_id: "a".repeat(64),
            aside_name: "web-ouroboros-old-op-1".into(),
            was_running: true,
            target_image: "app:2".into(),
            dependants: vec![DependantEntry {
                name: "side".into(),
                old_id: "b".repeat(64),
                kind: Kind::Network,
                action: Action::Recreate,
                parent: "web".into(),
                was_running: true,
                target: None,
                aside_name: "side-ouroboros-old-op-1".into(),
                state: DependantState::Stopped,
            }],
            leftovers: Vec::new(),
            step: Step::Following {
                new_id: "n".repeat(64),
            },
        };
        let new_ids = HashMap::from([
            ("web".to_owned(), "n".repeat(64)),
            ("side".to_owned(), "s".repeat(64)),
        ]);
        let mut plan = CreatePlan {
            name: "tail".into(),
            body: ContainerCreateBody {
                host_config: Some(HostConfig {
                    network_mode: Some(format!("container:{}", "a".repeat(64))),
                    pid_mode: Some(format!("container:{}", &"b".repeat(64)[..12])),
                    ipc_mode: Some("shareable".into()),
                    links: Some(vec![
                        "web-ouroboros-old-op-1:db".into(),
                        "cache:cache".into(),
                    ]),
                    volumes_from: Some(vec![format!("{}:ro", "a".repeat(64)), "data".into()]),
                    ..HostConfig::default()
                }),
                ..ContainerCreateBody::default()
            },
            legacy_mac: None,
            extra_networks: Vec::new(),
            was_running: true,
            stop_signal: None,
            stop_timeout: None,
        };
        refer_to_new(&mut plan, &entry, &new_ids);
        let hc = plan.body.host_config.unwrap();
        assert_eq!(
            hc.network_mode,
            Some(format!("container:{}", "n".repeat(64)))
        );
        assert_eq!(hc.pid_mode, Some(format!("container:{}", "s".repeat(64))));
        assert_eq!(hc.ipc_mode.as_deref(), Some("shareable"));
        assert_eq!(
            hc.links,
            Some(vec!["web:db".to_owned(), "cache:cache".to_owned()])
        );
        assert_eq!(
            hc.volumes_from,
            Some(vec!["web:ro".to_owned(), "data".to_owned()])
        );
    }
}

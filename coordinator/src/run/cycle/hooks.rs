//! The cycle's own hook points, after detection: `updates_enumerated` once with the whole list
//! of updates (empty too), then on a dry run `dry_run_update` for each update it would make,
//! or, on a monitor-only coordinator, `notify_update` for each new image as it is announced
//! (once per digest, with the "updates available" notification, whichever cycle finds it).
//! Each is informational: none can veto.

use crate::detect::{Decision, Detection};
use crate::hooks::{Event, Point, Update};

use super::{Cycle, old_digest};

impl Cycle {
    /// Fires the detection points for `detections` (`fresh`: `host/container` keys announced
    /// by this cycle).
    pub(super) async fn fire_detection_hooks(
        &self,
        detections: &[Detection],
        containers: &[super::Unit<'_>],
        dry_run: bool,
        fresh: &[String],
    ) {
        if self.hooks.is_empty() {
            return;
        }
        let index = super::by_name(containers);
        let updates: Vec<Update> = detections
            .iter()
            .filter_map(|d| match &d.decision {
                Decision::Update { digest, .. } => Some(Update {
                    host: d.host.clone(),
                    container: d.container.clone(),
                    image: d.image.clone(),
                    old_digest: old_digest(
                        index.get(&(d.host.as_str(), d.container.as_str())).copied(),
                    ),
                    new_digest: digest.clone(),
                }),
                _ => None,
            })
            .collect();
        let listed = Event {
            updates: Some(updates.clone()),
            ..Event::default()
        };
        self.hooks.fire(Point::UpdatesEnumerated, &listed).await;
        if !dry_run {
            return;
        }
        for u in updates {
            let point = if self.monitor_only {
                if !fresh.contains(&format!("{}/{}", u.host, u.container)) {
                    continue;
                }
                Point::NotifyUpdate
            } else {
                Point::DryRunUpdate
            };
            let event = Event {
                host: u.host,
                container: u.container,
                image: u.image,
                old_digest: u.old_digest,
                new_digest: u.new_digest,
                ..Event::default()
            };
            self.hooks.fire(point, &event).await;
        }
    }
}

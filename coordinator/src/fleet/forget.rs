//! `hosts forget`: a host leaves the fleet view and the store; its live session is ended.

use std::collections::BTreeSet;

use super::Fleet;
use super::store::Batch;

impl Fleet {
    /// Removes `host` from the view and (queued) from the store: its record, inventory,
    /// last-seen time, announced and known-bad digests; its history stays. A live session is
    /// told to end. False when the view did not know the host.
    pub fn forget(&self, host: &str) -> bool {
        let known = {
            let mut hosts = self.lock();
            match hosts.remove(host) {
                Some(entry) => {
                    if let Some(session) = entry.session {
                        let _ = session.end.send(true);
                    }
                    true
                }
                None => false,
            }
        };
        let prefix = format!("{host}/");
        self.bad
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|key, _| !key.starts_with(&prefix));
        self.writer().batch(Batch {
            forget_hosts: BTreeSet::from([host.to_owned()]),
            ..Batch::default()
        });
        known
    }

    /// Whether the view knows `host` (connected or not).
    pub fn knows(&self, host: &str) -> bool {
        self.lock().contains_key(host)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use ouroboros_shared::host::HostName;
    use ouroboros_shared::inventory::{EngineInfo, Hello, HostMode};

    use super::*;
    use crate::fleet::store::{FleetStore, MemoryStore};

    #[test]
    fn a_forgotten_host_leaves_the_view_and_the_store_and_its_session_ends() {
        let store = Arc::new(MemoryStore::default());
        let fleet = Arc::new(Fleet::open(store.clone()).unwrap());
        let host = HostName::parse("web-1").unwrap();
        let hello = Hello {
            host: "web-1".into(),
            agent_version: "t".into(),
            engine: EngineInfo::default(),
            mode: HostMode::Standalone,
            container_id: None,
            agent_image: None,
            handover_op_id: None,
        };
        let (mut session, _) = fleet.connect(&host, &hello, "127.0.0.1:1".parse().unwrap(), 5);
        assert!(fleet.sync());
        assert_eq!(store.load_hosts().unwrap().len(), 1);
        assert!(fleet.forget("web-1"));
        assert!(
            *session.replaced.borrow_and_update(),
            "the session is told to end"
        );
        assert!(fleet.sync());
        assert!(fleet.hosts().is_empty());
        assert!(!fleet.knows("web-1"));
        assert!(store.load_hosts().unwrap().is_empty());
        assert!(!fleet.forget("web-1"), "unknown now");
        drop(session);
        assert!(
            fleet.hosts().is_empty(),
            "the ended session does not bring it back"
        );
    }
}

//! The fleet view: every host the coordinator has heard of, its agent's latest report and
//! whether it is connected now. Hosts and their containers are written through to the store,
//! so a restarted coordinator still lists every host (as disconnected, with its last-seen time)
//! until its agent reconnects.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use ouroboros_shared::host::HostName;
use ouroboros_shared::inventory::{ContainerInfo, Hello, Inventory};
use tokio::sync::watch;
use tracing::warn;

use crate::store::{FleetStore, HostRecord, StoreError};

/// Identifies one agent connection; a newer connection of the same host replaces it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionId(u64);

struct Session {
    id: SessionId,
    since_unix_ms: i64,
    /// Set to true to end the session (replaced by a newer one).
    end: watch::Sender<bool>,
}

struct HostEntry {
    record: HostRecord,
    session: Option<Session>,
    /// `last_seen` changed since the last write to the store.
    dirty: bool,
}

/// One host as shown to operators.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostView {
    pub record: HostRecord,
    pub connected: bool,
    pub connected_since_unix_ms: i64,
}

/// A live agent connection registered with [`Fleet::connect`].
pub struct SessionHandle {
    pub id: SessionId,
    /// Becomes true when a newer connection of the same host replaced this one.
    pub replaced: watch::Receiver<bool>,
}

/// The in-memory fleet view, written through to a [`FleetStore`].
pub struct Fleet {
    hosts: Mutex<BTreeMap<String, HostEntry>>,
    store: Arc<dyn FleetStore>,
    next_session: AtomicU64,
}

impl Fleet {
    /// Loads every stored host; all start disconnected.
    pub fn open(store: Arc<dyn FleetStore>) -> Result<Self, StoreError> {
        let hosts = store
            .load_hosts()?
            .into_iter()
            .map(|record| {
                let entry = HostEntry {
                    record,
                    session: None,
                    dirty: false,
                };
                (entry.record.host.clone(), entry)
            })
            .collect();
        Ok(Self {
            hosts: Mutex::new(hosts),
            store,
            next_session: AtomicU64::new(1),
        })
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<String, HostEntry>> {
        self.hosts.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers a new connection of `host` after a valid `Hello`. An older connection of the
    /// same host is told to end.
    pub fn connect(
        &self,
        host: &HostName,
        hello: &Hello,
        now_unix_ms: i64,
    ) -> Result<SessionHandle, StoreError> {
        let id = SessionId(self.next_session.fetch_add(1, Ordering::Relaxed));
        let (end, replaced) = watch::channel(false);
        let mut hosts = self.lock();
        let entry = hosts.entry(host.to_string()).or_insert_with(|| HostEntry {
            record: HostRecord {
                host: host.to_string(),
                agent_version: String::new(),
                engine: Default::default(),
                mode: hello.mode,
                last_seen_unix_ms: 0,
                inventory_at_unix_ms: 0,
                containers: Vec::new(),
            },
            session: None,
            dirty: false,
        });
        entry.record.agent_version = hello.agent_version.clone();
        entry.record.engine = hello.engine.clone();
        entry.record.mode = hello.mode;
        entry.record.last_seen_unix_ms = now_unix_ms;
        if let Some(old) = entry.session.replace(Session {
            id,
            since_unix_ms: now_unix_ms,
            end,
        }) {
            let _ = old.end.send(true);
        }
        entry.dirty = false;
        if let Err(e) = self.store.save_hosts(&[&entry.record]) {
            // The connection is refused: do not show it as connected.
            entry.session = None;
            return Err(e);
        }
        Ok(SessionHandle { id, replaced })
    }

    /// Records a full inventory from the current session of `host`. Reports from a replaced
    /// session are ignored (returns false).
    pub fn inventory(
        &self,
        host: &HostName,
        session: SessionId,
        inventory: Inventory,
        now_unix_ms: i64,
    ) -> Result<bool, StoreError> {
        let mut hosts = self.lock();
        let Some(entry) = current(&mut hosts, host, session) else {
            return Ok(false);
        };
        entry.record.containers = inventory.containers;
        entry.record.inventory_at_unix_ms = inventory.observed_at_unix_ms;
        entry.record.last_seen_unix_ms = now_unix_ms;
        entry.dirty = false;
        self.store.save_hosts(&[&entry.record])?;
        Ok(true)
    }

    /// Records that the current session of `host` is alive (heartbeat). Kept in memory and
    /// written by the next [`Fleet::flush`].
    pub fn seen(&self, host: &HostName, session: SessionId, now_unix_ms: i64) {
        let mut hosts = self.lock();
        if let Some(entry) = current(&mut hosts, host, session) {
            entry.record.last_seen_unix_ms = now_unix_ms;
            entry.dirty = true;
        }
    }

    /// Ends the session of `host` if it is still the current one.
    pub fn disconnect(&self, host: &HostName, session: SessionId, now_unix_ms: i64) {
        let mut hosts = self.lock();
        if let Some(entry) = current(&mut hosts, host, session) {
            entry.session = None;
            entry.record.last_seen_unix_ms = now_unix_ms;
            entry.dirty = false;
            if let Err(error) = self.store.save_hosts(&[&entry.record]) {
                warn!(host = %host, %error, "Cannot store the host's last-seen time.");
                entry.dirty = true;
            }
        }
    }

    /// Writes heartbeat times not yet stored.
    pub fn flush(&self) -> Result<(), StoreError> {
        let mut hosts = self.lock();
        let dirty: Vec<&HostRecord> = hosts
            .values()
            .filter(|e| e.dirty)
            .map(|e| &e.record)
            .collect();
        self.store.save_hosts(&dirty)?;
        for entry in hosts.values_mut() {
            entry.dirty = false;
        }
        Ok(())
    }

    /// Every host, sorted by name.
    pub fn hosts(&self) -> Vec<HostView> {
        self.lock()
            .values()
            .map(|e| HostView {
                record: e.record.clone(),
                connected: e.session.is_some(),
                connected_since_unix_ms: e.session.as_ref().map_or(0, |s| s.since_unix_ms),
            })
            .collect()
    }

    /// Containers of one host (None if the host is unknown), or of all hosts.
    pub fn containers(&self, host: Option<&HostName>) -> Option<Vec<(String, ContainerInfo)>> {
        let hosts = self.lock();
        let pick = |e: &HostEntry| {
            e.record
                .containers
                .iter()
                .map(|c| (e.record.host.clone(), c.clone()))
                .collect::<Vec<_>>()
        };
        match host {
            Some(h) => hosts.get(h.as_str()).map(pick),
            None => Some(hosts.values().flat_map(pick).collect()),
        }
    }
}

fn current<'a>(
    hosts: &'a mut BTreeMap<String, HostEntry>,
    host: &HostName,
    session: SessionId,
) -> Option<&'a mut HostEntry> {
    hosts
        .get_mut(host.as_str())
        .filter(|e| e.session.as_ref().is_some_and(|s| s.id == session))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemoryStore;
    use ouroboros_shared::inventory::{ContainerState, EngineInfo, Health, HostMode};

    fn hello(host: &str) -> Hello {
        Hello {
            host: host.into(),
            agent_version: "0.1.0".into(),
            engine: EngineInfo {
                version: "20.10.24".into(),
                api_version: "1.41".into(),
                ..Default::default()
            },
            mode: HostMode::Standalone,
        }
    }

    fn inventory(names: &[&str]) -> Inventory {
        Inventory {
            containers: names
                .iter()
                .map(|n| ContainerInfo {
                    id: format!("id-{n}"),
                    name: (*n).into(),
                    image: "img:1".into(),
                    image_id: "sha256:1".into(),
                    repo_digests: vec![],
                    labels: Default::default(),
                    state: ContainerState::Running,
                    health: Health::None,
                    restart_count: 0,
                    created_unix: 1,
                })
                .collect(),
            swarm_manager: false,
            observed_at_unix_ms: 5,
        }
    }

    #[test]
    fn hosts_survive_a_reopen_as_disconnected_with_last_seen() {
        let store = Arc::new(MemoryStore::default());
        let fleet = Fleet::open(store.clone()).unwrap();
        let h = HostName::parse("h1").unwrap();
        let s = fleet.connect(&h, &hello("h1"), 10).unwrap();
        assert!(
            fleet
                .inventory(&h, s.id, inventory(&["a", "b"]), 20)
                .unwrap()
        );
        fleet.seen(&h, s.id, 30);
        fleet.flush().unwrap();
        assert!(fleet.hosts()[0].connected);

        let reopened = Fleet::open(store).unwrap();
        let hosts = reopened.hosts();
        assert_eq!(hosts.len(), 1);
        assert!(!hosts[0].connected);
        assert_eq!(hosts[0].record.last_seen_unix_ms, 30);
        assert_eq!(hosts[0].record.engine.api_version, "1.41");
        assert_eq!(reopened.containers(Some(&h)).unwrap().len(), 2);
    }

    #[test]
    fn a_replaced_session_is_told_to_end_and_cannot_change_the_view() {
        let fleet = Fleet::open(Arc::new(MemoryStore::default())).unwrap();
        let h = HostName::parse("h1").unwrap();
        let old = fleet.connect(&h, &hello("h1"), 10).unwrap();
        let new = fleet.connect(&h, &hello("h1"), 11).unwrap();
        assert!(*old.replaced.borrow());
        assert!(!*new.replaced.borrow());
        assert!(!fleet.inventory(&h, old.id, inventory(&["x"]), 12).unwrap());
        fleet.disconnect(&h, old.id, 13);
        assert!(
            fleet.hosts()[0].connected,
            "old session disconnected the new one"
        );
        fleet.disconnect(&h, new.id, 14);
        let view = &fleet.hosts()[0];
        assert!(!view.connected);
        assert_eq!(view.record.last_seen_unix_ms, 14);
    }

    #[test]
    fn unknown_host_has_no_containers_and_all_hosts_are_listed() {
        let fleet = Fleet::open(Arc::new(MemoryStore::default())).unwrap();
        for name in ["b", "a"] {
            let h = HostName::parse(name).unwrap();
            let s = fleet.connect(&h, &hello(name), 1).unwrap();
            fleet.inventory(&h, s.id, inventory(&["c1"]), 2).unwrap();
        }
        assert!(
            fleet
                .containers(Some(&HostName::parse("zz").unwrap()))
                .is_none()
        );
        let all = fleet.containers(None).unwrap();
        assert_eq!(
            all.iter().map(|(h, _)| h.as_str()).collect::<Vec<_>>(),
            ["a", "b"]
        );
    }

    #[test]
    fn a_store_failure_is_reported_not_swallowed() {
        let store = Arc::new(MemoryStore::default());
        let fleet = Fleet::open(store.clone()).unwrap();
        let h = HostName::parse("h1").unwrap();
        store.fail_writes(true);
        assert!(fleet.connect(&h, &hello("h1"), 1).is_err());
        assert!(!fleet.hosts()[0].connected);
    }
}

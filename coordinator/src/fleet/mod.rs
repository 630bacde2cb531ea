//! The fleet view: every host the coordinator has heard of, its agent's latest report and
//! whether it is connected now. Changes go to the store through the [`StoreWriter`] thread,
//! so a restarted coordinator still lists every host (as disconnected, with its last-seen
//! time) until its agent reconnects, and no disk write ever runs under the fleet's lock.

pub mod certs;
mod forget;
pub mod store;
pub mod tokens;
pub mod writer;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use ouroboros_shared::host::HostName;
use ouroboros_shared::inventory::{ContainerInfo, Hello, Inventory, ServiceInfo};
use ouroboros_shared::time_fmt::now_unix_ms;
use tokio::sync::watch;

use crate::fleet::store::{Batch, FleetStore, HostRecord, RolloutHead, RolloutSummary, StoreError};
use crate::fleet::writer::StoreWriter;
use crate::plan::rollout::{BadDigest, HistoryEntry, Rollout};

/// Identifies one agent connection; a newer connection of the same host replaces it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionId(u64);

impl SessionId {
    /// A fixed id for unit tests of other modules.
    #[cfg(test)]
    pub fn for_tests(n: u64) -> Self {
        Self(n)
    }
}

struct Session {
    id: SessionId,
    peer: SocketAddr,
    since_unix_ms: i64,
    /// Set to true to end the session (replaced by a newer one).
    end: watch::Sender<bool>,
    /// A full inventory came on this session.
    reported: bool,
}

struct HostEntry {
    record: HostRecord,
    session: Option<Session>,
    /// `last_seen` changed since it was last queued for the store.
    seen_dirty: bool,
}

/// One host as shown to operators.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostView {
    pub record: HostRecord,
    pub connected: bool,
    pub connected_since_unix_ms: i64,
    /// The current connection has sent a full inventory.
    pub reported: bool,
}

/// Whether a host's agent is connected, and has reported on this connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostLink {
    pub host: String,
    pub connected: bool,
    pub reported: bool,
    /// The agent's own container id; empty outside a container.
    pub agent_container: String,
}

/// A live agent connection registered with [`Fleet::connect`]. Dropping it marks the host
/// disconnected (unless a newer connection replaced it), whatever ends the connection.
pub struct SessionGuard {
    fleet: Arc<Fleet>,
    host: HostName,
    pub id: SessionId,
    /// Becomes true when a newer connection of the same host replaced this one.
    pub replaced: watch::Receiver<bool>,
}

impl Drop for SessionGuard {
    fn drop(&mut self) {
        self.fleet.disconnect(&self.host, self.id, now_unix_ms());
    }
}

/// The setting that holds the operator's pause reason.
const SETTING_PAUSED: &str = "paused";

/// How an operator's pause reads in reasons: "paused by the operator", and their reason if
/// they gave one.
pub fn paused_text(why: &str) -> String {
    match why.trim() {
        "" | "paused by the operator" => "paused by the operator".to_owned(),
        why => format!("paused by the operator: {why}"),
    }
}

/// The in-memory fleet view, written through to a [`FleetStore`].
pub struct Fleet {
    hosts: Mutex<BTreeMap<String, HostEntry>>,
    writer: Mutex<StoreWriter>,
    next_session: AtomicU64,
    /// For reads of rollouts and history (writes go through the writer).
    store: Arc<dyn FleetStore>,
    /// Why the operator paused updates, if they did (stored as the `paused` setting).
    paused: Mutex<Option<String>>,
    /// Known-bad digests by `host/container` (stored; kept here so that a read follows the
    /// last write at once).
    bad: Mutex<BTreeMap<String, BadDigest>>,
}

impl Fleet {
    /// Loads every stored host (all start disconnected) and starts the store writer.
    pub fn open(store: Arc<dyn FleetStore>) -> Result<Self, StoreError> {
        let hosts = store
            .load_hosts()?
            .into_iter()
            .map(|record| {
                let entry = HostEntry {
                    record,
                    session: None,
                    seen_dirty: false,
                };
                (entry.record.host.clone(), entry)
            })
            .collect();
        let paused = store.load_settings()?.remove(SETTING_PAUSED);
        let bad = store.load_bad_digests()?;
        let writer = StoreWriter::spawn(store.clone()).map_err(|source| StoreError::DataDir {
            path: "store writer thread".into(),
            source,
        })?;
        Ok(Self {
            hosts: Mutex::new(hosts),
            writer: Mutex::new(writer),
            next_session: AtomicU64::new(1),
            paused: Mutex::new(paused),
            bad: Mutex::new(bad),
            store,
        })
    }

    /// Stores `rollout` (and outcomes) and waits until it is on disk: false when the write
    /// failed (it is retried, but the caller must not act on it yet). Blocking.
    pub fn save_rollout(&self, rollout: &Rollout, history: Vec<HistoryEntry>) -> bool {
        let writer = self.writer();
        writer.batch(rollout_batch(Arc::new(rollout.clone()), history));
        writer.sync()
    }

    /// [`Fleet::save_rollout`] for the async runtime, without a copy of `rollout` or a
    /// blocking thread: the store writer answers when it is on disk.
    pub async fn store_rollout(&self, rollout: Arc<Rollout>, history: Vec<HistoryEntry>) -> bool {
        let stored = {
            let writer = self.writer();
            writer.batch(rollout_batch(rollout, history));
            writer.synced()
        };
        stored.await.unwrap_or(false)
    }

    /// A stored setting.
    pub fn setting(&self, key: &str) -> Option<String> {
        self.store.load_settings().ok()?.remove(key)
    }

    /// Queues a setting for the store.
    pub fn save_setting(&self, key: &str, value: String) {
        let mut batch = Batch::default();
        batch.settings.insert(key.to_owned(), Some(value));
        self.writer().batch(batch);
    }

    /// Why updates are paused, if they are.
    pub fn paused(&self) -> Option<String> {
        self.paused
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Pauses (`Some(reason)`) or resumes updates, and stores it. Blocking.
    pub fn set_paused(&self, reason: Option<String>) -> bool {
        *self.paused.lock().unwrap_or_else(|p| p.into_inner()) = reason.clone();
        let mut batch = Batch::default();
        batch.settings.insert(SETTING_PAUSED.to_owned(), reason);
        let writer = self.writer();
        writer.batch(batch);
        writer.sync()
    }

    /// Removes outcomes that finished before `before_ms`.
    pub fn prune_history(&self, before_ms: i64) {
        self.writer().batch(Batch {
            history_before: Some(before_ms),
            ..Batch::default()
        });
    }

    /// Records that `digest` was announced for `host/container`.
    pub fn announced(&self, key: String, digest: String) {
        let mut batch = Batch::default();
        batch.announced.insert(key, digest);
        self.writer().batch(batch);
    }

    /// Stored rollouts, newest first. Reads them whole: for what runs often (cycles, scrapes,
    /// a runner's start) [`Fleet::rollout_heads`] and [`Fleet::rollout`] read only what they
    /// need.
    pub fn rollouts(&self) -> Result<Vec<Rollout>, StoreError> {
        let mut all = self.store.load_rollouts()?;
        all.sort_by(|a, b| b.created_ms.cmp(&a.created_ms).then(b.id.cmp(&a.id)));
        Ok(all)
    }

    /// Stored rollouts without their targets, newest first.
    pub fn rollout_heads(&self) -> Result<Vec<RolloutHead>, StoreError> {
        let mut all = self.store.load_rollout_heads()?;
        all.sort_by(|a, b| b.created_ms.cmp(&a.created_ms).then(b.id.cmp(&a.id)));
        Ok(all)
    }

    /// Stored rollouts' summaries, newest first.
    pub fn rollout_summaries(&self) -> Result<Vec<RolloutSummary>, StoreError> {
        let mut all = self.store.load_rollout_summaries()?;
        all.sort_by(|a, b| (b.head.created_ms, &b.head.id).cmp(&(a.head.created_ms, &a.head.id)));
        Ok(all)
    }

    /// One stored rollout.
    pub fn rollout(&self, id: &str) -> Result<Option<Rollout>, StoreError> {
        self.store.load_rollout(id)
    }

    /// The newest stored rollout whose head `matches`.
    pub fn newest_rollout(
        &self,
        matches: impl Fn(&RolloutHead) -> bool,
    ) -> Result<Option<Rollout>, StoreError> {
        match self.rollout_heads()?.into_iter().find(matches) {
            Some(head) => self.rollout(&head.id),
            None => Ok(None),
        }
    }

    /// Stored outcomes, oldest first.
    pub fn history(&self) -> Result<Vec<HistoryEntry>, StoreError> {
        self.store.load_history()
    }

    /// Known-bad digests, by `host/container`.
    pub fn bad_digests(&self) -> BTreeMap<String, BadDigest> {
        self.bad.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Records (`Some`) or forgets (`None`) the known-bad digest of each `host/container`.
    pub fn set_bad_digests(&self, changes: BTreeMap<String, Option<BadDigest>>) {
        if changes.is_empty() {
            return;
        }
        {
            let mut bad = self.bad.lock().unwrap_or_else(|p| p.into_inner());
            for (key, value) in &changes {
                match value {
                    Some(v) => {
                        bad.insert(key.clone(), v.clone());
                    }
                    None => {
                        bad.remove(key);
                    }
                }
            }
        }
        self.writer().batch(Batch {
            bad_digests: changes,
            ..Batch::default()
        });
    }

    /// Adds outcomes to the history (manual updates).
    pub fn record_history(&self, entries: Vec<HistoryEntry>) {
        self.writer().batch(Batch {
            history: entries,
            ..Batch::default()
        });
    }

    /// Digests announced so far, by `host/container`.
    pub fn announced_digests(&self) -> Result<BTreeMap<String, String>, StoreError> {
        self.store.load_announced()
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<String, HostEntry>> {
        self.hosts.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn writer(&self) -> MutexGuard<'_, StoreWriter> {
        self.writer.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers a new connection of `host` after a valid `Hello`. An older connection of the
    /// same host is told to end; its peer address is returned.
    pub fn connect(
        self: &Arc<Self>,
        host: &HostName,
        hello: &Hello,
        peer: SocketAddr,
        now_unix_ms: i64,
    ) -> (SessionGuard, Option<SocketAddr>) {
        let id = SessionId(self.next_session.fetch_add(1, Ordering::Relaxed));
        let (end, replaced) = watch::channel(false);
        let (record, old_peer) = {
            let mut hosts = self.lock();
            let entry = hosts.entry(host.to_string()).or_insert_with(|| HostEntry {
                record: HostRecord {
                    host: host.to_string(),
                    agent_version: String::new(),
                    agent_image: String::new(),
                    agent_container: String::new(),
                    engine: Default::default(),
                    mode: hello.mode,
                    last_seen_unix_ms: 0,
                    inventory_at_unix_ms: 0,
                    containers: Arc::default(),
                    cluster_id: String::new(),
                    services: Vec::new(),
                },
                session: None,
                seen_dirty: false,
            });
            entry.record.agent_version = hello.agent_version.clone();
            entry.record.agent_image = hello.agent_image.clone().unwrap_or_default();
            entry.record.agent_container = hello.container_id.clone().unwrap_or_default();
            entry.record.engine = hello.engine.clone();
            entry.record.mode = hello.mode;
            entry.record.last_seen_unix_ms = now_unix_ms;
            entry.seen_dirty = false;
            let old = entry.session.replace(Session {
                id,
                peer,
                since_unix_ms: now_unix_ms,
                end,
                reported: false,
            });
            let old_peer = old.map(|old| {
                let _ = old.end.send(true);
                old.peer
            });
            (entry.record.clone(), old_peer)
        };
        self.writer().host(record);
        let guard = SessionGuard {
            fleet: self.clone(),
            host: host.clone(),
            id,
            replaced,
        };
        (guard, old_peer)
    }

    /// Records a full inventory from the current session of `host`. Reports from a replaced
    /// session, and reports taken before the one already recorded for this session (an agent
    /// sends one with each command's answer, which a slower one started earlier may follow),
    /// are ignored (returns false).
    pub fn inventory(
        &self,
        host: &HostName,
        session: SessionId,
        inventory: Inventory,
        now_unix_ms: i64,
    ) -> bool {
        let record = {
            let mut hosts = self.lock();
            let Some(entry) = current(&mut hosts, host, session) else {
                return false;
            };
            let reported = entry.session.as_ref().is_some_and(|s| s.reported);
            if reported && inventory.observed_at_unix_ms < entry.record.inventory_at_unix_ms {
                return false;
            }
            entry.record.containers = inventory.containers.into();
            entry.record.mode = inventory.mode;
            entry.record.cluster_id = inventory.cluster_id;
            entry.record.services = inventory.services;
            entry.record.inventory_at_unix_ms = inventory.observed_at_unix_ms;
            entry.record.last_seen_unix_ms = now_unix_ms;
            entry.seen_dirty = false;
            if let Some(s) = entry.session.as_mut() {
                s.reported = true;
            }
            entry.record.clone()
        };
        self.writer().host(record);
        true
    }

    /// Records that the current session of `host` is alive (heartbeat). Stored by the next
    /// [`Fleet::flush_last_seen`].
    pub fn seen(&self, host: &HostName, session: SessionId, now_unix_ms: i64) {
        let mut hosts = self.lock();
        if let Some(entry) = current(&mut hosts, host, session) {
            entry.record.last_seen_unix_ms = now_unix_ms;
            entry.seen_dirty = true;
        }
    }

    /// Ends the session of `host` if it is still the current one.
    fn disconnect(&self, host: &HostName, session: SessionId, now_unix_ms: i64) {
        let mut hosts = self.lock();
        if let Some(entry) = current(&mut hosts, host, session) {
            entry.session = None;
            entry.record.last_seen_unix_ms = now_unix_ms;
            entry.seen_dirty = false;
            let seen = [(host.to_string(), now_unix_ms)];
            drop(hosts);
            self.writer().last_seen(seen);
        }
    }

    /// Queues the heartbeat times not yet stored.
    pub fn flush_last_seen(&self) {
        let times: Vec<(String, i64)> = {
            let mut hosts = self.lock();
            hosts
                .values_mut()
                .filter(|e| e.seen_dirty)
                .map(|e| {
                    e.seen_dirty = false;
                    (e.record.host.clone(), e.record.last_seen_unix_ms)
                })
                .collect()
        };
        self.writer().last_seen(times);
    }

    /// Blocks until everything so far is stored; false if the store failed.
    pub fn sync(&self) -> bool {
        self.writer().sync()
    }

    /// Stores what is pending and stops the writer.
    pub fn close(&self) {
        self.flush_last_seen();
        self.writer().close();
    }

    /// Every host's link: connected, reported; by name. Without the records, so that what
    /// runs often (each turn of a rollout, the agent-lost watch) does not copy the whole
    /// fleet's inventories.
    pub fn links(&self) -> Vec<HostLink> {
        self.lock()
            .values()
            .map(|e| HostLink {
                host: e.record.host.clone(),
                connected: e.session.is_some(),
                reported: e.session.as_ref().is_some_and(|s| s.reported),
                agent_container: e.record.agent_container.clone(),
            })
            .collect()
    }

    /// Every host, sorted by name.
    pub fn hosts(&self) -> Vec<HostView> {
        self.lock()
            .values()
            .map(|e| HostView {
                record: e.record.clone(),
                connected: e.session.is_some(),
                connected_since_unix_ms: e.session.as_ref().map_or(0, |s| s.since_unix_ms),
                reported: e.session.as_ref().is_some_and(|s| s.reported),
            })
            .collect()
    }

    /// Containers of one host (None if the host is unknown), or of all hosts.
    /// The Swarm services of the fleet, each once, with the manager host to update it
    /// through: of the managers reporting a swarm, the first connected one that reported (by
    /// name), else the first by name (several managers of one swarm report the same
    /// services).
    pub fn services(&self) -> Vec<(String, ServiceInfo)> {
        let hosts = self.lock();
        let mut by_cluster: BTreeMap<&str, (bool, &HostEntry)> = BTreeMap::new();
        for e in hosts.values() {
            if e.record.cluster_id.is_empty() {
                continue;
            }
            let live = e.session.as_ref().is_some_and(|s| s.reported);
            let chosen = by_cluster
                .entry(e.record.cluster_id.as_str())
                .or_insert((live, e));
            // Names iterate in order: a later one wins only by being live.
            if live && !chosen.0 {
                *chosen = (live, e);
            }
        }
        by_cluster
            .into_values()
            .flat_map(|(_, e)| {
                e.record
                    .services
                    .iter()
                    .map(|s| (e.record.host.clone(), s.clone()))
            })
            .collect()
    }

    /// Every host's containers by host name, shared with the fleet view (not copied).
    pub fn inventories(&self) -> Vec<(String, Arc<[ContainerInfo]>)> {
        self.lock()
            .values()
            .map(|e| (e.record.host.clone(), e.record.containers.clone()))
            .collect()
    }

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

fn rollout_batch(rollout: Arc<Rollout>, history: Vec<HistoryEntry>) -> Batch {
    let mut batch = Batch::default();
    batch.rollouts.insert(rollout.id.clone(), rollout);
    batch.history = history;
    batch
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
mod tests;

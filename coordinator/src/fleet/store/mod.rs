//! The coordinator's embedded store, behind [`FleetStore`] so it stays replaceable.
//!
//! [`RedbStore`] keeps one JSON record per host in a redb table, and the hosts' last-seen times
//! (written far more often) in a table of their own. redb rather than sled: sled's last release
//! is from 2021 and its README calls it beta with an on-disk format still to change, while redb
//! has a stable file format and crash-safe ACID commits.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::path::{Path, PathBuf};

use ouroboros_shared::inventory::{ContainerInfo, EngineInfo, HostMode, ServiceInfo};

use crate::plan::rollout::{BadDigest, HistoryEntry, Rollout, RolloutState, TargetState};
use redb::{Database, ReadableDatabase, TableDefinition};
use serde::{Deserialize, Serialize};

mod memory;
pub use memory::MemoryStore;

/// Host records by host name, JSON values.
const HOSTS: TableDefinition<&str, &[u8]> = TableDefinition::new("hosts_v1");
/// Last-seen times by host name (unix ms).
const LAST_SEEN: TableDefinition<&str, i64> = TableDefinition::new("last_seen_v1");
/// Rollouts by id, JSON values.
const ROLLOUTS: TableDefinition<&str, &[u8]> = TableDefinition::new("rollouts_v1");
/// Outcomes by `finished_ms (20 digits)/host/container/rollout`, JSON values.
const HISTORY: TableDefinition<&str, &[u8]> = TableDefinition::new("history_v1");
/// The last digest announced per `host/container`.
const ANNOUNCED: TableDefinition<&str, &str> = TableDefinition::new("announced_v1");
/// Known-bad digests by `host/container`, JSON values.
const BAD_DIGESTS: TableDefinition<&str, &[u8]> = TableDefinition::new("bad_digests_v1");
/// Operator settings kept across restarts (`paused`).
const SETTINGS: TableDefinition<&str, &str> = TableDefinition::new("settings_v1");
/// File name of the database inside the data dir.
pub const DB_FILE: &str = "ouroboros.redb";
/// Lock file that keeps a second coordinator off the same data dir.
const LOCK_FILE: &str = "coordinator.lock";

/// What the coordinator remembers of one host across restarts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostRecord {
    pub host: String,
    pub agent_version: String,
    /// The image the agent's container runs (`repo:tag@sha256:…`); empty outside a container.
    #[serde(default)]
    pub agent_image: String,
    /// The agent's own container id; empty outside a container.
    #[serde(default)]
    pub agent_container: String,
    pub engine: EngineInfo,
    pub mode: HostMode,
    pub last_seen_unix_ms: i64,
    pub inventory_at_unix_ms: i64,
    /// Shared, not copied, by the fleet view's readers (a cycle, `/metrics`) and the store
    /// writer: at 50,000 containers each copy was tens of MiB.
    pub containers: std::sync::Arc<[ContainerInfo]>,
    /// On a Swarm manager: its swarm's id and services (as of the last inventory).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub cluster_id: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub services: Vec<ServiceInfo>,
}

/// Store failures, each naming what was being done.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot create data dir {path}: {source}")]
    DataDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("data dir {0} is in use by another coordinator")]
    Locked(PathBuf),
    #[error("cannot open store {path}: {source}")]
    Open {
        path: PathBuf,
        source: Box<redb::Error>,
    },
    #[error("cannot {op} in the store: {source}")]
    Db {
        op: &'static str,
        source: Box<redb::Error>,
    },
    #[error("corrupt record for host {host}: {source}")]
    Corrupt {
        host: String,
        source: serde_json::Error,
    },
    #[error("corrupt {what} record {key}: {source}")]
    CorruptRecord {
        what: &'static str,
        key: String,
        source: serde_json::Error,
    },
}

/// Changes to write in one transaction; later changes to the same host replace earlier ones.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Batch {
    pub hosts: BTreeMap<String, HostRecord>,
    pub last_seen: BTreeMap<String, i64>,
    /// Rollouts by id (the latest state wins); shared with the runner, which keeps running
    /// the rollout while the writer stores it.
    pub rollouts: BTreeMap<String, std::sync::Arc<Rollout>>,
    /// Outcomes to add.
    pub history: Vec<HistoryEntry>,
    /// History older than this (unix ms) is removed, and so are rollouts that ended before
    /// it (see [`rollouts_to_prune`]).
    pub history_before: Option<i64>,
    /// Digests announced, by `host/container`.
    pub announced: BTreeMap<String, String>,
    /// Settings to set (`Some`) or clear (`None`).
    pub settings: BTreeMap<String, Option<String>>,
    /// Known-bad digests to record (`Some`) or forget (`None`), by `host/container`.
    pub bad_digests: BTreeMap<String, Option<BadDigest>>,
    /// Hosts forgotten (`hosts forget`): their record, last-seen time, announced and known-bad
    /// digests go (their history stays).
    pub forget_hosts: BTreeSet<String>,
}

impl Batch {
    pub fn is_empty(&self) -> bool {
        self.hosts.is_empty()
            && self.last_seen.is_empty()
            && self.rollouts.is_empty()
            && self.history.is_empty()
            && self.history_before.is_none()
            && self.announced.is_empty()
            && self.settings.is_empty()
            && self.bad_digests.is_empty()
            && self.forget_hosts.is_empty()
    }

    /// Adds `newer` on top of this batch.
    pub fn merge(&mut self, newer: Batch) {
        for host in &newer.forget_hosts {
            self.hosts.remove(host);
            self.last_seen.remove(host);
        }
        for host in newer.hosts.keys() {
            self.forget_hosts.remove(host);
        }
        self.forget_hosts.extend(newer.forget_hosts);
        self.hosts.extend(newer.hosts);
        self.last_seen.extend(newer.last_seen);
        self.rollouts.extend(newer.rollouts);
        self.history.extend(newer.history);
        self.history_before = self.history_before.max(newer.history_before);
        self.announced.extend(newer.announced);
        self.settings.extend(newer.settings);
        self.bad_digests.extend(newer.bad_digests);
    }
}

/// redb's page cache. Its default (1 GiB) is a ceiling, not a reservation, but every page
/// written stays cached under it: with 1,000 hosts the coordinator kept some 100 MiB of store
/// pages it never reads again (the fleet view is in memory; the store is read at start). The
/// interior pages of the hosts and rollouts tables fit many times over. 8 MiB rather than 16:
/// at 1,000 agents the 5,000-target rollout took as long, and the peak RSS fell by 15 MiB.
const CACHE_BYTES: usize = 8 * 1024 * 1024;

/// Ended rollouts kept at most, whatever their age: the newest ones (a rollout is kept while it
/// runs or is paused, however old).
pub const MAX_ENDED_ROLLOUTS: usize = 1000;

/// The ids of the rollouts a prune at `before_ms` removes: those that ended (completed, rolled
/// back, cancelled) and were last changed before `before_ms`, and the ended ones beyond the
/// newest [`MAX_ENDED_ROLLOUTS`]. Without this the table grows by a rollout per cycle with an
/// update, for ever, and every scrape and `rollouts` reads it whole.
pub(super) fn rollouts_to_prune<'a>(
    rollouts: impl IntoIterator<Item = &'a RolloutHead>,
    before_ms: i64,
) -> Vec<String> {
    let mut ended: Vec<&RolloutHead> = rollouts
        .into_iter()
        .filter(|r| r.state.is_ended())
        .collect();
    let changed = |r: &RolloutHead| r.updated_ms.max(r.created_ms);
    // Newest first.
    ended.sort_by(|a, b| (changed(b), &b.id).cmp(&(changed(a), &a.id)));
    ended
        .iter()
        .enumerate()
        .filter(|(i, r)| *i >= MAX_ENDED_ROLLOUTS || changed(r) < before_ms)
        .map(|(_, r)| r.id.clone())
        .collect()
}

pub(super) fn history_key(e: &HistoryEntry) -> String {
    format!(
        "{:020}/{}/{}/{}",
        e.finished_ms.max(0),
        e.host,
        e.container,
        e.rollout
    )
}

/// A stored rollout without its targets: enough to count rollouts by state and to find a
/// paused or running one. Read without the targets (serde skips them), since the store keeps up
/// to [`MAX_ENDED_ROLLOUTS`] rollouts of up to thousands of targets each, and reading them all
/// whole at every cycle and scrape cost hundreds of MiB at fleet scale.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct RolloutHead {
    pub id: String,
    pub created_ms: i64,
    pub updated_ms: i64,
    pub state: RolloutState,
}

impl From<&Rollout> for RolloutHead {
    fn from(r: &Rollout) -> Self {
        Self {
            id: r.id.clone(),
            created_ms: r.created_ms,
            updated_ms: r.updated_ms,
            state: r.state.clone(),
        }
    }
}

/// A stored rollout as `rollouts` lists it: its head, and how many targets it has and how many
/// are updated, read without the targets' details.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RolloutSummary {
    pub head: RolloutHead,
    pub targets_total: usize,
    pub targets_updated: usize,
}

impl RolloutSummary {
    fn new<'a>(head: RolloutHead, targets: impl IntoIterator<Item = &'a TargetState>) -> Self {
        let (mut targets_total, mut targets_updated) = (0, 0);
        for state in targets {
            targets_total += 1;
            targets_updated += usize::from(matches!(state, TargetState::Updated { .. }));
        }
        Self {
            head,
            targets_total,
            targets_updated,
        }
    }
}

impl From<&Rollout> for RolloutSummary {
    fn from(r: &Rollout) -> Self {
        Self::new(r.into(), r.targets.iter().map(|t| &t.state))
    }
}

/// What a summary reads of a stored rollout: its head and its targets' states (serde skips
/// the rest).
#[derive(Deserialize)]
struct SummaryRecord {
    #[serde(flatten)]
    head: RolloutHead,
    targets: Vec<TargetRecord>,
}

#[derive(Deserialize)]
struct TargetRecord {
    state: TargetState,
}

impl From<SummaryRecord> for RolloutSummary {
    fn from(r: SummaryRecord) -> Self {
        Self::new(r.head, r.targets.iter().map(|t| &t.state))
    }
}

/// Persistence of the fleet view.
pub trait FleetStore: Send + Sync {
    /// Every stored host, with its latest stored last-seen time.
    fn load_hosts(&self) -> Result<Vec<HostRecord>, StoreError>;
    /// Writes the batch in one transaction.
    fn save(&self, batch: &Batch) -> Result<(), StoreError>;
    /// Every stored rollout.
    fn load_rollouts(&self) -> Result<Vec<Rollout>, StoreError>;
    /// Every stored rollout's head (see [`RolloutHead`]).
    fn load_rollout_heads(&self) -> Result<Vec<RolloutHead>, StoreError>;
    /// One stored rollout, by id.
    fn load_rollout(&self, id: &str) -> Result<Option<Rollout>, StoreError>;
    /// Every stored rollout's summary (see [`RolloutSummary`]).
    fn load_rollout_summaries(&self) -> Result<Vec<RolloutSummary>, StoreError>;
    /// Every stored outcome, oldest first.
    fn load_history(&self) -> Result<Vec<HistoryEntry>, StoreError>;
    /// The digests announced, by `host/container`.
    fn load_announced(&self) -> Result<BTreeMap<String, String>, StoreError>;
    /// Operator settings.
    fn load_settings(&self) -> Result<BTreeMap<String, String>, StoreError>;
    /// Known-bad digests, by `host/container`.
    fn load_bad_digests(&self) -> Result<BTreeMap<String, BadDigest>, StoreError>;
}

/// The redb-backed store of a data dir. Holds an exclusive lock on the dir while open.
pub struct RedbStore {
    pub(super) db: Database, // also for the join tokens (`tokens.rs`)
    _lock: File,
}

pub(crate) fn db_err<E: Into<redb::Error>>(op: &'static str) -> impl FnOnce(E) -> StoreError {
    move |e| StoreError::Db {
        op,
        source: Box::new(e.into()),
    }
}

impl RedbStore {
    /// Opens (or creates) the store in `data_dir`.
    pub fn open(data_dir: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(data_dir).map_err(|source| StoreError::DataDir {
            path: data_dir.to_owned(),
            source,
        })?;
        let lock_path = data_dir.join(LOCK_FILE);
        let lock = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|source| StoreError::DataDir {
                path: lock_path.clone(),
                source,
            })?;
        if lock.try_lock().is_err() {
            return Err(StoreError::Locked(data_dir.to_owned()));
        }
        let path = data_dir.join(DB_FILE);
        let db = Database::builder()
            .set_cache_size(CACHE_BYTES)
            .create(&path)
            .map_err(|e| StoreError::Open {
                path: path.clone(),
                source: Box::new(e.into()),
            })?;
        // Create the tables so that reads never meet a missing table.
        let txn = db.begin_write().map_err(db_err("begin a transaction"))?;
        txn.open_table(HOSTS)
            .map_err(db_err("create the hosts table"))?;
        txn.open_table(LAST_SEEN)
            .map_err(db_err("create the last-seen table"))?;
        txn.open_table(ROLLOUTS)
            .map_err(db_err("create the rollouts table"))?;
        txn.open_table(HISTORY)
            .map_err(db_err("create the history table"))?;
        txn.open_table(ANNOUNCED)
            .map_err(db_err("create the announced table"))?;
        txn.open_table(SETTINGS)
            .map_err(db_err("create the settings table"))?;
        txn.open_table(BAD_DIGESTS)
            .map_err(db_err("create the known-bad digests table"))?;
        txn.commit().map_err(db_err("commit"))?;
        Ok(Self { db, _lock: lock })
    }
}

impl FleetStore for RedbStore {
    fn load_hosts(&self) -> Result<Vec<HostRecord>, StoreError> {
        use redb::ReadableTable;
        let txn = self.db.begin_read().map_err(db_err("begin a read"))?;
        let hosts = txn
            .open_table(HOSTS)
            .map_err(db_err("open the hosts table"))?;
        let seen = txn
            .open_table(LAST_SEEN)
            .map_err(db_err("open the last-seen table"))?;
        let mut out = Vec::new();
        for row in hosts.iter().map_err(db_err("read hosts"))? {
            let (key, value) = row.map_err(db_err("read a host"))?;
            let mut record: HostRecord =
                serde_json::from_slice(value.value()).map_err(|source| StoreError::Corrupt {
                    host: key.value().to_owned(),
                    source,
                })?;
            if let Some(ms) = seen
                .get(key.value())
                .map_err(db_err("read a last-seen time"))?
            {
                record.last_seen_unix_ms = record.last_seen_unix_ms.max(ms.value());
            }
            out.push(record);
        }
        Ok(out)
    }

    fn save(&self, batch: &Batch) -> Result<(), StoreError> {
        if batch.is_empty() {
            return Ok(());
        }
        let txn = self
            .db
            .begin_write()
            .map_err(db_err("begin a transaction"))?;
        {
            let mut hosts = txn
                .open_table(HOSTS)
                .map_err(db_err("open the hosts table"))?;
            for (host, record) in &batch.hosts {
                // Serializing plain data cannot fail.
                let json = serde_json::to_vec(record).unwrap_or_default();
                hosts
                    .insert(host.as_str(), json.as_slice())
                    .map_err(db_err("write a host"))?;
            }
            let mut seen = txn
                .open_table(LAST_SEEN)
                .map_err(db_err("open the last-seen table"))?;
            for (host, ms) in &batch.last_seen {
                seen.insert(host.as_str(), *ms)
                    .map_err(db_err("write a last-seen time"))?;
            }
            let mut rollouts = txn
                .open_table(ROLLOUTS)
                .map_err(db_err("open the rollouts table"))?;
            for (id, rollout) in &batch.rollouts {
                let json = serde_json::to_vec(rollout).unwrap_or_default();
                rollouts
                    .insert(id.as_str(), json.as_slice())
                    .map_err(db_err("write a rollout"))?;
            }
            if let Some(before) = batch.history_before {
                use redb::ReadableTable;
                // Heads only: this runs with every cycle's prune, and whole rollouts at the cap
                // of 1,000 were hundreds of MiB read at each.
                let mut stored: Vec<RolloutHead> = Vec::new();
                for row in rollouts.iter().map_err(db_err("read the rollouts"))? {
                    let (id, json) = row.map_err(db_err("read a rollout"))?;
                    // An unreadable one is reported where rollouts are loaded; kept here.
                    if let Ok(mut head) = serde_json::from_slice::<RolloutHead>(json.value()) {
                        id.value().clone_into(&mut head.id);
                        stored.push(head);
                    }
                }
                let gone = rollouts_to_prune(&stored, before);
                for id in gone {
                    rollouts
                        .remove(id.as_str())
                        .map_err(db_err("prune a rollout"))?;
                }
            }
            let mut history = txn
                .open_table(HISTORY)
                .map_err(db_err("open the history table"))?;
            for entry in &batch.history {
                let json = serde_json::to_vec(entry).unwrap_or_default();
                history
                    .insert(history_key(entry).as_str(), json.as_slice())
                    .map_err(db_err("write an outcome"))?;
            }
            if let Some(before) = batch.history_before {
                let end = format!("{:020}", before.max(0));
                history
                    .retain_in::<&str, _>(..end.as_str(), |_, _| false)
                    .map_err(db_err("prune the history"))?;
            }
            let mut announced = txn
                .open_table(ANNOUNCED)
                .map_err(db_err("open the announced table"))?;
            for (key, digest) in &batch.announced {
                announced
                    .insert(key.as_str(), digest.as_str())
                    .map_err(db_err("write an announced digest"))?;
            }
            let mut bad = txn
                .open_table(BAD_DIGESTS)
                .map_err(db_err("open the known-bad digests table"))?;
            for (key, value) in &batch.bad_digests {
                match value {
                    Some(v) => {
                        let json = serde_json::to_vec(v).unwrap_or_default();
                        bad.insert(key.as_str(), json.as_slice())
                            .map_err(db_err("write a known-bad digest"))?;
                    }
                    None => {
                        bad.remove(key.as_str())
                            .map_err(db_err("forget a known-bad digest"))?;
                    }
                }
            }
            for host in &batch.forget_hosts {
                hosts
                    .remove(host.as_str())
                    .map_err(db_err("forget a host"))?;
                seen.remove(host.as_str())
                    .map_err(db_err("forget a last-seen time"))?;
                // Keys `host/container`: from "host/" up to "host0" ('0' follows '/').
                let (from, to) = (format!("{host}/"), format!("{host}0"));
                announced
                    .retain_in::<&str, _>(from.as_str()..to.as_str(), |_, _| false)
                    .map_err(db_err("forget a host's announced digests"))?;
                bad.retain_in::<&str, _>(from.as_str()..to.as_str(), |_, _| false)
                    .map_err(db_err("forget a host's known-bad digests"))?;
            }
            let mut settings = txn
                .open_table(SETTINGS)
                .map_err(db_err("open the settings table"))?;
            for (key, value) in &batch.settings {
                match value {
                    Some(v) => {
                        settings
                            .insert(key.as_str(), v.as_str())
                            .map_err(db_err("write a setting"))?;
                    }
                    None => {
                        settings
                            .remove(key.as_str())
                            .map_err(db_err("clear a setting"))?;
                    }
                }
            }
        }
        txn.commit().map_err(db_err("commit"))
    }

    fn load_rollouts(&self) -> Result<Vec<Rollout>, StoreError> {
        self.load_json(ROLLOUTS, "rollout")
    }

    fn load_rollout_heads(&self) -> Result<Vec<RolloutHead>, StoreError> {
        self.load_json(ROLLOUTS, "rollout")
    }

    fn load_rollout_summaries(&self) -> Result<Vec<RolloutSummary>, StoreError> {
        let records: Vec<SummaryRecord> = self.load_json(ROLLOUTS, "rollout")?;
        Ok(records.into_iter().map(Into::into).collect())
    }

    fn load_rollout(&self, id: &str) -> Result<Option<Rollout>, StoreError> {
        let txn = self.db.begin_read().map_err(db_err("begin a read"))?;
        let table = txn
            .open_table(ROLLOUTS)
            .map_err(db_err("open the rollouts table"))?;
        let Some(value) = table.get(id).map_err(db_err("read a rollout"))? else {
            return Ok(None);
        };
        serde_json::from_slice(value.value())
            .map(Some)
            .map_err(|source| StoreError::CorruptRecord {
                what: "rollout",
                key: id.to_owned(),
                source,
            })
    }

    fn load_history(&self) -> Result<Vec<HistoryEntry>, StoreError> {
        self.load_json(HISTORY, "history")
    }

    fn load_announced(&self) -> Result<BTreeMap<String, String>, StoreError> {
        self.load_strings(ANNOUNCED)
    }

    fn load_settings(&self) -> Result<BTreeMap<String, String>, StoreError> {
        self.load_strings(SETTINGS)
    }

    fn load_bad_digests(&self) -> Result<BTreeMap<String, BadDigest>, StoreError> {
        use redb::ReadableTable;
        let txn = self.db.begin_read().map_err(db_err("begin a read"))?;
        let table = txn
            .open_table(BAD_DIGESTS)
            .map_err(db_err("open the known-bad digests table"))?;
        let mut out = BTreeMap::new();
        for row in table.iter().map_err(db_err("read records"))? {
            let (k, v) = row.map_err(db_err("read a record"))?;
            let key = k.value().to_owned();
            let value =
                serde_json::from_slice(v.value()).map_err(|source| StoreError::CorruptRecord {
                    what: "known-bad digest",
                    key: key.clone(),
                    source,
                })?;
            out.insert(key, value);
        }
        Ok(out)
    }
}

impl RedbStore {
    fn load_strings(
        &self,
        table: TableDefinition<&str, &str>,
    ) -> Result<BTreeMap<String, String>, StoreError> {
        use redb::ReadableTable;
        let txn = self.db.begin_read().map_err(db_err("begin a read"))?;
        let table = txn.open_table(table).map_err(db_err("open a table"))?;
        let mut out = BTreeMap::new();
        for row in table.iter().map_err(db_err("read records"))? {
            let (k, v) = row.map_err(db_err("read a record"))?;
            out.insert(k.value().to_owned(), v.value().to_owned());
        }
        Ok(out)
    }
}

impl RedbStore {
    fn load_json<T: serde::de::DeserializeOwned>(
        &self,
        table: TableDefinition<&str, &[u8]>,
        what: &'static str,
    ) -> Result<Vec<T>, StoreError> {
        use redb::ReadableTable;
        let txn = self.db.begin_read().map_err(db_err("begin a read"))?;
        let table = txn.open_table(table).map_err(db_err("open a table"))?;
        let mut out = Vec::new();
        for row in table.iter().map_err(db_err("read records"))? {
            let (key, value) = row.map_err(db_err("read a record"))?;
            out.push(serde_json::from_slice(value.value()).map_err(|source| {
                StoreError::CorruptRecord {
                    what,
                    key: key.value().to_owned(),
                    source,
                }
            })?);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests;

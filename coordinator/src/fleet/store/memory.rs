//! [`MemoryStore`]: the fleet store in memory, for unit tests, with an injectable write failure.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use super::{Batch, FleetStore, HostRecord, StoreError, history_key};
use crate::plan::rollout::{BadDigest, HistoryEntry, Rollout};

/// An in-memory store for unit tests, with an injectable write failure.
#[derive(Default)]
pub struct MemoryStore {
    hosts: Mutex<BTreeMap<String, HostRecord>>,
    rest: Mutex<Batch>,
    fail_writes: AtomicBool,
    /// The most host records one write held.
    widest_write: AtomicUsize,
}

impl MemoryStore {
    /// Makes every following write fail (or succeed again).
    pub fn fail_writes(&self, fail: bool) {
        self.fail_writes.store(fail, Ordering::SeqCst);
    }

    /// The most host records one write held so far.
    pub fn widest_write(&self) -> usize {
        self.widest_write.load(Ordering::SeqCst)
    }
}

impl FleetStore for MemoryStore {
    fn load_hosts(&self) -> Result<Vec<HostRecord>, StoreError> {
        let hosts = self.hosts.lock().unwrap_or_else(|p| p.into_inner());
        Ok(hosts.values().cloned().collect())
    }

    fn save(&self, batch: &Batch) -> Result<(), StoreError> {
        if self.fail_writes.load(Ordering::SeqCst) {
            return Err(StoreError::Db {
                op: "write a host",
                source: Box::new(redb::Error::Io(std::io::Error::other("injected failure"))),
            });
        }
        self.widest_write
            .fetch_max(batch.hosts.len(), Ordering::SeqCst);
        let mut hosts = self.hosts.lock().unwrap_or_else(|p| p.into_inner());
        for (host, record) in &batch.hosts {
            let kept_seen = hosts.get(host).map_or(0, |r| r.last_seen_unix_ms);
            let mut record = record.clone();
            record.last_seen_unix_ms = record.last_seen_unix_ms.max(kept_seen);
            hosts.insert(host.clone(), record);
        }
        for (host, ms) in &batch.last_seen {
            if let Some(r) = hosts.get_mut(host) {
                r.last_seen_unix_ms = r.last_seen_unix_ms.max(*ms);
            }
        }
        for host in &batch.forget_hosts {
            hosts.remove(host);
        }
        let mut rest = self.rest.lock().unwrap_or_else(|p| p.into_inner());
        let owned = |key: &String| {
            batch
                .forget_hosts
                .iter()
                .any(|h| key.starts_with(&format!("{h}/")))
        };
        rest.announced.retain(|k, _| !owned(k));
        rest.bad_digests.retain(|k, _| !owned(k));
        rest.rollouts.extend(batch.rollouts.clone());
        rest.history.extend(batch.history.clone());
        if let Some(before) = batch.history_before {
            rest.history.retain(|e| e.finished_ms >= before);
            let heads: Vec<super::RolloutHead> =
                rest.rollouts.values().map(|r| (&**r).into()).collect();
            let gone = super::rollouts_to_prune(&heads, before);
            for id in gone {
                rest.rollouts.remove(&id);
            }
        }
        rest.announced.extend(batch.announced.clone());
        for (k, v) in &batch.bad_digests {
            match v {
                Some(v) => {
                    rest.bad_digests.insert(k.clone(), Some(v.clone()));
                }
                None => {
                    rest.bad_digests.remove(k);
                }
            }
        }
        for (k, v) in &batch.settings {
            match v {
                Some(v) => {
                    rest.settings.insert(k.clone(), Some(v.clone()));
                }
                None => {
                    rest.settings.remove(k);
                }
            }
        }
        Ok(())
    }

    fn load_settings(&self) -> Result<BTreeMap<String, String>, StoreError> {
        let rest = self.rest.lock().unwrap_or_else(|p| p.into_inner());
        Ok(rest
            .settings
            .iter()
            .filter_map(|(k, v)| v.clone().map(|v| (k.clone(), v)))
            .collect())
    }

    fn load_rollouts(&self) -> Result<Vec<Rollout>, StoreError> {
        let rest = self.rest.lock().unwrap_or_else(|p| p.into_inner());
        Ok(rest.rollouts.values().map(|r| (**r).clone()).collect())
    }

    fn load_rollout_heads(&self) -> Result<Vec<super::RolloutHead>, StoreError> {
        let rest = self.rest.lock().unwrap_or_else(|p| p.into_inner());
        Ok(rest.rollouts.values().map(|r| (&**r).into()).collect())
    }

    fn load_rollout_summaries(&self) -> Result<Vec<super::RolloutSummary>, StoreError> {
        let rest = self.rest.lock().unwrap_or_else(|p| p.into_inner());
        Ok(rest.rollouts.values().map(|r| (&**r).into()).collect())
    }

    fn load_rollout(&self, id: &str) -> Result<Option<Rollout>, StoreError> {
        let rest = self.rest.lock().unwrap_or_else(|p| p.into_inner());
        Ok(rest.rollouts.get(id).map(|r| (**r).clone()))
    }

    fn load_history(&self) -> Result<Vec<HistoryEntry>, StoreError> {
        let rest = self.rest.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = rest.history.clone();
        out.sort_by_key(history_key);
        Ok(out)
    }

    fn load_announced(&self) -> Result<BTreeMap<String, String>, StoreError> {
        let rest = self.rest.lock().unwrap_or_else(|p| p.into_inner());
        Ok(rest.announced.clone())
    }

    fn load_bad_digests(&self) -> Result<BTreeMap<String, BadDigest>, StoreError> {
        let rest = self.rest.lock().unwrap_or_else(|p| p.into_inner());
        Ok(rest
            .bad_digests
            .iter()
            .filter_map(|(k, v)| v.clone().map(|v| (k.clone(), v)))
            .collect())
    }
}

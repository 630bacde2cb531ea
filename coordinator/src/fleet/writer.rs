//! [`StoreWriter`]: the one thread that writes the fleet view to the store, so that no disk
//! sync ever runs on the async runtime or under the fleet's lock. Writes queued while a
//! transaction runs are coalesced (the latest record of a host wins) into the next one; a
//! failed write is kept and retried with backoff.

use std::sync::Arc;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::thread::JoinHandle;
use std::time::Duration;

use tracing::{error, warn};

use crate::fleet::store::{Batch, FleetStore, HostRecord};

enum Job {
    Write(Batch),
    /// Answered once everything queued before it is stored (or failed): true when stored.
    Sync(Box<dyn FnOnce(bool) + Send>),
}

/// Queue to the writer thread. Dropping it (or [`StoreWriter::close`]) writes what is queued
/// and stops the thread.
pub struct StoreWriter {
    tx: Option<Sender<Job>>,
    thread: Option<JoinHandle<()>>,
}

impl StoreWriter {
    /// Starts the writer thread.
    pub fn spawn(store: Arc<dyn FleetStore>) -> std::io::Result<Self> {
        let (tx, rx) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || write_loop(store.as_ref(), &rx))?;
        Ok(Self {
            tx: Some(tx),
            thread: Some(thread),
        })
    }

    fn send(&self, job: Job) {
        if let Some(tx) = &self.tx {
            // Fails only after close, when nothing is written any more.
            let _ = tx.send(job);
        }
    }

    /// Queues a whole host record.
    pub fn host(&self, record: HostRecord) {
        let mut batch = Batch::default();
        batch.hosts.insert(record.host.clone(), record);
        self.send(Job::Write(batch));
    }

    /// Queues any batch.
    pub fn batch(&self, batch: Batch) {
        if !batch.is_empty() {
            self.send(Job::Write(batch));
        }
    }

    /// Queues last-seen times.
    pub fn last_seen(&self, times: impl IntoIterator<Item = (String, i64)>) {
        let batch = Batch {
            last_seen: times.into_iter().collect(),
            ..Batch::default()
        };
        if !batch.is_empty() {
            self.send(Job::Write(batch));
        }
    }

    /// Blocks until everything queued so far is stored; false if a write failed.
    pub fn sync(&self) -> bool {
        let (tx, rx) = mpsc::channel();
        self.send(Job::Sync(Box::new(move |stored| {
            let _ = tx.send(stored);
        })));
        rx.recv().unwrap_or(false)
    }

    /// Answers true once everything queued so far is stored, false if a write failed (an
    /// error when the writer has stopped). For async callers: nothing blocks.
    pub fn synced(&self) -> tokio::sync::oneshot::Receiver<bool> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.send(Job::Sync(Box::new(move |stored| {
            let _ = tx.send(stored);
        })));
        rx
    }

    /// Writes what is queued and stops the thread.
    pub fn close(&mut self) {
        self.tx.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for StoreWriter {
    fn drop(&mut self) {
        self.close();
    }
}

/// Host records one transaction takes at most; later writes wait for the next one. Without a
/// bound, 1,000 agents reconnecting at once made one transaction of every inventory: tens of
/// MiB of records and dirty pages in memory at the same moment.
const MAX_HOSTS_PER_WRITE: usize = 64;

const RETRY_FIRST: Duration = Duration::from_millis(200);
const RETRY_MAX: Duration = Duration::from_secs(10);

fn write_loop(store: &dyn FleetStore, rx: &Receiver<Job>) {
    let mut pending = Batch::default();
    let mut waiting: Vec<Box<dyn FnOnce(bool) + Send>> = Vec::new();
    let mut retry = RETRY_FIRST;
    let mut open = true;
    while open || !pending.is_empty() {
        // Block for work when idle; when a failed batch waits, block only until its retry.
        let first = if pending.is_empty() {
            rx.recv().map_err(|_| RecvTimeoutError::Disconnected)
        } else if open {
            rx.recv_timeout(retry)
        } else {
            Err(RecvTimeoutError::Disconnected)
        };
        match first {
            Ok(job) => take(job, &mut pending, &mut waiting),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => open = false,
        }
        while pending.hosts.len() < MAX_HOSTS_PER_WRITE
            && let Ok(job) = rx.try_recv()
        {
            take(job, &mut pending, &mut waiting);
        }
        match store.save(&pending) {
            Ok(()) => {
                pending = Batch::default();
                retry = RETRY_FIRST;
                for w in waiting.drain(..) {
                    w(true);
                }
            }
            Err(e) if open => {
                warn!(error = %e, retry_ms = retry.as_millis(), "Cannot write the fleet view; retrying.");
                retry = (retry * 2).min(RETRY_MAX);
                for w in waiting.drain(..) {
                    w(false);
                }
            }
            Err(e) => {
                error!(error = %e, hosts = pending.hosts.len(), "Cannot write the fleet view at shutdown; the latest reports of these hosts are lost.");
                for w in waiting.drain(..) {
                    w(false);
                }
                return;
            }
        }
    }
}

fn take(job: Job, pending: &mut Batch, waiting: &mut Vec<Box<dyn FnOnce(bool) + Send>>) {
    match job {
        Job::Write(batch) => pending.merge(batch),
        Job::Sync(tx) => waiting.push(tx),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::store::MemoryStore;
    use ouroboros_shared::inventory::{EngineInfo, HostMode};

    fn record(host: &str, seen: i64) -> HostRecord {
        HostRecord {
            host: host.into(),
            agent_version: "0".into(),
            agent_image: String::new(),
            agent_container: String::new(),
            engine: EngineInfo::default(),
            mode: HostMode::Standalone,
            last_seen_unix_ms: seen,
            inventory_at_unix_ms: 0,
            containers: Arc::default(),
            cluster_id: String::new(),
            services: Vec::new(),
        }
    }

    #[test]
    fn writes_are_stored_and_a_failed_write_is_retried() {
        let store = Arc::new(MemoryStore::default());
        let writer = StoreWriter::spawn(store.clone()).unwrap();
        writer.host(record("a", 1));
        assert!(writer.sync());
        assert_eq!(store.load_hosts().unwrap()[0].last_seen_unix_ms, 1);

        store.fail_writes(true);
        writer.host(record("b", 2));
        writer.last_seen([("a".to_owned(), 5)]);
        assert!(!writer.sync(), "a failed write was reported as stored");
        store.fail_writes(false);
        // The failed batch is kept and goes out with the next attempt.
        assert!(writer.sync());
        let hosts = store.load_hosts().unwrap();
        assert_eq!(hosts.len(), 2);
        assert_eq!(hosts[0].last_seen_unix_ms, 5);
    }

    #[test]
    fn a_burst_of_host_records_is_written_in_bounded_transactions_in_order() {
        let store = Arc::new(MemoryStore::default());
        let writer = StoreWriter::spawn(store.clone()).unwrap();
        for i in 0..1000 {
            writer.host(record(&format!("h{i:04}"), i));
        }
        // Written after all of them: the newer record of h0000 wins.
        writer.host(record("h0000", 5000));
        assert!(writer.sync());
        let hosts = store.load_hosts().unwrap();
        assert_eq!(hosts.len(), 1000);
        assert_eq!(hosts[0].last_seen_unix_ms, 5000);
        assert!(
            store.widest_write() <= MAX_HOSTS_PER_WRITE,
            "one write held {} host records",
            store.widest_write()
        );
    }

    #[test]
    fn close_writes_what_is_queued() {
        let store = Arc::new(MemoryStore::default());
        let mut writer = StoreWriter::spawn(store.clone()).unwrap();
        for i in 0..100 {
            writer.host(record(&format!("h{i}"), i));
        }
        writer.close();
        assert_eq!(store.load_hosts().unwrap().len(), 100);
    }
}

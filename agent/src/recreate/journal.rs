//! The agent's small journal of recreate operations, one JSON file per operation in
//! `DATA_DIR/journal/`. Each step, of the container and of each of its dependants, is written
//! and flushed to disk *before* the Docker call it announces, so that after a crash the agent
//! knows how far an operation got and can finish or revert it.
//!
//! Finished operations stay for a while, so that a repeated op id is answered with the stored
//! result instead of being done twice: [`Journal::prune`] keeps them as long as [`RETENTION`]
//! says (always those with a leftover container still to remove). A file
//! that cannot be read (damaged, or from another version) is moved to `journal/quarantine/`
//! and reported, and never stops the recovery of the others.
//!
//! (Over 600 lines: the journal and the tests of each of its rules, kept together.)

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use super::dependants::{Action, Kind};

/// How long, and how many, finished operations are kept for repeated op ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    pub age: Duration,
    pub count: usize,
}

/// A week, and at most 1,000: a coordinator asks again within its progress deadline, or
/// after its own restart.
pub const RETENTION: Retention = Retention {
    age: Duration::from_secs(7 * 24 * 3600),
    count: 1000,
};

/// How far an operation got. Each value is recorded before the step it names is attempted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "step", rename_all = "snake_case")]
pub enum Step {
    /// Inspected and pulled; nothing changed yet (dependants may be being stopped).
    Planned,
    /// About to stop the old container.
    Stopping,
    /// About to rename the old container aside.
    RenamingAside,
    /// About to create the replacement under the original name.
    Creating,
    /// The replacement exists (connecting networks, starting, health gate).
    Created { new_id: String },
    /// The replacement passed the health gate; the dependants that must follow it are being
    /// recreated. A crash from here on finishes the operation.
    Following { new_id: String },
    /// Everything passed; about to remove the old containers and start what was stopped.
    RemovingOld { new_id: String },
    /// Rolling back: about to remove the replacements and restore the old containers.
    /// `stop_under_way`: the failure came during the container's stop, which the engine may
    /// still be carrying out (it is waited for before the container is started again).
    RollingBack {
        new_id: Option<String>,
        reason: String,
        #[serde(default)]
        stop_under_way: bool,
    },
    /// Finished.
    Done { outcome: Outcome },
}

/// The end of an operation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum Outcome {
    /// The container runs on the new image; the old one is gone.
    Updated { new_id: String, image_id: String },
    /// The container already ran the target image.
    AlreadyCurrent,
    /// Nothing was changed: the request was refused or failed before anything was stopped.
    Refused { reason: String },
    /// The update failed at `step` and the old container was restored.
    RolledBack { step: String, reason: String },
    /// The update failed and the old container could not be fully restored.
    RollbackFailed { step: String, reason: String },
    /// The agent was asked to stop before the update could finish; everything is as it was
    /// and the same operation may be sent again (it is not kept in the journal).
    Interrupted { step: String, reason: String },
    /// The container's `pre-update` command exited 75: skipped, nothing changed.
    Vetoed { reason: String },
}

/// Where one dependant stands. Recorded before the Docker call it names, like [`Step`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum DependantState {
    /// Nothing done to it yet.
    Untouched,
    /// About to stop it (it may be stopped, or still stopping, after a crash).
    Stopping,
    /// Stopped by this operation.
    Stopped,
    /// About to rename its old container aside.
    RenamingAside,
    /// About to create its replacement. `tag_back`: the tag is pointed at its own image for
    /// the create and must be given back to this image afterwards (also after a crash).
    Creating {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        tag_back: Option<TagBack>,
    },
    /// Its replacement exists (starting, health gate).
    Created { new_id: String },
    /// Its replacement runs (or, if it was stopped, exists) and passed its health gate;
    /// `moved`: on the new image of its own tag. `reason`: why not, when it was to move.
    Passed {
        new_id: String,
        image_id: String,
        moved: bool,
        #[serde(default, skip_serializing_if = "String::is_empty")]
        reason: String,
    },
    /// Stopped before and started again after.
    Started,
    /// Back to its old container after its own recreate failed.
    Restored { reason: String },
    /// Could not be brought back: needs an operator.
    Failed { reason: String },
}

/// A tag lent to a dependant's own image for its create, and whom it goes back to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TagBack {
    /// `repo:tag`.
    pub reference: String,
    /// The image it named before (an image id).
    pub image: String,
}

/// A dependant as journaled with its operation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DependantEntry {
    pub name: String,
    pub old_id: String,
    pub kind: Kind,
    pub action: Action,
    /// The container it follows (the one updated, or another dependant), by name.
    pub parent: String,
    pub was_running: bool,
    /// `repo:tag@sha256:…` it moves to in this operation (pulled before anything stopped);
    /// `None`: it keeps its own image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// The name its old container has while set aside.
    pub aside_name: String,
    pub state: DependantState,
}

/// One operation as journaled.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub op_id: String,
    /// The container's name (without slash); the replacement gets the same.
    pub name: String,
    /// The old container's id.
    pub old_id: String,
    /// The name the old container has while it is set aside.
    pub aside_name: String,
    /// Whether the old container was running.
    pub was_running: bool,
    /// The image the replacement is created from.
    pub target_image: String,
    /// The containers that refer to this one, parents first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dependants: Vec<DependantEntry>,
    /// Old containers whose removal failed after the update: removed at the next start.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub leftovers: Vec<String>,
    #[serde(flatten)]
    pub step: Step,
}

impl Entry {
    /// Whether the operation ended.
    pub fn is_done(&self) -> bool {
        matches!(self.step, Step::Done { .. })
    }
}

/// Journal failures.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("cannot write journal {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot read journal {path}: {reason}")]
    Read { path: PathBuf, reason: String },
    #[error("invalid op id {0:?}: use letters, digits, '-', '_' and '.', at most 128")]
    InvalidOpId(String),
}

/// A journal file that could not be used, moved aside.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quarantined {
    /// Where it is now.
    pub path: PathBuf,
    pub reason: String,
}

/// What the journal knows about containers, for the inventory.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Index {
    /// Operations that have not ended.
    unfinished: BTreeSet<String>,
    /// Old containers still to remove (id → operation).
    leftovers: BTreeMap<String, String>,
}

/// Why containers are set aside, as the journal sees it now.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SetAside {
    index: Index,
}

impl crate::engine::SetAsideReasons for SetAside {
    fn reason(
        &self,
        id: &str,
        name: &str,
        labels: &std::collections::HashMap<String, String>,
    ) -> Option<String> {
        SetAside::reason(self, id, name, labels)
    }
}

/// The label every replacement carries: the operation that made it (see [`super::LABEL_OP`]).
const LABEL_OP: &str = super::LABEL_OP;

impl SetAside {
    /// Why the container `id` named `name` with `labels` is set aside, if it is.
    pub fn reason(
        &self,
        id: &str,
        name: &str,
        labels: &std::collections::HashMap<String, String>,
    ) -> Option<String> {
        if let Some(op) = self.index.leftovers.get(id) {
            return Some(format!(
                "old container of update {op}, whose removal failed; removed at the agent's next start"
            ));
        }
        if let Some(op) = labels.get(LABEL_OP)
            && self.index.unfinished.contains(op)
        {
            return Some(format!(
                "replacement made by update {op}, still in progress"
            ));
        }
        name.contains(super::ASIDE_MARK)
            .then(|| "old container set aside by an update".to_owned())
    }
}

/// The journal's folder under the data dir.
pub const DIR: &str = "journal";

/// The file of operation `op_id` in journal folder `dir`; an op id that is not a plain name
/// (empty, too long, a path, hidden) is refused.
fn entry_path(dir: &Path, op_id: &str) -> Result<PathBuf, JournalError> {
    let valid = !op_id.is_empty()
        && op_id.len() <= 128
        && op_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && !op_id.starts_with('.');
    if !valid {
        return Err(JournalError::InvalidOpId(op_id.to_owned()));
    }
    Ok(dir.join(format!("{op_id}.json")))
}

/// The journal directory.
#[derive(Debug, Clone)]
pub struct Journal {
    dir: PathBuf,
    index: Arc<Mutex<Index>>,
    quarantined: Arc<Mutex<Vec<Quarantined>>>,
}

impl Journal {
    /// Opens (creating) `data_dir/journal` and reads what it holds; unreadable files are moved
    /// to `journal/quarantine/` (see [`Journal::take_quarantined`]).
    pub fn open(data_dir: &Path) -> Result<Self, JournalError> {
        let dir = data_dir.join(DIR);
        fs::create_dir_all(&dir).map_err(|source| JournalError::Write {
            path: dir.clone(),
            source,
        })?;
        // A write a crash cut short: the entry's previous version stands.
        if let Ok(items) = fs::read_dir(&dir) {
            for item in items.flatten() {
                if item.file_name().to_string_lossy().ends_with(".json.tmp") {
                    let _ = fs::remove_file(item.path());
                }
            }
        }
        let journal = Self {
            dir,
            index: Arc::default(),
            quarantined: Arc::default(),
        };
        let mut index = Index::default();
        for (_, entry) in journal.scan()? {
            index.add(&entry);
        }
        *journal.lock_index() = index;
        Ok(journal)
    }

    fn lock_index(&self) -> MutexGuard<'_, Index> {
        self.index.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn path(&self, op_id: &str) -> Result<PathBuf, JournalError> {
        entry_path(&self.dir, op_id)
    }

    /// Where a note of operation `op_id` of another kind than a recreate (`kind`: a folder
    /// beside the journal's, e.g. `swarm-sent`) is kept; the op id is checked as for entries.
    pub fn note_path(&self, kind: &str, op_id: &str) -> Result<PathBuf, JournalError> {
        let data_dir = self.dir.parent().unwrap_or(&self.dir);
        entry_path(&data_dir.join(kind), op_id)
    }

    /// Operation `op_id`'s entry in the journal of `data_dir`, read without opening the
    /// journal: opening it tidies half-written files, which may be another process's next
    /// step (the updater of `up`). `None` when there is none or it cannot be read.
    pub fn peek(data_dir: &Path, op_id: &str) -> Option<Entry> {
        let path = entry_path(&data_dir.join(DIR), op_id).ok()?;
        serde_json::from_str(&fs::read_to_string(path).ok()?).ok()
    }

    /// Writes `entry` durably: a temporary file, fsync, rename over the old one, fsync of the
    /// directory.
    pub fn record(&self, entry: &Entry) -> Result<(), JournalError> {
        let path = self.path(&entry.op_id)?;
        let tmp = path.with_extension("json.tmp");
        let err = |source| JournalError::Write {
            path: path.clone(),
            source,
        };
        // Plain data: serializing cannot fail.
        let json = serde_json::to_vec_pretty(entry).unwrap_or_default();
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)
            .map_err(err)?;
        file.write_all(&json).map_err(err)?;
        file.sync_all().map_err(err)?;
        fs::rename(&tmp, &path).map_err(err)?;
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(err)?;
        self.lock_index().add(entry);
        Ok(())
    }

    /// The entry of `op_id`, if there is one.
    pub fn get(&self, op_id: &str) -> Result<Option<Entry>, JournalError> {
        let path = self.path(op_id)?;
        match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| JournalError::Read {
                    path,
                    reason: e.to_string(),
                }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(JournalError::Read {
                path,
                reason: e.to_string(),
            }),
        }
    }

    /// Every entry with its file's time; unreadable files are quarantined on the way.
    fn scan(&self) -> Result<Vec<(SystemTime, Entry)>, JournalError> {
        let read_err = |reason: String| JournalError::Read {
            path: self.dir.clone(),
            reason,
        };
        let mut entries = Vec::new();
        for item in fs::read_dir(&self.dir).map_err(|e| read_err(e.to_string()))? {
            let Ok(item) = item else { continue };
            let path = item.path();
            if !path.is_file() || path.extension().is_none_or(|e| e != "json") {
                continue;
            }
            // Another operation may forget (remove) its entry meanwhile: gone is not unreadable.
            let gone = |e: &std::io::Error| e.kind() == std::io::ErrorKind::NotFound;
            let read = fs::metadata(&path)
                .and_then(|m| m.modified())
                .and_then(|modified| fs::read(&path).map(|bytes| (modified, bytes)));
            let (modified, bytes) = match read {
                Ok(read) => read,
                Err(e) if gone(&e) => continue,
                Err(e) => {
                    self.quarantine(&path, e.to_string());
                    continue;
                }
            };
            match serde_json::from_slice::<Entry>(&bytes) {
                Ok(entry) => entries.push((modified, entry)),
                Err(e) => self.quarantine(&path, e.to_string()),
            }
        }
        entries.sort_by_key(|(modified, e)| (*modified, e.op_id.clone()));
        Ok(entries)
    }

    /// Moves an unusable file to `quarantine/` and remembers it for the report.
    fn quarantine(&self, path: &Path, reason: String) {
        let aside = self.dir.join("quarantine");
        let target = aside.join(path.file_name().unwrap_or_default());
        let moved = fs::create_dir_all(&aside)
            .and_then(|()| fs::rename(path, &target))
            .map(|()| target.clone());
        let (path, reason) = match moved {
            Ok(p) => (p, reason),
            Err(e) => (
                path.to_owned(),
                format!("{reason}; moving it to quarantine failed too: {e}"),
            ),
        };
        self.quarantined
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(Quarantined { path, reason });
    }

    /// Forgets operation `op_id` (one that ended with nothing changed and may be sent again).
    pub fn forget(&self, op_id: &str) -> Result<(), JournalError> {
        let path = self.path(op_id)?;
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => return Err(JournalError::Write { path, source }),
        }
        let mut index = self.lock_index();
        index.unfinished.remove(op_id);
        index.leftovers.retain(|_, op| op != op_id);
        Ok(())
    }

    /// Every operation that has not ended (in flight, or interrupted), by op id.
    pub fn unfinished_ops(&self) -> Vec<String> {
        self.lock_index().unfinished.iter().cloned().collect()
    }

    /// The files quarantined since the last call.
    pub fn take_quarantined(&self) -> Vec<Quarantined> {
        std::mem::take(&mut *self.quarantined.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Every operation that did not finish, oldest first (unreadable files are quarantined).
    pub fn unfinished(&self) -> Result<Vec<Entry>, JournalError> {
        Ok(self
            .scan()?
            .into_iter()
            .map(|(_, e)| e)
            .filter(|e| !e.is_done())
            .collect())
    }

    /// Finished operations that still have old containers to remove, oldest first.
    pub fn with_leftovers(&self) -> Result<Vec<Entry>, JournalError> {
        Ok(self
            .scan()?
            .into_iter()
            .map(|(_, e)| e)
            .filter(|e| e.is_done() && !e.leftovers.is_empty())
            .collect())
    }

    /// Removes finished entries older than `keep.age` and all but the newest `keep.count`;
    /// entries with leftovers and unfinished ones stay. Returns how many went. Reads no entry:
    /// the journal's index knows which operations are unfinished or have leftovers.
    pub fn prune(&self, now: SystemTime, keep: Retention) -> Result<usize, JournalError> {
        let keep_anyway: BTreeSet<String> = {
            let index = self.lock_index();
            index
                .unfinished
                .iter()
                .chain(index.leftovers.values())
                .cloned()
                .collect()
        };
        let read_err = |reason: String| JournalError::Read {
            path: self.dir.clone(),
            reason,
        };
        let mut done: Vec<(SystemTime, String, PathBuf)> = Vec::new();
        for item in fs::read_dir(&self.dir).map_err(|e| read_err(e.to_string()))? {
            let Ok(item) = item else { continue };
            let path = item.path();
            if path.extension().is_none_or(|e| e != "json") {
                continue;
            }
            let Some(op) = path.file_stem().and_then(|s| s.to_str()).map(str::to_owned) else {
                continue;
            };
            if keep_anyway.contains(&op) {
                continue;
            }
            if let Ok(modified) = item.metadata().and_then(|m| m.modified()) {
                done.push((modified, op, path));
            }
        }
        done.sort();
        let surplus = done.len().saturating_sub(keep.count);
        let mut removed = 0;
        for (i, (modified, _, path)) in done.iter().enumerate() {
            let old = now
                .duration_since(*modified)
                .is_ok_and(|age| age > keep.age);
            if (i < surplus || old) && fs::remove_file(path).is_ok() {
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// What the journal says about containers now, for the inventory.
    pub fn set_aside(&self) -> SetAside {
        SetAside {
            index: self.lock_index().clone(),
        }
    }
}

impl Index {
    fn add(&mut self, entry: &Entry) {
        if entry.is_done() {
            self.unfinished.remove(&entry.op_id);
        } else {
            self.unfinished.insert(entry.op_id.clone());
        }
        self.leftovers.retain(|_, op| *op != entry.op_id);
        for id in &entry.leftovers {
            self.leftovers.insert(id.clone(), entry.op_id.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(op: &str, step: Step) -> Entry {
        Entry {
            op_id: op.into(),
            name: "web".into(),
            old_id: "abc".into(),
            aside_name: "web-ouroboros-old".into(),
            was_running: true,
            target_image: "app:2".into(),
            dependants: Vec::new(),
            leftovers: Vec::new(),
            step,
        }
    }

    fn done(op: &str) -> Entry {
        entry(
            op,
            Step::Done {
                outcome: Outcome::AlreadyCurrent,
            },
        )
    }

    #[test]
    fn entries_round_trip_and_only_unfinished_ones_are_listed() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::open(dir.path()).unwrap();
        j.record(&entry("op-1", Step::Stopping)).unwrap();
        j.record(&done("op-2")).unwrap();
        let created = Step::Created {
            new_id: "def".into(),
        };
        let mut with_dependant = entry("op-1", created.clone());
        with_dependant.dependants.push(DependantEntry {
            name: "side".into(),
            old_id: "123".into(),
            kind: Kind::Network,
            action: Action::Recreate,
            parent: "web".into(),
            was_running: true,
            target: Some("side:1@sha256:ab".into()),
            aside_name: "side-ouroboros-old-op-1".into(),
            state: DependantState::Created {
                new_id: "456".into(),
            },
        });
        j.record(&with_dependant).unwrap();
        assert_eq!(j.get("op-1").unwrap().unwrap(), with_dependant);
        assert_eq!(j.get("nope").unwrap(), None);
        let open: Vec<String> = j
            .unfinished()
            .unwrap()
            .into_iter()
            .map(|e| e.op_id)
            .collect();
        assert_eq!(open, ["op-1"]);
        // No temporary file is left behind.
        let names: Vec<_> = fs::read_dir(dir.path().join("journal"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");
    }

    #[test]
    fn entries_of_the_previous_version_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::open(dir.path()).unwrap();
        let old = r#"{"op_id":"op-old","name":"web","old_id":"abc","aside_name":"web-ouroboros-old-op-old","was_running":true,"target_image":"app:1","step":"created","new_id":"def"}"#;
        fs::write(dir.path().join("journal/op-old.json"), old).unwrap();
        let open = j.unfinished().unwrap();
        assert_eq!(open.len(), 1);
        assert!(open[0].dependants.is_empty());
        assert_eq!(
            open[0].step,
            Step::Created {
                new_id: "def".into()
            }
        );
    }

    #[test]
    fn a_rollback_recorded_by_the_previous_version_reads_as_no_stop_under_way() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::open(dir.path()).unwrap();
        let old = r#"{"op_id":"op-rb","name":"web","old_id":"abc","aside_name":"a","was_running":true,"target_image":"app:1","step":"rolling_back","new_id":null,"reason":"x"}"#;
        fs::write(dir.path().join("journal/op-rb.json"), old).unwrap();
        assert_eq!(
            j.get("op-rb").unwrap().unwrap().step,
            Step::RollingBack {
                new_id: None,
                reason: "x".into(),
                stop_under_way: false
            }
        );
        j.forget("op-rb").unwrap();
        assert_eq!(j.get("op-rb").unwrap(), None);
        assert!(j.unfinished_ops().is_empty());
    }

    #[test]
    fn an_unreadable_file_is_quarantined_and_the_others_still_count() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("journal")).unwrap();
        fs::write(dir.path().join("journal/bad.json"), b"{not json").unwrap();
        fs::write(
            dir.path().join("journal/future.json"),
            br#"{"op_id":"future","step":"teleporting"}"#,
        )
        .unwrap();
        fs::write(dir.path().join("journal/op-9.json.tmp"), b"{half").unwrap();
        let j = Journal::open(dir.path()).unwrap();
        assert!(
            !dir.path().join("journal/op-9.json.tmp").exists(),
            "torn write kept"
        );
        j.record(&entry("op-1", Step::Stopping)).unwrap();
        let quarantined = j.take_quarantined();
        assert_eq!(quarantined.len(), 2, "{quarantined:?}");
        for q in &quarantined {
            assert!(q.path.starts_with(dir.path().join("journal/quarantine")));
            assert!(q.path.exists());
        }
        let open: Vec<String> = j
            .unfinished()
            .unwrap()
            .into_iter()
            .map(|e| e.op_id)
            .collect();
        assert_eq!(open, ["op-1"]);
        assert!(j.take_quarantined().is_empty(), "reported twice");
    }

    #[test]
    fn old_and_surplus_finished_entries_are_pruned_but_leftovers_stay() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::open(dir.path()).unwrap();
        let keep = Retention {
            age: Duration::from_secs(3600),
            count: 10,
        };
        for i in 0..keep.count + 5 {
            j.record(&done(&format!("op-{i:05}"))).unwrap();
        }
        let mut leftover = done("op-leftover");
        leftover.leftovers = vec!["deadbeef".into()];
        j.record(&leftover).unwrap();
        j.record(&entry("op-open", Step::Stopping)).unwrap();
        let removed = j.prune(SystemTime::now(), keep).unwrap();
        assert_eq!(removed, 5);
        assert!(
            j.get("op-00004").unwrap().is_none(),
            "not the oldest pruned"
        );
        assert!(j.get("op-00005").unwrap().is_some());
        assert!(j.get("op-open").unwrap().is_some());
        assert!(j.get("op-leftover").unwrap().is_some());
        // Past the age every finished entry without leftovers is gone.
        let later = SystemTime::now() + keep.age + Duration::from_secs(60);
        assert_eq!(j.prune(later, keep).unwrap(), keep.count);
        assert!(j.get("op-leftover").unwrap().is_some());
        assert!(j.get("op-open").unwrap().is_some());
    }

    #[test]
    fn set_aside_names_leftovers_unfinished_replacements_and_aside_names() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::open(dir.path()).unwrap();
        j.record(&entry("op-run", Step::Created { new_id: "n".into() }))
            .unwrap();
        let mut left = done("op-left");
        left.leftovers = vec!["old1".into()];
        j.record(&left).unwrap();
        let view = j.set_aside();
        let none = std::collections::HashMap::new();
        let labelled =
            |op: &str| std::collections::HashMap::from([(LABEL_OP.to_owned(), op.to_owned())]);
        assert!(
            view.reason("old1", "web", &none)
                .unwrap()
                .contains("op-left")
        );
        assert!(
            view.reason("new", "web", &labelled("op-run"))
                .unwrap()
                .contains("in progress")
        );
        assert_eq!(view.reason("x", "web", &labelled("op-left")), None);
        assert!(view.reason("y", "web-ouroboros-old-op-9", &none).is_some());
        assert_eq!(view.reason("z", "web", &none), None);
        // Finishing the operation clears it.
        j.record(&done("op-run")).unwrap();
        assert_eq!(
            j.set_aside().reason("new", "web", &labelled("op-run")),
            None
        );
    }

    #[test]
    fn op_ids_cannot_escape_the_journal() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::open(dir.path()).unwrap();
        for bad in ["", "../x", "a/b", ".hidden", &"x".repeat(129)] {
            assert!(
                matches!(j.get(bad), Err(JournalError::InvalidOpId(_))),
                "{bad:?}"
            );
        }
    }
}

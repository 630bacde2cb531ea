//! The agent's small journal of recreate operations, one JSON file per operation in
//! `DATA_DIR/journal/`. Each step is written and flushed to disk *before* the destructive
//! Docker call it announces, so that after a crash the agent knows how far an operation got
//! and can finish or revert it. Finished operations stay, so a repeated op id is answered with
//! the stored result instead of being done twice.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// How far an operation got. Each value is recorded before the step it names is attempted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "step", rename_all = "snake_case")]
pub enum Step {
    /// Inspected and pulled; nothing changed yet.
    Planned,
    /// About to stop the old container.
    Stopping,
    /// About to rename the old container aside.
    RenamingAside,
    /// About to create the replacement under the original name.
    Creating,
    /// The replacement exists (connecting networks, starting, health gate).
    Created { new_id: String },
    /// The replacement passed the health gate; about to remove the old container.
    RemovingOld { new_id: String },
    /// Rolling back: about to remove the replacement and restore the old container.
    RollingBack {
        new_id: Option<String>,
        reason: String,
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

/// The journal directory.
#[derive(Debug, Clone)]
pub struct Journal {
    dir: PathBuf,
}

impl Journal {
    /// Opens (creating) `data_dir/journal`.
    pub fn open(data_dir: &Path) -> Result<Self, JournalError> {
        let dir = data_dir.join("journal");
        fs::create_dir_all(&dir).map_err(|source| JournalError::Write {
            path: dir.clone(),
            source,
        })?;
        Ok(Self { dir })
    }

    fn path(&self, op_id: &str) -> Result<PathBuf, JournalError> {
        let valid = !op_id.is_empty()
            && op_id.len() <= 128
            && op_id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
            && !op_id.starts_with('.');
        if !valid {
            return Err(JournalError::InvalidOpId(op_id.to_owned()));
        }
        Ok(self.dir.join(format!("{op_id}.json")))
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
            .map_err(err)
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

    /// Every operation that did not finish, oldest first.
    pub fn unfinished(&self) -> Result<Vec<Entry>, JournalError> {
        let read_err = |reason: String| JournalError::Read {
            path: self.dir.clone(),
            reason,
        };
        let mut entries = Vec::new();
        for item in fs::read_dir(&self.dir).map_err(|e| read_err(e.to_string()))? {
            let path = item.map_err(|e| read_err(e.to_string()))?.path();
            if path.extension().is_none_or(|e| e != "json") {
                continue;
            }
            let modified = fs::metadata(&path)
                .and_then(|m| m.modified())
                .map_err(|e| read_err(e.to_string()))?;
            let bytes = fs::read(&path).map_err(|e| read_err(e.to_string()))?;
            let entry: Entry = serde_json::from_slice(&bytes).map_err(|e| JournalError::Read {
                path: path.clone(),
                reason: e.to_string(),
            })?;
            if !entry.is_done() {
                entries.push((modified, entry));
            }
        }
        entries.sort_by_key(|(modified, _)| *modified);
        Ok(entries.into_iter().map(|(_, e)| e).collect())
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
            step,
        }
    }

    #[test]
    fn entries_round_trip_and_only_unfinished_ones_are_listed() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::open(dir.path()).unwrap();
        j.record(&entry("op-1", Step::Stopping)).unwrap();
        j.record(&entry(
            "op-2",
            Step::Done {
                outcome: Outcome::AlreadyCurrent,
            },
        ))
        .unwrap();
        let created = Step::Created {
            new_id: "def".into(),
        };
        j.record(&entry("op-1", created.clone())).unwrap();
        assert_eq!(j.get("op-1").unwrap().unwrap().step, created);
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

//! The hand-over's record and its one-time decision, in the data dir.

use std::io::Write as _;
use std::path::PathBuf;

use ouroboros_shared::time_fmt::now_unix_ms;
use serde::{Deserialize, Serialize};
use tracing::warn;

use super::{DECISION_FILE, RECORD_FILE};

/// The hand-over under way.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub op_id: String,
    /// The old agent's container.
    pub old_id: String,
    /// Its name, which the successor takes.
    pub name: String,
    pub successor_name: String,
    /// Known once the successor is created.
    pub successor_id: Option<String>,
    /// The reference the successor runs (`repo:tag`).
    pub image: String,
    pub image_id: String,
    /// After this, the old agent abandons the hand-over.
    pub deadline_unix_ms: i64,
    /// The coordinator has hooks: the successor asks it at `before_self_cleanup` and
    /// `after_self_cleanup`, waiting at most this long for each verdict.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hook_deadline_ms: Option<u64>,
}

/// Who won the hand-over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Taken,
    Abandoned,
    /// The successor's `before_self_cleanup` hook said no: the old agent keeps its host and
    /// answers `vetoed` (the hook's line is the decision's note).
    Vetoed,
}

impl Decision {
    fn as_str(self) -> &'static str {
        match self {
            Self::Taken => "taken",
            Self::Abandoned => "abandoned",
            Self::Vetoed => "vetoed",
        }
    }
}

/// The record and decision files.
#[derive(Debug, Clone)]
pub struct Files {
    dir: PathBuf,
}

impl Files {
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: data_dir.into(),
        }
    }

    /// The record, if a hand-over is under way (an unreadable one is reported and ignored).
    pub fn read(&self) -> Option<Record> {
        let path = self.dir.join(RECORD_FILE);
        let text = std::fs::read_to_string(&path).ok()?;
        serde_json::from_str(&text)
            .map_err(|e| warn!(path = %path.display(), error = %e, "Unreadable hand-over record; ignored."))
            .ok()
    }

    /// Writes the record durably (a fresh file renamed over the old one).
    pub fn write(&self, record: &Record) -> std::io::Result<()> {
        let tmp = self.dir.join(format!("{RECORD_FILE}.tmp"));
        let json = serde_json::to_string_pretty(record).map_err(std::io::Error::other)?;
        ouroboros_shared::files::write_fresh(&tmp, &json, 0o600)?;
        std::fs::rename(&tmp, self.dir.join(RECORD_FILE))?;
        std::fs::File::open(&self.dir)?.sync_all()
    }

    /// The decision about hand-over `op_id`, once made (one about another hand-over is none).
    pub fn decision(&self, op_id: &str) -> Option<Decision> {
        let text = std::fs::read_to_string(self.dir.join(DECISION_FILE)).ok()?;
        let first = text.lines().next().unwrap_or_default().trim();
        let (word, op) = first.split_once(' ').unwrap_or((first, ""));
        if op != op_id {
            return None;
        }
        match word {
            "taken" => Some(Decision::Taken),
            "vetoed" => Some(Decision::Vetoed),
            // Anything else is not a successor's claim: the old agent keeps its host.
            _ => Some(Decision::Abandoned),
        }
    }

    /// The note that came with the decision about `op_id` (a veto's reason), if any.
    pub fn note(&self, op_id: &str) -> Option<String> {
        self.decision(op_id)?;
        let text = std::fs::read_to_string(self.dir.join(DECISION_FILE)).ok()?;
        let note = text.split_once('\n')?.1.trim();
        (!note.is_empty()).then(|| note.to_owned())
    }

    /// Makes `wanted` the decision about hand-over `op_id` unless one stands already; returns
    /// the one that stands. The file appears whole or not at all (a hard link of a written
    /// file fails when the name exists), so two agents deciding at once cannot both win;
    /// `who` (the deciding container) keeps their temporary files apart.
    pub fn decide(&self, op_id: &str, wanted: Decision, who: &str) -> std::io::Result<Decision> {
        self.decide_with(op_id, wanted, who, "")
    }

    /// [`Self::decide`], with a note kept with the decision ([`Self::note`]).
    pub fn decide_with(
        &self,
        op_id: &str,
        wanted: Decision,
        who: &str,
        note: &str,
    ) -> std::io::Result<Decision> {
        let tmp = self.dir.join(format!(
            "{DECISION_FILE}.{who}.{}.{}",
            std::process::id(),
            now_unix_ms()
        ));
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)?;
        let note = note.replace(['\n', '\r'], " ");
        file.write_all(format!("{} {op_id}\n{note}", wanted.as_str()).as_bytes())?;
        file.sync_all()?;
        let linked = std::fs::hard_link(&tmp, self.dir.join(DECISION_FILE));
        let _ = std::fs::remove_file(&tmp);
        match linked {
            Ok(()) => {
                std::fs::File::open(&self.dir)?.sync_all()?;
                Ok(wanted)
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                // A decision about another hand-over is stale: this one's is not made yet.
                match self.decision(op_id) {
                    Some(standing) => Ok(standing),
                    None => {
                        std::fs::remove_file(self.dir.join(DECISION_FILE))?;
                        self.decide_with(op_id, wanted, who, &note)
                    }
                }
            }
            Err(e) => Err(e),
        }
    }

    /// Ends the hand-over: the record first, then the decision (a decision without a record
    /// is stale and removed before the next hand-over).
    pub fn clear(&self) {
        let _ = std::fs::remove_file(self.dir.join(RECORD_FILE));
        let _ = std::fs::remove_file(self.dir.join(DECISION_FILE));
        let _ = std::fs::File::open(&self.dir).and_then(|d| d.sync_all());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::handover::NEXT_MARK;

    #[test]
    fn the_first_decision_stands() {
        let dir = tempfile::tempdir().unwrap();
        let files = Files::new(dir.path());
        assert_eq!(files.decision("op-1"), None);
        assert_eq!(
            files.decide("op-1", Decision::Taken, "new").unwrap(),
            Decision::Taken
        );
        assert_eq!(
            files.decide("op-1", Decision::Abandoned, "old").unwrap(),
            Decision::Taken
        );
        assert_eq!(files.decision("op-1"), Some(Decision::Taken));
        // A decision about another hand-over is no decision about this one (a stale one).
        assert_eq!(files.decision("op-2"), None);
        assert_eq!(
            files.decide("op-2", Decision::Abandoned, "old").unwrap(),
            Decision::Abandoned
        );
        assert_eq!(
            files.decide("op-2", Decision::Taken, "new").unwrap(),
            Decision::Abandoned
        );
        // A veto carries its reason; the first decision still stands.
        assert_eq!(
            files
                .decide_with("op-3", Decision::Vetoed, "new", "vetoed by hook\nx: busy")
                .unwrap(),
            Decision::Vetoed
        );
        assert_eq!(
            files.decide("op-3", Decision::Taken, "new").unwrap(),
            Decision::Vetoed
        );
        assert_eq!(files.decision("op-3"), Some(Decision::Vetoed));
        assert_eq!(
            files.note("op-3").as_deref(),
            Some("vetoed by hook x: busy")
        );
        assert_eq!(
            files.note("op-2"),
            None,
            "a note is about its own hand-over"
        );
        // No temporary file is left behind.
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names, vec![DECISION_FILE.to_owned()]);
    }

    #[test]
    fn the_record_round_trips_and_clears_with_its_decision() {
        let dir = tempfile::tempdir().unwrap();
        let files = Files::new(dir.path());
        let record = Record {
            op_id: "op-1".into(),
            old_id: "a".repeat(64),
            name: "agent".into(),
            successor_name: format!("agent{NEXT_MARK}op-1"),
            successor_id: Some("b".repeat(64)),
            image: "r/ouroboros-agent:1".into(),
            image_id: "sha256:00".into(),
            deadline_unix_ms: 1,
            hook_deadline_ms: Some(60_000),
        };
        files.write(&record).unwrap();
        assert_eq!(files.read(), Some(record));
        files.decide("op-1", Decision::Taken, "new").unwrap();
        files.clear();
        assert_eq!(files.read(), None);
        assert_eq!(files.decision("op-1"), None);
        std::fs::write(dir.path().join(RECORD_FILE), "{not json").unwrap();
        assert_eq!(files.read(), None, "an unreadable record is ignored");
    }
}

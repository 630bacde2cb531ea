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
}

/// Who won the hand-over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Taken,
    Abandoned,
}

impl Decision {
    fn as_str(self) -> &'static str {
        match self {
            Self::Taken => "taken",
            Self::Abandoned => "abandoned",
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

    /// The decision, once made.
    pub fn decision(&self) -> Option<Decision> {
        match std::fs::read_to_string(self.dir.join(DECISION_FILE))
            .ok()?
            .trim()
        {
            "taken" => Some(Decision::Taken),
            // Anything else is not a successor's claim: the old agent keeps its host.
            _ => Some(Decision::Abandoned),
        }
    }

    /// Makes `wanted` the decision unless one stands already; returns the one that stands.
    /// The file appears whole or not at all (a hard link of a written file fails when the
    /// name exists), so two agents deciding at once cannot both win.
    pub fn decide(&self, wanted: Decision) -> std::io::Result<Decision> {
        let tmp = self.dir.join(format!(
            "{DECISION_FILE}.{}.{}",
            std::process::id(),
            now_unix_ms()
        ));
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(wanted.as_str().as_bytes())?;
        file.sync_all()?;
        let linked = std::fs::hard_link(&tmp, self.dir.join(DECISION_FILE));
        let _ = std::fs::remove_file(&tmp);
        match linked {
            Ok(()) => {
                std::fs::File::open(&self.dir)?.sync_all()?;
                Ok(wanted)
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                Ok(self.decision().unwrap_or(Decision::Abandoned))
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
        assert_eq!(files.decision(), None);
        assert_eq!(files.decide(Decision::Taken).unwrap(), Decision::Taken);
        assert_eq!(files.decide(Decision::Abandoned).unwrap(), Decision::Taken);
        assert_eq!(files.decision(), Some(Decision::Taken));
        files.clear();
        assert_eq!(
            files.decide(Decision::Abandoned).unwrap(),
            Decision::Abandoned
        );
        assert_eq!(files.decide(Decision::Taken).unwrap(), Decision::Abandoned);
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
        };
        files.write(&record).unwrap();
        assert_eq!(files.read(), Some(record));
        files.decide(Decision::Taken).unwrap();
        files.clear();
        assert_eq!(files.read(), None);
        assert_eq!(files.decision(), None);
        std::fs::write(dir.path().join(RECORD_FILE), "{not json").unwrap();
        assert_eq!(files.read(), None, "an unreadable record is ignored");
    }
}

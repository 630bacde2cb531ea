//! The stores: redb across reopen and its lock, batches, pruning.

use super::*;

fn record(host: &str) -> HostRecord {
    HostRecord {
        host: host.into(),
        agent_version: "0.1.0".into(),
        agent_image: String::new(),
        agent_container: String::new(),
        engine: EngineInfo::default(),
        mode: HostMode::Standalone,
        last_seen_unix_ms: 42,
        inventory_at_unix_ms: 41,
        containers: Default::default(),
        cluster_id: String::new(),
        services: Vec::new(),
    }
}

#[test]
fn redb_store_survives_reopen_and_locks_its_dir() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = RedbStore::open(dir.path()).unwrap();
        let mut batch = Batch::default();
        for r in [record("a"), record("b")] {
            batch.hosts.insert(r.host.clone(), r);
        }
        store.save(&batch).unwrap();
        let mut seen = Batch::default();
        seen.last_seen.insert("b".into(), 99);
        store.save(&seen).unwrap();
        let second = RedbStore::open(dir.path());
        assert!(matches!(second, Err(StoreError::Locked(_))));
    }
    let store = RedbStore::open(dir.path()).unwrap();
    let mut b = record("b");
    b.last_seen_unix_ms = 99;
    assert_eq!(store.load_hosts().unwrap(), vec![record("a"), b]);
}

#[test]
fn rollouts_history_announced_and_bad_digests_survive_reopen_and_history_is_pruned() {
    use crate::plan::rollout::{HistoryEntry, Policy, Rollout, RolloutState};
    let entry = |finished_ms: i64, container: &str| HistoryEntry {
        rollout: "r-1".into(),
        host: "h".into(),
        container: container.into(),
        image: "app:1".into(),
        old_digest: "sha256:old".into(),
        new_digest: "sha256:new".into(),
        result: "updated".into(),
        reason: String::new(),
        started_ms: finished_ms - 5,
        finished_ms,
        duration_ms: 5,
    };
    let rollout = Rollout {
        id: "r-1".into(),
        created_ms: 1,
        updated_ms: 2,
        policy: Policy::default(),
        state: RolloutState::Paused {
            reason: "1 of 2 targets failed".into(),
        },
        targets: Vec::new(),
        last_host_done_ms: 0,
        canary_done_ms: 0,
        acknowledged_failures: 0,
        cancel: None,
    };
    let bad = crate::plan::rollout::BadDigest {
        digest: "sha256:bad".into(),
        at_ms: 7,
        outcome: "rolled-back".into(),
        reason: "health gate".into(),
        rollout: "r-1".into(),
    };
    let dir = tempfile::tempdir().unwrap();
    {
        let store = RedbStore::open(dir.path()).unwrap();
        let mut batch = Batch::default();
        batch
            .rollouts
            .insert(rollout.id.clone(), rollout.clone().into());
        batch.history = vec![entry(100, "a"), entry(200, "b"), entry(300, "c")];
        batch.announced.insert("h/a".into(), "sha256:new".into());
        batch.bad_digests.insert("h/a".into(), Some(bad.clone()));
        batch.bad_digests.insert("h/b".into(), Some(bad.clone()));
        store.save(&batch).unwrap();
        let mut forget = Batch::default();
        forget.bad_digests.insert("h/b".into(), None);
        store.save(&forget).unwrap();
        store
            .save(&Batch {
                history_before: Some(200),
                ..Batch::default()
            })
            .unwrap();
    }
    let store = RedbStore::open(dir.path()).unwrap();
    assert_eq!(store.load_rollouts().unwrap(), vec![rollout]);
    let kept: Vec<String> = store
        .load_history()
        .unwrap()
        .into_iter()
        .map(|e| e.container)
        .collect();
    assert_eq!(
        kept,
        vec!["b".to_owned(), "c".to_owned()],
        "older than 200 pruned"
    );
    assert_eq!(
        store
            .load_announced()
            .unwrap()
            .get("h/a")
            .map(String::as_str),
        Some("sha256:new")
    );
    assert_eq!(
        store.load_bad_digests().unwrap(),
        BTreeMap::from([("h/a".to_owned(), bad)]),
        "h/b forgotten"
    );
}

/// A rollout without targets, last changed at `updated_ms` (created 10 ms before).
fn rollout_at(
    id: &str,
    updated_ms: i64,
    state: crate::plan::rollout::RolloutState,
) -> crate::plan::rollout::Rollout {
    crate::plan::rollout::Rollout {
        id: id.into(),
        created_ms: updated_ms - 10,
        updated_ms,
        policy: crate::plan::rollout::Policy::default(),
        state,
        targets: Vec::new(),
        last_host_done_ms: 0,
        canary_done_ms: 0,
        acknowledged_failures: 0,
        cancel: None,
    }
}

#[test]
fn ended_rollouts_are_pruned_by_age_and_beyond_the_newest_thousand() {
    use crate::plan::rollout::RolloutState;
    let rollout = |id: String, at_ms: i64, state: RolloutState| rollout_at(&id, at_ms, state);
    let completed = RolloutState::Completed { failed: 0 };
    let mut batch = Batch::default();
    // Recent ended ones, three more than are kept.
    for i in 0..MAX_ENDED_ROLLOUTS as i64 + 3 {
        let r = rollout(format!("r-new-{i:05}"), 10_000 + i, completed.clone());
        batch.rollouts.insert(r.id.clone(), r.into());
    }
    // Old ones: two ended, and one still paused (kept however old).
    for (id, state) in [
        ("r-old-done", completed.clone()),
        (
            "r-old-cancelled",
            RolloutState::Cancelled {
                reason: "bad image".into(),
            },
        ),
        (
            "r-old-paused",
            RolloutState::Paused {
                reason: "1 of 1 targets failed".into(),
            },
        ),
    ] {
        batch
            .rollouts
            .insert(id.into(), rollout(id.into(), 50, state).into());
    }
    let dir = tempfile::tempdir().unwrap();
    let redb = RedbStore::open(dir.path()).unwrap();
    let memory = MemoryStore::default();
    for store in [&redb as &dyn FleetStore, &memory] {
        store.save(&batch).unwrap();
        store
            .save(&Batch {
                history_before: Some(1_000),
                ..Batch::default()
            })
            .unwrap();
        let mut kept: Vec<String> = store
            .load_rollouts()
            .unwrap()
            .into_iter()
            .map(|r| r.id)
            .collect();
        kept.sort();
        assert_eq!(kept.len(), MAX_ENDED_ROLLOUTS + 1, "bounded");
        assert!(kept.contains(&"r-old-paused".to_owned()));
        assert!(
            !kept
                .iter()
                .any(|id| id == "r-old-done" || id == "r-old-cancelled")
        );
        // The three oldest of the recent ones went over the count.
        for gone in ["r-new-00000", "r-new-00001", "r-new-00002"] {
            assert!(!kept.contains(&gone.to_owned()), "{gone} kept");
        }
        assert!(kept.contains(&"r-new-00003".to_owned()));
    }
}

#[test]
fn a_rollout_is_read_by_id_and_heads_and_summaries_without_targets() {
    use crate::plan::rollout::{RolloutState, TargetState};
    // Created at `created_ms`.
    let rollout = |id: &str, created_ms: i64, state| rollout_at(id, created_ms + 10, state);
    let paused = |why: &str| RolloutState::Paused { reason: why.into() };
    let mut stored = [
        rollout("r-1", 10, paused("old")),
        rollout("r-2", 20, RolloutState::Completed { failed: 0 }),
        rollout("r-3", 30, paused("new")),
        rollout("r-4", 40, RolloutState::Running),
    ];
    // r-4: three targets, one updated, one failed, one still pending.
    let target = crate::plan::rollout::tests::target;
    stored[3].targets = vec![
        target("h", "a", 1),
        target("h", "b", 1),
        target("h", "c", 1),
    ];
    stored[3].targets[0].state = TargetState::Updated {
        at_ms: 41,
        already_current: false,
    };
    stored[3].targets[1].state = TargetState::Failed {
        reason: "health gate".into(),
        outcome: "rolled back".into(),
    };
    let mut batch = Batch::default();
    for r in &stored {
        batch.rollouts.insert(r.id.clone(), r.clone().into());
    }
    let dir = tempfile::tempdir().unwrap();
    let redb = RedbStore::open(dir.path()).unwrap();
    let memory = MemoryStore::default();
    for store in [&redb as &dyn FleetStore, &memory] {
        store.save(&batch).unwrap();
        let mut heads = store.load_rollout_heads().unwrap();
        heads.sort_by(|a, b| a.id.cmp(&b.id));
        let expected: Vec<RolloutHead> = stored.iter().map(RolloutHead::from).collect();
        assert_eq!(heads, expected);
        assert_eq!(
            store.load_rollout("r-3").unwrap().as_ref(),
            Some(&stored[2])
        );
        assert_eq!(store.load_rollout("r-9").unwrap(), None);
        let mut summaries = store.load_rollout_summaries().unwrap();
        summaries.sort_by(|a, b| a.head.id.cmp(&b.head.id));
        let counts: Vec<(&str, i64, usize, usize)> = summaries
            .iter()
            .map(|s| {
                (
                    s.head.id.as_str(),
                    s.head.updated_ms,
                    s.targets_total,
                    s.targets_updated,
                )
            })
            .collect();
        assert_eq!(
            counts,
            [
                ("r-1", 20, 0, 0),
                ("r-2", 30, 0, 0),
                ("r-3", 40, 0, 0),
                ("r-4", 50, 3, 1)
            ]
        );
    }
    // The newest that matches, read whole.
    let fleet = crate::fleet::Fleet::open(std::sync::Arc::new(memory)).unwrap();
    let newest_paused = fleet
        .newest_rollout(|h| matches!(h.state, RolloutState::Paused { .. }))
        .unwrap();
    assert_eq!(newest_paused.as_ref(), Some(&stored[2]));
    assert_eq!(
        fleet
            .newest_rollout(|h| h.id == "r-1")
            .unwrap()
            .map(|r| r.id),
        Some("r-1".to_owned())
    );
    assert_eq!(fleet.newest_rollout(|h| h.id == "r-9").unwrap(), None);
}

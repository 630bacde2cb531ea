//! The hooks around the runner's updates, with real hook processes (so real time, not paused):
//! a veto, the record kept with the target, a resumed target.

use super::*;

/// Real hook processes (so real time): a `before_update` hook that says no to one container
/// leaves it untouched and `vetoed`, which a rollout tolerating no failure does not count as
/// one; `after_update` gets the other's outcome; each run is in the target's record.
#[tokio::test]
async fn a_before_update_veto_leaves_the_target_untouched_and_is_no_failure() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log");
    let write = |point: &str, name: &str, body: String| {
        std::fs::create_dir_all(dir.path().join(point)).unwrap();
        let path = dir.path().join(point).join(name);
        std::fs::write(&path, body).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    };
    write(
        "before_update",
        "10-gate",
        format!(
            "#!/bin/sh\nif [ \"$OUROBOROS_CONTAINER\" = vetoed ]; then echo 'not now'; exit 1; fi\necho \"before $OUROBOROS_CONTAINER\" >> {}\n",
            log.display()
        ),
    );
    write(
        "after_update",
        "10-after",
        format!(
            "#!/bin/sh\necho \"after $OUROBOROS_CONTAINER $OUROBOROS_OUTCOME\" >> {}\n",
            log.display()
        ),
    );
    let clock = TokioClock::starting_at(BASE_MS);
    let quick = Reply::After(Duration::from_millis(10), Status::Updated);
    let agents = Agents::new(clock, &[("vetoed", quick), ("fine", quick)]);
    let (runner, _hosts) = fleet_runner(&["h1", "h2"], agents.clone(), clock);
    let hooks = crate::hooks::Hooks::new(dir.path().into(), Duration::from_secs(10));
    let runner = runner.with_hooks(Arc::new(hooks));
    let policy = Policy {
        max_hosts_in_flight: 1,
        max_failure_ratio: 0.0,
        ..Policy::default()
    };
    let (done, results) = runner
        .run(
            rollout(policy, &[("h1", "vetoed", 1), ("h2", "fine", 1)]),
            &Windows::default(),
        )
        .await;

    assert_eq!(done.state, RolloutState::Completed { failed: 0 });
    assert_eq!(
        *state_of(&done, "vetoed"),
        TargetState::Vetoed {
            reason: "vetoed by hook before_update/10-gate: not now".into()
        }
    );
    assert_eq!(results[&0].status, Status::Vetoed);
    assert!(matches!(
        state_of(&done, "fine"),
        TargetState::Updated { .. }
    ));
    let sent: Vec<String> = agents.log().into_iter().map(|s| s.container).collect();
    assert_eq!(sent, ["fine"], "the vetoed container was never sent");
    assert_eq!(
        std::fs::read_to_string(&log).unwrap(),
        "before fine\nafter fine updated\n"
    );
    let record: Vec<&str> = done.targets[1]
        .transitions
        .iter()
        .map(|(_, s)| s.as_str())
        .collect();
    assert_eq!(
        record,
        [
            "updating",
            "hook before_update/10-gate: exit 0",
            "hook after_update/10-after: exit 0",
            "updated"
        ]
    );
    assert!(
        done.targets[0]
            .transitions
            .iter()
            .any(|(_, s)| s == "hook before_update/10-gate: exit 1"),
        "{:?}",
        done.targets[0].transitions
    );
}

/// A target already sent before a coordinator restart is asked for again without its
/// `before_update` (which ran then): even a hook that would veto now does not undo it.
#[tokio::test]
async fn a_resumed_target_does_not_run_before_update_again() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log");
    for (point, body) in [
        ("before_update", "echo never >&2; exit 1".to_owned()),
        (
            "after_update",
            format!("echo \"after $OUROBOROS_OUTCOME\" >> {}", log.display()),
        ),
    ] {
        std::fs::create_dir_all(dir.path().join(point)).unwrap();
        let path = dir.path().join(point).join("10-hook");
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let clock = TokioClock::starting_at(BASE_MS);
    let quick = Reply::After(Duration::from_millis(10), Status::Updated);
    let agents = Agents::new(clock, &[("web", quick)]);
    let (runner, _hosts) = fleet_runner(&["h1"], agents.clone(), clock);
    let runner = runner.with_hooks(Arc::new(crate::hooks::Hooks::new(
        dir.path().into(),
        Duration::from_secs(10),
    )));
    let mut resumed = rollout(Policy::default(), &[("h1", "web", 1)]);
    resumed.targets[0].state = TargetState::Dispatched {
        op_id: "op-before-restart".into(),
        at_ms: BASE_MS,
    };
    let (done, results) = runner.run(resumed, &Windows::default()).await;
    assert!(
        matches!(state_of(&done, "web"), TargetState::Updated { .. }),
        "{:?}",
        done.targets[0]
    );
    assert_eq!(results[&0].status, Status::Updated);
    assert_eq!(agents.log().len(), 1, "sent again once");
    assert_eq!(std::fs::read_to_string(&log).unwrap(), "after updated\n");
}

/// Ouroboros' own containers fire `before_self_update` and `after_self_update` (a veto leaves
/// the agent as it is), not the update points; the others fire the update points.
#[tokio::test]
async fn own_containers_fire_the_self_update_points() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log");
    for point in [
        "before_update",
        "after_update",
        "before_self_update",
        "after_self_update",
    ] {
        std::fs::create_dir_all(dir.path().join(point)).unwrap();
        let path = dir.path().join(point).join("10-log");
        std::fs::write(
            &path,
            format!(
                "#!/bin/sh\necho \"{point} $OUROBOROS_CONTAINER $OUROBOROS_OUTCOME\" >> {}\n",
                log.display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let clock = TokioClock::starting_at(BASE_MS);
    let quick = Reply::After(Duration::from_millis(10), Status::Updated);
    let agents = Agents::new(clock, &[("app", quick), ("agent", quick)]);
    let (runner, _hosts) = fleet_runner(&["h1"], agents.clone(), clock);
    let hooks = crate::hooks::Hooks::new(dir.path().into(), Duration::from_secs(10));
    let runner = runner.with_hooks(Arc::new(hooks));
    let mut planned = rollout(Policy::default(), &[("h1", "app", 1), ("h1", "agent", 1)]);
    planned.targets[1].own = crate::plan::rollout::Own::Agent;
    let (done, _) = runner.run(planned, &Windows::default()).await;
    assert_eq!(done.state, RolloutState::Completed { failed: 0 });
    assert_eq!(
        std::fs::read_to_string(&log).unwrap(),
        "before_update app \nafter_update app updated\nbefore_self_update agent \nafter_self_update agent updated\n"
    );
}

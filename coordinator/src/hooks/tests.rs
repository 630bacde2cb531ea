//! The hook runner against real processes: order, `.py`, skipped files, the deadline, the
//! cleared environment, bounded output, vetoes.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use super::*;

/// Writes `DIR/point/name` with `body`, executable or not.
fn script(dir: &Path, point: Point, name: &str, body: &str, executable: bool) {
    let sub = dir.join(point.name());
    std::fs::create_dir_all(&sub).unwrap();
    let path = sub.join(name);
    std::fs::write(&path, body).unwrap();
    let mode = if executable { 0o755 } else { 0o644 };
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn event() -> Event {
    Event {
        rollout: "r-1".into(),
        host: "web-01".into(),
        container: "shop".into(),
        image: "registry.lan/shop:stable".into(),
        old_digest: "sha256:aaa".into(),
        new_digest: "sha256:bbb".into(),
        ..Event::default()
    }
}

/// A parent environment holding secrets, as a coordinator's does.
fn secret_environment() -> Vec<(OsString, OsString)> {
    [
        ("PATH", "/usr/local/bin:/usr/bin:/bin"),
        ("HOME", "/root"),
        ("LANG", "C.UTF-8"),
        ("REPO_USER", "robot"),
        ("REPO_PASS", "s3cr3t-pass"),
        ("NOTIFIERS", "discord://hook-id/hook-token"),
        ("INFLUX_PASSWORD", "influx-secret"),
    ]
    .into_iter()
    .map(|(k, v)| (k.into(), v.into()))
    .collect()
}

#[tokio::test]
async fn every_file_runs_in_name_order_py_with_python3_others_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log");
    let append = |name: &str| format!("#!/bin/sh\necho {name} >> {}\n", log.display());
    let p = Point::AfterUpdate;
    script(dir.path(), p, "20-second.sh", &append("20"), true);
    script(dir.path(), p, "10-first", &append("10"), true);
    script(
        dir.path(),
        p,
        "30-third.py",
        &format!(
            "open({:?}, 'a').write('30\\n')\n",
            log.display().to_string()
        ),
        false,
    );
    script(dir.path(), p, "15-notes.txt", &append("15"), false);
    script(dir.path(), p, "40-last", &append("40"), true);
    let hooks = Hooks::new(dir.path().into(), Duration::from_secs(10));
    let fired = hooks.fire(p, &event()).await;
    assert_eq!(std::fs::read_to_string(&log).unwrap(), "10\n20\n30\n40\n");
    assert_eq!(
        fired.summaries(),
        [
            "after_update/10-first: exit 0",
            "after_update/20-second.sh: exit 0",
            "after_update/30-third.py: exit 0",
            "after_update/40-last: exit 0",
        ]
    );
    assert!(fired.veto.is_none());
    // Other points' directories are untouched; a missing one fires nothing.
    assert!(
        hooks
            .fire(Point::BeforeUpdate, &event())
            .await
            .runs
            .is_empty()
    );
    assert!(Hooks::none().fire(p, &event()).await.runs.is_empty());
}

#[tokio::test]
async fn the_event_comes_as_json_on_stdin_and_as_variables_without_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    std::fs::create_dir(&out).unwrap();
    script(
        dir.path(),
        Point::BeforeUpdate,
        "10-record",
        &format!(
            "#!/bin/sh\ncat > {o}/event.json\nenv > {o}/env\n",
            o = out.display()
        ),
        true,
    );
    let hooks = Hooks::new(dir.path().into(), Duration::from_secs(10))
        .with_environment(secret_environment());
    let fired = hooks.fire(Point::BeforeUpdate, &event()).await;
    assert!(fired.veto.is_none(), "{:?}", fired.runs);
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("event.json")).unwrap()).unwrap();
    assert_eq!(json["hook"], "before_update");
    assert_eq!(json["rollout"], "r-1");
    assert_eq!(json["host"], "web-01");
    assert_eq!(json["container"], "shop");
    assert_eq!(json["image"], "registry.lan/shop:stable");
    assert_eq!(json["old_digest"], "sha256:aaa");
    assert_eq!(json["new_digest"], "sha256:bbb");
    assert!(json.get("updates").is_none(), "{json}");
    let env = std::fs::read_to_string(out.join("env")).unwrap();
    for line in [
        "OUROBOROS_HOOK=before_update",
        "OUROBOROS_HOST=web-01",
        "OUROBOROS_CONTAINER=shop",
        "OUROBOROS_NEW_DIGEST=sha256:bbb",
        "PATH=/usr/local/bin:/usr/bin:/bin",
        "LANG=C.UTF-8",
    ] {
        assert!(env.lines().any(|l| l == line), "{line} not in:\n{env}");
    }
    for secret in [
        "REPO_PASS",
        "REPO_USER",
        "s3cr3t",
        "NOTIFIERS",
        "hook-token",
        "INFLUX",
    ] {
        assert!(!env.contains(secret), "{secret} reached the hook:\n{env}");
    }
}

#[tokio::test]
async fn the_whole_list_goes_to_updates_enumerated() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("seen");
    script(
        dir.path(),
        Point::UpdatesEnumerated,
        "list",
        &format!(
            "#!/bin/sh\ncat > {o}.json\nprintf '%s' \"$OUROBOROS_UPDATES\" > {o}.env\n",
            o = out.display()
        ),
        true,
    );
    let updates = vec![
        Update {
            host: "a".into(),
            container: "web".into(),
            image: "r/web:1".into(),
            old_digest: "sha256:1".into(),
            new_digest: "sha256:2".into(),
        },
        Update {
            host: "b".into(),
            container: "db".into(),
            image: "r/db:1".into(),
            old_digest: "sha256:3".into(),
            new_digest: "sha256:4".into(),
        },
    ];
    let e = Event {
        updates: Some(updates),
        ..Event::default()
    };
    Hooks::new(dir.path().into(), Duration::from_secs(10))
        .fire(Point::UpdatesEnumerated, &e)
        .await;
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.with_extension("json")).unwrap())
            .unwrap();
    assert_eq!(json["updates"][1]["container"], "db");
    assert_eq!(json["updates"][1]["new_digest"], "sha256:4");
    assert_eq!(
        std::fs::read_to_string(out.with_extension("env")).unwrap(),
        "a/web r/web:1 sha256:2\nb/db r/db:1 sha256:4"
    );
}

#[tokio::test]
async fn a_hook_past_its_deadline_is_killed_with_its_children() {
    let dir = tempfile::tempdir().unwrap();
    let pid_file = dir.path().join("child.pid");
    script(
        dir.path(),
        Point::BeforeUpdate,
        "slow",
        &format!(
            "#!/bin/sh\necho started\nsleep 300 &\necho $! > {}\nwait\n",
            pid_file.display()
        ),
        true,
    );
    let hooks = Hooks::new(dir.path().into(), Duration::from_secs(1));
    let started = Instant::now();
    let fired = hooks.fire(Point::BeforeUpdate, &event()).await;
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(fired.runs[0].end, End::TimedOut(Duration::from_secs(1)));
    assert_eq!(fired.runs[0].stdout, "started\n");
    let veto = fired.veto.unwrap();
    assert_eq!(veto.hook, "before_update/slow");
    assert_eq!(veto.line, "started");
    // The child it left in the background is gone too (no process with its pid).
    let pid = std::fs::read_to_string(&pid_file).unwrap();
    let proc_dir = format!("/proc/{}", pid.trim());
    let deadline = Instant::now() + Duration::from_secs(5);
    while Path::new(&proc_dir).exists()
        && std::fs::read_to_string(format!("{proc_dir}/stat")).is_ok_and(|s| !s.contains(") Z "))
    {
        assert!(Instant::now() < deadline, "{proc_dir} still runs");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn output_is_kept_up_to_the_bound() {
    let dir = tempfile::tempdir().unwrap();
    // 200 KiB on stdout, a little on stderr.
    script(
        dir.path(),
        Point::AfterUpdate,
        "chatty",
        "#!/bin/sh\nhead -c 204800 /dev/zero | tr '\\0' x\necho oops >&2\n",
        true,
    );
    let fired = Hooks::new(dir.path().into(), Duration::from_secs(10))
        .fire(Point::AfterUpdate, &event())
        .await;
    let run = &fired.runs[0];
    assert_eq!(run.end, End::Exited(0));
    assert_eq!(run.stdout.len(), MAX_OUTPUT);
    assert!(run.stdout.bytes().all(|b| b == b'x'));
    assert_eq!(run.stderr, "oops\n");
}

#[tokio::test]
async fn a_failing_before_hook_vetoes_and_stops_the_rest_an_after_hook_does_not() {
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("ran");
    let touch = format!("#!/bin/sh\ntouch {}\n", marker.display());
    script(
        dir.path(),
        Point::BeforeUpdate,
        "10-ok",
        "#!/bin/sh\nexit 0\n",
        true,
    );
    script(
        dir.path(),
        Point::BeforeUpdate,
        "20-drain",
        "#!/bin/sh\necho\necho 'load balancer refused the drain'\necho second line\nexit 1\n",
        true,
    );
    script(dir.path(), Point::BeforeUpdate, "30-never", &touch, true);
    let hooks = Hooks::new(dir.path().into(), Duration::from_secs(10));
    let fired = hooks.fire(Point::BeforeUpdate, &event()).await;
    let veto = fired.veto.clone().unwrap();
    assert_eq!(veto.hook, "before_update/20-drain");
    assert_eq!(veto.line, "load balancer refused the drain");
    assert_eq!(
        veto.to_string(),
        "vetoed by hook before_update/20-drain: load balancer refused the drain"
    );
    assert_eq!(fired.runs.len(), 2);
    assert!(!marker.exists());

    script(
        dir.path(),
        Point::AfterUpdate,
        "10-fails",
        "#!/bin/sh\nexit 3\n",
        true,
    );
    script(dir.path(), Point::AfterUpdate, "20-runs", &touch, true);
    let fired = hooks.fire(Point::AfterUpdate, &event()).await;
    assert!(fired.veto.is_none());
    assert_eq!(fired.runs[0].end, End::Exited(3));
    assert!(marker.exists());
}

#[tokio::test]
async fn a_hook_that_cannot_start_vetoes_with_why() {
    let dir = tempfile::tempdir().unwrap();
    // Executable, but no interpreter to run it with.
    script(
        dir.path(),
        Point::BeforeImageCleanup,
        "broken",
        "#!/nonexistent/interpreter\n",
        true,
    );
    let fired = Hooks::new(dir.path().into(), Duration::from_secs(10))
        .fire(Point::BeforeImageCleanup, &event())
        .await;
    assert!(matches!(fired.runs[0].end, End::NotStarted(_)));
    assert!(
        fired.veto.unwrap().line.starts_with("could not start: "),
        "{:?}",
        fired.runs
    );
}

#[test]
fn the_fourteen_points_and_which_can_veto() {
    let names: Vec<&str> = Point::ALL.iter().map(|p| p.name()).collect();
    assert_eq!(names.len(), 14);
    let vetoing: Vec<&str> = Point::ALL
        .iter()
        .filter(|p| p.can_veto())
        .map(|p| p.name())
        .collect();
    assert_eq!(
        vetoing,
        [
            "before_update",
            "before_image_cleanup",
            "before_stop_depends_container",
            "before_start_depends_container",
            "before_recreate_hard_depends_container",
            "before_self_update",
            "before_self_cleanup",
        ]
    );
}

#[tokio::test]
async fn every_run_is_counted_by_point_and_outcome() {
    let dir = tempfile::tempdir().unwrap();
    let p = Point::AfterUpdate;
    script(dir.path(), p, "10-ok", "#!/bin/sh\nexit 0\n", true);
    script(dir.path(), p, "20-fails", "#!/bin/sh\nexit 2\n", true);
    script(dir.path(), p, "30-slow", "#!/bin/sh\nexec sleep 30\n", true);
    script(dir.path(), p, "40-broken", "#!/nonexistent/sh\n", true);
    let metrics = crate::telemetry::metrics::Metrics::new(true).unwrap();
    Hooks::new(dir.path().into(), Duration::from_secs(1))
        .with_metrics(metrics.clone())
        .fire(p, &event())
        .await;
    let counts = metrics.take_dirty().unwrap().hook_runs;
    let expected: std::collections::BTreeMap<String, u64> = [
        ("after_update\tok", 1),
        ("after_update\tfailed", 1),
        ("after_update\ttimeout", 1),
        ("after_update\tnot-started", 1),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    assert_eq!(counts, expected);
}

#[test]
fn an_agent_waits_for_every_script_of_the_fullest_point_and_a_margin() {
    assert_eq!(Hooks::none().verdict_deadline(), Duration::ZERO);
    let dir = tempfile::tempdir().unwrap();
    let hooks = Hooks::new(dir.path().into(), Duration::from_secs(5));
    // No script yet: one deadline and the margin.
    assert_eq!(hooks.verdict_deadline(), Duration::from_secs(15));
    for name in ["a", "b", "c"] {
        script(
            dir.path(),
            Point::BeforeStopDependsContainer,
            name,
            "#!/bin/sh\n",
            true,
        );
    }
    script(dir.path(), Point::AfterUpdate, "x", "#!/bin/sh\n", true);
    assert_eq!(hooks.verdict_deadline(), Duration::from_secs(25));
}

#[test]
fn agents_may_ask_only_for_the_points_inside_an_operation() {
    let asked: Vec<&str> = Point::ALL
        .into_iter()
        .filter(|p| p.asked_by_agents())
        .map(Point::name)
        .collect();
    assert_eq!(
        asked,
        [
            "before_image_cleanup",
            "before_stop_depends_container",
            "before_start_depends_container",
            "before_recreate_hard_depends_container",
            "after_recreate_hard_depends_container",
            "before_self_cleanup",
            "after_self_cleanup",
        ]
    );
    // The rest are the coordinator's own moments: an agent asking for them is refused.
    assert!(!Point::BeforeUpdate.asked_by_agents());
    assert!(!Point::BeforeSelfUpdate.asked_by_agents());
}

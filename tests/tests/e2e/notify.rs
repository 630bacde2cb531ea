//! Notifications end to end: a cycle updating three containers on two hosts sends one
//! "updates done" message naming all three; a monitor-only coordinator announces a new digest
//! once over three cycles; with sentinel secrets in every notifier URL and `LOG_LEVEL=trace`,
//! no log line and no metric holds a secret.

use std::net::TcpListener;
use std::time::Duration;

use anyhow::ensure;
use ouroboros_tests::fake_http::{FakeHttp, Response};
use ouroboros_tests::{
    Binaries, Cleanup, Engine, Registry, eventually, publish, require_engine, unique_name,
};
use serde_json::Value;

use crate::fleet::Coordinator;

const CONVERGE: Duration = Duration::from_secs(90);
const POLL: Duration = Duration::from_millis(200);

/// An HTTP receiver on 127.0.0.1 (the harness's fake server) answering `200 {}` to all.
fn receiver() -> anyhow::Result<(String, FakeHttp)> {
    let server = FakeHttp::start(|_| Response::new(200).body("{}"))?;
    Ok((server.addr().to_string(), server))
}

/// The JSON messages the receiver got (json:// notifier).
fn messages(got: &FakeHttp) -> Vec<Value> {
    got.requests()
        .iter()
        .filter_map(|r| serde_json::from_slice(&r.body).ok())
        .collect()
}

#[test]
fn one_message_names_every_update_of_a_cycle() -> anyhow::Result<()> {
    let Some(engine_a) = require_engine() else {
        return Ok(());
    };
    let bins = Binaries::get()?;
    let engine_b = Engine::start_extra()?;
    let registry = Registry::start()?;
    let on_a = Cleanup::new(&engine_a);
    let on_b = Cleanup::new(&engine_b);
    let repo = unique_name("ntf");
    let v1 = publish(&on_a, &registry, &repo, "stable", 1)?;
    on_b.track_image(&v1.reference)?;
    let none = ["--network", "none"];
    let a1 = on_a.run_container("ntf-a1", &none, &v1.reference, &[])?;
    let a2 = on_a.run_container("ntf-a2", &none, &v1.reference, &[])?;
    let b1 = on_b.run_container("ntf-b1", &none, &v1.reference, &[])?;
    publish(&on_a, &registry, &repo, "stable", 2)?;
    let (addr, got) = receiver()?;

    let dir = tempfile::Builder::new()
        .prefix("ouroboros-test-ntf-")
        .tempdir()?;
    let mut coordinator = Coordinator::init(&bins.coordinator, dir.path(), &["host-a", "host-b"])?;
    let monitor = format!("{a1},{a2},{b1}");
    let notifiers = format!("json://{addr}/hook");
    let _server = coordinator.serve_with_env(
        "127.0.0.1:0",
        &[
            ("MONITOR", &monitor),
            ("NOTIFIERS", &notifiers),
            ("SKIP_STARTUP_NOTIFICATIONS", "true"),
        ],
    )?;
    let _agent_a = coordinator.agent(&bins.agent, "host-a", &engine_a)?;
    let _agent_b = coordinator.agent(&bins.agent, "host-b", &engine_b)?;
    coordinator.wait_planned(3)?;
    let (code, checked) = coordinator.admin(&["check"])?;
    assert_eq!(code, 0, "{checked}");
    eventually(CONVERGE, POLL, || {
        ensure!(
            messages(&got)
                .iter()
                .any(|m| m["title"].as_str().unwrap_or_default().contains("updated")),
            "no message yet"
        );
        Ok(())
    })?;
    // Give a second message (there must be none) the time to come.
    std::thread::sleep(Duration::from_secs(1));
    // (The `updates` dry run before announced the new digest; that is another event.)
    let all: Vec<Value> = messages(&got)
        .into_iter()
        .filter(|m| m["title"].as_str().unwrap_or_default().contains("updated"))
        .collect();
    assert_eq!(
        all.len(),
        1,
        "one \"updates done\" message per cycle: {all:?}"
    );
    let m = &all[0];
    assert_eq!(m["title"], "Ouroboros: 3 container(s) updated", "{m}");
    assert_eq!(m["type"], "success");
    let body = m["message"].as_str().unwrap_or_default();
    for (host, c) in [("host-a", &a1), ("host-a", &a2), ("host-b", &b1)] {
        assert!(
            body.contains(&format!("{host}/{c}: {}@sha256:", v1.reference)),
            "{body}"
        );
    }
    assert!(
        !got.requests().iter().any(|r| {
            let b = r.text();
            b.contains("\"startup\"") || b.contains("coordinator started")
        }),
        "startup notification despite SKIP_STARTUP_NOTIFICATIONS"
    );
    Ok(())
}

#[test]
fn monitor_only_announces_a_digest_once_and_no_secret_leaks() -> anyhow::Result<()> {
    let Some(engine) = require_engine() else {
        return Ok(());
    };
    let bins = Binaries::get()?;
    let registry = Registry::start()?;
    let on = Cleanup::new(&engine);
    let repo = unique_name("ntfmo");
    let v1 = publish(&on, &registry, &repo, "stable", 1)?;
    let c = on.run_container("ntfmo", &["--network", "none"], &v1.reference, &[])?;
    publish(&on, &registry, &repo, "stable", 2)?;
    let (addr, got) = receiver()?;
    // A port where nothing listens, for the mail notifier to fail on.
    let closed = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();

    let dir = tempfile::Builder::new()
        .prefix("ouroboros-test-ntfmo-")
        .tempdir()?;
    let mut coordinator = Coordinator::init(&bins.coordinator, dir.path(), &["host-a"])?;
    let s = "SeNtInEl";
    let notifiers = [
        format!("json://user{s}:pass{s}@{addr}/hook{s}"),
        format!("discord://id{s}/token{s}"),
        format!("slack://a{s}/b{s}/c{s}"),
        format!("tgram://bot{s}/chat{s}"),
        format!("ntfy://user{s}:pass{s}@{addr}/topic{s}"),
        format!("gotify://{addr}/token{s}"),
        format!("msteams://team{s}/a{s}/b{s}/c{s}"),
        format!("pushover://user{s}@token{s}"),
        format!("apprise://{addr}/key{s}"),
        format!("mailto://user{s}:pass{s}@127.0.0.1:{closed}?to=ops@fleet.lan"),
    ]
    .join(" ");
    let roots = ["discord", "slack", "tgram", "pushover", "msteams"]
        .iter()
        .map(|n| format!("{n}=http://{addr}"))
        .collect::<Vec<_>>()
        .join(",");
    let server = coordinator.serve_with_env(
        "127.0.0.1:0",
        &[
            ("MONITOR", c.as_str()),
            ("MONITOR_ONLY", "true"),
            ("INTERVAL", "1"),
            ("NOTIFIERS", &notifiers),
            ("OUROBOROS_NOTIFY_API", &roots),
            ("LOG_LEVEL", "trace"),
            ("PROMETHEUS_ADDR", "127.0.0.1"),
            ("PROMETHEUS_PORT", "0"),
            ("OUROBOROS_AGENT_LOST_AFTER", "1"),
        ],
    )?;
    let agent = coordinator.agent(&bins.agent, "host-a", &engine)?;
    // Three monitor-only cycles that see the update.
    eventually(CONVERGE, POLL, || {
        let cycles = server
            .log()
            .lines()
            .filter(|l| l.contains("Scheduled check cycle done.") && l.contains("updates=1"))
            .count();
        ensure!(cycles >= 3, "{cycles} cycles");
        Ok(())
    })?;
    // Deliveries done (the mail one fails three times).
    eventually(CONVERGE, POLL, || {
        let m = messages(&got);
        let available = m
            .iter()
            .filter(|m| {
                m["title"]
                    .as_str()
                    .unwrap_or("")
                    .contains("update(s) available")
            })
            .count();
        ensure!(available >= 1, "no announcement yet");
        Ok(())
    })?;
    std::thread::sleep(Duration::from_secs(2));
    let json_messages = messages(&got);
    let available: Vec<&Value> = json_messages
        .iter()
        .filter(|m| {
            m["title"]
                .as_str()
                .unwrap_or_default()
                .contains("update(s) available")
        })
        .collect();
    // json:// and apprise:// and gotify:// bodies are JSON: the json:// one (version 1.0)
    // announced the digest once over three cycles.
    let from_json: Vec<&&Value> = available.iter().filter(|m| m["version"] == "1.0").collect();
    assert_eq!(
        from_json.len(),
        1,
        "announced {} times: {available:?}",
        from_json.len()
    );
    assert!(
        from_json[0]["message"]
            .as_str()
            .unwrap_or_default()
            .contains(&c),
        "{:?}",
        from_json[0]
    );
    // The startup notification went out (not skipped here).
    assert!(
        json_messages
            .iter()
            .any(|m| m["title"] == "Ouroboros coordinator started"),
        "{json_messages:?}"
    );
    // Every service with a fixed host was reached at its documented path.
    let paths: Vec<String> = got.requests().into_iter().map(|r| r.path).collect();
    for expected in [
        format!("/api/webhooks/id{s}/token{s}"),
        format!("/services/a{s}/b{s}/c{s}"),
        format!("/botbot{s}/sendMessage"),
        "/1/messages.json".to_owned(),
        format!("/webhookb2/a{s}/IncomingWebhook/b{s}/c{s}"),
        format!("/notify/key{s}"),
        "/message".to_owned(),
        format!("/topic{s}"),
    ] {
        assert!(
            paths.iter().any(|p| p == &expected),
            "no request to {expected}: {paths:?}"
        );
    }
    // No secret in any log line (trace level) or metric, though the mail notifier failed.
    let log = server.log();
    assert!(
        log.contains("Notification not delivered"),
        "the mail failure was not logged"
    );
    if let Some(line) = log.lines().find(|l| l.contains(s)) {
        panic!("a secret in the log: {line}");
    }
    let metrics_line = server.wait_for_log("Metrics listening.", CONVERGE)?;
    let maddr = metrics_line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("addr="))
        .unwrap_or_default()
        .to_owned();
    let text = ouroboros_tests::http_request(&maddr, "GET", "/metrics", &[])?.text();
    assert!(!text.contains(s), "a secret in the metrics");
    // Label order within a sample means nothing (the exposition sorts them by name).
    let notified = |scheme: &str, outcome: &str| {
        let labels = [("scheme", scheme), ("outcome", outcome)];
        ouroboros_tests::exposition::value(&text, "ouroboros_notifications_total", &labels)
    };
    assert!(notified("mailto", "failed").is_some(), "{text}");
    assert!(notified("discord", "sent").is_some(), "{text}");
    // The agent goes away (and is notified lost after a second), then comes back.
    drop(agent);
    let titled = |title: &str| {
        messages(&got)
            .iter()
            .filter(|m| m["version"] == "1.0" && m["title"] == title)
            .count()
    };
    eventually(CONVERGE, POLL, || {
        ensure!(
            titled("Ouroboros: agent of host-a lost") == 1,
            "not notified lost"
        );
        Ok(())
    })?;
    let _agent = coordinator.agent(&bins.agent, "host-a", &engine)?;
    eventually(CONVERGE, POLL, || {
        ensure!(
            titled("Ouroboros: agent of host-a is back") == 1,
            "not notified back"
        );
        Ok(())
    })?;
    Ok(())
}

#[test]
fn what_an_agents_recovery_cannot_fix_is_notified_as_needing_an_operator() -> anyhow::Result<()> {
    let Some(engine) = require_engine() else {
        return Ok(());
    };
    let bins = Binaries::get()?;
    let (addr, got) = receiver()?;
    let dir = tempfile::Builder::new()
        .prefix("ouroboros-test-alert-")
        .tempdir()?;
    let mut coordinator = Coordinator::init(&bins.coordinator, dir.path(), &["host-a"])?;
    let notifiers = format!("json://{addr}/hook");
    let server = coordinator.serve_with_env(
        "127.0.0.1:0",
        &[
            ("NOTIFIERS", &notifiers),
            ("SKIP_STARTUP_NOTIFICATIONS", "true"),
        ],
    )?;
    // A journal entry the agent cannot read (torn, or from another version).
    let journal = coordinator.agent_data("host-a").join("journal");
    std::fs::create_dir_all(&journal)?;
    std::fs::write(journal.join("op-torn.json"), b"{\"op_id\": \"op-to")?;
    let agent = coordinator.agent(&bins.agent, "host-a", &engine)?;
    eventually(CONVERGE, POLL, || {
        let alert = messages(&got).into_iter().find(|m| {
            m["title"]
                .as_str()
                .is_some_and(|t| t.contains("host-a") && t.contains("needs an operator"))
        });
        let Some(alert) = alert else {
            anyhow::bail!("no alert yet: {:?}", messages(&got));
        };
        ensure!(alert["type"] == "failure", "{alert}");
        ensure!(
            alert["message"]
                .as_str()
                .is_some_and(|m| m.contains("op-torn.json") && m.contains("quarantine")),
            "{alert}"
        );
        Ok(())
    })?;
    ensure!(journal.join("quarantine/op-torn.json").exists());
    ensure!(server.log().contains("Agent alert: needs an operator."));
    ensure!(agent.log().contains("moved to quarantine"));
    Ok(())
}

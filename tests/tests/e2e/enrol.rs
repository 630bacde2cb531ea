//! Enrolment end to end with the real binaries: `token create` prints a join token, an agent
//! started with `--join` makes its key, gets its certificate and connects; its data dir then
//! holds one private key, its own; the same token is refused a second time. A forgotten host's
//! agent is refused at the handshake and says so; the host then enrols again. An agent whose
//! certificate is due renews it over its link and reconnects with it within a heartbeat.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, ensure};
use ouroboros_tests::{Binaries, Process, eventually, require_engine};

use crate::fleet::Coordinator;

const CONVERGE: Duration = Duration::from_secs(30);
const POLL: Duration = Duration::from_millis(200);

/// Every file under `dir`.
fn files(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            out.extend(files(&path)?);
        } else {
            out.push(path);
        }
    }
    Ok(out)
}

/// `token create` through the binary: its last line.
fn create_token(bin: &Path, coordinator: &Coordinator) -> anyhow::Result<String> {
    let out = Command::new(bin)
        .args([
            "token",
            "create",
            "--ttl",
            "10m",
            "--server",
            &coordinator.url,
        ])
        .arg("--pki-dir")
        .arg(&coordinator.pki)
        .output()?;
    ensure!(out.status.success(), "token create: {out:?}");
    let stdout = String::from_utf8(out.stdout)?;
    let token = stdout
        .lines()
        .last()
        .context("no output")?
        .trim()
        .to_owned();
    ensure!(
        token.starts_with("ouro1."),
        "last line is not a token: {stdout}"
    );
    Ok(token)
}

#[test]
fn a_forgotten_host_is_refused_at_the_handshake_says_so_and_enrols_again() -> anyhow::Result<()> {
    let Some(engine) = require_engine() else {
        return Ok(());
    };
    let bins = Binaries::get()?;
    let dir = tempfile::Builder::new()
        .prefix("ouroboros-test-e2e-")
        .tempdir()?;
    let mut coordinator = Coordinator::init(&bins.coordinator, dir.path(), &[])?;
    let server = coordinator.serve("127.0.0.1:0")?;
    let data = dir.path().join("agent-forgotten");
    let data_str = data.to_str().context("non-UTF-8 path")?.to_owned();
    let start_agent = |token: &str| {
        Process::spawn(
            &bins.agent,
            &[
                "--coordinator",
                &coordinator.url,
                "--host-name",
                "forgotten-01",
                "--data-dir",
                &data_str,
                "--docker-host",
                engine.host(),
            ],
            &[("OUROBOROS_JOIN_TOKEN", token)],
        )
    };
    let connected = |agent: &Process| {
        eventually(CONVERGE, POLL, || {
            let h = coordinator.host("forgotten-01")?;
            ensure!(h["connected"] == true, "not connected: {h}");
            Ok(())
        })
        .with_context(|| agent.log_tail(30))
    };
    let agent = start_agent(&create_token(&bins.coordinator, &coordinator)?)?;
    connected(&agent)?;

    let forgotten = coordinator.json(&["hosts", "forget", "forgotten-01"])?;
    assert_eq!(forgotten["was_connected"], true, "{forgotten}");
    assert_eq!(
        forgotten["revoked_serials"].as_array().map(Vec::len),
        Some(1),
        "{forgotten}"
    );
    agent
        .wait_for_log(
            "This host's certificate was revoked by the coordinator (hosts forget)",
            CONVERGE,
        )
        .with_context(|| agent.log_tail(30))?;
    // Its next attempt comes after the longest reconnect delay (30 s): refused at the handshake.
    server
        .wait_for_log(
            "Refused connection: client certificate revoked",
            Duration::from_secs(60),
        )
        .with_context(|| server.log_tail(30))?;
    assert!(agent.is_running(), "the refused agent keeps retrying");
    assert!(
        coordinator
            .hosts()?
            .iter()
            .all(|h| h["host"] != "forgotten-01"),
        "still listed"
    );
    // Unknown now: a second forget is refused (exit 2) and changes nothing.
    let (code, _) = coordinator.admin(&["hosts", "forget", "forgotten-01"])?;
    assert_eq!(code, 2);

    // Enrolled again: its certificate removed, the agent started with a new token.
    agent.terminate(Duration::from_secs(10))?;
    std::fs::remove_file(data.join("cert.pem"))?;
    let agent = start_agent(&create_token(&bins.coordinator, &coordinator)?)?;
    connected(&agent)?;
    Ok(())
}

#[test]
fn an_agent_renews_its_certificate_over_the_link_and_reconnects_at_once() -> anyhow::Result<()> {
    let Some(engine) = require_engine() else {
        return Ok(());
    };
    let bins = Binaries::get()?;
    let dir = tempfile::Builder::new()
        .prefix("ouroboros-test-e2e-")
        .tempdir()?;
    let mut coordinator = Coordinator::init(&bins.coordinator, dir.path(), &[])?;
    // A one-day certificate: with --renew-before 2d it is due at once; the renewed one (a
    // year) is not.
    let out = Command::new(&bins.coordinator)
        .args([
            "pki", "issue", "--agent", "renew-01", "--days", "1", "--dir",
        ])
        .arg(&coordinator.pki)
        .output()?;
    ensure!(out.status.success(), "pki issue: {out:?}");
    let cert = coordinator.pki.join("agent-renew-01.pem");
    let old = std::fs::read_to_string(&cert)?;
    let server = coordinator.serve("127.0.0.1:0")?;
    let agent = coordinator.agent_with(
        &bins.agent,
        "renew-01",
        &["--docker-host", engine.host(), "--renew-before", "2d"],
        &[],
    )?;
    let renewed = agent
        .wait_for_log(
            "Certificate renewed and stored; reconnecting with it.",
            CONVERGE,
        )
        .with_context(|| agent.log_tail(30))?;
    server
        .wait_for_log("Certificate renewed.", CONVERGE)
        .with_context(|| server.log_tail(30))?;
    let new = std::fs::read_to_string(&cert)?;
    ensure!(new != old, "cert.pem unchanged");
    let key = coordinator.pki.join("agent-renew-01-key.pem");
    assert_eq!(std::fs::metadata(&key)?.permissions().mode() & 0o777, 0o600);
    // Connected again with the new certificate within one heartbeat (5 s), and only once
    // renewed: the new certificate is not due.
    let mark_at = agent.log().find(&renewed).context("renewal line")?;
    eventually(Duration::from_secs(5), Duration::from_millis(50), || {
        let log = agent.log();
        let after = log.get(mark_at..).unwrap_or("");
        ensure!(
            after.contains("Connected to the coordinator."),
            "not reconnected"
        );
        Ok(())
    })
    .with_context(|| agent.log_tail(30))?;
    let h = coordinator.host("renew-01")?;
    assert_eq!(h["connected"], true, "{h}");
    std::thread::sleep(Duration::from_secs(2));
    let renewals = agent
        .log()
        .matches("Certificate renewed and stored")
        .count();
    assert_eq!(renewals, 1, "{}", agent.log_tail(30));
    assert!(
        !agent.log().contains("Certificate renewal failed"),
        "{}",
        agent.log_tail(30)
    );
    Ok(())
}

#[test]
fn an_agent_enrols_with_a_join_token_and_keeps_only_its_own_key() -> anyhow::Result<()> {
    let Some(engine) = require_engine() else {
        return Ok(());
    };
    let bins = Binaries::get()?;
    let dir = tempfile::Builder::new()
        .prefix("ouroboros-test-e2e-")
        .tempdir()?;
    // No agent certificate is issued: the host enrols by token.
    let mut coordinator = Coordinator::init(&bins.coordinator, dir.path(), &[])?;
    let _server = coordinator.serve("127.0.0.1:0")?;

    let out = Command::new(&bins.coordinator)
        .args([
            "token",
            "create",
            "--ttl",
            "10m",
            "--server",
            &coordinator.url,
        ])
        .arg("--pki-dir")
        .arg(&coordinator.pki)
        .output()?;
    ensure!(out.status.success(), "token create: {out:?}");
    let stdout = String::from_utf8(out.stdout)?;
    let token = stdout
        .lines()
        .last()
        .context("no output")?
        .trim()
        .to_owned();
    ensure!(
        token.starts_with("ouro1."),
        "last line is not a token: {stdout}"
    );

    let data = dir.path().join("agent-enrolled");
    let data_str = data.to_str().context("non-UTF-8 path")?;
    let agent = Process::spawn(
        &bins.agent,
        &[
            "--coordinator",
            &coordinator.url,
            "--host-name",
            "enrolled-01",
            "--data-dir",
            data_str,
            "--docker-host",
            engine.host(),
            "--log-level",
            "debug",
        ],
        &[("OUROBOROS_JOIN_TOKEN", &token)],
    )?;
    eventually(CONVERGE, POLL, || {
        let h = coordinator.host("enrolled-01")?;
        ensure!(h["connected"] == true, "not connected: {h}");
        Ok(())
    })
    .with_context(|| agent.log_tail(30))?;
    assert!(agent.is_running(), "{}", agent.log_tail(30));

    // One private key in the agent's data dir: its own, mode 0600; no CA key, no CLI key.
    let all = files(&data)?;
    let keys: Vec<&PathBuf> = all
        .iter()
        .filter(|p| std::fs::read_to_string(p).is_ok_and(|t| t.contains("PRIVATE KEY")))
        .collect();
    assert_eq!(keys, [&data.join("key.pem")], "{all:?}");
    let mode = std::fs::metadata(data.join("key.pem"))?
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);
    assert!(
        all.iter()
            .all(|p| !p.ends_with("ca-key.pem") && !p.ends_with("cli-key.pem")),
        "{all:?}"
    );
    assert!(data.join("cert.pem").exists() && data.join("ca.pem").exists());

    // The token is used up: a second host is refused with one line, exit 64, nothing written.
    let second = dir.path().join("agent-second");
    let out = Command::new(&bins.agent)
        .args(["--coordinator", &coordinator.url, "--join", &token])
        .args(["--host-name", "enrolled-02", "--docker-host", engine.host()])
        .arg("--data-dir")
        .arg(&second)
        .output()?;
    assert_eq!(out.status.code(), Some(64), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    // Logs go to stderr too; the error is the last line.
    assert_eq!(
        stderr.trim().lines().last(),
        Some("error: join token already used"),
        "{stderr}"
    );
    assert!(!second.exists(), "the refused agent wrote {second:?}");

    let tokens = coordinator.json(&["token", "list"])?;
    assert_eq!(tokens[0]["uses_left"], 0, "{tokens}");
    assert_eq!(tokens[0]["hosts"][0], "enrolled-01", "{tokens}");
    assert!(
        !tokens
            .to_string()
            .contains(token.split('.').nth(2).unwrap_or("x"))
    );
    Ok(())
}

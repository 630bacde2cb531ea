//! The agent reaches a Docker engine over TCP with mutual TLS, configured the Docker CLI's way
//! (`DOCKER_HOST`, `DOCKER_TLS_VERIFY`, `DOCKER_CERT_PATH`), and refuses an engine whose
//! certificate its CA did not sign.

use std::path::Path;
use std::time::Duration;

use anyhow::ensure;
use ouroboros_shared::pki::{CertificateAuthority, IssuedCert, LeafKind, Validity};
use ouroboros_tests::{
    Binaries, Cleanup, Engine, Registry, eventually, publish, require_engine, unique_name,
};

use crate::fleet::Coordinator;

const CONVERGE: Duration = Duration::from_secs(30);
const POLL: Duration = Duration::from_millis(200);

fn write(dir: &Path, files: &[(&str, &str)]) {
    std::fs::create_dir_all(dir).unwrap();
    for (name, text) in files {
        std::fs::write(dir.join(name), text).unwrap();
    }
}

fn issue(ca: &CertificateAuthority, kind: LeafKind) -> IssuedCert {
    ca.issue(&kind, Validity::days_from_now(1)).unwrap()
}

#[test]
fn agent_talks_mutual_tls_to_a_tcp_engine_from_docker_env_vars() -> anyhow::Result<()> {
    let Some(system) = require_engine() else {
        return Ok(());
    };
    ouroboros_shared::install_crypto_provider();
    let bins = Binaries::get()?;
    let dir = tempfile::Builder::new()
        .prefix("ouroboros-test-dtls-")
        .tempdir()?;

    // The engine's own CA: a server certificate for 127.0.0.1 and a client certificate.
    let engine_ca = CertificateAuthority::generate(Validity::days_from_now(1))?;
    let server = issue(
        &engine_ca,
        LeafKind::Coordinator {
            sans: vec!["127.0.0.1".into()],
        },
    );
    let client = issue(&engine_ca, LeafKind::Admin);
    let daemon_dir = dir.path().join("daemon");
    write(
        &daemon_dir,
        &[
            ("ca.pem", engine_ca.cert_pem()),
            ("server.pem", &server.cert_pem),
            ("server-key.pem", &server.key_pem),
        ],
    );
    let client_dir = dir.path().join("client");
    write(
        &client_dir,
        &[
            ("ca.pem", engine_ca.cert_pem()),
            ("cert.pem", &client.cert_pem),
            ("key.pem", &client.key_pem),
        ],
    );
    // A client directory whose CA did not sign the engine's certificate.
    let other_ca = CertificateAuthority::generate(Validity::days_from_now(1))?;
    let stranger = issue(&other_ca, LeafKind::Admin);
    let wrong_dir = dir.path().join("wrong");
    write(
        &wrong_dir,
        &[
            ("ca.pem", other_ca.cert_pem()),
            ("cert.pem", &stranger.cert_pem),
            ("key.pem", &stranger.key_pem),
        ],
    );

    let engine = Engine::start_extra_tls(&daemon_dir)?;
    let tcp = engine.tcp_host().unwrap_or_default().to_owned();
    let registry = Registry::start()?;
    let on_system = Cleanup::new(&system);
    let on_tls = Cleanup::new(&engine);
    let image = publish(&on_system, &registry, &unique_name("dtls"), "1", 1)?;
    on_tls.track_image(&image.reference)?;
    let container = on_tls.run_container("dtls", &["--network", "none"], &image.reference, &[])?;

    let mut coordinator = Coordinator::init(
        &bins.coordinator,
        &dir.path().join("coord"),
        &["tls-host", "wrong-host"],
    )?;
    let _server = coordinator.serve("127.0.0.1:0")?;
    let env = |cert_dir: &Path| {
        vec![
            ("DOCKER_HOST", tcp.clone()),
            ("DOCKER_TLS_VERIFY", "1".to_owned()),
            ("DOCKER_CERT_PATH", cert_dir.display().to_string()),
        ]
    };
    let good_env = env(&client_dir);
    let good: Vec<(&str, &str)> = good_env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let agent = coordinator.agent_with(&bins.agent, "tls-host", &[], &good)?;
    eventually(CONVERGE, POLL, || {
        let h = coordinator.host("tls-host")?;
        ensure!(h["connected"] == true, "not connected: {h}");
        coordinator.container("tls-host", &container)
    })?;
    agent.wait_for_log("Docker engine connected.", CONVERGE)?;

    // Wrong CA: the agent never reaches the engine, so it never reports the host.
    let wrong_env = env(&wrong_dir);
    let wrong: Vec<(&str, &str)> = wrong_env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let refused = coordinator.agent_with(&bins.agent, "wrong-host", &[], &wrong)?;
    let line = refused.wait_for_log("Docker engine unreachable", CONVERGE)?;
    assert!(line.contains("127.0.0.1"), "{line}");
    assert!(
        coordinator.host("wrong-host").is_err(),
        "an agent without a trusted engine reported its host"
    );
    Ok(())
}

//! Every refusal of the mutual-TLS layer is refused, with a clear log line, and the valid agent
//! and CLI certificates are accepted.

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ouroboros_coordinator::cli::serve::{self as server, ServeConfig};
use ouroboros_proto::v1 as pb;
use ouroboros_proto::v1::admin_client::AdminClient;
use ouroboros_proto::v1::agent_gateway_client::AgentGatewayClient;
use ouroboros_shared::host::HostName;
use ouroboros_shared::pki::{self, CertificateAuthority, IssuedCert, LeafKind, PkiDir, Validity};
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

/// Log lines written by the code under test, on this test's thread.
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl Logs {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
    /// Polls until a line containing every one of `parts` was logged.
    async fn wait_for(&self, parts: &[&str]) -> String {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let text = self.text();
            if let Some(line) = text.lines().find(|l| parts.iter().all(|p| l.contains(p))) {
                return line.to_owned();
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no log line with {parts:?} in:\n{text}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

struct Fixture {
    _dir: tempfile::TempDir,
    pki: PkiDir,
    url: String,
    ca_pem: String,
    stop: Option<oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<()>>,
}

impl Fixture {
    async fn start() -> Self {
        Self::start_with_heartbeat(Duration::from_secs(5)).await
    }

    async fn start_with_heartbeat(heartbeat: Duration) -> Self {
        ouroboros_shared::install_crypto_provider();
        let dir = tempfile::tempdir().unwrap();
        let pki = PkiDir::new(dir.path().join("pki"));
        pki::init(&pki, &[]).unwrap();
        for host in ["host-a", "host-b"] {
            pki::issue_agent(&pki, &HostName::parse(host).unwrap(), 1).unwrap();
        }
        let config = ServeConfig {
            heartbeat,
            missed_heartbeats: 2,
            schedule: ouroboros_coordinator::plan::schedule::Schedule::Interval(
                Duration::from_secs(3600),
            ),
            ..ServeConfig::new(dir.path().join("data"), pki.clone())
        };
        let prepared = server::prepare(config).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("https://{}", listener.local_addr().unwrap());
        let (stop, stopped) = oneshot::channel::<()>();
        let server = tokio::spawn(async move {
            server::run(prepared, listener, async {
                let _ = stopped.await;
            })
            .await
            .unwrap();
        });
        let ca_pem = std::fs::read_to_string(pki.ca_cert()).unwrap();
        Self {
            _dir: dir,
            pki,
            url,
            ca_pem,
            stop: Some(stop),
            server: Some(server),
        }
    }

    fn files(&self, cert: std::path::PathBuf, key: std::path::PathBuf) -> IssuedCert {
        IssuedCert {
            cert_pem: std::fs::read_to_string(cert).unwrap(),
            key_pem: std::fs::read_to_string(key).unwrap(),
        }
    }

    fn cli(&self) -> IssuedCert {
        self.files(self.pki.cli_cert(), self.pki.cli_key())
    }

    fn agent(&self, host: &str) -> IssuedCert {
        let h = HostName::parse(host).unwrap();
        self.files(self.pki.agent_cert(&h), self.pki.agent_key(&h))
    }

    /// A channel presenting `identity` (or none). Connection errors surface on the first call.
    fn channel(&self, identity: Option<&IssuedCert>) -> Channel {
        let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&self.ca_pem));
        if let Some(id) = identity {
            tls = tls.identity(Identity::from_pem(&id.cert_pem, &id.key_pem));
        }
        Endpoint::from_shared(self.url.clone())
            .unwrap()
            .tls_config(tls)
            .unwrap()
            .timeout(Duration::from_secs(10))
            .connect_lazy()
    }

    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(server) = self.server.take() {
            tokio::time::timeout(Duration::from_secs(10), server)
                .await
                .expect("server did not stop")
                .unwrap();
        }
    }
}

fn hello(host: &str) -> pb::AgentMessage {
    pb::AgentMessage {
        kind: Some(pb::agent_message::Kind::Hello(pb::Hello {
            host: host.into(),
            agent_version: "test".into(),
            engine: Some(pb::EngineInfo {
                version: "20.10.24".into(),
                api_version: "1.41".into(),
                os: "linux".into(),
                arch: "x86_64".into(),
            }),
            mode: pb::HostMode::Standalone.into(),
            ..Default::default()
        })),
    }
}

fn inventory(names: &[&str]) -> pb::AgentMessage {
    pb::AgentMessage {
        kind: Some(pb::agent_message::Kind::Inventory(pb::Inventory {
            containers: names
                .iter()
                .map(|n| pb::Container {
                    id: format!("{n}-id"),
                    name: (*n).into(),
                    image: "example/app:1".into(),
                    ..Default::default()
                })
                .collect(),
            swarm_manager: false,
            observed_at_unix_ms: 1,
            mode: pb::HostMode::Standalone.into(),
            ..Default::default()
        })),
    }
}

/// Opens an agent stream and sends `first`; returns the sender and the coordinator's answer.
async fn open_agent_stream(
    channel: Channel,
    first: pb::AgentMessage,
) -> (
    mpsc::Sender<pb::AgentMessage>,
    Result<tonic::Streaming<pb::CoordinatorMessage>, tonic::Status>,
) {
    let (tx, rx) = mpsc::channel(8);
    tx.send(first).await.unwrap();
    let answer = AgentGatewayClient::new(channel)
        .connect(ReceiverStream::new(rx))
        .await
        .map(tonic::Response::into_inner);
    (tx, answer)
}

fn capture_logs() -> (Logs, tracing::subscriber::DefaultGuard) {
    let logs = Logs::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::DEBUG)
        .finish();
    (logs, tracing::subscriber::set_default(subscriber))
}

#[tokio::test]
async fn valid_agent_and_cli_certificates_are_accepted() {
    let (logs, _guard) = capture_logs();
    let fx = Fixture::start().await;

    let (tx, answer) =
        open_agent_stream(fx.channel(Some(&fx.agent("host-a"))), hello("host-a")).await;
    let mut inbound = answer.expect("valid agent refused");
    let welcome = inbound.message().await.unwrap().unwrap();
    match welcome.kind {
        Some(pb::coordinator_message::Kind::Welcome(w)) => assert_eq!(w.host, "host-a"),
        other => panic!("expected Welcome, got {other:?}"),
    }
    tx.send(inventory(&["web", "db"])).await.unwrap();

    let mut admin = AdminClient::new(fx.channel(Some(&fx.cli())));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let containers = admin
            .list_containers(pb::ListContainersRequest {
                host: "host-a".into(),
            })
            .await
            .expect("valid CLI refused")
            .into_inner()
            .containers;
        if containers.len() == 2 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "inventory never arrived"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let hosts = admin
        .list_hosts(pb::ListHostsRequest {})
        .await
        .unwrap()
        .into_inner()
        .hosts;
    assert_eq!(hosts.len(), 1);
    assert!(hosts[0].connected);
    assert_eq!(hosts[0].engine.as_ref().unwrap().api_version, "1.41");
    logs.wait_for(&["Agent connected.", "host-a"]).await;

    // Closing the stream marks the host disconnected.
    drop(tx);
    drop(inbound);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let hosts = admin
            .list_hosts(pb::ListHostsRequest {})
            .await
            .unwrap()
            .into_inner()
            .hosts;
        if !hosts[0].connected {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "host still connected"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    fx.stop().await;
}

/// A client without a certificate completes the handshake (an enrolling agent has none), so
/// the refusal is at the call: every service but `Enrolment` refuses it.
#[tokio::test]
async fn no_client_certificate_is_refused() {
    let (logs, _guard) = capture_logs();
    let fx = Fixture::start().await;
    let status = AdminClient::new(fx.channel(None))
        .list_hosts(pb::ListHostsRequest {})
        .await
        .expect_err("call without a client certificate succeeded");
    assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");
    assert_eq!(
        status.message(),
        "no client certificate: Admin needs an admin certificate"
    );
    logs.wait_for(&["Refused call: no client certificate; Admin needs an admin certificate."])
        .await;
    let (_tx, answer) = open_agent_stream(fx.channel(None), hello("host-a")).await;
    let status = answer.expect_err("agent stream without a client certificate accepted");
    assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");
    logs.wait_for(&[
        "Refused call: no client certificate; AgentGateway needs an agent certificate.",
    ])
    .await;
    assert!(admin_hosts(&fx).await.is_empty());
    fx.stop().await;
}

#[tokio::test]
async fn certificate_from_another_ca_is_refused() {
    let (logs, _guard) = capture_logs();
    let fx = Fixture::start().await;
    let foreign = CertificateAuthority::generate(Validity::days_from_now(10)).unwrap();
    let impostor = foreign
        .issue(
            &LeafKind::Agent {
                host: HostName::parse("host-a").unwrap(),
            },
            Validity::days_from_now(10),
        )
        .unwrap();
    let (_tx, answer) = open_agent_stream(fx.channel(Some(&impostor)), hello("host-a")).await;
    assert!(answer.is_err(), "certificate of a foreign CA accepted");
    logs.wait_for(&["Refused connection: client certificate not signed by the fleet CA"])
        .await;
    // Nothing was recorded for the impostor.
    let hosts = AdminClient::new(fx.channel(Some(&fx.cli())))
        .list_hosts(pb::ListHostsRequest {})
        .await
        .unwrap()
        .into_inner()
        .hosts;
    assert!(hosts.is_empty(), "{hosts:?}");
    fx.stop().await;
}

#[tokio::test]
async fn expired_certificate_is_refused() {
    let (logs, _guard) = capture_logs();
    let fx = Fixture::start().await;
    let ca = CertificateAuthority::load(&fx.pki).unwrap();
    let now = time::OffsetDateTime::now_utc();
    let expired = ca
        .issue(
            &LeafKind::Agent {
                host: HostName::parse("host-a").unwrap(),
            },
            Validity {
                not_before: now - time::Duration::days(30),
                not_after: now - time::Duration::days(1),
            },
        )
        .unwrap();
    let (_tx, answer) = open_agent_stream(fx.channel(Some(&expired)), hello("host-a")).await;
    assert!(answer.is_err(), "expired certificate accepted");
    logs.wait_for(&["Refused connection: client certificate expired"])
        .await;
    fx.stop().await;
}

#[tokio::test]
async fn agent_certificate_may_not_call_admin() {
    let (logs, _guard) = capture_logs();
    let fx = Fixture::start().await;
    let status = AdminClient::new(fx.channel(Some(&fx.agent("host-a"))))
        .list_hosts(pb::ListHostsRequest {})
        .await
        .expect_err("agent certificate called Admin");
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
    assert!(
        status.message().ends_with("it needs an admin certificate"),
        "{status:?}"
    );
    logs.wait_for(&[
        "Refused call",
        "agent host-a",
        "an agent certificate may not call Admin",
    ])
    .await;
    fx.stop().await;
}

#[tokio::test]
async fn cli_certificate_may_not_act_as_agent() {
    let (logs, _guard) = capture_logs();
    let fx = Fixture::start().await;
    let (_tx, answer) = open_agent_stream(fx.channel(Some(&fx.cli())), hello("host-a")).await;
    let status = answer.expect_err("CLI certificate connected as an agent");
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
    assert!(
        status.message().ends_with("it needs an agent certificate"),
        "{status:?}"
    );
    logs.wait_for(&[
        "Refused call",
        "admin ouroboros-cli",
        "an admin certificate may not call AgentGateway",
    ])
    .await;
    fx.stop().await;
}

#[tokio::test]
async fn hello_claiming_another_host_is_refused() {
    let (logs, _guard) = capture_logs();
    let fx = Fixture::start().await;
    let (_tx, answer) =
        open_agent_stream(fx.channel(Some(&fx.agent("host-a"))), hello("host-b")).await;
    let status = answer.expect_err("spoofed Hello accepted");
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
    logs.wait_for(&[
        "Refused agent: its Hello claims a host other than its certificate's.",
        "certificate_host=host-a",
        "claimed_host=host-b",
    ])
    .await;
    let hosts = AdminClient::new(fx.channel(Some(&fx.cli())))
        .list_hosts(pb::ListHostsRequest {})
        .await
        .unwrap()
        .into_inner()
        .hosts;
    assert!(hosts.is_empty(), "spoofed host recorded: {hosts:?}");
    fx.stop().await;
}

async fn admin_hosts(fx: &Fixture) -> Vec<pb::HostStatus> {
    AdminClient::new(fx.channel(Some(&fx.cli())))
        .list_hosts(pb::ListHostsRequest {})
        .await
        .unwrap()
        .into_inner()
        .hosts
}

async fn wait_connected(fx: &Fixture, host: &str, want: bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let hosts = admin_hosts(fx).await;
        if hosts.iter().any(|h| h.host == host && h.connected == want) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{host} never became connected={want}: {hosts:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_silent_agent_is_dropped_after_missed_heartbeats() {
    let (logs, _guard) = capture_logs();
    // Two missed heartbeats of 200 ms: dropped after 400 ms of silence.
    let fx = Fixture::start_with_heartbeat(Duration::from_millis(200)).await;
    let (_tx, answer) =
        open_agent_stream(fx.channel(Some(&fx.agent("host-a"))), hello("host-a")).await;
    let mut inbound = answer.expect("valid agent refused");
    inbound.message().await.unwrap().expect("no Welcome");
    wait_connected(&fx, "host-a", true).await;
    // The agent keeps its stream open but sends nothing, like a host cut off the network.
    wait_connected(&fx, "host-a", false).await;
    let status = inbound
        .message()
        .await
        .expect_err("stream not ended with a status");
    assert_eq!(status.code(), tonic::Code::DeadlineExceeded, "{status:?}");
    logs.wait_for(&["Agent disconnected.", "host-a", "no message for"])
        .await;
    fx.stop().await;
}

#[tokio::test]
async fn a_second_connection_of_the_same_host_replaces_the_first() {
    let (logs, _guard) = capture_logs();
    let fx = Fixture::start().await;
    let (_tx1, first) =
        open_agent_stream(fx.channel(Some(&fx.agent("host-a"))), hello("host-a")).await;
    let mut first = first.expect("first connection refused");
    first.message().await.unwrap().expect("no Welcome");
    let (tx2, second) =
        open_agent_stream(fx.channel(Some(&fx.agent("host-a"))), hello("host-a")).await;
    let mut second = second.expect("second connection refused");
    second.message().await.unwrap().expect("no Welcome");

    let status = first.message().await.expect_err("first stream not ended");
    assert_eq!(status.code(), tonic::Code::Aborted, "{status:?}");
    logs.wait_for(&[
        "connected again while its previous connection was open",
        "old_peer=",
    ])
    .await;
    // The replaced connection's end does not disconnect the host; the new one reports.
    tx2.send(inventory(&["after"])).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let hosts = admin_hosts(&fx).await;
        if hosts[0].container_count == 1 {
            assert!(hosts[0].connected);
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{hosts:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    fx.stop().await;
}

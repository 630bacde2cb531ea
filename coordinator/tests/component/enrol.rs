//! Enrolment by join token against the real server: a token enrols an agent that then
//! connects with its certificate; reuse, expiry, revocation, a foreign CA fingerprint and a
//! host already enrolled are each refused with one clear line; and nothing but `Enrolment` is
//! reachable without a client certificate.

use std::time::Duration;

use ouroboros_coordinator::cli::serve::{self as server, ServeConfig};
use ouroboros_proto::v1 as pb;
use ouroboros_proto::v1::admin_client::AdminClient;
use ouroboros_proto::v1::agent_gateway_client::AgentGatewayClient;
use ouroboros_shared::host::HostName;
use ouroboros_shared::join::{EnrolError, Enrolled, JoinToken, enrol};
use ouroboros_shared::pki::{self, PeerIdentity, PkiDir, identify};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

pub(crate) struct Fixture {
    _dir: tempfile::TempDir,
    pub(crate) pki: PkiDir,
    pub(crate) url: String,
    pub(crate) ca_pem: String,
    stop: Option<oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<()>>,
}

impl Fixture {
    pub(crate) async fn start() -> Self {
        ouroboros_shared::install_crypto_provider();
        let dir = tempfile::tempdir().unwrap();
        let pki = PkiDir::new(dir.path().join("pki"));
        pki::init(&pki, &[]).unwrap();
        pki::issue_agent(&pki, &HostName::parse("host-a").unwrap(), 1).unwrap();
        let config = ServeConfig {
            schedule: ouroboros_coordinator::plan::schedule::Schedule::Interval(
                Duration::from_secs(3600),
            ),
            ..ServeConfig::new(dir.path().join("data"), pki.clone())
        };
        let prepared = server::prepare(config).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!(
            "https://localhost:{}",
            listener.local_addr().unwrap().port()
        );
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

    pub(crate) fn channel(&self, identity: Option<(&str, &str)>) -> Channel {
        let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&self.ca_pem));
        if let Some((cert, key)) = identity {
            tls = tls.identity(Identity::from_pem(cert, key));
        }
        Endpoint::from_shared(self.url.clone())
            .unwrap()
            .tls_config(tls)
            .unwrap()
            .timeout(Duration::from_secs(10))
            .connect_lazy()
    }

    pub(crate) fn admin(&self) -> AdminClient<Channel> {
        let cert = std::fs::read_to_string(self.pki.cli_cert()).unwrap();
        let key = std::fs::read_to_string(self.pki.cli_key()).unwrap();
        AdminClient::new(self.channel(Some((&cert, &key))))
    }

    pub(crate) async fn token(&self, ttl_seconds: u64, uses: u32) -> JoinToken {
        let answer = self
            .admin()
            .create_join_token(pb::CreateJoinTokenRequest { ttl_seconds, uses })
            .await
            .unwrap()
            .into_inner();
        JoinToken::parse(&answer.token).unwrap()
    }

    pub(crate) async fn tokens(&self) -> Vec<pb::JoinTokenInfo> {
        self.admin()
            .list_join_tokens(pb::ListJoinTokensRequest {})
            .await
            .unwrap()
            .into_inner()
            .tokens
    }

    pub(crate) async fn enrol(
        &self,
        token: &JoinToken,
        host: &str,
    ) -> Result<Enrolled, EnrolError> {
        enrol(&self.url, token, &HostName::parse(host).unwrap()).await
    }

    pub(crate) async fn stop(mut self) {
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
            engine: Some(pb::EngineInfo::default()),
            mode: pb::HostMode::Standalone.into(),
            ..Default::default()
        })),
    }
}

pub(crate) async fn open_agent_stream(
    channel: Channel,
    host: &str,
) -> (
    mpsc::Sender<pb::AgentMessage>,
    Result<tonic::Streaming<pb::CoordinatorMessage>, tonic::Status>,
) {
    let (tx, rx) = mpsc::channel(8);
    tx.send(hello(host)).await.unwrap();
    let answer = AgentGatewayClient::new(channel)
        .connect(ReceiverStream::new(rx))
        .await
        .map(tonic::Response::into_inner);
    (tx, answer)
}

pub(crate) fn refusal(result: Result<Enrolled, EnrolError>) -> String {
    match result {
        Ok(e) => panic!("enrolled: {e:?}"),
        Err(e) => e.to_string(),
    }
}

#[tokio::test]
async fn a_token_enrols_an_agent_which_then_connects_with_its_certificate() {
    let fx = Fixture::start().await;
    let token = fx.token(3600, 1).await;
    let enrolled = fx.enrol(&token, "web-01").await.unwrap();
    let der = CertificateDer::from_pem_slice(enrolled.cert_pem.as_bytes()).unwrap();
    assert_eq!(
        identify(&der).unwrap(),
        PeerIdentity::Agent(HostName::parse("web-01").unwrap())
    );
    assert_eq!(enrolled.ca_pem, fx.ca_pem);

    let channel = fx.channel(Some((&enrolled.cert_pem, &enrolled.key_pem)));
    let (_tx, answer) = open_agent_stream(channel, "web-01").await;
    let mut inbound = answer.expect("enrolled agent refused");
    match inbound.message().await.unwrap().unwrap().kind {
        Some(pb::coordinator_message::Kind::Welcome(w)) => assert_eq!(w.host, "web-01"),
        other => panic!("expected Welcome, got {other:?}"),
    }
    let tokens = fx.tokens().await;
    assert_eq!(tokens.len(), 1);
    assert_eq!(tokens[0].uses_left, 0);
    assert_eq!(tokens[0].hosts, ["web-01"]);
    fx.stop().await;
}

#[tokio::test]
async fn a_used_token_is_refused() {
    let fx = Fixture::start().await;
    let token = fx.token(3600, 1).await;
    fx.enrol(&token, "web-01").await.unwrap();
    let line = refusal(fx.enrol(&token, "web-02").await);
    assert_eq!(line, "join token already used");
    fx.stop().await;
}

#[tokio::test]
async fn an_expired_token_is_refused() {
    let fx = Fixture::start().await;
    let token = fx.token(1, 1).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let line = refusal(fx.enrol(&token, "web-01").await);
    assert_eq!(line, "join token expired");
    assert_eq!(fx.tokens().await[0].uses_left, 1);
    fx.stop().await;
}

#[tokio::test]
async fn a_revoked_token_is_refused() {
    let fx = Fixture::start().await;
    let token = fx.token(3600, 5).await;
    let revoked = fx
        .admin()
        .revoke_join_token(pb::RevokeJoinTokenRequest {
            id: token.id().to_owned(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(revoked.revoked);
    let line = refusal(fx.enrol(&token, "web-01").await);
    assert_eq!(line, "join token revoked");
    fx.stop().await;
}

#[tokio::test]
async fn a_forged_secret_is_refused() {
    let fx = Fixture::start().await;
    let token = fx.token(3600, 1).await;
    let text = token.expose();
    let mut parts: Vec<&str> = text.split('.').collect();
    let forged_secret = "0".repeat(64);
    parts[2] = &forged_secret;
    let forged = JoinToken::parse(&parts.join(".")).unwrap();
    let line = refusal(fx.enrol(&forged, "web-01").await);
    assert_eq!(line, "join token not valid for this coordinator");
    assert_eq!(fx.tokens().await[0].uses_left, 1);
    fx.stop().await;
}

#[tokio::test]
async fn a_token_for_another_ca_is_refused_by_the_agent_before_anything_is_sent() {
    let fx = Fixture::start().await;
    let token = fx.token(3600, 1).await;
    let text = token.expose();
    let other_ca = text.rsplit_once('.').unwrap().0.to_owned() + "." + &"ab".repeat(32);
    let pinned_elsewhere = JoinToken::parse(&other_ca).unwrap();
    let err = fx.enrol(&pinned_elsewhere, "web-01").await.unwrap_err();
    assert!(
        matches!(err, EnrolError::WrongCoordinator { .. }),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        format!(
            "the coordinator at {} is not the one the token was made for (CA fingerprint differs)",
            fx.url
        )
    );
    // The token (whose id and secret were right) was never presented: its use is intact.
    let tokens = fx.tokens().await;
    assert_eq!(tokens[0].uses_left, 1);
    assert!(tokens[0].hosts.is_empty());
    fx.stop().await;
}

#[tokio::test]
async fn a_host_already_enrolled_or_known_is_refused() {
    let fx = Fixture::start().await;
    let first = fx.token(3600, 1).await;
    fx.enrol(&first, "web-01").await.unwrap();
    let second = fx.token(3600, 2).await;
    let line = refusal(fx.enrol(&second, "web-01").await);
    assert_eq!(line, "host web-01 is already enrolled; forget it first");

    // host-a has a certificate from `pki issue` and has connected: the fleet knows it.
    let cert =
        std::fs::read_to_string(fx.pki.agent_cert(&HostName::parse("host-a").unwrap())).unwrap();
    let key =
        std::fs::read_to_string(fx.pki.agent_key(&HostName::parse("host-a").unwrap())).unwrap();
    let (_tx, answer) = open_agent_stream(fx.channel(Some((&cert, &key))), "host-a").await;
    answer.unwrap().message().await.unwrap().unwrap();
    let line = refusal(fx.enrol(&second, "host-a").await);
    assert_eq!(line, "host host-a is already enrolled; forget it first");
    // host-b has a certificate from `pki issue` but never connected: issued counts too.
    pki::issue_agent(&fx.pki, &HostName::parse("host-b").unwrap(), 1).unwrap();
    let line = refusal(fx.enrol(&second, "host-b").await);
    assert_eq!(line, "host host-b is already enrolled; forget it first");
    // No refusal took a use.
    let tokens = fx.tokens().await;
    assert_eq!(tokens[1].uses_left, 2);
    fx.stop().await;
}

#[tokio::test]
async fn without_a_client_certificate_only_enrolment_is_reachable() {
    let fx = Fixture::start().await;
    let status = AdminClient::new(fx.channel(None))
        .list_hosts(pb::ListHostsRequest {})
        .await
        .expect_err("Admin called without a certificate");
    assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");
    assert_eq!(
        status.message(),
        "no client certificate: Admin needs an admin certificate"
    );
    let status = AdminClient::new(fx.channel(None))
        .create_join_token(pb::CreateJoinTokenRequest {
            ttl_seconds: 60,
            uses: 1,
        })
        .await
        .expect_err("a token made without a certificate");
    assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");
    let (_tx, answer) = open_agent_stream(fx.channel(None), "web-01").await;
    let status = answer.expect_err("AgentGateway called without a certificate");
    assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");
    assert_eq!(
        status.message(),
        "no client certificate: AgentGateway needs an agent certificate"
    );
    assert!(fx.tokens().await.is_empty());
    fx.stop().await;
}

//! `hosts forget` against the real server: the host's certificates (made by `pki issue` or
//! by enrolment) are refused at the handshake from then on, its live stream ends saying so,
//! it leaves `hosts`, and its name can enrol again; an unknown host changes nothing.

use ouroboros_proto::v1 as pb;
use ouroboros_shared::cli::error_chain;
use ouroboros_shared::host::HostName;
use ouroboros_shared::pki;

use crate::enrol::{Fixture, open_agent_stream, refusal};

impl Fixture {
    async fn forget(&self, host: &str) -> Result<pb::ForgetHostResponse, tonic::Status> {
        self.admin()
            .forget_host(pb::ForgetHostRequest { host: host.into() })
            .await
            .map(tonic::Response::into_inner)
    }

    async fn host_names(&self) -> Vec<String> {
        self.admin()
            .list_hosts(pb::ListHostsRequest {})
            .await
            .unwrap()
            .into_inner()
            .hosts
            .into_iter()
            .map(|h| h.host)
            .collect()
    }

    fn issued(&self, host: &str) -> (String, String) {
        let name = HostName::parse(host).unwrap();
        (
            std::fs::read_to_string(self.pki.agent_cert(&name)).unwrap(),
            std::fs::read_to_string(self.pki.agent_key(&name)).unwrap(),
        )
    }
}

/// Opens an agent stream with `cert`/`key` on a new connection and reads Welcome.
async fn connects(fx: &Fixture, host: &str, cert: &str, key: &str) -> Result<(), String> {
    let (_tx, answer) = open_agent_stream(fx.channel(Some((cert, key))), host).await;
    let mut inbound = answer.map_err(|s| error_chain(&s))?;
    match inbound.message().await {
        Ok(Some(_)) => Ok(()),
        Ok(None) => Err("stream closed".into()),
        Err(s) => Err(error_chain(&s)),
    }
}

fn assert_revoked_at_handshake(result: Result<(), String>) {
    let error = result.expect_err("a revoked certificate was let in");
    assert!(error.contains("CertificateRevoked"), "{error}");
}

#[tokio::test]
async fn forgetting_a_host_revokes_its_certificates_at_the_handshake_and_frees_its_name() {
    let fx = Fixture::start().await;
    // host-a: a `pki issue` certificate, connected; web-01: enrolled by token, connected.
    let (a_cert, a_key) = fx.issued("host-a");
    let a_channel = fx.channel(Some((&a_cert, &a_key)));
    let (_a_tx, a_answer) = open_agent_stream(a_channel.clone(), "host-a").await;
    let mut a_stream = a_answer.unwrap();
    a_stream.message().await.unwrap().unwrap();
    let enrolled = fx.enrol(&fx.token(3600, 1).await, "web-01").await.unwrap();
    let (_w_tx, w_answer) = open_agent_stream(
        fx.channel(Some((&enrolled.cert_pem, &enrolled.key_pem))),
        "web-01",
    )
    .await;
    let mut w_stream = w_answer.unwrap();
    w_stream.message().await.unwrap().unwrap();
    assert_eq!(fx.host_names().await, ["host-a", "web-01"]);

    let forgotten = fx.forget("host-a").await.unwrap();
    assert_eq!(forgotten.host, "host-a");
    assert!(forgotten.was_connected);
    assert_eq!(forgotten.revoked_serials.len(), 1);
    // The live stream ends saying why.
    let ended = loop {
        match a_stream.message().await {
            Ok(Some(_)) => continue,
            Ok(None) => panic!("stream ended without a status"),
            Err(status) => break status,
        }
    };
    assert_eq!(ended.code(), tonic::Code::PermissionDenied, "{ended:?}");
    assert!(ended.message().contains("revoked"), "{ended:?}");
    // A new stream on the same (already verified) connection is refused too.
    let (_tx, again) = open_agent_stream(a_channel, "host-a").await;
    let status = again.expect_err("a revoked certificate's connection opened a stream");
    assert!(error_chain(&status).contains("revoked"), "{status:?}");
    // A new connection fails at the handshake.
    assert_revoked_at_handshake(connects(&fx, "host-a", &a_cert, &a_key).await);

    let forgotten = fx.forget("web-01").await.unwrap();
    assert!(forgotten.was_connected);
    assert_revoked_at_handshake(
        connects(&fx, "web-01", &enrolled.cert_pem, &enrolled.key_pem).await,
    );
    assert!(fx.host_names().await.is_empty());

    // host-b: issued by `pki issue`, never connected: its certificate is revoked all the same.
    pki::issue_agent(&fx.pki, &HostName::parse("host-b").unwrap(), 1).unwrap();
    let forgotten = fx.forget("host-b").await.unwrap();
    assert!(!forgotten.was_connected);
    assert_eq!(forgotten.revoked_serials.len(), 1);
    let (b_cert, b_key) = fx.issued("host-b");
    assert_revoked_at_handshake(connects(&fx, "host-b", &b_cert, &b_key).await);

    // Each name enrols again, and the new certificate connects.
    let token = fx.token(3600, 3).await;
    for host in ["web-01", "host-a", "host-b"] {
        let again = fx.enrol(&token, host).await.unwrap();
        connects(&fx, host, &again.cert_pem, &again.key_pem)
            .await
            .unwrap();
    }
    // The old certificates stay refused.
    assert_revoked_at_handshake(connects(&fx, "host-a", &a_cert, &a_key).await);
    assert_eq!(fx.host_names().await, ["host-a", "host-b", "web-01"]);
    fx.stop().await;
}

#[tokio::test]
async fn forgetting_an_unknown_host_is_an_error_that_changes_nothing() {
    let fx = Fixture::start().await;
    let (a_cert, a_key) = fx.issued("host-a");
    connects(&fx, "host-a", &a_cert, &a_key).await.unwrap();
    let status = fx.forget("nope").await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::NotFound, "{status:?}");
    assert_eq!(
        status.message(),
        "no host nope: nothing forgotten (`hosts` lists the fleet)"
    );
    assert_eq!(fx.host_names().await, ["host-a"]);
    connects(&fx, "host-a", &a_cert, &a_key).await.unwrap();
    // A known name still refuses enrolment: nothing was forgotten.
    let line = refusal(fx.enrol(&fx.token(3600, 1).await, "host-a").await);
    assert_eq!(line, "host host-a is already enrolled; forget it first");
    fx.stop().await;
}

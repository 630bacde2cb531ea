//! Certificate renewal over the agent's link, against the real server: a certificate about to
//! expire is replaced by one with a new key and a new serial, which connects at once; a
//! refused renewal (the host was forgotten) leaves the old files as they were.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use ouroboros_agent::renew::{Renewal, due_in, renew};
use ouroboros_shared::host::HostName;
use ouroboros_shared::pki::{
    CertificateAuthority, ClientPem, LeafKind, PeerIdentity, Validity, first_cert_der, identify,
    serial_hex,
};
use ouroboros_shared::time_fmt::now_unix_ms;

use crate::enrol::{Fixture, open_agent_stream};

/// A certificate for `host` valid from a minute ago for `secs` more seconds, written with its
/// key into `dir`.
fn short_lived(fx: &Fixture, host: &HostName, secs: i64, dir: &Path) -> (Renewal, ClientPem) {
    let ca = CertificateAuthority::load(&fx.pki).unwrap();
    let now = time::OffsetDateTime::now_utc();
    let issued = ca
        .issue(
            &LeafKind::Agent { host: host.clone() },
            Validity {
                not_before: now - time::Duration::minutes(1),
                not_after: now + time::Duration::seconds(secs),
            },
        )
        .unwrap();
    let renewal = Renewal {
        cert: dir.join("cert.pem"),
        key: dir.join("key.pem"),
        before: None,
    };
    std::fs::write(&renewal.cert, &issued.cert_pem).unwrap();
    std::fs::write(&renewal.key, &issued.key_pem).unwrap();
    let pem = ClientPem {
        ca: fx.ca_pem.clone(),
        cert: issued.cert_pem,
        key: issued.key_pem,
    };
    (renewal, pem)
}

fn serial(pem: &str) -> String {
    serial_hex(&first_cert_der(pem).unwrap()).unwrap()
}

/// Opens an agent stream with `tls` on a new connection; Ok once Welcome came.
async fn welcomed(fx: &Fixture, host: &str, tls: &ClientPem) -> Result<(), tonic::Status> {
    let (_tx, answer) = open_agent_stream(fx.channel(Some((&tls.cert, &tls.key))), host).await;
    answer?.message().await?;
    Ok(())
}

#[tokio::test]
async fn a_certificate_about_to_expire_is_renewed_with_a_new_key_and_serial() {
    let fx = Fixture::start().await;
    let host = HostName::parse("short-01").unwrap();
    let dir = tempfile::tempdir().unwrap();
    // Valid for 61 s more of a 121 s lifetime: due once a third (40 s) remains, in ~21 s.
    let (mut renewal, old) = short_lived(&fx, &host, 61, dir.path());
    let now = now_unix_ms() / 1000;
    let wait = due_in(&old.cert, None, now).unwrap();
    assert!(
        wait > Duration::from_secs(15) && wait <= Duration::from_secs(22),
        "{wait:?}"
    );
    renewal.before = Some(Duration::from_secs(120));
    assert_eq!(due_in(&old.cert, renewal.before, now), Some(Duration::ZERO));

    welcomed(&fx, "short-01", &old).await.unwrap();
    let channel = fx.channel(Some((&old.cert, &old.key)));
    let new = renew(channel, &renewal, &host, &old).await.unwrap();

    assert_ne!(serial(&new.cert), serial(&old.cert));
    assert_ne!(new.key, old.key, "a new key pair");
    assert_eq!(std::fs::read_to_string(&renewal.cert).unwrap(), new.cert);
    assert_eq!(std::fs::read_to_string(&renewal.key).unwrap(), new.key);
    let mode = std::fs::metadata(&renewal.key)
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);
    assert_eq!(
        identify(&first_cert_der(&new.cert).unwrap()).unwrap(),
        PeerIdentity::Agent(host.clone())
    );
    // The new certificate lasts the usual leaf lifetime: not due for months.
    let next = due_in(&new.cert, None, now).unwrap();
    assert!(next > Duration::from_secs(30 * 86_400), "{next:?}");
    // No temporary file is left behind.
    let mut names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["cert.pem", "key.pem"]);
    // The new certificate connects at once; the old one still does until it expires.
    welcomed(&fx, "short-01", &new).await.unwrap();
    fx.stop().await;
}

#[tokio::test]
async fn a_refused_renewal_leaves_the_old_files_intact() {
    let fx = Fixture::start().await;
    let host = HostName::parse("short-02").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (renewal, old) = short_lived(&fx, &host, 5, dir.path());
    welcomed(&fx, "short-02", &old).await.unwrap();
    fx.admin()
        .forget_host(ouroboros_proto::v1::ForgetHostRequest {
            host: "short-02".into(),
        })
        .await
        .unwrap();
    let channel = fx.channel(Some((&old.cert, &old.key)));
    let error = renew(channel, &renewal, &host, &old).await.unwrap_err();
    assert!(
        error
            .to_string()
            .starts_with("coordinator refused the renewal"),
        "{error}"
    );
    assert_eq!(std::fs::read_to_string(&renewal.cert).unwrap(), old.cert);
    assert_eq!(std::fs::read_to_string(&renewal.key).unwrap(), old.key);
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2);
    fx.stop().await;
}

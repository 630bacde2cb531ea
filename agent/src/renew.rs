//! Renewal of the agent's certificate over its mTLS link, before it expires: a new key made
//! here, a certificate request sent on `AgentGateway.Renew`, and the new key and certificate
//! written over the old ones (each through a temporary file and a rename; the key 0600, first as
//! `KEY.next`, so that a crash between the steps is completed or undone at the next start). A
//! refused or failed renewal writes nothing: the old files stay as they were.

use std::path::{Path, PathBuf};
use std::time::Duration;

use ouroboros_proto::v1 as pb;
use ouroboros_proto::v1::agent_gateway_client::AgentGatewayClient;
use ouroboros_shared::host::HostName;
use ouroboros_shared::join::key_and_request;
use ouroboros_shared::pki::{ClientPem, PeerIdentity, first_cert_der, identify, validity_unix};
use tonic::transport::Channel;

use crate::enrol::replace;

/// Where the agent's certificate and key live, and when to renew.
#[derive(Debug, Clone)]
pub struct Renewal {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Renew when less than this remains; `None`: when less than a third of the
    /// certificate's lifetime remains.
    pub before: Option<Duration>,
}

/// Why a renewal failed; nothing was written.
#[derive(Debug, thiserror::Error)]
pub enum RenewError {
    #[error("cannot make a key or certificate request: {0}")]
    Key(String),
    #[error("coordinator refused the renewal: {0}")]
    Refused(String),
    #[error("the coordinator answered with a certificate that is not this host's")]
    BadAnswer,
    #[error("cannot write {path}: {reason}")]
    Write { path: PathBuf, reason: String },
}

/// When (unix seconds) a certificate valid from `not_before` to `not_after` is to be
/// renewed: `before` ahead of its expiry, or with a third of its lifetime left.
pub fn renew_at(not_before: i64, not_after: i64, before: Option<Duration>) -> i64 {
    let lifetime = (not_after - not_before).max(0);
    let ahead = match before {
        Some(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        None => lifetime / 3,
    };
    not_after.saturating_sub(ahead)
}

/// How long from `now_unix` until the certificate `cert_pem` is due for renewal (zero when
/// due); `None` when it cannot be read.
pub fn due_in(cert_pem: &str, before: Option<Duration>, now_unix: i64) -> Option<Duration> {
    let der = first_cert_der(cert_pem)?;
    let (not_before, not_after) = validity_unix(&der)?;
    let wait = renew_at(not_before, not_after, before).saturating_sub(now_unix);
    Some(Duration::from_secs(u64::try_from(wait).unwrap_or(0)))
}

/// Renews over `channel` (the agent's verified link): returns the TLS material to reconnect
/// with, after writing the new key and certificate.
pub async fn renew(
    channel: Channel,
    renewal: &Renewal,
    host: &HostName,
    current: &ClientPem,
) -> Result<ClientPem, RenewError> {
    let (key_pem, csr_der) = key_and_request(host).map_err(|e| RenewError::Key(e.to_string()))?;
    let answer = AgentGatewayClient::new(channel)
        .renew(pb::RenewRequest { csr_der })
        .await
        .map_err(|s| RenewError::Refused(s.message().to_owned()))?
        .into_inner();
    match first_cert_der(&answer.cert_pem).map(|d| identify(&d)) {
        Some(Ok(PeerIdentity::Agent(h))) if &h == host => {}
        _ => return Err(RenewError::BadAnswer),
    }
    let write = |path: &PathBuf, contents: &str, mode: u32| {
        replace(path, contents, mode).map_err(|e| RenewError::Write {
            path: path.clone(),
            reason: e.to_string(),
        })
    };
    // The new key goes beside the old one first (`KEY.next`), then the certificate replaces
    // the old one, then the key does. A crash between the steps leaves either the old pair
    // (and a stray `KEY.next`) or the new certificate with its key in `KEY.next`:
    // [`finish_interrupted`] at the next start tells which and completes or drops it.
    let next = next_key_path(&renewal.key);
    write(&next, &key_pem, 0o600)?;
    write(&renewal.cert, &answer.cert_pem, 0o644)?;
    std::fs::rename(&next, &renewal.key).map_err(|e| RenewError::Write {
        path: renewal.key.clone(),
        reason: e.to_string(),
    })?;
    Ok(ClientPem {
        ca: current.ca.clone(),
        cert: answer.cert_pem,
        key: key_pem,
    })
}

/// Where a renewal puts the new key before the certificate is replaced.
fn next_key_path(key: &Path) -> PathBuf {
    let mut next = key.as_os_str().to_owned();
    next.push(".next");
    PathBuf::from(next)
}

/// At start, before the certificate and key are read: completes a renewal that a crash cut
/// short. `KEY.next` that belongs to the certificate on disk becomes the key; one that does not
/// (the certificate was never replaced) is removed, and the old pair stays. Returns what it did,
/// for the log.
pub fn finish_interrupted(cert: &Path, key: &Path) -> std::io::Result<Option<&'static str>> {
    let next = next_key_path(key);
    let Ok(next_pem) = std::fs::read_to_string(&next) else {
        return Ok(None);
    };
    let cert_pem = std::fs::read_to_string(cert).unwrap_or_default();
    if ouroboros_shared::pki::key_matches_cert(&next_pem, &cert_pem) {
        std::fs::rename(&next, key)?;
        Ok(Some(
            "completed: the renewed certificate's key put in place",
        ))
    } else {
        std::fs::remove_file(&next)?;
        Ok(Some(
            "dropped: the certificate was not replaced; the old pair stays",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_renewal_cut_short_is_completed_or_dropped_at_start() {
        use ouroboros_shared::pki::{CertificateAuthority, LeafKind, Validity};
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
        let ca = CertificateAuthority::generate(Validity::days_from_now(30)).unwrap();
        let host = HostName::parse("web-01").unwrap();
        let issue = || {
            ca.issue(
                &LeafKind::Agent { host: host.clone() },
                Validity::days_from_now(30),
            )
            .unwrap()
        };
        let (old, new) = (issue(), issue());
        std::fs::write(&cert, &old.cert_pem).unwrap();
        std::fs::write(&key, &old.key_pem).unwrap();
        assert_eq!(finish_interrupted(&cert, &key).unwrap(), None);
        // Cut before the certificate was replaced: the new key goes, the old pair stays.
        std::fs::write(next_key_path(&key), &new.key_pem).unwrap();
        assert!(
            finish_interrupted(&cert, &key)
                .unwrap()
                .unwrap()
                .starts_with("dropped")
        );
        assert!(!next_key_path(&key).exists());
        assert_eq!(std::fs::read_to_string(&key).unwrap(), old.key_pem);
        // Cut after: the new certificate gets its key.
        std::fs::write(next_key_path(&key), &new.key_pem).unwrap();
        std::fs::write(&cert, &new.cert_pem).unwrap();
        assert!(
            finish_interrupted(&cert, &key)
                .unwrap()
                .unwrap()
                .starts_with("completed")
        );
        assert_eq!(std::fs::read_to_string(&key).unwrap(), new.key_pem);
        assert!(ouroboros_shared::pki::key_matches_cert(
            &new.key_pem,
            &new.cert_pem
        ));
        assert!(!ouroboros_shared::pki::key_matches_cert(
            &old.key_pem,
            &new.cert_pem
        ));
    }

    #[test]
    fn renewal_is_due_with_a_third_of_the_lifetime_left_or_the_given_margin() {
        // Valid for 90 days from day 0: due at day 60.
        let day = 86_400;
        assert_eq!(renew_at(0, 90 * day, None), 60 * day);
        assert_eq!(
            renew_at(0, 90 * day, Some(Duration::from_secs(7 * day as u64))),
            83 * day
        );
        // A margin longer than the lifetime: due at once.
        assert!(renew_at(0, 10, Some(Duration::from_secs(3600))) < 0);
    }
}

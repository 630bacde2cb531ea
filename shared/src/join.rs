//! Join tokens and the agent's side of enrolment.
//!
//! A token is `ouro1.ID.SECRET.CA`: `ID` (16 hex digits) names it in `token list`/`revoke`,
//! `SECRET` (64 hex digits) proves it (the coordinator keeps only its SHA-256), and `CA` is the
//! SHA-256 of the fleet CA certificate's DER (64 hex digits). The agent makes its own key,
//! opens TLS to the coordinator trusting only a chain that leads to the CA with that
//! fingerprint ([`PinnedCa`]), and sends the token and a certificate request; its private key
//! never leaves the host.

use std::fmt;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use rcgen::{CertificateParams, KeyPair};
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use crate::host::HostName;

/// The version prefix of join tokens.
pub const TOKEN_PREFIX: &str = "ouro1";
/// Length of a token id in hex digits.
const ID_HEX: usize = 16;
/// Length of a secret or fingerprint in hex digits.
const HASH_HEX: usize = 64;

/// SHA-256 of `bytes`.
pub fn sha256(bytes: &[u8]) -> [u8; 32] {
    let digest = ring::digest::digest(&ring::digest::SHA256, bytes);
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

/// Lower-case hex.
pub fn hex(bytes: &[u8]) -> String {
    ::hex::encode(bytes)
}

fn unhex32(text: &str) -> Option<[u8; 32]> {
    if text.len() != HASH_HEX || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let mut out = [0u8; 32];
    ::hex::decode_to_slice(text, &mut out).ok()?;
    Some(out)
}

/// The fingerprint a token carries: SHA-256 of the CA certificate's DER.
pub fn ca_fingerprint(ca_pem: &str) -> Option<[u8; 32]> {
    CertificateDer::from_pem_slice(ca_pem.as_bytes())
        .ok()
        .map(|der| sha256(&der))
}

/// A token that is not `ouro1.ID.SECRET.CA`.
#[derive(Debug, thiserror::Error)]
#[error("not a join token (expected {TOKEN_PREFIX}.ID.SECRET.CA-SHA256)")]
pub struct InvalidToken;

/// A parsed join token. `Debug` never shows the secret.
#[derive(Clone, PartialEq, Eq)]
pub struct JoinToken {
    id: String,
    secret: String,
    ca: [u8; 32],
}

impl fmt::Debug for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JoinToken")
            .field("id", &self.id)
            .field("secret", &"<redacted>")
            .field("ca", &hex(&self.ca))
            .finish()
    }
}

impl JoinToken {
    /// A token from its parts: `id` 8 bytes, `secret` 32 bytes.
    pub fn new(id: &[u8; 8], secret: &[u8; 32], ca: [u8; 32]) -> Self {
        Self {
            id: hex(id),
            secret: hex(secret),
            ca,
        }
    }

    pub fn parse(text: &str) -> Result<Self, InvalidToken> {
        let mut parts = text.trim().split('.');
        let (Some(TOKEN_PREFIX), Some(id), Some(secret), Some(ca), None) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return Err(InvalidToken);
        };
        let id_ok = id.len() == ID_HEX && id.bytes().all(|b| b.is_ascii_hexdigit());
        if !id_ok || unhex32(secret).is_none() {
            return Err(InvalidToken);
        }
        Ok(Self {
            id: id.to_ascii_lowercase(),
            secret: secret.to_ascii_lowercase(),
            ca: unhex32(ca).ok_or(InvalidToken)?,
        })
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// SHA-256 of the secret, what the coordinator stores.
    pub fn secret_hash(&self) -> [u8; 32] {
        sha256(self.secret.as_bytes())
    }

    /// The CA fingerprint.
    pub fn ca(&self) -> [u8; 32] {
        self.ca
    }

    /// The whole token, secret included: print it once, never log it.
    pub fn expose(&self) -> String {
        format!(
            "{TOKEN_PREFIX}.{}.{}.{}",
            self.id,
            self.secret,
            hex(&self.ca)
        )
    }
}

/// Trusts a server only when its chain holds the CA with the pinned fingerprint and the
/// server certificate verifies against that CA (name, validity, signature).
#[derive(Debug)]
pub struct PinnedCa {
    fingerprint: [u8; 32],
    provider: Arc<rustls::crypto::CryptoProvider>,
    /// Set when the server's chain holds no CA with the fingerprint.
    mismatch: Arc<AtomicBool>,
}

impl ServerCertVerifier for PinnedCa {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(ca) = intermediates
            .iter()
            .find(|c| sha256(c.as_ref()) == self.fingerprint)
        else {
            self.mismatch.store(true, Ordering::SeqCst);
            return Err(rustls::Error::General(
                "the server's CA fingerprint differs from the join token's".into(),
            ));
        };
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca.clone().into_owned())?;
        let verifier =
            WebPkiServerVerifier::builder_with_provider(Arc::new(roots), self.provider.clone())
                .build()
                .map_err(|e| rustls::Error::General(e.to_string()))?;
        verifier.verify_server_cert(end_entity, &[], server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Connects tonic over TCP + TLS with [`PinnedCa`] (tonic's own TLS takes no custom verifier).
#[derive(Clone)]
struct PinnedConnector {
    tls: TlsConnector,
    server_name: ServerName<'static>,
    addr: String,
}

impl tower_service::Service<http::Uri> for PinnedConnector {
    type Response = TokioIo<TlsStream<TcpStream>>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<Self::Response>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: http::Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let tcp = TcpStream::connect(&this.addr).await?;
            let _ = tcp.set_nodelay(true);
            let tls = this.tls.connect(this.server_name, tcp).await?;
            Ok(TokioIo::new(tls))
        })
    }
}

/// What enrolment gives the agent. `Debug` never shows the key.
#[derive(Clone)]
pub struct Enrolled {
    pub cert_pem: String,
    pub key_pem: String,
    pub ca_pem: String,
}

impl fmt::Debug for Enrolled {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Enrolled")
            .field("cert_pem", &self.cert_pem)
            .field("key_pem", &"<redacted>")
            .finish()
    }
}

/// Why enrolment failed; each message is one line for the operator.
#[derive(Debug, thiserror::Error)]
pub enum EnrolError {
    #[error(
        "the coordinator at {url} is not the one the token was made for (CA fingerprint differs)"
    )]
    WrongCoordinator { url: String },
    #[error("cannot reach the coordinator at {url}: {reason}")]
    Unreachable { url: String, reason: String },
    /// The coordinator refused: its message ("join token already used", ...).
    #[error("{0}")]
    Refused(String),
    #[error("bad --coordinator URL {url}: {reason}")]
    BadUrl { url: String, reason: String },
    #[error("cannot make this host's key or certificate request: {0}")]
    Key(#[from] rcgen::Error),
    #[error("the coordinator at {url} answered with {what}")]
    BadAnswer { url: String, what: &'static str },
}

impl EnrolError {
    /// Whether trying again later may help (the coordinator was not reached).
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Unreachable { .. })
    }
}

/// A new private key (PEM) and a certificate request for `host` signed with it (DER), for
/// enrolment and renewal.
pub fn key_and_request(host: &HostName) -> Result<(String, Vec<u8>), rcgen::Error> {
    let key = KeyPair::generate()?;
    let csr = CertificateParams::new(vec![host.to_string()])?.serialize_request(&key)?;
    Ok((key.serialize_pem(), csr.der().to_vec()))
}

/// Makes a key for `host`, sends a certificate request with `token` to the coordinator at
/// `url` over TLS pinned to the token's CA, and returns the signed certificate. Nothing is
/// sent when the server's chain does not lead to the pinned CA.
pub async fn enrol(url: &str, token: &JoinToken, host: &HostName) -> Result<Enrolled, EnrolError> {
    let bad_url = |reason: String| EnrolError::BadUrl {
        url: url.to_owned(),
        reason,
    };
    let uri: http::Uri = url
        .parse()
        .map_err(|e: http::uri::InvalidUri| bad_url(e.to_string()))?;
    let authority = uri
        .authority()
        .ok_or_else(|| bad_url("no host".into()))?
        .clone();
    let name = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']');
    let server_name = ServerName::try_from(name.to_owned()).map_err(|e| bad_url(e.to_string()))?;
    let addr = format!(
        "{}:{}",
        authority.host(),
        authority.port_u16().unwrap_or(443)
    );

    let (key_pem, csr) = key_and_request(host)?;

    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mismatch = Arc::new(AtomicBool::new(false));
    let verifier = PinnedCa {
        fingerprint: token.ca(),
        provider: provider.clone(),
        mismatch: mismatch.clone(),
    };
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| bad_url(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let connector = PinnedConnector {
        tls: TlsConnector::from(Arc::new(config)),
        server_name,
        addr,
    };
    // The connector does TLS itself; tonic must not (it would insist on its own config).
    let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{authority}"))
        .map_err(|e| bad_url(e.to_string()))?
        .connect_timeout(Duration::from_secs(10))
        .timeout(Duration::from_secs(30));
    let unreachable = |reason: String| EnrolError::Unreachable {
        url: url.to_owned(),
        reason,
    };
    let wrong = || EnrolError::WrongCoordinator {
        url: url.to_owned(),
    };
    let channel = match endpoint.connect_with_connector(connector).await {
        Ok(c) => c,
        Err(_) if mismatch.load(Ordering::SeqCst) => return Err(wrong()),
        Err(e) => return Err(unreachable(crate::cli::error_chain(&e))),
    };
    let request = ouroboros_proto::v1::EnrolRequest {
        token: token.expose(),
        host: host.to_string(),
        csr_der: csr,
    };
    let answer = ouroboros_proto::v1::enrolment_client::EnrolmentClient::new(channel)
        .enrol(request)
        .await
        .map_err(|status| match status.code() {
            tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::DeadlineExceeded
                if mismatch.load(Ordering::SeqCst) =>
            {
                wrong()
            }
            tonic::Code::Unavailable | tonic::Code::DeadlineExceeded => {
                unreachable(status.message().to_owned())
            }
            _ => EnrolError::Refused(status.message().to_owned()),
        })?
        .into_inner();
    // The CA the coordinator hands over must be the pinned one.
    if ca_fingerprint(&answer.ca_pem) != Some(token.ca()) {
        return Err(wrong());
    }
    let bad = |what| EnrolError::BadAnswer {
        url: url.to_owned(),
        what,
    };
    let cert = CertificateDer::from_pem_slice(answer.cert_pem.as_bytes())
        .map_err(|_| bad("no certificate"))?;
    match crate::pki::identify(&cert) {
        Ok(crate::pki::PeerIdentity::Agent(h)) if &h == host => {}
        _ => {
            return Err(bad(
                "a certificate that is not this host's agent certificate",
            ));
        }
    }
    Ok(Enrolled {
        cert_pem: answer.cert_pem,
        key_pem,
        ca_pem: answer.ca_pem,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_hide_their_secret() {
        let token = JoinToken::new(&[1; 8], &[2; 32], [3; 32]);
        let text = token.expose();
        assert!(text.starts_with("ouro1.0101010101010101.0202"), "{text}");
        assert_eq!(JoinToken::parse(&text).unwrap(), token);
        assert!(!format!("{token:?}").contains("0202"));
        for bad in [
            "",
            "ouro2.0101010101010101.aa.bb",
            &text.replace("ouro1.", "ouro2."),
            &format!("{text}.x"),
            &text[..text.len() - 1],
        ] {
            assert!(JoinToken::parse(bad).is_err(), "{bad}");
        }
    }
}

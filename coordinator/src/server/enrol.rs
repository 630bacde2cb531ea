//! Enrolment by join token: the `Enrolment` service (the one service a client without a
//! certificate may call) and the token operations behind the admin `token` commands.
//!
//! The CA key is needed to sign; a coordinator started without `ca-key.pem` (the key kept
//! offline) refuses to make tokens and to enrol, and hosts are enrolled with `pki issue`.
//!
//! `hosts forget` lives here too: it undoes an enrolment (and revokes the host's
//! certificates), so that the name can enrol again.

use std::sync::Arc;
use std::time::Duration;

use ouroboros_proto::v1 as pb;
use ouroboros_shared::host::HostName;
use ouroboros_shared::join::{JoinToken, ca_fingerprint, hex};
use ouroboros_shared::pki::{CertificateAuthority, DEFAULT_LEAF_DAYS, PkiDir, Validity};
use ouroboros_shared::time_fmt::now_unix_ms;
use tonic::{Request, Response, Status};
use tracing::{info, warn};

use crate::fleet::Fleet;
use crate::fleet::certs::CertBook;
use crate::fleet::tokens::{RedeemError, TokenBook, TokenRecord};
use crate::server::tls::peer_addr;

/// Enrolment: the token book, the CA that signs, the fleet view that knows enrolled hosts.
pub struct Enrolment {
    tokens: TokenBook,
    certs: Arc<CertBook>,
    fleet: Arc<Fleet>,
    ca: Option<CertificateAuthority>,
    ca_pem: String,
    /// Where `pki issue --agent HOST` writes: a host issued there counts as enrolled.
    pki: Option<PkiDir>,
}

impl Enrolment {
    /// `ca` is `None` when the coordinator runs without the CA key.
    pub fn new(
        tokens: TokenBook,
        certs: Arc<CertBook>,
        fleet: Arc<Fleet>,
        ca: Option<CertificateAuthority>,
        ca_pem: String,
    ) -> Self {
        Self {
            tokens,
            certs,
            fleet,
            ca,
            ca_pem,
            pki: None,
        }
    }

    /// Hosts with a certificate from `pki issue` in `pki` count as enrolled.
    pub fn with_pki_dir(mut self, pki: PkiDir) -> Self {
        self.pki = Some(pki);
        self
    }

    /// The agents' certificate serials and the deny-list.
    pub fn certs(&self) -> Arc<CertBook> {
        self.certs.clone()
    }

    /// The serial of the certificate `pki issue` left for `host`, unless it is revoked.
    fn pki_issued_serial(&self, host: &HostName) -> Option<String> {
        let path = self.pki.as_ref()?.agent_cert(host);
        let pem = std::fs::read(path).ok()?;
        pem_serial(&pem).filter(|s| !self.certs.is_revoked(s))
    }

    fn signing_ca(&self) -> Result<&CertificateAuthority, Status> {
        self.ca.as_ref().ok_or_else(|| {
            Status::failed_precondition(
                "this coordinator has no CA key (ca-key.pem): enrol hosts with `pki issue --agent HOST` where the key is kept",
            )
        })
    }

    /// `token create`: a new token valid for `ttl`, for `uses` enrolments.
    pub fn create(&self, ttl: Duration, uses: u32) -> Result<(JoinToken, TokenRecord), Status> {
        self.signing_ca()?;
        if ttl.is_zero() || uses == 0 {
            return Err(Status::invalid_argument(
                "a join token needs a ttl of at least 1s and at least 1 use",
            ));
        }
        let fingerprint = ca_fingerprint(&self.ca_pem)
            .ok_or_else(|| Status::internal("the CA certificate is unreadable"))?;
        let rng = ring::rand::SystemRandom::new();
        let mut id = [0u8; 8];
        let mut secret = [0u8; 32];
        ring::rand::SecureRandom::fill(&rng, &mut id)
            .and_then(|()| ring::rand::SecureRandom::fill(&rng, &mut secret))
            .map_err(|_| Status::internal("no randomness for a join token"))?;
        let token = JoinToken::new(&id, &secret, fingerprint);
        let now = now_unix_ms();
        let ttl_ms = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX);
        let record = TokenRecord {
            id: token.id().to_owned(),
            secret_sha256: hex(&token.secret_hash()),
            created_ms: now,
            expires_ms: now.saturating_add(ttl_ms),
            uses_left: uses,
            revoked: false,
            hosts: Vec::new(),
        };
        self.tokens
            .add(&record)
            .map_err(|e| Status::unavailable(e.to_string()))?;
        info!(token = %record.id, uses, ttl_secs = ttl.as_secs(), "Join token created.");
        Ok((token, record))
    }

    pub fn list(&self) -> Result<Vec<TokenRecord>, Status> {
        self.tokens
            .list()
            .map_err(|e| Status::unavailable(e.to_string()))
    }

    pub fn revoke(&self, id: &str) -> Result<TokenRecord, Status> {
        let record = self
            .tokens
            .revoke(id)
            .map_err(|e| Status::unavailable(e.to_string()))?
            .ok_or_else(|| Status::not_found(format!("no join token {id}")))?;
        info!(token = %id, "Join token revoked.");
        Ok(record)
    }

    /// Checks the token and signs the request for `host`.
    fn enrol(&self, request: &pb::EnrolRequest) -> Result<pb::EnrolResponse, Status> {
        let token = JoinToken::parse(&request.token)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let host =
            HostName::parse(&request.host).map_err(|e| Status::invalid_argument(e.to_string()))?;
        let ca = self.signing_ca()?;
        let known = self
            .fleet
            .hosts()
            .iter()
            .any(|h| h.record.host == host.as_str())
            || self.pki_issued_serial(&host).is_some();
        let cert_pem = self
            .tokens
            .redeem(&token, host.as_str(), known, now_unix_ms(), || {
                ca.sign_agent_request(
                    &request.csr_der,
                    &host,
                    Validity::days_from_now(DEFAULT_LEAF_DAYS),
                )
                .map_err(|e| e.to_string())
            })
            .map_err(|e| match e {
                RedeemError::Unknown => Status::unauthenticated(e.to_string()),
                RedeemError::Revoked | RedeemError::Expired | RedeemError::Used => {
                    Status::permission_denied(e.to_string())
                }
                RedeemError::HostEnrolled(_) => Status::already_exists(e.to_string()),
                RedeemError::Sign(_) => Status::invalid_argument(e.to_string()),
                RedeemError::Store(_) => Status::unavailable(e.to_string()),
            })?;
        match pem_serial(cert_pem.as_bytes()) {
            Some(serial) => {
                if let Err(error) = self.certs.record(host.as_str(), &serial) {
                    warn!(host = %host, %error, "Cannot record the new certificate's serial; it is recorded when the agent connects.");
                }
            }
            None => warn!(host = %host, "The certificate just signed has no readable serial."),
        }
        Ok(pb::EnrolResponse {
            cert_pem,
            ca_pem: self.ca_pem.clone(),
        })
    }
}

impl Enrolment {
    /// Signs a renewal for `host` (the caller's verified name) with the same rules as
    /// enrolment: only the request's public key is taken. Returns the certificate and its
    /// serial, recorded for the host. Blocking (store write).
    pub fn renew(&self, host: &HostName, csr_der: &[u8]) -> Result<(String, String), Status> {
        let ca = self.signing_ca()?;
        if !self.fleet.knows(host.as_str()) {
            return Err(Status::failed_precondition(format!(
                "host {host} is not in the fleet (forgotten?)"
            )));
        }
        let cert_pem = ca
            .sign_agent_request(csr_der, host, Validity::days_from_now(DEFAULT_LEAF_DAYS))
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let serial = pem_serial(cert_pem.as_bytes())
            .ok_or_else(|| Status::internal("the certificate just signed has no serial"))?;
        self.certs
            .record(host.as_str(), &serial)
            .map_err(|e| Status::unavailable(e.to_string()))?;
        Ok((cert_pem, serial))
    }
}

/// What `hosts forget` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Forgotten {
    pub host: String,
    /// Serials revoked now (lower-case hex).
    pub serials: Vec<String>,
    /// Its agent was connected (the session is ended).
    pub was_connected: bool,
}

impl Enrolment {
    /// `hosts forget HOST`: revokes the host's certificates (the deny-list refuses them from
    /// the next handshake on), forgets its enrolment, and removes it from the fleet view and
    /// the store, ending its session. A host nobody knows is `not_found`, and nothing changes.
    /// Blocking (store writes).
    pub fn forget(&self, host: &str) -> Result<Forgotten, Status> {
        let host = HostName::parse(host).map_err(|e| Status::invalid_argument(e.to_string()))?;
        let unavailable = |e: crate::fleet::store::StoreError| Status::unavailable(e.to_string());
        let was_connected = self
            .fleet
            .hosts()
            .iter()
            .any(|h| h.record.host == host.as_str() && h.connected);
        let in_view = self.fleet.knows(host.as_str());
        let enrolled = self
            .tokens
            .is_enrolled(host.as_str())
            .map_err(unavailable)?;
        let recorded = !self.certs.serials(host.as_str()).is_empty();
        let issued: Vec<String> = self.pki_issued_serial(&host).into_iter().collect();
        if !(in_view || enrolled || recorded || !issued.is_empty()) {
            return Err(Status::not_found(format!(
                "no host {host}: nothing forgotten (`hosts` lists the fleet)"
            )));
        }
        // Revoked first: the agent's next handshake is refused when its session ends below.
        let serials = self
            .certs
            .revoke_host(host.as_str(), &issued, now_unix_ms())
            .map_err(unavailable)?;
        self.tokens.forget(host.as_str()).map_err(unavailable)?;
        self.fleet.forget(host.as_str());
        if !self.fleet.sync() {
            return Err(Status::unavailable(
                "the host is forgotten and its certificates revoked, but the store write failed; it is retried",
            ));
        }
        info!(host = %host, serials = %serials.join(","), was_connected, "Host forgotten; its certificates are revoked.");
        Ok(Forgotten {
            host: host.to_string(),
            serials,
            was_connected,
        })
    }
}

impl From<Forgotten> for pb::ForgetHostResponse {
    fn from(f: Forgotten) -> Self {
        Self {
            host: f.host,
            revoked_serials: f.serials,
            was_connected: f.was_connected,
        }
    }
}

/// The serial (lower-case hex) of the first certificate in `pem`.
fn pem_serial(pem: &[u8]) -> Option<String> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let der = CertificateDer::pem_slice_iter(pem).next()?.ok()?;
    ouroboros_shared::pki::serial_hex(&der)
}

/// The `Enrolment` gRPC service.
pub struct EnrolmentApi {
    enrolment: Arc<Enrolment>,
}

impl EnrolmentApi {
    pub fn new(enrolment: Arc<Enrolment>) -> Self {
        Self { enrolment }
    }
}

#[tonic::async_trait]
impl pb::enrolment_server::Enrolment for EnrolmentApi {
    async fn enrol(
        &self,
        request: Request<pb::EnrolRequest>,
    ) -> Result<Response<pb::EnrolResponse>, Status> {
        let addr = peer_addr(&request)
            .map(|a| a.to_string())
            .unwrap_or_default();
        let enrolment = self.enrolment.clone();
        let body = request.into_inner();
        let host = body.host.clone();
        let answer = tokio::task::spawn_blocking(move || enrolment.enrol(&body))
            .await
            .map_err(|e| Status::internal(e.to_string()))?;
        match &answer {
            Ok(_) => info!(peer = %addr, host = %host, "Host enrolled with a join token."),
            Err(status) => warn!(
                peer = %addr,
                host = %ouroboros_shared::echo::name(&host),
                reason = status.message(),
                "Refused enrolment."
            ),
        }
        answer.map(Response::new)
    }
}

/// A token's details for the Admin API (never its secret).
pub fn token_info(r: &TokenRecord) -> pb::JoinTokenInfo {
    pb::JoinTokenInfo {
        id: r.id.clone(),
        created_unix_ms: r.created_ms,
        expires_unix_ms: r.expires_ms,
        uses_left: r.uses_left,
        revoked: r.revoked,
        hosts: r.hosts.clone(),
    }
}

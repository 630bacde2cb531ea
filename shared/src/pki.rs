//! The fleet's own certificate authority and the identities it vouches for.
//!
//! Layout of a PKI directory (made by `ouroboros-coordinator pki init`):
//!
//! | file | what |
//! |---|---|
//! | `ca.pem`, `ca-key.pem` | the CA |
//! | `coordinator.pem`, `coordinator-key.pem` | the coordinator's server certificate |
//! | `cli.pem`, `cli-key.pem` | the admin CLI's client certificate |
//! | `agent-HOST.pem`, `agent-HOST-key.pem` | one agent's client certificate (`pki issue`) |
//!
//! The role of a certificate is its subject's organizational unit (`coordinator`, `admin`,
//! `agent`). An agent's host identity is the single DNS name in its subject alternative name;
//! it is never taken from a message. Private keys are written with mode 0600, and no file is
//! ever overwritten.
//!
//! (Over 600 lines: the PKI's files and their checks, with the tests of each refusal.)

use std::fs::OpenOptions;
use std::io::Write;
use std::net::IpAddr;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
// `time`, not chrono: rcgen's certificate parameters are `time` values (shared::time_fmt).
use time::{Duration, OffsetDateTime};
use x509_parser::extensions::GeneralName;

use crate::host::{HostName, InvalidHostName};

const ORGANIZATION: &str = "Ouroboros";
/// Default validity of leaf certificates.
pub const DEFAULT_LEAF_DAYS: u32 = 365;
/// Validity of the CA.
pub const CA_DAYS: u32 = 3650;

/// Errors of certificate generation, loading and parsing.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("refusing to overwrite {0}: remove it first or choose another --dir")]
    Exists(PathBuf),
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot read {path}: {reason}")]
    Read { path: PathBuf, reason: String },
    #[error("cannot generate certificate: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("invalid --san {name:?}: not an IP address or DNS name")]
    InvalidSan { name: String },
    #[error(transparent)]
    Host(#[from] InvalidHostName),
    #[error("certificate is not an Ouroboros identity: {0}")]
    NotAnIdentity(String),
    #[error("cannot build TLS configuration: {0}")]
    Tls(String),
}

/// What a certificate allows its holder to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// The coordinator's server certificate.
    Coordinator,
    /// The operator's CLI: may call the `Admin` API.
    Admin,
    /// A host's agent: may call `AgentGateway` for its own host only.
    Agent,
}

impl Role {
    fn unit(self) -> &'static str {
        match self {
            Self::Coordinator => "coordinator",
            Self::Admin => "admin",
            Self::Agent => "agent",
        }
    }

    /// The role with its article, for messages: "an admin", "an agent", "a coordinator".
    pub fn with_article(self) -> &'static str {
        match self {
            Self::Coordinator => "a coordinator",
            Self::Admin => "an admin",
            Self::Agent => "an agent",
        }
    }

    fn from_unit(unit: &str) -> Option<Self> {
        match unit {
            "coordinator" => Some(Self::Coordinator),
            "admin" => Some(Self::Admin),
            "agent" => Some(Self::Agent),
            _ => None,
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.unit())
    }
}

/// Who is on the other end of a verified mutual-TLS connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerIdentity {
    Agent(HostName),
    Admin(String),
    Coordinator(String),
}

impl PeerIdentity {
    /// The certificate's role.
    pub fn role(&self) -> Role {
        match self {
            Self::Agent(_) => Role::Agent,
            Self::Admin(_) => Role::Admin,
            Self::Coordinator(_) => Role::Coordinator,
        }
    }
}

impl std::fmt::Display for PeerIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Agent(h) => write!(f, "agent {h}"),
            Self::Admin(n) => write!(f, "admin {n}"),
            Self::Coordinator(n) => write!(f, "coordinator {n}"),
        }
    }
}

/// Reads the role and name from a DER certificate that the TLS layer has already verified.
pub fn identify(der: &[u8]) -> Result<PeerIdentity, PkiError> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| PkiError::NotAnIdentity(format!("unparsable certificate: {e}")))?;
    let subject = cert.subject();
    let unit = subject
        .iter_organizational_unit()
        .next()
        .and_then(|u| u.as_str().ok())
        .ok_or_else(|| PkiError::NotAnIdentity("no organizational unit (role)".to_owned()))?;
    let role = Role::from_unit(unit)
        .ok_or_else(|| PkiError::NotAnIdentity(format!("unknown role {unit:?}")))?;
    let common_name = subject
        .iter_common_name()
        .next()
        .and_then(|c| c.as_str().ok())
        .unwrap_or_default()
        .to_owned();
    match role {
        Role::Agent => {
            let san = cert
                .subject_alternative_name()
                .map_err(|e| PkiError::NotAnIdentity(format!("bad subjectAltName: {e}")))?
                .ok_or_else(|| PkiError::NotAnIdentity("agent without subjectAltName".into()))?;
            let dns: Vec<&str> = san
                .value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    GeneralName::DNSName(d) => Some(*d),
                    _ => None,
                })
                .collect();
            match dns.as_slice() {
                [one] => Ok(PeerIdentity::Agent(HostName::parse(one)?)),
                _ => Err(PkiError::NotAnIdentity(format!(
                    "agent certificate must name exactly one host, it names {}",
                    dns.len()
                ))),
            }
        }
        Role::Admin => Ok(PeerIdentity::Admin(common_name)),
        Role::Coordinator => Ok(PeerIdentity::Coordinator(common_name)),
    }
}

/// A DER certificate's serial number in lower-case hex (how revocations name it), or `None`
/// when the bytes are no certificate.
pub fn serial_hex(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    Some(hex::encode(cert.raw_serial()))
}

/// The DNS names and IP addresses a DER certificate's subject alternative name lists.
pub fn subject_alt_names(der: &[u8]) -> Vec<String> {
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else {
        return Vec::new();
    };
    let Ok(Some(san)) = cert.subject_alternative_name() else {
        return Vec::new();
    };
    san.value
        .general_names
        .iter()
        .filter_map(|n| match n {
            GeneralName::DNSName(d) => Some((*d).to_owned()),
            GeneralName::IPAddress(b) => match b.len() {
                4 => <[u8; 4]>::try_from(*b)
                    .ok()
                    .map(|ip| IpAddr::from(ip).to_string()),
                16 => <[u8; 16]>::try_from(*b)
                    .ok()
                    .map(|ip| IpAddr::from(ip).to_string()),
                _ => None,
            },
            _ => None,
        })
        .collect()
}

/// The first certificate of a PEM text, in DER.
pub fn first_cert_der(pem: &str) -> Option<Vec<u8>> {
    let der = CertificateDer::pem_slice_iter(pem.as_bytes())
        .next()?
        .ok()?;
    Some(der.to_vec())
}

/// Whether `key_pem` is the private key of the first certificate in `cert_pem` (their public
/// keys are the same).
pub fn key_matches_cert(key_pem: &str, cert_pem: &str) -> bool {
    let Ok(key) = KeyPair::from_pem(key_pem) else {
        return false;
    };
    let Some(der) = first_cert_der(cert_pem) else {
        return false;
    };
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(&der) else {
        return false;
    };
    cert.tbs_certificate
        .subject_pki
        .subject_public_key
        .data
        .as_ref()
        == key.public_key_raw()
}

/// A DER certificate's validity as unix seconds (not before, not after), or `None` when the
/// bytes are no certificate.
pub fn validity_unix(der: &[u8]) -> Option<(i64, i64)> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let v = cert.validity();
    Some((v.not_before.timestamp(), v.not_after.timestamp()))
}

/// The paths inside one PKI directory.
#[derive(Debug, Clone)]
pub struct PkiDir {
    dir: PathBuf,
}

impl PkiDir {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }
    pub fn dir(&self) -> &Path {
        &self.dir
    }
    pub fn ca_cert(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }
    pub fn ca_key(&self) -> PathBuf {
        self.dir.join("ca-key.pem")
    }
    pub fn coordinator_cert(&self) -> PathBuf {
        self.dir.join("coordinator.pem")
    }
    pub fn coordinator_key(&self) -> PathBuf {
        self.dir.join("coordinator-key.pem")
    }
    pub fn cli_cert(&self) -> PathBuf {
        self.dir.join("cli.pem")
    }
    pub fn cli_key(&self) -> PathBuf {
        self.dir.join("cli-key.pem")
    }
    pub fn agent_cert(&self, host: &HostName) -> PathBuf {
        self.dir.join(format!("agent-{host}.pem"))
    }
    pub fn agent_key(&self, host: &HostName) -> PathBuf {
        self.dir.join(format!("agent-{host}-key.pem"))
    }
}

/// A certificate and its private key, in PEM. `Debug` never shows the key.
#[derive(Clone)]
pub struct IssuedCert {
    pub cert_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for IssuedCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuedCert")
            .field("cert_pem", &self.cert_pem)
            .field("key_pem", &"<redacted>")
            .finish()
    }
}

/// When a certificate is valid.
#[derive(Debug, Clone, Copy)]
pub struct Validity {
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
}

impl Validity {
    /// From an hour ago (clock skew between hosts) to `days` from now.
    pub fn days_from_now(days: u32) -> Self {
        let now = OffsetDateTime::now_utc();
        Self {
            not_before: now - Duration::hours(1),
            not_after: now + Duration::days(i64::from(days)),
        }
    }
}

/// What to issue.
#[derive(Debug, Clone)]
pub enum LeafKind {
    /// Server certificate for the coordinator with these subject alternative names
    /// (DNS names or IP addresses).
    Coordinator { sans: Vec<String> },
    /// The admin CLI's client certificate.
    Admin,
    /// An agent's client certificate naming its host.
    Agent { host: HostName },
}

/// The fleet's certificate authority.
pub struct CertificateAuthority {
    issuer: Issuer<'static, KeyPair>,
    cert_pem: String,
}

impl CertificateAuthority {
    /// A new self-signed CA.
    pub fn generate(validity: Validity) -> Result<Self, PkiError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.distinguished_name = name("Ouroboros fleet CA", None);
        params.not_before = validity.not_before;
        params.not_after = validity.not_after;
        let cert = params.self_signed(&key)?;
        Ok(Self {
            cert_pem: cert.pem(),
            issuer: Issuer::new(params, key),
        })
    }

    /// Loads the CA of a PKI directory.
    pub fn load(pki: &PkiDir) -> Result<Self, PkiError> {
        let cert_pem = read_to_string(&pki.ca_cert())?;
        let key_pem = read_to_string(&pki.ca_key())?;
        let key = KeyPair::from_pem(&key_pem).map_err(|e| PkiError::Read {
            path: pki.ca_key(),
            reason: e.to_string(),
        })?;
        let issuer = Issuer::from_ca_cert_pem(&cert_pem, key).map_err(|e| PkiError::Read {
            path: pki.ca_cert(),
            reason: e.to_string(),
        })?;
        Ok(Self { issuer, cert_pem })
    }

    /// The CA certificate in PEM.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA private key in PEM.
    pub fn key_pem(&self) -> String {
        self.issuer.key().serialize_pem()
    }

    /// Issues a leaf certificate with a fresh key.
    pub fn issue(&self, kind: &LeafKind, validity: Validity) -> Result<IssuedCert, PkiError> {
        let key = KeyPair::generate()?;
        let cert = leaf_params(kind, validity)?.signed_by(&key, &self.issuer)?;
        Ok(IssuedCert {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// Signs an agent's certificate request (PKCS#10, DER) for `host`. Only the request's
    /// public key is used (its signature proves the requester holds the key); names, roles and
    /// extensions are those of [`LeafKind::Agent`], whatever the request asks for.
    pub fn sign_agent_request(
        &self,
        csr_der: &[u8],
        host: &HostName,
        validity: Validity,
    ) -> Result<String, PkiError> {
        let der = rustls::pki_types::CertificateSigningRequestDer::from(csr_der);
        let request = rcgen::CertificateSigningRequestParams::from_der(&der)?;
        let params = rcgen::CertificateSigningRequestParams {
            params: leaf_params(&LeafKind::Agent { host: host.clone() }, validity)?,
            public_key: request.public_key,
        };
        Ok(params.signed_by(&self.issuer)?.pem())
    }
}

/// The parameters of a leaf certificate of `kind`: its names, role and key usages.
fn leaf_params(kind: &LeafKind, validity: Validity) -> Result<CertificateParams, PkiError> {
    let mut params = match kind {
        LeafKind::Coordinator { sans } => {
            for san in sans {
                if san.parse::<IpAddr>().is_err() {
                    HostName::parse(san).map_err(|_| PkiError::InvalidSan { name: san.clone() })?;
                }
            }
            let mut p = CertificateParams::new(sans.clone())?;
            p.distinguished_name = name("ouroboros-coordinator", Some(Role::Coordinator));
            p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
            p
        }
        LeafKind::Admin => {
            let mut p = CertificateParams::new(Vec::<String>::new())?;
            p.distinguished_name = name("ouroboros-cli", Some(Role::Admin));
            p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
            p
        }
        LeafKind::Agent { host } => {
            let mut p = CertificateParams::new(vec![host.to_string()])?;
            p.distinguished_name = name(host.as_str(), Some(Role::Agent));
            p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
            p
        }
    };
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.use_authority_key_identifier_extension = true;
    params.not_before = validity.not_before;
    params.not_after = validity.not_after;
    Ok(params)
}

fn name(common_name: &str, role: Option<Role>) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, ORGANIZATION);
    if let Some(role) = role {
        dn.push(DnType::OrganizationalUnitName, role.unit());
    }
    dn.push(DnType::CommonName, common_name);
    dn
}

/// `pki init`: a new CA, the coordinator's server certificate (SANs `localhost`, `127.0.0.1`
/// and `extra_sans`) and the CLI certificate. Writes nothing if any target file exists.
/// Returns the files written.
pub fn init(pki: &PkiDir, extra_sans: &[String]) -> Result<Vec<PathBuf>, PkiError> {
    let targets = [
        pki.ca_cert(),
        pki.ca_key(),
        pki.coordinator_cert(),
        pki.coordinator_key(),
        pki.cli_cert(),
        pki.cli_key(),
    ];
    refuse_existing(&targets)?;
    let mut sans = vec!["localhost".to_owned(), "127.0.0.1".to_owned()];
    for san in extra_sans {
        if !sans.contains(san) {
            sans.push(san.clone());
        }
    }
    let ca = CertificateAuthority::generate(Validity::days_from_now(CA_DAYS))?;
    let leaf = Validity::days_from_now(DEFAULT_LEAF_DAYS);
    let coordinator = ca.issue(&LeafKind::Coordinator { sans }, leaf)?;
    let cli = ca.issue(&LeafKind::Admin, leaf)?;
    ensure_dir(pki.dir())?;
    write_new(&pki.ca_key(), &ca.key_pem(), 0o600)?;
    write_new(&pki.ca_cert(), ca.cert_pem(), 0o644)?;
    write_new(&pki.coordinator_key(), &coordinator.key_pem, 0o600)?;
    write_new(&pki.coordinator_cert(), &coordinator.cert_pem, 0o644)?;
    write_new(&pki.cli_key(), &cli.key_pem, 0o600)?;
    write_new(&pki.cli_cert(), &cli.cert_pem, 0o644)?;
    Ok(targets.to_vec())
}

/// `pki issue --agent HOST`: an agent certificate signed by the directory's CA.
pub fn issue_agent(pki: &PkiDir, host: &HostName, days: u32) -> Result<Vec<PathBuf>, PkiError> {
    let targets = [pki.agent_cert(host), pki.agent_key(host)];
    refuse_existing(&targets)?;
    let ca = CertificateAuthority::load(pki)?;
    let agent = ca.issue(
        &LeafKind::Agent { host: host.clone() },
        Validity::days_from_now(days),
    )?;
    write_new(&pki.agent_key(host), &agent.key_pem, 0o600)?;
    write_new(&pki.agent_cert(host), &agent.cert_pem, 0o644)?;
    Ok(targets.to_vec())
}

fn refuse_existing(paths: &[PathBuf]) -> Result<(), PkiError> {
    match paths.iter().find(|p| p.exists()) {
        Some(p) => Err(PkiError::Exists(p.clone())),
        None => Ok(()),
    }
}

fn ensure_dir(dir: &Path) -> Result<(), PkiError> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|source| PkiError::Write {
            path: dir.to_owned(),
            source,
        })
}

fn write_new(path: &Path, contents: &str, mode: u32) -> Result<(), PkiError> {
    let err = |source| PkiError::Write {
        path: path.to_owned(),
        source,
    };
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::AlreadyExists => PkiError::Exists(path.to_owned()),
            _ => err(e),
        })?;
    file.write_all(contents.as_bytes()).map_err(err)?;
    file.sync_all().map_err(err)
}

fn read_to_string(path: &Path) -> Result<String, PkiError> {
    std::fs::read_to_string(path).map_err(|e| PkiError::Read {
        path: path.to_owned(),
        reason: e.to_string(),
    })
}

/// Reads every certificate of a PEM file.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, PkiError> {
    let pem = read_to_string(path)?;
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| PkiError::Read {
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(PkiError::Read {
            path: path.to_owned(),
            reason: "no certificate in file".to_owned(),
        });
    }
    Ok(certs)
}

/// Reads the private key of a PEM file.
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, PkiError> {
    let pem = read_to_string(path)?;
    PrivateKeyDer::from_pem_slice(pem.as_bytes()).map_err(|e| PkiError::Read {
        path: path.to_owned(),
        reason: format!("no private key: {e}"),
    })
}

/// PEM files for a client (agent or CLI) connection, read once at startup. `Debug` never
/// shows the key.
#[derive(Clone)]
pub struct ClientPem {
    pub ca: String,
    pub cert: String,
    pub key: String,
}

impl std::fmt::Debug for ClientPem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientPem")
            .field("ca", &self.ca)
            .field("cert", &self.cert)
            .field("key", &"<redacted>")
            .finish()
    }
}

impl ClientPem {
    /// Reads and checks the three files (each must hold what its name says).
    pub fn read(ca: &Path, cert: &Path, key: &Path) -> Result<Self, PkiError> {
        load_certs(ca)?;
        load_certs(cert)?;
        load_key(key)?;
        Ok(Self {
            ca: read_to_string(ca)?,
            cert: read_to_string(cert)?,
            key: read_to_string(key)?,
        })
    }
}

/// The coordinator's TLS configuration: its own certificate followed by the CA's (an enrolling
/// agent checks the CA against its join token's fingerprint), and client certificates signed by
/// the fleet CA: expired and foreign ones fail the handshake. A client without a certificate
/// completes the handshake (enrolment needs that) and is refused at the call by every other
/// service (`server::tls::require_role` in the coordinator).
pub fn server_config(
    ca: &Path,
    cert: &Path,
    key: &Path,
) -> Result<Arc<rustls::ServerConfig>, PkiError> {
    server_config_with(ca, cert, key, |v| v)
}

/// [`server_config`] with the client-certificate verifier wrapped by `wrap` (the coordinator
/// adds its revocation check there).
pub fn server_config_with(
    ca: &Path,
    cert: &Path,
    key: &Path,
    wrap: impl FnOnce(
        Arc<dyn rustls::server::danger::ClientCertVerifier>,
    ) -> Arc<dyn rustls::server::danger::ClientCertVerifier>,
) -> Result<Arc<rustls::ServerConfig>, PkiError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for c in load_certs(ca)? {
        roots
            .add(c)
            .map_err(|e| PkiError::Tls(format!("CA {}: {e}", ca.display())))?;
    }
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .allow_unauthenticated()
    .build()
    .map_err(|e| PkiError::Tls(e.to_string()))?;
    let mut chain = load_certs(cert)?;
    chain.extend(load_certs(ca)?);
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| PkiError::Tls(e.to_string()))?
        .with_client_cert_verifier(wrap(verifier))
        .with_single_cert(chain, load_key(key)?)
        .map_err(|e| PkiError::Tls(format!("{}: {e}", cert.display())))?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_take_their_article() {
        assert_eq!(
            format!("{} certificate", Role::Admin.with_article()),
            "an admin certificate"
        );
        assert_eq!(Role::Agent.with_article(), "an agent");
        assert_eq!(Role::Coordinator.with_article(), "a coordinator");
    }
    use std::os::unix::fs::PermissionsExt;

    fn der(pem: &str) -> Vec<u8> {
        CertificateDer::from_pem_slice(pem.as_bytes())
            .map(|c| c.to_vec())
            .unwrap_or_default()
    }

    #[test]
    fn init_writes_ca_server_and_cli_with_private_keys_0600_and_never_overwrites() {
        let tmp = tempfile::tempdir().unwrap();
        let pki = PkiDir::new(tmp.path().join("pki"));
        let written = init(&pki, &["coord.example".into(), "10.1.2.3".into()]).unwrap();
        assert_eq!(written.len(), 6);
        for key in [pki.ca_key(), pki.coordinator_key(), pki.cli_key()] {
            let mode = std::fs::metadata(&key).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{}", key.display());
        }
        let before = std::fs::read(pki.ca_cert()).unwrap();
        let again = init(&pki, &[]);
        assert!(matches!(again, Err(PkiError::Exists(_))), "{again:?}");
        assert_eq!(std::fs::read(pki.ca_cert()).unwrap(), before);

        let server = std::fs::read_to_string(pki.coordinator_cert()).unwrap();
        let server_der = der(&server);
        let (_, cert) = x509_parser::parse_x509_certificate(&server_der).unwrap();
        let names: Vec<String> = cert
            .subject_alternative_name()
            .unwrap()
            .unwrap()
            .value
            .general_names
            .iter()
            .map(|n| match n {
                GeneralName::DNSName(d) => (*d).to_owned(),
                GeneralName::IPAddress(b) => <[u8; 4]>::try_from(*b)
                    .map(|ip| std::net::Ipv4Addr::from(ip).to_string())
                    .unwrap_or_default(),
                other => other.to_string(),
            })
            .collect();
        for want in ["localhost", "127.0.0.1", "coord.example", "10.1.2.3"] {
            assert!(names.iter().any(|n| n == want), "{want} not in {names:?}");
        }
        let cli = std::fs::read_to_string(pki.cli_cert()).unwrap();
        assert_eq!(
            identify(&der(&cli)).unwrap(),
            PeerIdentity::Admin("ouroboros-cli".into())
        );
        assert_eq!(identify(&der(&server)).unwrap().role(), Role::Coordinator);
    }

    #[test]
    fn issued_agent_certificate_names_its_host() {
        let tmp = tempfile::tempdir().unwrap();
        let pki = PkiDir::new(tmp.path());
        init(&pki, &[]).unwrap();
        let host = HostName::parse("web-01").unwrap();
        issue_agent(&pki, &host, 30).unwrap();
        let mode = std::fs::metadata(pki.agent_key(&host))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let cert = std::fs::read_to_string(pki.agent_cert(&host)).unwrap();
        assert_eq!(
            identify(&der(&cert)).unwrap(),
            PeerIdentity::Agent(host.clone())
        );
        assert!(matches!(
            issue_agent(&pki, &host, 30),
            Err(PkiError::Exists(_))
        ));
    }

    #[test]
    fn debug_output_never_shows_a_private_key() {
        let ca = CertificateAuthority::generate(Validity::days_from_now(1)).unwrap();
        let issued = ca
            .issue(&LeafKind::Admin, Validity::days_from_now(1))
            .unwrap();
        let text = format!("{issued:?}");
        assert!(!text.contains("PRIVATE KEY"), "{text}");
        let pem = ClientPem {
            ca: String::new(),
            cert: issued.cert_pem.clone(),
            key: issued.key_pem.clone(),
        };
        assert!(!format!("{pem:?}").contains("PRIVATE KEY"));
    }

    #[test]
    fn a_signed_request_gets_the_agent_role_whatever_it_asks_for() {
        let ca = CertificateAuthority::generate(Validity::days_from_now(1)).unwrap();
        let key = KeyPair::generate().unwrap();
        let mut asked = CertificateParams::new(vec!["other-host".to_owned()]).unwrap();
        asked.distinguished_name = name("ouroboros-cli", Some(Role::Admin));
        asked.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let csr = asked.serialize_request(&key).unwrap();
        let host = HostName::parse("web-01").unwrap();
        let pem = ca
            .sign_agent_request(csr.der(), &host, Validity::days_from_now(1))
            .unwrap();
        let cert = der(&pem);
        assert_eq!(identify(&cert).unwrap(), PeerIdentity::Agent(host.clone()));
        let (_, parsed) = x509_parser::parse_x509_certificate(&cert).unwrap();
        assert!(!parsed.is_ca());
        assert_eq!(
            parsed.public_key().subject_public_key.data.as_ref(),
            key.public_key_raw()
        );
        // A request whose signature does not verify is refused.
        let mut broken = csr.der().to_vec();
        let last = broken.len() - 1;
        broken[last] ^= 1;
        assert!(
            ca.sign_agent_request(&broken, &host, Validity::days_from_now(1))
                .is_err()
        );
    }

    #[test]
    fn bad_san_is_refused_before_anything_is_written() {
        let tmp = tempfile::tempdir().unwrap();
        let pki = PkiDir::new(tmp.path().join("p"));
        let err = init(&pki, &["not a name".into()]).unwrap_err();
        assert!(matches!(err, PkiError::InvalidSan { .. }), "{err}");
        assert!(!pki.dir().exists());
    }

    #[test]
    fn issue_without_ca_fails_and_writes_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let pki = PkiDir::new(tmp.path());
        let host = HostName::parse("h").unwrap();
        assert!(issue_agent(&pki, &host, 1).is_err());
        assert!(!pki.agent_cert(&host).exists());
        assert!(!pki.agent_key(&host).exists());
    }
}

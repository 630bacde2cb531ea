//! Mutual TLS in front of the gRPC server. TLS is terminated here (not inside tonic) so that
//! every refused handshake gets a clear log line, and so that each accepted connection carries
//! its verified [`PeerIdentity`] into the request extensions, where [`require_role`] checks it.
//!
//! A client without a certificate completes the handshake: an agent that enrols has none yet.
//! One listener serves both rather than a second port for enrolment: operators open, proxy and
//! configure one address, and the agent enrols at the very URL it then connects to. What keeps
//! everything else closed is that every service but `Enrolment` is wrapped in [`require_role`],
//! which refuses a call without a verified certificate; a certificate that is presented is
//! still verified at the handshake (a foreign or expired one fails there, as before).
//!
//! [`RevocationCheck`] wraps that verifier: a certificate whose serial is on the deny-list
//! (`hosts forget`) fails the handshake with the `certificate_revoked` alert.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use ouroboros_shared::pki::{PeerIdentity, Role, identify, serial_hex};
use rustls::DistinguishedName;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::Connected;
use tonic::{Request, Status};
use tracing::{debug, info, warn};

use crate::fleet::certs::DenyList;

/// A handshake that has not finished by then is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshakes in progress at once; further connections are dropped until one finishes, so
/// that unauthenticated peers cannot hold every file descriptor.
const MAX_HANDSHAKES: usize = 256;
/// At most one "too many handshakes" warning per this interval.
const OVERLOAD_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// A verified peer: who is connected, as established by the TLS handshake.
#[derive(Debug, Clone)]
pub struct PeerInfo {
    pub addr: SocketAddr,
    pub identity: PeerIdentity,
    /// The client certificate's serial (lower-case hex).
    pub serial: String,
}

/// What the handshake established of a connection: its address, and its identity when it
/// presented a (verified) client certificate.
#[derive(Debug, Clone)]
pub struct ConnectionInfo {
    pub addr: SocketAddr,
    pub identity: Option<PeerIdentity>,
    /// The client certificate's serial (lower-case hex), when it presented one.
    pub serial: String,
}

/// A TLS connection whose client certificate, if any, was verified and identified.
pub struct PeerStream {
    inner: TlsStream<TcpStream>,
    info: ConnectionInfo,
}

impl Connected for PeerStream {
    type ConnectInfo = ConnectionInfo;
    fn connect_info(&self) -> ConnectionInfo {
        self.info.clone()
    }
}

impl AsyncRead for PeerStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for PeerStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// Accepts TCP connections, runs the TLS handshake of each in its own task, and yields the
/// verified ones. Ends when the returned stream is dropped.
pub fn incoming(
    listener: TcpListener,
    config: Arc<rustls::ServerConfig>,
) -> ReceiverStream<Result<PeerStream, io::Error>> {
    let (tx, rx) = mpsc::channel(64);
    let acceptor = TlsAcceptor::from(config);
    let limit = Arc::new(Semaphore::new(MAX_HANDSHAKES));
    tokio::spawn(async move {
        let mut last_overload_log: Option<Instant> = None;
        loop {
            let (tcp, addr) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(error) => {
                        // Out of file descriptors and the like: back off briefly.
                        warn!(%error, "Cannot accept a connection.");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
                () = tx.closed() => return,
            };
            let Ok(permit) = limit.clone().try_acquire_owned() else {
                if last_overload_log.is_none_or(|t| t.elapsed() >= OVERLOAD_LOG_INTERVAL) {
                    warn!(peer = %addr, "Refused connection: {MAX_HANDSHAKES} TLS handshakes already in progress.");
                    last_overload_log = Some(Instant::now());
                }
                continue;
            };
            let _ = tcp.set_nodelay(true);
            let acceptor = acceptor.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                let handshake = handshake(&acceptor, tcp, addr).await;
                drop(permit);
                if let Some(stream) = handshake {
                    let _ = tx.send(Ok(stream)).await;
                }
            });
        }
    });
    ReceiverStream::new(rx)
}

async fn handshake(acceptor: &TlsAcceptor, tcp: TcpStream, addr: SocketAddr) -> Option<PeerStream> {
    let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(error)) => {
            log_refused_handshake(addr, &error);
            return None;
        }
        Err(_) => {
            info!(peer = %addr, "Refused connection: TLS handshake timed out.");
            return None;
        }
    };
    let cert = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| c.to_vec());
    let Some(cert) = cert else {
        debug!(peer = %addr, "Client without certificate: it may call Enrolment only.");
        return Some(PeerStream {
            inner: tls,
            info: ConnectionInfo {
                addr,
                identity: None,
                serial: String::new(),
            },
        });
    };
    match identify(&cert) {
        Ok(identity) => {
            debug!(peer = %addr, %identity, "Client authenticated.");
            Some(PeerStream {
                inner: tls,
                info: ConnectionInfo {
                    addr,
                    identity: Some(identity),
                    serial: serial_hex(&cert).unwrap_or_default(),
                },
            })
        }
        Err(error) => {
            warn!(peer = %addr, %error, "Refused connection: certificate carries no Ouroboros role.");
            None
        }
    }
}

fn log_refused_handshake(addr: SocketAddr, error: &io::Error) {
    use rustls::{CertificateError, Error as TlsError};
    let tls_error = error.get_ref().and_then(|e| e.downcast_ref::<TlsError>());
    let reason = match tls_error {
        Some(TlsError::NoCertificatesPresented) => "no client certificate",
        Some(TlsError::InvalidCertificate(
            CertificateError::UnknownIssuer | CertificateError::BadSignature,
        )) => "client certificate not signed by the fleet CA",
        Some(TlsError::InvalidCertificate(
            CertificateError::Expired | CertificateError::ExpiredContext { .. },
        )) => "client certificate expired",
        Some(TlsError::InvalidCertificate(
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. },
        )) => "client certificate not valid yet",
        Some(TlsError::InvalidCertificate(
            CertificateError::InvalidPurpose | CertificateError::InvalidPurposeContext { .. },
        )) => "certificate not made for client authentication",
        Some(TlsError::InvalidCertificate(CertificateError::Revoked)) => {
            "client certificate revoked (its host was forgotten)"
        }
        Some(TlsError::InvalidCertificate(_)) => "invalid client certificate",
        Some(_) => "TLS error",
        None if error.kind() == io::ErrorKind::UnexpectedEof => {
            debug!(peer = %addr, "Connection closed during the TLS handshake.");
            return;
        }
        None => "TLS handshake failed",
    };
    warn!(peer = %addr, %error, "Refused connection: {reason}.");
}

/// The fleet CA's client-certificate verifier, plus the deny-list of revoked serials.
#[derive(Debug)]
pub struct RevocationCheck {
    inner: Arc<dyn ClientCertVerifier>,
    denied: DenyList,
}

impl RevocationCheck {
    pub fn wrap(
        inner: Arc<dyn ClientCertVerifier>,
        denied: DenyList,
    ) -> Arc<dyn ClientCertVerifier> {
        Arc::new(Self { inner, denied })
    }
}

impl ClientCertVerifier for RevocationCheck {
    fn offer_client_auth(&self) -> bool {
        self.inner.offer_client_auth()
    }
    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }
    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)?;
        match serial_hex(end_entity) {
            Some(serial) if self.denied.contains(&serial) => Err(
                rustls::Error::InvalidCertificate(rustls::CertificateError::Revoked),
            ),
            _ => Ok(verified),
        }
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
    fn requires_raw_public_keys(&self) -> bool {
        self.inner.requires_raw_public_keys()
    }
}

/// The verified peer of a request, from the connection's TLS handshake.
pub fn peer<T>(request: &Request<T>) -> Result<PeerInfo, Status> {
    match request.extensions().get::<ConnectionInfo>() {
        Some(ConnectionInfo {
            addr,
            identity: Some(identity),
            serial,
        }) => Ok(PeerInfo {
            addr: *addr,
            identity: identity.clone(),
            serial: serial.clone(),
        }),
        _ => Err(Status::unauthenticated("no verified client certificate")),
    }
}

/// The address of a request's peer, verified or not.
pub fn peer_addr<T>(request: &Request<T>) -> Option<SocketAddr> {
    request.extensions().get::<ConnectionInfo>().map(|c| c.addr)
}

/// An interceptor that lets through only peers whose certificate has `role`; a call without a
/// client certificate is refused here.
pub fn require_role(
    role: Role,
    service: &'static str,
) -> impl Fn(Request<()>) -> Result<Request<()>, Status> + Clone + Send + Sync + 'static {
    move |request: Request<()>| {
        let Ok(peer) = peer(&request) else {
            let addr = peer_addr(&request)
                .map(|a| a.to_string())
                .unwrap_or_default();
            warn!(
                peer = %addr,
                service,
                "Refused call: no client certificate; {service} needs {} certificate.",
                role.with_article()
            );
            return Err(Status::unauthenticated(format!(
                "no client certificate: {service} needs {} certificate",
                role.with_article()
            )));
        };
        if peer.identity.role() == role {
            return Ok(request);
        }
        warn!(
            peer = %peer.addr,
            identity = %peer.identity,
            service,
            "Refused call: {} certificate may not call {service}.",
            peer.identity.role().with_article()
        );
        Err(Status::permission_denied(format!(
            "{} may not call {service}: it needs {} certificate",
            peer.identity,
            role.with_article()
        )))
    }
}

//! What an admin command says when it cannot reach the coordinator, or loses it during a call:
//! one line that names the coordinator and what went wrong once, in the operator's terms (a
//! certificate from another fleet, a coordinator that went away), not the TLS library's.

use ouroboros_shared::cli::error_chain;

use super::args::{AdminArgs, Failure};

/// The TLS library's error behind a failed connection or call, if there is one (it is
/// wrapped in an `io::Error`, whose `source` skips it).
fn tls_error<'a>(error: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    let mut link = Some(error);
    while let Some(e) = link {
        if let Some(tls) = e.downcast_ref::<rustls::Error>() {
            return Some(tls);
        }
        if let Some(tls) = e
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        {
            return Some(tls);
        }
        link = e.source();
    }
    None
}

/// Whether the peer closed or reset the connection (without TLS' closing message).
fn connection_closed(error: &(dyn std::error::Error + 'static)) -> bool {
    use std::io::ErrorKind;
    let mut link = Some(error);
    while let Some(e) = link {
        if let Some(io) = e.downcast_ref::<std::io::Error>()
            && matches!(
                io.kind(),
                ErrorKind::UnexpectedEof
                    | ErrorKind::ConnectionReset
                    | ErrorKind::ConnectionAborted
                    | ErrorKind::BrokenPipe
            )
        {
            return true;
        }
        link = e.source();
    }
    false
}

/// The connection to `args.server` could not be opened (exit 3).
pub fn connect_failed(args: &AdminArgs, error: &(dyn std::error::Error + 'static)) -> Failure {
    use rustls::CertificateError::{BadSignature, UnknownIssuer};
    if let Some(rustls::Error::InvalidCertificate(BadSignature | UnknownIssuer)) = tls_error(error)
    {
        let (option, env, ca) = match &args.ca {
            Some(ca) => ("--ca", "OUROBOROS_CA", ca.clone()),
            None => (
                "--pki-dir",
                "OUROBOROS_PKI_DIR",
                ouroboros_shared::pki::PkiDir::new(&args.pki_dir).ca_cert(),
            ),
        };
        return Failure::unreachable(format!(
            "the certificate of the coordinator at {} is not signed by the CA in {}: --server and {option} (or OUROBOROS_SERVER and {env}) belong to different coordinators",
            args.server,
            ca.display()
        ));
    }
    Failure::unreachable(format!(
        "cannot reach the coordinator at {}: {}",
        args.server,
        error_chain(error)
    ))
}

/// How a failed call is reported; `call` names it for the operator ("the check").
pub fn call_failed<'a>(
    args: &'a AdminArgs,
    call: &'a str,
) -> impl Fn(tonic::Status) -> Failure + 'a {
    move |status: tonic::Status| match status.code() {
        tonic::Code::InvalidArgument | tonic::Code::NotFound => {
            Failure::usage(format!("coordinator refused: {}", status.message()))
        }
        // The connection broke, or the handshake failed on the first call.
        tonic::Code::Unavailable | tonic::Code::Unknown
            if status.message().contains("transport error") =>
        {
            let source = std::error::Error::source(&status);
            if source.is_some_and(connection_closed) {
                return Failure::unreachable(format!(
                    "the coordinator at {} closed the connection during {call}; it stopped or restarted: once it is back, `status` and `rollouts` show what became of the work it had started",
                    args.server
                ));
            }
            // The source usually repeats the status' message first.
            let detail = match source.map(error_chain) {
                Some(chain) if chain.starts_with(status.message()) => chain,
                Some(chain) => format!("{}: {chain}", status.message()),
                None => status.message().to_owned(),
            };
            Failure::unreachable(format!(
                "lost the coordinator at {} during {call}: {detail}",
                args.server
            ))
        }
        _ => Failure::runtime(format!("coordinator refused: {}", status.message())),
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::sync::Arc;

    use ouroboros_proto::v1 as pb;
    use ouroboros_shared::pki::{self, PkiDir};
    use tokio::io::AsyncReadExt;
    use tokio::net::TcpListener;

    use super::*;
    use crate::admin::output::OutputFormat;

    fn pki_in(dir: &Path) -> PkiDir {
        let pki = PkiDir::new(dir);
        pki::init(&pki, &[]).unwrap();
        pki
    }

    fn admin_args(port: u16, pki: &PkiDir) -> AdminArgs {
        AdminArgs {
            server: format!("https://127.0.0.1:{port}"),
            pki_dir: pki.dir().to_owned(),
            ca: None,
            cert: None,
            key: None,
            output: OutputFormat::Json,
        }
    }

    /// A TLS server with `pki`'s coordinator certificate that accepts one connection, reads
    /// the first request and then drops the connection, as a coordinator killed mid-call does
    /// (no TLS closing message).
    async fn dying_coordinator(pki: &PkiDir) -> u16 {
        let tls = pki::server_config(
            &pki.ca_cert(),
            &pki.coordinator_cert(),
            &pki.coordinator_key(),
        )
        .unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let Ok(mut stream) = tokio_rustls::TlsAcceptor::from(Arc::clone(&tls))
                .accept(tcp)
                .await
            else {
                return;
            };
            // The HTTP/2 preface, settings and the call's headers.
            let mut buf = vec![0u8; 65536];
            let mut read = 0;
            while read < 100 {
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => read += n,
                }
            }
            drop(stream);
        });
        port
    }

    #[tokio::test]
    async fn a_coordinator_of_another_pki_is_named_as_such() {
        ouroboros_shared::install_crypto_provider();
        let dir = tempfile::tempdir().unwrap();
        let theirs = pki_in(&dir.path().join("theirs"));
        let ours = pki_in(&dir.path().join("ours"));
        let port = dying_coordinator(&theirs).await;
        let args = admin_args(port, &ours);
        let failure = crate::admin::client::connect(&args).await.unwrap_err();
        assert_eq!(failure.code, crate::admin::args::EXIT_UNREACHABLE);
        let ca = ours.ca_cert();
        assert_eq!(
            failure.message,
            format!(
                "the certificate of the coordinator at https://127.0.0.1:{port} is not signed by the CA in {}: --server and --pki-dir (or OUROBOROS_SERVER and OUROBOROS_PKI_DIR) belong to different coordinators",
                ca.display()
            )
        );
        // With --ca, that is the option named.
        let port = dying_coordinator(&theirs).await;
        let args = AdminArgs {
            ca: Some(ca.clone()),
            ..admin_args(port, &ours)
        };
        let failure = crate::admin::client::connect(&args).await.unwrap_err();
        assert!(
            failure
                .message
                .contains("--server and --ca (or OUROBOROS_SERVER and OUROBOROS_CA)"),
            "{}",
            failure.message
        );
    }

    #[tokio::test]
    async fn nothing_listening_is_said_once() {
        ouroboros_shared::install_crypto_provider();
        let dir = tempfile::tempdir().unwrap();
        let pki = pki_in(dir.path());
        // A port just freed: nothing listens there.
        let port = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let failure = crate::admin::client::connect(&admin_args(port, &pki))
            .await
            .unwrap_err();
        assert_eq!(failure.code, crate::admin::args::EXIT_UNREACHABLE);
        let m = &failure.message;
        assert!(
            m.starts_with(&format!(
                "cannot reach the coordinator at https://127.0.0.1:{port}: transport error: tcp connect error: "
            )),
            "{m}"
        );
        assert_eq!(m.matches("tcp connect error").count(), 1, "{m}");
    }

    #[tokio::test]
    async fn a_coordinator_gone_during_a_check_is_one_plain_line() {
        ouroboros_shared::install_crypto_provider();
        let dir = tempfile::tempdir().unwrap();
        let pki = pki_in(dir.path());
        let port = dying_coordinator(&pki).await;
        let args = admin_args(port, &pki);
        let mut client = crate::admin::client::connect(&args).await.unwrap();
        let status = client.check(pb::CheckRequest::default()).await.unwrap_err();
        let failure = call_failed(&args, "the check")(status);
        assert_eq!(failure.code, crate::admin::args::EXIT_UNREACHABLE);
        assert!(
            failure.message.starts_with(&format!(
                "the coordinator at https://127.0.0.1:{port} closed the connection during the check; "
            )),
            "{}",
            failure.message
        );
        // Not the TLS library's text and its documentation link.
        assert!(
            !failure.message.contains("close_notify"),
            "{}",
            failure.message
        );
        assert!(!failure.message.contains("docs.rs"), "{}", failure.message);
    }

    #[test]
    fn other_transport_failures_name_the_cause_once() {
        let dir = PkiDir::new("/nonexistent");
        let args = admin_args(1, &dir);
        let status = tonic::Status::unavailable("transport error");
        let failure = call_failed(&args, "the status")(status);
        assert_eq!(
            failure.message,
            "lost the coordinator at https://127.0.0.1:1 during the status: transport error"
        );
        let refused = call_failed(&args, "the check")(tonic::Status::not_found("no rollout r-1"));
        assert_eq!(refused.message, "coordinator refused: no rollout r-1");
    }
}

//! Mail notifications (`mailto://`, `mailtos://`) through `lettre`: one SMTP transport per
//! URL, built at startup with its TLS roots (the system's, plus the extra CA certificates of
//! `OUROBOROS_NOTIFY_CA`), so nothing is reloaded per message. lettre writes the message
//! (RFC 2047 subjects, quoted-printable or base64 bodies that keep lines short and 7-bit,
//! CRLF line ends, dot-stuffing), checks the server's 8BITMIME and SMTPUTF8 before relying on
//! them, and authenticates with PLAIN or LOGIN, whichever the server offers.
//!
//! A password is never sent over a plain connection unless the server is on this machine:
//! `mailto://` with credentials to another host requires STARTTLS.

use std::time::Duration;

use lettre::message::Mailbox;
use lettre::message::header::ContentType;
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::transport::smtp::extension::ClientId;
use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};

use super::delivery::DeliveryError;
use super::target::{MailSecurity, MailTarget};

/// The name this client gives in EHLO.
const HELLO_NAME: &str = "ouroboros";

/// A mail notifier that cannot be set up. No form quotes an address (a default sender is made
/// of the user name) or anything else from the URL.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MailSetupError {
    #[error("the {field} address is not a mail address")]
    Address { field: &'static str },
    #[error("the notification CA: {0}")]
    Ca(String),
    #[error("TLS: {0}")]
    Tls(String),
}

/// How the connection to the mail server is protected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Protection {
    /// TLS from the first byte (`mailtos://`).
    Implicit,
    /// STARTTLS, or no delivery: a password for a server elsewhere.
    StartTlsRequired,
    /// STARTTLS when the server offers it, plain otherwise.
    StartTlsIfOffered,
}

fn loopback(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

fn protection(target: &MailTarget) -> Protection {
    match target.security {
        MailSecurity::Implicit => Protection::Implicit,
        MailSecurity::StartTls if target.credentials.is_some() && !loopback(&target.host) => {
            Protection::StartTlsRequired
        }
        MailSecurity::StartTls => Protection::StartTlsIfOffered,
    }
}

/// The extra CA certificates (PEM), parsed once for every mail transport.
pub fn extra_ca(pem: &[u8]) -> Result<Certificate, MailSetupError> {
    Certificate::from_pem(pem).map_err(|e| MailSetupError::Ca(e.to_string()))
}

/// The message: `subject` on one line, `body` as plain UTF-8 text.
fn letter(
    from: &Mailbox,
    to: &[Mailbox],
    subject: &str,
    body: &str,
) -> Result<lettre::Message, lettre::error::Error> {
    let mut builder = lettre::Message::builder()
        .from(from.clone())
        .subject(subject.replace(['\r', '\n'], " "));
    for address in to {
        builder = builder.to(address.clone());
    }
    // Every line break, whatever it was, becomes CRLF (lettre turns each LF into CRLF): a
    // lone CR never reaches the server.
    let body = body.replace("\r\n", "\n").replace('\r', "\n");
    builder.header(ContentType::TEXT_PLAIN).body(body)
}

/// One line for an operator from lettre's error, without the server's text (a server may
/// echo what it got, credentials included).
fn failure(
    service: &str,
    protection: Protection,
    e: &lettre::transport::smtp::Error,
) -> DeliveryError {
    let one_line = |text: String| text.replace(|c: char| c.is_control(), " ");
    if let Some(code) = e.status() {
        return if e.is_permanent() {
            DeliveryError::refused(service, format!("the mail server refused ({code})"))
        } else {
            DeliveryError::transient(service, format!("the mail server answered {code}"))
        };
    }
    if e.is_timeout() {
        DeliveryError::transient(service, "no answer in time")
    } else if e.is_tls() {
        DeliveryError::transient(service, one_line(e.to_string()))
    } else if e.is_client() {
        // lettre's own words: no STARTTLS, no common AUTH mechanism, no 8BITMIME for a
        // message that needs it. The same attempt would meet the same server.
        let mut reason = one_line(e.to_string());
        if protection == Protection::StartTlsRequired && reason.contains("STARTTLS") {
            reason.push_str("; the password is not sent in the clear (use mailtos://)");
        }
        DeliveryError::refused(service, reason)
    } else if e.is_response() {
        DeliveryError::transient(service, "a malformed answer from the mail server")
    } else {
        // Connecting, reading or writing: the I/O error (no server text).
        DeliveryError::transient(service, one_line(e.to_string()))
    }
}

/// Sends the messages of one `mailto://` or `mailtos://` URL.
pub struct Mailer {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    protection: Protection,
    from: Mailbox,
    to: Vec<Mailbox>,
}

impl Mailer {
    /// The transport for `target`, with the system's roots and `extra_ca`; each attempt
    /// (connecting, every command) gives up after `timeout`.
    pub fn new(
        target: &MailTarget,
        extra_ca: Option<&Certificate>,
        timeout: Duration,
    ) -> Result<Self, MailSetupError> {
        let from: Mailbox = target
            .from
            .parse()
            .map_err(|_| MailSetupError::Address { field: "from" })?;
        let to = target
            .to
            .iter()
            .map(|a| a.parse::<Mailbox>())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| MailSetupError::Address { field: "to" })?;
        let mut tls = TlsParameters::builder(target.host.clone());
        if let Some(ca) = extra_ca {
            tls = tls.add_root_certificate(ca.clone());
        }
        let tls = tls
            .build_rustls()
            .map_err(|e| MailSetupError::Tls(e.to_string()))?;
        let protection = protection(target);
        let mut builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&target.host)
            .port(target.port)
            .hello_name(ClientId::Domain(HELLO_NAME.to_owned()))
            .timeout(Some(timeout))
            .tls(match protection {
                Protection::Implicit => Tls::Wrapper(tls),
                Protection::StartTlsRequired => Tls::Required(tls),
                Protection::StartTlsIfOffered => Tls::Opportunistic(tls),
            });
        if let Some((user, password)) = &target.credentials {
            builder = builder.credentials(Credentials::new(user.clone(), password.clone()));
        }
        Ok(Self {
            transport: builder.build(),
            protection,
            from,
            to,
        })
    }

    /// Sends one message; the error names `service` (the masked URL), never a secret.
    pub async fn send(
        &self,
        service: &str,
        subject: &str,
        body: &str,
    ) -> Result<(), DeliveryError> {
        let letter = letter(&self.from, &self.to, subject, body).map_err(|e| {
            DeliveryError::refused(service, format!("cannot write the message: {e}"))
        })?;
        self.transport
            .send(letter)
            .await
            .map(drop)
            .map_err(|e| failure(service, self.protection, &e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mailbox(a: &str) -> Mailbox {
        a.parse().unwrap_or_else(|_| panic!("{a}"))
    }

    fn formatted(subject: &str, body: &str) -> String {
        let m = letter(
            &mailbox("ouroboros@fleet.lan"),
            &[mailbox("ops@fleet.lan"), mailbox("oncall@fleet.lan")],
            subject,
            body,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        String::from_utf8(m.formatted()).unwrap_or_else(|e| panic!("{e}"))
    }

    fn target(url: &str) -> MailTarget {
        match super::super::urls::Notifier::parse(url).map(|n| n.service) {
            Ok(super::super::target::Service::Mail(t)) => t,
            _ => panic!("{url}"),
        }
    }

    #[test]
    fn a_non_ascii_subject_is_encoded_and_the_message_stays_seven_bit() {
        let text = formatted(
            "Ouroboros: mise à jour de café ✓",
            "web-01/shop: a → b\nprêt",
        );
        assert!(text.is_ascii(), "{text}");
        let subject = text
            .lines()
            .find(|l| l.starts_with("Subject:"))
            .unwrap_or_default();
        assert!(subject.contains("=?utf-8?"), "{subject}");
        assert!(
            text.contains("To: ops@fleet.lan, oncall@fleet.lan"),
            "{text}"
        );
        assert!(
            text.contains("Content-Type: text/plain; charset=utf-8"),
            "{text}"
        );
        assert!(text.contains("Date: "), "{text}");
        // An ASCII subject is left as it is.
        let plain = formatted("Ouroboros: 2 container(s) updated", "a -> b");
        assert!(plain.contains("Subject: Ouroboros: 2 container(s) updated\r\n"));
        assert!(plain.contains("Content-Transfer-Encoding: 7bit"), "{plain}");
    }

    #[test]
    fn long_lines_are_wrapped_and_every_line_ends_in_crlf() {
        let long = "x".repeat(5000);
        let text = formatted("t", &format!("{long}\rlone cr\r\nend\n.dot"));
        for line in text.split("\r\n") {
            assert!(line.len() <= 78, "a line of {} characters", line.len());
            assert!(!line.contains('\r') && !line.contains('\n'), "{line:?}");
        }
        assert!(
            text.contains("Content-Transfer-Encoding: quoted-printable")
                || text.contains("Content-Transfer-Encoding: base64"),
            "{text}"
        );
    }

    #[test]
    fn a_subject_cannot_add_headers() {
        let text = formatted("updated\r\nBcc: evil@example.com", "b");
        assert!(
            !text.lines().any(|l| l.starts_with("Bcc:")),
            "a header was injected: {text}"
        );
    }

    #[test]
    fn a_password_needs_tls_unless_the_server_is_on_this_machine() {
        for (url, expected) in [
            ("mailtos://u:p@smtp.lan", Protection::Implicit),
            ("mailtos://smtp.lan", Protection::Implicit),
            ("mailto://u:p@smtp.lan", Protection::StartTlsRequired),
            ("mailto://u@smtp.lan", Protection::StartTlsRequired),
            ("mailto://smtp.lan?to=a@lan", Protection::StartTlsIfOffered),
            ("mailto://u:p@127.0.0.1:2525", Protection::StartTlsIfOffered),
            ("mailto://u:p@localhost", Protection::StartTlsIfOffered),
            ("mailto://u:p@127.0.0.2", Protection::StartTlsIfOffered),
        ] {
            assert_eq!(protection(&target(url)), expected, "{url}");
        }
    }

    #[test]
    fn a_bad_address_is_refused_at_startup_without_quoting_it() {
        ouroboros_shared::install_crypto_provider();
        let timeout = Duration::from_secs(1);
        for (url, field) in [
            ("mailto://u:p@smtp.lan?to=not-an-address-sentinel", "to"),
            ("mailto://u:p@smtp.lan?to=a@lan,&from=x@lan", "to"),
            ("mailto://us%20er-sentinel:p@smtp.lan?to=a@lan", "from"),
            ("mailto://u:p@smtp.lan?from=a<b>-sentinel", "from"),
        ] {
            let e = Mailer::new(&target(url), None, timeout).err();
            assert_eq!(e, Some(MailSetupError::Address { field }), "{url}");
            let text = e.map(|e| e.to_string()).unwrap_or_default();
            assert!(!text.contains("sentinel"), "{text}");
        }
        assert!(
            Mailer::new(
                &target("mailtos://u:p@smtp.lan?to=Ops <ops@lan>"),
                None,
                timeout
            )
            .is_ok()
        );
        assert!(matches!(
            extra_ca(b"-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n"),
            Err(MailSetupError::Ca(_))
        ));
    }

    #[tokio::test]
    async fn no_server_is_a_transient_failure_that_names_no_secret() {
        ouroboros_shared::install_crypto_provider();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .unwrap_or_else(|e| panic!("{e}"));
        let url = format!("mailto://user-sentinel:pw-sentinel@127.0.0.1:{port}?to=a@lan");
        let mailer = Mailer::new(&target(&url), None, Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("{e}"));
        let e = mailer
            .send("mailto://***@127.0.0.1", "subject", "body")
            .await
            .err()
            .unwrap_or_else(|| panic!("delivered to nobody?"));
        assert!(e.is_retried(), "{e:?}");
        let text = e.to_string();
        assert!(text.starts_with("mailto://***@127.0.0.1: "), "{text}");
        assert!(!text.contains("sentinel") && !text.contains('\n'), "{text}");
    }
}

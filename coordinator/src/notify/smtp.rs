//! A small SMTP client for `mailto://` (STARTTLS when the server offers it) and `mailtos://`
//! (TLS from the first byte): EHLO, AUTH PLAIN when credentials are given, one message. TLS
//! is verified against the system's roots plus the CA certificates given
//! (`OUROBOROS_NOTIFY_CA`). A password
//! is never sent over a plain connection unless the server is on this machine.

use std::sync::Arc;

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

struct Session {
    io: BufReader<Box<dyn Stream>>,
}

impl Session {
    /// Reads one reply (all its lines); fails unless its code starts with `expect`.
    async fn reply(&mut self, expect: char) -> Result<Vec<String>, String> {
        let mut lines = Vec::new();
        loop {
            let mut line = String::new();
            let n = self
                .io
                .read_line(&mut line)
                .await
                .map_err(|e| format!("reading the server's reply: {e}"))?;
            if n == 0 {
                return Err("the server closed the connection".into());
            }
            let line = line.trim_end().to_owned();
            let last = line.as_bytes().get(3) != Some(&b'-');
            lines.push(line);
            if last {
                break;
            }
        }
        let code = lines
            .last()
            .map(|l| l.chars().take(3).collect::<String>())
            .unwrap_or_default();
        if code.starts_with(expect) {
            Ok(lines)
        } else {
            Err(format!("the server answered {}", lines.join(" / ")))
        }
    }

    async fn command(&mut self, line: &str, expect: char) -> Result<Vec<String>, String> {
        self.io
            .get_mut()
            .write_all(format!("{line}\r\n").as_bytes())
            .await
            .map_err(|e| format!("writing to the server: {e}"))?;
        self.reply(expect).await
    }
}

fn tls_config(ca: Option<&[u8]>) -> Result<Arc<rustls::ClientConfig>, String> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_native_certs::load_native_certs().certs {
        let _ = roots.add(cert);
    }
    if let Some(pem) = ca {
        for cert in rustls::pki_types::CertificateDer::pem_slice_iter(pem) {
            let cert = cert.map_err(|e| format!("extra CA: {e}"))?;
            roots.add(cert).map_err(|e| format!("extra CA: {e}"))?;
        }
    }
    Ok(Arc::new(
        rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    ))
}

async fn wrap_tls(
    plain: Box<dyn Stream>,
    host: &str,
    ca: Option<&[u8]>,
) -> Result<Box<dyn Stream>, String> {
    let name = rustls::pki_types::ServerName::try_from(host.to_owned())
        .map_err(|e| format!("{host}: {e}"))?;
    let tls = tokio_rustls::TlsConnector::from(tls_config(ca)?)
        .connect(name, plain)
        .await
        .map_err(|e| format!("TLS with {host}: {e}"))?;
    Ok(Box::new(tls))
}

fn loopback(host: &str) -> bool {
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Sends one message. Errors name the step and the server's answer, never the password.
#[allow(clippy::too_many_arguments)]
pub async fn send(
    ca: Option<&[u8]>,
    host: &str,
    port: u16,
    tls: bool,
    credentials: Option<&(String, String)>,
    from: &str,
    to: &[String],
    subject: &str,
    body: &str,
) -> Result<(), String> {
    // Addresses go into commands and headers: no line breaks, brackets or spaces.
    for address in std::iter::once(from).chain(to.iter().map(String::as_str)) {
        if address.is_empty()
            || address
                .chars()
                .any(|c| c.is_control() || c.is_whitespace() || matches!(c, '<' | '>'))
        {
            return Err(format!("{address:?} is not a mail address"));
        }
    }
    let tcp = TcpStream::connect((host, port))
        .await
        .map_err(|e| format!("cannot connect to {host}:{port}: {e}"))?;
    let mut stream: Box<dyn Stream> = Box::new(tcp);
    if tls {
        stream = wrap_tls(stream, host, ca).await?;
    }
    let mut s = Session {
        io: BufReader::new(stream),
    };
    s.reply('2').await?;
    let mut features = s.command("EHLO ouroboros", '2').await?;
    let mut secure = tls;
    if !tls
        && features.iter().any(|l| {
            l.get(4..)
                .is_some_and(|f| f.trim().eq_ignore_ascii_case("STARTTLS"))
        })
    {
        s.command("STARTTLS", '2').await?;
        let plain = s.io.into_inner();
        s = Session {
            io: BufReader::new(wrap_tls(plain, host, ca).await?),
        };
        features = s.command("EHLO ouroboros", '2').await?;
        secure = true;
    }
    if let Some((user, password)) = credentials {
        if !secure && !loopback(host) {
            return Err(format!(
                "{host}:{port} offers no STARTTLS; the password is not sent in the clear (use mailtos://)"
            ));
        }
        let _ = features;
        let token = base64::Engine::encode(
            &base64::engine::general_purpose::STANDARD,
            format!("\0{user}\0{password}"),
        );
        // Only the reply's code: a server may echo what it got.
        s.command(&format!("AUTH PLAIN {token}"), '2')
            .await
            .map_err(|e| {
                let code: String = e
                    .trim_start_matches("the server answered ")
                    .chars()
                    .take(3)
                    .collect();
                format!("authentication refused ({code})")
            })?;
    }
    s.command(&format!("MAIL FROM:<{from}>"), '2').await?;
    for rcpt in to {
        s.command(&format!("RCPT TO:<{rcpt}>"), '2').await?;
    }
    s.command("DATA", '3').await?;
    let date = chrono::Utc::now().to_rfc2822();
    let mut data = format!(
        "From: {from}\r\nTo: {}\r\nSubject: {}\r\nDate: {date}\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n",
        to.join(", "),
        subject.replace(['\r', '\n'], " ")
    );
    // Every line break, whatever it was, becomes CRLF; a lone CR never reaches the server.
    let body = body.replace("\r\n", "\n").replace('\r', "\n");
    for line in body.lines() {
        // Dot-stuffing: a line that starts with "." gets another.
        if line.starts_with('.') {
            data.push('.');
        }
        data.push_str(line);
        data.push_str("\r\n");
    }
    data.push_str(".\r\n");
    s.io.get_mut()
        .write_all(data.as_bytes())
        .await
        .map_err(|e| format!("writing the message: {e}"))?;
    s.reply('2').await?;
    let _ = s.command("QUIT", '2').await;
    Ok(())
}

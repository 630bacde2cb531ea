//! Each notification scheme against a real local receiver: an HTTP server that records what
//! it gets (the services with fixed hosts are pointed at it with API roots), and a real SMTP
//! server from Debian's `python3-aiosmtpd` (plain with AUTH on loopback, STARTTLS, and TLS).
//! Every request must match the service's documented API: method, path, fields.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use ouroboros_coordinator::notify::{ApiRoots, Kind, Message, Notifiers};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

#[derive(Debug, Clone)]
struct Got {
    method: String,
    path: String,
    headers: Vec<(String, String)>,
    body: String,
}

impl Got {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::Null)
    }
}

/// An HTTP server on 127.0.0.1 answering 200 to everything and keeping the requests.
async fn receiver() -> (String, Arc<Mutex<Vec<Got>>>) {
    receiver_answering("200 OK").await
}

/// [`receiver`] answering `status` (e.g. `404 Not Found`).
async fn receiver_answering(status: &'static str) -> (String, Arc<Mutex<Vec<Got>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let got: Arc<Mutex<Vec<Got>>> = Arc::default();
    let log = got.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let log = log.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                let (head_end, length) = loop {
                    match stream.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                    if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&buf[..i]).to_string();
                        let length = head
                            .lines()
                            .filter_map(|l| l.split_once(':'))
                            .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
                            .and_then(|(_, v)| v.trim().parse::<usize>().ok())
                            .unwrap_or(0);
                        break (i + 4, length);
                    }
                };
                while buf.len() < head_end + length {
                    match stream.read(&mut chunk).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
                let mut lines = head.lines();
                let mut first = lines.next().unwrap_or_default().split(' ');
                let got = Got {
                    method: first.next().unwrap_or_default().to_owned(),
                    path: first.next().unwrap_or_default().to_owned(),
                    headers: lines
                        .filter_map(|l| l.split_once(':'))
                        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
                        .collect(),
                    body: String::from_utf8_lossy(&buf[head_end..]).to_string(),
                };
                log.lock().unwrap().push(got);
                let answer = format!(
                    "HTTP/1.1 {status}\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{{}}"
                );
                let _ = stream.write_all(answer.as_bytes()).await;
            });
        }
    });
    (addr, got)
}

fn message() -> Message {
    Message {
        event: "updates-done",
        kind: Kind::Success,
        title: "Ouroboros: 2 container(s) updated".into(),
        body: "web-01/shop: a -> b\ndb-01/pg: c -> d".into(),
    }
}

/// Sends one message through `url` and returns what the receiver got.
async fn through(url: &str, roots: &ApiRoots, got: &Arc<Mutex<Vec<Got>>>) -> Vec<Got> {
    got.lock().unwrap().clear();
    let notifiers = Notifiers::new(&[url.to_owned()], None, roots, None).unwrap();
    for task in notifiers.send(message()) {
        assert!(task.await.unwrap(), "{url}: not delivered");
    }
    got.lock().unwrap().clone()
}

#[tokio::test]
async fn every_http_scheme_speaks_its_service_api() {
    let (addr, got) = receiver().await;
    let root = format!("http://{addr}");
    let roots: ApiRoots = ["discord", "slack", "tgram", "pushover", "msteams", "ntfy"]
        .iter()
        .map(|s| ((*s).to_owned(), root.clone()))
        .collect();

    // Apprise's JSON webhook: POST, version/title/message/type, Basic when given.
    let r = through(&format!("json://u:p@{addr}/hook"), &roots, &got).await;
    assert_eq!(
        (r[0].method.as_str(), r[0].path.as_str()),
        ("POST", "/hook")
    );
    let body = r[0].json();
    assert_eq!(body["version"], "1.0");
    assert_eq!(body["title"], "Ouroboros: 2 container(s) updated");
    assert_eq!(body["type"], "success");
    assert!(body["message"].as_str().unwrap().contains("web-01/shop"));
    assert_eq!(r[0].header("authorization"), Some("Basic dTpw"));
    assert_eq!(r[0].header("content-type"), Some("application/json"));

    // Discord: POST /api/webhooks/{id}/{token}, content.
    let r = through("discord://1234/tok", &roots, &got).await;
    assert_eq!(r[0].path, "/api/webhooks/1234/tok");
    assert!(
        r[0].json()["content"]
            .as_str()
            .unwrap()
            .contains("db-01/pg")
    );

    // Slack: POST /services/A/B/C, text (and channel).
    let r = through("slack://TA/TB/TC/%23ops", &roots, &got).await;
    assert_eq!(r[0].path, "/services/TA/TB/TC");
    assert!(r[0].json()["text"].as_str().unwrap().contains("updated"));
    assert_eq!(r[0].json()["channel"], "#ops");

    // Telegram: POST /bot{token}/sendMessage per chat, chat_id and text.
    let r = through("tgram://123:abc/42/43", &roots, &got).await;
    assert_eq!(r.len(), 2, "one request per chat");
    assert_eq!(r[0].path, "/bot123:abc/sendMessage");
    let chats: Vec<Value> = r.iter().map(|g| g.json()["chat_id"].clone()).collect();
    assert_eq!(chats, vec![Value::from("42"), Value::from("43")]);
    assert!(
        r[0].json()["text"]
            .as_str()
            .unwrap()
            .contains("web-01/shop")
    );

    // Pushover: POST /1/messages.json, token, user, title, message (device).
    let r = through("pushover://ukey@atoken/phone", &roots, &got).await;
    assert_eq!(r[0].path, "/1/messages.json");
    let b = r[0].json();
    assert_eq!(
        (b["token"].as_str(), b["user"].as_str()),
        (Some("atoken"), Some("ukey"))
    );
    assert_eq!(b["device"], "phone");
    assert_eq!(b["title"], "Ouroboros: 2 container(s) updated");

    // Microsoft Teams: POST to the incoming webhook, a MessageCard.
    let r = through("msteams://team/TA/TB/TC", &roots, &got).await;
    assert_eq!(r[0].path, "/webhookb2/TA/IncomingWebhook/TB/TC");
    let b = r[0].json();
    assert_eq!(b["@type"], "MessageCard");
    assert_eq!(b["title"], "Ouroboros: 2 container(s) updated");
    assert!(b["text"].as_str().unwrap().contains("db-01/pg"));

    // ntfy: POST /{topic}, the message as body, title in X-Title; own host or ntfy.sh's root.
    let r = through(&format!("ntfy://{addr}/fleet"), &roots, &got).await;
    assert_eq!(
        (r[0].method.as_str(), r[0].path.as_str()),
        ("POST", "/fleet")
    );
    assert_eq!(
        r[0].header("x-title"),
        Some("Ouroboros: 2 container(s) updated")
    );
    assert!(r[0].body.contains("web-01/shop"));
    let r = through("ntfy://public-topic", &roots, &got).await;
    assert_eq!(r[0].path, "/public-topic");

    // Gotify: POST /message with the app token, title/message/priority.
    let r = through(&format!("gotify://{addr}/AppTok"), &roots, &got).await;
    assert_eq!(r[0].path, "/message");
    assert_eq!(r[0].header("x-gotify-key"), Some("AppTok"));
    assert_eq!(r[0].json()["priority"], 5);
    assert_eq!(r[0].json()["title"], "Ouroboros: 2 container(s) updated");

    // Apprise API: POST /notify/{token}, title/body/type.
    let r = through(&format!("apprise://{addr}/cfgkey"), &roots, &got).await;
    assert_eq!(r[0].path, "/notify/cfgkey");
    assert_eq!(r[0].json()["type"], "success");
    assert!(r[0].json()["body"].as_str().unwrap().contains("db-01/pg"));
}

#[tokio::test]
async fn a_failing_service_is_retried_then_given_up_without_blocking() {
    // Nothing listens: every attempt fails at once; the send returns before delivery ends.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let notifiers = Notifiers::new(
        &[format!("json://127.0.0.1:{port}/x")],
        None,
        &ApiRoots::new(),
        None,
    )
    .unwrap();
    let started = std::time::Instant::now();
    let tasks = notifiers.send(message());
    assert!(
        started.elapsed() < Duration::from_millis(100),
        "send blocked"
    );
    for t in tasks {
        assert!(!t.await.unwrap(), "delivered to nobody?");
    }
}

/// A real SMTP server (aiosmtpd) recording what it accepts; `tls`: none, `starttls` or
/// `implicit`.
fn smtp_server(
    dir: &std::path::Path,
    port: u16,
    tls: &str,
    cert: &str,
    key: &str,
) -> std::process::Child {
    let script = dir.join("smtpd.py");
    std::fs::write(
        &script,
        r#"import ssl, sys, time
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword
port, out, mode, cert, key = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5]
class Handler:
    async def handle_DATA(self, server, session, envelope):
        with open(out, 'a') as f:
            f.write('FROM %s\nTO %s\nAUTH %s\n%s\n---\n' % (envelope.mail_from, ','.join(envelope.rcpt_tos), session.authenticated, envelope.content.decode()))
        return '250 OK'
def auth(server, session, envelope, mechanism, data):
    return AuthResult(success=isinstance(data, LoginPassword) and data.login == b'ops' and data.password == b'p@ss:w')
ctx = None
if mode != 'none':
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
# (aiosmtpd does not count its own implicit TLS as encryption for AUTH: only STARTTLS demands it)
kw = dict(hostname='127.0.0.1', port=port, authenticator=auth, auth_require_tls=(mode == 'starttls'))
if mode == 'starttls':
    kw.update(tls_context=ctx, require_starttls=True)
if mode == 'implicit':
    kw.update(ssl_context=ctx)
Controller(Handler(), **kw).start()
print('READY', flush=True)
while True:
    time.sleep(3600)
"#,
    )
    .unwrap();
    // Debian's interpreter, whose dist-packages hold aiosmtpd (not a pyenv one on PATH).
    std::process::Command::new("/usr/bin/python3")
        .arg(&script)
        .args([
            &port.to_string(),
            dir.join(format!("mail-{tls}.txt")).to_str().unwrap(),
            tls,
            cert,
            key,
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("python3 with aiosmtpd (Debian's python3-aiosmtpd)")
}

#[tokio::test]
async fn mail_goes_through_a_real_smtp_server_plain_starttls_and_tls() {
    use ouroboros_shared::pki::{self, PkiDir};
    let dir = tempfile::tempdir().unwrap();
    let pki = PkiDir::new(dir.path().join("pki"));
    pki::init(&pki, &[]).unwrap();
    let ca = std::fs::read(pki.ca_cert()).unwrap();
    let (cert, key) = (
        pki.coordinator_cert().to_str().unwrap().to_owned(),
        pki.coordinator_key().to_str().unwrap().to_owned(),
    );
    for (mode, scheme) in [
        ("none", "mailto"),
        ("starttls", "mailto"),
        ("implicit", "mailtos"),
    ] {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut server = smtp_server(dir.path(), port, mode, &cert, &key);
        // Up when it answers.
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            assert!(
                std::time::Instant::now() < deadline,
                "{mode}: smtpd did not start"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let url = format!(
            "{scheme}://ops:p%40ss%3Aw@127.0.0.1:{port}?from=ouroboros@fleet.lan&to=ops@fleet.lan,oncall@fleet.lan"
        );
        let notifiers = Notifiers::new(&[url], None, &ApiRoots::new(), Some(ca.clone())).unwrap();
        for task in notifiers.send(message()) {
            assert!(task.await.unwrap(), "{mode}: not delivered");
        }
        let _ = server.kill();
        let _ = server.wait();
        let mail = std::fs::read_to_string(dir.path().join(format!("mail-{mode}.txt"))).unwrap();
        assert!(mail.contains("FROM ouroboros@fleet.lan"), "{mode}: {mail}");
        assert!(
            mail.contains("TO ops@fleet.lan,oncall@fleet.lan"),
            "{mode}: {mail}"
        );
        assert!(mail.contains("AUTH True"), "{mode}: {mail}");
        assert!(
            mail.contains("Subject: Ouroboros: 2 container(s) updated"),
            "{mode}: {mail}"
        );
        assert!(mail.contains("web-01/shop: a -> b"), "{mode}: {mail}");
    }
}

/// The TLS forms (`jsons`, `ntfys`, `gotifys`, `apprises`) against an HTTPS receiver whose
/// certificate comes from a private CA given to the notifiers.
#[tokio::test]
async fn the_tls_schemes_speak_https_and_verify_it() {
    use ouroboros_shared::pki::{self, PkiDir};
    ouroboros_shared::install_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    let pki = PkiDir::new(dir.path().join("pki"));
    pki::init(&pki, &[]).unwrap();
    let tls = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(
            pki::load_certs(&pki.coordinator_cert()).unwrap(),
            pki::load_key(&pki.coordinator_key()).unwrap(),
        )
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let got: Arc<Mutex<Vec<String>>> = Arc::default();
    let log = got.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            let log = log.clone();
            tokio::spawn(async move {
                let Ok(mut stream) = acceptor.accept(stream).await else {
                    return;
                };
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let head = String::from_utf8_lossy(&buf).to_string();
                log.lock()
                    .unwrap()
                    .push(head.lines().next().unwrap_or_default().to_owned());
                let _ = stream
                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                    .await;
                let _ = stream.shutdown().await;
            });
        }
    });
    let ca = std::fs::read(pki.ca_cert()).unwrap();
    // localhost: the certificate names it (and 127.0.0.1).
    let host = addr.replace("127.0.0.1", "localhost");
    for (url, line) in [
        (format!("jsons://{host}/hook"), "POST /hook HTTP/1.1"),
        (format!("ntfys://{host}/fleet"), "POST /fleet HTTP/1.1"),
        (format!("gotifys://{host}/tok"), "POST /message HTTP/1.1"),
        (
            format!("apprises://{host}/key"),
            "POST /notify/key HTTP/1.1",
        ),
    ] {
        got.lock().unwrap().clear();
        let trusted = Notifiers::new(
            std::slice::from_ref(&url),
            None,
            &ApiRoots::new(),
            Some(ca.clone()),
        )
        .unwrap();
        for t in trusted.send(message()) {
            assert!(t.await.unwrap(), "{url}: not delivered over TLS");
        }
        assert_eq!(got.lock().unwrap().clone(), vec![line.to_owned()], "{url}");
    }
    // Without the CA the certificate is refused: nothing is delivered.
    got.lock().unwrap().clear();
    let untrusted = Notifiers::new(
        &[format!("jsons://{host}/hook")],
        None,
        &ApiRoots::new(),
        None,
    )
    .unwrap();
    for t in untrusted.send(message()) {
        assert!(!t.await.unwrap(), "delivered to an unverified server");
    }
    assert!(got.lock().unwrap().is_empty());
}

#[tokio::test]
async fn a_refused_request_is_not_retried_and_a_server_error_is() {
    for (status, expected) in [("404 Not Found", 1), ("503 Service Unavailable", 3)] {
        let (addr, got) = receiver_answering(status).await;
        let notifiers = Notifiers::new(
            &[format!("json://{addr}/hook")],
            None,
            &ApiRoots::new(),
            None,
        )
        .unwrap();
        for t in notifiers.send(message()) {
            assert!(!t.await.unwrap(), "{status}: counted as delivered");
        }
        assert_eq!(got.lock().unwrap().len(), expected, "{status}");
    }
}

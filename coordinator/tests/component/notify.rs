//! Each notification scheme against a real local receiver: the harness's fake HTTP server,
//! which records what it gets (the services with fixed hosts are pointed at it with API
//! roots), and a real SMTP server from Debian's `python3-aiosmtpd` (plain with AUTH on
//! loopback, STARTTLS, and TLS). Every request must match the service's documented API:
//! method, path, fields.

use std::sync::Arc;
use std::time::Duration;

use ouroboros_coordinator::notify::{ApiRoots, Kind, Message, Notifiers};
use ouroboros_tests::fake_http::{FakeHttp, Request, Response};
use serde_json::Value;

fn json(request: &Request) -> Value {
    serde_json::from_slice(&request.body).unwrap_or(Value::Null)
}

/// A receiver on 127.0.0.1 answering `status` to everything.
fn receiver_answering(status: u16) -> FakeHttp {
    FakeHttp::start(move |_| Response::new(status).json(&serde_json::json!({}))).unwrap()
}

fn message() -> Message {
    Message {
        event: "updates-done",
        kind: Kind::Success,
        title: "Ouroboros: 2 container(s) updated".into(),
        body: "web-01/shop: a -> b\ndb-01/pg: c -> d".into(),
    }
}

/// Sends one message through `url` and returns what the receiver got for it.
async fn through(url: &str, roots: &ApiRoots, server: &FakeHttp) -> Vec<Request> {
    let before = server.requests().len();
    let notifiers = Notifiers::new(&[url.to_owned()], None, roots, None).unwrap();
    for task in notifiers.send(message()) {
        assert!(task.await.unwrap(), "{url}: not delivered");
    }
    server.requests().split_off(before)
}

#[tokio::test]
async fn every_http_scheme_speaks_its_service_api() {
    let server = receiver_answering(200);
    let addr = server.addr();
    let root = server.url();
    let roots: ApiRoots = ["discord", "slack", "tgram", "pushover", "msteams", "ntfy"]
        .iter()
        .map(|s| ((*s).to_owned(), root.clone()))
        .collect();

    // Apprise's JSON webhook: POST, version/title/message/type, Basic when given.
    let r = through(&format!("json://u:p@{addr}/hook"), &roots, &server).await;
    assert_eq!(
        (r[0].method.as_str(), r[0].path.as_str()),
        ("POST", "/hook")
    );
    let body = json(&r[0]);
    assert_eq!(body["version"], "1.0");
    assert_eq!(body["title"], "Ouroboros: 2 container(s) updated");
    assert_eq!(body["type"], "success");
    assert!(body["message"].as_str().unwrap().contains("web-01/shop"));
    assert_eq!(r[0].header("authorization"), Some("Basic dTpw"));
    assert_eq!(r[0].header("content-type"), Some("application/json"));

    // Discord: POST /api/webhooks/{id}/{token}, content.
    let r = through("discord://1234/tok", &roots, &server).await;
    assert_eq!(r[0].path, "/api/webhooks/1234/tok");
    assert!(
        json(&r[0])["content"]
            .as_str()
            .unwrap()
            .contains("db-01/pg")
    );

    // Slack: POST /services/A/B/C, text (and channel).
    let r = through("slack://TA/TB/TC/%23ops", &roots, &server).await;
    assert_eq!(r[0].path, "/services/TA/TB/TC");
    assert!(json(&r[0])["text"].as_str().unwrap().contains("updated"));
    assert_eq!(json(&r[0])["channel"], "#ops");

    // Telegram: POST /bot{token}/sendMessage per chat, chat_id and text.
    let r = through("tgram://123:abc/42/43", &roots, &server).await;
    assert_eq!(r.len(), 2, "one request per chat");
    assert_eq!(r[0].path, "/bot123:abc/sendMessage");
    let chats: Vec<Value> = r.iter().map(|g| json(g)["chat_id"].clone()).collect();
    assert_eq!(chats, vec![Value::from("42"), Value::from("43")]);
    assert!(
        json(&r[0])["text"]
            .as_str()
            .unwrap()
            .contains("web-01/shop")
    );

    // Pushover: POST /1/messages.json, token, user, title, message (device).
    let r = through("pushover://ukey@atoken/phone", &roots, &server).await;
    assert_eq!(r[0].path, "/1/messages.json");
    let b = json(&r[0]);
    assert_eq!(
        (b["token"].as_str(), b["user"].as_str()),
        (Some("atoken"), Some("ukey"))
    );
    assert_eq!(b["device"], "phone");
    assert_eq!(b["title"], "Ouroboros: 2 container(s) updated");

    // Microsoft Teams: POST to the incoming webhook, a MessageCard.
    let r = through("msteams://team/TA/TB/TC", &roots, &server).await;
    assert_eq!(r[0].path, "/webhookb2/TA/IncomingWebhook/TB/TC");
    let b = json(&r[0]);
    assert_eq!(b["@type"], "MessageCard");
    assert_eq!(b["title"], "Ouroboros: 2 container(s) updated");
    assert!(b["text"].as_str().unwrap().contains("db-01/pg"));

    // ntfy: POST /{topic}, the message as body, title in X-Title; own host or ntfy.sh's root.
    let r = through(&format!("ntfy://{addr}/fleet"), &roots, &server).await;
    assert_eq!(
        (r[0].method.as_str(), r[0].path.as_str()),
        ("POST", "/fleet")
    );
    assert_eq!(
        r[0].header("x-title"),
        Some("Ouroboros: 2 container(s) updated")
    );
    assert!(r[0].text().contains("web-01/shop"));
    let r = through("ntfy://public-topic", &roots, &server).await;
    assert_eq!(r[0].path, "/public-topic");

    // Gotify: POST /message with the app token, title/message/priority.
    let r = through(&format!("gotify://{addr}/AppTok"), &roots, &server).await;
    assert_eq!(r[0].path, "/message");
    assert_eq!(r[0].header("x-gotify-key"), Some("AppTok"));
    assert_eq!(json(&r[0])["priority"], 5);
    assert_eq!(json(&r[0])["title"], "Ouroboros: 2 container(s) updated");

    // Apprise API: POST /notify/{token}, title/body/type.
    let r = through(&format!("apprise://{addr}/cfgkey"), &roots, &server).await;
    assert_eq!(r[0].path, "/notify/cfgkey");
    assert_eq!(json(&r[0])["type"], "success");
    assert!(json(&r[0])["body"].as_str().unwrap().contains("db-01/pg"));
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

/// A running SMTP server, stopped when dropped (also when an assertion fails).
struct Smtpd(std::process::Child);

impl Drop for Smtpd {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A real SMTP server (aiosmtpd) recording what it accepts; `tls`: none, `starttls` or
/// `implicit`.
fn smtp_server(dir: &std::path::Path, port: u16, tls: &str, cert: &str, key: &str) -> Smtpd {
    let script = dir.join("smtpd.py");
    std::fs::write(
        &script,
        r#"import email, email.policy, ssl, sys, time
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword
port, out, mode, cert, key = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5]
class Handler:
    async def handle_DATA(self, server, session, envelope):
        # What a mail reader shows: the decoded subject and body (lines joined by '|').
        msg = email.message_from_bytes(envelope.content, policy=email.policy.default)
        with open(out, 'a', encoding='utf-8') as f:
            f.write('FROM %s\nTO %s\nAUTH %s\nSUBJECT %s\nBODY %s\n%s\n---\n' % (envelope.mail_from, ','.join(envelope.rcpt_tos), session.authenticated, msg['subject'], msg.get_content().replace('\r\n', '\n').replace('\n', '|'), envelope.content.decode()))
        return '250 OK'
def auth(server, session, envelope, mechanism, data):
    ok = isinstance(data, LoginPassword) and data.login == b'ops' and data.password == b'p@ss:w'
    with open(out + '.auth', 'a', encoding='utf-8') as f:
        f.write('%s %s\n' % (mechanism, ok))
    # handled=False: aiosmtpd answers 535 itself (its default is to answer nothing).
    return AuthResult(success=ok, handled=False)
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
    let child = std::process::Command::new("/usr/bin/python3")
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
        .expect("python3 with aiosmtpd (Debian's python3-aiosmtpd)");
    Smtpd(child)
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
        let server = smtp_server(dir.path(), port, mode, &cert, &key);
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
        // A wrong password: refused (535) once, not asked again.
        let wrong = format!("{scheme}://ops:wrong@127.0.0.1:{port}?to=ops@fleet.lan");
        let notifiers = Notifiers::new(&[wrong], None, &ApiRoots::new(), Some(ca.clone())).unwrap();
        for task in notifiers.send(message()) {
            assert!(
                !task.await.unwrap(),
                "{mode}: delivered with a wrong password"
            );
        }
        let auth_log = dir.path().join(format!("mail-{mode}.txt.auth"));
        let tries = std::fs::read_to_string(&auth_log).unwrap_or_default();
        assert_eq!(tries.lines().count(), 1, "{mode}: {tries}");
        assert!(tries.ends_with("False\n"), "{mode}: {tries}");

        let url = format!(
            "{scheme}://ops:p%40ss%3Aw@127.0.0.1:{port}?from=ouroboros@fleet.lan&to=ops@fleet.lan,oncall@fleet.lan"
        );
        let notifiers = Notifiers::new(&[url], None, &ApiRoots::new(), Some(ca.clone())).unwrap();
        for task in notifiers.send(message()) {
            assert!(task.await.unwrap(), "{mode}: not delivered");
        }
        // Non-ASCII in the subject and the body, and a line longer than SMTP allows.
        let long_line = "x".repeat(3000);
        let accented = Message {
            title: "Ouroboros: mise à jour ✓".into(),
            body: format!("web-01/café: a → b\n{long_line}"),
            ..message()
        };
        for task in notifiers.send(accented) {
            assert!(task.await.unwrap(), "{mode}: not delivered");
        }
        drop(server);
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
        // What a reader shows, decoded: the subject (RFC 2047) and the body, the long line whole.
        assert!(
            mail.contains("SUBJECT Ouroboros: mise à jour ✓\n"),
            "{mode}: {mail}"
        );
        assert!(
            mail.contains(&format!("BODY web-01/café: a → b|{long_line}")),
            "{mode}: {mail}"
        );
        // On the wire every line stays within SMTP's limit.
        let wire_longest = mail
            .lines()
            .filter(|l| !l.starts_with("BODY "))
            .map(str::len)
            .max()
            .unwrap_or(0);
        assert!(
            wire_longest <= 998,
            "{mode}: a line of {wire_longest} characters"
        );
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
    let server = FakeHttp::start_on(
        std::net::Ipv4Addr::LOCALHOST.into(),
        Some(Arc::new(tls)),
        |_| Response::new(200),
    )
    .unwrap();
    let ca = std::fs::read(pki.ca_cert()).unwrap();
    // localhost: the certificate names it (and 127.0.0.1).
    let host = format!("localhost:{}", server.addr().port());
    for (url, path) in [
        (format!("jsons://{host}/hook"), "/hook"),
        (format!("ntfys://{host}/fleet"), "/fleet"),
        (format!("gotifys://{host}/tok"), "/message"),
        (format!("apprises://{host}/key"), "/notify/key"),
    ] {
        let before = server.requests().len();
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
        let got: Vec<(String, String)> = server.requests()[before..]
            .iter()
            .map(|r| (r.method.clone(), r.path.clone()))
            .collect();
        assert_eq!(got, vec![("POST".to_owned(), path.to_owned())], "{url}");
    }
    // Without the CA the certificate is refused: nothing is delivered.
    let before = server.requests().len();
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
    assert_eq!(server.requests().len(), before);
}

#[tokio::test]
async fn a_refused_request_is_not_retried_and_a_server_error_is() {
    for (status, expected) in [(404, 1), (401, 1), (503, 3), (429, 3)] {
        let server = receiver_answering(status);
        let notifiers = Notifiers::new(
            &[format!("json://{}/hook", server.addr())],
            None,
            &ApiRoots::new(),
            None,
        )
        .unwrap();
        for t in notifiers.send(message()) {
            assert!(!t.await.unwrap(), "{status}: counted as delivered");
        }
        assert_eq!(server.count("POST", "/hook"), expected, "{status}");
    }
}

#[tokio::test]
async fn a_slow_service_does_not_block_the_sender() {
    // The send returns at once; the delivery goes on in its task until the answer comes.
    let server = FakeHttp::start(|_| Response::new(200).delay(Duration::from_millis(300))).unwrap();
    let notifiers = Notifiers::new(
        &[format!("json://{}/hook", server.addr())],
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
        assert!(
            t.await.unwrap(),
            "a slow answer within the deadline is delivered"
        );
    }
    assert_eq!(server.count("POST", "/hook"), 1);
}

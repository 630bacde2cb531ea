//! Notifications: Apprise URLs, natively. Each URL names a service and its credentials;
//! [`Notifier::parse`] checks it at startup (one line naming the URL, secrets masked) and
//! [`Notifiers::send`] delivers a message to every service at once, each with a deadline and
//! retries, in tasks of their own: a failing service never delays or blocks an update.
//! Failures are logged with the service's masked URL and counted
//! (`ouroboros_notifications_total`); no secret reaches a log line, an error or a metric.

pub mod smtp;

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tracing::{debug, warn};

use crate::telemetry::metrics::Metrics;

/// Deadline of one delivery attempt.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);
/// Attempts per message and service.
const ATTEMPTS: u32 = 3;
/// Ends the error of an answer that another attempt cannot change.
const NOT_RETRIED: &str = " (not retried)";
/// Longest text Discord takes in `content`.
const DISCORD_MAX: usize = 2000;
/// Longest text Telegram takes in `text`.
const TELEGRAM_MAX: usize = 4096;

/// `text` cut to `max` characters, with an ellipsis when cut.
fn clip(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        text.to_owned()
    } else {
        let mut cut: String = text.chars().take(max.saturating_sub(1)).collect();
        cut.push('…');
        cut
    }
}

/// How bad the news is (Apprise's notification types).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Info,
    Success,
    Warning,
    Failure,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Info => "info",
            Self::Success => "success",
            Self::Warning => "warning",
            Self::Failure => "failure",
        }
    }
}

/// One message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// `startup`, `updates-done`, `update-failed`, `updates-available`, `rollout-paused`,
    /// `agent-lost`, `agent-back`.
    pub event: &'static str,
    pub kind: Kind,
    pub title: String,
    pub body: String,
}

/// A service to notify, parsed from its Apprise URL.
#[derive(Clone, PartialEq, Eq)]
pub enum Service {
    /// `json://` / `jsons://`: Apprise's JSON webhook.
    Json {
        url: String,
        auth: Option<(String, String)>,
    },
    /// `discord://ID/TOKEN`.
    Discord {
        base: String,
        id: String,
        token: String,
    },
    /// `slack://A/B/C[/#channel]`.
    Slack {
        base: String,
        tokens: [String; 3],
        channel: Option<String>,
    },
    /// `tgram://BOT_TOKEN/CHAT_ID[/CHAT_ID…]`.
    Telegram {
        base: String,
        token: String,
        chats: Vec<String>,
    },
    /// `ntfy://[user:pass@]host[:port]/topic`, `ntfys://…`, `ntfy://topic` (ntfy.sh).
    Ntfy {
        base: String,
        topic: String,
        auth: Option<(String, String)>,
    },
    /// `gotify://host[:port][/path]/TOKEN`, `gotifys://…`.
    Gotify { base: String, token: String },
    /// `msteams://[TEAM/]A/B/C`: the webhook URL it stands for.
    Teams { url: String },
    /// `pushover://USER_KEY@APP_TOKEN[/DEVICE]`.
    Pushover {
        base: String,
        user: String,
        token: String,
        device: Option<String>,
    },
    /// `apprise://host[:port][/path]/TOKEN`, `apprises://…`: an Apprise API server.
    Apprise { base: String, token: String },
    /// `mailto://user:pass@host[:port]?to=…&from=…` (STARTTLS), `mailtos://…` (TLS).
    Mail {
        host: String,
        port: u16,
        tls: bool,
        user: Option<String>,
        password: Option<String>,
        from: String,
        to: Vec<String>,
    },
}

/// A service with its URL, masked for messages.
#[derive(Clone)]
pub struct Notifier {
    pub service: Service,
    pub scheme: String,
    /// The URL with every secret replaced by `***`.
    pub masked: String,
}

impl std::fmt::Debug for Notifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.masked)
    }
}

/// API roots that replace the services' own (`discord=http://proxy:8080,slack=…`: egress
/// proxies, and tests): `OUROBOROS_NOTIFY_API`.
pub type ApiRoots = std::collections::BTreeMap<String, String>;

/// The services whose API root `--notify-api` may move.
const FIXED_HOST_SERVICES: [&str; 6] = ["discord", "slack", "tgram", "pushover", "msteams", "ntfy"];

/// Parses `name=url,name=url`. Empty or blank: none. An empty item or an unknown service
/// name is refused (a misspelt service would otherwise keep its default root unnoticed).
pub fn parse_api_roots(text: &str) -> Result<ApiRoots, String> {
    if text.trim().is_empty() {
        return Ok(ApiRoots::new());
    }
    text.split(',')
        .map(str::trim)
        .map(|pair| {
            if pair.is_empty() {
                return Err(
                    "an empty item in the list (two commas in a row, or one at an end)".into(),
                );
            }
            let (name, url) = pair.split_once('=').ok_or_else(|| {
                format!(
                    "{:?} is not SERVICE=URL",
                    ouroboros_shared::echo::text(pair)
                )
            })?;
            let name = name.trim();
            if !FIXED_HOST_SERVICES.contains(&name) {
                return Err(format!(
                    "{:?} is not one of {}",
                    ouroboros_shared::echo::name(name),
                    FIXED_HOST_SERVICES.join(", ")
                ));
            }
            reqwest::Url::parse(url.trim()).map_err(|e| format!("{name}=: {e}"))?;
            Ok((name.to_owned(), url.trim().trim_end_matches('/').to_owned()))
        })
        .collect()
}

/// The API root of a service with a fixed host.
fn api_root(service: &str, roots: &ApiRoots) -> String {
    if let Some(url) = roots.get(service) {
        return url.clone();
    }
    match service {
        "discord" => "https://discord.com",
        "slack" => "https://hooks.slack.com",
        "tgram" => "https://api.telegram.org",
        "pushover" => "https://api.pushover.net",
        "ntfy" => "https://ntfy.sh",
        _ => "https://outlook.office.com",
    }
    .to_owned()
}

fn decode(s: &str) -> String {
    // Percent-decoding of URL parts (user names and passwords may hold reserved characters),
    // on bytes: no slicing of the text, so no panic (whose message would quote it).
    let hex = |b: u8| match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    };
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let (Some(h), Some(l)) = (
                bytes.get(i + 1).copied().and_then(hex),
                bytes.get(i + 2).copied().and_then(hex),
            )
        {
            out.push(h * 16 + l);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The parts of what follows `scheme://`: credentials, host and path, query. The query starts
/// at the first `?` that reads as parameters (an `=` before any `@`), so that an unencoded `?`
/// in a password does not cut the URL; the credentials end at the last `@` before the path.
fn split_url(rest: &str) -> (Option<&str>, &str, &str) {
    let mut query_at = rest.len();
    for (i, _) in rest.match_indices('?') {
        let after = &rest[i + 1..];
        let is_query = match (after.find('='), after.find('@')) {
            (_, None) => true,
            (Some(eq), Some(at)) => eq < at,
            (None, Some(_)) => false,
        };
        if is_query {
            query_at = i;
            break;
        }
    }
    let (main, query) = (&rest[..query_at], rest.get(query_at + 1..).unwrap_or(""));
    let authority_end = main.find('/').unwrap_or(main.len());
    match main[..authority_end].rfind('@') {
        Some(at) => (Some(&main[..at]), &main[at + 1..], query),
        None => (None, main, query),
    }
}

impl Notifier {
    /// Parses one Apprise URL. The error names the URL with its secrets masked.
    pub fn parse(text: &str) -> Result<Self, String> {
        Self::parse_with(text, &ApiRoots::new())
    }

    /// [`Notifier::parse`] with other API roots for the services with fixed hosts.
    pub fn parse_with(text: &str, roots: &ApiRoots) -> Result<Self, String> {
        let text = text.trim();
        let (scheme, rest) = text
            .split_once("://")
            .ok_or_else(|| "a notifier URL must look like SCHEME://…".to_owned())?;
        let scheme = scheme.to_ascii_lowercase();
        let masked = mask(&scheme, rest);
        let bad = |why: &str| format!("notifier {masked}: {why}");
        let (userinfo, location, query) = split_url(rest);
        let params: Vec<(String, String)> = query
            .split('&')
            .filter(|p| !p.is_empty())
            .map(|p| {
                let (k, v) = p.split_once('=').unwrap_or((p, ""));
                (k.to_ascii_lowercase(), decode(v))
            })
            .collect();
        let param = |name: &str| {
            params
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
        };
        let credentials = userinfo.map(|u| match u.split_once(':') {
            Some((user, pass)) => (decode(user), decode(pass)),
            None => (decode(u), String::new()),
        });
        let segments: Vec<&str> = location.split('/').filter(|s| !s.is_empty()).collect();
        let host_port = segments.first().copied().unwrap_or("");
        let need = |n: usize, what: &str| {
            if segments.len() < n {
                Err(bad(&format!("expected {what}")))
            } else {
                Ok(())
            }
        };
        let http_base =
            |secure: bool| format!("{}://{host_port}", if secure { "https" } else { "http" });
        let service = match scheme.as_str() {
            "json" | "jsons" => {
                need(1, "a host")?;
                let path = segments[1..].join("/");
                Service::Json {
                    url: format!("{}/{path}", http_base(scheme == "jsons")),
                    auth: credentials,
                }
            }
            "discord" => {
                need(2, "discord://WEBHOOK_ID/WEBHOOK_TOKEN")?;
                Service::Discord {
                    base: api_root("discord", roots),
                    id: segments[0].into(),
                    token: segments[1].into(),
                }
            }
            "slack" => {
                need(3, "slack://TOKEN_A/TOKEN_B/TOKEN_C")?;
                Service::Slack {
                    base: api_root("slack", roots),
                    tokens: [segments[0].into(), segments[1].into(), segments[2].into()],
                    channel: segments.get(3).map(|c| decode(c)),
                }
            }
            "tgram" => {
                need(2, "tgram://BOT_TOKEN/CHAT_ID")?;
                Service::Telegram {
                    base: api_root("tgram", roots),
                    token: segments[0].into(),
                    chats: segments[1..].iter().map(|c| (*c).to_owned()).collect(),
                }
            }
            "ntfy" | "ntfys" => {
                need(1, "a topic")?;
                if segments.len() == 1 {
                    Service::Ntfy {
                        base: api_root("ntfy", roots),
                        topic: segments[0].into(),
                        auth: credentials,
                    }
                } else {
                    Service::Ntfy {
                        base: http_base(scheme == "ntfys"),
                        topic: segments[1..].join("/"),
                        auth: credentials,
                    }
                }
            }
            "gotify" | "gotifys" => {
                need(2, "gotify://HOST/TOKEN")?;
                let path = segments[1..segments.len() - 1].join("/");
                let base = http_base(scheme == "gotifys");
                Service::Gotify {
                    base: if path.is_empty() {
                        base
                    } else {
                        format!("{base}/{path}")
                    },
                    token: segments[segments.len() - 1].into(),
                }
            }
            "msteams" => {
                let (team, t) = match segments.len() {
                    3 => (None, &segments[..]),
                    n if n >= 4 => (Some(segments[0]), &segments[1..4]),
                    _ => return Err(bad("expected msteams://[TEAM/]TOKEN_A/TOKEN_B/TOKEN_C")),
                };
                let url = match (team, roots.get("msteams")) {
                    (_, Some(root)) => {
                        format!(
                            "{root}/webhookb2/{}/IncomingWebhook/{}/{}",
                            t[0], t[1], t[2]
                        )
                    }
                    (Some(team), None) => format!(
                        "https://{team}.webhook.office.com/webhookb2/{}/IncomingWebhook/{}/{}",
                        t[0], t[1], t[2]
                    ),
                    (None, None) => format!(
                        "https://outlook.office.com/webhook/{}/IncomingWebhook/{}/{}",
                        t[0], t[1], t[2]
                    ),
                };
                Service::Teams { url }
            }
            // `pover://` is Apprise's name for it.
            "pushover" | "pover" => {
                let Some((user, _)) = &credentials else {
                    return Err(bad("expected pushover://USER_KEY@APP_TOKEN"));
                };
                need(1, "pushover://USER_KEY@APP_TOKEN")?;
                Service::Pushover {
                    base: api_root("pushover", roots),
                    user: user.clone(),
                    token: segments[0].into(),
                    device: segments.get(1).map(|d| (*d).to_owned()),
                }
            }
            "apprise" | "apprises" => {
                need(2, "apprise://HOST/TOKEN")?;
                let path = segments[1..segments.len() - 1].join("/");
                let base = http_base(scheme == "apprises");
                Service::Apprise {
                    base: if path.is_empty() {
                        base
                    } else {
                        format!("{base}/{path}")
                    },
                    token: segments[segments.len() - 1].into(),
                }
            }
            "mailto" | "mailtos" => {
                need(1, "mailto://USER:PASSWORD@HOST")?;
                let tls = scheme == "mailtos";
                let (host, port) = match host_port.rsplit_once(':') {
                    Some((h, p)) => (
                        h.to_owned(),
                        p.parse::<u16>()
                            .map_err(|_| bad("the port is not a number"))?,
                    ),
                    None => (host_port.to_owned(), if tls { 465 } else { 587 }),
                };
                let (user, password) = match &credentials {
                    Some((u, p)) => (Some(u.clone()), Some(p.clone())),
                    None => (None, None),
                };
                let default_from = match &user {
                    Some(u) if u.contains('@') => u.clone(),
                    Some(u) => format!("{u}@{host}"),
                    None => format!("ouroboros@{host}"),
                };
                let from = param("from").unwrap_or(default_from);
                let to: Vec<String> = param("to")
                    .map(|t| t.split(',').map(|a| a.trim().to_owned()).collect())
                    .unwrap_or_else(|| vec![from.clone()]);
                Service::Mail {
                    host,
                    port,
                    tls,
                    user,
                    password,
                    from,
                    to,
                }
            }
            other => return Err(format!("notifier {masked}: unknown scheme {other:?}")),
        };
        Ok(Self {
            service,
            scheme,
            masked,
        })
    }

    /// Delivers `message` once; the error names the masked URL, never a secret.
    async fn deliver(
        &self,
        http: &reqwest::Client,
        ca: Option<&[u8]>,
        message: &Message,
    ) -> Result<(), String> {
        let fail = |what: String| format!("{}: {what}", self.masked);
        let text = if message.title.is_empty() {
            message.body.clone()
        } else {
            format!("{}\n{}", message.title, message.body)
        };
        let request = match &self.service {
            Service::Json { url, auth } => {
                let r = http.post(url).json_body(&json!({
                    "version": "1.0",
                    "title": message.title,
                    "message": message.body,
                    "type": message.kind.as_str(),
                    "attachments": [],
                }));
                match auth {
                    Some((u, p)) => r.basic_auth(u, Some(p)),
                    None => r,
                }
            }
            Service::Discord { base, id, token } => http
                .post(format!("{base}/api/webhooks/{id}/{token}"))
                .json_body(
                    &json!({ "username": "Ouroboros", "content": clip(&text, DISCORD_MAX) }),
                ),
            Service::Slack {
                base,
                tokens,
                channel,
            } => {
                let mut body = json!({ "text": text, "username": "Ouroboros" });
                if let Some(c) = channel {
                    body["channel"] = json!(c);
                }
                http.post(format!(
                    "{base}/services/{}/{}/{}",
                    tokens[0], tokens[1], tokens[2]
                ))
                .json_body(&body)
            }
            Service::Telegram { base, token, chats } => {
                // One request per chat.
                for chat in chats {
                    let r = http
                        .post(format!("{base}/bot{token}/sendMessage"))
                        .json_body(&json!({ "chat_id": chat, "text": clip(&text, TELEGRAM_MAX) }));
                    check(r.send().await, &fail)?;
                }
                return Ok(());
            }
            Service::Ntfy { base, topic, auth } => {
                let r = http
                    .post(format!("{base}/{topic}"))
                    .header("X-Title", message.title.clone())
                    .header("X-Tags", message.kind.as_str())
                    .body(message.body.clone());
                match auth {
                    Some((u, p)) => r.basic_auth(u, Some(p)),
                    None => r,
                }
            }
            Service::Gotify { base, token } => http
                .post(format!("{base}/message"))
                .header("X-Gotify-Key", token.clone())
                .json_body(&json!({
                    "title": message.title,
                    "message": message.body,
                    "priority": if message.kind == Kind::Failure { 8 } else { 5 },
                })),
            Service::Teams { url } => http.post(url.as_str()).json_body(&json!({
                "@type": "MessageCard",
                "@context": "https://schema.org/extensions",
                "summary": message.title,
                "title": message.title,
                "text": message.body,
                "themeColor": match message.kind {
                    Kind::Failure => "d9534f",
                    Kind::Warning => "f0ad4e",
                    Kind::Success => "5cb85c",
                    Kind::Info => "3aa3e3",
                },
            })),
            Service::Pushover {
                base,
                user,
                token,
                device,
            } => {
                let mut body = json!({
                    "token": token,
                    "user": user,
                    "title": message.title,
                    "message": message.body,
                });
                if let Some(d) = device {
                    body["device"] = json!(d);
                }
                http.post(format!("{base}/1/messages.json"))
                    .json_body(&body)
            }
            Service::Apprise { base, token } => http
                .post(format!("{base}/notify/{token}"))
                .json_body(&json!({
                    "title": message.title,
                    "body": message.body,
                    "type": message.kind.as_str(),
                })),
            Service::Mail {
                host,
                port,
                tls,
                user,
                password,
                from,
                to,
            } => {
                let credentials = user.clone().zip(password.clone());
                return crate::notify::smtp::send(
                    ca,
                    host,
                    *port,
                    *tls,
                    credentials.as_ref(),
                    from,
                    to,
                    &message.title,
                    &message.body,
                )
                .await
                .map_err(fail);
            }
        };
        check(request.send().await, &fail)
    }
}

/// A JSON body (reqwest's `json` feature is not compiled in).
trait JsonBody {
    fn json_body(self, value: &serde_json::Value) -> Self;
}

impl JsonBody for reqwest::RequestBuilder {
    fn json_body(self, value: &serde_json::Value) -> Self {
        self.header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(value.to_string())
    }
}

fn check(
    answer: Result<reqwest::Response, reqwest::Error>,
    fail: &dyn Fn(String) -> String,
) -> Result<(), String> {
    match answer {
        Ok(r) if r.status().is_success() => Ok(()),
        // The service refuses this request (bad token, unknown webhook): asking again the
        // same way cannot help. A 429 may pass later.
        Ok(r) if r.status().is_client_error() && r.status().as_u16() != 429 => {
            Err(fail(format!("answered {}{NOT_RETRIED}", r.status())))
        }
        Ok(r) => Err(fail(format!("answered {}", r.status()))),
        // reqwest's messages name the URL, which holds the secret for some services: only
        // the kind of failure is kept.
        Err(e) if e.is_timeout() => Err(fail("no answer in time".into())),
        Err(e) if e.is_connect() => Err(fail("cannot connect".into())),
        Err(_) => Err(fail("request failed".into())),
    }
}

/// `scheme://…` with everything that may be secret replaced by `***`: credentials, and every
/// path segment but the host of services whose path is a token.
fn mask(scheme: &str, rest: &str) -> String {
    let (userinfo, location, _) = split_url(rest);
    let had_user = userinfo.is_some();
    let segments: Vec<&str> = location.split('/').filter(|s| !s.is_empty()).collect();
    // The first segment is a host only when something follows it (`ntfy://topic`,
    // `gotify://TOKEN` hold a secret there); a mail server is always a host.
    let mail = matches!(scheme, "mailto" | "mailtos");
    let keep_host = matches!(
        scheme,
        "json"
            | "jsons"
            | "ntfy"
            | "ntfys"
            | "gotify"
            | "gotifys"
            | "apprise"
            | "apprises"
            | "mailto"
            | "mailtos"
    );
    let mut shown = Vec::new();
    for (i, s) in segments.iter().enumerate() {
        if i == 0 && keep_host && (mail || segments.len() >= 2) {
            shown.push((*s).to_owned());
        } else {
            shown.push("***".to_owned());
        }
    }
    format!(
        "{scheme}://{}{}",
        if had_user { "***@" } else { "" },
        shown.join("/")
    )
}

/// Counts one delivery under way for as long as it lives.
struct InFlight(Arc<std::sync::atomic::AtomicUsize>);

impl InFlight {
    fn new(counter: Arc<std::sync::atomic::AtomicUsize>) -> Self {
        counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Self(counter)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

/// Every configured service, with the message template.
#[derive(Clone, Default)]
pub struct Notifiers {
    services: Vec<Notifier>,
    http: Option<reqwest::Client>,
    /// `{event}`, `{title}`, `{message}`, `{kind}` are replaced.
    template: Option<String>,
    attempt_timeout: Option<Duration>,
    /// Extra CA certificates (PEM) for TLS: SMTP and HTTPS services.
    ca_pem: Option<Arc<Vec<u8>>>,
    /// Deliveries under way (shared by clones), so that a stopping coordinator lets them end.
    pending: Arc<std::sync::atomic::AtomicUsize>,
    /// Where deliveries are counted (none: not counted).
    metrics: Option<Metrics>,
}

impl std::fmt::Debug for Notifiers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(&self.services).finish()
    }
}

impl Notifiers {
    /// Parses the URLs; `roots` replace the API roots of services with fixed hosts, `ca_pem`
    /// adds CA certificates for SMTP over TLS.
    pub fn new(
        urls: &[String],
        template: Option<String>,
        roots: &ApiRoots,
        ca_pem: Option<Vec<u8>>,
    ) -> Result<Self, String> {
        let services = urls
            .iter()
            .filter(|u| !u.trim().is_empty())
            .map(|u| Notifier::parse_with(u, roots))
            .collect::<Result<Vec<_>, _>>()?;
        ouroboros_shared::install_crypto_provider();
        let mut builder = reqwest::Client::builder()
            .timeout(ATTEMPT_TIMEOUT)
            .user_agent(concat!("ouroboros/", env!("CARGO_PKG_VERSION")));
        // Self-hosted services (ntfy, Gotify, Apprise, webhooks) behind a private CA.
        if let Some(pem) = &ca_pem {
            for cert in reqwest::Certificate::from_pem_bundle(pem)
                .map_err(|e| format!("the notification CA: {e}"))?
            {
                builder = builder.add_root_certificate(cert);
            }
        }
        let http = builder
            .build()
            .map_err(|e| format!("cannot build the notification client: {e}"))?;
        Ok(Self {
            services,
            http: Some(http),
            template,
            attempt_timeout: None,
            ca_pem: ca_pem.map(Arc::new),
            pending: Arc::default(),
            metrics: None,
        })
    }

    /// Counts every delivery (sent or failed, by scheme) in `metrics`.
    pub fn with_metrics(self, metrics: Metrics) -> Self {
        Self {
            metrics: Some(metrics),
            ..self
        }
    }

    pub fn is_empty(&self) -> bool {
        self.services.is_empty()
    }

    /// The message as the template makes it.
    fn render(&self, message: &Message) -> Message {
        match &self.template {
            None => message.clone(),
            Some(template) => {
                let body = template
                    .replace("{event}", message.event)
                    .replace("{kind}", message.kind.as_str())
                    .replace("{title}", &message.title)
                    .replace("{message}", &message.body);
                Message {
                    body,
                    ..message.clone()
                }
            }
        }
    }

    /// Sends `message` to every service, each in a task of its own with retries; returns at
    /// once. The tasks' handles are returned for tests that wait for delivery.
    pub fn send(&self, message: Message) -> Vec<tokio::task::JoinHandle<bool>> {
        let Some(http) = &self.http else {
            return Vec::new();
        };
        let message = Arc::new(self.render(&message));
        let timeout = self.attempt_timeout.unwrap_or(ATTEMPT_TIMEOUT);
        let handles: Vec<tokio::task::JoinHandle<bool>> = self.services
            .iter()
            .cloned()
            .map(|notifier| {
                let http = http.clone();
                let message = message.clone();
                let ca = self.ca_pem.clone();
                let pending = InFlight::new(self.pending.clone());
                let metrics = self.metrics.clone();
                tokio::spawn(async move {
                    let _pending = pending;
                    let mut delay = Duration::from_millis(500);
                    for attempt in 1..=ATTEMPTS {
                        let outcome =
                            tokio::time::timeout(
                            timeout,
                            notifier.deliver(&http, ca.as_deref().map(Vec::as_slice), &message),
                        )
                        .await;
                        match outcome {
                            Ok(Ok(())) => {
                                debug!(notifier = %notifier.masked, event = message.event, "Notification sent.");
                                if let Some(m) = &metrics {
                                    m.notification(&notifier.scheme, "sent");
                                }
                                return true;
                            }
                            Ok(Err(e)) => {
                                warn!(error = %e, attempt, "Notification not delivered.");
                                if e.ends_with(NOT_RETRIED) {
                                    break;
                                }
                            }
                            Err(_) => {
                                warn!(notifier = %notifier.masked, attempt, "Notification not delivered in time.");
                            }
                        }
                        if attempt < ATTEMPTS {
                            tokio::time::sleep(delay).await;
                            delay *= 2;
                        }
                    }
                    if let Some(m) = &metrics {
                        m.notification(&notifier.scheme, "failed");
                    }
                    false
                })
            })
            .collect();
        handles
    }

    /// Waits (at most `limit`) for the deliveries under way: a stopping coordinator must not
    /// drop a message it has just made.
    pub async fn drain(&self, limit: Duration) {
        let deadline = tokio::time::Instant::now() + limit;
        while self.pending.load(std::sync::atomic::Ordering::SeqCst) > 0
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_scheme_parses_and_masks_its_secrets() {
        for (url, masked) in [
            (
                "json://hooks.lan:8080/ouroboros",
                "json://hooks.lan:8080/***",
            ),
            (
                "jsons://user:pw-sentinel@hooks.lan/x",
                "jsons://***@hooks.lan/***",
            ),
            ("discord://123/tok-sentinel", "discord://***/***"),
            ("slack://A/B/tok-sentinel/#ops", "slack://***/***/***/***"),
            ("tgram://bot-sentinel/42", "tgram://***/***"),
            ("ntfy://ntfy.lan/fleet", "ntfy://ntfy.lan/***"),
            (
                "ntfys://u:p-sentinel@ntfy.lan/fleet",
                "ntfys://***@ntfy.lan/***",
            ),
            (
                "gotify://gotify.lan/tok-sentinel",
                "gotify://gotify.lan/***",
            ),
            (
                "msteams://team/A/B/tok-sentinel",
                "msteams://***/***/***/***",
            ),
            (
                "pushover://user-sentinel@app-sentinel",
                "pushover://***@***",
            ),
            (
                "apprise://apprise.lan/tok-sentinel",
                "apprise://apprise.lan/***",
            ),
            (
                "mailto://u:pw-sentinel@smtp.lan?to=ops@lan",
                "mailto://***@smtp.lan",
            ),
            (
                "mailtos://u:pw-sentinel@smtp.lan:465",
                "mailtos://***@smtp.lan:465",
            ),
            ("ntfy://topic-sentinel", "ntfy://***"),
            (
                "mailtos://bob:pa?ss-sentinel@smtp.lan",
                "mailtos://***@smtp.lan",
            ),
            (
                "json://bob:p?ss-sentinel@hook.lan/x",
                "json://***@hook.lan/***",
            ),
            (
                "msteams://team/a1@a2-sentinel/b/c",
                "msteams://***/***/***/***",
            ),
            ("tgram://bot-sentinel/@channel", "tgram://***/***"),
            (
                "mailto://u:p-sentinel@smtp.lan?to=a@lan",
                "mailto://***@smtp.lan",
            ),
        ] {
            let n = Notifier::parse(url).unwrap_or_else(|e| panic!("{url}: {e}"));
            assert_eq!(n.masked, masked, "{url}");
            assert!(!format!("{n:?}").contains("sentinel"), "{url}");
        }
        for (bad, says) in [
            ("irc://x/y", "unknown scheme"),
            (
                "discord://only-one-sentinel",
                "discord://WEBHOOK_ID/WEBHOOK_TOKEN",
            ),
            ("pushover://app", "USER_KEY@APP_TOKEN"),
            ("not a url", "SCHEME://"),
            ("mailto://u:p@smtp.lan:port", "not a number"),
            ("gotify://token-sentinel", "gotify://HOST/TOKEN"),
        ] {
            let e = Notifier::parse(bad).unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
            assert!(!e.contains("sentinel"), "{bad}: {e}");
        }
        // Percent escapes cut by a multi-byte character neither panic nor leak.
        assert!(Notifier::parse("json://u:p%a\u{e9}-sentinel@x/y").is_ok());
        // A Teams token with its `@` and a Telegram channel keep their places.
        let Service::Teams { url } = Notifier::parse("msteams://team/a1@a2/b/c").unwrap().service
        else {
            panic!("not teams");
        };
        assert_eq!(
            url,
            "https://team.webhook.office.com/webhookb2/a1@a2/IncomingWebhook/b/c"
        );
        let Service::Telegram { chats, .. } =
            Notifier::parse("tgram://bot/@channel").unwrap().service
        else {
            panic!("not telegram");
        };
        assert_eq!(chats, vec!["@channel".to_owned()]);
        let Service::Mail {
            host,
            port,
            tls,
            from,
            to,
            ..
        } = Notifier::parse("mailtos://ops%40lan:p%3Aw@smtp.lan?to=a@lan,b@lan")
            .unwrap()
            .service
        else {
            panic!("not mail");
        };
        assert_eq!((host.as_str(), port, tls), ("smtp.lan", 465, true));
        assert_eq!(from, "ops@lan");
        assert_eq!(to, vec!["a@lan".to_owned(), "b@lan".to_owned()]);
    }

    #[test]
    fn pover_is_pushover_and_long_texts_are_clipped() {
        let n = Notifier::parse("pover://user-sentinel@app-sentinel").unwrap();
        assert!(matches!(n.service, Service::Pushover { .. }));
        assert_eq!(n.masked, "pover://***@***");
        assert_eq!(clip("abc", 3), "abc");
        assert_eq!(clip("abcd", 3), "ab…");
        assert_eq!(
            clip(&"é".repeat(5000), DISCORD_MAX).chars().count(),
            DISCORD_MAX
        );
    }

    #[test]
    fn the_template_fills_its_fields() {
        let n = Notifiers {
            template: Some("[{kind}] {event}: {title} / {message}".into()),
            ..Notifiers::default()
        };
        let m = n.render(&Message {
            event: "updates-done",
            kind: Kind::Success,
            title: "2 updated".into(),
            body: "a, b".into(),
        });
        assert_eq!(m.body, "[success] updates-done: 2 updated / a, b");
    }
}

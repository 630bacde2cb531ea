//! One attempt to deliver one message to one service: the request each service's API wants
//! (HTTP through the shared `reqwest` client, mail through its own [`Mailer`]), and what the
//! answer means for the next attempt ([`DeliveryError`]).

use std::sync::Arc;

use reqwest::StatusCode;
use serde_json::json;

use super::mail::Mailer;
use super::target::Service;
use super::urls::Notifier;
use super::{Kind, Message};

/// Longest text Discord takes in `content`.
const DISCORD_MAX: usize = 2000;
/// Longest text Telegram takes in `text`.
const TELEGRAM_MAX: usize = 4096;

/// Why one attempt failed. `service` is the masked URL; `reason` is one line that holds no
/// secret (no URL, and no text of a server's answer, which may echo what it was sent).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeliveryError {
    /// The service refused this message (a bad token, an unknown webhook or address, a mail
    /// server that will not take it): asking again the same way cannot help.
    #[error("{service}: {reason} (not retried)")]
    Refused { service: String, reason: String },
    /// No answer, no connection, or an answer that may change (a server error, a 429, a
    /// temporary mail failure): another attempt may pass.
    #[error("{service}: {reason}")]
    Transient { service: String, reason: String },
}

impl DeliveryError {
    pub fn refused(service: &str, reason: impl Into<String>) -> Self {
        Self::Refused {
            service: service.to_owned(),
            reason: reason.into(),
        }
    }

    pub fn transient(service: &str, reason: impl Into<String>) -> Self {
        Self::Transient {
            service: service.to_owned(),
            reason: reason.into(),
        }
    }

    /// Whether another attempt may deliver the message.
    pub fn is_retried(&self) -> bool {
        match self {
            Self::Refused { .. } => false,
            Self::Transient { .. } => true,
        }
    }
}

/// What an HTTP answer's status means.
fn status_outcome(service: &str, status: StatusCode) -> Result<(), DeliveryError> {
    if status.is_success() {
        Ok(())
    } else if status.is_client_error() && status != StatusCode::TOO_MANY_REQUESTS {
        // The service refuses this request (bad token, unknown webhook): asking again the
        // same way cannot help. A 429 may pass later.
        Err(DeliveryError::refused(
            service,
            format!("answered {status}"),
        ))
    } else {
        Err(DeliveryError::transient(
            service,
            format!("answered {status}"),
        ))
    }
}

/// What a request's outcome means. reqwest's messages name the URL, which holds the secret
/// for some services: only the kind of failure is kept.
fn http_outcome(
    service: &str,
    answer: Result<reqwest::Response, reqwest::Error>,
) -> Result<(), DeliveryError> {
    match answer {
        Ok(r) => status_outcome(service, r.status()),
        Err(e) if e.is_timeout() => Err(DeliveryError::transient(service, "no answer in time")),
        Err(e) if e.is_connect() => Err(DeliveryError::transient(service, "cannot connect")),
        Err(_) => Err(DeliveryError::transient(service, "request failed")),
    }
}

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

fn with_basic(
    r: reqwest::RequestBuilder,
    auth: &Option<(String, String)>,
) -> reqwest::RequestBuilder {
    match auth {
        Some((u, p)) => r.basic_auth(u, Some(p)),
        None => r,
    }
}

/// The requests that deliver `message` to an HTTP service, in order (Telegram: one per chat);
/// none for mail.
fn requests(
    http: &reqwest::Client,
    service: &Service,
    message: &Message,
) -> Vec<reqwest::RequestBuilder> {
    let text = if message.title.is_empty() {
        message.body.clone()
    } else {
        format!("{}\n{}", message.title, message.body)
    };
    let one = match service {
        Service::Json { url, auth } => with_basic(
            http.post(url).json_body(&json!({
                "version": "1.0",
                "title": message.title,
                "message": message.body,
                "type": message.kind.as_str(),
                "attachments": [],
            })),
            auth,
        ),
        Service::Discord { base, id, token } => http
            .post(format!("{base}/api/webhooks/{id}/{token}"))
            .json_body(&json!({ "username": "Ouroboros", "content": clip(&text, DISCORD_MAX) })),
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
            return chats
                .iter()
                .map(|chat| {
                    http.post(format!("{base}/bot{token}/sendMessage"))
                        .json_body(&json!({ "chat_id": chat, "text": clip(&text, TELEGRAM_MAX) }))
                })
                .collect();
        }
        Service::Ntfy { base, topic, auth } => with_basic(
            http.post(format!("{base}/{topic}"))
                .header("X-Title", message.title.clone())
                .header("X-Tags", message.kind.as_str())
                .body(message.body.clone()),
            auth,
        ),
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
        Service::Apprise { base, token } => {
            http.post(format!("{base}/notify/{token}"))
                .json_body(&json!({
                    "title": message.title,
                    "body": message.body,
                    "type": message.kind.as_str(),
                }))
        }
        Service::Mail(_) => return Vec::new(),
    };
    vec![one]
}

/// How messages reach a service.
#[derive(Clone)]
enum Carrier {
    Http(reqwest::Client),
    Mail(Arc<Mailer>),
}

/// One configured service, ready to deliver: its parsed URL and what carries messages there.
#[derive(Clone)]
pub struct Endpoint {
    pub notifier: Notifier,
    carrier: Carrier,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.notifier.fmt(f)
    }
}

impl Endpoint {
    /// An HTTP service, through the shared client.
    pub(super) fn http(notifier: Notifier, http: reqwest::Client) -> Self {
        Self {
            notifier,
            carrier: Carrier::Http(http),
        }
    }

    /// A mail service, through a transport of its own (built once, with its TLS roots).
    pub(super) fn mail(notifier: Notifier, mailer: Mailer) -> Self {
        Self {
            notifier,
            carrier: Carrier::Mail(Arc::new(mailer)),
        }
    }

    /// Delivers `message` once.
    pub async fn attempt(&self, message: &Message) -> Result<(), DeliveryError> {
        let service = &self.notifier.masked;
        match &self.carrier {
            Carrier::Mail(mailer) => mailer.send(service, &message.title, &message.body).await,
            Carrier::Http(http) => {
                for request in requests(http, &self.notifier.service, message) {
                    http_outcome(service, request.send().await)?;
                }
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_error_is_refused_and_everything_else_retried() {
        let s = "json://host/***";
        assert_eq!(status_outcome(s, StatusCode::OK), Ok(()));
        assert_eq!(status_outcome(s, StatusCode::NO_CONTENT), Ok(()));
        for refused in [400, 401, 403, 404, 410, 413] {
            let status = StatusCode::from_u16(refused).unwrap_or_default();
            let e = status_outcome(s, status)
                .err()
                .unwrap_or_else(|| panic!("{refused}"));
            assert!(
                matches!(&e, DeliveryError::Refused { .. }) && !e.is_retried(),
                "{refused}: {e:?}"
            );
        }
        for retried in [429, 500, 502, 503, 304] {
            let status = StatusCode::from_u16(retried).unwrap_or_default();
            let e = status_outcome(s, status)
                .err()
                .unwrap_or_else(|| panic!("{retried}"));
            assert!(
                matches!(&e, DeliveryError::Transient { .. }) && e.is_retried(),
                "{retried}: {e:?}"
            );
        }
        // One line for the operator, naming the service masked and the answer.
        let e = status_outcome(s, StatusCode::NOT_FOUND)
            .err()
            .unwrap_or_else(|| panic!());
        assert_eq!(
            e.to_string(),
            "json://host/***: answered 404 Not Found (not retried)"
        );
        assert_eq!(
            DeliveryError::transient(s, "cannot connect").to_string(),
            "json://host/***: cannot connect"
        );
    }

    #[test]
    fn long_texts_are_clipped_to_the_services_limits() {
        assert_eq!(clip("abc", 3), "abc");
        assert_eq!(clip("abcd", 3), "ab…");
        assert_eq!(
            clip(&"é".repeat(5000), DISCORD_MAX).chars().count(),
            DISCORD_MAX
        );
        let message = Message {
            event: "updates-done",
            kind: Kind::Success,
            title: "t".into(),
            body: "x".repeat(10_000),
        };
        ouroboros_shared::install_crypto_provider();
        let http = reqwest::Client::new();
        let Ok(telegram) = super::super::urls::Notifier::parse("tgram://bot/1/2") else {
            panic!("tgram");
        };
        let built: Vec<reqwest::Request> = requests(&http, &telegram.service, &message)
            .into_iter()
            .filter_map(|r| r.build().ok())
            .collect();
        assert_eq!(built.len(), 2, "one request per chat");
        for r in built {
            let body = r.body().and_then(|b| b.as_bytes()).unwrap_or_default();
            let v: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
            let text = v["text"].as_str().unwrap_or_default();
            assert_eq!(text.chars().count(), TELEGRAM_MAX);
            assert_eq!(r.url().path(), "/botbot/sendMessage");
        }
    }
}

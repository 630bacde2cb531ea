//! Notifications: Apprise URLs, natively. Each URL names a service and its credentials;
//! [`Notifiers::new`] checks them at startup (one line naming the URL, secrets masked) and
//! [`Notifiers::send`] delivers a message to every service at once, each with a deadline and
//! retries, in tasks of their own: a failing service never delays or blocks an update.
//! Failures are logged with the service's masked URL and counted
//! (`ouroboros_notifications_total`); no secret reaches a log line, an error or a metric.
//!
//! Layout:
//! - [`urls`]: Apprise URLs parsed into a [`Notifier`] (a typed [`Service`], from
//!   [`target`], and the URL masked); [`roots`]: the API roots tests and proxies replace;
//! - [`delivery`]: one attempt at one service, and what its failure means
//!   ([`DeliveryError`]: refused, or worth another attempt);
//! - [`mail`]: SMTP through `lettre`;
//! - here: the message, the template, fan-out and retries.

pub mod delivery;
pub mod mail;
pub mod roots;
pub mod target;
pub mod urls;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tracing::{debug, warn};

use crate::telemetry::metrics::Metrics;

pub use delivery::{DeliveryError, Endpoint};
pub use roots::{ApiRoots, parse_api_roots};
pub use target::{MailSecurity, MailTarget, Service};
pub use urls::{Notifier, UrlError};

/// Deadline of one delivery attempt.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);
/// Attempts per message and service.
const ATTEMPTS: u32 = 3;
/// Wait before the second attempt; doubled before each next one.
const FIRST_RETRY_DELAY: Duration = Duration::from_millis(500);

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
    /// `agent-lost`, `agent-back`, `before-self-update`, `after-self-update`.
    pub event: &'static str,
    pub kind: Kind,
    pub title: String,
    pub body: String,
}

/// Notifiers that cannot be set up; each form is one line without a secret.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error(transparent)]
    Url(#[from] UrlError),
    #[error("the notification CA: {0}")]
    Ca(#[source] reqwest::Error),
    #[error("cannot build the notification client: {0}")]
    Client(#[source] reqwest::Error),
    /// The extra CA certificates, as the mail transports read them.
    #[error(transparent)]
    MailCa(mail::MailSetupError),
    #[error("notifier {masked}: {source}")]
    Mail {
        masked: String,
        source: mail::MailSetupError,
    },
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
    endpoints: Vec<Endpoint>,
    /// `{event}`, `{title}`, `{message}`, `{kind}` are replaced.
    template: Option<String>,
    attempt_timeout: Option<Duration>,
    /// Deliveries under way (shared by clones), so that a stopping coordinator lets them end.
    pending: Arc<std::sync::atomic::AtomicUsize>,
    /// Where deliveries are counted (none: not counted).
    metrics: Option<Metrics>,
}

impl std::fmt::Debug for Notifiers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(&self.endpoints).finish()
    }
}

impl Notifiers {
    /// Parses the URLs; `roots` replace the API roots of services with fixed hosts, `ca_pem`
    /// adds CA certificates for TLS (HTTPS services and SMTP). TLS roots are loaded here,
    /// once.
    pub fn new(
        urls: &[String],
        template: Option<String>,
        roots: &ApiRoots,
        ca_pem: Option<Vec<u8>>,
    ) -> Result<Self, SetupError> {
        let notifiers = urls
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
            for cert in reqwest::Certificate::from_pem_bundle(pem).map_err(SetupError::Ca)? {
                builder = builder.add_root_certificate(cert);
            }
        }
        let http = builder.build().map_err(SetupError::Client)?;
        let mail_ca = match &ca_pem {
            Some(pem)
                if notifiers
                    .iter()
                    .any(|n| matches!(n.service, Service::Mail(_))) =>
            {
                Some(mail::extra_ca(pem).map_err(SetupError::MailCa)?)
            }
            _ => None,
        };
        let endpoints = notifiers
            .into_iter()
            .map(|notifier| match &notifier.service {
                Service::Mail(target) => {
                    match mail::Mailer::new(target, mail_ca.as_ref(), ATTEMPT_TIMEOUT) {
                        Ok(mailer) => Ok(Endpoint::mail(notifier, mailer)),
                        Err(source) => Err(SetupError::Mail {
                            masked: notifier.masked.clone(),
                            source,
                        }),
                    }
                }
                _ => Ok(Endpoint::http(notifier, http.clone())),
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            endpoints,
            template,
            attempt_timeout: None,
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
        self.endpoints.is_empty()
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
        let message = Arc::new(self.render(&message));
        let timeout = self.attempt_timeout.unwrap_or(ATTEMPT_TIMEOUT);
        self.endpoints
            .iter()
            .cloned()
            .map(|endpoint| {
                let message = message.clone();
                let pending = InFlight::new(self.pending.clone());
                let metrics = self.metrics.clone();
                tokio::spawn(async move {
                    let _pending = pending;
                    with_retries(
                        &endpoint.notifier,
                        message.event,
                        timeout,
                        metrics.as_ref(),
                        || endpoint.attempt(&message),
                    )
                    .await
                })
            })
            .collect()
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

/// Up to [`ATTEMPTS`] attempts, each within `timeout`, with a growing pause between them; a
/// refused message is not tried again. Returns whether the message was delivered.
async fn with_retries<F, Fut>(
    notifier: &Notifier,
    event: &str,
    timeout: Duration,
    metrics: Option<&Metrics>,
    mut attempt_once: F,
) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(), DeliveryError>>,
{
    let mut delay = FIRST_RETRY_DELAY;
    for attempt in 1..=ATTEMPTS {
        match tokio::time::timeout(timeout, attempt_once()).await {
            Ok(Ok(())) => {
                debug!(notifier = %notifier.masked, event, "Notification sent.");
                if let Some(m) = metrics {
                    m.notification(&notifier.scheme, "sent");
                }
                return true;
            }
            Ok(Err(e)) => {
                warn!(error = %e, attempt, "Notification not delivered.");
                if !e.is_retried() {
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
    if let Some(m) = metrics {
        m.notification(&notifier.scheme, "failed");
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

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

    /// Runs [`with_retries`] on attempts that end as `outcomes` say (the last one repeats);
    /// `None` is an attempt that outlives its deadline. Returns (delivered, attempts made).
    async fn run(outcomes: Vec<Option<Result<(), DeliveryError>>>) -> (bool, u32) {
        let notifier = Notifier::parse("json://hook.lan/x").unwrap_or_else(|e| panic!("{e}"));
        let made = AtomicU32::new(0);
        let delivered = with_retries(&notifier, "test", Duration::from_secs(10), None, || {
            let n = made.fetch_add(1, Ordering::SeqCst) as usize;
            let outcome = outcomes.get(n).or(outcomes.last()).cloned().flatten();
            async move {
                match outcome {
                    Some(result) => result,
                    None => std::future::pending().await,
                }
            }
        })
        .await;
        (delivered, made.load(Ordering::SeqCst))
    }

    #[tokio::test(start_paused = true)]
    async fn a_refused_delivery_is_not_retried_and_a_transient_one_is() {
        let refused = DeliveryError::refused("json://hook.lan/***", "answered 404 Not Found");
        let transient = DeliveryError::transient("json://hook.lan/***", "cannot connect");
        assert_eq!(run(vec![Some(Ok(()))]).await, (true, 1));
        assert_eq!(run(vec![Some(Err(refused.clone()))]).await, (false, 1));
        assert_eq!(
            run(vec![Some(Err(transient.clone()))]).await,
            (false, ATTEMPTS)
        );
        assert_eq!(
            run(vec![None]).await,
            (false, ATTEMPTS),
            "timeouts are retried"
        );
        assert_eq!(
            run(vec![Some(Err(transient.clone())), Some(Ok(()))]).await,
            (true, 2)
        );
        assert_eq!(
            run(vec![Some(Err(transient)), Some(Err(refused))]).await,
            (false, 2),
            "a refusal after a transient failure ends the retries"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn retries_wait_longer_each_time() {
        let started = tokio::time::Instant::now();
        let transient = DeliveryError::transient("json://hook.lan/***", "answered 503");
        run(vec![Some(Err(transient))]).await;
        // 500 ms, then 1 s: no pause after the last attempt.
        assert_eq!(started.elapsed(), Duration::from_millis(1500));
    }

    #[test]
    fn setup_errors_name_the_url_masked() {
        let e = Notifiers::new(
            &["mailto://u:p-sentinel@smtp.lan?to=bad-sentinel".to_owned()],
            None,
            &ApiRoots::new(),
            None,
        )
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
        assert_eq!(
            e,
            "notifier mailto://***@smtp.lan: the to address is not a mail address"
        );
        let e = Notifiers::new(
            &["discord://x-sentinel".to_owned()],
            None,
            &ApiRoots::new(),
            None,
        )
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
        assert!(e.starts_with("notifier discord://***: expected"), "{e}");
        assert!(
            Notifiers::new(&[" ".to_owned()], None, &ApiRoots::new(), None)
                .is_ok_and(|n| n.is_empty())
        );
        // A CA file that is no PEM: one line, said once.
        let e = Notifiers::new(
            &["mailtos://smtp.lan".to_owned()],
            None,
            &ApiRoots::new(),
            Some(b"-----BEGIN CERTIFICATE-----\n!!\n-----END CERTIFICATE-----\n".to_vec()),
        )
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
        assert!(e.starts_with("the notification CA: "), "{e}");
        assert_eq!(e.matches("notification CA").count(), 1, "{e}");
        assert!(!e.contains('\n'), "{e}");
    }
}
